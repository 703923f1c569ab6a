"""Numba settings shared by every CPU kernel.

* ``cache=True``: compiled machine code is cached next to the module (or in
  ``NUMBA_CACHE_DIR``), so only the first call on a machine pays for compilation.
* No signatures: kernels compile lazily on first call, per dtype; ``import``
  compiles nothing.
* ``fastmath={'contract', 'nsz'}`` at most: FMA contraction and signed-zero
  freedom are harmless, but full fastmath removes NaN/inf checks and lets NaN
  inputs vanish.
* Threading layer: OpenMP first. Numba's ``workqueue`` layer aborts the process
  when two Python threads call parallel kernels at once; OpenMP and TBB are
  thread-safe. (OpenMP is not fork-safe: use 'spawn' workers after calling a
  parallel kernel.) An explicit ``NUMBA_THREADING_LAYER`` is respected.
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
