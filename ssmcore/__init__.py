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

__all__ = ["__version__", "get_op", "list_ops", "vjp"]
