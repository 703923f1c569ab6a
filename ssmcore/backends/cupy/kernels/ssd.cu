// Mamba-2 SSD (state space duality) on the GPU: chunked forward and chunked backward.
//
// Semantics: ssmcore/reference/ssd.py (per batch b, head h, group g = h / (H / G)):
//     h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T      (h_{t-1} := 0 where reset_t)
//     y_t = h_t C_t + D x_t
// Template parameter T: float or double, the storage and accumulation type.
//
// Layouts (C-contiguous, prepared by ssd.py): x, y, gy, gx (batch, L, H, P); dt, gdt
// (batch, L, H); B, C, gB, gC (batch, L, G, N); D (H, P); states, dstates (batch, H, nchunk + 1, P, N); reset
// (batch, L) bool; scratch acs, gacs (batch, H, L) and first (batch, L) int.
//
// Chunked matrix form (mamba_ssm's, ANCHORS 1.5). Chunk c covers [cQ, cQ + q), q <= Q.
//   ssd_cumsum       one thread per (b, h, c): acs_l = sum_{i <= l} dt_i A inside the
//                    chunk, and (head 0) first_l = last reset at or before l in the
//                    chunk (-1 if none).
//   ssd_chunk_state  one block per (b, h, c), threads over (p, n): the chunk's own end
//                    state S_c = sum_{s >= first_last} exp(acs_last - acs_s) dt_s x_s B_s^T,
//                    written to states[c + 1].
//   ssd_state_pass   one thread per (b, h, p, n), chunks in order, in place:
//                    H_{c+1} = [first_last < 0] exp(acs_last) H_c + S_c (H_0 = h0). The
//                    dropped state after a reset is replaced, never multiplied by 0.
//   ssd_chunk_out    one block per (b, h, c): y_l = D x_l + [first_l < 0] exp(acs_l) H_c C_l
//                    + sum_{first_l <= s <= l} exp(acs_l - acs_s) (C_l . B_s) dt_s x_s, the
//                    last as 32 x 32 tiles of weights W_ls in shared memory (C . B itself a
//                    small matmul over 32-wide slices of N staged in shared memory).
// Backward (same chunks; states from the forward): ssd_bwd_dstate_local then
// ssd_bwd_state_pass give dstates[c] = d loss / d H_c, the reverse mirror of the forward
// (dstates[nchunk] = gfinal, dh0 = dstates[0]); ssd_bwd_chunk forms, per chunk, the
// intra-chunk gradients from the same tiles (decay D_ls, C.B, gy_l . u_s), the
// inter-chunk ones from H_c and dstates[c + 1], the gradient of every acs_l, then
// ga_i = sum_{l >= i} g_acs_l (0 at a reset step, as the reference), gdt = x . gu + A ga,
// gx = dt gu + D gy; ssd_bwd_dbc, one block per (b, g, c, 32-step tile), forms gB and gC
// of its tile, summing the group's heads in order (no per-head (batch, L, H, N) copy).
// gA, gD leave as per-(b, h, c) partials summed by ssd.py (CuPy's deterministic sum).
// No atomics: every output element has one writer.
//
// Numerics (as mamba_ssm): decays inside a chunk are exp(acs_l - acs_s), differences of
// cumulative sums in T; a huge dt (|dt A| ~ 1e7 in float32) makes them lose the small
// terms the reference's sequential product keeps. No (batch, L, H, P, N) value is stored.
#include "common.cuh"

#ifndef SSM_SSD_THREADS
#define SSM_SSD_THREADS 256
#endif
#define SSM_SSD_TILE 32

