"""First call of every op in a fresh process: empty Numba cache against a warmed one.

For each op, a fresh ``python`` subprocess imports ssmcore and times the first call
of the op on realistic inputs (float32, sizes that take the parallel drivers):

* ``fwd``: the public function once;
* ``fwd+bwd``: ``ssmcore.vjp`` plus the pullback once (a separate process).

Two caches, side by side:

* ``cold``: ``NUMBA_CACHE_DIR`` is a new empty directory for every process, so each
  number is the op's own compile time (one process each: a cold run cannot repeat);
* ``warm``: one directory filled first by ``python -m ssmcore warmup`` (its time
  is reported), then every process loads from it; the median of ``--repeat``
  processes, run interleaved over the ops. ``warm-numba`` is the same with Numba
  imported and its CPU target initialised before the clock starts: Numba's own
  start-up (~0.3-1 s, whatever the op) is then excluded, leaving ssmcore's share
  (loading the cached kernels, SciPy where the op uses it, the call itself).

Times are of the call alone, after ``import ssmcore`` (which imports NumPy only):
they include the lazy imports of SciPy and Numba that the first call triggers,
since a user's first call pays them too. The import of ssmcore itself is reported
separately. ``compiled`` counts the kernel signatures the process compiled (Numba
cache misses): 0 in the warm column means the warm-up covered the call.

The machine may be shared and noisy: read the warm column against the 0.5 s
target, and the cold column as an order of magnitude.

Usage::

    python benchmarks/first_call.py [--ops linear_scan selective_scan] [--repeat 3] [--cold-ops OP ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

# Per op: setup code (NumPy only, runs before the clock) and the call, as source text.
CASES = {
    "discretize": ("A = -np.eye(8, dtype='f4') + 0.01; B = np.ones((8, 2), 'f4'); args = (A, B, np.float32(0.1))", {}),
    "discretize_diag": ("A = -np.ones((256, 64), 'f4'); B = np.ones((256, 64), 'f4'); "
                        "args = (A, B, np.full((256, 1), 0.1, 'f4'))", {}),
    "fft_conv": ("args = (np.ones((8, 64, 2048), 'f4'), np.ones((64, 2048), 'f4'))", {}),
    "lfilter": ("args = (np.array([0.5, 0.5], 'f4'), np.array([1.0, -0.5], 'f4'), np.ones((64, 8192), 'f4'))", {}),
    "linear_scan": ("args = (np.full((64, 8192), 0.9, 'f4'), np.ones((64, 8192), 'f4'))", {}),
    "lti_simulate": ("n = 8; A = (0.5 * np.eye(n)).astype('f4'); args = (A, np.ones((n, 1), 'f4'), "
                     "np.ones((1, n), 'f4'), None, np.ones((16, 1, 4096), 'f4'))", {}),
    "lti_simulate_diag": ("args = (np.full((64, 16), 0.9, 'f4'), np.ones((64, 16), 'f4'), np.ones((64, 16), 'f4'), "
                          "None, np.ones((4, 64, 2048), 'f4'))", {}),
    "selective_scan": ("u = np.ones((2, 64, 1024), 'f4'); args = (u, 0.05 * u, -np.ones((64, 16), 'f4'), "
                       "np.ones((2, 16, 1024), 'f4'), np.ones((2, 16, 1024), 'f4'))", {}),
    "selective_state_update": ("args = (np.zeros((8, 256, 16), 'f4'), np.ones((8, 256), 'f4'), "
                               "np.full((8, 256), 0.1, 'f4'), -np.ones((256, 16), 'f4'), np.ones((8, 16), 'f4'), "
                               "np.ones((8, 16), 'f4'))", {}),
    "ssd": ("x = np.ones((2, 512, 8, 16), 'f4'); args = (x, np.full((2, 512, 8), 0.1, 'f4'), "
            "-np.ones(8, 'f4'), np.ones((2, 512, 1, 16), 'f4'), np.ones((2, 512, 1, 16), 'f4'))", {}),
    "ssm_kernel_dense": ("n = 8; args = (np.broadcast_to(0.5 * np.eye(n, dtype='f4'), (64, n, n)).copy(), "
                         "np.ones((64, n), 'f4'), np.ones((64, n), 'f4'), 2048)", {}),
    "ssm_kernel_diag": ("A = (-0.5 + 1j * np.arange(32)).astype('c8') * np.ones((64, 1), 'c8'); "
                        "args = (A, np.ones((64, 32), 'f4'), np.ones((64, 32), 'f4'), np.full(64, 0.01, 'f4'), 2048)",
                        {}),
    "ssm_kernel_dplr": ("lam = (-0.5 + 1j * np.arange(32)).astype('c8') * np.ones((64, 1), 'c8'); "
                        "args = (lam, 0.1 * np.ones((1, 64, 32), 'c8'), np.ones((64, 32), 'c8'), "
                        "np.ones((1, 64, 32), 'c8'), np.full(64, 0.01, 'f4'), 2048)", {}),
}

CHILD = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import numpy as np, ssmcore
    t1 = time.perf_counter()
    op, setup, kwargs, backward = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] == "1"
    if sys.argv[5] == "1":  # start Numba first (import, CPU target set-up): what is left is ssmcore's share
        import numba
        from numba.core.registry import cpu_target
        cpu_target.target_context.refresh()
    exec(setup)
    t2 = time.perf_counter()
    if backward:
        out, pullback = ssmcore.vjp(op, *args, **kwargs)
        pullback(tuple(np.ones_like(o) for o in out) if isinstance(out, tuple) else np.ones_like(out))
    else:
        getattr(ssmcore, op)(*args, **kwargs)
    t3 = time.perf_counter()
    from ssmcore._warmup import compile_counts
    print(json.dumps({"import": t1 - t0, "call": t3 - t2, "compiled": sum(compile_counts().values())}))
""")


