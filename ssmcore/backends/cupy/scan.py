"""CuPy GPU kernels of the linear scan h_t = a_t h_{t-1} + b_t (forward and fused backward).

Same function names and signatures as :mod:`ssmcore.reference.scan` (the
specification) and :mod:`ssmcore.backends.numba.scan`; the layout contract
(``a`` rows ``(Ra, La)`` with ``La`` in ``{1, L}``, row map ``arow``, ``b``
``(C, L)``, one dtype among float32/float64/complex64/complex128) is documented
there. Arrays in and out are CuPy arrays; non-contiguous inputs are made
contiguous here (``cupy.ascontiguousarray``, a no-op when they already are).

The CUDA C lives in ``kernels/scan.cu`` (helpers shared with later kernels in
``kernels/common.cuh``), declared below with one instantiation per dtype and
compiled by NVRTC on first use. Launches go to CuPy's current stream; nothing
here synchronises or copies device data to the host (the planner needs only
shapes, device attributes, the kernels' register counts and pointer
alignments, all known on the host).

Work split (:func:`plan_scan`), one warp per (channel, chunk) of time, walking
tiles of 32 lanes x 4 consecutive steps (16-byte vector loads where rows are
aligned) with a warp-shuffle scan of the steps' affine maps:

* ``"channels"``: enough channels to fill the GPU (or short series): one chunk
  per channel, started from ``h0``. Memory traffic: read a, b, write h once.
* ``"chunked"``: few long series. Time is cut into chunks of ``chunk`` steps
  (a multiple of the 128-step tile), as many as make one full wave of the
  tile kernel's resident warps (:func:`resident_warps`). Pass 1 writes each
  chunk's map
  (first coefficient, product of coefficients, end state from its first
  input); ``scan_carry`` scans those maps per channel into each chunk's true
  start state (no division by cumulative products); pass 2 recomputes every
  chunk from its start and writes h. Workspace: three ``(C, nchunk)`` arrays
  plus the starts; traffic: a, b read twice, h written once.

The backward is the same recurrence in the adjoint's order (the reverse of the
forward's) with coefficients shifted by one step (REFERENCE.md section 3):
``g_s = a_{s-1} g_{s-1} + gh_s`` with ``g_{-1} = gfinal``, ``ga = g h_prev``,
``gh0 = a g`` at the last adjoint step. Constant-in-time ``ga`` is reduced
deterministically: per-lane partial sums, a butterfly warp sum per chunk, then
a fixed-order sum over chunks (no atomics).

NaN and inf: inside a lane the steps run as the sequential loop does. Where maps
are combined, a map never starts from an identity (1, 0) and a zero state is
applied as ``b + f * 0`` (see ``common.cuh``), so the a * 0 terms that turn a
later inf into NaN never appear. What no reassociated scan can reproduce: a
run whose coefficient product is 0 * inf (a zero coefficient followed by an
infinite one inside one combined run), or one that over/underflows while the
sequential states stay finite; there the result can be NaN, inf or 0 where the
loop's is not.
:func:`_chunked_model_fwd` and :func:`_chunked_model_bwd` are NumPy models of
exactly these kernels (same chunks, tiles, lanes and combine order), which the
CPU tests check against the reference.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._rawmodule import KERNEL_DIR, declare, dtype_name

__all__ = ["PATHS", "ScanPlan", "plan_scan", "resident_warps", "scan_bwd", "scan_fwd"]

LANES = 32
STEPS = 4  # consecutive time steps per lane and tile
TILE = LANES * STEPS  # steps per warp tile; chunk lengths are multiples of it
THREADS = 256  # threads per block of the tile and summary kernels (8 warps)
WARPS_PER_SM = 32  # warps per SM the planner aims at when the kernel's occupancy is not given
MIN_CHUNK_BYTES = 1 << 12  # bytes of b per chunk (8 tiles of float32): shorter chunks cost more in
# per-chunk start-up and carry scan than the extra warps gain
CARRY_THREADS = 512  # threads per channel of scan_carry (4 chunk maps each per round)
CARRY_PER_THREAD = 4  # must match SSM_CARRY_PER_THREAD in scan.cu
GA_SUM_THREADS = 256  # threads per channel of scan_ga_sum (a power of two, at most 1024)
PATHS = ("auto", "channels", "chunked")

_KERNELS = ("scan_fwd_tiles", "scan_fwd_summary", "scan_bwd_tiles", "scan_bwd_summary", "scan_carry", "scan_ga_sum")
_TYPES = ("float", "double", "complex<float>", "complex<double>")


def _options() -> tuple[str, ...]:
    """NVRTC options: the kernel folder for ``#include "common.cuh"`` and the header's digest.

    CuPy caches binaries by source text and options; the included header is
    neither, so its digest goes into the options to invalidate the cache when
    the header changes. The path is computed at run time (never stored).
    """
    digest = hashlib.sha1((KERNEL_DIR / "common.cuh").read_bytes()).hexdigest()[:16]
    return (f"-I{KERNEL_DIR}", f"-DSSMCORE_COMMON_CUH_SHA1=0x{digest}")


SCAN = declare("scan.cu", [f"{k}<{t}>" for k in _KERNELS for t in _TYPES], options=_options())


# --------------------------------------------------------------------------- planning (plain Python)


@dataclass(frozen=True)
class ScanPlan:
    """How one scan is split: ``nchunk`` chunks of ``chunk`` steps per channel.

    ``path`` is ``"channels"`` (one chunk per channel, ``chunk == L``) or
    ``"chunked"`` (passes 1 and 2 plus the carry scan); ``blocks`` x ``threads``
    is the grid of the tile and summary kernels (one warp per channel and chunk).
    """

    path: str
    nchunk: int
    chunk: int
    blocks: int
    threads: int


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def resident_warps(num_regs: int, threads: int = THREADS, max_threads_per_sm: int = 2048,
                   regs_per_sm: int = 65536, max_blocks_per_sm: int = 32) -> int:
    """Warps of a kernel that fit on one SM at once, from its registers per thread.

    Registers are allocated per warp in units of 256; a block needs all its
    warps' registers (the kernels use no shared memory that would limit more).
    """
    warps = threads // LANES
    per_warp = _round_up(max(int(num_regs), 1) * LANES, 256)
    blocks = min(regs_per_sm // (per_warp * warps), max_threads_per_sm // threads, max_blocks_per_sm)
    return max(1, blocks) * warps


def plan_scan(C: int, L: int, itemsize: int, sm_count: int, path: str = "auto", chunk: int | None = None,
              warps_per_sm: int = WARPS_PER_SM) -> ScanPlan:
    """Choose the work split of a ``(C, L)`` scan on a GPU with ``sm_count`` SMs.

    The GPU needs about ``sm_count * warps_per_sm`` warps of work (the
    launchers pass the tile kernel's :func:`resident_warps`, so that the
    chunked regime runs in one full wave, without a partial second one). With at
    least half that many channels (or series shorter than two minimum chunks)
    every channel is one warp (``"channels"``). Otherwise each channel is cut
    into enough chunks to give that many warps, each chunk at least
    ``MIN_CHUNK_BYTES`` of b (so pass 1's per-chunk cost stays small) and a
    multiple of :data:`TILE` steps (``"chunked"``).

    ``path`` forces a regime (``"auto"``, ``"channels"``, ``"chunked"``);
    ``chunk`` forces the chunk length of the chunked regime (tests use it;
    rounded up to a multiple of :data:`TILE`).
    """
    if path not in PATHS:
        raise ValueError(f"linear_scan: unknown path {path!r}; expected one of {PATHS}")
    if C < 0 or L < 0 or itemsize <= 0 or sm_count <= 0:
        raise ValueError(f"plan_scan: expected C, L >= 0 and itemsize, sm_count > 0, got {(C, L, itemsize, sm_count)}")
    target = sm_count * max(1, warps_per_sm)
    min_chunk = max(TILE, _round_up(MIN_CHUNK_BYTES // itemsize, TILE))
    if chunk is not None:
        if chunk <= 0:
            raise ValueError(f"plan_scan: chunk must be positive, got {chunk}")
        which = "chunked" if path == "auto" else path
        clen = _round_up(chunk, TILE)
    else:
        which = path
        if path == "auto":
            which = "channels" if (C >= target // 2 or L < 2 * min_chunk) else "chunked"
        # Forced chunking of short series still cuts them (down to one tile per chunk).
        floor = min_chunk if path == "auto" else TILE
        want = max(1, target // max(C, 1))  # rounded down: C * nchunk <= target, one wave
        clen = max(floor, _round_up(-(-max(L, 1) // want), TILE))
    if which == "channels":
        nchunk, clen = 1, L
    else:
        nchunk = max(1, -(-L // clen))
        if path == "auto" and chunk is None and nchunk == 1:
            which, clen = "channels", L
    warps_per_block = THREADS // LANES
    blocks = -(-(C * nchunk) // warps_per_block)
    return ScanPlan(which, nchunk, clen, blocks, THREADS)


# --------------------------------------------------------------------------- launchers


_DEVICE: dict[int, tuple[int, int, int]] = {}
_RESIDENT: dict[tuple[int, str], int] = {}


def _device_limits() -> tuple[int, int, int]:
    """(SMs, threads per SM, registers per SM) of the current device (host attribute queries, cached)."""
    import cupy

    dev = cupy.cuda.Device()
    lim = _DEVICE.get(dev.id)
    if lim is None:
        at = dev.attributes
        lim = _DEVICE[dev.id] = (int(at["MultiProcessorCount"]), int(at["MaxThreadsPerMultiProcessor"]),
                                 int(at["MaxRegistersPerMultiprocessor"]))
    return lim


def _sm_count() -> int:
    return _device_limits()[0]


def _warps_per_sm(kernel: str) -> int:
    """Resident warps per SM of a tile kernel (compiles the source on first use; no device sync)."""
    import cupy

    key = (cupy.cuda.Device().id, kernel)
    n = _RESIDENT.get(key)
    if n is None:
        _, threads_per_sm, regs_per_sm = _device_limits()
        n = _RESIDENT[key] = resident_warps(SCAN.get(kernel).num_regs, THREADS, threads_per_sm, regs_per_sm)
    return n


def _vec_ok(L: int, *arrays: Any) -> bool:
    """16-byte vector access: every row starts 16-byte aligned (L % 4 == 0 and aligned bases)."""
    return L % STEPS == 0 and all(x.data.ptr % 16 == 0 for x in arrays)


def _i64(x: int) -> np.int64:
    return np.int64(x)


def _i32(x: bool | int) -> np.int32:
    return np.int32(int(x))


def _prepare(cp: Any, arow: Any, *arrays: Any) -> tuple[Any, ...]:
    """Contiguous device arrays (no-ops when they already are) and the row map as int64."""
    return (cp.ascontiguousarray(cp.asarray(arow), dtype=cp.int64),) + tuple(
        None if x is None else cp.ascontiguousarray(x) for x in arrays
    )


def _carry(cp: Any, name: str, F: Any, P: Any, S: Any, init: Any, C: int, nchunk: int) -> Any:
    """Start state of every chunk from the chunk maps (``scan_carry``)."""
    starts = cp.empty((C, nchunk), dtype=F.dtype)
    SCAN.get(f"scan_carry<{name}>")((C,), (CARRY_THREADS,), (F, P, S, init, starts, _i64(C), _i64(nchunk)))
    return starts


def scan_fwd(
    a: Any,
    arow: Any,
    b: Any,
    h0: Any,
    reverse: bool,
    path: str = "auto",
    out: Any = None,
) -> Any:
    """All states ``(C, L)`` of the recurrence (see :func:`ssmcore.reference.scan.scan_fwd`).

    ``path`` forces ``"channels"`` or ``"chunked"`` (see :func:`plan_scan`);
    ``out`` (C-contiguous ``(C, L)`` CuPy array of b's dtype) receives the result
    if given.
    """
    import cupy as cp

    arow, a, b, h0 = _prepare(cp, arow, a, b, h0)
    C, L = b.shape
    if out is None:
        out = cp.empty((C, L), dtype=b.dtype)
    elif not (isinstance(out, cp.ndarray) and out.shape == (C, L) and out.dtype == b.dtype and out.flags.c_contiguous):
        raise ValueError(
            f"scan_fwd: out must be a C-contiguous CuPy array of shape {(C, L)} and dtype {b.dtype}, got "
            f"{type(out).__name__} {getattr(out, 'shape', None)} {getattr(out, 'dtype', None)}"
        )
    if C == 0 or L == 0:
        plan_scan(C, L, b.itemsize, 1, path)  # validates path
        return out
    name = dtype_name(b.dtype)
    plan = plan_scan(C, L, b.itemsize, _sm_count(), path, warps_per_sm=_warps_per_sm(f"scan_fwd_tiles<{name}>"))
    La = a.shape[1]
    vec = _vec_ok(L, b, out, *((a,) if La != 1 else ()))
    grid, block = (plan.blocks,), (plan.threads,)
    dims = (_i64(C), _i64(L), _i64(plan.nchunk), _i64(plan.chunk), _i32(reverse), _i32(vec))
    if plan.path == "channels":
        starts = h0
    else:
        F, P, S = (cp.empty((C, plan.nchunk), dtype=b.dtype) for _ in range(3))
        SCAN.get(f"scan_fwd_summary<{name}>")(grid, block, (a, arow, _i64(La), b, F, P, S) + dims)
        starts = _carry(cp, name, F, P, S, h0, C, plan.nchunk)
    SCAN.get(f"scan_fwd_tiles<{name}>")(grid, block, (a, arow, _i64(La), b, starts, out) + dims)
    return out


def scan_bwd(
    a: Any,
    arow: Any,
    h: Any,
    h0: Any,
    gh: Any,
    gfinal: Any,
    reverse: bool,
    path: str = "auto",
    need_a: bool = True,
) -> tuple[Any, Any | None, Any]:
    """Fused backward ``(g, ga, gh0)`` (see :func:`ssmcore.reference.scan.scan_bwd`).

    ``need_a=False`` returns ``ga = None`` and neither reads ``h`` nor writes ``ga``.
    """
    import cupy as cp

    arow, a, h, h0, gh, gfinal = _prepare(cp, arow, a, h if need_a else None, h0, gh, gfinal)
    C, L = gh.shape
    La = a.shape[1]
    dtype = gh.dtype
    g = cp.empty((C, L), dtype=dtype)
    if C == 0 or L == 0:
        plan_scan(C, L, gh.itemsize, 1, path)  # validates path
        return g, (cp.zeros((C, La), dtype=dtype) if need_a else None), gfinal.copy()
    name = dtype_name(dtype)
    plan = plan_scan(C, L, gh.itemsize, _sm_count(), path, warps_per_sm=_warps_per_sm(f"scan_bwd_tiles<{name}>"))
    astep = La != 1
    ga = cp.empty((C, La), dtype=dtype) if need_a else None
    gh0 = cp.empty(C, dtype=dtype)
    nch = plan.nchunk
    # Constant-in-time ga: per-chunk partial sums, summed over chunks afterwards (one chunk: ga itself).
    part = cp.empty((C, nch), dtype=dtype) if (need_a and not astep and nch > 1) else ga
    streams = (gh, g) + ((a,) if astep else ()) + ((h,) + ((ga,) if astep else ()) if need_a else ())
    vec = _vec_ok(L, *streams)
    grid, block = (plan.blocks,), (plan.threads,)
    desc = not reverse  # the adjoint runs against the forward's direction
    dims = (_i64(C), _i64(L), _i64(nch), _i64(plan.chunk), _i32(desc), _i32(vec))
    if plan.path == "channels":
        starts = gfinal
    else:
        F, P, S = (cp.empty((C, nch), dtype=dtype) for _ in range(3))
        SCAN.get(f"scan_bwd_summary<{name}>")(grid, block, (a, arow, _i64(La), gh, F, P, S) + dims)
        starts = _carry(cp, name, F, P, S, gfinal, C, nch)
    dummy = g  # a valid pointer for arguments the kernel does not touch (need_a False)
    SCAN.get(f"scan_bwd_tiles<{name}>")(
        grid,
        block,
        (a, arow, _i64(La), h if need_a else dummy, h0, gh, starts, g, ga if need_a else dummy,
         part if need_a else dummy, gh0) + dims + (_i32(need_a),),
    )
    if need_a and not astep and nch > 1:
        SCAN.get(f"scan_ga_sum<{name}>")((C,), (GA_SUM_THREADS,), (part, ga, _i64(C), _i64(nch)))
    return g, ga, gh0


# --------------------------------------------------------------------------- NumPy model of the kernels


def _np_apply(f: np.ndarray, a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``ssm::apply``: the state after a map from state x (zero state: ``b + f * 0``)."""
    return np.where(x == 0, b + f * 0, a * x + b)


def _np_combine(first: tuple, nxt: tuple) -> tuple:
    """``ssm::combine``: ``first``'s steps, then ``nxt``'s."""
    f1, a1, b1 = first
    f2, a2, b2 = nxt
    return f1, a2 * a1, _np_apply(f2, a2, b2, b1)


def _np_where3(mask: np.ndarray, x: tuple, y: tuple) -> tuple:
    return tuple(np.where(mask, u, v) for u, v in zip(x, y))


def _np_shift_up(v: np.ndarray, d: int) -> np.ndarray:
    """``__shfl_up_sync`` along the lane axis (the last); lanes below d keep their own value."""
    out = v.copy()
    out[..., d:] = v[..., :-d]
    return out


def _np_warp_scan(m: tuple) -> tuple:
    """``ssm::warp_scan_inclusive`` over the last axis (lockstep Kogge-Stone)."""
    lane = np.arange(m[0].shape[-1])
    for d in (1, 2, 4, 8, 16):
        if d >= m[0].shape[-1]:
            break
        below = tuple(_np_shift_up(v, d) for v in m)
        m = _np_where3(lane >= d, _np_combine(below, m), m)
    return m


def _np_lanes(coef: np.ndarray, y: np.ndarray, st: int, s_end: int) -> tuple:
    """Per-lane steps of the tile at ``st``: coefficient and input ``(C, 32, 4)`` and counts ``(32,)``."""
    s0 = st + STEPS * np.arange(LANES)
    n = np.clip(s_end - s0, 0, STEPS)
    idx = s0[:, None] + np.arange(STEPS)[None, :]
    valid = np.arange(STEPS)[None, :] < n[:, None]
    idx = np.where(valid, idx, 0)
    zero = np.zeros((), coef.dtype)
    return np.where(valid, coef[:, idx], zero), np.where(valid, y[:, idx], zero), n, idx, valid


def _np_lane_map(c: np.ndarray, y: np.ndarray, n: np.ndarray) -> tuple:
    """``lane_map``: each lane's steps folded sequentially, from its first input."""
    f, a, b = c[..., 0].copy(), c[..., 0].copy(), y[..., 0].copy()
    for k in range(1, STEPS):
        live = k < n
        b = np.where(live, c[..., k] * b + y[..., k], b)
        a = np.where(live, c[..., k] * a, a)
    return f, a, b


def _np_summary(coef: np.ndarray, y: np.ndarray, s_begin: int, s_end: int) -> tuple:
    """Pass 1 (``scan_*_summary``) of one chunk of every channel: its map (f, a, b), each ``(C,)``."""
    chunk = None
    for st in range(s_begin, s_end, TILE):
        c4, y4, n, _, _ = _np_lanes(coef, y, st, s_end)
        m = _np_warp_scan(_np_lane_map(c4, y4, n))
        last = (min(s_end - st, TILE) - 1) // STEPS
        tile = tuple(v[:, last] for v in m)
        chunk = tile if chunk is None else _np_combine(chunk, tile)
    return chunk


def _np_carry(F: np.ndarray, P: np.ndarray, S: np.ndarray, init: np.ndarray, threads: int) -> np.ndarray:
    """``scan_carry``: start state of every chunk, ``(C, nchunk)``, in the kernel's order."""
    C, nch = F.shape
    starts = np.empty_like(F)
    carry = init.copy()
    per_round = threads * CARRY_PER_THREAD
    nwarp = threads // LANES
    zero = np.zeros((), F.dtype)
    for r0 in range(0, nch, per_round):
        j0 = r0 + CARRY_PER_THREAD * np.arange(threads)
        n = np.clip(nch - j0, 0, CARRY_PER_THREAD)
        mine = []
        for q in range(CARRY_PER_THREAD):
            live = q < n
            jj = np.where(live, j0 + q, 0)
            mine.append(tuple(np.where(live, X[:, jj], zero) for X in (F, P, S)))
        m = mine[0]
        for q in range(1, CARRY_PER_THREAD):
            m = _np_where3(q < n, _np_combine(m, mine[q]), m)
        m = tuple(v.reshape(C, nwarp, LANES) for v in m)
        m = _np_warp_scan(m)
        below = tuple(_np_shift_up(v, 1) for v in m)
        tot = tuple(v[:, :, LANES - 1] for v in m)  # (C, nwarp), scanned by warp 0 (lanes < nwarp are real)
        tot = _np_warp_scan(tuple(np.concatenate([v, np.zeros((C, LANES - nwarp), F.dtype)], 1) for v in tot))
        tot = tuple(v[:, :nwarp] for v in tot)
        w = np.arange(threads) // LANES
        lane = np.arange(threads) % LANES
        x = np.broadcast_to(carry[:, None], (C, threads)).copy()
        wp = tuple(v[:, np.maximum(w - 1, 0)] for v in tot)
        x = np.where(w > 0, _np_apply(*wp, x), x)
        bl = tuple(v.reshape(C, threads) for v in below)
        x = np.where(lane > 0, _np_apply(*bl, x), x)
        nxt = carry
        for q in range(CARRY_PER_THREAD):
            live = q < n
            for t in np.nonzero(live)[0]:
                starts[:, j0[t] + q] = x[:, t]
            x = np.where(live, _np_apply(*mine[q], x), x)
        for t in range(threads):
            if n[t] > 0 and (j0[t] + n[t] == nch or j0[t] + n[t] == r0 + per_round):
                nxt = x[:, t]
        carry = nxt.copy()
    return starts


def _np_tiles(coef: np.ndarray, y: np.ndarray, start: np.ndarray, s_begin: int, s_end: int, on_lane: Any) -> None:
    """Pass 2 (``scan_*_tiles``) of one chunk: every lane re-runs its steps from its start.

    ``on_lane(k, idx_k, live_k, x_k, st)`` receives each step's states ``(C, 32)``.
    """
    carry = start
    for st in range(s_begin, s_end, TILE):
        c4, y4, n, idx, valid = _np_lanes(coef, y, st, s_end)
        m = _np_warp_scan(_np_lane_map(c4, y4, n))
        end = _np_apply(*m, carry[:, None])
        x = _np_shift_up(end, 1)
        x[:, 0] = carry
        for k in range(STEPS):
            live = k < n
            x = np.where(live, c4[..., k] * x + y4[..., k], x)
            on_lane(k, idx[:, k], live, x, st)
        last = (min(s_end - st, TILE) - 1) // STEPS
        carry = x[:, last]


def _np_chunked(coef: np.ndarray, y: np.ndarray, init: np.ndarray, plan: ScanPlan, carry_threads: int,
                on_lane: Any) -> None:
    """The pass structure of the launchers, in logical time order."""
    L = y.shape[1]
    bounds = [(j * plan.chunk, min(L, (j + 1) * plan.chunk)) for j in range(plan.nchunk)]
    if plan.path == "channels":
        starts = init[:, None]
    else:
        maps = [_np_summary(coef, y, s, e) for s, e in bounds]
        F, P, S = (np.stack([m[i] for m in maps], axis=1) for i in range(3))
        starts = _np_carry(F, P, S, init, carry_threads)
    for j, (s, e) in enumerate(bounds):
        _np_tiles(coef, y, starts[:, j], s, e, lambda k, i, lv, x, st, j=j: on_lane(j, k, i, lv, x, st))


def _logical(x: np.ndarray, rev: bool) -> np.ndarray:
    """A row array in the scan's visiting order (the model may flip; the kernels index)."""
    return x[:, ::-1] if rev else x


def _coef_rows(a: np.ndarray, arow: np.ndarray, L: int) -> np.ndarray:
    return a[arow][:, np.zeros(L, np.intp)] if a.shape[1] == 1 else a[arow]


def _chunked_model_fwd(
    a: np.ndarray, arow: np.ndarray, b: np.ndarray, h0: np.ndarray, reverse: bool, path: str = "auto",
    chunk: int | None = None, sm_count: int = 132, carry_threads: int = CARRY_THREADS,
) -> np.ndarray:
    """NumPy model of :func:`scan_fwd`'s kernels (same plan, chunks, tiles, lanes, combine order)."""
    C, L = b.shape
    out = np.empty((C, L), b.dtype)
    if C == 0 or L == 0:
        return out
    plan = plan_scan(C, L, b.itemsize, sm_count, path, chunk)
    coef = _logical(_coef_rows(a, arow, L), reverse)
    res = np.empty((C, L), b.dtype)

    def write(j: int, k: int, idx: np.ndarray, live: np.ndarray, x: np.ndarray, st: int) -> None:
        res[:, idx[live]] = x[:, live]

    with np.errstate(all="ignore"):
        _np_chunked(coef, _logical(b, reverse), h0, plan, carry_threads, write)
    out[...] = _logical(res, reverse)
    return out


def _chunked_model_bwd(
    a: np.ndarray, arow: np.ndarray, h: np.ndarray, h0: np.ndarray, gh: np.ndarray, gfinal: np.ndarray,
    reverse: bool, path: str = "auto", need_a: bool = True, chunk: int | None = None, sm_count: int = 132,
    carry_threads: int = CARRY_THREADS,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """NumPy model of :func:`scan_bwd`'s kernels (including the order of the constant-a ga sums)."""
    C, L = gh.shape
    La = a.shape[1]
    if C == 0 or L == 0:
        return np.empty((C, L), gh.dtype), (np.zeros((C, La), gh.dtype) if need_a else None), gfinal.copy()
    plan = plan_scan(C, L, gh.itemsize, sm_count, path, chunk)
    desc = not reverse
    a_log = _logical(_coef_rows(a, arow, L), desc)
    coef = np.concatenate([np.ones((C, 1), gh.dtype), a_log[:, :-1]], axis=1)  # a'_s = a_{s-1}, a'_0 = 1
    h_log = _logical(h, desc)
    hprev = np.concatenate([h_log[:, 1:], h0[:, None]], axis=1)  # the forward's previous state
    g_log = np.empty((C, L), gh.dtype)
    ga_log = np.empty((C, L), gh.dtype)
    acc = np.zeros((plan.nchunk, C, LANES), gh.dtype)  # per-lane partial sums of constant-a ga

    def write(j: int, k: int, idx: np.ndarray, live: np.ndarray, x: np.ndarray, st: int) -> None:
        g_log[:, idx[live]] = x[:, live]
        e = x * hprev[:, idx]
        ga_log[:, idx[live]] = e[:, live]
        acc[j] = np.where(live, acc[j] + e, acc[j])

    with np.errstate(all="ignore"):
        _np_chunked(coef, _logical(gh, desc), gfinal, plan, carry_threads, write)
        gh0 = a_log[:, L - 1] * g_log[:, L - 1]
        ga = None
        if need_a and La != 1:
            ga = _logical(ga_log, desc).copy()
        elif need_a:
            part = acc
            for msk in (16, 8, 4, 2, 1):  # butterfly warp sum
                part = part + part[..., np.arange(LANES) ^ msk]
            part = part[..., 0].T  # (C, nchunk)
            if plan.nchunk == 1:
                ga = part.copy()
            else:
                buf = np.zeros((C, GA_SUM_THREADS), gh.dtype)
                for jj in range(plan.nchunk):  # thread jj % T, in increasing j
                    buf[:, jj % GA_SUM_THREADS] = buf[:, jj % GA_SUM_THREADS] + part[:, jj]
                half = GA_SUM_THREADS // 2
                while half:
                    buf[:, :half] = buf[:, :half] + buf[:, half:2 * half]
                    half //= 2
                ga = buf[:, :1].copy()
    return _logical(g_log, desc).copy(), ga, gh0
