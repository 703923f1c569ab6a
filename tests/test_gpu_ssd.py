"""GPU tests of the CuPy SSD (``ssmcore/backends/cupy/ssd.py``).

Every test needs a CUDA device (``@pytest.mark.gpu``; skipped elsewhere by
conftest). The CuPy kernels are checked against the float64 NumPy reference
(``ssd_forward`` / ``ssd_backward``, the kernel contract) and the Numba kernels:
L = 1, odd L, L not a multiple of the chunk, mamba's chunk 256, groups, resets
from seq_idx, h0, the final-state cotangent, exp underflow (large dt), NaN
propagation; then the public front door ``ssmcore.ssd`` and ``ssmcore.vjp`` on
CuPy arrays (D, z, dt bias / softplus / limits, seq_idx, initial and final
states) against the NumPy backend. The same kernels run on the CPU in the host
emulation of ``tests/test_cupy_ssd.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore
from ssmcore.backends.numba import ssd as nb
from ssmcore.reference import ssd as ref

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")

NAMES = ("gx", "gdt", "gA", "gB", "gC", "gD", "gh0")


def _cssd():
    from ssmcore.backends.cupy import ssd as cssd

    return cssd


def _case(rng, nb_, L, H, P, G, N, dtype, D=True, h0=True, seq=False, dt_scale=0.3):
    x = rng.standard_normal((nb_, L, H, P)).astype(dtype)
    dt = (np.abs(rng.standard_normal((nb_, L, H))) * dt_scale + 0.01).astype(dtype)
    A = (-np.exp(rng.standard_normal(H) * 0.5)).astype(dtype)
    B = rng.standard_normal((nb_, L, G, N)).astype(dtype)
    C = rng.standard_normal((nb_, L, G, N)).astype(dtype)
    Dv = rng.standard_normal((H, P)).astype(dtype) if D else None
    hh = rng.standard_normal((nb_, H, P, N)).astype(dtype) if h0 else None
    reset = None
    if seq:
        s = np.sort(rng.integers(0, 4, (nb_, L)), axis=1)
        reset = np.zeros((nb_, L), dtype=bool)
        reset[:, 1:] = s[:, 1:] != s[:, :-1]
    return x, dt, A, B, C, Dv, hh, reset


def _dev(args):
    return tuple(cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args)


def _host(a):
    return cp.asnumpy(a) if isinstance(a, cp.ndarray) else a


def _close(got, want, dtype, what):
    tol = 5e-4 if dtype == np.float32 else 1e-9
    want = np.asarray(want, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(np.asarray(_host(got), dtype=np.float64), want, rtol=tol, atol=tol * scale,
                               err_msg=what)


def _check(rng, case, Q, gfinal=True):
    cssd = _cssd()
    x, dt, A, B, C, Dv, hh, reset = case
    dtype = x.dtype
    y0, st0 = ref.ssd_forward(*case, Q)
    yn, stn = nb.ssd_forward(*case, Q)
    y, st = cssd.ssd_forward(*_dev(case), Q)
    assert isinstance(y, cp.ndarray) and y.dtype == dtype and st.shape == st0.shape
    for what, g, w in (("y", y, y0), ("states", st, st0), ("y vs numba", y, yn), ("states vs numba", st, stn)):
        _close(g, w, dtype, what)
    gy = rng.standard_normal(y0.shape).astype(dtype)
    gf = rng.standard_normal(st0[:, :, -1].shape).astype(dtype) if gfinal else None
    want = ref.ssd_backward(x, dt, A, B, C, Dv, reset, st0, gy, gf, Q)
    wantn = nb.ssd_backward(x, dt, A, B, C, Dv, reset, stn, gy, gf, Q)
    got = cssd.ssd_backward(*_dev((x, dt, A, B, C, Dv, reset, st0, gy, gf)), Q)
    for name, g, w, wn in zip(NAMES, got, want, wantn):
        assert isinstance(g, cp.ndarray) and g.shape == w.shape and g.dtype == dtype, name
        _close(g, w, dtype, name)
        _close(g, wn, dtype, name + " vs numba")


# (batch, L, heads, headdim, groups, dstate, chunk)
SHAPES = [
    (2, 1, 4, 8, 1, 16, 64),  # L = 1
    (2, 333, 4, 16, 2, 16, 64),  # odd L, groups
    (1, 600, 8, 64, 1, 128, 256),  # mamba-2's headdim / dstate / chunk, L not a multiple of it
    (3, 130, 6, 5, 3, 7, 32),  # odd sizes everywhere
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_match_reference_and_numba(rng, dtype, shape):
    _check(rng, _case(rng, *shape[:6], dtype), shape[6])


OPTIONS = [dict(D=False, h0=False), dict(seq=True), dict(seq=True, h0=False), dict(dt_scale=30.0)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
def test_kernel_options(rng, dtype, opts):
    _check(rng, _case(rng, 2, 200, 4, 8, 2, 8, dtype, **opts), 64, gfinal=opts.get("h0", True))


def test_L0(rng):
    cssd = _cssd()
    case = _case(rng, 2, 0, 3, 4, 1, 5, np.float64)
    y, st = cssd.ssd_forward(*_dev(case), 16)
    assert y.shape == (2, 0, 3, 4) and st.shape == (2, 3, 1, 4, 5)
    _close(st[:, :, 0], case[6], np.float64, "h0")


def test_nan_propagates_like_the_reference(rng):
    cssd = _cssd()
    case = list(_case(rng, 1, 300, 2, 4, 1, 8, np.float64))
    case[0][0, 150, 1, 2] = np.nan
    y0, _ = ref.ssd_forward(*case, 64)
    y, _ = cssd.ssd_forward(*_dev(case), 64)
    np.testing.assert_array_equal(np.isnan(_host(y)), np.isnan(y0))


def test_deterministic(rng):
    cssd = _cssd()
    case = _dev(_case(rng, 2, 257, 8, 16, 1, 16, np.float32))
    y, st = cssd.ssd_forward(*case, 64)
    gy = cp.asarray(rng.standard_normal(y.shape).astype(np.float32))
    x, dt, A, B, C, Dv, _, reset = case
    g1 = cssd.ssd_backward(x, dt, A, B, C, Dv, reset, st, gy, None, 64)
    g2 = cssd.ssd_backward(x, dt, A, B, C, Dv, reset, st, gy, None, 64)
    for name, a, b in zip(NAMES, g1, g2):
        assert bool(cp.all(a == b)), name


def _front_inputs(rng, d_per_head):
    nb_, L, H, P, G, N = 2, 150, 4, 8, 2, 16
    x = rng.standard_normal((nb_, L, H, P))
    dt = rng.standard_normal((nb_, L, H))
    A = -np.exp(rng.standard_normal(H) * 0.5)
    B = rng.standard_normal((nb_, L, G, N))
    C = rng.standard_normal((nb_, L, G, N))
    kw = dict(chunk_size=32, D=rng.standard_normal(H if d_per_head else (H, P)), z=rng.standard_normal(x.shape),
              dt_bias=rng.standard_normal(H) * 0.3, dt_softplus=True, dt_limit=(0.01, 2.0),
              initial_states=rng.standard_normal((nb_, H, P, N)),
              seq_idx=np.sort(rng.integers(0, 3, (nb_, L)), axis=1), return_final_states=True)
    return (x, dt, A, B, C), kw


@pytest.mark.parametrize("d_per_head", [True, False])
def test_front_door_and_vjp_on_cupy(rng, d_per_head):
    pos, kw = _front_inputs(rng, d_per_head)
    (o0, f0), pb0 = ssmcore.vjp("ssd", *pos, **kw, backend="numpy")
    dkw = {k: cp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    out, final = ssmcore.ssd(*(cp.asarray(a) for a in pos), **dkw)
    assert isinstance(out, cp.ndarray) and out.dtype == np.float64
    _close(out, o0, np.float64, "out")
    _close(final, f0, np.float64, "final")
    _, pb1 = ssmcore.vjp("ssd", *(cp.asarray(a) for a in pos), **dkw)
    ct = (rng.standard_normal(o0.shape), rng.standard_normal(f0.shape))
    g0 = pb0(ct)
    g1 = pb1(tuple(cp.asarray(c) for c in ct))
    for name, a, b in zip(ssmcore.get_op("ssd").inputs, g1, g0):
        if b is None:
            assert a is None, name
            continue
        assert isinstance(a, cp.ndarray) and a.shape == b.shape, name
        _close(a, b, np.float64, name)


def test_front_door_float32_on_cupy(rng):
    pos, kw = _front_inputs(rng, True)
    pos32 = [cp.asarray(a.astype(np.float32)) for a in pos]
    kw32 = {k: cp.asarray(v.astype(np.float32 if v.dtype.kind == "f" else v.dtype)) if isinstance(v, np.ndarray)
            else v for k, v in kw.items()}
    out, final = ssmcore.ssd(*pos32, **kw32)
    assert out.dtype == np.float32 and final.dtype == np.float32
    o0, f0 = ssmcore.ssd(*pos, **kw, backend="numpy")
    _close(out, o0, np.float32, "out")
    _close(final, f0, np.float32, "final")
