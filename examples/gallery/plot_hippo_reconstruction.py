r"""
HiPPO: remembering a signal online
==================================

A HiPPO memory is a linear system whose state is, at every instant, the vector of
coefficients of the past signal in an orthogonal polynomial basis. **LegS** keeps the
whole history :math:`[0, t]` with a uniform weight; **LegT** keeps a sliding window
:math:`[t - \theta, t]`. Reading the signal back from the *final* state only shows
what the memory kept: more state (larger N) keeps more detail.

This is ``python -m ssmcore demo``: the computation is in :mod:`ssmcore.demo`
(LegT through :func:`ssmcore.discretize` and :func:`ssmcore.lti_simulate`, LegS
through :func:`ssmcore.hippo_online_coefficients`, both read back with
:func:`ssmcore.hippo_reconstruct`).
"""

import numpy as np

from ssmcore.demo import STATE_SIZES, approximation_table, make_signal, plot_reconstruction

# sphinx_gallery_thumbnail_number = 1
rng = np.random.default_rng(0)
theta = 0.25
t, u = make_signal(2000, rng)  # band-limited noise + a chirp on (0, 1]
rows, curves = approximation_table(t, u, theta)

fig = plot_reconstruction(t, u, curves, theta)

# %%
# The RMS reconstruction error falls quickly with the state size N:
print(f"{'measure':<8}{'N':>5}{'RMS error':>12}")
for measure, N, err, _ in rows:
    print(f"{measure:<8}{N:>5}{err:>12.2e}")
assert [r[1] for r in rows[::2]] == list(STATE_SIZES)
