"""Numba CPU kernels of ``lfilter`` (direct form II transposed) and its adjoint.

Same function names and parameter names as :mod:`ssmcore.reference.lfilter`,
which is the specification (layout: normalised, zero-padded coefficient rows
``b``/``a`` ``(R, K)`` with channel-to-row maps, inputs ``x`` ``(C, L)``, states
``(C, K - 1)``). The launchers own allocation, layout and scheduling.

Why the kernels look the way they do:

* Each channel is one dependency chain (``y_n`` needs the state written by
  ``y_{n-1}``), so channels are independent work items: ``prange`` over
  channels above :data:`PARALLEL_MIN_WORK` multiply-adds, a serial loop below
  (a parallel region's fork/join costs more than small filters).
* FIR filters (``a`` rows of length 1, as the front door passes them) have
  their own loop without feedback terms, as scipy's FIR path: a padded zero
  times an infinite output would otherwise turn inf into NaN.
* First-order and biquad IIR sections over several channels advance two
  channels interleaved (two independent chains; bit-identical per channel).
* IIR filters up to fourth order (K <= 5) keep the state in registers (measured
  2-2.5x faster than the generic loop on one series); longer filters keep it in
  the output row ``zf[c]`` (L1-resident).
* ``fastmath`` is off and the operations are scipy's, in scipy's order
  (``(z1 + x b1) - y a1``): without FMA contraction real results are
  bit-identical to ``scipy.signal.lfilter`` (tested), so a drop-in swap
  changes no digit.
* Coefficient gradients are sums over time; for float32 data they accumulate
  in float64 (as the reference does).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._fpenv import fp_blocks, fp_enter, fp_exit
from ._jit import jit

__all__ = ["PARALLEL_MIN_WORK", "lfilter_bwd", "lfilter_fwd"]

#: Below this many multiply-adds (C * L * K, about 1 ms serial) a parallel region is not worth its fork/join.
PARALLEL_MIN_WORK = 1 << 20


@jit(fastmath=False)
def _filt_channel(b, a, x, z, y):
    """One channel in place: ``z`` (K-1,) holds zi on entry and zf on exit."""
    K = b.shape[0]
    L = x.shape[0]
    if K == 1:
        b0 = b[0]
        for n in range(L):
            y[n] = x[n] * b0
    elif a.shape[0] == 1:  # FIR (scipy's separate path): no feedback terms, so no 0 * inf
        b0 = b[0]
        for n in range(L):
            xn = x[n]
            yn = z[0] + b0 * xn
            for i in range(K - 2):
                z[i] = z[i + 1] + xn * b[i + 1]
            z[K - 2] = xn * b[K - 1]
            y[n] = yn
    elif K == 2:
        b0 = b[0]
        b1 = b[1]
        a1 = a[1]
        z0 = z[0]
        for n in range(L):
            xn = x[n]
            yn = z0 + b0 * xn
            z0 = xn * b1 - yn * a1
            y[n] = yn
        z[0] = z0
    elif K == 3:
        b0 = b[0]
        b1 = b[1]
        b2 = b[2]
        a1 = a[1]
        a2 = a[2]
        z0 = z[0]
        z1 = z[1]
        for n in range(L):
            xn = x[n]
            yn = z0 + b0 * xn
            z0 = (z1 + xn * b1) - yn * a1
            z1 = xn * b2 - yn * a2
            y[n] = yn
        z[0] = z0
        z[1] = z1
    elif K == 4:
        b0 = b[0]
        b1 = b[1]
        b2 = b[2]
        b3 = b[3]
        a1 = a[1]
        a2 = a[2]
        a3 = a[3]
        z0 = z[0]
        z1 = z[1]
        z2 = z[2]
        for n in range(L):
            xn = x[n]
            yn = z0 + b0 * xn
            z0 = (z1 + xn * b1) - yn * a1
            z1 = (z2 + xn * b2) - yn * a2
            z2 = xn * b3 - yn * a3
            y[n] = yn
        z[0] = z0
        z[1] = z1
        z[2] = z2
    elif K == 5:
        b0 = b[0]
        b1 = b[1]
        b2 = b[2]
        b3 = b[3]
        b4 = b[4]
        a1 = a[1]
        a2 = a[2]
        a3 = a[3]
        a4 = a[4]
        z0 = z[0]
        z1 = z[1]
        z2 = z[2]
        z3 = z[3]
        for n in range(L):
            xn = x[n]
            yn = z0 + b0 * xn
            z0 = (z1 + xn * b1) - yn * a1
            z1 = (z2 + xn * b2) - yn * a2
            z2 = (z3 + xn * b3) - yn * a3
            z3 = xn * b4 - yn * a4
            y[n] = yn
        z[0] = z0
        z[1] = z1
        z[2] = z2
        z[3] = z3
    else:
        b0 = b[0]
        for n in range(L):
            xn = x[n]
            yn = z[0] + b0 * xn
            for i in range(K - 2):
                z[i] = (z[i + 1] + xn * b[i + 1]) - yn * a[i + 1]
            z[K - 2] = xn * b[K - 1] - yn * a[K - 1]
            y[n] = yn


@jit(fastmath=False)
def _pair2(bA, aA, bB, aB, xA, xB, zA, zB, yA, yB):
    """Two first-order channels interleaved: two independent chains hide each other's latency."""
    b0A, b1A, a1A = bA[0], bA[1], aA[1]
    b0B, b1B, a1B = bB[0], bB[1], aB[1]
    sA = zA[0]
    sB = zB[0]
    for n in range(xA.shape[0]):
        xa = xA[n]
        xb = xB[n]
        ya = sA + b0A * xa
        yb = sB + b0B * xb
        sA = xa * b1A - ya * a1A
        sB = xb * b1B - yb * a1B
        yA[n] = ya
        yB[n] = yb
    zA[0] = sA
    zB[0] = sB


