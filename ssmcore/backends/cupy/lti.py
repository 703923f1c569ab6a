"""CuPy GPU kernels of LTI simulation; same functions as :mod:`ssmcore.reference.lti`.

The kernel contract (function names and parameters, operand layout, dtypes,
returned tuples, checkpoint convention) is the docstring of
``ssmcore.reference.lti``. Arrays in and out are CuPy arrays; operands of any
layout are made contiguous here (``cupy.ascontiguousarray``, a no-op for the
front door's usual operands). The launchers allocate their outputs and choose
the work split from shapes alone (plain-Python planners below, unit-tested on
CPU); kernels run on CuPy's current stream, and nothing here synchronises or
copies device data to the host.

CUDA C: ``kernels/lti.cu`` (with ``kernels/common.cuh``), one instantiation per
dtype, compiled by NVRTC on first use.

Diagonal systems (:func:`diag_recurrent`, :func:`diag_final_state`,
:func:`diag_kernel`, :func:`diag_backward`)
    A *segment* of ``G`` lanes (a power of two up to 32; several rows share a
    warp when ``G < 32``) owns one row r; each lane keeps up to ``SPL`` of the
    row's states in registers (:func:`plan_diag`), rows with more states walk
    them in groups. Time is sequential per row, in tiles of ``G`` steps: lane s
    loads the input of step s of the tile and keeps the readout of step s, so
    loads and stores are coalesced; the readout ``sum_n C x`` is a butterfly
    over the segment. Rows are the parallelism (S4D sizes have ``B * H`` in the
    tens of thousands). A few long rows are split in time
    (:func:`plan_diag_time`): pass 1 (``diag_summary``) computes every chunk's
    end state from its first input, and each chunk of pass 2 carries ``x0``
    exactly through the maps ``(a^chunk, h)`` of the chunks before it (in
    ``common.cuh``'s ``apply`` order, so a zero state never meets ``a^chunk * 0``)
    and then runs its steps with the readout. The backward is not split in
    time (rows only). :func:`diag_kernel` also splits ``l`` into chunks
    (:func:`plan_vandermonde`), each starting from an exact power, and
    re-anchors its running products every :data:`ANCHOR` steps
    (``p = W A^l`` by binary exponentiation, in double precision for float
    types), so the error of ``A^l`` stays that of at most ``ANCHOR`` products
    rather than growing with ``l``.
    :func:`diag_backward` recomputes states from checkpoints every
    ``K = max(16, isqrt(L))`` steps held in a workspace of ``R * N * (L / K + K)``
    elements (never all ``L`` states).
    ``u`` of lower precision than the kernel's input type is cast on the
    device first (one elementwise pass).

Dense systems (:func:`simulate_recurrent`, :func:`simulate_scan`, :func:`simulate_backward`)
    One thread block per batch element, thread i owns state i, the state
    vector in shared memory; ``N``, ``M``, ``P`` are small for these ops.
    :func:`simulate_scan` runs the recurrent kernel: on a GPU a block per batch
    element is the parallelism, and a chunked scan's ``N x N`` chunk powers
    (``O(N^3 log S)`` each) cost more than they save at the sizes this op
    serves. The contract fixes only its results and returned tuple; a given
    ``K`` is honoured and ``per_chunk`` (a chunking choice) has no effect.
    :func:`control_readout` is CuPy's batched ``matmul``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._rawmodule import KERNEL_DIR, declare, dtype_name

__all__ = [
    "ANCHOR",
    "DiagPlan",
    "control_readout",
    "dense_threads",
    "diag_backward",
    "diag_checkpoint_interval",
    "diag_final_state",
    "diag_kernel",
    "diag_recurrent",
    "plan_diag",
    "plan_diag_time",
    "plan_vandermonde",
    "simulate_backward",
    "simulate_recurrent",
    "simulate_scan",
]

LANES = 32
DIAG_THREADS = 128  # threads per block of the diagonal kernels (= their __launch_bounds__)
SPL_FWD = 4  # states per lane in registers: must match SSM_LTI_SPL_FWD in lti.cu
SPL_BWD = 2  # must match SSM_LTI_SPL_BWD
ANCHOR = 64  # must match SSM_LTI_ANCHOR
MAX_GRID_Y = 65535
DENSE_MAX_THREADS = 256
THREADS_PER_SM = 2048  # what the planners aim to fill (the H100/H200 limit per SM)
MIN_TIME_CHUNK = 1024  # shortest time chunk of the split diagonal forward: shorter ones cost more in
# per-chunk start-up (the fold over earlier chunks, a^chunk) than the extra lanes gain

_TYPES = ("float", "double", "complex<float>", "complex<double>")
# (compute type, output type): the output is the compute type, or its real part
_PAIRS = tuple((t, t) for t in _TYPES) + (("complex<float>", "float"), ("complex<double>", "double"))


def _options() -> tuple[str, ...]:
    """The kernel folder for ``#include "common.cuh"`` and the header's digest.

    The digest is an option because CuPy's binary cache keys on source and options only,
    not on included files.
    """
    digest = hashlib.sha1((KERNEL_DIR / "common.cuh").read_bytes()).hexdigest()[:16]
    return (f"-I{KERNEL_DIR}", f"-DSSMCORE_COMMON_CUH_SHA1=0x{digest}")


LTI = declare(
    "lti.cu",
    [f"{k}<{t}, {o}>" for k in ("diag_fwd", "diag_summary", "diag_vandermonde") for t, o in _PAIRS]
    + [f"{k}<{t}>" for k in ("diag_bwd", "dense_fwd", "dense_bwd") for t in _TYPES],
    options=_options(),
)


# --------------------------------------------------------------------------- planning (plain Python)


@dataclass(frozen=True)
class DiagPlan:
    """Work split of a diagonal kernel.

    ``G`` lanes per row, ``groups`` state groups of ``G * spl`` states each, a grid of
    ``blocks`` x ``threads``.
    """

    G: int
    groups: int
    blocks: int
    threads: int


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def plan_diag(R: int, N: int, spl: int, threads: int = DIAG_THREADS) -> DiagPlan:
    """Lanes per row ``G`` (the power of two covering ``ceil(N / spl)``, at most 32) and state groups.

    Each lane holds up to ``spl`` states of its row; ``N > 32 * spl`` states are
    walked in ``ceil(N / (G * spl))`` groups. ``N = 0`` still gets one group (the
    readout is then ``D u``).
    """
    if R < 0 or N < 0 or spl <= 0 or threads % LANES:
        raise ValueError(
            f"plan_diag: expected R, N >= 0, spl > 0, threads a multiple of 32; got {(R, N, spl, threads)}"
        )
    G = min(LANES, _next_pow2(max(1, -(-N // spl))))
    groups = max(1, -(-N // (G * spl)))
    blocks = -(-(R * G) // threads)
    return DiagPlan(G, groups, blocks, threads)


def plan_vandermonde(R: int, N: int, L: int, sm_count: int,
                     threads_per_sm: int = THREADS_PER_SM) -> tuple[DiagPlan, int, int]:
    """``(plan, chunk, nchunk)`` for :func:`diag_kernel`: ``l`` split into ``nchunk`` chunks of ``chunk``.

    Rows alone give ``R * G`` lanes; when that is less than the device holds
    (``sm_count * threads_per_sm``), ``l`` is cut into chunks (multiples of
    :data:`ANCHOR`, each starting from an exact power) so that the lanes fill it.
    """
    plan = plan_diag(R, N, SPL_FWD)
    if L <= 0:
        return plan, 1, 0
    want = max(1, -(-(sm_count * threads_per_sm) // max(1, R * plan.G)))
    nchunk = min(want, -(-L // ANCHOR), MAX_GRID_Y)
    per = -(-L // nchunk)
    chunk = -(-per // ANCHOR) * ANCHOR
    return plan, chunk, -(-L // chunk)


def plan_diag_time(R: int, G: int, L: int, sm_count: int, threads_per_sm: int = THREADS_PER_SM,
                   min_chunk: int | None = None) -> tuple[int, int]:
    """``(chunk, nchunk)``: the time split of :func:`diag_recurrent` / :func:`diag_final_state`.

    Rows give ``R * G`` lanes. With at least half the device's threads
    (``sm_count * threads_per_sm``) that many, or series shorter than two
    ``min_chunk`` (default :data:`MIN_TIME_CHUNK`), time is not split
    (``nchunk = 1``, ``chunk = L``). Otherwise ``L`` is cut into about enough
    chunks to fill the device, each at least ``min_chunk`` steps and at least
    ``2 * nchunk`` steps long (a chunk's start state folds the maps of the
    chunks before it: ``nchunk / 2`` loads on average next to its ``chunk``
    steps).
    """
    min_chunk = MIN_TIME_CHUNK if min_chunk is None else int(min_chunk)
    if R < 0 or G <= 0 or L < 0 or sm_count <= 0 or min_chunk <= 0:
        raise ValueError(f"plan_diag_time: expected R, L >= 0 and G, sm_count, min_chunk > 0; got "
                         f"{(R, G, L, sm_count, min_chunk)}")
    target = sm_count * threads_per_sm
    lanes = max(1, R * G)
    if 2 * lanes >= target or L < 2 * min_chunk:
        return max(L, 1), 1
    want = min(-(-target // lanes), L // min_chunk, math.isqrt(L) // 2, MAX_GRID_Y)
    if want <= 1:
        return max(L, 1), 1
    chunk = -(-L // want)
    return chunk, -(-L // chunk)


def diag_checkpoint_interval(L: int) -> int:
    """Checkpoint interval of :func:`diag_backward` (as Numba's): ``max(16, isqrt(L))``."""
    return max(16, math.isqrt(max(L, 1)))


def dense_threads(N: int, M: int, P: int) -> int:
    """Threads per block of the dense kernels: one per state/input/output, a whole number of warps."""
    need = max(N, M, P, 1)
    return min(DENSE_MAX_THREADS, -(-need // LANES) * LANES)


# --------------------------------------------------------------------------- helpers


def _real_dtype(dt: Any) -> np.dtype:
    return np.empty(0, dt).real.dtype


def _i64(x: int) -> np.int64:
    return np.int64(x)


def _i32(x: int) -> np.int32:
    return np.int32(int(x))


def _scale(dt: Any, scale: float) -> Any:
    """``scale`` as the kernel's real scalar type (float32 stays float32)."""
    return _real_dtype(dt).type(scale)


def _c(cp: Any, x: Any) -> Any:
    return cp.ascontiguousarray(x)


_SM_COUNT: dict[int, int] = {}


def _sm_count() -> int:
    """SMs of the current device (a host attribute query, cached per device)."""
    import cupy

    dev = cupy.cuda.Device()
    n = _SM_COUNT.get(dev.id)
    if n is None:
        n = _SM_COUNT[dev.id] = int(dev.attributes["MultiProcessorCount"])
    return n


# --------------------------------------------------------------------------- diagonal systems


def _diag_launch(cp: Any, A: Any, B: Any, C: Any, D: Any, u: Any, x0: Any, y: Any, scale: float,
                 out_dtype: Any, readout: bool) -> Any:
    R, N = A.shape
    L = u.shape[1]
    x_final = cp.empty((R, N), dtype=A.dtype)
    if R == 0:
        return x_final
    if L == 0:
        x_final[...] = x0
        return x_final
    plan = plan_diag(R, N, SPL_FWD)
    chunk, nchunk = plan_diag_time(R, plan.G, L, _sm_count())
    pair = f"{dtype_name(A.dtype)}, {dtype_name(out_dtype)}"
    if nchunk > 1:  # pass 1: every full chunk's end state from its first input
        Hs = cp.empty((R, nchunk - 1, N), dtype=A.dtype)
        if N:
            LTI.get(f"diag_summary<{pair}>")((-(-(R * N) // DIAG_THREADS), nchunk - 1), (DIAG_THREADS,), (
                A, B, u, Hs, _i64(R), _i64(N), _i64(L), _i64(chunk), _i64(nchunk - 1)))
    else:
        Hs = x_final  # not read
    dummy = x_final  # a valid pointer for D and y when there is no readout
    LTI.get(f"diag_fwd<{pair}>")((plan.blocks, nchunk), (plan.threads,), (
        A, B, C, D if readout else dummy, u, x0, y if readout else dummy, x_final, Hs, _scale(A.dtype, scale),
        _i64(R), _i64(N), _i64(L), _i64(chunk), _i32(plan.G), _i32(plan.groups), _i32(readout)))
    return x_final


def diag_recurrent(A: Any, B: Any, C: Any, D: Any, u: Any, x0: Any, scale: float, real_output: bool) -> tuple[Any, Any]:
    """Fused diagonal recurrence and readout: ``(y, x_final)`` (see ``reference.lti.diag_recurrent``)."""
    import cupy as cp

    A, B, C, x0 = (_c(cp, a) for a in (A, B, C, x0))
    ot = _real_dtype(A.dtype) if real_output else A.dtype
    R, L = u.shape
    D = _c(cp, cp.asarray(D).astype(ot, copy=False))
    u = _c(cp, cp.asarray(u).astype(ot, copy=False))  # lower-precision u: one cast on the device
    y = cp.empty((R, L), dtype=ot)
    x_final = _diag_launch(cp, A, B, C, D, u, x0, y, scale, ot, True)
    return y, x_final


def diag_final_state(A: Any, B: Any, u: Any, x0: Any) -> Any:
    """``x_final = A^L x0 + sum_t A^(L-1-t) B u_t`` (the recurrence without readout)."""
    import cupy as cp

    A, B, x0 = (_c(cp, a) for a in (A, B, x0))
    complex_u = cp.asarray(u).dtype.kind == "c"
    ut = A.dtype if (complex_u or A.dtype.kind != "c") else _real_dtype(A.dtype)
    u = _c(cp, cp.asarray(u).astype(ut, copy=False))
    return _diag_launch(cp, A, B, B, None, u, x0, None, 1.0, ut, False)


def diag_kernel(A: Any, W: Any, scale: float, L: int, real_output: bool) -> Any:
    """``K[r, l] = proj(scale * sum_n W[r, n] A[r, n]^l)``, ``l < L``, by re-anchored running products."""
    import cupy as cp

    A, W = _c(cp, A), _c(cp, W)
    R, N = A.shape
    L = int(L)
    ot = _real_dtype(W.dtype) if real_output else W.dtype
    K = cp.empty((R, L), dtype=ot)
    if R == 0 or L == 0:
        return K
    plan, chunk, nchunk = plan_vandermonde(R, N, L, _sm_count())
    name = f"diag_vandermonde<{dtype_name(W.dtype)}, {dtype_name(ot)}>"
    LTI.get(name)((plan.blocks, nchunk), (plan.threads,), (
        A, W, K, _scale(W.dtype, scale), _i64(R), _i64(N), _i64(L), _i32(plan.G), _i32(plan.groups), _i64(chunk)))
    return K


def diag_backward(A: Any, B: Any, C: Any, D: Any, u: Any, x0: Any, scale: float, gy: Any,
                  g_final: Any) -> tuple[Any, Any, Any, Any, Any, Any]:
    """Adjoint of :func:`diag_recurrent`: ``(gA, gB, gC, gD, gu, gx0)``, all in ``A.dtype``.

    States are recomputed from checkpoints every :func:`diag_checkpoint_interval`
    steps (workspace ``(R + 1) * N * (ceil(L / K) + K)`` elements; the extra
    row is scratch for the lanes past the last row).
    """
    import cupy as cp

    ct = A.dtype
    A, B, C, D, u, x0, gy, g_final = (_c(cp, cp.asarray(a).astype(ct, copy=False))
                                      for a in (A, B, C, D, u, x0, gy, g_final))
    R, N = A.shape
    L = u.shape[1]
    gA, gB, gC, gx0 = (cp.empty((R, N), dtype=ct) for _ in range(4))
    gD, gu = cp.empty(R, dtype=ct), cp.empty((R, L), dtype=ct)
    if R == 0:
        return gA, gB, gC, gD, gu, gx0
    if L == 0:
        for g in (gA, gB, gC, gD):
            g.fill(0)
        gx0[...] = g_final
        return gA, gB, gC, gD, gu, gx0
    K = min(diag_checkpoint_interval(L), L)
    nck = -(-L // K)
    ck = cp.empty((R + 1, nck, N), dtype=ct)
    buf = cp.empty((R + 1, K, N), dtype=ct)
    plan = plan_diag(R, N, SPL_BWD)
    LTI.get(f"diag_bwd<{dtype_name(ct)}>")((plan.blocks,), (plan.threads,), (
        A, B, C, D, u, x0, gy, g_final, gA, gB, gC, gD, gu, gx0, ck, buf, _scale(ct, scale),
        _i64(R), _i64(N), _i64(L), _i64(K), _i64(nck), _i32(plan.G), _i32(plan.groups)))
    return gA, gB, gC, gD, gu, gx0


# --------------------------------------------------------------------------- dense systems


def _dense_prepare(cp: Any, *arrays: Any) -> tuple[Any, ...]:
    return tuple(_c(cp, a) for a in arrays)


SHARED_LIMIT = 48 * 1024  # dynamic shared memory a kernel gets without an opt-in attribute


def _shared_bytes(fn: str, count: int, itemsize: int, N: int, M: int, P: int) -> int:
    """Shared memory of a dense kernel (``count`` scalars), refused clearly past the default limit."""
    nbytes = count * itemsize
    if nbytes > SHARED_LIMIT:
        raise ValueError(
            f"{fn}: the CuPy dense kernels keep the state in shared memory; N = {N}, M = {M}, P = {P} need "
            f"{nbytes} bytes, more than {SHARED_LIMIT}. Use lti_simulate_diag for large diagonal systems, "
            f"or NumPy inputs"
        )
    return nbytes


def _dense_forward(A, B, C, D, u, x0, idx, K):
    import cupy as cp

    A, B, C, D, u, x0 = _dense_prepare(cp, A, B, C, D, u, x0)
    idx = _c(cp, cp.asarray(idx).astype(cp.int64, copy=False))
    nb, N, M, P, L = idx.shape[0], A.shape[1], B.shape[2], C.shape[1], u.shape[2]
    dt = A.dtype
    keep = K is not None
    nck = -(-L // K) if keep else 0
    y = cp.empty((nb, P, L), dtype=dt)
    ck = cp.empty((nb, nck, N), dtype=dt) if keep else None
    if nb == 0:
        return y, cp.empty((0, N), dtype=dt), ck
    if L == 0:
        return y, x0[idx[:, 5]], ck
    x_final = cp.empty((nb, N), dtype=dt)
    threads = dense_threads(N, M, P)
    smem = _shared_bytes("simulate_recurrent", 2 * N + 2 * M, dt.itemsize, N, M, P)
    LTI.get(f"dense_fwd<{dtype_name(dt)}>")(
        (nb,), (threads,),
        (A, B, C, D, u, x0, idx, y, x_final, ck if keep else y, _i64(N), _i64(M), _i64(P), _i64(L),
         _i64(K if keep else max(L, 1)), _i64(nck), _i32(keep)),
        shared_mem=smem)
    return y, x_final, ck


def _checkpoints(L: int, K: int | None) -> int:
    from ...reference.lti import _checkpoint_interval

    K = _checkpoint_interval(L) if K is None else int(K)
    if K < 1:
        raise ValueError(f"simulate_recurrent: K must be an int >= 1, got {K}")
    return K


def simulate_recurrent(A: Any, B: Any, C: Any, D: Any, u: Any, x0: Any, idx: Any, keep_checkpoints: bool = False,
                       K: int | None = None) -> tuple[Any, Any, Any, Any]:
    """The dense recurrence, one block per batch element: ``(y, x_final, ck, K)``.

    ``ck``, ``K`` are None without ``keep_checkpoints``; ``K=None`` chooses ``max(16, isqrt(L))``.
    """
    L = u.shape[2]
    Kc = _checkpoints(L, K) if keep_checkpoints else None
    y, x_final, ck = _dense_forward(A, B, C, D, u, x0, idx, Kc)
    return (y, x_final, ck, Kc) if keep_checkpoints else (y, x_final, None, None)


def simulate_scan(A: Any, B: Any, C: Any, D: Any, u: Any, x0: Any, idx: Any, keep_checkpoints: bool = False,
                  K: int | None = None, per_chunk: int | None = None) -> tuple[Any, Any, Any, Any]:
    """The results of ``reference.lti.simulate_scan``, computed by the recurrent kernel.

    On a GPU one block per batch element is the parallelism; a chunked scan's
    ``N x N`` chunk powers cost more than they save here (see the module
    docstring). A given ``K`` is honoured; ``per_chunk`` only chooses chunks
    and has no effect. Returns ``(y, x_final, ck, K)``.
    """
    return simulate_recurrent(A, B, C, D, u, x0, idx, keep_checkpoints=keep_checkpoints, K=K)


def simulate_backward(A: Any, B: Any, C: Any, D: Any, u: Any, idx: Any, K: int, ck: Any, gy: Any,
                      g_final: Any) -> tuple[Any, Any, Any, Any, Any, Any]:
    """Reverse-time adjoint from the forward's checkpoints: per-batch-element ``(gA, gB, gC, gD, gu, gx0)``.

    Each chunk of ``K`` steps is recomputed from its checkpoint into a
    workspace of ``batch * (min(K, L) + 1) * N`` elements.
    """
    import cupy as cp

    A, B, C, D, u, ck, gy, g_final = _dense_prepare(cp, A, B, C, D, u, ck, gy, g_final)
    idx = _c(cp, cp.asarray(idx).astype(cp.int64, copy=False))
    nb, N, M, P, L = idx.shape[0], A.shape[1], B.shape[2], C.shape[1], u.shape[2]
    dt = A.dtype
    gA, gB, gC, gD = (cp.zeros((nb,) + s, dtype=dt) for s in ((N, N), (N, M), (P, N), (P, M)))
    gu, gx0 = cp.zeros((nb, M, L), dtype=dt), cp.empty((nb, N), dtype=dt)
    if nb == 0:
        return gA, gB, gC, gD, gu, gx0
    if L == 0:  # the adjoint is just the final-state cotangent
        gx0[...] = g_final
        return gA, gB, gC, gD, gu, gx0
    K = int(K)
    Kb = min(K, L)
    buf = cp.empty((nb, Kb + 1, N), dtype=dt)
    threads = dense_threads(N, M, P)
    smem = _shared_bytes("simulate_backward", 2 * N + P + M, dt.itemsize, N, M, P)
    LTI.get(f"dense_bwd<{dtype_name(dt)}>")(
        (nb,), (threads,),
        (A, B, C, D, u, idx, ck, gy, g_final, gA, gB, gC, gD, gu, gx0, buf, _i64(N), _i64(M), _i64(P), _i64(L),
         _i64(K), _i64(ck.shape[1]), _i64(Kb)),
        shared_mem=smem)
    return gA, gB, gC, gD, gu, gx0


def control_readout(x: Any, u: Any, C: Any, D: Any) -> Any:
    """Dlsim's output equation ``y[k] = C x[k] + D u[k]``, time-first: ``x`` (L, N), ``u`` (L, M) -> ``y`` (L, P)."""
    import cupy as cp

    dt = cp.result_type(x, u, C, D)
    x, u, C, D = (cp.asarray(a).astype(dt, copy=False) for a in (x, u, C, D))
    return cp.ascontiguousarray(cp.matmul(x, C.T) + cp.matmul(u, D.T))
