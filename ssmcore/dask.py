r"""ssmcore on Dask arrays: lazy, blockwise, and exact when chunked in time.

Every function here takes Dask (or NumPy) arrays and returns Dask arrays without
computing anything; the blocks are handed to the public ssmcore ops
(:func:`ssmcore.linear_scan`, :func:`ssmcore.lti_simulate`, ...), so NumPy blocks
run on the Numba kernels and CuPy blocks on the GPU kernels, unchanged.

* Chunks over batch/channel axes: one kernel call per block, no rechunking.
* Chunks over time: two passes. For a recurrence :math:`h_t = a_t h_{t-1} + b_t`
  split into K chunks, chunk k is the affine map :math:`h \mapsto P_k h + E_k`
  with :math:`P_k` the composition of its transitions (``prod a``, :math:`A^{S_k}`,
  :math:`\exp(A \sum \Delta)`) and :math:`E_k` its end state from zero.
  Pass 1 computes :math:`(P_k, E_k)` for all chunks in parallel; a small
  sequential combine over the K summaries gives every chunk's true initial
  state :math:`h^{(k)}_{-1} = P_{k-1} h^{(k-1)}_{-1} + E_{k-1}`; pass 2 reruns
  the chunks in parallel from those states (the ops take ``h0``/``x0``/
  ``initial_states``). The result equals the in-memory call to rounding.
* Gradients (:func:`vjp`) for ``linear_scan`` and ``lti_simulate_diag``: the
  same scheme backwards (the adjoint entering each chunk's end state is the
  combine of the chunks after it).

Numba threads per task: see :func:`set_numba_threads` (one kernel per Dask
thread, so a pool of T threads on C cores gives each task ``C // T`` Numba
threads; a ``distributed`` worker follows its nanny's ``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array

import ssmcore as _core

__all__ = [
    "discretize",
    "discretize_diag",
    "dlsim",
    "fft_conv",
    "linear_scan",
    "lti_simulate",
    "lti_simulate_diag",
    "selective_scan",
    "set_numba_threads",
    "ssd",
    "vjp",
    "warm_up",
]

# ---------------------------------------------------------------------------------
# Threads: one kernel per Dask thread must not oversubscribe the cores
# ---------------------------------------------------------------------------------

_NUMBA_THREADS: int | None = None


def set_numba_threads(n: int | None) -> None:
    """Fix the number of Numba threads each Dask task uses (None: automatic).

    Automatic rule (per task, set with :func:`numba.set_num_threads`, which is
    thread-local, and restored afterwards):

    * a ``dask.distributed`` worker: ``OMP_NUM_THREADS`` if set (the nanny sets
      it to 1 by default, as for BLAS), else ``NUMBA_NUM_THREADS // nthreads``
      of the worker;
    * the threaded scheduler: ``NUMBA_NUM_THREADS // num_workers`` (Dask's pool
      size, ``dask.config`` ``num_workers`` or the CPU count);
    * the synchronous scheduler (tasks in the main thread): Numba's default.

    Parameters
    ----------
    n : int or None
        Threads per task (>= 1), or None for the rule above.
    """
    global _NUMBA_THREADS
    if n is not None and (not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1):
        raise ValueError(f"set_numba_threads: n must be a positive int or None; got {n!r}")
    _NUMBA_THREADS = None if n is None else int(n)


def _threads_for_task() -> int | None:
    if _NUMBA_THREADS is not None:
        return _NUMBA_THREADS
    import numba

    most = numba.config.NUMBA_NUM_THREADS
    worker = None
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        pass
    if worker is not None:
        omp = os.environ.get("OMP_NUM_THREADS", "")
        if omp.isdigit() and int(omp) > 0:
            return min(int(omp), most)
        return max(1, most // max(1, worker.state.nthreads))
    if threading.current_thread() is threading.main_thread():
        return None
    pool = dask.config.get("num_workers", None) or dask.system.CPU_COUNT
    return max(1, most // max(1, int(pool)))


def _is_numpy(*blocks: Any) -> bool:
    return all(b is None or isinstance(b, (np.ndarray, np.generic, int, float, complex)) for b in blocks)


@functools.cache
def _task(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a block function with the per-task Numba thread count (NumPy blocks only).

    Cached: one wrapper per block function, so that identical graph layers get
    identical keys (the forward inside ``vjp`` shares pass 1 with the pullback).
    """

    @functools.wraps(fn)
    def run(*blocks: Any, **kw: Any) -> Any:
        n = _threads_for_task() if _is_numpy(*blocks) else None
        if n is None:
            return fn(*blocks, **kw)
        import numba

        old = numba.get_num_threads()
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        try:
            return fn(*blocks, **kw)
        finally:
            numba.set_num_threads(old)

    return run


def warm_up(client: Any = None, ops: Sequence[str] | None = None, dtypes: Sequence[str] | None = ("float32", "float64"),
            *, backward: bool = True) -> dict[str, float]:
    """Load (or compile once) the Numba kernels on every worker before the real work.

    Numba's on-disk cache (``cache=True``) is shared by all processes on a host,
    so only the first process to need a kernel compiles it; this runs
    :func:`ssmcore.warmup` (tiny calls of each op, forward and backward, for every
    kernel variant) on each worker so that the first real tasks do not all wait on
    the cache at once. Workers whose host cache is already warm (an image built
    with ``python -m ssmcore warmup``) only load the kernels.

    Parameters
    ----------
    client : distributed.Client, optional
        Run on every worker of this client (``client.run``); None runs here.
    ops : sequence of str, optional
        Ops to warm (None: every op, see :func:`ssmcore.warmup`).
    dtypes : sequence of str, optional
        Dtypes to warm; float32 and float64 by default, None for all of
        :func:`ssmcore.warmup`'s.
    backward : bool, default True
        Also warm the pullbacks (:func:`ssmcore.dask.vjp`).

    Returns
    -------
    dict
        Seconds taken per worker address (``"local"`` without a client).
    """
    kw = dict(ops=None if ops is None else list(ops), dtypes=None if dtypes is None else list(dtypes),
              backward=backward)
    if client is None:
        return {"local": _warm_up_here(**kw)}
    return client.run(_warm_up_here, **kw)


def _warm_up_here(**kw: Any) -> float:
    return float(sum(_core.warmup(**kw).values()))


# ---------------------------------------------------------------------------------
# Helpers: arrays, chunks, metas, tuples of blocks
# ---------------------------------------------------------------------------------


def _xp(x: Any) -> Any:
    """The array module of a block (NumPy or CuPy), without importing CuPy for NumPy."""
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def _dask(x: Any) -> da.Array | None:
    if x is None:
        return None
    if isinstance(x, da.Array):
        return x
    arr = x if hasattr(x, "__array_function__") or hasattr(x, "__cuda_array_interface__") else np.asarray(x)
    return da.from_array(arr, chunks=arr.shape or (), asarray=False) if arr.ndim else da.from_array(arr)


def _pad(x: da.Array | None, ndim: int) -> da.Array | None:
    """Prepend length-1 axes so that x has ``ndim`` axes (lazy, free)."""
    if x is None or x.ndim >= ndim:
        return x
    return x[(None,) * (ndim - x.ndim) + (Ellipsis,)]


