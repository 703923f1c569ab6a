"""The NumPy specification of every op: float64-readable loops that follow the maths.

Each module here mirrors a kernel module of the same name under
``ssmcore/backends/``; tests compare every backend against these functions.
They are slow on purpose: clarity over speed.
"""
