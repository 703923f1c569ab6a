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
from ssmcore.backends.numba import lti as nb_lti
from ssmcore.backends.numba import ssd as nb_ssd

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
