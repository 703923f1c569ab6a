r"""
Training a tiny S4D model in PyTorch
====================================

A one-layer S4D model (linear 1 -> H, S4D convolution, GELU, linear H -> 1) learns a
long-memory map, *the input delayed by 24 steps and smoothed*, on CPU. The layer's
kernel is :func:`ssmcore.ssm_kernel_diag` and its convolution :func:`ssmcore.fft_conv`,
called as ``ssmcore.torch.<op>``: PyTorch autograd runs ssmcore's hand-written
vector-Jacobian products (complex ones in PyTorch's convention). The model is the one of
``examples/s4d_torch.py``.
"""

import math

import matplotlib.pyplot as plt
import torch

import ssmcore.torch as st

torch.manual_seed(0)
H, N, L, delay, steps = 16, 16, 192, 24, 150


class S4D(torch.nn.Module):
    """Diagonal SSM convolution layer with the S4D-Lin initialisation, per channel h."""

    def __init__(self, H: int, N: int) -> None:
        super().__init__()
        n = torch.arange(N // 2, dtype=torch.float32)
        self.log_a_re = torch.nn.Parameter(torch.full((H, N // 2), math.log(0.5)))
        self.a_im = torch.nn.Parameter(math.pi * n.repeat(H, 1))
        self.C = torch.nn.Parameter(torch.randn(H, N // 2, 2) * math.sqrt(0.5))
        self.log_dt = torch.nn.Parameter(torch.linspace(math.log(1e-3), math.log(1e-1), H))
        self.D = torch.nn.Parameter(torch.randn(H))
        self.register_buffer("B", torch.ones(H, N // 2, dtype=torch.complex64))

    def kernel(self, L: int) -> torch.Tensor:
        A = torch.complex(-torch.exp(self.log_a_re), self.a_im)
        return st.ssm_kernel_diag(A, self.B, torch.view_as_complex(self.C), torch.exp(self.log_dt), L)

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # (batch, H, L)
        return st.fft_conv(u, self.kernel(u.shape[-1]), self.D)


enc, s4d, dec = torch.nn.Linear(1, H), S4D(H, N), torch.nn.Linear(H, 1)


def forward(u: torch.Tensor) -> torch.Tensor:  # (batch, L) -> (batch, L)
    x = torch.nn.functional.gelu(s4d(enc(u[..., None]).transpose(1, 2)))
    return dec(x.transpose(1, 2))[..., 0]


def target(u: torch.Tensor) -> torch.Tensor:
    shifted = torch.nn.functional.pad(u, (delay, 0))[:, :L]
    return torch.nn.functional.avg_pool1d(torch.nn.functional.pad(shifted, (2, 0))[:, None], 3, stride=1)[:, 0]


params = [*enc.parameters(), *s4d.parameters(), *dec.parameters()]
opt = torch.optim.Adam(params, lr=1e-2)
losses = []
for step in range(steps):
    u = torch.randn(16, L)
    loss = torch.mean((forward(u) - target(u)) ** 2)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())

u = torch.randn(1, L)
with torch.no_grad():
    pred, want, K = forward(u)[0], target(u)[0], s4d.kernel(L)

fig, (ax_loss, ax_fit, ax_k) = plt.subplots(1, 3, figsize=(12, 3.8), constrained_layout=True)
ax_loss.semilogy(losses)
ax_loss.set(xlabel="Adam step", ylabel="training MSE", title="loss")
ax_fit.plot(want, color="black", lw=2, label="target: input delayed by 24, smoothed")
ax_fit.plot(pred, lw=1.2, label="S4D model")
ax_fit.set(xlabel="time step", title="a new sequence", xlim=(0, 100))
ax_fit.legend(fontsize=8, loc="lower left")
ax_k.plot(K.T, lw=0.8)
ax_k.axvline(delay, color="black", ls=":", lw=1)
ax_k.set(xlabel="lag", title=f"the {H} learned kernels (dotted: the delay)", xlim=(0, 80))
print(f"training MSE {losses[0]:.3f} -> {losses[-1]:.4f} in {steps} steps")
assert losses[-1] < 0.5 * losses[0]
