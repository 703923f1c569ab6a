"""CPU tests of the CuPy LTI kernels' host side: planners, declarations, and lti.cu run on the host.

No GPU is needed. The planners of ``ssmcore/backends/cupy/lti.py`` are plain
Python; ``lti.cu`` itself is compiled as host C++ against a small emulation of
the CUDA features it uses (one std::thread per CUDA thread, warp shuffles through
a per-warp exchange and barrier, blocks one after another, dynamic shared
memory as a per-block buffer, std::complex for CuPy's complex) and driven by
lti.py's own launchers with NumPy arrays standing in for CuPy's. That runs the
kernels' actual indexing, segment/lane bookkeeping, tiles, checkpoints and
synchronisation order against the NumPy reference; it says nothing about
GPU-only matters (memory model, real scheduling, speed), which
``tests/test_gpu_lti.py`` checks on a device.
"""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

from ssmcore.backends.cupy import lti as cl
from ssmcore.backends.cupy._rawmodule import SOURCES
from ssmcore.reference import lti as ref

TOL = {np.float32: 3e-5, np.float64: 1e-12, np.complex64: 3e-5, np.complex128: 1e-12}


# --------------------------------------------------------------------------- planners and declarations


@pytest.mark.parametrize("N, spl, G, groups", [
    (0, 4, 1, 1), (1, 4, 1, 1), (4, 4, 1, 1), (5, 4, 2, 1), (16, 4, 4, 1), (64, 4, 16, 1), (128, 4, 32, 1),
    (129, 4, 32, 2), (1000, 4, 32, 8), (64, 2, 32, 1), (65, 2, 32, 2), (3, 2, 2, 1),
])
def test_plan_diag_lanes_and_groups(N, spl, G, groups):
    plan = cl.plan_diag(37, N, spl)
    assert (plan.G, plan.groups) == (G, groups)
    assert plan.G * plan.groups * spl >= N  # every state has a lane and slot
    assert plan.blocks * plan.threads >= 37 * plan.G  # every row has its segment
    assert (plan.blocks - 1) * plan.threads < 37 * plan.G  # and no block is wholly idle
    assert 32 % plan.G == 0  # segments never straddle warps


def test_plan_diag_rejects_bad_arguments():
    with pytest.raises(ValueError, match="plan_diag"):
        cl.plan_diag(-1, 4, 4)
    with pytest.raises(ValueError, match="plan_diag"):
        cl.plan_diag(4, 4, 4, threads=100)


@pytest.mark.parametrize("R, N, L, sm", [(1, 64, 4096, 132), (16384, 64, 4096, 132), (3, 5, 1, 132),
                                         (2, 8, 200, 1), (1, 1, 10 ** 7, 132), (5, 4, 0, 132)])
def test_plan_vandermonde_covers_l_in_anchor_multiples(R, N, L, sm):
    plan, chunk, nchunk = cl.plan_vandermonde(R, N, L, sm)
    if L == 0:
        assert nchunk == 0
        return
    assert chunk % cl.ANCHOR == 0 and chunk > 0
    assert nchunk * chunk >= L > (nchunk - 1) * chunk  # covers l < L, no empty chunk
    assert nchunk <= cl.MAX_GRID_Y
    if R * plan.G >= sm * cl.THREADS_PER_SM:
        assert nchunk == 1  # rows already fill the device: no split


@pytest.mark.parametrize("R, G, L, sm, min_chunk", [
    (1, 32, 1 << 20, 132, None), (8, 16, 1 << 16, 132, None), (16384, 16, 4096, 132, None), (1, 1, 100, 132, None),
    (2, 4, 50, 1, 3), (3, 2, 7, 1, 3), (1, 1, 10 ** 9, 132, None),
])
def test_plan_diag_time(R, G, L, sm, min_chunk):
    chunk, nchunk = cl.plan_diag_time(R, G, L, sm, min_chunk=min_chunk)
    m = cl.MIN_TIME_CHUNK if min_chunk is None else min_chunk
    assert nchunk * chunk >= L > (nchunk - 1) * chunk or (nchunk == 1 and chunk == max(L, 1))
    assert nchunk <= cl.MAX_GRID_Y
    if nchunk > 1:
        assert chunk >= m and chunk >= 2 * nchunk  # chunks long next to their start-up fold
        assert R * G * nchunk <= 2 * sm * cl.THREADS_PER_SM  # about one device's worth of lanes
    if 2 * R * G >= sm * cl.THREADS_PER_SM or L < 2 * m:
        assert nchunk == 1


