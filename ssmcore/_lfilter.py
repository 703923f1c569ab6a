r"""``lfilter``: a drop-in for :func:`scipy.signal.lfilter`, batched over filters, with a VJP.

The front door validates with scipy's rules, works out the batching, and puts
the operands into the kernels' layout (:mod:`ssmcore.reference.lfilter`):

* time is moved to the last axis and the other axes of ``x`` are the batch;
* ``b`` ``(..., nb)`` and ``a`` ``(..., na)`` keep their own leading shapes as
  compact rows plus channel-to-row maps (one filter shared by a batch is never
  copied), divided by ``a[..., 0]`` and zero-padded to ``K = max(nb, na)`` as
  scipy does;
* ``zi`` (scipy's DF-II-transposed state) is moved to ``(C, K - 1)``.

All glue is written against the array API (``xp = target.xp``), so it runs on
NumPy, CuPy and array-api-strict arrays alike. On CuPy arrays the kernels are
``backends/cupy/lfilter.py``'s and the operands stay on the device; the one host
synchronisation is scipy's ``a[0] == 0`` error for IIR filters given ``a`` as a CuPy
array (a single boolean read back: the error contract needs the answer before
filtering); ``a`` given as a list or NumPy array is checked on the host, no sync.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

import numpy as np

from ._xp import broadcast_shapes, dtype_name, prod
from .dispatch import Target, array_kind, kernels, select
from .registry import register_op
from .validation import shape_error

__all__ = ["UnsupportedDtypeError", "lfilter"]

_FN = "lfilter"


class UnsupportedDtypeError(NotImplementedError, TypeError):
    """A dtype lfilter does not filter in.

    scipy raises NotImplementedError for unsupported result types and TypeError for
    object arrays of non-numbers; this is both.
    """


class _Prepared(NamedTuple):
    b_rows: Any  # (Rb, K) normalised, padded
    brow: Any  # (C,) int64
    a_rows: Any  # (Ra, K) normalised, padded
    arow: Any  # (C,) int64
    a0_rows: Any  # (Ra,) the raw a[..., 0] (chain rule of the normalisation)
    x2: Any  # (C, L)
    zi2: Any  # (C, K - 1)
    batch: tuple[int, ...]  # broadcast of b, a and x batch shapes
    L: int
    K: int
    nb: int
    na: int
    q: int  # position of the time axis in the output
    x_perm: tuple[int, ...]  # permutation moving x's time axis last
    x_lead: tuple[int, ...]  # x's batch shape (time removed)
    b_shape: tuple[int, ...]
    a_shape: tuple[int, ...]
    zi_shape: tuple[int, ...] | None
    dtypes: tuple[Any, Any, Any, Any]  # input dtypes of b, a, x, zi (None when absent)
    dtype: Any
    target: Target


def _as_array(name: str, v: Any, t: Target) -> Any:
    """``v`` as an array of the call's namespace, refusing what scipy's lfilter refuses."""
    if v is None:
        raise TypeError(f"{_FN}: {name} is None; expected an array")
    try:
        if t.kind == "numpy":
            arr = np.asarray(v)
        else:
            arr = v if (hasattr(v, "__array_namespace__") and array_kind(v) == t.kind) else t.asarray(v)
    except Exception as exc:  # ragged lists and other non-array-likes
        raise TypeError(f"{_FN}: {name} could not be converted to an array ({exc})") from None
    if not _is_kind(arr.dtype, ("numeric", "bool"), t):
        raise UnsupportedDtypeError(
            f"{_FN}: {name} has dtype {dtype_name(arr.dtype)}; expected a floating or complex dtype "
            "(scipy.signal.lfilter does not support it either)"
        )
    return arr


#: NumPy dtype kinds of the array-API kind names used here (xp.isdtype costs ~3 us on NumPy).
_NUMPY_KINDS = {"numeric": "iufc", "bool": "b", "real floating": "f", "complex floating": "c"}


def _is_kind(dtype: Any, kinds: tuple[str, ...], t: Target) -> bool:
    if t.kind == "numpy":
        return any(dtype.kind in _NUMPY_KINDS[k] for k in kinds)
    return bool(t.xp.isdtype(dtype, kinds))


def _astype(v: Any, dtype: Any, xp: Any) -> Any:
    return v if v.dtype == dtype else xp.astype(v, dtype)


def _any_zero(v: Any, t: Target) -> bool:
    """Whether ``v`` has a zero (a host sync on a GPU: scipy's a[0] == 0 error needs the answer)."""
    if t.kind == "numpy":
        return bool((v == 0).any())  # xp.any costs ~6 us on NumPy
    return bool(t.xp.any(v == 0))


def _host_a0_zero(a: Any, dtype: Any) -> bool:
    """Whether host coefficients (a list or NumPy array) have a[..., 0] == 0 in the compute dtype (no sync)."""
    return bool((np.atleast_1d(np.asarray(a)).astype(np.dtype(dtype))[..., 0] == 0).any())


def _atleast_1d(x: Any, xp: Any) -> Any:
    return xp.reshape(x, (1,)) if x.ndim == 0 else x


def _move_last(ndim: int, axis: int) -> tuple[int, ...]:
    return tuple(i for i in range(ndim) if i != axis) + (axis,)


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _rows_map(lead: tuple[int, ...], batch: tuple[int, ...], t: Target) -> Any:
    """Channel -> row map of an operand with leading shape ``lead`` broadcast to ``batch``."""
    xp = t.xp
    R, C = prod(lead), prod(batch)
    if R == 1:  # one filter for every channel (scipy's case)
        return xp.zeros(C, dtype=xp.int64, device=t.device)
    rows = xp.arange(R, dtype=xp.int64, device=t.device)
    if lead != batch:
        rows = xp.reshape(xp.broadcast_to(xp.reshape(rows, lead), batch), (C,))
    return rows


def _pad(rows: Any, K: int, t: Target) -> Any:
    xp = t.xp
    n = rows.shape[1]
    if n == K:
        return rows
    return xp.concat([rows, xp.zeros((rows.shape[0], K - n), dtype=rows.dtype, device=t.device)], axis=1)


def _check_axis(axis: Any, ndim: int) -> int:
    if isinstance(axis, bool):
        raise TypeError(f"{_FN}: axis must be an integer; got bool {axis!r}")
    try:
        ax = operator.index(axis)
    except TypeError:
        raise TypeError(f"{_FN}: axis must be an integer; got {type(axis).__name__} {axis!r}") from None
    if not -ndim <= ax < ndim:
        raise ValueError(
            f"{_FN}: axis {ax} is out of range for x with {ndim} dimension(s) (selected axis is out of range)"
        )
    return ax % ndim


def _prepare(b: Any, a: Any, x: Any, axis: Any, zi: Any, t: Target) -> _Prepared:
    xp = t.xp
    b_arr = _atleast_1d(_as_array("b", b, t), xp)
    a_arr = _atleast_1d(_as_array("a", a, t), xp)
    x_arr = _as_array("x", x, t)
    zi_arr = None if zi is None else _as_array("zi", zi, t)
    for name, arr in (("b", b_arr), ("a", a_arr)):
        if arr.shape[-1] == 0:
            raise shape_error(
                _FN, name, arr.shape, f"(..., n{name}) with n{name} >= 1 (a non-empty coefficient vector)"
            )
    if x_arr.ndim == 0:
        raise shape_error(_FN, "x", x_arr.shape, "at least 1 dimension (x must be at least 1-D)")
    p = _check_axis(axis, x_arr.ndim)

    # scipy's dtype rule: the result type of b, a, x (and zi), without casting ints to float.
    dtypes_in = [v.dtype for v in (b_arr, a_arr, x_arr, zi_arr) if v is not None]
    dtype = np.result_type(*dtypes_in) if t.kind == "numpy" else xp.result_type(*dtypes_in)
    if not _is_kind(dtype, ("real floating", "complex floating"), t) or dtype == getattr(xp, "float16", None):
        raise UnsupportedDtypeError(
            f"{_FN}: b, a, x{' and zi' if zi_arr is not None else ''} promote to {dtype_name(dtype)}, which "
            "scipy.signal.lfilter does not support either; pass floating arrays (e.g. x.astype(float64))"
        )

    nb, na = b_arr.shape[-1], a_arr.shape[-1]
    K = max(nb, na)
    x_perm = _move_last(x_arr.ndim, p)
    xt = xp.permute_dims(x_arr, x_perm) if p != x_arr.ndim - 1 else x_arr
    x_lead, L = tuple(xt.shape[:-1]), xt.shape[-1]
    b_lead, a_lead = tuple(b_arr.shape[:-1]), tuple(a_arr.shape[:-1])
    try:
        batch = broadcast_shapes(b_lead, a_lead, x_lead)
    except ValueError:
        raise ValueError(
            f"{_FN}: b has shape {tuple(b_arr.shape)}, a has shape {tuple(a_arr.shape)} and x has shape "
            f"{tuple(x_arr.shape)}; the filters' leading axes {b_lead} and {a_lead} must broadcast against x's "
            f"axes other than axis={p}, {x_lead}"
        ) from None
    C = prod(batch)
    q = p + len(batch) - len(x_lead)  # extra leading batch axes come first

    # Coefficient rows, normalised by a[..., 0] in the compute dtype as scipy does.
    Rb, Ra = prod(b_lead), prod(a_lead)
    a_rows = xp.reshape(_astype(a_arr, dtype, xp), (Ra, na))
    b_rows = xp.reshape(_astype(b_arr, dtype, xp), (Rb, nb))
    a0_rows = a_rows[:, 0]
    if na > 1 and (_host_a0_zero(a, dtype) if t.kind == "cupy" and array_kind(a) in (None, "numpy")
                   else _any_zero(a0_rows, t)):
        # scipy's IIR path refuses a[0] == 0 (its FIR path divides and returns inf/nan, as here).
        raise ValueError(
            f"{_FN}: a[..., 0] == 0 for some filter; filter coefficient a[0] == 0 not supported (as in scipy)"
        )
    brow = _rows_map(b_lead, batch, t)
    arow = brow if a_lead == b_lead else _rows_map(a_lead, batch, t)
    if b_lead == a_lead or Ra == 1:
        b_norm = b_rows / a0_rows[:, None]  # row r of b belongs with row r of a (or a is shared)
    else:  # b and a batched differently: normalise per channel (only then is b expanded)
        b_norm = xp.take(b_rows, brow, axis=0) / xp.take(a0_rows, arow, axis=0)[:, None]
        brow = xp.arange(C, dtype=xp.int64, device=t.device)
    # FIR: a stays one column (the kernels' FIR loop has no feedback terms, as scipy's FIR path).
    a_norm = xp.ones((Ra, 1), dtype=dtype, device=t.device) if na == 1 else _pad(a_rows / a0_rows[:, None], K, t)
    b_norm = _pad(b_norm, K, t)

    xb = xt if x_lead == batch else xp.broadcast_to(xt, batch + (L,))
    x2 = xp.reshape(_astype(xb, dtype, xp), (C, L))

    zshape = batch[:q] + (K - 1,) + batch[q:]
    if zi_arr is None:
        zi2 = xp.zeros((C, K - 1), dtype=dtype, device=t.device)
    else:
        ok = zi_arr.ndim == len(zshape) and all(
            s == e or (s == 1 and i != q) for i, (s, e) in enumerate(zip(zi_arr.shape, zshape))
        )
        if not ok:
            raise shape_error(
                _FN, "zi", zi_arr.shape,
                f"{zshape} (the output's shape with axis {q} of length max(len(a), len(b)) - 1 = {K - 1}; "
                "the other axes may be 1)",
            )
        zt = xp.permute_dims(zi_arr, _move_last(len(zshape), q)) if q != len(zshape) - 1 else zi_arr
        zt = xp.astype(zt, dtype, copy=False)
        if tuple(zt.shape) != batch + (K - 1,):
            zt = xp.broadcast_to(zt, batch + (K - 1,))
        zi2 = xp.reshape(zt, (C, K - 1))

    dtypes = (b_arr.dtype, a_arr.dtype, x_arr.dtype, None if zi_arr is None else zi_arr.dtype)
    return _Prepared(
        b_norm, brow, a_norm, arow, a0_rows, x2, zi2, batch, L, K, nb, na, q, x_perm, x_lead,
        tuple(b_arr.shape), tuple(a_arr.shape), None if zi_arr is None else tuple(zi_arr.shape), dtypes, dtype, t,
    )


def _to_output(v2: Any, p: _Prepared, last: int) -> Any:
    """(C, last) kernel rows -> the output layout (time or state axis at position q)."""
    xp = p.target.xp
    v = xp.reshape(v2, p.batch + (last,))
    nd = len(p.batch) + 1
    if p.q != nd - 1:
        v = xp.permute_dims(v, _inverse(_move_last(nd, p.q)))
    return v


def _to_rows(v: Any, p: _Prepared, last: int) -> Any:
    """Inverse of :func:`_to_output` (a cotangent into kernel rows)."""
    xp = p.target.xp
    nd = len(p.batch) + 1
    if p.q != nd - 1:
        v = xp.permute_dims(v, _move_last(nd, p.q))
    return xp.reshape(v, (prod(p.batch), last))


def _kernels(p: _Prepared) -> Any:
    # Long double (scipy computes in it) runs on the NumPy reference, which loops in the array's dtype.
    t = p.target
    if t.kind == "numpy" and p.dtype.itemsize > (8 if p.dtype.kind == "f" else 16):
        return kernels("numpy", "lfilter")
    return t.kernels("lfilter")


def _lfilter_fwd(
    b: Any, a: Any, x: Any, axis: int = -1, zi: Any = None, *, backend: str | None = None
) -> tuple[Any, Any]:
    t = select(_FN, b, a, x, zi, backend=backend)
    p = _prepare(b, a, x, axis, zi, t)
    k = _kernels(p)
    y2, zf2 = k.lfilter_fwd(p.b_rows, p.brow, p.a_rows, p.arow, p.x2, p.zi2)
    y = _to_output(y2, p, p.L)
    out = y if zi is None else (y, _to_output(zf2, p, p.K - 1))
    return out, (p, y2)


def _reduce(g: Any, shape: tuple[int, ...], dtype: Any, p: _Prepared) -> Any:
    """Sum a per-channel gradient to an input's shape and bring it to the input's dtype."""
    from .validation import sum_to_shape

    xp = p.target.xp
    g = sum_to_shape(g, shape, xp)
    if xp.isdtype(g.dtype, "complex floating") and not xp.isdtype(dtype, "complex floating"):
        g = xp.real(g)
    if not xp.isdtype(dtype, ("real floating", "complex floating")):
        return g  # integer inputs: the gradient in the compute dtype
    return xp.astype(g, dtype, copy=False)


def _lfilter_bwd(res: Any, cotangent: Any, needs: tuple[bool, ...] = (True, True, True, True)) -> tuple[Any, ...]:
    p, y2 = res
    t = p.target
    xp = t.xp
    with_zf = p.zi_shape is not None
    gy, gzf = cotangent if with_zf else (cotangent, None)
    complex_ = xp.isdtype(p.dtype, "complex floating")

    def prep(ct: Any) -> Any:
        if not hasattr(ct, "__array_namespace__"):
            ct = t.asarray(ct)
        if not complex_ and xp.isdtype(ct.dtype, "complex floating"):
            ct = xp.real(ct)
        return xp.astype(ct, p.dtype, copy=False)

    C = prod(p.batch)
    gy2 = _to_rows(prep(gy), p, p.L)
    gzf2 = xp.zeros((C, p.K - 1), dtype=p.dtype, device=t.device) if gzf is None else _to_rows(prep(gzf), p, p.K - 1)
    need_coeffs = bool(needs[0] or needs[1])
    gx2, gbt, gat, gzi2 = _kernels(p).lfilter_bwd(
        p.b_rows, p.brow, p.a_rows, p.arow, p.x2, y2, gy2, gzf2, need_coeffs
    )
    grad_b = grad_a = None
    if need_coeffs:
        # Chain rule of the normalisation b~ = b / a0, a~ = a / a0 (per channel, then summed to the inputs).
        gbt = xp.astype(gbt, p.dtype, copy=False)
        gat = xp.astype(gat, p.dtype, copy=False)
        a0 = xp.take(p.a0_rows, p.arow, axis=0)[:, None]
        bc = xp.take(p.b_rows, p.brow, axis=0)
        ac = xp.take(p.a_rows, p.arow, axis=0)
        gb = gbt / a0
        na = p.na
        ga0 = -(
            xp.sum(gbt * bc, axis=1, keepdims=True) + xp.sum(gat[:, 1:na] * ac[:, 1:na], axis=1, keepdims=True)
        ) / a0
        ga = xp.concat([ga0, gat[:, 1:na] / a0], axis=1)
        if needs[0]:
            grad_b = _reduce(xp.reshape(gb[:, : p.nb], p.batch + (p.nb,)), p.b_shape, p.dtypes[0], p)
            if len(p.b_shape) == 0:
                grad_b = xp.reshape(grad_b, ())
        if needs[1]:
            grad_a = _reduce(xp.reshape(ga[:, : p.na], p.batch + (p.na,)), p.a_shape, p.dtypes[1], p)
    grad_x = None
    if needs[2]:
        gx = xp.reshape(gx2, p.batch + (p.L,))
        gx = _reduce(gx, p.x_lead + (p.L,), p.dtypes[2], p)
        if p.x_perm != tuple(range(len(p.x_perm))):
            gx = xp.permute_dims(gx, _inverse(p.x_perm))
        grad_x = gx
    grad_zi = None
    if with_zf and needs[3]:
        gzi = _to_output(gzi2, p, p.K - 1)
        grad_zi = _reduce(gzi, p.zi_shape, p.dtypes[3], p)
    return grad_b, grad_a, grad_x, grad_zi


@register_op("lfilter", fwd=_lfilter_fwd, bwd=_lfilter_bwd, inputs=("b", "a", "x", "zi"),
             backends=("numpy", "numba", "cupy"))
def lfilter(
    b: Any, a: Any, x: Any, axis: int = -1, zi: Any = None, *, backend: str | None = None
) -> Any:
    r"""Filter data with IIR or FIR filters; a drop-in for :func:`scipy.signal.lfilter`, batched over filters.

    Direct form II transposed, exactly as scipy (same operations in the same
    order; real results are bit-identical on hosts without FMA contraction):

    .. math::

        a_0 y_n = \sum_{k=0}^{n_b - 1} b_k x_{n-k} - \sum_{k=1}^{n_a - 1} a_k y_{n-k}

    computed after dividing ``b`` and ``a`` by ``a[0]``, with the state
    :math:`z \in \mathbb{C}^{K-1}`, :math:`K = \max(n_a, n_b)`:
    :math:`y_n = z_0 + b_0 x_n`, :math:`z_i \leftarrow z_{i+1} + b_{i+1} x_n - a_{i+1} y_n`.

    Parameters
    ----------
    b : array_like, shape ``(nb,)`` or ``(..., nb)``
        Numerator coefficients. With more than one dimension, one filter per
        entry of the leading axes (see *Batching*).
    a : array_like, shape ``(na,)`` or ``(..., na)``
        Denominator coefficients; ``a[..., 0]`` must be non-zero when ``na > 1``
        (scipy's rule: ``ValueError``; with ``na == 1`` it divides, giving inf/nan).
    x : array_like
        Input, at least 1-D; filtered along ``axis``.
    axis : int, default -1
        The time axis of ``x``.
    zi : array_like, optional
        Initial state in scipy's convention (:func:`scipy.signal.lfilter_zi`
        gives the steady state): the output's shape with the time axis of length
        ``K - 1``; other axes may be 1 (expanded, as scipy does).
    backend : {None, "numba", "numpy", "cupy"}, optional
        Force a backend; by default NumPy arrays run on the Numba kernels and
        CuPy arrays on the CuPy kernels (one thread per channel: the GPU pays
        off for thousands of channels).

    Returns
    -------
    y : ndarray
        The filtered signal.
    zf : ndarray
        Final state (only when ``zi`` is given), shaped like ``zi``'s expansion;
        pass it as ``zi`` of the next block to filter a stream.

    Raises
    ------
    ValueError
        Empty coefficients, 0-d ``x``, ``axis`` out of range, non-broadcasting
        filters, a wrong ``zi`` shape, or ``a[0] == 0`` with ``na > 1``.
    NotImplementedError
        When the inputs promote to an integer, boolean or float16 dtype, as
        scipy (cast to a floating dtype).

    See Also
    --------
    scipy.signal.lfilter : The SciPy function this one reproduces.
    dlsim : Simulate a discrete state-space (or transfer-function) system.
    linear_scan : The recurrence :math:`h_t = a_t h_{t-1} + b_t`, a one-pole filter with time-varying coefficients.

    Notes
    -----
    Batching: let ``S_x`` be the shape of ``x`` without ``axis``. Then ``b.shape[:-1]``,
    ``a.shape[:-1]`` and ``S_x`` broadcast (NumPy's rules) to the batch shape
    ``S``, and every batch entry is filtered with its own ``b`` and ``a`` rows.
    The output has shape ``S`` with the time axis inserted where ``axis`` was,
    counted in ``x``'s axes (axes that ``S`` adds in front come first). With 1-D
    ``b`` and ``a`` this is exactly scipy's behaviour. torchaudio's
    ``lfilter(waveform (..., F, L), a_coeffs (F, na), b_coeffs (F, nb), batching=True)``
    is ``lfilter(b_coeffs, a_coeffs, waveform)`` here (no clamping, no float32-only
    restriction).

    dtype: ``result_type(b, a, x, zi)`` (float32, float64, complex64,
    complex128; long double runs on the NumPy reference, as slow as a Python loop
    over time). Gradients: registered as op ``"lfilter"`` with inputs
    ``(b, a, x, zi)``; the backward is the filter run backwards in time on the
    cotangent (docs/signal.md derives it), one pass, no conjugation (JAX's
    convention). NaN and inf propagate as in scipy.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore._lfilter import lfilter
    >>> lfilter([1.0], [1.0, -0.5], np.ones(4))
    array([1.   , 1.5  , 1.75 , 1.875])

    Three different first-order filters over a batch of signals (torchaudio-style):

    >>> b = np.array([[1.0, 0.0], [0.5, 0.5], [1.0, -1.0]])     # (3, 2)
    >>> a = np.array([[1.0, -0.9], [1.0, 0.0], [1.0, 0.0]])     # (3, 2)
    >>> y = lfilter(b, a, np.ones((8, 3, 5)))                    # (batch, F, L)
    >>> y.shape, y[0, :, -1].round(4)
    ((8, 3, 5), array([4.0951, 1.    , 0.    ]))

    Streaming with a state:

    >>> y1, z = lfilter([1.0], [1.0, -0.5], np.ones(2), zi=[0.0])
    >>> y2, z = lfilter([1.0], [1.0, -0.5], np.ones(2), zi=z)
    >>> np.concatenate([y1, y2])
    array([1.   , 1.5  , 1.75 , 1.875])
    """
    out, _ = _lfilter_fwd(b, a, x, axis, zi, backend=backend)
    return out
