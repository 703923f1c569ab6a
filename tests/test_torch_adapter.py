"""ssmcore.torch: every registered op as a differentiable PyTorch op.

Parametrised over every op in the registry with the example inputs of
``ssmcore.adapters.specs.EXAMPLES``: values equal the direct NumPy call, gradients
pass ``torch.autograd.gradcheck`` (float64, and complex128 where the op is
complex), ``torch.func.grad`` and ``torch.compile(fullgraph=True)`` agree with
eager autograd, and the fake-tensor output rules match the real outputs.
The generic behaviour (options, None and scalar inputs, half precision, the
complex convention, aliasing, devices) is tested on a toy op.
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from adapter_toy import registered  # noqa: E402

import ssmcore  # noqa: E402
import ssmcore.torch as st  # noqa: E402
from ssmcore.adapters import plan, specs  # noqa: E402

OPS = plan.load_all_ops()
CASES = [pytest.param(op, case, make, id=f"{op}-{case}") for op in OPS for case, make in specs.EXAMPLES.get(op, [])]
FIRST_CASES = [pytest.param(op, *specs.EXAMPLES[op][0], id=op) for op in OPS if op in specs.EXAMPLES]


def _dtypes(op, complex_too=True):
    out = [np.float32, np.float64]
    if complex_too and op in specs.COMPLEX_OK:
        out += [np.complex64, np.complex128]
    return out


def _tensors(args, kw, requires_grad=False):
    """NumPy example -> torch arguments; float/complex arrays become (leaf) tensors."""

    def conv(v):
        if isinstance(v, np.ndarray):
            t = torch.from_numpy(v.copy())
            if requires_grad and v.dtype.kind in "fc":
                t.requires_grad_(True)
            return t
        return v

    return [conv(a) for a in args], {k: conv(v) for k, v in kw.items()}


def _leaves(targs, tkw):
    """The differentiable tensors of a call, and a function of them that re-inserts them."""
    slots = [("a", i) for i, a in enumerate(targs) if torch.is_tensor(a) and a.requires_grad]
    slots += [("k", k) for k, v in tkw.items() if torch.is_tensor(v) and v.requires_grad]
    leaves = [targs[i] if s == "a" else tkw[i] for s, i in slots]

    def rebuild(*xs):
        a, k = list(targs), dict(tkw)
        for (s, i), x in zip(slots, xs):
            if s == "a":
                a[i] = x
            else:
                k[i] = x
        return a, k

    return leaves, rebuild


def _loss_fn(op, targs, tkw, seed=0):
    """A scalar loss: random real weights on the real (and imaginary) parts of every output."""
    fn = getattr(st, op)
    leaves, rebuild = _leaves(targs, tkw)
    with torch.no_grad():
        outs = fn(*targs, **tkw)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs]

    def loss(*xs):
        a, k = rebuild(*xs)
        res = fn(*a, **k)
        res = res if isinstance(res, tuple) else (res,)
        total = 0
        for o, w in zip(res, weights):
            total = total + (w.to(o.real.dtype) * o.real).sum()
            if o.is_complex():
                total = total + (w.to(o.real.dtype) * o.imag).sum() * 0.5
        return total

    return loss, leaves


# ----------------------------------------------------------------------------- every op
def test_every_op_has_examples_and_an_output_rule():
    assert OPS, "no ssmcore op is registered"
    missing = [op for op in OPS if op not in specs.EXAMPLES or op not in specs.RULES]
    assert not missing, f"ops without examples/output rules in ssmcore/adapters/specs.py: {missing}"


@pytest.mark.parametrize("op, case, make", CASES)
def test_matches_numpy_and_output_rule(op, case, make):
    opdef = ssmcore.get_op(op)
    for dt in _dtypes(op):
        args, kw = make(np.random.default_rng(1), dt)
        expected = opdef.fn(*args, **kw)
        targs, tkw = _tensors(args, kw)
        got = getattr(st, op)(*targs, **tkw)
        exp_t = expected if isinstance(expected, tuple) else (expected,)
        got_t = got if isinstance(got, tuple) else (got,)
        assert type(got) is type(got_t) if isinstance(expected, tuple) else torch.is_tensor(got)
        for e, g in zip(exp_t, got_t, strict=True):
            assert g.dtype == st._TORCH_OF[e.dtype], (op, case, dt)
            np.testing.assert_array_equal(g.numpy(), e)
        # The rule used for fake tensors / ShapeDtypeStruct agrees with the real outputs.
        arrays, options = plan.split_values(tuple(opdef.signature.parameters), _bound(opdef, args, kw),
                                            lambda v: isinstance(v, np.ndarray))
        rule = specs.output_spec(opdef, [None if a is None else specs.ArraySpec(a.shape, a.dtype) for a in arrays],
                                 options)
        rule_t = rule if isinstance(rule, tuple) else (rule,)
        assert [(tuple(r.shape), np.dtype(r.dtype)) for r in rule_t] == [(e.shape, e.dtype) for e in exp_t]


def _bound(opdef, args, kw):
    b = opdef.signature.bind(*args, **kw)
    b.apply_defaults()
    return tuple(b.arguments.values())


@pytest.mark.parametrize("op, case, make", CASES)
def test_gradcheck(op, case, make):
    for dt in [np.float64] + ([np.complex128] if op in specs.COMPLEX_OK else []):
        args, kw = make(np.random.default_rng(2), dt)
        targs, tkw = _tensors(args, kw, requires_grad=True)
        leaves, rebuild = _leaves(targs, tkw)

        def f(*xs):
            a, k = rebuild(*xs)
            return getattr(st, op)(*a, **k)

        assert torch.autograd.gradcheck(f, tuple(leaves), eps=1e-6, atol=1e-6, rtol=1e-4,
                                        fast_mode=np.dtype(dt).kind == "c")


@pytest.mark.parametrize("op, case, make", CASES)
def test_torch_func_grad_matches_eager(op, case, make):
    """torch.func.grad takes the traced path (torch.library ops, recomputing backward)."""
    dt = np.complex128 if op in specs.COMPLEX_OK else np.float64
    args, kw = make(np.random.default_rng(3), dt)
    targs, tkw = _tensors(args, kw, requires_grad=True)
    loss, leaves = _loss_fn(op, targs, tkw)
    eager = torch.autograd.grad(loss(*leaves), leaves)
    functional = torch.func.grad(loss, argnums=tuple(range(len(leaves))))(*[x.detach() for x in leaves])
    for e, g in zip(eager, functional, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def _lazy(t, kind):
    """``t``'s values as a tensor that ``Tensor.numpy()`` refuses or views with strides."""
    if kind == "strided":  # every other element of a wider buffer
        wide = torch.zeros(*t.shape, 2, dtype=t.dtype)
        wide[..., 0] = t
        return wide[..., 0]
    if kind == "conj":  # lazy conjugate bit (complex only; real .conj() is t itself)
        return t.conj().resolve_conj().conj() if t.is_complex() else t
    return torch._neg_view(-t)  # lazy negative bit