@jit(fastmath=False)
def _pair3(bA, aA, bB, aB, xA, xB, zA, zB, yA, yB):
    """Two biquad channels interleaved (same operations per channel as :func:`_filt_channel`)."""
    b0A, b1A, b2A, a1A, a2A = bA[0], bA[1], bA[2], aA[1], aA[2]
    b0B, b1B, b2B, a1B, a2B = bB[0], bB[1], bB[2], aB[1], aB[2]
    s0A = zA[0]
    s1A = zA[1]
    s0B = zB[0]
    s1B = zB[1]
    for n in range(xA.shape[0]):
        xa = xA[n]
        xb = xB[n]
        ya = s0A + b0A * xa
        yb = s0B + b0B * xb
        s0A = (s1A + xa * b1A) - ya * a1A
        s0B = (s1B + xb * b1B) - yb * a1B
        s1A = xa * b2A - ya * a2A
        s1B = xb * b2B - yb * a2B
        yA[n] = ya
        yB[n] = yb
    zA[0] = s0A
    zA[1] = s1A
    zB[0] = s0B
    zB[1] = s1B


@jit(fastmath=False)
def _fwd_item(b, brow, a, arow, x, zf, y, i, paired):
    """Work item i: channel pair (2i, 2i + 1) when ``paired``, else channel i (and a pair's odd tail)."""
    if not paired:
        _filt_channel(b[brow[i]], a[arow[i]], x[i], zf[i], y[i])
        return
    c = 2 * i
    if c + 1 >= x.shape[0]:
        _filt_channel(b[brow[c]], a[arow[c]], x[c], zf[c], y[c])
    elif b.shape[1] == 2:
        _pair2(b[brow[c]], a[arow[c]], b[brow[c + 1]], a[arow[c + 1]], x[c], x[c + 1], zf[c], zf[c + 1], y[c], y[c + 1])
    else:
        _pair3(b[brow[c]], a[arow[c]], b[brow[c + 1]], a[arow[c + 1]], x[c], x[c + 1], zf[c], zf[c + 1], y[c], y[c + 1])


@jit(fastmath=False)
def _fwd_serial(b, brow, a, arow, x, zf, y, paired):
    fp0 = fp_enter()
    n = (x.shape[0] + 1) // 2 if paired else x.shape[0]
    for i in range(n):
        _fwd_item(b, brow, a, arow, x, zf, y, i, paired)
    fp_exit(fp0)


