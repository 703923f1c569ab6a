"""Compile gate: every CUDA source of the CuPy backend compiled with NVRTC, no GPU needed.

Run it as ``python -m ssmcore.backends.cupy.compile_gate`` (``tests/test_compile_gate.py``
runs it in the normal test suite, so CI does). It

1. imports every public module ``ssmcore.backends.cupy.<name>`` (each declares its
   sources with :func:`ssmcore.backends.cupy._rawmodule.declare` at import time);
2. compiles every declared :class:`~ssmcore.backends.cupy._rawmodule.Source`, with
   all of its name expressions registered, for each target architecture
   (sm_80 and sm_90 by default) and checks that every name expression resolves
   to a lowered (mangled) kernel name -- i.e. that every dtype instantiation a
   launcher asks for exists;
3. fails on a ``.cu``/``.cuh`` file in ``kernels/`` that no declared source uses
   (a ``.cu`` must be declared; a ``.cuh`` must be ``#include``-d by a declared
   source, directly or through another header) and on a declared file that does
   not exist.

Why raw ``cuda.bindings.nvrtc`` and not CuPy's compiler: CuPy's public
``compile_using_nvrtc`` and ``RawModule.compile()`` query the device for its
architecture and fail without a driver (``cudaErrorInsufficientDriver``), while
NVRTC itself needs no driver. The options are CuPy's own, assembled the way
``cupy.RawModule`` assembles them (include paths of CuPy's headers, CCCL and
the CUDA toolkit, ``--std=c++17``; ``--device-as-default-execution-space`` and
``-ftz=true``, which CuPy adds for every NVRTC compile), plus the source's own
options and ``-arch=sm_XX`` -- so a source that passes here compiles the same
way under ``cupy.RawModule`` on the GPU machine (which compiles a cubin for the
device's architecture, sm_90 on the H200).

Needs ``cupy`` (for its options and headers), ``cuda-bindings`` and the NVRTC
library (``nvidia-cuda-nvrtc==13.0.*``); all three are in the ``test`` extra.
Exit status: 0 all compiled, 1 a compile or declaration error, 2 a missing
dependency.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ARCHS",
    "CompileResult",
    "GateDependencyError",
    "check_declarations",
    "compile_source",
    "cupy_options",
    "import_backend_modules",
    "main",
    "run_gate",
]

#: Target architectures: A100 (sm_80) and H100/H200 (sm_90).
ARCHS: tuple[str, ...] = ("sm_80", "sm_90")

# CuPy adds both to every NVRTC compile of a RawModule (cupy/cuda/compiler.py).
_CUPY_NVRTC_EXTRA: tuple[str, ...] = ("--device-as-default-execution-space", "-ftz=true")

# The program is named by its path so that errors point at the file; without this option NVRTC
# would also search that path's folder for #include "...", which CuPy (compiling the source text
# as "kern.cu" elsewhere) does not: a source relying on it would pass here and fail on the GPU.
# Local headers must come through the source's own -I option.
_GATE_ONLY: tuple[str, ...] = ("--no-source-include",)

_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)

_PACKAGE = "ssmcore.backends.cupy"


class GateDependencyError(RuntimeError):
    """cupy, cuda-bindings or the NVRTC library is missing: the gate cannot run."""


@dataclass
class CompileResult:
    """The outcome of compiling one source for one architecture."""

    file: str
    arch: str
    ok: bool
    seconds: float
    log: str = ""
    lowered: dict[str, str] = field(default_factory=dict)  # name expression -> mangled name
    unresolved: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One report line: status, source, architecture, instantiation count, compile time."""
        status = "ok" if self.ok else "FAILED"
        n = len(self.lowered)
        return f"{status:6s} {self.file} [{self.arch}] {n} name expression(s), {self.seconds * 1e3:.0f} ms"


# ----------------------------------------------------------------------------- dependencies
def _nvrtc() -> Any:
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise GateDependencyError(
            "compile gate: cuda.bindings is not installed; install the test extra "
            '(pip install -e ".[test]": cuda-bindings, nvidia-cuda-nvrtc==13.0.*, cupy-cuda13x)'
        ) from exc
    try:
        err, major, minor = nvrtc.nvrtcVersion()
    except Exception as exc:  # the NVRTC shared library is not found
        raise GateDependencyError(
            f"compile gate: the NVRTC library cannot be loaded ({type(exc).__name__}: {exc}); "
            "install nvidia-cuda-nvrtc==13.0.*"
        ) from exc
    _check(nvrtc, err, "nvrtcVersion")
    return nvrtc


