"""Flush subnormals to zero inside ssmcore's Numba kernels, and only there.

Why: with round-to-nearest, ``x * a`` for the smallest subnormal ``x`` and any
``a > 0.5`` rounds back to ``x``, so a state, product or gradient that decays by
more than 0.5 per step never reaches zero once it is subnormal. Intel cores take
a microcode assist (about 100 cycles) for every operation on a subnormal, which
slows ssmcore's kernels down 3-70x on realistic inputs (measured, PLATFORM.md
section 7). AMD Zen cores do not stall; arm64 cores vary.

Mechanism: two Numba intrinsics, called by the kernels themselves.

* :func:`fp_enter` reads the floating-point control register of the thread it
  runs on, sets the flush bits (x86-64: MXCSR.FTZ, bit 15, and MXCSR.DAZ, bit 6;
  arm64: FPCR.FZ, bit 24, which flushes inputs and results) when flushing is on,
  and returns the old value.
* :func:`fp_exit` puts the flush bits back as they were in that old value
  (status bits, such as the sticky inexact/overflow flags, are left as the
  kernel's arithmetic set them, as without this module). Both write the register
  only when its value changes.

Every serial kernel that Python calls brackets its work with them, and every
``prange`` body does too, so each OpenMP/TBB worker thread sets and restores its
*own* register per unit of work: worker threads are persistent, and NumPy, SciPy
or PyTorch code that later runs on them (or on the calling thread) sees the flags
it had before. Nothing is set process-wide and nothing at import.

Cost: a bracket is two register reads and, with flushing on, two writes: about
0.11 us on AMD Zen 4 (0.03 us with flushing off; ``ldmxcsr`` is cheaper on Intel
cores). So a bracket must enclose at least tens of microseconds of work: a unit of
work is a channel, a block of channels, a time chunk or a row of a long recurrence,
and the ``prange`` loops over many small items (decode-step tasks, discretisation
rows, short filter channels) run :func:`fp_blocks` contiguous blocks with one
bracket each.

A parallel kernel never holds the calling thread's bracket open across a
``prange``: threads created when a parallel region starts inherit the creator's
MXCSR (Linux threads copy it; libgomp makes its team at the first region of each
calling thread) and TBB copies the launching thread's FP settings into its tasks,
so a team started while flushed would keep the flags after ssmcore returns (seen
in testing). The calling thread's serial work between two ``prange`` loops, where
it matters, has its own bracket closed before the next loop.

Other architectures: both intrinsics compile to nothing (no flushing).

Numba's cache does not see changes to this file from the kernels that use it (it
checks each kernel's own source file): after editing the code generation here,
clear the caches (``__pycache__/*.nbi|*.nbc`` or ``NUMBA_CACHE_DIR``).

The switch: flushing is on unless ``SSMCORE_FLUSH_SUBNORMALS=0`` (read when this
module is imported), and :func:`set_flush_subnormals` / :func:`flush_subnormals`
change it at run time. The setting lives in a C global (``_ssmcore_fpenv_mask``)
that the compiled kernels load at every call, resolved by symbol when a kernel is
compiled *or loaded from Numba's on-disk cache*, so ``cache=True`` never freezes
it. It is process-wide (one setting for all Python threads).

What flushing changes: results whose magnitude would be below the smallest
normal number (``np.finfo(dtype).tiny``: about 1.2e-38 in float32/complex64,
2.2e-308 in float64/complex128) become zero (FTZ), and subnormal inputs are read
as zero (DAZ), inside ssmcore's Numba kernels only. The sign of such a zero
follows the sign of the exact result. NaN and infinity are unchanged (they are
not subnormal). A result whose computation never meets a subnormal is bit-for-bit
what it was; one whose inputs or intermediates are subnormal differs from the IEEE
result by less than ``tiny`` in absolute terms (sums) or is 0 where a subnormal
factor was read as 0 (products).
Arithmetic that LLVM places outside the bracket (a few scalar operations before
the first or after the last store of a kernel) keeps gradual underflow, so a
result is either flushed or exact-IEEE, never anything else.

Exceptions: no bracket holds a ``raise`` (ssmcore validates in Python before
calling a kernel), so the restore always runs. Should an allocation inside a
bracket fail (``MemoryError`` raised from jitted code), that thread keeps the flush
bits; :func:`reset_thread` clears them on the calling thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform

import llvmlite.binding as llvm
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, register_jitable

__all__ = [
    "FLUSH_BITS",
    "MASK_SYMBOL",
    "flush_subnormals",
    "flush_subnormals_enabled",
    "fp_blocks",
    "fp_enter",
    "fp_exit",
    "fp_read",
    "read_thread",
    "reset_thread",
    "set_flush_subnormals",
]

MASK_SYMBOL = "_ssmcore_fpenv_mask"

_MACHINE = platform.machine().lower()
if _MACHINE in ("x86_64", "amd64"):
    _ARCH = "x86_64"
    FLUSH_BITS = (1 << 15) | (1 << 6)  # MXCSR.FTZ | MXCSR.DAZ
elif _MACHINE in ("aarch64", "arm64"):
    _ARCH = "aarch64"
    FLUSH_BITS = 1 << 24  # FPCR.FZ
else:
    _ARCH = "other"
    FLUSH_BITS = 0


def _env_default() -> bool:
    value = os.environ.get("SSMCORE_FLUSH_SUBNORMALS", "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def _mask_storage() -> ctypes.c_int64:
    """The C global the kernels read (int64: the bits to set; 0 = flushing off).

    Registered with LLVM before any kernel is compiled or loaded from the cache (the
    kernel modules import this module first). Allocated once per process and never
    freed, and found again by name if this module is imported a second time
    (``importlib.reload``, a test that clears ``sys.modules``): kernels compiled
    earlier keep reading the address they were linked against.
    """
    addr = llvm.address_of_symbol(MASK_SYMBOL)
    if not addr:
        malloc = ctypes.pythonapi.PyMem_RawMalloc
        malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        addr = malloc(8)
        if not addr:
            raise MemoryError("ssmcore: cannot allocate the subnormal-flushing switch")
        llvm.add_symbol(MASK_SYMBOL, addr)
    return ctypes.c_int64.from_address(addr)


_MASK = _mask_storage()
_MASK.value = FLUSH_BITS if _env_default() else 0


def set_flush_subnormals(enabled: bool) -> bool:
    """Turn flushing in ssmcore's Numba kernels on or off; return the previous setting.

    Process-wide, effective from the next kernel call (a call in progress keeps the
    setting it started with on threads that already entered).
    """
    previous = bool(_MASK.value)
    _MASK.value = FLUSH_BITS if enabled else 0
    return previous


def flush_subnormals_enabled() -> bool:
    """Whether ssmcore's Numba kernels flush subnormals (False also on architectures without support)."""
    return bool(_MASK.value)