@pytest.mark.parametrize("kind", ["strided", "conj", "neg"])
@pytest.mark.parametrize("op, case, make", FIRST_CASES)
def test_lazy_and_strided_tensors_are_read_correctly(op, case, make, kind):
    """Views with strides, or with torch's lazy conj/neg bits, give the same values and gradients."""
    dt = np.complex128 if op in specs.COMPLEX_OK else np.float64
    args, kw = make(np.random.default_rng(4), dt)
    targs, tkw = _tensors(args, kw, requires_grad=True)
    loss, leaves = _loss_fn(op, targs, tkw)
    plain_value = loss(*leaves)
    plain_grads = torch.autograd.grad(plain_value, leaves)

    def lazy_loss(*xs):
        return loss(*[_lazy(x, kind) for x in xs])

    lazy = [_lazy(x, kind) for x in leaves]
    assert kind == "strided" or any(x.is_conj() or x.is_neg() for x in lazy) or dt != np.complex128
    lazy_value = lazy_loss(*leaves)
    torch.testing.assert_close(lazy_value, plain_value, rtol=1e-13, atol=1e-13)
    for g, e in zip(torch.autograd.grad(lazy_value, leaves), plain_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the no-grad path converts the same way
        torch.testing.assert_close(lazy_loss(*leaves), plain_value.detach(), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("op, case, make", FIRST_CASES)
def test_compile_fullgraph(op, case, make):
    torch._dynamo.reset()
    args, kw = make(np.random.default_rng(4), np.float64)
    targs, tkw = _tensors(args, kw, requires_grad=True)
    loss, leaves = _loss_fn(op, targs, tkw)

    def model(*xs):
        return torch.tanh(loss(*xs)) * 2.0  # torch ops around the ssmcore op in one graph

    value = model(*leaves)
    eager = torch.autograd.grad(value, leaves)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    cvalue = compiled(*leaves)
    cgrads = torch.autograd.grad(cvalue, leaves)
    torch.testing.assert_close(cvalue, value, rtol=1e-12, atol=1e-12)
    for e, g in zip(eager, cgrads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op, case, make", FIRST_CASES)
def test_library_ops_pass_opcheck(op, case, make):
    """The generated torch.library ops (forward and backward): schema, fake kernel, aot dispatch."""
    st.op(op)  # defines the library ops on first use
    opdef = ssmcore.get_op(op)
    args, kw = make(np.random.default_rng(6), np.float64)
    targs, tkw = _tensors(args, kw)
    b = opdef.signature.bind(*targs, **tkw)
    b.apply_defaults()
    arrays, options = plan.split_values(tuple(b.arguments), tuple(b.arguments.values()), torch.is_tensor)
    encoded = plan.encode_options(opdef, options)
    fwd = getattr(torch.ops.ssmcore, op).default
    torch.library.opcheck(fwd, (arrays, encoded))
    cotangents = [torch.randn_like(o) for o in fwd(arrays, encoded)]
    torch.library.opcheck(getattr(torch.ops.ssmcore, f"{op}_bwd").default, (arrays, cotangents, encoded))


def test_vmap_matches_loop():
    op = "linear_scan" if "linear_scan" in OPS else OPS[0]
    args, kw = specs.EXAMPLES[op][0][1](np.random.default_rng(5), np.float64)
    targs, tkw = _tensors(args, kw)
    fn = getattr(st, op)
    batch = torch.stack([targs[0], 0.5 * targs[0], -targs[0]])

    def f(first):
        out = fn(first, *targs[1:], **tkw)
        return out if torch.is_tensor(out) else out[0]

    torch.testing.assert_close(torch.vmap(f)(batch), torch.stack([f(x) for x in batch]))
    # per-example gradients: vmap over torch.func.grad
    g = torch.vmap(torch.func.grad(lambda x: f(x).sum()))(batch)
    assert g.shape == batch.shape


def test_signatures_match_the_numpy_functions():
    for op in OPS:
        core = ssmcore.get_op(op).signature  # the public signature minus NumPy-only out=
        ours = inspect.signature(getattr(st, op))
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
            (p.name, p.kind, p.default) for p in core.parameters.values()
        ]
        assert getattr(st, op).__module__ == "ssmcore.torch"
    assert set(OPS) <= set(dir(st))


# ----------------------------------------------------------------------------- generic behaviour (toy op)
@pytest.fixture(scope="module")
def toy():
    with registered("toy_torch_adapter") as name:
        yield st.op(name)


def test_toy_options_scalars_and_optional_inputs(toy):
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, dtype=torch.float64, requires_grad=True)
    # Python scalar for an array input stays a constant (float32 is not widened); None input omitted.
    out = toy(x.float(), None, 3.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, 3.0 * x.float().detach())
    out, twice = toy(x, y, 2.0, c=None, mode="mul", pair=True)
    (out.sum() + twice.sum()).backward()
    torch.testing.assert_close(x.grad, 2.0 * y.detach() + 2.0)
    torch.testing.assert_close(y.grad, 2.0 * x.detach())
    # A tensor scale is an input and gets a gradient; NumPy arrays are accepted as constants.
    s = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    toy(x.detach(), y.detach().numpy(), s).sum().backward()
    torch.testing.assert_close(s.grad, (x * y).sum().detach())


def test_toy_needs_input_grad_returns_none(toy):
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, dtype=torch.float64)
    toy(x, y).sum().backward()
    assert y.grad is None and x.grad is not None


