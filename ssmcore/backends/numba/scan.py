"""Numba CPU kernels of the linear scan h_t = a_t h_{t-1} + b_t (forward and fused backward).

Same function names and signatures as :mod:`ssmcore.reference.scan`, which is the
specification; the layout contract (``a`` rows ``(Ra, La)`` with ``La`` in
``{1, L}``, row map ``arow``, ``b`` ``(C, L)`` C-contiguous, one dtype) is
documented there and established by :mod:`ssmcore._scan`.

Why the kernels look the way they do (measured facts in PLATFORM.md):

* One recurrence is one dependency chain: each step waits for the previous
  FMA (4 cycles for float32, about 8 for a complex multiply-add), so a plain
  loop per channel is latency-bound well below memory bandwidth. Every kernel
  therefore advances several **independent chains interleaved** in its inner
  loop: two channels in the serial path, four (forward) or two (backward)
  staggered slots in the channel path, four time chunks in the chunked path.
  Each chain streams rows of a, b and out; when rows have a power-of-two byte
  length, the rows of different channels sit at the same offset modulo 4 KiB,
  i.e. in the same L1 sets (8 ways), so chains must be spread in time (the
  channel path's slots) or in memory (the chunked path's chunk distances).
* The serial and channel paths compute every step with the same operations,
  so their results are bit-identical (tests compare them exactly).
* Constant-in-time coefficients (``La == 1``) are read with a time step of 0
  (``a[r, t * astep]``; the channel path re-reads a fixed element), so they are
  never materialised to length L.
* ``reverse`` only changes the direction of the loop index: no flipped copies.
* Paths, chosen by :func:`choose_path` (T = ``numba.get_num_threads()``):

  - ``"serial"`` when ``C * L <= SERIAL_MAX``: the fork/join of a parallel
    region costs more than the work;
  - ``"chunked"`` (parallel over time) when ``C < 2 T`` and ``L >= CHUNK_MIN_L``:
    too few channels to give every thread two chains. Time is cut into
    windows (``WINDOW_BYTES`` of a and b) processed in order; inside
    a window every channel is cut into chunks, and each thread advances four
    neighbouring chunks interleaved (their distance is chosen not to alias in
    L1, so four chains are safe here). Pass 1 computes per chunk only its summary
    (prod of a, local end state from zero) without writing; the chunk start
    states are combined sequentially (``start_{j+1} = P_j start_j + S_j``, no
    division by cumulative products); pass 2 rescans every chunk from its true
    start state and writes the output. Memory traffic is therefore read (a, b)
    twice and write out once (about 2/3 of the triad's bandwidth at best).
    Smaller windows that keep (a, b) in L3 for pass 2 measured no faster here,
    while every window costs two parallel regions, and on a shared,
    oversubscribed machine each region can wait a scheduler time slice for a
    descheduled thread (measured under load, complex64, 4M steps: medians of
    0.1-1 s with 8-64 windows against 17 ms with one). So
    ``WINDOW_BYTES`` is large: one window up to 64 MiB of (a, b);
  - ``"channels"`` otherwise. Forward: ``prange`` over one contiguous range of
    channels per thread, run as ``NSLOT`` = 4 **slots** advanced together (four
    chains: one float32 FMA latency per four elements instead of per two). Slot
    k owns a contiguous block of the range and walks its channels back to back
    (in descending order when the scan runs backwards), so its b and out
    accesses form one stream through memory; the work proceeds in blocks that
    end where some slot finishes a channel. Slot k starts after a delay
    (:func:`_slot_delay`, under ``SET_SPAN`` bytes of steps) that puts the
    slots' streams ``SET_SPAN / 4`` bytes apart modulo ``SET_SPAN``: without it,
    single-threaded float32 (1024, 4096) ran four chains at 0.4 of the triad
    (two channels: 0.5), with it at 0.7-1.0. Flat 1-D views keep the loop at one
    index register and 12 base pointers (2-D indexing per lane spilled
    registers). Measured and rejected: a channel tile copying K = 8 rows x T
    steps (T = 64-512) into per-thread scratch and running the 8 chains there
    reached only 0.25-0.35 of the triad, because hopping between rows in
    segments defeats the hardware prefetchers (a transposed, SIMD-lane tile
    needs the same copies) (a plain triad visiting 8 rows in segments
    of 128-2048 steps ran at 0.45-0.56 of the row-by-row triad). Backward:
    the same scheme with ``NSLOT_BWD`` = 2 slots (each chain streams five rows:
    a, h, gh, g, ga; four lanes would need 20 base pointers and spilled), slots
    ``SET_SPAN / 2`` apart. Against the old channel pairs it measured 0.29 ->
    0.77 (float32 (1024, 4096)) and 0.32 -> 0.66 (float32 (1000, 4097)) of a
    five-stream bandwidth floor, single-threaded.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from ... import _outputs
from ._fpenv import fp_enter, fp_exit
from ._jit import jit as _project_jit


def jit(fn=None, *, parallel: bool = False):
    """The project's ``jit`` without FMA contraction (``fastmath={'nsz'}`` only).

    Every path (serial pairs, channel slots) performs the same IEEE operations
    per step, so their results are bit-identical by construction on any host:
    with ``contract``, LLVM may fuse ``a * h + b`` in one compiled loop and not
    in another depending on the target's vector width (seen as 1-ulp
    differences on a 16-core AVX-512 host). The scan is memory-bound, so the
    unfused multiply-add costs nothing measurable.
    """
    return _project_jit(fn, parallel=parallel, fastmath={"nsz"})

# Kernel indices go through _u: Numba adds a negative-index wrap-around check to
# every signed index it cannot prove non-negative (3 extra instructions per load,
# and register spills with four chains); unsigned indices have none.
_u = np.uint64
# Constant ints passed to jitted helpers are written np.int64(k): Numba types a bare literal
# as Literal[int](k) and compiles the helper once per value (cold-start compile time, no speed).

__all__ = ["CHUNK_MIN_L", "SERIAL_MAX", "WINDOW_BYTES", "choose_path", "scan_bwd", "scan_fwd"]

SERIAL_MAX = 1 << 15  # elements: below this, one thread (a parallel region costs ~5-10 us)
CHUNK_MIN_L = 1 << 14  # time-chunking pays only for long series
WINDOW_BYTES = 1 << 26  # bytes of (a, b) per window of the chunked path (see below)
NSLOT = 4  # interleaved chains per thread in the forward channel path
NSLOT_BWD = 2  # and in the backward one (5 streams per chain: more would spill registers)
SET_SPAN = 4096  # bytes after which L1d set indices repeat (64 sets of 64-byte lines)
PATHS = ("auto", "serial", "channels", "chunked")


# --------------------------------------------------------------------------- forward


@jit
def _fwd2(a, astep, ra0, ra1, b, c0, c1, out, x0, x1, s0, s1, n, desc):
    """Two interleaved chains over [s0, s0+n) of channel c0 and [s1, s1+n) of c1.

    ``desc`` visits each span from its end. Returns the two end states.
    """
    if desc:
        e0 = s0 + n - 1
        e1 = s1 + n - 1
        for i in range(n):
            t0 = e0 - i
            t1 = e1 - i
            x0 = a[ra0, _u(t0 * astep)] * x0 + b[c0, _u(t0)]
            x1 = a[ra1, _u(t1 * astep)] * x1 + b[c1, _u(t1)]
            out[c0, _u(t0)] = x0
            out[c1, _u(t1)] = x1
    else:
        for i in range(n):
            t0 = s0 + i
            t1 = s1 + i
            x0 = a[ra0, _u(t0 * astep)] * x0 + b[c0, _u(t0)]
            x1 = a[ra1, _u(t1 * astep)] * x1 + b[c1, _u(t1)]
            out[c0, _u(t0)] = x0
            out[c1, _u(t1)] = x1
    return x0, x1


@jit
def _fwd_summary2(a, astep, ra0, ra1, b, c0, c1, s0, s1, n, desc, one, zero):
    """(prod of a, end state from zero) of two spans, interleaved; nothing is written."""
    p0 = one
    p1 = one
    x0 = zero
    x1 = zero
    if desc:
        e0 = s0 + n - 1
        e1 = s1 + n - 1
        for i in range(n):
            t0 = e0 - i
            t1 = e1 - i
            a0 = a[ra0, _u(t0 * astep)]
            a1 = a[ra1, _u(t1 * astep)]
            x0 = a0 * x0 + b[c0, _u(t0)]
            x1 = a1 * x1 + b[c1, _u(t1)]
            p0 = p0 * a0
            p1 = p1 * a1
    else:
        for i in range(n):
            t0 = s0 + i
            t1 = s1 + i
            a0 = a[ra0, _u(t0 * astep)]
            a1 = a[ra1, _u(t1 * astep)]
            x0 = a0 * x0 + b[c0, _u(t0)]
            x1 = a1 * x1 + b[c1, _u(t1)]
            p0 = p0 * a0
            p1 = p1 * a1
    return p0, x0, p1, x1


@jit
def _fwd_pair_of_channels(a, astep, arow, b, h0, out, g, desc):
    C, L = out.shape
    c0 = 2 * g
    c1 = min(c0 + 1, C - 1)  # odd C: the last channel runs twice, writing equal values
    _fwd2(a, astep, arow[c0], arow[c1], b, c0, c1, out, h0[c0], h0[c1], np.int64(0), np.int64(0), L, desc)


@jit
def _fwd_serial(a, astep, arow, b, h0, out, desc):
    fp0 = fp_enter()
    for g in range((out.shape[0] + 1) // 2):
        _fwd_pair_of_channels(a, astep, arow, b, h0, out, g, desc)
    fp_exit(fp0)


# ---- channel path: four staggered slots per thread (see the module docstring)


@jit
def _lanes4(fa, fb, fo, ia0, ia1, ia2, ia3, ib0, ib1, ib2, ib3, x0, x1, x2, x3, n, desc):
    """Four interleaved chains over flat views.

    Lane k reads ``fa[ia_k +- i]`` and ``fb[ib_k +- i]`` and writes ``fo[ib_k +- i]`` for i < n
    (``-`` when ``desc``).

    Flat indices keep the loop at one index register plus 12 base pointers, which
    fit the x86-64 registers (2-D indexing per lane spilled). Returns the states.
    """
    a0 = _u(ia0)
    a1 = _u(ia1)
    a2 = _u(ia2)
    a3 = _u(ia3)
    b0 = _u(ib0)
    b1 = _u(ib1)
    b2 = _u(ib2)
    b3 = _u(ib3)
    if desc:
        for i in range(_u(n)):
            x0 = fa[a0 - i] * x0 + fb[b0 - i]
            x1 = fa[a1 - i] * x1 + fb[b1 - i]
            x2 = fa[a2 - i] * x2 + fb[b2 - i]
            x3 = fa[a3 - i] * x3 + fb[b3 - i]
            fo[b0 - i] = x0
            fo[b1 - i] = x1
            fo[b2 - i] = x2
            fo[b3 - i] = x3
    else:
        for i in range(_u(n)):
            x0 = fa[a0 + i] * x0 + fb[b0 + i]
            x1 = fa[a1 + i] * x1 + fb[b1 + i]
            x2 = fa[a2 + i] * x2 + fb[b2 + i]
            x3 = fa[a3 + i] * x3 + fb[b3 + i]
            fo[b0 + i] = x0
            fo[b1 + i] = x1
            fo[b2 + i] = x2
            fo[b3 + i] = x3
    return x0, x1, x2, x3


@jit
def _lanes4_const(fa, ia0, ia1, ia2, ia3, fb, fo, ib0, ib1, ib2, ib3, x0, x1, x2, x3, n, desc):
    """:func:`_lanes4` with constant-in-time coefficients ``fa[ia_k]``.

    The coefficient is read inside the loop on purpose: the stores to ``fo`` may
    alias ``fa``, so the load stays in the loop body and LLVM contracts the
    complex multiply-add exactly as in the serial kernel (a hoisted scalar gave
    a different FMA split for complex64, i.e. results differing in the last bit).
    """
    a0 = _u(ia0)
    a1 = _u(ia1)
    a2 = _u(ia2)
    a3 = _u(ia3)
    b0 = _u(ib0)
    b1 = _u(ib1)
    b2 = _u(ib2)
    b3 = _u(ib3)
    if desc:
        for i in range(_u(n)):
            x0 = fa[a0] * x0 + fb[b0 - i]
            x1 = fa[a1] * x1 + fb[b1 - i]
            x2 = fa[a2] * x2 + fb[b2 - i]
            x3 = fa[a3] * x3 + fb[b3 - i]
            fo[b0 - i] = x0
            fo[b1 - i] = x1
            fo[b2 - i] = x2
            fo[b3 - i] = x3
    else:
        for i in range(_u(n)):
            x0 = fa[a0] * x0 + fb[b0 + i]
            x1 = fa[a1] * x1 + fb[b1 + i]
            x2 = fa[a2] * x2 + fb[b2 + i]
            x3 = fa[a3] * x3 + fb[b3 + i]
            fo[b0 + i] = x0
            fo[b1 + i] = x1
            fo[b2 + i] = x2
            fo[b3 + i] = x3
    return x0, x1, x2, x3


@jit
def _slot_delay(k, nslot, start_k, start_0, itemsize, desc):
    """Start delay of slot ``k`` of ``nslot``, in steps.

    Slot ``k`` waits so that, walking in lockstep, the slots' addresses sit ``k * SET_SPAN / nslot``
    bytes apart modulo ``SET_SPAN`` (``start``: flat index of each slot's first element; the walk
    goes down when ``desc``).
    """
    span = SET_SPAN // itemsize  # elements per L1 set period
    nat = (start_k - start_0) % span
    want = k * span // nslot
    return ((-nat if desc else nat) - want) % span


@jit
def _slot_lane(k, first, cs, qs, left, xs, L, La, astep, arow, desc):
    """Flat indices (a, b) and state of lane ``k``.

    An idle slot repeats slot ``first`` (same channel, step and state: it recomputes and rewrites
    equal values).
    """
    j = k if left[k] > 0 and qs[k] >= 0 else first
    c = cs[j]
    t = L - 1 - qs[j] if desc else qs[j]
    return arow[c] * La + t * astep, c * L + t, xs[j]


@jit
def _fwd_slots(fa, astep, arow, fb, h0, fo, L, lo, hi, desc, itemsize, stagger, cs, qs, left, xs):
    """Channels [lo, hi) of one thread as ``NSLOT`` slots advanced together.

    Slot k owns a contiguous block of channels and walks them back to back (in
    descending order when ``desc``), so its b and out accesses form one stream
    through memory. ``qs[k]`` is the step inside its current channel ``cs[k]``
    (negative: still waiting for its staggered start), ``left[k]`` the channels it
    has still to run, ``xs[k]`` its state. Work proceeds in blocks that end when
    some slot reaches the end of its channel (or starts).
    """
    m = hi - lo
    per = (m + NSLOT - 1) // NSLOT
    dc = -1 if desc else 1
    La = L if astep else 1
    start_0 = 0
    for k in range(NSLOT):
        first_c = min(hi, lo + k * per)
        left[k] = max(0, min(hi, first_c + per) - first_c)
        cs[k] = first_c + left[k] - 1 if desc else first_c
        start = cs[k] * L + (L - 1 if desc else 0)
        if k == 0:
            start_0 = start
        qs[k] = -_slot_delay(k, np.int64(NSLOT), start, start_0, itemsize, desc) if stagger and left[k] > 0 else 0
        if left[k] > 0:
            xs[k] = h0[cs[k]]
    while True:
        n = np.int64(0)
        first = np.int64(-1)
        for k in range(NSLOT):
            if left[k] > 0:
                q = qs[k]
                d = -q if q < 0 else L - q  # steps to its start, or to its channel's end
                n = d if n == 0 else min(n, d)
                if q >= 0 and first < 0:
                    first = k
        if n == 0:
            return
        if first >= 0:
            ia0, ib0, x0 = _slot_lane(np.int64(0), first, cs, qs, left, xs, L, La, astep, arow, desc)
            ia1, ib1, x1 = _slot_lane(np.int64(1), first, cs, qs, left, xs, L, La, astep, arow, desc)
            ia2, ib2, x2 = _slot_lane(np.int64(2), first, cs, qs, left, xs, L, La, astep, arow, desc)
            ia3, ib3, x3 = _slot_lane(np.int64(3), first, cs, qs, left, xs, L, La, astep, arow, desc)
            if astep:
                ys = _lanes4(fa, fb, fo, ia0, ia1, ia2, ia3, ib0, ib1, ib2, ib3, x0, x1, x2, x3, n, desc)
            else:
                ys = _lanes4_const(fa, ia0, ia1, ia2, ia3, fb, fo, ib0, ib1, ib2, ib3, x0, x1, x2, x3, n, desc)
            for k in range(NSLOT):
                if left[k] > 0 and qs[k] >= 0:
                    xs[k] = ys[k]
        for k in range(NSLOT):
            if left[k] > 0:
                qs[k] += n
                if qs[k] == L:  # the slot's next channel starts from its h0
                    left[k] -= 1
                    cs[k] += dc
                    qs[k] = 0
                    if left[k] > 0:
                        xs[k] = h0[cs[k]]


@jit(parallel=True)
def _fwd_channels(fa, astep, arow, fb, h0, fo, L, desc, nitem, itemsize, stagger):
    """``prange`` over ``nitem`` contiguous channel ranges (one per thread).

    The slot bookkeeping arrays are allocated once per range, outside the hot loop.
    """
    C = h0.shape[0]
    for it in prange(nitem):
        fp1 = fp_enter()
        cs = np.empty(NSLOT, np.int64)
        qs = np.empty(NSLOT, np.int64)
        left = np.empty(NSLOT, np.int64)
        xs = np.empty(NSLOT, fo.dtype)
        _fwd_slots(fa, astep, arow, fb, h0, fo, L, it * C // nitem, (it + 1) * C // nitem, desc, itemsize, stagger,
                   cs, qs, left, xs)
        fp_exit(fp1)


@jit
def _chunk_span(i, nchunk, w0, wl, cl, desc):
    """Channel, start and length of chunk item ``i`` inside window [w0, w0 + wl)."""
    c = i // nchunk
    j = i % nchunk
    if desc:  # the scan enters the window from its end: chunk 0 is the last one
        j = nchunk - 1 - j
    s = min(w0 + j * cl, w0 + wl)
    n = min(cl, w0 + wl - s)
    return c, s, n


@jit
def _combine_carries(P, S, carry, start, nchunk):
    """Sequential combine of chunk summaries (P = product of a, S = local end state).

    Writes the true start state of every chunk to ``start`` and advances ``carry``
    (per channel) past the window; the 3 padding slots repeat the last start state.
    """
    nitem = carry.shape[0] * nchunk
    for c in range(carry.shape[0]):
        x = carry[c]
        for j in range(nchunk):
            i = c * nchunk + j
            start[i] = x
            x = P[i] * x + S[i]
        carry[c] = x
    for i in range(nitem, nitem + 3):
        start[i] = start[nitem - 1]


@jit
def _chunk_len(wl, nchunk, itemsize):
    """Chunk length: whole cache lines, and not a multiple of 4 KiB.

    Two chunks scanned together would then map to the same L1 sets.
    """
    cl = (wl + nchunk - 1) // nchunk
    cl = ((cl + 15) // 16) * 16
    if (cl * itemsize) % 4096 == 0:
        cl += 16
    return cl


@jit
def _fwd4(ar, astep, br, orow, x0, x1, x2, x3, s0, s1, s2, s3, n, desc):
    """Four interleaved chains over four chunks of one row (1-D views of a, b, out).

    One row means three base pointers plus four offsets: few enough registers
    for four chains (with four independent rows the addresses spill).
    """
    d = -1 if desc else 1  # direction as a step, so there is one loop body
    o0 = s0 + n - 1 if desc else s0
    o1 = s1 + n - 1 if desc else s1
    o2 = s2 + n - 1 if desc else s2
    o3 = s3 + n - 1 if desc else s3
    us = _u(astep)
    for i in range(n):
        j = d * i
        t0 = _u(o0 + j)
        t1 = _u(o1 + j)
        t2 = _u(o2 + j)
        t3 = _u(o3 + j)
        x0 = ar[t0 * us] * x0 + br[t0]
        x1 = ar[t1 * us] * x1 + br[t1]
        x2 = ar[t2 * us] * x2 + br[t2]
        x3 = ar[t3 * us] * x3 + br[t3]
        orow[t0] = x0
        orow[t1] = x1
        orow[t2] = x2
        orow[t3] = x3
    return x0, x1, x2, x3


@jit
def _fwd_summary4(ar, astep, br, s0, s1, s2, s3, n, desc, one, zero):
    """(prod of a, end state from zero) of four chunks of one row; nothing is written."""
    p0 = one
    p1 = one
    p2 = one
    p3 = one
    x0 = zero
    x1 = zero
    x2 = zero
    x3 = zero
    d = -1 if desc else 1
    o0 = s0 + n - 1 if desc else s0
    o1 = s1 + n - 1 if desc else s1
    o2 = s2 + n - 1 if desc else s2
    o3 = s3 + n - 1 if desc else s3
    us = _u(astep)
    for i in range(n):
        j = d * i
        t0 = _u(o0 + j)
        t1 = _u(o1 + j)
        t2 = _u(o2 + j)
        t3 = _u(o3 + j)
        a0 = ar[t0 * us]
        a1 = ar[t1 * us]
        a2 = ar[t2 * us]
        a3 = ar[t3 * us]
        x0 = a0 * x0 + br[t0]
        x1 = a1 * x1 + br[t1]
        x2 = a2 * x2 + br[t2]
        x3 = a3 * x3 + br[t3]
        p0 = p0 * a0
        p1 = p1 * a1
        p2 = p2 * a2
        p3 = p3 * a3
    return p0, x0, p1, x1, p2, x2, p3, x3


@jit
def _quad_spans(q, nitem, nchunk, w0, wl, cl, desc):
    """Channels, starts, lengths and the common length m of quad ``q``.

    A quad is chunks 4q..4q+3; ``nchunk`` is a multiple of 4, so all four are
    chunks of one channel (c0 == c1 == c2 == c3). Only the window's last chunk
    can be shorter (or empty): the first m steps in scan order run interleaved,
    the rest of a longer lane runs afterwards.
    """
    i0 = 4 * q
    c0, s0, n0 = _chunk_span(min(i0, nitem - 1), nchunk, w0, wl, cl, desc)
    c1, s1, n1 = _chunk_span(min(i0 + 1, nitem - 1), nchunk, w0, wl, cl, desc)
    c2, s2, n2 = _chunk_span(min(i0 + 2, nitem - 1), nchunk, w0, wl, cl, desc)
    c3, s3, n3 = _chunk_span(min(i0 + 3, nitem - 1), nchunk, w0, wl, cl, desc)
    return c0, s0, n0, c1, s1, n1, c2, s2, n2, c3, s3, n3, min(min(n0, n1), min(n2, n3))


@jit
def _first(s, n, m, desc):
    return s + n - m if desc else s


@jit
def _rest(s, m, desc):
    return s if desc else s + m


@jit
def _fwd_summary_tail(a, astep, arow, b, c, s, n, m, desc, one, zero, p, x):
    """Extend a lane's summary (p, x) over its steps after the first m."""
    if n > m:
        s2 = _rest(s, m, desc)
        q, y, q2, y2 = _fwd_summary2(a, astep, arow[c], arow[c], b, c, c, s2, s2, n - m, desc, one, zero)
        return q * p, q * x + y
    return p, x


