"""ssmcore.torch on CUDA tensors: the CuPy backend through DLPack, on torch's current stream.

Without a GPU (CI): the CUDA path's logic runs with a NumPy stand-in for the CuPy bridge
(conversion, autograd, the traced path's CUDA kernels, aliasing, gradient conventions), and the
device routing is checked with stand-in tensors. With a GPU (``@pytest.mark.gpu``, skipped
without one): every op that has a CuPy kernel equals the CPU result on CUDA tensors, passes
gradcheck in float64, compiles with ``torch.compile(fullgraph=True)`` and respects a non-default
stream; ops without a kernel raise the core's uniform error.
"""

from __future__ import annotations

import contextlib
import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from adapter_toy import registered  # noqa: E402

import ssmcore.torch as st  # noqa: E402
from ssmcore.adapters import plan, specs  # noqa: E402
from ssmcore.registry import get_op  # noqa: E402

OPS = plan.load_all_ops()
FIRST_CASES = [pytest.param(op, *specs.EXAMPLES[op][0], id=op) for op in OPS if op in specs.EXAMPLES]
ALL_CASES = [pytest.param(op, case, make, id=f"{op}-{case}") for op in OPS for case, make in specs.EXAMPLES.get(op, [])]

#: The core's error for an (op, backend) pair without a kernel ("<op>: no CuPy kernel yet; ...").
NO_KERNEL = re.compile(r"no CuPy kernel", re.IGNORECASE)


def _tensors(args, kw, device="cpu", requires_grad=False):
    def conv(v):
        if isinstance(v, np.ndarray):
            t = torch.from_numpy(v.copy()).to(device)
            if requires_grad and v.dtype.kind in "fc":
                t.requires_grad_(True)
            return t
        return v

    return [conv(a) for a in args], {k: conv(v) for k, v in kw.items()}


def _leaves(targs, tkw):
    return [v for v in [*targs, *tkw.values()] if torch.is_tensor(v) and v.requires_grad]


def _flat(out):
    return list(out) if isinstance(out, tuple) else [out]


def _loss(out):
    total = 0
    for o in _flat(out):
        total = total + (o.real.sum() + 0.5 * o.imag.sum() if o.is_complex() else o.sum())
    return total


# ============================================================================ without a GPU
class _NumpyBridge:
    """The CuPy bridge's interface on NumPy: lets the CUDA path's logic run on the CPU."""

    xp = np

    def __init__(self):
        self.scopes = 0
        self.converted = 0

    def to_core(self, t):
        self.converted += 1
        return t.detach().resolve_conj().resolve_neg().numpy()

    def to_torch(self, x):
        return torch.from_numpy(x)

    @contextlib.contextmanager
    def scope(self, device):
        self.scopes += 1
        yield

    def may_share_memory(self, x, y):
        return np.may_share_memory(x, y)


@pytest.fixture
def fake_cuda(monkeypatch):
    """CPU tensors take the CUDA path (routing and bridge replaced); returns the bridge."""
    bridge = _NumpyBridge()
    monkeypatch.setattr(st, "_BRIDGE", bridge)
    monkeypatch.setattr(st, "_on_cuda", lambda name, tensors: True)
    return bridge


@pytest.mark.parametrize("op,case,make", FIRST_CASES)
def test_fake_cuda_autograd_path_equals_cpu(op, case, make, fake_cuda, monkeypatch):
    args, kw = make(np.random.default_rng(3), np.float64)
    fn = getattr(st, op)
    ca, ck = _tensors(args, kw, requires_grad=True)
    out = fn(*ca, **ck)
    assert fake_cuda.scopes >= 1  # the CUDA route was taken
    _loss(out).backward()
    grads = [t.grad for t in _leaves(ca, ck)]
    monkeypatch.undo()  # the real CPU path
    ra, rk = _tensors(args, kw, requires_grad=True)
    ref = fn(*ra, **rk)
    _loss(ref).backward()
    for o, r in zip(_flat(out), _flat(ref)):
        np.testing.assert_allclose(o.detach().numpy(), r.detach().numpy(), rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, [t.grad for t in _leaves(ra, rk)]):
        assert (g is None) == (r is None)
        if g is not None:
            np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("op,case,make", FIRST_CASES)
