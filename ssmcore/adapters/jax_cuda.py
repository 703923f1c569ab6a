"""JAX on the GPU: ssmcore ops as CUDA-platform XLA FFI calls into the CuPy kernels, on XLA's stream.

:func:`device_call` is :func:`ssmcore.adapters.jax_ffi.host_call`'s twin for
the CUDA platform: under ``jax.jit`` a jax.Array on a GPU reaches the op as a
CuPy array viewing XLA's own device buffer, the op's CuPy kernels run on XLA's
CUDA stream, and the results are written into XLA's result buffers on that
stream. Nothing is synchronised and nothing crosses to the host.

How it works
------------
* One XLA FFI handler (typed FFI, ``api_version=1``) is registered for the
  ``CUDA`` platform under a per-process name, lazily at the first trace on a
  machine whose JAX has a GPU backend. Like the CPU handler it is a
  ``ctypes.CFUNCTYPE`` callback written in Python that reads the
  ``XLA_FFI_CallFrame`` through the ctypes mirrors of ``c_api.h`` in
  :mod:`ssmcore.adapters.jax_ffi`.
* The handler asks XLA for the call's ``CUstream`` with the API's
  ``XLA_FFI_Stream_Get`` and for its device with ``XLA_FFI_DeviceOrdinal_Get``
  (function pointers in ``XLA_FFI_Api``, mirrored here), wraps every argument
  buffer as a CuPy array (``cupy.cuda.UnownedMemory`` + ``MemoryPointer``: no
  copy, no ownership), makes that stream CuPy's current stream and runs the
  device function: the op's public function (forward) or ``fwd`` then ``bwd``
  (backward) -- the same core functions the CPU path runs, dispatched by the
  core to its CuPy kernels because the inputs are CuPy arrays.
* Results: while the op runs, CuPy's allocator is one that hands out XLA's
  result buffers themselves to allocations of exactly their size (each buffer
  to one live allocation at a time; everything else comes from CuPy's memory
  pool). An op whose kernel allocates its output once (the scan launchers do)
  therefore writes straight into XLA's buffer and no copy follows. A result
  that ended up elsewhere (a view, a stacked vmap batch, a cast) is copied
  device-to-device into its XLA buffer on the same stream: one extra read and
  write of that result (about 2 x its bytes / 4 TB/s on an H200 plus a launch,
  ~16 us for 16 MiB). An op that keeps a lent buffer past the call (a cache of
  device arrays) would leave data in memory XLA reuses: the call then fails
  with a RuntimeError instead.
* Which device function to run is a table index, the scalar FFI attribute
  ``handle``, as on CPU. Ops are not written here one by one: :mod:`ssmcore.jax`
  builds the device functions from the registry for every op whose registered
  backends include ``"cupy"`` (:func:`ssmcore.dispatch.capabilities`).
* Scratch memory: the op's temporaries come from CuPy's memory pool, next to
  the memory XLA preallocates (75 % of the GPU by default). Large problems may
  need ``XLA_PYTHON_CLIENT_MEM_FRACTION`` lowered or
  ``XLA_PYTHON_CLIENT_PREALLOCATE=false``.

Ops without a CuPy kernel
-------------------------
On GPU arrays they raise :class:`ssmcore.dispatch.UnsupportedBackendError`
(eagerly when the inputs are concrete GPU arrays, from the compiled program
under ``jit``). With the environment variable ``SSMCORE_JAX_GPU_FALLBACK=host``
(read at trace time) they run through ``jax.pure_callback`` on the host
instead -- a device-to-host round trip -- and warn once per op.

ABI guard and fallback
----------------------
Before registering, the header jaxlib ships (``jax.ffi.include_dir()``) is
read: the FFI API major version must be the mirrored one, and the field order
of every mirrored struct (``XLA_FFI_Api`` up to ``XLA_FFI_DeviceOrdinal_Get``,
the call frame, buffers, argument lists, stream and device-ordinal queries) is
checked against the header text (:func:`layout_problems`); at run time every
``struct_size`` is checked. Then a self-test runs a small device function
through the target under ``jax.jit`` on the first GPU and checks an error
propagates. If any of this fails -- or CuPy is missing, or
``SSMCORE_JAX_CALLBACK=pure_callback`` is set -- GPU calls use
``jax.pure_callback`` (a host round trip, same results) and one warning says why.
"""

