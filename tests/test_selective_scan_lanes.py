"""The lane forward kernel of the selective scan (channels in the SIMD lanes, float32).

``uses_lanes`` sends float32, real-A, variable-B/C calls whose groups hold a multiple of
``LANES`` channels to ``_fwd_kernel_lanes``; everything else keeps ``_fwd_kernel``. Both
kernels are compared here on the same canonical arguments, with every option, and the
public call against the float64 reference (forward, last state, and a VJP that consumes
the lane kernel's checkpoints).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import ssmcore
from tests.test_selective_scan import make, small_chunks

nss = importlib.import_module("ssmcore.backends.numba.selective_scan")
LANES = nss.LANES


def test_which_calls_take_the_lane_kernel():
    f32, f64, c64 = np.float32, np.float64, np.complex64
    assert nss.uses_lanes(f32, f32, True, True, LANES, 2 * LANES)
    assert not nss.uses_lanes(f64, f64, True, True, LANES, LANES)  # libm exp: no vector exp
    assert not nss.uses_lanes(f32, c64, True, True, LANES, LANES)  # complex A
    assert not nss.uses_lanes(f32, f32, False, True, LANES, LANES)  # fixed B
    assert not nss.uses_lanes(f32, f32, True, True, LANES + 1, LANES)  # group not a multiple of LANES


def _canonical(args, kw, softplus, reverse):
    """The launcher's canonical kernel arguments for `make`'s float32 inputs (variable B/C)."""
    u, delta, A, B, C = (args[k] for k in ("u", "delta", "A", "B", "C"))
    nb, nd, L = u.shape

    def time_major(X):  # (b, N, L) or (b, G, N, L) -> (b, G, L, N), as the front door hands it
        X = X[:, None] if X.ndim == 3 else X
        return np.ascontiguousarray(np.swapaxes(X, 2, 3))

    Bc, Cc = time_major(B), time_major(C)
    return nss._kernel_args(u, delta, A, Bc, Cc, kw.get("D"), kw.get("z"), kw.get("delta_bias"), kw.get("h0"),
                            kw.get("seq_idx"), True, True, nd // Bc.shape[1], nd // Cc.shape[1], softplus, reverse)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("options", [(), ("D", "z", "delta_bias", "h0")])
@pytest.mark.parametrize("seq", [False, True])
@pytest.mark.parametrize("G", [1, 2])
def test_lane_kernel_equals_the_general_kernel(reverse, options, seq, G):
    rng = np.random.default_rng(7)
    args, kw = make(rng, b=2, D=2 * LANES, L=300, N=5, G=G, bmode="group", cmode="group" if G > 1 else "var",
                    dtype=np.float32, with_=options, seq=seq)
    canon = _canonical(args, kw, softplus=True, reverse=reverse)
    assert nss.uses_lanes(canon[0].dtype, canon[2].dtype, *canon[10:14])
    for save in (False, True):
        o1, l1, c1 = nss._forward(canon, 64, save, kernel=nss._fwd_kernel_lanes)
        o2, l2, c2 = nss._forward(canon, 64, save, kernel=nss._fwd_kernel)
        np.testing.assert_allclose(o1, o2, rtol=2e-5, atol=2e-5 * np.abs(o2).max())
        np.testing.assert_allclose(l1, l2, rtol=2e-5, atol=2e-5 * np.abs(l2).max())
        assert c1.shape == c2.shape
        np.testing.assert_allclose(c1, c2, rtol=2e-5, atol=2e-5 * max(np.abs(c2).max(initial=0), 1))


@pytest.mark.parametrize("reverse", [False, True])
def test_public_call_on_the_lane_path_matches_the_reference(reverse):
    rng = np.random.default_rng(3)
    args, kw = make(rng, b=2, D=LANES, L=257, N=16, dtype=np.float32, seq=True)
    kw.update(delta_softplus=True, reverse=reverse, return_last_state=True)
    out, last = ssmcore.selective_scan(*args.values(), **kw)
    ref = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and k != "seq_idx" else v) for k, v in kw.items()}
    rout, rlast = ssmcore.selective_scan(*(v.astype(np.float64) for v in args.values()), **ref, backend="numpy")
    assert out.dtype == np.float32 and last.dtype == np.float32
    np.testing.assert_allclose(out, rout, rtol=1e-4, atol=1e-4 * np.abs(rout).max())
    np.testing.assert_allclose(last, rlast, rtol=1e-4, atol=1e-4 * np.abs(rlast).max())


def test_vjp_through_lane_checkpoints_matches_the_reference():
    rng = np.random.default_rng(5)
    args, kw = make(rng, b=1, D=LANES, L=70, N=4, dtype=np.float32)
    kw.update(delta_softplus=True)
    g = rng.standard_normal((1, LANES, 70)).astype(np.float32)
    with small_chunks(16):  # several checkpoints, written by the lane kernel
        _, pullback = ssmcore.vjp("selective_scan", *args.values(), **kw)
        grads = pullback(g)
    ref64 = {k: v.astype(np.float64) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    _, rpull = ssmcore.vjp("selective_scan", *(v.astype(np.float64) for v in args.values()), **ref64,
                           backend="numpy")
    for got, want in zip(grads, rpull(g.astype(np.float64))):
        if want is None:
            continue
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


def test_nonfinite_inputs_on_the_lane_path_follow_the_reference():
    rng = np.random.default_rng(1)
    args, kw = make(rng, b=1, D=LANES, L=40, N=4, dtype=np.float32, with_=())
    args["u"][0, 3, 5] = np.nan
    args["B"][0, 1, 20] = np.inf
    out = ssmcore.selective_scan(*args.values())
    ref = ssmcore.selective_scan(*(v.astype(np.float64) for v in args.values()), backend="numpy")
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(ref))
