"""CPU tests of the CuPy lfilter kernels: the planner, and ``lfilter.cu`` run on the host.

No GPU is needed: the kernels are compiled as host C++ against the CUDA emulation of
``tests/cuda_emulation.py`` (blocks of 32 threads instead of 128, so that a test spawns
few threads) and driven through ``backends/cupy/lfilter.py``'s own launchers with NumPy
standing in for CuPy, then checked against the NumPy reference and scipy.signal.lfilter:
FIR and IIR, every register bucket and the generic kernel, shared and per-channel
coefficient rows, partial tiles and blocks, L = 0 and 1, NaN and inf. The emulation is
compiled without FMA contraction, as the kernels are on the GPU (``--fmad=false``), so
real results are compared bit for bit. GPU runs are in ``tests/test_gpu_lfilter.py``.
"""

from __future__ import annotations

import re
import sys
import types

import cuda_emulation
import numpy as np
import pytest
import scipy.signal as sps

from ssmcore.backends.cupy import lfilter as clf
from ssmcore.backends.cupy._rawmodule import SOURCES
from ssmcore.reference import lfilter as ref

# --------------------------------------------------------------------------- planner (no compiler needed)


def test_plan_buckets_and_blocks():
    for K, kcap in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 8), (9, 16), (16, 16)):
        p = clf.plan_lfilter(300, K, np.float32)
        assert (p.blocks, p.threads, p.kcap) == (3, clf.THREADS, kcap)
        assert p.kernel == f"lfilter_fwd_reg<float, {kcap}>"
    for K in (17, 32, 1000):
        assert clf.plan_lfilter(300, K, np.float32).kernel == "lfilter_fwd_gen<float>"
    p = clf.plan_lfilter(1, 33, np.complex128, backward=True)
    assert (p.blocks, p.kcap, p.kernel) == (1, None, "lfilter_bwd_gen<complex<double>>")
    assert clf.plan_lfilter(0, 3, np.float64).blocks == 0
    assert clf.plan_lfilter(129, 3, np.float64).blocks == 2
    assert clf.plan_lfilter(65, 3, np.float64, threads=32).blocks == 3
    every = {clf.plan_lfilter(5, K, dt, backward=bw).kernel for K in range(1, 40)
             for dt in (np.float32, np.float64, np.complex64, np.complex128) for bw in (False, True)}
    assert every == set(SOURCES["lfilter.cu"].name_expressions)  # every declared instantiation is reachable


def test_plan_refuses():
    with pytest.raises(TypeError, match="no CUDA instantiation"):
        clf.plan_lfilter(4, 3, np.float16)
    with pytest.raises(ValueError, match="K >= 1"):
        clf.plan_lfilter(4, 0, np.float32)


def test_tiles_fit_static_shared_memory():
    for itemsize in (4, 8, 16):
        for bw, tiles in ((False, 1), (True, 3)):
            steps = clf.tile_steps(itemsize, bw)
            assert steps >= 4 and steps & (steps - 1) == 0
            assert tiles * clf.THREADS * (steps + 1) * itemsize <= 48 * 1024


def test_constants_match_the_kernel_source():
    src = SOURCES["lfilter.cu"]
    code = src.code()

    def macro(name):
        m = re.search(rf"^#define {name} (\d+)$", code, re.MULTILINE)
        assert m, name
        return int(m.group(1))

    assert macro("SSM_LF_THREADS") == clf.THREADS
    assert macro("SSM_LF_FWD_ROW_BYTES") == clf.FWD_ROW_BYTES
    assert macro("SSM_LF_BWD_ROW_BYTES") == clf.BWD_ROW_BYTES
    assert "--fmad=false" in src.options
    assert src._module is None  # declared, not compiled


# --------------------------------------------------------------------------- kernels on the host

_TAGS = {"float": "f32", "double": "f64", "complex<float>": "c64", "complex<double>": "c128"}

