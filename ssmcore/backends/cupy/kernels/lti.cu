// CUDA kernels of LTI simulation (ssmcore/backends/cupy/lti.py; contract in ssmcore/reference/lti.py).
//
// Diagonal systems (S4D / S5 / LRU), rows r = (batch element, channel):
//   a *segment* of G lanes (G a power of two <= 32, several rows per warp when
//   G < 32) owns one row; lane sl holds the states n = base + k*G + sl for
//   k < SPL (registers), and rows with N > G*SPL walk their states in groups
//   (the readout is linear in the states, so later groups add to y). The time
//   loop is sequential; the readout sum_n C x is a butterfly over the segment.
//   Time runs in tiles of G steps: lane s of the segment loads u at step s of
//   the tile (coalesced), broadcasts it by shuffle, and keeps the readout of
//   step s, so y is also written G consecutive values at a time.
// Dense systems: one block per batch element, thread i owns state i, the state
//   vector lives in shared memory (two syncs per step).
//
// Every kernel is a template over the compute type T (float, double,
// complex<float>, complex<double>) and, for the diagonal ones, the output type O
// (T, or real_of<T> when the output is its real part).
#include "common.cuh"

typedef long long ssm_ll;

#ifndef SSM_DYNAMIC_SHARED
#define SSM_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace ssm_lti {
using namespace ssm;

// States per lane held in registers (forward: a, b, c, x; backward also lambda and three gradients).
#define SSM_LTI_SPL_FWD 4
#define SSM_LTI_SPL_BWD 2
// Exact re-anchoring interval of the Vandermonde running products (must match lti.py's ANCHOR).
#define SSM_LTI_ANCHOR 64

// Segment sum (butterfly over the G lanes of a segment; every lane ends with the total).
template <class T> __device__ __forceinline__ T seg_sum(T v, int G) {
    for (int m = G >> 1; m >= 1; m >>= 1) v = v + shfl_xor(v, m);
    return v;
}

// x^e by binary exponentiation (exact re-anchoring of running products; x^0 = 1).
template <class T> __device__ __forceinline__ T ipow(T x, ssm_ll e) {
    T p = one_of<T>();
    while (e > 0) {
        if (e & 1) p = p * x;
        e >>= 1;
        if (e > 0) x = x * x;
    }
    return p;
}

// Precision of the exact anchors: double for float types, so that an anchor's own
// error (binary exponentiation compounds to ~l ulp of its working precision in the
// worst case) is negligible next to the <= ANCHOR float products that follow it.
template <class T> struct wide_of { typedef T type; };
template <> struct wide_of<float> { typedef double type; };
template <> struct wide_of<complex<float> > { typedef complex<double> type; };

// w * a^l, computed in wide_of<T> and rounded once.
template <class T> __device__ __forceinline__ T anchor_power(const T& w, const T& a, ssm_ll l) {
    typedef typename wide_of<T>::type W;
    return T(W(w) * ipow(W(a), l));
}

}  // namespace ssm_lti

