"""inf/NaN inputs give the reference's inf/NaN pattern on every path (issue: reliability, item 4).

Each case plants one +inf, -inf or NaN in one input of an op and compares the
Numba backend's outputs and pullback gradients with the NumPy reference's,
element by element: NaN where the reference has NaN, +inf / -inf where it has
them, finite elsewhere. Serial and parallel drivers (the work threshold patched
to 0) and every LTI mode are covered.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import ssmcore
from ssmcore.backends.numba import lti as nb_lti, ssd as nb_ssd

VALUES = [np.inf, -np.inf, np.nan]


def _pattern(a):
    a = np.asarray(a)
    if np.iscomplexobj(a):
        return np.stack([_pattern(a.real), _pattern(a.imag)])
    return np.stack([np.isnan(a), np.isposinf(a), np.isneginf(a)])


def _flat(x):
    if x is None:
        return []
    if isinstance(x, tuple):
        return [v for item in x for v in _flat(item)]
    return [np.asarray(x)]


def _same_pattern(got, want, what):
    got, want = _flat(got), _flat(want)
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        pg, pw = _pattern(g), _pattern(w)
        bad = np.argwhere(pg != pw)
        assert not bad.size, f"{what}: output {i}: {len(bad)} elements differ in inf/NaN pattern, first {bad[0]}"


def _both(op, args, kwargs, cot_seed=1):
    """Forward and pullback on the numba and numpy backends, warnings silenced (inf - inf etc.)."""
    res = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for backend in ("numba", "numpy"):
            out, pb = ssmcore.vjp(op, *args, backend=backend, **kwargs)
            rng = np.random.default_rng(cot_seed)
            cot = tuple(rng.standard_normal(np.shape(o)) for o in _flat(out))
            cot = cot if isinstance(out, tuple) else cot[0]
            res[backend] = (out, pb(cot))
    return res


@pytest.fixture(params=["serial", "parallel"])
def driver(request, monkeypatch):
    if request.param == "parallel":
        monkeypatch.setattr(nb_ssd, "PARALLEL_MIN_WORK", 0)
        monkeypatch.setattr(nb_lti, "_PARALLEL_MIN_WORK", 0)
    return request.param


# --------------------------------------------------------------------- ssd

def _ssd_inputs(rng, L=300, nb=2, H=2, P=3, G=1, N=4):
    return dict(
        x=rng.standard_normal((nb, L, H, P)), dt=rng.uniform(0.1, 0.5, (nb, L, H)), A=-rng.uniform(0.5, 2, H),
        B=rng.standard_normal((nb, L, G, N)), C=rng.standard_normal((nb, L, G, N)),
        D=rng.standard_normal(H), initial_states=rng.standard_normal((nb, H, P, N)),
    )


_SSD_SPOTS = {"x": (0, 3, 0, 0), "dt": (0, 3, 0), "A": (0,), "B": (0, 3, 0, 0), "C": (0, 70, 0, 1),
              "D": (1,), "initial_states": (0, 1, 2, 3)}


@pytest.mark.parametrize("name", list(_SSD_SPOTS))
@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("seq", [False, True])
def test_ssd_nonfinite_pattern(name, value, seq, driver):
    arrs = _ssd_inputs(np.random.default_rng(0))
    arrs[name][_SSD_SPOTS[name]] = value
    kw = dict(arrs, chunk_size=64, return_final_states=True)
    if seq:
        kw["seq_idx"] = np.repeat(np.arange(3), 100)[None].repeat(2, axis=0)
    args = [kw.pop(k) for k in ("x", "dt", "A", "B", "C")]
    r = _both("ssd", args, kw)
    _same_pattern(r["numba"][0], r["numpy"][0], f"ssd forward ({name}={value})")
    _same_pattern(r["numba"][1], r["numpy"][1], f"ssd gradients ({name}={value})")


def test_ssd_issue_example_one_inf_sample():
    """One +inf in x of a long single series: the reference has 2 NaN here, not hundreds."""
    rng = np.random.default_rng(1)
    arrs = _ssd_inputs(rng, L=1024, nb=1, H=1, P=2, N=8)
    arrs.pop("D"), arrs.pop("initial_states")
    arrs["x"][0, 0, 0, 0] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = ssmcore.ssd(**arrs)
        want = ssmcore.ssd(**arrs, backend="numpy")
    _same_pattern(got, want, "ssd")


# ----------------------------------------------------------- selective_scan

def _ss_inputs(rng, complex_A=False, nb=2, d=3, N=4, L=40):
    A = -rng.uniform(0.5, 2, (d, N))
    if complex_A:
        A = A + 1j * rng.uniform(0, 3, (d, N))
    return dict(
        u=rng.standard_normal((nb, d, L)), delta=rng.uniform(0.1, 0.5, (nb, d, L)), A=A,
        B=rng.standard_normal((nb, N, L)), C=rng.standard_normal((nb, N, L)), D=rng.standard_normal(d),
        z=rng.standard_normal((nb, d, L)), delta_bias=rng.standard_normal(d) * 0.1,
        h0=rng.standard_normal((nb, d, N)) * (1 + 1j if complex_A else 1),
    )


_SS_SPOTS = {"u": (0, 1, 5), "delta": (0, 1, 5), "A": (1, 2), "B": (0, 2, 5), "C": (0, 2, 5), "D": (1,),
             "z": (1, 0, 7), "delta_bias": (2,), "h0": (0, 1, 1)}


@pytest.mark.parametrize("name", list(_SS_SPOTS))
@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("complex_A", [False, True])
@pytest.mark.parametrize("options", [dict(), dict(delta_softplus=True, reverse=True)])
def test_selective_scan_nonfinite_pattern(name, value, complex_A, options):
    arrs = _ss_inputs(np.random.default_rng(0), complex_A)
    arrs[name][_SS_SPOTS[name]] = value
    args = [arrs.pop(k) for k in ("u", "delta", "A", "B", "C")]
    r = _both("selective_scan", args, dict(arrs, return_last_state=True, **options))
    _same_pattern(r["numba"][0], r["numpy"][0], f"selective_scan forward ({name}={value})")
    _same_pattern(r["numba"][1], r["numpy"][1], f"selective_scan gradients ({name}={value})")


# ------------------------------------------------------------------- LTI

def _lti_inputs(rng, nb=2, N=3, M=2, P=2, L=50):
    A = rng.standard_normal((N, N))
    A *= 0.9 / max(abs(np.linalg.eigvals(A)))
    return dict(A=A, B=rng.standard_normal((N, M)), C=rng.standard_normal((P, N)), D=rng.standard_normal((P, M)),
                u=rng.standard_normal((nb, M, L)), x0=rng.standard_normal((nb, N)))


_LTI_SPOTS = {"A": (1, 2), "B": (0, 1), "C": (1, 0), "D": (0, 0), "u": (0, 1, 7), "x0": (1, 2)}


@pytest.mark.parametrize("name", list(_LTI_SPOTS))
@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("mode", ["recurrent", "scan", "convolution"])
@pytest.mark.parametrize("N", [3, 16])  # the kernels' row-dot and column forms
def test_lti_simulate_nonfinite_pattern(name, value, mode, N, driver):
    arrs = _lti_inputs(np.random.default_rng(0), N=N)
    arrs[name][_LTI_SPOTS[name]] = value
    args = [arrs.pop(k) for k in ("A", "B", "C", "D", "u", "x0")]
    r = _both("lti_simulate", args, dict(mode=mode, return_final_state=True))
    _same_pattern(r["numba"][0], r["numpy"][0], f"lti_simulate {mode} forward ({name}={value})")
    _same_pattern(r["numba"][1], r["numpy"][1], f"lti_simulate {mode} gradients ({name}={value})")


def _diag_inputs(rng, complex_=True, nb=2, H=3, N=4, L=50):
    A = rng.uniform(0.5, 0.95, (H, N))
    cplx = (lambda s: rng.standard_normal(s) + 1j * rng.standard_normal(s)) if complex_ else rng.standard_normal
    if complex_:
        A = A * np.exp(1j * rng.uniform(0, 3, (H, N)))
    return dict(A=A, B=cplx((H, N)), C=cplx((H, N)), D=rng.standard_normal(H), u=rng.standard_normal((nb, H, L)),
                x0=cplx((nb, H, N)))


_DIAG_SPOTS = {"A": (1, 2), "B": (0, 1), "C": (1, 0), "D": (2,), "u": (0, 1, 7), "x0": (1, 2, 3)}


@pytest.mark.parametrize("name", list(_DIAG_SPOTS))
@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("mode", ["recurrent", "scan", "convolution"])
@pytest.mark.parametrize("conj_sym", [False, True])
def test_lti_simulate_diag_nonfinite_pattern(name, value, mode, conj_sym, driver):
    arrs = _diag_inputs(np.random.default_rng(0))
    arrs[name][_DIAG_SPOTS[name]] = value
    args = [arrs.pop(k) for k in ("A", "B", "C", "D", "u", "x0")]
    r = _both("lti_simulate_diag", args, dict(mode=mode, conj_sym=conj_sym, return_final_state=True))
    _same_pattern(r["numba"][0], r["numpy"][0], f"lti_simulate_diag {mode} forward ({name}={value})")
    _same_pattern(r["numba"][1], r["numpy"][1], f"lti_simulate_diag {mode} gradients ({name}={value})")


@pytest.mark.parametrize("name", ["u", "delta", "A", "B", "h0"])
@pytest.mark.parametrize("value", VALUES)
def test_selective_scan_float32_nonfinite_pattern(name, value):
    arrs = {k: v.astype(np.float32) for k, v in _ss_inputs(np.random.default_rng(0)).items()}
    arrs[name][_SS_SPOTS[name]] = value
    args = [arrs.pop(k) for k in ("u", "delta", "A", "B", "C")]
    r = _both("selective_scan", args, dict(arrs, return_last_state=True, delta_softplus=True))
    _same_pattern(r["numba"], r["numpy"], f"selective_scan float32 ({name}={value})")


@pytest.mark.parametrize("name", ["x", "dt", "B", "C", "initial_states"])
@pytest.mark.parametrize("value", VALUES)
def test_ssd_float32_nonfinite_pattern(name, value):
    arrs = {k: v.astype(np.float32) for k, v in _ssd_inputs(np.random.default_rng(0)).items()}
    arrs[name][_SSD_SPOTS[name]] = value
    kw = dict(arrs, chunk_size=64, return_final_states=True)
    args = [kw.pop(k) for k in ("x", "dt", "A", "B", "C")]
    r = _both("ssd", args, kw)
    _same_pattern(r["numba"], r["numpy"], f"ssd float32 ({name}={value})")
