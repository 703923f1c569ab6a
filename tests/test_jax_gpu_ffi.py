"""ssmcore.jax on the GPU: the CUDA-platform XLA FFI path (ssmcore/adapters/jax_cuda.py).

CPU side (CI): the header/mirror check, registration, the CUDA lowering of
every op with a CuPy kernel (cross-lowered on this CPU machine), the handler
run on a hand-built call frame with a NumPy stand-in for CuPy, the result
allocator and result placement, the uniform error and the host-fallback
switch, the vmap fold and the trace-time shape errors. The ``gpu`` tests run
every GPU-capable op through ``ssmcore.jax`` on GPU arrays against the CuPy
call and the core's VJP, under jit and vmap, with host transfers disallowed.
"""

from __future__ import annotations

import ctypes
import gc
import re
from types import SimpleNamespace

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

import ssmcore  # noqa: E402
import ssmcore.jax as sj  # noqa: E402
from ssmcore.adapters import jax_cuda, jax_ffi, specs  # noqa: E402
from ssmcore.adapters.plan import load_all_ops  # noqa: E402
from ssmcore.dispatch import UnsupportedBackendError, capabilities  # noqa: E402
from ssmcore.registry import get_op  # noqa: E402

load_all_ops()
GPU_OPS = sorted(op for op, have in capabilities().items() if "cupy" in have and op in ssmcore.list_ops())
CPU_ONLY_OPS = sorted(op for op, have in capabilities().items() if "cupy" not in have and op in ssmcore.list_ops())


# ============================================================================ header and mirror
def test_mirror_matches_the_installed_header():
    text = jax_cuda.header_text()
    assert text is not None
    assert jax_cuda.layout_problems(text) == []
    # the fields the handler relies on, by name and position
    api = jax_cuda.struct_fields(text, "XLA_FFI_Api")
    fields = [f[0] for f in jax_cuda._ApiFunctions._fields_]
    assert api.index("XLA_FFI_Stream_Get") == fields.index("XLA_FFI_Stream_Get")
    want = ["struct_size", "extension_start", "ctx", "stream"]
    assert jax_cuda.struct_fields(text, "XLA_FFI_Stream_Get_Args") == want
    assert jax_cuda.struct_fields(text, "XLA_FFI_Extension_Base") == ["struct_size", "type", "next"]


def test_mirror_check_catches_a_changed_header():
    text = jax_cuda.header_text()
    swapped = text.replace("_XLA_FFI_API_STRUCT_FIELD(XLA_FFI_Stream_Get);", "@@").replace(
        "_XLA_FFI_API_STRUCT_FIELD(XLA_FFI_Type_Register);", "_XLA_FFI_API_STRUCT_FIELD(XLA_FFI_Stream_Get);").replace(
        "@@", "_XLA_FFI_API_STRUCT_FIELD(XLA_FFI_Type_Register);")
    assert any("XLA_FFI_Api" in p for p in jax_cuda.layout_problems(swapped))
    renamed = text.replace("void* stream;  // out", "void* stream_handle;  // out")
    assert any("XLA_FFI_Stream_Get_Args" in p for p in jax_cuda.layout_problems(renamed))
    major = re.sub(r"#define\s+XLA_FFI_API_MAJOR\s+\d+", "#define XLA_FFI_API_MAJOR 7", text)
    assert any("MAJOR is 7" in p for p in jax_cuda.layout_problems(major))
    gone = text.replace("struct XLA_FFI_Buffer {", "struct XLA_FFI_Buffer_Renamed {")
    assert any("XLA_FFI_Buffer not found" in p for p in jax_cuda.layout_problems(gone))


def test_register_and_the_no_gpu_decision(monkeypatch):
    jax_cuda.register()  # a CUDA target can be registered on a CPU-only jaxlib (XLA keeps it pending)
    jax_cuda.register()  # idempotent
    assert jax_cuda._STATE["registered"]
    if not jax_cuda.gpu_backend():
        assert jax_cuda.cuda_available() is False
        assert "no GPU backend" in jax_cuda._STATE["why"]
    monkeypatch.setenv(jax_ffi.ENV_VAR, "pure_callback")
    assert jax_cuda.cuda_available() is False


