"""Validation, dispatch, registry and import hygiene shared by every op."""

import subprocess
import sys

import numpy as np
import pytest

import ssmcore
from ssmcore import dispatch, validation
from ssmcore.registry import register_op


# ---------------------------------------------------------------- validation
def test_as_float_array_promotes_literals_and_refuses_integer_arrays():
    assert validation.as_float_array("f", "x", [1, 2]).dtype == np.float64
    assert validation.as_float_array("f", "x", 3).dtype == np.float64
    assert validation.as_float_array("f", "x", np.float16(1.0)).dtype == np.float32
    with pytest.raises(TypeError, match=r"f: x has dtype int64; expected a floating dtype"):
        validation.as_float_array("f", "x", np.arange(3))
    assert validation.as_float_array("f", "x", np.arange(3), integer_ok=True).dtype == np.float64
    with pytest.raises(TypeError, match="f: x has dtype object"):
        validation.as_float_array("f", "x", np.array([1, "a"], dtype=object))
    with pytest.raises(TypeError, match="f: x has dtype complex128; expected a real"):
        validation.as_float_array("f", "x", np.ones(2, complex), complex_ok=False)
    with pytest.raises(TypeError, match="f: x is None"):
        validation.as_float_array("f", "x", None)


def test_dtype_preserved():
    for dt in (np.float32, np.float64, np.complex64, np.complex128):
        assert validation.as_float_array("f", "x", np.ones(2, dt)).dtype == dt


def test_check_dt_alpha_choice_int():
    assert validation.check_dt("f", 0.5) == 0.5
    for bad in (0.0, -1.0, np.inf, np.nan, [0.1, -0.1]):
        with pytest.raises(ValueError, match="f: dt must be"):
            validation.check_dt("f", bad)
    with pytest.raises(TypeError, match="f: dt has dtype complex128"):
        validation.check_dt("f", 1j)
    assert validation.check_alpha("f", 0.25) == 0.25
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"f: alpha must be in \[0, 1\]"):
            validation.check_alpha("f", bad)
    with pytest.raises(ValueError, match="needs alpha"):
        validation.check_alpha("f", None)
    assert validation.check_choice("f", "method", "ZOH", ("zoh", "foh")) == "zoh"
    with pytest.raises(ValueError, match="f: unknown method 'zoo'; expected one of 'zoh', 'foh'"):
        validation.check_choice("f", "method", "zoo", ("zoh", "foh"))
    assert validation.check_int("f", "N", np.int64(4)) == 4
    with pytest.raises(ValueError, match="f: N must be >= 1; got 0"):
        validation.check_int("f", "N", 0)
    with pytest.raises(TypeError, match="f: N must be an integer"):
        validation.check_int("f", "N", 2.0)
    with pytest.raises(TypeError):
        validation.check_int("f", "N", True)


def test_shape_error_message():
    err = validation.shape_error("discretize", "A", (3, 4), "(..., N, N)")
    assert str(err) == "discretize: A has shape (3, 4); expected (..., N, N)"
    assert "(5,)" in str(validation.shape_error("f", "x", (5,), "y"))


@pytest.mark.parametrize(
    "full, shape",
    [((2, 3, 4), (3, 4)), ((2, 3, 4), (3, 1)), ((2, 3, 4), (1, 1, 4)), ((2, 3), ()), ((3,), (3,))],
)
def test_sum_to_shape_is_adjoint_of_broadcast(full, shape, rng):
    x = rng.standard_normal(shape)
    g = rng.standard_normal(full)
    # <broadcast(x), g> == <x, sum_to_shape(g)>
    lhs = np.sum(np.broadcast_to(x, full) * g)
    rhs = np.sum(x * validation.sum_to_shape(g, shape))
    assert validation.sum_to_shape(g, shape).shape == shape
    assert np.isclose(lhs, rhs)


# ---------------------------------------------------------------- dispatch
def test_select_backend_defaults_and_overrides():
    x = np.ones(3)
    assert dispatch.select_backend("f", x, None, 1.0) == "numba"
    assert dispatch.select_backend("f", x, backend="numpy") == "numpy"
    assert dispatch.select_backend("f") == "numba"
    with pytest.raises(ValueError, match="f: unknown backend 'gpu'"):
        dispatch.select_backend("f", x, backend="gpu")
    with pytest.raises(TypeError, match="backend='cupy' takes CuPy arrays"):
        dispatch.select_backend("f", x, backend="cupy")


