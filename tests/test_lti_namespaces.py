"""LTI simulation on every array namespace (numpy, array-api-strict, cupy on a GPU).

The front doors and backward glue of ``lti_simulate``, ``lti_simulate_diag`` and
``dlsim`` are device-neutral: on ``ns`` arrays every result (forward, final
state, pullback) must equal the NumPy result and come back in the input's
namespace and on its device (``ns.to_numpy`` asserts both). The strict namespace
runs the Numba kernels through the explicit host bridge, so results equal NumPy's
to rounding; on a GPU the cupy param compares the CuPy kernels with the CPU.

The scan and convolution modes call ``linear_scan`` / ``fft_conv`` /
``ssm_kernel_dense`` with the same arrays. Where one of those cannot take strict
arrays yet (another area's front door), it is replaced by a host-bridged call so
that the LTI glue around it is still checked; on CuPy a dependency without a
declared CuPy kernel skips the test.
"""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore
from ssmcore.dispatch import UnsupportedBackendError, capabilities

MODES = ("recurrent", "scan", "convolution")
_MODE_DEPENDENCIES = {"recurrent": (), "scan": ("linear_scan",), "convolution": ("fft_conv", "ssm_kernel_dense")}


def randn(rng, shape, complex_=False):
    x = rng.standard_normal(shape)
    return x + 1j * rng.standard_normal(shape) if complex_ else x


def stable(rng, shape, n, complex_=False):
    a = randn(rng, shape + (n, n), complex_)
    rho = np.max(np.abs(np.linalg.eigvals(a)), axis=-1)[..., None, None]
    return a * (0.9 / rho)


def stable_diag(rng, shape, complex_=True):
    mod = rng.uniform(0.3, 0.97, shape)
    return mod * np.exp(1j * rng.uniform(-np.pi, np.pi, shape)) if complex_ else mod * rng.choice([-1, 1], shape)


def _runs_on(ns, op: str) -> bool:
    """Whether dependency ``op`` of a mode takes ``ns`` arrays on this branch."""
    one = ns.asarray(np.ones((1, 4)))
    try:
        if op == "linear_scan":
            ssmcore.linear_scan(one, one)
        elif op == "fft_conv":
            ssmcore.fft_conv(one, one)
        else:
            ssmcore.ssm_kernel_dense(ns.asarray(np.eye(2) * 0.5), ns.asarray(np.ones((1, 2))),
                                     ns.asarray(np.ones((1, 2))), 4)
    except (TypeError, AttributeError, NotImplementedError):
        return False
    return True


def _bridged(ns, fn):
    """``fn`` called on host copies of strict arrays, results moved back (test-only)."""
    import array_api_strict

    cpu = array_api_strict.Device("CPU_DEVICE")

    def to_host(x):
        if isinstance(x, array_api_strict._array_object.Array):
            return np.asarray(x.to_device(cpu))
        return tuple(map(to_host, x)) if isinstance(x, tuple) else x

    def back(x):
        if isinstance(x, np.ndarray):
            return ns.asarray(x)
        return tuple(map(back, x)) if isinstance(x, tuple) else x

    def call(*args, **kwargs):
        if not any(isinstance(a, array_api_strict._array_object.Array) for a in (*args, *kwargs.values())):
            return fn(*args, **kwargs)  # the NumPy comparison run
        return back(fn(*map(to_host, args), **{k: to_host(v) for k, v in kwargs.items()}))

    return call


def _require(ns, op: str, mode: str = "recurrent", monkeypatch=None) -> None:
    """Skip what cannot run on ``ns`` yet.

    On the strict namespace, a mode dependency that is not device-neutral yet
    (another area's front door) is replaced by a host-bridged call, so that the
    LTI glue around it is still exercised; on CuPy the test is skipped.
    """
    if ns.name == "cupy" and "cupy" not in capabilities().get(op, ()):
        pytest.skip(f"{op} has no CuPy kernel yet")
    for dep in _MODE_DEPENDENCIES[mode]:
        if ns.name == "cupy" and "cupy" not in capabilities().get(dep, ()):
            pytest.skip(f"{dep} has no CuPy kernel yet")
        if ns.name == "strict" and not _runs_on(ns, dep):
            module = ssmcore._scan if dep == "linear_scan" else ssmcore._convolution
            monkeypatch.setattr(module, dep, _bridged(ns, getattr(module, dep)))