from __future__ import annotations

import ctypes as _c
import os
import re
import secrets
import sys
import threading
import traceback
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from . import jax_ffi as _ffi
from .jax_ffi import _ApiVersion, _Buffer, _CallFrame, _ExtensionBase

__all__ = ["FALLBACK_ENV_VAR", "cuda_available", "device_call", "host_fallback_enabled", "layout_problems"]

#: ``host`` lets ops without a CuPy kernel run on GPU arrays through a host round trip.
FALLBACK_ENV_VAR = "SSMCORE_JAX_GPU_FALLBACK"


# ----------------------------------------------------------------------------- C API mirror (CUDA part)
class _ApiFunctions(_c.Structure):
    """Prefix of ``XLA_FFI_Api`` up to ``XLA_FFI_DeviceOrdinal_Get`` (function pointers as integers)."""

    _fields_ = [
        ("struct_size", _c.c_size_t),
        ("extension_start", _c.c_void_p),
        ("api_version", _ApiVersion),
        ("internal_api", _c.c_void_p),
        ("XLA_FFI_Error_Create", _c.c_void_p),
        ("XLA_FFI_Error_GetMessage", _c.c_void_p),
        ("XLA_FFI_Error_Destroy", _c.c_void_p),
        ("XLA_FFI_Handler_Register", _c.c_void_p),
        ("XLA_FFI_Stream_Get", _c.c_void_p),
        ("XLA_FFI_Type_Register", _c.c_void_p),
        ("XLA_FFI_ExecutionContext_Get", _c.c_void_p),
        ("XLA_FFI_State_Set", _c.c_void_p),
        ("XLA_FFI_State_Get", _c.c_void_p),
        ("XLA_FFI_DeviceMemory_Allocate", _c.c_void_p),
        ("XLA_FFI_DeviceMemory_Free", _c.c_void_p),
        ("XLA_FFI_ThreadPool_Schedule", _c.c_void_p),
        ("XLA_FFI_ThreadPool_NumThreads", _c.c_void_p),
        ("XLA_FFI_Future_Create", _c.c_void_p),
        ("XLA_FFI_Future_SetAvailable", _c.c_void_p),
        ("XLA_FFI_Future_SetError", _c.c_void_p),
        ("XLA_FFI_RunId_Get", _c.c_void_p),
        ("XLA_FFI_DeviceOrdinal_Get", _c.c_void_p),
    ]


class _StreamGetArgs(_c.Structure):
    _fields_ = [
        ("struct_size", _c.c_size_t),
        ("extension_start", _c.c_void_p),
        ("ctx", _c.c_void_p),
        ("stream", _c.c_void_p),  # out: CUstream
    ]


class _DeviceOrdinalGetArgs(_c.Structure):
    _fields_ = [
        ("struct_size", _c.c_size_t),
        ("extension_start", _c.c_void_p),
        ("ctx", _c.c_void_p),
        ("device_ordinal", _c.c_int32),  # out
    ]


_API_FUNCTIONS_SIZE = _ffi._struct_size(_ApiFunctions, "XLA_FFI_DeviceOrdinal_Get")
_STREAM_GET_T = _c.CFUNCTYPE(_c.c_void_p, _c.POINTER(_StreamGetArgs))
_ORDINAL_GET_T = _c.CFUNCTYPE(_c.c_void_p, _c.POINTER(_DeviceOrdinalGetArgs))

