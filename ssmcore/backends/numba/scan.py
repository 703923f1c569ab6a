"""Numba CPU kernels of the linear scan h_t = a_t h_{t-1} + b_t (forward and fused backward).

Same function names and signatures as :mod:`ssmcore.reference.scan`, which is the
specification; the layout contract (``a`` rows ``(Ra, La)`` with ``La`` in
``{1, L}``, row map ``arow``, ``b`` ``(C, L)`` C-contiguous, one dtype) is
documented there and established by :mod:`ssmcore.scan`.

Why the kernels look the way they do (measured facts in PLATFORM.md):

* One recurrence is one dependency chain: each step waits for the previous
  FMA (4 cycles for float32, about 8 for a complex multiply-add), so a plain
  loop per channel is latency-bound well below memory bandwidth. Every kernel
  therefore advances several **independent chains interleaved** in its inner
  loop: two channels in the channel paths, four time chunks in the chunked
  path. Only two channels: each chain streams three rows (a, b, out), rows of
  power-of-two length alias in the L1 cache, and four channel rows measured
  slower than two (chunk distances, in contrast, are chosen not to alias).
* Constant-in-time coefficients (``La == 1``) are read with a time step of 0
  (``a[r, t * astep]``), so they are never materialised to length L.
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
  - ``"channels"`` otherwise: ``prange`` over channel pairs.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from ._jit import jit

# Kernel indices go through _u: Numba adds a negative-index wrap-around check to
# every signed index it cannot prove non-negative (3 extra instructions per load,
# and register spills with four chains); unsigned indices have none.
_u = np.uint64

__all__ = ["CHUNK_MIN_L", "SERIAL_MAX", "WINDOW_BYTES", "choose_path", "scan_bwd", "scan_fwd"]

SERIAL_MAX = 1 << 15  # elements: below this, one thread (a parallel region costs ~5-10 us)
CHUNK_MIN_L = 1 << 14  # time-chunking pays only for long series
WINDOW_BYTES = 1 << 26  # bytes of (a, b) per window of the chunked path (see below)
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
    _fwd2(a, astep, arow[c0], arow[c1], b, c0, c1, out, h0[c0], h0[c1], 0, 0, L, desc)


@jit
def _fwd_serial(a, astep, arow, b, h0, out, desc):
    for g in range((out.shape[0] + 1) // 2):
        _fwd_pair_of_channels(a, astep, arow, b, h0, out, g, desc)


@jit(parallel=True)
def _fwd_channels(a, astep, arow, b, h0, out, desc):
    for g in prange((out.shape[0] + 1) // 2):
        _fwd_pair_of_channels(a, astep, arow, b, h0, out, g, desc)


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
    """Chunk length: whole cache lines, and not a multiple of 4 KiB (two chunks
    scanned together would then map to the same L1 sets)."""
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
        # combine: true start state of every chunk, in scan order (no division by products)
        _combine_carries(P, S, carry, start, nchunk)
        # pass 2: rescan every chunk from its true start, writing the output
        for q in prange(nquad):
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
    return carry


# --------------------------------------------------------------------------- backward


@jit
def _bwd2(a, astep, ra0, ra1, h, hz0, hz1, gh, c0, c1, g, ga, k0, k1, s0, s1, n, desc, L, zero):
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
    # the last step of each lane, where the previous state may be h0
    v0 = o0 + d * (n - 1)
    v1 = o1 + d * (n - 1)
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
def _bwd_pair_of_channels(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, pair, desc, zero):
    C, L = g.shape
    c0 = 2 * pair
    c1 = min(c0 + 1, C - 1)
    k0, k1, s0, s1 = _bwd2(
        a, astep, arow[c0], arow[c1], h, h0[c0], h0[c1], gh, c0, c1, g, ga, gfinal[c0], gfinal[c1], 0, 0, L, desc, L, zero
    )
    gh0[c0] = k0
    gh0[c1] = k1
    gsum[c0] = s0
    gsum[c1] = s1


@jit
def _bwd_serial(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, desc, zero):
    for pair in range((g.shape[0] + 1) // 2):
        _bwd_pair_of_channels(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, pair, desc, zero)


@jit(parallel=True)
def _bwd_channels(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, desc, zero):
    for pair in prange((g.shape[0] + 1) // 2):
        _bwd_pair_of_channels(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, pair, desc, zero)


@jit
def _bwd4(ar, astep, hr, hz, ghr, gr, gar, k0, k1, k2, k3, s0, s1, s2, s3, n, desc, L, zero):
    """Four interleaved lanes of :func:`_bwd2` over chunks of one row (1-D views);
    ``hz`` is the row's h0. Returns (k0..k3, sum0..sum3)."""
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
def _bwd_tail(a, astep, arow, h, h0, gh, g, ga, c, s, n, m, desc, L, zero, k, acc):
    if n > m:
        s2 = _rest(s, m, desc)
        k, kk, r, rr = _bwd2(a, astep, arow[c], arow[c], h, h0[c], h0[c], gh, c, c, g, ga, k, k, s2, s2, n - m,
                             desc, L, zero)
        return k, acc + r
    return k, acc


