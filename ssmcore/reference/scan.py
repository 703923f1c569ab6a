"""NumPy specification of the linear scan h_t = a_t h_{t-1} + b_t (forward and backward).

Same function names and signatures as :mod:`ssmcore.backends.numba.scan`; the
front door :mod:`ssmcore._scan` prepares the arrays once, so these loops only read
like the maths. Layout (prepared by the front door):

* ``a``: ``(Ra, La)`` coefficient rows, ``La`` is ``L`` (time-varying) or ``1``
  (constant in time); channel ``c`` uses row ``arow[c]``.
* ``b``: ``(C, L)`` inputs, ``h0``: ``(C,)`` initial states, all of one dtype.

Backward (REFERENCE.md section 3), with ``h_prev`` the state before step t in
the scan's own direction (``h0`` at the first step):
``g_t = gh_t + a_{next} g_{next}`` (the last step also receives ``gfinal``),
``gb_t = g_t``, ``ga_t = g_t h_prev_t``, ``gh0 = a_first g_first``. No
conjugation (JAX's convention: the transpose of the linearisation).
"""

from __future__ import annotations

import numpy as np

__all__ = ["scan_bwd", "scan_fwd"]


def _time_order(L: int, reverse: bool) -> range:
    """The order in which the scan visits time steps."""
    return range(L - 1, -1, -1) if reverse else range(L)


def scan_fwd(
    a: np.ndarray,
    arow: np.ndarray,
    b: np.ndarray,
    h0: np.ndarray,
    reverse: bool,
    path: str = "auto",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Run the recurrence, returning all states ``out`` of shape ``(C, L)``.

    ``reverse=False``: h_t = a_t h_{t-1} + b_t for t = 0..L-1 with h_{-1} = h0.
    ``reverse=True``:  h_t = a_t h_{t+1} + b_t for t = L-1..0 with h_L = h0.
    ``path`` is accepted for signature parity with the Numba kernels and ignored;
    ``out`` (C-contiguous ``(C, L)`` of b's dtype) receives the result if given.
    """
    C, L = b.shape
    out = np.empty((C, L), dtype=b.dtype) if out is None else out
    h = h0.copy()
    for t in _time_order(L, reverse):
        a_t = a[arow, t if a.shape[1] > 1 else 0]
        h = a_t * h + b[:, t]
        out[:, t] = h
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
    need_a: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Pull cotangents back through :func:`scan_fwd`.

    Parameters
    ----------
    a, arow, h0, reverse
        As given to :func:`scan_fwd`.
    h : (C, L)
        The forward output (all states).
    gh : (C, L)
        Cotangent of every state; ``gfinal`` ``(C,)`` that of the final state.

    Returns
    -------
    g : (C, L)
        Gradient for ``b`` (the adjoint states).
    ga : (C, La)
        Gradient for ``a`` per channel: ``g_t h_prev_t``, summed over time when
        ``La == 1`` (constant-in-time coefficients). None if ``need_a`` is False.
    gh0 : (C,)
        Gradient for ``h0``.
    """
    C, L = gh.shape
    La = a.shape[1]
    g = np.empty((C, L), dtype=gh.dtype)
    ga = np.zeros((C, La), dtype=gh.dtype)
    carry = gfinal.copy()  # a_{next} g_{next}; at the last step, the final-state cotangent
    # The backward visits time in the opposite order of the forward scan.
    for t in _time_order(L, not reverse):
        g_t = gh[:, t] + carry
        g[:, t] = g_t
        prev = t + 1 if reverse else t - 1
        h_prev = h[:, prev] if 0 <= prev < L else h0
        a_t = a[arow, t if La > 1 else 0]
        if La > 1:
            ga[:, t] = g_t * h_prev
        else:
            ga[:, 0] += g_t * h_prev
        carry = a_t * g_t
    return g, (ga if need_a else None), carry
