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
  is a half type.
* Python scalars, strings, booleans and None pass through unchanged, as
  constants; they get no gradient. NumPy arrays are converted to tensors.
* CUDA tensors raise a TypeError: there is no GPU backend yet.
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
_TENSOR = _torch.Tensor
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
    """Core gradients (JAX convention; ``OpDef.backward`` checked their count) -> torch
    gradients, one per parameter (None if no array).

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
def _check_cpu(name: str, tensors: Any) -> None:
    for t in tensors:
        if t is not None and not t.is_cpu:
            raise TypeError(
                f"ssmcore.torch.{name}: got a tensor on device '{t.device}'; only CPU tensors are supported "
                f"(there is no GPU backend yet). Move it with .cpu()"
            )


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

    def on_cuda(arrays: list, *rest: Any) -> list:
        _check_cpu(name, [a for a in arrays if a is not None])
        return []

    def fwd_fake(arrays: list, options: str) -> list:
        specs = [None if a is None else _specs.ArraySpec(tuple(a.shape), _np_dtype(a.dtype)) for a in arrays]
        out = _specs.output_spec(opdef, specs, _decode_options(options))
        outs = list(out) if isinstance(out, tuple) else [out]
        return [_empty_of(s) for s in outs]

    def bwd_fake(arrays: list, cotangents: list, options: str) -> list:
        return [_torch.empty_like(a, memory_format=_torch.contiguous_format) for a in arrays if a is not None]

    _LIB.impl(name, fwd_cpu, "CPU")
    _LIB.impl(f"{name}_bwd", bwd_cpu, "CPU")
    _LIB.impl(name, on_cuda, "CUDA")
    _LIB.impl(f"{name}_bwd", on_cuda, "CUDA")
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


def _empty_of(spec: _specs.ArraySpec) -> Any:
    return _torch.empty(spec.shape, dtype=_TORCH_OF[np.dtype(spec.dtype)])


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
        for i in where:
            dt = vals[i].dtype
            if dt.is_floating_point or dt.is_complex:
                promoted = dt if promoted is None else _torch.promote_types(promoted, dt)
                if dt in _UPCAST:
                    vals[i] = vals[i].to(_UPCAST[dt])
    if not plain or _torch.compiler.is_compiling() or _functorch_active():
        arrays, options = _split_values(rec.names, vals, _is_array)
        outs = list(_TracedFunction.apply(rec.name, _encode_options(rec.opdef, options), *arrays))
    elif grad and _torch.is_grad_enabled():
        tensors = [vals[i] for i in where]
        _check_cpu(rec.name, tensors)
        outs = list(_eager_apply(rec, vals, tuple(where), *tensors))
    else:
        try:
            for i in where:
                vals[i] = _to_numpy(vals[i])
        except TypeError:  # numpy() refuses tensors on other devices: say so in ssmcore's words
            _check_cpu(rec.name, [values[i] for i in where])
            raise
        out = _call_in_order(rec.opdef.fn, rec.names, rec.n_pos_fn, vals)
        flat, _ = _flatten_output(out, rec.name)
        outs = _outputs_to_torch(flat, [vals[i] for i in where])
    if promoted in _UPCAST:
        outs = [o.to(promoted) if o.dtype == _UPCAST[promoted] else o for o in outs]
    return _unflatten_output(outs)
