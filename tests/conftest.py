"""Shared problems with exact answers for the tests of the core algorithms.

float64 is enabled for the whole test session so that comparisons against
closed forms and dense solves can use tight tolerances.

The loss functions are module-level so that every test passes the *same*
callables (and equal ``gradient_step`` objects) to the library: they are
static arguments of its jitted implementations.
"""

import dataclasses
import functools
import types
from typing import Any, Callable

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import hippojax

jax.config.update("jax_enable_x64", True)

PyTree = Any


# ----------------------------------------------------------------------------
# Per-feature ridge regression: w*(θ) = (XᵀX/n + diag(e^θ))⁻¹ Xᵀy/n.
# ----------------------------------------------------------------------------


def ridge_loss(w, theta, batch):
  """0.5·mean((Xw − y)²) + 0.5·Σ e^θ_i w_i²."""
  x, y = batch["x"], batch["y"]
  return 0.5 * jnp.mean((x @ w - y)**2) + 0.5 * jnp.sum(jnp.exp(theta) * w**2)


def ridge_val(w, theta, batch):
  """0.5·mean((Xw − y)²) on held-out data; does not read θ."""
  del theta
  x, y = batch["x"], batch["y"]
  return 0.5 * jnp.mean((x @ w - y)**2)


def ridge_val_direct(w, theta, batch):
  """Validation loss that also depends on λ = e^θ directly: + 0.1·Σ λ²."""
  return ridge_val(w, theta, batch) + 0.1 * jnp.sum(jnp.exp(theta)**2)


def ridge_solution(theta, batch):
  """Closed-form minimiser of :func:`ridge_loss`."""
  x, y = batch["x"], batch["y"]
  n = x.shape[0]
  a = x.T @ x / n + jnp.diag(jnp.exp(theta))
  return jnp.linalg.solve(a, x.T @ y / n)


def ridge_hessian(theta, batch):
  x = batch["x"]
  return x.T @ x / x.shape[0] + jnp.diag(jnp.exp(theta))


# ----------------------------------------------------------------------------
# Pytree ridge: params {"w", "b"}, hparams {"log_l2", "log_b"}.
# ----------------------------------------------------------------------------


def tree_ridge_loss(params, hparams, batch):
  x, y = batch["x"], batch["y"]
  resid = x @ params["w"] + params["b"] - y
  return (0.5 * jnp.mean(resid**2) +
          0.5 * jnp.sum(jnp.exp(hparams["log_l2"]) * params["w"]**2) +
          0.5 * jnp.exp(hparams["log_b"]) * params["b"]**2)


def tree_ridge_val(params, hparams, batch):
  del hparams
  x, y = batch["x"], batch["y"]
  return 0.5 * jnp.mean((x @ params["w"] + params["b"] - y)**2)


def tree_ridge_solution(hparams, batch):
  """Closed form with the design [X, 1] and penalty diag(e^log_l2, e^log_b)."""
  x, y = batch["x"], batch["y"]
  n = x.shape[0]
  a = jnp.concatenate([x, jnp.ones((n, 1), x.dtype)], axis=1)
  penalty = jnp.concatenate(
      [jnp.exp(hparams["log_l2"]),
       jnp.exp(hparams["log_b"])[None]])
  sol = jnp.linalg.solve(a.T @ a / n + jnp.diag(penalty), a.T @ y / n)
  return {"w": sol[:-1], "b": sol[-1]}


# ----------------------------------------------------------------------------
# Logistic regression with per-feature L2 (labels in {−1, +1}).
# ----------------------------------------------------------------------------


def logistic_loss(w, theta, batch):
  x, y = batch["x"], batch["y"]
  return (jnp.mean(jnp.logaddexp(0.0, -y * (x @ w))) +
          0.5 * jnp.sum(jnp.exp(theta) * w**2))


def logistic_val(w, theta, batch):
  del theta
  x, y = batch["x"], batch["y"]
  return jnp.mean(jnp.logaddexp(0.0, -y * (x @ w)))


@functools.partial(jax.jit, static_argnums=0)
def _newton_step(loss, w, theta, batch):
  hess = jax.hessian(loss)(w, theta, batch)
  return w - jnp.linalg.solve(hess, jax.grad(loss)(w, theta, batch))


