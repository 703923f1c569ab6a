"""Discretisation of continuous state-space systems: dense, diagonal and ``scipy.signal``-style.

Continuous system x'(t) = A x + B u, step dt. :func:`discretize` (dense A) and
:func:`discretize_diag` (diagonal A) return (Ad, Bd) in the SSM convention
x_k = Ad x_{k-1} + Bd u_k used by S4, S5, Mamba and LRU. :func:`cont2discrete`
is a drop-in for :func:`scipy.signal.cont2discrete` (control convention, also
returns Cd, Dd).

Both ``discretize`` and ``discretize_diag`` are registered ops with hand-written
VJPs (``ssmcore.vjp("discretize", ...)``). The maths of every method is in
``docs/discretization.md``; the NumPy specification is
:mod:`ssmcore.reference.discretization` and the CPU kernels are in
:mod:`ssmcore.backends.numba.discretization`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .dispatch import kernels, select_backend
from .reference.discretization import METHOD_CODES
from .registry import register_op
from .validation import as_float_array, check_alpha, check_choice, check_dt, shape_error, sum_to_shape

__all__ = ["DIAG_METHODS", "DENSE_METHODS", "cont2discrete", "discretize", "discretize_diag"]

# Aliases of the generalised bilinear transform and their fixed alpha (as scipy.signal).
_GBT_ALIASES = {"bilinear": 0.5, "tustin": 0.5, "euler": 0.0, "forward_diff": 0.0, "backward_diff": 1.0}
_SCIPY_METHODS = ("zoh", "foh", "impulse", "gbt", *_GBT_ALIASES)
#: Methods of :func:`discretize` and :func:`discretize_diag`: scipy's plus Mamba's ``zoh_euler``.
DENSE_METHODS = (*_SCIPY_METHODS, "zoh_euler")
DIAG_METHODS = DENSE_METHODS


# --------------------------------------------------------------------------- shared helpers


def _parse_method(fn: str, method: Any, alpha: Any, choices: tuple[str, ...]) -> tuple[str, float]:
    """Canonical method ('zoh', 'foh', 'impulse', 'zoh_euler' or 'gbt') and its alpha."""
    name = check_choice(fn, "method", method, choices)
    if name == "gbt":
        return "gbt", check_alpha(fn, alpha)
    if name in _GBT_ALIASES:
        return "gbt", _GBT_ALIASES[name]
    return name, 0.0


def _backend(fn: str, backend: str | None, *arrays: Any) -> str:
    chosen = select_backend(fn, *arrays, backend=backend)
    if chosen == "cupy":
        raise TypeError(f"{fn}: there are no CuPy kernels for discretisation; pass NumPy arrays (cupy.asnumpy)")
    return chosen


def _is_single(*inputs: Any) -> bool:
    """True if the typed inputs (NumPy arrays/scalars) are all single precision.

    Python numbers and lists carry no precision intent and do not count; the
    computation itself always runs in float64/complex128.
    """
    dts = [np.asarray(x).dtype for x in inputs if isinstance(x, (np.ndarray, np.generic))]
    dts = [d for d in dts if d.kind in "fc"]
    return bool(dts) and np.result_type(*dts) in (np.float32, np.complex64, np.float16)


def _compute(x: np.ndarray) -> np.ndarray:
    """float64 or complex128 view/copy of a validated array."""
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64, copy=False)


def _output(x: np.ndarray, single: bool) -> np.ndarray:
    if single:
        return x.astype(np.complex64 if np.iscomplexobj(x) else np.float32)
    return x


def _grad_as(g: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A gradient in its input's dtype: real part for real inputs (adjoint of the real embedding)."""
    if not np.iscomplexobj(like):
        g = np.real(g)
    return np.array(g, dtype=like.dtype, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)


def _swap(x: np.ndarray) -> np.ndarray:
    """Matrix transpose of a stack (no conjugation: the project's VJP convention)."""
    return np.swapaxes(x, -1, -2)