def test_toy_create_graph_gives_first_order_and_refuses_second(toy):
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, dtype=torch.float64)
    # The cotangent reaching toy's backward is x itself, which requires grad.
    (g,) = torch.autograd.grad((toy(x, y) * x).sum(), x, create_graph=True)
    torch.testing.assert_close(g.detach(), 2 * x.detach() * y)
    with pytest.raises(RuntimeError, match="twice"):
        g.sum().backward()


def test_toy_complex_gradient_follows_torch_convention(toy):
    """Compare with torch's own autograd of the same maths (PyTorch's conjugate convention)."""
    x = torch.randn(5, dtype=torch.complex128, requires_grad=True)
    y = torch.randn(5, dtype=torch.complex128, requires_grad=True)
    c = 0.3 - 1.2j
    w = torch.randn(5, dtype=torch.complex128)
    (w * toy(x, y, c=c)).real.sum().backward()
    ref_x = x.detach().clone().requires_grad_(True)
    ref_y = y.detach().clone().requires_grad_(True)
    (w * ref_x * ref_y * c).real.sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad)
    torch.testing.assert_close(y.grad, ref_y.grad)
    # Real input, complex output: the gradient is real.
    r = torch.randn(5, dtype=torch.float64, requires_grad=True)
    (w * toy(r, c=c)).real.sum().backward()
    torch.testing.assert_close(r.grad, (w * c).real)


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_toy_half_precision_upcast_and_cast_back(toy, low):
    dt = getattr(torch, low)
    x = torch.randn(6).to(dt).requires_grad_(True)
    y = torch.randn(6).to(dt)
    out = toy(x, y, 2.0)
    assert out.dtype == dt
    torch.testing.assert_close(out.float(), (2.0 * x.float() * y.float()).to(dt).float())
    out.float().sum().backward()
    assert x.grad.dtype == dt
    # Mixed with float32, torch promotes to float32: no cast back.
    assert toy(x.detach(), y.float()).dtype == torch.float32


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_mamba_ops_return_the_inputs_half_dtype_like_mamba_ssm(low):
    """The Mamba ops' outputs take u's / x's half dtype, as mamba_ssm's (out = empty_like(u)).

    selective_scan's output has u's dtype, ssd's and selective_state_update's x's, with float32
    A / D / dt_bias; states stay float32; gradients keep the inputs' dtypes.
    """
    import ssmcore.torch as st

    dt_ = getattr(torch, low)
    g = torch.Generator().manual_seed(0)
    b, d, L, n = 2, 4, 9, 3
    u = torch.randn(b, d, L, generator=g).to(dt_).requires_grad_(True)
    delta = (0.5 * torch.rand(b, d, L, generator=g)).to(dt_)
    A = -torch.rand(d, n, generator=g)
    B, C = (torch.randn(b, n, L, generator=g).to(dt_) for _ in range(2))
    y, last = st.selective_scan(u, delta, A, B, C, D=torch.ones(d), return_last_state=True)
    assert y.dtype == dt_ and last.dtype == torch.float32
    want = st.selective_scan(u.detach().float(), delta.float(), A, B.float(), C.float(), D=torch.ones(d))
    torch.testing.assert_close(y.float(), want.to(dt_).float())
    y.float().sum().backward()
    assert u.grad.dtype == dt_
    with torch.no_grad():
        assert st.selective_scan(u, delta, A, B, C).dtype == dt_
    x = torch.randn(1, 16, 2, 4, generator=g).to(dt_)
    dts = torch.rand(1, 16, 2, generator=g).to(dt_)
    Bm = torch.randn(1, 16, 1, 3, generator=g).to(dt_)
    out, final = st.ssd(x, dts, -torch.rand(2, generator=g), Bm, Bm, chunk_size=8, D=torch.ones(2),
                        return_final_states=True)
    assert out.dtype == dt_ and final.dtype == torch.float32
    state = torch.zeros(2, d, n)
    o, new = st.selective_state_update(state, u[:, :, 0].detach(), delta[:, :, 0], A, B[:, :, 0], C[:, :, 0])
    assert o.dtype == dt_ and new.dtype == torch.float32
    # every input half: the generic rule (cast back to the promoted half type) still holds
    assert st.selective_scan(u.detach(), delta, A.to(dt_), B, C).dtype == dt_


