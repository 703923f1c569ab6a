"""Numba CPU kernels of Mamba's selective scan (forward and memory-lean backward).

Same function names and signatures as :mod:`ssmcore.reference.selective_scan`;
the front door :mod:`ssmcore._selective_scan` validates and canonicalises the
arguments first (see ``_canonical`` there), so these kernels never validate.
The launchers :func:`selective_scan_fwd` / :func:`selective_scan_bwd` own the
rest: C-contiguity (``np.ascontiguousarray``, a no-op for contiguous input),
typed dummies for absent optional inputs, every output allocation, the
checkpoint spacing ``CHUNK`` and the backward's work split.

Canonical arguments (``rdt`` = real compute dtype, ``sdt`` = state dtype, equal to
``rdt`` for real A and to the matching complex dtype for complex A):

* ``u``, ``delta``: (batch, D, L) ``rdt``; ``z``: (batch, D, L) or None.
* ``A``: (D, N) ``sdt``; ``Dv``, ``delta_bias``: (D,) ``rdt`` or None; ``h0``: (batch, D, N)
  ``sdt`` or None (zeros).
* ``B``, ``C``: **time-major inside a group**, (batch, G, L, N) when variable, or
  (1, D, 1, N) when fixed, always ``sdt``.  The front door permutes mamba's
  (batch, G, N, L) axes into this order (a view) and the launcher copies it
  C-contiguous, so that the N values read at one time step are contiguous and
  the N-loop vectorises; the copy costs B's size, not u's.
* ``seq_idx``: (batch, L) integer or None.

Design (why it is fast and lean):

* Forward, float32 with real A and variable B/C in groups of a multiple of ``LANES`` = 32
  channels (Mamba's case): :func:`_fwd_kernel_lanes`, ``prange`` over blocks of 32
  channels of one group with the channel index in the SIMD lanes; B and C at (t, n) are
  broadcast to all of them, and no step ends in a horizontal sum (1.3-1.5x the exp floor,
  against 2.4-2.6x for the general kernel below).
* Otherwise ``prange`` over (batch, channel) in the forward; the N-state lives in a small
  per-task buffer, ``exp`` is evaluated once per (t, n), no (batch, D, L, N) tensor
  exists anywhere.
* float32 uses a branch-free polynomial ``exp`` (Cody-Waite range reduction, degree-6
  polynomial, exponent by bit manipulation; max relative error 5e-7 on the normal
  range, results below exp(-87.3) flush to 0). Numba has no vector libm here, so
  libm ``expf`` is a scalar call per state and dominates the run time; the
  polynomial lets LLVM vectorise the N-loop. float64 and complex use libm.
* The forward saves the state entering every ``chunk`` steps (batch, D, ceil(L/chunk), N).
  The backward walks the chunks from the end, recomputes each chunk's states and
  ``exp(delta A)`` into (chunk+1, N) per-task buffers, and runs the adjoint recurrence
  through it.
* Variable-B/C gradients are sums over the channels of a group.  To stay race-free
  without (batch, D, L, N) partials, backward tasks are (batch, group, sub-block):
  the channels of one sub-block run sequentially and accumulate into the sub-block's
  own (batch, G, L, N) slice; the few sub-blocks (just enough to feed every thread)
  are summed afterwards.
* Per-step scalars (softplus, sigmoid, silu of z) are computed per chunk from
  contiguous buffers: a gather loop (the only one that depends on ``reverse``) then
  branch-free loops, which LLVM vectorises; with the direction select and the option
  branches in the same loop the exp polynomials stayed scalar (a quarter of the
  backward, a third of the forward).
* ``fastmath`` adds ``reassoc`` to the project's {'contract', 'nsz'} so that the
  N-sums (y = sum C x and the gradient sums) vectorise; it keeps NaN/inf semantics.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

from ... import _outputs
from ._fpenv import fp_enter, fp_exit
from ._jit import FASTMATH, jit

__all__ = ["fast_exp", "fast_sigmoid", "fast_softplus", "math_arrays", "selective_scan_bwd", "selective_scan_fwd"]

# 'reassoc' lets LLVM vectorise the floating-point sums over the state index n.
_FM = set(FASTMATH) | {"reassoc"}

# float32 exp constants (Cody-Waite split of ln 2; Taylor coefficients 1/k!).
_F32 = np.float32
_LOG2E = _F32(1.4426950408889634)
_LN2_HI = _F32(0.693145751953125)  # 16 significant bits: k * _LN2_HI is exact for |k| < 2^8
_LN2_LO = _F32(1.4286067653302226e-06)
_EXP_LO = _F32(-87.33654)  # exp of this is ~the smallest normal float32
_EXP_HI = _F32(88.72283)
_P2, _P3, _P4, _P5, _P6 = (_F32(1 / 2), _F32(1 / 6), _F32(1 / 24), _F32(1 / 120), _F32(1 / 720))
_HALF32 = _F32(0.5)
_ONE32 = _F32(1.0)
_ZERO32 = _F32(0.0)
_INF32 = _F32(np.inf)


def fast_exp(x):  # pragma: no cover - replaced by the overload inside jitted code
    """exp(x): polynomial for float32, libm for float64 and complex (jitted code only)."""
    raise NotImplementedError


@overload(fast_exp, fastmath=set(FASTMATH))
def _fast_exp_overload(x):
    if x == types.float32:

        def exp_f32(x):
            # Clamp so the exponent bits stay valid; written with "if" (not max/min)
            # so that NaN falls through the clamps and propagates.
            xc = _EXP_LO if x < _EXP_LO else x
            xc = _EXP_HI if xc > _EXP_HI else xc
            kf = np.floor(xc * _LOG2E + _HALF32)
            f = (xc - kf * _LN2_HI) - kf * _LN2_LO  # |f| <= ln2/2 + rounding
            p = _ONE32 + f * (_ONE32 + f * (_P2 + f * (_P3 + f * (_P4 + f * (_P5 + f * _P6)))))
            ki = np.int32(kf)
            # 2^k from the exponent field; k in [-126, 128) here, 128 handled below.
            kk = ki - np.int32(1) if ki > np.int32(127) else ki
            scale = np.int32((kk + np.int32(127)) << np.int32(23)).view(np.float32)
            r = p * scale
            r = r * _F32(2.0) if ki > np.int32(127) else r
            r = _ZERO32 if x < _EXP_LO else r
            r = _INF32 if x > _EXP_HI else r
            return r

        return exp_f32
    if isinstance(x, types.Complex):
        return lambda x: np.exp(x)
    if isinstance(x, types.Float):
        return lambda x: math.exp(x)
    return None


# 1/(2k+1) for the atanh series of log1p below.
_L3, _L5, _L7, _L9, _L11, _L13 = (_F32(1 / 3), _F32(1 / 5), _F32(1 / 7), _F32(1 / 9), _F32(1 / 11), _F32(1 / 13))
_TWO32 = _F32(2.0)
_TWENTY32 = _F32(20.0)


def fast_softplus(x):  # pragma: no cover - replaced by the overload inside jitted code
    """softplus(x) = log1p(exp(x)), = x above 20 (mamba_ssm/torch threshold)."""
    raise NotImplementedError


@overload(fast_softplus, fastmath=set(FASTMATH))
def _fast_softplus_overload(x):
    if x == types.float32:

        def softplus_f32(x):
            # max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1]; log1p(e) = 2 atanh(s) with
            # s = e / (2 + e) in (0, 1/3]: the odd series to s^13 is accurate to ~1e-8
            # relative and never forms 1 + e (no cancellation for small e).
            e = fast_exp(-abs(x))
            sv = e / (_TWO32 + e)
            s2 = sv * sv
            lp = _TWO32 * sv * (_ONE32 + s2 * (_L3 + s2 * (_L5 + s2 * (_L7 + s2 * (_L9 + s2 * (_L11 + s2 * _L13))))))
            r = (x if x > _ZERO32 else _ZERO32) + lp
            return x if x > _TWENTY32 else r

        return softplus_f32
    if isinstance(x, types.Float):
        return lambda x: x if x > 20.0 else math.log1p(math.exp(x))
    return None


def fast_sigmoid(x):  # pragma: no cover - replaced by the overload inside jitted code
    """1 / (1 + exp(-x)) with :func:`fast_exp`."""
    raise NotImplementedError


@overload(fast_sigmoid, fastmath=set(FASTMATH))
def _fast_sigmoid_overload(x):
    if x == types.float32:
        return lambda x: _ONE32 / (_ONE32 + fast_exp(-x))
    if isinstance(x, types.Float):
        return lambda x: 1.0 / (1.0 + math.exp(-x))
    return None


def softplus_and_sigmoid(x):  # pragma: no cover - replaced by the overload inside jitted code
    """(softplus(x), sigmoid(x)) sharing one exp(-|x|) (the backward needs both of delta)."""
    raise NotImplementedError


@overload(softplus_and_sigmoid, fastmath=set(FASTMATH))
def _softplus_and_sigmoid_overload(x):
    if x == types.float32:

        def sp_sg_f32(x):
            e = fast_exp(-abs(x))  # the same evaluation as fast_softplus
            sv = e / (_TWO32 + e)
            s2 = sv * sv
            lp = _TWO32 * sv * (_ONE32 + s2 * (_L3 + s2 * (_L5 + s2 * (_L7 + s2 * (_L9 + s2 * (_L11 + s2 * _L13))))))
            r = (x if x > _ZERO32 else _ZERO32) + lp
            sp = x if x > _TWENTY32 else r
            inv = _ONE32 / (_ONE32 + e)
            sg = e * inv if x < _ZERO32 else inv  # 1/(1+exp(-x)) = exp(x)/(1+exp(x))
            return sp, sg

        return sp_sg_f32
    if isinstance(x, types.Float):
        return lambda x: (fast_softplus(x), fast_sigmoid(x))
    return None


def readout_factor(a, one):  # pragma: no cover - replaced by the overload inside jitted code
    """2 for a complex state (conjugate-halved modes: y = 2 Re(C x)), 1 for a real one."""
    raise NotImplementedError


@overload(readout_factor)
def _readout_factor_overload(a, one):
    if isinstance(a, types.Complex):
        return lambda a, one: one + one
    return lambda a, one: one


@jit(parallel=True, fastmath=_FM)
def math_arrays(x):
    """(exp, softplus, sigmoid) of a 1-D array with the kernels' own functions (for accuracy tests)."""
    e = np.empty_like(x)
    sp = np.empty_like(x)
    sg = np.empty_like(x)
    for i in prange(x.size):
        e[i] = fast_exp(x[i])
        sp[i] = fast_softplus(x[i])
        sg[i] = fast_sigmoid(x[i])
    return e, sp, sg


