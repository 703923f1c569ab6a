"""Diagonal state-matrix and step-size initialisations of S4D, Mamba, Mamba-2 and LRU.

Every function of sizes and options returns float64 or complex128 NumPy arrays (cast
them to the training dtype yourself, and move them to a device with e.g.
``cupy.asarray``): this is set-up code, run once, and NumPy's random generators are
the reproducible source of the random ones. Every random one takes ``rng``: a
:class:`numpy.random.Generator`, an integer seed or None, normalised by
:func:`numpy.random.default_rng`, so a seed reproduces the same numbers.

The two functions of arrays, :func:`lru_lambda` and :func:`inverse_softplus`, are
elementwise maths written with the inputs' array namespace (array API standard):
CuPy input gives CuPy output on the same device, without a host copy.

Sign convention of the complex inits (S4D): ``N`` is the full real state size and
``N/2`` complex modes are returned, one of each conjugate pair, with negative
imaginary parts as the S4 code stores them (``A = -real - i imag``). The S4D paper and
S4's minimal ``s4d.py`` write the conjugate (``+ i pi n``); both give the same real
kernel ``2 Re(sum_n C_n B_n ...)``. Use ``np.conj`` to switch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._xp import broadcast_shapes
from .dispatch import select
from .validation import as_float_array, check_bool, check_int

__all__ = [
    "dt_init",
    "inverse_softplus",
    "lru_lambda",
    "lru_ring_init",
    "mamba2_A_log",
    "mamba_A_log",
    "mamba_dt_bias",
    "s4d_inv",
    "s4d_legs",
    "s4d_lin",
    "s4d_real",
]


def _as_generator(fn: str, rng: Any) -> np.random.Generator:
    """``np.random.default_rng(rng)`` with the project's error style."""
    if isinstance(rng, (bool, np.bool_)) or isinstance(rng, np.random.RandomState):
        raise TypeError(f"{fn}: rng must be a numpy.random.Generator, an int seed or None; got {type(rng).__name__}")
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{fn}: rng must be a numpy.random.Generator, an int seed or None; got {type(rng).__name__} ({exc})"
        ) from None


def _half(fn: str, N: Any) -> int:
    """N/2 for a full state size N that must be even."""
    N = check_int(fn, "N", N, minimum=2)
    if N % 2:
        raise ValueError(f"{fn}: N must be even (N/2 conjugate-pair modes); got N={N}")
    return N // 2


