"""asv benchmarks of ``ssmcore.linear_scan`` (forward, forward + backward, peak memory).

Shapes are (channels, L), time last: many channels, a few long channels, and one
very long series (the time-chunked path). ``a`` is time-varying ``(C, L)`` or
constant per channel ``(C, 1)``.
"""

from __future__ import annotations

import numpy as np

import ssmcore
from ssmcore import linear_scan


class LinearScan:
    params = (
        [(1024, 4096), (16, 262144), (1, 4194304)],
        ["float32", "float64", "complex64"],
        ["time_varying", "constant"],
    )
    param_names = ["shape", "dtype", "a"]
    timeout = 300

    def setup(self, shape, dtype, a_kind):
        rng = np.random.default_rng(0)
        a = rng.uniform(0.9, 0.999, shape if a_kind == "time_varying" else (shape[0], 1))
        b = rng.standard_normal(shape)
        if np.dtype(dtype).kind == "c":
            a = a * np.exp(0.05j)
            b = b + 1j * rng.standard_normal(shape)
        self.a = np.ascontiguousarray(a, dtype=dtype)
        self.b = np.ascontiguousarray(b, dtype=dtype)
        self.ct = np.ones(shape, dtype=dtype)
        self.out = np.empty(shape, dtype=dtype)
        # compile (or load from Numba's cache) outside the timed region
        self.time_forward_backward(shape, dtype, a_kind)

    def time_forward(self, shape, dtype, a_kind):
        linear_scan(self.a, self.b)

    def time_forward_into_out(self, shape, dtype, a_kind):
        linear_scan(self.a, self.b, out=self.out)  # no fresh output: compare with the triad

    def time_forward_reverse(self, shape, dtype, a_kind):
        linear_scan(self.a, self.b, reverse=True)

    def time_forward_backward(self, shape, dtype, a_kind):
        _, pullback = ssmcore.vjp("linear_scan", self.a, self.b)
        pullback(self.ct)

    def time_forward_backward_b_only(self, shape, dtype, a_kind):
        _, pullback = ssmcore.vjp("linear_scan", self.a, self.b)
        pullback(self.ct, needs=(False, True, False))  # a frozen: no h read, no ga written

    def peakmem_forward(self, shape, dtype, a_kind):
        linear_scan(self.a, self.b)

    def peakmem_forward_backward(self, shape, dtype, a_kind):
        _, pullback = ssmcore.vjp("linear_scan", self.a, self.b)
        pullback(self.ct)


class LinearScanSmall:
    """Call overhead: validation, dispatch and the serial kernel on tiny inputs."""

    params = ([(1, 16), (8, 256), (64, 512)],)
    param_names = ["shape"]

    def setup(self, shape):
        rng = np.random.default_rng(0)
        self.a = rng.uniform(0.5, 0.9, shape)
        self.b = rng.standard_normal(shape)
        linear_scan(self.a, self.b)

    def time_forward(self, shape):
        linear_scan(self.a, self.b)
