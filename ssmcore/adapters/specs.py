"""Per-op metadata for the adapters: output shapes/dtypes, JAX vmap method, examples.

``torch.compile`` (fake tensors) and JAX host calls (:mod:`ssmcore.adapters.jax_ffi`) must know an op's
output shapes and dtypes *before* it runs. The NumPy functions compute them
implicitly, so each op gets a small rule here, keyed by op name, written with
the op's own parameter names::

    @rule("lti_simulate")
    def _(A, B, C, D, u, x0=None, *, return_final_state=False, **_):
        ...
        return ArraySpec(lead + (P, L), dtype)          # or a tuple of them

A rule receives :class:`ArraySpec` (shape + NumPy dtype) for every array
argument and the plain values of the options. An op without a rule still works
through :func:`probe_spec`, which runs the NumPy op once on placeholder data of
the right shapes and remembers the result per (shapes, dtypes, options) -- exact,
but it costs one extra forward per new shape and cannot handle symbolic shapes.
``tests/test_torch_adapter.py`` checks every rule against the real outputs.

``EXAMPLES`` holds small inputs for every op (used by the adapter tests and the
overhead benchmark): ``EXAMPLES[op] = [(case_name, make), ...]`` with
``make(rng, dtype) -> (args, kwargs)``; ``COMPLEX_OK`` lists the ops that take
complex inputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..registry import OpDef
from .plan import core_call, encode_options

__all__ = ["COMPLEX_OK", "EXAMPLES", "ArraySpec", "output_spec", "probe_spec", "rule"]


@dataclass(frozen=True)
class ArraySpec:
    """Shape and NumPy dtype of an array, without its data."""

    shape: tuple
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions, as ``ndarray.ndim``."""
        return len(self.shape)


RULES: dict[str, Callable[..., Any]] = {}
EXAMPLES: dict[str, list[tuple[str, Callable[[np.random.Generator, Any], tuple[tuple, dict]]]]] = {}
COMPLEX_OK: set[str] = set()


