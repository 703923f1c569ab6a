"""GPU tests of the CuPy diagonal discretisation (``ssmcore/backends/cupy/discretization.py``).

Every test needs a CUDA device (``@pytest.mark.gpu``; skipped elsewhere by
conftest): the fused kernels against ``ssmcore.backends.numba.discretization`` for
every method (real/complex, mixed, batched dt, M > 1, x -> 0), then the public
``discretize_diag`` and its ``ssmcore.vjp`` on CuPy arrays (float32 and float64).
"""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore
from ssmcore.backends.numba import discretization as nb
from ssmcore.reference.discretization import METHOD_CODES

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")

METHODS = [("zoh", 0.0), ("zoh_euler", 0.0), ("foh", 0.0), ("impulse", 0.0), ("gbt", 0.5), ("gbt", 0.0),
           ("gbt", 1.0)]


def _cd():
    from ssmcore.backends.cupy import discretization as cd

    return cd


@pytest.mark.parametrize("method, alpha", METHODS)
@pytest.mark.parametrize("a_complex, b_complex", [(False, False), (True, True), (False, True), (True, False)])
def test_kernels_match_numba(method, alpha, a_complex, b_complex):
    rng = np.random.default_rng(1)
    R, N, M = 37, 9, 3
    A = -rng.uniform(0.1, 2.0, (R, N)) + (1j * rng.uniform(-4, 4, (R, N)) if a_complex else 0)
    A[0, :3] = [1e-9, 1e-3, 0.0]
    dt = rng.uniform(0.01, 1.5, (R, N))
    B = rng.standard_normal((R, N, M)) + (1j * rng.standard_normal((R, N, M)) if b_complex else 0)
    code = METHOD_CODES[method]
    got = _cd().discretize_diag_fwd(*(cp.asarray(x) for x in (A, dt, B)), code, alpha)
    want = nb.discretize_diag_fwd(A, dt, B, code, alpha)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_allclose(cp.asnumpy(g), w, rtol=1e-12, atol=1e-13)
    gAd = rng.standard_normal(A.shape) + 0j
    gBd = rng.standard_normal(B.shape) + 0j
    got = _cd().discretize_diag_bwd(*(cp.asarray(x) for x in (A, dt, B)), code, alpha, cp.asarray(gAd), cp.asarray(gBd))
    want = nb.discretize_diag_bwd(A, dt, B, code, alpha, gAd, gBd)
    for g, w in zip(got, want):
        np.testing.assert_allclose(cp.asnumpy(g), w, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("method", ["zoh", "foh", "bilinear", "zoh_euler", "backward_diff"])
def test_discretize_diag_front_door_and_vjp(dtype, method):
    rng = np.random.default_rng(2)
    A = (-rng.uniform(0.1, 2, (4, 6)) + (1j * rng.uniform(-3, 3, (4, 6)) if np.dtype(dtype).kind == "c" else 0))
    A = A.astype(dtype)
    B = rng.standard_normal((4, 6, 2)).astype(np.float64)
    dt = rng.uniform(0.01, 0.5, 4)  # batched dt, one per row
    want = ssmcore.discretize_diag(A, B, dt, method)
    got = ssmcore.discretize_diag(*(cp.asarray(x) for x in (A, B, dt)), method)
    tol = 1e-5 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-12
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_allclose(cp.asnumpy(g), w, rtol=tol, atol=tol)
    cts = tuple(rng.standard_normal(w.shape).astype(w.dtype) for w in want)
    _, pb = ssmcore.vjp("discretize_diag", A, B, dt, method)
    _, pbc = ssmcore.vjp("discretize_diag", *(cp.asarray(x) for x in (A, B, dt)), method)
    for g, w in zip(pbc(tuple(cp.asarray(c) for c in cts)), pb(cts)):
        np.testing.assert_allclose(cp.asnumpy(g), w, rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("n", [1, 3, 8])
def test_expm_matches_numba_at_every_pade_degree(cplx, n):
    from ssmcore.backends.numba.discretization import expm as nb_expm

    rng = np.random.default_rng(3)
    Z = rng.standard_normal((40, n, n)) + (1j * rng.standard_normal((40, n, n)) if cplx else 0)
    Z = Z * (np.geomspace(1e-3, 50, 40) / np.abs(Z).sum(axis=-2).max(axis=-1))[:, None, None]
    got = _cd().expm(cp.asarray(Z))
    np.testing.assert_allclose(cp.asnumpy(got), nb_expm(Z), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("method", ["zoh", "foh", "impulse", "bilinear", "zoh_euler"])
def test_discretize_and_cont2discrete_on_cupy(method):
    rng = np.random.default_rng(4)
    A, B = rng.standard_normal((50, 4, 4)) * 0.5, rng.standard_normal((50, 4, 2))
    want = ssmcore.discretize(A, B, 0.1, method)
    got = ssmcore.discretize(cp.asarray(A), cp.asarray(B), 0.1, method)
    for g, w in zip(got, want):
        np.testing.assert_allclose(cp.asnumpy(g), w, rtol=1e-10, atol=1e-11)
    cts = tuple(rng.standard_normal(w.shape) for w in want)
    _, pb = ssmcore.vjp("discretize", A, B, 0.1, method)
    _, pbc = ssmcore.vjp("discretize", cp.asarray(A), cp.asarray(B), 0.1, method)
    for g, w in zip(pbc(tuple(cp.asarray(c) for c in cts)), pb(cts)):
        np.testing.assert_allclose(cp.asnumpy(g), w, rtol=1e-9, atol=1e-10)
    sys_np = (A[0], B[0], np.ones((1, 4)), np.zeros((1, 2)))
    want = ssmcore.cont2discrete(sys_np, 0.1, method if method != "zoh_euler" else "zoh")
    got = ssmcore.cont2discrete(tuple(cp.asarray(x) for x in sys_np), 0.1, method if method != "zoh_euler" else "zoh")
    for g, w in zip(got, want):
        np.testing.assert_allclose(cp.asnumpy(g) if isinstance(g, cp.ndarray) else g, w, rtol=1e-10, atol=1e-11)
