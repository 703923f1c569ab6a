// Linear scan h_t = a_t h_{t-1} + b_t on the GPU: forward and fused backward.
//
// Layout (as ssmcore/reference/scan.py): a (Ra, La) rows with La in {1, L}
// (La == 1: constant in time, read with time stride 0), arow (C,) int64
// channel -> row, b / h / gh / g (C, L) C-contiguous, one scalar type T.
// `rev` kernels walk time backwards by index arithmetic (physical
// t = L-1-s for logical step s), never on flipped copies.
//
// Work unit: one warp per (channel, chunk). A chunk is the logical steps
// [j*Lc, min((j+1)*Lc, L)), walked in tiles of 32 lanes x 4 consecutive steps.
// Per tile: each lane folds its (up to) 4 steps into an affine map, an
// inclusive warp scan of the maps gives every lane the map of the lanes below
// it, the carry entering the tile gives every lane its start state, and each
// lane re-runs its own 4 steps sequentially from that start (so outputs inside
// a lane are the plain recurrence). The carry to the next tile is lane `last`'s
// final state, broadcast with __shfl_sync. The next tile's loads are issued
// before the current tile's shuffles (one tile of prefetch per warp).
//
// Many channels: one chunk per channel (Lc = L, starts = h0). Few long series:
// pass 1 (`*_summary`) writes each chunk's map (f, a, b) without writing
// outputs, `scan_carry` scans the maps of each channel (one block per channel)
// into every chunk's true start state, never dividing by products, and pass 2
// (`*_tiles`) recomputes each chunk from its start. Workspace: O(C x chunks).
//
// Backward (no conjugation): in the adjoint's own order (the reverse of the
// forward's), g_s = a'_s g_{s-1} + gh_s with a'_s the forward coefficient of
// the previous adjoint step (a'_0 = 1, g_{-1} = gfinal): the same recurrence
// with coefficients shifted by one step, written in the form the reference
// evaluates (gh + a g, never a gh + a g). ga_s = g_s h_prev_s, gh0 = a g at the
// last adjoint step. Constant-a ga: per-lane partial sums, a butterfly warp
// sum per chunk, then `scan_ga_sum` over chunks (fixed order, no atomics).
#include "common.cuh"

using ssm::Affine;

#define SSM_LANES 32
#define SSM_STEPS 4
#define SSM_TILE (SSM_LANES * SSM_STEPS)
// Block sizes the launchers use (scan.py's THREADS, CARRY_THREADS, GA_SUM_THREADS):
// as launch bounds they guarantee every instantiation fits its launch.
#define SSM_THREADS 256
#define SSM_CARRY_THREADS 512
#define SSM_GA_SUM_THREADS 256

// Four consecutive elements, for 16-byte vector loads/stores (aligned rows only).
template <class T> struct alignas(16) Vec4 {
    T v[4];
};

__device__ __forceinline__ long long phys(long long s, long long L, bool rev) { return rev ? L - 1 - s : s; }

// Elements of logical steps s0 .. s0+n-1 of a row, in logical order (k >= n: zero).
// `vec`: the row start is 16-byte aligned and L % 4 == 0, so a full group of
// four (logical s0 % 4 == 0) is one aligned Vec4 in both directions.
template <class T>
__device__ __forceinline__ void load4(const T* __restrict__ row, long long s0, int n, long long L, bool rev, bool vec,
                                      T (&out)[4]) {
    if (vec && n == 4) {
        Vec4<T> q = *reinterpret_cast<const Vec4<T>*>(row + (rev ? L - 4 - s0 : s0));
#pragma unroll
        for (int k = 0; k < 4; ++k) out[k] = q.v[rev ? 3 - k : k];
    } else {
#pragma unroll
        for (int k = 0; k < 4; ++k) out[k] = k < n ? row[phys(s0 + k, L, rev)] : ssm::zero_of<T>();
    }
}

// Coefficients: a time-varying row (astep) or one constant value.
template <class T>
__device__ __forceinline__ void load4a(const T* __restrict__ row, bool astep, long long s0, int n, long long L, bool rev,
                                       bool vec, T (&out)[4]) {
    if (astep) {
        load4(row, s0, n, L, rev, vec, out);
    } else {
        T c = row[0];
#pragma unroll
        for (int k = 0; k < 4; ++k) out[k] = c;
    }
}

