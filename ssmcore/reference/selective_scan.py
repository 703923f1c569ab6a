"""NumPy reference of Mamba's selective scan: the executable specification.

Readable float64 / complex128 loops over time, vectorised over (batch, channel,
state).  Same function names and canonical arguments as the Numba kernels in
:mod:`ssmcore.backends.numba.selective_scan` (see that module's docstring for the
layouts); the front door :mod:`ssmcore._selective_scan` prepares them.  Optional
inputs (``Dv``, ``z``, ``delta_bias``, ``h0``, ``seq_idx``, the cotangent ``dlast``)
are ``None`` when absent, and the gradients of absent ``Dv`` / ``z`` come back as
``None``.  The reference stores every state (it is a specification, not a lean
kernel) and ignores ``save`` and ``ckpt``.

Maths (per batch b, channel d, state n; t runs 0..L-1, or L-1..0 when reversed)::

    dt_t  = softplus(delta_t + bias)            (softplus only if requested; linear above 20)
    x_t   = exp(dt_t A) x_prev + dt_t B_t u_t    (x_prev = h0 at the first step, 0 after a seq_idx change)
    y_t   = sum_n C_t x_t   (2 Re(...) when A is complex)
    out_t = (y_t + D u_t) * silu(z_t)

Backward (transpose of the linearisation, no conjugation): with g_t the adjoint
of x_t, g_t = yfac ghat_t C_t + a_{t+1} g_{t+1} (+ the final-state cotangent at
the last step), where ghat = dout * silu(z) and yfac = 2 for complex A.
"""

from __future__ import annotations

import numpy as np

__all__ = ["selective_scan_bwd", "selective_scan_fwd"]


