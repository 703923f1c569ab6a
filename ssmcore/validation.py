"""Input validation with one error style for every public op.

Every public function validates and normalises its inputs here, once, before any
kernel runs; kernels never validate. Messages always name the function, the
argument, what was expected and what came, e.g.::

    discretize: A has shape (3, 4); expected (..., N, N) (square in the last two axes)

Bad shapes raise :class:`ValueError`, bad types and dtypes raise :class:`TypeError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._xp import dtype_name
from .dispatch import array_kind

if TYPE_CHECKING:  # pragma: no cover
    from .dispatch import Target

__all__ = [
    "as_float_array",
    "check_alpha",
    "check_bool",
    "check_choice",
    "check_dt",
    "check_int",
    "common_float_dtype",
    "shape_error",
    "sum_to_shape",
]


def _fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def shape_error(fn: str, name: str, shape: Sequence[int], expected: str) -> ValueError:
    """Build the project's standard shape error (return it; the caller raises)."""
    return ValueError(f"{fn}: {name} has shape {_fmt_shape(shape)}; expected {expected}")


def as_float_array(
    fn: str,
    name: str,
    x: Any,
    *,
    complex_ok: bool = True,
    integer_ok: bool = False,
    min_ndim: int = 0,
    max_ndim: int | None = None,
    expected: str | None = None,
    target: "Target | None" = None,
) -> Any:
    """Convert ``x`` to a floating (or complex) array, refusing other dtypes.

    Python scalars and lists holding integers are promoted to float64 (they carry
    no dtype intent). NumPy arrays of integer or boolean dtype are refused unless
    ``integer_ok`` (used by the ``scipy.signal`` drop-ins, which accept them).
    float16 is upcast to float32. Object and string dtypes are always refused.
    Fewer than ``min_ndim`` or more than ``max_ndim`` dimensions raise the
    standard shape error, naming ``expected``.

    ``target`` (from :func:`ssmcore.dispatch.select`) gives the call's array
    namespace: NumPy by default; CuPy or array-API-strict arrays are kept in
    their namespace and on their device, with the same rules and messages.
    """
    if target is not None and target.kind != "numpy":
        return _as_float_array_xp(fn, name, x, target, complex_ok, integer_ok, min_ndim, max_ndim, expected)
    typed_input = isinstance(x, np.ndarray) or (hasattr(x, "dtype") and not isinstance(x, (list, tuple)))
    if x is None:
        raise TypeError(f"{fn}: {name} is None; expected an array")
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and other non-array-likes
        raise TypeError(f"{fn}: {name} could not be converted to an array ({exc})") from None
    if not arr.dtype.isnative:  # '>f4' on a little-endian host: compute in the native float32
        arr = arr.astype(arr.dtype.newbyteorder("="))
    kind = arr.dtype.kind
    if kind in "iub":
        if typed_input and not integer_ok and arr.ndim > 0:
            raise TypeError(
                f"{fn}: {name} has dtype {arr.dtype}; expected a floating dtype "
                f"(float32/float64{'/complex64/complex128' if complex_ok else ''}); "
                f"cast it explicitly, e.g. {name}.astype(np.float64)"
            )
        arr = arr.astype(np.float64)
    elif kind == "f":
        if arr.dtype == np.float16:
            arr = arr.astype(np.float32)
        elif arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float64)  # longdouble: compute in float64
    elif kind == "c":
        if not complex_ok:
            raise TypeError(f"{fn}: {name} has dtype {arr.dtype}; expected a real floating dtype")
        if arr.dtype not in (np.complex64, np.complex128):
            arr = arr.astype(np.complex128)
    else:
        raise TypeError(
            f"{fn}: {name} has dtype {arr.dtype}; expected a floating"
            f"{' or complex' if complex_ok else ''} numeric dtype"
        )
    return _check_ndim(fn, name, arr, min_ndim, max_ndim, expected)


def _check_ndim(fn: str, name: str, arr: Any, min_ndim: int, max_ndim: int | None, expected: str | None) -> Any:
    """The standard shape error for too few or too many dimensions (else ``arr``)."""
    if arr.ndim < min_ndim:
        raise shape_error(fn, name, arr.shape, expected or f"at least {min_ndim} dimensions")
    if max_ndim is not None and arr.ndim > max_ndim:
        raise shape_error(fn, name, arr.shape, expected or f"at most {max_ndim} dimensions")
    return arr


