"""A small end-to-end demo: per-feature ridge on scikit-learn's diabetes data.

The inner problem is ridge regression with one strength ``exp(θ_i)`` per
feature; the outer problem minimises the validation loss over ``θ`` with
``hoag`` hypergradients and Adam. Because the inner problem has a closed form,
the demo also prints how far ``hoag`` is from the exact hypergradient.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_diabetes

from hippojax._src.implicit import hoag
from hippojax._src.steps import gradient_step


def diabetes_splits(seed: int = 0):
  """Standardised (train, validation) splits of the diabetes data."""
  x, y = load_diabetes(return_X_y=True)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(y))
  x, y = x[order], y[order]
  half = len(y) // 2
  mean, std = x[:half].mean(0), x[:half].std(0)
  x = (x - mean) / std
  y = (y - y[:half].mean()) / y[:half].std()
  return (jnp.asarray(x[:half]), jnp.asarray(y[:half])), (
      jnp.asarray(x[half:]), jnp.asarray(y[half:]))


def ridge_loss(w, theta, batch):
  x, y = batch
  return 0.5 * jnp.mean((x @ w - y) ** 2) + 0.5 * jnp.sum(jnp.exp(theta) * w**2)


def val_loss(w, theta, batch):
  x, y = batch
  return 0.5 * jnp.mean((x @ w - y) ** 2)


def exact_ridge(theta, batch):
  """The closed-form minimiser ``(XᵀX/n + diag(e^θ))⁻¹ Xᵀy/n``."""
  x, y = batch
  n = x.shape[0]
  return jnp.linalg.solve(x.T @ x / n + jnp.diag(jnp.exp(theta)), x.T @ y / n)


def run_demo(outer_steps: int = 40, inner_steps: int = 300,
             seed: int = 0) -> dict:
  """Runs the demo and returns its numbers (also printed by the CLI).

  Raises:
    ValueError: if ``outer_steps`` or ``inner_steps`` is below 1.
  """
  for name, value in (("outer_steps", outer_steps),
                      ("inner_steps", inner_steps)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
  train, val = diabetes_splits(seed)
  x = train[0]
  curvature = float(jnp.linalg.eigvalsh(x.T @ x / x.shape[0]).max())
  # A learning rate safe for every θ the outer loop can reach (θ <= 3).
  step = gradient_step(ridge_loss, learning_rate=1.0 / (curvature + np.exp(3)))

  def exact_hypergrad(theta):
    return jax.grad(lambda t: val_loss(exact_ridge(t, train), t, val))(theta)

  @jax.jit
  def outer_step(theta, w, opt_state, q):
    w = jax.lax.fori_loop(0, inner_steps, lambda _, w: step(w, theta, train), w)
    hg = hoag(step, val_loss, theta, w, train, val, tol=1e-10, maxiter=200,
              init=q)
    updates, opt_state = optimizer.update(hg.grad, opt_state, theta)
    theta = jnp.clip(optax.apply_updates(theta, updates), -8.0, 3.0)
    return theta, w, opt_state, hg

  optimizer = optax.adam(0.1)
  theta = jnp.zeros(x.shape[1], x.dtype)
  w = jnp.zeros_like(theta)
  opt_state = optimizer.init(theta)
  q = jnp.zeros_like(theta)
  before = float(val_loss(exact_ridge(theta, train), theta, val))
  start = time.perf_counter()
  for _ in range(outer_steps):
    theta_prev = theta
    theta, w, opt_state, hg = outer_step(theta, w, opt_state, q)
    q = hg.info.solution
  seconds = time.perf_counter() - start
  exact = exact_hypergrad(theta_prev)
  rel_error = float(jnp.linalg.norm(hg.grad - exact) / jnp.linalg.norm(exact))
  at_optimum = hoag(step, val_loss, theta_prev, exact_ridge(theta_prev, train),
                    train, val, tol=1e-12, maxiter=200).grad
  rel_error_at_optimum = float(
      jnp.linalg.norm(at_optimum - exact) / jnp.linalg.norm(exact))
  after = float(val_loss(exact_ridge(theta, train), theta, val))
  return {
      "val_loss_before": before,
      "val_loss_after": after,
      "hypergrad_rel_error": rel_error,
      "hypergrad_rel_error_at_optimum": rel_error_at_optimum,
      "cg_iterations": int(hg.info.num_iters),
      "cg_residual": float(hg.info.residual),
      "outer_steps": outer_steps,
      "inner_steps": inner_steps,
      "seconds": seconds,
      "ridge_strengths": np.exp(np.asarray(theta)).round(4).tolist(),
  }