@jit(parallel=True, fastmath=False)
def _fwd_parallel(b, brow, a, arow, x, zf, y, paired):
    n = (x.shape[0] + 1) // 2 if paired else x.shape[0]
    nblk = fp_blocks(n)  # blocks of channels: one fp bracket per block, not per (short) channel
    for k in prange(nblk):
        fp1 = fp_enter()
        for i in range(k * n // nblk, (k + 1) * n // nblk):
            _fwd_item(b, brow, a, arow, x, zf, y, i, paired)
        fp_exit(fp1)


def _parallel(C: int, L: int, K: int) -> bool:
    return C >= 2 and numba.get_num_threads() > 1 and C * L * K >= PARALLEL_MIN_WORK


def lfilter_fwd(
    b: np.ndarray, brow: np.ndarray, a: np.ndarray, arow: np.ndarray, x: np.ndarray, zi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``y`` ``(C, L)`` and ``zf`` ``(C, K - 1)`` (see :func:`ssmcore.reference.lfilter.lfilter_fwd`)."""
    b, brow, a, arow, x = (np.ascontiguousarray(v) for v in (b, brow, a, arow, x))
    C, L = x.shape
    K = b.shape[1]
    zf = np.array(zi, dtype=x.dtype, order="C", copy=True).reshape(C, K - 1)  # updated in place
    y = np.empty((C, L), dtype=x.dtype)
    if C == 0 or L == 0:
        return y, zf
    # First-order and biquad IIR sections are latency-bound (one add-multiply-subtract chain per
    # sample): two channels interleaved run at nearly twice the rate of one.
    paired = C >= 2 and K in (2, 3) and a.shape[1] > 1
    (_fwd_parallel if _parallel(C, L, K) else _fwd_serial)(b, brow, a, arow, x, zf, y, paired)
    return y, zf


@jit(fastmath=False)
def _adjoint_channel(b, a, x, y, gy, w, gx, gb, ga, need_coeffs):
    """Reverse-time adjoint of one channel; ``w`` (K,) enters as the tail (gzf, 0), leaves with gzi."""
    K = b.shape[0]
    L = x.shape[0]
    Ka = a.shape[0]  # 1 for FIR: no feedback terms
    for n in range(L - 1, -1, -1):
        for k in range(K - 1, 0, -1):
            w[k] = w[k - 1]
        m = gy[n]
        for k in range(1, Ka):
            m = m - a[k] * w[k]
        w[0] = m
        s = b[0] * m
        for k in range(1, K):
            s = s + b[k] * w[k]
        gx[n] = s
        if need_coeffs:
            xn = x[n]
            yn = y[n]
            gb[0] += m * xn
            for k in range(1, K):
                gb[k] += w[k] * xn
            for k in range(1, Ka):
                ga[k] -= w[k] * yn


@jit(fastmath=False)
def _bwd_serial(b, brow, a, arow, x, y, gy, w, gx, gb, ga, need_coeffs):
    fp0 = fp_enter()
    for c in range(x.shape[0]):
        _adjoint_channel(b[brow[c]], a[arow[c]], x[c], y[c], gy[c], w[c], gx[c], gb[c], ga[c], need_coeffs)
    fp_exit(fp0)


@jit(parallel=True, fastmath=False)
def _bwd_parallel(b, brow, a, arow, x, y, gy, w, gx, gb, ga, need_coeffs):
    n = x.shape[0]
    nblk = fp_blocks(n)  # blocks of channels: one fp bracket per block, not per (short) channel
    for k in prange(nblk):
        fp1 = fp_enter()
        for c in range(k * n // nblk, (k + 1) * n // nblk):
            _adjoint_channel(b[brow[c]], a[arow[c]], x[c], y[c], gy[c], w[c], gx[c], gb[c], ga[c], need_coeffs)
        fp_exit(fp1)


def lfilter_bwd(
    b: np.ndarray,
    brow: np.ndarray,
    a: np.ndarray,
    arow: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    gy: np.ndarray,
    gzf: np.ndarray,
    need_coeffs: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """``gx``, ``gb``, ``ga``, ``gzi`` (see :func:`ssmcore.reference.lfilter.lfilter_bwd`)."""
    b, brow, a, arow, x, y = (np.ascontiguousarray(v) for v in (b, brow, a, arow, x, y))
    gy = np.ascontiguousarray(gy, dtype=x.dtype)
    C, L = x.shape
    K = b.shape[1]
    acc = np.result_type(x.dtype, np.float64)
    w = np.zeros((C, K), dtype=x.dtype)
    w[:, : K - 1] = gzf
    gx = np.empty((C, L), dtype=x.dtype)
    gb = np.zeros((C, K), dtype=acc)  # (C, K) is small next to (C, L); left at 0 without need_coeffs
    ga = np.zeros((C, K), dtype=acc)
    if C and L:
        run = _bwd_parallel if _parallel(C, L, K) else _bwd_serial
        run(b, brow, a, arow, x, y, gy, w, gx, gb, ga, bool(need_coeffs))
    return gx, (gb if need_coeffs else None), (ga if need_coeffs else None), np.ascontiguousarray(w[:, : K - 1])
