"""Discretisation: scipy agreement, diagonal == dense, VJPs, broadcasting, validation."""

from __future__ import annotations

from math import factorial

import numpy as np
import pytest
import scipy.signal as ss
from hypothesis import given, strategies as st
from namespaces import cpu_backends
from vjp_check import check_vjp

import ssmcore
from ssmcore._discretization import DENSE_METHODS, DIAG_METHODS, cont2discrete, discretize, discretize_diag

BACKENDS = cpu_backends("discretize")  # the capability table's CPU backends (discretize_diag declares the same)

SCIPY_METHODS = ("zoh", "foh", "impulse", "bilinear", "tustin", "gbt", "euler", "forward_diff", "backward_diff")


def assert_close(actual, desired, rtol=1e-12):
    """Relative agreement measured against the size of the whole matrix (entries may be ~0)."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    scale = max(float(np.max(np.abs(desired), initial=0.0)), 1e-300)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * scale)


def random_system(seed, n, m, p, kind, complex_):
    """A (n, n) stable/unstable/singular, B, C, D with ||A|| of order 1."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, n)) / np.sqrt(n)
    if complex_:
        G = G + 1j * rng.standard_normal((n, n)) / np.sqrt(n)
    shift = np.max(np.linalg.eigvals(G).real)
    if kind == "stable":
        A = G - (shift + rng.uniform(0.1, 1.0)) * np.eye(n)
    elif kind == "unstable":
        A = G - (shift - rng.uniform(0.1, 1.0)) * np.eye(n)
    else:  # singular: project out one direction
        v = rng.standard_normal((n, 1))
        v /= np.linalg.norm(v)
        A = G @ (np.eye(n) - v @ v.T)
    B = rng.standard_normal((n, m))
    C = rng.standard_normal((p, n))
    D = rng.standard_normal((p, m))
    return A, B, C, D


systems = st.tuples(
    st.integers(0, 2**31),  # seed
    st.integers(1, 5),  # n
    st.integers(1, 3),  # m
    st.integers(1, 2),  # p
    st.sampled_from(["stable", "unstable", "singular"]),
    st.booleans(),  # complex A
)


def method_args(method, alpha):
    return {"method": method, "alpha": alpha if method == "gbt" else None}


# --------------------------------------------------------------------------- scipy agreement


ANCHOR_SYS = (np.array([[-1.0, 0.5], [0.0, -2.0]]), np.array([[1.0], [1.0]]), np.array([[1.0, 1.0]]), np.array([[0.0]]))


@pytest.mark.parametrize(
    "method, index, expected",
    [  # ANCHORS.md section 4.1: values printed to 5-6 digits
        ("zoh", 1, [[0.097427], [0.090635]]),
        ("bilinear", 2, [[0.952381, 0.930736]]),
        ("bilinear", 3, [[0.094156]]),
        ("backward_diff", 3, [[0.17803]]),
        ("impulse", 3, [[0.2]]),
        ("foh", 1, [[0.094766], [0.082146]]),
        ("foh", 3, [[0.095975]]),
    ],
)
def test_anchor_check_values(method, index, expected):
    out = cont2discrete(ANCHOR_SYS, 0.1, method=method)
    np.testing.assert_allclose(out[index], expected, atol=6e-6)
    if index < 2:
        np.testing.assert_allclose(discretize(ANCHOR_SYS[0], ANCHOR_SYS[1], 0.1, method)[index], expected, atol=6e-6)


@given(systems, st.sampled_from(SCIPY_METHODS), st.floats(0.0, 1.0), st.floats(1e-3, 1.0))
def test_cont2discrete_matches_scipy(sysargs, method, alpha, dt):
    A, B, C, D = random_system(*sysargs)
    if method == "impulse":
        D = np.zeros_like(D)
    kw = method_args(method, alpha)
    ours = cont2discrete((A, B, C, D), dt, **kw)
    ref = ss.cont2discrete((A, B, C, D), dt, **kw)
    for a, r in zip(ours[:4], ref[:4]):
        assert_close(a, np.broadcast_to(r, np.shape(a)))
    assert ours[4] == dt


