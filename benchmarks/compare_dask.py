"""ssmcore.dask against the in-memory calls: throughput and peak memory.

    PYTHONPATH=. python benchmarks/compare_dask.py --quick      # small sizes, seconds
    PYTHONPATH=. python benchmarks/compare_dask.py              # the issue's sizes (needs ~14 GiB free)
    PYTHONPATH=. python benchmarks/compare_dask.py --only scan  # one section: scan, diag or cluster

Sections
--------
scan     ``linear_scan`` on (C, L) float32 in K time chunks on the threaded scheduler,
         against the in-memory call on the same cores (both write a fresh output;
         the Dask result is stored chunk by chunk into it with ``da.store``).
diag     ``lti_simulate_diag`` (S4D-style, N states per channel, float32) on
         ``series`` series of ``steps`` steps whose inputs are generated lazily per
         chunk (``da.random``), reduced to the final states and a per-series mean;
         against the in-memory kernel on one chunk (inputs already in memory), and
         against the same pipeline without the kernel (the cost of generating the
         inputs), so that the kernel's share is visible.
cluster  ``diag`` on a ``LocalCluster`` of 2 worker processes (1 thread each):
         throughput and peak RSS per worker.

Peak RSS is sampled every 10 ms (psutil) while a section runs.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np


class PeakRSS:
    """Peak resident set size of this process while the block runs (sampled)."""

    def __init__(self, interval: float = 0.01):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._stop = threading.Event()
        self.peak = self.proc.memory_info().rss
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def section_scan(C: int, L: int, K: int, repeat: int) -> None:
    """Time-chunked linear_scan against the in-memory call, in two phases.

    Two phases, so that only one copy of the inputs exists at a time (the full size,
    (64, 2^24) float32, is 4 GiB per array).
    """
    import gc

    import dask
    import dask.array as da

    import ssmcore
    import ssmcore.dask as sd

    S = -(-L // K)
    bounds = [(i, min(i + S, L)) for i in range(0, L, S)]

    def block(k: int, i: int, j: int):  # the same numbers in both phases
        rng = np.random.default_rng(k)
        return rng.uniform(0.9, 0.999, (C, j - i)).astype(np.float32), rng.standard_normal((C, j - i),
                                                                                               dtype=np.float32)

    ssmcore.linear_scan(np.full((C, 64), 0.5, np.float32), np.ones((C, 64), np.float32))  # compile / load cache
    # phase 1: inputs stored chunk by chunk (contiguous blocks), as a chunked store or generator delivers them
    blocks = [block(k, i, j) for k, (i, j) in enumerate(bounds)]
    A = da.concatenate([da.from_array(x, chunks=x.shape) for x, _ in blocks], axis=1)
    B = da.concatenate([da.from_array(y, chunks=y.shape) for _, y in blocks], axis=1)
    with dask.config.set(scheduler="threads"):
        da.store(sd.linear_scan(A[:, : 2 * S], B[:, : 2 * S]), np.empty((C, 2 * S), np.float32), lock=False)
        with PeakRSS() as m:
            def run(A=A, B=B):  # bound now: A and B are deleted below, after the timing
                return da.store(sd.linear_scan(A, B), np.empty((C, L), np.float32), lock=False)

            t_dask = best_of(run, repeat)
    del A, B, blocks
    gc.collect()
    # phase 2: the in-memory call on the concatenated inputs
    a = np.empty((C, L), np.float32)
    b = np.empty((C, L), np.float32)
    for k, (i, j) in enumerate(bounds):
        a[:, i:j], b[:, i:j] = block(k, i, j)
    t_mem = best_of(lambda: ssmcore.linear_scan(a, b), repeat)
    n = C * L
    print(f"[scan] linear_scan ({C}, {L}) float32, {K} time chunks, threaded scheduler, "
          f"{os.cpu_count()} cores, best of {repeat}, fresh output for both")
    print(f"  in-memory call : {t_mem:8.3f} s   {n / t_mem / 1e9:6.3f} Gelem/s")
    print(f"  ssmcore.dask   : {t_dask:8.3f} s   {n / t_dask / 1e9:6.3f} Gelem/s   ratio {t_mem / t_dask:.2f}   "
          f"peak RSS {gib(m.peak)} (inputs {gib(2 * a.nbytes)}, output {gib(a.nbytes)})")


def _diag_system(H: int, N: int):
    import ssmcore

    rng = np.random.default_rng(1)
    lam = (-0.5 + 1j * np.pi * rng.integers(0, N, (H, N))).astype(np.complex64)
    Ad, Bd = ssmcore.discretize_diag(lam, np.ones((H, N), np.complex64), np.float32(0.01))
    C = (rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))).astype(np.complex64)
    return Ad, Bd, C


def _diag_pipeline(series: int, H: int, steps: int, rows_per_chunk: int, N: int, kernel: bool = True):
    import dask.array as da

    import ssmcore.dask as sd

    Ad, Bd, C = _diag_system(H, N)
    batch = series // H
    u = da.random.default_rng(2).standard_normal((batch, H, steps), chunks=(rows_per_chunk, H, steps),
                                                 dtype=np.float32)
    if not kernel:
        return u.mean(axis=-1), u[..., -1]
    y, xf = sd.lti_simulate_diag(Ad, Bd, C, None, u, conj_sym=True, return_final_state=True)
    return y.mean(axis=-1), xf


def section_diag(series: int, H: int, steps: int, rows: int, N: int, repeat: int) -> None:
    import dask

    import ssmcore

    Ad, Bd, C = _diag_system(H, N)
    u1 = np.random.default_rng(3).standard_normal((rows, H, steps), dtype=np.float32)
    ssmcore.lti_simulate_diag(Ad, Bd, C, None, u1[:1, :, :8], conj_sym=True, return_final_state=True)
    t_one = best_of(lambda: ssmcore.lti_simulate_diag(Ad, Bd, C, None, u1, conj_sym=True, return_final_state=True),
                    repeat)
    n_one = rows * H * steps
    with dask.config.set(scheduler="threads"):
        dask.compute(*_diag_pipeline(rows * H * 2, H, 64, rows, N))  # warm
        with PeakRSS() as m:
            t0 = time.perf_counter()
            dask.compute(*_diag_pipeline(series, H, steps, rows, N))
            t_all = time.perf_counter() - t0
        t0 = time.perf_counter()
        dask.compute(*_diag_pipeline(series, H, steps, rows, N, kernel=False))
        t_gen = time.perf_counter() - t0
    n = series * steps
    print(f"[diag] lti_simulate_diag float32, N={N} complex states per channel, {series} series x {steps} steps, "
          f"chunks of {rows * H} series, inputs generated lazily (da.random), threaded scheduler")
    print(f"  in-memory kernel, one chunk     : {n_one / t_one / 1e9:6.3f} Gsteps/s")
    print(f"  dask pipeline (generate+kernel) : {n / t_all / 1e9:6.3f} Gsteps/s  ({t_all:.1f} s, "
          f"ratio {(n / t_all) / (n_one / t_one):.2f})   peak RSS {gib(m.peak)}")
    t_kernel = max(t_all - t_gen, 1e-9)
    print(f"  of which generating the inputs  : {t_gen:.1f} s; kernel share {n / t_kernel / 1e9:6.3f} Gsteps/s "
          f"(ratio {(n / t_kernel) / (n_one / t_one):.2f})")


def _worker_peak_start():
    import psutil

    proc = psutil.Process()
    state = {"peak": proc.memory_info().rss, "stop": threading.Event()}

    def run():
        while not state["stop"].is_set():
            state["peak"] = max(state["peak"], proc.memory_info().rss)
            state["stop"].wait(0.01)

    threading.Thread(target=run, daemon=True).start()
    import sys

    sys._ssmcore_peak = state  # functions from __main__ are pickled by value: keep the state in a module


def _worker_peak_stop():
    import sys

    state = sys._ssmcore_peak
    state["stop"].set()
    return state["peak"]


def section_cluster(series: int, H: int, steps: int, rows: int, N: int) -> None:
    import dask
    from distributed import Client, LocalCluster

    import ssmcore.dask as sd

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        warm = sd.warm_up(client)
        dask.compute(*_diag_pipeline(rows * H * 2, H, 64, rows, N))  # kernels loaded on both workers
        client.run(_worker_peak_start)
        t0 = time.perf_counter()
        client.compute(list(_diag_pipeline(series, H, steps, rows, N)), sync=True)
        t = time.perf_counter() - t0
        peaks = client.run(_worker_peak_stop)
    n = series * steps
    print(f"[cluster] LocalCluster 2 processes x 1 thread, same pipeline: {n / t / 1e9:6.3f} Gsteps/s ({t:.1f} s); "
          f"warm-up {', '.join(f'{v:.2f} s' for v in warm.values())}")
    for addr, p in peaks.items():
        print(f"  worker {addr}: peak RSS {gib(p)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--only", choices=("scan", "diag", "cluster"), action="append")
    ap.add_argument("--scan-shape", type=int, nargs=2, metavar=("C", "L"))
    ap.add_argument("--chunks", type=int, default=16, help="time chunks of the scan section")
    ap.add_argument("--series", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--repeat", type=int)
    args = ap.parse_args()
    C, L = args.scan_shape or ((64, 2**20) if args.quick else (64, 2**24))
    series = args.series or (20_000 if args.quick else 1_000_000)
    steps = args.steps or (2_000 if args.quick else 10_000)
    repeat = args.repeat or (3 if args.quick else 1)
    H, N, rows = 1000, 4, 4  # chunks of 4 x 1000 series: 4000 x steps float32 inputs per task
    only = set(args.only or ("scan", "diag", "cluster"))
    if "scan" in only:
        section_scan(C, L, args.chunks, repeat)
    if "diag" in only:
        section_diag(series, H, steps, rows, N, repeat)
    if "cluster" in only:
        section_cluster(series, H, steps, rows, N)


if __name__ == "__main__":
    main()
