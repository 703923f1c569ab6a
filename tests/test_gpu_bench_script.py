"""The host-side parts of the GPU benchmark script and the GPU check scripts (no GPU needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import compare_gpu as cg  # noqa: E402


def test_cases_cover_the_issue_table():
    keys = {c.key for c in cg.CASES}
    assert {"scan-f32-many", "scan-f32-long", "scan-f32-bwd", "scan-f64-many", "scan-c64-many", "s4d-c64"} <= keys
    many = next(c for c in cg.CASES if c.key == "scan-f32-many")
    assert many.shape == (8, 4096, 4096) and many.dtype == "float32"
    assert {"d2d copy", "jax.lax.associative_scan", "accelerated_scan.scalar"} <= set(many.candidates)
    long = next(c for c in cg.CASES if c.key == "scan-f32-long")
    assert long.shape == (1, 64, 1 << 20)
    s4d = next(c for c in cg.CASES if c.key == "s4d-c64")
    assert s4d.shape == (16, 1024, 64, 4096) and "torch S4D recipe" in s4d.candidates
    for c in cg.CASES:  # a backward case pairs every fwd+bwd candidate with its fwd
        for name in c.candidates:
            if name.endswith("fwd+bwd"):
                assert c.backward and name[: -len("fwd+bwd")] + "fwd" in c.candidates


def test_bytes_moved():
    case = next(c for c in cg.CASES if c.key == "scan-f32-many")
    n = 8 * 4096 * 4096 * 4
    assert cg.bytes_moved(case, "d2d copy") == 2 * n
    assert cg.bytes_moved(case, "ssmcore.torch") == 3 * n
    assert cg.bytes_moved(case, "ssmcore.torch fwd+bwd") == 8 * n
    c64 = next(c for c in cg.CASES if c.key == "scan-c64-many")
    assert cg.bytes_moved(c64, "ssmcore.torch") == 3 * 8 * 4096 * 4096 * 8


def test_select_cases_and_arguments(monkeypatch):
    assert [c.key for c in cg.select_cases("s4d")] == ["s4d-c64"]
    assert len(cg.select_cases(None)) == len(cg.CASES)
    assert all("bwd" in c.key for c in cg.select_cases("bwd"))
    monkeypatch.delenv("OUT", raising=False)
    args = cg.parse_args(["--rounds", "3", "--only", "scan"])
    assert args.rounds == 3 and args.only == "scan" and args.log is None and not args.dry_run
    monkeypatch.setenv("OUT", "/some/out")
    assert cg.parse_args([]).log == str(Path("/some/out") / "compare_gpu.txt")
    with pytest.raises(SystemExit):
        cg.parse_args(["--rounds", "0"])


def test_format_results_fractions_ratios_and_skips():
    case = next(c for c in cg.CASES if c.key == "scan-f32-bwd")
    n = 8 * 4096 * 4096 * 4
    copy_bw = 4.0e12
    rows = [
        cg.Result(case, "ssmcore.torch fwd", seconds=3 * n / copy_bw / 0.9, peak_bytes=n, out_bytes=n),
        cg.Result(case, "ssmcore.torch fwd+bwd", seconds=2 * 3 * n / copy_bw / 0.9),
        cg.Result(case, "accelerated_scan.scalar fwd", note="not importable"),
    ]
    text = cg.format_results(rows, copy_bw)
    assert "must show: fwd+bwd / fwd <= 2.5" in text
    fwd_line = next(line for line in text.splitlines() if line.startswith("ssmcore.torch fwd "))
    assert "0.90" in fwd_line and "1.00" in fwd_line  # of copy, peak/out
    assert "fwd+bwd/fwd = 2.00" in text
    skip_line = next(line for line in text.splitlines() if line.startswith("accelerated_scan.scalar fwd"))
    assert "skip" in skip_line and "not importable" in skip_line


def test_dry_run_lists_every_case_without_a_gpu():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare_gpu.py"), "--dry-run"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    for c in cg.CASES:
        assert c.key in proc.stdout


def test_probe_turns_the_uniform_error_into_a_skip():
    def no_kernel():
        raise NotImplementedError("ssm_kernel_dplr: no CuPy kernel yet; use NumPy arrays")

    with pytest.raises(cg.Skip, match="no CuPy kernel"):
        cg._probe(no_kernel)

    def broken():
        raise ValueError("a real bug")

    with pytest.raises(ValueError):
        cg._probe(broken)


def test_shell_scripts_parse_and_setup_unpacks(tmp_path):
    for script in ("gpu_check.sh", "gpu_peers_setup.sh"):
        assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / script)]).returncode == 0
    usage = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_peers_setup.sh")], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr
    empty = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_peers_setup.sh"), str(tmp_path)],
                           capture_output=True, text=True)
    assert empty.returncode == 1 and "no *.whl" in empty.stderr


def test_asv_gpu_benchmarks_skip_without_a_device():
    from ssmcore.dispatch import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present: the benchmarks would run")
    from benchmarks.benchmarks import bench_gpu

    bench = bench_gpu.LinearScanGPU()
    with pytest.raises(NotImplementedError):
        bench.setup(*[p[0] for p in bench_gpu.LinearScanGPU.params])
