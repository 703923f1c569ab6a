"""GPU tests of the CuPy LTI kernels (``ssmcore/backends/cupy/lti.py``).

Every test needs a CUDA device (``@pytest.mark.gpu``; skipped elsewhere by
conftest). Each CuPy launcher is checked against ``ssmcore.backends.numba.lti``
and the NumPy reference on random shapes (odd L, L = 1, L = 0, N = 1, real and
complex, float32/float64, x0, scale 1 and 2, real_output, broadcast index maps),
then the public ``lti_simulate``/``lti_simulate_diag``/``dlsim`` and
``ssmcore.vjp`` on CuPy arrays, NaN propagation and streams (the convolution
modes, which run on the CuPy convolution kernels, are compared in
tests/test_gpu_convolution.py).
"""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore
from ssmcore.backends.numba import lti as nb
from ssmcore.reference import lti as ref

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")

TOL = {np.float32: 5e-5, np.float64: 1e-11, np.complex64: 5e-5, np.complex128: 1e-11}


def _cl():
    from ssmcore.backends.cupy import lti as cl

    return cl


def _rand(rng, shape, dtype, scale=1.0):
    x = rng.standard_normal(shape) * scale
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape) * scale
    return x.astype(dtype)


def _h(x):
    return cp.asnumpy(x) if isinstance(x, cp.ndarray) else x


def _close(got, want, dtype):
    assert isinstance(got, cp.ndarray), type(got)
    got = cp.asnumpy(got)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    tol = TOL[np.dtype(dtype).type]
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def _d(*xs):
    return tuple(None if x is None else cp.asarray(x) for x in xs)


def _diag_case(rng, R, N, L, ct, real_output):
    ct = np.dtype(ct)
    if ct.kind == "c":
        A = (rng.uniform(0.5, 0.99, (R, N)) * np.exp(1j * rng.uniform(-np.pi, np.pi, (R, N)))).astype(ct)
    else:
        A = rng.uniform(-0.99, 0.99, (R, N)).astype(ct)
    ot = np.empty(0, ct).real.dtype if real_output else ct
    return (A, _rand(rng, (R, N), ct), _rand(rng, (R, N), ct), _rand(rng, (R,), ot), _rand(rng, (R, L), ot),
            _rand(rng, (R, N), ct))


DIAG_DTYPES = [(np.float32, False), (np.float64, False), (np.complex64, False), (np.complex128, False),
               (np.complex64, True), (np.complex128, True)]
# (R, N, L): N = 1, partial segments, S4D-like N = 64, more states than one segment holds,
# L = 1, L = 0, L prime, many rows with a partial last warp, one long row
DIAG_SHAPES = [(3, 1, 7), (5, 3, 37), (40, 64, 129), (2, 300, 17), (9, 6, 1), (4, 5, 0), (1000, 16, 61),
               (1, 8, 5003)]


@pytest.mark.parametrize("R, N, L", DIAG_SHAPES)
@pytest.mark.parametrize("ct, real_output", DIAG_DTYPES)
def test_diag_forward_matches_reference_and_numba(rng, R, N, L, ct, real_output):
    cl = _cl()
    ops = _diag_case(rng, R, N, L, ct, real_output)
    scale = 2.0 if real_output else 1.0
    y0, xf0 = ref.diag_recurrent(*ops, scale, real_output)
    y1, xf1 = nb.diag_recurrent(*ops, scale, real_output)
    y, xf = cl.diag_recurrent(*_d(*ops), scale, real_output)
    for got, want, other in ((y, y0, y1), (xf, xf0, xf1)):
        _close(got, want, ct)
        _close(got, other.astype(want.dtype), ct)
    A, B, C, _D, u, x0 = ops
    _close(cl.diag_final_state(*_d(A, B, u, x0)), ref.diag_final_state(A, B, u, x0), ct)
    W = B * C
    _close(cl.diag_kernel(*_d(A, W), scale, L, real_output), ref.diag_kernel(A, W, scale, L, real_output), ct)
    _close(cl.diag_kernel(*_d(A, W), scale, L, real_output), nb.diag_kernel(A, W, scale, L, real_output), ct)


@pytest.mark.parametrize("R, N, L", DIAG_SHAPES)
@pytest.mark.parametrize("ct, real_output", DIAG_DTYPES)
def test_diag_backward_matches_reference_and_numba(rng, R, N, L, ct, real_output):
    cl = _cl()
    A, B, C, D, u, x0 = _diag_case(rng, R, N, L, ct, real_output)
    D, u = D.astype(ct), u.astype(ct)
    gy, gf = _rand(rng, (R, L), ct), _rand(rng, (R, N), ct)
    if real_output:
        gy = gy.real.astype(ct)
    scale = 2.0 if real_output else 1.0
    args = (A, B, C, D, u, x0, scale, gy, gf)
    want = ref.diag_backward(*args)
    other = nb.diag_backward(*args)
    got = cl.diag_backward(*_d(A, B, C, D, u, x0), scale, *_d(gy, gf))
    for g, w, o in zip(got, want, other):
        _close(g, w, ct)
        _close(g, o, ct)


