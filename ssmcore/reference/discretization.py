"""NumPy specification of the discretisation kernels (readable, float64/complex128).

Diagonal (elementwise) discretisation
-------------------------------------
With x = Lambda * dt, every method is a pair of scalar functions (ad(x), beta(x)):

    Ad = ad(x),    Bd = dt * beta(x) * B

=========== ================================ ====================================
method      ad(x)                            beta(x)
=========== ================================ ====================================
zoh         exp(x)                           phi1(x)
zoh_euler   exp(x)                           1            (Mamba)
foh         exp(x)                           phi1 - phi2 + exp(x) phi2
impulse     exp(x)                           exp(x)
gbt(alpha)  (1 + (1-alpha) x)/(1 - alpha x)  1/(1 - alpha x)
=========== ================================ ====================================

with the phi functions phi_k(x) = sum_j x^j / (j + k)!:
phi1 = expm1(x)/x, phi2 = (phi1 - 1)/x, phi3 = (phi2 - 1/2)/x. Their derivatives
follow from phi_k' = phi_k - k phi_{k+1} (and exp' = exp), which the backward uses.

Near x = 0 the closed forms cancel, so |x| < ``PHI_SERIES_RADIUS`` uses the Taylor
series of phi3 and the recurrences phi2 = 1/2 + x phi3, phi1 = 1 + x phi2 (no
cancellation for |x| < 1). Away from 0, a complex ``expm1`` written as
expm1(a) cos b - 2 sin^2(b/2) + i e^a sin b keeps the small real part of e^x - 1
accurate near x = 2 pi i k, where exp(x) - 1 would cancel.

Dense matrix exponential
------------------------
The reference ``expm`` is :func:`scipy.linalg.expm` (a Python loop over the stack
inside SciPy); the Numba backend supplies a batched kernel of the same name.

The functions here take already validated, broadcast arrays: ``A`` and ``dt`` of
shape (R, N) and ``B`` of shape (R, N, M); the front door
(:mod:`ssmcore._discretization`) owns shapes, dtypes and errors.
"""

from __future__ import annotations

from math import factorial

import numpy as np

# The kernel contract (every backend module has these functions, same parameters) and
# the constants shared with the kernels. ``expm1`` and ``phi_functions`` are shared
# maths helpers of the reference and the front doors (namespace-generic via ``xp``),
# not kernels: backends do not re-implement them.
__all__ = [
    "GBT",
    "METHOD_CODES",
    "PHI_SERIES_RADIUS",
    "discretize_diag_bwd",
    "discretize_diag_fwd",
    "expm",
]

# Integer codes shared with the Numba kernels (which cannot take strings cheaply).
ZOH, ZOH_EULER, FOH, IMPULSE, GBT = 0, 1, 2, 3, 4
METHOD_CODES = {"zoh": ZOH, "zoh_euler": ZOH_EULER, "foh": FOH, "impulse": IMPULSE, "gbt": GBT}

PHI_SERIES_RADIUS = 1.0
# Taylor coefficients of phi3, highest order first (Horner). 17 terms: the first
# omitted one, x^17/20!, is below 1e-18 of phi3(0) = 1/6 for |x| < 1.
PHI3_TAYLOR = tuple(1.0 / factorial(j + 3) for j in reversed(range(17)))


def expm1(x: np.ndarray, xp=None) -> np.ndarray:
    """exp(x) - 1, accurate for real and complex x (also near x = 2 pi i k).

    ``xp`` is the array namespace of ``x`` (NumPy when omitted): the same code
    runs on CuPy and array-API-strict arrays (the convolution front door uses it).
    """
    if xp is None:
        xp = np
        x = np.asarray(x)
    if not (x.dtype == xp.complex128 or x.dtype == xp.complex64):  # cheaper than xp.isdtype
        return xp.expm1(x)
    a, b = xp.real(x), xp.imag(x)
    s = xp.sin(0.5 * b)
    return (xp.expm1(a) * xp.cos(b) - 2.0 * s * s) + 1j * (xp.exp(a) * xp.sin(b))