@given(systems, st.sampled_from(SCIPY_METHODS), st.floats(0.0, 1.0), st.floats(1e-3, 1.0), st.sampled_from(BACKENDS))
def test_discretize_matches_scipy(sysargs, method, alpha, dt, backend):
    A, B, C, D = random_system(*sysargs)
    kw = method_args(method, alpha)
    Ad, Bd = discretize(A, B, dt, backend=backend, **kw)
    ref = ss.cont2discrete((A, B, C, np.zeros_like(D)), dt, **kw)
    assert_close(Ad, ref[0])
    assert_close(Bd, ref[1])


def test_cont2discrete_accepts_lists_and_integers_like_scipy():
    sys = ([[0, 1], [-2, -3]], [[0], [1]], [[1, 0]], [[0]])
    for method in SCIPY_METHODS:
        kw = method_args(method, 0.25)
        ours = cont2discrete(sys, 0.5, **kw)
        ref = ss.cont2discrete(tuple(np.array(x) for x in sys), 0.5, **kw)
        for a, r in zip(ours[:4], ref[:4]):
            assert_close(a, r)
    ours = cont2discrete(tuple(np.array(x) for x in sys), 0.5)  # integer arrays are fine here
    assert ours[0].dtype == np.float64


@pytest.mark.filterwarnings("ignore::scipy.signal.BadCoefficients")  # scipy's own tf conversion warns
@pytest.mark.parametrize("form", ["tf", "zpk", "lti"])
def test_cont2discrete_other_system_forms(form):
    A, B, C, D = ANCHOR_SYS
    if form == "tf":
        system = ss.ss2tf(A, B, C, D)
    elif form == "zpk":
        system = ss.ss2zpk(A, B, C, D)
    else:
        system = ss.lti(A, B, C, D)
    for method in ("zoh", "bilinear", "foh"):
        ours = cont2discrete(system, 0.1, method=method)
        ref = ss.cont2discrete(system, 0.1, method=method)
        if form == "lti":
            assert_close(ours.A, ref.A)
            assert_close(ours.B, ref.B)
            continue
        assert len(ours) == len(ref)
        for a, r in zip(ours[:-1], ref[:-1]):
            assert_close(a, r, rtol=1e-10)


# --------------------------------------------------------------------------- diagonal == dense


def _taylor_phi1(x, terms=30):
    """Independent check value for small |x|: the series summed in increasing order."""
    total, term = 0.0 * x, 1.0 + 0.0 * x
    for k in range(terms):
        total = total + term / float(factorial(k + 1))  # a float: NumPy 1.24 makes a huge Python int an object array
        term = term * x
    return total


@given(
    st.integers(0, 2**31),
    st.integers(1, 6),
    st.booleans(),
    st.sampled_from(DIAG_METHODS),
    st.floats(0.0, 1.0),
    st.sampled_from(BACKENDS),
)
def test_diag_matches_dense(seed, n, complex_, method, alpha, backend):
    rng = np.random.default_rng(seed)
    lam = -rng.uniform(0.0, 3.0, n)
    if complex_:
        lam = lam + 1j * rng.uniform(-10.0, 10.0, n)
    # include eigenvalues whose A*dt is tiny, and exactly zero
    lam[0] = 0.0
    if n > 1:
        lam[1] = -1e-20 * (1 + 1j if complex_ else 1)
    if n > 2:
        lam[2] = 1e-12
    dt = rng.uniform(0.01, 1.0)
    B = rng.standard_normal((n, 2))
    kw = method_args(method, alpha)
    Ad, Bd = discretize_diag(lam, B, dt, backend=backend, **kw)
    Ad_dense, Bd_dense = discretize(np.diag(lam), B, dt, **kw)
    assert_close(Ad, np.diag(Ad_dense), rtol=1e-13)
    off_diagonal = Ad_dense - np.diag(np.diag(Ad_dense))
    assert np.max(np.abs(off_diagonal)) <= 1e-15 * np.max(np.abs(Ad))
    for col in range(2):
        np.testing.assert_allclose(Bd[:, col], Bd_dense[:, col], rtol=1e-13, atol=1e-300)


