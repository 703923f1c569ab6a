"""PyTorch adapter: every registered ssmcore op as a differentiable torch op.

``ssmcore.torch.<op>`` has the same signature, options and numerics as the
NumPy function ``ssmcore.<op>``; tensors in, tensors out, differentiable with
``torch.autograd``, ``torch.func`` (grad, vmap) and ``torch.compile``. Nothing
here is written per op: the functions are generated on first attribute access
from the op registry (:mod:`ssmcore.registry`), from each op's ``fwd``/``bwd``.

How a call runs
---------------
* **Eager** (plain CPU tensors, not compiling, no ``torch.func`` transform):
  one ``torch.autograd.Function`` calls the op's NumPy ``fwd`` on zero-copy
  views (``Tensor.numpy()``, strides kept; lazy conj/neg views are resolved
  first), keeps the residuals on the autograd context and calls ``bwd`` in the
  backward. Without ``requires_grad`` the NumPy function is called directly.
  Results in memory the core allocated become tensors without a copy.
* **Traced** (``torch.compile``, ``torch.func.grad``/``vmap``, tensor
  subclasses): per op, two ``torch.library`` ops ``ssmcore::<op>`` (forward)
  and ``ssmcore::<op>_bwd`` (backward, which recomputes the forward residuals
  because a traced graph can only carry tensors) with fake (meta) kernels from
  :mod:`ssmcore.adapters.specs` and sequential vmap rules, called from one
  autograd.Function with ``setup_context``. Dynamo never traces into NumPy or
  Numba.

Conventions
-----------
* Complex gradients follow PyTorch's convention (the conjugate of JAX's):
  cotangents are conjugated on the way in and gradients on the way out of the
  core's pullback, so ``gradcheck`` passes on complex inputs.
* float16/bfloat16 (and complex32) tensors are upcast to float32 (complex64)
  for the kernels; float results are cast back when the inputs' promoted dtype
  is a half type. The Mamba ops follow mamba_ssm instead: the output of
  ``selective_scan`` has ``u``'s dtype, those of ``ssd`` and
  ``selective_state_update`` have ``x``'s (states stay float32), whatever the
  dtype of ``A``, ``D`` or ``dt_bias``.
* Python scalars, strings, booleans and None pass through unchanged, as
  constants; they get no gradient. NumPy arrays are converted to tensors.
* **CUDA tensors** run on the CuPy backend (see docs/gpu.md): inputs
  become CuPy arrays without a copy (``cupy.from_dlpack``), the core op runs
  with CuPy's current stream set to torch's current stream of the tensors'
  device, and the results come back as tensors through ``torch.from_dlpack``,
  again without a copy; what the core allocates comes from torch's caching
  allocator. Eager, autograd (the backward runs on the GPU too) and
  the traced path (a ``"CUDA"`` kernel of each ``torch.library`` op) all work
  this way. An op without a CuPy kernel raises the core's error for the
  (op, backend) pair; nothing is copied to the host. Tensors on different
  devices in one call raise a TypeError.
* ``needs_input_grad`` is passed on to the core's backward: gradients of
  inputs that do not need one are None, and ops whose backward separates
  (``fft_conv``, ``linear_scan``) skip their work (eager path; the traced
  path computes all of them).

Examples
--------
>>> import torch, ssmcore.torch as st
>>> A = torch.tensor([[0.5]], dtype=torch.float64, requires_grad=True)
>>> B = torch.ones(1, 1, dtype=torch.float64); C = torch.ones(1, 1, dtype=torch.float64)
>>> y = st.lti_simulate(A, B, C, None, torch.ones(1, 3, dtype=torch.float64))
>>> y.detach()
tensor([[1.0000, 1.5000, 1.7500]], dtype=torch.float64)
>>> y.sum().backward(); A.grad   # d/dA of 1 + (1 + A) + (1 + A + A^2) at A = 0.5
tensor([[3.]], dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

try:
    import torch as _torch
except ModuleNotFoundError as _exc:  # pragma: no cover - exercised only without torch
    raise ImportError(
        'ssmcore.torch needs PyTorch, which is not installed; install the extra: pip install "ssmcore[torch]"'
    ) from _exc

from torch.autograd.function import once_differentiable as _once_differentiable

from .adapters import specs as _specs
from .adapters.plan import (
    call_in_order as _call_in_order,
    core_call as _core_call,
    decode_options as _decode_options,
    encode_options as _encode_options,
    flatten_output as _flatten_output,
    grad_positions as _grad_positions,
    load_all_ops as _load_all_ops,
    load_op as _load_op,
    make_wrapper as _make_wrapper,
    n_positional as _n_positional,
    split_values as _split_values,
    unflatten_output as _unflatten_output,
)
from .registry import OpDef, list_ops

__all__ = ["list_ops", "op"]

_NP_OF = {
    _torch.float32: np.dtype(np.float32),
    _torch.float64: np.dtype(np.float64),
    _torch.complex64: np.dtype(np.complex64),
    _torch.complex128: np.dtype(np.complex128),
    _torch.int64: np.dtype(np.int64),
    _torch.int32: np.dtype(np.int32),
    _torch.int16: np.dtype(np.int16),
    _torch.int8: np.dtype(np.int8),
    _torch.uint8: np.dtype(np.uint8),
    _torch.bool: np.dtype(np.bool_),
}
_TORCH_OF = {v: k for k, v in _NP_OF.items()}
_UPCAST = {_torch.float16: _torch.float32, _torch.bfloat16: _torch.float32, _torch.complex32: _torch.complex64}
# Ops whose first output takes one input's (half) dtype, as mamba_ssm's do: out = empty_like(u or x),
# whatever the (float32) dtype of A, D or dt_bias; their states stay float32.
_OUTPUT_LIKE = {"selective_scan": "u", "ssd": "x", "selective_state_update": "x"}
_TENSOR = _torch.Tensor
_CPU_PROBE = _torch.empty(0)  # stands for a CPU tensor in device checks
_PARAMETER = _torch.nn.Parameter  # with _TENSOR: the plain types that may take the eager path

# One library for all ops; ops are defined lazily, the first time an adapter function is built.
_LIB = _torch.library.Library("ssmcore", "DEF")


class _Record:
    """Everything the adapter needs about one op, built once."""

    __slots__ = ("opdef", "name", "names", "n_pos_fn", "n_pos_fwd", "grad_pos", "fwd_op", "bwd_op", "fn", "wanted")

    def __init__(self, opdef: OpDef) -> None:
        self.opdef = opdef
        self.name = opdef.name
        self.names = tuple(opdef.signature.parameters)
        self.n_pos_fn = _n_positional(opdef, opdef.fn)  # leading parameters passed positionally
        self.n_pos_fwd = _n_positional(opdef, opdef.fwd)
        self.grad_pos = _grad_positions(opdef)
        self.fwd_op, self.bwd_op = _define_library_ops(opdef)
        self.fn: Callable[..., Any] | None = None
        self.wanted: dict[tuple, tuple] = {}  # (where, needs_input_grad) -> _wanted_gradients(...)


_RECORDS: dict[str, _Record] = {}


def _record(name: str) -> _Record:
    rec = _RECORDS.get(name)
    if rec is None:
        rec = _RECORDS[name] = _Record(_load_op(name, "torch"))
        rec.fn = _make_wrapper(rec.opdef, _call, "torch", rec)
    return rec


def op(name: str) -> Callable[..., Any]:
    """The torch version of op ``name`` (same as ``getattr(ssmcore.torch, name)``)."""
    return _record(name).fn


def __getattr__(name: str) -> Callable[..., Any]:
    if name.startswith("__"):
        raise AttributeError(name)
    fn = op(name)
    globals()[name] = fn  # later lookups skip __getattr__
    return fn


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(_load_all_ops()))  # the public names: helpers and every op


# ----------------------------------------------------------------------------- tensor <-> numpy
def _to_numpy(t: Any) -> np.ndarray | None:
    """Zero-copy NumPy view of a CPU tensor (a copy only for lazy conj/neg views).

    Strided tensors give strided views, as NumPy callers may pass: the core
    accepts any strides. One ``Tensor.numpy()`` call in the common case: every
    extra call into torch measurably slows the NumPy code that follows it (the
    CPU's caches and branch predictors are shared), so nothing is asked that
    ``numpy()`` would not refuse anyway.
    """
    if t is None:
        return None
    if t.requires_grad:
        t = t.detach()
    try:
        return t.numpy()
    except RuntimeError:  # the lazy conjugate or negative bit is set
        return t.resolve_conj().resolve_neg().numpy()


def _root(x: np.ndarray) -> np.ndarray:
    """The ndarray at the end of ``x``'s chain of ``.base`` views."""
    while type(x.base) is np.ndarray:
        x = x.base
    return x


def _fresh_buffer(x: np.ndarray) -> int | None:
    """A key of the buffer holding ``x`` if the core allocated it, else None (it may be an input's).

    Memory is fresh when NumPy allocated it (the root of the ``.base`` chain owns
    its data) or when Numba's runtime did (the root's base is an NRT ``MemInfo``
    with no parent; a Numba view of an argument has that argument as parent).
    Inputs reach the core as views of tensor memory, whose roots own nothing,
    so fresh memory is never an input's. The key tells two results in one
    buffer apart from two in separate buffers.
    """
    r = x if x.base is None else _root(x)
    b = r.base
    if b is None:
        return id(r) if r.flags.owndata else None
    if type(b).__name__ == "_MemInfo" and getattr(b, "parent", 0) is None:
        return b.data  # the address of the NRT allocation
    return None


def _outputs_to_torch(flat: list, inputs: list[np.ndarray | None]) -> list[Any]:
    """The core's results ``flat`` as CPU tensors that alias neither ``inputs`` nor each other.

    Fast case, no overlap checks: a C-contiguous writable ndarray in a buffer
    that the core allocated (:func:`_fresh_buffer`) and that no earlier result
    uses is wrapped by ``torch.from_numpy``. Everything else and every result
    after the first one that needed the checks goes through :func:`_to_torch`
    (overlap checks against ``inputs`` and the earlier results, copy if needed).
    """
    outs: list[Any] = []
    seen: set[int] = set()
    avoid: list[np.ndarray | None] | None = None
    for k, o in enumerate(flat):
        if avoid is None and type(o) is np.ndarray:
            f = o.flags
            if f.c_contiguous and f.writeable:
                key = _fresh_buffer(o)
                if key is not None and key not in seen:
                    seen.add(key)
                    outs.append(_torch.from_numpy(o))
                    continue
        if avoid is None:
            avoid = [*inputs, *flat[:k]]
        outs.append(_to_torch(o, avoid))
    return outs


def _to_torch(x: Any, avoid: list[np.ndarray | None]) -> Any:
    """A CPU tensor holding ``x``; copied only if it is not a fresh C-contiguous writable array.

    Outputs must never alias the op's inputs or each other (torch.library's
    contract, and an in-place edit of the output must not change an input).
    """
    x = np.asarray(x)
    fresh = x.flags.c_contiguous and x.flags.writeable
    if not fresh or any(a is not None and np.may_share_memory(x, a) for a in avoid):
        x = np.array(x, order="C", copy=True)
    avoid.append(x)
    return _torch.from_numpy(x)


def _conj(x: np.ndarray) -> np.ndarray:
    return np.conj(x) if x.dtype.kind == "c" else x  # x is an ndarray: no np.iscomplexobj call


def _grads_to_torch(
    rec: _Record, grads: tuple, arrays: list[np.ndarray | None], avoid: list, need: Sequence[bool] | None = None
) -> list[Any]:
    """Core gradients (JAX convention) -> torch gradients, one per parameter.

    ``OpDef.backward`` checked their count; None where a parameter has no array.

    The gradients never alias ``avoid`` (the NumPy inputs and cotangents) or each other.
    ``need`` (one flag per parameter; default all): parameters whose gradient is
    not wanted get None without any conversion.
    """
    out: list[Any] = []
    where: list[int] = []
    flat: list[np.ndarray] = []
    for k, (arr, gi) in enumerate(zip(arrays, rec.grad_pos)):
        if arr is None or (need is not None and not need[k]):
            out.append(None)
            continue
        g = grads[gi] if gi is not None else None
        if g is None:
            out.append(_torch.zeros(arr.shape, dtype=_TORCH_OF.get(arr.dtype, _torch.float64)))
            continue
        g = _conj(np.asarray(g))
        if g.dtype != arr.dtype:
            g = g.real if (arr.dtype.kind != "c" and g.dtype.kind == "c") else g
            g = g.astype(arr.dtype)
        where.append(len(out))
        flat.append(g)
        out.append(None)
    for k, t in zip(where, _outputs_to_torch(flat, avoid)):
        out[k] = t
    return out


# ----------------------------------------------------------------------------- torch.library ops (traced path)
def _unsupported_device(name: str, t: Any) -> TypeError:
    return TypeError(
        f"ssmcore.torch.{name}: got a tensor on device '{t.device}'; only CPU and CUDA tensors are supported. "
        f"Move it with .cpu() or .cuda()"
    )


def _on_cuda(name: str, tensors: Any) -> bool:
    """False if every tensor is on the CPU, True if every one is on one CUDA device, else a TypeError.

    The all-CPU answer costs one ``is_cpu`` per tensor (what the CPU path always paid).
    """
    for t in tensors:
        if t is not None and not t.is_cpu:
            break
    else:
        return False
    present = [t for t in tensors if t is not None]
    for t in present:
        if not (t.is_cpu or t.is_cuda):
            raise _unsupported_device(name, t)
    devices = {t.device for t in present}
    if len(devices) > 1:
        raise TypeError(
            f"ssmcore.torch.{name}: got tensors on devices {sorted(map(str, devices))}; "
            f"pass all tensors on one device (CPU or one CUDA device)"
        )
    return True


def _define_library_ops(opdef: OpDef) -> tuple[Any, Any]:
    """Define ``ssmcore::<op>`` and ``ssmcore::<op>_bwd`` with CPU, CUDA(error), fake and vmap rules."""
    name = opdef.name
    _LIB.define(f"{name}(Tensor?[] arrays, str options) -> Tensor[]")
    _LIB.define(f"{name}_bwd(Tensor?[] arrays, Tensor[] cotangents, str options) -> Tensor[]")

    def fwd_cpu(arrays: list, options: str) -> list:
        np_arrays = [_to_numpy(a) for a in arrays]
        out = _core_call(opdef, opdef.fn, np_arrays, _decode_options(options))
        outs, _ = _flatten_output(out, name)
        return _outputs_to_torch(outs, np_arrays)

    def bwd_cpu(arrays: list, cotangents: list, options: str) -> list:
        from .registry import vjp

        np_arrays = [_to_numpy(a) for a in arrays]
        cts = [_conj(_to_numpy(c)) for c in cotangents]
        _, pullback = _core_call(opdef, lambda *a, **k: vjp(name, *a, **k), np_arrays, _decode_options(options))
        grads = pullback(_unflatten_output(cts))
        avoid = list(np_arrays) + cts
        return [g for g in _grads_to_torch(_RECORDS[name], grads, np_arrays, avoid) if g is not None]

    def fwd_cuda(arrays: list, options: str) -> list:
        _on_cuda(name, arrays)  # the dispatcher picked CUDA: refuse a CPU tensor among them
        return _cuda_forward(opdef, arrays, _decode_options(options))

    def bwd_cuda(arrays: list, cotangents: list, options: str) -> list:
        _on_cuda(name, [*arrays, *cotangents])
        return _cuda_backward(_RECORDS[name], arrays, cotangents, _decode_options(options))

    def fwd_fake(arrays: list, options: str) -> list:
        specs = [None if a is None else _specs.ArraySpec(tuple(a.shape), _np_dtype(a.dtype)) for a in arrays]
        out = _specs.output_spec(opdef, specs, _decode_options(options))
        outs = list(out) if isinstance(out, tuple) else [out]
        device = next((a.device for a in arrays if a is not None), None)  # results live where the inputs do
        return [_empty_of(s, device) for s in outs]

    def bwd_fake(arrays: list, cotangents: list, options: str) -> list:
        return [_torch.empty_like(a, memory_format=_torch.contiguous_format) for a in arrays if a is not None]

    _LIB.impl(name, fwd_cpu, "CPU")
    _LIB.impl(f"{name}_bwd", bwd_cpu, "CPU")
    _LIB.impl(name, fwd_cuda, "CUDA")
    _LIB.impl(f"{name}_bwd", bwd_cuda, "CUDA")
    _torch.library.register_fake(f"ssmcore::{name}", fwd_fake, lib=_LIB)
    _torch.library.register_fake(f"ssmcore::{name}_bwd", bwd_fake, lib=_LIB)
    fwd_op = getattr(_torch.ops.ssmcore, name).default
    bwd_op = getattr(_torch.ops.ssmcore, f"{name}_bwd").default
    _torch.library.register_vmap(f"ssmcore::{name}", _sequential_vmap(fwd_op), lib=_LIB)
    _torch.library.register_vmap(f"ssmcore::{name}_bwd", _sequential_vmap(bwd_op), lib=_LIB)
    return fwd_op, bwd_op


def _np_dtype(dt: Any) -> np.dtype:
    try:
        return _NP_OF[dt]
    except KeyError:
        raise TypeError(f"ssmcore.torch: unsupported tensor dtype {dt}") from None


def _empty_of(spec: _specs.ArraySpec, device: Any = None) -> Any:
    return _torch.empty(spec.shape, dtype=_TORCH_OF[np.dtype(spec.dtype)], device=device)


def _sequential_vmap(fn: Any) -> Callable[..., Any]:
    """A vmap rule that maps ``fn`` over the batch and stacks (the ops have no common batching rule)."""

    def pick(arg: Any, dim: Any, i: int) -> Any:
        if isinstance(arg, (list, tuple)):
            dims = dim if isinstance(dim, (list, tuple)) else [dim] * len(arg)
            return [pick(a, d, i) for a, d in zip(arg, dims)]
        return arg if dim is None or arg is None else arg.select(dim, i)

    def rule(info: Any, in_dims: tuple, *args: Any) -> tuple[list, list]:
        results = [fn(*(pick(a, d, i) for a, d in zip(args, in_dims))) for i in range(info.batch_size)]
        outs = [_torch.stack([r[k] for r in results]) for k in range(len(results[0]))] if results else []
        return outs, [0] * len(outs)

    return rule


class _TracedFunction(_torch.autograd.Function):
    """Forward/backward through the torch.library ops (compile and torch.func friendly)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(name: str, options: str, *arrays: Any) -> tuple:
        return tuple(_RECORDS[name].fwd_op(list(arrays), options))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        name, options, *arrays = inputs
        ctx.name, ctx.options = name, options
        ctx.present = tuple(a is not None for a in arrays)
        ctx.save_for_backward(*[a for a in arrays if a is not None])

    @staticmethod
    def backward(ctx: Any, *cotangents: Any) -> tuple:
        rec = _RECORDS[ctx.name]
        saved = iter(ctx.saved_tensors)
        arrays = [next(saved) if p else None for p in ctx.present]
        grads = iter(rec.bwd_op(arrays, list(cotangents), ctx.options))
        out = []
        for a, gi, need in zip(arrays, rec.grad_pos, ctx.needs_input_grad[2:]):
            g = next(grads) if a is not None else None
            out.append(g if (need and gi is not None) else None)
        return (None, None, *out)


# ----------------------------------------------------------------------------- eager path
class _EagerFunction(_torch.autograd.Function):
    """NumPy fwd with residuals kept on ctx, NumPy bwd: no recomputation, lowest overhead.

    ``values`` are the call's values in signature order (tensors at the
    positions ``where``, options elsewhere); ``tensors`` are those tensors
    again, as the arguments autograd tracks (only tensors: each argument of
    ``apply`` costs time).
    """

    @staticmethod
    def forward(ctx: Any, rec: _Record, values: list, where: tuple, *tensors: Any) -> tuple:
        vals = list(values)
        np_arrays: list[np.ndarray | None] = [None] * len(vals)  # one per parameter
        for i, t in zip(where, tensors):
            vals[i] = np_arrays[i] = _to_numpy(t)
        out, res = _call_in_order(rec.opdef.fwd, rec.names, rec.n_pos_fwd, vals)
        outs, _ = _flatten_output(out, rec.name)
        touts = _outputs_to_torch(outs, np_arrays)
        ctx.rec, ctx.res, ctx.np_arrays, ctx.where = rec, res, np_arrays, where
        # Saved only for autograd's in-place-modification check: the residuals may view these buffers.
        ctx.save_for_backward(*tensors, *touts)
        return tuple(touts)

    @staticmethod
    def backward(ctx: Any, *cotangents: Any) -> tuple:
        if _torch.is_grad_enabled():  # backward(create_graph=True): a second backward must raise
            return _eager_backward_once(ctx, *cotangents)
        # Grad mode is off in a plain backward: skip once_differentiable's no_grad context and checks.
        return _eager_backward(ctx, *cotangents)


def _eager_backward(ctx: Any, *cotangents: Any) -> tuple:
    """The backward of :class:`_EagerFunction`: the core's ``bwd`` on the kept residuals."""
    ctx.saved_tensors  # noqa: B018 - raises if an input or output was modified in place
    rec = ctx.rec
    cts = [_conj(_to_numpy(c)) for c in cotangents]
    key = (ctx.where, ctx.needs_input_grad)
    wanted = rec.wanted.get(key)
    if wanted is None:
        wanted = rec.wanted[key] = _wanted_gradients(rec, ctx.where, ctx.needs_input_grad[3:])
    need, needs = wanted
    grads = rec.opdef.backward(ctx.res, _unflatten_output(cts), needs)
    tgrads = _grads_to_torch(rec, grads, ctx.np_arrays, [*ctx.np_arrays, *cts], need)
    return (None, None, None, *[tgrads[i] for i in ctx.where])