#: header struct name -> (ctypes mirror, how many leading header fields the mirror must match).
_MIRRORS: dict[str, type] = {
    "XLA_FFI_Api": _ApiFunctions,
    "XLA_FFI_Stream_Get_Args": _StreamGetArgs,
    "XLA_FFI_DeviceOrdinal_Get_Args": _DeviceOrdinalGetArgs,
    "XLA_FFI_CallFrame": _CallFrame,
    "XLA_FFI_Buffer": _Buffer,
    "XLA_FFI_Args": _ffi._Args,
    "XLA_FFI_Rets": _ffi._Rets,
    "XLA_FFI_Attrs": _ffi._Attrs,
    "XLA_FFI_Error_Create_Args": _ffi._ErrorCreateArgs,
    "XLA_FFI_Metadata": _ffi._Metadata,
    "XLA_FFI_Extension_Base": _ExtensionBase,
}


def header_text() -> str | None:
    """The text of ``jax.ffi.include_dir()/xla/ffi/api/c_api.h``, or None if it cannot be read."""
    try:
        return (Path(jax.ffi.include_dir()) / "xla" / "ffi" / "api" / "c_api.h").read_text()
    except (AttributeError, OSError):
        return None


def struct_fields(text: str, name: str) -> list[str] | None:
    """Field names of ``struct name { ... };`` in the header text, in order (None if absent)."""
    m = re.search(r"^(?:typedef\s+)?struct\s+" + re.escape(name) + r"\s*\{(.*?)^\}\s*\w*\s*;", text, re.S | re.M)
    if m is None:
        return None
    body = re.sub(r"//[^\n]*", "", m.group(1))
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    fields = []
    for stmt in body.split(";"):
        stmt = stmt.strip()
        if not stmt:
            continue
        macro = re.fullmatch(r"_XLA_FFI_API_STRUCT_FIELD\((\w+)\)", stmt)
        if macro:  # the API table's function pointers: the field is named after its type
            fields.append(macro.group(1))
            continue
        ident = re.findall(r"\w+", stmt)
        if ident:
            fields.append(ident[-1])
    return fields


def layout_problems(text: str) -> list[str]:
    """Differences between the ctypes mirrors and the header text; empty when they agree.

    The header's versioning policy only appends fields within a major version,
    so each mirror must be a *prefix* of the header's struct (the handler then
    also checks ``struct_size`` at run time).
    """
    problems = []
    version = re.search(r"#define\s+XLA_FFI_API_MAJOR\s+(\d+)", text)
    if version is None:
        problems.append("XLA_FFI_API_MAJOR not found")
    elif int(version.group(1)) != _ffi._ABI_MAJOR:
        problems.append(f"XLA_FFI_API_MAJOR is {version.group(1)}; the mirror is of major {_ffi._ABI_MAJOR}")
    for name, mirror in _MIRRORS.items():
        header = struct_fields(text, name)
        mine = [f[0] for f in mirror._fields_]
        if name == "XLA_FFI_Metadata":  # state_type_id is written only when XLA's struct_size says it exists
            mine = mine[:-1]
        if header is None:
            problems.append(f"struct {name} not found in the header")
        elif header[: len(mine)] != mine:
            problems.append(f"struct {name}: header fields {header[: len(mine)]}, mirrored {mine}")
    return problems


