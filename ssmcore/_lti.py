"""Simulation of discrete linear time-invariant (LTI) state-space systems: dense and diagonal.

Three public functions:

* :func:`lti_simulate` -- SSM convention (S4, S5, Mamba, LRU)::

      x_t = A x_{t-1} + B u_t,    y_t = C x_t + D u_t,    x_{-1} = x0

  for many systems and many inputs at once, differentiable (op ``"lti_simulate"``),
  in "recurrent", chunked parallel-"scan" or FFT-"convolution" mode.
* :func:`lti_simulate_diag` -- the same for diagonal systems (S4D, S5, LRU), one
  input per channel, in the same three modes (op ``"lti_simulate_diag"``).
* :func:`dlsim` -- a drop-in for :func:`scipy.signal.dlsim` (control convention
  ``x[k+1] = A x[k] + B u[k]``, ``y[k] = C x[k] + D u[k]``), built on the same core.

The kernels live in ``ssmcore/reference/lti.py`` (NumPy specification; its
docstring is the kernel contract every backend implements) and
``ssmcore/backends/numba/lti.py`` (Numba CPU); see ``docs/lti.md``. The glue here
is device-neutral: it works on the array namespace of the call's
:class:`~ssmcore.dispatch.Target` with array-API functions only, passes operands
to the backend's launchers (which allocate the outputs and choose their own work
split), and the backward runs on the residuals' target.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np

from . import _xp
from .dispatch import Target, UnsupportedBackendError, declare_backends, select
from .registry import register_op
from .validation import as_float_array, check_bool, check_choice, shape_error, sum_to_shape

__all__ = ["DIAG_MODES", "LTI_MODES", "dlsim", "lti_simulate", "lti_simulate_diag"]

_OPERAND_NAMES = ("A", "B", "C", "D", "u", "x0")


@lru_cache(maxsize=64)
def _is_complex(xp: ModuleType, dtype: Any) -> bool:
    # cached: the namespace's isdtype costs ~1 us a call, and the glue asks a dozen times
    return _xp.is_complex_dtype(xp, dtype)


def _reshape(xp: ModuleType, x: Any, shape: tuple[int, ...]) -> Any:
    """``xp.reshape`` that skips the call when ``x`` already has ``shape`` (per-call overhead)."""
    return x if tuple(x.shape) == shape else xp.reshape(x, shape)

# dlsim is not a registered op (scipy's API, not differentiable) but runs the LTI
# kernels: it declares its backends like the ops do (see dlsim for what runs where).
declare_backends("dlsim", ("numpy", "numba", "cupy"))


# ---------------------------------------------------------------------------------
# Validation and flattening: one broadcast batch, operands never copied per batch
# ---------------------------------------------------------------------------------


@dataclass
class _Operands:
    """Validated operands, flattened over their own batch axes, plus an index map.

    ``idx[b]`` gives, for broadcast batch element ``b``, the flat index of the A, B,
    C, D, u and x0 it uses. Nothing is materialised at the broadcast shape, so one
    long input against many systems (or the reverse) costs no copies. All arrays
    are of the call's namespace and device (``target``); ``idx_host`` is the same
    map as a NumPy array (it depends on shapes only), for host-side grouping.
    """

    A: Any  # (nA, N, N)
    B: Any  # (nB, N, M)
    C: Any  # (nC, P, N)
    D: Any  # (nD, P, M), zeros when D is None
    u: Any  # (nU, M, L)
    x0: Any  # (nX, N), zeros when x0 is None
    idx: Any  # (batch, 6) int64, on the operands' device
    idx_host: np.ndarray  # the same, NumPy
    batch_shape: tuple[int, ...]
    N: int
    M: int
    P: int
    L: int
    dtype: Any
    # (shape, dtype) of each user argument, None where not given: for the gradients
    inputs: tuple[tuple[tuple[int, ...], Any] | None, ...]
    target: Target
    # whether the caller asked for x_{L-1} (modes that get it for free ignore this)
    need_final_state: bool = True

    @property
    def batch(self) -> int:
        return self.idx_host.shape[0]

    @property
    def backend(self) -> str:
        return self.target.backend


def _prepare(fn: str, t: Target, A: Any, B: Any, C: Any, D: Any, u: Any, x0: Any) -> _Operands:
    xp = t.xp
    A = as_float_array(fn, "A", A, min_ndim=2, expected="(..., N, N)", target=t)
    if A.shape[-1] != A.shape[-2]:
        raise shape_error(fn, "A", A.shape, "(..., N, N) (square in the last two axes)")
    N = A.shape[-1]
    B = as_float_array(fn, "B", B, min_ndim=2, expected=f"(..., {N}, M)", target=t)
    if B.shape[-2] != N:
        raise shape_error(fn, "B", B.shape, f"(..., {N}, M) (N = {N} from A)")
    M = B.shape[-1]
    C = as_float_array(fn, "C", C, min_ndim=2, expected=f"(..., P, {N})", target=t)
    if C.shape[-1] != N:
        raise shape_error(fn, "C", C.shape, f"(..., P, {N}) (N = {N} from A)")
    P = C.shape[-2]
    if D is not None:
        D = as_float_array(fn, "D", D, min_ndim=2, expected=f"(..., {P}, {M})", target=t)
        if tuple(D.shape[-2:]) != (P, M):
            raise shape_error(fn, "D", D.shape, f"(..., {P}, {M}) (P = {P} from C, M = {M} from B)")
    u = as_float_array(fn, "u", u, min_ndim=2, expected=f"(..., {M}, L)", target=t)
    if u.shape[-2] != M:
        raise shape_error(fn, "u", u.shape, f"(..., {M}, L) (M = {M} from B; time is the last axis)")
    L = u.shape[-1]
    if x0 is not None:
        x0 = as_float_array(fn, "x0", x0, min_ndim=1, expected=f"(..., {N})", target=t)
        if x0.shape[-1] != N:
            raise shape_error(fn, "x0", x0.shape, f"(..., {N}) (N = {N} from A)")

    given = (A, B, C, D, u, x0)
    core_ndim = (2, 2, 2, 2, 2, 1)
    leads = [None if a is None else tuple(a.shape[: a.ndim - k]) for a, k in zip(given, core_ndim)]
    try:
        batch_shape = _xp.broadcast_shapes(*(s for s in leads if s is not None))
    except ValueError:
        got = ", ".join(f"{n} {s}" for n, s in zip(_OPERAND_NAMES, leads) if s is not None)
        raise ValueError(f"{fn}: the leading (batch) axes do not broadcast: {got}") from None
    dtype = xp.result_type(*(a.dtype for a in given if a is not None))
    batch = _xp.prod(batch_shape)

    def flat(a: Any, lead: tuple[int, ...] | None, core: tuple[int, ...]) -> tuple[Any, np.ndarray]:
        if a is None:  # D or x0 left out: one shared zero operand
            return xp.zeros((1,) + core, dtype=dtype, device=t.device), np.zeros(batch, dtype=np.int64)
        count = _xp.prod(lead)
        # the index map depends on shapes only: built on the host, sent to the device once
        index = np.arange(count, dtype=np.int64)
        if lead != batch_shape:
            index = np.broadcast_to(index.reshape(lead), batch_shape).ravel()
        return xp.astype(_reshape(xp, a, (count,) + core), dtype, copy=False), index

    cores = ((N, N), (N, M), (P, N), (P, M), (M, L), (N,))
    flats = [flat(a, s, core) for a, s, core in zip(given, leads, cores)]
    idx_host = np.ascontiguousarray(np.stack([i for _, i in flats], axis=1))
    idx = idx_host if t.kind == "numpy" else t.asarray(idx_host)
    inputs = tuple(None if a is None else (tuple(a.shape), a.dtype) for a in given)
    return _Operands(*(f for f, _ in flats), idx, idx_host, tuple(batch_shape), N, M, P, L, dtype, inputs, t)


def _all_finite(t: Target, y: Any) -> bool:
    """Whether every element of ``y`` is finite (one reduction; a host read of one bool).

    The convolution modes use it to fall back to the recurrence: an FFT spreads
    one inf or NaN over the whole sequence (and ``inf - inf`` turns infinities
    into NaN), so where their result is not finite it is not the recurrence's.
    A finite input history gives a finite FFT result, so the check costs one
    pass over y on clean data and never reruns it.
    """
    if t.kind == "numpy":
        return bool(np.isfinite(y).all())
    xp = t.xp
    return bool(xp.all(xp.isfinite(y)))


def _take(t: Target, x: Any, index: np.ndarray) -> Any:
    """Rows ``x[index]`` for a host index array (sent to the device for other namespaces)."""
    return t.xp.take(x, index if t.kind == "numpy" else t.asarray(index), axis=0)


# ---------------------------------------------------------------------------------
# Evaluation modes: each one entry in LTI_MODES
# ---------------------------------------------------------------------------------


@dataclass
class _Run:
    """What a mode returns: outputs plus checkpoints for the backward.

    ``ck`` (batch, ceil(L / K), N) holds the state entering every K-th step
    (``x_{cK-1}``), or is None when the mode kept none (the backward then
    recomputes them with the recurrent kernel). The kernels choose ``K``.
    """

    y: Any  # (batch, P, L)
    x_final: Any  # (batch, N)
    ck: Any | None
    K: int | None


def _run_recurrent(k: Any, ops: _Operands, keep_checkpoints: bool) -> _Run:
    """Sequential time loop, parallel over the batch."""
    return _Run(*k.simulate_recurrent(ops.A, ops.B, ops.C, ops.D, ops.u, ops.x0, ops.idx,
                                      keep_checkpoints=keep_checkpoints))


def _run_scan(k: Any, ops: _Operands, keep_checkpoints: bool) -> _Run:
    """Chunked parallel scan over time (pays off when the batch does not fill the device)."""
    return _Run(*k.simulate_scan(ops.A, ops.B, ops.C, ops.D, ops.u, ops.x0, ops.idx,
                                 keep_checkpoints=keep_checkpoints))


def _causal_conv(xp: ModuleType, u: Any, K: Any, backend: str) -> Any:
    """fft_conv for real or complex u (..., H, L) and K (H, L) / (C_out, H, L).

    fft_conv is real-only; a complex product is split into real convolutions
    (Re = ur*Kr - ui*Ki, Im = ur*Ki + ui*Kr), skipping the parts that are zero.
    """
    from ._convolution import fft_conv

    u_c, k_c = _is_complex(xp, u.dtype), _is_complex(xp, K.dtype)
    if not (u_c or k_c):
        return fft_conv(u, K, backend=backend)
    ur, ui = (xp.real(u), xp.imag(u)) if u_c else (u, None)
    kr, ki = (xp.real(K), xp.imag(K)) if k_c else (K, None)
    re = fft_conv(ur, kr, backend=backend)
    im = None
    if ki is not None:
        im = fft_conv(ur, ki, backend=backend)
    if ui is not None:
        part = fft_conv(ui, kr, backend=backend)
        im = part if im is None else im + part
        if ki is not None:
            re = re - fft_conv(ui, ki, backend=backend)
    cdt = xp.complex64 if re.dtype == xp.float32 else xp.complex128
    return xp.astype(re, cdt) + xp.astype(im, cdt) * 1j


def _run_convolution(k: Any, ops: _Operands, keep_checkpoints: bool) -> _Run:
    """FFT convolution with the impulse response K_l = C A^l B (plus D u and the x0 term).

    Kernels come from :func:`ssmcore.ssm_kernel_dense`, one (P, M, L)
    block per distinct (A, B, C) triple; the x0 term C A^{t+1} x0 is the kernel of
    the system with B replaced by A x0. The final state needs the recurrence (the
    readout-free recurrent kernel, O(N^2 L)), so it is only run when requested.
    No checkpoints: the backward recomputes them (``ck=None``).
    """
    from ._convolution import ssm_kernel_dense

    t = ops.target
    xp = t.xp
    nb, N, M, P, L = ops.batch, ops.N, ops.M, ops.P, ops.L
    col = ops.idx_host
    if L == 0:
        return _Run(xp.zeros((nb, P, 0), dtype=ops.dtype, device=t.device), _take(t, ops.x0, col[:, 5]), None, None)
    # distinct (A, B, C) triples: grouping by the shape-only index map, on the host
    groups, inverse = np.unique(col[:, :3], axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    # (G, P, M, L): A (G, 1, 1, N, N), B^T rows (G, 1, M, N), C rows (G, P, 1, N)
    Kall = ssm_kernel_dense(
        _take(t, ops.A, groups[:, 0])[:, None, None, ...],
        xp.matrix_transpose(_take(t, ops.B, groups[:, 1]))[:, None, ...],
        _take(t, ops.C, groups[:, 2])[:, :, None, ...],
        L,
        backend=ops.backend,
    )
    parts, order = [], []
    for g in range(groups.shape[0]):
        members = np.flatnonzero(inverse == g)
        u_g = _take(t, ops.u, col[members, 4])  # (n_g, M, L)
        conv = _causal_conv(xp, u_g, Kall[g, ...], ops.backend)  # (n_g, P*M, L), channel p*M + m
        parts.append(xp.sum(xp.reshape(conv, (members.size, P, M, L)), axis=2))
        order.append(members)
    if len(parts) == 1:  # one system: members are 0 .. batch-1 in order
        y = parts[0]
    else:  # back to batch order
        y = _take(t, xp.concat(parts, axis=0), np.argsort(np.concatenate(order), kind="stable"))
    y = y + xp.matmul(_take(t, ops.D, col[:, 3]), _take(t, ops.u, col[:, 4]))
    if ops.inputs[5] is not None:  # x0 term: y_t += C A^{t+1} x0
        A_b = _take(t, ops.A, col[:, 0])
        ax0 = xp.matmul(A_b, _take(t, ops.x0, col[:, 5])[..., None])[..., 0]
        y = y + ssm_kernel_dense(A_b[:, None, ...], ax0[:, None, ...], _take(t, ops.C, col[:, 2]), L,
                                 backend=ops.backend)
    if not _all_finite(t, y):  # inf/NaN: the recurrence's pattern, not the FFT's (see _all_finite)
        return _run_recurrent(k, ops, keep_checkpoints)
    if ops.need_final_state:
        # the recurrence without readout (P = 0): O(N^2 L), the recurrent mode's cost
        _, x_final, _, _ = k.simulate_recurrent(ops.A, ops.B, ops.C[:, :0, :], ops.D[:, :0, :], ops.u, ops.x0,
                                                ops.idx)
    else:
        x_final = xp.full((nb, N), math.nan, dtype=ops.dtype, device=t.device)  # never returned
    return _Run(xp.astype(y, ops.dtype, copy=False), x_final, None, None)


#: The evaluation modes of :func:`lti_simulate`, ``name -> runner(kernels, operands,
#: keep_checkpoints) -> _Run``. A new mode is one entry here; it may return
#: ``ck=None`` (as "convolution" does) and the backward recomputes checkpoints with
#: the recurrent kernel.
LTI_MODES: dict[str, Callable[[Any, _Operands, bool], _Run]] = {
    "recurrent": _run_recurrent,
    "scan": _run_scan,
    "convolution": _run_convolution,
}


# ---------------------------------------------------------------------------------
# lti_simulate: forward, backward, public function
# ---------------------------------------------------------------------------------


@dataclass
class _Residuals:
    ops: _Operands
    run: _Run
    return_final_state: bool


def _forward(A, B, C, D, u, x0, mode, return_final_state, backend, keep_checkpoints):
    fn = "lti_simulate"
    t = select(fn, A, B, C, D, u, x0, backend=backend)
    mode = check_choice(fn, "mode", mode, LTI_MODES)
    return_final_state = check_bool(fn, "return_final_state", return_final_state)
    ops = _prepare(fn, t, A, B, C, D, u, x0)
    ops.need_final_state = bool(return_final_state)
    # an empty batch has nothing to chunk or convolve: the recurrent launcher returns the empty outputs
    runner = LTI_MODES[mode] if ops.batch else _run_recurrent
    run = runner(t.kernels("lti"), ops, keep_checkpoints)
    xp = t.xp
    y = _reshape(xp, run.y, ops.batch_shape + (ops.P, ops.L))
    out = (y, _reshape(xp, run.x_final, ops.batch_shape + (ops.N,))) if return_final_state else y
    return out, _Residuals(ops, run, bool(return_final_state))


def _lti_simulate_fwd(A, B, C, D, u, x0=None, *, mode="recurrent", return_final_state=False, backend=None):
    """Forward of op "lti_simulate": output and residuals (operands + state checkpoints)."""
    return _forward(A, B, C, D, u, x0, mode, return_final_state, backend, keep_checkpoints=True)


def _grad_for(xp: ModuleType, g: Any, batch_shape: tuple[int, ...], core: tuple[int, ...], given) -> Any | None:
    """Reduce a per-batch-element gradient to its input's shape and dtype."""
    if given is None:
        return None
    shape, dtype = given
    g = sum_to_shape(_reshape(xp, g, batch_shape + core), shape, xp)
    if not _is_complex(xp, dtype) and _is_complex(xp, g.dtype):
        g = xp.real(g)  # real input of a complex computation: transpose of the real linearisation
    return xp.astype(g, dtype, copy=False)