@pytest.mark.op("discretize_diag")
@pytest.mark.parametrize("complex_", [False, True])
def test_diag_zoh_tiny_steps_against_taylor(backend, complex_):
    mags = np.array([0.0, 1e-300, 1e-20, 1e-12, 1e-8, 1e-4, 1e-2, 0.3, 0.999, 1.001])
    phases = np.exp(1j * np.array([0.0, 0.4, 1.3, 2.0, 3.1])) if complex_ else np.array([1.0, -1.0])
    x = (mags[:, None] * phases[None, :]).ravel()
    Ad, Bd = discretize_diag(x, np.ones_like(x.real), 1.0, backend=backend)
    np.testing.assert_allclose(Bd, _taylor_phi1(x), rtol=4e-16, atol=0)
    np.testing.assert_allclose(Ad, np.exp(x), rtol=4e-16, atol=0)
    # at |x| = 1e-20, Bd = 1 + x/2 to full relative accuracy in each component
    tiny = x[np.abs(x) == 1e-20]
    _, Bd_tiny = discretize_diag(tiny, np.ones_like(tiny.real), 1.0, backend=backend)
    assert np.all(Bd_tiny.real == 1.0)
    np.testing.assert_allclose(np.imag(Bd_tiny), np.imag(tiny) / 2, rtol=1e-15, atol=0)


@pytest.mark.op("discretize_diag")
def test_diag_zoh_complex_near_two_pi_i(backend):
    """exp(x) - 1 cancels near x = 2 pi i k; the real part of phi1 must still be accurate."""
    x = np.array([-1e-7 + 2j * np.pi, -3e-4 + 4j * np.pi, 1e-9 + 6j * np.pi])
    _, Bd = discretize_diag(x, np.ones(3), 1.0, backend=backend)
    # e^x - 1 = e^s - 1 with s = x - 2 pi i k, a small argument for the Taylor series. 2 pi is
    # split as hi + lo (hi = fl(2 pi); lo = 2 sin(fl(pi)) = 2 (pi - fl(pi))) so s is exact enough.
    k = np.round(x.imag / (2 * np.pi))
    small = x - 1j * k * (2 * np.pi) - 1j * k * (2 * np.sin(np.pi))
    expected = _taylor_phi1(small) * small / x
    # compare each component on its own: the real part is ~1e-8 of the imaginary part
    np.testing.assert_allclose(Bd.real, expected.real, rtol=1e-13, atol=0)
    np.testing.assert_allclose(Bd.imag, expected.imag, rtol=1e-13, atol=0)


# --------------------------------------------------------------------------- batching and broadcasting


@pytest.mark.parametrize("method", DENSE_METHODS)
def test_dense_batched_equals_loop(method, rng):
    A = rng.standard_normal((3, 2, 4, 4)) * 0.5 + 0.2j * rng.standard_normal((3, 2, 4, 4))
    B = rng.standard_normal((2, 4, 3))
    dt = rng.uniform(0.05, 0.5, (3, 1))
    Ad, Bd = discretize(A, B, dt, method=method, alpha=0.3)
    assert Ad.shape == (3, 2, 4, 4) and Bd.shape == (3, 2, 4, 3)
    for i in range(3):
        for j in range(2):
            a, b = discretize(A[i, j], B[j], float(dt[i, 0]), method=method, alpha=0.3)
            assert_close(Ad[i, j], a, rtol=1e-14)
            assert_close(Bd[i, j], b, rtol=1e-14)


