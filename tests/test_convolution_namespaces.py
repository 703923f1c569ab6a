"""Convolution-mode front doors on every array namespace (numpy, array-api-strict, cupy on a GPU).

Each test computes the NumPy result and the same call on ``ns`` arrays and
compares them: forward values, ``ssmcore.vjp`` pullbacks (with ``needs``),
validation messages, and that results stay in the input's namespace and on
its device (``ns.to_numpy`` asserts both). On strict arrays a stray ``np.*`` in
the glue raises; on CuPy (GPU machines) these tests are the oracle of the
device path once the ops declare CuPy kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
from namespaces import assert_close

import ssmcore
from ssmcore import dplr_c_tilde, fft_conv, ssm_kernel_dense, ssm_kernel_diag, ssm_kernel_dplr
from ssmcore.dispatch import UnsupportedBackendError, capabilities

KERNEL_OPS = ("ssm_kernel_diag", "ssm_kernel_dplr", "ssm_kernel_dense", "fft_conv")


def _need_cupy_kernels(ns, *ops):
    """On CuPy, a test runs once the ops it calls declare a CuPy kernel (the capability table)."""
    if ns.name != "cupy":
        return
    missing = [op for op in ops if "cupy" not in capabilities()[op]]
    if missing:
        pytest.skip(f"no CuPy kernel yet for {missing} (test_cupy_without_kernel_gets_the_uniform_error covers them)")




def _ct(rng, out):
    c = rng.standard_normal(out.shape)
    if np.iscomplexobj(out):
        c = c + 1j * rng.standard_normal(out.shape)
    return c.astype(out.dtype)


def _check_op(ns, rng, op, args, kwargs=None, rtol=1e-12, atol=1e-13, needs=None):
    """Forward and pullback of ``op`` on ns arrays equal NumPy's; returns the NumPy output."""
    kwargs = kwargs or {}
    out, pull = ssmcore.vjp(op, *args, **kwargs)
    ct = _ct(rng, out)
    grads = pull(ct)
    xout, xpull = ssmcore.vjp(op, *(ns.asarray(a) for a in args), **kwargs)
    assert_close(ns.to_numpy(xout), out, rtol, atol)
    assert_close(ns.to_numpy(xpull(ns.asarray(ct))), grads, rtol, atol)
    if needs is not None:
        part = xpull(ns.asarray(ct), needs=needs)
        for g, n, w in zip(part, needs, grads):
            if n:
                assert_close(ns.to_numpy(g), w, rtol, atol)
            else:
                assert g is None
    return out


def _modes(rng, shape):
    return -rng.uniform(0.1, 1.0, shape) + 1j * rng.uniform(0.5, 5.0, shape)


# --------------------------------------------------------------------------- ssm_kernel_diag


@pytest.mark.parametrize("method", ["zoh", "bilinear", "zoh_euler"])
def test_ssm_kernel_diag_namespaces(ns, rng, method):
    _need_cupy_kernels(ns, "ssm_kernel_diag")
    H, N, L = 3, 4, 37
    A = _modes(rng, (H, N))
    A[0, 0] = 1e-9j  # the phi series branch
    B = rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))
    C = rng.standard_normal((2, H, N)) + 1j * rng.standard_normal((2, H, N))
    dt = rng.uniform(0.01, 0.2, H)
    _check_op(ns, rng, "ssm_kernel_diag", (A, B, C, dt, L), dict(method=method), rtol=1e-10, atol=1e-12,
              needs=(False, True, False, True))


def test_ssm_kernel_diag_broadcast_single_precision_and_edges(ns, rng):
    _need_cupy_kernels(ns, "ssm_kernel_diag")
    N = 5
    A = _modes(rng, N).astype(np.complex64)
    B = np.ones(N, np.float32)
    C = (rng.standard_normal((2, N)) + 1j * rng.standard_normal((2, N))).astype(np.complex64)
    dt = rng.uniform(0.01, 0.2, (2, N)).astype(np.float32)  # per channel and mode
    out = _check_op(ns, rng, "ssm_kernel_diag", (A, B, C, dt, 16), dict(conj_sym=False), rtol=2e-5, atol=1e-6)
    assert out.dtype == np.float32 and out.shape == (2, 16)
    for L in (0, 1):
        K = ssm_kernel_diag(ns.asarray(A), ns.asarray(B), ns.asarray(C), 0.1, L)
        assert ns.to_numpy(K).shape == (2, L)
    A_nan = _modes(rng, N)
    A_nan[2] = np.nan
    K = ns.to_numpy(ssm_kernel_diag(ns.asarray(A_nan), ns.asarray(np.ones(N)), ns.asarray(np.ones(N)), 0.1, 4))
    assert np.isnan(K).all()


