"""CPU tests of the CuPy SSD: its planner, and ``ssd.cu`` run on the host.

No GPU is needed. :func:`plan_ssd` is plain Python. The kernels are compiled as
host C++ against the CUDA emulation of ``tests/cuda_emulation.py`` (one OS thread
per CUDA thread, so sizes stay small and the per-chunk kernels run with a
64-thread block, ``SSM_SSD_THREADS=64``, the launcher's constant patched to
match; one case runs the shipped 256) and driven through ``ssd.py``'s own
launchers with NumPy standing in for CuPy, then checked against the NumPy
reference ``ssd_forward`` / ``ssd_backward`` (the kernel contract): L not a
multiple of the chunk, L = 1, L = 0, chunks longer than one 32-step tile, groups,
resets (``seq_idx`` boundaries and a reset at step 0), h0, the final-state
cotangent, D, float32 and float64. dt bias / softplus / limits are applied by
the front door before the kernels, so they are not the kernels' business. GPU
runs are in ``tests/test_gpu_ssd.py``.
"""

from __future__ import annotations

import re
import sys
import types

import cuda_emulation
import numpy as np
import pytest

from ssmcore.backends.cupy import ssd as cssd
from ssmcore.backends.cupy._rawmodule import SOURCES
from ssmcore.reference import ssd as ref

# --------------------------------------------------------------------------- planner and declarations


