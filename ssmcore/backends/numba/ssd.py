"""Numba CPU kernels of Mamba-2 SSD: chunked forward, chunk-recomputing backward.

Same functions and arguments as the specification ``ssmcore.reference.ssd``
(see there for the maths and the argument conventions). Inputs arrive
validated and all of one float dtype (float32 or float64), which is also the
accumulation dtype. The launchers :func:`ssd_forward` / :func:`ssd_backward`
own the rest: C-contiguity (``np.ascontiguousarray``, a no-op for contiguous
input), zeros for an absent ``D`` / ``h0`` / ``gfinal`` and no resets for an
absent ``reset``, every output allocation and the serial/parallel choice.

Forward (chunked, ANCHORS 1.5): one work item per (batch, head) (``prange``
above a work threshold); inside, chunks run in order. Per chunk: the per-step
decays ``alpha_t = exp(dt_t A)``; the intra-chunk weights
``(C_i . B_j) alpha_{j+1} ... alpha_i`` as running products (each factor <= 1
for A <= 0: nothing overflows, no differences of large cumulative sums); the
masked quadratic form gives ``Y_diag``, the carried state gives ``Y_off`` and
then absorbs the chunk. Only per-chunk buffers ((Q, P) inputs, Q weights) and
the (N, P) carried state live in a work item; the states entering every chunk
are written out for the backward.

Backward: per (batch, head), chunks in reverse; the states inside a chunk are
recomputed from the stored chunk-entry state into a (chunk + 1, P, N) buffer, then
the reverse-time adjoint runs over the chunk. Gradients of the group-shared
B and C are accumulated per head and summed over the heads of a group afterwards
(no write races between work items).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._fpenv import fp_enter, fp_exit
from ._jit import FASTMATH, jit

__all__ = ["ssd_backward", "ssd_forward"]

# Re-association lets LLVM vectorise the dot products over N and P (the kernel's
# inner reductions). It does not remove NaN/inf handling (that is 'nnan'/'ninf').
_FM = set(FASTMATH) | {"reassoc"}


@jit(fastmath=_FM)
def _forward_one(b, h, x, dt, A, B, C, D, h0, reset, Q, zero, y, states):  # pragma: no cover - compiled
    """Forward of one (batch, head): chunks in order, the carried state in ST (N, P)."""
    L = x.shape[1]
    P = x.shape[3]
    N = B.shape[3]
    g = h // (x.shape[2] // B.shape[2])
    nc = (L + Q - 1) // Q
    a_h = A[h]
    one = np.ones(1, dtype=x.dtype)[0]  # typed 1 (a Python 1 would promote float32 to float64)
    # per-chunk buffers; inner loops run over contiguous rows
    alpha = np.empty(Q, dtype=x.dtype)  # exp(dt_t A): one step's decay
    dec0 = np.empty(Q, dtype=x.dtype)  # decay from the chunk start through step i
    first = np.empty(Q, dtype=np.int64)  # last reset at or before step i in the chunk, -1 if none
    xdt = np.empty((Q, P), dtype=x.dtype)  # dt_s x_s
    w = np.empty(Q, dtype=x.dtype)  # one output row's weights (C_i . B_s) exp(a_{s+1} + ... + a_i)
    yrow = np.empty(P, dtype=x.dtype)
    ST = np.empty((N, P), dtype=x.dtype)  # state entering the chunk, transposed
    for p in range(P):
        for n in range(N):
            ST[n, p] = h0[b, h, p, n]
    for c in range(nc):
        for p in range(P):
            for n in range(N):
                states[b, h, c, p, n] = ST[n, p]
        t0 = c * Q
        q = min(Q, L - t0)
        run = one
        for i in range(q):
            t = t0 + i
            d = dt[b, t, h]
            alpha[i] = np.exp(d * a_h)
            run *= alpha[i]
            dec0[i] = run
            if reset[b, t]:
                first[i] = i
            elif i == 0:
                first[i] = -1
            else:
                first[i] = first[i - 1]
            for p in range(P):
                xdt[i, p] = d * x[b, t, h, p]
        for i in range(q):
            t = t0 + i
            j0 = max(first[i], 0)
            for j in range(j0, i + 1):
                cb = zero
                for n in range(N):
                    cb += C[b, t, g, n] * B[b, t0 + j, g, n]
                w[j] = cb
            # decay weights as running products of per-step decays (each <= 1 for
            # A <= 0): no differences of large cumulative sums, no overflow
            dec = one
            for j in range(i, j0 - 1, -1):
                w[j] *= dec
                dec *= alpha[j]
            for p in range(P):
                yrow[p] = D[h, p] * x[b, t, h, p]
            if first[i] < 0:  # the carried state reaches step i (no reset since the chunk start)
                e = dec0[i]
                for n in range(N):
                    cn = e * C[b, t, g, n]
                    for p in range(P):
                        yrow[p] += cn * ST[n, p]
            for j in range(j0, i + 1):
                wj = w[j]
                for p in range(P):
                    yrow[p] += wj * xdt[j, p]
            for p in range(P):
                y[b, t, h, p] = yrow[p]
        # state passing: decay the carried state over the chunk (or drop it after a
        # reset), then add the chunk's own inputs decayed to the chunk end
        last = q - 1
        if first[last] < 0:
            e = dec0[last]
            for n in range(N):
                for p in range(P):
                    ST[n, p] *= e
        else:
            for n in range(N):
                for p in range(P):
                    ST[n, p] = zero
        dec = one
        for j in range(last, max(first[last], 0) - 1, -1):
            for n in range(N):
                bn = dec * B[b, t0 + j, g, n]
                for p in range(P):
                    ST[n, p] += bn * xdt[j, p]
            dec *= alpha[j]
    for p in range(P):
        for n in range(N):
            states[b, h, nc, p, n] = ST[n, p]
    if not _all_finite(b, h, y, states):
        _forward_sequential(b, h, x, dt, A, B, C, D, h0, reset, Q, zero, y, states)


@jit(fastmath=_FM)
def _all_finite(b, h, y, states):  # pragma: no cover - compiled
    """Whether one (batch, head)'s outputs and chunk states are all finite."""
    for t in range(y.shape[1]):
        for p in range(y.shape[3]):
            if not np.isfinite(y[b, t, h, p]):
                return False
    for c in range(states.shape[2]):
        for p in range(states.shape[3]):
            for n in range(states.shape[4]):
                if not np.isfinite(states[b, h, c, p, n]):
                    return False
    return True