def _wanted_gradients(rec: _Record, where: tuple, needs_input_grad: tuple) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
    """Which gradients a backward computes: one flag per parameter, and one per op input (``needs``)."""
    need = [False] * len(rec.names)
    needs = [False] * len(rec.opdef.inputs)  # the core's backward skips the others
    for i, n in zip(where, needs_input_grad):
        gi = rec.grad_pos[i]
        if n and gi is not None:
            need[i] = needs[gi] = True
    return tuple(need), tuple(needs)  # cached per pattern and shared by calls: immutable


_eager_backward_once = _once_differentiable(_eager_backward)


def _make_eager_apply() -> Callable[..., Any]:
    """``_EagerFunction.apply`` minus the generic parts that the eager path has already decided.

    ``torch.autograd.Function.apply`` first checks for functorch transforms
    (``_call`` took the traced route if one is active) and unwraps dead
    functorch wrappers with a pytree map over all arguments; here the dead
    wrappers are unwrapped tensor by tensor and the C ``apply`` is called
    directly. Falls back to the public ``apply`` if this torch lacks the hooks.
    """
    unwrap = getattr(_torch._C._functorch, "unwrap_if_dead", None)
    try:
        base_apply = super(_torch.autograd.Function, _EagerFunction).apply
    except AttributeError:  # pragma: no cover - other torch versions
        base_apply = None
    if unwrap is None or base_apply is None:  # pragma: no cover
        return _EagerFunction.apply

    def apply(rec: _Record, values: list, where: tuple, *tensors: Any) -> Any:
        return base_apply(rec, values, where, *[unwrap(t) for t in tensors])

    return apply


