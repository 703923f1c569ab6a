"""CuPy GPU kernels of Mamba's selective scan: fused forward, memory-lean backward.

Same function names and signatures as :mod:`ssmcore.reference.selective_scan`
(the specification) and :mod:`ssmcore.backends.numba.selective_scan`, whose
docstring gives the canonical arguments the front door
:mod:`ssmcore._selective_scan` passes (absent options are ``None``). Arrays in
and out are CuPy arrays.

The CUDA C is ``kernels/selective_scan.cu`` (design notes at its top): one block
of :data:`THREADS` threads per (batch, channel), time in chunks of
:data:`CHUNK` = ``THREADS * ITEMS`` steps with a block scan per state and a
carry between chunks, the state in registers; the forward saves the state
entering every chunk, (batch, D, ceil(L / CHUNK), N), and the backward
recomputes each chunk's states from it. Neither pass stores a (batch, D, L, N)
value. This module owns the layout (variable B / C are read in mamba's
(batch, G, N, L) order: the front door's time-major view of it is permuted back,
a no-op copy for mamba-layout input), every allocation, the option flags and the
final reductions of the backward's partial sums (CuPy's ``sum``, deterministic).
Launches go to CuPy's current stream; nothing here synchronises or copies to the
host.

Determinism: every gradient except variable ``B`` / ``C`` is reduced in a fixed
order. Variable ``dB`` / ``dC`` sum the contributions of a group's channels with
``atomicAdd`` (as mamba_ssm does), so where several channels share a group (mamba's
usual single group included) their last bits can vary between runs; with one
channel per group every element receives one contribution and is deterministic.
A deterministic group sum would need per-channel (batch, D, N, L) partials, or
a block per group walking its channels one after another (too little parallelism
for one group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._rawmodule import declare
from .scan import _options

__all__ = ["CHUNK", "ITEMS", "MAX_N", "THREADS", "SelectiveScanPlan", "plan_selective_scan", "selective_scan_bwd",
           "selective_scan_fwd"]

THREADS = 128  # threads per block: SSM_SS_THREADS in selective_scan.cu
ITEMS = 4  # consecutive steps per thread and chunk: SSM_SS_ITEMS
CHUNK = THREADS * ITEMS  # steps per chunk = checkpoint spacing
MAX_N = 256  # SSM_SS_MAX_N: the per-state carry lives in shared memory
WARPS = THREADS // 32

# option bits of the kernels' `flags` (SSM_SS_* in selective_scan.cu)
FLAGS = {"b_var": 1, "c_var": 2, "has_D": 4, "has_z": 8, "has_bias": 16, "has_h0": 32, "has_seq": 64,
         "softplus": 128, "reverse": 256, "save": 512, "has_dlast": 1024}

_PAIRS = (("float", "float"), ("float", "complex<float>"), ("double", "double"), ("double", "complex<double>"))
_KERNELS = ("selective_scan_fwd", "selective_scan_bwd")

SELECTIVE_SCAN = declare("selective_scan.cu", [f"{k}<{r}, {s}>" for k in _KERNELS for r, s in _PAIRS],
                         options=_options())

_CXX = {"float32": "float", "float64": "double", "complex64": "complex<float>", "complex128": "complex<double>"}


# --------------------------------------------------------------------------- planning (plain Python)


@dataclass(frozen=True)
class SelectiveScanPlan:
    """Launch configuration of one selective scan.

    ``blocks`` x ``threads``, ``nchunk`` chunks of ``chunk`` steps, the kernels' name
    expressions and option flags.
    """

    blocks: int
    threads: int
    chunk: int
    nchunk: int
    fwd: str
    bwd: str
    flags: int


def kernel_names(rdt: Any, sdt: Any) -> tuple[str, str]:
    """The declared (forward, backward) instantiations for a real and a state dtype."""
    r = _CXX.get(np.dtype(rdt).name)
    s = _CXX.get(np.dtype(sdt).name)
    if r not in ("float", "double") or s not in (r, f"complex<{r}>"):
        raise TypeError(f"selective_scan (CuPy): no CUDA instantiation for real dtype {np.dtype(rdt).name} "
                        f"with state dtype {np.dtype(sdt).name}")
    return f"selective_scan_fwd<{r}, {s}>", f"selective_scan_bwd<{r}, {s}>"


def flags_of(**options: bool) -> int:
    """The ``flags`` bit set of the given options (names as :data:`FLAGS`)."""
    bad = set(options) - set(FLAGS)
    if bad:
        raise ValueError(f"selective_scan (CuPy): unknown option flags {sorted(bad)}")
    return sum(bit for name, bit in FLAGS.items() if options.get(name))


def plan_selective_scan(nb: int, nd: int, L: int, N: int, rdt: Any, sdt: Any, **options: bool) -> SelectiveScanPlan:
    """One block per (batch, channel); ``ceil(L / CHUNK)`` chunks walked inside it.

    Raises ``ValueError`` for N > :data:`MAX_N` (the per-state carry is in shared
    memory) and ``TypeError`` for a dtype pair without an instantiation.
    """
    if min(nb, nd, L) < 0 or N < 1:
        raise ValueError(f"selective_scan (CuPy): expected batch, D, L >= 0 and N >= 1, got {(nb, nd, L, N)}")
    if N > MAX_N:
        raise ValueError(f"selective_scan (CuPy): state size N={N} exceeds the kernels' maximum {MAX_N}")
    fwd, bwd = kernel_names(rdt, sdt)
    return SelectiveScanPlan(nb * nd, THREADS, CHUNK, -(-L // CHUNK), fwd, bwd, flags_of(**options))


# --------------------------------------------------------------------------- launchers


def _i64(x: int) -> np.int64:
    return np.int64(x)


def _layout_bc(cp: Any, X: Any, var: bool) -> tuple[Any, int]:
    """Kernel layout of a canonical B / C and its group count.

    (batch, G, N, L) if variable, (D, N) if fixed (the count is then unused).
    """
    if var:
        return cp.ascontiguousarray(cp.transpose(X, (0, 1, 3, 2))), int(X.shape[1])  # no copy for mamba's layout
    return cp.ascontiguousarray(X.reshape(X.shape[1], X.shape[3])), int(X.shape[1])


def _args(cp: Any, u, delta, A, B, C, Dv, z, delta_bias, h0, seq_idx, b_var, c_var, ratio_b, ratio_c):
    u, delta, A = (cp.ascontiguousarray(x) for x in (u, delta, A))
    Bk, GB = _layout_bc(cp, B, bool(b_var))
    Ck, GC = _layout_bc(cp, C, bool(c_var))
    opt = [None if x is None else cp.ascontiguousarray(x) for x in (Dv, z, delta_bias, h0)]
    seq = None if seq_idx is None else cp.ascontiguousarray(seq_idx, dtype=cp.int64)
    return u, delta, A, Bk, Ck, GB, GC, opt, seq


def selective_scan_fwd(u, delta, A, B, C, Dv, z, delta_bias, h0, seq_idx,
                       b_var, c_var, ratio_b, ratio_c, softplus, reverse, save):
    """Forward scan -> (out (batch, D, L) rdt, last state (batch, D, N) sdt, ckpt).

    ``ckpt`` (None unless ``save``) is ``(CHUNK, states)`` with the states entering
    every chunk, (batch, D, ceil(L / CHUNK), N) sdt: what :func:`selective_scan_bwd`
    needs.
    """
    import cupy as cp

    u, delta, A, Bk, Ck, GB, GC, (Dv, z, bias, h0), seq = _args(cp, u, delta, A, B, C, Dv, z, delta_bias, h0,
                                                                 seq_idx, b_var, c_var, ratio_b, ratio_c)
    nb, nd, L = u.shape
    N = A.shape[1]
    plan = plan_selective_scan(nb, nd, L, N, u.dtype, A.dtype, b_var=b_var, c_var=c_var, has_D=Dv is not None,
                               has_z=z is not None, has_bias=bias is not None, has_h0=h0 is not None,
                               has_seq=seq is not None, softplus=softplus, reverse=reverse, save=save)
    out = cp.empty((nb, nd, L), dtype=u.dtype)
    last = cp.empty((nb, nd, N), dtype=A.dtype)
    ckpt = cp.empty((nb, nd, plan.nchunk if save else 0, N), dtype=A.dtype)
    if plan.blocks:
        dummy = u  # a valid pointer for the absent options (never read: their flag is off)
        args = (u, delta, A, Bk, Ck, Dv if Dv is not None else dummy, z if z is not None else dummy,
                bias if bias is not None else dummy, h0 if h0 is not None else A, seq if seq is not None else u,
                out, last, ckpt if save else last, _i64(nd), _i64(L), _i64(N), _i64(GB), _i64(GC),
                _i64(ratio_b), _i64(ratio_c), _i64(plan.nchunk), np.int32(plan.flags))
        SELECTIVE_SCAN.get(plan.fwd)((plan.blocks,), (plan.threads,), args)
    return out, last, ((plan.chunk, ckpt) if save else None)


def selective_scan_bwd(u, delta, A, B, C, Dv, z, delta_bias, h0, seq_idx,
                       b_var, c_var, ratio_b, ratio_c, softplus, reverse, ckpt, dout, dlast):
    """Backward scan (transpose, no conjugation, as the reference).

    Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0) in canonical shapes
    (``dD`` / ``dz`` None where ``Dv`` / ``z`` are). ``ckpt`` comes from
    :func:`selective_scan_fwd` with ``save=True``; None reruns the forward to
    checkpoint. ``dlast`` None is a zero final-state cotangent.
    """
    import cupy as cp

    if ckpt is None:
        _, _, ckpt = selective_scan_fwd(u, delta, A, B, C, Dv, z, delta_bias, h0, seq_idx, b_var, c_var, ratio_b,
                                        ratio_c, softplus, reverse, True)
    chunk, states = ckpt
    if int(chunk) != CHUNK:
        raise ValueError(f"selective_scan_bwd (CuPy): checkpoints spaced {chunk} steps apart, expected {CHUNK} "
                         f"(they come from another backend's forward)")
    u, delta, A, Bk, Ck, GB, GC, (Dv, z, bias, _), seq = _args(cp, u, delta, A, B, C, Dv, z, delta_bias, None,
                                                                seq_idx, b_var, c_var, ratio_b, ratio_c)
    states = cp.ascontiguousarray(states)
    dout = cp.ascontiguousarray(dout)
    dlast = None if dlast is None else cp.ascontiguousarray(dlast)
    nb, nd, L = u.shape
    N = A.shape[1]
    plan = plan_selective_scan(nb, nd, L, N, u.dtype, A.dtype, b_var=b_var, c_var=c_var, has_D=Dv is not None,
                               has_z=z is not None, has_bias=bias is not None, has_seq=seq is not None,
                               softplus=softplus, reverse=reverse, has_dlast=dlast is not None)
    rdt, sdt = u.dtype, A.dtype
    du = cp.empty((nb, nd, L), dtype=rdt)
    ddelta = cp.empty((nb, nd, L), dtype=rdt)
    dz = cp.empty((nb, nd, L), dtype=rdt) if z is not None else None
    dBv = cp.zeros(Bk.shape, dtype=sdt) if b_var else None  # atomics accumulate into it
    dCv = cp.zeros(Ck.shape, dtype=sdt) if c_var else None
    dAp = cp.zeros((nb, nd, WARPS, N), dtype=sdt)  # per-(batch, channel, warp) partial sums
    dBp = cp.zeros((nb, nd, WARPS, N), dtype=sdt) if not b_var else None
    dCp = cp.zeros((nb, nd, WARPS, N), dtype=sdt) if not c_var else None
    dDp = cp.zeros((nb, nd), dtype=rdt)
    dh0 = cp.empty((nb, nd, N), dtype=sdt)
    if plan.blocks:
        dummy_r, dummy_s = du, dh0  # valid pointers for what the flags say is absent
        pick = lambda x, d: d if x is None else x
        args = (u, delta, A, Bk, Ck, pick(Dv, dummy_r), pick(z, dummy_r), pick(bias, dummy_r), pick(seq, u), states,
                dout, pick(dlast, dummy_s), du, ddelta, pick(dz, dummy_r), pick(dBv, dummy_s), pick(dCv, dummy_s),
                dAp, pick(dBp, dummy_s), pick(dCp, dummy_s), dDp, dh0, _i64(nd), _i64(L), _i64(N), _i64(GB),
                _i64(GC), _i64(ratio_b), _i64(ratio_c), _i64(plan.nchunk), np.int32(plan.flags))
        SELECTIVE_SCAN.get(plan.bwd)((plan.blocks,), (plan.threads,), args)
    elif dlast is not None:
        dh0[...] = dlast
    else:
        dh0.fill(0)
    dA = dAp.sum(axis=(0, 2))
    dB = cp.transpose(dBv, (0, 1, 3, 2)) if b_var else dBp.sum(axis=(0, 2)).reshape(1, nd, 1, N)
    dC = cp.transpose(dCv, (0, 1, 3, 2)) if c_var else dCp.sum(axis=(0, 2)).reshape(1, nd, 1, N)
    dD = dDp.sum(axis=0) if Dv is not None else None
    dbias = ddelta.sum(axis=(0, 2))
    return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0
