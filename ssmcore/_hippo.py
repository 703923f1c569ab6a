"""HiPPO state matrices, their normal-plus-low-rank (NPLR) form, and signal reconstruction.

A HiPPO measure defines a linear ODE ``x'(t) = A x(t) + B u(t)`` whose state ``x(t)``
holds the coefficients of the projection of the input history ``u(s), s <= t`` onto a
basis of orthogonal functions (Gu et al. 2020 "HiPPO"; S4 2022). This module gives:

* :func:`hippo` -- the matrices ``(A, B)`` of every measure of the S4 code's
  ``transition`` (same numbers, same sign convention: ``A`` has a negative spectrum),
  with the window length ``theta`` and Laguerre parameters exposed;
* :func:`rank_correction`, :func:`nplr`, :func:`nplr_to_dense` -- the NPLR form
  ``A = V (Lambda - P P^*) V^*`` used by S4, built stably in float64;
* :func:`dplr` -- S4's direct diagonal-plus-low-rank initialisations;
* :func:`hippo_basis`, :func:`hippo_reconstruct` -- the basis functions in which the
  state is a coefficient vector, so ``u(s) ~ sum_n x_n(t) basis_n(s)``;
* :func:`hippo_online_coefficients` -- a readable float64 loop that runs a measure
  over a sampled signal (HiPPO-LegS with its ``1/t`` steps, or an LTI measure with
  step ``dt``).

These are initialisation-time functions of a size ``N``, computed once in float64;
none is differentiable or time-critical, so there is no Numba kernel and no VJP.
SciPy is imported inside the functions that need it (``import ssmcore`` stays light).

Devices: the functions of sizes and options (:func:`hippo`, :func:`rank_correction`,
:func:`nplr`, :func:`dplr`) return NumPy arrays -- set-up code, run once on the host
(move the result with e.g. ``cupy.asarray``). The functions of arrays are decided one
by one: :func:`hippo_basis`, :func:`hippo_reconstruct` (recurrences and elementwise
maths) and :func:`nplr_to_dense` (two matrix products) are written with the inputs'
array namespace and keep CuPy input on its device; :func:`hippo_online_coefficients`
is a sequential float64 loop of SciPy solves, NumPy only (declared so, a CuPy input
gets the dispatcher's uniform error).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from ._initializers import _as_generator
from .dispatch import Target, array_kind, declare_backends, select
from .validation import as_float_array, check_bool, check_choice, check_dt, check_int

__all__ = [
    "MEASURES",
    "dplr",
    "hippo",
    "hippo_basis",
    "hippo_online_coefficients",
    "hippo_reconstruct",
    "nplr",
    "nplr_to_dense",
    "rank_correction",
]

# Canonical measure name -> its keyword parameters and their defaults. The defaults
# reproduce the S4 code's `transition(measure, N)` exactly: its LegT and FouT are
# "halved", which is a window of length theta = 2 (see `hippo`).
MEASURES: Mapping[str, Mapping[str, float]] = MappingProxyType({
    "legs": {},
    "legsd": {},
    "legt": {"theta": 2.0},
    "lmu": {"theta": 1.0},
    "lagt": {"beta": 1.0},
    "glagt": {"alpha": 0.0, "beta": 0.01},
    "fout": {"theta": 2.0},
    "fourier2": {"theta": 1.0},
    "fourier_decay": {"theta": 2.0},
    "foud": {},
})
_ALIASES = {"fourier": "fout", "fourier_diag": "foud"}
_FOURIER = ("fout", "fourier2", "fourier_decay", "foud")
# Measures whose state is an orthogonal projection with a known reconstruction basis.
_WITH_BASIS = ("legs", "legt", "lmu", "lagt", "glagt", "fout", "fourier2")
# Measures with a normal-plus-low-rank form (S4's `rank_correction`).
_WITH_NPLR = ("legs", "legsd", "legt", "lagt", "fout", "fourier2", "fourier_decay", "foud")


def _measure(
    fn: str, measure: Any, params: dict[str, Any], allowed: tuple[str, ...] | None = None
) -> tuple[str, dict[str, float]]:
    """Canonical measure name and its parameters (defaults filled in, values checked)."""
    names = tuple(MEASURES) + tuple(_ALIASES)
    name = check_choice(fn, "measure", measure, names)
    name = _ALIASES.get(name, name)
    if allowed is not None and name not in allowed:
        raise ValueError(
            f"{fn}: measure {measure!r} is not supported here; expected one of {', '.join(map(repr, allowed))}"
        )
    defaults = MEASURES[name]
    extra = sorted(set(params) - set(defaults))
    if extra:
        takes = ", ".join(defaults) if defaults else "no parameters"
        raise TypeError(f"{fn}: measure {name!r} takes {takes}; got unexpected {', '.join(extra)}")
    out = dict(defaults)
    for key, value in params.items():
        if value is None:  # None means "the default", so callers can forward optional arguments
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{fn}: {key} must be a real number; got {type(value).__name__} {value!r}")
        v = float(value)
        if key == "alpha":
            ok, rule = -1.0 < v < 1.0, "in (-1, 1)"
        else:
            ok, rule = math.isfinite(v) and v > 0.0, "finite and > 0"
        if not ok:
            raise ValueError(f"{fn}: {key} must be {rule}; got {v!r}")
        out[key] = v
    return name, out


def _check_N(fn: str, name: str, N: Any, *, even: bool = False) -> int:
    N = check_int(fn, "N", N, minimum=1)
    if even and N % 2:
        why = "cos/sin pairs" if name in _FOURIER else "conjugate pairs, N/2 modes"
        raise ValueError(f"{fn}: N must be even for measure {name!r} ({why}); got N={N}")
    return N


def _fourier_b(N: int) -> np.ndarray:
    """[1, 0, sqrt2, 0, sqrt2, 0, ...]: the Fourier basis at lag 0 in the [cos, sin] layout."""
    b = np.zeros(N)
    b[0::2] = math.sqrt(2.0)
    b[0] = 1.0
    return b


def _fourier_skew(N: int) -> np.ndarray:
    """Skew generator of the rotations: S[2n, 2n+1] = -n, S[2n+1, 2n] = n."""
    S = np.zeros((N, N))
    n = np.arange(N // 2, dtype=np.float64)
    S[2 * np.arange(N // 2), 2 * np.arange(N // 2) + 1] = -n
    S[2 * np.arange(N // 2) + 1, 2 * np.arange(N // 2)] = n
    return S


def _legs(N: int) -> tuple[np.ndarray, np.ndarray]:
    R = np.sqrt(2.0 * np.arange(N) + 1.0)
    A = np.tril(-np.outer(R, R), -1)  # tril of the negated product: no -0.0 entries above
    A[np.diag_indices(N)] = -(np.arange(N) + 1.0)
    return A, R


def _build(name: str, N: int, p: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """The matrices of a canonical measure (no validation)."""
    q = np.arange(N, dtype=np.float64)
    if name == "legs":
        return _legs(N)
    if name == "legsd":
        A, B = _legs(N)
        return A + 0.5 * np.outer(B, B), B / 2.0
    if name in ("legt", "lmu"):
        i = np.arange(N)
        n, k = i[:, None], i[None, :]
        alt = np.where((n - k) % 2 == 0, 1.0, -1.0)  # (-1)^(n-k) from the parity, not a float power
        if name == "legt":
            R = np.sqrt(2.0 * q + 1.0)
            sign = np.where(n >= k, 1.0, alt)
            return -(1.0 / p["theta"]) * np.outer(R, R) * sign, R / p["theta"]
        sign = np.where(n < k, -1.0, -alt)
        return (2.0 * q[:, None] + 1.0) * sign / p["theta"], alt[:, 0] * (2.0 * q + 1.0) / p["theta"]
    if name == "lagt":
        return np.eye(N) / 2.0 - np.tril(np.ones((N, N))), np.full(N, p["beta"])
    if name == "glagt":
        from scipy import special

        a, beta = p["alpha"], p["beta"]
        A = -np.eye(N) * (1.0 + beta) / 2.0 - np.tril(np.ones((N, N)), -1)
        B = special.binom(a + q, q)  # L_n^(alpha)(0)
        ell = np.exp(0.5 * (special.gammaln(q + a + 1.0) - special.gammaln(q + 1.0)))  # ||L_n^(alpha)||
        A = A * ell[None, :] / ell[:, None]
        B = B / ell * math.exp(-0.5 * special.gammaln(1.0 - a)) * beta ** ((1.0 - a) / 2.0)
        return A, B
    b, S = _fourier_b(N), _fourier_skew(N)
    if name in ("fout", "fourier2"):
        th = p["theta"]
        return (2.0 * np.pi / th) * S - (2.0 / th) * np.outer(b, b), (2.0 / th) * b
    if name == "fourier_decay":
        th = p["theta"]
        return (2.0 * np.pi / th) * S - (1.0 / th) * np.outer(b, b), b / th
    if name == "foud":
        return 2.0 * np.pi * S - 0.5 * np.eye(N), b
    raise AssertionError(name)  # unreachable: _measure validated the name


def hippo(measure: str, N: int, **params: float) -> tuple[np.ndarray, np.ndarray]:
    r"""HiPPO state matrices ``(A, B)`` of a measure, in the S4 code's convention.

    The state of ``x'(t) = A x(t) + B u(t)`` (for ``"legs"``:
    ``x'(t) = (1/t) (A x(t) + B u(t))``) holds the coefficients of the projection of the
    input history onto the measure's basis (see :func:`hippo_basis`). ``A`` has a
    negative (stable) spectrum, as in S4's ``transition``. Indices ``n`` (row) and
    ``k`` (column) start at 0, ``R_n = sqrt(2n+1)``.

    ``legs``
        :math:`A_{nk} = -R_n R_k` (n > k), :math:`-(n+1)` (n = k), 0 (n < k);
        :math:`B_n = R_n`. Scale-invariant window ``[0, t]``.
    ``legsd``
        :math:`A = A_{legs} + \tfrac12 B B^T`, :math:`B = B_{legs}/2` (normal; the
        S4D-LegS matrix, no projection meaning).
    ``legt``
        :math:`A_{nk} = -\tfrac1\theta R_n R_k` (n >= k),
        :math:`-\tfrac1\theta (-1)^{n-k} R_n R_k` (n < k); :math:`B_n = R_n/\theta`.
        Sliding window ``[t - theta, t]``; default ``theta = 2``.
    ``lmu``
        :math:`A_{nk} = \tfrac{2n+1}\theta\,(-1 \text{ if } n<k \text{ else } (-1)^{n-k+1})`,
        :math:`B_n = (-1)^n (2n+1)/\theta`: LegT in the LMU's scaling; default
        ``theta = 1``.
    ``lagt``
        :math:`A = \tfrac12 I - \mathrm{tril}(1)`, :math:`B = \beta \mathbf 1`
        (Laguerre functions of the whole history; default ``beta = 1``).
    ``glagt``
        Generalised Laguerre, parameters ``alpha`` (0) and ``beta`` (0.01), as S4.
    ``fout`` (alias ``fourier``)
        :math:`A = \tfrac{2\pi}\theta S - \tfrac2\theta b b^T`, :math:`B = \tfrac2\theta b`
        with the layout ``[c0, s0, c1, s1, ...]``, :math:`S_{2n,2n+1} = -n`,
        :math:`S_{2n+1,2n} = n`, ``b = [1, 0, sqrt2, 0, sqrt2, 0, ...]``; window
        ``[t - theta, t]``, default ``theta = 2``.
    ``fourier2``
        The same with default ``theta = 1`` (the HiPPO paper's FouT).
    ``fourier_decay``
        :math:`A = \tfrac{2\pi}\theta S - \tfrac1\theta b b^T`, :math:`B = b/\theta`
        (default ``theta = 2``).
    ``foud`` (alias ``fourier_diag``)
        :math:`A = 2\pi S - \tfrac12 I`, :math:`B = b`.

    Parameters
    ----------
    measure : str
        One of ``legs, legsd, legt, lmu, lagt, glagt, fout (fourier), fourier2,
        fourier_decay, foud (fourier_diag)``.
    N : int
        State size, ``N >= 1``; the Fourier measures need an even ``N``.
    **params : float
        ``theta`` (window length) for ``legt``, ``lmu`` and the windowed Fourier
        measures; ``beta`` for ``lagt``; ``alpha`` and ``beta`` for ``glagt``.

    Returns
    -------
    A : ndarray, shape (N, N), float64
    B : ndarray, shape (N,), float64
        A vector, where the S4 code returns a column ``(N, 1)``: use ``B[:, None]``.

    Raises
    ------
    ValueError
        If ``measure`` is unknown, a parameter value is outside its range (e.g.
        ``theta <= 0``), ``N < 1``, or ``N`` is odd for a Fourier measure.
    TypeError
        If ``N`` is not an integer, or a keyword parameter is not one the measure
        takes or is not a real number.

    See Also
    --------
    nplr : The normal-plus-low-rank (diagonalised) form of these matrices.
    dplr : S4's diagonal-plus-low-rank initialisations.
    hippo_basis : The basis functions whose coefficients the state holds.
    hippo_online_coefficients : Run the measure over a sampled signal.

    Notes
    -----
    ``theta`` is the window length in the time unit of ``t``. With ``theta = 1`` the
    LegT state is exactly the projection onto ``sqrt(2n+1) P_n(2 (s - t)/theta + 1)``
    over ``[t - theta, t]`` (checked by the tests); the S4 code's LegT, whose matrices
    are halved "for timescale correctness", is ``theta = 2``, and so is its FouT.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import hippo
    >>> A, B = hippo("legs", 3)
    >>> A
    array([[-1.        ,  0.        ,  0.        ],
           [-1.73205081, -2.        ,  0.        ],
           [-2.23606798, -3.87298335, -3.        ]])
    >>> np.round(hippo("legt", 4)[0][0], 3)  # S4's halved LegT (theta = 2)
    array([-0.5  ,  0.866, -1.118,  1.323])
    """
    name, p = _measure("hippo", measure, params)
    N = _check_N("hippo", name, N, even=name in _FOURIER)
    return _build(name, N, p)


def rank_correction(measure: str, N: int, rank: int = 1, **params: float) -> np.ndarray:
    r"""Low-rank ``P`` such that ``A + P^T P`` is normal (S4's ``rank_correction``).

    ``A + sum_r P_r^T P_r = c I + S`` with ``S`` skew-symmetric, so ``A`` is
    normal-plus-low-rank. Rows of ``P`` (``k`` from 0):

    * ``legs``: :math:`\sqrt{k + 1/2}` (rank 1); ``lagt``: :math:`\sqrt{1/2}` (rank 1);
    * ``legt``: rank 2, :math:`\sqrt{(2k+1)/\theta}` on even ``k`` (0 on odd) and on odd
      ``k`` (0 on even);
    * ``fout``/``fourier2``: :math:`\sqrt{2/\theta}\, b`; ``fourier_decay``:
      :math:`b/\sqrt\theta`; ``legsd``, ``foud``: zero (already normal).

    Extra rows beyond the measure's own rank are zero.

    Parameters
    ----------
    measure : str
        One of ``legs, legsd, legt, lagt, fout (fourier), fourier2, fourier_decay,
        foud (fourier_diag)``.
    N : int
        State size (even for the Fourier measures).
    rank : int, optional
        Number of rows, at least the measure's rank (2 for ``legt``, else 1).
    **params : float
        As for :func:`hippo` (``theta``, ``beta``).

    Returns
    -------
    P : ndarray, shape (rank, N), float64

    Raises
    ------
    ValueError
        If ``measure`` is unknown or has no NPLR form, a parameter is out of range,
        ``N`` is invalid for the measure, or ``rank`` is below the measure's rank
        (or below 1).
    TypeError
        If ``N`` or ``rank`` is not an integer, or a keyword parameter is not one the measure
        takes or is not a real number.

    See Also
    --------
    nplr : Diagonalise ``A + P^T P`` with this correction.
    hippo : The state matrices ``(A, B)`` this corrects.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import hippo, rank_correction
    >>> A, _ = hippo("legs", 4); P = rank_correction("legs", 4)
    >>> AP = A + P.T @ P
    >>> np.allclose(AP + AP.T, -np.eye(4))   # -I/2 plus a skew-symmetric part
    True
    """
    fn = "rank_correction"
    name, p = _measure(fn, measure, params, allowed=_WITH_NPLR)
    N = _check_N(fn, name, N, even=name in _FOURIER)
    rank = check_int(fn, "rank", rank, minimum=1)
    return _rank_correction(fn, name, N, rank, p)


def _rank_correction(fn: str, name: str, N: int, rank: int, p: dict[str, float]) -> np.ndarray:
    k = np.arange(N, dtype=np.float64)
    if name == "legs":
        rows = [np.sqrt(k + 0.5)]
    elif name == "lagt":
        rows = [np.full(N, math.sqrt(0.5))]
    elif name == "legt":
        r = np.sqrt((2.0 * k + 1.0) / p["theta"])
        rows = [np.where(k % 2 == 0, r, 0.0), np.where(k % 2 == 1, r, 0.0)]
    elif name in ("fout", "fourier2"):
        rows = [math.sqrt(2.0 / p["theta"]) * _fourier_b(N)]
    elif name == "fourier_decay":
        rows = [_fourier_b(N) / math.sqrt(p["theta"])]
    else:  # legsd, foud: A is already normal
        rows = [np.zeros(N)]
    if rank < len(rows):
        raise ValueError(f"{fn}: measure {name!r} needs rank >= {len(rows)}; got rank={rank}")
    P = np.zeros((rank, N))
    P[: len(rows)] = rows
    return P


def nplr(measure: str, N: int, rank: int = 1, **params: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""Normal-plus-low-rank form of a HiPPO matrix, with conjugate pairs halved.

    With ``A, b = hippo(measure, N)`` and ``p = rank_correction(measure, N, rank)``,
    ``A + p^T p = c I + S`` (``S`` skew). The unitary ``V_c = [V, conj(V)]`` diagonalises
    it, and

    .. math::

        A = V_c \left(\mathrm{diag}(\Lambda_c) - P_c P_c^*\right) V_c^*, \qquad
        b = V_c B_c,

    with :math:`\Lambda_c = [\Lambda, \bar\Lambda]`, :math:`B_c = [B, \bar B]` and the
    columns of :math:`P_c` = rows of ``[P, conj(P)]``. Only the first half is returned,
    as S4 stores it; equivalently ``A = 2 Re(V diag(Lambda) V^*) - sum_r p_r p_r^T`` with
    ``p_r = 2 Re(V P_r)``, and ``b = 2 Re(V B)`` (:func:`nplr_to_dense`).

    Construction (float64, stable for large ``N``): ``Re Lambda = mean(diag(A + p^T p))``
    (exactly ``c``), ``Im Lambda`` and ``V`` from the eigendecomposition of the Hermitian
    matrix ``-i S`` (never of the non-normal ``A``), computed in real arithmetic through
    an orthogonal reduction of ``S`` to skew-tridiagonal form; modes are sorted by
    imaginary part and the negative-imaginary half is kept (S4's order). A zero
    eigenvalue cluster (the Fourier measures' DC pair) is split into the conjugate pair
    ``(q0 + i q1)/sqrt2`` of a real basis of the null space, placed last (S4 uses
    ``(e0 + i e1)/sqrt2``). Each column of ``V`` is then given the phase that makes ``B``
    real and non-negative (eigenvector phases are otherwise arbitrary and
    LAPACK-dependent, as in S4); kernels only see phase-invariant products.

    Parameters
    ----------
    measure : str
        A measure with an NPLR form: ``legs, legsd, legt, lagt, fout (fourier), fourier2,
        fourier_decay, foud (fourier_diag)``.
    N : int
        Even state size.
    rank : int, optional
        Rank of the correction (``legt`` needs 2).
    **params : float
        As for :func:`hippo`.

    Returns
    -------
    Lambda : ndarray, shape (N/2,), complex128
        Eigenvalues, imaginary parts ascending (most negative first), all <= 0.
    P : ndarray, shape (rank, N/2), complex128
        ``V^* p`` (first half).
    B : ndarray, shape (N/2,), complex128
        ``V^* b`` (first half), real and >= 0 by the phase convention.
    V : ndarray, shape (N, N/2), complex128
        Orthonormal columns; ``[V, conj(V)]`` is unitary.

    Raises
    ------
    ValueError
        If ``measure`` is unknown or has no NPLR form, a parameter is out of range,
        ``N`` is odd or below 1, or ``rank`` is below the measure's rank.
    TypeError
        If ``N`` or ``rank`` is not an integer, or a keyword parameter is not one the measure
        takes or is not a real number.
    RuntimeError
        If ``A + P^T P`` is numerically not normal (an internal consistency check).

    See Also
    --------
    dplr : S4's DPLR initialisations, several built from this form.
    nplr_to_dense : Rebuild the real ``(A, b)`` from the returned form.
    rank_correction : The low-rank ``P`` used here.
    hippo : The dense HiPPO matrices.

    Notes
    -----
    S4's ``nplr`` returns the same quantities up to the per-column phase of ``V`` (its
    optional ``B_clip`` clamps ``Im B``, a no-op with this phase convention).

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import hippo, nplr, nplr_to_dense
    >>> Lambda, P, B, V = nplr("legs", 8)
    >>> np.round(Lambda, 4)
    array([-0.5-19.8574j, -0.5 -5.3542j, -0.5 -1.9578j, -0.5 -0.4275j])
    >>> A, b = hippo("legs", 8)
    >>> A2, b2 = nplr_to_dense(Lambda, P, B, V)
    >>> bool(np.allclose(A2, A) and np.allclose(b2, b))
    True
    """
    fn = "nplr"
    name, p = _measure(fn, measure, params, allowed=_WITH_NPLR)
    N = _check_N(fn, name, N, even=True)
    rank = check_int(fn, "rank", rank, minimum=1)
    A, b = _build(name, N, p)
    Pr = _rank_correction(fn, name, N, rank, p)
    AP = A + Pr.T @ Pr
    c = float(np.mean(np.diag(AP)))
    S = 0.5 * (AP - AP.T)
    # The symmetric part must be c*I; every supported measure satisfies this exactly.
    dev = np.max(np.abs(0.5 * (AP + AP.T) - c * np.eye(N)), initial=0.0)
    if dev > 1e-10 * max(1.0, np.max(np.abs(AP))):
        raise RuntimeError(f"{fn}: A + P^T P is not normal for measure {name!r} (deviation {dev:.3g})")

    w, Z = _skew_eigh(S)  # eigh(-i S): ascending real eigenvalues = Im(Lambda)
    tol = 64.0 * N * np.finfo(np.float64).eps * max(1.0, float(np.max(np.abs(w))))
    m = int(np.sum(w < -tol))  # strictly negative: kept as they are
    z = N - 2 * m  # the null cluster between the +-w pairs (even, as N is even)
    V = np.empty((N, N // 2), dtype=np.complex128)
    V[:, :m] = Z[:, :m]
    w_keep = np.zeros(N // 2)
    w_keep[:m] = w[:m]
    if z:
        V[:, m:] = _null_pairs(Z[:, m : m + z])
    Lambda = c + 1j * w_keep

    # Deterministic phases: make B = V^* b real >= 0 (else the largest entry of V real > 0).
    Bt = V.conj().T @ b
    scale = float(np.linalg.norm(b))
    big = V[np.argmax(np.abs(V), axis=0), np.arange(N // 2)]
    with np.errstate(invalid="ignore", divide="ignore"):
        phase = np.where(np.abs(Bt) > 1e-12 * scale, Bt / np.abs(Bt), np.conj(big) / np.abs(big))
    V *= phase
    B = V.conj().T @ b
    B = np.where(np.abs(B.imag) <= 1e-14 * max(scale, 1.0), B.real, B).astype(np.complex128)
    P = (V.conj().T @ Pr.T).T
    return Lambda, np.ascontiguousarray(P), B, V


def _skew_eigh(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the Hermitian matrix ``-i S``, ``S`` real skew.

    Same result as ``np.linalg.eigh(-1j * S)`` but in real arithmetic, several times
    faster at N = 1024: an orthogonal Hessenberg reduction ``S = Q T Q^T`` makes ``T``
    skew-tridiagonal (sub-diagonal ``e``); with ``D = diag(i^k)``,
    ``D^* (-i T) D`` is the real symmetric tridiagonal matrix with zero diagonal and
    off-diagonal ``-e``, solved by ``eigh_tridiagonal``. Eigenvectors: ``Q D Y``.
    """
    from scipy import linalg

    N = S.shape[0]
    if N == 1:
        return np.zeros(1), np.ones((1, 1), dtype=np.complex128)
    T, Q = linalg.hessenberg(S, calc_q=True)
    e = np.diag(T, -1).copy()
    w, Y = linalg.eigh_tridiagonal(np.zeros(N), -e)
    Z = np.empty((N, N), dtype=np.complex128)
    even, odd = slice(0, None, 2), slice(1, None, 2)
    # D Y has rows i^k Y[k]: real rows (+-1) at even k, imaginary rows (+-i) at odd k
    sign_even = np.where(np.arange(0, N, 2) % 4 == 0, 1.0, -1.0)[:, None]
    sign_odd = np.where(np.arange(1, N, 2) % 4 == 1, 1.0, -1.0)[:, None]
    Z.real = Q[:, even] @ (sign_even * Y[even])
    Z.imag = Q[:, odd] @ (sign_odd * Y[odd])
    return w, Z


def _null_pairs(Z: np.ndarray) -> np.ndarray:
    """Split a conjugation-invariant null space into conjugate pairs (q0 + i q1)/sqrt2.

    The projector onto span(Z) is real (the space is closed under conjugation); a
    column-pivoted QR of it gives a real orthonormal basis q0, q1, ... (for the Fourier
    measures exactly e0, e1), and (q_{2j} + i q_{2j+1})/sqrt2 together with its
    conjugate spans the same space.
    """
    from scipy import linalg

    z = Z.shape[1]
    proj = (Z @ Z.conj().T).real
    Q, R, _ = linalg.qr(proj, pivoting=True, mode="economic")
    Q = Q[:, :z] * np.sign(np.diag(R)[:z])
    return (Q[:, 0::2] + 1j * Q[:, 1::2]) / math.sqrt(2.0)


def nplr_to_dense(Lambda: Any, P: Any, B: Any, V: Any) -> tuple[np.ndarray, np.ndarray]:
    r"""Rebuild the real ``(A, b)`` from a conjugate-halved NPLR form (inverse of :func:`nplr`).

    .. math::

        A = 2\,\mathrm{Re}\!\left(V \mathrm{diag}(\Lambda) V^*\right) - \sum_r p_r p_r^T,
        \quad p_r = 2\,\mathrm{Re}(V P_r), \qquad b = 2\,\mathrm{Re}(V B).

    This equals ``V_c (diag(Lambda_c) - P_c P_c^*) V_c^*`` on the conjugate-extended space
    (note the cross terms: it is not ``2 Re(V (diag(Lambda) - P P^*) V^*)``).

    Parameters
    ----------
    Lambda : array_like, shape (M,)
        Eigenvalues, one per conjugate pair (as returned by :func:`nplr`).
    P : array_like, shape (rank, M)
        Low-rank factor in the eigenbasis, ``V^* p``.
    B : array_like, shape (M,)
        Input vector in the eigenbasis, ``V^* b``.
    V : array_like, shape (N, M)
        Eigenvectors, one column per conjugate pair.

    Returns
    -------
    A : ndarray, shape (N, N), float64
    b : ndarray, shape (N,), float64

    Raises
    ------
    ValueError
        If V is not 2-D, or Lambda, B or P do not have the shapes (M,), (M,) and
        (rank, M) that V's (N, M) imply.
    TypeError
        If an input is an integer, boolean or non-numeric NumPy array.

    See Also
    --------
    nplr : The forward transformation (dense HiPPO matrices to NPLR form).
    dplr : DPLR initialisations in the same conjugate-halved layout.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import hippo, nplr, nplr_to_dense
    >>> A, b = nplr_to_dense(*nplr("fout", 6))
    >>> bool(np.allclose(A, hippo("fout", 6)[0]))
    True
    """
    fn = "nplr_to_dense"
    # two matrix products and elementwise maths: device-neutral (array API standard)
    t = select(fn, Lambda, P, B, V)
    xp = t.xp
    Lambda = as_float_array(fn, "Lambda", Lambda, target=t)
    P = as_float_array(fn, "P", P, target=t)
    B = as_float_array(fn, "B", B, target=t)
    V = as_float_array(fn, "V", V, target=t)
    if V.ndim != 2:
        raise ValueError(f"{fn}: V has shape {tuple(V.shape)}; expected (N, M)")
    M = V.shape[1]
    if tuple(Lambda.shape) != (M,):
        raise ValueError(f"{fn}: Lambda has shape {tuple(Lambda.shape)}; expected ({M},) to match V {tuple(V.shape)}")
    if tuple(B.shape) != (M,):
        raise ValueError(f"{fn}: B has shape {tuple(B.shape)}; expected ({M},) to match V {tuple(V.shape)}")
    if P.ndim != 2 or P.shape[1] != M:
        raise ValueError(f"{fn}: P has shape {tuple(P.shape)}; expected (rank, {M}) to match V {tuple(V.shape)}")
    T = xp.matrix_transpose
    p = 2.0 * xp.real(V @ T(P))  # (N, rank)
    A = 2.0 * xp.real((V * Lambda) @ xp.conj(T(V))) - p @ T(p)
    return A, 2.0 * xp.real(xp.matmul(V, B))


# ----------------------------------------------------------------------------- DPLR

_DPLR_INITS = ("lin", "linear", "inv", "inverse", "inv2", "inverse2", "quad", "quadratic",
               "rand", "random", "real", "legs", "hippo")
_DPLR_B_INITS = ("constant", "random", "alternating", "unit-cw", "unit-ccw", "legs", "hippo")


def dplr(
    init: str,
    N: int,
    rank: int = 1,
    H: int = 1,
    rng: Any = None,
    *,
    real_random: bool = False,
    real_scale: float = 1.0,
    imag_random: bool = False,
    imag_scale: float = 1.0,
    B_init: str = "constant",
    B_scale: float = 1.0,
    P_scale: float = 1.0,
    normalize: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Diagonal-plus-low-rank initialisations of S4 (its ``dplr``), ``H`` copies.

    ``Lambda = -real - i imag`` with ``n = 0 .. N/2 - 1`` and ``N`` the full state size:

    * real part ``1/2`` (``U[0, 1)`` if ``real_random``) times ``real_scale``;
    * imaginary part by ``init`` (base ``n``, or ``(N/2) U[0, 1)`` if ``imag_random``):
      ``lin``: :math:`\pi n` (S4D-Lin); ``inv``: :math:`(N/\pi)(N/(2n+1) - 1)`
      (S4D-Inv); ``inv2``: :math:`(N/\pi)(N/(n+1) - 1)`; ``quad``:
      :math:`(2n+1)^2/\pi`; ``rand``: :math:`e^{\mathcal N(0,1)}`; ``real``: 0 with real
      part :math:`n + 1` (S4D-Real; ``(N/2) U[0,1)`` if ``real_random``); ``legs``
      (``hippo``): :math:`-\mathrm{Im}\,\Lambda` of ``nplr("legs", N)`` (S4D-LegS);
      then times ``imag_scale``.
    * ``B_init``: ``constant`` (ones), ``random`` (complex normal, ``E|B|^2 = 1``),
      ``alternating`` (+1, -1, ...), ``unit-cw`` / ``unit-ccw``
      (:math:`e^{\mp 2\pi i n/N}`), ``legs`` (``hippo``): ``B`` of ``nplr("legs", N)``
      times 1/2, as S4 does; then times ``B_scale``. ``normalize`` divides each row by
      :math:`\sqrt{2 \sum_n |B_n/\Lambda_n|^2}`.
    * ``P``: with ``B_init="legs"`` the ``P`` of ``nplr("legs", N)`` (zero-padded to
      ``rank``); otherwise complex normal times ``P_scale`` (``P_scale=0`` gives S4's
      ``diag-*`` inits).

    Parameters
    ----------
    init : str
        ``lin, inv, inv2, quad, rand, real, legs`` (aliases ``linear, inverse,
        inverse2, quadratic, random, hippo``).
    N : int
        Even full state size; ``N/2`` modes are returned.
    rank : int, optional
        Rank of ``P``.
    H : int, optional
        Number of independent copies (channels).
    rng : numpy.random.Generator, int or None, optional
        Randomness for the random options (``np.random.default_rng(rng)``).
    real_random, real_scale, imag_random, imag_scale, B_init, B_scale, P_scale, normalize
        As above (S4's names and defaults).

    Returns
    -------
    Lambda : ndarray, shape (H, N/2), complex128
        Real parts <= 0, imaginary parts <= 0.
    P : ndarray, shape (rank, H, N/2), complex128
    B : ndarray, shape (H, N/2), complex128

    Raises
    ------
    ValueError
        If ``init`` or ``B_init`` is unknown, ``N`` is odd or below 2, ``rank`` or
        ``H`` is below 1, or ``real_scale`` or ``imag_scale`` is not a real number >= 0.
    TypeError
        If ``N``, ``rank`` or ``H`` is not an integer.

    See Also
    --------
    nplr : The NPLR form used by the ``legs`` options.
    hippo : The dense HiPPO matrices.
    ssm_kernel_dplr : The convolution kernel of the returned parameters.

    Notes
    -----
    S4's ``dplr`` also returns an identity ``V`` (used only in its tests); it is omitted
    here. S4D's papers write ``+ i pi n``; the S4 code (and this function) stores the
    conjugate, which gives the same real kernel ``2 Re(...)``. Two small departures
    from S4's code: ``real_scale`` also scales the S4D-Real part ``n + 1`` (S4 ignores it
    there), and ``alternating`` works for any ``N/2`` (S4 needs ``N % 4 == 0``).
    S4's ``inv_transform`` later clamps stored parts to ``>= 1e-4``; nothing is clamped
    here (``lin`` and ``real`` have an exact zero imaginary part at ``n = 0``).

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import dplr
    >>> Lambda, P, B = dplr("lin", 8, H=2, P_scale=0.0)
    >>> Lambda[0, :3]
    array([-0.5+0.j        , -0.5-3.14159265j, -0.5-6.28318531j])
    >>> P.shape, B.shape
    ((1, 2, 4), (2, 4))
    """
    fn = "dplr"
    init = check_choice(fn, "init", init, _DPLR_INITS)
    B_init = check_choice(fn, "B_init", B_init, _DPLR_B_INITS)
    N = check_int(fn, "N", N, minimum=2)
    if N % 2:
        raise ValueError(f"{fn}: N must be even (N/2 conjugate-pair modes); got N={N}")
    rank = check_int(fn, "rank", rank, minimum=1)
    H = check_int(fn, "H", H, minimum=1)
    real_random = check_bool(fn, "real_random", real_random)
    imag_random = check_bool(fn, "imag_random", imag_random)
    normalize = check_bool(fn, "normalize", normalize)
    for key, value in (("real_scale", real_scale), ("imag_scale", imag_scale)):
        if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool) or not value >= 0:
            raise ValueError(f"{fn}: {key} must be a real number >= 0 (Re and Im of Lambda stay <= 0); got {value!r}")
    gen = _as_generator(fn, rng)
    M = N // 2
    n = np.arange(M, dtype=np.float64)

    real = gen.random((H, M)) if real_random else np.full((H, M), 0.5)
    base = M * gen.random((H, M)) if imag_random else np.broadcast_to(n, (H, M))
    if init in ("rand", "random"):
        imag = np.exp(gen.standard_normal((H, M)))
    elif init == "real":
        imag = np.zeros((H, M))
        real = M * gen.random((H, M)) if real_random else np.broadcast_to(n + 1.0, (H, M))
    elif init in ("lin", "linear"):
        imag = np.pi * base
    elif init in ("inv", "inverse"):  # asymptotics of the LegS spectrum
        imag = N / np.pi * (N / (2.0 * base + 1.0) - 1.0)
    elif init in ("inv2", "inverse2"):
        imag = N / np.pi * (N / (base + 1.0) - 1.0)
    elif init in ("quad", "quadratic"):
        imag = (2.0 * base + 1.0) ** 2 / np.pi
    else:  # legs / hippo: the exact LegS spectrum
        imag = np.broadcast_to(-nplr("legs", N)[0].imag, (H, M))
    Lambda = -real_scale * real - 1j * (imag_scale * imag)

    if B_init == "constant":
        B = np.ones((H, M), dtype=np.complex128)
    elif B_init == "random":
        B = (gen.standard_normal((H, M)) + 1j * gen.standard_normal((H, M))) / math.sqrt(2.0)
    elif B_init == "alternating":
        B = np.broadcast_to(np.where(np.arange(M) % 2 == 0, 1.0, -1.0), (H, M)).astype(np.complex128)
    elif B_init in ("unit-cw", "unit-ccw"):
        sign = -1.0 if B_init == "unit-cw" else 1.0
        B = np.broadcast_to(np.exp(sign * 2j * np.pi * n / N), (H, M)).copy()
    else:  # legs / hippo
        _, P_legs, B_legs, _ = nplr("legs", N, rank=rank)
        B = np.broadcast_to(0.5 * B_legs, (H, M)).copy()
    B = B * B_scale
    if normalize:
        zeta = 2.0 * np.sum(np.abs(B / Lambda) ** 2, axis=-1, keepdims=True)
        B = B / np.sqrt(zeta)

    if B_init in ("legs", "hippo"):
        P = np.broadcast_to(P_legs[:, None, :], (rank, H, M)).copy()
    else:
        P = (gen.standard_normal((rank, H, M)) + 1j * gen.standard_normal((rank, H, M))) / math.sqrt(2.0)
        P = P * P_scale
    return Lambda.astype(np.complex128), P.astype(np.complex128), B.astype(np.complex128)


# ------------------------------------------------------------------- basis functions


def _laguerre_functions(xp: Any, N: int, tau: Any, alpha: float = 0.0) -> Any:
    """exp(-tau/2) L_n^(alpha)(tau) for n < N, shape (N, *tau.shape), by the three-term recurrence.

    Running the recurrence on the weighted functions (bounded by 1 for alpha = 0) instead
    of multiplying a Vandermonde matrix of L_n by exp(-tau/2) afterwards avoids the
    inf * 0 = NaN of large ``tau`` and ``n``.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # NumPy's warnings; other namespaces have none
        rows = [xp.exp(-tau / 2.0)]
        if N > 1:
            rows.append((1.0 + alpha - tau) * rows[0])
        for n in range(1, N - 1):
            rows.append(((2 * n + 1 + alpha - tau) * rows[n] - (n + alpha) * rows[n - 1]) / (n + 1))
    out = xp.stack(rows, axis=0)
    return xp.where(xp.isinf(tau) & (tau > 0.0), 0.0, out)  # the limit of every Laguerre function


def _legendre_rows(xp: Any, x: Any, N: int) -> Any:
    """P_0(x) .. P_{N-1}(x), shape (N, *x.shape), in any namespace.

    numpy.polynomial.legendre.legvander's recurrence, operation for operation (same rounding).
    """
    rows = [x * 0.0 + 1.0]
    if N > 1:
        rows.append(x)
        for i in range(2, N):
            rows.append((rows[i - 1] * x * (2 * i - 1) - rows[i - 2] * (i - 1)) / i)
    return xp.stack(rows, axis=0)


def hippo_basis(measure: str, N: int, s: Any, *, t: float, **params: float) -> np.ndarray:
    r"""Basis functions in which a HiPPO state is a coefficient vector: ``u(s) ~ sum_n x_n(t) g_n(s)``.

    ``x(t)`` is the state at time ``t`` of :func:`hippo`'s system driven by ``u``; it is
    the projection ``x_n(t) = <u, g_n>`` in the measure's inner product, so
    ``sum_n x_n(t) g_n(s)`` is the best approximation of ``u`` on the window. Each
    ``g_n`` is zero outside its window. With :math:`\tau = t - s` (the lag):

    ============ ===================================================================
    measure      :math:`g_n(s)` and window
    ============ ===================================================================
    ``legs``     :math:`\sqrt{2n+1}\, P_n(2 s/t - 1)` on :math:`[0, t]`
    ``legt``     :math:`\sqrt{2n+1}\, P_n(1 - 2\tau/\theta)` on :math:`[t - \theta, t]`
    ``lmu``      :math:`P_n(2\tau/\theta - 1)` on :math:`[t - \theta, t]`
    ``lagt``     :math:`\beta^{-1} e^{-\tau/2} L_n(\tau)` for :math:`s \le t`
    ``glagt``    :math:`\kappa^{-1} \tau^\alpha e^{-(1-\beta)\tau/2} L^{(\alpha)}_n(\tau)/\ell_n`
                 for :math:`s \le t`, :math:`\ell_n^2 = \Gamma(n+\alpha+1)/n!`,
                 :math:`\kappa = \Gamma(1-\alpha)^{-1/2} \beta^{(1-\alpha)/2}`
    ``fout``,    ``[1, 0, sqrt2 cos(2 pi tau/theta), sqrt2 sin(2 pi tau/theta),``
    ``fourier2`` ``sqrt2 cos(4 pi tau/theta), ...]`` on :math:`[t - \theta, t]`
    ============ ===================================================================

    (``P_n`` Legendre, ``L_n`` Laguerre polynomials.) For the windowed measures the
    projection uses the uniform probability measure ``ds/theta`` (``ds/t`` for LegS), in
    which the ``g_n`` are orthonormal; LagT projects the whole history in :math:`L^2`.
    ``legsd``, ``fourier_decay`` and ``foud`` have no projection interpretation and are
    refused.

    Parameters
    ----------
    measure : str
        ``legs, legt, lmu, lagt, glagt, fout (fourier), fourier2``.
    N : int
        State size (even for Fourier).
    s : array_like of float
        Times at which to evaluate, any shape.
    t : float
        Current time (end of the window); ``t > 0`` for ``legs``.
    **params : float
        As for :func:`hippo` (same defaults, e.g. ``theta = 2`` for ``legt``).

    Returns
    -------
    ndarray, shape ``(N, *s.shape)``, float64
        Row ``n`` is the basis function :math:`g_n` evaluated at ``s``.

    Raises
    ------
    ValueError
        If ``measure`` is unknown or has no projection interpretation, a parameter
        is out of range, ``N`` is invalid for the measure, or ``t`` is not finite
        (or not positive for ``legs``).
    TypeError
        If ``s`` is complex or non-numeric, ``t`` is not a real number, ``N`` is
        not an integer, or a keyword parameter is not one the measure takes.

    See Also
    --------
    hippo_reconstruct : Sum the basis functions weighted by HiPPO coefficients.
    hippo : The state matrices whose state holds these coefficients.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import hippo_basis
    >>> hippo_basis("legs", 3, [0.0, 0.5, 1.0], t=1.0)  # sqrt(2n+1) P_n(2s/t - 1)
    array([[ 1.        ,  1.        ,  1.        ],
           [-1.73205081,  0.        ,  1.73205081],
           [ 2.23606798, -1.11803399,  2.23606798]])
    """
    fn = "hippo_basis"
    # recurrences and elementwise maths: device-neutral (array API standard)
    return _checked_basis(fn, select(fn, s), measure, N, s, t, params)


def _checked_basis(fn: str, t_: Target, measure: Any, N: Any, s: Any, t: Any, params: dict[str, Any]) -> Any:
    """Validate the basis arguments (errors name the public function ``fn``), then evaluate."""
    name, p = _measure(fn, measure, params, allowed=_WITH_BASIS)
    N = _check_N(fn, name, N, even=name in _FOURIER)
    s = t_.xp.astype(as_float_array(fn, "s", s, complex_ok=False, target=t_), t_.xp.float64)
    t = _check_time(fn, t, positive=name == "legs")
    return _basis(t_, name, N, s, t, p)


def _check_time(fn: str, t: Any, *, positive: bool) -> float:
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: t must be a real number; got {type(t).__name__} {t!r}")
    t = float(t)
    if not math.isfinite(t) or (positive and t <= 0.0):
        window = " and > 0 (the LegS window is [0, t])" if positive else ""
        raise ValueError(f"{fn}: t must be finite{window}; got {t!r}")
    return t


def _basis(target: Target, name: str, N: int, s: Any, t: float, p: dict[str, float]) -> Any:
    xp = target.xp
    shape = tuple(s.shape)
    s = xp.reshape(s, (-1,))  # work on (N, S)
    tau = t - s
    n = xp.arange(N, dtype=xp.float64, device=target.device)[:, None]
    if name == "legs":
        G = xp.sqrt(2.0 * n + 1.0) * _legendre_rows(xp, 2.0 * s / t - 1.0, N)
        outside = (s < 0.0) | (s > t)
    elif name in ("legt", "lmu"):
        th = p["theta"]
        if name == "legt":
            G = xp.sqrt(2.0 * n + 1.0) * _legendre_rows(xp, 1.0 - 2.0 * tau / th, N)
        else:
            G = _legendre_rows(xp, 2.0 * tau / th - 1.0, N)
        outside = (tau < 0.0) | (tau > th)
    elif name == "lagt":
        G = _laguerre_functions(xp, N, xp.where(tau < 0.0, 0.0, tau)) / p["beta"]
        outside = tau < 0.0
    elif name == "glagt":
        from scipy import special

        a, beta = p["alpha"], p["beta"]
        tt = xp.where(tau < 0.0, 1.0, tau)
        # normalisations depend on n only: computed on the host (SciPy), then moved once
        nh = np.arange(N, dtype=np.float64)[:, None]
        ell = target.asarray(np.exp(0.5 * (special.gammaln(nh + a + 1.0) - special.gammaln(nh + 1.0))))
        kappa = math.exp(-0.5 * special.gammaln(1.0 - a)) * beta ** ((1.0 - a) / 2.0)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            G = _laguerre_functions(xp, N, tt, a) * (tt**a * xp.exp(beta * tt / 2.0)) / (ell * kappa)
        outside = tau < 0.0
    else:  # fout, fourier2: [1, 0, sqrt2 cos, sqrt2 sin, ...] of the lag
        th = p["theta"]
        k = xp.arange(N // 2, dtype=xp.float64, device=target.device)[:, None]
        cos = math.sqrt(2.0) * xp.cos(2.0 * np.pi * k * tau / th)
        sin = math.sqrt(2.0) * xp.sin(2.0 * np.pi * k * tau / th)
        G = xp.reshape(xp.stack([cos, sin], axis=1), (N, -1))  # rows cos_0, sin_0, cos_1, ...
        first = xp.where(xp.isnan(tau), tau, 1.0)  # NaN stays NaN
        G = xp.concat([first[None, :], G[1:, :]], axis=0)
        outside = (tau < 0.0) | (tau > th)
    G = xp.where(outside[None, :], 0.0, G)
    return xp.reshape(G, (N,) + shape)


def hippo_reconstruct(measure: str, c: Any, s: Any, *, t: float, **params: float) -> np.ndarray:
    r"""Evaluate ``u(s) ~ sum_n c_n g_n(s)`` from HiPPO coefficients ``c`` (state at time ``t``).

    ``g_n`` are the basis functions of :func:`hippo_basis`; ``N`` is ``c.shape[-1]``.

    Parameters
    ----------
    measure : str
        As for :func:`hippo_basis`.
    c : array_like, shape (..., N), real
        Coefficients, e.g. a row of :func:`hippo_online_coefficients`.
    s : array_like of float
        Evaluation times, any shape.
    t : float
        The time at which ``c`` is the state.
    **params : float
        As for :func:`hippo`.

    Returns
    -------
    ndarray, shape ``(..., *s.shape)``, float64
        The reconstruction at the times ``s``, for every leading index of ``c``.

    Raises
    ------
    ValueError
        If ``measure`` is unknown or has no projection interpretation, a parameter
        is out of range, ``c``'s length N is invalid for the measure, or ``t`` is
        not finite (or not positive for ``legs``).
    TypeError
        If ``c`` or ``s`` is complex or non-numeric, ``t`` is not a real number,
        or a keyword parameter is not one the measure takes.

    See Also
    --------
    hippo_basis : The basis functions :math:`g_n`.
    hippo_online_coefficients : Coefficients of a sampled signal over time.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import hippo_reconstruct
    >>> c = np.array([1.0, 0.0, 0.0, 0.0])        # the LegS state of a constant 1
    >>> hippo_reconstruct("legs", c, [0.1, 0.7], t=1.0)
    array([1., 1.])
    """
    fn = "hippo_reconstruct"
    # the basis evaluation and one contraction: device-neutral (array API standard)
    t_ = select(fn, c, s)
    xp = t_.xp
    c = xp.astype(as_float_array(fn, "c", c, complex_ok=False, min_ndim=1, expected="(..., N)", target=t_),
                  xp.float64)
    if t_.kind != "numpy" and array_kind(s) is None:
        s = t_.asarray(s, dtype=xp.float64)  # plain Python times join the coefficients' device
    G = _checked_basis(fn, t_, measure, c.shape[-1], s, t, params)
    return xp.tensordot(c, G, axes=([-1], [0]))


# ---------------------------------------------------------------- online projection

_ONLINE_METHODS = ("bilinear", "zoh", "forward", "euler", "backward")

# NumPy only: a sequential float64 loop of SciPy triangular solves / matrix exponentials,
# one state at a time. A device version would be a scan (ssmcore.lti_simulate does that),
# not this demo loop, so CuPy input gets the dispatcher's uniform error, never a silent
# host copy.
declare_backends("hippo_online_coefficients", ("numpy",))


def _select_numpy_only(fn: str, *arrays: Any) -> Target:
    """:func:`select` for a function declared ``("numpy",)``.

    NumPy input asks for the "numpy" backend explicitly (the default for NumPy arrays is
    Numba, which such a function does not declare); CuPy input keeps the default, so the
    dispatcher raises its uniform "no CuPy kernel yet" error; array-api-strict input (the
    test namespace) runs the NumPy code through the host bridge's explicit copies, as the
    kernels do.
    """
    cupy_input = any(array_kind(a) == "cupy" for a in arrays)
    return select(fn, *arrays, backend=None if cupy_input else "numpy")


def _step_matrices(A: np.ndarray, B: np.ndarray, h: float, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(Ad, Bd) of x' = A x + B u over a step h (SSM convention, input held over the step)."""
    N = A.shape[0]
    eye = np.eye(N)
    if method == "bilinear":
        M = eye - (h / 2.0) * A
        sol = np.linalg.solve(M, np.column_stack([eye + (h / 2.0) * A, h * B]))
        return sol[:, :N], sol[:, N]
    if method in ("forward", "euler"):
        return eye + h * A, h * B
    if method == "backward":
        M = eye - h * A
        sol = np.linalg.solve(M, np.column_stack([eye, h * B]))
        return sol[:, :N], sol[:, N]
    from scipy import linalg  # zoh: augmented matrix exponential, fine for singular A

    aug = np.zeros((N + 1, N + 1))
    aug[:N, :N] = h * A
    aug[:N, N] = h * B
    E = linalg.expm(aug)
    return E[:N, :N], E[:N, N]


def hippo_online_coefficients(
    measure: str,
    u: Any,
    N: int,
    *,
    dt: float | None = None,
    theta: float | None = None,
    method: str = "bilinear",
    **params: float,
) -> np.ndarray:
    r"""Run a HiPPO measure over a sampled signal; the state after every sample.

    A readable float64 loop (not a kernel), meant for demos, tests and small data.
    Sample ``k = 1 .. L`` (``u[..., k-1]``) is taken at time ``t_k = k dt`` and enters
    the state at once (SSM convention ``x_k = Ad_k x_{k-1} + Bd_k u_k``, ``x_0 = 0``).

    * ``legs`` (scale-invariant, ``x' = (1/t)(A x + B u)``): ``dt`` plays no role.
      ``bilinear`` (default) is HiPPO/S4's ``HiPPOScale`` step with ``1/t = 1/k``:
      ``Ad_k = (I - A/(2k))^{-1} (I + A/(2k))``, ``Bd_k = (I - A/(2k))^{-1} B/k``;
      ``forward``: ``I + A/k, B/k``; ``backward``: ``(I - A/k)^{-1}, (I - A/k)^{-1} B/k``;
      ``zoh``: exact for the staircase input ``u(s) = u_k`` on ``((k-1) dt, k dt]``:
      in log-time the system is LTI, so ``Ad_k = expm(A log(k/(k-1)))`` and
      ``Bd_k = int_0^{log(k/(k-1))} expm(A r) dr B`` (``x_1 = -A^{-1} B u_1``, the
      projection of a constant).
    * Every other measure is LTI: ``(Ad, Bd)`` of ``(A, B)`` over the step ``dt`` by
      ``bilinear`` (S4's ``(I - dt A/2)^{-1}(I + dt A/2)``, ``(I - dt A/2)^{-1} dt B``),
      ``zoh`` (exact for the staircase input), ``forward`` or ``backward``.

    The state ``x_k`` then approximates the projection of the signal on the measure's
    window ending at ``t_k`` (``[0, t_k]`` for LegS, ``[t_k - theta, t_k]`` for LegT), so
    ``hippo_reconstruct(measure, x_k, s, t=k*dt, theta=theta)`` approximates ``u(s)``.

    Parameters
    ----------
    measure : str
        Any measure of :func:`hippo`.
    u : array_like, shape (..., L), real
        Signal, time last.
    N : int
        State size.
    dt : float, optional
        Sample spacing; required except for ``legs``.
    theta : float, optional
        Window length for ``legt``, ``lmu`` and the windowed Fourier measures (in the
        time unit of ``dt``; default as :func:`hippo`).
    method : {"bilinear", "zoh", "forward", "euler", "backward"}, optional
        Discretisation of each step (``euler`` is ``forward``), as described above.
    **params : float
        Other measure parameters (``beta``, ``alpha``).

    Returns
    -------
    ndarray, shape (..., L, N), float64
        ``x_1 .. x_L``.

    Raises
    ------
    ValueError
        If ``measure`` or ``method`` is unknown, a parameter is out of range,
        ``N`` is invalid for the measure, or ``dt`` is missing (for a measure
        other than ``legs``) or not positive and finite.
    TypeError
        If ``u`` is complex or non-numeric, ``N`` is not an integer, or a keyword
        parameter is not one the measure takes; also (as
        ``UnsupportedBackendError``) for CuPy input, which has no kernel yet.

    See Also
    --------
    hippo_reconstruct : Turn a row of the result back into a signal.
    hippo : The state matrices ``(A, B)`` being run.
    lti_simulate : Fast simulation of a fixed discrete LTI system.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import hippo_online_coefficients, hippo_reconstruct
    >>> L = 1000; t = np.arange(1, L + 1) / L            # samples on (0, 1]
    >>> u = np.sin(6 * t) + t**2
    >>> x = hippo_online_coefficients("legs", u, 32)   # (L, 32)
    >>> u_hat = hippo_reconstruct("legs", x[-1], t, t=1.0)
    >>> bool(np.max(np.abs(u_hat - u)[10:-10]) < 1e-2)
    True
    """
    fn = "hippo_online_coefficients"
    target = _select_numpy_only(fn, u)
    method = check_choice(fn, "method", method, _ONLINE_METHODS)
    if theta is not None:
        params = {**params, "theta": theta}
    name, p = _measure(fn, measure, params)
    N = _check_N(fn, name, N, even=name in _FOURIER)
    u = as_float_array(fn, "u", u, complex_ok=False, min_ndim=1, expected="(..., L)", target=target)
    if name != "legs" and dt is None:
        raise ValueError(f"{fn}: dt is required for measure {name!r} (an LTI system); only 'legs' is step-free")
    h = None if name == "legs" else float(check_dt(fn, dt))
    if target.kind == "strict":  # explicit host copies in and out, as for the CPU kernels
        from .backends.host import HostBridge

        return HostBridge(sys.modules[__name__], target.xp, target.device)._online(name, p, N, u, h, method)
    return _online(name, p, N, u, h, method)


def _online(name: str, p: dict[str, float], N: int, u: np.ndarray, h: float | None, method: str) -> np.ndarray:
    """The loop of :func:`hippo_online_coefficients` on validated NumPy input."""
    u = np.asarray(u, dtype=np.float64)
    A, B = _build(name, N, p)
    L = u.shape[-1]
    out = np.empty(u.shape[:-1] + (L, N))
    x = np.zeros(u.shape[:-1] + (N,))
    if name == "legs":
        from scipy.linalg import solve_triangular

        eye = np.eye(N)
        for k in range(1, L + 1):
            uk = u[..., k - 1, None]
            if method in ("bilinear", "backward"):
                # implicit steps: one O(N^2) triangular solve (A is lower triangular), no N x N inverse
                half = 0.5 if method == "bilinear" else 1.0
                rhs = x + (1.0 - half) / k * (x @ A.T) + uk * (B / k)
                x = solve_triangular(eye - (half / k) * A, rhs.reshape(-1, N).T, lower=True,
                                     check_finite=False).T.reshape(x.shape)
            else:
                Ad, Bd = _legs_step(A, B, k, method)
                x = x @ Ad.T + uk * Bd
            out[..., k - 1, :] = x
        return out
    Ad, Bd = _step_matrices(A, B, h, method)
    for k in range(L):
        x = x @ Ad.T + u[..., k, None] * Bd
        out[..., k, :] = x
    return out


def _legs_step(A: np.ndarray, B: np.ndarray, k: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """LegS step k (1-based) for zoh and forward: from t = k - 1 to t = k (unit spacing)."""
    if method == "zoh":
        if k == 1:  # from t = 0: the state is the projection of the constant u_1
            return np.zeros_like(A), np.linalg.solve(A, -B)
        return _step_matrices(A, B, math.log(k / (k - 1.0)), "zoh")
    # forward Euler evaluates the 1/t factor at the new time t = k, like HiPPOScale
    return _step_matrices(A / k, B / k, 1.0, method)
