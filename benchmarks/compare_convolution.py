"""Side-by-side timings of ssmcore's convolution mode against its peers.

Run from the repository root::

    python benchmarks/compare_convolution.py           # full sizes (about a minute)
    python benchmarks/compare_convolution.py --quick   # small smoke run

All candidates of a section run in ONE process, interleaved (round-robin, with
``benchmarks/_timing.py``) and are reported as medians plus the ratio to
ssmcore measured in the same run: the machine may be shared, so compare ratios,
not absolute numbers across runs. Peak memory of NumPy code is measured with
tracemalloc (NumPy reports its buffers to it); Numba-internal scratch is not
visible to tracemalloc and is added as an upper bound computed from the kernel's
buffers (threads x per-channel scratch).

Sections
--------
1. Diagonal (S4D) kernel, H=256, N=64, L=4096, complex64 parameters: ssmcore
   (Numba) vs the materialised NumPy formulation exp(dt A l) (S4D's own code path)
   and the same in torch (if installed); also the VJP vs the NumPy reference VJP.
2. DPLR (S4) kernel vs dense-matrix kernels of the same conjugate-extended system:
   ssmcore.ssm_kernel_dense (repeated mat-vec) and a NumPy Krylov doubling
   (S4's ``krylov``: [B, AB, A^2 B, ...] by repeated squaring).
3. fft_conv, batch 8, H=256, L=4096, float32 with D: ssmcore vs
   scipy.signal.fftconvolve, scipy.signal.oaconvolve and torch.fft (if installed).
4. A fixed kernel's spectrum (``fft_conv_spectrum``), H=256, L=4096, float32, one
   input, with 1 and 2 FFT workers: ssmcore with and without a precomputed spectrum
   vs the scipy.fft recipe with a precomputed spectrum; then forward + pullback /
   forward at (16, 1024, 4096) float32 (the pullback reuses the forward's spectrum).
"""

from __future__ import annotations

import argparse
import os
import sys
import tracemalloc

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(_HERE, ".."), _HERE]

from _timing import interleaved_medians  # noqa: E402

import ssmcore  # noqa: E402
from ssmcore import fft_conv, ssm_kernel_dense, ssm_kernel_diag, ssm_kernel_dplr  # noqa: E402

try:
    import torch
except ImportError:  # torch is optional
    torch = None


