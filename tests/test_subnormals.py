"""Subnormal flushing in the Numba kernels (issue 15 item 1; ssmcore/backends/numba/_fpenv.py).

Observable on any x86-64/arm64 host (AMD does not stall, but it flushes): with
flushing on, a result below ``finfo.tiny`` becomes 0 (FTZ) and a subnormal input
is read as 0 (DAZ); with it off the kernels give the IEEE subnormal. After every
ssmcore call, the control register of the calling thread and of Numba's worker
threads is back to what it was, so NumPy code keeps gradual underflow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numba
import numpy as np
import pytest

import ssmcore
from ssmcore.backends.numba import _fpenv, scan as nbscan

pytestmark = pytest.mark.skipif(_fpenv.FLUSH_BITS == 0, reason="no flush control on this architecture")

BITS = _fpenv.FLUSH_BITS


@numba.njit(parallel=True, cache=False)
def _sample_workers(n):
    """The flush bits seen by whichever threads run the n iterations (all of Numba's team)."""
    out = np.empty(n, np.int64)
    for i in numba.prange(n):
        out[i] = _fpenv.fp_read()
    return out


@numba.njit(cache=False)
def _set_bits_and_leave(bits):
    """Set flush bits on this thread and leave them set (a user who set FTZ themselves)."""
    old = _fpenv.fp_read()
    _fpenv.fp_exit(old | bits)


def _thread_bits() -> int:
    return _fpenv.read_thread() & BITS


def _worker_bits() -> set[int]:
    return {int(v) & BITS for v in _sample_workers(20000)}


@pytest.fixture(autouse=True)
def _flush_on():
    """Every test starts with flushing on (the default) and leaves it on."""
    previous = _fpenv.set_flush_subnormals(True)
    yield
    _fpenv.set_flush_subnormals(previous)


def _numpy_subnormal_ok():
    """NumPy on this thread still produces subnormals (gradual underflow)."""
    x = np.full(8, 1e-30, np.float32) * np.float32(1e-10)
    return bool(np.all(x == np.float32(1e-40)) and np.float64(1e-300) * 1e-10 == 1e-310)


# ----------------------------------------------------------------------------- (a) semantics


def _impulse_case(dtype, C=1, L=64):
    """h_t = a h_{t-1} + b_t with one impulse: the exact states decay through the subnormals."""
    tiny = np.finfo(dtype).tiny
    a = np.full((C, L), 0.01, dtype)
    b = np.zeros((C, L), dtype)
    b[:, 0] = 1e-20 if np.dtype(dtype).itemsize == 4 else 1e-290
    ref = np.empty((C, L), dtype)
    h = np.zeros(C, dtype)
    for t in range(L):  # NumPy, gradual underflow: the IEEE answer
        h = a[:, t] * h + b[:, t]
        ref[:, t] = h
    sub = (ref != 0) & (np.abs(ref) < tiny)
    assert sub.any()
    return a, b, ref, sub


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path", ["serial", "channels", "chunked"])
def test_ftz_subnormal_result_becomes_zero_and_only_that(dtype, path):
    a, b, ref, sub = _impulse_case(dtype, C=6, L=512)
    arow = np.arange(6, dtype=np.intp)
    h0 = np.zeros(6, dtype)
    got = nbscan.scan_fwd(a, arow, b, h0, False, path)
    assert np.all(got[sub] == 0)
    np.testing.assert_array_equal(got[~sub & (np.abs(ref) >= np.finfo(dtype).tiny)],
                                  ref[~sub & (np.abs(ref) >= np.finfo(dtype).tiny)])
    with _fpenv.flush_subnormals(False):
        off = nbscan.scan_fwd(a, arow, b, h0, False, path)
    np.testing.assert_array_equal(off, ref)  # gradual underflow: exactly NumPy's loop


def test_front_door_flushes_and_switch_turns_it_off():
    a, b, ref, sub = _impulse_case(np.float32)
    got = ssmcore.linear_scan(a, b)
    assert np.all(got[sub] == 0)
    assert _fpenv.set_flush_subnormals(False)  # returns the previous setting (on)
    try:
        assert not _fpenv.flush_subnormals_enabled()
        np.testing.assert_array_equal(ssmcore.linear_scan(a, b), ref)
    finally:
        _fpenv.set_flush_subnormals(True)
    assert np.all(ssmcore.linear_scan(a, b)[sub] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path", ["serial", "channels", "chunked"])
def test_daz_subnormal_input_read_as_zero(dtype, path):
    # a subnormal coefficient times a large state gives a normal product: FTZ alone
    # keeps it, DAZ reads the coefficient as 0.
    C, L = 4, 256
    sub = np.finfo(dtype).tiny / 4
    a = np.full((C, L), sub, dtype)
    b = np.zeros((C, L), dtype)
    h0 = np.full(C, 1e20 if np.dtype(dtype).itemsize == 4 else 1e200, dtype)
    arow = np.arange(C, dtype=np.intp)
    got = nbscan.scan_fwd(a, arow, b, h0, False, path)
    assert np.all(got == 0)
    with _fpenv.flush_subnormals(False):
        off = nbscan.scan_fwd(a, arow, b, h0, False, path)
    np.testing.assert_array_equal(off[:, 0], sub * h0)
    assert np.all(off[:, 0] > np.finfo(dtype).tiny)


def test_lfilter_flushes_with_switch_off_matches_scipy_bit_for_bit(rng):
    signal = pytest.importorskip("scipy.signal")
    x = np.zeros((3, 400))
    x[:, 0] = 1e-300
    b, a = np.array([1.0, 0.5]), np.array([1.0, -0.3])  # impulse response decays by 0.3 per step
    want = signal.lfilter(b, a, x)
    assert np.any((want != 0) & (np.abs(want) < np.finfo(float).tiny))
    got = ssmcore.lfilter(b, a, x)
    assert np.all(got[np.abs(want) < np.finfo(float).tiny] == 0)
    with _fpenv.flush_subnormals(False):
        np.testing.assert_array_equal(ssmcore.lfilter(b, a, x), want)


def _run_fresh(code, **env_extra):
    env = dict(os.environ, **env_extra)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_env_var_turns_flushing_off_in_a_new_process():
    code = (
        "import numpy as np, ssmcore\n"
        "from ssmcore.backends.numba import _fpenv\n"
        "a = np.full((1, 16), 0.01, np.float32); b = np.zeros((1, 16), np.float32); b[0, 0] = 1e-20\n"
        "print(_fpenv.flush_subnormals_enabled(), ssmcore.linear_scan(a, b)[0, 10] > 0)\n"
    )
    assert _run_fresh(code, SSMCORE_FLUSH_SUBNORMALS="0") == ["False", "True"]


def test_thread_team_created_by_an_ssmcore_kernel_is_not_flushed():
    # Threads inherit MXCSR when created: the first parallel region of a process being
    # ssmcore's must not start the team while the calling thread is flushed.
    code = (
        "import numpy as np, numba\n"
        "from ssmcore.backends.numba import _fpenv, scan\n"
        "a = np.full((64, 4096), 0.5, np.float32); b = np.ones((64, 4096), np.float32)\n"
        "scan.scan_fwd(a, np.arange(64), b, np.zeros(64, np.float32), False, 'channels')\n"
        "@numba.njit(parallel=True, cache=False)\n"
        "def sample(n):\n"
        "    out = np.empty(n, np.int64)\n"
        "    for i in numba.prange(n):\n"
        "        out[i] = _fpenv.fp_read() & _fpenv.FLUSH_BITS\n"
        "    return out\n"
        "print(sorted(set(sample(20000).tolist())), _fpenv.read_thread() & _fpenv.FLUSH_BITS)\n"
    )
    assert _run_fresh(code) == ["[0]", "0"]


# ----------------------------------------------------------------------------- (b) no side effect


def _calls(rng):
    """One forward (and where it has one, backward) call per Numba kernel family, serial and parallel sizes."""
    f32 = np.float32
    s = lambda *shape: rng.standard_normal(shape).astype(f32)  # noqa: E731
    calls = {}
    for shape in [(2, 64), (64, 4096), (1, 1 << 16)]:  # serial, channels, chunked
        a = rng.uniform(0.9, 0.999, shape).astype(f32)
        b = s(*shape)
        calls[f"linear_scan{shape}"] = lambda a=a, b=b: ssmcore.vjp("linear_scan", a, b)[1](np.ones_like(b))
    for C in [2, 512]:
        x = s(C, 2048)
        calls[f"lfilter C={C}"] = lambda x=x: ssmcore.vjp("lfilter", np.array([1.0, 0.5], f32),
                                                      np.array([1.0, -0.9], f32), x)[1](np.ones_like(x))
    A = (rng.standard_normal((8, 8)) * 0.3).astype(f32)
    B, Cm, D = s(8, 1), s(1, 8), s(1, 1)
    for mode in ["recurrent", "scan"]:
        for batch in [1, 64]:
            u = s(batch, 1, 4096)
            calls[f"lti_simulate {mode} {batch}"] = lambda u=u, mode=mode: ssmcore.vjp(
                "lti_simulate", A, B, Cm, D, u, mode=mode)[1](np.ones((u.shape[0], 1, u.shape[2]), f32))
    H, N = 64, 16
    Ad, Bd = ssmcore.discretize_diag(np.tile(ssmcore.s4d_lin(2 * N), (H, 1)), np.ones((H, N)), np.full((H, 1), 0.05))
    Cd = rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))
    for mode in ["recurrent", "convolution"]:
        u = rng.standard_normal((2, H, 1024))
        calls[f"lti_simulate_diag {mode}"] = lambda u=u, mode=mode: ssmcore.vjp(
            "lti_simulate_diag", Ad, Bd, Cd, np.ones(H), u, conj_sym=True, mode=mode)[1](np.ones(u.shape))
    Ak = rng.normal(size=(16, 8, 8))
    Ak *= 0.9 / np.abs(np.linalg.eigvals(Ak)).max(axis=1)[:, None, None]  # stable: no overflow in float32
    calls["ssm_kernel_dense"] = lambda: ssmcore.vjp("ssm_kernel_dense", Ak, s(16, 8), s(16, 8), 1024)[1](
        np.ones((16, 1024)))
    Ac = np.broadcast_to(-0.5 + 1j * np.pi * np.arange(32), (64, 32)).astype(np.complex64)
    calls["ssm_kernel_diag"] = lambda: ssmcore.vjp(
        "ssm_kernel_diag", Ac, np.ones((64, 32), np.complex64), np.ones((64, 32), np.complex64),
        np.full(64, 0.01, f32), 2048)[1](np.ones((64, 2048), f32))
    calls["discretize_diag"] = lambda: ssmcore.discretize_diag(np.tile(ssmcore.s4d_lin(64), (512, 1)),
                                                               np.ones((512, 32)), np.full((512, 1), 0.05))
    u, dl = s(2, 32, 512), (0.3 * rng.random((2, 32, 512))).astype(f32)
    As = -np.arange(1, 9, dtype=f32)[None, :].repeat(32, 0)
    Bs, Cs = s(2, 8, 512), s(2, 8, 512)
    calls["selective_scan"] = lambda: ssmcore.vjp("selective_scan", u, dl, As, Bs, Cs)[1](np.ones_like(u))
    x, dt = s(1, 256, 4, 16), rng.uniform(0.02, 0.3, (1, 256, 4)).astype(f32)
    Ah, Bh, Ch = -np.arange(1, 5, dtype=f32), s(1, 256, 1, 16), s(1, 256, 1, 16)
    calls["ssd"] = lambda: ssmcore.vjp("ssd", x, dt, Ah, Bh, Ch, chunk_size=64)[1](np.ones_like(x))
    st = s(4, 256, 16)
    calls["selective_state_update"] = lambda: ssmcore.selective_state_update(
        st, s(4, 256), (0.5 * rng.random((4, 256))).astype(f32), -rng.random((256, 16)).astype(f32), s(4, 16),
        s(4, 16))
    return calls


