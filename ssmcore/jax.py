"""JAX adapter: every registered ssmcore op as a differentiable JAX function.

``ssmcore.jax.<op>`` has the same signature, options and numerics as the NumPy
function ``ssmcore.<op>``; it works under ``jax.jit``, ``jax.grad`` and
``jax.vmap``. Nothing is written per op: the functions are generated on first
attribute access from the op registry (:mod:`ssmcore.registry`).

How a call runs: one ``jax.custom_vjp`` per (op, options, which inputs are
arrays), cached. Its forward is a host call to the NumPy/Numba function, with
output shapes and dtypes from :mod:`ssmcore.adapters.specs`. Its backward is a
second host call that runs the op's ``fwd`` again (a traced JAX program can
only carry arrays, not the core's residual objects) and then its ``bwd``. The
core's complex convention is JAX's own (transpose of the linearisation, no
conjugation), so gradients pass through unchanged.

* Calls go through :func:`ssmcore.adapters.jax_cuda.device_call`, lowered per
  platform. On CPU: an XLA FFI custom call into a Python handler that hands the
  op zero-copy NumPy views of XLA's buffers and copies the results back, about
  10 us per call on top of the op itself (:mod:`ssmcore.adapters.jax_ffi`;
  ``jax.pure_callback``, its fallback, costs ~80 us and copies the inputs). On
  CUDA, for every op whose capability table lists ``"cupy"``: an XLA FFI call
  that runs the same core functions on CuPy views of XLA's device buffers, on
  XLA's stream, with no host round trip (:mod:`ssmcore.adapters.jax_cuda`; not
  yet run on a GPU). GPU arrays of ops without a CuPy kernel raise
  :class:`ssmcore.dispatch.UnsupportedBackendError` unless
  ``SSMCORE_JAX_GPU_FALLBACK=host`` sends them through the host (warned once).
  ``pure_callback`` is used if an FFI self-test fails at first use (with one
  warning), or when ``SSMCORE_JAX_CALLBACK=pure_callback`` is set.
* ``vmap``: calls use ``vmap_method="expand_dims"``; ops in :data:`FOLDABLE`
  fold the batch into their leading axes when every argument is batched, the
  others loop over the batch inside one call, so any op batches correctly
  whatever its own broadcasting rules.
* Shape errors are raised at trace time with the core's message naming the op
  and the argument (:func:`ssmcore.adapters.specs.spec_error`).
* float16/bfloat16 inputs are upcast to float32 and float results cast back.
* Python scalars, strings, booleans and None pass through unchanged as
  constants (no gradient). Integer arrays are carried as constant inputs.
* Per-call cost is measured in ``benchmarks/compare_adapters.py`` (CPU) and
  ``benchmarks/compare_gpu.py --only jax`` (GPU).
* With ``jax_enable_x64`` off (JAX's default), float64 results come back as
  float32, like every other JAX computation.

Examples
--------
>>> import jax, jax.numpy as jnp, ssmcore.jax as sj
>>> A = jnp.array([[0.5]]); B = jnp.ones((1, 1)); C = jnp.ones((1, 1))
>>> sj.lti_simulate(A, B, C, None, jnp.ones((1, 3))).tolist()
[[1.0, 1.5, 1.75]]
>>> loss = lambda A: sj.lti_simulate(A, B, C, None, jnp.ones((1, 3))).sum()
>>> jax.jit(jax.grad(loss))(A).tolist()   # d/dA of 1 + (1 + A) + (1 + A + A^2) at A = 0.5
[[3.0]]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

import numpy as np

try:
    import jax as _jax
    import jax.numpy as _jnp
except ModuleNotFoundError as _exc:  # pragma: no cover - exercised only without jax
    raise ImportError(
        'ssmcore.jax needs JAX, which is not installed; install the extra: pip install "ssmcore[jax]"'
    ) from _exc

from .adapters import jax_cuda as _cuda, specs as _specs
from .adapters.plan import (
    bind_options as _bind_options,
    decode_options as _decode_options,
    encode_options as _encode_options,
    flatten_output as _flatten_output,
    grad_positions as _grad_positions,
    load_all_ops as _load_all_ops,
    load_op as _load_op,
    make_wrapper as _make_wrapper,
    split_values as _split_values,
    unflatten_output as _unflatten_output,
)
from .dispatch import UnsupportedBackendError, capabilities as _capabilities
from .registry import OpDef, list_ops, vjp as _vjp

__all__ = ["list_ops", "op"]

_UPCAST = {np.dtype(_jnp.float16): np.dtype(np.float32), np.dtype(_jnp.bfloat16): np.dtype(np.float32)}


class _Record:
    __slots__ = ("opdef", "names", "grad_pos", "fn", "gpu", "unsupported")

    def __init__(self, opdef: OpDef) -> None:
        self.opdef = opdef
        self.names = tuple(opdef.signature.parameters)
        self.grad_pos = _grad_positions(opdef)
        self.fn: Callable[..., Any] | None = None
        # The capability table decides which ops run GPU arrays on their CuPy kernels.
        self.gpu = "cupy" in _capabilities().get(opdef.name, opdef.backends)
        self.unsupported = partial(_unsupported_error, opdef.name)


def _unsupported_error(name: str) -> UnsupportedBackendError:
    """The uniform error for a GPU array given to an op without a CuPy kernel."""
    have = _capabilities().get(name, ())
    return UnsupportedBackendError(
        f"ssmcore.jax.{name}: no CuPy kernel yet, so it cannot run on GPU arrays; it runs on "
        f"{', '.join(have) or 'no backend'}. Move the inputs to the CPU "
        f"(jax.device_put(x, jax.devices('cpu')[0])), or set {_cuda.FALLBACK_ENV_VAR}=host to run it through "
        f"the host (a device-host round trip) (docs/backends.md lists what runs where)"
    )


_RECORDS: dict[str, _Record] = {}


def op(name: str) -> Callable[..., Any]:
    """The JAX version of op ``name`` (same as ``getattr(ssmcore.jax, name)``)."""
    rec = _RECORDS.get(name)
    if rec is None:
        rec = _RECORDS[name] = _Record(_load_op(name, "jax"))
        rec.fn = _make_wrapper(rec.opdef, _call, "jax")
    return rec.fn


def __getattr__(name: str) -> Callable[..., Any]:
    if name.startswith("__"):
        raise AttributeError(name)
    fn = op(name)
    globals()[name] = fn  # later lookups skip __getattr__
    return fn


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(_load_all_ops()))  # the public names: helpers and every op


# ----------------------------------------------------------------------------- host side
def _canonical(dtype: Any) -> np.dtype:
    return np.dtype(_jax.dtypes.canonicalize_dtype(dtype))


def _as_result(xp: Any, o: Any) -> Any:
    """A core result as an array of JAX's canonical dtype (float64 -> float32 without x64)."""
    o = xp.asarray(o)
    return o.astype(_canonical(o.dtype), copy=False)


