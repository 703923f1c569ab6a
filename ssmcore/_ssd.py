"""Mamba-2 SSD (state space duality): the chunked scan with a scalar decay per head.

Front door of the op ``"ssd"``: validation, the dt pre-processing (bias,
softplus, clamp), the ``silu(z)`` gate and the hand-written VJP. The recurrence
itself runs in ``ssmcore.backends.numba.ssd`` (chunked, parallel over batch and
heads) or, with ``backend="numpy"``, in the float64 specification
``ssmcore.reference.ssd``.

The glue is device-neutral: :func:`ssmcore.dispatch.select` resolves the backend
and the inputs' array namespace ``xp`` once per call, and everything here
(validation, the dt chain, the gate, the reset flags from ``seq_idx``, the
backward's reductions) is array-API code on ``xp``; the residuals record the
call's ``Target``. The launchers allocate every kernel output and supply the
zeros of absent options. Declared backends: NumPy reference and Numba; CuPy
input gets the dispatcher's uniform "no CuPy kernel yet" error for now.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np

from ._xp import dtype_name
from .dispatch import select
from .registry import register_op
from .validation import as_float_array, check_bool, check_int, shape_error

__all__ = ["ssd"]

_FN = "ssd"
_SOFTPLUS_LINEAR_ABOVE = 20.0  # mamba's softplus is the identity above 20 (torch's default threshold)


def _sigmoid(xp: Any, v: Any) -> Any:
    # tanh form: no overflow warning for large |v|
    return 0.5 * (1.0 + xp.tanh(0.5 * v))


def _np_astype(x: np.ndarray, dtype: Any, copy: bool = False) -> np.ndarray:
    return x.astype(dtype, copy=copy)


def _astype(t: Any) -> Any:
    """The call's ``astype`` (no copy by default).

    The ndarray method for NumPy (array_api_compat's wrapper costs ~0.3 us a call, and this
    glue makes a dozen), ``xp.astype`` for every other namespace.
    """
    if t.kind == "numpy":
        return _np_astype
    xp = t.xp
    return lambda x, dtype, copy=False: xp.astype(x, dtype, copy=copy)


def _check_dt_limit(dt_limit: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError):
        raise TypeError(f"{_FN}: dt_limit must be a pair of floats (min, max); got {dt_limit!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"{_FN}: dt_limit must satisfy min <= max; got {dt_limit!r}")
    return lo, hi


def _seq_array(t: Any, x: Any) -> Any:
    """seq_idx as an integer array of the call's namespace (refusing other dtypes)."""
    xp = t.xp
    if t.kind == "numpy":
        seq = np.asarray(x)
    else:
        seq = x if hasattr(x, "__array_namespace__") else t.asarray(x)
    if not xp.isdtype(seq.dtype, "integral"):
        raise TypeError(f"{_FN}: seq_idx has dtype {dtype_name(seq.dtype)}; expected an integer dtype")
    return seq


def _cu_seqlens_array(t: Any, cu: Any, nb: int, L: int) -> Any:
    """cu_seqlens as an integer array (S + 1,) of the call's namespace; values checked for NumPy input."""
    if t.kind == "numpy":
        cu = np.asarray(cu)
    else:
        cu = cu if hasattr(cu, "__array_namespace__") else t.asarray(cu)
    if not t.xp.isdtype(cu.dtype, "integral"):
        raise TypeError(f"{_FN}: cu_seqlens has dtype {dtype_name(cu.dtype)}; expected an integer dtype")
    if cu.ndim != 1 or cu.shape[0] < 2:
        raise shape_error(_FN, "cu_seqlens", cu.shape, "(num_sequences + 1,) with at least one sequence")
    if nb != 1:
        raise ValueError(f"{_FN}: cu_seqlens needs batch 1 (the sequences packed along L, as in mamba_ssm); "
                         f"x has batch {nb}")
    if t.kind == "numpy":  # on devices the values are the caller's contract (a check would sync)
        if cu[0] < 0 or cu[-1] > L or np.any(np.diff(cu) <= 0):
            raise ValueError(f"{_FN}: cu_seqlens must increase strictly within [0, L={L}] (every sequence "
                             f"non-empty); got {cu.tolist()}")
    return cu