@jit(fastmath=_FM)
def _forward_sequential(b, h, x, dt, A, B, C, D, h0, reset, Q, zero, y, states):  # pragma: no cover - compiled
    """The reference's step-by-step recurrence for one (batch, head), overwriting its outputs.

    Run only where the chunked form produced a non-finite value: the chunked
    decomposition ``C_t . h_t = e C_t . h_entry + sum_j (C_t . B_j) w_j (dt_j x_j)``
    regroups the products, so where an input is infinite it meets zeros (a zero
    entry state, an underflowed decay, a cancelling ``C . B``) that the
    sequential form never multiplies it by: ``0 * inf`` becomes NaN where the
    reference keeps inf (or the reverse). Here every state entry is
    ``exp(dt_t A) h[p, n] + dt_t (x_t[p] B_t[n])`` and every output
    ``sum_n h[p, n] C_t[n] + D[p] x_t[p]``, the same IEEE operations as the
    reference, so the inf/NaN pattern is the reference's. A non-finite value
    never becomes finite again through a chunk, so finite outputs need no rerun.
    """
    L = x.shape[1]
    P = x.shape[3]
    N = B.shape[3]
    g = h // (x.shape[2] // B.shape[2])
    a_h = A[h]
    S = np.empty((P, N), dtype=x.dtype)
    for p in range(P):
        for n in range(N):
            S[p, n] = h0[b, h, p, n]
    for t in range(L):
        if t % Q == 0:
            for p in range(P):
                for n in range(N):
                    states[b, h, t // Q, p, n] = S[p, n]
        d = dt[b, t, h]
        e = np.exp(d * a_h)
        for p in range(P):
            xp_ = x[b, t, h, p]
            acc = zero
            for n in range(N):
                # a reset replaces the state (multiplying by 0 would turn inf into NaN)
                prev = zero if reset[b, t] else e * S[p, n]
                s_ = prev + d * (xp_ * B[b, t, g, n])
                S[p, n] = s_
                acc += s_ * C[b, t, g, n]
            y[b, t, h, p] = acc + D[h, p] * xp_
    for p in range(P):
        for n in range(N):
            states[b, h, (L + Q - 1) // Q, p, n] = S[p, n]


@jit(fastmath=_FM)
def _backward_one(b, h, x, dt, A, B, C, D, reset, states, gy, gfinal, Q, zero,
                  gx, gdt, gA_bh, gB_h, gC_h, gD_bh, gh0):  # pragma: no cover - compiled
    """Backward of one (batch, head): chunks in reverse, states recomputed per chunk."""
    L = x.shape[1]
    P = x.shape[3]
    N = B.shape[3]
    g = h // (x.shape[2] // B.shape[2])
    nc = (L + Q - 1) // Q
    a_h = A[h]
    one = np.ones(1, dtype=x.dtype)[0]
    hs = np.empty((Q + 1, P, N), dtype=x.dtype)  # hs[0]: state entering the chunk; hs[i + 1] = h_{t0 + i}
    adj = np.empty((P, N), dtype=x.dtype)  # adjoint state, times `pend` (see below)
    gu = np.empty(P, dtype=x.dtype)
    gBrow = np.empty(N, dtype=x.dtype)  # this step's gradient rows, summed over p
    gCrow = np.empty(N, dtype=x.dtype)
    gD_acc = np.zeros(P, dtype=x.dtype)
    gA_acc = zero
    for p in range(P):
        for n in range(N):
            adj[p, n] = gfinal[b, h, p, n]
    # The decay exp(dt_{t+1} A) of the adjoint is applied lazily inside the next
    # step's update (one pass over the (P, N) state per step instead of two).
    pend = one
    for c in range(nc - 1, -1, -1):
        t0 = c * Q
        q = min(Q, L - t0)
        # recompute h_t for t in the chunk from the stored chunk-entry state
        for p in range(P):
            for n in range(N):
                hs[0, p, n] = states[b, h, c, p, n]
        for i in range(q):
            t = t0 + i
            d = dt[b, t, h]
            e = zero if reset[b, t] else np.exp(d * a_h)
            for p in range(P):
                u = d * x[b, t, h, p]
                if reset[b, t]:  # the state is replaced, not decayed (keeps inf/NaN out)
                    for n in range(N):
                        hs[i + 1, p, n] = u * B[b, t, g, n]
                else:
                    for n in range(N):
                        hs[i + 1, p, n] = e * hs[i, p, n] + u * B[b, t, g, n]
        # reverse-time adjoint over the chunk: g_t = gy_t C_t^T + exp(a_{t+1}) g_{t+1}
        for i in range(q - 1, -1, -1):
            t = t0 + i
            d = dt[b, t, h]
            for n in range(N):
                gBrow[n] = zero
                gCrow[n] = zero
            gal = zero  # <g_t, h_{t-1}>
            for p in range(P):
                gyp = gy[b, t, h, p]
                up = d * x[b, t, h, p]
                acc = zero
                for n in range(N):
                    a_ = pend * adj[p, n] + gyp * C[b, t, g, n]
                    adj[p, n] = a_
                    acc += a_ * B[b, t, g, n]
                    gal += a_ * hs[i, p, n]
                    gCrow[n] += gyp * hs[i + 1, p, n]
                    gBrow[n] += up * a_
                gu[p] = acc
            for n in range(N):
                gB_h[b, t, h, n] = gBrow[n]
                gC_h[b, t, h, n] = gCrow[n]
            gdx = zero
            for p in range(P):
                gdx += gu[p] * x[b, t, h, p]
                gx[b, t, h, p] = d * gu[p] + D[h, p] * gy[b, t, h, p]
                gD_acc[p] += gy[b, t, h, p] * x[b, t, h, p]
            if reset[b, t]:  # h_{t-1} did not reach h_t: no decay gradient, adjoint stops here
                ga = zero
                pend = one
                for p in range(P):
                    for n in range(N):
                        adj[p, n] = zero
            else:
                pend = np.exp(d * a_h)
                ga = gal * pend
            gdt[b, t, h] = ga * a_h + gdx
            gA_acc += ga * d
    for p in range(P):
        gD_bh[b, h, p] = gD_acc[p]
        for n in range(N):
            gh0[b, h, p, n] = pend * adj[p, n]
    gA_bh[b, h] = gA_acc


# Drivers: one work item per (batch, head). The parallel one pays a thread
# fork/join per call, which costs more than small problems themselves (and much
# more on a loaded machine), so small calls run the sequential driver.
PARALLEL_MIN_WORK = 1 << 21  # batch * heads * L * P * N below this: one thread


@jit(parallel=True, fastmath=_FM)
def _forward_parallel(x, dt, A, B, C, D, h0, reset, Q, zero, y, states):  # pragma: no cover - compiled
    nb, H = x.shape[0], x.shape[2]
    for item in prange(nb * H):
        fp1 = fp_enter()
        _forward_one(item // H, item % H, x, dt, A, B, C, D, h0, reset, Q, zero, y, states)
        fp_exit(fp1)


@jit(fastmath=_FM)
def _forward_serial(x, dt, A, B, C, D, h0, reset, Q, zero, y, states):  # pragma: no cover - compiled
    fp0 = fp_enter()
    nb, H = x.shape[0], x.shape[2]
    for item in range(nb * H):
        _forward_one(item // H, item % H, x, dt, A, B, C, D, h0, reset, Q, zero, y, states)
    fp_exit(fp0)


@jit(parallel=True, fastmath=_FM)
def _backward_parallel(x, dt, A, B, C, D, reset, states, gy, gfinal, Q, zero,
                       gx, gdt, gA_bh, gB_h, gC_h, gD_bh, gh0):  # pragma: no cover - compiled
    nb, H = x.shape[0], x.shape[2]
    for item in prange(nb * H):
        fp1 = fp_enter()
        _backward_one(item // H, item % H, x, dt, A, B, C, D, reset, states, gy, gfinal, Q, zero,
                      gx, gdt, gA_bh, gB_h, gC_h, gD_bh, gh0)
        fp_exit(fp1)


@jit(fastmath=_FM)
def _backward_serial(x, dt, A, B, C, D, reset, states, gy, gfinal, Q, zero,
                     gx, gdt, gA_bh, gB_h, gC_h, gD_bh, gh0):  # pragma: no cover - compiled
    fp0 = fp_enter()
    nb, H = x.shape[0], x.shape[2]
    for item in range(nb * H):
        _backward_one(item // H, item % H, x, dt, A, B, C, D, reset, states, gy, gfinal, Q, zero,
                      gx, gdt, gA_bh, gB_h, gC_h, gD_bh, gh0)
    fp_exit(fp0)


def _parallel(x, N):
    nb, L, H, P = x.shape
    return nb * H > 1 and nb * H * L * P * max(N, 1) >= PARALLEL_MIN_WORK


def _inputs(x, dt, A, B, C, D, reset):
    c = np.ascontiguousarray
    x, dt, A, B, C = c(x), c(dt), c(A), c(B), c(C)
    nb, L, H, P = x.shape
    # fresh and writable when absent: one kernel type whatever the caller's flags
    D = np.zeros((H, P), dtype=x.dtype) if D is None else c(D)
    reset = np.zeros((nb, L), dtype=np.bool_) if reset is None else c(reset, dtype=np.bool_)
    return x, dt, A, B, C, D, reset


def ssd_forward(x, dt, A, B, C, D, h0, reset, chunk_size):
    """Chunked SSD forward; returns ``(y, states)`` (see ``ssmcore.reference.ssd``)."""
    x, dt, A, B, C, D, reset = _inputs(x, dt, A, B, C, D, reset)
    nb, L, H, P = x.shape
    N = B.shape[3]
    h0 = np.zeros((nb, H, P, N), dtype=x.dtype) if h0 is None else np.ascontiguousarray(h0)
    Q = int(chunk_size)
    nc = -(-L // Q)
    y = np.empty_like(x)
    states = np.empty((nb, H, nc + 1, P, N), dtype=x.dtype)
    if L == 0:
        states[:, :, 0] = h0
        return y, states
    kernel = _forward_parallel if _parallel(x, N) else _forward_serial
    kernel(x, dt, A, B, C, D, h0, reset, Q, x.dtype.type(0), y, states)
    return y, states


def ssd_backward(x, dt, A, B, C, D, reset, states, gy, gfinal, chunk_size):
    """Backward of :func:`ssd_forward`; returns ``(gx, gdt, gA, gB, gC, gD, gh0)``."""
    x, dt, A, B, C, D, reset = _inputs(x, dt, A, B, C, D, reset)
    nb, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    Q = int(chunk_size)
    dtype = x.dtype
    states = np.ascontiguousarray(states)
    gy = np.ascontiguousarray(gy)
    gfinal = np.zeros((nb, H, P, N), dtype=dtype) if gfinal is None else np.ascontiguousarray(gfinal)
    gx = np.empty_like(x)
    gdt = np.empty_like(dt)
    gA_bh = np.zeros((nb, H), dtype=dtype)
    gB_h = np.empty((nb, L, H, N), dtype=dtype)
    gC_h = np.empty((nb, L, H, N), dtype=dtype)
    gD_bh = np.zeros((nb, H, P), dtype=dtype)
    gh0 = np.array(gfinal, dtype=dtype, copy=True)
    if L > 0:
        kernel = _backward_parallel if _parallel(x, N) else _backward_serial
        kernel(x, dt, A, B, C, D, reset, states, gy, gfinal, Q, dtype.type(0),
               gx, gdt, gA_bh, gB_h, gC_h, gD_bh, gh0)
    # heads of one group share B and C: sum their per-head gradients
    gB = gB_h.reshape(nb, L, G, H // G, N).sum(axis=3)
    gC = gC_h.reshape(nb, L, G, H // G, N).sum(axis=3)
    return gx, gdt, gA_bh.sum(axis=0), gB, gC, gD_bh.sum(axis=0), gh0
