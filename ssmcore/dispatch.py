"""Backend selection by array type, and the table of which op runs where.

NumPy arrays run on the Numba CPU kernels, CuPy arrays on the CuPy GPU kernels.
``backend="numpy"`` forces the float64-readable NumPy reference, ``"numba"`` or
``"cupy"`` force a backend. A library the caller has not imported is never
imported here: CuPy is recognised only if ``cupy`` is already in ``sys.modules``
(the einops / array-api-compat approach), so ``import ssmcore`` stays light.

Every public function that runs kernels declares the backends it has
(:func:`declare_backends`, or ``register_op(..., backends=...)``); :func:`select`
resolves, once per call, the backend and the array namespace ``xp`` of the
inputs (:mod:`ssmcore._xp`) and raises one uniform
:class:`UnsupportedBackendError` for a pair without a kernel. The table
(:func:`capabilities`) also drives the tests' backend parametrisation and the
documentation's table.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from . import _xp

__all__ = [
    "BACKENDS",
    "Target",
    "UnsupportedBackendError",
    "array_kind",
    "capabilities",
    "capability_table",
    "declare_backends",
    "gpu_available",
    "kernels",
    "select",
    "select_backend",
]

BACKENDS = ("numpy", "numba", "cupy")

#: Array kinds the core refuses rather than convert silently, and where to go instead.
_OTHER_ENTRY_POINTS = {
    "masked": "masked array; ssmcore ignores masks, so it refuses them: pass x.filled(value) "
    "or the data and handle the mask yourself",
    "dask": "dask array; the core would compute the whole graph into memory. Use ssmcore.dask.<op> "
    "for lazy, chunked evaluation",
    "xarray": "xarray object; the core would drop its dims and coords. Use ssmcore.xarray.<op>, "
    "which keeps them",
}

#: The backend each array kind runs on by default.
_DEFAULT_BACKEND = {"numpy": "numba", "cupy": "cupy", "strict": "numba"}

#: public function name -> backends it has kernels for (see declare_backends).
_CAPABILITIES: dict[str, tuple[str, ...]] = {}


class UnsupportedBackendError(NotImplementedError, TypeError):
    """An op has no kernel for the backend its inputs (or ``backend=``) select.

    A ``NotImplementedError`` (the op exists, the kernel does not yet) that is
    also a ``TypeError`` (the inputs' array type is what cannot be served).
    """


def declare_backends(fn: str, backends: tuple[str, ...]) -> None:
    """Declare the backends public function ``fn`` runs on (a subset of BACKENDS)."""
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise ValueError(f"declare_backends: {fn} lists unknown backends {bad}; expected a subset of {BACKENDS}")
    _CAPABILITIES[fn] = tuple(b for b in BACKENDS if b in backends)


def capabilities() -> dict[str, tuple[str, ...]]:
    """``{function name: backends}`` for every function that runs kernels (a copy)."""
    return dict(sorted(_CAPABILITIES.items()))


def capability_table() -> str:
    """The capability table as Markdown (docs/backends.md is this text; a test keeps them equal)."""
    rows = ["| function | " + " | ".join(BACKENDS) + " |", "|---|" + "---|" * len(BACKENDS)]
    for fn, have in capabilities().items():
        rows.append(f"| `{fn}` | " + " | ".join("yes" if b in have else "—" for b in BACKENDS) + " |")
    return "\n".join(rows) + "\n"


_BACKEND_WORDS = {"numpy": "NumPy reference", "numba": "Numba CPU kernel", "cupy": "CuPy kernel"}


def _unsupported(fn: str, backend: str, kind: str) -> UnsupportedBackendError:
    have = _CAPABILITIES.get(fn, ())
    hint = ""
    if backend == "cupy" and kind == "cupy":
        hint = "; run it on the CPU with NumPy arrays (cupy.asnumpy) (docs/backends.md lists what runs where)"
    return UnsupportedBackendError(
        f"{fn}: no {_BACKEND_WORDS[backend]} yet; it runs on {', '.join(have) or 'no backend'}{hint}"
    )


@dataclass(frozen=True)
class Target:
    """Where one call runs: the backend, the inputs' array kind and their namespace ``xp``."""

    backend: str  # "numpy" | "numba" | "cupy"
    kind: str  # "numpy" | "cupy" | "strict"
    xp: ModuleType
    device: Any = None  # the inputs' device (None for NumPy)

    def kernels(self, module: str) -> Any:
        """The backend's kernel module for an area (bridged to the host for 'strict' arrays)."""
        mod = kernels(self.backend, module)
        if self.kind == "strict":
            from .backends.host import HostBridge

            return HostBridge(mod, self.xp, self.device)
        return mod

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """``x`` as an array of this call's namespace and device (no copy when it already is)."""
        if self.device is None:
            return self.xp.asarray(x, dtype=dtype)
        return self.xp.asarray(x, dtype=dtype, device=self.device)


def array_kind(x: Any) -> str | None:
    """'numpy', 'cupy', 'strict', 'torch', 'jax' or None (Python scalars, lists, None)."""
    if x is None or isinstance(x, (int, float, complex, list, tuple, np.generic)):
        return None
    if isinstance(x, np.ndarray):
        return "masked" if isinstance(x, np.ma.MaskedArray) else "numpy"
    mod = type(x).__module__.partition(".")[0]
    if mod in ("dask", "xarray"):
        return mod
    strict = sys.modules.get("array_api_strict")
    if strict is not None and isinstance(x, strict._array_object.Array):
        return "strict"
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


def select(fn: str, *arrays: Any, backend: str | None = None) -> Target:
    """Choose the backend and array namespace for a call from its array arguments.

    Raises
    ------
    TypeError
        On mixed array types, on framework tensors (use the adapters
        ``ssmcore.torch`` / ``ssmcore.jax``) or on an unknown ``backend``.
    UnsupportedBackendError
        When ``fn`` declares no kernel for the selected backend.
    """
    kinds = {k for k in map(array_kind, arrays) if k is not None}
    for kind, entry in _OTHER_ENTRY_POINTS.items():
        if kind in kinds:
            raise TypeError(f"{fn}: got a {entry}")
    for fw in ("torch", "jax"):
        if fw in kinds:
            raise TypeError(
                f"{fn}: got a {fw} array; the core takes NumPy or CuPy arrays. "
                f"Use ssmcore.{fw}.{fn} for a differentiable {fw} op."
            )
    if len(kinds) > 1:
        raise TypeError(f"{fn}: mixed array types {sorted(kinds)}; pass all arrays as NumPy or all as CuPy")
    kind = kinds.pop() if kinds else "numpy"
    have = _CAPABILITIES.get(fn)
    if backend is None:
        backend = _DEFAULT_BACKEND[kind]
        if have is not None and backend not in have and backend == "numba" and "numpy" in have:
            backend = "numpy"  # a function with only a NumPy implementation (set-up code)
    elif backend not in BACKENDS:
        raise ValueError(f"{fn}: unknown backend {backend!r}; expected one of {BACKENDS}")
    elif kind == "cupy" and backend != "cupy":
        raise TypeError(f"{fn}: backend={backend!r} takes NumPy arrays; got CuPy arrays")
    elif backend == "cupy" and kind != "cupy" and arrays:
        raise TypeError(f"{fn}: backend='cupy' takes CuPy arrays; got {'NumPy' if kind == 'numpy' else kind} arrays")
    if have is not None and backend not in have:
        raise _unsupported(fn, backend, kind)
    device = None
    if kind != "numpy":
        device = next(_xp.device_of(a) for a in arrays if array_kind(a) == kind)
    return Target(backend, kind, _xp.namespace(kind), device)


def select_backend(fn: str, *arrays: Any, backend: str | None = None) -> str:
    """The backend name :func:`select` chooses (kept for callers that need only the name)."""
    return select(fn, *arrays, backend=backend).backend


def kernels(backend: str, module: str) -> ModuleType:
    """Import ``ssmcore.backends.<backend>.<module>`` on first use (lazy JIT)."""
    if backend == "numpy":
        return importlib.import_module(f"ssmcore.reference.{module}")
    try:
        return importlib.import_module(f"ssmcore.backends.{backend}.{module}")
    except ModuleNotFoundError as exc:
        if backend == "cupy" and exc.name == "cupy":
            raise ImportError(
                "ssmcore: the CuPy backend needs CuPy; install the extra 'ssmcore[cuda12]' or "
                "'ssmcore[cuda13]' (matching your CUDA driver's major version)"
            ) from exc
        raise
