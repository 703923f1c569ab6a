"""Finite-difference check of a registered op's pullback (shared by all VJP tests).

For every differentiable array input x_i and a random direction v_i, the central
difference of the pairing  Re(sum(ct * f(x + eps v)))  must equal
Re(sum(pullback(ct)_i * v_i)) -- the project's complex convention (JAX's: the
transpose of the linearisation, no conjugation).
"""

from __future__ import annotations

import numpy as np

import ssmcore


def _random_like(rng, x):
    x = np.asarray(x)
    v = rng.standard_normal(x.shape)
    if np.iscomplexobj(x):
        v = v + 1j * rng.standard_normal(x.shape)
    return v.astype(x.dtype)


def _pair(ct, y):
    if isinstance(y, tuple):
        return sum(_pair(c, o) for c, o in zip(ct, y))
    return float(np.real(np.sum(np.asarray(ct) * np.asarray(y))))


def check_vjp(op, args, kwargs=None, *, wrt=None, rng=None, eps=1e-6, rtol=1e-6, atol=1e-9, cotangent=None):
    """Assert the pullback of ``op`` matches central differences for each input.

    ``args``/``kwargs`` are the op's arguments. ``wrt`` lists the inputs to check, as
    positional indices or as input names (keyword-only inputs by name); by default every
    float/complex ndarray argument that is one of the op's inputs.
    Returns the gradients so callers can make further assertions.
    """
    kwargs = dict(kwargs or {})
    rng = rng or np.random.default_rng(0)
    opdef = ssmcore.get_op(op)
    bound = opdef.signature.bind(*args, **kwargs)
    out, pullback = ssmcore.vjp(op, *args, **kwargs)
    if cotangent is None:
        cotangent = tuple(_random_like(rng, o) for o in out) if isinstance(out, tuple) else _random_like(rng, out)
    grads = pullback(cotangent)
    if wrt is None:
        wrt = [n for n in opdef.inputs if isinstance(bound.arguments.get(n), np.ndarray)
               and bound.arguments[n].dtype.kind in "fc"]
    for key in wrt:
        name = opdef.inputs[key] if isinstance(key, int) else key
        x = np.asarray(bound.arguments[name])
        v = _random_like(rng, x)

        def f(value):
            b = opdef.signature.bind(*args, **kwargs)
            b.arguments[name] = value
            return opdef.fn(*b.args, **b.kwargs)

        fd = (_pair(cotangent, f(x + eps * v)) - _pair(cotangent, f(x - eps * v))) / (2 * eps)
        g = grads[opdef.inputs.index(name)]
        assert g is not None, f"{opdef.name}: no gradient for {name}"
        assert np.shape(g) == x.shape, f"{opdef.name}: gradient for {name} has shape {np.shape(g)}, input {x.shape}"
        an = float(np.real(np.sum(np.asarray(g) * v)))
        scale = max(abs(fd), abs(an), 1.0)
        assert abs(an - fd) <= atol + rtol * scale, (
            f"{opdef.name}: d/d{name}: pullback {an!r} vs finite differences {fd!r}"
        )
    return grads
