"""Mamba-2 SSD on every array namespace (the ``ns`` fixture).

numpy: the default path; strict: array-api-strict arrays on a non-CPU device, so
any stray ``np.*`` in the front door, the dt/gate glue, the backward glue or the
registry raises here, without a GPU; cupy (GPU only): the same checks are the
oracle of the CuPy kernels. Until the dispatch table lists a CuPy kernel for
``ssd``, the cupy parameter checks the uniform "no CuPy kernel yet" error instead.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import ssmcore
from ssmcore.dispatch import UnsupportedBackendError, capabilities

OP_INPUTS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


def _on_device(ns) -> bool:
    return not (ns.name == "cupy" and "cupy" not in capabilities()["ssd"])


def _inputs(rng, *, b=2, L=11, H=4, P=3, G=2, N=5, dtype=np.float64, full=True):
    f = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    args = (f(b, L, H, P), f(b, L, H), -np.exp(f(H)), f(b, L, G, N), f(b, L, G, N))
    kw = {}
    if full:
        kw = dict(D=f(H, P), z=f(b, L, H, P), dt_bias=f(H), initial_states=f(b, H, P, N),
                  seq_idx=np.sort(rng.integers(0, 3, size=(b, L)), axis=1))
    return args, kw


def _to(ns, args, kw):
    return [ns.asarray(a) for a in args], {k: ns.asarray(v) for k, v in kw.items()}


@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("D_shape", ["H", "HP"])
def test_forward_and_final_states_match_numpy(ns, rng, softplus, D_shape):
    args, kw = _inputs(rng)
    if D_shape == "H":
        kw["D"] = kw["D"][:, 0].copy()
    opts = dict(chunk_size=4, dt_softplus=softplus, dt_limit=(0.01, 2.0), return_final_states=True)
    want_out, want_final = ssmcore.ssd(*args, **kw, **opts)
    nargs, nkw = _to(ns, args, kw)
    if not _on_device(ns):
        with pytest.raises(UnsupportedBackendError, match="ssd: no CuPy kernel yet"):
            ssmcore.ssd(*nargs, **nkw, **opts)
        return
    out, final = ns.to_numpy(ssmcore.ssd(*nargs, **nkw, **opts))
    assert out.dtype == want_out.dtype and final.dtype == want_final.dtype
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(final, want_final, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_options(ns, rng, dtype):
    """No D, z, bias, initial state or seq_idx: the launchers supply the zeros."""
    args, _ = _inputs(rng, dtype=dtype, full=False)
    want = ssmcore.ssd(*args, chunk_size=3)
    if not _on_device(ns):
        return
    got = ns.to_numpy(ssmcore.ssd(*[ns.asarray(a) for a in args], chunk_size=3))
    assert got.dtype == want.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("backend", [None, "numpy"])
def test_vjp_matches_numpy(ns, rng, backend):
    args, kw = _inputs(rng)
    opts = dict(chunk_size=4, dt_softplus=True, dt_limit=(0.0, math.inf), return_final_states=True,
                backend=backend)
    (out, final), pb = ssmcore.vjp("ssd", *args, **kw, **opts)
    ct = (rng.standard_normal(out.shape), rng.standard_normal(final.shape))
    want = pb(ct)
    nargs, nkw = _to(ns, args, kw)
    if not _on_device(ns):
        with pytest.raises((UnsupportedBackendError, TypeError)):
            ssmcore.vjp("ssd", *nargs, **nkw, **opts)
        return
    (o2, f2), pb2 = ssmcore.vjp("ssd", *nargs, **nkw, **opts)
    np.testing.assert_allclose(ns.to_numpy(o2), out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ns.to_numpy(f2), final, rtol=1e-12, atol=1e-12)
    got = ns.to_numpy(pb2((ns.asarray(ct[0]), ns.asarray(ct[1]))))
    for name, g, w in zip(OP_INPUTS, got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg=name)
    # no final-state cotangent
    got = ns.to_numpy(pb2((ns.asarray(ct[0]), None)))
    for name, g, w in zip(OP_INPUTS, got, pb((ct[0], None))):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg=name)


def test_vjp_without_options(ns, rng):
    args, _ = _inputs(rng, full=False)
    out, pb = ssmcore.vjp("ssd", *args, chunk_size=5)
    ct = rng.standard_normal(out.shape)
    want = pb(ct)
    if not _on_device(ns):
        return
    _, pb2 = ssmcore.vjp("ssd", *[ns.asarray(a) for a in args], chunk_size=5)
    got = pb2(ns.asarray(ct))
    assert got[5:] == (None, None, None, None)
    for name, g, w in zip(OP_INPUTS[:5], ns.to_numpy(got[:5]), want[:5]):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("chunk_size", [3, 64])
def test_varlen_states_match_numpy(ns, rng, chunk_size):
    """cu_seqlens / return_varlen_states: gathers and chunk-state reads stay in the namespace."""
    args, _ = _inputs(rng, b=1, L=17, full=False)
    cu = np.array([0, 5, 6, 13, 17])
    kw = dict(seq_idx=np.repeat(np.arange(4), np.diff(cu))[None], cu_seqlens=cu,
              initial_states=rng.standard_normal((1, 4, 3, 5)))
    opts = dict(dt_softplus=True, return_final_states=True, return_varlen_states=True)
    want = ssmcore.ssd(*args, chunk_size, **kw, **opts)
    if not _on_device(ns):
        return
    nargs, nkw = _to(ns, args, kw)
    got = ssmcore.ssd(*nargs, chunk_size, **nkw, **opts)
    for g, w in zip(ns.to_numpy(got), want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_validation_messages(ns, rng):
    args, _ = _inputs(rng, full=False)
    nargs = [ns.asarray(a) for a in args]
    if not _on_device(ns):
        return
    with pytest.raises(ValueError, match="ssd: B has 3 groups, which does not divide the 4 heads"):
        bad = ns.asarray(np.zeros((2, 11, 3, 5)))
        ssmcore.ssd(nargs[0], nargs[1], nargs[2], bad, bad)
    with pytest.raises(ValueError, match=r"ssd: dt has shape \(2, 11\); expected \(batch, L, heads\)"):
        ssmcore.ssd(nargs[0], ns.asarray(np.zeros((2, 11))), *nargs[2:])
    with pytest.raises(TypeError, match="ssd: seq_idx has dtype float64; expected an integer dtype"):
        ssmcore.ssd(*nargs, seq_idx=ns.asarray(np.zeros((2, 11))))
    with pytest.raises(TypeError, match="ssd: x has dtype complex128; expected a real"):
        ssmcore.ssd(ns.asarray(np.zeros((2, 11, 4, 3), np.complex128)), *nargs[1:])