def newton_solve(loss, w0, theta, batch, iters=30):
  """Minimises a smooth strongly convex loss by Newton's method."""
  w = w0
  for _ in range(iters):
    w = _newton_step(loss, w, theta, batch)
  return w


@functools.partial(jax.jit, static_argnums=(0, 1))
def dense_fixed_point_grad(step, val_loss, theta, state, train, val):
  """Dense ``(I − Jᵀ)⁻¹`` hypergradient of any step on its flattened state.

  Returns ``(grad, I − Jᵀ, ∇_state L_val)``.
  """
  flat, unravel = jax.flatten_util.ravel_pytree(state)
  phi = lambda s, th: jax.flatten_util.ravel_pytree(
      step(unravel(s), th, train))[0]
  jac = jax.jacobian(phi, argnums=0)(flat, theta)
  b_mat = jax.jacobian(phi, argnums=1)(flat, theta)
  g_s, g_th = jax.grad(lambda s, th: val_loss(unravel(s), th, val),
                       argnums=(0, 1))(flat, theta)
  system = jnp.eye(flat.size) - jac.T
  q = jnp.linalg.solve(system, g_s)
  return g_th + b_mat.T @ q, system, g_s


@functools.partial(jax.jit, static_argnums=(0, 1))
def dense_implicit_grad(train_loss, val_loss, w, theta, train_batch,
                        val_batch):
  """∇_λ L_val − (∂²_{wλ} L_train)ᵀ H⁻¹ ∇_w L_val with dense matrices."""
  g_w, g_lam = jax.grad(val_loss, argnums=(0, 1))(w, theta, val_batch)
  h = jax.hessian(train_loss)(w, theta, train_batch)
  mixed = jax.jacobian(jax.grad(train_loss), argnums=1)(w, theta, train_batch)
  return g_lam - mixed.T @ jnp.linalg.solve(h, g_w)


# ----------------------------------------------------------------------------
# Problem containers.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Problem:
  """A bilevel problem at an (exact) inner solution.

  Attributes:
    train_loss, val_loss: the losses; ``step`` is a gradient step on
      ``train_loss`` with learning rate ``lr`` (``1 / λ_max(H)`` at ``theta``).
    theta: hyperparameters; ``params``: the exact inner solution at ``theta``.
    train, val: full training and validation batches.
    exact: the exact hypergradient at ``theta``.
    solution: ``theta -> w*(theta)`` when a closed form exists.
  """

  train_loss: Callable
  val_loss: Callable
  step: Callable
  lr: float
  theta: PyTree
  params: PyTree
  train: PyTree
  val: PyTree
  exact: PyTree
  solution: Callable | None = None

  def batches(self, num_steps, batch_size=10, seed=0):
    """``num_steps`` random minibatches of the training data, stacked."""
    n = self.train["x"].shape[0]
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.choice(n, batch_size, replace=False)
                    for _ in range(num_steps)])
    return jax.tree.map(lambda a: a[idx], self.train)


def _regression_data(seed, n, d, dtype):
  rng = np.random.default_rng(seed)
  w_true = rng.normal(size=d)

  def split():
    x = rng.normal(size=(n, d))
    y = x @ w_true + 0.5 * rng.normal(size=n) + 0.3
    return {"x": jnp.asarray(x, dtype), "y": jnp.asarray(y, dtype)}

  return split(), split()


@functools.partial(jax.jit, static_argnums=0)
def _max_curvature(train_loss, params, theta, batch):
  """λ_max of the dense Hessian of ``train_loss`` in ``params``."""
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  h = jax.hessian(lambda v: train_loss(unravel(v), theta, batch))(flat)
  return jnp.linalg.eigvalsh(h)[-1]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _closed_form(solution, val_loss, theta, train, val):
  """w*(θ) and the exact hypergradient, jax.grad through the closed form."""
  exact = jax.grad(lambda th: val_loss(solution(th, train), th, val))(theta)
  return solution(theta, train), exact


