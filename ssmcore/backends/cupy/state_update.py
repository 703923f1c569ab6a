"""CuPy GPU kernel of the selective-state update (Mamba's decode step).

Same function name and canonical arguments as :mod:`ssmcore.reference.state_update`
(the specification; its docstring gives the layouts). Arrays in and out are CuPy arrays.
The CUDA C is ``kernels/state_update.cu``: one thread per (batch, head, channel) row,
the row's N states streamed through registers. This module owns layout, allocation,
the launch configuration and the write mask of repeated ``idx`` entries (computed on
the device with CuPy's elementwise ops and a (batch, batch) comparison: no host
synchronisation, no copy to the host). Launches go to CuPy's current stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._rawmodule import declare
from .scan import _options

__all__ = ["FLAGS", "THREADS", "StateUpdatePlan", "kernel_name", "plan_state_update", "state_update_fwd"]

THREADS = 128  # SSM_SU_THREADS in state_update.cu
FLAGS = {"has_D": 1, "has_z": 2, "has_bias": 4, "softplus": 8, "has_rows": 16, "has_write": 32}

_PAIRS = (("float", "float"), ("float", "complex<float>"), ("double", "double"), ("double", "complex<double>"))
STATE_UPDATE = declare("state_update.cu", [f"state_update_fwd<{r}, {s}>" for r, s in _PAIRS], options=_options())

_CXX = {"float32": "float", "float64": "double", "complex64": "complex<float>", "complex128": "complex<double>"}


@dataclass(frozen=True)
class StateUpdatePlan:
    """``blocks`` x ``threads`` threads (one per row), the kernel's name expression and flags."""

    blocks: int
    threads: int
    kernel: str
    flags: int


def kernel_name(rdt: Any, sdt: Any) -> str:
    """The declared instantiation for a real and a state dtype."""
    r = _CXX.get(np.dtype(rdt).name)
    s = _CXX.get(np.dtype(sdt).name)
    if r not in ("float", "double") or s not in (r, f"complex<{r}>"):
        raise TypeError(f"selective_state_update (CuPy): no CUDA instantiation for real dtype {np.dtype(rdt).name} "
                        f"with state dtype {np.dtype(sdt).name}")
    return f"state_update_fwd<{r}, {s}>"


def plan_state_update(nb: int, nh: int, nP: int, N: int, rdt: Any, sdt: Any, **options: bool) -> StateUpdatePlan:
    """One thread per (batch, head, channel) row; no limit on N (the states stream through)."""
    if min(nb, nh, nP) < 0 or N < 1:
        raise ValueError(f"selective_state_update (CuPy): expected batch, heads, dim >= 0 and N >= 1, "
                         f"got {(nb, nh, nP, N)}")
    bad = set(options) - set(FLAGS)
    if bad:
        raise ValueError(f"selective_state_update (CuPy): unknown option flags {sorted(bad)}")
    flags = sum(bit for name, bit in FLAGS.items() if options.get(name))
    rows = nb * nh * nP
    return StateUpdatePlan(-(-rows // THREADS), THREADS, kernel_name(rdt, sdt), flags)


def _write_mask(cp: Any, idx: Any) -> Any:
    """Valid entries that are the last to name their row (device-side, (b, b) comparison)."""
    b = idx.shape[0]
    ar = cp.arange(b)
    later = (idx[:, None] == idx[None, :]) & (ar[None, :] > ar[:, None])
    return cp.ascontiguousarray((idx >= 0) & ~cp.any(later, axis=1))


def state_update_fwd(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, idx, out_state=None):
    """One step; returns (out (b, H, P) in x's dtype, new cache (S, H, P, N) in state's dtype).

    ``out_state`` (C-contiguous, shape and dtype of ``state``) receives the new cache; by
    default a new array (a copy of ``state`` when ``idx`` selects rows).
    """
    import cupy as cp

    c = lambda a: None if a is None else cp.ascontiguousarray(a)  # noqa: E731
    state, x, dt, A, B, C, D, z, bias = (c(a) for a in (state, x, dt, A, B, C, D, z, dt_bias))
    nb, nh, nP = x.shape
    N = A.shape[-1]
    rows = write = None
    if idx is not None:
        rows = cp.ascontiguousarray(idx, dtype=cp.int64)
        write = _write_mask(cp, rows)
    if out_state is None:
        out = cp.empty(state.shape, dtype=state.dtype) if idx is None else state.copy()
    else:
        out = out_state
    y = cp.empty(x.shape, dtype=x.dtype)
    plan = plan_state_update(nb, nh, nP, N, x.dtype, state.dtype, has_D=D is not None, has_z=z is not None,
                             has_bias=bias is not None, softplus=bool(dt_softplus), has_rows=rows is not None,
                             has_write=write is not None)
    if plan.blocks:
        pick = lambda a, d: d if a is None else a  # noqa: E731  (a valid pointer; its flag is off)
        args = (state, x, dt, A, B, C, pick(D, x), pick(z, x), pick(bias, x), pick(rows, x), pick(write, x),
                out, y, np.int64(nb), np.int64(nh), np.int64(nP), np.int64(N), np.int64(B.shape[1]),
                np.int64(C.shape[1]), np.int32(plan.flags))
        STATE_UPDATE.get(plan.kernel)((plan.blocks,), (plan.threads,), args)
    return y, out
