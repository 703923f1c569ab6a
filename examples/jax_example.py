"""Fit a diagonal state space model in JAX with ssmcore ops (jit, grad and vmap).

A "true" diagonal system with real decay rates filters random input sequences;
we recover a model of it from input/output pairs. Per state n:

    Ad_n, Bd_n = discretize_diag(A_n, B_n, dt)          (zero-order hold)
    h_t = Ad_n h_{t-1} + Bd_n u_t                        linear_scan (time last)
    y_t = sum_n C_n h_t[n]

``ssmcore.jax.discretize_diag`` and ``ssmcore.jax.linear_scan`` run ssmcore's
Numba kernels through ``jax.pure_callback`` with hand-written VJPs; the model is
``jax.vmap``-ed over the batch and the whole training step is ``jax.jit``-ed.

Run:  python examples/jax_example.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time

try:
    import jax
    import jax.numpy as jnp
except ModuleNotFoundError:
    sys.exit('examples/jax_example.py needs JAX: python -m pip install "ssmcore[jax]"')
import numpy as np

import ssmcore.jax as sj


def model(params: dict, u: jnp.ndarray) -> jnp.ndarray:
    """One sequence u (L,) -> y (L,)."""
    A = -jnp.exp(params["log_neg_a"])  # stable: Re(A) < 0
    Ad, Bd = sj.discretize_diag(A, params["B"], jnp.exp(params["log_dt"]))
    h = sj.linear_scan(Ad[:, None], Bd[:, None] * u[None, :])  # (N, L); Ad constant in time
    return params["C"] @ h


def loss_fn(params: dict, u: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    pred = jax.vmap(model, in_axes=(None, 0))(params, u)
    return jnp.mean((pred - y) ** 2)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    args = parser.parse_args(argv)
    steps, L, batch, N = (40, 32, 4, 4) if args.quick else (300, 200, 16, 8)

    rng = np.random.default_rng(0)
    rates = np.geomspace(0.5, 20.0, N)
    true = {"log_neg_a": jnp.log(jnp.asarray(rates)), "B": jnp.full(N, 10.0),
            "C": jnp.asarray(rng.standard_normal(N)), "log_dt": jnp.log(jnp.asarray(0.05))}
    params = {"log_neg_a": jnp.zeros(N), "B": jnp.ones(N), "C": jnp.asarray(0.1 * rng.standard_normal(N)),
              "log_dt": jnp.log(jnp.asarray(0.05))}
    u_val = jnp.asarray(rng.standard_normal((32, L)), dtype=jnp.float32)
    y_val = jax.vmap(model, in_axes=(None, 0))(true, u_val)

    @jax.jit
    def step(params, opt, u, y, i):
        """One Adam step (written out: no optimiser library needed)."""
        loss, g = jax.value_and_grad(loss_fn)(params, u, y)
        m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, opt["m"], g)
        v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, opt["v"], g)
        lr = 0.05 * jnp.sqrt(1 - 0.999 ** (i + 1)) / (1 - 0.9 ** (i + 1))
        params = jax.tree_util.tree_map(lambda p, m, v: p - lr * m / (jnp.sqrt(v) + 1e-8), params, m, v)
        return params, {"m": m, "v": v}, loss

    opt = {"m": jax.tree_util.tree_map(jnp.zeros_like, params), "v": jax.tree_util.tree_map(jnp.zeros_like, params)}
    first = float(loss_fn(params, u_val, y_val))
    t0 = time.perf_counter()
    for i in range(steps):
        u = jnp.asarray(rng.standard_normal((batch, L)), dtype=jnp.float32)
        y = jax.vmap(model, in_axes=(None, 0))(true, u)
        params, opt, loss = step(params, opt, u, y, i)
        if i % max(1, steps // 6) == 0 or i == steps - 1:
            print(f"step {i:4d}  train mse {float(loss):.5f}")
    final = float(loss_fn(params, u_val, y_val))
    print(f"validation mse {first:.5f} -> {final:.5f}  ({steps} steps, L={L}, N={N}, {time.perf_counter() - t0:.1f} s)")
    print("true decay rates   ", rates.round(2))
    print("learned decay rates", np.sort(np.exp(np.asarray(params["log_neg_a"]))).round(2))
    return final / first


if __name__ == "__main__":
    main()
