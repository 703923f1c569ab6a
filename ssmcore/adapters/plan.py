"""Generic call planning for the framework adapters (no framework imported here).

A registered op (:class:`ssmcore.registry.OpDef`) has a signature whose
parameters are either *array inputs* (the names in ``opdef.inputs``) or
*options* (method strings, booleans, ints...). An adapter call is planned as:

1. :func:`make_wrapper` generates, once per op, a plain Python function with the
   op's exact signature that hands its arguments, in signature order, to the
   framework's ``call(opdef, values)``. Plain code (no ``inspect.bind`` per call)
   keeps the per-call cost low and is traceable by ``torch.compile``.
2. :func:`split_values` separates framework arrays (they become op inputs and
   may be differentiated) from everything else. A Python scalar passed for an
   array input (``dt=0.1``) stays a constant option: it keeps NumPy's "weak"
   scalar promotion, exactly as in the direct call, and gets no gradient.
3. :func:`encode_options` turns the options into a deterministic string -- a
   compile-time constant for ``torch.library`` schemas and a cache key for JAX.
   :func:`decode_options` is its inverse.
4. :func:`core_call` calls the NumPy function (or its ``fwd``) with arrays and options merged back.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from ..registry import OpDef, get_op, list_ops

__all__ = [
    "OP_MODULES",
    "bind_options",
    "call_in_order",
    "core_call",
    "decode_options",
    "encode_options",
    "grad_positions",
    "flatten_output",
    "load_op",
    "load_all_ops",
    "make_wrapper",
    "n_positional",
    "split_values",
    "unflatten_output",
]

#: Modules whose import registers ops (see the project's area split).
OP_MODULES = ("_discretization", "_scan", "_lti", "_convolution", "_selective_scan", "_ssd", "_lfilter")


def load_all_ops() -> list[str]:
    """Import every op module that exists, so that its ops are registered.

    A module that is not there yet is skipped; one that fails to import for
    another reason raises, so a broken op is not silently hidden.
    """
    for mod in OP_MODULES:
        full = f"ssmcore.{mod}"
        try:
            importlib.import_module(full)
        except ModuleNotFoundError as exc:
            if exc.name != full:
                raise
    return list_ops()


def load_op(name: str, adapter: str) -> OpDef:
    """The OpDef named ``name``, importing the op modules if it is not registered yet."""
    if name not in list_ops():
        load_all_ops()
    if name not in list_ops():
        raise AttributeError(
            f"module 'ssmcore.{adapter}' has no attribute {name!r}; registered ops: {', '.join(list_ops())}"
        )
    return get_op(name)


# ----------------------------------------------------------------------------- signature wrapper
def make_wrapper(
    opdef: OpDef, call: Callable[[Any, tuple], Any], module: str, handle: Any = None
) -> Callable[..., Any]:
    """Generate ``def <op>(<op's exact parameters>): return call(handle, (<params>,))``.

    The generated function is a real Python function with the op's parameter
    names, kinds and defaults, so ``inspect.signature``, keyword calls and error
    messages for wrong arguments behave exactly as for the NumPy function.
    ``handle`` (default: ``opdef``) is what ``call`` receives first, e.g. the
    adapter's per-op record, so that the call needs no lookup.
    """
    params = list(opdef.signature.parameters.values())
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    pieces: list[str] = []
    star_done = False
    for i, p in enumerate(params):
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(f"ssmcore.{module}: op {opdef.name} has *args/**kwargs; adapters need named parameters")
        if p.kind is inspect.Parameter.KEYWORD_ONLY and not star_done:
            pieces.append("*")
            star_done = True
        pieces.append(p.name + (f"=__defaults[{p.name!r}]" if p.name in defaults else ""))
        nxt = params[i + 1].kind if i + 1 < len(params) else None
        if p.kind is inspect.Parameter.POSITIONAL_ONLY and nxt is not inspect.Parameter.POSITIONAL_ONLY:
            pieces.append("/")
    names = ", ".join(p.name for p in params)
    trailing = "," if len(params) == 1 else ""
    src = f"def {opdef.name}({', '.join(pieces)}):\n    return __call(__opdef, ({names}{trailing}))\n"
    namespace: dict[str, Any] = {"__defaults": defaults, "__call": call, "__opdef": opdef if handle is None else handle}
    exec(compile(src, f"<ssmcore.{module}.{opdef.name}>", "exec"), namespace)  # noqa: S102 (generated from a signature)
    fn = namespace[opdef.name]
    fn.__module__ = f"ssmcore.{module}"
    fn.__qualname__ = opdef.name
    fn.__doc__ = _adapter_doc(opdef, module)
    fn.__ssmcore_op__ = opdef.name
    return fn


def _adapter_doc(opdef: OpDef, module: str) -> str:
    framework = {"torch": "PyTorch tensors", "jax": "JAX arrays"}.get(module, f"{module} arrays")
    summary = (opdef.fn.__doc__ or "").strip().splitlines()
    first = summary[0] if summary else opdef.name
    return (
        f"{first}\n\n"
        f"Differentiable ``ssmcore.{opdef.name}`` for {framework}: same signature, options and numerics "
        f"as the NumPy function (see its docstring for the maths, shapes and dtypes). "
        f"Array inputs among {', '.join(opdef.inputs)} may be {framework}; Python scalars and None are "
        f"passed through as constants.\n"
    )


# ----------------------------------------------------------------------------- splitting and options
def split_values(
    names: Sequence[str], values: Sequence[Any], is_array: Callable[[Any], bool]
) -> tuple[list[Any], dict[str, Any]]:
    """Split a call's values (in the order of the parameter ``names``) into arrays and options.

    Returns ``arrays`` (one entry per parameter of the signature: the framework
    array, or None where that parameter is an option) and ``options`` (every
    other parameter by name). Arrays passed for parameters outside
    ``opdef.inputs`` (integer index arrays, say) are carried as constant inputs
    with no gradient; a Python scalar passed for an array input (``dt=0.1``)
    stays an option: it keeps NumPy's weak-scalar dtype promotion, exactly as in
    the direct call, and has no gradient.
    """
    arrays: list[Any] = []
    options: dict[str, Any] = {}
    for name, value in zip(names, values):
        if is_array(value):
            arrays.append(value)
        else:
            arrays.append(None)
            options[name] = value
    return arrays, options


@lru_cache(maxsize=None)
def _grad_positions(names: tuple[str, ...], inputs: tuple[str, ...]) -> tuple[int | None, ...]:
    where = {n: i for i, n in enumerate(inputs)}
    return tuple(where.get(n) for n in names)


def grad_positions(opdef: OpDef) -> tuple[int | None, ...]:
    """For each signature parameter, its index in ``opdef.inputs`` (None: not differentiable)."""
    return _grad_positions(tuple(opdef.signature.parameters), opdef.inputs)


def _normalise(fn: str, name: str, value: Any) -> Any:
    """Options as plain Python literals, so that the encoding round-trips."""
    if value is None or isinstance(value, (bool, int, float, complex, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, list)):
        return type(value)(_normalise(fn, name, v) for v in value)
    raise TypeError(
        f"{fn}: {name} has type {type(value).__name__}; the adapters pass non-array arguments through as "
        f"constants and accept None, bool, int, float, complex, str or tuples/lists of them"
    )


def encode_options(opdef: OpDef, options: dict[str, Any]) -> str:
    """A deterministic string for ``options`` (signature order), inverse :func:`decode_options`."""
    return repr(tuple((k, _normalise(opdef.name, k, v)) for k, v in options.items()))


_NONFINITE = {"inf": float("inf"), "nan": float("nan")}


def _literal(node: ast.AST) -> Any:
    """``ast.literal_eval`` plus the names ``inf``/``nan`` that ``repr(float)`` produces."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e) for e in node.elts)
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Name) and node.id in _NONFINITE:
        return _NONFINITE[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand)
        return -v if isinstance(node.op, ast.USub) else +v
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):  # complex literals: 1+2j
        left, right = _literal(node.left), _literal(node.right)
        return left + right if isinstance(node.op, ast.Add) else left - right
    raise ValueError(f"ssmcore adapters: malformed options string near {ast.dump(node)}")


