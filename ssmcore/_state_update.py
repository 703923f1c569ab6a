"""Mamba's decoding step ``selective_state_update``: front door, op registration and VJP.

Semantics follow ``mamba_ssm.ops.triton.selective_state_update`` (see
``docs/selective_scan.md``, "Decoding step"): the plain form ``state (batch, D, N)``
and the heads form ``state (batch, heads, dim, N)`` of Mamba-2, grouped ``B``/``C``,
``state_batch_indices`` into a larger state cache (with padded slots) and, for NumPy
arrays, an in-place state update. Looping it over time reproduces
:func:`ssmcore.selective_scan` with ``h0`` and ``return_last_state``.

Both forms are brought to one canonical heads layout (pure reshapes, no copies): the
plain form with ``G`` groups is ``H = lcm(G_B, G_C)`` heads of ``D / H`` channels. The
kernels (``reference/state_update.py``, ``backends/numba/state_update.py``) own the
layout and allocation of their outputs. The registered op ``"selective_state_update"``
is functional: it returns ``(out, new_state)`` and never writes its inputs; ``inplace=``
belongs to the public NumPy function only (like ``linear_scan``'s ``out=``), so the
adapters and :func:`ssmcore.vjp` never see it. The backward is array-API glue (the
step is elementwise in (batch, head, dim, state)), so it serves every device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._xp import dtype_name
from .dispatch import Target, select
from .registry import register_op
from .validation import as_float_array, check_bool, shape_error

__all__ = ["selective_state_update"]

_FN = "selective_state_update"
_INPUTS = ("state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias")


def _iscomplex(xp: Any, dt: Any) -> bool:
    kind = getattr(dt, "kind", None)
    return kind == "c" if kind is not None else bool(xp.isdtype(dt, "complex floating"))


def _astype(t: Target) -> Any:
    if t.kind == "numpy":
        return lambda x, dtype: x.astype(dtype, copy=False)
    xp = t.xp
    return lambda x, dtype: xp.astype(x, dtype, copy=False)


def _orig_dtype(xp: Any, x: Any, norm: Any) -> Any:
    """The caller's floating dtype (float16 stays float16 for the output), else the normalised one."""
    dt = getattr(x, "dtype", None)
    if dt is None or isinstance(x, (list, tuple)):
        return norm.dtype
    kind = getattr(dt, "kind", None)
    if kind is not None:
        return (dt if dt.isnative else dt.newbyteorder("=")) if kind in "fc" else norm.dtype  # '>f4' -> float32
    return dt if xp.isdtype(dt, ("real floating", "complex floating")) else norm.dtype


@dataclass
class _Prep:
    """Canonical kernel arguments and what the backward needs to map gradients back."""

    target: Target
    args: tuple  # (state, x, dt, A, B, C, D, z, dt_bias) canonical, in the compute dtypes
    softplus: bool
    idx: Any  # (b,) int64 with -1 for padded slots, or None
    shapes: tuple  # the callers' shapes of the inputs (None where absent)
    dtypes: tuple  # the normalised input dtypes the gradients come back in
    out_shape: tuple
    out_dtype: Any
    sdt: Any
    rdt: Any


