"""Convolution mode of linear time-invariant SSMs: kernels K_l = C Ad^l Bd and FFT convolution.

For an LTI SSM in the SSM convention (x_l = Ad x_{l-1} + Bd u_l, y_l = C x_l + D u_l,
x_{-1} = 0) the output is a causal convolution, y = K * u + D u with
K_l = C Ad^l Bd, l = 0 .. L-1. This module computes K for three structures of the
state matrix and applies it by FFT:

* :func:`ssm_kernel_diag` -- diagonal A (S4D, S5, LRU, Mamba-style modes): a
  Vandermonde product, discretised inside (``zoh``, ``bilinear``, ``zoh_euler``).
* :func:`ssm_kernel_dplr` -- S4's diagonal-plus-low-rank A = diag(Lambda) - P P^*:
  bilinear discretisation, Cauchy kernel at the roots of unity, Woodbury, inverse FFT.
* :func:`ssm_kernel_dense` -- any dense discrete (Ad, Bd, C) by repeated mat-vec.
* :func:`fft_conv` -- causal (or two-sided) FFT convolution with a D skip term.

Every function is a registered op (``ssmcore.vjp("ssm_kernel_diag", ...)``) with a
hand-written pullback; complex parameters follow JAX's convention (transpose of
the linearisation, no conjugation). NumPy arrays run on the Numba kernels of
``ssmcore.backends.numba.convolution``; ``backend="numpy"`` runs the materialised
reference ``ssmcore.reference.convolution``.

The front doors and pullbacks are device-neutral: :func:`ssmcore.dispatch.select`
resolves the backend and the array namespace ``xp`` once per call, and all glue
(validation, broadcasting, discretisation, the Woodbury step and its adjoint)
uses array-API functions of ``xp`` only; the kernels allocate their outputs and
choose their own work split (FFT length, threads, frequency blocks). The ops
run on the NumPy reference, the Numba kernels and the CuPy kernels
(``backends/cupy/convolution.py``; not yet run on a GPU).
:func:`dplr_c_tilde` runs no kernel and works in any namespace.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _xp
from ._discretization import _bcast, _check_dt, _cplx
from .dispatch import Target, array_kind, declare_backends, select
from .reference.discretization import phi_functions
from .registry import register_op
from .validation import as_float_array, check_bool, check_choice, check_int, shape_error, sum_to_shape

__all__ = [
    "ConvSpectrum", "dplr_c_tilde", "fft_conv", "fft_conv_spectrum", "ssm_kernel_dense", "ssm_kernel_diag",
    "ssm_kernel_dplr",
]

DIAG_METHODS = ("zoh", "bilinear", "zoh_euler")

#: The CPU backends of this module's ops (each op adds "cupy": its CuPy kernels exist).
_BACKENDS = ("numpy", "numba")


# --------------------------------------------------------------------------- helpers


def phi1(x: Any, xp: Any = None) -> Any:
    """(exp(x) - 1) / x with phi1(0) = 1, stable for complex x near 0 (shared with discretisation)."""
    if xp is None:
        return phi_functions(np.asarray(x, np.complex128))[1]
    return phi_functions(x, xp)[1]


def phi2(x: Any, xp: Any = None) -> Any:
    """(exp(x) - 1 - x) / x^2 with phi2(0) = 1/2 (so that phi1'(x) = phi1(x) - phi2(x))."""
    if xp is None:
        return phi_functions(np.asarray(x, np.complex128))[2]
    return phi_functions(x, xp)[2]


def _real_dtype(t: Target, *arrays: Any) -> str:
    """'float32' if every given array is single precision, else 'float64' (Python scalars don't count).

    A dtype *name*: the kernels allocate their output in it on any device.
    """
    if t.kind == "numpy":
        dts = [a.dtype for a in arrays if isinstance(a, np.ndarray)]
        single = bool(dts) and all(d in (np.float32, np.complex64) for d in dts)
    else:
        dts = [_xp.dtype_name(a.dtype) for a in arrays if array_kind(a) == t.kind]
        single = bool(dts) and all(d in ("float32", "complex64") for d in dts)
    return "float32" if single else "float64"


def _check_L(fn: str, L: Any) -> int:
    return check_int(fn, "L", L, minimum=0)


def _grad_like(t: Target, g: Any, x: Any, canon_shape: tuple[int, ...]) -> Any:
    """Reduce a broadcast gradient to the input's canonical shape, then its own shape and dtype."""
    xp = t.xp
    g = xp.reshape(sum_to_shape(g, canon_shape, xp), x.shape)
    if _cplx(xp, g.dtype) and not _cplx(xp, x.dtype):
        g = xp.real(g)
    return xp.astype(g, x.dtype, copy=False)


def _lead_h(fn: str, sizes: list[tuple[str, tuple[int, ...], int]]) -> int:
    """The common channel count H from (name, shape, H) candidates (1 broadcasts)."""
    H = max([h for _, _, h in sizes] + [1])
    if any(h not in (1, H) for _, _, h in sizes):
        have = ", ".join(f"{n} {tuple(s)} has H={h}" for n, s, h in sizes)
        raise ValueError(f"{fn}: mismatched channel axis: {have}; expected one H (or 1) shared by all")
    return H


def _canon(t: Target, x: Any, canon: tuple[int, ...], shape: tuple[int, ...], dtype: Any) -> Any:
    """``x`` reshaped to its canonical shape, broadcast to ``shape`` and cast to ``dtype``."""
    xp = t.xp
    if tuple(x.shape) != canon:
        x = xp.reshape(x, canon)
    return xp.astype(_bcast(xp, x, shape), dtype)


# --------------------------------------------------------------------------- diagonal kernel


def _diag_prepare(fn, t, A, B, C, dt, L, method, conj_sym):
    xp = t.xp
    dt_in = dt
    A = as_float_array(fn, "A", A, min_ndim=1, max_ndim=2, expected="(N,) or (H, N)", target=t)
    B = as_float_array(fn, "B", B, min_ndim=1, max_ndim=2, expected="(N,) or (H, N)", target=t)
    C = as_float_array(fn, "C", C, min_ndim=1, max_ndim=3, expected="(N,), (H, N) or (C_out, H, N)", target=t)
    dt = _check_dt(fn, dt, t)
    L = _check_L(fn, L)
    method = check_choice(fn, "method", method, DIAG_METHODS)
    if dt.ndim > 2:
        raise shape_error(fn, "dt", dt.shape, "a scalar, (H,) or (H, N)")
    N = A.shape[-1]
    for name, x in (("B", B), ("C", C)):
        if x.shape[-1] != N:
            raise shape_error(fn, name, x.shape, f"last axis N={N} like A {tuple(A.shape)}")
    if dt.ndim == 2 and dt.shape[-1] not in (1, N):
        raise shape_error(fn, "dt", dt.shape, f"(H, N) with N={N} like A {tuple(A.shape)}, or (H,) per channel")
    cands = []
    if A.ndim == 2:
        cands.append(("A", A.shape, A.shape[0]))
    if B.ndim == 2:
        cands.append(("B", B.shape, B.shape[0]))
    if C.ndim >= 2:
        cands.append(("C", C.shape, C.shape[-2]))
    if dt.ndim >= 1:
        cands.append(("dt", dt.shape, dt.shape[0]))
    H = _lead_h(fn, cands)
    out_dtype = _real_dtype(t, A, B, C, dt_in)
    if C.ndim == 3:
        out_shape = (C.shape[0], H, L)
    elif cands:
        out_shape = (H, L)
    else:
        out_shape = (L,)
    # canonical shapes: A, B (1|H, N); C (1|Co, 1|H, N); dt (1|H, 1|N)
    canon = {
        "A": (1,) * (2 - A.ndim) + tuple(A.shape),
        "B": (1,) * (2 - B.ndim) + tuple(B.shape),
        "C": (1,) * (3 - C.ndim) + tuple(C.shape),
        "dt": tuple(dt.shape) + (1,) * (2 - dt.ndim) if dt.ndim else (1, 1),
    }
    Co = canon["C"][0]
    c128 = xp.complex128
    a = _canon(t, A, canon["A"], (H, N), c128)
    b = _canon(t, B, canon["B"], (H, N), c128)
    c = _canon(t, C, canon["C"], (Co, H, N), c128)
    d = _canon(t, dt, canon["dt"], (H, N), xp.float64)
    return dict(
        A=A, B=B, C=C, dt=dt, a=a, b=b, c=c, d=d, L=L, method=method, scale=2.0 if conj_sym else 1.0,
        target=t, out_dtype=out_dtype, out_shape=out_shape, canon=canon,
    )  # fmt: skip


def _discretize_diag(xp: Any, a: Any, b: Any, d: Any, method: str) -> tuple[Any, Any]:
    """(log Ad, Bd) elementwise in complex128 -- the formulas of REFERENCE.md section 1."""
    x = d * a
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if method == "zoh":
            return x, d * phi1(x, xp) * b
        if method == "bilinear":
            return xp.log(1 + 0.5 * x) - xp.log(1 - 0.5 * x), d * b / (1 - 0.5 * x)
        return x, d * b  # zoh_euler: Ad = exp(dt A), Bd = dt B (Mamba)


def _ssm_kernel_diag_fwd(A, B, C, dt, L, *, method="zoh", conj_sym=True, backend=None):
    fn = "ssm_kernel_diag"
    t = select(fn, A, B, C, dt, backend=backend)
    p = _diag_prepare(fn, t, A, B, C, dt, L, method, conj_sym)
    xp = t.xp
    log_ad, bd = _discretize_diag(xp, p["a"], p["b"], p["d"], p["method"])
    W = p["scale"] * p["c"] * bd
    K = t.kernels("convolution").vandermonde_kernel(log_ad, W, p["L"], p["out_dtype"])
    return xp.reshape(K, p["out_shape"]), (p, log_ad, bd, W)


def _ssm_kernel_diag_bwd(res, ct):
    p, log_ad, bd, W = res
    t = p["target"]
    xp = t.xp
    Co, H, N = W.shape
    if _cplx(xp, ct.dtype):
        ct = xp.real(ct)
    G = xp.reshape(xp.astype(ct, xp.float64, copy=False), (Co, H, p["L"]))
    W_bar, ad_bar = t.kernels("convolution").vandermonde_kernel_bwd(log_ad, W, G)
    s, a, b, d, c = p["scale"], p["a"], p["b"], p["d"], p["c"]
    C_bar = s * W_bar * bd
    bd_bar = s * xp.sum(W_bar * c, axis=0)
    x = d * a
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if p["method"] == "zoh":
            ad = xp.exp(x)
            _, f1, f2, _ = phi_functions(x, xp)
            x_bar = ad_bar * ad + bd_bar * b * d * (f1 - f2)
            dt_bar = bd_bar * b * f1
            B_bar = bd_bar * d * f1
        elif p["method"] == "bilinear":
            m = 1.0 / (1.0 - 0.5 * x)
            x_bar = ad_bar * m * m + bd_bar * d * b * m * m * 0.5
            dt_bar = bd_bar * b * m
            B_bar = bd_bar * d * m
        else:
            x_bar = ad_bar * xp.exp(x)
            dt_bar = bd_bar * b
            B_bar = bd_bar * d
    A_bar = x_bar * d
    dt_bar = xp.real(dt_bar + x_bar * a)
    cn = p["canon"]
    return (
        _grad_like(t, A_bar, p["A"], cn["A"]),
        _grad_like(t, B_bar, p["B"], cn["B"]),
        _grad_like(t, C_bar, p["C"], cn["C"]),
        _grad_like(t, dt_bar, p["dt"], cn["dt"]),
    )


@register_op(
    "ssm_kernel_diag", fwd=_ssm_kernel_diag_fwd, bwd=_ssm_kernel_diag_bwd, inputs=("A", "B", "C", "dt"),
    backends=(*_BACKENDS, "cupy"),
)
def ssm_kernel_diag(
    A: Any,
    B: Any,
    C: Any,
    dt: Any,
    L: int,
    *,
    method: str = "zoh",
    conj_sym: bool = True,
    backend: str | None = None,
) -> np.ndarray:
    r"""Convolution kernel of a diagonal SSM (S4D): a Vandermonde product.

    With x = dt A elementwise, the discretisation ``method`` gives

    * ``"zoh"``: Ad = exp(x), Bd = dt phi1(x) B with phi1(x) = (e^x - 1)/x
      (a series near 0, so A -> 0 and A = 0 are exact);
    * ``"bilinear"``: Ad = (1 + x/2)/(1 - x/2), Bd = dt B / (1 - x/2) (S4/S5; C unchanged);
    * ``"zoh_euler"``: Ad = exp(x), Bd = dt B (Mamba's discretisation),

    and the kernel is, for l = 0 .. L-1,

    .. math:: K_l = s \, \mathrm{Re} \sum_n C_n \bar B_n \bar A_n^l,

    with s = 2 when ``conj_sym`` (each stored mode stands for a conjugate pair:
    S4D, S5, Mamba with complex A) and s = 1 otherwise (S4D's ``dss``, LRU).
    This is the impulse response of x_l = Ad x_{l-1} + Bd u_l, y_l = s Re(C x_l).

    Parameters
    ----------
    A : array_like, (N,) or (H, N)
        Continuous-time diagonal state matrix, complex or real.
    B : array_like, (N,) or (H, N)
        Input vector(s).
    C : array_like, (N,), (H, N) or (C_out, H, N)
        Output vector(s); a leading C_out axis gives C_out kernels per channel.
    dt : float or array_like, () , (H,) or (H, N)
        Positive finite step: one per channel (H,) or per channel and mode (H, N).
    L : int
        Kernel length (>= 0).
    method : {"zoh", "bilinear", "zoh_euler"}
        Discretisation.
    conj_sym : bool
        Factor 2 (True) or 1 (False) in front of the real part; applied to real
        inputs too (pass False for real modes that are not conjugate pairs).
    backend : {None, "numba", "numpy"}
        ``None`` picks the Numba kernel for NumPy arrays; ``"numpy"`` runs the
        materialised reference.

    Returns
    -------
    K : ndarray, (C_out, H, L), (H, L) or (L,)
        Real kernel; float32 when every array input is float32/complex64, else
        float64. The leading axes follow C (and H is present as soon as any
        input has a channel axis).

    Raises
    ------
    ValueError
        If the last axes of A, B and C differ, dt is not positive and finite or
        has more than two axes, the channel axes H of the inputs disagree, L is
        negative, or ``method`` is unknown.
    TypeError
        If L is not an integer, or an array is an integer, boolean or
        non-numeric NumPy array.

    See Also
    --------
    ssm_kernel_dplr : The kernel of S4's diagonal-plus-low-rank state matrix.
    fft_conv : Apply the kernel to an input sequence.
    lti_simulate_diag : The same diagonal system run step by step.

    Notes
    -----
    The Numba kernel never materialises the (H, N, L) Vandermonde matrix: memory is
    O(H (N + L)); it computes in float64 with a 64-step table of powers, an exact
    block multiplier exp(64 log Ad) and an exact re-anchor exp(l log Ad) every 4096
    steps, so long kernels of slowly decaying modes stay as accurate as the
    exp(l log Ad) formula. The pullback (op ``"ssm_kernel_diag"``, inputs A, B, C,
    dt) is a reverse Horner pass of the same memory.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import ssm_kernel_diag
    >>> A = np.array([-0.5 + 1j, -0.5 + 3j]); B = np.ones(2); C = np.array([1.0, 0.5j])
    >>> K = ssm_kernel_diag(A, B, C, 0.1, 4)
    >>> K.shape
    (4,)
    >>> Ad = np.exp(0.1 * A); Bd = (Ad - 1) / A * B   # direct ZOH for comparison
    >>> ref = [2 * np.real(np.sum(C * Bd * Ad**l)) for l in range(4)]
    >>> np.allclose(K, ref)
    True
    """
    return _ssm_kernel_diag_fwd(A, B, C, dt, L, method=method, conj_sym=conj_sym, backend=backend)[0]


# --------------------------------------------------------------------------- DPLR kernel


def _dplr_prepare(fn, t, Lambda, P, B, C, dt, L):
    xp = t.xp
    dt_in = dt
    lam = as_float_array(fn, "Lambda", Lambda, min_ndim=1, max_ndim=2, expected="(N,) or (H, N)", target=t)
    P = as_float_array(fn, "P", P, min_ndim=2, max_ndim=3, expected="(rank, N) or (rank, H, N)", target=t)
    B = as_float_array(fn, "B", B, min_ndim=1, max_ndim=2, expected="(N,) or (H, N)", target=t)
    C = as_float_array(fn, "C", C, min_ndim=1, max_ndim=3, expected="(N,), (H, N) or (C_out, H, N)", target=t)
    dt = _check_dt(fn, dt, t)
    L = _check_L(fn, L)
    if dt.ndim > 1:
        raise shape_error(fn, "dt", dt.shape, "a scalar or (H,) (one step per channel)")
    N = lam.shape[-1]
    for name, x in (("P", P), ("B", B), ("C", C)):
        if x.shape[-1] != N:
            raise shape_error(fn, name, x.shape, f"last axis N={N} like Lambda {tuple(lam.shape)}")
    cands = []
    if lam.ndim == 2:
        cands.append(("Lambda", lam.shape, lam.shape[0]))
    if P.ndim == 3:
        cands.append(("P", P.shape, P.shape[1]))
    if B.ndim == 2:
        cands.append(("B", B.shape, B.shape[0]))
    if C.ndim >= 2:
        cands.append(("C", C.shape, C.shape[-2]))
    if dt.ndim == 1:
        cands.append(("dt", dt.shape, dt.shape[0]))
    H = _lead_h(fn, cands)
    out_dtype = _real_dtype(t, lam, P, B, C, dt_in)
    r = P.shape[0]
    canon = {
        "Lambda": (1,) * (2 - lam.ndim) + tuple(lam.shape),
        "P": (r,) + (1,) * (3 - P.ndim) + tuple(P.shape[1:]),
        "B": (1,) * (2 - B.ndim) + tuple(B.shape),
        "C": (1,) * (3 - C.ndim) + tuple(C.shape),
        "dt": (1,) * (1 - dt.ndim) + tuple(dt.shape),
    }
    Co = canon["C"][0]
    if C.ndim == 3:
        out_shape = (Co, H, L)
    elif cands:
        out_shape = (H, L)
    else:
        out_shape = (L,)
    c128 = xp.complex128
    return dict(
        Lambda=lam, P=P, B=B, C=C, dt=dt, L=L, H=H, N=N, r=r, Co=Co, target=t,
        out_dtype=out_dtype, out_shape=out_shape, canon=canon,
        lam=_canon(t, lam, canon["Lambda"], (H, N), c128),
        p=_canon(t, P, canon["P"], (r, H, N), c128),
        b=_canon(t, B, canon["B"], (H, N), c128),
        c=_canon(t, C, canon["C"], (Co, H, N), c128),
        d=_canon(t, dt, canon["dt"], (H,), xp.float64),
    )  # fmt: skip


def _nodes(t: Target, L: int) -> tuple[Any, Any]:
    """1 - w_k and 1 + w_k for w_k = exp(-2 pi i k / L), k = 0 .. L//2, without cancellation."""
    xp = t.xp
    th = 2.0 * np.pi * xp.arange(L // 2 + 1, dtype=xp.float64, device=t.device) / max(L, 1)
    s = xp.sin(th)
    return 2.0 * xp.sin(0.5 * th) ** 2 + 1j * s, 2.0 * xp.cos(0.5 * th) ** 2 - 1j * s


def _dplr_forward(p):
    """Cauchy sums + Woodbury; returns the half spectrum Khat (Co, H, F) and what the VJP needs."""
    t = p["target"]
    xp = t.xp
    H, N, r, Co, L = p["H"], p["N"], p["r"], p["Co"], p["L"]
    d = p["d"]
    mu = 0.5 * d[:, None] * p["lam"]  # dt Lambda / 2
    X = xp.concat([p["c"], xp.conj(p["p"])], axis=0)  # (Co + r, H, N): rows C~, P^*
    Y = xp.concat([p["b"][None, ...], p["p"]], axis=0)  # (1 + r, H, N): columns B, P
    num = xp.reshape(xp.permute_dims(X[:, None, ...] * Y[None, ...], (2, 0, 1, 3)), (H, (Co + r) * (1 + r), N))
    omw, opw = _nodes(t, L)
    F = omw.shape[0]
    S = xp.reshape(t.kernels("convolution").cauchy_sums(num, mu, omw, opw), (H, Co + r, 1 + r, F))
    g = 0.5 * d[:, None] * opw[None, :]  # (H, F): (1 + w) dt / 2
    s00 = S[:, :Co, 0, :]  # (H, Co, F)
    s01 = S[:, :Co, 1:, :]  # (H, Co, r, F)
    s10 = S[:, Co:, 0, :]  # (H, r, F)
    s11 = S[:, Co:, 1:, :]  # (H, r, r, F)
    if r == 0:
        w = xp.zeros((H, 0, F), dtype=xp.complex128, device=t.device)
        v = xp.zeros((H, Co, 0, F), dtype=xp.complex128, device=t.device)
    elif r == 1:
        den = 1.0 + g * s11[:, 0, 0, :]
        w = s10 / den[:, None, :]
        v = s01 / den[:, None, None, :]
    else:  # w = M^-1 s10, v = s01 M^-1 with M = I + g s11, batched over (H, F)
        eye = xp.eye(r, dtype=xp.complex128, device=t.device)
        M = eye + g[:, :, None, None] * xp.permute_dims(s11, (0, 3, 1, 2))
        w = xp.permute_dims(xp.linalg.solve(M, xp.permute_dims(s10, (0, 2, 1))[..., None])[..., 0], (0, 2, 1))
        v = xp.permute_dims(xp.linalg.solve(xp.matrix_transpose(M), xp.permute_dims(s01, (0, 3, 2, 1))), (0, 3, 2, 1))
    Q = s00 - g[:, None, :] * xp.sum(s01 * w[:, None, ...], axis=2)  # s01 . w over the rank
    Khat = xp.permute_dims(d[:, None, None] * Q, (1, 0, 2))  # (Co, H, F)
    return Khat, dict(mu=mu, X=X, Y=Y, num=num, omw=omw, opw=opw, g=g, S=S, w=w, v=v, Q=Q)


def _ssm_kernel_dplr_fwd(Lambda, P, B, C, dt, L, *, backend=None):
    fn = "ssm_kernel_dplr"
    t = select(fn, Lambda, P, B, C, dt, backend=backend)
    xp = t.xp
    p = _dplr_prepare(fn, t, Lambda, P, B, C, dt, L)
    if p["L"] == 0:
        return xp.zeros(p["out_shape"], dtype=getattr(xp, p["out_dtype"]), device=t.device), (p, None)
    Khat, aux = _dplr_forward(p)
    K = xp.fft.irfft(Khat, n=p["L"], axis=-1)
    return xp.reshape(xp.astype(K, getattr(xp, p["out_dtype"])), p["out_shape"]), (p, aux)


def _ssm_kernel_dplr_bwd(res, ct):
    p, aux = res
    t = p["target"]
    xp = t.xp
    H, N, r, Co, L = p["H"], p["N"], p["r"], p["Co"], p["L"]
    cn = p["canon"]
    names = ("Lambda", "P", "B", "C", "dt")
    if aux is None:
        return tuple(xp.zeros_like(p[n]) for n in names)
    if _cplx(xp, ct.dtype):
        ct = xp.real(ct)
    G = xp.reshape(xp.astype(ct, xp.float64, copy=False), (Co, H, L))
    # transpose of irfft: Khat_bar_k = c_k / L conj(rfft(G))_k, c_k = 1 at k = 0 and Nyquist, else 2
    F = L // 2 + 1
    ck = xp.full(F, 2.0 / L, dtype=xp.float64, device=t.device)
    ck[0] = 1.0 / L
    if L % 2 == 0:
        ck[F - 1] = 1.0 / L
    Kb = xp.permute_dims(ck * xp.conj(xp.fft.rfft(G, axis=-1)), (1, 0, 2))  # (H, Co, F)
    d = p["d"]
    g, w, v, Q, S = aux["g"], aux["w"], aux["v"], aux["Q"], aux["S"]
    s10, s11 = S[:, Co:, 0, :], S[:, Co:, 1:, :]
    dt_bar = xp.sum(xp.real(Kb * Q), axis=(1, 2))
    KbD = Kb * d[:, None, None]  # Khat_bar * dt
    KbDg = KbD * g[:, None, :]
    Sb = xp.zeros_like(S)
    Sb[:, :Co, 0, :] = KbD
    Sb[:, :Co, 1:, :] = -KbDg[:, :, None, :] * w[:, None, ...]
    Sb[:, Co:, 0, :] = -xp.sum(KbDg[:, :, None, :] * v, axis=1)
    # sum_c KbD g^2 v[c, j] w[k], batched over (h, f)
    Sb[:, Co:, 1:, :] = xp.sum(
        (KbDg * g[:, None, :])[:, :, None, None, :] * v[:, :, :, None, :] * w[:, None, None, ...], axis=1
    )
    vs10 = xp.sum(v * s10[:, None, ...], axis=2)  # (H, Co, F)
    vs11w = xp.sum(v * xp.sum(s11 * w[:, None, ...], axis=2)[:, None, ...], axis=2)
    g_bar = xp.sum(KbD * (-vs10 + g[:, None, :] * vs11w), axis=1)  # (H, F)
    dt_bar = dt_bar + xp.sum(xp.real(g_bar * aux["opw"][None, :]), axis=1) * 0.5
    num_bar, mu_bar = t.kernels("convolution").cauchy_sums_bwd(
        aux["num"], aux["mu"], aux["omw"], aux["opw"], xp.reshape(Sb, (H, -1, F))
    )
    lam_bar = 0.5 * d[:, None] * mu_bar
    dt_bar = dt_bar + 0.5 * xp.sum(xp.real(mu_bar * p["lam"]), axis=1)
    nb = xp.permute_dims(xp.reshape(num_bar, (H, Co + r, 1 + r, N)), (1, 2, 0, 3))  # (Co + r, 1 + r, H, N)
    X_bar = xp.sum(nb * aux["Y"][None, ...], axis=1)
    Y_bar = xp.sum(nb * aux["X"][:, None, ...], axis=0)
    C_bar = X_bar[:Co, ...]
    P_bar = xp.conj(X_bar[Co:, ...]) + Y_bar[1:, ...]  # rows use conj(P): their cotangent enters conjugated
    B_bar = Y_bar[0, ...]
    return (
        _grad_like(t, lam_bar, p["Lambda"], cn["Lambda"]),
        _grad_like(t, P_bar, p["P"], cn["P"]),
        _grad_like(t, B_bar, p["B"], cn["B"]),
        _grad_like(t, C_bar, p["C"], cn["C"]),
        _grad_like(t, dt_bar, p["dt"], cn["dt"]),
    )


@register_op(
    "ssm_kernel_dplr", fwd=_ssm_kernel_dplr_fwd, bwd=_ssm_kernel_dplr_bwd, inputs=("Lambda", "P", "B", "C", "dt"),
    backends=(*_BACKENDS, "cupy"),
)
def ssm_kernel_dplr(
    Lambda: Any,
    P: Any,
    B: Any,
    C: Any,
    dt: Any,
    L: int,
    *,
    backend: str | None = None,
) -> np.ndarray:
    r"""Convolution kernel of S4's DPLR SSM (Cauchy kernel + Woodbury + inverse FFT).

    The state matrix is A = diag(Lambda) - P P^* on the conjugate-extended state
    of size 2N: only one mode of each conjugate pair is stored (Lambda, the rows of
    P, B and C have N entries; the other half is their conjugate). Bilinear
    discretisation Ad = (I - dt A/2)^-1 (I + dt A/2), Bd = (I - dt A/2)^-1 dt B, and

    .. math:: K_l = \tilde C_{full} \bar A^l \bar B, \quad l = 0..L-1 \quad
              \text{with}\ \ \tilde C = C (I - \bar A^L),

    computed from the truncated generating function at the L roots of unity
    w_k = exp(-2 pi i k / L), k = 0 .. L//2:

    .. math:: \hat K(w) = \tilde C (I - \bar A w)^{-1} \bar B
              = dt\,[s_{CB} - g\, s_{CP} (I + g\, s_{PP})^{-1} s_{PB}],

    where g = (1 + w) dt / 2, s_{xy} = sum over both halves of x_i y_i / d_i and
    d_i = (1 - w) - (1 + w) dt Lambda_i / 2 (a Cauchy kernel; rows x in
    {C~, P^*}, columns y in {B, P}). Then K = irfft(K_hat, n=L). This form has no
    pole at w = -1 (S4's 2/(1 + w) factor is absorbed).

    Parameters
    ----------
    Lambda : array_like, complex, (N,) or (H, N)
        Diagonal part (one mode per conjugate pair).
    P : array_like, (rank, N) or (rank, H, N)
        Low-rank factor; the leading axis is always the rank (S4 layout).
    B : array_like, (N,) or (H, N)
        Input vector(s) of the continuous-time system.
    C : array_like, (N,), (H, N) or (C_out, H, N)
        **C-tilde**, S4's learned parameter C~ = C (I - Ad^L) (transpose, not
        conjugate transpose) for this L. Use :func:`dplr_c_tilde` to convert an
        ordinary C once (S4 does it once, without gradient).
    dt : float or array_like (H,)
        Positive finite step, one per channel.
    L : int
        Kernel length (also the FFT length that the truncation refers to).
    backend : {None, "numba", "numpy"}
        ``None`` picks the Numba Cauchy kernel for NumPy arrays; ``"numpy"`` runs
        the reference.

    Returns
    -------
    K : ndarray, (C_out, H, L), (H, L) or (L,)
        Real kernel; float32 when every array input is single precision.

    Raises
    ------
    ValueError
        If the last axes of Lambda, P, B and C differ, dt is not positive and
        finite or not a scalar or (H,), the channel axes H disagree, or L is
        negative.
    TypeError
        If L is not an integer, or an array is an integer, boolean or
        non-numeric NumPy array.

    See Also
    --------
    dplr : The DPLR form (Lambda, P, B, V) of a HiPPO matrix.
    dplr_c_tilde : Convert an ordinary C to the C-tilde this function takes.
    ssm_kernel_diag : The kernel of a purely diagonal state matrix (S4D).
    fft_conv : Apply the kernel to an input sequence.

    Notes
    -----
    Registered as op ``"ssm_kernel_dplr"`` with inputs (Lambda, P, B, C, dt); the
    pullback is the transposed Cauchy sums plus the Woodbury and irfft adjoints.
    The Cauchy sums (the O(H N L rank^2) part) run in Numba, prange over channels
    and frequency blocks; memory O(H L (rank + 1)^2 C_out) for the Cauchy values.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import ssm_kernel_dplr
    >>> lam = np.array([-0.5 + 1j, -0.5 + 4j]); P = np.array([[0.3, 0.2j]])
    >>> B = np.array([1.0, 0.5]); Ct = np.array([0.2 - 0.1j, 0.4j]); dt, L = 0.1, 8
    >>> K = ssm_kernel_dplr(lam, P, B, Ct, dt, L)
    >>> # the same kernel from the dense conjugate-extended matrix
    >>> Af = np.diag(np.r_[lam, lam.conj()]) - np.outer(np.r_[P[0], P[0].conj()], np.r_[P[0], P[0].conj()].conj())
    >>> I = np.eye(4); Ad = np.linalg.solve(I - dt / 2 * Af, I + dt / 2 * Af)
    >>> Bd = np.linalg.solve(I - dt / 2 * Af, dt * np.r_[B, B.conj()])
    >>> Cf = np.linalg.solve((I - np.linalg.matrix_power(Ad, L)).T, np.r_[Ct, Ct.conj()])
    >>> ref = [(Cf @ np.linalg.matrix_power(Ad, l) @ Bd).real for l in range(L)]
    >>> np.allclose(K, ref)
    True
    """
    return _ssm_kernel_dplr_fwd(Lambda, P, B, C, dt, L, backend=backend)[0]


def dplr_c_tilde(Lambda: Any, P: Any, C: Any, dt: Any, L: int, *, inverse: bool = False) -> np.ndarray:
    r"""Convert S4's output vector: C~ = C (I - Ad^L), or back with ``inverse=True``.

    Ad is the bilinear discretisation of the conjugate-extended
    A = diag(Lambda) - P P^* (see :func:`ssm_kernel_dplr`); C and C~ hold one entry
    per conjugate pair and the product is taken on the full 2N state (C~ stays
    conjugate-symmetric). This is a setup step, like S4's ``_setup_C``: dense
    (2N x 2N) float64 algebra per channel, O(H N^3 log L), and not a registered op
    (no gradient).

    Parameters
    ----------
    Lambda : array_like, complex, (N,) or (H, N)
        Diagonal part (one mode per conjugate pair).
    P : array_like, (rank, N) or (rank, H, N)
        Low-rank factor, rank first (S4 layout).
    C : array_like, (N,), (H, N) or (C_out, H, N)
        The ordinary output vector C (or C~ with ``inverse=True``).
    dt : float or array_like (H,)
        Positive finite step, one per channel.
    L : int
        The kernel length the C~ is meant for.
    inverse : bool
        If True, ``C`` is C~ and the ordinary C = C~ (I - Ad^L)^-1 is returned.

    Returns
    -------
    ndarray, complex128
        C~ (or C with ``inverse=True``), C's shape broadcast with the channel axis.

    Raises
    ------
    ValueError
        If the last axes of Lambda, P and C differ, the channel axes disagree,
        dt is not positive and finite, or L is negative.
    TypeError
        If L is not an integer, or an array is an integer, boolean or
        non-numeric NumPy array.

    See Also
    --------
    ssm_kernel_dplr : The DPLR kernel, which takes C~.
    dplr : The DPLR form of a HiPPO matrix.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import dplr_c_tilde
    >>> lam = np.array([-0.5 + 1j]); P = np.array([[0.3]]); C = np.array([1.0 + 0.5j])
    >>> Ct = dplr_c_tilde(lam, P, C, 0.1, 16)
    >>> np.allclose(dplr_c_tilde(lam, P, Ct, 0.1, 16, inverse=True), C)
    True
    """
    # Pure array-API algebra (no kernels): it runs on whatever namespace its inputs are in.
    fn = "dplr_c_tilde"
    t = select(fn, Lambda, P, C, dt)
    xp = t.xp
    lam_shape = tuple(np.shape(Lambda) if array_kind(Lambda) is None else Lambda.shape)
    p = _dplr_prepare(fn, t, Lambda, P, xp.zeros(lam_shape[-1:], dtype=xp.float64, device=t.device), C, dt, L)
    N = p["N"]
    lam, pp, d = p["lam"], p["p"], p["d"]
    Pf = xp.concat([pp, xp.conj(pp)], axis=-1)  # (r, H, 2N)
    eye = xp.eye(2 * N, dtype=xp.float64, device=t.device)
    # diag(Lambda, conj Lambda) - sum_r Pf Pf^*
    Af = eye * xp.concat([lam, xp.conj(lam)], axis=-1)[:, None, :]
    Af = Af - xp.sum(Pf[:, :, :, None] * xp.conj(Pf)[:, :, None, :], axis=0)
    h = 0.5 * d[:, None, None]
    Ad = xp.linalg.solve(eye - h * Af, eye + h * Af)
    T = eye - xp.linalg.matrix_power(Ad, p["L"])  # (H, 2N, 2N)
    Cf = xp.concat([p["c"], xp.conj(p["c"])], axis=-1)  # (Co, H, 2N)
    if inverse:  # C = C~ T^-1  <=>  T^T C^T = C~^T
        out = xp.linalg.solve(xp.matrix_transpose(T)[None, ...], Cf[..., None])[..., 0]
    else:
        out = (Cf[..., None, :] @ T[None, ...])[..., 0, :]
    out = out[..., :N]
    shape = p["out_shape"][:-1] + (N,)
    return xp.reshape(out, shape)


# --------------------------------------------------------------------------- dense kernel


def _dense_prepare(fn, t, A, B, C, L):
    xp = t.xp
    A = as_float_array(fn, "A", A, min_ndim=2, expected="(..., N, N)", target=t)
    B = as_float_array(fn, "B", B, min_ndim=1, expected="(..., N)", target=t)
    C = as_float_array(fn, "C", C, min_ndim=1, expected="(..., N)", target=t)
    L = _check_L(fn, L)
    N = A.shape[-1]
    if A.shape[-2] != N:
        raise shape_error(fn, "A", A.shape, "(..., N, N) (square in the last two axes)")
    for name, x in (("B", B), ("C", C)):
        if x.shape[-1] != N:
            raise shape_error(fn, name, x.shape, f"(..., N) with N={N} like A {tuple(A.shape)}")
    try:
        lead = _xp.broadcast_shapes(A.shape[:-2], B.shape[:-1], C.shape[:-1])
    except ValueError:
        raise ValueError(
            f"{fn}: leading (batch) axes do not broadcast: A {tuple(A.shape)}, B {tuple(B.shape)}, "
            f"C {tuple(C.shape)}; expected A (..., N, N), B (..., N), C (..., N)"
        ) from None
    dt = xp.result_type(A.dtype, B.dtype, C.dtype)
    S = _xp.prod(lead)
    a = xp.astype(xp.reshape(xp.broadcast_to(A, lead + (N, N)), (S, N, N)), dt, copy=False)
    b = xp.astype(xp.reshape(xp.broadcast_to(B, lead + (N,)), (S, N)), dt, copy=False)
    c = xp.astype(xp.reshape(xp.broadcast_to(C, lead + (N,)), (S, N)), dt, copy=False)
    return dict(A=A, B=B, C=C, a=a, b=b, c=c, L=L, lead=lead, N=N, target=t)


def _ssm_kernel_dense_fwd(A, B, C, L, *, backend=None):
    fn = "ssm_kernel_dense"
    t = select(fn, A, B, C, backend=backend)
    p = _dense_prepare(fn, t, A, B, C, L)
    K = t.kernels("convolution").dense_kernel(p["a"], p["b"], p["c"], p["L"])
    return t.xp.reshape(K, p["lead"] + (p["L"],)), p


def _ssm_kernel_dense_bwd(p, ct):
    t = p["target"]
    xp = t.xp
    G = xp.reshape(ct, (p["a"].shape[0], p["L"]))
    if not _cplx(xp, p["a"].dtype) and _cplx(xp, G.dtype):
        G = xp.real(G)
    A_bar, B_bar, C_bar = t.kernels("convolution").dense_kernel_bwd(
        p["a"], p["b"], p["c"], xp.astype(G, p["a"].dtype, copy=False)
    )
    N, lead = p["N"], p["lead"]
    out = []
    for g, x, tail in ((A_bar, p["A"], (N, N)), (B_bar, p["B"], (N,)), (C_bar, p["C"], (N,))):
        out.append(_grad_like(t, xp.reshape(g, lead + tail), x, tuple(x.shape)))
    return tuple(out)


@register_op(
    "ssm_kernel_dense", fwd=_ssm_kernel_dense_fwd, bwd=_ssm_kernel_dense_bwd, inputs=("A", "B", "C"),
    backends=(*_BACKENDS, "cupy"),
)
def ssm_kernel_dense(A: Any, B: Any, C: Any, L: int, *, backend: str | None = None) -> np.ndarray:
    r"""Kernel K_l = C Ad^l Bd of dense discrete systems by repeated mat-vec.

    .. math:: x_0 = \bar B,\quad x_{l+1} = \bar A x_l,\quad K_l = C x_l,\quad l = 0..L-1.

    O(N^2 L) time and O(N + L) memory per system (no matrix powers); the pullback
    (op ``"ssm_kernel_dense"``, inputs A, B, C) runs the adjoint recursion
    lam_l = C^T G_l + A^T lam_{l+1} over checkpointed states (O(N^2 + N sqrt(L))).

    Parameters
    ----------
    A : array_like, (..., N, N)
        Discrete state matrix Ad (discretise first, e.g. with ``ssmcore.discretize``).
    B : array_like, (..., N)
        Discrete input vector Bd.
    C : array_like, (..., N)
        Output vector.
    L : int
        Kernel length.
    backend : {None, "numba", "numpy"}
        ``None`` picks the Numba kernel for NumPy arrays; ``"numpy"`` runs the
        reference.

    Returns
    -------
    K : ndarray, (..., L)
        Leading axes are the broadcast of A's, B's and C's; dtype is their common
        dtype (complex systems give complex kernels; no real part is taken).

    Raises
    ------
    ValueError
        If A is not square in its last two axes, the last axes of B or C differ
        from A's, the leading axes do not broadcast, or L is negative.
    TypeError
        If L is not an integer, or an array is an integer, boolean or
        non-numeric NumPy array.

    See Also
    --------
    ssm_kernel_diag : The kernel of a diagonal continuous-time system.
    fft_conv : Apply the kernel to an input sequence.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import ssm_kernel_dense
    >>> Ad = np.array([[0.9, 0.1], [0.0, 0.5]]); Bd = np.array([1.0, 1.0]); C = np.array([1.0, 2.0])
    >>> ssm_kernel_dense(Ad, Bd, C, 3)
    array([3.  , 2.  , 1.45])
    """
    return _ssm_kernel_dense_fwd(A, B, C, L, backend=backend)[0]


# --------------------------------------------------------------------------- FFT convolution


class ConvSpectrum:
    """A kernel's FFT, made once by :func:`fft_conv_spectrum` and passed to :func:`fft_conv` as ``K``.

    Holds the validated kernel ``K`` (what the gradient of ``fft_conv`` with respect
    to ``K`` refers to), ``bidirectional``, the longest input length ``L`` it
    serves, and the backend's transform (``Kf``, of length ``n``) with the backend
    and dtype it was made for. Treat it as immutable.
    """

    __slots__ = ("K", "L", "Kf", "n", "bidirectional", "backend", "dtype")

    def __init__(self, K: Any, L: int, Kf: Any, n: int, bidirectional: bool, backend: str, dtype: Any) -> None:
        self.K, self.L, self.Kf, self.n = K, L, Kf, n
        self.bidirectional, self.backend, self.dtype = bidirectional, backend, dtype

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the kernel ``K``."""
        return tuple(self.K.shape)

    def __repr__(self) -> str:
        kind = "bidirectional" if self.bidirectional else "causal"
        return (f"ConvSpectrum(K shape {self.shape}, {kind}, L <= {self.L}, n={self.n}, "
                f"{_xp.dtype_name(self.dtype)}, backend {self.backend!r})")


def _conv_kernel(fn: str, t: Target, K: Any, bidirectional: bool) -> tuple[Any, Any, int]:
    """The validated kernel, as (K, K3 (C2, H, L_k), C_out)."""
    xp = t.xp
    K = as_float_array(
        fn, "K", K, complex_ok=False, min_ndim=1, max_ndim=3, expected="(L_k,), (H, L_k) or (C_out, H, L_k)",
        target=t,
    )
    if bidirectional:
        if K.ndim != 3 or K.shape[0] % 2:
            raise shape_error(
                fn, "K", K.shape, "(2 C_out, H, L_k) with bidirectional=True (C_out causal, then C_out anti-causal)"
            )
    K3 = xp.reshape(K, (1,) * (3 - K.ndim) + tuple(K.shape))
    return K, K3, (K3.shape[0] // 2 if bidirectional else K3.shape[0])


def _check_workers(fn: str, workers: Any) -> int | None:
    # validated here, interpreted by the launcher (None: its default thread count)
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)):
            raise TypeError(f"{fn}: workers must be an int or None; got {type(workers).__name__}")
        workers = int(workers)
    return workers


def _conv_prepare(fn, t, u, K, D, bidirectional, workers):
    xp = t.xp
    spectrum = K if isinstance(K, ConvSpectrum) else None
    if spectrum is not None:
        if bidirectional and not spectrum.bidirectional:
            raise ValueError(f"{fn}: bidirectional=True but K is the spectrum of a causal kernel; "
                             "make it with fft_conv_spectrum(K, L, bidirectional=True)")
        bidirectional = spectrum.bidirectional
        K = spectrum.K
    u = as_float_array(fn, "u", u, complex_ok=False, min_ndim=1, expected="(..., H, L)", target=t)
    K, K3, Co = _conv_kernel(fn, t, K, bidirectional)
    Dn = None
    if D is not None:
        Dn = as_float_array(fn, "D", D, complex_ok=False, target=t)
    dtype = xp.result_type(u.dtype, K.dtype)  # D is cast to it (a float64 D keeps float32 activations float32)
    L = u.shape[-1]
    Lk = K.shape[-1]
    hless = K.ndim == 1
    if hless:
        H = 1
        uu = xp.reshape(u, (_xp.prod(u.shape[:-1]), 1, L))
    else:
        H = K.shape[-2]
        if u.ndim < 2 or u.shape[-2] != H:
            raise shape_error(fn, "u", u.shape, f"(..., H, L) with H={H} like K {tuple(K.shape)}")
        uu = xp.reshape(u, (_xp.prod(u.shape[:-2]), H, L))
    if Lk > L:
        raise ValueError(f"{fn}: K has length L_k={Lk} (shape {tuple(K.shape)}) but u has L={L}; expected L_k <= L")
    Kf = n = None
    if spectrum is not None:
        if L > spectrum.L:
            raise ValueError(f"{fn}: u has L={L} but K is a spectrum for inputs of up to L={spectrum.L} steps; "
                             "make it with fft_conv_spectrum(K, L) for the longest input")
        # Used where it was made for this call's backend and dtype; otherwise (e.g. float64 inputs
        # with a float32 kernel's spectrum) the kernel is transformed again, exactly as without it.
        if spectrum.backend == t.backend and spectrum.dtype == dtype:
            Kf, n = spectrum.Kf, spectrum.n
    Dc = None
    if Dn is not None:
        bad = shape_error(fn, "D", Dn.shape, f"a scalar, (H,) or (C_out, H) with C_out={Co}, H={H}")
        if Dn.ndim > 2:
            raise bad
        Dshape = (1,) * (2 - Dn.ndim) + tuple(Dn.shape)
        try:
            if _xp.broadcast_shapes(Dshape, (Co, H)) != (Co, H):
                raise bad
        except ValueError:
            raise bad from None
        Dc = xp.astype(xp.broadcast_to(xp.reshape(Dn, Dshape), (Co, H)), dtype)
    workers = _check_workers(fn, workers)
    if hless:
        out_shape = tuple(u.shape)
    else:
        out_shape = tuple(u.shape[:-2]) + (Co * H, L)
    # the launchers own layout (they make what they need contiguous) and the FFT plan
    return dict(
        u=u, K=K, D=Dn, uu=xp.astype(uu, dtype, copy=False),
        k0=xp.astype(K3[:Co, ...], dtype, copy=False),
        k1=xp.astype(K3[Co:, ...], dtype, copy=False) if bidirectional else None,
        Dc=Dc, dtype=dtype, L=L, Lk=Lk, H=H, Co=Co, out_shape=out_shape, workers=workers, target=t,
        Kf=Kf, n=n,
    )  # fmt: skip


def _fft_conv_fwd(u, K, D=None, *, bidirectional=False, workers=None, backend=None):
    fn = "fft_conv"
    t = select(fn, u, K.K if isinstance(K, ConvSpectrum) else K, D, backend=backend)
    xp = t.xp
    p = _conv_prepare(fn, t, u, K, D, bidirectional, workers)
    k = t.kernels("convolution")
    if p["Kf"] is None and t.backend != "numpy" and p["L"] and p["Lk"] and p["uu"].shape[0]:
        # transformed once here and kept: the pullback's u-gradient multiplies by the same spectrum
        p["Kf"], p["n"] = k.conv_spectrum(p["k0"], p["k1"], p["L"], p["workers"])
    y = k.causal_conv(p["uu"], p["k0"], p["k1"], p["Dc"], p["workers"], p["Kf"], p["n"])
    return xp.reshape(xp.astype(y, p["dtype"], copy=False), p["out_shape"]), p


def _fft_conv_bwd(p, ct, needs=(True, True, True)):
    t = p["target"]
    xp = t.xp
    Bt, H, L = p["uu"].shape
    Co = p["Co"]
    need_u, need_k, need_d = needs
    if _cplx(xp, ct.dtype):
        ct = xp.real(ct)
    G = xp.astype(xp.reshape(ct, (Bt, Co, H, L)), p["dtype"], copy=False)
    u_bar, K_bar, Ka_bar, D_bar = t.kernels("convolution").causal_conv_bwd(
        p["uu"], p["k0"], p["k1"], p["Dc"], G, p["workers"], need_u, need_k, need_d, p["Kf"], p["n"]
    )
    if Ka_bar is not None and K_bar is not None:
        K_bar = xp.concat([K_bar, Ka_bar], axis=0)
    gu = None if u_bar is None else xp.reshape(xp.astype(u_bar, p["u"].dtype, copy=False), p["u"].shape)
    gK = None if K_bar is None else xp.reshape(xp.astype(K_bar, p["K"].dtype, copy=False), p["K"].shape)
    gD = None
    if p["D"] is not None and D_bar is not None:
        Dn = p["D"]
        gD = _grad_like(t, D_bar, Dn, (1,) * (2 - Dn.ndim) + tuple(Dn.shape))
    return gu, gK, gD


@register_op("fft_conv", fwd=_fft_conv_fwd, bwd=_fft_conv_bwd, inputs=("u", "K", "D"), backends=(*_BACKENDS, "cupy"))
def fft_conv(
    u: Any,
    K: Any,
    D: Any = None,
    *,
    bidirectional: bool = False,
    workers: int | None = None,
    backend: str | None = None,
) -> np.ndarray:
    r"""Causal convolution of inputs with per-channel kernels by FFT, plus a skip term.

    .. math:: y[..., c, h, t] = \sum_{j=0}^{L_k-1} K[c, h, j]\, u[..., h, t-j] + D[c, h]\, u[..., h, t]

    (u is zero before t = 0). With ``bidirectional=True`` the first C_out kernels are
    causal and the next C_out are anti-causal, S4's layout (``FFTConv``):

    .. math:: y_t \mathrel{+}= \sum_j K[C_{out} + c, h, j]\, u[..., h, t + 1 + j]

    (lag -1 - j: the anti-causal half starts one step in the future, so lag 0 is not
    counted twice). Output channels are flattened as (c h) -> c * H + h, like S4.
    FFT length n = next_fast_len(L + L_k): no circular wrap-around in either direction.

    Parameters
    ----------
    u : array_like, real, (..., H, L)
        Inputs, time last; any leading batch axes. With a 1-D kernel, (..., L).
    K : array_like, real, (L_k,), (H, L_k) or (C_out, H, L_k), or ConvSpectrum
        Kernels with L_k <= L (shorter kernels are zero beyond L_k);
        ``(2 C_out, H, L_k)`` when bidirectional. A :class:`ConvSpectrum` from
        :func:`fft_conv_spectrum` saves transforming the kernel on every call (a fixed
        kernel applied to many inputs); gradients "with respect to K" are then those of
        the kernel it was made from.
    D : array_like, optional, scalar, (H,) or (C_out, H)
        Skip (feed-through) weights.
    bidirectional : bool
        Two-sided kernel as above. With a :class:`ConvSpectrum` the spectrum's own
        setting applies.
    workers : int, optional
        Threads for scipy.fft; None uses all cores (-1), 1 is single-threaded.
    backend : {None, "numba", "numpy", "cupy"}
        ``"numpy"`` uses the direct O(L L_k) reference convolution.

    Returns
    -------
    y : ndarray, (..., C_out * H, L) (or u's shape for a 1-D kernel)
        In the common dtype of u and K (float32 stays float32); D is cast to it.

    Raises
    ------
    ValueError
        If u's channel axis differs from K's H, K is longer than u, a
        bidirectional K is not (2 C_out, H, L_k), D does not broadcast to
        (C_out, H), or u is longer than a spectrum's ``L``.
    TypeError
        If u, K or D is complex, an integer, boolean or non-numeric NumPy array,
        or ``workers`` is not an int or None.

    See Also
    --------
    fft_conv_spectrum : A kernel's transform, made once for many calls.
    ssm_kernel_diag : Kernels of diagonal SSMs (S4D).
    ssm_kernel_dplr : Kernels of S4's DPLR SSMs.
    ssm_kernel_dense : Kernels of dense discrete systems.

    Notes
    -----
    Op ``"fft_conv"`` with inputs (u, K, D): the pullback is two FFT correlations,
    u_bar = sum_c corr(G, K), K_bar = sum_batch corr(G, u), and D_bar = sum G u.
    The pullback reuses the forward's kernel spectrum.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import fft_conv
    >>> u = np.array([[1.0, 2.0, 3.0, 4.0]]); K = np.array([[1.0, 0.5]])
    >>> np.round(fft_conv(u, K, D=np.array([0.1])), 12)
    array([[1.1, 2.7, 4.3, 5.9]])
    >>> np.allclose(fft_conv(u, K), np.convolve(u[0], K[0])[:4])
    True
    """
    return _fft_conv_fwd(u, K, D, bidirectional=bidirectional, workers=workers, backend=backend)[0]


declare_backends("fft_conv_spectrum", (*_BACKENDS, "cupy"))


def fft_conv_spectrum(
    K: Any, L: int, *, bidirectional: bool = False, workers: int | None = None, backend: str | None = None
) -> ConvSpectrum:
    r"""The FFT of a convolution kernel, made once and reused by :func:`fft_conv`.

    A fixed kernel applied to many inputs (inference, a filter bank, several
    batches per step) need not be transformed on every call: ``fft_conv(u, S, D)``
    with ``S = fft_conv_spectrum(K, L)`` gives ``fft_conv(u, K, D)`` for any u of up
    to ``L`` steps, with one FFT fewer per call. The spectrum is

    .. math:: \hat k_f = \sum_{m=0}^{n-1} k_m e^{-2 \pi i f m / n}, \qquad
              k_m = K_m \ (m < L_k), \quad k_{n-1-j} = K^{anti}_j,

    the transform of the length-n circular two-sided kernel (no anti-causal part
    unless bidirectional), with the backend's fast length ``n >= L + L_k`` (so
    nothing wraps around).

    Parameters
    ----------
    K : array_like, real, (L_k,), (H, L_k) or (C_out, H, L_k)
        The kernel, as for :func:`fft_conv` (``(2 C_out, H, L_k)`` when bidirectional).
    L : int
        The longest input (number of steps) the spectrum will serve; ``L >= L_k``.
    bidirectional : bool, default False
        Two-sided kernel, S4's layout (see :func:`fft_conv`).
    workers : int, optional
        Threads for scipy.fft; None uses all cores (-1), 1 is single-threaded.
    backend : {None, "numba", "numpy", "cupy"}, optional
        The backend it is made for (by default the one of K's array type). It is used
        by calls on that backend whose common dtype of u and K is K's (float32 inputs
        with a float32 kernel); other calls transform the kernel again, with the same
        result as without it.

    Returns
    -------
    spectrum : ConvSpectrum
        Pass it to :func:`fft_conv` as ``K``, also through :func:`ssmcore.vjp`
        (``"fft_conv"``): the gradient for K is that of the kernel it was made from.

    Raises
    ------
    ValueError
        If K's shape is not a kernel's (as in :func:`fft_conv`) or ``L < L_k``.
    TypeError
        If K is complex, an integer or non-numeric array, or L or ``workers`` is not an
        int.

    See Also
    --------
    fft_conv : The convolution that uses it.
    ssm_kernel_diag : Kernels of diagonal SSMs (S4D).

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import fft_conv, fft_conv_spectrum
    >>> K = np.array([[1.0, 0.5]]); S = fft_conv_spectrum(K, 8)
    >>> u = np.array([[1.0, 2.0, 3.0, 4.0]])
    >>> np.allclose(fft_conv(u, S), fft_conv(u, K))
    True
    >>> S.shape, S.L
    ((1, 2), 8)
    """
    fn = "fft_conv_spectrum"
    bidirectional = check_bool(fn, "bidirectional", bidirectional)
    t = select(fn, K, backend=backend)
    L = check_int(fn, "L", L, minimum=0)
    K, K3, Co = _conv_kernel(fn, t, K, bidirectional)
    Lk = K.shape[-1]
    if L < Lk:
        raise ValueError(f"{fn}: L={L} is shorter than the kernel (L_k={Lk}, K shape {tuple(K.shape)}); "
                         "expected L >= L_k")
    workers = _check_workers(fn, workers)
    k0 = K3[:Co, ...]
    k1 = K3[Co:, ...] if bidirectional else None
    Kf, n = None, None
    if t.backend != "numpy" and Lk:
        Kf, n = t.kernels("convolution").conv_spectrum(k0, k1, L, workers)
    return ConvSpectrum(K, L, Kf, n, bidirectional, t.backend, K.dtype)
