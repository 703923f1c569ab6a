"""``linear_scan(..., out=)``: the NumPy ``out`` convention (the op itself is tested in test_scan.py)."""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore
from ssmcore._scan import linear_scan


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.uniform(0.5, 1.0, (3, 40)), rng.standard_normal((3, 40))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_out_is_filled_and_returned(data, backend):
    a, b = data
    buf = np.full_like(b, np.nan)
    h = linear_scan(a, b, backend=backend, out=buf)
    assert h is buf
    np.testing.assert_array_equal(buf, linear_scan(a, b, backend=backend))


def test_out_with_final_state_and_reverse(data):
    a, b = data
    buf = np.empty_like(b)
    h, hT = linear_scan(a, b, 0.3, reverse=True, return_final_state=True, out=buf)
    ref, ref_T = linear_scan(a, b, 0.3, reverse=True, return_final_state=True)
    assert h is buf
    np.testing.assert_array_equal(h, ref)
    np.testing.assert_array_equal(hT, ref_T)


def test_out_non_contiguous(data):
    a, b = data
    big = np.zeros((3, 80))
    view = big[:, ::2]  # strided: written through a temporary
    assert linear_scan(a, b, out=view) is view
    np.testing.assert_array_equal(view, linear_scan(a, b))
    assert np.all(big[:, 1::2] == 0)


@pytest.mark.parametrize("which", ["a", "b"])
def test_out_overlapping_an_input(data, which):
    a, b = data
    expected = linear_scan(a, b)
    a2, b2 = a.copy(), b.copy()
    target = a2 if which == "a" else b2
    assert linear_scan(a2, b2, out=target) is target
    np.testing.assert_array_equal(target, expected)


def test_out_streaming_reuses_one_buffer(data):
    a, b = data
    buf = np.empty((3, 10))
    h, pieces = None, []
    for s in range(0, 40, 10):
        _, h = linear_scan(a[:, s:s + 10], b[:, s:s + 10], h, return_final_state=True, out=buf)
        pieces.append(buf.copy())
    np.testing.assert_allclose(np.concatenate(pieces, -1), linear_scan(a, b), rtol=1e-14)


@pytest.mark.parametrize(
    "out, error, match",
    [
        (np.empty((3, 39)), ValueError, r"linear_scan: out has shape \(3, 39\).*\(3, 40\)"),
        (np.empty((3, 40), np.float32), TypeError, r"linear_scan: out has dtype float32; expected float64"),
        ([[0.0] * 40] * 3, TypeError, r"linear_scan: out must be a NumPy ndarray, got list"),
    ],
)
def test_out_errors(data, out, error, match):
    a, b = data
    with pytest.raises(error, match=match):
        linear_scan(a, b, out=out)


def test_out_read_only(data):
    a, b = data
    buf = np.empty_like(b)
    buf.flags.writeable = False
    with pytest.raises(ValueError, match="linear_scan: out is read-only"):
        linear_scan(a, b, out=buf)


def test_out_is_not_part_of_the_op():
    """Gradients and adapters see the op's signature without the NumPy-only ``out``."""
    opdef = ssmcore.get_op("linear_scan")
    assert "out" not in opdef.signature.parameters
    with pytest.raises(TypeError, match="out"):
        ssmcore.vjp("linear_scan", np.ones(3), np.ones(3), out=np.empty(3))
