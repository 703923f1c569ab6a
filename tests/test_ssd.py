"""Mamba-2 SSD tests.

Numba chunked kernels vs the sequential specification, vs an independent Mamba-1 (selective-scan)
loop, vs mamba's chunk-masking rules for seq_idx, and the hand-written VJP vs finite differences.
"""

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from vjp_check import check_vjp

import ssmcore
from ssmcore._ssd import ssd
from ssmcore.reference import ssd as ref

# ----------------------------------------------------------------------------- helpers


def make_inputs(rng, nb=2, L=13, H=4, P=3, G=2, N=5, dtype=np.float64):
    x = rng.standard_normal((nb, L, H, P))
    dt = rng.uniform(-1.0, 1.0, (nb, L, H))  # pre-softplus values
    A = -rng.uniform(0.5, 2.0, H)
    B = rng.standard_normal((nb, L, G, N))
    C = rng.standard_normal((nb, L, G, N))
    return tuple(a.astype(dtype) for a in (x, dt, A, B, C))


def full_kwargs(rng, x, B, *, D_shape="H", seq=True, dtype=np.float64):
    nb, L, H, P = x.shape
    N = B.shape[3]
    kw = dict(
        D=rng.standard_normal(H if D_shape == "H" else (H, P)).astype(dtype),
        z=rng.standard_normal(x.shape).astype(dtype),
        dt_bias=rng.uniform(-1.0, 1.0, H).astype(dtype),
        dt_softplus=True,
        dt_limit=(0.2, 1.0),
        initial_states=rng.standard_normal((nb, H, P, N)).astype(dtype),
        return_final_states=True,
    )
    if seq:
        kw["seq_idx"] = np.sort(rng.integers(0, 3, size=(nb, L)), axis=1)
    return kw


def silu(v):
    return v / (1.0 + np.exp(-v))