@pytest.mark.parametrize("ct, real_output", [(np.float32, False), (np.complex64, True), (np.complex128, False)])
def test_diag_forward_split_in_time(rng, monkeypatch, ct, real_output):
    """Few long rows: the two-pass time split (diag_summary + carried chunk starts)."""
    cl = _cl()
    monkeypatch.setattr(cl, "MIN_TIME_CHUNK", 16)
    R, N, L = 3, 64, 6007
    assert cl.plan_diag_time(R, cl.plan_diag(R, N, cl.SPL_FWD).G, L, cl._sm_count())[1] > 1
    ops = _diag_case(rng, R, N, L, ct, real_output)
    y0, xf0 = ref.diag_recurrent(*ops, 2.0, real_output)
    y, xf = cl.diag_recurrent(*_d(*ops), 2.0, real_output)
    _close(y, y0, ct)
    _close(xf, xf0, ct)
    A, B, _, _, u, x0 = ops
    _close(cl.diag_final_state(*_d(A, B, u, x0)), xf0, ct)


def test_diag_kernel_long_l_stays_accurate(rng):
    """|A| = 1: running products alone drift with l; re-anchoring keeps complex64 near its ulp."""
    cl = _cl()
    R, N, L = 4, 64, 1 << 16
    A = np.exp(1j * rng.uniform(-np.pi, np.pi, (R, N))).astype(np.complex64)
    W = _rand(rng, (R, N), np.complex64)
    want = ref.diag_kernel(A.astype(np.complex128), W.astype(np.complex128), 1.0, L, False)
    got = cp.asnumpy(cl.diag_kernel(*_d(A, W), 1.0, L, False))
    assert np.max(np.abs(got - want)) < 1e-4 * np.abs(W).sum(1).max()


def test_diag_lower_precision_u(rng):
    cl = _cl()
    A, B, C, D, u, x0 = _diag_case(rng, 7, 5, 33, np.complex128, False)
    u32 = u.real.astype(np.float32)
    y0, xf0 = ref.diag_recurrent(A, B, C, D, u32, x0, 1.0, False)
    y, xf = cl.diag_recurrent(*_d(A, B, C, D, u32, x0), 1.0, False)
    _close(y, y0, np.complex128)
    _close(xf, xf0, np.complex128)


def test_diag_noncontiguous_inputs(rng):
    cl = _cl()
    A, B, C, D, u, x0 = _diag_case(rng, 6, 8, 40, np.complex64, True)
    y0, xf0 = ref.diag_recurrent(A, B, C, D, u, x0, 2.0, True)
    dA, dB, dC, dD, du, dx0 = _d(A, B, C, D, u, x0)
    ut = cp.asfortranarray(du)
    y, xf = cl.diag_recurrent(cp.asfortranarray(dA), dB, dC, dD, ut, dx0, 2.0, True)
    _close(y, y0, np.complex64)
    _close(xf, xf0, np.complex64)


@pytest.mark.parametrize("what", ["nan_u", "inf_u", "nan_a"])
def test_diag_nonfinite_propagates(rng, what):
    cl = _cl()
    A, B, C, D, u, x0 = _diag_case(rng, 3, 5, 50, np.float64, False)
    if what == "nan_u":
        u[0, 7] = np.nan
    elif what == "inf_u":
        u[1, 11] = np.inf
    else:
        A[2, 3] = np.nan
    with np.errstate(all="ignore"):
        y0, xf0 = ref.diag_recurrent(A, B, C, D, u, x0, 1.0, False)
        gy, gf = np.ones((3, 50)), np.ones((3, 5))
        g0 = ref.diag_backward(A, B, C, D, u, x0, 1.0, gy, gf)
    y, xf = cl.diag_recurrent(*_d(A, B, C, D, u, x0), 1.0, False)
    g = cl.diag_backward(*_d(A, B, C, D, u, x0), 1.0, *_d(gy, gf))
    for got, want in [(y, y0), (xf, xf0)] + list(zip(g, g0)):
        got = cp.asnumpy(got)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))


# ---------------------------------------------------------------------------------- dense


