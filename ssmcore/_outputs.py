"""Large output arrays of the Numba launchers, recycled instead of faulted in afresh.

Why: a memory-bound kernel that returns a new DRAM-sized array pays for fresh pages.
glibc serves blocks above its mmap threshold (at most 32 MiB) with a new ``mmap``; the
kernel zeroes every page on first touch and unmaps it again on free, so each call writes
its output twice. Measured (``python benchmarks/compare_fresh_outputs.py``): a float32
``linear_scan`` of 1 GiB cost 245 ms with a fresh output against 191 ms into ``out=``,
and one float64 series of 2^22 steps 22 ms against 6.4 ms.

What: :func:`empty` hands out arrays of at least :data:`POOL_MIN_BYTES` from blocks that
come back here when the last array (or view) using them is gone, and reuses a free block
of the same rounded size for the next request. Small arrays are plain ``np.empty``. A
returned array is an ordinary writable C-contiguous ``ndarray`` (its ``base`` is a small
holder object, ``flags.owndata`` is False); it is never shared while any view of it lives.

Memory: the free blocks are memory the process keeps. Their total is capped by
``SSMCORE_OUTPUT_POOL_BYTES`` (read on every request; default :data:`DEFAULT_CAP_BYTES`,
``0`` turns recycling off); beyond it the least recently freed blocks are released.
:func:`release` frees every held block at once.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict, deque
from typing import Any

import numpy as np

__all__ = ["DEFAULT_CAP_BYTES", "POOL_MIN_BYTES", "empty", "held_bytes", "release"]

#: Requests below this many bytes are plain ``np.empty`` (glibc's heap serves them well).
POOL_MIN_BYTES = 16 << 20
#: Default cap on the bytes of free blocks kept for reuse (``SSMCORE_OUTPUT_POOL_BYTES``).
DEFAULT_CAP_BYTES = 1 << 30
#: Blocks are rounded up to, and aligned on, transparent huge pages (2 MiB).
ALIGN = 2 << 20

_lock = threading.Lock()
_free: OrderedDict[int, list[np.ndarray]] = OrderedDict()  # rounded size -> free blocks, LRU order
_held = [0]  # bytes in _free (a list: mutated under _lock)
# Blocks given back by finalizers and not yet filed into _free. A finalizer may run inside
# the cyclic garbage collector while its thread holds _lock (any allocation can trigger a
# collection), so it must never wait for the lock: it appends here (deque.append is atomic)
# and files the queue only if the lock is free; every locked section files it before it ends.
_returned: deque[tuple[int, np.ndarray]] = deque()


class _Holder:
    """Owner of one block while arrays use it; its finalizer returns the block."""

    __slots__ = ("__array_interface__", "block", "__weakref__")


def _cap() -> int:
    raw = os.environ.get("SSMCORE_OUTPUT_POOL_BYTES")
    if raw is None:
        return DEFAULT_CAP_BYTES
    try:
        return max(0, int(raw))
    except ValueError:
        raise ValueError(f"SSMCORE_OUTPUT_POOL_BYTES: expected an integer number of bytes, got {raw!r}") from None


def _file_returned() -> None:
    """Move the returned blocks into the pool, within the cap (call with _lock held)."""
    cap = None
    while _returned:
        size, block = _returned.popleft()
        cap = _cap() if cap is None else cap
        if size > cap:
            continue  # dropped: the block's memory goes back to the system
        _free.setdefault(size, []).append(block)
        _free.move_to_end(size)
        _held[0] += size
        while _held[0] > cap:  # release the least recently freed sizes first
            old, blocks = next(iter(_free.items()))
            blocks.pop(0)
            _held[0] -= old
            if not blocks:
                del _free[old]


def _give_back(size: int, block: np.ndarray) -> None:
    _returned.append((size, block))
    if _lock.acquire(blocking=False):  # else the holder files it before releasing the lock
        try:
            _file_returned()
        finally:
            _lock.release()


def _take(size: int) -> np.ndarray | None:
    with _lock:
        _file_returned()
        blocks = _free.get(size)
        if not blocks:
            return None
        block = blocks.pop()
        if not blocks:
            del _free[size]
        _held[0] -= size
        _file_returned()  # blocks a collection may have returned meanwhile
        return block


def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array, from a recycled block when it is large.

    Parameters
    ----------
    shape : tuple of int
        Shape of the array.
    dtype : data-type
        Its dtype.

    Returns
    -------
    numpy.ndarray
        Writable and C-contiguous, contents undefined (as ``np.empty``).

    Examples
    --------
    >>> from ssmcore import _outputs
    >>> _outputs.empty((2, 3), "float32").shape
    (2, 3)
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < POOL_MIN_BYTES or _cap() == 0:
        return np.empty(shape, dtype)
    size = -(-nbytes // ALIGN) * ALIGN
    block = _take(size)
    if block is None:
        raw = np.empty(size + ALIGN, np.uint8)  # NumPy advises huge pages for it
        offset = (-raw.ctypes.data) % ALIGN
        block = raw[offset:offset + size]
    holder = _Holder()
    holder.block = block
    holder.__array_interface__ = {"shape": shape, "typestr": dtype.str, "descr": dtype.descr,
                                  "data": (block.ctypes.data, False), "strides": None, "version": 3}
    out = np.asarray(holder)
    fin = weakref.finalize(holder, _give_back, size, block)
    fin.atexit = False  # nothing to return at interpreter exit
    return out


def held_bytes() -> int:
    """Bytes of free blocks currently kept for reuse."""
    with _lock:
        _file_returned()
        return _held[0]


def release() -> None:
    """Free every kept block (arrays in use are not affected)."""
    with _lock:
        _returned.clear()
        _free.clear()
        _held[0] = 0
