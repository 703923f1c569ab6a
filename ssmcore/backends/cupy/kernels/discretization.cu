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

// ---------------------------------------------------------------------------- batched expm
//
// expm of a stack of K small (n, n) matrices (reference.discretization.expm; the
// Numba kernel's algorithm): scaling and squaring with the diagonal Pade
// approximant of degree 3, 5, 7, 9 or 13 chosen from the 1-norm (Higham 2005,
// SIAM J. Matrix Anal. Appl. 26(4), Table 2.3), exp(X) ~ (V - U)^-1 (V + U) by
// Gaussian elimination with partial pivoting, then s squarings. One thread per
// matrix; its eight n x n work matrices live in a global workspace interleaved
// across the stack (element (w, i, j) of matrix k at ((w n + i) n + j) K + k), so
// the threads of a warp touch consecutive addresses. NaN/inf entries give NaN.
namespace ssm_disc {

__device__ __forceinline__ double pade_coef(int row, int j) {
    const double b[5][14] = {
        {120.0, 60.0, 12.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0},
        {30240.0, 15120.0, 3360.0, 420.0, 30.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0},
        {17297280.0, 8648640.0, 1995840.0, 277200.0, 25200.0, 1512.0, 56.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0},
        {17643225600.0, 8821612800.0, 2075673600.0, 302702400.0, 30270240.0, 2162160.0, 110880.0, 3960.0, 90.0,
         1.0, 0.0, 0.0, 0.0, 0.0},
        {6.476475253248e+16, 3.238237626624e+16, 7771770303897600.0, 1187353796428800.0, 129060195263999.98,
         10559470521600.0, 670442572800.0, 33522128640.0, 1323241920.0, 40840800.0, 960960.0, 16380.0, 182.0, 1.0}};
    return b[row][j];
}

__device__ __forceinline__ double pade_theta(int row) {
    const double t[5] = {0.01495585217958292, 0.253939833006323, 0.9504178996162932, 2.097847961257068,
                         5.371920351148152};
    return t[row];
}

// A strided view of work matrix w of one thread's matrix.
template <class T> struct Work {
    T* base;
    ssm_ll n, K;
    __device__ __forceinline__ T& operator()(int w, ssm_ll i, ssm_ll j) const { return base[((w * n + i) * n + j) * K]; }
};

template <class T> __device__ void wmatmul(const Work<T>& W, int x, int y, int out) {
    ssm_ll n = W.n;
    for (ssm_ll i = 0; i < n; ++i) {
        for (ssm_ll j = 0; j < n; ++j) W(out, i, j) = zero_of<T>();
        for (ssm_ll k = 0; k < n; ++k) {
            T xik = W(x, i, k);
            if (!is_zero(xik))
                for (ssm_ll j = 0; j < n; ++j) W(out, i, j) = W(out, i, j) + xik * W(y, k, j);
        }
    }
}

// out (+)= c6 X6 + c4 X4 + c2 X2 + c0 I
template <class T> __device__ void wcombine(const Work<T>& W, int out, int x6, int x4, int x2, double c6, double c4,
                                            double c2, double c0, bool acc) {
    ssm_ll n = W.n;
    for (ssm_ll i = 0; i < n; ++i) {
        for (ssm_ll j = 0; j < n; ++j) {
            T v = W(x6, i, j) * c6 + W(x4, i, j) * c4 + W(x2, i, j) * c2;
            W(out, i, j) = acc ? W(out, i, j) + v : v;
        }
        W(out, i, i) = W(out, i, i) + T(c0);
    }
}

// P <- Q^-1 P (Q overwritten), partial pivoting.
template <class T> __device__ void wsolve(const Work<T>& W, int q, int p) {
    ssm_ll n = W.n;
    for (ssm_ll k = 0; k < n; ++k) {
        ssm_ll piv = k;
        double big = magnitude(W(q, k, k));
        for (ssm_ll i = k + 1; i < n; ++i) {
            double v = magnitude(W(q, i, k));
            if (v > big) { big = v; piv = i; }
        }
        if (piv != k) {
            for (ssm_ll j = 0; j < n; ++j) {
                T t = W(q, k, j); W(q, k, j) = W(q, piv, j); W(q, piv, j) = t;
                t = W(p, k, j); W(p, k, j) = W(p, piv, j); W(p, piv, j) = t;
            }
        }
        T inv = T(1.0) / W(q, k, k);
        for (ssm_ll i = k + 1; i < n; ++i) {
            T f = W(q, i, k) * inv;
            if (!is_zero(f)) {
                for (ssm_ll j = k + 1; j < n; ++j) W(q, i, j) = W(q, i, j) - f * W(q, k, j);
                for (ssm_ll j = 0; j < n; ++j) W(p, i, j) = W(p, i, j) - f * W(p, k, j);
            }
        }
    }
    for (ssm_ll k = n - 1; k >= 0; --k) {
        T inv = T(1.0) / W(q, k, k);
        for (ssm_ll j = 0; j < n; ++j) W(p, k, j) = W(p, k, j) * inv;
        for (ssm_ll i = 0; i < k; ++i) {
            T f = W(q, i, k);
            if (!is_zero(f))
                for (ssm_ll j = 0; j < n; ++j) W(p, i, j) = W(p, i, j) - f * W(p, k, j);
        }
    }
}

}  // namespace ssm_disc

