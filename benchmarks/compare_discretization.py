"""Side-by-side timings for discretisation, measured in one process, interleaved, medians.

1. Batched ``ssmcore.discretize`` of K 4x4 systems (one input) against a Python loop
   over ``scipy.signal.cont2discrete`` (the way a batch is done with scipy), and against
   ssmcore's own NumPy backend (``scipy.linalg.expm`` on the stack, which loops over
   slices inside SciPy).
2. ``ssmcore.discretize_diag`` for H = 1024 channels x N = 64 complex modes (S4D-sized):
   the Numba kernel against the NumPy reference.

ssmcore's Numba rows are timed with all Numba threads and with one (``numba.set_num_threads``):
on a busy machine a parallel region waits for its slowest thread.

Usage: ``python benchmarks/compare_discretization.py [--quick]``. Each round runs every
candidate once, in turn, so machine noise hits all of them alike; the table shows the
median over rounds and the ratio to the first candidate of the row. Medians are the
figure of merit; minima are printed too, being less sensitive to other processes on a
shared machine. OpenBLAS threads oversubscribe a busy machine badly (scipy's 5x5 expm went
from ~10 us to ms); ``OPENBLAS_NUM_THREADS=1`` avoids that.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numba
import numpy as np
import scipy.signal as ss

from ssmcore import discretize, discretize_diag


def interleaved_timings(candidates: dict, rounds: int) -> dict:
    """{name: (median, min)} over ``rounds`` round-robin runs of every candidate."""
    for fn in candidates.values():  # warm-up: JIT compilation or cache load, first-touch
        fn()
    times = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def report(title: str, timings: dict) -> None:
    """Median (the figure of merit) and min (less sensitive to a busy machine), with ratios."""
    names = list(timings)
    base_med, base_min = timings[names[0]]
    print(f"\n{title}")
    print(f"  {'candidate':<48} {'median':>10} {'ratio':>7} {'min':>10} {'ratio':>7}")
    for name in names:
        med, low = timings[name]
        print(f"  {name:<48} {med * 1e3:>8.2f}ms {med / base_med:>6.1f}x {low * 1e3:>8.2f}ms {low / base_min:>6.1f}x")


def one_thread(fn):
    """Run ``fn`` with Numba limited to one thread (its kernels then take the sequential path)."""

    def run():
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            fn()
        finally:
            numba.set_num_threads(threads)

    return run


OURS = "ssmcore.discretize (numba expm / batched solve)"
OURS_1T = "  same, 1 numba thread"
LOOP = "loop over scipy.signal.cont2discrete"


def dense_case(K: int, method: str, rounds: int) -> dict:
    rng = np.random.default_rng(0)
    n = 4
    A = rng.standard_normal((K, n, n)) / np.sqrt(n) - 1.5 * np.eye(n)
    B = rng.standard_normal((K, n, 1))
    C, D = np.ones((1, n)), np.zeros((1, 1))
    dt = 0.1

    def scipy_loop():
        for k in range(K):
            ss.cont2discrete((A[k], B[k], C, D), dt, method=method)

    candidates = {
        OURS: lambda: discretize(A, B, dt, method),
        OURS_1T: one_thread(lambda: discretize(A, B, dt, method)),
        "ssmcore.discretize backend='numpy' (scipy expm)": lambda: discretize(A, B, dt, method, backend="numpy"),
        LOOP: scipy_loop,
    }
    return interleaved_timings(candidates, rounds)


def diag_case(method: str, rounds: int) -> dict:
    rng = np.random.default_rng(0)
    H, N = 1024, 64
    A = -rng.uniform(0.1, 1.0, (H, N)) + 1j * np.pi * np.arange(N)  # S4D-Lin-like modes
    B = np.ones((H, N), dtype=np.complex128)
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), H))
    candidates = {
        "discretize_diag numba": lambda: discretize_diag(A, B, dt, method),
        "  same, 1 numba thread": one_thread(lambda: discretize_diag(A, B, dt, method)),
        "discretize_diag numpy reference": lambda: discretize_diag(A, B, dt, method, backend="numpy"),
    }
    return interleaved_timings(candidates, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batch, few rounds (smoke run)")
    args = parser.parse_args()
    K = 1_000 if args.quick else 10_000
    rounds_dense = 2 if args.quick else 5
    rounds_diag = 5 if args.quick else 31

    print(f"threads: numba {numba.get_num_threads()}, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}")
    for method in ("zoh", "bilinear", "foh"):
        t = dense_case(K, method, rounds_dense)
        report(f"discretize, {K} systems 4x4 (M=1), method={method}", t)
        for name in (OURS, OURS_1T):
            print(f"  -> {name.strip()}: {t[LOOP][0] / t[name][0]:.0f}x faster than the scipy loop (medians), "
                  f"{t[LOOP][1] / t[name][1]:.0f}x (mins)")
    for method in ("zoh", "zoh_euler", "bilinear"):
        t = diag_case(method, rounds_diag)
        report(f"discretize_diag, H=1024 x N=64 complex128, method={method}", t)
        par, seq, ref = list(t)
        print(f"  -> numba speed-up over the reference (medians): {t[ref][0] / t[par][0]:.1f}x, "
              f"1 thread {t[ref][0] / t[seq][0]:.1f}x")


if __name__ == "__main__":
    main()