def test_plan_sizes():
    p = cssd.plan_ssd(4, 4096, 32, 64, 1, 128, 256, np.float32)
    assert (p.chunk, p.nchunk, p.threads) == (256, 16, cssd.THREADS)
    assert p.chunk_blocks == 4 * 32 * 16
    assert p.cumsum_grid == -(-4 * 32 * 16 // cssd.PASS_THREADS)
    assert p.pass_grid == 4 * 32 * 64 * 128 // cssd.PASS_THREADS
    assert p.names["ssd_chunk_out"] == "ssd_chunk_out<float>"
    assert (p.ntile, p.dbc_blocks) == (256 // cssd.TILE, 4 * 1 * 16 * (256 // cssd.TILE))
    assert cssd.plan_ssd(1, 45, 2, 3, 1, 4, 40, np.float32).ntile == 2  # 40 steps: a full and a partial tile
    assert cssd.plan_ssd(1, 5, 2, 3, 1, 4, 64, np.float32).ntile == 1  # one short chunk: one tile
    p = cssd.plan_ssd(2, 0, 3, 4, 1, 5, 8, np.float64)
    assert p.nchunk == 0 and p.chunk_blocks == 0 and p.names["ssd_bwd_chunk"] == "ssd_bwd_chunk<double>"
    assert cssd.plan_ssd(1, 1, 1, 1, 1, 1, 64, np.float32).nchunk == 1
    assert cssd.plan_ssd(1, 65, 2, 1, 1, 1, 64, np.float32).nchunk == 2


def test_plan_rejects():
    with pytest.raises(TypeError, match="float16"):
        cssd.plan_ssd(1, 8, 2, 4, 1, 4, 4, np.float16)
    with pytest.raises(ValueError, match="multiple of groups"):
        cssd.plan_ssd(1, 8, 3, 4, 2, 4, 4, np.float32)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        cssd.plan_ssd(1, 8, 2, 4, 1, 4, 0, np.float32)


def test_constants_match_the_kernel_source_and_declarations():
    src = SOURCES["ssd.cu"]
    code = src.code()

    def macro(name):
        m = re.search(rf"^#define {name} (\d+)$", code, re.MULTILINE)
        assert m, name
        return int(m.group(1))

    assert macro("SSM_SSD_THREADS") == cssd.THREADS and macro("SSM_SSD_TILE") == cssd.TILE
    assert src._module is None
    for k in cssd._KERNELS:
        for t in ("float", "double"):
            assert f"{k}<{t}>" in src.name_expressions
            assert "__global__ void" in code and re.search(rf"\b{k}\(", code), k
    assert '#include "common.cuh"' in code


# --------------------------------------------------------------------------- ssd.cu on the host

_SIGS = {
    "ssd_cumsum": ("cv dt, cv A, cv reset, void* acs, void* first, ll nb, ll L, ll H, ll Q, ll nc",
                   "(const T*)dt, (const T*)A, (const bool*)reset, (T*)acs, (int*)first, nb, L, H, Q, nc"),
    "ssd_chunk_state": ("cv x, cv dt, cv B, cv acs, cv first, void* st, ll nb, ll L, ll H, ll P, ll G, ll N, ll Q, "
                        "ll nc",
                        "(const T*)x, (const T*)dt, (const T*)B, (const T*)acs, (const int*)first, (T*)st, nb, L, H, "
                        "P, G, N, Q, nc"),
    "ssd_state_pass": ("cv h0, cv acs, cv first, void* st, ll nb, ll L, ll H, ll P, ll N, ll Q, ll nc",
                       "(const T*)h0, (const T*)acs, (const int*)first, (T*)st, nb, L, H, P, N, Q, nc"),
    "ssd_chunk_out": ("cv x, cv dt, cv B, cv C, cv D, cv acs, cv first, cv st, void* y, ll nb, ll L, ll H, ll P, "
                      "ll G, ll N, ll Q, ll nc",
                      "(const T*)x, (const T*)dt, (const T*)B, (const T*)C, (const T*)D, (const T*)acs, "
                      "(const int*)first, (const T*)st, (T*)y, nb, L, H, P, G, N, Q, nc"),
    "ssd_bwd_dstate_local": ("cv C, cv gy, cv acs, cv first, void* ds, ll nb, ll L, ll H, ll P, ll G, ll N, ll Q, "
                             "ll nc",
                             "(const T*)C, (const T*)gy, (const T*)acs, (const int*)first, (T*)ds, nb, L, H, P, G, "
                             "N, Q, nc"),
    "ssd_bwd_state_pass": ("cv gf, cv acs, cv first, void* ds, void* dh0, ll nb, ll L, ll H, ll P, ll N, ll Q, "
                           "ll nc",
                           "(const T*)gf, (const T*)acs, (const int*)first, (T*)ds, (T*)dh0, nb, L, H, P, N, Q, nc"),
    "ssd_bwd_chunk": ("cv x, cv dt, cv A, cv B, cv C, cv D, cv reset, cv acs, cv first, cv st, cv ds, cv gy, "
                      "void* gacs, void* gx, void* gdt, void* gA, void* gD, ll nb, ll L, ll H, "
                      "ll P, ll G, ll N, ll Q, ll nc",
                      "(const T*)x, (const T*)dt, (const T*)A, (const T*)B, (const T*)C, (const T*)D, "
                      "(const bool*)reset, (const T*)acs, (const int*)first, (const T*)st, (const T*)ds, "
                      "(const T*)gy, (T*)gacs, (T*)gx, (T*)gdt, (T*)gA, (T*)gD, nb, L, H, P, G, N, Q, nc"),
    "ssd_bwd_dbc": ("cv x, cv dt, cv B, cv C, cv acs, cv first, cv st, cv ds, cv gy, void* gB, void* gC, ll nb, "
                    "ll L, ll H, ll P, ll G, ll N, ll Q, ll nc, ll ntile",
                    "(const T*)x, (const T*)dt, (const T*)B, (const T*)C, (const T*)acs, (const int*)first, "
                    "(const T*)st, (const T*)ds, (const T*)gy, (T*)gB, (T*)gC, nb, L, H, P, G, N, Q, nc, ntile"),
}
_TAGS = {"float": "f32", "double": "f64"}


def _bindings():
    out = []
    for t, tag in _TAGS.items():
        for k, (params, args) in _SIGS.items():
            out.append(f'extern "C" void {k}_{tag}(unsigned g, unsigned b, {params}) {{\n'
                       f"    typedef {t} T;\n    launch(g, b, [=] {{ {k}<T>({args}); }}); }}\n")
    return "".join(out)


SMALL_THREADS = 64


def _build(tmp_path_factory, threads):
    d = tmp_path_factory.mktemp(f"ssd_emu_{threads}")
    return cuda_emulation.build(d, SOURCES["ssd.cu"].path.parent, "ssd.cu", _bindings(), "ssd_emu",
                                defines=(f"SSM_SSD_THREADS={threads}",))


@pytest.fixture(scope="module")
def small_lib(tmp_path_factory):
    return _build(tmp_path_factory, SMALL_THREADS)


@pytest.fixture(scope="module")
def full_lib(tmp_path_factory):
    return _build(tmp_path_factory, cssd.THREADS)


def _route(monkeypatch, lib, threads):
    fake = types.ModuleType("cupy")
    for n in ("empty", "zeros", "ascontiguousarray", "asarray", "int32", "bool_", "ndarray"):
        setattr(fake, n, getattr(np, n))
    monkeypatch.setitem(sys.modules, "cupy", fake)

    def get(name):
        kernel, t = name[:-1].split("<", 1)
        return cuda_emulation.caller(getattr(lib, f"{kernel}_{_TAGS[t]}"), name)

    monkeypatch.setattr(cssd.SSD, "get", get)
    monkeypatch.setattr(cssd, "THREADS", threads)
    return cssd


@pytest.fixture
def host_small(small_lib, monkeypatch):
    return _route(monkeypatch, small_lib, SMALL_THREADS)


@pytest.fixture
def host_full(full_lib, monkeypatch):
    return _route(monkeypatch, full_lib, cssd.THREADS)


def _case(rng, nb, L, H, P, G, N, dtype, D="hp", h0=True, reset=None):
    x = rng.standard_normal((nb, L, H, P)).astype(dtype)
    dt = (np.abs(rng.standard_normal((nb, L, H))) * 0.3 + 0.05).astype(dtype)
    A = (-np.exp(rng.standard_normal(H) * 0.5)).astype(dtype)
    B = rng.standard_normal((nb, L, G, N)).astype(dtype)
    C = rng.standard_normal((nb, L, G, N)).astype(dtype)
    Dv = None if D is None else rng.standard_normal((H, P)).astype(dtype)
    if D == "h":  # the front door broadcasts a (H,) D to (H, P)
        Dv = np.repeat(Dv[:, :1], P, axis=1)
    hh = rng.standard_normal((nb, H, P, N)).astype(dtype) if h0 else None
    return x, dt, A, B, C, Dv, hh, reset


def _reset_from_seq(seq_idx):
    # as ssmcore._ssd: a reset where seq_idx changes from the previous step
    r = np.zeros(seq_idx.shape, dtype=bool)
    r[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return r


def _close(got, want, dtype, what):
    tol = 2e-4 if dtype == np.float32 else 1e-10
    want = np.asarray(want, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=tol, atol=tol * scale, err_msg=what)


def _check(k, case, Q, rng, gfinal=True):
    x, dt, A, B, C, Dv, hh, reset = case
    dtype = x.dtype
    y0, st0 = ref.ssd_forward(x, dt, A, B, C, Dv, hh, reset, Q)
    y, st = k.ssd_forward(x, dt, A, B, C, Dv, hh, reset, Q)
    assert y.dtype == dtype and st.dtype == dtype and st.shape == st0.shape
    _close(y, y0, dtype, "y")
    _close(st, st0, dtype, "states")
    gy = rng.standard_normal(y0.shape).astype(dtype)
    gf = rng.standard_normal(st0[:, :, -1].shape).astype(dtype) if gfinal else None
    want = ref.ssd_backward(x, dt, A, B, C, Dv, reset, st0, gy, gf, Q)
    got = k.ssd_backward(x, dt, A, B, C, Dv, reset, st, gy, gf, Q)
    for name, g, w in zip(("gx", "gdt", "gA", "gB", "gC", "gD", "gh0"), got, want):
        assert g.shape == w.shape and g.dtype == dtype, name
        _close(g, w, dtype, name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_emulated_groups_odd_L_h0_D(host_small, dtype):
    rng = np.random.default_rng(0)
    # L = 45 over chunks of 40 (> one 32-step tile): a full and a partial chunk
    _check(host_small, _case(rng, 2, 45, 4, 3, 2, 5, dtype), 40, rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_emulated_seq_idx_resets(host_small, dtype):
    rng = np.random.default_rng(1)
    seq = np.array([[0] * 5 + [1] * 17 + [2] * 1 + [3] * 15, [0] * 38])
    reset = _reset_from_seq(seq)
    reset[1, 0] = True  # a reset at the very first step drops h0
    _check(host_small, _case(rng, 2, 38, 2, 3, 1, 4, dtype, reset=reset), 8, rng)
    # reset exactly at a chunk start and at a chunk end
    reset = np.zeros((1, 24), dtype=bool)
    reset[0, [8, 15]] = True
    _check(host_small, _case(rng, 1, 24, 2, 2, 2, 3, dtype, reset=reset), 8, rng)


@pytest.mark.parametrize("L", [0, 1, 7])
def test_emulated_short_no_options(host_small, L):
    rng = np.random.default_rng(2)
    _check(host_small, _case(rng, 1, L, 2, 2, 1, 3, np.float64, D=None, h0=False), 4, rng, gfinal=False)


def test_emulated_D_per_head_and_chunk_one(host_small):
    rng = np.random.default_rng(3)
    _check(host_small, _case(rng, 1, 9, 3, 2, 3, 2, np.float64, D="h"), 1, rng)


def test_emulated_shipped_block_size(host_full):
    rng = np.random.default_rng(4)
    reset = np.zeros((1, 70), dtype=bool)
    reset[0, 33] = True
    _check(host_full, _case(rng, 1, 70, 2, 4, 1, 3, np.float32, reset=reset), 64, rng)


def test_emulated_nan_propagates(host_small):
    rng = np.random.default_rng(5)
    case = list(_case(rng, 1, 12, 1, 2, 1, 2, np.float64))
    case[0][0, 5, 0, 1] = np.nan
    x, dt, A, B, C, Dv, hh, reset = case
    y0, _ = ref.ssd_forward(*case, 4)
    y, _ = host_small.ssd_forward(*case, 4)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y0))


def test_launchers_never_allocate_a_per_step_state(host_small, monkeypatch):
    """No (batch, L, H, P, N)-sized array in either pass.

    No per-head (batch, L, H, N) copy of gB / gC either: the largest allocations are x-sized and
    the chunk-entry states (or their cotangents), O(batch H P N L / chunk).
    """
    rng = np.random.default_rng(6)
    nb_, L, H, P, G, N, Q = 1, 64, 4, 2, 1, 5, 16
    sizes = []
    fake = sys.modules["cupy"]
    for name in ("empty", "zeros"):
        real = getattr(np, name)

        def record(shape, dtype=float, _real=real):
            out = _real(shape, dtype=dtype)
            sizes.append(out.size)
            return out

        monkeypatch.setattr(fake, name, record)
    case = _case(rng, nb_, L, H, P, G, N, np.float64)
    _, st = host_small.ssd_forward(*case, Q)
    gy = rng.standard_normal((nb_, L, H, P))
    x, dt, A, B, C, Dv, _, reset = case
    host_small.ssd_backward(x, dt, A, B, C, Dv, reset, st, gy, None, Q)
    bound = max(nb_ * L * H * P, nb_ * H * (L // Q + 1) * P * N)
    assert nb_ * L * H * N > bound  # a per-head gB / gC would show
    assert sizes and max(sizes) <= bound < nb_ * L * H * P * N


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_emulated_exp_underflow(host_small, dtype):
    """Large dt: per-step decays exp(dt A) underflow to 0 within and across chunks."""
    rng = np.random.default_rng(7)
    case = list(_case(rng, 1, 40, 2, 3, 1, 4, dtype))
    case[1] = (case[1] * 100.0).astype(dtype)  # |dt A| up to ~100: exp underflows in float32
    _check(host_small, tuple(case), 16, rng)


def test_emulated_dstate_over_several_n_slices(host_small):
    """N = 70 > 2 x 32: C . B runs over three shared-memory slices of N (the last one partial)."""
    rng = np.random.default_rng(8)
    reset = np.zeros((1, 37), dtype=bool)
    reset[0, 20] = True
    _check(host_small, _case(rng, 1, 37, 2, 3, 1, 70, np.float32, reset=reset), 36, rng)