def _dense_case(rng, nb_, N, M, P, L, dt, shared):
    n = 1 if shared else nb_
    # spectral radius ~0.8 (a complex Gaussian entry has variance 2)
    A = _rand(rng, (n, N, N), dt) * (0.8 / (max(1, N) * (2 if np.dtype(dt).kind == "c" else 1)) ** 0.5)
    ops = (A.astype(dt), _rand(rng, (n, N, M), dt), _rand(rng, (nb_, P, N), dt), _rand(rng, (n, P, M), dt),
           _rand(rng, (nb_, M, L), dt), _rand(rng, (2, N), dt))
    z = np.zeros(nb_)
    own = np.arange(nb_)
    cols = [z if shared else own, z if shared else own, own, z if shared else own, own, own % 2]
    return ops + (np.ascontiguousarray(np.stack(cols, 1).astype(np.int64)),)


DENSE_DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
# (batch, N, M, P, L, shared A/B/D): broadcast maps, N = 1, P = 0, L = 1, L = 0, a state wider than a warp
DENSE_SHAPES = [(3, 4, 2, 3, 21, False), (5, 1, 1, 1, 1, True), (2, 3, 2, 0, 9, True), (2, 40, 3, 2, 37, False),
                (3, 2, 1, 1, 0, False), (64, 8, 2, 2, 300, True)]


@pytest.mark.parametrize("nb_, N, M, P, L, shared", DENSE_SHAPES)
@pytest.mark.parametrize("dt", DENSE_DTYPES)
def test_dense_forward_and_backward(rng, nb_, N, M, P, L, shared, dt):
    cl = _cl()
    ops = _dense_case(rng, nb_, N, M, P, L, dt, shared)
    dops = _d(*ops)
    y0, xf0, _, _ = ref.simulate_recurrent(*ops)
    for fn in (cl.simulate_recurrent, cl.simulate_scan):
        y, xf, ck, K = fn(*dops)
        assert ck is None and K is None
        _close(y, y0, dt)
        _close(xf, xf0, dt)
    for K in (None, 1, 5):
        y0, xf0, ck0, K0 = ref.simulate_recurrent(*ops, keep_checkpoints=True, K=K)
        y1, xf1, ck1, K1 = nb.simulate_recurrent(*ops, keep_checkpoints=True, K=K)
        assert K1 == K0
        _close(cp.asarray(y1), y0, dt)
        _close(cp.asarray(xf1), xf0, dt)
        for fn in (cl.simulate_recurrent, cl.simulate_scan):
            y, xf, ck, Kg = fn(*dops, keep_checkpoints=True, K=K)
            assert Kg == K0
            _close(y, y0, dt)
            _close(ck, ck0, dt)
            _close(ck, ck1, dt)
        gy, gf = _rand(rng, y0.shape, dt), _rand(rng, xf0.shape, dt)
        want = ref.simulate_backward(*ops[:5], ops[6], K0, ck0, gy, gf)
        other = nb.simulate_backward(*ops[:5], ops[6], K0, ck0, gy, gf)
        got = cl.simulate_backward(*dops[:5], dops[6], K0, cp.asarray(ck), *_d(gy, gf))
        for g, w, o in zip(got, want, other):
            _close(g, w, dt)
            _close(g, o, dt)


def test_simulate_scan_honours_k_and_per_chunk(rng):
    cl = _cl()
    ops = _dense_case(rng, 2, 3, 1, 1, 50, np.float64, False)
    y, _xf, ck, K = cl.simulate_scan(*_d(*ops), keep_checkpoints=True, K=7, per_chunk=3)
    y0, _xf0, ck0, K0 = ref.simulate_scan(*ops, keep_checkpoints=True, K=7, per_chunk=3)
    assert K == K0 == 7
    _close(ck, ck0, np.float64)
    _close(y, y0, np.float64)


def test_control_readout(rng):
    cl = _cl()
    x, u = _rand(rng, (17, 3), np.float64), _rand(rng, (17, 2), np.float64)
    C, D = _rand(rng, (4, 3), np.float64), _rand(rng, (4, 2), np.float64)
    _close(cl.control_readout(*_d(x, u, C, D)), ref.control_readout(x, u, C, D), np.float64)


def test_dense_nan_propagates(rng):
    cl = _cl()
    ops = list(_dense_case(rng, 2, 3, 1, 2, 20, np.float64, False))
    ops[4][0, 0, 5] = np.nan
    with np.errstate(all="ignore"):
        y0, xf0, _, _ = ref.simulate_recurrent(*ops)
    y, xf, _, _ = cl.simulate_recurrent(*_d(*ops))
    np.testing.assert_array_equal(np.isnan(cp.asnumpy(y)), np.isnan(y0))
    np.testing.assert_array_equal(np.isnan(cp.asnumpy(xf)), np.isnan(xf0))