def test_flags_restored_on_calling_and_worker_threads(rng):
    assert _thread_bits() == 0 and _worker_bits() == {0}, "the test process starts with flushing bits set"
    for name, call in _calls(rng).items():
        call()
        assert _thread_bits() == 0, name
        assert _worker_bits() == {0}, name
        assert _numpy_subnormal_ok(), name


def test_flags_restored_with_flushing_off(rng):
    with _fpenv.flush_subnormals(False):
        for name, call in _calls(rng).items():
            call()
            assert _thread_bits() == 0, name
            assert _worker_bits() == {0}, name


def test_flags_restored_from_several_python_threads(rng):
    calls = list(_calls(rng).values())
    errors = []

    def work(k):
        try:
            for i in range(3):
                for call in calls[k::4]:
                    call()
                    if _thread_bits() != 0 or not _numpy_subnormal_ok():
                        errors.append((k, i))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _thread_bits() == 0 and _worker_bits() == {0}
    assert _numpy_subnormal_ok()


def test_user_set_flush_bits_are_kept():
    a, b, ref, sub = _impulse_case(np.float32)
    try:
        _set_bits_and_leave(BITS)
        assert _thread_bits() == BITS
        for enabled in (True, False):
            with _fpenv.flush_subnormals(enabled):
                got = ssmcore.linear_scan(a, b)
            assert np.all(got[sub] == 0)  # the user's FTZ applies either way
            assert _thread_bits() == BITS  # and is still set afterwards
    finally:
        _fpenv.reset_thread()
    assert _thread_bits() == 0
    assert _numpy_subnormal_ok()


