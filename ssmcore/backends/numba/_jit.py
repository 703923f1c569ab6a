"""Numba settings shared by every CPU kernel.

* ``cache=True``: compiled machine code is cached next to the module (or in
  ``NUMBA_CACHE_DIR``), so only the first call on a machine pays for compilation.
* **Cache rule (numba#6845)**: a Python function must not be compiled both with
  and without ``parallel=True`` under ``cache=True``. Both variants are filed
  under the same cache index entry and overwrite each other, so a later process
  can load the variant it did not ask for. A kernel that needs a serial and a
  parallel form is written as two functions (a serial core and a ``prange``
  wrapper), each passed through :func:`jit` with one fixed ``parallel``.
* No signatures: kernels compile lazily on first call, per dtype; ``import``
  compiles nothing.
* ``fastmath={'contract', 'nsz'}`` at most: FMA contraction and signed-zero
  freedom are harmless, but full fastmath removes NaN/inf checks and lets NaN
  inputs vanish.
* Threading layer: OpenMP first. Numba's ``workqueue`` layer aborts the process
  when two Python threads call parallel kernels at once; OpenMP and TBB are
  thread-safe. (OpenMP is not fork-safe: use 'spawn' workers after calling a
  parallel kernel.) An explicit ``NUMBA_THREADING_LAYER`` is respected.

  What this sets, exactly: when this module is first imported (by the first
  ssmcore call that needs a Numba kernel, not by ``import ssmcore``) and
  ``NUMBA_THREADING_LAYER`` is not set, ``numba.config.THREADING_LAYER_PRIORITY``
  becomes ``["omp", "tbb", "workqueue"]`` (Numba's default is
  ``["tbb", "omp", "workqueue"]``). The setting is process-wide: it decides the
  layer Numba loads when the *first* parallel kernel of the process runs, whoever's
  it is, and has no effect once a layer is loaded. Set ``NUMBA_THREADING_LAYER``
  (e.g. ``tbb``) to keep Numba's choice for the whole process.

  Where only ``workqueue`` loads (some macOS/Windows set-ups), ssmcore serialises its
  parallel kernels across Python threads (one warning) instead of letting the
  process abort.
* Subnormals flushed inside the kernels, nowhere else: kernels bracket their work
  (serial entry points, and each ``prange`` body) with ``fp_enter``/``fp_exit``
  from :mod:`._fpenv`, which set FTZ/DAZ (arm64: FZ) on the running thread and
  restore it; never hold a bracket across a ``prange``. The on/off switch
  (``SSMCORE_FLUSH_SUBNORMALS``) is a C global read at run time, so it is not
  frozen into the cache. Numba itself has no such option (its fastmath flags
  are LLVM's; none flushes subnormals).
* Read-only installs: where neither the package directory nor Numba's user
  cache directory (``NUMBA_CACHE_DIR``, else ``~/.cache/numba``) is writable
  (Docker as non-root, Nix, locked clusters), ssmcore's kernels are cached in a
  per-user temporary directory, with one warning; if that fails too they
  compile uncached. ``ssmcore info`` prints where the cache lives. Setting
  ``NUMBA_CACHE_DIR`` to a writable directory is the recommended fix.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
import warnings
from pathlib import Path

import numba
from numba.core import caching

FASTMATH = frozenset({"contract", "nsz"})

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

_PACKAGE_DIR = str(Path(__file__).resolve().parents[2])  # .../ssmcore


def _numba_locator(name: str) -> type:
    """A Numba cache-locator class: public since numba 0.60, ``_``-prefixed before (0.59)."""
    return getattr(caching, name, None) or getattr(caching, "_" + name)


class _TempCacheLocator(_numba_locator("UserWideCacheLocator")):
    """Last-resort cache locator for ssmcore's own kernels: a per-user temporary directory.

    Tried by Numba only after its own locators (next to the source, then the
    user-wide directory) found nowhere writable; applies to files of this package only.
    """

    def __init__(self, py_func, py_file):
        super().__init__(py_func, py_file)
        base = os.path.join(tempfile.gettempdir(), f"ssmcore-numba-cache-{os.getuid() if hasattr(os, 'getuid') else 0}")
        self._cache_path = os.path.join(base, self.get_suitable_cache_subpath(py_file))

    @classmethod
    def from_function(cls, py_func, py_file):
        if not os.path.exists(py_file) or not str(Path(py_file).resolve()).startswith(_PACKAGE_DIR):
            return None
        self = cls(py_func, py_file)
        try:
            self.ensure_cache_path()
        except OSError:
            return None
        if self is not None:
            _warn_once(
                "cache",
                f"ssmcore: neither the install directory nor Numba's user cache directory is writable; compiled "
                f"kernels are cached in {os.path.dirname(self._cache_path)}. Set NUMBA_CACHE_DIR to a writable "
                "directory to keep them across reboots.",
            )
        return self


if _TempCacheLocator not in caching.CacheImpl._locator_classes:
    caching.CacheImpl._locator_classes.append(_TempCacheLocator)

_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def cache_location() -> str:
    """Where the kernels of this package are cached (for ``ssmcore info``)."""
    from . import scan

    fn = scan._fwd_serial.py_func
    for cls in caching.CacheImpl._locator_classes:
        loc = cls.from_function(fn, fn.__code__.co_filename)
        if loc is not None:
            return os.path.dirname(loc.get_cache_path()) if cls is _TempCacheLocator else loc.get_cache_path()
    return "nowhere (kernels compile uncached)"


# ----------------------------------------------------------------------------- workqueue guard
_PARALLEL_LOCK = threading.Lock()
_THREAD_SAFE = False  # True once the layer is known to be omp or tbb


def _layer_is_thread_safe() -> bool | None:
    try:
        return numba.threading_layer() != "workqueue"
    except ValueError:  # no parallel kernel has run yet: the layer is not chosen
        return None


def _guard_parallel(dispatcher):
    """Serialise a parallel kernel across Python threads when Numba runs on ``workqueue``.

    Numba's workqueue layer aborts the process (SIGABRT) when two threads enter
    parallel code at once. Until the first parallel call has chosen the layer,
    and whenever it is workqueue, calls take a process-wide lock; once OpenMP
    or TBB is known to be in use, calls go straight through.
    """

    @functools.wraps(dispatcher.py_func)
    def call(*args):
        global _THREAD_SAFE
        if _THREAD_SAFE:
            return dispatcher(*args)
        with _PARALLEL_LOCK:
            out = dispatcher(*args)
        safe = _layer_is_thread_safe()
        if safe:
            _THREAD_SAFE = True
        elif safe is False:
            _warn_once(
                "workqueue",
                "ssmcore: Numba is using its 'workqueue' threading layer (OpenMP and TBB did not load), which "
                "aborts when two threads run parallel code at once; ssmcore serialises its parallel kernels. "
                "Install an OpenMP runtime (e.g. libgomp) or tbb for concurrent calls.",
            )
        return out

    call.dispatcher = dispatcher
    return call


def _njit(fn, options):
    try:
        dispatcher = numba.njit(**options)(fn)
    except RuntimeError as exc:
        if "cannot cache" not in str(exc):
            raise
        _warn_once("uncached", f"ssmcore: {exc}; compiling without an on-disk cache (set NUMBA_CACHE_DIR)")
        dispatcher = numba.njit(**{**options, "cache": False})(fn)
    return _guard_parallel(dispatcher) if options["parallel"] else dispatcher


def jit(fn=None, *, parallel: bool = False, **overrides):
    """``numba.njit`` with the project's options (cache, nogil, safe fastmath).

    ``parallel=True`` kernels are returned wrapped by the workqueue guard (a plain
    Python callable: call them from Python launchers, not from other jitted code).
    """
    options = dict(cache=True, nogil=True, fastmath=set(FASTMATH), error_model="numpy", boundscheck=False)
    options.update(overrides)
    options["parallel"] = parallel
    if fn is None:
        return lambda f: _njit(f, options)
    return _njit(fn, options)
