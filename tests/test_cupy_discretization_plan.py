"""CPU tests of the CuPy diagonal discretisation: declarations and discretization.cu run on the host.

``kernels/discretization.cu`` is compiled as host C++ against a small CUDA
emulation (blocks and threads one after another -- the kernels are elementwise,
with no shared memory, shuffles or barriers -- std::complex for CuPy's complex)
and driven by ``ssmcore/backends/cupy/discretization.py``'s own launchers with
NumPy arrays standing in for CuPy's, against the NumPy reference: every method,
real and complex, batched dt, M > 1, x -> 0 and x near 2 pi i, NaN. Device-only
matters (speed, the GPU's libm) are in ``tests/test_gpu_discretization.py``.
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

from ssmcore.backends.cupy import discretization as cd
from ssmcore.backends.cupy._rawmodule import SOURCES
from ssmcore.reference import discretization as ref

METHODS = [("zoh", 0.0), ("zoh_euler", 0.0), ("foh", 0.0), ("impulse", 0.0), ("gbt", 0.5), ("gbt", 0.0),
           ("gbt", 1.0), ("gbt", 0.3)]


def test_declarations_and_signatures():
    names = SOURCES["discretization.cu"].name_expressions
    for a in ("double", "complex<double>"):
        assert f"discretize_diag_bwd<{a}>" in names
        for b in ("double", "complex<double>"):
            assert f"discretize_diag_fwd<{a}, {b}>" in names
    assert set(cd.PROVIDES) <= set(ref.__all__)
    for fn in cd.PROVIDES:
        got = list(inspect.signature(getattr(cd, fn)).parameters)
        assert got == list(inspect.signature(getattr(ref, fn)).parameters)


def test_constants_match_the_cuda_source():
    src = SOURCES["discretization.cu"].code()
    from ssmcore.backends.numba.discretization import _PADE, _THETA

    for row in _PADE:
        assert ", ".join(repr(float(x)) for x in row) in src.replace("\n         ", " ")
    assert ", ".join(repr(t) for t in _THETA) in src.replace("\n                         ", " ")
    for name, code in ref.METHOD_CODES.items():
        assert re.search(rf"#define SSM_{name.upper()} {code}\b", src), name
    assert re.search(rf"#define SSM_PHI_SERIES_RADIUS {ref.PHI_SERIES_RADIUS!r}\b", src)
    assert re.search(rf"#define SSM_PHI3_TERMS {len(ref.PHI3_TAYLOR)}\b", src)
    body = src[src.index("const double c[SSM_PHI3_TERMS]"):]
    body = body[body.index("{") + 1:body.index("}")]
    assert tuple(float(v) for v in body.replace("\n", " ").split(",")) == ref.PHI3_TAYLOR
    for bound in re.findall(r"__launch_bounds__\((\d+)\)", src):
        assert int(bound) == cd.THREADS


def test_grid():
    assert cd.grid(0) == 0 and cd.grid(1) == 1 and cd.grid(cd.THREADS) == 1 and cd.grid(cd.THREADS + 1) == 2
    with pytest.raises(ValueError, match="grid"):
        cd.grid(-1)


# --------------------------------------------------------------------------- discretization.cu on the host

_EMU_COMPLEX = """
#pragma once
#include <complex>
template <class T> using complex = std::complex<T>;
"""

_EMU_HEADER = r"""
#include <cmath>
#include <functional>
#include <mutex>
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
inline Dim3 threadIdx, blockIdx, blockDim, gridDim;
// common.cuh's warp helpers compile but are never called here (elementwise kernels):
// blocks and threads run one after another.
template <class V> inline V __shfl_sync(unsigned, V v, int) { throw 0; return v; }
template <class V> inline V __shfl_up_sync(unsigned, V v, unsigned) { throw 0; return v; }
template <class V> inline V __shfl_down_sync(unsigned, V v, unsigned) { throw 0; return v; }
template <class V> inline V __shfl_xor_sync(unsigned, V v, int) { throw 0; return v; }
inline void launch(unsigned gx, unsigned block, const std::function<void()>& body) {
    blockDim.x = block; gridDim.x = gx;
    for (unsigned bx = 0; bx < gx; ++bx) for (unsigned t = 0; t < block; ++t) {
        blockIdx.x = bx; threadIdx.x = t; body();
    }
}
#include "discretization.cu"
#pragma GCC visibility pop
typedef long long ll;
typedef const void* cv;
typedef void* vp;
#define FWD(TA, TB, tag) \
extern "C" void fwd_##tag(unsigned gx, unsigned block, cv A, cv dt, cv B, vp Ad, vp Bd, int method, double alpha, \
        ll RN, ll M) { \
    launch(gx, block, [=] { discretize_diag_fwd<TA, TB>((const TA*)A, (const double*)dt, (const TB*)B, (TA*)Ad, \
        (ssm_disc::promote<TA, TB>::type*)Bd, method, alpha, RN, M); }); }
