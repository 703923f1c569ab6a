"""Side-by-side: ssmcore.lfilter vs scipy.signal.lfilter.

Realistic filters with poles near the unit circle (Butterworth/elliptic low-pass
designs from scipy.signal, orders 2-8): one long series, many channels sharing
one filter (scipy filters an (C, L) array in one call), and a bank of different
filters over a batch of signals as torchaudio users write it (``lfilter(b (F, nb),
a (F, na), x (B, F, L))``; scipy needs a Python loop over the filters). One
process, candidates called round-robin, medians; the machine may be shared, so
read the ratios::

    python benchmarks/compare_lfilter.py           # L = 1,000,000 / C = 256 x 100,000 / 64 filters
    python benchmarks/compare_lfilter.py --quick   # small smoke run
"""

from __future__ import annotations

import argparse
import os
import sys

import numba
import numpy as np
import scipy.signal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import format_table, interleaved_medians  # noqa: E402

from ssmcore._lfilter import lfilter  # noqa: E402


def design(order, kind, cutoff=0.05):
    """A low-pass (b, a): Butterworth or elliptic; small cutoffs put the poles near z = 1."""
    if kind == "butter":
        return scipy.signal.butter(order, cutoff)
    return scipy.signal.ellip(order, 0.5, 60, cutoff)


def bank(F, order, seed=0):
    """F different Butterworth low-passes with cutoffs in [0.02, 0.4] (stacked (F, order + 1))."""
    cut = np.random.default_rng(seed).uniform(0.02, 0.4, F)
    bs, as_ = zip(*(scipy.signal.butter(order, c) for c in cut))
    return np.stack(bs), np.stack(as_)


def max_rel_err(got, want):
    return float(np.max(np.abs(got - want), initial=0.0)) / max(1.0, float(np.max(np.abs(want), initial=0.0)))


def row(label, t, err):
    return [label, f"{t['scipy'] * 1e3:.2f}", f"{t['ssmcore'] * 1e3:.2f}", f"{t['scipy'] / t['ssmcore']:.1f}x",
            f"{err:.1e}"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few rounds (smoke run)")
    args = ap.parse_args(argv)
    L1, (C, L), (B, F, LB), rounds = (
        (50_000, (16, 5_000), (4, 16, 5_000), 3) if args.quick else (1_000_000, (256, 100_000), (8, 64, 50_000), 7)
    )
    rng = np.random.default_rng(1)
    rows = []
    for order, kind in ((2, "butter"), (4, "ellip"), (8, "butter")):
        b, a = design(order, kind)
        # order 8 in transfer-function form is unstable in float32 (use second-order sections there)
        for dtype in (np.float64, np.float32) if order < 8 else (np.float64,):
            x = rng.standard_normal(L1).astype(dtype)
            bb, aa = b.astype(dtype), a.astype(dtype)
            err = max_rel_err(lfilter(bb, aa, x), scipy.signal.lfilter(bb, aa, x))
            t = interleaved_medians({"scipy": lambda: scipy.signal.lfilter(bb, aa, x),
                                     "ssmcore": lambda: lfilter(bb, aa, x)}, rounds=rounds)
            rows.append(row(f"1 series L={L1} {kind}{order} {np.dtype(dtype).name}", t, err))
        x = rng.standard_normal((C, L))
        err = max_rel_err(lfilter(b, a, x), scipy.signal.lfilter(b, a, x))
        t = interleaved_medians({"scipy": lambda: scipy.signal.lfilter(b, a, x),
                                 "ssmcore": lambda: lfilter(b, a, x)}, rounds=rounds)
        rows.append(row(f"C={C} x L={L} one filter {kind}{order}", t, err))
    for order in (2, 4):
        bs, as_ = bank(F, order)
        x = rng.standard_normal((B, F, LB))

        def loop():
            return np.stack([scipy.signal.lfilter(bs[f], as_[f], x[:, f]) for f in range(F)], axis=1)

        err = max_rel_err(lfilter(bs, as_, x), loop())
        t = interleaved_medians({"scipy": loop, "ssmcore": lambda: lfilter(bs, as_, x)}, rounds=rounds)
        rows.append(row(f"bank F={F} butter{order}, x ({B}, {F}, {LB}) (scipy: loop)", t, err))
    print(f"ssmcore.lfilter vs scipy.signal.lfilter ({numba.get_num_threads()} Numba threads; medians, ms)")
    print(format_table(rows, ["case", "scipy", "ssmcore", "speed-up", "max rel err"]))


if __name__ == "__main__":
    main()
