"""Side-by-side: ssmcore.dlsim vs scipy.signal.dlsim, and lti_simulate recurrent vs scan.

One process, candidates called round-robin (interleaved), medians reported; the
machine may be shared, so read the ratios, not the absolute times::

    python benchmarks/compare_dlsim.py           # N = 8, L = 100,000 (the goal: >= 20x scipy)
    python benchmarks/compare_dlsim.py --quick   # small smoke run
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import scipy.signal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import format_table, interleaved_medians  # noqa: E402

from ssmcore import dlsim, lti_simulate  # noqa: E402


def stable_system(N, M, P, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((N, N))
    A *= 0.95 / np.max(np.abs(np.linalg.eigvals(A)))
    return A, rng.standard_normal((N, M)), rng.standard_normal((P, N)), rng.standard_normal((P, M))


def max_rel_err(got, want):
    return max(float(np.max(np.abs(g - w), initial=0.0)) / max(1.0, float(np.max(np.abs(w), initial=0.0)))
               for g, w in zip(got, want))


def compare_dlsim(N, L, rounds):
    rows = []
    for m, p in ((1, 1), (2, 2)):
        A, B, C, D = stable_system(N, m, p)
        u = np.random.default_rng(1).standard_normal((L, m) if m > 1 else (L,))
        x0 = np.ones(N)
        system = (A, B, C, D, 1.0)
        err = max_rel_err(dlsim(system, u, x0=x0), scipy.signal.dlsim(system, u, x0=x0))
        t = interleaved_medians({
            "scipy": lambda: scipy.signal.dlsim(system, u, x0=x0),
            "ssmcore": lambda: dlsim(system, u, x0=x0),
        }, rounds=rounds)
        rows.append([f"N={N} L={L} in={m} out={p}", f"{t['scipy'] * 1e3:.1f}", f"{t['ssmcore'] * 1e3:.2f}",
                     f"{t['scipy'] / t['ssmcore']:.0f}x", f"{err:.1e}"])
    print("dlsim (control convention, x0 given) -- scipy.signal.dlsim vs ssmcore.dlsim")
    print(format_table(rows, ["case", "scipy ms", "ssmcore ms", "speed-up", "max rel err"]))


def compare_modes(N, total, batches, rounds):
    rows = []
    for dtype in (np.float64, np.float32):
        for batch in batches:
            L = total // batch
            A, B, C, D = (m.astype(dtype) for m in stable_system(N, 1, 1))
            u = np.random.default_rng(2).standard_normal((batch, 1, L)).astype(dtype)
            y_r = lti_simulate(A, B, C, D, u, mode="recurrent")
            y_s = lti_simulate(A, B, C, D, u, mode="scan")
            err = float(np.max(np.abs(y_r - y_s)) / max(1.0, float(np.max(np.abs(y_r)))))
            t = interleaved_medians({
                "recurrent": lambda: lti_simulate(A, B, C, D, u, mode="recurrent"),
                "scan": lambda: lti_simulate(A, B, C, D, u, mode="scan"),
            }, rounds=rounds)
            rows.append([f"{np.dtype(dtype).name} batch={batch} L={L}", f"{t['recurrent'] * 1e3:.2f}",
                         f"{t['scan'] * 1e3:.2f}", f"{t['recurrent'] / t['scan']:.2f}x", f"{err:.1e}"])
    import numba

    print(f"\nlti_simulate N={N}, one input/output -- recurrent vs scan ({numba.get_num_threads()} threads)")
    print(format_table(rows, ["case", "recurrent ms", "scan ms", "scan speed-up", "max rel diff"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        compare_dlsim(N=8, L=5_000, rounds=3)
        compare_modes(N=8, total=16_384, batches=(1, 256), rounds=3)
    else:
        compare_dlsim(N=8, L=100_000, rounds=7)
        compare_modes(N=8, total=1_048_576, batches=(1, 256), rounds=9)


if __name__ == "__main__":
    main()