template <class T>
__device__ __forceinline__ void store4(T* __restrict__ row, long long s0, int n, long long L, bool rev, bool vec,
                                       const T (&v)[4]) {
    if (vec && n == 4) {
        Vec4<T> q;
#pragma unroll
        for (int k = 0; k < 4; ++k) q.v[rev ? 3 - k : k] = v[k];
        *reinterpret_cast<Vec4<T>*>(row + (rev ? L - 4 - s0 : s0)) = q;
    } else {
#pragma unroll
        for (int k = 0; k < 4; ++k)
            if (k < n) row[phys(s0 + k, L, rev)] = v[k];
    }
}

__device__ __forceinline__ int lane_count(long long s0, long long s_end) {
    long long n = s_end - s0;
    return n <= 0 ? 0 : (n >= 4 ? 4 : (int)n);
}

// The map of one lane's n >= 1 steps (coefficients c, inputs y), run sequentially.
template <class T> __device__ __forceinline__ Affine<T> lane_map(const T (&c)[4], const T (&y)[4], int n) {
    Affine<T> m = ssm::affine_step(c[0], y[0]);
#pragma unroll
    for (int k = 1; k < 4; ++k) {
        if (k < n) {
            m.b = ssm::madd(c[k], m.b, y[k]);
            m.a = c[k] * m.a;
        }
    }
    return m;
}

// Index of the warp's work item, or -1 past the end (whole warps return together).
__device__ __forceinline__ long long warp_item(long long nitem) {
    long long w = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    return w < nitem ? w : -1;
}

// Backward coefficients of a lane: a'_k = a(step s0+k-1), i.e. the previous lane's
// last coefficient for k = 0 (`a_in` for lane 0: the previous tile's, or 1 at s == 0).
template <class T>
__device__ __forceinline__ void shift_coeffs(const T (&av)[4], const T& a_in, int lane, T (&ap)[4]) {
    T up = ssm::shfl_up(av[3], 1u);
    ap[0] = lane == 0 ? a_in : up;
#pragma unroll
    for (int k = 1; k < 4; ++k) ap[k] = av[k - 1];
}

// The coefficient entering a backward chunk starting at logical step s.
template <class T>
__device__ __forceinline__ T bwd_a_in(const T* __restrict__ arow_p, bool astep, long long s, long long L, bool rev) {
    if (s == 0) return ssm::one_of<T>();
    return arow_p[astep ? phys(s - 1, L, rev) : 0];
}

// --------------------------------------------------------------------------- forward

template <class T>
__global__ void __launch_bounds__(SSM_THREADS) scan_fwd_tiles(const T* __restrict__ a, const long long* __restrict__ arow, long long La,
                               const T* __restrict__ b, const T* __restrict__ starts, T* __restrict__ out, long long C,
                               long long L, long long nch, long long Lc, int reverse, int vec) {
    long long item = warp_item(C * nch);
    if (item < 0) return;
    const int lane = threadIdx.x & 31;
    const long long c = item / nch, j = item - c * nch;
    const long long s_begin = j * Lc;
    const long long s_end = min(L, s_begin + Lc);
    const bool rev = reverse != 0, vv = vec != 0, astep = La != 1;
    const T* arow_p = a + arow[c] * La;
    const T* brow = b + c * L;
    T* orow = out + c * L;
    T carry = starts[item];

    T an[4], bn[4];
    long long s0 = s_begin + lane * SSM_STEPS;
    int n = lane_count(s0, s_end);
    load4a(arow_p, astep, s0, n, L, rev, vv, an);
    load4(brow, s0, n, L, rev, vv, bn);
    for (long long st = s_begin; st < s_end; st += SSM_TILE) {
        T av[4], bv[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            av[k] = an[k];
            bv[k] = bn[k];
        }
        const long long s0c = s0;
        const int nc = n;
        s0 += SSM_TILE;
        n = lane_count(s0, s_end);
        if (st + SSM_TILE < s_end) {  // prefetch the next tile
            load4a(arow_p, astep, s0, n, L, rev, vv, an);
            load4(brow, s0, n, L, rev, vv, bn);
        }
        Affine<T> m = lane_map(av, bv, nc);
        ssm::warp_scan_inclusive(m, lane);
        T end = ssm::apply(m, carry);
        T x = ssm::shfl_up(end, 1u);
        if (lane == 0) x = carry;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            if (k < nc) {
                x = ssm::madd(av[k], x, bv[k]);
                bv[k] = x;
            }
        }
        store4(orow, s0c, nc, L, rev, vv, bv);
        const int last = (int)((min(s_end - st, (long long)SSM_TILE) - 1) >> 2);
        carry = ssm::shfl_idx(x, last);
    }
}

