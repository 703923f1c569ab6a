"""selective_scan and selective_state_update on every array namespace (the ``ns`` fixture).

numpy: the default path; strict: array-api-strict arrays on a non-CPU device, so
any stray ``np.*`` in the front door, the backward glue or the registry raises
here, without a GPU; cupy (GPU only): the same checks are the oracle of the
CuPy kernels. Until the dispatch table lists a CuPy kernel for an op, the cupy
parameter checks the uniform "no CuPy kernel yet" error instead.
"""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore
from ssmcore.dispatch import UnsupportedBackendError, capabilities

OP_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0")


def _on_device(ns, fn: str) -> bool:
    """False where ``fn`` has no kernel for ``ns`` yet (the caller then checks the uniform error)."""
    return not (ns.name == "cupy" and "cupy" not in capabilities()[fn])


def _inputs(rng, *, b=2, D=4, L=7, N=3, G=2, cplx=False, dtype=np.float64, seq=True):
    f = lambda *s: rng.standard_normal(s)  # noqa: E731
    cd = np.result_type(dtype, np.complex64)
    A = -0.5 * rng.random((D, N)) - 0.1
    kw = dict(
        u=f(b, D, L).astype(dtype),
        delta=(0.5 * rng.random((b, D, L)) + 0.05).astype(dtype),
        A=(A + 1j * f(D, N)).astype(cd) if cplx else A.astype(dtype),
        B=f(b, G, N, L).astype(dtype),  # grouped
        C=f(b, N, L).astype(dtype),  # variable
        D=f(D).astype(dtype),
        z=f(b, D, L).astype(dtype),
        delta_bias=(0.3 * f(D)).astype(dtype),
        h0=(f(b, D, N) + 1j * f(b, D, N)).astype(cd) if cplx else f(b, D, N).astype(dtype),
    )
    if seq:
        kw["seq_idx"] = np.sort(rng.integers(0, 3, size=(b, L)), axis=1)
    return kw


def _to(ns, kw):
    return {k: ns.asarray(v) for k, v in kw.items()}


@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_forward_and_final_state_match_numpy(ns, rng, cplx, reverse):
    kw = _inputs(rng, cplx=cplx)
    opts = dict(delta_softplus=True, return_last_state=True, reverse=reverse)
    want_out, want_last = ssmcore.selective_scan(**kw, **opts)
    if not _on_device(ns, "selective_scan"):
        with pytest.raises(UnsupportedBackendError, match="selective_scan: no CuPy kernel yet"):
            ssmcore.selective_scan(**_to(ns, kw), **opts)
        return
    out, last = ns.to_numpy(ssmcore.selective_scan(**_to(ns, kw), **opts))
    assert out.dtype == want_out.dtype and last.dtype == want_last.dtype
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(last, want_last, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_options_absent_and_fixed_B(ns, rng, dtype):
    """No optional inputs, fixed (D, N) B: the launchers' dummies; float32 stays float32."""
    kw = _inputs(rng, dtype=dtype, seq=False)
    kw = {k: kw[k] for k in ("u", "delta", "A", "C")}
    kw["B"] = rng.standard_normal((4, 3)).astype(dtype)
    want = ssmcore.selective_scan(**kw)
    if not _on_device(ns, "selective_scan"):
        return
    got = ns.to_numpy(ssmcore.selective_scan(**_to(ns, kw)))
    assert got.dtype == want.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-7)


@pytest.mark.parametrize("cplx", [False, True])
def test_vjp_matches_numpy(ns, rng, cplx):
    kw = _inputs(rng, cplx=cplx)
    opts = dict(delta_softplus=True, return_last_state=True)
    (out, last), pb = ssmcore.vjp("selective_scan", **kw, **opts)
    ct = (rng.standard_normal(out.shape), rng.standard_normal(last.shape) + (1j * rng.standard_normal(last.shape)
                                                                              if cplx else 0))
    want = pb(ct)
    if not _on_device(ns, "selective_scan"):
        with pytest.raises(UnsupportedBackendError):
            ssmcore.vjp("selective_scan", **_to(ns, kw), **opts)
        return
    (o2, l2), pb2 = ssmcore.vjp("selective_scan", **_to(ns, kw), **opts)
    np.testing.assert_allclose(ns.to_numpy(o2), out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ns.to_numpy(l2), last, rtol=1e-12, atol=1e-12)
    got = ns.to_numpy(pb2((ns.asarray(ct[0]), ns.asarray(np.asarray(ct[1])))))
    for name, g, w in zip(OP_INPUTS, got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg=name)
    # a None cotangent for the final state, and only some gradients
    needs = (True, False, True, False, False, False, False, True, False)
    got = ns.to_numpy(pb2((ns.asarray(ct[0]), None), needs=needs))
    want = pb((ct[0], None), needs=needs)
    for name, g, w in zip(OP_INPUTS, got, want):
        if w is None:
            assert g is None, name
        else:
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg=name)


