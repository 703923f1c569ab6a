"""Mamba-2 SSD (``ssmcore``): forward and forward+backward.

asv: ``cd benchmarks && asv run --python=same --bench bench_ssd``.

As a script it prints a side-by-side table against a NumPy chunked SSD in the
style of mamba's ``ssd_minimal`` (einsum, all chunks at once), measured in one
process, interleaved, medians::

    python benchmarks/bench_ssd.py            # batch 1, L 2048, H 24, P 64, N 64
    python benchmarks/bench_ssd.py --quick    # small smoke run
"""

from __future__ import annotations

import numpy as np

import ssmcore
from ssmcore import ssd

SHAPE = dict(batch=1, L=2048, H=24, P=64, G=1, N=64)


def make_inputs(batch, L, H, P, G, N, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, L, H, P)).astype(dtype)
    dt = rng.uniform(-4.0, -1.0, (batch, L, H)).astype(dtype)  # softplus -> about 0.02 .. 0.3
    A = -np.exp(rng.uniform(0.0, np.log(16.0), H)).astype(dtype)  # mamba's A_init_range (1, 16)
    B = rng.standard_normal((batch, L, G, N)).astype(dtype)
    C = rng.standard_normal((batch, L, G, N)).astype(dtype)
    return x, dt, A, B, C


class SSD:
    params = (["float32", "float64"], [64, 128])
    param_names = ["dtype", "chunk_size"]
    timeout = 300

    def setup(self, dtype, chunk_size):
        self.args = make_inputs(**SHAPE, dtype=np.dtype(dtype))
        self.kw = dict(chunk_size=chunk_size, dt_softplus=True, D=np.ones(SHAPE["H"], dtype))
        out, pullback = ssmcore.vjp("ssd", *self.args, **self.kw)  # compile / load the kernels
        pullback(out)
        self.ct = np.ones_like(out)

    def time_forward(self, dtype, chunk_size):
        ssd(*self.args, **self.kw)

    def time_forward_backward(self, dtype, chunk_size):
        _, pullback = ssmcore.vjp("ssd", *self.args, **self.kw)
        pullback(self.ct)

    def peakmem_forward_backward(self, dtype, chunk_size):
        _, pullback = ssmcore.vjp("ssd", *self.args, **self.kw)
        pullback(self.ct)


# ----------------------------------------------------------------------------- the NumPy peer


def _segsum(a):
    """exp-ready segment sums, ``out[..., l, s] = sum_{s < i <= l} a_i`` (l >= s), -inf above."""
    Q = a.shape[-1]
    rep = np.where(np.tril(np.ones((Q, Q), dtype=bool), -1), a[..., :, None], 0)
    return np.where(np.tril(np.ones((Q, Q), dtype=bool)), np.cumsum(rep, axis=-2), -np.inf)


def numpy_ssd_minimal(x, dt, A, B, C, D, chunk_size):
    """Mamba's ``ssd_minimal_discrete`` rewritten with NumPy einsum (L a multiple of chunk_size).

    dt is already processed; y = SSD(x dt, A dt, B, C) + D x. Same dtype as x.
    """
    b, L, H, P = x.shape
    G, N = B.shape[2:]
    c, Q = L // chunk_size, chunk_size
    X = (x * dt[..., None]).reshape(b, c, Q, H, P)
    a = (dt * A).reshape(b, c, Q, H).transpose(0, 3, 1, 2)  # (b, h, c, l)
    Bh = np.repeat(B, H // G, axis=2).reshape(b, c, Q, H, N)
    Ch = np.repeat(C, H // G, axis=2).reshape(b, c, Q, H, N)
    acs = np.cumsum(a, axis=-1)
    Lm = np.exp(_segsum(a))
    y_diag = np.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Ch, Bh, Lm, X, optimize=True)
    decay_states = np.exp(acs[..., -1:] - acs)
    states = np.einsum("bclhn,bhcl,bclhp->bchpn", Bh, decay_states, X, optimize=True)
    states = np.concatenate([np.zeros_like(states[:, :1]), states], axis=1)
    decay_chunk = np.exp(_segsum(np.pad(acs[..., -1], ((0, 0), (0, 0), (1, 0)))))
    states = np.einsum("bhzc,bchpn->bzhpn", decay_chunk, states, optimize=True)[:, :-1]
    y_off = np.einsum("bclhn,bchpn,bhcl->bclhp", Ch, states, np.exp(acs), optimize=True)
    return (y_diag + y_off).reshape(b, L, H, P) + D[:, None] * x


def main(argv=None):
    import argparse
    import os
    import sys

    # _timing.py lives one folder up, next to the compare_*.py scripts.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from _timing import format_table, interleaved_medians

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes, few rounds (smoke run)")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    shape = dict(batch=1, L=256, H=4, P=32, G=1, N=32) if args.quick else SHAPE
    rounds = 3 if args.quick else args.rounds
    chunk = 64
    rows = []
    for dtype in (np.float32, np.float64):
        x, dt, A, B, C = make_inputs(**shape, dtype=dtype)
        D = np.ones(shape["H"], dtype)
        kw = dict(chunk_size=chunk, D=D, dt_softplus=True)
        dt_eff = np.log1p(np.exp(dt))  # what ssd does with dt_softplus=True (dt <= 20 here)
        want = numpy_ssd_minimal(x, dt_eff, A, B, C, D, chunk)
        got = ssd(x, dt, A, B, C, **kw)
        err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
        out, pullback = ssmcore.vjp("ssd", x, dt, A, B, C, **kw)
        ct = np.ones_like(out)

        def fwd_bwd():
            _, pb = ssmcore.vjp("ssd", x, dt, A, B, C, **kw)
            pb(ct)

        cands = {
            "numpy einsum (ssd_minimal)": lambda: numpy_ssd_minimal(x, dt_eff, A, B, C, D, chunk),
            "ssmcore.ssd forward (numba)": lambda: ssd(x, dt, A, B, C, **kw),
            "ssmcore.ssd backward only": lambda: pullback(ct),
            "ssmcore.ssd forward+backward": fwd_bwd,
        }
        med = interleaved_medians(cands, rounds=rounds)
        base = med["numpy einsum (ssd_minimal)"]
        for name, t in med.items():
            rows.append([np.dtype(dtype).name, name, f"{t * 1e3:.2f}", f"{base / t:.1f}x",
                         f"{err:.1e}" if "forward (numba)" in name else ""])
    print("SSD, batch {batch}, L {L}, heads {H}, headdim {P}, groups {G}, N {N}, chunk {c}; "
          "medians of {r} interleaved rounds".format(**shape, c=chunk, r=rounds))
    print(format_table(rows, ["dtype", "candidate", "ms", "speed vs numpy", "max rel diff"]))


if __name__ == "__main__":
    main()
