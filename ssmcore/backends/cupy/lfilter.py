"""CuPy GPU kernels of ``lfilter`` (direct form II transposed) and its adjoint.

Same function names and parameter names as :mod:`ssmcore.reference.lfilter` (the
specification; its docstring gives the layout: normalised, zero-padded coefficient
rows ``b`` ``(Rb, K)`` / ``a`` ``(Ra, K)`` or ``(Ra, 1)`` for FIR, channel-to-row maps,
inputs ``(C, L)``, states ``(C, K - 1)``). Arrays in and out are CuPy arrays; inputs
are made contiguous here (``cupy.ascontiguousarray``, a no-op when they already are).
dtypes: float32, float64, complex64, complex128 (long double is NumPy-only).

The CUDA C is ``kernels/lfilter.cu``: one thread per channel, time sequential, the
``(C, L)`` rows loaded and stored through a shared-memory tile (coalesced), the state in
registers for ``K <= 16`` (template buckets, :data:`KCAPS`) and in a ``[i * C + c]``
global workspace for longer filters (:func:`plan_lfilter` chooses). It is compiled with
``--fmad=false``: scipy's operations in scipy's order without FMA contraction, so real
results are bit-identical to scipy's and the Numba backend's. Coefficient gradients
accumulate in float64 (complex128) for float32 (complex64) data, as the reference.

This module owns allocation and the launch configuration (from shapes only); launches
go to CuPy's current stream and nothing here synchronises or copies device data to the
host.

Parallelism is the channels: a single long series runs on one thread (as it does on one
core in scipy), so the GPU pays off for many channels (thousands); a time-parallel
formulation is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._rawmodule import declare, dtype_name
from .scan import _options

__all__ = ["KCAPS", "THREADS", "LfilterPlan", "lfilter_bwd", "lfilter_fwd", "plan_lfilter", "tile_steps"]

THREADS = 128  # channels per block: SSM_LF_THREADS in lfilter.cu
# Register buckets (filters with K <= KCAP coefficients). No 32 bucket: its backward holds
# 5 x 32 values per thread (spilled in any case) and doubled the source's NVRTC time.
KCAPS = (2, 4, 8, 16)
FWD_ROW_BYTES = 128  # SSM_LF_FWD_ROW_BYTES: bytes of one forward tile row (one tile)
BWD_ROW_BYTES = 64  # SSM_LF_BWD_ROW_BYTES: backward tile rows (three tiles: gy/gx, x, y)

_TYPES = ("float", "double", "complex<float>", "complex<double>")
_NAMES = tuple(
    [f"lfilter_{d}_reg<{t}, {k}>" for d in ("fwd", "bwd") for t in _TYPES for k in KCAPS]
    + [f"lfilter_{d}_gen<{t}>" for d in ("fwd", "bwd") for t in _TYPES]
)
# --fmad=false: no FMA contraction, so (z1 + x b1) - y a1 rounds as scipy's loop does.
LFILTER = declare("lfilter.cu", _NAMES, options=_options() + ("--fmad=false",))


@dataclass(frozen=True)
class LfilterPlan:
    """``blocks`` x ``threads`` threads (one per channel) and the kernel's name expression."""

    blocks: int
    threads: int
    kcap: int | None  # register bucket, None for the generic (workspace) kernel
    kernel: str


def tile_steps(itemsize: int, backward: bool = False) -> int:
    """Time steps per shared-memory tile (the kernel's ``Tile<T, ROW_BYTES>::steps``)."""
    return (BWD_ROW_BYTES if backward else FWD_ROW_BYTES) // int(itemsize)