def test_plan_diag_time_splits_few_long_rows():
    _chunk, nchunk = cl.plan_diag_time(1, 32, 1 << 20, 132)
    assert nchunk >= 256
    with pytest.raises(ValueError, match="plan_diag_time"):
        cl.plan_diag_time(1, 0, 10, 1)


def test_dense_threads_whole_warps():
    assert cl.dense_threads(0, 0, 0) == 32
    assert cl.dense_threads(3, 1, 2) == 32
    assert cl.dense_threads(33, 1, 1) == 64
    assert cl.dense_threads(1000, 1, 1) == cl.DENSE_MAX_THREADS


def test_dense_shared_memory_limit_is_a_clear_error():
    assert cl._shared_bytes("simulate_recurrent", 100, 16, 40, 10, 1) == 1600
    with pytest.raises(ValueError, match=r"simulate_recurrent: .* N = 2000, M = 1, P = 1 need 64032 bytes"):
        cl._shared_bytes("simulate_recurrent", 2 * 2000 + 2, 16, 2000, 1, 1)


def test_checkpoint_interval_matches_numba():
    for L in (0, 1, 15, 16, 255, 256, 257, 4096, 10 ** 6):
        assert cl.diag_checkpoint_interval(L) == max(16, int(np.sqrt(max(L, 1))))


def test_constants_match_the_cuda_source():
    src = SOURCES["lti.cu"].code()
    for macro, value in (("SSM_LTI_SPL_FWD", cl.SPL_FWD), ("SSM_LTI_SPL_BWD", cl.SPL_BWD),
                         ("SSM_LTI_ANCHOR", cl.ANCHOR)):
        assert re.search(rf"#define {macro} {value}\b", src), macro
    for bound in re.findall(r"__launch_bounds__\((\d+)\)", src):
        assert int(bound) == cl.DIAG_THREADS


def test_every_instantiation_is_declared():
    """Each launcher's name expressions are among lti.cu's declared ones."""
    names = set(SOURCES["lti.cu"].name_expressions)
    types = ("float", "double", "complex<float>", "complex<double>")
    for t in types:
        for k in ("diag_bwd", "dense_fwd", "dense_bwd"):
            assert f"{k}<{t}>" in names
        for k in ("diag_fwd", "diag_summary", "diag_vandermonde"):
            assert f"{k}<{t}, {t}>" in names
    for c, r in (("complex<float>", "float"), ("complex<double>", "double")):
        assert f"diag_fwd<{c}, {r}>" in names and f"diag_vandermonde<{c}, {r}>" in names


def test_contract_signatures():
    for fn in ref.__all__:
        got = list(inspect.signature(getattr(cl, fn)).parameters)
        assert got == list(inspect.signature(getattr(ref, fn)).parameters)


# --------------------------------------------------------------------------- lti.cu itself, run on the host

_EMU_COMPLEX = """
#pragma once
#include <complex>
template <class T> using complex = std::complex<T>;
"""

