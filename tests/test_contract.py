"""The kernel contract: every backend module exposes its area's reference functions, same parameters.

``ssmcore/reference/<area>.py`` is the specification; ``backends/numba/<area>.py``
and ``backends/cupy/<area>.py`` (where present) must offer each function of the
reference's ``__all__`` (less its ``REFERENCE_ONLY`` names) with the same
parameter names in the same order, so that a front door can call any backend
through ``Target.kernels(area)``. CuPy modules import without a GPU (CuPy is
imported, nothing is compiled), so this runs in CI.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import ssmcore
import ssmcore.reference
from ssmcore.dispatch import BACKENDS, capabilities

AREAS = sorted(m.name for m in pkgutil.iter_modules(ssmcore.reference.__path__) if not m.name.startswith("_"))


def _contract(area: str) -> dict[str, list[str]]:
    ref = importlib.import_module(f"ssmcore.reference.{area}")
    names = [n for n in ref.__all__ if n not in getattr(ref, "REFERENCE_ONLY", ())]
    return {n: list(inspect.signature(getattr(ref, n)).parameters) for n in names if callable(getattr(ref, n))}


def _backend_module(device: str, area: str):
    name = f"ssmcore.backends.{device}.{area}"
    if importlib.util.find_spec(name) is None:
        return None
    if device == "cupy":
        pytest.importorskip("cupy")
    return importlib.import_module(name)


@pytest.mark.parametrize("device", ["numba", "cupy"])
@pytest.mark.parametrize("area", AREAS)
def test_backend_module_matches_the_reference(area, device):
    mod = _backend_module(device, area)
    if mod is None:
        if device == "numba":
            pytest.fail(f"ssmcore/backends/numba/{area}.py is missing: every area has a CPU kernel module")
        pytest.skip(f"no CuPy kernels for {area} yet")
    for fn, params in _contract(area).items():
        assert hasattr(mod, fn), f"backends/{device}/{area}.py lacks {fn}() of reference/{area}.py"
        got = list(inspect.signature(getattr(mod, fn)).parameters)
        assert got == params, (
            f"backends/{device}/{area}.py: {fn}{tuple(got)} differs from the reference's {tuple(params)}"
        )


def test_every_declared_backend_is_known_and_ops_are_declared():
    table = capabilities()
    for op in ssmcore.list_ops():
        assert op in table, f"op {op} declares no backends"
    for fn, backends in table.items():
        assert backends, f"{fn} declares no backend"
        assert set(backends) <= set(BACKENDS)


def test_cupy_capability_needs_a_cupy_module():
    """An op that claims a CuPy kernel must have its area's CuPy module (checked by area name in the front door)."""
    import ssmcore.backends

    cupy_dir = [m.name for m in pkgutil.iter_modules([f"{ssmcore.backends.__path__[0]}/cupy"])
                if not m.name.startswith("_") and m.name != "compile_gate"]
    claims = [fn for fn, b in capabilities().items() if "cupy" in b]
    if claims:
        assert cupy_dir, f"{claims} declare CuPy kernels but ssmcore/backends/cupy has no kernel modules"