// Pass 1 of the chunked forward: the map (f, a, b) of every chunk; nothing else is written.
template <class T>
__global__ void __launch_bounds__(SSM_THREADS) scan_fwd_summary(const T* __restrict__ a, const long long* __restrict__ arow, long long La,
                                 const T* __restrict__ b, T* __restrict__ F, T* __restrict__ P, T* __restrict__ S,
                                 long long C, long long L, long long nch, long long Lc, int reverse, int vec) {
    long long item = warp_item(C * nch);
    if (item < 0) return;
    const int lane = threadIdx.x & 31;
    const long long c = item / nch, j = item - c * nch;
    const long long s_begin = j * Lc;
    const long long s_end = min(L, s_begin + Lc);
    const bool rev = reverse != 0, vv = vec != 0, astep = La != 1;
    const T* arow_p = a + arow[c] * La;
    const T* brow = b + c * L;

    T an[4], bn[4];
    long long s0 = s_begin + lane * SSM_STEPS;
    int n = lane_count(s0, s_end);
    load4a(arow_p, astep, s0, n, L, rev, vv, an);
    load4(brow, s0, n, L, rev, vv, bn);
    Affine<T> chunk;
    for (long long st = s_begin; st < s_end; st += SSM_TILE) {
        T av[4], bv[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            av[k] = an[k];
            bv[k] = bn[k];
        }
        const int nc = n;
        s0 += SSM_TILE;
        n = lane_count(s0, s_end);
        if (st + SSM_TILE < s_end) {
            load4a(arow_p, astep, s0, n, L, rev, vv, an);
            load4(brow, s0, n, L, rev, vv, bn);
        }
        Affine<T> m = lane_map(av, bv, nc);
        ssm::warp_scan_inclusive(m, lane);
        const int last = (int)((min(s_end - st, (long long)SSM_TILE) - 1) >> 2);
        Affine<T> tile = ssm::shfl_idx(m, last);
        chunk = st == s_begin ? tile : ssm::combine(chunk, tile);
    }
    if (lane == 0) {
        F[item] = chunk.f;
        P[item] = chunk.a;
        S[item] = chunk.b;
    }
}

// --------------------------------------------------------------------------- chunk carries

#define SSM_CARRY_PER_THREAD 4
#define SSM_MAX_WARPS 32

// Start state of every chunk: starts[c, 0] = h0[c], starts[c, j+1] = map_j(starts[c, j]).
// One block per channel (blockDim a multiple of 32, at most SSM_CARRY_THREADS); each round
// covers blockDim * 4 chunks: every thread folds its 4 consecutive maps, a warp
// scan and a scan of the warp totals give each thread the map of the chunks
// before it, and the thread then walks its own chunks sequentially.
template <class T>
__global__ void __launch_bounds__(SSM_CARRY_THREADS) scan_carry(const T* __restrict__ F, const T* __restrict__ P, const T* __restrict__ S,
                           const T* __restrict__ h0, T* __restrict__ starts, long long C, long long nch) {
    __shared__ ssm::SharedArray<T, SSM_MAX_WARPS> wf, wa, wb;
    __shared__ ssm::SharedArray<T, 1> next_carry;
    const long long c = blockIdx.x;
    if (c >= C) return;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nwarp = blockDim.x >> 5;
    const long long base = c * nch;
    T carry = h0[c];
    const long long per_round = (long long)blockDim.x * SSM_CARRY_PER_THREAD;
    for (long long r0 = 0; r0 < nch; r0 += per_round) {
        const long long j0 = r0 + (long long)threadIdx.x * SSM_CARRY_PER_THREAD;
        const int n = (int)max(0LL, min((long long)SSM_CARRY_PER_THREAD, nch - j0));
        Affine<T> mine[SSM_CARRY_PER_THREAD];
#pragma unroll
        for (int q = 0; q < SSM_CARRY_PER_THREAD; ++q) {
            if (q < n) {
                mine[q].f = F[base + j0 + q];
                mine[q].a = P[base + j0 + q];
                mine[q].b = S[base + j0 + q];
            } else {
                mine[q] = ssm::affine_step(ssm::zero_of<T>(), ssm::zero_of<T>());  // never read by a valid chunk
            }
        }
        Affine<T> m = mine[0];
#pragma unroll
        for (int q = 1; q < SSM_CARRY_PER_THREAD; ++q)
            if (q < n) m = ssm::combine(m, mine[q]);
        ssm::warp_scan_inclusive(m, lane);
        Affine<T> below = ssm::shfl_up(m, 1u);  // exclusive prefix inside the warp (lane 0: none)
        if (lane == 31) {
            wf[w] = m.f;
            wa[w] = m.a;
            wb[w] = m.b;
        }
        __syncthreads();
        if (w == 0) {
            Affine<T> t;
            if (lane < nwarp) {
                t.f = wf[lane];
                t.a = wa[lane];
                t.b = wb[lane];
            } else {
                t = ssm::affine_step(ssm::zero_of<T>(), ssm::zero_of<T>());
            }
            ssm::warp_scan_inclusive(t, lane);
            if (lane < nwarp) {
                wf[lane] = t.f;
                wa[lane] = t.a;
                wb[lane] = t.b;
            }
        }
        __syncthreads();
        T x = carry;
        if (w > 0) {
            Affine<T> wp;
            wp.f = wf[w - 1];
            wp.a = wa[w - 1];
            wp.b = wb[w - 1];
            x = ssm::apply(wp, x);
        }
        if (lane > 0) x = ssm::apply(below, x);
#pragma unroll
        for (int q = 0; q < SSM_CARRY_PER_THREAD; ++q) {
            if (q < n) {
                starts[base + j0 + q] = x;
                x = ssm::apply(mine[q], x);
            }
        }
        if (n > 0 && (j0 + n == nch || j0 + n == r0 + per_round)) next_carry[0] = x;
        __syncthreads();
        carry = next_carry[0];
        __syncthreads();  // the shared totals are rewritten by the next round
    }
}

