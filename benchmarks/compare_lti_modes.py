"""Which evaluation mode to pick: recurrent vs scan vs convolution, side by side.

Two workloads, each timed in one process with the three modes called round-robin
(interleaved) and medians reported; the machine may be shared, so read the ratios
within a table, not the absolute times::

    python benchmarks/compare_lti_modes.py           # S4D layer (8, 256, N=32 modes, 4096) and
                                                     # a dense system (N = 8, L = 2^20)
    python benchmarks/compare_lti_modes.py --quick   # small smoke run
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import format_table, interleaved_medians  # noqa: E402

from ssmcore import (  # noqa: E402
    discretize_diag,  # noqa: E402
    lti_simulate,
    lti_simulate_diag,
    s4d_lin,  # noqa: E402
)

MODES = ("recurrent", "scan", "convolution")


def _table(title, times, outs, extra):
    ref = outs["recurrent"]
    scale = max(1.0, float(np.max(np.abs(ref), initial=0.0)))
    fastest = min(times.values())
    rows = [[m, f"{times[m] * 1e3:.1f}", f"{times[m] / fastest:.2f}x",
             f"{float(np.max(np.abs(outs[m] - ref), initial=0.0)) / scale:.1e}"] for m in MODES]
    print(title + extra)
    print(format_table(rows, ["mode", "median ms", "vs fastest", "max rel diff vs recurrent"]))
    print()


def s4d_layer(batch, H, N, L, rounds):
    rng = np.random.default_rng(0)
    Lam = np.tile(s4d_lin(2 * N), (H, 1))
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), (H, 1)))
    B = np.ones((H, N), complex)
    C = rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))
    Ad, Bd = discretize_diag(Lam, B, dt)
    D = rng.standard_normal(H)
    u = rng.standard_normal((batch, H, L))
    calls = {m: (lambda m=m: lti_simulate_diag(Ad, Bd, C, D, u, conj_sym=True, mode=m)) for m in MODES}
    outs = {m: f() for m, f in calls.items()}
    times = interleaved_medians(calls, rounds=rounds)
    _table(f"S4D layer: lti_simulate_diag, batch {batch}, H {H}, N {N} modes (conj_sym), L {L}", times, outs, "")


def dense_system(batch, N, L, rounds):
    rng = np.random.default_rng(1)
    A = rng.standard_normal((N, N))
    A *= 0.95 / np.max(np.abs(np.linalg.eigvals(A)))
    B, C, D = rng.standard_normal((N, 1)), rng.standard_normal((1, N)), rng.standard_normal((1, 1))
    u = rng.standard_normal((batch, 1, L))
    calls = {m: (lambda m=m: lti_simulate(A, B, C, D, u, mode=m)) for m in MODES}
    outs = {m: f() for m, f in calls.items()}
    times = interleaved_medians(calls, rounds=rounds)
    _table(f"Dense system: lti_simulate, batch {batch}, N {N}, SISO, L {L}", times, outs, "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, few rounds (smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (median over them)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 7)
    if args.quick:
        s4d_layer(2, 16, 8, 512, rounds)
        dense_system(1, 8, 1 << 14, rounds)
    else:
        s4d_layer(8, 256, 32, 4096, rounds)
        dense_system(1, 8, 1 << 20, rounds)


if __name__ == "__main__":
    main()