def test_fake_cuda_plain_call_equals_cpu(op, case, make, fake_cuda, monkeypatch):
    args, kw = make(np.random.default_rng(4), np.float64)
    real_to_numpy = st._to_numpy

    def refuse(t):  # what Tensor.numpy() does on a CUDA tensor
        raise TypeError("can't convert cuda:0 device type tensor to numpy")

    monkeypatch.setattr(st, "_to_numpy", refuse)
    ca, ck = _tensors(args, kw)
    out = getattr(st, op)(*ca, **ck)
    assert fake_cuda.scopes == 1
    monkeypatch.setattr(st, "_to_numpy", real_to_numpy)
    ref = get_op(op).fn(*args, **kw)
    for o, r in zip(_flat(out), _flat(ref)):
        np.testing.assert_allclose(o.numpy(), np.asarray(r), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op,case,make", FIRST_CASES)
def test_fake_cuda_library_kernels_equal_cpu_kernels(op, case, make, fake_cuda):
    """The traced path's "CUDA" kernels (_cuda_forward/_cuda_backward) against the "CPU" ones."""
    args, kw = make(np.random.default_rng(5), np.float64)
    rec = st._record(op)
    ta, tk = _tensors(args, kw)
    sig = rec.opdef.signature.bind(*ta, **tk)
    sig.apply_defaults()
    values = [sig.arguments[n] for n in rec.names]
    arrays, options = plan.split_values(rec.names, values, torch.is_tensor)
    enc = plan.encode_options(rec.opdef, options)
    out = st._cuda_forward(rec.opdef, arrays, plan.decode_options(enc))
    ref = rec.fwd_op(arrays, enc)
    assert len(out) == len(ref)
    for o, r in zip(out, ref):
        np.testing.assert_allclose(o.numpy(), r.numpy(), rtol=1e-12, atol=1e-12)
    cts = [torch.ones_like(r) for r in ref]
    grads = st._cuda_backward(rec, arrays, cts, plan.decode_options(enc))
    rgrads = rec.bwd_op(arrays, cts, enc)
    assert len(grads) == len(rgrads)
    for g, r in zip(grads, rgrads):
        assert g.dtype == r.dtype and g.shape == r.shape
        np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-10, atol=1e-12)


def test_fake_cuda_complex_gradcheck(fake_cuda):
    """PyTorch's conjugate convention on the CUDA path (gradcheck in complex128)."""
    rng = np.random.default_rng(6)
    a = torch.from_numpy(0.5 * (rng.standard_normal((2, 5)) + 1j * rng.standard_normal((2, 5)))).requires_grad_()
    b = torch.from_numpy(rng.standard_normal((2, 5)) + 1j * rng.standard_normal((2, 5))).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: st.linear_scan(a, b, reverse=True), (a, b))
    assert fake_cuda.scopes > 0


def test_fake_cuda_results_never_alias_inputs(fake_cuda):
    with registered("toy_torch_cuda") as name:
        toy = st.op(name)
        x = torch.randn(4, dtype=torch.float64, requires_grad=True)
        out = toy(x, mode="identity")
        assert out.data_ptr() != x.data_ptr()  # the core returned its input: copied on the device
        assert torch.equal(out, x.detach())
        out2, twice = toy(x, 3.0 * torch.ones(4, dtype=torch.float64), pair=True)
        assert out2.data_ptr() != twice.data_ptr()
        (out2.sum() + twice.sum()).backward()
        np.testing.assert_allclose(x.grad.numpy(), 3.0 + 2.0)
        st._RECORDS.pop(name, None)
        st.__dict__.pop(name, None)


def test_fake_cuda_needs_input_grad_is_respected(fake_cuda):
    a = torch.full((2, 6), 0.5, dtype=torch.float64)
    b = torch.ones(2, 6, dtype=torch.float64, requires_grad=True)
    st.linear_scan(a, b).sum().backward()
    assert a.grad is None and b.grad is not None


def _dev(kind, index=0):
    d = torch.device(kind, index) if kind == "cuda" else torch.device(kind)
    return SimpleNamespace(is_cpu=kind == "cpu", is_cuda=kind == "cuda", device=d)


def test_device_routing_and_errors():
    cpu, cuda0, cuda1, meta = _dev("cpu"), _dev("cuda", 0), _dev("cuda", 1), _dev("meta")
    assert st._on_cuda("linear_scan", [cpu, None, cpu]) is False
    assert st._on_cuda("linear_scan", [cuda0, None, cuda0]) is True
    with pytest.raises(TypeError, match=r"linear_scan: got tensors on devices \['cpu', 'cuda:0'\]; pass all"):
        st._on_cuda("linear_scan", [cpu, cuda0])
    with pytest.raises(TypeError, match=r"on devices \['cuda:0', 'cuda:1'\]"):
        st._on_cuda("linear_scan", [cuda0, cuda1])
    with pytest.raises(TypeError, match=r"linear_scan: got a tensor on device 'meta'; only CPU and CUDA"):
        st._on_cuda("linear_scan", [cuda0, meta])


