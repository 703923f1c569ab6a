"""GPU tests of the CuPy selective-state update.

Kernel vs the NumPy reference and Numba, the front door and VJP on CuPy arrays, torch CUDA
tensors, the current stream, and a per-step timing against mamba_ssm's Triton step where that is
importable.

Every test needs a CUDA device (``@pytest.mark.gpu``; skipped elsewhere by
``tests/conftest.py``). The CPU check of the same CUDA source is
``tests/test_cupy_state_update.py`` (host emulation).
"""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore
from ssmcore.backends.numba import state_update as nbk
from ssmcore.reference import state_update as ref

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")


def _csu():
    from ssmcore.backends.cupy import state_update as csu

    return csu


def _case(rng, rdt, cplx, *, b=4, H=8, P=64, N=16, G=2, S=None, opts=True):
    sdt = (np.complex64 if rdt == np.float32 else np.complex128) if cplx else rdt

    def st(*shape):
        v = rng.standard_normal(shape)
        return (v + 1j * rng.standard_normal(shape) if cplx else v).astype(sdt)

    A = -np.exp(0.5 * rng.standard_normal((H, P, N))) + (1j * rng.standard_normal((H, P, N)) if cplx else 0)
    r = lambda *s: rng.standard_normal(s).astype(rdt)  # noqa: E731
    return [st(b if S is None else S, H, P, N), r(b, H, P), (0.5 * rng.random((b, H, P))).astype(rdt),
            A.astype(sdt), st(b, G, N), st(b, G, N), r(H, P) if opts else None, r(b, H, P) if opts else None,
            r(H, P) if opts else None, opts]


def _dev(args):
    return [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]


def _close(got, want, rdt):
    tol = 3e-5 if rdt == np.float32 else 1e-12
    np.testing.assert_allclose(cp.asnumpy(got) if isinstance(got, cp.ndarray) else got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("rdt", [np.float32, np.float64])
@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("idx", [None, [5, 0, 2, 2], [1, -1, 3, 0]])
def test_kernel_matches_reference_and_numba(rng, rdt, cplx, idx):
    args = _case(rng, rdt, cplx, S=None if idx is None else 6)
    ix = None if idx is None else np.asarray(idx, np.int64)
    y0, s0 = ref.state_update_fwd(*args, ix)
    y1, s1 = nbk.state_update_fwd(*args, ix)
    y, s = _csu().state_update_fwd(*_dev(args), None if ix is None else cp.asarray(ix))
    assert isinstance(y, cp.ndarray) and y.dtype == rdt and s.dtype == args[0].dtype
    for got in ((y, s), (y1, s1)):
        _close(got[0], y0, rdt)
        _close(got[1], s0, rdt)


def test_nan_propagates_like_the_reference(rng):
    args = _case(rng, np.float32, False, b=2, H=1, P=100, G=1)
    args[2][1, 0, 7] = np.nan
    y0, s0 = ref.state_update_fwd(*args, None)
    y, s = _csu().state_update_fwd(*_dev(args), None)
    assert np.array_equal(np.isnan(cp.asnumpy(y)), np.isnan(y0))
    assert np.array_equal(np.isnan(cp.asnumpy(s)), np.isnan(s0))


@pytest.mark.parametrize("heads", [False, True])
def test_front_door_and_vjp_on_cupy(rng, heads):
    args = _case(rng, np.float64, False, b=3, H=2, P=3, N=4, G=2, S=5)
    st, x, dt, A, B, C, D, z, bias, _ = args
    if not heads:  # the plain form (batch, D, N) with B / C (batch, N)
        st, A = st.reshape(5, 6, 4), A.reshape(6, 4)
        x, dt, z = x.reshape(3, 6), dt.reshape(3, 6), z.reshape(3, 6)
        D, bias = D.reshape(6), bias.reshape(6)
        B, C = B[:, 0], C[:, 0]
    kw = dict(D=D, z=z, dt_bias=bias, dt_softplus=True, state_batch_indices=np.array([4, 0, 4]))
    pos = [st, x, dt, A, B, C]
    want, pb = ssmcore.vjp("selective_state_update", *pos, **kw)
    got, gpb = ssmcore.vjp("selective_state_update", *_dev(pos), **{k: cp.asarray(v) if isinstance(v, np.ndarray)
                                                                     else v for k, v in kw.items()})
    for g, w in zip(got, want):
        assert isinstance(g, cp.ndarray)
        _close(g, w, np.float64)
    ct = tuple(rng.standard_normal(w.shape) for w in want)
    for g, w in zip(gpb(tuple(cp.asarray(c) for c in ct)), pb(ct)):
        if w is not None:
            _close(g, w, np.float64)
    with pytest.raises(TypeError, match="inplace=True needs a NumPy ndarray state"):
        ssmcore.selective_state_update(*_dev(pos), state_batch_indices=cp.asarray(kw["state_batch_indices"]),
                                       inplace=True)


def test_runs_on_the_current_stream(rng):
    args = _dev(_case(rng, np.float32, False))
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        y, _ = _csu().state_update_fwd(*args, None)
    s.synchronize()
    _close(y, ref.state_update_fwd(*(cp.asnumpy(a) if isinstance(a, cp.ndarray) else a for a in args), None)[0],
           np.float32)


def test_torch_cuda_gradcheck(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    import ssmcore.torch as st

    args = _case(rng, np.float64, False, b=2, H=2, P=2, N=3, G=1)
    t = [torch.tensor(a, device="cuda", requires_grad=True) for a in args[:6]]
    assert torch.autograd.gradcheck(lambda *a: st.selective_state_update(*a, dt_softplus=True), t)


def test_step_time_against_triton(rng):
    """Batch 16, D 1536, N 16, float32 (the issue's case): report; compare with mamba_ssm's step if present."""
    b, D, N = 16, 1536, 16
    f = lambda *s: cp.asarray(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    state, x, dt, A = f(b, D, N), f(b, D), cp.abs(f(b, D)) * 0.5, -cp.abs(f(D, N))
    B, C, Dv, z, bias = f(b, N), f(b, N), f(D), f(b, D), f(D)
    run = lambda: ssmcore.selective_state_update(state, x, dt, A, B, C, Dv, z, bias, True)  # noqa: E731
    from cupyx.profiler import benchmark

    ours = float(np.median(benchmark(run, n_repeat=200, n_warmup=20).gpu_times))
    print(f"\nselective_state_update b16 D1536 N16 f32: {ours * 1e6:.1f} us per step (GPU time)")
    try:
        import torch
        from mamba_ssm.ops.triton.selective_state_update import (
            selective_state_update as triton_ssu,
        )
    except Exception:  # noqa: BLE001  (no peer on this machine: report ours only)
        return
    tt = lambda a: torch.as_tensor(a, device="cuda")  # noqa: E731
    targs = [tt(a) for a in (state, x, dt, A, B, C, Dv, z, bias)]
    peer = lambda: triton_ssu(*targs[:6], D=targs[6], z=targs[7], dt_bias=targs[8], dt_softplus=True)  # noqa: E731
    theirs = float(np.median(benchmark(peer, n_repeat=200, n_warmup=20).gpu_times))
    print(f"mamba_ssm Triton step: {theirs * 1e6:.1f} us; ratio {ours / theirs:.2f}")
    assert ours <= 1.5 * theirs
