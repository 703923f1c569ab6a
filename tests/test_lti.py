"""LTI simulation tests.

dlsim drop-in vs scipy, the batched core vs its reference, scan vs recurrent, broadcasting, state
chaining, lfilter as an independent check, VJPs, errors.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import scipy.signal as signal
from hypothesis import given, strategies as st
from vjp_check import check_vjp

import ssmcore
from ssmcore._lti import LTI_MODES, dlsim, lti_simulate
from ssmcore.backends.numba import lti as numba_kernels
from ssmcore.reference import lti as reference_kernels

MODES = sorted(LTI_MODES)
DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
seeds = st.integers(0, 2**32 - 1)


def stable(rng, shape, n, radius=0.9, complex_=False):
    """Random (..., n, n) matrices with spectral radius `radius` (a stable system)."""
    a = rng.standard_normal(shape + (n, n))
    if complex_:
        a = a + 1j * rng.standard_normal(shape + (n, n))
    rho = np.max(np.abs(np.linalg.eigvals(a)), axis=-1)[..., None, None]
    return a * (radius / np.maximum(rho, 1e-12))


def randn(rng, shape, complex_=False):
    x = rng.standard_normal(shape)
    return x + 1j * rng.standard_normal(shape) if complex_ else x


def ssm_loop(A, B, C, D, u, x0=None):
    """Independent float64/complex128 loop of the SSM convention for one system (u (M, L))."""
    x = np.zeros(A.shape[0], dtype=complex) if x0 is None else np.asarray(x0, dtype=complex)
    ys = []
    for t in range(u.shape[1]):
        x = A @ x + B @ u[:, t]
        ys.append(C @ x + (0 if D is None else D @ u[:, t]))
    return np.array(ys).T.reshape(C.shape[0], u.shape[1]), x


def control_loop(A, B, C, D, u, x0):
    """Independent loop of the control convention (u (M, L)) -> (yout (L, P), xout (L, N))."""
    x, ys, xs = np.asarray(x0, dtype=complex), [], []
    for k in range(u.shape[1]):
        xs.append(x)
        ys.append(C @ x + D @ u[:, k])
        x = A @ x + B @ u[:, k]
    return np.array(ys), np.array(xs)


def assert_close(actual, desired, tol):
    scale = max(1.0, float(np.max(np.abs(desired), initial=0.0)))
    np.testing.assert_allclose(actual, desired, rtol=0, atol=tol * scale)


# --------------------------------------------------------------------------- dlsim


@given(n=st.integers(1, 5), m=st.integers(1, 3), p=st.integers(1, 3), L=st.integers(1, 40),
       with_x0=st.booleans(), seed=seeds)
def test_dlsim_matches_scipy_state_space(n, m, p, L, with_x0, seed):
    rng = np.random.default_rng(seed)
    A, B, C, D = stable(rng, (), n), randn(rng, (n, m)), randn(rng, (p, n)), randn(rng, (p, m))
    u = randn(rng, (L,) if m == 1 and seed % 2 else (L, m))  # 1-D u means one column
    x0 = randn(rng, (n,)) if with_x0 else None
    want = signal.dlsim((A, B, C, D, 0.25), u, x0=x0)
    got = dlsim((A, B, C, D, 0.25), u, x0=x0)
    assert len(got) == 3
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert_close(g, w, 1e-12)


@given(n=st.integers(1, 4), m=st.integers(1, 2), L=st.integers(2, 30), t0=st.floats(0.0, 1.5),
       dt=st.sampled_from([0.1, 0.25, 0.7, 1.0]), seed=seeds)
def test_dlsim_interpolates_u_like_scipy(n, m, L, t0, dt, seed):
    rng = np.random.default_rng(seed)
    A, B, C, D = stable(rng, (), n), randn(rng, (n, m)), randn(rng, (2, n)), randn(rng, (2, m))
    t = t0 + np.cumsum(rng.uniform(0.05, 1.0, L))  # non-uniform, may start after 0 (extrapolation)
    u = randn(rng, (L, m))
    x0 = randn(rng, (n,))
    want = signal.dlsim((A, B, C, D, dt), u, t=t, x0=x0)
    got = dlsim((A, B, C, D, dt), u, t=t, x0=x0)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert_close(g, w, 1e-12)


def test_dlsim_long_sequence_matches_scipy(rng):
    A, B, C, D = stable(rng, (), 8, 0.99), randn(rng, (8, 2)), randn(rng, (3, 8)), randn(rng, (3, 2))
    u = randn(rng, (5000, 2))
    for g, w in zip(dlsim((A, B, C, D, 1.0), u, x0=np.ones(8)), signal.dlsim((A, B, C, D, 1.0), u, x0=np.ones(8))):
        assert_close(g, w, 1e-12)


def test_dlsim_transfer_function_zpk_and_dlti(rng):
    u = randn(rng, (60,))
    num, den = [0.5, -0.2, 0.1], [1.0, -0.9, 0.3]
    for system in [(num, den, 0.5), (signal.tf2zpk(num, den) + (0.5,)), signal.dlti(num, den, dt=0.5)]:
        want = signal.dlsim(system, u)
        got = dlsim(system, u)
        assert len(got) == len(want) == 2  # no xout for transfer functions, like scipy
        for g, w in zip(got, want):
            assert_close(g, w, 1e-12)
    ss = signal.dlti(*signal.tf2ss(num, den), dt=0.5)
    assert len(dlsim(ss, u)) == 3


def test_dlsim_transfer_function_equals_lfilter(rng):
    # Independent check: a SISO transfer function filters u exactly like lfilter (zero state).
    num, den = [0.2, 0.3, -0.1, 0.05], [1.0, -1.1, 0.5, -0.08]
    u = randn(rng, (200,))
    _, y = dlsim((num, den, 1.0), u)
    assert_close(y[:, 0], signal.lfilter(num, den, u), 1e-12)


def test_dlsim_scipy_documented_example():
    # From scipy.signal.dlsim's docstring: an integrator, u = [0, 0, 1, 1] -> y = [0, 0, 0, 1].
    tout, y = dlsim(([1.0], [1.0, -1.0], 1.0), np.array([0.0, 0.0, 1.0, 1.0]), t=[0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(y.T, [[0.0, 0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(tout, [0.0, 1.0, 2.0, 3.0])


def test_dlsim_keeps_complex_systems_complex(rng):
    n = 3
    A = stable(rng, (), n, complex_=True)
    B, C, D = randn(rng, (n, 1), True), randn(rng, (2, n), True), randn(rng, (2, 1))
    u = randn(rng, (25,))
    _, y, x = dlsim((A, B, C, D, 1.0), u, x0=np.ones(n))
    assert y.dtype == np.complex128 and x.dtype == np.complex128
    # control convention by hand: x[k+1] = A x[k] + B u[k], y[k] = C x[k] + D u[k]
    xk = np.ones(n, dtype=complex)
    for k in range(25):
        assert_close(x[k], xk, 1e-13)
        assert_close(y[k], C @ xk + D[:, 0] * u[k], 1e-13)
        xk = A @ xk + B[:, 0] * u[k]
    # scipy keeps only the real part of the state and warns; the real-system results coincide
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, y_scipy, _ = signal.dlsim((A.real, B.real, C.real, D, 1.0), u)
    assert_close(dlsim((A.real, B.real, C.real, D, 1.0), u)[1], y_scipy, 1e-12)


def test_dlsim_edge_cases(rng):
    A, B, C, D = stable(rng, (), 2), randn(rng, (2, 1)), randn(rng, (1, 2)), randn(rng, (1, 1))
    tout, y, x = dlsim((A, B, C, D, 1.0), np.zeros((0,)))
    assert tout.shape == (0,) and y.shape == (0, 1) and x.shape == (0, 2)
    tout, y, x = dlsim((A, B, C, D, 1.0), [2.0], x0=[1.0, -1.0])  # L = 1: y = C x0 + D u
    assert_close(y[0], C @ [1.0, -1.0] + D[0] * 2.0, 1e-15)
    # integer inputs are accepted like scipy; scalar x0 broadcasts like scipy
    want = signal.dlsim(([[0]], [[1]], [[1]], [[0]], 1), [1, 2, 3], x0=2)
    got = dlsim(([[0]], [[1]], [[1]], [[0]], 1), [1, 2, 3], x0=2)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    # NaN propagates instead of crashing
    _, y, _ = dlsim((A, B, C, D, 1.0), [1.0, np.nan, 1.0, 1.0])
    assert np.isfinite(y[:1]).all() and np.isnan(y[1:]).all()  # D u[1] is NaN already


def test_dlsim_errors(rng):
    A, B, C, D = stable(rng, (), 2), randn(rng, (2, 2)), randn(rng, (1, 2)), randn(rng, (1, 2))
    with pytest.raises(ValueError, match=r"dlsim: u has shape \(5, 3\); expected \(L, 2\)"):
        dlsim((A, B, C, D, 1.0), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"dlsim: u has shape \(5,\); expected \(L, 2\)"):
        dlsim((A, B, C, D, 1.0), np.zeros(5))
    with pytest.raises(ValueError, match="dlsim: x0 has shape"):
        dlsim((A, B, C, D, 1.0), np.zeros((5, 2)), x0=np.zeros(3))
    with pytest.raises(ValueError, match="dlsim: B has shape"):
        dlsim((A, randn(rng, (3, 2)), C, D, 1.0), np.zeros((5, 2)))
    with pytest.raises(TypeError, match="dlsim: system must be"):
        dlsim((A,), np.zeros(5))
    with pytest.raises(TypeError, match="continuous-time"):
        dlsim(signal.lti([1.0], [1.0, 1.0]), np.zeros(5))
    with pytest.raises(ValueError, match="dlsim: t has shape"):
        dlsim((A, B, C, D, 1.0), np.zeros((5, 2)), t=np.arange(4.0))
    with pytest.raises(ValueError, match="strictly increasing"):
        dlsim((A, B, C, D, 1.0), np.zeros((3, 2)), t=[0.0, 2.0, 1.0])
    with pytest.raises(TypeError, match="dlsim: u has dtype"):
        dlsim((A, B, C, D, 1.0), np.array(["a", "b"]))


# --------------------------------------------------------------------------- the core


def test_lti_simulate_equals_dlsim_on_mapped_system(rng):
    # REFERENCE.md: the SSM system (A, B, C, D) is the dlsim system (A, B, C A, C B + D),
    # whose control state x_k is the SSM state x_{k-1} (so x0 enters as the dlsim x0).
    n, m, p, L = 4, 2, 3, 50
    A, B, C, D = stable(rng, (), n), randn(rng, (n, m)), randn(rng, (p, n)), randn(rng, (p, m))
    u, x0 = randn(rng, (m, L)), randn(rng, (n,))
    _, y_scipy, _ = signal.dlsim((A, B, C @ A, C @ B + D, 1.0), u.T, x0=x0)
    for mode in MODES:
        assert_close(lti_simulate(A, B, C, D, u, x0, mode=mode), y_scipy.T, 1e-12)


def test_lti_simulate_equals_lfilter_for_siso_transfer_function(rng):
    # Independent check: the SSM system as a dlsim system (A, B, CA, CB + D) -> ss2tf -> lfilter.
    n, L = 5, 300
    A, B, C, D = stable(rng, (), n, 0.95), randn(rng, (n, 1)), randn(rng, (1, n)), randn(rng, (1, 1))
    num, den = signal.ss2tf(A, B, C @ A, C @ B + D)
    u = randn(rng, (L,))
    want = signal.lfilter(num[0], den, u)
    for mode in MODES:
        assert_close(lti_simulate(A, B, C, D, u[None], mode=mode)[0], want, 1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_lti_simulate_matches_reference_all_dtypes(dtype, mode, rng):
    cplx = np.dtype(dtype).kind == "c"
    n, m, p, L = 3, 2, 2, 41
    A = stable(rng, (2,), n, complex_=cplx).astype(dtype)
    B, C, D = (randn(rng, s, cplx).astype(dtype) for s in ((n, m), (p, n), (p, m)))
    u, x0 = randn(rng, (3, 1, m, L), cplx).astype(dtype), randn(rng, (n,), cplx).astype(dtype)
    y_ref, xf_ref = lti_simulate(A, B, C, D, u, x0, mode=mode, return_final_state=True, backend="numpy")
    tol = 1e-5 if np.dtype(dtype).itemsize <= 8 and dtype != np.float64 else 1e-13
    for parallel in (False, True):
        with parallel_drivers(parallel):
            y, xf = lti_simulate(A, B, C, D, u, x0, mode=mode, return_final_state=True)
        assert y.dtype == dtype and xf.dtype == dtype and y.shape == (3, 2, p, L) and xf.shape == (3, 2, n)
        assert_close(y, y_ref, tol)
        assert_close(xf, xf_ref, tol)
    # and the reference itself against an independent loop
    want, want_x = ssm_loop(A[1].astype(complex), B, C, D, u[2, 0], x0)
    assert_close(y_ref[2, 1], want, 10 * tol)
    assert_close(xf_ref[2, 1], want_x, 10 * tol)


@pytest.mark.parametrize("cplx", [False, True])
def test_large_state_column_form(cplx, rng):
    # N >= 16 switches the kernels to the column form of A x (a vectorisable loop).
    n, m, p, L = 17, 2, 2, 30
    A = stable(rng, (2,), n, complex_=cplx)
    B, C, D = randn(rng, (n, m), cplx), randn(rng, (p, n), cplx), randn(rng, (p, m))
    u, x0 = randn(rng, (2, m, L), cplx), randn(rng, (n,), cplx)
    want = lti_simulate(A, B, C, D, u, x0, backend="numpy")
    for mode in MODES:
        assert_close(lti_simulate(A, B, C, D, u, x0, mode=mode), want, 1e-12)
    check_vjp("lti_simulate", (A, B, C, D, u, x0), {"return_final_state": True}, rng=rng)
    _, y_d, x_d = dlsim((A[0], B, C, D, 1.0), u[0].T, x0=x0)
    y_want, x_want = control_loop(A[0], B, C, D, u[0], x0)
    assert_close(y_d, y_want, 1e-12)
    assert_close(x_d, x_want, 1e-12)


@pytest.mark.parametrize("L", [0, 1, 2, 97, 1009])
def test_scan_equals_recurrent(L, rng):
    n, m, p = 3, 1, 2
    A, B, C, D = stable(rng, (), n), randn(rng, (n, m)), randn(rng, (p, n)), randn(rng, (p, m))
    u, x0 = randn(rng, (m, L)), randn(rng, (n,))
    y_r, x_r = lti_simulate(A, B, C, D, u, x0, mode="recurrent", return_final_state=True)
    y_s, x_s = lti_simulate(A, B, C, D, u, x0, mode="scan", return_final_state=True)
    assert y_s.shape == (p, L) and x_s.shape == (n,)
    assert_close(y_s, y_r, 1e-12)
    assert_close(x_s, x_r, 1e-12)
    if L == 0:
        np.testing.assert_array_equal(x_r, x0)


@contextlib.contextmanager
def parallel_drivers(on):
    """Make the Numba kernels take their prange drivers even for tiny inputs (or never)."""
    saved = numba_kernels._PARALLEL_MIN_WORK
    numba_kernels._PARALLEL_MIN_WORK = 0 if on else 1 << 62
    try:
        yield
    finally:
        numba_kernels._PARALLEL_MIN_WORK = saved


def _kernel_run(k, fn, ops, K, per_chunk=None):
    # the launchers choose their chunking; K (and per_chunk) force one
    args = [ops[name] for name in ("A", "B", "C", "D", "u", "x0", "idx")]
    extra = {} if per_chunk is None else {"per_chunk": per_chunk}
    y, xf, ck, K_used = getattr(k, fn)(*args, keep_checkpoints=True, K=K, **extra)
    assert K_used == K and ck.shape == (ops["idx"].shape[0], -(-ops["u"].shape[2] // K), ops["A"].shape[1])
    return y, xf, ck


def _kernel_operands(rng, n, m, p, L, nb, cplx=False):
    return {
        "A": stable(rng, (2,), n, complex_=cplx),
        "B": randn(rng, (1, n, m), cplx),
        "C": randn(rng, (2, p, n), cplx),
        "D": randn(rng, (1, p, m), cplx),
        "u": randn(rng, (nb, m, L), cplx),
        "x0": randn(rng, (nb, n), cplx),
        "idx": np.array([[b % 2, 0, (b + 1) % 2, 0, b, b] for b in range(nb)], dtype=np.int64),
    }


@given(L=st.integers(0, 60), K=st.integers(1, 9), per_chunk=st.integers(1, 4), nb=st.integers(1, 3),
       cplx=st.booleans(), parallel=st.booleans(), seed=seeds)
def test_scan_kernel_chunking_matches_reference_and_recurrent(L, K, per_chunk, nb, cplx, parallel, seed):
    # The front door picks chunk sizes from the thread count; here every chunking is
    # forced, through the serial and the prange drivers.
    ops = _kernel_operands(np.random.default_rng(seed), 3, 2, 2, L, nb, cplx)
    with parallel_drivers(parallel):
        y_s, x_s, ck_s = _kernel_run(numba_kernels, "simulate_scan", ops, K, per_chunk)
        y_r, x_r, ck_r = _kernel_run(numba_kernels, "simulate_recurrent", ops, K)
    y_ref, x_ref, ck_ref = _kernel_run(reference_kernels, "simulate_scan", ops, K, per_chunk)
    for got, want in ((y_s, y_r), (x_s, x_r), (ck_s, ck_r), (y_ref, y_r), (x_ref, x_r), (ck_ref, ck_r)):
        assert_close(got, want, 1e-12)
    if L:
        np.testing.assert_array_equal(ck_r[:, 0], ops["x0"][ops["idx"][:, 5]])


@pytest.mark.parametrize("cplx", [False, True])
def test_control_readout_kernel_matches_reference(cplx, rng):
    x, u, C, D = randn(rng, (13, 4), cplx), randn(rng, (13, 2)), randn(rng, (3, 4), cplx), randn(rng, (3, 2))
    dtype = x.dtype
    outs = []
    for k in (numba_kernels, reference_kernels):
        y = k.control_readout(x, u.astype(dtype), C, D.astype(dtype))
        assert y.shape == (13, 3) and y.dtype == dtype
        outs.append(y)
    assert_close(outs[0], outs[1], 1e-13)
    assert_close(outs[1], x @ C.T + u @ D.T, 1e-13)


def test_broadcasting_many_systems_many_inputs_equals_loop(rng):
    n, m, p, L = 3, 2, 2, 23
    A = stable(rng, (4, 1), n)  # 4 systems
    B, C, D = randn(rng, (n, m)), randn(rng, (4, 1, p, n)), randn(rng, (1, 1, p, m))
    u = randn(rng, (5, m, L))  # 5 inputs
    x0 = randn(rng, (1, 5, n))
    for mode in MODES:
        y, xf = lti_simulate(A, B, C, D, u, x0, mode=mode, return_final_state=True)
        assert y.shape == (4, 5, p, L) and xf.shape == (4, 5, n)
        for i in range(4):
            for j in range(5):
                want_y, want_x = lti_simulate(A[i, 0], B, C[i, 0], D[0, 0], u[j], x0[0, j], return_final_state=True)
                assert_close(y[i, j], want_y, 1e-13)
                assert_close(xf[i, j], want_x, 1e-13)


@pytest.mark.parametrize("mode", MODES)
def test_chaining_two_halves_equals_one_run(mode, rng):
    n, m, p, L = 4, 1, 2, 400
    A, B, C, D = stable(rng, (2,), n), randn(rng, (n, m)), randn(rng, (p, n)), randn(rng, (p, m))
    u, x0 = randn(rng, (2, m, L)), randn(rng, (2, n))
    y, xf = lti_simulate(A, B, C, D, u, x0, mode=mode, return_final_state=True)
    y1, x1 = lti_simulate(A, B, C, D, u[..., :157], x0, mode=mode, return_final_state=True)
    y2, x2 = lti_simulate(A, B, C, D, u[..., 157:], x1, mode=mode, return_final_state=True)
    assert_close(np.concatenate([y1, y2], axis=-1), y, 1e-12)
    assert_close(x2, xf, 1e-12)


def test_defaults_edge_shapes_and_nan(rng):
    A, B, C = stable(rng, (), 2), randn(rng, (2, 1)), randn(rng, (1, 2))
    u = randn(rng, (1, 7))
    # D None == zeros, x0 None == zeros
    assert_close(lti_simulate(A, B, C, None, u), lti_simulate(A, B, C, np.zeros((1, 1)), u, np.zeros(2)), 0)
    # an empty batch and an empty sequence keep their shapes
    assert lti_simulate(A, B, C, None, np.zeros((0, 1, 7))).shape == (0, 1, 7)
    y, xf = lti_simulate(A, B, C, None, np.zeros((3, 1, 0)), return_final_state=True)
    assert y.shape == (3, 1, 0) and np.all(xf == 0)
    # N = 1 and a scalar-like system
    y = lti_simulate([[0.5]], [[1.0]], [[1.0]], None, [[1.0, 1.0, 1.0]])
    np.testing.assert_allclose(y, [[1.0, 1.5, 1.75]])
    # NaN propagates through the state (no crash)
    u_nan = u.copy()
    u_nan[0, 3] = np.nan
    for mode in MODES:
        y = lti_simulate(A, B, C, None, u_nan, mode=mode)
        assert np.isnan(y[0, 3:]).all()
        if mode != "convolution":  # an FFT spreads a NaN over the whole sequence
            assert np.isfinite(y[0, :3]).all()


def test_lti_simulate_errors(rng):
    A, B, C, D = stable(rng, (), 3), randn(rng, (3, 2)), randn(rng, (2, 3)), randn(rng, (2, 2))
    u = randn(rng, (2, 10))
    fn = "lti_simulate: "
    cases = [
        ((randn(rng, (3, 4)), B, C, D, u), ValueError, fn + r"A has shape \(3, 4\); expected \(\.\.\., N, N\)"),
        ((A, randn(rng, (4, 2)), C, D, u), ValueError, fn + r"B has shape \(4, 2\); expected \(\.\.\., 3, M\)"),
        ((A, B, randn(rng, (2, 4)), D, u), ValueError, fn + r"C has shape \(2, 4\); expected \(\.\.\., P, 3\)"),
        ((A, B, C, randn(rng, (2, 3)), u), ValueError, fn + r"D has shape \(2, 3\); expected \(\.\.\., 2, 2\)"),
        ((A, B, C, D, randn(rng, (3, 10))), ValueError, fn + r"u has shape \(3, 10\); expected \(\.\.\., 2, L\)"),
        ((A, B, C, D, randn(rng, (10,))), ValueError, fn + r"u has shape \(10,\)"),
        ((A, B, C, D, u, np.zeros(4)), ValueError, fn + r"x0 has shape \(4,\); expected \(\.\.\., 3\)"),
        ((np.zeros((2, 3, 3)), B, C, D, np.zeros((3, 2, 10))), ValueError,
         fn + r"the leading \(batch\) axes do not broadcast"),
        ((np.eye(3, dtype=int), B, C, D, u), TypeError, fn + r"A has dtype int64; expected a floating"),
        ((A, B, C, D, np.ones((2, 10), dtype=np.int32)), TypeError, fn + r"u has dtype int32"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            lti_simulate(*args)
    with pytest.raises(ValueError, match="lti_simulate: unknown mode 'fft'"):
        lti_simulate(A, B, C, D, u, mode="fft")


# --------------------------------------------------------------------------- gradients


@st.composite
def vjp_case(draw):
    n, m, p, L = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(0, 12))
    # leading axes that broadcast: systems (s, 1) against inputs (b,)
    s, b = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    return n, m, p, L, s, b, draw(st.booleans()), draw(st.booleans()), draw(st.sampled_from(MODES)), draw(seeds)


def _vjp_args(rng, n, m, p, L, s, b, cplx, with_d, with_x0):
    A = stable(rng, (s, 1), n, 0.8, cplx)
    B, C = randn(rng, (n, m), cplx), randn(rng, (s, 1, p, n), cplx)
    D = randn(rng, (p, m), cplx) if with_d else None
    u = randn(rng, (b, m, L), cplx)
    x0 = randn(rng, (b, n), cplx) if with_x0 else None
    return A, B, C, D, u, x0


@given(case=vjp_case())
def test_vjp_matches_finite_differences_float64(case):
    n, m, p, L, s, b, with_d, with_x0, mode, seed = case
    rng = np.random.default_rng(seed)
    args = _vjp_args(rng, n, m, p, L, s, b, False, with_d, with_x0)
    grads = check_vjp("lti_simulate", args, {"mode": mode, "return_final_state": bool(seed % 2)}, rng=rng)
    for g, a in zip(grads, args):
        assert (g is None) == (a is None)
        if a is not None:
            assert g.shape == np.shape(a) and g.dtype == np.float64


@given(case=vjp_case())
def test_vjp_matches_finite_differences_complex128(case):
    n, m, p, L, s, b, with_d, with_x0, mode, seed = case
    rng = np.random.default_rng(seed)
    args = _vjp_args(rng, n, m, p, L, s, b, True, with_d, with_x0)
    check_vjp("lti_simulate", args, {"mode": mode, "return_final_state": bool(seed % 2)}, rng=rng)


def test_vjp_mixed_real_and_complex_inputs(rng):
    # Real u through a complex system: u's gradient is real (transpose of the real linearisation).
    args = (stable(rng, (), 3, complex_=True), randn(rng, (3, 1), True), randn(rng, (2, 3), True),
            None, randn(rng, (1, 15)), randn(rng, (3,)))
    grads = check_vjp("lti_simulate", args, {}, rng=rng)
    assert grads[4].dtype == np.float64 and grads[5].dtype == np.float64


def test_vjp_long_sequence_uses_checkpoints(rng):
    # L well above the checkpoint interval (~sqrt(L)): several recompute chunks in the backward.
    args = (stable(rng, (), 2, 0.95), randn(rng, (2, 1)), randn(rng, (1, 2)), randn(rng, (1, 1)),
            randn(rng, (1, 700)), randn(rng, (2,)))
    for mode in MODES:
        check_vjp("lti_simulate", args, {"mode": mode, "return_final_state": True}, rng=rng)


def test_vjp_float32_grads_keep_dtype(rng):
    args = [a.astype(np.float32) for a in (stable(rng, (), 2), randn(rng, (2, 1)), randn(rng, (1, 2)))]
    u = randn(rng, (3, 1, 9)).astype(np.float32)
    y, pullback = ssmcore.vjp("lti_simulate", *args, None, u)
    grads = pullback(np.ones_like(y))
    assert [g.dtype for g in grads if g is not None] == [np.float32] * 4
    y64, pullback64 = ssmcore.vjp("lti_simulate", *(a.astype(np.float64) for a in args), None, u.astype(np.float64))
    for g, g64 in zip(grads, pullback64(np.ones_like(y64))):
        if g is not None:
            assert_close(g, g64, 1e-4)


@given(L=st.integers(1, 40), K=st.integers(1, 9), nb=st.integers(1, 3), cplx=st.booleans(),
       parallel=st.booleans(), seed=seeds)
def test_backward_kernel_matches_reference(L, K, nb, cplx, parallel, seed):
    rng = np.random.default_rng(seed)
    ops = _kernel_operands(rng, 3, 2, 2, L, nb, cplx)
    _, _, ck = _kernel_run(numba_kernels, "simulate_recurrent", ops, K)
    gy = randn(rng, (nb, 2, L), cplx)
    g_final = randn(rng, (nb, 3), cplx)
    dtype = ops["A"].dtype
    outs = {}
    for name, k in (("numba", numba_kernels), ("reference", reference_kernels)):
        with parallel_drivers(parallel):
            grads = k.simulate_backward(*(ops[x] for x in ("A", "B", "C", "D", "u", "idx")), K, ck, gy, g_final)
        assert [g.shape for g in grads] == [(nb,) + s for s in ((3, 3), (3, 2), (2, 3), (2, 2), (2, L), (3,))]
        assert all(g.dtype == dtype for g in grads)
        outs[name] = grads
    for got, want in zip(outs["numba"], outs["reference"]):
        assert_close(got, want, 1e-12)
