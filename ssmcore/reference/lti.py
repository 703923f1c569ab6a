"""NumPy specification of dense LTI simulation (forward, chunked scan, backward).

SSM convention, one system per batch element ``b``::

    x_t = A x_{t-1} + B u_t,      y_t = C x_t + D u_t,      x_{-1} = x0

The kernels take *flattened, un-broadcast* operands plus an index map, so that
"one system, many inputs" (or the reverse) never copies the shared operand:

* ``A`` (nA, N, N), ``B`` (nB, N, M), ``C`` (nC, P, N), ``D`` (nD, P, M),
  ``u`` (nU, M, L) time-last, ``x0`` (nX, N);
* ``idx`` (batch, 6) int64: row ``b`` holds the indices of the A, B, C, D, u and
  x0 used by batch element ``b`` (in that column order);
* outputs are written in place: ``y`` (batch, P, L), ``x_final`` (batch, N).

Checkpoints: ``ck`` (batch, n_ck, N) receives the state *entering* chunk ``c``
(``x_{cK-1}``, so ``ck[:, 0] = x0``) for every chunk ``c < n_ck`` of length ``K``.
With ``K = 1`` that is the whole trajectory ``x_{-1} .. x_{L-2}`` -- exactly
``scipy.signal.dlsim``'s ``xout``. The backward recomputes each chunk from its
checkpoint, so the forward never has to store all ``L`` states.

These loops compute in float64 / complex128 whatever the input dtype and are
slow on purpose; ``ssmcore.backends.numba.lti`` has the same functions, fast.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = [
    "control_readout",
    "diag_backward",
    "diag_final_state",
    "diag_kernel",
    "diag_recurrent",
    "num_threads",
    "simulate_backward",
    "simulate_recurrent",
    "simulate_scan",
]


def num_threads() -> int:
    """Threads the scan mode plans its chunks for (the Numba backend's count)."""
    return os.cpu_count() or 1


def _wide(x: np.ndarray) -> np.ndarray:
    """float64 / complex128 copy: the reference computes in double precision."""
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def _operands(A, B, C, D, u, x0, idx, b):
    i = idx[b]
    x_init = None if x0 is None else _wide(x0[i[5]])
    return _wide(A[i[0]]), _wide(B[i[1]]), _wide(C[i[2]]), _wide(D[i[3]]), _wide(u[i[4]]), x_init


def simulate_recurrent(A, B, C, D, u, x0, idx, K, y, x_final, ck):
    """Step the recurrence sequentially; store a checkpoint every ``K`` steps (``ck`` rows permitting)."""
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


def simulate_scan(A, B, C, D, u, x0, idx, K, y, x_final, ck, per_chunk):
    """Chunked parallel-scan evaluation with chunks of ``S = K * per_chunk`` steps.

    The pairs (A, B u_t) compose associatively: (A1, b1) o (A2, b2) = (A2 A1, A2 b1 + b2).
    A chunk of S steps therefore maps its entering state x to A^S x + h, where h is
    the chunk's end state started from zero. So:

    1. every chunk computes h from a zero state (independent across chunks);
    2. carry: entering_{c+1} = A^S entering_c + h_c (sequential but only one
       N x N matrix-vector product per chunk);
    3. every chunk reruns from its true entering state and writes y (independent).

    ``ck`` (batch, ceil(L / K), N) is required here: it receives the checkpoints at
    interval K, like :func:`simulate_recurrent` (chunk starts are every
    ``per_chunk``-th row).
    """
    L = u.shape[2]
    S = K * per_chunk
    n_chunks = -(-L // S)
    for b in range(idx.shape[0]):
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


def simulate_backward(A, B, C, D, u, idx, K, ck, gy, g_final, gA, gB, gC, gD, gu, gx0):
    """Reverse-time adjoint recurrence (transpose of the linearisation, no conjugation).

    With lambda_t the cotangent of x_t (lambda_{L-1} also gets g_final)::

        lambda_t = C^T gy_t + A^T lambda_{t+1}
        gu_t = B^T lambda_t + D^T gy_t
        gA = sum_t lambda_t x_{t-1}^T      gB = sum_t lambda_t u_t^T
        gC = sum_t gy_t x_t^T              gD = sum_t gy_t u_t^T
        gx0 = A^T lambda_0

    The gradients are per batch element; the caller reduces them over broadcasting.
    The reference recomputes the whole trajectory from ``ck[:, 0]`` (= x0).
    """
    L = u.shape[2]
    for b in range(idx.shape[0]):
        a, bm, c, d, ub, _ = _operands(A, B, C, D, u, None, idx, b)
        n = a.shape[0]
        xs = np.zeros((L + 1, n), dtype=np.result_type(a, ck))  # xs[t + 1] = x_t, xs[0] = x0
        xs[0] = ck[b, 0] if ck.shape[1] else 0.0
        for t in range(L):
            xs[t + 1] = a @ xs[t] + bm @ ub[:, t]
        g = _wide(gy[b])
        r = _wide(g_final[b])  # A^T lambda_{t+1}, plus g_final at the end
        ga, gb, gc, gd = (np.zeros_like(m, dtype=np.result_type(m, r, xs)) for m in (a, bm, c, d))
        for t in range(L - 1, -1, -1):
            lam = c.T @ g[:, t] + r
            gu[b, :, t] = bm.T @ lam + d.T @ g[:, t]
            ga += np.outer(lam, xs[t])
            gb += np.outer(lam, ub[:, t])
            gc += np.outer(g[:, t], xs[t + 1])
            gd += np.outer(g[:, t], ub[:, t])
            r = a.T @ lam
        gA[b], gB[b], gC[b], gD[b], gx0[b] = ga, gb, gc, gd, r


def control_readout(x, u, C, D, y):
    """dlsim's output equation y[k] = C x[k] + D u[k], time-first: x (L, N), u (L, M), y (L, P)."""
    y[...] = _wide(x) @ _wide(C).T + _wide(u) @ _wide(D).T



# ---------------------------------------------------------------------------------
# Diagonal systems: rows r = (batch element, channel), all operands materialised
# ---------------------------------------------------------------------------------
#
#   x_t[r, n] = A[r, n] x_{t-1}[r, n] + B[r, n] u[r, t]          (x_{-1} = x0)
#   y[r, t]   = proj(scale * sum_n C[r, n] x_t[r, n]) + D[r] u[r, t]
#
# with proj = Re when the output array y is real, the identity when it is complex.
# A, B, C, x0 (R, N); D (R,); u (R, L); y (R, L); x_final (R, N).


def _proj(z: np.ndarray, like: np.ndarray) -> np.ndarray:
    return z if np.iscomplexobj(like) else z.real


def diag_recurrent(A, B, C, D, u, x0, scale, y, x_final):
    """The diagonal recurrence with its readout, vectorised over rows (reference)."""
    a, b, c, d, uu = _wide(A), _wide(B), _wide(C), _wide(D), _wide(u)
    x = _wide(x0).astype(np.result_type(a, b, x0))
    for t in range(uu.shape[1]):
        x = a * x + b * uu[:, t : t + 1]
        y[:, t] = _proj(scale * np.sum(c * x, axis=1), y) + d * uu[:, t]
    x_final[...] = x


def diag_final_state(A, B, u, x0, x_final):
    """x_final = A^L x0 + sum_t A^(L-1-t) B u_t, by the recurrence (reference)."""
    a, b, uu = _wide(A), _wide(B), _wide(u)
    x = _wide(x0).astype(np.result_type(a, b, x0))
    for t in range(uu.shape[1]):
        x = a * x + b * uu[:, t : t + 1]
    x_final[...] = x


def diag_kernel(A, W, scale, K):
    """K[r, l] = proj(scale * sum_n W[r, n] A[r, n]^l), powers by exponentiation (reference)."""
    a, w = _wide(A), _wide(W)
    powers = a[:, :, None] ** np.arange(K.shape[1])  # (R, N, L): materialised on purpose
    K[...] = _proj(scale * np.einsum("rn,rnl->rl", w, powers), K)


def diag_backward(A, B, C, D, u, x0, scale, gy, g_final, gA, gB, gC, gD, gu, gx0):
    """Adjoint of :func:`diag_recurrent` (transpose of the linearisation, no conjugation).

    With g_t = scale * gy_t (real when y is real) and lambda_t the cotangent of x_t::

        lambda_t = g_t C + A lambda_{t+1}        (lambda_{L-1} also gets g_final)
        gu_t = sum_n B lambda_t + D gy_t         gA = sum_t lambda_t x_{t-1}
        gB = sum_t lambda_t u_t                  gC = sum_t g_t x_t
        gD = sum_t gy_t u_t                      gx0 = A lambda_0

    All gradient arrays are in the compute dtype; the caller takes real parts for
    real inputs. The reference stores the whole trajectory.
    """
    a, b, c, d, uu, g = _wide(A), _wide(B), _wide(C), _wide(D), _wide(u), _wide(gy)
    R, L = uu.shape
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
    gA[...], gB[...], gC[...], gD[...], gx0[...] = ga, gb, gc, gd, lam_next
