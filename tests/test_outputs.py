"""Recycled large outputs (ssmcore/_outputs.py): reuse only after the last view is gone."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

import ssmcore
from ssmcore import _outputs

BIG = (_outputs.POOL_MIN_BYTES // 4 + 1000,)  # float32 elements just above the pooling size


@pytest.fixture(autouse=True)
def _empty_pool(monkeypatch):
    monkeypatch.delenv("SSMCORE_OUTPUT_POOL_BYTES", raising=False)
    _outputs.release()
    yield
    _outputs.release()


def test_small_requests_are_plain_numpy_arrays():
    x = _outputs.empty((3, 4), np.complex64)
    assert x.shape == (3, 4) and x.dtype == np.complex64 and x.flags.owndata


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
def test_large_requests_are_writable_contiguous_and_reused_after_free(dtype):
    x = _outputs.empty((2,) + BIG, dtype)
    assert x.shape == (2,) + BIG and x.dtype == dtype
    assert x.flags.c_contiguous and x.flags.writeable and x.ctypes.data % _outputs.ALIGN == 0
    x[...] = 3
    ptr = x.ctypes.data
    del x
    gc.collect()
    assert _outputs.held_bytes() > 0
    y = _outputs.empty((2,) + BIG, dtype)
    assert y.ctypes.data == ptr and _outputs.held_bytes() == 0


def test_a_block_is_never_shared_while_a_view_of_it_lives():
    x = _outputs.empty(BIG, np.float32)
    view = x[10:20]
    ptr = x.ctypes.data
    del x
    gc.collect()
    assert _outputs.held_bytes() == 0  # the view keeps the block
    y = _outputs.empty(BIG, np.float32)
    assert y.ctypes.data != ptr
    view[:] = 1.0
    assert not np.shares_memory(view, y)
    del view
    gc.collect()
    assert _outputs.held_bytes() > 0


def test_the_cap_bounds_the_kept_bytes_and_zero_turns_recycling_off(monkeypatch):
    size = -(-_outputs.empty(BIG, np.float32).nbytes // _outputs.ALIGN) * _outputs.ALIGN
    gc.collect()
    _outputs.release()
    monkeypatch.setenv("SSMCORE_OUTPUT_POOL_BYTES", str(size))
    a, b = _outputs.empty(BIG, np.float32), _outputs.empty(BIG, np.float32)
    del a, b
    gc.collect()
    assert _outputs.held_bytes() == size  # the second block is released, not kept
    _outputs.release()
    monkeypatch.setenv("SSMCORE_OUTPUT_POOL_BYTES", "0")
    c = _outputs.empty(BIG, np.float32)
    assert c.flags.owndata
    del c
    gc.collect()
    assert _outputs.held_bytes() == 0


def test_a_block_freed_while_the_pool_lock_is_held_does_not_deadlock():
    # The cyclic garbage collector can run a finalizer at any allocation, also inside the
    # pool's own locked sections: giving a block back must never wait for the lock.
    x = _outputs.empty(BIG, np.float32)
    done = []

    def free_under_lock():
        nonlocal x
        with _outputs._lock:
            del x  # the finalizer runs here, in this thread, with the lock held
        done.append(True)

    worker = threading.Thread(target=free_under_lock, daemon=True)
    worker.start()
    worker.join(30)
    assert done, "giving a block back while the pool's lock was held deadlocked"
    assert _outputs.held_bytes() > 0  # filed by the next locked call


def test_a_bad_cap_is_refused(monkeypatch):
    monkeypatch.setenv("SSMCORE_OUTPUT_POOL_BYTES", "lots")
    with pytest.raises(ValueError, match="SSMCORE_OUTPUT_POOL_BYTES"):
        _outputs.empty(BIG, np.float32)


def test_linear_scan_results_from_recycled_blocks_are_exact():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.9, 0.999, (2,) + BIG).astype(np.float32)
    b = rng.standard_normal((2,) + BIG).astype(np.float32)
    want = ssmcore.linear_scan(a, b, out=np.empty_like(b))
    first = ssmcore.linear_scan(a, b)
    first[...] = np.nan  # stale contents of a recycled block must never show
    del first
    gc.collect()
    again = ssmcore.linear_scan(a, b)
    np.testing.assert_array_equal(again, want)
    out, pullback = ssmcore.vjp("linear_scan", a, b)
    ga, gb, _ = pullback(np.ones_like(b))
    ga2, gb2, _ = pullback(np.ones_like(b))
    np.testing.assert_array_equal(ga, ga2)
    np.testing.assert_array_equal(gb, gb2)
