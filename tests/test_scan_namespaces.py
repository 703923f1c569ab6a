"""linear_scan on every array namespace (numpy; array-api-strict on a non-CPU device; CuPy on a GPU).

The strict namespace runs the device-neutral front door and backward glue
without a GPU: any NumPy-only call in them raises. The same bodies are the
GPU oracle when a device is present (the ``cupy`` parameter).
"""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore
from ssmcore.dispatch import UnsupportedBackendError, capabilities

CASES = [
    # (a shape, b shape, h0 shape or None, dtype)
    ((3, 7), (3, 7), None, np.float64),
    ((3, 1), (2, 3, 5), (3,), np.float32),
    ((1,), (4, 6), (4,), np.complex128),
    ((2, 4, 9), (2, 4, 9), (2, 4), np.complex64),
    ((5, 1), (5, 1), (), np.float64),  # L = 1
    ((2, 0), (2, 0), (2,), np.float64),  # L = 0
]


def _data(rng, shape, dtype, scale=1.0):
    x = scale * rng.uniform(0.5, 0.99, shape)
    if np.dtype(dtype).kind == "c":
        x = x * np.exp(1j * rng.uniform(-0.3, 0.3, shape))
    return x.astype(dtype)


def _tol(dtype):
    return dict(rtol=2e-5, atol=1e-5) if np.dtype(dtype) in (np.float32, np.complex64) else dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{np.dtype(c[3]).name}")
def test_forward_and_vjp_match_numpy(ns, rng, case, reverse):
    a_shape, b_shape, h0_shape, dtype = case
    a = _data(rng, a_shape, dtype)
    b = rng.standard_normal(b_shape).astype(dtype)
    h0 = None if h0_shape is None else rng.standard_normal(h0_shape).astype(dtype)
    kw = dict(reverse=reverse, return_final_state=True)
    (h_ref, hT_ref), pb_ref = ssmcore.vjp("linear_scan", a, b, h0, **kw)
    (h, hT), pb = ssmcore.vjp("linear_scan", ns.asarray(a), ns.asarray(b), ns.asarray(h0), **kw)
    np.testing.assert_allclose(ns.to_numpy(h), h_ref, **_tol(dtype))
    np.testing.assert_allclose(ns.to_numpy(hT), hT_ref, **_tol(dtype))
    gh = rng.standard_normal(h_ref.shape).astype(dtype)
    gT = rng.standard_normal(hT_ref.shape).astype(dtype)
    want = pb_ref((gh, gT))
    got = pb((ns.asarray(gh), ns.asarray(gT)))
    for w, g in zip(want, got):
        if w is None:
            assert g is None
            continue
        g = ns.to_numpy(g)
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, **_tol(dtype))


def test_partial_cotangents_and_needs(ns, rng):
    a, b = _data(rng, (2, 8), np.float64), rng.standard_normal((2, 8))
    (h, hT), pb = ssmcore.vjp("linear_scan", ns.asarray(a), ns.asarray(b), return_final_state=True)
    (h_ref, _), pb_ref = ssmcore.vjp("linear_scan", a, b, return_final_state=True)
    ga, gb, gh0 = pb((None, ns.asarray(np.ones(2))), needs=(False, True, False))
    assert ga is None and gh0 is None
    np.testing.assert_allclose(ns.to_numpy(gb), pb_ref((None, np.ones(2)))[1], rtol=1e-13)


def test_scalar_and_list_inputs_follow_the_array_namespace(ns, rng):
    b = rng.standard_normal((3, 5)).astype(np.float32)
    h = ssmcore.linear_scan(0.5, ns.asarray(b))
    out = ns.to_numpy(h)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ssmcore.linear_scan(0.5, b), rtol=1e-6)


def test_errors_keep_their_messages(ns):
    a = ns.asarray(np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"linear_scan: a has shape \(3, 4\) and b has shape \(2, 4\), which do not"):
        ssmcore.linear_scan(a, ns.asarray(np.ones((2, 4))))
    with pytest.raises(ValueError, match=r"linear_scan: h0 has shape \(2,\); expected \(3,\)"):
        ssmcore.linear_scan(a, a, ns.asarray(np.ones(2)))
    with pytest.raises(TypeError, match=r"linear_scan: b has dtype int64; expected a floating dtype"):
        ssmcore.linear_scan(a, ns.asarray(np.ones((3, 4), dtype=np.int64)))


def test_mixed_namespaces_are_refused():
    strict = pytest.importorskip("array_api_strict")
    a = strict.asarray(np.ones((2, 3)), device=strict.Device("device1"))
    with pytest.raises(TypeError, match=r"linear_scan: mixed array types \['numpy', 'strict'\]"):
        ssmcore.linear_scan(a, np.ones((2, 3)))


def test_out_is_numpy_only(ns):
    if ns.name == "numpy":
        pytest.skip("out= is the NumPy path")
    with pytest.raises(TypeError, match="out= is supported for NumPy inputs only"):
        ssmcore.linear_scan(ns.asarray(np.ones((2, 3))), ns.asarray(np.ones((2, 3))), out=np.empty((2, 3)))


def test_capabilities_drive_a_uniform_error(monkeypatch):
    """An op without a kernel for the selected backend fails in the dispatcher, naming the op."""
    import ssmcore.dispatch as dispatch

    assert capabilities()["linear_scan"][:2] == ("numpy", "numba")
    monkeypatch.setitem(dispatch._CAPABILITIES, "linear_scan", ("numba",))
    with pytest.raises(UnsupportedBackendError, match=r"linear_scan: no NumPy reference yet; it runs on numba"):
        ssmcore.linear_scan(np.ones((2, 3)), np.ones((2, 3)), backend="numpy")