def interleaved(cands: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call, round-robin in this process (the project's shared helper)."""
    return interleaved_medians(cands, rounds=repeats, warmup=1)


def peak_mib(fn) -> float:
    """``tracemalloc`` peak (MiB) of one call: NumPy buffers and Python objects."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def table(title: str, med: dict[str, float], base: str, mem: dict[str, float] | None = None) -> None:
    print(f"\n### {title}\n")
    hdr = "| candidate | median ms | time / ssmcore |" + (" peak MiB |" if mem else "")
    print(hdr)
    print("|---|---:|---:|" + ("---:|" if mem else ""))
    for n, t in med.items():
        row = f"| {n} | {t * 1e3:.2f} | {t / med[base]:.2f}x |"
        if mem:
            row += f" {mem[n]:.1f} |" if n in mem else " - |"
        print(row)


def numba_threads() -> int:
    import numba

    return numba.get_num_threads()


# --------------------------------------------------------------------------- 1. diagonal


def bench_diag(quick: bool, repeats: int) -> None:
    H, N, L = (64, 32, 1024) if quick else (256, 64, 4096)
    rng = np.random.default_rng(0)
    A = np.broadcast_to(-0.5 + 1j * np.pi * np.arange(N), (H, N)).astype(np.complex64)  # S4D-Lin
    B = np.ones((H, N), np.complex64)
    C = (rng.normal(size=(H, N)) + 1j * rng.normal(size=(H, N))).astype(np.complex64)
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), H)).astype(np.float32)

    def materialised():  # S4D's SSMKernelDiag (zoh): Vandermonde by exp(dtA * l), (H, N, L) complex64
        dtA = dt[:, None] * A
        Cp = C * B * (np.exp(dtA) - 1.0) / A
        V = np.exp(dtA[:, :, None] * np.arange(L, dtype=np.float32))
        return 2.0 * np.einsum("hn,hnl->hl", Cp, V).real

    cands = {"ssmcore (Numba)": lambda: ssm_kernel_diag(A, B, C, dt, L), "NumPy materialised": materialised}
    if torch is not None:
        tA, tB, tC, tdt = (torch.from_numpy(np.ascontiguousarray(x)) for x in (A, B, C, dt))
        ar = torch.arange(L, dtype=torch.float32)

        def torch_mat():
            dtA = tdt[:, None] * tA
            Cp = tC * tB * (torch.exp(dtA) - 1.0) / tA
            return 2.0 * torch.einsum("hn,hnl->hl", Cp, torch.exp(dtA[:, :, None] * ar)).real

        cands["torch materialised"] = torch_mat
    K = ssm_kernel_diag(A, B, C, dt, L)
    err = np.abs(K - materialised()).max() / np.abs(K).max()
    med = interleaved(cands, max(3, repeats // 3))
    T = 64  # scratch of the Numba forward per channel: (N, 2T) table, z re/im, T accumulators
    scratch = numba_threads() * (2 * N * T + 2 * N + T) * 8 / 2**20
    mem = {
        "ssmcore (Numba)": peak_mib(lambda: ssm_kernel_diag(A, B, C, dt, L)) + scratch,
        "NumPy materialised": peak_mib(materialised),
    }
    table(f"Diagonal kernel forward, H={H}, N={N}, L={L}, complex64 -> float32 (max rel. diff {err:.1e})", med,
          "ssmcore (Numba)", mem)  # fmt: skip

    # VJP (forward + pullback) against the materialised NumPy reference (float64) at H/4 channels
    h4 = max(1, H // 4)
    a, b, c, d = A[:h4], B[:h4], C[:h4], dt[:h4]
    G = rng.normal(size=(h4, L)).astype(np.float32)

    def vjp(backend):
        out, pb = ssmcore.vjp("ssm_kernel_diag", a, b, c, d, L, backend=backend)
        return pb(G)

    med = interleaved({"ssmcore VJP (Numba)": lambda: vjp(None), "NumPy reference VJP": lambda: vjp("numpy")},
                      max(3, repeats // 2))  # fmt: skip
    mem = {"ssmcore VJP (Numba)": peak_mib(lambda: vjp(None)), "NumPy reference VJP": peak_mib(lambda: vjp("numpy"))}
    table(f"Diagonal kernel VJP (forward + pullback), H={h4}, N={N}, L={L}", med, "ssmcore VJP (Numba)", mem)


# --------------------------------------------------------------------------- 2. DPLR


def bench_dplr(quick: bool, repeats: int) -> None:
    H, N, L = (4, 16, 1024) if quick else (16, 32, 4096)
    from ssmcore import nplr

    lam, P, B, _ = nplr("legs", 2 * N)
    rng = np.random.default_rng(1)
    Ct = rng.normal(size=(H, N)) + 1j * rng.normal(size=(H, N))
    dt = np.exp(np.linspace(np.log(1e-3), np.log(1e-1), H))
    # the dense conjugate-extended system, discretised outside the timed region (favours the dense peers)
    Pf = np.concatenate([P, P.conj()], axis=-1)
    Af = np.diag(np.r_[lam, lam.conj()]) - Pf.T @ Pf.conj()
    eye = np.eye(2 * N)
    M = eye[None] - dt[:, None, None] / 2 * Af[None]
    Ad = np.linalg.solve(M, eye[None] + dt[:, None, None] / 2 * Af[None])
    Bd = np.linalg.solve(M, (dt[:, None] * np.r_[B, B.conj()][None])[..., None])[..., 0]
    T = np.swapaxes(eye - np.linalg.matrix_power(Ad, L), -1, -2)
    Cf = np.linalg.solve(T, np.c_[Ct, Ct.conj()][..., None])[..., 0]

    def krylov():  # S4's krylov: doubling [B, AB, ..., A^(2^k - 1) B] with repeated squaring
        X = Bd[:, :, None]
        Ap = Ad
        while X.shape[-1] < L:
            X = np.concatenate([X, Ap @ X], axis=-1)
            Ap = Ap @ Ap
        return np.einsum("hn,hnl->hl", Cf, X[..., :L]).real

    cands = {
        "ssmcore DPLR (Cauchy+Woodbury)": lambda: ssm_kernel_dplr(lam, P, B, Ct, dt, L),
        "ssmcore dense (mat-vec)": lambda: ssm_kernel_dense(Ad, Bd, Cf, L).real,
        "NumPy Krylov doubling": krylov,
    }
    K = cands["ssmcore DPLR (Cauchy+Woodbury)"]()
    err = max(np.abs(K - f()).max() / np.abs(K).max() for f in (cands["ssmcore dense (mat-vec)"], krylov))
    med = interleaved(cands, max(3, repeats // 3))
    mem = {n: peak_mib(f) for n, f in cands.items()}
    table(f"DPLR kernel (legs, rank 1), H={H}, N={N} pairs (state {2 * N}), L={L} (max rel. diff {err:.1e})", med,
          "ssmcore DPLR (Cauchy+Woodbury)", mem)  # fmt: skip


# --------------------------------------------------------------------------- 3. fft_conv


def bench_conv(quick: bool, repeats: int) -> None:
    from scipy import signal

    Bt, H, L = (2, 64, 1024) if quick else (8, 256, 4096)
    rng = np.random.default_rng(2)
    u = rng.normal(size=(Bt, H, L)).astype(np.float32)
    K = (rng.normal(size=(H, L)) * np.exp(-np.arange(L) / 500.0)).astype(np.float32)
    D = rng.normal(size=H).astype(np.float32)
    Du = D[:, None]
    cands = {
        "ssmcore fft_conv": lambda: fft_conv(u, K, D),
        "ssmcore fft_conv workers=1": lambda: fft_conv(u, K, D, workers=1),
        "scipy.signal.fftconvolve": lambda: signal.fftconvolve(u, K[None], axes=-1)[..., :L] + Du * u,
        "scipy.signal.oaconvolve": lambda: signal.oaconvolve(u, K[None], axes=-1)[..., :L] + Du * u,
    }
    if torch is not None:
        tu, tK, tD = torch.from_numpy(u), torch.from_numpy(K), torch.from_numpy(Du)
        n = 2 * L

        def torch_fft():  # S4's FFTConv
            y = torch.fft.irfft(torch.fft.rfft(tu, n=n) * torch.fft.rfft(tK, n=n), n=n)[..., :L]
            return (y + tD * tu).numpy()

        cands["torch.fft (S4 FFTConv)"] = torch_fft
    y = fft_conv(u, K, D)
    err = max(np.abs(y - f()).max() for n, f in cands.items() if not n.startswith("ssmcore")) / np.abs(y).max()
    med = interleaved(cands, repeats)
    mem = {n: peak_mib(f) for n, f in cands.items() if not n.startswith("torch")}
    threads = f"torch threads {torch.get_num_threads()}, " if torch is not None else ""
    table(f"fft_conv, batch {Bt}, H={H}, L={L}, float32 + D ({threads}max rel. diff {err:.1e})", med,
          "ssmcore fft_conv", mem)  # fmt: skip

    G = rng.normal(size=y.shape).astype(np.float32)

    def vjp():
        _, pb = ssmcore.vjp("fft_conv", u, K, D)
        return pb(G)

    vc = {"ssmcore fft_conv VJP": vjp}
    if torch is not None:

        def torch_vjp():
            a = tu.clone().requires_grad_(True)
            k = tK.clone().requires_grad_(True)
            d = tD.clone().requires_grad_(True)
            y = torch.fft.irfft(torch.fft.rfft(a, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L] + d * a
            y.backward(torch.from_numpy(G))
            return a.grad, k.grad, d.grad

        vc["torch autograd (S4 FFTConv)"] = torch_vjp
    table("fft_conv forward + pullback", interleaved(vc, max(3, repeats // 2)), "ssmcore fft_conv VJP")


# --------------------------------------------------------------------------- 4. spectrum reuse


def bench_spectrum(quick: bool, repeats: int) -> None:
    from scipy import fft

    H, L = (64, 1024) if quick else (256, 4096)
    rng = np.random.default_rng(3)
    u = rng.normal(size=(H, L)).astype(np.float32)
    K = (rng.normal(size=(H, L)) * np.exp(-np.arange(L) / 500.0)).astype(np.float32)
    for workers in (1, 2):
        S = ssmcore.fft_conv_spectrum(K, L, workers=workers)
        n, Kf = S.n, S.Kf

        def recipe(w=workers, n=n, Kf=Kf):  # the hand-written scipy.fft convolution, spectrum made once
            return fft.irfft(fft.rfft(u, n, axis=-1, workers=w) * Kf, n, axis=-1, workers=w)[..., :L]

        cands = {
            "ssmcore fft_conv(u, spectrum)": lambda S=S, w=workers: fft_conv(u, S, workers=w),
            "scipy.fft recipe, spectrum made once (a strided view of the n-point result)": recipe,
            "the same recipe, contiguous output (as ssmcore returns)": lambda r=recipe: np.ascontiguousarray(r()),
            "ssmcore fft_conv(u, K)": lambda w=workers: fft_conv(u, K, workers=w),
        }
        err = np.abs(cands["ssmcore fft_conv(u, spectrum)"]() - recipe()).max() / np.abs(recipe()).max()
        table(f"fixed kernel, H={H}, L={L}, float32, workers={workers} (max rel. diff {err:.1e})",
              interleaved(cands, repeats), "ssmcore fft_conv(u, spectrum)")  # fmt: skip

    Bt, H, L = (4, 64, 1024) if quick else (16, 1024, 4096)
    u = rng.normal(size=(Bt, H, L)).astype(np.float32)
    K = (rng.normal(size=(H, L)) * np.exp(-np.arange(L) / 500.0)).astype(np.float32)
    G = rng.normal(size=u.shape).astype(np.float32)

    def fwd_bwd():
        _, pb = ssmcore.vjp("fft_conv", u, K)
        return pb(G)

    med = interleaved({"forward": lambda: fft_conv(u, K), "forward + pullback": fwd_bwd}, max(3, repeats // 3))
    table(f"fft_conv ({Bt}, {H}, {L}) float32: forward + pullback / forward = "
          f"{med['forward + pullback'] / med['forward']:.2f}", med, "forward")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds (default 15, quick 3; slow sections a third)")
    ap.add_argument("--only", choices=["diag", "dplr", "conv", "spectrum"], default=None)
    args = ap.parse_args()
    repeats = args.repeats or (3 if args.quick else 15)
    print(f"# ssmcore convolution benchmarks ({'quick' if args.quick else 'full'}; {os.cpu_count()} CPUs, "
          f"Numba threads {numba_threads()}, torch {'absent' if torch is None else torch.__version__})")  # fmt: skip
    for name, fn in (("diag", bench_diag), ("dplr", bench_dplr), ("conv", bench_conv), ("spectrum", bench_spectrum)):
        if args.only in (None, name):
            fn(args.quick, repeats)


if __name__ == "__main__":
    main()