// ga of constant-in-time coefficients: ga[c] = sum over chunks of part[c, j], in a fixed order.
template <class T>
__global__ void __launch_bounds__(SSM_GA_SUM_THREADS) scan_ga_sum(const T* __restrict__ part, T* __restrict__ ga, long long C, long long nch) {
    __shared__ ssm::SharedArray<T, SSM_GA_SUM_THREADS> buf;
    const long long c = blockIdx.x;
    if (c >= C) return;
    T acc = ssm::zero_of<T>();
    for (long long j = threadIdx.x; j < nch; j += blockDim.x) acc = acc + part[c * nch + j];
    buf[threadIdx.x] = acc;
    __syncthreads();
    for (int h = blockDim.x >> 1; h > 0; h >>= 1) {  // blockDim.x is a power of two
        if ((int)threadIdx.x < h) buf[threadIdx.x] = buf[threadIdx.x] + buf[threadIdx.x + h];
        __syncthreads();
    }
    if (threadIdx.x == 0) ga[c] = buf[0];
}

// --------------------------------------------------------------------------- backward

// Pass 2 (or the only pass): adjoint states g, ga and gh0 of each (channel, chunk).
// `rev` here is the adjoint's direction (the forward's reversed). `starts[item]`
// is the adjoint state entering the chunk (gfinal for the first chunk).
// need_a == 0: h and ga are never touched.
template <class T>
__global__ void __launch_bounds__(SSM_THREADS) scan_bwd_tiles(const T* __restrict__ a, const long long* __restrict__ arow, long long La,
                               const T* __restrict__ h, const T* __restrict__ h0, const T* __restrict__ gh,
                               const T* __restrict__ starts, T* __restrict__ g, T* __restrict__ ga,
                               T* __restrict__ ga_part, T* __restrict__ gh0, long long C, long long L, long long nch,
                               long long Lc, int reverse, int vec, int need_a) {
    long long item = warp_item(C * nch);
    if (item < 0) return;
    const int lane = threadIdx.x & 31;
    const long long c = item / nch, j = item - c * nch;
    const long long s_begin = j * Lc;
    const long long s_end = min(L, s_begin + Lc);
    const bool rev = reverse != 0, vv = vec != 0, astep = La != 1, with_ga = need_a != 0;
    const T* arow_p = a + arow[c] * La;
    const T* hrow = h + c * L;
    const T* yrow = gh + c * L;
    T* grow = g + c * L;
    T* garow = with_ga && astep ? ga + c * L : ga;
    T carry = starts[item];
    T a_in = bwd_a_in(arow_p, astep, s_begin, L, rev);
    T acc = ssm::zero_of<T>();

    T an[4], yn[4], hn[4];
    long long s0 = s_begin + lane * SSM_STEPS;
    int n = lane_count(s0, s_end);
    load4a(arow_p, astep, s0, n, L, rev, vv, an);
    load4(yrow, s0, n, L, rev, vv, yn);
    if (with_ga) load4(hrow, s0, n, L, rev, vv, hn);
    for (long long st = s_begin; st < s_end; st += SSM_TILE) {
        T av[4], yv[4], hv[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            av[k] = an[k];
            yv[k] = yn[k];
            hv[k] = with_ga ? hn[k] : ssm::zero_of<T>();
        }
        const long long s0c = s0;
        const int nc = n;
        s0 += SSM_TILE;
        n = lane_count(s0, s_end);
        if (st + SSM_TILE < s_end) {
            load4a(arow_p, astep, s0, n, L, rev, vv, an);
            load4(yrow, s0, n, L, rev, vv, yn);
            if (with_ga) load4(hrow, s0, n, L, rev, vv, hn);
        }
        T ap[4];
        shift_coeffs(av, a_in, lane, ap);
        // h_prev of the lane's last step: the next lane's first state, else a direct read (or h0 at the end).
        T hprev_last = ssm::zero_of<T>();
        if (with_ga) {
            T dn = ssm::shfl_down(hv[0], 1u);
            const long long after = s0c + nc;
            if (nc == 4 && lane < 31 && after < s_end)
                hprev_last = dn;
            else if (nc > 0)
                hprev_last = after < L ? hrow[phys(after, L, rev)] : h0[c];
        }
        Affine<T> m = lane_map(ap, yv, nc);
        ssm::warp_scan_inclusive(m, lane);
        T end = ssm::apply(m, carry);
        T x = ssm::shfl_up(end, 1u);
        if (lane == 0) x = carry;
        T gv[4], gav[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            gav[k] = ssm::zero_of<T>();
            if (k < nc) {
                x = ssm::madd(ap[k], x, yv[k]);
                gv[k] = x;
                if (with_ga) {
                    T hp = k + 1 < nc ? hv[k + 1 < 4 ? k + 1 : 3] : hprev_last;
                    T e = x * hp;
                    if (astep)
                        gav[k] = e;
                    else
                        acc = acc + e;
                }
            }
        }
        store4(grow, s0c, nc, L, rev, vv, gv);
        if (with_ga && astep) store4(garow, s0c, nc, L, rev, vv, gav);
        if (nc > 0 && s0c + nc == L) gh0[c] = av[nc - 1] * x;  // the adjoint's last step: gh0 = a g
        const int last = (int)((min(s_end - st, (long long)SSM_TILE) - 1) >> 2);
        carry = ssm::shfl_idx(x, last);
        a_in = ssm::shfl_idx(av[3], 31);  // used only when a next (full-tile-preceded) tile exists
    }
    if (with_ga && !astep) {
        T total = ssm::warp_sum(acc);
        if (lane == 0) ga_part[item] = total;
    }
}

