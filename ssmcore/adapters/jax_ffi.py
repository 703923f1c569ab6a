"""Fast host calls from JAX: ``jax.pure_callback``'s contract through the typed XLA FFI.

:func:`host_call` has ``jax.pure_callback``'s calling convention and semantics
(a pure host function of arrays, result shapes and dtypes given up front,
``vmap_method``), but on CPU it runs the host function through
``jax.ffi.ffi_call`` instead of JAX's Python callback machinery. That costs a
few microseconds per call instead of ~80 us (no-op call, jitted; see the
report in ``docs/adapters.md``).

How it works
------------
* One XLA FFI handler (typed FFI, ``api_version=1``) is registered for the CPU
  platform under a per-process name. It is a ``ctypes.CFUNCTYPE`` callback
  written in Python: ctypes takes the GIL on XLA's thread, the handler reads
  the ``XLA_FFI_CallFrame`` through ``ctypes.Structure`` mirrors of
  ``jax.ffi.include_dir()/xla/ffi/api/c_api.h``, calls the host function and
  copies its results into XLA's result buffers.
* Which host function to run is a table index, passed as the scalar FFI
  attribute ``handle``. Each distinct host function object gets one index for
  the life of the process (callers pass long-lived functions, so the table
  stays bounded; nothing is added per call).
* Inputs reach the host function as zero-copy, *writable* NumPy views of XLA's
  buffers, valid only during the call: the host function must neither modify
  them nor keep references to them. Results are checked (count, shape, dtype)
  and copied.
* An exception in the host function becomes an ``XLA_FFI_Error`` (created with
  the API's ``XLA_FFI_Error_Create``), so the JAX call raises a
  ``JaxRuntimeError`` carrying the Python exception type, message and traceback.
* The target name has a random per-process suffix: a program that embeds a
  table index can never be served from JAX's persistent compilation cache to
  another process, where the index would mean a different function.
* Non-CPU platforms lower the ``jax.pure_callback`` branch instead (through
  ``jax.lax.platform_dependent``): correct, with a device-host round trip.

Fallback
--------
At first use a self-test runs a small host function through the FFI under
``jax.jit`` (several dtypes and ranks, a 0-d and an empty array) and checks
that an exception propagates. If the FFI header's ABI version is not the one
mirrored here, or the self-test fails, every later :func:`host_call` uses
``jax.pure_callback`` for the rest of the process, and one warning says why.
Setting the environment variable ``SSMCORE_JAX_CALLBACK=pure_callback`` forces
that fallback (read at each trace; ``ffi`` or unset means "use the FFI when it
works").
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import sys
import threading
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["host_call", "ffi_available", "ENV_VAR"]

#: Environment variable that selects the call path: ``pure_callback`` forces the fallback.
ENV_VAR = "SSMCORE_JAX_CALLBACK"

# ----------------------------------------------------------------------------- C API mirror
# ctypes mirrors of xla/ffi/api/c_api.h (API major version 0). Only the leading fields that
# the handler reads are declared; the header's versioning policy only appends fields within a
# major version, and every struct's ``struct_size`` is checked against these prefixes.
_ABI_MAJOR = 0  # the major version whose layout these structs mirror

_c = ctypes


class _ExtensionBase(_c.Structure):
    pass


_ExtensionBase._fields_ = [
    ("struct_size", _c.c_size_t),
    ("type", _c.c_int),  # XLA_FFI_Extension_Type
    ("next", _c.POINTER(_ExtensionBase)),
]


class _ApiVersion(_c.Structure):
    _fields_ = [
        ("struct_size", _c.c_size_t),
        ("extension_start", _c.c_void_p),
        ("major_version", _c.c_int),
        ("minor_version", _c.c_int),
    ]


class _Api(_c.Structure):
    """Prefix of ``XLA_FFI_Api`` up to the one function used, ``XLA_FFI_Error_Create``."""

    _fields_ = [
        ("struct_size", _c.c_size_t),
        ("extension_start", _c.c_void_p),
        ("api_version", _ApiVersion),
        ("internal_api", _c.c_void_p),
        ("XLA_FFI_Error_Create", _c.c_void_p),
    ]


class _ErrorCreateArgs(_c.Structure):
    _fields_ = [
        ("struct_size", _c.c_size_t),
        ("extension_start", _c.c_void_p),
        ("message", _c.c_char_p),
        ("errc", _c.c_int),  # XLA_FFI_Error_Code
    ]


class _Buffer(_c.Structure):
    _fields_ = [
        ("struct_size", _c.c_size_t),
        ("extension_start", _c.c_void_p),
        ("dtype", _c.c_int),  # XLA_FFI_DataType
        ("data", _c.c_void_p),
        ("rank", _c.c_int64),
        ("dims", _c.POINTER(_c.c_int64)),
    ]


class _Args(_c.Structure):
    _fields_ = [
        ("struct_size", _c.c_size_t),
        ("extension_start", _c.c_void_p),
        ("size", _c.c_int64),
        ("types", _c.POINTER(_c.c_int)),  # XLA_FFI_ArgType
        ("args", _c.POINTER(_c.c_void_p)),
    ]


class _Rets(_c.Structure):
    _fields_ = [
        ("struct_size", _c.c_size_t),
        ("extension_start", _c.c_void_p),
        ("size", _c.c_int64),
        ("types", _c.POINTER(_c.c_int)),  # XLA_FFI_RetType
        ("rets", _c.POINTER(_c.c_void_p)),
    ]


class _Attrs(_c.Structure):
    _fields_ = [
        ("struct_size", _c.c_size_t),
        ("extension_start", _c.c_void_p),
        ("size", _c.c_int64),
        ("types", _c.POINTER(_c.c_int)),  # XLA_FFI_AttrType
        ("names", _c.c_void_p),  # XLA_FFI_ByteSpan** (unused: there is exactly one attribute)
        ("attrs", _c.POINTER(_c.c_void_p)),
    ]


class _Scalar(_c.Structure):
    _fields_ = [("dtype", _c.c_int), ("value", _c.c_void_p)]


class _CallFrame(_c.Structure):
    _fields_ = [
        ("struct_size", _c.c_size_t),
        ("extension_start", _c.POINTER(_ExtensionBase)),
        ("api", _c.c_void_p),
        ("ctx", _c.c_void_p),
        ("stage", _c.c_int),  # XLA_FFI_ExecutionStage
        ("args", _Args),
        ("rets", _Rets),
        ("attrs", _Attrs),
    ]


class _Metadata(_c.Structure):
    _fields_ = [
        ("struct_size", _c.c_size_t),
        ("api_version", _ApiVersion),
        ("traits", _c.c_uint32),
        ("state_type_id", _c.c_int64),  # XLA_FFI_TypeId; written only if XLA's struct has it
    ]


class _MetadataExtension(_c.Structure):
    _fields_ = [("extension_base", _ExtensionBase), ("metadata", _c.POINTER(_Metadata))]


def _struct_size(struct: type, last_field: str) -> int:
    """``XLA_FFI_STRUCT_SIZE``: offset of the last field the header counts, plus its size."""
    field = getattr(struct, last_field)
    return field.offset + field.size


_CALLFRAME_SIZE = _struct_size(_CallFrame, "attrs")
_BUFFER_SIZE = _struct_size(_Buffer, "dims")
_API_SIZE = _struct_size(_Api, "XLA_FFI_Error_Create")
_METADATA_EXT_SIZE = _struct_size(_MetadataExtension, "metadata")
_METADATA_SIZE = _struct_size(_Metadata, "traits")
_METADATA_WITH_STATE = _struct_size(_Metadata, "state_type_id")

_EXTENSION_METADATA = 1
_STAGE_EXECUTE = 3
_BUFFER_TYPE = 1  # XLA_FFI_ArgType_BUFFER == XLA_FFI_RetType_BUFFER
_ATTR_SCALAR = 3
_S32, _S64 = 4, 5

# XLA_FFI_Error_Code values
_ERR_CANCELLED, _ERR_UNKNOWN, _ERR_INVALID_ARGUMENT, _ERR_UNIMPLEMENTED, _ERR_INTERNAL = 1, 2, 3, 12, 13
_ERROR_CODES = [(NotImplementedError, _ERR_UNIMPLEMENTED), ((TypeError, ValueError), _ERR_INVALID_ARGUMENT),
                (Exception, _ERR_UNKNOWN), (BaseException, _ERR_CANCELLED)]


def _ffi_dtypes() -> dict[int, tuple[np.dtype, str, bool]]:
    """XLA_FFI_DataType code -> (NumPy dtype, array-interface typestr, needs a ``.view(dtype)``)."""
    table = {1: np.bool_, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.uint8, 7: np.uint16,
             8: np.uint32, 9: np.uint64, 10: np.float16, 11: np.float32, 12: np.float64, 15: np.complex64,
             18: np.complex128, 16: jnp.bfloat16}
    out = {}
    for code, dt in table.items():
        dt = np.dtype(dt)
        # ml_dtypes types (bfloat16) have no typestr of their own: view raw unsigned integers.
        out[code] = (dt, f"|u{dt.itemsize}", True) if dt.kind == "V" else (dt, dt.str, False)
    return out


_DTYPES = _ffi_dtypes()


def header_version() -> tuple[int, int] | None:
    """``(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR)`` from the FFI header jaxlib ships, or None."""
    try:
        text = (Path(jax.ffi.include_dir()) / "xla" / "ffi" / "api" / "c_api.h").read_text()
    except (AttributeError, OSError):
        return None
    major = re.search(r"#define\s+XLA_FFI_API_MAJOR\s+(\d+)", text)
    minor = re.search(r"#define\s+XLA_FFI_API_MINOR\s+(\d+)", text)
    return (int(major.group(1)), int(minor.group(1))) if major and minor else None


# ----------------------------------------------------------------------------- the handler
_HOSTS: list[Callable[..., Any]] = []  # table index -> host function
_HANDLES: dict[Callable[..., Any], int] = {}  # host function -> table index
_TABLE_LOCK = threading.Lock()
_VERSION = (0, 0)  # reported to XLA's metadata query; set from the header before registration
_error_create: Callable[[Any], int] | None = None  # api->XLA_FFI_Error_Create, bound on first use
_ERROR_CREATE_T = _c.CFUNCTYPE(_c.c_void_p, _c.POINTER(_ErrorCreateArgs))


class _Interface:
    """Carrier of an ``__array_interface__`` (the cheapest way to view raw memory as an array)."""

    __slots__ = ("__array_interface__",)

    def __init__(self, interface: dict) -> None:
        self.__array_interface__ = interface


def _view(address: int) -> np.ndarray:
    """Zero-copy NumPy view of the XLA_FFI_Buffer at ``address`` (row-major, as ffi_call lays out)."""
    buf = _Buffer.from_address(address)
    if buf.struct_size < _BUFFER_SIZE:
        raise RuntimeError(f"XLA_FFI_Buffer has struct_size {buf.struct_size}; expected >= {_BUFFER_SIZE}")
    entry = _DTYPES.get(buf.dtype)
    if entry is None:
        raise TypeError(f"unsupported XLA_FFI_DataType {buf.dtype}")
    dtype, typestr, reinterpret = entry
    rank = buf.rank
    shape = tuple(buf.dims[:rank]) if rank else ()
    data = buf.data
    if not data or 0 in shape:  # empty arrays may come with a null pointer
        return np.empty(shape, dtype)
    array = np.asarray(_Interface({"data": (data, False), "shape": shape, "typestr": typestr, "version": 3}))
    return array.view(dtype) if reinterpret else array


def _handle_attr(attrs: _Attrs) -> int:
    """The table index from the call's only attribute, the scalar ``handle``."""
    if attrs.size != 1 or attrs.types[0] != _ATTR_SCALAR:
        raise RuntimeError("expected exactly one scalar attribute, 'handle'")
    scalar = _Scalar.from_address(attrs.attrs[0])
    if scalar.dtype == _S64:
        return _c.c_int64.from_address(scalar.value).value
    if scalar.dtype == _S32:  # in case a JAX without x64 narrows the attribute
        return _c.c_int32.from_address(scalar.value).value
    raise RuntimeError(f"attribute 'handle' has XLA_FFI_DataType {scalar.dtype}; expected S64 or S32")