#: Scan steps between the states the forward saves for the backward.  The backward keeps
#: (CHUNK + 1, N) states and (CHUNK, N) decays per task: 128 x 16 float32 fits L1.
CHUNK = 128


def _c(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x)  # a no-op when the front door's array already is


def _optional(x, shape, dtype):
    """(contiguous array, given?) for an optional input.

    A typed dummy when absent (the kernels are compiled once per dtype, not once per option
    pattern).
    """
    if x is None:
        return np.zeros(shape, dtype), False
    return _c(x), True


def _kernel_args(u, delta, A, B, C, Dv, z, delta_bias, h0, seq_idx, b_var, c_var, ratio_b, ratio_c,
                 softplus, reverse):
    u, delta, A, B, C = _c(u), _c(delta), _c(A), _c(B), _c(C)
    nb, nd, _ = u.shape
    Dv, has_D = _optional(Dv, (nd,), u.dtype)
    z, has_z = _optional(z, (1, 1, 1), u.dtype)
    delta_bias, _ = _optional(delta_bias, (nd,), u.dtype)
    h0, _ = _optional(h0, (nb, nd, A.shape[1]), A.dtype)
    has_seq = seq_idx is not None
    seq_idx = np.ascontiguousarray(seq_idx, dtype=np.int64) if has_seq else np.zeros((1, 1), np.int64)
    return (u, delta, A, B, C, Dv, z, delta_bias, h0, seq_idx, bool(b_var), bool(c_var), int(ratio_b),
            int(ratio_c), has_D, has_z, has_seq, bool(softplus), bool(reverse))