// Pass 1 of the chunked backward: the map (f, a, b) of every chunk of the adjoint recurrence.
template <class T>
__global__ void __launch_bounds__(SSM_THREADS) scan_bwd_summary(const T* __restrict__ a, const long long* __restrict__ arow, long long La,
                                 const T* __restrict__ gh, T* __restrict__ F, T* __restrict__ P, T* __restrict__ S,
                                 long long C, long long L, long long nch, long long Lc, int reverse, int vec) {
    long long item = warp_item(C * nch);
    if (item < 0) return;
    const int lane = threadIdx.x & 31;
    const long long c = item / nch, j = item - c * nch;
    const long long s_begin = j * Lc;
    const long long s_end = min(L, s_begin + Lc);
    const bool rev = reverse != 0, vv = vec != 0, astep = La != 1;
    const T* arow_p = a + arow[c] * La;
    const T* yrow = gh + c * L;
    T a_in = bwd_a_in(arow_p, astep, s_begin, L, rev);

    T an[4], yn[4];
    long long s0 = s_begin + lane * SSM_STEPS;
    int n = lane_count(s0, s_end);
    load4a(arow_p, astep, s0, n, L, rev, vv, an);
    load4(yrow, s0, n, L, rev, vv, yn);
    Affine<T> chunk;
    for (long long st = s_begin; st < s_end; st += SSM_TILE) {
        T av[4], yv[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            av[k] = an[k];
            yv[k] = yn[k];
        }
        const int nc = n;
        s0 += SSM_TILE;
        n = lane_count(s0, s_end);
        if (st + SSM_TILE < s_end) {
            load4a(arow_p, astep, s0, n, L, rev, vv, an);
            load4(yrow, s0, n, L, rev, vv, yn);
        }
        T ap[4];
        shift_coeffs(av, a_in, lane, ap);
        Affine<T> m = lane_map(ap, yv, nc);
        ssm::warp_scan_inclusive(m, lane);
        const int last = (int)((min(s_end - st, (long long)SSM_TILE) - 1) >> 2);
        Affine<T> tile = ssm::shfl_idx(m, last);
        chunk = st == s_begin ? tile : ssm::combine(chunk, tile);
        a_in = ssm::shfl_idx(av[3], 31);
    }
    if (lane == 0) {
        F[item] = chunk.f;
        P[item] = chunk.a;
        S[item] = chunk.b;
    }
}