# ----------------------------------------------------------------------------- the CuPy side
class _StreamRef:
    """A raw ``CUstream`` speaking the CUDA stream protocol (for ``cupy.cuda.Stream.from_external``)."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.ptr)


class _Lease:
    """Owner object of one handed-out XLA result buffer; its death frees the slot for reuse."""

    __slots__ = ("__weakref__",)


class _ResultAllocator:
    """A CuPy allocator that serves XLA's result buffers to allocations of exactly their size.

    Each buffer is lent to one live allocation at a time (the CuPy memory holds
    a :class:`_Lease`; once it is collected the buffer may be lent again), so
    two live arrays never share it. All work runs in order on one stream, so a
    temporary that borrowed a buffer is dead before anything later overwrites
    it. Other sizes come from ``fallback`` (CuPy's pool).
    """

    def __init__(self, cp: Any, slots: list[tuple[int, int]], device: int, fallback: Callable[[int], Any]) -> None:
        self.cp, self.slots, self.device, self.fallback = cp, slots, device, fallback
        self.leases: list[Any] = [None] * len(slots)

    def __call__(self, size: int) -> Any:
        for k, (ptr, nbytes) in enumerate(self.slots):
            if nbytes == size and size and (self.leases[k] is None or self.leases[k]() is None):
                lease = _Lease()
                self.leases[k] = weakref.ref(lease)
                mem = self.cp.cuda.UnownedMemory(ptr, size, lease, self.device)
                return self.cp.cuda.MemoryPointer(mem, 0)
        return self.fallback(size)

    def outstanding(self) -> int:
        """How many lent buffers are still held.

        Once the call's results are dropped this must be 0: an array the op kept (a
        cache) would otherwise live in memory XLA reuses.
        """
        return sum(1 for lease in self.leases if lease is not None and lease() is not None)


class CupyBridge:
    """How XLA's device buffers meet the core: CuPy views, XLA's stream, result buffers as outputs.

    The CPU tests substitute a NumPy stand-in with the same methods to run the
    handler on a fake call frame.
    """

    def __init__(self) -> None:
        self._cp: Any = None
        self._streams: dict[tuple[int, int], Any] = {}

    @property
    def xp(self) -> Any:
        if self._cp is None:
            import cupy

            self._cp = cupy
        return self._cp

    def view(self, ptr: int, shape: tuple, dtype: np.dtype, device: int) -> Any:
        """A CuPy array on XLA's buffer (no copy; XLA keeps it alive for the call)."""
        cp = self.xp
        if not ptr or 0 in shape:
            with cp.cuda.Device(device):
                return cp.empty(shape, dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        mem = cp.cuda.UnownedMemory(ptr, nbytes, None, device)
        return cp.ndarray(shape, dtype, cp.cuda.MemoryPointer(mem, 0))

    def stream(self, ptr: int, device: int) -> Any:
        key = (device, ptr)
        s = self._streams.get(key)
        if s is None:
            cp = self.xp
            with cp.cuda.Device(device):
                from_external = getattr(cp.cuda.Stream, "from_external", None)
                s = from_external(_StreamRef(ptr)) if from_external is not None else cp.cuda.ExternalStream(ptr, device)
            if len(self._streams) > 64:  # XLA uses a few streams per device
                self._streams.clear()
            self._streams[key] = s
        return s

    def run(self, fn: Callable[..., tuple], args: list, slots: list[tuple[int, int]], stream: int,
            device: int) -> tuple[list, Callable[[], int]]:
        """Run ``fn`` with CuPy's device, stream and the result allocator set.

        Returns the results as a list and a function counting the XLA result
        buffers still lent out (see :meth:`_ResultAllocator.outstanding`).
        """
        cp = self.xp
        pool = cp.get_default_memory_pool().malloc
        alloc = _ResultAllocator(cp, slots, device, pool)
        with cp.cuda.Device(device), self.stream(stream, device), cp.cuda.using_allocator(alloc):
            return list(fn(*args)), alloc.outstanding

    def place(self, results: list, targets: list, slots: list[tuple[int, int]], stream: int, device: int) -> None:
        """Put each result into its XLA buffer (a copy on XLA's stream unless it is already there)."""
        cp = self.xp
        with cp.cuda.Device(device), self.stream(stream, device):
            place_results(results, targets, slots, _address, cp.copyto, lambda x: cp.array(x, copy=True))


def _address(x: Any) -> int:
    """Device address of a CuPy array's first element (data pointer)."""
    return int(x.data.ptr)


def place_results(results: list, targets: list, slots: list[tuple[int, int]], address: Callable[[Any], int],
                  copyto: Callable[[Any, Any], None], fresh: Callable[[Any], Any]) -> list[bool]:
    """Write ``results[k]`` into ``targets[k]`` (a view of slot k), skipping those already in place.

    A result already *is* its target when it is C-contiguous, of the target's
    shape and dtype and starts at the slot's address. A result living inside
    another slot is first moved to fresh memory, so no copy overwrites a
    result not yet written out. Returns, per result, whether it was copied.
    """
    def inside(x: Any) -> int | None:
        if x.size == 0:
            return None
        a = address(x)
        return next((j for j, (ptr, n) in enumerate(slots) if ptr <= a < ptr + n), None)

    done = [bool(r.flags.c_contiguous and r.shape == t.shape and r.dtype == t.dtype and r.size
                 and address(r) == slots[k][0]) for k, (r, t) in enumerate(zip(results, targets))]
    results = list(results)
    for k, r in enumerate(results):
        if not done[k] and inside(r) is not None:
            results[k] = fresh(r)
    for k, (r, t) in enumerate(zip(results, targets)):
        if done[k] or t.size == 0:
            continue
        if r.shape != t.shape or r.dtype != t.dtype:
            raise ValueError(f"device_call: result {k} has shape {r.shape} and dtype {r.dtype}; expected shape "
                             f"{t.shape} and dtype {t.dtype}")
        copyto(t, r)
    return [not d for d in done]


BRIDGE: Any = CupyBridge()

# ----------------------------------------------------------------------------- the handler
_DEVICE_FNS: list[Callable[..., tuple]] = []
_DEVICE_HANDLES: dict[Callable[..., tuple], int] = {}
_TABLE_LOCK = threading.Lock()


def _api_functions(api_address: int) -> _ApiFunctions:
    api = _ApiFunctions.from_address(api_address)
    if api.struct_size < _API_FUNCTIONS_SIZE:
        raise RuntimeError(f"XLA_FFI_Api has struct_size {api.struct_size}; expected >= {_API_FUNCTIONS_SIZE}")
    return api


def _check_error(err: int | None, what: str) -> None:
    if err:  # an XLA_FFI_Error*: we cannot read it portably; XLA owns it (leaked, as a failure is fatal here)
        raise RuntimeError(f"{what} failed")


def _stream_of(api: _ApiFunctions, ctx: int) -> int:
    args = _StreamGetArgs(_c.sizeof(_StreamGetArgs), None, ctx, None)
    _check_error(_STREAM_GET_T(api.XLA_FFI_Stream_Get)(_c.byref(args)), "XLA_FFI_Stream_Get")
    return int(args.stream or 0)


def _ordinal_of(api: _ApiFunctions, ctx: int) -> int:
    if not api.XLA_FFI_DeviceOrdinal_Get:
        return 0
    args = _DeviceOrdinalGetArgs(_c.sizeof(_DeviceOrdinalGetArgs), None, ctx, 0)
    _check_error(_ORDINAL_GET_T(api.XLA_FFI_DeviceOrdinal_Get)(_c.byref(args)), "XLA_FFI_DeviceOrdinal_Get")
    return int(args.device_ordinal)


def _buffer(address: int) -> tuple[int, tuple, np.dtype]:
    buf = _Buffer.from_address(address)
    if buf.struct_size < _ffi._BUFFER_SIZE:
        raise RuntimeError(f"XLA_FFI_Buffer has struct_size {buf.struct_size}; expected >= {_ffi._BUFFER_SIZE}")
    entry = _ffi._DTYPES.get(buf.dtype)
    if entry is None:
        raise TypeError(f"unsupported XLA_FFI_DataType {buf.dtype}")
    shape = tuple(buf.dims[: buf.rank]) if buf.rank else ()
    return int(buf.data or 0), shape, entry[0]


def _execute(frame: _CallFrame) -> None:
    fn = _DEVICE_FNS[_ffi._handle_attr(frame.attrs)]
    args, rets = frame.args, frame.rets
    n_args, n_rets = args.size, rets.size
    if args.types[:n_args].count(_ffi._BUFFER_TYPE) != n_args or rets.types[:n_rets].count(_ffi._BUFFER_TYPE) != n_rets:
        raise RuntimeError("every argument and result must be a buffer")
    api = _api_functions(frame.api)
    stream, device = _stream_of(api, frame.ctx), _ordinal_of(api, frame.ctx)
    br = BRIDGE
    ins = [br.view(*_buffer(a), device) for a in args.args[:n_args]]
    outs = [_buffer(r) for r in rets.rets[:n_rets]]
    slots = [(ptr, int(np.prod(shape, dtype=np.int64)) * dt.itemsize) for ptr, shape, dt in outs]
    targets = [br.view(ptr, shape, dt, device) for ptr, shape, dt in outs]
    results, outstanding = br.run(fn, ins, slots, stream, device)
    if len(results) != n_rets:
        raise ValueError(f"device_call: {_ffi._name(fn)} returned {len(results)} arrays; expected {n_rets}")
    br.place(results, targets, slots, stream, device)
    del results, targets, ins
    if outstanding():
        raise RuntimeError(f"device_call: {_ffi._name(fn)} kept a reference to an array it allocated during the "
                           "call; that memory is XLA's result buffer, which XLA reuses after the call")


def _handler(frame_address: int) -> int:
    """``XLA_FFI_Error* handler(XLA_FFI_CallFrame*)`` for the CUDA platform; never raises."""
    try:
        frame = _CallFrame.from_address(frame_address)
        api = frame.api
    except BaseException:  # noqa: BLE001
        return 0
    try:
        if frame.struct_size < _ffi._CALLFRAME_SIZE:
            raise RuntimeError(f"XLA_FFI_CallFrame has struct_size {frame.struct_size}; "
                               f"expected >= {_ffi._CALLFRAME_SIZE}")
        if frame.extension_start and frame.extension_start.contents.type == _ffi._EXTENSION_METADATA:
            _ffi._answer_metadata(frame.extension_start.contents)
            return 0
        if frame.stage != _ffi._STAGE_EXECUTE:
            raise RuntimeError(f"called in execution stage {frame.stage}; only EXECUTE (3) is supported")
        _execute(frame)
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure must reach XLA as an error
        code = next(c for types, c in _ffi._ERROR_CODES if isinstance(exc, types))
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
        message = f"ssmcore device call failed: {type(exc).__name__}: {exc}\n{text}"
        try:
            return _ffi._make_error(api, code, message)
        except BaseException:  # noqa: BLE001
            print(f"{message}\nssmcore: could not report this error to XLA", file=sys.__stderr__)
            return 0


_HANDLER = _ffi._HANDLER_T(_handler)  # module global: XLA holds only the raw pointer
TARGET = f"ssmcore_cuda_call_{secrets.token_hex(6)}"  # per process, as on CPU


def device_handle(fn: Callable[..., tuple]) -> int:
    """The table index of device function ``fn`` (registered once for the life of the process)."""
    handle = _DEVICE_HANDLES.get(fn)
    if handle is None:
        with _TABLE_LOCK:
            handle = _DEVICE_HANDLES.get(fn)
            if handle is None:
                handle = _DEVICE_HANDLES[fn] = len(_DEVICE_FNS)
                _DEVICE_FNS.append(fn)
    return handle


# ----------------------------------------------------------------------------- registration and self-test
_STATE: dict[str, Any] = {"ok": None, "why": None, "registered": False}
_STATE_LOCK = threading.RLock()


def gpu_backend() -> bool:
    """Whether this JAX has a CUDA GPU backend (never raises)."""
    try:
        return any(d.platform == "gpu" for d in jax.devices("gpu"))
    except Exception:  # noqa: BLE001 - no GPU plugin, or it failed to initialise
        return False


def register() -> None:
    """Check the header and register the CUDA target (idempotent; raises with the reason on failure)."""
    text = header_text()
    if text is None:
        raise RuntimeError("could not read jax.ffi.include_dir()/xla/ffi/api/c_api.h")
    problems = layout_problems(text)
    if problems:
        raise RuntimeError("the XLA FFI header does not match ssmcore's mirror: " + "; ".join(problems))
    version = _ffi.header_version()
    if _ffi._VERSION == (0, 0):  # the metadata answer reports the header's version (shared with the CPU handler)
        _ffi._VERSION = version
    if not _STATE["registered"]:
        pointer = _c.cast(_HANDLER, _c.CFUNCTYPE(None))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(pointer), platform="CUDA", api_version=1)
        _STATE["registered"] = True


