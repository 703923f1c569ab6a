"""CuPy GPU kernels of Mamba-2 SSD: chunked forward, chunk-local backward.

Same functions and arguments as the specification :mod:`ssmcore.reference.ssd`
(``ssd_forward``, ``ssd_backward``; see there for the maths and conventions) and
the Numba launchers of :mod:`ssmcore.backends.numba.ssd`: inputs arrive validated,
all of one dtype (float32 or float64, also the accumulation type); absent ``D``,
``h0``, ``reset`` and ``gfinal`` arrive as ``None`` and this module allocates
zeros / no resets. Arrays in and out are CuPy arrays.

The CUDA C is ``kernels/ssd.cu`` (design notes at its top), mamba_ssm's chunked
matrix form: per (batch, head, chunk) the cumulative log-decays, the chunk's own
end state, a sequential state-passing pass over chunks per (batch, head, p, n),
then the outputs (intra-chunk decay-weighted C.B products over 32 x 32 tiles in
shared memory, plus the carried state). The forward returns the states entering
every chunk, (batch, H, nchunk + 1, P, N), as the reference does; the backward
runs the mirror state pass for the state cotangents (same size) and then every
chunk independently. Neither pass stores a (batch, L, H, P, N) value; scratch is
(batch, H, L) (cumulative decays and their gradients) and (batch, L) (reset
positions). Reductions: every output element has one writer (no atomics): gB / gC
come from a kernel that sums the heads of a group in order (no per-head copy), and
the per-(batch, head, chunk) gA / gD partials are summed here with CuPy's
deterministic ``sum``, so results are bitwise reproducible.

Launches go to CuPy's current stream; nothing here synchronises or copies to the
host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._rawmodule import declare
from .scan import _options

__all__ = ["THREADS", "TILE", "SSDPlan", "plan_ssd", "ssd_backward", "ssd_forward"]

THREADS = 256  # SSM_SSD_THREADS in ssd.cu: threads per block of the per-chunk kernels
TILE = 32  # SSM_SSD_TILE: steps per side of a shared-memory weight tile
PASS_THREADS = 128  # threads per block of the elementwise kernels (cumsum, state passes)

_KERNELS = ("ssd_cumsum", "ssd_chunk_state", "ssd_state_pass", "ssd_chunk_out", "ssd_bwd_dstate_local",
            "ssd_bwd_state_pass", "ssd_bwd_chunk", "ssd_bwd_dbc")
_CXX = {"float32": "float", "float64": "double"}

SSD = declare("ssd.cu", [f"{k}<{t}>" for k in _KERNELS for t in ("float", "double")], options=_options())


# --------------------------------------------------------------------------- planning (plain Python)


@dataclass(frozen=True)
class SSDPlan:
    """Launch configuration of one SSD call.

    ``nchunk`` chunks of ``chunk`` steps; ``chunk_blocks`` blocks of ``threads``
    (one per (batch, head, chunk)) for the per-chunk kernels; ``cumsum_grid``
    and ``pass_grid`` blocks of ``pass_threads`` for the per-(batch, head, chunk)
    cumulative sums and the per-(batch, head, p, n) state passes; ``names``
    maps each kernel to its declared instantiation.
    """

    chunk: int
    nchunk: int
    threads: int
    chunk_blocks: int
    ntile: int
    dbc_blocks: int
    pass_threads: int
    cumsum_grid: int
    pass_grid: int
    names: dict[str, str]


def kernel_names(dtype: Any) -> dict[str, str]:
    """The declared instantiation of every SSD kernel for ``dtype`` (float32 or float64)."""
    t = _CXX.get(np.dtype(dtype).name)
    if t is None:
        raise TypeError(f"ssd (CuPy): no CUDA instantiation for dtype {np.dtype(dtype).name}; "
                        f"expected float32 or float64")
    return {k: f"{k}<{t}>" for k in _KERNELS}


def plan_ssd(nb: int, L: int, H: int, P: int, G: int, N: int, chunk_size: int, dtype: Any) -> SSDPlan:
    """Grid sizes of the SSD kernels for x (nb, L, H, P), B / C (nb, L, G, N).

    Raises ``ValueError`` for negative sizes, ``chunk_size < 1`` or ``H`` not a
    multiple of ``G``, ``TypeError`` for a dtype without an instantiation.
    """
    if min(nb, L, H, P, G, N) < 0 or G < 1 or H % G:
        raise ValueError(f"ssd (CuPy): expected sizes >= 0 with heads a multiple of groups >= 1, got "
                         f"(batch, L, heads, headdim, groups, dstate) = {(nb, L, H, P, G, N)}")
    if int(chunk_size) < 1:
        raise ValueError(f"ssd (CuPy): chunk_size must be >= 1, got {chunk_size}")
    names = kernel_names(dtype)
    Q = int(chunk_size)
    nc = -(-L // Q)
    items = nb * H * nc
    ntile = -(-min(Q, max(L, 1)) // TILE)  # tiles of the longest chunk
    return SSDPlan(Q, nc, THREADS, items, ntile, nb * G * nc * ntile, PASS_THREADS, -(-items // PASS_THREADS),
                   -(-(nb * H * P * N) // PASS_THREADS), names)


# --------------------------------------------------------------------------- launchers


def _i64(v: int) -> np.int64:
    return np.int64(v)


def _inputs(cp: Any, x, dt, A, B, C, D, reset):
    c = cp.ascontiguousarray
    x, dt, A, B, C = c(x), c(dt), c(A), c(B), c(C)
    nb, L, H, P = x.shape
    D = cp.zeros((H, P), dtype=x.dtype) if D is None else c(D)
    reset = cp.zeros((nb, L), dtype=cp.bool_) if reset is None else c(reset, dtype=cp.bool_)
    return x, dt, A, B, C, D, reset


def _cumsum(cp: Any, plan: SSDPlan, dt, A, reset, nb, L, H):
    """Launch ``ssd_cumsum``: per-chunk cumulative log-decays and reset positions."""
    acs = cp.empty((nb, H, L), dtype=dt.dtype)
    first = cp.empty((nb, L), dtype=cp.int32)
    SSD.get(plan.names["ssd_cumsum"])((plan.cumsum_grid,), (plan.pass_threads,),
                                      (dt, A, reset, acs, first, _i64(nb), _i64(L), _i64(H), _i64(plan.chunk),
                                       _i64(plan.nchunk)))
    return acs, first


def ssd_forward(x, dt, A, B, C, D, h0, reset, chunk_size):
    """Chunked SSD forward; returns ``(y, states)`` (see ``ssmcore.reference.ssd``)."""
    import cupy as cp

    x, dt, A, B, C, D, reset = _inputs(cp, x, dt, A, B, C, D, reset)
    nb, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    plan = plan_ssd(nb, L, H, P, G, N, chunk_size, x.dtype)
    h0 = cp.zeros((nb, H, P, N), dtype=x.dtype) if h0 is None else cp.ascontiguousarray(h0)
    y = cp.empty((nb, L, H, P), dtype=x.dtype)
    states = cp.empty((nb, H, plan.nchunk + 1, P, N), dtype=x.dtype)
    if L == 0 or plan.chunk_blocks == 0:
        states[:, :, 0] = h0
        return y, states
    if P * N == 0:
        states[...] = 0
    acs, first = _cumsum(cp, plan, dt, A, reset, nb, L, H)
    dims = (_i64(nb), _i64(L), _i64(H), _i64(P), _i64(G), _i64(N), _i64(plan.chunk), _i64(plan.nchunk))
    grid, block = (plan.chunk_blocks,), (plan.threads,)
    SSD.get(plan.names["ssd_chunk_state"])(grid, block, (x, dt, B, acs, first, states) + dims)
    if plan.pass_grid:
        SSD.get(plan.names["ssd_state_pass"])((plan.pass_grid,), (plan.pass_threads,),
                                              (h0, acs, first, states, dims[0], dims[1], dims[2], dims[3],
                                               dims[5], dims[6], dims[7]))
    SSD.get(plan.names["ssd_chunk_out"])(grid, block, (x, dt, B, C, D, acs, first, states, y) + dims)
    return y, states


def ssd_backward(x, dt, A, B, C, D, reset, states, gy, gfinal, chunk_size):
    """Backward of :func:`ssd_forward`; returns ``(gx, gdt, gA, gB, gC, gD, gh0)``."""
    import cupy as cp

    x, dt, A, B, C, D, reset = _inputs(cp, x, dt, A, B, C, D, reset)
    nb, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    plan = plan_ssd(nb, L, H, P, G, N, chunk_size, x.dtype)
    dtype = x.dtype
    if tuple(states.shape) != (nb, H, plan.nchunk + 1, P, N):
        raise ValueError(f"ssd_backward (CuPy): states of shape {tuple(states.shape)} do not match chunks of "
                         f"{plan.chunk} steps; expected {(nb, H, plan.nchunk + 1, P, N)}")
    states = cp.ascontiguousarray(states)
    gy = cp.ascontiguousarray(gy)
    gfinal = cp.zeros((nb, H, P, N), dtype=dtype) if gfinal is None else cp.ascontiguousarray(gfinal)
    gx = cp.empty((nb, L, H, P), dtype=dtype)
    gdt = cp.empty((nb, L, H), dtype=dtype)
    gB = cp.empty((nb, L, G, N), dtype=dtype)
    gC = cp.empty((nb, L, G, N), dtype=dtype)
    gA_p = cp.zeros((nb, H, plan.nchunk), dtype=dtype)
    gD_p = cp.zeros((nb, H, plan.nchunk, P), dtype=dtype)
    gh0 = cp.empty((nb, H, P, N), dtype=dtype)
    if L == 0 or plan.chunk_blocks == 0:
        gh0[...] = gfinal
    else:
        acs, first = _cumsum(cp, plan, dt, A, reset, nb, L, H)
        dims = (_i64(nb), _i64(L), _i64(H), _i64(P), _i64(G), _i64(N), _i64(plan.chunk), _i64(plan.nchunk))
        grid, block = (plan.chunk_blocks,), (plan.threads,)
        dstates = cp.empty((nb, H, plan.nchunk + 1, P, N), dtype=dtype)
        SSD.get(plan.names["ssd_bwd_dstate_local"])(grid, block, (C, gy, acs, first, dstates) + dims)
        if plan.pass_grid:
            SSD.get(plan.names["ssd_bwd_state_pass"])((plan.pass_grid,), (plan.pass_threads,),
                                                      (gfinal, acs, first, dstates, gh0, dims[0], dims[1],
                                                       dims[2], dims[3], dims[5], dims[6], dims[7]))
        gacs = cp.empty((nb, H, L), dtype=dtype)
        SSD.get(plan.names["ssd_bwd_chunk"])(grid, block, (x, dt, A, B, C, D, reset, acs, first, states, dstates,
                                                           gy, gacs, gx, gdt, gA_p, gD_p) + dims)
        # heads of one group share B and C: one block per (batch, group, chunk, tile) sums them in order
        SSD.get(plan.names["ssd_bwd_dbc"])((plan.dbc_blocks,), block, (x, dt, B, C, acs, first, states, dstates, gy,
                                                                       gB, gC) + dims + (_i64(plan.ntile),))
    return gx, gdt, gA_p.sum(axis=(0, 2)), gB, gC, gD_p.sum(axis=(0, 2)), gh0