@jit
def _fwd_tail(a, astep, arow, b, out, c, s, n, m, desc, x):
    if n > m:
        s2 = _rest(s, m, desc)
        _fwd2(a, astep, arow[c], arow[c], b, c, c, out, x, x, s2, s2, n - m, desc)


@jit(parallel=True)
def _fwd_chunked(a, astep, arow, b, h0, out, desc, nchunk, window, itemsize, one, zero):
    C, L = out.shape
    carry = h0.copy()
    nitem = C * nchunk
    nquad = (nitem + 3) // 4
    P = np.empty(nitem + 3, out.dtype)  # padded: a short last quad repeats its last item
    S = np.empty(nitem + 3, out.dtype)
    start = np.empty(nitem + 3, out.dtype)
    nwin = (L + window - 1) // window
    for wi in range(nwin):
        w = nwin - 1 - wi if desc else wi
        w0 = w * window
        wl = min(window, L - w0)
        cl = _chunk_len(wl, nchunk, itemsize)
        # pass 1: summaries of every chunk, four neighbouring chunks per thread at a time
        for q in prange(nquad):
            fp1 = fp_enter()
            c0, s0, n0, c1, s1, n1, c2, s2, n2, c3, s3, n3, m = _quad_spans(q, nitem, nchunk, w0, wl, cl, desc)
            p0, x0, p1, x1, p2, x2, p3, x3 = _fwd_summary4(
                a[arow[c0]], astep, b[c0],
                _first(s0, n0, m, desc), _first(s1, n1, m, desc), _first(s2, n2, m, desc), _first(s3, n3, m, desc),
                m, desc, one, zero,
            )
            i0 = 4 * q
            P[i0], S[i0] = _fwd_summary_tail(a, astep, arow, b, c0, s0, n0, m, desc, one, zero, p0, x0)
            P[i0 + 1], S[i0 + 1] = _fwd_summary_tail(a, astep, arow, b, c1, s1, n1, m, desc, one, zero, p1, x1)
            P[i0 + 2], S[i0 + 2] = _fwd_summary_tail(a, astep, arow, b, c2, s2, n2, m, desc, one, zero, p2, x2)
            P[i0 + 3], S[i0 + 3] = _fwd_summary_tail(a, astep, arow, b, c3, s3, n3, m, desc, one, zero, p3, x3)
            fp_exit(fp1)
        # combine: true start state of every chunk, in scan order (no division by products)
        _combine_carries(P, S, carry, start, nchunk)
        # pass 2: rescan every chunk from its true start, writing the output
        for q in prange(nquad):
            fp1 = fp_enter()
            c0, s0, n0, c1, s1, n1, c2, s2, n2, c3, s3, n3, m = _quad_spans(q, nitem, nchunk, w0, wl, cl, desc)
            i0 = 4 * q
            x0, x1, x2, x3 = _fwd4(
                a[arow[c0]], astep, b[c0], out[c0],
                start[i0], start[i0 + 1], start[i0 + 2], start[i0 + 3],
                _first(s0, n0, m, desc), _first(s1, n1, m, desc), _first(s2, n2, m, desc), _first(s3, n3, m, desc),
                m, desc,
            )
            _fwd_tail(a, astep, arow, b, out, c0, s0, n0, m, desc, x0)
            _fwd_tail(a, astep, arow, b, out, c1, s1, n1, m, desc, x1)
            _fwd_tail(a, astep, arow, b, out, c2, s2, n2, m, desc, x2)
            _fwd_tail(a, astep, arow, b, out, c3, s3, n3, m, desc, x3)
            fp_exit(fp1)
    return carry