// ---------------------------------------------------------------------------- diagonal: forward
//
// y[r, t] = project(scale * sum_n C x_t) + D u_t (when `readout`), x_final = x_{L-1}.
// A, B, C, x0, xf: (R, N) T;  D: (R,) O;  u, y: (R, L) O.  Without readout D and y are not touched.
//
// Time chunks (few long rows): blockIdx.y is the chunk c of `chunk` steps
// (nchunk = gridDim.y; one chunk is the plain sequential loop). With nchunk > 1,
// Hs (R, nchunk - 1, N) holds every full chunk's end state started from its first
// input (diag_summary); chunk c's start state is x0 carried exactly through the
// maps (f = a, a^chunk, Hs[c']) of the chunks before it (ssm::apply: a zero state
// is applied as b + f * 0, never as a^chunk * 0). Only the last chunk writes xf.
template <class T, class O>
__global__ void __launch_bounds__(128) diag_fwd(
    const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ C, const O* __restrict__ D,
    const O* __restrict__ u, const T* __restrict__ x0, O* __restrict__ y, T* __restrict__ xf,
    const T* __restrict__ Hs, typename ssm::real_of<T>::type scale, ssm_ll R, ssm_ll N, ssm_ll L, ssm_ll chunk,
    int G, int groups, int readout) {
    using namespace ssm_lti;
    const int SPL = SSM_LTI_SPL_FWD;
    ssm_ll gtid = (ssm_ll)blockIdx.x * blockDim.x + threadIdx.x;
    int lane = threadIdx.x & 31;
    if ((gtid - lane) / G >= R) return;  // the whole warp is past the last row
    ssm_ll r = gtid / G;
    int sl = lane % G, base = lane - sl;
    bool live = r < R;
    ssm_ll rr = live ? r : R - 1;  // lanes past the last row compute row R-1 (for the shuffles) and write nothing
    ssm_ll c = blockIdx.y, nchunk = gridDim.y;
    ssm_ll t_begin = c * chunk, t_end = t_begin + chunk < L ? t_begin + chunk : L;
    for (int grp = 0; grp < groups; ++grp) {
        T a[SPL], b[SPL], cc[SPL], x[SPL];
        bool has[SPL];
#pragma unroll
        for (int k = 0; k < SPL; ++k) {
            ssm_ll n = (ssm_ll)grp * G * SPL + (ssm_ll)k * G + sl;
            has[k] = n < N;
            ssm_ll o = rr * N + n;
            a[k] = has[k] ? A[o] : zero_of<T>();
            b[k] = has[k] ? B[o] : zero_of<T>();
            cc[k] = has[k] ? C[o] : zero_of<T>();
            x[k] = has[k] ? x0[o] : zero_of<T>();
            if (has[k] && c > 0) {
                Affine<T> m;
                m.f = a[k];
                m.a = ipow(a[k], chunk);
                for (ssm_ll q = 0; q < c; ++q) {
                    m.b = Hs[(rr * (nchunk - 1) + q) * N + n];
                    x[k] = ssm::apply(m, x[k]);  // qualified: ADL on std::complex would find std::apply
                }
            }
        }
        for (ssm_ll t0 = t_begin; t0 < t_end; t0 += G) {
            int ns = (int)((t_end - t0) < G ? (t_end - t0) : G);
            O uu = sl < ns ? u[rr * L + t0 + sl] : zero_of<O>();
            O mine = zero_of<O>();
            for (int s = 0; s < ns; ++s) {
                O ut = shfl_idx(uu, base + s);
                T acc = zero_of<T>();
#pragma unroll
                for (int k = 0; k < SPL; ++k) {
                    if (has[k]) {
                        x[k] = a[k] * x[k] + b[k] * ut;
                        acc = acc + cc[k] * x[k];
                    }
                }
                if (readout) {
                    // project before the reduction (Re is linear): a real output sums
                    // one real per lane, half the shuffles of the complex sum
                    O v = seg_sum(project<O>(acc), G);
                    if (sl == s) mine = v;
                }
            }
            if (readout && live && sl < ns) {
                ssm_ll o = rr * L + t0 + sl;
                O v = mine * scale;
                y[o] = grp == 0 ? v + D[rr] * uu : y[o] + v;
            }
        }
        if (live && c == nchunk - 1) {
#pragma unroll
            for (int k = 0; k < SPL; ++k)
                if (has[k]) xf[rr * N + (ssm_ll)grp * G * SPL + (ssm_ll)k * G + sl] = x[k];
        }
    }
}

// Pass 1 of the time-chunked forward: Hs[r, c, n] = the state after full chunk c
// (c < gridDim.y) started from its first input b u_{c*chunk} (the map's b, see
// common.cuh). One lane per state, no readout, so no shuffles: lanes simply run.
template <class T, class O>
__global__ void __launch_bounds__(128) diag_summary(
    const T* __restrict__ A, const T* __restrict__ B, const O* __restrict__ u, T* __restrict__ Hs, ssm_ll R,
    ssm_ll N, ssm_ll L, ssm_ll chunk, ssm_ll nsum) {
    using namespace ssm;
    ssm_ll e = (ssm_ll)blockIdx.x * blockDim.x + threadIdx.x;  // (row, state)
    if (e >= R * N) return;
    ssm_ll r = e / N, n = e % N, c = blockIdx.y;
    T a = A[e], b = B[e];
    const O* ur = u + r * L + c * chunk;
    T x = b * ur[0];
    for (ssm_ll t = 1; t < chunk; ++t) x = a * x + b * ur[t];
    Hs[(r * nsum + c) * N + n] = x;
}

