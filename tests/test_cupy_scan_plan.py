"""CPU tests of the CuPy scan's host side: the planner and a NumPy model of the kernels.

No GPU is needed: :func:`plan_scan` is plain Python, and
``_chunked_model_fwd``/``_chunked_model_bwd`` replay the kernels' exact
decomposition (chunks, 32 lanes x 4 steps tiles, Kogge-Stone warp scan,
``scan_carry``'s rounds, the constant-a ``ga`` reduction order) in NumPy. They
are checked against the sequential reference. Last, ``scan.cu`` itself is
compiled as host C++ against a small emulation of the CUDA features it uses and
run through scan.py's launchers (needs g++ with C++20); the GPU tests then
check the real kernels against the reference and Numba.
"""

from __future__ import annotations

import re

import cuda_emulation
import numpy as np
import pytest

from ssmcore.backends.cupy import scan as cs
from ssmcore.backends.cupy._rawmodule import SOURCES
from ssmcore.reference import scan as ref

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
TOL = {np.float32: 2e-5, np.float64: 1e-12, np.complex64: 2e-5, np.complex128: 1e-12}


# --------------------------------------------------------------------------- planner


def test_many_channels_one_warp_each():
    p = cs.plan_scan(8 * 4096, 4096, 4, 132)
    assert p.path == "channels" and p.nchunk == 1 and p.chunk == 4096
    assert p.blocks * p.threads // cs.LANES >= 8 * 4096


@pytest.mark.parametrize("C, L", [(64, 1 << 20), (1, 1 << 24), (3, 1 << 18)])
def test_few_long_series_are_chunked(C, L):
    sm = 132
    p = cs.plan_scan(C, L, 4, sm)
    assert p.path == "chunked"
    assert p.chunk % cs.TILE == 0 and p.chunk * 4 >= cs.MIN_CHUNK_BYTES
    assert (p.nchunk - 1) * p.chunk < L <= p.nchunk * p.chunk  # chunks cover L, none empty
    min_steps = cs.MIN_CHUNK_BYTES // 4
    # enough warps to fill the GPU, unless the minimum chunk length caps them
    assert C * p.nchunk >= 0.9 * min(sm * cs.WARPS_PER_SM, C * L // min_steps)
    assert C * p.nchunk <= sm * cs.WARPS_PER_SM  # one wave (no partial second one); workspace O(C x chunks)
    assert p.blocks * p.threads // cs.LANES >= C * p.nchunk


@pytest.mark.parametrize("warps", [8, 24, 64])
def test_chunked_plan_fills_one_wave_of_resident_warps(warps):
    for C, L in ((64, 1 << 20), (1, 1 << 24), (7, 1 << 22)):
        p = cs.plan_scan(C, L, 4, 132, warps_per_sm=warps)
        assert p.path == "chunked"
        assert 0.9 * 132 * warps <= C * p.nchunk <= 132 * warps


def test_resident_warps_from_registers():
    assert cs.resident_warps(68) == 24  # 2304 registers per warp: 3 blocks of 8 warps
    assert cs.resident_warps(202) == 8
    assert cs.resident_warps(32) == 64  # limited by 2048 threads per SM
    assert cs.resident_warps(32, max_threads_per_sm=1536) == 48
    assert cs.resident_warps(255, threads=1024) == 32  # at least one block


def test_short_series_stay_one_chunk():
    assert cs.plan_scan(4, 1000, 4, 132).path == "channels"
    assert cs.plan_scan(1, 1, 8, 132) == cs.ScanPlan("channels", 1, 1, 1, cs.THREADS)


def test_forced_paths_and_chunk():
    p = cs.plan_scan(2, 1000, 8, 132, path="chunked")
    assert p.path == "chunked" and p.nchunk > 1 and p.chunk % cs.TILE == 0
    assert cs.plan_scan(2, 1 << 20, 4, 132, path="channels").nchunk == 1
    p = cs.plan_scan(5, 1031, 4, 132, chunk=200)
    assert (p.path, p.chunk, p.nchunk) == ("chunked", 256, 5)


def test_empty_shapes_plan():
    assert cs.plan_scan(0, 100, 4, 132).blocks == 0
    assert cs.plan_scan(3, 0, 4, 132).path == "channels"
    assert cs.plan_scan(0, 0, 4, 132, path="chunked").blocks == 0


def test_bad_path_and_sizes_raise():
    with pytest.raises(ValueError, match="linear_scan: unknown path 'serial'"):
        cs.plan_scan(1, 10, 4, 1, path="serial")
    with pytest.raises(ValueError, match="plan_scan"):
        cs.plan_scan(-1, 10, 4, 1)
    with pytest.raises(ValueError, match="chunk must be positive"):
        cs.plan_scan(1, 10, 4, 1, chunk=0)


def test_source_declared_for_every_dtype_without_compiling():
    src = SOURCES["scan.cu"]
    assert src._module is None  # nothing compiled at import
    for k in cs._KERNELS:
        for t in ("float", "double", "complex<float>", "complex<double>"):
            assert f"{k}<{t}>" in src.name_expressions
    assert any(o.startswith("-I") and o.endswith("kernels") for o in src.options)
    assert '#include "common.cuh"' in src.code()


def test_launch_constants_match_the_kernel_source():
    """Block sizes are launch bounds in scan.cu: the launcher must use the same numbers."""
    code = SOURCES["scan.cu"].code()

    def macro(name):
        m = re.search(rf"^#define {name} (\d+)$", code, re.MULTILINE)
        assert m, name
        return int(m.group(1))

    assert macro("SSM_LANES") == cs.LANES and macro("SSM_STEPS") == cs.STEPS
    assert macro("SSM_THREADS") == cs.THREADS
    assert macro("SSM_CARRY_THREADS") == cs.CARRY_THREADS
    assert macro("SSM_CARRY_PER_THREAD") == cs.CARRY_PER_THREAD
    assert macro("SSM_GA_SUM_THREADS") == cs.GA_SUM_THREADS
    assert cs.GA_SUM_THREADS & (cs.GA_SUM_THREADS - 1) == 0 and cs.CARRY_THREADS % cs.LANES == 0


# --------------------------------------------------------------------------- NumPy model vs reference


def _rand(rng, shape, dtype, scale=1.0):
    x = rng.standard_normal(shape) * scale
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape) * scale
    return x.astype(dtype)