@pytest.mark.parametrize("method", DIAG_METHODS)
def test_diag_dt_broadcasting(method, rng):
    H, N, M = 3, 5, 2
    A = -rng.uniform(0.1, 2.0, (H, N)) + 1j * rng.uniform(-3, 3, (H, N))
    B = rng.standard_normal((H, N))
    dt = rng.uniform(0.01, 0.5, H)
    kw = method_args(method, 0.7)
    per_channel = discretize_diag(A, B, dt, **kw)  # dt (H,) gets a state axis
    column = discretize_diag(A, B, dt[:, None], **kw)  # dt (H, 1): NumPy broadcasting
    for h in range(H):
        ref = discretize_diag(A[h], B[h], float(dt[h]), **kw)
        for out in (per_channel, column):
            assert_close(out[0][h], ref[0], rtol=1e-15)
            assert_close(out[1][h], ref[1], rtol=1e-15)
    # shared A (N,), one dt per channel: dt (H, 1) -> (H, N). (dt (H,) would pair with A's N axis.)
    Ad, Bd = discretize_diag(A[0], B[0], dt[:, None], **kw)
    assert Ad.shape == Bd.shape == (H, N)
    assert_close(Ad[2], discretize_diag(A[0], B[0], float(dt[2]), **kw)[0], rtol=1e-15)
    # S5 layout: Lambda (P,), B (P, M), dt per state (P,)
    Bm = rng.standard_normal((N, M))
    dts = rng.uniform(0.01, 0.5, N)
    Ad, Bd = discretize_diag(A[0], Bm, dts, **kw)
    assert Ad.shape == (N,) and Bd.shape == (N, M)
    for n in range(N):
        a, b = discretize_diag(A[0, n : n + 1], Bm[n : n + 1], float(dts[n]), **kw)
        assert_close(Ad[n], a[0], rtol=1e-15)
        assert_close(Bd[n], b[0], rtol=1e-15)


def test_diag_numba_matches_reference_on_large_arrays(rng):
    A = -rng.uniform(0, 50, (64, 33)) + 1j * rng.uniform(-300, 300, (64, 33))
    A[:, :4] *= 1e-6  # some elements on the series branch
    B = rng.standard_normal((64, 33)) + 1j * rng.standard_normal((64, 33))
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), 64))
    for method in DIAG_METHODS:
        kw = method_args(method, 0.4)
        out_nb = discretize_diag(A, B, dt, backend="numba", **kw)
        out_np = discretize_diag(A, B, dt, backend="numpy", **kw)
        for a, b in zip(out_nb, out_np):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=0)


def test_parallel_and_sequential_kernels_agree(monkeypatch, rng):
    """Small inputs run sequential Numba drivers, large ones parallel: force each path."""
    from ssmcore.backends.numba import discretization as nb

    A = -rng.uniform(0, 5, (8, 7)) + 1j * rng.uniform(-9, 9, (8, 7))
    B = rng.standard_normal((8, 7, 2))
    dt = rng.uniform(0.01, 0.5, 8)
    ct = (rng.standard_normal((8, 7)), rng.standard_normal((8, 7, 2)))
    Ad3 = rng.standard_normal((9, 3, 3)) - np.eye(3)
    B3 = rng.standard_normal((9, 3, 1))
    results = []
    for threshold in (0, 1 << 62):
        monkeypatch.setattr(nb, "PARALLEL_MIN_WORK", threshold)
        out, pullback = ssmcore.vjp("discretize_diag", A, B, dt, "foh")
        dense, dense_pullback = ssmcore.vjp("discretize", Ad3, B3, 0.2, "zoh")
        results.append((*out, *pullback(ct), *dense, *dense_pullback((np.ones((9, 3, 3)), None))))
    for par, seq in zip(*results):
        np.testing.assert_array_equal(par, seq)


def test_single_precision_in_single_out(rng):
    A = -rng.uniform(0.1, 1, (2, 4)).astype(np.float32)
    B = np.ones((2, 4), np.float32)
    Ad, Bd = discretize_diag(A, B, 0.1)
    assert Ad.dtype == Bd.dtype == np.float32
    Ad, Bd = discretize_diag(A.astype(np.complex64), B, np.float32(0.1))
    assert Ad.dtype == Bd.dtype == np.complex64
    Ad, Bd = discretize_diag(A, B, np.float64(0.1))  # a float64 input keeps double precision
    assert Ad.dtype == np.float64
    Ad, Bd = discretize(np.diag(A[0]), B[0][:, None], 0.1)
    assert Ad.dtype == Bd.dtype == np.float32
    # lists carry no precision: float64
    assert discretize_diag([-1, -2], [1, 1], 0.5)[0].dtype == np.float64


