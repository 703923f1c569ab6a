"""asv benchmarks: dense (batched) and diagonal discretisation, forward and VJP."""

import numpy as np

import ssmcore
from ssmcore import cont2discrete, discretize, discretize_diag


def _stable_systems(batch, n=4, m=1, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((batch, n, n)) / np.sqrt(n) - 1.5 * np.eye(n)
    B = rng.standard_normal((batch, n, m))
    dt = rng.uniform(0.01, 0.5, batch)
    return A, B, dt


class DenseBatch:
    """``discretize`` on a stack of 4x4 systems (one call, no Python loop per system)."""

    params = (["zoh", "foh", "impulse", "bilinear"], [1, 100, 10_000], ["numba", "numpy"])
    param_names = ["method", "batch", "backend"]

    def setup(self, method, batch, backend):
        self.A, self.B, self.dt = _stable_systems(batch)
        discretize(self.A[:1], self.B[:1], self.dt[:1], method, backend=backend)  # JIT / cache load

    def time_discretize(self, method, batch, backend):
        discretize(self.A, self.B, self.dt, method, backend=backend)

    def peakmem_discretize(self, method, batch, backend):
        discretize(self.A, self.B, self.dt, method, backend=backend)


class DenseVJP:
    """Forward plus pullback of ``discretize`` (Frechet-derivative / linear-solve backward)."""

    params = (["zoh", "foh", "bilinear"], [100, 10_000])
    param_names = ["method", "batch"]

    def setup(self, method, batch):
        self.A, self.B, self.dt = _stable_systems(batch)
        self.ct = (np.ones_like(self.A), np.ones_like(self.B))
        ssmcore.vjp("discretize", self.A[:1], self.B[:1], self.dt[:1], method)[1]((self.ct[0][:1], self.ct[1][:1]))

    def time_vjp(self, method, batch):
        _, pullback = ssmcore.vjp("discretize", self.A, self.B, self.dt, method)
        pullback(self.ct)


class Cont2Discrete:
    """One 4x4 state-space system, the ``scipy.signal.cont2discrete`` call pattern."""

    params = ["zoh", "foh", "bilinear"]
    param_names = ["method"]

    def setup(self, method):
        A, B, _ = _stable_systems(1)
        self.sys = (A[0], B[0], np.ones((1, 4)), np.zeros((1, 1)))
        cont2discrete(self.sys, 0.1, method)

    def time_cont2discrete(self, method):
        cont2discrete(self.sys, 0.1, method)


class Diag:
    """``discretize_diag`` for an S4D-sized layer: H = 1024 channels, N = 64 modes, dt per channel."""

    params = (["zoh", "zoh_euler", "bilinear", "foh"], ["float64", "complex128"], ["numba", "numpy"])
    param_names = ["method", "dtype", "backend"]

    def setup(self, method, dtype, backend):
        rng = np.random.default_rng(0)
        H, N = 1024, 64
        A = -rng.uniform(0.1, 1.0, (H, N))
        if dtype == "complex128":
            A = A + 1j * np.pi * np.arange(N)
        self.A = A
        self.B = np.ones((H, N), dtype=dtype)
        self.dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), H))
        self.ct = (np.ones((H, N), dtype=dtype), np.ones((H, N), dtype=dtype))
        ssmcore.vjp("discretize_diag", A[:2], self.B[:2], self.dt[:2], method, backend=backend)[1](
            (self.ct[0][:2], self.ct[1][:2])
        )

    def time_discretize_diag(self, method, dtype, backend):
        discretize_diag(self.A, self.B, self.dt, method, backend=backend)

    def time_vjp(self, method, dtype, backend):
        _, pullback = ssmcore.vjp("discretize_diag", self.A, self.B, self.dt, method, backend=backend)
        pullback(self.ct)

    def peakmem_discretize_diag(self, method, dtype, backend):
        discretize_diag(self.A, self.B, self.dt, method, backend=backend)
