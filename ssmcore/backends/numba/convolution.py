"""Numba CPU kernels of the convolution mode (same functions as ``ssmcore.reference.convolution``).

Design notes (why the loops look the way they do):

* Complex numbers are split into real/imaginary float64 arrays inside the kernels
  so that the inner loops are plain FMAs that LLVM vectorises; the project's
  fastmath flags exclude ``reassoc``, so every hot loop is arranged to vectorise
  across *independent* outputs (time steps, modes or frequencies), never as a
  horizontal reduction.
* Arithmetic is float64 for every input dtype: these kernels are compute-bound on
  O(H N) parameters, so float64 costs little and keeps long products accurate.
* Memory is O(H (N + L)): per-thread scratch is O(N T) or O(N + block), never
  the (H, N, L) Vandermonde or Cauchy matrices.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ssmcore.reference.convolution import _empty_conv, _empty_conv_bwd

from ._fpenv import fp_enter, fp_exit
from ._jit import jit

__all__ = [
    "cauchy_sums",
    "cauchy_sums_bwd",
    "causal_conv",
    "causal_conv_bwd",
    "conv_spectrum",
    "dense_kernel",
    "dense_kernel_bwd",
    "vandermonde_kernel",
    "vandermonde_kernel_bwd",
]

# Time steps per block of the Vandermonde forward; the (N, 2 T) power table of a
# channel is 64 KiB at N = 64 (L2-resident), the T accumulators stay in L1.
_T = 64
# Exact re-anchoring interval of the running power (a multiple of _T).
_ANCHOR = 4096
# Frequencies per block of the Cauchy sums.
_FB = 128


# Below this many inner-loop iterations a kernel runs on one thread: waking the
# OpenMP team costs more than the work, and on a busy machine a parallel region
# can stall for milliseconds.
_SERIAL_WORK = 1 << 18


def _launch(kernel, work, *args):
    """Call a parallel kernel, single-threaded when ``work`` is small."""
    if work >= _SERIAL_WORK:
        return kernel(*args)
    prev = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(prev)


def _split(x):
    x = np.asarray(x, np.complex128)
    return np.ascontiguousarray(x.real), np.ascontiguousarray(x.imag)


# --------------------------------------------------------------------------- diagonal


@jit(parallel=True)
def _vandermonde_fwd(ar, ai, tr, ti, xr, xi, wr, wi, out):
    """out[c, h, l] = Re(sum_n W[c, h, n] Ad[h, n]^l), blocked by _T steps.

    Within a block starting at l0: W Ad^(l0 + j) = (W Ad^l0) Ad^j, so with the
    table Ad^j (j < _T, stored as [re | -im] rows) and q_n = W_n Ad_n^l0 every
    output of the block is an FMA over j: vectorised, no cross-lane reduction, and
    with _T = 64 the accumulator chain is long enough to hide the store->load
    latency (16 was 2x slower). Ad^l0 advances by the exact Ad^_T = exp(_T log Ad)
    (t) per block and is re-anchored to exp(l0 log Ad) (x = log Ad) every _ANCHOR
    steps, so the relative error of a power stays ~(_T + _ANCHOR / _T) eps instead
    of growing like l eps (which matters for slowly decaying modes, |Ad| ~ 1).
    """
    C, H, N = wr.shape
    L = out.shape[2]
    for h in prange(H):
        fp1 = fp_enter()
        tab = np.empty((N, 2 * _T))
        zr = np.empty(N)
        zi = np.empty(N)
        acc = np.empty(_T)
        for n in range(N):
            a_r = ar[h, n]
            a_i = ai[h, n]
            p_r = 1.0
            p_i = 0.0
            for j in range(_T):
                tab[n, j] = p_r
                tab[n, _T + j] = -p_i
                p_r, p_i = p_r * a_r - p_i * a_i, p_r * a_i + p_i * a_r
            zr[n] = 1.0
            zi[n] = 0.0
        for l0 in range(0, L, _T):
            m = min(_T, L - l0)
            if l0 > 0 and l0 % _ANCHOR == 0:
                for n in range(N):
                    mag = np.exp(l0 * xr[h, n])
                    ph = l0 * xi[h, n]
                    zr[n] = mag * np.cos(ph)
                    zi[n] = mag * np.sin(ph)
            for c in range(C):
                for j in range(_T):
                    acc[j] = 0.0
                for n in range(N):
                    w_r = wr[c, h, n]
                    w_i = wi[c, h, n]
                    qr = w_r * zr[n] - w_i * zi[n]
                    qi = w_r * zi[n] + w_i * zr[n]
                    row = tab[n]
                    for j in range(_T):
                        acc[j] = acc[j] + qr * row[j] + qi * row[_T + j]
                o = out[c, h]
                for j in range(m):
                    o[l0 + j] = acc[j]
            for n in range(N):
                z_r = zr[n]
                zr[n] = z_r * tr[h, n] - zi[n] * ti[h, n]
                zi[n] = z_r * ti[h, n] + zi[n] * tr[h, n]
        fp_exit(fp1)
    return out


def vandermonde_kernel(log_ad: np.ndarray, W: np.ndarray, L: int, out_dtype) -> np.ndarray:
    """K[c, h, l] = Re(sum_n W[c, h, n] Ad[h, n]^l), Ad = exp(log_ad); O(H (N + L)) memory."""
    log_ad = np.asarray(log_ad, np.complex128)
    W = np.asarray(W, np.complex128)
    out = np.empty(W.shape[:2] + (L,), dtype=out_dtype)
    if out.size == 0:
        return out
    with np.errstate(invalid="ignore"):
        ad = np.exp(log_ad)
        ad_t = np.exp(_T * log_ad)
    _launch(
        _vandermonde_fwd,
        out.size * W.shape[2],
        *_split(ad),
        *_split(ad_t),
        *_split(log_ad),
        np.ascontiguousarray(W.real),
        np.ascontiguousarray(W.imag),
        out,
    )
    return out


@jit(parallel=True)
def _vandermonde_bwd(ar, ai, wr, wi, G, wbr, wbi, abr, abi):
    """Reverse Horner pass: s <- g_l + Ad s and t <- s_old + Ad t, l = L-1 .. 0.

    At the end s = sum_l g_l Ad^l (the cotangent of W) and
    t = sum_l g_l l Ad^(l-1) (its derivative in Ad). Vectorised over the modes n;
    O(N) state per channel.
    """
    C, H, N = wr.shape
    L = G.shape[2]
    for h in prange(H):
        fp1 = fp_enter()
        sr = np.empty(N)
        si = np.empty(N)
        qr = np.empty(N)
        qi = np.empty(N)
        for n in range(N):
            abr[h, n] = 0.0
            abi[h, n] = 0.0
        for c in range(C):
            for n in range(N):
                sr[n] = 0.0
                si[n] = 0.0
                qr[n] = 0.0
                qi[n] = 0.0
            for l in range(L - 1, -1, -1):
                g = np.float64(G[c, h, l])
                for n in range(N):
                    a_r = ar[h, n]
                    a_i = ai[h, n]
                    s_r = sr[n]
                    s_i = si[n]
                    t_r = qr[n]
                    t_i = qi[n]
                    qr[n] = s_r + (a_r * t_r - a_i * t_i)
                    qi[n] = s_i + (a_r * t_i + a_i * t_r)
                    sr[n] = g + (a_r * s_r - a_i * s_i)
                    si[n] = a_r * s_i + a_i * s_r
            for n in range(N):
                wbr[c, h, n] = sr[n]
                wbi[c, h, n] = si[n]
                w_r = wr[c, h, n]
                w_i = wi[c, h, n]
                abr[h, n] += w_r * qr[n] - w_i * qi[n]
                abi[h, n] += w_r * qi[n] + w_i * qr[n]
        fp_exit(fp1)


def vandermonde_kernel_bwd(log_ad: np.ndarray, W: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pullback of :func:`vandermonde_kernel`: ``(W_bar (C, H, N), ad_bar (H, N))``, complex128."""
    ad = np.exp(np.asarray(log_ad, np.complex128))
    W = np.asarray(W, np.complex128)
    C, H, N = W.shape
    wbr = np.zeros((C, H, N))
    wbi = np.zeros((C, H, N))
    abr = np.zeros((H, N))
    abi = np.zeros((H, N))
    if W.size and G.shape[-1]:
        _launch(
            _vandermonde_bwd,
            4 * G.size * N,
            np.ascontiguousarray(ad.real),
            np.ascontiguousarray(ad.imag),
            np.ascontiguousarray(W.real),
            np.ascontiguousarray(W.imag),
            np.ascontiguousarray(G),
            wbr,
            wbi,
            abr,
            abi,
        )
    return wbr + 1j * wbi, abr + 1j * abi