def _prepare(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_states, seq_idx, backend,
             cu_seqlens=None):
    """Validate and normalise every argument once; return what the kernels need."""
    chunk_size = check_int(_FN, "chunk_size", chunk_size, minimum=1)
    dt_softplus = check_bool(_FN, "dt_softplus", dt_softplus)
    lo, hi = _check_dt_limit(dt_limit)
    t = select(_FN, x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, backend=backend)
    xp = t.xp
    x = as_float_array(_FN, "x", x, complex_ok=False, target=t)
    if x.ndim != 4:
        raise shape_error(_FN, "x", x.shape, "(batch, L, heads, headdim) = 4 dimensions")
    nb, L, H, P = x.shape
    dt = as_float_array(_FN, "dt", dt, complex_ok=False, target=t)
    if tuple(dt.shape) != (nb, L, H):
        raise shape_error(_FN, "dt", dt.shape, f"(batch, L, heads) = ({nb}, {L}, {H}) from x")
    A = as_float_array(_FN, "A", A, complex_ok=False, target=t)
    if tuple(A.shape) != (H,):
        raise shape_error(_FN, "A", A.shape, f"(heads,) = ({H},): one real scalar per head")
    B = as_float_array(_FN, "B", B, complex_ok=False, target=t)
    if B.ndim != 4 or tuple(B.shape[:2]) != (nb, L) or B.shape[2] == 0:
        raise shape_error(_FN, "B", B.shape, f"(batch, L, groups >= 1, N) with batch={nb}, L={L} from x")
    G, N = B.shape[2], B.shape[3]
    if H % G:
        raise ValueError(f"{_FN}: B has {G} groups, which does not divide the {H} heads of x; "
                         f"expected heads % groups == 0")
    C = as_float_array(_FN, "C", C, complex_ok=False, target=t)
    if tuple(C.shape) != tuple(B.shape):
        raise shape_error(_FN, "C", C.shape, f"the shape of B, (batch, L, groups, N) = {tuple(B.shape)}")
    if D is not None:
        D = as_float_array(_FN, "D", D, complex_ok=False, target=t)
        if tuple(D.shape) not in ((H,), (H, P)):
            raise shape_error(_FN, "D", D.shape, f"(heads,) = ({H},) or (heads, headdim) = ({H}, {P})")
    if z is not None:
        z = as_float_array(_FN, "z", z, complex_ok=False, target=t)
        if tuple(z.shape) != tuple(x.shape):
            raise shape_error(_FN, "z", z.shape, f"the shape of x, {tuple(x.shape)}")
    if dt_bias is not None:
        dt_bias = as_float_array(_FN, "dt_bias", dt_bias, complex_ok=False, target=t)
        if tuple(dt_bias.shape) != (H,):
            raise shape_error(_FN, "dt_bias", dt_bias.shape, f"(heads,) = ({H},)")
    if initial_states is not None:
        initial_states = as_float_array(_FN, "initial_states", initial_states, complex_ok=False, target=t)
        if tuple(initial_states.shape) != (nb, H, P, N):
            raise shape_error(_FN, "initial_states", initial_states.shape,
                              f"(batch, heads, headdim, N) = ({nb}, {H}, {P}, {N})")
    reset = None  # no resets: the launchers need no (batch, L) array of False
    if seq_idx is not None:
        seq = _seq_array(t, seq_idx)
        if tuple(seq.shape) != (nb, L):
            raise shape_error(_FN, "seq_idx", seq.shape, f"(batch, L) = ({nb}, {L})")
        # the state is replaced wherever the index changes; the initial state belongs to index 0
        first = xp.zeros((nb, 1), dtype=seq.dtype, device=t.device)
        reset = seq != xp.concat([first, seq[:, :-1]], axis=1)
    cu = None if cu_seqlens is None else _cu_seqlens_array(t, cu_seqlens, nb, L)

    # Compute in the data's precision (float32 or float64); parameters follow it.
    dtype = xp.result_type(*(a.dtype for a in (x, dt, B, C, z, initial_states) if a is not None))

    astype = _astype(t)

    def cast(a):  # the kernels' dtype, no copy when it already is; layout is the launcher's job
        return None if a is None else astype(a, dtype)

    raw_dt = cast(dt)
    pre = raw_dt + cast(dt_bias) if dt_bias is not None else raw_dt
    if dt_softplus:
        capped = xp.minimum(pre, _SOFTPLUS_LINEAR_ABOVE)  # exp never overflows
        soft = xp.where(pre > _SOFTPLUS_LINEAR_ABOVE, pre, xp.log1p(xp.exp(capped)))
    else:
        soft = pre
    # clamp as max-then-min (NaN propagates as with clip; array_api_compat's clip is slow)
    dt_eff = xp.minimum(xp.maximum(soft, lo), hi)
    D2 = None  # none given: the launchers use zeros
    if D is not None:
        D2 = cast(xp.broadcast_to(D[:, None], (H, P)) if D.ndim == 1 else D)  # (H,) -> every column
    return SimpleNamespace(
        target=t, chunk_size=chunk_size, lo=lo, hi=hi, softplus=bool(dt_softplus), dtype=dtype,
        x=cast(x), dt=dt_eff, A=cast(A), B=cast(B), C=cast(C), D=D2, h0=cast(initial_states), reset=reset,
        z=cast(z), pre=pre, soft=soft, shape=(nb, H, P, N), cu_seqlens=cu,
        inputs=dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states),
    )


