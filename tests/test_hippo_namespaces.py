"""Set-up code (HiPPO and the initialisers) on every array namespace (the ``ns`` fixture).

The functions of arrays that are device-neutral (hippo_basis, hippo_reconstruct,
nplr_to_dense, inverse_softplus, lru_lambda) must give the NumPy result in the
input's namespace and on its device: on array-api-strict here (a stray ``np.*``
raises), on CuPy on a GPU machine. hippo_online_coefficients is declared
NumPy-only: strict input runs through the host bridge, CuPy input gets the
dispatcher's uniform error.
"""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore
from ssmcore.dispatch import UnsupportedBackendError, capabilities, select

BASIS_CASES = [
    ("legs", 6, {}, 1.3),
    ("legt", 5, {"theta": 1.5}, 2.0),
    ("lmu", 4, {}, 1.0),
    ("lagt", 7, {"beta": 2.0}, 3.0),
    ("glagt", 5, {"alpha": 0.3, "beta": 0.2}, 2.5),
    ("fout", 6, {}, 1.7),
    ("fourier2", 4, {"theta": 0.8}, 1.0),
]


@pytest.mark.parametrize("measure,N,params,t", BASIS_CASES, ids=[c[0] for c in BASIS_CASES])
def test_basis_and_reconstruct_match_numpy(ns, rng, measure, N, params, t):
    # times inside and outside every window, a NaN and +-inf lags, in a 2-D shape
    s = np.concatenate([np.linspace(-1.0, t + 1.0, 9), [np.nan, -np.inf, t]]).reshape(3, 4)
    want = ssmcore.hippo_basis(measure, N, s, t=t, **params)
    got = ns.to_numpy(ssmcore.hippo_basis(measure, N, ns.asarray(s), t=t, **params))
    assert got.shape == want.shape == (N, 3, 4) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14)
    c = rng.standard_normal((2, N))
    want = ssmcore.hippo_reconstruct(measure, c, s, t=t, **params)
    got = ns.to_numpy(ssmcore.hippo_reconstruct(measure, ns.asarray(c), ns.asarray(s), t=t, **params))
    assert got.shape == want.shape == (2, 3, 4)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


def test_basis_is_bitwise_numpys_legendre(ns):
    """The namespace-neutral Legendre recurrence is legvander's, operation for operation."""
    from numpy.polynomial import legendre

    s = np.linspace(0.0, 1.0, 11)
    got = ns.to_numpy(ssmcore.hippo_basis("lmu", 8, ns.asarray(s), t=1.0, theta=1.0))
    want = np.moveaxis(legendre.legvander(2.0 * (1.0 - s) - 1.0, 7), -1, 0)
    np.testing.assert_array_equal(got, want)


def test_reconstruct_with_python_times(ns):
    c = np.array([1.0, 0.0, 0.0, 0.0])
    got = ns.to_numpy(ssmcore.hippo_reconstruct("legs", ns.asarray(c), [0.1, 0.7], t=1.0))
    np.testing.assert_allclose(got, [1.0, 1.0], rtol=1e-15)


def test_basis_validation_messages(ns):
    with pytest.raises(TypeError, match="hippo_reconstruct: c has dtype complex128; expected a real"):
        ssmcore.hippo_reconstruct("legs", ns.asarray(np.ones(3, complex)), ns.asarray(np.zeros(1)), t=1.0)
    with pytest.raises(ValueError, match="hippo_basis"):
        ssmcore.hippo_basis("foud", 4, ns.asarray(np.zeros(1)), t=1.0)


@pytest.mark.parametrize("measure", ["legs", "fout", "lagt"])
def test_nplr_to_dense_matches_numpy(ns, measure):
    Lambda, P, B, V = ssmcore.nplr(measure, 6)
    want_A, want_b = ssmcore.nplr_to_dense(Lambda, P, B, V)
    got_A, got_b = ns.to_numpy(ssmcore.nplr_to_dense(*(ns.asarray(np.asarray(a)) for a in (Lambda, P, B, V))))
    np.testing.assert_allclose(got_A, want_A, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(got_b, want_b, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match=r"nplr_to_dense: Lambda has shape \(3,\); expected \(4,\)"):
        ssmcore.nplr_to_dense(*(ns.asarray(a) for a in (np.zeros(3), np.zeros((1, 4)), np.zeros(4),
                                                         np.zeros((8, 4)))))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inverse_softplus_matches_numpy(ns, dtype):
    x = np.array([1e-8, 1e-3, 0.1, np.log(2.0), 1.0, 50.0, 0.0, -1.0, np.nan, np.inf], dtype=dtype)
    want = ssmcore.inverse_softplus(x)
    got = ns.to_numpy(ssmcore.inverse_softplus(ns.asarray(x)))
    assert got.dtype == want.dtype == dtype
    np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError, match="inverse_softplus: x has dtype complex128; expected a real"):
        ssmcore.inverse_softplus(ns.asarray(np.ones(2, complex)))


@pytest.mark.parametrize("dtypes", [(np.float64, np.float64), (np.float32, np.float32), (np.float32, np.float64)])
def test_lru_lambda_matches_numpy(ns, rng, dtypes):
    nu_log = rng.standard_normal((3, 1)).astype(dtypes[0])
    theta_log = rng.standard_normal(4).astype(dtypes[1])  # broadcast to (3, 4)
    want = ssmcore.lru_lambda(nu_log, theta_log)
    got = ns.to_numpy(ssmcore.lru_lambda(ns.asarray(nu_log), ns.asarray(theta_log)))
    assert got.shape == want.shape == (3, 4) and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-6 if want.dtype == np.complex64 else 1e-15)


def test_online_coefficients_is_numpy_only(ns, rng):
    assert capabilities()["hippo_online_coefficients"] == ("numpy",)
    u = rng.standard_normal((2, 30))
    want = ssmcore.hippo_online_coefficients("legt", u, 6, dt=0.05)
    if ns.name == "cupy":
        with pytest.raises(UnsupportedBackendError, match="hippo_online_coefficients: no CuPy kernel yet"):
            ssmcore.hippo_online_coefficients("legt", ns.asarray(u), 6, dt=0.05)
        return
    got = ns.to_numpy(ssmcore.hippo_online_coefficients("legt", ns.asarray(u), 6, dt=0.05))
    np.testing.assert_array_equal(got, want)
    got = ns.to_numpy(ssmcore.hippo_online_coefficients("legs", ns.asarray(u), 6))
    np.testing.assert_array_equal(got, ssmcore.hippo_online_coefficients("legs", u, 6))


def test_online_coefficients_refuses_the_cupy_backend():
    """What a CuPy input meets (testable without a device: the declared table)."""
    with pytest.raises(UnsupportedBackendError,
                       match="hippo_online_coefficients: no CuPy kernel yet; it runs on numpy"):
        select("hippo_online_coefficients", backend="cupy")
