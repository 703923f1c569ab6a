"""``ssmcore.torch`` / ``.jax`` / ``.dask`` / ``.xarray`` are lazy attributes of the package.

Each check runs in a fresh interpreter: whether a framework is imported, or can be
imported, is process-wide state.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_import_ssmcore_imports_no_framework():
    res = _python("""
        import sys, ssmcore
        loaded = [m for m in ("torch", "jax", "dask", "xarray", "scipy", "numba") if m in sys.modules]
        assert not loaded, loaded
        assert {"torch", "jax", "dask", "xarray"} <= set(dir(ssmcore))
    """)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("name", ["torch", "jax"])
def test_adapter_is_a_lazy_attribute(name):
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed")
    res = _python(f"""
        import ssmcore
        mod = ssmcore.{name}
        assert mod.__name__ == "ssmcore.{name}", mod
        import ssmcore.{name} as again
        assert again is mod
        assert callable(mod.linear_scan)
    """)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("name", ["torch", "jax", "dask", "xarray"])
def test_missing_framework_names_the_extra(name):
    # ``sys.modules[name] = None`` makes ``import name`` fail as if it were not installed.
    res = _python(f"""
        import sys
        sys.modules[{name!r}] = None
        import ssmcore
        try:
            ssmcore.{name}
        except ImportError as exc:
            print("ImportError:", exc)
        except AttributeError as exc:
            print("AttributeError:", exc)
        else:
            raise SystemExit("no error")
    """)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    if out.startswith("AttributeError:"):
        # Only acceptable while the adapter module is not part of the package.
        assert importlib.util.find_spec(f"ssmcore.{name}") is None, out
        assert f"ssmcore.{name} is not in this version" in out
    else:
        assert f'ssmcore[{name}]' in out, out


def test_unknown_attribute_is_an_attribute_error():
    import ssmcore

    with pytest.raises(AttributeError, match="no attribute 'frobnicate'"):
        ssmcore.frobnicate  # noqa: B018
    assert not hasattr(ssmcore, "frobnicate")
