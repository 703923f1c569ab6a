r"""
Discretisation methods, checked against SciPy
=============================================

A lightly damped resonator :math:`\ddot y + 2\zeta\omega_0 \dot y + \omega_0^2 y = \omega_0^2 u`
is discretised with a deliberately coarse step (about 6 samples per period) by every
method of :func:`ssmcore.discretize`. Zero-order hold reproduces the continuous step
response exactly at the samples; the bilinear (Tustin) transform keeps the frequency
response's shape but warps its frequency axis; forward Euler is *unstable* at this step.
Every ssmcore result is compared with :func:`scipy.signal.cont2discrete`.
"""

import matplotlib.pyplot as plt
import numpy as np
from scipy import signal

import ssmcore

w0, zeta, dt = 2 * np.pi, 0.1, 1 / 6
A = np.array([[0.0, 1.0], [-(w0**2), -2 * zeta * w0]])
B = np.array([[0.0], [w0**2]])
C = np.array([[1.0, 0.0]])
D = np.zeros((1, 1))
methods = ["zoh", "foh", "bilinear", "impulse", "backward_diff", "euler"]
L = 30

fig, (ax_step, ax_freq) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
# The continuous responses: a zero-order hold with a fine step is exact at its samples
# for a step input; the continuous gain is C (i w I - A)^-1 B.
fine = dt / 20
Af, Bf = ssmcore.discretize(A, B, fine, method="zoh")
yc = ssmcore.lti_simulate(Af, Bf, C, D, np.ones((1, 20 * L)))[0]
ax_step.plot(np.arange(1, 20 * L + 1) * fine, yc, color="black", lw=2, label="continuous")
w = np.linspace(0.05, np.pi / dt, 400)  # rad/s, up to Nyquist
Hc = np.array([(C @ np.linalg.solve(1j * wk * np.eye(2) - A, B))[0, 0] for wk in w])
ax_freq.semilogy(w / (2 * np.pi), np.abs(Hc), color="black", lw=2, label="continuous")

worst = 0.0
for method in methods:
    Ad, Bd, Cd, Dd, _ = ssmcore.cont2discrete((A, B, C, D), dt, method=method)
    ref = signal.cont2discrete((A, B, C, D), dt, method=method)
    worst = max(worst, *(np.max(np.abs(x - r)) for x, r in zip((Ad, Bd, Cd, Dd), ref[:4])))
    # step response with ssmcore's dlsim drop-in; frequency response H(e^{iw dt})
    _, y = ssmcore.dlsim((Ad, Bd, Cd, Dd, dt), np.ones(L))[:2]
    (line,) = ax_step.plot(np.arange(L) * dt, y[:, 0], "o-", ms=3, lw=1, label=method)
    z = np.exp(1j * w * dt)
    Hd = np.array([(Cd @ np.linalg.solve(zk * np.eye(2) - Ad, Bd) + Dd)[0, 0] for zk in z])
    ax_freq.semilogy(w / (2 * np.pi), np.abs(Hd), color=line.get_color(), lw=1, label=method)

ax_step.set(title="step response, dt = 1/6 s (6 samples per period)", xlabel="time [s]", ylim=(-1.5, 3.5))
ax_freq.set(title="gain |H|", xlabel="frequency [Hz]", ylim=(1e-2, 1e2))
ax_step.legend(fontsize=8, ncol=2)
ax_freq.legend(fontsize=8, ncol=2)
print(f"largest difference from scipy.signal.cont2discrete over all methods: {worst:.1e}")
assert worst < 1e-12
