"""ssmcore.dask: lazy ops equal the in-memory calls for any chunking (time included)."""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
from hypothesis import given, strategies as st  # noqa: E402

import ssmcore  # noqa: E402
import ssmcore.dask as sd  # noqa: E402


def rel(got, ref):
    got = np.asarray(got)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-300)) if np.size(ref) else 0.0


def chunked(x, *chunks):
    return da.from_array(x, chunks=chunks)


TIME_CHUNKS = [None, 1, (5, 10, 1, 21), (20, 17)]  # None: one chunk


def tc(L, c):
    return L if c is None else c


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("tchunks", TIME_CHUNKS)
def test_linear_scan_time_chunks(rng, reverse, tchunks):
    a = rng.uniform(0.5, 1.0, (3, 4, 37))
    b = rng.standard_normal((3, 4, 37))
    h0 = rng.standard_normal((3, 4))
    ref, rf = ssmcore.linear_scan(a, b, h0, reverse=reverse, return_final_state=True)
    h, hf = sd.linear_scan(chunked(a, 2, 3, tc(37, tchunks)), chunked(b, 2, 3, tc(37, tchunks)), h0,
                           reverse=reverse, return_final_state=True)
    assert isinstance(h, da.Array) and isinstance(hf, da.Array)
    assert h.chunks == chunked(b, 2, 3, tc(37, tchunks)).chunks  # no rechunking of the output
    assert h.dtype == ref.dtype and hf.shape == rf.shape
    assert rel(h.compute(), ref) < 1e-12 and rel(hf.compute(), rf) < 1e-12


def test_linear_scan_broadcast_constant_complex_float32(rng):
    a = (rng.uniform(0.5, 1.0, (4, 1)) * np.exp(1j * rng.standard_normal((4, 1)))).astype(np.complex64)
    b = rng.standard_normal((2, 4, 30)).astype(np.float32)
    ref = ssmcore.linear_scan(a, b, 1.0)
    got = sd.linear_scan(a, chunked(b, 1, 2, 7), 1.0)
    assert got.dtype == ref.dtype == np.complex64
    assert rel(got.compute(), ref) < 1e-5


def test_linear_scan_is_lazy_and_threads(rng):
    a = rng.uniform(0.5, 1.0, (4, 64))
    b = rng.standard_normal((4, 64))
    calls = []
    orig = ssmcore.linear_scan

    def spy(*args, **kw):
        calls.append(1)
        return orig(*args, **kw)

    ssmcore.linear_scan = spy
    try:
        h = sd.linear_scan(chunked(a, 2, 16), chunked(b, 2, 16))
        n_graph = len(calls)
        with dask.config.set(scheduler="threads"):
            got = h.compute()
    finally:
        ssmcore.linear_scan = orig
    assert n_graph == 1  # only the dtype probe runs while building the graph
    assert len(calls) > n_graph
    assert rel(got, ssmcore.linear_scan(a, b)) < 1e-12


@given(L=st.integers(1, 40), data=st.data(), reverse=st.booleans(), const=st.booleans())
def test_linear_scan_any_chunking(L, data, reverse, const):
    rng = np.random.default_rng(L)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(L - 1, 1)), max_size=6))) if L > 1 else []
    chunks = tuple(np.diff([0, *cuts, L]).tolist())
    a = rng.uniform(-1.0, 1.0, (3, 1 if const else L))
    b = rng.standard_normal((3, L))
    h0 = rng.standard_normal(3)
    ref, rf = ssmcore.linear_scan(a, b, h0, reverse=reverse, return_final_state=True)
    h, hf = sd.linear_scan(a, chunked(b, 2, chunks), h0, reverse=reverse, return_final_state=True)
    assert rel(h.compute(), ref) < 1e-12 and rel(hf.compute(), rf) < 1e-12