def test_toy_outputs_never_alias_inputs(toy):
    x = torch.randn(4, dtype=torch.float64)
    out = toy(x, mode="identity")
    out.add_(1.0)
    assert not torch.equal(out, x)
    x2 = torch.randn(4, dtype=torch.float64, requires_grad=True)
    out2 = toy(x2, mode="identity")
    assert out2.data_ptr() != x2.data_ptr()


def test_results_in_fresh_buffers_are_wrapped_and_views_of_inputs_are_not():
    """The no-copy rule for results: only memory the core allocated (NumPy or Numba's runtime)."""
    numba = pytest.importorskip("numba")

    @numba.njit
    def fresh_and_views(x):
        buf = np.empty(6)
        return buf[:3], buf[3:], x[1:], x

    x = torch.arange(4.0, dtype=torch.float64).numpy()
    first, second, view, same = fresh_and_views(x)
    keys = [st._fresh_buffer(a) for a in (first, second, view, same, x, np.empty(2), np.empty(4)[1:])]
    assert keys[0] is not None and keys[0] == keys[1]  # one Numba allocation
    assert keys[2] is None and keys[3] is None and keys[4] is None  # tensor memory, through Numba or not
    assert keys[5] is not None and keys[6] is not None and keys[5] != keys[6]
    outs = st._outputs_to_torch([first, second, view, same], [x])
    for t, a in zip(outs[2:], (view, same)):
        assert t.data_ptr() != a.ctypes.data  # copied: the tensors must not alias the input
        assert np.array_equal(t.numpy(), a)
    assert outs[0].data_ptr() == first.ctypes.data  # the first fresh result is not copied