def test_empty_and_single_element():
    Ad, Bd = discretize_diag(np.zeros((0, 4)), np.zeros((0, 4)), 0.1)
    assert Ad.shape == Bd.shape == (0, 4)
    Ad, Bd = discretize(np.zeros((0, 3, 3)), np.zeros((3, 2)), 0.1)
    assert Ad.shape == (0, 3, 3) and Bd.shape == (0, 3, 2)
    Ad, Bd = discretize(np.array([[-2.0]]), np.array([[1.0]]), 0.5)
    assert_close(Ad, [[np.exp(-1.0)]])
    assert_close(Bd, [[-np.expm1(-1.0) / 2.0]])
    (Ad, Bd), pullback = ssmcore.vjp("discretize_diag", np.zeros((0, 4)), np.zeros((0, 4)), np.full(0, 0.1))
    assert [g.shape for g in pullback((np.ones((0, 4)), None))] == [(0, 4), (0, 4), (0,)]
    for backend in BACKENDS:  # M = 0 inputs: Bd is empty, Ad and its gradient are not
        lam, dt = np.array([-1.0, -2.0]), np.array(0.5)
        (Ad, Bd), pullback = ssmcore.vjp("discretize_diag", lam, np.zeros((2, 0)), dt, backend=backend)
        assert Bd.shape == (2, 0)
        gA, gB, gdt = pullback((np.ones(2), None))
        assert_close(gA, 0.5 * np.exp(0.5 * lam))
        assert_close(gdt, np.sum(lam * np.exp(0.5 * lam)))


# --------------------------------------------------------------------------- SSM vs control convention


def test_ssm_convention_relations(rng):
    """zoh_euler's (Ad, dt B) in the SSM recurrence gives scipy impulse's outputs.

    foh/impulse's Bd in the SSM recurrence give scipy's outputs as y_k = C x_{k-1} + Dd u_k
    (docs/discretization.md).
    """
    A, B, C, _ = random_system(3, 3, 2, 1, "stable", False)
    dt, L = 0.2, 12
    u = rng.standard_normal((L, 2))

    def ssm_states(Ad, Bd):
        x, xs = np.zeros(3), []
        for k in range(L):
            x = Ad @ x + Bd @ u[k]
            xs.append(x)
        return np.array(xs)

    Ad, Bd_euler = discretize(A, B, dt, "zoh_euler")
    ref = ss.dlsim(cont2discrete((A, B, C, np.zeros((1, 2))), dt, "impulse")[:4] + (dt,), u)[1]
    assert_close((ssm_states(Ad, Bd_euler) @ C.T), ref)
    for method in ("foh", "impulse"):
        D = np.zeros((1, 2)) if method == "impulse" else rng.standard_normal((1, 2))
        Ad, Bd, Cd, Dd, _ = cont2discrete((A, B, C, D), dt, method)
        xs = ssm_states(*discretize(A, B, dt, method))
        previous = np.vstack([np.zeros((1, 3)), xs[:-1]])
        assert_close(previous @ Cd.T + u @ Dd.T, ss.dlsim((Ad, Bd, Cd, Dd, dt), u)[1])


# --------------------------------------------------------------------------- VJPs


@given(st.integers(0, 2**31), st.sampled_from(DIAG_METHODS), st.booleans(), st.booleans(), st.sampled_from(BACKENDS))
def test_discretize_diag_vjp(seed, method, complex_, matrix_B, backend):
    rng = np.random.default_rng(seed)
    H, N, M = 2, 3, 2
    A = -rng.uniform(0.2, 6.0, (H, N))  # |A dt| on both sides of the series radius 1
    if complex_:
        A = A + 1j * rng.uniform(-8, 8, (H, N))
    A[0, 0] *= 1e-3  # and one element with a tiny A dt
    B = rng.standard_normal((H, N, M) if matrix_B else (H, N))
    if complex_ and not matrix_B:
        B = B + 1j * rng.standard_normal((H, N))
    dt = rng.uniform(0.05, 0.5, H)
    check_vjp(
        "discretize_diag", (A, B, dt), {"backend": backend, **method_args(method, 0.35)}, rng=rng, rtol=1e-6, atol=1e-8
    )


@given(st.integers(0, 2**31), st.sampled_from(DENSE_METHODS), st.booleans(), st.sampled_from(BACKENDS))
def test_discretize_vjp(seed, method, complex_, backend):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((2, 3, 3)) * 0.7 - np.eye(3)
    if complex_:
        A = A + 0.5j * rng.standard_normal((2, 3, 3))
    B = rng.standard_normal((3, 2))
    dt = rng.uniform(0.05, 0.6, 2)
    check_vjp("discretize", (A, B, dt), {"backend": backend, **method_args(method, 0.35)},
              rng=rng, rtol=1e-6, atol=1e-8)


