"""Side-by-side timing of ``ssmcore.selective_state_update`` (Mamba's decode step).

One process, candidates interleaved round-robin (``benchmarks/_timing.py``), medians.
Read the ratios of one run (the machine may be shared), not absolute times across runs.

Candidates per case (plain form ``state (batch, D, N)``, or the heads form of Mamba-2):

* ``numpy``: the three NumPy lines a user would write for the step
  (``dA = exp(dt A)``, ``state = dA state + dt B x``, ``y = sum(C state) + D x``).
* ``ssmcore``: ``selective_state_update(...)`` (Numba kernel), returning a new state.
* ``inplace``: the same with ``inplace=True`` (mamba_ssm's behaviour: no new state array).
* ``reference``: ``backend="numpy"``, the float64 NumPy reference (for orientation).

To compare with an older checkout, run this script with ``PYTHONPATH`` set to it
(candidates it lacks, e.g. ``inplace``, are skipped) and compare the ``x numpy`` ratios.

Usage::

    python benchmarks/compare_state_update.py [--quick]
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import format_table, interleaved_medians  # noqa: E402

import ssmcore  # noqa: E402

CASES = [  # (label, state shape, channel shape, groups)
    ("plain b1 D1536 N16", (1, 1536, 16), (1536,), None),
    ("plain b16 D1536 N16", (16, 1536, 16), (1536,), None),
    ("heads b16 H24 P64 N128", (16, 24, 64, 128), (24, 64), 1),
]


def _inputs(shape, cs, groups, dtype, rng):
    b, N = shape[0], shape[-1]
    f = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    bshape = (b, N) if groups is None else (b, groups, N)
    return dict(state=f(*shape), x=f(b, *cs), dt=(0.5 * rng.random((b, *cs))).astype(dtype),
                A=(-rng.random((*cs, N))).astype(dtype), B=f(*bshape), C=f(*bshape), D=f(*cs))


def _numpy_step(a, heads):
    x, dt, A, D = a["x"], a["dt"], a["A"], a["D"]
    B, C = a["B"], a["C"]
    if heads:  # (b, G, N) with G = 1 here: broadcast over heads and dim
        B, C = B[:, :, None, :], C[:, :, None, :]
    else:
        B, C = B[:, None, :], C[:, None, :]

    def step():
        state = np.exp(dt[..., None] * A) * a["state"] + (dt * x)[..., None] * B
        y = np.sum(C * state, axis=-1) + D * x
        return y, state

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the first case only, fewer rounds")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    params = inspect.signature(ssmcore.selective_state_update).parameters
    has_inplace, has_backend = "inplace" in params, "backend" in params
    rng = np.random.default_rng(0)
    rows = []
    for label, shape, cs, groups in CASES[:1] if args.quick else CASES:
        for dtype in (np.float32, np.float64):
            a = _inputs(shape, cs, groups, dtype, rng)
            heads = len(shape) == 4
            if heads and not has_inplace:
                continue  # an older checkout without the heads form
            sst = a["state"].copy()
            cands = {
                "numpy": _numpy_step(a, heads),
                "ssmcore": lambda a=a: ssmcore.selective_state_update(**a),
            }
            if has_inplace:
                cands["inplace"] = lambda a=a, sst=sst: ssmcore.selective_state_update(**dict(a, state=sst),
                                                                               inplace=True)
            if has_backend:
                cands["reference"] = lambda a=a: ssmcore.selective_state_update(**a, backend="numpy")
            med = interleaved_medians(cands, rounds=args.rounds)
            base = med["numpy"]
            rows.append([f"{label} {np.dtype(dtype).name}"]
                        + [f"{med[k] * 1e6:.1f} us ({med[k] / base:.2f}x numpy)" if k in med else "-"
                           for k in ("numpy", "ssmcore", "inplace", "reference")])
            print(rows[-1], flush=True)
    print(format_table(rows, ["case", "numpy (3 lines)", "ssmcore", "ssmcore inplace", "reference f64"]))


if __name__ == "__main__":
    main()