def test_meta_tensors_are_refused_on_every_path():
    for rg in (False, True):
        a = torch.zeros(2, 3, dtype=torch.float64, device="meta", requires_grad=rg)
        with pytest.raises(TypeError, match=r"ssmcore.torch.linear_scan: got a tensor on device 'meta'"):
            st.linear_scan(a, torch.zeros(2, 3, dtype=torch.float64))


def test_bridge_without_cupy_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    with pytest.raises(ImportError, match=r"ssmcore\[cuda13\]"):
        st._CupyBridge().xp  # noqa: B018


def test_fake_tensors_follow_the_input_device():
    spec = specs.ArraySpec((2, 3), np.dtype(np.float32))
    assert st._empty_of(spec, torch.device("meta")).device.type == "meta"
    assert st._empty_of(spec).device.type == "cpu"


# ============================================================================ on a GPU
def _cupy_inputs(args, kw):
    import cupy

    conv = lambda v: cupy.asarray(v) if isinstance(v, np.ndarray) else v  # noqa: E731
    return [conv(a) for a in args], {k: conv(v) for k, v in kw.items()}


def _has_cupy_kernel(op, make) -> bool:
    """Whether the core runs op on CuPy arrays.

    From the declared capability table where there is one (``ssmcore.dispatch.capabilities``),
    else by a probe call: True if it runs, False on the uniform error, any other error raises.
    """
    from ssmcore import dispatch

    caps = getattr(dispatch, "capabilities", None)
    if caps is not None and op in caps():
        return "cupy" in caps()[op]
    args, kw = make(np.random.default_rng(0), np.float64)
    ca, ck = _cupy_inputs(args, kw)
    try:
        get_op(op).fn(*ca, **ck)
    except Exception as exc:  # noqa: BLE001 - classified below
        if NO_KERNEL.search(str(exc)):
            return False
        raise
    return True


