"""Tests of the selective scan (Mamba-1).

Numba kernels vs the NumPy reference vs an independent scalar loop, VJPs vs finite differences,
equivalences and bad input.
"""

from __future__ import annotations

import contextlib
import importlib
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import ssmcore
from ssmcore._selective_scan import selective_scan, selective_state_update
from tests.vjp_check import check_vjp

OPTS = ("D", "z", "delta_bias", "h0")


@contextlib.contextmanager
def small_chunks(n: int):
    """Force the backward to work through several checkpointed chunks on short sequences.

    The checkpoint spacing is the Numba launcher's choice (``CHUNK``), not the front door's.
    """
    nb_mod = importlib.import_module("ssmcore.backends.numba.selective_scan")
    old = nb_mod.CHUNK
    nb_mod.CHUNK = n
    try:
        yield
    finally:
        nb_mod.CHUNK = old


def make(rng, b=2, D=4, L=7, N=3, G=1, cplx=False, bmode="var", cmode="var", dtype=np.float64,
         with_=OPTS, seq=False):
    """Random mamba-test-like inputs: A ~ -0.5 U[0,1) (+ i...), delta ~ 0.5 U[0,1)."""
    f = lambda *s: rng.standard_normal(s)  # noqa: E731
    args = dict(
        u=f(b, D, L),
        delta=0.5 * rng.random((b, D, L)) + 0.05,
        A=-0.5 * rng.random((D, N)) - 0.1 + (1j * rng.standard_normal((D, N)) if cplx else 0),
    )
    for name, mode in (("B", bmode), ("C", cmode)):
        shape = {"fixed": (D, N), "var": (b, N, L), "group": (b, G, N, L)}[mode]
        x = f(*shape)
        if cplx:
            x = x + 1j * f(*shape)
        args[name] = x
    kw = {}
    if "D" in with_:
        kw["D"] = f(D)
    if "z" in with_:
        kw["z"] = f(b, D, L)
    if "delta_bias" in with_:
        kw["delta_bias"] = 0.3 * f(D)
    if "h0" in with_:
        kw["h0"] = f(b, D, N) + (1j * f(b, D, N) if cplx else 0)
    if seq:
        kw["seq_idx"] = np.sort(rng.integers(0, 3, size=(b, L)), axis=1)
    cast = lambda x: x.astype(dtype if not np.iscomplexobj(x) else np.result_type(dtype, np.complex64))  # noqa: E731
    args = {k: cast(v) for k, v in args.items()}
    kw = {k: (cast(v) if k != "seq_idx" else v) for k, v in kw.items()}
    return args, kw


