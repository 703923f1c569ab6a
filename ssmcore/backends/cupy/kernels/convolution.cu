// CUDA kernels of the convolution mode (ssmcore/backends/cupy/convolution.py;
// contract in ssmcore/reference/convolution.py).
//
// vandermonde_bwd: pullback of the S4D Vandermonde kernel
//     K[c, h, l] = Re(sum_n W[c, h, n] Ad[h, n]^l),   Ad = exp(log_ad).
// For a real cotangent G (C, H, L), thread (c, h, n) of chunk blockIdx.y (steps
// l in [l_begin, l_end)) accumulates
//     Wp[chunk, c, h, n] = sum_l G[c, h, l] Ad^l
//     Yp[chunk, c, h, n] = sum_l G[c, h, l] l Ad^(l-1)
// by running products p = Ad^l, q = Ad^(l-1), re-anchored every SSM_CONV_ANCHOR
// steps (and at the chunk start) from exp(l log_ad), so the rounding error of a
// power is that of at most SSM_CONV_ANCHOR products, not of l of them. The
// launcher sums the chunks and forms ad_bar = sum_c W Y: memory O(C H N nchunk + C H L),
// never (H, N, L). Threads of a warp share (c, h) for N >= 32, so their G loads
// are one broadcast each.
//
// The forward runs diag_vandermonde of lti.cu.
//
// cauchy_fwd / cauchy_bwd: the conjugate-symmetric Cauchy sums of the DPLR kernel
// (reference.convolution.cauchy_sums) at F frequency nodes,
//     S[h, m, k] = sum_i num[h, m, i] / d[h, i, k] + conj(num[h, m, i]) / dc[h, i, k],
//     d = (1 - w_k) - (1 + w_k) mu[h, i],  dc the same with conj(mu),
// never materialising the (H, N, F) Cauchy matrix: the forward has one thread per
// (h, m, k) (k fastest: a warp shares (h, m), so num and mu loads are broadcasts)
// looping over the modes i; the backward one thread per (h, m, i) (i fastest)
// looping over the nodes k, writing num_bar and Y[h, m, i] = sum_k S_bar (1 + w_k) / d^2
// + conj(...dc...), from which the launcher forms mu_bar = sum_m num Y.
// Reciprocals in real arithmetic (1/d = conj(d) / |d|^2), as the Numba kernels.
#include "common.cuh"

typedef long long ssm_ll;

#define SSM_CONV_ANCHOR 64

#ifndef SSM_DYNAMIC_SHARED
#define SSM_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace ssm_conv {
using namespace ssm;

// Ad^l = exp(l log Ad) with Ad^0 = 1 (also for Ad = 0, where 0 * log Ad would be NaN).
template <class R> __device__ __forceinline__ complex<R> power_of(const complex<R>& log_ad, ssm_ll l) {
    if (l == 0) return complex<R>(R(1), R(0));
    return exp(log_ad * R(l));
}

template <class R> __device__ __forceinline__ complex<R> recip(const complex<R>& d) {
    R s = R(1) / (d.real() * d.real() + d.imag() * d.imag());
    return complex<R>(d.real() * s, -d.imag() * s);
}

}  // namespace ssm_conv

template <class R>
__global__ void __launch_bounds__(128) vandermonde_bwd(
    const complex<R>* __restrict__ log_ad, const R* __restrict__ G, complex<R>* __restrict__ Wp,
    complex<R>* __restrict__ Yp, ssm_ll C, ssm_ll H, ssm_ll N, ssm_ll L, ssm_ll chunk) {
    using namespace ssm_conv;
    typedef complex<R> T;
    ssm_ll e = (ssm_ll)blockIdx.x * blockDim.x + threadIdx.x;
    ssm_ll E = C * H * N;
    if (e >= E) return;
    ssm_ll n = e % N;
    ssm_ll ch = e / N;  // c * H + h
    ssm_ll h = ch % H;
    T la = log_ad[h * N + n];
    T a = exp(la);
    ssm_ll l_begin = (ssm_ll)blockIdx.y * chunk;
    ssm_ll l_end = l_begin + chunk < L ? l_begin + chunk : L;
    const R* g = G + ch * L;
    T wsum = zero_of<T>(), ysum = zero_of<T>();
    T p = zero_of<T>(), q = zero_of<T>();
    for (ssm_ll l = l_begin; l < l_end; ++l) {
        if ((l - l_begin) % SSM_CONV_ANCHOR == 0) {
            p = power_of(la, l);
            q = l == 0 ? zero_of<T>() : power_of(la, l - 1);
        }
        R gl = g[l];
        wsum = wsum + p * gl;
        ysum = ysum + q * (gl * R(l));
        q = p;
        p = p * a;
    }
    ssm_ll o = (ssm_ll)blockIdx.y * E + e;
    Wp[o] = wsum;
    Yp[o] = ysum;
}

