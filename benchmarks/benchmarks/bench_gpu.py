"""asv benchmarks of ssmcore's CuPy kernels (skipped without a CUDA device).

``linear_scan`` forward and forward + backward on CuPy arrays, for the two regimes
of the GPU kernels: many channels (8, 4096, 4096) and few long series (1, 64, 2^20),
in float32, float64 and complex64, with realistic decays a ~ U[0.9, 0.999]. Each
timed function synchronises the device, so asv's wall clock covers the kernels,
not only their launch. ``setup`` raises NotImplementedError where there is no
device or the op has no CuPy kernel yet, which asv reports as skipped.
"""

from __future__ import annotations

import numpy as np

import ssmcore
from ssmcore.dispatch import gpu_available


def _skip_without_device() -> None:
    if not gpu_available():
        raise NotImplementedError("needs a CUDA device")


class LinearScanGPU:
    params = (
        [(8, 4096, 4096), (1, 64, 1 << 20)],
        ["float32", "float64", "complex64"],
    )
    param_names = ["shape", "dtype"]
    timeout = 300

    def setup(self, shape, dtype):
        _skip_without_device()
        import cupy as cp

        self.cp = cp
        rng = np.random.default_rng(0)
        a = rng.uniform(0.9, 0.999, shape)
        b = rng.standard_normal(shape)
        if np.dtype(dtype).kind == "c":
            a = a * np.exp(1j * rng.uniform(-0.1, 0.1, shape))
            b = b + 1j * rng.standard_normal(shape)
        self.a = cp.asarray(a.astype(dtype))
        self.b = cp.asarray(b.astype(dtype))
        self.ct = cp.ones(shape, dtype=dtype)
        try:  # compile (NVRTC, or CuPy's disk cache) outside the timed region
            self.time_forward_backward(shape, dtype)
        except Exception as exc:
            if "no CuPy kernel" in str(exc):
                raise NotImplementedError(str(exc)) from None
            raise

    def time_forward(self, shape, dtype):
        ssmcore.linear_scan(self.a, self.b)
        self.cp.cuda.Device().synchronize()

    def time_forward_backward(self, shape, dtype):
        _, pullback = ssmcore.vjp("linear_scan", self.a, self.b)
        pullback(self.ct)
        self.cp.cuda.Device().synchronize()



class _OpGPU:
    """One registered op on CuPy arrays: forward, and forward + backward through ``ssmcore.vjp``.

    Subclasses give ``op`` and ``inputs()`` (NumPy arrays and options at the
    issue's sizes); everything else is shared.
    """

    op = ""
    timeout = 300

    def inputs(self, rng):  # -> (args as NumPy arrays or scalars, keyword options)
        raise NotImplementedError

    def setup(self, *params):
        _skip_without_device()
        import cupy as cp

        self.cp = cp
        args, self.kw = self.inputs(np.random.default_rng(0), *params)
        self.args = tuple(cp.asarray(x) if isinstance(x, np.ndarray) else x for x in args)
        try:  # compile outside the timed region
            out, pullback = ssmcore.vjp(self.op, *self.args, **self.kw)
        except Exception as exc:
            if "no CuPy kernel" in str(exc):
                raise NotImplementedError(str(exc)) from None
            raise
        self.ct = tuple(cp.ones_like(o) for o in out) if isinstance(out, tuple) else cp.ones_like(out)
        pullback(self.ct)
        cp.cuda.Device().synchronize()

    def time_forward(self, *params):
        ssmcore.get_op(self.op).fn(*self.args, **self.kw)
        self.cp.cuda.Device().synchronize()

    def time_forward_backward(self, *params):
        _, pullback = ssmcore.vjp(self.op, *self.args, **self.kw)
        pullback(self.ct)
        self.cp.cuda.Device().synchronize()


class FFTConvGPU(_OpGPU):
    """fft_conv u (16, 1024, 4096), K (1024, 4096) float32 (S4's FFTConv sizes)."""

    op = "fft_conv"

    def inputs(self, rng):
        u = rng.standard_normal((16, 1024, 4096)).astype(np.float32)
        K = (rng.standard_normal((1024, 4096)) * np.exp(-np.arange(4096) / 512)).astype(np.float32)
        return (u, K), {}


class SSMKernelDiagGPU(_OpGPU):
    """ssm_kernel_diag (S4D-Lin) H 1024, N 64 conjugate pairs, L 4096."""

    op = "ssm_kernel_diag"

    def inputs(self, rng):
        H, N, L = 1024, 64, 4096
        A = np.broadcast_to(ssmcore.s4d_lin(2 * N), (H, N)).copy()
        C = (rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))).astype(np.complex64)
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), H))
        return (A.astype(np.complex64), np.ones((H, N), np.complex64), C, dt, L), {}


class SSMKernelDPLRGPU(_OpGPU):
    """ssm_kernel_dplr (S4, HiPPO-LegS DPLR) H 256, N 64, L 4096."""

    op = "ssm_kernel_dplr"

    def inputs(self, rng):
        H, N, L = 256, 64, 4096
        Lambda, P, B = ssmcore.dplr("legs", 2 * N, H=H)  # (H, N), (1, H, N), (H, N)
        C = rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), H))
        return (Lambda, P, B, C, dt, L), {}


class DiscretizeDiagGPU(_OpGPU):
    """discretize_diag zoh on (8192, 4096) complex64 (an elementwise pass: bandwidth-bound)."""

    op = "discretize_diag"

    def inputs(self, rng):
        shape = (8192, 4096)
        A = (-rng.uniform(0.1, 1, shape) + 1j * rng.uniform(-10, 10, shape)).astype(np.complex64)
        B = np.ones(shape, np.complex64)
        dt = np.float32(0.01)
        return (A, B, float(dt)), {"method": "zoh"}


class DiscretizeDenseGPU(_OpGPU):
    """discretize zoh on a stack of 100000 4 x 4 systems (batched Pade expm)."""

    op = "discretize"

    def inputs(self, rng):
        A = rng.standard_normal((100_000, 4, 4)) - 2 * np.eye(4)
        B = rng.standard_normal((100_000, 4, 1))
        return (A, B, 0.01), {"method": "zoh"}


class LfilterGPU(_OpGPU):
    """lfilter: Butterworth order 4, float32, x (4096, 2^16) (one thread per channel: bandwidth-bound)."""

    op = "lfilter"

    def inputs(self, rng):
        from scipy import signal

        b, a = signal.butter(4, 0.1)
        x = rng.standard_normal((4096, 1 << 16), dtype=np.float32)
        return (b.astype(np.float32), a.astype(np.float32), x), {}
