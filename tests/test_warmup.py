"""``ssmcore.warmup`` compiles what real calls use (no new kernel signature afterwards)."""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore
from ssmcore._warmup import _OPS, compiled_signatures


def test_every_numba_op_is_warmed():
    # An op added to the registry with a Numba kernel must get a warmer in ssmcore._warmup.
    from ssmcore.dispatch import capabilities

    numba_ops = {op for op in ssmcore.list_ops() if "numba" in capabilities()[op]}
    assert numba_ops == set(_OPS)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown ops"):
        ssmcore.warmup(ops=["frobnicate"])
    with pytest.raises(ValueError, match="unknown dtypes"):
        ssmcore.warmup(ops=["discretize_diag"], dtypes=["float16"])


def test_real_calls_after_warmup_compile_nothing_new():
    # discretize_diag has a serial and a prange driver: sizes on both sides of the threshold.
    ssmcore.warmup(ops=["discretize_diag"], dtypes=["float64", "complex128"])
    before = compiled_signatures()
    for dt in (np.float64, np.complex128):
        for R, N in ((3, 5), (1024, 256)):
            A, B = -np.ones((R, N), dt), np.ones((R, N, 2), dt)
            for method in ("zoh", "bilinear"):
                out, pullback = ssmcore.vjp("discretize_diag", A, B, np.full((R, 1), 0.1), method)
                pullback(tuple(np.ones_like(o) for o in out))
    after = compiled_signatures()
    new = {k: after[k] - before.get(k, set()) for k in after if after[k] - before.get(k, set())}
    assert not new, f"compiled after warmup: {new}"
