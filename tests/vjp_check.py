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

    ``args`` are the op's positional arguments; ``wrt`` lists the positional
    indices to check (default: every float/complex ndarray argument).
    Returns the gradients so callers can make further assertions.
    """
    kwargs = kwargs or {}
    rng = rng or np.random.default_rng(0)
    opdef = ssmcore.get_op(op)
    out, pullback = ssmcore.vjp(op, *args, **kwargs)
    if cotangent is None:
        cotangent = tuple(_random_like(rng, o) for o in out) if isinstance(out, tuple) else _random_like(rng, out)
    grads = pullback(cotangent)
    if wrt is None:
        wrt = [i for i, a in enumerate(args) if isinstance(a, np.ndarray) and a.dtype.kind in "fc"]
    for i in wrt:
        name = opdef.inputs[i]
        x = np.asarray(args[i])
        v = _random_like(rng, x)
        plus = list(args)
        minus = list(args)
        plus[i] = x + eps * v
        minus[i] = x - eps * v
        fd = (_pair(cotangent, opdef.fn(*plus, **kwargs)) - _pair(cotangent, opdef.fn(*minus, **kwargs))) / (2 * eps)
        g = grads[i]
        assert g is not None, f"{opdef.name}: no gradient for {name}"
        assert np.shape(g) == x.shape, f"{opdef.name}: gradient for {name} has shape {np.shape(g)}, input {x.shape}"
        an = float(np.real(np.sum(np.asarray(g) * v)))
        scale = max(abs(fd), abs(an), 1.0)
        assert abs(an - fd) <= atol + rtol * scale, (
            f"{opdef.name}: d/d{name}: pullback {an!r} vs finite differences {fd!r}"
        )
    return grads
