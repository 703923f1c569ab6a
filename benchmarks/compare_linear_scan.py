"""Side-by-side timing of ``ssmcore.linear_scan`` against its peers.

One process, candidates interleaved round-robin in every repetition, medians
reported (``--stat min`` reports the best repetition instead). Because the machine
may be shared, read the ratios measured in the same run, not absolute times across runs.

Candidates per (shape, dtype), time on the last axis:

* ``triad``: a Numba ``prange`` STREAM triad z = s x + y over arrays of the same
  shape and dtype: the memory-bandwidth floor (3 arrays moved, like a scan).
* ``scan``: ``linear_scan(a, b)`` with time-varying ``a``; its effective bandwidth
  counts read a + read b + write h, reported as a fraction of the triad's.
* ``scan(out=)``: the same public call writing into a preallocated output
  (``out=``), like the triad. The difference to ``scan`` is the allocation and
  the page faults (kernel zeroing) of a fresh output array, which every API
  returning a new array pays.
* ``scan_lti``: ``linear_scan(a[:, None], b)``, constant ``a`` per channel.
* ``lfilter``: ``scipy.signal.lfilter([1], [1, -a_c], b_c)`` per channel (the LTI case).
* ``jax``: ``jax.lax.associative_scan`` (jit-compiled, warmed), if JAX is installed.
* ``numpy``: a NumPy loop over t. For long series it is timed on a prefix of the
  time axis and scaled linearly to L (marked ``*``): its cost per step is constant.
* ``fwd+bwd``: ``ssmcore.vjp`` forward plus pullback, time-varying ``a``; ``fwd+bwd(b)``:
  the same asking only for b's gradient (``needs``: a frozen), which skips reading h and
  writing a's gradient.

Fresh outputs: every call that returns a new large array pays for it in the allocator.
glibc serves arrays above 32 MiB (and, depending on history, smaller ones) with a fresh
``mmap`` whose pages are zeroed on first touch and unmapped on free (TLB shootdowns
across threads); on a virtual machine that can cost more than the scan. The ``scan(out=)``
column avoids it; so does, process-wide, ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=
1073741824:glibc.malloc.trim_threshold=4294967296`` (freed memory is kept and reused).

Usage::

    python benchmarks/compare_linear_scan.py            # shapes of the project goals
    python benchmarks/compare_linear_scan.py --quick    # small shapes, a smoke run
    python benchmarks/compare_linear_scan.py --long     # only one long series (1, 2^22)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

FULL_SHAPES = [(1024, 4096), (16, 262144), (1, 4194304)]
LONG_SHAPES = [(1, 4194304)]  # issue 15 item 2: one long series, decays a ~ U[0.9, 0.999]
QUICK_SHAPES = [(64, 2048), (4, 32768), (1, 131072)]
NUMPY_MAX_STEPS = 16384  # longer NumPy loops are timed on this prefix and scaled


def _triad_kernel():
    import numba

    @numba.njit(parallel=True, fastmath={"contract", "nsz"}, boundscheck=False, cache=False)
    def triad(x, y, z, s):
        C, L = x.shape
        for c in numba.prange(C):
            for t in range(L):
                z[c, t] = s * x[c, t] + y[c, t]

    return triad


def _jax_scan(dtype):
    try:
        import jax
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)  # allow complex128 if asked; float32/complex64 unchanged

    def combine(e1, e2):
        a1, b1 = e1
        a2, b2 = e2
        return a2 * a1, a2 * b1 + b2

    @jax.jit
    def run(a, b):
        return jax.lax.associative_scan(combine, (a, b), axis=-1)[1]

    def call(a, b):
        return run(a, b).block_until_ready()

    return call, jax.device_put


def _numpy_loop(a, b):
    h = np.zeros(b.shape[0], dtype=b.dtype)
    out = np.empty_like(b)
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out[:, t] = h
    return out


def _data(shape, dtype, rng):
    a = rng.uniform(0.9, 0.999, shape)
    b = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        a = a * np.exp(1j * rng.uniform(-0.1, 0.1, shape))
        b = b + 1j * rng.standard_normal(shape)
    return np.ascontiguousarray(a, dtype=dtype), np.ascontiguousarray(b, dtype=dtype)


def measure(cands: dict[str, Callable[[], object]], reps: int, stat: str = "median") -> dict[str, float]:
    for fn in cands.values():  # warm-up: compilation, caches, page faults
        fn()
    times: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(reps):
        for name, fn in cands.items():  # round-robin: noise hits every candidate alike
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    pick = min if stat == "min" else statistics.median
    return {k: pick(v) for k, v in times.items()}


def run_case(shape, dtype, reps, rng, with_jax=True, stat="median"):
    from scipy.signal import lfilter

    import ssmcore
    from ssmcore import linear_scan

    C, L = shape
    a, b = _data(shape, dtype, rng)
    a_lti = np.ascontiguousarray(a[:, :1])
    z = np.empty_like(b)
    s = np.dtype(dtype).type(0.5)
    triad = _triad_kernel()
    ct = np.ones_like(b)
    out = np.empty_like(b)

    def fwd_bwd():
        _, pullback = ssmcore.vjp("linear_scan", a, b)
        return pullback(ct)

    def fwd_bwd_b():
        _, pullback = ssmcore.vjp("linear_scan", a, b)
        return pullback(ct, needs=(False, True, False))

    def lfilt():
        return [lfilter([1.0], [1.0, -a_lti[c, 0]], b[c]) for c in range(C)]

    steps = min(L, NUMPY_MAX_STEPS)
    a_np, b_np = a[:, :steps], b[:, :steps]
    cands = {
        "triad": lambda: triad(a, b, z, s),
        "scan": lambda: linear_scan(a, b),
        "scan_out": lambda: linear_scan(a, b, out=out),
        "scan_lti": lambda: linear_scan(a_lti, b),
        "lfilter": lfilt,
        "numpy": lambda: _numpy_loop(a_np, b_np),
        "fwd+bwd": fwd_bwd,
        "fwd+bwd(b)": fwd_bwd_b,
    }
    jx = _jax_scan(dtype) if with_jax else None
    if jx is not None:
        call, put = jx
        ja, jb = put(a), put(b)
        cands["jax"] = lambda: call(ja, jb)
    med = measure(cands, reps, stat)
    med["numpy"] *= L / steps
    return med, steps < L


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, few repetitions")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per candidate (median reported)")
    ap.add_argument("--long", action="store_true", help="only the one long series (1, 2^22)")
    ap.add_argument("--no-jax", action="store_true", help="skip jax.lax.associative_scan")
    ap.add_argument("--threads", type=int, default=None, help="Numba threads (default: all)")
    ap.add_argument(
        "--stat", choices=("median", "min"), default="median",
        help="statistic over repetitions; 'min' estimates the unloaded time on a shared machine",
    )
    args = ap.parse_args(argv)
    import numba

    if args.threads:
        numba.set_num_threads(args.threads)

    shapes = LONG_SHAPES if args.long else QUICK_SHAPES if args.quick else FULL_SHAPES
    reps = args.reps or (5 if args.quick else 11)
    rng = np.random.default_rng(0)
    print(f"numba threads: {numba.get_num_threads()}; {args.stat}s of {reps} interleaved repetitions")
    try:
        import jax  # noqa: F401

        have_jax = not args.no_jax
    except ImportError:
        have_jax = False
        print("jax not installed: skipping jax.lax.associative_scan (pip install jax)")
    header = (
        f"{'shape':>16} {'dtype':>9} | {'triad':>8} {'scan':>8} {'BW/triad':>8} {'scan(out=)':>11} {'BW/triad':>8} |"
        f" {'scan_lti':>8} {'lfilter':>8}"
        f" {'x lfilt':>7} | {'jax':>8} {'x jax':>6} | {'numpy':>9} {'x numpy':>7} | {'fwd+bwd':>8} {'/fwd':>5}"
        f" {'/fwd(b)':>7}"
    )
    print(header)
    print("-" * len(header))
    for dtype in (np.float32, np.float64, np.complex64):
        for shape in shapes:
            med, scaled = run_case(shape, dtype, reps, rng, with_jax=have_jax, stat=args.stat)
            ms = {k: v * 1e3 for k, v in med.items()}
            jax_t = f"{ms['jax']:8.2f} {med['jax'] / med['scan']:6.1f}" if "jax" in med else f"{'-':>8} {'-':>6}"
            star = "*" if scaled else " "
            print(
                f"{str(shape):>16} {np.dtype(dtype).name:>9} | {ms['triad']:8.2f} {ms['scan']:8.2f}"
                f" {med['triad'] / med['scan']:8.2f} {ms['scan_out']:11.2f} {med['triad'] / med['scan_out']:8.2f} |"
                f" {ms['scan_lti']:8.2f} {ms['lfilter']:8.2f}"
                f" {med['lfilter'] / med['scan_lti']:7.1f} | {jax_t} | {ms['numpy']:8.1f}{star}"
                f" {med['numpy'] / med['scan']:7.0f} | {ms['fwd+bwd']:8.2f} {med['fwd+bwd'] / med['scan']:5.2f}"
                f" {med['fwd+bwd(b)'] / med['scan']:7.2f}",
                flush=True,
            )
    print("times in ms; BW/triad = triad time / scan time (same bytes: read a, read b, write h);")
    print("scan(out=) = linear_scan(a, b, out=buffer): no allocation and page faults of a fresh array;")
    print("x lfilt, x jax, x numpy = peer time / ssmcore time; /fwd = (forward + backward) / forward;")
    print("/fwd(b) = the same with only b's gradient (a frozen: needs=(False, True, False));")
    print("* NumPy loop timed on a prefix of the time axis and scaled to L.")


if __name__ == "__main__":
    main()