def _as_float_array_xp(
    fn: str, name: str, x: Any, target: "Target", complex_ok: bool, integer_ok: bool,
    min_ndim: int, max_ndim: int | None, expected: str | None,
) -> Any:
    """:func:`as_float_array` for a non-NumPy namespace (CuPy, array-API-strict)."""
    xp = target.xp
    if x is None:
        raise TypeError(f"{fn}: {name} is None; expected an array")
    typed_input = hasattr(x, "dtype") and not isinstance(x, (list, tuple))
    try:
        # NumPy scalars (np.float64(0.5)) are typed but not arrays of the target's namespace
        arr = x if typed_input and array_kind(x) == target.kind else target.asarray(x)
    except Exception as exc:
        raise TypeError(f"{fn}: {name} could not be converted to an array ({exc})") from None
    dt = arr.dtype
    if xp.isdtype(dt, ("integral", "bool")):
        if typed_input and not integer_ok and arr.ndim > 0:
            raise TypeError(
                f"{fn}: {name} has dtype {dtype_name(dt)}; expected a floating dtype "
                f"(float32/float64{'/complex64/complex128' if complex_ok else ''}); "
                f"cast it explicitly, e.g. {name}.astype(float64)"
            )
        arr = xp.astype(arr, xp.float64)
    elif xp.isdtype(dt, "real floating"):
        if dt not in (xp.float32, xp.float64):
            arr = xp.astype(arr, xp.float32)  # float16 (and bfloat16 where a namespace has it)
    elif xp.isdtype(dt, "complex floating"):
        if not complex_ok:
            raise TypeError(f"{fn}: {name} has dtype {dtype_name(dt)}; expected a real floating dtype")
    else:
        raise TypeError(
            f"{fn}: {name} has dtype {dtype_name(dt)}; expected a floating"
            f"{' or complex' if complex_ok else ''} numeric dtype"
        )
    return _check_ndim(fn, name, arr, min_ndim, max_ndim, expected)


def common_float_dtype(*arrays: np.ndarray | None) -> np.dtype:
    """The floating/complex dtype all ``arrays`` promote to (None entries ignored)."""
    dts = [a.dtype for a in arrays if a is not None]
    return np.result_type(*dts) if dts else np.dtype(np.float64)


def check_choice(fn: str, name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` lower-cased if it is one of ``choices``, else raise ValueError."""
    choices = tuple(choices)
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"{fn}: unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")
    return value.lower()


def check_dt(fn: str, dt: Any, *, name: str = "dt", allow_zero: bool = False) -> np.ndarray:
    """Validate a step size: real, finite and positive (or >= 0 with ``allow_zero``)."""
    arr = as_float_array(fn, name, dt, complex_ok=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{fn}: {name} must be finite; got non-finite values")
    bad = arr < 0 if allow_zero else arr <= 0
    if np.any(bad):
        rel = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{fn}: {name} must be {rel}; got min {float(np.min(arr))!r}")
    return arr


def check_alpha(fn: str, alpha: Any) -> float:
    """Validate the generalised-bilinear weight alpha in [0, 1]."""
    if alpha is None:
        raise ValueError(f"{fn}: method 'gbt' needs alpha in [0, 1]; got alpha=None")
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: alpha must be a real number in [0, 1]; got {type(alpha).__name__}") from None
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"{fn}: alpha must be in [0, 1]; got {a!r}")
    return a


def check_bool(fn: str, name: str, value: Any) -> bool:
    """Validate a boolean option: ``True``/``False`` (or NumPy bools), nothing else.

    ``reverse='no'`` would otherwise be truthy and silently run in reverse.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{fn}: {name} must be True or False; got {type(value).__name__} {value!r}")


def check_int(fn: str, name: str, value: Any, *, minimum: int = 1) -> int:
    """Validate an integer size argument (e.g. the state size N >= 1)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an integer; got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}; got {int(value)}")
    return int(value)


def sum_to_shape(g: Any, shape: Sequence[int], xp: Any = None) -> Any:
    """Reduce a gradient computed on a broadcast shape back to an input's ``shape``.

    The adjoint of NumPy broadcasting: sum over the leading axes that broadcasting
    added and over the axes where the input had length 1. ``xp`` is the array
    namespace (NumPy's methods when omitted).
    """
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, (gs, s) in enumerate(zip(g.shape[lead:], shape)) if s == 1 and gs != 1
    )
    if xp is None:
        g = g.sum(axis=axes) if axes else g
        return g.reshape(shape)
    g = xp.sum(g, axis=axes, dtype=g.dtype) if axes else g
    return xp.reshape(xp.asarray(g), shape)  # asarray: NumPy reduces to a scalar, keep a 0-d array