def _broadcast_error(fn: str, **shapes: tuple[int, ...]) -> ValueError:
    listed = ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
    return ValueError(f"{fn}: shapes do not broadcast: {listed}")


# --------------------------------------------------------------------------- diagonal A


def _discretize_diag_fwd(A, B, dt, method="zoh", alpha=None, *, backend=None):
    fn = "discretize_diag"
    be = _backend(fn, backend, A, B, dt)
    name, alpha = _parse_method(fn, method, alpha, DIAG_METHODS)
    single = _is_single(A, B, dt)
    A = as_float_array(fn, "A", A, min_ndim=1, expected="(..., N)")
    B = as_float_array(fn, "B", B, min_ndim=1, expected="(..., N) or (..., N, M)")
    dt = check_dt(fn, dt)
    # dt without a state axis is a per-channel step: it gets one (S4D's dt[..., None]).
    dt_eff = dt[..., None] if dt.ndim < A.ndim else dt
    if B.ndim <= A.ndim:
        matrix, Bm = False, B[..., None]
    elif B.ndim == A.ndim + 1:
        matrix, Bm = True, B
    else:
        expected = f"(..., N) or (..., N, M), at most {A.ndim + 1} dimensions for A of shape {A.shape}"
        raise shape_error(fn, "B", B.shape, expected)
    try:
        shape = np.broadcast_shapes(A.shape, dt_eff.shape, Bm.shape[:-1])
    except ValueError:
        raise _broadcast_error(fn, A=A.shape, dt=dt.shape, B=B.shape) from None
    N, M = shape[-1], Bm.shape[-1]
    R = int(np.prod(shape[:-1], dtype=np.int64))
    A2 = np.broadcast_to(_compute(A), shape).reshape(R, N)
    dt2 = np.broadcast_to(dt_eff.astype(np.float64, copy=False), shape).reshape(R, N)
    B3 = np.broadcast_to(_compute(Bm), (*shape, M)).reshape(R, N, M)
    code = METHOD_CODES[name]
    k = kernels(be, "discretization")
    Ad, Bd = k.discretize_diag_fwd(A2, dt2, B3, code, alpha)
    Ad = Ad.reshape(shape)
    Bd = Bd.reshape(*shape, M) if matrix else Bd.reshape(shape)
    res = (k, A2, dt2, B3, code, alpha, shape, matrix, A, B, dt, dt_eff.shape)
    return (_output(Ad, single), _output(Bd, single)), res


def _discretize_diag_bwd(res, cotangent):
    k, A2, dt2, B3, code, alpha, shape, matrix, A, B, dt, dt_eff_shape = res
    gAd, gBd = cotangent
    R, N, M = B3.shape
    gAd2 = _compute(np.asarray(gAd)).reshape(R, N)
    gBd3 = _compute(np.asarray(gBd)).reshape(R, N, M)
    gA, gdt, gB = k.discretize_diag_bwd(A2, dt2, B3, code, alpha, gAd2, gBd3)
    gB = gB.reshape(*shape, M) if matrix else gB.reshape(shape)
    return (
        _grad_as(sum_to_shape(gA.reshape(shape), A.shape), A),
        _grad_as(sum_to_shape(gB, B.shape), B),
        _grad_as(sum_to_shape(gdt.reshape(shape), dt_eff_shape).reshape(dt.shape), dt),
    )