def _gpu_tol(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype in (np.float32, np.complex64) else dict(rtol=1e-10, atol=1e-12)


def _dtypes(op):
    out = [np.float32, np.float64]
    return out + [np.complex64, np.complex128] if op in specs.COMPLEX_OK else out


@pytest.mark.gpu
@pytest.mark.parametrize("op,case,make", ALL_CASES)
def test_cuda_equals_cpu(op, case, make):
    if not _has_cupy_kernel(op, make):
        pytest.skip(f"{op} has no CuPy kernel yet")
    fn = getattr(st, op)
    for dt in _dtypes(op):
        args, kw = make(np.random.default_rng(11), dt)
        ca, ck = _tensors(args, kw, "cuda", requires_grad=True)
        out = fn(*ca, **ck)
        _loss(out).backward()
        ra, rk = _tensors(args, kw, "cpu", requires_grad=True)
        ref = fn(*ra, **rk)
        _loss(ref).backward()
        for o, r in zip(_flat(out), _flat(ref)):
            assert o.device.type == "cuda"
            np.testing.assert_allclose(o.detach().cpu().numpy(), r.detach().numpy(), **_gpu_tol(dt))
        for g, r in zip([t.grad for t in _leaves(ca, ck)], [t.grad for t in _leaves(ra, rk)]):
            assert g.device.type == "cuda"
            np.testing.assert_allclose(g.cpu().numpy(), r.numpy(), **_gpu_tol(dt))
        # The plain (no-grad) call too.
        pa, pk = _tensors(args, kw, "cuda")
        for o, r in zip(_flat(fn(*pa, **pk)), _flat(ref)):
            np.testing.assert_allclose(o.cpu().numpy(), r.detach().numpy(), **_gpu_tol(dt))


@pytest.mark.gpu
@pytest.mark.parametrize("op,case,make", FIRST_CASES)
def test_cuda_gradcheck_float64(op, case, make):
    if not _has_cupy_kernel(op, make):
        pytest.skip(f"{op} has no CuPy kernel yet")
    dts = [np.float64] + ([np.complex128] if op in specs.COMPLEX_OK else [])
    for dt in dts:
        args, kw = make(np.random.default_rng(12), dt)
        ta, tk = _tensors(args, kw, "cuda", requires_grad=True)
        leaves = _leaves(ta, tk)

        def f(*xs):
            it = iter(xs)
            a = [next(it) if torch.is_tensor(v) and v.requires_grad else v for v in ta]
            k = {n: next(it) if torch.is_tensor(v) and v.requires_grad else v for n, v in tk.items()}
            return getattr(st, op)(*a, **k)

        assert torch.autograd.gradcheck(f, tuple(leaves), eps=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("op,case,make", FIRST_CASES)
def test_cuda_compile_fullgraph(op, case, make, compiler):
    if not _has_cupy_kernel(op, make):
        pytest.skip(f"{op} has no CuPy kernel yet")
    if compiler == "inductor" and op != "linear_scan":
        pytest.skip("inductor is exercised on linear_scan only (compile time)")
    torch._dynamo.reset()
    args, kw = make(np.random.default_rng(13), np.float64)
    ta, tk = _tensors(args, kw, "cuda", requires_grad=True)
    fn = getattr(st, op)

    def f(*a, **k):
        return _loss(fn(*a, **k))

    eager = f(*ta, **tk)
    g_eager = torch.autograd.grad(eager, _leaves(ta, tk))
    compiled = torch.compile(f, fullgraph=True, backend=compiler)
    traced = compiled(*ta, **tk)
    g_traced = torch.autograd.grad(traced, _leaves(ta, tk))
    torch.testing.assert_close(traced, eager)
    for a, b in zip(g_traced, g_eager):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
def test_cuda_runs_on_torchs_current_stream():
    """On a non-default stream whose inputs are written after a long sleep.

    A kernel launched on any other stream would read the inputs before they are written.
    """
    import cupy

    if not _has_cupy_kernel("linear_scan", specs.EXAMPLES["linear_scan"][0][1]):
        pytest.skip("linear_scan has no CuPy kernel yet")
    rng = np.random.default_rng(14)
    a_np = rng.uniform(0.9, 0.999, (8, 1 << 16)).astype(np.float32)
    b_np = rng.standard_normal((8, 1 << 16)).astype(np.float32)
    ref = get_op("linear_scan").fn(a_np, b_np)
    a_src, b_src = torch.from_numpy(a_np).cuda(), torch.from_numpy(b_np).cuda()
    a = torch.zeros_like(a_src, requires_grad=False)
    b = torch.zeros_like(b_src)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    before = cupy.cuda.get_current_stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time on this stream before the inputs exist
        a.copy_(a_src)
        b.copy_(b_src)
        h = st.linear_scan(a, b)
        a.requires_grad_(True)
        h2 = st.linear_scan(a, b)
        (g,) = torch.autograd.grad(h2.sum(), a)
        out = h.clone()
    assert cupy.cuda.get_current_stream().ptr == before.ptr  # the adapter restored CuPy's stream
    side.synchronize()
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(g).all()


@pytest.mark.gpu
def test_cuda_inputs_are_zero_copy():
    import cupy

    t = torch.randn(4, 64, device="cuda")
    assert st._BRIDGE.to_core(t).data.ptr == t.data_ptr()
    x = cupy.ones((4, 64), dtype=cupy.float32)
    assert st._BRIDGE.to_torch(x).data_ptr() == x.data.ptr


@pytest.mark.gpu
@pytest.mark.parametrize("op,case,make", FIRST_CASES)
def test_cuda_ops_without_kernel_raise_the_core_error(op, case, make):
    if _has_cupy_kernel(op, make):
        pytest.skip(f"{op} has a CuPy kernel")
    args, kw = make(np.random.default_rng(15), np.float64)
    for rg in (False, True):
        ta, tk = _tensors(args, kw, "cuda", requires_grad=rg)
        with pytest.raises(Exception, match=NO_KERNEL):
            getattr(st, op)(*ta, **tk)


@pytest.mark.gpu
def test_cuda_mixed_with_cpu_is_a_type_error():
    a = torch.full((2, 6), 0.5, device="cuda")
    b = torch.ones(2, 6)
    for rg in (False, True):
        with pytest.raises(TypeError, match=r"linear_scan: got tensors on devices \['cpu', 'cuda:0'\]"):
            st.linear_scan(a.requires_grad_(rg), b)


# ---------------------------------------------------------------------------- the real bridge, mocked CuPy
class _Recorder:
    def __init__(self):
        self.events = []


def _fake_cupy(rec, with_from_external=True):
    class Ctx:
        def __init__(self, what):
            self.what = what

        def __enter__(self):
            rec.events.append(("enter", self.what))

        def __exit__(self, *exc):
            rec.events.append(("exit", self.what))

    class Stream:
        @classmethod
        def from_external(cls, obj):
            rec.events.append(("from_external", obj.__cuda_stream__()))
            return Ctx(("stream", obj.__cuda_stream__()[1]))

    if not with_from_external:
        del Stream.from_external

    def external_stream(ptr, device_id):
        rec.events.append(("ExternalStream", ptr, device_id))
        return Ctx(("stream", ptr))

    cuda = SimpleNamespace(Stream=Stream, ExternalStream=external_stream, Device=lambda i: Ctx(("device", i)),
                           using_allocator=lambda alloc: Ctx(("allocator",)),
                           UnownedMemory=lambda ptr, size, owner, dev: SimpleNamespace(ptr=ptr, size=size,
                                                                                       owner=owner, dev=dev),
                           MemoryPointer=lambda mem, offset: SimpleNamespace(mem=mem, offset=offset))
    return SimpleNamespace(cuda=cuda, from_dlpack=np.from_dlpack)


class _TorchStream:
    def __init__(self, device_index, ptr):
        self.device_index, self.cuda_stream = device_index, ptr

    def __cuda_stream__(self):
        return (0, self.cuda_stream)


@pytest.mark.parametrize("with_from_external", [True, False])
def test_bridge_scope_sets_device_then_torchs_stream(monkeypatch, with_from_external):
    rec = _Recorder()
    bridge = st._CupyBridge()
    bridge._cp = _fake_cupy(rec, with_from_external)
    current = {"s": _TorchStream(1, 0xABC)}
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current["s"])
    with bridge.scope(torch.device("cuda", 1)):
        rec.events.append("body")
    made = ("from_external", (0, 0xABC)) if with_from_external else ("ExternalStream", 0xABC, 1)
    assert rec.events == [made, ("enter", ("device", 1)), ("enter", ("stream", 0xABC)), ("enter", ("allocator",)),
                          "body", ("exit", ("allocator",)), ("exit", ("stream", 0xABC)), ("exit", ("device", 1))]
    rec.events.clear()
    with bridge.scope(torch.device("cuda", 1)):  # the wrapped stream is reused
        pass
    assert made not in rec.events
    current["s"] = _TorchStream(1, 0xDEF)  # another torch stream: wrapped anew
    with bridge.scope(torch.device("cuda", 1)):
        pass
    assert ("enter", ("stream", 0xDEF)) in rec.events


def test_bridge_scope_restores_on_error(monkeypatch):
    rec = _Recorder()
    bridge = st._CupyBridge()
    bridge._cp = _fake_cupy(rec)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _TorchStream(0, 7))
    with pytest.raises(RuntimeError, match="inside"):
        with bridge.scope(torch.device("cuda", 0)):
            raise RuntimeError("inside")
    assert rec.events[-3:] == [("exit", ("allocator",)), ("exit", ("stream", 7)), ("exit", ("device", 0))]


