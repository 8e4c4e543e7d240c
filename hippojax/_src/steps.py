r"""Builders of ``train_step`` from a training loss.

The learning rate and momentum may be constants or functions of the
hyperparameters and the batch, so they can be tuned like any other
hyperparameter by the unrolled methods (``reverse``, ``forward``, ``drmad``),
including per-step schedules (index a schedule with a step counter carried in
the batch).
"""

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any
Rate = float | Callable[[PyTree, PyTree], jax.Array]


def _rate(name: str, rate: Rate, hparams: PyTree, batch: PyTree) -> jax.Array:
  value = rate(hparams, batch) if callable(rate) else rate
  if jnp.ndim(value) != 0:
    raise ValueError(
        f"{name} must be a scalar, got shape {jnp.shape(value)}; write your "
        "own train_step for per-parameter rates.")
  return value


def _check_rate(name: str, rate: Any) -> None:
  if not callable(rate) and not isinstance(rate, (int, float)):
    raise TypeError(f"{name} must be a number or a callable "
                    f"(hparams, batch) -> scalar, got {rate!r}.")


@dataclasses.dataclass(frozen=True)
class GradientStep:
  r"""One gradient-descent step, ``w ← w − η(λ, batch) ∇_w L(w, λ, batch)``.

  Its Jacobian ``I − η ∇²_w L`` is symmetric, which it declares with
  ``symmetric_jacobian = True`` so that the implicit methods use the cheaper
  forward-over-reverse products.

  Attributes:
    loss: ``loss(params, hparams, batch) -> scalar``.
    learning_rate: a number, or ``(hparams, batch) -> scalar``.
  """

  loss: Callable
  learning_rate: Rate
  symmetric_jacobian = True

  def __call__(self, params: PyTree, hparams: PyTree, batch: PyTree) -> PyTree:
    lr = _rate("learning_rate", self.learning_rate, hparams, batch)
    grads = jax.grad(self.loss)(params, hparams, batch)
    return jax.tree.map(lambda w, g: (w - lr * g).astype(w.dtype), params,
                        grads)


def gradient_step(loss: Callable, learning_rate: Rate) -> GradientStep:
  """Builds a plain gradient-descent ``train_step`` from a training loss.

  Args:
    loss: ``loss(params, hparams, batch) -> scalar``.
    learning_rate: a number, or ``(hparams, batch) -> scalar`` (e.g.
      ``lambda h, b: jnp.exp(h["log_lr"])`` to tune it).

  Returns:
    A hashable ``train_step(params, hparams, batch) -> params``.

  Examples:
    >>> import jax.numpy as jnp, hippojax
    >>> loss = lambda w, lam, b: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
    >>> step = hippojax.gradient_step(loss, learning_rate=0.1)
    >>> step(jnp.zeros(2), 0.5, None)
    Array([0.2, 0.2], dtype=float32)
  """
  if not callable(loss):
    raise TypeError(f"loss must be callable, got {type(loss).__name__}.")
  _check_rate("learning_rate", learning_rate)
  return GradientStep(loss, learning_rate)


class HeavyBallState(NamedTuple):
  """Inner state of a heavy-ball step: the weights and their velocity."""

  params: PyTree
  velocity: PyTree


@dataclasses.dataclass(frozen=True)
class HeavyBallStep:
  r"""One heavy-ball momentum step on :class:`HeavyBallState`.

  .. math::
     v \leftarrow \mu v - \eta \nabla_w L(w, \lambda, b), \qquad
     w \leftarrow w + v.

  Its Jacobian is not symmetric: use ``GMRES``/``BiCGStab`` for implicit
  hypergradients, or the unrolled methods.

  Attributes:
    loss: ``loss(params, hparams, batch) -> scalar``.
    learning_rate: a number, or ``(hparams, batch) -> scalar``.
    momentum: a number, or ``(hparams, batch) -> scalar``.
  """

  loss: Callable
  learning_rate: Rate
  momentum: Rate

  def init(self, params: PyTree) -> HeavyBallState:
    """The state at rest: ``params`` with zero velocity."""
    return HeavyBallState(params, jax.tree.map(jnp.zeros_like, params))

  def __call__(self, state: HeavyBallState, hparams: PyTree,
               batch: PyTree) -> HeavyBallState:
    lr = _rate("learning_rate", self.learning_rate, hparams, batch)
    mu = _rate("momentum", self.momentum, hparams, batch)
    grads = jax.grad(self.loss)(state.params, hparams, batch)
    velocity = jax.tree.map(lambda v, g: (mu * v - lr * g).astype(v.dtype),
                            state.velocity, grads)
    params = jax.tree.map(jnp.add, state.params, velocity)
    return HeavyBallState(params, velocity)


def heavy_ball_step(loss: Callable, learning_rate: Rate,
                    momentum: Rate) -> HeavyBallStep:
  """Builds a heavy-ball momentum ``train_step`` from a training loss.

  The step acts on ``HeavyBallState(params, velocity)``; build the initial
  state with ``step.init(params)`` and write ``val_loss`` on
  ``state.params``.

  Args:
    loss: ``loss(params, hparams, batch) -> scalar``.
    learning_rate: a number, or ``(hparams, batch) -> scalar``.
    momentum: a number, or ``(hparams, batch) -> scalar``.

  Returns:
    A hashable ``train_step(state, hparams, batch) -> state``.

  Examples:
    >>> import jax.numpy as jnp, hippojax
    >>> loss = lambda w, lam, b: jnp.sum((w - 1.0) ** 2)
    >>> step = hippojax.heavy_ball_step(loss, 0.1, lambda h, b: h)
    >>> state = step(step.init(jnp.zeros(2)), 0.9, None)
    >>> state.params
    Array([0.2, 0.2], dtype=float32)
  """
  if not callable(loss):
    raise TypeError(f"loss must be callable, got {type(loss).__name__}.")
  _check_rate("learning_rate", learning_rate)
  _check_rate("momentum", momentum)
  return HeavyBallStep(loss, learning_rate, momentum)