namespace ssd {

typedef long long ll;

struct Dims {
    ll nb, L, H, P, G, N, Q, nc;
};

__device__ __forceinline__ ll xi(const Dims& d, ll b, ll t, ll h, ll p) { return ((b * d.L + t) * d.H + h) * d.P + p; }
__device__ __forceinline__ ll ti(const Dims& d, ll b, ll t, ll h) { return (b * d.L + t) * d.H + h; }
__device__ __forceinline__ ll bi(const Dims& d, ll b, ll t, ll g, ll n) { return ((b * d.L + t) * d.G + g) * d.N + n; }
__device__ __forceinline__ ll si(const Dims& d, ll b, ll h, ll c, ll p, ll n) {
    return (((b * d.H + h) * (d.nc + 1) + c) * d.P + p) * d.N + n;
}
__device__ __forceinline__ ll ai(const Dims& d, ll b, ll h, ll t) { return (b * d.H + h) * d.L + t; }

// Each thread's share of a TILE x TILE weight tile (the block size divides TILE^2).
#define SSM_SSD_PER_THREAD (SSM_SSD_TILE * SSM_SSD_TILE / SSM_SSD_THREADS)
static_assert(SSM_SSD_TILE * SSM_SSD_TILE % SSM_SSD_THREADS == 0, "SSM_SSD_THREADS must divide TILE^2");

// Shared tiles of one (l-tile, s-tile) pair: decay-with-mask DEC_ls and C_l . B_s. C . B is a
// small matmul over N, staged through shared (TILE x TILE) slices of C and B. Every thread of
// the block must call this (it synchronises); blockDim.x == SSM_SSD_THREADS.
template <class T>
__device__ __forceinline__ void load_tile(const Dims& d, const T* B, const T* C, const T* acs, const int* first,
                                          ll b, ll h, ll g, ll l0, ll nl, ll s0, ll ns, T (*DEC)[SSM_SSD_TILE],
                                          T (*CB)[SSM_SSD_TILE], T (*Cs)[SSM_SSD_TILE + 1],
                                          T (*Bs)[SSM_SSD_TILE + 1]) {
    T cb[SSM_SSD_PER_THREAD];
    for (int k = 0; k < SSM_SSD_PER_THREAD; ++k) cb[k] = T(0);
    for (ll n0 = 0; n0 < d.N; n0 += SSM_SSD_TILE) {
        for (int e = threadIdx.x; e < SSM_SSD_TILE * SSM_SSD_TILE; e += blockDim.x) {
            int r = e / SSM_SSD_TILE, k = e % SSM_SSD_TILE;
            bool in_n = n0 + k < d.N;
            Cs[r][k] = (r < nl && in_n) ? C[bi(d, b, l0 + r, g, n0 + k)] : T(0);
            Bs[r][k] = (r < ns && in_n) ? B[bi(d, b, s0 + r, g, n0 + k)] : T(0);
        }
        __syncthreads();
        for (int k = 0; k < SSM_SSD_PER_THREAD; ++k) {
            int e = threadIdx.x + k * SSM_SSD_THREADS;
            int li = e / SSM_SSD_TILE, sj = e % SSM_SSD_TILE;
            T acc = cb[k];
            for (int j = 0; j < SSM_SSD_TILE; ++j) acc += Cs[li][j] * Bs[sj][j];
            cb[k] = acc;
        }
        __syncthreads();
    }
    for (int k = 0; k < SSM_SSD_PER_THREAD; ++k) {
        int e = threadIdx.x + k * SSM_SSD_THREADS;
        int li = e / SSM_SSD_TILE, sj = e % SSM_SSD_TILE;
        T dec = T(0), w = T(0);
        if (li < nl && sj < ns) {
            ll l = l0 + li, s = s0 + sj;
            if (s <= l && s >= first[b * d.L + l]) {
                dec = exp(acs[ai(d, b, h, l)] - acs[ai(d, b, h, s)]);
                w = cb[k];
            }
        }
        DEC[li][sj] = dec;
        CB[li][sj] = w;
    }
}

// Only the masked decays DEC_ls of a tile (what gB / gC need; no C . B). Entry e is written by
// thread e mod blockDim.x, the same owner as the tile loops below use, so no barrier is needed
// before that thread reads its own entries.
template <class T>
__device__ __forceinline__ void load_dec(const Dims& d, const T* acs, const int* first, ll b, ll h, ll l0, ll nl,
                                         ll s0, ll ns, T (*DEC)[SSM_SSD_TILE]) {
    for (int e = threadIdx.x; e < SSM_SSD_TILE * SSM_SSD_TILE; e += blockDim.x) {
        int li = e / SSM_SSD_TILE, sj = e % SSM_SSD_TILE;
        T dec = T(0);
        ll l = l0 + li, s = s0 + sj;
        if (li < nl && sj < ns && s <= l && s >= first[b * d.L + l])
            dec = exp(acs[ai(d, b, h, l)] - acs[ai(d, b, h, s)]);
        DEC[li][sj] = dec;
    }
}

}  // namespace ssd