# ============================================================================ the CUDA lowering
@pytest.fixture
def cuda_on(monkeypatch):
    """Pretend the CUDA path passed its self-test, so traces stage out the CUDA target."""
    jax_cuda.register()
    monkeypatch.setitem(jax_cuda._STATE, "ok", True)
    sj._custom_fn.cache_clear()  # jitted functions traced with another decision must not be reused
    yield
    sj._custom_fn.cache_clear()


def _handles(lowered) -> list[int]:
    text = lowered.as_text()
    assert jax_cuda.TARGET in text
    return [int(h) for h in re.findall(r"handle = (\d+) : i64", text)]


def _device_fn(lowered, k=0):
    return jax_cuda._DEVICE_FNS[_handles(lowered)[k]]


def _f32(make, seed=3):
    args, kw = make(np.random.default_rng(seed), np.float32)
    return args, kw


def _split(args, kw):
    """(positional jax leaves, kw jax leaves, rebuild(*leaves) -> (args, kw))."""
    pos = [i for i, a in enumerate(args) if isinstance(a, np.ndarray)]
    keys = [k for k, v in kw.items() if isinstance(v, np.ndarray)]
    leaves = [args[i] for i in pos] + [kw[k] for k in keys]

    def rebuild(*xs):
        a, k = list(args), dict(kw)
        for i, x in zip(pos, xs):
            a[i] = x
        for key, x in zip(keys, xs[len(pos):]):
            k[key] = x
        return a, k

    return leaves, rebuild


GPU_CASES = [pytest.param(op, case, make, id=f"{op}-{case}")
             for op in GPU_OPS for case, make in specs.EXAMPLES.get(op, [])]


@pytest.mark.parametrize("op,case,make", GPU_CASES)
def test_cuda_lowering_runs_the_generic_device_function(op, case, make, cuda_on):
    """Every op with a CuPy kernel lowers to the CUDA target.

    The device function it names is the core call (run here on NumPy arrays, which the generic
    device functions also accept).
    """
    args, kw = _f32(make)
    leaves, rebuild = _split(args, kw)
    fn = getattr(sj, op)

    def call(*xs):
        a, k = rebuild(*xs)
        return fn(*a, **k)

    lowered = jax.jit(call).trace(*leaves).lower(lowering_platforms=("cuda",))
    dev = _device_fn(lowered)
    got = dev(*[np.require(x, requirements="C") for x in leaves])  # ascontiguousarray turns 0-d into (1,)
    ref = get_op(op).fn(*args, **kw)
    ref = ref if isinstance(ref, tuple) else (ref,)
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6)
    # the CPU lowering of the same function does not mention the CUDA target
    assert jax_cuda.TARGET not in jax.jit(call).trace(*leaves).lower(lowering_platforms=("cpu",)).as_text()


def test_cuda_lowering_of_grad_is_the_core_vjp(cuda_on):
    rng = np.random.default_rng(0)
    a = (0.5 * rng.standard_normal((3, 8))).astype(np.float32)
    b = rng.standard_normal((3, 8)).astype(np.float32)
    loss = lambda a, b: jnp.sum(sj.linear_scan(a, b) ** 2)  # noqa: E731
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1))).trace(a, b).lower(lowering_platforms=("cuda",))
    handles = _handles(lowered)
    assert handles  # jax keeps the forward (its output feeds the cotangent) and the backward
    bwd = jax_cuda._DEVICE_FNS[handles[-1]]
    h = ssmcore.linear_scan(a, b)
    ga, gb = bwd(a, b, 2 * h)
    _, pullback = ssmcore.vjp("linear_scan", a, b)
    ra, rb, _ = pullback(2 * h)
    np.testing.assert_allclose(ga, ra, rtol=1e-6)
    np.testing.assert_allclose(gb, rb, rtol=1e-6)


