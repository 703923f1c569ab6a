// CUDA kernels of the diagonal discretisation (ssmcore/backends/cupy/discretization.py;
// contract and maths in ssmcore/reference/discretization.py).
//
// With x = A dt elementwise, every method is a pair (ad(x), beta(x)):
//   Ad = ad(x),  Bd = dt beta(x) B
// (zoh: exp, phi1; zoh_euler: exp, 1; foh: exp, phi1 - phi2 + e phi2;
//  impulse: exp, exp; gbt(alpha): (1 + (1-alpha) x)/(1 - alpha x), 1/(1 - alpha x)).
// One thread per (r, n) element of A (R, N) -- the fused pass: it reads A, dt
// and its M entries of B once and writes Ad and its M entries of Bd (backward:
// gA, gdt and gB). The phi functions take the Taylor series of phi3 (Horner,
// the coefficients of PHI3_TAYLOR) for |x| < SSM_PHI_SERIES_RADIUS and the
// closed forms with an accurate complex expm1 elsewhere, as the reference and the
// Numba kernels do; NaN fails |x| < 1 and stays NaN through the closed form.
//
// Templates over TA (A's type) and TB (B's) in {double, complex<double>} for the
// forward, one type T for the backward (the launcher promotes its operands).
#include "common.cuh"

typedef long long ssm_ll;

#define SSM_PHI_SERIES_RADIUS 1.0
#define SSM_PHI3_TERMS 17
// method codes of reference.discretization.METHOD_CODES
#define SSM_ZOH 0
#define SSM_ZOH_EULER 1
#define SSM_FOH 2
#define SSM_IMPULSE 3
#define SSM_GBT 4

namespace ssm_disc {
using namespace ssm;

// 1/(j+3)! for j = 16 .. 0 (reference.discretization.PHI3_TAYLOR, highest order first).
__device__ __forceinline__ double phi3_coef(int i) {
    const double c[SSM_PHI3_TERMS] = {
        8.22063524662433e-18, 1.5619206968586225e-16, 2.8114572543455206e-15, 4.779477332387385e-14,
        7.647163731819816e-13, 1.1470745597729725e-11, 1.6059043836821613e-10, 2.08767569878681e-09,
        2.505210838544172e-08, 2.755731922398589e-07, 2.7557319223985893e-06, 2.48015873015873e-05,
        0.0001984126984126984, 0.001388888888888889, 0.008333333333333333, 0.041666666666666664,
        0.16666666666666666};
    return c[i];
}

template <class A, class B> struct promote { typedef complex<double> type; };
template <> struct promote<double, double> { typedef double type; };

__device__ __forceinline__ double magnitude(double x) { return fabs(x); }
__device__ __forceinline__ double magnitude(const complex<double>& x) { return abs(x); }

// (exp(x), expm1(x)); the complex expm1 is expm1(a) cos b - 2 sin^2(b/2) + i e^a sin b, which keeps
// the small real part near x = 2 pi i k where exp(x) - 1 cancels.
__device__ __forceinline__ void exp_expm1(double x, double& e, double& em1) {
    e = exp(x);
    em1 = expm1(x);
}
__device__ __forceinline__ void exp_expm1(const complex<double>& x, complex<double>& e, complex<double>& em1) {
    double a = x.real(), b = x.imag();
    double ea = exp(a), c = cos(b), s = sin(b), h = sin(0.5 * b);
    e = complex<double>(ea * c, ea * s);
    em1 = complex<double>(expm1(a) * c - 2.0 * h * h, ea * s);
}

template <class T> __device__ __forceinline__ void phis(const T& x, T& e, T& p1, T& p2, T& p3) {
    if (magnitude(x) < SSM_PHI_SERIES_RADIUS) {
        T s = zero_of<T>();
        for (int i = 0; i < SSM_PHI3_TERMS; ++i) s = s * x + T(phi3_coef(i));
        p3 = s;
        p2 = T(0.5) + x * p3;
        p1 = T(1.0) + x * p2;
        e = exp(x);
        return;
    }
    T em1;
    exp_expm1(x, e, em1);
    p1 = em1 / x;
    p2 = (p1 - T(1.0)) / x;
    p3 = (p2 - T(0.5)) / x;
}

// (ad, beta, ad', beta') of one x = A dt (the forward's dead derivatives are removed by the compiler).
template <class T>
__device__ __forceinline__ void coefficients(const T& x, int method, double alpha, T& ad, T& beta, T& dad,
                                             T& dbeta) {
    if (method == SSM_GBT) {
        T d = T(1.0) / (T(1.0) - x * alpha);
        ad = (T(1.0) + x * (1.0 - alpha)) * d;
        beta = d;
        dad = d * d;
        dbeta = d * d * alpha;
        return;
    }
    if (method == SSM_ZOH_EULER) {
        ad = exp(x);
        beta = T(1.0);
        dad = ad;
        dbeta = zero_of<T>();
        return;
    }
    if (method == SSM_IMPULSE) {
        ad = exp(x);
        beta = ad;
        dad = ad;
        dbeta = ad;
        return;
    }
    T e, p1, p2, p3;
    phis(x, e, p1, p2, p3);
    ad = e;
    dad = e;
    if (method == SSM_FOH) {
        beta = p1 - p2 + e * p2;
        dbeta = p1 - p2 * 2.0 + p3 * 2.0 + e * (p2 - p3) * 2.0;
    } else {  // SSM_ZOH
        beta = p1;
        dbeta = p1 - p2;
    }
}

}  // namespace ssm_disc