@pytest.mark.parametrize("mode", ["recurrent", "scan", "convolution"])
@pytest.mark.parametrize("tchunks", TIME_CHUNKS)
def test_lti_simulate_diag_time_chunks(rng, mode, tchunks):
    H, N, L = 3, 4, 37
    A = rng.uniform(0.5, 0.95, (H, N)) * np.exp(1j * rng.uniform(0, 1, (H, N)))
    B = rng.standard_normal((H, N)) + 0j
    C = rng.standard_normal((H, N)) + 1j
    D = rng.standard_normal(H)
    u = rng.standard_normal((2, H, L))
    x0 = rng.standard_normal((2, H, N)) + 0j
    ref, rf = ssmcore.lti_simulate_diag(A, B, C, D, u, x0, conj_sym=True, mode=mode, return_final_state=True)
    y, xf = sd.lti_simulate_diag(A, B, C, D, chunked(u, 1, 2, tc(L, tchunks)), x0, conj_sym=True, mode=mode,
                                 return_final_state=True)
    assert y.dtype == ref.dtype and y.chunks == chunked(u, 1, 2, tc(L, tchunks)).chunks
    assert rel(y.compute(), ref) < 1e-12 and rel(xf.compute(), rf) < 1e-12


@pytest.mark.parametrize("tchunks", TIME_CHUNKS)
def test_lti_simulate_dense_time_chunks(rng, tchunks):
    N, M, P, L = 3, 2, 2, 37
    A = rng.standard_normal((2, N, N)) * 0.3
    B = rng.standard_normal((N, M))
    C = rng.standard_normal((P, N))
    D = rng.standard_normal((P, M))
    u = rng.standard_normal((2, M, L))
    x0 = rng.standard_normal((2, N))
    ref, rf = ssmcore.lti_simulate(A, B, C, D, u, x0, return_final_state=True)
    y, xf = sd.lti_simulate(A, B, C, D, chunked(u, 1, M, tc(L, tchunks)), x0, return_final_state=True)
    assert rel(y.compute(), ref) < 1e-12 and rel(xf.compute(), rf) < 1e-12


@pytest.mark.parametrize("tchunks", TIME_CHUNKS)
def test_dlsim_time_chunks(rng, tchunks):
    n, m, p, L = 3, 2, 2, 37
    A = rng.standard_normal((n, n)) * 0.3
    B = rng.standard_normal((n, m))
    C = rng.standard_normal((p, n))
    D = rng.standard_normal((p, m))
    u = rng.standard_normal((L, m))
    x0 = rng.standard_normal(n)
    ref = ssmcore.dlsim((A, B, C, D, 0.1), u, x0=x0)
    got = sd.dlsim((A, B, C, D, 0.1), chunked(u, tc(L, tchunks), m), x0=x0)
    assert len(got) == 3
    for g, r in zip(got, ref):
        assert rel(g.compute(), r) < 1e-12
    tf = sd.dlsim(([1.0], [1.0, -0.5], 1.0), chunked(u[:, 0], 5))
    assert len(tf) == 2 and rel(tf[1].compute(), ssmcore.dlsim(([1.0], [1.0, -0.5], 1.0), u[:, 0])[1]) < 1e-12
    with pytest.raises(ValueError, match="t=None"):
        sd.dlsim((A, B, C, D, 0.1), chunked(u, 5, m), t=np.arange(L))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("complex_A", [False, True])
@pytest.mark.parametrize("tchunks", TIME_CHUNKS)
def test_selective_scan_time_chunks(rng, reverse, complex_A, tchunks):
    b, d, n, L = 2, 4, 3, 37
    u = rng.standard_normal((b, d, L))
    delta = rng.standard_normal((b, d, L)) * 0.5
    A = -rng.uniform(0.5, 2, (d, n)) + (1j * rng.standard_normal((d, n)) if complex_A else 0)
    Bv = rng.standard_normal((b, 2, n, L)) + (0j if complex_A else 0)
    Cv = rng.standard_normal((b, n, L))
    Dv, z, bias = rng.standard_normal(d), rng.standard_normal((b, d, L)), rng.standard_normal(d) * 0.1
    h0 = rng.standard_normal((b, d, n)) + (0j if complex_A else 0)
    ref = ssmcore.selective_scan(u, delta, A, Bv, Cv, Dv, z, bias, True, True, h0=h0, reverse=reverse)
    t = tc(L, tchunks)
    got = sd.selective_scan(chunked(u, 1, 2, t), chunked(delta, 1, 2, t), A, Bv, chunked(Cv, 1, n, t), Dv,
                            chunked(z, 1, 2, t), bias, True, True, h0=h0, reverse=reverse)
    assert rel(got[0].compute(), ref[0]) < 1e-12 and rel(got[1].compute(), ref[1]) < 1e-12


