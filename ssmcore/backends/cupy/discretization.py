"""CuPy GPU kernels of discretisation; the functions of :mod:`ssmcore.reference.discretization`.

The kernel contract (names, parameters, shapes (R, N) / (R, N, M), dtypes) is the
docstring of ``ssmcore.reference.discretization``. :data:`PROVIDES` lists what
this module implements: the whole contract (``discretize_diag_fwd`` /
``discretize_diag_bwd`` and the batched ``expm`` of :func:`ssmcore.discretize`).

Both directions are one fused elementwise kernel (``kernels/discretization.cu``):
one thread per (r, n) element reads ``A``, ``dt`` and the ``M`` entries of ``B``
once and writes ``Ad`` and ``Bd`` (backward: ``gA``, ``gdt``, ``gB``), with the
stable phi functions of the reference (Taylor series of phi3 for ``|x| < 1``, an
accurate complex ``expm1`` elsewhere). Operands are float64 / complex128 (the
front door computes in double precision); the forward keeps ``Ad`` in ``A``'s
dtype and ``Bd`` in the common dtype of ``A`` and ``B`` as the Numba kernel does,
the backward computes in the common dtype of all its operands. Launches run on
CuPy's current stream; nothing synchronises or copies to the host.

``expm`` (``expm_batched`` in the same file) is the Numba kernel's algorithm --
scaling and squaring with a diagonal Pade approximant of degree 3 to 13 chosen
from the 1-norm (Higham 2005), a pivoted solve, s squarings -- with one thread per
matrix and its eight work matrices in a global workspace interleaved across the
stack (coalesced). Stacks are processed in chunks of :func:`expm_chunk` matrices so
the workspace stays under :data:`EXPM_WORK_ELEMENTS` elements.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ._rawmodule import KERNEL_DIR, declare, dtype_name

__all__ = ["EXPM_WORK_ELEMENTS", "PROVIDES", "THREADS", "discretize_diag_bwd", "discretize_diag_fwd", "expm",
           "expm_chunk", "grid"]

#: The kernel-contract functions of ``reference/discretization.py`` this module implements.
PROVIDES = ("discretize_diag_fwd", "discretize_diag_bwd", "expm")

THREADS = 256  # threads per block (= the kernels' __launch_bounds__)
_TYPES = ("double", "complex<double>")


def _options() -> tuple[str, ...]:
    digest = hashlib.sha1((KERNEL_DIR / "common.cuh").read_bytes()).hexdigest()[:16]
    return (f"-I{KERNEL_DIR}", f"-DSSMCORE_COMMON_CUH_SHA1=0x{digest}")


DISC = declare(
    "discretization.cu",
    [f"discretize_diag_fwd<{a}, {b}>" for a in _TYPES for b in _TYPES]
    + [f"discretize_diag_bwd<{t}>" for t in _TYPES]
    + [f"expm_batched<{t}>" for t in _TYPES],
    options=_options(),
)


def grid(elements: int) -> int:
    """Blocks of :data:`THREADS` threads covering ``elements`` (one thread per (r, n) element)."""
    if elements < 0:
        raise ValueError(f"grid: expected elements >= 0, got {elements}")
    return -(-int(elements) // THREADS)


def _compute_dtype(*arrays: Any) -> np.dtype:
    return np.dtype(np.complex128) if any(a.dtype.kind == "c" for a in arrays) else np.dtype(np.float64)


def _prep(cp: Any, x: Any, dtype: Any) -> Any:
    return cp.ascontiguousarray(cp.asarray(x).astype(dtype, copy=False))


def discretize_diag_fwd(A: Any, dt: Any, B: Any, method: int, alpha: float) -> tuple[Any, Any]:
    """``Ad (R, N) = ad(A dt)``; ``Bd (R, N, M) = dt beta(A dt) B``, one fused kernel."""
    import cupy as cp

    ta, tb = _compute_dtype(A), _compute_dtype(B)
    A, dt, B = _prep(cp, A, ta), _prep(cp, dt, np.float64), _prep(cp, B, tb)
    R, N, M = B.shape
    Ad = cp.empty((R, N), dtype=ta)
    Bd = cp.empty((R, N, M), dtype=_compute_dtype(A, B))
    if R * N == 0:
        return Ad, Bd
    name = f"discretize_diag_fwd<{dtype_name(ta)}, {dtype_name(tb)}>"
    DISC.get(name)((grid(R * N),), (THREADS,), (
        A, dt, B, Ad, Bd, np.int32(method), np.float64(alpha), np.int64(R * N), np.int64(M)))
    return Ad, Bd


def discretize_diag_bwd(A: Any, dt: Any, B: Any, method: int, alpha: float, gAd: Any, gBd: Any) -> tuple[Any, Any, Any]:
    """``(gA, gdt, gB)`` before broadcasting is undone, in the common dtype of the operands."""
    import cupy as cp

    t = _compute_dtype(A, B, gAd, gBd)
    A, B, gAd, gBd = (_prep(cp, x, t) for x in (A, B, gAd, gBd))
    dt = _prep(cp, dt, np.float64)
    R, N, M = B.shape
    gA = cp.empty((R, N), dtype=t)
    gdt = cp.empty((R, N), dtype=t)
    gB = cp.empty((R, N, M), dtype=t)
    if R * N == 0:
        return gA, gdt, gB
    DISC.get(f"discretize_diag_bwd<{dtype_name(t)}>")((grid(R * N),), (THREADS,), (
        A, dt, B, gAd, gBd, gA, gdt, gB, np.int32(method), np.float64(alpha), np.int64(R * N), np.int64(M)))
    return gA, gdt, gB


#: Workspace budget of :func:`expm` in elements (8 work matrices per matrix of a chunk).
EXPM_WORK_ELEMENTS = 1 << 25


def expm_chunk(K: int, n: int) -> int:
    """Matrices per launch of :func:`expm`: all ``K`` if their workspace fits the budget, else fewer."""
    if K < 0 or n < 0:
        raise ValueError(f"expm_chunk: expected K, n >= 0; got {(K, n)}")
    return max(1, min(K, EXPM_WORK_ELEMENTS // max(1, 8 * n * n)))


def expm(Z: Any) -> Any:
    """Matrix exponential of a stack ``(..., n, n)`` in float64/complex128, one thread per matrix."""
    import cupy as cp

    Z = cp.asarray(Z)
    t = _compute_dtype(Z)
    Z = cp.ascontiguousarray(Z.astype(t, copy=False))
    if Z.size == 0:
        return cp.empty_like(Z)
    n = Z.shape[-1]
    flat = Z.reshape(-1, n, n)
    K = flat.shape[0]
    out = cp.empty_like(flat)
    chunk = expm_chunk(K, n)
    work = cp.empty(8 * n * n * chunk, dtype=t)
    kernel = DISC.get(f"expm_batched<{dtype_name(t)}>")
    for k0 in range(0, K, chunk):
        k1 = min(K, k0 + chunk)
        kernel((grid(k1 - k0),), (THREADS,), (flat[k0:k1], out[k0:k1], work, np.int64(k1 - k0), np.int64(n)))
    return out.reshape(Z.shape)