_eager_apply = _make_eager_apply()


# ----------------------------------------------------------------------------- CUDA tensors (CuPy backend)
class _CupyBridge:
    """How CUDA tensors meet the core: CuPy arrays through DLPack, on torch's current stream.

    One instance, :data:`_BRIDGE`, serves every CUDA call; CuPy is imported on the
    first CUDA call only, so CPU users never import it. The CPU tests swap in a
    NumPy stand-in with the same four methods to exercise the CUDA path's logic
    (conversion, gradients, aliasing) without a device.
    """

    def __init__(self) -> None:
        self._cp: Any = None
        self._streams: dict[tuple[int, int], Any] = {}
        self._allocators: dict[int, Callable[[int], Any]] = {}

    @property
    def xp(self) -> Any:
        if self._cp is None:
            try:
                import cupy
            except ImportError as exc:
                raise ImportError(
                    "ssmcore.torch: CUDA tensors run on ssmcore's CuPy backend, which needs CuPy; "
                    'install the extra matching your CUDA major: pip install "ssmcore[cuda13]" (or "ssmcore[cuda12]")'
                ) from exc
            self._cp = cupy
        return self._cp

    def to_core(self, t: Any) -> Any:
        """A zero-copy CuPy view of CUDA tensor ``t`` (lazy conj/neg views are resolved first)."""
        if t.requires_grad:
            t = t.detach()
        if t.is_conj():
            t = t.resolve_conj()
        if t.is_neg():
            t = t.resolve_neg()
        return self.xp.from_dlpack(t)

    def to_torch(self, x: Any) -> Any:
        """A CUDA tensor viewing CuPy array ``x`` (zero-copy)."""
        return _torch.from_dlpack(x)

    def scope(self, device: Any) -> Any:
        """A context with CuPy's current device, stream and allocator set to torch's for ``device``.

        Kernels launch on CuPy's current stream, so they are ordered with torch's
        work on the same stream and need no synchronisation; inside the context
        the DLPack exchanges need none either (producer and consumer stream agree).
        Memory the core allocates (outputs, workspace) comes from torch's caching
        allocator (:func:`_torch_allocator`), not from CuPy's pool.
        """
        cp = self.xp
        ts = _torch.cuda.current_stream(device)
        alloc = self._allocators.get(ts.device_index)
        if alloc is None:
            alloc = self._allocators[ts.device_index] = _torch_allocator(cp, _torch.device("cuda", ts.device_index))
        key = (ts.device_index, ts.cuda_stream)
        stream = self._streams.get(key)
        if stream is None:
            from_external = getattr(cp.cuda.Stream, "from_external", None)
            if from_external is not None and hasattr(ts, "__cuda_stream__"):  # cupy >= 14, torch >= 2.10
                stream = from_external(ts)
            else:  # ExternalStream is deprecated in cupy 14 but is what older versions have
                stream = cp.cuda.ExternalStream(ts.cuda_stream, ts.device_index)
            if len(self._streams) > 64:  # streams come from torch's pools: a handful in practice
                self._streams.clear()
            self._streams[key] = stream
        return _CudaScope(cp.cuda.Device(ts.device_index), stream, cp.cuda.using_allocator(alloc))

    def may_share_memory(self, x: Any, y: Any) -> bool:
        return bool(self.xp.may_share_memory(x, y))