def selective_scan_fwd(u, delta, A, B, C, Dv, z, delta_bias, h0, seq_idx,
                       b_var, c_var, ratio_b, ratio_c, softplus, reverse, save):
    """Forward scan -> (out (batch, D, L) rdt, last state (batch, D, N) sdt, ckpt).

    ``ckpt`` (None unless ``save``) is what :func:`selective_scan_bwd` needs: the
    checkpoint spacing and the states entering every ``CHUNK`` scan steps,
    (batch, D, ceil(L / CHUNK), N) ``sdt``.  The spacing is chosen here and travels
    with the states, so the backward never depends on a setting read twice.
    """
    chunk = CHUNK
    out, last, ckpt = _forward(_kernel_args(u, delta, A, B, C, Dv, z, delta_bias, h0, seq_idx, b_var, c_var,
                                            ratio_b, ratio_c, softplus, reverse), chunk, bool(save))
    # u, delta and z are not scanned: an inf/NaN there always reaches out (see _all_finite)
    if not _all_finite(out, last, A, B, C, Dv, delta_bias, h0):
        ref_out, ref_last, _ = _reference().selective_scan_fwd(
            u, delta, A, B, C, Dv, z, delta_bias, h0, seq_idx, b_var, c_var, ratio_b, ratio_c, softplus, reverse,
            False)
        out, last = ref_out.astype(out.dtype), np.asarray(ref_last).astype(last.dtype)
    return out, last, ((chunk, ckpt) if save else None)


def _reference():
    from ...reference import selective_scan as ref

    return ref


