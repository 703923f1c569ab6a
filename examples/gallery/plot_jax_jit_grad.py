r"""
Gradients in JAX: ``jax.jit(jax.grad(...))`` through ssmcore
============================================================

``ssmcore.jax.<op>`` is an ssmcore op as a JAX function with a ``custom_vjp``: it can
be ``jit``-ed, differentiated and ``vmap``-ed. Here a two-parameter model, a first-order
filter :math:`h_t = a\,h_{t-1} + g\,u_t` computed with :func:`ssmcore.linear_scan`, is
fitted to a noisy response by gradient descent (Adam), with the loss and its gradient compiled
together by :func:`jax.jit` over :func:`jax.value_and_grad`. The plot shows the loss
landscape, the descent path, and the JAX gradient against a finite difference.
"""

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import ssmcore.jax as sj

jax.config.update("jax_enable_x64", True)
rng = np.random.default_rng(0)
L = 400
u = jnp.asarray(rng.standard_normal(L))
a_true, g_true = 0.9, 0.5


def response(theta):
    """Filter output (L,) for theta = (logit of the decay a, gain g)."""
    a = jax.nn.sigmoid(theta[0])
    return sj.linear_scan(jnp.full((1, 1), a), theta[1] * u[None, :])[0]


y = response(jnp.array([np.log(a_true / (1 - a_true)), g_true])) + 0.05 * jnp.asarray(rng.standard_normal(L))


def loss(theta):
    return jnp.mean((response(theta) - y) ** 2)


value_and_grad = jax.jit(jax.value_and_grad(loss))
theta = jnp.array([-1.0, 1.5])
path = [np.asarray(theta)]
m = v = jnp.zeros(2)
for i in range(1, 151):  # Adam, written out
    value, g = value_and_grad(theta)
    m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g**2
    theta = theta - 0.08 * (m / (1 - 0.9**i)) / (jnp.sqrt(v / (1 - 0.999**i)) + 1e-8)
    path.append(np.asarray(theta))
path = np.array(path)

# The landscape, on a grid, with jax.vmap over the grid points.
s0, s1 = np.meshgrid(np.linspace(-1.5, 4.0, 60), np.linspace(-0.2, 1.8, 50))
grid = jnp.stack([s0.ravel(), s1.ravel()], axis=1)
Z = np.asarray(jax.jit(jax.vmap(loss))(grid)).reshape(s0.shape)

# JAX's gradient against a central finite difference along each parameter.
theta0 = jnp.array([1.0, 0.8])
g_jax = np.asarray(jax.grad(loss)(theta0))
h = 1e-6
g_fd = np.array([(loss(theta0 + h * e) - loss(theta0 - h * e)) / (2 * h) for e in np.eye(2)])

fig, (ax, ax_fit) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
cs = ax.contourf(1 / (1 + np.exp(-s0)), s1, np.log10(Z), levels=30, cmap="viridis")
fig.colorbar(cs, ax=ax, label="log10 loss")
ax.plot(1 / (1 + np.exp(-path[:, 0])), path[:, 1], "w.-", lw=1, ms=4, label="Adam path (jit(value_and_grad))")
ax.plot(a_true, g_true, "r*", ms=12, label="true (a, g)")
ax.set(xlabel="decay a", ylabel="gain g", title="loss landscape of the fit")
ax.legend(fontsize=8, loc="upper left")
ax_fit.plot(np.asarray(y)[:120], color="0.6", lw=1, label="noisy measurement")
ax_fit.plot(np.asarray(response(theta))[:120], lw=1.5, label="fitted filter")
ax_fit.set(xlabel="time step", title="fit after 150 Adam steps")
ax_fit.legend(fontsize=8)
print("gradient at (1.0, 0.8): jax", g_jax, " finite difference", g_fd)
print("fitted a, g:", float(jax.nn.sigmoid(theta[0])), float(theta[1]))
np.testing.assert_allclose(g_jax, g_fd, rtol=1e-5)