def _full(present: tuple[bool, ...], arrays: tuple) -> list[Any]:
    """Re-insert None for the parameters that are options."""
    it = iter(arrays)
    return [next(it) if p else None for p in present]


def _differentiable(rec: _Record, present: tuple[bool, ...], dtypes: list[np.dtype]) -> list[bool]:
    """Per present array, whether it gets a gradient (a listed input of inexact dtype)."""
    pos = [gi for gi, p in zip(rec.grad_pos, present) if p]
    return [gi is not None and dt.kind in "fc" for gi, dt in zip(pos, dtypes)]


def _namespace(arrays: tuple) -> Any:
    """NumPy, or CuPy for the CuPy views the CUDA handler passes (CuPy is never imported here)."""
    if arrays and type(arrays[0]).__module__.partition(".")[0] == "cupy":
        return sys.modules["cupy"]
    return np


def _batched(host: Callable[..., tuple], ranks: tuple[int, ...], device: bool = False) -> Callable[..., tuple]:
    """Wrap a host (or device) function so it also takes ``vmap``-ed arguments (``vmap_method="expand_dims"``).

    Under ``jax.vmap`` every argument arrives with the same number of extra
    leading axes (size 1 where that argument is not batched). The op is called
    once per batch element inside this *one* call -- far cheaper than one
    call per element -- and the results are stacked. Ops need no batching
    rule of their own, whatever their broadcasting semantics. On the GPU
    (``device=True``, CuPy arrays) the per-element calls only enqueue kernels on
    XLA's stream; see :func:`_fold` for the batch folded into one call.
    """

    def run(*arrays: Any) -> tuple:
        if not device:
            # The FFI path hands writable zero-copy NumPy views of XLA's buffers: used as they are.
            # The pure_callback fallback hands CPU jax.Arrays, whose NumPy views are *read-only*, and
            # Numba compiles (and caches) a separate specialisation of every kernel for read-only
            # arrays; one copy of those inputs is cheaper than doubling every kernel's compile time.
            arrays = tuple(a if isinstance(a, np.ndarray) and a.flags.writeable else np.array(a, copy=True)
                           for a in arrays)
        extra = arrays[0].ndim - ranks[0] if arrays else 0
        if extra == 0:
            return host(*arrays)
        folded = _fold(host, arrays, ranks, extra)
        if folded is not None:
            return folded
        xp = _namespace(arrays)
        batch = np.broadcast_shapes(*(a.shape[:extra] for a in arrays))
        results = []
        for idx in np.ndindex(*batch):
            item = tuple(a[tuple(i if n > 1 else 0 for i, n in zip(idx, a.shape[:extra]))] for a in arrays)
            results.append(host(*item))
        if not results:  # an empty batch: shapes only
            raise NotImplementedError("ssmcore.jax: vmap over an empty batch is not supported")
        return tuple(xp.stack([r[k] for r in results]).reshape(batch + results[0][k].shape)
                     for k in range(len(results[0])))

    return run