_BINDINGS = r"""
#define LF_REG(T, A, tag, KC) \
extern "C" void lfilter_fwd_reg_##tag##_##KC(unsigned g, unsigned bl, cv b, cv brow, cv a, cv arow, cv x, cv zi, \
        void* y, void* zf, ll C, ll L, int K, int Ka) { \
    launch(g, bl, [=] { lfilter_fwd_reg<T, KC>((const T*)b, (const ll*)brow, (const T*)a, (const ll*)arow, \
        (const T*)x, (const T*)zi, (T*)y, (T*)zf, C, L, K, Ka); }); } \
extern "C" void lfilter_bwd_reg_##tag##_##KC(unsigned g, unsigned bl, cv b, cv brow, cv a, cv arow, cv x, cv y, \
        cv gy, cv gzf, void* gx, void* gb, void* ga, void* gzi, ll C, ll L, int K, int Ka, int need) { \
    launch(g, bl, [=] { lfilter_bwd_reg<T, KC>((const T*)b, (const ll*)brow, (const T*)a, (const ll*)arow, \
        (const T*)x, (const T*)y, (const T*)gy, (const T*)gzf, (T*)gx, (A*)gb, (A*)ga, (T*)gzi, C, L, K, Ka, \
        need); }); }
#define LF_INST(T, A, tag) \
LF_REG(T, A, tag, 2) LF_REG(T, A, tag, 4) LF_REG(T, A, tag, 8) LF_REG(T, A, tag, 16) \
extern "C" void lfilter_fwd_gen_##tag(unsigned g, unsigned bl, cv bt, cv at, cv x, cv zi, void* ws, void* y, \
        void* zf, ll C, ll L, int K, int Ka) { \
    launch(g, bl, [=] { lfilter_fwd_gen<T>((const T*)bt, (const T*)at, (const T*)x, (const T*)zi, (T*)ws, \
        (T*)y, (T*)zf, C, L, K, Ka); }); } \
extern "C" void lfilter_bwd_gen_##tag(unsigned g, unsigned bl, cv bt, cv at, cv x, cv y, cv gy, cv gzf, void* ws, \
        void* wsb, void* wsa, void* gx, void* gb, void* ga, void* gzi, ll C, ll L, int K, int Ka, int need) { \
    launch(g, bl, [=] { lfilter_bwd_gen<T>((const T*)bt, (const T*)at, (const T*)x, (const T*)y, (const T*)gy, \
        (const T*)gzf, (T*)ws, (A*)wsb, (A*)wsa, (T*)gx, (A*)gb, (A*)ga, (T*)gzi, C, L, K, Ka, need); }); }
LF_INST(float, double, f32)
LF_INST(double, double, f64)
LF_INST(complex<float>, complex<double>, c64)
LF_INST(complex<double>, complex<double>, c128)
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    d = tmp_path_factory.mktemp("lf_emu")
    return cuda_emulation.build(d, SOURCES["lfilter.cu"].path.parent, "lfilter.cu", _BINDINGS, "lf_emu",
                                defines=("SSM_LF_THREADS=32",))


@pytest.fixture
def host(lib, monkeypatch):
    fake = types.ModuleType("cupy")
    for n in ("empty", "ascontiguousarray", "int64"):
        setattr(fake, n, getattr(np, n))
    monkeypatch.setitem(sys.modules, "cupy", fake)

    def get(name):
        kernel, rest = name[:-1].split("<", 1)
        parts = [s.strip() for s in rest.split(",")] if not rest.startswith("complex") else None
        if parts is None:  # complex<R>[, KC]
            t, _, kc = rest.partition(">")
            t, kc = t + ">", kc.strip(", ")
        else:
            t, kc = parts[0], (parts[1] if len(parts) > 1 else "")
        sym = f"{kernel}_{_TAGS[t]}" + (f"_{kc}" if kc else "")
        return cuda_emulation.caller(getattr(lib, sym), name)

    monkeypatch.setattr(clf.LFILTER, "get", get)
    monkeypatch.setattr(clf, "THREADS", 32)
    return clf


def _case(rng, dt, K, C, L, *, fir=False, shared=True, stable=True):
    """Normalised, padded rows as the front door passes them, plus inputs and cotangents."""
    cplx = np.dtype(dt).kind == "c"

    def r(*s):
        v = rng.standard_normal(s)
        return (v + 1j * rng.standard_normal(s) if cplx else v).astype(dt)

    R = 1 if shared else C
    b = r(R, K)
    if fir:
        a = np.ones((R, 1), dt)
    else:
        # Small feedback terms keep the filters stable (bounded outputs for the comparisons).
        a = r(R, K) * (0.5 / K if stable else 1.0)
        a[:, 0] = 1
    rows = np.zeros(C, np.int64) if shared else np.arange(C, dtype=np.int64)
    return b, rows, a, rows.copy(), r(C, L), r(C, K - 1), r(C, L), r(C, K - 1)


def _scipy(b, brow, a, arow, x, zi):
    y = np.empty_like(x)
    zf = np.empty_like(zi)
    for c in range(x.shape[0]):
        y[c], zf[c] = sps.lfilter(b[brow[c]], a[arow[c]], x[c], zi=zi[c])
    return y, zf


def _same(got, want, dt, exact=True):
    assert got.dtype == want.dtype and got.shape == want.shape
    if np.dtype(dt).kind == "f" and exact:
        np.testing.assert_array_equal(got, want)  # no FMA contraction: bit-identical
    else:
        tol = 1e-5 if np.dtype(dt) in (np.float32, np.complex64) else 1e-13
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max(initial=0))))


_DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
_KS = [1, 2, 3, 5, 9, 16, 17, 33]  # every bucket (2, 4, 8, 16) and the generic kernel


@pytest.mark.parametrize("dt", _DTYPES)
@pytest.mark.parametrize("K", _KS)
@pytest.mark.parametrize("fir", [False, True])
def test_forward_matches_reference_and_scipy(host, dt, K, fir):
    rng = np.random.default_rng(K)
    # C = 37: a partial second block of 32; L = 70: partial last tile for every tile length
    for shared in (True, False):
        b, brow, a, arow, x, zi, _, _ = _case(rng, dt, K, 37, 70, fir=fir, shared=shared)
        y, zf = host.lfilter_fwd(b, brow, a, arow, x, zi)
        y0, zf0 = ref.lfilter_fwd(b, brow, a, arow, x, zi)
        _same(y, y0, dt)
        _same(zf, zf0, dt)
        if K > 1:
            # scipy's FIR path is a convolution plus zi (another summation order): close, not equal
            ys, zfs = _scipy(b, brow, a, arow, x, zi)
            _same(y, ys, dt, exact=not fir)
            _same(zf, zfs, dt, exact=not fir)


@pytest.mark.parametrize("dt", _DTYPES)
@pytest.mark.parametrize("K", _KS)
@pytest.mark.parametrize("fir", [False, True])
def test_backward_matches_reference(host, dt, K, fir):
    rng = np.random.default_rng(100 + K)
    for shared in (True, False):
        b, brow, a, arow, x, zi, gy, gzf = _case(rng, dt, K, 37, 45, fir=fir, shared=shared)
        y, _ = ref.lfilter_fwd(b, brow, a, arow, x, zi)
        got = host.lfilter_bwd(b, brow, a, arow, x, y, gy, gzf, True)
        want = ref.lfilter_bwd(b, brow, a, arow, x, y, gy, gzf, True)
        for g, w in zip(got, want):
            _same(g, w, dt)
        assert got[1].dtype == np.result_type(dt, np.float64)
        gx, gb, ga, gzi = host.lfilter_bwd(b, brow, a, arow, x, y, gy, gzf, False)
        assert gb is None and ga is None
        _same(gx, want[0], dt)
        _same(gzi, want[3], dt)


@pytest.mark.parametrize("K", [3, 20])
@pytest.mark.parametrize("L", [0, 1])
def test_empty_and_single_step(host, K, L):
    rng = np.random.default_rng(7)
    for fir in (False, True):
        b, brow, a, arow, x, zi, gy, gzf = _case(rng, np.float64, K, 5, L, fir=fir, shared=False)
        y, zf = host.lfilter_fwd(b, brow, a, arow, x, zi)
        y0, zf0 = ref.lfilter_fwd(b, brow, a, arow, x, zi)
        _same(y, y0, np.float64)
        _same(zf, zf0, np.float64)
        got = host.lfilter_bwd(b, brow, a, arow, x, y0, gy, gzf, True)
        want = ref.lfilter_bwd(b, brow, a, arow, x, y0, gy, gzf, True)
        for g, w in zip(got, want):
            _same(g, w, np.float64)
    y, zf = host.lfilter_fwd(b, brow, a, arow, np.zeros((0, 4)), np.zeros((0, K - 1)))
    assert y.shape == (0, 4) and zf.shape == (0, K - 1)


@pytest.mark.parametrize("K", [2, 4, 20])
@pytest.mark.parametrize("fir", [False, True])
def test_nonfinite_propagate_as_scipy(host, K, fir):
    rng = np.random.default_rng(11)
    b, brow, a, arow, x, zi, gy, gzf = _case(rng, np.float64, K, 6, 40, fir=fir, shared=True)
    x[0, 5] = np.inf
    x[1, 9] = np.nan
    x[2, 0] = -np.inf
    zi[3, 0] = np.inf
    y, zf = host.lfilter_fwd(b, brow, a, arow, x, zi)
    with np.errstate(invalid="ignore", over="ignore"):
        y0, zf0 = ref.lfilter_fwd(b, brow, a, arow, x, zi)
        ys, zfs = _scipy(b, brow, a, arow, x, zi)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(zf, zf0)
    for g, w in ((y, ys), (zf, zfs)):  # NaN where scipy has NaN, inf where it has inf
        assert np.array_equal(np.isnan(g), np.isnan(w)) and np.array_equal(np.isinf(g), np.isinf(w))
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    gy[4, 7] = np.nan
    gy[5, 30] = np.inf
    got = host.lfilter_bwd(b, brow, a, arow, x, y0, gy, gzf, True)
    with np.errstate(invalid="ignore", over="ignore"):
        want = ref.lfilter_bwd(b, brow, a, arow, x, y0, gy, gzf, True)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_host_coefficients_are_checked_on_the_host():
    """CuPy calls with a as a list or NumPy array check a[0] == 0 without a device round trip."""
    from ssmcore._lfilter import _host_a0_zero

    assert _host_a0_zero([0.0, 1.0], np.float64)
    assert not _host_a0_zero(np.array([[1.0, 0.5], [2.0, 0.0]]), np.float32)
    assert _host_a0_zero([1e-50, 1.0], np.float32)  # zero in the compute dtype, as the device check sees it
