"""CuPy GPU kernels of the convolution mode; the functions of :mod:`ssmcore.reference.convolution`.

The kernel contract (names, parameters, layouts, dtypes) is the docstring of
``ssmcore.reference.convolution``. :data:`PROVIDES` lists the functions this
module implements (the whole contract; ``tests/test_contract.py`` checks them).
Arrays in and out are CuPy arrays; launchers allocate their outputs, work on
CuPy's current stream and never synchronise or copy to the host.

FFT convolution (:func:`causal_conv`, :func:`causal_conv_bwd`)
    ``cupy.fft`` (cuFFT) with one transform length ``n = fft_length(L, L_k)``,
    the smallest 2-3-5-7-smooth number ``>= L + L_k`` (no circular wrap-around
    either way). ``cupy.fft.rfft(x, n)`` zero-pads with one copy of each input
    (cuFFT's R2C transform reads a dense padded array); nothing else is padded or
    copied here, and the output is the inverse transform's first ``L`` samples plus
    the skip term. A padding-free cuFFT plan (strided input) and a cached kernel
    spectrum are the next steps for speed. The anti-causal half of a bidirectional kernel
    (``y_t += sum_j Ka_j u_{t+1+j}``) is the circular kernel ``k[n-1-j] = Ka_j``,
    whose transform is ``e^{2 pi i f / n} conj(rfft(Ka))``: both halves share one
    spectrum, and the backward uses its conjugate (correlation) for ``u_bar`` and
    reads ``K_bar`` / ``Ka_bar`` off one inverse transform (lags ``j`` and ``n-1-j``).
    The maths is written against an array namespace ``xp`` (``_causal_conv(xp, ...)``)
    so the CPU tests run it with NumPy's FFT.

Vandermonde kernel (:func:`vandermonde_kernel`, :func:`vandermonde_kernel_bwd`)
    Forward: the LTI backend's ``diag_vandermonde`` kernel (``kernels/lti.cu``):
    running products re-anchored every ``ANCHOR`` steps, ``O(C H (N + L))`` memory.
    Backward: ``vandermonde_bwd`` in ``kernels/convolution.cu``: one thread per
    ``(c, h, n)`` and chunk of ``l`` accumulates ``sum_l G_l Ad^l`` and
    ``sum_l G_l l Ad^(l-1)`` with running products re-anchored every
    :data:`ANCHOR` steps from ``exp(l log Ad)``; per-chunk partial sums
    ``(nchunk, C, H, N)`` are reduced by CuPy. Never an ``(H, N, L)`` tensor.

Cauchy sums of the DPLR kernel (:func:`cauchy_sums`, :func:`cauchy_sums_bwd`)
    ``cauchy_fwd`` / ``cauchy_bwd`` in ``kernels/convolution.cu``: one thread per
    output element (``(h, m, k)`` forward, ``(h, m, i)`` backward) looping over the
    other index, so the ``(H, N, F)`` Cauchy matrix is never formed; the launcher
    forms ``mu_bar = sum_m num Y``. Memory ``O(H M (N + F))``.

Dense kernel (:func:`dense_kernel`, :func:`dense_kernel_bwd`)
    ``dense_fwd`` / ``dense_bwd``: one block per system, thread i owns state i,
    the state in shared memory (two buffers, one barrier per step); the backward
    keeps checkpoints every ``seg = ceil(sqrt(L))`` steps (as Numba) and recomputes
    each segment into a workspace, ``O(S N (L / seg + seg))`` memory. ``N`` is
    limited to :data:`DENSE_MAX_THREADS` states.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ._rawmodule import KERNEL_DIR, declare, dtype_name

__all__ = ["ANCHOR", "PROVIDES", "cauchy_sums", "cauchy_sums_bwd", "causal_conv", "causal_conv_bwd", "conv_spectrum",
           "dense_kernel",
           "dense_kernel_bwd", "dense_threads", "fft_length", "plan_vandermonde_bwd",
           "vandermonde_kernel", "vandermonde_kernel_bwd"]

#: The kernel-contract functions of ``reference/convolution.py`` this module implements.
PROVIDES = ("cauchy_sums", "cauchy_sums_bwd", "causal_conv", "causal_conv_bwd", "conv_spectrum", "dense_kernel",
            "dense_kernel_bwd", "vandermonde_kernel", "vandermonde_kernel_bwd")

THREADS = 128  # threads per block of vandermonde_bwd (= its __launch_bounds__)
ANCHOR = 64  # re-anchoring interval: must match SSM_CONV_ANCHOR in convolution.cu
THREADS_PER_SM = 2048
MAX_GRID_Y = 65535


def _options() -> tuple[str, ...]:
    digest = hashlib.sha1((KERNEL_DIR / "common.cuh").read_bytes()).hexdigest()[:16]
    return (f"-I{KERNEL_DIR}", f"-DSSMCORE_COMMON_CUH_SHA1=0x{digest}")


_TYPES = ("float", "double", "complex<float>", "complex<double>")
CONV = declare(
    "convolution.cu",
    ["vandermonde_bwd<double>", "cauchy_fwd<double>", "cauchy_bwd<double>"]
    + [f"dense_{d}<{t}>" for d in ("fwd", "bwd") for t in _TYPES],
    options=_options(),
)


# --------------------------------------------------------------------------- planning (plain Python)


def fft_length(L: int, Lk: int) -> int:
    """The smallest 2-3-5-7-smooth integer ``>= L + Lk`` (cuFFT's fast radices), at least 1."""
    target = max(1, int(L) + int(Lk))
    best = 1 << (target - 1).bit_length()  # a power of two always qualifies
    p7 = 1
    while p7 < best:
        p5 = p7
        while p5 < best:
            p3 = p5
            while p3 < best:
                # the smallest power-of-two multiple of p3 that reaches target
                m = p3
                while m < target:
                    m *= 2
                best = min(best, m)
                p3 *= 3
            p5 *= 5
        p7 *= 7
    return best


def plan_vandermonde_bwd(elements: int, L: int, sm_count: int,
                         threads_per_sm: int = THREADS_PER_SM) -> tuple[int, int, int]:
    """``(blocks, chunk, nchunk)`` of :func:`vandermonde_kernel_bwd`.

    One thread per ``(c, h, n)`` element; ``l`` is cut into ``nchunk`` chunks of
    ``chunk`` steps (a multiple of :data:`ANCHOR`) when the elements alone give
    fewer threads than the device holds (``sm_count * threads_per_sm``).
    """
    if elements < 0 or L < 0 or sm_count <= 0:
        raise ValueError(f"plan_vandermonde_bwd: expected elements, L >= 0 and sm_count > 0; got "
                         f"{(elements, L, sm_count)}")
    blocks = -(-elements // THREADS)
    if L == 0 or elements == 0:
        return blocks, max(L, 1), 0
    want = max(1, -(-(sm_count * threads_per_sm) // elements))
    nchunk = min(want, -(-L // ANCHOR), MAX_GRID_Y)
    per = -(-L // nchunk)
    chunk = -(-per // ANCHOR) * ANCHOR
    return blocks, chunk, -(-L // chunk)


_SM_COUNT: dict[int, int] = {}


def _sm_count() -> int:
    import cupy

    dev = cupy.cuda.Device()
    n = _SM_COUNT.get(dev.id)
    if n is None:
        n = _SM_COUNT[dev.id] = int(dev.attributes["MultiProcessorCount"])
    return n


# --------------------------------------------------------------------------- FFT convolution (xp-generic)


def _spectrum(xp: Any, K: Any, K_anti: Any, n: int) -> Any:
    """Rfft of the circular kernel: K at lags 0..Lk-1 and K_anti at lags -1..-Lk (indices n-1-j)."""
    Kf = xp.fft.rfft(K, n=n, axis=-1)
    if K_anti is not None:
        f = xp.arange(n // 2 + 1, dtype=xp.float64)
        # the transform of k[(-1 - m) mod n] = Ka[m] is e^{+2 pi i f / n} conj(Ka_f)
        shift = xp.exp((2j * np.pi / n) * f).astype(Kf.dtype)
        Kf = Kf + shift * xp.conj(xp.fft.rfft(K_anti, n=n, axis=-1))
    return Kf


def _empty_conv(xp: Any, u: Any, K: Any, D: Any) -> Any:
    Bt, H, L = u.shape
    y = xp.zeros((Bt, K.shape[0], H, L), dtype=xp.result_type(u, K))
    if D is not None:
        y = y + D[None, :, :, None] * u[:, None]
    return y


def _causal_conv(xp: Any, u: Any, K: Any, K_anti: Any, D: Any, Kf: Any = None, n: int | None = None) -> Any:
    """:func:`causal_conv` in namespace ``xp`` (CuPy on the GPU, NumPy in the CPU tests)."""
    Bt, H, L = u.shape
    C, _, Lk = K.shape
    if L == 0 or Lk == 0 or Bt == 0:
        return _empty_conv(xp, u, K, D)
    if Kf is None:
        n = fft_length(L, Lk)
        Kf = _spectrum(xp, K, K_anti, n)  # (C, H, F)
    Uf = xp.fft.rfft(u, n=n, axis=-1)  # (Bt, H, F)
    y = xp.fft.irfft(Uf[:, None] * Kf[None], n=n, axis=-1)[..., :L]
    if D is not None:
        y = y + D[None, :, :, None] * u[:, None]
    return y


def _causal_conv_bwd(xp: Any, u: Any, K: Any, K_anti: Any, D: Any, G: Any, need_u: bool, need_k: bool,
                     need_d: bool, Kf: Any = None, n: int | None = None) -> tuple[Any, Any, Any, Any]:
    Bt, H, L = u.shape
    C, _, Lk = K.shape
    if L == 0 or Lk == 0 or Bt == 0:
        u_bar = K_bar = Ka_bar = D_bar = None
        if need_u:
            u_bar = xp.zeros(u.shape, dtype=xp.result_type(u, G))
            if D is not None:
                u_bar = u_bar + xp.sum(D[None, :, :, None] * G, axis=1)
        if need_k:
            K_bar = xp.zeros_like(K)
            Ka_bar = None if K_anti is None else xp.zeros_like(K_anti)
        if D is not None and need_d:
            D_bar = xp.sum(G * u[:, None], axis=(0, 3))
        return u_bar, K_bar, Ka_bar, D_bar
    if Kf is None:
        n = fft_length(L, Lk)
    Gf = xp.fft.rfft(G, n=n, axis=-1)  # (Bt, C, H, F)
    u_bar = K_bar = Ka_bar = D_bar = None
    if need_u:
        # adjoint of multiplying by the spectrum: its conjugate (a correlation), summed over c
        if Kf is None:
            Kf = _spectrum(xp, K, K_anti, n)
        u_bar = xp.fft.irfft(xp.sum(Gf * xp.conj(Kf)[None], axis=1), n=n, axis=-1)[..., :L]
        if D is not None:
            u_bar = u_bar + xp.sum(D[None, :, :, None] * G, axis=1)
    if need_k:
        Uf = xp.fft.rfft(u, n=n, axis=-1)
        # Q[m] = sum_{b, t} G[t] u[(t - m) mod n]: K_bar at lags m = j, Ka_bar at m = n - 1 - j
        Q = xp.fft.irfft(xp.sum(Gf * xp.conj(Uf)[:, None], axis=0), n=n, axis=-1)
        K_bar = Q[..., :Lk]
        if K_anti is not None:
            Ka_bar = xp.flip(Q[..., n - Lk:], axis=-1)
    if D is not None and need_d:
        D_bar = xp.sum(G * u[:, None], axis=(0, 3))
    return u_bar, K_bar, Ka_bar, D_bar


def conv_spectrum(K: Any, K_anti: Any, L: int, workers: int | None = None) -> tuple[Any, int]:
    """``(Kf, n)`` of ``reference.convolution.conv_spectrum``, n = :func:`fft_length` (``workers`` ignored)."""
    import cupy as cp

    n = fft_length(int(L), K.shape[-1])
    return _spectrum(cp, K, K_anti, n), n


def causal_conv(u: Any, K: Any, K_anti: Any, D: Any, workers: int | None = None, Kf: Any = None,
                n: int | None = None) -> Any:
    """``y (Bt, C, H, L)`` of ``reference.convolution.causal_conv`` by cuFFT, in u's dtype (``workers`` ignored)."""
    import cupy as cp

    return _causal_conv(cp, u, K, K_anti, D, Kf, n)


def causal_conv_bwd(u: Any, K: Any, K_anti: Any, D: Any, G: Any, workers: int | None = None, need_u: bool = True,
                    need_k: bool = True, need_d: bool = True, Kf: Any = None,
                    n: int | None = None) -> tuple[Any, Any, Any, Any]:
    """``(u_bar, K_bar, Ka_bar, D_bar)`` of ``reference.convolution.causal_conv_bwd`` by cuFFT."""
    import cupy as cp

    return _causal_conv_bwd(cp, u, K, K_anti, D, G, need_u, need_k, need_d, Kf, n)


# --------------------------------------------------------------------------- Vandermonde (S4D)


def vandermonde_kernel(log_ad: Any, W: Any, L: int, out_dtype: Any) -> Any:
    """``K[c, h, l] = Re(sum_n W[c, h, n] Ad[h, n]^l)`` by the LTI backend's re-anchored running products."""
    import cupy as cp

    from .lti import diag_kernel

    C, H, N = W.shape
    L = int(L)
    A = cp.broadcast_to(cp.exp(cp.asarray(log_ad, dtype=cp.complex128)), (C, H, N)).reshape(C * H, N)
    Wr = cp.asarray(W, dtype=cp.complex128).reshape(C * H, N)
    K = diag_kernel(A, Wr, 1.0, L, True)  # (C H, L) float64
    return K.reshape(C, H, L).astype(out_dtype, copy=False)


def _vandermonde_bwd_launch(cp: Any, log_ad: Any, W: Any, G: Any) -> tuple[Any, Any]:
    C, H, N = W.shape
    L = G.shape[-1]
    log_ad = cp.ascontiguousarray(cp.asarray(log_ad).astype(np.complex128, copy=False))
    W = cp.ascontiguousarray(cp.asarray(W).astype(np.complex128, copy=False))
    G = cp.ascontiguousarray(cp.asarray(G).astype(np.float64, copy=False))
    E = C * H * N
    blocks, chunk, nchunk = plan_vandermonde_bwd(E, L, _sm_count())
    if E == 0 or nchunk == 0:
        return cp.zeros((C, H, N), dtype=np.complex128), cp.zeros((H, N), dtype=np.complex128)
    Wp = cp.empty((nchunk, C, H, N), dtype=np.complex128)
    Yp = cp.empty((nchunk, C, H, N), dtype=np.complex128)
    CONV.get("vandermonde_bwd<double>")((blocks, nchunk), (THREADS,), (
        log_ad, G, Wp, Yp, np.int64(C), np.int64(H), np.int64(N), np.int64(L), np.int64(chunk)))
    W_bar = Wp[0] if nchunk == 1 else Wp.sum(axis=0)
    Y = Yp[0] if nchunk == 1 else Yp.sum(axis=0)
    return W_bar, (W * Y).sum(axis=0)


def vandermonde_kernel_bwd(log_ad: Any, W: Any, G: Any) -> tuple[Any, Any]:
    """``(W_bar (C, H, N), ad_bar (H, N))``, complex128, of ``reference.convolution.vandermonde_kernel_bwd``."""
    import cupy as cp

    return _vandermonde_bwd_launch(cp, log_ad, W, G)


# --------------------------------------------------------------------------- Cauchy sums (DPLR)


def _cplx(cp: Any, x: Any) -> Any:
    return cp.ascontiguousarray(cp.asarray(x).astype(np.complex128, copy=False))


def cauchy_sums(num: Any, mu: Any, one_minus_w: Any, one_plus_w: Any) -> Any:
    """``S (H, M, F)`` complex128 of ``reference.convolution.cauchy_sums``, one thread per output."""
    import cupy as cp

    num, mu, omw, opw = (_cplx(cp, x) for x in (num, mu, one_minus_w, one_plus_w))
    H, M, N = num.shape
    F = omw.shape[0]
    if H * M * F == 0 or N == 0:
        return cp.zeros((H, M, F), dtype=np.complex128)
    S = cp.empty((H, M, F), dtype=np.complex128)
    CONV.get("cauchy_fwd<double>")((-(-(H * M * F) // THREADS),), (THREADS,), (
        num, mu, omw, opw, S, np.int64(H), np.int64(M), np.int64(N), np.int64(F)))
    return S


def cauchy_sums_bwd(num: Any, mu: Any, one_minus_w: Any, one_plus_w: Any, S_bar: Any) -> tuple[Any, Any]:
    """``(num_bar (H, M, N), mu_bar (H, N))`` complex128 of ``reference.convolution.cauchy_sums_bwd``."""
    import cupy as cp

    num, mu, omw, opw, S_bar = (_cplx(cp, x) for x in (num, mu, one_minus_w, one_plus_w, S_bar))
    H, M, N = num.shape
    F = omw.shape[0]
    if H * M * N == 0 or F == 0:
        return cp.zeros((H, M, N), dtype=np.complex128), cp.zeros((H, N), dtype=np.complex128)
    num_bar = cp.empty((H, M, N), dtype=np.complex128)
    Y = cp.empty((H, M, N), dtype=np.complex128)
    CONV.get("cauchy_bwd<double>")((-(-(H * M * N) // THREADS),), (THREADS,), (
        mu, omw, opw, S_bar, num_bar, Y, np.int64(H), np.int64(M), np.int64(N), np.int64(F)))
    return num_bar, (num * Y).sum(axis=1)


# --------------------------------------------------------------------------- dense kernel

DENSE_MAX_THREADS = 1024


def dense_threads(N: int) -> int:
    """Threads per block of the dense kernels: one per state, a whole number of warps (clear error past 1024)."""
    if N > DENSE_MAX_THREADS:
        raise ValueError(f"ssm_kernel_dense: the CuPy kernel holds one state per thread, at most "
                         f"{DENSE_MAX_THREADS}; got N = {N}. Use NumPy inputs for larger systems")
    return max(32, -(-int(N) // 32) * 32)


def _common(cp: Any, *arrays: Any) -> tuple[Any, ...]:
    dt = cp.result_type(*arrays)
    return tuple(cp.ascontiguousarray(cp.asarray(a).astype(dt, copy=False)) for a in arrays)


def dense_kernel(A: Any, B: Any, C: Any, L: int) -> Any:
    """``K[s, l] = C[s] A[s]^l B[s]`` in the common dtype, one block per system."""
    import cupy as cp

    A, B, C = _common(cp, A, B, C)
    S, N = B.shape
    L = int(L)
    if S * L == 0 or N == 0:
        return cp.zeros((S, L), dtype=A.dtype)
    K = cp.empty((S, L), dtype=A.dtype)
    At = cp.ascontiguousarray(cp.swapaxes(A, -1, -2))
    CONV.get(f"dense_fwd<{dtype_name(A.dtype)}>")((S,), (dense_threads(N),), (
        At, B, C, K, np.int64(N), np.int64(L)), shared_mem=2 * N * A.dtype.itemsize)
    return K


def dense_kernel_bwd(A: Any, B: Any, C: Any, G: Any) -> tuple[Any, Any, Any]:
    """``(A_bar, B_bar, C_bar)`` in the common dtype, by checkpointed recomputation (see the module docstring)."""
    import math

    import cupy as cp

    A, B, C, G = _common(cp, A, B, C, G)
    S, N = B.shape
    L = G.shape[1]
    if S == 0 or N == 0 or L == 0:
        return cp.zeros(A.shape, A.dtype), cp.zeros(B.shape, A.dtype), cp.zeros(C.shape, A.dtype)
    seg = max(1, math.isqrt(L - 1) + 1) if L > 1 else 1  # ceil(sqrt(L)), as Numba
    nseg = -(-L // seg)
    A_bar, B_bar, C_bar = cp.empty(A.shape, A.dtype), cp.empty(B.shape, A.dtype), cp.empty(C.shape, A.dtype)
    ck = cp.empty((S, nseg, N), A.dtype)
    buf = cp.empty((S, seg, N), A.dtype)
    At = cp.ascontiguousarray(cp.swapaxes(A, -1, -2))
    CONV.get(f"dense_bwd<{dtype_name(A.dtype)}>")((S,), (dense_threads(N),), (
        A, At, B, C, G, A_bar, B_bar, C_bar, ck, buf, np.int64(N), np.int64(L), np.int64(seg), np.int64(nseg)),
        shared_mem=4 * N * A.dtype.itemsize)
    return A_bar, B_bar, C_bar