def _varlen_states(r: Any) -> Any:
    """The state at the last step of every packed sequence, (S, H, P, N), from the chunk states.

    For sequence s ending at step e (exclusive), in chunk c = (e - 1) // Q starting at q = c Q:
    h = [no restart in q..e-1] exp(sum_{q..e-1} a) states[c] + sum_{t=r..e-1} exp(sum_{t<i<=e-1} a_i) dt_t x_t B_t^T,
    r the last restart in the chunk up to e - 1 (a seq_idx change, or sequence s's own start
    unless it is step 0), else q. Decays are within-chunk cumulative sums (no long cumsum differences), as in
    mamba_ssm's ``chunk_state_varlen``; all array-API code on the call's namespace.
    """
    xp = r.target.xp
    dev = r.target.device
    nb, L, H, P = r.x.shape
    N = r.B.shape[3]
    G = r.B.shape[2]
    Q = min(r.chunk_size, L)
    cu = xp.astype(r.cu_seqlens, xp.int64)
    S = cu.shape[0] - 1
    starts, last = cu[:-1], cu[1:] - 1
    q0 = (last // r.chunk_size) * r.chunk_size  # (S,) first step of the chunk holding the last step
    k = xp.arange(Q, dtype=xp.int64, device=dev)
    pos = q0[:, None] + k[None, :]  # (S, Q)
    inwin = pos <= last[:, None]
    flat = xp.reshape(xp.minimum(pos, L - 1), (-1,))
    restart = (pos == starts[:, None]) & (starts[:, None] > 0)  # a start at 0 keeps initial_states
    if r.reset is not None:
        restart = restart | xp.reshape(xp.take(r.reset[0, ...], flat, axis=0), (S, Q))
    kr = xp.max(xp.where(restart & inwin, k[None, :], -1), axis=1)  # (S,) -1: no restart in the window
    use = inwin & (k[None, :] >= kr[:, None])
    dtw = xp.reshape(xp.take(r.dt[0, ...], flat, axis=0), (S, Q, H))
    a = xp.where(inwin[:, :, None], dtw * r.A, 0.0)
    acs = xp.cumulative_sum(a, axis=1)
    ke = last - q0
    acs_e = xp.sum(xp.where((k[None, :] == ke[:, None])[:, :, None], acs, 0.0), axis=1)  # (S, H)
    w = xp.where(use[:, :, None], xp.exp(acs_e[:, None, :] - acs) * dtw, 0.0)  # (S, Q, H)
    xw = xp.reshape(xp.take(r.x[0, ...], flat, axis=0), (S, Q, H, P)) * w[..., None]
    Bw = xp.reshape(xp.take(r.B[0, ...], flat, axis=0), (S, Q, G, N))
    if G != H:
        group = xp.arange(H, dtype=xp.int64, device=dev) // (H // G)
        Bw = xp.take(Bw, group, axis=2)
    h = xp.matmul(xp.permute_dims(xw, (0, 2, 3, 1)), xp.permute_dims(Bw, (0, 2, 1, 3)))  # (S, H, P, N)
    chunk = q0 // r.chunk_size
    entering = xp.permute_dims(xp.take(r.states[0, ...], chunk, axis=1), (1, 0, 2, 3))  # (S, H, P, N)
    keep = xp.astype(kr < 0, h.dtype)[:, None]  # the chunk's entering state, unless a restart cut it
    return h + (keep * xp.astype(xp.exp(acs_e), h.dtype))[:, :, None, None] * entering


def _ssd_fwd(x, dt, A, B, C, chunk_size=64, *, D=None, z=None, dt_bias=None, dt_softplus=False,
             dt_limit=(0.0, math.inf), initial_states=None, seq_idx=None, cu_seqlens=None,
             return_final_states=False, return_varlen_states=False, backend=None):
    """Forward of op ``"ssd"``: ``(out, residuals)``."""
    return_final_states = check_bool(_FN, "return_final_states", return_final_states)
    return_varlen_states = check_bool(_FN, "return_varlen_states", return_varlen_states)
    if return_varlen_states and cu_seqlens is None:
        raise ValueError(f"{_FN}: return_varlen_states=True needs cu_seqlens (the sequences' boundaries)")
    if return_varlen_states and seq_idx is None:
        # the chunk states must restart where the sequences do; mamba_ssm silently mixes them without it
        raise ValueError(f"{_FN}: return_varlen_states=True needs seq_idx marking the sequences of cu_seqlens, "
                         "e.g. seq_idx = np.repeat(np.arange(len(cu_seqlens) - 1), np.diff(cu_seqlens))[None]")
    r = _prepare(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_states,
                 seq_idx, backend, cu_seqlens)
    xp = r.target.xp
    k = r.target.kernels("ssd")
    y, states = k.ssd_forward(r.x, r.dt, r.A, r.B, r.C, r.D, r.h0, r.reset, r.chunk_size)
    out = y if r.z is None else y * (r.z * _sigmoid(xp, r.z))
    final = xp.asarray(states[:, :, -1, ...], copy=True)  # a copy: a view would pin every chunk state
    r.y = y
    r.states = states
    r.return_final_states = bool(return_final_states)
    r.return_varlen_states = bool(return_varlen_states)
    res = (out, final) if return_final_states else (out,)
    if return_varlen_states:
        res = (*res, _varlen_states(r) if r.x.shape[1] else xp.zeros(
            (r.cu_seqlens.shape[0] - 1, *r.shape[1:]), dtype=final.dtype, device=r.target.device))
    return (res if len(res) > 1 else res[0]), r


def _ssd_bwd(r, cotangent):
    """Backward of op ``"ssd"``: gradients for (x, dt, A, B, C, D, z, dt_bias, initial_states)."""
    xp = r.target.xp
    parts = cotangent if isinstance(cotangent, tuple) else (cotangent,)
    gout = parts[0]
    gfinal = parts[1] if r.return_final_states else None
    if r.return_varlen_states and bool(xp.any(parts[-1] != 0)):  # one bool read back on devices
        raise NotImplementedError(
            f"{_FN}: no gradient through varlen_states (return_varlen_states=True; mamba_ssm has none "
            "either); use seq_idx with a cotangent on out, or call ssd per sequence for state gradients")
    astype = _astype(r.target)
    gout = astype(gout, r.dtype)
    gfinal = None if gfinal is None else astype(gfinal, r.dtype)  # None: zeros
    gz = None
    if r.z is not None:
        sig = _sigmoid(xp, r.z)
        gy = gout * (r.z * sig)
        gz = gout * r.y * (sig * (1.0 + r.z * (1.0 - sig)))  # d silu(z)/dz
    else:
        gy = gout
    k = r.target.kernels("ssd")
    gx, gdt_eff, gA, gB, gC, gD2, gh0 = k.ssd_backward(
        r.x, r.dt, r.A, r.B, r.C, r.D, r.reset, r.states, gy, gfinal, r.chunk_size)
    # dt chain: clamp passes the gradient only inside [lo, hi]; softplus multiplies by sigmoid
    gpre = xp.where((r.soft >= r.lo) & (r.soft <= r.hi), gdt_eff, 0.0)
    if r.softplus:
        gpre = gpre * xp.where(r.pre > _SOFTPLUS_LINEAR_ABOVE, 1.0, _sigmoid(xp, r.pre))
    inp = r.inputs
    D = inp["D"]
    gD = None if D is None else (xp.sum(gD2, axis=1) if D.ndim == 1 else gD2)
    grads = dict(
        x=gx, dt=gpre, A=gA, B=gB, C=gC, D=gD, z=gz,
        dt_bias=None if inp["dt_bias"] is None else xp.sum(gpre, axis=(0, 1)),
        initial_states=None if inp["initial_states"] is None else gh0,
    )
    return tuple(
        None if inp[name] is None or grads[name] is None else astype(grads[name], inp[name].dtype)
        for name in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
    )


@register_op("ssd", fwd=_ssd_fwd, bwd=_ssd_bwd,
             inputs=("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states"),
             backends=("numpy", "numba", "cupy"))
def ssd(
    x: np.ndarray,
    dt: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    chunk_size: int = 64,
    *,
    D: np.ndarray | None = None,
    z: np.ndarray | None = None,
    dt_bias: np.ndarray | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_states: np.ndarray | None = None,
    seq_idx: np.ndarray | None = None,
    cu_seqlens: np.ndarray | None = None,
    return_final_states: bool = False,
    return_varlen_states: bool = False,
    backend: str | None = None,
) -> np.ndarray | tuple[np.ndarray, ...]:
    r"""Mamba-2 SSD scan (``mamba_chunk_scan_combined`` semantics).

    Per batch b and head h (group g = h // (H / G)), with a (P, N) state::

        dt_t  = clamp(softplus?(dt_t + dt_bias_h), dt_limit)
        h_t   = exp(dt_t A_h) h_{t-1} + dt_t x_t B_t^T          (h_{-1} = initial_states)
        y_t   = h_t C_t + D_h * x_t
        out_t = y_t * silu(z_t)                                  (if z is given)

    softplus is ``log(1 + e^v)`` for v <= 20 and v above (mamba's threshold).
    The clamp to ``dt_limit`` is **always** applied, as in mamba's Triton path;
    with the default (0, inf) a negative dt becomes 0. (mamba's
    ``ssd_chunk_scan_combined_ref`` does not clamp.)

    The Numba backend evaluates the recurrence in chunks of ``chunk_size``
    steps: an intra-chunk masked quadratic form with weights
    ``exp(sum_{s<i<=l} a_i) <= 1`` plus state passing between chunks. Any L
    works (the last chunk is shorter). The result does not depend on
    ``chunk_size`` beyond rounding.

    Parameters
    ----------
    x : ndarray, shape (batch, L, H, P)
        Input, H heads of head dimension P. float32 or float64.
    dt : ndarray, shape (batch, L, H)
        Step size per position and head (before bias/softplus/clamp).
    A : ndarray, shape (H,)
        Real decay rate per head (negative in Mamba: ``A = -exp(A_log)``).
    B, C : ndarray, shape (batch, L, G, N)
        Input and output projections, G groups with ``H % G == 0``.
    chunk_size : int, default 64
        Chunk length Q of the chunked algorithm (>= 1). Also the granularity of
        the states kept for the backward pass. May be passed positionally, as in
        ``mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, ...)``.
    D : ndarray, shape (H,) or (H, P), optional
        Skip connection.
    z : ndarray, shape (batch, L, H, P), optional
        Gate: ``out = y * silu(z)``.
    dt_bias : ndarray, shape (H,), optional
        Added to dt before softplus.
    dt_softplus : bool, default False
        Apply softplus to ``dt + dt_bias``.
    dt_limit : (float, float), default (0, inf)
        Clamp of the processed dt.
    initial_states : ndarray, shape (batch, H, P, N), optional
        State before step 0 (zeros by default).
    seq_idx : ndarray of int, shape (batch, L), optional
        Packed-sequence index. The state is reset to zero at every step whose
        index differs from the previous step's; the initial state belongs to
        index 0, so ``initial_states`` reaches only a leading run of index 0.
        For non-decreasing ``seq_idx`` (the packed-sequence case) this is
        exactly mamba's behaviour.
    cu_seqlens : ndarray of int, shape (S + 1,), optional
        Boundaries of S sequences packed along L (batch 1): sequence s covers
        steps ``cu_seqlens[s] <= t < cu_seqlens[s + 1]``. Used only for
        ``return_varlen_states`` (as in mamba_ssm); the resets come from
        ``seq_idx``, which must then be given and mark the same sequences. Values are checked for
        NumPy input (strictly increasing within [0, L]), not on devices.
    return_final_states : bool, default False
        Also return the state after the last step.
    return_varlen_states : bool, default False
        Also return the state after the last step of every sequence of
        ``cu_seqlens`` (mamba_ssm's ``varlen_states``). Each sequence restarts at
        its own start; one starting at step 0 starts from ``initial_states`` where
        ``seq_idx`` gives it index 0 (mamba_ssm drops them when that sequence ends
        inside the first chunk). Not differentiable: the pullback refuses a non-zero
        cotangent for it (mamba_ssm has no backward for it at all).
    backend : {None, "numba", "numpy", "cupy"}, optional
        Kernel choice; default by array type (NumPy arrays -> Numba, CuPy -> CUDA).

    Returns
    -------
    out : ndarray, shape (batch, L, H, P)
        In the compute dtype: the result dtype of x, dt, B, C, z and
        initial_states (A, D and dt_bias are cast to it).
    final_states : ndarray, shape (batch, H, P, N)
        Only with ``return_final_states=True``.
    varlen_states : ndarray, shape (S, H, P, N)
        Only with ``return_varlen_states=True``; after ``final_states`` when both
        are asked for (mamba_ssm's order).

    Raises
    ------
    ValueError
        If an array's shape does not fit x's (batch, L, heads, headdim) and B's
        (groups, N) (the message gives the expected shape), the groups do not
        divide the heads, ``chunk_size`` is below 1, ``dt_limit`` does not
        satisfy min <= max, ``return_varlen_states`` is asked for without
        ``cu_seqlens``, or ``cu_seqlens`` is not increasing within [0, L] or comes
        with a batch other than 1.
    TypeError
        If ``chunk_size`` is not an integer, ``dt_limit`` is not a pair of
        floats, ``seq_idx`` or ``cu_seqlens`` is not an integer array, or an array
        is an integer, boolean or non-numeric NumPy array.

    See Also
    --------
    selective_scan : Mamba-1's scan, a diagonal state matrix per channel.
    mamba2_A_log : Mamba-2's initialisation of the per-head ``A``.

    Notes
    -----
    Differentiable as op ``"ssd"`` (``ssmcore.vjp("ssd", ...)``) with respect to
    x, dt, A, B, C, D, z, dt_bias and initial_states. The dt gradient is zero
    where the clamp is active and is multiplied by ``sigmoid(dt + dt_bias)``
    through the softplus. The backward keeps only the chunk-entry states and
    recomputes the states inside each chunk.

    Examples
    --------
    >>> import numpy as np
    >>> from ssmcore import ssd
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((1, 5, 2, 3)); dt = np.full((1, 5, 2), 0.5)
    >>> A = np.array([-1.0, -2.0]); B = rng.standard_normal((1, 5, 1, 4)); C = B.copy()
    >>> out, final = ssd(x, dt, A, B, C, chunk_size=2, return_final_states=True)
    >>> out.shape, final.shape
    ((1, 5, 2, 3), (1, 2, 3, 4))

    A single step from zero state is ``dt (C . B) x``:

    >>> y = ssd(x[:, :1], dt[:, :1], A, B[:, :1], C[:, :1])
    >>> bool(np.allclose(y[0, 0], 0.5 * (C[0, 0, 0] @ B[0, 0, 0]) * x[0, 0]))
    True
    """
    out, _ = _ssd_fwd(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias,
                      dt_softplus=dt_softplus, dt_limit=dt_limit, initial_states=initial_states,
                      seq_idx=seq_idx, cu_seqlens=cu_seqlens, return_final_states=return_final_states,
                      return_varlen_states=return_varlen_states, backend=backend)
    return out