def test_torch_allocator_hands_out_torch_memory_kept_alive_by_cupy():
    rec = _Recorder()
    alloc = st._torch_allocator(_fake_cupy(rec), torch.device("cpu"))  # the CPU stands in for a GPU here
    p = alloc(1000)
    assert p.offset == 0 and p.mem.size == 1000 and p.mem.dev == -1
    block = p.mem.owner  # the tensor whose memory CuPy uses: kept alive by the CuPy memory object
    assert block.dtype == torch.uint8 and block.numel() == 1000 and block.data_ptr() == p.mem.ptr


def test_bridge_to_core_detaches_and_resolves_lazy_views():
    bridge = st._CupyBridge()
    bridge._cp = SimpleNamespace(from_dlpack=np.from_dlpack)
    z = torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex128, requires_grad=True)
    np.testing.assert_array_equal(bridge.to_core(z.conj()), np.array([1 - 2j, 3 + 1j]))
    neg = z.detach().conj().imag  # a lazy negative view
    assert neg.is_neg()
    np.testing.assert_array_equal(bridge.to_core(neg), np.array([-2.0, 1.0]))
    x = torch.arange(6.0, dtype=torch.float64).reshape(2, 3).t()  # strided views keep their strides (zero-copy)
    v = bridge.to_core(x)
    assert v.strides == (8, 24) and np.shares_memory(v, x.numpy())
