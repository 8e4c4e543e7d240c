r"""A stochastic quadratic bilevel problem whose optimum has a closed form.

Inner (a mean over ``n`` training examples ``(x_i, y_i)``):

.. math::
   L_{train}(w, \lambda) = \tfrac{1}{2n}\sum_i (x_i^\top w - y_i)^2
     + \tfrac{\rho}{2}\,\lVert w - C\lambda \rVert^2,

a ridge regression shrunk towards ``Cλ`` instead of zero, so
``w*(λ) = H⁻¹(Xᵀy/n + ρCλ)`` with ``H = XᵀX/n + ρI`` is affine in ``λ``.
Outer: the mean squared error on ``m`` validation examples ``(u_j, v_j)``.
Then ``L_val(w*(λ))`` is a convex quadratic in ``λ`` and ``λ*`` is a
least-squares solution. Minibatches of both sets make every method
stochastic; this is the analogue of benchmark_bilevel's quadratic problem.
"""

import functools
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from hippojax._src.steps import GradientStep, gradient_step


def _inner_loss(w, lam, batch):
  x, y, c, rho = batch["x"], batch["y"], batch["c"], batch["rho"]
  return (0.5 * jnp.mean((x @ w - y) ** 2)
          + 0.5 * jnp.mean(rho) * jnp.sum((w - c[0] @ lam) ** 2))


def _val_loss(w, lam, batch):
  del lam
  u, v = batch["u"], batch["v"]
  return 0.5 * jnp.mean((u @ w - v) ** 2)


class StochasticQuadratic(NamedTuple):
  """The problem's data and its exact solution.

  Attributes:
    train_data: ``{"x": (n, d), "y": (n,), "c": (n, d, k), "rho": (n,)}``;
      ``c`` and ``rho`` repeat the constant ``C`` and ``ρ`` per example so
      that any row subset is a valid minibatch.
    val_data: ``{"u": (m, d), "v": (m,)}``.
    val_loss: ``val_loss(w, λ, batch)``.
    train_step: the gradient step ``w − η ∇_w L_train`` on a minibatch.
    hparams_star: the exact optimal hyperparameters ``λ*``.
    params_star: ``w*(λ*)``.
  """

  train_data: dict
  val_data: dict
  val_loss: object
  train_step: GradientStep
  hparams_star: np.ndarray
  params_star: np.ndarray


@functools.cache
def _step(learning_rate: float) -> GradientStep:
  return gradient_step(_inner_loss, learning_rate)


def stochastic_quadratic(num_train: int = 2000, num_val: int = 1000,
                         dim: int = 5, num_hparams: int = 3, rho: float = 0.5,
                         learning_rate: float = 0.1, seed: int = 0,
                         dtype=None) -> StochasticQuadratic:
  """Builds the problem with NumPy's generator ``seed`` (deterministic)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_train, dim))
  w_true = rng.normal(size=dim)
  y = x @ w_true + 0.5 * rng.normal(size=num_train)
  u = rng.normal(size=(num_val, dim))
  v = u @ (w_true + 0.3) + 0.5 * rng.normal(size=num_val)
  c = rng.normal(size=(dim, num_hparams))
  h = x.T @ x / num_train + rho * np.eye(dim)
  slope = rho * np.linalg.solve(h, c)
  offset = np.linalg.solve(h, x.T @ y / num_train)
  lam = np.linalg.lstsq(u @ slope, v - u @ offset, rcond=None)[0]
  dt = jnp.zeros(()).dtype if dtype is None else dtype
  as_ = lambda a: jnp.asarray(a, dt)
  train = {"x": as_(x), "y": as_(y),
           "c": as_(np.broadcast_to(c, (num_train, dim, num_hparams))),
           "rho": as_(np.full(num_train, rho))}
  return StochasticQuadratic(
      train_data=train, val_data={"u": as_(u), "v": as_(v)},
      val_loss=_val_loss, train_step=_step(float(learning_rate)),
      hparams_star=lam, params_star=slope @ lam + offset)
