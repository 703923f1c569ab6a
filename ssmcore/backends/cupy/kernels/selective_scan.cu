// Mamba's selective scan on the GPU: fused forward and memory-lean backward.
//
// Semantics: ssmcore/reference/selective_scan.py (per batch b, channel d, state n):
//     dt_t = softplus(delta_t + bias)                  (softplus only if requested)
//     x_t  = exp(dt_t A) x_prev + dt_t B_t u_t          (x_prev = h0 first, 0 after a seq_idx change)
//     out_t = (yfac Re(sum_n C_t x_t) + D u_t) * silu(z_t)   (yfac = 2 for complex A)
// Template parameters: R the real compute type (float, double), S the state type
// (R, or complex<R> for complex A; B, C, h0, A, the checkpoints are S).
//
// Layouts (prepared by selective_scan.py): u, delta, z, out, du, ddelta, dz
// (batch, D, L); A (D, N); variable B / C (batch, G, N, L), mamba's own layout,
// so that the steps of one state are contiguous; fixed B / C (D, N); h0, last,
// dh0, dlast (batch, D, N); seq_idx (batch, L) int64; checkpoints (batch, D,
// nchunk, N). Scan step s visits time t = s, or L-1-s when reversed.
//
// Work split (as mamba_ssm's selective_scan kernels): one block per (batch,
// channel); the block walks time in chunks of SSM_SS_CHUNK = THREADS x ITEMS
// steps, thread i holding the ITEMS consecutive steps i*ITEMS ... of the chunk.
// For every state n in turn: each thread folds its steps' (exp(dt A_n), dt u B_n)
// pairs into an affine map, a block scan of the maps (warp shuffles, then the
// warp totals through shared memory, applied in warp order) gives every thread
// its start state from the chunk's carry (a shared array over n), and the
// thread re-runs its steps sequentially, accumulating y_t += C_t[n] x_t in
// registers. No (batch, D, L, N) value is ever stored: the state lives in
// registers, the carry in shared memory.
//
// The forward saves the state entering every chunk (O(batch D N L / chunk)). The
// backward walks the chunks from the end; for every state it recomputes the
// chunk's states from the checkpoint (the same block scan), then runs the
// adjoint g_t = yfac ghat_t C_t + a_{t+1} g_{t+1} as a reverse block scan with
// the carry a_{s0} g_{s0} passed to the previous chunk, and forms the gradients
// on the spot. Reductions: dA and fixed dB / dC are summed over each warp's
// steps (butterfly warp sums) into per-(batch, channel, warp) partials that one
// lane owns (no atomics; the launcher sums them over batch and warps with CuPy's
// deterministic reductions); dD per (batch, channel); variable dB / dC sum over
// the channels of a group with atomicAdd, as mamba_ssm does (so their last bits
// depend on the order blocks run in: the only nondeterminism of the backward).
//
// Steps past L (the last chunk's padding) are identity maps (1, 0) placed after
// every real step of the forward scan, which leaves every real state exact. A
// seq_idx restart is a constant map (decay 0). NaN/inf: inside a thread the
// steps run as the sequential loop; across threads the maps combine as in
// common.cuh (never from an identity, a zero state applied as b + f * 0). What a
// reassociated scan cannot reproduce: an infinite decay (exp overflow, A > 0)
// or an infinite state meeting a restart inside one combined run gives NaN
// where the loop's value may be finite.
#include "common.cuh"

using ssm::Affine;

// Block size and steps per thread: selective_scan.py's THREADS and ITEMS (launch
// bounds and shared-memory sizes depend on them). The host emulation of the
// tests compiles smaller ones with -D.
#ifndef SSM_SS_THREADS
#define SSM_SS_THREADS 128
#endif
#ifndef SSM_SS_ITEMS
#define SSM_SS_ITEMS 4
#endif
#define SSM_SS_CHUNK (SSM_SS_THREADS * SSM_SS_ITEMS)
#define SSM_SS_WARPS (SSM_SS_THREADS / 32)
// Largest state size N (the carry lives in shared memory); mamba_ssm's limit is 256 too.
#define SSM_SS_MAX_N 256

// Bits of `flags` (selective_scan.py's _flags).
#define SSM_SS_BVAR 1
#define SSM_SS_CVAR 2
#define SSM_SS_HAS_D 4
#define SSM_SS_HAS_Z 8
#define SSM_SS_HAS_BIAS 16
#define SSM_SS_HAS_H0 32
#define SSM_SS_HAS_SEQ 64
#define SSM_SS_SOFTPLUS 128
#define SSM_SS_REVERSE 256
#define SSM_SS_SAVE 512
#define SSM_SS_HAS_DLAST 1024