_EMU_HEADER = r"""
#pragma once
#include <algorithm>
#include <barrier>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>
using std::max;
using std::min;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(x)
// Hidden, like the other host-emulation libraries: several are loaded into one test process
// and define the same inline names (threadIdx, launch, ...).
#pragma GCC visibility push(hidden)
inline std::mutex g_atomic_mutex;  // common.cuh's atomic_add helpers (used by other kernels) need atomicAdd
template <class V> inline V atomicAdd(V* p, V v) {
    std::lock_guard<std::mutex> g(g_atomic_mutex); V o = *p; *p = o + v; return o; }
struct Dim3 { unsigned x = 0, y = 0, z = 0; };
inline thread_local Dim3 threadIdx, blockIdx;
inline Dim3 blockDim, gridDim;
struct WarpX { std::barrier<> bar{32}; unsigned char slot[32][16]; };
inline thread_local WarpX* tl_warp = nullptr;
inline std::barrier<>* g_block_bar = nullptr;
inline unsigned char* g_dyn_shared = nullptr;
#define SSM_DYNAMIC_SHARED(name) unsigned char* name = g_dyn_shared
template <class V> inline V exchange(V v, int src) {
    static_assert(sizeof(V) <= 16, "shuffle of a value wider than 16 bytes");
    int lane = threadIdx.x & 31;
    std::memcpy(tl_warp->slot[lane], &v, sizeof(V));
    tl_warp->bar.arrive_and_wait();
    V out;
    std::memcpy(&out, tl_warp->slot[src], sizeof(V));
    tl_warp->bar.arrive_and_wait();
    return out;
}
template <class V> inline V __shfl_sync(unsigned, V v, int src) { return exchange(v, src & 31); }
template <class V> inline V __shfl_up_sync(unsigned, V v, unsigned d) {
    int l = threadIdx.x & 31, s = l - (int)d; return exchange(v, s >= 0 ? s : l);
}
template <class V> inline V __shfl_down_sync(unsigned, V v, unsigned d) {
    int l = threadIdx.x & 31, s = l + (int)d; return exchange(v, s < 32 ? s : l);
}
template <class V> inline V __shfl_xor_sync(unsigned, V v, int m) { return exchange(v, (threadIdx.x & 31) ^ m); }
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
// A warp whose lanes all return early leaves the warp barrier unused; a lane that
// returns while others shuffle would deadlock here, which the tests would show.
inline void launch(unsigned gx, unsigned gy, unsigned block, size_t smem, const std::function<void()>& body) {
    blockDim.x = block; gridDim.x = gx; gridDim.y = gy;
    std::vector<unsigned char> shared(smem + 16);
    for (unsigned by = 0; by < gy; ++by)
    for (unsigned bi = 0; bi < gx; ++bi) {
        std::vector<std::unique_ptr<WarpX>> warps;
        for (unsigned w = 0; w < block / 32; ++w) warps.emplace_back(new WarpX());
        std::barrier<> bb(block);
        g_block_bar = &bb;
        std::fill(shared.begin(), shared.end(), 0xff);  // uninitialised shared memory reads show as NaN
        g_dyn_shared = shared.data();
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < block; ++t)
            ts.emplace_back([&, t] { threadIdx.x = t; blockIdx.x = bi; blockIdx.y = by;
                                     tl_warp = warps[t / 32].get(); body(); });
        for (auto& th : ts) th.join();
    }
}
#include "lti.cu"
#pragma GCC visibility pop
typedef long long ll;
typedef const void* cv;
typedef void* vp;
#define GRID unsigned grid_x, unsigned grid_y, unsigned block, unsigned long long smem
#define FWD(T, O, tag) \
extern "C" void diag_fwd_##tag(GRID, cv A, cv B, cv C, cv D, cv u, cv x0, vp y, vp xf, cv Hs, \
        ssm::real_of<T>::type s, ll R, ll N, ll L, ll chunk, int G, int groups, int readout) { \
    launch(grid_x, grid_y, block, smem, [=] { diag_fwd<T, O>((const T*)A, (const T*)B, (const T*)C, (const O*)D, \
        (const O*)u, (const T*)x0, (O*)y, (T*)xf, (const T*)Hs, s, R, N, L, chunk, G, groups, readout); }); } \
extern "C" void diag_summary_##tag(GRID, cv A, cv B, cv u, vp Hs, ll R, ll N, ll L, ll chunk, ll nsum) { \
    launch(grid_x, grid_y, block, smem, [=] { diag_summary<T, O>((const T*)A, (const T*)B, (const O*)u, (T*)Hs, R, N, \
        L, chunk, nsum); }); } \
extern "C" void diag_vandermonde_##tag(GRID, cv A, cv W, vp K, ssm::real_of<T>::type s, ll R, ll N, ll L, int G, \
        int groups, ll chunk) { \
    launch(grid_x, grid_y, block, smem, [=] { diag_vandermonde<T, O>((const T*)A, (const T*)W, (O*)K, s, R, N, L, G, \
        groups, chunk); }); }
#define ONE(T, tag) \
extern "C" void diag_bwd_##tag(GRID, cv A, cv B, cv C, cv D, cv u, cv x0, cv gy, cv gf, vp gA, vp gB, vp gC, \
        vp gD, vp gu, vp gx0, vp ck, vp buf, ssm::real_of<T>::type s, ll R, ll N, ll L, ll K, ll nck, int G, \
        int groups) { \
    launch(grid_x, grid_y, block, smem, [=] { diag_bwd<T>((const T*)A, (const T*)B, (const T*)C, (const T*)D, \
        (const T*)u, (const T*)x0, (const T*)gy, (const T*)gf, (T*)gA, (T*)gB, (T*)gC, (T*)gD, (T*)gu, (T*)gx0, \
        (T*)ck, (T*)buf, s, R, N, L, K, nck, G, groups); }); } \
extern "C" void dense_fwd_##tag(GRID, cv A, cv B, cv C, cv D, cv u, cv x0, cv idx, vp y, vp xf, vp ck, ll N, ll M, \
        ll P, ll L, ll K, ll nck, int keep) { \
    launch(grid_x, grid_y, block, smem, [=] { dense_fwd<T>((const T*)A, (const T*)B, (const T*)C, (const T*)D, \
        (const T*)u, (const T*)x0, (const ll*)idx, (T*)y, (T*)xf, (T*)ck, N, M, P, L, K, nck, keep); }); } \
extern "C" void dense_bwd_##tag(GRID, cv A, cv B, cv C, cv D, cv u, cv idx, cv ck, cv gy, cv gf, vp gA, vp gB, \
        vp gC, vp gD, vp gu, vp gx0, vp buf, ll N, ll M, ll P, ll L, ll K, ll nck, ll Kb) { \
    launch(grid_x, grid_y, block, smem, [=] { dense_bwd<T>((const T*)A, (const T*)B, (const T*)C, (const T*)D, \
        (const T*)u, (const ll*)idx, (const T*)ck, (const T*)gy, (const T*)gf, (T*)gA, (T*)gB, (T*)gC, (T*)gD, (T*)gu, \
        (T*)gx0, (T*)buf, N, M, P, L, K, nck, Kb); }); }
FWD(float, float, f32_f32)
FWD(double, double, f64_f64)
FWD(complex<float>, complex<float>, c64_c64)
FWD(complex<double>, complex<double>, c128_c128)
FWD(complex<float>, float, c64_f32)
FWD(complex<double>, double, c128_f64)
ONE(float, f32)
ONE(double, f64)
ONE(complex<float>, c64)
ONE(complex<double>, c128)
"""

