"""NumPy specification of LTI simulation: dense (forward, chunked scan, backward) and diagonal.

This module is the **kernel contract**: every backend module
(``ssmcore.backends.<device>.lti``) defines the functions of ``__all__`` with
exactly these names and parameters. Launchers **allocate and return** their
outputs and choose their own work split (threads, chunks, blocks); the front
door (``ssmcore/_lti.py``) passes operands only, all arrays of one namespace and
device (NumPy for this module and Numba, CuPy for the GPU). Operands may be
any layout; a launcher makes contiguous what it needs. Every launcher must
handle ``batch == 0`` / ``R == 0`` and ``L == 0`` (empty outputs; the final
state is then ``x0``) and propagate NaN/inf like this module.

Dense systems (SSM convention, one system per batch element ``b``)
--------------------------------------------------------------------

::

    x_t = A x_{t-1} + B u_t,      y_t = C x_t + D u_t,      x_{-1} = x0

Operands are *flattened, un-broadcast* plus an index map, so that "one
system, many inputs" (or the reverse) never copies the shared operand. One
dtype ``dt`` for all of them (float32, float64, complex64 or complex128; the
front door promotes):

* ``A`` (nA, N, N), ``B`` (nB, N, M), ``C`` (nC, P, N), ``D`` (nD, P, M),
  ``u`` (nU, M, L) time-last, ``x0`` (nX, N) (zeros when the caller gave none);
* ``idx`` (batch, 6) int64, on the operands' device: row ``b`` holds the
  indices of the A, B, C, D, u and x0 used by batch element ``b`` (in that
  column order). ``P`` may be 0 (a readout-free recurrence; ``y`` is then
  (batch, 0, L)).

Checkpoints: ``ck`` (batch, ceil(L / K), N) holds the state *entering* chunk
``c`` of length ``K`` (``x_{cK-1}``, so ``ck[:, 0] = x0``). With ``K = 1`` that
is the whole trajectory ``x_{-1} .. x_{L-2}`` -- exactly
``scipy.signal.dlsim``'s ``xout``. The backward recomputes each chunk from its
checkpoint, so the forward never stores all ``L`` states.

``simulate_recurrent(A, B, C, D, u, x0, idx, keep_checkpoints=False, K=None) -> (y, x_final, ck, K)``
    The recurrence, sequential in time. Returns ``y`` (batch, P, L) and
    ``x_final`` (batch, N) (= ``x_{L-1}``, ``x0[idx[:, 5]]`` when L = 0), both of
    dtype ``dt``. With ``keep_checkpoints`` also ``ck`` (batch, ceil(L / K), N)
    ``dt`` at interval ``K`` (an int >= 1): ``K=None`` lets the launcher choose
    (this module and Numba: ``max(16, isqrt(L))``); a given ``K`` must be
    honoured (``dlsim`` passes 1; tests force others). Without
    ``keep_checkpoints``: ``ck`` and ``K`` are returned as ``None``.
``simulate_scan(A, B, C, D, u, x0, idx, keep_checkpoints=False, K=None, per_chunk=None) -> (y, x_final, ck, K)``
    The same results by a chunked parallel scan over time with chunks of
    ``S = K * per_chunk`` steps (see :func:`simulate_scan`). The launcher
    chooses ``S`` (from its parallelism) and, with ``keep_checkpoints``, the
    interval ``K`` dividing it; ``K`` and ``per_chunk`` given (tests) must be
    honoured. Returns as :func:`simulate_recurrent` (``ck``/``K`` None without
    ``keep_checkpoints``); the checkpoints equal the recurrent mode's at the
    same ``K`` up to rounding.
``simulate_backward(A, B, C, D, u, idx, K, ck, gy, g_final) -> (gA, gB, gC, gD, gu, gx0)``
    The reverse-time adjoint from the forward's checkpoints ``ck`` at interval
    ``K`` (as returned by a forward with ``keep_checkpoints=True``);
    ``gy`` (batch, P, L) and ``g_final`` (batch, N) in ``dt``. Returns
    *per-batch-element* gradients in ``dt``: ``gA`` (batch, N, N), ``gB`` (batch,
    N, M), ``gC`` (batch, P, N), ``gD`` (batch, P, M), ``gu`` (batch, M, L), ``gx0``
    (batch, N); the front door reduces them over broadcasting.
``control_readout(x, u, C, D) -> y``
    dlsim's output equation ``y[k] = C x[k] + D u[k]``, time-first: ``x`` (L, N),
    ``u`` (L, M), ``C`` (P, N), ``D`` (P, M), one dtype; returns ``y`` (L, P).

Diagonal systems (S4D, S5, LRU): rows r = (batch element, channel)
--------------------------------------------------------------------

::

    x_t[r, n] = A[r, n] x_{t-1}[r, n] + B[r, n] u[r, t]          (x_{-1} = x0)
    y[r, t]   = proj(scale * sum_n C[r, n] x_t[r, n]) + D[r] u[r, t]

with proj = Re when ``real_output``, the identity otherwise. Operands are
materialised per row: ``A``, ``B``, ``C``, ``x0`` (R, N) in the compute dtype
``ct`` (real or complex); ``D`` (R,) and ``u`` (R, L) in the output dtype
``ot`` = ``real(ct)`` if ``real_output`` else ``ct`` (``u`` may be of lower
precision than ``ct`` in the complex case: it is read as is). ``scale`` is a
Python float (1.0, or 2.0 for conjugate-pair modes), ``real_output`` a Python
bool, ``L`` a Python int.

``diag_recurrent(A, B, C, D, u, x0, scale, real_output) -> (y, x_final)``
    Fused recurrence and readout: ``y`` (R, L) of dtype ``ot``, ``x_final``
    (R, N) of dtype ``A.dtype`` (``x0`` when L = 0).
``diag_final_state(A, B, u, x0) -> x_final``
    The recurrence without readout: ``x_final`` (R, N) of dtype ``A.dtype``.
``diag_kernel(A, W, scale, L, real_output) -> K``
    Impulse-response kernels ``K[r, l] = proj(scale * sum_n W[r, n] A[r, n]^l)``,
    ``l < L``, by running products: ``K`` (R, L) of dtype ``real(W.dtype)`` if
    ``real_output`` else ``W.dtype`` (``A``, ``W`` (R, N), one dtype).
``diag_backward(A, B, C, D, u, x0, scale, gy, g_final) -> (gA, gB, gC, gD, gu, gx0)``
    Adjoint of :func:`diag_recurrent`; here every array is in ``ct`` (the front
    door casts ``D``, ``u`` and the cotangents ``gy`` (R, L), ``g_final`` (R, N);
    their real part when the output or the state is real). Returns ``gA``, ``gB``,
    ``gC`` (R, N), ``gD`` (R,), ``gu`` (R, L), ``gx0`` (R, N), all ``ct``; the
    launcher chooses its own recomputation scheme (Numba: checkpoints every
    ``max(16, isqrt(L))`` steps per row).

These loops compute in float64 / complex128 whatever the input dtype, write
results in the operands' dtype, and are slow on purpose;
``ssmcore.backends.numba.lti`` has the same functions, fast.
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = [
    "control_readout",
    "diag_backward",
    "diag_final_state",
    "diag_kernel",
    "diag_recurrent",
    "simulate_backward",
    "simulate_recurrent",
    "simulate_scan",
]


def _checkpoint_interval(L: int) -> int:
    # ~sqrt(L) balances the checkpoints (batch * N * L / K) against the backward's
    # per-element recompute buffer (K * N).
    return max(16, math.isqrt(max(L, 1)))


def _scan_chunk_length(L: int, batch: int, N: int, threads: int) -> int:
    """Time-chunk length for the scan: enough chunks to feed ``threads`` workers.

    With batch >= threads the batch already fills the machine: one chunk (the scan
    then does exactly the recurrent work). Otherwise each sequence gets
    ceil(threads / batch) + 1 chunks (chunk 0 only runs in pass 1 and the last only
    in pass 2). Chunks stay long next to the N^3 log(S) cost of the chunk's A power.
    """
    if L == 0 or batch >= threads:
        return max(L, 1)
    n_chunks = -(-threads // batch) + 1
    return min(L, max(-(-L // n_chunks), 64 + 8 * N))


def _scan_plan(L: int, batch: int, N: int, threads: int, keep_checkpoints: bool,
               K: int | None, per_chunk: int | None) -> tuple[int, int]:
    """(K, per_chunk) for the scan: chunks of S = K * per_chunk steps, checkpoints every K."""
    if K is not None:
        return int(K), int(per_chunk) if per_chunk is not None else 1
    S = _scan_chunk_length(L, batch, N, threads)
    if not keep_checkpoints:
        return S, 1
    K = min(_checkpoint_interval(L), S)
    return K, max(1, S // K)


def _dense_outputs(A, C, u, idx, n_ck):
    nb, n, p, L = idx.shape[0], A.shape[1], C.shape[1], u.shape[2]
    dt = A.dtype
    return np.empty((nb, p, L), dt), np.empty((nb, n), dt), np.empty((nb, n_ck, n), dt)


def _wide(x: np.ndarray) -> np.ndarray:
    """float64 / complex128 copy: the reference computes in double precision."""
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def _operands(A, B, C, D, u, x0, idx, b):
    i = idx[b]
    x_init = None if x0 is None else _wide(x0[i[5]])
    return _wide(A[i[0]]), _wide(B[i[1]]), _wide(C[i[2]]), _wide(D[i[3]]), _wide(u[i[4]]), x_init


def _recurrent_into(A, B, C, D, u, x0, idx, K, y, x_final, ck):
    L = u.shape[2]
    n_ck = ck.shape[1]
    for b in range(idx.shape[0]):
        a, bm, c, d, ub, x = _operands(A, B, C, D, u, x0, idx, b)
        for t in range(L):
            if t % K == 0 and t // K < n_ck:
                ck[b, t // K] = x
            x = a @ x + bm @ ub[:, t]
            y[b, :, t] = c @ x + d @ ub[:, t]
        x_final[b] = x


def simulate_recurrent(A, B, C, D, u, x0, idx, keep_checkpoints=False, K=None):
    """Step the recurrence sequentially; with ``keep_checkpoints`` store the state every ``K`` steps.

    Returns ``(y, x_final, ck, K)`` (``ck``, ``K`` None without checkpoints).
    """
    L = u.shape[2]
    if keep_checkpoints:
        K = _checkpoint_interval(L) if K is None else int(K)
        n_ck = -(-L // K)
    else:
        K, n_ck = max(L, 1), 0
    y, x_final, ck = _dense_outputs(A, C, u, idx, n_ck)
    _recurrent_into(A, B, C, D, u, x0, idx, K, y, x_final, ck)
    return (y, x_final, ck, K) if keep_checkpoints else (y, x_final, None, None)


def simulate_scan(A, B, C, D, u, x0, idx, keep_checkpoints=False, K=None, per_chunk=None):
    """Chunked parallel-scan evaluation with chunks of ``S = K * per_chunk`` steps.

    The pairs (A, B u_t) compose associatively: (A1, b1) o (A2, b2) = (A2 A1, A2 b1 + b2).
    A chunk of S steps therefore maps its entering state x to A^S x + h, where h is
    the chunk's end state started from zero. So:

    1. every chunk computes h from a zero state (independent across chunks);
    2. carry: entering_{c+1} = A^S entering_c + h_c (sequential but only one
       N x N matrix-vector product per chunk);
    3. every chunk reruns from its true entering state and writes y (independent).

    The reference plans its chunks for ``os.cpu_count()`` workers, so that the
    chunked algorithm (not a single chunk) is what it specifies on small batches.
    Returns ``(y, x_final, ck, K)`` like :func:`simulate_recurrent`.
    """
    L = u.shape[2]
    nb = idx.shape[0]
    K, per_chunk = _scan_plan(L, nb, A.shape[1], os.cpu_count() or 1, keep_checkpoints, K, per_chunk)
    y, x_final, ck = _dense_outputs(A, C, u, idx, -(-L // K))
    S = K * per_chunk
    n_chunks = -(-L // S)
    for b in range(nb):
        a, bm, c, d, ub, x_init = _operands(A, B, C, D, u, x0, idx, b)
        # 1. chunk-local end states (the carry-free part of each chunk)
        h = []
        for ci in range(n_chunks):
            x = np.zeros_like(x_init)
            for t in range(ci * S, min((ci + 1) * S, L)):
                x = a @ x + bm @ ub[:, t]
            h.append(x)
        # 2. carry the true entering state across chunks
        a_pow_s = np.linalg.matrix_power(a, S)
        entering = [x_init]
        for ci in range(n_chunks - 1):
            entering.append(a_pow_s @ entering[ci] + h[ci])
        # 3. rerun every chunk from its entering state, writing outputs and checkpoints
        x = x_init
        for ci in range(n_chunks):
            x = entering[ci]
            for t in range(ci * S, min((ci + 1) * S, L)):
                if t % K == 0:
                    ck[b, t // K] = x
                x = a @ x + bm @ ub[:, t]
                y[b, :, t] = c @ x + d @ ub[:, t]
        x_final[b] = x
    return (y, x_final, ck, K) if keep_checkpoints else (y, x_final, None, None)


def simulate_backward(A, B, C, D, u, idx, K, ck, gy, g_final):
    """Reverse-time adjoint recurrence (transpose of the linearisation, no conjugation).

    With lambda_t the cotangent of x_t (lambda_{L-1} also gets g_final)::

        lambda_t = C^T gy_t + A^T lambda_{t+1}
        gu_t = B^T lambda_t + D^T gy_t
        gA = sum_t lambda_t x_{t-1}^T      gB = sum_t lambda_t u_t^T
        gC = sum_t gy_t x_t^T              gD = sum_t gy_t u_t^T
        gx0 = A^T lambda_0

    Returns the per-batch-element gradients ``(gA, gB, gC, gD, gu, gx0)``; the
    caller reduces them over broadcasting. The reference recomputes the whole
    trajectory from ``ck[:, 0]`` (= x0).
    """
    L = u.shape[2]
    nb, n, m, p = idx.shape[0], A.shape[1], B.shape[2], C.shape[1]
    dt = A.dtype
    gA, gB, gC, gD = (np.zeros((nb,) + s, dt) for s in ((n, n), (n, m), (p, n), (p, m)))
    gu, gx0 = np.zeros((nb, m, L), dt), np.zeros((nb, n), dt)
    for b in range(nb):
        a, bm, c, d, ub, _ = _operands(A, B, C, D, u, None, idx, b)
        xs = np.zeros((L + 1, n), dtype=np.result_type(a, ck))  # xs[t + 1] = x_t, xs[0] = x0
        xs[0] = ck[b, 0] if ck.shape[1] else 0.0
        for t in range(L):
            xs[t + 1] = a @ xs[t] + bm @ ub[:, t]
        g = _wide(gy[b])
        r = _wide(g_final[b])  # A^T lambda_{t+1}, plus g_final at the end
        ga, gb, gc, gd = (np.zeros_like(mat, dtype=np.result_type(mat, r, xs)) for mat in (a, bm, c, d))
        for t in range(L - 1, -1, -1):
            lam = c.T @ g[:, t] + r
            gu[b, :, t] = bm.T @ lam + d.T @ g[:, t]
            ga += np.outer(lam, xs[t])
            gb += np.outer(lam, ub[:, t])
            gc += np.outer(g[:, t], xs[t + 1])
            gd += np.outer(g[:, t], ub[:, t])
            r = a.T @ lam
        gA[b], gB[b], gC[b], gD[b], gx0[b] = ga, gb, gc, gd, r
    return gA, gB, gC, gD, gu, gx0


def control_readout(x, u, C, D):
    """:func:`dlsim`'s output equation y[k] = C x[k] + D u[k], time-first: x (L, N), u (L, M) -> y (L, P)."""
    y = np.empty((x.shape[0], C.shape[0]), dtype=np.result_type(x, u, C, D))
    y[...] = _wide(x) @ _wide(C).T + _wide(u) @ _wide(D).T
    return y