using ssd::Dims;
using ssd::ll;

template <class T>
__global__ void ssd_cumsum(const T* __restrict__ dt, const T* __restrict__ A, const bool* __restrict__ reset,
                           T* __restrict__ acs, int* __restrict__ first, ll nb, ll L, ll H, ll Q, ll nc) {
    ll item = (ll)blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= nb * H * nc) return;
    ll c = item % nc, h = (item / nc) % H, b = item / (nc * H);
    ll t0 = c * Q, q = min(Q, L - t0);
    T run = T(0);
    int f = -1;
    for (ll i = 0; i < q; ++i) {
        ll t = t0 + i;
        run += dt[(b * L + t) * H + h] * A[h];
        acs[(b * H + h) * L + t] = run;
        if (h == 0) {
            if (reset[b * L + t]) f = (int)t;
            first[b * L + t] = f;  // absolute step index, -1: no reset in the chunk so far
        }
    }
}

template <class T>
__global__ void __launch_bounds__(SSM_SSD_THREADS)
ssd_chunk_state(const T* __restrict__ x, const T* __restrict__ dt, const T* __restrict__ B,
                const T* __restrict__ acs, const int* __restrict__ first, T* __restrict__ states, ll nb, ll L,
                ll H, ll P, ll G, ll N, ll Q, ll nc) {
    Dims d{nb, L, H, P, G, N, Q, nc};
    ll c = blockIdx.x % nc, h = (blockIdx.x / nc) % H, b = blockIdx.x / (nc * H);
    ll g = h / (H / G), t0 = c * Q, last = t0 + min(Q, L - t0) - 1;
    ll s_lo = max((ll)first[b * L + last], t0);
    T acl = acs[ssd::ai(d, b, h, last)];
    for (ll e = threadIdx.x; e < P * N; e += blockDim.x) {
        ll p = e / N, n = e % N;
        T acc = T(0);
        for (ll s = s_lo; s <= last; ++s)
            acc += exp(acl - acs[ssd::ai(d, b, h, s)]) * dt[ssd::ti(d, b, s, h)] * x[ssd::xi(d, b, s, h, p)] *
                   B[ssd::bi(d, b, s, g, n)];
        states[ssd::si(d, b, h, c + 1, p, n)] = acc;
    }
}

template <class T>
__global__ void ssd_state_pass(const T* __restrict__ h0, const T* __restrict__ acs, const int* __restrict__ first,
                               T* __restrict__ states, ll nb, ll L, ll H, ll P, ll N, ll Q, ll nc) {
    Dims d{nb, L, H, P, 1, N, Q, nc};
    ll item = (ll)blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= nb * H * P * N) return;
    ll n = item % N, p = (item / N) % P, h = (item / (N * P)) % H, b = item / (N * P * H);
    T st = h0[((b * H + h) * P + p) * N + n];
    states[ssd::si(d, b, h, 0, p, n)] = st;
    for (ll c = 0; c < nc; ++c) {
        ll last = c * Q + min(Q, L - c * Q) - 1;
        T own = states[ssd::si(d, b, h, c + 1, p, n)];
        st = first[b * L + last] < 0 ? exp(acs[ssd::ai(d, b, h, last)]) * st + own : own;
        states[ssd::si(d, b, h, c + 1, p, n)] = st;
    }
}