template <class T>
__global__ void __launch_bounds__(256) expm_batched(const T* __restrict__ Z, T* __restrict__ out, T* __restrict__ work,
                                                    ssm_ll K, ssm_ll n) {
    using namespace ssm_disc;
    ssm_ll k = (ssm_ll)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= K) return;
    const T* A = Z + k * n * n;
    T* O = out + k * n * n;
    double norm = 0.0;
    for (ssm_ll j = 0; j < n; ++j) {
        double col = 0.0;
        for (ssm_ll i = 0; i < n; ++i) col += magnitude(A[i * n + j]);
        norm = norm > col ? norm : col;
    }
    if (!(norm <= 1.7976931348623157e308)) {  // NaN or inf entries
        for (ssm_ll i = 0; i < n * n; ++i) O[i] = T(nan(""));
        return;
    }
    int row = 4;
    for (int r = 0; r < 4; ++r) {
        if (norm <= pade_theta(r)) { row = r; break; }
    }
    int s = 0;
    if (row == 4 && norm > pade_theta(4)) s = (int)ceil(log2(norm / pade_theta(4)));
    double scale = ldexp(1.0, -s);  // a power of two: exact
    Work<T> W{work + k, n, K};
    enum { X = 0, X2 = 1, X4 = 2, X6 = 3, U = 4, V = 5, Tm = 6, Q = 7 };
    for (ssm_ll i = 0; i < n; ++i)
        for (ssm_ll j = 0; j < n; ++j) W(X, i, j) = A[i * n + j] * scale;
    wmatmul(W, X, X, X2);
    if (row == 4) {  // degree 13, Higham's evaluation with 6 products
        wmatmul(W, X2, X2, X4);
        wmatmul(W, X4, X2, X6);
        wcombine(W, Tm, X6, X4, X2, pade_coef(4, 13), pade_coef(4, 11), pade_coef(4, 9), 0.0, false);
        wmatmul(W, X6, Tm, Q);
        wcombine(W, Q, X6, X4, X2, pade_coef(4, 7), pade_coef(4, 5), pade_coef(4, 3), pade_coef(4, 1), true);
        wmatmul(W, X, Q, U);
        wcombine(W, Tm, X6, X4, X2, pade_coef(4, 12), pade_coef(4, 10), pade_coef(4, 8), 0.0, false);
        wmatmul(W, X6, Tm, V);
        wcombine(W, V, X6, X4, X2, pade_coef(4, 6), pade_coef(4, 4), pade_coef(4, 2), pade_coef(4, 0), true);
    } else {  // degree m = 3, 5, 7, 9
        int m = 3 + 2 * row;
        for (ssm_ll i = 0; i < n; ++i) {
            for (ssm_ll j = 0; j < n; ++j) {
                W(Q, i, j) = W(X2, i, j) * pade_coef(row, 3);
                W(V, i, j) = W(X2, i, j) * pade_coef(row, 2);
                W(Tm, i, j) = W(X2, i, j);
            }
            W(Q, i, i) = W(Q, i, i) + T(pade_coef(row, 1));
            W(V, i, i) = W(V, i, i) + T(pade_coef(row, 0));
        }
        for (int kk = 2; kk < (m + 1) / 2; ++kk) {
            wmatmul(W, Tm, X2, X4);
            for (ssm_ll i = 0; i < n; ++i)
                for (ssm_ll j = 0; j < n; ++j) {
                    W(Tm, i, j) = W(X4, i, j);
                    W(Q, i, j) = W(Q, i, j) + W(Tm, i, j) * pade_coef(row, 2 * kk + 1);
                    W(V, i, j) = W(V, i, j) + W(Tm, i, j) * pade_coef(row, 2 * kk);
                }
        }
        wmatmul(W, X, Q, U);
    }
    for (ssm_ll i = 0; i < n; ++i)
        for (ssm_ll j = 0; j < n; ++j) {
            W(Q, i, j) = W(V, i, j) - W(U, i, j);
            W(Tm, i, j) = W(V, i, j) + W(U, i, j);
        }
    wsolve(W, Q, Tm);
    for (int r = 0; r < s; ++r) {
        wmatmul(W, Tm, Tm, Q);
        for (ssm_ll i = 0; i < n; ++i)
            for (ssm_ll j = 0; j < n; ++j) W(Tm, i, j) = W(Q, i, j);
    }
    for (ssm_ll i = 0; i < n; ++i)
        for (ssm_ll j = 0; j < n; ++j) O[i * n + j] = W(Tm, i, j);
}
