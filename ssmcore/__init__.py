"""ssmcore: the framework-agnostic core of State Space Models.

Discretisation, HiPPO and diagonal initialisation, linear and selective scans,
LTI simulation and convolution kernels, each as a NumPy reference, a Numba CPU
kernel and a hand-written vector-Jacobian product. Arrays in, arrays out.

``import ssmcore`` imports NumPy only: SciPy and Numba are imported, and kernels
compiled, on the first call that needs them. The framework adapters are lazy
attributes: ``ssmcore.torch``, ``ssmcore.jax``, ``ssmcore.dask`` and
``ssmcore.xarray`` import their module (and its framework) on first access, and
raise an :class:`ImportError` naming the extra to install when the framework is
missing.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Importing an area registers its ops; none of these imports SciPy or Numba.
from ._convolution import (
    ConvSpectrum as ConvSpectrum,  # the type fft_conv_spectrum returns (__all__ lists the functions)
    dplr_c_tilde,
    fft_conv,
    fft_conv_spectrum,
    ssm_kernel_dense,
    ssm_kernel_diag,
    ssm_kernel_dplr,
)
from ._discretization import cont2discrete, discretize, discretize_diag
from ._hippo import (
    dplr,
    hippo,
    hippo_basis,
    hippo_online_coefficients,
    hippo_reconstruct,
    nplr,
    nplr_to_dense,
    rank_correction,
)
from ._initializers import (
    dt_init,
    inverse_softplus,
    lru_lambda,
    lru_ring_init,
    mamba2_A_log,
    mamba_A_log,
    mamba_dt_bias,
    s4d_inv,
    s4d_legs,
    s4d_lin,
    s4d_real,
)
from ._lfilter import lfilter
from ._lsim import lsim
from ._lti import dlsim, lti_simulate, lti_simulate_diag
from ._scan import linear_scan
from ._selective_scan import selective_scan, selective_state_update
from ._ssd import ssd
from ._warmup import warmup
from .registry import get_op, list_ops, vjp

__all__ = [
    "__version__",
    # gradients
    "get_op",
    "list_ops",
    "vjp",
    # discretisation
    "cont2discrete",
    "discretize",
    "discretize_diag",
    # HiPPO and initialisation
    "dplr",
    "dt_init",
    "hippo",
    "hippo_basis",
    "hippo_online_coefficients",
    "hippo_reconstruct",
    "inverse_softplus",
    "lru_lambda",
    "lru_ring_init",
    "mamba2_A_log",
    "mamba_A_log",
    "mamba_dt_bias",
    "nplr",
    "nplr_to_dense",
    "rank_correction",
    "s4d_inv",
    "s4d_legs",
    "s4d_lin",
    "s4d_real",
    # scans
    "linear_scan",
    "selective_scan",
    "selective_state_update",
    "ssd",
    # signal processing (scipy.signal drop-ins)
    "lfilter",
    "lsim",
    # LTI simulation
    "dlsim",
    "lti_simulate",
    "lti_simulate_diag",
    # convolution mode
    "dplr_c_tilde",
    "fft_conv",
    "fft_conv_spectrum",
    "ssm_kernel_dense",
    "ssm_kernel_diag",
    "ssm_kernel_dplr",
    # compiling ahead
    "warmup",
]

# Lazy submodules: attribute name -> (top-level package it needs, extra that installs it).
# Listed here rather than imported so that ``import ssmcore`` never imports a framework.
_LAZY_SUBMODULES: dict[str, tuple[str, str]] = {
    "torch": ("torch", "torch"),
    "jax": ("jax", "jax"),
    "dask": ("dask", "dask"),
    "xarray": ("xarray", "xarray"),
}


def __getattr__(name: str):
    """Import ``ssmcore.<name>`` on first access for the framework adapters (PEP 562)."""
    if name not in _LAZY_SUBMODULES:
        raise AttributeError(f"module 'ssmcore' has no attribute {name!r}")
    framework, extra = _LAZY_SUBMODULES[name]
    try:
        # import_module binds the submodule as an attribute of the package, so this
        # function is not called again for the same name.
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == framework or missing.startswith(framework + "."):
            raise ImportError(
                f"ssmcore.{name} needs {framework}, which is not installed (no module named {missing!r}); "
                f"install it with: python -m pip install \"ssmcore[{extra}]\"",
                name=missing,
            ) from exc
        if missing == f"{__name__}.{name}":
            # The adapter module itself is not part of this installation (yet).
            raise AttributeError(
                f"module 'ssmcore' has no attribute {name!r} (ssmcore.{name} is not in this version)"
            ) from None
        raise


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
