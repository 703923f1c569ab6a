"""Reliability of the LTI, selective-scan, SSD, HiPPO and initialiser front doors (issue: reliability).

Byte order (item 5), NaN propagation in hippo_online_coefficients (6), boolean
options (7), errors naming the right function (8), and dlsim accepting what
scipy and python-control users pass it (9, 10).
"""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore

rng = np.random.default_rng(0)


def _big_endian(a):
    a = np.asarray(a)
    return a.astype(a.dtype.newbyteorder(">"))


def _flat(x):
    if x is None:
        return []
    if isinstance(x, tuple):
        return [v for item in x for v in _flat(item)]
    return [np.asarray(x)]


def _pullback(op, cot_shape):
    return lambda *a, **k: tuple(g for g in ssmcore.vjp(op, *a, **k)[1](np.ones(cot_shape)) if g is not None)


_X, _DT, _B = rng.standard_normal((1, 6, 2, 3)), rng.uniform(0.1, 0.5, (1, 6, 2)), rng.standard_normal((1, 6, 1, 4))
_U, _DELTA, _BS = rng.standard_normal((1, 3, 7)), rng.uniform(0.1, 0.5, (1, 3, 7)), rng.standard_normal((1, 4, 7))
_AL, _UL = 0.5 * np.eye(3), rng.standard_normal((2, 5))
_DIAG = [np.full((2, 3), 0.5), np.ones((2, 3)), np.ones((2, 3)), np.ones(2), _UL]

BYTE_ORDER_CASES = {
    "ssd": (lambda *a: ssmcore.ssd(*a, return_final_states=True), [_X, _DT, -np.ones(2), _B, _B.copy()]),
    "ssd pullback": (_pullback("ssd", _X.shape), [_X, _DT, -np.ones(2), _B, _B.copy()]),
    "selective_scan": (lambda *a: ssmcore.selective_scan(*a, return_last_state=True),
                       [_U, _DELTA, -np.ones((3, 4)), _BS, _BS.copy(), np.ones(3)]),
    "selective_scan pullback": (_pullback("selective_scan", _U.shape),
                                [_U, _DELTA, -np.ones((3, 4)), _BS, _BS.copy(), np.ones(3)]),
    "selective_state_update": (ssmcore.selective_state_update,
                               [np.ones((1, 3, 4)), np.ones((1, 3)), np.full((1, 3), 0.1), -np.ones((3, 4)),
                                np.ones((1, 4)), np.ones((1, 4))]),
    **{f"lti_simulate {m}": (lambda *a, m=m: ssmcore.lti_simulate(*a, mode=m, return_final_state=True),
                             [_AL, np.ones((3, 2)), np.ones((2, 3)), np.ones((2, 2)), _UL])
       for m in ("recurrent", "scan", "convolution")},
    **{f"lti_simulate_diag {m}": (lambda *a, m=m: ssmcore.lti_simulate_diag(*a, mode=m, return_final_state=True),
                                  _DIAG) for m in ("recurrent", "scan", "convolution")},
    "lti_simulate pullback": (_pullback("lti_simulate", (2, 5)),
                              [_AL, np.ones((3, 2)), np.ones((2, 3)), np.ones((2, 2)), _UL]),
    "lti_simulate_diag pullback": (_pullback("lti_simulate_diag", (2, 5)), _DIAG),
    "dlsim": (lambda A, B, C, D, u: ssmcore.dlsim((A, B, C, D, 1.0), u.T),
              [_AL, np.ones((3, 2)), np.ones((2, 3)), np.ones((2, 2)), _UL]),
    "hippo_online_coefficients": (lambda u: ssmcore.hippo_online_coefficients("legt", u, 4, dt=0.1),
                                  [rng.standard_normal(10)]),
    "hippo_reconstruct": (lambda c, s: ssmcore.hippo_reconstruct("legs", c, s, t=1.0),
                          [rng.standard_normal(4), np.linspace(0, 1, 5)]),
    "hippo_basis": (lambda s: ssmcore.hippo_basis("legs", 4, s, t=1.0), [np.linspace(0, 1, 5)]),
    "lru_lambda": (ssmcore.lru_lambda, [-np.ones(3), -np.ones(3)]),
    "inverse_softplus": (ssmcore.inverse_softplus, [np.ones(3)]),
}


