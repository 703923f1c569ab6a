"""HiPPO matrices, NPLR/DPLR forms, basis reconstruction and the online projection.

Independent sources of truth used here:
* the formulas of ANCHORS.md §2 (S4's `transition`, `rank_correction`, `nplr`, `dplr`)
  re-derived in the tests, and their numbers (legt N=4 row 0, nplr legs N=8, S4D-Inv N=64);
* the measure definitions themselves: the state of x' = A x + B u, integrated with
  scipy's solve_ivp, must equal the projection of u onto the measure's orthogonal
  basis, computed by Gauss quadrature with numpy.polynomial / scipy.special.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from numpy.polynomial import laguerre, legendre
from scipy import special
from scipy.integrate import solve_ivp

from ssmcore._hippo import (
    MEASURES,
    dplr,
    hippo,
    hippo_basis,
    hippo_online_coefficients,
    hippo_reconstruct,
    nplr,
    nplr_to_dense,
    rank_correction,
)
from ssmcore._initializers import s4d_inv, s4d_legs, s4d_lin

NPLR_MEASURES = ["legs", "legsd", "legt", "lagt", "fout", "fourier2", "fourier_decay", "foud"]
FOURIER = ["fout", "fourier2", "fourier_decay", "foud"]

_XG, _WG = legendre.leggauss(200)


def quad(f, a, b):
    """Gauss-Legendre quadrature of f (vectorised, integrates the last axis) over [a, b]."""
    s = 0.5 * (b - a) * _XG + 0.5 * (a + b)
    return 0.5 * (b - a) * np.sum(_WG * f(s), axis=-1)


def integrate(A, B, u, t0, t1, x0, scale_invariant=False):
    """State at t1 of x' = A x + B u(t) (LegS: x' = (A x + B u)/t), tight tolerances."""
    if scale_invariant:
        rhs = lambda t, x: (A @ x + B * u(t)) / t
    else:
        rhs = lambda t, x: A @ x + B * u(t)
    sol = solve_ivp(rhs, (t0, t1), x0, method="DOP853", rtol=1e-12, atol=1e-13)
    assert sol.success
    return sol.y[:, -1]


def smooth(s):
    return np.sin(2 * s) + 0.5 * np.cos(5 * s + 1) + 0.2 * s


# --------------------------------------------------------------------------- matrices


def test_legs_matches_the_formula_and_s4s_construction():
    N = 7
    A, B = hippo("legs", N)
    expected = np.zeros((N, N))
    for n in range(N):
        for k in range(N):
            if n > k:
                expected[n, k] = -math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1)
            elif n == k:
                expected[n, k] = -(n + 1)
    np.testing.assert_allclose(A, expected, rtol=1e-15, atol=0)
    np.testing.assert_allclose(B, np.sqrt(2 * np.arange(N) + 1.0), rtol=1e-15)
    # S4 builds it as T M T^-1: M[n, k] = -(2k+1) for n >= k, plus q on the diagonal; T = diag(sqrt(2q+1))
    q = np.arange(N, dtype=float)
    M = -(np.where(q[:, None] >= q[None, :], 2 * q[None, :] + 1, 0.0) - np.diag(q))
    T = np.diag(np.sqrt(2 * q + 1))
    np.testing.assert_allclose(A, T @ M @ np.linalg.inv(T), rtol=1e-13, atol=1e-13)
    assert A.dtype == np.float64 and A.shape == (N, N) and B.shape == (N,)


def test_legt_anchor_row_and_theta_scaling():
    A, B = hippo("legt", 4)  # S4's halved LegT: ANCHORS 2.1, row 0
    np.testing.assert_allclose(A[0], [-0.5, 0.866, -1.118, 1.323], atol=5e-4)
    np.testing.assert_allclose(B, 0.5 * np.sqrt([1.0, 3.0, 5.0, 7.0]), rtol=1e-15)
    A1, B1 = hippo("legt", 4, theta=1.0)
    np.testing.assert_allclose(A1, 2 * A, rtol=1e-15)
    np.testing.assert_allclose(B1, 2 * B, rtol=1e-15)
    # formula with R_n = sqrt(2n+1): -R_n R_k (1 if n >= k else (-1)^(n-k)) / theta
    N, theta = 6, 0.7
    R = np.sqrt(2 * np.arange(N) + 1.0)
    expected = np.array([[-R[n] * R[k] * (1 if n >= k else (-1) ** (n - k)) / theta for k in range(N)]
                         for n in range(N)])
    np.testing.assert_allclose(hippo("legt", N, theta=theta)[0], expected, rtol=1e-14)


def test_lmu_is_legt_in_another_basis():
    # LMU: A[n,k] = (2n+1)(-1 if n<k else (-1)^(n-k+1)) / theta, B[n] = (-1)^n (2n+1) / theta.
    # It equals D A_legt D^-1, D = diag((-1)^n sqrt(2n+1)), for the same window theta.
    N, theta = 8, 1.3
    A, B = hippo("lmu", N, theta=theta)
    n = np.arange(N)
    expected = np.array([[(2 * i + 1) * (-1.0 if i < k else (-1.0) ** (i - k + 1)) for k in n] for i in n]) / theta
    np.testing.assert_allclose(A, expected, rtol=1e-15)
    np.testing.assert_allclose(B, (-1.0) ** n * (2 * n + 1) / theta, rtol=1e-15)
    D = (-1.0) ** n * np.sqrt(2 * n + 1.0)
    At, Bt = hippo("legt", N, theta=theta)
    np.testing.assert_allclose(A, D[:, None] * At / D[None, :], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(B, D * Bt, rtol=1e-14)
    np.testing.assert_allclose(hippo("lmu", N)[0], hippo("lmu", N, theta=1.0)[0])  # S4: no 1/theta


def test_laguerre_matrices():
    N = 5
    A, B = hippo("lagt", N)
    np.testing.assert_array_equal(A, np.eye(N) / 2 - np.tril(np.ones((N, N))))
    np.testing.assert_array_equal(B, np.ones(N))
    np.testing.assert_array_equal(hippo("lagt", N, beta=0.3)[1], np.full(N, 0.3))
    # glagt with alpha = 0: -(1 + beta)/2 I - strict_tril(1), B = sqrt(beta) (ANCHORS 2.1)
    A, B = hippo("glagt", N, beta=0.2)
    np.testing.assert_allclose(A, -0.6 * np.eye(N) - np.tril(np.ones((N, N)), -1), rtol=1e-15)
    np.testing.assert_allclose(B, np.full(N, math.sqrt(0.2)), rtol=1e-15)


def test_fourier_matrices_follow_anchors():
    N = 8
    b = np.array([1, 0, math.sqrt(2), 0, math.sqrt(2), 0, math.sqrt(2), 0])
    skew = np.zeros((N, N))
    for n in range(1, N // 2):
        skew[2 * n, 2 * n + 1] = -n
        skew[2 * n + 1, 2 * n] = n
    A, B = hippo("fout", N)
    np.testing.assert_allclose(A, np.pi * skew - np.outer(b, b), rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(B, b)
    A, B = hippo("fourier_decay", N)
    np.testing.assert_allclose(A, np.pi * skew - 0.5 * np.outer(b, b), rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(B, 0.5 * b)
    A, B = hippo("fourier2", N)  # frequencies 2n: 2 pi n
    np.testing.assert_allclose(A, 2 * np.pi * skew - 2 * np.outer(b, b), rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(B, 2 * b)
    A, B = hippo("foud", N)
    np.testing.assert_allclose(A, 2 * np.pi * skew - 0.5 * np.eye(N), rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(B, b)
    for alias, name in [("fourier", "fout"), ("fourier_diag", "foud"), ("FOUT", "fout")]:
        np.testing.assert_array_equal(hippo(alias, N)[0], hippo(name, N)[0])
    np.testing.assert_array_equal(hippo("fout", N, theta=1.0)[0], hippo("fourier2", N)[0])


def test_legsd_is_the_normal_part_of_legs():
    A, B = hippo("legsd", 6)
    Al, Bl = hippo("legs", 6)
    np.testing.assert_allclose(A, Al + 0.5 * np.outer(Bl, Bl), rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(B, Bl / 2)


@pytest.mark.parametrize("measure", NPLR_MEASURES)
@pytest.mark.parametrize("N", [2, 6, 16])
def test_rank_correction_makes_A_normal(measure, N):
    rank = 2 if measure == "legt" else 1
    A, _ = hippo(measure, N)
    P = rank_correction(measure, N, rank=rank)
    assert P.shape == (rank, N)
    AP = A + P.T @ P
    c = {"legs": -0.5, "legsd": -0.5, "foud": -0.5}.get(measure, 0.0)  # ANCHORS 2.2
    np.testing.assert_allclose(0.5 * (AP + AP.T), c * np.eye(N), atol=1e-12)


def test_rank_correction_pads_and_refuses_too_small_a_rank():
    P = rank_correction("legs", 5, rank=3)
    np.testing.assert_allclose(P[0], np.sqrt(np.arange(5) + 0.5))
    assert np.all(P[1:] == 0)
    with pytest.raises(ValueError, match="legt.*rank >= 2"):
        rank_correction("legt", 4)
    with pytest.raises(ValueError, match="not supported"):
        rank_correction("lmu", 4)


@given(N=st.integers(1, 40), measure=st.sampled_from(sorted(MEASURES)))
def test_hippo_shapes_dtypes_and_stability(N, measure):
    if measure in FOURIER and N % 2:
        with pytest.raises(ValueError, match="even"):
            hippo(measure, N)
        return
    A, B = hippo(measure, N)
    assert A.shape == (N, N) and B.shape == (N,)
    assert A.dtype == np.float64 and B.dtype == np.float64
    assert np.all(np.isfinite(A)) and np.all(np.isfinite(B))
    # every measure is a stable (or marginally stable) system: no eigenvalue in Re > 0
    assert np.max(np.linalg.eigvals(A).real) < 1e-8 * max(1.0, np.abs(A).max())


# ------------------------------------------------------------------------------ NPLR


def test_nplr_legs_n8_anchor():
    Lambda, P, B, V = nplr("legs", 8)  # ANCHORS 2.2, an independent number
    np.testing.assert_allclose(Lambda.real, -0.5, atol=1e-14)
    np.testing.assert_allclose(-Lambda.imag, [19.8574, 5.3542, 1.9578, 0.4275], atol=1e-4)
    assert Lambda.shape == (4,) and P.shape == (1, 4) and B.shape == (4,) and V.shape == (8, 4)
    assert all(x.dtype == np.complex128 for x in (Lambda, P, B, V))
    np.testing.assert_array_equal(s4d_legs(8), Lambda)


def _check_nplr(measure, N, rank, tol, full=True):
    Lambda, P, B, V = nplr(measure, N, rank=rank)
    A, b = hippo(measure, N)
    A2, b2 = nplr_to_dense(Lambda, P, B, V)
    assert np.linalg.norm(A2 - A) <= tol * np.linalg.norm(A)
    assert np.linalg.norm(b2 - b) <= tol * np.linalg.norm(b)
    assert np.all(Lambda.imag <= 1e-12) and np.all(np.diff(Lambda.imag) >= -1e-9)
    if not full:
        return Lambda, P, B, V
    # the full form on the conjugate-extended space: Vc (diag(Lc) - Pc Pc^*) Vc^*
    Vc = np.concatenate([V, V.conj()], axis=1)
    Lc = np.concatenate([Lambda, Lambda.conj()])
    Pc = np.concatenate([P, P.conj()], axis=1).T  # (N, rank)
    np.testing.assert_allclose(Vc.conj().T @ Vc, np.eye(N), atol=tol * 10)
    full = Vc @ (np.diag(Lc) - Pc @ Pc.conj().T) @ Vc.conj().T
    np.testing.assert_allclose(full.imag, 0, atol=tol * np.abs(A).max() * 10)
    assert np.linalg.norm(full.real - A) <= tol * np.linalg.norm(A)
    # phase convention: B real >= 0
    assert np.all(np.abs(B.imag) <= 1e-12 * np.abs(B).max()) and np.all(B.real >= 0)
    return Lambda, P, B, V


def test_nplr_reconstructs_legs_at_n1024():
    Lambda, _, _, _ = _check_nplr("legs", 1024, 1, 1e-10, full=False)
    np.testing.assert_allclose(Lambda.real, -0.5, atol=1e-12)


@pytest.mark.parametrize("measure", NPLR_MEASURES)
def test_nplr_reconstructs_every_measure(measure):
    _check_nplr(measure, 128, 2 if measure == "legt" else 1, 1e-11)


@given(N=st.integers(1, 24).map(lambda k: 2 * k), measure=st.sampled_from(NPLR_MEASURES), extra=st.integers(0, 1))
def test_nplr_reconstructs_random_sizes(N, measure, extra):
    _check_nplr(measure, N, (2 if measure == "legt" else 1) + extra, 1e-12)


def test_nplr_spectrum_is_the_spectrum_of_the_normal_part():
    for measure in ["legs", "legt", "lagt"]:
        N = 20
        rank = 2 if measure == "legt" else 1
        A, _ = hippo(measure, N)
        P = rank_correction(measure, N, rank=rank)
        ev = np.linalg.eigvals(A + P.T @ P)  # general eigensolver, an independent route
        ev = ev[np.argsort(ev.imag)][: N // 2]
        np.testing.assert_allclose(nplr(measure, N, rank=rank)[0], ev, atol=1e-9)


def test_nplr_fourier_zero_mode_is_s4s_pair():
    # S4 replaces the kept zero-eigenvalue vector by e0/sqrt2 + i e1/sqrt2 (ANCHORS 2.2)
    Lambda, P, B, V = nplr("fout", 10)
    assert Lambda[-1] == 0 and np.all(np.abs(Lambda[:-1]) > 1)
    expected = np.zeros(10, complex)
    expected[0], expected[1] = 2**-0.5, 1j * 2**-0.5
    np.testing.assert_allclose(V[:, -1], expected, atol=1e-15)
    np.testing.assert_allclose(B[-1], 2**-0.5, atol=1e-15)


def test_nplr_bad_input():
    with pytest.raises(ValueError, match="even"):
        nplr("legs", 7)
    with pytest.raises(ValueError, match="not supported"):
        nplr("glagt", 8)
    with pytest.raises(ValueError, match="rank >= 2"):
        nplr("legt", 8)
    with pytest.raises(ValueError, match="Lambda has shape"):
        nplr_to_dense(np.zeros(3), np.zeros((1, 4)), np.zeros(4), np.zeros((8, 4)))


# ------------------------------------------------------------------------------ DPLR


def test_dplr_diagonal_inits_match_s4d():
    H = 3
    Lambda, P, B = dplr("lin", 16, H=H, P_scale=0.0)
    np.testing.assert_allclose(Lambda, np.broadcast_to(s4d_lin(16), (H, 8)))
    np.testing.assert_allclose(Lambda[0], -0.5 - 1j * np.pi * np.arange(8), rtol=1e-15)
    assert np.all(P == 0) and P.shape == (1, H, 8)
    np.testing.assert_array_equal(B, np.ones((H, 8)))
    Lambda, _, _ = dplr("inv", 64)
    np.testing.assert_allclose(Lambda[0], s4d_inv(64))
    # ANCHORS 2.3: S4D-Inv at N = 64 (imaginary parts 1283.43, 414.23, 240.39, ..., 0.3234)
    np.testing.assert_allclose(-Lambda[0, [0, 1, 2, -1]].imag, [1283.43, 414.23, 240.39, 0.3234], atol=5e-3)
    Lambda, _, _ = dplr("legs", 16)
    np.testing.assert_allclose(Lambda[0], nplr("legs", 16)[0], atol=1e-12)
    Lambda, _, _ = dplr("real", 8)
    np.testing.assert_array_equal(Lambda[0], [-1, -2, -3, -4])
    n = np.arange(4)
    np.testing.assert_allclose(dplr("inv2", 8)[0][0].imag, -8 / np.pi * (8 / (n + 1) - 1))
    np.testing.assert_allclose(dplr("quad", 8)[0][0].imag, -((2 * n + 1) ** 2) / np.pi)


def test_dplr_B_and_P_options():
    N, H = 12, 2
    M = N // 2
    n = np.arange(M)
    _, _, B = dplr("lin", N, H=H, B_init="alternating")
    np.testing.assert_array_equal(B[0], [1, -1, 1, -1, 1, -1])
    np.testing.assert_allclose(dplr("lin", N, B_init="unit-cw")[2][0], np.exp(-2j * np.pi * n / N))
    np.testing.assert_allclose(dplr("lin", N, B_init="unit-ccw")[2][0], np.exp(2j * np.pi * n / N))
    _, P_legs, B_legs, _ = nplr("legs", N, rank=2)
    Lambda, P, B = dplr("legs", N, rank=2, H=H, B_init="legs", B_scale=3.0)
    np.testing.assert_allclose(B, np.broadcast_to(1.5 * B_legs, (H, M)))  # S4 halves it
    np.testing.assert_allclose(P, np.broadcast_to(P_legs[:, None], (2, H, M)))
    Lambda, _, B = dplr("inv", N, H=H, normalize=True)
    np.testing.assert_allclose(2 * np.sum(np.abs(B / Lambda) ** 2, axis=-1), 1.0)


def test_dplr_randomness_is_seeded_and_signs_hold():
    kw = dict(H=4, rank=2, real_random=True, imag_random=True, B_init="random")
    a = dplr("rand", 16, rng=7, **kw)
    b = dplr("rand", 16, rng=np.random.default_rng(7), **kw)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], dplr("rand", 16, rng=8, **kw)[0])
    for init in ["lin", "inv", "inv2", "quad", "rand", "real", "legs"]:
        Lambda, P, B = dplr(init, 16, H=4, rng=0, real_random=True, imag_random=True)
        assert Lambda.shape == (4, 8) and P.shape == (1, 4, 8) and B.shape == (4, 8)
        assert np.all(Lambda.real <= 0) and np.all(Lambda.imag <= 0)
    Lambda, P, B = dplr("lin", 8, H=5000, rank=1, rng=1, B_init="random")
    assert abs(np.mean(np.abs(B) ** 2) - 1) < 0.05 and abs(np.mean(np.abs(P) ** 2) - 1) < 0.05


def test_dplr_bad_input():
    with pytest.raises(ValueError, match="unknown init"):
        dplr("nope", 8)
    with pytest.raises(ValueError, match="unknown B_init"):
        dplr("lin", 8, B_init="nope")
    with pytest.raises(ValueError, match="even"):
        dplr("lin", 9)
    with pytest.raises(ValueError, match="real_scale"):
        dplr("lin", 8, real_scale=-1.0)
    with pytest.raises(TypeError, match="rng"):
        dplr("lin", 8, rng="seed")


# --------------------------------------------- projection: state == quadrature projection


def _legendre(N, x):
    return legendre.legvander(x, N - 1).T  # (N, len(x))


def test_projection_legs():
    # LegS: x' = (A x + B u)/t keeps x_n(t) = (1/t) int_0^t u(s) sqrt(2n+1) P_n(2s/t - 1) ds
    N = 16
    R = np.sqrt(2 * np.arange(N) + 1.0)[:, None]
    proj = lambda t: quad(lambda s: smooth(s) * R * _legendre(N, 2 * s / t - 1), 0.0, t) / t
    A, B = hippo("legs", N)
    x = integrate(A, B, smooth, 0.5, 3.0, proj(0.5), scale_invariant=True)
    np.testing.assert_allclose(x, proj(3.0), atol=1e-11)
    s = np.linspace(0, 3, 41)
    np.testing.assert_allclose(hippo_reconstruct("legs", x, s, t=3.0), smooth(s), atol=1e-3)


@pytest.mark.parametrize("theta", [1.0, 2.0])
def test_projection_legt_window_is_theta(theta):
    # x_n(t) = (1/theta) int_{t-theta}^t u(s) sqrt(2n+1) P_n(2(s-t)/theta + 1) ds: theta = 2 is S4's LegT
    N = 24
    R = np.sqrt(2 * np.arange(N) + 1.0)[:, None]
    proj = lambda t: quad(lambda s: smooth(s) * R * _legendre(N, 2 * (s - t) / theta + 1), t - theta, t) / theta
    A, B = hippo("legt", N, theta=theta)
    x = integrate(A, B, smooth, 1.0, 2.0, proj(1.0))
    np.testing.assert_allclose(x, proj(2.0), atol=1e-10)
    s = np.linspace(2.0 - theta, 2.0, 41)
    np.testing.assert_allclose(hippo_reconstruct("legt", x, s, t=2.0, theta=theta), smooth(s), atol=1e-9)
    if theta == 2.0:
        np.testing.assert_array_equal(A, hippo("legt", N)[0])  # the default


def test_projection_lmu():
    # u(t - r theta) ~ sum_n m_n P_n(2r - 1): m_n = (2n+1)/theta int u(s) P_n(2(t-s)/theta - 1) ds
    N, theta = 20, 1.0
    w = (2 * np.arange(N) + 1.0)[:, None]
    proj = lambda t: quad(lambda s: smooth(s) * w * _legendre(N, 2 * (t - s) / theta - 1), t - theta, t) / theta
    A, B = hippo("lmu", N)
    x = integrate(A, B, smooth, 1.0, 2.0, proj(1.0))
    np.testing.assert_allclose(x, proj(2.0), atol=1e-9)
    s = np.linspace(1.0, 2.0, 41)
    np.testing.assert_allclose(hippo_reconstruct("lmu", x, s, t=2.0), smooth(s), atol=1e-8)


def bump(s):
    """Zero before s = 0, smooth start (so the history is known exactly)."""
    return np.where(s > 0, s**3 * np.exp(-s) * np.sin(s), 0.0)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_projection_lagt(beta):
    # x_n(t) = beta int_{-inf}^t u(s) L_n(t - s) e^{-(t-s)/2} ds (Laguerre functions, L^2 projection)
    N, t1 = 24, 6.0
    proj = beta * quad(lambda s: bump(s) * laguerre.lagvander(t1 - s, N - 1).T * np.exp(-(t1 - s) / 2), 0.0, t1)
    A, B = hippo("lagt", N, beta=beta)
    x = integrate(A, B, bump, 0.0, t1, np.zeros(N))
    np.testing.assert_allclose(x, proj, atol=1e-11)


@pytest.mark.parametrize(("alpha", "beta"), [(0.0, 0.01), (0.3, 0.2), (-0.4, 0.5)])
def test_projection_glagt(alpha, beta):
    # x_n = kappa/ell_n int u(t - tau) L_n^(alpha)(tau) e^{-(1+beta) tau/2} dtau (generalised Laguerre)
    N, t1 = 16, 5.0
    n = np.arange(N)[:, None]
    ell = np.sqrt(special.gamma(n[:, 0] + alpha + 1) / special.factorial(n[:, 0]))
    kappa = beta ** ((1 - alpha) / 2) / math.sqrt(special.gamma(1 - alpha))
    integrand = lambda s: bump(s) * special.eval_genlaguerre(n, alpha, t1 - s) * np.exp(-(1 + beta) * (t1 - s) / 2)
    proj = kappa / ell * quad(integrand, 0.0, t1)
    A, B = hippo("glagt", N, alpha=alpha, beta=beta)
    x = integrate(A, B, bump, 0.0, t1, np.zeros(N))
    np.testing.assert_allclose(x, proj, atol=1e-11)
    # the basis inverts the projection: reconstruct the exact coefficients of many terms
    xb = kappa / ell * quad(integrand, 0.0, t1)
    s = np.linspace(0.5, t1 - 0.5, 5)
    approx = hippo_reconstruct("glagt", xb, s, t=t1, alpha=alpha, beta=beta)
    assert np.max(np.abs(approx - bump(s))) < 0.2  # slow (algebraic) Laguerre convergence at N = 16


def test_lagt_reconstruction_converges():
    g = lambda s: np.exp(-((s - 3.0) ** 2))
    s = np.linspace(0, 6, 121)
    errors = []
    for N in (16, 64, 128):
        A, B = hippo("lagt", N)
        x = quad(lambda r: g(r) * laguerre.lagvander(6.0 - r, N - 1).T * np.exp(-(6.0 - r) / 2), -40.0, 6.0)
        errors.append(np.max(np.abs(hippo_reconstruct("lagt", x, s, t=6.0) - g(s))))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3


@pytest.mark.parametrize(("measure", "theta"), [("fout", 2.0), ("fourier2", 1.0), ("fout", 3.0)])
def test_projection_fourier(measure, theta):
    # FouT on the window [t - theta, t]: x = (1/theta) int u(s) phi(t - s) ds with
    # phi = [1, 0, sqrt2 cos(2 pi tau/theta), sqrt2 sin(2 pi tau/theta), ...]. The ODE
    # estimates u(t - theta) from the state, exact for theta-periodic smooth u.
    N = 32
    u = lambda s: np.exp(np.cos(2 * np.pi * s / theta)) + np.sin(4 * np.pi * s / theta + 0.3)
    k = np.arange(N // 2)[:, None]

    def phi(tau):
        G = np.empty((N,) + tau.shape)
        G[0::2] = math.sqrt(2) * np.cos(2 * np.pi * k * tau / theta)
        G[1::2] = math.sqrt(2) * np.sin(2 * np.pi * k * tau / theta)
        G[0] = 1.0
        return G

    proj = lambda t: quad(lambda s: u(s) * phi(t - s), t - theta, t) / theta
    A, B = hippo(measure, N, theta=theta)
    x = integrate(A, B, u, 1.0, 2.7, proj(1.0))
    np.testing.assert_allclose(x, proj(2.7), atol=1e-10)
    s = np.linspace(2.7 - theta, 2.7, 41)
    np.testing.assert_allclose(hippo_reconstruct(measure, x, s, t=2.7, theta=theta), u(s), atol=1e-10)


# ------------------------------------------------------------------------------ basis


@pytest.mark.parametrize(
    ("measure", "params", "window"),
    [("legs", {}, (0.0, 2.5)), ("legt", {}, (0.5, 2.5)), ("legt", {"theta": 0.3}, (2.2, 2.5)),
     ("fout", {}, (0.5, 2.5)), ("fourier2", {"theta": 0.8}, (1.7, 2.5))],
)
def test_windowed_bases_are_orthonormal_and_vanish_outside(measure, params, window):
    N, t = 10, 2.5
    lo, hi = window

    def outer(s):
        g = hippo_basis(measure, N, s, t=t, **params)
        return g[:, None] * g[None]

    gram = quad(outer, lo, hi)
    gram /= hi - lo  # the uniform probability measure on the window
    keep = [i for i in range(N) if not (measure.startswith("fou") and i == 1)]  # s0 = sin(0) is 0
    np.testing.assert_allclose(gram[np.ix_(keep, keep)], np.eye(len(keep)), atol=1e-12)
    outside = np.array([lo - 0.1, hi + 0.1])
    assert np.all(hippo_basis(measure, N, outside, t=t, **params) == 0)


def test_laguerre_basis_is_orthonormal_and_finite_far_away():
    N = 12
    x, w = laguerre.laggauss(60)  # int_0^inf e^{-tau} f(tau) dtau
    G = hippo_basis("lagt", N, 5.0 - x, t=5.0)
    np.testing.assert_allclose((G * np.exp(x)) @ (w * G).T, np.eye(N), atol=1e-11)
    tau = np.array([0.0, 0.7, 13.0, 60.0])
    np.testing.assert_allclose(hippo_basis("lagt", N, -tau, t=0.0, beta=2.0),
                               laguerre.lagvander(tau, N - 1).T * np.exp(-tau / 2) / 2.0, rtol=1e-10, atol=1e-15)
    far = hippo_basis("lagt", 256, np.array([-1e4, -np.inf]), t=0.0)
    assert np.all(np.isfinite(far)) and np.all(np.abs(far) <= 1.0)


def test_basis_shapes_nan_and_errors():
    assert hippo_basis("legs", 4, np.zeros((2, 3)), t=1.0).shape == (4, 2, 3)
    assert hippo_basis("legt", 4, 0.5, t=1.0).shape == (4,)
    assert hippo_reconstruct("legs", np.ones((5, 4)), np.linspace(0, 1, 7), t=1.0).shape == (5, 7)
    assert np.all(np.isnan(hippo_basis("legs", 3, [np.nan], t=1.0)))
    with pytest.raises(ValueError, match="not supported"):
        hippo_basis("foud", 4, [0.0], t=1.0)
    with pytest.raises(ValueError, match="t must be finite and > 0"):
        hippo_basis("legs", 4, [0.0], t=0.0)
    with pytest.raises(TypeError, match="t must be a real number"):
        hippo_basis("legs", 4, [0.0], t="1")
    with pytest.raises(TypeError, match="complex|real floating"):
        hippo_reconstruct("legs", np.ones(3, complex), [0.0], t=1.0)


# ------------------------------------------------------------------ online coefficients


def _staircase_legs_projection(u, N, k):
    """Exact LegS projection on [0, k] of the staircase u(s) = u_j on (j-1, j]."""
    xg, wg = legendre.leggauss(20)
    total = np.zeros(N)
    R = np.sqrt(2 * np.arange(N) + 1.0)[:, None]
    for j in range(1, k + 1):
        s = 0.5 * xg + (j - 0.5)
        total += 0.5 * np.sum(wg * u[j - 1] * R * _legendre(N, 2 * s / k - 1), axis=1)
    return total / k


def test_online_legs_zoh_is_the_exact_projection_of_the_staircase(rng):
    N, L = 10, 30
    u = rng.standard_normal(L)
    x = hippo_online_coefficients("legs", u, N, method="zoh")
    assert x.shape == (L, N)
    for k in (1, 2, 9, L):
        np.testing.assert_allclose(x[k - 1], _staircase_legs_projection(u, N, k), atol=1e-13)


def test_online_legs_bilinear_is_hippos_step():
    # HiPPO/S4 (HiPPOScale): c_k = (I - A/2k)^-1 (I + A/2k) c_{k-1} + (I - A/2k)^-1 B/k u_k
    N = 6
    A, B = hippo("legs", N)
    u = np.array([0.3, -1.0, 2.0, 0.5])
    c = np.zeros(N)
    for k, uk in enumerate(u, start=1):
        M = np.eye(N) - A / (2 * k)
        c = np.linalg.solve(M, (np.eye(N) + A / (2 * k)) @ c + B / k * uk)
    np.testing.assert_allclose(hippo_online_coefficients("legs", u, N)[-1], c, rtol=1e-13, atol=1e-14)


def test_online_legs_reconstructs_a_smooth_signal():
    L = 1000
    t = np.arange(1, L + 1) / L
    u = np.sin(6 * t) + t**2
    for method, tol in (("bilinear", 1e-2), ("zoh", 2e-3), ("backward", 2e-2)):
        x = hippo_online_coefficients("legs", u, 24, method=method)
        shift = 0.5 / L if method == "zoh" else 0.0  # a zoh sample stands for its interval's midpoint
        assert np.max(np.abs(hippo_reconstruct("legs", x[-1], t - shift, t=1.0) - u)) < tol


def test_online_lti_zoh_matches_the_ode(rng):
    # zoh is exact for the staircase input: compare with an ODE solve per interval
    N, L, dt, theta = 8, 12, 0.1, 0.5
    u = rng.standard_normal(L)
    for measure in ("legt", "lagt", "fout"):
        A, B = hippo(measure, N, **({} if measure == "lagt" else {"theta": theta}))
        x = np.zeros(N)
        for uk in u:
            x = integrate(A, B, lambda s, uk=uk: uk, 0.0, dt, x)
        extra = {} if measure == "lagt" else {"theta": theta}
        got = hippo_online_coefficients(measure, u, N, dt=dt, method="zoh", **extra)
        np.testing.assert_allclose(got[-1], x, atol=1e-10)


def test_online_legt_sliding_window_reconstruction():
    dt, theta = 1e-3, 0.5
    t = np.arange(1, 1501) * dt
    u = np.sin(6 * t) + t**2
    x = hippo_online_coefficients("legt", u, 24, dt=dt, theta=theta)
    s = t[t >= t[-1] - theta]
    err = hippo_reconstruct("legt", x[-1], s - dt / 2, t=t[-1] - dt / 2, theta=theta) - (np.sin(6 * s) + s**2)
    assert np.max(np.abs(err)) < 5e-3


def test_online_shapes_batches_and_edges(rng):
    u = rng.standard_normal((2, 3, 9))
    x = hippo_online_coefficients("legt", u, 5, dt=0.1)
    assert x.shape == (2, 3, 9, 5)
    np.testing.assert_allclose(x[1, 2], hippo_online_coefficients("legt", u[1, 2], 5, dt=0.1), atol=1e-15)
    for method in ("bilinear", "zoh", "forward", "backward"):
        x = hippo_online_coefficients("legs", u, 5, method=method)
        assert x.shape == (2, 3, 9, 5)
        np.testing.assert_allclose(x[0, 1], hippo_online_coefficients("legs", u[0, 1], 5, method=method), atol=1e-14)
    assert hippo_online_coefficients("legs", np.zeros(0), 4).shape == (0, 4)
    one = hippo_online_coefficients("legs", [2.0], 4, method="zoh")
    np.testing.assert_allclose(one, [[2.0, 0, 0, 0]], atol=1e-15)  # projection of a constant
    assert np.all(np.isnan(hippo_online_coefficients("lagt", [1.0, np.nan, 1.0], 3, dt=0.1)[1:]))
    with pytest.raises(ValueError, match="dt is required"):
        hippo_online_coefficients("legt", np.ones(4), 4)
    with pytest.raises(ValueError, match="unknown method"):
        hippo_online_coefficients("legs", np.ones(4), 4, method="rk4")
    with pytest.raises(ValueError, match="dt must be > 0"):
        hippo_online_coefficients("legt", np.ones(4), 4, dt=-1.0)
    with pytest.raises(ValueError, match="expected"):
        hippo_online_coefficients("legs", 1.0, 4)


# ---------------------------------------------------------------------- bad arguments


def test_hippo_bad_input():
    with pytest.raises(ValueError, match="unknown measure 'nope'.*'legs'.*'fourier'"):
        hippo("nope", 4)
    with pytest.raises(ValueError, match="N must be >= 1"):
        hippo("legs", 0)
    with pytest.raises(TypeError, match="N must be an integer"):
        hippo("legs", 2.5)
    with pytest.raises(TypeError, match="N must be an integer"):
        hippo("legs", True)
    with pytest.raises(ValueError, match="N must be even for measure 'fout'"):
        hippo("fourier", 5)
    with pytest.raises(TypeError, match="'legs' takes no parameters; got unexpected theta"):
        hippo("legs", 4, theta=1.0)
    with pytest.raises(ValueError, match="theta must be finite and > 0"):
        hippo("legt", 4, theta=0.0)
    with pytest.raises(ValueError, match="alpha must be in"):
        hippo("glagt", 4, alpha=1.0)
    with pytest.raises(TypeError, match="beta must be a real number"):
        hippo("lagt", 4, beta="1")
    A, _ = hippo("legt", 1)  # N = 1 works
    np.testing.assert_array_equal(A, [[-0.5]])
