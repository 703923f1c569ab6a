"""CPU tests of the CuPy selective scan: its planner, and ``selective_scan.cu`` run on the host.

No GPU is needed. :func:`plan_selective_scan` is plain Python. The kernels
themselves are compiled as host C++ against the CUDA emulation of
``tests/cuda_emulation.py`` and driven through ``selective_scan.py``'s own
launchers (NumPy standing in for CuPy), then checked against the NumPy reference
for every option: D, z, delta_bias, softplus, fixed / variable / grouped B and C,
complex A, h0, the final state and its cotangent, reverse, seq_idx restarts,
float32 and float64, L = 0, 1, odd, and L spanning several chunks. To get many
chunks from short series the emulation is compiled with a smaller block
(``SSM_SS_THREADS=64``, ``SSM_SS_ITEMS=2``: chunks of 128 steps over two warps),
the launcher's constants patched to match; one case runs the shipped
configuration. GPU runs are in ``tests/test_gpu_selective_scan.py``.
"""

from __future__ import annotations

import re
import sys
import types

import cuda_emulation
import numpy as np
import pytest

from ssmcore.backends.cupy import selective_scan as css
from ssmcore.backends.cupy._rawmodule import SOURCES
from ssmcore.reference import selective_scan as ref

# --------------------------------------------------------------------------- planner and declarations


