"""Discretisation front doors on every array namespace (numpy, array-api-strict, cupy on a GPU).

Each test computes the NumPy result and the same call on ``ns`` arrays and
compares them: forward values, ``ssmcore.vjp`` pullbacks, validation messages,
and that results stay in the input's namespace and on its device
(``ns.to_numpy`` asserts both). On strict arrays a stray ``np.*`` in the glue
raises; on CuPy (GPU machines) these tests are the oracle of the device path.
"""

from __future__ import annotations

import numpy as np
import pytest
from namespaces import assert_close

import ssmcore
from ssmcore import cont2discrete, discretize, discretize_diag
from ssmcore.dispatch import capabilities


@pytest.fixture(autouse=True)
def _cupy_needs_kernels(request):
    """On CuPy, a test runs once its functions declare a CuPy kernel (the capability table)."""
    if "ns" not in request.fixturenames or request.getfixturevalue("ns").name != "cupy":
        return
    fns = ("discretize_diag", "discretize", "cont2discrete")
    missing = [f for f in fns if "cupy" not in capabilities()[f]]
    if missing or "reference_backend" in request.node.name:
        pytest.skip(f"no CuPy kernel yet for {missing} (test_cupy_without_kernel_gets_the_uniform_error covers them)"
                    if missing else "backend='numpy' takes NumPy arrays")




def _ct(rng, out):
    def one(o):
        c = rng.standard_normal(o.shape)
        if np.iscomplexobj(o):
            c = c + 1j * rng.standard_normal(o.shape)
        return c.astype(o.dtype)

    return tuple(one(o) for o in out) if isinstance(out, tuple) else one(out)


def _check_op(ns, rng, op, args, kwargs=None, rtol=1e-12, atol=1e-13):
    """Forward and pullback of ``op`` on ns arrays equal NumPy's."""
    kwargs = kwargs or {}
    out, pull = ssmcore.vjp(op, *args, **kwargs)
    ct = _ct(rng, out)
    grads = pull(ct)
    xargs = [ns.asarray(a) for a in args]
    xout, xpull = ssmcore.vjp(op, *xargs, **kwargs)
    assert_close(ns.to_numpy(xout), out, rtol, atol)
    xct = tuple(ns.asarray(c) for c in ct) if isinstance(ct, tuple) else ns.asarray(ct)
    assert_close(ns.to_numpy(xpull(xct)), grads, rtol, atol)
    # needs: unwanted gradients are None on every namespace
    part = xpull(xct, needs=(True, False, False))
    assert part[1] is None and part[2] is None
    assert_close(ns.to_numpy(part[0]), grads[0], rtol, atol)
    return out


DIAG_CASES = ["zoh", "zoh_euler", "foh", "impulse", "bilinear", "backward_diff"]


@pytest.mark.parametrize("method", DIAG_CASES)
def test_discretize_diag_namespaces(ns, rng, method):
    H, N = 3, 5
    A = -rng.uniform(0.1, 2, (H, N)) + 1j * rng.standard_normal((H, N))
    A[0, 0] = 1e-9  # the phi series branch
    B = rng.standard_normal((H, N))
    dt = rng.uniform(0.01, 0.5, H)  # per channel: gets a state axis
    _check_op(ns, rng, "discretize_diag", (A, B, dt, method))
    # matrix B (..., N, M), a scalar Python dt, real A
    Ar = -rng.uniform(0.1, 2, N)
    Bm = rng.standard_normal((N, 2))
    _check_op(ns, rng, "discretize_diag", (Ar, Bm, 0.3, method))


def test_discretize_diag_gbt_single_precision_and_broadcast(ns, rng):
    A = (-rng.uniform(0.1, 2, (1, 4)) + 1j * rng.standard_normal((1, 4))).astype(np.complex64)
    B = rng.standard_normal((2, 4)).astype(np.float32)
    dt = rng.uniform(0.01, 0.5, (2, 1)).astype(np.float32)
    out = _check_op(ns, rng, "discretize_diag", (A, B, dt, "gbt", 0.3), rtol=1e-5, atol=1e-6)
    assert out[0].dtype == np.complex64 and out[1].dtype == np.complex64


@pytest.mark.parametrize("method", ["zoh", "foh", "impulse", "zoh_euler", "bilinear", "euler"])
def test_discretize_namespaces(ns, rng, method):
    A = rng.standard_normal((2, 3, 3)) - 2 * np.eye(3)
    B = rng.standard_normal((3, 2))
    dt = rng.uniform(0.05, 0.3, 2)
    _check_op(ns, rng, "discretize", (A, B, dt, method), rtol=1e-10, atol=1e-12)