def _case(rng, C, L, dtype, La, Ra=None, zero_h0=False):
    Ra = C if Ra is None else Ra
    a = (0.9 * np.exp(1j * _rand(rng, (Ra, La), np.float64, 0.3)) if np.dtype(dtype).kind == "c"
         else rng.uniform(-1.0, 1.0, (Ra, La))).astype(dtype)
    arow = (np.arange(C) % Ra).astype(np.intp)
    b = _rand(rng, (C, L), dtype)
    h0 = np.zeros(C, dtype) if zero_h0 else _rand(rng, (C,), dtype)
    return a, arow, b, h0


def _close(x, y, dtype):
    tol = TOL[dtype]
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol * max(1.0, float(np.max(np.abs(y), initial=0.0))))


MODEL_CASES = [
    # (C, L, La, Ra, path, chunk, carry_threads)
    (3, 1, "L", None, "channels", None, cs.CARRY_THREADS),
    (3, 1, 1, None, "chunked", None, cs.CARRY_THREADS),
    (2, 5, "L", 1, "channels", None, cs.CARRY_THREADS),
    (4, 127, "L", None, "channels", None, cs.CARRY_THREADS),
    (4, 131, 1, 2, "channels", None, cs.CARRY_THREADS),  # L prime, partial last tile
    (3, 131, "L", None, "chunked", 128, 32),  # chunk length not dividing L
    (2, 1031, 1, None, "chunked", 256, 64),  # L prime, constant a
    (5, 1031, "L", 2, "chunked", 384, 32),  # shared rows
    (1, 128 * 131 + 7, "L", None, "chunked", 128, 32),  # 132 chunks: two carry rounds of 128
    (2, 128 * 131 + 7, 1, None, "chunked", 128, 64),  # 132 chunks over two warps of one round, constant a
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("C, L, La, Ra, path, chunk, threads", MODEL_CASES)
def test_model_forward_matches_reference(rng, dtype, reverse, C, L, La, Ra, path, chunk, threads):
    La = L if La == "L" else La
    a, arow, b, h0 = _case(rng, C, L, dtype, La, Ra)
    want = ref.scan_fwd(a, arow, b, h0, reverse)
    got = cs._chunked_model_fwd(a, arow, b, h0, reverse, path=path, chunk=chunk, carry_threads=threads)
    assert got.dtype == want.dtype
    _close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("need_a", [True, False])
@pytest.mark.parametrize("C, L, La, Ra, path, chunk, threads", MODEL_CASES)
def test_model_backward_matches_reference(rng, dtype, reverse, need_a, C, L, La, Ra, path, chunk, threads):
    La = L if La == "L" else La
    a, arow, b, h0 = _case(rng, C, L, dtype, La, Ra)
    h = ref.scan_fwd(a, arow, b, h0, reverse)
    gh = _rand(rng, (C, L), dtype)
    gfinal = _rand(rng, (C,), dtype)
    g0, ga0, gh00 = ref.scan_bwd(a, arow, h, h0, gh, gfinal, reverse)
    g, ga, gh0 = cs._chunked_model_bwd(a, arow, h, h0, gh, gfinal, reverse, path=path, need_a=need_a, chunk=chunk,
                                       carry_threads=threads)
    _close(g, g0, dtype)
    _close(gh0, gh00, dtype)
    if need_a:
        assert ga.shape == (C, La)
        _close(ga, ga0, dtype)
    else:
        assert ga is None


def test_model_empty():
    a = np.ones((2, 1))
    arow = np.arange(2)
    h0 = np.ones(2)
    assert cs._chunked_model_fwd(a, arow, np.ones((2, 0)), h0, False).shape == (2, 0)
    g, ga, gh0 = cs._chunked_model_bwd(a, arow, np.ones((2, 0)), h0, np.ones((2, 0)), np.full(2, 3.0), False)
    assert g.shape == (2, 0) and ga.shape == (2, 1) and not ga.any()
    np.testing.assert_array_equal(gh0, [3.0, 3.0])
    empty = cs._chunked_model_fwd(np.ones((1, 5)), np.zeros(0, np.intp), np.ones((0, 5)), np.ones(0), True)
    assert empty.shape == (0, 5)


def _same_nonfinite(got, want):
    """Equal where finite (to rounding), and the same NaN and inf pattern elsewhere."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("path, chunk", [("channels", None), ("chunked", 128)])
@pytest.mark.parametrize("what", ["a_inf", "a_nan", "b_inf", "h0_inf", "a_zero_then_b_inf"])
def test_model_nonfinite_propagates_like_the_loop(rng, reverse, path, chunk, what):
    C, L = 3, 517
    a = rng.uniform(0.5, 0.99, (C, L))
    b = rng.uniform(0.5, 1.5, (C, L))  # positive: no inf - inf from sign changes
    h0 = np.zeros(C)  # the default, where a * 0 terms would do damage
    arow = np.arange(C)
    t = [3, 200, 400]  # inside a lane, in a later tile, in a later chunk
    if what == "a_inf":
        a[np.arange(C), t] = np.inf
    elif what == "a_nan":
        a[np.arange(C), t] = np.nan
    elif what == "b_inf":
        b[np.arange(C), t] = np.inf
    elif what == "h0_inf":
        h0[:] = [np.inf, -np.inf, 1.0]
    else:
        a[:, 100] = 0.0
        b[:, 300] = np.inf
    if reverse:
        a, b = a[:, ::-1].copy(), b[:, ::-1].copy()
    with np.errstate(all="ignore"):
        want = ref.scan_fwd(a, arow, b, h0, reverse)
        got = cs._chunked_model_fwd(a, arow, b, h0, reverse, path=path, chunk=chunk)
        _same_nonfinite(got, want)
        gh = np.ones((C, L))
        g0, ga0, gh00 = ref.scan_bwd(a, arow, want, h0, gh, np.zeros(C), reverse)
        g, ga, gh0 = cs._chunked_model_bwd(a, arow, want, h0, gh, np.zeros(C), reverse, path=path, chunk=chunk)
    _same_nonfinite(g, g0)
    _same_nonfinite(ga, ga0)
    _same_nonfinite(gh0, gh00)


def test_model_avoids_inf_times_zero_of_an_identity_start(rng):
    """The hazard the kernels are built around: h0 = 0 and an inf coefficient after the first step.

    A scan started from the identity (1, 0) would give NaN here.
    """
    a = np.array([[0.5, np.inf, 0.5, 0.5] * 64])
    b = np.ones((1, 256))
    want = ref.scan_fwd(a, np.zeros(1, np.intp), b, np.zeros(1), False)
    with np.errstate(all="ignore"):
        got = cs._chunked_model_fwd(a, np.zeros(1, np.intp), b, np.zeros(1), False, path="chunked", chunk=128)
    assert np.isposinf(want[0, 1:]).all() and not np.isnan(want).any()
    _same_nonfinite(got, want)


# --------------------------------------------------------------------------- scan.cu itself, run on the host
#
# The CUDA source compiled as C++ against a tiny host emulation (one std::thread
# per CUDA thread, warp shuffles through a per-warp exchange buffer and
# barrier, blocks one after another; std::complex for CuPy's complex), driven by
# scan.py's own launchers with NumPy arrays standing in for CuPy's. This runs
# the kernels' actual code (indexing, vector loads, lane bookkeeping, carries),
# which the NumPy model above only mirrors. It says nothing about GPU-only
# matters (memory model, real warp scheduling, speed).

_EMU_BINDINGS = r"""
#define INST(T, tag) \
extern "C" void scan_fwd_tiles_##tag(unsigned g, unsigned b, cv a, cv arow, ll La, cv bb, cv st, void* out, ll C, \
        ll L, ll nch, ll Lc, int rev, int vec) { \
    launch(g, b, [=] { scan_fwd_tiles<T>((const T*)a, (const ll*)arow, La, (const T*)bb, (const T*)st, (T*)out, C, \
                                         L, nch, Lc, rev, vec); }); } \