// ---------------------------------------------------------------------------- diagonal: Vandermonde kernel
//
// Kout[r, l] = project(scale * sum_n W[r, n] A[r, n]^l) for l in this block row's chunk
// [blockIdx.y * chunk, ...): running products p_n = W_n A_n^l, re-anchored exactly
// (p = W * A^l by exponentiation) every SSM_LTI_ANCHOR steps, so the error stays that
// of at most ANCHOR products instead of growing with l.
template <class T, class O>
__global__ void __launch_bounds__(128) diag_vandermonde(
    const T* __restrict__ A, const T* __restrict__ W, O* __restrict__ Kout, typename ssm::real_of<T>::type scale,
    ssm_ll R, ssm_ll N, ssm_ll L, int G, int groups, ssm_ll chunk) {
    using namespace ssm_lti;
    const int SPL = SSM_LTI_SPL_FWD;
    ssm_ll gtid = (ssm_ll)blockIdx.x * blockDim.x + threadIdx.x;
    int lane = threadIdx.x & 31;
    if ((gtid - lane) / G >= R) return;
    ssm_ll r = gtid / G;
    int sl = lane % G;
    bool live = r < R;
    ssm_ll rr = live ? r : R - 1;
    ssm_ll l_begin = (ssm_ll)blockIdx.y * chunk;
    ssm_ll l_end = l_begin + chunk < L ? l_begin + chunk : L;
    for (int grp = 0; grp < groups; ++grp) {
        T a[SPL], w[SPL], p[SPL];
        bool has[SPL];
#pragma unroll
        for (int k = 0; k < SPL; ++k) {
            ssm_ll n = (ssm_ll)grp * G * SPL + (ssm_ll)k * G + sl;
            has[k] = n < N;
            a[k] = has[k] ? A[rr * N + n] : zero_of<T>();
            w[k] = has[k] ? W[rr * N + n] : zero_of<T>();
            p[k] = w[k];
        }
        for (ssm_ll t0 = l_begin; t0 < l_end; t0 += G) {
            int ns = (int)((l_end - t0) < G ? (l_end - t0) : G);
            O mine = zero_of<O>();
            for (int s = 0; s < ns; ++s) {
                ssm_ll l = t0 + s;
                bool anchor = ((l - l_begin) % SSM_LTI_ANCHOR) == 0;
                T acc = zero_of<T>();
#pragma unroll
                for (int k = 0; k < SPL; ++k) {
                    if (has[k]) {
                        if (anchor) p[k] = l == 0 ? w[k] : anchor_power(w[k], a[k], l);
                        acc = acc + p[k];
                        p[k] = p[k] * a[k];
                    }
                }
                O v = seg_sum(project<O>(acc), G);  // projected first: see diag_fwd
                if (sl == s) mine = v;
            }
            if (live && sl < ns) {
                ssm_ll o = rr * L + t0 + sl;
                O v = mine * scale;
                Kout[o] = grp == 0 ? v : Kout[o] + v;
            }
        }
    }
}