_TAGS = {"float": "f32", "double": "f64", "complex<float>": "c64", "complex<double>": "c128"}


@pytest.fixture(scope="module")
def emulated_kernels(tmp_path_factory):
    """``lti.cu`` compiled for the host (skipped without a C++20 g++)."""
    import ctypes
    import shutil
    import subprocess

    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("needs g++ to run lti.cu on the host")
    d = tmp_path_factory.mktemp("lti_emu")
    (d / "cupy").mkdir()
    (d / "cupy" / "complex.cuh").write_text(_EMU_COMPLEX)
    (d / "emu.cpp").write_text(_EMU_HEADER)
    lib = d / "liblti_emu.so"
    cmd = [cxx, "-std=c++20", "-O1", "-fcx-limited-range", "-ffp-contract=off", "-shared", "-fPIC", f"-I{d}",
           f"-I{SOURCES['lti.cu'].path.parent}", "-o", str(lib), str(d / "emu.cpp"), "-lpthread"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        if "barrier" in res.stderr and "No such file" in res.stderr:
            pytest.skip("g++ without C++20 <barrier>")
        raise AssertionError(f"lti.cu does not compile as host C++:\n{res.stderr[-4000:]}")
    return ctypes.CDLL(str(lib))


class _FakeCupy:
    """The part of CuPy's API that lti.py's launchers use, on NumPy arrays."""

    ndarray = np.ndarray
    int64 = np.int64
    empty, zeros, asarray, ascontiguousarray = np.empty, np.zeros, np.asarray, np.ascontiguousarray
    result_type, matmul = np.result_type, np.matmul


@pytest.fixture
def host_cupy(emulated_kernels, monkeypatch):
    """Route lti.py's launchers to the host kernels (NumPy for CuPy, 1 SM)."""
    import ctypes
    import sys

    monkeypatch.setitem(sys.modules, "cupy", _FakeCupy)

    def get(name):
        kernel, targs = name[:-1].split("<", 1)
        parts = [p.strip() for p in re.split(r",\s*(?![^<]*>)", targs)]
        fn = getattr(emulated_kernels, f"{kernel}_{'_'.join(_TAGS[p] for p in parts)}")

        def call(grid, block, args, shared_mem=0):
            grid = tuple(grid) + (1,) * (2 - len(grid))
            conv = [ctypes.c_uint(grid[0]), ctypes.c_uint(grid[1]), ctypes.c_uint(block[0]),
                    ctypes.c_ulonglong(shared_mem)]
            for x in args:
                if isinstance(x, np.ndarray):
                    assert x.flags.c_contiguous, f"{name}: a non-contiguous array reached the kernel"
                    conv.append(ctypes.c_void_p(x.ctypes.data))
                elif isinstance(x, np.int64):
                    conv.append(ctypes.c_longlong(int(x)))
                elif isinstance(x, np.int32):
                    conv.append(ctypes.c_int(int(x)))
                elif isinstance(x, np.float32):
                    conv.append(ctypes.c_float(float(x)))
                elif isinstance(x, np.float64):
                    conv.append(ctypes.c_double(float(x)))
                else:
                    raise TypeError(f"{name}: unexpected kernel argument {type(x).__name__}")
            fn(*conv)

        return call

    monkeypatch.setattr(cl.LTI, "get", get)
    monkeypatch.setattr(cl, "_sm_count", lambda: 1)
    return cl


def _rand(rng, shape, dtype, scale=1.0):
    x = rng.standard_normal(shape) * scale
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape) * scale
    return x.astype(dtype)


