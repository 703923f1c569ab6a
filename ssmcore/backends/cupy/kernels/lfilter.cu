// lfilter (scipy's direct form II transposed) and its adjoint on the GPU.
//
// Semantics: ssmcore/reference/lfilter.py (the specification). Layout, prepared by
// lfilter.py (all C-contiguous): b (Rb, K) and a (Ra, Ka) normalised, zero-padded
// coefficient rows (Ka == 1 for an FIR filter: no feedback terms, as scipy's FIR path,
// so a padded 0 never multiplies an infinite output into NaN); brow, arow (C,) int64
// channel -> row maps; x, y, gy, gx (C, L); zi, zf, gzf, gzi (C, K - 1); gb, ga (C, K)
// in the accumulator type (double / complex<double> for float data).
//
// Work split: one thread per channel, time sequential (each channel is one dependency
// chain; channels are the parallelism). A block owns SSM_LF_THREADS consecutive
// channels and walks time in tiles of TT steps: the block loads the (channels x TT) tile
// of x from the row-major (C, L) array cooperatively (consecutive threads read
// consecutive time steps of one row: contiguous segments of TT * sizeof(T) bytes, where a
// thread-per-row load would touch one cache line per thread and step), each thread runs
// its own row of the tile, and the block stores the tile back the same way. The tile
// rows are padded to TT + 1 elements (TT is a power of two, so the row stride is odd in
// elements: the per-thread phase, thread r reading element r (TT + 1) + j, is free of
// bank conflicts).
//
// The forward tile holds one array (y overwrites x in place: a thread reads and writes
// only its own row); the backward holds gy (gx overwrites it), x and y, so its tiles are
// half as long to stay under the 48 KiB of static shared memory for every dtype.
//
// State: for K <= KCAP (a template bucket, KCAP in {2, 4, 8, 16}) the K - 1 states,
// the coefficients (and, backward, the gradient sums) live in registers: every loop over
// them is fully unrolled with compile-time indices and guarded by the runtime K, so no
// array is indexed at run time (which would put it in local memory). The 16 bucket of
// the wide dtypes' backward may still spill (the compiler decides; spills go to
// per-thread local memory, cached); a 32 bucket (160 values per thread backward) would
// spill and doubled the compile time, so longer filters (K > 16) run the generic kernels:
// state (and backward, the gradient sums) in a global workspace laid out [i * C + c], so
// a warp's accesses to state i are one contiguous segment; coefficients are transposed by the launcher to
// (K, C) for the same reason.
//
// Arithmetic: scipy's operations in scipy's order ((z1 + x b1) - y a1). The source is
// compiled with --fmad=false (lfilter.py): without FMA contraction real results are
// bit-identical to scipy.signal.lfilter and to the Numba backend.
#include "common.cuh"

#ifndef SSM_LF_THREADS
#define SSM_LF_THREADS 128
#endif
// bytes of one tile row: forward (one tile) and backward (three tiles)
#define SSM_LF_FWD_ROW_BYTES 128
#define SSM_LF_BWD_ROW_BYTES 64
// The time loop of a tile is one dependency chain: unrolling it buys no parallelism and
// multiplied NVRTC's time for this source, so it stays a loop.
#define SSM_LF_SERIAL _Pragma("unroll 1")