def test_selective_scan_group_chunks_must_align(rng):
    u = rng.standard_normal((1, 4, 8))
    Bv = rng.standard_normal((1, 2, 3, 8))
    with pytest.raises(ValueError, match="multiples of D / G"):
        sd.selective_scan(chunked(u, 1, 1, 8), u, -np.ones((4, 3)), Bv, Bv)


SEQS = [np.repeat([0, 1, 2], [12, 13, 12]), np.full(37, 3), np.repeat([0, 5, 0, 2], [5, 1, 26, 5])]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("tchunks", TIME_CHUNKS + [(12, 13, 12)])
def test_selective_scan_seq_idx_over_time_chunks(rng, reverse, tchunks):
    b, d, n, L = 3, 4, 3, 37
    u = rng.standard_normal((b, d, L))
    delta = rng.standard_normal((b, d, L)) * 0.5
    A = -rng.uniform(0.5, 2, (d, n))
    Bv = rng.standard_normal((b, n, L))
    Cv = rng.standard_normal((b, n, L))
    h0 = rng.standard_normal((b, d, n))
    seq = np.stack(SEQS)
    ref = ssmcore.selective_scan(u, delta, A, Bv, Cv, None, None, None, True, True, h0=h0, reverse=reverse,
                                 seq_idx=seq)
    got = sd.selective_scan(chunked(u, 1, 2, tc(L, tchunks)), delta, A, Bv, Cv, None, None, None, True, True,
                            h0=h0, reverse=reverse, seq_idx=seq)
    assert rel(got[0].compute(), ref[0]) < 1e-12 and rel(got[1].compute(), ref[1]) < 1e-12


@pytest.mark.parametrize("tchunks", TIME_CHUNKS + [(12, 13, 12)])
def test_ssd_seq_idx_over_time_chunks(rng, tchunks):
    bb, L, H, P, G, N = 3, 37, 4, 3, 2, 5
    x = rng.standard_normal((bb, L, H, P))
    dt = rng.standard_normal((bb, L, H))
    A = -rng.uniform(0.5, 2, H)
    B = rng.standard_normal((bb, L, G, N))
    C = rng.standard_normal((bb, L, G, N))
    h0 = rng.standard_normal((bb, H, P, N))
    kw = dict(chunk_size=4, initial_states=h0, seq_idx=np.stack(SEQS), return_final_states=True, dt_softplus=True)
    ref = ssmcore.ssd(x, dt, A, B, C, **kw)
    got = sd.ssd(chunked(x, 1, tc(L, tchunks), H, P), dt, A, B, C, **kw)
    assert rel(got[0].compute(), ref[0]) < 1e-12 and rel(got[1].compute(), ref[1]) < 1e-12


@pytest.mark.parametrize("tchunks", TIME_CHUNKS)
def test_ssd_time_chunks(rng, tchunks):
    bb, L, H, P, G, N = 2, 37, 4, 3, 2, 5
    x = rng.standard_normal((bb, L, H, P))
    dt = rng.standard_normal((bb, L, H))
    A = -rng.uniform(0.5, 2, H)
    B = rng.standard_normal((bb, L, G, N))
    C = rng.standard_normal((bb, L, G, N))
    D = rng.standard_normal(H)
    z = rng.standard_normal((bb, L, H, P))
    bias = rng.standard_normal(H)
    h0 = rng.standard_normal((bb, H, P, N))
    kw = dict(chunk_size=8, D=D, z=z, dt_bias=bias, dt_softplus=True, dt_limit=(0.0, 2.0), initial_states=h0,
              return_final_states=True)
    ref = ssmcore.ssd(x, dt, A, B, C, **kw)
    got = sd.ssd(chunked(x, 1, tc(L, tchunks), H, P), dt, A, B, C, **kw)
    assert rel(got[0].compute(), ref[0]) < 1e-12 and rel(got[1].compute(), ref[1]) < 1e-12


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("tchunks", [None, (3, 20, 1, 26), 7])
def test_fft_conv_time_chunks(rng, bidirectional, tchunks):
    u = rng.standard_normal((2, 3, 50))
    D = rng.standard_normal(3)
    K = rng.standard_normal((2, 3, 12)) if bidirectional else rng.standard_normal((3, 12))
    ref = ssmcore.fft_conv(u, K, D, bidirectional=bidirectional)
    got = sd.fft_conv(chunked(u, 1, 2, tc(50, tchunks)), K, D, bidirectional=bidirectional)
    assert got.shape == ref.shape and rel(got.compute(), ref) < 1e-12