# --------------------------------------------------------------------------- DPLR / Cauchy


@jit(parallel=True)
def _cauchy_fwd(nr, ni, mr, mi, amr, ami, apr, api, out):
    """S[h, m, k] = sum_i num/d + conj(num)/dc, d = (1-w) - (1+w) mu, dc with conj(mu).

    prange over (channel, frequency block); modes outer, frequencies inner so the
    inner loop vectorises over frequencies without a cross-lane reduction.
    """
    H, M, N = nr.shape
    F = amr.shape[0]
    nblk = (F + _FB - 1) // _FB
    for idx in prange(H * nblk):
        fp1 = fp_enter()
        h = idx // nblk
        k0 = (idx % nblk) * _FB
        kn = min(_FB, F - k0)
        accr = np.zeros((M, _FB))
        acci = np.zeros((M, _FB))
        ir = np.empty(_FB)
        ii = np.empty(_FB)
        jr = np.empty(_FB)
        ji = np.empty(_FB)
        for i in range(N):
            m_r = mr[h, i]
            m_i = mi[h, i]
            for k in range(kn):
                a_r = amr[k0 + k]
                a_i = ami[k0 + k]
                b_r = apr[k0 + k]
                b_i = api[k0 + k]
                # d = a - b mu
                d_r = a_r - (b_r * m_r - b_i * m_i)
                d_i = a_i - (b_r * m_i + b_i * m_r)
                s = 1.0 / (d_r * d_r + d_i * d_i)
                ir[k] = d_r * s
                ii[k] = -d_i * s
                # dc = a - b conj(mu)
                e_r = a_r - (b_r * m_r + b_i * m_i)
                e_i = a_i - (b_i * m_r - b_r * m_i)
                s = 1.0 / (e_r * e_r + e_i * e_i)
                jr[k] = e_r * s
                ji[k] = -e_i * s
            for m in range(M):
                x_r = nr[h, m, i]
                x_i = ni[h, m, i]
                for k in range(kn):
                    # num / d + conj(num) / dc
                    accr[m, k] += (x_r * ir[k] - x_i * ii[k]) + (x_r * jr[k] + x_i * ji[k])
                    acci[m, k] += (x_r * ii[k] + x_i * ir[k]) + (x_r * ji[k] - x_i * jr[k])
        for m in range(M):
            for k in range(kn):
                out[h, m, k0 + k] = complex(accr[m, k], acci[m, k])
        fp_exit(fp1)


