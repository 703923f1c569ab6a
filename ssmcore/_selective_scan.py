"""Mamba's selective scan (S6) and its single-step decoding update.

Front door: validates and canonicalises the arguments once, picks the backend
(Numba CPU kernels for NumPy arrays, the float64 NumPy reference with
``backend="numpy"``) and registers the op ``"selective_scan"`` with a hand-written,
memory-lean VJP.  Semantics follow ``mamba_ssm``'s ``selective_scan_fn`` /
``selective_scan_ref`` (see ``docs/selective_scan.md``), extended with an initial
state ``h0``, a gradient through the returned final state, ``reverse`` and
``seq_idx``.

Device-neutral glue: :func:`ssmcore.dispatch.select` resolves the backend and the
inputs' array namespace ``xp`` once per call; validation, the canonical layout
(dtype casts and axis permutations, no copies made here), the residuals (which
record the call's ``Target``) and the backward's reductions are array-API code,
so the same VJP serves every device. The kernels' launchers
(``backends/<device>/selective_scan.py``) own layout, output allocation, the
checkpoint spacing and the work split. Declared backends: ``selective_scan`` has
the NumPy reference, the Numba CPU kernels and the CuPy GPU kernels
(``backends/cupy/selective_scan.py``: mamba_ssm's fused design, states on chip,
chunk checkpoints for the backward; not yet run on a GPU);
``selective_state_update`` lives in :mod:`ssmcore._state_update` (re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _xp
from ._xp import dtype_name
from .dispatch import Target, select
from .registry import register_op
from .validation import as_float_array, shape_error

__all__ = ["selective_scan", "selective_state_update"]

_FN = "selective_scan"


@dataclass
class _Canon:
    """Canonical kernel arguments plus what the backward needs to undo the canonicalisation."""

    args: tuple  # positional kernel arguments up to ``reverse`` (see reference/selective_scan.py)
    target: Target
    out_dtype: Any
    rdt: Any
    sdt: Any
    dtypes: dict[str, Any]
    b_var: bool
    c_var: bool
    b_ndim: int
    c_ndim: int


def _real_dtype(xp: Any, *arrays: Any) -> Any:
    """Compute dtype: float64 if u or delta is float64, else float32 (mamba computes in fp32)."""
    return xp.float64 if any(a.dtype == xp.float64 for a in arrays) else xp.float32


def _state_dtype(xp: Any, rdt: Any, a_complex: bool) -> Any:
    if not a_complex:
        return rdt
    return xp.complex128 if rdt == xp.float64 else xp.complex64


def _iscomplex(xp: Any, dt: Any) -> bool:
    """Whether ``dt`` is a complex dtype.

    NumPy/CuPy dtypes by ``kind`` (numpy.isdtype costs ~1 us a call, and the glue asks ~20
    times), other namespaces' dtypes through ``xp.isdtype``.
    """
    kind = getattr(dt, "kind", None)
    return kind == "c" if kind is not None else _xp.is_complex_dtype(xp, dt)


def _orig_dtype(xp: Any, x: Any, norm: Any) -> Any:
    """The caller's floating dtype (float16 stays float16 for the output), else the normalised one."""
    dt = getattr(x, "dtype", None)
    if dt is None or isinstance(x, (list, tuple)):
        return norm.dtype
    kind = getattr(dt, "kind", None)
    if kind is not None:  # NumPy / CuPy dtypes
        if kind not in "fc":
            return norm.dtype
        return dt if dt.isnative else dt.newbyteorder("=")  # '>f4' -> float32: the native equivalent
    return dt if xp.isdtype(dt, ("real floating", "complex floating")) else norm.dtype


def _np_astype(x: np.ndarray, dtype: Any, copy: bool = False) -> np.ndarray:
    return x.astype(dtype, copy=copy)


