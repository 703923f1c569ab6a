"""ssmcore.jax: every registered op as a differentiable JAX function.

Parametrised over every op in the registry with the example inputs of
``ssmcore.adapters.specs.EXAMPLES``: values equal the direct NumPy call,
``jax.test_util.check_grads`` (order 1, reverse mode) passes in float64 (and
complex128 where the op is complex), eagerly and under ``jax.jit``, and
``jax.vmap`` equals a Python loop. Generic behaviour is tested on a toy op.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)  # float64 gradient checks; set before any array is made

import jax.numpy as jnp  # noqa: E402
from adapter_toy import registered  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import ssmcore  # noqa: E402
import ssmcore.jax as sj  # noqa: E402
from ssmcore.adapters import plan, specs  # noqa: E402

OPS = plan.load_all_ops()
CASES = [pytest.param(op, case, make, id=f"{op}-{case}") for op in OPS for case, make in specs.EXAMPLES.get(op, [])]


def _jax_call(op, args, kw):
    """(function of the differentiable arrays, those arrays) for an example call."""
    slots = [("a", i) for i, a in enumerate(args) if isinstance(a, np.ndarray) and a.dtype.kind in "fc"]
    slots += [("k", k) for k, v in kw.items() if isinstance(v, np.ndarray) and v.dtype.kind in "fc"]
    leaves = [jnp.asarray(args[i] if s == "a" else kw[i]) for s, i in slots]
    fn = getattr(sj, op)

    def f(*xs):
        a = [jnp.asarray(v) if isinstance(v, np.ndarray) else v for v in args]
        k = {n: jnp.asarray(v) if isinstance(v, np.ndarray) else v for n, v in kw.items()}
        for (s, i), x in zip(slots, xs):
            if s == "a":
                a[i] = x
            else:
                k[i] = x
        return fn(*a, **k)

    return f, leaves


@pytest.mark.parametrize("op, case, make", CASES)
def test_matches_numpy(op, case, make):
    opdef = ssmcore.get_op(op)
    for dt in [np.float32, np.float64] + ([np.complex64, np.complex128] if op in specs.COMPLEX_OK else []):
        args, kw = make(np.random.default_rng(1), dt)
        expected = opdef.fn(*args, **kw)
        f, leaves = _jax_call(op, args, kw)
        for got in (f(*leaves), jax.jit(f)(*leaves)):
            assert isinstance(got, tuple) == isinstance(expected, tuple)
            got_t = got if isinstance(got, tuple) else (got,)
            exp_t = expected if isinstance(expected, tuple) else (expected,)
            for g, e in zip(got_t, exp_t, strict=True):
                assert g.dtype == e.dtype and g.shape == e.shape, (op, case, dt)
                np.testing.assert_array_equal(np.asarray(g), e)


@pytest.mark.parametrize("op, case, make", CASES)
def test_check_grads(op, case, make):
    for dt in [np.float64] + ([np.complex128] if op in specs.COMPLEX_OK else []):
        args, kw = make(np.random.default_rng(2), dt)
        f, leaves = _jax_call(op, args, kw)
        check_grads(f, leaves, order=1, modes=("rev",), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("op, case, make", CASES)
def test_jit_grad_and_vmap(op, case, make):
    args, kw = make(np.random.default_rng(3), np.float64)
    f, leaves = _jax_call(op, args, kw)

    def loss(*xs):
        out = f(*xs)
        return sum(jnp.sum(jnp.real(o) ** 2) for o in (out if isinstance(out, tuple) else (out,)))

    argnums = tuple(range(len(leaves)))
    eager = jax.grad(loss, argnums)(*leaves)
    jitted = jax.jit(jax.grad(loss, argnums))(*leaves)
    for e, j in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(np.asarray(j), np.asarray(e), rtol=1e-12, atol=1e-12)
    # vmap over a new leading axis of the first differentiable input, the others shared.
    batch = jnp.stack([leaves[0], 0.9 * leaves[0]])
    vm = jax.vmap(lambda x: f(x, *leaves[1:]))(batch)
    loop = [f(x, *leaves[1:]) for x in batch]
    vm_t = vm if isinstance(vm, tuple) else (vm,)
    loop_t = [o if isinstance(o, tuple) else (o,) for o in loop]
    for k, v in enumerate(vm_t):
        np.testing.assert_array_equal(np.asarray(v), np.stack([np.asarray(o[k]) for o in loop_t]))
    # per-example gradients: vmap of grad
    pe = jax.vmap(jax.grad(lambda x: loss(x, *leaves[1:])))(batch)
    assert pe.shape == batch.shape


def test_signatures_match():
    import inspect

    for op in OPS:
        core = ssmcore.get_op(op).signature  # the public signature minus NumPy-only out=
        ours = inspect.signature(getattr(sj, op))
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
            (p.name, p.kind, p.default) for p in core.parameters.values()
        ]


# ----------------------------------------------------------------------------- generic behaviour (toy op)
@pytest.fixture(scope="module")
def toy():
    with registered("toy_jax_adapter") as name:
        yield sj.op(name)


def test_toy_complex_gradient_is_jax_convention(toy):
    """Against JAX's own autodiff of the same maths: no conjugation anywhere."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(4) + 1j * rng.standard_normal(4))
    y = jnp.asarray(rng.standard_normal(4) + 1j * rng.standard_normal(4))
    c = 0.3 - 1.2j
    ours = jax.grad(lambda x, y: jnp.sum(jnp.abs(toy(x, y, c=c)) ** 2), (0, 1))(x, y)
    ref = jax.grad(lambda x, y: jnp.sum(jnp.abs(x * y * c) ** 2), (0, 1))(x, y)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)
    r = jnp.asarray(rng.standard_normal(4))
    g = jax.grad(lambda r: jnp.sum(jnp.real(toy(r, c=c) * (1 + 2j))))(r)
    assert g.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(g), np.real(c * (1 + 2j)) * np.ones(4))