def test_fft_conv_kernel_longer_than_chunks_and_c_out(rng):
    u = rng.standard_normal((2, 3, 40))
    K3 = rng.standard_normal((2, 3, 30))
    assert rel(sd.fft_conv(chunked(u, 1, 2, 4), K3).compute(), ssmcore.fft_conv(u, K3)) < 1e-12
    K1 = rng.standard_normal(9)
    assert rel(sd.fft_conv(chunked(u[0, 0], 5), K1, 0.3).compute(), ssmcore.fft_conv(u[0, 0], K1, 0.3)) < 1e-12


def test_discretize_blockwise(rng):
    lam = -rng.uniform(0.1, 1, (4, 5)) + 1j * rng.standard_normal((4, 5))
    B = rng.standard_normal((4, 5))
    dt = rng.uniform(0.01, 0.1, 4)
    for m in ("zoh", "bilinear"):
        ref = ssmcore.discretize_diag(lam, B, dt, m)
        got = sd.discretize_diag(chunked(lam, 2, 3), B, chunked(dt, 2), m)
        assert all(rel(g.compute(), r) == 0 for g, r in zip(got, ref))
    Bm = rng.standard_normal((4, 5, 2))
    got = sd.discretize_diag(chunked(lam, 2, 5), Bm, 0.1)
    assert got[1].shape == (4, 5, 2) and rel(got[1].compute(), ssmcore.discretize_diag(lam, Bm, 0.1)[1]) == 0
    A = rng.standard_normal((6, 3, 3))
    Bd = rng.standard_normal((6, 3, 2))
    dts = rng.uniform(0.01, 0.1, 6)
    got = sd.discretize(chunked(A, 2, 3, 3), Bd, dts)
    ref = ssmcore.discretize(A, Bd, dts)
    assert all(rel(g.compute(), r) < 1e-15 for g, r in zip(got, ref))


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("const_a", [False, True])
@pytest.mark.parametrize("tchunks", TIME_CHUNKS)
def test_vjp_linear_scan(rng, reverse, const_a, tchunks):
    a = rng.uniform(0.5, 1.0, (4, 1) if const_a else (3, 4, 37))
    b = rng.standard_normal((3, 4, 37))
    h0 = rng.standard_normal(4)
    gh = rng.standard_normal((3, 4, 37))
    gf = rng.standard_normal((3, 4))
    _, pb = ssmcore.vjp("linear_scan", a, b, h0, reverse=reverse, return_final_state=True)
    ref = pb((gh, gf))
    out, pbd = sd.vjp("linear_scan", a, chunked(b, 2, 3, tc(37, tchunks)), h0, reverse=reverse,
                      return_final_state=True)
    got = pbd((gh, gf))
    for g, r in zip(got, ref):
        assert isinstance(g, da.Array) and g.shape == r.shape and g.dtype == r.dtype
        assert rel(g.compute(), r) < 1e-12


@pytest.mark.parametrize("tchunks", TIME_CHUNKS)
def test_vjp_lti_simulate_diag(rng, tchunks):
    H, N, L = 3, 4, 37
    A = rng.uniform(0.5, 0.95, (H, N)) * np.exp(1j * rng.uniform(0, 1, (H, N)))
    B = rng.standard_normal((H, N)) + 0j
    C = rng.standard_normal((H, N)) + 1j
    D = rng.standard_normal(H)
    u = rng.standard_normal((2, H, L))
    x0 = rng.standard_normal((2, H, N)) + 0j
    gy = rng.standard_normal((2, H, L))
    gx = rng.standard_normal((2, H, N)) + 1j * rng.standard_normal((2, H, N))
    _, pb = ssmcore.vjp("lti_simulate_diag", A, B, C, D, u, x0, conj_sym=True, return_final_state=True)
    ref = pb((gy, gx))
    _, pbd = sd.vjp("lti_simulate_diag", A, B, C, D, chunked(u, 1, 2, tc(L, tchunks)), x0, conj_sym=True,
                    return_final_state=True)
    got = pbd((gy, gx))
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == r.dtype and rel(g.compute(), r) < 1e-12
    _, pbd = sd.vjp("lti_simulate_diag", A, B, C, None, chunked(u, 1, 2, 5), conj_sym=True)
    assert pbd(gy)[3] is None and pbd(gy)[5] is None


