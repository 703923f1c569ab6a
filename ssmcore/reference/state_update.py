"""NumPy reference of the selective-state update (Mamba's decode step): the specification.

Float64 / complex128, vectorised over (batch, head, dim, state). Same function name and
canonical arguments as the Numba kernel in :mod:`ssmcore.backends.numba.state_update`;
the front door :mod:`ssmcore._state_update` prepares them (the plain form
``(batch, D, N)`` with G groups arrives as G heads of D/G channels).

Canonical layout::

    state            (S, H, P, N)   the state cache (S = batch without indices)
    x, dt, z         (b, H, P)
    A                (H, P, N)
    B, C             (b, G, N)      head h uses group h // (H / G) (G may differ for B and C)
    D, dt_bias       (H, P)         or None
    idx              (b,) integer   or None: batch i reads and writes row idx[i];
                                    a negative entry marks a padded slot (skipped: out 0)

Maths (per batch i, head h, channel p, state n; s = state[idx[i], h, p])::

    delta = softplus(dt + dt_bias)  (softplus only if requested; linear above 20)
    new   = exp(delta A) s + delta B x
    out   = (sum_n C new + D x) * silu(z)      (2 Re(sum ...) for complex A)

The new cache is ``state`` with row idx[i] replaced by batch i's ``new``; when an index
repeats, every batch entry reads the old row and the last one writes it (NumPy's
fancy-assignment rule), so the result does not depend on scheduling.
"""

from __future__ import annotations

import numpy as np

__all__ = ["state_update_fwd"]  # write_mask is a helper the Numba launcher shares


def write_mask(idx: np.ndarray) -> np.ndarray:
    """Which batch entries write their row: valid (idx >= 0) and the last occurrence of their index."""
    b = idx.shape[0]
    later = (idx[:, None] == idx[None, :]) & (np.arange(b)[None, :] > np.arange(b)[:, None])
    return (idx >= 0) & ~later.any(axis=1)


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
    """One step for every batch entry; returns (out (b, H, P), new state cache (S, H, P, N)).

    Outputs come back in the dtypes of ``x`` and ``state``. ``out_state`` (shape and dtype
    of ``state``; it may be ``state`` itself) receives the new cache instead of a copy.
    """
    cplx = np.iscomplexobj(A) or np.iscomplexobj(state)
    sdt = state.dtype
    wdt = np.complex128 if cplx else np.float64
    nb, nh = x.shape[:2]
    rows = np.arange(nb) if idx is None else np.asarray(idx, dtype=np.int64)
    valid = rows >= 0
    s = np.asarray(state, wdt)[np.where(valid, rows, 0)]  # the rows read, before any write
    delta = np.asarray(dt, np.float64)
    if dt_bias is not None:
        delta = delta + dt_bias
    if dt_softplus:
        with np.errstate(over="ignore"):
            delta = np.where(delta > 20.0, delta, np.log1p(np.exp(np.minimum(delta, 20.0))))
    xf = np.asarray(x, np.float64)
    Bh = np.repeat(np.asarray(B, wdt), nh // B.shape[1], axis=1)[:, :, None, :]  # (b, H, 1, N)
    Ch = np.repeat(np.asarray(C, wdt), nh // C.shape[1], axis=1)[:, :, None, :]
    with np.errstate(over="ignore", invalid="ignore"):
        new = np.exp(delta[..., None] * np.asarray(A, wdt)) * s + (delta * xf)[..., None] * Bh
        y = np.sum(Ch * new, axis=-1)
        y = 2.0 * y.real if cplx else y
        if D is not None:
            y = y + D * xf
        if z is not None:
            zf = np.asarray(z, np.float64)
            y = y * zf / (1.0 + np.exp(-zf))
    y = np.where(valid[:, None, None], y, 0.0)
    if out_state is None:
        out_state = np.array(state, dtype=sdt, copy=True)
    w = write_mask(rows) if idx is not None else np.ones(nb, bool)
    out_state[rows[w]] = new[w]
    return y.astype(x.dtype), out_state