// ---------------------------------------------------------------------------- diagonal: backward
//
// Adjoint of diag_fwd (reference.lti.diag_backward), every array in T. Per row:
// a forward sweep stores the state entering every chunk of K steps in ck
// (R, nck, N); chunks are then visited last to first, each recomputed from its
// checkpoint into buf (R, K, N) (x_{t0-1} .. x_{t1-2}; x_{t1-1} stays in registers)
// and walked backwards, each step reading x_{t-1} from buf and keeping it as the next x_t.
template <class T>
__global__ void __launch_bounds__(128) diag_bwd(
    const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ C, const T* __restrict__ D,
    const T* __restrict__ u, const T* __restrict__ x0, const T* __restrict__ gy, const T* __restrict__ gfin,
    T* __restrict__ gA, T* __restrict__ gB, T* __restrict__ gC, T* __restrict__ gD, T* __restrict__ gu,
    T* __restrict__ gx0, T* __restrict__ ck, T* __restrict__ buf, typename ssm::real_of<T>::type scale,
    ssm_ll R, ssm_ll N, ssm_ll L, ssm_ll K, ssm_ll nck, int G, int groups) {
    using namespace ssm_lti;
    const int SPL = SSM_LTI_SPL_BWD;
    ssm_ll gtid = (ssm_ll)blockIdx.x * blockDim.x + threadIdx.x;
    int lane = threadIdx.x & 31;
    if ((gtid - lane) / G >= R) return;
    ssm_ll r = gtid / G;
    int sl = lane % G, base = lane - sl;
    bool live = r < R;
    ssm_ll rr = live ? r : R - 1;
    // Lanes past the last row recompute row R-1 but must not write its workspace: they
    // use a private dummy checkpoint/buffer slot (row index R, allocated by the launcher).
    ssm_ll wr = live ? r : R;
    T* ckr = ck + wr * nck * N;
    T* bufr = buf + wr * K * N;
    T gd = zero_of<T>();
    for (int grp = 0; grp < groups; ++grp) {
        T a[SPL], b[SPL], c[SPL], x[SPL], lam[SPL], ga[SPL], gb[SPL], gc[SPL];
        bool has[SPL];
        ssm_ll nn[SPL];
#pragma unroll
        for (int k = 0; k < SPL; ++k) {
            nn[k] = (ssm_ll)grp * G * SPL + (ssm_ll)k * G + sl;
            has[k] = nn[k] < N;
            ssm_ll o = rr * N + nn[k];
            a[k] = has[k] ? A[o] : zero_of<T>();
            b[k] = has[k] ? B[o] : zero_of<T>();
            c[k] = has[k] ? C[o] : zero_of<T>();
            x[k] = has[k] ? x0[o] : zero_of<T>();
            lam[k] = has[k] ? gfin[o] : zero_of<T>();  // a * lambda_{t+1} (+ g_final at the end)
            ga[k] = gb[k] = gc[k] = zero_of<T>();
        }
        // forward sweep: checkpoints (each lane writes and later reads only its own states)
        for (ssm_ll ci = 0; ci < nck; ++ci) {
#pragma unroll
            for (int k = 0; k < SPL; ++k)
                if (has[k]) ckr[ci * N + nn[k]] = x[k];
            ssm_ll t1 = (ci + 1) * K < L ? (ci + 1) * K : L;
            for (ssm_ll t = ci * K; t < t1; ++t) {
                T ut = u[rr * L + t];
#pragma unroll
                for (int k = 0; k < SPL; ++k)
                    if (has[k]) x[k] = a[k] * x[k] + b[k] * ut;
            }
        }
        for (ssm_ll ci = nck - 1; ci >= 0; --ci) {
            ssm_ll t0 = ci * K, t1 = t0 + K < L ? t0 + K : L;
#pragma unroll
            for (int k = 0; k < SPL; ++k) {
                if (has[k]) {
                    x[k] = ckr[ci * N + nn[k]];
                    bufr[nn[k]] = x[k];
                }
            }
            for (ssm_ll t = t0; t < t1; ++t) {
                T ut = u[rr * L + t];
#pragma unroll
                for (int k = 0; k < SPL; ++k) {
                    if (has[k]) {
                        x[k] = a[k] * x[k] + b[k] * ut;
                        if (t + 1 < t1) bufr[(t - t0 + 1) * N + nn[k]] = x[k];  // the last stays in x
                    }
                }
            }
            // reverse walk in tiles of G steps ending at t1 - 1: lane s holds step (tile top - s)
            for (ssm_ll top = t1 - 1; top >= t0; top -= G) {
                int ns = (int)((top - t0 + 1) < G ? (top - t0 + 1) : G);
                T gy_t = sl < ns ? gy[rr * L + top - sl] : zero_of<T>();
                T u_t = sl < ns ? u[rr * L + top - sl] : zero_of<T>();
                T mine = zero_of<T>();
                for (int s = 0; s < ns; ++s) {
                    ssm_ll t = top - s, k0 = t - t0;
                    T gyv = shfl_idx(gy_t, base + s);
                    T ut = shfl_idx(u_t, base + s);
                    T g = gyv * scale;
                    T acc = zero_of<T>();
#pragma unroll
                    for (int k = 0; k < SPL; ++k) {
                        if (has[k]) {
                            // x[k] holds x_t (the recompute ends at x_{t1-1}); x_{t-1} comes from buf
                            T xprev = bufr[k0 * N + nn[k]];
                            T li = g * c[k] + lam[k];  // lambda_t
                            gc[k] = gc[k] + g * x[k];
                            ga[k] = ga[k] + li * xprev;
                            gb[k] = gb[k] + li * ut;
                            acc = acc + b[k] * li;
                            lam[k] = a[k] * li;
                            x[k] = xprev;
                        }
                    }
                    acc = seg_sum(acc, G);
                    if (sl == s) mine = acc;
                    if (grp == 0) gd = gd + gyv * ut;
                }
                if (live && sl < ns) {
                    ssm_ll o = rr * L + top - sl;
                    gu[o] = grp == 0 ? mine + D[rr] * gy_t : gu[o] + mine;
                }
            }
        }
        if (live) {
#pragma unroll
            for (int k = 0; k < SPL; ++k) {
                if (has[k]) {
                    ssm_ll o = rr * N + nn[k];
                    gA[o] = ga[k];
                    gB[o] = gb[k];
                    gC[o] = gc[k];
                    gx0[o] = lam[k];
                }
            }
        }
    }
    if (live && sl == 0) gD[rr] = gd;
}