def _real(fn: str, name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: {name} must be a real number; got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{fn}: {name} must be finite; got {v!r}")
    return v


def _size(fn: str, name: str, value: Any) -> tuple[int, ...]:
    """An output size: an int >= 0 or a tuple of them."""
    if isinstance(value, tuple):
        return tuple(check_int(fn, name, v, minimum=0) for v in value)
    return (check_int(fn, name, value, minimum=0),)


# ---------------------------------------------------------------- S4D diagonal inits


def s4d_lin(N: int) -> np.ndarray:
    r"""S4D-Lin: :math:`\Lambda_n = -\tfrac12 - i\pi n`, :math:`n = 0, \dots, N/2 - 1`.

    Parameters
    ----------
    N : int
        Even full state size.

    Returns
    -------
    ndarray, shape (N/2,), complex128
        Negative imaginary parts (S4 code); the paper writes the conjugate.

    Raises
    ------
    ValueError
        If ``N`` is odd or below 2.
    TypeError
        If ``N`` is not an integer.

    See Also
    --------
    s4d_inv : S4D-Inv, imaginary parts following the LegS spectrum.
    s4d_legs : S4D-LegS, the diagonal of HiPPO-LegS's NPLR form.
    s4d_real : S4D-Real, real modes.
    ssm_kernel_diag : The convolution kernel of a diagonal SSM with these modes.

    Examples
    --------
    >>> from ssmcore import s4d_lin
    >>> s4d_lin(6)
    array([-0.5+0.j        , -0.5-3.14159265j, -0.5-6.28318531j])
    """
    M = _half("s4d_lin", N)
    return -0.5 - 1j * np.pi * np.arange(M, dtype=np.float64)


def s4d_inv(N: int) -> np.ndarray:
    r"""S4D-Inv: :math:`\Lambda_n = -\tfrac12 - i \tfrac{N}{\pi}\left(\tfrac{N}{2n+1} - 1\right)`.

    ``N`` is the full state size (``N = 64`` gives imaginary parts
    ``-1283.43, -414.23, -240.39, ..., -0.3234``); the form follows the asymptotics of
    the HiPPO-LegS spectrum.

    Parameters
    ----------
    N : int
        Even full state size.

    Returns
    -------
    ndarray, shape (N/2,), complex128

    Raises
    ------
    ValueError
        If ``N`` is odd or below 2.
    TypeError
        If ``N`` is not an integer.

    See Also
    --------
    s4d_lin : S4D-Lin, linearly spaced imaginary parts.
    s4d_legs : S4D-LegS, the exact LegS diagonal that S4D-Inv approximates.
    s4d_real : S4D-Real, real modes.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import s4d_inv
    >>> lam = s4d_inv(64)
    >>> [round(float(v), 2) for v in lam.imag[:3]], round(float(lam.imag[-1]), 4)
    ([-1283.43, -414.23, -240.39], -0.3234)
    """
    M = _half("s4d_inv", N)
    n = np.arange(M, dtype=np.float64)
    return -0.5 - 1j * (N / np.pi) * (N / (2.0 * n + 1.0) - 1.0)


def s4d_legs(N: int) -> np.ndarray:
    r"""S4D-LegS: the diagonal part :math:`\Lambda` of the NPLR form of HiPPO-LegS.

    Equal to ``nplr("legs", N)[0]``: real parts ``-1/2``, imaginary parts the
    eigenvalues of the skew part of ``A_legs + P P^T`` (negative half, ascending).

    Parameters
    ----------
    N : int
        Even full state size.

    Returns
    -------
    ndarray, shape (N/2,), complex128

    Raises
    ------
    ValueError
        If ``N`` is odd or below 2.
    TypeError
        If ``N`` is not an integer.

    See Also
    --------
    s4d_lin : S4D-Lin, linearly spaced imaginary parts.
    s4d_inv : S4D-Inv, a closed-form approximation of this spectrum.
    nplr : The full NPLR form (Lambda, P, B, V) of a HiPPO matrix.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import s4d_legs
    >>> np.round(s4d_legs(8), 4)
    array([-0.5-19.8574j, -0.5 -5.3542j, -0.5 -1.9578j, -0.5 -0.4275j])
    """
    from ._hippo import nplr  # hippo imports this module; import late to avoid a cycle

    _half("s4d_legs", N)
    return nplr("legs", N)[0]


def s4d_real(N: int) -> np.ndarray:
    r"""S4D-Real: :math:`\Lambda_n = -(n + 1)`, :math:`n = 0, \dots, N - 1` (real modes, the LegS diagonal).

    Unlike the complex inits this returns ``N`` real modes (as Mamba uses them); S4's
    ``dplr(init="real")`` keeps ``N/2`` of them as complex numbers with zero imaginary
    part.

    Parameters
    ----------
    N : int
        Number of real modes, ``N >= 1``.

    Returns
    -------
    ndarray, shape (N,), float64

    Raises
    ------
    ValueError
        If ``N`` is below 1.
    TypeError
        If ``N`` is not an integer.

    See Also
    --------
    s4d_lin : S4D-Lin, complex modes with linearly spaced imaginary parts.
    mamba_A_log : The same spectrum in Mamba's ``A_log`` parameterisation.

    Examples
    --------
    >>> from ssmcore import s4d_real
    >>> s4d_real(4)
    array([-1., -2., -3., -4.])
    """
    N = check_int("s4d_real", "N", N, minimum=1)
    return -(np.arange(N, dtype=np.float64) + 1.0)


def mamba_A_log(D: int, N: int) -> np.ndarray:
    r"""Mamba-1's ``A_log`` (S4D-Real): ``A_log[d, n] = log(n + 1)``, so ``A = -exp(A_log)``.

    Parameters
    ----------
    D : int
        Number of channels (``d_inner``).
    N : int
        State size (``d_state``, 16 in Mamba).

    Returns
    -------
    ndarray, shape (D, N), float64
        Mamba keeps it in float32; cast with ``.astype(np.float32)``.

    Raises
    ------
    ValueError
        If ``D`` or ``N`` is below 1.
    TypeError
        If ``D`` or ``N`` is not an integer.

    See Also
    --------
    mamba2_A_log : Mamba-2's one scalar per head.
    s4d_real : The same eigenvalues :math:`-(n + 1)` as a vector.
    selective_scan : The scan that takes ``A = -exp(A_log)``.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import mamba_A_log
    >>> A_log = mamba_A_log(2, 3)
    >>> -np.exp(A_log)
    array([[-1., -2., -3.],
           [-1., -2., -3.]])
    """
    D = check_int("mamba_A_log", "D", D, minimum=1)
    N = check_int("mamba_A_log", "N", N, minimum=1)
    return np.repeat(np.log(np.arange(1, N + 1, dtype=np.float64))[None, :], D, axis=0)


def mamba2_A_log(H: int, A_init_range: tuple[float, float] = (1.0, 16.0), rng: Any = None) -> np.ndarray:
    r"""Mamba-2's ``A_log``: one scalar per head, ``A_log = log(U[lo, hi])``, ``A = -exp(A_log)``.

    Parameters
    ----------
    H : int
        Number of heads.
    A_init_range : (float, float), optional
        ``(lo, hi)`` with ``0 < lo <= hi``; Mamba-2's default ``(1, 16)``.
    rng : numpy.random.Generator, int or None, optional
        Source of randomness, passed to :func:`numpy.random.default_rng`: a seed
        reproduces the same numbers.

    Returns
    -------
    ndarray, shape (H,), float64

    Raises
    ------
    ValueError
        If ``H`` is negative or ``A_init_range`` does not satisfy ``0 < lo <= hi``.
    TypeError
        If ``H`` is not an integer, ``A_init_range`` is not a pair, or
        ``rng`` is not a Generator, an int seed or None (a legacy
        ``RandomState`` or a bool is refused).

    See Also
    --------
    mamba_A_log : Mamba-1's per-channel, per-state ``A_log``.
    ssd : The Mamba-2 scan that takes ``A = -exp(A_log)``.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import mamba2_A_log
    >>> A = -np.exp(mamba2_A_log(8, rng=0))
    >>> bool(np.all((A <= -1) & (A >= -16)))
    True
    """
    fn = "mamba2_A_log"
    H = check_int(fn, "H", H, minimum=0)
    try:
        lo, hi = A_init_range
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: A_init_range must be a pair (lo, hi); got {A_init_range!r}") from None
    lo, hi = _real(fn, "A_init_range[0]", lo), _real(fn, "A_init_range[1]", hi)
    if not 0.0 < lo <= hi:
        raise ValueError(f"{fn}: A_init_range must satisfy 0 < lo <= hi; got ({lo!r}, {hi!r})")
    gen = _as_generator(fn, rng)
    return np.log(gen.uniform(lo, hi, size=H))


# ---------------------------------------------------------------------------- LRU


def lru_ring_init(
    N: int, r_min: float = 0.0, r_max: float = 1.0, max_phase: float = 6.28, rng: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""LRU eigenvalues uniform on a ring (Orvieto et al. 2023), in the LRU's log parameters.

    With :math:`u_1, u_2 \sim U[0, 1)`:

    .. math::

        \nu = -\tfrac12 \log\!\left(u_1 (r_{max}^2 - r_{min}^2) + r_{min}^2\right), \quad
        \theta = \mathrm{max\_phase}\; u_2, \quad
        \Lambda = e^{-\nu + i\theta}, \quad \gamma = \sqrt{1 - |\Lambda|^2},

    so :math:`|\Lambda|^2 \sim U[r_{min}^2, r_{max}^2]` (uniform in area on the annulus)
    and :math:`\arg\Lambda \sim U[0, \mathrm{max\_phase})`. Returned as the LRU stores
    them: ``nu_log = log(nu)``, ``theta_log = log(theta)``, ``gamma_log = log(gamma)``
    (``gamma_log`` is a trainable parameter of its own in the LRU, not recomputed).

    Parameters
    ----------
    N : int
        Number of (complex) modes, ``N >= 0``.
    r_min, r_max : float, optional
        Ring radii, ``0 <= r_min <= r_max <= 1``.
    max_phase : float, optional
        Largest phase, ``> 0``. The default 6.28 is the LRU code's (not exactly
        ``2 pi``); the paper tunes it per task (e.g. ``pi/10`` for long range).
    rng : numpy.random.Generator, int or None, optional
        Source of randomness, passed to :func:`numpy.random.default_rng`: a seed
        reproduces the same numbers.

    Returns
    -------
    nu_log, theta_log, gamma_log : ndarray, shape (N,), float64
        ``u_1 = 0`` with ``r_min = 0`` gives ``nu_log = +inf`` (``Lambda = 0``);
        ``u_2 = 0`` gives ``theta_log = -inf`` (phase 0); ``r_max = 1`` admits
        ``gamma_log -> -inf``. These have probability ~0 but are not errors.

    Raises
    ------
    ValueError
        If ``N`` is negative, the radii do not satisfy
        ``0 <= r_min <= r_max <= 1``, or ``max_phase <= 0``.
    TypeError
        If ``N`` is not an integer, a radius or ``max_phase`` is not a real
        number, or ``rng`` is not a Generator, an int seed or None.

    See Also
    --------
    lru_lambda : The eigenvalues from the returned ``nu_log`` and ``theta_log``.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import lru_lambda, lru_ring_init
    >>> nu_log, theta_log, gamma_log = lru_ring_init(16, r_min=0.9, r_max=0.999, rng=0)
    >>> r = np.abs(lru_lambda(nu_log, theta_log))
    >>> bool(np.all((r >= 0.9) & (r <= 0.999)))
    True
    >>> bool(np.allclose(np.exp(2 * gamma_log), 1 - r**2))
    True
    """
    fn = "lru_ring_init"
    N = check_int(fn, "N", N, minimum=0)
    r_min, r_max, max_phase = _real(fn, "r_min", r_min), _real(fn, "r_max", r_max), _real(fn, "max_phase", max_phase)
    if not 0.0 <= r_min <= r_max <= 1.0:
        raise ValueError(f"{fn}: radii must satisfy 0 <= r_min <= r_max <= 1; got r_min={r_min!r}, r_max={r_max!r}")
    if max_phase <= 0.0:
        raise ValueError(f"{fn}: max_phase must be > 0; got {max_phase!r}")
    gen = _as_generator(fn, rng)
    u1 = gen.random(N)
    u2 = gen.random(N)
    with np.errstate(divide="ignore"):
        nu = -0.5 * np.log(u1 * (r_max**2 - r_min**2) + r_min**2)
        nu_log = np.log(nu)
        theta_log = np.log(max_phase * u2)
        # 1 - |Lambda|^2 = 1 - exp(-2 nu) = -expm1(-2 nu): no cancellation near |Lambda| = 1
        gamma_log = 0.5 * np.log(-np.expm1(-2.0 * nu))
    return nu_log, theta_log, gamma_log


def lru_lambda(nu_log: Any, theta_log: Any) -> np.ndarray:
    r"""LRU eigenvalues from their log parameters: :math:`\Lambda = \exp(-e^{\nu_{log}} + i e^{\theta_{log}})`.

    Parameters
    ----------
    nu_log : array_like, real
        Log of the decay rate :math:`\nu` (``|Lambda| = exp(-exp(nu_log))``).
    theta_log : array_like, real
        Log of the phase :math:`\theta`; broadcasts against ``nu_log``.

    Returns
    -------
    ndarray, complex128 (complex64 for float32 inputs)
        The eigenvalues, in the broadcast shape of the inputs.

    Raises
    ------
    TypeError
        If an input is complex, an integer, boolean or non-numeric NumPy array.
    ValueError
        If the inputs' shapes do not broadcast.

    See Also
    --------
    lru_ring_init : Draw ``nu_log`` and ``theta_log`` on a ring.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import lru_lambda
    >>> lam = lru_lambda(np.log([0.1]), np.log([np.pi / 2]))
    >>> bool(np.allclose(lam, np.exp(-0.1) * 1j))
    True
    """
    fn = "lru_lambda"
    # elementwise: device-neutral (any array-API namespace, no kernel)
    t = select(fn, nu_log, theta_log)
    xp = t.xp
    nu_log = as_float_array(fn, "nu_log", nu_log, complex_ok=False, target=t)
    theta_log = as_float_array(fn, "theta_log", theta_log, complex_ok=False, target=t)
    try:
        broadcast_shapes(nu_log.shape, theta_log.shape)
    except ValueError:
        raise ValueError(f"{fn}: shapes do not broadcast: nu_log {tuple(nu_log.shape)}, "
                         f"theta_log {tuple(theta_log.shape)}") from None
    # complex64 only when both are float32 (NumPy's promotion of float32 + 1j * float32)
    cdt = xp.complex64 if nu_log.dtype == theta_log.dtype == xp.float32 else xp.complex128
    # the standard leaves real-array * complex-scalar unspecified: form the complex argument explicitly
    arg = xp.astype(-xp.exp(nu_log), cdt) + xp.astype(xp.exp(theta_log), cdt) * 1j
    return xp.exp(arg)


# ------------------------------------------------------------------------- step sizes


def _dt_range(fn: str, dt_min: Any, dt_max: Any) -> tuple[float, float]:
    dt_min, dt_max = _real(fn, "dt_min", dt_min), _real(fn, "dt_max", dt_max)
    if not 0.0 < dt_min <= dt_max:
        raise ValueError(f"{fn}: need 0 < dt_min <= dt_max; got dt_min={dt_min!r}, dt_max={dt_max!r}")
    return dt_min, dt_max


def dt_init(
    H: int | tuple[int, ...],
    dt_min: float = 1e-3,
    dt_max: float = 1e-1,
    rng: Any = None,
    *,
    deterministic: bool = False,
) -> np.ndarray:
    r"""Log-uniform step sizes: :math:`\log dt \sim U[\log dt_{min}, \log dt_{max}]` (S4, S5, Mamba).

    Parameters
    ----------
    H : int or tuple of int
        Output shape, e.g. ``H`` channels or ``(H, N // 2)`` for one step per mode.
    dt_min, dt_max : float, optional
        Range, ``0 < dt_min <= dt_max`` (defaults 1e-3 and 0.1).
    rng : numpy.random.Generator, int or None, optional
        Source of randomness, passed to :func:`numpy.random.default_rng`: a seed
        reproduces the same numbers.
    deterministic : bool, optional
        S4's ``deterministic=True``: ``exp(linspace(log dt_min, log dt_max, H))`` along
        the last axis instead of random draws.

    Returns
    -------
    ndarray, shape (H,) or H, float64

    Raises
    ------
    ValueError
        If ``dt_min`` or ``dt_max`` is not finite, ``0 < dt_min <= dt_max`` does
        not hold, or a size in ``H`` is negative.
    TypeError
        If ``H`` is not an int or tuple of ints, ``dt_min`` or ``dt_max`` is not
        a real number, or ``rng`` is not a Generator, an int seed or None.

    See Also
    --------
    mamba_dt_bias : Mamba's ``dt_proj.bias``, the softplus-inverse of these steps.
    s4d_lin : A diagonal init often paired with these steps (S4D).

    Examples
    --------
    >>> from ssmcore import dt_init
    >>> dt_init(3, deterministic=True)
    array([0.001, 0.01 , 0.1  ])
    """
    fn = "dt_init"
    shape = _size(fn, "H", H)
    lo, hi = _dt_range(fn, dt_min, dt_max)
    if check_bool(fn, "deterministic", deterministic):
        row = np.exp(np.linspace(math.log(lo), math.log(hi), shape[-1]))
        return np.broadcast_to(row, shape).copy()
    gen = _as_generator(fn, rng)
    return np.exp(gen.random(shape) * (math.log(hi) - math.log(lo)) + math.log(lo))


def inverse_softplus(x: Any) -> np.ndarray:
    r"""Inverse of :math:`\mathrm{softplus}(y) = \log(1 + e^y)`: :math:`y = x + \log(1 - e^{-x})`.

    Mamba stores ``dt_bias = inverse_softplus(dt)`` and applies softplus in the forward.
    Evaluated without cancellation over the whole range: ``log(-expm1(-x))`` for
    ``x <= log 2`` and ``log1p(-exp(-x))`` above (so ``x = 1e-8`` gives
    ``log(1e-8)`` to full precision and ``x = 50`` gives 50). Defined for ``x > 0``;
    ``x = 0`` gives ``-inf``, ``x < 0`` gives NaN, NaN and ``+inf`` propagate.

    Parameters
    ----------
    x : array_like, real
        Values of the softplus, ``x > 0`` for a finite result.

    Returns
    -------
    ndarray
        Same shape; float32 stays float32 (computed in float64), else float64.

    Raises
    ------
    TypeError
        If ``x`` is complex, an integer, boolean or non-numeric NumPy array.

    See Also
    --------
    mamba_dt_bias : Mamba's step-size bias, built with this function.
    dt_init : Log-uniform step sizes.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import inverse_softplus
    >>> y = inverse_softplus([1e-8, 0.1, 50.0])
    >>> bool(np.allclose(np.logaddexp(0.0, y), [1e-8, 0.1, 50.0], rtol=1e-15))
    True
    """
    fn = "inverse_softplus"
    # elementwise: device-neutral (any array-API namespace, no kernel)
    t = select(fn, x)
    xp = t.xp
    arr = as_float_array(fn, "x", x, complex_ok=False, target=t)
    x64 = xp.astype(arr, xp.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # NumPy's warnings; other namespaces have none
        small = x64 <= math.log(2.0)
        y = x64 + xp.where(small, xp.log(-xp.expm1(-x64)), xp.log1p(-xp.exp(-x64)))
    return xp.astype(y, arr.dtype, copy=False)


def mamba_dt_bias(
    D: int, dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4, rng: Any = None
) -> np.ndarray:
    r"""Mamba's ``dt_proj.bias``: ``inverse_softplus(max(dt, dt_init_floor))`` with log-uniform ``dt``.

    So that ``softplus(dt_bias)`` (what the selective scan applies with
    ``delta_softplus=True``) starts log-uniform in ``[dt_min, dt_max]``. Mamba-2 uses the
    same with one entry per head.

    Parameters
    ----------
    D : int
        Number of channels (or heads).
    dt_min, dt_max : float, optional
        ``0 < dt_min <= dt_max`` (defaults 1e-3 and 0.1).
    dt_init_floor : float, optional
        Lower clamp of ``dt`` (``>= 0``; default 1e-4).
    rng : numpy.random.Generator, int or None, optional
        Source of randomness, passed to :func:`numpy.random.default_rng`: a seed
        reproduces the same numbers.

    Returns
    -------
    ndarray, shape (D,), float64

    Raises
    ------
    ValueError
        If ``D`` is negative, ``dt_init_floor`` is negative, or
        ``0 < dt_min <= dt_max`` does not hold (or a bound is not finite).
    TypeError
        If ``D`` is not an integer, a bound is not a real number, or ``rng`` is
        not a Generator, an int seed or None.

    See Also
    --------
    dt_init : The log-uniform steps before the clamp and the inverse softplus.
    inverse_softplus : The map from ``dt`` to the stored bias.
    selective_scan : Applies ``softplus(delta + delta_bias)`` with ``delta_softplus=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import mamba_dt_bias
    >>> dt = np.logaddexp(0.0, mamba_dt_bias(64, rng=0))   # softplus
    >>> bool(np.all((dt >= 1e-3) & (dt <= 0.1)))
    True
    """
    fn = "mamba_dt_bias"
    D = check_int(fn, "D", D, minimum=0)
    floor = _real(fn, "dt_init_floor", dt_init_floor)
    if floor < 0.0:
        raise ValueError(f"{fn}: dt_init_floor must be >= 0; got {floor!r}")
    lo, hi = _dt_range(fn, dt_min, dt_max)
    dt = np.maximum(dt_init(D, lo, hi, _as_generator(fn, rng)), floor)
    return inverse_softplus(dt)
