"""Run CPU kernels on arrays of another namespace through an explicit conversion.

The array-API-strict test namespace (:mod:`ssmcore._xp`) places arrays on a
non-CPU device, so that the device-neutral glue is checked on a machine
without a GPU: NumPy cannot read those arrays implicitly. Their kernels still
run on the CPU: :class:`HostBridge` wraps a kernel module so that every array
argument is copied to the host as NumPy, the kernel runs, and every array
result is copied back to the caller's namespace and device. The copies are
explicit and visible here, which is the point: nothing else in the call path
may convert.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["HostBridge"]


class HostBridge:
    """A kernel module seen through host copies: ``bridge.fn(*args)`` = ``module.fn`` on NumPy copies."""

    def __init__(self, module: ModuleType, xp: ModuleType, device: Any) -> None:
        self._module = module
        self._xp = xp
        self._device = device
        self._cpu = xp.Device("CPU_DEVICE") if hasattr(xp, "Device") else None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._module, name)
        if not callable(attr) or isinstance(attr, type):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            res = attr(*(self._to_host(a) for a in args), **{k: self._to_host(v) for k, v in kwargs.items()})
            return self._from_host(res)

        call.__name__ = name
        return call

    def _is_array(self, x: Any) -> bool:
        return type(x).__module__.startswith("array_api_strict")

    def _to_host(self, x: Any) -> Any:
        if isinstance(x, tuple):
            return tuple(self._to_host(e) for e in x)
        if self._is_array(x):
            return np.asarray(x.to_device(self._cpu) if self._cpu is not None else x)
        return x

    def _from_host(self, x: Any) -> Any:
        if isinstance(x, tuple):
            return tuple(self._from_host(e) for e in x)
        if isinstance(x, list):
            return [self._from_host(e) for e in x]
        if isinstance(x, np.ndarray):
            return self._xp.asarray(x, device=self._device)
        return x
