r"""``lsim``: continuous-time simulation, a drop-in for :func:`scipy.signal.lsim`.

Built on the public discretisation and LTI core: the input is held (zero-order)
or linearly interpolated (first-order) between samples, which makes the
continuous system an exact discrete one (:func:`ssmcore.cont2discrete` with
``"zoh"`` or ``"foh"``), simulated by :func:`ssmcore.dlsim`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._discretization import cont2discrete
from ._lti import dlsim
from .dispatch import declare_backends, select
from .validation import shape_error

__all__ = ["lsim"]

_FN = "lsim"

declare_backends(_FN, ("numpy", "numba"))


def _state_space(system: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(A, B, C, D) exactly as scipy's lsim obtains them (``lti(*system)._as_ss()``)."""
    from scipy import signal

    if isinstance(system, signal.lti):
        ss = system if isinstance(system, signal.StateSpace) else system.to_ss()
    elif isinstance(system, signal.dlti):
        # scipy raises AttributeError here; code that catches it must keep working.
        raise AttributeError(f"{_FN}: lsim can only be used with continuous-time systems (got a dlti; use dlsim).")
    else:
        ss = signal.lti(*system).to_ss()
    return tuple(np.asarray(m) for m in (ss.A, ss.B, ss.C, ss.D))  # type: ignore[return-value]


def _expm_times(A: np.ndarray, t0: float, x0: np.ndarray) -> np.ndarray:
    """expm(A t0) x0 (the free response up to the first sample), via cont2discrete."""
    n = A.shape[0]
    Ad = cont2discrete((A, np.zeros((n, 1)), np.zeros((1, n)), np.zeros((1, 1))), t0, method="zoh")[0]
    return Ad @ x0


