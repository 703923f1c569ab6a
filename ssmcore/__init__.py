"""ssmcore: the framework-agnostic core of State Space Models.

Discretisation, HiPPO and diagonal initialisation, linear and selective scans,
LTI simulation and convolution kernels, each as a NumPy reference, a Numba CPU
kernel and a hand-written vector-Jacobian product. Arrays in, arrays out.

``import ssmcore`` imports NumPy only: SciPy and Numba are imported, and kernels
compiled, on the first call that needs them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .registry import get_op, list_ops, vjp

# Importing an area registers its ops; none of these imports SciPy or Numba.
from ._convolution import dplr_c_tilde, fft_conv, ssm_kernel_dense, ssm_kernel_diag, ssm_kernel_dplr
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
    "ssm_kernel_dense",
    "ssm_kernel_diag",
    "ssm_kernel_dplr",
]
