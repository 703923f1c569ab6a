"""asv benchmarks of ssmcore.dask: time-chunked scans and batch-chunked simulation (threaded scheduler).

Small sizes (the full-size comparison is ``benchmarks/compare_dask.py``); each
benchmark builds the graph and computes it, so graph construction is included.
"""

from __future__ import annotations

import numpy as np

try:
    import dask
    import dask.array as da

    import ssmcore
    import ssmcore.dask as sd
except ImportError:  # the dask extra is not installed: asv skips the suite
    da = None


def _blocks(C: int, L: int, K: int, seed: int, dtype) -> tuple:
    rng = np.random.default_rng(seed)
    S = L // K
    a = [rng.uniform(0.9, 0.999, (C, S)).astype(dtype) for _ in range(K)]
    b = [rng.standard_normal((C, S)).astype(dtype) for _ in range(K)]
    cat = lambda xs: da.concatenate([da.from_array(x, chunks=x.shape) for x in xs], axis=1)  # noqa: E731
    return cat(a), cat(b), np.concatenate(a, 1), np.concatenate(b, 1)


class LinearScanTimeChunks:
    params = ([1, 4, 16], ["float32", "float64"])
    param_names = ["time_chunks", "dtype"]
    timeout = 300

    def setup(self, K, dtype):
        if da is None:
            raise NotImplementedError("dask is not installed")
        self.A, self.B, self.a, self.b = _blocks(16, 2**18, K, 0, dtype)
        self.out = np.empty(self.a.shape, dtype)
        self.time_dask(K, dtype)

    def time_dask(self, K, dtype):
        with dask.config.set(scheduler="threads"):
            da.store(sd.linear_scan(self.A, self.B), self.out, lock=False)

    def time_in_memory(self, K, dtype):
        ssmcore.linear_scan(self.a, self.b)

    def time_dask_vjp(self, K, dtype):
        _, pullback = sd.vjp("linear_scan", self.A, self.B)
        with dask.config.set(scheduler="threads"):
            dask.compute(*pullback(self.B))

    def peakmem_dask(self, K, dtype):
        with dask.config.set(scheduler="threads"):
            da.store(sd.linear_scan(self.A, self.B), self.out, lock=False)


class DiagSimulationLazyInputs:
    """lti_simulate_diag on lazily generated inputs, reduced to final states and a mean."""

    params = ([4_000, 16_000],)
    param_names = ["series"]
    timeout = 300

    def setup(self, series):
        if da is None:
            raise NotImplementedError("dask is not installed")
        H, N = 1000, 4
        rng = np.random.default_rng(1)
        lam = (-0.5 + 1j * np.pi * rng.integers(0, N, (H, N))).astype(np.complex64)
        self.Ad, self.Bd = ssmcore.discretize_diag(lam, np.ones((H, N), np.complex64), np.float32(0.01))
        self.C = rng.standard_normal((H, N)).astype(np.complex64)
        self.H = H
        self.time_pipeline(series)

    def _graph(self, series, steps=1000):
        u = da.random.default_rng(2).standard_normal((series // self.H, self.H, steps), chunks=(2, self.H, steps),
                                                     dtype=np.float32)
        y, xf = sd.lti_simulate_diag(self.Ad, self.Bd, self.C, None, u, conj_sym=True, return_final_state=True)
        return y.mean(axis=-1), xf

    def time_pipeline(self, series):
        with dask.config.set(scheduler="threads"):
            dask.compute(*self._graph(series))

    def peakmem_pipeline(self, series):
        with dask.config.set(scheduler="threads"):
            dask.compute(*self._graph(series))


class GraphConstruction:
    """Building the graph of a 64-chunk time-chunked scan (no computation)."""

    def setup(self):
        if da is None:
            raise NotImplementedError("dask is not installed")
        self.b = da.ones((8, 64 * 256), chunks=(8, 256))

    def time_build(self):
        sd.linear_scan(0.9, self.b, return_final_state=True)