def _prepare(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, pad_slot_id, t) -> _Prep:
    fn = _FN
    xp = t.xp
    astype = _astype(t)
    x_in = x
    state = as_float_array(fn, "state", state, target=t)
    heads = state.ndim == 4
    if state.ndim not in (3, 4):
        raise shape_error(fn, "state", state.shape, "(batch, D, N) or (batch, heads, dim, N)")
    chan = "(heads, dim)" if heads else "(D,)"
    x = as_float_array(fn, "x", x, complex_ok=False, target=t)
    xform = "(batch, heads, dim)" if heads else "(batch, D)"
    if x.ndim != state.ndim - 1:
        raise shape_error(fn, "x", x.shape, xform)
    nb = x.shape[0]
    cs = tuple(x.shape[1:])  # channel shape: (D,) or (heads, dim)
    dt = as_float_array(fn, "dt", dt, complex_ok=False, target=t)
    if tuple(dt.shape) != tuple(x.shape):
        raise shape_error(fn, "dt", dt.shape, f"{xform} = {tuple(x.shape)}, the shape of x")
    A = as_float_array(fn, "A", A, target=t)
    if A.ndim != len(cs) + 1 or tuple(A.shape[:-1]) != cs or A.shape[-1] < 1:
        want = f"(heads, dim, N) with (heads, dim)={cs}" if heads else f"(D, N) with D={cs[0]}"
        raise shape_error(fn, "A", A.shape, f"{want} (from x) and N >= 1")
    N = A.shape[-1]
    a_complex = _iscomplex(xp, A.dtype)
    rdt = xp.float64 if (x.dtype == xp.float64 or dt.dtype == xp.float64) else xp.float32
    sdt = (xp.complex128 if rdt == xp.float64 else xp.complex64) if a_complex else rdt
    if state_batch_indices is None:
        idx = None
        if tuple(state.shape) != (nb, *cs, N):
            form = "(batch, heads, dim, N)" if heads else "(batch, D, N)"
            raise shape_error(fn, "state", state.shape, f"{form} = {(nb, *cs, N)}")
    else:
        if tuple(state.shape[1:]) != (*cs, N) or state.shape[0] < 1:
            form = "(cache, heads, dim, N)" if heads else "(cache, D, N)"
            raise shape_error(fn, "state", state.shape, f"{form} with {(*cs, N)} after the cache axis")
        idx = _indices(t, state_batch_indices, nb, state.shape[0], pad_slot_id)
    if not a_complex and _iscomplex(xp, state.dtype):
        raise TypeError(f"{fn}: state has dtype {dtype_name(state.dtype)} but A is real; "
                        f"complex state needs complex A")
    nh_div = cs[0]  # what the group count must divide: heads, or D in the plain form

    def group(name, X):
        X = as_float_array(fn, name, X, target=t)
        if not a_complex and _iscomplex(xp, X.dtype):
            raise TypeError(f"{fn}: {name} has dtype {dtype_name(X.dtype)} but A is real; "
                            f"complex {name} needs complex A")
        X3 = xp.reshape(X, (X.shape[0], 1, X.shape[-1])) if X.ndim == 2 else X
        if X3.ndim != 3 or X3.shape[0] != nb or X3.shape[2] != N or X3.shape[1] < 1 or nh_div % X3.shape[1]:
            what = "heads" if heads else "D"
            raise shape_error(fn, name, X.shape, f"(batch, N) or (batch, G, N) with batch={nb}, N={N}, "
                                                  f"G dividing {what}={nh_div}")
        return X, astype(X3, sdt)

    Bo, Bc = group("B", B)
    Co, Cc = group("C", C)

    def vec(name, v, shape, form):
        if v is None:
            return None, None
        v = as_float_array(fn, name, v, complex_ok=False, target=t)
        if tuple(v.shape) != shape:
            raise shape_error(fn, name, v.shape, f"{form} = {shape}")
        return v, astype(v, rdt)

    Do, Dc = vec("D", D, cs, chan)
    bo, bc = vec("dt_bias", dt_bias, cs, chan)
    zo, zc = vec("z", z, tuple(x.shape), xform)
    softplus = check_bool(fn, "dt_softplus", dt_softplus)

    # Canonical heads layout.
    if heads:
        H, P = cs
    else:
        H = math.lcm(Bc.shape[1], Cc.shape[1])
        P = cs[0] // H
    rs = lambda a, s: None if a is None else xp.reshape(a, s)  # noqa: E731
    args = (
        xp.reshape(astype(state, sdt), (state.shape[0], H, P, N)),
        xp.reshape(astype(x, rdt), (nb, H, P)),
        xp.reshape(astype(dt, rdt), (nb, H, P)),
        xp.reshape(astype(A, sdt), (H, P, N)),
        Bc, Cc, rs(Dc, (H, P)), rs(zc, (nb, H, P)), rs(bc, (H, P)),
    )
    origs = (state, x, dt, A, Bo, Co, Do, zo, bo)
    return _Prep(
        t, args, softplus, idx,
        tuple(None if o is None else tuple(o.shape) for o in origs),
        tuple(None if o is None else o.dtype for o in origs),
        tuple(x.shape), _orig_dtype(xp, x_in, x), sdt, rdt,
    )