@register_op("discretize_diag", fwd=_discretize_diag_fwd, bwd=_discretize_diag_bwd, inputs=("A", "B", "dt"))
def discretize_diag(
    A: Any, B: Any, dt: Any, method: str = "zoh", alpha: float | None = None, *, backend: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    r"""Discretise x' = diag(A) x + B u elementwise (S4D, S5, LRU, Mamba).

    With :math:`x = \Lambda\,\Delta` (``A * dt``, elementwise):

    ============== ======================================= ===========================================
    method         Ad                                      Bd
    ============== ======================================= ===========================================
    ``zoh``        :math:`e^{x}`                           :math:`\Delta\,\varphi_1(x)\,B`,
                                                           :math:`\varphi_1(x) = (e^x - 1)/x`
    ``zoh_euler``  :math:`e^{x}`                           :math:`\Delta\,B` (Mamba; no scipy method)
    ``foh``        :math:`e^{x}`                           :math:`\Delta(\varphi_1-\varphi_2+e^x\varphi_2)B` (scipy)
    ``impulse``    :math:`e^{x}`                           :math:`\Delta\,e^{x}B` (scipy's Bd)
    ``gbt``        :math:`(1+(1-\alpha)x)/(1-\alpha x)`    :math:`\Delta B/(1-\alpha x)`
    ============== ======================================= ===========================================

    ``bilinear``/``tustin`` = gbt(1/2), ``euler``/``forward_diff`` = gbt(0),
    ``backward_diff`` = gbt(1). Each equals :func:`discretize` on ``diag(A)``.
    :math:`\varphi_1` and its relatives are evaluated without cancellation for
    every real or complex x, including |x| down to 1e-300 and x = 0.

    Parameters
    ----------
    A : array_like, shape (..., N), real or complex
        Diagonal of the state matrix (e.g. S4D's Lambda of shape (H, N)).
    B : array_like, shape (..., N) or (..., N, M)
        Input matrix: elementwise (``B.ndim <= A.ndim``, S4D) or with a trailing
        input axis of length M (``B.ndim == A.ndim + 1``, S5/LRU's (P, H)).
    dt : float or array_like, positive and finite
        Step size. Broadcasting rule: if ``dt.ndim < A.ndim`` it is a step per
        channel and gets a trailing state axis (``dt[..., None]``, S4D's
        ``dt`` of shape (H,) against A (H, N)); otherwise it broadcasts against A
        as NumPy does (per state, as S5's (P,) against (P,), or (H, 1) against
        (H, N)). A, this dt and B's state part then broadcast together to the
        output shape S.
    method : str
        One of ``"zoh"`` (default), ``"zoh_euler"``, ``"foh"``, ``"impulse"``,
        ``"bilinear"``, ``"tustin"``, ``"gbt"``, ``"euler"``, ``"forward_diff"``,
        ``"backward_diff"``.
    alpha : float, optional
        Weight in [0, 1], required by ``"gbt"`` and ignored otherwise.
    backend : {"numba", "numpy"}, optional
        Numba kernel (default for NumPy arrays) or the NumPy reference.

    Returns
    -------
    Ad : ndarray, shape S
    Bd : ndarray, shape S or S + (M,)
        SSM convention x_k = Ad x_{k-1} + Bd u_k. Computed in float64/complex128,
        returned in single precision only when every array input is single
        precision. Ad is complex iff A is; Bd iff A or B is.

    Raises
    ------
    TypeError
        NumPy integer/bool/object arrays, complex dt, CuPy or framework arrays.
    ValueError
        Unknown method, alpha missing or outside [0, 1] for gbt, dt not positive
        and finite, shapes that do not broadcast.

    See Also
    --------
    discretize : dense A.
    cont2discrete : drop-in for :func:`scipy.signal.cont2discrete`.

    Notes
    -----
    Differentiable: ``ssmcore.vjp("discretize_diag", A, B, dt, method)`` returns
    gradients for A, B and dt (dt's reduced to dt's shape).

    Examples
    --------
    S4D-Lin modes for H = 2 channels with one step per channel:

    >>> import numpy as np
    >>> from ssmcore import discretize_diag
    >>> lam = -0.5 + 1j * np.pi * np.arange(3)            # (N,) = (3,)
    >>> Ad, Bd = discretize_diag(lam, np.ones(3), np.array([0.1, 0.01])[:, None])
    >>> Ad.shape, Bd.shape
    ((2, 3), (2, 3))
    >>> bool(np.allclose(Ad, np.exp(lam * np.array([[0.1], [0.01]]))))
    True

    A tiny or zero eigenvalue is no problem: Bd tends to dt * B.

    >>> discretize_diag(np.array([0.0, -1e-30]), np.ones(2), 0.5)[1]
    array([0.5, 0.5])
    """
    return _discretize_diag_fwd(A, B, dt, method, alpha, backend=backend)[0]


# --------------------------------------------------------------------------- dense A


def _hold_matrix(A: np.ndarray, B: np.ndarray, dtb: np.ndarray, first_order: bool) -> np.ndarray:
    """dt [[A, B], [0, 0]] (zero-order hold) or [[A dt, B dt, 0], [0, 0, I], [0, 0, 0]] (first-order hold)."""
    n, m = B.shape[-2:]
    P = n + (2 * m if first_order else m)
    batch = np.broadcast_shapes(A.shape[:-2], B.shape[:-2], dtb.shape[:-2])
    Z = np.zeros((*batch, P, P), dtype=np.result_type(A, B))
    Z[..., :n, :n] = A
    Z[..., :n, n : n + m] = B
    Z *= dtb  # one pass, no A*dt and B*dt temporaries (the same products scipy forms)
    if first_order:
        Z[..., n : n + m, n + m :] = np.eye(m)
    return Z


def _norm1(M: np.ndarray) -> np.ndarray:
    """1-norm (largest column sum) of each matrix of a stack, shaped (..., 1, 1)."""
    return np.max(np.sum(np.abs(M), axis=-2), axis=-1, initial=0.0)[..., None, None]


def _msum(x: np.ndarray) -> np.ndarray:
    """Sum over the two matrix axes: the pairing of a cotangent with a matrix, per system."""
    return np.sum(x, axis=(-2, -1))


def _frechet_adjoint(k, X: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Transpose of the Frechet derivative of expm at X, applied to G (stacks, no conjugation).

    L(X, E) is the upper-right block of expm([[X, E], [0, X]]); its transpose
    under sum(G * L(X, E)) is L(X^T, G). L is linear in G, so G is first scaled
    to X's size: a large cotangent would otherwise raise the 1-norm that sets
    the number of squarings, and cost accuracy.
    """
    n = X.shape[-1]
    Xt = _swap(X)
    c = np.maximum(_norm1(G), 1e-300) / np.maximum(_norm1(X), 1.0)
    W = np.zeros((*G.shape[:-2], 2 * n, 2 * n), dtype=np.result_type(X, G))
    W[..., :n, :n] = Xt
    W[..., n:, n:] = Xt
    W[..., :n, n:] = G / c
    return k.expm(W)[..., :n, n:] * c


def _dense_forward(k, A: np.ndarray, B: np.ndarray, dtb: np.ndarray, name: str, alpha: float, fn: str):
    """(Ad, Bd, residuals) for validated float64/complex128 A (.., n, n), B (.., n, m), dtb (batch, 1, 1)."""
    n, m = B.shape[-2:]
    if name in ("zoh", "foh"):
        Z = _hold_matrix(A, B, dtb, first_order=name == "foh")
        F = k.expm(Z)
        F11, F12 = F[..., :n, :n], F[..., :n, n : n + m]
        if name == "zoh":
            return F11, F12, {"Z": Z}
        F13 = F[..., :n, n + m :]
        return F11, F12 - F13 + F11 @ F13, {"Z": Z, "F11": F11, "F13": F13}
    if name in ("impulse", "zoh_euler"):
        X = A * dtb
        F = k.expm(X)
        if name == "impulse":
            return F, (F @ B) * dtb, {"X": X, "F": F}
        return F, np.broadcast_to(B * dtb, (*X.shape[:-2], n, m)).copy(), {"X": X}
    # generalised bilinear transform: M = I - alpha dt A, [Ad, Bd] = M^-1 [I + (1-alpha) dt A, dt B]
    eye = np.eye(n)
    Mm = eye - (alpha * dtb) * A
    rhs_A = eye + ((1.0 - alpha) * dtb) * A
    rhs_B = np.broadcast_to(dtb * B, (*rhs_A.shape[:-2], n, m))
    try:
        K = np.linalg.solve(Mm, np.concatenate([rhs_A, rhs_B], axis=-1))
    except np.linalg.LinAlgError:
        raise np.linalg.LinAlgError(
            f"{fn}: I - alpha*dt*A is singular (alpha={alpha}): an eigenvalue of A equals 1/(alpha*dt)"
        ) from None
    return K[..., :n], K[..., n:], {"M": Mm, "K": K}


def _dense_backward(k, A, B, dtb, name, alpha, extra, gAd, gBd):
    """(gA, gB, gdt) on the broadcast batch shape (before reduction)."""
    n, m = B.shape[-2:]
    if name in ("zoh", "foh"):
        Z = extra["Z"]
        GE = np.zeros(Z.shape, dtype=np.result_type(Z, gAd, gBd))
        if name == "zoh":
            GE[..., :n, :n] = gAd
            GE[..., :n, n : n + m] = gBd
        else:  # Bd = F12 - F13 + F11 F13
            F11, F13 = extra["F11"], extra["F13"]
            GE[..., :n, :n] = gAd + gBd @ _swap(F13)
            GE[..., :n, n : n + m] = gBd
            GE[..., :n, n + m :] = _swap(F11) @ gBd - gBd
        GZ = _frechet_adjoint(k, Z, GE)
        GX, GY = GZ[..., :n, :n], GZ[..., :n, n : n + m]
        return GX * dtb, GY * dtb, _msum(GX * A) + _msum(GY * B)
    if name in ("impulse", "zoh_euler"):
        X = extra["X"]
        if name == "impulse":  # Bd = F B dt
            F = extra["F"]
            gF = gAd + (gBd * dtb) @ _swap(B)
            gB = (_swap(F) @ gBd) * dtb
            gdt = _msum(gBd * (F @ B))
        else:  # Bd = B dt
            gF, gB, gdt = gAd, gBd * dtb, _msum(gBd * B)
        GX = _frechet_adjoint(k, X, gF)
        return GX * dtb, gB, gdt + _msum(GX * A)
    Mm, K = extra["M"], extra["K"]
    S = np.linalg.solve(_swap(Mm), np.concatenate([gAd, gBd], axis=-1))  # cotangent of the right-hand side
    gM = -(S @ _swap(K))
    SA, SB = S[..., :n], S[..., n:]
    gA = (-alpha * dtb) * gM + ((1.0 - alpha) * dtb) * SA
    gdt = -alpha * _msum(gM * A) + (1.0 - alpha) * _msum(SA * A) + _msum(SB * B)
    return gA, dtb * SB, gdt


def _dense_validate(fn: str, A: Any, B: Any, *, integer_ok: bool = False) -> tuple[np.ndarray, np.ndarray]:
    A = as_float_array(fn, "A", A, integer_ok=integer_ok, min_ndim=2, expected="(..., N, N)")
    if A.shape[-1] != A.shape[-2]:
        raise shape_error(fn, "A", A.shape, "(..., N, N) (square in the last two axes)")
    N = A.shape[-1]
    B = as_float_array(
        fn, "B", B, integer_ok=integer_ok, min_ndim=2, expected=f"(..., {N}, M); for one input pass B[:, None]"
    )
    if B.shape[-2] != N:
        raise shape_error(fn, "B", B.shape, f"(..., {N}, M) to match A of shape {A.shape}")
    return A, B


def _discretize_fwd(A, B, dt, method="zoh", alpha=None, *, backend=None):
    fn = "discretize"
    be = _backend(fn, backend, A, B, dt)
    name, alpha = _parse_method(fn, method, alpha, DENSE_METHODS)
    single = _is_single(A, B, dt)
    A, B = _dense_validate(fn, A, B)
    dt = check_dt(fn, dt)
    try:
        batch = np.broadcast_shapes(A.shape[:-2], B.shape[:-2], dt.shape)
    except ValueError:
        raise _broadcast_error(fn, **{"A batch": A.shape[:-2], "B batch": B.shape[:-2], "dt": dt.shape}) from None
    A64, B64 = _compute(A), _compute(B)
    dtb = np.broadcast_to(dt.astype(np.float64, copy=False), batch)[..., None, None]
    k = kernels(be, "discretization")
    Ad, Bd, extra = _dense_forward(k, A64, B64, dtb, name, alpha, fn)
    res = (k, A64, B64, dtb, name, alpha, extra, A, B, dt)
    return (_output(np.ascontiguousarray(Ad), single), _output(np.ascontiguousarray(Bd), single)), res


def _discretize_bwd(res, cotangent):
    k, A64, B64, dtb, name, alpha, extra, A, B, dt = res
    gAd, gBd = (_compute(np.asarray(c)) for c in cotangent)
    gA, gB, gdt = _dense_backward(k, A64, B64, dtb, name, alpha, extra, gAd, gBd)
    return (
        _grad_as(sum_to_shape(gA, A.shape), A),
        _grad_as(sum_to_shape(gB, B.shape), B),
        _grad_as(sum_to_shape(np.asarray(gdt), dt.shape), dt),
    )


@register_op("discretize", fwd=_discretize_fwd, bwd=_discretize_bwd, inputs=("A", "B", "dt"))
def discretize(
    A: Any, B: Any, dt: Any, method: str = "zoh", alpha: float | None = None, *, backend: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    r"""Discretise x' = A x + B u for dense (batched) A: the (Ad, Bd) of ``scipy.signal.cont2discrete``.

    ============== =================================================================================
    method         (Ad, Bd)
    ============== =================================================================================
    ``zoh``        :math:`\exp\left(\Delta\begin{bmatrix}A & B\\ 0 & 0\end{bmatrix}\right) =
                   \begin{bmatrix}A_d & B_d\\ 0 & I\end{bmatrix}` (valid for singular A)
    ``foh``        :math:`F = \exp\begin{bmatrix}A\Delta & B\Delta & 0\\ 0 & 0 & I\\ 0&0&0\end{bmatrix}`;
                   :math:`A_d = F_{11}`, :math:`B_d = F_{12} - F_{13} + F_{11}F_{13}`
    ``impulse``    :math:`A_d = e^{A\Delta}`, :math:`B_d = A_d B \Delta`
    ``zoh_euler``  :math:`A_d = e^{A\Delta}`, :math:`B_d = B\Delta` (Mamba's choice; no scipy method)
    ``gbt``        :math:`M = I - \alpha\Delta A`; :math:`A_d = M^{-1}(I + (1-\alpha)\Delta A)`,
                   :math:`B_d = M^{-1}\Delta B`
    ============== =================================================================================

    ``bilinear``/``tustin`` = gbt(1/2), ``euler``/``forward_diff`` = gbt(0),
    ``backward_diff`` = gbt(1). scipy also changes C and D for foh, impulse and
    the gbt family: use :func:`cont2discrete` for those. For ``foh`` and
    ``impulse`` the returned Bd is scipy's, which belongs to the control
    convention; in the SSM recurrence x_k = Ad x_{k-1} + Bd u_k it reproduces
    scipy's outputs as y_k = C x_{k-1} + Dd u_k (see docs/discretization.md).

    Parameters
    ----------
    A : array_like, shape (..., N, N), real or complex
    B : array_like, shape (..., N, M)
    dt : float or array_like, positive and finite
        Broadcasts (NumPy rules) against the batch axes ``...`` of A and B.
    method : str
        ``"zoh"`` (default), ``"foh"``, ``"impulse"``, ``"zoh_euler"``, ``"bilinear"``,
        ``"tustin"``, ``"gbt"``, ``"euler"``, ``"forward_diff"`` or ``"backward_diff"``.
    alpha : float, optional
        Weight in [0, 1], required by ``"gbt"`` and ignored otherwise.
    backend : {"numba", "numpy"}, optional
        ``"numba"`` (default) computes the matrix exponentials of the whole stack
        in one compiled kernel; ``"numpy"`` uses :func:`scipy.linalg.expm`.

    Returns
    -------
    Ad : ndarray, shape batch + (N, N)
    Bd : ndarray, shape batch + (N, M)
        batch = broadcast of A's, B's batch axes and dt's shape. Computed in
        float64/complex128, returned in single precision only when every array
        input is single precision.

    Raises
    ------
    TypeError
        NumPy integer/bool/object arrays, complex dt.
    ValueError
        Non-square A, B not (..., N, M), batch shapes that do not broadcast,
        unknown method, bad alpha, dt not positive and finite.
    numpy.linalg.LinAlgError
        gbt family with I - alpha dt A singular.

    Notes
    -----
    Differentiable: ``ssmcore.vjp("discretize", A, B, dt, method)``. The
    exponential methods go through the Frechet derivative of expm (its
    transpose is L(X^T, G), the upper-right block of expm([[X^T, G], [0, X^T]])),
    the gbt family through two linear solves.

    Examples
    --------
    The check values of ANCHORS.md / scipy for A = [[-1, .5], [0, -2]], B = [1, 1]^T, dt = 0.1:

    >>> import numpy as np
    >>> from ssmcore import discretize
    >>> A = np.array([[-1.0, 0.5], [0.0, -2.0]]); B = np.array([[1.0], [1.0]])
    >>> Ad, Bd = discretize(A, B, 0.1)
    >>> np.round(Bd.ravel(), 6)
    array([0.097427, 0.090635])

    A batch of 1000 systems with one step each, in one call:

    >>> As = np.broadcast_to(A, (1000, 2, 2)); dts = np.linspace(0.01, 1, 1000)
    >>> Ad, Bd = discretize(As, B, dts, method="bilinear")
    >>> Ad.shape, Bd.shape
    ((1000, 2, 2), (1000, 2, 1))
    """
    return _discretize_fwd(A, B, dt, method, alpha, backend=backend)[0]


# --------------------------------------------------------------------------- scipy.signal drop-in


def cont2discrete(system: Any, dt: float, method: str = "zoh", alpha: float | None = None) -> tuple:
    r"""Drop-in for :func:`scipy.signal.cont2discrete`: continuous to discrete, control convention.

    Same input and return forms as scipy: ``(A, B, C, D)`` -> ``(Ad, Bd, Cd, Dd, dt)``,
    ``(num, den)`` -> ``(num, den, dt)``, ``(zeros, poles, gain)`` ->
    ``(zeros, poles, gain, dt)``, and an ``lti`` instance -> its ``to_discrete``.
    The discrete system runs as x_{k+1} = Ad x_k + Bd u_k, y_k = Cd x_k + Dd u_k
    (:func:`scipy.signal.dlsim`). Ad and Bd are those of :func:`discretize`; C and D
    change as in scipy:

    ================================ ======================== =================================
    method                           Cd                       Dd
    ================================ ======================== =================================
    ``zoh``                          C                        D
    ``foh``                          C                        D + C F13 (see :func:`discretize`)
    ``impulse`` (needs D = 0)        C                        C B dt
    ``gbt`` and aliases              C M^{-1}                 D + alpha C Bd
    ================================ ======================== =================================

    Parameters
    ----------
    system : tuple or scipy.signal.lti
        ``(A, B, C, D)`` with A (n, n), B (n, m), C (p, n) and D broadcastable to
        (p, m); integer arrays and lists are accepted (as in scipy). Transfer-function
        and zeros-poles-gain tuples are converted with scipy's ``tf2ss``/``zpk2ss``
        and back.
    dt : float
        Step, positive and finite (scipy does not check this).
    method : str
        ``"zoh"`` (default), ``"foh"``, ``"impulse"``, ``"gbt"``, ``"bilinear"``, ``"tustin"``,
        ``"euler"``, ``"forward_diff"`` or ``"backward_diff"``.
    alpha : float, optional
        Required by ``"gbt"``, in [0, 1].

    Returns
    -------
    tuple
        ``(Ad, Bd, Cd, Dd, dt)`` for a state-space system (Dd always of shape (p, m)),
        otherwise scipy's form.

    Raises
    ------
    ValueError
        Bad shapes, unknown method, bad alpha, bad dt, impulse with D != 0.

    Examples
    --------
    The check values of ANCHORS.md section 4.1:

    >>> import numpy as np
    >>> from ssmcore import cont2discrete
    >>> sys = ([[-1, 0.5], [0, -2]], [[1], [1]], [[1, 1]], [[0]])
    >>> Ad, Bd, Cd, Dd, dt = cont2discrete(sys, 0.1, method="bilinear")
    >>> np.round(Cd, 6), np.round(Dd, 6)
    (array([[0.952381, 0.930736]]), array([[0.094156]]))
    """
    fn = "cont2discrete"
    if hasattr(system, "to_discrete") and callable(system.to_discrete):
        return system.to_discrete(dt=dt, method=method, alpha=alpha)
    if not isinstance(system, (tuple, list)) or len(system) not in (2, 3, 4):
        raise ValueError(
            f"{fn}: system must be an lti instance or a tuple (num, den), (zeros, poles, gain) "
            f"or (A, B, C, D); got {type(system).__name__}"
            + (f" of length {len(system)}" if isinstance(system, (tuple, list)) else "")
        )
    if len(system) == 2:
        from scipy.signal import ss2tf, tf2ss

        sysd = cont2discrete(tf2ss(*system), dt, method=method, alpha=alpha)
        return ss2tf(*sysd[:4]) + (dt,)
    if len(system) == 3:
        from scipy.signal import ss2zpk, zpk2ss

        sysd = cont2discrete(zpk2ss(*system), dt, method=method, alpha=alpha)
        return ss2zpk(*sysd[:4]) + (dt,)

    name, alpha = _parse_method(fn, method, alpha, _SCIPY_METHODS)
    step = check_dt(fn, dt)
    if step.ndim:
        raise ValueError(f"{fn}: dt must be a scalar; got shape {step.shape} (use discretize for batches)")
    A, B, C, D = system
    A, B = _dense_validate(fn, A, B, integer_ok=True)
    if A.ndim != 2 or B.ndim != 2:
        name_, arr = ("A", A) if A.ndim != 2 else ("B", B)
        raise shape_error(fn, name_, arr.shape, "a 2-D array (use discretize for batches)")
    n, m = B.shape
    C = as_float_array(fn, "C", C, integer_ok=True)
    if C.ndim != 2 or C.shape[1] != n:
        raise shape_error(fn, "C", C.shape, f"(p, {n}) to match A of shape {A.shape}")
    p = C.shape[0]
    D = as_float_array(fn, "D", D, integer_ok=True)
    try:
        D = np.broadcast_to(D, (p, m)).copy()
    except ValueError:
        expected = f"({p}, {m}) (or broadcastable to it) for C {C.shape} and B {B.shape}"
        raise shape_error(fn, "D", D.shape, expected) from None
    if name == "impulse" and not np.allclose(D, 0):
        raise ValueError(
            f"{fn}: method 'impulse' needs a strictly proper system (D = 0); got max |D| = {np.max(np.abs(D))!r}"
        )

    A64, B64 = _compute(A), _compute(B)
    h = float(step)
    k = kernels(_backend(fn, None, A, B), "discretization")
    Ad, Bd, extra = _dense_forward(k, A64, B64, np.float64(h), name, alpha, fn)
    if name == "gbt":
        Cd = _swap(np.linalg.solve(_swap(extra["M"]), _swap(C)))
        Dd = D + alpha * (C @ Bd)
    elif name == "foh":
        Cd, Dd = C, D + C @ extra["F13"]
    elif name == "impulse":
        Cd, Dd = C, (C @ B64) * h
    else:
        Cd, Dd = C, D
    return Ad, Bd, Cd, Dd, dt