def assert_close(got, want, tol):
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _tol(dtype) -> float:
    return 2e-5 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-12


# ----------------------------------------------------------------- lti_simulate


def _dense_case(rng, cplx, dtype=None, L=11, with_dx0=True):
    n, m, p = 3, 2, 2
    args = [
        stable(rng, (2, 1), n, cplx),  # 2 systems broadcast against ...
        randn(rng, (n, m), cplx),
        randn(rng, (1, 1, p, n), cplx),
        randn(rng, (p, m)) if with_dx0 else None,
        randn(rng, (3, m, L), cplx),  # ... 3 inputs: batch (2, 3)
        randn(rng, (2, 3, n), cplx) if with_dx0 else None,
    ]
    if dtype is not None:
        args = [None if a is None else a.astype(dtype) for a in args]
    return args


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
def test_lti_simulate_forward_and_final_state(ns, mode, cplx, rng, monkeypatch):
    _require(ns, "lti_simulate", mode, monkeypatch)
    args = _dense_case(rng, cplx)
    want_y, want_x = ssmcore.lti_simulate(*args, mode=mode, return_final_state=True)
    got_y, got_x = ns.to_numpy(ssmcore.lti_simulate(*map(ns.asarray, args), mode=mode, return_final_state=True))
    assert_close(got_y, want_y, 1e-12)
    assert_close(got_x, want_x, 1e-12)
    got = ns.to_numpy(ssmcore.lti_simulate(*map(ns.asarray, args), mode=mode))
    assert_close(got, want_y, 1e-12)


@pytest.mark.parametrize("L", [0, 1, 7])
@pytest.mark.parametrize("dtype", [np.float32, np.complex64, np.float64])
def test_lti_simulate_dtypes_and_short_sequences(ns, L, dtype, rng):
    _require(ns, "lti_simulate")
    args = _dense_case(rng, np.dtype(dtype).kind == "c", dtype=dtype, L=L)
    want_y, want_x = ssmcore.lti_simulate(*args, return_final_state=True)
    got_y, got_x = ns.to_numpy(ssmcore.lti_simulate(*map(ns.asarray, args), return_final_state=True))
    assert got_y.dtype == np.dtype(dtype)
    assert_close(got_y, want_y, _tol(dtype))
    assert_close(got_x, want_x, _tol(dtype))


