"""What a fresh output array costs a DRAM-sized ``linear_scan``, and what avoids it.

Issue 15 item 6. A call that returns a new array asks the allocator for it; glibc serves
large blocks with a fresh ``mmap`` whose pages the kernel zeroes on first touch and
unmaps on free. For a memory-bound kernel that zeroing is one more pass over the output,
so against a call writing into a preallocated ``out=`` a fresh output costs up to one
array-write in four (the scan reads a and b and writes h).

ssmcore's answer (``ssmcore/_outputs.py``): the Numba launchers take outputs of 16 MiB and
more from blocks recycled once the caller's last view of them is gone, so a repeated call
of one size faults no page in (``SSMCORE_OUTPUT_POOL_BYTES`` caps the memory kept; 0 turns
it off).

Candidates, each a ``linear_scan`` of float32 (C, L) arrays (default 1 GiB each):

* ``fresh``: ``linear_scan(a, b)``, a new output per call, freed before the next (the
  default: recycled blocks);
* ``fresh, recycling off``: the same with ``SSMCORE_OUTPUT_POOL_BYTES=0`` (a new mmap per call);
* ``out=``: ``linear_scan(a, b, out=buf)`` into one preallocated buffer;
* ``fresh, no THP advice``: as ``fresh, recycling off`` with NumPy's ``madvise(MADV_HUGEPAGE)``
  switched off (``numpy.core.multiarray._set_madvise_hugepage(False)``): 4 KiB pages,
  512 times more page faults;
* ``fresh, tunables``: as ``fresh, recycling off`` in a child process started with
  ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=...``:
  large blocks come from the heap and freed ones are reused, so no page is faulted or
  zeroed after the first call (a process-wide allocator policy: the process keeps the
  memory it freed).

The in-process candidates are interleaved round-robin, medians; the tunables run is
the same measurement in a child process (``fresh`` and ``out=`` again there, for the
ratio within that process).

Usage::

    python benchmarks/compare_fresh_outputs.py [--gib 1.0] [--reps 7]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import format_table, interleaved_medians  # noqa: E402

TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"


def _set_thp_advice(enabled: bool) -> bool:
    """Switch NumPy's hugepage advice; False where this NumPy has no such switch."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage  # NumPy 2
    except ImportError:
        try:
            from numpy.core.multiarray import _set_madvise_hugepage
        except ImportError:
            return False
    _set_madvise_hugepage(enabled)
    return True


def measure(gib: float, reps: int, with_thp_variant: bool) -> dict[str, float]:
    import ssmcore

    C = 1024
    L = int(gib * 2**30) // (4 * C)
    rng = np.random.default_rng(0)
    a = rng.uniform(0.9, 0.999, (C, L)).astype(np.float32)
    b = rng.standard_normal((C, L)).astype(np.float32)
    buf = np.empty_like(b)
    buf.fill(0)

    def fresh():
        ssmcore.linear_scan(a, b)  # the result is dropped (freed) at once

    def unpooled(thp: bool = True):
        os.environ["SSMCORE_OUTPUT_POOL_BYTES"] = "0"
        _set_thp_advice(thp)
        try:
            ssmcore.linear_scan(a, b)
        finally:
            _set_thp_advice(True)
            os.environ.pop("SSMCORE_OUTPUT_POOL_BYTES")

    cands = {"fresh": fresh, "fresh, recycling off": unpooled, "out=": lambda: ssmcore.linear_scan(a, b, out=buf)}
    if with_thp_variant and _set_thp_advice(True):
        cands["fresh, no THP advice"] = lambda: unpooled(False)
    return interleaved_medians(cands, rounds=reps, warmup=1, min_time=0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gib", type=float, default=1.0, help="size of each array (a, b, the output) in GiB")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(measure(a.gib, a.reps, with_thp_variant=False)))
        return
    here = measure(a.gib, a.reps, with_thp_variant=True)
    env = dict(os.environ, GLIBC_TUNABLES=TUNABLES)
    res = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--gib", str(a.gib),
                          "--reps", str(a.reps)], capture_output=True, text=True, env=env)
    child = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else None
    thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip() if os.path.exists(
        "/sys/kernel/mm/transparent_hugepage/enabled") else "n/a"
    print(f"linear_scan float32, a, b and the output {a.gib:g} GiB each; medians of {a.reps}; THP: {thp}")
    rows = [[k, f"{v * 1e3:.0f}", f"{v / here['out=']:.2f}"] for k, v in here.items()]
    if child is None:
        print(res.stderr[-2000:])
    else:
        c = child["fresh, recycling off"]
        rows.append(["fresh, recycling off, tunables (child)", f"{c * 1e3:.0f}",
                     f"{c / child['out=']:.2f} (child's out=: {child['out='] * 1e3:.0f} ms)"])
    print(format_table(rows, ["candidate", "ms", "/ out="]))


if __name__ == "__main__":
    main()