# --------------------------------------------------------------------------- backward


@jit
def _bwd2(a, astep, ra0, ra1, h, hz0, hz1, gh, c0, c1, g, ga, k0, k1, s0, s1, n, desc, L, zero, with_ga=True):
    """Fused adjoint of two interleaved spans (see reference ``scan_bwd``).

    ``k`` is the carry a_{next} g_{next}. ``desc`` means the backward walks time
    downwards (the forward scan went up), so the previous state of step t is
    h[t-1]; otherwise h[t+1]: in both cases h[t + d] with d the walk's step.
    Only the last step of a span can fall off the array (then the previous
    state is ``hz`` = h0), so it is peeled off the loop. ``ga`` is written at
    ``t * astep`` (a scratch column when a is constant in time) and also summed,
    which is the gradient for constant-in-time a. Returns (k0, k1, sum0, sum1).
    """
    acc0 = zero
    acc1 = zero
    if n <= 0:
        return k0, k1, acc0, acc1
    d = -1 if desc else 1
    o0 = s0 + n - 1 if desc else s0
    o1 = s1 + n - 1 if desc else s1
    us = _u(astep)
    if with_ga:
        for i in range(n - 1):
            j = d * i
            t0 = _u(o0 + j)
            t1 = _u(o1 + j)
            p0 = _u(o0 + j + d)  # the previous state, always inside the array here
            p1 = _u(o1 + j + d)
            y0 = gh[c0, t0]
            y1 = gh[c1, t1]
            g0 = y0 + k0
            g1 = y1 + k1
            g[c0, t0] = g0
            g[c1, t1] = g1
            e0 = g0 * h[c0, p0]
            e1 = g1 * h[c1, p1]
            ga[c0, t0 * us] = e0
            ga[c1, t1 * us] = e1
            acc0 += e0
            acc1 += e1
            w0 = a[ra0, t0 * us]
            w1 = a[ra1, t1 * us]
            k0 = w0 * k0 + w0 * y0  # = a g, as one FMA on the dependency chain
            k1 = w1 * k1 + w1 * y1
    else:  # a separate loop, not a branch in the one above: that changed how LLVM fused its products
        for i in range(n - 1):
            j = d * i
            t0 = _u(o0 + j)
            t1 = _u(o1 + j)
            y0 = gh[c0, t0]
            y1 = gh[c1, t1]
            g0 = y0 + k0
            g1 = y1 + k1
            g[c0, t0] = g0
            g[c1, t1] = g1
            w0 = a[ra0, t0 * us]
            w1 = a[ra1, t1 * us]
            k0 = w0 * k0 + w0 * y0
            k1 = w1 * k1 + w1 * y1
    # the last step of each lane, where the previous state may be h0
    v0 = o0 + d * (n - 1)
    v1 = o1 + d * (n - 1)
    if with_ga:
        q0 = h[c0, _u(v0 + d)] if 0 <= v0 + d < L else hz0
        q1 = h[c1, _u(v1 + d)] if 0 <= v1 + d < L else hz1
        g0 = gh[c0, _u(v0)] + k0
        g1 = gh[c1, _u(v1)] + k1
        g[c0, _u(v0)] = g0
        g[c1, _u(v1)] = g1
        e0 = g0 * q0
        e1 = g1 * q1
        ga[c0, _u(v0 * astep)] = e0
        ga[c1, _u(v1 * astep)] = e1
        k0 = a[ra0, _u(v0 * astep)] * g0
        k1 = a[ra1, _u(v1 * astep)] * g1
        return k0, k1, acc0 + e0, acc1 + e1
    g0 = gh[c0, _u(v0)] + k0
    g1 = gh[c1, _u(v1)] + k1
    g[c0, _u(v0)] = g0
    g[c1, _u(v1)] = g1
    return a[ra0, _u(v0 * astep)] * g0, a[ra1, _u(v1 * astep)] * g1, acc0, acc1