def loop_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, h0=None,
              reverse=False, seq_idx=None):
    """An independent scalar transcription of mamba_ssm's selective_scan_ref semantics (float64)."""
    b_, D_, L = u.shape
    N = A.shape[1]
    cplx = np.iscomplexobj(A)
    out = np.zeros((b_, D_, L))
    last = np.zeros((b_, D_, N), complex if cplx else float)

    def coef(X, bi, d, n, t):
        if X.ndim == 2:
            return X[d, n]
        if X.ndim == 3:
            return X[bi, n, t]
        return X[bi, d // (D_ // X.shape[1]), n, t]

    order = range(L - 1, -1, -1) if reverse else range(L)
    for bi in range(b_):
        for d in range(D_):
            for n in range(N):
                x = h0[bi, d, n] if h0 is not None else 0.0
                prev = None
                for t in order:
                    if seq_idx is not None and prev is not None and seq_idx[bi, t] != seq_idx[bi, prev]:
                        x = 0.0
                    dt = delta[bi, d, t] + (delta_bias[d] if delta_bias is not None else 0.0)
                    if delta_softplus:
                        dt = dt if dt > 20 else math.log1p(math.exp(dt))
                    x = np.exp(dt * A[d, n]) * x + dt * coef(B, bi, d, n, t) * u[bi, d, t]
                    y = coef(C, bi, d, n, t) * x
                    out[bi, d, t] += 2 * y.real if cplx else y
                    prev = t
                last[bi, d, n] = x
            if D is not None:
                out[bi, d] += D[d] * u[bi, d]
            if z is not None:
                out[bi, d] *= z[bi, d] / (1 + np.exp(-z[bi, d]))
    return out, last


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_reference_matches_independent_loop(cplx, reverse):
    rng = np.random.default_rng(1)
    args, kw = make(rng, b=2, D=4, L=9, N=3, G=2, cplx=cplx, bmode="group", cmode="var", seq=True)
    out, last = selective_scan(**args, **kw, delta_softplus=True, return_last_state=True, reverse=reverse,
                               backend="numpy")
    o2, l2 = loop_scan(**args, **kw, delta_softplus=True, reverse=reverse)
    np.testing.assert_allclose(out, o2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(last, l2, rtol=1e-12, atol=1e-12)


modes = st.sampled_from(["fixed", "var", "group"])


@given(
    b=st.integers(1, 2), G=st.sampled_from([1, 2]), per=st.integers(1, 3), L=st.integers(0, 9),
    N=st.integers(1, 4), cplx=st.booleans(), bmode=modes, cmode=modes,
    with_=st.sets(st.sampled_from(OPTS)), softplus=st.booleans(), reverse=st.booleans(),
    seq=st.booleans(), chunk=st.sampled_from([2, 3, 128]), seed=st.integers(0, 2**16),
)
def test_numba_matches_reference_fwd_and_bwd(b, G, per, L, N, cplx, bmode, cmode, with_, softplus, reverse,
                                             seq, chunk, seed):
    rng = np.random.default_rng(seed)
    args, kw = make(rng, b=b, D=G * per, L=L, N=N, G=G, cplx=cplx, bmode=bmode, cmode=cmode,
                    with_=with_, seq=seq)
    common = dict(**args, **kw, delta_softplus=softplus, return_last_state=True, reverse=reverse)
    with small_chunks(chunk):
        (o1, l1), pb1 = ssmcore.vjp("selective_scan", **common)
        (o2, l2), pb2 = ssmcore.vjp("selective_scan", **common, backend="numpy")
        np.testing.assert_allclose(o1, o2, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(l1, l2, rtol=1e-10, atol=1e-12)
        ct = (rng.standard_normal(o1.shape), rng.standard_normal(l1.shape) + (1j * rng.standard_normal(l1.shape)
                                                                                 if cplx else 0))
        for name, g1, g2 in zip(ssmcore.get_op("selective_scan").inputs, pb1(ct), pb2(ct)):
            if g2 is None:
                assert g1 is None, name
                continue
            assert g1.shape == g2.shape and g1.dtype == g2.dtype, name
            np.testing.assert_allclose(g1, g2, rtol=1e-9, atol=1e-11, err_msg=name)


@pytest.mark.parametrize("cplx", [False, True])
def test_float32_against_float64_reference(cplx):
    # mamba_ssm's own fp32 tolerances (tests/ops/test_selective_scan.py): rtol 6e-4, atol 2e-3.
    rng = np.random.default_rng(2)
    args, kw = make(rng, b=2, D=8, L=300, N=16, G=2, cplx=cplx, bmode="group", cmode="var")
    common = dict(**kw, delta_softplus=True, return_last_state=True)
    a32 = {k: v.astype(np.complex64 if np.iscomplexobj(v) else np.float32) for k, v in args.items()}
    k32 = {k: v.astype(np.complex64 if np.iscomplexobj(v) else np.float32) for k, v in kw.items()}
    (o32, l32), pb32 = ssmcore.vjp("selective_scan", **a32, **{**common, **k32})
    (o64, l64), pb64 = ssmcore.vjp("selective_scan", **args, **common, backend="numpy")
    assert o32.dtype == np.float32 and l32.dtype == (np.complex64 if cplx else np.float32)
    np.testing.assert_allclose(o32, o64, rtol=6e-4, atol=2e-3)
    np.testing.assert_allclose(l32, l64, rtol=6e-4, atol=2e-3)
    ct = (rng.standard_normal(o64.shape), rng.standard_normal(l64.shape))
    for name, g32, g64 in zip(ssmcore.get_op("selective_scan").inputs, pb32(ct), pb64(ct)):
        assert g32.dtype == np.result_type(np.float32, g32.dtype) and g32.dtype.itemsize <= 8, name
        # gradients sum over L and batch: compare relative to their scale
        np.testing.assert_allclose(g32, g64, rtol=2e-3, atol=2e-3 * max(1.0, np.abs(g64).max()), err_msg=name)


def test_float32_polynomial_math_accuracy():
    from ssmcore.backends.numba.selective_scan import math_arrays

    x = np.concatenate([np.linspace(-87, 88, 200001), -np.logspace(-8, 1.9, 2001), np.logspace(-8, 1.9, 2001)])
    e, sp, sg = math_arrays(x.astype(np.float32))
    x64 = x.astype(np.float32).astype(np.float64)
    ref_e = np.exp(x64)
    ref_sp = np.where(x64 > 20, x64, np.log1p(np.exp(x64)))
    ref_sg = 1 / (1 + np.exp(-x64))
    assert np.max(np.abs(e / ref_e - 1)) < 1e-6  # measured 4.4e-7 (about 7 ulp)
    assert np.max(np.abs(sp / ref_sp - 1)) < 1e-6
    assert np.max(np.abs(sg / ref_sg - 1)) < 1e-6
    specials = np.array([np.nan, np.inf, -np.inf, -100.0, 100.0], np.float32)
    e, sp, sg = math_arrays(specials)
    assert np.isnan(e[0]) and np.isnan(sp[0]) and np.isnan(sg[0])
    np.testing.assert_array_equal(e[1:], [np.inf, 0, 0, np.inf])
    np.testing.assert_array_equal(sp[1:], [np.inf, 0, 0, 100])
    np.testing.assert_array_equal(sg[1:], [1, 0, 0, 1])


def test_float16_is_upcast_and_returned_as_float16():
    rng = np.random.default_rng(3)
    args, kw = make(rng, with_=("D",))
    a16 = {k: (v.astype(np.float16) if k in ("u", "delta") else v) for k, v in args.items()}
    out = selective_scan(**a16, **kw)
    assert out.dtype == np.float16
    ref = selective_scan(**{**args, "u": a16["u"].astype(np.float64), "delta": a16["delta"].astype(np.float64)},
                         **kw, backend="numpy")
    np.testing.assert_allclose(out, ref, rtol=3e-3, atol=5e-3)  # mamba's fp16 tolerances


@pytest.mark.parametrize("L", [0, 1])
def test_zero_and_one_length(L):
    rng = np.random.default_rng(4)
    args, kw = make(rng, L=L)
    out, last = selective_scan(**args, **kw, return_last_state=True)
    o2, l2 = loop_scan(**args, **kw)
    assert out.shape == (2, 4, L)
    np.testing.assert_allclose(out, o2, atol=1e-12)
    np.testing.assert_allclose(last, l2 if L else kw["h0"], atol=1e-12)
    _, pb = ssmcore.vjp("selective_scan", **args, **kw, return_last_state=True)
    grads = pb((np.ones_like(out), np.ones_like(last)))
    assert grads[0].shape == (2, 4, L)
    if L == 0:
        np.testing.assert_array_equal(grads[-1], np.ones_like(last))  # h0 passes straight through


# --------------------------------------------------------------------------- equivalences


def test_constant_parameters_equal_lti_recurrence():
    rng = np.random.default_rng(5)
    b, D, L, N = 2, 3, 40, 4
    u = rng.standard_normal((b, D, L))
    dt = 0.1 + rng.random(D)
    delta = np.broadcast_to(dt[None, :, None], (b, D, L)).copy()
    A = -rng.random((D, N)) - 0.2
    B = rng.standard_normal((D, N))
    C = rng.standard_normal((D, N))
    out = selective_scan(u, delta, A, B, C)
    # plain LTI loop: x_t = Ad x_{t-1} + Bd u_t, y_t = C x_t with Ad = exp(dt A), Bd = dt B
    Ad = np.exp(dt[:, None] * A)
    Bd = dt[:, None] * B
    x = np.zeros((b, D, N))
    ref = np.zeros((b, D, L))
    for t in range(L):
        x = Ad * x + Bd * u[:, :, t, None]
        ref[:, :, t] = np.sum(C * x, axis=-1)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    try:
        from ssmcore._scan import linear_scan
    except ImportError:  # pragma: no cover - the linear scan is another module's work
        return
    a = np.broadcast_to(Ad[None, :, :, None], (b, D, N, L))
    bb = Bd[None, :, :, None] * u[:, :, None, :]
    h = linear_scan(a, bb)
    np.testing.assert_allclose(out, np.einsum("dn,bdnl->bdl", C, h), rtol=1e-10, atol=1e-12)


def test_reverse_equals_flip():
    rng = np.random.default_rng(6)
    args, kw = make(rng, b=2, D=4, L=11, N=3, G=2, bmode="group", cmode="fixed")
    out = selective_scan(**args, **kw, delta_softplus=True, reverse=True)
    flip = lambda x: x[..., ::-1] if x.ndim >= 3 else x  # noqa: E731
    fargs = {k: (flip(v) if k in ("u", "delta", "B") else v) for k, v in args.items()}
    fkw = {k: (flip(v) if k == "z" else v) for k, v in kw.items()}
    ref = selective_scan(**fargs, **fkw, delta_softplus=True)
    np.testing.assert_allclose(out, ref[..., ::-1], rtol=1e-12, atol=1e-12)


def test_h0_chaining_and_seq_idx_packing():
    rng = np.random.default_rng(7)
    args, kw = make(rng, b=1, D=4, L=12, N=3, bmode="var", cmode="var", with_=("D", "z"))
    full, last = selective_scan(**args, **kw, return_last_state=True)
    cut = 5
    part = lambda sl: {k: (v[..., sl] if v.ndim == 3 else v) for k, v in {**args, **kw}.items()}  # noqa: E731
    o1, s1 = selective_scan(**part(slice(0, cut)), return_last_state=True)
    o2, s2 = selective_scan(**part(slice(cut, None)), h0=s1, return_last_state=True)
    np.testing.assert_allclose(np.concatenate([o1, o2], -1), full, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s2, last, rtol=1e-12, atol=1e-12)
    # packing: two sequences with seq_idx == two independent scans, the second from 0
    seq = np.array([[0] * cut + [1] * (12 - cut)])
    h0 = rng.standard_normal((1, 4, 3))
    packed, plast = selective_scan(**args, **kw, seq_idx=seq, h0=h0, return_last_state=True)
    o1 = selective_scan(**part(slice(0, cut)), h0=h0)
    o2, s2 = selective_scan(**part(slice(cut, None)), return_last_state=True)
    np.testing.assert_allclose(packed, np.concatenate([o1, o2], -1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(plast, s2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_step_loop_equals_scan(cplx, grouped):
    rng = np.random.default_rng(8)
    args, kw = make(rng, b=2, D=4, L=6, N=3, G=2, cplx=cplx, bmode="group" if grouped else "var",
                    cmode="group" if grouped else "var", with_=OPTS)
    out, last = selective_scan(**args, **kw, delta_softplus=True, return_last_state=True)
    state = kw["h0"].copy()
    h0_before = state.copy()
    for t in range(6):
        y, state_new = selective_state_update(
            state, args["u"][..., t], args["delta"][..., t], args["A"], args["B"][..., t], args["C"][..., t],
            D=kw["D"], z=kw["z"][..., t], dt_bias=kw["delta_bias"], dt_softplus=True)
        np.testing.assert_array_equal(state, h0_before if t == 0 else state)  # not mutated
        state = state_new
        np.testing.assert_allclose(y, out[..., t], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(state, last, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- gradients


@given(cplx=st.booleans(), bmode=modes, cmode=modes, reverse=st.booleans(), seq=st.booleans(),
       softplus=st.booleans(), seed=st.integers(0, 2**16))
def test_vjp_matches_finite_differences(cplx, bmode, cmode, reverse, seq, softplus, seed):
    rng = np.random.default_rng(seed)
    a, kw = make(rng, b=2, D=4, L=7, N=3, G=2, cplx=cplx, bmode=bmode, cmode=cmode, seq=seq)
    args = [a["u"], a["delta"], a["A"], a["B"], a["C"], kw.pop("D"), kw.pop("z"), kw.pop("delta_bias"),
            softplus, True]  # positional up to return_last_state=True: the final-state cotangent is checked
    kw["reverse"] = reverse
    with small_chunks(3):
        check_vjp("selective_scan", args, kw, wrt=[*range(8), "h0"], rng=rng, rtol=1e-6, atol=1e-8)


def test_vjp_without_final_state_and_reference_backend():
    rng = np.random.default_rng(9)
    a, kw = make(rng, b=1, D=2, L=5, N=2, with_=("D",))
    args = [a["u"], a["delta"], a["A"], a["B"], a["C"], kw["D"]]
    check_vjp("selective_scan", args, {"backend": "numpy"}, rng=rng)
    check_vjp("selective_scan", args, {}, rng=rng)
    _, pb = ssmcore.vjp("selective_scan", *args)
    g = pb(None)  # all-zero cotangent
    assert all(x is None or not np.any(x) for x in g)
    assert g[6:] == (None, None, None)  # z, delta_bias and h0 not given


# --------------------------------------------------------------------------- bad input


def _base():
    rng = np.random.default_rng(10)
    args, _ = make(rng, b=2, D=4, L=5, N=3, with_=())
    return args


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(u=np.zeros((2, 4))), r"u has shape \(2, 4\); expected \(batch, D, L\)"),
        (dict(delta=np.zeros((2, 4, 6))), r"delta has shape \(2, 4, 6\); expected \(batch, D, L\) = \(2, 4, 5\)"),
        (dict(A=np.zeros((5, 3))), r"A has shape \(5, 3\); expected \(D, N\) with D=4"),
        (dict(B=np.zeros((2, 3, 6))), r"B has shape \(2, 3, 6\); expected \(batch, N, L\) .*L=5"),
        (dict(B=np.zeros((2, 3, 3, 5))), r"B has shape \(2, 3, 3, 5\); expected .*G dividing D=4; got G=3"),
        (dict(C=np.zeros((3, 3, 5))), r"C has shape \(3, 3, 5\); expected \(batch, N, L\) with batch=2"),
        (dict(C=np.zeros((4, 2))), r"C has shape \(4, 2\); expected \(D, N\) = \(4, 3\)"),
        (dict(B=np.zeros((2, 1, 3, 5, 1))), r"B has shape \(2, 1, 3, 5, 1\); expected \(D, N\) fixed"),
        (dict(D=np.zeros(3)), r"D has shape \(3,\); expected \(D,\) = \(4,\)"),
        (dict(delta_bias=np.zeros((4, 1))), r"delta_bias has shape \(4, 1\)"),
        (dict(z=np.zeros((2, 4, 4))), r"z has shape \(2, 4, 4\)"),
        (dict(h0=np.zeros((2, 4, 2))), r"h0 has shape \(2, 4, 2\); expected \(batch, D, N\) = \(2, 4, 3\)"),
        (dict(seq_idx=np.zeros((2, 4), int)), r"seq_idx has shape \(2, 4\); expected \(batch, L\)"),
    ],
)
def test_shape_errors_name_the_argument(change, match):
    with pytest.raises(ValueError, match="selective_scan: " + match):
        selective_scan(**{**_base(), **change})


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(u=np.zeros((2, 4, 5), np.int64)), "u has dtype int64"),
        (dict(delta=np.zeros((2, 4, 5), bool)), "delta has dtype bool"),
        (dict(u=np.zeros((2, 4, 5), complex)), "u has dtype complex128; expected a real"),
        (dict(B=np.zeros((2, 3, 5), complex)), "B has dtype complex128 but A is real"),
        (dict(seq_idx=np.zeros((2, 5))), "seq_idx has dtype float64; expected an integer"),
        (dict(delta_softplus=1), "delta_softplus must be a bool"),
    ],
)
def test_type_errors(change, match):
    with pytest.raises(TypeError, match="selective_scan: " + match):
        selective_scan(**{**_base(), **change})


def test_state_update_errors():
    x = np.zeros((2, 4))
    with pytest.raises(ValueError, match=r"selective_state_update: B has shape \(2, 3, 3\)"):
        selective_state_update(np.zeros((2, 4, 3)), x, x, np.zeros((4, 3)), np.zeros((2, 3, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"selective_state_update: state has shape \(2, 4\)"):
        selective_state_update(np.zeros((2, 4)), x, x, np.zeros((4, 3)), np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(TypeError, match="selective_state_update: x has dtype int64"):
        selective_state_update(np.zeros((2, 4, 3)), x.astype(np.int64), x, np.zeros((4, 3)), np.zeros((2, 3)),
                               np.zeros((2, 3)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_delta_propagates(dtype, bad):
    args = {k: v.astype(dtype) for k, v in _base().items()}
    args["delta"][0, 1, 2] = bad
    out, last = selective_scan(**args, return_last_state=True)
    assert not np.isfinite(out[0, 1, 2])
    assert not np.isfinite(last[0, 1]).all()
    assert np.isfinite(out[1]).all() and np.isfinite(out[0, 0]).all()  # other channels untouched
    _, pb = ssmcore.vjp("selective_scan", **args)
    pb(np.ones_like(out))  # no crash


def test_complex_A_with_real_B_and_C():
    rng = np.random.default_rng(11)
    a, kw = make(rng, b=2, D=4, L=6, N=3, cplx=True, bmode="fixed", cmode="var", with_=("D",))
    a["B"], a["C"] = a["B"].real.copy(), a["C"].real.copy()
    args = [a["u"], a["delta"], a["A"], a["B"], a["C"], kw["D"]]
    grads = check_vjp("selective_scan", args, {}, rng=rng)
    assert grads[3].dtype == np.float64 and grads[4].dtype == np.float64 and grads[2].dtype == np.complex128
    np.testing.assert_allclose(selective_scan(*args), loop_scan(*args)[0], rtol=1e-12, atol=1e-12)
