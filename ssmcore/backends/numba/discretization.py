"""Numba CPU kernels for discretisation (same names as ``ssmcore.reference.discretization``).

* ``discretize_diag_fwd`` / ``discretize_diag_bwd``: one fused pass over the
  (R, N) elements, no temporaries; ``prange`` over the rows R for large inputs. Same formulas as
  the reference (see its module docstring).
* ``expm``: a batched matrix exponential for stacks of small matrices. SciPy's
  ``expm`` accepts stacks but loops over the slices in Python (about 10 us per
  5x5 matrix), which dominates a batched ``discretize`` of thousands of small
  systems. This kernel runs the same family of algorithm -- scaling and squaring
  with a diagonal Pade approximant of degree 3, 5, 7, 9 or 13 chosen from the
  1-norm (Higham 2005, "The scaling and squaring method for the matrix
  exponential revisited", SIAM J. Matrix Anal. Appl. 26(4)) -- on every matrix
  of the stack in compiled code, one stack chunk per thread for large stacks.

Each kernel has a sequential and a parallel driver; inputs below ``PARALLEL_MIN_WORK``
run sequentially (a parallel region waits for its slowest thread, which on a busy
machine costs milliseconds).
"""

from __future__ import annotations

from math import factorial

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

from ssmcore.backends.numba._fpenv import fp_blocks, fp_enter, fp_exit
from ssmcore.backends.numba._jit import FASTMATH, jit
from ssmcore.reference.discretization import FOH, GBT, IMPULSE, PHI3_TAYLOR, PHI_SERIES_RADIUS, ZOH_EULER

__all__ = ["discretize_diag_bwd", "discretize_diag_fwd", "expm"]


# --------------------------------------------------------------------------- phi functions


def _exp_expm1(x):  # pragma: no cover - replaced by the overload inside Numba
    return np.exp(x), np.expm1(x)


@overload(_exp_expm1, jit_options={"fastmath": set(FASTMATH)})
def _exp_expm1_overload(x):
    """(exp(x), expm1(x)) of a complex x, without cancellation.

    Numba's complex np.expm1 is exp(x) - 1, which cancels near x = 2 pi i k; expm1(a) cos b - 2
    sin^2(b/2) + i e^a sin b does not, and shares e^a, cos b and sin b with exp(x).
    """
    if isinstance(x, types.Complex):

        def impl(x):
            a = x.real
            b = x.imag
            ea = np.exp(a)
            c = np.cos(b)
            s = np.sin(b)
            h = np.sin(0.5 * b)
            return complex(ea * c, ea * s), complex(np.expm1(a) * c - 2.0 * h * h, ea * s)

        return impl
    return lambda x: (np.exp(x), np.expm1(x))


@jit
def _phis(x):
    """(exp(x), phi1, phi2, phi3) for one real or complex x (see the reference)."""
    if abs(x) < PHI_SERIES_RADIUS:
        p3 = x * 0.0
        for c in PHI3_TAYLOR:
            p3 = p3 * x + c
        p2 = 0.5 + x * p3
        return np.exp(x), 1.0 + x * p2, p2, p3
    # also NaN, which stays NaN
    e, em1 = _exp_expm1(x)
    p1 = em1 / x
    p2 = (p1 - 1.0) / x
    return e, p1, p2, (p2 - 0.5) / x


@jit
def _coefficients(x, method, alpha):
    """(ad, beta, ad', beta') for one x = lambda * dt (the forward ignores the last two)."""
    one = x * 0.0 + 1.0  # typed like x, so every branch returns the same types
    if method == GBT:
        d = 1.0 / (1.0 - alpha * x)
        return (1.0 + (1.0 - alpha) * x) * d, d * one, d * d, alpha * d * d
    if method == ZOH_EULER:
        e = np.exp(x)
        return e, one, e, 0.0 * one
    if method == IMPULSE:
        e = np.exp(x)
        return e, e, e, e
    e, p1, p2, p3 = _phis(x)
    if method == FOH:
        return e, p1 - p2 + e * p2, e, p1 - 2.0 * p2 + 2.0 * p3 + 2.0 * e * (p2 - p3)
    return e, p1, e, p1 - p2  # ZOH


