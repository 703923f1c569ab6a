"""Discretise a continuous-time system, simulate it and get a gradient -- NumPy only.

A damped spring (position, velocity) driven by a force u(t):

    x' = [[0, 1], [-k, -c]] x + [0, 1]^T u,     y = position

1. ``ssmcore.discretize`` turns (A, B) into (Ad, Bd) for a step dt (zero-order hold);
2. ``ssmcore.lti_simulate`` runs x_t = Ad x_{t-1} + Bd u_t, y_t = C x_t;
3. ``ssmcore.vjp`` gives the gradient of a loss with respect to the spring
   constant k, chaining the pullbacks of the two ops by hand (no framework), and
   a finite difference confirms it.

Run:  python examples/numpy_lti.py [--steps 400]
"""

from __future__ import annotations

import argparse

import numpy as np

import ssmcore
from ssmcore import discretize, lti_simulate


def system(k: float, c: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    A = np.array([[0.0, 1.0], [-k, -c]])
    B = np.array([[0.0], [1.0]])
    return A, B


def loss_and_grad_k(k: float, u: np.ndarray, target: np.ndarray, dt: float) -> tuple[float, float]:
    """Mean squared error of the simulated position against ``target``, and d loss / d k."""
    A, B = system(k)
    C = np.array([[1.0, 0.0]])
    (Ad, Bd), pull_disc = ssmcore.vjp("discretize", A, B, dt, "zoh")
    y, pull_sim = ssmcore.vjp("lti_simulate", Ad, Bd, C, None, u)
    err = y - target
    loss = float(np.mean(err**2))
    # Reverse mode by hand: d loss / d y -> (Ad, Bd) -> (A, B) -> k (A[1, 0] = -k).
    gAd, gBd, *_ = pull_sim(2 * err / err.size)
    gA, gB, _ = pull_disc((gAd, gBd))
    return loss, -gA[1, 0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="sequence length")
    args = parser.parse_args(argv)

    dt = 0.05
    t = np.arange(args.steps) * dt
    u = np.sin(1.3 * t)[None]  # (M=1, L)
    A, B = system(k=2.0)
    Ad, Bd = discretize(A, B, dt)  # zero-order hold
    C = np.array([[1.0, 0.0]])
    target = lti_simulate(Ad, Bd, C, None, u)  # "measured" positions of the true spring, k = 2
    print(f"Ad =\n{Ad}\nfinal position {target[0, -1]:+.4f}")

    k = 1.2
    for it in range(5):  # a few (clipped) gradient steps towards the true k = 2
        loss, g = loss_and_grad_k(k, u, target, dt)
        h = 1e-6
        fd = (loss_and_grad_k(k + h, u, target, dt)[0] - loss_and_grad_k(k - h, u, target, dt)[0]) / (2 * h)
        print(f"step {it}: k = {k:.4f}  loss = {loss:.3e}  dloss/dk = {g:+.6e}  (finite difference {fd:+.6e})")
        k -= 0.5 * g / max(1.0, abs(g))
    assert np.isclose(g, fd, rtol=1e-4, atol=1e-10), "pullback and finite difference disagree"


if __name__ == "__main__":
    main()