def _close(got, want, dtype):
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    tol = TOL[np.dtype(dtype).type]
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def _diag_case(rng, R, N, L, ct, real_output):
    ct = np.dtype(ct)
    if ct.kind == "c":
        A = (0.97 * np.exp(1j * rng.uniform(-0.6, 0.6, (R, N)))).astype(ct)
    else:
        A = rng.uniform(-0.97, 0.97, (R, N)).astype(ct)
    ot = np.empty(0, ct).real.dtype if real_output else ct
    return (A, _rand(rng, (R, N), ct), _rand(rng, (R, N), ct), _rand(rng, (R,), ot), _rand(rng, (R, L), ot),
            _rand(rng, (R, N), ct))


# (R, N, L): one lane per row (N = 1), partial segments, several rows per warp, a
# partial last warp, more states than a segment holds (state groups), L = 1, L prime.
DIAG_SHAPES = [(3, 1, 7), (5, 3, 37), (2, 64, 19), (1, 130, 5), (9, 6, 1), (33, 9, 23)]


@pytest.mark.slow
@pytest.mark.parametrize("min_chunk", [None, 3])  # None: rows only; 3: short series split in time too
@pytest.mark.parametrize("R, N, L", DIAG_SHAPES)
@pytest.mark.parametrize("ct, real_output", [(np.float32, False), (np.float64, False), (np.complex64, False),
                                             (np.complex128, False), (np.complex64, True), (np.complex128, True)])