def phi_functions(x: np.ndarray, xp=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(exp(x), phi1(x), phi2(x), phi3(x)) elementwise, stable for every x (real or complex).

    ``xp``: the array namespace of ``x`` (NumPy when omitted), as for :func:`expm1`.
    """
    if xp is None:
        xp = np
        x = np.asarray(x)
    small = xp.abs(x) < PHI_SERIES_RADIUS  # False for NaN: NaN takes the closed form and stays NaN
    with np.errstate(all="ignore"):
        # series branch (evaluated everywhere, used where |x| < 1)
        p3s = xp.zeros_like(x)
        for c in PHI3_TAYLOR:
            p3s = p3s * x + c
        p2s = 0.5 + x * p3s
        p1s = 1.0 + x * p2s
        # closed-form branch (used where |x| >= 1)
        p1c = expm1(x, xp) / x
        p2c = (p1c - 1.0) / x
        p3c = (p2c - 0.5) / x
    return xp.exp(x), xp.where(small, p1s, p1c), xp.where(small, p2s, p2c), xp.where(small, p3s, p3c)


def _coefficients(x: np.ndarray, method: int, alpha: float, derivatives: bool):
    """(ad, beta) -- and with ``derivatives`` also (ad', beta') -- as functions of x."""
    one = np.ones_like(x)
    if method == GBT:
        d = 1.0 - alpha * x
        with np.errstate(divide="ignore", invalid="ignore"):
            ad = (1.0 + (1.0 - alpha) * x) / d
            beta = 1.0 / d
            # d/dx of (1 + (1-alpha) x)/(1 - alpha x) simplifies to 1/d^2.
            return (ad, beta, beta * beta, alpha * beta * beta) if derivatives else (ad, beta)
    if method == ZOH_EULER:
        e = np.exp(x)
        return (e, one, e, 0.0 * one) if derivatives else (e, one)
    if method == IMPULSE:
        e = np.exp(x)
        return (e, e, e, e) if derivatives else (e, e)
    e, p1, p2, p3 = phi_functions(x)
    if method == ZOH:
        return (e, p1, e, p1 - p2) if derivatives else (e, p1)
    if method == FOH:
        beta = p1 - p2 + e * p2
        dbeta = p1 - 2.0 * p2 + 2.0 * p3 + 2.0 * e * (p2 - p3)
        return (e, beta, e, dbeta) if derivatives else (e, beta)
    raise ValueError(f"unknown method code {method}")


def discretize_diag_fwd(A: np.ndarray, dt: np.ndarray, B: np.ndarray, method: int, alpha: float):
    """Ad (R, N) = ad(A dt); Bd (R, N, M) = dt beta(A dt) B."""
    x = A * dt
    ad, beta = _coefficients(x, method, alpha, derivatives=False)
    return ad, (dt * beta)[..., None] * B


def discretize_diag_bwd(
    A: np.ndarray, dt: np.ndarray, B: np.ndarray, method: int, alpha: float, gAd: np.ndarray, gBd: np.ndarray
):
    """Pullback of :func:`discretize_diag_fwd` before broadcasting is undone.

    Returns (gA, gdt, gB) of shapes (R, N), (R, N), (R, N, M), in the project's
    convention (transpose of the linearisation, no conjugation). With
    s = sum_m gBd B, the cotangent of x = A dt is gx = gAd ad'(x) + s dt beta'(x);
    then gA = gx dt, gdt = gx A + s beta(x), gB = gBd dt beta(x).
    """
    x = A * dt
    ad, beta, dad, dbeta = _coefficients(x, method, alpha, derivatives=True)
    s = np.sum(gBd * B, axis=-1)
    gx = gAd * dad + s * dt * dbeta
    return gx * dt, gx * A + s * beta, gBd * (dt * beta)[..., None]


def expm(Z: np.ndarray) -> np.ndarray:
    """Matrix exponential of a stack (..., n, n): SciPy's, slice by slice."""
    from scipy.linalg import expm as scipy_expm

    return scipy_expm(Z)