def _torch_allocator(cp: Any, device: Any) -> Callable[[int], Any]:
    """A CuPy allocator (``size -> MemoryPointer``) drawing from torch's caching allocator on ``device``.

    Why: with CuPy's own pool, the memory of every result a torch user keeps
    would sit in a second cache that torch cannot see or reuse
    (``torch.cuda.memory_allocated`` would not count it, and freed blocks would
    stay reserved by CuPy while torch runs out of memory). Each block is a uint8
    tensor allocated on torch's current stream; the CuPy memory keeps it alive,
    and the results' tensors keep the CuPy memory alive through DLPack.
    """
    index = device.index if device.index is not None else -1

    def alloc(size: int) -> Any:
        block = _torch.empty((size,), dtype=_torch.uint8, device=device)
        return cp.cuda.MemoryPointer(cp.cuda.UnownedMemory(block.data_ptr(), size, block, index), 0)

    return alloc


class _CudaScope:
    """``with device, stream, allocator:`` as one context manager."""

    __slots__ = ("device", "stream", "allocator")

    def __init__(self, device: Any, stream: Any, allocator: Any) -> None:
        self.device, self.stream, self.allocator = device, stream, allocator

    def __enter__(self) -> None:
        self.device.__enter__()
        try:
            self.stream.__enter__()
            try:
                self.allocator.__enter__()
            except BaseException:
                self.stream.__exit__(None, None, None)
                raise
        except BaseException:
            self.device.__exit__(None, None, None)
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            try:
                self.allocator.__exit__(*exc)
            finally:
                self.stream.__exit__(*exc)
        finally:
            self.device.__exit__(*exc)