def _execute(frame: _CallFrame) -> None:
    """Run the host function of one call frame and fill its result buffers."""
    host_fn = _HOSTS[_handle_attr(frame.attrs)]
    args, rets = frame.args, frame.rets
    n_args, n_rets = args.size, rets.size
    if args.types[:n_args].count(_BUFFER_TYPE) != n_args or rets.types[:n_rets].count(_BUFFER_TYPE) != n_rets:
        raise RuntimeError("every argument and result must be a buffer")
    result = host_fn(*[_view(a) for a in args.args[:n_args]])
    leaves = result if type(result) is tuple else None
    if leaves is None or not all(type(v) is np.ndarray for v in leaves):
        leaves = jax.tree_util.tree_leaves(result)
    if len(leaves) != n_rets:
        raise ValueError(f"host_call: {_name(host_fn)} returned {len(leaves)} arrays; expected {n_rets}")
    for k, address in enumerate(rets.rets[:n_rets]):
        out, value = _view(address), np.asarray(leaves[k])
        if value.shape != out.shape or value.dtype != out.dtype:
            raise ValueError(f"host_call: result {k} of {_name(host_fn)} has shape {value.shape} and dtype "
                             f"{value.dtype}; expected shape {out.shape} and dtype {out.dtype}")
        if out.size:
            np.copyto(out, value)


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _make_error(api_address: int, code: int, message: str) -> int:
    """A new XLA_FFI_Error (owned by XLA once returned) carrying ``message``."""
    global _error_create
    if _error_create is None:
        api = _Api.from_address(api_address)
        if api.struct_size < _API_SIZE or not api.XLA_FFI_Error_Create:
            raise RuntimeError(f"XLA_FFI_Api has struct_size {api.struct_size}; expected >= {_API_SIZE}")
        _error_create = _ERROR_CREATE_T(api.XLA_FFI_Error_Create)
    args = _ErrorCreateArgs(_c.sizeof(_ErrorCreateArgs), None, message.encode("utf-8", "replace"), code)
    return _error_create(_c.byref(args)) or 0