namespace {

// Per-step scalars of one thread's ITEMS steps of a chunk.
template <class R> struct Steps {
    long long t[SSM_SS_ITEMS];  // physical time index (0 for padding)
    bool valid[SSM_SS_ITEMS];   // s < L
    bool reset[SSM_SS_ITEMS];   // seq_idx restarts the state at this step
    R dt[SSM_SS_ITEMS];
    R u[SSM_SS_ITEMS];
    R dsp[SSM_SS_ITEMS];  // d softplus / d raw (1 without softplus)
};

template <class R>
__device__ __forceinline__ void load_steps(Steps<R>& st, long long s0, int tid, long long L, long long b,
                                           const R* __restrict__ urow, const R* __restrict__ drow, R bias,
                                           const long long* __restrict__ seq, int flags) {
    const bool rev = flags & SSM_SS_REVERSE;
#pragma unroll
    for (int k = 0; k < SSM_SS_ITEMS; ++k) {
        const long long s = s0 + (long long)tid * SSM_SS_ITEMS + k;
        const bool v = s < L;
        const long long t = v ? (rev ? L - 1 - s : s) : 0;
        st.valid[k] = v;
        st.t[k] = t;
        R raw = v ? drow[t] + bias : R(0);
        R dsp = R(1);
        if (flags & SSM_SS_SOFTPLUS) {
            if (raw <= R(20)) dsp = ssm::sigmoid(raw);
            raw = ssm::softplus(raw);
        }
        st.dt[k] = raw;
        st.dsp[k] = dsp;
        st.u[k] = v ? urow[t] : R(0);
        bool r = false;
        if ((flags & SSM_SS_HAS_SEQ) && v && s > 0) r = seq[b * L + t] != seq[b * L + (rev ? t + 1 : t - 1)];
        st.reset[k] = r;
    }
}

// Decays (0 at a restart, 1 for padding) and inputs dt u B of state n for a thread's steps.
template <class R, class S>
__device__ __forceinline__ void step_pairs(const Steps<R>& st, const S& An, const S* __restrict__ Bn, bool bvar,
                                           S (&a)[SSM_SS_ITEMS], S (&x)[SSM_SS_ITEMS]) {
#pragma unroll
    for (int k = 0; k < SSM_SS_ITEMS; ++k) {
        if (st.valid[k]) {
            a[k] = st.reset[k] ? ssm::zero_of<S>() : ssm::exp_scaled(st.dt[k], An);
            x[k] = (st.dt[k] * st.u[k]) * Bn[bvar ? st.t[k] : 0];
        } else {
            a[k] = ssm::one_of<S>();
            x[k] = ssm::zero_of<S>();
        }
    }
}

// The map of a thread's steps in time order (a restart makes it constant).
template <class R, class S>
__device__ __forceinline__ Affine<S> fold_forward(const Steps<R>& st, const S (&a)[SSM_SS_ITEMS],
                                                  const S (&x)[SSM_SS_ITEMS]) {
    Affine<S> m = ssm::affine_step(a[0], x[0]);
#pragma unroll
    for (int k = 1; k < SSM_SS_ITEMS; ++k) {
        if (st.reset[k]) {
            m.a = ssm::zero_of<S>();
            m.b = x[k];
        } else {
            m.a = a[k] * m.a;
            m.b = ssm::madd(a[k], m.b, x[k]);
        }
    }
    return m;
}

// Block-wide inclusive scan of the forward maps; returns the state entering this
// thread's first step, given the state x0 entering the chunk. `tot` holds the
// warp totals (SSM_SS_WARPS entries); one __syncthreads inside.
template <class S>
__device__ __forceinline__ S block_start_forward(Affine<S> m, const S& x0, int lane, int warp, Affine<S>* tot) {
    ssm::warp_scan_inclusive(m, lane);
    if (lane == 31) tot[warp] = m;
    Affine<S> below = ssm::shfl_up(m, 1u);
    __syncthreads();
    S x = x0;
    for (int w = 0; w < warp; ++w) x = ssm::apply(tot[w], x);
    if (lane > 0) x = ssm::apply(below, x);
    return x;
}

// The same in reverse: the adjoint entering this thread's last step from the
// threads above, given the adjoint g0 entering the chunk from its end.
template <class S>
__device__ __forceinline__ S block_start_reverse(Affine<S> m, const S& g0, int lane, int warp, Affine<S>* tot) {
    ssm::warp_scan_inclusive_rev(m, lane);
    if (lane == 0) tot[warp] = m;
    Affine<S> above = ssm::shfl_down(m, 1u);
    __syncthreads();
    S g = g0;
    for (int w = SSM_SS_WARPS - 1; w > warp; --w) g = ssm::apply(tot[w], g);
    if (lane < 31) g = ssm::apply(above, g);
    return g;
}

template <class S> __device__ __forceinline__ const S* state_row(const S* __restrict__ X, bool var, long long b,
                                                                 long long d, long long G, long long ratio,
                                                                 long long N, long long L, long long n) {
    // variable: (batch, G, N, L) row of group d / ratio; fixed: (D, N) element
    return var ? X + ((b * G + d / ratio) * N + n) * L : X + d * N + n;
}

}  // namespace

