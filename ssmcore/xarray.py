"""ssmcore on xarray: DataArrays with a named time dimension, NumPy- or Dask-backed.

Each function moves the named core dimensions to the end (:func:`xarray.apply_ufunc`),
calls the NumPy op for NumPy-backed data or the lazy :mod:`ssmcore.dask` op for
Dask-backed data (nothing is computed), and returns DataArrays that keep the
other dimensions, their coordinates and the input's attributes. System matrices
(A, B, C, D, kernels) are plain arrays: they carry no time dimension.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

import ssmcore as _core

__all__ = ["dlsim", "fft_conv", "linear_scan", "lti_simulate", "lti_simulate_diag"]


def _lazy(*xs: Any) -> bool:
    import sys

    if "dask.array" not in sys.modules:
        return False
    import dask.array as da

    return any(isinstance(getattr(x, "data", x), da.Array) for x in xs)


def _ops(lazy: bool) -> Any:
    if lazy:
        from . import dask as ssd

        return ssd
    return _core


def _check(fn: str, name: str, x: Any, dims: tuple[str, ...]) -> None:
    if not isinstance(x, xr.DataArray):
        raise TypeError(f"{fn}: {name} must be an xarray.DataArray; got {type(x).__name__}")
    missing = [d for d in dims if d not in x.dims]
    if missing:
        raise ValueError(f"{fn}: {name} has dims {x.dims}; expected dimension(s) {missing} "
                         f"(pass dim=... to name the time dimension)")


def linear_scan(a: Any, b: xr.DataArray, h0: Any = None, *, dim: str = "time", reverse: bool = False,
                return_final_state: bool = False) -> xr.DataArray | tuple[xr.DataArray, xr.DataArray]:
    r""":func:`ssmcore.linear_scan` along a named dimension: :math:`h_t = a_t h_{t-1} + b_t`.

    Parameters
    ----------
    a : DataArray or scalar
        Coefficients; without ``dim`` they are constant in time. Broadcast by name.
    b : DataArray
        Inputs with dimension ``dim``; the result has b's dims (time last is not
        required), coordinates and attributes.
    h0 : DataArray or scalar, optional
        Initial state (no ``dim``).
    dim : str
        The time dimension.
    reverse, return_final_state : bool
        As for :func:`ssmcore.linear_scan`; the final state has b's dims without ``dim``.
    """
    fn = "ssmcore.xarray.linear_scan"
    _check(fn, "b", b, (dim,))
    lazy = _lazy(b, a, h0)
    ops = _ops(lazy)
    a_has_t = isinstance(a, xr.DataArray) and dim in a.dims

    def run(bb, aa, hh=None):
        aa = np.asarray(aa)[..., None] if not a_has_t and not _lazy(aa) else (aa if a_has_t else aa[..., None])
        return ops.linear_scan(aa, bb, hh, reverse=reverse, return_final_state=return_final_state)

    args = [b, a] + ([] if h0 is None else [h0])
    core = [[dim], [dim] if a_has_t else []] + ([] if h0 is None else [[]])
    out_core = [[dim], []] if return_final_state else [[dim]]
    res = xr.apply_ufunc(run, *args, input_core_dims=core, output_core_dims=out_core, dask="allowed",
                         keep_attrs=True)
    return _order(res, b, dim)


def _order(res: Any, like: xr.DataArray, dim: str) -> Any:
    """Put the dims back in the input's order (apply_ufunc moves the core dims last)."""
    if isinstance(res, tuple):
        return tuple(_order(r, like, dim) for r in res)
    order = [d for d in like.dims if d in res.dims] + [d for d in res.dims if d not in like.dims]
    return res.transpose(*order)


def lti_simulate(A: Any, B: Any, C: Any, D: Any, u: xr.DataArray, x0: Any = None, *, dim: str = "time",
                 input_dim: str = "input", output_dim: str = "output", state_dim: str = "state",
                 mode: str = "recurrent", return_final_state: bool = False) -> Any:
    r""":func:`ssmcore.lti_simulate` on a DataArray input :math:`u` with dims (..., input_dim, dim).

    A (N, N), B (N, M), C (P, N), D (P, M) or None are arrays. Returns y with
    dims (..., output_dim, dim) (u's other coordinates and attributes kept),
    and with ``return_final_state`` the final state with dims (..., state_dim).
    ``x0`` is a DataArray with ``state_dim`` or an array (N,).
    """
    fn = "ssmcore.xarray.lti_simulate"
    _check(fn, "u", u, (dim,))
    if input_dim not in u.dims:
        u = u.expand_dims(input_dim, axis=-1 if u.ndim else 0)
    lazy = _lazy(u, x0, A, B, C, D)
    ops = _ops(lazy)
    x0_da = isinstance(x0, xr.DataArray)

    def run(uu, xx=None):
        return ops.lti_simulate(A, B, C, D, uu, xx, mode=mode, return_final_state=return_final_state)

    args = [u] + ([x0] if x0_da else [])
    core = [[input_dim, dim]] + ([[state_dim]] if x0_da else [])
    if x0 is not None and not x0_da:
        run_ = run
        run = lambda uu: run_(uu, x0)  # noqa: E731
    out_core = [[output_dim, dim], [state_dim]] if return_final_state else [[output_dim, dim]]
    res = xr.apply_ufunc(run, *args, input_core_dims=core, output_core_dims=out_core, dask="allowed",
                         keep_attrs=True)
    return res