def make_ridge(seed=0, n=50, d=6, dtype=jnp.float64, direct=False):
  """Per-feature ridge with the closed-form exact hypergradient."""
  train, val = _regression_data(seed, n, d, dtype)
  theta = jnp.asarray(np.random.default_rng(seed + 1).uniform(-2.5, -0.5, d),
                      dtype)
  val_loss = ridge_val_direct if direct else ridge_val
  w, exact = _closed_form(ridge_solution, val_loss, theta, train, val)
  lr = float(1.0 / _max_curvature(ridge_loss, w, theta, train))
  step = hippojax.gradient_step(ridge_loss, lr)
  return Problem(ridge_loss, val_loss, step, lr, theta, w, train, val, exact,
                 lambda th: ridge_solution(th, train))


def make_tree_ridge(seed=0, n=50, d=5, dtype=jnp.float64):
  """Ridge with an intercept: pytree params and pytree hparams."""
  train, val = _regression_data(seed, n, d, dtype)
  rng = np.random.default_rng(seed + 1)
  theta = {"log_l2": jnp.asarray(rng.uniform(-2.5, -0.5, d), dtype),
           "log_b": jnp.asarray(-1.0, dtype)}
  w, exact = _closed_form(tree_ridge_solution, tree_ridge_val, theta, train,
                          val)
  lr = float(1.0 / _max_curvature(tree_ridge_loss, w, theta, train))
  step = hippojax.gradient_step(tree_ridge_loss, lr)
  return Problem(tree_ridge_loss, tree_ridge_val, step, lr, theta, w, train,
                 val, exact, lambda h: tree_ridge_solution(h, train))


def make_logistic(seed=0, n=50, d=6):
  """Logistic regression; w* by Newton, exact hypergradient by dense solve."""
  rng = np.random.default_rng(seed)
  w_true = rng.normal(size=d)

  def split():
    x = rng.normal(size=(n, d))
    y = np.where(x @ w_true + rng.normal(size=n) > 0, 1.0, -1.0)
    return {"x": jnp.asarray(x), "y": jnp.asarray(y)}

  train, val = split(), split()
  theta = jnp.asarray(rng.uniform(-3.0, -1.0, d))
  w = newton_solve(logistic_loss, jnp.zeros(d), theta, train)
  exact = dense_implicit_grad(logistic_loss, logistic_val, w, theta, train,
                              val)
  lr = float(1.0 / _max_curvature(logistic_loss, w, theta, train))
  step = hippojax.gradient_step(logistic_loss, lr)
  return Problem(logistic_loss, logistic_val, step, lr, theta, w, train, val,
                 exact)


def rel_err(a, b):
  """‖a − b‖ / ‖b‖ over whole pytrees."""
  a_flat = jax.flatten_util.ravel_pytree(a)[0]
  b_flat = jax.flatten_util.ravel_pytree(b)[0]
  return float(jnp.linalg.norm(a_flat - b_flat) / jnp.linalg.norm(b_flat))


def assert_tree_close(actual, expected, rtol=1e-12, atol=0.0):
  """Leafwise ``np.testing.assert_allclose`` with matching structures."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol,
                               atol=atol)


@pytest.fixture(scope="session")
def ridge():
  return make_ridge()


@pytest.fixture(scope="session")
def ridge_direct():
  return make_ridge(direct=True)


@pytest.fixture(scope="session")
def tree_ridge():
  return make_tree_ridge()


@pytest.fixture(scope="session")
def logistic():
  return make_logistic()


@pytest.fixture(scope="session")
def helpers():
  """Helper functions and problem builders, for tests that need variants."""
  return types.SimpleNamespace(
      make_ridge=make_ridge, make_tree_ridge=make_tree_ridge,
      make_logistic=make_logistic, rel_err=rel_err,
      assert_tree_close=assert_tree_close, ridge_loss=ridge_loss,
      ridge_val=ridge_val, ridge_val_direct=ridge_val_direct,
      ridge_solution=ridge_solution, ridge_hessian=ridge_hessian,
      logistic_loss=logistic_loss, logistic_val=logistic_val,
      tree_ridge_loss=tree_ridge_loss, tree_ridge_val=tree_ridge_val,
      dense_implicit_grad=dense_implicit_grad, newton_solve=newton_solve)