def test_discretize_complex_gbt_alpha(ns, rng):
    A = rng.standard_normal((3, 3)) + 1j * rng.standard_normal((3, 3)) - 2 * np.eye(3)
    B = rng.standard_normal((3, 1))
    _check_op(ns, rng, "discretize", (A, B, 0.1, "gbt", 0.7), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["zoh", "foh", "impulse", "bilinear", "gbt"])
def test_cont2discrete_state_space_namespaces(ns, rng, method):
    A = rng.standard_normal((3, 3)) - 2 * np.eye(3)
    B = rng.standard_normal((3, 2))
    C = rng.standard_normal((1, 3))
    D = np.zeros((1, 2)) if method == "impulse" else rng.standard_normal((1, 2))
    want = cont2discrete((A, B, C, D), 0.1, method=method, alpha=0.25)
    got = cont2discrete(tuple(ns.asarray(x) for x in (A, B, C, D)), 0.1, method=method, alpha=0.25)
    assert got[-1] == 0.1
    assert_close(ns.to_numpy(got[:4]), want[:4], rtol=1e-10, atol=1e-12)


def test_cont2discrete_impulse_error_and_transfer_function_form(ns):
    A, B, C = np.array([[-1.0]]), np.array([[1.0]]), np.array([[1.0]])
    with pytest.raises(ValueError,
                       match=r"method 'impulse' needs a strictly proper system \(D = 0\); got max \|D\| = 0.5"):
        cont2discrete(tuple(ns.asarray(x) for x in (A, B, C, np.array([[0.5]]))), 0.1, method="impulse")
    if ns.name != "numpy":
        with pytest.raises(TypeError, match="cont2discrete: .num, den. and .zeros, poles, gain. systems go through"):
            cont2discrete((ns.asarray(np.array([1.0])), ns.asarray(np.array([1.0, 2.0]))), 0.1)


def test_discretization_validation_messages(ns, rng):
    A = ns.asarray(rng.standard_normal((3, 4)))
    B = ns.asarray(rng.standard_normal(4))
    with pytest.raises(ValueError, match=r"discretize: A has shape \(3, 4\); expected \(\.\.\., N, N\) \(square"):
        discretize(A, ns.asarray(rng.standard_normal((3, 1))), 0.1)
    with pytest.raises(ValueError, match=r"discretize_diag: dt must be > 0; got min -0.5"):
        discretize_diag(A, B, ns.asarray(np.array([0.1, -0.5, 0.2])))
    with pytest.raises(ValueError, match="discretize_diag: dt must be finite"):
        discretize_diag(A, B, ns.asarray(np.array([0.1, np.nan, 0.2])))
    with pytest.raises(TypeError, match="discretize_diag: A has dtype int64; expected a floating dtype"):
        discretize_diag(ns.asarray(np.ones((3, 4), dtype=np.int64)), B, 0.1)
    with pytest.raises(ValueError, match=r"discretize_diag: shapes do not broadcast: A \(3, 4\), dt \(2,\), B \(4,\)"):
        discretize_diag(A, B, ns.asarray(np.array([0.1, 0.2])))


def test_discretize_diag_nan_propagates(ns):
    A = np.array([-1.0, np.nan, -2.0])
    Ad, Bd = discretize_diag(ns.asarray(A), ns.asarray(np.ones(3)), 0.1)
    Ad, Bd = ns.to_numpy((Ad, Bd))
    assert np.isnan(Ad[1]) and np.isnan(Bd[1]) and np.isfinite(Ad[[0, 2]]).all()


def test_reference_backend_on_namespaces(ns, rng):
    """backend='numpy' (the reference) runs on every namespace too and agrees with the default."""
    A = -rng.uniform(0.1, 2, (2, 3)) + 1j * rng.standard_normal((2, 3))
    B = rng.standard_normal((2, 3))
    want = discretize_diag(A, B, 0.2)
    got = discretize_diag(ns.asarray(A), ns.asarray(B), 0.2, backend="numpy")
    assert_close(ns.to_numpy(got), want, rtol=1e-13, atol=1e-15)
    Ad = rng.standard_normal((2, 2, 2)) - np.eye(2)
    Bd = rng.standard_normal((2, 1))
    want = discretize(Ad, Bd, 0.2)
    got = discretize(ns.asarray(Ad), ns.asarray(Bd), 0.2, backend="numpy")
    assert_close(ns.to_numpy(got), want, rtol=1e-10, atol=1e-12)