def lsim(system: Any, U: Any, T: Any, X0: Any = None, interp: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Simulate a continuous-time linear system; a drop-in for :func:`scipy.signal.lsim`.

    .. math::

        \dot x(t) = A x(t) + B u(t), \qquad y(t) = C x(t) + D u(t), \qquad x(T_0) = e^{A T_0} x_0,

    sampled at the equally spaced times ``T``, with ``u`` linearly interpolated
    between samples (``interp=True``) or held constant over each step
    (``interp=False``). Both holds make the step exact: a first-order hold is
    :func:`cont2discrete` ``"foh"`` (its state :math:`\xi_k = x_k - \Gamma_1 u_k`
    is shifted back, :math:`\Gamma_1` read off the method's ``Dd``), a zero-order
    hold ``"zoh"``; the discrete system runs on :func:`dlsim`'s core.

    Parameters
    ----------
    system : scipy.signal.lti or tuple
        An ``lti`` instance, or ``(num, den)``, ``(zeros, poles, gain)`` or
        ``(A, B, C, D)`` (converted with ``scipy.signal.lti`` exactly as scipy).
    U : array_like, shape (L,) or (L, m), or None
        Input at the times ``T``; None or all zeros means free response.
    T : array_like, shape (L,)
        Equally spaced sample times, ``T[0] >= 0`` (the system starts at t = 0
        and evolves freely up to ``T[0]``).
    X0 : array_like, shape (n,), optional
        Initial state at t = 0 (zeros by default).
    interp : bool, default True
        Linear interpolation (True) or zero-order hold (False) of ``U``.

    Returns
    -------
    T : ndarray
        The sample times (``atleast_1d(T)``).
    yout : ndarray
        Outputs, ``(L, p)`` squeezed as scipy squeezes them (``(L,)`` for one output).
    xout : ndarray
        States, ``(L, n)`` squeezed.

    Raises
    ------
    AttributeError
        For a discrete-time ``dlti`` (as scipy).
    ValueError
        ``T`` not 1-D, not equally spaced or ``T[0] < 0``; ``U`` with the wrong
        number of rows or columns (scipy's messages).

    See Also
    --------
    scipy.signal.lsim : The SciPy function this one reproduces.
    dlsim : The discrete-time simulation this function runs on.
    cont2discrete : The exact ``foh``/``zoh`` discretisation used for each step.

    Notes
    -----
    Differences from scipy: a complex input ``U`` or ``X0`` with a real system
    gives complex results (scipy casts them into a real array, dropping the
    imaginary part with a ``ComplexWarning``). Results are float64/complex128
    and agree with scipy's to about 1e-13 relative (different but equally exact
    matrix exponentials). Not differentiable (use :func:`discretize` and
    :func:`lti_simulate`, which are ops).

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore._lsim import lsim
    >>> T = np.linspace(0, 5, 51)
    >>> _, y, _ = lsim(([1.0], [1.0, 1.0]), np.ones_like(T), T)   # 1/(s+1), unit step
    >>> bool(np.allclose(y, 1 - np.exp(-T)))
    True
    """
    if not isinstance(interp, (bool, np.bool_)):
        raise TypeError(f"{_FN}: interp must be a bool; got {type(interp).__name__} {interp!r}")
    t = select(_FN, *(v for v in (U, T, X0) if not isinstance(v, (int, float, complex))))
    if t.kind != "numpy":
        raise TypeError(f"{_FN}: takes NumPy arrays (a scipy.signal drop-in); got {t.kind} arrays")
    A, B, C, D = _state_space(system)
    T = np.atleast_1d(T)
    if T.ndim != 1:
        raise ValueError(f"{_FN}: T has shape {T.shape}; expected (L,) (T must be a rank-1 array.)")
    n, m, p = A.shape[0], B.shape[1], C.shape[0]
    L = T.size
    if X0 is None:
        x0 = np.zeros(n, A.dtype)
    else:
        x0 = np.asarray(X0)
        if x0.size != n or x0.ndim > 1:  # scipy accepts (n,) (and, implicitly, a 1-element list for n = 1)
            raise shape_error(_FN, "X0", x0.shape, f"({n},) (one value per state)")
        x0 = x0.reshape(n)
    no_input = U is None or (isinstance(U, (int, float)) and U == 0.0) or not np.any(U)

    if L == 0:
        raise ValueError(f"{_FN}: T is empty; expected at least one sample time")
    if T[0] == 0:
        x_first = x0
    elif T[0] > 0:
        x_first = _expm_times(A, float(T[0]), x0) if n else x0
    else:
        raise ValueError(f"{_FN}: T[0] = {T[0]!r}; Initial time must be nonnegative")

    if L == 1:  # no step to take (scipy's shapes: U is used as given)
        xout = np.asarray(x_first)[None, :]
        yout = np.squeeze(xout @ C.T)
        if not no_input:
            yout = yout + np.squeeze(np.asarray(U) @ D.T)
        return T, yout, np.squeeze(xout)

    dt = T[1] - T[0]
    if not np.allclose(np.diff(T), dt):
        raise ValueError(f"{_FN}: Time steps are not equally spaced.")

    if no_input:
        u = np.zeros((L, m), dtype=np.result_type(A, B, np.float64))
    else:
        u = np.atleast_1d(U)
        if u.ndim == 1:
            u = u[:, np.newaxis]
        if u.shape[0] != L:
            raise ValueError(f"{_FN}: U has {u.shape[0]} rows and T {L} elements; "
                             "U must have the same number of rows as elements in T.")
        if u.ndim != 2 or u.shape[1] != m:
            raise ValueError(f"{_FN}: U has shape {u.shape}; expected ({L}, {m}): "
                             "System does not define that many inputs.")

    if n == 0:  # a static gain: no state to simulate
        dtype = np.result_type(D, u, np.float64)
        xout = np.zeros((L, 0), dtype)
        yout = u @ D.T if not no_input else np.zeros((L, p), dtype)
        return T, np.squeeze(yout), np.squeeze(xout)

    # Readout [C; I] so one dlsim call returns y and the states (the foh state is shifted back
    # through its D row of the identity block: Dd = [D + C G1; G1]).
    Cx = np.vstack([C, np.eye(n, dtype=C.dtype)])
    Dx = np.vstack([D, np.zeros((n, m), D.dtype)])
    method = "foh" if interp else "zoh"
    Ad, Bd, Cd, Dd, _ = cont2discrete((A, B, Cx, Dx), float(dt), method=method)
    if interp:
        G1 = Dd[p:]
        xi0 = x_first - G1 @ u[0]
    else:
        xi0 = x_first
    _, yx, _ = dlsim((Ad, Bd, Cd, Dd, float(dt)), u, x0=xi0)
    yout, xout = yx[:, :p], yx[:, p:]
    if no_input:
        yout = xout @ C.T
    return T, np.squeeze(yout), np.squeeze(xout)
