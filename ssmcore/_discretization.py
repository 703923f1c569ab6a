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

Front doors and pullbacks are device-neutral (array-API functions of the call's
namespace ``xp``, resolved once by :func:`ssmcore.dispatch.select`); the kernels
(elementwise diagonal discretisation, batched ``expm``) allocate their outputs and
pick their own work split. All three functions run on the
NumPy reference, the Numba kernels and the CuPy kernels
(``backends/cupy/discretization.py``; not yet run on a GPU).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _xp
from .dispatch import Target, array_kind, declare_backends, select
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

#: The CPU backends of this module's ops (each op adds "cupy": its CuPy kernels exist).
_BACKENDS = ("numpy", "numba")
# cont2discrete is not a registered op (no gradient) but runs the expm kernels of discretize.
declare_backends("cont2discrete", (*_BACKENDS, "cupy"))


# --------------------------------------------------------------------------- shared helpers


def _parse_method(fn: str, method: Any, alpha: Any, choices: tuple[str, ...]) -> tuple[str, float]:
    """Canonical method ('zoh', 'foh', 'impulse', 'zoh_euler' or 'gbt') and its alpha."""
    name = check_choice(fn, "method", method, choices)
    if name == "gbt":
        return "gbt", check_alpha(fn, alpha)
    if name in _GBT_ALIASES:
        return "gbt", _GBT_ALIASES[name]
    return name, 0.0


def _check_dt(fn: str, dt: Any, t: Target, *, name: str = "dt") -> Any:
    """:func:`ssmcore.validation.check_dt` in the call's namespace (same rules and messages).

    A Python number is checked on the host and then placed on the call's device
    (no device round trip); a device array is checked where it lives, which
    costs one host synchronisation: the error contract needs the answer.
    """
    if t.kind == "numpy" or array_kind(dt) is None:
        arr = check_dt(fn, dt, name=name)
        return arr if t.kind == "numpy" else t.asarray(arr)
    xp = t.xp
    arr = as_float_array(fn, name, dt, complex_ok=False, target=t)
    if not bool(xp.all(xp.isfinite(arr))):
        raise ValueError(f"{fn}: {name} must be finite; got non-finite values")
    if bool(xp.any(arr <= 0)):
        raise ValueError(f"{fn}: {name} must be > 0; got min {float(xp.min(arr))!r}")
    return arr


def _is_array(t: Target, x: Any) -> bool:
    """Whether ``x`` is an array of the call's kind (Python numbers and lists are not)."""
    return isinstance(x, np.ndarray) if t.kind == "numpy" else array_kind(x) == t.kind


def _is_single(t: Target, *inputs: Any) -> bool:
    """True if the typed inputs (arrays, NumPy scalars) are all single precision.

    Python numbers and lists carry no precision intent and do not count; the
    computation itself always runs in float64/complex128.
    """
    if t.kind == "numpy":
        dts = [np.asarray(x).dtype for x in inputs if isinstance(x, (np.ndarray, np.generic))]
        dts = [d for d in dts if d.kind in "fc"]
        return bool(dts) and np.result_type(*dts) in (np.float32, np.complex64, np.float16)
    xp = t.xp
    dts = [x.dtype for x in inputs if _is_array(t, x) and xp.isdtype(x.dtype, ("real floating", "complex floating"))]
    dts += [np.asarray(x).dtype for x in inputs if isinstance(x, np.generic) and np.asarray(x).dtype.kind in "fc"]
    # all single (or half) precision <=> their promotion is single precision
    return bool(dts) and all(_xp.dtype_name(d) in ("float16", "float32", "complex64") for d in dts)


def _cplx(xp: Any, dtype: Any) -> bool:
    """Whether a validated (float32/64, complex64/128) dtype is complex.

    Equality with the namespace's dtypes: a fraction of ``xp.isdtype``'s cost,
    which matters on the µs-scale NumPy path.
    """
    return dtype == xp.complex128 or dtype == xp.complex64


def _bcast(xp: Any, x: Any, shape: tuple[int, ...]) -> Any:
    """``xp.broadcast_to`` that skips the call when ``x`` already has the shape."""
    return x if tuple(x.shape) == shape else xp.broadcast_to(x, shape)