def test_plan_one_block_per_batch_and_channel():
    p = css.plan_selective_scan(4, 1536, 2048, 16, np.float32, np.float32, softplus=True, has_D=True, has_z=True)
    assert (p.blocks, p.threads, p.chunk, p.nchunk) == (4 * 1536, css.THREADS, css.CHUNK, -(-2048 // css.CHUNK))
    assert p.fwd == "selective_scan_fwd<float, float>" and p.bwd == "selective_scan_bwd<float, float>"
    assert p.flags == css.FLAGS["softplus"] | css.FLAGS["has_D"] | css.FLAGS["has_z"]
    p = css.plan_selective_scan(1, 2, 0, 3, np.float64, np.complex128)
    assert p.nchunk == 0 and p.fwd == "selective_scan_fwd<double, complex<double>>" and p.flags == 0
    assert css.plan_selective_scan(2, 3, 1, 1, np.float32, np.complex64).nchunk == 1


def test_plan_rejects_what_the_kernels_cannot_run():
    with pytest.raises(ValueError, match="N=257 exceeds"):
        css.plan_selective_scan(1, 1, 8, 257, np.float32, np.float32)
    with pytest.raises(TypeError, match="no CUDA instantiation for real dtype float32 with state dtype complex128"):
        css.plan_selective_scan(1, 1, 8, 4, np.float32, np.complex128)
    with pytest.raises(TypeError, match="float16"):
        css.plan_selective_scan(1, 1, 8, 4, np.float16, np.float16)
    with pytest.raises(ValueError, match="unknown option flags"):
        css.plan_selective_scan(1, 1, 8, 4, np.float32, np.float32, gate=True)
    with pytest.raises(ValueError, match="N >= 1"):
        css.plan_selective_scan(1, 1, 8, 0, np.float32, np.float32)


def test_constants_match_the_kernel_source():
    code = SOURCES["selective_scan.cu"].code()

    def macro(name):
        m = re.search(rf"^#define {name} (\d+)$", code, re.MULTILINE)
        assert m, name
        return int(m.group(1))

    assert macro("SSM_SS_THREADS") == css.THREADS and macro("SSM_SS_ITEMS") == css.ITEMS
    assert macro("SSM_SS_MAX_N") == css.MAX_N and css.THREADS % 32 == 0
    for name, bit in css.FLAGS.items():
        cname = {"b_var": "BVAR", "c_var": "CVAR"}.get(name, name.upper())
        assert macro(f"SSM_SS_{cname}") == bit, name


def test_source_declared_for_every_dtype_pair_without_compiling():
    src = SOURCES["selective_scan.cu"]
    assert src._module is None
    for k in ("selective_scan_fwd", "selective_scan_bwd"):
        for r, s in (("float", "float"), ("float", "complex<float>"), ("double", "double"),
                     ("double", "complex<double>")):
            assert f"{k}<{r}, {s}>" in src.name_expressions
    assert '#include "common.cuh"' in src.code()


# --------------------------------------------------------------------------- selective_scan.cu on the host

_TAGS = {"float, float": "f32", "float, complex<float>": "c64", "double, double": "f64",
         "double, complex<double>": "c128"}

_BINDINGS = r"""
#define SS_INST(R, S, tag) \
extern "C" void selective_scan_fwd_##tag(unsigned g, unsigned b, cv u, cv delta, cv A, cv B, cv C, cv Dv, cv z, \
        cv bias, cv h0, cv seq, void* out, void* last, void* ckpt, ll nd, ll L, ll N, ll GB, ll GC, ll rb, ll rc, \
        ll nck, int flags) { \
    launch(g, b, [=] { selective_scan_fwd<R, S>((const R*)u, (const R*)delta, (const S*)A, (const S*)B, \
        (const S*)C, (const R*)Dv, (const R*)z, (const R*)bias, (const S*)h0, (const ll*)seq, (R*)out, (S*)last, \
        (S*)ckpt, nd, L, N, GB, GC, rb, rc, nck, flags); }); } \
extern "C" void selective_scan_bwd_##tag(unsigned g, unsigned b, cv u, cv delta, cv A, cv B, cv C, cv Dv, cv z, \
        cv bias, cv seq, cv ckpt, cv dout, cv dlast, void* du, void* ddelta, void* dz, void* dB, void* dC, \
        void* dAp, void* dBp, void* dCp, void* dDp, void* dh0, ll nd, ll L, ll N, ll GB, ll GC, ll rb, ll rc, \
        ll nck, int flags) { \
    launch(g, b, [=] { selective_scan_bwd<R, S>((const R*)u, (const R*)delta, (const S*)A, (const S*)B, \
        (const S*)C, (const R*)Dv, (const R*)z, (const R*)bias, (const ll*)seq, (const S*)ckpt, (const R*)dout, \
        (const S*)dlast, (R*)du, (R*)ddelta, (R*)dz, (S*)dB, (S*)dC, (S*)dAp, (S*)dBp, (S*)dCp, (R*)dDp, (S*)dh0, \
        nd, L, N, GB, GC, rb, rc, nck, flags); }); }
SS_INST(float, float, f32)
SS_INST(float, complex<float>, c64)
SS_INST(double, double, f64)
SS_INST(double, complex<double>, c128)
"""

SMALL = (64, 2)  # (threads, items) of the emulated build: 128-step chunks, two warps


def _build(tmp_path_factory, threads, items):
    d = tmp_path_factory.mktemp(f"ss_emu_{threads}_{items}")
    return cuda_emulation.build(d, SOURCES["selective_scan.cu"].path.parent, "selective_scan.cu", _BINDINGS,
                                "ss_emu", defines=(f"SSM_SS_THREADS={threads}", f"SSM_SS_ITEMS={items}"))


@pytest.fixture(scope="module")
def small_lib(tmp_path_factory):
    return _build(tmp_path_factory, *SMALL)


@pytest.fixture(scope="module")
def full_lib(tmp_path_factory):
    return _build(tmp_path_factory, css.THREADS, css.ITEMS)


def _route(monkeypatch, lib, threads, items):
    fake = types.ModuleType("cupy")
    for n in ("empty", "zeros", "ascontiguousarray", "asarray", "transpose", "int64", "ndarray"):
        setattr(fake, n, getattr(np, n))
    monkeypatch.setitem(sys.modules, "cupy", fake)

    def get(name):
        kernel, pair = name[:-1].split("<", 1)
        return cuda_emulation.caller(getattr(lib, f"{kernel}_{_TAGS[pair]}"), name)

    monkeypatch.setattr(css.SELECTIVE_SCAN, "get", get)
    monkeypatch.setattr(css, "THREADS", threads)
    monkeypatch.setattr(css, "ITEMS", items)
    monkeypatch.setattr(css, "CHUNK", threads * items)
    monkeypatch.setattr(css, "WARPS", threads // 32)
    return css


@pytest.fixture
def host_small(small_lib, monkeypatch):
    return _route(monkeypatch, small_lib, *SMALL)


@pytest.fixture
def host_full(full_lib, monkeypatch):
    return _route(monkeypatch, full_lib, css.THREADS, css.ITEMS)


def _case(rng, nb, nd, L, N, rdt, cplx, b_groups, c_groups, D=True, z=True, bias=True, h0=True, seq=False,
          softplus=True, reverse=False, huge=False):
    """Canonical kernel arguments (as the front door makes them).

    ``*_groups``: None for a fixed B / C, else the group count G.
    """
    sdt = (np.complex64 if rdt == np.float32 else np.complex128) if cplx else rdt

    def st(shape, scale=1.0):
        x = rng.standard_normal(shape) * scale
        if cplx:
            x = x + 1j * rng.standard_normal(shape) * scale
        return x.astype(sdt)

    u = rng.standard_normal((nb, nd, L)).astype(rdt)
    delta = (rng.standard_normal((nb, nd, L)) * (30.0 if huge else 0.5)).astype(rdt)
    A = -np.exp(rng.standard_normal((nd, N)) * 0.5)
    if cplx:
        A = A + 1j * rng.standard_normal((nd, N))
    A = A.astype(sdt)

    def bc(G):
        if G is None:
            return st((1, nd, 1, N)), False, 1
        return st((nb, G, L, N)), True, nd // G

    B, b_var, rb = bc(b_groups)
    C, c_var, rc = bc(c_groups)
    Dv = rng.standard_normal(nd).astype(rdt) if D else None
    zz = rng.standard_normal((nb, nd, L)).astype(rdt) if z else None
    bb = (rng.standard_normal(nd) * 0.3).astype(rdt) if bias else None
    hh = st((nb, nd, N)) if h0 else None
    sq = np.sort(rng.integers(0, 3, (nb, L)), axis=1) if seq else None
    return (u, delta, A, B, C, Dv, zz, bb, hh, sq, b_var, c_var, rb, rc, softplus, reverse)


def _close(got, want, rdt, what):
    tol = 3e-4 if rdt == np.float32 else 1e-10
    want = np.asarray(want)
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(np.asarray(got), want, rtol=tol, atol=tol * scale, err_msg=what)


def _check(k, args, rng, rdt, with_dlast=True):
    out0, last0, _ = ref.selective_scan_fwd(*args, True)
    out, last, ckpt = k.selective_scan_fwd(*args, True)
    assert out.dtype == rdt and last.dtype == args[2].dtype
    _close(out, out0, rdt, "out")
    _close(last, last0, rdt, "last")
    nb, nd, L = args[0].shape
    assert ckpt[0] == k.CHUNK and ckpt[1].shape == (nb, nd, -(-L // k.CHUNK), args[2].shape[1])
    dout = rng.standard_normal((nb, nd, L)).astype(rdt)
    dlast = None
    if with_dlast:
        dlast = (rng.standard_normal(last.shape) + (1j * rng.standard_normal(last.shape) if last.dtype.kind == "c"
                                                    else 0)).astype(last.dtype)
    want = ref.selective_scan_bwd(*args, None, dout, dlast)
    for c in (ckpt, None):  # with the forward's checkpoints, and recomputing them
        got = k.selective_scan_bwd(*args, c, dout, dlast)
        names = ("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias", "dh0")
        for name, g, w in zip(names, got, want):
            if w is None:
                assert g is None, name
                continue
            assert g.shape == w.shape, (name, g.shape, w.shape)
            _close(g, w, rdt, name)


# (nb, nd, L, N, b_groups, c_groups): fixed B/C (None), one group, grouped
SHAPES = [
    (2, 3, 300, 3, None, None),  # 3 chunks of 128, partial last
    (2, 4, 257, 2, 1, 2),  # variable B (1 group), grouped C (2 groups of 2 channels)
    (1, 2, 1, 3, 2, None),  # L = 1
    (2, 2, 128, 2, 2, 1),  # exactly one full chunk
]


@pytest.mark.slow
@pytest.mark.parametrize("rdt", [np.float32, np.float64])
@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_host_all_options(host_small, rng, rdt, cplx, shape):
    nb, nd, L, N, gb, gc = shape
    args = _case(rng, nb, nd, L, N, rdt, cplx, gb, gc)
    _check(host_small, args, rng, rdt)


OPTION_CASES = [
    dict(D=False, z=False, bias=False, h0=False, softplus=False),
    dict(seq=True),
    dict(reverse=True),
    dict(reverse=True, seq=True, h0=False, D=False),
    dict(z=False, softplus=False, h0=True),
    dict(huge=True),  # softplus above its threshold, exp underflow to 0
]


@pytest.mark.slow
@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("opts", OPTION_CASES, ids=lambda o: "-".join(f"{k}{int(v)}" for k, v in o.items()))
def test_host_option_combinations(host_small, rng, cplx, opts):
    args = _case(rng, 2, 4, 301, 3, np.float64, cplx, 2, None, **opts)
    _check(host_small, args, rng, np.float64, with_dlast=not opts.get("reverse", False))


@pytest.mark.slow
def test_host_shipped_configuration(host_full, rng):
    """The real block size (128 threads x 4 steps), two chunks, variable B and C, complex."""
    args = _case(rng, 1, 2, 700, 2, np.float32, True, 1, 2, seq=True)
    _check(host_full, args, rng, np.float32)


@pytest.mark.slow
def test_host_empty_and_zero_length(host_small, rng):
    args = _case(rng, 2, 3, 0, 2, np.float64, False, 1, None)
    out, last, ckpt = host_small.selective_scan_fwd(*args, True)
    assert out.shape == (2, 3, 0)
    np.testing.assert_array_equal(last, args[8])  # the state stays h0
    dlast = rng.standard_normal(last.shape)
    g = host_small.selective_scan_bwd(*args, ckpt, np.zeros((2, 3, 0)), dlast)
    np.testing.assert_array_equal(g[8], dlast)
    assert not g[2].any() and g[0].shape == (2, 3, 0)
    args = _case(rng, 0, 3, 5, 2, np.float32, False, None, None)
    out, last, ckpt = host_small.selective_scan_fwd(*args, True)
    assert out.shape == (0, 3, 5) and last.shape == (0, 3, 2)


@pytest.mark.slow
def test_host_nan_propagates_like_the_reference(host_small, rng):
    args = list(_case(rng, 1, 2, 260, 2, np.float64, False, None, None, z=False))
    args[0] = args[0].copy()
    args[0][0, 0, 150] = np.nan  # in the second chunk: the state of channel 0 turns NaN from there
    out0, last0, _ = ref.selective_scan_fwd(*args, True)
    out, last, _ = host_small.selective_scan_fwd(*args, True)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(out0))
    fin = np.isfinite(out0)
    np.testing.assert_allclose(out[fin], out0[fin], rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(np.isnan(last), np.isnan(last0))


@pytest.mark.slow
def test_host_no_allocation_of_batch_d_l_n_size(host_small, rng, monkeypatch):
    """Memory-lean: no launcher allocation is larger than u or B.

    Every array the launchers allocate is at most the size of u or of B (never batch x D x L x
    N), and the checkpoints are O(batch D N L / chunk).
    """
    nb, nd, L, N = 2, 4, 300, 8
    args = _case(rng, nb, nd, L, N, np.float32, False, 1, 2)
    sizes = []
    fake = sys.modules["cupy"]
    for name in ("empty", "zeros"):
        orig = getattr(np, name)

        def alloc(shape, dtype=float, _orig=orig):
            out = _orig(shape, dtype)
            sizes.append(out.size)
            return out

        monkeypatch.setattr(fake, name, alloc)
    _, _, ckpt = host_small.selective_scan_fwd(*args, True)
    host_small.selective_scan_bwd(*args, ckpt, rng.standard_normal((nb, nd, L)).astype(np.float32), None)
    assert sizes and max(sizes) <= max(nb * nd * L, args[3].size, args[4].size) < nb * nd * L * N
    assert ckpt[1].size == nb * nd * N * -(-L // host_small.CHUNK)
