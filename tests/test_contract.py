"""The kernel contract: every backend module exposes its area's reference functions, same parameters.

``ssmcore/reference/<area>.py`` is the specification; ``backends/numba/<area>.py``
and ``backends/cupy/<area>.py`` (where present) must offer each function of the
reference's ``__all__`` (less its ``REFERENCE_ONLY`` names) with the same
parameter names in the same order, so that a front door can call any backend
through ``Target.kernels(area)``. CuPy modules import without a GPU (CuPy is
imported, nothing is compiled), so this runs in CI.

A CuPy module may implement only part of its area: it then declares
``PROVIDES = (...)``, the contract functions it has, and the check covers exactly
those (each must exist, be a contract name, and match the reference's
parameters); an op that calls an absent kernel must not declare ``"cupy"``
(``test_cupy_ops_call_only_provided_kernels``). Numba modules always implement
the whole contract.
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
    contract = _contract(area)
    provides = getattr(mod, "PROVIDES", None)
    if provides is not None:
        assert device == "cupy", f"backends/{device}/{area}.py: only CuPy modules may implement part of the contract"
        unknown = set(provides) - set(contract)
        assert not unknown, f"backends/cupy/{area}.py: PROVIDES names {sorted(unknown)}, not in reference/{area}.py"
        contract = {fn: contract[fn] for fn in provides}
    for fn, params in contract.items():
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


# op -> the kernel-contract functions its forward and backward call (areas whose CuPy
# module declares PROVIDES). An op that declares "cupy" must find all of them there.
_OP_KERNELS = {
    "fft_conv": ("convolution", ("causal_conv", "causal_conv_bwd")),
    "ssm_kernel_diag": ("convolution", ("vandermonde_kernel", "vandermonde_kernel_bwd")),
    "ssm_kernel_dplr": ("convolution", ("cauchy_sums", "cauchy_sums_bwd")),
    "ssm_kernel_dense": ("convolution", ("dense_kernel", "dense_kernel_bwd")),
    "discretize_diag": ("discretization", ("discretize_diag_fwd", "discretize_diag_bwd")),
    "discretize": ("discretization", ("expm",)),
    "cont2discrete": ("discretization", ("expm",)),
}


@pytest.mark.parametrize("op", sorted(_OP_KERNELS))
def test_cupy_ops_call_only_provided_kernels(op):
    area, needed = _OP_KERNELS[op]
    if "cupy" not in capabilities().get(op, ()):
        return
    mod = _backend_module("cupy", area)
    assert mod is not None, f"{op} declares cupy but ssmcore/backends/cupy/{area}.py does not exist"
    provided = getattr(mod, "PROVIDES", tuple(_contract(area)))
    missing = [fn for fn in needed if fn not in provided]
    assert not missing, f"{op} declares cupy but backends/cupy/{area}.py does not provide {missing}"