def _indices(t: Target, idx: Any, nb: int, cache: int, pad: int | None) -> Any:
    """``state_batch_indices`` as int64 with -1 for padded slots; values checked for NumPy input."""
    fn = _FN
    xp = t.xp
    if pad is not None and (isinstance(pad, (bool, np.bool_)) or not isinstance(pad, (int, np.integer))):
        raise TypeError(f"{fn}: pad_slot_id must be an int or None; got {type(pad).__name__} {pad!r}")
    s = np.asarray(idx) if t.kind == "numpy" else (idx if hasattr(idx, "__array_namespace__") else t.asarray(idx))
    if not xp.isdtype(s.dtype, "integral"):
        raise TypeError(f"{fn}: state_batch_indices has dtype {dtype_name(s.dtype)}; expected an integer dtype")
    if tuple(s.shape) != (nb,):
        raise shape_error(fn, "state_batch_indices", s.shape, f"(batch,) = ({nb},)")
    s = xp.astype(s, xp.int64)
    padded = None if pad is None else (s == pad)
    if t.kind == "numpy":  # device arrays are not checked: that would be a host sync per step
        bad = (s < 0) | (s >= cache)
        if padded is not None:
            bad &= ~padded
        if bad.any():
            v = int(np.asarray(idx).ravel()[np.argmax(bad)])
            extra = "" if pad is None else f" or pad_slot_id={pad}"
            raise ValueError(f"{fn}: state_batch_indices has entry {v}; expected 0 <= index < {cache} "
                             f"(the cache size, state.shape[0]){extra}")
    if padded is not None:
        s = xp.where(padded, xp.asarray(-1, dtype=xp.int64, device=t.device), s)
    return s


def _forward(p: _Prep, out_state: Any = None) -> tuple[Any, Any]:
    t = p.target
    xp = t.xp
    st, x, dt, A, B, C, D, z, bias = p.args
    y, new = t.kernels("state_update").state_update_fwd(
        st, x, dt, A, B, C, D, z, bias, p.softplus, p.idx, out_state=out_state)
    y = xp.astype(xp.reshape(y, p.out_shape), p.out_dtype, copy=False)
    if out_state is None:
        new = xp.reshape(new, p.shapes[0])
    return y, new


def _fwd(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, state_batch_indices=None,
         *, pad_slot_id=None, backend=None):
    t = select(_FN, state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices, backend=backend)
    p = _prepare(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, pad_slot_id, t)
    return _forward(p), p


