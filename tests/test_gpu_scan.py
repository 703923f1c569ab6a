"""GPU tests of the CuPy linear scan (``ssmcore/backends/cupy/scan.py``).

Every test needs a CUDA device (``@pytest.mark.gpu``; skipped elsewhere by
conftest). The CuPy kernels are checked against the sequential NumPy reference
and the Numba kernels on random shapes, both regimes forced through ``path``,
and through the public front doors on CuPy arrays.
"""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore
from ssmcore.backends.numba import scan as nb
from ssmcore.reference import scan as ref

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
TOL = {np.float32: 3e-5, np.float64: 1e-12, np.complex64: 3e-5, np.complex128: 1e-12}


def _cs():
    from ssmcore.backends.cupy import scan as cs

    return cs


def _rand(rng, shape, dtype, scale=1.0):
    x = rng.standard_normal(shape) * scale
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape) * scale
    return x.astype(dtype)


def _case(rng, C, L, dtype, La, Ra):
    if np.dtype(dtype).kind == "c":
        a = 0.95 * np.exp(1j * rng.uniform(-0.5, 0.5, (Ra, La)))
    else:
        a = rng.uniform(-0.99, 0.99, (Ra, La))
    a = a.astype(dtype)
    arow = (np.arange(C) % Ra).astype(np.intp)
    return a, arow, _rand(rng, (C, L), dtype), _rand(rng, (C,), dtype)


def _close(got, want, dtype):
    got = cp.asnumpy(got) if isinstance(got, cp.ndarray) else got
    tol = TOL[dtype]
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def _d(*xs):
    return tuple(cp.asarray(x) for x in xs)