_BRIDGE: Any = _CupyBridge()


def _is_core_array(x: Any) -> bool:
    return hasattr(x, "__dlpack__") and hasattr(x, "dtype") and hasattr(x, "shape")


def _cuda_outputs(flat: list, inputs: list) -> list[Any]:
    """The core's CuPy results as CUDA tensors that alias neither ``inputs`` nor each other.

    A result is wrapped as it is when it is C-contiguous and shares no memory
    with an input or an earlier result; otherwise it is copied on the device
    first (never through the host). C order also keeps ``torch.from_dlpack``
    away from negative strides.
    """
    br = _BRIDGE
    xp = br.xp
    done: list[Any] = []
    outs: list[Any] = []
    for o in flat:
        if not _is_core_array(o):  # a Python or NumPy scalar from a core function
            o = xp.asarray(o)
        if not o.flags.c_contiguous or any(
            x is not None and br.may_share_memory(o, x) for x in (*inputs, *done)
        ):
            o = xp.array(o, order="C", copy=True)
        done.append(o)
        outs.append(br.to_torch(o))
    return outs


def _cuda_grads(
    rec: _Record, grads: tuple, arrays: list, avoid: list, device: Any, need: Sequence[bool] | None = None
) -> list[Any]:
    """:func:`_grads_to_torch` for CuPy gradients: torch's conjugate convention, input dtypes, on ``device``."""
    xp = _BRIDGE.xp
    out: list[Any] = []
    where: list[int] = []
    flat: list[Any] = []
    for k, (arr, gi) in enumerate(zip(arrays, rec.grad_pos)):
        if arr is None or (need is not None and not need[k]):
            out.append(None)
            continue
        g = grads[gi] if gi is not None else None
        if g is None:
            out.append(_torch.zeros(arr.shape, dtype=_TORCH_OF.get(np.dtype(arr.dtype), _torch.float64), device=device))
            continue
        g = xp.asarray(g)
        if g.dtype.kind == "c":
            g = xp.conj(g)
        if g.dtype != arr.dtype:
            g = g.real if (np.dtype(arr.dtype).kind != "c" and g.dtype.kind == "c") else g
            g = g.astype(arr.dtype)
        where.append(len(out))
        flat.append(g)
        out.append(None)
    for k, t in zip(where, _cuda_outputs(flat, avoid)):
        out[k] = t
    return out