def _bwd(p: _Prep, ct: Any, needs: tuple[bool, ...] | None = None) -> tuple[Any, ...]:
    """Transpose of the step's linearisation (no conjugation; see reference/selective_scan.py)."""
    t = p.target
    xp = t.xp
    dev = t.device
    needs = needs or (True,) * len(_INPUTS)
    st, x, dt, A, B, C, D, z, bias = p.args
    S, H, P, N = st.shape
    nb = x.shape[0]
    sdt, rdt = p.sdt, p.rdt
    cplx = _iscomplex(xp, sdt)
    g_out, g_new = ct if isinstance(ct, tuple) else (ct, None)
    g_out = (xp.zeros((nb, H, P), dtype=rdt, device=dev) if g_out is None
             else xp.reshape(xp.astype(g_out, rdt), (nb, H, P)))
    g_new = (xp.zeros((S, H, P, N), dtype=sdt, device=dev) if g_new is None
             else xp.reshape(xp.astype(g_new, sdt), (S, H, P, N)))
    # Rows read and written.
    if p.idx is None:
        s, valid, gn_rows = st, None, g_new
    else:
        idx = p.idx
        valid = idx >= 0
        safe = xp.where(valid, idx, xp.zeros_like(idx))
        s = xp.take(st, safe, axis=0)
        ar = xp.arange(nb, device=dev)
        later = (idx[:, None] == idx[None, :]) & (ar[None, :] > ar[:, None])
        write = valid & ~xp.any(later, axis=1)
        gn_rows = xp.take(g_new, safe, axis=0) * xp.astype(write, sdt)[:, None, None, None]
        g_out = g_out * xp.astype(valid, rdt)[:, None, None]
    # Recompute the forward pieces.
    dpre = dt if bias is None else dt + bias
    if p.softplus:
        with np.errstate(over="ignore"):
            delta = xp.where(dpre > 20, dpre, xp.log1p(xp.exp(xp.minimum(dpre, 20.0))))
    else:
        delta = dpre
    Bh = xp.repeat(B, H // B.shape[1], axis=1)[:, :, None, :]
    Ch = xp.repeat(C, H // C.shape[1], axis=1)[:, :, None, :]
    with np.errstate(over="ignore", invalid="ignore"):
        dA = xp.exp(delta[..., None] * A)
        new = dA * s + (delta * x)[..., None] * Bh
        y0 = xp.sum(Ch * new, axis=-1)
        y0 = 2 * xp.real(y0) if cplx else y0
        if D is not None:
            y0 = y0 + D * x
        g_z = None
        if z is not None:
            sg = 1 / (1 + xp.exp(-z))
            g_y = g_out * z * sg
            g_z = g_out * y0 * sg * (1 + z * (1 - sg))
        else:
            g_y = g_out
    k = 2 if cplx else 1
    G = gn_rows + xp.astype(k * g_y, sdt)[..., None] * Ch  # adjoint of new (b, H, P, N)
    re = (lambda v: xp.real(v)) if cplx else (lambda v: v)

    def to_groups(g4, ng):  # (b, H, P, N) -> (b, G, N): sum over dim and the heads of a group
        g3 = xp.sum(g4, axis=2)
        return xp.sum(xp.reshape(g3, (nb, ng, H // ng, N)), axis=2)

    g_C = to_groups(k * xp.astype(g_y, sdt)[..., None] * new, C.shape[1]) if needs[5] else None
    g_B = to_groups(G * (delta * x)[..., None], B.shape[1]) if needs[4] else None
    g_dA = G * s
    g_A = xp.sum(g_dA * dA * delta[..., None], axis=0) if needs[3] else None
    g_delta = re(xp.sum(g_dA * dA * A + G * x[..., None] * Bh, axis=-1))
    g_x = re(xp.sum(G * delta[..., None] * Bh, axis=-1))
    if D is not None:
        g_x = g_x + g_y * D
    g_D = None if D is None else xp.sum(g_y * x, axis=0)
    if p.softplus:
        g_dpre = xp.where(dpre > 20, g_delta, g_delta / (1 + xp.exp(-xp.minimum(dpre, 20.0))))
    else:
        g_dpre = g_delta
    g_bias = None if bias is None else xp.sum(g_dpre, axis=0)
    # The state: rows overwritten lose the incoming cotangent; the rows read get dA * G.
    g_s = G * dA
    if p.idx is None:
        g_state = g_s
    else:
        rows = xp.arange(S, device=dev)[:, None]
        hit = xp.astype((rows == idx[None, :]) & valid[None, :], sdt)  # (S, b)
        written = xp.any((rows == idx[None, :]) & write[None, :], axis=1)
        g_state = (g_new * xp.astype(~written, sdt)[:, None, None, None]
                   + xp.reshape(xp.matmul(hit, xp.reshape(g_s, (nb, H * P * N))), (S, H, P, N)))
    grads = (g_state, g_x, g_dpre, g_A, g_B, g_C, g_D, g_z, g_bias)
    out = []
    for g, shape, dtype, need in zip(grads, p.shapes, p.dtypes, needs):
        if g is None or shape is None or not need:
            out.append(None)
            continue
        if _iscomplex(xp, g.dtype) and not _iscomplex(xp, dtype):
            g = xp.real(g)
        out.append(xp.astype(xp.reshape(g, shape), dtype, copy=False))
    return tuple(out)


@register_op(_FN, fwd=_fwd, bwd=_bwd, inputs=_INPUTS, backends=("numpy", "numba", "cupy"))
def _selective_state_update_op(
    state: Any, x: Any, dt: Any, A: Any, B: Any, C: Any, D: Any = None, z: Any = None, dt_bias: Any = None,
    dt_softplus: bool = False, state_batch_indices: Any = None, *, pad_slot_id: int | None = None,
    backend: str | None = None,
) -> tuple[Any, Any]:
    """The functional op behind :func:`selective_state_update` (no ``inplace``)."""
    t = select(_FN, state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices, backend=backend)
    p = _prepare(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, pad_slot_id, t)
    return _forward(p)


def selective_state_update(
    state: Any,
    x: Any,
    dt: Any,
    A: Any,
    B: Any,
    C: Any,
    D: Any = None,
    z: Any = None,
    dt_bias: Any = None,
    dt_softplus: bool = False,
    state_batch_indices: Any = None,
    *,
    pad_slot_id: int | None = None,
    backend: str | None = None,
    inplace: bool = False,
) -> tuple[Any, Any]:
    r"""One decoding step of the selective scan (mamba_ssm's ``selective_state_update``).

    .. math::

        \delta = \operatorname{softplus}(dt + dt_{bias}), \qquad
        s' = e^{\delta A} \odot s + \delta\, B\, x, \qquad
        out = \Big(\sum_n C_n s'_n + D x\Big) \cdot \operatorname{silu}(z)

    per (batch, channel, state), with ``softplus`` applied only if ``dt_softplus``
    (and linear above 20, as in mamba_ssm) and :math:`2\,\mathrm{Re}(\sum_n \dots)`
    for complex ``A``. Looping this over t reproduces :func:`selective_scan` (with
    ``h0`` the initial state and ``return_last_state``). Differentiable: op
    ``"selective_state_update"`` of :func:`ssmcore.vjp`, gradients for every array
    input, both outputs carry cotangents.

    Parameters
    ----------
    state : array, shape (batch, D, N) or (batch, heads, dim, N)
        The state; real, or complex for complex A. With ``state_batch_indices`` the
        first axis is a cache of any size and the step reads/writes the rows named.
    x : array, shape (batch, D) or (batch, heads, dim)
        The input of this step.
    dt : array, shape of x
        The step sizes before ``dt_bias`` and ``softplus``.
    A : array, shape (D, N) or (heads, dim, N)
        The continuous-time diagonal state matrix (negative real parts for a stable step).
    B : array, shape (batch, N) or (batch, G, N)
        The input projection of this step. G groups divide D (plain form: channel d
        uses group ``d // (D / G)``) or heads (heads form: head h uses group
        ``h // (heads / G)``), as in mamba_ssm.
    C : array, shape (batch, N) or (batch, G, N)
        The readout of this step, grouped as ``B``.
    D : array, shape (D,) or (heads, dim), optional
        The skip connection; none by default.
    z : array, shape of x, optional
        The gate: the output is multiplied by ``silu(z)``; no gate by default.
    dt_bias : array, shape (D,) or (heads, dim), optional
        Added to ``dt`` before ``softplus``; none by default.
    dt_softplus : bool, default False
        Apply ``softplus`` to ``dt + dt_bias``.
    state_batch_indices : integer array, shape (batch,), optional
        Batch entry i uses ``state[state_batch_indices[i]]``. Repeated entries all read
        the old row; the last one writes it. Entries equal to ``pad_slot_id`` are
        padding: nothing is read or written and their output is 0. Values are
        range-checked for NumPy input (not on devices: a host sync per step).
    pad_slot_id : int, optional
        The padding marker of ``state_batch_indices`` (vLLM uses -1); default none.
    backend : {None, "numba", "numpy", "cupy"}, optional
        Force a backend; by default Numba for NumPy arrays, CUDA for CuPy arrays.
    inplace : bool, default False
        NumPy arrays only: write the new state into ``state`` (mamba_ssm's behaviour;
        cast to ``state``'s dtype) and return ``state`` as the new state. Not part of
        the registered op (the adapters are functional).

    Returns
    -------
    out : array, shape of x, dtype of x
        The output of this step.
    new_state : array, shape of ``state``
        In the compute dtype (float32/float64, complex64/complex128 for complex A); with
        ``inplace=True``, ``state`` itself.

    Raises
    ------
    ValueError
        For a shape that does not match (the message names the argument, the expected
        and the actual shape), an out-of-range ``state_batch_indices`` entry, or
        ``inplace=True`` on a read-only state.
    TypeError
        For a complex state, B or C with a real ``A``, a non-integer
        ``state_batch_indices`` or ``pad_slot_id``, or ``inplace=True`` on a state that
        is not a NumPy array or cannot hold the complex result.

    See Also
    --------
    selective_scan : The whole sequence at once (training and prefill).
    vjp : The step's pullback, ``vjp("selective_state_update", ...)``.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import selective_state_update
    >>> state = np.zeros((1, 2, 3)); x = np.ones((1, 2)); dt = np.full((1, 2), 0.5)
    >>> A = -np.ones((2, 3)); B = np.ones((1, 3)); C = np.ones((1, 3))
    >>> out, state = selective_state_update(state, x, dt, A, B, C)
    >>> out
    array([[1.5, 1.5]])
    >>> out, same = selective_state_update(state, x, dt, A, B, C, inplace=True)
    >>> same is state
    True
    """
    if not check_bool(_FN, "inplace", inplace):
        return _selective_state_update_op(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices,
                                          pad_slot_id=pad_slot_id, backend=backend)
    t = select(_FN, state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices, backend=backend)
    if t.kind != "numpy" or type(state) is not np.ndarray:
        raise TypeError(f"{_FN}: inplace=True needs a NumPy ndarray state; got {type(state).__name__} "
                        f"({t.kind} inputs)")
    if not state.flags.writeable:
        raise ValueError(f"{_FN}: inplace=True but state is read-only")
    p = _prepare(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, pad_slot_id, t)
    if _iscomplex(np, p.sdt) and state.dtype.kind != "c":
        raise TypeError(f"{_FN}: inplace=True but state has dtype {state.dtype} and A is complex; "
                        f"the new state is complex")
    direct = state.dtype == p.sdt and state.flags.c_contiguous
    if direct:  # the kernel writes the cache itself (p.args[0] is a view of state)
        y, _ = _forward(p, out_state=p.args[0])
    else:
        y, new = _forward(p)
        np.copyto(state, new, casting="same_kind")
    return y, state


selective_state_update.__ssmcore_op__ = _FN
_selective_state_update_op.__name__ = _selective_state_update_op.__qualname__ = _FN
_selective_state_update_op.__doc__ = selective_state_update.__doc__