def _all_finite(*arrays) -> bool:
    """Whether every given array (None skipped) is free of inf and NaN.

    Where an input or a result is not finite, the launchers hand the call to the
    reference (``ssmcore.reference.selective_scan``): the kernels' fused
    arithmetic (exp(dt Re A) times cos/sin of dt Im A instead of a complex
    product; gradient terms grouped for speed) meets an inf with a zero the
    reference never forms, so the inf/NaN pattern would differ (NaN for inf, or
    the reverse). The launchers scan the results and the parameter-sized inputs
    (A, B, C, D, delta_bias, h0), one vectorised pass each (~1 % of a call), not
    the (batch, D, L) inputs u, delta, z, dout: a non-finite value there is never
    multiplied away (dt B u, D u, silu(z) and their gradients keep it) and shows
    in the scanned results. Clean data never reruns.
    """
    for a in arrays:
        if a is not None and not np.isfinite(a).all():
            return False
    return True


#: Channels per task of the lane kernel :func:`_fwd_kernel_lanes` (its SIMD lanes).
LANES = 32


def uses_lanes(u_dtype, A_dtype, b_var, c_var, ratio_b, ratio_c) -> bool:
    """Whether the forward runs :func:`_fwd_kernel_lanes` (else :func:`_fwd_kernel`).

    The lane kernel needs float32 with a real ``A`` (the vector exp), variable ``B`` and
    ``C`` (Mamba's case: one value per (batch, group, t, n), shared by every channel of
    the group) and groups whose channel count is a multiple of :data:`LANES`, so that
    the ``LANES`` channels of a task read the same ``B``/``C`` rows.
    """
    return (np.dtype(u_dtype) == np.float32 and np.dtype(A_dtype) == np.float32 and bool(b_var) and bool(c_var)
            and int(ratio_b) % LANES == 0 and int(ratio_c) % LANES == 0)


