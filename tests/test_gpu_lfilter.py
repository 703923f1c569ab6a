"""GPU tests of the CuPy lfilter kernels (``ssmcore/backends/cupy/lfilter.py``) and of lsim on CuPy.

Every test needs a CUDA device (``@pytest.mark.gpu``; skipped elsewhere by conftest).
The launchers are checked against the NumPy reference and scipy.signal.lfilter (FIR
and IIR, every register bucket and the generic kernel, shared and per-channel rows,
every dtype, L = 0 and 1, NaN/inf), then the public ``lfilter`` and ``ssmcore.vjp`` on
CuPy arrays, the current stream, torch CUDA tensors through ``ssmcore.torch``, and
``lsim`` on CuPy arrays against the NumPy path. The same kernels run on the host in
tests/test_cupy_lfilter.py (CUDA emulation), where real results are bit-identical to
scipy's; here they are compared with a tolerance (the device's division and complex
products need not round as the host's).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal as sps
from test_cupy_lfilter import _case  # the same operands as the host-emulation tests

import ssmcore
from ssmcore.reference import lfilter as ref

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")

TOL = {np.float32: 2e-5, np.float64: 1e-12, np.complex64: 2e-5, np.complex128: 1e-12}
DTYPES = [np.float32, np.float64, np.complex64, np.complex128]


def _clf():
    from ssmcore.backends.cupy import lfilter as clf

    return clf


def _close(got, want, dtype):
    assert isinstance(got, cp.ndarray), type(got)
    got = cp.asnumpy(got)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    tol = TOL[np.dtype(dtype).type]
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def _d(*xs):
    return tuple(cp.asarray(x) for x in xs)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("K", [1, 2, 3, 5, 9, 16, 17, 40])
@pytest.mark.parametrize("fir", [False, True])
def test_kernels_match_reference(rng, dt, K, fir):
    clf = _clf()
    for shared, C, L in ((True, 300, 257), (False, 129, 100)):
        b, brow, a, arow, x, zi, gy, gzf = _case(rng, dt, K, C, L, fir=fir, shared=shared)
        y0, zf0 = ref.lfilter_fwd(b, brow, a, arow, x, zi)
        y, zf = clf.lfilter_fwd(*_d(b, brow, a, arow, x, zi))
        _close(y, y0, dt)
        _close(zf, zf0, dt)
        want = ref.lfilter_bwd(b, brow, a, arow, x, y0, gy, gzf, True)
        got = clf.lfilter_bwd(*_d(b, brow, a, arow, x, y0, gy, gzf), True)
        for g, w in zip(got, want):
            _close(g, w, dt)
        gx, gb, ga, gzi = clf.lfilter_bwd(*_d(b, brow, a, arow, x, y0, gy, gzf), False)
        assert gb is None and ga is None
        _close(gx, want[0], dt)
        _close(gzi, want[3], dt)


@pytest.mark.parametrize("L", [0, 1])
def test_empty_and_single_step(rng, L):
    clf = _clf()
    for K in (3, 20):
        b, brow, a, arow, x, zi, gy, gzf = _case(rng, np.float64, K, 5, L, shared=False)
        y0, zf0 = ref.lfilter_fwd(b, brow, a, arow, x, zi)
        y, zf = clf.lfilter_fwd(*_d(b, brow, a, arow, x, zi))
        _close(y, y0, np.float64)
        _close(zf, zf0, np.float64)
        for g, w in zip(clf.lfilter_bwd(*_d(b, brow, a, arow, x, y0, gy, gzf), True),
                        ref.lfilter_bwd(b, brow, a, arow, x, y0, gy, gzf, True)):
            _close(g, w, np.float64)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_public_lfilter_matches_scipy(rng, dt):
    """Butterworth order 4 over many channels, streaming with zi, real results (a tolerance: see module doc)."""
    b, a = sps.butter(4, 0.2)
    x = rng.standard_normal((64, 1000)).astype(dt)
    zi = np.outer(np.ones(64), sps.lfilter_zi(b, a)).astype(dt)
    y, zf = ssmcore.lfilter(cp.asarray(b.astype(dt)), cp.asarray(a.astype(dt)), cp.asarray(x), zi=cp.asarray(zi))
    ys, zfs = sps.lfilter(b.astype(dt), a.astype(dt), x, zi=zi)
    _close(y, ys, dt)
    _close(zf, zfs, dt)
    yf = ssmcore.lfilter(cp.asarray(np.ones(5, dt) / 5), cp.asarray(np.ones(1, dt)), cp.asarray(x), axis=-1)  # FIR
    _close(yf, sps.lfilter(np.ones(5, dt) / 5, np.ones(1, dt), x), dt)


def test_vjp_on_cupy_matches_numpy(rng):
    b = 0.3 * rng.standard_normal((3, 4))
    a = 0.2 * rng.standard_normal((3, 3))
    a[:, 0] = 1.5
    x = rng.standard_normal((2, 3, 50))
    zi = rng.standard_normal((2, 3, 3))
    out0, pb0 = ssmcore.vjp("lfilter", b, a, x, -1, zi)
    out, pb = ssmcore.vjp("lfilter", *_d(b, a, x), -1, cp.asarray(zi))
    for g, w in zip(out, out0):
        _close(g, w, np.float64)
    cts = tuple(rng.standard_normal(o.shape) for o in out0)
    for g, w in zip(pb(_d(*cts)), pb0(cts)):
        _close(g, w, np.float64)


def test_nonfinite_propagate_as_scipy(rng):
    b, a = sps.butter(2, 0.3)
    x = rng.standard_normal((4, 64))
    x[0, 5], x[1, 9], x[2, 0] = np.inf, np.nan, -np.inf
    y = cp.asnumpy(ssmcore.lfilter(cp.asarray(b), cp.asarray(a), cp.asarray(x)))
    with np.errstate(invalid="ignore", over="ignore"):
        ys = sps.lfilter(b, a, x)
    assert np.array_equal(np.isnan(y), np.isnan(ys)) and np.array_equal(np.isinf(y), np.isinf(ys))
    yf = cp.asnumpy(ssmcore.lfilter(cp.asarray(b), cp.asarray([1.0]), cp.asarray(x)))  # FIR: inf stays inf
    with np.errstate(invalid="ignore", over="ignore"):
        yfs = sps.lfilter(b, [1.0], x)
    assert np.array_equal(np.isnan(yf), np.isnan(yfs)) and np.array_equal(np.isinf(yf), np.isinf(yfs))


def test_runs_on_the_current_stream(rng):
    b, brow, a, arow, x, zi, _, _ = _case(rng, np.float32, 3, 200, 300)
    args = _d(b, brow, a, arow, x, zi)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        y, _ = _clf().lfilter_fwd(*args)
    s.synchronize()
    _close(y, ref.lfilter_fwd(b, brow, a, arow, x, zi)[0], np.float32)


def test_torch_cuda_gradcheck(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    import ssmcore.torch as st

    b = torch.tensor(0.3 * rng.standard_normal((2, 3)), device="cuda", requires_grad=True)
    a = torch.tensor(np.array([[1.2, 0.2, -0.1], [0.9, -0.3, 0.05]]), device="cuda", requires_grad=True)
    x = torch.tensor(rng.standard_normal((2, 20)), device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda b, a, x: st.lfilter(b, a, x), (b, a, x))


@pytest.mark.parametrize("interp", [True, False])
def test_lsim_on_cupy_matches_numpy(rng, interp):
    A = np.array([[-1.0, 0.5], [-0.3, -2.0]])
    B = np.array([[1.0, 0.0], [0.5, 1.0]])
    C = np.array([[1.0, 1.0]])
    D = np.array([[0.0, 0.1]])
    T = np.linspace(0.5, 10, 2001)
    U = rng.standard_normal((2001, 2))
    X0 = np.array([1.0, -1.0])
    want = ssmcore.lsim((A, B, C, D), U, T, X0=X0, interp=interp)
    for t in (T, cp.asarray(T)):  # a host T costs no synchronisation
        got = ssmcore.lsim((A, B, C, D), cp.asarray(U), t, X0=cp.asarray(X0), interp=interp)
        for g, w in zip(got, want):
            _close(g, w, np.float64)
    with pytest.raises(ValueError, match="not equally spaced"):
        ssmcore.lsim((A, B, C, D), cp.asarray(U[:4]), cp.asarray([0.0, 1.0, 1.5, 3.0]))


def test_lfilter_4096_channels_time(rng):
    """(4096, 2^14) order 4 float32: report the GPU time of one forward (asv's LfilterGPU times 2^16)."""
    from cupyx.profiler import benchmark

    b, a = (v.astype(np.float32) for v in sps.butter(4, 0.1))
    x = cp.random.standard_normal((4096, 1 << 14), dtype=cp.float32)
    bd, ad = cp.asarray(b), cp.asarray(a)
    t = float(np.median(benchmark(lambda: ssmcore.lfilter(bd, ad, x), n_repeat=5, n_warmup=2).gpu_times))
    gbs = 2 * x.nbytes / t / 1e9
    print(f"\nlfilter (4096, 16384) order 4 f32: {t * 1e3:.2f} ms ({gbs:.0f} GB/s of x read + y written)")