def test_select_backend_refuses_framework_tensors():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"f: got a torch array.*ssmcore\.torch\.f"):
        dispatch.select_backend("f", torch.ones(2), np.ones(2))


def test_kernels_maps_numpy_to_reference():
    mod = dispatch.kernels("numpy", "discretization")
    assert mod.__name__ == "ssmcore.reference.discretization"


# ---------------------------------------------------------------- registry
def _square_fwd(x, scale=1.0):
    x = np.asarray(x)
    return scale * x * x, (x, scale)


def _square_bwd(res, ct):
    x, scale = res
    return (2 * scale * x * ct,)


def _square(x, scale=1.0):
    return _square_fwd(x, scale)[0]


@pytest.fixture(autouse=True, scope="module")
def _toy_op():
    """Register a toy op for this module only (other tests iterate over every real op)."""
    from ssmcore import dispatch, registry

    register_op("_test_square", fwd=_square_fwd, bwd=_square_bwd, inputs=("x",))(_square)
    yield
    del registry._REGISTRY["_test_square"]
    dispatch._CAPABILITIES.pop("_test_square", None)  # registering declared its backends too


def test_vjp_by_name_and_function():
    x = np.array([1.0, 2.0])
    for op in ("_test_square", _square):
        out, pb = ssmcore.vjp(op, x, scale=3.0)
        np.testing.assert_allclose(out, 3 * x**2)
        (g,) = pb(np.ones(2))
        np.testing.assert_allclose(g, 6 * x)
        (g0,) = pb(None)
        np.testing.assert_array_equal(g0, 0)
    assert "_test_square" in ssmcore.list_ops()


def test_vjp_errors():
    with pytest.raises(ValueError, match="not a registered ssmcore op"):
        ssmcore.vjp("no_such_op", 1.0)
    _, pb = ssmcore.vjp("_test_square", np.ones(2))
    with pytest.raises(ValueError, match=r"cotangent has shape \(3,\)"):
        pb(np.ones(3))
    with pytest.raises(TypeError, match="does not take"):
        register_op("_bad", fwd=_square_fwd, bwd=_square_bwd, inputs=("y",))(_square)


# ---------------------------------------------------------------- adapter call planning
def test_planned_calls_pass_what_they_can_positionally_and_options_by_name():
    """plan.bind_options / call_in_order: the same call as core_call, whatever the parameter kinds."""
    import inspect

    from ssmcore.adapters import plan
    from ssmcore.registry import OpDef

    def fn(a, /, b, c=None, *, mode="x", k=1):
        return (a, b, c, mode, k)

    def fwd(a, b, c=None, *, mode="x", k=1):  # keyword-or-positional where fn is positional-only
        return fn(a, b, c, mode=mode, k=k), None

    def fwd_renamed(a, bb, c=None, *, mode="x", k=1):  # a different name stops the positional run
        raise AssertionError("only inspected")

    def forwarder(*args, **kwargs):
        return fn(*args, **kwargs)

    op = OpDef("_plan_test", fn, fwd, None, ("a", "b", "c"), inspect.signature(fn))
    assert plan.n_positional(op, fn) == 3
    assert plan.n_positional(op, fwd) == 3
    assert plan.n_positional(op, fwd_renamed) == 1
    assert plan.n_positional(op, forwarder) == 3
    present = (True, False, True, False, False)
    options = {"b": 2.0, "mode": "y", "k": 5}
    for f in (fn, forwarder):
        call = plan.bind_options(op, f, present, options)
        assert call("A", "C") == plan.core_call(op, f, ["A", None, "C", None, None], options) == ("A", 2.0, "C", "y", 5)


# ---------------------------------------------------------------- import hygiene
def test_import_is_light():
    """`import ssmcore` must not import numba, scipy or any framework (nothing compiles)."""
    code = (
        "import sys, ssmcore\n"
        "heavy = [m for m in ('numba', 'scipy', 'torch', 'jax', 'cupy', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import ssmcore pulled in: {out.stdout.strip()}"
