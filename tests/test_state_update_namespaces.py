"""selective_state_update on every array namespace (the ``ns`` fixture).

Forward, VJP, state_batch_indices, in-place refusal, errors and result placement.
"""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore
from ssmcore.dispatch import UnsupportedBackendError, capabilities

FN = "selective_state_update"


def _on_device(ns) -> bool:
    return not (ns.name == "cupy" and "cupy" not in capabilities()[FN])


def _case(rng, *, heads, cplx=False, cache=None):
    f = lambda *s: rng.standard_normal(s)  # noqa: E731
    b, N = 3, 4
    cs = (2, 3) if heads else (6,)
    S = b if cache is None else cache
    A = -0.5 * rng.random((*cs, N)) - 0.1 + (1j * f(*cs, N) if cplx else 0)
    state = f(S, *cs, N) + (1j * f(S, *cs, N) if cplx else 0)
    args = [state, f(b, *cs), 0.5 * rng.random((b, *cs)), A, f(b, 2, N), f(b, 2, N)]
    kw = dict(D=f(*cs), z=f(b, *cs), dt_bias=0.3 * f(*cs), dt_softplus=True)
    return args, kw


def _ns(ns, args, kw):
    kw = {k: (ns.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    return [ns.asarray(a) for a in args], kw


@pytest.mark.parametrize("heads", [False, True])
@pytest.mark.parametrize("cplx", [False, True])
def test_forward_matches_numpy(ns, rng, heads, cplx):
    args, kw = _case(rng, heads=heads, cplx=cplx)
    want = ssmcore.selective_state_update(*args, **kw)
    nargs, nkw = _ns(ns, args, kw)
    if not _on_device(ns):
        with pytest.raises(UnsupportedBackendError, match="selective_state_update: no CuPy kernel yet"):
            ssmcore.selective_state_update(*nargs, **nkw)
        return
    got = ns.to_numpy(ssmcore.selective_state_update(*nargs, **nkw))
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    a32 = [ns.asarray(a.astype(np.complex64 if np.iscomplexobj(a) else np.float32)) for a in args]
    o32, s32 = ns.to_numpy(ssmcore.selective_state_update(*a32))
    assert o32.dtype == np.float32 and s32.dtype == (np.complex64 if cplx else np.float32)


@pytest.mark.parametrize("idx, pad", [([4, 0, 2], None), ([1, 1, 3], None), ([2, -1, 0], -1)])
def test_state_batch_indices_match_numpy(ns, rng, idx, pad):
    if not _on_device(ns):
        pytest.skip("no CuPy kernel yet (the uniform error is checked above)")
    args, kw = _case(rng, heads=True, cache=5)
    kw.update(state_batch_indices=np.asarray(idx), pad_slot_id=pad)
    want = ssmcore.selective_state_update(*args, **kw)
    nargs, nkw = _ns(ns, args, kw)
    got = ns.to_numpy(ssmcore.selective_state_update(*nargs, **nkw))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(ns.to_numpy(nargs[0]), args[0])  # functional: the cache is untouched


@pytest.mark.parametrize("indices", [False, True])
@pytest.mark.parametrize("cplx", [False, True])
def test_vjp_matches_numpy(ns, rng, indices, cplx):
    if not _on_device(ns):
        pytest.skip("no CuPy kernel yet (the uniform error is checked above)")
    args, kw = _case(rng, heads=True, cplx=cplx, cache=5 if indices else None)
    if indices:
        kw["state_batch_indices"] = np.array([3, 3, 0])
    out, pb = ssmcore.vjp(FN, *args, **kw)
    ct = (rng.standard_normal(out[0].shape), rng.standard_normal(out[1].shape).astype(out[1].dtype))
    want = pb(ct)
    nargs, nkw = _ns(ns, args, kw)
    nout, npb = ssmcore.vjp(FN, *nargs, **nkw)
    got = npb(tuple(ns.asarray(c) for c in ct))
    for g, w in zip(got, want):
        np.testing.assert_allclose(ns.to_numpy(g), w, rtol=1e-11, atol=1e-12)


def test_inplace_is_numpy_only(ns, rng):
    args, kw = _case(rng, heads=False)
    nargs, nkw = _ns(ns, args, kw)
    if ns.name == "numpy":
        st = nargs[0]
        _, same = ssmcore.selective_state_update(*nargs, **nkw, inplace=True)
        assert same is st
        return
    if not _on_device(ns):
        pytest.skip("no CuPy kernel yet")
    with pytest.raises(TypeError, match="selective_state_update: inplace=True needs a NumPy ndarray state"):
        ssmcore.selective_state_update(*nargs, **nkw, inplace=True)


def test_errors_are_the_same(ns, rng):
    args, kw = _case(rng, heads=True)
    nargs, nkw = _ns(ns, args, kw)
    if not _on_device(ns):
        pytest.skip("no CuPy kernel yet")
    with pytest.raises(ValueError, match=r"selective_state_update: state has shape \(3, 2\)"):
        ssmcore.selective_state_update(ns.asarray(np.zeros((3, 2))), *nargs[1:])
    with pytest.raises(ValueError, match=r"selective_state_update: B has shape \(3, 4, 4\)"):
        ssmcore.selective_state_update(*nargs[:4], ns.asarray(np.zeros((3, 4, 4))), nargs[5])
    with pytest.raises(TypeError, match="selective_state_update: state_batch_indices has dtype float64"):
        ssmcore.selective_state_update(*nargs, state_batch_indices=ns.asarray(np.zeros(3)))
