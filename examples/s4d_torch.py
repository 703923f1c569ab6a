"""Train a small S4D model in PyTorch with ssmcore ops, on CPU.

Task: the output is the input delayed by ``delay`` steps and smoothed, a
long-memory map that a causal convolution with a learned SSM kernel can learn.
The S4D layer (Gu et al. 2022, "On the parameterization and initialization of
diagonal state space models") per channel h:

    A_n = -exp(log_a_re[h, n]) + i a_im[h, n]      (S4D-Lin init: -1/2 + i pi n)
    K_h = 2 Re( sum_n C_hn Bd_hn Ad_hn^l ),  l = 0..L-1    ``ssmcore.torch.ssm_kernel_diag`` (ZOH)
    y_h = K_h * u_h + D_h u_h                               ``ssmcore.torch.fft_conv``

wrapped as: linear 1 -> H channels, S4D, GELU, linear H -> 1. Gradients flow
through ssmcore's hand-written VJPs (complex ones in PyTorch's convention).

Run:  python examples/s4d_torch.py            (full size, well under 2 minutes)
      python examples/s4d_torch.py --quick    (a few seconds, used by the tests)
"""

from __future__ import annotations

import argparse
import math
import sys
import time

try:
    import torch
except ModuleNotFoundError:
    sys.exit('examples/s4d_torch.py needs PyTorch: python -m pip install "ssmcore[torch]"')

import ssmcore.torch as st


class S4D(torch.nn.Module):
    def __init__(self, H: int, N: int, dt_min: float = 1e-3, dt_max: float = 1e-1) -> None:
        super().__init__()
        n = torch.arange(N // 2, dtype=torch.float32)
        self.log_a_re = torch.nn.Parameter(torch.full((H, N // 2), math.log(0.5)))
        self.a_im = torch.nn.Parameter(math.pi * n.repeat(H, 1))
        self.C = torch.nn.Parameter(torch.randn(H, N // 2, 2) * math.sqrt(0.5))
        self.log_dt = torch.nn.Parameter(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.D = torch.nn.Parameter(torch.randn(H))
        self.register_buffer("B", torch.ones(H, N // 2, dtype=torch.complex64))

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # u: (batch, H, L)
        A = torch.complex(-torch.exp(self.log_a_re), self.a_im)
        C = torch.view_as_complex(self.C)
        K = st.ssm_kernel_diag(A, self.B, C, torch.exp(self.log_dt), u.shape[-1])  # (H, L), real
        return st.fft_conv(u, K, self.D)


class Model(torch.nn.Module):
    def __init__(self, H: int, N: int) -> None:
        super().__init__()
        self.enc = torch.nn.Linear(1, H)
        self.s4d = S4D(H, N)
        self.dec = torch.nn.Linear(H, 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # (batch, L) -> (batch, L)
        x = self.enc(u[..., None]).transpose(1, 2)  # (batch, H, L)
        x = torch.nn.functional.gelu(self.s4d(x))
        return self.dec(x.transpose(1, 2))[..., 0]


def make_batch(batch: int, L: int, delay: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    u = torch.randn(batch, L, generator=gen)
    shifted = torch.nn.functional.pad(u, (delay, 0))[:, :L]
    smooth = torch.nn.functional.avg_pool1d(torch.nn.functional.pad(shifted, (2, 0))[:, None], 3, stride=1)[:, 0]
    return u, smooth


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--length", type=int, default=None, help="sequence length L")
    parser.add_argument("--channels", type=int, default=32, help="H")
    parser.add_argument("--state", type=int, default=32, help="N (N/2 complex modes)")
    args = parser.parse_args(argv)
    steps = args.steps or (30 if args.quick else 400)
    L = args.length or (64 if args.quick else 256)
    H, N = (8, 8) if args.quick else (args.channels, args.state)
    delay = L // 8

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = Model(H, N)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    u_val, y_val = make_batch(64, L, delay, gen)
    with torch.no_grad():
        first = torch.mean((model(u_val) - y_val) ** 2).item()
    t0 = time.perf_counter()
    for step in range(steps):
        u, y = make_batch(16, L, delay, gen)
        loss = torch.mean((model(u) - y) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, steps // 8) == 0 or step == steps - 1:
            print(f"step {step:4d}  train mse {loss.item():.4f}")
    with torch.no_grad():
        final = torch.mean((model(u_val) - y_val) ** 2).item()
    print(f"validation mse {first:.4f} -> {final:.4f}  ({steps} steps, L={L}, H={H}, N={N}, "
          f"{time.perf_counter() - t0:.1f} s)")
    return final / first


if __name__ == "__main__":
    main()