def selective_scan_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Mamba-1 ``selective_scan_ref`` semantics as a plain float64 loop.

    u, delta (batch, D, L); A (D, N) real; B, C (batch, G, N, L), channel d uses
    group d // (D / G); D (D,); z (batch, D, L). Returns (out, last_state).
    """
    nb, Dm, L = u.shape
    G, N = B.shape[1], B.shape[2]
    out = np.zeros((nb, Dm, L))
    last = np.zeros((nb, Dm, N))
    for b in range(nb):
        for d in range(Dm):
            g = d // (Dm // G)
            state = np.zeros(N)
            for t in range(L):
                dl = delta[b, d, t] + (0.0 if delta_bias is None else delta_bias[d])
                if delta_softplus:
                    dl = dl if dl > 20 else math.log1p(math.exp(dl))
                state = np.exp(dl * A[d]) * state + dl * B[b, g, :, t] * u[b, d, t]
                y = state @ C[b, g, :, t] + (0.0 if D is None else D[d] * u[b, d, t])
                out[b, d, t] = y if z is None else y * silu(z[b, d, t])
            last[b, d] = state
    return out, last


def ssd_via_selective_scan(scan, x, dt, A, B, C, D=None, z=None):
    """Mamba's ``ssd_selective_scan`` mapping of SSD onto a Mamba-1 scan.

    x -> (b, H*P, L), dt repeated over P, A repeated to (H*P, N), B/C -> (b, G, N, L),
    D (H,) repeated over P. ``dt`` must already be processed (positive, no bias).
    """
    nb, L, H, P = x.shape
    N = B.shape[3]
    u = x.reshape(nb, L, H * P).transpose(0, 2, 1)
    delta = np.repeat(dt, P, axis=2).transpose(0, 2, 1)
    A_rep = np.repeat(np.repeat(A, P)[:, None], N, axis=1)
    Bm = B.transpose(0, 2, 3, 1)
    Cm = C.transpose(0, 2, 3, 1)
    D_rep = None if D is None else np.repeat(D, P)
    z_m = None if z is None else z.reshape(nb, L, H * P).transpose(0, 2, 1)
    out, last = scan(u, delta, A_rep, Bm, Cm, D=D_rep, z=z_m)
    out = np.asarray(out).transpose(0, 2, 1).reshape(nb, L, H, P)
    return out, None if last is None else np.asarray(last).reshape(nb, H, P, N)


def mamba_seq_idx_chunks(x, dt, A, B, C, h0, seq_idx, Q):
    """Mamba's Triton chunk rules for seq_idx (ANCHORS 1.5), literally, as loops.

    CB[l, s] is zeroed when seq_idx differ; a chunk state sums only positions with
    the seq_idx of the chunk's last position; the carried state is zeroed when the
    seq_idx at the end of the chunk differs from the one at the end of the previous
    chunk (0 before chunk 0); the output from the carried state is masked to
    positions whose seq_idx equals the previous chunk's last seq_idx.
    """
    nb, L, H, P = x.shape
    G = B.shape[2]
    y = np.zeros((nb, L, H, P))
    final = np.zeros_like(h0)
    for b in range(nb):
        for h in range(H):
            g = h // (H // G)
            state = h0[b, h].copy()
            prev_end = 0
            for t0 in range(0, L, Q):
                t1 = min(t0 + Q, L)
                a = dt[b, t0:t1, h] * A[h]
                acs = np.cumsum(a)
                sq = seq_idx[b, t0:t1]
                for l in range(t1 - t0):
                    acc = np.zeros(P)
                    for s in range(l + 1):
                        if sq[s] == sq[l]:
                            cb = C[b, t0 + l, g] @ B[b, t0 + s, g]
                            acc += cb * np.exp(acs[l] - acs[s]) * dt[b, t0 + s, h] * x[b, t0 + s, h]
                    if sq[l] == prev_end:
                        acc += np.exp(acs[l]) * (state @ C[b, t0 + l, g])
                    y[b, t0 + l, h] = acc
                S = np.zeros_like(state)
                for s in range(t1 - t0):
                    if sq[s] == sq[-1]:
                        S += np.exp(acs[-1] - acs[s]) * dt[b, t0 + s, h] * np.outer(x[b, t0 + s, h], B[b, t0 + s, g])
                keep = 1.0 if sq[-1] == prev_end else 0.0
                state = keep * np.exp(acs[-1]) * state + S
                prev_end = sq[-1]
            final[b, h] = state
    return y, final


def processed_dt(dt, dt_bias, softplus, limit):
    v = dt + (0.0 if dt_bias is None else dt_bias)
    if softplus:
        v = np.where(v > 20, v, np.log1p(np.exp(np.minimum(v, 20))))
    return np.clip(v, *limit)


def assert_outputs_close(a, b, rtol, atol):
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 13, 64])
@pytest.mark.parametrize("D_shape", ["H", "HP"])
def test_numba_matches_sequential_reference(rng, dtype, chunk_size, D_shape):
    x, dt, A, B, C = make_inputs(rng, dtype=dtype)
    kw = full_kwargs(rng, x, B, D_shape=D_shape, dtype=dtype)
    got = ssd(x, dt, A, B, C, chunk_size=chunk_size, **kw)
    want = ssd(x, dt, A, B, C, chunk_size=chunk_size, backend="numpy", **kw)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    assert_outputs_close(got, want, **tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_parallel_driver_matches_reference(rng, monkeypatch, dtype):
    """Small calls run one thread; force the prange driver (forward and backward) here."""
    from ssmcore.backends.numba import ssd as kernels_nb

    monkeypatch.setattr(kernels_nb, "PARALLEL_MIN_WORK", 0)
    x, dt, A, B, C = make_inputs(rng, L=11, dtype=dtype)
    kw = full_kwargs(rng, x, B, dtype=dtype)
    kw["chunk_size"] = 4
    out, pb = ssmcore.vjp("ssd", x, dt, A, B, C, **kw)
    out_ref, pb_ref = ssmcore.vjp("ssd", x, dt, A, B, C, backend="numpy", **kw)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    assert_outputs_close(out, out_ref, rtol=tol, atol=tol)
    ct = tuple(np.ones_like(o) for o in out)
    for a, b in zip(pb(ct), pb_ref(ct)):
        np.testing.assert_allclose(a, b, rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 16])
def test_chunked_numpy_reference_matches_sequential(rng, chunk_size):
    x, dt, A, B, C = make_inputs(rng, L=11)
    nb, L, H, P = x.shape
    N = B.shape[3]
    D = rng.standard_normal((H, P))
    h0 = rng.standard_normal((nb, H, P, N))
    reset = np.zeros((nb, L), bool)
    reset[0, [0, 4, 9]] = True
    dtp = np.abs(dt)
    y1, s1 = ref.ssd_forward(x, dtp, A, B, C, D, h0, reset, chunk_size)
    y2, s2 = ref.ssd_chunked(x, dtp, A, B, C, D, h0, reset, chunk_size)
    np.testing.assert_allclose(y2, y1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s2, s1, rtol=1e-12, atol=1e-12)


def test_equals_mamba1_selective_scan_loop(rng):
    """SSD == Mamba-1 semantics after mamba's ssd_selective_scan mapping (independent loop)."""
    x, dt, A, B, C = make_inputs(rng, L=17)
    H = x.shape[2]
    D = rng.standard_normal(H)
    z = rng.standard_normal(x.shape)
    dtp = processed_dt(dt, None, True, (0.0, math.inf))
    want, want_last = ssd_via_selective_scan(selective_scan_loop, x, dtp, A, B, C, D=D, z=z)
    for chunk_size in (4, 64):
        out, final = ssd(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_softplus=True,
                         return_final_states=True)
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(final, want_last, rtol=1e-12, atol=1e-12)