def cauchy_sums(num: np.ndarray, mu: np.ndarray, one_minus_w: np.ndarray, one_plus_w: np.ndarray) -> np.ndarray:
    """Conjugate-symmetric Cauchy sums S (H, M, F); see the reference for the formula."""
    H, M, N = num.shape
    F = one_minus_w.shape[0]
    out = np.zeros((H, M, F), np.complex128)
    if H * M * F and N:
        args = (*_split(num), *_split(mu), *_split(one_minus_w), *_split(one_plus_w), out)
        _launch(_cauchy_fwd, H * (M + 4) * N * F, *args)
    return out


@jit
def _recip_and_b_over_square(d_r, d_i, b_r, b_i):
    """(1/d, b/d^2) for complex d and b, in real arithmetic: b/d^2 = (b/d)(1/d)."""
    s = 1.0 / (d_r * d_r + d_i * d_i)
    u_r = d_r * s
    u_i = -d_i * s
    v_r = b_r * u_r - b_i * u_i
    v_i = b_r * u_i + b_i * u_r
    return u_r, u_i, v_r * u_r - v_i * u_i, v_r * u_i + v_i * u_r


@jit(parallel=True)
def _cauchy_bwd(nr, ni, mr, mi, amr, ami, apr, api, sb, gnr, gni, gmr, gmi):
    """Transposed Cauchy sums: frequencies outer, modes inner (vectorised over modes).

    num_bar[m, i] = sum_k Sb/d + conj(Sb/dc);
    Y[m, i] = sum_k Sb b/d^2 + conj(Sb b/dc^2);  mu_bar[i] = sum_m num[m, i] Y[m, i].
    """
    H, M, N = nr.shape
    F = amr.shape[0]
    for h in prange(H):
        fp1 = fp_enter()
        xr = np.zeros((M, N))
        xi = np.zeros((M, N))
        yr = np.zeros((M, N))
        yi = np.zeros((M, N))
        ir = np.empty(N)
        ii = np.empty(N)
        jr = np.empty(N)
        ji = np.empty(N)
        pr = np.empty(N)
        pim = np.empty(N)
        qr = np.empty(N)
        qi = np.empty(N)
        for k in range(F):
            a_r = amr[k]
            a_i = ami[k]
            b_r = apr[k]
            b_i = api[k]
            for i in range(N):
                m_r = mr[h, i]
                m_i = mi[h, i]
                # d = a - b mu and its conjugate-mode twin e = a - b conj(mu)
                ir[i], ii[i], pr[i], pim[i] = _recip_and_b_over_square(
                    a_r - (b_r * m_r - b_i * m_i), a_i - (b_r * m_i + b_i * m_r), b_r, b_i
                )
                jr[i], ji[i], qr[i], qi[i] = _recip_and_b_over_square(
                    a_r - (b_r * m_r + b_i * m_i), a_i - (b_i * m_r - b_r * m_i), b_r, b_i
                )
            for m in range(M):
                g = sb[h, m, k]
                g_r = g.real
                g_i = g.imag
                for i in range(N):
                    # Sb/d + conj(Sb/dc)
                    xr[m, i] += (g_r * ir[i] - g_i * ii[i]) + (g_r * jr[i] - g_i * ji[i])
                    xi[m, i] += (g_r * ii[i] + g_i * ir[i]) - (g_r * ji[i] + g_i * jr[i])
                    yr[m, i] += (g_r * pr[i] - g_i * pim[i]) + (g_r * qr[i] - g_i * qi[i])
                    yi[m, i] += (g_r * pim[i] + g_i * pr[i]) - (g_r * qi[i] + g_i * qr[i])
        for i in range(N):
            gmr[h, i] = 0.0
            gmi[h, i] = 0.0
        for m in range(M):
            for i in range(N):
                gnr[h, m, i] = xr[m, i]
                gni[h, m, i] = xi[m, i]
                x_r = nr[h, m, i]
                x_i = ni[h, m, i]
                gmr[h, i] += x_r * yr[m, i] - x_i * yi[m, i]
                gmi[h, i] += x_r * yi[m, i] + x_i * yr[m, i]
        fp_exit(fp1)


