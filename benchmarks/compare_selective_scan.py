"""Side-by-side: ssmcore's Numba selective scan vs a PyTorch CPU reference.

The peer is a PyTorch function written like mamba_ssm's ``selective_scan_ref``
(float32; deltaA = exp(delta A) and deltaB_u = delta B u materialised as
(batch, D, L, N), a Python loop over L, autograd for the backward).  It is written
here from the maths, not copied.  One deliberate difference: it takes the time slices
with ``unbind`` instead of ``[:, :, i]`` indexing, whose autograd backward is O(L^2)
(150 s for one backward at (2, 256, 2048, 16) on this machine), so the peer here is
the faster variant.

The CPU floor: ``exp floor`` evaluates exp(delta A) for every (batch, channel, t, n), the
one transcendental the forward cannot avoid, with the kernels' own vectorised float32
``exp``, on every thread, into an L1-resident buffer (nothing else: no state, no I/O).
The table gives the forward and forward+backward as multiples of it (issue 15, item 5).

Timing: one process, candidates interleaved round-robin (``benchmarks/_timing.py``),
medians; the machine may be shared, so read the ratios, not the absolute times.
Peak memory: each (candidate, mode) runs once in a fresh subprocess and reports
``ru_maxrss`` after the run minus ``ru_maxrss`` after building the inputs and
warming up (this counts Numba's and torch's own allocations, which tracemalloc
does not see), next to the bytes of the inputs.

Usage::

    python benchmarks/compare_selective_scan.py            # (2, 768, 2048, 16) and (1, 1536, 4096, 16)
    python benchmarks/compare_selective_scan.py --quick    # small shapes, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

# Numba's and torch's OpenMP runtimes are separate; with the default spin-waiting, the
# idle workers of one steal the 2 cores from the other when calls alternate.  Passive
# waiting treats both sides alike (set before either runtime starts).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import format_table, interleaved_medians  # noqa: E402

FULL_SHAPES = [(2, 768, 2048, 16), (1, 1536, 4096, 16)]
QUICK_SHAPES = [(1, 64, 256, 16), (2, 128, 512, 16)]


def make_inputs(shape, seed=0):
    """Mamba-1 block-like float32 inputs: variable B/C, D, z, delta_bias, softplus."""
    b, D, L, N = shape
    rng = np.random.default_rng(seed)
    f = np.float32
    return dict(
        u=rng.standard_normal((b, D, L)).astype(f),
        delta=(0.5 * rng.random((b, D, L))).astype(f),
        A=(-np.exp(np.log(np.arange(1, N + 1))[None, :].repeat(D, 0))).astype(f),  # S4D-Real
        B=rng.standard_normal((b, N, L)).astype(f),
        C=rng.standard_normal((b, N, L)).astype(f),
        D=rng.standard_normal(D).astype(f),
        z=rng.standard_normal((b, D, L)).astype(f),
        delta_bias=(rng.standard_normal(D) - 4).astype(f),
    )


def input_bytes(inp) -> int:
    return sum(v.nbytes for v in inp.values())


def torch_selective_scan_ref(u, delta, A, B, C, D, z, delta_bias):
    """selective_scan_ref-style reference: materialised (b, D, L, N) tensors, loop over L."""
    import torch
    import torch.nn.functional as F

    delta = F.softplus(delta + delta_bias[None, :, None])
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    x = u.new_zeros((u.shape[0], u.shape[1], A.shape[1]))
    ys = []
    # unbind rather than deltaA[:, :, i]: autograd turns each indexed slice into a
    # full-size zero gradient, an O(L^2) backward (150 s at (2, 256, 2048, 16) here).
    for dA_i, dBu_i, C_i in zip(deltaA.unbind(2), deltaB_u.unbind(2), C.unbind(2)):
        x = dA_i * x + dBu_i
        ys.append(torch.einsum("bdn,bn->bd", x, C_i))
    y = torch.stack(ys, dim=2)
    out = y + u * D[None, :, None]
    return out * F.silu(z)


def _exp_floor_kernel():
    import numba

    from ssmcore.backends.numba.selective_scan import _FM, fast_exp

    @numba.njit(parallel=True, fastmath=_FM, cache=False)
    def exp_floor(delta, A, chunk):
        nb, nd, L = delta.shape
        N = A.shape[1]
        res = np.zeros(nb * nd, delta.dtype)
        for i in numba.prange(nb * nd):
            b = i // nd
            d = i - b * nd
            buf = np.empty((chunk, N), delta.dtype)
            Ad = A[d].copy()
            acc = delta.dtype.type(0)
            for c0 in range(0, L, chunk):
                cnt = min(chunk, L - c0)
                for j in range(cnt):
                    dt = delta[b, d, c0 + j]
                    for n in range(N):
                        buf[j, n] = fast_exp(dt * Ad[n])
                acc += buf[cnt - 1, N - 1]  # keeps the work alive
            res[i] = acc
        return res

    return exp_floor


def candidates(inp):
    """``name`` -> zero-argument callable, for the forward and forward+backward of each side."""
    import ssmcore
    from ssmcore import selective_scan

    kw = dict(D=inp["D"], z=inp["z"], delta_bias=inp["delta_bias"], delta_softplus=True)
    args = (inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"])
    cot = np.ones_like(inp["u"])

    def ss_fwd():
        return selective_scan(*args, **kw)

    def ss_fwdbwd():
        out, pb = ssmcore.vjp("selective_scan", *args, **kw)
        return pb(cot)

    floor = []  # compiled on first use (the peak-memory subprocesses never need it)

    def exp_floor():
        floor or floor.append(_exp_floor_kernel())
        return floor[0](inp["delta"], inp["A"], 128)

    cands = {"exp floor": exp_floor, "ssmcore fwd": ss_fwd,
             "ssmcore fwd+bwd": ss_fwdbwd}
    try:
        import torch
    except ImportError:
        print("torch not installed: timing ssmcore only")
        return cands
    t = {k: torch.from_numpy(v) for k, v in inp.items()}
    tcot = torch.from_numpy(cot)

    def torch_fwd():
        with torch.no_grad():
            return torch_selective_scan_ref(**t)

    def torch_fwdbwd():
        leaves = {k: v.clone().requires_grad_(True) for k, v in t.items()}
        out = torch_selective_scan_ref(**leaves)
        out.backward(tcot)
        return [v.grad for v in leaves.values()]

    cands.update({"torch-ref fwd": torch_fwd, "torch-ref fwd+bwd": torch_fwdbwd})
    return cands


def check_agreement(inp):
    """Max abs difference of outputs and gradients between the two (sanity, not a test)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    c = candidates(inp)
    o1, o2 = c["ssmcore fwd"](), c["torch-ref fwd"]().numpy()
    g1, g2 = c["ssmcore fwd+bwd"](), c["torch-ref fwd+bwd"]()
    gerr = max(float(np.max(np.abs(a - b.numpy())) / (np.max(np.abs(b.numpy())) + 1e-30)) for a, b in zip(g1, g2))
    return float(np.max(np.abs(o1 - o2))), gerr


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure_peak(name: str, shape) -> int:
    """Run in a fresh process: peak RSS growth (bytes) of one call after warm-up.

    Linux: reset the high-water mark (``/proc/self/clear_refs`` <- 5), then peak
    VmHWM minus VmRSS before the call.  Elsewhere: the ``ru_maxrss`` delta (a lower
    bound when the process peaked higher before, e.g. while importing).
    """
    inp = make_inputs(shape)
    fn = candidates(inp)[name]
    small = make_inputs((1, 4, 8, shape[3]))
    candidates(small)[name]()  # compile / load caches and initialise threads on tiny data
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) * 1024
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024