// ---------------------------------------------------------------------------- dense: forward
//
// One block per batch element b; operands through the index map idx (batch, 6).
// Shared memory: x, xn (N each) and u_t double-buffered (2 M).
// ck (batch, nck, N) gets the state entering steps 0, K, 2K, ... when keep != 0.
template <class T>
__global__ void dense_fwd(const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ C,
                          const T* __restrict__ D, const T* __restrict__ u, const T* __restrict__ x0,
                          const ssm_ll* __restrict__ idx, T* __restrict__ y, T* __restrict__ xf, T* __restrict__ ck,
                          ssm_ll N, ssm_ll M, ssm_ll P, ssm_ll L, ssm_ll K, ssm_ll nck, int keep) {
    using namespace ssm;
    SSM_DYNAMIC_SHARED(ssm_smem);
    T* xs = reinterpret_cast<T*>(ssm_smem);
    T* xn = xs + N;
    T* us = xn + N;  // 2 * M
    ssm_ll bi = blockIdx.x;
    int tid = threadIdx.x, nt = blockDim.x;
    const ssm_ll* ix = idx + bi * 6;
    const T* a = A + ix[0] * N * N;
    const T* bm = B + ix[1] * N * M;
    const T* c = C + ix[2] * P * N;
    const T* d = D + ix[3] * P * M;
    const T* ub = u + ix[4] * M * L;
    for (ssm_ll i = tid; i < N; i += nt) xs[i] = x0[ix[5] * N + i];
    __syncthreads();
    for (ssm_ll t = 0; t < L; ++t) {
        T* ut = us + (t & 1) * M;
        if (keep && t % K == 0)
            for (ssm_ll i = tid; i < N; i += nt) ck[(bi * nck + t / K) * N + i] = xs[i];
        for (ssm_ll m = tid; m < M; m += nt) ut[m] = ub[m * L + t];
        __syncthreads();
        for (ssm_ll i = tid; i < N; i += nt) {
            T acc = zero_of<T>();
            for (ssm_ll j = 0; j < N; ++j) acc = acc + a[i * N + j] * xs[j];
            for (ssm_ll m = 0; m < M; ++m) acc = acc + bm[i * M + m] * ut[m];
            xn[i] = acc;
        }
        __syncthreads();
        for (ssm_ll p = tid; p < P; p += nt) {
            T acc = zero_of<T>();
            for (ssm_ll i = 0; i < N; ++i) acc = acc + c[p * N + i] * xn[i];
            for (ssm_ll m = 0; m < M; ++m) acc = acc + d[p * M + m] * ut[m];
            y[(bi * P + p) * L + t] = acc;
        }
        T* sw = xs;  // the new state becomes current; the old buffer is written next step
        xs = xn;
        xn = sw;
    }
    for (ssm_ll i = tid; i < N; i += nt) xf[bi * N + i] = xs[i];
}