def cupy_options() -> tuple[str, ...]:
    """CuPy's NVRTC options for a RawModule, without the architecture (needs no GPU)."""
    try:
        from cupy._core.core import assemble_cupy_compiler_options
    except ImportError as exc:
        raise GateDependencyError(
            "compile gate: cupy is not installed (or is too old to have "
            "cupy._core.core.assemble_cupy_compiler_options); install cupy-cuda13x>=14"
        ) from exc
    return tuple(assemble_cupy_compiler_options(())) + _CUPY_NVRTC_EXTRA


def _check(nvrtc: Any, err: Any, what: str) -> None:
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"compile gate: {what} failed with {err}")


def _program_log(nvrtc: Any, prog: Any) -> str:
    err, size = nvrtc.nvrtcGetProgramLogSize(prog)
    _check(nvrtc, err, "nvrtcGetProgramLogSize")
    buf = b" " * size
    (err,) = nvrtc.nvrtcGetProgramLog(prog, buf)
    _check(nvrtc, err, "nvrtcGetProgramLog")
    return buf.rstrip(b"\x00").decode(errors="replace").strip()


def _cubin_symbols(nvrtc: Any, prog: Any) -> set[bytes]:
    """The names in the compiled cubin's ELF string tables (where cuModuleGetFunction looks kernels up)."""
    err, size = nvrtc.nvrtcGetCUBINSize(prog)
    _check(nvrtc, err, "nvrtcGetCUBINSize")
    buf = b" " * size
    (err,) = nvrtc.nvrtcGetCUBIN(prog, buf)
    _check(nvrtc, err, "nvrtcGetCUBIN")
    return set(buf.split(b"\x00"))


# ----------------------------------------------------------------------------- compiling
def _display_name(path: Path) -> str:
    """The path as NVRTC should print it in errors: relative to the repository when inside it."""
    root = Path(__file__).resolve().parents[3]
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def compile_source(source: Any, arch: str, base_options: Sequence[str] | None = None) -> CompileResult:
    """Compile one declared source for ``arch`` with all its name expressions.

    ``source`` is a :class:`~ssmcore.backends.cupy._rawmodule.Source` (or any
    object with ``file``, ``path``, ``code()``, ``name_expressions`` and
    ``options``). The program is named after the file's path, so NVRTC's errors
    read ``ssmcore/backends/cupy/kernels/scan.cu(12): error: ...``.
    """
    from ._rawmodule import COMPILE_OPTIONS

    nvrtc = _nvrtc()
    opts = tuple(cupy_options() if base_options is None else base_options)
    opts = opts + tuple(COMPILE_OPTIONS) + tuple(source.options) + _GATE_ONLY + (f"-arch={arch}",)
    name = _display_name(Path(source.path))
    t0 = time.perf_counter()
    err, prog = nvrtc.nvrtcCreateProgram(source.code().encode(), name.encode(), 0, [], [])
    _check(nvrtc, err, "nvrtcCreateProgram")
    try:
        for expr in source.name_expressions:
            (err,) = nvrtc.nvrtcAddNameExpression(prog, expr.encode())
            _check(nvrtc, err, f"nvrtcAddNameExpression({expr!r})")
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        log = _program_log(nvrtc, prog)
        result = CompileResult(source.file, arch, err == nvrtc.nvrtcResult.NVRTC_SUCCESS, 0.0, log)
        if result.ok:
            symbols = _cubin_symbols(nvrtc, prog)
            for expr in source.name_expressions:
                err, lowered = nvrtc.nvrtcGetLoweredName(prog, expr.encode())
                low = lowered.decode() if isinstance(lowered, bytes) else str(lowered or "")
                # A declared but never defined template lowers fine; only a kernel in the cubin can be launched.
                if err == nvrtc.nvrtcResult.NVRTC_SUCCESS and low and low.encode() in symbols:
                    result.lowered[expr] = low
                else:
                    result.unresolved.append(expr)
            if result.unresolved:
                result.ok = False
                result.log = (log + "\n" if log else "") + "".join(
                    f"{name}: name expression {e!r} does not resolve to a kernel\n" for e in result.unresolved
                )
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    result.seconds = time.perf_counter() - t0
    return result


