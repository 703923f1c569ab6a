"""Array namespaces: the one place that knows NumPy, CuPy and array-API-strict apart.

Front doors, the backward glue and the registry work on an array namespace
``xp`` resolved once per call by :func:`ssmcore.dispatch.select` from the
types of the inputs, and written against the Python array API standard:

* NumPy arrays -> ``array_api_compat.numpy`` (NumPy itself, with the standard's
  names where NumPy's differ; arrays stay ``numpy.ndarray``);
* CuPy arrays -> ``array_api_compat.cupy``;
* ``array_api_strict`` arrays -> ``array_api_strict`` itself. This is the test
  namespace: CI runs the glue on strict arrays placed on a non-CPU device, so
  any stray ``np.*`` call (which would break on CuPy) raises on a machine
  without a GPU. Their kernels run on the CPU through an explicit conversion
  (:mod:`ssmcore.backends.host`).

Nothing here imports CuPy or array-api-strict unless the caller's arrays are
of that kind (the module is then already in ``sys.modules``).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from functools import lru_cache
from types import ModuleType
from typing import Any

__all__ = [
    "broadcast_shapes",
    "device_of",
    "dtype_name",
    "is_complex_dtype",
    "namespace",
    "numpy_namespace",
    "real_dtype",
]

_NAMESPACE_MODULES = {
    "numpy": "array_api_compat.numpy",
    "cupy": "array_api_compat.cupy",
    "strict": "array_api_strict",
}


@lru_cache(maxsize=None)
def namespace(kind: str) -> ModuleType:
    """The array-API namespace for an array kind ('numpy', 'cupy' or 'strict')."""
    return importlib.import_module(_NAMESPACE_MODULES[kind])


def numpy_namespace() -> ModuleType:
    """``namespace('numpy')``: the default for Python scalars and lists."""
    return namespace("numpy")


def device_of(x: Any) -> Any:
    """The device an array lives on (None for NumPy arrays and non-arrays)."""
    return getattr(x, "device", None) if not _is_numpy(x) else None


def _is_numpy(x: Any) -> bool:
    return type(x).__module__ == "numpy"


def dtype_name(dtype: Any) -> str:
    """'float32' for NumPy's, CuPy's and array-api-strict's float32 alike (error messages)."""
    return str(dtype).rsplit(".", 1)[-1]


def is_complex_dtype(xp: ModuleType, dtype: Any) -> bool:
    """Whether ``dtype`` is complex floating, in any namespace."""
    return bool(xp.isdtype(dtype, "complex floating"))


def real_dtype(xp: ModuleType, dtype: Any) -> Any:
    """The real dtype of the same precision (complex64 -> float32)."""
    if xp.isdtype(dtype, "complex floating"):
        return xp.float32 if dtype == xp.complex64 else xp.float64
    return dtype


def broadcast_shapes(*shapes: Sequence[int]) -> tuple[int, ...]:
    """NumPy's broadcasting of shapes, in plain Python (the standard has no such function).

    Raises ``ValueError`` when the shapes do not broadcast (the caller words the message).
    """
    ndim = max((len(s) for s in shapes), default=0)
    out = [1] * ndim
    for s in shapes:
        for i, n in enumerate(s, start=ndim - len(s)):
            n = int(n)
            if n == out[i] or n == 1:
                continue
            if out[i] == 1:
                out[i] = n
            else:
                raise ValueError(f"shapes {[tuple(x) for x in shapes]} do not broadcast")
    return tuple(out)


def prod(shape: Sequence[int]) -> int:
    """Number of elements of a shape (1 for ``()``)."""
    return math.prod(int(n) for n in shape)