def child(op: str, backward: bool, cache: str, numba_started: bool = False) -> dict:
    setup, kwargs = CASES[op]
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    res = subprocess.run([sys.executable, "-c", CHILD, op, setup, json.dumps(kwargs), "1" if backward else "0",
                          "1" if numba_started else "0"],
                         capture_output=True, text=True, env=env, timeout=1800)
    if res.returncode:
        raise RuntimeError(f"{op}: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ops", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--repeat", type=int, default=3, help="warm processes per op and direction (median)")
    p.add_argument("--cold-ops", nargs="*", default=None, choices=list(CASES),
                   help="ops for the (slow) empty-cache column (default: all of --ops; none: skip it)")
    p.add_argument("--warm-dtypes", nargs="+", default=["float32"], help="dtypes passed to the warm-up")
    p.add_argument("--cache", help="warm cache directory to use (and keep) instead of a temporary one")
    args = p.parse_args()
    cold_ops = args.ops if args.cold_ops is None else args.cold_ops

    with tempfile.TemporaryDirectory() as root:
        warm_dir = args.cache or os.path.join(root, "warm")
        env = dict(os.environ, NUMBA_CACHE_DIR=warm_dir)
        cmd = [sys.executable, "-m", "ssmcore", "warmup", "--quiet", "--ops", *args.ops, "--dtypes", *args.warm_dtypes]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, capture_output=True, text=True, timeout=7200)
        print(f"warm-up: {' '.join(['python', *cmd[1:]])}: {time.perf_counter() - t0:.1f} s", flush=True)
        samples: dict[tuple[str, str], list[dict]] = {}
        started: dict[tuple[str, str], list[dict]] = {}  # the same, Numba started before the clock
        for _ in range(args.repeat):  # interleaved over the ops
            for op in args.ops:
                for d in ("fwd", "fwd+bwd"):
                    samples.setdefault((op, d), []).append(child(op, d != "fwd", warm_dir))
                    started.setdefault((op, d), []).append(child(op, d != "fwd", warm_dir, numba_started=True))
        imports = [x["import"] for s in samples.values() for x in s]
        print(f"first call in a fresh process, seconds: after `import ssmcore` "
              f"(median {statistics.median(imports):.2f} s, not included), "
              f"lazy SciPy/Numba imports included; warm: median of {args.repeat} processes; "
              f"compiled: kernel signatures the process compiled; warm-numba: warm, with Numba imported and "
              f"its CPU target set up before the clock (ssmcore's own share)", flush=True)
        print(f"{'op':<24} {'':<8} {'warm':>8} {'compiled':>9} {'warm-numba':>11} {'cold':>8} {'compiled':>9}",
              flush=True)
        for (op, d), s in samples.items():
            warm = statistics.median(x["call"] for x in s)
            line = f"{op:<24} {d:<8} {warm:8.3f} {max(x['compiled'] for x in s):9d}"
            line += f" {statistics.median(x['call'] for x in started[(op, d)]):11.3f}"
            if op in cold_ops:
                with tempfile.TemporaryDirectory(dir=root) as cold:
                    r = child(op, d != "fwd", cold)
                line += f" {r['call']:8.2f} {r['compiled']:9d}"
            print(line + ("" if warm <= 0.5 else "  (warm > 0.5 s)"), flush=True)


if __name__ == "__main__":
    main()