def _cuda_conj(x: Any) -> Any:
    return _BRIDGE.xp.conj(x) if x.dtype.kind == "c" else x


def _device_of(tensors: Any) -> Any:
    return next(t.device for t in tensors if t is not None)


def _cuda_forward(opdef: OpDef, arrays: list, options: dict) -> list:
    """The traced path's CUDA forward: the public function on CuPy views, results as tensors."""
    with _BRIDGE.scope(_device_of(arrays)):
        xs = [None if a is None else _BRIDGE.to_core(a) for a in arrays]
        out = _core_call(opdef, opdef.fn, xs, options)
        outs, _ = _flatten_output(out, opdef.name)
        return _cuda_outputs(outs, xs)


def _cuda_backward(rec: _Record, arrays: list, cotangents: list, options: dict) -> list:
    """The traced path's CUDA backward: forward again for the residuals, then the core's backward."""
    opdef = rec.opdef
    device = _device_of(arrays)
    with _BRIDGE.scope(device):
        xs = [None if a is None else _BRIDGE.to_core(a) for a in arrays]
        cts = [_cuda_conj(_BRIDGE.to_core(c)) for c in cotangents]
        _, res = _core_call(opdef, opdef.fwd, xs, options)
        grads = opdef.backward(res, _unflatten_output(cts))
        return [g for g in _cuda_grads(rec, grads, xs, [*xs, *cts], device) if g is not None]