@jit(parallel=True)
def _bwd_chunked(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, desc, nchunk, window, itemsize, one, zero):
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
        _combine_carries(P, S, carry, start, nchunk)
        for q in prange(nquad):
            c0, s0, n0, c1, s1, n1, c2, s2, n2, c3, s3, n3, m = _quad_spans(q, nitem, nchunk, w0, wl, cl, desc)
            i0 = 4 * q
            k0, k1, k2, k3, e0, e1, e2, e3 = _bwd4(
                a[arow[c0]], astep, h[c0], h0[c0], gh[c0], g[c0], ga[c0], start[i0], start[i0 + 1], start[i0 + 2],
                start[i0 + 3],
                _first(s0, n0, m, desc), _first(s1, n1, m, desc), _first(s2, n2, m, desc), _first(s3, n3, m, desc),
                m, desc, L, zero,
            )
            k0, part[i0] = _bwd_tail(a, astep, arow, h, h0, gh, g, ga, c0, s0, n0, m, desc, L, zero, k0, e0)
            k1, part[i0 + 1] = _bwd_tail(a, astep, arow, h, h0, gh, g, ga, c1, s1, n1, m, desc, L, zero, k1, e1)
            k2, part[i0 + 2] = _bwd_tail(a, astep, arow, h, h0, gh, g, ga, c2, s2, n2, m, desc, L, zero, k2, e2)
            k3, part[i0 + 3] = _bwd_tail(a, astep, arow, h, h0, gh, g, ga, c3, s3, n3, m, desc, L, zero, k3, e3)
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


def _units(dtype: np.dtype) -> tuple[np.generic, np.generic]:
    """1 and 0 as scalars of ``dtype`` (typed kernel constants: a Python 0 would
    promote float32 arithmetic to float64)."""
    return dtype.type(1), dtype.type(0)


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
    C, L = b.shape
    out = np.empty((C, L), dtype=b.dtype) if out is None else out
    if C == 0 or L == 0:
        return out
    which = choose_path(C, L, path)
    astep = _astep(a)
    if which == "serial":
        _fwd_serial(a, astep, arow, b, h0, out, reverse)
    elif which == "channels":
        _fwd_channels(a, astep, arow, b, h0, out, reverse)
    else:
        nchunk, window = _chunking(C, L, b.itemsize)
        one, zero = _units(b.dtype)
        _fwd_chunked(a, astep, arow, b, h0, out, reverse, nchunk, window, b.itemsize, one, zero)
    return out


def scan_bwd(
    a: np.ndarray,
    arow: np.ndarray,
    h: np.ndarray,
    h0: np.ndarray,
    gh: np.ndarray,
    gfinal: np.ndarray,
    reverse: bool,
    path: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fused backward: ``(g, ga, gh0)`` in one pass over memory (see the reference)."""
    C, L = gh.shape
    La = a.shape[1]
    g = np.empty((C, L), dtype=gh.dtype)
    ga = np.empty((C, La), dtype=gh.dtype)
    gh0 = gfinal.copy()
    if C == 0 or L == 0:
        ga[...] = 0
        return g, ga, gh0
    gsum = np.empty(C, dtype=gh.dtype)
    which = choose_path(C, L, path)
    astep = _astep(a)
    one, zero = _units(gh.dtype)
    desc = not reverse  # the adjoint runs against the forward's direction
    if which == "serial":
        _bwd_serial(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, desc, zero)
    elif which == "channels":
        _bwd_channels(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, desc, zero)
    else:
        nchunk, window = _chunking(C, L, gh.itemsize)
        _bwd_chunked(a, astep, arow, h, h0, gh, gfinal, g, ga, gh0, gsum, desc, nchunk, window, gh.itemsize, one, zero)
    if La == 1:
        ga[:, 0] = gsum  # the per-step products went to a scratch column; their sum is the gradient
    return g, ga, gh0
