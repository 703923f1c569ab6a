"""The compile gate: every declared CUDA source compiles with NVRTC for sm_80 and sm_90 (no GPU needed).

Runs in the normal test suite, so CI compiles every kernel on every push. Where the gate's
dependencies (cupy, cuda-bindings, nvidia-cuda-nvrtc) are missing the tests skip locally, but
fail when the ``CI`` environment variable is set: CI installs the ``test`` extra, which has them.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from ssmcore.backends.cupy import compile_gate as gate
from ssmcore.backends.cupy._rawmodule import SOURCES, Source

DATA = Path(__file__).parent / "data" / "cuda"
ROOT = Path(__file__).resolve().parents[1]


def _gate_dependencies() -> str | None:
    """None if the gate can run here, else why not."""
    try:
        gate._nvrtc()
        gate.cupy_options()
    except gate.GateDependencyError as exc:
        return str(exc)
    return None


_MISSING = _gate_dependencies()


@pytest.fixture(autouse=True)
def _needs_gate_dependencies():
    if _MISSING is None:
        return
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"CI must run the compile gate, but its dependencies are missing: {_MISSING}")
    pytest.skip(f"compile gate dependencies missing (they are in the test extra): {_MISSING}")


@dataclass
class _FileSource(Source):
    """A Source whose file lives outside the package's kernels/ folder (test data only)."""

    root: Path = DATA

    @property
    def path(self) -> Path:
        return self.root / self.file


INCLUDE_DATA = (f"-I{DATA}",)  # template_scan.cu includes a local header, as the package's sources do
TEMPLATE = ("scan_serial<float>", "scan_serial<double>", "scan_serial<complex<float>>", "scan_serial<complex<double>>")


def test_package_sources_compile_for_every_arch():
    """The real gate, as CI's users run it: every declared source, every instantiation, sm_80 and sm_90.

    One run (as a module, in a fresh process: nothing declared by other tests leaks in);
    the kernels are compiled once, which is most of this file's time.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "ssmcore.backends.cupy.compile_gate"], capture_output=True, text=True, env=env, cwd=ROOT
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert "compile gate passed" in proc.stdout
    gate.import_backend_modules()
    for src in SOURCES.values():
        for arch in gate.ARCHS:
            assert f"ok     {src.file} [{arch}]" in report, report


def test_template_source_compiles_and_every_dtype_resolves():
    src = _FileSource("template_scan.cu", TEMPLATE, INCLUDE_DATA)
    for arch in gate.ARCHS:
        res = gate.compile_source(src, arch)
        assert res.ok, res.log
        assert set(res.lowered) == set(TEMPLATE)
        # Mangled C++ names, one distinct kernel per instantiation.
        assert all(name.startswith("_Z") for name in res.lowered.values())
        assert len(set(res.lowered.values())) == len(TEMPLATE)


def test_gate_passes_on_a_clean_kernel_folder():
    out = io.StringIO()
    status = gate.run_gate([_FileSource("template_scan.cu", TEMPLATE, INCLUDE_DATA)], kernel_dir=DATA, out=out)
    assert status == 0, out.getvalue()
    assert "compile gate passed: 1 source(s) x 2 arch(s), 0 error(s)" in out.getvalue()


def test_broken_source_reports_file_and_line(tmp_path):
    (tmp_path / "broken.cu").write_text(
        "template <typename T>\n"
        "__global__ void broken(T* x) {\n"
        "    T y = x[0];\n"
        "    x[0] = y + undeclared_name;\n"  # line 4
        "}\n"
    )
    src = _FileSource("broken.cu", ("broken<float>",), root=tmp_path)
    out = io.StringIO()
    status = gate.run_gate([src], kernel_dir=tmp_path, archs=("sm_90",), out=out)
    report = out.getvalue()
    assert status == 1
    assert "FAILED broken.cu [sm_90]" in report
    assert "broken.cu(4): error" in report and "undeclared_name" in report, report
    assert "compile gate FAILED" in report


def test_unresolved_name_expression_fails(tmp_path):
    # An instantiation the source cannot provide: a missing dtype specialisation must fail the gate.
    (tmp_path / "only_float.cu").write_text(
        "template <typename T> __global__ void k(T* x);\n"
        "template <> __global__ void k<float>(float* x) { x[0] = 1.0f; }\n"
    )
    res = gate.compile_source(_FileSource("only_float.cu", ("k<float>", "k<int>"), root=tmp_path), "sm_90")
    # NVRTC either refuses the program or leaves k<int> without a definition; both must fail.
    assert not res.ok


def test_dead_and_missing_sources_are_reported(tmp_path):
    (tmp_path / "used.cu").write_text('#include "used.cuh"\n__global__ void k(float* x) { x[0] = f(); }\n')
    (tmp_path / "used.cuh").write_text("__device__ inline float f() { return 1.0f; }\n")
    (tmp_path / "orphan.cu").write_text("__global__ void orphan() {}\n")
    (tmp_path / "orphan.cuh").write_text("#pragma once\n")
    sources = [_FileSource("used.cu", ("k",), (f"-I{tmp_path}",), root=tmp_path),
               _FileSource("absent.cu", ("k",), root=tmp_path)]
    problems = gate.check_declarations(sources, tmp_path)
    text = "\n".join(problems)
    assert len(problems) == 3, text
    assert "orphan.cu: dead source (declared by no module)" in text
    assert "orphan.cuh: dead source (included by no declared source)" in text
    assert "absent.cu: declared but" in text and "does not exist" in text
    out = io.StringIO()
    assert gate.run_gate(sources, kernel_dir=tmp_path, archs=("sm_90",), out=out) == 1
    assert "ok     used.cu [sm_90]" in out.getvalue()


def test_every_declared_source_is_under_the_package():
    # Shipped as package data: a declared file must sit in kernels/ (pyproject's package-data glob).
    for src in SOURCES.values():
        assert src.path.parent.name == "kernels", src.file
        assert src.path.suffix == ".cu", src.file


def test_a_backend_module_that_fails_to_import_fails_the_gate(monkeypatch):
    import ssmcore.backends.cupy as pkg

    def boom(name, *a, **k):
        if name.startswith("ssmcore.backends.cupy.") and not name.endswith(("_rawmodule", "compile_gate")):
            raise SyntaxError("simulated")
        return real(name, *a, **k)

    real = gate.importlib.import_module
    monkeypatch.setattr(gate.pkgutil, "iter_modules", lambda path: [SimpleNamespace(name="scan")])
    monkeypatch.setattr(gate.importlib, "import_module", boom)
    errors: list[str] = []
    assert gate.import_backend_modules(errors) == []
    assert errors and "import ssmcore.backends.cupy.scan failed: SyntaxError: simulated" in errors[0]
    assert pkg  # the package itself still imports


def test_local_headers_need_the_sources_include_option():
    # As under cupy.RawModule, the source's own folder is not searched: a missing -I must fail here.
    res = gate.compile_source(_FileSource("template_scan.cu", TEMPLATE), "sm_90")
    assert not res.ok
    assert "template_helpers.cuh" in res.log, res.log