def rule(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the output rule of op ``name``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        RULES[name] = fn
        return fn

    return deco


# ----------------------------------------------------------------------------- helpers for rules
def _as_spec(value: Any) -> Any:
    """Array-likes that came as options (lists) become specs; scalars stay weak Python scalars."""
    if isinstance(value, (list, np.ndarray)):
        arr = np.asarray(value)
        dt = arr.dtype if arr.dtype.kind in "fc" else np.dtype(np.float64)
        return ArraySpec(arr.shape, dt)
    return value


def result_dtype(*items: Any) -> np.dtype:
    """The core's compute dtype: NumPy promotion (Python scalars weak), ints -> float64, float16 -> float32."""
    parts = [i.dtype if isinstance(i, ArraySpec) else i for i in items if i is not None]
    dt = np.result_type(*parts) if parts else np.dtype(np.float64)
    if dt.kind in "iub":
        return np.dtype(np.float64)
    if dt == np.float16:
        return np.dtype(np.float32)
    if dt.kind == "f" and dt.itemsize > 8:
        return np.dtype(np.float64)
    if dt.kind == "c" and dt.itemsize > 16:
        return np.dtype(np.complex128)
    return dt


def broadcast(*shapes: Sequence[Any]) -> tuple:
    """NumPy broadcasting of shapes, in plain Python (works on symbolic sizes too)."""
    ndim = max((len(s) for s in shapes), default=0)
    out: list[Any] = []
    for axis in range(-ndim, 0):
        size: Any = 1
        for s in shapes:
            if len(s) >= -axis:
                d = s[axis]
                if size == 1:
                    size = d
                elif d != 1 and d != size:
                    raise ValueError(f"shapes {[tuple(x) for x in shapes]} do not broadcast")
        out.append(size)
    return tuple(out)


def _lead(x: Any, core: int) -> tuple:
    return tuple(x.shape[: x.ndim - core]) if isinstance(x, ArraySpec) else ()


# ----------------------------------------------------------------------------- evaluating a spec
def output_spec(opdef: OpDef, arrays: Sequence[ArraySpec | None], options: dict[str, Any]) -> Any:
    """Output spec(s) of ``opdef`` for arrays (one ArraySpec or None per parameter) and options."""
    fn = RULES.get(opdef.name)
    if fn is None:
        return probe_spec(opdef, arrays, options)
    try:
        return core_call(opdef, fn, arrays, {k: _as_spec(v) for k, v in options.items()})
    except (ValueError, TypeError, IndexError, AttributeError, KeyError) as exc:
        # A rule fails on inputs the op itself would refuse; report the op's own error instead.
        raise spec_error(opdef, arrays, options, exc) from None


#: Placeholder inputs larger than this are not run through the core to find its error message.
_EXPLAIN_MAX_ELEMENTS = 1 << 22


def spec_error(opdef: OpDef, arrays: Sequence[ArraySpec | None], options: dict[str, Any],
               exc: BaseException) -> Exception:
    """The error to raise when an output rule failed: the core's own, naming the op and the argument.

    The op runs once on zero-strided placeholders of the given shapes and dtypes
    (no memory of their size is allocated); its validation raises the message a
    NumPy call would (``linear_scan: a has shape (3, 8) ...``). When the inputs
    are too large to risk running the op, or the op accepts them, the rule's
    error comes back prefixed with the op's name and the arguments' shapes and dtypes.
    """
    names = list(opdef.signature.parameters)
    small = all(a is None or int(np.prod([int(d) for d in a.shape], dtype=np.int64)) <= _EXPLAIN_MAX_ELEMENTS
                for a in arrays)
    if small:
        try:
            data = [None if a is None else np.broadcast_to(np.asarray(0.5).astype(a.dtype),
                                                           tuple(int(d) for d in a.shape)) for a in arrays]
        except TypeError:  # symbolic sizes: nothing to run
            data = None
        if data is not None:
            try:
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    core_call(opdef, opdef.fn, data, options)
            except (ValueError, TypeError) as core_exc:
                return core_exc
            except Exception:  # noqa: BLE001 - anything else says nothing about the arguments
                pass
    described = ", ".join(f"{n} {tuple(a.shape)} {np.dtype(a.dtype).name}"
                          for n, a in zip(names, arrays) if a is not None)
    kind = type(exc) if isinstance(exc, (ValueError, TypeError)) else ValueError
    return kind(f"{opdef.name}: {exc} (array arguments: {described})")


_PROBED: dict[tuple, Any] = {}


def probe_spec(opdef: OpDef, arrays: Sequence[ArraySpec | None], options: dict[str, Any]) -> Any:
    """Output spec(s) found by running the NumPy op on placeholder arrays of the given shapes.

    The placeholders hold 0.5 (a valid step size, a stable decay); overflow in
    the probe is irrelevant, only shapes and dtypes are read.
    """
    shapes = tuple(None if a is None else (tuple(a.shape), a.dtype.str) for a in arrays)
    key = (opdef.name, encode_options(opdef, options), shapes)
    if key not in _PROBED:
        try:
            data = [None if a is None else np.full(tuple(int(d) for d in a.shape), 0.5, dtype=a.dtype) for a in arrays]
        except TypeError:
            raise NotImplementedError(
                f"ssmcore adapters: op {opdef.name!r} has no output rule in ssmcore/adapters/specs.py, "
                f"so it cannot be traced with symbolic shapes"
            ) from None
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = core_call(opdef, opdef.fn, data, options)
        outs = tuple(ArraySpec(o.shape, o.dtype) for o in (out if isinstance(out, tuple) else (out,)))
        _PROBED[key] = outs if isinstance(out, tuple) else outs[0]
    return _PROBED[key]


# ============================================================================= rules and examples per op
def _rand(rng: np.random.Generator, shape: tuple, dtype: Any, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    dtype = np.dtype(dtype)
    x = shift + scale * rng.standard_normal(shape)
    if dtype.kind == "c":
        x = x + 1j * scale * rng.standard_normal(shape)
    return x.astype(dtype)


def _real(dtype: Any) -> np.dtype:
    return np.empty(0, dtype).real.dtype


# ----------------------------------------------------------------------------- lti_simulate
@rule("lti_simulate")
def _lti_simulate(A, B, C, D, u, x0=None, *, return_final_state=False, **_):
    lead = broadcast(_lead(A, 2), _lead(B, 2), _lead(C, 2), _lead(D, 2), _lead(u, 2), _lead(x0, 1))
    dt = result_dtype(A, B, C, D, u, x0)
    y = ArraySpec(lead + (C.shape[-2], u.shape[-1]), dt)
    return (y, ArraySpec(lead + (A.shape[-1],), dt)) if return_final_state else y


def _stable_matrix(rng, shape, dtype):
    """Random (..., n, n) matrices with spectral radius < 1 (discrete-time stable)."""
    q = _rand(rng, shape, dtype, 0.3)
    return (q / max(1.0, 1.5 * np.abs(np.linalg.eigvals(q)).max())).astype(dtype)


EXAMPLES["lti_simulate"] = [
    ("basic", lambda rng, dt: ((_stable_matrix(rng, (3, 3), dt), _rand(rng, (3, 2), dt), _rand(rng, (1, 3), dt),
                                 None, _rand(rng, (2, 5), dt)), {})),
    ("batch_x0_final", lambda rng, dt: ((_stable_matrix(rng, (2, 2), dt), _rand(rng, (2, 1), dt),
                                          _rand(rng, (2, 2), dt), _rand(rng, (2, 1), dt), _rand(rng, (2, 1, 4), dt)),
                                         {"x0": _rand(rng, (2, 2), dt), "return_final_state": True})),
]
COMPLEX_OK.add("lti_simulate")


@rule("lti_simulate_diag")
def _lti_simulate_diag(A, B, C, D, u, x0=None, *, conj_sym=False, real_output=None, return_final_state=False, **_):
    lead = broadcast(_lead(A, 2), _lead(B, 2), _lead(C, 2), _lead(D, 1), _lead(u, 2), _lead(x0, 2))
    dt = result_dtype(A, B, C, D, u, x0)
    real = bool(conj_sym) if real_output is None else bool(real_output)
    y = ArraySpec(lead + (A.shape[-2], u.shape[-1]), _real(dt) if real else dt)
    return (y, ArraySpec(lead + tuple(A.shape[-2:]), dt)) if return_final_state else y


def _stable_diag(rng, shape, dtype):
    """Diagonal discrete modes with modulus < 1."""
    a = 0.8 * _rand(rng, shape, dtype, 0.5) / (1.0 + np.abs(_rand(rng, shape, dtype, 0.5)))
    return (a / np.maximum(1.0, 1.25 * np.abs(a))).astype(dtype)


EXAMPLES["lti_simulate_diag"] = [
    ("basic", lambda rng, dt: ((_stable_diag(rng, (2, 3), dt), _rand(rng, (2, 3), dt), _rand(rng, (2, 3), dt),
                                 None, _rand(rng, (2, 5), dt)), {})),
    ("conv_x0_final", lambda rng, dt: ((_stable_diag(rng, (2, 2), dt), _rand(rng, (2, 2), dt), _rand(rng, (2, 2), dt),
                                         _rand(rng, (2,), _real(dt)), _rand(rng, (3, 2, 4), _real(dt))),
                                        {"x0": _rand(rng, (2, 2), dt), "real_output": True, "mode": "convolution",
                                         "return_final_state": True})),
]
COMPLEX_OK.add("lti_simulate_diag")


# ----------------------------------------------------------------------------- ssd (Mamba-2)
@rule("ssd")
def _ssd(x, dt, A, B, C, chunk_size=64, *, z=None, initial_states=None, cu_seqlens=None, return_final_states=False,
         return_varlen_states=False, **_):
    cdt = result_dtype(x, dt, B, C, z, initial_states)
    out = [ArraySpec(tuple(x.shape), cdt)]
    b, _, h, p = x.shape
    if return_final_states:
        out.append(ArraySpec((b, h, p, B.shape[-1]), cdt))
    if return_varlen_states:
        out.append(ArraySpec((cu_seqlens.shape[0] - 1, h, p, B.shape[-1]), cdt))
    return tuple(out) if len(out) > 1 else out[0]


def _ssd_case(rng, dtype, full):
    b, L, h, p, g, n = 1, 5, 2, 2, 1, 3
    args = (_rand(rng, (b, L, h, p), dtype), np.abs(_rand(rng, (b, L, h), dtype, 0.3, 0.5)),
            -np.abs(_rand(rng, (h,), dtype, 0.5, 1.0)), _rand(rng, (b, L, g, n), dtype),
            _rand(rng, (b, L, g, n), dtype))
    kw: dict[str, Any] = {"chunk_size": 2}
    if full:
        kw.update(D=_rand(rng, (h,), dtype), z=_rand(rng, (b, L, h, p), dtype), dt_bias=_rand(rng, (h,), dtype, 0.1),
                  dt_softplus=True, initial_states=_rand(rng, (b, h, p, n), dtype), return_final_states=True)
    return args, kw


EXAMPLES["ssd"] = [
    ("basic", lambda rng, dt: _ssd_case(rng, dt, False)),
    ("full", lambda rng, dt: _ssd_case(rng, dt, True)),
]


# ----------------------------------------------------------------------------- shared dtype rule
def _single(*items: Any) -> bool:
    """True when every *array* input is single precision (float32/complex64)."""
    arrays = [i for i in items if isinstance(i, ArraySpec)]
    return bool(arrays) and all(a.dtype in (np.float32, np.complex64) for a in arrays)


def _float_kind(single: bool, is_complex: bool) -> np.dtype:
    return np.dtype({(True, False): np.float32, (True, True): np.complex64,
                     (False, False): np.float64, (False, True): np.complex128}[(single, is_complex)])


def _is_complex(*items: Any) -> bool:
    return any((isinstance(i, ArraySpec) and i.dtype.kind == "c") or isinstance(i, complex) for i in items)


def _shape(x: Any) -> tuple:
    return tuple(x.shape) if isinstance(x, ArraySpec) else ()


# ----------------------------------------------------------------------------- discretisation
@rule("discretize")
def _discretize(A, B, dt, method="zoh", alpha=None, **_):
    batch = broadcast(_lead(A, 2), _lead(B, 2), _shape(dt))
    single = _single(A, B, dt)
    N, M = A.shape[-1], B.shape[-1]
    return (ArraySpec(batch + (N, N), _float_kind(single, _is_complex(A))),
            ArraySpec(batch + (N, M), _float_kind(single, _is_complex(A, B))))


@rule("discretize_diag")
def _discretize_diag(A, B, dt, method="zoh", alpha=None, **_):
    a = _shape(A)
    d = _shape(dt)
    if len(d) < len(a):
        d = d + (1,)
    b = _shape(B)
    with_m = len(b) == len(a) + 1 and len(b) > 0
    S = broadcast(a, d, b[:-1] if with_m else b)
    single = _single(A, B, dt)
    Bd = S + (b[-1],) if with_m else S
    return (ArraySpec(S, _float_kind(single, _is_complex(A))),
            ArraySpec(Bd, _float_kind(single, _is_complex(A, B))))


def _negative(rng, shape, dtype, scale=0.5):
    """Stable continuous-time eigenvalues: Re < 0 (and a spread of imaginary parts if complex)."""
    x = -np.abs(_rand(rng, shape, _real(dtype), scale, 0.5 + scale))
    if np.dtype(dtype).kind == "c":
        x = x + 1j * _rand(rng, shape, _real(dtype), 2.0)
    return x.astype(dtype)


EXAMPLES["discretize"] = [
    ("zoh", lambda rng, dt: ((_rand(rng, (2, 2), dt, 0.5) - np.eye(2, dtype=dt), _rand(rng, (2, 1), dt),
                              np.asarray(0.3, _real(dt))), {})),
    ("bilinear_batch", lambda rng, dt: ((_rand(rng, (3, 2, 2), dt, 0.5) - np.eye(2, dtype=dt), _rand(rng, (2, 2), dt),
                                         np.abs(_rand(rng, (3,), _real(dt), 0.1, 0.3))), {"method": "bilinear"})),
]
EXAMPLES["discretize_diag"] = [
    ("zoh", lambda rng, dt: ((_negative(rng, (2, 3), dt), _rand(rng, (2, 3), dt),
                              np.abs(_rand(rng, (2,), _real(dt), 0.1, 0.3))), {})),  # S4D: dt per channel
    ("bilinear_M_scalar_dt", lambda rng, dt: ((_negative(rng, (2, 3), dt), _rand(rng, (2, 3, 2), dt), 0.1),
                                              {"method": "bilinear"})),
]
COMPLEX_OK.update({"discretize", "discretize_diag"})


# ----------------------------------------------------------------------------- convolution
@rule("fft_conv")
def _fft_conv(u, K, D=None, *, bidirectional=False, **_):
    shape = tuple(u.shape)
    if K.ndim == 3:
        c_out = K.shape[0] // 2 if bidirectional else K.shape[0]
        shape = shape[:-2] + (c_out * shape[-2], shape[-1])
    return ArraySpec(shape, result_dtype(u, K))


@rule("ssm_kernel_dense")
def _ssm_kernel_dense(A, B, C, L, **_):
    return ArraySpec(broadcast(_lead(A, 2), _lead(B, 1), _lead(C, 1)) + (L,), result_dtype(A, B, C))


def _channels(*pairs: tuple[Any, int]) -> tuple:
    """The channel axis H of the kernel rules: broadcast of each input's axes before its core axes."""
    shapes = [_lead(x, core) for x, core in pairs if isinstance(x, ArraySpec)]
    return broadcast(*shapes)


@rule("ssm_kernel_diag")
def _ssm_kernel_diag(A, B, C, dt, L, **_):
    h = _channels((A, 1), (B, 1), (dt, 0) if _shape(dt) and len(_shape(dt)) < 2 else (dt, 1))
    c = _shape(C)
    if len(c) >= 2:
        h = broadcast(h, c[-2:-1])
    return ArraySpec(c[:-2] + h + (L,), _float_kind(_single(A, B, C, dt), False))


@rule("ssm_kernel_dplr")
def _ssm_kernel_dplr(Lambda, P, B, C, dt, L, **_):
    h = broadcast(_lead(Lambda, 1), _shape(P)[1:-1], _lead(B, 1), _shape(dt))
    c = _shape(C)
    if len(c) >= 2:
        h = broadcast(h, c[-2:-1])
    return ArraySpec(c[:-2] + h + (L,), _float_kind(_single(Lambda, P, B, C, dt), False))


EXAMPLES["fft_conv"] = [
    ("channels_D", lambda rng, dt: ((_rand(rng, (2, 3, 8), dt), _rand(rng, (3, 5), dt), _rand(rng, (3,), dt)), {})),
    ("c_out", lambda rng, dt: ((_rand(rng, (3, 6), dt), _rand(rng, (2, 3, 6), dt)), {})),
    ("bidirectional", lambda rng, dt: ((_rand(rng, (1, 2, 5), dt), _rand(rng, (2, 2, 5), dt)),
                                       {"bidirectional": True})),
]


EXAMPLES["ssm_kernel_dense"] = [
    ("batch", lambda rng, dt: ((_stable_matrix(rng, (2, 3, 3), dt), _rand(rng, (2, 3), dt), _rand(rng, (3,), dt), 6),
                               {})),
]


def _kdiag_case(rng, dtype, conj_sym):
    return ((_negative(rng, (2, 3), dtype), _rand(rng, (2, 3), dtype), _rand(rng, (2, 2, 3), dtype),
             np.abs(_rand(rng, (2,), _real(dtype), 0.05, 0.2)), 7), {"conj_sym": conj_sym})


EXAMPLES["ssm_kernel_diag"] = [
    ("c_out", lambda rng, dt: _kdiag_case(rng, dt, True)),
    ("bilinear_single", lambda rng, dt: ((_negative(rng, (4,), dt), _rand(rng, (4,), dt), _rand(rng, (4,), dt),
                                          0.1, 5), {"method": "bilinear", "conj_sym": False})),
]


def _complex_of(dtype):
    return np.result_type(dtype, np.complex64)


def _dplr_case(rng, dtype):
    c = _complex_of(dtype)
    H, N = 2, 3
    lam = (-0.5 + 1j * np.pi * np.arange(N))[None].repeat(H, 0).astype(c)
    return ((lam, _rand(rng, (1, H, N), c, 0.3), _rand(rng, (H, N), c), _rand(rng, (2, H, N), c),
             np.abs(_rand(rng, (H,), _real(dtype), 0.02, 0.1)), 8), {})


EXAMPLES["ssm_kernel_dplr"] = [("c_out", _dplr_case)]
COMPLEX_OK.update({"ssm_kernel_dense", "ssm_kernel_diag"})


# ----------------------------------------------------------------------------- selective scan (Mamba-1)
@rule("selective_scan")
def _selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                    return_last_state=False, **_):
    out = ArraySpec(tuple(u.shape), u.dtype)
    if not return_last_state:
        return out
    compute = np.float64 if np.float64 in (u.dtype, delta.dtype) else np.float32
    state = np.result_type(compute, np.complex64) if A.dtype.kind == "c" else np.dtype(compute)
    return out, ArraySpec((u.shape[0], u.shape[1], A.shape[-1]), state)


def _sscan_case(rng, dtype, full):
    b, d, L, n = 1, 2, 5, 3
    real = _real(dtype)
    args = [_rand(rng, (b, d, L), real), np.abs(_rand(rng, (b, d, L), real, 0.2, 0.5)),
            _negative(rng, (d, n), dtype), _rand(rng, (b, n, L), dtype), _rand(rng, (d, n), dtype)]
    if not full:
        return tuple(args), {}
    kw = {"D": _rand(rng, (d,), real), "z": _rand(rng, (b, d, L), real), "delta_bias": _rand(rng, (d,), real, 0.1),
          "delta_softplus": True, "return_last_state": True, "h0": _rand(rng, (b, d, n), dtype)}
    return tuple(args), kw


EXAMPLES["selective_scan"] = [
    ("basic", lambda rng, dt: _sscan_case(rng, dt, False)),
    ("full", lambda rng, dt: _sscan_case(rng, dt, True)),
]
COMPLEX_OK.add("selective_scan")


# ----------------------------------------------------------------------------- selective_state_update (decode step)
@rule("selective_state_update")
def _selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                            state_batch_indices=None, **_):
    compute = np.float64 if np.float64 in (x.dtype, dt.dtype) else np.float32
    sdt = np.result_type(compute, np.complex64) if A.dtype.kind == "c" else np.dtype(compute)
    return ArraySpec(tuple(x.shape), x.dtype), ArraySpec(tuple(state.shape), sdt)