def test_status_flags_are_not_clobbered():
    """fp_exit restores only the flush bits: the sticky status bits stay as the arithmetic left them."""

    @numba.njit(cache=False)
    def run(x):
        old = _fpenv.fp_enter()
        y = x * 1e-300 * 1e-300  # underflow and inexact
        mid = _fpenv.fp_read()
        _fpenv.fp_exit(old)
        return y, mid, _fpenv.fp_read()

    _, mid, after = run(1.0)
    assert after & ~BITS == mid & ~BITS
    assert after & BITS == 0


# ----------------------------------------------------------------------------- (c) NaN / inf


@pytest.mark.parametrize("path", ["serial", "channels", "chunked"])
def test_nan_inf_and_normal_values_unchanged(rng, path):
    C, L = 5, 4096
    a = rng.uniform(0.5, 0.99, (C, L))
    b = rng.standard_normal((C, L))
    b[1, 100] = np.nan
    b[2, 200] = np.inf
    b[3, 300] = -np.inf
    a[4, 50] = np.nan
    arow, h0 = np.arange(C, dtype=np.intp), np.zeros(C)
    on = nbscan.scan_fwd(a, arow, b, h0, False, path)
    with _fpenv.flush_subnormals(False):
        off = nbscan.scan_fwd(a, arow, b, h0, False, path)
    np.testing.assert_array_equal(on, off)  # equal_nan; no value here is subnormal
    assert np.isnan(on[1, 100:]).all() and np.isnan(on[4, 50:]).all()
    assert np.isposinf(on[2, 200]) and np.isneginf(on[3, 300])


