"""``python -m ssmcore info``: versions and the backends this machine offers."""

from __future__ import annotations

import importlib
import importlib.util
import platform


def _version(mod: str) -> str:
    if importlib.util.find_spec(mod) is None:
        return "not installed"
    try:
        return getattr(importlib.import_module(mod), "__version__", "installed")
    except Exception as exc:  # a broken optional install must not break `info`
        return f"installed but failed to import ({type(exc).__name__}: {exc})"


def _numba_threading() -> str:
    """Run a tiny parallel kernel so Numba reports the threading layer it chose."""
    import numba
    import numpy as np

    from ssmcore.backends.numba import _jit  # noqa: F401  (sets the layer priority)

    @numba.njit(parallel=True, cache=False)
    def _touch(x):
        for i in numba.prange(x.shape[0]):
            x[i] += 1.0

    _touch(np.zeros(4))
    return f"{numba.threading_layer()} ({numba.get_num_threads()} threads)"


def _cupy_status() -> str:
    if importlib.util.find_spec("cupy") is None:
        return "not installed"
    try:
        import cupy

        if not cupy.cuda.is_available():  # never raises, unlike getDeviceCount
            return f"{cupy.__version__}, no CUDA device"
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        return f"{cupy.__version__}, device 0: {name}"
    except Exception as exc:
        return f"failed ({type(exc).__name__}: {exc})"


def info_lines() -> list[str]:
    """The lines ``python -m ssmcore info`` prints: versions, Numba settings, ops, GPU ops."""
    import ssmcore

    lines = [
        f"ssmcore     {ssmcore.__version__}",
        f"python      {platform.python_version()} ({platform.machine()}, {platform.system()})",
    ]
    for mod in ("numpy", "scipy", "numba", "llvmlite"):
        lines.append(f"{mod:<11} {_version(mod)}")
    try:
        lines.append(f"numba layer {_numba_threading()}")
    except Exception as exc:
        lines.append(f"numba layer unavailable ({type(exc).__name__}: {exc})")
    try:
        from ssmcore.backends.numba._jit import cache_location

        lines.append(f"numba cache {cache_location()}  (override with NUMBA_CACHE_DIR)")
    except Exception as exc:
        lines.append(f"numba cache unknown ({type(exc).__name__}: {exc})")
    lines.append(f"cupy        {_cupy_status()}")
    for mod in ("torch", "jax"):
        lines.append(f"{mod:<11} {_version(mod)}")
    lines.append("ops         " + ", ".join(ssmcore.list_ops()))
    from ssmcore.dispatch import capabilities

    gpu = [fn for fn, b in capabilities().items() if "cupy" in b]
    lines.append("on the GPU  " + (", ".join(gpu) if gpu else "none yet"))
    return lines


def main() -> None:
    """Print :func:`info_lines`, one per line."""
    print("\n".join(info_lines()))