def peak_in_subprocess(name: str, shape) -> int | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--measure-mem", name, json.dumps(shape)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return int(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(res.stderr[-2000:])
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes, few rounds (smoke run)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--no-mem", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--measure-mem", nargs=2, metavar=("CANDIDATE", "SHAPE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.measure_mem:
        print(measure_peak(a.measure_mem[0], tuple(json.loads(a.measure_mem[1]))))
        return

    import numba

    try:
        import torch

        tinfo = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        tinfo = "torch missing"
    shapes = QUICK_SHAPES if a.quick else FULL_SHAPES
    rounds = a.rounds or 3
    print(f"selective scan, float32, softplus + delta_bias + D + z, variable B/C; numba {numba.__version__} "
          f"({numba.get_num_threads()} threads), {tinfo}; medians of {rounds} interleaved rounds")
    for shape in shapes:
        inp = make_inputs(shape)
        b, D, L, N = shape
        agree = check_agreement(make_inputs((b, min(D, 64), min(L, 512), N)))  # cropped: the torch side is slow
        # warmup=0: with min_time=0 the calibration call of _timing already warms every candidate once
        med = interleaved_medians(candidates(inp), rounds=rounds, warmup=0, min_time=0.0)
        nbytes = input_bytes(inp)
        rows = []
        for mode in ("fwd", "fwd+bwd"):
            ours = med[f"ssmcore {mode}"]
            ref = med.get(f"torch-ref {mode}")
            mem = {} if a.no_mem else {c: peak_in_subprocess(f"{c} {mode}", shape) for c in ("ssmcore", "torch-ref")
                                        if ref is not None or c == "ssmcore"}
            fmt_mem = lambda m: "-" if m is None else f"{m / 2**20:.0f} MiB ({m / nbytes:.2f}x in)"  # noqa: E731
            rows.append([mode, f"{ours * 1e3:.1f}", f"{ours / med['exp floor']:.2f}",
                         "-" if ref is None else f"{ref * 1e3:.1f}",
                         "-" if ref is None else f"{ref / ours:.1f}x",
                         fmt_mem(mem.get("ssmcore")), fmt_mem(mem.get("torch-ref"))])
        print(f"\nshape (batch, D, L, N) = {shape}; inputs {nbytes / 2**20:.1f} MiB"
              + ("" if agree is None else
                 f"; on a cropped copy: max |out diff| {agree[0]:.1e}, max rel grad diff {agree[1]:.1e}"))
        print(f"exp floor {med['exp floor'] * 1e3:.1f} ms; fwd+bwd / fwd = "
              f"{med['ssmcore fwd+bwd'] / med['ssmcore fwd']:.2f}")
        print(format_table(rows, ["mode", "ssmcore ms", "x exp floor", "torch-ref ms", "speed-up", "ssmcore peak mem",
                                  "torch-ref peak mem"]))


if __name__ == "__main__":
    main()
