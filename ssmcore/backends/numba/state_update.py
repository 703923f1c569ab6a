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
from numba import prange, types
from numba.extending import overload

from ...reference.state_update import write_mask
from ._fpenv import fp_blocks, fp_enter, fp_exit
from ._jit import FASTMATH, jit
from .selective_scan import _FM, fast_exp, fast_sigmoid, fast_softplus

__all__ = ["state_update_fwd"]

# States per step above which the step runs on all threads. A parallel region costs
# ~10-20 us on an idle machine but milliseconds on a loaded one (measured: batch 16,
# D 1536, N 16 took 0.28 ms serial and 7.8 ms parallel on 2 shared cores); the serial
# loop does ~1-2 ns a state, so parallelism pays only for steps of millions of states.
_PARALLEL_MIN = 1 << 22


# float64 exp that LLVM vectorises (libm's scalar exp costs ~3 ns a state, most of a
# float64 step): exp(x) = 2^k exp(f), f = x - k ln 2 in [-ln2/2, ln2/2] (Cody-Waite split,
# k * _LN2_HI exact for |k| < 2^11), Taylor to f^13 (truncation < 1e-17 relative, ~1 ulp
# overall). Results that would be subnormal (x < -708.39) are flushed to 0 (NumPy returns
# the subnormal: an absolute difference below 2.3e-308); NaN passes the "if" clamps.
_LOG2E_64 = 1.4426950408889634
_LN2_HI_64 = 0.6931471803691238  # 33 significant bits
_LN2_LO_64 = 1.9082149292705877e-10
_EXP_LO_64 = -708.3964185322641  # exp of this is ~the smallest normal float64
_EXP_HI_64 = 709.782712893384
_C64 = tuple(1.0 / float(np.prod(np.arange(1, k + 1))) for k in range(14))  # 1/k!
_C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11, _C12, _C13 = _C64[2:]


def exp_step(x):  # pragma: no cover - replaced by the overload inside jitted code
    """exp(x) for the state decay: vectorisable polynomial for float64, fast_exp otherwise."""
    raise NotImplementedError


@overload(exp_step, fastmath=set(FASTMATH))
def _exp_step_overload(x):
    if x == types.float64:

        def exp_f64(x):
            xc = _EXP_LO_64 if x < _EXP_LO_64 else x
            xc = _EXP_HI_64 if xc > _EXP_HI_64 else xc
            kf = np.floor(xc * _LOG2E_64 + 0.5)
            f = (xc - kf * _LN2_HI_64) - kf * _LN2_LO_64
            p = 1.0 + f * (1.0 + f * (_C2 + f * (_C3 + f * (_C4 + f * (_C5 + f * (_C6 + f * (_C7 + f * (
                _C8 + f * (_C9 + f * (_C10 + f * (_C11 + f * (_C12 + f * _C13))))))))))))
            ki = np.int64(kf)
            kk = ki - np.int64(1) if ki > np.int64(1023) else ki
            scale = np.int64((kk + np.int64(1023)) << np.int64(52)).view(np.float64)
            r = p * scale
            r = r * 2.0 if ki > np.int64(1023) else r
            r = 0.0 if x < _EXP_LO_64 else r
            r = np.inf if x > _EXP_HI_64 else r
            return r

        return exp_f64
    return lambda x: fast_exp(x)


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
                nw = exp_step(d * A[h, p, n]) * out[row, h, p, n] + dx * B[i, gb, n]
                out[row, h, p, n] = nw
                acc += C[i, gc, n] * nw
        elif wr:
            for n in range(N):
                nw = exp_step(d * A[h, p, n]) * src[row, h, p, n] + dx * B[i, gb, n]
                out[row, h, p, n] = nw
                acc += C[i, gc, n] * nw
        else:  # a repeated index: another entry writes this row
            for n in range(N):
                nw = exp_step(d * A[h, p, n]) * src[row, h, p, n] + dx * B[i, gb, n]
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
    fp0 = fp_enter()
    for task in range(x.shape[0] * x.shape[1]):
        _task(src, x, dt, A, B, C, D, z, bias, softplus, rows, write, out, same, y, zero, fac, task)
    fp_exit(fp0)


@jit(parallel=True, fastmath=_FM)
def _parallel(src, x, dt, A, B, C, D, z, bias, softplus, rows, write, out, same, y, zero, fac):
    n = x.shape[0] * x.shape[1]
    nblk = fp_blocks(n)  # blocks of tasks: one fp bracket per block, not per (tiny) task
    for k in prange(nblk):
        fp1 = fp_enter()
        for task in range(k * n // nblk, (k + 1) * n // nblk):
            _task(src, x, dt, A, B, C, D, z, bias, softplus, rows, write, out, same, y, zero, fac, task)
        fp_exit(fp1)


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