@jit
def _bwd_summary2(a, astep, ra0, ra1, gh, c0, c1, s0, s1, n, desc, one, zero):
    """Carry map k_out = P k_in + S of two spans: P = prod of a, S from k_in = 0."""
    p0 = one
    p1 = one
    k0 = zero
    k1 = zero
    if desc:
        e0 = s0 + n - 1
        e1 = s1 + n - 1
        for i in range(n):
            t0 = e0 - i
            t1 = e1 - i
            a0 = a[ra0, _u(t0 * astep)]
            a1 = a[ra1, _u(t1 * astep)]
            k0 = a0 * k0 + a0 * gh[c0, _u(t0)]
            k1 = a1 * k1 + a1 * gh[c1, _u(t1)]
            p0 = p0 * a0
            p1 = p1 * a1
    else:
        for i in range(n):
            t0 = s0 + i
            t1 = s1 + i
            a0 = a[ra0, _u(t0 * astep)]
            a1 = a[ra1, _u(t1 * astep)]
            k0 = a0 * k0 + a0 * gh[c0, _u(t0)]
            k1 = a1 * k1 + a1 * gh[c1, _u(t1)]
            p0 = p0 * a0
            p1 = p1 * a1
    return p0, k0, p1, k1


@jit
def _bwd_pair_of_channels(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, pair, desc, zero, with_ga):
    C, L = g.shape
    c0 = 2 * pair
    c1 = min(c0 + 1, C - 1)
    k0, k1, s0, s1 = _bwd2(
        a, astep, arow[c0], arow[c1], h, h0[c0], h0[c1], gh, c0, c1, g, ga, gfinal[c0], gfinal[c1], np.int64(0),
        np.int64(0), L, desc, L, zero, with_ga,
    )
    gh0[c0] = k0
    gh0[c1] = k1
    gsum[c0] = s0
    gsum[c1] = s1