template <class R, class S>
__global__ void __launch_bounds__(SSM_SS_THREADS)
    selective_scan_fwd(const R* __restrict__ u, const R* __restrict__ delta, const S* __restrict__ A,
                       const S* __restrict__ B, const S* __restrict__ C, const R* __restrict__ Dv,
                       const R* __restrict__ z, const R* __restrict__ bias, const S* __restrict__ h0,
                       const long long* __restrict__ seq, R* __restrict__ out, S* __restrict__ last,
                       S* __restrict__ ckpt, long long nd, long long L, long long N, long long GB, long long GC,
                       long long ratio_b, long long ratio_c, long long nck, int flags) {
    __shared__ ssm::SharedArray<S, SSM_SS_MAX_N> carry;
    __shared__ ssm::SharedArray<Affine<S>, 2 * SSM_SS_WARPS> tot;  // double-buffered by n's parity
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const long long row = blockIdx.x, b = row / nd, d = row - b * nd;
    const bool bvar = flags & SSM_SS_BVAR, cvar = flags & SSM_SS_CVAR;
    const R yfac = R(ssm::readout_factor<S>::value);
    for (long long n = tid; n < N; n += SSM_SS_THREADS)
        carry[n] = (flags & SSM_SS_HAS_H0) ? h0[row * N + n] : ssm::zero_of<S>();
    __syncthreads();
    const R* urow = u + row * L;
    const R* drow = delta + row * L;
    const R bd = (flags & SSM_SS_HAS_BIAS) ? bias[d] : R(0);
    const R Dd = (flags & SSM_SS_HAS_D) ? Dv[d] : R(0);
    Steps<R> st;
    for (long long c = 0; c < nck; ++c) {
        load_steps(st, c * SSM_SS_CHUNK, tid, L, b, urow, drow, bd, seq, flags);
        S y[SSM_SS_ITEMS];
#pragma unroll
        for (int k = 0; k < SSM_SS_ITEMS; ++k) y[k] = ssm::zero_of<S>();
        for (long long n = 0; n < N; ++n) {
            const S An = A[d * N + n];
            const S x0 = carry[n];
            if ((flags & SSM_SS_SAVE) && tid == 0) ckpt[(row * nck + c) * N + n] = x0;
            const S* Bn = state_row(B, bvar, b, d, GB, ratio_b, N, L, n);
            const S* Cn = state_row(C, cvar, b, d, GC, ratio_c, N, L, n);
            S a[SSM_SS_ITEMS], x[SSM_SS_ITEMS];
            step_pairs(st, An, Bn, bvar, a, x);
            S h = block_start_forward(fold_forward(st, a, x), x0, lane, warp, &tot[(n & 1) * SSM_SS_WARPS]);
#pragma unroll
            for (int k = 0; k < SSM_SS_ITEMS; ++k) {
                if (st.valid[k]) {
                    h = st.reset[k] ? x[k] : ssm::madd(a[k], h, x[k]);
                    y[k] = ssm::madd(Cn[cvar ? st.t[k] : 0], h, y[k]);
                }
            }
            // padding leaves h unchanged, so the last thread ends with the chunk's final state
            if (tid == SSM_SS_THREADS - 1) carry[n] = h;
        }
#pragma unroll
        for (int k = 0; k < SSM_SS_ITEMS; ++k) {
            if (!st.valid[k]) continue;
            const long long t = st.t[k];
            R o = yfac * ssm::real_part(y[k]);
            if (flags & SSM_SS_HAS_D) o += Dd * st.u[k];
            if (flags & SSM_SS_HAS_Z) {
                const R zt = z[row * L + t];
                o *= zt * ssm::sigmoid(zt);
            }
            out[row * L + t] = o;
        }
        __syncthreads();  // the last thread's carry writes before the next chunk's reads
    }
    for (long long n = tid; n < N; n += SSM_SS_THREADS) last[row * N + n] = carry[n];
}

