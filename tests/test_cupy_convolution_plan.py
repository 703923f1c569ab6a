"""CPU tests of the CuPy convolution kernels: planners, the cuFFT maths and convolution.cu on the host.

No GPU is needed. ``causal_conv`` / ``causal_conv_bwd`` are array-namespace code
(``_causal_conv(xp, ...)``): here they run with NumPy's FFT against the direct
reference convolution. ``kernels/convolution.cu`` is compiled as host C++ against
a small CUDA emulation (blocks and threads run one after another -- the kernel
uses no shared memory, shuffles or barriers -- and std::complex stands in for
CuPy's complex) and driven by the module's own launcher with NumPy arrays standing
in for CuPy's. GPU-only matters (speed, cuFFT itself) are in ``tests/test_gpu_convolution.py``.
"""

from __future__ import annotations

import ctypes
import inspect
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ssmcore.backends.cupy import convolution as cc
from ssmcore.backends.cupy._rawmodule import SOURCES
from ssmcore.reference import convolution as ref

# --------------------------------------------------------------------------- planners and declarations


def _smooth(n):
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n == 1


@pytest.mark.parametrize("L, Lk", [(0, 0), (1, 1), (4096, 4096), (1000, 1), (7, 7), (1023, 500), (5, 0)])
def test_fft_length_is_the_smallest_smooth_length(L, Lk):
    n = cc.fft_length(L, Lk)
    assert n >= max(1, L + Lk) and _smooth(n)
    assert not any(_smooth(m) for m in range(max(1, L + Lk), n))


@pytest.mark.parametrize("E, L, sm", [(65536, 4096, 132), (64, 4096, 132), (1, 1, 1), (10 ** 7, 4096, 132),
                                      (5, 0, 132), (0, 10, 132), (3, 200, 1)])
def test_plan_vandermonde_bwd_covers_l_in_anchor_multiples(E, L, sm):
    blocks, chunk, nchunk = cc.plan_vandermonde_bwd(E, L, sm)
    assert blocks * cc.THREADS >= E > (blocks - 1) * cc.THREADS or E == 0
    if L == 0 or E == 0:
        assert nchunk == 0
        return
    assert chunk % cc.ANCHOR == 0
    assert nchunk * chunk >= L > (nchunk - 1) * chunk
    if E >= sm * cc.THREADS_PER_SM:
        assert nchunk == 1
    with pytest.raises(ValueError, match="plan_vandermonde_bwd"):
        cc.plan_vandermonde_bwd(-1, L, sm)


def test_constants_match_the_cuda_source():
    src = SOURCES["convolution.cu"].code()
    assert re.search(rf"#define SSM_CONV_ANCHOR {cc.ANCHOR}\b", src)
    bounds = {kernel: int(b) for b, kernel in re.findall(r"__launch_bounds__\((\d+)\)\s+(\w+)\(", src)}
    assert bounds == {"vandermonde_bwd": cc.THREADS, "cauchy_fwd": cc.THREADS, "cauchy_bwd": cc.THREADS,
                      "dense_fwd": cc.DENSE_MAX_THREADS, "dense_bwd": cc.DENSE_MAX_THREADS}


def test_provides_names_contract_functions_with_the_reference_signatures():
    assert set(cc.PROVIDES) <= set(ref.__all__)
    for fn in cc.PROVIDES:
        got = list(inspect.signature(getattr(cc, fn)).parameters)
        assert got == list(inspect.signature(getattr(ref, fn)).parameters)
    for k in ("vandermonde_bwd", "cauchy_fwd", "cauchy_bwd"):
        assert f"{k}<double>" in SOURCES["convolution.cu"].name_expressions


# --------------------------------------------------------------------------- FFT convolution, NumPy namespace

CASES = [  # Bt, H, C, L, Lk, bidirectional, with D
    (2, 3, 1, 9, 9, False, True), (1, 1, 1, 1, 1, False, False), (3, 2, 2, 16, 5, True, True),
    (1, 4, 3, 7, 7, True, False), (2, 1, 1, 31, 12, False, True), (1, 2, 1, 1, 1, True, True),
]