def _ssu_case(rng, dtype, heads, full):
    real = _real(dtype)
    b, n = 2, 3
    cs = (2, 3) if heads else (4,)
    cache = 3 if full else b
    args = [_rand(rng, (cache, *cs, n), dtype), _rand(rng, (b, *cs), real),
            np.abs(_rand(rng, (b, *cs), real, 0.2, 0.5)), _negative(rng, (*cs, n), dtype),
            _rand(rng, (b, 2, n) if heads else (b, n), dtype), _rand(rng, (b, 2, n) if heads else (b, n), dtype)]
    if not full:
        return tuple(args), {}
    kw = {"D": _rand(rng, cs, real), "z": _rand(rng, (b, *cs), real), "dt_bias": _rand(rng, cs, real, 0.1),
          "dt_softplus": True, "state_batch_indices": np.array([2, 0])}
    return tuple(args), kw


EXAMPLES["selective_state_update"] = [
    ("plain", lambda rng, dt: _ssu_case(rng, dt, False, False)),
    ("heads_full_indices", lambda rng, dt: _ssu_case(rng, dt, True, True)),
]
COMPLEX_OK.add("selective_state_update")


# ----------------------------------------------------------------------------- linear scan
@rule("linear_scan")
def _linear_scan(a, b, h0=None, *, return_final_state=False, **_):
    h = ArraySpec(broadcast(_shape(a), _shape(b)), result_dtype(a, b, h0))
    return (h, ArraySpec(h.shape[:-1], h.dtype)) if return_final_state else h


