"""The command line: `python -m ssmcore demo` (the main job) and `python -m ssmcore info`."""

import subprocess
import sys

import pytest


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ssmcore", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_demo_quick_writes_figure_and_tables(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo.png"
    res = _run("demo", "--quick", "--output", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = res.stdout
    assert "RMS error" in text and "speed-up" in text
    # The reconstruction must improve with the state size for both measures.
    errors = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] in ("legs", "legt"):
            errors.setdefault(parts[0], []).append(float(parts[2]))
    for measure, errs in errors.items():
        assert len(errs) == 4, text
        assert errs[-1] < 0.1 * errs[0], f"{measure}: {errs}"


def test_info_lists_backends_and_ops(tmp_path):
    res = _run("info", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "numba layer" in res.stdout and "linear_scan" in res.stdout


def test_unknown_command_fails(tmp_path):
    res = _run("frobnicate", cwd=tmp_path)
    assert res.returncode != 0 and "invalid choice" in res.stderr


def test_demo_without_matplotlib_says_how_to_install(tmp_path):
    # A sitecustomize that hides matplotlib, as if it were not installed.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None\n")
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-m", "ssmcore", "demo", "--quick", "--output", str(tmp_path / "x.png")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)
    assert res.returncode == 1
    assert 'pip install "ssmcore[demo]"' in res.stderr
    assert "RMS error" not in res.stdout  # nothing was computed first
    assert not (tmp_path / "x.png").exists()


def test_warmup_fills_the_cache_and_prints_a_table(tmp_path):
    # One cheap op and dtype keeps this fast; the full set runs in benchmarks/first_call.py.
    import os

    cache = tmp_path / "cache"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    cmd = [sys.executable, "-m", "ssmcore", "warmup", "--ops", "discretize_diag", "--dtypes", "float64"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[0] == "discretize_diag" and lines[0].endswith(" s")
    assert lines[1].startswith("total")
    assert lines[-1].startswith(f"numba cache {cache}")
    assert list(cache.rglob("*.nbi")), "nothing was written to the cache"
    quiet = subprocess.run([*cmd, "--no-backward", "--quiet"], capture_output=True, text=True, cwd=tmp_path,
                           timeout=600, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.splitlines() == [lines[-1]]


def test_warmup_rejects_an_unknown_op(tmp_path):
    res = _run("warmup", "--ops", "frobnicate", cwd=tmp_path)
    assert res.returncode != 0 and "invalid choice" in res.stderr
