"""asv benchmarks of selective_state_update (Mamba's decode step) on the CPU.

Plain form (batch, D 1536, N 16) as in Mamba-1 and the heads form of Mamba-2
(batch, 24 heads, dim 64, N 128, one group); functional, in place, with cache
indices, and the forward + backward of the registered op.
"""

from __future__ import annotations

import numpy as np


def _inputs(form, b, dtype=np.float32):
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    if form == "plain":
        cs, N, bshape = (1536,), 16, (b, 16)
    else:
        cs, N, bshape = (24, 64), 128, (b, 1, 128)
    return dict(state=f(b, *cs, N), x=f(b, *cs), dt=(0.5 * rng.random((b, *cs))).astype(dtype),
                A=(-rng.random((*cs, N))).astype(dtype), B=f(*bshape), C=f(*bshape), D=f(*cs),
                z=f(b, *cs), dt_bias=f(*cs), dt_softplus=True)


class StateUpdate:
    params = (["plain", "heads"], [1, 16])
    param_names = ["form", "batch"]

    def setup(self, form, b):
        import ssmcore

        self.ssmcore = ssmcore
        self.kw = _inputs(form, b)
        self.state = self.kw["state"].copy()
        cache = np.concatenate([self.kw["state"]] * 4)  # a cache of 4x the batch, rows picked by index
        self.kw_idx = dict(self.kw, state=cache, state_batch_indices=np.arange(b)[::-1] * 4)
        out = ssmcore.selective_state_update(**self.kw)  # compile
        ssmcore.selective_state_update(**self.kw_idx)
        self.cot = tuple(np.ones_like(o) for o in out)

    def time_step(self, form, b):
        self.ssmcore.selective_state_update(**self.kw)

    def time_step_inplace(self, form, b):
        self.ssmcore.selective_state_update(**dict(self.kw, state=self.state), inplace=True)

    def time_step_indices(self, form, b):
        self.ssmcore.selective_state_update(**self.kw_idx)

    def time_forward_backward(self, form, b):
        _, pb = self.ssmcore.vjp("selective_state_update", **self.kw)
        pb(self.cot)