# ---------------------------------------------------------------------------------
# Diagonal systems: rows r = (batch element, channel), all operands materialised
# (layout and dtypes in the module docstring)
# ---------------------------------------------------------------------------------


def _real_dtype(dt: np.dtype) -> np.dtype:
    return np.empty(0, dt).real.dtype


def _proj(z: np.ndarray, real_output: bool) -> np.ndarray:
    return z.real if real_output else z


def diag_recurrent(A, B, C, D, u, x0, scale, real_output):
    """The diagonal recurrence with its readout, vectorised over rows: ``(y, x_final)``."""
    R, L = u.shape
    y = np.empty((R, L), _real_dtype(A.dtype) if real_output else A.dtype)
    x_final = np.empty(A.shape, A.dtype)
    a, b, c, d, uu = _wide(A), _wide(B), _wide(C), _wide(D), _wide(u)
    x = _wide(x0).astype(np.result_type(a, b, x0))
    for t in range(L):
        x = a * x + b * uu[:, t : t + 1]
        y[:, t] = _proj(scale * np.sum(c * x, axis=1), real_output) + d * uu[:, t]
    x_final[...] = x
    return y, x_final


def diag_final_state(A, B, u, x0):
    """x_final = A^L x0 + sum_t A^(L-1-t) B u_t, by the recurrence (reference)."""
    x_final = np.empty(A.shape, A.dtype)
    a, b, uu = _wide(A), _wide(B), _wide(u)
    x = _wide(x0).astype(np.result_type(a, b, x0))
    for t in range(uu.shape[1]):
        x = a * x + b * uu[:, t : t + 1]
    x_final[...] = x
    return x_final