# ============================================================================ the handler on a fake call frame
class _NumpyBridge:
    """jax_cuda.CupyBridge's contract with NumPy views of host memory."""

    xp = np

    def __init__(self):
        self.runs = []
        self.copied = None

    def view(self, ptr, shape, dtype, device):
        if not ptr or 0 in shape:
            return np.empty(shape, dtype)
        return np.asarray(jax_ffi._Interface({"data": (ptr, False), "shape": shape, "typestr": dtype.str,
                                              "version": 3}))

    def run(self, fn, args, slots, stream, device):
        self.runs.append((stream, device, slots))
        return list(fn(*args)), lambda: self.outstanding

    outstanding = 0

    def place(self, results, targets, slots, stream, device):
        self.copied = jax_cuda.place_results(results, targets, slots, _np_address, np.copyto, np.array)


def _np_address(x):
    return x.__array_interface__["data"][0]


_CODES = {np.dtype(np.float32): 11, np.dtype(np.float64): 12, np.dtype(np.complex64): 15, np.dtype(np.int32): 4}


class _Frame:
    """A hand-built XLA_FFI_CallFrame for the CUDA handler (keeps every ctypes object alive)."""

    def __init__(self, handle, ins, outs, stream=0xABC0, ordinal=0):
        self.keep = []
        self.errors = []

        def buf(arr):
            dims = (ctypes.c_int64 * max(arr.ndim, 1))(*arr.shape)
            b = jax_ffi._Buffer(ctypes.sizeof(jax_ffi._Buffer), None, _CODES[arr.dtype], arr.ctypes.data, arr.ndim,
                                dims)
            self.keep += [dims, b, arr]
            return ctypes.addressof(b)

        def seq(ctype, values):
            arr = (ctype * max(len(values), 1))(*values)
            self.keep.append(arr)
            return arr

        args = jax_ffi._Args(ctypes.sizeof(jax_ffi._Args), None, len(ins), seq(ctypes.c_int, [1] * len(ins)),
                             seq(ctypes.c_void_p, [buf(a) for a in ins]))
        rets = jax_ffi._Rets(ctypes.sizeof(jax_ffi._Rets), None, len(outs), seq(ctypes.c_int, [1] * len(outs)),
                             seq(ctypes.c_void_p, [buf(a) for a in outs]))
        value = ctypes.c_int64(handle)
        scalar = jax_ffi._Scalar(jax_ffi._S64, ctypes.addressof(value))
        attrs = jax_ffi._Attrs(ctypes.sizeof(jax_ffi._Attrs), None, 1, seq(ctypes.c_int, [jax_ffi._ATTR_SCALAR]),
                               None, seq(ctypes.c_void_p, [ctypes.addressof(scalar)]))

        def stream_get(p):
            p.contents.stream = stream
            return None

        def ordinal_get(p):
            p.contents.device_ordinal = ordinal
            return None

        self.stream_cb = jax_cuda._STREAM_GET_T(stream_get)
        self.ordinal_cb = jax_cuda._ORDINAL_GET_T(ordinal_get)
        api = jax_cuda._ApiFunctions()
        api.struct_size = ctypes.sizeof(jax_cuda._ApiFunctions)
        api.XLA_FFI_Stream_Get = ctypes.cast(self.stream_cb, ctypes.c_void_p).value
        api.XLA_FFI_DeviceOrdinal_Get = ctypes.cast(self.ordinal_cb, ctypes.c_void_p).value
        self.keep += [value, scalar, args, rets, attrs, api]
        self.frame = jax_ffi._CallFrame(ctypes.sizeof(jax_ffi._CallFrame), None, ctypes.addressof(api), 0x1,
                                        jax_ffi._STAGE_EXECUTE, args, rets, attrs)

    def error_create(self, p):
        self.errors.append(p.contents.message.decode())
        return 0xE0

    def __call__(self):
        return jax_cuda._handler(ctypes.addressof(self.frame))


@pytest.fixture
def numpy_bridge(monkeypatch):
    br = _NumpyBridge()
    monkeypatch.setattr(jax_cuda, "BRIDGE", br)
    return br


