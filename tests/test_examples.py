"""Every script in examples/ runs at reduced size (in a subprocess, as a user would run it)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(script: str, *args: str) -> str:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, f"{script} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _improved(stdout: str) -> None:
    m = re.search(r"validation mse ([0-9.e+-]+) -> ([0-9.e+-]+)", stdout)
    assert m, stdout
    assert float(m.group(2)) < float(m.group(1)), stdout


def test_numpy_lti():
    out = _run("numpy_lti.py", "--steps", "60")
    assert "finite difference" in out


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
def test_s4d_torch():
    _improved(_run("s4d_torch.py", "--quick"))


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_jax_example():
    _improved(_run("jax_example.py", "--quick"))


@pytest.mark.parametrize(("script", "framework"), [("s4d_torch.py", "torch"), ("jax_example.py", "jax")])
def test_example_without_its_framework_prints_the_install_hint(script, framework, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(f"import sys\nsys.modules[{framework!r}] = None\n")
    env = dict(os.environ, PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 1
    assert f'pip install "ssmcore[{framework}]"' in out.stderr, out.stderr