# ----------------------------------------------------------------------------- declarations
def import_backend_modules(errors: list[str] | None = None) -> list[str]:
    """Import every public module of ``ssmcore.backends.cupy`` (they declare their sources).

    A module that fails to import is reported in ``errors`` (raised if ``errors`` is None):
    its sources would otherwise silently escape the gate.
    """
    pkg = importlib.import_module(_PACKAGE)
    names = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_") or info.name == "compile_gate":
            continue
        full = f"{_PACKAGE}.{info.name}"
        try:
            importlib.import_module(full)
        except Exception as exc:
            if errors is None:
                raise
            errors.append(f"import {full} failed: {type(exc).__name__}: {exc}")
            continue
        names.append(info.name)
    return names


def _included(path: Path, kernel_dir: Path, seen: set[Path]) -> None:
    """Add the ``#include "..."`` files of ``path`` (resolved in its folder or ``kernel_dir``), recursively."""
    try:
        text = path.read_text()
    except OSError:
        return
    for inc in _INCLUDE.findall(text):
        for cand in (path.parent / inc, kernel_dir / inc):
            cand = cand.resolve()
            if cand.is_file():
                if cand not in seen:
                    seen.add(cand)
                    _included(cand, kernel_dir, seen)
                break


def check_declarations(sources: Iterable[Any], kernel_dir: Path) -> list[str]:
    """Problems with the declarations: missing declared files and dead ``.cu``/``.cuh`` files."""
    problems: list[str] = []
    used: set[Path] = set()
    for src in sources:
        p = Path(src.path)
        if not p.is_file():
            problems.append(f"{src.file}: declared but {_display_name(p)} does not exist")
            continue
        used.add(p.resolve())
        _included(p, kernel_dir, used)
    if kernel_dir.is_dir():
        for f in sorted(kernel_dir.rglob("*")):
            if f.suffix in (".cu", ".cuh") and f.resolve() not in used:
                what = "declared by no module" if f.suffix == ".cu" else "included by no declared source"
                problems.append(f"{_display_name(f)}: dead source ({what})")
    return problems


# ----------------------------------------------------------------------------- the gate
def run_gate(
    sources: Iterable[Any] | None = None,
    archs: Sequence[str] = ARCHS,
    kernel_dir: Path | None = None,
    out: Any = None,
) -> int:
    """Run the gate and print a report to ``out`` (default stdout); returns the exit status.

    Without ``sources``, every backend module is imported and every entry of
    ``SOURCES`` is compiled; ``kernel_dir`` (default the package's ``kernels/``)
    is checked for dead files.
    """
    out = sys.stdout if out is None else out
    try:
        nvrtc = _nvrtc()
        base = cupy_options()
    except GateDependencyError as exc:
        print(str(exc), file=out)
        return 2
    _, major, minor = nvrtc.nvrtcVersion()
    print(f"compile gate: NVRTC {major}.{minor}, targets {', '.join(archs)}", file=out)
    from . import _rawmodule

    problems: list[str] = []
    if sources is None:
        mods = import_backend_modules(problems)
        print(f"compile gate: imported {len(mods)} module(s): {', '.join(mods) or '(none)'}", file=out)
        sources = list(_rawmodule.SOURCES.values())
    else:
        sources = list(sources)
    kernel_dir = _rawmodule.KERNEL_DIR if kernel_dir is None else kernel_dir
    failed = 0
    problems += check_declarations(sources, kernel_dir)
    for p in problems:
        print(f"ERROR  {p}", file=out)
    failed += len(problems)
    for src in sources:
        if not Path(src.path).is_file():
            continue  # reported above
        for arch in archs:
            res = compile_source(src, arch, base)
            print(res.line(), file=out)
            if not res.ok:
                failed += 1
            if not res.ok or res.log:  # the log of a success holds its warnings
                print("       NVRTC log:" if not res.ok else "       NVRTC warnings:", file=out)
                for line in (res.log or "(empty)").splitlines():
                    print(f"       | {line}", file=out)
    n = len(sources)
    if not n:
        print("compile gate: no CUDA sources are declared yet", file=out)
    verdict = "FAILED" if failed else "passed"
    print(f"compile gate {verdict}: {n} source(s) x {len(archs)} arch(s), {failed} error(s)", file=out)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: compile every source for each architecture; exit status 1 on any failure."""
    parser = argparse.ArgumentParser(
        prog="python -m ssmcore.backends.cupy.compile_gate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--arch", action="append", help=f"target architecture (repeatable; default {' '.join(ARCHS)})")
    args = parser.parse_args(argv)
    return run_gate(archs=tuple(args.arch) if args.arch else ARCHS)


if __name__ == "__main__":
    sys.exit(main())