def _answer_metadata(extension: _ExtensionBase) -> None:
    """XLA's metadata query: report the FFI API version we speak and no traits."""
    ext = _c.cast(_c.pointer(extension), _c.POINTER(_MetadataExtension)).contents
    if ext.extension_base.struct_size < _METADATA_EXT_SIZE or not ext.metadata:
        raise RuntimeError("XLA_FFI_Metadata_Extension is smaller than expected")
    meta = ext.metadata.contents
    if meta.struct_size < _METADATA_SIZE:
        raise RuntimeError(f"XLA_FFI_Metadata has struct_size {meta.struct_size}; expected >= {_METADATA_SIZE}")
    meta.api_version = _ApiVersion(_c.sizeof(_ApiVersion), None, *_VERSION)
    meta.traits = 0
    if meta.struct_size >= _METADATA_WITH_STATE:
        meta.state_type_id = 0  # XLA_FFI_UNKNOWN_TYPE_ID: a stateless handler


def _handler(frame_address: int) -> int:
    """``XLA_FFI_Error* handler(XLA_FFI_CallFrame*)``.

    Must never raise: ctypes would print the exception and return NULL, which XLA
    reads as success with unwritten results.
    """
    try:
        frame = _CallFrame.from_address(frame_address)
        api = frame.api
    except BaseException:  # noqa: BLE001 - nothing readable: nothing to report through
        return 0
    try:
        if frame.struct_size < _CALLFRAME_SIZE:
            raise RuntimeError(f"XLA_FFI_CallFrame has struct_size {frame.struct_size}; expected >= {_CALLFRAME_SIZE}")
        if frame.extension_start and frame.extension_start.contents.type == _EXTENSION_METADATA:
            _answer_metadata(frame.extension_start.contents)
            return 0
        if frame.stage != _STAGE_EXECUTE:
            raise RuntimeError(f"called in execution stage {frame.stage}; only EXECUTE (3) is supported")
        _execute(frame)
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure must reach XLA as an error
        code = next(c for types, c in _ERROR_CODES if isinstance(exc, types))
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
        message = f"ssmcore host call failed: {type(exc).__name__}: {exc}\n{text}"
        try:
            return _make_error(api, code, message)
        except BaseException:  # noqa: BLE001 - the self-test exercises this path, so not expected
            print(f"{message}\nssmcore: could not report this error to XLA; the call's results are invalid",
                  file=sys.__stderr__)
            return 0


