"""One LTI SSM, three evaluation modes: recurrent == scan == convolution.

Covers the dense ``lti_simulate`` (its "convolution" mode) and the diagonal
``lti_simulate_diag`` against each other, against independent Python loops and
against the convolution module's kernels (S4D: ``ssm_kernel_diag``; S4:
``ssm_kernel_dplr`` with ``dplr_c_tilde``), plus finite-difference VJP checks.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st
from vjp_check import check_vjp

from ssmcore._convolution import dplr_c_tilde, fft_conv, ssm_kernel_diag, ssm_kernel_dplr
from ssmcore._discretization import discretize, discretize_diag
from ssmcore._hippo import nplr, nplr_to_dense
from ssmcore._initializers import s4d_inv, s4d_lin
from ssmcore._lti import DIAG_MODES, LTI_MODES, lti_simulate, lti_simulate_diag

seeds = st.integers(0, 2**32 - 1)
MODES = ("recurrent", "scan", "convolution")


def assert_close(x, y, tol):
    scale = max(1.0, float(np.max(np.abs(y), initial=0.0)))
    np.testing.assert_allclose(x, y, rtol=0, atol=tol * scale)


def randn(rng, shape, complex_=False):
    x = rng.standard_normal(shape)
    return x + 1j * rng.standard_normal(shape) if complex_ else x


def stable(rng, shape, n, radius=0.9):
    a = rng.standard_normal(shape + (n, n))
    rho = np.max(np.abs(np.linalg.eigvals(a)), axis=-1)[..., None, None]
    return a * (radius / rho)


def stable_diag(rng, shape, complex_=True):
    """Diagonal entries with modulus in [0.3, 0.97) (and random phases when complex)."""
    mod = rng.uniform(0.3, 0.97, shape)
    return mod * np.exp(1j * rng.uniform(-np.pi, np.pi, shape)) if complex_ else mod * rng.choice([-1, 1], shape)


def diag_loop(A, B, C, D, u, x0, scale, real):
    """Independent per-step loop for one (H, N) system and u (H, L)."""
    H, L = u.shape
    x = np.zeros(A.shape, complex) if x0 is None else np.array(x0, complex)
    y = np.zeros((H, L), complex)
    for t in range(L):
        x = A * x + B * u[:, t : t + 1]
        y[:, t] = scale * np.sum(C * x, axis=1)
        if real:
            y[:, t] = y[:, t].real
        y[:, t] += (0 if D is None else D) * u[:, t]
    return (y.real if real else y), x


def test_mode_tables_list_all_three_modes():
    assert set(MODES) <= set(LTI_MODES) and set(DIAG_MODES) == set(MODES)


# --------------------------------------------------------------------------------- S4D


@pytest.mark.parametrize("init", [s4d_lin, s4d_inv])
@pytest.mark.parametrize("L", [0, 1, 257])
def test_s4d_three_modes_equal_ssm_kernel_diag(init, L, rng):
    H, N = 3, 8
    Lam = np.tile(init(2 * N), (H, 1))
    dt = np.array([0.003, 0.02, 0.1])
    B = randn(rng, (H, N), True)
    C = randn(rng, (H, N), True)
    D = randn(rng, (H,))
    u = randn(rng, (2, H, L))
    Ad, Bd = discretize_diag(Lam, B, dt[:, None], "zoh")
    # the convolution module on the *continuous* parameters (an independent kernel path)
    want = fft_conv(u, ssm_kernel_diag(Lam, B, C, dt, L, method="zoh", conj_sym=True), D)
    x0 = randn(rng, (2, H, N), True)
    y_ref, x_ref = diag_loop(Ad, Bd, C, D, u[1], x0[1], 2.0, True)
    for mode in MODES:
        y = lti_simulate_diag(Ad, Bd, C, D, u, conj_sym=True, mode=mode)
        assert y.shape == (2, H, L) and y.dtype == np.float64
        assert_close(y, want, 1e-12)
        y, xf = lti_simulate_diag(Ad, Bd, C, D, u, x0, conj_sym=True, mode=mode, return_final_state=True)
        assert xf.shape == (2, H, N) and xf.dtype == np.complex128
        assert_close(y[1], y_ref, 1e-12)
        assert_close(xf[1], x_ref, 1e-12)


def test_long_sequence_s4d_and_dense(rng):
    L = 16384
    H, N = 2, 8
    Lam = np.tile(s4d_lin(2 * N), (H, 1))
    dt = np.array([0.001, 0.01])
    B, C = randn(rng, (H, N), True), randn(rng, (H, N), True)
    u = randn(rng, (1, H, L))
    Ad, Bd = discretize_diag(Lam, B, dt[:, None])
    want = fft_conv(u, ssm_kernel_diag(Lam, B, C, dt, L, conj_sym=True))
    for mode in MODES:
        assert_close(lti_simulate_diag(Ad, Bd, C, None, u, conj_sym=True, mode=mode), want, 1e-10)
    A, Bm, Cm = stable(rng, (), 4, radius=0.999), randn(rng, (4, 2)), randn(rng, (3, 4))
    ud, x0 = randn(rng, (2, L)), randn(rng, (4,))
    y_r, x_r = lti_simulate(A, Bm, Cm, None, ud, x0, return_final_state=True)
    y_c, x_c = lti_simulate(A, Bm, Cm, None, ud, x0, mode="convolution", return_final_state=True)
    assert_close(y_c, y_r, 1e-10)
    assert_close(x_c, x_r, 1e-12)


# --------------------------------------------------------------------------------- S4 (DPLR)


@pytest.mark.parametrize("L", [1, 2, 131])
def test_s4_dplr_dense_three_modes_equal_ssm_kernel_dplr(L, rng):
    N = 8
    Lam, P, B, V = nplr("legs", N)
    A, b = nplr_to_dense(Lam, P, B, V)
    C = randn(rng, (N // 2,), True)
    # real output row of the conjugate-extended C: [C, conj C] V_c^* = 2 Re(C V^*)
    C_dense = 2 * np.real(C @ V.conj().T)[None]
    dt = 0.05
    Ad, Bd = discretize(A, b[:, None], dt, "bilinear")
    K = ssm_kernel_dplr(Lam, P, B, dplr_c_tilde(Lam, P, C, dt, L), dt, L)
    u = randn(rng, (3, L))
    want = fft_conv(u, K)
    for mode in MODES:
        y = lti_simulate(Ad, Bd, C_dense, None, u[:, None], mode=mode)
        assert y.shape == (3, 1, L)
        assert_close(y[:, 0], want, 1e-11)


# --------------------------------------------------------------------------------- dense MIMO


@given(
    n=st.integers(1, 5), m=st.integers(1, 3), p=st.integers(1, 3),
    L=st.sampled_from([0, 1, 2, 13, 40]), cplx=st.booleans(), with_d=st.booleans(), with_x0=st.booleans(),
    seed=seeds,
)  # fmt: skip
def test_dense_mimo_modes_agree_with_loop(n, m, p, L, cplx, with_d, with_x0, seed):
    rng = np.random.default_rng(seed)
    A = stable(rng, (2,), n) * (np.exp(0.3j) if cplx else 1.0)  # two systems
    B, C = randn(rng, (n, m), cplx), randn(rng, (p, n))
    D = randn(rng, (p, m)) if with_d else None
    u = randn(rng, (3, 1, m, L), cplx)
    x0 = randn(rng, (2, n)) if with_x0 else None
    outs = {mode: lti_simulate(A, B, C, D, u, x0, mode=mode, return_final_state=True) for mode in MODES}
    # independent loop for batch element (2, 1)
    x = np.zeros(n, complex) if x0 is None else x0[1].astype(complex)
    ys = []
    for t in range(L):
        x = A[1] @ x + B @ u[2, 0, :, t]
        ys.append(C @ x + (0 if D is None else D @ u[2, 0, :, t]))
    want_y = np.array(ys).T.reshape(p, L)
    for mode, (y, xf) in outs.items():
        assert y.shape == (3, 2, p, L) and xf.shape == (3, 2, n)
        assert y.dtype == (np.complex128 if cplx else np.float64)
        assert_close(y[2, 1], want_y, 1e-12)
        assert_close(xf[2, 1], x, 1e-12)
        assert_close(y, outs["recurrent"][0], 1e-12)


def test_dense_convolution_numpy_backend_and_float32(rng):
    A, B, C, D = stable(rng, (), 3), randn(rng, (3, 2)), randn(rng, (2, 3)), randn(rng, (2, 2))
    u = randn(rng, (4, 2, 29))
    want = lti_simulate(A, B, C, D, u)
    assert_close(lti_simulate(A, B, C, D, u, mode="convolution", backend="numpy"), want, 1e-12)
    y32 = lti_simulate(*(a.astype(np.float32) for a in (A, B, C, D, u)), mode="convolution")
    assert y32.dtype == np.float32
    assert_close(y32, want, 1e-4)


# --------------------------------------------------------------------------------- diagonal, general


@given(
    H=st.integers(1, 3), N=st.integers(1, 4), L=st.sampled_from([0, 1, 2, 11, 37]),
    output=st.sampled_from(["conj_sym", "lru", "complex", "real_system"]),
    a_batch=st.booleans(), with_d=st.booleans(), with_x0=st.booleans(), seed=seeds,
)  # fmt: skip
def test_diag_modes_agree_with_loop_and_reference(H, N, L, output, a_batch, with_d, with_x0, seed):
    rng = np.random.default_rng(seed)
    cplx = output != "real_system"
    A = stable_diag(rng, ((2,) if a_batch else ()) + (H, N), cplx)
    B, C = randn(rng, (H, N), cplx), randn(rng, (H, N), cplx)
    D = randn(rng, (H,)) if with_d else None
    u = randn(rng, (2, H, L), output == "complex")
    x0 = randn(rng, (H, N), cplx) if with_x0 else None
    kw = {"conj_sym": {"conj_sym": True}, "lru": {"real_output": True}}.get(output, {})
    scale, real = (2.0 if output == "conj_sym" else 1.0), output in ("conj_sym", "lru", "real_system")
    for mode in MODES:
        y, xf = lti_simulate_diag(A, B, C, D, u, x0, mode=mode, return_final_state=True, **kw)
        y_np, xf_np = lti_simulate_diag(A, B, C, D, u, x0, mode=mode, return_final_state=True, backend="numpy", **kw)
        assert y.shape == (2, H, L) and xf.shape == (2, H, N)
        assert y.dtype == (np.float64 if real else np.complex128)
        want, want_x = diag_loop(A[1] if a_batch else A, B, C, D, u[1], x0, scale, real)
        assert_close(y[1], want, 1e-12)
        assert_close(xf[1], want_x, 1e-12)
        assert_close(y_np, y, 1e-12)
        assert_close(xf_np, xf, 1e-12)


def test_diag_zero_and_negative_real_modes(rng):
    # Ad = 0 (a mode that forgets at once: K_0 = C B, K_l = 0 after) and Ad < 0 (no
    # real logarithm): the running-product kernel needs neither exp nor log.
    A = np.array([[0.0, -0.5, 0.9]])
    B, C = np.ones((1, 3)), np.array([[1.0, 2.0, 3.0]])
    u = randn(rng, (1, 9))
    want, _ = diag_loop(A, B, C, None, u, None, 1.0, True)
    for mode in MODES:
        assert_close(lti_simulate_diag(A, B, C, None, u, mode=mode), want, 1e-13)


def test_diag_float32_stays_float32(rng):
    A = stable_diag(rng, (2, 4)).astype(np.complex64)
    B, C = randn(rng, (2, 4), True).astype(np.complex64), randn(rng, (2, 4), True).astype(np.complex64)
    u = randn(rng, (3, 2, 50)).astype(np.float32)
    want = lti_simulate_diag(*(a.astype(np.complex128) for a in (A, B, C)), None, u.astype(np.float64), conj_sym=True)
    for mode in MODES:
        y = lti_simulate_diag(A, B, C, None, u, conj_sym=True, mode=mode)
        assert y.dtype == np.float32
        assert_close(y, want, 1e-4)


def test_diag_chaining_with_final_state(rng):
    A, B, C = stable_diag(rng, (2, 3)), randn(rng, (2, 3), True), randn(rng, (2, 3), True)
    u = randn(rng, (2, 30))
    y = lti_simulate_diag(A, B, C, None, u, conj_sym=True)
    for mode in MODES:
        y1, x1 = lti_simulate_diag(A, B, C, None, u[:, :17], conj_sym=True, mode=mode, return_final_state=True)
        y2 = lti_simulate_diag(A, B, C, None, u[:, 17:], x1, conj_sym=True, mode=mode)
        assert_close(np.concatenate([y1, y2], -1), y, 1e-12)


def test_diag_nan_propagates(rng):
    A, B, C = stable_diag(rng, (1, 2)), randn(rng, (1, 2), True), randn(rng, (1, 2), True)
    u = randn(rng, (1, 8))
    u[0, 4] = np.nan
    for mode in MODES:
        y = lti_simulate_diag(A, B, C, None, u, conj_sym=True, mode=mode)
        assert np.isnan(y[0, 4:]).all()
        if mode != "convolution":  # an FFT spreads a NaN over the whole sequence
            assert np.isfinite(y[0, :4]).all()


# --------------------------------------------------------------------------------- gradients


@given(
    L=st.sampled_from([0, 1, 5, 23]),
    output=st.sampled_from(["conj_sym", "lru", "complex", "real_system"]),
    mode=st.sampled_from(MODES), final=st.booleans(), seed=seeds,
)  # fmt: skip
def test_diag_vjp_matches_finite_differences(L, output, mode, final, seed):
    rng = np.random.default_rng(seed)
    H, N = 2, 3
    cplx = output != "real_system"
    A = stable_diag(rng, (2, H, N), cplx)  # a batch of systems: gradients summed over nothing
    B, C = randn(rng, (H, N), cplx), randn(rng, (H, N), cplx)
    D, x0 = randn(rng, (H,)), randn(rng, (H, N), cplx)
    u = randn(rng, (2, H, L), output == "complex")
    kw = {"conj_sym": {"conj_sym": True}, "lru": {"real_output": True}}.get(output, {})
    kw.update(x0=x0, mode=mode, return_final_state=final)
    grads = check_vjp("lti_simulate_diag", (A, B, C, D, u), kw, wrt=["A", "B", "C", "D", "u", "x0"], rng=rng)
    for g, x in zip(grads, (A, B, C, D, u, x0)):
        assert g.shape == x.shape and g.dtype == x.dtype


def test_diag_vjp_long_sequence_and_numpy_backend(rng):
    A, B, C = stable_diag(rng, (2, 3)), randn(rng, (2, 3), True), randn(rng, (2, 3), True)
    u, x0 = randn(rng, (2, 300)), randn(rng, (2, 3), True)
    for backend in ("numba", "numpy"):
        kw = dict(x0=x0, conj_sym=True, mode="convolution", return_final_state=True, backend=backend)
        check_vjp("lti_simulate_diag", (A, B, C, None, u), kw, wrt=["A", "B", "C", "u", "x0"], rng=rng)


@given(n=st.integers(1, 4), m=st.integers(1, 2), p=st.integers(1, 2), L=st.sampled_from([0, 1, 9]),
       cplx=st.booleans(), final=st.booleans(), seed=seeds)  # fmt: skip
def test_dense_convolution_mode_vjp_matches_finite_differences(n, m, p, L, cplx, final, seed):
    rng = np.random.default_rng(seed)
    A = stable(rng, (), n) * (np.exp(0.2j) if cplx else 1.0)
    args = (A, randn(rng, (n, m), cplx), randn(rng, (p, n)), randn(rng, (p, m)), randn(rng, (2, m, L)))
    kw = {"x0": randn(rng, (n,), cplx), "mode": "convolution", "return_final_state": final}
    check_vjp("lti_simulate", args, kw, wrt=["A", "B", "C", "D", "u", "x0"], rng=rng)


# --------------------------------------------------------------------------------- errors


def test_errors(rng):
    A, B, C = stable_diag(rng, (2, 3)), randn(rng, (2, 3), True), randn(rng, (2, 3), True)
    u = randn(rng, (2, 5))
    with pytest.raises(ValueError, match="lti_simulate_diag: unknown mode 'fft'"):
        lti_simulate_diag(A, B, C, None, u, mode="fft")
    with pytest.raises(ValueError, match="lti_simulate: unknown mode 'conv'"):
        lti_simulate(np.eye(2), np.ones((2, 1)), np.ones((1, 2)), None, np.ones((1, 3)), mode="conv")
    with pytest.raises(ValueError, match=r"lti_simulate_diag: B has shape \(1, 3\); expected \(\.\.\., 2, 3\)"):
        lti_simulate_diag(A, B[:1], C, None, u)
    with pytest.raises(ValueError, match=r"lti_simulate_diag: u .*H = 2"):
        lti_simulate_diag(A, B, C, None, u[:1])
    with pytest.raises(ValueError, match=r"lti_simulate_diag: D has shape"):
        lti_simulate_diag(A, B, C, np.ones(3), u)
    with pytest.raises(ValueError, match=r"lti_simulate_diag: x0 has shape"):
        lti_simulate_diag(A, B, C, None, u, np.ones((2, 4)))
    with pytest.raises(ValueError, match="do not broadcast"):
        lti_simulate_diag(np.stack([A] * 3), B, C, None, np.stack([u] * 2))
    with pytest.raises(ValueError, match="conj_sym=True means a real output"):
        lti_simulate_diag(A, B, C, None, u, conj_sym=True, real_output=False)
    with pytest.raises(TypeError, match="u must be real"):
        lti_simulate_diag(A, B, C, None, u + 1j, conj_sym=True)
    with pytest.raises(TypeError, match="lti_simulate_diag"):
        lti_simulate_diag(A, B, C, None, np.ones((2, 5), dtype=int))


def test_diag_scan_in_row_blocks_equals_recurrent(rng, monkeypatch):
    import ssmcore._lti as lti

    monkeypatch.setattr(lti, "_SCAN_BLOCK_ELEMENTS", 20)  # 20 // (N L) -> one row per block
    A, B, C = stable_diag(rng, (3, 2, 2)), randn(rng, (2, 2), True), randn(rng, (2, 2), True)
    u, x0 = randn(rng, (3, 2, 7)), randn(rng, (2, 2), True)
    y_s, x_s = lti_simulate_diag(A, B, C, np.ones(2), u, x0, conj_sym=True, mode="scan", return_final_state=True)
    y_r, x_r = lti_simulate_diag(A, B, C, np.ones(2), u, x0, conj_sym=True, return_final_state=True)
    assert_close(y_s, y_r, 1e-13)
    assert_close(x_s, x_r, 1e-13)
