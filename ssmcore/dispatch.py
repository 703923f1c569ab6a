"""Backend selection by array type.

NumPy arrays run on the Numba CPU kernels, CuPy arrays on the CuPy GPU kernels.
``backend="numpy"`` forces the float64-readable NumPy reference, ``"numba"`` or
``"cupy"`` force a backend. A library the caller has not imported is never
imported here: CuPy is recognised only if ``cupy`` is already in ``sys.modules``
(the einops / array-api-compat approach), so ``import ssmcore`` stays light.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["BACKENDS", "array_kind", "gpu_available", "kernels", "select_backend"]

BACKENDS = ("numpy", "numba", "cupy")


def array_kind(x: Any) -> str | None:
    """'numpy', 'cupy', 'torch', 'jax' or None (Python scalars, lists, None)."""
    if x is None or isinstance(x, (int, float, complex, list, tuple, np.generic)):
        return None
    if isinstance(x, np.ndarray):
        return "numpy"
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        return "cupy"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(x, jax.Array):
        return "jax"
    return None  # other array-likes are converted by np.asarray in validation


def gpu_available() -> bool:
    """True where CuPy is installed and sees a CUDA device (imports CuPy; never raises)."""
    try:
        import cupy
    except Exception:  # not installed, or a broken install
        return False
    try:
        return bool(cupy.cuda.is_available())
    except Exception:
        return False


def select_backend(fn: str, *arrays: Any, backend: str | None = None) -> str:
    """Choose the backend for a call from the types of its array arguments.

    Raises
    ------
    TypeError
        On mixed NumPy/CuPy inputs, on framework tensors (use the adapters
        ``ssmcore.torch`` / ``ssmcore.jax``) or on an unknown ``backend``.
    """
    kinds = {k for k in map(array_kind, arrays) if k is not None}
    for fw in ("torch", "jax"):
        if fw in kinds:
            raise TypeError(
                f"{fn}: got a {fw} array; the core takes NumPy or CuPy arrays. "
                f"Use ssmcore.{fw}.{fn} for a differentiable {fw} op."
            )
    if len(kinds) > 1:
        raise TypeError(f"{fn}: mixed array types {sorted(kinds)}; pass all arrays as NumPy or all as CuPy")
    kind = kinds.pop() if kinds else "numpy"
    if backend is None:
        return "cupy" if kind == "cupy" else "numba"
    if backend not in BACKENDS:
        raise ValueError(f"{fn}: unknown backend {backend!r}; expected one of {BACKENDS}")
    if kind == "cupy" and backend != "cupy":
        raise TypeError(f"{fn}: backend={backend!r} takes NumPy arrays; got CuPy arrays")
    if backend == "cupy" and kind == "numpy" and arrays:
        raise TypeError(f"{fn}: backend='cupy' takes CuPy arrays; got NumPy arrays")
    return backend


def kernels(backend: str, module: str) -> ModuleType:
    """Import ``ssmcore.backends.<backend>.<module>`` on first use (lazy JIT)."""
    if backend == "numpy":
        return importlib.import_module(f"ssmcore.reference.{module}")
    try:
        return importlib.import_module(f"ssmcore.backends.{backend}.{module}")
    except ModuleNotFoundError as exc:
        if backend == "cupy" and exc.name == "cupy":
            raise ImportError("ssmcore: the CuPy backend needs CuPy; install the extra 'ssmcore[cuda]'") from exc
        raise
