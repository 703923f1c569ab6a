"""Convolution mode: SSM kernels (diagonal, DPLR, dense) and FFT convolution.

Independent sources: plain-loop recurrences written here, scipy.signal (cont2discrete,
dimpulse, fftconvolve), np.convolve, dense matrix powers, and S4's legs NPLR built
here from the formulas of REFERENCE.md section 2.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st
from vjp_check import check_vjp

import ssmcore
from ssmcore._convolution import dplr_c_tilde, fft_conv, ssm_kernel_dense, ssm_kernel_diag, ssm_kernel_dplr

METHODS = ["zoh", "bilinear", "zoh_euler"]


# --------------------------------------------------------------------------- helpers


def _modes(rng, shape, real_range=(0.1, 1.0), imag_scale=3.0):
    return -rng.uniform(*real_range, shape) + 1j * rng.normal(0.0, imag_scale, shape)


def _cnormal(rng, shape):
    return rng.normal(size=shape) + 1j * rng.normal(size=shape)


def _disc_closed_form(A, B, dt, method):
    """Textbook diagonal discretisation (no phi1 series; A is kept away from 0 here)."""
    x = dt * A
    if method == "zoh":
        Ad = np.exp(x)
        return Ad, (Ad - 1.0) / A * B
    if method == "bilinear":
        return (1 + x / 2) / (1 - x / 2), dt * B / (1 - x / 2)
    return np.exp(x), dt * B


def _impulse_response_diag(Ad, Bd, C, L, scale):
    """y_l = scale Re(C x_l), x_l = Ad x_{l-1} + Bd u_l driven by a unit impulse, as a plain loop."""
    x = np.zeros_like(Ad)
    out = np.empty(L)
    for l in range(L):
        x = Ad * x + Bd * (1.0 if l == 0 else 0.0)
        out[l] = scale * np.real(np.sum(C * x))
    return out


def _legs_nplr(N):
    """S4 legs NPLR from REFERENCE.md section 2: A + P P^T = -I/2 + S, eigh(-i S), keep N/2 modes."""
    n = np.arange(N)
    r = np.sqrt(2 * n + 1.0)
    A = -np.tril(np.outer(r, r), -1) - np.diag(n + 1.0)
    Bv = r.copy()
    P = np.sqrt(n + 0.5)
    S = A + np.outer(P, P) + 0.5 * np.eye(N)
    assert np.allclose(S, -S.T)
    w, V = np.linalg.eigh(-1j * S)
    lam = -0.5 + 1j * w[: N // 2]  # ascending: the negative-imaginary half (S4's order)
    V = V[:, : N // 2]
    return A, Bv, lam, V.conj().T @ P, V.conj().T @ Bv, V


def _dplr_dense(lam, P, B, Ct, dt, L):
    """Kernel of the conjugate-extended dense system diag(Lambda) - P P^*, bilinear, C = C~ (I - Ad^L)^-1."""
    Lf = np.r_[lam, lam.conj()]
    Pf = np.concatenate([P, P.conj()], axis=-1)  # (r, 2N)
    Af = np.diag(Lf) - Pf.T @ Pf.conj()
    I = np.eye(len(Lf))
    Ad = np.linalg.solve(I - dt / 2 * Af, I + dt / 2 * Af)
    Bd = np.linalg.solve(I - dt / 2 * Af, dt * np.r_[B, B.conj()])
    Cf = np.linalg.solve((I - np.linalg.matrix_power(Ad, L)).T, np.r_[Ct, Ct.conj()])
    out, x = [], Bd
    for _ in range(L):
        out.append(Cf @ x)
        x = Ad @ x
    out = np.array(out)
    assert np.abs(out.imag).max() <= 1e-9 * max(1.0, np.abs(out.real).max())
    return out.real, Cf


def _direct_conv(u, k):
    """Causal convolution as a plain double loop."""
    L = len(u)
    y = np.zeros(L)
    for t in range(L):
        for j in range(min(len(k), t + 1)):
            y[t] += k[j] * u[t - j]
    return y


# --------------------------------------------------------------------------- diagonal kernel


@pytest.mark.op("ssm_kernel_diag")
@pytest.mark.parametrize("method", METHODS)
def test_diag_kernel_is_impulse_response_of_recurrence(rng, method, backend):
    H, N, L = 3, 4, 40
    A = _modes(rng, (H, N))
    B = _cnormal(rng, (H, N))
    C = _cnormal(rng, (H, N))
    dt = rng.uniform(0.01, 0.5, H)  # per channel
    K = ssm_kernel_diag(A, B, C, dt, L, method=method, backend=backend)
    assert K.shape == (H, L) and K.dtype == np.float64
    for h in range(H):
        Ad, Bd = _disc_closed_form(A[h], B[h], dt[h], method)
        np.testing.assert_allclose(K[h], _impulse_response_diag(Ad, Bd, C[h], L, 2.0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_diag_discretisation_matches_scipy_cont2discrete(rng, method):
    from scipy.signal import cont2discrete

    N, L, dt = 3, 12, 0.07
    A = _modes(rng, N)
    B = _cnormal(rng, N)
    C = _cnormal(rng, N)
    Ad = np.empty(N, complex)
    Bd = np.empty(N, complex)
    for n in range(N):  # scipy's Ad, Bd equal the SSM ones (REFERENCE.md section 1)
        a, b, *_ = cont2discrete((A[n : n + 1, None], B[n : n + 1, None], np.ones((1, 1)), 0.0), dt, method=method)
        Ad[n], Bd[n] = a[0, 0], b[0, 0]
    K = ssm_kernel_diag(A, B, C, dt, L, method=method)
    np.testing.assert_allclose(K, _impulse_response_diag(Ad, Bd, C, L, 2.0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_diag_fused_discretisation_matches_discretize_diag(rng, method):
    disc = pytest.importorskip("ssmcore._discretization")
    H, N, L = 2, 3, 20
    A = _modes(rng, (H, N))
    A[0, 0] = 1e-9j  # near zero: both must use a stable phi1
    B = _cnormal(rng, (H, N))
    C = _cnormal(rng, (H, N))
    dt = rng.uniform(0.05, 0.5, H)
    Ad, Bd = disc.discretize_diag(A, B, dt[:, None], method=method)
    want = 2 * np.real(np.einsum("hn,hnl->hl", C * Bd, Ad[..., None] ** np.arange(L)))
    np.testing.assert_allclose(ssm_kernel_diag(A, B, C, dt, L, method=method), want, rtol=1e-10, atol=1e-12)


@pytest.mark.op("ssm_kernel_diag")
def test_diag_kernel_per_mode_dt_and_output_channels(rng, backend):
    H, N, L, Co = 2, 3, 25, 2
    A = _modes(rng, (H, N))
    B = _cnormal(rng, (H, N))
    C = _cnormal(rng, (Co, H, N))
    dt = rng.uniform(0.01, 0.3, (H, N))  # S5: one step per state
    K = ssm_kernel_diag(A, B, C, dt, L, backend=backend)
    assert K.shape == (Co, H, L)
    for c in range(Co):
        for h in range(H):
            Ad, Bd = _disc_closed_form(A[h], B[h], dt[h], "zoh")
            np.testing.assert_allclose(K[c, h], _impulse_response_diag(Ad, Bd, C[c, h], L, 2.0), rtol=1e-10, atol=1e-12)


@pytest.mark.op("ssm_kernel_diag")
def test_diag_odd_N_conj_sym_equals_full_conjugate_extended_system(rng, backend):
    # N counts stored modes (one per conjugate pair), so odd N is legal: state size 2N.
    N, L, dt = 3, 30, 0.2
    A = _modes(rng, N)
    B = _cnormal(rng, N)
    C = _cnormal(rng, N)
    K = ssm_kernel_diag(A, B, C, dt, L, backend=backend)
    Ad, Bd = _disc_closed_form(np.r_[A, A.conj()], np.r_[B, B.conj()], dt, "zoh")
    np.testing.assert_allclose(K, _impulse_response_diag(Ad, Bd, np.r_[C, C.conj()], L, 1.0), rtol=1e-10, atol=1e-12)


@pytest.mark.op("ssm_kernel_diag")
def test_diag_real_modes_without_conj_sym_is_mamba_style(rng, backend):
    N, L, dt = 5, 20, 0.1
    A = -np.arange(1.0, N + 1)  # S4D-Real
    B = rng.normal(size=N)
    C = rng.normal(size=N)
    K = ssm_kernel_diag(A, B, C, dt, L, method="zoh_euler", conj_sym=False, backend=backend)
    want = [np.sum(C * dt * B * np.exp(dt * A * l)) for l in range(L)]
    np.testing.assert_allclose(K, want, rtol=1e-12)
    K2 = ssm_kernel_diag(A, B, C, dt, L, method="zoh_euler", conj_sym=True, backend=backend)
    np.testing.assert_allclose(K2, 2 * K, rtol=1e-12)


@pytest.mark.op("ssm_kernel_diag")
def test_diag_zoh_stable_as_A_goes_to_zero(backend):
    dt, L = 0.5, 6
    C = np.array([1.0 + 2.0j, 0.5])
    B = np.array([1.0, 2.0 + 1.0j])
    A0 = np.zeros(2, complex)  # ZOH of A = 0 is Bd = dt B exactly
    K = ssm_kernel_diag(A0, B, C, dt, L, backend=backend)
    np.testing.assert_allclose(K, np.full(L, 2 * np.real(np.sum(C * dt * B))), rtol=1e-14)
    A = np.array([1e-9 + 1e-9j, -1e-12 + 0j])  # (e^x - 1)/x evaluated naively loses ~7 digits here
    K = ssm_kernel_diag(A, B, C, dt, L, backend=backend)
    x = dt * A
    Bd = dt * B * (1 + x / 2 + x**2 / 6)
    want = [2 * np.real(np.sum(C * Bd * np.exp(x * l))) for l in range(L)]
    np.testing.assert_allclose(K, want, rtol=1e-13)


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_diag_numba_matches_materialised_reference_at_L_16384(method):
    # Long kernels of slowly decaying modes: the running power of the Numba kernel must
    # stay as accurate as exp(l log Ad) (it re-anchors; a naive product drifts ~ l eps).
    N, L = 8, 16384
    A = -0.5 + 1j * np.pi * np.arange(N)
    C = _cnormal(np.random.default_rng(5), (2, N))
    dt = np.array([1e-4, 1e-2])
    K = ssm_kernel_diag(A, np.ones(N), C, dt, L, method=method)
    R = ssm_kernel_diag(A, np.ones(N), C, dt, L, method=method, backend="numpy")
    scale = np.abs(R).max(axis=1, keepdims=True)
    assert np.max(np.abs(K - R) / scale) < 2e-13


@given(
    H=st.integers(1, 3),
    N=st.integers(1, 5),
    L=st.integers(0, 40),
    Co=st.integers(0, 2),
    method=st.sampled_from(METHODS),
    conj_sym=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_diag_numba_matches_reference_property(H, N, L, Co, method, conj_sym, seed):
    rng = np.random.default_rng(seed)
    A = _modes(rng, (H, N))
    B = _cnormal(rng, (H, N))
    C = _cnormal(rng, (Co, H, N) if Co else (H, N))
    dt = rng.uniform(1e-3, 1.0, H)
    kw = dict(method=method, conj_sym=conj_sym)
    K = ssm_kernel_diag(A, B, C, dt, L, **kw)
    R = ssm_kernel_diag(A, B, C, dt, L, backend="numpy", **kw)
    assert K.shape == R.shape == ((Co, H, L) if Co else (H, L))
    np.testing.assert_allclose(K, R, rtol=1e-11, atol=1e-12)


def test_diag_float32_and_broadcasting(rng):
    N, H, L = 4, 3, 50
    A = _modes(rng, N).astype(np.complex64)  # shared modes, per-channel dt
    B = np.ones(N, np.float32)
    C = _cnormal(rng, (H, N)).astype(np.complex64)
    dt = rng.uniform(0.01, 0.2, H).astype(np.float32)
    K = ssm_kernel_diag(A, B, C, dt, L)
    assert K.dtype == np.float32 and K.shape == (H, L)
    K64 = ssm_kernel_diag(A.astype(complex), B.astype(float), C.astype(complex), dt.astype(float), L)
    np.testing.assert_allclose(K, K64, rtol=1e-5, atol=1e-5 * np.abs(K64).max())
    # a Python-float dt does not promote float32 parameters to a float64 kernel
    assert ssm_kernel_diag(A, B, C, 0.1, L).dtype == np.float32
    assert ssm_kernel_diag(A, B, C[0], 0.1, L).shape == (L,)


@pytest.mark.op("ssm_kernel_diag")
def test_diag_edge_lengths_and_nan(rng, backend):
    A = _modes(rng, (2, 3))
    B = _cnormal(rng, (2, 3))
    C = _cnormal(rng, (2, 3))
    assert ssm_kernel_diag(A, B, C, 0.1, 0, backend=backend).shape == (2, 0)
    K1 = ssm_kernel_diag(A, B, C, 0.1, 1, backend=backend)
    Ad, Bd = _disc_closed_form(A, B, 0.1, "zoh")
    np.testing.assert_allclose(K1[:, 0], 2 * np.real(np.sum(C * Bd, axis=-1)), rtol=1e-12)
    A = A.copy()
    A[1, 0] = np.nan
    K = ssm_kernel_diag(A, B, C, 0.1, 5, backend=backend)
    assert np.all(np.isfinite(K[0])) and np.all(np.isnan(K[1]))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.op("ssm_kernel_diag")
@given(seed=st.integers(0, 2**31), L=st.integers(1, 12), per_mode_dt=st.booleans())
def test_diag_vjp(method, backend, seed, L, per_mode_dt):
    rng = np.random.default_rng(seed)
    H, N = 2, 3
    A = _modes(rng, (H, N))
    B = _cnormal(rng, (H, N))
    C = _cnormal(rng, (2, H, N))
    dt = rng.uniform(0.05, 0.5, (H, N) if per_mode_dt else H)
    check_vjp("ssm_kernel_diag", (A, B, C, dt, L), dict(method=method, backend=backend), rng=rng, rtol=1e-5, atol=1e-8)


@pytest.mark.op("ssm_kernel_diag")
def test_diag_vjp_broadcast_real_and_small_A(rng, backend):
    # shared (N,) modes broadcast over channels, real B, scalar dt; modes near 0 use phi1/phi2 series
    A = np.array([-0.3 + 2j, 1e-7 - 1e-7j, -1.5 + 0j])
    B = rng.normal(size=3)
    C = _cnormal(rng, (2, 3))
    grads = check_vjp("ssm_kernel_diag", (A, B, C, 0.2, 9), dict(backend=backend), rng=rng, wrt=[0, 1, 2])
    assert grads[1].dtype == np.float64 and grads[3].shape == ()
    check_vjp("ssm_kernel_diag", (A, B, C, np.array([0.2, 0.3]), 9), dict(backend=backend), rng=rng)
    # real modes, real everything
    check_vjp(
        "ssm_kernel_diag",
        (-np.arange(1.0, 4.0), B, rng.normal(size=3), np.array([0.1]), 7),
        dict(backend=backend, method="zoh", conj_sym=False),
        rng=rng,
    )


def test_diag_bad_input():
    A = np.array([[-1.0 + 1j, -0.5 + 2j]])
    B = np.ones((1, 2))
    C = np.ones((1, 2))
    with pytest.raises(ValueError, match="ssm_kernel_diag: dt must be finite"):
        ssm_kernel_diag(A, B, C, np.inf, 4)
    with pytest.raises(ValueError, match="ssm_kernel_diag: dt must be finite"):
        ssm_kernel_diag(A, B, C, np.array([np.nan]), 4)
    with pytest.raises(ValueError, match="dt must be > 0"):
        ssm_kernel_diag(A, B, C, -0.1, 4)
    msg = r"ssm_kernel_diag: mismatched channel axis: A \(2, 2\) has H=2, B \(1, 2\) has H=1, C \(3, 2\) has H=3"
    with pytest.raises(ValueError, match=msg):
        ssm_kernel_diag(np.ones((2, 2)) * -1, B, np.ones((3, 2)), 0.1, 4)
    with pytest.raises(ValueError, match=r"ssm_kernel_diag: B has shape \(1, 3\); expected last axis N=2"):
        ssm_kernel_diag(A, np.ones((1, 3)), C, 0.1, 4)
    with pytest.raises(ValueError, match="unknown method 'foh'"):
        ssm_kernel_diag(A, B, C, 0.1, 4, method="foh")
    with pytest.raises(ValueError, match="L must be >= 0"):
        ssm_kernel_diag(A, B, C, 0.1, -1)
    with pytest.raises(TypeError, match="L must be an integer"):
        ssm_kernel_diag(A, B, C, 0.1, 4.0)
    with pytest.raises(TypeError, match="A has dtype int64"):
        ssm_kernel_diag(np.ones((1, 2), dtype=np.int64), B, C, 0.1, 4)


# --------------------------------------------------------------------------- DPLR kernel


@pytest.mark.op("ssm_kernel_dplr")
@pytest.mark.parametrize("L", [16, 33, 64])
def test_dplr_legs_kernel_equals_dense_bilinear_matrix(backend, L):
    N = 8
    A, Bv, lam, P, B, V = _legs_nplr(N)
    rng = np.random.default_rng(L)
    Ct = _cnormal(rng, N // 2)
    dt = 0.1
    K = ssm_kernel_dplr(lam, P[None], B, Ct, dt, L, backend=backend)
    want, Cf = _dplr_dense(lam, P[None], B, Ct, dt, L)
    np.testing.assert_allclose(K, want, rtol=1e-10, atol=1e-12 * np.abs(want).max())
    # ... and equals the kernel of the original real legs matrix (A = V_c (Lambda_c - P_c P_c^*) V_c^*)
    Vc = np.concatenate([V, V.conj()], axis=1)
    I = np.eye(N)
    Ad = np.linalg.solve(I - dt / 2 * A, I + dt / 2 * A)
    Bd = np.linalg.solve(I - dt / 2 * A, dt * Bv)
    c = Cf @ Vc.conj().T
    legs = [np.real(c @ np.linalg.matrix_power(Ad, l) @ Bd) for l in range(L)]
    np.testing.assert_allclose(K, legs, rtol=1e-9, atol=1e-11 * np.abs(want).max())


def test_dplr_with_hippo_nplr_if_available():
    hippo = pytest.importorskip("ssmcore._hippo")
    if not hasattr(hippo, "nplr"):
        pytest.skip("ssmcore._hippo.nplr not available")
    lam, P, B, V = hippo.nplr("legs", 16)
    rng = np.random.default_rng(3)
    Ct = _cnormal(rng, lam.shape[-1])
    dt = np.array([0.05, 0.2])
    K = ssm_kernel_dplr(lam, P, B, Ct, dt, 32)
    for h in range(2):
        want, _ = _dplr_dense(lam, P, B, Ct, dt[h], 32)
        np.testing.assert_allclose(K[h], want, rtol=1e-9, atol=1e-11 * np.abs(want).max())


@pytest.mark.op("ssm_kernel_diag")
def test_dplr_without_low_rank_is_diag_bilinear(rng, backend):
    H, N, L, dt = 2, 4, 20, np.array([0.1, 0.3])
    lam = _modes(rng, (H, N))
    B = _cnormal(rng, (H, N))
    C = _cnormal(rng, (H, N))
    Ad = (1 + dt[:, None] * lam / 2) / (1 - dt[:, None] * lam / 2)
    Ct = C * (1 - Ad**L)  # diagonal case of C~ = C (I - Ad^L)
    K = ssm_kernel_dplr(lam, np.zeros((1, H, N)), B, Ct, dt, L, backend=backend)
    np.testing.assert_allclose(K, ssm_kernel_diag(lam, B, C, dt, L, method="bilinear"), rtol=1e-10, atol=1e-12)
    K0 = ssm_kernel_dplr(lam, np.zeros((0, H, N)), B, Ct, dt, L, backend=backend)  # rank 0
    np.testing.assert_allclose(K0, K, rtol=1e-12, atol=1e-14)


def test_dplr_c_tilde_round_trip_and_dense(rng):
    N, L, dt = 3, 24, 0.15
    lam = _modes(rng, N)
    P = _cnormal(rng, (2, N)) * 0.3
    B = _cnormal(rng, N)
    C = _cnormal(rng, (2, N))
    Ct = dplr_c_tilde(lam, P, C, dt, L)
    assert Ct.shape == (2, N)
    np.testing.assert_allclose(dplr_c_tilde(lam, P, Ct, dt, L, inverse=True), C, rtol=1e-10)
    K = ssm_kernel_dplr(lam, P, B, Ct, dt, L)
    for c in range(2):
        want, Cf = _dplr_dense(lam, P, B, Ct[c], dt, L)
        np.testing.assert_allclose(Cf, np.r_[C[c], C[c].conj()], rtol=1e-9)
        np.testing.assert_allclose(K[c], want, rtol=1e-10, atol=1e-12)


@given(
    H=st.integers(1, 2),
    N=st.integers(1, 4),
    r=st.integers(0, 2),
    Co=st.integers(0, 2),
    L=st.integers(1, 24),
    seed=st.integers(0, 2**31),
)
def test_dplr_numba_matches_reference_property(H, N, r, Co, L, seed):
    rng = np.random.default_rng(seed)
    lam = _modes(rng, (H, N))
    P = 0.5 * _cnormal(rng, (r, H, N))
    B = _cnormal(rng, (H, N))
    C = _cnormal(rng, (Co, H, N) if Co else (H, N))
    dt = rng.uniform(0.01, 0.5, H)
    K = ssm_kernel_dplr(lam, P, B, C, dt, L)
    R = ssm_kernel_dplr(lam, P, B, C, dt, L, backend="numpy")
    assert K.shape == R.shape == ((Co, H, L) if Co else (H, L))
    np.testing.assert_allclose(K, R, rtol=1e-10, atol=1e-10 * max(1.0, np.abs(R).max()))


@pytest.mark.op("ssm_kernel_dplr")
@given(seed=st.integers(0, 2**31), L=st.integers(1, 12), r=st.integers(1, 2))
def test_dplr_vjp(backend, seed, L, r):
    rng = np.random.default_rng(seed)
    H, N = 2, 3
    lam = _modes(rng, (H, N))
    P = 0.5 * _cnormal(rng, (r, H, N))
    B = _cnormal(rng, (H, N))
    C = _cnormal(rng, (2, H, N))
    dt = rng.uniform(0.05, 0.5, H)
    check_vjp("ssm_kernel_dplr", (lam, P, B, C, dt, L), dict(backend=backend), rng=rng, rtol=1e-5, atol=1e-8)


def test_dplr_vjp_broadcast_and_real_P(rng):
    lam = _modes(rng, 3)
    P = rng.normal(size=(1, 3))  # real P: its gradient is real
    B = _cnormal(rng, 3)
    C = _cnormal(rng, (2, 3))
    grads = check_vjp("ssm_kernel_dplr", (lam, P, B, C, 0.2, 10), rng=rng, wrt=[0, 1, 2, 3])
    assert grads[1].dtype == np.float64 and grads[4].shape == ()


def test_dplr_bad_input():
    lam = np.array([-0.5 + 1j, -0.5 + 2j])
    P = np.ones((1, 2))
    with pytest.raises(ValueError, match="ssm_kernel_dplr: dt must be finite"):
        ssm_kernel_dplr(lam, P, np.ones(2), np.ones(2), np.nan, 8)
    with pytest.raises(ValueError, match=r"ssm_kernel_dplr: P has shape \(2,\)"):
        ssm_kernel_dplr(lam, np.ones(2), np.ones(2), np.ones(2), 0.1, 8)
    with pytest.raises(ValueError, match="dt has shape"):
        ssm_kernel_dplr(lam, P, np.ones(2), np.ones(2), np.ones((1, 2)), 8)
    msg = r"ssm_kernel_dplr: mismatched channel axis: B \(2, 2\) has H=2, C \(3, 2\) has H=3"
    with pytest.raises(ValueError, match=msg):
        ssm_kernel_dplr(lam, P, np.ones((2, 2)), np.ones((3, 2)), 0.1, 8)


# --------------------------------------------------------------------------- dense kernel


@pytest.mark.op("ssm_kernel_dense")
def test_dense_kernel_matches_scipy_dimpulse_and_powers(rng, backend):
    from scipy.signal import dimpulse

    N, L = 4, 15
    Ad = rng.normal(size=(N, N)) * 0.4
    Bd = rng.normal(size=N)
    C = rng.normal(size=N)
    K = ssm_kernel_dense(Ad, Bd, C, L, backend=backend)
    # dimpulse is in the control convention: y_k = C Ad^(k-1) Bd for k >= 1
    _, (y,) = dimpulse((Ad, Bd[:, None], C[None], np.zeros((1, 1)), 1.0), n=L + 1)
    np.testing.assert_allclose(K, y[1:, 0], rtol=1e-10, atol=1e-13)
    # batched, complex, broadcast C
    A2 = rng.normal(size=(2, 3, N, N)) * 0.3 + 1j * rng.normal(size=(2, 3, N, N)) * 0.1
    B2 = _cnormal(rng, (3, N))
    K2 = ssm_kernel_dense(A2, B2, C, L, backend=backend)
    assert K2.shape == (2, 3, L) and K2.dtype == np.complex128
    want = np.array(
        [[[C @ np.linalg.matrix_power(A2[i, j], l) @ B2[j] for l in range(L)] for j in range(3)] for i in range(2)]
    )
    np.testing.assert_allclose(K2, want, rtol=1e-10, atol=1e-13)


def test_dense_equals_diag_for_diagonal_matrix(rng):
    N, L, dt = 3, 20, 0.1
    A = _modes(rng, N)
    B = _cnormal(rng, N)
    C = _cnormal(rng, N)
    Ad, Bd = _disc_closed_form(A, B, dt, "zoh")
    K = ssm_kernel_dense(np.diag(Ad), Bd, C, L)
    np.testing.assert_allclose(K.real, ssm_kernel_diag(A, B, C, dt, L, conj_sym=False), rtol=1e-10, atol=1e-13)


@pytest.mark.op("ssm_kernel_dense")
@given(seed=st.integers(0, 2**31), L=st.integers(0, 30), N=st.integers(1, 4), cplx=st.booleans())
def test_dense_vjp_and_reference(backend, seed, L, N, cplx):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(2, N, N)) * 0.4
    B = rng.normal(size=(2, N))
    C = rng.normal(size=N)
    if cplx:
        A = A + 0.2j * rng.normal(size=A.shape)
    K = ssm_kernel_dense(A, B, C, L, backend=backend)
    np.testing.assert_allclose(K, ssm_kernel_dense(A, B, C, L, backend="numpy"), rtol=1e-11, atol=1e-13)
    check_vjp("ssm_kernel_dense", (A, B, C, L), dict(backend=backend), rng=rng, rtol=1e-6, atol=1e-9)


def test_dense_float32_and_bad_input(rng):
    A = (rng.normal(size=(3, 3)) * 0.3).astype(np.float32)
    K = ssm_kernel_dense(A, np.ones(3, np.float32), np.ones(3, np.float32), 10)
    assert K.dtype == np.float32
    np.testing.assert_allclose(K, ssm_kernel_dense(A.astype(float), np.ones(3), np.ones(3), 10), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="ssm_kernel_dense: A has shape"):
        ssm_kernel_dense(np.ones((3, 2)), np.ones(2), np.ones(2), 4)
    with pytest.raises(ValueError, match="C has shape"):
        ssm_kernel_dense(np.eye(3), np.ones(3), np.ones(2), 4)
    with pytest.raises(ValueError, match="do not broadcast"):
        ssm_kernel_dense(np.ones((2, 3, 3)), np.ones((4, 3)), np.ones(3), 4)


# --------------------------------------------------------------------------- FFT convolution


@pytest.mark.op("fft_conv")
def test_fft_conv_equals_direct_and_scipy(rng, backend):
    from scipy.signal import fftconvolve

    Bt, H, L, Lk = 2, 3, 37, 11
    u = rng.normal(size=(Bt, H, L))
    K = rng.normal(size=(H, Lk))
    D = rng.normal(size=H)
    y = fft_conv(u, K, D, backend=backend)
    assert y.shape == (Bt, H, L)
    for b in range(Bt):
        for h in range(H):
            np.testing.assert_allclose(y[b, h], _direct_conv(u[b, h], K[h]) + D[h] * u[b, h], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y, fftconvolve(u, K[None], axes=-1)[..., :L] + D[:, None] * u, rtol=1e-10, atol=1e-12)


@pytest.mark.op("fft_conv")
def test_fft_conv_output_channels_are_flattened_c_major(rng, backend):
    Bt, Co, H, L = 2, 3, 2, 16
    u = rng.normal(size=(Bt, H, L))
    K = rng.normal(size=(Co, H, L))
    D = rng.normal(size=(Co, H))
    y = fft_conv(u, K, D, backend=backend)
    assert y.shape == (Bt, Co * H, L)
    for c in range(Co):
        for h in range(H):
            want = np.convolve(u[0, h], K[c, h])[:L] + D[c, h] * u[0, h]
            np.testing.assert_allclose(y[0, c * H + h], want, rtol=1e-10, atol=1e-12)


@pytest.mark.op("fft_conv")
def test_fft_conv_bidirectional_s4_layout(rng, backend):
    H, L, Lk = 2, 20, 6
    u = rng.normal(size=(1, H, L))
    K = rng.normal(size=(2, H, Lk))  # [causal, anti-causal]
    y = fft_conv(u, K, bidirectional=True, backend=backend)
    assert y.shape == (1, H, L)
    for h in range(H):
        want = np.convolve(u[0, h], K[0, h])[:L]
        for t in range(L):  # anti-causal taps start at lag -1: u[t + 1 + j]
            want[t] += sum(K[1, h, j] * u[0, h, t + 1 + j] for j in range(Lk) if t + 1 + j < L)
        np.testing.assert_allclose(y[0, h], want, rtol=1e-10, atol=1e-12)


def test_fft_conv_long_float32_against_scipy(rng):
    from scipy.signal import fftconvolve

    H, L = 2, 16384
    u = rng.normal(size=(1, H, L)).astype(np.float32)
    K = (rng.normal(size=(H, L)) * np.exp(-np.arange(L) / 2000.0)).astype(np.float32)
    y = fft_conv(u, K, np.ones(H, np.float32))
    assert y.dtype == np.float32
    want = fftconvolve(u.astype(float), K[None].astype(float), axes=-1)[..., :L] + u
    np.testing.assert_allclose(y, want, rtol=0, atol=2e-5 * np.abs(want).max())


@pytest.mark.op("fft_conv")
def test_fft_conv_shapes_and_edges(rng, backend):
    u = rng.normal(size=(2, 2, 3, 9))  # two batch axes
    K = rng.normal(size=(3, 4))
    y = fft_conv(u, K, backend=backend)
    assert y.shape == (2, 2, 3, 9)
    np.testing.assert_allclose(y[1, 0, 2], np.convolve(u[1, 0, 2], K[2])[:9], rtol=1e-10, atol=1e-12)
    # 1-D kernel: u (..., L)
    y1 = fft_conv(u[0, 0, 0], K[0], D=0.5, backend=backend)
    np.testing.assert_allclose(y1, np.convolve(u[0, 0, 0], K[0])[:9] + 0.5 * u[0, 0, 0], rtol=1e-10, atol=1e-12)
    # L = 1, empty kernel, L = 0
    np.testing.assert_allclose(fft_conv(u[..., :1], K[:, :1], backend=backend), u[..., :1] * K[:, :1], rtol=1e-12)
    np.testing.assert_allclose(fft_conv(u, K[:, :0], np.ones(3), backend=backend), u)
    assert fft_conv(u[..., :0], K[:, :0], backend=backend).shape == (2, 2, 3, 0)
    # NaN propagates (FFT spreads it over the channel), no crash
    v = u.copy()
    v[0, 0, 0, 4] = np.nan
    yn = fft_conv(v, K, backend=backend)
    assert np.isnan(yn[0, 0, 0, 4]) and np.all(np.isfinite(yn[1]))


@pytest.mark.op("fft_conv")
@given(
    seed=st.integers(0, 2**31),
    L=st.integers(1, 20),
    Lk_frac=st.floats(0.0, 1.0),
    Co=st.integers(0, 2),
    bidirectional=st.booleans(),
    with_D=st.booleans(),
)
def test_fft_conv_vjp(backend, seed, L, Lk_frac, Co, bidirectional, with_D):
    rng = np.random.default_rng(seed)
    H = 2
    Lk = int(round(Lk_frac * L))
    if bidirectional:
        Co = max(Co, 1)
        Kshape = (2 * Co, H, Lk)
    else:
        Kshape = (Co, H, Lk) if Co else (H, Lk)
    u = rng.normal(size=(2, H, L))
    K = rng.normal(size=Kshape)
    D = rng.normal(size=(max(Co, 1), H) if Co else (H,)) if with_D else None
    args = (u, K, D) if with_D else (u, K)
    y = fft_conv(*args, bidirectional=bidirectional, backend=backend)
    if backend == "numba":
        np.testing.assert_allclose(y, fft_conv(*args, bidirectional=bidirectional, backend="numpy"), atol=1e-12)
    check_vjp("fft_conv", args, dict(bidirectional=bidirectional, backend=backend), rng=rng)


def test_fft_conv_vjp_broadcast_D_and_float32(rng):
    u = rng.normal(size=(2, 3, 10))
    K = rng.normal(size=(2, 3, 5))
    check_vjp("fft_conv", (u, K, np.array(0.7)), rng=rng)
    _, pullback = ssmcore.vjp("fft_conv", u.astype(np.float32), K.astype(np.float32), np.ones(3, np.float32))
    gu, gK, gD = pullback(np.ones((2, 6, 10), np.float32))
    assert gu.dtype == gK.dtype == gD.dtype == np.float32
    assert gD.shape == (3,) and gK.shape == (2, 3, 5)
    # a float64 D does not promote float32 activations; its gradient keeps D's dtype
    y, pullback = ssmcore.vjp("fft_conv", u.astype(np.float32), K.astype(np.float32), np.ones(3))
    assert y.dtype == np.float32 and pullback(np.ones_like(y))[2].dtype == np.float64


def test_fft_conv_bad_input(rng):
    u = rng.normal(size=(2, 3, 8))
    with pytest.raises(ValueError, match=r"fft_conv: K has length L_k=9 .* but u has L=8; expected L_k <= L"):
        fft_conv(u, np.ones((3, 9)))
    with pytest.raises(ValueError, match=r"fft_conv: u has shape \(2, 3, 8\); expected \(\.\.\., H, L\) with H=4"):
        fft_conv(u, np.ones((4, 5)))
    with pytest.raises(ValueError, match="bidirectional=True"):
        fft_conv(u, np.ones((3, 3, 5)), bidirectional=True)
    with pytest.raises(ValueError, match="fft_conv: D has shape"):
        fft_conv(u, np.ones((3, 5)), np.ones(4))
    with pytest.raises(TypeError, match="fft_conv: u has dtype complex128"):
        fft_conv(u + 1j, np.ones((3, 5)))
    with pytest.raises(TypeError, match="workers must be an int"):
        fft_conv(u, np.ones((3, 5)), workers=1.5)


# --------------------------------------------------------------------------- kernel spectrum


@pytest.mark.op("fft_conv_spectrum")
@pytest.mark.parametrize(
    "Kshape, bidirectional",
    [((5,), False), ((3, 5), False), ((2, 3, 5), False), ((4, 3, 5), True), ((3, 1), False), ((3, 0), False)],
)
def test_fft_conv_with_a_spectrum_equals_with_the_kernel(rng, backend, Kshape, bidirectional):
    K = rng.normal(size=Kshape)
    S = ssmcore.fft_conv_spectrum(K, 40, bidirectional=bidirectional, backend=backend)
    assert isinstance(S, ssmcore.ConvSpectrum) and S.shape == Kshape and S.L == 40 and "ConvSpectrum" in repr(S)
    for L in (max(5, Kshape[-1]), 23, 40):  # any input up to S.L, including shorter FFT lengths
        u = rng.normal(size=(2, 3, L) if len(Kshape) > 1 else (2, L))
        D = rng.normal(size=3) if len(Kshape) > 1 else 0.3
        want = fft_conv(u, K, D, bidirectional=bidirectional, backend=backend)
        np.testing.assert_allclose(fft_conv(u, S, D, backend=backend), want, rtol=1e-12, atol=1e-12)


def test_fft_conv_spectrum_is_not_transformed_again(rng, monkeypatch):
    """With a spectrum neither the forward nor the pullback transforms the kernel.

    Without one, the pullback reuses the forward's transform (one kernel FFT per forward + backward).
    """
    import ssmcore.backends.numba.convolution as nc

    calls = []
    real = nc._kernel_spectrum
    monkeypatch.setattr(nc, "_kernel_spectrum", lambda *a: calls.append(1) or real(*a))
    u = rng.normal(size=(4, 3, 64)).astype(np.float32)
    K = rng.normal(size=(2, 3, 16)).astype(np.float32)
    S = ssmcore.fft_conv_spectrum(K, 64)
    assert len(calls) == 1 and S.Kf.dtype == np.complex64
    y, pullback = ssmcore.vjp("fft_conv", u, S, np.ones(3, np.float32))
    gu, gK, gD = pullback(np.ones_like(y))
    assert len(calls) == 1
    y2, pullback2 = ssmcore.vjp("fft_conv", u, K, np.ones(3, np.float32))
    g2 = pullback2(np.ones_like(y2))
    assert len(calls) == 2
    np.testing.assert_allclose(y, y2, rtol=1e-6, atol=1e-5)
    for a, b in zip((gu, gK, gD), g2):
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_fft_conv_vjp_through_a_spectrum_is_the_kernels(rng, bidirectional):
    u = rng.normal(size=(2, 3, 30))
    K = rng.normal(size=(4 if bidirectional else 2, 3, 9))
    D = rng.normal(size=(2, 3))
    ct = rng.normal(size=(2, 6, 30))
    S = ssmcore.fft_conv_spectrum(K, 30, bidirectional=bidirectional)
    _, pb = ssmcore.vjp("fft_conv", u, S, D)
    _, pb_k = ssmcore.vjp("fft_conv", u, K, D, bidirectional=bidirectional)
    for a, b in zip(pb(ct), pb_k(ct)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)
    assert pb(ct, needs=(True, False, False))[1:] == (None, None)
    check_vjp("fft_conv", (u, K, D), dict(bidirectional=bidirectional), rng=rng)


def test_fft_conv_spectrum_of_another_dtype_or_backend_is_transformed_again(rng):
    u = rng.normal(size=(2, 3, 32))
    K = rng.normal(size=(3, 8))
    S32 = ssmcore.fft_conv_spectrum(K.astype(np.float32), 32)
    # float64 input with a float32 kernel: the kernel (cast to float64) is transformed again
    np.testing.assert_allclose(fft_conv(u, S32), fft_conv(u, K.astype(np.float32)), rtol=1e-12, atol=1e-12)
    Sref = ssmcore.fft_conv_spectrum(K, 32, backend="numpy")
    assert Sref.Kf is None and Sref.backend == "numpy"
    np.testing.assert_allclose(fft_conv(u, Sref), fft_conv(u, K), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fft_conv(u, ssmcore.fft_conv_spectrum(K, 32), backend="numpy"), fft_conv(u, K),
                               rtol=1e-12, atol=1e-12)


def test_fft_conv_spectrum_errors(rng):
    K = rng.normal(size=(3, 8))
    with pytest.raises(ValueError, match=r"fft_conv_spectrum: L=4 is shorter than the kernel \(L_k=8"):
        ssmcore.fft_conv_spectrum(K, 4)
    with pytest.raises(TypeError, match="fft_conv_spectrum: L must be an integer"):
        ssmcore.fft_conv_spectrum(K, 8.0)
    with pytest.raises(ValueError, match="fft_conv_spectrum: K has shape .*bidirectional=True"):
        ssmcore.fft_conv_spectrum(K, 8, bidirectional=True)
    with pytest.raises(TypeError, match="fft_conv_spectrum: K has dtype complex128"):
        ssmcore.fft_conv_spectrum(K + 1j, 8)
    with pytest.raises(TypeError, match="fft_conv_spectrum: workers must be an int"):
        ssmcore.fft_conv_spectrum(K, 8, workers="all")
    with pytest.raises(TypeError, match="fft_conv_spectrum: bidirectional must be"):
        ssmcore.fft_conv_spectrum(K, 8, bidirectional="yes")
    S = ssmcore.fft_conv_spectrum(K, 16)
    with pytest.raises(ValueError, match=r"fft_conv: u has L=17 but K is a spectrum for inputs of up to L=16"):
        fft_conv(rng.normal(size=(3, 17)), S)
    with pytest.raises(ValueError, match="fft_conv: bidirectional=True but K is the spectrum of a causal kernel"):
        fft_conv(rng.normal(size=(3, 16)), S, bidirectional=True)
    with pytest.raises(ValueError, match=r"fft_conv: u has shape \(2, 16\); expected \(\.\.\., H, L\) with H=3"):
        fft_conv(rng.normal(size=(2, 16)), S)


# --------------------------------------------------------------------------- LTI equivalence


@pytest.mark.parametrize("method", METHODS)
def test_convolution_mode_equals_recurrent_mode(rng, method):
    """fft_conv(u, K) + D u == the diagonal recurrence x_t = Ad x_{t-1} + Bd u_t, y = 2 Re(C x) + D u."""
    Bt, H, N, L = 2, 2, 3, 64
    A = _modes(rng, (H, N))
    B = _cnormal(rng, (H, N))
    C = _cnormal(rng, (H, N))
    D = rng.normal(size=H)
    dt = rng.uniform(0.05, 0.3, H)
    u = rng.normal(size=(Bt, H, L))
    y = fft_conv(u, ssm_kernel_diag(A, B, C, dt, L, method=method), D)
    for h in range(H):
        Ad, Bd = _disc_closed_form(A[h], B[h], dt[h], method)
        for b in range(Bt):
            x = np.zeros(N, complex)
            for t in range(L):
                x = Ad * x + Bd * u[b, h, t]
                np.testing.assert_allclose(y[b, h, t], 2 * np.real(C[h] @ x) + D[h] * u[b, h, t], rtol=1e-9, atol=1e-11)
