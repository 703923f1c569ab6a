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


def test_scan_kernels_compile_one_signature_per_dtype():
    # Needless specialisations cost cold compile time: helpers called with constant ints were
    # compiled once per Literal[int] value, and a read-only broadcast h0 (one channel, no h0
    # given) compiled the chunked kernels a second time.
    from ssmcore.backends.numba import scan

    C, L = 3, 50
    a, b, arow = np.full((C, L), 0.9, np.float32), np.ones((C, L), np.float32), np.arange(C)
    h0s = (np.zeros(C, np.float32), np.broadcast_to(np.float32(0), (C,)),  # writable and read-only
           np.broadcast_to(np.float32(0), (1,)))
    for path in ("serial", "channels", "chunked"):
        for h0 in h0s:
            n = h0.shape[0]
            h = scan.scan_fwd(a[:n], arow[:n], b[:n], h0, False, path)
            scan.scan_bwd(a[:n], arow[:n], h, h0, np.ones_like(h), np.zeros(n, np.float32), True, path)
    sigs = {k: v for k, v in compiled_signatures().items() if k.startswith("scan.")}
    literal = {k: s for k, v in sigs.items() for s in v if "Literal" in s}
    assert not literal, literal
    f32 = {k: [s for s in v if "float32" in s] for k, v in sigs.items()}
    assert {k: len(v) for k, v in f32.items() if len(v) > 1} == {}