template <class T>
__global__ void __launch_bounds__(SSM_SSD_THREADS)
ssd_chunk_out(const T* __restrict__ x, const T* __restrict__ dt, const T* __restrict__ B, const T* __restrict__ C,
              const T* __restrict__ D, const T* __restrict__ acs, const int* __restrict__ first,
              const T* __restrict__ states, T* __restrict__ y, ll nb, ll L, ll H, ll P, ll G, ll N, ll Q, ll nc) {
    __shared__ T DEC[SSM_SSD_TILE][SSM_SSD_TILE];
    __shared__ T CB[SSM_SSD_TILE][SSM_SSD_TILE];
    __shared__ T Cs[SSM_SSD_TILE][SSM_SSD_TILE + 1];  // +1: no bank conflicts on the column reads
    __shared__ T Bs[SSM_SSD_TILE][SSM_SSD_TILE + 1];
    Dims d{nb, L, H, P, G, N, Q, nc};
    ll c = blockIdx.x % nc, h = (blockIdx.x / nc) % H, b = blockIdx.x / (nc * H);
    ll g = h / (H / G), t0 = c * Q, q = min(Q, L - t0);
    for (ll l0 = t0; l0 < t0 + q; l0 += SSM_SSD_TILE) {
        ll nl = min((ll)SSM_SSD_TILE, t0 + q - l0);
        // D x and the carried state's contribution; each (l, p) has one owner thread
        for (ll e = threadIdx.x; e < nl * P; e += blockDim.x) {
            ll l = l0 + e / P, p = e % P;
            T acc = D[h * P + p] * x[ssd::xi(d, b, l, h, p)];
            if (first[b * L + l] < 0) {
                T hc = T(0);
                for (ll n = 0; n < N; ++n) hc += states[ssd::si(d, b, h, c, p, n)] * C[ssd::bi(d, b, l, g, n)];
                acc += exp(acs[ssd::ai(d, b, h, l)]) * hc;
            }
            y[ssd::xi(d, b, l, h, p)] = acc;
        }
        for (ll s0 = t0; s0 < l0 + nl; s0 += SSM_SSD_TILE) {
            ll ns = min((ll)SSM_SSD_TILE, t0 + q - s0);
            __syncthreads();
            ssd::load_tile(d, B, C, acs, first, b, h, g, l0, nl, s0, ns, DEC, CB, Cs, Bs);
            __syncthreads();
            for (ll e = threadIdx.x; e < nl * P; e += blockDim.x) {
                ll li = e / P, p = e % P;
                T acc = T(0);
                for (ll sj = 0; sj < ns; ++sj) {
                    T w = DEC[li][sj] * CB[li][sj];
                    if (w != T(0)) acc += w * dt[ssd::ti(d, b, s0 + sj, h)] * x[ssd::xi(d, b, s0 + sj, h, p)];
                }
                y[ssd::xi(d, b, l0 + li, h, p)] += acc;
            }
        }
        __syncthreads();
    }
}

// ------------------------------------------------------------------ backward

// dstates[c] <- sum_{l in chunk c, first_l < 0} exp(acs_l) gy_l C_l^T (chunk c's outputs' pull on H_c)
template <class T>
__global__ void __launch_bounds__(SSM_SSD_THREADS)
ssd_bwd_dstate_local(const T* __restrict__ C, const T* __restrict__ gy, const T* __restrict__ acs,
                     const int* __restrict__ first, T* __restrict__ dstates, ll nb, ll L, ll H, ll P, ll G, ll N,
                     ll Q, ll nc) {
    Dims d{nb, L, H, P, G, N, Q, nc};
    ll c = blockIdx.x % nc, h = (blockIdx.x / nc) % H, b = blockIdx.x / (nc * H);
    ll g = h / (H / G), t0 = c * Q, q = min(Q, L - t0);
    for (ll e = threadIdx.x; e < P * N; e += blockDim.x) {
        ll p = e / N, n = e % N;
        T acc = T(0);
        for (ll l = t0; l < t0 + q && first[b * L + l] < 0; ++l)
            acc += exp(acs[ssd::ai(d, b, h, l)]) * gy[ssd::xi(d, b, l, h, p)] * C[ssd::bi(d, b, l, g, n)];
        dstates[ssd::si(d, b, h, c, p, n)] = acc;
    }
}

