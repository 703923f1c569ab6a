"""Linear recurrences along the last axis: ``linear_scan`` and its hand-written VJP.

h_t = a_t h_{t-1} + b_t is the recurrence of every diagonal SSM (S4D, S5, LRU,
Mamba after discretisation). This module validates and normalises the inputs
once, then calls the kernels of the selected backend
(:mod:`ssmcore.backends.numba.scan`, or the NumPy specification
:mod:`ssmcore.reference.scan`), which all share one array layout:

* channels are the flattened leading axes ``C = prod(out.shape[:-1])``;
* ``a`` keeps its own (compact) leading shape: rows ``(Ra, La)`` plus a map
  ``arow`` from channel to row, so coefficients shared across a batch are
  never copied; ``La == 1`` means constant in time (read with time stride 0);
* ``b`` is materialised to ``(C, L)`` only when it is itself broadcast.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._xp import broadcast_shapes, prod
from .dispatch import Target, select
from .registry import register_op
from .validation import as_float_array, check_bool, shape_error, sum_to_shape

__all__ = ["linear_scan"]

_FN = "linear_scan"


class _Prepared(NamedTuple):
    """Inputs in kernel layout plus what the backward needs to undo it."""

    a_rows: Any  # (Ra, La)
    arow: Any  # (C,) int64
    b2: Any  # (C, L)
    h0_flat: Any  # (C,)
    out_shape: tuple[int, ...]
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    h0_shape: tuple[int, ...] | None
    a_dtype: Any
    b_dtype: Any
    h0_dtype: Any
    dtype: Any
    target: Target
    complex_state: bool  # dtype is complex


def _weak(x: Any, arr: Any) -> Any:
    """What takes part in dtype promotion.

    Python scalars stay weak (NEP 50), so ``linear_scan(0.9, b32)`` stays float32.
    """
    return x if type(x) in (int, float, complex) else arr.dtype  # not np.float64 scalars, as in NumPy


def _prepare(a: Any, b: Any, h0: Any, t: Target) -> _Prepared:
    xp = t.xp
    a_arr = as_float_array(_FN, "a", a, target=t)
    b_arr = as_float_array(_FN, "b", b, target=t)
    h0_arr = None if h0 is None else as_float_array(_FN, "h0", h0, target=t)
    try:
        out_shape = broadcast_shapes(a_arr.shape, b_arr.shape)
    except ValueError:
        raise ValueError(
            f"{_FN}: a has shape {tuple(a_arr.shape)} and b has shape {tuple(b_arr.shape)}, which do not broadcast; "
            "expected a of shape (..., L) (time-varying) or (..., 1) (constant in time) and b of shape "
            "(..., L), time on the last axis"
        ) from None
    if len(out_shape) == 0:
        raise shape_error(_FN, "b", b_arr.shape, "(..., L) with time on the last axis (a and b are both scalars)")
    lead, L = out_shape[:-1], out_shape[-1]
    promo = [_weak(a, a_arr), _weak(b, b_arr)] + ([] if h0_arr is None else [_weak(h0, h0_arr)])
    dtype = xp.result_type(*promo)

    # a: compact rows (its own leading shape) and a channel -> row map. Layout (contiguity)
    # is the launchers' business; these are views where the inputs allow.
    La = a_arr.shape[-1] if a_arr.ndim else 1
    a_lead = tuple(a_arr.shape[:-1]) if a_arr.ndim else ()
    Ra = prod(a_lead)
    a_rows = xp.astype(xp.reshape(a_arr, (Ra, La)), dtype, copy=False)
    C = prod(lead)
    arow = xp.arange(Ra, dtype=xp.int64, device=t.device)
    if a_lead != lead:  # a shared across broadcast axes: map each channel to its row
        arow = xp.reshape(xp.broadcast_to(xp.reshape(arow, a_lead), lead), (C,))

    b_full = b_arr if tuple(b_arr.shape) == out_shape else xp.broadcast_to(b_arr, out_shape)
    b2 = xp.reshape(xp.astype(b_full, dtype, copy=False), (C, L))

    if h0_arr is None:
        h0_flat = xp.zeros(C, dtype=dtype, device=t.device)
    else:
        ok = h0_arr.ndim <= len(lead)
        if ok:
            try:
                ok = broadcast_shapes(h0_arr.shape, lead) == lead
            except ValueError:
                ok = False
        if not ok:
            raise shape_error(
                _FN, "h0", h0_arr.shape,
                f"{tuple(lead)} (the output's shape {tuple(out_shape)} without the time axis) or a shape that "
                "broadcasts to it",
            )
        h0_flat = xp.reshape(xp.astype(xp.broadcast_to(h0_arr, lead), dtype, copy=False), (C,))

    return _Prepared(
        a_rows, arow, b2, h0_flat, tuple(out_shape), tuple(a_arr.shape), tuple(b_arr.shape),
        None if h0_arr is None else tuple(h0_arr.shape), a_arr.dtype, b_arr.dtype,
        None if h0_arr is None else h0_arr.dtype, dtype, t, bool(xp.isdtype(dtype, "complex floating")),
    )


def _final_state(h: Any, p: _Prepared, reverse: bool) -> Any:
    xp = p.target.xp
    if h.shape[-1] == 0:
        return xp.asarray(xp.reshape(p.h0_flat, p.out_shape[:-1]), copy=True)
    return xp.asarray(h[..., 0 if reverse else -1], copy=True)


def _check_out(out: Any, p: _Prepared, inputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray | None, bool]:
    """Validate ``out=``; return (the (C, L) buffer the kernel may write, whether a copy back is needed).

    Like a NumPy ufunc, any strides are accepted and an ``out`` overlapping an
    input is handled: the kernel then writes a fresh array that is copied into ``out``.
    """
    if p.target.kind != "numpy":
        raise TypeError(f"{_FN}: out= is supported for NumPy inputs only; got {p.target.kind} inputs")
    if type(out) is not np.ndarray:
        raise TypeError(f"{_FN}: out must be a NumPy ndarray, got {type(out).__name__}")
    if out.shape != p.out_shape:
        raise shape_error(_FN, "out", out.shape, f"{p.out_shape} (the broadcast shape of a and b)")
    if out.dtype != p.dtype:
        raise TypeError(f"{_FN}: out has dtype {out.dtype}; expected {p.dtype} (the result dtype of a, b and h0)")
    if not out.flags.writeable:
        raise ValueError(f"{_FN}: out is read-only")
    direct = out.flags.c_contiguous and not any(np.may_share_memory(out, x) for x in inputs)
    return (out.reshape(p.b2.shape) if direct else None), not direct


def _forward(
    a: Any, b: Any, h0: Any, reverse: bool, return_final_state: bool, backend: str | None, out: Any = None
) -> tuple[Any, Any]:
    t = select(_FN, a, b, h0, backend=backend)
    reverse = check_bool(_FN, "reverse", reverse)
    return_final_state = check_bool(_FN, "return_final_state", return_final_state)
    p = _prepare(a, b, h0, t)
    k = t.kernels("scan")
    buf, copy_back = (None, False) if out is None else _check_out(out, p, (p.a_rows, p.b2, p.h0_flat))
    h2 = k.scan_fwd(p.a_rows, p.arow, p.b2, p.h0_flat, reverse, out=buf)
    h = t.xp.reshape(h2, p.out_shape)
    if out is not None:
        if copy_back:
            np.copyto(out, h)
        h = out
    result = (h, _final_state(h, p, reverse)) if return_final_state else h
    return result, (p, h2, reverse, return_final_state)


def _linear_scan_fwd(
    a: Any,
    b: Any,
    h0: Any = None,
    *,
    reverse: bool = False,
    return_final_state: bool = False,
    backend: str | None = None,
) -> tuple[Any, Any]:
    return _forward(a, b, h0, reverse, return_final_state, backend)


def _to_input(g: Any, shape: tuple[int, ...], dtype: Any, p: _Prepared) -> Any:
    """Reduce a gradient to an input's broadcast shape and dtype.

    A real input gets the real part (the pairing is Re(sum(u v))).
    """
    xp = p.target.xp
    g = sum_to_shape(g, shape, xp)
    if p.complex_state and dtype != g.dtype and not xp.isdtype(dtype, "complex floating"):
        g = xp.real(g)
    return xp.astype(g, dtype, copy=False)


def _linear_scan_bwd(
    res: Any, cotangent: Any, needs: tuple[bool, bool, bool] = (True, True, True)
) -> tuple[Any, Any, Any]:
    p, h2, reverse, with_final = res
    t = p.target
    xp = t.xp
    gh, gfinal = cotangent if with_final else (cotangent, None)
    C, L = h2.shape

    def prep(ct: Any, shape: tuple[int, ...]) -> Any:
        if not hasattr(ct, "__array_namespace__"):
            ct = t.asarray(ct)
        if not p.complex_state and ct.dtype != p.dtype and xp.isdtype(ct.dtype, "complex floating"):
            ct = xp.real(ct)
        if tuple(ct.shape) != shape:
            ct = xp.broadcast_to(ct, shape)
        return xp.astype(ct, p.dtype, copy=False)

    gh2 = xp.reshape(prep(gh, p.out_shape), (C, L))
    if gfinal is None:
        gf = xp.zeros(C, dtype=p.dtype, device=t.device)
    else:
        gf = xp.reshape(prep(gfinal, p.out_shape[:-1]), (C,))
    k = t.kernels("scan")
    # Without a's gradient the kernel neither reads the states h nor writes ga (3 streams instead of 5).
    g, ga, gh0 = k.scan_bwd(p.a_rows, p.arow, h2, p.h0_flat, gh2, gf, reverse, need_a=needs[0])
    lead = p.out_shape[:-1]
    grad_a = None if ga is None else _to_input(xp.reshape(ga, lead + (ga.shape[1],)), p.a_shape, p.a_dtype, p)
    grad_b = _to_input(xp.reshape(g, p.out_shape), p.b_shape, p.b_dtype, p) if needs[1] else None
    grad_h0 = (
        None if (p.h0_shape is None or not needs[2]) else _to_input(xp.reshape(gh0, lead), p.h0_shape, p.h0_dtype, p)
    )
    return grad_a, grad_b, grad_h0


@register_op(
    "linear_scan", fwd=_linear_scan_fwd, bwd=_linear_scan_bwd, inputs=("a", "b", "h0"),
    backends=("numpy", "numba", "cupy"),
)
def linear_scan(
    a: Any,
    b: Any,
    h0: Any = None,
    *,
    reverse: bool = False,
    return_final_state: bool = False,
    backend: str | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    r"""First-order linear recurrence along the last axis.

    .. math::

        h_t = a_t\, h_{t-1} + b_t, \qquad t = 0, \dots, L-1, \qquad h_{-1} = h_0

    or, with ``reverse=True``, :math:`h_t = a_t h_{t+1} + b_t` for
    :math:`t = L-1, \dots, 0` with :math:`h_L = h_0`. This is the state update of
    every diagonal SSM (S4D, S5, LRU, Mamba after discretisation) and a
    first-order IIR filter: for constant ``a`` it equals
    ``scipy.signal.lfilter([1], [1, -a], b)``.

    Parameters
    ----------
    a : array_like, shape ``(..., L)`` or ``(..., 1)``
        Coefficients, time on the last axis; a last axis of length 1 (or a
        scalar) means constant in time and is never expanded to length L.
        Leading axes broadcast against ``b``'s.
    b : array_like, shape ``(..., L)``
        Inputs. The output shape is ``broadcast(a.shape, b.shape)``.
    h0 : array_like, optional
        Initial state, shape ``out.shape[:-1]`` or any shape that broadcasts to
        it (a scalar, or ``(D,)`` for output ``(batch, D, L)``). Default 0.
    reverse : bool, default False
        Run backwards in time (no copies are made).
    return_final_state : bool, default False
        Also return the last state computed: ``h[..., -1]`` (``h[..., 0]`` when
        reversed; ``h0`` when ``L == 0``), of shape ``out.shape[:-1]``, ready to
        be passed as ``h0`` of the next segment of a stream.
    backend : {None, "numba", "numpy", "cupy"}, optional
        Force a backend; by default NumPy arrays run on the Numba kernels and
        CuPy arrays on the CuPy kernels (:mod:`ssmcore.backends.cupy.scan`).
    out : ndarray, optional
        Array of the output's shape and dtype to write the states into, as for
        a NumPy ufunc; it is returned as ``h``. Reusing one buffer across calls
        (streaming, training loops) saves the allocation and the page faults of
        a fresh output, which cost about as much as the scan itself on large
        inputs. Any strides are accepted (C-contiguous is fastest), and an
        ``out`` that overlaps an input is handled correctly (through a
        temporary). NumPy API only: the op registered for gradients and the
        framework adapters do not take it.

    Returns
    -------
    h : ndarray, shape ``broadcast(a.shape, b.shape)``
        All states. dtype: ``np.result_type(a, b, h0)`` -- float32, float64,
        complex64 or complex128 (mixed real/complex promotes to complex;
        Python scalars do not widen float32).
    h_final : ndarray, shape ``h.shape[:-1]``
        Only with ``return_final_state=True``.

    Raises
    ------
    ValueError
        If ``a`` and ``b`` do not broadcast, the result has no time axis, or
        ``h0`` does not broadcast to ``out.shape[:-1]``.
    TypeError
        For integer/boolean NumPy arrays (cast them explicitly) and non-numeric
        dtypes.

    See Also
    --------
    selective_scan : Mamba's input-dependent scan, built on the same recurrence.
    lti_simulate_diag : A diagonal LTI system driven by an input sequence.
    vjp : The output of ``linear_scan`` with its pullback.

    Notes
    -----
    Gradients: registered as op ``"linear_scan"`` with inputs ``(a, b, h0)``;
    the backward is one reverse scan, :math:`g_t = \bar h_t + a_{t+1} g_{t+1}`,
    :math:`\bar b = g`, :math:`\bar a_t = g_t h_{t-1}`,
    :math:`\bar h_0 = a_0 g_0`, without conjugation (JAX's convention), each
    summed back to its input's broadcast shape. NaN and inf propagate.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import linear_scan
    >>> linear_scan(np.full(4, 0.5), np.ones(4))
    array([1.   , 1.5  , 1.75 , 1.875])
    >>> linear_scan(0.5, np.ones(4), reverse=True)
    array([1.875, 1.75 , 1.5  , 1.   ])

    Constant-in-time coefficients per channel, a batch of inputs, and the
    final state for streaming:

    >>> a = np.array([[0.9], [0.1]])               # (D, 1)
    >>> b = np.ones((3, 2, 5), dtype=np.float32)   # (batch, D, L)
    >>> h, hT = linear_scan(a.astype(np.float32), b, return_final_state=True)
    >>> h.shape, hT.shape, h.dtype
    ((3, 2, 5), (3, 2), dtype('float32'))
    >>> h2 = linear_scan(a.astype(np.float32), b, hT)   # the next 5 steps
    >>> bool(np.allclose(np.concatenate([h, h2], -1),
    ...                  linear_scan(a.astype(np.float32), np.ones((3, 2, 10), np.float32))))
    True

    Writing into a reused buffer:

    >>> buf = np.empty((3, 2, 5), dtype=np.float32)
    >>> linear_scan(a.astype(np.float32), b, out=buf) is buf
    True
    """
    result, _ = _forward(a, b, h0, reverse, return_final_state, backend, out)
    return result
