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
"""

from __future__ import annotations

import os

import numba

FASTMATH = frozenset({"contract", "nsz"})

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]


def jit(fn=None, *, parallel: bool = False, **overrides):
    """``numba.njit`` with the project's options (cache, nogil, safe fastmath)."""
    options = dict(cache=True, nogil=True, fastmath=set(FASTMATH), error_model="numpy", boundscheck=False)
    options.update(overrides)
    options["parallel"] = parallel
    if fn is None:
        return lambda f: numba.njit(**options)(f)
    return numba.njit(**options)(fn)