def _softplus(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _per_channel(X: np.ndarray, var: bool, ratio: int, nb: int, nd: int, L: int) -> np.ndarray:
    """Canonical B/C -> (batch, D, L, N): channel d reads group d // ratio (or row d if fixed)."""
    if var:
        return np.repeat(X, ratio, axis=1)
    return np.broadcast_to(X[0][None, :, :, :], (nb, nd, L, X.shape[-1]))


def _prepare(u, delta, A, B, C, Dv, z, delta_bias, h0, b_var, c_var, ratio_b, ratio_c, softplus):
    cdt = np.complex128 if np.iscomplexobj(A) else np.float64
    nb, nd, L = u.shape
    N = A.shape[1]
    u = np.asarray(u, np.float64)
    raw = np.asarray(delta, np.float64)
    if delta_bias is not None:
        raw = raw + np.asarray(delta_bias, np.float64)[None, :, None]
    dt = _softplus(raw) if softplus else raw
    Bx = _per_channel(np.asarray(B, cdt), b_var, ratio_b, nb, nd, L)
    Cx = _per_channel(np.asarray(C, cdt), c_var, ratio_c, nb, nd, L)
    Dv = None if Dv is None else np.asarray(Dv, np.float64)
    z = None if z is None else np.asarray(z, np.float64)
    h0 = np.zeros((nb, nd, N), cdt) if h0 is None else np.asarray(h0, cdt)
    return cdt, u, raw, dt, np.asarray(A, cdt), Bx, Cx, Dv, z, h0


def _order(L: int, reverse: bool) -> list[int]:
    return list(range(L - 1, -1, -1)) if reverse else list(range(L))


def _resets(seq_idx, order, nb):
    """resets[s] (batch,) is True where the state restarts at step s of the scan."""
    out = [np.zeros(nb, bool) for _ in order]
    if seq_idx is not None:
        for s in range(1, len(order)):
            out[s] = seq_idx[:, order[s]] != seq_idx[:, order[s - 1]]
    return out


def _states(cdt, u, dt, A, Bx, h0, seq_idx, reverse):
    """All states in scan order: xs[s] = x after step s; also a_eff[s] and x_prev[s]."""
    nb, nd, L = u.shape
    order = _order(L, reverse)
    resets = _resets(seq_idx, order, nb)
    x = h0.copy()
    xs, aeff, xprev = [], [], []
    for s, t in enumerate(order):
        r = resets[s][:, None, None]
        xp = np.where(r, 0, x)
        with np.errstate(over="ignore", invalid="ignore"):
            a = np.exp(dt[:, :, t, None] * A[None])
        x = a * xp + (dt[:, :, t] * u[:, :, t])[:, :, None] * Bx[:, :, t, :]
        xs.append(x)
        aeff.append(np.where(r, 0, a))
        xprev.append(xp)
    return order, xs, aeff, xprev


def selective_scan_fwd(u, delta, A, B, C, Dv, z, delta_bias, h0, seq_idx,
                       b_var, c_var, ratio_b, ratio_c, softplus, reverse, save):
    """Forward -> (out (batch, D, L) float64, last state (batch, D, N), None)."""
    cdt, u64, _, dt, A, Bx, Cx, Dv, z, h0 = _prepare(u, delta, A, B, C, Dv, z, delta_bias, h0,
                                                    b_var, c_var, ratio_b, ratio_c, softplus)
    yfac = 2.0 if cdt is np.complex128 else 1.0
    has_D, has_z = Dv is not None, z is not None
    order, xs, _, _ = _states(cdt, u64, dt, A, Bx, h0, seq_idx, reverse)
    out = np.empty(u.shape, np.float64)
    for s, t in enumerate(order):
        y = yfac * np.real(np.sum(Cx[:, :, t, :] * xs[s], axis=-1))
        if has_D:
            y = y + Dv[None, :] * u64[:, :, t]
        if has_z:
            y = y * z[:, :, t] * _sigmoid(z[:, :, t])
        out[:, :, t] = y
    last = xs[-1] if xs else h0
    return out, last, None


def selective_scan_bwd(u, delta, A, B, C, Dv, z, delta_bias, h0, seq_idx,
                       b_var, c_var, ratio_b, ratio_c, softplus, reverse, ckpt, dout, dlast):
    """Backward -> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0) in canonical shapes.

    (``dD`` / ``dz`` are None where ``Dv`` / ``z`` are).
    """
    cdt, u64, raw, dt, A, Bx, Cx, Dv, z, h0 = _prepare(u, delta, A, B, C, Dv, z, delta_bias, h0,
                                                      b_var, c_var, ratio_b, ratio_c, softplus)
    nb, nd, L = u.shape
    N = A.shape[1]
    yfac = 2.0 if cdt is np.complex128 else 1.0
    has_D, has_z = Dv is not None, z is not None
    order, xs, aeff, xprev = _states(cdt, u64, dt, A, Bx, h0, seq_idx, reverse)
    dout = np.asarray(dout, np.float64)

    du = np.zeros((nb, nd, L))
    ddt = np.zeros((nb, nd, L))
    dz = np.zeros((nb, nd, L)) if has_z else None
    dA = np.zeros((nd, N), cdt)
    dBx = np.zeros((nb, nd, L, N), cdt)  # per-channel contributions, reduced below
    dCx = np.zeros((nb, nd, L, N), cdt)
    dD = np.zeros(nd)
    # a_{t+1} g_{t+1}, starting with the final-state cotangent
    g_next = np.zeros((nb, nd, N), cdt) if dlast is None else np.asarray(dlast, cdt)
    for s in range(L - 1, -1, -1):
        t = order[s]
        ghat = dout[:, :, t]
        if has_z:
            sig = _sigmoid(z[:, :, t])
            pre = yfac * np.real(np.sum(Cx[:, :, t, :] * xs[s], axis=-1))
            if has_D:
                pre = pre + Dv[None, :] * u64[:, :, t]
            dz[:, :, t] = dout[:, :, t] * pre * sig * (1.0 + z[:, :, t] * (1.0 - sig))
            ghat = ghat * z[:, :, t] * sig
        if has_D:
            dD += np.sum(ghat * u64[:, :, t], axis=0)
            du[:, :, t] += ghat * Dv[None, :]
        g = yfac * ghat[:, :, None] * Cx[:, :, t, :] + g_next
        dtt = dt[:, :, t][:, :, None]
        ut = u64[:, :, t][:, :, None]
        alpha = aeff[s] * xprev[s]  # d x_t / d(exp(dt A)) contracted with the decay
        du[:, :, t] += np.real(np.sum(g * dtt * Bx[:, :, t, :], axis=-1))
        ddt[:, :, t] = np.real(np.sum(g * Bx[:, :, t, :] * ut + g * A[None] * alpha, axis=-1))
        dA += np.sum(g * dtt * alpha, axis=0)
        dBx[:, :, t, :] = g * dtt * ut
        dCx[:, :, t, :] = yfac * ghat[:, :, None] * xs[s]
        g_next = aeff[s] * g
    if softplus:
        ddt = np.where(raw <= 20.0, ddt * _sigmoid(raw), ddt)
    ddelta_bias = ddt.sum(axis=(0, 2))
    dB = _reduce_bc(dBx, b_var, ratio_b)
    dC = _reduce_bc(dCx, c_var, ratio_c)
    return du, ddt, dA, dB, dC, dD if has_D else None, dz if has_z else None, ddelta_bias, g_next


def _reduce_bc(dX: np.ndarray, var: bool, ratio: int) -> np.ndarray:
    """Adjoint of :func:`_per_channel`: sum channels into groups, or batch and time into (1, D, 1, N)."""
    nb, nd, L, N = dX.shape
    if var:
        return dX.reshape(nb, nd // ratio, ratio, L, N).sum(axis=2)
    return dX.sum(axis=(0, 2))[None, :, None, :]