def test_host_run_of_diag_kernels(host_cupy, rng, monkeypatch, min_chunk, R, N, L, ct, real_output):
    if min_chunk is not None:
        monkeypatch.setattr(cl, "MIN_TIME_CHUNK", min_chunk)
    A, B, C, D, u, x0 = _diag_case(rng, R, N, L, ct, real_output)
    scale = 2.0 if real_output else 1.0
    y0, xf0 = ref.diag_recurrent(A, B, C, D, u, x0, scale, real_output)
    y, xf = host_cupy.diag_recurrent(A, B, C, D, u, x0, scale, real_output)
    _close(y, y0, ct)
    _close(xf, xf0, ct)
    _close(host_cupy.diag_final_state(A, B, u, x0), ref.diag_final_state(A, B, u, x0), ct)
    W = B * C
    _close(host_cupy.diag_kernel(A, W, scale, L, real_output), ref.diag_kernel(A, W, scale, L, real_output), ct)
    # backward: every operand in the compute dtype
    gy, gf = _rand(rng, (R, L), ct), _rand(rng, (R, N), ct)
    if real_output:
        gy = gy.real.astype(ct)
    Dc, uc = D.astype(ct), u.astype(ct)
    want = ref.diag_backward(A, B, C, Dc, uc, x0, scale, gy, gf)
    got = host_cupy.diag_backward(A, B, C, Dc, uc, x0, scale, gy, gf)
    for g, w in zip(got, want):
        _close(g, w, ct)


@pytest.mark.slow
def test_host_run_of_diag_kernel_long_l_is_reanchored(host_cupy, rng):
    """Many l-chunks (1 SM still splits 2 rows) and exact re-anchoring.

    |A| = 1 keeps the powers on the unit circle, where float32 running products alone drift like sqrt(l) ulp
    (~1e-5 relative at l = 20000); anchors in double keep every value within ~64 products.
    """
    R, N, L = 2, 3, 20000
    A = np.exp(1j * rng.uniform(-np.pi, np.pi, (R, N))).astype(np.complex64)
    W = _rand(rng, (R, N), np.complex64)
    _, _chunk, nchunk = cl.plan_vandermonde(R, N, L, 1)
    assert nchunk > 1
    want = ref.diag_kernel(A.astype(np.complex128), W.astype(np.complex128), 1.0, L, False)
    got = host_cupy.diag_kernel(A, W, 1.0, L, False)
    assert got.dtype == np.complex64
    err = np.max(np.abs(got - want)) / np.abs(W).sum(1).max()
    assert err < 2e-6, err


@pytest.mark.slow
def test_host_run_of_diag_edge_sizes(host_cupy, rng):
    for R, N, L in ((0, 4, 5), (3, 4, 0), (2, 0, 4)):
        A, B, C, D, u, x0 = _diag_case(rng, R, N, L, np.complex128, True)
        y, xf = host_cupy.diag_recurrent(A, B, C, D, u, x0, 2.0, True)
        y0, xf0 = ref.diag_recurrent(A, B, C, D, u, x0, 2.0, True)
        _close(y, y0, np.complex128)
        _close(xf, xf0, np.complex128)
        gy, gf = _rand(rng, (R, L), np.complex128).real.astype(np.complex128), _rand(rng, (R, N), np.complex128)
        got = host_cupy.diag_backward(A, B, C, D.astype(A.dtype), u.astype(A.dtype), x0, 2.0, gy, gf)
        want = ref.diag_backward(A, B, C, D.astype(A.dtype), u.astype(A.dtype), x0, 2.0, gy, gf)
        for g, w in zip(got, want):
            _close(g, w, np.complex128)
        assert host_cupy.diag_kernel(A, B, 1.0, L, False).shape == (R, L)