def test_vjp_broadcast_dt_and_real_inputs_get_real_gradients(rng):
    A = -rng.uniform(0.1, 1, (3, 4))
    B = rng.standard_normal((3, 4)) + 1j * rng.standard_normal((3, 4))  # complex output, real A
    dt = np.array([0.1])
    grads = check_vjp("discretize_diag", (A, B, dt), {}, rng=rng)
    assert grads[0].dtype == np.float64 and grads[2].dtype == np.float64 and grads[2].shape == (1,)
    grads = check_vjp("discretize", (np.diag(A[0]), B[0][:, None], np.array(0.1)), {"method": "foh"}, rng=rng)
    assert grads[0].dtype == np.float64 and grads[1].dtype == np.complex128 and grads[2].shape == ()


def test_vjp_with_large_cotangent_is_accurate(rng):
    A = rng.standard_normal((4, 4)) - 2 * np.eye(4)
    B = rng.standard_normal((4, 2))
    ct = (1e8 * rng.standard_normal((4, 4)), 1e8 * rng.standard_normal((4, 2)))
    g_nb = ssmcore.vjp("discretize", A, B, 0.3)[1](ct)
    g_np = ssmcore.vjp("discretize", A, B, 0.3, backend="numpy")[1](ct)
    for a, b in zip(g_nb, g_np):
        assert_close(a, b, rtol=1e-12)


# --------------------------------------------------------------------------- validation