def test_nan_inf_through_lti(rng):
    A = np.diag([0.9, 0.5]).astype(np.float32)
    B, C, D = np.ones((2, 1), np.float32), np.ones((1, 2), np.float32), np.ones((1, 1), np.float32)
    u = rng.standard_normal((1, 1, 64)).astype(np.float32)
    u[0, 0, 10] = np.nan
    u[0, 0, 5] = np.inf
    y = ssmcore.lti_simulate(A, B, C, D, u)
    with _fpenv.flush_subnormals(False):
        y_off = ssmcore.lti_simulate(A, B, C, D, u)
    np.testing.assert_array_equal(y, y_off)
    assert np.isposinf(y[0, 0, 5]) and np.isnan(y[0, 0, 10:]).all()


# ----------------------------------------------------------------------------- mechanism details


def test_many_brackets_in_one_kernel_use_constant_stack():
    """The register slots live in the entry block: 5M brackets in a loop do not grow the stack."""

    @numba.njit(cache=False)
    def loop(n):
        s = 0
        for _ in range(n):
            old = _fpenv.fp_enter()
            s += old & 1
            _fpenv.fp_exit(old)
        return s

    loop(5_000_000)
    assert _thread_bits() == 0


@pytest.mark.parametrize("n", [0, 1, 5, 17, 1000])
def test_fp_blocks_partition_covers_every_item_once(n):
    @numba.njit(parallel=True, cache=False)
    def count(n):
        hits = np.zeros(n, np.int64)
        nblk = _fpenv.fp_blocks(n)
        for k in numba.prange(nblk):
            for i in range(k * n // nblk, (k + 1) * n // nblk):
                hits[i] += 1
        return hits

    assert np.all(count(n) == 1)


def test_blocked_lfilter_backward_matches_serial(rng, monkeypatch):
    from ssmcore.backends.numba import lfilter as nb_lfilter

    b, a = np.array([1.0, 0.4, 0.2]), np.array([1.0, -0.5, 0.1])
    x = rng.standard_normal((37, 300))
    g = rng.standard_normal((37, 300))
    results = []
    for threshold in (1 << 62, 0):
        monkeypatch.setattr(nb_lfilter, "PARALLEL_MIN_WORK", threshold)
        y, pullback = ssmcore.vjp("lfilter", b, a, x)
        results.append((y, *pullback(g)))
    for par, seq in zip(*results):
        np.testing.assert_array_equal(par, seq)


def test_blocked_parallel_kernels_stay_cacheable():
    """fp_blocks must not make a kernel uncacheable (numba.get_num_threads() in jitted code does)."""
    code = (
        "import numpy as np, ssmcore\n"
        "from ssmcore.backends.numba import discretization as D, lfilter as L, state_update as S\n"
        "L.PARALLEL_MIN_WORK = 0; D.PARALLEL_MIN_WORK = 0; S._PARALLEL_MIN = 1\n"
        "x = np.random.rand(8, 64)\n"
        "y, pb = ssmcore.vjp('lfilter', np.array([1.0, 0.5]), np.array([1.0, -0.5]), x); pb(y)\n"
        "A = -np.random.rand(8, 4) + 1j; out, pb = ssmcore.vjp('discretize_diag', A, np.ones((8, 4)), np.full(8, .1))\n"
        "pb(tuple(np.ones_like(o) for o in out))\n"
        "f = np.float32; r = np.random.rand\n"
        "ssmcore.selective_state_update(r(2, 8, 4).astype(f), r(2, 8).astype(f), r(2, 8).astype(f),"
        " -r(8, 4).astype(f), r(2, 4).astype(f), r(2, 4).astype(f))\n"
        "ks = [L._fwd_parallel, L._bwd_parallel, D._diag_fwd_par, D._diag_bwd_par, S._parallel]\n"
        "print(sum(bool(k.dispatcher.stats.cache_hits) for k in ks), len(ks))\n"
    )
    _run_fresh(code)  # compiles (and saves) whatever is not cached yet
    hits, total = _run_fresh(code)
    assert hits == total
