"""GPU tests of the CuPy selective scan (``ssmcore/backends/cupy/selective_scan.py``).

Every test needs a CUDA device (``@pytest.mark.gpu``; skipped elsewhere by
conftest). The CuPy kernels are checked against the float64 NumPy reference and
the Numba kernels (L = 1, odd L, L not a multiple of the chunk, groups, seq_idx,
h0, huge delta, exp underflow, NaN propagation, every option), then through the
public front door ``ssmcore.selective_scan`` and ``ssmcore.vjp`` on CuPy arrays
against the NumPy reference's VJP. The same kernels run on the CPU in the host
emulation of ``tests/test_cupy_selective_scan.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore
from ssmcore.backends.numba import selective_scan as nb
from ssmcore.reference import selective_scan as ref

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")

NAMES = ("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias", "dh0")


def _css():
    from ssmcore.backends.cupy import selective_scan as css

    return css


def _case(rng, nb_, nd, L, N, rdt, cplx, b_groups, c_groups, D=True, z=True, bias=True, h0=True, seq=False,
          softplus=True, reverse=False, delta_scale=0.5):
    """Canonical kernel arguments (NumPy); ``*_groups`` None for a fixed B / C, else G."""
    sdt = (np.complex64 if rdt == np.float32 else np.complex128) if cplx else rdt

    def st(shape):
        x = rng.standard_normal(shape)
        if cplx:
            x = x + 1j * rng.standard_normal(shape)
        return x.astype(sdt)

    u = rng.standard_normal((nb_, nd, L)).astype(rdt)
    delta = (rng.standard_normal((nb_, nd, L)) * delta_scale).astype(rdt)
    A = -np.exp(rng.standard_normal((nd, N)) * 0.5)
    if cplx:
        A = A + 1j * rng.standard_normal((nd, N))
    A = A.astype(sdt)

    def bc(G):
        return (st((1, nd, 1, N)), False, 1) if G is None else (st((nb_, G, L, N)), True, nd // G)

    B, b_var, rb = bc(b_groups)
    C, c_var, rc = bc(c_groups)
    return (u, delta, A, B, C, rng.standard_normal(nd).astype(rdt) if D else None,
            rng.standard_normal((nb_, nd, L)).astype(rdt) if z else None,
            (rng.standard_normal(nd) * 0.3).astype(rdt) if bias else None, st((nb_, nd, N)) if h0 else None,
            np.sort(rng.integers(0, 3, (nb_, L)), axis=1) if seq else None, b_var, c_var, rb, rc, softplus, reverse)


def _dev(args):
    return tuple(cp.asarray(x) if isinstance(x, np.ndarray) else x for x in args)


def _host(x):
    return cp.asnumpy(x) if isinstance(x, cp.ndarray) else x


def _close(got, want, rdt, what):
    tol = 5e-4 if rdt == np.float32 else 1e-10
    want = np.asarray(want)
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(_host(got), want, rtol=tol, atol=tol * scale, err_msg=what)


def _check_kernels(rng, args, rdt, dlast=True):
    css = _css()
    out0, last0, _ = ref.selective_scan_fwd(*args, True)
    out, last, ckpt = css.selective_scan_fwd(*_dev(args), True)
    outn, lastn, _ = nb.selective_scan_fwd(*args, True)
    for what, g, w in (("out", out, out0), ("last", last, last0), ("out vs numba", out, outn),
                       ("last vs numba", last, lastn)):
        _close(g, w, rdt, what)
    nb_, nd, L = args[0].shape
    assert ckpt[1].shape == (nb_, nd, -(-L // css.CHUNK), args[2].shape[1])  # O(B D N L / chunk)
    dout = rng.standard_normal((nb_, nd, L)).astype(rdt)
    dl = None
    if dlast:
        dl = rng.standard_normal(last0.shape) + (1j * rng.standard_normal(last0.shape) if np.iscomplexobj(last0) else 0)
        dl = dl.astype(args[2].dtype)
    want = ref.selective_scan_bwd(*args, None, dout, dl)
    for c in (ckpt, None):
        got = css.selective_scan_bwd(*_dev(args), c, cp.asarray(dout), None if dl is None else cp.asarray(dl))
        for name, g, w in zip(NAMES, got, want):
            if w is None:
                assert g is None, name
            else:
                assert g.shape == w.shape, name
                _close(g, w, rdt, name)


# (batch, D, L, N, B groups, C groups): None = fixed
SHAPES = [
    (2, 3, 1, 4, None, None),  # L = 1
    (2, 5, 333, 16, 1, 1),  # odd L, one group
    (3, 8, 1029, 16, 2, 4),  # L not a multiple of the chunk, groups
    (1, 4, 2048, 8, None, 2),  # several full chunks
    (2, 3, 700, 64, 3, None),  # larger N
]


@pytest.mark.parametrize("rdt", [np.float32, np.float64])
@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_match_reference_and_numba(rng, rdt, cplx, shape):
    _check_kernels(rng, _case(rng, *shape[:4], rdt, cplx, *shape[4:]), rdt)


OPTIONS = [
    dict(D=False, z=False, bias=False, h0=False, softplus=False),
    dict(seq=True),
    dict(reverse=True),
    dict(reverse=True, seq=True),
    dict(delta_scale=40.0),  # huge delta: softplus linear branch, exp(dt A) underflows to 0
]


@pytest.mark.parametrize("rdt", [np.float32, np.float64])
@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
def test_kernel_options(rng, rdt, cplx, opts):
    _check_kernels(rng, _case(rng, 2, 6, 777, 8, rdt, cplx, 2, None, **opts), rdt)


def test_nan_propagates_like_the_reference(rng):
    css = _css()
    args = list(_case(rng, 1, 2, 900, 4, np.float64, False, None, None, z=False))
    args[0][0, 0, 600] = np.nan
    out0, last0, _ = ref.selective_scan_fwd(*args, True)
    out, last, _ = css.selective_scan_fwd(*_dev(args), True)
    out, last = _host(out), _host(last)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(out0))
    np.testing.assert_array_equal(np.isnan(last), np.isnan(last0))
    fin = np.isfinite(out0)
    np.testing.assert_allclose(out[fin], out0[fin], rtol=1e-10, atol=1e-10)


def test_empty_shapes(rng):
    css = _css()
    args = _case(rng, 2, 3, 0, 4, np.float32, False, 1, None)
    out, last, ckpt = css.selective_scan_fwd(*_dev(args), True)
    assert out.shape == (2, 3, 0)
    np.testing.assert_array_equal(_host(last), args[8])
    dl = cp.asarray(rng.standard_normal((2, 3, 4)).astype(np.float32))
    g = css.selective_scan_bwd(*_dev(args), ckpt, cp.zeros((2, 3, 0), np.float32), dl)
    np.testing.assert_array_equal(_host(g[8]), _host(dl))


def test_fixed_gradients_are_deterministic(rng):
    css = _css()
    args = _dev(_case(rng, 2, 16, 1500, 16, np.float32, False, None, None))
    dout = cp.asarray(rng.standard_normal((2, 16, 1500)).astype(np.float32))
    g1 = css.selective_scan_bwd(*args, None, dout, None)
    g2 = css.selective_scan_bwd(*args, None, dout, None)
    for name, a, b in zip(NAMES, g1, g2):
        if a is not None:
            np.testing.assert_array_equal(_host(a), _host(b), err_msg=name)


def _front_inputs(rng, cplx, var):
    b, D, L, N = 2, 8, 301, 16
    A = -np.exp(rng.standard_normal((D, N)))
    if cplx:
        A = A + 1j * rng.standard_normal((D, N))

    def bc():
        shape = (b, 2, N, L) if var else (D, N)
        x = rng.standard_normal(shape)
        return x + 1j * rng.standard_normal(shape) if cplx else x

    kw = dict(D=rng.standard_normal(D), z=rng.standard_normal((b, D, L)), delta_bias=rng.standard_normal(D) * 0.3,
              delta_softplus=True, return_last_state=True)
    h0 = rng.standard_normal((b, D, N)) + (1j * rng.standard_normal((b, D, N)) if cplx else 0)
    seq = np.sort(rng.integers(0, 2, (b, L)), axis=1)
    return [rng.standard_normal((b, D, L)), rng.standard_normal((b, D, L)) * 0.5, A, bc(), bc()], kw, h0, seq


@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("var", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_front_door_and_vjp_on_cupy(rng, cplx, var, reverse):
    pos, kw, h0, seq = _front_inputs(rng, cplx, var)
    kw = dict(kw, h0=h0, seq_idx=seq, reverse=reverse)
    (o0, l0), pb0 = ssmcore.vjp("selective_scan", *pos, **kw, backend="numpy")
    dkw = {k: cp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    out, last = ssmcore.selective_scan(*(cp.asarray(x) for x in pos), **dkw)
    assert isinstance(out, cp.ndarray) and out.dtype == np.float64
    _close(out, o0, np.float64, "out")
    _close(last, l0, np.float64, "last")
    _, pb1 = ssmcore.vjp("selective_scan", *(cp.asarray(x) for x in pos), **dkw)
    ct = (rng.standard_normal(o0.shape), rng.standard_normal(l0.shape) + (1j * rng.standard_normal(l0.shape)
                                                                         if cplx else 0))
    g0 = pb0(ct)
    g1 = pb1(tuple(cp.asarray(c) for c in ct))
    for name, a, b in zip(ssmcore.get_op("selective_scan").inputs, g1, g0):
        if b is None:
            assert a is None, name
            continue
        assert isinstance(a, cp.ndarray) and a.shape == b.shape, name
        _close(a, b, np.float64, name)


def test_front_door_float32_on_cupy(rng):
    pos, kw, _, _ = _front_inputs(rng, False, True)
    pos32 = [cp.asarray(x.astype(np.float32)) for x in pos]
    kw32 = {k: cp.asarray(v.astype(np.float32)) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    out, last = ssmcore.selective_scan(*pos32, **kw32)
    assert out.dtype == np.float32 and last.dtype == np.float32
    o0, l0 = ssmcore.selective_scan(*pos, **kw, backend="numpy")
    _close(out, o0, np.float32, "out")
    _close(last, l0, np.float32, "last")


def test_runs_on_the_current_stream(rng):
    args = _dev(_case(rng, 2, 4, 600, 8, np.float32, False, 1, None))
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        out, _, _ = _css().selective_scan_fwd(*args, False)
    s.synchronize()
    out0, _, _ = ref.selective_scan_fwd(*(_host(a) for a in args), False)
    _close(out, out0, np.float32, "out")