def test_handler_runs_linear_scan_into_the_result_buffers(numpy_bridge, cuda_on):
    rng = np.random.default_rng(1)
    a = (0.5 * rng.standard_normal((3, 1))).astype(np.float32)
    b = rng.standard_normal((3, 8)).astype(np.float32)
    h0 = rng.standard_normal(3).astype(np.float32)
    fn = lambda a, b, h0: sj.linear_scan(a, b, h0, reverse=True, return_final_state=True)  # noqa: E731
    dev = _device_fn(jax.jit(fn).trace(a, b, h0).lower(lowering_platforms=("cuda",)))
    out = [np.full((3, 8), np.nan, np.float32), np.full((3,), np.nan, np.float32)]
    frame = _Frame(jax_cuda.device_handle(dev), [a, b, h0], out, stream=0x5150, ordinal=0)
    assert frame() == 0
    h, hT = ssmcore.linear_scan(a, b, h0, reverse=True, return_final_state=True)
    np.testing.assert_allclose(out[0], h, rtol=1e-6)
    np.testing.assert_allclose(out[1], hT, rtol=1e-6)
    stream, device, slots = numpy_bridge.runs[-1]
    assert stream == 0x5150 and device == 0
    assert slots == [(out[0].ctypes.data, out[0].nbytes), (out[1].ctypes.data, out[1].nbytes)]


def test_handler_reports_errors_to_xla(numpy_bridge, monkeypatch):
    def broken(x):
        raise ValueError("linear_scan: b has shape (2,); expected something else")

    x = np.ones(4, np.float32)
    frame = _Frame(jax_cuda.device_handle(broken), [x], [np.empty(4, np.float32)])
    monkeypatch.setattr(jax_ffi, "_error_create", jax_ffi._ERROR_CREATE_T(frame.error_create))
    assert frame() == 0xE0
    assert "ssmcore device call failed: ValueError: linear_scan: b has shape (2,)" in frame.errors[0]

    wrong = lambda x: (x, x)  # noqa: E731 - two results for one buffer
    frame = _Frame(jax_cuda.device_handle(wrong), [x], [np.empty(4, np.float32)])
    monkeypatch.setattr(jax_ffi, "_error_create", jax_ffi._ERROR_CREATE_T(frame.error_create))
    assert frame() == 0xE0 and "returned 2 arrays; expected 1" in frame.errors[0]

    numpy_bridge.outstanding = 1  # the op kept an allocation that lives in an XLA result buffer
    frame = _Frame(jax_cuda.device_handle(lambda x: (x + 1,)), [x], [np.empty(4, np.float32)])
    monkeypatch.setattr(jax_ffi, "_error_create", jax_ffi._ERROR_CREATE_T(frame.error_create))
    assert frame() == 0xE0 and "kept a reference to an array it allocated" in frame.errors[0]
    numpy_bridge.outstanding = 0

    small = _Frame(jax_cuda.device_handle(wrong), [x], [np.empty(4, np.float32)])
    small.keep[-1].struct_size = 16  # an XLA_FFI_Api too small to hold XLA_FFI_Stream_Get
    monkeypatch.setattr(jax_ffi, "_error_create", jax_ffi._ERROR_CREATE_T(small.error_create))
    assert small() == 0xE0 and "XLA_FFI_Api has struct_size 16" in small.errors[0]


# ============================================================================ result allocator and placement
class _FakeMem:
    def __init__(self, ptr, size, owner, device):
        self.ptr, self.size, self.owner, self.device = ptr, size, owner, device


class _FakePtr:
    def __init__(self, mem, offset):
        self.mem = mem


_FAKE_CP = SimpleNamespace(cuda=SimpleNamespace(UnownedMemory=_FakeMem, MemoryPointer=_FakePtr))


def test_result_allocator_lends_each_buffer_to_one_live_allocation():
    alloc = jax_cuda._ResultAllocator(_FAKE_CP, [(1000, 64), (2000, 32), (3000, 64)], 0, lambda n: ("pool", n))
    p1 = alloc(64)
    assert p1.mem.ptr == 1000 and p1.mem.size == 64
    p2 = alloc(64)
    assert p2.mem.ptr == 3000  # the next buffer of that size
    assert alloc(64) == ("pool", 64)  # both lent and alive
    del p1
    gc.collect()
    assert alloc(64).mem.ptr == 1000  # free again once its holder died
    assert alloc(32).mem.ptr == 2000
    assert alloc(48) == ("pool", 48) and alloc(0) == ("pool", 0)
    assert alloc.outstanding() == 1  # only p2 is still held: the others were dropped at once
    del p2
    assert alloc.outstanding() == 0