def cauchy_sums_bwd(
    num: np.ndarray, mu: np.ndarray, one_minus_w: np.ndarray, one_plus_w: np.ndarray, S_bar: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pullback of :func:`cauchy_sums`: ``(num_bar (H, M, N), mu_bar (H, N))``."""
    H, M, N = num.shape
    gnr = np.zeros((H, M, N))
    gni = np.zeros((H, M, N))
    gmr = np.zeros((H, N))
    gmi = np.zeros((H, N))
    if H * M * N and one_minus_w.shape[0]:
        sb = np.ascontiguousarray(S_bar, dtype=np.complex128)
        _launch(
            _cauchy_bwd,
            H * (2 * M + 8) * N * one_minus_w.shape[0],
            *_split(num), *_split(mu), *_split(one_minus_w), *_split(one_plus_w), sb, gnr, gni, gmr, gmi
        )
    return gnr + 1j * gni, gmr + 1j * gmi


# --------------------------------------------------------------------------- dense


@jit(parallel=True)
def _dense_fwd(At, B, C, out):
    """K[s, l] = C x_l, x_{l+1} = A x_l, x_0 = B; At = A^T so the mat-vec is column axpys."""
    S, N = B.shape
    L = out.shape[1]
    for s in prange(S):
        fp1 = fp_enter()
        x = B[s].copy()
        y = np.empty_like(x)
        for l in range(L):
            acc = C[s, 0] * x[0]
            for n in range(1, N):
                acc += C[s, n] * x[n]
            out[s, l] = acc
            for i in range(N):
                y[i] = 0.0
            for j in range(N):
                xj = x[j]
                for i in range(N):
                    y[i] += At[s, j, i] * xj
            x, y = y, x
        fp_exit(fp1)
    return out


def dense_kernel(A: np.ndarray, B: np.ndarray, C: np.ndarray, L: int) -> np.ndarray:
    """K[s, l] = C[s] A[s]^l B[s]; O(N^2 L) time, O(N + L) memory per system."""
    dt = np.result_type(A, B, C)
    S, N = B.shape
    out = np.zeros((S, L), dtype=dt)
    if out.size == 0 or N == 0:
        return out
    At = np.ascontiguousarray(np.swapaxes(A, -1, -2), dtype=dt)
    args = (At, np.ascontiguousarray(B, dtype=dt), np.ascontiguousarray(C, dtype=dt), out)
    _launch(_dense_fwd, S * N * (N + 1) * L, *args)
    return out


@jit(parallel=True)
def _dense_bwd(A, At, B, C, G, seg, A_bar, B_bar, C_bar):
    """Checkpointed reverse pass: O(N^2 + N (L/seg + seg)) memory per system.

    Forward states are saved every ``seg`` steps, recomputed segment by segment
    from the end, and consumed by the adjoint recursion lam_l = C G_l + A^T lam_{l+1}.
    """
    S, N = B.shape
    L = G.shape[1]
    nseg = (L + seg - 1) // seg
    for s in prange(S):
        fp1 = fp_enter()
        ck = np.empty((nseg, N), dtype=B.dtype)
        X = np.empty((seg, N), dtype=B.dtype)
        x = B[s].copy()
        y = np.empty_like(x)
        for l in range(L):
            if l % seg == 0:
                ck[l // seg] = x
            for i in range(N):
                y[i] = 0.0
            for j in range(N):
                xj = x[j]
                for i in range(N):
                    y[i] += At[s, j, i] * xj
            x, y = y, x
        lam = np.zeros(N, dtype=B.dtype)
        nl = np.empty(N, dtype=B.dtype)
        for i in range(N):
            C_bar[s, i] = 0.0
            for j in range(N):
                A_bar[s, i, j] = 0.0
        for c in range(nseg - 1, -1, -1):
            l0 = c * seg
            l1 = min(L, l0 + seg)
            X[0] = ck[c]
            for l in range(l0 + 1, l1):
                for i in range(N):
                    y[i] = 0.0
                for j in range(N):
                    xj = X[l - 1 - l0, j]
                    for i in range(N):
                        y[i] += At[s, j, i] * xj
                X[l - l0] = y
            for l in range(l1 - 1, l0 - 1, -1):
                xl = X[l - l0]
                if l < L - 1:
                    # A_bar += lam_{l+1} x_l^T
                    for i in range(N):
                        li = lam[i]
                        for j in range(N):
                            A_bar[s, i, j] += li * xl[j]
                g = G[s, l]
                for i in range(N):
                    C_bar[s, i] += g * xl[i]
                    nl[i] = C[s, i] * g
                # nl += A^T lam, as row axpys of A
                for i in range(N):
                    li = lam[i]
                    for j in range(N):
                        nl[j] += A[s, i, j] * li
                lam, nl = nl, lam
        for i in range(N):
            B_bar[s, i] = lam[i]
        fp_exit(fp1)


def dense_kernel_bwd(A: np.ndarray, B: np.ndarray, C: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pullback of :func:`dense_kernel`: ``(A_bar, B_bar, C_bar)`` in the common dtype."""
    dt = np.result_type(A, B, C, G)
    S, N = B.shape
    L = G.shape[1]
    A_bar = np.zeros(A.shape, dtype=dt)
    B_bar = np.zeros(B.shape, dtype=dt)
    C_bar = np.zeros(C.shape, dtype=dt)
    if S == 0 or N == 0 or L == 0:
        return A_bar, B_bar, C_bar
    seg = max(1, int(np.ceil(np.sqrt(L))))
    A = np.ascontiguousarray(A, dtype=dt)
    _launch(
        _dense_bwd,
        4 * S * N * N * L,
        A,
        np.ascontiguousarray(np.swapaxes(A, -1, -2)),
        np.ascontiguousarray(B, dtype=dt),
        np.ascontiguousarray(C, dtype=dt),
        np.ascontiguousarray(G, dtype=dt),
        seg,
        A_bar,
        B_bar,
        C_bar,
    )
    return A_bar, B_bar, C_bar


# --------------------------------------------------------------------------- convolution


def _fft_len(L: int, Lk: int) -> int:
    """Smallest fast real-FFT length >= L + Lk: no circular wrap for causal or two-sided kernels."""
    from scipy.fft import next_fast_len

    return next_fast_len(L + Lk, real=True)


def _fft_workers(workers, size):
    """The scipy.fft thread count for a transform of ``size``.

    One for small transforms (thread hand-off costs more than it saves), else the
    caller's ``workers`` (None: all cores, -1).
    """
    if size < _SERIAL_WORK:
        return 1
    return -1 if workers is None else workers


def _kernel_spectrum(K, K_anti, n, workers):
    """``rfft`` of the length-n two-sided kernel: K at lags 0..Lk-1, K_anti[j] at lag -(1 + j)."""
    from scipy import fft

    if K_anti is None:
        return fft.rfft(K, n, axis=-1, workers=workers)
    Lk = K.shape[-1]
    full = np.zeros(K.shape[:-1] + (n,), dtype=K.dtype)
    full[..., :Lk] = K
    if Lk:
        full[..., n - Lk :] = K_anti[..., ::-1]
    return fft.rfft(full, axis=-1, workers=workers)


def conv_spectrum(
    K: np.ndarray, K_anti: np.ndarray | None, L: int, workers: int | None = None
) -> tuple[np.ndarray, int]:
    """``(Kf, n)`` for inputs of up to L steps (see the reference); n = scipy's next fast real length."""
    C, H, Lk = K.shape
    n = _fft_len(int(L), Lk)
    K = np.ascontiguousarray(K)
    return _kernel_spectrum(K, K_anti, n, _fft_workers(workers, max(C, 1) * H * n)), n


def causal_conv(
    u: np.ndarray,
    K: np.ndarray,
    K_anti: np.ndarray | None,
    D: np.ndarray | None,
    workers: int | None = None,
    Kf: np.ndarray | None = None,
    n: int | None = None,
) -> np.ndarray:
    """FFT convolution with the semantics of the reference (output (Bt, C, H, L), u's dtype).

    With ``Kf``, ``n`` from :func:`conv_spectrum` the kernel is not transformed again.
    """
    from scipy import fft

    Bt, H, L = u.shape
    C, _, Lk = K.shape
    if L == 0 or Lk == 0 or Bt == 0:
        return _empty_conv(u, K, D)
    u = np.ascontiguousarray(u)
    if Kf is None:
        n = _fft_len(L, Lk)
    workers = _fft_workers(workers, Bt * max(C, 1) * H * n)
    Uf = fft.rfft(u, n, axis=-1, workers=workers)  # (Bt, H, F)
    if Kf is None:
        Kf = _kernel_spectrum(np.ascontiguousarray(K), K_anti, n, workers)  # (C, H, F)
    if C == 1:
        Uf *= Kf  # in place: saves a (Bt, H, F) complex temporary
        Yf = Uf[:, None]
    else:
        Yf = Uf[:, None] * Kf[None]
    y = fft.irfft(Yf, n, axis=-1, workers=workers, overwrite_x=True)
    y = y[..., :L]
    if D is not None:
        return y + D[None, :, :, None] * u[:, None]
    return np.ascontiguousarray(y)


def causal_conv_bwd(
    u: np.ndarray,
    K: np.ndarray,
    K_anti: np.ndarray | None,
    D: np.ndarray | None,
    G: np.ndarray,
    workers: int | None = None,
    need_u: bool = True,
    need_k: bool = True,
    need_d: bool = True,
    Kf: np.ndarray | None = None,
    n: int | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Pullback of :func:`causal_conv`: correlations by FFT (same length n, no wrap).

    With ``Kf``, ``n`` (the forward's, from :func:`conv_spectrum`) the kernel is not
    transformed again.

    ``need_*`` False skips that gradient (returned as None): without ``u``'s
    gradient (a first layer's input) neither the kernel spectrum nor the
    inverse FFT for ``u_bar`` is computed; without the kernel's, ``u``'s
    spectrum and the correlation with ``u`` are skipped.
    """
    from scipy import fft

    Bt, H, L = u.shape
    C, _, Lk = K.shape
    if L == 0 or Lk == 0 or Bt == 0:
        return _empty_conv_bwd(u, K, K_anti, D, G, need_u, need_k, need_d)
    u, K, G = np.ascontiguousarray(u), np.ascontiguousarray(K), np.ascontiguousarray(G)
    if Kf is None:
        n = _fft_len(L, Lk)
    workers = _fft_workers(workers, Bt * max(C, 1) * H * n)
    Gf = fft.rfft(G, n, axis=-1, workers=workers) if (need_u or need_k) else None  # (Bt, C, H, F)
    # The spectra are as large as the batch: products are formed in place (no conj() copies, no
    # einsum temporaries of that size), the kernel gradient first, since u's reuses Gf's memory.
    K_bar = Ka_bar = None
    if need_k:
        Uf = fft.rfft(u, n, axis=-1, workers=workers)  # (Bt, H, F)
        np.conjugate(Uf, out=Uf)
        # K_bar = sum_b corr(G, u): lags 0..Lk-1 are causal taps, lags -1..-Lk the anti-causal ones.
        if C == 1:
            Uf *= Gf[:, 0]
            Qf = Uf.sum(axis=0)[None]
        else:
            Qf = np.einsum("bchf,bhf->chf", Gf, Uf)
        del Uf
        q = fft.irfft(Qf, n, axis=-1, workers=workers, overwrite_x=True)
        K_bar = np.ascontiguousarray(q[..., :Lk])
        if K_anti is not None:
            Ka_bar = np.ascontiguousarray(q[..., n - Lk :][..., ::-1]) if Lk else np.zeros_like(K)
    u_bar = None
    if need_u:
        if Kf is None:
            Kf = _kernel_spectrum(K, K_anti, n, workers)  # (C, H, F)
        # u_bar = sum_c corr(G, k): multiply by conj(Kf) and sum the output channels in frequency space.
        if C == 1:
            Ubf = Gf[:, 0]
            Ubf *= np.conj(Kf[0])  # in place: Gf is not needed any more
        else:
            Ubf = np.einsum("bchf,chf->bhf", Gf, np.conj(Kf))
        del Gf
        u_bar = fft.irfft(Ubf, n, axis=-1, workers=workers, overwrite_x=True)[..., :L]
        if D is not None:
            u_bar = u_bar + np.einsum("ch,bcht->bht", D, G)
        u_bar = np.ascontiguousarray(u_bar)
    D_bar = None if (D is None or not need_d) else np.einsum("bcht,bht->ch", G, u)
    return u_bar, K_bar, Ka_bar, D_bar