def test_toy_in_place_modification_is_detected(toy):
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, dtype=torch.float64)
    out = toy(x, y)
    y.add_(1.0)  # the core's residuals view y's buffer
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_toy_zero_length_and_errors(toy):
    e = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    out = toy(e, e.detach(), 2.0)
    assert out.shape == (0,)
    out.sum().backward()
    assert e.grad.shape == (0,)
    for rg in (False, True):  # the plain call and the autograd path
        with pytest.raises(TypeError, match=r"toy_torch_adapter: got a tensor on device 'meta'; only CPU"):
            toy(torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64, device="meta",
                                                                 requires_grad=rg))
    with pytest.raises(TypeError, match="c has type dict"):  # traced graphs need literal options
        torch.func.grad(lambda v: toy(v, c={"not": "an option"}).sum())(torch.zeros(2))
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        toy(torch.zeros(2), nonsense=1)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_op'"):
        st.no_such_op  # noqa: B018


def test_toy_compile_with_options_and_traced_vmap(toy):
    torch._dynamo.reset()
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, dtype=torch.float64)

    def f(x):
        out, twice = toy(x.sin(), y, 0.5, c=None, pair=True)
        return (out * twice).sum()

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(cf(x), f(x))
    (g,) = torch.autograd.grad(cf(x), x)
    (ge,) = torch.autograd.grad(f(x), x)
    torch.testing.assert_close(g, ge)
    xs = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(torch.vmap(lambda v: toy(v, y, 0.5))(xs), 0.5 * xs * y)


def test_core_errors_come_through_unchanged():
    op = "linear_scan" if "linear_scan" in OPS else None
    if op is None:
        pytest.skip("linear_scan is not registered")
    with pytest.raises(ValueError, match="linear_scan"):
        st.linear_scan(torch.ones(2, 3), torch.ones(4, 5))


# ----------------------------------------------------------------------------- imports
def test_import_ssmcore_does_not_import_torch_and_missing_torch_is_a_clear_error():
    code = (
        "import sys, ssmcore; assert 'torch' not in sys.modules, 'import ssmcore imported torch'\n"
        "sys.modules['torch'] = None\n"
        "try:\n    import ssmcore.torch\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'pip install "ssmcore[torch]"' in out.stdout
