"""Numba CPU kernels (lazily compiled, cached on disk)."""