def test_place_results_copies_only_what_is_not_in_place():
    t0, t1 = np.zeros((2, 3), np.float32), np.zeros(2, np.float32)
    slots = [(t0.ctypes.data, t0.nbytes), (t1.ctypes.data, t1.nbytes)]
    # The op wrote its first result straight into buffer 0 and returned a view of it as the second.
    t0[...] = np.arange(6).reshape(2, 3)
    copied = jax_cuda.place_results([t0, t0[:, -1]], [t0, t1], slots, _np_address, np.copyto, np.array)
    assert copied == [False, True]
    np.testing.assert_array_equal(t1, [2, 5])
    np.testing.assert_array_equal(t0, np.arange(6).reshape(2, 3))


def test_place_results_survives_results_in_each_others_buffers():
    t0, t1 = np.zeros(4, np.float32), np.zeros(4, np.float32)
    slots = [(t0.ctypes.data, t0.nbytes), (t1.ctypes.data, t1.nbytes)]
    t0[...], t1[...] = 1, 2
    # result 0 lives in buffer 1 and result 1 in buffer 0: naive copies would lose one of them
    copied = jax_cuda.place_results([t1, t0], [t0, t1], slots, _np_address, np.copyto, np.array)
    assert copied == [True, True]
    np.testing.assert_array_equal(t0, 2)
    np.testing.assert_array_equal(t1, 1)
    with pytest.raises(ValueError, match="result 0 has shape"):
        jax_cuda.place_results([np.zeros(3, np.float32)], [t0], slots[:1], _np_address, np.copyto, np.array)


# ============================================================================ ops without a CuPy kernel
class _GpuStub:
    """Stands in for a concrete jax.Array on a GPU (none can be made here)."""

    def devices(self):
        return [SimpleNamespace(platform="gpu")]


@pytest.mark.skipif(not CPU_ONLY_OPS, reason="every op has a CuPy kernel")
def test_uniform_error_for_gpu_arrays_of_ops_without_a_cupy_kernel(monkeypatch):
    op = CPU_ONLY_OPS[0]
    sj.op(op)
    rec = sj._RECORDS[op]
    assert not rec.gpu
    err = rec.unsupported()
    assert isinstance(err, UnsupportedBackendError)
    assert isinstance(err, NotImplementedError) and isinstance(err, TypeError)
    msg = str(err)
    assert f"ssmcore.jax.{op}: no CuPy kernel yet" in msg and jax_cuda.FALLBACK_ENV_VAR in msg
    assert "docs/backends.md" in msg
    with pytest.raises(UnsupportedBackendError, match=f"ssmcore.jax.{op}"):
        sj._refuse_gpu_arrays(rec, [jnp.ones(2), _GpuStub()])
    sj._refuse_gpu_arrays(rec, [jnp.ones(2)])  # CPU arrays pass


def test_gpu_capable_ops_follow_the_capability_table():
    for op in GPU_OPS:
        sj.op(op)
        assert sj._RECORDS[op].gpu
    for op in CPU_ONLY_OPS:
        sj.op(op)
        assert not sj._RECORDS[op].gpu


def test_host_fallback_switch(monkeypatch):
    monkeypatch.delenv(jax_cuda.FALLBACK_ENV_VAR, raising=False)
    assert not jax_cuda.host_fallback_enabled()
    monkeypatch.setenv(jax_cuda.FALLBACK_ENV_VAR, "host")
    assert jax_cuda.host_fallback_enabled()
    monkeypatch.setenv(jax_cuda.FALLBACK_ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match="SSMCORE_JAX_GPU_FALLBACK='sometimes'"):
        jax_cuda.host_fallback_enabled()