def test_toy_options_scalars_optional_inputs_and_pairs(toy):
    x = jnp.arange(4.0, dtype=jnp.float32)
    out = toy(x, None, 3.0)
    assert out.dtype == jnp.float32  # a Python scalar stays weak
    np.testing.assert_array_equal(np.asarray(out), 3.0 * np.arange(4.0))
    y = jnp.ones(4)
    gx, gy, gs = jax.grad(lambda x, y, s: sum(jnp.sum(o) for o in toy(x, y, s, pair=True)), (0, 1, 2))(
        jnp.arange(4.0), y, jnp.asarray(0.5))
    np.testing.assert_allclose(np.asarray(gx), 0.5 + 2.0)
    np.testing.assert_allclose(np.asarray(gy), 0.5 * np.arange(4.0))
    np.testing.assert_allclose(float(gs), np.arange(4.0).sum())
    # Under jit the options are compile-time constants.
    np.testing.assert_allclose(np.asarray(jax.jit(lambda v: toy(v, mode="identity"))(x)), np.asarray(x))


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_toy_half_precision(toy, low):
    dt = getattr(jnp, low)
    x = jnp.asarray([1.0, 2.0, 3.0], dtype=dt)
    out = toy(x, x, 2.0)
    assert out.dtype == dt
    np.testing.assert_allclose(np.asarray(out, dtype=np.float32), [2.0, 8.0, 18.0])
    g = jax.grad(lambda v: jnp.sum(toy(v, x, 2.0)).astype(jnp.float32))(x)
    assert g.dtype == dt


def test_toy_nested_vmap_and_unbatched_args(toy):
    xs = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, 4)))
    y = jnp.linspace(0.0, 1.0, 4)
    out = jax.vmap(jax.vmap(lambda v: toy(v, y, 2.0)))(xs)
    np.testing.assert_allclose(np.asarray(out), 2.0 * np.asarray(xs) * np.asarray(y))
    gy = jax.grad(lambda y: jnp.sum(jax.vmap(lambda v: toy(v, y, 2.0))(xs[0])))(y)
    np.testing.assert_allclose(np.asarray(gy), 2.0 * np.asarray(xs[0]).sum(0))


def test_toy_zero_length_and_unknown_op(toy):
    e = jnp.zeros((0,))
    assert toy(e, e, 2.0).shape == (0,)
    assert jax.grad(lambda v: jnp.sum(toy(v, e)))(e).shape == (0,)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_op'"):
        sj.no_such_op  # noqa: B018


def test_import_ssmcore_does_not_import_jax_and_missing_jax_is_a_clear_error():
    code = (
        "import sys, ssmcore; assert 'jax' not in sys.modules, 'import ssmcore imported jax'\n"
        "sys.modules['jax'] = None\n"
        "try:\n    import ssmcore.jax\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'pip install "ssmcore[jax]"' in out.stdout