def test_vjp_unsupported_op():
    with pytest.raises(NotImplementedError, match="linear_scan"):
        sd.vjp("ssd", None)


# ------------------------------------------------------------------ threads and a real cluster


def test_numba_threads_rule(monkeypatch):
    import threading

    import numba

    with pytest.raises(ValueError, match="positive"):
        sd.set_numba_threads(0)
    assert sd._threads_for_task() is None  # main thread: synchronous scheduler keeps Numba's default
    seen = []
    with dask.config.set(num_workers=2):
        t = threading.Thread(target=lambda: seen.append(sd._threads_for_task()))
        t.start()
        t.join()
    assert seen == [max(1, numba.config.NUMBA_NUM_THREADS // 2)]
    sd.set_numba_threads(1)
    try:
        assert sd._threads_for_task() == 1
        assert sd._task(lambda x: numba.get_num_threads())(np.ones(1)) == 1
    finally:
        sd.set_numba_threads(None)


def test_warm_up_runs_ssmcore_warmup(monkeypatch):
    calls = []
    monkeypatch.setattr(ssmcore, "warmup", lambda **kw: calls.append(kw) or {"linear_scan": 0.25, "ssd": 0.5})
    assert sd.warm_up(ops=("linear_scan",), backward=False) == {"local": 0.75}
    assert calls == [dict(ops=["linear_scan"], dtypes=["float32", "float64"], backward=False)]
    sd.warm_up(dtypes=None)
    assert calls[-1] == dict(ops=None, dtypes=None, backward=True)


def test_warm_up_locally_compiles():
    warm = sd.warm_up(ops=["discretize_diag"], dtypes=["float64"], backward=False)
    assert list(warm) == ["local"] and warm["local"] >= 0


def test_local_cluster_processes(rng):
    distributed = pytest.importorskip("distributed")
    a = rng.uniform(0.5, 1.0, (4, 60))
    b = rng.standard_normal((4, 60))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        # one small op: a cold cache compiles on both workers at once
        warm = sd.warm_up(client, ops=["discretize_diag"], dtypes=["float64"], backward=False)
        assert len(warm) == 2
        threads = client.gather([client.submit(sd._threads_for_task, pure=False) for _ in range(4)])
        assert set(threads) == {1}  # the nanny's OMP_NUM_THREADS=1: no oversubscription
        h, hf = sd.linear_scan(chunked(a, 2, 7), chunked(b, 2, 7), return_final_state=True)
        got, gotf = client.compute([h, hf], sync=True)
        ref, rf = ssmcore.linear_scan(a, b, return_final_state=True)
        assert rel(got, ref) < 1e-12 and rel(gotf, rf) < 1e-12
        _, pb = sd.vjp("linear_scan", chunked(a, 2, 7), chunked(b, 2, 7))
        ga = client.compute(pb(np.ones((4, 60)))[0], sync=True)
        assert rel(ga, ssmcore.vjp("linear_scan", a, b)[1](np.ones((4, 60)))[0]) < 1e-12


# ------------------------------------------------------------------ CuPy chunks (GPU only)


@pytest.mark.gpu
def test_cupy_chunks_linear_scan_and_diag(rng):
    cp = pytest.importorskip("cupy")
    a = rng.uniform(0.5, 1.0, (4, 64))
    b = rng.standard_normal((4, 64))
    ref = ssmcore.linear_scan(a, b)
    h = sd.linear_scan(da.from_array(cp.asarray(a), chunks=(2, 16)), da.from_array(cp.asarray(b), chunks=(2, 16)))
    out = h.compute()
    assert isinstance(out, cp.ndarray) and rel(cp.asnumpy(out), ref) < 1e-12
    A = rng.uniform(0.5, 0.9, (4, 3))
    u = rng.standard_normal((2, 4, 64))
    y = sd.lti_simulate_diag(cp.asarray(A), cp.asarray(A), cp.asarray(A), None,
                             da.from_array(cp.asarray(u), chunks=(1, 4, 16))).compute()
    assert rel(cp.asnumpy(y), ssmcore.lti_simulate_diag(A, A, A, None, u)) < 1e-12


# ------------------------------------------------------------------ the core's refusal (lead's change)


def test_core_refuses_dask_and_masked():
    x = da.ones((2, 8), chunks=4)
    with pytest.raises(TypeError, match="ssmcore.dask"):
        ssmcore.linear_scan(0.5, x)
    with pytest.raises(TypeError, match="masked"):
        ssmcore.linear_scan(0.5, np.ma.masked_array(np.ones(4), [0, 1, 0, 0]))


# ------------------------------------------------------------------ more chunkings (hypothesis)


def _draw_chunks(data, L):
    cuts = sorted(data.draw(st.sets(st.integers(1, max(L - 1, 1)), max_size=5))) if L > 1 else []
    return tuple(np.diff([0, *cuts, L]).tolist())


@given(L=st.integers(1, 30), data=st.data(), mode=st.sampled_from(["recurrent", "scan", "convolution"]))
def test_lti_simulate_diag_any_chunking(L, data, mode):
    rng = np.random.default_rng(L)
    H, N = 2, 3
    A = rng.uniform(0.3, 0.95, (H, N)) * np.exp(1j * rng.uniform(0, 3, (H, N)))
    B, C = rng.standard_normal((H, N)) + 0j, rng.standard_normal((H, N)) + 1j
    u = rng.standard_normal((3, H, L))
    x0 = rng.standard_normal((3, H, N)) + 0j
    ref, rf = ssmcore.lti_simulate_diag(A, B, C, None, u, x0, conj_sym=True, mode=mode, return_final_state=True)
    bchunks = data.draw(st.sampled_from([3, 1, 2]))
    y, xf = sd.lti_simulate_diag(A, B, C, None, chunked(u, bchunks, 1, _draw_chunks(data, L)), x0, conj_sym=True,
                                 mode=mode, return_final_state=True)
    assert rel(y.compute(), ref) < 1e-12 and rel(xf.compute(), rf) < 1e-12


@given(L=st.integers(1, 40), Lk=st.integers(1, 12), data=st.data(), bidirectional=st.booleans())
def test_fft_conv_any_chunking(L, Lk, data, bidirectional):
    Lk = min(Lk, L)
    rng = np.random.default_rng(L * 100 + Lk)
    u = rng.standard_normal((2, L))
    K = rng.standard_normal((2 if bidirectional else 1, 2, Lk)).reshape(-1, Lk)
    K = K.reshape(2, 2, Lk) if bidirectional else K[:2]
    ref = ssmcore.fft_conv(u, K, 0.5, bidirectional=bidirectional)
    got = sd.fft_conv(chunked(u, 1, _draw_chunks(data, L)), K, 0.5, bidirectional=bidirectional)
    assert float(np.abs(got.compute() - ref).max()) < 1e-12 * max(1.0, float(np.abs(ref).max()))


def test_validation_errors_name_the_argument():
    with pytest.raises(ValueError, match="do not broadcast"):
        sd.linear_scan(np.ones((3, 4)), da.ones((2, 4)))
    with pytest.raises(ValueError, match="u has shape"):
        sd.lti_simulate_diag(np.ones((3, 4)), np.ones((3, 4)), np.ones((3, 4)), None, da.ones((2, 5, 8)))
    with pytest.raises(ValueError, match="u has shape"):
        sd.lti_simulate(np.eye(3), np.ones((3, 2)), np.ones((1, 3)), None, da.ones((4, 3, 8)))


@pytest.mark.parametrize("L", [0, 1])
def test_empty_and_single_step(L):
    b = np.ones((2, L))
    h, hf = sd.linear_scan(0.5, da.from_array(b), np.ones(2), return_final_state=True)
    r, rf = ssmcore.linear_scan(0.5, b, np.ones(2), return_final_state=True)
    assert h.compute().shape == (2, L) and np.array_equal(hf.compute(), rf)
    A = np.full((2, 3), 0.5)
    y, xf = sd.lti_simulate_diag(A, A, A, None, da.from_array(np.ones((2, L))), A, return_final_state=True)
    ry, rxf = ssmcore.lti_simulate_diag(A, A, A, None, np.ones((2, L)), A, return_final_state=True)
    assert y.compute().shape == (2, L) and np.array_equal(xf.compute(), rxf)