namespace lf {

template <class T> struct acc_of { typedef double type; };
template <class R> struct acc_of<complex<R> > { typedef complex<double> type; };

template <class T, int ROW_BYTES> struct Tile {
    static constexpr int steps = ROW_BYTES / (int)sizeof(T);  // a power of two: 4..32
    static constexpr int stride = steps + 1;                    // odd: no bank conflicts per row
    static constexpr int elems = SSM_LF_THREADS * stride;
};

// Cooperative coalesced copies of rows [c0, c0 + rows) x steps [t0, t0 + steps) between the
// (C, L) array and the shared tile: element e of the tile goes to thread e mod THREADS, so a
// warp reads or writes 32 consecutive steps of a row (several rows for short tiles).
template <class T, int TS, int TSTRIDE>
__device__ __forceinline__ void tile_load(T* tile, const T* __restrict__ g, long long c0, int rows, long long t0,
                                          int steps, long long L) {
    for (int e = threadIdx.x; e < SSM_LF_THREADS * TS; e += SSM_LF_THREADS) {
        const int r = e / TS, j = e % TS;
        if (r < rows && j < steps) tile[r * TSTRIDE + j] = g[(c0 + r) * L + t0 + j];
    }
}

template <class T, int TS, int TSTRIDE>
__device__ __forceinline__ void tile_store(const T* tile, T* __restrict__ g, long long c0, int rows, long long t0,
                                           int steps, long long L) {
    for (int e = threadIdx.x; e < SSM_LF_THREADS * TS; e += SSM_LF_THREADS) {
        const int r = e / TS, j = e % TS;
        if (r < rows && j < steps) g[(c0 + r) * L + t0 + j] = tile[r * TSTRIDE + j];
    }
}

// One forward step with the state in registers (FIR: no feedback terms).
template <class T, int KCAP, bool FIR>
__device__ __forceinline__ T fwd_step(T (&z)[KCAP], const T (&bc)[KCAP], const T (&ac)[KCAP], const T xn, const int K) {
    if (K == 1) return xn * bc[0];
    const T yn = z[0] + bc[0] * xn;
#pragma unroll
    for (int i = 0; i < KCAP - 1; ++i) {
        if (i < K - 2) {
            z[i] = FIR ? z[i + 1] + xn * bc[i + 1] : (z[i + 1] + xn * bc[i + 1]) - yn * ac[i + 1];
        } else if (i == K - 2) {
            z[i] = FIR ? xn * bc[i + 1] : xn * bc[i + 1] - yn * ac[i + 1];
        }
    }
    return yn;
}

}  // namespace lf

// ---------------------------------------------------------------- forward, state in registers
template <class T, int KCAP>
__global__ void __launch_bounds__(SSM_LF_THREADS)
lfilter_fwd_reg(const T* __restrict__ b, const long long* __restrict__ brow, const T* __restrict__ a,
                const long long* __restrict__ arow, const T* __restrict__ x, const T* __restrict__ zi,
                T* __restrict__ y, T* __restrict__ zf, long long C, long long L, int K, int Ka) {
    typedef lf::Tile<T, SSM_LF_FWD_ROW_BYTES> TL;
    __shared__ ssm::SharedArray<T, TL::elems> tile;
    const long long c0 = (long long)blockIdx.x * SSM_LF_THREADS;
    const long long c = c0 + threadIdx.x;
    const int rows = (int)min((long long)SSM_LF_THREADS, C - c0);
    const bool active = c < C;
    const bool fir = Ka == 1;
    T bc[KCAP], ac[KCAP], z[KCAP];
#pragma unroll
    for (int k = 0; k < KCAP; ++k) {
        bc[k] = ssm::zero_of<T>();
        ac[k] = ssm::zero_of<T>();
        z[k] = ssm::zero_of<T>();
    }
    if (active) {
        const T* br = b + brow[c] * K;
        const T* ar = a + arow[c] * Ka;
#pragma unroll
        for (int k = 0; k < KCAP; ++k) {
            if (k < K) bc[k] = br[k];
            if (k < Ka) ac[k] = ar[k];
            if (k < K - 1) z[k] = zi[c * (K - 1) + k];
        }
    }
    T* tl = &tile[0];
    for (long long t0 = 0; t0 < L; t0 += TL::steps) {
        const int steps = (int)min((long long)TL::steps, L - t0);
        lf::tile_load<T, TL::steps, TL::stride>(tl, x, c0, rows, t0, steps, L);
        __syncthreads();
        if (active) {
            T* row = tl + threadIdx.x * TL::stride;
            if (fir) {
                SSM_LF_SERIAL for (int j = 0; j < steps; ++j) row[j] = lf::fwd_step<T, KCAP, true>(z, bc, ac, row[j], K);
            } else {
                SSM_LF_SERIAL for (int j = 0; j < steps; ++j) row[j] = lf::fwd_step<T, KCAP, false>(z, bc, ac, row[j], K);
            }
        }
        __syncthreads();
        lf::tile_store<T, TL::steps, TL::stride>(tl, y, c0, rows, t0, steps, L);
        __syncthreads();  // the next tile's load overwrites this one
    }
    if (active) {
#pragma unroll
        for (int k = 0; k < KCAP - 1; ++k)
            if (k < K - 1) zf[c * (K - 1) + k] = z[k];
    }
}

