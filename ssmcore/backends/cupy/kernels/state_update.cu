// Mamba's decode step (selective_state_update) on the GPU.
//
// Semantics: ssmcore/reference/state_update.py (per batch i, head h, channel p, state n;
// s = state[row], row = rows[i]):
//     d   = softplus(dt + bias)                       (softplus only if requested)
//     new = exp(d A) s + d B x
//     out = (yfac Re(sum_n C new) + D x) * silu(z)   (yfac = 2 for complex A)
// Template parameters: R the real compute type (float, double), S the state type (R, or
// complex<R> for complex A; state, out, A, B, C are S).
//
// Layouts (canonical heads form, prepared by state_update.py, all C-contiguous):
// state, out (S, H, P, N); x, dt, z, y (b, H, P); A (H, P, N); B (b, GB, N); C (b, GC, N);
// D, bias (H, P); rows (b,) int64 (negative: a padded slot); write (b,) bool (false for an
// entry whose row a later entry writes).
//
// Work split: one thread per (batch, head, channel) row, the row's N states streamed
// through registers (each state is read once and written once: the step is memory-bound,
// 2 N sizeof(S) bytes per row). Neighbouring threads own neighbouring rows of N states,
// so a warp's loads of state n cover 32 consecutive rows: every byte of the cache lines
// it touches is used by the warp over the n loop (L1 keeps them). mamba_ssm's Triton step
// uses the same row-per-lane layout with a (dim block x dstate) tile per program.
#include "common.cuh"

#ifndef SSM_SU_THREADS
#define SSM_SU_THREADS 128
#endif

// option bits of `flags` (state_update.py's FLAGS)
#define SSM_SU_HAS_D 1
#define SSM_SU_HAS_Z 2
#define SSM_SU_HAS_BIAS 4
#define SSM_SU_SOFTPLUS 8
#define SSM_SU_HAS_ROWS 16
#define SSM_SU_HAS_WRITE 32

template <class R, class S>
__global__ void __launch_bounds__(SSM_SU_THREADS)
state_update_fwd(const S* __restrict__ state, const R* __restrict__ x, const R* __restrict__ dt,
                 const S* __restrict__ A, const S* __restrict__ B, const S* __restrict__ C,
                 const R* __restrict__ Dv, const R* __restrict__ z, const R* __restrict__ bias,
                 const long long* __restrict__ rows, const bool* __restrict__ write, S* out, R* __restrict__ y,
                 long long nb, long long nh, long long np, long long N, long long GB, long long GC, int flags) {
    const long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long hp_n = nh * np;
    if (r >= nb * hp_n) return;
    const long long i = r / hp_n;
    const long long hp = r - i * hp_n;
    const long long h = hp / np;
    const long long row = (flags & SSM_SU_HAS_ROWS) ? rows[i] : i;
    if (row < 0) {  // padded slot: nothing read or written
        y[r] = R(0);
        return;
    }
    const bool wr = (flags & SSM_SU_HAS_WRITE) ? write[i] : true;
    R d = dt[r];
    if (flags & SSM_SU_HAS_BIAS) d += bias[hp];
    if (flags & SSM_SU_SOFTPLUS) d = ssm::softplus(d);
    const R xv = x[r];
    const R dx = d * xv;
    const S* a = A + hp * N;
    const S* s = state + (row * hp_n + hp) * N;
    S* o = out + (row * hp_n + hp) * N;
    const S* b = B + (i * GB + h / (nh / GB)) * N;
    const S* c = C + (i * GC + h / (nh / GC)) * N;
    S acc = ssm::zero_of<S>();
    for (long long n = 0; n < N; ++n) {
        const S nw = ssm::exp_scaled(d, a[n]) * s[n] + b[n] * dx;
        if (wr) o[n] = nw;
        acc += c[n] * nw;
    }
    R res = R(ssm::readout_factor<S>::value) * ssm::real_part(acc);
    if (flags & SSM_SU_HAS_D) res += Dv[hp] * xv;
    if (flags & SSM_SU_HAS_Z) {
        const R zv = z[r];
        res = res * zv * ssm::sigmoid(zv);
    }
    y[r] = res;
}