def _fold(host: Callable[..., tuple], arrays: tuple, ranks: tuple[int, ...], extra: int) -> tuple | None:
    """The batching rule that folds the ``vmap`` axes into the op's own leading axes, when that is exact.

    It applies when every argument is batched along the full batch (no size-1
    stand-ins) and has the same per-example rank as the first one: then the
    op's broadcasting of leading axes lines the batch axes up with each other,
    and one call on the stacked arrays is the per-element calls stacked. Ops
    opt in by name (:data:`FOLDABLE`), because only an op's semantics, not its
    shapes, say that its leading axes are independent batch axes.
    """
    name = getattr(host, "op_name", None)
    if name not in FOLDABLE or len(set(ranks)) != 1:
        return None
    batch = arrays[0].shape[:extra]
    if any(a.shape[:extra] != batch for a in arrays) or 0 in batch:
        return None
    n = int(np.prod(batch))
    flat = tuple(a.reshape((n,) + a.shape[extra:]) if extra > 1 else a for a in arrays)
    out = host(*flat)
    return tuple(o.reshape(batch + o.shape[1:]) for o in out)


#: Ops whose leading axes are independent batch axes of every input and output (same rank for
#: all inputs): ``vmap`` folds into them (:func:`_fold`) instead of looping.
FOLDABLE = frozenset({"linear_scan"})