def test_vjp_without_options_gives_none(ns, rng):
    kw = _inputs(rng, seq=False)
    kw = {k: kw[k] for k in ("u", "delta", "A", "B", "C")}
    if not _on_device(ns, "selective_scan"):
        return
    out, pb = ssmcore.vjp("selective_scan", **_to(ns, kw))
    ns.to_numpy(out)  # on the input's device
    grads = pb(None)
    assert grads[5:] == (None, None, None, None)
    g = ns.to_numpy(grads[:5])
    assert all(not np.any(x) for x in g)


def test_validation_messages(ns, rng):
    kw = _to(ns, _inputs(rng, seq=False))
    if not _on_device(ns, "selective_scan"):
        return
    bad = dict(kw, delta=ns.asarray(np.zeros((2, 4, 6))))
    with pytest.raises(ValueError, match=r"selective_scan: delta has shape \(2, 4, 6\); expected \(batch, D, L\)"):
        ssmcore.selective_scan(**bad)
    bad = dict(kw, seq_idx=ns.asarray(np.zeros((2, 7))))
    with pytest.raises(TypeError, match="selective_scan: seq_idx has dtype float64; expected an integer dtype"):
        ssmcore.selective_scan(**bad)
    bad = dict(kw, B=ns.asarray(np.zeros((2, 3, 7), np.complex128)))
    with pytest.raises(TypeError, match="selective_scan: B has dtype complex128 but A is real"):
        ssmcore.selective_scan(**bad)
    bad = dict(kw, u=ns.asarray(np.zeros((2, 4, 7), np.int64)))
    with pytest.raises(TypeError, match="selective_scan: u has dtype int64; expected a floating dtype"):
        ssmcore.selective_scan(**bad)


def test_mixed_namespaces_refused(ns, rng):
    if ns.name == "numpy":
        pytest.skip("needs a second namespace")
    kw = _to(ns, _inputs(rng, seq=False))
    kw["D"] = np.ones(4)
    with pytest.raises(TypeError, match="selective_scan: mixed array types"):
        ssmcore.selective_scan(**kw)


@pytest.mark.parametrize("cplx", [False, True])
def test_state_update_matches_numpy(ns, rng, cplx):
    b, D, N, G = 2, 4, 3, 2
    f = lambda *s: rng.standard_normal(s)  # noqa: E731
    A = -0.5 * rng.random((D, N)) - 0.1 + (1j * f(D, N) if cplx else 0)
    state = f(b, D, N) + (1j * f(b, D, N) if cplx else 0)
    args = (state, f(b, D), 0.5 * rng.random((b, D)), A, f(b, G, N), f(b, N))
    kw = dict(D=f(D), z=f(b, D), dt_bias=f(D), dt_softplus=True)
    want_out, want_state = ssmcore.selective_state_update(*args, **kw)
    nargs = [ns.asarray(a) for a in args]
    nkw = {k: ns.asarray(v) for k, v in kw.items()}
    if not _on_device(ns, "selective_state_update"):
        with pytest.raises(UnsupportedBackendError, match="selective_state_update: no CuPy kernel yet"):
            ssmcore.selective_state_update(*nargs, **nkw)
        return
    out, new_state = ns.to_numpy(ssmcore.selective_state_update(*nargs, **nkw))
    assert out.dtype == want_out.dtype and new_state.dtype == want_state.dtype
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(new_state, want_state, rtol=1e-12, atol=1e-12)
    # float32 without options
    a32 = [ns.asarray(np.asarray(a).astype(np.complex64 if np.iscomplexobj(a) else np.float32)) for a in args]
    out32, st32 = ns.to_numpy(ssmcore.selective_state_update(*a32))
    assert out32.dtype == np.float32 and st32.dtype == (np.complex64 if cplx else np.float32)
    with pytest.raises(ValueError, match=r"selective_state_update: state has shape \(2, 4\)"):
        ssmcore.selective_state_update(ns.asarray(np.zeros((2, 4))), *nargs[1:])