#define BWD(T, tag) \
extern "C" void bwd_##tag(unsigned gx, unsigned block, cv A, cv dt, cv B, cv gAd, cv gBd, vp gA, vp gdt, vp gB, \
        int method, double alpha, ll RN, ll M) { \
    launch(gx, block, [=] { discretize_diag_bwd<T>((const T*)A, (const double*)dt, (const T*)B, (const T*)gAd, \
        (const T*)gBd, (T*)gA, (T*)gdt, (T*)gB, method, alpha, RN, M); }); }
FWD(double, double, f64_f64)
FWD(double, complex<double>, f64_c128)
FWD(complex<double>, double, c128_f64)
FWD(complex<double>, complex<double>, c128_c128)
BWD(double, f64)
BWD(complex<double>, c128)
#define EXPM(T, tag) \
extern "C" void batched_##tag(unsigned gx, unsigned block, cv Z, vp out, vp work, ll K, ll n) { \
    launch(gx, block, [=] { expm_batched<T>((const T*)Z, (T*)out, (T*)work, K, n); }); }
EXPM(double, f64)
EXPM(complex<double>, c128)
"""

_TAGS = {"double": "f64", "complex<double>": "c128"}


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("needs g++ to run discretization.cu on the host")
    d = tmp_path_factory.mktemp("disc_emu")
    (d / "cupy").mkdir()
    (d / "cupy" / "complex.cuh").write_text(_EMU_COMPLEX)
    (d / "emu.cpp").write_text(_EMU_HEADER)
    lib = d / "libdisc_emu.so"
    cmd = [cxx, "-std=c++17", "-O1", "-ffp-contract=off", "-shared", "-fPIC", f"-I{d}",
           f"-I{SOURCES['discretization.cu'].path.parent}", "-o", str(lib), str(d / "emu.cpp")]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise AssertionError(f"discretization.cu does not compile as host C++:\n{res.stderr[-4000:]}")
    return ctypes.CDLL(str(lib))


class _FakeCupy:
    empty, empty_like, asarray, ascontiguousarray = np.empty, np.empty_like, np.asarray, np.ascontiguousarray


def _argument(x):
    if isinstance(x, np.ndarray):
        assert x.flags.c_contiguous, "a non-contiguous array reached the kernel"  # (chunk slices are contiguous)
        return ctypes.c_void_p(x.ctypes.data)
    if isinstance(x, np.int64):
        return ctypes.c_longlong(int(x))
    if isinstance(x, np.int32):
        return ctypes.c_int(int(x))
    if isinstance(x, np.float64):
        return ctypes.c_double(float(x))
    raise TypeError(f"unexpected kernel argument {type(x).__name__}")


@pytest.fixture
def host(emulated, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _FakeCupy)

    def get(name):
        kernel, targs = name[:-1].split("<", 1)
        parts = [p.strip() for p in re.split(r",\s*(?![^<]*>)", targs)]
        fn = getattr(emulated, f"{kernel.split('_')[-1]}_{'_'.join(_TAGS[p] for p in parts)}")

        def call(grid, block, args):
            fn(ctypes.c_uint(grid[0]), ctypes.c_uint(block[0]), *(_argument(a) for a in args))

        return call

    monkeypatch.setattr(cd.DISC, "get", get)
    return cd


def _case(rng, R, N, M, a_complex, b_complex, scale=1.0):
    A = -rng.uniform(0.1, 2.0, (R, N)) * scale
    if a_complex:
        A = A + 1j * rng.uniform(-4, 4, (R, N)) * scale
    dt = rng.uniform(0.01, 1.5, (R, N))
    B = rng.standard_normal((R, N, M))
    if b_complex:
        B = B + 1j * rng.standard_normal((R, N, M))
    return A, dt, B


def _close(got, want, rtol=1e-12, atol=1e-13):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("method, alpha", METHODS)
@pytest.mark.parametrize("a_complex, b_complex", [(False, False), (True, True), (False, True), (True, False)])
def test_forward_matches_the_reference(host, method, alpha, a_complex, b_complex):
    rng = np.random.default_rng(1)
    A, dt, B = _case(rng, 5, 7, 3, a_complex, b_complex)
    A[0, :3] = [1e-9, 1e-3, 0.0]  # x -> 0: the series branch; also x exactly 0
    code = ref.METHOD_CODES[method]
    Ad, Bd = cd.discretize_diag_fwd(A, dt, B, code, alpha)
    wAd, wBd = ref.discretize_diag_fwd(A, dt, B, code, alpha)
    assert Ad.dtype == (np.complex128 if a_complex else np.float64)
    assert Bd.dtype == (np.complex128 if (a_complex or b_complex) else np.float64)
    _close(Ad, wAd)
    _close(Bd, wBd)


@pytest.mark.parametrize("method, alpha", METHODS)
@pytest.mark.parametrize("cplx", [False, True])
def test_backward_matches_the_reference(host, method, alpha, cplx):
    rng = np.random.default_rng(2)
    A, dt, B = _case(rng, 4, 6, 2, cplx, cplx)
    A[1, :2] = [2e-8, -0.4]
    gAd = rng.standard_normal(A.shape) + (1j * rng.standard_normal(A.shape) if cplx else 0)
    gBd = rng.standard_normal(B.shape) + (1j * rng.standard_normal(B.shape) if cplx else 0)
    code = ref.METHOD_CODES[method]
    got = cd.discretize_diag_bwd(A, dt, B, code, alpha, gAd, gBd)
    want = ref.discretize_diag_bwd(A, dt, B, code, alpha, gAd, gBd)
    for g, w in zip(got, want):
        _close(g, w, rtol=1e-11, atol=1e-12)


def test_mixed_operands_promote_in_the_backward(host):
    rng = np.random.default_rng(3)
    A, dt, B = _case(rng, 3, 4, 1, False, True)
    gAd = rng.standard_normal(A.shape)
    gBd = rng.standard_normal(B.shape) + 1j * rng.standard_normal(B.shape)
    got = cd.discretize_diag_bwd(A, dt, B, 0, 0.0, gAd, gBd)
    want = ref.discretize_diag_bwd(A, dt, B, 0, 0.0, gAd, gBd)
    for g, w in zip(got, want):
        assert g.dtype == np.complex128
        _close(g, w, rtol=1e-11, atol=1e-12)


def test_phi_functions_near_zero_and_near_two_pi_i(host):
    """X -> 0 (series) and x = 2 pi i + small (accurate complex expm1), as the reference."""
    x = np.array([[1e-12, -1e-7, 0.999, 1.001, 2j * np.pi + 1e-9, 2j * np.pi * 3 - 1e-6, 1e-3 + 1e-3j, 30.0]])
    dt = np.ones(x.shape)
    B = np.ones(x.shape + (1,), complex)
    for method in ("zoh", "foh"):
        code = ref.METHOD_CODES[method]
        Ad, Bd = cd.discretize_diag_fwd(x.astype(complex), dt, B, code, 0.0)
        wAd, wBd = ref.discretize_diag_fwd(x.astype(complex), dt, B, code, 0.0)
        _close(Ad, wAd, rtol=1e-14, atol=0)
        # foh's beta = phi1 - phi2 + e phi2 cancels to ~1e-17 at 2 pi i: both sides round there
        _close(Bd, wBd, rtol=1e-12 if method == "zoh" else 1e-9, atol=0)
        gA, gdt, gB = cd.discretize_diag_bwd(x.astype(complex), dt, B, code, 0.0, np.ones(x.shape, complex), B)
        want = ref.discretize_diag_bwd(x.astype(complex), dt, B, code, 0.0, np.ones(x.shape, complex), B)
        _close(gA, want[0], rtol=1e-10, atol=0)


def test_nan_and_inf_propagate_as_in_the_reference(host):
    A = np.array([[np.nan, -np.inf, -1.0, 0.0]])
    dt = np.array([[1.0, 1.0, np.nan, 1.0]])
    B = np.ones((1, 4, 1))
    for method, alpha in METHODS:
        code = ref.METHOD_CODES[method]
        with np.errstate(all="ignore"):
            want = ref.discretize_diag_fwd(A, dt, B, code, alpha)
        got = cd.discretize_diag_fwd(A, dt, B, code, alpha)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=method)


def test_empty_and_m_zero(host):
    Ad, Bd = cd.discretize_diag_fwd(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3, 1)), 0, 0.0)
    assert Ad.shape == (0, 3) and Bd.shape == (0, 3, 1)
    A, dt, B = _case(np.random.default_rng(4), 2, 3, 0, True, False)
    Ad, Bd = cd.discretize_diag_fwd(A, dt, B, 0, 0.0)
    _close(Ad, np.exp(A * dt))
    assert Bd.shape == (2, 3, 0)
    gA, gdt, gB = cd.discretize_diag_bwd(A, dt, B, 0, 0.0, np.ones(A.shape), np.zeros((2, 3, 0)))
    want = ref.discretize_diag_bwd(A, dt, B, 0, 0.0, np.ones(A.shape), np.zeros((2, 3, 0)))
    _close(gA, want[0])
    _close(gdt, want[1])


# --------------------------------------------------------------------------- batched expm


def test_expm_chunk():
    assert cd.expm_chunk(10, 4) == 10
    assert cd.expm_chunk(10 ** 9, 4) == cd.EXPM_WORK_ELEMENTS // 128
    assert cd.expm_chunk(0, 3) == 1
    with pytest.raises(ValueError, match="expm_chunk"):
        cd.expm_chunk(-1, 2)


@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_expm_on_the_host_matches_scipy_at_every_pade_degree(host, cplx, n):
    """Norms from 1e-3 to 50 reach every Pade degree (3 .. 13) and the squaring."""
    rng = np.random.default_rng(5)
    Z = rng.standard_normal((12, n, n)) + (1j * rng.standard_normal((12, n, n)) if cplx else 0)
    norms = np.abs(Z).sum(axis=-2).max(axis=-1)
    Z = Z * (np.geomspace(1e-3, 50, 12) / norms)[:, None, None]
    got = cd.expm(Z.reshape(3, 4, n, n))
    assert got.shape == (3, 4, n, n) and got.dtype == Z.dtype
    np.testing.assert_allclose(got.reshape(12, n, n), ref.expm(Z), rtol=1e-11, atol=1e-12)


def test_expm_chunks_nan_and_empty(host, monkeypatch):
    monkeypatch.setattr(cd, "EXPM_WORK_ELEMENTS", 8 * 9 * 2)  # two 3x3 matrices per launch
    rng = np.random.default_rng(6)
    Z = rng.standard_normal((5, 3, 3))
    Z[3, 1, 1] = np.nan
    got = cd.expm(Z)
    assert np.isnan(got[3]).all()
    keep = [0, 1, 2, 4]
    np.testing.assert_allclose(got[keep], ref.expm(Z[keep]), rtol=1e-11, atol=1e-12)
    assert cd.expm(np.zeros((0, 2, 2))).shape == (0, 2, 2)


def test_discretize_front_door_through_the_host_expm(host, monkeypatch):
    """Discretize (forward, Frechet-adjoint backward) and cont2discrete with the CuPy expm in Numba's place."""
    import ssmcore
    from ssmcore.backends.numba import discretization as nbd

    rng = np.random.default_rng(7)
    A, B = rng.standard_normal((6, 3, 3)) * 0.5, rng.standard_normal((6, 3, 2))
    wants = {m: ssmcore.discretize(A, B, 0.1, m) for m in ("zoh", "foh", "impulse")}
    cts = tuple(rng.standard_normal(w.shape) for w in wants["zoh"])
    want_g = ssmcore.vjp("discretize", A, B, 0.1, "zoh")[1](cts)
    want_c = ssmcore.cont2discrete((A[0], B[0], np.ones((1, 3)), np.zeros((1, 2))), 0.1, "foh")
    calls = []

    def spy(Z):
        calls.append(Z.shape)
        return cd.expm(Z)

    monkeypatch.setattr(nbd, "expm", spy)
    for m, want in wants.items():
        for g, w in zip(ssmcore.discretize(A, B, 0.1, m), want):
            np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-12)
    for g, w in zip(ssmcore.vjp("discretize", A, B, 0.1, "zoh")[1](cts), want_g):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-11)
    for g, w in zip(ssmcore.cont2discrete((A[0], B[0], np.ones((1, 3)), np.zeros((1, 2))), 0.1, "foh"), want_c):
        np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-12)
    assert calls
