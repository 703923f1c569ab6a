r"""``lsim``: continuous-time simulation, a drop-in for :func:`scipy.signal.lsim`.

Built on the public discretisation and LTI core: the input is held (zero-order)
or linearly interpolated (first-order) between samples, which makes the
continuous system an exact discrete one (:func:`ssmcore.cont2discrete` with
``"zoh"`` or ``"foh"``), simulated by :func:`ssmcore.dlsim`.

On device arrays (CuPy; array-api-strict in the tests) :func:`_lsim_xp` composes
the same steps in the call's namespace: the system is a host object (scipy's
``lti`` conversion), so its ``n x n`` discretisation runs on the host exactly as in
the NumPy path and only the small discrete matrices are copied to the device; the
simulation over the ``L`` samples is :func:`ssmcore.dlsim` on the device (the CuPy
LTI kernels). ``U``, ``X0`` and the outputs stay on the device.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._discretization import cont2discrete
from ._lti import dlsim
from .dispatch import Target, array_kind, declare_backends, select
from .validation import shape_error

__all__ = ["lsim"]

_FN = "lsim"

declare_backends(_FN, ("numpy", "numba", "cupy"))


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


def _expm(A: np.ndarray, t0: float) -> np.ndarray:
    """expm(A t0) (the free response up to the first sample), via cont2discrete."""
    n = A.shape[0]
    return cont2discrete((A, np.zeros((n, 1)), np.zeros((1, n)), np.zeros((1, 1))), t0, method="zoh")[0]


def _expm_times(A: np.ndarray, t0: float, x0: np.ndarray) -> np.ndarray:
    """expm(A t0) x0."""
    return _expm(A, t0) @ x0


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

    CuPy arrays: ``U``, ``T`` and ``X0`` may be CuPy arrays (the system stays a
    host description); the simulation runs on the GPU (:func:`dlsim`'s CuPy
    kernels) and the results, ``T`` included, are CuPy arrays. A device ``T`` costs
    one host synchronisation (three scalars: the first time, the step and the
    equal-spacing check, which the discretisation and scipy's errors need); a NumPy
    ``T`` none. Only ``U=None`` or ``U=0`` mean a free response there (an all-zero
    device ``U`` is not read back; it is simulated, with the same values unless
    ``D`` holds inf or NaN).

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
    arrays = [v for v in (U, T, X0) if not isinstance(v, (int, float, complex))]
    t = select(_FN, *(v for v in arrays if array_kind(v) != "numpy"))  # a host T may go with device U
    if t.kind != "numpy":
        return _lsim_xp(t, system, U, T, X0, interp)
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


def _host_scalars(v: Any, t: Target) -> np.ndarray:
    """A few device values read back to the host in one transfer (one synchronisation)."""
    if t.kind == "cupy":
        return v.get()
    return np.asarray(v.to_device(t.xp.Device("CPU_DEVICE")))  # array-api-strict (tests)


def _lsim_xp(t: Target, system: Any, U: Any, T: Any, X0: Any, interp: bool) -> tuple[Any, Any, Any]:
    """:func:`lsim` on device arrays: the NumPy path's steps in the call's namespace.

    Host-side parts, and why they are cheap: the system's matrices (a host object;
    discretised on the host, copied to the device as ``n x n`` matrices), and the time
    grid's first time and step, which ``cont2discrete`` needs as numbers. A device
    ``T`` costs one synchronisation reading three scalars (``T[0]``, ``T[1] - T[0]`` and
    the equal-spacing check, computed on the device); a host ``T`` (NumPy or a list)
    costs none. Two differences from the NumPy path, both to avoid reading ``U``
    back: only ``U=None`` or ``U=0`` mean free response (an all-zero device ``U`` is
    simulated as an input: the same values unless ``D`` holds inf or NaN), and
    results are returned on the device, ``T`` included.
    """
    xp = t.xp
    if isinstance(system, (tuple, list)) and any(array_kind(v) not in (None, "numpy") for v in system):
        raise TypeError(f"{_FN}: the system is converted on the host (scipy.signal.lti); pass its coefficients "
                        "as NumPy arrays or lists (U, T and X0 may be device arrays)")
    A, B, C, D = _state_space(system)
    n, m, p = A.shape[0], B.shape[1], C.shape[0]

    def dev(v: Any, dtype: Any = None) -> Any:
        return t.asarray(v, dtype=dtype)

    host_T = array_kind(T) in (None, "numpy")
    if host_T:
        T = np.atleast_1d(T)
    elif T.ndim == 0:
        T = xp.reshape(T, (1,))
    if T.ndim != 1:
        raise ValueError(f"{_FN}: T has shape {tuple(T.shape)}; expected (L,) (T must be a rank-1 array.)")
    L = T.shape[0]
    if L == 0:
        raise ValueError(f"{_FN}: T is empty; expected at least one sample time")
    if host_T:
        t0 = float(T[0])
        dt = float(T[1] - T[0]) if L > 1 else 0.0
        spaced = L < 2 or bool(np.allclose(np.diff(T), T[1] - T[0]))
    else:
        Tf = xp.astype(T, xp.float64) if not xp.isdtype(T.dtype, "real floating") else T
        if L > 1:
            step = Tf[1] - Tf[0]
            d = Tf[1:] - Tf[:-1]
            ok = xp.all(xp.abs(d - step) <= 1e-8 + 1e-5 * xp.abs(step))  # np.allclose(np.diff(T), dt)
            vals = _host_scalars(xp.stack([xp.astype(Tf[0], xp.float64), xp.astype(step, xp.float64),
                                           xp.astype(ok, xp.float64)]), t)
        else:
            vals = _host_scalars(xp.reshape(xp.astype(Tf[0], xp.float64), (1,)), t)
        t0, dt, spaced = float(vals[0]), (float(vals[1]) if L > 1 else 0.0), (L < 2 or bool(vals[2]))
    T_out = dev(T) if host_T else T

    if X0 is None:
        x0 = xp.zeros(n, dtype=dev(A).dtype, device=t.device)
    else:
        x0 = dev(X0) if array_kind(X0) != t.kind else X0
        if _size(x0.shape) != n or x0.ndim > 1:
            raise shape_error(_FN, "X0", tuple(x0.shape), f"({n},) (one value per state)")
        x0 = _floating(xp.reshape(x0, (n,)), xp)
    no_input = U is None or (isinstance(U, (int, float)) and U == 0.0)

    if t0 == 0:
        x_first = x0
    elif t0 > 0:
        x_first = (dev(_expm(A, t0)) @ x0) if n else x0
    else:
        raise ValueError(f"{_FN}: T[0] = {t0!r}; Initial time must be nonnegative")

    Cd_, Dd_ = dev(C), dev(D)
    if L == 1:
        xout = x_first[None, :]
        yout = _squeeze(xout @ xp.astype(Cd_.T, xp.result_type(Cd_, xout)), xp)
        if not no_input:
            u1 = _floating(dev(U) if array_kind(U) != t.kind else U, xp)
            ud = xp.result_type(u1, Dd_)
            yout = yout + _squeeze(xp.astype(u1, ud) @ xp.astype(Dd_.T, ud), xp)
        return T_out, yout, _squeeze(xout, xp)

    if not spaced:
        raise ValueError(f"{_FN}: Time steps are not equally spaced.")

    if no_input:
        cplx = np.result_type(A, B, np.float64).kind == "c"
        u = xp.zeros((L, m), dtype=xp.complex128 if cplx else xp.float64, device=t.device)
    else:
        u = _floating(dev(U) if array_kind(U) != t.kind else U, xp)
        if u.ndim == 0:
            u = xp.reshape(u, (1,))
        if u.ndim == 1:
            u = u[:, None]
        if u.shape[0] != L:
            raise ValueError(f"{_FN}: U has {u.shape[0]} rows and T {L} elements; "
                             "U must have the same number of rows as elements in T.")
        if u.ndim != 2 or u.shape[1] != m:
            raise ValueError(f"{_FN}: U has shape {tuple(u.shape)}; expected ({L}, {m}): "
                             "System does not define that many inputs.")

    if n == 0:
        dtype = xp.result_type(Dd_, u, xp.float64)
        xout = xp.zeros((L, 0), dtype=dtype, device=t.device)
        if no_input:
            yout = xp.zeros((L, p), dtype=dtype, device=t.device)
        else:
            yout = xp.astype(u, dtype) @ xp.astype(Dd_.T, dtype)
        return T_out, _squeeze(yout, xp), _squeeze(xout, xp)

    Cx = np.vstack([C, np.eye(n, dtype=C.dtype)])
    Dx = np.vstack([D, np.zeros((n, m), D.dtype)])
    Ad, Bd, Cd, Dd, _ = cont2discrete((A, B, Cx, Dx), dt, method="foh" if interp else "zoh")
    if interp:
        G1 = dev(Dd[p:])
        dt_ = xp.result_type(G1, u)
        xi0 = x_first - xp.astype(G1, dt_) @ xp.astype(u[0, :], dt_)
    else:
        xi0 = x_first
    _, yx, _ = dlsim((dev(Ad), dev(Bd), dev(Cd), dev(Dd), dt), u, x0=xi0)
    yout, xout = yx[:, :p], yx[:, p:]
    if no_input:
        yout = xout @ xp.astype(Cd_.T, xout.dtype)
    return T_out, _squeeze(yout, xp), _squeeze(xout, xp)


def _floating(v: Any, xp: Any) -> Any:
    """Integer or boolean data as float64 (NumPy promotes them in the matrix products)."""
    return v if xp.isdtype(v.dtype, ("real floating", "complex floating")) else xp.astype(v, xp.float64)


def _size(shape: tuple[int, ...]) -> int:
    size = 1
    for s in shape:
        size *= int(s)
    return size


def _squeeze(v: Any, xp: Any) -> Any:
    """``np.squeeze`` in the array API (every axis of length 1)."""
    axes = tuple(i for i, s in enumerate(v.shape) if s == 1)
    return xp.squeeze(v, axis=axes) if axes else v