def _as_cotangent(t: Target, g: Any, shape: tuple[int, ...], dtype: Any, real: bool) -> Any:
    """A cotangent in the compute ``dtype`` and ``shape`` (zeros for None).

    ``real``: the output is real, so it pairs only with the real part of its
    cotangent: Re(sum(g y)) = sum(Re(g) y).
    """
    xp = t.xp
    if g is None:
        return xp.zeros(shape, dtype=dtype, device=t.device)
    g = _reshape(xp, g, shape)
    if real and _is_complex(xp, g.dtype):
        g = xp.real(g)
    return xp.astype(g, dtype, copy=False)


def _lti_simulate_bwd(res: _Residuals, cotangent) -> tuple[Any | None, ...]:
    """Backward of op "lti_simulate": the reverse-time adjoint recurrence."""
    ops, run = res.ops, res.run
    t = ops.target
    xp = t.xp
    gy, g_final = cotangent if res.return_final_state else (cotangent, None)
    nb, N, P, L = ops.batch, ops.N, ops.P, ops.L
    real = not _is_complex(xp, ops.dtype)
    gy, g_final = _as_cotangent(t, gy, (nb, P, L), ops.dtype, real), _as_cotangent(t, g_final, (nb, N), ops.dtype, real)
    k = t.kernels("lti")
    ck, K = run.ck, run.K
    if ck is None:  # the mode kept no states: recompute checkpoints once
        _, _, ck, K = k.simulate_recurrent(ops.A, ops.B, ops.C, ops.D, ops.u, ops.x0, ops.idx, keep_checkpoints=True)
    grads = k.simulate_backward(ops.A, ops.B, ops.C, ops.D, ops.u, ops.idx, K, ck, gy, g_final)
    cores = ((N, N), (N, ops.M), (P, N), (P, ops.M), (ops.M, L), (N,))
    return tuple(_grad_for(xp, g, ops.batch_shape, core, given) for g, core, given in zip(grads, cores, ops.inputs))


