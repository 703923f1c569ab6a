"""lfilter (``ssmcore``): the scipy.signal.lfilter drop-in, per channel and batched over filters.

asv: ``cd benchmarks && asv run --python=same --bench bench_lfilter``.
The side-by-side comparison with scipy is ``benchmarks/compare_lfilter.py``.
"""

from __future__ import annotations

import numpy as np
import scipy.signal

import ssmcore
from ssmcore import lfilter


def _butter_bank(F, order, seed=0):
    """F Butterworth low-passes with cutoffs in [0.02, 0.4]: poles near z = 1 for the small ones."""
    cut = np.random.default_rng(seed).uniform(0.02, 0.4, F)
    bs, as_ = zip(*(scipy.signal.butter(order, c) for c in cut))
    return np.stack(bs), np.stack(as_)


class LfilterOneFilter:
    """One low-pass over (C, L) channels with the same total steps (2^20): one series vs 256."""

    params = ([2, 4, 8], [1, 256], ["float32", "float64"])
    param_names = ["order", "channels", "dtype"]
    timeout = 120

    def setup(self, order, channels, dtype):
        if order == 8 and dtype == "float32":
            raise NotImplementedError  # unstable in transfer-function form: not a realistic case
        b, a = scipy.signal.butter(order, 0.05)
        self.b, self.a = b.astype(dtype), a.astype(dtype)
        self.x = np.random.default_rng(1).standard_normal((channels, (1 << 20) // channels)).astype(dtype)
        lfilter(self.b, self.a, self.x)  # compile / load the cached kernel of this size's path

    def time_lfilter(self, order, channels, dtype):
        lfilter(self.b, self.a, self.x)


class LfilterBank:
    """torchaudio-style: F different filters over a (B, F, L) batch, forward and VJP."""

    params = ([16, 128], [2, 4])
    param_names = ["filters", "order"]
    timeout = 180

    def setup(self, filters, order):
        self.b, self.a = _butter_bank(filters, order)
        self.x = np.random.default_rng(2).standard_normal((4, filters, 16_384))
        self.y, self.pullback = ssmcore.vjp("lfilter", self.b, self.a, self.x)
        self.pullback(self.y)  # compile / load the backward kernel

    def time_forward(self, filters, order):
        lfilter(self.b, self.a, self.x)

    def time_backward(self, filters, order):
        self.pullback(self.y)

    def time_backward_x_only(self, filters, order):
        self.pullback(self.y, needs=(False, False, True, False))

    def peakmem_forward_backward(self, filters, order):
        _, pullback = ssmcore.vjp("lfilter", self.b, self.a, self.x)
        pullback(self.y)