def lti_simulate_diag(A: Any, B: Any, C: Any, D: Any, u: xr.DataArray, x0: Any = None, *, dim: str = "time",
                      channel_dim: str = "channel", state_dim: str = "state", conj_sym: bool = False,
                      real_output: bool | None = None, mode: str = "recurrent",
                      return_final_state: bool = False) -> Any:
    r""":func:`ssmcore.lti_simulate_diag` on u with dims (..., channel_dim, dim); A, B, C (H, N), D (H,) arrays.

    Returns y with u's dims, coordinates and attributes, and with
    ``return_final_state`` the state with dims (..., channel_dim, state_dim).
    """
    fn = "ssmcore.xarray.lti_simulate_diag"
    _check(fn, "u", u, (channel_dim, dim))
    ops = _ops(_lazy(u, x0))
    x0_da = isinstance(x0, xr.DataArray)
    kw = dict(conj_sym=conj_sym, real_output=real_output, mode=mode, return_final_state=return_final_state)

    def run(uu, xx=None):
        return ops.lti_simulate_diag(A, B, C, D, uu, xx if x0_da else x0, **kw)

    args = [u] + ([x0] if x0_da else [])
    core = [[channel_dim, dim]] + ([[channel_dim, state_dim]] if x0_da else [])
    out_core = [[channel_dim, dim], [channel_dim, state_dim]] if return_final_state else [[channel_dim, dim]]
    res = xr.apply_ufunc(run, *args, input_core_dims=core, output_core_dims=out_core, dask="allowed",
                         keep_attrs=True)
    return _order(res, u, dim)


def dlsim(system: Any, u: xr.DataArray, x0: Any = None, *, dim: str = "time", input_dim: str = "input",
          output_dim: str = "output", state_dim: str = "state") -> tuple[xr.DataArray, ...]:
    r""":func:`ssmcore.dlsim` (control convention) on u with dims (dim,) or (dim, input_dim).

    Returns ``(yout, xout)`` (``xout`` only for state-space systems) as
    DataArrays with dims (dim, output_dim) and (dim, state_dim); the time
    coordinate of u is kept (or scipy's ``tout`` is used when u has none).
    """
    fn = "ssmcore.xarray.dlsim"
    _check(fn, "u", u, (dim,))
    if u.ndim > 2 or (u.ndim == 2 and input_dim not in u.dims):
        raise ValueError(f"{fn}: u has dims {u.dims}; expected ({dim!r},) or ({dim!r}, {input_dim!r})")
    data = (u.transpose(dim, input_dim) if u.ndim == 2 else u).data
    res = _ops(_lazy(u)).dlsim(system, data, x0=x0)
    tout, rest = res[0], res[1:]
    coords = {dim: u.coords[dim]} if dim in u.coords else {dim: np.asarray(tout) if not _lazy(u) else tout.compute()}
    names = (output_dim, state_dim)
    return tuple(xr.DataArray(r, dims=(dim, n), coords=coords, attrs=dict(u.attrs)) for r, n in zip(rest, names))


def fft_conv(u: xr.DataArray, K: Any, D: Any = None, *, dim: str = "time", channel_dim: str | None = "channel",
             bidirectional: bool = False) -> xr.DataArray:
    r""":func:`ssmcore.fft_conv` (convolution mode) along ``dim``.

    ``u`` has dims (..., channel_dim, dim) with K (H, L_k) (one kernel per channel),
    or any dims with a 1-D K when ``channel_dim`` is None. The output keeps u's
    dims, coordinates and attributes (C_out kernels per channel are not
    supported here: use :func:`ssmcore.fft_conv` / :func:`ssmcore.dask.fft_conv`).
    """
    fn = "ssmcore.xarray.fft_conv"
    K = np.asarray(K) if not _lazy(K) else K
    if channel_dim is None:
        _check(fn, "u", u, (dim,))
        core = [dim]
    else:
        _check(fn, "u", u, (channel_dim, dim))
        core = [channel_dim, dim]
    if K.ndim > 2:
        raise ValueError(f"{fn}: K has shape {K.shape}; expected (L_k,) or (H, L_k) (one output per channel)")
    ops = _ops(_lazy(u))

    def run(uu):
        return ops.fft_conv(uu, K, D, bidirectional=bidirectional)

    res = xr.apply_ufunc(run, u, input_core_dims=[core], output_core_dims=[core], dask="allowed", keep_attrs=True)
    return _order(res, u, dim)