# CuPy: every mode runs on CuPy kernels end to end: "recurrent" on backends/cupy/lti.py,
# "scan" on linear_scan's, "convolution" on fft_conv's and ssm_kernel_dense's.
@register_op("lti_simulate", fwd=_lti_simulate_fwd, bwd=_lti_simulate_bwd, inputs=_OPERAND_NAMES,
             backends=("numpy", "numba", "cupy"))
def lti_simulate(
    A: Any,
    B: Any,
    C: Any,
    D: Any,
    u: Any,
    x0: Any = None,
    *,
    mode: str = "recurrent",
    return_final_state: bool = False,
    backend: str | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    r"""Simulate batched discrete LTI systems in the SSM convention (time last).

    .. math::

        x_t = A x_{t-1} + B u_t, \qquad y_t = C x_t + D u_t, \qquad
        x_{-1} = x_0 \ (\text{zeros by default}), \quad t = 0, \dots, L-1.

    The input at step t enters the state *before* the output at step t (S4, S5,
    Mamba, LRU). For scipy's control convention use :func:`dlsim`.

    Parameters
    ----------
    A : array_like, shape (..., N, N)
        State matrices (already discrete, e.g. from ``discretize``).
    B : array_like, shape (..., N, M)
        Input matrices.
    C : array_like, shape (..., P, N)
        Output matrices.
    D : array_like, shape (..., P, M), or None
        Feed-through matrices; None means zero.
    u : array_like, shape (..., M, L)
        Inputs, time on the last axis.
    x0 : array_like, shape (..., N), optional
        The state before the first step, :math:`x_{-1}`; zeros by default.
    mode : {"recurrent", "scan", "convolution"}
        ``"recurrent"``: a sequential time loop, parallel over the batch.
        ``"scan"``: a chunked parallel scan over time -- chunks of the sequence
        run in parallel from a zero state, their end states are combined with the
        associative rule :math:`(A_1, b_1) \circ (A_2, b_2) = (A_2 A_1, A_2 b_1 + b_2)`
        (a chunk of S steps contributes :math:`A^S`), then every chunk reruns from
        its true initial state. About twice the arithmetic, so it only pays off
        when the batch is smaller than the thread count.
        ``"convolution"``: FFT convolution (:func:`ssmcore.fft_conv`)
        with the impulse response :math:`K_l = C A^l B` from
        :func:`ssmcore.ssm_kernel_dense` (one (P, M, L) kernel per
        distinct (A, B, C), O(P M N^2 L) to build), plus :math:`D u` and the x0
        term :math:`C A^{t+1} x_0`; the final state, when requested, costs one
        readout-free recurrence (O(N^2 L)). Complex operands are split into real
        convolutions. Where the result is not finite (an inf or NaN anywhere,
        which an FFT would spread over the whole sequence) the recurrent mode
        computes it instead, so every mode has the recurrence's inf/NaN pattern.
        All modes agree to rounding.
    return_final_state : bool
        Also return :math:`x_{L-1}` (or ``x0`` when L = 0), e.g. to continue a
        simulation in a second call.
    backend : {None, "numba", "numpy", "cupy"}
        Force a backend; None picks the Numba kernels for NumPy inputs and the
        CuPy kernels for CuPy inputs (every mode).

    Returns
    -------
    y : ndarray, shape (..., P, L)
        Outputs. The leading axes are the broadcast of all operands' leading axes
        (one system and many inputs, many systems and one input, or both).
    x_final : ndarray, shape (..., N)
        Only with ``return_final_state=True``.

    Raises
    ------
    ValueError
        If A is not square in its last two axes, B, C, D, u or x0 do not match
        the sizes N, M, P that A, B and C imply, the leading (batch) axes do not
        broadcast, or ``mode`` is not one of the three modes.
    TypeError
        If an operand is None where an array is required, or is an integer,
        boolean or non-numeric NumPy array.
    UnsupportedBackendError
        If ``backend`` (or the inputs' array type) selects a backend without a
        kernel for the chosen mode (a ``NotImplementedError`` and ``TypeError``).

    See Also
    --------
    lti_simulate_diag : The same simulation for diagonal state matrices (S4D, S5).
    dlsim : Drop-in for :func:`scipy.signal.dlsim` (control convention).
    discretize : Continuous (A, B) to the discrete matrices this function takes.

    Notes
    -----
    dtype: the common type of the operands (float32, float64, complex64 or
    complex128); integer arrays are refused. Kernels compute in that dtype.
    Differentiable as op ``"lti_simulate"`` (``ssmcore.vjp``), with inputs
    ``("A", "B", "C", "D", "u", "x0")``. The backward is the reverse-time
    recurrence :math:`\lambda_t = C^T \bar y_t + A^T \lambda_{t+1}`; it recomputes
    states from checkpoints stored every ~sqrt(L) steps instead of keeping all L
    states.

    Examples
    --------
    One 2-state system driven by a unit step, x_t = 0.5 x_{t-1} + u_t:

    >>> import numpy as np
    >>> from ssmcore import lti_simulate
    >>> A = np.array([[0.5, 0.0], [0.0, 0.25]])
    >>> B = np.ones((2, 1)); C = np.array([[1.0, 0.0]])
    >>> lti_simulate(A, B, C, None, np.ones((1, 4)))
    array([[1.   , 1.5  , 1.75 , 1.875]])

    Many inputs (batch of 3) through the same system, continued from the final state:

    >>> u = np.ones((3, 1, 4))
    >>> y1, xf = lti_simulate(A, B, C, None, u, return_final_state=True)
    >>> y1.shape, xf.shape
    ((3, 1, 4), (3, 2))
    >>> y2 = lti_simulate(A, B, C, None, u, x0=xf)
    >>> np.allclose(np.concatenate([y1, y2], -1), lti_simulate(A, B, C, None, np.ones((3, 1, 8))))
    True
    """
    out, _ = _forward(A, B, C, D, u, x0, mode, return_final_state, backend, keep_checkpoints=False)
    return out


# ---------------------------------------------------------------------------------
# lti_simulate_diag: diagonal (S4D / S5 / LRU) systems, same modes
# ---------------------------------------------------------------------------------

DIAG_MODES = ("recurrent", "scan", "convolution")


@dataclass
class _DiagOperands:
    """Diagonal operands broadcast to rows r = (batch element, channel), of the call's namespace."""

    A: Any  # (R, N) compute dtype
    B: Any  # (R, N)
    C: Any  # (R, N)
    D: Any  # (R,) output dtype
    u: Any  # (R, L), real when the output is real
    x0: Any  # (R, N)
    scale: float
    out_dtype: Any
    real_output: bool  # the output dtype is real (proj = Re)
    batch_shape: tuple[int, ...]  # leading axes of the output, without H
    kernel_shape: tuple[int, ...]  # broadcast leading axes of A, B, C only
    H: int
    N: int
    L: int
    inputs: tuple[tuple[tuple[int, ...], Any] | None, ...]
    target: Target
    given_x0: bool

    @property
    def backend(self) -> str:
        return self.target.backend


def _diag_prepare(fn, t, A, B, C, D, u, x0, conj_sym, real_output) -> _DiagOperands:
    xp = t.xp
    A = as_float_array(fn, "A", A, min_ndim=2, expected="(..., H, N)", target=t)
    H, N = A.shape[-2:]
    B = as_float_array(fn, "B", B, min_ndim=2, expected=f"(..., {H}, {N})", target=t)
    C = as_float_array(fn, "C", C, min_ndim=2, expected=f"(..., {H}, {N})", target=t)
    for name, x in (("B", B), ("C", C)):
        if tuple(x.shape[-2:]) != (H, N):
            raise shape_error(fn, name, x.shape, f"(..., {H}, {N}) (H = {H} channels, N = {N} modes from A)")
    if D is not None:
        D = as_float_array(fn, "D", D, min_ndim=1, expected=f"(..., {H})", target=t)
        if D.shape[-1] != H:
            raise shape_error(fn, "D", D.shape, f"(..., {H}) (H = {H} from A)")
    u = as_float_array(fn, "u", u, min_ndim=2, expected=f"(..., {H}, L)", target=t)
    if u.shape[-2] != H:
        raise shape_error(fn, "u", u.shape, f"(..., {H}, L) (H = {H} from A; time is the last axis)")
    L = u.shape[-1]
    if x0 is not None:
        x0 = as_float_array(fn, "x0", x0, min_ndim=2, expected=f"(..., {H}, {N})", target=t)
        if tuple(x0.shape[-2:]) != (H, N):
            raise shape_error(fn, "x0", x0.shape, f"(..., {H}, {N}) (H, N from A)")
    if real_output is None:
        real_output = bool(conj_sym)
    if conj_sym and not real_output:
        raise ValueError(f"{fn}: conj_sym=True means a real output 2 Re(C x); got real_output=False")
    if real_output:
        for name, x in (("u", u), ("D", D)):
            if x is not None and _is_complex(xp, x.dtype):
                raise TypeError(
                    f"{fn}: {name} must be real when the output is real (conj_sym or real_output); "
                    f"got {_xp.dtype_name(x.dtype)}"
                )
    given = (A, B, C, D, u, x0)
    core_ndim = (2, 2, 2, 1, 2, 2)
    leads = [None if a is None else tuple(a.shape[: a.ndim - k]) for a, k in zip(given, core_ndim)]
    try:
        batch_shape = _xp.broadcast_shapes(*(s for s in leads if s is not None))
    except ValueError:
        got = ", ".join(f"{n} {s}" for n, s in zip(_OPERAND_NAMES, leads) if s is not None)
        raise ValueError(f"{fn}: the leading (batch) axes do not broadcast: {got}") from None
    kernel_shape = _xp.broadcast_shapes(*leads[:3])
    dtype = xp.result_type(*(a.dtype for a in given if a is not None))
    out_dtype = _xp.real_dtype(xp, dtype) if real_output else dtype
    R = _xp.prod(batch_shape) * H

    def rows(a, core, dt):
        if a is None:
            return xp.zeros((R,) + core, dtype=dt, device=t.device)
        shape = batch_shape + (H,) + core
        full = a if tuple(a.shape) == shape else xp.broadcast_to(a, shape)
        return xp.astype(_reshape(xp, full, (R,) + core), dt, copy=False)

    return _DiagOperands(
        rows(A, (N,), dtype), rows(B, (N,), dtype), rows(C, (N,), dtype),
        rows(D, (), out_dtype), rows(u, (L,), out_dtype if real_output else u.dtype), rows(x0, (N,), dtype),
        2.0 if conj_sym else 1.0, out_dtype, not _is_complex(xp, out_dtype), tuple(batch_shape),
        tuple(kernel_shape), H, N, L, tuple(None if a is None else (tuple(a.shape), a.dtype) for a in given), t,
        x0 is not None,
    )  # fmt: skip


def _diag_recurrent(k: Any, ops: _DiagOperands) -> tuple[Any, Any]:
    return k.diag_recurrent(ops.A, ops.B, ops.C, ops.D, ops.u, ops.x0, ops.scale, ops.real_output)


# States the scan mode materialises at once: blocks of rows keep its (rows, N, L)
# temporaries near 2^23 elements (128 MiB complex128) whatever the problem size.
_SCAN_BLOCK_ELEMENTS = 1 << 23


def _diag_scan(k: Any, ops: _DiagOperands) -> tuple[Any, Any]:
    """linear_scan on b = B u over (row, mode) pairs, a block of rows at a time."""
    from ._scan import linear_scan

    xp = ops.target.xp
    R, N, L = ops.A.shape[0], ops.N, ops.L
    step = max(1, _SCAN_BLOCK_ELEMENTS // max(1, N * L))
    ys, finals = [], []
    for r0 in range(0, R, step):
        rows = slice(r0, min(r0 + step, R))
        b = ops.B[rows, :, None] * ops.u[rows, None, :]
        x, x_final = linear_scan(ops.A[rows, :, None], b, ops.x0[rows, :], return_final_state=True,
                                 backend=ops.backend)
        z = ops.scale * xp.matmul(ops.C[rows, None, :], x)[:, 0, :]  # sum_n C_n x_n, no conjugation
        if ops.real_output and _is_complex(xp, z.dtype):
            z = xp.real(z)
        ys.append(xp.astype(z + ops.D[rows, None] * ops.u[rows, :], ops.out_dtype, copy=False))
        finals.append(x_final)
    if len(ys) == 1:
        return ys[0], finals[0]
    return xp.concat(ys, axis=0), xp.concat(finals, axis=0)


def _diag_convolution(k: Any, ops: _DiagOperands, need_final_state: bool) -> tuple[Any, Any]:
    """FFT convolution with K_l = proj(s sum_n C_n B_n A_n^l), kernels per distinct (A, B, C)."""
    t = ops.target
    xp = t.xp
    H, N, L = ops.H, ops.N, ops.L
    R = ops.A.shape[0]
    nk = _xp.prod(ops.kernel_shape)
    nb = R // H if H else 0
    if L == 0 or R == 0:
        return xp.zeros((R, L), dtype=ops.out_dtype, device=t.device), xp.asarray(ops.x0, copy=True)
    # the rows of the first batch element hold the distinct kernels when A, B, C have
    # no batch axes (else one kernel per row)
    rows = H if nk == 1 else R
    W = ops.C[:rows, :] * ops.B[:rows, :]
    Kr = k.diag_kernel(ops.A[:rows, :], W, ops.scale, L, ops.real_output)
    if nk == 1:
        y = _causal_conv(xp, xp.reshape(ops.u, (nb, H, L)), Kr, ops.backend)  # (nb, H, L)
    else:
        y = _causal_conv(xp, xp.reshape(ops.u, (1, R, L)), Kr, ops.backend)
    y = xp.reshape(y, (R, L)) + ops.D[:, None] * ops.u
    if ops.given_x0:  # y_t += proj(s sum_n C_n A_n^{t+1} x0_n)
        y = y + k.diag_kernel(ops.A, ops.C * ops.A * ops.x0, ops.scale, L, ops.real_output)
    if not _all_finite(t, y):  # inf/NaN: the recurrence's pattern, not the FFT's (see _all_finite)
        return _diag_recurrent(k, ops)
    if need_final_state:
        x_final = k.diag_final_state(ops.A, ops.B, ops.u, ops.x0)
    else:
        x_final = xp.full((R, N), math.nan, dtype=ops.A.dtype, device=t.device)  # never returned
    return xp.astype(y, ops.out_dtype, copy=False), x_final


@dataclass
class _DiagResiduals:
    ops: _DiagOperands
    return_final_state: bool


def _diag_forward(A, B, C, D, u, x0, conj_sym, real_output, mode, return_final_state, backend):
    fn = "lti_simulate_diag"
    t = select(fn, A, B, C, D, u, x0, backend=backend)
    mode = check_choice(fn, "mode", mode, DIAG_MODES)
    conj_sym = check_bool(fn, "conj_sym", conj_sym)
    real_output = None if real_output is None else check_bool(fn, "real_output", real_output)
    return_final_state = check_bool(fn, "return_final_state", return_final_state)
    ops = _diag_prepare(fn, t, A, B, C, D, u, x0, conj_sym, real_output)
    k = t.kernels("lti")
    if mode == "recurrent" or ops.A.shape[0] == 0:  # no rows: the launcher returns the empty outputs
        y, x_final = _diag_recurrent(k, ops)
    elif mode == "scan":
        y, x_final = _diag_scan(k, ops)
    else:
        y, x_final = _diag_convolution(k, ops, bool(return_final_state))
    xp = t.xp
    y = _reshape(xp, y, ops.batch_shape + (ops.H, ops.L))
    out = (y, _reshape(xp, x_final, ops.batch_shape + (ops.H, ops.N))) if return_final_state else y
    return out, _DiagResiduals(ops, bool(return_final_state))


def _lti_simulate_diag_fwd(A, B, C, D, u, x0=None, *, conj_sym=False, real_output=None, mode="recurrent",
                           return_final_state=False, backend=None):
    """Forward of op "lti_simulate_diag": output and residuals (the operands)."""
    return _diag_forward(A, B, C, D, u, x0, conj_sym, real_output, mode, return_final_state, backend)


def _lti_simulate_diag_bwd(res: _DiagResiduals, cotangent) -> tuple[Any | None, ...]:
    """Backward of op "lti_simulate_diag": one reverse diagonal recurrence (any mode)."""
    ops = res.ops
    t = ops.target
    xp = t.xp
    gy, g_final = cotangent if res.return_final_state else (cotangent, None)
    R, N, L, H = ops.A.shape[0], ops.N, ops.L, ops.H
    ct = ops.A.dtype  # compute dtype
    gy = _as_cotangent(t, gy, (R, L), ct, ops.real_output)
    g_final = _as_cotangent(t, g_final, (R, N), ct, not _is_complex(xp, ct))
    u = xp.astype(ops.u, ct, copy=False)
    D = xp.astype(ops.D, ct, copy=False)
    grads = t.kernels("lti").diag_backward(ops.A, ops.B, ops.C, D, u, ops.x0, ops.scale, gy, g_final)
    lead = ops.batch_shape + (H,)
    cores = ((N,), (N,), (N,), (), (L,), (N,))
    return tuple(_grad_for(xp, g, lead, core, given) for g, core, given in zip(grads, cores, ops.inputs))


# CuPy: every mode runs on CuPy kernels end to end: "recurrent" on backends/cupy/lti.py,
# "scan" on linear_scan's, "convolution" on fft_conv's and ssm_kernel_dense's.
@register_op("lti_simulate_diag", fwd=_lti_simulate_diag_fwd, bwd=_lti_simulate_diag_bwd, inputs=_OPERAND_NAMES,
             backends=("numpy", "numba", "cupy"))
def lti_simulate_diag(
    A: Any,
    B: Any,
    C: Any,
    D: Any,
    u: Any,
    x0: Any = None,
    *,
    conj_sym: bool = False,
    real_output: bool | None = None,
    mode: str = "recurrent",
    return_final_state: bool = False,
    backend: str | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    r"""Simulate batched *diagonal* discrete SSMs (S4D, S5, LRU), one input per channel.

    For every channel h and mode n (elementwise in n; time last):

    .. math::

        x_t[h, n] = A[h, n]\, x_{t-1}[h, n] + B[h, n]\, u_t[h], \qquad x_{-1} = x_0
        \ (\text{zeros by default}),

        y_t[h] = \mathrm{proj}\Big(s \sum_n C[h, n]\, x_t[h, n]\Big) + D[h]\, u_t[h],

    with :math:`s = 2` if ``conj_sym`` else 1, and proj = Re when the output is
    real, the identity otherwise. The output is real when ``real_output`` is True;
    ``real_output=None`` (default) means "real iff ``conj_sym``".

    * S4D / S5 (each stored mode stands for a conjugate pair): ``conj_sym=True``
      gives :math:`2\,\mathrm{Re}(\cdot)`.
    * LRU (:math:`\mathrm{Re}(C x)`): ``conj_sym=False, real_output=True``.
    * A complex output (no real part): ``conj_sym=False`` (the default).

    A and B are the *discrete* parameters (e.g. from ``discretize_diag``).

    Parameters
    ----------
    A : array_like, shape (..., H, N)
        Diagonal state matrices, real or complex.
    B : array_like, shape (..., H, N)
        Input vectors (one input per channel).
    C : array_like, shape (..., H, N)
        Output vectors, one output per channel: for S4's C_out > 1 call once per
        output or use the dense ``lti_simulate``.
    D : array_like, shape (..., H), or None
        Skip weights; None means zero.
    u : array_like, shape (..., H, L)
        Inputs, time last. Must be real (as must D) when the output is real.
    x0 : array_like, shape (..., H, N), optional
        State before the first step.
    conj_sym : bool
        Factor 2 in front of the real part (conjugate-pair modes).
    real_output : bool or None
        Take the real part of the readout; None means ``conj_sym``.
    mode : {"recurrent", "scan", "convolution"}
        ``"recurrent"``: one fused Numba loop per (batch, channel) row, parallel
        over rows; the N states stay in a small buffer and only y is written
        (memory O(batch H L)).
        ``"scan"``: :func:`ssmcore.linear_scan` on :math:`b = B u`; it
        materialises the (rows, N, L) states for blocks of (batch, channel) rows
        (~2^23 states at a time), so it does N times the memory traffic of the
        recurrent mode.
        ``"convolution"``: kernels :math:`K_l = \mathrm{proj}(s \sum_n C_n B_n A_n^l)`
        by running products (O(H (N + L)) memory, one kernel per distinct (A, B, C),
        not per batch element when A, B, C have no batch axes), then
        :func:`ssmcore.fft_conv`; x0 adds the kernel of
        :math:`C A x_0`; the final state, when requested, costs one more readout-free
        recurrence (O(N L) per row).
        All three agree to rounding.
    return_final_state : bool
        Also return :math:`x_{L-1}` (shape (..., H, N), compute dtype; ``x0`` when L = 0).
    backend : {None, "numba", "numpy", "cupy"}
        Force a backend; None picks the Numba kernels for NumPy inputs and the
        CuPy kernels for CuPy inputs (every mode).

    Returns
    -------
    y : ndarray, shape (..., H, L)
        The leading axes broadcast over all operands. dtype: the common dtype of
        the operands, or its real counterpart when the output is real.
    x_final : ndarray, shape (..., H, N)
        Only with ``return_final_state=True``.

    Raises
    ------
    ValueError
        If A, B, C, D, u or x0 do not have the shapes that A's (H, N) imply, the
        leading (batch) axes do not broadcast, ``mode`` is unknown, or
        ``conj_sym=True`` is combined with ``real_output=False``.
    TypeError
        If u or D is complex while the output is real, or an operand is an
        integer, boolean or non-numeric NumPy array.
    UnsupportedBackendError
        If ``backend`` (or the inputs' array type) selects a backend without a
        kernel for the chosen mode (a ``NotImplementedError`` and ``TypeError``).

    See Also
    --------
    lti_simulate : Dense state matrices, several inputs and outputs.
    linear_scan : The diagonal recurrence on its own, for precomputed inputs.
    ssm_kernel_diag : The convolution kernel of the same diagonal system.
    discretize_diag : Continuous diagonal (A, B) to the discrete ones used here.

    Notes
    -----
    Differentiable as op ``"lti_simulate_diag"`` with inputs
    ``("A", "B", "C", "D", "u", "x0")``; the pullback is mode-independent: the
    reverse diagonal recurrence :math:`\lambda_t = s\,\bar y_t C + A \lambda_{t+1}`
    (no conjugation, JAX's convention), recomputing states from checkpoints every
    ~sqrt(L) steps. Convolution mode uses running products :math:`A^l`; their
    rounding error grows like :math:`l \epsilon`, ~1e-12 relative at L = 16k in
    float64 (float32 kernels: prefer ``ssm_kernel_diag``'s re-anchored powers).

    Examples
    --------
    An S4D-style layer (2 channels, 1 conjugate pair each), three ways:

    >>> import numpy as np
    >>> from ssmcore import lti_simulate_diag
    >>> A = np.array([[0.9 + 0.1j], [0.5 - 0.3j]]); B = np.ones((2, 1)); C = np.array([[1.0], [0.5j]])
    >>> u = np.ones((2, 4))
    >>> y = lti_simulate_diag(A, B, C, None, u, conj_sym=True)
    >>> y.dtype, y.shape
    (dtype('float64'), (2, 4))
    >>> all(np.allclose(y, lti_simulate_diag(A, B, C, None, u, conj_sym=True, mode=m))
    ...     for m in ("scan", "convolution"))
    True
    >>> x = 0; ref = []
    >>> for t in range(4):
    ...     x = A[0, 0] * x + 1.0; ref.append(2 * (C[0, 0] * x).real)
    >>> np.allclose(y[0], ref)
    True
    """
    out, _ = _diag_forward(A, B, C, D, u, x0, conj_sym, real_output, mode, return_final_state, backend)
    return out


# ---------------------------------------------------------------------------------
# dlsim: scipy.signal.dlsim drop-in on the same core
# ---------------------------------------------------------------------------------


class ContinuousSystemError(AttributeError, TypeError):
    """A continuous-time system where a discrete-time one is needed.

    An ``AttributeError`` as scipy's ``dlsim`` raises for an ``lti`` (code that
    catches scipy's exception keeps working) and a ``TypeError`` (what it is).
    """


def _continuous(fn: str, what: str) -> ContinuousSystemError:
    return ContinuousSystemError(
        f"{fn}: system is a continuous-time {what}; dlsim needs a discrete-time system "
        "(a dlti, a state-space object with dt > 0, or a tuple ending in dt)"
    )


def _ss_from_tuple(fn: str, tg: Target, system: Any) -> tuple[Any, Any, Any, Any, Any, bool]:
    """(A, B, C, D, dt, is_state_space) from a tuple, a scipy dlti or a state-space object.

    Only ``(A, B, C, D, dt)`` tuples are read in the call's namespace; scipy's
    objects and conversions are NumPy (``dlsim`` refuses them for other arrays).
    Any other object with ``.A .B .C .D`` and ``.dt`` (python-control's
    ``StateSpace``, ...) is read as a state-space system; python-control's
    ``dt=True`` (discrete, unspecified step) means 1, as scipy's ``dlti`` default.
    """
    signal = sys.modules.get("scipy.signal")  # an lti/dlti object implies scipy.signal is loaded
    if signal is not None and isinstance(system, signal.lti):
        raise _continuous(fn, "lti")
    if signal is not None and isinstance(system, signal.dlti):
        is_ss = isinstance(system, signal.StateSpace)
        ss = system if is_ss else system.to_ss()
        return ss.A, ss.B, ss.C, ss.D, system.dt, is_ss
    if not isinstance(system, (tuple, list)) and all(hasattr(system, k) for k in "ABCD"):
        kind = type(system).__name__
        if not hasattr(system, "dt"):
            raise TypeError(f"{fn}: system ({kind}) has A, B, C, D but no dt; pass (A, B, C, D, dt)")
        dt = system.dt
        if dt is None:
            raise ValueError(f"{fn}: system ({kind}) has dt=None (no timebase); pass (A, B, C, D, dt)")
        if dt is True:
            dt = 1.0
        elif isinstance(dt, (bool, np.bool_)) or not isinstance(dt, (int, float, np.integer, np.floating)):
            raise TypeError(f"{fn}: system ({kind}) has dt={dt!r}; expected a positive number or True")
        elif dt == 0:
            raise _continuous(fn, f"{kind} (dt=0)")
        elif not dt > 0:
            raise ValueError(f"{fn}: system ({kind}) has dt={dt!r}; expected a positive number or True")
        return (*_abcd_normalize(fn, tg, system.A, system.B, system.C, system.D), float(dt), True)
    if not isinstance(system, (tuple, list)) or len(system) not in (3, 4, 5):
        raise TypeError(
            f"{fn}: system must be a dlti, a state-space object with A, B, C, D, dt, or a tuple "
            f"(num, den, dt), (zeros, poles, gain, dt) or (A, B, C, D, dt); got {type(system).__name__}"
            + (f" of length {len(system)}" if isinstance(system, (tuple, list)) else "")
        )
    *parts, dt = system
    if len(parts) == 4:
        return (*_abcd_normalize(fn, tg, *parts), dt, True)
    from scipy import signal  # transfer functions and zpk: converted exactly as scipy does

    try:
        ss = signal.dlti(*parts, dt=dt).to_ss()
    except (ValueError, TypeError, IndexError) as e:
        form = "a transfer function (num, den, dt)" if len(parts) == 2 else "zeros, poles and gain (z, p, k, dt)"
        raise ValueError(
            f"{fn}: system, a tuple of length {len(system)}, is read as {form} and scipy could not "
            f"convert it ({e}); a state-space system is the tuple (A, B, C, D, dt) of length 5"
        ) from e
    return ss.A, ss.B, ss.C, ss.D, dt, False


def _abcd_normalize(fn: str, tg: Target, A: Any, B: Any, C: Any, D: Any) -> tuple[Any, ...]:
    """Scipy's state-space shape rules without importing scipy.

    Each matrix is made 2-D by prepending axes (so a 1-D B is one *row*); a missing
    or empty matrix becomes zeros of the size the others imply.
    """
    xp = tg.xp

    def zeros(shape):
        return xp.zeros(shape, dtype=xp.float64, device=tg.device)

    mats = []
    for name, m in zip("ABCD", (A, B, C, D)):
        if m is None:
            mats.append(zeros((0, 0)))
            continue
        m = as_float_array(fn, name, m, integer_ok=True, target=tg)
        mats.append(xp.reshape(m, (1,) * (2 - m.ndim) + tuple(m.shape)) if m.ndim < 2 else m)  # atleast_2d
    A, B, C, D = mats
    n = A.shape[0] or B.shape[0] or C.shape[1] or 0
    m = B.shape[1] or D.shape[1] or 0
    p = C.shape[0] or D.shape[0] or 0
    expected = {"A": (n, n), "B": (n, m), "C": (p, n), "D": (p, m)}
    out = []
    for name, mat in zip("ABCD", (A, B, C, D)):
        if _xp.prod(mat.shape) == 0:
            mat = zeros(expected[name])
        if mat.ndim != 2 or tuple(mat.shape) != expected[name]:
            raise shape_error(fn, name, mat.shape, f"{expected[name]} (n = {n} states, {m} inputs, {p} outputs)")
        out.append(mat)
    return tuple(out)


def _interp_linear(t: np.ndarray, u: np.ndarray, tout: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation of u (L, m) from t onto tout.

    The end segments extrapolate linearly (what scipy's ``make_interp_spline(t, u, k=1)`` does).
    """
    j = np.clip(np.searchsorted(t, tout, side="right") - 1, 0, len(t) - 2)
    w = ((tout - t[j]) / (t[j + 1] - t[j]))[:, None]
    return u[j] * (1.0 - w) + u[j + 1] * w


def dlsim(system: Any, u: Any, t: Any = None, x0: Any = None) -> tuple[np.ndarray, ...]:
    r"""Simulate a discrete-time system; a drop-in for :func:`scipy.signal.dlsim`.

    Control convention (scipy's), with :math:`x_0` = ``x0`` (zeros by default):

    .. math::

        x_{k+1} = A x_k + B u_k, \qquad y_k = C x_k + D u_k, \qquad k = 0, \dots, L-1,

    so ``y[0]`` sees ``u[0]`` only through D. Internally this is the SSM-convention
    core of :func:`lti_simulate`: its state after step k is :math:`x_{k+1}`, so the
    trajectory is read off its per-step checkpoints and :math:`y = C x + D u` is
    one more loop over them (no inverse of A needed).

    Parameters
    ----------
    system : tuple, scipy.signal.dlti or state-space object
        ``(A, B, C, D, dt)``, ``(num, den, dt)``, ``(zeros, poles, gain, dt)``, a
        ``dlti`` instance, or an object with ``.A .B .C .D .dt`` (python-control).
        Transfer functions and zpk are converted with scipy's ``tf2ss`` / ``zpk2ss``
        (scipy is imported only for them).
    u : array_like, shape (L,) or (L, m)
        Input per time step (rows are time); 1-D means a single input.
    t : array_like, shape (L,), optional
        Times at which ``u`` is given (strictly increasing). Then the output has
        ``floor(t[-1] / dt) + 1`` samples at ``linspace(0, t[-1], ...)`` and ``u``
        is linearly interpolated onto them, as scipy does.
    x0 : array_like, shape (n,), optional
        Initial state :math:`x_0`.

    Returns
    -------
    tout : ndarray, shape (L,)
        Output times.
    yout : ndarray, shape (L, p)
        Outputs; 2-D even for one output, like scipy.
    xout : ndarray, shape (L, n)
        States :math:`x_0 .. x_{L-1}`; only for state-space systems, like scipy.

    Raises
    ------
    TypeError
        If ``system`` is a continuous-time ``lti``, not a ``dlti`` or a tuple of
        3 to 5 entries, or an array is non-numeric; also (as
        ``UnsupportedBackendError``) for transfer-function, zpk or ``t=`` input
        given as non-NumPy arrays.
    ValueError
        If A, B, C, D, u, x0 or t have shapes that do not fit the system's
        (n, m, p), ``t`` is not strictly increasing with at least two points, or
        ``t[-1]`` gives no output samples.

    See Also
    --------
    lti_simulate : SSM-convention simulation of batches of systems.
    scipy.signal.dlsim : The SciPy function this one reproduces.

    Notes
    -----
    Differences from scipy, all deliberate:

    * **Complex systems stay complex.** scipy writes into float64 arrays and drops
      imaginary parts with a ``ComplexWarning``; here ``yout``/``xout`` are
      complex128 when any of A, B, C, D, u, x0 is complex. Real systems give
      float64 results, identical to scipy's up to rounding (~1e-15).
    * Always float64/complex128, like scipy: float32 inputs are promoted.
    * L = 0 returns empty arrays (scipy raises IndexError); ``t`` with fewer than
      two points raises ValueError (scipy returns NaNs); NaN in ``u`` propagates
      instead of raising when ``t`` is given.
    * Errors are ``TypeError``/``ValueError`` naming the argument; a
      continuous-time system raises :class:`ContinuousSystemError`, both an
      ``AttributeError`` (what scipy raises) and a ``TypeError``.
    * Also accepted: any object with ``.A .B .C .D`` and ``.dt`` (python-control's
      ``StateSpace``; ``dt=True`` means 1, ``dt=0`` is continuous-time).

    Examples
    --------
    The integrator y[k] = sum_{j<k} u[j] from scipy's own example:

    >>> import numpy as np
    >>> from ssmcore import dlsim
    >>> tout, y = dlsim(([1.0], [1.0, -1.0], 1.0), [0.0, 0.0, 1.0, 1.0], t=[0.0, 1.0, 2.0, 3.0])
    >>> y.T
    array([[0., 0., 0., 1.]])

    A state-space system with an initial state:

    >>> A = [[0.5]]; B = [[1.0]]; C = [[1.0]]; D = [[0.0]]
    >>> tout, y, x = dlsim((A, B, C, D, 1.0), [1.0, 2.0, 3.0, 4.0], x0=[3.0])
    >>> y[:, 0]
    array([3.   , 2.5  , 3.25 , 4.625])
    """
    fn = "dlsim"
    # Device-neutral where it is cheap: a state-space tuple (A, B, C, D, dt) with
    # u sampled at dt runs the same LTI kernels as lti_simulate on any namespace.
    # scipy's transfer-function/zpk conversions and dlti objects are NumPy by
    # nature, and t= interpolates onto floor(t[-1] / dt) + 1 samples -- an output
    # length read from the data (a device-to-host copy and sync on a GPU) -- so
    # those stay NumPy-only and other arrays get the uniform error.
    parts = tuple(system) if isinstance(system, (tuple, list)) else ()
    tg = select(fn, *parts, u, t, x0)
    if tg.kind != "numpy":
        what = None
        if len(parts) != 5:
            what = "a transfer-function, zpk or dlti system"
        elif t is not None:
            what = "t= (interpolating u onto a time grid whose length depends on t's values)"
        if what is not None:
            raise UnsupportedBackendError(
                f"{fn}: {what} runs on NumPy arrays only; pass NumPy arrays, or a state-space tuple "
                f"(A, B, C, D, dt) with u sampled at dt"
            )
    xp = tg.xp
    A, B, C, D, dt, is_ss = _ss_from_tuple(fn, tg, system)
    n, m, p = A.shape[0], B.shape[1], C.shape[0]
    u = as_float_array(fn, "u", u, integer_ok=True, target=tg)
    given_shape = u.shape
    u = xp.reshape(u, (-1, 1)) if u.ndim < 2 else u  # 1-D u is one input column, like scipy
    if u.ndim != 2 or u.shape[1] != m:
        expected = f"(L, {m}) (one column per input; B has {m})" + (" or (L,)" if m == 1 else "")
        raise shape_error(fn, "u", given_shape, expected)
    if x0 is not None:
        x0 = as_float_array(fn, "x0", x0, integer_ok=True, target=tg)
        try:
            fits = _xp.broadcast_shapes(x0.shape, (n,)) == (n,)
        except ValueError:
            fits = False
        if not fits:
            raise shape_error(fn, "x0", x0.shape, f"({n},) (one value per state)")
        x0 = xp.broadcast_to(x0, (n,))

    if t is None:
        out_samples = u.shape[0]
        stoptime = (out_samples - 1) * dt
        u_dt = u
    else:  # NumPy only (checked above)
        t = as_float_array(fn, "t", t, complex_ok=False, integer_ok=True)
        if t.ndim != 1 or t.shape[0] != u.shape[0]:
            raise shape_error(fn, "t", t.shape, f"({u.shape[0]},) (one time per row of u)")
        if t.shape[0] < 2 or not np.all(np.diff(t) > 0):
            raise ValueError(
                f"{fn}: t must be strictly increasing with at least 2 points to interpolate u; "
                f"got {t.shape[0]} point(s)"
            )
        stoptime = t[-1]
        out_samples = int(np.floor(stoptime / dt)) + 1
        if out_samples < 1:
            raise ValueError(f"{fn}: t[-1] = {stoptime!r} gives no output samples with dt = {dt!r}; expected >= 0")
    if tg.kind == "numpy":
        tout = np.linspace(0.0, stoptime, num=out_samples)
    else:
        tout = xp.linspace(0.0, float(stoptime), out_samples, dtype=xp.float64, device=tg.device)
    if t is not None:
        u_dt = _interp_linear(t, u, tout)

    dts = [a.dtype for a in (A, B, C, D, u_dt)] + ([] if x0 is None else [x0.dtype])
    dtype = xp.result_type(*dts, xp.float64)
    if out_samples == 0:
        empty = tuple(xp.zeros(shape, dtype=dtype, device=tg.device) for shape in ((0, p), (0, n)))
        return (tout, *empty) if is_ss else (tout, empty[0])
    # SSM core on one batch element with no readout (P = 0): its checkpoints at
    # interval 1 are exactly x_0 .. x_{L-1} (the state entering each step).
    ops = _prepare(
        fn,
        tg,
        xp.astype(A, dtype, copy=False),
        xp.astype(B, dtype, copy=False),
        xp.zeros((0, n), dtype=dtype, device=tg.device),
        None,
        xp.astype(xp.matrix_transpose(u_dt), dtype, copy=False),
        None if x0 is None else xp.astype(x0, dtype, copy=False),
    )
    k = tg.kernels("lti")
    _, _, xout, _ = k.simulate_recurrent(ops.A, ops.B, ops.C, ops.D, ops.u, ops.x0, ops.idx,
                                         keep_checkpoints=True, K=1)
    xout = xout[0, ...]
    C, D, u_dt = (xp.astype(a, dtype, copy=False) for a in (C, D, u_dt))
    yout = k.control_readout(xout, u_dt, C, D)  # y[k] = C x[k] + D u[k]
    return (tout, yout, xout) if is_ss else (tout, yout)
