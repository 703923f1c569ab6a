"""asv benchmarks of the convolution mode: SSM kernels (diagonal, DPLR, dense) and fft_conv.

Sizes follow the S4/S4D defaults: H = 256 channels, N = 64 state (32 conjugate
pairs for DPLR), L up to 4096, float32 activations. ``setup`` runs every op once
so that Numba's compilation (cached on disk) never lands in a timing.
"""

from __future__ import annotations

import numpy as np

import ssmcore
from ssmcore import fft_conv, ssm_kernel_dense, ssm_kernel_diag, ssm_kernel_dplr


def _s4d(H, N, dtype=np.complex64, seed=0):
    rng = np.random.default_rng(seed)
    A = np.broadcast_to(-0.5 + 1j * np.pi * np.arange(N), (H, N)).astype(dtype)  # S4D-Lin
    B = np.ones((H, N), dtype)
    C = (rng.normal(size=(H, N)) + 1j * rng.normal(size=(H, N))).astype(dtype)
    real = np.float32 if dtype == np.complex64 else np.float64
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), H)).astype(real)
    return A, B, C, dt


class DiagKernel:
    """ssm_kernel_diag at H=256, N=64 (complex64 parameters, float32 kernel)."""

    params = ([1024, 4096], ["zoh", "bilinear"])
    param_names = ["L", "method"]

    def setup(self, L, method):
        self.args = _s4d(256, 64)
        self.G = np.random.default_rng(1).normal(size=(256, L)).astype(np.float32)
        ssm_kernel_diag(*self.args, L, method=method)
        self.time_vjp(L, method)

    def time_forward(self, L, method):
        ssm_kernel_diag(*self.args, L, method=method)

    def time_vjp(self, L, method):
        _, pullback = ssmcore.vjp("ssm_kernel_diag", *self.args, L, method=method)
        pullback(self.G)

    def peakmem_forward(self, L, method):
        ssm_kernel_diag(*self.args, L, method=method)


class DplrKernel:
    """ssm_kernel_dplr for S4's legs init, rank 1, H=64, 32 conjugate pairs."""

    params = [1024, 4096]
    param_names = ["L"]

    def setup(self, L):
        from ssmcore import nplr

        lam, P, B, _ = nplr("legs", 64)
        rng = np.random.default_rng(2)
        H = 64
        Ct = rng.normal(size=(H, 32)) + 1j * rng.normal(size=(H, 32))
        dt = np.exp(np.linspace(np.log(1e-3), np.log(1e-1), H))
        self.args = (lam, P, B, Ct, dt)
        self.G = rng.normal(size=(H, L))
        self.time_vjp(L)

    def time_forward(self, L):
        ssm_kernel_dplr(*self.args, L)

    def time_vjp(self, L):
        _, pullback = ssmcore.vjp("ssm_kernel_dplr", *self.args, L)
        pullback(self.G)

    def peakmem_forward(self, L):
        ssm_kernel_dplr(*self.args, L)


class DenseKernel:
    """ssm_kernel_dense: 16 dense systems, L = 1024 (O(N^2 L))."""

    params = [16, 64]
    param_names = ["N"]

    def setup(self, N):
        rng = np.random.default_rng(3)
        A = rng.normal(size=(16, N, N)) / np.sqrt(N) * 0.9
        self.args = (A, rng.normal(size=(16, N)), rng.normal(size=(16, N)))
        self.G = rng.normal(size=(16, 1024))
        self.time_vjp(N)

    def time_forward(self, N):
        ssm_kernel_dense(*self.args, 1024)

    def time_vjp(self, N):
        _, pullback = ssmcore.vjp("ssm_kernel_dense", *self.args, 1024)
        pullback(self.G)


class FFTConv:
    """fft_conv of (8, 256, L) float32 inputs with (256, L) kernels and a D skip."""

    params = ([1024, 4096], [False, True])
    param_names = ["L", "bidirectional"]

    def setup(self, L, bidirectional):
        rng = np.random.default_rng(4)
        self.u = rng.normal(size=(8, 256, L)).astype(np.float32)
        self.K = rng.normal(size=((2, 256, L) if bidirectional else (256, L))).astype(np.float32)
        self.D = np.ones(256, np.float32)
        self.G = rng.normal(size=(8, 256, L)).astype(np.float32)
        fft_conv(self.u, self.K, self.D, bidirectional=bidirectional)

    def time_forward(self, L, bidirectional):
        fft_conv(self.u, self.K, self.D, bidirectional=bidirectional)

    def time_vjp(self, L, bidirectional):
        _, pullback = ssmcore.vjp("fft_conv", self.u, self.K, self.D, bidirectional=bidirectional)
        pullback(self.G)

    def peakmem_forward(self, L, bidirectional):
        fft_conv(self.u, self.K, self.D, bidirectional=bidirectional)


class FFTConvSpectrum:
    """fft_conv of one (256, 4096) float32 input with a fixed kernel: spectrum made once vs K."""

    params = [1, 2]
    param_names = ["workers"]

    def setup(self, workers):
        rng = np.random.default_rng(5)
        self.u = rng.normal(size=(256, 4096)).astype(np.float32)
        self.K = rng.normal(size=(256, 4096)).astype(np.float32)
        self.S = ssmcore.fft_conv_spectrum(self.K, 4096, workers=workers)
        fft_conv(self.u, self.S, workers=workers)

    def time_with_spectrum(self, workers):
        fft_conv(self.u, self.S, workers=workers)

    def time_with_kernel(self, workers):
        fft_conv(self.u, self.K, workers=workers)

    def time_make_spectrum(self, workers):
        ssmcore.fft_conv_spectrum(self.K, 4096, workers=workers)