// ---------------------------------------------------------------- forward, generic K
// bt (K, C), at (Ka, C): the channels' coefficient rows transposed; ws (K - 1, C) the state.
template <class T>
__global__ void __launch_bounds__(SSM_LF_THREADS)
lfilter_fwd_gen(const T* __restrict__ bt, const T* __restrict__ at, const T* __restrict__ x,
                const T* __restrict__ zi, T* __restrict__ ws, T* __restrict__ y, T* __restrict__ zf, long long C,
                long long L, int K, int Ka) {
    typedef lf::Tile<T, SSM_LF_FWD_ROW_BYTES> TL;
    __shared__ ssm::SharedArray<T, TL::elems> tile;
    const long long c0 = (long long)blockIdx.x * SSM_LF_THREADS;
    const long long c = c0 + threadIdx.x;
    const int rows = (int)min((long long)SSM_LF_THREADS, C - c0);
    const bool active = c < C;
    const bool fir = Ka == 1;
    if (active)
        for (int i = 0; i < K - 1; ++i) ws[i * C + c] = zi[c * (K - 1) + i];
    T* tl = &tile[0];
    for (long long t0 = 0; t0 < L; t0 += TL::steps) {
        const int steps = (int)min((long long)TL::steps, L - t0);
        lf::tile_load<T, TL::steps, TL::stride>(tl, x, c0, rows, t0, steps, L);
        __syncthreads();
        if (active) {
            T* row = tl + threadIdx.x * TL::stride;
            const T b0 = bt[c];
            SSM_LF_SERIAL for (int j = 0; j < steps; ++j) {
                const T xn = row[j];
                const T yn = ws[c] + b0 * xn;
                if (fir) {
                    for (int i = 0; i < K - 2; ++i) ws[i * C + c] = ws[(i + 1) * C + c] + xn * bt[(i + 1) * C + c];
                    ws[(K - 2) * C + c] = xn * bt[(K - 1) * C + c];
                } else {
                    for (int i = 0; i < K - 2; ++i)
                        ws[i * C + c] = (ws[(i + 1) * C + c] + xn * bt[(i + 1) * C + c]) - yn * at[(i + 1) * C + c];
                    ws[(K - 2) * C + c] = xn * bt[(K - 1) * C + c] - yn * at[(K - 1) * C + c];
                }
                row[j] = yn;
            }
        }
        __syncthreads();
        lf::tile_store<T, TL::steps, TL::stride>(tl, y, c0, rows, t0, steps, L);
        __syncthreads();
    }
    if (active)
        for (int i = 0; i < K - 1; ++i) zf[c * (K - 1) + i] = ws[i * C + c];
}

