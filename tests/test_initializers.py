"""Diagonal inits (S4D, Mamba, Mamba-2, LRU), step-size inits and inverse_softplus.

Formulas and numbers come from ANCHORS.md (§1.4, §1.6, §2.3, §6) and the papers; the
distribution checks use scipy.stats as the independent reference.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy import stats

from ssmcore._hippo import nplr
from ssmcore._initializers import (
    dt_init,
    inverse_softplus,
    lru_lambda,
    lru_ring_init,
    mamba2_A_log,
    mamba_A_log,
    mamba_dt_bias,
    s4d_inv,
    s4d_legs,
    s4d_lin,
    s4d_real,
)


def softplus(x):
    return np.logaddexp(0.0, x)  # numpy's stable log(1 + e^x), independent of the code under test


# ------------------------------------------------------------------------------ S4D


def test_s4d_lin():
    lam = s4d_lin(10)
    assert lam.shape == (5,) and lam.dtype == np.complex128
    np.testing.assert_array_equal(lam.real, -0.5)
    np.testing.assert_allclose(lam.imag, -np.pi * np.arange(5), rtol=1e-15)


def test_s4d_inv_anchor_values():
    lam = s4d_inv(64)  # ANCHORS 2.3: N = 64 -> 1283.43, 414.23, 240.39, ..., 0.3234
    assert lam.shape == (32,) and lam.dtype == np.complex128
    np.testing.assert_array_equal(lam.real, -0.5)
    np.testing.assert_allclose(-lam.imag[:3], [1283.43, 414.23, 240.39], atol=5e-3)
    np.testing.assert_allclose(-lam.imag[-1], 0.3234, atol=5e-5)
    n = np.arange(4)
    np.testing.assert_allclose(s4d_inv(8).imag, -(8 / np.pi) * (8 / (2 * n + 1) - 1), rtol=1e-15)


def test_s4d_legs_is_the_nplr_spectrum():
    np.testing.assert_allclose(-s4d_legs(8).imag, [19.8574, 5.3542, 1.9578, 0.4275], atol=1e-4)  # ANCHORS 2.2
    np.testing.assert_array_equal(s4d_legs(32), nplr("legs", 32)[0])
    # S4D-Inv is built to follow the LegS spectrum's asymptotics: same order of magnitude
    assert 0.5 < s4d_legs(64).imag[0] / s4d_inv(64).imag[0] < 2


def test_s4d_real_and_mamba_A_log():
    np.testing.assert_array_equal(s4d_real(5), [-1, -2, -3, -4, -5])
    assert s4d_real(1).dtype == np.float64
    A_log = mamba_A_log(3, 16)
    assert A_log.shape == (3, 16) and A_log.dtype == np.float64
    np.testing.assert_allclose(A_log[2], np.log(np.arange(1, 17)), rtol=1e-15)
    np.testing.assert_allclose(-np.exp(A_log), np.broadcast_to(s4d_real(16), (3, 16)), rtol=1e-14)


def test_mamba2_A_log_range_and_seed():
    A_log = mamba2_A_log(4000, rng=3)
    assert A_log.shape == (4000,) and A_log.dtype == np.float64
    A = np.exp(A_log)
    assert A.min() >= 1 and A.max() <= 16
    assert stats.kstest((A - 1) / 15, "uniform").pvalue > 1e-3  # uniform in [1, 16] before the log
    np.testing.assert_array_equal(A_log, mamba2_A_log(4000, rng=np.random.default_rng(3)))
    np.testing.assert_allclose(np.exp(mamba2_A_log(3, (2.0, 2.0))), 2.0)
    with pytest.raises(ValueError, match="0 < lo <= hi"):
        mamba2_A_log(3, (0.0, 1.0))
    with pytest.raises(ValueError, match="0 < lo <= hi"):
        mamba2_A_log(3, (5.0, 1.0))
    with pytest.raises(TypeError, match="pair"):
        mamba2_A_log(3, 4.0)


# ------------------------------------------------------------------------------ LRU


def test_lru_ring_init_follows_the_formula():
    r_min, r_max, max_phase = 0.4, 0.95, 1.5
    nu_log, theta_log, gamma_log = lru_ring_init(6, r_min, r_max, max_phase, rng=11)
    g = np.random.default_rng(11)  # same draws, formula from ANCHORS §6
    u1, u2 = g.random(6), g.random(6)
    nu = -0.5 * np.log(u1 * (r_max**2 - r_min**2) + r_min**2)
    np.testing.assert_allclose(nu_log, np.log(nu), rtol=1e-14)
    np.testing.assert_allclose(theta_log, np.log(max_phase * u2), rtol=1e-14)
    lam = lru_lambda(nu_log, theta_log)
    np.testing.assert_allclose(lam, np.exp(-nu + 1j * max_phase * u2), rtol=1e-14)
    np.testing.assert_allclose(np.exp(gamma_log), np.sqrt(1 - np.abs(lam) ** 2), rtol=1e-13)


def test_lru_ring_init_distribution():
    r_min, r_max = 0.5, 0.99
    nu_log, theta_log, gamma_log = lru_ring_init(20000, r_min, r_max, rng=0)
    lam = lru_lambda(nu_log, theta_log)
    r2 = np.abs(lam) ** 2
    assert r2.min() >= r_min**2 and r2.max() <= r_max**2
    # uniform in area: |lambda|^2 ~ U[r_min^2, r_max^2]; phase ~ U[0, 6.28)
    assert stats.kstest((r2 - r_min**2) / (r_max**2 - r_min**2), "uniform").pvalue > 1e-3
    phase = np.exp(theta_log)
    assert phase.min() >= 0 and phase.max() < 6.28
    assert stats.kstest(phase / 6.28, "uniform").pvalue > 1e-3
    assert lam.dtype == np.complex128 and nu_log.shape == theta_log.shape == gamma_log.shape == (20000,)


def test_lru_gamma_is_accurate_near_the_unit_circle():
    nu_log, _, gamma_log = lru_ring_init(50, 0.999999, 0.999999, rng=0)
    nu = np.exp(nu_log)
    np.testing.assert_allclose(nu, -math.log(0.999999), rtol=1e-9)
    # 1 - |lambda|^2 = 1 - r^2 = 1.999999e-6 exactly; the naive 1 - exp(-2 nu) loses ~10 digits
    np.testing.assert_allclose(np.exp(2 * gamma_log), 1 - 0.999999**2, rtol=1e-9)


def test_lru_ring_init_seed_and_errors():
    a = lru_ring_init(8, rng=5)
    b = lru_ring_init(8, rng=np.random.default_rng(5))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert all(x.shape == (0,) for x in lru_ring_init(0))
    with pytest.raises(ValueError, match="r_min <= r_max <= 1"):
        lru_ring_init(4, r_min=0.9, r_max=0.5)
    with pytest.raises(ValueError, match="r_min <= r_max <= 1"):
        lru_ring_init(4, r_max=1.5)
    with pytest.raises(ValueError, match="max_phase must be > 0"):
        lru_ring_init(4, max_phase=0.0)
    with pytest.raises(TypeError, match="rng"):
        lru_ring_init(4, rng="x")
    with pytest.raises(TypeError, match="rng"):
        lru_ring_init(4, rng=np.random.RandomState(0))


# ------------------------------------------------------------------------- step sizes


def test_dt_init_is_log_uniform():
    dt = dt_init(20000, 1e-3, 1e-1, rng=1)
    assert dt.shape == (20000,) and dt.dtype == np.float64
    assert dt.min() >= 1e-3 and dt.max() <= 1e-1
    assert stats.kstest((np.log(dt) - math.log(1e-3)) / (math.log(1e-1) - math.log(1e-3)), "uniform").pvalue > 1e-3
    np.testing.assert_array_equal(dt, dt_init(20000, rng=np.random.default_rng(1)))
    assert dt_init((4, 8), rng=0).shape == (4, 8)
    np.testing.assert_allclose(dt_init(5, 1e-4, 1.0, deterministic=True), np.logspace(-4, 0, 5), rtol=1e-14)
    np.testing.assert_allclose(dt_init(3, 0.01, 0.01, rng=0), 0.01, rtol=1e-15)


def test_dt_init_errors():
    with pytest.raises(ValueError, match="0 < dt_min <= dt_max"):
        dt_init(4, dt_min=0.1, dt_max=0.01)
    with pytest.raises(ValueError, match="0 < dt_min <= dt_max"):
        dt_init(4, dt_min=0.0)
    with pytest.raises(ValueError, match="finite"):
        dt_init(4, dt_max=np.inf)
    with pytest.raises(TypeError, match="H must be an integer"):
        dt_init(2.5)
    with pytest.raises(ValueError, match="H must be >= 0"):
        dt_init(-1)


EPS = np.finfo(np.float64).eps


@given(st.floats(-30.0, 50.0))
def test_inverse_softplus_inverts_softplus(x):
    # to rounding: softplus(x) carries a relative error ~eps, amplified by dx/dy = 1/sigmoid(x)
    y = softplus(x)
    sigmoid = 1.0 / (1.0 + math.exp(-x))
    assert abs(inverse_softplus(y) - x) <= 4 * EPS * (y / sigmoid + abs(x))


@given(st.floats(1e-8, 50.0))
def test_softplus_inverts_inverse_softplus(y):
    # to rounding: x = inverse_softplus(y) carries an absolute error ~eps |x|, times dy/dx = sigmoid(x)
    x = inverse_softplus(y)
    assert abs(softplus(x) - y) <= 4 * EPS * (y + abs(x) / (1.0 + math.exp(-x)))


def test_inverse_softplus_values_and_edges():
    # log(expm1(x)) is an independent exact formula for moderate x
    x = np.array([1e-8, 1e-4, 0.3, math.log(2.0), 1.0, 20.0, 50.0])
    np.testing.assert_allclose(inverse_softplus(x), np.log(np.expm1(x)), rtol=1e-15)
    assert inverse_softplus(50.0) == 50.0
    assert inverse_softplus(np.float32(0.5)).dtype == np.float32
    assert inverse_softplus([0.5, 1.0]).dtype == np.float64
    with np.errstate(invalid="ignore"):
        out = inverse_softplus([0.0, -1.0, np.nan, np.inf])
    assert out[0] == -np.inf and np.isnan(out[1]) and np.isnan(out[2]) and out[3] == np.inf
    with pytest.raises(TypeError, match="real floating"):
        inverse_softplus(np.array([1j]))


def test_mamba_dt_bias():
    bias = mamba_dt_bias(5000, rng=2)
    assert bias.shape == (5000,) and bias.dtype == np.float64
    dt = softplus(bias)
    assert dt.min() >= 1e-3 * (1 - 1e-12) and dt.max() <= 0.1 * (1 + 1e-12)
    # the same draws as dt_init, then the inverse softplus (ANCHORS §1.4)
    np.testing.assert_allclose(dt, dt_init(5000, 1e-3, 0.1, rng=2), rtol=1e-12)
    floored = softplus(mamba_dt_bias(2000, dt_min=1e-6, dt_max=1e-3, dt_init_floor=1e-4, rng=0))
    assert floored.min() >= 1e-4 * (1 - 1e-12) and np.mean(np.isclose(floored, 1e-4)) > 0.4
    with pytest.raises(ValueError, match="dt_init_floor must be >= 0"):
        mamba_dt_bias(4, dt_init_floor=-1.0)
    with pytest.raises(ValueError, match="0 < dt_min <= dt_max"):
        mamba_dt_bias(4, dt_min=0.2, dt_max=0.1)


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fn", [s4d_lin, s4d_inv, s4d_legs])
def test_complex_inits_need_an_even_N(fn):
    with pytest.raises(ValueError, match="N must be even"):
        fn(7)
    with pytest.raises(ValueError, match="N must be >= 2"):
        fn(0)
    with pytest.raises(TypeError, match="N must be an integer"):
        fn(4.0)
    assert fn(2).shape == (1,)


def test_integer_size_errors():
    with pytest.raises(ValueError, match="N must be >= 1"):
        s4d_real(0)
    with pytest.raises(TypeError, match="D must be an integer"):
        mamba_A_log(1.5, 4)
    with pytest.raises(TypeError, match="N must be an integer"):
        lru_ring_init("4")
