"""examples/dask_scale_out.py runs and its checks hold (small sizes)."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

pytest.importorskip("dask.array")

PATH = pathlib.Path(__file__).resolve().parents[1] / "examples" / "dask_scale_out.py"


def load():
    spec = importlib.util.spec_from_file_location("dask_scale_out", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_example_runs(capsys):
    out = load().main(["--series", "2000", "--steps", "64"])
    assert out["rms"].shape == (2, 1000) and out["x_final"].shape == (2, 1000, 4)
    assert np.all(np.isfinite(out["rms"])) and out["long_error"] < 1e-12
    assert "nothing computed yet" in capsys.readouterr().out


@pytest.mark.slow
def test_example_cluster():
    out = load().main(["--series", "2000", "--steps", "64", "--cluster"])
    np.testing.assert_allclose(out["rms_cluster"], out["rms"], rtol=1e-6)