def test_lti_simulate_without_d_and_x0_and_empty_batch(ns, rng):
    _require(ns, "lti_simulate")
    args = _dense_case(rng, False, with_dx0=False)
    assert_close(ns.to_numpy(ssmcore.lti_simulate(*map(ns.asarray, args))), ssmcore.lti_simulate(*args), 1e-12)
    A, B, C = args[:3]
    empty = np.zeros((0, 2, 5))
    y = ns.to_numpy(ssmcore.lti_simulate(ns.asarray(A[0, 0]), ns.asarray(B), ns.asarray(C[0, 0]), None,
                                         ns.asarray(empty)))
    assert y.shape == (0, 2, 5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
def test_lti_simulate_vjp(ns, mode, cplx, rng, monkeypatch):
    _require(ns, "lti_simulate", mode, monkeypatch)
    args = _dense_case(rng, cplx)
    kw = {"mode": mode, "return_final_state": True}
    (y, xf), pullback = ssmcore.vjp("lti_simulate", *args, **kw)
    gy, gx = randn(rng, y.shape, cplx), randn(rng, xf.shape, cplx)
    want = pullback((gy, gx))
    out, ns_pullback = ssmcore.vjp("lti_simulate", *map(ns.asarray, args), **kw)
    got_y, _ = ns.to_numpy(out)
    assert_close(got_y, y, 1e-12)
    got = ns.to_numpy(ns_pullback((ns.asarray(gy), ns.asarray(gx))))
    assert len(got) == len(want) == 6
    for g, w in zip(got, want):
        assert_close(g, w, 1e-11)
    # None cotangent for the final state, a subset of gradients
    want = pullback((gy, None), needs=(True, False, False, False, True, False))
    got = ns.to_numpy(ns_pullback((ns.asarray(gy), None), needs=(True, False, False, False, True, False)))
    assert got[1] is None and got[5] is None
    assert_close(got[0], want[0], 1e-11)
    assert_close(got[4], want[4], 1e-11)


def test_lti_simulate_vjp_float32_keeps_dtypes(ns, rng):
    _require(ns, "lti_simulate")
    args = _dense_case(rng, False, dtype=np.float32)
    y, pullback = ssmcore.vjp("lti_simulate", *args)
    gy = randn(rng, y.shape).astype(np.float32)
    want = pullback(gy)
    out, ns_pullback = ssmcore.vjp("lti_simulate", *map(ns.asarray, args))
    assert ns.to_numpy(out).dtype == np.float32
    got = ns.to_numpy(ns_pullback(ns.asarray(gy)))
    for g, w in zip(got, want):
        assert g.dtype == np.float32
        assert_close(g, w, 1e-5)


def test_lti_simulate_errors_are_the_numpy_messages(ns, rng):
    _require(ns, "lti_simulate")
    A, B, C, D, u, _ = map(ns.asarray, _dense_case(rng, False))
    with pytest.raises(ValueError, match=r"lti_simulate: A has shape \(2, 3\); expected \(\.\.\., N, N\)"):
        ssmcore.lti_simulate(ns.asarray(np.ones((2, 3))), B, C, D, u)
    with pytest.raises(ValueError, match=r"lti_simulate: u has shape \(3, 5, 11\); expected \(\.\.\., 2, L\)"):
        ssmcore.lti_simulate(A, B, C, D, ns.asarray(np.ones((3, 5, 11))))
    with pytest.raises(ValueError, match="lti_simulate: the leading \\(batch\\) axes do not broadcast"):
        ssmcore.lti_simulate(A, B, C, D, u, ns.asarray(np.ones((4, 3))))
    with pytest.raises(ValueError, match="lti_simulate: unknown mode 'fast'"):
        ssmcore.lti_simulate(A, B, C, D, u, mode="fast")
    if ns.name != "numpy":
        with pytest.raises(TypeError, match="lti_simulate: mixed array types"):
            ssmcore.lti_simulate(np.asarray(ns.to_numpy(A)), B, C, D, u)


# ------------------------------------------------------------ lti_simulate_diag

#: (conj_sym, real_output, complex A/B/C, complex u): S4D/S5, LRU, complex output, all real
DIAG_KINDS = {
    "s4d": (True, None, True, False),
    "lru": (False, True, True, False),
    "complex": (False, None, True, True),
    "real": (False, None, False, False),
}


def _diag_case(rng, kind, single=False, L=13, with_dx0=True):
    conj_sym, real_output, cplx, cplx_u = DIAG_KINDS[kind]
    H, N = 3, 4
    args = [
        stable_diag(rng, (2, 1, H, N), cplx),  # batch (2, 2) from A and u
        randn(rng, (H, N), cplx),
        randn(rng, (H, N), cplx),
        randn(rng, (H,), cplx_u) if with_dx0 else None,
        randn(rng, (2, H, L), cplx_u),
        randn(rng, (2, 2, H, N), cplx) if with_dx0 else None,
    ]
    if single:
        args = [None if a is None else a.astype(np.complex64 if np.iscomplexobj(a) else np.float32) for a in args]
    return args, {"conj_sym": conj_sym, "real_output": real_output}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(DIAG_KINDS))