def _probe(x: Any, y: Any) -> tuple:
    return x * 2, (y + 1).astype(y.dtype), x.sum(axis=-1)  # the first result is written in place by the allocator


def _failing(x: Any) -> tuple:
    raise ValueError("ssmcore cuda self-test error")


def _self_test() -> None:
    gpu = jax.devices("gpu")[0]
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = np.arange(5, dtype=np.complex64)
    expected = (x * 2, y + 1, x.sum(-1))
    structs = tuple(jax.ShapeDtypeStruct(e.shape, e.dtype) for e in expected)
    with jax.ensure_compile_time_eval(), jax.transfer_guard("allow"), jax.default_device(gpu):
        got = jax.jit(lambda a, b: _cuda_call(_probe, structs, (a, b), "sequential"))(x, y)
        for g, e in zip(got, expected, strict=True):
            if not np.array_equal(np.asarray(g), e):
                raise RuntimeError(f"self-test result mismatch: got {g!r}, expected {e!r}")
        try:
            jax.block_until_ready(jax.jit(lambda a: _cuda_call(_failing, structs[:1], (a,), "sequential"))(x))
        except Exception as exc:  # noqa: BLE001
            if "ssmcore cuda self-test error" not in str(exc):
                raise RuntimeError(f"self-test error lost its message: {exc}") from exc
        else:
            raise RuntimeError("self-test: an exception in the device function did not propagate")


