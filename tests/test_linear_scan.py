"""Tests of ssmcore._scan.linear_scan: reference agreement, paths, edge cases, VJP."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import ssmcore
from ssmcore._scan import linear_scan
from ssmcore.backends.numba import scan as nbscan
from ssmcore.reference import scan as refscan
from tests.vjp_check import check_vjp

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]


def tol(dtype):
    """Relative tolerance for comparing with a float64/complex128 loop."""
    return 2e-5 if np.dtype(dtype).itemsize <= 8 and np.dtype(dtype) != np.float64 else 1e-12


def coeffs(rng, shape, dtype, lo=0.5, hi=0.99):
    """Stable coefficients |a| < 1 (complex ones rotate)."""
    a = rng.uniform(lo, hi, shape)
    if np.dtype(dtype).kind == "c":
        a = a * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
    return a.astype(dtype)


def values(rng, shape, dtype):
    x = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


def loop_scan(a, b, h0=None, reverse=False):
    """Independent spec: a plain Python loop in complex128/float64 over broadcast arrays."""
    a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
    wide = np.complex128 if np.iscomplexobj(a) or np.iscomplexobj(b) or np.iscomplexobj(h0) else np.float64
    a = a.astype(wide)
    b = b.astype(wide)
    L = b.shape[-1]
    out = np.empty(b.shape, wide)
    h = np.zeros(b.shape[:-1], wide) if h0 is None else np.broadcast_to(np.asarray(h0, wide), b.shape[:-1]).copy()
    for t in range(L - 1, -1, -1) if reverse else range(L):
        h = a[..., t] * h + b[..., t]
        out[..., t] = h
    return out


def assert_close(x, ref, dtype):
    scale = max(1.0, float(np.max(np.abs(ref)))) if np.size(ref) else 1.0
    np.testing.assert_allclose(x, ref, rtol=tol(dtype), atol=tol(dtype) * scale)


# --------------------------------------------------------------------------- forward values


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("reverse", [False, True])
def test_matches_loop_every_dtype(rng, dtype, backend, reverse):
    a = coeffs(rng, (3, 4, 97), dtype)
    b = values(rng, (3, 4, 97), dtype)
    h0 = values(rng, (3, 4), dtype)
    h = linear_scan(a, b, h0, reverse=reverse, backend=backend)
    assert h.dtype == dtype and h.shape == (3, 4, 97)
    assert_close(h, loop_scan(a, b, h0, reverse), dtype)


@pytest.mark.parametrize(
    "a_shape,b_shape",
    [
        ((4, 1), (2, 4, 33)),  # constant in time, per channel, shared by the batch
        ((33,), (4, 33)),  # one time-varying sequence for every channel
        ((), (4, 33)),  # one scalar for everything
        ((2, 4, 33), (4, 33)),  # b broadcast over the batch
        ((1, 4, 33), (3, 1, 33)),  # both broadcast
        ((4, 33), (4, 1)),  # input constant in time
        ((2, 1, 1), (2, 3, 33)),
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.complex64])
def test_broadcasting(rng, a_shape, b_shape, dtype):
    a = coeffs(rng, a_shape, dtype)
    b = values(rng, b_shape, dtype)
    h = linear_scan(a, b)
    assert h.shape == np.broadcast_shapes(a_shape, b_shape)
    assert_close(h, loop_scan(a, b), dtype)
    assert_close(linear_scan(a, b, backend="numpy"), loop_scan(a, b), dtype)


@given(
    lead=st.sampled_from([(), (1,), (3,), (2, 3)]),
    L=st.integers(0, 40),
    a_time=st.sampled_from(["full", "const"]),
    a_lead=st.sampled_from(["same", "suffix", "none"]),
    dtype=st.sampled_from(DTYPES),
    reverse=st.booleans(),
    data=st.data(),
)
def test_matches_loop_property(lead, L, a_time, a_lead, dtype, reverse, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    al = {"same": lead, "suffix": lead[1:], "none": ()}[a_lead]
    a = coeffs(rng, al + ((L,) if a_time == "full" else (1,)), dtype)
    b = values(rng, lead + (L,), dtype)
    h0 = values(rng, lead, dtype)
    h, hT = linear_scan(a, b, h0, reverse=reverse, return_final_state=True)
    expect = loop_scan(a, b, h0, reverse)
    assert h.shape == expect.shape and h.dtype == dtype
    assert_close(h, expect, dtype)
    assert_close(hT, h0 if L == 0 else expect[..., 0 if reverse else -1], dtype)


def test_geometric_series_closed_form():
    # h_t = sum_{k<=t} a^k = (1 - a^{t+1}) / (1 - a) for b = 1 (textbook identity).
    a, L = 0.75, 50
    t = np.arange(L)
    np.testing.assert_allclose(linear_scan(a, np.ones(L)), (1 - a ** (t + 1)) / (1 - a), rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lfilter_constant_coefficient(rng, dtype):
    from scipy.signal import lfilter

    a = rng.uniform(-0.95, 0.95, 5).astype(dtype)
    b = values(rng, (5, 301), dtype)
    h = linear_scan(a[:, None], b)
    for c in range(5):
        expect = lfilter([1.0], [1.0, -float(a[c])], b[c].astype(np.float64))
        assert_close(h[c], expect, dtype)
    # with an initial state: lfilter's transposed direct-form state is zi = a * h0
    h0 = values(rng, (5,), dtype)
    h = linear_scan(a[:, None], b, h0)
    for c in range(5):
        zi = [float(a[c]) * float(h0[c])]
        expect, _ = lfilter([1.0], [1.0, -float(a[c])], b[c].astype(np.float64), zi=zi)
        assert_close(h[c], expect, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_length_zero_and_one(rng, dtype):
    a = coeffs(rng, (3, 1), dtype)
    h0 = values(rng, (3,), dtype)
    h, hT = linear_scan(a, np.zeros((3, 0), dtype), h0, return_final_state=True)
    assert h.shape == (3, 0) and h.dtype == dtype
    np.testing.assert_array_equal(hT, h0)
    b = values(rng, (3, 1), dtype)
    for reverse in (False, True):
        h, hT = linear_scan(a, b, h0, reverse=reverse, return_final_state=True)
        assert_close(h[:, 0], a[:, 0] * h0 + b[:, 0], dtype)
        np.testing.assert_array_equal(hT, h[:, 0])


def test_zero_channels():
    h = linear_scan(np.ones((0, 5)), np.ones((0, 5)))
    assert h.shape == (0, 5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reverse_is_flip(rng, dtype):
    a = coeffs(rng, (5, 61), dtype)
    b = values(rng, (5, 61), dtype)
    h0 = values(rng, (5,), dtype)
    h_rev, hT = linear_scan(a, b, h0, reverse=True, return_final_state=True)
    h_flip = linear_scan(a[:, ::-1], b[:, ::-1], h0)[:, ::-1]
    assert_close(h_rev, h_flip, dtype)
    np.testing.assert_array_equal(hT, h_rev[:, 0])


@pytest.mark.parametrize("reverse", [False, True])
def test_streaming_chunks_equal_one_scan(rng, reverse):
    a = coeffs(rng, (2, 3, 100), np.float64)
    b = values(rng, (2, 3, 100), np.float64)
    full, full_T = linear_scan(a, b, reverse=reverse, return_final_state=True)
    cuts = [0, 1, 38, 38, 71, 100]  # includes an empty and a length-1 piece
    pieces = list(zip(cuts[:-1], cuts[1:]))
    state = None
    outs = [None] * len(pieces)
    order = range(len(pieces) - 1, -1, -1) if reverse else range(len(pieces))
    for i in order:  # a stream visits the pieces in the scan's direction
        lo, hi = pieces[i]
        outs[i], state = linear_scan(a[..., lo:hi], b[..., lo:hi], state, reverse=reverse, return_final_state=True)
    np.testing.assert_allclose(np.concatenate(outs, -1), full, rtol=1e-13)
    np.testing.assert_allclose(state, full_T, rtol=1e-13)


def test_h0_broadcasts(rng):
    a = coeffs(rng, (2, 3, 20), np.float64)
    b = values(rng, (2, 3, 20), np.float64)
    h0 = values(rng, (3,), np.float64)
    np.testing.assert_allclose(linear_scan(a, b, h0), loop_scan(a, b, np.broadcast_to(h0, (2, 3))), rtol=1e-13)
    np.testing.assert_allclose(linear_scan(a, b, 2.0), loop_scan(a, b, np.full((2, 3), 2.0)), rtol=1e-13)


def test_nan_propagates():
    a = np.full((2, 10), 0.5)
    b = np.ones((2, 10))
    b[0, 4] = np.nan
    a[1, 6] = np.nan
    for backend in ("numba", "numpy"):
        h = linear_scan(a, b, backend=backend)
        assert np.all(np.isfinite(h[0, :4])) and np.all(np.isnan(h[0, 4:]))
        assert np.all(np.isfinite(h[1, :6])) and np.all(np.isnan(h[1, 6:]))
        h = linear_scan(a, b, reverse=True, backend=backend)
        assert np.all(np.isnan(h[0, :5])) and np.all(np.isfinite(h[0, 5:]))


def test_inf_propagates():
    h = linear_scan(np.full(5, 0.5), np.array([1.0, np.inf, 1.0, 1.0, 1.0]))
    assert np.isfinite(h[0]) and np.all(np.isposinf(h[1:]))


@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
def test_non_contiguous_inputs(rng, dtype):
    base_a = coeffs(rng, (6, 80), dtype)
    base_b = values(rng, (80, 6), dtype)
    a = base_a[::2, ::2]  # strided
    b = base_b.T[::2, ::2]  # transposed and strided
    bf = np.asfortranarray(values(rng, (3, 40), dtype))
    assert not a.flags.c_contiguous and not b.flags.c_contiguous
    assert_close(linear_scan(a, b), loop_scan(a, b), dtype)
    assert_close(linear_scan(a, bf, reverse=True), loop_scan(a, bf, reverse=True), dtype)


def test_dtype_promotion():
    f32 = np.ones(4, np.float32)
    c64 = np.ones(4, np.complex64)
    assert linear_scan(f32, f32).dtype == np.float32
    assert linear_scan(0.5, f32).dtype == np.float32  # Python scalars stay weak
    assert linear_scan(f32, f32.astype(np.float64)).dtype == np.float64
    assert linear_scan(f32, c64).dtype == np.complex64
    assert linear_scan(c64, f32).dtype == np.complex64
    assert linear_scan(f32, f32, np.complex128(1j)).dtype == np.complex128
    assert linear_scan(0.5j, [1, 2, 3]).dtype == np.complex128  # lists of ints are float64


def test_input_arrays_not_modified(rng):
    a = coeffs(rng, (3, 9), np.float64)
    b = values(rng, (3, 9), np.float64)
    a0, b0 = a.copy(), b.copy()
    linear_scan(a, b, reverse=True)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


# --------------------------------------------------------------------------- execution paths


def _kernel_args(rng, C, L, La, Ra, dtype):
    a = coeffs(rng, (Ra, La), dtype, 0.9, 0.9999)
    arow = np.ascontiguousarray(np.arange(C) % Ra, dtype=np.intp)
    return a, arow, values(rng, (C, L), dtype), values(rng, (C,), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C,L,La,Ra", [(1, 20011, 20011, 1), (3, 9001, 1, 2), (4, 5003, 5003, 4)])
@pytest.mark.parametrize("reverse", [False, True])
def test_paths_agree_with_reference(rng, monkeypatch, dtype, C, L, La, Ra, reverse):
    # Small windows so the chunked path crosses several windows and ragged chunks.
    monkeypatch.setattr(nbscan, "WINDOW_BYTES", 4096)
    a, arow, b, h0 = _kernel_args(rng, C, L, La, Ra, dtype)
    ref = refscan.scan_fwd(a, arow, b, h0, reverse)
    gh = values(rng, (C, L), dtype)
    gf = values(rng, (C,), dtype)
    ref_g = refscan.scan_bwd(a, arow, ref, h0, gh, gf, reverse)
    for path in ("serial", "channels", "chunked"):
        out = nbscan.scan_fwd(a, arow, b, h0, reverse, path)
        assert_close(out, ref, dtype)
        full = nbscan.scan_bwd(a, arow, ref, h0, gh, gf, reverse, path)
        for got, want in zip(full, ref_g):
            assert got.shape == want.shape
            assert_close(got, want, dtype)
        # Without a's gradient (windows, ragged chunks and tails included): the same g and gh0, bit for bit.
        g, ga, gh0 = nbscan.scan_bwd(a, arow, ref, h0, gh, gf, reverse, path, need_a=False)
        assert ga is None
        np.testing.assert_array_equal(g, full[0])
        np.testing.assert_array_equal(gh0, full[2])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "C,L,La,Ra",
    [
        (37, 4096, 4096, 37),  # several channels per slot, staggered starts, power-of-two rows
        (37, 4096, 1, 5),  # constant a, shared rows
        (5, 3001, 3001, 5),  # fewer channels than slots per thread, odd C
        (9, 1, 1, 9),  # L = 1: every step ends a channel
        (1, 700, 700, 1),  # one channel: three idle slots
    ],
)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_channel_path_bit_identical_to_serial(rng, dtype, C, L, La, Ra, reverse, threads):
    # The channel path's slots run the same operations per step as the serial pairs,
    # forward and backward, and the scan kernels are compiled without FMA contraction,
    # so the results agree exactly on any IEEE host (NaN included: it must stay in its
    # own channel).
    import numba

    a, arow, b, h0 = _kernel_args(rng, C, L, La, Ra, dtype)
    b[C // 2, L // 2] = np.nan
    gh = values(rng, (C, L), dtype)
    gf = values(rng, (C,), dtype)
    want = nbscan.scan_fwd(a, arow, b, h0, reverse, "serial")
    h = np.nan_to_num(want)  # finite states, so that the backward checks values, not NaN
    want_g = nbscan.scan_bwd(a, arow, h, h0, gh, gf, reverse, "serial")
    old = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        got = nbscan.scan_fwd(a, arow, b, h0, reverse, "channels")
        got_g = nbscan.scan_bwd(a, arow, h, h0, gh, gf, reverse, "channels")
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got[C // 2]).any() and not np.isnan(np.delete(got, C // 2, axis=0)).any()
    for x, y in zip(got_g, want_g):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("module", [nbscan, refscan])
def test_kernel_out_argument(rng, module):
    a, arow, b, h0 = _kernel_args(rng, 3, 50, 50, 3, np.float64)
    out = np.empty((3, 50))
    got = module.scan_fwd(a, arow, b, h0, False, out=out)
    assert got is out
    np.testing.assert_allclose(out, loop_scan(a, b, h0), rtol=1e-13)


def test_path_rule():
    assert nbscan.choose_path(4, 100) == "serial"
    assert nbscan.choose_path(1, 1 << 22) == "chunked"
    assert nbscan.choose_path(1024, 4096) == "channels"
    with pytest.raises(ValueError, match="unknown path"):
        nbscan.choose_path(4, 100, "fast")


# --------------------------------------------------------------------------- gradients


def _vjp_case(draw_shape, data, dtype):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    lead, L, a_kind = draw_shape
    b_shape = lead + (L,)
    if a_kind == "full":
        a_shape = b_shape
    elif a_kind == "const":
        a_shape = lead + (1,)
    elif a_kind == "shared":  # broadcast over the leading axis
        a_shape = (1,) + lead[1:] + (L,) if lead else (L,)
    else:  # scalar
        a_shape = ()
    a = coeffs(rng, a_shape, dtype, 0.3, 0.95)
    b = values(rng, b_shape, dtype)
    return rng, a, b


shapes = st.tuples(
    st.sampled_from([(), (3,), (2, 3)]),
    st.integers(0, 9),
    st.sampled_from(["full", "const", "shared", "scalar"]),
)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@given(shape=shapes, reverse=st.booleans(), with_h0=st.booleans(), final=st.booleans(), data=st.data())
def test_vjp_matches_finite_differences(dtype, shape, reverse, with_h0, final, data):
    rng, a, b = _vjp_case(shape, data, dtype)
    lead = b.shape[:-1]
    h0_shape = data.draw(st.sampled_from([lead, lead[1:]])) if with_h0 else None
    args = (a, b) if h0_shape is None else (a, b, values(rng, h0_shape, dtype))
    kwargs = dict(reverse=reverse, return_final_state=final)
    grads = check_vjp("linear_scan", args, kwargs, rng=rng, rtol=1e-6, atol=1e-8)
    for g, x in zip(grads, args):
        assert g.shape == np.shape(x) and g.dtype == x.dtype
    if h0_shape is None:
        assert grads[2] is None


@given(shape=shapes, reverse=st.booleans(), data=st.data())
def test_vjp_reference_backend_and_mixed_dtypes(shape, reverse, data):
    # real a with complex b: the gradient for a is real (the real part of the complex one)
    rng, a, b = _vjp_case(shape, data, np.float64)
    b = b + 1j * values(rng, b.shape, np.float64)
    h0 = values(rng, b.shape[:-1], np.float64)
    for backend in ("numpy", "numba"):
        grads = check_vjp(
            "linear_scan", (a, b, h0), dict(reverse=reverse, return_final_state=True, backend=backend), rng=rng
        )
        assert grads[0].dtype == np.float64 and grads[2].dtype == np.float64


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_vjp_float32_matches_float64(rng, dtype):
    a = coeffs(rng, (4, 50), dtype)
    b = values(rng, (4, 50), dtype)
    h0 = values(rng, (4,), dtype)
    ct = values(rng, (4, 50), dtype)
    wide = np.complex128 if np.dtype(dtype).kind == "c" else np.float64
    _, pb32 = ssmcore.vjp("linear_scan", a, b, h0)
    _, pb64 = ssmcore.vjp("linear_scan", a.astype(wide), b.astype(wide), h0.astype(wide))
    for g32, g64 in zip(pb32(ct), pb64(ct.astype(wide))):
        assert g32.dtype == dtype
        assert_close(g32, g64, dtype)


def test_vjp_formulas_by_hand():
    # L = 2, scalar channel: h0' = a0 h0 + b0, h1 = a1 h0' + b1 (REFERENCE.md section 3).
    a = np.array([0.5, 2.0])
    b = np.array([1.0, 3.0])
    _, pb = ssmcore.vjp("linear_scan", a, b, np.array(4.0), return_final_state=True)
    ga, gb, gh0 = pb((np.array([1.0, 10.0]), np.array(100.0)))
    g1 = 10.0 + 100.0
    g0 = 1.0 + a[1] * g1
    h_first = a[0] * 4.0 + b[0]
    np.testing.assert_allclose(gb, [g0, g1])
    np.testing.assert_allclose(ga, [g0 * 4.0, g1 * h_first])
    np.testing.assert_allclose(gh0, a[0] * g0)


def test_vjp_complex_convention_no_conjugation():
    # y = a * h0 (L = 1, b = 0): the pullback of ct is a * ct for h0, no conjugate.
    a = np.array([0.3 + 0.4j])
    ct = np.array([1.0 - 2.0j])
    _, pb = ssmcore.vjp("linear_scan", a, np.zeros(1, complex), np.array(2.0 + 1.0j))
    ga, gb, gh0 = pb(ct)
    np.testing.assert_allclose(gh0, a[0] * ct[0])
    np.testing.assert_allclose(ga, ct * (2.0 + 1.0j))


# --------------------------------------------------------------------------- bad input


def test_shape_mismatch():
    with pytest.raises(ValueError, match=r"linear_scan: a has shape \(3, 5\) and b has shape \(3, 6\)"):
        linear_scan(np.ones((3, 5)), np.ones((3, 6)))


def test_no_time_axis():
    with pytest.raises(ValueError, match="linear_scan: b has shape"):
        linear_scan(0.5, 1.0)


@pytest.mark.parametrize("h0_shape", [(4,), (2, 3, 5), (3, 2)])
def test_h0_wrong_shape(h0_shape):
    with pytest.raises(ValueError, match=r"linear_scan: h0 has shape .*expected \(2, 3\)"):
        linear_scan(np.ones((2, 3, 5)), np.ones((2, 3, 5)), np.ones(h0_shape))


@pytest.mark.parametrize("which", ["a", "b", "h0"])
def test_integer_arrays_rejected(which):
    args = {"a": np.ones((2, 4)), "b": np.ones((2, 4)), "h0": np.ones(2)}
    args[which] = args[which].astype(np.int64)
    with pytest.raises(TypeError, match=f"linear_scan: {which} has dtype int64"):
        linear_scan(args["a"], args["b"], args["h0"])


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        linear_scan(np.ones(3), np.ones(3), backend="fortran")


def test_cotangent_shape_checked():
    _, pb = ssmcore.vjp("linear_scan", np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="cotangent has shape"):
        pb(np.ones((2, 4)))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("path", ["serial", "channels", "chunked"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64])
def test_nonfinite_pattern_matches_the_reference_on_every_path(path, reverse, dtype):
    """An inf stays inf where the sequential loop keeps it (the chunked path once produced NaN from t = 16416)."""
    C, L = 3, 65536
    a = np.full((C, L), 0.5, dtype=dtype)
    b = np.zeros((C, L), dtype=dtype)
    first = L - 1 if reverse else 0
    b[0, first] = np.inf
    b[1, first + (-7 if reverse else 7)] = np.nan
    a[2, L // 2] = 0.0
    b[2, L // 3 if not reverse else 2 * L // 3] = -np.inf  # -inf times 0 later: NaN in the loop too
    arow = np.arange(C)
    h0 = np.zeros(C, dtype=dtype)
    want = refscan.scan_fwd(a, arow, b, h0, reverse)
    got = nbscan.scan_fwd(a, arow, b, h0, reverse, path)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=0)
    # backward: an infinite cotangent at the scan's last step runs back through every step
    gh = np.zeros((C, L), dtype=dtype)
    gh[0, 0 if reverse else L - 1] = np.inf
    gf = np.zeros(C, dtype=dtype)
    hf = np.nan_to_num(want)
    ref_grads = refscan.scan_bwd(a, arow, hf, h0, gh, gf, reverse)
    for w, g in zip(ref_grads, nbscan.scan_bwd(a, arow, hf, h0, gh, gf, reverse, path)):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
        np.testing.assert_array_equal(np.isinf(g), np.isinf(w))
