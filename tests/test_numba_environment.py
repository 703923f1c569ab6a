"""Numba in unfriendly environments: read-only installs and the workqueue threading layer.

Each case runs in a fresh interpreter (the threading layer and the cache
locators are process-wide).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    e.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=600, env=e)


def test_workqueue_layer_never_aborts_with_concurrent_callers():
    out = _run(
        """
        import threading, warnings
        import numpy as np, ssmcore
        a = np.full((64, 4096), 0.9); b = np.ones((64, 4096))
        want = ssmcore.linear_scan(a, b)            # compiles; picks the layer
        errors = []
        def work():
            try:
                for _ in range(20):
                    assert np.array_equal(ssmcore.linear_scan(a, b), want)
            except Exception as exc:
                errors.append(exc)
        ts = [threading.Thread(target=work) for _ in range(4)]
        [t.start() for t in ts]; [t.join() for t in ts]
        import numba
        print("layer", numba.threading_layer(), "errors", len(errors))
        """,
        NUMBA_THREADING_LAYER="workqueue",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "layer workqueue errors 0" in out.stdout
    assert "serialises its parallel kernels" in out.stderr


_NO_LOCATOR = """
import warnings
from numba.core import caching
for name in ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator"):
    cls = getattr(caching, name, None) or getattr(caching, "_" + name)   # numba < 0.60: _-prefixed
    cls.from_function = classmethod(lambda cls, f, p: None)   # as on a read-only install without a home
"""


def test_read_only_install_caches_in_a_temporary_directory():
    out = _run(_NO_LOCATOR + """
import numpy as np, ssmcore
from ssmcore.backends.numba import _jit
print(float(ssmcore.linear_scan(np.full(5, 0.5), np.ones(5))[-1]))
print("cache at", _jit.cache_location())
""")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1.9375" in out.stdout
    assert "ssmcore-numba-cache" in out.stdout
    assert "kernels are cached in" in out.stderr


def test_no_cache_anywhere_compiles_uncached():
    out = _run(_NO_LOCATOR + """
from ssmcore.backends.numba import _jit
_jit._TempCacheLocator.from_function = classmethod(lambda cls, f, p: None)
import numpy as np, ssmcore
print(float(ssmcore.linear_scan(np.full(5, 0.5), np.ones(5))[-1]))
""")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1.9375" in out.stdout
    assert "compiling without an on-disk cache" in out.stderr
