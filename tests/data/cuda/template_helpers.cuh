// Compile-gate test data: a header used by template_scan.cu.
#pragma once

template <typename T>
__device__ __forceinline__ T ssm_fma(T a, T x, T b) { return a * x + b; }