def _forward(args, chunk, save, kernel=None):
    """(out, last state, checkpoints) of the forward kernel for canonical ``args`` (:func:`_kernel_args`).

    The outputs are allocated here, not in the kernels: Numba's allocator gives no
    huge-page advice and no reuse, and a DRAM-sized ``out`` comes from ssmcore's
    recycled blocks (:mod:`ssmcore._outputs`). ``kernel`` forces one of the two kernels
    (tests compare them); by default :func:`uses_lanes` picks.
    """
    u, A, b_var, c_var, ratio_b, ratio_c = args[0], args[2], args[10], args[11], args[12], args[13]
    nb, nd, L = u.shape
    N = A.shape[1]
    out = _outputs.empty((nb, nd, L), u.dtype)
    last = np.empty((nb, nd, N), A.dtype)
    ckpt = np.empty((nb, nd, -(-L // chunk) if save else 0, N), A.dtype)
    if kernel is None:
        kernel = _fwd_kernel_lanes if uses_lanes(u.dtype, A.dtype, b_var, c_var, ratio_b, ratio_c) else _fwd_kernel
    kernel(*args, chunk, save, out, last, ckpt)
    return out, last, ckpt


@jit(parallel=True, fastmath=_FM)
def _fwd_kernel_lanes(u, delta, A, B, C, Dv, z, delta_bias, h0, seq_idx,
                      b_var, c_var, ratio_b, ratio_c, has_D, has_z, has_seq,
                      softplus, reverse, chunk, save, out, last, ckpt):
    """:func:`_fwd_kernel` with the channel index in the SIMD lanes (see :func:`uses_lanes`).

    Why: with the state index n in the lanes, every step ends in a horizontal sum
    y = sum_n C x and re-reads its state vector, and the step's scalar work (softplus,
    gate, D u) runs once per channel: the forward took 2.4-2.6x the time of its exps
    alone. Here a task owns ``LANES`` channels of one group; per (t, n) it broadcasts
    B[t, n] and C[t, n] to all of them, the state is an (N, LANES) block, y accumulates
    per lane (no horizontal sums), and the per-step scalars are computed for LANES
    channels at once: 1.4x the exp floor (``benchmarks/compare_selective_scan.py``).
    Same operations per element as :func:`_fwd_kernel` except the order of the n-sum of
    y (sequential here), so results agree to rounding.
    """
    nb, nd, L = u.shape
    N = A.shape[1]
    nblk = nd // LANES
    nck = (L + chunk - 1) // chunk
    zr = np.zeros(1, u.dtype)[0]
    for i in prange(nb * nblk):
        fp1 = fp_enter()
        b = i // nblk
        d0 = (i - b * nblk) * LANES
        gb = d0 // ratio_b
        gc = d0 // ratio_c
        xs = np.empty((N, LANES), A.dtype)
        At = np.empty((N, LANES), A.dtype)
        for k in range(LANES):
            for n in range(N):
                At[n, k] = A[d0 + k, n]
                xs[n, k] = h0[b, d0 + k, n]
        dtv = np.empty((chunk, LANES), u.dtype)  # dt of every (step, lane) of a chunk
        duv = np.empty((chunk, LANES), u.dtype)  # dt u
        yv = np.empty((chunk, LANES), u.dtype)  # C . x
        for c in range(nck):
            s0 = c * chunk
            cnt = min(chunk, L - s0)
            # time of scan step s0 + j is tb + ts * j, as an unsigned index: a select on
            # `reverse`, or a signed index (Numba's negative-index wrap-around check), in
            # the loops below kept the recurrence from vectorising (1.9x -> 1.3x the floor)
            ts = -1 if reverse else 1
            tb = L - 1 - s0 if reverse else s0
            if save:
                for k in range(LANES):
                    for n in range(N):
                        ckpt[b, d0 + k, c, n] = xs[n, k]
            # 1) per-step scalars of the chunk, LANES channels at a time
            for k in range(LANES):
                d = d0 + k
                bias = delta_bias[d]
                for j in range(cnt):
                    t = np.uint64(tb + ts * j)
                    dtv[j, k] = delta[b, d, t] + bias
            if softplus:
                for j in range(cnt):
                    for k in range(LANES):
                        dtv[j, k] = fast_softplus(dtv[j, k])
            for k in range(LANES):
                d = d0 + k
                for j in range(cnt):
                    t = np.uint64(tb + ts * j)
                    duv[j, k] = dtv[j, k] * u[b, d, t]
            # 2) the recurrence: sequential in t, the lanes over channels
            for j in range(cnt):
                t = np.uint64(tb + ts * j)
                if has_seq and s0 + j > 0:
                    if seq_idx[b, t] != seq_idx[b, np.uint64(tb + ts * (j - 1))]:
                        for n in range(N):
                            for k in range(LANES):
                                xs[n, k] = zr
                for k in range(LANES):
                    yv[j, k] = zr
                for n in range(N):
                    Bn = B[b, gb, t, n]
                    Cn = C[b, gc, t, n]
                    for k in range(LANES):
                        xn = fast_exp(dtv[j, k] * At[n, k]) * xs[n, k] + duv[j, k] * Bn
                        xs[n, k] = xn
                        yv[j, k] += Cn * xn
            # 3) skip connection and gate, written channel by channel
            for k in range(LANES):
                d = d0 + k
                Dd = Dv[d]
                for j in range(cnt):
                    t = np.uint64(tb + ts * j)
                    o = yv[j, k]
                    if has_D:
                        o += Dd * u[b, d, t]
                    if has_z:
                        zt = z[b, d, t]
                        o *= zt * fast_sigmoid(zt)
                    out[b, d, t] = o
        for k in range(LANES):
            for n in range(N):
                last[b, d0 + k, n] = xs[n, k]
        fp_exit(fp1)


@jit(parallel=True, fastmath=_FM)
def _fwd_kernel(u, delta, A, B, C, Dv, z, delta_bias, h0, seq_idx,
                b_var, c_var, ratio_b, ratio_c, has_D, has_z, has_seq,
                softplus, reverse, chunk, save, out, last, ckpt):
    """Forward scan into ``out``, ``last`` and ``ckpt`` (allocated by :func:`_forward`).

    out (batch, D, L) rdt, last state (batch, D, N) sdt, checkpoints (batch, D, ceil(L/chunk), N)
    sdt: the state entering each chunk of ``chunk`` scan steps; empty when ``save`` is False).
    """
    nb, nd, L = u.shape
    N = A.shape[1]
    one = np.full(1, 1.0, u.dtype)[0]
    zs = np.zeros(1, A.dtype)[0]  # typed zero: float32 + Python 0 would promote to float64
    yfac = readout_factor(zs, one)
    nck = (L + chunk - 1) // chunk
    for i in prange(nb * nd):
        fp1 = fp_enter()
        b = i // nd
        d = i - b * nd
        bb = b if b_var else 0
        gb = d // ratio_b if b_var else d
        bc = b if c_var else 0
        gc = d // ratio_c if c_var else d
        x = h0[b, d].copy()
        Ad = A[d].copy()
        bias = delta_bias[d]
        Dd = Dv[d]
        dtb = np.empty(chunk, u.dtype)
        yb = np.empty(chunk, u.dtype)
        zb = np.empty(chunk, u.dtype)
        for c in range(nck):
            s0 = c * chunk
            s1 = min(s0 + chunk, L)
            if save:
                ckpt[b, d, c, :] = x
            # 1) step sizes and gates for the whole chunk: gather the raw values
            #    (the only loop that depends on the scan direction), then branch-free
            #    passes over the contiguous buffers, where the exp polynomials vectorise
            cnt = s1 - s0
            for j in range(cnt):
                t = L - 1 - s0 - j if reverse else s0 + j
                dtb[j] = delta[b, d, t] + bias
                if has_z:
                    zb[j] = z[b, d, t]
            if softplus:
                for j in range(cnt):
                    dtb[j] = fast_softplus(dtb[j])
            if has_z:
                for j in range(cnt):
                    zt = zb[j]
                    zb[j] = zt * fast_sigmoid(zt)  # silu(z)
            # 2) the recurrence: sequential in t, vectorised over the N states
            for s in range(s0, s1):
                t = L - 1 - s if reverse else s
                if has_seq and s > 0:
                    tp = t + 1 if reverse else t - 1
                    if seq_idx[b, t] != seq_idx[b, tp]:
                        x[:] = 0
                dt = dtb[s - s0]
                dtu = dt * u[b, d, t]
                tb = t if b_var else 0
                tc = t if c_var else 0
                y = zs
                for n in range(N):
                    xn = fast_exp(dt * Ad[n]) * x[n] + dtu * B[bb, gb, tb, n]
                    x[n] = xn
                    y += C[bc, gc, tc, n] * xn
                yb[s - s0] = yfac * y.real
            # 3) skip connection and gate
            for s in range(s0, s1):
                t = L - 1 - s if reverse else s
                o = yb[s - s0]
                if has_D:
                    o += Dd * u[b, d, t]
                if has_z:
                    o *= zb[s - s0]
                out[b, d, t] = o
        last[b, d, :] = x
        fp_exit(fp1)


def selective_scan_bwd(u, delta, A, B, C, Dv, z, delta_bias, h0, seq_idx,
                       b_var, c_var, ratio_b, ratio_c, softplus, reverse, ckpt, dout, dlast):
    """Backward scan (JAX convention for complex: transpose, no conjugation).

    Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0) in canonical shapes:
    du, ddelta, dz (batch, D, L) rdt; dA (D, N) sdt; dB/dC like B/C; dD,
    ddelta_bias (D,) rdt; dh0 (batch, D, N) sdt; ``dD`` / ``dz`` are None where
    ``Dv`` / ``z`` are.  ``ckpt`` comes from :func:`selective_scan_fwd` with
    ``save=True``; without it (None) the forward is rerun here to checkpoint.
    ``dlast`` None means a zero final-state cotangent.
    """
    args = _kernel_args(u, delta, A, B, C, Dv, z, delta_bias, h0, seq_idx, b_var, c_var, ratio_b, ratio_c,
                        softplus, reverse)
    if ckpt is None:  # the forward ran without saving (a plain call, not via vjp)
        chunk = CHUNK
        _, _, states = _forward(args, chunk, True)
    else:
        chunk, states = ckpt
        states = _c(states)
    u, A = args[0], args[2]
    nb, nd, L = u.shape
    dout = _c(dout)
    dlast = np.zeros((nb, nd, A.shape[1]), A.dtype) if dlast is None else _c(dlast)
    # The work split is this launcher's choice: enough tasks for every thread.  Read here,
    # not in the kernel: numba.get_num_threads() inside a kernel blocks caching.
    grads = _bwd_kernel(*args, int(chunk), states, dout, dlast, 2 * numba.get_num_threads())
    du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = grads
    grads = (du, ddelta, dA, dB, dC, dD if args[14] else None, dz if args[15] else None, dbias, dh0)
    if not _all_finite(*grads, dlast, A, B, C, Dv, delta_bias, h0):  # see _all_finite
        ref = _reference().selective_scan_bwd(u, delta, A, B, C, Dv, z, delta_bias, h0, seq_idx, b_var, c_var,
                                              ratio_b, ratio_c, softplus, reverse, None, dout, dlast)
        grads = tuple(None if g is None else np.asarray(r).astype(g.dtype) for g, r in zip(grads, ref))
    return grads


@jit(parallel=True, fastmath=_FM)
def _bwd_kernel(u, delta, A, B, C, Dv, z, delta_bias, h0, seq_idx,
                b_var, c_var, ratio_b, ratio_c, has_D, has_z, has_seq,
                softplus, reverse, chunk, ckpt, dout, dlast, want_tasks):
    nb, nd, L = u.shape
    N = A.shape[1]
    one = np.full(1, 1.0, u.dtype)[0]
    c20 = np.full(1, 20.0, u.dtype)[0]
    zs = np.zeros(1, A.dtype)[0]  # typed zeros: float32 + Python 0 would promote to float64
    zr = np.zeros(1, u.dtype)[0]
    yfac = readout_factor(zs, one)
    nck = (L + chunk - 1) // chunk

    # Tasks: (batch, group, sub-block) when a B/C is variable, so that the group sums
    # of their gradients are race-free; one task per (batch, channel) otherwise.
    any_var = b_var or c_var
    if b_var and c_var:  # a task must hold whole groups of both: lcm of the two ratios
        p, q = ratio_b, ratio_c
        while q:
            p, q = q, p % q
        per = ratio_b // p * ratio_c
    else:
        per = ratio_b if b_var else (ratio_c if c_var else 1)
    ng = nd // per
    nsub = 1  # split a group's channels into sub-blocks only as far as needed to feed the threads
    if any_var:
        while nsub < per and nb * ng * nsub < want_tasks:
            nsub += 1
    dBv = np.zeros((nsub if b_var else 0, nb, B.shape[1], L, N), A.dtype)
    dCv = np.zeros((nsub if c_var else 0, nb, C.shape[1], L, N), A.dtype)
    dBf = np.zeros((nb, nd, N), A.dtype)  # fixed B/C: per-(batch, channel) partials
    dCf = np.zeros((nb, nd, N), A.dtype)
    dAp = np.zeros((nb, nd, N), A.dtype)
    dDp = np.zeros((nb, nd), u.dtype)
    dbp = np.zeros((nb, nd), u.dtype)
    du = np.empty((nb, nd, L), u.dtype)
    ddelta = np.empty((nb, nd, L), u.dtype)
    dz = np.zeros((nb, nd, L) if has_z else (1, 1, 1), u.dtype)
    dh0 = np.empty((nb, nd, N), A.dtype)

    for task in prange(nb * ng * nsub):
        fp1 = fp_enter()
        b = task // (ng * nsub)
        rest = task - b * ng * nsub
        g = rest // nsub
        k = rest - g * nsub
        d_lo = g * per + (k * per) // nsub
        d_hi = g * per + ((k + 1) * per) // nsub
        xbuf = np.empty((chunk + 1, N), A.dtype)  # states of one chunk (row 0: entering state)
        abuf = np.empty((chunk, N), A.dtype)  # exp(dt A), 0 where seq_idx restarts the state
        dtbuf = np.empty(chunk, u.dtype)
        spbuf = np.empty(chunk, u.dtype)  # d softplus / d raw
        ghbuf = np.empty(chunk, u.dtype)  # dout * silu(z)
        dzbuf = np.empty(chunk, u.dtype)  # dout * d silu(z) / dz
        ybuf = np.empty(chunk, u.dtype)
        r = np.empty(N, A.dtype)
        Ad = np.empty(N, A.dtype)
        dAacc = np.empty(N, A.dtype)
        dBacc = np.empty(N, A.dtype)
        dCacc = np.empty(N, A.dtype)
        gbuf = np.empty((chunk, N), A.dtype)  # adjoint states of one chunk
        for d in range(d_lo, d_hi):
            bb = b if b_var else 0
            gb = d // ratio_b if b_var else d
            bc = b if c_var else 0
            gc = d // ratio_c if c_var else d
            Ad[:] = A[d]
            r[:] = dlast[b, d]  # adjoint entering from the future: the final-state cotangent
            dAacc[:] = 0
            dBacc[:] = 0
            dCacc[:] = 0
            bias = delta_bias[d]
            Dd = Dv[d]
            dDacc = zr
            dbacc = zr
            for c in range(nck - 1, -1, -1):
                s0 = c * chunk
                s1 = min(s0 + chunk, L)
                # 1) per-step scalars.  First gather the chunk's raw values into
                #    contiguous buffers (the only loop that depends on the scan
                #    direction), then one branch-free pass per transform over those
                #    buffers, so the exp polynomials vectorise across steps (a loop
                #    mixing both directions and the option branches stays scalar).
                cnt = s1 - s0
                for j in range(cnt):
                    t = L - 1 - s0 - j if reverse else s0 + j
                    dtbuf[j] = delta[b, d, t] + bias
                    ghbuf[j] = dout[b, d, t]
                    if has_z:
                        ybuf[j] = z[b, d, t]  # ybuf holds z until step 2 overwrites it
                if softplus:
                    for j in range(cnt):
                        raw = dtbuf[j]
                        sp, sg = softplus_and_sigmoid(raw)
                        dtbuf[j] = sp
                        spbuf[j] = sg if raw <= c20 else one
                else:
                    for j in range(cnt):
                        spbuf[j] = one
                if has_z:
                    for j in range(cnt):
                        go = ghbuf[j]
                        zt = ybuf[j]
                        sg = fast_sigmoid(zt)
                        ghbuf[j] = go * zt * sg
                        dzbuf[j] = go * sg * (one + zt * (one - sg))
                # 2) recompute the chunk's states from its checkpoint
                xbuf[0, :] = ckpt[b, d, c]
                for s in range(s0, s1):
                    j = s - s0
                    t = L - 1 - s if reverse else s
                    reset = False
                    if has_seq and s > 0:
                        tp = t + 1 if reverse else t - 1
                        reset = seq_idx[b, t] != seq_idx[b, tp]
                    dt = dtbuf[j]
                    dtu = dt * u[b, d, t]
                    tb = t if b_var else 0
                    if reset:
                        # the state restarts from 0: effective decay 0, no gradient flows back
                        for n in range(N):
                            abuf[j, n] = zs
                            xbuf[j + 1, n] = dtu * B[bb, gb, tb, n]
                    else:
                        for n in range(N):
                            a = fast_exp(dt * Ad[n])
                            abuf[j, n] = a
                            xbuf[j + 1, n] = a * xbuf[j, n] + dtu * B[bb, gb, tb, n]
                    if has_z:
                        tc = t if c_var else 0
                        y = zs
                        for n in range(N):
                            y += C[bc, gc, tc, n] * xbuf[j + 1, n]
                        ybuf[j] = yfac * y.real
                if has_z:
                    for s in range(s0, s1):
                        t = L - 1 - s if reverse else s
                        o = ybuf[s - s0]
                        if has_D:
                            o += Dd * u[b, d, t]
                        dz[b, d, t] = dzbuf[s - s0] * o
                # 3) adjoint recurrence backwards through the chunk, kept minimal:
                #    g_t = yfac ghat_t C_t + a_{t+1} g_{t+1}   (r holds a_{t+1} g_{t+1})
                #    Within the chunk the carry is read from gbuf's next row (fewer
                #    loads and stores in the loop than updating r in place).
                for s in range(s1 - 1, s0 - 1, -1):
                    j = s - s0
                    t = L - 1 - s if reverse else s
                    cg = yfac * ghbuf[j]
                    tc = t if c_var else 0
                    if s == s1 - 1:
                        for n in range(N):
                            gbuf[j, n] = cg * C[bc, gc, tc, n] + r[n]
                    else:
                        for n in range(N):
                            gbuf[j, n] = cg * C[bc, gc, tc, n] + abuf[j + 1, n] * gbuf[j + 1, n]
                for n in range(N):
                    r[n] = abuf[0, n] * gbuf[0, n]
                # 4) gradients from g: no dependencies between steps (vectorises over n)
                for s in range(s0, s1):
                    j = s - s0
                    t = L - 1 - s if reverse else s
                    go = ghbuf[j]
                    ut = u[b, d, t]
                    dt = dtbuf[j]
                    dtu = dt * ut
                    cg = yfac * go
                    tb = t if b_var else 0
                    tc = t if c_var else 0
                    sgb = zr  # sum_n Re(g_n B_n)
                    sga = zr  # sum_n Re(g_n A_n a_n x_prev_n)
                    for n in range(N):
                        gn = gbuf[j, n]
                        # abuf is 0 where seq_idx restarts the state, so this term vanishes there
                        gal = gn * (abuf[j, n] * xbuf[j, n])
                        sgb += (gn * B[bb, gb, tb, n]).real
                        sga += (gal * Ad[n]).real
                        dAacc[n] += dt * gal
                    if b_var:
                        for n in range(N):
                            dBv[k, b, gb, t, n] += dtu * gbuf[j, n]
                    else:
                        for n in range(N):
                            dBacc[n] += dtu * gbuf[j, n]
                    if c_var:
                        for n in range(N):
                            dCv[k, b, gc, t, n] += cg * xbuf[j + 1, n]
                    else:
                        for n in range(N):
                            dCacc[n] += cg * xbuf[j + 1, n]
                    dut = dt * sgb
                    if has_D:
                        dDacc += go * ut
                        dut += go * Dd
                    du[b, d, t] = dut
                    ddt = (ut * sgb + sga) * spbuf[j]
                    ddelta[b, d, t] = ddt
                    dbacc += ddt
            dh0[b, d, :] = r
            dBf[b, d, :] = dBacc
            dCf[b, d, :] = dCacc
            dAp[b, d, :] = dAacc
            dDp[b, d] = dDacc
            dbp[b, d] = dbacc
        fp_exit(fp1)

    dA = np.zeros((nd, N), A.dtype)
    dD = np.zeros(nd, u.dtype)
    dbias = np.zeros(nd, u.dtype)
    for b in range(nb):
        dA += dAp[b]
        dD += dDp[b]
        dbias += dbp[b]
    if b_var:
        dB = dBv[0].copy()
        for k in range(1, nsub):
            dB += dBv[k]
    else:
        dB = np.zeros((1, nd, 1, N), A.dtype)
        for b in range(nb):
            dB[0, :, 0, :] += dBf[b]
    if c_var:
        dC = dCv[0].copy()
        for k in range(1, nsub):
            dC += dCv[k]
    else:
        dC = np.zeros((1, nd, 1, N), A.dtype)
        for b in range(nb):
            dC[0, :, 0, :] += dCf[b]
    return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0
