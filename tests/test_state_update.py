"""selective_state_update (Mamba's decode step).

Reference vs Numba vs mamba_ssm's maths, heads form, groups, state_batch_indices, in-place, VJP,
equivalence with selective_scan.
"""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore
from ssmcore import selective_scan, selective_state_update
from ssmcore.backends.numba import state_update as nb_kernel
from ssmcore.reference import state_update as ref_kernel
from tests.vjp_check import check_vjp


def mamba_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """NumPy port of mamba_ssm's ``selective_state_update_ref`` (updates ``state`` in place, returns out)."""
    has_heads = state.ndim > 3
    if not has_heads:
        state, x, dt, A = state[:, None], x[:, None], dt[:, None], A[None]
        B, C = B[:, None], C[:, None]
        D = None if D is None else D[None]
        z = None if z is None else z[:, None]
        dt_bias = None if dt_bias is None else dt_bias[None]
    nheads = state.shape[1]
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = np.where(dt > 20, dt, np.log1p(np.exp(np.minimum(dt, 20))))
    dA = np.exp(dt[..., None] * A)
    B = np.repeat(B, nheads // B.shape[1], axis=1)
    C = np.repeat(C, nheads // C.shape[1], axis=1)
    dB = dt[..., None] * B[:, :, None, :]
    state[...] = state * dA + dB * x[..., None]
    out = np.einsum("bhdn,bhn->bhd", state, C)
    if D is not None:
        out = out + x * D
    if z is not None:
        out = out * z / (1 + np.exp(-z))
    return out if has_heads else out[:, 0]


def make(rng, *, heads, b=3, H=4, P=5, N=6, G=2, dtype=np.float64, opts=True, cache=None):
    f = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    cs = (H, P) if heads else (H * P,)
    S = b if cache is None else cache
    args = dict(
        state=f(S, *cs, N), x=f(b, *cs), dt=(0.5 * rng.random((b, *cs)) + 0.05).astype(dtype),
        A=(-0.5 * rng.random((*cs, N)) - 0.1).astype(dtype), B=f(b, G, N), C=f(b, G, N),
    )
    if not heads and G == 1:  # mamba_ssm's plain form: B, C (batch, N)
        args["B"], args["C"] = args["B"][:, 0], args["C"][:, 0]
    if opts:
        args.update(D=f(*cs), z=f(b, *cs), dt_bias=(0.3 * f(*cs)).astype(dtype), dt_softplus=True)
    return args


@pytest.mark.parametrize("heads", [False, True])
@pytest.mark.parametrize("opts", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_mamba_ref(heads, opts, dtype):
    rng = np.random.default_rng(1)
    a = make(rng, heads=heads, opts=opts, dtype=dtype, G=2 if heads else 1)
    st = a["state"].astype(np.float64)
    want = mamba_ref(st, *[a[k].astype(np.float64) if isinstance(a[k], np.ndarray) else a[k] for k in list(a)[1:]])
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for backend in ("numpy", "numba"):
        out, new = selective_state_update(**a, backend=backend)
        assert out.dtype == dtype and new.dtype == dtype and new.shape == a["state"].shape
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
        np.testing.assert_allclose(new, st, rtol=tol, atol=tol)
    assert not np.shares_memory(new, a["state"])


def test_plain_groups_differ_for_B_and_C():
    rng = np.random.default_rng(2)
    a = make(rng, heads=False, H=6, P=2)  # D = 12
    a["B"] = rng.standard_normal((3, 3, 6))  # 3 groups
    a["C"] = rng.standard_normal((3, 2, 6))  # 2 groups: canonical heads = lcm = 6
    st = a["state"].copy()
    # Expand the groups by hand: channel d uses group d // (D / G).
    Bf = np.repeat(a["B"], 4, axis=1)  # (b, 12, N)
    Cf = np.repeat(a["C"], 6, axis=1)
    delta = np.log1p(np.exp(a["dt"] + a["dt_bias"]))
    new = np.exp(delta[..., None] * a["A"]) * st + (delta * a["x"])[..., None] * Bf
    y = (np.sum(Cf * new, -1) + a["D"] * a["x"]) * a["z"] / (1 + np.exp(-a["z"]))
    for backend in ("numpy", "numba"):
        out, ns_ = selective_state_update(**a, backend=backend)
        np.testing.assert_allclose(out, y, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ns_, new, rtol=1e-12, atol=1e-12)


def test_b_c_without_group_axis_in_heads_form():
    rng = np.random.default_rng(3)
    a = make(rng, heads=True, G=1)
    a2 = dict(a, B=a["B"][:, 0], C=a["C"][:, 0])
    for backend in ("numpy", "numba"):
        np.testing.assert_allclose(selective_state_update(**a2, backend=backend)[0],
                                   selective_state_update(**a, backend=backend)[0], rtol=1e-13)


@pytest.mark.parametrize("heads", [False, True])
@pytest.mark.parametrize("idx, pad", [([4, 0, 2], None), ([1, 1, 3], None), ([2, -1, 0], -1), ([3, 7, 3], 7)])
def test_state_batch_indices(heads, idx, pad):
    rng = np.random.default_rng(4)
    a = make(rng, heads=heads, cache=5, G=2 if heads else 1)
    idx = np.asarray(idx)
    cache = a["state"].copy()
    want_cache = cache.copy()
    want_out = np.zeros_like(a["x"])
    for i, r in enumerate(idx):  # one batch entry at a time, reading the old cache
        if pad is not None and r == pad:
            continue
        row = cache[r:r + 1].copy()
        sub = {k: (v[i:i + 1] if k in ("x", "dt", "B", "C", "z") else v) for k, v in a.items() if k != "state"}
        want_out[i] = mamba_ref(row, **sub)[0]
        want_cache[r] = row[0]  # the last entry naming a row writes it
    for backend in ("numpy", "numba"):
        out, new = selective_state_update(**a, state_batch_indices=idx, pad_slot_id=pad, backend=backend)
        np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(new, want_cache, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(a["state"], cache)  # functional: the input is untouched
        st = cache.copy()
        out2, same = selective_state_update(**dict(a, state=st), state_batch_indices=idx, pad_slot_id=pad,
                                            backend=backend, inplace=True)
        assert same is st
        np.testing.assert_allclose(out2, want_out, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(st, want_cache, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_inplace(backend):
    rng = np.random.default_rng(5)
    a = make(rng, heads=True)
    out, new = selective_state_update(**a, backend=backend)
    st = a["state"].copy()
    ptr = st.ctypes.data
    out2, same = selective_state_update(**dict(a, state=st), backend=backend, inplace=True)
    assert same is st and st.ctypes.data == ptr
    # (aliasing may change LLVM's vectorisation of the sum over n: last-bit differences)
    np.testing.assert_allclose(out2, out, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(st, new, rtol=1e-14, atol=1e-14)
    # A float32 state with float64 inputs: computed in float64, cast back into the caller's state.
    st32 = a["state"].astype(np.float32)
    selective_state_update(**dict(a, state=st32), backend=backend, inplace=True)
    np.testing.assert_allclose(st32, new, rtol=1e-6, atol=1e-6)
    # A non-contiguous state view is written through.
    big = np.zeros((2,) + a["state"].shape)
    view = big[1]
    view[...] = a["state"]
    sl = np.swapaxes(np.swapaxes(view, 1, 2).copy(), 1, 2)  # F-ish strides
    selective_state_update(**dict(a, state=sl), backend=backend, inplace=True)
    np.testing.assert_allclose(sl, new, rtol=1e-13, atol=1e-13)


def test_inplace_errors():
    rng = np.random.default_rng(6)
    a = make(rng, heads=False)
    ro = a["state"].copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="selective_state_update: inplace=True but state is read-only"):
        selective_state_update(**dict(a, state=ro), inplace=True)
    with pytest.raises(TypeError, match="selective_state_update: inplace must be True or False"):
        selective_state_update(**a, inplace=1)
    A = a["A"] + 0.5j
    with pytest.raises(TypeError, match="inplace=True but state has dtype float64 and A is complex"):
        selective_state_update(**dict(a, A=A), inplace=True)
    assert "inplace" not in ssmcore.get_op("selective_state_update").signature.parameters


@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("heads", [False, True])
def test_kernels_agree_complex(cplx, heads):
    rng = np.random.default_rng(7)
    a = make(rng, heads=heads)
    if cplx:
        a["A"] = a["A"] + 1j * rng.standard_normal(a["A"].shape)
        a["state"] = a["state"] + 1j * rng.standard_normal(a["state"].shape)
        a["B"] = a["B"] + 1j * rng.standard_normal(a["B"].shape)
    r = selective_state_update(**a, backend="numpy")
    n = selective_state_update(**a, backend="numba")
    for u, v in zip(r, n):
        assert u.dtype == v.dtype
        np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parallel", [False, True])
def test_numba_paths_and_nonfinite(parallel, monkeypatch):
    rng = np.random.default_rng(8)
    a = make(rng, heads=False, b=4, H=1, P=500, N=16, G=1, dtype=np.float32)
    if parallel:
        monkeypatch.setattr(nb_kernel, "_PARALLEL_MIN", 1)
    a["dt"][1, 7] = np.nan
    a["x"][2, 9] = np.inf
    r = selective_state_update(**a, backend="numpy")
    n = selective_state_update(**a, backend="numba")
    for u, v in zip(r, n):
        np.testing.assert_allclose(v, u, rtol=3e-5, atol=3e-5)
        assert np.array_equal(np.isnan(u), np.isnan(v))
    assert np.isnan(n[0][1, 7]) and np.isnan(n[1][1, 7]).all()
    assert np.isfinite(n[0][0]).all()


def test_kernel_contract_same_names():
    assert ref_kernel.__all__ == ["state_update_fwd"]
    import inspect
    assert (inspect.signature(ref_kernel.state_update_fwd).parameters.keys()
            == inspect.signature(nb_kernel.state_update_fwd).parameters.keys())


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("heads", [False, True])
@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("cplx", [False, True])
def test_vjp_finite_differences(heads, softplus, cplx):
    rng = np.random.default_rng(9)
    a = make(rng, heads=heads, b=2, H=2, P=3, N=4, G=2)
    a["dt_softplus"] = softplus
    if cplx:
        a["A"] = a["A"] + 1j * rng.standard_normal(a["A"].shape)
        a["state"] = a["state"] + 1j * rng.standard_normal(a["state"].shape)
        a["C"] = a["C"] + 1j * rng.standard_normal(a["C"].shape)
    for backend in ("numba", "numpy"):
        check_vjp("selective_state_update", [], dict(a, backend=backend), rng=rng, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("idx, pad", [([4, 0, 2], None), ([1, 1, 3], None), ([2, -1, 2], -1)])
def test_vjp_with_indices(idx, pad):
    rng = np.random.default_rng(10)
    a = make(rng, heads=True, b=3, H=2, P=2, N=3, cache=5)
    kw = dict(a, state_batch_indices=np.asarray(idx), pad_slot_id=pad)
    g = check_vjp("selective_state_update", [], kw, rng=rng, rtol=1e-6, atol=1e-8)
    assert g[0].shape == (5, 2, 2, 3)


def test_vjp_one_output_cotangent():
    rng = np.random.default_rng(11)
    a = make(rng, heads=False, b=2, H=2, P=2, N=3)
    out, pb = ssmcore.vjp("selective_state_update", **a)
    g1 = pb((np.ones_like(out[0]), None))
    g2 = pb((np.ones_like(out[0]), np.zeros_like(out[1])))
    for u, v in zip(g1, g2):
        np.testing.assert_allclose(u, v)
    check_vjp("selective_state_update", [], a, rng=rng, cotangent=(np.ones_like(out[0]), np.zeros_like(out[1])))
    gm = ssmcore.vjp("selective_state_update", **{**a, "D": None, "z": None, "dt_bias": None})[1](out)
    assert gm[6:] == (None, None, None)


# --------------------------------------------------------------------------- equivalence with the scan


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_steps_equal_selective_scan(backend):
    rng = np.random.default_rng(12)
    b, Dd, L, N, G = 2, 6, 7, 4, 3
    f = lambda *s: rng.standard_normal(s)  # noqa: E731
    u, delta = f(b, Dd, L), 0.5 * rng.random((b, Dd, L))
    A = -rng.random((Dd, N)) - 0.1
    B, C, z = f(b, G, N, L), f(b, N, L), f(b, Dd, L)
    Dv, bias, h0 = f(Dd), 0.3 * f(Dd), f(b, Dd, N)
    out, last = selective_scan(u, delta, A, B, C, Dv, z, bias, True, True, h0=h0)
    st = h0.copy()
    for t in range(L):
        y, _ = selective_state_update(st, u[..., t], delta[..., t], A, B[..., t], C[..., t], Dv, z[..., t], bias,
                                      True, backend=backend, inplace=True)
        np.testing.assert_allclose(y, out[..., t], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st, last, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "change, match",
    [
        (
            dict(state=np.zeros((3, 4, 5, 7))),
            r"state has shape \(3, 4, 5, 7\); expected \(batch, heads, dim, N\) = \(3, 4, 5, 6\)",
        ),
        (
            dict(state=np.zeros((3, 4))),
            r"state has shape \(3, 4\); expected \(batch, D, N\) or \(batch, heads, dim, N\)",
        ),
        (dict(x=np.zeros((3, 20))), r"x has shape \(3, 20\); expected \(batch, heads, dim\)"),
        (dict(dt=np.zeros((3, 4, 4))), r"dt has shape \(3, 4, 4\); expected \(batch, heads, dim\) = \(3, 4, 5\)"),
        (dict(A=np.zeros((4, 6))), r"A has shape \(4, 6\); expected \(heads, dim, N\) with \(heads, dim\)=\(4, 5\)"),
        (dict(B=np.zeros((3, 3, 6))), r"B has shape \(3, 3, 6\); expected .*G dividing heads=4"),
        (dict(C=np.zeros((2, 2, 6))), r"C has shape \(2, 2, 6\); expected .*batch=3"),
        (dict(D=np.zeros(4)), r"D has shape \(4,\); expected \(heads, dim\) = \(4, 5\)"),
        (dict(z=np.zeros((3, 4))), r"z has shape \(3, 4\); expected \(batch, heads, dim\) = \(3, 4, 5\)"),
        (
            dict(state_batch_indices=np.array([0, 1])),
            r"state_batch_indices has shape \(2,\); expected \(batch,\) = \(3,\)",
        ),
        (dict(state_batch_indices=np.array([0, 1, 3])), r"state_batch_indices has entry 3; expected 0 <= index < 3"),
        (dict(state_batch_indices=np.array([0, -1, 2])), r"state_batch_indices has entry -1"),
    ],
)
def test_value_errors(change, match):
    a = make(np.random.default_rng(13), heads=True)
    with pytest.raises(ValueError, match="selective_state_update: " + match):
        selective_state_update(**{**a, **change})


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(x=np.zeros((3, 4, 5), np.int64)), "x has dtype int64"),
        (dict(state_batch_indices=np.zeros(3)), "state_batch_indices has dtype float64; expected an integer"),
        (dict(state_batch_indices=np.arange(3), pad_slot_id=1.0), "pad_slot_id must be an int or None"),
        (dict(dt_softplus="yes"), "dt_softplus must be True or False"),
        (dict(B=np.zeros((3, 2, 6), complex)), "B has dtype complex128 but A is real"),
    ],
)
def test_type_errors(change, match):
    a = make(np.random.default_rng(14), heads=True)
    with pytest.raises(TypeError, match="selective_state_update: " + match):
        selective_state_update(**{**a, **change})


def test_cache_larger_than_batch_needs_indices():
    a = make(np.random.default_rng(15), heads=False, cache=5)
    with pytest.raises(ValueError, match=r"state has shape \(5, 20, 6\); expected \(batch, D, N\) = \(3, 20, 6\)"):
        selective_state_update(**a)


def test_float64_exp_is_accurate_and_keeps_special_values():
    import numba

    @numba.njit
    def ev(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = nb_kernel.exp_step(x[i])
        return out

    x = np.concatenate([np.linspace(-708.3, 709.7, 100001), np.random.default_rng(16).uniform(-40, 3, 10000)])
    w = np.exp(x)
    np.testing.assert_allclose(ev(x), w, rtol=3e-16, atol=0)
    special = ev(np.array([np.nan, np.inf, -np.inf, 0.0, -745.0, 710.0]))
    assert np.isnan(special[0]) and special[1] == np.inf and special[2] == 0.0 and special[3] == 1.0
    assert special[4] == 0.0 and special[5] == np.inf  # flushed below the smallest normal; overflow to inf


def test_huge_decay_underflows_like_the_reference():
    rng = np.random.default_rng(17)
    a = make(rng, heads=True)
    a["dt"][0] = 1e3  # exp(dt A) underflows to 0 for every state of batch 0
    r = selective_state_update(**a, backend="numpy")
    n = selective_state_update(**a, backend="numba")
    for u, v in zip(r, n):
        np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-12)


def test_half_precision_inputs_keep_their_dtype():
    rng = np.random.default_rng(18)
    a = make(rng, heads=False, G=1, opts=False)
    h = {k: (v.astype(np.float16) if k != "state" else v.astype(np.float32)) for k, v in a.items()}
    out, new = selective_state_update(**h)
    assert out.dtype == np.float16 and new.dtype == np.float32  # fp32 state and accumulation, as mamba_ssm
    want, _ = selective_state_update(**{k: v.astype(np.float64) for k, v in h.items()})
    np.testing.assert_allclose(out, want, rtol=2e-3, atol=2e-3)