@pytest.mark.slow
def test_host_run_of_diag_lower_precision_u(host_cupy, rng):
    """complex128 state, float32 input (the front door passes u as is): cast on the device."""
    A, B, C, D, u, x0 = _diag_case(rng, 3, 5, 11, np.complex128, False)
    u32 = u.real.astype(np.float32)
    y0, _xf0 = ref.diag_recurrent(A, B, C, D, u32, x0, 1.0, False)
    y, _xf = host_cupy.diag_recurrent(A, B, C, D, u32, x0, 1.0, False)
    _close(y, y0, np.complex128)
    _close(host_cupy.diag_final_state(A, B, u32, x0), ref.diag_final_state(A, B, u32, x0), np.complex128)


@pytest.mark.slow
@pytest.mark.parametrize("min_chunk", [None, 3])
def test_host_run_of_diag_nonfinite(host_cupy, monkeypatch, min_chunk):
    if min_chunk is not None:
        monkeypatch.setattr(cl, "MIN_TIME_CHUNK", min_chunk)
        assert cl.plan_diag_time(2, 4, 40, 1)[1] > 1  # the chunked path runs
    R, N, L = 2, 5, 40
    rng = np.random.default_rng(3)
    A, B, C, D, u, x0 = _diag_case(rng, R, N, L, np.float64, False)
    u[0, 7] = np.nan
    u[1, 11] = np.inf
    with np.errstate(all="ignore"):
        y0, xf0 = ref.diag_recurrent(A, B, C, D, u, x0, 1.0, False)
        y, xf = host_cupy.diag_recurrent(A, B, C, D, u, x0, 1.0, False)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y0))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(y0))
    np.testing.assert_array_equal(np.isnan(xf), np.isnan(xf0))


def _dense_case(rng, nb, N, M, P, L, dt, shared):
    n = 1 if shared else nb
    # spectral radius ~0.8 (a complex Gaussian entry has variance 2)
    A = _rand(rng, (n, N, N), dt) * (0.8 / (max(1, N) * (2 if np.dtype(dt).kind == "c" else 1)) ** 0.5)
    A = A.astype(dt)
    ops = (A, _rand(rng, (n, N, M), dt), _rand(rng, (nb, P, N), dt), _rand(rng, (n, P, M), dt),
           _rand(rng, (nb, M, L), dt), _rand(rng, (1, N), dt))
    cols = [np.zeros(nb) if shared else np.arange(nb), np.zeros(nb) if shared else np.arange(nb), np.arange(nb),
            np.zeros(nb) if shared else np.arange(nb), np.arange(nb), np.zeros(nb)]
    idx = np.ascontiguousarray(np.stack(cols, 1).astype(np.int64))
    return ops + (idx,)


# (nb, N, M, P, L, shared): broadcast index maps, P = 0, N = 1, L = 1, more states than a warp
DENSE_SHAPES = [(3, 4, 2, 3, 21, False), (2, 1, 1, 1, 1, True), (2, 3, 2, 0, 9, True), (1, 40, 3, 2, 6, False)]


@pytest.mark.slow
@pytest.mark.parametrize("nb, N, M, P, L, shared", DENSE_SHAPES)
@pytest.mark.parametrize("dt", [np.float32, np.float64, np.complex64, np.complex128])
def test_host_run_of_dense_kernels(host_cupy, rng, nb, N, M, P, L, shared, dt):
    A, B, C, D, u, x0, idx = _dense_case(rng, nb, N, M, P, L, dt, shared)
    y0, xf0, _, _ = ref.simulate_recurrent(A, B, C, D, u, x0, idx)
    y, xf, ck, K = host_cupy.simulate_recurrent(A, B, C, D, u, x0, idx)
    assert ck is None and K is None
    _close(y, y0, dt)
    _close(xf, xf0, dt)
    for K in (None, 1, 4):
        y0, xf0, ck0, K0 = ref.simulate_recurrent(A, B, C, D, u, x0, idx, keep_checkpoints=True, K=K)
        for fn in (host_cupy.simulate_recurrent, host_cupy.simulate_scan):
            y, xf, ck, Kg = fn(A, B, C, D, u, x0, idx, keep_checkpoints=True, K=K)
            assert Kg == K0
            _close(y, y0, dt)
            _close(ck, ck0, dt)
        gy, gf = _rand(rng, y0.shape, dt), _rand(rng, xf0.shape, dt)
        want = ref.simulate_backward(A, B, C, D, u, idx, K0, ck0, gy, gf)
        got = host_cupy.simulate_backward(A, B, C, D, u, idx, K0, ck, gy, gf)
        for g, w in zip(got, want):
            _close(g, w, dt)