template <class R, class S>
__global__ void __launch_bounds__(SSM_SS_THREADS)
    selective_scan_bwd(const R* __restrict__ u, const R* __restrict__ delta, const S* __restrict__ A,
                       const S* __restrict__ B, const S* __restrict__ C, const R* __restrict__ Dv,
                       const R* __restrict__ z, const R* __restrict__ bias, const long long* __restrict__ seq,
                       const S* __restrict__ ckpt, const R* __restrict__ dout, const S* __restrict__ dlast,
                       R* __restrict__ du, R* __restrict__ ddelta, R* __restrict__ dz, S* __restrict__ dB,
                       S* __restrict__ dC, S* __restrict__ dAp, S* __restrict__ dBp, S* __restrict__ dCp,
                       R* __restrict__ dDp, S* __restrict__ dh0, long long nd, long long L, long long N,
                       long long GB, long long GC, long long ratio_b, long long ratio_c, long long nck, int flags) {
    __shared__ ssm::SharedArray<S, SSM_SS_MAX_N> gcarry;  // a_{s0} g_{s0} of the chunk after, per state
    __shared__ ssm::SharedArray<Affine<S>, SSM_SS_WARPS> totf;
    __shared__ ssm::SharedArray<Affine<S>, SSM_SS_WARPS> totr;
    __shared__ ssm::SharedArray<S, SSM_SS_THREADS> afirst;  // each thread's first decay
    __shared__ R dDw[SSM_SS_WARPS];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const long long row = blockIdx.x, b = row / nd, d = row - b * nd;
    const bool bvar = flags & SSM_SS_BVAR, cvar = flags & SSM_SS_CVAR;
    const bool has_z = flags & SSM_SS_HAS_Z, has_D = flags & SSM_SS_HAS_D;
    const R yfac = R(ssm::readout_factor<S>::value);
    for (long long n = tid; n < N; n += SSM_SS_THREADS)
        gcarry[n] = (flags & SSM_SS_HAS_DLAST) ? dlast[row * N + n] : ssm::zero_of<S>();
    __syncthreads();
    const R* urow = u + row * L;
    const R* drow = delta + row * L;
    const R bd = (flags & SSM_SS_HAS_BIAS) ? bias[d] : R(0);
    const R Dd = has_D ? Dv[d] : R(0);
    R dD_acc = R(0);
    Steps<R> st;
    for (long long c = nck - 1; c >= 0; --c) {
        load_steps(st, c * SSM_SS_CHUNK, tid, L, b, urow, drow, bd, seq, flags);
        R gh[SSM_SS_ITEMS], dzf[SSM_SS_ITEMS], sgb[SSM_SS_ITEMS], sga[SSM_SS_ITEMS];
        S y[SSM_SS_ITEMS];
#pragma unroll
        for (int k = 0; k < SSM_SS_ITEMS; ++k) {
            const R go = st.valid[k] ? dout[row * L + st.t[k]] : R(0);
            gh[k] = go;
            dzf[k] = R(0);
            if (has_z && st.valid[k]) {
                const R zt = z[row * L + st.t[k]];
                const R sg = ssm::sigmoid(zt);
                gh[k] = go * zt * sg;
                dzf[k] = go * sg * (R(1) + zt * (R(1) - sg));
            }
            sgb[k] = R(0);
            sga[k] = R(0);
            y[k] = ssm::zero_of<S>();
        }
        for (long long n = 0; n < N; ++n) {
            const S An = A[d * N + n];
            const S x0 = ckpt[(row * nck + c) * N + n];
            const S g0 = gcarry[n];  // read before the first barrier: thread 0 rewrites it below
            const S* Bn = state_row(B, bvar, b, d, GB, ratio_b, N, L, n);
            const S* Cn = state_row(C, cvar, b, d, GC, ratio_c, N, L, n);
            S a[SSM_SS_ITEMS], x[SSM_SS_ITEMS];
            step_pairs(st, An, Bn, bvar, a, x);
            afirst[tid] = a[0];
            // 1) the chunk's states from its checkpoint
            S h = block_start_forward(fold_forward(st, a, x), x0, lane, warp, &totf[0]);
            S hprev[SSM_SS_ITEMS], hs[SSM_SS_ITEMS], cv[SSM_SS_ITEMS];
#pragma unroll
            for (int k = 0; k < SSM_SS_ITEMS; ++k) {
                hprev[k] = h;
                if (st.valid[k]) h = st.reset[k] ? x[k] : ssm::madd(a[k], h, x[k]);
                hs[k] = h;
                cv[k] = st.valid[k] ? Cn[cvar ? st.t[k] : 0] : ssm::zero_of<S>();
                if (has_z) y[k] = ssm::madd(cv[k], h, y[k]);
            }
            // 2) the adjoint, g_k = anext_k g_{k+1} + yfac ghat_k C_k, from the chunk's end
            //    (anext of the chunk's last step is 1: gcarry already holds a g of the next step;
            //    padding has decay 1 and no input)
            S anext[SSM_SS_ITEMS], q[SSM_SS_ITEMS];
            const S an_last = tid + 1 < SSM_SS_THREADS ? afirst[tid + 1] : ssm::one_of<S>();
#pragma unroll
            for (int k = 0; k < SSM_SS_ITEMS; ++k) {
                anext[k] = k + 1 < SSM_SS_ITEMS ? a[k + 1] : an_last;
                q[k] = (yfac * gh[k]) * cv[k];
            }
            Affine<S> m = ssm::affine_step(anext[SSM_SS_ITEMS - 1], q[SSM_SS_ITEMS - 1]);
#pragma unroll
            for (int k = SSM_SS_ITEMS - 2; k >= 0; --k) {
                m.a = anext[k] * m.a;
                m.b = ssm::madd(anext[k], m.b, q[k]);
            }
            S g = block_start_reverse(m, g0, lane, warp, &totr[0]);
            // 3) gradients from g (padding contributes nothing)
            S dA_t = ssm::zero_of<S>(), dB_t = ssm::zero_of<S>(), dC_t = ssm::zero_of<S>();
#pragma unroll
            for (int k = SSM_SS_ITEMS - 1; k >= 0; --k) {
                if (!st.valid[k]) continue;
                g = ssm::madd(anext[k], g, q[k]);
                const S Bk = Bn[bvar ? st.t[k] : 0];
                const S gal = g * (a[k] * hprev[k]);  // a is 0 at a restart: no gradient through it
                sgb[k] += ssm::real_part(g * Bk);
                sga[k] += ssm::real_part(gal * An);
                dA_t = dA_t + st.dt[k] * gal;
                const S gB = (st.dt[k] * st.u[k]) * g;
                const S gC = (yfac * gh[k]) * hs[k];
                if (bvar) ssm::atomic_add(dB + ((b * GB + d / ratio_b) * N + n) * L + st.t[k], gB);
                else dB_t = dB_t + gB;
                if (cvar) ssm::atomic_add(dC + ((b * GC + d / ratio_c) * N + n) * L + st.t[k], gC);
                else dC_t = dC_t + gC;
                if (k == 0 && tid == 0) gcarry[n] = a[0] * g;  // carry to the chunk before
            }
            dA_t = ssm::warp_sum(dA_t);
            if (!bvar) dB_t = ssm::warp_sum(dB_t);
            if (!cvar) dC_t = ssm::warp_sum(dC_t);
            if (lane == 0) {  // this warp's own slot: a plain read-modify-write, in chunk order
                const long long p = (row * SSM_SS_WARPS + warp) * N + n;
                dAp[p] = dAp[p] + dA_t;
                if (!bvar) dBp[p] = dBp[p] + dB_t;
                if (!cvar) dCp[p] = dCp[p] + dC_t;
            }
            __syncthreads();  // afirst, totf, totr are rewritten for the next state
        }
#pragma unroll
        for (int k = 0; k < SSM_SS_ITEMS; ++k) {
            if (!st.valid[k]) continue;
            const long long t = st.t[k];
            R dut = st.dt[k] * sgb[k];
            if (has_D) {
                dD_acc += gh[k] * st.u[k];
                dut += gh[k] * Dd;
            }
            du[row * L + t] = dut;
            ddelta[row * L + t] = (st.u[k] * sgb[k] + sga[k]) * st.dsp[k];
            if (has_z) {
                R pre = yfac * ssm::real_part(y[k]);
                if (has_D) pre += Dd * st.u[k];
                dz[row * L + t] = dzf[k] * pre;
            }
        }
    }
    dD_acc = ssm::warp_sum(dD_acc);
    if (lane == 0) dDw[warp] = dD_acc;
    __syncthreads();
    if (tid == 0) {
        R s = dDw[0];
        for (int w = 1; w < SSM_SS_WARPS; ++w) s += dDw[w];
        dDp[row] = s;
    }
    for (long long n = tid; n < N; n += SSM_SS_THREADS) dh0[row * N + n] = gcarry[n];
}
