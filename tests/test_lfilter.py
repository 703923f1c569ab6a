"""lfilter: scipy-exact semantics, batching over filters, kernels vs reference, VJP."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal as sps
from vjp_check import check_vjp

import ssmcore
from ssmcore._lfilter import lfilter  # registers op "lfilter"
from ssmcore.backends.numba import lfilter as nb_lfilter
from ssmcore.reference import lfilter as ref_lfilter

ORDERS = [(1, 1), (3, 1), (1, 2), (2, 2), (3, 3), (4, 4), (5, 3), (2, 6), (8, 8)]  # K = 1..8


def _filter(rng, nb, na, dtype=np.float64, radius=0.95):
    """A stable filter with poles of modulus <= radius (near the unit circle)."""
    b = rng.standard_normal(nb)
    poles = radius * rng.uniform(0.3, 1.0, na - 1) * np.exp(1j * rng.uniform(0, np.pi, na - 1))
    half = (na - 1) // 2
    a = np.atleast_1d(np.real(np.poly(np.r_[poles[:half], np.conj(poles[:half]), poles.real[half * 2:]])))
    a = a * rng.uniform(0.5, 2.0)  # a[0] != 1: the normalisation is exercised
    if np.dtype(dtype).kind == "c":
        b = b + 1j * rng.standard_normal(nb)
    return b.astype(dtype), a.astype(np.result_type(dtype, a.dtype) if np.dtype(dtype).kind == "c" else dtype)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("nb,na", ORDERS)
def test_bit_identical_to_scipy_real(rng, nb, na, backend):
    """IIR: scipy's operations in scipy's order, so equal bits.

    FIR: scipy uses np.convolve
    (a BLAS dot, then zi added), so the sums are ordered differently: equal to rounding.
    """
    b, a = _filter(rng, nb, na)
    x = rng.standard_normal((3, 64))
    same = np.testing.assert_array_equal if na > 1 else (
        lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-14, atol=1e-15 * np.abs(v).max(initial=1.0)))
    same(lfilter(b, a, x, backend=backend), sps.lfilter(b, a, x))
    zi = rng.standard_normal((3, max(nb, na) - 1))
    y, zf = lfilter(b, a, x, zi=zi, backend=backend)
    yr, zr = sps.lfilter(b, a, x, zi=zi)
    same(y, yr)
    same(zf, zr)


@pytest.mark.parametrize("dtype", [np.float32, np.complex64, np.complex128])
@pytest.mark.parametrize("nb,na", [(2, 2), (3, 3), (4, 6)])
def test_other_dtypes_match_scipy(rng, nb, na, dtype):
    b, a = _filter(rng, nb, na, dtype)
    x = rng.standard_normal((2, 40)).astype(dtype)
    y = lfilter(b, a, x)
    yr = sps.lfilter(b, a, x)
    assert y.dtype == yr.dtype
    tol = 1e-5 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-13
    np.testing.assert_allclose(y, yr, rtol=tol, atol=tol * np.abs(yr).max())


@pytest.mark.parametrize(
    "args",
    [
        (np.float32([1, 1]), np.float32([1, 0.5]), np.ones(3, np.float32)),
        ([1, 1], [1, 0.5], np.ones(3, np.float32)),  # int64 lists promote float32 to float64
        (np.float32([1, 1]), np.float32([1, 0.5]), np.ones(3, np.int8)),
        ([1.0, 1], [1], np.ones(3, np.float16)),
        ([1.0, 1], [1, 0.5], np.ones(3, bool)),
        ([1.0, 1], [1, 0.5j], np.ones(3)),
    ],
)
def test_dtype_rules_are_scipys(args):
    assert lfilter(*args).dtype == sps.lfilter(*args).dtype


def test_longdouble_runs_in_long_double():
    x = np.ones(3, np.longdouble)
    y = lfilter([1.0, 2], [1, 0.2], x)
    assert y.dtype == np.longdouble
    np.testing.assert_array_equal(y, sps.lfilter([1.0, 2], [1, 0.2], x))


@pytest.mark.parametrize(
    "args,kw,exc",
    [
        (([1, 1], [1, 2], [1, 2, 3]), {}, NotImplementedError),
        ((np.uint64([1]), np.uint64([2]), np.uint64([3, 4])), {}, NotImplementedError),  # scipy's test_invalid_params
        (([1.0], [1.0], [1.0, None, 2.0]), {}, TypeError),  # scipy's test_lfilter_bad_object
        (([None], [1.0], [1.0, 2.0, 3.0]), {}, TypeError),
        ((np.ones(2, np.float16), np.ones(2, np.float16), np.ones(3, np.float16)), {}, NotImplementedError),
        (([1.0, 1], [1.0, 0.5], np.ones(3, object)), {}, NotImplementedError),
        (([1.0, 1], [0.0, 1], [1.0, 2, 3]), {}, ValueError),
        (([], [1.0, 0.5], np.ones(3)), {}, ValueError),
        (([1.0], [], np.ones(3)), {}, ValueError),
        (([1.0, 1], [1.0, 0.5], np.array(3.0)), {}, ValueError),
        (([1.0, 1], [1.0, 0.5], np.ones(3)), {"axis": 1}, ValueError),
        (([1.0, 1], [1.0, 0.5], np.ones(3)), {"axis": -2}, ValueError),
        (([1.0, 1], [1.0, 0.5], np.ones(3)), {"zi": [1.0, 2.0]}, ValueError),
        (([1.0, 1], [1.0, 0.5], np.ones((2, 3))), {"zi": [2.0]}, ValueError),
        (([1.0, 1, 1], [1.0, 0.2], np.ones((2, 3))), {"zi": np.ones((2, 1))}, ValueError),
    ],
)
def test_errors_as_scipy(args, kw, exc):
    with pytest.raises(exc):
        sps.lfilter(*args, **kw)
    with pytest.raises(exc, match="lfilter: "):
        lfilter(*args, **kw)


def test_a0_zero_message():
    with pytest.raises(ValueError, match=r"a\[0\] == 0"):
        lfilter([1.0, 1], [0.0, 1], np.ones(3))


def test_fir_a0_zero_divides_like_scipy():
    with np.errstate(divide="ignore"):
        np.testing.assert_array_equal(lfilter([1.0, 1], [0.0], [1.0, 2, 3]), sps.lfilter([1.0, 1], [0.0], [1.0, 2, 3]))


@pytest.mark.parametrize("axis", [0, 1, -1, -3])
def test_axis_and_zi_expansion(rng, axis):
    b, a = _filter(rng, 3, 4)
    x = rng.standard_normal((4, 5, 6))
    np.testing.assert_array_equal(lfilter(b, a, x, axis=axis), sps.lfilter(b, a, x, axis=axis))
    zshape = list(x.shape)
    zshape[axis] = 3
    zshape[(axis + 1) % 3] = 1  # a singleton axis is expanded, as scipy does
    zi = rng.standard_normal(zshape)
    y, zf = lfilter(b, a, x, axis=axis, zi=zi)
    yr, zr = sps.lfilter(b, a, x, axis=axis, zi=zi)
    np.testing.assert_array_equal(y, yr)
    np.testing.assert_array_equal(zf, zr)


def test_nan_inf_propagate_as_scipy():
    x = np.ones(6)
    x[2] = np.nan
    x[4] = np.inf
    for b, a in [([1.0, 0.5], [1.0, -0.5]), ([1.0, 2.0, 1.0], [1.0]), ([1.0], [1.0, np.nan])]:
        np.testing.assert_array_equal(lfilter(b, a, x), sps.lfilter(b, a, x))


def test_lengths_zero_and_one():
    np.testing.assert_array_equal(lfilter([1.0, 1], [1, 0.5], np.ones(1)), sps.lfilter([1.0, 1], [1, 0.5], np.ones(1)))
    y, zf = lfilter([1.0, 1], [1, 0.5], np.ones(1), zi=[1.0])
    yr, zr = sps.lfilter([1.0, 1], [1, 0.5], np.ones(1), zi=[1.0])
    np.testing.assert_array_equal(y, yr)
    np.testing.assert_array_equal(zf, zr)
    assert lfilter([1.0, 1], [1, 0.5], np.zeros((0, 3))).shape == (0, 3)
    # L = 0 with zi: no step is taken, so zf == zi (scipy returns uninitialised memory here).
    y, zf = lfilter([1.0, 1], [1, 0.5], np.zeros((2, 0)), zi=[[3.0], [4.0]])
    assert y.shape == (2, 0)
    np.testing.assert_array_equal(zf, [[3.0], [4.0]])
    # FIR with L = 0 (scipy's np.convolve raises here).
    assert lfilter([1.0, 1], [1.0], np.zeros(0)).shape == (0,)


def test_batched_filters_equal_loop_over_scipy(rng):
    F, B, L = 4, 3, 50
    bs = np.stack([_filter(rng, 3, 3)[0] for _ in range(F)])
    as_ = np.stack([_filter(rng, 3, 3)[1] for _ in range(F)])
    x = rng.standard_normal((B, F, L))
    y = lfilter(bs, as_, x)
    want = np.stack([[sps.lfilter(bs[f], as_[f], x[i, f]) for f in range(F)] for i in range(B)])
    np.testing.assert_array_equal(y, want)
    # b shared, a per filter; x 1-D broadcast against the filters
    x1 = rng.standard_normal(L)
    y = lfilter(bs[0], as_, x1)
    assert y.shape == (F, L)
    np.testing.assert_array_equal(y, np.stack([sps.lfilter(bs[0], as_[f], x1) for f in range(F)]))
    # time axis first: x (L, F), filters (F, n): output (L, F)
    y = lfilter(bs, as_, x[0].T, axis=0)
    np.testing.assert_array_equal(y, np.stack([sps.lfilter(bs[f], as_[f], x[0, f]) for f in range(F)]).T)
    # different orders padded by the filter's own zeros; zi batched
    zi = rng.standard_normal((B, F, 2))
    y, zf = lfilter(bs, as_, x, zi=zi)
    for i in range(B):
        for f in range(F):
            yr, zr = sps.lfilter(bs[f], as_[f], x[i, f], zi=zi[i, f])
            np.testing.assert_array_equal(y[i, f], yr)
            np.testing.assert_array_equal(zf[i, f], zr)


def test_batched_shape_error():
    with pytest.raises(ValueError, match="must broadcast"):
        lfilter(np.ones((3, 2)), np.ones((4, 2)), np.ones((5, 10)))


def test_streaming_equals_one_call(rng):
    b, a = _filter(rng, 4, 4)
    x = rng.standard_normal((2, 90))
    z = np.zeros((2, 3))
    parts = []
    for s in (slice(0, 30), slice(30, 31), slice(31, 31), slice(31, 90)):
        y, z = lfilter(b, a, x[:, s], zi=z)
        parts.append(y)
    np.testing.assert_allclose(np.concatenate(parts, -1), lfilter(b, a, x), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("nb,na", [(1, 1), (3, 1), (2, 2), (3, 3), (3, 5), (6, 3)])  # K = 2, 3: paired channels, odd C
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_numba_kernels_match_reference(rng, nb, na, dtype):
    K = max(nb, na)
    C, L = 5, 33
    b = rng.standard_normal((2, K)).astype(dtype)
    a = np.c_[np.ones(3), 0.3 * rng.standard_normal((3, K - 1))].astype(dtype)
    brow = np.array([0, 1, 0, 1, 1])
    arow = np.array([2, 0, 1, 1, 0])
    x = rng.standard_normal((C, L)).astype(dtype)
    zi = rng.standard_normal((C, K - 1)).astype(dtype)
    y, zf = nb_lfilter.lfilter_fwd(b, brow, a, arow, x, zi)
    yr, zr = ref_lfilter.lfilter_fwd(b, brow, a, arow, x, zi)
    np.testing.assert_array_equal(y, yr)
    np.testing.assert_array_equal(zf, zr)
    gy = rng.standard_normal((C, L)).astype(dtype)
    gzf = rng.standard_normal((C, K - 1)).astype(dtype)
    got = nb_lfilter.lfilter_bwd(b, brow, a, arow, x, y, gy, gzf)
    want = ref_lfilter.lfilter_bwd(b, brow, a, arow, x, y, gy, gzf)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_parallel_path_matches_serial(rng, monkeypatch):
    b, a = _filter(rng, 3, 3)
    x = rng.standard_normal((64, 2000))
    monkeypatch.setattr(nb_lfilter, "PARALLEL_MIN_WORK", 1 << 62)
    serial = lfilter(b, a, x)
    monkeypatch.setattr(nb_lfilter, "PARALLEL_MIN_WORK", 0)
    np.testing.assert_array_equal(lfilter(b, a, x), serial)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("nb,na", [(1, 1), (3, 1), (1, 3), (3, 3), (2, 5)])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_vjp_finite_differences(rng, nb, na, dtype):
    b, a = _filter(rng, nb, na, dtype, radius=0.8)
    x = rng.standard_normal((2, 12)).astype(dtype)
    check_vjp("lfilter", (b, a, x), rng=rng)
    zi = rng.standard_normal((2, max(nb, na) - 1)).astype(dtype)
    if zi.shape[-1]:
        check_vjp("lfilter", (b, a, x), {"zi": zi}, rng=rng)


def test_vjp_batched_axis_broadcast(rng):
    bs = rng.standard_normal((3, 1, 2))  # filters broadcast over a middle axis
    as_ = np.concatenate([np.full((1, 4, 1), 1.5), 0.3 * rng.standard_normal((1, 4, 2))], -1)
    x = rng.standard_normal((7, 4))  # time first; batch (4,) broadcast against (3, 4)
    zi = rng.standard_normal((3, 2, 4))  # output (3, 7, 4): state axis at position 1
    y, zf = lfilter(bs, as_, x, axis=0, zi=zi)
    assert y.shape == (3, 7, 4) and zf.shape == (3, 2, 4)
    for i in range(3):
        for f in range(4):
            yr, zr = sps.lfilter(bs[i, 0], as_[0, f], x[:, f], zi=zi[i, :, f])
            np.testing.assert_array_equal(y[i, :, f], yr)
            np.testing.assert_array_equal(zf[i, :, f], zr)
    check_vjp("lfilter", (bs, as_, x), {"axis": 0, "zi": zi}, rng=rng)


def test_vjp_short_series_and_zf_only(rng):
    b, a = _filter(rng, 4, 4, radius=0.7)
    x = rng.standard_normal(2)  # L < K - 1: zi reaches zf directly
    zi = rng.standard_normal(3)
    check_vjp("lfilter", (b, a, x), {"zi": zi}, rng=rng)
    (y, zf), pb = ssmcore.vjp("lfilter", b, a, np.zeros(0), zi=zi)
    gzf = rng.standard_normal(3)
    gb, ga, gx, gzi = pb((np.zeros(0), gzf))
    np.testing.assert_array_equal(gzi, gzf)
    assert gx.shape == (0,)


def test_vjp_needs_and_float32(rng):
    b, a = _filter(rng, 3, 3, np.float32)
    x = rng.standard_normal((2, 30)).astype(np.float32)
    y, pb = ssmcore.vjp("lfilter", b, a, x)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    full = pb(gy)
    assert [g.dtype for g in full[:3]] == [np.float32] * 3 and full[3] is None
    part = pb(gy, needs=(False, False, True, False))
    assert part[0] is None and part[1] is None
    np.testing.assert_array_equal(part[2], full[2])
    # the adjoint of a filter is the same filter run backwards in time on the cotangent
    want = sps.lfilter(b.astype(np.float64), a.astype(np.float64), gy[:, ::-1].astype(np.float64))[:, ::-1]
    np.testing.assert_allclose(full[2], want, rtol=1e-4, atol=1e-4)


def test_registered_for_numpy_numba_and_cupy():
    from ssmcore.dispatch import capabilities

    assert capabilities()["lfilter"] == ("numpy", "numba", "cupy")


# ----------------------------------------------------------------------------- adapters (generated from the registry)
def test_torch_adapter_batched_gradients(rng):
    torch = pytest.importorskip("torch")
    import ssmcore.torch as st

    b = rng.standard_normal((3, 2))
    a = np.c_[np.full(3, 1.2), 0.3 * rng.standard_normal((3, 2))]
    x = rng.standard_normal((2, 3, 10))
    tb, ta, tx = (torch.from_numpy(v.copy()).requires_grad_(True) for v in (b, a, x))
    y = st.lfilter(tb, ta, tx)
    np.testing.assert_array_equal(y.detach().numpy(), lfilter(b, a, x))
    w = rng.standard_normal(y.shape)
    (y * torch.from_numpy(w)).sum().backward()
    _, pb = ssmcore.vjp("lfilter", b, a, x)
    for t, g in zip((tb, ta, tx), pb(w)[:3]):
        np.testing.assert_allclose(t.grad.numpy(), g, rtol=1e-12, atol=1e-12)


def test_jax_adapter_grad(rng):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import ssmcore.jax as sj

    b, a = _filter(rng, 3, 3)
    x = rng.standard_normal(12)
    zi = rng.standard_normal(2)
    y, zf = sj.lfilter(jnp.asarray(b), jnp.asarray(a), jnp.asarray(x), zi=jnp.asarray(zi))
    yr, zr = lfilter(b, a, x, zi=zi)
    np.testing.assert_allclose(np.asarray(y), yr, rtol=1e-14)
    g = jax.grad(lambda aa: jnp.sum(sj.lfilter(jnp.asarray(b), aa, jnp.asarray(x))))(jnp.asarray(a))
    _, pb = ssmcore.vjp("lfilter", b, a, x)
    np.testing.assert_allclose(np.asarray(g), pb(np.ones(12))[1], rtol=1e-12)


def test_vjp_mixed_real_coefficients_complex_signal(rng):
    """Real b, a with a complex x and zi: the coefficient gradients are real (the pairing Re(sum(u v)))."""
    b, a = _filter(rng, 3, 3, radius=0.8)
    x = (rng.standard_normal((2, 9)) + 1j * rng.standard_normal((2, 9)))
    zi = rng.standard_normal((2, 2)) + 1j * rng.standard_normal((2, 2))
    grads = check_vjp("lfilter", (b, a, x), {"zi": zi}, rng=rng)
    assert grads[0].dtype == np.float64 and grads[1].dtype == np.float64
    assert grads[2].dtype == np.complex128 and grads[3].dtype == np.complex128


def test_backend_numpy_vjp_equals_numba(rng):
    bs = rng.standard_normal((2, 3))
    as_ = np.c_[np.full(2, 1.3), 0.3 * rng.standard_normal((2, 2))]
    x = rng.standard_normal((2, 20))
    zi = rng.standard_normal((2, 2))
    outs = []
    for backend in ("numba", "numpy"):
        (y, zf), pb = ssmcore.vjp("lfilter", bs, as_, x, zi=zi, backend=backend)
        outs.append((y, zf) + pb((np.ones_like(y), np.ones_like(zf))))
    for u, v in zip(*outs):
        np.testing.assert_allclose(u, v, rtol=1e-13, atol=1e-13)
