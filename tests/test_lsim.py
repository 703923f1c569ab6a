"""lsim: scipy.signal.lsim semantics on cont2discrete + dlsim."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.signal as sps

from ssmcore._lsim import lsim

A = np.array([[-1.0, 0.5], [-0.3, -2.0]])
B = np.array([[1.0, 0.0], [0.5, 1.0]])
C = np.array([[1.0, 1.0]])
D = np.array([[0.0, 0.1]])


def _same(got, want, rtol=1e-12):
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * max(1.0, np.abs(w).max(initial=0.0)))


def _systems(rng):
    yield (A, B, C, D), rng.standard_normal((101, 2))
    yield ([1.0, 2.0], [1.0, 3.0, 2.0]), rng.standard_normal(101)  # transfer function
    yield ([-1.0], [-2.0, -3.0], 2.0), rng.standard_normal(101)  # zpk
    yield sps.lti([1.0], [1.0, 0.01, 100.0]), np.sin(np.linspace(0, 10, 101))  # lightly damped
    yield (np.diag([-1 + 2j, -1 - 2j]), np.ones((2, 1)), np.ones((1, 2)), np.zeros((1, 1))), rng.standard_normal(101)
    yield ([2.0], [1.0]), rng.standard_normal(101)  # static gain: no states


@pytest.mark.parametrize("interp", [True, False])
def test_matches_scipy(rng, interp):
    T = np.linspace(0, 10, 101)
    for system, U in _systems(rng):
        n = sps.lti(*system).to_ss().A.shape[0] if isinstance(system, tuple) else system.to_ss().A.shape[0]
        for X0 in (None, np.arange(1.0, n + 1)):
            for t in (T, T + 0.7):  # T[0] > 0: free response up to the first sample
                _same(lsim(system, U, t, X0=X0, interp=interp), sps.lsim(system, U, t, X0=X0, interp=interp))


@pytest.mark.parametrize("interp", [True, False])
def test_free_response_and_single_sample(interp):
    T = np.linspace(0, 5, 51)
    for U in (None, 0, np.zeros((51, 2))):
        _same(lsim((A, B, C, D), U, T, X0=[1.0, -1.0], interp=interp),
              sps.lsim((A, B, C, D), U, T, X0=[1.0, -1.0], interp=interp))
    _same(lsim((A, B, C, D), np.ones((1, 2)), [0.5], X0=[1.0, 2.0], interp=interp),
          sps.lsim((A, B, C, D), np.ones((1, 2)), [0.5], X0=[1.0, 2.0], interp=interp))


def test_hold_semantics_exact():
    """interp=True integrates a linearly interpolated input exactly: y' = u with u = t gives t^2/2."""
    T = np.linspace(0, 2, 21)
    _, y, _ = lsim(([1.0], [1.0, 0.0]), T, T)
    np.testing.assert_allclose(y, T**2 / 2, rtol=1e-13, atol=1e-14)
    _, y, _ = lsim(([1.0], [1.0, 0.0]), T, T, interp=False)  # zero-order hold: left Riemann sums
    np.testing.assert_allclose(y, np.r_[0.0, np.cumsum(T[:-1] * 0.1)], rtol=1e-13, atol=1e-14)