def _astype(t: Target) -> Any:
    """The call's ``astype`` (no copy by default).

    The ndarray method for NumPy (array_api_compat's wrapper costs ~0.3 us a call, and this
    glue makes up to ten), ``xp.astype`` for every other namespace.
    """
    if t.kind == "numpy":
        return _np_astype
    xp = t.xp
    return lambda x, dtype, copy=False: xp.astype(x, dtype, copy=copy)


def _check_bool(fn: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be a bool; got {type(value).__name__} {value!r}")
    return bool(value)


def _int_array(t: Target, fn: str, name: str, x: Any) -> Any:
    """An integer index array (seq_idx) in the call's namespace, refusing other dtypes."""
    xp = t.xp
    if t.kind == "numpy":
        s = np.asarray(x)
    else:
        s = x if hasattr(x, "__array_namespace__") else t.asarray(x)
    if not xp.isdtype(s.dtype, "integral"):
        raise TypeError(f"{fn}: {name} has dtype {dtype_name(s.dtype)}; expected an integer dtype")
    return s


def _bc(t: Target, fn: str, name: str, X: Any, nb: int, nd: int, N: int, L: int, a_complex: bool):
    """Validate B or C; return (canonical (batch, G, L, N) or (1, D, 1, N) array, variable?, G, ndim)."""
    xp = t.xp
    X = as_float_array(fn, name, X, target=t)
    if not a_complex and _iscomplex(xp, X.dtype):
        raise TypeError(f"{fn}: {name} has dtype {dtype_name(X.dtype)} but A is real; "
                        f"complex {name} needs complex A")
    if X.ndim == 2:
        if tuple(X.shape) != (nd, N):
            raise shape_error(fn, name, X.shape, f"(D, N) = ({nd}, {N}) for a fixed {name}, "
                                                  f"or (batch, N, L) / (batch, G, N, L) for a variable one")
        return xp.reshape(X, (1, nd, 1, N)), False, nd, 2
    if X.ndim in (3, 4):
        X4 = X[:, None, ...] if X.ndim == 3 else X  # indexing: expand_dims is slow on NumPy
        bx, G, nx, lx = X4.shape
        exp = "(batch, N, L)" if X.ndim == 3 else "(batch, G, N, L)"
        if bx != nb or nx != N or lx != L:
            raise shape_error(fn, name, X.shape, f"{exp} with batch={nb}, N={N} (from A), L={L} (from u)")
        if G < 1 or nd % G:
            raise shape_error(fn, name, X.shape, f"(batch, G, N, L) with G dividing D={nd}; got G={G}")
        # time-major inside a group (a view; the launcher makes it contiguous)
        return xp.permute_dims(X4, (0, 1, 3, 2)), True, G, X.ndim
    raise shape_error(fn, name, X.shape, "(D, N) fixed, (batch, N, L) or (batch, G, N, L) variable")


def _canonical(u, delta, A, B, C, D, z, delta_bias, h0, seq_idx, delta_softplus, reverse, backend) -> _Canon:
    fn = _FN
    t = select(fn, u, delta, A, B, C, D, z, delta_bias, h0, seq_idx, backend=backend)
    xp = t.xp
    u_in, d_in, B_in, C_in = u, delta, B, C
    u = as_float_array(fn, "u", u, complex_ok=False, target=t)
    if u.ndim != 3:
        raise shape_error(fn, "u", u.shape, "(batch, D, L)")
    nb, nd, L = u.shape
    delta = as_float_array(fn, "delta", delta, complex_ok=False, target=t)
    if tuple(delta.shape) != tuple(u.shape):
        raise shape_error(fn, "delta", delta.shape, f"(batch, D, L) = {tuple(u.shape)}, the shape of u")
    A = as_float_array(fn, "A", A, target=t)
    if A.ndim != 2 or A.shape[0] != nd or A.shape[1] < 1:
        raise shape_error(fn, "A", A.shape, f"(D, N) with D={nd} (from u) and N >= 1")
    N = A.shape[1]
    a_complex = _iscomplex(xp, A.dtype)
    rdt = _real_dtype(xp, u, delta)
    sdt = _state_dtype(xp, rdt, a_complex)

    Bc, b_var, gB, b_ndim = _bc(t, fn, "B", B, nb, nd, N, L, a_complex)
    Cc, c_var, gC, c_ndim = _bc(t, fn, "C", C, nb, nd, N, L, a_complex)

    def vec(name, x):
        if x is None:
            return None
        x = as_float_array(fn, name, x, complex_ok=False, target=t)
        if tuple(x.shape) != (nd,):
            raise shape_error(fn, name, x.shape, f"(D,) = ({nd},)")
        return x

    Dv = vec("D", D)
    bias = vec("delta_bias", delta_bias)
    if z is not None:
        z = as_float_array(fn, "z", z, complex_ok=False, target=t)
        if tuple(z.shape) != tuple(u.shape):
            raise shape_error(fn, "z", z.shape, f"(batch, D, L) = {tuple(u.shape)}, the shape of u")
    if h0 is not None:
        h0 = as_float_array(fn, "h0", h0, target=t)
        if tuple(h0.shape) != (nb, nd, N):
            raise shape_error(fn, "h0", h0.shape, f"(batch, D, N) = ({nb}, {nd}, {N})")
        if not a_complex and _iscomplex(xp, h0.dtype):
            raise TypeError(f"{fn}: h0 has dtype {dtype_name(h0.dtype)} but A is real; complex h0 needs complex A")
    seq = None
    if seq_idx is not None:
        seq = _int_array(t, fn, "seq_idx", seq_idx)
        if tuple(seq.shape) != (nb, L):
            raise shape_error(fn, "seq_idx", seq.shape, f"(batch, L) = ({nb}, {L})")
    softplus = _check_bool(fn, "delta_softplus", delta_softplus)
    rev = _check_bool(fn, "reverse", reverse)

    astype = _astype(t)

    def c(x, dt):  # the kernels' dtype (no copy when it already is); layout is the launcher's job
        return None if x is None else astype(x, dt, copy=False)

    args = (
        c(u, rdt), c(delta, rdt), c(A, sdt), c(Bc, sdt), c(Cc, sdt), c(Dv, rdt), c(z, rdt), c(bias, rdt),
        c(h0, sdt), seq, b_var, c_var, nd // gB if b_var else 1, nd // gC if c_var else 1, softplus, rev,
    )
    # gradients take the caller's dtype of u, delta, B, C, D, delta_bias (float16 stays float16)
    # and the validated dtype of A, z, h0
    given = dict(u=(u_in, u), delta=(d_in, delta), A=(A, A), B=(B_in, Bc), C=(C_in, Cc), D=(D, Dv),
                 z=(z, z), delta_bias=(delta_bias, bias), h0=(h0, h0))
    dtypes = {k: None if v is None else _orig_dtype(xp, v, norm) for k, (v, norm) in given.items()}
    return _Canon(args, t, dtypes["u"], rdt, sdt, dtypes, b_var, c_var, b_ndim, c_ndim)


def _selective_scan_fwd(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    *, h0=None, reverse=False, seq_idx=None, backend=None, _save=True,
):
    with_last = _check_bool(_FN, "return_last_state", return_last_state)
    cn = _canonical(u, delta, A, B, C, D, z, delta_bias, h0, seq_idx, delta_softplus, reverse, backend)
    astype = _astype(cn.target)
    out, last, ckpt = cn.target.kernels("selective_scan").selective_scan_fwd(*cn.args, _save)
    out = astype(out, cn.out_dtype)
    last = astype(last, cn.sdt)
    ret = (out, last) if with_last else out
    return ret, (cn, ckpt, with_last)


def _cast_grad(t: Target, g: Any, dtype: Any) -> Any:
    if g is None or dtype is None:
        return None
    if _iscomplex(t.xp, g.dtype) and not _iscomplex(t.xp, dtype):
        g = t.xp.real(g)  # a real input's gradient is the real part (the pairing is Re(sum(u v)))
    return _astype(t)(g, dtype)


def _bc_grad(xp: Any, dX: Any, var: bool, ndim: int) -> Any:
    """Undo the canonical layout of B/C for their gradients."""
    if not var:
        return dX[0, :, 0, :]
    dX = xp.permute_dims(dX, (0, 1, 3, 2))
    return dX[:, 0, ...] if ndim == 3 else dX


def _selective_scan_bwd(res, cotangent):
    cn, ckpt, with_last = res
    t = cn.target
    xp = t.xp
    if with_last:
        dout, dlast = cotangent
    else:
        dout, dlast = cotangent, None
    astype = _astype(t)
    if _iscomplex(xp, dout.dtype):
        dout = xp.real(dout)
    dout = astype(dout, cn.rdt)
    if dlast is not None:
        if not _iscomplex(xp, cn.sdt) and _iscomplex(xp, dlast.dtype):
            dlast = xp.real(dlast)
        dlast = astype(dlast, cn.sdt)
    k = t.kernels("selective_scan")
    du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = k.selective_scan_bwd(*cn.args, ckpt, dout, dlast)
    d = cn.dtypes
    return (
        _cast_grad(t, du, d["u"]),
        _cast_grad(t, ddelta, d["delta"]),
        _cast_grad(t, dA, d["A"]),
        _cast_grad(t, _bc_grad(xp, dB, cn.b_var, cn.b_ndim), d["B"]),
        _cast_grad(t, _bc_grad(xp, dC, cn.c_var, cn.c_ndim), d["C"]),
        _cast_grad(t, dD, d["D"]),
        _cast_grad(t, dz, d["z"]),
        _cast_grad(t, dbias, d["delta_bias"]),
        _cast_grad(t, dh0, d["h0"]),
    )


@register_op(
    "selective_scan",
    fwd=_selective_scan_fwd,
    bwd=_selective_scan_bwd,
    inputs=("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0"),
    backends=("numpy", "numba", "cupy"),
)
def selective_scan(
    u: np.ndarray,
    delta: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    D: np.ndarray | None = None,
    z: np.ndarray | None = None,
    delta_bias: np.ndarray | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    h0: np.ndarray | None = None,
    reverse: bool = False,
    seq_idx: np.ndarray | None = None,
    backend: str | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    r"""Mamba's selective scan (S6), with mamba_ssm's names, shapes and semantics.

    For every batch b, channel d and state n (diagonal state matrix, time last)::

        dt_t  = delta_t + delta_bias_d;  dt_t = softplus(dt_t) if delta_softplus
                (softplus(x) = log1p(exp(x)), linear for x > 20 as in mamba_ssm/torch)
        x_t   = exp(dt_t A_dn) x_{t-1} + dt_t B_t[n] u_t        x_{-1} = h0 (0 by default)
        y_t   = sum_n C_t[n] x_t[n]          (2 Re(sum_n ...) when A is complex)
        out_t = (y_t + D_d u_t) * silu(z_t)  (each term only if given; silu(z) = z sigmoid(z))

    i.e. ZOH for A and Euler for B (``exp(dt A)``, ``dt B``), as mamba_ssm.

    Parameters
    ----------
    u, delta : ndarray, shape (batch, D, L)
        Input and step sizes, real.
    A : ndarray, shape (D, N)
        Diagonal state matrix, real or complex (complex: conjugate-halved modes).
    B, C : ndarray
        Fixed ``(D, N)``, variable ``(batch, N, L)`` or grouped ``(batch, G, N, L)``
        (channel d uses group ``d // (D / G)``; G must divide D; B and C may
        have different G, mamba_ssm requires the same).  Complex B/C (only with complex A) are complex arrays of
        that shape -- not mamba_ssm's real arrays of length 2L with interleaved
        (re, im): convert those with ``X[..., 0::2] + 1j * X[..., 1::2]``.
    D : ndarray, shape (D,), optional
        Skip connection weights.
    z : ndarray, shape (batch, D, L), optional
        Gate: the output is multiplied by ``silu(z)``.
    delta_bias : ndarray, shape (D,), optional
        Step-size bias (added before the softplus).
    delta_softplus : bool
        Apply softplus to ``delta + delta_bias``.
    return_last_state : bool
        Also return the final state ``x_{L-1}`` (batch, D, N); unlike mamba_ssm, a
        cotangent on it flows back through the VJP.
    h0 : ndarray, shape (batch, D, N), optional
        Initial state (not in mamba_ssm).  With ``seq_idx`` it applies only to the
        first segment; every later segment starts from 0.
    reverse : bool
        Scan from t = L-1 down to 0 (``x_t`` then depends on ``x_{t+1}``); the
        returned "last" state is the one at t = 0.
    seq_idx : ndarray of int, shape (batch, L), optional
        Packed sequences: the state is reset to 0 wherever the index changes from
        one step to the next (in scan order).
    backend : {"numba", "numpy"}, optional
        Default: the Numba CPU kernels for NumPy arrays; "numpy" runs the float64
        reference.

    Returns
    -------
    out : ndarray, shape (batch, D, L), dtype of ``u``
    last_state : ndarray, shape (batch, D, N), only with ``return_last_state``
        float32/float64, or complex64/complex128 for complex A (not cast back).

    Raises
    ------
    ValueError
        If an array's shape does not fit ``u``'s (batch, D, L) and A's N (the
        message gives the expected shape), or a grouped B/C has a group count
        that does not divide D.
    TypeError
        If B, C or h0 is complex while A is real, ``seq_idx`` is not an integer
        array, ``delta_softplus``, ``return_last_state`` or ``reverse`` is not a
        bool, or an array is an integer, boolean or non-numeric NumPy array.

    See Also
    --------
    selective_state_update : One decoding step of the same recurrence.
    ssd : Mamba-2's scan, a scalar decay per head computed in chunks.
    linear_scan : The underlying diagonal recurrence without Mamba's gating.

    Notes
    -----
    Precision: computed in float32 like mamba_ssm, except that float64 ``u`` or
    ``delta`` compute in float64 (parameters are cast to the compute dtype).
    float16 inputs are upcast to float32 for the computation and the output is
    cast back to float16.  The float32 Numba kernel uses a polynomial ``exp``
    (max relative error 5e-7, flushes results below ~1.2e-38 to 0).
    Gradients (``ssmcore.vjp("selective_scan", ...)``) follow the project's
    complex convention (transpose of the linearisation, no conjugation: JAX's;
    PyTorch's is the conjugate).  The backward keeps only the states at every
    128th step and recomputes the rest, so its extra memory is O(batch D N L / 128).

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import selective_scan
    >>> rng = np.random.default_rng(0)
    >>> u = rng.standard_normal((1, 2, 5)); delta = np.full((1, 2, 5), 0.1)
    >>> A = -np.ones((2, 3)); B = np.ones((2, 3)); C = np.ones((2, 3))
    >>> out, last = selective_scan(u, delta, A, B, C, return_last_state=True)
    >>> out.shape, last.shape
    ((1, 2, 5), (1, 2, 3))

    With constant dt, B and C it is a linear recurrence x_t = e^{-0.1} x_{t-1} + 0.1 u_t
    (three identical states, so y = 3 x):

    >>> x = 0.0
    >>> for t in range(5):
    ...     x = np.exp(-0.1) * x + 0.1 * u[0, 0, t]
    >>> bool(np.isclose(out[0, 0, -1], 3 * x))
    True
    """
    out, _ = _selective_scan_fwd(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
        h0=h0, reverse=reverse, seq_idx=seq_idx, backend=backend, _save=False,
    )
    return out


# The decoding step lives in its own module (registered op with a VJP); re-exported here.
from ._state_update import selective_state_update  # noqa: E402
