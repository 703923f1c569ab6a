// Compile-gate test data (not part of the package): a small templated kernel in the style of the
// CuPy backend's sources -- one instantiation per dtype through name expressions, complex types
// from CuPy's own header, a helper from a local header.
#include <cupy/complex.cuh>
#include "template_helpers.cuh"

template <typename T>
__global__ void scan_serial(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ h,
                            long long channels, long long length) {
    long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (c >= channels) return;
    T state = T(0);
    for (long long t = 0; t < length; ++t) {
        state = ssm_fma(a[c * length + t], state, b[c * length + t]);
        h[c * length + t] = state;
    }
}