@jit
def _diag_fwd_row(A, dt, B, method, alpha, Ad, Bd, r):
    for n in range(A.shape[1]):
        step = dt[r, n]
        # the derivatives (last two) are dead code here, removed by LLVM after inlining
        ad, beta, _, _ = _coefficients(A[r, n] * step, method, alpha)
        Ad[r, n] = ad
        scale = step * beta
        for m in range(B.shape[2]):
            Bd[r, n, m] = scale * B[r, n, m]


@jit
def _diag_bwd_row(A, dt, B, method, alpha, gAd, gBd, zero, gA, gdt, gB, r):
    # zero: 0 typed like gBd * B, so the sum over M starts with the right type (and M may be 0)
    for n in range(A.shape[1]):
        a = A[r, n]
        step = dt[r, n]
        _, beta, dad, dbeta = _coefficients(a * step, method, alpha)
        s = zero
        scale = step * beta
        for m in range(B.shape[2]):
            s += gBd[r, n, m] * B[r, n, m]
            gB[r, n, m] = gBd[r, n, m] * scale
        gx = gAd[r, n] * dad + s * step * dbeta
        gA[r, n] = gx * step
        gdt[r, n] = gx * a + s * beta


# Sequential and parallel drivers over the rows. A parallel region costs little on an idle
# machine but waits for its slowest thread, so on a busy one it can cost milliseconds:
# small problems run sequentially (PARALLEL_MIN_WORK, in elements or scalar multiply-adds).
PARALLEL_MIN_WORK = 1 << 18  # ~1-10 ms of single-thread work


@jit
def _diag_fwd_seq(A, dt, B, method, alpha, Ad, Bd):
    fp0 = fp_enter()
    for r in range(A.shape[0]):
        _diag_fwd_row(A, dt, B, method, alpha, Ad, Bd, r)
    fp_exit(fp0)