def _broadcast_shape(fn: str, names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        got = ", ".join(f"{n} {s}" for n, s in zip(names, shapes))
        raise ValueError(f"{fn}: the batch axes of {got} do not broadcast") from None


def _target_chunks(shape: tuple[int, ...], arrays: Sequence[da.Array | None]) -> tuple[tuple[int, ...], ...]:
    """Chunks of the broadcast shape: taken from the first array that spans each axis."""
    out = []
    for ax, n in enumerate(shape):
        c = (n,)
        for x in arrays:
            if x is not None and x.shape[ax] == n and n != 1:
                c = x.chunks[ax]
                break
        out.append(c)
    return tuple(out)


def _align(x: da.Array | None, axes: Sequence[int], chunks: Sequence[tuple[int, ...]]) -> da.Array | None:
    """Rechunk the axes of x that are not broadcast (length > 1) to ``chunks``; a no-op when they match."""
    if x is None:
        return None
    want = {}
    for ax, c in zip(axes, chunks):
        if x.shape[ax] != 1 and x.chunks[ax] != tuple(c):
            want[ax] = tuple(c)
    return x.rechunk(want) if want else x


def _single(x: da.Array | None, axes: Sequence[int]) -> da.Array | None:
    """One chunk along core axes (state size, inputs/outputs): small, never split."""
    if x is None:
        return None
    want = {ax % x.ndim: -1 for ax in axes if len(x.chunks[ax]) > 1}
    return x.rechunk(want) if want else x


def _meta(like: Any, ndim: int, dtype: Any) -> Any:
    return meta_from_array(like, ndim=ndim, dtype=np.dtype(dtype))


def _args(*pairs: Any) -> list[Any]:
    """Flatten (array, index) pairs for blockwise, dropping absent arrays (passed as None)."""
    out: list[Any] = []
    for x, ind in pairs:
        out += [x, ind if x is not None else None]
    return out


def _getitem_keep(t: tuple, i: int, keep: int | None) -> Any:
    x = t[i]
    return x if keep is None else x[(Ellipsis,) + (None,) * keep]


def _split(res: da.Array, parts: Sequence[tuple[Any, Any, Any, int | None]]) -> list[da.Array]:
    """Arrays from a blockwise call whose blocks are tuples.

    ``parts[i] = (chunks, dtype, meta_like, n_dropped)``: element i of every tuple,
    whose ``n_dropped`` trailing axes of the tuple array (one block each, e.g. the
    time axis of a final state) are absent.
    """
    outs = []
    for i, (chunks, dtype, like, dropped) in enumerate(parts):
        full = tuple(chunks) + tuple((1,) for _ in range(dropped or 0))
        x = da.map_blocks(_getitem_keep, res, i, dropped, chunks=full, dtype=dtype, meta=_meta(like, len(full), dtype))
        outs.append(x[(Ellipsis,) + (0,) * dropped] if dropped else x)
    return outs


def _ipow(a: Any, n: int) -> Any:
    """a**n elementwise by binary powering (log2(n) roundings; n >= 0)."""
    xp = _xp(a)
    result = xp.ones_like(a)
    base = a
    while n:
        if n & 1:
            result = result * base
        n >>= 1
        if n:
            base = base * base
    return result


def _mpow(A: Any, n: int) -> Any:
    """A**n for a stack of square matrices by binary powering."""
    xp = _xp(A)
    result = xp.broadcast_to(xp.eye(A.shape[-1], dtype=A.dtype), A.shape).copy()
    base = A
    while n:
        if n & 1:
            result = result @ base
        n >>= 1
        if n:
            base = base @ base
    return result


def _prod_last(a: Any) -> Any:
    """Prod over the last axis as a tree of contiguous row products.

    NumPy's multiply-reduce along a contiguous axis runs one element at a time
    (~25x slower than the scan); multiplying 8 contiguous sub-rows together is
    elementwise (SIMD) and shrinks the axis 8x per round.
    """
    xp = _xp(a)
    x, p = a, None
    while x.shape[-1] >= 64:
        q = x.shape[-1] // 8
        if x.shape[-1] % 8:
            t = xp.prod(x[..., 8 * q:], axis=-1)
            p = t if p is None else p * t
        x = xp.prod(x[..., : 8 * q].reshape(x.shape[:-1] + (8, q)), axis=-2)
    t = xp.prod(x, axis=-1)
    return t if p is None else p * t


def _letters(n: int, skip: str = "") -> str:
    pool = [c for c in "abcdefghijklmopqrsuvwxy" if c not in skip]
    return "".join(pool[:n])


_scratch = threading.local()


def _scratch_out(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A per-thread reused buffer for pass-1 states that are thrown away.

    Writing into warm pages instead of a fresh allocation saves the page faults,
    which cost about as much as the scan itself; one buffer per Dask thread.
    """
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.dtype != dtype or buf.size < math.prod(shape):
        buf = np.empty(max(math.prod(shape), 1), dtype)
        _scratch.buf = buf
    return buf[: math.prod(shape)].reshape(shape)


# ---------------------------------------------------------------------------------
# linear_scan
# ---------------------------------------------------------------------------------


def _ls_summary(a: Any, b: Any, *, reverse: bool, cdt: np.dtype) -> Any:
    """Pass 1 of a time chunk: stack (prod a, end state from zero) on a new last axis.

    The states of pass 1 are thrown away: on NumPy blocks they go to a per-thread
    reused buffer (warm pages, no page faults). (Scanning in cache-sized time
    sub-blocks instead was measured slower: the sub-block views are not
    contiguous, so the op copies them.)
    """
    xp = _xp(b)
    shape = np.broadcast_shapes(a.shape, b.shape)
    S = shape[-1]
    out = None
    if xp is np and math.prod(shape) * cdt.itemsize >= 1 << 20:
        out = _scratch_out(shape, cdt)
    if out is not None:
        _, e = _core.linear_scan(a, b, reverse=reverse, return_final_state=True, out=out)
    else:
        _, e = _core.linear_scan(a, b, reverse=reverse, return_final_state=True)
    p = _ipow(a[..., 0], S) if a.shape[-1] == 1 else _prod_last(a)
    p = xp.broadcast_to(xp.asarray(p, dtype=cdt), e.shape)
    return xp.stack([p, e], axis=-1)


def _diag_combine(summary: Any, h0: Any, keep: Any = None, *, reverse: bool, cdt: np.dtype) -> Any:
    """Sequential combine of K (P, E) pairs: the initial state of every chunk, then the final state.

    ``keep[..., k]`` (packed sequences) is False where chunk k starts a new
    sequence: its initial state is then 0 instead of the previous end state.
    """
    xp = _xp(summary)
    K = summary.shape[-1] // 2
    lead = summary.shape[:-1]
    out = xp.empty(lead + (K + 1,), cdt)
    h = xp.zeros(lead, cdt) if h0 is None else xp.broadcast_to(xp.asarray(h0, dtype=cdt), lead)
    order = range(K - 1, -1, -1) if reverse else range(K)
    for i, k in enumerate(order):
        if keep is not None and i:
            h = xp.where(keep[..., k], h, 0)
        out[..., k] = h
        h = summary[..., 2 * k] * h + summary[..., 2 * k + 1]
    out[..., K] = h
    return out


def _ls_apply(a: Any, b: Any, h0: Any, *, reverse: bool, final: bool) -> Any:
    if h0 is not None:
        h0 = h0[..., 0]
    return _core.linear_scan(a, b, h0, reverse=reverse, return_final_state=final)


def _h0_time(h0: da.Array | None) -> da.Array | None:
    """An initial state with a time axis of length 1, so that it lines up with the time blocks."""
    return None if h0 is None else h0[..., None]


def _combine_call(fn: Callable[..., Any], summary: da.Array, ind: str, h0: da.Array | None, h0_ind: str,
                  K: int, dtype: np.dtype, meta: Any, **kw: Any) -> da.Array:
    """One combine task per block of the non-time axes; the time axis of the result has K + 1 entries."""
    return da.blockwise(fn, ind, *_args((summary, ind), (h0, h0_ind)), align_arrays=False, concatenate=True,
                        adjust_chunks={ind[-1]: (K + 1,)}, dtype=dtype, meta=meta, cdt=dtype, **kw)


def _ls_setup(a: Any, b: Any, h0: Any):
    fn = "ssmcore.dask.linear_scan"
    b = _dask(b)
    weak = lambda x: type(x) in (int, float, complex)  # noqa: E731  (Python scalars do not widen, as in the core)
    if weak(a):
        a = np.asarray(a, dtype=np.result_type(b.dtype, a))
    a = _dask(a)
    if weak(h0):
        h0 = np.asarray(h0, dtype=np.result_type(a.dtype, b.dtype, h0))
    h0 = _dask(h0)
    if a.ndim == 0:
        a = a[None]
    if b.ndim == 0:
        raise ValueError(f"{fn}: b has shape (); expected (..., L) with time on the last axis")
    shape = _broadcast_shape(fn, ("a", "b"), (a.shape, b.shape))
    nd = len(shape)
    a, b = _pad(a, nd), _pad(b, nd)
    chunks = _target_chunks(shape, (b, a))
    a = _align(a, range(nd), chunks)
    b = _align(b, range(nd), chunks)
    if h0 is not None:
        try:
            np.broadcast_shapes(h0.shape, shape[:-1])
            ok = h0.ndim <= nd - 1 and np.broadcast_shapes(h0.shape, shape[:-1]) == shape[:-1]
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{fn}: h0 has shape {h0.shape}; expected {shape[:-1]} or a shape that broadcasts to it")
        h0 = _align(_pad(h0, nd - 1), range(nd - 1), chunks[:-1])
    # dtype and validation by the op itself on tiny blocks of the same dtypes
    probe = _core.linear_scan(np.ones((1,) * nd, a.dtype), np.ones((1,) * nd, b.dtype),
                              None if h0 is None else np.ones((1,) * (nd - 1), h0.dtype))
    return a, b, h0, shape, chunks, probe.dtype


def linear_scan(
    a: Any, b: Any, h0: Any = None, *, reverse: bool = False, return_final_state: bool = False,
) -> da.Array | tuple[da.Array, da.Array]:
    r"""Lazy :func:`ssmcore.linear_scan` on Dask arrays, exact for any chunking in time.

    .. math:: h_t = a_t h_{t-1} + b_t, \qquad h_{-1} = h_0

    Parameters
    ----------
    a, b, h0 : dask or NumPy arrays
        As for :func:`ssmcore.linear_scan` (time last; ``a`` of time length 1 is
        constant in time). The output is chunked like ``b`` (``a`` and ``h0``
        are rechunked to it where they are not broadcast).
    reverse, return_final_state : bool
        As for :func:`ssmcore.linear_scan`.

    Returns
    -------
    h : dask.array.Array
    h_final : dask.array.Array, only with ``return_final_state``

    Notes
    -----
    With K time chunks of lengths :math:`S_k`, pass 1 computes per chunk
    :math:`P_k = \prod_t a_t` (``a**S_k`` by binary powering for constant
    ``a``) and :math:`E_k` (the end state from zero, written into a reused
    per-thread buffer); the combine runs the K-step recurrence
    :math:`h^{(k+1)} = P_k h^{(k)} + E_k` per channel block; pass 2 reruns each
    chunk from its initial state. About 1.5x the memory traffic of one scan.

    Examples
    --------
    >>> import numpy as np, dask.array as da, ssmcore, ssmcore.dask
    >>> b = da.ones((2, 10), chunks=(1, 3))               # 2 channels, time in chunks of 3
    >>> h, hT = ssmcore.dask.linear_scan(0.5, b, return_final_state=True)
    >>> h.chunks
    ((1, 1), (3, 3, 3, 1))
    >>> bool(np.allclose(h.compute(), ssmcore.linear_scan(0.5, np.ones((2, 10)))))
    True
    """
    a, b, h0, shape, chunks, dtype = _ls_setup(a, b, h0)
    nd = len(shape)
    ind = _letters(nd)
    lead_ind = ind[:-1]
    tchunks = chunks[-1]
    K = len(tchunks)
    meta = _meta(b._meta, nd, dtype)
    if K == 1:
        if not return_final_state:
            return da.blockwise(_task(_ls_apply), ind, *_args((a, ind), (b, ind), (_h0_time(h0), ind)),
                                align_arrays=False, concatenate=True, adjust_chunks=dict(zip(ind, chunks)),
                                dtype=dtype, meta=meta,
                                reverse=reverse, final=False)
        res = da.blockwise(_task(_ls_apply), ind, *_args((a, ind), (b, ind), (_h0_time(h0), ind)),
                           align_arrays=False, concatenate=True, adjust_chunks=dict(zip(ind, chunks)), dtype=object,
                           meta=np.empty((0,) * nd, object), reverse=reverse, final=True)
        h, hf = _split(res, [(chunks, dtype, b._meta, None), (chunks[:-1], dtype, b._meta, 1)])
        return h, hf
    summary = da.blockwise(_task(_ls_summary), ind, a, ind, b, ind, align_arrays=False, concatenate=True,
                           adjust_chunks={**dict(zip(ind, chunks)), ind[-1]: (2,) * K}, dtype=dtype, meta=meta,
                           reverse=reverse, cdt=dtype)
    inits = _combine_call(_diag_combine, summary.rechunk({nd - 1: -1}), ind, h0, lead_ind, K, dtype, meta,
                          reverse=reverse)
    h_in = inits[..., :K].rechunk({nd - 1: 1})
    h = da.blockwise(_task(_ls_apply), ind, a, ind, b, ind, h_in, ind, align_arrays=False, concatenate=True,
                     adjust_chunks=dict(zip(ind, chunks)), dtype=dtype, meta=meta, reverse=reverse, final=False)
    return (h, inits[..., K]) if return_final_state else h


# ---------------------------------------------------------------------------------
# LTI simulation: lti_simulate_diag, lti_simulate, dlsim
# ---------------------------------------------------------------------------------


def _end_state(x: Any) -> Any:
    """An end state with a time-chunk axis of length 1 before its state axis."""
    return x[..., None, :]


def _ltid_summary(A, B, C, u, **kw):
    _, xf = _core.lti_simulate_diag(A, B, C, None, u, return_final_state=True, **kw)
    return _end_state(xf)


def _ltid_apply(A, B, C, D, u, x0, *, final: bool, **kw):
    return _core.lti_simulate_diag(A, B, C, D, u, None if x0 is None else x0[..., 0, :], return_final_state=final,
                                   **kw)


def _ltid_combine(summary, A, x0, *, sizes, cdt, reverse=False):
    """x^{(k+1)} = A^{S_k} x^{(k)} + E_k, elementwise in the state (diagonal A)."""
    xp = _xp(summary)
    K = summary.shape[-2]
    lead = np.broadcast_shapes(summary.shape[:-2], A.shape[:-1])
    N = summary.shape[-1]
    out = xp.empty(lead + (K + 1, N), cdt)
    x = xp.zeros(lead + (N,), cdt) if x0 is None else xp.broadcast_to(xp.asarray(x0, dtype=cdt), lead + (N,))
    A = xp.asarray(A, dtype=cdt)
    for k in (range(K - 1, -1, -1) if reverse else range(K)):
        out[..., k, :] = x
        x = _ipow(A, sizes[k]) * x + summary[..., k, :]
    out[..., K, :] = x
    return out


def _lti_combine(summary, A, x0, *, sizes, cdt):
    """x^{(k+1)} = A^{S_k} x^{(k)} + E_k with dense A (binary powers of A)."""
    xp = _xp(summary)
    K = summary.shape[-2]
    N = summary.shape[-1]
    lead = np.broadcast_shapes(summary.shape[:-2], A.shape[:-2])
    out = xp.empty(lead + (K + 1, N), cdt)
    x = xp.zeros(lead + (N,), cdt) if x0 is None else xp.broadcast_to(xp.asarray(x0, dtype=cdt), lead + (N,))
    A = xp.asarray(A, dtype=cdt)
    powers: dict[int, Any] = {}
    for k in range(K):
        out[..., k, :] = x
        S = sizes[k]
        if S not in powers:
            powers[S] = _mpow(A, S)
        x = (powers[S] @ x[..., None])[..., 0] + summary[..., k, :]
    out[..., K, :] = x
    return out


def _batch_setup(fn: str, named: dict[str, tuple[Any, int]], primary: str):
    """Dask-ify operands, pad their batch axes to a common count; (arrays, batch shape, nb)."""
    arrays = {k: _dask(v) for k, (v, _) in named.items()}
    shapes = {}
    for k, (v, core) in named.items():
        x = arrays[k]
        if x is None:
            continue
        if x.ndim < core:
            raise ValueError(f"{fn}: {k} has shape {x.shape}; expected at least {core} axes")
        shapes[k] = x.shape[: x.ndim - core]
    batch = _broadcast_shape(fn, list(shapes), list(shapes.values()))
    nb = len(batch)
    for k, (v, core) in named.items():
        arrays[k] = _pad(arrays[k], nb + core)
    return arrays, batch, nb


def lti_simulate_diag(
    A: Any, B: Any, C: Any, D: Any, u: Any, x0: Any = None, *, conj_sym: bool = False,
    real_output: bool | None = None, mode: str = "recurrent", return_final_state: bool = False,
) -> da.Array | tuple[da.Array, da.Array]:
    r"""Lazy :func:`ssmcore.lti_simulate_diag` on Dask arrays, exact for any chunking in time.

    Parameters
    ----------
    A, B, C : arrays, shape (..., H, N)
    D : array, shape (..., H), or None
    u : dask array, shape (..., H, L)
        Chunked over batch, channels H and time as you like; the output is
        chunked like ``u``. The state axis N is one chunk.
    x0 : array, shape (..., H, N), optional
    conj_sym, real_output, mode, return_final_state
        As for :func:`ssmcore.lti_simulate_diag`.

    Returns
    -------
    y : dask.array.Array, shape (..., H, L)
    x_final : dask.array.Array, shape (..., H, N), only with ``return_final_state``

    Notes
    -----
    Time chunk k is the map :math:`x \mapsto A^{S_k} x + E_k`; pass 1 computes
    :math:`E_k` (final state from zero), the combine computes :math:`A^{S_k}`
    by binary powering and the chunks' initial states, pass 2 reruns them.
    """
    fn = "ssmcore.dask.lti_simulate_diag"
    kw = dict(conj_sym=conj_sym, real_output=real_output, mode=mode)
    ar, batch, nb = _batch_setup(fn, dict(A=(A, 2), B=(B, 2), C=(C, 2), D=(D, 1), u=(u, 2), x0=(x0, 2)), "u")
    A, B, C, D, u, x0 = (ar[k] for k in ("A", "B", "C", "D", "u", "x0"))
    H, N = u.shape[-2], A.shape[-1]
    # validation (core shapes, dtypes, options) and output dtypes from the op itself, on tiny probes
    one = lambda x, n: None if x is None else np.ones((1,) * nb + x.shape[nb:nb + n] + (1,) * (x.ndim - nb - n),
                                                       # noqa: E731
                                                      x.dtype)
    y_p, x_p = _core.lti_simulate_diag(one(A, 2), one(B, 2), one(C, 2), one(D, 1), one(u, 1), one(x0, 2),
                                       return_final_state=True, **kw)
    bi = _letters(nb, "hnt")
    full = batch + (H,)
    lead_chunks = _target_chunks(full, (u, A, B, C, x0, _pad(D, nb + 1)))
    lax = list(range(nb + 1))
    A, B, C, x0 = (_single(_align(x, lax, lead_chunks), [-1]) for x in (A, B, C, x0))
    D = _align(D, lax, lead_chunks)
    u = _align(u, lax, lead_chunks)
    ydt, xdt = y_p.dtype, x_p.dtype
    tchunks = u.chunks[-1]
    K = len(tchunks)
    li, si = bi + "h", bi + "hn"
    y_chunks = dict(zip(li + "t", lead_chunks + (tchunks,)))
    ymeta, xmeta = _meta(u._meta, nb + 2, ydt), _meta(u._meta, nb + 2, xdt)
    if K == 1:
        args = _args((A, si), (B, si), (C, si), (D, li), (u, li + "t"), (None if x0 is None else x0[..., None, :],
                                                                              li + "tn"))
        if not return_final_state:
            return da.blockwise(_task(_ltid_apply), li + "t", *args, align_arrays=False, concatenate=True,
                                adjust_chunks=y_chunks,
                                dtype=ydt, meta=ymeta, final=False, **kw)
        res = da.blockwise(_task(_ltid_apply), li + "t", *args, align_arrays=False, concatenate=True,
                           adjust_chunks=y_chunks,
                           dtype=object, meta=np.empty((0,) * (nb + 2), object), final=True, **kw)
        return tuple(_split(res, [(lead_chunks + (tchunks,), ydt, u._meta, None),
                                  (lead_chunks + ((N,),), xdt, u._meta, None)]))
    summary = da.blockwise(_task(_ltid_summary), li + "tn", A, si, B, si, C, si, u, li + "t", align_arrays=False,
                           concatenate=True,
                           new_axes={"n": N}, adjust_chunks={**dict(zip(li, lead_chunks)), "t": (1,) * K},
                           dtype=xdt, meta=xmeta, **kw)
    summary = summary.rechunk({nb + 1: -1})
    inits = da.blockwise(_ltid_combine, li + "tn", *_args((summary, li + "tn"), (A, si), (x0, si)),
                         align_arrays=False, concatenate=True, adjust_chunks={"t": (K + 1,)}, dtype=xdt, meta=xmeta,
                         sizes=tchunks,
                         cdt=xdt)
    x_in = inits[..., :K, :].rechunk({nb + 1: 1})
    y = da.blockwise(_task(_ltid_apply), li + "t", A, si, B, si, C, si, *_args((D, li)), u, li + "t", x_in,
                     li + "tn", align_arrays=False, concatenate=True, adjust_chunks=y_chunks, dtype=ydt, meta=ymeta,
                     final=False, **kw)
    return (y, inits[..., K, :]) if return_final_state else y


def _lti_summary(A, B, C, u):
    _, xf = _core.lti_simulate(A, B, C[..., :0, :], None, u, return_final_state=True)
    return _end_state(xf)


def _lti_apply(A, B, C, D, u, x0, *, final: bool, mode: str):
    return _core.lti_simulate(A, B, C, D, u, None if x0 is None else x0[..., 0, :], mode=mode,
                              return_final_state=final)


def lti_simulate(
    A: Any, B: Any, C: Any, D: Any, u: Any, x0: Any = None, *, mode: str = "recurrent",
    return_final_state: bool = False,
) -> da.Array | tuple[da.Array, da.Array]:
    r"""Lazy :func:`ssmcore.lti_simulate` on Dask arrays, exact for any chunking in time.

    Parameters
    ----------
    A : (..., N, N); B : (..., N, M); C : (..., P, N); D : (..., P, M) or None
    u : dask array, shape (..., M, L)
        Chunked over batch and time; M (and N, P of the system matrices) are one chunk.
    x0 : (..., N), optional
    mode, return_final_state
        As for :func:`ssmcore.lti_simulate`.

    Returns
    -------
    y : dask.array.Array, shape (..., P, L), chunked like ``u`` in batch and time
    x_final : dask.array.Array, shape (..., N), only with ``return_final_state``

    Notes
    -----
    Pass 1 runs each time chunk from zero without a readout (C with no rows) to
    get its end state :math:`E_k`; the combine applies
    :math:`x^{(k+1)} = A^{S_k} x^{(k)} + E_k` with :math:`A^{S_k}` by binary
    powering (one per distinct chunk length); pass 2 reruns the chunks.
    """
    fn = "ssmcore.dask.lti_simulate"
    ar, batch, nb = _batch_setup(fn, dict(A=(A, 2), B=(B, 2), C=(C, 2), D=(D, 2), u=(u, 2), x0=(x0, 1)), "u")
    A, B, C, D, u, x0 = (ar[k] for k in ("A", "B", "C", "D", "u", "x0"))
    N, M, P = A.shape[-1], u.shape[-2], C.shape[-2]
    one = lambda x, core: None if x is None else np.ones((1,) * nb + core, x.dtype)  # noqa: E731
    y_p, x_p = _core.lti_simulate(one(A, A.shape[-2:]), one(B, B.shape[-2:]), one(C, C.shape[-2:]),
                                  None if D is None else one(D, D.shape[-2:]), one(u, (M, 1)),
                                  None if x0 is None else one(x0, x0.shape[-1:]), mode=mode, return_final_state=True)
    bi = _letters(nb, "nmpt")
    lead_chunks = _target_chunks(batch, (u, A, B, C, D, x0))
    lax = list(range(nb))
    A, B, C, D = (_single(_align(x, lax, lead_chunks), [-1, -2]) for x in (A, B, C, D))
    x0 = _single(_align(x0, lax, lead_chunks), [-1])
    u = _single(_align(u, lax, lead_chunks), [-2])
    ydt, xdt = y_p.dtype, x_p.dtype
    tchunks = u.chunks[-1]
    K = len(tchunks)
    ymeta, xmeta = _meta(u._meta, nb + 2, ydt), _meta(u._meta, nb + 2, xdt)
    y_chunks = {**dict(zip(bi, lead_chunks)), "p": (P,), "t": tchunks}
    if K == 1:
        args = _args((A, bi + "nn"), (B, bi + "nm"), (C, bi + "pn"), (D, bi + "pm"), (u, bi + "mt"),
                     (None if x0 is None else x0[..., None, :], bi + "tn"))
        if not return_final_state:
            return da.blockwise(_task(_lti_apply), bi + "pt", *args, align_arrays=False, concatenate=True,
                                adjust_chunks=y_chunks,
                                dtype=ydt, meta=ymeta, final=False, mode=mode)
        res = da.blockwise(_task(_lti_apply), bi + "pt", *args, align_arrays=False, concatenate=True,
                           adjust_chunks=y_chunks,
                           dtype=object, meta=np.empty((0,) * (nb + 2), object), final=True, mode=mode)
        y, xf = _split(res, [(lead_chunks + ((P,), tchunks), ydt, u._meta, None),
                             (lead_chunks + ((N,),), xdt, u._meta, 1)])
        return y, xf
    summary = da.blockwise(_task(_lti_summary), bi + "tn", A, bi + "nn", B, bi + "nm", C, bi + "pn", u, bi + "mt",
                           align_arrays=False, concatenate=True, new_axes={"n": N},
                           adjust_chunks={**dict(zip(bi, lead_chunks)), "t": (1,) * K}, dtype=xdt, meta=xmeta)
    summary = summary.rechunk({nb: -1})
    inits = da.blockwise(_lti_combine, bi + "tn", *_args((summary, bi + "tn"), (A, bi + "nn"),
                                                         (x0, bi + "n")),
                         align_arrays=False, concatenate=True, adjust_chunks={"t": (K + 1,)}, dtype=xdt, meta=xmeta,
                         sizes=tchunks,
                         cdt=xdt)
    x_in = inits[..., :K, :].rechunk({nb: 1})
    y = da.blockwise(_task(_lti_apply), bi + "pt", *_args((A, bi + "nn"), (B, bi + "nm"), (C, bi + "pn"),
                                                          (D, bi + "pm"), (u, bi + "mt"), (x_in, bi + "tn")),
                     align_arrays=False, concatenate=True, adjust_chunks=y_chunks, dtype=ydt, meta=ymeta,
                     final=False, mode=mode)
    return (y, inits[..., K, :]) if return_final_state else y


def _dlsim_summary(u, *, A, B):
    n = A.shape[0]
    _, xf = _core.lti_simulate(A, B, A[:0], None, u.T, return_final_state=True)
    return xf.reshape(1, n)


def _dlsim_apply(u, x0, *, system):
    _, y, x = _core.dlsim(system, u, x0=None if x0 is None else x0[0])
    return y, x


def _state_space(fn: str, system: Any) -> tuple[tuple[np.ndarray, ...], Any, bool]:
    """((A, B, C, D), dt, is_state_space) of a dlsim system, converted as scipy does."""
    from scipy import signal

    if isinstance(system, signal.dlti):
        ss = system if isinstance(system, signal.StateSpace) else system.to_ss()
        return (ss.A, ss.B, ss.C, ss.D), system.dt, isinstance(system, signal.StateSpace)
    if not isinstance(system, (tuple, list)) or len(system) not in (3, 4, 5):
        raise TypeError(f"{fn}: system must be a dlti or a tuple (num, den, dt), (zeros, poles, gain, dt) or "
                        f"(A, B, C, D, dt); got {type(system).__name__}")
    *parts, dt = system
    if len(parts) == 4:
        return tuple(np.asarray(m) for m in signal.abcd_normalize(*parts)), dt, True
    ss = signal.dlti(*parts, dt=dt).to_ss()
    return (ss.A, ss.B, ss.C, ss.D), dt, False


def dlsim(system: Any, u: Any, t: Any = None, x0: Any = None) -> tuple[da.Array, ...]:
    r"""Lazy :func:`ssmcore.dlsim` (scipy's control convention) on a Dask input, exact over time chunks.

    Parameters
    ----------
    system : tuple or scipy.signal.dlti
        As for :func:`ssmcore.dlsim` (a small NumPy system).
    u : dask array, shape (L,) or (L, m)
        Rows are time; chunk rows freely (the inputs axis is one chunk).
    t : None
        Interpolation onto a new time grid is not done lazily: resample ``u``
        to the step ``dt`` first and pass ``t=None``.
    x0 : array, shape (n,), optional

    Returns
    -------
    tout : dask array (L,)
    yout : dask array (L, p)
    xout : dask array (L, n), only for state-space systems (as scipy)
    """
    fn = "ssmcore.dask.dlsim"
    if t is not None:
        raise ValueError(f"{fn}: t is not supported on dask arrays (it resamples u onto a new grid); "
                         "interpolate u to the step dt first and call with t=None")
    (A, B, C, D), dt, is_ss = _state_space(fn, system)
    u = _dask(u)
    if u.ndim == 1:
        u = u[:, None]
    u = _single(u, [1])
    n, p = A.shape[0], C.shape[0]
    x0 = None if x0 is None else _single(_dask(x0), [0])
    probe = _core.dlsim((A, B, C, D, dt), np.ones((1, u.shape[1]), u.dtype),
                        x0=None if x0 is None else np.ones(x0.shape, x0.dtype))
    dtype = probe[1].dtype
    A, B, C, D = (np.asarray(x, dtype) for x in (A, B, C, D))
    L = u.shape[0]
    tchunks = u.chunks[0]
    K = len(tchunks)
    meta = _meta(u._meta, 2, dtype)
    if K == 1:
        x_in = None if x0 is None else x0[None, :]
    else:
        summary = da.blockwise(_task(_dlsim_summary), "tn", u.astype(dtype), "tm", align_arrays=False,
                               concatenate=True, new_axes={"n": n}, adjust_chunks={"t": (1,) * K}, dtype=dtype,
                               meta=meta, A=A, B=B)
        summary = summary.rechunk({0: -1})
        inits = da.blockwise(_lti_combine, "tn", *_args((summary, "tn"), (da.from_array(A), "nz"),
                                                        (None if x0 is None else x0.astype(dtype), "n")),
                             align_arrays=False, concatenate=True, adjust_chunks={"t": (K + 1,)}, dtype=dtype,
                             meta=meta, sizes=tchunks, cdt=dtype)
        x_in = inits[:K].rechunk({0: 1})
    res = da.blockwise(_task(_dlsim_apply), "tm", *_args((u, "tm"), (x_in, "tn")), align_arrays=False,
                       concatenate=True, adjust_chunks={"t": tchunks}, dtype=object,
                       meta=np.empty((0, 0), object), system=(A, B, C, D, dt))
    y, x = _split(res, [((tchunks, (p,)), dtype, u._meta, None), ((tchunks, (n,)), dtype, u._meta, None)])
    tout = da.linspace(0.0, (L - 1) * dt if L else 0.0, L, chunks=(tchunks,))
    return (tout, y, x) if is_ss else (tout, y)


# ---------------------------------------------------------------------------------
# Discretisation: elementwise over batch blocks
# ---------------------------------------------------------------------------------


def _disc_apply(A, B, dt, *, fn_name, method, alpha):
    return getattr(_core, fn_name)(A, B, dt, method, alpha)


def discretize_diag(A: Any, B: Any, dt: Any, method: str = "zoh", alpha: float | None = None
                    ) -> tuple[da.Array, da.Array]:
    """Lazy :func:`ssmcore.discretize_diag`: one call per block of the broadcast shape.

    ``A`` (..., N), ``B`` (..., N) or (..., N, M), ``dt`` a float or an array
    (with ``dt.ndim < A.ndim`` it is a step per channel, as in the core). The
    outputs are chunked like the first operand that spans each axis (A, then B, dt);
    B's trailing input axis M is one chunk.
    """
    fn = "ssmcore.dask.discretize_diag"
    A, B = _dask(A), _dask(B)
    dt_arr = _dask(dt) if not isinstance(dt, (int, float)) else None
    matrix_B = B.ndim == A.ndim + 1
    if dt_arr is not None and dt_arr.ndim < A.ndim:
        dt_arr = dt_arr[..., None]
    Bs = B.shape[:-1] if matrix_B else B.shape
    shape = _broadcast_shape(fn, ("A", "B", "dt"), (A.shape, Bs, () if dt_arr is None else dt_arr.shape))
    nd = len(shape)
    A = _pad(A, nd)
    B = _pad(B, nd + 1) if matrix_B else _pad(B, nd)
    dt_arr = _pad(dt_arr, nd)
    Bstate = B[..., 0] if matrix_B else B
    chunks = _target_chunks(shape, (A, Bstate, dt_arr))
    A, dt_arr = (_align(x, range(nd), chunks) for x in (A, dt_arr))
    B = _single(_align(B, range(nd), chunks), [-1]) if matrix_B else _align(B, range(nd), chunks)
    ind = _letters(nd, "z")
    Ad_p, Bd_p = _core.discretize_diag(np.ones((1,) * nd, A.dtype), np.ones((1,) * B.ndim, B.dtype),
                                       1.0 if dt_arr is None else np.ones((1,) * nd, dt_arr.dtype), method, alpha)
    b_ind = ind + ("z" if matrix_B else "")
    out_chunks = chunks + (((B.shape[-1],),) if matrix_B else ())
    res = da.blockwise(_task(_disc_apply), b_ind, *_args((A, ind), (B, b_ind)),
                       *(_args((dt_arr, ind)) if dt_arr is not None else [dt, None]),
                       align_arrays=False, concatenate=True, adjust_chunks=dict(zip(b_ind, out_chunks)),
                       dtype=object, meta=np.empty((0,) * len(b_ind), object), fn_name="discretize_diag",
                       method=method, alpha=alpha)
    Ad, Bd = _split(res, [(chunks, Ad_p.dtype, A._meta, 1 if matrix_B else None),
                          (out_chunks, Bd_p.dtype, A._meta, None)])
    return Ad, Bd


def discretize(A: Any, B: Any, dt: Any, method: str = "zoh", alpha: float | None = None
               ) -> tuple[da.Array, da.Array]:
    """Lazy :func:`ssmcore.discretize` for stacks of dense systems, one call per batch block.

    ``A`` (..., N, N), ``B`` (..., N, M), ``dt`` a float or an array broadcasting
    against the batch axes; N and M are one chunk.
    """
    fn = "ssmcore.dask.discretize"
    A, B = _dask(A), _dask(B)
    dt_arr = _dask(dt) if not isinstance(dt, (int, float)) else None
    batch = _broadcast_shape(fn, ("A", "B", "dt"), (A.shape[:-2], B.shape[:-2],
                                                    () if dt_arr is None else dt_arr.shape))
    nb = len(batch)
    A, B = (_single(_pad(x, nb + 2), [-1, -2]) for x in (A, B))
    dt_arr = _pad(dt_arr, nb)
    chunks = _target_chunks(batch, (A, B, dt_arr))
    A, B, dt_arr = (_align(x, range(nb), chunks) for x in (A, B, dt_arr))
    N, M = A.shape[-1], B.shape[-1]
    bi = _letters(nb, "nm")
    Ad_p, Bd_p = _core.discretize(np.ones((1,) * nb + (N, N), A.dtype) * np.eye(N), np.ones((1,) * nb + (N, M),
                                  B.dtype), 1.0 if dt_arr is None else np.ones((1,) * nb, dt_arr.dtype), method, alpha)
    res = da.blockwise(_task(_disc_apply), bi + "nm", *_args((A, bi + "nn"), (B, bi + "nm")),
                       *(_args((dt_arr, bi)) if dt_arr is not None else [dt, None]),
                       align_arrays=False, concatenate=True,
                       adjust_chunks={**dict(zip(bi, chunks)), "n": (N,), "m": (M,)}, dtype=object,
                       meta=np.empty((0,) * (nb + 2), object), fn_name="discretize", method=method, alpha=alpha)
    Ad, Bd = _split(res, [(chunks + ((N,), (N,)), Ad_p.dtype, A._meta, None),
                          (chunks + ((N,), (M,)), Bd_p.dtype, A._meta, None)])
    return Ad, Bd


# ---------------------------------------------------------------------------------
# fft_conv: overlap over time chunks
# ---------------------------------------------------------------------------------


def _conv_window(u, K, D, *, bidirectional, keep, c_out):
    W = u.shape[-1]
    Kw = K[..., : min(K.shape[-1], W)]  # taps longer than the window only reach outside [0, L)
    threads = _threads_for_task() if _is_numpy(u) else None
    y = _core.fft_conv(u, Kw, D, bidirectional=bidirectional, workers=threads)
    y = y[..., keep[0]: keep[1]]
    if c_out is not None:  # (..., C_out * Hb, S) -> (..., C_out, Hb, S): the global (c h) order is rebuilt outside
        y = y.reshape(y.shape[:-2] + (c_out, y.shape[-2] // c_out, y.shape[-1]))
    return y


def fft_conv(u: Any, K: Any, D: Any = None, *, bidirectional: bool = False) -> da.Array:
    r"""Lazy :func:`ssmcore.fft_conv` on a Dask input, exact over time chunks (overlapping windows).

    Output time chunk :math:`[s, e)` is the FFT convolution of the window
    :math:`[s - (L_k - 1), e)` of ``u`` (plus :math:`L_k` steps to the right when
    bidirectional), clipped to :math:`[0, L)`, keeping its last :math:`e - s`
    outputs: the taps that reach before the window are exactly the zeros before
    t = 0 or samples inside it. Each window costs :math:`O((S + L_k)\log)`; chunks
    much longer than the kernel keep the overlap small.

    Parameters
    ----------
    u : dask array, (..., H, L) (or (..., L) with a 1-D kernel)
        Batch, channel and time axes may be chunked.
    K : array, (L_k,), (H, L_k) or (C_out, H, L_k)
        Kernels (NumPy or Dask; the tap axis is one chunk).
    D : array, optional, scalar, (H,) or (C_out, H)
    bidirectional : bool

    Returns
    -------
    y : dask.array.Array, (..., C_out * H, L)
        Channel blocks follow ``u``'s H chunks when C_out is 1; with C_out > 1 the
        (c h) flattening merges the two axes (Dask rechunks H into one chunk there).
    """
    u, K = _dask(u), _dask(K)
    D = _dask(D)
    L = u.shape[-1]
    Lk = K.shape[-1]
    K = _single(K, [-1])
    one_d = K.ndim == 1
    c_out = None if K.ndim < 3 else K.shape[0] // (2 if bidirectional else 1)
    dtype = np.result_type(u.dtype, K.dtype)
    if not one_d:
        # channel blocks of K and D follow u's H chunks
        hchunks = u.chunks[-2]
        K = K.rechunk({K.ndim - 2: hchunks}) if K.shape[-2] != 1 else K
        if D is not None and D.ndim >= 1 and D.shape[-1] != 1:
            D = D.rechunk({D.ndim - 1: hchunks})
    left, right = max(Lk - 1, 0), (Lk if bidirectional else 0)
    pieces = []
    start = 0
    nb = u.ndim - (1 if one_d else 2)
    bi = _letters(nb, "hct")
    for S in u.chunks[-1]:
        lo, hi = max(0, start - left), min(L, start + S + right)
        w = u[..., lo:hi].rechunk({u.ndim - 1: -1})
        keep = (start - lo, start - lo + S)
        if one_d:
            piece = da.blockwise(_task(_conv_window), bi + "t", w, bi + "t", K, "k", *_args((D, "")),
                                 align_arrays=False, concatenate=True, adjust_chunks={"t": (S,)}, dtype=dtype,
                                 meta=_meta(u._meta, u.ndim, dtype), bidirectional=bidirectional, keep=keep,
                                 c_out=None)
        elif c_out is None:
            piece = da.blockwise(_task(_conv_window), bi + "ht", w, bi + "ht", K, "hk",
                                 *_args((D, "h"[: 0 if D is None else D.ndim])),
                                 align_arrays=False, concatenate=True, adjust_chunks={"t": (S,)}, dtype=dtype,
                                 meta=_meta(u._meta, u.ndim, dtype), bidirectional=bidirectional, keep=keep,
                                 c_out=None)
        else:
            d_ind = None if D is None else {0: "", 1: "h", 2: "ch"}[D.ndim]
            if D is not None and D.ndim == 2:
                D = D.rechunk({0: -1})
            piece = da.blockwise(_task(_conv_window), bi + "cht", w, bi + "ht", K.rechunk({0: -1}), "chk",
                                 *_args((D, d_ind)), align_arrays=False, concatenate=True,
                                 adjust_chunks={"t": (S,), "c": (c_out,)}, dtype=dtype,
                                 meta=_meta(u._meta, u.ndim + 1, dtype), bidirectional=bidirectional, keep=keep,
                                 c_out=c_out)
        pieces.append(piece)
        start += S
    y = da.concatenate(pieces, axis=-1) if pieces else da.zeros(u.shape, dtype=dtype)
    if c_out is not None:
        y = y.reshape(y.shape[:-3] + (y.shape[-3] * y.shape[-2], L))
    return y


# ---------------------------------------------------------------------------------
# Selective scan (Mamba) and SSD (Mamba-2): decay exp(A sum dt) per chunk
# ---------------------------------------------------------------------------------

_SOFTPLUS_LINEAR_ABOVE = 20.0  # mamba's threshold, as in the core


def _softplus(xp: Any, v: Any) -> Any:
    return xp.where(v > _SOFTPLUS_LINEAR_ABOVE, v, xp.log1p(xp.exp(xp.minimum(v, _SOFTPLUS_LINEAR_ABOVE))))


def _pair_combine(summary: Any, h0: Any, keep: Any = None, *, axis: int, reverse: bool, cdt: np.dtype) -> Any:
    """``_diag_combine`` along ``axis`` of (P_k, E_k) pairs stacked as 2K entries.

    ``keep`` (batch, K) is broadcast over the other axes (batch is axis 0).
    """
    xp = _xp(summary)
    moved = xp.moveaxis(summary, axis, -1)
    if keep is not None:
        keep = keep.reshape((keep.shape[0],) + (1,) * (moved.ndim - 2) + (keep.shape[-1],))
    out = _diag_combine(moved, h0, keep, reverse=reverse, cdt=cdt)
    return xp.moveaxis(out, -1, axis)


def _seq_keep(seq: da.Array, tch: tuple[int, ...], reverse: bool) -> da.Array:
    """(batch, K) flags: chunk k continues the sequence of the chunk before it in scan order."""
    ends = np.cumsum(tch)
    starts = ends - np.asarray(tch)
    first, last = seq[:, starts.tolist()], seq[:, (ends - 1).tolist()]
    ones = da.ones((seq.shape[0], 1), dtype=bool, chunks=(seq.chunks[0], 1))
    if reverse:  # scan order K-1 .. 0: chunk k follows chunk k + 1
        keep = da.concatenate([last[:, :-1] == first[:, 1:], ones], axis=1)
    else:
        keep = da.concatenate([ones, first[:, 1:] == last[:, :-1]], axis=1)
    return keep.rechunk({1: -1})


def _inner_reset(xp: Any, seq: Any, index0_rule: bool) -> Any:
    """(batch,) True where the state restarts inside a chunk (so its transition P_k is 0)."""
    r = xp.any(seq[:, 1:] != seq[:, :-1], axis=1) if seq.shape[1] > 1 else xp.zeros(seq.shape[0], bool)
    if index0_rule:  # ssd: the initial state belongs to index 0
        r = r | (seq[:, 0] != 0)
    return r


def _ss_summary(u, delta, A, B, C, bias, seq, *, softplus, reverse, cdt):
    xp = _xp(u)
    _, last = _core.selective_scan(u, delta, A, B, C, None, None, bias, softplus, True, reverse=reverse,
                                   seq_idx=seq)
    dt = delta if bias is None else delta + bias[:, None]
    if softplus:
        dt = _softplus(xp, dt)
    decay = xp.exp(dt.sum(axis=-1)[..., None] * A)  # prod_t exp(dt_t A) = exp(A sum_t dt_t)
    if seq is not None:
        decay = xp.where(_inner_reset(xp, seq, False)[:, None, None], 0, decay)
    return xp.stack([decay.astype(cdt), last.astype(cdt)], axis=-2)


def _ss_apply(u, delta, A, B, C, D, z, bias, h0, seq, *, softplus, reverse, final):
    return _core.selective_scan(u, delta, A, B, C, D, z, bias, softplus, final,
                                h0=None if h0 is None else h0[..., 0, :], reverse=reverse, seq_idx=seq)


def selective_scan(
    u: Any, delta: Any, A: Any, B: Any, C: Any, D: Any = None, z: Any = None, delta_bias: Any = None,
    delta_softplus: bool = False, return_last_state: bool = False, *, h0: Any = None, reverse: bool = False,
    seq_idx: Any = None,
) -> da.Array | tuple[da.Array, da.Array]:
    r"""Lazy :func:`ssmcore.selective_scan` (Mamba) on Dask arrays, exact over time chunks.

    ``u``, ``delta`` and ``z`` (batch, D, L) may be chunked over batch, channels
    and time; B/C of shape (batch, N, L) or (batch, G, N, L) follow (their G
    axis is cut at the channel chunks, so channel chunks must be multiples of
    D / G), (D, N) parameters follow the channel chunks. A time chunk's summary
    is its decay :math:`\exp(A \sum_t \Delta_t)` (per batch, channel, state) and
    its last state from zero. With ``seq_idx`` the decay is 0 for a chunk with a
    reset inside it, and a chunk whose first index (in scan order) differs from
    the previous chunk's last starts from 0.
    """
    fn = "ssmcore.dask.selective_scan"
    u, delta, A, B, C, D, z, bias, h0, seq = (_dask(x) for x in (u, delta, A, B, C, D, z, delta_bias, h0, seq_idx))
    if u.ndim != 3:
        raise ValueError(f"{fn}: u has shape {u.shape}; expected (batch, D, L)")
    nb_, nd, L = u.shape
    N = A.shape[-1]
    bch, dch, tch = u.chunks
    delta, z = (_align(x, range(3), u.chunks) for x in (delta, z))
    A = _single(_align(A, [0], [dch]), [1])
    D, bias = (_align(x, [0], [dch]) for x in (D, bias))
    h0 = _single(_align(h0, [0, 1], [bch, dch]), [2])
    seq = _align(seq, [0, 1], [bch, tch])

    def bc(X, name):
        if X.ndim == 2:
            return _single(_align(X, [0], [dch]), [1]), "dn"
        if X.ndim == 3:
            return _single(_align(X, [0, 2], [bch, tch]), [1]), "bnt"
        G = X.shape[1]
        r = nd // G if G and nd % G == 0 else 0
        if not r or any(c % r for c in dch):
            raise ValueError(f"{fn}: {name} has {G} groups of {r or '?'} channels; the channel chunks {dch} of u "
                             f"must be multiples of D / G = {r} (rechunk u's axis 1)")
        return _single(_align(X, [0, 1, 3], [bch, tuple(c // r for c in dch), tch]), [2]), "bdnt"

    (B, bi), (C, ci) = bc(B, "B"), bc(C, "C")
    probe = _core.selective_scan(np.ones((1, nd, 1), u.dtype), np.ones((1, nd, 1), delta.dtype),
                                 np.ones((nd, N), A.dtype), np.ones(B.shape[:-1] + (1,), B.dtype)[:1]
                                 if B.ndim > 2 else np.ones((nd, N), B.dtype),
                                 np.ones(C.shape[:-1] + (1,), C.dtype)[:1] if C.ndim > 2 else np.ones((nd, N), C.dtype),
                                 return_last_state=True)
    odt, sdt = probe[0].dtype, probe[1].dtype
    K = len(tch)
    kw = dict(softplus=bool(delta_softplus), reverse=bool(reverse))
    ometa, smeta = _meta(u._meta, 3, odt), _meta(u._meta, 4, sdt)
    common = [(u, "bdt"), (delta, "bdt"), (A, "dn"), (B, bi), (C, ci)]
    if K == 1:
        h_in = None if h0 is None else h0[:, :, None, :]
    else:
        summary = da.blockwise(_task(_ss_summary), "bdtn", *_args(*common, (bias, "d"), (seq, "bt")),
                               align_arrays=False, concatenate=True, new_axes={"n": N},
                               adjust_chunks={"b": bch, "d": dch, "t": (2,) * K}, dtype=sdt, meta=smeta,
                               cdt=sdt, **kw)
        keep = None if seq is None else _seq_keep(seq, tch, bool(reverse))
        inits = da.blockwise(_pair_combine, "bdtn", *_args((summary.rechunk({2: -1}), "bdtn"), (h0, "bdn"),
                                                           (keep, "bt")),
                             align_arrays=False, concatenate=True, adjust_chunks={"t": (K + 1,)}, dtype=sdt,
                             meta=smeta, axis=2, reverse=bool(reverse), cdt=sdt)
        h_in = inits[:, :, :K].rechunk({2: 1})
    args = _args(*common, (D, "d"), (z, "bdt"), (bias, "d"), (h_in, "bdtn"), (seq, "bt"))
    if K > 1 or not return_last_state:
        out = da.blockwise(_task(_ss_apply), "bdt", *args, align_arrays=False, concatenate=True,
                           adjust_chunks={"b": bch, "d": dch, "t": tch}, dtype=odt, meta=ometa, final=False, **kw)
        if not return_last_state:
            return out
        return out, inits[:, :, K]
    res = da.blockwise(_task(_ss_apply), "bdt", *args, align_arrays=False, concatenate=True,
                       adjust_chunks={"b": bch, "d": dch, "t": tch}, dtype=object,
                       meta=np.empty((0, 0, 0), object), final=True, **kw)
    out, last = _split(res, [((bch, dch, tch), odt, u._meta, None), ((bch, dch, (N,)), sdt, u._meta, None)])
    return out, last


def _ssd_dt(xp, dt, bias, softplus, lo, hi):
    pre = dt if bias is None else dt + bias
    soft = _softplus(xp, pre) if softplus else pre
    return xp.clip(soft, lo, hi)


def _ssd_local_seq(seq: Any, k: Any) -> Any:
    """The seq_idx block as the core sees it: after chunk 0, shifted so that it starts at 0.

    The core's initial state belongs to index 0; the reset at a chunk boundary is the combine's.
    """
    if seq is None or int(k[0]) == 0:
        return seq
    return seq - seq[:, :1]


def _ssd_summary(x, dt, A, B, C, bias, seq, k, *, chunk_size, softplus, dt_limit, cdt):
    xp = _xp(x)
    seq = _ssd_local_seq(seq, k)
    _, final = _core.ssd(x, dt, A, B, C, chunk_size=chunk_size, dt_bias=bias, dt_softplus=softplus,
                         dt_limit=dt_limit, seq_idx=seq, return_final_states=True)
    dte = _ssd_dt(xp, xp.asarray(dt, dtype=cdt), None if bias is None else xp.asarray(bias, dtype=cdt), softplus,
                  *dt_limit)
    decay = xp.exp(xp.asarray(A, dtype=cdt) * dte.sum(axis=1))  # (b, h)
    if seq is not None:
        decay = xp.where(_inner_reset(xp, seq, int(k[0]) == 0)[:, None], 0, decay)
    decay = xp.broadcast_to(decay[:, :, None, None], final.shape)
    return xp.stack([decay.astype(cdt), final.astype(cdt)], axis=1)


def _ssd_apply(x, dt, A, B, C, D, z, bias, h0, seq, k, *, chunk_size, softplus, dt_limit, final):
    seq = _ssd_local_seq(seq, k)
    return _core.ssd(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=bias, dt_softplus=softplus,
                     dt_limit=dt_limit, initial_states=None if h0 is None else h0[:, 0],
                     seq_idx=seq, return_final_states=final)


def ssd(
    x: Any, dt: Any, A: Any, B: Any, C: Any, *, chunk_size: int = 64, D: Any = None, z: Any = None,
    dt_bias: Any = None, dt_softplus: bool = False, dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_states: Any = None, seq_idx: Any = None, return_final_states: bool = False,
) -> da.Array | tuple[da.Array, da.Array]:
    r"""Lazy :func:`ssmcore.ssd` (Mamba-2) on Dask arrays, exact over time chunks.

    ``x`` (batch, L, H, P) may be chunked over batch and time (heads, head dim
    and state are one chunk; ``dt``, ``B``, ``C``, ``z`` follow ``x``). A time
    chunk's summary is its decay :math:`\exp(A_h \sum_t \Delta_t)` per (batch,
    head) and its final state from zero; ``chunk_size`` is the core's inner
    chunk (independent of the Dask chunks). With ``seq_idx``, a chunk with a reset
    inside (or, for the first chunk, a first index other than 0) has decay 0, and
    a chunk whose first index differs from the previous chunk's last starts from 0.
    """
    fn = "ssmcore.dask.ssd"
    x, dt, A, B, C, D, z, bias, h0, seq = (_dask(v) for v in (x, dt, A, B, C, D, z, dt_bias, initial_states,
                                                              seq_idx))
    if x.ndim != 4:
        raise ValueError(f"{fn}: x has shape {x.shape}; expected (batch, L, H, P)")
    x = _single(x, [2, 3])
    nb_, L, H, P = x.shape
    N = B.shape[-1]
    bch, tch = x.chunks[:2]
    dt = _single(_align(dt, [0, 1], [bch, tch]), [2])
    B, C = (_single(_align(v, [0, 1], [bch, tch]), [2, 3]) for v in (B, C))
    z = None if z is None else _single(_align(z, [0, 1], [bch, tch]), [2, 3])
    A, bias = (_single(v, [0]) for v in (A, bias))
    D = None if D is None else _single(D, list(range(D.ndim)))
    h0 = None if h0 is None else _single(_align(h0, [0], [bch]), [1, 2, 3])
    seq = _align(seq, [0, 1], [bch, tch])
    lim = tuple(float(v) for v in dt_limit)
    G = B.shape[2]
    probe = _core.ssd(np.ones((1, 1, H, P), x.dtype), np.ones((1, 1, H), dt.dtype), np.ones(H, A.dtype),
                      np.ones((1, 1, G, N), B.dtype), np.ones((1, 1, C.shape[2], N), C.dtype),
                      chunk_size=chunk_size, return_final_states=True, dt_limit=lim)
    odt, sdt = probe[0].dtype, probe[1].dtype
    K = len(tch)
    kw = dict(chunk_size=chunk_size, softplus=bool(dt_softplus), dt_limit=lim)
    kidx = da.arange(K, chunks=1)  # the chunk's index: the core's index-0 rule applies to chunk 0 only
    common = [(x, "bthp"), (dt, "bth"), (A, "h"), (B, "btgn"), (C, "btcn")]
    if K == 1:
        h_in = None if h0 is None else h0[:, None]
    else:
        summary = da.blockwise(_task(_ssd_summary), "bthpn", *_args(*common, (bias, "h"), (seq, "bt"),
                                                                    (kidx, "t")),
                               align_arrays=False, concatenate=True, new_axes={"n": N},
                               adjust_chunks={"t": (2,) * K}, dtype=sdt, meta=_meta(x._meta, 5, sdt), cdt=sdt, **kw)
        keep = None if seq is None else _seq_keep(seq, tch, False)
        inits = da.blockwise(_pair_combine, "bthpn", *_args((summary.rechunk({1: -1}), "bthpn"), (h0, "bhpn"),
                                                            (keep, "bt")),
                             align_arrays=False, concatenate=True, adjust_chunks={"t": (K + 1,)}, dtype=sdt,
                             meta=_meta(x._meta, 5, sdt), axis=1, reverse=False, cdt=sdt)
        h_in = inits[:, :K].rechunk({1: 1})
    d_ind = None if D is None else "hp"[: D.ndim]
    args = _args(*common, (D, d_ind), (z, "bthp"), (bias, "h"), (h_in, "bthpn"), (seq, "bt"), (kidx, "t"))
    if K > 1 or not return_final_states:
        out = da.blockwise(_task(_ssd_apply), "bthp", *args, align_arrays=False, concatenate=True,
                           adjust_chunks={"t": tch}, dtype=odt, meta=_meta(x._meta, 4, odt), final=False, **kw)
        if not return_final_states:
            return out
        return out, inits[:, K]
    res = da.blockwise(_task(_ssd_apply), "bthp", *args, align_arrays=False, concatenate=True,
                       adjust_chunks={"t": tch}, dtype=object, meta=np.empty((0,) * 4, object), final=True, **kw)
    out, final = _split(res, [((bch, tch, (H,), (P,)), odt, x._meta, None),
                              ((bch, (H,), (P,), (N,)), sdt, x._meta, None)])
    return out, final


# ---------------------------------------------------------------------------------
# Gradients: the two-pass scheme run backwards
# ---------------------------------------------------------------------------------


def _sum_to(g: da.Array | None, shape: tuple[int, ...] | None) -> da.Array | None:
    """Sum a broadcast gradient back to an input's shape (lazy)."""
    if g is None or shape is None:
        return None
    extra = g.ndim - len(shape)
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, (n, m) in enumerate(zip(shape, g.shape)) if n == 1 and m != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g


def _cot(x: Any, chunks: Sequence[tuple[int, ...]], shape: tuple[int, ...]) -> da.Array | None:
    if x is None:
        return None
    x = _dask(x)
    return _align(da.broadcast_to(x, shape) if x.shape != shape else x, range(len(shape)), chunks)


def _ls_bwd(a, b, h0, gh, lam, *, reverse, summary):
    xp = _xp(b)
    shape = np.broadcast_shapes(a.shape, b.shape)
    h0v = xp.zeros(shape[:-1], np.result_type(a.dtype, b.dtype)) if h0 is None else h0[..., 0]
    _, pull = _core.vjp("linear_scan", a, b, h0v, reverse=reverse, return_final_state=True)
    if summary:  # adjoint reaching the chunk's initial state from its own cotangent, and prod a
        _, _, g0 = pull((gh, None), needs=(False, False, True))
        p = _ipow(a[..., 0], shape[-1]) if a.shape[-1] == 1 else _prod_last(a)
        return xp.stack([xp.broadcast_to(xp.asarray(p, dtype=g0.dtype), g0.shape), g0], axis=-1)
    ga, gb, _ = pull((gh, None if lam is None else lam[..., 0]), needs=(True, True, False))
    return ga, gb


def _vjp_linear_scan(a, b, h0=None, *, reverse=False, return_final_state=False):
    a0, b0 = _dask(a), _dask(b)
    shapes = (a0.shape, b0.shape, None if h0 is None else np.shape(h0))
    a, b, h0, shape, chunks, dtype = _ls_setup(a, b, h0)
    nd = len(shape)
    # gradient blocks per output block: a and b broadcast (lazily) over the output's leading axes
    a = _align(da.broadcast_to(a, shape[:-1] + a.shape[-1:]), range(nd - 1), chunks[:-1])
    b = _align(da.broadcast_to(b, shape), range(nd), chunks)
    out = linear_scan(a, b, h0, reverse=reverse, return_final_state=return_final_state)
    ind = _letters(nd)
    K = len(chunks[-1])
    meta = _meta(b._meta, nd, dtype)
    h_in = _h0_time(h0)
    if K > 1:
        summ = da.blockwise(_task(_ls_summary), ind, a, ind, b, ind, align_arrays=False, concatenate=True,
                            adjust_chunks={**dict(zip(ind, chunks)), ind[-1]: (2,) * K}, dtype=dtype, meta=meta,
                            reverse=reverse, cdt=dtype)
        inits = _combine_call(_diag_combine, summ.rechunk({nd - 1: -1}), ind, h0, ind[:-1], K, dtype, meta,
                              reverse=reverse)
        h_in = inits[..., :K].rechunk({nd - 1: 1})

    def pullback(cotangent, needs=None):
        gh, gf = cotangent if return_final_state else (cotangent, None)
        gh = _cot(gh, chunks, shape)
        if gh is None:
            gh = da.zeros(shape, dtype=dtype, chunks=chunks)
        gf = _cot(gf, chunks[:-1], shape[:-1])
        if K > 1:
            bs = da.blockwise(_task(_ls_bwd), ind, *_args((a, ind), (b, ind), (h_in, ind), (gh, ind)), None, None,
                              align_arrays=False, concatenate=True,
                              adjust_chunks={**dict(zip(ind, chunks)), ind[-1]: (2,) * K}, dtype=dtype, meta=meta,
                              reverse=reverse, summary=True)
            lams = _combine_call(_diag_combine, bs.rechunk({nd - 1: -1}), ind, gf, ind[:-1], K, dtype, meta,
                                 reverse=not reverse)
            lam, g_h0 = lams[..., :K].rechunk({nd - 1: 1}), lams[..., K]
        else:
            lam = _h0_time(gf)
            g_h0 = None
        res = da.blockwise(_task(_ls_bwd), ind, *_args((a, ind), (b, ind), (h_in, ind), (gh, ind), (lam, ind)),
                           align_arrays=False, concatenate=True, adjust_chunks=dict(zip(ind, chunks)), dtype=object,
                           meta=np.empty((0,) * nd, object), reverse=reverse, summary=False)
        a_t = chunks[-1] if a.shape[-1] != 1 else (1,) * K
        ga, gb = _split(res, [(chunks[:-1] + (a_t,), dtype, b._meta, None), (chunks, dtype, b._meta, None)])
        if a.shape[-1] == 1:
            ga = ga.sum(axis=-1, keepdims=True)
        if shapes[2] is not None and g_h0 is None:  # one time chunk: gh0 = a_0 g_0 from the scan itself
            g_h0 = _ls_h0_grad(a, b, h_in, gh, lam, reverse, chunks, dtype, meta, ind)
        grads = (_sum_to(ga, shapes[0]), _sum_to(gb, shapes[1]), _sum_to(g_h0, shapes[2]))
        grads = tuple(None if g is None else g.astype(dt) for g, dt in
                      zip(grads, (a0.dtype, b0.dtype, None if shapes[2] is None else _dask(h0).dtype)))
        return grads if needs is None else tuple(g if n else None for g, n in zip(grads, needs))

    return out, pullback


def _ls_h0_bwd(a, b, h0, gh, lam, *, reverse):
    shape = np.broadcast_shapes(a.shape, b.shape)
    xp = _xp(b)
    h0v = xp.zeros(shape[:-1], np.result_type(a.dtype, b.dtype)) if h0 is None else h0[..., 0]
    _, pull = _core.vjp("linear_scan", a, b, h0v, reverse=reverse, return_final_state=True)
    return pull((gh, None if lam is None else lam[..., 0]), needs=(False, False, True))[2][..., None]


def _ls_h0_grad(a, b, h_in, gh, lam, reverse, chunks, dtype, meta, ind):
    g = da.blockwise(_task(_ls_h0_bwd), ind, *_args((a, ind), (b, ind), (h_in, ind), (gh, ind), (lam, ind)),
                     align_arrays=False, concatenate=True, adjust_chunks={**dict(zip(ind, chunks)), ind[-1]: (1,)},
                     dtype=dtype, meta=meta, reverse=reverse)
    return g[..., 0]


def _ltid_bwd(A, B, C, D, u, x0, gy, lam, *, summary, kw):
    xp = _xp(u)
    x0v = xp.zeros(np.broadcast_shapes(A.shape, u.shape[:-1] + (A.shape[-1],)), A.dtype) if x0 is None \
        else x0[..., 0, :]
    _, pull = _core.vjp("lti_simulate_diag", A, B, C, D, u, x0v, return_final_state=True, **kw)
    gA, gB, gC, gD, gu, gx0 = pull((gy, None if (summary or lam is None) else lam[..., 0, :]))
    if summary:
        return gx0[..., None, :]
    one = lambda g: None if g is None else g[..., None, :]  # noqa: E731  (a time-chunk axis to sum over)
    return one(gA), one(gB), one(gC), None if gD is None else gD[..., None, None], gu[..., None]


def _vjp_lti_simulate_diag(A, B, C, D, u, x0=None, *, conj_sym=False, real_output=None, mode="recurrent",
                           return_final_state=False):
    fn = "ssmcore.dask.vjp(lti_simulate_diag)"
    kw = dict(conj_sym=conj_sym, real_output=real_output, mode=mode)
    orig = {k: (None if v is None else _dask(v)) for k, v in dict(A=A, B=B, C=C, D=D, u=u, x0=x0).items()}
    out = lti_simulate_diag(A, B, C, D, u, x0, return_final_state=return_final_state, **kw)
    ar, batch, nb = _batch_setup(fn, dict(A=(A, 2), B=(B, 2), C=(C, 2), D=(D, 1), u=(u, 2), x0=(x0, 2)), "u")
    H, N, L = ar["u"].shape[-2], ar["A"].shape[-1], ar["u"].shape[-1]
    full = batch + (H,)
    lead_chunks = _target_chunks(full, (ar["u"], ar["A"], ar["B"], ar["C"], ar["x0"]))
    lax = list(range(nb + 1))
    bc = lambda x, core: None if x is None else _single(_align(da.broadcast_to(x, full + core), lax, lead_chunks),
                                                         # noqa: E731
                                                        [-1] if core else [])
    Ab, Bb, Cb, x0b = (bc(ar[k], (N,)) for k in ("A", "B", "C", "x0"))
    Db = bc(ar["D"], ())
    ub = _align(da.broadcast_to(ar["u"], full + (L,)), lax, lead_chunks)
    tch = ub.chunks[-1]
    K = len(tch)
    bi = _letters(nb, "hnt")
    li, si = bi + "h", bi + "hn"
    xdt = out[1].dtype if return_final_state else lti_simulate_diag(A, B, C, D, u, x0, return_final_state=True,
                                                                    **kw)[1].dtype
    ydt = (out[0] if return_final_state else out).dtype
    xmeta = _meta(ub._meta, nb + 2, xdt)
    if K > 1:
        summary = da.blockwise(_task(_ltid_summary), li + "tn", Ab, si, Bb, si, Cb, si, ub, li + "t",
                               align_arrays=False, concatenate=True, new_axes={"n": N},
                               adjust_chunks={"t": (1,) * K}, dtype=xdt, meta=xmeta, **kw)
        inits = da.blockwise(_ltid_combine, li + "tn", *_args((summary.rechunk({nb + 1: -1}), li + "tn"), (Ab, si),
                                                              (x0b, si)),
                             align_arrays=False, concatenate=True, adjust_chunks={"t": (K + 1,)}, dtype=xdt,
                             meta=xmeta, sizes=tch, cdt=xdt)
        x_in = inits[..., :K, :].rechunk({nb + 1: 1})
    else:
        x_in = None if x0b is None else x0b[..., None, :]

    def pullback(cotangent, needs=None):
        gy, gf = cotangent if return_final_state else (cotangent, None)
        gy = _cot(gy, lead_chunks + (tch,), full + (L,))
        if gy is None:
            gy = da.zeros(full + (L,), dtype=ydt, chunks=lead_chunks + (tch,))
        gf = None if gf is None else _single(_cot(gf, lead_chunks + ((N,),), full + (N,)), [-1])
        base = _args((Ab, si), (Bb, si), (Cb, si), (Db, li), (ub, li + "t"), (x_in, li + "tn"), (gy, li + "t"))
        if K > 1:
            s = da.blockwise(_task(_ltid_bwd), li + "tn", *base, None, None, align_arrays=False, concatenate=True,
                             new_axes={"n": N}, adjust_chunks={"t": (1,) * K}, dtype=xdt, meta=xmeta, summary=True,
                             kw=kw)
            lams = da.blockwise(_ltid_combine, li + "tn", *_args((s.rechunk({nb + 1: -1}), li + "tn"), (Ab, si),
                                                                 (gf, si)),
                                align_arrays=False, concatenate=True, adjust_chunks={"t": (K + 1,)}, dtype=xdt,
                                meta=xmeta, sizes=tch, cdt=xdt, reverse=True)
            lam, g_x0 = lams[..., :K, :].rechunk({nb + 1: 1}), lams[..., K, :]
        else:
            lam = None if gf is None else gf[..., None, :]
            g_x0 = None
        res = da.blockwise(_task(_ltid_bwd), li + "tn", *base, *_args((lam, li + "tn")), align_arrays=False,
                           concatenate=True, new_axes={"n": 1}, adjust_chunks={"t": tch}, dtype=object,
                           meta=np.empty((0,) * (nb + 3), object), summary=False, kw=kw)
        kch = (1,) * K
        gA, gB, gC, gD, gu = _split(res, [(lead_chunks + (kch, (N,)), xdt, ub._meta, None)] * 3
                                    + [(lead_chunks + (kch, (1,)), xdt, ub._meta, None),
                                       (lead_chunks + (tch, (1,)), xdt, ub._meta, None)])
        gD, gu = gD[..., 0], gu[..., 0]
        gA, gB, gC = (g.sum(axis=-2) for g in (gA, gB, gC))
        gD = gD.sum(axis=-1) if orig["D"] is not None else None
        if orig["x0"] is not None and g_x0 is None:
            g_x0 = _ltid_x0_grad(base, lam, li, si, kw, xdt, xmeta, lead_chunks, N)
        grads = []
        for k, g in zip(("A", "B", "C", "D", "u", "x0"), (gA, gB, gC, gD, gu, g_x0)):
            o = orig[k]
            if o is None or g is None:
                grads.append(None)
                continue
            g = _sum_to(g, o.shape)
            grads.append(g.real.astype(o.dtype) if o.dtype.kind != "c" and g.dtype.kind == "c" else g.astype(o.dtype))
        return tuple(grads) if needs is None else tuple(g if n else None for g, n in zip(grads, needs))

    return out, pullback


def _ltid_x0_bwd(A, B, C, D, u, x0, gy, lam, *, kw):
    _, pull = _core.vjp("lti_simulate_diag", A, B, C, D, u, x0[..., 0, :], return_final_state=True, **kw)
    return pull((gy, None if lam is None else lam[..., 0, :]))[5][..., None, :]


def _ltid_x0_grad(base, lam, li, si, kw, xdt, xmeta, lead_chunks, N):
    g = da.blockwise(_task(_ltid_x0_bwd), li + "tn", *base, *_args((lam, li + "tn")), align_arrays=False,
                     concatenate=True, new_axes={"n": N}, adjust_chunks={"t": (1,)}, dtype=xdt, meta=xmeta, kw=kw)
    return g[..., 0, :]


_VJPS = {"linear_scan": _vjp_linear_scan, "lti_simulate_diag": _vjp_lti_simulate_diag}


def vjp(op: str | Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Callable[[Any], tuple[Any, ...]]]:
    r""":func:`ssmcore.vjp` on Dask arrays: lazy outputs and a lazy pullback.

    Supported ops: ``"linear_scan"`` (inputs a, b, h0) and ``"lti_simulate_diag"``
    (inputs A, B, C, D, u, x0), with any chunking in time. The reverse pass is
    the forward scheme run backwards: pass 1 computes each chunk's adjoint at its
    initial state from its own cotangent (the chunk's pullback with zero
    end-state cotangent), a reverse combine over the K chunks,
    :math:`\\lambda_{k-1} = P_k^\\top \\lambda_k + g_k`, gives the adjoint entering
    each chunk's end state, and pass 2 runs every chunk's pullback from its
    true initial state with that end-state cotangent.

    Returns
    -------
    out : dask array or tuple of dask arrays
    pullback : callable
        ``pullback(cotangent, needs=None)`` (a tuple with ``return_final_state``;
        ``None`` means zero) returns one lazy gradient per input, ``None`` for
        inputs not given or not in ``needs`` (nothing is computed for those:
        the graph of an unused gradient is never run).
    """
    name = op if isinstance(op, str) else getattr(op, "__name__", repr(op))
    if name not in _VJPS:
        raise NotImplementedError(f"ssmcore.dask.vjp: op {name!r} has no Dask pullback; supported: {sorted(_VJPS)}")
    return _VJPS[name](*args, **kwargs)