_HANDLER_T = _c.CFUNCTYPE(_c.c_void_p, _c.c_void_p)
_HANDLER = _HANDLER_T(_handler)  # module global: XLA holds only the raw pointer
_TARGET = f"ssmcore_host_call_{secrets.token_hex(6)}"  # see "How it works": per-process name


def _register() -> None:
    global _VERSION
    version = header_version()
    if version is None:
        raise RuntimeError("could not read XLA_FFI_API_MAJOR/MINOR from jax.ffi.include_dir()/xla/ffi/api/c_api.h")
    if version[0] != _ABI_MAJOR:
        raise RuntimeError(f"XLA FFI API version {version[0]}.{version[1]}; this handler mirrors major {_ABI_MAJOR}")
    _VERSION = version
    if not _STATE["registered"]:  # XLA keeps a registration for the life of the process
        pointer = _c.cast(_HANDLER, _c.CFUNCTYPE(None))
        jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(pointer), platform="cpu", api_version=1)
        _STATE["registered"] = True


# ----------------------------------------------------------------------------- self-test and state
class _SelfTestError(Exception):
    pass


def _probe(a: np.ndarray, b: np.ndarray, c: np.ndarray, e: np.ndarray) -> tuple:
    # Dtypes that exist whether or not jax_enable_x64 is on.
    return a * np.float32(2), (b.sum() * np.complex64(1j) + c).astype(np.complex64), e + np.float32(1), \
        np.asarray(c.ndim, np.int32)


