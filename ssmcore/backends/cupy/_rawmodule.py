"""CUDA C sources of the CuPy backend: declared at import, compiled at first use.

Every kernel family lives in one ``.cu`` file under ``kernels/`` (shipped as
package data) and is compiled by :class:`cupy.RawModule` through NVRTC the
first time a launcher needs it; CuPy caches the binary on disk. Templates are
instantiated per dtype through ``name_expressions``, so one source serves
float32, float64, complex64 and complex128.

A backend module declares its source once, at import time, without touching
the GPU::

    SCAN = declare("scan.cu", ["scan_fwd_warp<float>", "scan_fwd_warp<double>", ...])

and its launchers fetch kernels with ``SCAN.get("scan_fwd_warp<float>")``.
:data:`SOURCES` lists every declaration: the compile gate
(``python -m ssmcore.backends.cupy.compile_gate``) compiles each one with each
of its name expressions for sm_80 and sm_90 on a machine without a GPU.

Launch rule: kernels run on CuPy's current stream (``cupy.cuda.get_current_stream()``,
which the torch and JAX adapters set to the framework's stream); nothing here
synchronises or copies to the host.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["COMPILE_OPTIONS", "KERNEL_DIR", "SOURCES", "Source", "declare", "dtype_name"]

KERNEL_DIR = Path(__file__).parent / "kernels"

#: NVRTC options shared by every source (CuPy adds its own include paths and
#: ``--std=c++17``; the compile gate adds them the same way).
COMPILE_OPTIONS: tuple[str, ...] = ()

#: file name -> declaration, in declaration order.
SOURCES: dict[str, "Source"] = {}

_CXX_NAMES = {
    "float32": "float",
    "float64": "double",
    "complex64": "complex<float>",
    "complex128": "complex<double>",
    "float16": "__half",
    "bfloat16": "__nv_bfloat16",
}


def dtype_name(dtype: Any) -> str:
    """The C++ type a template is instantiated with for a NumPy/CuPy dtype."""
    name = getattr(dtype, "name", None) or str(dtype)
    try:
        return _CXX_NAMES[name]
    except KeyError:
        raise TypeError(f"ssmcore CuPy backend: no CUDA instantiation for dtype {name}") from None


@dataclass
class Source:
    """One ``.cu`` file and every template instantiation its launchers use."""

    file: str
    name_expressions: tuple[str, ...]
    options: tuple[str, ...] = ()
    _module: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def path(self) -> Path:
        return KERNEL_DIR / self.file

    def code(self) -> str:
        return self.path.read_text()

    def module(self) -> Any:
        """The compiled :class:`cupy.RawModule` (compiled on the first call, then reused)."""
        if self._module is None:
            with self._lock:
                if self._module is None:
                    import cupy

                    self._module = cupy.RawModule(
                        code=self.code(),
                        options=COMPILE_OPTIONS + self.options,
                        name_expressions=list(self.name_expressions),
                    )
        return self._module

    def get(self, name_expression: str) -> Any:
        """The kernel for one declared instantiation, e.g. ``"scan_fwd<float>"``."""
        if name_expression not in self.name_expressions:
            raise KeyError(f"{self.file}: {name_expression!r} is not a declared instantiation")
        return self.module().get_function(name_expression)


def declare(file: str, name_expressions: list[str] | tuple[str, ...], options: tuple[str, ...] = ()) -> Source:
    """Declare a source and its instantiations (no compilation, no GPU needed)."""
    src = SOURCES.get(file)
    if src is not None:
        if src.name_expressions != tuple(name_expressions):
            raise ValueError(f"declare: {file} is already declared with other name expressions")
        return src
    src = Source(file, tuple(name_expressions), tuple(options))
    SOURCES[file] = src
    return src