extern "C" void scan_fwd_summary_##tag(unsigned g, unsigned b, cv a, cv arow, ll La, cv bb, void* F, void* P, \
        void* S, ll C, ll L, ll nch, ll Lc, int rev, int vec) { \
    launch(g, b, [=] { scan_fwd_summary<T>((const T*)a, (const ll*)arow, La, (const T*)bb, (T*)F, (T*)P, (T*)S, C, \
                                           L, nch, Lc, rev, vec); }); } \
extern "C" void scan_carry_##tag(unsigned g, unsigned b, cv F, cv P, cv S, cv h0, void* st, ll C, ll nch) { \
    launch(g, b, [=] { scan_carry<T>((const T*)F, (const T*)P, (const T*)S, (const T*)h0, (T*)st, C, nch); }); } \
extern "C" void scan_ga_sum_##tag(unsigned g, unsigned b, cv part, void* ga, ll C, ll nch) { \
    launch(g, b, [=] { scan_ga_sum<T>((const T*)part, (T*)ga, C, nch); }); } \
extern "C" void scan_bwd_tiles_##tag(unsigned g, unsigned b, cv a, cv arow, ll La, cv h, cv h0, cv gh, cv st, \
        void* gg, void* ga, void* part, void* gh0, ll C, ll L, ll nch, ll Lc, int rev, int vec, int need_a) { \
    launch(g, b, [=] { scan_bwd_tiles<T>((const T*)a, (const ll*)arow, La, (const T*)h, (const T*)h0, \
        (const T*)gh, (const T*)st, (T*)gg, (T*)ga, (T*)part, (T*)gh0, C, L, nch, Lc, rev, vec, need_a); }); } \