EXAMPLES["linear_scan"] = [
    ("basic", lambda rng, dt: ((_rand(rng, (2, 6), dt, 0.5), _rand(rng, (2, 6), dt)), {})),
    ("broadcast_h0_reverse_final", lambda rng, dt: ((_rand(rng, (3, 1), dt, 0.5), _rand(rng, (2, 3, 5), dt)),
                                                     {"h0": _rand(rng, (3,), dt), "reverse": True,
                                                      "return_final_state": True})),
]
COMPLEX_OK.add("linear_scan")


# ----------------------------------------------------------------------------- lfilter (scipy.signal drop-in)
@rule("lfilter")
def _lfilter(b, a, x, axis=-1, zi=None, **_):
    xs = _shape(x)
    p = int(axis) % len(xs)
    x_lead = xs[:p] + xs[p + 1:]
    batch = broadcast(_shape(b)[:-1], _shape(a)[:-1], x_lead)
    q = p + len(batch) - len(x_lead)
    dt = result_dtype(b, a, x, zi)
    y = ArraySpec(batch[:q] + (xs[p],) + batch[q:], dt)
    if zi is None:
        return y
    K = max(_shape(b)[-1] if _shape(b) else 1, _shape(a)[-1] if _shape(a) else 1)
    return y, ArraySpec(batch[:q] + (K - 1,) + batch[q:], dt)


def _lfilter_coeffs(rng, shape, dtype, n):
    """Denominators (..., n) with a[..., 0] = 1.5 and small feedback (stable)."""
    tail = _rand(rng, shape + (n - 1,), dtype, 0.2)
    return np.concatenate([np.full(shape + (1,), 1.5, dtype=tail.dtype), tail], -1)


EXAMPLES["lfilter"] = [
    ("iir", lambda rng, dt: ((_rand(rng, (3,), dt), _lfilter_coeffs(rng, (), dt, 3), _rand(rng, (2, 7), dt)), {})),
    ("batched_axis0_zi", lambda rng, dt: ((_rand(rng, (4, 2), dt), _lfilter_coeffs(rng, (4,), dt, 3),
                                           _rand(rng, (6, 4), dt)),
                                          {"axis": 0, "zi": _rand(rng, (2, 4), dt)})),
]
COMPLEX_OK.add("lfilter")