# --------------------------------------------------------------------------- ssm_kernel_dplr


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_ssm_kernel_dplr_namespaces(ns, rng, rank):
    _need_cupy_kernels(ns, "ssm_kernel_dplr")
    H, N, L = 2, 3, 12
    lam = _modes(rng, (H, N))
    P = rng.standard_normal((rank, H, N)) + 1j * rng.standard_normal((rank, H, N))
    B = rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))
    C = rng.standard_normal((2, H, N)) + 1j * rng.standard_normal((2, H, N))
    dt = rng.uniform(0.05, 0.2, H)
    _check_op(ns, rng, "ssm_kernel_dplr", (lam, P, B, C, dt, L), rtol=1e-10, atol=1e-12)


def test_ssm_kernel_dplr_odd_length_shared_modes_and_empty(ns, rng):
    _need_cupy_kernels(ns, "ssm_kernel_dplr")
    N = 4
    lam = _modes(rng, N)
    P = rng.standard_normal((1, N)) + 0j
    C = rng.standard_normal(N) + 1j * rng.standard_normal(N)
    _check_op(ns, rng, "ssm_kernel_dplr", (lam, P, np.ones(N), C, 0.1, 7), rtol=1e-10, atol=1e-12)
    K = ssm_kernel_dplr(ns.asarray(lam), ns.asarray(P), ns.asarray(np.ones(N)), ns.asarray(C), 0.1, 0)
    assert ns.to_numpy(K).shape == (0,)


@pytest.mark.parametrize("inverse", [False, True])
def test_dplr_c_tilde_namespaces(ns, rng, inverse):
    _need_cupy_kernels(ns)
    H, N = 2, 3
    lam = _modes(rng, (H, N))
    P = rng.standard_normal((1, H, N)) + 1j * rng.standard_normal((1, H, N))
    C = rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))
    dt = rng.uniform(0.05, 0.2, H)
    want = dplr_c_tilde(lam, P, C, dt, 16, inverse=inverse)
    got = dplr_c_tilde(ns.asarray(lam), ns.asarray(P), ns.asarray(C), ns.asarray(dt), 16, inverse=inverse)
    assert_close(ns.to_numpy(got), want, rtol=1e-11, atol=1e-13)


# --------------------------------------------------------------------------- ssm_kernel_dense


@pytest.mark.parametrize("cplx", [False, True])
def test_ssm_kernel_dense_namespaces(ns, rng, cplx):
    _need_cupy_kernels(ns, "ssm_kernel_dense")
    N, L = 3, 9
    A = 0.4 * rng.standard_normal((2, N, N))
    B = rng.standard_normal(N)
    C = rng.standard_normal((2, N))
    if cplx:
        A = A + 0.3j * rng.standard_normal(A.shape)
    _check_op(ns, rng, "ssm_kernel_dense", (A, B, C, L), rtol=1e-12, atol=1e-13, needs=(True, False, True))
    for L in (0, 1):
        K = ssm_kernel_dense(ns.asarray(A), ns.asarray(B), ns.asarray(C), L)
        assert ns.to_numpy(K).shape == (2, L)


# --------------------------------------------------------------------------- fft_conv


@pytest.mark.parametrize("bidirectional", [False, True])
def test_fft_conv_namespaces(ns, rng, bidirectional):
    _need_cupy_kernels(ns, "fft_conv")
    Bt, H, L, Lk = 2, 3, 29, 11
    u = rng.standard_normal((Bt, H, L))
    K = rng.standard_normal((4 if bidirectional else 2, H, Lk))
    D = rng.standard_normal((2, H))
    _check_op(ns, rng, "fft_conv", (u, K, D), dict(bidirectional=bidirectional), rtol=1e-10, atol=1e-12,
              needs=(False, True, True))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_fft_conv_spectrum_namespaces(ns, rng, bidirectional):
    """A spectrum made from ns arrays serves fft_conv and its pullback on ns arrays."""
    _need_cupy_kernels(ns, "fft_conv", "fft_conv_spectrum")
    u = rng.standard_normal((2, 3, 25))
    K = rng.standard_normal((4 if bidirectional else 2, 3, 7))
    D = rng.standard_normal((2, 3))
    ct = rng.standard_normal((2, 6, 25))
    y, pb = ssmcore.vjp("fft_conv", u, K, D, bidirectional=bidirectional)
    S = ssmcore.fft_conv_spectrum(ns.asarray(K), 40, bidirectional=bidirectional)
    ys, pbs = ssmcore.vjp("fft_conv", ns.asarray(u), S, ns.asarray(D))
    assert_close(ns.to_numpy(ys), y, 1e-10, 1e-12)
    assert_close(ns.to_numpy(pbs(ns.asarray(ct))), pb(ct), 1e-10, 1e-12)