@lru_cache(maxsize=1024)
def _custom_fn(name: str, encoded: str, present: tuple[bool, ...]) -> Callable[..., Any]:
    """The custom_vjp function of op ``name`` for these options and this array/option split."""
    rec = _RECORDS[name]
    opdef = rec.opdef
    options = _decode_options(encoded)

    run_fn = _bind_options(opdef, opdef.fn, present, options)
    run_vjp = _bind_options(opdef, partial(_vjp, name), present, options)

    def host_fwd(*arrays: Any) -> tuple:
        # NumPy views on CPU, CuPy views of XLA's device buffers on the GPU: the core dispatches on them.
        xp = _namespace(arrays)
        out = run_fn(*arrays)
        outs, _ = _flatten_output(out, name)
        return tuple(_as_result(xp, o) for o in outs)

    host_fwd.op_name = name

    def out_structs(arrays: tuple) -> tuple:
        specs = _full(present, tuple(_specs.ArraySpec(tuple(a.shape), np.dtype(a.dtype)) for a in arrays))
        out = _specs.output_spec(opdef, specs, options)
        outs = out if isinstance(out, tuple) else (out,)
        return tuple(_jax.ShapeDtypeStruct(tuple(s.shape), _canonical(s.dtype)) for s in outs)

    pos = [gi for gi, p in zip(rec.grad_pos, present) if p]
    hosts: dict[tuple, Callable[..., tuple]] = {}

    def host(
        kind: str, ranks: tuple[int, ...], diff: tuple[bool, ...] = (), device: bool = False
    ) -> Callable[..., tuple]:
        """One host (or device) function per (direction, ranks, differentiable inputs).

        Reused by every trace: the FFI tables register each distinct function once for the life of
        the process.
        """
        key = (kind, ranks, diff, device)
        fn = hosts.get(key)
        if fn is None:
            fn = hosts[key] = _batched(host_fwd if kind == "fwd" else make_host_bwd(diff), ranks, device)
        return fn

    def make_host_bwd(diff: tuple[bool, ...]) -> Callable[..., tuple]:
        n = len(diff)
        needs = [False] * len(opdef.inputs)  # per op input: integer (constant) inputs get no gradient work
        for gi, d in zip(pos, diff):
            if d and gi is not None:
                needs[gi] = True
        needs = tuple(needs)

        def host_bwd(*flat: Any) -> tuple:
            xp = _namespace(flat)
            args, cts = flat[:n], flat[n:]
            _, pullback = run_vjp(*args)
            grads = pullback(_unflatten_output(list(cts)), needs=needs)
            result = []
            for a, gi, d in zip(args, pos, diff):
                if not d:
                    continue
                g = grads[gi]
                g = xp.zeros(a.shape, a.dtype) if g is None else xp.asarray(g)
                if a.dtype.kind != "c" and g.dtype.kind == "c":
                    g = g.real
                result.append(g.astype(a.dtype, copy=False).reshape(a.shape))
            return tuple(result)

        host_bwd.op_name = name
        return host_bwd

    def call(kind: str, structs: tuple, arrays: tuple, diff: tuple[bool, ...] = ()) -> Any:
        ranks = tuple(a.ndim for a in arrays)  # per-example ranks, also under vmap
        device = host(kind, ranks, diff, True) if rec.gpu else None
        return _cuda.device_call(host(kind, ranks, diff), device, rec.unsupported, structs, *arrays,
                                 name=name, vmap_method="expand_dims")

    @_jax.custom_vjp
    def f(*arrays: Any) -> tuple:
        return call("fwd", out_structs(arrays), arrays)

    def f_fwd(*arrays: Any) -> tuple:
        return f(*arrays), arrays

    def f_bwd(arrays: tuple, cotangents: tuple) -> tuple:
        diff = tuple(_differentiable(rec, present, [np.dtype(a.dtype) for a in arrays]))
        structs = tuple(_jax.ShapeDtypeStruct(a.shape, a.dtype) for a, d in zip(arrays, diff) if d)
        grads = iter(call("bwd", structs, (*arrays, *cotangents), diff))
        return tuple(next(grads) if d else None for d in diff)

    f.defvjp(f_fwd, f_bwd)
    # Eager calls of a bare custom_vjp re-trace it every time (~30 ms); jit caches the trace per
    # input shape/dtype. Inside a user's jit this is just a nested call.
    return _jax.jit(f)


# ----------------------------------------------------------------------------- the generic call
def _is_array(v: Any) -> bool:
    return isinstance(v, (_jax.Array, np.ndarray))


_TRACER = _jax.core.Tracer


def _refuse_gpu_arrays(rec: _Record, arrays: list) -> None:
    """Raise the uniform error now, not from the compiled program.

    For concrete GPU inputs of an op without a CuPy kernel. Under ``jit`` the inputs are tracers and
    the program raises it when it runs.
    """
    for a in arrays:
        if not isinstance(a, _TRACER) and any(d.platform != "cpu" for d in a.devices()):
            raise rec.unsupported()


def _call(opdef: OpDef, values: tuple) -> Any:
    rec = _RECORDS[opdef.name]
    arrays, options = _split_values(rec.names, values, _is_array)
    present = tuple(a is not None for a in arrays)
    ins = []
    half = False  # some input is a half type: the results may be cast back
    for a in arrays:
        if a is None:
            continue
        if type(a) is np.ndarray:  # jit takes NumPy arrays too; the conversion keeps the dtype rules in one place
            a = _jnp.asarray(a)
        if a.dtype in _UPCAST:
            half = True
        ins.append(a)
    if not rec.gpu and not _cuda.host_fallback_enabled():
        _refuse_gpu_arrays(rec, ins)
    promoted = None  # JAX's promotion of the inexact inputs, to cast half-precision results back
    if half:  # (jnp.result_type costs ~5 us: only when the answer can be a half type)
        inexact = [np.dtype(a.dtype) for a in ins if np.dtype(a.dtype).kind in "fcV"]
        promoted = np.dtype(_jnp.result_type(*inexact))
        ins = [a.astype(_UPCAST[np.dtype(a.dtype)]) if a.dtype in _UPCAST else a for a in ins]
    outs = list(_custom_fn(opdef.name, _encode_options(opdef, options), present)(*ins))
    if promoted in _UPCAST:
        outs = [o.astype(promoted) if o.dtype == _UPCAST[promoted] else o for o in outs]
    return _unflatten_output(outs)