def test_equals_ssmcore_selective_scan(rng):
    """Cross-check with ssmcore._selective_scan (written by another engineer) where it exists."""
    sel = pytest.importorskip("ssmcore._selective_scan")
    x, dt, A, B, C = make_inputs(rng, L=9)
    H = x.shape[2]
    D = rng.standard_normal(H)
    z = rng.standard_normal(x.shape)
    dtp = processed_dt(dt, None, True, (0.0, math.inf))

    def scan(u, delta, A_, B_, C_, D=None, z=None):
        out, last = sel.selective_scan(u, delta, A_, B_, C_, D=D, z=z, return_last_state=True)
        return out, last

    want, want_last = ssd_via_selective_scan(scan, x, dtp, A, B, C, D=D, z=z)
    out, final = ssd(x, dt, A, B, C, chunk_size=4, D=D, z=z, dt_softplus=True, return_final_states=True)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(final, want_last, rtol=1e-10, atol=1e-10)


@given(
    nb=st.integers(1, 2), L=st.integers(1, 20), G=st.integers(1, 2), hpg=st.integers(1, 2),
    P=st.integers(1, 4), N=st.integers(1, 5), chunk_size=st.integers(1, 8), seed=st.integers(0, 2**31),
)
def test_hypothesis_shapes_against_selective_scan_loop(nb, L, G, hpg, P, N, chunk_size, seed):
    rng = np.random.default_rng(seed)
    x, dt, A, B, C = make_inputs(rng, nb=nb, L=L, H=G * hpg, P=P, G=G, N=N)
    dt_bias = rng.uniform(-1, 1, G * hpg)
    want, want_last = ssd_via_selective_scan(
        selective_scan_loop, x, processed_dt(dt, dt_bias, True, (0.0, math.inf)), A, B, C)
    out, final = ssd(x, dt, A, B, C, chunk_size=chunk_size, dt_bias=dt_bias, dt_softplus=True,
                     return_final_states=True)
    np.testing.assert_allclose(out, want, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(final, want_last, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_length_one_and_zero(rng, chunk_size):
    x, dt, A, B, C = make_inputs(rng, L=1)
    h0 = rng.standard_normal((2, 4, 3, 5))
    out, final = ssd(x, dt, A, B, C, chunk_size=chunk_size, initial_states=h0, return_final_states=True)
    d = processed_dt(dt, None, False, (0.0, math.inf))[:, 0]  # (b, H)
    a = np.exp(d * A)
    Bh, Ch = np.repeat(B[:, 0], 2, axis=1), np.repeat(C[:, 0], 2, axis=1)  # (b, H, N)
    want_state = a[..., None, None] * h0 + d[..., None, None] * x[:, 0, :, :, None] * Bh[:, :, None, :]
    np.testing.assert_allclose(final, want_state, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(out[:, 0], np.einsum("bhpn,bhn->bhp", want_state, Ch), rtol=1e-13, atol=1e-13)
    # L = 0: empty output, the final state is the initial state
    out0, final0 = ssd(x[:, :0], dt[:, :0], A, B[:, :0], C[:, :0], initial_states=h0, return_final_states=True)
    assert out0.shape == (2, 0, 4, 3)
    np.testing.assert_array_equal(final0, h0)


@pytest.mark.parametrize("shape", [(0, 5, 2, 3, 1, 4), (1, 5, 2, 0, 1, 4), (1, 5, 2, 3, 1, 0), (2, 3, 0, 3, 1, 4)])
def test_empty_dimensions(rng, shape):
    nb, L, H, P, G, N = shape
    x, dt, A, B, C = make_inputs(rng, nb=nb, L=L, H=H, P=P, G=G, N=N)
    h0 = rng.standard_normal((nb, H, P, N))
    (out, final), pb = ssmcore.vjp("ssd", x, dt, A, B, C, D=np.ones(H), initial_states=h0, return_final_states=True)
    assert out.shape == x.shape and final.shape == h0.shape
    if N == 0:  # no state: only the skip term is left
        np.testing.assert_array_equal(out, x)
    grads = pb((np.ones_like(out), np.ones_like(final)))
    for name, g, a in zip(ssmcore.get_op("ssd").inputs, grads, (x, dt, A, B, C, np.ones(H), None, None, h0)):
        assert (g is None) == (a is None), name
        assert g is None or g.shape == np.shape(a), name


def test_non_contiguous_inputs(rng):
    x, dt, A, B, C = make_inputs(rng, L=9)
    xf, Bv = np.asfortranarray(x), B[:, :, ::-1]
    got = ssd(xf, dt, A, Bv, C[:, ::-1][:, ::-1], chunk_size=4)
    want = ssd(x, dt, A, np.ascontiguousarray(Bv), C, chunk_size=4)
    np.testing.assert_array_equal(got, want)


def test_chunk_size_does_not_change_result(rng):
    x, dt, A, B, C = make_inputs(rng, L=40)
    kw = full_kwargs(rng, x, B)
    base = ssd(x, dt, A, B, C, chunk_size=1, **kw)
    for q in (2, 7, 16, 40, 100):
        assert_outputs_close(ssd(x, dt, A, B, C, chunk_size=q, **kw), base, rtol=1e-12, atol=1e-12)


def test_chunk_size_may_be_positional_as_in_mamba_chunk_scan_combined(rng):
    x, dt, A, B, C = make_inputs(rng, L=20)
    np.testing.assert_array_equal(ssd(x, dt, A, B, C, 4), ssd(x, dt, A, B, C, chunk_size=4))
    out, pullback = ssmcore.vjp("ssd", x, dt, A, B, C, 4, return_final_states=True)
    out_kw, pullback_kw = ssmcore.vjp("ssd", x, dt, A, B, C, chunk_size=4, return_final_states=True)
    for a, b in zip(pullback(out), pullback_kw(out_kw)):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="ssd: chunk_size must be an integer"):
        ssd(x, dt, A, B, C, np.ones(3))


def test_dt_processing_bias_softplus_limit(rng):
    x, dt, A, B, C = make_inputs(rng, L=9)
    dt = dt * 30  # reach the linear (> 20) branch of softplus and both clamp bounds
    bias = rng.uniform(-1, 1, 4)
    cases = [(False, (0.0, math.inf)), (True, (0.0, math.inf)), (True, (0.5, 3.0)), (False, (-0.2, 0.4))]
    for softplus, limit in cases:
        dtp = processed_dt(dt, bias, softplus, limit)
        want, _ = ssd_via_selective_scan(selective_scan_loop, x, dtp, A, B, C)
        got = ssd(x, dt, A, B, C, dt_bias=bias, dt_softplus=softplus, dt_limit=limit, chunk_size=4)
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
    # the default clamp (0, inf) is always applied: negative dt behaves like dt = 0
    neg = -np.abs(dt)
    np.testing.assert_array_equal(ssd(x, neg, A, B, C), np.zeros_like(x))


def test_softplus_threshold_matches_torch_definition():
    # softplus(v) = log(1 + e^v) for v <= 20 and v above: at v = 20 vs 20.5 (values from the formula)
    x = np.ones((1, 1, 1, 1))
    B = C = np.ones((1, 1, 1, 1))
    A = np.array([-1e-30])
    for v in (-3.0, 0.0, 20.0, 20.5, 40.0):
        y = ssd(x, np.full((1, 1, 1), v), A, B, C, dt_softplus=True)
        want = v if v > 20 else math.log1p(math.exp(v))
        assert y[0, 0, 0, 0] == pytest.approx(want, rel=1e-14)


def test_initial_states_and_final_states_chain(rng):
    """Running two halves with the first half's final state == one run."""
    x, dt, A, B, C = make_inputs(rng, L=20)
    h0 = rng.standard_normal((2, 4, 3, 5))
    full, fin = ssd(x, dt, A, B, C, chunk_size=4, initial_states=h0, return_final_states=True)
    a, mid = ssd(x[:, :7], dt[:, :7], A, B[:, :7], C[:, :7], chunk_size=4, initial_states=h0, return_final_states=True)
    b, fin2 = ssd(x[:, 7:], dt[:, 7:], A, B[:, 7:], C[:, 7:], chunk_size=3, initial_states=mid,
                  return_final_states=True)
    np.testing.assert_allclose(np.concatenate([a, b], axis=1), full, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fin2, fin, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- seq_idx


def test_seq_idx_equals_separate_sequences(rng):
    """Packed sequences == each run of equal seq_idx scanned on its own (reset at every change).

    initial_states reach only a leading run of index 0 (including a non-monotone index).
    """
    x, dt, A, B, C = make_inputs(rng, nb=3, L=16)
    h0 = rng.standard_normal((3, 4, 3, 5))
    D = rng.standard_normal(4)
    seq_idx = np.array([[0] * 5 + [1] * 6 + [2] * 5, [1] * 7 + [3] * 9, [0] * 4 + [2] * 4 + [0] * 8])
    for chunk_size in (1, 3, 4, 16):
        out, final = ssd(x, dt, A, B, C, D=D, initial_states=h0, seq_idx=seq_idx, chunk_size=chunk_size,
                         return_final_states=True)
        for b in range(3):
            change = np.flatnonzero(np.diff(seq_idx[b])) + 1
            starts = [0, *change]
            ends = [*change, 16]
            for k, (s, e) in enumerate(zip(starts, ends)):
                init = h0[b:b + 1] if (k == 0 and seq_idx[b, 0] == 0) else None
                o, f = ssd(x[b:b + 1, s:e], dt[b:b + 1, s:e], A, B[b:b + 1, s:e], C[b:b + 1, s:e], D=D,
                           initial_states=init, return_final_states=True)
                np.testing.assert_allclose(out[b:b + 1, s:e], o, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(final[b:b + 1], f, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- cu_seqlens / varlen states

CU = np.array([0, 3, 4, 11, 20, 23])  # five packed sequences, lengths 3, 1, 7, 9, 3


def _packed(rng, L=23):
    x, dt, A, B, C = make_inputs(rng, nb=1, L=L)
    return x, np.abs(dt), A, B, C


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("chunk_size", [1, 2, 4, 7, 64])
@pytest.mark.parametrize("with_h0", [False, True])
def test_varlen_states_are_each_sequences_final_state(rng, backend, chunk_size, with_h0):
    """varlen_states[s] == ssd on sequence s alone (from initial_states for sequence 0)."""
    x, dt, A, B, C = _packed(rng)
    h0 = rng.standard_normal((1, 4, 3, 5)) if with_h0 else None
    seq = np.repeat(np.arange(5), np.diff(CU))[None]
    out, final, var = ssd(x, dt, A, B, C, chunk_size, initial_states=h0, seq_idx=seq, cu_seqlens=CU,
                          return_final_states=True, return_varlen_states=True, backend=backend)
    assert var.shape == (5, 4, 3, 5) and var.dtype == final.dtype
    for s in range(5):
        a, b = CU[s], CU[s + 1]
        o, f = ssd(x[:, a:b], dt[:, a:b], A, B[:, a:b], C[:, a:b], initial_states=h0 if s == 0 else None,
                   return_final_states=True)
        np.testing.assert_allclose(var[s], f[0], rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(out[:, a:b], o, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(var[-1], final[0], rtol=1e-12, atol=1e-12)
    # (out, varlen_states) without final states, mamba_ssm's order
    out2, var2 = ssd(x, dt, A, B, C, chunk_size, initial_states=h0, seq_idx=seq, cu_seqlens=CU,
                     return_varlen_states=True, backend=backend)
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(var2, var)


def test_cu_seqlens_without_varlen_states_is_ignored_and_a_late_first_sequence_restarts(rng):
    x, dt, A, B, C = _packed(rng)
    np.testing.assert_array_equal(ssd(x, dt, A, B, C, 4, cu_seqlens=CU), ssd(x, dt, A, B, C, 4))
    seq = np.repeat(np.arange(5), np.diff(CU))[None]
    _, var = ssd(x, dt, A, B, C, 4, seq_idx=seq, cu_seqlens=CU[2:], return_varlen_states=True)  # from step 4
    for s, (a, b) in enumerate(zip(CU[2:-1], CU[3:])):
        _, f = ssd(x[:, a:b], dt[:, a:b], A, B[:, a:b], C[:, a:b], return_final_states=True)
        np.testing.assert_allclose(var[s], f[0], rtol=1e-11, atol=1e-11)


def test_varlen_states_get_no_gradient(rng):
    x, dt, A, B, C = _packed(rng)
    seq = np.repeat(np.arange(5), np.diff(CU))[None]
    (out, var), pullback = ssmcore.vjp("ssd", x, dt, A, B, C, 4, seq_idx=seq, cu_seqlens=CU,
                                       return_varlen_states=True)
    gy = rng.standard_normal(out.shape)
    _, plain = ssmcore.vjp("ssd", x, dt, A, B, C, 4, seq_idx=seq)
    for a, b in zip(pullback((gy, None)), plain(gy)):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
    pullback((gy, np.zeros_like(var)))
    with pytest.raises(NotImplementedError, match="ssd: no gradient through varlen_states"):
        pullback((gy, np.ones_like(var)))


def test_cu_seqlens_errors(rng):
    x, dt, A, B, C = _packed(rng)
    with pytest.raises(ValueError, match="ssd: return_varlen_states=True needs cu_seqlens"):
        ssd(x, dt, A, B, C, return_varlen_states=True)
    with pytest.raises(ValueError, match="ssd: return_varlen_states=True needs seq_idx marking the sequences"):
        ssd(x, dt, A, B, C, cu_seqlens=CU, return_varlen_states=True)
    seq = np.zeros((1, 23), np.int64)
    for bad in ([0, 5, 5, 23], [0, 30], [-1, 23], [3, 1]):
        with pytest.raises(ValueError, match=r"ssd: cu_seqlens must increase strictly within \[0, L=23\]"):
            ssd(x, dt, A, B, C, seq_idx=seq, cu_seqlens=np.array(bad), return_varlen_states=True)
    with pytest.raises(TypeError, match="ssd: cu_seqlens has dtype float64; expected an integer dtype"):
        ssd(x, dt, A, B, C, seq_idx=seq, cu_seqlens=np.array([0.0, 23.0]), return_varlen_states=True)
    with pytest.raises(ValueError, match=r"ssd: cu_seqlens has shape \(1,\); expected \(num_sequences \+ 1,\)"):
        ssd(x, dt, A, B, C, seq_idx=seq, cu_seqlens=np.array([0]), return_varlen_states=True)
    x2, dt2, A2, B2, C2 = make_inputs(rng, nb=2, L=23)
    with pytest.raises(ValueError, match="ssd: cu_seqlens needs batch 1"):
        ssd(x2, dt2, A2, B2, C2, seq_idx=np.zeros((2, 23), np.int64), cu_seqlens=CU, return_varlen_states=True)
    with pytest.raises(TypeError, match="ssd: return_varlen_states must be"):
        ssd(x, dt, A, B, C, seq_idx=seq, cu_seqlens=CU, return_varlen_states="yes")


@pytest.mark.parametrize("chunk_size", [2, 4, 5])
def test_seq_idx_matches_mamba_chunk_rules_for_sorted_index(rng, chunk_size):
    x, dt, A, B, C = make_inputs(rng, nb=2, L=15)
    dtp = np.abs(dt)
    h0 = rng.standard_normal((2, 4, 3, 5))
    seq_idx = np.array([[0] * 3 + [1] * 2 + [2] * 10, [1] * 4 + [2] + [4] * 10])
    want_y, want_final = mamba_seq_idx_chunks(x, dtp, A, B, C, h0, seq_idx, chunk_size)
    y, final = ssd(x, dtp, A, B, C, initial_states=h0, seq_idx=seq_idx, chunk_size=chunk_size,
                   return_final_states=True)
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(final, want_final, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("final", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_vjp_positional_inputs(rng, final, chunk_size):
    x, dt, A, B, C = make_inputs(rng, L=11)
    kw = full_kwargs(rng, x, B, seq=True)
    kw["return_final_states"] = final
    kw["chunk_size"] = chunk_size
    check_vjp("ssd", (x, dt, A, B, C), kw, rng=rng)


@pytest.mark.parametrize("D_shape", ["H", "HP"])
def test_vjp_keyword_inputs(rng, D_shape):
    x, dt, A, B, C = make_inputs(rng, L=10)
    kw = full_kwargs(rng, x, B, D_shape=D_shape)
    kw["chunk_size"] = 4
    check_vjp("ssd", (x, dt, A, B, C), kw, wrt=["D", "z", "dt_bias", "initial_states"], rng=rng)


def test_initial_states_gradient_is_zero_when_no_sequence_has_index_0(rng):
    x, dt, A, B, C = make_inputs(rng, L=8)
    h0 = rng.standard_normal((2, 4, 3, 5))
    seq_idx = np.array([[1] * 8, [2] * 3 + [3] * 5])
    (out, final), pb = ssmcore.vjp("ssd", x, dt, A, B, C, initial_states=h0, seq_idx=seq_idx,
                                   return_final_states=True)
    np.testing.assert_array_equal(out, ssd(x, dt, A, B, C, seq_idx=seq_idx))
    gh0 = pb((np.ones_like(out), np.ones_like(final)))[-1]
    np.testing.assert_array_equal(gh0, np.zeros_like(h0))


@given(L=st.integers(1, 12), G=st.integers(1, 2), hpg=st.integers(1, 2), P=st.integers(1, 3),
       N=st.integers(1, 4), chunk_size=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_hypothesis_vjp(L, G, hpg, P, N, chunk_size, seed):
    rng = np.random.default_rng(seed)
    x, dt, A, B, C = make_inputs(rng, nb=1, L=L, H=G * hpg, P=P, G=G, N=N)
    kw = dict(chunk_size=chunk_size, dt_softplus=True, D=rng.standard_normal(G * hpg),
              initial_states=rng.standard_normal((1, G * hpg, P, N)), return_final_states=True)
    check_vjp("ssd", (x, dt, A, B, C), kw, rng=rng)


def test_vjp_numba_equals_reference_and_dtypes(rng):
    for dtype in (np.float64, np.float32):
        x, dt, A, B, C = make_inputs(rng, L=12, dtype=dtype)
        kw = full_kwargs(rng, x, B, dtype=dtype)
        kw["chunk_size"] = 5
        out, pb = ssmcore.vjp("ssd", x, dt, A, B, C, **kw)
        ct = (rng.standard_normal(out[0].shape).astype(dtype), rng.standard_normal(out[1].shape).astype(dtype))
        g_nb = pb(ct)
        _, pb_ref = ssmcore.vjp("ssd", x, dt, A, B, C, backend="numpy", **kw)
        g_ref = pb_ref(ct)
        tol = 1e-11 if dtype == np.float64 else 2e-3
        for name, a, b in zip(ssmcore.get_op("ssd").inputs, g_nb, g_ref):
            assert a.dtype == dtype and a.shape == b.shape, name
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=name)


def test_vjp_missing_inputs_get_none_and_clamped_dt_gets_zero(rng):
    x, dt, A, B, C = make_inputs(rng, L=6)
    dt[0, 2, 1] = -0.5  # clamped to 0 by the default dt_limit
    out, pb = ssmcore.vjp("ssd", x, dt, A, B, C)
    gx, gdt, gA, gB, gC, gD, gz, gbias, gh0 = pb(np.ones_like(out))
    assert gD is None and gz is None and gbias is None and gh0 is None
    assert gdt[0, 2, 1] == 0.0
    assert np.count_nonzero(gdt) == np.count_nonzero(dt >= 0)


def test_float32_accuracy_against_float64(rng):
    x, dt, A, B, C = make_inputs(rng, L=70, H=4, P=8, N=16)
    kw = dict(dt_softplus=True, return_final_states=True)
    want = ssd(x, dt, A, B, C, **kw)
    got = ssd(*(a.astype(np.float32) for a in (x, dt, A, B, C)), **kw)
    assert got[0].dtype == np.float32
    assert_outputs_close(got, want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("dtype, a_step", [(np.float32, -120.0), (np.float64, -800.0)])
def test_strong_decay_does_not_overflow(rng, dtype, a_step):
    """Per-step decays exp(a) with a far below -log(max float).

    The chunk's cumulative decay exp(-sum a) would overflow; the kernels never form it and match the
    float64 loop.
    """
    x, dt, A, B, C = make_inputs(rng, L=20, dtype=dtype)
    dt = np.full_like(dt, 1.0)
    A = np.full_like(A, a_step)
    dt[:, ::3] = 1e-3  # mix in slowly decaying steps
    out, final = ssd(x, dt, A, B, C, chunk_size=16, return_final_states=True)
    want, want_final = ssd(x.astype(np.float64), dt.astype(np.float64), A.astype(np.float64),
                           B.astype(np.float64), C.astype(np.float64), chunk_size=16,
                           return_final_states=True, backend="numpy")
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(final))
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(final, want_final, rtol=tol, atol=tol)


def test_parameters_follow_the_data_dtype(rng):
    x, dt, A, B, C = make_inputs(rng, L=5, dtype=np.float32)
    out = ssd(x, dt, A.astype(np.float64), B, C, D=np.ones(4), dt_bias=np.zeros(4))
    assert out.dtype == np.float32
    assert ssd(x.astype(np.float64), dt, A, B, C).dtype == np.float64


def test_import_is_lazy():
    import subprocess
    import sys

    code = "import sys, ssmcore._ssd; print('numba' in sys.modules, 'scipy' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------- bad input and non-finite values


def test_bad_input_messages(rng):
    x, dt, A, B, C = make_inputs(rng, H=4, G=2)
    B3 = rng.standard_normal((2, 13, 3, 5))
    with pytest.raises(ValueError, match="ssd: B has 3 groups, which does not divide the 4 heads"):
        ssd(x, dt, A, B3, B3)
    with pytest.raises(ValueError, match=r"ssd: dt has shape \(2, 13\); expected \(batch, L, heads\)"):
        ssd(x, dt[..., 0], A, B, C)
    with pytest.raises(ValueError, match=r"ssd: A has shape \(4, 1\); expected \(heads,\)"):
        ssd(x, dt, A[:, None], B, C)
    with pytest.raises(ValueError, match=r"ssd: C has shape \(2, 13, 2, 4\); expected the shape of B"):
        ssd(x, dt, A, B, C[..., :4])
    with pytest.raises(ValueError, match=r"ssd: B has shape \(2, 12, 2, 5\)"):
        ssd(x, dt, A, B[:, :12], C[:, :12])
    with pytest.raises(ValueError, match=r"ssd: x has shape \(2, 13, 4\); expected \(batch, L, heads, headdim\)"):
        ssd(x[..., 0], dt, A, B, C)
    with pytest.raises(ValueError, match=r"ssd: D has shape \(3,\)"):
        ssd(x, dt, A, B, C, D=np.ones(3))
    with pytest.raises(ValueError, match=r"ssd: z has shape"):
        ssd(x, dt, A, B, C, z=x[:, :5])
    with pytest.raises(ValueError, match=r"ssd: initial_states has shape \(2, 4, 3\)"):
        ssd(x, dt, A, B, C, initial_states=np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match=r"ssd: dt_bias has shape"):
        ssd(x, dt, A, B, C, dt_bias=np.zeros(2))
    with pytest.raises(ValueError, match=r"ssd: seq_idx has shape"):
        ssd(x, dt, A, B, C, seq_idx=np.zeros((2, 12), dtype=np.int64))
    with pytest.raises(TypeError, match=r"ssd: seq_idx has dtype float64; expected an integer dtype"):
        ssd(x, dt, A, B, C, seq_idx=np.zeros((2, 13)))
    with pytest.raises(TypeError, match=r"ssd: x has dtype int64; expected a floating dtype"):
        ssd(x.astype(np.int64), dt, A, B, C)
    with pytest.raises(TypeError, match=r"ssd: B has dtype int32"):
        ssd(x, dt, A, B.astype(np.int32), C)
    with pytest.raises(TypeError, match=r"ssd: x has dtype complex128; expected a real"):
        ssd(x.astype(complex), dt, A, B, C)
    with pytest.raises(ValueError, match="ssd: chunk_size must be >= 1"):
        ssd(x, dt, A, B, C, chunk_size=0)
    with pytest.raises(TypeError, match="ssd: chunk_size must be an integer"):
        ssd(x, dt, A, B, C, chunk_size=4.0)
    with pytest.raises(ValueError, match=r"ssd: dt_limit must satisfy min <= max"):
        ssd(x, dt, A, B, C, dt_limit=(1.0, 0.5))
    with pytest.raises(TypeError, match=r"ssd: dt_limit must be a pair"):
        ssd(x, dt, A, B, C, dt_limit=0.5)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_non_finite_dt_propagates(rng, backend):
    x, dt, A, B, C = make_inputs(rng, L=10)
    dt = np.abs(dt)
    dt[0, 5, 1] = np.nan
    out, final = ssd(x, dt, A, B, C, chunk_size=4, return_final_states=True, backend=backend)
    assert np.all(np.isnan(out[0, 5:, 1]))
    assert np.all(np.isfinite(out[0, :5, 1]))
    assert np.all(np.isnan(final[0, 1]))
    mask = np.ones(out.shape, bool)
    mask[0, :, 1] = False
    assert np.all(np.isfinite(out[mask]))
    # gradients do not crash and stay finite for the untouched heads
    _, pb = ssmcore.vjp("ssd", x, dt, A, B, C, chunk_size=4, backend=backend)
    gx = pb(np.ones_like(out))[0]
    assert np.all(np.isfinite(gx[1]))
