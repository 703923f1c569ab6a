"""GPU tests of the CuPy convolution kernels (``ssmcore/backends/cupy/convolution.py``).

Every test needs a CUDA device (``@pytest.mark.gpu``; skipped elsewhere by
conftest). The launchers are checked against ``ssmcore.backends.numba.convolution``
and the NumPy reference (odd L, L = 1, L_k < L, C_out > 1, bidirectional, D,
float32/float64), then the public ``fft_conv`` / ``ssm_kernel_diag`` /
``lti_simulate_diag(mode="convolution")`` and their ``ssmcore.vjp`` pullbacks on
CuPy arrays, and the memory bound of the Vandermonde backward.
"""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore
from ssmcore.backends.numba import convolution as nb
from ssmcore.reference import convolution as ref

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")


def _cc():
    from ssmcore.backends.cupy import convolution as cc

    return cc


def _h(x):
    return None if x is None else cp.asnumpy(x)


def _d(*xs):
    return tuple(None if x is None else cp.asarray(x) for x in xs)


@pytest.mark.parametrize("Bt, H, C, L, Lk, bidi, with_d, dtype", [
    (2, 3, 1, 9, 9, False, True, np.float64), (1, 1, 1, 1, 1, False, False, np.float64),
    (3, 2, 2, 16, 5, True, True, np.float64), (2, 4, 1, 257, 100, True, True, np.float32),
    (1, 2, 3, 33, 33, False, True, np.float32),
])
def test_causal_conv_and_bwd_match_numba_and_reference(Bt, H, C, L, Lk, bidi, with_d, dtype):
    rng = np.random.default_rng(1)
    u = rng.standard_normal((Bt, H, L)).astype(dtype)
    K = rng.standard_normal((C, H, Lk)).astype(dtype)
    Ka = rng.standard_normal((C, H, Lk)).astype(dtype) if bidi else None
    D = rng.standard_normal((C, H)).astype(dtype) if with_d else None
    G = rng.standard_normal((Bt, C, H, L)).astype(dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    y = _cc().causal_conv(*_d(u, K, Ka, D))
    np.testing.assert_allclose(_h(y), ref.causal_conv(u, K, Ka, D), rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(_h(y), nb.causal_conv(u, K, Ka, D), rtol=tol, atol=tol * 10)
    got = _cc().causal_conv_bwd(*_d(u, K, Ka, D, G))
    for g, w in zip(got, ref.causal_conv_bwd(u, K, Ka, D, G)):
        assert (g is None) == (w is None)
        if w is not None:
            np.testing.assert_allclose(_h(g), w, rtol=tol, atol=tol * 100)


def test_fft_conv_front_door_and_vjp_on_cupy():
    rng = np.random.default_rng(2)
    u, K, D = rng.standard_normal((2, 3, 40)), rng.standard_normal((4, 3, 40)), rng.standard_normal((2, 3))
    want = ssmcore.fft_conv(u, K, D, bidirectional=True)
    got = ssmcore.fft_conv(*_d(u, K, D), bidirectional=True)
    assert isinstance(got, cp.ndarray)
    np.testing.assert_allclose(_h(got), want, rtol=1e-10, atol=1e-10)
    ct = rng.standard_normal(want.shape)
    _, pb = ssmcore.vjp("fft_conv", u, K, D, bidirectional=True)
    _, pbc = ssmcore.vjp("fft_conv", *_d(u, K, D), bidirectional=True)
    for g, w in zip(pbc(cp.asarray(ct)), pb(ct)):
        np.testing.assert_allclose(_h(g), w, rtol=1e-9, atol=1e-9)
    u32 = cp.asarray(u, dtype=cp.float32)
    assert ssmcore.fft_conv(u32, cp.asarray(K[:2], dtype=cp.float32)).dtype == cp.float32


@pytest.mark.parametrize("C, H, N, L", [(1, 3, 4, 1), (2, 5, 7, 131), (1, 2, 64, 4096), (3, 1, 1, 9)])
def test_vandermonde_kernels_match_the_reference(C, H, N, L):
    rng = np.random.default_rng(3)
    log_ad = -rng.uniform(0.001, 0.5, (H, N)) + 1j * rng.uniform(-3, 3, (H, N))
    W = rng.standard_normal((C, H, N)) + 1j * rng.standard_normal((C, H, N))
    G = rng.standard_normal((C, H, L))
    K = _cc().vandermonde_kernel(*_d(log_ad, W), L, "float64")
    np.testing.assert_allclose(_h(K), ref.vandermonde_kernel(log_ad, W, L, "float64"), rtol=1e-9, atol=1e-9)
    assert _cc().vandermonde_kernel(*_d(log_ad, W), L, "float32").dtype == cp.float32
    Wb, ab = _cc().vandermonde_kernel_bwd(*_d(log_ad, W, G))
    wWb, wab = nb.vandermonde_kernel_bwd(log_ad, W, G)
    np.testing.assert_allclose(_h(Wb), wWb, rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose(_h(ab), wab, rtol=1e-9, atol=1e-6)


def test_ssm_kernel_diag_front_door_and_vjp_on_cupy():
    rng = np.random.default_rng(4)
    H, N, L = 3, 8, 50
    A = -rng.uniform(0.1, 1, (H, N)) + 1j * rng.uniform(-3, 3, (H, N))
    B = rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))
    C = rng.standard_normal((2, H, N)) + 1j * rng.standard_normal((2, H, N))
    dt = rng.uniform(0.01, 0.1, H)
    for method in ("zoh", "bilinear", "zoh_euler"):
        want = ssmcore.ssm_kernel_diag(A, B, C, dt, L, method=method)
        got = ssmcore.ssm_kernel_diag(*_d(A, B, C, dt), L, method=method)
        np.testing.assert_allclose(_h(got), want, rtol=1e-9, atol=1e-9)
        ct = rng.standard_normal(want.shape)
        _, pb = ssmcore.vjp("ssm_kernel_diag", A, B, C, dt, L, method=method)
        _, pbc = ssmcore.vjp("ssm_kernel_diag", *_d(A, B, C, dt), L, method=method)
        for g, w in zip(pbc(cp.asarray(ct)), pb(ct)):
            np.testing.assert_allclose(_h(g), w, rtol=1e-8, atol=1e-8)


def test_vandermonde_bwd_memory_is_o_h_n_plus_l():
    """Peak device memory of the backward stays far below one (H, N, L) complex tensor."""
    H, N, L = 256, 64, 4096
    rng = np.random.default_rng(5)
    log_ad = cp.asarray(-rng.uniform(0.001, 0.5, (H, N)) + 1j * rng.uniform(-3, 3, (H, N)))
    W = cp.asarray(rng.standard_normal((1, H, N)) + 0j)
    G = cp.asarray(rng.standard_normal((1, H, L)))
    pool = cp.get_default_memory_pool()
    cp.cuda.Device().synchronize()
    pool.free_all_blocks()
    before = pool.used_bytes()
    _cc().vandermonde_kernel_bwd(log_ad, W, G)
    cp.cuda.Device().synchronize()
    assert pool.total_bytes() - before < H * N * L * 16 // 8


def test_lti_simulate_diag_convolution_mode_on_cupy():
    rng = np.random.default_rng(6)
    Ad = 0.9 * np.exp(1j * rng.uniform(-1, 1, (2, 3)))
    B = rng.standard_normal((2, 3)) + 0j
    C = rng.standard_normal((2, 3)) + 0j
    u = rng.standard_normal((2, 40))
    want = ssmcore.lti_simulate_diag(Ad, B, C, None, u, conj_sym=True, mode="convolution")
    got = ssmcore.lti_simulate_diag(*_d(Ad, B, C), None, cp.asarray(u), conj_sym=True, mode="convolution")
    np.testing.assert_allclose(_h(got), want, rtol=1e-9, atol=1e-9)


def _nodes(L):
    th = 2.0 * np.pi * np.arange(L // 2 + 1) / max(L, 1)
    return 2.0 * np.sin(0.5 * th) ** 2 + 1j * np.sin(th), 2.0 * np.cos(0.5 * th) ** 2 - 1j * np.sin(th)


@pytest.mark.parametrize("H, M, N, L", [(2, 4, 5, 16), (1, 1, 1, 1), (3, 2, 64, 4096), (1, 3, 2, 9)])
def test_cauchy_sums_match_numba(H, M, N, L):
    rng = np.random.default_rng(7)
    num = rng.standard_normal((H, M, N)) + 1j * rng.standard_normal((H, M, N))
    mu = 0.05 * (-rng.uniform(0.1, 1, (H, N)) + 1j * rng.uniform(-5, 5, (H, N)))
    omw, opw = _nodes(L)
    S = _cc().cauchy_sums(*_d(num, mu, omw, opw))
    np.testing.assert_allclose(_h(S), nb.cauchy_sums(num, mu, omw, opw), rtol=1e-10, atol=1e-10)
    Sb = rng.standard_normal(S.shape) + 1j * rng.standard_normal(S.shape)
    for g, w in zip(_cc().cauchy_sums_bwd(*_d(num, mu, omw, opw, Sb)), nb.cauchy_sums_bwd(num, mu, omw, opw, Sb)):
        np.testing.assert_allclose(_h(g), w, rtol=1e-9, atol=1e-9)


def test_ssm_kernel_dplr_front_door_and_vjp_on_cupy():
    rng = np.random.default_rng(8)
    H, N, L = 3, 8, 33
    lam = -rng.uniform(0.1, 1, (H, N)) + 1j * rng.uniform(-3, 3, (H, N))
    P = 0.3 * (rng.standard_normal((1, H, N)) + 1j * rng.standard_normal((1, H, N)))
    B = rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))
    C = rng.standard_normal((2, H, N)) + 1j * rng.standard_normal((2, H, N))
    dt = rng.uniform(0.01, 0.1, H)
    want = ssmcore.ssm_kernel_dplr(lam, P, B, C, dt, L)
    got = ssmcore.ssm_kernel_dplr(*_d(lam, P, B, C, dt), L)
    np.testing.assert_allclose(_h(got), want, rtol=1e-9, atol=1e-9)
    ct = rng.standard_normal(want.shape)
    _, pb = ssmcore.vjp("ssm_kernel_dplr", lam, P, B, C, dt, L)
    _, pbc = ssmcore.vjp("ssm_kernel_dplr", *_d(lam, P, B, C, dt), L)
    for g, w in zip(pbc(cp.asarray(ct)), pb(ct)):
        np.testing.assert_allclose(_h(g), w, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("S, N, L", [(2, 3, 7), (1, 1, 1), (4, 64, 300), (1, 33, 1000)])
def test_dense_kernels_match_the_reference(dtype, S, N, L):
    rng = np.random.default_rng(9)
    cplx = np.dtype(dtype).kind == "c"

    def r(*shape):
        x = rng.standard_normal(shape)
        return (x + 1j * rng.standard_normal(shape) if cplx else x).astype(dtype)

    A = (r(S, N, N) * (0.8 / np.sqrt(N))).astype(dtype)
    B, C, G = r(S, N), r(S, N), r(S, L)
    tol = 2e-4 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-10
    K = _cc().dense_kernel(*_d(A, B, C), L)
    assert K.dtype == dtype
    np.testing.assert_allclose(_h(K), ref.dense_kernel(A, B, C, L), rtol=tol, atol=tol)
    for g, w in zip(_cc().dense_kernel_bwd(*_d(A, B, C, G)), ref.dense_kernel_bwd(A, B, C, G)):
        np.testing.assert_allclose(_h(g), w, rtol=tol * 10, atol=tol * 10)


def test_lti_simulate_convolution_mode_on_cupy():
    rng = np.random.default_rng(10)
    A = rng.standard_normal((3, 3)) * 0.3
    B, C, u = rng.standard_normal((3, 2)), rng.standard_normal((1, 3)), rng.standard_normal((2, 30))
    want = ssmcore.lti_simulate(A, B, C, None, u, mode="convolution")
    got = ssmcore.lti_simulate(*_d(A, B, C), None, cp.asarray(u), mode="convolution")
    np.testing.assert_allclose(_h(got), want, rtol=1e-9, atol=1e-9)
