"""GPU side-by-side: ssmcore's CuPy kernels against d2d copy, JAX and accelerated-scan, in one process.

Run on a GPU machine (``benchmarks/gpu_check.sh`` runs it after the GPU tests)::

    PYTHONPATH=$PWD:$PWD/.gpu-peers python benchmarks/compare_gpu.py [--rounds 7] [--only scan]
    python benchmarks/compare_gpu.py --dry-run      # list the cases (works without a GPU)

Method: every case's candidates are timed in one process, in interleaved rounds
(A, B, C, A, B, C, ...), and the median is reported. Candidates that run on torch's
current stream (ssmcore, copy, accelerated-scan, torch) are timed with CUDA events
around a calibrated number of back-to-back calls; JAX, which runs on its own
streams, with the wall clock around the same number of calls and
``block_until_ready``. Bandwidth counts what a candidate must read and write
(linear_scan: a and b read, h written; the copy: one read and one write), so
"of copy" is the fraction of the measured device-to-device copy bandwidth.
Peak memory is measured in one separate call per candidate: CuPy's pool (a
memory hook) plus torch's allocator, above what was allocated before the call,
against the bytes of the call's outputs.

Every row that cannot run says why (op without a CuPy kernel, peer not
installed, dtype the peer does not support) instead of failing the script.
Inputs are realistic: decays a ~ U[0.9, 0.999] (times e^{i theta}, |theta| < 0.1,
for complex), b ~ N(0, 1).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

try:
    from benchmarks._timing import format_table
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
    from _timing import format_table

__all__ = ["CASES", "Case", "Result", "Skip", "bytes_moved", "format_results", "main", "parse_args", "select_cases"]


class Skip(Exception):
    """A candidate that cannot run here; the message says why."""


@dataclass(frozen=True)
class Case:
    """One benchmark case: an op at one size, and the candidates measured side by side."""

    key: str
    title: str
    op: str  # "linear_scan" or "lti_simulate_diag"
    shape: tuple[int, ...]  # linear_scan: (batch, channels, L); lti_simulate_diag: (B, H, N, L)
    dtype: str
    candidates: tuple[str, ...]
    target: str  # what the issue asks this case to show
    backward: bool = False  # candidates named "... fwd+bwd" are compared with their "... fwd"
    versus: tuple[tuple[str, str], ...] = ()  # (candidate, reference): the note gives time / reference and the gap


SCAN_PEERS = ("jax.lax.associative_scan", "accelerated_scan.scalar", "accelerated_scan.warp")

CASES: tuple[Case, ...] = (
    Case("scan-f32-many", "linear_scan fwd, many channels", "linear_scan", (8, 4096, 4096), "float32",
         ("d2d copy", "ssmcore.torch", "ssmcore (CuPy arrays)", *SCAN_PEERS), ">= 0.85 of copy (goal 0.95)"),
    Case("scan-f32-long", "linear_scan fwd, few long series", "linear_scan", (1, 64, 1 << 20), "float32",
         ("d2d copy", "ssmcore.torch", *SCAN_PEERS), ">= 0.4 of copy (goal 0.8)"),
    Case("scan-f32-bwd", "linear_scan fwd+bwd / fwd", "linear_scan", (8, 4096, 4096), "float32",
         ("ssmcore.torch fwd", "ssmcore.torch fwd+bwd", "accelerated_scan.scalar fwd",
          "accelerated_scan.scalar fwd+bwd"), "fwd+bwd / fwd <= 2.5", backward=True),
    Case("scan-f32-long-bwd", "linear_scan fwd+bwd / fwd, few long series", "linear_scan", (1, 64, 1 << 20),
         "float32", ("ssmcore.torch fwd", "ssmcore.torch fwd+bwd"), "fwd+bwd / fwd <= 2.5", backward=True),
    Case("scan-f64-many", "linear_scan fwd float64", "linear_scan", (8, 4096, 4096), "float64",
         ("d2d copy", "ssmcore.torch"), ">= 0.8 of copy"),
    Case("scan-c64-many", "linear_scan fwd complex64", "linear_scan", (8, 4096, 4096), "complex64",
         ("d2d copy", "ssmcore.torch"), ">= 0.8 of copy"),
    # ssmcore.jax on GPU arrays: the CUDA XLA FFI path (ssmcore/adapters/jax_cuda.py) against the CuPy call
    # it wraps. JAX rows are wall-clock timed (JAX runs on its own streams), CuPy rows with CUDA events.
    Case("jax-scan-f32", "ssmcore.jax linear_scan under jit vs the CuPy call", "linear_scan", (1, 1024, 4096),
         "float32", ("ssmcore (CuPy arrays) fwd", "ssmcore.jax fwd", "ssmcore (CuPy arrays) fwd+bwd",
                     "ssmcore.jax fwd+bwd"),
         "jit <= 1.3x CuPy + 20 us; jit(grad) <= 1.3x CuPy fwd+bwd + 30 us", backward=True,
         versus=(("ssmcore.jax fwd", "ssmcore (CuPy arrays) fwd"),
                 ("ssmcore.jax fwd+bwd", "ssmcore (CuPy arrays) fwd+bwd"))),
    Case("jax-scan-f32-many", "ssmcore.jax linear_scan vs jax.lax.associative_scan", "linear_scan",
         (8, 4096, 4096), "float32", ("ssmcore.jax", "jax.lax.associative_scan"),
         ">= 3x faster than jax.lax.associative_scan", versus=(("ssmcore.jax", "jax.lax.associative_scan"),)),
    Case("s4d-c64", "lti_simulate_diag, S4D sizes (B, H, N, L)", "lti_simulate_diag", (16, 1024, 64, 4096),
         "complex64", ("ssmcore recurrent", "ssmcore convolution", "ssmcore scan", "torch S4D recipe"),
         "faster than the torch recipe"),
)


@dataclass
class Result:
    """One measured (or skipped) row."""

    case: Case
    candidate: str
    seconds: float | None = None
    peak_bytes: int | None = None
    out_bytes: int | None = None
    note: str = ""
    samples: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------- selective_scan (issue 13)
#
# Mamba's selective scan at the size: batch 4, D 1536, L 2048, N 16, float32, delta_softplus,
# D and z, variable B / C (batch, N, L) as mamba uses them. Rows: ssmcore on CuPy arrays and through
# ssmcore.torch (forward, forward + backward), mamba.py's pscan (materialises (B, L, D, N)) and the torch
# loop of mamba_ssm's selective_scan_ref (written out below, so that it needs no mamba_ssm install).
# The torch loop's fwd+bwd (about 3.3 s a call on an H200: the figure) is not a default row: with
# its warm-up, calibration and rounds it would take most of gpu_check.sh's benchmark budget; the candidate
# "torch selective_scan_ref fwd+bwd" still exists for a case that lists it.
# The bytes column is the I/O floor: u, delta, z read and out written, plus B and C (and, for fwd+bwd, the
# cotangent read and du, ddelta, dz written).

SELECTIVE_SCAN_CASES: tuple[Case, ...] = (
    Case("sscan-f32-fwd", "selective_scan fwd (softplus, D, z)", "selective_scan", (4, 1536, 2048, 16), "float32",
         ("ssmcore (CuPy arrays) fwd", "ssmcore.torch fwd", "mamba.py pscan fwd", "torch selective_scan_ref fwd"),
         "<= 0.25 ms (goal <= 0.12 ms)"),
    Case("sscan-f32-bwd", "selective_scan fwd+bwd (softplus, D, z)", "selective_scan", (4, 1536, 2048, 16),
         "float32", ("ssmcore (CuPy arrays) fwd", "ssmcore (CuPy arrays) fwd+bwd", "ssmcore.torch fwd",
                     "ssmcore.torch fwd+bwd"), "<= 1.0 ms", backward=True),
)
CASES = CASES + SELECTIVE_SCAN_CASES


def _ss_bytes(case: Case, candidate: str) -> int:
    """I/O floor of a selective-scan candidate (see the section comment)."""
    b, d, length, n = case.shape
    it = _itemsize(case.dtype)
    seq = b * d * length * it
    bc = 2 * b * n * length * it
    if candidate.endswith("fwd+bwd"):
        return 4 * seq + bc + 4 * seq + 2 * bc  # forward; cotangent in, du / ddelta / dz out, dB / dC
    return 4 * seq + bc


def _ss_inputs(case: Case, seed: int = 0) -> dict[str, Any]:
    import torch

    b, d, length, n = case.shape
    g = torch.Generator(device="cuda").manual_seed(seed)
    dt = getattr(torch, case.dtype)

    def r(*shape: int, scale: float = 1.0) -> Any:
        return (torch.randn(*shape, generator=g, device="cuda", dtype=dt) * scale).contiguous()

    A = -torch.exp(r(d, n, scale=0.5))
    return dict(u=r(b, d, length), delta=r(b, d, length, scale=0.5) - 1.0, A=A, B=r(b, n, length),
                C=r(b, n, length), D=r(d), z=r(b, d, length), delta_bias=r(d, scale=0.1))


def _ss_torch_ref(x: dict[str, Any]) -> Any:
    """mamba_ssm's selective_scan_ref (real A, variable (batch, N, L) B and C, softplus, D, z): a loop over time."""
    import torch

    delta = torch.nn.functional.softplus(x["delta"] + x["delta_bias"][..., None])
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, x["A"]))
    dBu = torch.einsum("bdl,bnl,bdl->bdln", delta, x["B"], x["u"])
    h = x["u"].new_zeros(x["u"].shape[0], x["u"].shape[1], x["A"].shape[1])
    ys = []
    for i in range(x["u"].shape[2]):
        h = dA[:, :, i] * h + dBu[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", h, x["C"][:, :, i]))
    y = torch.stack(ys, dim=2) + x["u"] * x["D"][:, None]
    return y * torch.nn.functional.silu(x["z"])


def _ss_mambapy(x: dict[str, Any]) -> Any:
    import torch

    try:
        from mambapy.pscan import pscan
    except ImportError as exc:
        raise Skip(f"mambapy not importable ({exc}); see ../shared/gpu-peers/README.md") from exc
    delta = torch.nn.functional.softplus(x["delta"] + x["delta_bias"][..., None]).transpose(1, 2)  # (B, L, D)
    u = x["u"].transpose(1, 2)
    dA = torch.exp(delta.unsqueeze(-1) * x["A"])  # (B, L, D, N)
    BX = delta.unsqueeze(-1) * x["B"].transpose(1, 2).unsqueeze(2) * u.unsqueeze(-1)
    hs = pscan(dA, BX)
    y = (hs @ x["C"].transpose(1, 2).unsqueeze(-1)).squeeze(3) + u * x["D"]
    return (y * torch.nn.functional.silu(x["z"].transpose(1, 2))).transpose(1, 2)


def _ss_candidate(case: Case, name: str, x: dict[str, Any]) -> tuple[Callable[[], Any], str]:
    import torch

    import ssmcore

    kw = dict(D=x["D"], z=x["z"], delta_bias=x["delta_bias"], delta_softplus=True)
    pos = [x[k] for k in ("u", "delta", "A", "B", "C")]
    backward = name.endswith("fwd+bwd")
    if name.startswith("ssmcore (CuPy arrays)"):
        import cupy

        cpos = [cupy.asarray(t) for t in pos]
        ckw = {k: cupy.asarray(v) if torch.is_tensor(v) else v for k, v in kw.items()}
        if "cupy" not in ssmcore.capabilities().get("selective_scan", ()):
            raise Skip("selective_scan declares no CuPy kernel")
        if not backward:
            return (lambda: ssmcore.selective_scan(*cpos, **ckw)), "events"
        ct = cupy.ones(cpos[0].shape, cpos[0].dtype)

        def fb() -> Any:
            _, pb = ssmcore.vjp("selective_scan", *cpos, **ckw)
            return pb(ct)

        return fb, "events"
    if name.startswith("ssmcore.torch"):
        import ssmcore.torch as st

        if not backward:
            return (lambda: st.selective_scan(*pos, **kw)), "events"
        leaves = [t.detach().requires_grad_(True) for t in pos]
        lkw = {k: (v.detach().requires_grad_(True) if torch.is_tensor(v) else v) for k, v in kw.items()}
        return (lambda: torch.autograd.grad(st.selective_scan(*leaves, **lkw).sum(),
                                            leaves + [lkw["D"], lkw["z"], lkw["delta_bias"]])), "events"
    if name.startswith("mamba.py pscan"):
        _ss_mambapy(x)  # import check now, not inside the timed loop
        return (lambda: _ss_mambapy(x)), "events"
    if name.startswith("torch selective_scan_ref"):
        if not backward:
            return (lambda: _ss_torch_ref(x)), "events"
        leaves = {k: v.detach().requires_grad_(True) for k, v in x.items()}
        return (lambda: torch.autograd.grad(_ss_torch_ref(leaves).sum(), list(leaves.values()))), "events"
    raise Skip(f"unknown candidate {name!r}")


def _ss_check(fns: dict[str, Callable[[], Any]], notes: dict[str, str]) -> None:
    """Max abs difference of every forward against the torch reference loop (in the notes)."""
    import torch

    ref = next((f for k, f in fns.items() if k.startswith("torch selective_scan_ref fwd")), None)
    if ref is None:
        return
    want = ref()
    for k, f in fns.items():
        if k.endswith(" fwd") and not k.startswith("torch"):
            got = torch.as_tensor(f(), device="cuda")
            notes[k] = f"max |diff| vs torch ref {float((got - want).abs().max()):.1e}"


def run_selective_scan_case(case: Case, args: argparse.Namespace) -> list[Result]:
    """One selective-scan case (same timing, memory and reporting as :func:`run_case`)."""
    import torch

    results = {name: Result(case, name) for name in case.candidates}
    fns: dict[str, tuple[Callable[[], Any], str]] = {}
    notes: dict[str, str] = {}
    try:
        x = _ss_inputs(case)
    except Exception as exc:  # noqa: BLE001
        return [Result(case, c, note=f"inputs failed: {type(exc).__name__}: {exc}") for c in case.candidates]
    for name in case.candidates:
        try:
            fns[name] = _ss_candidate(case, name, x)
        except Skip as exc:
            results[name].note = str(exc)
        except Exception as exc:  # noqa: BLE001 - a broken candidate is reported, the others still run
            results[name].note = f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            traceback.print_exc(file=sys.stderr)
    try:
        _ss_check({k: f for k, (f, _) in fns.items()}, notes)
    except Exception as exc:  # noqa: BLE001
        print(f"{case.key}: accuracy check failed: {exc}", file=sys.stderr)
    for name, (fn, timer) in fns.items():
        try:
            results[name].peak_bytes, results[name].out_bytes = _peak_memory(fn, timer)
        except Exception as exc:  # noqa: BLE001
            notes[name] = f"peak memory failed: {exc}"
    if fns:
        samples = _timed_gpu(fns, args.rounds, args.min_time)
        for name, s in samples.items():
            results[name].samples = s
            results[name].seconds = statistics.median(s)
            results[name].note = notes.get(name, results[name].note)
    del x, fns
    torch.cuda.empty_cache()
    return list(results.values())


# ----------------------------------------------------------------------------- ssd (issue 13)
#
# Mamba-2 SSD at the size: batch 4, L 4096, heads 32, headdim 64, groups 1, dstate 128, chunk
# 256, float32, dt bias + softplus and D (the usual Mamba-2 call). Rows: ssmcore on CuPy arrays (forward,
# forward + backward through ssmcore.vjp), mamba_ssm's Triton mamba_chunk_scan_combined (from
# ../shared/gpu-peers, unpacked into .gpu-peers/ on PYTHONPATH) and its torch ssd_minimal_discrete (the
# einsum listing of the Mamba-2 paper; forward only, it needs L a multiple of the chunk). Triton autotunes
# for tens of seconds on its first call per configuration: every Triton candidate runs once (backward
# included) when it is built, before the timed rounds. The bytes column is the I/O floor: x, dt, B, C
# read and y written (and, for fwd+bwd, the cotangent read and dx, ddt, dB, dC written).

SSD_CASES: tuple[Case, ...] = (
    Case("ssd-f32-fwd", "ssd fwd (chunk 256, dt softplus, D)", "ssd", (4, 4096, 32, 64, 1, 128, 256), "float32",
         ("ssmcore (CuPy arrays) fwd", "mamba_chunk_scan_combined fwd", "torch ssd_minimal_discrete fwd"),
         "<= 1.5x Triton (goal faster)",
         versus=(("ssmcore (CuPy arrays) fwd", "mamba_chunk_scan_combined fwd"),)),
    Case("ssd-f32-bwd", "ssd fwd+bwd (chunk 256, dt softplus, D)", "ssd", (4, 4096, 32, 64, 1, 128, 256),
         "float32", ("ssmcore (CuPy arrays) fwd", "ssmcore (CuPy arrays) fwd+bwd", "mamba_chunk_scan_combined fwd",
                     "mamba_chunk_scan_combined fwd+bwd"), "<= 1.5x Triton (goal faster)", backward=True,
         versus=(("ssmcore (CuPy arrays) fwd+bwd", "mamba_chunk_scan_combined fwd+bwd"),)),
)
CASES = CASES + SSD_CASES


def _ssd_bytes(case: Case) -> tuple[int, int]:
    """(forward, fwd+bwd) I/O floor of an SSD case (see the section comment)."""
    b, length, h, p, g, n, _ = case.shape
    it = _itemsize(case.dtype)
    xs, dts, bc = b * length * h * p * it, b * length * h * it, 2 * b * length * g * n * it
    fwd = 2 * xs + dts + bc
    return fwd, fwd + 2 * xs + dts + bc


def _ssd_inputs(case: Case, seed: int = 0) -> dict[str, Any]:
    import torch

    b, length, h, p, g, n, _ = case.shape
    gen = torch.Generator(device="cuda").manual_seed(seed)
    dt = getattr(torch, case.dtype)

    def r(*shape: int, scale: float = 1.0) -> Any:
        return (torch.randn(*shape, generator=gen, device="cuda", dtype=dt) * scale).contiguous()

    return dict(x=r(b, length, h, p), dt=r(b, length, h, scale=0.5) - 2.0, A=-torch.exp(r(h, scale=0.5)),
                B=r(b, length, g, n), C=r(b, length, g, n), D=r(h), dt_bias=r(h, scale=0.1))


def _ssd_triton() -> Any:
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError as exc:
        raise Skip(f"mamba_ssm's Triton SSD not importable ({exc}); see ../shared/gpu-peers/README.md") from exc
    return mamba_chunk_scan_combined


def _ssd_minimal(x: dict[str, Any], chunk: int) -> Any:
    import torch

    try:
        from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete
    except ImportError as exc:
        raise Skip(f"mamba_ssm.modules.ssd_minimal not importable ({exc})") from exc
    h, g = x["x"].shape[2], x["B"].shape[2]
    dt = torch.nn.functional.softplus(x["dt"] + x["dt_bias"])
    Bh = x["B"].repeat_interleave(h // g, dim=2)
    Ch = x["C"].repeat_interleave(h // g, dim=2)
    return lambda: ssd_minimal_discrete(x["x"] * dt[..., None], x["A"] * dt, Bh, Ch, chunk)[0] \
        + x["x"] * x["D"][:, None]


def _ssd_candidate(case: Case, name: str, x: dict[str, Any]) -> tuple[Callable[[], Any], str]:
    import torch

    import ssmcore

    chunk = case.shape[-1]
    pos = [x[k] for k in ("x", "dt", "A", "B", "C")]
    kw = dict(D=x["D"], dt_bias=x["dt_bias"], dt_softplus=True)
    backward = name.endswith("fwd+bwd")
    if name.startswith("ssmcore (CuPy arrays)"):
        import cupy

        if "cupy" not in ssmcore.capabilities().get("ssd", ()):
            raise Skip("ssd declares no CuPy kernel")
        cpos = [cupy.asarray(t) for t in pos]
        ckw = {k: cupy.asarray(v) if torch.is_tensor(v) else v for k, v in kw.items()}
        if not backward:
            return (lambda: ssmcore.ssd(*cpos, chunk_size=chunk, **ckw)), "events"
        ct = cupy.ones(cpos[0].shape, cpos[0].dtype)

        def fb() -> Any:
            _, pb = ssmcore.vjp("ssd", *cpos, chunk_size=chunk, **ckw)
            return pb(ct)

        return fb, "events"
    if name.startswith("mamba_chunk_scan_combined"):
        scan = _ssd_triton()
        if not backward:
            fn = lambda: scan(*pos, chunk, **kw)  # noqa: E731
            fn()  # autotune outside the timed loop
            return fn, "events"
        leaves = [t.detach().requires_grad_(True) for t in pos]
        lkw = {k: (v.detach().requires_grad_(True) if torch.is_tensor(v) else v) for k, v in kw.items()}

        def fbt() -> Any:
            return torch.autograd.grad(scan(*leaves, chunk, **lkw).sum(), leaves + [lkw["D"], lkw["dt_bias"]])

        fbt()  # autotune the forward and backward kernels outside the timed loop
        return fbt, "events"
    if name.startswith("torch ssd_minimal_discrete"):
        if case.shape[1] % chunk:
            raise Skip("ssd_minimal_discrete needs L a multiple of the chunk")
        return _ssd_minimal(x, chunk), "events"
    raise Skip(f"unknown candidate {name!r}")


def _ssd_check(fns: dict[str, Callable[[], Any]], notes: dict[str, str]) -> None:
    """Max abs difference of every forward against Triton's (in the notes)."""
    import torch

    ref = fns.get("mamba_chunk_scan_combined fwd")
    if ref is None:
        return
    want = ref()
    for k, f in fns.items():
        if k.endswith(" fwd") and not k.startswith("mamba"):
            got = torch.as_tensor(f(), device="cuda")
            notes[k] = f"max |diff| vs Triton {float((got - want).abs().max()):.1e}"


def run_ssd_case(case: Case, args: argparse.Namespace) -> list[Result]:
    """One SSD case (same timing, memory and reporting as :func:`run_case`)."""
    import torch

    results = {name: Result(case, name) for name in case.candidates}
    fns: dict[str, tuple[Callable[[], Any], str]] = {}
    notes: dict[str, str] = {}
    try:
        x = _ssd_inputs(case)
    except Exception as exc:  # noqa: BLE001
        return [Result(case, c, note=f"inputs failed: {type(exc).__name__}: {exc}") for c in case.candidates]
    for name in case.candidates:
        try:
            fns[name] = _ssd_candidate(case, name, x)
        except Skip as exc:
            results[name].note = str(exc)
        except Exception as exc:  # noqa: BLE001 - a broken candidate is reported, the others still run
            results[name].note = f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            traceback.print_exc(file=sys.stderr)
    try:
        _ssd_check({k: f for k, (f, _) in fns.items()}, notes)
    except Exception as exc:  # noqa: BLE001
        print(f"{case.key}: accuracy check failed: {exc}", file=sys.stderr)
    for name, (fn, timer) in fns.items():
        try:
            results[name].peak_bytes, results[name].out_bytes = _peak_memory(fn, timer)
        except Exception as exc:  # noqa: BLE001
            notes[name] = f"peak memory failed: {exc}"
    if fns:
        samples = _timed_gpu(fns, args.rounds, args.min_time)
        for name, s in samples.items():
            results[name].samples = s
            results[name].seconds = statistics.median(s)
            results[name].note = notes.get(name, results[name].note)
    del x, fns
    torch.cuda.empty_cache()
    return list(results.values())


# ----------------------------------------------------------------------------- host-side helpers
def _itemsize(dtype: str) -> int:
    return {"float32": 4, "float64": 8, "complex64": 8, "complex128": 16}[dtype]


def bytes_moved(case: Case, candidate: str) -> int | None:
    """The bytes a candidate must read plus write (None: no bandwidth figure for it).

    linear_scan forward reads a and b and writes h (3 arrays); the backward reads
    a, h and the cotangent and writes both gradients (5 more); a copy reads and
    writes one array. lti_simulate_diag reads u and writes y (real float32); the
    parameters are O(H N), negligible.
    """
    if case.op == "linear_scan":
        n = 1
        for s in case.shape:
            n *= s
        size = n * _itemsize(case.dtype)
        if candidate == "d2d copy":
            return 2 * size
        if candidate.endswith("fwd+bwd"):
            return 8 * size
        return 3 * size
    if case.op == "lti_simulate_diag":
        b, h, _, length = case.shape
        return 2 * b * h * length * 4
    if case.op == "selective_scan":
        return _ss_bytes(case, candidate)
    if case.op in CONV_OPS:
        return _conv_bytes(case, candidate)
    if case.op == "ssd":
        return _ssd_bytes(case)[1 if candidate.endswith("fwd+bwd") else 0]
    return None


def select_cases(only: str | None) -> list[Case]:
    """The cases whose key or title matches the regular expression ``only`` (all if None)."""
    if not only:
        return list(CASES)
    pat = re.compile(only)
    return [c for c in CASES if pat.search(c.key) or pat.search(c.title)]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ssmcore GPU benchmarks against copy, JAX and accelerated-scan")
    p.add_argument("--dry-run", action="store_true", help="list the cases and candidates; touch no GPU")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds per case (median reported)")
    p.add_argument("--min-time", type=float, default=0.02, help="seconds per sample (calls are batched up to it)")
    p.add_argument("--only", default=None, help="regular expression selecting cases by key or title")
    p.add_argument("--warp", action="store_true",
                   help="include accelerated_scan.warp (builds a CUDA extension with nvcc: about a minute)")
    p.add_argument("--log", default=None,
                   help="also write the tables here (default $OUT/compare_gpu.txt if OUT is set)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if args.log is None and os.environ.get("OUT"):
        args.log = os.path.join(os.environ["OUT"], "compare_gpu.txt")
    return args


def _fmt_bytes(n: int | None) -> str:
    return "" if n is None else f"{n / 2**20:.0f}"


def format_results(results: list[Result], copy_bandwidth: float | None) -> str:
    """One table per case: time, bandwidth, fraction of copy, peak memory against outputs, notes."""
    blocks = []
    by_case: dict[str, list[Result]] = {}
    for r in results:
        by_case.setdefault(r.case.key, []).append(r)
    for key, rows in by_case.items():
        case = rows[0].case
        times = {r.candidate: r.seconds for r in rows}
        table = []
        for r in rows:
            if r.seconds is None:
                table.append([r.candidate, "skip", "", "", "", "", r.note])
                continue
            moved = bytes_moved(case, r.candidate)
            bw = moved / r.seconds / 1e9 if moved else None
            frac = f"{bw * 1e9 / copy_bandwidth:.2f}" if (bw and copy_bandwidth) else ""
            note = r.note
            if case.backward and r.candidate.endswith("fwd+bwd"):
                fwd = times.get(r.candidate[: -len("fwd+bwd")] + "fwd")
                if fwd:
                    note = (f"fwd+bwd/fwd = {r.seconds / fwd:.2f}" + (f"; {note}" if note else ""))
            for cand, ref in case.versus:
                if r.candidate == cand and times.get(ref):
                    note = (f"{r.seconds / times[ref]:.2f}x {ref} ({(r.seconds - times[ref]) * 1e6:+.0f} us)"
                            + (f"; {note}" if note else ""))
            ratio = (f"{r.peak_bytes / r.out_bytes:.2f}" if (r.peak_bytes is not None and r.out_bytes) else "")
            table.append([r.candidate, f"{r.seconds * 1e3:.3f}", "" if bw is None else f"{bw:.0f}", frac,
                          _fmt_bytes(r.peak_bytes), ratio, note])
        shape = "x".join(map(str, case.shape))
        head = f"{case.title}  ({shape} {case.dtype}; must show: {case.target})"
        blocks.append(head + "\n" + format_table(
            table, ["candidate", "ms", "GB/s", "of copy", "peak MiB", "peak/out", "note"]))
    return "\n\n".join(blocks)


def dry_run_listing(cases: Sequence[Case]) -> str:
    rows = [[c.key, c.title, "x".join(map(str, c.shape)), c.dtype, ", ".join(c.candidates), c.target] for c in cases]
    return format_table(rows, ["key", "case", "shape", "dtype", "candidates", "must show"])


# ----------------------------------------------------------------------------- GPU side
def _timed_gpu(
    candidates: dict[str, tuple[Callable[[], Any], str]], rounds: int, min_time: float
) -> dict[str, list[float]]:
    """Seconds per call, ``rounds`` interleaved samples per candidate.

    Each candidate is ``(fn, timer)``: ``timer`` "events" records CUDA events on
    torch's current stream around the calls, "wall" uses the clock and blocks on
    the last result (JAX).
    """
    import torch

    def measure(fn: Callable[[], Any], timer: str, n: int) -> float:
        if timer == "events":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / n
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = None
        for _ in range(n):
            out = fn()
        _block(out)
        return (time.perf_counter() - t0) / n

    number = {}
    for name, (fn, timer) in candidates.items():
        measure(fn, timer, 1)  # warm-up: compiles, autotunes, fills pools
        n = 1
        while True:
            dt = measure(fn, timer, n) * n
            if dt >= min_time or n >= 1 << 12:
                break
            n = max(2 * n, int(n * min_time / max(dt, 1e-9)) + 1) if dt > 0 else 2 * n
        number[name] = n
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, (fn, timer) in candidates.items():
            samples[name].append(measure(fn, timer, number[name]))
    return samples


def _block(out: Any) -> None:
    if isinstance(out, (tuple, list)):
        for o in out:
            _block(o)
    elif hasattr(out, "block_until_ready"):
        out.block_until_ready()


def _nbytes(out: Any) -> int:
    if isinstance(out, (tuple, list)):
        return sum(_nbytes(o) for o in out)
    if hasattr(out, "element_size"):
        return out.numel() * out.element_size()
    return int(getattr(out, "nbytes", 0))


class _PeakHook:
    """Peak bytes handed out by CuPy's memory pool (a cupy MemoryHook), above the start."""

    def __init__(self) -> None:
        import cupy

        class Hook(cupy.cuda.MemoryHook):
            name = "ssmcore_peak"

            def __init__(self) -> None:
                self.now = 0
                self.peak = 0

            def malloc_postprocess(self, **kw: Any) -> None:
                self.now += kw["mem_size"]
                self.peak = max(self.peak, self.now)

            def free_postprocess(self, **kw: Any) -> None:
                self.now -= kw["mem_size"]

        self.hook = Hook()


def _peak_memory(fn: Callable[[], Any], timer: str) -> tuple[int | None, int | None]:
    """(peak bytes above the start, output bytes) of one call; None where it cannot be seen (JAX)."""
    if timer != "events":
        return None, None
    import torch

    try:
        peak = _PeakHook().hook
    except Exception:  # noqa: BLE001 - no CuPy: torch's allocator only
        peak = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    if peak is not None:
        with peak:
            out = fn()
            torch.cuda.synchronize()
    else:
        out = fn()
        torch.cuda.synchronize()
    total = torch.cuda.max_memory_allocated() - base + (peak.peak if peak is not None else 0)
    n = _nbytes(out)
    del out
    return total, n


def _inputs_scan(case: Case, seed: int = 0) -> tuple[Any, Any]:
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    real = torch.float32 if case.dtype in ("float32", "complex64") else torch.float64
    a = torch.empty(case.shape, device="cuda", dtype=real).uniform_(0.9, 0.999, generator=g)
    b = torch.randn(case.shape, device="cuda", dtype=real, generator=g)
    if case.dtype.startswith("complex"):
        theta = torch.empty(case.shape, device="cuda", dtype=real).uniform_(-0.1, 0.1, generator=g)
        a = torch.polar(a, theta)
        b = torch.complex(b, torch.randn(case.shape, device="cuda", dtype=real, generator=g))
    return a.contiguous(), b.contiguous()


def _scan_candidate(case: Case, name: str, a: Any, b: Any, warp: bool) -> tuple[Callable[[], Any], str]:
    import torch

    base = name.removesuffix(" fwd+bwd").removesuffix(" fwd")
    bwd = name.endswith("fwd+bwd")
    if name == "d2d copy":
        dst = torch.empty_like(b)
        return (lambda: dst.copy_(b)), "events"
    if base == "ssmcore.torch":
        import ssmcore.torch as st

        if not bwd:
            def fwd() -> Any:
                with torch.no_grad():
                    return st.linear_scan(a, b)
            _probe(fwd)
            return fwd, "events"
        ag, bg = a.detach().requires_grad_(), b.detach().requires_grad_()
        ct = torch.ones_like(b)

        def fwd_bwd() -> Any:
            h = st.linear_scan(ag, bg)
            return torch.autograd.grad(h, (ag, bg), ct)

        _probe(fwd_bwd)
        return fwd_bwd, "events"
    if base == "ssmcore (CuPy arrays)":
        import cupy

        import ssmcore

        ca, cb = cupy.from_dlpack(a), cupy.from_dlpack(b)
        if bwd:
            ct = cupy.ones_like(cb)

            def fn() -> Any:  # what jit(grad) of ssmcore.jax runs: the core's fwd, then its bwd
                _, pullback = ssmcore.vjp("linear_scan", ca, cb)
                return pullback(ct)
        else:
            fn = lambda: ssmcore.linear_scan(ca, cb)  # noqa: E731 - on CuPy's stream: the null stream, as torch's
        _probe(fn)
        return fn, "events"
    if base == "ssmcore.jax":
        jax, jnp = _jax_gpu(case)
        import ssmcore.jax as sj

        ja, jb = _to_jax(jax, jnp, a), _to_jax(jax, jnp, b)
        if bwd:
            g = jax.jit(jax.grad(lambda a, b: jnp.sum(sj.linear_scan(a, b)), argnums=(0, 1)))
            fn = lambda: g(ja, jb)  # noqa: E731
        else:
            f = jax.jit(sj.linear_scan)
            fn = lambda: f(ja, jb)  # noqa: E731
        _probe(lambda: jax.block_until_ready(fn()))
        return fn, "wall"
    if name == "jax.lax.associative_scan":
        jax, jnp = _jax_gpu(case)

        def combine(x: Any, y: Any) -> Any:
            return x[0] * y[0], y[0] * x[1] + y[1]

        f = jax.jit(lambda a, b: jax.lax.associative_scan(combine, (a, b), axis=-1)[1])
        ja, jb = _to_jax(jax, jnp, a), _to_jax(jax, jnp, b)
        return (lambda: f(ja, jb)), "wall"
    if base.startswith("accelerated_scan"):
        variant = base.split(".")[1]
        if variant == "warp" and not warp:
            raise Skip("off by default (nvcc build ~1 min): --warp")
        if case.dtype != "float32":
            raise Skip("float32/bfloat16 only")
        try:
            mod = __import__(f"accelerated_scan.{variant}", fromlist=["scan"])
        except ImportError as exc:
            raise Skip(f"not importable ({exc}); run benchmarks/gpu_peers_setup.sh") from None
        scan = mod.scan
        if not bwd:
            def fwd() -> Any:
                with torch.no_grad():
                    return scan(a, b)
            return fwd, "events"
        ag, bg = a.detach().requires_grad_(), b.detach().requires_grad_()
        ct = torch.ones_like(b)

        def fwd_bwd() -> Any:
            return torch.autograd.grad(scan(ag, bg), (ag, bg), ct)

        return fwd_bwd, "events"
    raise Skip(f"unknown candidate {name!r}")


def _jax_gpu(case: Case) -> tuple[Any, Any]:
    """``(jax, jax.numpy)`` when JAX sees a GPU and the case's dtype needs no x64; else Skip."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as exc:
        raise Skip(f"jax not importable: {exc}") from None
    if not any(d.platform == "gpu" for d in jax.devices()):
        raise Skip("jax sees no GPU")
    if case.dtype not in ("float32", "complex64"):
        raise Skip("x64 off in jax (single precision only)")
    return jax, jnp


def _to_jax(jax: Any, jnp: Any, t: Any) -> Any:
    """A CUDA tensor as a jax.Array on the GPU (DLPack: zero-copy; through the host if that fails)."""
    try:
        return jax.dlpack.from_dlpack(t)
    except Exception:  # noqa: BLE001 - older JAX without the stream protocol
        return jax.device_put(jnp.asarray(t.cpu().numpy()), jax.devices("gpu")[0])


_NO_KERNEL = re.compile(r"no CuPy kernel", re.IGNORECASE)


def _probe(fn: Callable[[], Any]) -> None:
    """Run once; the core's error for an op without a CuPy kernel becomes a Skip."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - classified here
        if _NO_KERNEL.search(str(exc)):
            raise Skip(str(exc).splitlines()[0]) from None
        raise


def _s4d_inputs(case: Case) -> dict[str, Any]:
    import math

    import torch

    bsz, h, n, length = case.shape
    g = torch.Generator(device="cuda").manual_seed(1)
    # S4D-Lin: lambda_n = -1/2 + i pi n, dt log-uniform in [1e-3, 1e-1], ZOH.
    dt = torch.exp(torch.empty(h, 1, device="cuda").uniform_(math.log(1e-3), math.log(1e-1), generator=g))
    lam = torch.complex(torch.full((h, n), -0.5, device="cuda"),
                        math.pi * torch.arange(n, device="cuda", dtype=torch.float32).expand(h, n))
    dtA = lam * dt
    A = torch.exp(dtA)
    B = (A - 1) / lam  # B_c = 1
    C = torch.complex(torch.randn(h, n, device="cuda", generator=g), torch.randn(h, n, device="cuda", generator=g))
    C = C * (0.5 ** 0.5)
    D = torch.randn(h, device="cuda", generator=g)
    u = torch.randn(bsz, h, length, device="cuda", generator=g)
    return {"A": A.contiguous(), "B": B.contiguous(), "C": C.contiguous(), "D": D, "u": u, "dtA": dtA, "L": length}


def _s4d_candidate(case: Case, name: str, x: dict[str, Any]) -> tuple[Callable[[], Any], str]:
    import torch

    if name == "torch S4D recipe":
        A, B, C, D, u, L = x["A"], x["B"], x["C"], x["D"], x["u"], x["L"]
        logA = torch.log(A)
        ar = torch.arange(L, device="cuda", dtype=torch.float32)

        def recipe() -> Any:
            with torch.no_grad():
                vand = torch.exp(logA.unsqueeze(-1) * ar)  # (H, N, L) Vandermonde
                K = 2 * torch.einsum("hn,hnl->hl", C * B, vand).real
                k_f = torch.fft.rfft(K, n=2 * L)
                u_f = torch.fft.rfft(u, n=2 * L)
                y = torch.fft.irfft(u_f * k_f, n=2 * L)[..., :L]
                return y + u * D.unsqueeze(-1)

        return recipe, "events"
    if name.startswith("ssmcore "):
        import ssmcore.torch as st

        mode = name.split()[1]

        def fn() -> Any:
            with torch.no_grad():
                return st.lti_simulate_diag(x["A"], x["B"], x["C"], x["D"], x["u"], conj_sym=True, mode=mode)

        _probe(fn)
        return fn, "events"
    raise Skip(f"unknown candidate {name!r}")


def _check_s4d(case: Case, fns: dict[str, Callable[[], Any]], notes: dict[str, str]) -> None:
    """Every ssmcore mode against the torch recipe (a wrong fast kernel must not look good)."""
    import torch

    ref_fn = fns.get("torch S4D recipe")
    if ref_fn is None:
        return
    ref = ref_fn()
    scale = ref.abs().max().item()
    for name, fn in fns.items():
        if name.startswith("ssmcore"):
            err = (fn() - ref).abs().max().item() / max(scale, 1e-30)
            notes[name] = f"max rel err vs recipe {err:.1e}"
    del ref
    torch.cuda.synchronize()


def _check_scan(fns: dict[str, Callable[[], Any]], notes: dict[str, str]) -> None:
    """Forward candidates against ssmcore.torch (max relative error), so speed is not bought with error."""
    ref_fn = fns.get("ssmcore.torch")
    if ref_fn is None:
        return
    ref = ref_fn()
    scale = float(ref.abs().max())
    for name, fn in fns.items():
        if name in ("d2d copy", "ssmcore.torch") or name.endswith("fwd+bwd"):
            continue
        out = fn()
        try:
            import torch

            o = out if isinstance(out, torch.Tensor) else torch.from_dlpack(out)  # JAX, CuPy: zero-copy
            err = float((o - ref).abs().max()) / max(scale, 1e-30)
            notes[name] = f"max rel err vs ssmcore {err:.1e}"
        except Exception as exc:  # noqa: BLE001 - a note, not a failure
            notes[name] = f"(no error check: {type(exc).__name__})"
        del out
    del ref


def run_case(case: Case, args: argparse.Namespace) -> list[Result]:
    if case.op in CONV_OPS:
        return run_conv_case(case, args)
    import torch

    if case.op == "selective_scan":
        return run_selective_scan_case(case, args)
    if case.op == "ssd":
        return run_ssd_case(case, args)
    results: dict[str, Result] = {}
    fns: dict[str, tuple[Callable[[], Any], str]] = {}
    notes: dict[str, str] = {}
    try:
        inputs = _s4d_inputs(case) if case.op == "lti_simulate_diag" else _inputs_scan(case)
    except Exception as exc:  # noqa: BLE001
        return [Result(case, c, note=f"inputs failed: {type(exc).__name__}: {exc}") for c in case.candidates]
    for name in case.candidates:
        results[name] = Result(case, name)
        try:
            if case.op == "lti_simulate_diag":
                fns[name] = _s4d_candidate(case, name, inputs)
            else:
                fns[name] = _scan_candidate(case, name, *inputs, warp=args.warp)
        except Skip as exc:
            results[name].note = str(exc)
        except Exception as exc:  # noqa: BLE001 - a broken candidate is reported, the others still run
            results[name].note = f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            traceback.print_exc(file=sys.stderr)
    try:
        if case.op == "lti_simulate_diag":
            _check_s4d(case, {k: f for k, (f, _) in fns.items()}, notes)
        else:
            _check_scan({k: f for k, (f, _) in fns.items()}, notes)
    except Exception as exc:  # noqa: BLE001
        print(f"{case.key}: accuracy check failed: {exc}", file=sys.stderr)
    for name, (fn, timer) in fns.items():
        try:
            results[name].peak_bytes, results[name].out_bytes = _peak_memory(fn, timer)
        except Exception as exc:  # noqa: BLE001
            notes[name] = f"peak memory failed: {exc}"
    if fns:
        samples = _timed_gpu(fns, args.rounds, args.min_time)
        for name, s in samples.items():
            results[name].samples = s
            results[name].seconds = statistics.median(s)
            results[name].note = notes.get(name, results[name].note)
    del inputs, fns
    torch.cuda.empty_cache()
    try:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
    except Exception:  # noqa: BLE001
        pass
    return list(results.values())


# ----------------------------------------------------------------------------- convolution and discretisation rows
# (issue 12: fft_conv, ssm_kernel_diag, ssm_kernel_dplr, discretize_diag, discretize). Self-contained:
# run_case hands these ops to run_conv_case; they join CASES below.
CONV_OPS = ("fft_conv", "ssm_kernel_diag", "ssm_kernel_dplr", "discretize_diag", "discretize")

CONV_CASES: tuple[Case, ...] = (
    Case("fft-conv-f32", "fft_conv u (B, H, L), K (H, L)", "fft_conv", (16, 1024, 4096), "float32",
         ("ssmcore (CuPy arrays)", "torch S4 FFTConv recipe", "cupy.fft recipe"),
         "<= 1.0x the torch recipe (goal 0.7x)"),
    Case("ssm-kernel-diag", "ssm_kernel_diag S4D (H, N, L)", "ssm_kernel_diag", (1024, 64, 4096), "complex64",
         ("ssmcore (CuPy arrays)", "torch S4D Vandermonde recipe"), ">= 3x faster, O(H(N+L)) memory"),
    Case("ssm-kernel-dplr", "ssm_kernel_dplr S4 (H, N, L)", "ssm_kernel_dplr", (256, 64, 4096), "complex64",
         ("ssmcore (CuPy arrays)",), "faster than S4's Cauchy in torch, O(H(N+L)) memory"),
    Case("discretize-diag-c64", "discretize_diag zoh (R, N)", "discretize_diag", (8192, 4096), "complex64",
         ("d2d copy", "ssmcore (CuPy arrays)"), ">= 0.8 of copy bandwidth"),
    Case("discretize-dense", "discretize zoh (S, n, n)", "discretize", (100000, 4, 4), "float64",
         ("ssmcore (CuPy arrays)", "ssmcore Numba CPU"), ">= 10x the Numba CPU kernel"),
)


def _conv_bytes(case: Case, candidate: str) -> int | None:
    """discretize_diag reads A and B and writes Ad and Bd (4 arrays of the case's shape); the copy 2."""
    if case.op != "discretize_diag":
        return None
    r, n = case.shape
    size = r * n * _itemsize(case.dtype)
    return 2 * size if candidate == "d2d copy" else 4 * size


def _conv_inputs(case: Case) -> dict[str, Any]:
    import math

    import cupy

    rs = cupy.random.RandomState(1)
    if case.op == "fft_conv":
        b, h, length = case.shape
        return {"u": rs.standard_normal((b, h, length), dtype=cupy.float32),
                "K": rs.standard_normal((h, length), dtype=cupy.float32) / length,
                "D": rs.standard_normal(h, dtype=cupy.float32)}
    if case.op in ("ssm_kernel_diag", "ssm_kernel_dplr"):
        h, n, length = case.shape
        A = (-0.5 + 1j * math.pi * cupy.arange(n)).astype(cupy.complex64) * cupy.ones((h, 1), cupy.complex64)
        C = (rs.standard_normal((h, n)) + 1j * rs.standard_normal((h, n))).astype(cupy.complex64)
        dt = cupy.exp(rs.uniform(math.log(1e-3), math.log(1e-1), h)).astype(cupy.float32)
        return {"A": A, "B": cupy.ones((h, n), cupy.complex64), "C": C, "dt": dt, "L": length,
                "P": (0.1 * rs.standard_normal((1, h, n))).astype(cupy.complex64)}
    if case.op == "discretize_diag":
        r, n = case.shape
        A = (-rs.uniform(0.1, 1, (r, n)) + 1j * rs.uniform(-3, 3, (r, n))).astype(cupy.complex64)
        return {"A": A, "B": (rs.standard_normal((r, n)) + 0j).astype(cupy.complex64), "dt": 0.01}
    s, n, _ = case.shape
    A = rs.standard_normal((s, n, n)) * 0.5
    return {"A": A, "B": rs.standard_normal((s, n, 1)), "dt": 0.1}


def _conv_candidate(case: Case, name: str, x: dict[str, Any]) -> tuple[Callable[[], Any], str]:
    import cupy
    import torch

    import ssmcore

    if name == "d2d copy":
        src = x["A"]
        dst = cupy.empty_like(src)
        return (lambda: dst.__setitem__(Ellipsis, src) or dst), "events"
    if case.op == "fft_conv":
        u, K, D = x["u"], x["K"], x["D"]
        length = u.shape[-1]
        if name == "ssmcore (CuPy arrays)":
            fn = lambda: ssmcore.fft_conv(u, K, D)  # noqa: E731
            _probe(fn)
            return fn, "events"
        if name == "torch S4 FFTConv recipe":  # S4's FFTConv: rfft both at n = 2L, multiply, irfft, skip term
            tu, tk, td = (torch.from_dlpack(a) for a in (u, K, D))

            def recipe() -> Any:
                k_f = torch.fft.rfft(tk, n=2 * length)
                u_f = torch.fft.rfft(tu, n=2 * length)
                return torch.fft.irfft(u_f * k_f, n=2 * length)[..., :length] + tu * td.unsqueeze(-1)

            return recipe, "events"
        if name == "cupy.fft recipe":
            def crecipe() -> Any:
                y = cupy.fft.irfft(cupy.fft.rfft(u, n=2 * length) * cupy.fft.rfft(K, n=2 * length), n=2 * length)
                return y[..., :length] + u * D[:, None]

            return crecipe, "events"
    if case.op == "ssm_kernel_diag":
        A, B, C, dt, length = x["A"], x["B"], x["C"], x["dt"], x["L"]
        if name == "ssmcore (CuPy arrays)":
            fn = lambda: ssmcore.ssm_kernel_diag(A, B, C, dt, length)  # noqa: E731
            _probe(fn)
            return fn, "events"
        if name == "torch S4D Vandermonde recipe":  # S4D's ZOH kernel, materialising (H, N, L)
            tA, tB, tC, tdt = (torch.from_dlpack(a) for a in (A, B, C, dt))
            ar = torch.arange(length, device="cuda", dtype=torch.float32)

            def recipe() -> Any:
                dtA = tA * tdt.unsqueeze(-1)
                W = tC * tB * (torch.exp(dtA) - 1.0) / tA
                return 2 * torch.einsum("hn,hnl->hl", W, torch.exp(dtA.unsqueeze(-1) * ar)).real

            return recipe, "events"
    if case.op == "ssm_kernel_dplr" and name == "ssmcore (CuPy arrays)":
        fn = lambda: ssmcore.ssm_kernel_dplr(x["A"], x["P"], x["B"], x["C"], x["dt"], x["L"])  # noqa: E731
        _probe(fn)
        return fn, "events"
    if case.op == "discretize_diag" and name == "ssmcore (CuPy arrays)":
        fn = lambda: ssmcore.discretize_diag(x["A"], x["B"], x["dt"])  # noqa: E731
        _probe(fn)
        return fn, "events"
    if case.op == "discretize":
        if name == "ssmcore (CuPy arrays)":
            fn = lambda: ssmcore.discretize(x["A"], x["B"], x["dt"])  # noqa: E731
            _probe(fn)
            return fn, "events"
        if name == "ssmcore Numba CPU":
            hA, hB = cupy.asnumpy(x["A"]), cupy.asnumpy(x["B"])
            return (lambda: ssmcore.discretize(hA, hB, x["dt"])), "wall"
    raise Skip(f"unknown candidate {name!r}")


def _check_conv(case: Case, fns: dict[str, Callable[[], Any]], notes: dict[str, str]) -> None:
    """Ssmcore against the first peer recipe (max relative error), so speed is not bought with error."""
    import torch

    mine = fns.get("ssmcore (CuPy arrays)")
    peers = [n for n in fns if n not in ("ssmcore (CuPy arrays)", "d2d copy", "ssmcore Numba CPU")]
    if mine is None or not peers:
        return
    got = torch.from_dlpack(mine())
    for name in peers:
        ref = fns[name]()
        ref = ref if isinstance(ref, torch.Tensor) else torch.from_dlpack(ref)
        scale = max(float(ref.abs().max()), 1e-30)
        notes.setdefault("ssmcore (CuPy arrays)", f"max rel err vs {name} {float((got - ref).abs().max()) / scale:.1e}")
    torch.cuda.synchronize()


def run_conv_case(case: Case, args: argparse.Namespace) -> list[Result]:
    """:func:`run_case` for the convolution and discretisation rows (same timing and memory method)."""
    import torch

    results = {name: Result(case, name) for name in case.candidates}
    fns: dict[str, tuple[Callable[[], Any], str]] = {}
    notes: dict[str, str] = {}
    try:
        inputs = _conv_inputs(case)
    except Exception as exc:  # noqa: BLE001
        return [Result(case, c, note=f"inputs failed: {type(exc).__name__}: {exc}") for c in case.candidates]
    for name in case.candidates:
        try:
            fns[name] = _conv_candidate(case, name, inputs)
        except Skip as exc:
            results[name].note = str(exc)
        except Exception as exc:  # noqa: BLE001 - a broken candidate is reported, the others still run
            results[name].note = f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            traceback.print_exc(file=sys.stderr)
    try:
        _check_conv(case, {k: f for k, (f, _) in fns.items()}, notes)
    except Exception as exc:  # noqa: BLE001
        print(f"{case.key}: accuracy check failed: {exc}", file=sys.stderr)
    for name, (fn, timer) in fns.items():
        try:
            results[name].peak_bytes, results[name].out_bytes = _peak_memory(fn, timer)
        except Exception as exc:  # noqa: BLE001
            notes[name] = f"peak memory failed: {exc}"
    if fns:
        samples = _timed_gpu(fns, args.rounds, args.min_time)
        for name, s in samples.items():
            results[name].samples = s
            results[name].seconds = statistics.median(s)
            results[name].note = notes.get(name, results[name].note)
    del inputs, fns
    torch.cuda.empty_cache()
    import cupy

    cupy.get_default_memory_pool().free_all_blocks()
    return list(results.values())


CASES = CASES + CONV_CASES


def copy_bandwidth() -> float:
    """Bytes per second of a 1 GiB device-to-device copy (read + write counted)."""
    import torch

    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    copy = lambda dst=dst, src=src: dst.copy_(src)  # bound now: src and dst are deleted below
    s = _timed_gpu({"copy": (copy, "events")}, rounds=5, min_time=0.02)["copy"]
    del src, dst
    return 2 * (1 << 30) / statistics.median(s)


def environment() -> str:
    import torch

    lines = [f"python {sys.version.split()[0]}, torch {torch.__version__}"]
    for mod in ("cupy", "jax", "triton"):
        try:
            lines.append(f"{mod} {__import__(mod).__version__}")
        except Exception as exc:  # noqa: BLE001
            lines.append(f"{mod}: not importable ({type(exc).__name__})")
    lines.append(f"device {torch.cuda.get_device_name()}")
    return ", ".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cases = select_cases(args.only)
    if args.dry_run:
        print(dry_run_listing(cases))
        return 0
    try:
        import torch
    except ImportError:
        print("compare_gpu: torch is needed to time on the GPU", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("compare_gpu: no CUDA device; use --dry-run to list the cases", file=sys.stderr)
        return 2
    header = environment()
    bw = copy_bandwidth()
    header += f"\nd2d copy bandwidth (1 GiB, read + write): {bw / 1e9:.0f} GB/s"
    print(header, flush=True)
    results: list[Result] = []
    for case in cases:
        t0 = time.perf_counter()
        rows = run_case(case, args)
        results += rows
        print("\n" + format_results(rows, bw) + f"\n({time.perf_counter() - t0:.1f} s)", flush=True)
    if args.log:
        with open(args.log, "w") as f:
            f.write(header + "\n\n" + format_results(results, bw) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
