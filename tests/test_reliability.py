"""Answers that must not change silently and errors that must name the right thing (issue: reliability)."""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore


def test_non_native_byte_order_keeps_its_precision():
    a = np.full((2, 5), 0.5, dtype=">f4")
    b = np.ones((2, 5), dtype=">f4")
    h = ssmcore.linear_scan(a, b)
    assert h.dtype == np.float32
    np.testing.assert_allclose(h, ssmcore.linear_scan(a.astype(np.float32), b.astype(np.float32)))


@pytest.mark.parametrize("option", ["reverse", "return_final_state"])
@pytest.mark.parametrize("value", ["no", 1, None, np.array([True])])
def test_boolean_options_accept_only_booleans(option, value):
    with pytest.raises(TypeError, match=rf"linear_scan: {option} must be True or False"):
        ssmcore.linear_scan(np.ones((2, 3)), np.ones((2, 3)), **{option: value})
    ssmcore.linear_scan(np.ones((2, 3)), np.ones((2, 3)), **{option: np.bool_(True)})


def test_get_op_names_itself():
    with pytest.raises(ValueError, match=r"^get_op: 'nope' is not a registered ssmcore op"):
        ssmcore.get_op("nope")


def test_vjp_without_arguments_speaks_of_the_op():
    with pytest.raises(TypeError, match=r"^vjp: linear_scan: missing a required argument: 'a'"):
        ssmcore.vjp("linear_scan")


def test_pullback_shape_error_names_the_op():
    _, pb = ssmcore.vjp("linear_scan", np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"^linear_scan pullback: cotangent has shape \(3,\)"):
        pb(np.ones(3))


def test_masked_arrays_are_refused():
    with pytest.raises(TypeError, match="linear_scan: got a masked array"):
        ssmcore.linear_scan(np.ma.ones((2, 3)), np.ones((2, 3)))


def test_dask_arrays_are_refused_with_a_pointer():
    da = pytest.importorskip("dask.array")
    with pytest.raises(TypeError, match=r"linear_scan: got a dask array.*ssmcore\.dask"):
        ssmcore.linear_scan(da.ones((2, 3)), np.ones((2, 3)))