@jit
def _bwd_serial(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, desc, zero, with_ga):
    fp0 = fp_enter()
    for pair in range((g.shape[0] + 1) // 2):
        _bwd_pair_of_channels(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, pair, desc, zero, with_ga)
    fp_exit(fp0)


# ---- channel path: two staggered slots per thread (see the module docstring)


@jit
def _bwd_lanes2(fa, fh, fgh, fg, fga, ia0, ia1, ib0, ib1, k0, k1, s0, s1, n, desc, with_ga):
    """``n`` regular adjoint steps of two lanes over flat views.

    Regular: the previous state lies inside the channel. ``ga`` shares the index of g (time-varying
    a).

    Same operations, in the same order, as the loop of :func:`_bwd2`, so the
    results are bit-identical; flat indices save the address registers that
    the 2-D version spills. Returns the carries and running sums.
    """
    a0 = _u(ia0)
    a1 = _u(ia1)
    b0 = _u(ib0)
    b1 = _u(ib1)
    if desc:
        for i in range(_u(n)):
            t0 = b0 - i
            t1 = b1 - i
            y0 = fgh[t0]
            y1 = fgh[t1]
            g0 = y0 + k0
            g1 = y1 + k1
            fg[t0] = g0
            fg[t1] = g1
            if with_ga:
                e0 = g0 * fh[t0 - _u(1)]
                e1 = g1 * fh[t1 - _u(1)]
                fga[t0] = e0
                fga[t1] = e1
                s0 += e0
                s1 += e1
            w0 = fa[a0 - i]
            w1 = fa[a1 - i]
            k0 = w0 * k0 + w0 * y0
            k1 = w1 * k1 + w1 * y1
    else:
        for i in range(_u(n)):
            t0 = b0 + i
            t1 = b1 + i
            y0 = fgh[t0]
            y1 = fgh[t1]
            g0 = y0 + k0
            g1 = y1 + k1
            fg[t0] = g0
            fg[t1] = g1
            if with_ga:
                e0 = g0 * fh[t0 + _u(1)]
                e1 = g1 * fh[t1 + _u(1)]
                fga[t0] = e0
                fga[t1] = e1
                s0 += e0
                s1 += e1
            w0 = fa[a0 + i]
            w1 = fa[a1 + i]
            k0 = w0 * k0 + w0 * y0
            k1 = w1 * k1 + w1 * y1
    return k0, k1, s0, s1


@jit
def _bwd_lanes2_const(fa, fh, fgh, fg, fga, ia0, ia1, ig0, ig1, ib0, ib1, k0, k1, s0, s1, n, desc, with_ga):
    """:func:`_bwd_lanes2` with constant-in-time a.

    a is ``fa[ia_k]``, re-read every step as in :func:`_lanes4_const`; ga is written
    to a scratch slot ``fga[ig_k]``.
    """
    a0 = _u(ia0)
    a1 = _u(ia1)
    q0 = _u(ig0)
    q1 = _u(ig1)
    b0 = _u(ib0)
    b1 = _u(ib1)
    if desc:
        for i in range(_u(n)):
            t0 = b0 - i
            t1 = b1 - i
            y0 = fgh[t0]
            y1 = fgh[t1]
            g0 = y0 + k0
            g1 = y1 + k1
            fg[t0] = g0
            fg[t1] = g1
            if with_ga:
                e0 = g0 * fh[t0 - _u(1)]
                e1 = g1 * fh[t1 - _u(1)]
                fga[q0] = e0
                fga[q1] = e1
                s0 += e0
                s1 += e1
            w0 = fa[a0]
            w1 = fa[a1]
            k0 = w0 * k0 + w0 * y0
            k1 = w1 * k1 + w1 * y1
    else:
        for i in range(_u(n)):
            t0 = b0 + i
            t1 = b1 + i
            y0 = fgh[t0]
            y1 = fgh[t1]
            g0 = y0 + k0
            g1 = y1 + k1
            fg[t0] = g0
            fg[t1] = g1
            if with_ga:
                e0 = g0 * fh[t0 + _u(1)]
                e1 = g1 * fh[t1 + _u(1)]
                fga[q0] = e0
                fga[q1] = e1
                s0 += e0
                s1 += e1
            w0 = fa[a0]
            w1 = fa[a1]
            k0 = w0 * k0 + w0 * y0
            k1 = w1 * k1 + w1 * y1
    return k0, k1, s0, s1


@jit
def _bwd_slot_lane(k, first, cs, qs, left, ks, ss, L, La, astep, arow, desc):
    """Flat indices (a, ga, g) and carry/sum of lane ``k``.

    An idle slot repeats slot ``first`` (its writes are equal, its results are dropped).
    """
    j = k if left[k] > 0 and qs[k] >= 0 else first
    c = cs[j]
    t = L - 1 - qs[j] if desc else qs[j]
    return arow[c] * La + t * astep, c * La + t * astep, c * L + t, ks[j], ss[j]


@jit
def _bwd_slots(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, lo, hi, desc, stagger, zero,
               cs, qs, left, ks, ss, with_ga):
    """Channels [lo, hi) of one thread as ``NSLOT_BWD`` staggered slots.

    As in :func:`_fwd_slots`. A channel's last step in walk order, whose previous state
    is h0, is run by :func:`_bwd2` itself (n = 1), so that its FMA split (complex
    products) is the serial kernel's.
    """
    L = g.shape[1]
    fa = a.reshape(a.size)
    fh = h.reshape(h.size)
    fgh = gh.reshape(gh.size)
    fg = g.reshape(g.size)
    fga = ga.reshape(ga.size)
    m = hi - lo
    per = (m + NSLOT_BWD - 1) // NSLOT_BWD
    dc = -1 if desc else 1
    La = L if astep else 1
    tl = 0 if desc else L - 1  # time of a channel's last step in walk order
    start_0 = 0
    for k in range(NSLOT_BWD):
        first_c = min(hi, lo + k * per)
        left[k] = max(0, min(hi, first_c + per) - first_c)
        cs[k] = first_c + left[k] - 1 if desc else first_c
        start = cs[k] * L + (L - 1 if desc else 0)
        if k == 0:
            start_0 = start
        qs[k] = -_slot_delay(k, np.int64(NSLOT_BWD), start, start_0, g.itemsize, desc) if stagger and left[k] > 0 else 0
        if left[k] > 0:
            ks[k] = gfinal[cs[k]]
            ss[k] = zero
    while True:
        for k in range(NSLOT_BWD):
            while left[k] > 0 and qs[k] == L - 1:
                c = cs[k]
                kf, _, e, _ = _bwd2(a, astep, arow[c], arow[c], h, h0[c], h0[c], gh, c, c, g, ga, ks[k], ks[k],
                                    tl, tl, np.int64(1), desc, L, zero, with_ga)
                gh0[c] = kf
                gsum[c] = ss[k] + e
                left[k] -= 1
                cs[k] += dc
                qs[k] = 0
                if left[k] > 0:
                    ks[k] = gfinal[cs[k]]
                    ss[k] = zero
        n = np.int64(0)
        first = np.int64(-1)
        for k in range(NSLOT_BWD):
            if left[k] > 0:
                q = qs[k]
                d = -q if q < 0 else L - 1 - q  # steps to its start, or its regular steps left
                n = d if n == 0 else min(n, d)
                if q >= 0 and first < 0:
                    first = k
        if n == 0:
            return
        if first >= 0:
            ia0, ig0, ib0, k0, s0 = _bwd_slot_lane(np.int64(0), first, cs, qs, left, ks, ss, L, La, astep, arow, desc)
            ia1, ig1, ib1, k1, s1 = _bwd_slot_lane(np.int64(1), first, cs, qs, left, ks, ss, L, La, astep, arow, desc)
            if astep:
                r = _bwd_lanes2(fa, fh, fgh, fg, fga, ia0, ia1, ib0, ib1, k0, k1, s0, s1, n, desc, with_ga)
            else:
                r = _bwd_lanes2_const(
                    fa, fh, fgh, fg, fga, ia0, ia1, ig0, ig1, ib0, ib1, k0, k1, s0, s1, n, desc, with_ga
                )
            for k in range(NSLOT_BWD):
                if left[k] > 0 and qs[k] >= 0:
                    ks[k] = r[k]
                    ss[k] = r[k + 2]
        for k in range(NSLOT_BWD):
            if left[k] > 0:
                qs[k] += n


@jit(parallel=True)
def _bwd_channels(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, desc, nitem, stagger, zero, with_ga):
    C = g.shape[0]
    for it in prange(nitem):
        fp1 = fp_enter()
        cs = np.empty(NSLOT_BWD, np.int64)
        qs = np.empty(NSLOT_BWD, np.int64)
        left = np.empty(NSLOT_BWD, np.int64)
        ks = np.empty(NSLOT_BWD, g.dtype)
        ss = np.empty(NSLOT_BWD, g.dtype)
        _bwd_slots(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, it * C // nitem, (it + 1) * C // nitem, desc,
                   stagger, zero, cs, qs, left, ks, ss, with_ga)
        fp_exit(fp1)


@jit
def _bwd4(ar, astep, hr, hz, ghr, gr, gar, k0, k1, k2, k3, s0, s1, s2, s3, n, desc, L, zero, with_ga=True):
    """Four interleaved lanes of :func:`_bwd2` over chunks of one row (1-D views).

    ``hz`` is the row's h0. Returns (k0..k3, sum0..sum3). Without ``with_ga``
    neither ``hr`` nor ``gar`` is touched and the sums are zero.
    """
    acc0 = zero
    acc1 = zero
    acc2 = zero
    acc3 = zero
    if n <= 0:
        return k0, k1, k2, k3, acc0, acc1, acc2, acc3
    d = -1 if desc else 1
    o0 = s0 + n - 1 if desc else s0
    o1 = s1 + n - 1 if desc else s1
    o2 = s2 + n - 1 if desc else s2
    o3 = s3 + n - 1 if desc else s3
    us = _u(astep)
    if not with_ga:  # a separate loop, as in _bwd2
        for i in range(n - 1):
            j = d * i
            t0 = _u(o0 + j)
            t1 = _u(o1 + j)
            t2 = _u(o2 + j)
            t3 = _u(o3 + j)
            y0 = ghr[t0]
            y1 = ghr[t1]
            y2 = ghr[t2]
            y3 = ghr[t3]
            g0 = y0 + k0
            g1 = y1 + k1
            g2 = y2 + k2
            g3 = y3 + k3
            gr[t0] = g0
            gr[t1] = g1
            gr[t2] = g2
            gr[t3] = g3
            w0 = ar[t0 * us]
            w1 = ar[t1 * us]
            w2 = ar[t2 * us]
            w3 = ar[t3 * us]
            k0 = w0 * k0 + w0 * y0
            k1 = w1 * k1 + w1 * y1
            k2 = w2 * k2 + w2 * y2
            k3 = w3 * k3 + w3 * y3
        k0 = _bwd_last_no_ga(ar, astep, ghr, gr, k0, o0 + d * (n - 1))
        k1 = _bwd_last_no_ga(ar, astep, ghr, gr, k1, o1 + d * (n - 1))
        k2 = _bwd_last_no_ga(ar, astep, ghr, gr, k2, o2 + d * (n - 1))
        k3 = _bwd_last_no_ga(ar, astep, ghr, gr, k3, o3 + d * (n - 1))
        return k0, k1, k2, k3, acc0, acc1, acc2, acc3
    for i in range(n - 1):
        j = d * i
        t0 = _u(o0 + j)
        t1 = _u(o1 + j)
        t2 = _u(o2 + j)
        t3 = _u(o3 + j)
        y0 = ghr[t0]
        y1 = ghr[t1]
        y2 = ghr[t2]
        y3 = ghr[t3]
        g0 = y0 + k0
        g1 = y1 + k1
        g2 = y2 + k2
        g3 = y3 + k3
        gr[t0] = g0
        gr[t1] = g1
        gr[t2] = g2
        gr[t3] = g3
        e0 = g0 * hr[_u(o0 + j + d)]  # the previous state, inside the array here
        e1 = g1 * hr[_u(o1 + j + d)]
        e2 = g2 * hr[_u(o2 + j + d)]
        e3 = g3 * hr[_u(o3 + j + d)]
        gar[t0 * us] = e0
        gar[t1 * us] = e1
        gar[t2 * us] = e2
        gar[t3 * us] = e3
        acc0 += e0
        acc1 += e1
        acc2 += e2
        acc3 += e3
        w0 = ar[t0 * us]
        w1 = ar[t1 * us]
        w2 = ar[t2 * us]
        w3 = ar[t3 * us]
        k0 = w0 * k0 + w0 * y0  # = a g, as one FMA on the dependency chain
        k1 = w1 * k1 + w1 * y1
        k2 = w2 * k2 + w2 * y2
        k3 = w3 * k3 + w3 * y3
    k0, e0 = _bwd_last(ar, astep, hr, hz, ghr, gr, gar, k0, o0 + d * (n - 1), d, L)
    k1, e1 = _bwd_last(ar, astep, hr, hz, ghr, gr, gar, k1, o1 + d * (n - 1), d, L)
    k2, e2 = _bwd_last(ar, astep, hr, hz, ghr, gr, gar, k2, o2 + d * (n - 1), d, L)
    k3, e3 = _bwd_last(ar, astep, hr, hz, ghr, gr, gar, k3, o3 + d * (n - 1), d, L)
    return k0, k1, k2, k3, acc0 + e0, acc1 + e1, acc2 + e2, acc3 + e3


@jit
def _bwd_last(ar, astep, hr, hz, ghr, gr, gar, k, v, d, L):
    """One backward step at time v of a 1-D row, where the previous state may be h0."""
    q = hr[_u(v + d)] if 0 <= v + d < L else hz
    gv = ghr[_u(v)] + k
    gr[_u(v)] = gv
    e = gv * q
    gar[_u(v * astep)] = e
    return ar[_u(v * astep)] * gv, e


@jit
def _bwd_last_no_ga(ar, astep, ghr, gr, k, v):
    """:func:`_bwd_last` without a's gradient: the previous state is not needed."""
    gv = ghr[_u(v)] + k
    gr[_u(v)] = gv
    return ar[_u(v * astep)] * gv


@jit
def _bwd_summary4(ar, astep, ghr, s0, s1, s2, s3, n, desc, one, zero):
    """Carry maps k_out = P k_in + S of four chunks of one row."""
    p0 = one
    p1 = one
    p2 = one
    p3 = one
    k0 = zero
    k1 = zero
    k2 = zero
    k3 = zero
    d = -1 if desc else 1
    o0 = s0 + n - 1 if desc else s0
    o1 = s1 + n - 1 if desc else s1
    o2 = s2 + n - 1 if desc else s2
    o3 = s3 + n - 1 if desc else s3
    us = _u(astep)
    for i in range(n):
        j = d * i
        t0 = _u(o0 + j)
        t1 = _u(o1 + j)
        t2 = _u(o2 + j)
        t3 = _u(o3 + j)
        a0 = ar[t0 * us]
        a1 = ar[t1 * us]
        a2 = ar[t2 * us]
        a3 = ar[t3 * us]
        k0 = a0 * k0 + a0 * ghr[t0]
        k1 = a1 * k1 + a1 * ghr[t1]
        k2 = a2 * k2 + a2 * ghr[t2]
        k3 = a3 * k3 + a3 * ghr[t3]
        p0 = p0 * a0
        p1 = p1 * a1
        p2 = p2 * a2
        p3 = p3 * a3
    return p0, k0, p1, k1, p2, k2, p3, k3


@jit
def _bwd_summary_tail(a, astep, arow, gh, c, s, n, m, desc, one, zero, p, x):
    if n > m:
        s2 = _rest(s, m, desc)
        q, y, q2, y2 = _bwd_summary2(a, astep, arow[c], arow[c], gh, c, c, s2, s2, n - m, desc, one, zero)
        return q * p, q * x + y
    return p, x


@jit
def _bwd_tail(a, astep, arow, h, h0, gh, g, ga, c, s, n, m, desc, L, zero, k, acc, with_ga):
    if n > m:
        s2 = _rest(s, m, desc)
        k, kk, r, rr = _bwd2(a, astep, arow[c], arow[c], h, h0[c], h0[c], gh, c, c, g, ga, k, k, s2, s2, n - m,
                             desc, L, zero, with_ga)
        return k, acc + r
    return k, acc


@jit(parallel=True)
def _bwd_chunked(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, desc, nchunk, window, itemsize, one, zero,
                 with_ga):
    C, L = g.shape
    carry = gfinal.copy()
    for c in range(C):
        gsum[c] = zero
    nitem = C * nchunk
    nquad = (nitem + 3) // 4
    P = np.empty(nitem + 3, g.dtype)
    S = np.empty(nitem + 3, g.dtype)
    start = np.empty(nitem + 3, g.dtype)
    part = np.empty(nitem + 3, g.dtype)
    nwin = (L + window - 1) // window
    for wi in range(nwin):
        w = nwin - 1 - wi if desc else wi
        w0 = w * window
        wl = min(window, L - w0)
        cl = _chunk_len(wl, nchunk, itemsize)
        for q in prange(nquad):
            fp1 = fp_enter()
            c0, s0, n0, c1, s1, n1, c2, s2, n2, c3, s3, n3, m = _quad_spans(q, nitem, nchunk, w0, wl, cl, desc)
            p0, x0, p1, x1, p2, x2, p3, x3 = _bwd_summary4(
                a[arow[c0]], astep, gh[c0],
                _first(s0, n0, m, desc), _first(s1, n1, m, desc), _first(s2, n2, m, desc), _first(s3, n3, m, desc),
                m, desc, one, zero,
            )
            i0 = 4 * q
            P[i0], S[i0] = _bwd_summary_tail(a, astep, arow, gh, c0, s0, n0, m, desc, one, zero, p0, x0)
            P[i0 + 1], S[i0 + 1] = _bwd_summary_tail(a, astep, arow, gh, c1, s1, n1, m, desc, one, zero, p1, x1)
            P[i0 + 2], S[i0 + 2] = _bwd_summary_tail(a, astep, arow, gh, c2, s2, n2, m, desc, one, zero, p2, x2)
            P[i0 + 3], S[i0 + 3] = _bwd_summary_tail(a, astep, arow, gh, c3, s3, n3, m, desc, one, zero, p3, x3)
            fp_exit(fp1)
        _combine_carries(P, S, carry, start, nchunk)
        for q in prange(nquad):
            fp1 = fp_enter()
            c0, s0, n0, c1, s1, n1, c2, s2, n2, c3, s3, n3, m = _quad_spans(q, nitem, nchunk, w0, wl, cl, desc)
            i0 = 4 * q
            k0, k1, k2, k3, e0, e1, e2, e3 = _bwd4(
                a[arow[c0]], astep, h[c0], h0[c0], gh[c0], g[c0], ga[c0], start[i0], start[i0 + 1], start[i0 + 2],
                start[i0 + 3],
                _first(s0, n0, m, desc), _first(s1, n1, m, desc), _first(s2, n2, m, desc), _first(s3, n3, m, desc),
                m, desc, L, zero, with_ga,
            )
            k0, part[i0] = _bwd_tail(a, astep, arow, h, h0, gh, g, ga, c0, s0, n0, m, desc, L, zero, k0, e0, with_ga)
            k1, part[i0 + 1] = _bwd_tail(a, astep, arow, h, h0, gh, g, ga, c1, s1, n1, m, desc, L, zero, k1, e1,
                                         with_ga)
            k2, part[i0 + 2] = _bwd_tail(a, astep, arow, h, h0, gh, g, ga, c2, s2, n2, m, desc, L, zero, k2, e2,
                                         with_ga)
            k3, part[i0 + 3] = _bwd_tail(a, astep, arow, h, h0, gh, g, ga, c3, s3, n3, m, desc, L, zero, k3, e3,
                                         with_ga)
            fp_exit(fp1)
        for c in range(C):
            acc = gsum[c]
            for j in range(nchunk):  # padded duplicates (index >= nitem) are not summed
                acc += part[c * nchunk + j]
            gsum[c] = acc
    for c in range(C):
        gh0[c] = carry[c]


# --------------------------------------------------------------------------- drivers


def choose_path(C: int, L: int, path: str = "auto") -> str:
    """The execution path for ``C`` channels of length ``L`` (see the module docstring)."""
    if path != "auto":
        if path not in PATHS:
            raise ValueError(f"linear_scan: unknown path {path!r}; expected one of {PATHS}")
        return path
    if C * L <= SERIAL_MAX:
        return "serial"
    if C < 2 * numba.get_num_threads() and L >= CHUNK_MIN_L:
        return "chunked"
    return "channels"


def _chunking(C: int, L: int, itemsize: int) -> tuple[int, int]:
    """(chunks per channel per window, window length) for the chunked path."""
    # Whole quads of neighbouring chunks (four chains), the same number per thread.
    T = numba.get_num_threads()
    nchunk = 4 * (T // math.gcd(max(C, 1), T))
    window = max(nchunk * 1024, WINDOW_BYTES // (2 * itemsize * max(C, 1)))
    return nchunk, min(window, max(L, 1))


def _slotting(C: int, L: int, itemsize: int, nslot: int = NSLOT) -> tuple[int, bool]:
    """(channel ranges, stagger?) for the channel path.

    One contiguous range per thread, but at least two channels per range. The
    staggered start costs a slot up to ``SET_SPAN`` bytes of idle steps, so it is
    used only when a slot has at least 8x that much work.
    """
    nitem = max(1, min(numba.get_num_threads(), C // 2))
    per_slot = -(-(C // nitem) // nslot) * L  # steps of one slot, about
    return nitem, per_slot * itemsize >= 8 * SET_SPAN


def _units(dtype: np.dtype) -> tuple[np.generic, np.generic]:
    """1 and 0 as scalars of ``dtype``.

    Typed kernel constants: a Python 0 would promote float32 arithmetic to float64.
    """
    return dtype.type(1), dtype.type(0)


def _writable(h0: np.ndarray) -> np.ndarray:
    """``h0`` as a writable array (a copy of the C values only where it is read-only).

    Numba types read-only arrays apart: a broadcast zero ``h0`` of one channel (contiguous, so
    ``ascontiguousarray`` keeps the read-only view) would compile every kernel a second time.
    """
    return h0 if h0.flags.writeable else h0.copy()


def _astep(a: np.ndarray) -> int:
    return 0 if a.shape[1] == 1 else 1


def scan_fwd(
    a: np.ndarray,
    arow: np.ndarray,
    b: np.ndarray,
    h0: np.ndarray,
    reverse: bool,
    path: str = "auto",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """All states ``(C, L)`` of the recurrence (see :func:`ssmcore.reference.scan.scan_fwd`).

    ``path`` forces ``"serial"``, ``"channels"`` or ``"chunked"`` (tests use it);
    ``out`` (C-contiguous ``(C, L)`` of b's dtype) receives the result if given, so
    benchmarks can time the kernel without the page faults of a fresh array.
    """
    # Layout is the launcher's business: the front door passes any strides (no-ops when contiguous).
    a, arow, b, h0 = (np.ascontiguousarray(x) for x in (a, arow, b, h0))
    h0 = _writable(h0)
    C, L = b.shape
    # DRAM-sized outputs come from recycled blocks (ssmcore/_outputs.py: no page faults)
    out = _outputs.empty((C, L), b.dtype) if out is None else out
    if C == 0 or L == 0:
        return out
    which = choose_path(C, L, path)
    astep = _astep(a)
    if which == "serial":
        _fwd_serial(a, astep, arow, b, h0, out, reverse)
    elif which == "channels":
        if not out.flags.c_contiguous:
            raise ValueError("scan_fwd: out must be C-contiguous (the channel path writes it through a flat view)")
        nitem, stagger = _slotting(C, L, b.itemsize)
        _fwd_channels(
            a.reshape(-1), astep, arow, b.reshape(-1), h0, out.reshape(-1), L, reverse, nitem, b.itemsize, stagger
        )
    else:
        nchunk, window = _chunking(C, L, b.itemsize)
        one, zero = _units(b.dtype)
        final = _fwd_chunked(a, astep, arow, b, h0, out, reverse, nchunk, window, b.itemsize, one, zero)
        bad = _nonfinite_channels(final)
        if bad.size:
            sub = np.empty((bad.size, L), dtype=out.dtype)
            _fwd_serial(a, astep, arow[bad], b[bad], h0[bad], sub, reverse)
            out[bad] = sub
    return out


def _nonfinite_channels(final: np.ndarray) -> np.ndarray:
    """Channels whose chunked result must be recomputed serially.

    The chunked paths combine chunk summaries, ``start = P * carry + S``; where a
    state is infinite or NaN that combination is not the sequential recurrence
    (an underflowed product P = 0 turns ``0 * inf`` into NaN where the loop keeps
    inf). A non-finite state stays non-finite for the rest of the scan, so a
    channel has one iff its final state is non-finite; those channels (rare) are
    rerun on the serial path, which is the reference's loop.
    """
    return np.flatnonzero(~np.isfinite(final))


def scan_bwd(
    a: np.ndarray,
    arow: np.ndarray,
    h: np.ndarray,
    h0: np.ndarray,
    gh: np.ndarray,
    gfinal: np.ndarray,
    reverse: bool,
    path: str = "auto",
    need_a: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Fused backward: ``(g, ga, gh0)`` in one pass over memory (see the reference).

    ``need_a=False`` returns ``ga = None`` and neither reads the states ``h``
    nor writes ``ga`` (3 memory streams instead of 5).
    """
    a, arow, h0, gh, gfinal = (np.ascontiguousarray(x) for x in (a, arow, h0, gh, gfinal))
    h0 = _writable(h0)
    if need_a:
        h = np.ascontiguousarray(h)
    C, L = gh.shape
    La = a.shape[1]
    g = _outputs.empty((C, L), gh.dtype)
    gh0 = gfinal.copy()
    if C == 0 or L == 0:
        return g, (np.zeros((C, La), dtype=gh.dtype) if need_a else None), gh0
    gsum = np.empty(C, dtype=gh.dtype)
    which = choose_path(C, L, path)
    # Without a's gradient the kernels never touch ga: give them an empty one.
    ga = _outputs.empty((C, La if need_a else 0), gh.dtype)
    astep = _astep(a)
    one, zero = _units(gh.dtype)
    desc = not reverse  # the adjoint runs against the forward's direction
    with_ga = bool(need_a)
    if which == "serial":
        _bwd_serial(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, desc, zero, with_ga)
    elif which == "channels":
        nitem, stagger = _slotting(C, L, gh.itemsize, NSLOT_BWD)
        a, h, gh = (np.ascontiguousarray(x) for x in (a, h, gh))  # flat views inside (no-ops when contiguous)
        _bwd_channels(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, desc, nitem, stagger, zero, with_ga)
    else:
        nchunk, window = _chunking(C, L, gh.itemsize)
        _bwd_chunked(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, desc, nchunk, window, gh.itemsize, one, zero,
                     with_ga)
        bad = _nonfinite_channels(gh0)  # the adjoint's final state (see _nonfinite_channels)
        if bad.size:
            sg, sga, sgh0, sgsum = np.empty((bad.size, L), g.dtype), ga[bad], gfinal[bad], gsum[bad]
            _bwd_serial(a, astep, arow[bad], h[bad], h0[bad], gh[bad], gfinal[bad], sg, sga, sgh0,
                        sgsum, desc, zero, with_ga)
            g[bad], gh0[bad], gsum[bad] = sg, sgh0, sgsum
            if with_ga:
                ga[bad] = sga
    if not need_a:
        return g, None, gh0
    if La == 1:
        ga[:, 0] = gsum  # the per-step products went to a scratch column; their sum is the gradient
    return g, ga, gh0