def test_launches_on_the_current_stream(rng):
    cl = _cl()
    ops = _diag_case(rng, 64, 16, 200, np.complex64, True)
    with cp.cuda.Stream(non_blocking=True) as s:
        y, _xf = cl.diag_recurrent(*_d(*ops), 2.0, True)
        s.synchronize()
    y0, _ = ref.diag_recurrent(*ops, 2.0, True)
    _close(y, y0, np.complex64)


# ---------------------------------------------------------------------------------- front doors


def _stable(rng, shape, n):
    a = rng.standard_normal(shape + (n, n))
    rho = np.max(np.abs(np.linalg.eigvals(a)), axis=-1)[..., None, None]
    return a * (0.9 / rho)


@pytest.mark.parametrize("mode", ["recurrent", "scan"])
@pytest.mark.parametrize("dt", [np.float32, np.complex128])
def test_lti_simulate_on_cupy(rng, mode, dt):
    A = _stable(rng, (3,), 4).astype(dt)
    B, C = _rand(rng, (4, 2), dt), _rand(rng, (3, 3, 4), dt)
    D, u, x0 = _rand(rng, (3, 2), dt), _rand(rng, (3, 2, 31), dt), _rand(rng, (3, 4), dt)
    y0, xf0 = ssmcore.lti_simulate(A, B, C, D, u, x0, mode=mode, return_final_state=True)
    y, xf = ssmcore.lti_simulate(*_d(A, B, C, D, u, x0), mode=mode, return_final_state=True)
    _close(y, y0, dt)
    _close(xf, xf0, dt)
    (o0, f0), pb0 = ssmcore.vjp("lti_simulate", A, B, C, D, u, x0, mode=mode, return_final_state=True)
    (o, f), pb = ssmcore.vjp("lti_simulate", *_d(A, B, C, D, u, x0), mode=mode, return_final_state=True)
    gy, gf = _rand(rng, y0.shape, dt), _rand(rng, xf0.shape, dt)
    _close(o, o0, dt)
    _close(f, f0, dt)
    for g, w in zip(pb(_d(gy, gf)), pb0((gy, gf))):
        _close(g, w, dt)


@pytest.mark.parametrize("mode", ["recurrent", "scan"])
@pytest.mark.parametrize("conj_sym, dt", [(True, np.complex64), (False, np.complex128), (False, np.float64)])
def test_lti_simulate_diag_on_cupy(rng, mode, conj_sym, dt):
    H, N, L = 5, 6, 43
    if np.dtype(dt).kind == "c":
        A = (rng.uniform(0.5, 0.95, (H, N)) * np.exp(1j * rng.uniform(-1, 1, (H, N)))).astype(dt)
    else:
        A = rng.uniform(-0.95, 0.95, (H, N)).astype(dt)
    B, C = _rand(rng, (H, N), dt), _rand(rng, (2, H, N), dt)
    rdt = np.empty(0, dt).real.dtype
    D = rng.standard_normal(H).astype(rdt)
    u = rng.standard_normal((2, H, L)).astype(rdt)
    x0 = _rand(rng, (H, N), dt)
    kw = {"conj_sym": conj_sym, "mode": mode, "return_final_state": True}
    y0, xf0 = ssmcore.lti_simulate_diag(A, B, C, D, u, x0, **kw)
    y, xf = ssmcore.lti_simulate_diag(*_d(A, B, C, D, u, x0), **kw)
    _close(y, y0, dt)
    _close(xf, xf0, dt)
    (o0, f0), pb0 = ssmcore.vjp("lti_simulate_diag", A, B, C, D, u, x0, **kw)
    (o, f), pb = ssmcore.vjp("lti_simulate_diag", *_d(A, B, C, D, u, x0), **kw)
    _close(o, o0, o0.dtype)
    _close(f, f0, dt)
    gy, gf = rng.standard_normal(y0.shape).astype(y0.dtype), _rand(rng, xf0.shape, dt)
    for g, w in zip(pb(_d(gy, gf)), pb0((gy, gf))):
        _close(g, w, dt)


def test_dlsim_on_cupy(rng):
    A = _stable(rng, (), 3)
    B, C, D = rng.standard_normal((3, 2)), rng.standard_normal((2, 3)), rng.standard_normal((2, 2))
    u, x0 = rng.standard_normal((25, 2)), rng.standard_normal(3)
    _t0, y0, x_0 = ssmcore.dlsim((A, B, C, D, 1.0), u, x0=x0)
    _t, y, x = ssmcore.dlsim(tuple(cp.asarray(a) for a in (A, B, C, D)) + (1.0,), cp.asarray(u), x0=cp.asarray(x0))
    _close(y, y0, np.float64)
    _close(x, x_0, np.float64)
