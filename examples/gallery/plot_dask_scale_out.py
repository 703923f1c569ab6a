r"""
Scale-out with Dask: a recurrence chunked in time, exactly
==========================================================

:mod:`ssmcore.dask` runs the ssmcore ops on Dask arrays, lazily, block by block. Chunks
over channels are independent; chunks over *time* are not (each chunk's first state
depends on all the steps before it), and ``ssmcore.dask`` handles them in two parallel
passes: every chunk of :math:`h_t = a_t h_{t-1} + b_t` is summarised as the affine map
:math:`h \mapsto P_k h + E_k`, a short sequential combine over the summaries gives every
chunk its true initial state, and the chunks are rerun from those states. The result
equals the in-memory :func:`ssmcore.linear_scan` to rounding, however the time axis is
cut, as the left panel shows; the right panel zooms on chunk boundaries.

This example is built only where ``ssmcore.dask`` and Dask are installed.
"""

import dask
import dask.array as da
import matplotlib.pyplot as plt
import numpy as np

import ssmcore
import ssmcore.dask as sd

rng = np.random.default_rng(0)
C, L = 4, 100_000  # 4 channels of a long, slowly forgetting recurrence
a = rng.uniform(0.999, 1.0, (C, L))
b = rng.standard_normal((C, L))
ref = ssmcore.linear_scan(a, b)

chunk_sizes = [100_000, 25_000, 5_000, 1_000, 250]
errors = []
with dask.config.set(scheduler="threads"):
    for chunk in chunk_sizes:
        h = sd.linear_scan(da.from_array(a, chunks=(C, chunk)), da.from_array(b, chunks=(C, chunk)))
        got = h.compute()
        errors.append(float(np.max(np.abs(got - ref)) / np.max(np.abs(ref))))
    h = sd.linear_scan(da.from_array(a, chunks=(C, 5_000)), da.from_array(b, chunks=(C, 5_000)))
    zoom = slice(9_500, 20_500)
    got = h[0, zoom].compute()

fig, (ax_err, ax_zoom) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
n_chunks = [L // c for c in chunk_sizes]
# one chunk is the in-memory call itself (difference 0): drawn at the bottom of the axis
ax_err.semilogx(n_chunks, np.maximum(errors, 1e-17), "o-")
ax_err.axhline(np.finfo(np.float64).eps, color="0.5", ls=":", label="float64 machine epsilon")
ax_err.set(xlabel="number of time chunks", ylabel="max relative difference from in-memory",
           yscale="log", ylim=(5e-18, 1e-10), title=f"ssmcore.dask.linear_scan, {C} x {L} steps")
ax_err.legend()
t = np.arange(L)[zoom]
ax_zoom.plot(t, ref[0, zoom], color="black", lw=3, label="in memory")
ax_zoom.plot(t, got, color="tab:orange", lw=1, label="Dask, chunks of 5000")
for edge in range(10_000, 20_001, 5_000):
    ax_zoom.axvline(edge, color="tab:red", ls="--", lw=0.8)
ax_zoom.set(xlabel="time step", title="channel 0 across chunk boundaries (dashed)")
ax_zoom.legend(loc="upper left")
print("max relative differences:", dict(zip(n_chunks, [f"{e:.1e}" for e in errors])))
assert max(errors) < 1e-12