class _CudaFunction(_torch.autograd.Function):
    """The eager autograd path for CUDA tensors: the core's ``fwd``/``bwd`` on CuPy views.

    Same contract as :class:`_EagerFunction` (residuals kept on ctx, no
    recomputation); CuPy's stream is torch's current stream in the forward and
    again in the backward (autograd runs a backward on the forward's stream).
    """

    @staticmethod
    def forward(ctx: Any, rec: _Record, values: list, where: tuple, *tensors: Any) -> tuple:
        device = _device_of(tensors)
        vals = list(values)
        xs: list[Any] = [None] * len(vals)
        with _BRIDGE.scope(device):
            for i, t in zip(where, tensors):
                vals[i] = xs[i] = _BRIDGE.to_core(t)
            out, res = _call_in_order(rec.opdef.fwd, rec.names, rec.n_pos_fwd, vals)
            outs, _ = _flatten_output(out, rec.name)
            touts = _cuda_outputs(outs, xs)
        ctx.rec, ctx.res, ctx.xs, ctx.where, ctx.device = rec, res, xs, where, device
        ctx.save_for_backward(*tensors, *touts)  # for autograd's in-place-modification check
        return tuple(touts)

    @staticmethod
    @_once_differentiable
    def backward(ctx: Any, *cotangents: Any) -> tuple:
        ctx.saved_tensors  # noqa: B018 - raises if an input or output was modified in place
        rec = ctx.rec
        need, needs = _wanted_gradients(rec, ctx.where, ctx.needs_input_grad[3:])
        with _BRIDGE.scope(ctx.device):
            cts = [_cuda_conj(_BRIDGE.to_core(c)) for c in cotangents]
            grads = rec.opdef.backward(ctx.res, _unflatten_output(cts), needs)
            tgrads = _cuda_grads(rec, grads, ctx.xs, [*ctx.xs, *cts], ctx.device, need)
        return (None, None, None, *[tgrads[i] for i in ctx.where])


