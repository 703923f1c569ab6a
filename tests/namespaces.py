"""Array namespaces the device-neutral tests run on.

* ``numpy``: the default path (Numba kernels).
* ``strict``: array-api-strict arrays on a non-CPU device. Every front door,
  backward glue and registry call must work on them; NumPy cannot read them
  implicitly, so a stray ``np.*`` in the glue raises here, on a machine
  without a GPU. Their kernels run on the CPU through the explicit host bridge.
* ``cupy``: CuPy arrays on the GPU (tests marked ``gpu``; skipped without a device).

Use the ``ns`` fixture (tests/conftest.py): ``ns.asarray(np_array)`` moves test
data into the namespace, ``ns.to_numpy(x)`` brings a result back for comparison.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest


class Namespace:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    @property
    def xp(self) -> Any:
        if self.name == "numpy":
            return np
        if self.name == "strict":
            import array_api_strict

            return array_api_strict
        import cupy

        return cupy

    @property
    def device(self) -> Any:
        if self.name == "strict":
            import array_api_strict

            return array_api_strict.Device("device1")
        return None

    def asarray(self, x: Any) -> Any:
        """Test data (NumPy arrays, or None/scalars passed through) in this namespace."""
        if x is None or not isinstance(x, np.ndarray):
            return x
        if self.name == "numpy":
            return x
        if self.name == "strict":
            return self.xp.asarray(x, device=self.device)
        return self.xp.asarray(x)

    def to_numpy(self, x: Any) -> Any:
        """A result (array, tuple of arrays, None) as NumPy, checking it is of this namespace."""
        if isinstance(x, (tuple, list)):
            return type(x)(self.to_numpy(e) for e in x)
        if x is None:
            return None
        if self.name == "numpy":
            assert isinstance(x, np.ndarray), f"expected a NumPy array, got {type(x)}"
            return x
        if self.name == "strict":
            import array_api_strict

            assert isinstance(x, array_api_strict._array_object.Array), f"expected a strict array, got {type(x)}"
            assert x.device == self.device, f"result on {x.device}, expected {self.device}"
            return np.asarray(x.to_device(array_api_strict.Device("CPU_DEVICE")))
        import cupy

        assert isinstance(x, cupy.ndarray), f"expected a CuPy array, got {type(x)}"
        return cupy.asnumpy(x)


NAMESPACE_PARAMS = [
    pytest.param(Namespace("numpy"), id="numpy"),
    pytest.param(Namespace("strict"), id="strict"),
    pytest.param(Namespace("cupy"), id="cupy", marks=pytest.mark.gpu),
]


def cpu_backends(op: str) -> tuple[str, ...]:
    """The CPU backends (NumPy reference, Numba) that ``op`` declares in the capability table."""
    import ssmcore  # noqa: F401  (registers every op)
    from ssmcore.dispatch import capabilities

    return tuple(b for b in capabilities()[op] if b != "cupy")


def assert_close(got, want, rtol=1e-12, atol=1e-13):
    """Results (arrays, tuples of arrays, None) equal in shape, dtype and value (NumPy side)."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_close(g, w, rtol, atol)
        return
    if want is None:
        assert got is None
        return
    want = np.asarray(want)
    assert got.shape == want.shape
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