def cuda_available() -> bool:
    """Whether GPU calls take the CUDA FFI path (decides, registers and self-tests on first call).

    False without a JAX GPU backend, without CuPy, with
    ``SSMCORE_JAX_CALLBACK=pure_callback``, and after a failed header check or
    self-test (which also warns once).
    """
    if os.environ.get(_ffi.ENV_VAR, "ffi").strip().lower() == "pure_callback":
        return False
    if _STATE["ok"] is None:
        with _STATE_LOCK:
            if _STATE["ok"] is None:
                _decide()
    return _STATE["ok"]


def _decide() -> None:
    if not gpu_backend():
        _STATE.update(ok=False, why="this JAX has no GPU backend")  # quietly: nothing runs on a GPU
        return
    try:
        BRIDGE.xp  # noqa: B018 - imports CuPy
        register()
        _self_test()
        _STATE["ok"] = True
    except Exception as exc:  # noqa: BLE001
        _STATE.update(ok=False, why=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        warnings.warn(f"ssmcore.jax: the CUDA XLA FFI path is disabled ({_STATE['why']}); GPU arrays go through "
                      f"jax.pure_callback (a host round trip: slower, same results)", RuntimeWarning, stacklevel=3)


# ----------------------------------------------------------------------------- public entry point
def host_fallback_enabled() -> bool:
    """Whether ops without a CuPy kernel may run GPU arrays through the host (``SSMCORE_JAX_GPU_FALLBACK``)."""
    mode = os.environ.get(FALLBACK_ENV_VAR, "").strip().lower()
    if mode not in ("", "0", "off", "error", "host", "1", "on"):
        raise ValueError(f"ssmcore.jax: environment variable {FALLBACK_ENV_VAR}={mode!r}; expected 'host' or unset")
    return mode in ("host", "1", "on")


def _cuda_call(device_fn: Callable[..., tuple], structs: Any, args: tuple, vmap_method: str) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(structs)
    call = jax.ffi.ffi_call(TARGET, leaves, vmap_method=vmap_method)
    return jax.tree_util.tree_unflatten(treedef, call(*args, handle=np.int64(device_handle(device_fn))))


_WARNED: set[str] = set()


def _warn_once(fn: Callable[..., Any], what: str) -> Callable[..., Any]:
    """``fn`` wrapped to warn, the first time it actually runs, that ``what`` took the host round trip."""
    def run(*arrays: Any) -> Any:
        if what not in _WARNED:
            _WARNED.add(what)
            warnings.warn(f"ssmcore.jax.{what}: no CuPy kernel; GPU arrays go through the host "
                          f"({FALLBACK_ENV_VAR}=host)", RuntimeWarning, stacklevel=2)
        return fn(*arrays)

    run.__qualname__ = f"host_fallback[{_ffi._name(fn)}]"
    return run


_FALLBACKS: dict[tuple[int, str], Callable[..., Any]] = {}


def device_call(host_fn: Callable[..., Any], device_fn: Callable[..., tuple] | None,
                unsupported: Callable[[], Exception], result_shape_dtypes: Any, *args: Any, name: str,
                vmap_method: str = "expand_dims") -> Any:
    """An op call lowered per platform: CPU -> host FFI, CUDA -> the CuPy kernels on XLA's stream.

    Parameters
    ----------
    host_fn : callable
        The host function (NumPy arrays in and out), as for :func:`ssmcore.adapters.jax_ffi.host_call`.
    device_fn : callable or None
        The same computation on CuPy arrays, returning a tuple of CuPy arrays in
        the order of ``result_shape_dtypes``; None when the op has no CuPy kernel.
    unsupported : callable
        Builds the uniform :class:`~ssmcore.dispatch.UnsupportedBackendError` raised on GPU when
        ``device_fn`` is None and the host fallback is off.
    result_shape_dtypes : pytree of jax.ShapeDtypeStruct
    *args : jax.Array
    name : str
        The op's name (for the fallback's warning).
    vmap_method : str
        Passed to ``ffi_call`` / ``pure_callback``.

    Notes
    -----
    Every branch is traced; only the one of the platform being compiled for is
    lowered, so the CUDA branch costs nothing on a CPU-only machine.
    """
    cpu = _ffi.ffi_available()

    def on_cpu(*xs: Any) -> Any:
        return _ffi._ffi_call(host_fn, result_shape_dtypes, xs, vmap_method)

    def via_host(fn: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *xs: jax.pure_callback(fn, result_shape_dtypes, *xs, vmap_method=vmap_method)

    branches: dict[str, Callable[..., Any]] = {}
    if cpu:
        branches["cpu"] = on_cpu
    if device_fn is None:
        if host_fallback_enabled():
            key = (id(host_fn), name)
            fb = _FALLBACKS.get(key)
            if fb is None:
                fb = _FALLBACKS[key] = _warn_once(host_fn, name)
            branches["cuda"] = via_host(fb)
        else:
            branches["cuda"] = via_host(_raiser(unsupported))
    elif cuda_available():
        branches["cuda"] = lambda *xs: _cuda_call(device_fn, result_shape_dtypes, xs, vmap_method)
    if not branches:
        return jax.pure_callback(host_fn, result_shape_dtypes, *args, vmap_method=vmap_method)
    return jax.lax.platform_dependent(*args, default=via_host(host_fn), **branches)


_RAISERS: dict[Callable[[], Exception], Callable[..., Any]] = {}


def _raiser(make: Callable[[], Exception]) -> Callable[..., Any]:
    """A host function that raises ``make()`` (the compiled program reports it when it runs)."""
    fn = _RAISERS.get(make)
    if fn is None:
        def fn(*_: Any) -> Any:
            raise make()

        _RAISERS[make] = fn
    return fn