def _cuda_call(rec: _Record, vals: list, where: tuple, grad: bool) -> list:
    """An eager call on CUDA tensors (``vals`` in signature order, tensors at ``where``)."""
    if grad:
        return list(_CudaFunction.apply(rec, vals, where, *[vals[i] for i in where]))
    vals = list(vals)
    with _BRIDGE.scope(vals[where[0]].device):
        xs = []
        for i in where:
            vals[i] = _BRIDGE.to_core(vals[i])
            xs.append(vals[i])
        out = _call_in_order(rec.opdef.fn, rec.names, rec.n_pos_fn, vals)
        flat, _ = _flatten_output(out, rec.name)
        return _cuda_outputs(flat, xs)


# ----------------------------------------------------------------------------- the generic call
def _is_array(v: Any) -> bool:
    return isinstance(v, (_torch.Tensor, np.ndarray))


def _functorch_active() -> bool:
    return _torch._C._functorch.peek_interpreter_stack() is not None


def _call(rec: _Record, values: tuple) -> Any:
    """One call of op ``rec`` with its values in signature order (from the generated wrapper)."""
    vals = list(values)
    where: list[int] = []  # positions of the array values
    plain = True  # only plain CPU tensors (no subclasses): the eager path is allowed
    half = False  # some floating input is a half type: the results may be cast back
    grad = False  # some tensor requires a gradient
    for i, v in enumerate(vals):
        tv = type(v)
        if tv is not _TENSOR and tv is not _PARAMETER:
            if isinstance(v, np.ndarray):
                v = vals[i] = _torch.from_numpy(np.ascontiguousarray(v))
            elif isinstance(v, _TENSOR):
                plain = False
            else:
                continue
        where.append(i)
        if v.dtype in _UPCAST:
            half = True
        if v.requires_grad:
            grad = True
    promoted = None  # torch's promotion of the floating inputs, to cast half-precision results back
    if half:  # without a half type among the inputs the promotion cannot be one: skip it
        like = _OUTPUT_LIKE.get(rec.name)
        if like is not None and isinstance(vals[rec.names.index(like)], _TENSOR):
            dt = vals[rec.names.index(like)].dtype
            if dt in _UPCAST:
                promoted = (dt,)  # the first output only (see _cast_back)
        for i in where:
            dt = vals[i].dtype
            if (dt.is_floating_point or dt.is_complex) and not isinstance(promoted, tuple):
                promoted = dt if promoted is None else _torch.promote_types(promoted, dt)
            if dt.is_floating_point or dt.is_complex:
                if dt in _UPCAST:
                    vals[i] = vals[i].to(_UPCAST[dt])
    if not plain or _torch.compiler.is_compiling() or _functorch_active():
        arrays, options = _split_values(rec.names, vals, _is_array)
        outs = list(_TracedFunction.apply(rec.name, _encode_options(rec.opdef, options), *arrays))
    elif grad and _torch.is_grad_enabled():
        tensors = [vals[i] for i in where]
        if _on_cuda(rec.name, tensors):
            outs = _cuda_call(rec, vals, tuple(where), True)
        else:
            outs = list(_eager_apply(rec, vals, tuple(where), *tensors))
    else:
        try:
            for i in where:
                vals[i] = _to_numpy(vals[i])
        except TypeError:  # numpy() refuses tensors on other devices
            # Mixed or unsupported devices raise here; all on one CUDA device means the first
            # tensor failed, so every vals[i] is still a tensor.
            # Tensors converted before the failure were CPU ones: stand in an empty CPU tensor for each.
            seen = [_CPU_PROBE if isinstance(vals[j], np.ndarray) else vals[j] for j in where]
            if not _on_cuda(rec.name, seen):
                raise
            return _finish(_cuda_call(rec, vals, tuple(where), False), promoted)
        out = _call_in_order(rec.opdef.fn, rec.names, rec.n_pos_fn, vals)
        flat, _ = _flatten_output(out, rec.name)
        outs = _outputs_to_torch(flat, [vals[i] for i in where])
    return _finish(outs, promoted)


def _finish(outs: list, promoted: Any) -> Any:
    """Cast half-precision results back and restore the output structure.

    ``promoted`` is the inputs' promoted dtype (every float32/complex64 result goes back to
    it when it is a half type), or a 1-tuple ``(dtype,)`` for the ops of
    :data:`_OUTPUT_LIKE` (only the first output goes back to that input's dtype).
    """
    if isinstance(promoted, tuple):
        (dt,) = promoted
        if outs and outs[0].dtype == _UPCAST[dt]:
            outs = [outs[0].to(dt), *outs[1:]]
    elif promoted in _UPCAST:
        outs = [o.to(promoted) if o.dtype == _UPCAST[promoted] else o for o in outs]
    return _unflatten_output(outs)