// ---------------------------------------------------------------------------- dense: backward
//
// Reverse-time adjoint (reference.lti.simulate_backward) for batch element b:
// chunks of K steps last to first, each recomputed from ck into buf (batch, Kb + 1, N),
// Kb = min(K, L). Gradients per batch element, each entry owned by one thread
// (no atomics). Shared memory: lam, r (N each), gy_t (P), u_t (M).
template <class T>
__global__ void dense_bwd(const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ C,
                          const T* __restrict__ D, const T* __restrict__ u, const ssm_ll* __restrict__ idx,
                          const T* __restrict__ ck, const T* __restrict__ gy, const T* __restrict__ gfin,
                          T* __restrict__ gA, T* __restrict__ gB, T* __restrict__ gC, T* __restrict__ gD,
                          T* __restrict__ gu, T* __restrict__ gx0, T* __restrict__ buf, ssm_ll N, ssm_ll M,
                          ssm_ll P, ssm_ll L, ssm_ll K, ssm_ll nck, ssm_ll Kb) {
    using namespace ssm;
    SSM_DYNAMIC_SHARED(ssm_smem);
    T* lam = reinterpret_cast<T*>(ssm_smem);
    T* rr = lam + N;
    T* gs = rr + N;
    T* us = gs + P;
    ssm_ll bi = blockIdx.x;
    int tid = threadIdx.x, nt = blockDim.x;
    const ssm_ll* ix = idx + bi * 6;
    const T* a = A + ix[0] * N * N;
    const T* bm = B + ix[1] * N * M;
    const T* c = C + ix[2] * P * N;
    const T* d = D + ix[3] * P * M;
    const T* ub = u + ix[4] * M * L;
    const T* g = gy + bi * P * L;
    T* ga = gA + bi * N * N;
    T* gb = gB + bi * N * M;
    T* gc = gC + bi * P * N;
    T* gd = gD + bi * P * M;
    T* bb = buf + bi * (Kb + 1) * N;
    for (ssm_ll e = tid; e < N * N; e += nt) ga[e] = zero_of<T>();
    for (ssm_ll e = tid; e < N * M; e += nt) gb[e] = zero_of<T>();
    for (ssm_ll e = tid; e < P * N; e += nt) gc[e] = zero_of<T>();
    for (ssm_ll e = tid; e < P * M; e += nt) gd[e] = zero_of<T>();
    for (ssm_ll i = tid; i < N; i += nt) rr[i] = gfin[bi * N + i];
    ssm_ll nchunk = (L + K - 1) / K;
    for (ssm_ll ci = nchunk - 1; ci >= 0; --ci) {
        ssm_ll t0 = ci * K, t1 = t0 + K < L ? t0 + K : L;
        for (ssm_ll i = tid; i < N; i += nt) bb[i] = ci < nck ? ck[(bi * nck + ci) * N + i] : zero_of<T>();
        __syncthreads();
        for (ssm_ll t = t0; t < t1; ++t) {
            const T* xp = bb + (t - t0) * N;
            for (ssm_ll i = tid; i < N; i += nt) {
                T acc = zero_of<T>();
                for (ssm_ll j = 0; j < N; ++j) acc = acc + a[i * N + j] * xp[j];
                for (ssm_ll m = 0; m < M; ++m) acc = acc + bm[i * M + m] * ub[m * L + t];
                bb[(t - t0 + 1) * N + i] = acc;
            }
            __syncthreads();
        }
        for (ssm_ll t = t1 - 1; t >= t0; --t) {
            const T* xprev = bb + (t - t0) * N;
            const T* xcur = xprev + N;
            for (ssm_ll p = tid; p < P; p += nt) gs[p] = g[p * L + t];
            for (ssm_ll m = tid; m < M; m += nt) us[m] = ub[m * L + t];
            __syncthreads();
            for (ssm_ll i = tid; i < N; i += nt) {  // lambda_t = C^T gy_t + A^T lambda_{t+1}
                T acc = rr[i];
                for (ssm_ll p = 0; p < P; ++p) acc = acc + c[p * N + i] * gs[p];
                lam[i] = acc;
            }
            __syncthreads();
            for (ssm_ll m = tid; m < M; m += nt) {  // gu_t = B^T lambda_t + D^T gy_t
                T acc = zero_of<T>();
                for (ssm_ll i = 0; i < N; ++i) acc = acc + bm[i * M + m] * lam[i];
                for (ssm_ll p = 0; p < P; ++p) acc = acc + d[p * M + m] * gs[p];
                gu[(bi * M + m) * L + t] = acc;
            }
            for (ssm_ll e = tid; e < N * N; e += nt) ga[e] = ga[e] + lam[e / N] * xprev[e % N];
            for (ssm_ll e = tid; e < N * M; e += nt) gb[e] = gb[e] + lam[e / M] * us[e % M];
            for (ssm_ll e = tid; e < P * N; e += nt) gc[e] = gc[e] + gs[e / N] * xcur[e % N];
            for (ssm_ll e = tid; e < P * M; e += nt) gd[e] = gd[e] + gs[e / M] * us[e % M];
            for (ssm_ll j = tid; j < N; j += nt) {  // r = A^T lambda_t
                T acc = zero_of<T>();
                for (ssm_ll i = 0; i < N; ++i) acc = acc + a[i * N + j] * lam[i];
                rr[j] = acc;
            }
            __syncthreads();
        }
    }
    for (ssm_ll i = tid; i < N; i += nt) gx0[bi * N + i] = rr[i];
}