def plan_lfilter(C: int, K: int, dtype: Any, backward: bool = False, threads: int | None = None) -> LfilterPlan:
    """One thread per channel in blocks of :data:`THREADS`; the smallest register bucket holding ``K``."""
    if C < 0 or K < 1:
        raise ValueError(f"lfilter (CuPy): expected C >= 0 and K >= 1, got {(C, K)}")
    t = dtype_name(np.dtype(dtype))
    if t not in _TYPES:
        raise TypeError(f"lfilter (CuPy): no CUDA instantiation for dtype {np.dtype(dtype).name}")
    threads = THREADS if threads is None else threads
    d = "bwd" if backward else "fwd"
    kcap = next((k for k in KCAPS if K <= k), None)
    kernel = f"lfilter_{d}_reg<{t}, {kcap}>" if kcap is not None else f"lfilter_{d}_gen<{t}>"
    return LfilterPlan(-(-C // threads), threads, kcap, kernel)


def _i64(v: int) -> np.int64:
    return np.int64(v)


def _i32(v: int) -> np.int32:
    return np.int32(v)


def _transposed(cp: Any, rows: Any, rowmap: Any) -> Any:
    """The channels' coefficient rows as a ``(K, C)`` array (coalesced reads in the generic kernels)."""
    return cp.ascontiguousarray(rows[rowmap].T)


def lfilter_fwd(b: Any, brow: Any, a: Any, arow: Any, x: Any, zi: Any) -> tuple[Any, Any]:
    """``y`` ``(C, L)`` and ``zf`` ``(C, K - 1)`` (see :func:`ssmcore.reference.lfilter.lfilter_fwd`)."""
    import cupy as cp

    x = cp.ascontiguousarray(x)
    dt = x.dtype
    b, a = (cp.ascontiguousarray(v, dtype=dt) for v in (b, a))
    brow, arow = (cp.ascontiguousarray(v, dtype=cp.int64) for v in (brow, arow))
    C, L = x.shape
    K, Ka = b.shape[1], a.shape[1]
    zi = cp.ascontiguousarray(zi, dtype=dt).reshape(C, K - 1)
    y = cp.empty((C, L), dtype=dt)
    zf = cp.empty((C, K - 1), dtype=dt)
    if C == 0:
        return y, zf
    plan = plan_lfilter(C, K, dt)
    dims = (_i64(C), _i64(L), _i32(K), _i32(Ka))
    if plan.kcap is not None:
        args = (b, brow, a, arow, x, zi, y, zf) + dims
    else:
        bt = _transposed(cp, b, brow)
        at = bt if Ka == 1 else _transposed(cp, a, arow)  # FIR: never read
        ws = cp.empty((K - 1, C), dtype=dt)
        args = (bt, at, x, zi, ws, y, zf) + dims
    LFILTER.get(plan.kernel)((plan.blocks,), (plan.threads,), args)
    return y, zf


def lfilter_bwd(
    b: Any,
    brow: Any,
    a: Any,
    arow: Any,
    x: Any,
    y: Any,
    gy: Any,
    gzf: Any,
    need_coeffs: bool = True,
) -> tuple[Any, Any | None, Any | None, Any]:
    """``gx``, ``gb``, ``ga``, ``gzi`` (see :func:`ssmcore.reference.lfilter.lfilter_bwd`)."""
    import cupy as cp

    x = cp.ascontiguousarray(x)
    dt = x.dtype
    b, a, y, gy = (cp.ascontiguousarray(v, dtype=dt) for v in (b, a, y, gy))
    brow, arow = (cp.ascontiguousarray(v, dtype=cp.int64) for v in (brow, arow))
    C, L = x.shape
    K, Ka = b.shape[1], a.shape[1]
    gzf = cp.ascontiguousarray(gzf, dtype=dt).reshape(C, K - 1)
    acc = np.result_type(dt, np.float64)
    gx = cp.empty((C, L), dtype=dt)
    gzi = cp.empty((C, K - 1), dtype=dt)
    need = bool(need_coeffs)
    # Written by the kernel only with need_coeffs; otherwise gx stands in as a valid pointer.
    gb = cp.empty((C, K), dtype=acc) if need else None
    ga = cp.empty((C, K), dtype=acc) if need else None
    if C == 0:
        return gx, gb, ga, gzi
    plan = plan_lfilter(C, K, dt, backward=True)
    pgb = gx if gb is None else gb
    pga = gx if ga is None else ga
    dims = (_i64(C), _i64(L), _i32(K), _i32(Ka), _i32(need))
    if plan.kcap is not None:
        args = (b, brow, a, arow, x, y, gy, gzf, gx, pgb, pga, gzi) + dims
    else:
        bt = _transposed(cp, b, brow)
        at = bt if Ka == 1 else _transposed(cp, a, arow)
        ws = cp.empty((K, C), dtype=dt)
        wsb = cp.empty((K, C), dtype=acc)
        wsa = cp.empty((K, C), dtype=acc)
        args = (bt, at, x, y, gy, gzf, ws, wsb, wsa, gx, pgb, pga, gzi) + dims
    LFILTER.get(plan.kernel)((plan.blocks,), (plan.threads,), args)
    return gx, gb, ga, gzi