// dstates[nc] = gfinal; dstates[c] = local_c + [first_last < 0] exp(acs_last) dstates[c + 1]; dh0 = dstates[0]
template <class T>
__global__ void ssd_bwd_state_pass(const T* __restrict__ gfinal, const T* __restrict__ acs,
                                   const int* __restrict__ first, T* __restrict__ dstates, T* __restrict__ dh0,
                                   ll nb, ll L, ll H, ll P, ll N, ll Q, ll nc) {
    Dims d{nb, L, H, P, 1, N, Q, nc};
    ll item = (ll)blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= nb * H * P * N) return;
    ll n = item % N, p = (item / N) % P, h = (item / (N * P)) % H, b = item / (N * P * H);
    T gs = gfinal[((b * H + h) * P + p) * N + n];
    dstates[ssd::si(d, b, h, nc, p, n)] = gs;
    for (ll c = nc - 1; c >= 0; --c) {
        ll last = c * Q + min(Q, L - c * Q) - 1;
        T own = dstates[ssd::si(d, b, h, c, p, n)];
        gs = first[b * L + last] < 0 ? exp(acs[ssd::ai(d, b, h, last)]) * gs + own : own;
        dstates[ssd::si(d, b, h, c, p, n)] = gs;
    }
    dh0[((b * H + h) * P + p) * N + n] = gs;
}