def _conv_case(rng, Bt, H, C, L, Lk, bidi, with_d, dtype=np.float64):
    u = rng.standard_normal((Bt, H, L)).astype(dtype)
    K = rng.standard_normal((C, H, Lk)).astype(dtype)
    Ka = rng.standard_normal((C, H, Lk)).astype(dtype) if bidi else None
    D = rng.standard_normal((C, H)).astype(dtype) if with_d else None
    return u, K, Ka, D


@pytest.mark.parametrize("case", CASES)
def test_fft_conv_forward_matches_the_direct_reference(case):
    rng = np.random.default_rng(1)
    u, K, Ka, D = _conv_case(rng, *case)
    got = cc._causal_conv(np, u, K, Ka, D)
    np.testing.assert_allclose(got, ref.causal_conv(u, K, Ka, D), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_fft_conv_with_a_precomputed_spectrum_matches_the_reference(case):
    """conv_spectrum's (Kf, n) for a longer input length: same results, forward and backward."""
    rng = np.random.default_rng(3)
    u, K, Ka, D = _conv_case(rng, *case)
    if 0 in u.shape or K.shape[-1] == 0:
        pytest.skip("empty cases never get a spectrum")
    n = cc.fft_length(2 * u.shape[-1], K.shape[-1])
    Kf = cc._spectrum(np, K, Ka, n)
    np.testing.assert_allclose(cc._causal_conv(np, u, K, Ka, D, Kf, n), ref.causal_conv(u, K, Ka, D),
                               rtol=1e-10, atol=1e-12)
    G = rng.standard_normal((u.shape[0], K.shape[0], u.shape[1], u.shape[2]))
    got = cc._causal_conv_bwd(np, u, K, Ka, D, G, True, True, True, Kf, n)
    for g, w in zip(got, ref.causal_conv_bwd(u, K, Ka, D, G)):
        if w is not None:
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("case", CASES)
def test_fft_conv_backward_matches_the_direct_reference(case):
    rng = np.random.default_rng(2)
    u, K, Ka, D = _conv_case(rng, *case)
    G = rng.standard_normal((u.shape[0], K.shape[0], u.shape[1], u.shape[2]))
    got = cc._causal_conv_bwd(np, u, K, Ka, D, G, True, True, True)
    want = ref.causal_conv_bwd(u, K, Ka, D, G)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if w is not None:
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-11)