@pytest.mark.parametrize("case", list(BYTE_ORDER_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_native_byte_order_gives_the_native_equivalent(case, dtype):
    """'>f4' input computes and returns as float32 input does (native byte order)."""
    f, args = BYTE_ORDER_CASES[case]
    native = [np.asarray(a, dtype) for a in args]
    want = _flat(f(*native))
    got = _flat(f(*[_big_endian(a) for a in native]))
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.dtype.isnative, (case, g.dtype.str, w.dtype.str)
        np.testing.assert_array_equal(g, w)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf - inf in the matmul: NaN, as intended
@pytest.mark.parametrize("method", ["bilinear", "backward", "forward", "zoh"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_hippo_online_legs_propagates_nonfinite_samples(method, value):
    u = np.ones(6)
    u[2] = value
    x = ssmcore.hippo_online_coefficients("legs", u, 3, method=method)
    assert np.isfinite(x[:2]).all()
    assert not np.isfinite(x[2]).all()


# ------------------------------------------------------------ boolean options

def _ssd_call(**kw):
    return ssmcore.ssd(np.ones((1, 2, 1, 1)), np.ones((1, 2, 1)), -np.ones(1), np.ones((1, 2, 1, 1)),
                       np.ones((1, 2, 1, 1)), **kw)


def _ss_call(**kw):
    return ssmcore.selective_scan(np.ones((1, 2, 3)), np.ones((1, 2, 3)), -np.ones((2, 2)), np.ones((2, 2)),
                                  np.ones((2, 2)), **kw)


def _ssu_call(**kw):
    return ssmcore.selective_state_update(np.ones((1, 2, 2)), np.ones((1, 2)), np.ones((1, 2)), -np.ones((2, 2)),
                                          np.ones((1, 2)), np.ones((1, 2)), **kw)


def _lti_call(**kw):
    return ssmcore.lti_simulate(0.5 * np.eye(2), np.ones((2, 1)), np.ones((1, 2)), None, np.ones((1, 4)), **kw)


def _diag_call(**kw):
    return ssmcore.lti_simulate_diag(np.full((2, 2), 0.5), np.ones((2, 2)), np.ones((2, 2)), None, np.ones((2, 4)),
                                     **kw)


#: every boolean option of every public function of these modules: (call, fn name, option, message)
BOOL_OPTIONS = [
    (_ssd_call, "ssd", "dt_softplus", "must be True or False"),
    (_ssd_call, "ssd", "return_final_states", "must be True or False"),
    (_ss_call, "selective_scan", "delta_softplus", "must be a bool"),
    (_ss_call, "selective_scan", "return_last_state", "must be a bool"),
    (_ss_call, "selective_scan", "reverse", "must be a bool"),
    (_ssu_call, "selective_state_update", "dt_softplus", "must be True or False"),
    (_lti_call, "lti_simulate", "return_final_state", "must be True or False"),
    (_diag_call, "lti_simulate_diag", "conj_sym", "must be True or False"),
    (_diag_call, "lti_simulate_diag", "real_output", "must be True or False"),
    (_diag_call, "lti_simulate_diag", "return_final_state", "must be True or False"),
    (lambda **kw: ssmcore.dplr("lin", 4, **kw), "dplr", "real_random", "must be True or False"),
    (lambda **kw: ssmcore.dplr("lin", 4, **kw), "dplr", "imag_random", "must be True or False"),
    (lambda **kw: ssmcore.dplr("lin", 4, **kw), "dplr", "normalize", "must be True or False"),
    (lambda **kw: ssmcore.dt_init(3, **kw), "dt_init", "deterministic", "must be True or False"),
]


@pytest.mark.parametrize("call, fn, option, message", BOOL_OPTIONS, ids=[f"{c[1]}-{c[2]}" for c in BOOL_OPTIONS])
@pytest.mark.parametrize("value", ["yes", "no", 1, 0, None, np.array([True])])
def test_boolean_options_accept_only_booleans(call, fn, option, message, value):
    if value is None and option == "real_output":
        return  # None is real_output's documented "same as conj_sym"
    with pytest.raises(TypeError, match=rf"^{fn}: {option} {message}"):
        call(**{option: value})
    call(**{option: np.bool_(True)})
    call(**{option: False})


# ----------------------------------------------------------- errors name the right thing

@pytest.mark.parametrize("kwargs, message", [
    (dict(measure="nope"), "unknown measure 'nope'"),
    (dict(t=-1.0), "t must be finite and > 0"),
    (dict(measure="fout", c=np.ones(3)), "N must be even"),
    (dict(s=np.array([1j])), "s has dtype complex128"),
])
def test_hippo_reconstruct_errors_name_hippo_reconstruct(kwargs, message):
    args = dict(measure="legs", c=np.ones(4), s=np.array([0.1]), t=1.0) | kwargs
    with pytest.raises((TypeError, ValueError), match=rf"^hippo_reconstruct: {message}"):
        ssmcore.hippo_reconstruct(args.pop("measure"), args.pop("c"), args.pop("s"), **args)


def test_lru_lambda_broadcast_error_is_ssmcores():
    with pytest.raises(ValueError, match=r"^lru_lambda: shapes do not broadcast: nu_log \(5,\), theta_log \(4,\)"):
        ssmcore.lru_lambda(np.ones(5), np.ones(4))


_SS = (0.5 * np.eye(2), np.ones((2, 1)), np.ones((1, 2)), np.zeros((1, 1)))


@pytest.mark.parametrize("system, form", [
    (_SS[:3] + (1.0,), r"zeros, poles and gain"),  # (A, B, C, dt): D forgotten
    (_SS[:2] + (1.0,), r"a transfer function"),
])
def test_dlsim_tuple_of_the_wrong_length_says_how_it_was_read(system, form):
    with pytest.raises(ValueError, match=rf"^dlsim: system, a tuple of length {len(system)}, is read as {form}.*"
                                         r"\(A, B, C, D, dt\) of length 5"):
        ssmcore.dlsim(system, np.ones(5))


# ------------------------------------------------------------------- dlsim drop-in

def test_dlsim_continuous_lti_raises_what_scipy_raises():
    signal = pytest.importorskip("scipy.signal")
    lti = signal.lti(*_SS)
    with pytest.raises(AttributeError):
        signal.dlsim(lti, np.ones(5))
    with pytest.raises(AttributeError, match=r"^dlsim: system is a continuous-time lti") as info:
        ssmcore.dlsim(lti, np.ones(5))
    assert isinstance(info.value, TypeError)  # what it also is


class _DuckStateSpace:
    """Anything with .A .B .C .D and .dt (the python-control StateSpace protocol)."""

    def __init__(self, A, B, C, D, dt):
        self.A, self.B, self.C, self.D, self.dt = A, B, C, D, dt


def _ref(u, dt=1.0, x0=None):
    signal = pytest.importorskip("scipy.signal")
    return signal.dlsim(_SS + (dt,), u, x0=x0)


def test_dlsim_accepts_state_space_objects():
    u = np.arange(6.0)
    for got in (ssmcore.dlsim(_DuckStateSpace(*_SS, 0.1), u, x0=[1.0, -1.0]),):
        for g, w in zip(got, _ref(u, 0.1, x0=[1.0, -1.0]), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(ssmcore.dlsim(_DuckStateSpace(*_SS, True), u)[0], np.arange(6.0))  # dt=True: 1
    with pytest.raises(AttributeError, match=r"^dlsim: system is a continuous-time _DuckStateSpace \(dt=0\)"):
        ssmcore.dlsim(_DuckStateSpace(*_SS, 0), u)
    with pytest.raises(ValueError, match=r"^dlsim: system \(_DuckStateSpace\) has dt=None"):
        ssmcore.dlsim(_DuckStateSpace(*_SS, None), u)
    with pytest.raises(TypeError, match=r"^dlsim: system \(SimpleNamespace\) has A, B, C, D but no dt"):
        from types import SimpleNamespace

        ssmcore.dlsim(SimpleNamespace(A=_SS[0], B=_SS[1], C=_SS[2], D=_SS[3]), u)


def test_dlsim_accepts_python_control_state_space():
    control = pytest.importorskip("control")
    u = np.arange(6.0)
    got = ssmcore.dlsim(control.ss(*_SS, 0.1), u)
    for g, w in zip(got, _ref(u, 0.1), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-14, atol=1e-14)
    with pytest.raises(AttributeError, match="continuous-time StateSpace"):
        ssmcore.dlsim(control.ss(*_SS), u)  # python-control's default dt=0: continuous


# cont2discrete drop-in: what scipy accepts (issue items 8 and 10, cont2discrete part)
_A = np.array([[-1.0, 0.5], [0.0, -2.0]])
_B = np.array([[1.0], [1.0]])


@pytest.mark.parametrize("method", ["zoh", "foh", "bilinear", "impulse"])
def test_cont2discrete_takes_a_1d_C_like_scipy(method):
    import scipy.signal as ss

    C = np.array([1.0, 1.0])
    got = ssmcore.cont2discrete((_A, _B, C, 0.0), 0.1, method=method)
    want = ss.cont2discrete((_A, _B, C, 0.0), 0.1, method=method)
    for g, w in zip(got[:3], want[:3]):
        assert np.shape(g) == np.shape(w)
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)


def test_cont2discrete_takes_state_space_objects():
    class StateSpace:  # the attributes python-control's StateSpace has
        A, B, C, D, dt = _A, _B, np.array([[1.0, 1.0]]), np.zeros((1, 1)), 0

    got = ssmcore.cont2discrete(StateSpace(), 0.1)
    want = ssmcore.cont2discrete((_A, _B, StateSpace.C, StateSpace.D), 0.1)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    StateSpace.dt = 0.5
    with pytest.raises(ValueError, match="cont2discrete: system is already discrete"):
        ssmcore.cont2discrete(StateSpace(), 0.1)
    control = pytest.importorskip("control")
    sys_c = control.ss(_A, _B, [[1.0, 1.0]], 0)
    np.testing.assert_array_equal(ssmcore.cont2discrete(sys_c, 0.1)[0], want[0])


def test_cont2discrete_three_matrices_are_not_read_as_zpk_silently():
    with pytest.raises(ValueError, match=r"cont2discrete: a system of 3 entries is read as \(zeros, poles, gain\)"):
        ssmcore.cont2discrete((_A, _B, np.array([[1.0, 1.0]])), 0.1)