// One block per (b, h, c): every gradient but gB / gC (ssd_bwd_dbc). gx holds gu = d loss / d (dt x) until the last phase; gacs the
// gradient of every acs_l, then ga. gA_p, gD_p: per-(b, h, c) partials.
template <class T>
__global__ void __launch_bounds__(SSM_SSD_THREADS)
ssd_bwd_chunk(const T* __restrict__ x, const T* __restrict__ dt, const T* __restrict__ A, const T* __restrict__ B,
              const T* __restrict__ C, const T* __restrict__ D, const bool* __restrict__ reset,
              const T* __restrict__ acs, const int* __restrict__ first, const T* __restrict__ states,
              const T* __restrict__ dstates, const T* __restrict__ gy, T* __restrict__ gacs, T* __restrict__ gx,
              T* __restrict__ gdt, T* __restrict__ gA_p,
              T* __restrict__ gD_p, ll nb, ll L, ll H, ll P, ll G, ll N, ll Q, ll nc) {
    __shared__ T DEC[SSM_SSD_TILE][SSM_SSD_TILE];
    __shared__ T CB[SSM_SSD_TILE][SSM_SSD_TILE];
    __shared__ T Cs[SSM_SSD_TILE][SSM_SSD_TILE + 1];  // +1: no bank conflicts on the column reads
    __shared__ T Bs[SSM_SSD_TILE][SSM_SSD_TILE + 1];
    __shared__ T GU[SSM_SSD_TILE][SSM_SSD_TILE];
    __shared__ T RED[SSM_SSD_THREADS];
    Dims d{nb, L, H, P, G, N, Q, nc};
    ll c = blockIdx.x % nc, h = (blockIdx.x / nc) % H, b = blockIdx.x / (nc * H);
    ll g = h / (H / G), t0 = c * Q, q = min(Q, L - t0), last = t0 + q - 1;
    ll s_lo = max((ll)first[b * L + last], t0);  // steps that reach the chunk's end state
    bool carried = first[b * L + last] < 0;      // H_c reaches the chunk's end state
    T acl = acs[ssd::ai(d, b, h, last)];
    const T* Hc = states + ssd::si(d, b, h, c, 0, 0);
    const T* dHn = dstates + ssd::si(d, b, h, c + 1, 0, 0);

    // Phase 1: inter-chunk terms, each element with one owner.
    for (ll e = threadIdx.x; e < q * P; e += blockDim.x) {  // gu_s,p = r_s (dH' B_s)_p
        ll s = t0 + e / P, p = e % P;
        T acc = T(0);
        if (s >= s_lo) {
            for (ll n = 0; n < N; ++n) acc += dHn[p * N + n] * B[ssd::bi(d, b, s, g, n)];
            acc *= exp(acl - acs[ssd::ai(d, b, h, s)]);
        }
        gx[ssd::xi(d, b, s, h, p)] = acc;
    }
    // Gradient of acs_l from the inter-chunk terms; `part` collects this thread's share of the
    // acs_last gradient (sum_s R_s + [carried] exp(acs_last) <dH', H_c>), reduced below.
    T part = T(0);
    for (ll e = threadIdx.x; e < q; e += blockDim.x) {
        ll l = t0 + e;
        T ga = T(0);
        if (first[b * L + l] < 0) {  // + exp(acs_l) gy_l . (H_c C_l)
            T acc = T(0);
            for (ll p = 0; p < P; ++p) {
                T hc = T(0);
                for (ll n = 0; n < N; ++n) hc += Hc[p * N + n] * C[ssd::bi(d, b, l, g, n)];
                acc += gy[ssd::xi(d, b, l, h, p)] * hc;
            }
            ga += exp(acs[ssd::ai(d, b, h, l)]) * acc;
        }
        if (l >= s_lo) {  // - R_l, R_l = r_l u_l . (dH' B_l); its + R_l goes to acs_last
            T acc = T(0);
            for (ll p = 0; p < P; ++p) {
                T db = T(0);
                for (ll n = 0; n < N; ++n) db += dHn[p * N + n] * B[ssd::bi(d, b, l, g, n)];
                acc += x[ssd::xi(d, b, l, h, p)] * db;
            }
            T R = exp(acl - acs[ssd::ai(d, b, h, l)]) * dt[ssd::ti(d, b, l, h)] * acc;
            ga -= R;
            part += R;
        }
        gacs[ssd::ai(d, b, h, l)] = ga;
    }
    if (carried) {
        T dot = T(0);
        for (ll e = threadIdx.x; e < P * N; e += blockDim.x) dot += dHn[e] * Hc[e];
        part += exp(acl) * dot;
    }
    RED[threadIdx.x] = part;
    __syncthreads();
    if (threadIdx.x == 0) {  // fixed-order sum of the threads' shares: deterministic
        T acc = T(0);
        for (int i = 0; i < (int)blockDim.x; ++i) acc += RED[i];
        gacs[ssd::ai(d, b, h, last)] += acc;
    }

    // Phase 2: intra-chunk terms over tile pairs (s-tile <= l-tile).
    for (ll l0 = t0; l0 <= last; l0 += SSM_SSD_TILE) {
        ll nl = min((ll)SSM_SSD_TILE, last + 1 - l0);
        for (ll s0 = t0; s0 < l0 + nl; s0 += SSM_SSD_TILE) {
            ll ns = min((ll)SSM_SSD_TILE, last + 1 - s0);
            __syncthreads();
            ssd::load_tile(d, B, C, acs, first, b, h, g, l0, nl, s0, ns, DEC, CB, Cs, Bs);
            for (int e = threadIdx.x; e < SSM_SSD_TILE * SSM_SSD_TILE; e += blockDim.x) {  // gy_l . u_s
                int li = e / SSM_SSD_TILE, sj = e % SSM_SSD_TILE;
                T acc = T(0);
                if (li < nl && sj < ns && DEC[li][sj] != T(0)) {
                    for (ll p = 0; p < P; ++p)
                        acc += gy[ssd::xi(d, b, l0 + li, h, p)] * x[ssd::xi(d, b, s0 + sj, h, p)];
                    acc *= dt[ssd::ti(d, b, s0 + sj, h)];
                }
                GU[li][sj] = acc;
            }
            __syncthreads();
            for (ll e = threadIdx.x; e < ns * P; e += blockDim.x) {  // gu_s,p += sum_l W_ls gy_l,p
                ll sj = e / P, p = e % P;
                T acc = T(0);
                for (ll li = 0; li < nl; ++li) {
                    T w = DEC[li][sj] * CB[li][sj];
                    if (w != T(0)) acc += w * gy[ssd::xi(d, b, l0 + li, h, p)];
                }
                gx[ssd::xi(d, b, s0 + sj, h, p)] += acc;
            }
            for (ll li = threadIdx.x; li < nl; li += blockDim.x) {  // g_acs_l += sum_s Z_ls
                T acc = T(0);
                for (ll sj = 0; sj < ns; ++sj) acc += DEC[li][sj] * CB[li][sj] * GU[li][sj];
                gacs[ssd::ai(d, b, h, l0 + li)] += acc;
            }
            __syncthreads();
            for (ll sj = threadIdx.x; sj < ns; sj += blockDim.x) {  // g_acs_s -= sum_l Z_ls
                T acc = T(0);
                for (ll li = 0; li < nl; ++li) acc += DEC[li][sj] * CB[li][sj] * GU[li][sj];
                gacs[ssd::ai(d, b, h, s0 + sj)] -= acc;
            }
        }
    }
    __syncthreads();

    // Phase 3: ga_i = sum_{l >= i} g_acs_l (0 at a reset: the old state never reached it).
    if (threadIdx.x == 0) {
        T run = T(0), gA = T(0);
        for (ll t = last; t >= t0; --t) {
            run += gacs[ssd::ai(d, b, h, t)];
            T ga = reset[b * L + t] ? T(0) : run;
            gacs[ssd::ai(d, b, h, t)] = ga;
            gA += ga * dt[ssd::ti(d, b, t, h)];
        }
        gA_p[(b * H + h) * nc + c] = gA;
    }
    __syncthreads();
    for (ll e = threadIdx.x; e < q; e += blockDim.x) {  // gdt = x . gu + A ga
        ll t = t0 + e;
        T acc = T(0);
        for (ll p = 0; p < P; ++p) acc += x[ssd::xi(d, b, t, h, p)] * gx[ssd::xi(d, b, t, h, p)];
        gdt[ssd::ti(d, b, t, h)] = acc + A[h] * gacs[ssd::ai(d, b, h, t)];
    }
    __syncthreads();
    for (ll e = threadIdx.x; e < q * P; e += blockDim.x) {  // gx = dt gu + D gy
        ll t = t0 + e / P, p = e % P;
        ll k = ssd::xi(d, b, t, h, p);
        gx[k] = dt[ssd::ti(d, b, t, h)] * gx[k] + D[h * P + p] * gy[k];
    }
    for (ll p = threadIdx.x; p < P; p += blockDim.x) {  // gD partial: sum_t gy x
        T acc = T(0);
        for (ll t = t0; t <= last; ++t) acc += gy[ssd::xi(d, b, t, h, p)] * x[ssd::xi(d, b, t, h, p)];
        gD_p[((b * H + h) * nc + c) * P + p] = acc;
    }
}