// ---------------------------------------------------------------- backward, state in registers
// Reverse time on the cotangent (reference.lfilter_bwd): w_k holds mu_{n+k}; it enters as
// (gzf, 0) and leaves with gzi = w[:K-1]. gb and ga (C, K) are written only with need_coeffs.
template <class T, int KCAP>
__global__ void __launch_bounds__(SSM_LF_THREADS)
lfilter_bwd_reg(const T* __restrict__ b, const long long* __restrict__ brow, const T* __restrict__ a,
                const long long* __restrict__ arow, const T* __restrict__ x, const T* __restrict__ y,
                const T* __restrict__ gy, const T* __restrict__ gzf, T* __restrict__ gx,
                typename lf::acc_of<T>::type* __restrict__ gb, typename lf::acc_of<T>::type* __restrict__ ga,
                T* __restrict__ gzi, long long C, long long L, int K, int Ka, int need_coeffs) {
    typedef typename lf::acc_of<T>::type A;
    typedef lf::Tile<T, SSM_LF_BWD_ROW_BYTES> TL;
    __shared__ ssm::SharedArray<T, TL::elems> tg;  // gy, overwritten by gx
    __shared__ ssm::SharedArray<T, TL::elems> tx;
    __shared__ ssm::SharedArray<T, TL::elems> ty;
    const long long c0 = (long long)blockIdx.x * SSM_LF_THREADS;
    const long long c = c0 + threadIdx.x;
    const int rows = (int)min((long long)SSM_LF_THREADS, C - c0);
    const bool active = c < C;
    T bc[KCAP], ac[KCAP], w[KCAP];
    A sb[KCAP], sa[KCAP];
#pragma unroll
    for (int k = 0; k < KCAP; ++k) {
        bc[k] = ssm::zero_of<T>();
        ac[k] = ssm::zero_of<T>();
        w[k] = ssm::zero_of<T>();
        sb[k] = ssm::zero_of<A>();
        sa[k] = ssm::zero_of<A>();
    }
    if (active) {
        const T* br = b + brow[c] * K;
        const T* ar = a + arow[c] * Ka;
#pragma unroll
        for (int k = 0; k < KCAP; ++k) {
            if (k < K) bc[k] = br[k];
            if (k < Ka) ac[k] = ar[k];
            if (k < K - 1) w[k] = gzf[c * (K - 1) + k];
        }
    }
    T* g = &tg[0];
    T* xs = &tx[0];
    T* ys = &ty[0];
    for (long long t1 = L; t1 > 0; t1 -= TL::steps) {
        const long long t0 = t1 > TL::steps ? t1 - TL::steps : 0;
        const int steps = (int)(t1 - t0);
        lf::tile_load<T, TL::steps, TL::stride>(g, gy, c0, rows, t0, steps, L);
        if (need_coeffs) {
            lf::tile_load<T, TL::steps, TL::stride>(xs, x, c0, rows, t0, steps, L);
            lf::tile_load<T, TL::steps, TL::stride>(ys, y, c0, rows, t0, steps, L);
        }
        __syncthreads();
        if (active) {
            const int o = threadIdx.x * TL::stride;
            SSM_LF_SERIAL for (int j = steps - 1; j >= 0; --j) {
#pragma unroll
                for (int k = KCAP - 1; k >= 1; --k)
                    if (k < K) w[k] = w[k - 1];
                T m = g[o + j];
#pragma unroll
                for (int k = 1; k < KCAP; ++k)
                    if (k < Ka) m = m - ac[k] * w[k];  // FIR (Ka == 1): no feedback terms
                w[0] = m;
                T s = bc[0] * m;
#pragma unroll
                for (int k = 1; k < KCAP; ++k)
                    if (k < K) s = s + bc[k] * w[k];
                g[o + j] = s;
                if (need_coeffs) {
                    const T xn = xs[o + j];
                    const T yn = ys[o + j];
                    // products in T (as the reference), sums over time in A
#pragma unroll
                    for (int k = 0; k < KCAP; ++k) {
                        if (k < K) sb[k] += A(w[k] * xn);
                        if (k >= 1 && k < Ka) sa[k] -= A(w[k] * yn);
                    }
                }
            }
        }
        __syncthreads();
        lf::tile_store<T, TL::steps, TL::stride>(g, gx, c0, rows, t0, steps, L);
        __syncthreads();
    }
    if (active) {
#pragma unroll
        for (int k = 0; k < KCAP; ++k) {
            if (k < K - 1) gzi[c * (K - 1) + k] = w[k];
            if (need_coeffs && k < K) {
                gb[c * K + k] = sb[k];
                ga[c * K + k] = sa[k];  // 0 at k = 0 and beyond Ka
            }
        }
    }
}