@contextlib.contextmanager
def flush_subnormals(enabled: bool):
    """Context manager: ``with flush_subnormals(False): ...`` runs the block with gradual underflow."""
    previous = set_flush_subnormals(enabled)
    try:
        yield
    finally:
        set_flush_subnormals(previous)


# ----------------------------------------------------------------------------- LLVM IR
_I8P = ir.IntType(8).as_pointer()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _mask_value(builder):
    module = builder.module
    gv = module.globals.get(MASK_SYMBOL)
    if gv is None:
        gv = ir.GlobalVariable(module, _I64, MASK_SYMBOL)  # external declaration
        gv.linkage = "external"
    return builder.and_(builder.load(gv), ir.Constant(_I64, FLUSH_BITS))  # never any other bit


def _read_register(builder):
    """The control register of the current thread, zero-extended to i64 (x86-64, arm64)."""
    module = builder.module
    if _ARCH == "x86_64":
        slot = cgutils.alloca_once(builder, _I32)  # entry block: not one per loop iteration
        fn = module.globals.get("llvm.x86.sse.stmxcsr") or ir.Function(
            module, ir.FunctionType(ir.VoidType(), [_I8P]), "llvm.x86.sse.stmxcsr")
        builder.call(fn, [builder.bitcast(slot, _I8P)])
        return builder.zext(builder.load(slot), _I64)
    fn = module.globals.get("llvm.aarch64.get.fpcr") or ir.Function(
        module, ir.FunctionType(_I64, []), "llvm.aarch64.get.fpcr")
    return builder.call(fn, [])


