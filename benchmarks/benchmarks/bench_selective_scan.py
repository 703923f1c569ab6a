"""asv benchmarks of the selective scan (Mamba-1): forward, forward+backward, decoding step.

Inputs are float32 like a Mamba block (variable B/C, D, z, delta_bias, softplus).
Side-by-side numbers against a PyTorch reference: ``compare_selective_scan.py``.
"""

from __future__ import annotations

import numpy as np


def _inputs(batch, D, L, N, cplx=False):
    rng = np.random.default_rng(0)
    f = np.float32
    A = -np.exp(np.log(np.arange(1, N + 1, dtype=f)))[None, :].repeat(D, 0)
    BC = lambda: rng.standard_normal((batch, N, L)).astype(f)  # noqa: E731
    B, C = BC(), BC()
    if cplx:
        A = (0.5 * A + 1j * np.pi * np.arange(N)[None, :]).astype(np.complex64)
        B, C = (B + 1j * BC()).astype(np.complex64), (C + 1j * BC()).astype(np.complex64)
    args = (
        rng.standard_normal((batch, D, L)).astype(f),
        (0.5 * rng.random((batch, D, L))).astype(f),
        A, B, C,
    )
    kw = dict(
        D=rng.standard_normal(D).astype(f),
        z=rng.standard_normal((batch, D, L)).astype(f),
        delta_bias=(rng.standard_normal(D) - 4).astype(f),
        delta_softplus=True,
    )
    return args, kw


class SelectiveScan:
    params = ([(1, 256, 1024, 16), (2, 768, 2048, 16)], ["real", "complex"])
    param_names = ["shape (batch, D, L, N)", "A"]
    timeout = 300

    def setup(self, shape, kind):
        import ssmcore
        from ssmcore import selective_scan

        self.args, self.kw = _inputs(*shape, cplx=kind == "complex")
        self.fn = selective_scan
        self.vjp = ssmcore.vjp
        self.cot = np.ones_like(self.args[0])
        small, skw = _inputs(1, 4, 8, shape[3], cplx=kind == "complex")
        _, pb = ssmcore.vjp("selective_scan", *small, **skw)  # load/compile the kernels outside timing
        pb(np.ones_like(small[0]))

    def time_forward(self, shape, kind):
        self.fn(*self.args, **self.kw)

    def time_forward_backward(self, shape, kind):
        _, pb = self.vjp("selective_scan", *self.args, **self.kw)
        pb(self.cot)

    def peakmem_forward_backward(self, shape, kind):
        _, pb = self.vjp("selective_scan", *self.args, **self.kw)
        pb(self.cot)


class SelectiveStateUpdate:
    # One decoding step of a Mamba block (D = 1536, N = 16) for a few batch sizes.
    params = [1, 16]
    param_names = ["batch"]

    def setup(self, b):
        from ssmcore import selective_state_update

        D, N = 1536, 16
        rng = np.random.default_rng(0)
        f = np.float32
        self.fn = selective_state_update
        self.args = (
            np.zeros((b, D, N), f), rng.standard_normal((b, D)).astype(f), rng.random((b, D)).astype(f),
            -np.ones((D, N), f), rng.standard_normal((b, N)).astype(f), rng.standard_normal((b, N)).astype(f),
        )

    def time_step(self, b):
        self.fn(*self.args, dt_softplus=True)
