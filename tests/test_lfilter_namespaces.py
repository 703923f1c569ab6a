"""lfilter on every array namespace (numpy; array-api-strict on a non-CPU device; CuPy on a GPU).

The strict namespace runs the device-neutral front door and backward glue
without a GPU (any NumPy-only call in them raises); the ``cupy`` parameter
(marked ``gpu``) runs the same checks on the CuPy kernels.
"""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore
from ssmcore._lfilter import lfilter  # registers op "lfilter"

CASES = [
    # (b shape, a shape, x shape, axis, with zi, dtype)
    ((3,), (3,), (2, 9), -1, False, np.float64),
    ((4, 2), (4, 3), (5, 4, 7), -1, True, np.float32),
    ((2,), (1,), (6, 3), 0, True, np.complex128),  # FIR, time first
    ((3, 1, 2), (1, 4, 2), (7, 4), 0, True, np.float64),  # filters broadcast, extra leading axis
    ((2,), (2,), (3, 1), -1, True, np.complex64),  # L = 1
    ((2,), (3,), (2, 0), -1, True, np.float64),  # L = 0
]


def _coeffs(rng, shape, dtype, denominator):
    c = 0.3 * rng.standard_normal(shape)
    if denominator:
        c[..., 0] = 1.5
    return c.astype(dtype)


def _tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if np.dtype(dtype) in (np.float32, np.complex64) else dict(rtol=1e-12, atol=1e-12)


def _zi_shape(b_shape, a_shape, x_shape, axis):
    """The output's shape with the time axis of length K - 1 (docs/signal.md, batching rule)."""
    p = axis % len(x_shape)
    lead = np.broadcast_shapes(b_shape[:-1], a_shape[:-1], x_shape[:p] + x_shape[p + 1:])
    q = p + len(lead) - (len(x_shape) - 1)
    return lead[:q] + (max(b_shape[-1], a_shape[-1]) - 1,) + lead[q:]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-ax{c[3]}-{np.dtype(c[5]).name}")
def test_forward_and_vjp_match_numpy(ns, rng, case):
    b_shape, a_shape, x_shape, axis, with_zi, dtype = case
    b = _coeffs(rng, b_shape, dtype, False)
    a = _coeffs(rng, a_shape, dtype, True)
    x = rng.standard_normal(x_shape).astype(dtype)
    zi = rng.standard_normal(_zi_shape(b_shape, a_shape, x_shape, axis)).astype(dtype) if with_zi else None
    out_ref, pb_ref = ssmcore.vjp("lfilter", b, a, x, axis, zi)
    out, pb = ssmcore.vjp("lfilter", ns.asarray(b), ns.asarray(a), ns.asarray(x), axis, ns.asarray(zi))
    got = ns.to_numpy(out)
    for g, w in zip(got if with_zi else (got,), out_ref if with_zi else (out_ref,)):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, **_tol(dtype))
    cts = tuple(rng.standard_normal(o.shape).astype(dtype) for o in (out_ref if with_zi else (out_ref,)))
    want = pb_ref(cts if with_zi else cts[0])
    have = pb(tuple(ns.asarray(c) for c in cts) if with_zi else ns.asarray(cts[0]))
    for w, g in zip(want, have):
        if w is None:
            assert g is None
            continue
        g = ns.to_numpy(g)
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, **_tol(dtype))


def test_validation_errors_same_messages(ns):
    x = ns.asarray(np.ones((2, 5)))
    msgs = []
    for name in ("numpy", ns.name):
        xx = np.ones((2, 5)) if name == "numpy" else x
        conv = (lambda v: v) if name == "numpy" else ns.asarray
        with pytest.raises(ValueError) as e1:
            lfilter(conv(np.array([1.0, 1.0])), conv(np.array([0.0, 1.0])), xx)
        with pytest.raises(ValueError) as e2:
            lfilter(conv(np.ones(2)), conv(np.ones(2)), xx, zi=conv(np.ones((2, 3))))
        with pytest.raises(ValueError) as e3:
            lfilter(conv(np.ones((3, 2))), conv(np.ones(2)), xx)
        msgs.append((str(e1.value), str(e2.value), str(e3.value)))
    assert msgs[0] == msgs[1]