def test_host_fallback_warns_once_when_it_runs():
    calls = []
    fb = jax_cuda._warn_once(lambda x: calls.append(x) or (x,), "some_op_for_the_test")
    with pytest.warns(RuntimeWarning, match="some_op_for_the_test: no CuPy kernel"):
        fb(1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fb(2)
    assert calls == [1, 2]


def test_unsupported_raiser_is_cached_and_raises():
    make = lambda: UnsupportedBackendError("x: no CuPy kernel yet")  # noqa: E731
    r = jax_cuda._raiser(make)
    assert jax_cuda._raiser(make) is r
    with pytest.raises(UnsupportedBackendError, match="no CuPy kernel"):
        r(np.ones(1))


# ============================================================================ vmap folds into leading axes
def test_fold_calls_the_op_once_on_the_stacked_batch():
    calls = []

    def host(a, b):
        calls.append((a.shape, b.shape))
        return (ssmcore.linear_scan(a, b),)

    host.op_name = "linear_scan"
    rng = np.random.default_rng(2)
    a = (0.5 * rng.standard_normal((2, 5, 3, 1))).astype(np.float32)
    b = rng.standard_normal((2, 5, 3, 7)).astype(np.float32)
    (h,) = sj._batched(host, (2, 2))(a, b)
    assert calls == [((10, 3, 1), (10, 3, 7))]
    np.testing.assert_allclose(h, ssmcore.linear_scan(a, b), rtol=1e-6)
    calls.clear()
    sj._batched(host, (2, 2))(a[:, :1], b)  # a not batched along the second vmap axis: the loop
    assert len(calls) == 10
    host.op_name = "lti_simulate"  # not an op that opted in
    calls.clear()
    sj._batched(host, (2, 2))(a, b)
    assert len(calls) == 10


def test_vmap_of_linear_scan_and_its_grad_equal_the_loop():
    rng = np.random.default_rng(4)
    a = (0.5 * rng.standard_normal((3, 2, 1))).astype(np.float32)
    b = rng.standard_normal((3, 2, 6)).astype(np.float32)
    out = jax.jit(jax.vmap(lambda a, b: sj.linear_scan(a, b, reverse=True)))(a, b)
    ref = np.stack([ssmcore.linear_scan(a[i], b[i], reverse=True) for i in range(3)])
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-6)
    g = jax.jit(jax.vmap(jax.grad(lambda a, b: jnp.sum(sj.linear_scan(a, b) ** 2), argnums=(0, 1))))(a, b)
    for i in range(3):
        h = ssmcore.linear_scan(a[i], b[i])
        _, pullback = ssmcore.vjp("linear_scan", a[i], b[i])
        ra, rb, _ = pullback(2 * h)
        np.testing.assert_allclose(np.asarray(g[0][i]), ra, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(g[1][i]), rb, rtol=1e-5)


def test_checkpoint_and_donation_on_cpu():
    rng = np.random.default_rng(6)
    a = (0.5 * rng.standard_normal((3, 16))).astype(np.float32)
    b = rng.standard_normal((3, 16)).astype(np.float32)
    loss = lambda a, b: jnp.sum(sj.linear_scan(a, b) ** 2)  # noqa: E731
    g1 = jax.jit(jax.grad(loss, argnums=(0, 1)))(a, b)
    g2 = jax.jit(jax.grad(jax.checkpoint(loss), argnums=(0, 1)))(a, b)
    for x, y in zip(g1, g2):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6)
    ref = ssmcore.linear_scan(a, b)
    jb = jnp.array(b)
    out = jax.jit(lambda a, b: sj.linear_scan(a, b) * 1, donate_argnums=(1,))(jnp.array(a), jb)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-6)


# ============================================================================ trace-time errors name op and argument
def test_shape_mismatch_under_jit_names_the_op_and_arguments():
    with pytest.raises(ValueError, match=r"linear_scan: a has shape \(3, 8\) and b has shape \(4, 8\)"):
        jax.jit(sj.linear_scan)(jnp.ones((3, 8)), jnp.ones((4, 8)))


