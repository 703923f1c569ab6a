"""Scale a simulation past memory with ssmcore.dask: many series, one very long series, a cluster.

    PYTHONPATH=. python examples/dask_scale_out.py            # small demo sizes
    PYTHONPATH=. python examples/dask_scale_out.py --series 1000000 --steps 10000

1. An S4D-style diagonal SSM bank driven by ``series`` random input series of
   ``steps`` steps, generated lazily chunk by chunk (``da.random``): nothing the size
   of the whole input or output ever exists; only the final states and a per-series
   summary are computed.
2. One series split into time chunks: the result equals the in-memory call (the two
   passes over chunk summaries are exact), checked here.
3. Optionally (``--cluster``) the same on a ``dask.distributed`` LocalCluster of 2
   worker processes.
"""

from __future__ import annotations

import argparse
import time

import dask
import dask.array as da
import numpy as np

import ssmcore
import ssmcore.dask as sd


def s4d_bank(H: int, N: int, dt: float = 0.01):
    """Discrete S4D-Lin parameters for H channels of N conjugate-pair modes (float32)."""
    lam = (-0.5 + 1j * np.pi * np.arange(N))[None, :].repeat(H, 0).astype(np.complex64)
    Ad, Bd = ssmcore.discretize_diag(lam, np.ones((H, N), np.complex64), np.float32(dt))
    C = np.random.default_rng(0).standard_normal((H, N)).astype(np.complex64)
    return Ad, Bd, C


def many_series(series: int, steps: int, H: int = 1000, N: int = 4, rows: int = 4):
    Ad, Bd, C = s4d_bank(H, N)
    u = da.random.default_rng(1).standard_normal((series // H, H, steps), chunks=(rows, H, steps),
                                                 dtype=np.float32)
    y, x_final = sd.lti_simulate_diag(Ad, Bd, C, None, u, conj_sym=True, return_final_state=True)
    rms = da.sqrt((y * y).mean(axis=-1))  # a per-series summary; y itself is never stored
    return rms, x_final


def long_series(steps: int, chunk: int):
    rng = np.random.default_rng(2)
    a = rng.uniform(0.99, 1.0, (2, steps))
    b = rng.standard_normal((2, steps))
    h, hT = sd.linear_scan(da.from_array(a, chunks=(2, chunk)), da.from_array(b, chunks=(2, chunk)),
                           return_final_state=True)
    ref, refT = ssmcore.linear_scan(a, b, return_final_state=True)
    got, gotT = dask.compute(h, hT)
    return float(np.abs(got - ref).max() / np.abs(ref).max()), float(np.abs(gotT - refT).max())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--cluster", action="store_true")
    args = ap.parse_args(argv)

    rms, x_final = many_series(args.series, args.steps)
    print(f"{args.series} series x {args.steps} steps: graph of {len(rms.__dask_graph__())} tasks, "
          f"chunks {rms.chunksize}, nothing computed yet")
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        rms_v, xf_v = dask.compute(rms, x_final)
    print(f"  computed in {time.perf_counter() - t0:.2f} s: rms shape {rms_v.shape}, final states {xf_v.shape}")

    err, errT = long_series(10_000, 777)
    print(f"one series of 10000 steps in chunks of 777: max relative error {err:.1e} (final state {errT:.1e})")

    out = {"rms": rms_v, "x_final": xf_v, "long_error": err}
    if args.cluster:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            # the kernels this graph runs (every op in every dtype: leave ops/dtypes out)
            sd.warm_up(client, ops=["lti_simulate_diag"], dtypes=["complex64"], backward=False)
            rms_c = client.compute(many_series(args.series, args.steps)[0], sync=True)
            print(f"  on a LocalCluster of 2 processes: same rms: {np.allclose(rms_c, rms_v, rtol=1e-6)}")
            out["rms_cluster"] = rms_c
    return out


if __name__ == "__main__":
    main()
