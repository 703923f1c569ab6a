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

from .dispatch import kernels, select_backend
from .registry import register_op
from .validation import as_float_array, shape_error, sum_to_shape

__all__ = ["linear_scan"]

_FN = "linear_scan"


class _Prepared(NamedTuple):
    """Inputs in kernel layout plus what the backward needs to undo it."""

    a_rows: np.ndarray  # (Ra, La)
    arow: np.ndarray  # (C,) intp
    b2: np.ndarray  # (C, L)
    h0_flat: np.ndarray  # (C,)
    out_shape: tuple[int, ...]
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    h0_shape: tuple[int, ...] | None
    a_dtype: np.dtype
    b_dtype: np.dtype
    h0_dtype: np.dtype | None
    dtype: np.dtype


def _weak(x: Any, arr: np.ndarray) -> Any:
    """What takes part in dtype promotion: Python scalars stay weak (NEP 50), so
    ``linear_scan(0.9, b32)`` stays float32."""
    return x if type(x) in (int, float, complex) else arr.dtype  # not np.float64 scalars, as in NumPy


def _prepare(a: Any, b: Any, h0: Any) -> _Prepared:
    a_arr = as_float_array(_FN, "a", a)
    b_arr = as_float_array(_FN, "b", b)
    h0_arr = None if h0 is None else as_float_array(_FN, "h0", h0)
    try:
        out_shape = np.broadcast_shapes(a_arr.shape, b_arr.shape)
    except ValueError:
        raise ValueError(
            f"{_FN}: a has shape {a_arr.shape} and b has shape {b_arr.shape}, which do not broadcast; "
            "expected a of shape (..., L) (time-varying) or (..., 1) (constant in time) and b of shape "
            "(..., L), time on the last axis"
        ) from None
    if len(out_shape) == 0:
        raise shape_error(_FN, "b", b_arr.shape, "(..., L) with time on the last axis (a and b are both scalars)")
    lead, L = out_shape[:-1], out_shape[-1]
    promo = [_weak(a, a_arr), _weak(b, b_arr)] + ([] if h0_arr is None else [_weak(h0, h0_arr)])
    dtype = np.result_type(*promo)

    # a: compact rows (its own leading shape) and a channel -> row map.
    La = a_arr.shape[-1] if a_arr.ndim else 1
    a_lead = a_arr.shape[:-1] if a_arr.ndim else ()
    Ra = int(np.prod(a_lead, dtype=np.int64))
    a_rows = np.ascontiguousarray(a_arr.reshape(Ra, La), dtype=dtype)
    arow = np.ascontiguousarray(
        np.broadcast_to(np.arange(Ra, dtype=np.intp).reshape(a_lead), lead).reshape(-1)
    )
    C = arow.shape[0]

    b_full = b_arr if b_arr.shape == out_shape else np.broadcast_to(b_arr, out_shape)
    b2 = np.ascontiguousarray(b_full, dtype=dtype).reshape(C, L)

    if h0_arr is None:
        h0_flat = np.zeros(C, dtype=dtype)
    else:
        ok = h0_arr.ndim <= len(lead)
        if ok:
            try:
                ok = np.broadcast_shapes(h0_arr.shape, lead) == lead
            except ValueError:
                ok = False
        if not ok:
            raise shape_error(
                _FN, "h0", h0_arr.shape,
                f"{tuple(lead)} (the output's shape {tuple(out_shape)} without the time axis) or a shape that "
                "broadcasts to it",
            )
        h0_flat = np.ascontiguousarray(np.broadcast_to(h0_arr, lead), dtype=dtype).reshape(C)

    return _Prepared(
        a_rows, arow, b2, h0_flat, tuple(out_shape), a_arr.shape, b_arr.shape,
        None if h0_arr is None else h0_arr.shape, a_arr.dtype, b_arr.dtype,
        None if h0_arr is None else h0_arr.dtype, dtype,
    )


def _final_state(h: np.ndarray, p: _Prepared, reverse: bool) -> np.ndarray:
    if h.shape[-1] == 0:
        return p.h0_flat.reshape(p.out_shape[:-1]).copy()
    return h[..., 0 if reverse else -1].copy()


def _check_out(out: Any, p: _Prepared, inputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray | None, bool]:
    """Validate ``out=``; return (the (C, L) buffer the kernel may write, whether a copy back is needed).

    Like a NumPy ufunc, any strides are accepted and an ``out`` overlapping an
    input is handled: the kernel then writes a fresh array that is copied into ``out``.
    """
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
    which = select_backend(_FN, a, b, h0, backend=backend)
    p = _prepare(a, b, h0)
    k = kernels(which, "scan")
    buf, copy_back = (None, False) if out is None else _check_out(out, p, (p.a_rows, p.b2, p.h0_flat))
    h2 = k.scan_fwd(p.a_rows, p.arow, p.b2, p.h0_flat, bool(reverse), out=buf)
    h = h2.reshape(p.out_shape)
    if out is not None:
        if copy_back:
            np.copyto(out, h)
        h = out
    result = (h, _final_state(h, p, reverse)) if return_final_state else h
    return result, (p, h2, bool(reverse), bool(return_final_state), which)


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


def _to_input(g: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Reduce a gradient to an input's broadcast shape and dtype (real part for a
    real input under the pairing Re(sum(u v)))."""
    g = sum_to_shape(g, shape)
    if dtype.kind != "c" and np.iscomplexobj(g):
        g = g.real
    # order="C" rather than np.ascontiguousarray, which turns a 0-d gradient into shape (1,)
    return np.array(g, dtype=dtype, copy=None, order="C")


def _linear_scan_bwd(
    res: Any, cotangent: Any, needs: tuple[bool, bool, bool] = (True, True, True)
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    p, h2, reverse, with_final, which = res
    gh, gfinal = cotangent if with_final else (cotangent, None)
    C, L = h2.shape

    def prep(ct: Any, shape: tuple[int, ...]) -> np.ndarray:
        ct = np.asarray(ct)
        if p.dtype.kind != "c" and np.iscomplexobj(ct):
            ct = ct.real
        return np.ascontiguousarray(np.broadcast_to(ct, shape), dtype=p.dtype)

    gh2 = prep(gh, p.out_shape).reshape(C, L)
    gf = np.zeros(C, dtype=p.dtype) if gfinal is None else prep(gfinal, p.out_shape[:-1]).reshape(C)
    k = kernels(which, "scan")
    # Without a's gradient the kernel neither reads the states h nor writes ga (3 streams instead of 5).
    g, ga, gh0 = k.scan_bwd(p.a_rows, p.arow, h2, p.h0_flat, gh2, gf, reverse, need_a=needs[0])
    lead = p.out_shape[:-1]
    grad_a = None if ga is None else _to_input(ga.reshape(lead + (ga.shape[1],)), p.a_shape, p.a_dtype)
    grad_b = _to_input(g.reshape(p.out_shape), p.b_shape, p.b_dtype) if needs[1] else None
    grad_h0 = None if (p.h0_shape is None or not needs[2]) else _to_input(gh0.reshape(lead), p.h0_shape, p.h0_dtype)
    return grad_a, grad_b, grad_h0


@register_op("linear_scan", fwd=_linear_scan_fwd, bwd=_linear_scan_bwd, inputs=("a", "b", "h0"))
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
    backend : {None, "numba", "numpy"}, optional
        Force a backend; by default NumPy arrays run on the Numba kernels.
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
