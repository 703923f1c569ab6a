// Device helpers shared by the ssmcore CuPy kernels (scan.cu; later the LTI kernels).
//
// Everything here is generic over the scalar type T in {float, double,
// complex<float>, complex<double>} (complex from <cupy/complex.cuh>).
//
// The affine map x -> a x + b is the element of every linear recurrence
// h_t = a_t h_{t-1} + b_t; an associative scan combines such maps. To follow
// the sequential recurrence's IEEE behaviour (NaN/inf) as closely as a
// reassociated computation can, a map also remembers the first coefficient
// `f` of the steps it stands for (see `apply`), and no combine ever starts
// from an identity element: (1, 0) would compute a * 0, a term the
// sequential loop never computes (inf * 0 = NaN where the loop gives inf).
#pragma once
#include <cupy/complex.cuh>

namespace ssm {

#define SSM_FULL_MASK 0xffffffffu

template <class T> struct real_of { typedef T type; };
template <class R> struct real_of<complex<R> > { typedef R type; };

template <class T> __device__ __forceinline__ T zero_of() { return T(0); }
template <class T> __device__ __forceinline__ T one_of() { return T(1); }

__device__ __forceinline__ bool is_zero(float x) { return x == 0.0f; }
__device__ __forceinline__ bool is_zero(double x) { return x == 0.0; }
template <class R> __device__ __forceinline__ bool is_zero(const complex<R>& x) {
    return x.real() == R(0) && x.imag() == R(0);
}

// a * x + b: one (contracted) multiply-add for real T, the complex product plus a sum otherwise.
template <class T> __device__ __forceinline__ T madd(const T& a, const T& x, const T& b) { return a * x + b; }

// ---- warp shuffles of any scalar (complex: both parts)
__device__ __forceinline__ float shfl_up(float v, unsigned d) { return __shfl_up_sync(SSM_FULL_MASK, v, d); }
__device__ __forceinline__ double shfl_up(double v, unsigned d) { return __shfl_up_sync(SSM_FULL_MASK, v, d); }
__device__ __forceinline__ float shfl_down(float v, unsigned d) { return __shfl_down_sync(SSM_FULL_MASK, v, d); }
__device__ __forceinline__ double shfl_down(double v, unsigned d) { return __shfl_down_sync(SSM_FULL_MASK, v, d); }
__device__ __forceinline__ float shfl_idx(float v, int src) { return __shfl_sync(SSM_FULL_MASK, v, src); }
__device__ __forceinline__ double shfl_idx(double v, int src) { return __shfl_sync(SSM_FULL_MASK, v, src); }
__device__ __forceinline__ float shfl_xor(float v, int m) { return __shfl_xor_sync(SSM_FULL_MASK, v, m); }
__device__ __forceinline__ double shfl_xor(double v, int m) { return __shfl_xor_sync(SSM_FULL_MASK, v, m); }
template <class R> __device__ __forceinline__ complex<R> shfl_up(const complex<R>& v, unsigned d) {
    return complex<R>(shfl_up(v.real(), d), shfl_up(v.imag(), d));
}
template <class R> __device__ __forceinline__ complex<R> shfl_down(const complex<R>& v, unsigned d) {
    return complex<R>(shfl_down(v.real(), d), shfl_down(v.imag(), d));
}
template <class R> __device__ __forceinline__ complex<R> shfl_idx(const complex<R>& v, int src) {
    return complex<R>(shfl_idx(v.real(), src), shfl_idx(v.imag(), src));
}
template <class R> __device__ __forceinline__ complex<R> shfl_xor(const complex<R>& v, int m) {
    return complex<R>(shfl_xor(v.real(), m), shfl_xor(v.imag(), m));
}

// ---- affine maps x -> a x + b of a run of recurrence steps
//
// For steps (a_1, b_1), ..., (a_n, b_n): f = a_1, a = a_n ... a_1, and b is the
// recurrence started *from b_1* (b_1, then a_k b + b_k): the state after the
// run when the term a_1 x vanishes.
template <class T> struct Affine {
    T f;
    T a;
    T b;
};

// The map of one step.
template <class T> __device__ __forceinline__ Affine<T> affine_step(const T& a, const T& b) {
    Affine<T> r;
    r.f = a;
    r.a = a;
    r.b = b;
    return r;
}

// The state after the run from state x. For x == 0 the sequential loop's
// first step is a_1 * 0 + b_1, which is b_1 unless a_1 is inf or NaN (then NaN,
// and NaN from there on): b + f * 0 gives exactly that, where a * 0 + b would
// turn a later inf coefficient (inside the product a) into NaN.
template <class T> __device__ __forceinline__ T apply(const Affine<T>& m, const T& x) {
    return is_zero(x) ? m.b + m.f * zero_of<T>() : madd(m.a, x, m.b);
}

// `first` then `next` (the run of first's steps followed by next's).
template <class T> __device__ __forceinline__ Affine<T> combine(const Affine<T>& first, const Affine<T>& next) {
    Affine<T> r;
    r.f = first.f;
    r.a = next.a * first.a;
    r.b = apply(next, first.b);
    return r;
}

template <class T> __device__ __forceinline__ Affine<T> shfl_up(const Affine<T>& m, unsigned d) {
    Affine<T> r;
    r.f = shfl_up(m.f, d);
    r.a = shfl_up(m.a, d);
    r.b = shfl_up(m.b, d);
    return r;
}

template <class T> __device__ __forceinline__ Affine<T> shfl_idx(const Affine<T>& m, int src) {
    Affine<T> r;
    r.f = shfl_idx(m.f, src);
    r.a = shfl_idx(m.a, src);
    r.b = shfl_idx(m.b, src);
    return r;
}

// Inclusive warp scan (Kogge-Stone): lane i ends with the map of lanes 0..i.
// A lane combines only with a real lane below it (never with an identity), so
// lanes holding no steps may sit at the top of the warp: they end with
// garbage that no lower lane reads. All 32 lanes must call it.
template <class T> __device__ __forceinline__ void warp_scan_inclusive(Affine<T>& m, int lane) {
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        Affine<T> below = shfl_up(m, (unsigned)d);
        if (lane >= d) m = combine(below, m);
    }
}