def test_spec_error_prefixes_the_rule_error_when_the_core_cannot_be_asked():
    opdef = get_op("linear_scan")
    big = [specs.ArraySpec((3000, 3000), np.dtype(np.float32)), specs.ArraySpec((4000, 3000), np.dtype(np.float32)),
           None]
    kw = {"h0": None, "reverse": False, "return_final_state": False}
    err = specs.spec_error(opdef, big, kw, ValueError("do not broadcast"))
    assert type(err) is ValueError
    assert str(err) == ("linear_scan: do not broadcast (array arguments: a (3000, 3000) float32, "
                        "b (4000, 3000) float32)")
    small = [specs.ArraySpec((3, 8), np.dtype(np.float32)), specs.ArraySpec((4, 8), np.dtype(np.float32)), None]
    err = specs.spec_error(opdef, small, {"h0": None, "reverse": False, "return_final_state": False}, ValueError("x"))
    assert "linear_scan: a has shape (3, 8)" in str(err)


# ============================================================================ on a GPU
def _gpu():
    return jax.devices("gpu")[0]


def _on_gpu(leaves):
    return [jax.device_put(x, _gpu()) for x in leaves]


def _cupy(args, kw):
    import cupy

    conv = lambda v: cupy.asarray(v) if isinstance(v, np.ndarray) else v  # noqa: E731
    return [conv(a) for a in args], {k: conv(v) for k, v in kw.items()}


def _flat(out):
    return list(out) if isinstance(out, tuple) else [out]


def _real_loss(out):
    return sum(jnp.sum(jnp.real(o) ** 2) for o in _flat(out))


TOL = dict(rtol=2e-4, atol=2e-5)


@pytest.mark.gpu
def test_cuda_path_is_on():
    assert jax_cuda.gpu_backend()
    assert jax_cuda.cuda_available(), jax_cuda._STATE["why"]


