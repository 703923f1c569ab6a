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

