"""ssmcore.xarray: named dims, coords and attrs kept; dask-backed inputs stay lazy."""

from __future__ import annotations

import numpy as np
import pytest

xr = pytest.importorskip("xarray")
da = pytest.importorskip("dask.array")

import ssmcore  # noqa: E402
import ssmcore.xarray as sx  # noqa: E402


@pytest.fixture
def signal(rng):
    return xr.DataArray(
        rng.standard_normal((3, 40)), dims=("sensor", "time"),
        coords={"sensor": ["a", "b", "c"], "time": np.arange(40) * 0.1}, attrs={"units": "V"},
    )


@pytest.mark.parametrize("lazy", [False, True])
def test_linear_scan(signal, lazy):
    a = xr.DataArray([0.9, 0.5, 0.1], dims="sensor")
    b = signal.chunk({"time": 7}) if lazy else signal
    h, hf = sx.linear_scan(a, b, 1.0, return_final_state=True)
    assert isinstance(h.data, da.Array) == lazy
    assert h.dims == ("sensor", "time") and h.attrs == {"units": "V"}
    assert list(h.coords["sensor"].values) == ["a", "b", "c"] and np.allclose(h.coords["time"], signal.time)
    ref, rf = ssmcore.linear_scan(a.values[:, None], signal.values, 1.0, return_final_state=True)
    np.testing.assert_allclose(h.values, ref, rtol=1e-12)
    assert hf.dims == ("sensor",) and np.allclose(hf.values, rf, rtol=1e-12)


def test_linear_scan_time_dim_not_last_and_time_varying_a(rng, signal):
    bt = signal.transpose("time", "sensor")
    a = xr.DataArray(rng.uniform(0.5, 1, (40, 3)), dims=("time", "sensor"))
    h = sx.linear_scan(a, bt.chunk({"time": 9}))
    assert h.dims == ("time", "sensor")
    np.testing.assert_allclose(h.values, ssmcore.linear_scan(a.values.T, signal.values).T, rtol=1e-12)


def test_missing_dim_and_type(signal):
    with pytest.raises(ValueError, match="dim="):
        sx.linear_scan(0.5, signal, dim="t")
    with pytest.raises(TypeError, match="DataArray"):
        sx.linear_scan(0.5, signal.values)


def test_lti_simulate_and_diag(rng, signal):
    A = np.array([[0.5, 0.1], [0.0, 0.3]])
    B = np.ones((2, 1))
    C = np.array([[1.0, 0.0]])
    u = signal.chunk({"time": 9})
    y, xf = sx.lti_simulate(A, B, C, None, u, return_final_state=True)
    assert y.dims == ("sensor", "output", "time") and xf.dims == ("sensor", "state")
    assert isinstance(y.data, da.Array) and y.attrs == {"units": "V"}
    np.testing.assert_allclose(y.values, ssmcore.lti_simulate(A, B, C, None, signal.values[:, None]), rtol=1e-12)
    Ad = rng.uniform(0.5, 0.9, (3, 4))
    Bd = np.ones((3, 4))
    Cd = rng.standard_normal((3, 4))
    uc = signal.rename(sensor="channel")
    yd = sx.lti_simulate_diag(Ad, Bd, Cd, None, uc.chunk({"time": 11}))
    assert yd.dims == ("channel", "time") and list(yd.channel.values) == ["a", "b", "c"]
    np.testing.assert_allclose(yd.values, ssmcore.lti_simulate_diag(Ad, Bd, Cd, None, signal.values), rtol=1e-12)


def test_dlsim_and_fft_conv(rng, signal):
    A = np.array([[0.5, 0.1], [0.0, 0.3]])
    B = np.ones((2, 1))
    C = np.array([[1.0, 0.0]])
    D = np.zeros((1, 1))
    yo, xo = sx.dlsim((A, B, C, D, 0.1), signal.isel(sensor=0).chunk({"time": 6}))
    assert yo.dims == ("time", "output") and xo.dims == ("time", "state") and np.allclose(yo.time, signal.time)
    _, yr, xr_ = ssmcore.dlsim((A, B, C, D, 0.1), signal.values[0])
    np.testing.assert_allclose(yo.values, yr, rtol=1e-12)
    np.testing.assert_allclose(xo.values, xr_, rtol=1e-12)
    K = rng.standard_normal((3, 5))
    yc = sx.fft_conv(signal.rename(sensor="channel").chunk({"time": 8}), K)
    assert yc.dims == ("channel", "time")
    np.testing.assert_allclose(yc.values, ssmcore.fft_conv(signal.values, K), rtol=1e-12, atol=1e-13)
    y1 = sx.fft_conv(signal, K[0], channel_dim=None)
    np.testing.assert_allclose(y1.values, ssmcore.fft_conv(signal.values, K[0]), rtol=1e-12, atol=1e-13)


def test_core_refuses_xarray(signal):
    with pytest.raises(TypeError, match="ssmcore.xarray"):
        ssmcore.linear_scan(0.5, signal)
