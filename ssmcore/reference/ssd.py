"""NumPy specification of Mamba-2 SSD (state space duality), forward and backward.

The kernels here take inputs that the front door :func:`ssmcore._ssd.ssd` has
already validated and normalised:

* ``x`` (batch, L, H, P), ``dt`` (batch, L, H) -- the *processed* step
  (bias, softplus and clamp already applied), ``A`` (H,),
  ``B``, ``C`` (batch, L, G, N) with head h reading group ``h // (H // G)``,
  ``D`` (H, P) or None (no skip connection), ``h0`` (batch, H, P, N) or None
  (zeros), ``reset`` (batch, L) bool or None (no resets): the state is
  *replaced* (not decayed) at step t when ``reset[b, t]`` (derived from
  ``seq_idx``); the backward's ``gfinal`` is None for a zero cotangent.

The recurrence, per batch b and head h (state h_t of shape (P, N))::

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T      (h_{t-1} := 0 where reset_t)
    y_t = h_t C_t + D * x_t

:func:`ssd_forward` and :func:`ssd_backward` are float64 loops over time that
read like these formulas; the Numba module ``ssmcore.backends.numba.ssd`` exposes
the same two functions (chunked and fast). :func:`ssd_chunked` is the chunked
(state-space-dual) algorithm written with NumPy ``einsum``; it is tested against
the loop and serves as the NumPy baseline in the benchmarks.

``states`` (batch, H, nchunks + 1, P, N) holds the state entering every chunk of
``chunk_size`` steps and, last, the final state; the backward recomputes the
states inside a chunk from it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ssd_backward", "ssd_chunked", "ssd_forward"]

#: Not part of the kernel contract: the chunked einsum form is a second specification
#: (tests, benchmarks and docs compare against it); backends need not provide it.
REFERENCE_ONLY = ("ssd_chunked",)


def _num_chunks(L: int, chunk_size: int) -> int:
    return -(-L // chunk_size)


def _defaults(x, B, D, h0, reset):
    """Zeros for the optional D and h0, no resets for an absent ``reset``."""
    nb, L, H, P = x.shape
    N = B.shape[3]
    D = np.zeros((H, P)) if D is None else D
    h0 = np.zeros((nb, H, P, N)) if h0 is None else h0
    reset = np.zeros((nb, L), dtype=bool) if reset is None else np.asarray(reset, dtype=bool)
    return D, h0, reset


def ssd_forward(x, dt, A, B, C, D, h0, reset, chunk_size):
    """Sequential SSD recurrence; returns ``(y, states)`` in ``x.dtype``."""
    out_dtype = x.dtype
    D, h0, reset = _defaults(x, B, D, h0, reset)
    x, dt, A, B, C, D, h0 = (np.asarray(a, dtype=np.float64) for a in (x, dt, A, B, C, D, h0))
    nb, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    heads_per_group = H // G
    nc = _num_chunks(L, chunk_size)
    y = np.empty((nb, L, H, P))
    states = np.empty((nb, H, nc + 1, P, N))
    for b in range(nb):
        for h in range(H):
            g = h // heads_per_group
            state = h0[b, h].copy()
            for t in range(L):
                if t % chunk_size == 0:
                    states[b, h, t // chunk_size] = state
                if reset[b, t]:
                    # A new packed sequence starts: drop the old state (do not multiply
                    # it by 0, which would turn an inf state into NaN).
                    state = np.zeros((P, N))
                else:
                    state = np.exp(dt[b, t, h] * A[h]) * state
                state = state + dt[b, t, h] * np.outer(x[b, t, h], B[b, t, g])
                y[b, t, h] = state @ C[b, t, g] + D[h] * x[b, t, h]
            states[b, h, nc] = state
    return y.astype(out_dtype), states.astype(out_dtype)


def ssd_backward(x, dt, A, B, C, D, reset, states, gy, gfinal, chunk_size):
    """Reverse-time adjoint of :func:`ssd_forward`.

    With gy the cotangent of y and gfinal that of the final state, the adjoint
    state g_t (P, N) runs backwards::

        g_t = gy_t C_t^T + exp(dt_{t+1} A) g_{t+1}     (g_{L-1} = gy_{L-1} C_{L-1}^T + gfinal)
        gC_t = h_t^T gy_t,  gB_t = g_t^T (dt_t x_t),  gx_t = dt_t g_t B_t + D gy_t
        ga_t = exp(a_t) <g_t, h_{t-1}>,  gdt_t = A ga_t + x_t . (g_t B_t),  gA = sum_t dt_t ga_t
        gD = sum_t gy_t x_t,  gh0 = exp(a_0) g_0

    Returns ``(gx, gdt, gA (H,), gB, gC (batch, L, G, N), gD (H, P), gh0)`` in
    ``x.dtype``; gB and gC are summed over the heads of each group.
    """
    out_dtype = x.dtype
    D, _, reset = _defaults(x, B, D, None, reset)
    if gfinal is None:
        gfinal = np.zeros(states[:, :, -1].shape)
    x, dt, A, B, C, D, states, gy, gfinal = (
        np.asarray(a, dtype=np.float64) for a in (x, dt, A, B, C, D, states, gy, gfinal)
    )
    nb, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    heads_per_group = H // G
    gx = np.zeros_like(x)
    gdt = np.zeros_like(dt)
    gA = np.zeros(H)
    gB = np.zeros_like(B)
    gC = np.zeros_like(C)
    gD = np.zeros((H, P))
    gh0 = np.zeros((nb, H, P, N))
    for b in range(nb):
        for h in range(H):
            g = h // heads_per_group
            # Recompute every state h_{-1} .. h_{L-1} (readability over memory here).
            hs = np.empty((L + 1, P, N))
            hs[0] = states[b, h, 0]
            for t in range(L):
                prev = np.zeros((P, N)) if reset[b, t] else np.exp(dt[b, t, h] * A[h]) * hs[t]
                hs[t + 1] = prev + dt[b, t, h] * np.outer(x[b, t, h], B[b, t, g])
            adj = gfinal[b, h].copy()
            for t in range(L - 1, -1, -1):
                adj = adj + np.outer(gy[b, t, h], C[b, t, g])
                gC[b, t, g] += gy[b, t, h] @ hs[t + 1]
                gu = adj @ B[b, t, g]
                gB[b, t, g] += (dt[b, t, h] * x[b, t, h]) @ adj
                if reset[b, t]:
                    ga, decay = 0.0, 0.0
                else:
                    decay = np.exp(dt[b, t, h] * A[h])
                    ga = decay * np.sum(adj * hs[t])
                gdt[b, t, h] = ga * A[h] + gu @ x[b, t, h]
                gA[h] += ga * dt[b, t, h]
                gx[b, t, h] = dt[b, t, h] * gu + D[h] * gy[b, t, h]
                gD[h] += gy[b, t, h] * x[b, t, h]
                adj = np.zeros((P, N)) if reset[b, t] else decay * adj
            gh0[b, h] = adj
    return tuple(a.astype(out_dtype) for a in (gx, gdt, gA, gB, gC, gD, gh0))


def _segsum(a: np.ndarray) -> np.ndarray:
    """Stable segment sums: ``out[..., l, s] = sum_{s < i <= l} a[..., i]`` for l >= s, else -inf.

    Built by a cumulative sum over a masked, repeated matrix (as ``ssd_minimal``'s
    ``segsum``) rather than as ``cumsum[l] - cumsum[s]``, so no large cumulative
    sums are subtracted; every entry is a sum of the a's between s and l only.
    """
    Q = a.shape[-1]
    rep = np.repeat(a[..., :, None], Q, axis=-1)  # rep[..., i, s] = a_i
    rep = np.where(np.tril(np.ones((Q, Q), dtype=bool), k=-1), rep, 0.0)  # keep i > s
    out = np.cumsum(rep, axis=-2)  # sum over s < i <= l
    return np.where(np.tril(np.ones((Q, Q), dtype=bool)), out, -np.inf)


def ssd_chunked(x, dt, A, B, C, D, h0, reset, chunk_size):
    """The chunked SSD algorithm in NumPy ``einsum`` form; returns ``(y, states)``.

    Chunk c covers steps [cQ, cQ + Q) (the last chunk is zero-padded: padded
    steps have dt = 0, so they neither decay nor feed the state). With
    ``seg[l]`` the number of resets in the chunk up to step l:

    1. intra-chunk: ``Y_diag[l] = sum_{s <= l, seg[s] = seg[l]} (C_l . B_s) exp(segsum[l, s]) dt_s x_s``
    2. chunk end states: ``S_c = sum_{seg[s] = seg[Q-1]} exp(segsum[Q-1, s]) dt_s x_s B_s^T``
    3. state passing: ``H_{c+1} = exp(sum_chunk a) H_c + S_c`` (``H_c`` dropped if the chunk resets)
    4. inter-chunk output: ``Y_off[l] = [seg[l] = 0] exp(sum_{i <= l} a_i) H_c C_l``
    5. ``y = Y_diag + Y_off + D x``.
    """
    out_dtype = x.dtype
    D, h0, reset = _defaults(x, B, D, h0, reset)
    x, dt, A, B, C, D, h0 = (np.asarray(a, dtype=np.float64) for a in (x, dt, A, B, C, D, h0))
    nb, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    Q = int(chunk_size)
    nc = _num_chunks(L, Q)
    pad = nc * Q - L
    hpg = H // G

    def chunks(arr):  # (b, L, ...) -> (b, nc, Q, ...), zero-padded in time
        widths = [(0, 0), (0, pad)] + [(0, 0)] * (arr.ndim - 2)
        arr = np.pad(arr, widths)
        return arr.reshape(nb, nc, Q, *arr.shape[2:])

    Xc = chunks(x * dt[..., None])  # (b, c, l, h, p)
    ac = chunks(dt * A)  # (b, c, l, h)
    Bc = chunks(np.repeat(B, hpg, axis=2))  # (b, c, l, h, n)
    Cc = chunks(np.repeat(C, hpg, axis=2))
    seg = np.cumsum(chunks(np.asarray(reset, dtype=np.int64)), axis=2)  # (b, c, l)

    a_hl = np.moveaxis(ac, 3, 2)  # (b, c, h, l)
    same_seg = seg[:, :, :, None] == seg[:, :, None, :]  # (b, c, l, s)
    decay = np.exp(_segsum(a_hl)) * same_seg[:, :, None]  # (b, c, h, l, s)
    CB = np.einsum("bclhn,bcshn->bchls", Cc, Bc)
    y_diag = np.einsum("bchls,bcshp->bclhp", CB * decay, Xc)

    acs = np.cumsum(a_hl, axis=-1)  # (b, c, h, l)
    last_seg = seg[:, :, -1:]  # (b, c, 1)
    to_end = decay[..., -1, :] * (seg == last_seg)[:, :, None]  # exp(segsum[Q-1, s]), (b, c, h, s)
    S = np.einsum("bchs,bcshp,bcshn->bchpn", to_end, Xc, Bc)

    states = np.empty((nb, H, nc + 1, P, N))
    states[:, :, 0] = h0
    carry = np.exp(acs[..., -1]) * (last_seg == 0)  # (b, c, h): 0 where the chunk resets
    for c in range(nc):
        prev = np.where((last_seg[:, c] == 0)[:, :, None, None], states[:, :, c], 0.0)
        states[:, :, c + 1] = carry[:, c, :, None, None] * prev + S[:, c]

    from_start = np.exp(acs) * (seg == 0)[:, :, None]  # (b, c, h, l)
    y_off = np.einsum("bclhn,bchpn,bchl->bclhp", Cc, np.moveaxis(states[:, :, :nc], 2, 1), from_start)
    y = (y_diag + y_off).reshape(nb, nc * Q, H, P)[:, :L] + D * x
    return y.astype(out_dtype), states.astype(out_dtype)