def _compute(xp: Any, x: Any) -> Any:
    """float64 or complex128 view/copy of a validated array."""
    if x.dtype == xp.float64 or x.dtype == xp.complex128:
        return x
    return xp.astype(x, xp.complex128 if _cplx(xp, x.dtype) else xp.float64)


def _output(xp: Any, x: Any, single: bool) -> Any:
    if single:
        return xp.astype(x, xp.complex64 if _cplx(xp, x.dtype) else xp.float32)
    return x


def _grad_as(t: Target, g: Any, like: Any) -> Any:
    """A gradient in its input's dtype: real part for real inputs (adjoint of the real embedding)."""
    if t.kind == "numpy":
        if not np.iscomplexobj(like):
            g = np.real(g)
        return np.array(g, dtype=like.dtype, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    xp = t.xp
    if _cplx(xp, g.dtype) and not _cplx(xp, like.dtype):
        g = xp.real(g)
    return xp.astype(g, like.dtype)


def _swap(xp: Any, x: Any) -> Any:
    """Matrix transpose of a stack (no conjugation: the project's VJP convention)."""
    return xp.matrix_transpose(x)


def _concat_last(xp: Any, *parts: Any) -> Any:
    """Concatenate along the last axis in the parts' common dtype."""
    dt = xp.result_type(*(p.dtype for p in parts))
    return xp.concat([xp.astype(p, dt, copy=False) for p in parts], axis=-1)


def _solve(xp: Any, M: Any, R: Any) -> Any:
    """``M^-1 R`` for stacks of matrices, in the common dtype of M and R."""
    dt = xp.result_type(M.dtype, R.dtype)
    return xp.linalg.solve(xp.astype(M, dt, copy=False), xp.astype(R, dt, copy=False))


def _broadcast_error(fn: str, **shapes: tuple[int, ...]) -> ValueError:
    listed = ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
    return ValueError(f"{fn}: shapes do not broadcast: {listed}")


# --------------------------------------------------------------------------- diagonal A


def _discretize_diag_fwd(A, B, dt, method="zoh", alpha=None, *, backend=None):
    fn = "discretize_diag"
    t = select(fn, A, B, dt, backend=backend)
    xp = t.xp
    name, alpha = _parse_method(fn, method, alpha, DIAG_METHODS)
    single = _is_single(t, A, B, dt)
    A = as_float_array(fn, "A", A, min_ndim=1, expected="(..., N)", target=t)
    B = as_float_array(fn, "B", B, min_ndim=1, expected="(..., N) or (..., N, M)", target=t)
    dt = _check_dt(fn, dt, t)
    # dt without a state axis is a per-channel step: it gets one (S4D's dt[..., None]).
    dt_eff = dt[..., None] if dt.ndim < A.ndim else dt
    if B.ndim <= A.ndim:
        matrix, Bm = False, B[..., None]
    elif B.ndim == A.ndim + 1:
        matrix, Bm = True, B
    else:
        expected = f"(..., N) or (..., N, M), at most {A.ndim + 1} dimensions for A of shape {tuple(A.shape)}"
        raise shape_error(fn, "B", B.shape, expected)
    try:
        shape = _xp.broadcast_shapes(A.shape, dt_eff.shape, Bm.shape[:-1])
    except ValueError:
        raise _broadcast_error(fn, A=A.shape, dt=dt.shape, B=B.shape) from None
    N, M = shape[-1], Bm.shape[-1]
    R = _xp.prod(shape[:-1])
    A2 = xp.reshape(_bcast(xp, _compute(xp, A), shape), (R, N))
    dt2 = xp.reshape(_bcast(xp, xp.astype(dt_eff, xp.float64, copy=False), shape), (R, N))
    B3 = xp.reshape(_bcast(xp, _compute(xp, Bm), (*shape, M)), (R, N, M))
    code = METHOD_CODES[name]
    Ad, Bd = t.kernels("discretization").discretize_diag_fwd(A2, dt2, B3, code, alpha)
    Ad = xp.reshape(Ad, shape)
    Bd = xp.reshape(Bd, (*shape, M) if matrix else shape)
    res = (t, A2, dt2, B3, code, alpha, shape, matrix, A, B, dt, dt_eff.shape)
    return (_output(xp, Ad, single), _output(xp, Bd, single)), res


def _discretize_diag_bwd(res, cotangent):
    t, A2, dt2, B3, code, alpha, shape, matrix, A, B, dt, dt_eff_shape = res
    xp = t.xp
    gAd, gBd = cotangent
    R, N, M = B3.shape
    gAd2 = xp.reshape(_compute(xp, gAd), (R, N))
    gBd3 = xp.reshape(_compute(xp, gBd), (R, N, M))
    gA, gdt, gB = t.kernels("discretization").discretize_diag_bwd(A2, dt2, B3, code, alpha, gAd2, gBd3)
    gB = xp.reshape(gB, (*shape, M) if matrix else shape)
    gdt = xp.reshape(sum_to_shape(xp.reshape(gdt, shape), dt_eff_shape, xp), dt.shape)
    return (
        _grad_as(t, sum_to_shape(xp.reshape(gA, shape), A.shape, xp), A),
        _grad_as(t, sum_to_shape(gB, B.shape, xp), B),
        _grad_as(t, gdt, dt),
    )


@register_op(
    "discretize_diag", fwd=_discretize_diag_fwd, bwd=_discretize_diag_bwd, inputs=("A", "B", "dt"),
    backends=(*_BACKENDS, "cupy"),
)
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
    every real or complex x, including :math:`|x|` down to 1e-300 and x = 0.

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
    discretize : The same methods for a dense (batched) state matrix A.
    cont2discrete : Drop-in for :func:`scipy.signal.cont2discrete` (also changes C and D).

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


def _hold_matrix(t: Target, A: Any, B: Any, dtb: Any, first_order: bool) -> Any:
    """Dt [[A, B], [0, 0]] (zero-order hold) or [[A dt, B dt, 0], [0, 0, I], [0, 0, 0]] (first-order hold)."""
    xp = t.xp
    n, m = B.shape[-2:]
    P = n + (2 * m if first_order else m)
    batch = _xp.broadcast_shapes(A.shape[:-2], B.shape[:-2], dtb.shape[:-2])
    Z = xp.zeros((*batch, P, P), dtype=xp.result_type(A.dtype, B.dtype), device=t.device)
    Z[..., :n, :n] = A
    Z[..., :n, n : n + m] = B
    Z *= dtb  # one pass, no A*dt and B*dt temporaries (the same products scipy forms)
    if first_order:
        Z[..., n : n + m, n + m :] = xp.eye(m, dtype=Z.dtype, device=t.device)
    return Z


def _norm1(xp: Any, M: Any) -> Any:
    """1-norm (largest column sum) of each matrix of a stack, shaped (..., 1, 1)."""
    col = xp.sum(xp.abs(M), axis=-2)
    nrm = xp.max(col, axis=-1) if col.shape[-1] else xp.sum(col, axis=-1)  # 0 for 0x0 matrices
    return xp.reshape(nrm, (*nrm.shape, 1, 1))


def _msum(xp: Any, x: Any) -> Any:
    """Sum over the two matrix axes: the pairing of a cotangent with a matrix, per system."""
    return xp.sum(x, axis=(-2, -1))


def _frechet_adjoint(t: Target, k, X: Any, G: Any) -> Any:
    """Transpose of the Frechet derivative of expm at X, applied to G (stacks, no conjugation).

    L(X, E) is the upper-right block of expm([[X, E], [0, X]]); its transpose
    under sum(G * L(X, E)) is L(X^T, G). L is linear in G, so G is first scaled
    to X's size: a large cotangent would otherwise raise the 1-norm that sets
    the number of squarings, and cost accuracy.
    """
    xp = t.xp
    n = X.shape[-1]
    Xt = _swap(xp, X)
    c = xp.maximum(_norm1(xp, G), 1e-300) / xp.maximum(_norm1(xp, X), 1.0)
    W = xp.zeros((*G.shape[:-2], 2 * n, 2 * n), dtype=xp.result_type(X.dtype, G.dtype), device=t.device)
    W[..., :n, :n] = Xt
    W[..., n:, n:] = Xt
    W[..., :n, n:] = G / c
    return k.expm(W)[..., :n, n:] * c


def _dense_forward(t: Target, A: Any, B: Any, dtb: Any, name: str, alpha: float, fn: str):
    """(Ad, Bd, residuals) for validated float64/complex128 A (.., n, n), B (.., n, m), dtb (batch, 1, 1)."""
    xp = t.xp
    k = t.kernels("discretization")
    n, m = B.shape[-2:]
    if name in ("zoh", "foh"):
        Z = _hold_matrix(t, A, B, dtb, first_order=name == "foh")
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
        return F, xp.asarray(xp.broadcast_to(B * dtb, (*X.shape[:-2], n, m)), copy=True), {"X": X}
    # generalised bilinear transform: M = I - alpha dt A, [Ad, Bd] = M^-1 [I + (1-alpha) dt A, dt B]
    eye = xp.eye(n, dtype=xp.float64, device=t.device)
    Mm = eye - (alpha * dtb) * A
    rhs_A = eye + ((1.0 - alpha) * dtb) * A
    rhs_B = xp.broadcast_to(dtb * B, (*rhs_A.shape[:-2], n, m))
    try:
        K = _solve(xp, Mm, _concat_last(xp, rhs_A, rhs_B))
    except np.linalg.LinAlgError:
        raise np.linalg.LinAlgError(
            f"{fn}: I - alpha*dt*A is singular (alpha={alpha}): an eigenvalue of A equals 1/(alpha*dt)"
        ) from None
    return K[..., :n], K[..., n:], {"M": Mm, "K": K}


def _dense_backward(t: Target, A, B, dtb, name, alpha, extra, gAd, gBd):
    """(gA, gB, gdt) on the broadcast batch shape (before reduction)."""
    xp = t.xp
    k = t.kernels("discretization")
    n, m = B.shape[-2:]
    if name in ("zoh", "foh"):
        Z = extra["Z"]
        GE = xp.zeros(Z.shape, dtype=xp.result_type(Z.dtype, gAd.dtype, gBd.dtype), device=t.device)
        if name == "zoh":
            GE[..., :n, :n] = gAd
            GE[..., :n, n : n + m] = gBd
        else:  # Bd = F12 - F13 + F11 F13
            F11, F13 = extra["F11"], extra["F13"]
            GE[..., :n, :n] = gAd + gBd @ _swap(xp, F13)
            GE[..., :n, n : n + m] = gBd
            GE[..., :n, n + m :] = _swap(xp, F11) @ gBd - gBd
        GZ = _frechet_adjoint(t, k, Z, GE)
        GX, GY = GZ[..., :n, :n], GZ[..., :n, n : n + m]
        return GX * dtb, GY * dtb, _msum(xp, GX * A) + _msum(xp, GY * B)
    if name in ("impulse", "zoh_euler"):
        X = extra["X"]
        if name == "impulse":  # Bd = F B dt
            F = extra["F"]
            gF = gAd + (gBd * dtb) @ _swap(xp, B)
            gB = (_swap(xp, F) @ gBd) * dtb
            gdt = _msum(xp, gBd * (F @ B))
        else:  # Bd = B dt
            gF, gB, gdt = gAd, gBd * dtb, _msum(xp, gBd * B)
        GX = _frechet_adjoint(t, k, X, gF)
        return GX * dtb, gB, gdt + _msum(xp, GX * A)
    Mm, K = extra["M"], extra["K"]
    S = _solve(xp, _swap(xp, Mm), _concat_last(xp, gAd, gBd))  # cotangent of the right-hand side
    gM = -(S @ _swap(xp, K))
    SA, SB = S[..., :n], S[..., n:]
    gA = (-alpha * dtb) * gM + ((1.0 - alpha) * dtb) * SA
    gdt = -alpha * _msum(xp, gM * A) + (1.0 - alpha) * _msum(xp, SA * A) + _msum(xp, SB * B)
    return gA, dtb * SB, gdt


def _dense_validate(fn: str, A: Any, B: Any, t: Target, *, integer_ok: bool = False) -> tuple[Any, Any]:
    A = as_float_array(fn, "A", A, integer_ok=integer_ok, min_ndim=2, expected="(..., N, N)", target=t)
    if A.shape[-1] != A.shape[-2]:
        raise shape_error(fn, "A", A.shape, "(..., N, N) (square in the last two axes)")
    N = A.shape[-1]
    B = as_float_array(
        fn, "B", B, integer_ok=integer_ok, min_ndim=2, expected=f"(..., {N}, M); for one input pass B[:, None]",
        target=t,
    )
    if B.shape[-2] != N:
        raise shape_error(fn, "B", B.shape, f"(..., {N}, M) to match A of shape {tuple(A.shape)}")
    return A, B


def _discretize_fwd(A, B, dt, method="zoh", alpha=None, *, backend=None):
    fn = "discretize"
    t = select(fn, A, B, dt, backend=backend)
    xp = t.xp
    name, alpha = _parse_method(fn, method, alpha, DENSE_METHODS)
    single = _is_single(t, A, B, dt)
    A, B = _dense_validate(fn, A, B, t)
    dt = _check_dt(fn, dt, t)
    try:
        batch = _xp.broadcast_shapes(A.shape[:-2], B.shape[:-2], dt.shape)
    except ValueError:
        raise _broadcast_error(fn, **{"A batch": A.shape[:-2], "B batch": B.shape[:-2], "dt": dt.shape}) from None
    A64, B64 = _compute(xp, A), _compute(xp, B)
    dtb = xp.reshape(xp.broadcast_to(xp.astype(dt, xp.float64, copy=False), batch), (*batch, 1, 1))
    Ad, Bd, extra = _dense_forward(t, A64, B64, dtb, name, alpha, fn)
    res = (t, A64, B64, dtb, name, alpha, extra, A, B, dt)
    if t.kind == "numpy":  # slices of the expm stack: hand out compact arrays
        Ad, Bd = np.ascontiguousarray(Ad), np.ascontiguousarray(Bd)
    return (_output(xp, Ad, single), _output(xp, Bd, single)), res


def _discretize_bwd(res, cotangent):
    t, A64, B64, dtb, name, alpha, extra, A, B, dt = res
    xp = t.xp
    gAd, gBd = (_compute(xp, c) for c in cotangent)
    gA, gB, gdt = _dense_backward(t, A64, B64, dtb, name, alpha, extra, gAd, gBd)
    return (
        _grad_as(t, sum_to_shape(gA, A.shape, xp), A),
        _grad_as(t, sum_to_shape(gB, B.shape, xp), B),
        _grad_as(t, sum_to_shape(gdt, dt.shape, xp), dt),
    )


@register_op("discretize", fwd=_discretize_fwd, bwd=_discretize_bwd, inputs=("A", "B", "dt"),
             backends=(*_BACKENDS, "cupy"))
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
        State matrix, or a stack of them along the leading batch axes.
    B : array_like, shape (..., N, M)
        Input matrix with M input channels; its batch axes broadcast against A's.
    dt : float or array_like, positive and finite
        Step size. Broadcasts (NumPy rules) against the batch axes ``...`` of A and B.
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

    See Also
    --------
    discretize_diag : The same methods elementwise for a diagonal A (S4D, S5, Mamba).
    cont2discrete : Drop-in for :func:`scipy.signal.cont2discrete`, with Cd and Dd.
    scipy.signal.cont2discrete : SciPy's discretisation of one system.

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

    See Also
    --------
    discretize : Ad and Bd only, for batches of dense systems (SSM convention).
    discretize_diag : Elementwise discretisation of a diagonal state matrix.
    scipy.signal.cont2discrete : The SciPy function this one reproduces.

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
    # Device-neutral for state-space tuples: it is discretize's core plus two products.
    # The (num, den) and (zeros, poles, gain) forms and lti objects go through
    # scipy.signal (tf2ss/zpk2ss and back), which is NumPy-only: they take NumPy input.
    fn = "cont2discrete"
    if hasattr(system, "to_discrete") and callable(system.to_discrete):
        return system.to_discrete(dt=dt, method=method, alpha=alpha)
    if all(hasattr(system, k) for k in "ABCD") and not isinstance(system, (tuple, list)):
        # python-control's StateSpace and other state-space objects: their matrices, if continuous
        sys_dt = getattr(system, "dt", 0)
        if sys_dt not in (0, None) and sys_dt is not False:
            raise ValueError(
                f"{fn}: system is already discrete (dt={sys_dt!r}); cont2discrete takes a continuous system"
            )
        system = (system.A, system.B, system.C, system.D)
    if isinstance(system, (tuple, list)) and len(system) == 3 and any(getattr(x, "ndim", 0) == 2 for x in system):
        raise ValueError(
            f"{fn}: a system of 3 entries is read as (zeros, poles, gain), but one entry is a 2-D array; "
            "a state-space system is (A, B, C, D) (pass D, e.g. np.zeros((p, m)))"
        )
    if not isinstance(system, (tuple, list)) or len(system) not in (2, 3, 4):
        raise ValueError(
            f"{fn}: system must be an lti instance or a tuple (num, den), (zeros, poles, gain) "
            f"or (A, B, C, D); got {type(system).__name__}"
            + (f" of length {len(system)}" if isinstance(system, (tuple, list)) else "")
        )
    t = select(fn, *system, dt)
    if len(system) in (2, 3) and t.kind != "numpy":
        raise TypeError(
            f"{fn}: (num, den) and (zeros, poles, gain) systems go through scipy.signal, which takes NumPy "
            f"arrays; got {t.kind} arrays. Pass NumPy arrays, or a state-space tuple (A, B, C, D)"
        )
    if len(system) == 2:
        from scipy.signal import ss2tf, tf2ss

        sysd = cont2discrete(tf2ss(*system), dt, method=method, alpha=alpha)
        return ss2tf(*sysd[:4]) + (dt,)
    if len(system) == 3:
        from scipy.signal import ss2zpk, zpk2ss

        sysd = cont2discrete(zpk2ss(*system), dt, method=method, alpha=alpha)
        return ss2zpk(*sysd[:4]) + (dt,)

    xp = t.xp
    name, alpha = _parse_method(fn, method, alpha, _SCIPY_METHODS)
    step = _check_dt(fn, dt, t)
    if step.ndim:
        raise ValueError(f"{fn}: dt must be a scalar; got shape {tuple(step.shape)} (use discretize for batches)")
    A, B, C, D = system
    A, B = _dense_validate(fn, A, B, t, integer_ok=True)
    if A.ndim != 2 or B.ndim != 2:
        name_, arr = ("A", A) if A.ndim != 2 else ("B", B)
        raise shape_error(fn, name_, arr.shape, "a 2-D array (use discretize for batches)")
    n, m = B.shape
    C = as_float_array(fn, "C", C, integer_ok=True, target=t)
    c_row = C.ndim == 1 and C.shape[0] == n  # one output row, as scipy (and dlsim) accept it
    if c_row:
        C = xp.reshape(C, (1, n))
    if C.ndim != 2 or C.shape[1] != n:
        raise shape_error(fn, "C", C.shape, f"(p, {n}) to match A of shape {tuple(A.shape)}")
    p = C.shape[0]
    D = as_float_array(fn, "D", D, integer_ok=True, target=t)
    try:
        _xp.broadcast_shapes(D.shape, (p, m))
        if D.ndim > 2 or _xp.broadcast_shapes(D.shape, (p, m)) != (p, m):
            raise ValueError
    except ValueError:
        expected = f"({p}, {m}) (or broadcastable to it) for C {tuple(C.shape)} and B {tuple(B.shape)}"
        raise shape_error(fn, "D", D.shape, expected) from None
    D = xp.asarray(xp.broadcast_to(D, (p, m)), copy=True)
    # scipy's np.allclose(D, 0): |D| <= 1e-8 (a host synchronisation, part of the error contract)
    if name == "impulse" and not bool(xp.all(xp.abs(D) <= 1e-8)):
        raise ValueError(
            f"{fn}: method 'impulse' needs a strictly proper system (D = 0); got max |D| = {float(xp.max(xp.abs(D)))!r}"
        )

    A64, B64 = _compute(xp, A), _compute(xp, B)
    h = xp.reshape(xp.astype(step, xp.float64, copy=False), (1, 1))
    Ad, Bd, extra = _dense_forward(t, A64, B64, h, name, alpha, fn)
    if name == "gbt":
        Cd = _swap(xp, _solve(xp, _swap(xp, extra["M"]), _swap(xp, C)))
        Dd = D + alpha * (C @ Bd)
    elif name == "foh":
        Cd, Dd = C, D + C @ extra["F13"]
    elif name == "impulse":
        Cd, Dd = C, (C @ B64) * h
    else:
        Cd, Dd = C, D
    if c_row:  # scipy returns Cd in C's own (1-D) shape
        Cd = xp.reshape(Cd, (n,))
    return Ad, Bd, Cd, Dd, dt
