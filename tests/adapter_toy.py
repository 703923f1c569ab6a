"""A toy op for the adapter tests: exercises options, optional and scalar inputs, tuples, aliasing.

    toy(x, y=None, scale=1.0, *, c=None, mode="mul", pair=False)
        mode "mul":      out = x * y * scale * c   (missing y / c count as 1)
        mode "identity": out = x  (returns the input array itself: adapters must copy)
        pair=True:       returns (out, 2 x)

Its backward is written by hand in the core's convention (transpose of the
linearisation, no conjugation). It is registered only for the duration of an
adapter test module (see :func:`registered`), so other test modules never see it.
"""

from __future__ import annotations

import contextlib

import numpy as np

from ssmcore import registry


def _k(y, scale, c):
    k = scale  # a Python float stays weak: it must not widen float32
    if y is not None:
        k = k * y
    if c is not None:
        k = k * c
    return k


def _fwd(x, y=None, scale=1.0, *, c=None, mode="mul", pair=False):
    x = np.asarray(x)
    out = x if mode == "identity" else x * _k(y, scale, c)
    return ((out, 2 * x) if pair else out), (x, y, scale, c, mode, pair)


def _like(g, ref):
    """Gradient in its input's dtype (real part for real inputs)."""
    g = np.asarray(g)
    if np.asarray(ref).dtype.kind != "c":
        g = g.real
    return g.astype(np.asarray(ref).dtype).reshape(np.shape(ref))


def _bwd(res, ct):
    x, y, scale, c, mode, pair = res
    g, g2 = ct if pair else (ct, None)
    if mode == "identity":
        gx, gy, gs = g, None, None
    else:
        gx = g * _k(y, scale, c)
        gy = None if y is None else g * x * _k(None, scale, c)
        gs = None if isinstance(scale, (int, float)) else np.sum(g * x * _k(y, 1.0, c))
    if g2 is not None:
        gx = gx + 2 * g2
    return (_like(gx, x), None if gy is None else _like(gy, y), None if gs is None else _like(gs, scale))


def toy(x, y=None, scale=1.0, *, c=None, mode="mul", pair=False):
    """Toy op (see module docstring)."""
    return _fwd(x, y, scale, c=c, mode=mode, pair=pair)[0]


@contextlib.contextmanager
def registered(name: str):
    """Register ``toy`` as op ``name`` for the duration of the block."""
    registry.register_op(name, fwd=_fwd, bwd=_bwd, inputs=("x", "y", "scale"))(toy)
    try:
        yield name
    finally:
        registry._REGISTRY.pop(name, None)  # other test modules iterate over the registry