// ---------------------------------------------------------------- backward, generic K
// bt (K, C), at (Ka, C) transposed coefficients; ws (K, C) the cotangent window as a ring
// (logical w_k at slot (h + k) mod K: a time step moves the head instead of K values);
// wsb, wsa (K, C) the gradient sums in A.
template <class T>
__global__ void __launch_bounds__(SSM_LF_THREADS)
lfilter_bwd_gen(const T* __restrict__ bt, const T* __restrict__ at, const T* __restrict__ x,
                const T* __restrict__ y, const T* __restrict__ gy, const T* __restrict__ gzf, T* __restrict__ ws,
                typename lf::acc_of<T>::type* __restrict__ wsb, typename lf::acc_of<T>::type* __restrict__ wsa,
                T* __restrict__ gx, typename lf::acc_of<T>::type* __restrict__ gb,
                typename lf::acc_of<T>::type* __restrict__ ga, T* __restrict__ gzi, long long C, long long L, int K,
                int Ka, int need_coeffs) {
    typedef typename lf::acc_of<T>::type A;
    typedef lf::Tile<T, SSM_LF_BWD_ROW_BYTES> TL;
    __shared__ ssm::SharedArray<T, TL::elems> tg;
    __shared__ ssm::SharedArray<T, TL::elems> tx;
    __shared__ ssm::SharedArray<T, TL::elems> ty;
    const long long c0 = (long long)blockIdx.x * SSM_LF_THREADS;
    const long long c = c0 + threadIdx.x;
    const int rows = (int)min((long long)SSM_LF_THREADS, C - c0);
    const bool active = c < C;
    if (active) {
        for (int k = 0; k < K; ++k) {
            ws[k * C + c] = k < K - 1 ? gzf[c * (K - 1) + k] : ssm::zero_of<T>();
            wsb[k * C + c] = ssm::zero_of<A>();
            wsa[k * C + c] = ssm::zero_of<A>();
        }
    }
    int h = 0;
    T* g = &tg[0];
    T* xs = &tx[0];
    T* ys = &ty[0];
    for (long long t1 = L; t1 > 0; t1 -= TL::steps) {
        const long long t0 = t1 > TL::steps ? t1 - TL::steps : 0;
        const int steps = (int)(t1 - t0);
        lf::tile_load<T, TL::steps, TL::stride>(g, gy, c0, rows, t0, steps, L);
        if (need_coeffs) {
            lf::tile_load<T, TL::steps, TL::stride>(xs, x, c0, rows, t0, steps, L);
            lf::tile_load<T, TL::steps, TL::stride>(ys, y, c0, rows, t0, steps, L);
        }
        __syncthreads();
        if (active) {
            const int o = threadIdx.x * TL::stride;
            SSM_LF_SERIAL for (int j = steps - 1; j >= 0; --j) {
                h = h == 0 ? K - 1 : h - 1;  // shift: w_k <- w_{k-1}; slot h (the old w_{K-1}) takes mu_n
                T m = g[o + j];
                int s_k = h + 1;
                for (int k = 1; k < Ka; ++k, ++s_k) {
                    if (s_k >= K) s_k -= K;
                    m = m - at[k * C + c] * ws[s_k * C + c];
                }
                ws[h * C + c] = m;
                T s = bt[c] * m;
                s_k = h + 1;
                for (int k = 1; k < K; ++k, ++s_k) {
                    if (s_k >= K) s_k -= K;
                    s = s + bt[k * C + c] * ws[s_k * C + c];
                }
                g[o + j] = s;
                if (need_coeffs) {
                    const T xn = xs[o + j];
                    const T yn = ys[o + j];
                    s_k = h;
                    for (int k = 0; k < K; ++k, ++s_k) {
                        if (s_k >= K) s_k -= K;
                        const T wk = ws[s_k * C + c];
                        wsb[k * C + c] += A(wk * xn);
                        if (k >= 1 && k < Ka) wsa[k * C + c] -= A(wk * yn);
                    }
                }
            }
        }
        __syncthreads();
        lf::tile_store<T, TL::steps, TL::stride>(g, gx, c0, rows, t0, steps, L);
        __syncthreads();
    }
    if (active) {
        int s_k = h;
        for (int k = 0; k < K; ++k, ++s_k) {
            if (s_k >= K) s_k -= K;
            if (k < K - 1) gzi[c * (K - 1) + k] = ws[s_k * C + c];
            if (need_coeffs) {
                gb[c * K + k] = wsb[k * C + c];
                ga[c * K + k] = wsa[k * C + c];
            }
        }
    }
}
