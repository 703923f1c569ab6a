"""LTI simulation (``ssmcore``): the dlsim drop-in and the batched core.

asv: ``cd benchmarks && asv run --python=same --bench bench_lti``.
The side-by-side comparison with scipy.signal.dlsim is ``benchmarks/compare_dlsim.py``.
"""

from __future__ import annotations

import numpy as np

import ssmcore
from ssmcore import discretize_diag, dlsim, lti_simulate, lti_simulate_diag, s4d_lin


def stable_system(N, M, P, dtype=np.float64, seed=0):
    """A random stable (spectral radius 0.95) system (A, B, C, D)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((N, N))
    A *= 0.95 / np.max(np.abs(np.linalg.eigvals(A)))
    B, C, D = rng.standard_normal((N, M)), rng.standard_normal((P, N)), rng.standard_normal((P, M))
    return tuple(m.astype(dtype) for m in (A, B, C, D))


class Dlsim:
    """scipy.signal.dlsim drop-in: one system, one long input (control convention)."""

    params = ([8, 32], [1, 4])
    param_names = ["N", "inputs"]
    timeout = 120

    def setup(self, N, inputs):
        A, B, C, D = stable_system(N, inputs, inputs)
        self.system = (A, B, C, D, 1.0)
        self.u = np.random.default_rng(1).standard_normal((100_000, inputs))
        self.x0 = np.ones(N)
        dlsim(self.system, self.u[:10], x0=self.x0)  # compile / load the cached kernel

    def time_dlsim(self, N, inputs):
        dlsim(self.system, self.u, x0=self.x0)

    def peakmem_dlsim(self, N, inputs):
        dlsim(self.system, self.u, x0=self.x0)


class LtiSimulate:
    """Batched SSM-convention core: one long sequence vs a batch of 256 (same total steps)."""

    params = (["recurrent", "scan", "convolution"], [1, 256], ["float32", "float64"])
    param_names = ["mode", "batch", "dtype"]
    timeout = 180

    def setup(self, mode, batch, dtype):
        N = 8
        L = 262_144 // batch
        A, B, C, D = stable_system(N, 1, 1, np.dtype(dtype))
        self.args = (A, B, C, D, np.random.default_rng(2).standard_normal((batch, 1, L)).astype(dtype))
        self.kw = dict(mode=mode)
        lti_simulate(*self.args, **self.kw)
        self.y, self.pullback = ssmcore.vjp("lti_simulate", *self.args, **self.kw)

    def time_forward(self, mode, batch, dtype):
        lti_simulate(*self.args, **self.kw)

    def time_forward_backward(self, mode, batch, dtype):
        _, pullback = ssmcore.vjp("lti_simulate", *self.args, **self.kw)
        pullback(self.y)

    def time_backward(self, mode, batch, dtype):
        self.pullback(self.y)

    def peakmem_forward_backward(self, mode, batch, dtype):
        _, pullback = ssmcore.vjp("lti_simulate", *self.args, **self.kw)
        pullback(self.y)


class LtiSimulateDiag:
    """Diagonal front door on an S4D layer (batch 8, H 256, N 32 modes): the three modes."""

    params = (["recurrent", "scan", "convolution"], [1024, 4096])
    param_names = ["mode", "L"]
    timeout = 300

    def setup(self, mode, L):
        rng = np.random.default_rng(0)
        H, N = 256, 32
        Ad, Bd = discretize_diag(np.tile(s4d_lin(2 * N), (H, 1)), np.ones((H, N)), np.full((H, 1), 0.01))
        C = rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))
        self.args = (Ad, Bd, C, rng.standard_normal(H), rng.standard_normal((8, H, L)))
        self.kw = dict(conj_sym=True, mode=mode)
        self.y, self.pullback = ssmcore.vjp("lti_simulate_diag", *self.args, **self.kw)

    def time_forward(self, mode, L):
        lti_simulate_diag(*self.args, **self.kw)

    def time_backward(self, mode, L):
        self.pullback(self.y)

    def peakmem_forward(self, mode, L):
        lti_simulate_diag(*self.args, **self.kw)