def test_lti_simulate_diag_forward_and_final_state(ns, mode, kind, rng, monkeypatch):
    _require(ns, "lti_simulate_diag", mode, monkeypatch)
    args, kw = _diag_case(rng, kind)
    want_y, want_x = ssmcore.lti_simulate_diag(*args, mode=mode, return_final_state=True, **kw)
    got_y, got_x = ns.to_numpy(ssmcore.lti_simulate_diag(*map(ns.asarray, args), mode=mode,
                                                         return_final_state=True, **kw))
    assert_close(got_y, want_y, 1e-12)
    assert_close(got_x, want_x, 1e-12)
    got = ns.to_numpy(ssmcore.lti_simulate_diag(*map(ns.asarray, args), mode=mode, **kw))
    assert_close(got, want_y, 1e-12)


@pytest.mark.parametrize("L", [0, 1, 6])
@pytest.mark.parametrize("kind", ["s4d", "complex"])
def test_lti_simulate_diag_float32_and_short_sequences(ns, L, kind, rng):
    _require(ns, "lti_simulate_diag")
    args, kw = _diag_case(rng, kind, single=True, L=L)
    want_y, want_x = ssmcore.lti_simulate_diag(*args, return_final_state=True, **kw)
    got_y, got_x = ns.to_numpy(ssmcore.lti_simulate_diag(*map(ns.asarray, args), return_final_state=True, **kw))
    assert got_y.dtype == (np.float32 if kind == "s4d" else np.complex64)
    assert_close(got_y, want_y, 2e-5)
    assert_close(got_x, want_x, 2e-5)


def test_lti_simulate_diag_without_d_and_x0(ns, rng):
    _require(ns, "lti_simulate_diag")
    args, kw = _diag_case(rng, "s4d", with_dx0=False)
    want = ssmcore.lti_simulate_diag(*args, **kw)
    assert_close(ns.to_numpy(ssmcore.lti_simulate_diag(*map(ns.asarray, args), **kw)), want, 1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(DIAG_KINDS))
def test_lti_simulate_diag_vjp(ns, mode, kind, rng, monkeypatch):
    _require(ns, "lti_simulate_diag", mode, monkeypatch)
    args, kw = _diag_case(rng, kind)
    kw = dict(kw, mode=mode, return_final_state=True)
    (y, xf), pullback = ssmcore.vjp("lti_simulate_diag", *args, **kw)
    gy, gx = randn(rng, y.shape, np.iscomplexobj(y)), randn(rng, xf.shape, np.iscomplexobj(xf))
    want = pullback((gy, gx))
    out, ns_pullback = ssmcore.vjp("lti_simulate_diag", *map(ns.asarray, args), **kw)
    assert_close(ns.to_numpy(out)[0], y, 1e-12)
    got = ns.to_numpy(ns_pullback((ns.asarray(gy), ns.asarray(gx))))
    assert len(got) == len(want) == 6
    for g, w in zip(got, want):
        assert_close(g, w, 1e-11)
    needs = (False, True, False, True, False, False)
    got = ns.to_numpy(ns_pullback((None, ns.asarray(gx)), needs=needs))
    want = pullback((None, gx), needs=needs)
    assert got[0] is None and got[4] is None
    assert_close(got[1], want[1], 1e-11)
    assert_close(got[3], want[3], 1e-11)


def test_lti_simulate_diag_errors_are_the_numpy_messages(ns, rng):
    _require(ns, "lti_simulate_diag")
    args, _ = _diag_case(rng, "complex")
    A, B, C, D, u, _ = map(ns.asarray, args)
    with pytest.raises(TypeError, match="lti_simulate_diag: u must be real when the output is real .*; got complex128"):
        ssmcore.lti_simulate_diag(A, B, C, None, u, conj_sym=True)
    with pytest.raises(ValueError, match="conj_sym=True means a real output"):
        ssmcore.lti_simulate_diag(A, B, C, None, ns.asarray(np.ones((2, 3, 5))), conj_sym=True, real_output=False)
    with pytest.raises(ValueError, match=r"lti_simulate_diag: B has shape \(3, 5\); expected \(\.\.\., 3, 4\)"):
        ssmcore.lti_simulate_diag(A, ns.asarray(np.ones((3, 5))), C, D, u)
    with pytest.raises(ValueError, match="lti_simulate_diag: unknown mode 'fast'"):
        ssmcore.lti_simulate_diag(A, B, C, D, u, mode="fast")


