"""Host emulation of the few CUDA features the ssmcore kernels use, for CPU tests.

A ``.cu`` source is compiled as C++20 against a tiny emulation (one
``std::thread`` per CUDA thread, warp shuffles through a per-warp exchange
buffer and barrier, ``__syncthreads`` as a block barrier, blocks one after
another, ``atomicAdd`` under a mutex, ``std::complex`` for CuPy's complex) and
driven through the backend's own launchers with NumPy arrays standing in for
CuPy's. This runs the kernels' actual code (indexing, lane bookkeeping, scans,
carries); it says nothing about GPU-only matters (memory model, real warp
scheduling, speed). Needs g++ with C++20 ``<barrier>``; tests skip without it.

Used by ``tests/test_cupy_scan_plan.py`` and ``tests/test_cupy_selective_scan.py``:
each appends its own ``extern "C"`` entry points (calling :cpp:func:`launch`)
to :data:`PRELUDE` plus an ``#include`` of its source, and calls
:func:`build`; :func:`caller` turns a library symbol into the
``kernel(grid, block, args)`` callable that CuPy's ``RawModule`` functions are.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

COMPLEX_HEADER = """
#pragma once
#include <complex>
template <class T> using complex = std::complex<T>;
"""

PRELUDE = r"""
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>
using std::max;
using std::min;
// Hidden: several emulation libraries live in one test process and define the same inline
// names (threadIdx, launch, ...); only the extern "C" bindings are exported.
#pragma GCC visibility push(hidden)
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static
struct Dim3 { unsigned x = 0, y = 0, z = 0; };
inline thread_local Dim3 threadIdx, blockIdx;
inline Dim3 blockDim, gridDim;
struct WarpX { std::barrier<> bar{32}; unsigned long long slot[32]; };
inline thread_local WarpX* tl_warp = nullptr;
inline std::barrier<>* g_block_bar = nullptr;
template <class V> inline V exchange(V v, int src) {
    int lane = threadIdx.x & 31;
    unsigned long long raw = 0;
    std::memcpy(&raw, &v, sizeof(V));
    tl_warp->slot[lane] = raw;
    tl_warp->bar.arrive_and_wait();
    unsigned long long got = tl_warp->slot[src];
    tl_warp->bar.arrive_and_wait();
    V out;
    std::memcpy(&out, &got, sizeof(V));
    return out;
}
template <class V> inline V __shfl_sync(unsigned, V v, int src) { return exchange(v, src & 31); }
template <class V> inline V __shfl_up_sync(unsigned, V v, unsigned d) {
    int l = threadIdx.x & 31, s = l - (int)d; return exchange(v, s >= 0 ? s : l);
}
template <class V> inline V __shfl_down_sync(unsigned, V v, unsigned d) {
    int l = threadIdx.x & 31, s = l + (int)d; return exchange(v, s < 32 ? s : l);
}
template <class V> inline V __shfl_xor_sync(unsigned, V v, int m) { return exchange(v, (threadIdx.x & 31) ^ m); }
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
inline std::mutex g_atomic_mutex;
template <class V> inline V atomicAdd(V* p, V v) {
    std::lock_guard<std::mutex> lock(g_atomic_mutex);
    V old = *p;
    *p = old + v;
    return old;
}
inline void launch(unsigned grid, unsigned block, const std::function<void()>& body) {
    blockDim.x = block; gridDim.x = grid;
    for (unsigned bi = 0; bi < grid; ++bi) {
        std::vector<std::unique_ptr<WarpX>> warps;
        for (unsigned w = 0; w < block / 32; ++w) warps.emplace_back(new WarpX());
        std::barrier<> bb(block);
        g_block_bar = &bb;
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < block; ++t)
            ts.emplace_back([&, t] { threadIdx.x = t; blockIdx.x = bi; tl_warp = warps[t / 32].get(); body(); });
        for (auto& th : ts) th.join();
    }
}
typedef long long ll;
typedef const void* cv;
"""


def build(directory: Path, kernel_dir: Path, source: str, bindings: str, name: str,
          defines: Sequence[str] = ()) -> ctypes.CDLL:
    """Compile :data:`PRELUDE`, ``#include "<source>"`` and ``bindings`` into a shared library.

    Skips the calling test without a C++20 g++; a compile error fails it with the
    compiler's message. ``defines`` are ``NAME=VALUE`` macros (``-D``).
    """
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip(f"needs g++ to run {source} on the host")
    (directory / "cupy").mkdir(exist_ok=True)
    (directory / "cupy" / "complex.cuh").write_text(COMPLEX_HEADER)
    cpp = directory / f"{name}.cpp"
    cpp.write_text(PRELUDE + f'#include "{source}"\n#pragma GCC visibility pop\n' + bindings)
    lib = directory / f"lib{name}.so"
    # Plain complex products (as thrust's), no FMA contraction (as the NumPy reference).
    # -fno-gnu-unique: several builds of one source (other -D block sizes) live in one process;
    # unique symbols would make their function-static "__shared__" arrays one and the same.
    cmd = [cxx, "-std=c++20", "-O1", "-fcx-limited-range", "-ffp-contract=off", "-fno-gnu-unique", "-shared", "-fPIC",
           f"-I{directory}", f"-I{kernel_dir}", *(f"-D{d}" for d in defines), "-o", str(lib), str(cpp), "-lpthread"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        if "barrier" in res.stderr and "No such file" in res.stderr:
            pytest.skip("g++ without C++20 <barrier>")
        raise AssertionError(f"{source} does not compile as host C++:\n{res.stderr[-4000:]}")
    return ctypes.CDLL(str(lib))


def caller(fn: Any, name: str) -> Callable[[tuple, tuple, tuple], None]:
    """``kernel(grid, block, args)`` for a library entry point ``fn(grid, block, *args)``.

    NumPy arrays pass as pointers, ``np.int64`` as ``long long``, ``np.int32`` as ``int``.
    """

    def call(grid: tuple, block: tuple, args: tuple) -> None:
        conv = [ctypes.c_uint(grid[0]), ctypes.c_uint(block[0])]
        for x in args:
            if isinstance(x, np.ndarray):
                conv.append(ctypes.c_void_p(x.ctypes.data))
            elif isinstance(x, np.int64):
                conv.append(ctypes.c_longlong(int(x)))
            elif isinstance(x, np.int32):
                conv.append(ctypes.c_int(int(x)))
            else:
                raise TypeError(f"{name}: unexpected kernel argument {type(x).__name__}")
        fn(*conv)

    return call