def _failing_probe(a: np.ndarray) -> tuple:
    raise _SelfTestError("ssmcore ffi self-test error")


def _self_test() -> None:
    """Run a few host calls through the FFI on the CPU device; raise if anything is off."""
    cpu = jax.devices("cpu")[0]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 3)).astype(np.float32)
    b = (rng.standard_normal(4) + 1j * rng.standard_normal(4)).astype(np.complex64)
    c = np.asarray(0.25 - 0.5j, np.complex64)
    e = np.zeros((0, 3), np.float32)
    expected = _probe(a, b, c, e)
    structs = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in expected)
    # First use is usually while tracing a caller: ensure_compile_time_eval runs the probes now
    # instead of staging them into the caller's program.
    with jax.ensure_compile_time_eval(), jax.transfer_guard("allow"), jax.default_device(cpu):
        got = jax.jit(lambda *xs: _ffi_call(_probe, structs, xs, "sequential"))(a, b, c, e)
        for g, x in zip(got, expected, strict=True):
            if g.dtype != x.dtype or g.shape != x.shape or not np.array_equal(np.asarray(g), x):
                raise RuntimeError(f"self-test result mismatch: got {g!r}, expected {x!r}")
        one = (jax.ShapeDtypeStruct((2, 3), np.float32),)
        try:
            jax.block_until_ready(jax.jit(lambda x: _ffi_call(_failing_probe, one, (x,), "sequential"))(a))
        except Exception as exc:  # JaxRuntimeError: its class moved between jaxlib versions
            if "ssmcore ffi self-test error" not in str(exc):
                raise RuntimeError(f"self-test error lost its message: {exc}") from exc
        else:
            raise RuntimeError("self-test: an exception in the host function did not propagate")


_STATE: dict[str, Any] = {"ok": None, "why": None, "registered": False}  # ok None: not decided yet
_STATE_LOCK = threading.RLock()