@jit(parallel=True)
def _diag_fwd_par(A, dt, B, method, alpha, Ad, Bd):
    n = A.shape[0]
    nblk = fp_blocks(n)  # blocks of rows: one fp bracket per block, not per (short) row
    for k in prange(nblk):
        fp1 = fp_enter()
        for r in range(k * n // nblk, (k + 1) * n // nblk):
            _diag_fwd_row(A, dt, B, method, alpha, Ad, Bd, r)
        fp_exit(fp1)


@jit
def _diag_bwd_seq(A, dt, B, method, alpha, gAd, gBd, zero, gA, gdt, gB):
    fp0 = fp_enter()
    for r in range(A.shape[0]):
        _diag_bwd_row(A, dt, B, method, alpha, gAd, gBd, zero, gA, gdt, gB, r)
    fp_exit(fp0)


@jit(parallel=True)
def _diag_bwd_par(A, dt, B, method, alpha, gAd, gBd, zero, gA, gdt, gB):
    n = A.shape[0]
    nblk = fp_blocks(n)  # blocks of rows: one fp bracket per block, not per (short) row
    for k in prange(nblk):
        fp1 = fp_enter()
        for r in range(k * n // nblk, (k + 1) * n // nblk):
            _diag_bwd_row(A, dt, B, method, alpha, gAd, gBd, zero, gA, gdt, gB, r)
        fp_exit(fp1)


def _parallel(work: int) -> bool:
    """Whether a kernel with ``work`` elements (or multiply-adds) should use the parallel driver."""
    return work >= PARALLEL_MIN_WORK and numba.get_num_threads() > 1


def _result_dtype(*arrays: np.ndarray) -> np.dtype:
    return np.dtype(np.complex128) if any(np.iscomplexobj(a) for a in arrays) else np.dtype(np.float64)


def discretize_diag_fwd(A: np.ndarray, dt: np.ndarray, B: np.ndarray, method: int, alpha: float):
    """Ad (R, N) = ad(A dt); Bd (R, N, M) = dt beta(A dt) B, in one pass."""
    A, dt, B = np.ascontiguousarray(A), np.ascontiguousarray(dt), np.ascontiguousarray(B)
    Ad = np.empty(A.shape, dtype=_result_dtype(A))
    Bd = np.empty(B.shape, dtype=_result_dtype(A, B))
    kernel = _diag_fwd_par if _parallel(B.size + A.size) else _diag_fwd_seq
    kernel(A, dt, B, method, float(alpha), Ad, Bd)
    return Ad, Bd


def discretize_diag_bwd(A, dt, B, method, alpha, gAd, gBd):
    """(gA, gdt, gB) before broadcasting is undone; see the reference for the maths."""
    A, dt, B = np.ascontiguousarray(A), np.ascontiguousarray(dt), np.ascontiguousarray(B)
    gAd, gBd = np.ascontiguousarray(gAd), np.ascontiguousarray(gBd)
    full = _result_dtype(A, B, gAd, gBd)
    gA = np.empty(A.shape, dtype=full)
    gdt = np.empty(A.shape, dtype=full)
    gB = np.empty(B.shape, dtype=_result_dtype(A, gBd))
    zero = _result_dtype(B, gBd).type(0)
    kernel = _diag_bwd_par if _parallel(B.size + A.size) else _diag_bwd_seq
    kernel(A, dt, B, method, float(alpha), gAd, gBd, zero, gA, gdt, gB)
    return gA, gdt, gB


# --------------------------------------------------------------------------- batched expm


def _pade_table() -> np.ndarray:
    """Row i: coefficients b_0..b_m of the [m/m] Pade approximant of exp, m = 3, 5, 7, 9, 13.

    b_j = (2m - j)! m! / ((2m)! j! (m - j)!), scaled so that b_m = 1 (Higham 2005).
    """
    table = np.zeros((5, 14))
    for row, m in enumerate((3, 5, 7, 9, 13)):
        c = [factorial(2 * m - j) * factorial(m) / (factorial(j) * factorial(m - j)) for j in range(m + 1)]
        table[row, : m + 1] = np.array(c) / c[m]  # the common 1/(2m)! cancels here
    return table


_PADE = _pade_table()
# Largest 1-norm for which degree m needs no scaling in double precision (Higham 2005, Table 2.3).
_THETA = (1.495585217958292e-2, 2.539398330063230e-1, 9.504178996162932e-1, 2.097847961257068e0, 5.371920351148152e0)


@jit
def _matmul(X, Y, out):
    n = X.shape[0]
    for i in range(n):
        for j in range(n):
            out[i, j] = 0.0
        for k in range(n):
            xik = X[i, k]
            if xik != 0.0:  # the hold and Frechet block matrices have zero rows and blocks
                for j in range(n):
                    out[i, j] += xik * Y[k, j]


@jit
def _combine(out, X6, X4, X2, c6, c4, c2, c0, accumulate):
    """``out`` (+)= c6 X6 + c4 X4 + c2 X2 + c0 I."""
    n = out.shape[0]
    for i in range(n):
        for j in range(n):
            v = c6 * X6[i, j] + c4 * X4[i, j] + c2 * X2[i, j]
            out[i, j] = out[i, j] + v if accumulate else v
        out[i, i] += c0


@jit
def _solve_inplace(Q, P):
    """P <- Q^-1 P by Gaussian elimination with partial pivoting (Q is overwritten)."""
    n = Q.shape[0]
    for k in range(n):
        piv = k
        big = abs(Q[k, k])
        for i in range(k + 1, n):
            if abs(Q[i, k]) > big:
                big = abs(Q[i, k])
                piv = i
        if piv != k:
            for j in range(n):
                t = Q[k, j]
                Q[k, j] = Q[piv, j]
                Q[piv, j] = t
                t = P[k, j]
                P[k, j] = P[piv, j]
                P[piv, j] = t
        inv = 1.0 / Q[k, k]
        for i in range(k + 1, n):
            f = Q[i, k] * inv
            if f != 0.0:
                for j in range(k + 1, n):
                    Q[i, j] -= f * Q[k, j]
                for j in range(n):
                    P[i, j] -= f * P[k, j]
    for k in range(n - 1, -1, -1):
        inv = 1.0 / Q[k, k]
        for j in range(n):
            P[k, j] *= inv
        for i in range(k):
            f = Q[i, k]
            if f != 0.0:
                for j in range(n):
                    P[i, j] -= f * P[k, j]


@jit
def _expm_one(A, out, w):
    """``out = expm(A)`` for one (n, n) matrix; w is a (8, n, n) workspace."""
    n = A.shape[0]
    norm = 0.0
    for j in range(n):
        col = 0.0
        for i in range(n):
            col += abs(A[i, j])
        norm = max(norm, col)
    if not np.isfinite(norm):  # NaN/inf entries: no meaningful exponential
        for i in range(n):
            for j in range(n):
                out[i, j] = np.nan
        return
    row = 4
    for r in range(4):
        if norm <= _THETA[r]:
            row = r
            break
    s = 0
    if row == 4 and norm > _THETA[4]:
        s = int(np.ceil(np.log2(norm / _THETA[4])))
    scale = 0.5**s  # a power of two: exact
    X, X2, X4, X6, U, V, T, Q = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]
    for i in range(n):
        for j in range(n):
            X[i, j] = A[i, j] * scale
    b = _PADE[row]
    _matmul(X, X, X2)
    if row == 4:  # degree 13, Higham's evaluation with 6 products
        _matmul(X2, X2, X4)
        _matmul(X4, X2, X6)
        # U = X [X6 (b13 X6 + b11 X4 + b9 X2) + b7 X6 + b5 X4 + b3 X2 + b1 I]
        _combine(T, X6, X4, X2, b[13], b[11], b[9], 0.0, False)
        _matmul(X6, T, Q)
        _combine(Q, X6, X4, X2, b[7], b[5], b[3], b[1], True)
        _matmul(X, Q, U)
        # V = X6 (b12 X6 + b10 X4 + b8 X2) + b6 X6 + b4 X4 + b2 X2 + b0 I
        _combine(T, X6, X4, X2, b[12], b[10], b[8], 0.0, False)
        _matmul(X6, T, V)
        _combine(V, X6, X4, X2, b[6], b[4], b[2], b[0], True)
    else:  # degree m = 3, 5, 7, 9: U = X sum_k b_{2k+1} X^{2k}, V = sum_k b_{2k} X^{2k}
        m = 3 + 2 * row
        # Q accumulates the odd part, V the even part; T holds X^{2k} for k >= 1.
        for i in range(n):
            for j in range(n):
                Q[i, j] = b[3] * X2[i, j]
                V[i, j] = b[2] * X2[i, j]
                T[i, j] = X2[i, j]
            Q[i, i] += b[1]
            V[i, i] += b[0]
        for k in range(2, (m + 1) // 2):
            _matmul(T, X2, X4)
            for i in range(n):
                for j in range(n):
                    T[i, j] = X4[i, j]
                    Q[i, j] += b[2 * k + 1] * T[i, j]
                    V[i, j] += b[2 * k] * T[i, j]
        _matmul(X, Q, U)
    # exp(X) ~ (V - U)^-1 (V + U)
    for i in range(n):
        for j in range(n):
            Q[i, j] = V[i, j] - U[i, j]
            T[i, j] = V[i, j] + U[i, j]
    _solve_inplace(Q, T)
    for _ in range(s):
        _matmul(T, T, Q)
        for i in range(n):
            for j in range(n):
                T[i, j] = Q[i, j]
    for i in range(n):
        for j in range(n):
            out[i, j] = T[i, j]


@jit
def _expm_seq(Z, out):
    fp0 = fp_enter()
    w = np.empty((8, Z.shape[1], Z.shape[1]), dtype=out.dtype)
    for k in range(Z.shape[0]):
        _expm_one(Z[k], out[k], w)
    fp_exit(fp0)


@jit(parallel=True)
def _expm_par(Z, out, nchunks):
    K, n = Z.shape[0], Z.shape[1]
    per = (K + nchunks - 1) // nchunks
    for c in prange(nchunks):
        fp1 = fp_enter()
        w = np.empty((8, n, n), dtype=out.dtype)  # one workspace per chunk, not per matrix
        for k in range(c * per, min(K, (c + 1) * per)):
            _expm_one(Z[k], out[k], w)
        fp_exit(fp1)


def expm(Z: np.ndarray) -> np.ndarray:
    """Matrix exponential of a stack (..., n, n) of float64/complex128 matrices."""
    Z = np.asarray(Z)
    if Z.dtype not in (np.float64, np.complex128):
        Z = Z.astype(np.complex128 if np.iscomplexobj(Z) else np.float64)
    if Z.size == 0:
        return np.empty_like(Z)
    n = Z.shape[-1]
    flat = np.ascontiguousarray(Z.reshape((-1, n, n)))
    out = np.empty_like(flat)
    if _parallel(flat.shape[0] * n**3):
        # a few chunks per thread balance the load; each chunk allocates one workspace
        _expm_par(flat, out, min(flat.shape[0], 4 * numba.get_num_threads()))
    else:
        _expm_seq(flat, out)
    return out.reshape(Z.shape)
