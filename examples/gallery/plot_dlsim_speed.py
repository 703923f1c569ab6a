r"""
Long signals: ``dlsim`` against ``scipy.signal.dlsim``
======================================================

:func:`ssmcore.dlsim` is a drop-in for :func:`scipy.signal.dlsim` (same arguments,
same outputs). SciPy steps through time in a Python loop; ssmcore runs the recurrence
in a compiled Numba kernel. The plot shows the wall time of one simulation of an
8-state system against the signal length; the outputs agree to rounding.
"""

import time

import matplotlib.pyplot as plt
import numpy as np
from scipy import signal

import ssmcore

rng = np.random.default_rng(0)
N = 8
Ad = np.diag(np.full(N, 0.95)) + 0.01 * rng.standard_normal((N, N))
system = (Ad, rng.standard_normal((N, 1)), rng.standard_normal((1, N)), np.zeros((1, 1)), 1.0)


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


ssmcore.dlsim(system, rng.standard_normal(100))  # first call compiles (or loads the cache)
lengths = np.unique(np.geomspace(1_000, 3_000_000, 8).astype(int))
ours, theirs = [], {}
for L in lengths:
    u = rng.standard_normal(L)
    ours.append(best_of(lambda: ssmcore.dlsim(system, u), 3))
    if L <= 200_000:  # scipy's Python loop: about 3 us per step
        theirs[L] = best_of(lambda: signal.dlsim(system, u), 1)
        assert np.allclose(ssmcore.dlsim(system, u)[1], signal.dlsim(system, u)[1], rtol=1e-9, atol=1e-9)

fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
ax.loglog(lengths, ours, "o-", label="ssmcore.dlsim")
ax.loglog(list(theirs), list(theirs.values()), "s-", label="scipy.signal.dlsim")
ax.set(xlabel="signal length L", ylabel="seconds per simulation", title=f"{N}-state system, one input")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
for L, t in theirs.items():
    print(f"L = {L:>8}: scipy {t * 1e3:8.1f} ms, ssmcore {ours[list(lengths).index(L)] * 1e3:6.2f} ms")