// Ad (R, N) TA = ad(A dt); Bd (R, N, M) promote<TA, TB> = dt beta(A dt) B.
template <class TA, class TB>
__global__ void __launch_bounds__(256) discretize_diag_fwd(
    const TA* __restrict__ A, const double* __restrict__ dt, const TB* __restrict__ B, TA* __restrict__ Ad,
    typename ssm_disc::promote<TA, TB>::type* __restrict__ Bd, int method, double alpha, ssm_ll RN, ssm_ll M) {
    using namespace ssm_disc;
    typedef typename promote<TA, TB>::type TP;
    ssm_ll i = (ssm_ll)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= RN) return;
    double step = dt[i];
    TA ad, beta, dad, dbeta;
    coefficients(A[i] * step, method, alpha, ad, beta, dad, dbeta);
    Ad[i] = ad;
    TA scale = beta * step;
    for (ssm_ll m = 0; m < M; ++m) Bd[i * M + m] = TP(scale) * TP(B[i * M + m]);
}

// gA, gdt (R, N), gB (R, N, M), every operand in T: with s = sum_m gBd B and
// gx = gAd ad'(x) + s dt beta'(x): gA = gx dt, gdt = gx A + s beta(x), gB = gBd dt beta(x).
template <class T>
__global__ void __launch_bounds__(256) discretize_diag_bwd(
    const T* __restrict__ A, const double* __restrict__ dt, const T* __restrict__ B, const T* __restrict__ gAd,
    const T* __restrict__ gBd, T* __restrict__ gA, T* __restrict__ gdt, T* __restrict__ gB, int method, double alpha,
    ssm_ll RN, ssm_ll M) {
    using namespace ssm_disc;
    ssm_ll i = (ssm_ll)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= RN) return;
    double step = dt[i];
    T a = A[i];
    T ad, beta, dad, dbeta;
    coefficients(a * step, method, alpha, ad, beta, dad, dbeta);
    T scale = beta * step;
    T s = zero_of<T>();
    for (ssm_ll m = 0; m < M; ++m) {
        T g = gBd[i * M + m];
        s = s + g * B[i * M + m];
        gB[i * M + m] = g * scale;
    }
    T gx = gAd[i] * dad + s * step * dbeta;
    gA[i] = gx * step;
    gdt[i] = gx * a + s * beta;
}