// Deterministic warp sum (butterfly: every lane ends with the same total, in a fixed order).
template <class T> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) v = v + shfl_xor(v, m);
    return v;
}

// Uninitialised shared-memory storage for n values of T (complex<T> has a
// constructor, which __shared__ variables may not have).
template <class T, int N> struct SharedArray {
    alignas(16) unsigned char raw[N * sizeof(T)];
    __device__ __forceinline__ T& operator[](int i) { return reinterpret_cast<T*>(raw)[i]; }
};

// ---- output projection of the LTI readouts: O(v) for O == T, Re(v) for a real O of a complex T
template <class O, class T> struct Project {
    static __device__ __forceinline__ O of(const T& v) { return v; }
};
template <class R> struct Project<R, complex<R> > {
    static __device__ __forceinline__ R of(const complex<R>& v) { return v.real(); }
};
template <class O, class T> __device__ __forceinline__ O project(const T& v) { return Project<O, T>::of(v); }

// ---- additions for selective_scan.cu (reverse warp scans, real/complex math helpers)

template <class T> __device__ __forceinline__ Affine<T> shfl_down(const Affine<T>& m, unsigned d) {
    Affine<T> r;
    r.f = shfl_down(m.f, d);
    r.a = shfl_down(m.a, d);
    r.b = shfl_down(m.b, d);
    return r;
}

// Inclusive warp scan in the other direction: lane i ends with the map of
// lanes 31, 30, ..., i (in that order of steps). Lanes holding no steps may
// sit at the bottom of the warp. All 32 lanes must call it.
template <class T> __device__ __forceinline__ void warp_scan_inclusive_rev(Affine<T>& m, int lane) {
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        Affine<T> above = shfl_down(m, (unsigned)d);
        if (lane + d < 32) m = combine(above, m);
    }
}

__device__ __forceinline__ float real_part(float x) { return x; }
__device__ __forceinline__ double real_part(double x) { return x; }
template <class R> __device__ __forceinline__ R real_part(const complex<R>& x) { return x.real(); }

// 2 for a complex (conjugate-halved) state, whose readout is 2 Re(C x); 1 for a real one.
template <class S> struct readout_factor { static constexpr int value = 1; };
template <class R> struct readout_factor<complex<R> > { static constexpr int value = 2; };

__device__ __forceinline__ float exp_r(float x) { return expf(x); }
__device__ __forceinline__ double exp_r(double x) { return exp(x); }
__device__ __forceinline__ float log1p_r(float x) { return log1pf(x); }
__device__ __forceinline__ double log1p_r(double x) { return log1p(x); }
__device__ __forceinline__ float cos_r(float x) { return cosf(x); }
__device__ __forceinline__ double cos_r(double x) { return cos(x); }
__device__ __forceinline__ float sin_r(float x) { return sinf(x); }
__device__ __forceinline__ double sin_r(double x) { return sin(x); }

// exp(dt * a) for a real step dt and a real or complex coefficient a.
template <class R> __device__ __forceinline__ R exp_scaled(R dt, R a) { return exp_r(dt * a); }
template <class R> __device__ __forceinline__ complex<R> exp_scaled(R dt, const complex<R>& a) {
    const R e = exp_r(dt * a.real());
    const R w = dt * a.imag();
    return complex<R>(e * cos_r(w), e * sin_r(w));
}

// softplus(x) = log1p(exp(x)), = x above 20 (the torch / mamba_ssm threshold).
template <class R> __device__ __forceinline__ R softplus(R x) { return x > R(20) ? x : log1p_r(exp_r(x)); }
template <class R> __device__ __forceinline__ R sigmoid(R x) { return R(1) / (R(1) + exp_r(-x)); }

// Atomic accumulation (complex: each part; not one atomic operation, which a sum does not need).
__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(double* p, double v) { atomicAdd(p, v); }
template <class R> __device__ __forceinline__ void atomic_add(complex<R>* p, const complex<R>& v) {
    R* q = reinterpret_cast<R*>(p);
    atomicAdd(q, v.real());
    atomicAdd(q + 1, v.imag());
}

}  // namespace ssm