def test_errors_as_scipy():
    T = np.linspace(0, 1, 11)
    cases = [
        (sps.dlti([1.0], [1.0, 0.5]), None, T, AttributeError, "continuous-time"),
        (([1.0], [1.0, 1.0]), None, np.ones((2, 2)), ValueError, "rank-1"),
        (([1.0], [1.0, 1.0]), np.ones(4), np.array([0.0, 1, 1, 3]), ValueError, "not equally spaced"),
        (([1.0], [1.0, 1.0]), np.ones(4), np.array([-1.0, 0, 1, 2]), ValueError, "nonnegative"),
        (([1.0], [1.0, 1.0]), np.ones(5), T, ValueError, "same number of rows"),
        ((A, B, C, D), np.ones((11, 3)), T, ValueError, "that many inputs"),
    ]
    for system, U, t, exc, match in cases:
        with pytest.raises(exc, match=match):
            sps.lsim(system, U, t)
        with pytest.raises(exc, match="lsim: .*" + match):
            lsim(system, U, t)
    with pytest.raises(ValueError, match=r"lsim: X0 has shape \(3,\); expected \(2,\)"):
        lsim((A, B, C, D), None, T, X0=[1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="interp must be a bool"):
        lsim(([1.0], [1.0, 1.0]), np.ones(11), T, interp="no")


def test_complex_input_stays_complex():
    """SciPy casts a complex U into its real state array (ComplexWarning); ssmcore keeps it."""
    T = np.linspace(0, 1, 11)
    U = np.exp(1j * T)
    _, y, x = lsim(([1.0], [1.0, 1.0]), U, T)
    _, yr, _ = lsim(([1.0], [1.0, 1.0]), U.real, T)
    _, yi, _ = lsim(([1.0], [1.0, 1.0]), U.imag, T)
    assert y.dtype == np.complex128
    np.testing.assert_allclose(y, yr + 1j * yi, rtol=1e-13, atol=1e-14)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(yr, sps.lsim(([1.0], [1.0, 1.0]), U.real, T)[1], rtol=1e-12)


def test_nan_input_propagates():
    T = np.linspace(0, 1, 11)
    U = np.ones(11)
    U[4] = np.nan
    _, y, _ = lsim(([1.0], [1.0, 1.0]), U, T)
    _, yr, _ = sps.lsim(([1.0], [1.0, 1.0]), U, T)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(yr))


def _device_cases(rng):
    T = np.linspace(0, 10, 101)
    for system, U in _systems(rng):
        n = sps.lti(*system).to_ss().A.shape[0] if isinstance(system, tuple) else system.to_ss().A.shape[0]
        for X0 in (None, np.arange(1.0, n + 1)):
            yield system, U, T, X0
            yield system, U, T + 0.7, X0  # T[0] > 0
    yield (A, B, C, D), None, T, np.array([1.0, -1.0])  # free response
    yield (A, B, C, D), np.ones((1, 2)), np.array([0.5]), np.array([1.0, 2.0])  # one sample


@pytest.mark.parametrize("interp", [True, False])
@pytest.mark.parametrize("host_T", [False, True])
def test_device_namespace_matches_numpy(ns, rng, interp, host_T):
    """The device path (array-api-strict here, CuPy on a GPU) gives the NumPy path's results, on the device."""
    if ns.name == "numpy":
        pytest.skip("the NumPy path is the oracle")
    for system, U, T, X0 in _device_cases(rng):
        want = lsim(system, U, T, X0=X0, interp=interp)
        got = lsim(system, ns.asarray(U), T if host_T else ns.asarray(T), X0=ns.asarray(X0), interp=interp)
        got = ns.to_numpy(got)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype, (system, g.shape, w.shape, g.dtype, w.dtype)
            np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-11 * max(1.0, np.abs(w).max(initial=0.0)))


def test_device_namespace_errors(ns):
    if ns.name == "numpy":
        pytest.skip("test_errors_as_scipy covers NumPy")
    d = ns.asarray
    T = np.linspace(0, 1, 11)
    cases = [
        (([1.0], [1.0, 1.0]), d(np.ones(4)), d(np.array([0.0, 1, 1, 3])), ValueError, "not equally spaced"),
        (([1.0], [1.0, 1.0]), d(np.ones(4)), d(np.array([-1.0, 0, 1, 2])), ValueError, "nonnegative"),
        (([1.0], [1.0, 1.0]), d(np.ones(5)), d(T), ValueError, "same number of rows"),
        ((A, B, C, D), d(np.ones((11, 3))), d(T), ValueError, "that many inputs"),
        (([1.0], [1.0, 1.0]), None, d(np.ones((2, 2))), ValueError, "rank-1"),
        ((d(A), B, C, D), d(np.ones((11, 2))), d(T), TypeError, "converted on the host"),
    ]
    for system, U, t, exc, match in cases:
        with pytest.raises(exc, match="lsim: .*" + match):
            lsim(system, U, t)
    with pytest.raises(ValueError, match=r"lsim: X0 has shape \(3,\); expected \(2,\)"):
        lsim((A, B, C, D), None, d(T), X0=d(np.array([1.0, 2.0, 3.0])))
