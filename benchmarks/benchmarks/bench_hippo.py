"""asv benchmarks: HiPPO matrices, their NPLR form, basis evaluation and the online projection.

These run once per model at initialisation, so what matters is that N = 1024 stays in
seconds (NPLR: an O(N^3) eigendecomposition of the skew part, in real arithmetic).
"""

import numpy as np

from ssmcore import hippo, hippo_basis, hippo_online_coefficients, lru_ring_init, nplr, s4d_inv


class Hippo:
    """``hippo(measure, N)``: building the dense (A, B)."""

    params = (["legs", "legt", "fout", "lagt"], [64, 256, 1024])
    param_names = ["measure", "N"]

    def time_hippo(self, measure, N):
        hippo(measure, N)

    def peakmem_hippo(self, measure, N):
        hippo(measure, N)


class NPLR:
    """``nplr(measure, N)``: eigendecomposition of the normal part, conjugate-halved."""

    params = (["legs", "legt", "fout"], [64, 256, 1024])
    param_names = ["measure", "N"]
    timeout = 300

    def setup(self, measure, N):
        self.rank = 2 if measure == "legt" else 1
        nplr(measure, 8, rank=self.rank)  # first-call imports (scipy.linalg)

    def time_nplr(self, measure, N):
        nplr(measure, N, rank=self.rank)

    def peakmem_nplr(self, measure, N):
        nplr(measure, N, rank=self.rank)


class Basis:
    """``hippo_basis``: N basis functions at 4096 points (Legendre / Laguerre / Fourier)."""

    params = (["legs", "lagt", "fout"], [64, 256])
    param_names = ["measure", "N"]

    def setup(self, measure, N):
        self.s = np.linspace(0.0, 2.0, 4096)

    def time_basis(self, measure, N):
        hippo_basis(measure, N, self.s, t=2.0)


class OnlineCoefficients:
    """``hippo_online_coefficients``: the readable float64 loop over L = 1000 samples."""

    params = (["legs", "legt"], ["bilinear", "zoh"])
    param_names = ["measure", "method"]

    def setup(self, measure, method):
        self.u = np.sin(np.linspace(0.0, 20.0, 1000))

        self.kw = {"dt": 1e-3} if measure == "legs" else {"dt": 1e-3, "theta": 0.5}

    def time_online(self, measure, method):
        hippo_online_coefficients(measure, self.u, 32, method=method, **self.kw)


class DiagonalInits:
    """Cheap diagonal inits at a large size (these should be vector ops, microseconds)."""

    def time_s4d_inv(self):
        s4d_inv(1 << 16)

    def time_lru_ring_init(self):
        lru_ring_init(1 << 16, 0.9, 0.999, rng=0)