def test_fft_conv_single_precision_1d_kernel_and_empty(ns, rng):
    _need_cupy_kernels(ns, "fft_conv")
    u = rng.standard_normal((2, 3, 16)).astype(np.float32)
    K = rng.standard_normal(5).astype(np.float32)
    out = _check_op(ns, rng, "fft_conv", (u, K, np.array(0.5)), dict(workers=1), rtol=2e-5, atol=2e-5)
    assert out.dtype == np.float32 and out.shape == u.shape
    # L = 0 (and an empty batch): only the skip term, handled by the launchers
    for shape in ((3, 0), (0, 3, 4)):
        ue = np.ones(shape)
        Ke = np.ones((3, 0)) if shape == (3, 0) else np.ones((3, 2))
        _check_op(ns, rng, "fft_conv", (ue, Ke, np.full(3, 2.0)))


def test_convolution_validation_messages(ns, rng):
    _need_cupy_kernels(ns, *KERNEL_OPS)
    u = ns.asarray(rng.standard_normal((2, 3, 8)))
    with pytest.raises(ValueError, match=r"fft_conv: u has shape \(2, 3, 8\); expected \(\.\.\., H, L\) with H=4"):
        fft_conv(u, ns.asarray(rng.standard_normal((4, 5))))
    with pytest.raises(ValueError, match=r"fft_conv: K has length L_k=9 \(shape \(3, 9\)\) but u has L=8"):
        fft_conv(u, ns.asarray(rng.standard_normal((3, 9))))
    with pytest.raises(TypeError, match="fft_conv: u has dtype complex128; expected a real floating dtype"):
        fft_conv(ns.asarray(np.ones((3, 8), complex)), ns.asarray(np.ones((3, 2))))
    A = ns.asarray(_modes(rng, (3, 4)))
    with pytest.raises(ValueError, match="ssm_kernel_diag: dt must be > 0; got min -0.1"):
        ssm_kernel_diag(A, A, A, ns.asarray(np.array([0.1, -0.1, 0.2])), 4)
    with pytest.raises(ValueError, match=r"ssm_kernel_diag: mismatched channel axis: "
                                         r"A \(3, 4\) has H=3, B \(3, 4\) has H=3, C \(2, 4\) has H=2"):
        ssm_kernel_diag(A, A, ns.asarray(np.ones((2, 4))), 0.1, 4)
    with pytest.raises(ValueError, match=r"ssm_kernel_dense: A has shape \(3, 4\); expected \(\.\.\., N, N\)"):
        ssm_kernel_dense(ns.asarray(np.ones((3, 4))), ns.asarray(np.ones(4)), ns.asarray(np.ones(4)), 3)


def test_reference_backend_on_namespaces(ns, rng):
    """backend='numpy' (the materialised reference) runs on every namespace and agrees with the default."""
    if ns.name == "cupy":
        pytest.skip("backend='numpy' takes NumPy arrays")
    A, B, C = _modes(rng, (2, 3)), np.ones(3), rng.standard_normal((2, 3)) + 0j
    want = ssm_kernel_diag(A, B, C, 0.1, 10)
    got = ssm_kernel_diag(ns.asarray(A), ns.asarray(B), ns.asarray(C), 0.1, 10, backend="numpy")
    assert_close(ns.to_numpy(got), want, rtol=1e-10, atol=1e-12)
    u, K = rng.standard_normal((2, 12)), rng.standard_normal((2, 4))
    got = ns.to_numpy(fft_conv(ns.asarray(u), ns.asarray(K), backend="numpy"))
    assert_close(got, fft_conv(u, K), rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
def test_cupy_without_kernel_gets_the_uniform_error():
    """Ops without a CuPy kernel refuse CuPy arrays with the dispatcher's one error."""
    import cupy

    x = cupy.asarray(np.array([-1.0 + 1j, -2.0 + 1j]))
    calls = {
        "ssm_kernel_diag": lambda: ssm_kernel_diag(x, x, x, 0.1, 4),
        "ssm_kernel_dplr": lambda: ssm_kernel_dplr(x, x[None], x, x, 0.1, 4),
        "ssm_kernel_dense": lambda: ssm_kernel_dense(cupy.eye(2), cupy.ones(2), cupy.ones(2), 4),
        "fft_conv": lambda: fft_conv(cupy.ones((2, 8)), cupy.ones((2, 3))),
    }
    for op, call in calls.items():
        if "cupy" in capabilities()[op]:
            continue
        with pytest.raises(UnsupportedBackendError, match=f"{op}: no CuPy kernel yet"):
            call()
