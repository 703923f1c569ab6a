"""Numba CPU kernel of the selective-state update (Mamba's decode step).

Same name and canonical arguments as :mod:`ssmcore.reference.state_update` (read its
docstring for the layouts and the maths). One task per (batch, head, channel) row:
the N states of a row are read, updated and summed in one pass (the exp loop over n
vectorises for float32 through :func:`~ssmcore.backends.numba.selective_scan.fast_exp`),
so a step costs one read and one write of the state -- the three NumPy lines it
replaces make five (batch, D, N) temporaries. Small steps run serially: a parallel
region costs more than a decode step of a few hundred thousand states.
The launcher owns layout, allocation and the work split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import prange

from ...reference.state_update import write_mask
from ._jit import jit
from .selective_scan import _FM, fast_exp, fast_sigmoid, fast_softplus

__all__ = ["state_update_fwd"]

# States per step above which the step runs on all threads. A parallel region costs
# ~10-20 us on an idle machine but milliseconds on a loaded one (measured: batch 16,
# D 1536, N 16 took 0.28 ms serial and 7.8 ms parallel on 2 shared cores); the serial
# loop does ~1-2 ns a state, so parallelism pays only for steps of millions of states.
_PARALLEL_MIN = 1 << 22


@jit(fastmath=_FM)
def _task(src, x, dt, A, B, C, D, z, bias, softplus, rows, write, out, same, y, zero, fac, task):
    """Batch entry i, head h (task = i * H + h): every channel p of the head, N states each."""
    nh, nP, N = A.shape
    i = task // nh
    h = task % nh
    row = rows[i]
    if row < 0:  # padded slot: no read, no write, output 0
        for p in range(nP):
            y[i, h, p] = 0
        return
    gb = h // (nh // B.shape[1])
    gc = h // (nh // C.shape[1])
    wr = write[i]
    for p in range(nP):
        d = dt[i, h, p]
        if bias is not None:
            d = d + bias[h, p]
        if softplus:
            d = fast_softplus(d)
        xv = x[i, h, p]
        dx = d * xv
        acc = zero
        # Two branch-free inner loops (the write decided per row, not per state) so LLVM
        # vectorises them; plain 4-D indexing (no slices: no reference counting per row).
        if wr and same:  # in place: one array read and written (LLVM vectorises no aliased pair)
            for n in range(N):
                nw = fast_exp(d * A[h, p, n]) * out[row, h, p, n] + dx * B[i, gb, n]
                out[row, h, p, n] = nw
                acc += C[i, gc, n] * nw
        elif wr:
            for n in range(N):
                nw = fast_exp(d * A[h, p, n]) * src[row, h, p, n] + dx * B[i, gb, n]
                out[row, h, p, n] = nw
                acc += C[i, gc, n] * nw
        else:  # a repeated index: another entry writes this row
            for n in range(N):
                nw = fast_exp(d * A[h, p, n]) * src[row, h, p, n] + dx * B[i, gb, n]
                acc += C[i, gc, n] * nw
        res = (fac * acc).real  # fac = 2 for a complex state (conjugate-halved modes)
        if D is not None:
            res = res + D[h, p] * xv
        if z is not None:
            zv = z[i, h, p]
            res = res * zv * fast_sigmoid(zv)
        y[i, h, p] = res


@jit(fastmath=_FM)
def _serial(src, x, dt, A, B, C, D, z, bias, softplus, rows, write, out, same, y, zero, fac):
    for task in range(x.shape[0] * x.shape[1]):
        _task(src, x, dt, A, B, C, D, z, bias, softplus, rows, write, out, same, y, zero, fac, task)


@jit(parallel=True, fastmath=_FM)
def _parallel(src, x, dt, A, B, C, D, z, bias, softplus, rows, write, out, same, y, zero, fac):
    for task in prange(x.shape[0] * x.shape[1]):
        _task(src, x, dt, A, B, C, D, z, bias, softplus, rows, write, out, same, y, zero, fac, task)


def _c(a: Any) -> Any:
    return None if a is None else np.ascontiguousarray(a)


def state_update_fwd(
    state: np.ndarray,
    x: np.ndarray,
    dt: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    D: np.ndarray | None,
    z: np.ndarray | None,
    dt_bias: np.ndarray | None,
    dt_softplus: bool,
    idx: np.ndarray | None,
    out_state: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One step; returns (out (b, H, P) in x's dtype, new cache (S, H, P, N) in state's dtype).

    ``out_state`` (C-contiguous, shape and dtype of ``state``, possibly ``state`` itself)
    receives the new cache; by default a new array (a copy of ``state`` when ``idx``
    selects rows, since the rows not named keep their values).
    """
    x, dt, A, B, C = _c(x), _c(dt), _c(A), _c(B), _c(C)
    D, z, dt_bias = _c(D), _c(z), _c(dt_bias)
    state = np.ascontiguousarray(state)
    nb = x.shape[0]
    if idx is None:
        rows = np.arange(nb, dtype=np.int64)
        write = np.ones(nb, dtype=np.bool_)
        dup = False
    else:
        rows = np.ascontiguousarray(idx, dtype=np.int64)
        write = write_mask(rows)
        dup = bool(np.count_nonzero(write) < np.count_nonzero(rows >= 0))
    if out_state is None:
        out = np.empty_like(state) if idx is None else state.copy()
    else:
        out = out_state
    # In place with a repeated index, a later entry would read a row an earlier one wrote.
    src = state.copy() if (dup and out is state) else state
    y = np.empty(x.shape, dtype=x.dtype)
    zero = state.dtype.type(0)
    fac = x.dtype.type(2 if state.dtype.kind == "c" else 1)
    kern = _parallel if x.size * A.shape[-1] >= _PARALLEL_MIN else _serial
    # Partially overlapping buffers would break the row-at-a-time reads: only "identical" is allowed.
    same = bool(src.ctypes.data == out.ctypes.data)
    kern(src, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus), rows, write, out, same, y, zero, fac)
    return y, out