def diag_kernel(A, W, scale, L, real_output):
    """K[r, l] = proj(scale * sum_n W[r, n] A[r, n]^l), l < L, powers by exponentiation (reference)."""
    K = np.empty((A.shape[0], L), _real_dtype(W.dtype) if real_output else W.dtype)
    a, w = _wide(A), _wide(W)
    powers = a[:, :, None] ** np.arange(L)  # (R, N, L): materialised on purpose
    K[...] = _proj(scale * np.einsum("rn,rnl->rl", w, powers), real_output)
    return K


def diag_backward(A, B, C, D, u, x0, scale, gy, g_final):
    """Adjoint of :func:`diag_recurrent` (transpose of the linearisation, no conjugation).

    With g_t = scale * gy_t (real when y is real) and lambda_t the cotangent of x_t::

        lambda_t = g_t C + A lambda_{t+1}        (lambda_{L-1} also gets g_final)
        gu_t = sum_n B lambda_t + D gy_t         gA = sum_t lambda_t x_{t-1}
        gB = sum_t lambda_t u_t                  gC = sum_t g_t x_t
        gD = sum_t gy_t u_t                      gx0 = A lambda_0

    Returns ``(gA, gB, gC, gD, gu, gx0)`` in the compute dtype ``A.dtype``; the
    caller takes real parts for real inputs. The reference stores the whole
    trajectory.
    """
    ct = A.dtype
    a, b, c, d, uu, g = _wide(A), _wide(B), _wide(C), _wide(D), _wide(u), _wide(gy)
    R, L = uu.shape
    gu = np.empty((R, L), ct)
    xs = np.empty((L + 1,) + a.shape, dtype=np.result_type(a, b, c, uu, x0))
    xs[0] = x0
    for t in range(L):
        xs[t + 1] = a * xs[t] + b * uu[:, t : t + 1]
    lam_next = _wide(g_final).astype(xs.dtype)
    ga, gb, gc = (np.zeros_like(xs[0]) for _ in range(3))
    gd = np.zeros(R, dtype=np.result_type(g, uu))
    for t in range(L - 1, -1, -1):
        gt = scale * g[:, t : t + 1]
        lam = gt * c + lam_next
        gc += gt * xs[t + 1]
        ga += lam * xs[t]
        gb += lam * uu[:, t : t + 1]
        gu[:, t] = np.sum(b * lam, axis=1) + d * g[:, t]
        gd += g[:, t] * uu[:, t]
        lam_next = a * lam
    return ga.astype(ct), gb.astype(ct), gc.astype(ct), gd.astype(ct), gu, lam_next.astype(ct)