def ffi_available() -> bool:
    """Whether :func:`host_call` uses the FFI path (decides, registers and self-tests on first call).

    Returns False when ``SSMCORE_JAX_CALLBACK=pure_callback``, when there is no CPU
    backend, and after a failed ABI check or self-test (which also warns once).
    """
    mode = os.environ.get(ENV_VAR, "ffi").strip().lower()
    if mode == "pure_callback":
        return False
    if mode not in ("", "ffi", "auto"):
        raise ValueError(f"ssmcore.jax: environment variable {ENV_VAR}={mode!r}; expected 'ffi' or 'pure_callback'")
    if _STATE["ok"] is None:
        with _STATE_LOCK:
            if _STATE["ok"] is None:
                _decide()
    return _STATE["ok"]


def _decide() -> None:
    if not hasattr(jax, "ffi") or not hasattr(jax.ffi, "ffi_call"):
        _STATE.update(ok=False, why="jax.ffi is not available")  # an old JAX: quietly unsupported
        return
    try:
        jax.devices("cpu")
    except RuntimeError:
        _STATE.update(ok=False, why="no CPU backend")
        return
    try:
        _register()
        _self_test()  # calls _ffi_call directly: the state stays undecided until it passes
        _STATE["ok"] = True
    except Exception as exc:  # noqa: BLE001 - any failure means: use the slow, safe path
        _STATE.update(ok=False, why=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        warnings.warn(f"ssmcore.jax: the fast XLA FFI host-call path is disabled ({_STATE['why']}); "
                      f"falling back to jax.pure_callback (slower, same results)", RuntimeWarning, stacklevel=3)


# ----------------------------------------------------------------------------- public entry point
def _handle(host_fn: Callable[..., Any]) -> int:
    handle = _HANDLES.get(host_fn)
    if handle is None:
        with _TABLE_LOCK:
            handle = _HANDLES.get(host_fn)
            if handle is None:
                handle = _HANDLES[host_fn] = len(_HOSTS)
                _HOSTS.append(host_fn)
    return handle


def _ffi_call(host_fn: Callable[..., Any], structs: Any, args: tuple, vmap_method: str) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(structs)
    call = jax.ffi.ffi_call(_TARGET, leaves, vmap_method=vmap_method)
    return jax.tree_util.tree_unflatten(treedef, call(*args, handle=np.int64(_handle(host_fn))))


def host_call(host_fn: Callable[..., Any], result_shape_dtypes: Any, *args: Any,
              vmap_method: str = "expand_dims") -> Any:
    """Call a pure host function from JAX: ``jax.pure_callback`` semantics, FFI speed on CPU.

    Parameters
    ----------
    host_fn : callable
        ``host_fn(*arrays)`` returning arrays in the structure of
        ``result_shape_dtypes`` with exactly those shapes and dtypes. It receives
        NumPy arrays (FFI path: views of XLA's buffers, valid during the call
        only; do not modify them or keep references) or CPU ``jax.Array``s
        (fallback path). It must be pure and long-lived: each distinct function
        object is registered once for the life of the process.
    result_shape_dtypes : pytree of jax.ShapeDtypeStruct
        Shapes and dtypes of the results.
    *args : array_like
        The arrays passed to ``host_fn``.
    vmap_method : str
        As for ``jax.pure_callback`` (default ``"expand_dims"``).

    Returns
    -------
    pytree of jax.Array
        The results, structured like ``result_shape_dtypes``.

    Notes
    -----
    On CPU the call goes through ``jax.ffi.ffi_call`` (see the module docstring);
    on other platforms, with ``SSMCORE_JAX_CALLBACK=pure_callback``, or when the
    FFI self-test failed, through ``jax.pure_callback``.
    """
    if not ffi_available():
        return jax.pure_callback(host_fn, result_shape_dtypes, *args, vmap_method=vmap_method)

    def on_cpu(*xs: Any) -> Any:
        return _ffi_call(host_fn, result_shape_dtypes, xs, vmap_method)

    def elsewhere(*xs: Any) -> Any:
        return jax.pure_callback(host_fn, result_shape_dtypes, *xs, vmap_method=vmap_method)

    # Only the branch of the platform being compiled for is lowered (no runtime switch).
    return jax.lax.platform_dependent(*args, cpu=on_cpu, default=elsewhere)