template <class R>
__global__ void __launch_bounds__(128) cauchy_fwd(
    const complex<R>* __restrict__ num, const complex<R>* __restrict__ mu, const complex<R>* __restrict__ omw,
    const complex<R>* __restrict__ opw, complex<R>* __restrict__ S, ssm_ll H, ssm_ll M, ssm_ll N, ssm_ll F) {
    using namespace ssm_conv;
    typedef complex<R> T;
    ssm_ll e = (ssm_ll)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= H * M * F) return;
    ssm_ll k = e % F;
    ssm_ll hm = e / F;  // h * M + m
    ssm_ll h = hm / M;
    T a = omw[k], b = opw[k];
    T acc = zero_of<T>();
    const T* nr = num + hm * N;
    const T* mr = mu + h * N;
    for (ssm_ll i = 0; i < N; ++i) {
        T n = nr[i], m = mr[i];
        acc = acc + n * recip(a - b * m) + conj(n) * recip(a - b * conj(m));
    }
    S[e] = acc;
}

template <class R>
__global__ void __launch_bounds__(128) cauchy_bwd(
    const complex<R>* __restrict__ mu, const complex<R>* __restrict__ omw, const complex<R>* __restrict__ opw,
    const complex<R>* __restrict__ S_bar, complex<R>* __restrict__ num_bar, complex<R>* __restrict__ Y, ssm_ll H,
    ssm_ll M, ssm_ll N, ssm_ll F) {
    using namespace ssm_conv;
    typedef complex<R> T;
    ssm_ll e = (ssm_ll)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= H * M * N) return;
    ssm_ll i = e % N;
    ssm_ll hm = e / N;
    ssm_ll h = hm / M;
    T m = mu[h * N + i], mc = conj(m);
    const T* sb = S_bar + hm * F;
    T n1 = zero_of<T>(), n2 = zero_of<T>(), y1 = zero_of<T>(), y2 = zero_of<T>();
    for (ssm_ll k = 0; k < F; ++k) {
        T a = omw[k], b = opw[k], g = sb[k];
        T u = recip(a - b * m), uc = recip(a - b * mc);
        T gu = g * u, guc = g * uc;
        n1 = n1 + gu;
        n2 = n2 + guc;
        y1 = y1 + gu * b * u;
        y2 = y2 + guc * b * uc;
    }
    num_bar[e] = n1 + conj(n2);
    Y[e] = y1 + conj(y2);
}

// ---------------------------------------------------------------------------- dense kernel
//
// K[s, l] = C[s] A[s]^l B[s] for stacked systems (reference.convolution.dense_kernel):
// one block per system s, thread i owns state i, the state lives in shared memory
// as two buffers (x_l read, x_{l+1} written: one barrier per step). Thread i reads
// At[s, j, i] = A[s, i, j] for its mat-vec (consecutive threads, consecutive
// addresses); thread 0 forms the readout C x_l from the read buffer in the same
// phase (O(N), the same order as each thread's mat-vec).
// __launch_bounds__(1024): blocks of up to 1024 threads (one per state) must fit the register file.
template <class T>
__global__ void __launch_bounds__(1024) dense_fwd(const T* __restrict__ At, const T* __restrict__ B, const T* __restrict__ C,
                          T* __restrict__ K, ssm_ll N, ssm_ll L) {
    using namespace ssm_conv;
    SSM_DYNAMIC_SHARED(raw);
    T* buf = reinterpret_cast<T*>(raw);  // 2 N
    ssm_ll s = blockIdx.x;
    int i = threadIdx.x;
    const T* a = At + s * N * N;
    const T* c = C + s * N;
    if (i < N) buf[i] = B[s * N + i];
    __syncthreads();
    for (ssm_ll l = 0; l < L; ++l) {
        T* cur = buf + (l & 1) * N;
        T* nxt = buf + ((l + 1) & 1) * N;
        if (i == 0) {
            T acc = zero_of<T>();
            for (ssm_ll j = 0; j < N; ++j) acc = acc + c[j] * cur[j];
            K[s * L + l] = acc;
        }
        if (i < N && l + 1 < L) {
            T y = zero_of<T>();
            for (ssm_ll j = 0; j < N; ++j) y = y + a[j * N + i] * cur[j];
            nxt[i] = y;
        }
        __syncthreads();
    }
}