def test_fft_conv_float32_stays_float32_and_needs_are_honoured():
    rng = np.random.default_rng(3)
    u, K, Ka, D = _conv_case(rng, 2, 3, 2, 33, 20, True, True, np.float32)
    y = cc._causal_conv(np, u, K, Ka, D)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref.causal_conv(u, K, Ka, D), rtol=1e-4, atol=1e-4)
    G = rng.standard_normal(y.shape).astype(np.float32)
    u_bar, K_bar, Ka_bar, D_bar = cc._causal_conv_bwd(np, u, K, Ka, D, G, False, True, False)
    assert u_bar is None and D_bar is None and K_bar.dtype == np.float32
    want = ref.causal_conv_bwd(u, K, Ka, D, G)
    np.testing.assert_allclose(K_bar, want[1], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(Ka_bar, want[2], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shape", [(0, 2, 5), (2, 2, 0)])
def test_fft_conv_empty_cases_match_the_reference(shape):
    rng = np.random.default_rng(4)
    Bt, H, L = shape
    u = rng.standard_normal(shape)
    K = rng.standard_normal((2, H, min(L, 3)))
    D = rng.standard_normal((2, H))
    np.testing.assert_allclose(cc._causal_conv(np, u, K, None, D), ref.causal_conv(u, K, None, D))
    G = rng.standard_normal((Bt, 2, H, L))
    for g, w in zip(cc._causal_conv_bwd(np, u, K, None, D, G, True, True, True), ref.causal_conv_bwd(u, K, None, D, G)):
        assert (g is None) == (w is None)
        if w is not None:
            np.testing.assert_allclose(g, w, atol=1e-12)


def test_fft_conv_nan_spreads_as_in_an_fft():
    u = np.ones((1, 1, 8))
    u[0, 0, 3] = np.nan
    y = cc._causal_conv(np, u, np.ones((1, 1, 8)), None, None)
    assert np.isnan(y[0, 0, 3:]).all()  # an FFT spreads NaN; at least the causal future is NaN


# --------------------------------------------------------------------------- convolution.cu on the host

_EMU_COMPLEX = """
#pragma once
#include <complex>
template <class T> using complex = std::complex<T>;
"""

_EMU_HEADER = r"""
#include <barrier>
#include <cmath>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>
#include <complex>
// Everything but the extern "C" entry points is hidden: other host-emulation libraries
// loaded into the same process (lti.cu's, scan.cu's) define the same inline names
// (threadIdx, launch, ...), which would otherwise be unified across libraries.
#pragma GCC visibility push(hidden)
using std::abs;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(x)
inline std::mutex g_atomic_mutex;  // common.cuh's atomic_add helpers need atomicAdd
template <class V> inline V atomicAdd(V* p, V v) {
    std::lock_guard<std::mutex> g(g_atomic_mutex); V o = *p; *p = o + v; return o; }
struct Dim3 { unsigned x = 0, y = 0, z = 0; };
inline thread_local Dim3 threadIdx, blockIdx;
inline Dim3 blockDim, gridDim;
inline std::barrier<>* g_block_bar = nullptr;
inline unsigned char* g_dyn_shared = nullptr;
#define SSM_DYNAMIC_SHARED(name) unsigned char* name = g_dyn_shared
// common.cuh's warp helpers compile but are never called by these kernels (no shuffles).
template <class V> inline V __shfl_sync(unsigned, V v, int) { throw 0; return v; }
template <class V> inline V __shfl_up_sync(unsigned, V v, unsigned) { throw 0; return v; }
template <class V> inline V __shfl_down_sync(unsigned, V v, unsigned) { throw 0; return v; }
template <class V> inline V __shfl_xor_sync(unsigned, V v, int) { throw 0; return v; }
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
// Blocks one after another; the threads of a block as std::threads meeting at a
// std::barrier for __syncthreads, dynamic shared memory a per-block buffer filled
// with 0xff (reads of unwritten shared memory show as NaN).
inline void launch(unsigned gx, unsigned gy, unsigned block, size_t smem, const std::function<void()>& body) {
    blockDim.x = block; gridDim.x = gx; gridDim.y = gy;
    std::vector<unsigned char> shared(smem + 16);
    for (unsigned by = 0; by < gy; ++by) for (unsigned bx = 0; bx < gx; ++bx) {
        std::barrier<> bb(block);
        g_block_bar = &bb;
        std::fill(shared.begin(), shared.end(), 0xff);
        g_dyn_shared = shared.data();
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < block; ++t)
            ts.emplace_back([&, t] { threadIdx.x = t; blockIdx.x = bx; blockIdx.y = by; body(); });
        for (auto& th : ts) th.join();
    }
}
#include "convolution.cu"
#pragma GCC visibility pop
typedef long long ll;
extern "C" void vandermonde_bwd_f64(unsigned gx, unsigned gy, unsigned block, const void* la, const void* G,
        void* Wp, void* Yp, ll C, ll H, ll N, ll L, ll chunk) {
    launch(gx, gy, block, 0, [=] { vandermonde_bwd<double>((const complex<double>*)la, (const double*)G,
        (complex<double>*)Wp, (complex<double>*)Yp, C, H, N, L, chunk); });
}
typedef const complex<double>* cz;
typedef complex<double>* z;
extern "C" void cauchy_fwd_f64(unsigned gx, unsigned gy, unsigned block, const void* num, const void* mu,
        const void* omw, const void* opw, void* S, ll H, ll M, ll N, ll F) {
    launch(gx, gy, block, 0, [=] { cauchy_fwd<double>((cz)num, (cz)mu, (cz)omw, (cz)opw, (z)S, H, M, N, F); });
}
extern "C" void cauchy_bwd_f64(unsigned gx, unsigned gy, unsigned block, const void* mu, const void* omw,
        const void* opw, const void* Sb, void* nb, void* Y, ll H, ll M, ll N, ll F) {
    launch(gx, gy, block, 0, [=] { cauchy_bwd<double>((cz)mu, (cz)omw, (cz)opw, (cz)Sb, (z)nb, (z)Y, H, M, N, F); });
}
#define DENSE(T, tag) \
extern "C" void dense_fwd_##tag(unsigned gx, unsigned gy, unsigned block, unsigned long long smem, const void* At, \
        const void* B, const void* C, void* K, ll N, ll L) { \
    launch(gx, gy, block, smem, [=] { dense_fwd<T>((const T*)At, (const T*)B, (const T*)C, (T*)K, N, L); }); } \
extern "C" void dense_bwd_##tag(unsigned gx, unsigned gy, unsigned block, unsigned long long smem, const void* A, \
        const void* At, const void* B, const void* C, const void* G, void* Ab, void* Bb, void* Cb, void* ck, \
        void* buf, ll N, ll L, ll seg, ll nseg) { \
    launch(gx, gy, block, smem, [=] { dense_bwd<T>((const T*)A, (const T*)At, (const T*)B, (const T*)C, (const T*)G, \
        (T*)Ab, (T*)Bb, (T*)Cb, (T*)ck, (T*)buf, N, L, seg, nseg); }); }
DENSE(float, f32)
DENSE(double, f64)
DENSE(complex<float>, c64)
DENSE(complex<double>, c128)
"""


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("needs g++ to run convolution.cu on the host")
    d = tmp_path_factory.mktemp("conv_emu")
    (d / "cupy").mkdir()
    (d / "cupy" / "complex.cuh").write_text(_EMU_COMPLEX)
    (d / "emu.cpp").write_text(_EMU_HEADER)
    lib = d / "libconv_emu.so"
    cmd = [cxx, "-std=c++20", "-O1", "-ffp-contract=off", "-shared", "-fPIC", f"-I{d}",
           f"-I{SOURCES['convolution.cu'].path.parent}", "-o", str(lib), str(d / "emu.cpp"), "-lpthread"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        if "barrier" in res.stderr and "No such file" in res.stderr:
            pytest.skip("g++ without C++20 <barrier>")
        raise AssertionError(f"convolution.cu does not compile as host C++:\n{res.stderr[-4000:]}")
    return ctypes.CDLL(str(lib))


class _FakeCupy:
    """The part of CuPy's API the launcher uses, on NumPy arrays."""

    empty, zeros, asarray, ascontiguousarray = np.empty, np.zeros, np.asarray, np.ascontiguousarray
    complex128, exp, broadcast_to = np.complex128, np.exp, np.broadcast_to
    result_type, swapaxes = np.result_type, np.swapaxes


def _argument(x):
    if isinstance(x, np.ndarray):
        assert x.flags.c_contiguous, "a non-contiguous array reached the kernel"
        return ctypes.c_void_p(x.ctypes.data)
    if isinstance(x, np.int64):
        return ctypes.c_longlong(int(x))
    raise TypeError(f"unexpected kernel argument {type(x).__name__}")


@pytest.fixture
def host(emulated, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _FakeCupy)

    tags = {"float": "f32", "double": "f64", "complex<float>": "c64", "complex<double>": "c128"}

    def get(name):
        assert name in SOURCES["convolution.cu"].name_expressions
        kernel, targ = name[:-1].split("<", 1)
        fn = getattr(emulated, f"{kernel}_{tags[targ]}")
        dense = kernel.startswith("dense")

        def call(grid, block, args, shared_mem=0):
            grid = tuple(grid) + (1,) * (2 - len(grid))
            head = [ctypes.c_uint(grid[0]), ctypes.c_uint(grid[1]), ctypes.c_uint(block[0])]
            if dense:
                head.append(ctypes.c_ulonglong(shared_mem))
            else:
                assert shared_mem == 0
            fn(*head, *(_argument(a) for a in args))

        return call

    monkeypatch.setattr(cc.CONV, "get", get)
    monkeypatch.setattr(cc, "_sm_count", lambda: 1)
    return cc


def _vand_case(rng, C, H, N, L, zero_mode=False):
    lam = -rng.uniform(0.01, 0.5, (H, N)) + 1j * rng.uniform(-3, 3, (H, N))
    log_ad = lam
    if zero_mode:
        log_ad = log_ad.copy()
        log_ad[0, 0] = -np.inf  # Ad = 0: only l = 0 (and l = 1 in the derivative) count
    W = rng.standard_normal((C, H, N)) + 1j * rng.standard_normal((C, H, N))
    G = rng.standard_normal((C, H, L))
    return log_ad, W, G


@pytest.mark.parametrize("C, H, N, L, sm_threads", [(1, 2, 3, 5, None), (2, 3, 4, 200, 2048), (1, 1, 1, 1, None),
                                                     (2, 2, 33, 130, 64), (1, 3, 2, 64, 10 ** 6)])
def test_vandermonde_bwd_on_the_host_matches_the_reference(host, monkeypatch, C, H, N, L, sm_threads):
    if sm_threads is not None:  # force l-chunks (or none) through the planner's device size
        plan = cc.plan_vandermonde_bwd
        monkeypatch.setattr(cc, "plan_vandermonde_bwd", lambda E, L_, sm: plan(E, L_, sm, threads_per_sm=sm_threads))
    rng = np.random.default_rng(5)
    log_ad, W, G = _vand_case(rng, C, H, N, L, zero_mode=True)
    W_bar, ad_bar = cc.vandermonde_kernel_bwd(log_ad, W, G)
    want_W, want_ad = ref.vandermonde_kernel_bwd(log_ad, W, G)
    assert W_bar.shape == (C, H, N) and ad_bar.shape == (H, N)
    np.testing.assert_allclose(W_bar, want_W, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(ad_bar, want_ad, rtol=1e-11, atol=1e-11)


def test_vandermonde_bwd_chunks_are_used(host, monkeypatch):
    seen = []
    plan = cc.plan_vandermonde_bwd

    def spy(E, L, sm):
        r = plan(E, L, sm)
        seen.append(r)
        return r

    monkeypatch.setattr(cc, "plan_vandermonde_bwd", spy)
    rng = np.random.default_rng(6)
    log_ad, W, G = _vand_case(rng, 1, 1, 2, 300)
    W_bar, ad_bar = cc.vandermonde_kernel_bwd(log_ad, W, G)
    assert seen[0][2] > 1  # 2 elements on a 2048-thread SM: l is split
    want_W, want_ad = ref.vandermonde_kernel_bwd(log_ad, W, G)
    np.testing.assert_allclose(W_bar, want_W, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(ad_bar, want_ad, rtol=1e-11, atol=1e-11)


def test_vandermonde_bwd_empty_and_zero_length(host):
    W_bar, ad_bar = cc.vandermonde_kernel_bwd(
        np.zeros((2, 3), complex), np.ones((1, 2, 3), complex), np.zeros((1, 2, 0))
    )
    assert W_bar.shape == (1, 2, 3) and not W_bar.any() and ad_bar.shape == (2, 3) and not ad_bar.any()


def test_vandermonde_forward_glue(monkeypatch):
    """The forward reshapes (C, H, N) onto the LTI diag_kernel's rows and casts to out_dtype."""
    from ssmcore.backends.cupy import lti as cl

    def diag_kernel(A, W, scale, L, real_output):  # the LTI kernel's contract, in NumPy
        ls = np.arange(L)
        K = scale * np.einsum("rn,rnl->rl", W, A[..., None] ** ls)
        return K.real if real_output else K

    monkeypatch.setitem(sys.modules, "cupy", _FakeCupy)
    monkeypatch.setattr(cl, "diag_kernel", diag_kernel)
    rng = np.random.default_rng(7)
    log_ad, W, _ = _vand_case(rng, 2, 3, 4, 1)
    K = cc.vandermonde_kernel(log_ad, W, 9, "float32")
    assert K.dtype == np.float32 and K.shape == (2, 3, 9)
    np.testing.assert_allclose(K, ref.vandermonde_kernel(log_ad, W, 9, "float64"), rtol=1e-5, atol=1e-5)


def _nodes(L):
    th = 2.0 * np.pi * np.arange(L // 2 + 1) / max(L, 1)
    return 2.0 * np.sin(0.5 * th) ** 2 + 1j * np.sin(th), 2.0 * np.cos(0.5 * th) ** 2 - 1j * np.sin(th)


@pytest.mark.parametrize("H, M, N, L", [(2, 4, 5, 16), (1, 1, 1, 1), (3, 2, 33, 9), (1, 3, 2, 2)])
def test_cauchy_sums_on_the_host_match_the_reference(host, H, M, N, L):
    rng = np.random.default_rng(8)
    num = rng.standard_normal((H, M, N)) + 1j * rng.standard_normal((H, M, N))
    mu = 0.05 * (-rng.uniform(0.1, 1, (H, N)) + 1j * rng.uniform(-5, 5, (H, N)))
    omw, opw = _nodes(L)
    S = cc.cauchy_sums(num, mu, omw, opw)
    np.testing.assert_allclose(S, ref.cauchy_sums(num, mu, omw, opw), rtol=1e-12, atol=1e-12)
    Sb = rng.standard_normal(S.shape) + 1j * rng.standard_normal(S.shape)
    got = cc.cauchy_sums_bwd(num, mu, omw, opw, Sb)
    want = ref.cauchy_sums_bwd(num, mu, omw, opw, Sb)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-11)


def test_cauchy_sums_empty(host):
    omw, opw = _nodes(4)
    S = cc.cauchy_sums(np.zeros((2, 3, 0), complex), np.zeros((2, 0), complex), omw, opw)
    assert S.shape == (2, 3, 3) and not S.any()
    nb_, mb = cc.cauchy_sums_bwd(np.zeros((2, 3, 0), complex), np.zeros((2, 0), complex), omw, opw, S)
    assert nb_.shape == (2, 3, 0) and mb.shape == (2, 0)


def test_ssm_kernel_dplr_end_to_end_through_the_host_kernels(host, monkeypatch):
    """The DPLR front door's glue with the CuPy Cauchy launchers in place of Numba's (NumPy arrays)."""
    import ssmcore
    from ssmcore.backends.numba import convolution as nbc

    rng = np.random.default_rng(9)
    H, N, L = 2, 4, 12
    lam = -rng.uniform(0.1, 1, (H, N)) + 1j * rng.uniform(-3, 3, (H, N))
    P = 0.3 * (rng.standard_normal((1, H, N)) + 1j * rng.standard_normal((1, H, N)))
    B = rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))
    C = rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))
    dt = rng.uniform(0.01, 0.1, H)
    want = ssmcore.ssm_kernel_dplr(lam, P, B, C, dt, L)
    ct = rng.standard_normal(want.shape)
    _, pb = ssmcore.vjp("ssm_kernel_dplr", lam, P, B, C, dt, L)
    want_g = pb(ct)
    calls = []

    def spy(fn):
        def wrapped(*a):
            calls.append(fn.__name__)
            return fn(*a)

        return wrapped

    monkeypatch.setattr(nbc, "cauchy_sums", spy(cc.cauchy_sums))
    monkeypatch.setattr(nbc, "cauchy_sums_bwd", spy(cc.cauchy_sums_bwd))
    got = ssmcore.ssm_kernel_dplr(lam, P, B, C, dt, L)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)
    _, pb = ssmcore.vjp("ssm_kernel_dplr", lam, P, B, C, dt, L)
    for g, w in zip(pb(ct), want_g):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-11)
    assert calls == ["cauchy_sums", "cauchy_sums", "cauchy_sums_bwd"]  # the host kernels did the work