@pytest.mark.gpu
@pytest.mark.parametrize("op,case,make", GPU_CASES)
def test_gpu_op_equals_the_cupy_call_and_grad_the_core_vjp(op, case, make):
    args, kw = _f32(make)
    leaves, rebuild = _split(args, kw)
    fn = getattr(sj, op)

    def call(*xs):
        a, k = rebuild(*xs)
        return fn(*a, **k)

    xs = _on_gpu(leaves)
    ca, ck = _cupy(args, kw)
    ref = _flat(get_op(op).fn(*ca, **ck))
    jitted = jax.jit(call)
    jitted(*xs)  # compile outside the guard (constants may move at compile time)
    with jax.transfer_guard("disallow"):
        got = _flat(jitted(*xs))
        for g, r in zip(got, ref, strict=True):
            assert next(iter(g.devices())).platform == "gpu"
    for g, r in zip(got, ref):
        np.testing.assert_allclose(np.asarray(g), r.get(), **TOL)
    # grad of sum(|out|^2) equals the core's VJP with cotangents 2 * out, on CuPy arrays
    grad = jax.jit(jax.grad(lambda *xs: _real_loss(call(*xs)), argnums=tuple(range(len(xs)))))
    grad(*xs)
    with jax.transfer_guard("disallow"):
        gs = grad(*xs)
    out, pullback = ssmcore.vjp(op, *ca, **ck)
    cts = [2 * o for o in _flat(out)]
    core = pullback(cts[0] if len(cts) == 1 else tuple(cts))
    names = list(get_op(op).inputs)
    pnames = list(get_op(op).signature.parameters)
    positions = [pnames[i] for i, a in enumerate(args) if isinstance(a, np.ndarray)] + \
        [k for k, v in kw.items() if isinstance(v, np.ndarray)]
    for g, pname in zip(gs, positions):
        if pname not in names:
            continue
        r = core[names.index(pname)]
        if r is None:
            continue
        r = r.get()
        if np.iscomplexobj(r):
            r = np.conj(r) if np.iscomplexobj(np.asarray(g)) else r.real  # JAX's grad of a real loss is conj(VJP)
        np.testing.assert_allclose(np.asarray(g), r, **TOL)
    # eager (the custom_vjp's own jit) as well
    for g, r in zip(_flat(call(*xs)), ref):
        np.testing.assert_allclose(np.asarray(g), r.get(), **TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("op,case,make", GPU_CASES)
def test_gpu_vmap_equals_the_loop(op, case, make):
    args, kw = _f32(make)
    args2, kw2 = _f32(make, seed=5)
    leaves, rebuild = _split(args, kw)
    leaves2, _ = _split(args2, kw2)
    fn = getattr(sj, op)

    def call(*xs):
        a, k = rebuild(*xs)
        return fn(*a, **k)

    batch = _on_gpu([np.stack([x, y]) for x, y in zip(leaves, leaves2)])
    vm = jax.jit(jax.vmap(call))
    vm(*batch)
    with jax.transfer_guard("disallow"):
        got = _flat(vm(*batch))
    for i, ls in enumerate((leaves, leaves2)):
        for g, r in zip(got, _flat(jax.jit(call)(*_on_gpu(ls)))):
            np.testing.assert_allclose(np.asarray(g[i]), np.asarray(r), **TOL)


@pytest.mark.gpu
def test_gpu_checkpoint_and_donation():
    rng = np.random.default_rng(7)
    a = jax.device_put((0.5 * rng.standard_normal((4, 64))).astype(np.float32), _gpu())
    b = jax.device_put(rng.standard_normal((4, 64)).astype(np.float32), _gpu())
    loss = lambda a, b: jnp.sum(sj.linear_scan(a, b) ** 2)  # noqa: E731
    g1 = jax.jit(jax.grad(loss))(a, b)
    g2 = jax.jit(jax.grad(jax.checkpoint(loss)))(a, b)
    np.testing.assert_allclose(np.asarray(g1), np.asarray(g2), rtol=1e-6)
    ref = np.asarray(jax.jit(sj.linear_scan)(a, b))
    donated = jax.jit(lambda a, b: sj.linear_scan(a, b) + 0, donate_argnums=(1,))(a, jnp.array(b))
    np.testing.assert_allclose(np.asarray(donated), ref, rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not CPU_ONLY_OPS, reason="every op has a CuPy kernel")
def test_gpu_arrays_of_an_op_without_a_cupy_kernel(monkeypatch):
    op = CPU_ONLY_OPS[0]
    make = specs.EXAMPLES[op][0][1]
    args, kw = _f32(make)
    leaves, rebuild = _split(args, kw)
    xs = _on_gpu(leaves)
    fn = getattr(sj, op)

    def call(*ys):
        a, k = rebuild(*ys)
        return fn(*a, **k)

    monkeypatch.delenv(jax_cuda.FALLBACK_ENV_VAR, raising=False)
    with pytest.raises(UnsupportedBackendError, match="no CuPy kernel yet"):
        call(*xs)
    with pytest.raises(Exception, match="no CuPy kernel yet"):
        jax.block_until_ready(jax.jit(call)(*xs))
    monkeypatch.setenv(jax_cuda.FALLBACK_ENV_VAR, "host")
    sj._custom_fn.cache_clear()
    out = _flat(jax.jit(call)(*xs))
    for o, r in zip(out, _flat(get_op(op).fn(*args, **kw))):
        np.testing.assert_allclose(np.asarray(o), r, **TOL)


# ============================================================================ the benchmark rows
def test_benchmark_has_the_jax_rows_and_reports_the_ratio():
    from benchmarks import compare_gpu as cg

    case = next(c for c in cg.CASES if c.key == "jax-scan-f32")
    assert case.shape == (1, 1024, 4096) and case.dtype == "float32"
    assert ("ssmcore.jax fwd+bwd", "ssmcore (CuPy arrays) fwd+bwd") in case.versus
    many = next(c for c in cg.CASES if c.key == "jax-scan-f32-many")
    assert many.shape == (8, 4096, 4096) and "jax.lax.associative_scan" in many.candidates
    rows = [cg.Result(case, "ssmcore (CuPy arrays) fwd", 100e-6), cg.Result(case, "ssmcore.jax fwd", 125e-6)]
    assert "1.25x ssmcore (CuPy arrays) fwd (+25 us)" in cg.format_results(rows, 4e12)