# (C, L, La, Ra): odd sizes, L = 1, L prime, C = 1, constant a, rows shared across channels
SHAPES = [
    (1, 1, 1, 1),
    (3, 1, "L", 3),
    (1, 7, "L", 1),
    (5, 131, "L", 5),
    (7, 257, 1, 7),
    (6, 1031, "L", 2),
    (33, 4099, 1, 1),
    (1, 20011, "L", 1),
    (2, 128 * 300 + 5, 1, 2),
    (300, 512, "L", 300),
]
PATHS = ["auto", "channels", "chunked"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("C, L, La, Ra", SHAPES)
def test_forward_matches_reference_and_numba(rng, dtype, reverse, path, C, L, La, Ra):
    La = L if La == "L" else La
    a, arow, b, h0 = _case(rng, C, L, dtype, La, Ra)
    want = ref.scan_fwd(a, arow, b, h0, reverse)
    got = _cs().scan_fwd(*_d(a, arow, b, h0), reverse, path=path)
    assert isinstance(got, cp.ndarray) and got.dtype == dtype and got.shape == (C, L)
    _close(got, want, dtype)
    _close(got, nb.scan_fwd(a, arow, b, h0, reverse), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("need_a", [True, False])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("C, L, La, Ra", SHAPES)
def test_backward_matches_reference_and_numba(rng, dtype, reverse, need_a, path, C, L, La, Ra):
    La = L if La == "L" else La
    a, arow, b, h0 = _case(rng, C, L, dtype, La, Ra)
    h = ref.scan_fwd(a, arow, b, h0, reverse)
    gh, gfinal = _rand(rng, (C, L), dtype), _rand(rng, (C,), dtype)
    g0, ga0, gh00 = ref.scan_bwd(a, arow, h, h0, gh, gfinal, reverse)
    g1, ga1, gh01 = nb.scan_bwd(a, arow, h, h0, gh, gfinal, reverse)
    g, ga, gh0 = _cs().scan_bwd(*_d(a, arow, h, h0, gh, gfinal), reverse, path=path, need_a=need_a)
    for got, w0, w1 in ((g, g0, g1), (gh0, gh00, gh01)):
        _close(got, w0, dtype)
        _close(got, w1, dtype)
    if need_a:
        assert ga.shape == (C, La) and ga.dtype == dtype
        _close(ga, ga0, dtype)
        _close(ga, ga1, dtype)
    else:
        assert ga is None


def test_need_a_false_never_reads_h(rng):
    a, arow, b, h0 = _case(rng, 4, 300, np.float64, 300, 4)
    h = ref.scan_fwd(a, arow, b, h0, False)
    gh, gfinal = _rand(rng, (4, 300), np.float64), _rand(rng, (4,), np.float64)
    g0, _, gh00 = ref.scan_bwd(a, arow, h, h0, gh, gfinal, False)
    for path in PATHS:
        g, ga, gh0 = _cs().scan_bwd(*_d(a, arow), cp.full((4, 300), cp.nan), *_d(h0, gh, gfinal), False, path=path,
                                    need_a=False)
        assert ga is None
        _close(g, g0, np.float64)
        _close(gh0, gh00, np.float64)


def test_constant_a_gradient_is_deterministic(rng):
    a, arow, b, h0 = _case(rng, 2, 1 << 18, np.float32, 1, 2)
    h = ref.scan_fwd(a, arow, b, h0, False)
    args = _d(a, arow, h, h0, _rand(rng, (2, 1 << 18), np.float32), _rand(rng, (2,), np.float32))
    runs = [cp.asnumpy(_cs().scan_bwd(*args, False, path="chunked")[1]) for _ in range(3)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])


@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
def test_auto_chooses_both_regimes_and_they_agree(rng, dtype):
    cs = _cs()
    sm = cs._sm_count()
    warps = cs._warps_per_sm(f"scan_fwd_tiles<{cs.dtype_name(np.dtype(dtype))}>")
    assert 8 <= warps <= 64
    for C, L in ((1, 1 << 18), (sm * warps, 256)):
        a, arow, b, h0 = _case(rng, C, L, dtype, L, C)
        plan = cs.plan_scan(C, L, np.dtype(dtype).itemsize, sm, warps_per_sm=warps)
        assert plan.path == ("chunked" if C == 1 else "channels")
        args = _d(a, arow, b, h0)
        _close(cs.scan_fwd(*args, True), ref.scan_fwd(a, arow, b, h0, True), dtype)
        _close(cs.scan_fwd(*args, True, path="chunked"), ref.scan_fwd(a, arow, b, h0, True), dtype)


def test_noncontiguous_and_misaligned_inputs(rng):
    """Strided views are made contiguous; rows not 16-byte aligned take the scalar loads."""
    cs = _cs()
    C, L = 5, 1024
    a, arow, b, h0 = _case(rng, C, L, np.float32, L, C)
    want = ref.scan_fwd(a, arow, b, h0, False)
    wide = cp.zeros((C, 2 * L), np.float32)
    wide[:, ::2] = cp.asarray(b)
    got = cs.scan_fwd(cp.asarray(a), cp.asarray(arow), wide[:, ::2], cp.asarray(h0), False)
    _close(got, want, np.float32)
    flat = cp.empty(C * L + 1, np.float32)
    shifted = flat[1:].reshape(C, L)  # contiguous, 4 bytes past an aligned base
    shifted[...] = cp.asarray(b)
    for path in PATHS:
        got = cs.scan_fwd(cp.asarray(a), cp.asarray(arow), shifted, cp.asarray(h0), False, path=path)
        _close(got, want, np.float32)


def test_out_is_written_and_checked(rng):
    cs = _cs()
    a, arow, b, h0 = _case(rng, 3, 77, np.float64, 77, 3)
    out = cp.empty((3, 77))
    res = cs.scan_fwd(*_d(a, arow, b, h0), False, out=out)
    assert res is out
    _close(out, ref.scan_fwd(a, arow, b, h0, False), np.float64)
    with pytest.raises(ValueError, match="scan_fwd: out must be"):
        cs.scan_fwd(*_d(a, arow, b, h0), False, out=cp.empty((3, 77), np.float32))
    with pytest.raises(ValueError, match="scan_fwd: out must be"):
        cs.scan_fwd(*_d(a, arow, b, h0), False, out=cp.empty((77, 3)).T)


def test_empty_shapes():
    cs = _cs()
    a, arow, h0 = cp.ones((2, 1)), cp.arange(2), cp.ones(2)
    assert cs.scan_fwd(a, arow, cp.ones((2, 0)), h0, False).shape == (2, 0)
    g, ga, gh0 = cs.scan_bwd(a, arow, cp.ones((2, 0)), h0, cp.ones((2, 0)), cp.full(2, 3.0), False)
    assert g.shape == (2, 0) and ga.shape == (2, 1) and not bool(ga.any())
    np.testing.assert_array_equal(cp.asnumpy(gh0), [3.0, 3.0])
    assert cs.scan_fwd(cp.ones((1, 4)), cp.zeros(0, np.intp), cp.ones((0, 4)), cp.ones(0), True).shape == (0, 4)
    g, ga, gh0 = cs.scan_bwd(cp.ones((1, 4)), cp.zeros(0, np.intp), cp.ones((0, 4)), cp.ones(0), cp.ones((0, 4)),
                             cp.ones(0), True, need_a=False)
    assert g.shape == (0, 4) and ga is None and gh0.shape == (0,)


def _same_nonfinite(got, want):
    got = cp.asnumpy(got)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("what", ["a_inf", "a_nan", "b_inf", "h0_inf", "a_zero_then_b_inf"])
def test_nonfinite_propagates_like_the_loop(rng, reverse, path, what):
    C, L = 3, 5171
    a = rng.uniform(0.5, 0.99, (C, L))
    b = rng.uniform(0.5, 1.5, (C, L))
    h0 = np.zeros(C)
    arow = np.arange(C)
    t = [3, 200, 4000]
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
        b[:, 3000] = np.inf
    cs = _cs()
    with np.errstate(all="ignore"):
        want = ref.scan_fwd(a, arow, b, h0, reverse)
        gh = np.ones((C, L))
        g0, ga0, gh00 = ref.scan_bwd(a, arow, want, h0, gh, np.zeros(C), reverse)
    _same_nonfinite(cs.scan_fwd(*_d(a, arow, b, h0), reverse, path=path), want)
    g, ga, gh0 = cs.scan_bwd(*_d(a, arow, want, h0, gh, np.zeros(C)), reverse, path=path)
    _same_nonfinite(g, g0)
    _same_nonfinite(ga, ga0)
    _same_nonfinite(gh0, gh00)


def test_runs_on_the_current_stream(rng):
    a, arow, b, h0 = _case(rng, 4, 5000, np.float32, 5000, 4)
    with cp.cuda.Stream(non_blocking=True) as s:
        got = _cs().scan_fwd(*_d(a, arow, b, h0), False, path="chunked")
        s.synchronize()
    _close(got, ref.scan_fwd(a, arow, b, h0, False), np.float32)


# --------------------------------------------------------------------------- public front doors on CuPy arrays


@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_front_door(rng, dtype, reverse):
    a = _rand(rng, (4, 1, 513), dtype, 0.3)
    b = _rand(rng, (4, 3, 513), dtype)
    h0 = _rand(rng, (3,), dtype)
    want, want_last = ssmcore.linear_scan(a, b, h0, reverse=reverse, return_final_state=True)
    got, last = ssmcore.linear_scan(*_d(a, b, h0), reverse=reverse, return_final_state=True)
    assert isinstance(got, cp.ndarray) and isinstance(last, cp.ndarray)
    _close(got, want, dtype)
    _close(last, want_last, dtype)
    got_c = ssmcore.linear_scan(cp.asarray(a[..., :1]), cp.asarray(b), reverse=reverse)  # constant a
    _close(got_c, ssmcore.linear_scan(a[..., :1], b, reverse=reverse), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.complex64])
@pytest.mark.parametrize("La", [1, 300])
def test_linear_scan_vjp_on_cupy(rng, dtype, La):
    a = _rand(rng, (2, 1, La), dtype, 0.3)
    b = _rand(rng, (2, 5, 300), dtype)
    h0 = _rand(rng, (5,), dtype)
    ct = _rand(rng, (2, 5, 300), dtype)
    ct_last = _rand(rng, (2, 5), dtype)
    (out0, last0), pb0 = ssmcore.vjp("linear_scan", a, b, h0, return_final_state=True)
    (out, last), pb = ssmcore.vjp("linear_scan", *_d(a, b, h0), return_final_state=True)
    _close(out, out0, dtype)
    want = pb0((ct, ct_last))
    got = pb((cp.asarray(ct), cp.asarray(ct_last)))
    for gg, ww in zip(got, want):
        assert isinstance(gg, cp.ndarray) and gg.shape == ww.shape
        _close(gg, ww, dtype)
    only_b = pb((cp.asarray(ct), None), needs=(False, True, False))
    assert only_b[0] is None and only_b[2] is None
    _close(only_b[1], pb0((ct, None))[1], dtype)
