r"""NumPy specification of the IIR/FIR filter ``lfilter`` (forward and adjoint).

Same function names and parameter names as :mod:`ssmcore.backends.numba.lfilter`;
the front door :mod:`ssmcore._lfilter` prepares the arrays once. Layout:

* ``b``: ``(Rb, K)`` numerator rows, ``a``: ``(Ra, K)`` denominator rows, both
  already divided by their ``a[:, 0]`` and zero-padded to ``K = max(nb, na)``
  (``a[:, 0]`` is 1 and never read); an FIR filter has ``a`` of shape ``(Ra, 1)``
  and no feedback terms (scipy's FIR path: no ``0 * y`` terms that would turn
  an infinite output into NaN); channel ``c`` uses rows ``brow[c]`` and
  ``arow[c]`` (coefficients shared across a batch are never copied);
* ``x``: ``(C, L)`` inputs, ``zi``: ``(C, K - 1)`` initial states, all of one dtype.

Forward: scipy's direct form II transposed, with the operations in scipy's order
(``_linear_filter`` in ``scipy/signal/_lfilter.c``), so real results are
bit-identical to scipy's on hosts without FMA contraction:

.. math::

    y_n = z_0 + b_0 x_n, \qquad
    z_i \leftarrow (z_{i+1} + x_n b_{i+1}) - y_n a_{i+1} \ (i < K-2), \qquad
    z_{K-2} \leftarrow x_n b_{K-1} - y_n a_{K-1}.

Adjoint (derivation in docs/signal.md): with :math:`\mu_{L+i} = \bar z^f_i`
(the cotangent of the final state) and, for :math:`n = L-1, \dots, 0`,

.. math::

    \mu_n = \bar y_n - \sum_{k=1}^{K-1} a_k \mu_{n+k}, \qquad
    \bar x_n = \sum_{k=0}^{K-1} b_k \mu_{n+k},

the gradients are :math:`\bar b_k = \sum_n \mu_{n+k} x_n`,
:math:`\bar a_k = -\sum_n \mu_{n+k} y_n` (k >= 1, with respect to the
*normalised* coefficients) and :math:`\bar z^i_j = \mu_j`: the same filter run
backwards in time on the cotangent. No conjugation (JAX's convention).

These loops run in the arrays' own dtype (as scipy does; long double included),
vectorised over channels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lfilter_bwd", "lfilter_fwd"]


def _accumulator(dtype: np.dtype) -> np.dtype:
    """Coefficient gradients sum over time: float32 data accumulate in float64."""
    return np.result_type(dtype, np.float64)


def lfilter_fwd(
    b: np.ndarray, brow: np.ndarray, a: np.ndarray, arow: np.ndarray, x: np.ndarray, zi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Filter every channel: returns ``y`` ``(C, L)`` and the final states ``zf`` ``(C, K - 1)``."""
    C, L = x.shape
    K = b.shape[1]
    bc = b[brow]  # (C, K)
    ac = a[arow]
    fir = a.shape[1] == 1
    y = np.empty((C, L), dtype=x.dtype)
    z = np.array(zi, dtype=x.dtype, copy=True).reshape(C, K - 1)
    for n in range(L):
        xn = x[:, n]
        if K == 1:
            y[:, n] = xn * bc[:, 0]
            continue
        yn = z[:, 0] + bc[:, 0] * xn
        if fir:
            for i in range(K - 2):
                z[:, i] = z[:, i + 1] + xn * bc[:, i + 1]
            z[:, K - 2] = xn * bc[:, K - 1]
        else:
            for i in range(K - 2):
                z[:, i] = (z[:, i + 1] + xn * bc[:, i + 1]) - yn * ac[:, i + 1]
            z[:, K - 2] = xn * bc[:, K - 1] - yn * ac[:, K - 1]
        y[:, n] = yn
    return y, z


def lfilter_bwd(
    b: np.ndarray,
    brow: np.ndarray,
    a: np.ndarray,
    arow: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    gy: np.ndarray,
    gzf: np.ndarray,
    need_coeffs: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Adjoint of :func:`lfilter_fwd`.

    Returns ``gx`` ``(C, L)``, ``gb`` and ``ga`` ``(C, K)`` (per channel, with
    respect to the normalised rows; ``ga[:, 0]`` is 0; ``None`` without
    ``need_coeffs``; accumulated in at least float64) and ``gzi`` ``(C, K - 1)``.
    """
    C, L = x.shape
    K = b.shape[1]
    bc = b[brow]
    ac = a[arow]
    acc = _accumulator(x.dtype)
    # w[:, k] holds mu_{n+k}; before the first (last in time) step it holds the tail mu_{L+k} = gzf_k.
    w = np.zeros((C, K), dtype=x.dtype)
    w[:, : K - 1] = gzf
    gx = np.empty((C, L), dtype=x.dtype)
    gb = np.zeros((C, K), dtype=acc) if need_coeffs else None
    ga = np.zeros((C, K), dtype=acc) if need_coeffs else None
    for n in range(L - 1, -1, -1):
        w[:, 1:] = w[:, :-1].copy()
        m = gy[:, n].copy()
        for k in range(1, a.shape[1]):  # FIR: no feedback terms
            m = m - ac[:, k] * w[:, k]
        w[:, 0] = m
        s = bc[:, 0] * w[:, 0]
        for k in range(1, K):
            s = s + bc[:, k] * w[:, k]
        gx[:, n] = s
        if need_coeffs:
            gb += w * x[:, n : n + 1]
            ga[:, 1 : a.shape[1]] -= w[:, 1 : a.shape[1]] * y[:, n : n + 1]
    return gx, gb, ga, np.ascontiguousarray(w[:, : K - 1])