@lru_cache(maxsize=4096)
def decode_options(encoded: str) -> dict[str, Any]:
    """Inverse of :func:`encode_options` (cached: the same strings come back every call)."""
    return dict(_literal(ast.parse(encoded, mode="eval").body))


def n_positional(opdef: OpDef, fn: Callable[..., Any]) -> int:
    """How many leading parameters of the op ``fn`` takes positionally (see :func:`call_in_order`).

    ``fn`` is the op's public function, its ``fwd``, or a ``*args`` forwarder
    such as ``functools.partial(ssmcore.vjp, name)``: a leading parameter
    counts if ``fn`` has a positional parameter of that name at that place, or
    a ``*args`` there or before.
    """
    mine = list(inspect.signature(fn).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    n = 0
    star = False
    for k, p in enumerate(opdef.signature.parameters.values()):
        if p.kind not in positional:
            break
        star = star or (k < len(mine) and mine[k].kind is inspect.Parameter.VAR_POSITIONAL)
        if not star and (k >= len(mine) or mine[k].name != p.name or mine[k].kind not in positional):
            break
        n += 1
    return n


def call_in_order(fn: Callable[..., Any], names: Sequence[str], n_pos: int, values: Sequence[Any]) -> Any:
    """``fn`` called with ``values`` in signature order: the first ``n_pos`` positionally, the rest by name.

    The same call as :func:`core_call` makes, without splitting and merging
    options; passing what may be passed positionally saves building a dict.
    """
    if n_pos == len(values):
        return fn(*values)
    return fn(*values[:n_pos], **dict(zip(names[n_pos:], values[n_pos:])))


def bind_options(
    opdef: OpDef, fn: Callable[..., Any], present: Sequence[bool], options: dict[str, Any]
) -> Callable[..., Any]:
    """``call(*arrays)``: ``fn`` called with the given arrays and ``options``, merging planned once.

    ``present`` has one flag per parameter (True where the call passes an
    array); ``call`` takes those arrays in parameter order. The same call as
    :func:`core_call`, for a host function that runs many times with one set of options.
    """
    names = tuple(opdef.signature.parameters)
    template = [None if p else options[name] for name, p in zip(names, present)]
    slots = [i for i, p in enumerate(present) if p]
    n_pos = n_positional(opdef, fn)

    def call(*arrays: Any) -> Any:
        values = list(template)
        for i, a in zip(slots, arrays):
            values[i] = a
        return call_in_order(fn, names, n_pos, values)

    return call


def core_call(opdef: OpDef, fn: Callable[..., Any], arrays: Sequence[Any], options: dict[str, Any]) -> Any:
    """Call ``fn`` (the op's public function or its ``fwd``) with arrays and options merged back.

    For one-off calls: positional-only parameters go by position, the rest by
    name, so ``fn`` need not be inspected (see :func:`bind_options` for calls
    that repeat).
    """
    params = opdef.signature.parameters
    values = [options[name] if arr is None else arr for name, arr in zip(params, arrays)]
    n_posonly = sum(p.kind is inspect.Parameter.POSITIONAL_ONLY for p in params.values())
    return call_in_order(fn, tuple(params), n_posonly, values)


# ----------------------------------------------------------------------------- outputs
def flatten_output(out: Any, fn: str) -> tuple[list[Any], bool]:
    """``(list of arrays, is_tuple)`` for an op's output (an array or a tuple of arrays)."""
    if isinstance(out, tuple):
        if len(out) == 1:
            # The framework ops return a flat list; a 1-tuple would be indistinguishable from one array.
            raise RuntimeError(f"{fn}: returns a 1-tuple; the adapters need an array or a tuple of >= 2 arrays")
        return list(out), True
    return [out], False


def unflatten_output(outs: Sequence[Any]) -> Any:
    """Inverse of :func:`flatten_output`: one array, or a tuple for two or more."""
    return outs[0] if len(outs) == 1 else tuple(outs)