def _write_register(builder, value):
    module = builder.module
    if _ARCH == "x86_64":
        slot = cgutils.alloca_once(builder, _I32)  # entry block: not one per loop iteration
        builder.store(builder.trunc(value, _I32), slot)
        fn = module.globals.get("llvm.x86.sse.ldmxcsr") or ir.Function(
            module, ir.FunctionType(ir.VoidType(), [_I8P]), "llvm.x86.sse.ldmxcsr")
        builder.call(fn, [builder.bitcast(slot, _I8P)])
    else:
        fn = module.globals.get("llvm.aarch64.set.fpcr") or ir.Function(
            module, ir.FunctionType(ir.VoidType(), [_I64]), "llvm.aarch64.set.fpcr")
        builder.call(fn, [value])


def _write_if_changed(builder, old, new):
    with builder.if_then(builder.icmp_unsigned("!=", old, new), likely=False):
        _write_register(builder, new)


@intrinsic
def fp_enter(typingctx):
    """Set the flush bits (when flushing is on) on this thread; return the register's old value."""

    def codegen(context, builder, signature, args):
        if _ARCH == "other":
            return ir.Constant(_I64, 0)
        old = _read_register(builder)
        _write_if_changed(builder, old, builder.or_(old, _mask_value(builder)))
        return old

    return types.int64(), codegen


@intrinsic
def fp_exit(typingctx, old):
    """Put the flush bits of this thread back to their value in ``old`` (from :func:`fp_enter`)."""
    if not isinstance(old, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        if _ARCH != "other":
            saved = context.cast(builder, args[0], signature.args[0], types.int64)
            bits = ir.Constant(_I64, FLUSH_BITS)
            cur = _read_register(builder)
            new = builder.or_(builder.and_(cur, ir.Constant(_I64, ~FLUSH_BITS)), builder.and_(saved, bits))
            _write_if_changed(builder, cur, new)
        return context.get_dummy_value()

    return types.none(old), codegen


@intrinsic
def fp_read(typingctx):
    """The control register of this thread (MXCSR or FPCR; 0 elsewhere): for tests and diagnostics."""

    def codegen(context, builder, signature, args):
        if _ARCH == "other":
            return ir.Constant(_I64, 0)
        return _read_register(builder)

    return types.int64(), codegen


#: Most blocks a ``prange`` over many small items runs (see :func:`fp_blocks`).
MAX_BLOCKS = 128


@register_jitable
def fp_blocks(n):
    """How many contiguous blocks a ``prange`` over ``n`` small items should run (one bracket each).

    A bracket costs about 0.1 us (module docstring), too much per item where an
    item is a few hundred operations (a decode-step task, a row of a
    discretisation, a short filter channel). Items ``k * n // nb .. (k + 1) * n // nb``
    form block ``k``. The kernels that use this run in parallel only above ~1 ms
    of work, so ``MAX_BLOCKS`` blocks are >= ~8 us each and still balance the load
    over tens of threads. A constant, not ``numba.get_num_threads()``: that call
    makes a kernel uncacheable (a dynamic global).
    """
    return min(n, MAX_BLOCKS)


# ----------------------------------------------------------------------------- Python helpers
_HELPERS: dict = {}


def _helpers():
    """Tiny uncached njit functions that run the intrinsics on the calling thread (Python-side use)."""
    if not _HELPERS:
        import numba

        @numba.njit(cache=False)
        def _read():
            return fp_read()

        @numba.njit(cache=False)
        def _clear(bits):
            fp_exit(fp_read() & ~bits)

        _HELPERS.update(read=_read, clear=_clear)
    return _HELPERS


def read_thread() -> int:
    """Return the calling thread's MXCSR (x86-64) or FPCR (arm64); 0 on other architectures."""
    return int(_helpers()["read"]())


def reset_thread() -> None:
    """Clear the flush bits on the calling thread (recovery after a kernel raised inside its bracket)."""
    if FLUSH_BITS:
        _helpers()["clear"](FLUSH_BITS)