def _dense_case(rng, S, N, dtype):
    cplx = np.dtype(dtype).kind == "c"

    def r(*shape):
        x = rng.standard_normal(shape)
        return (x + 1j * rng.standard_normal(shape) if cplx else x).astype(dtype)

    A = (r(S, N, N) * (0.8 / np.sqrt(max(N, 1)))).astype(dtype)
    return A, r(S, N), r(S, N)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128, np.float32, np.complex64])
@pytest.mark.parametrize("S, N, L", [(2, 3, 7), (1, 1, 1), (3, 5, 17), (1, 33, 10), (2, 2, 2)])
def test_dense_kernel_on_the_host_matches_the_reference(host, dtype, S, N, L):
    rng = np.random.default_rng(10)
    A, B, C = _dense_case(rng, S, N, dtype)
    tol = 1e-12 if np.dtype(dtype).itemsize * (1 if np.dtype(dtype).kind == "f" else 0.5) == 8 else 2e-5
    K = cc.dense_kernel(A, B, C, L)
    assert K.dtype == dtype and K.shape == (S, L)
    np.testing.assert_allclose(K, ref.dense_kernel(A, B, C, L), rtol=tol, atol=tol)
    G = rng.standard_normal((S, L)).astype(dtype)
    got = cc.dense_kernel_bwd(A, B, C, G)
    want = ref.dense_kernel_bwd(A, B, C, G)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == dtype
        np.testing.assert_allclose(g, w, rtol=tol * 10, atol=tol * 10)