// Pullback (reference.convolution.dense_kernel_bwd): lam_l = C G_l + A^T lam_{l+1}
// (lam_L = 0), B_bar = lam_0, C_bar = sum_l G_l x_l, A_bar = sum_l lam_{l+1} x_l^T.
// One block per system, thread i owns state i (its row of A_bar, its C_bar and lam).
// A forward sweep keeps the state entering every segment of `seg` steps in
// ck (S, nseg, N); segments are then visited last to first, recomputed from their
// checkpoint into buf (S, seg, N) and walked backwards. Shared memory: x (2 N) for the
// forward sweeps, lam (2 N) ping-pong for the reverse walk.
template <class T>
__global__ void __launch_bounds__(1024) dense_bwd(const T* __restrict__ A, const T* __restrict__ At, const T* __restrict__ B,
                          const T* __restrict__ C, const T* __restrict__ G, T* __restrict__ A_bar,
                          T* __restrict__ B_bar, T* __restrict__ C_bar, T* __restrict__ ck, T* __restrict__ buf,
                          ssm_ll N, ssm_ll L, ssm_ll seg, ssm_ll nseg) {
    using namespace ssm_conv;
    SSM_DYNAMIC_SHARED(raw);
    T* xs = reinterpret_cast<T*>(raw);  // 2 N
    T* lam = xs + 2 * N;                // 2 N
    ssm_ll s = blockIdx.x;
    int i = threadIdx.x;
    bool own = i < N;
    const T* a = A + s * N * N;
    const T* at = At + s * N * N;
    const T* g = G + s * L;
    T* ckp = ck + s * nseg * N;
    T* bf = buf + s * seg * N;
    // forward sweep: checkpoints x_{k seg}
    if (own) xs[i] = B[s * N + i];
    __syncthreads();
    for (ssm_ll l = 0; l < L; ++l) {
        T* cur = xs + (l & 1) * N;
        T* nxt = xs + ((l + 1) & 1) * N;
        if (own && l % seg == 0) ckp[(l / seg) * N + i] = cur[i];
        if (own && l + 1 < L) {
            T y = zero_of<T>();
            for (ssm_ll j = 0; j < N; ++j) y = y + at[j * N + i] * cur[j];
            nxt[i] = y;
        }
        __syncthreads();
    }
    T cbar = zero_of<T>();
    T ci = own ? C[s * N + i] : zero_of<T>();
    T* abar = A_bar + s * N * N + (ssm_ll)i * N;
    if (own)
        for (ssm_ll j = 0; j < N; ++j) abar[j] = zero_of<T>();
    if (own) lam[i] = zero_of<T>();  // lam_L, in buffer L & 1
    int cur_lam = 0;  // lam holds lam_{l+1} in lam + cur_lam * N
    __syncthreads();
    for (ssm_ll k = nseg - 1; k >= 0; --k) {
        ssm_ll t0 = k * seg;
        ssm_ll t1 = t0 + seg < L ? t0 + seg : L;
        // recompute x_t0 .. x_{t1-1} into bf rows 0 .. t1-t0-1
        if (own) bf[i] = ckp[k * N + i];
        __syncthreads();
        for (ssm_ll t = t0; t + 1 < t1; ++t) {
            const T* cur = bf + (t - t0) * N;
            if (own) {
                T y = zero_of<T>();
                for (ssm_ll j = 0; j < N; ++j) y = y + at[j * N + i] * cur[j];
                bf[(t + 1 - t0) * N + i] = y;
            }
            __syncthreads();
        }
        for (ssm_ll l = t1 - 1; l >= t0; --l) {
            const T* x = bf + (l - t0) * N;
            T* ln = lam + cur_lam * N;         // lam_{l+1}
            T* lo = lam + (1 - cur_lam) * N;   // lam_l, written
            T gl = g[l];
            if (own) {
                cbar = cbar + gl * x[i];
                if (l < L - 1) {
                    T li = ln[i];
                    for (ssm_ll j = 0; j < N; ++j) abar[j] = abar[j] + li * x[j];
                }
                T y = ci * gl;
                for (ssm_ll j = 0; j < N; ++j) y = y + a[j * N + i] * ln[j];
                lo[i] = y;
            }
            cur_lam = 1 - cur_lam;
            __syncthreads();
        }
    }
    if (own) {
        B_bar[s * N + i] = lam[cur_lam * N + i];
        C_bar[s * N + i] = cbar;
    }
}