# ------------------------------------------------------------------------ dlsim


@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
def test_dlsim_state_space_tuple(ns, cplx, rng):
    _require(ns, "dlsim")
    n, m, p, L = 3, 2, 2, 17
    A, B, C, D = stable(rng, (), n, cplx), randn(rng, (n, m)), randn(rng, (p, n), cplx), randn(rng, (p, m))
    u, x0 = randn(rng, (L, m)), randn(rng, (n,))
    want = ssmcore.dlsim((A, B, C, D, 0.5), u, x0=x0)
    got = ns.to_numpy(ssmcore.dlsim((*map(ns.asarray, (A, B, C, D)), 0.5), ns.asarray(u), x0=ns.asarray(x0)))
    assert len(got) == 3
    for g, w in zip(got, want):
        assert_close(g, w, 1e-12)
    # 1-D u for one input, matrices given as Python lists, no x0
    want = ssmcore.dlsim(([[0.5]], [[1.0]], [[2.0]], [[0.0]], 1.0), u[:, 0])
    got = ns.to_numpy(ssmcore.dlsim(([[0.5]], [[1.0]], [[2.0]], [[0.0]], 1.0), ns.asarray(u[:, 0])))
    for g, w in zip(got, want):
        assert_close(g, w, 1e-12)


def test_dlsim_numpy_only_features_refuse_other_arrays(ns, rng):
    if ns.name == "numpy":
        pytest.skip("the NumPy path of these features is tested in test_lti.py")
    _require(ns, "dlsim")
    u = ns.asarray(np.ones(5))
    with pytest.raises(UnsupportedBackendError, match="dlsim: t= .* runs on NumPy arrays only"):
        ssmcore.dlsim(([[0.5]], [[1.0]], [[1.0]], [[0.0]], 1.0), u, t=ns.asarray(np.arange(5.0)))
    with pytest.raises(UnsupportedBackendError, match="dlsim: a transfer-function, zpk or dlti system runs on NumPy"):
        ssmcore.dlsim(([1.0], [1.0, -0.5], 1.0), u)


def test_dlsim_errors_are_the_numpy_messages(ns, rng):
    _require(ns, "dlsim")
    A, B, C, D = (ns.asarray(a) for a in (np.eye(2) * 0.5, np.ones((2, 1)), np.ones((1, 2)), np.zeros((1, 1))))
    with pytest.raises(ValueError, match=r"dlsim: u has shape \(4, 3\); expected \(L, 1\)"):
        ssmcore.dlsim((A, B, C, D, 1.0), ns.asarray(np.ones((4, 3))))
    with pytest.raises(ValueError, match=r"dlsim: x0 has shape \(3,\); expected \(2,\)"):
        ssmcore.dlsim((A, B, C, D, 1.0), ns.asarray(np.ones(4)), x0=ns.asarray(np.ones(3)))


# --------------------------------------------------------------- kernel contract


def test_backend_modules_implement_the_reference_contract():
    """Every LTI backend module has the reference's functions with the same parameters."""
    import importlib
    import importlib.util
    import inspect

    from ssmcore.reference import lti as reference

    modules = ["ssmcore.backends.numba.lti"]
    if importlib.util.find_spec("ssmcore.backends.cupy.lti") is not None:
        modules.append("ssmcore.backends.cupy.lti")  # importable without a GPU (compiles at first use)
    for name in modules:
        module = importlib.import_module(name)
        assert set(reference.__all__) <= set(module.__all__), name  # a backend may export helpers too
        for fn in reference.__all__:
            want = inspect.signature(getattr(reference, fn)).parameters
            got = inspect.signature(getattr(module, fn)).parameters
            assert list(got) == list(want), f"{name}.{fn}{tuple(got)} != reference {tuple(want)}"
            assert [p.default for p in got.values()] == [p.default for p in want.values()], f"{name}.{fn} defaults"
