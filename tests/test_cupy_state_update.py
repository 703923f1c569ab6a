"""CPU tests of the CuPy selective-state update: its planner, and ``state_update.cu`` run on the host.

No GPU is needed: the kernel is compiled as host C++ against the CUDA emulation of
``tests/cuda_emulation.py`` and driven through ``backends/cupy/state_update.py``'s own
launcher (NumPy standing in for CuPy), then checked against the NumPy reference for
plain / heads layouts, groups, every option, complex A, state_batch_indices with
repeated and padded entries, float32 and float64, and non-finite inputs. GPU runs are
in ``tests/test_gpu_state_update.py``.
"""

from __future__ import annotations

import re
import sys
import types

import cuda_emulation
import numpy as np
import pytest

from ssmcore.backends.cupy import state_update as csu
from ssmcore.backends.cupy._rawmodule import SOURCES
from ssmcore.reference import state_update as ref


def test_plan_one_thread_per_row():
    p = csu.plan_state_update(16, 1, 1536, 16, np.float32, np.float32, softplus=True, has_D=True)
    assert (p.blocks, p.threads) == (-(-16 * 1536 // csu.THREADS), csu.THREADS)
    assert p.kernel == "state_update_fwd<float, float>"
    assert p.flags == csu.FLAGS["softplus"] | csu.FLAGS["has_D"]
    assert csu.plan_state_update(0, 2, 3, 4, np.float64, np.complex128).blocks == 0
    plan = csu.plan_state_update(1, 1, 1, 1, np.float64, np.complex128)
    assert plan.kernel == "state_update_fwd<double, complex<double>>"
    with pytest.raises(TypeError, match="no CUDA instantiation for real dtype float32 with state dtype complex128"):
        csu.plan_state_update(1, 1, 1, 4, np.float32, np.complex128)
    with pytest.raises(ValueError, match="unknown option flags"):
        csu.plan_state_update(1, 1, 1, 4, np.float32, np.float32, gate=True)
    with pytest.raises(ValueError, match="N >= 1"):
        csu.plan_state_update(1, 1, 1, 0, np.float32, np.float32)


def test_constants_match_the_kernel_source():
    code = SOURCES["state_update.cu"].code()

    def macro(name):
        m = re.search(rf"^#define {name} (\d+)$", code, re.MULTILINE)
        assert m, name
        return int(m.group(1))

    assert macro("SSM_SU_THREADS") == csu.THREADS
    for name, bit in csu.FLAGS.items():
        assert macro(f"SSM_SU_{name.upper()}") == bit, name
    assert SOURCES["state_update.cu"]._module is None  # declared, not compiled


_TAGS = {"float, float": "f32", "float, complex<float>": "c64", "double, double": "f64",
         "double, complex<double>": "c128"}

_BINDINGS = r"""
#define SU_INST(R, S, tag) \
extern "C" void state_update_fwd_##tag(unsigned g, unsigned b, cv state, cv x, cv dt, cv A, cv B, cv C, cv Dv, \
        cv z, cv bias, cv rows, cv write, void* out, void* y, ll nb, ll nh, ll np, ll N, ll GB, ll GC, int flags) { \
    launch(g, b, [=] { state_update_fwd<R, S>((const S*)state, (const R*)x, (const R*)dt, (const S*)A, \
        (const S*)B, (const S*)C, (const R*)Dv, (const R*)z, (const R*)bias, (const ll*)rows, (const bool*)write, \
        (S*)out, (R*)y, nb, nh, np, N, GB, GC, flags); }); }
SU_INST(float, float, f32)
SU_INST(float, complex<float>, c64)
SU_INST(double, double, f64)
SU_INST(double, complex<double>, c128)
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    d = tmp_path_factory.mktemp("su_emu")
    return cuda_emulation.build(d, SOURCES["state_update.cu"].path.parent, "state_update.cu", _BINDINGS,
                                "su_emu", defines=("SSM_SU_THREADS=32",))


@pytest.fixture
def host(lib, monkeypatch):
    fake = types.ModuleType("cupy")
    for n in ("empty", "ascontiguousarray", "arange", "any", "int64"):
        setattr(fake, n, getattr(np, n))
    monkeypatch.setitem(sys.modules, "cupy", fake)

    def get(name):
        kernel, pair = name[:-1].split("<", 1)
        return cuda_emulation.caller(getattr(lib, f"{kernel}_{_TAGS[pair]}"), name)

    monkeypatch.setattr(csu.STATE_UPDATE, "get", get)
    monkeypatch.setattr(csu, "THREADS", 32)
    return csu


def _case(rng, rdt, cplx, *, b=3, H=4, P=5, N=6, GB=2, GC=1, S=None, opts=True):
    sdt = (np.complex64 if rdt == np.float32 else np.complex128) if cplx else rdt

    def st(*shape):
        v = rng.standard_normal(shape)
        if cplx:
            v = v + 1j * rng.standard_normal(shape)
        return v.astype(sdt)

    A = -np.exp(0.5 * rng.standard_normal((H, P, N)))
    if cplx:
        A = A + 1j * rng.standard_normal((H, P, N))
    r = lambda *s: rng.standard_normal(s).astype(rdt)  # noqa: E731
    return [st(b if S is None else S, H, P, N), r(b, H, P), (0.5 * rng.random((b, H, P))).astype(rdt), A.astype(sdt),
            st(b, GB, N), st(b, GC, N), r(H, P) if opts else None, r(b, H, P) if opts else None,
            r(H, P) if opts else None, opts]


def _close(got, want, rdt):
    tol = 2e-5 if rdt == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("rdt", [np.float32, np.float64])
@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("opts", [False, True])
def test_kernel_matches_reference(host, rdt, cplx, opts):
    rng = np.random.default_rng(1)
    args = _case(rng, rdt, cplx, opts=opts)
    y0, s0 = ref.state_update_fwd(*args, None)
    y, s = host.state_update_fwd(*args, None)
    assert y.dtype == rdt and s.dtype == args[0].dtype
    _close(y, y0, rdt)
    _close(s, s0, rdt)


@pytest.mark.parametrize("idx", [[4, 0, 2], [1, 1, 3], [2, -1, 2]])
@pytest.mark.parametrize("cplx", [False, True])
def test_kernel_indices(host, idx, cplx):
    rng = np.random.default_rng(2)
    args = _case(rng, np.float64, cplx, S=5)
    idx = np.asarray(idx, np.int64)
    y0, s0 = ref.state_update_fwd(*args, idx)
    y, s = host.state_update_fwd(*args, idx)
    _close(y, y0, np.float64)
    _close(s, s0, np.float64)
    assert s is not args[0]


def test_kernel_plain_layout_rows_not_multiple_of_block_and_nonfinite(host):
    rng = np.random.default_rng(3)
    args = _case(rng, np.float32, False, b=2, H=1, P=37, N=16, GB=1, GC=1)  # 74 rows: a partial block
    args[2][1, 0, 5] = np.nan
    args[1][0, 0, 3] = np.inf
    y0, s0 = ref.state_update_fwd(*args, None)
    y, s = host.state_update_fwd(*args, None)
    assert np.array_equal(np.isnan(y), np.isnan(y0)) and np.array_equal(np.isnan(s), np.isnan(s0))
    fin = np.isfinite(y0)
    _close(y[fin], y0[fin], np.float32)


def test_kernel_writes_out_state(host):
    rng = np.random.default_rng(4)
    args = _case(rng, np.float64, False)
    buf = np.empty_like(args[0])
    y, s = host.state_update_fwd(*args, None, out_state=buf)
    assert s is buf
    _close(s, ref.state_update_fwd(*args, None)[1], np.float64)