// gB and gC of one (b, g, c, 32-step tile i): the block owns gB and gC of the steps in tile i and
// sums the heads of group g in order (deterministic, no per-head (batch, L, H, N) buffer):
//   gC_l = sum_h [ [first_l < 0] exp(acs_l) gy_l^T H_c + sum_{s <= l} DEC_ls (gy_l . u_s) B_s ]
//   gB_s = sum_h [ r_s dt_s x_s^T dH' + sum_{l >= s} DEC_ls (gy_l . u_s) C_l ]
template <class T>
__global__ void __launch_bounds__(SSM_SSD_THREADS)
ssd_bwd_dbc(const T* __restrict__ x, const T* __restrict__ dt, const T* __restrict__ B, const T* __restrict__ C,
            const T* __restrict__ acs, const int* __restrict__ first, const T* __restrict__ states,
            const T* __restrict__ dstates, const T* __restrict__ gy, T* __restrict__ gB, T* __restrict__ gC, ll nb,
            ll L, ll H, ll P, ll G, ll N, ll Q, ll nc, ll ntile) {
    __shared__ T DEC[SSM_SSD_TILE][SSM_SSD_TILE];
    __shared__ T GU[SSM_SSD_TILE][SSM_SSD_TILE];
    Dims d{nb, L, H, P, G, N, Q, nc};
    ll it = blockIdx.x % ntile, c = (blockIdx.x / ntile) % nc, g = (blockIdx.x / (ntile * nc)) % G;
    ll b = blockIdx.x / (ntile * nc * G);
    ll t0 = c * Q, q = min(Q, L - t0), last = t0 + q - 1, i0 = t0 + it * SSM_SSD_TILE;
    if (i0 > last) return;  // a tile past a short last chunk (uniform over the block)
    ll ni = min((ll)SSM_SSD_TILE, last + 1 - i0);
    ll s_lo = max((ll)first[b * L + last], t0);
    ll hpg = H / G;
    // inter-chunk terms, summed over the group's heads; each (l, n) has one owner thread
    for (ll e = threadIdx.x; e < ni * N; e += blockDim.x) {
        ll l = i0 + e / N, n = e % N;
        T gc = T(0), gb = T(0);
        for (ll h = g * hpg; h < (g + 1) * hpg; ++h) {
            const T* Hc = states + ssd::si(d, b, h, c, 0, 0);
            const T* dHn = dstates + ssd::si(d, b, h, c + 1, 0, 0);
            if (first[b * L + l] < 0) {
                T acc = T(0);
                for (ll p = 0; p < P; ++p) acc += gy[ssd::xi(d, b, l, h, p)] * Hc[p * N + n];
                gc += exp(acs[ssd::ai(d, b, h, l)]) * acc;
            }
            if (l >= s_lo) {
                T acc = T(0);
                for (ll p = 0; p < P; ++p) acc += x[ssd::xi(d, b, l, h, p)] * dHn[p * N + n];
                gb += exp(acs[ssd::ai(d, b, h, last)] - acs[ssd::ai(d, b, h, l)]) * dt[ssd::ti(d, b, l, h)] * acc;
            }
        }
        gC[ssd::bi(d, b, l, g, n)] = gc;
        gB[ssd::bi(d, b, l, g, n)] = gb;
    }
    for (ll h = g * hpg; h < (g + 1) * hpg; ++h) {
        // pairs (tile i, s-tile <= i) feed gC of tile i; pairs (l-tile >= i, tile i) feed gB of tile i
        for (ll pass = 0; pass < 2; ++pass) {
            ll o0 = pass == 0 ? t0 : i0, o_end = pass == 0 ? i0 : last;
            for (ll o = o0; o <= o_end; o += SSM_SSD_TILE) {
                ll no = min((ll)SSM_SSD_TILE, last + 1 - o);
                ll l0 = pass == 0 ? i0 : o, nl = pass == 0 ? ni : no;
                ll s0 = pass == 0 ? o : i0, ns = pass == 0 ? no : ni;
                __syncthreads();
                ssd::load_dec(d, acs, first, b, h, l0, nl, s0, ns, DEC);
                for (int e = threadIdx.x; e < SSM_SSD_TILE * SSM_SSD_TILE; e += blockDim.x) {  // gy_l . u_s
                    int li = e / SSM_SSD_TILE, sj = e % SSM_SSD_TILE;
                    T acc = T(0);
                    if (li < nl && sj < ns && DEC[li][sj] != T(0)) {
                        for (ll p = 0; p < P; ++p)
                            acc += gy[ssd::xi(d, b, l0 + li, h, p)] * x[ssd::xi(d, b, s0 + sj, h, p)];
                        acc *= dt[ssd::ti(d, b, s0 + sj, h)];
                    }
                    GU[li][sj] = acc;
                }
                __syncthreads();
                for (ll e = threadIdx.x; e < ni * N; e += blockDim.x) {  // same (l, n) owners as above
                    ll k = e / N, n = e % N;
                    T acc = T(0);
                    if (pass == 0) {
                        for (ll sj = 0; sj < ns; ++sj) {
                            T w = DEC[k][sj] * GU[k][sj];
                            if (w != T(0)) acc += w * B[ssd::bi(d, b, s0 + sj, g, n)];
                        }
                        gC[ssd::bi(d, b, i0 + k, g, n)] += acc;
                    } else {
                        for (ll li = 0; li < nl; ++li) {
                            T w = DEC[li][k] * GU[li][k];
                            if (w != T(0)) acc += w * C[ssd::bi(d, b, l0 + li, g, n)];
                        }
                        gB[ssd::bi(d, b, i0 + k, g, n)] += acc;
                    }
                }
            }
        }
    }
}