def test_dense_kernel_empty_and_limits(host):
    A, B, C = _dense_case(np.random.default_rng(11), 2, 3, np.float64)
    assert cc.dense_kernel(A, B, C, 0).shape == (2, 0)
    for g, x in zip(cc.dense_kernel_bwd(A, B, C, np.zeros((2, 0))), (A, B, C)):
        assert g.shape == x.shape and not g.any()
    assert cc.dense_threads(1) == 32 and cc.dense_threads(33) == 64 and cc.dense_threads(1024) == 1024
    with pytest.raises(ValueError, match="ssm_kernel_dense: .* N = 1025"):
        cc.dense_threads(1025)


def test_ssm_kernel_dense_and_lti_convolution_mode_through_the_host_kernels(host, monkeypatch):
    """The dense front door and lti_simulate's convolution mode with the CuPy dense launchers in Numba's place."""
    import ssmcore
    from ssmcore.backends.numba import convolution as nbc

    rng = np.random.default_rng(12)
    A, B, C = _dense_case(rng, 3, 4, np.float64)
    u = rng.standard_normal((2, 20))
    Ad = A[0]
    Bm, Cm = rng.standard_normal((4, 2)), rng.standard_normal((1, 4))
    want = ssmcore.ssm_kernel_dense(A, B, C, 9)
    ct = rng.standard_normal(want.shape)
    want_g = ssmcore.vjp("ssm_kernel_dense", A, B, C, 9)[1](ct)
    want_y = ssmcore.lti_simulate(Ad, Bm, Cm, None, u, mode="convolution")
    calls = []

    def spy(fn):
        def wrapped(*a):
            calls.append(fn.__name__)
            return fn(*a)

        return wrapped

    monkeypatch.setattr(nbc, "dense_kernel", spy(cc.dense_kernel))
    monkeypatch.setattr(nbc, "dense_kernel_bwd", spy(cc.dense_kernel_bwd))
    np.testing.assert_allclose(ssmcore.ssm_kernel_dense(A, B, C, 9), want, rtol=1e-12, atol=1e-12)
    for g, w in zip(ssmcore.vjp("ssm_kernel_dense", A, B, C, 9)[1](ct), want_g):
        np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-12)
    y = ssmcore.lti_simulate(Ad, Bm, Cm, None, u, mode="convolution")
    np.testing.assert_allclose(y, want_y, rtol=1e-10, atol=1e-11)
    assert calls[:3] == ["dense_kernel", "dense_kernel", "dense_kernel_bwd"] and "dense_kernel" in calls[3:]