extern "C" void scan_bwd_summary_##tag(unsigned g, unsigned b, cv a, cv arow, ll La, cv gh, void* F, void* P, \
        void* S, ll C, ll L, ll nch, ll Lc, int rev, int vec) { \
    launch(g, b, [=] { scan_bwd_summary<T>((const T*)a, (const ll*)arow, La, (const T*)gh, (T*)F, (T*)P, (T*)S, C, \
                                           L, nch, Lc, rev, vec); }); }
INST(float, f32)
INST(double, f64)
INST(complex<float>, c64)
INST(complex<double>, c128)
"""

_EMU_TAGS = {"float": "f32", "double": "f64", "complex<float>": "c64", "complex<double>": "c128"}


@pytest.fixture(scope="module")
def emulated_kernels(tmp_path_factory):
    """``scan.cu`` compiled for the host (skipped without a C++20 g++)."""
    d = tmp_path_factory.mktemp("scan_emu")
    return cuda_emulation.build(d, SOURCES["scan.cu"].path.parent, "scan.cu", _EMU_BINDINGS, "scan_emu")


@pytest.fixture
def host_cupy(emulated_kernels, monkeypatch):
    """Route scan.py's launchers to the host kernels.

    NumPy stands in for CuPy, 1 SM, and forced chunking uses 128-step chunks (many chunks from short series).
    """
    import sys
    import types

    fake = types.ModuleType("cupy")
    for n in ("empty", "zeros", "ascontiguousarray", "asarray", "int64", "ndarray"):
        setattr(fake, n, getattr(np, n))
    monkeypatch.setitem(sys.modules, "cupy", fake)

    def get(name):
        kernel, cxx = name[:-1].split("<", 1)
        return cuda_emulation.caller(getattr(emulated_kernels, f"{kernel}_{_EMU_TAGS[cxx]}"), name)

    plan = cs.plan_scan
    monkeypatch.setattr(cs.SCAN, "get", get)
    monkeypatch.setattr(cs, "_vec_ok", lambda L, *xs: L % 4 == 0 and all(x.ctypes.data % 16 == 0 for x in xs))
    monkeypatch.setattr(cs, "_sm_count", lambda: 1)
    monkeypatch.setattr(cs, "_warps_per_sm", lambda kernel: cs.WARPS_PER_SM)
    monkeypatch.setattr(cs, "plan_scan", lambda C, L, it, sm, path="auto", chunk=None, warps_per_sm=cs.WARPS_PER_SM:
                        plan(C, L, it, sm, path, 128 if path == "chunked" else chunk, warps_per_sm))
    return cs


EMU_CASES = [
    # (dtype, C, L, La, Ra)
    (np.float64, 3, 7, "L", 3),  # partial lanes, scalar loads
    (np.complex64, 2, 520, "L", 1),  # vector loads (L % 4 == 0), 5 chunks, shared row
    (np.float32, 3, 131, 1, 3),  # constant a, L prime
    (np.complex128, 1, 1, 1, 1),
]


@pytest.mark.slow
@pytest.mark.parametrize("path", ["channels", "chunked"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype, C, L, La, Ra", EMU_CASES)
def test_host_run_of_scan_cu_matches_reference(host_cupy, rng, path, reverse, dtype, C, L, La, Ra):
    La = L if La == "L" else La
    a, arow, b, h0 = _case(rng, C, L, dtype, La, Ra)
    want = ref.scan_fwd(a, arow, b, h0, reverse)
    _close(host_cupy.scan_fwd(a, arow, b, h0, reverse, path=path), want, dtype)
    gh, gfinal = _rand(rng, (C, L), dtype), _rand(rng, (C,), dtype)
    g0, ga0, gh00 = ref.scan_bwd(a, arow, want, h0, gh, gfinal, reverse)
    g, ga, gh0 = host_cupy.scan_bwd(a, arow, want, h0, gh, gfinal, reverse, path=path)
    _close(g, g0, dtype)
    _close(ga, ga0, dtype)
    _close(gh0, gh00, dtype)
    g, ga, gh0 = host_cupy.scan_bwd(a, arow, np.full_like(want, np.nan), h0, gh, gfinal, reverse, path=path,
                                    need_a=False)  # h is never read
    assert ga is None
    _close(g, g0, dtype)
    _close(gh0, gh00, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["a_inf", "a_zero_then_b_inf"])
def test_host_run_of_scan_cu_nonfinite(host_cupy, what):
    C, L = 2, 517
    rng = np.random.default_rng(5)
    a = rng.uniform(0.5, 0.99, (C, L))
    b = rng.uniform(0.5, 1.5, (C, L))
    if what == "a_inf":
        a[:, [3, 300]] = np.inf
    else:
        a[:, 100] = 0.0
        b[:, 300] = np.inf
    arow, h0 = np.arange(C), np.zeros(C)
    for path in ("channels", "chunked"):
        with np.errstate(all="ignore"):
            want = ref.scan_fwd(a, arow, b, h0, True)
            g0, ga0, gh00 = ref.scan_bwd(a, arow, want, h0, np.ones((C, L)), np.zeros(C), True)
        _same_nonfinite(host_cupy.scan_fwd(a, arow, b, h0, True, path=path), want)
        g, ga, gh0 = host_cupy.scan_bwd(a, arow, want, h0, np.ones((C, L)), np.zeros(C), True, path=path)
        _same_nonfinite(g, g0)
        _same_nonfinite(ga, ga0)
        _same_nonfinite(gh0, gh00)
