"""``python -m ssmcore demo``: online function approximation with HiPPO.

A HiPPO memory is a linear system whose state is, at every instant, the vector of
coefficients of the signal seen so far in an orthogonal basis: LegS keeps the whole
history ``[0, t]`` (scale-invariant), LegT a sliding window ``[t - theta, t]``. The demo
drives both memories with a signal, reconstructs the signal from the final state at
several state sizes N, saves a figure and prints the reconstruction error and the time
taken. LegT is an LTI system, so it runs through ssmcore's discretisation and batched LTI
kernel; LegS is time-varying (its dynamics scale with 1/t) and runs through the readable
step loop :func:`ssmcore._hippo.hippo_online_coefficients`.

A second table times a few ssmcore ops against the obvious alternatives (scipy, NumPy).
"""

from __future__ import annotations

import time

import numpy as np

STATE_SIZES = (8, 16, 32, 64)


def make_signal(L: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A test signal on (0, 1]: band-limited noise (filtered by an LTI system) plus a chirp."""
    import ssmcore

    t = np.arange(1, L + 1) / L
    # Band-limited random part: white noise through a 4th-order Butterworth low-pass,
    # simulated by ssmcore's dlsim drop-in (control convention, like scipy.signal.dlsim).
    from scipy import signal

    sys_ = signal.butter(4, 12.0 / (L / 2.0), output="ba")
    y = ssmcore.dlsim((*sys_, 1.0 / L), rng.standard_normal(L))[1]  # (tout, yout) for a tf
    noise = y[:, 0] / np.std(y)
    chirp = np.sin(2 * np.pi * (2.0 * t + 6.0 * t**2))
    return t, 0.6 * noise + chirp


def _legt_states(u: np.ndarray, N: int, dt: float, theta: float) -> np.ndarray:
    """LegT coefficients over time via discretize + the batched LTI kernel; shape (L, N)."""
    import ssmcore
    from ssmcore._hippo import hippo

    A, B = hippo("legt", N, theta=theta)
    Ad, Bd = ssmcore.discretize(A, B[:, None], dt, method="bilinear")
    # Observe the whole state: C = I, no feed-through. u is (M=1, L), y is (N, L).
    y = ssmcore.lti_simulate(Ad, Bd, np.eye(N), None, u[None, :])
    return y.T


def approximation_table(t: np.ndarray, u: np.ndarray, theta: float):
    """Reconstruct ``u`` from the final LegS and LegT states; errors, timings and curves."""
    from ssmcore._hippo import hippo_online_coefficients, hippo_reconstruct

    dt = t[1] - t[0]
    T = t[-1]
    window = t >= T - theta
    rows, curves = [], {}
    for N in STATE_SIZES:
        t0 = time.perf_counter()
        x = hippo_online_coefficients("legs", u, N)
        legs_time = time.perf_counter() - t0
        u_legs = hippo_reconstruct("legs", x[-1], t, t=T)

        t0 = time.perf_counter()
        x = _legt_states(u, N, dt, theta)
        legt_time = time.perf_counter() - t0
        u_legt = hippo_reconstruct("legt", x[-1], t[window], t=T, theta=theta)

        rms = lambda e: float(np.sqrt(np.mean(e**2)))
        rows.append(("legs", N, rms(u_legs - u), legs_time))
        rows.append(("legt", N, rms(u_legt - u[window]), legt_time))
        curves[("legs", N)] = u_legs
        curves[("legt", N)] = u_legt
    return rows, curves


def timing_table(rng: np.random.Generator, quick: bool):
    """Median times of a few ssmcore ops next to the straightforward alternative."""
    import scipy.signal

    import ssmcore

    def median_time(fn, repeat):
        fn()  # warm-up: Numba compiles (or loads its cache) on the first call
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    n_sys = 1000 if quick else 10_000
    A = rng.standard_normal((n_sys, 4, 4))
    B = rng.standard_normal((n_sys, 4, 1))
    C = np.ones((1, 4))
    D = np.zeros((1, 1))
    rows = []
    ours = median_time(lambda: ssmcore.discretize(A, B, 0.01, method="zoh"), 5)
    theirs = median_time(
        lambda: [scipy.signal.cont2discrete((A[i], B[i], C, D), 0.01, method="zoh") for i in range(n_sys)], 1
    )
    rows.append((f"discretize {n_sys} 4x4 systems (zoh)", ours, "loop of scipy.signal.cont2discrete", theirs))

    H, L = (64, 4096) if quick else (256, 16384)
    a = rng.uniform(0.9, 0.999, (H, L)).astype(np.float32)
    b = rng.standard_normal((H, L)).astype(np.float32)

    def numpy_loop():
        h = np.empty_like(b)
        h[:, 0] = b[:, 0]
        for k in range(1, L):
            h[:, k] = a[:, k] * h[:, k - 1] + b[:, k]
        return h

    ours = median_time(lambda: ssmcore.linear_scan(a, b), 7)
    theirs = median_time(numpy_loop, 2)
    rows.append((f"linear_scan ({H}, {L}) float32", ours, "NumPy loop over time", theirs))

    Ad = np.diag(np.full(8, 0.95)) + 0.01 * rng.standard_normal((8, 8))
    sys_ = (Ad, rng.standard_normal((8, 1)), rng.standard_normal((1, 8)), np.zeros((1, 1)), 1.0)
    uu = rng.standard_normal(20_000 if quick else 100_000)
    ours = median_time(lambda: ssmcore.dlsim(sys_, uu), 7)
    theirs = median_time(lambda: scipy.signal.dlsim(sys_, uu), 2)
    rows.append((f"dlsim N=8, L={uu.size}", ours, "scipy.signal.dlsim", theirs))
    return rows


def require_matplotlib() -> None:
    """Raise an ImportError with the install command when matplotlib is missing.

    Called before any computation, so that a missing plotting library is reported
    at once rather than after the tables.
    """
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError(
            "the demo saves a figure and needs matplotlib, which is not installed; install it with: "
            'python -m pip install "ssmcore[demo]"   (or: python -m pip install matplotlib)'
        )


def plot_reconstruction(t: np.ndarray, u: np.ndarray, curves: dict, theta: float):
    """The figure of the demo: the signal and its LegS / LegT reconstructions per N."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10, 7), constrained_layout=True)
    window = t >= t[-1] - theta
    for ax, measure in zip(axes, ("legs", "legt")):
        tt = t if measure == "legs" else t[window]
        uu = u if measure == "legs" else u[window]
        ax.plot(tt, uu, color="black", lw=2.0, label="signal")
        for N in STATE_SIZES:
            ax.plot(tt, curves[(measure, N)], lw=1.0, label=f"N = {N}")
        what = "whole history [0, t]" if measure == "legs" else f"sliding window [t - {theta:g}, t]"
        ax.set_title(f"HiPPO-{measure.capitalize()}: reconstruction from the final state ({what})")
        ax.set_xlabel("time")
        ax.legend(loc="upper left", ncol=5, fontsize=8)
    return fig


def save_figure(path: str, t: np.ndarray, u: np.ndarray, curves: dict, theta: float) -> None:
    """Draw the demo's figure (:func:`plot_reconstruction`) and save it to ``path`` as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed: the figure goes to a file
    import matplotlib.pyplot as plt

    fig = plot_reconstruction(t, u, curves, theta)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(output: str = "ssmcore_demo.png", quick: bool = False) -> None:
    """Run the demo: print the tables and save the figure to ``output``."""
    require_matplotlib()
    rng = np.random.default_rng(0)
    L = 1000 if quick else 4000
    theta = 0.25
    t, u = make_signal(L, rng)
    t0 = time.perf_counter()
    rows, curves = approximation_table(t, u, theta)
    total = time.perf_counter() - t0

    print(f"HiPPO online approximation of a {L}-sample signal (band-limited noise + chirp)")
    print("reconstruction from the final state; RMS error over the measure's window\n")
    print(f"{'measure':<8}{'N':>5}{'RMS error':>12}{'time [ms]':>12}")
    for measure, N, err, sec in rows:
        print(f"{measure:<8}{N:>5}{err:>12.2e}{sec * 1e3:>12.1f}")
    print(f"\n(total {total:.2f} s, including first-call JIT compilation or cache loading)\n")

    timings = timing_table(rng, quick)
    print(f"{'ssmcore op':<40}{'ssmcore':>11}   {'alternative':<38}{'time':>11}{'speed-up':>10}")
    for name, ours, alt, theirs in timings:
        print(f"{name:<40}{ours * 1e3:>9.2f}ms   {alt:<38}{theirs * 1e3:>9.1f}ms{theirs / ours:>9.1f}x")
    print("(medians, one process; 2-core machines are noisy: compare ratios, not absolute times)")

    save_figure(output, t, u, curves, theta)
    print(f"\nfigure saved to {output}")
