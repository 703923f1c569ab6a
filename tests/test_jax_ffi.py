"""ssmcore.adapters.jax_ffi: pure_callback's contract through the typed XLA FFI.

The FFI path must give exactly what ``jax.pure_callback`` gives (dtypes, ranks,
0-d and empty arrays), turn host exceptions into JAX errors with the Python
message, work under jit/grad/vmap/nested jit and from several threads, and the
``SSMCORE_JAX_CALLBACK=pure_callback`` switch must route around it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)  # f64/c128 cases; set before any array is made

import jax.numpy as jnp  # noqa: E402

import ssmcore  # noqa: E402
import ssmcore.jax as sj  # noqa: E402
from ssmcore.adapters import jax_ffi  # noqa: E402
from ssmcore.adapters.jax_ffi import ENV_VAR, host_call  # noqa: E402


@pytest.fixture(autouse=True)
def _ffi_mode(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def _structs(*arrays):
    return tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays)


def _mix(x, y):
    """A host function with two results of different shapes; reads both inputs."""
    x, y = np.asarray(x), np.asarray(y)
    return (x * 2 + y.sum()).astype(x.dtype), np.cumsum(x.ravel()).astype(x.dtype)


def _lowered(fn, *args):
    return jax.jit(fn).lower(*args).as_text()


def test_ffi_path_is_used_here():
    """On CPU with this jaxlib the self-test passes, so the tests below exercise the FFI."""
    assert jax_ffi.ffi_available(), jax_ffi._STATE
    x = jnp.ones(3)
    text = _lowered(lambda x: host_call(_mix, _structs(x, x.ravel()), x, x), x)
    assert jax_ffi._TARGET in text and "callback" not in text


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 0, 3), (3, 4), (2, 3, 4)])
def test_matches_pure_callback(dtype, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    x = jnp.asarray(x.astype(dtype))
    y = jnp.asarray(np.arange(4.0).astype(dtype))
    expected = _mix(np.asarray(x), np.asarray(y))
    structs = _structs(*expected)
    ffi = jax.jit(lambda x, y: host_call(_mix, structs, x, y))(x, y)
    ref = jax.jit(lambda x, y: jax.pure_callback(_mix, structs, x, y, vmap_method="expand_dims"))(x, y)
    for got, want, exp in zip(ffi, ref, expected, strict=True):
        assert got.dtype == want.dtype == exp.dtype and got.shape == want.shape == exp.shape
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        np.testing.assert_array_equal(np.asarray(got), exp)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, jnp.bfloat16, np.float16])
def test_other_dtypes(dtype):
    x = jnp.asarray(np.arange(6).reshape(2, 3) % 2).astype(dtype)
    out = jax.jit(lambda x: host_call(lambda a: (a[::-1].copy(),), _structs(x), x))(x)[0]
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x)[::-1])


def test_pytree_results_and_inputs_are_writable_views():
    seen = {}

    def host(a):
        seen["writable"] = a.flags.writeable and isinstance(a, np.ndarray)
        return {"double": a * 2, "pair": (a + 1, a.sum(keepdims=True))}

    x = jnp.arange(3.0)
    s = jax.ShapeDtypeStruct
    structs = {"double": s((3,), x.dtype), "pair": (s((3,), x.dtype), s((1,), x.dtype))}
    out = jax.jit(lambda x: host_call(host, structs, x))(x)
    np.testing.assert_array_equal(np.asarray(out["double"]), [0, 2, 4])
    np.testing.assert_array_equal(np.asarray(out["pair"][1]), [3.0])
    assert seen["writable"]


class _Boom(ValueError):
    pass


def _failing(x):
    raise _Boom("the host function failed on purpose (42)")


def test_host_exception_propagates_with_message():
    x = jnp.ones(4)
    with pytest.raises(Exception, match=r"_Boom: the host function failed on purpose \(42\)"):
        jax.block_until_ready(jax.jit(lambda x: host_call(_failing, _structs(x), x))(x))
    # the process and the path are still fine afterwards
    out = jax.jit(lambda x: host_call(lambda a: (a + 1,), _structs(x), x))(x)[0]
    np.testing.assert_array_equal(np.asarray(out), 2.0)


@pytest.mark.parametrize("bad, message", [
    (lambda a: (a[:2],), r"result 0 of .* has shape \(2,\) and dtype float64; expected shape \(4,\)"),
    (lambda a: (a.astype(np.float32),), r"dtype float32; expected shape \(4,\) and dtype float64"),
    (lambda a: (a, a), r"returned 2 arrays; expected 1"),
])
def test_wrong_results_are_errors(bad, message):
    x = jnp.ones(4)
    with pytest.raises(Exception, match=message):
        jax.block_until_ready(jax.jit(lambda x: host_call(bad, _structs(x), x))(x))


def test_jit_grad_vmap_and_nested_jit_through_an_op():
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.uniform(0.5, 0.9, (3, 8)))
    b = jnp.asarray(rng.standard_normal((3, 8)))
    loss = lambda a, b: jnp.sum(sj.linear_scan(a, b) ** 2)  # noqa: E731
    out, pull = ssmcore.vjp("linear_scan", np.asarray(a), np.asarray(b))
    want = pull(2 * out)
    got = jax.jit(jax.grad(loss, (0, 1)))(a, b)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-12, atol=1e-12)
    nested = jax.jit(lambda a, b: jax.jit(sj.linear_scan)(a, b) + 1)(a, b)
    np.testing.assert_allclose(np.asarray(nested), out + 1, rtol=1e-15)
    batch = jnp.stack([b, 2 * b])
    vm = jax.jit(jax.vmap(sj.linear_scan, in_axes=(None, 0)))(a, batch)
    np.testing.assert_allclose(np.asarray(vm[1]), 2 * out, rtol=1e-14)
    pe = jax.vmap(jax.grad(loss, 1), in_axes=(None, 0))(a, batch)
    np.testing.assert_allclose(np.asarray(pe[0]), want[1], rtol=1e-12, atol=1e-12)
    text = _lowered(jax.grad(loss, (0, 1)), a, b)
    assert text.count(jax_ffi._TARGET) == 2  # forward and backward both through the FFI


def test_vmap_expand_dims_semantics():
    calls = []

    def host(x, y):
        calls.append((x.shape, y.shape))
        return (np.asarray(x) + np.asarray(y),)

    xs, y = jnp.ones((5, 3)), jnp.arange(3.0)
    out = jax.vmap(lambda x: host_call(host, _structs(x), x, y))(xs)[0]
    np.testing.assert_array_equal(np.asarray(out), 1 + np.arange(3.0)[None].repeat(5, 0))
    assert calls == [((5, 3), (1, 3))]  # one call, unbatched argument with a size-1 axis


def test_host_table_does_not_grow_per_call():
    a, b = jnp.full((2, 6), 0.5), jnp.ones((2, 6))
    step = jax.jit(jax.grad(lambda a, b: jnp.sum(sj.linear_scan(a, b)), (0, 1)))
    step(a, b)
    before = len(jax_ffi._HOSTS)
    for _ in range(3):
        step(a, b)
        sj.linear_scan(a, b)
        jax.jit(lambda a, b: sj.linear_scan(a, b))(a, b)  # a new outer trace reuses the host functions
    assert len(jax_ffi._HOSTS) == before


def test_threads_call_concurrently():
    f = jax.jit(sj.linear_scan)
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        for _ in range(40):
            a, b = rng.uniform(0.5, 0.9, (2, 16)), rng.standard_normal((2, 16))
            if not np.allclose(np.asarray(f(a, b)), ssmcore.linear_scan(a, b), rtol=1e-14):
                errors.append(seed)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert not errors


def test_env_var_forces_pure_callback(monkeypatch):
    x = jnp.ones(3)
    fn = lambda x: host_call(_mix, _structs(x, x), x, x)  # noqa: E731
    monkeypatch.setenv(ENV_VAR, "pure_callback")
    assert not jax_ffi.ffi_available()
    text = _lowered(fn, x)
    assert jax_ffi._TARGET not in text and "callback" in text
    np.testing.assert_array_equal(np.asarray(jax.jit(fn)(x)[0]), _mix(np.ones(3), np.ones(3))[0])
    monkeypatch.setenv(ENV_VAR, "fast please")
    with pytest.raises(ValueError, match=f"{ENV_VAR}='fast please'; expected 'ffi' or 'pure_callback'"):
        host_call(_mix, _structs(x, x), x, x)


def test_env_var_in_a_fresh_process():
    code = (
        "import jax, jax.numpy as jnp, numpy as np, ssmcore, ssmcore.jax as sj\n"
        "from ssmcore.adapters import jax_ffi\n"
        "a, b = np.full((2, 4), 0.5, np.float32), np.ones((2, 4), np.float32)\n"
        "out = jax.jit(jax.grad(lambda a: sj.linear_scan(a, b).sum()))(a)\n"
        "assert not jax_ffi.ffi_available() and not jax_ffi._HOSTS, jax_ffi._HOSTS\n"
        "want = ssmcore.vjp('linear_scan', a, b)[1](np.ones((2, 4), np.float32))[0]\n"
        "np.testing.assert_allclose(np.asarray(out), want, rtol=1e-6)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, **{ENV_VAR: "pure_callback"})
    res = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


@pytest.mark.parametrize("breakage", ["self_test", "abi"])
def test_broken_ffi_falls_back_with_one_warning(monkeypatch, breakage):
    """A failed self-test or an unknown ABI version: pure_callback for good, warned once."""
    saved = dict(jax_ffi._STATE)
    monkeypatch.setitem(jax_ffi._STATE, "ok", None)
    if breakage == "self_test":
        def broken():
            raise RuntimeError("simulated self-test failure")
        monkeypatch.setattr(jax_ffi, "_self_test", broken)
        why = "simulated self-test failure"
    else:
        monkeypatch.setattr(jax_ffi, "header_version", lambda: (1, 0))
        why = "XLA FFI API version 1.0; this handler mirrors major 0"
    x = jnp.ones(3)
    fn = lambda x: host_call(_mix, _structs(x, x), x, x)  # noqa: E731
    try:
        with pytest.warns(RuntimeWarning, match=f"fast XLA FFI host-call path is disabled .*{why}"):
            text = _lowered(fn, x)
        assert jax_ffi._TARGET not in text and "callback" in text
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second warning
            np.testing.assert_array_equal(np.asarray(jax.jit(fn)(x)[1]), [1.0, 2.0, 3.0])
    finally:
        jax_ffi._STATE.update(saved)
    assert jax_ffi.ffi_available()



def test_ops_leave_their_input_buffers_alone():
    """The FFI hands ops writable views of XLA's buffers: no op, forward or backward, writes to them."""
    from ssmcore.adapters import plan, specs

    for op in plan.load_all_ops():
        for case, make in specs.EXAMPLES.get(op, []):
            args, kw = make(np.random.default_rng(4), np.float64)
            names = [i for i, a in enumerate(args) if isinstance(a, np.ndarray)]
            keys = [k for k, v in kw.items() if isinstance(v, np.ndarray)]
            leaves = [jnp.asarray(args[i]) for i in names] + [jnp.asarray(kw[k]) for k in keys]
            before = [np.array(x) for x in leaves]

            def loss(*xs):
                a, k = list(args), dict(kw)
                for i, x in zip(names + keys, xs):
                    (a if isinstance(i, int) else k)[i] = x
                out = getattr(sj, op)(*a, **k)
                return sum(jnp.sum(jnp.real(o)) for o in (out if isinstance(out, tuple) else (out,)))

            diff = tuple(n for n, x in enumerate(leaves) if x.dtype.kind in "fc")
            jax.block_until_ready(jax.jit(jax.value_and_grad(loss, diff))(*leaves))
            for x, b in zip(leaves, before):
                np.testing.assert_array_equal(np.asarray(x), b, err_msg=f"{op}-{case}")
