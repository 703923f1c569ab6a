r"""
S4D and S4 kernels as a filter bank
===================================

In convolution mode an SSM layer is a causal convolution with the kernel
:math:`K_l = C \bar A^l \bar B`. With the S4D-Lin initialisation
(:math:`A_n = -\tfrac12 + i\pi n`, :func:`ssmcore.s4d_lin`) the step ``dt`` sets the
time scale: small ``dt`` gives a long, slowly decaying kernel, large ``dt`` a short one.
A bank of channels with log-spaced ``dt`` (as S4 initialises them) therefore looks at
a signal at several time scales at once. Here the kernels come from
:func:`ssmcore.ssm_kernel_diag` (S4D, Vandermonde) and :func:`ssmcore.ssm_kernel_dplr`
(S4 with the HiPPO-LegS DPLR matrix, Cauchy kernel + Woodbury), and the bank filters
a synthetic hourly electricity load (daily and weekly cycles, weather, noise) with
:func:`ssmcore.fft_conv`.
"""

import matplotlib.pyplot as plt
import numpy as np

import ssmcore

rng = np.random.default_rng(1)
N, L = 64, 24 * 7 * 6  # 64 states; six weeks of hourly samples
dts = np.geomspace(1e-3, 1e-1, 4)  # one channel per time scale
H = dts.size

# S4D-Lin: N/2 complex modes (conjugate symmetry), B = 1, random C.
A = np.tile(ssmcore.s4d_lin(N), (H, 1))
B = np.ones_like(A)
C = (rng.standard_normal(A.shape) + 1j * rng.standard_normal(A.shape)) * np.sqrt(0.5)
K_s4d = ssmcore.ssm_kernel_diag(A, B, C, dts, L)  # (H, L), real

# S4: HiPPO-LegS in diagonal plus low-rank form, same dt's.
Lambda, P, B_dplr = ssmcore.dplr("legs", N, H=H)
C_dplr = (rng.standard_normal(Lambda.shape) + 1j * rng.standard_normal(Lambda.shape)) * np.sqrt(0.5)
K_s4 = ssmcore.ssm_kernel_dplr(Lambda, P, B_dplr, C_dplr, dts, L)

# A load-like signal: daily and weekly cycles, a slow weather drift, noise and spikes.
hours = np.arange(L)
weather = np.cumsum(rng.standard_normal(L)) / 15
load = (np.sin(2 * np.pi * hours / 24) + 0.5 * np.sin(2 * np.pi * hours / (24 * 7)) + weather
        + 0.3 * rng.standard_normal(L) + 2.0 * (rng.random(L) < 0.01))
u = (load - load.mean()) / load.std()
y = ssmcore.fft_conv(np.broadcast_to(u, (H, L)), K_s4d)  # (H, L): every channel filters u
y /= y.std(axis=-1, keepdims=True)

fig = plt.figure(figsize=(11, 7.5), constrained_layout=True)
grid = fig.add_gridspec(2, 2)
ax_d, ax_s, ax_u = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
lags = np.arange(L)
for h, dt in enumerate(dts):
    ax_d.plot(lags, K_s4d[h] / np.abs(K_s4d[h]).max() + 2 * h, lw=0.9, label=f"dt = {dt:.0e}")
    ax_s.plot(lags, K_s4[h] / np.abs(K_s4[h]).max() + 2 * h, lw=0.9)
for ax, title in ((ax_d, "S4D-Lin kernels (ssm_kernel_diag)"), (ax_s, "S4 LegS kernels (ssm_kernel_dplr)")):
    ax.set(xscale="log", xlim=(1, L), yticks=[], xlabel="lag [samples]", title=title)
ax_d.legend(fontsize=8, loc="upper right")
ax_u.plot(hours / 24, u / 2 + 8, color="0.4", lw=0.6, label="load (normalised)")
for h, dt in enumerate(dts):
    ax_u.plot(hours / 24, y[h] / 2 + 2 * h, lw=0.9, label=f"S4D channel, dt = {dt:.0e}")
ax_u.set(xlabel="day", yticks=[],
         title="the bank on six weeks of hourly load: each channel responds on its own time scale")
ax_u.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.12))