A2 = np.array([[-1.0, 0.5], [0.0, -2.0]])
B2 = np.array([[1.0], [1.0]])


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: discretize(np.ones((2, 3)), B2, 0.1), ValueError, r"discretize: A has shape \(2, 3\)"),
        (lambda: discretize(np.ones(3), B2, 0.1), ValueError, r"discretize: A has shape \(3,\)"),
        (lambda: discretize(A2, np.ones((3, 1)), 0.1), ValueError, r"discretize: B has shape \(3, 1\)"),
        (lambda: discretize(A2, np.ones(2), 0.1), ValueError, r"discretize: B has shape \(2,\).*B\[:, None\]"),
        (lambda: discretize(np.stack([A2] * 3), np.stack([B2] * 2), 0.1), ValueError,
         "discretize: shapes do not broadcast"),
        (lambda: discretize(A2, B2, -0.1), ValueError, "discretize: dt must be > 0"),
        (lambda: discretize(A2, B2, 0.0), ValueError, "discretize: dt must be > 0"),
        (lambda: discretize(A2, B2, np.nan), ValueError, "discretize: dt must be finite"),
        (lambda: discretize(A2, B2, np.inf), ValueError, "discretize: dt must be finite"),
        (lambda: discretize(A2, B2, 0.1 + 0j), TypeError, "discretize: dt has dtype complex"),
        (lambda: discretize(A2, B2, 0.1, "matched"), ValueError, "discretize: unknown method 'matched'"),
        (lambda: discretize(A2, B2, 0.1, "gbt"), ValueError, "discretize: method 'gbt' needs alpha"),
        (lambda: discretize(A2, B2, 0.1, "gbt", 1.5), ValueError, r"discretize: alpha must be in \[0, 1\]"),
        (lambda: discretize(A2.astype(int), B2, 0.1), TypeError, "discretize: A has dtype int"),
        (lambda: discretize(A2, B2.astype(object), 0.1), TypeError, "discretize: B has dtype object"),
        (lambda: discretize(A2, B2, np.array([1, 2])), TypeError, "discretize: dt has dtype int"),
        (lambda: discretize_diag(np.ones(3), np.ones((2, 3, 4)), 0.1), ValueError,
         r"discretize_diag: B has shape \(2, 3, 4\)"),
        (lambda: discretize_diag(np.ones((2, 3)), np.ones((2, 4)), 0.1), ValueError,
         "discretize_diag: shapes do not broadcast"),
        (lambda: discretize_diag(np.ones((2, 3)), np.ones((2, 3)), np.ones(4)), ValueError,
         "discretize_diag: shapes do not broadcast"),
        (lambda: discretize_diag(np.ones(3), np.ones(3), -1.0), ValueError, "discretize_diag: dt must be > 0"),
        (lambda: discretize_diag(np.ones(3), np.ones(3), [0.1, np.nan, 0.1]), ValueError,
         "discretize_diag: dt must be finite"),
        (lambda: discretize_diag(np.ones(3), np.ones(3), 1j), TypeError, "discretize_diag: dt has dtype complex"),
        (lambda: discretize_diag(np.ones(3), np.ones(3), 0.1, "foo"), ValueError,
         "discretize_diag: unknown method 'foo'"),
        (lambda: discretize_diag(np.ones(3), np.ones(3), 0.1, "gbt"), ValueError,
         "discretize_diag: method 'gbt' needs alpha"),
        (lambda: discretize_diag(np.ones(3), np.ones(3), 0.1, "gbt", -0.1), ValueError,
         "discretize_diag: alpha must be in"),
        (lambda: discretize_diag(np.arange(3), np.ones(3), 0.1), TypeError, "discretize_diag: A has dtype int"),
        (lambda: discretize_diag(np.ones(3), np.array(["a"] * 3), 0.1), TypeError, "discretize_diag: B has dtype <U1"),
        (lambda: discretize_diag(np.ones(3), np.ones(3), 0.1, backend="gpu"), ValueError,
         "discretize_diag: unknown backend"),
        (lambda: cont2discrete(ANCHOR_SYS[:2] + (ANCHOR_SYS[2], [[1.0]]), 0.1, "impulse"), ValueError,
         "cont2discrete: method 'impulse' needs"),
        (lambda: cont2discrete((A2, B2, np.ones((1, 3)), 0.0), 0.1), ValueError,
         r"cont2discrete: C has shape \(1, 3\)"),
        (lambda: cont2discrete((A2, B2, np.ones((1, 2)), np.ones((2, 2))), 0.1), ValueError,
         r"cont2discrete: D has shape"),
        (lambda: cont2discrete(ANCHOR_SYS + (0.1,), 0.1), ValueError, "cont2discrete: system must be"),
        (lambda: cont2discrete(ANCHOR_SYS, 0.1, "zoh_euler"), ValueError, "cont2discrete: unknown method"),
        (lambda: cont2discrete(ANCHOR_SYS, 0.1, "gbt"), ValueError, "cont2discrete: method 'gbt' needs alpha"),
        (lambda: cont2discrete(ANCHOR_SYS, -0.1), ValueError, "cont2discrete: dt must be > 0"),
        (lambda: cont2discrete(ANCHOR_SYS, [0.1, 0.2]), ValueError, "cont2discrete: dt must be a scalar"),
        (lambda: cont2discrete((np.ones((2, 2, 2)),) + ANCHOR_SYS[1:], 0.1), ValueError, "cont2discrete: A has shape"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_lists_of_ints_are_fine():
    Ad, Bd = discretize([[-1, 0], [0, -2]], [[1], [1]], 1)
    assert_close(np.diag(Ad), np.exp([-1.0, -2.0]))
    Ad, Bd = discretize_diag([-1, -2], [1, 1], 1)
    assert_close(Bd, -np.expm1([-1.0, -2.0]) / [1.0, 2.0])


def test_gbt_singular_matrix_is_a_clear_error():
    with pytest.raises(np.linalg.LinAlgError, match="discretize: I - alpha\\*dt\\*A is singular"):
        discretize(np.eye(2), B2, 1.0, "backward_diff")


@pytest.mark.parametrize("method", DENSE_METHODS)
def test_nan_propagates(method):
    A = A2.copy()
    A[0, 1] = np.nan
    Ad, Bd = discretize(A, B2, 0.1, method, alpha=0.5)
    assert np.isnan(Ad).any() and np.all(np.isfinite(Ad) | np.isnan(Ad))
    lam = np.array([-1.0, np.nan, -1e-30])
    Ad, Bd = discretize_diag(lam, np.ones(3), 0.1, method, alpha=0.5)
    assert np.isnan(Ad[1]) and np.isnan(Bd[1]) and np.isfinite(Ad[[0, 2]]).all() and np.isfinite(Bd[[0, 2]]).all()