@pytest.mark.slow
def test_host_run_of_dense_edge_sizes(host_cupy, rng):
    A, B, C, D, u, x0, idx = _dense_case(rng, 2, 3, 2, 2, 0, np.float64, False)
    y, xf, ck, K = host_cupy.simulate_recurrent(A, B, C, D, u, x0, idx, keep_checkpoints=True)
    assert y.shape == (2, 2, 0) and ck.shape == (2, 0, 3)
    np.testing.assert_array_equal(xf, x0[idx[:, 5]])
    gf = _rand(rng, (2, 3), np.float64)
    got = host_cupy.simulate_backward(A, B, C, D, u, idx, K, ck, np.zeros((2, 2, 0)), gf)
    np.testing.assert_array_equal(got[5], gf)
    assert all(not np.any(g) for g in got[:5])
    A, B, C, D, u, x0, idx = _dense_case(rng, 0, 3, 2, 2, 5, np.float64, False)
    y, xf, ck, K = host_cupy.simulate_recurrent(A, B, C, D, u, x0, idx, keep_checkpoints=True)
    assert y.shape == (0, 2, 5) and xf.shape == (0, 3)


def test_control_readout_on_host_arrays(monkeypatch, rng):
    import sys

    monkeypatch.setitem(sys.modules, "cupy", _FakeCupy)
    x, u = _rand(rng, (7, 3), np.float64), _rand(rng, (7, 2), np.complex128)
    C, D = _rand(rng, (4, 3), np.float64), _rand(rng, (4, 2), np.float64)
    _close(cl.control_readout(x, u, C, D), ref.control_readout(x, u, C, D), np.complex128)


# --------------------------------------------------------------------------- NVRTC compile (no GPU needed)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_lti_cu_compiles_with_nvrtc_for_every_instantiation(arch):
    """Every declared name expression compiles as CuPy would compile it on the GPU machine.

    (CuPy's own NVRTC options; skipped without cuda-bindings and nvidia-cuda-nvrtc).
    """
    pytest.importorskip("cupy")
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc")
    from cupy._core.core import assemble_cupy_compiler_options

    from ssmcore.backends.cupy._rawmodule import COMPILE_OPTIONS

    src = SOURCES["lti.cu"]
    opts = tuple(assemble_cupy_compiler_options(())) + ("--device-as-default-execution-space", f"-arch={arch}")
    opts += COMPILE_OPTIONS + src.options
    err, prog = nvrtc.nvrtcCreateProgram(src.code().encode(), b"lti.cu", 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS
    try:
        for ne in src.name_expressions:
            (err,) = nvrtc.nvrtcAddNameExpression(prog, ne.encode())
            assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, ne
        try:
            (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        except RuntimeError as exc:  # libnvrtc missing
            pytest.skip(f"NVRTC unavailable: {exc}")
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace")[-4000:]
        for ne in src.name_expressions:
            err, _ = nvrtc.nvrtcGetLoweredName(prog, ne.encode())
            assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, ne
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def test_lti_ops_declare_cupy_and_their_modes_dependencies():
    """Every LTI mode runs on CuPy kernels end to end.

    Recurrent on lti.cu's, scan on linear_scan's, convolution on fft_conv's and ssm_kernel_dense's.
    """
    from ssmcore.dispatch import capabilities

    caps = capabilities()
    for op in ("lti_simulate", "lti_simulate_diag", "dlsim", "linear_scan", "fft_conv", "ssm_kernel_dense"):
        assert "cupy" in caps[op], op
