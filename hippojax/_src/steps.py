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
import optax

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


@dataclasses.dataclass(frozen=True, eq=False)
class _Constant:
  """A pytree of per-parameter rates, hashed by identity.

  Steps are static arguments of jitted functions, so they must hash; a
  pytree of arrays does not, and comparing arrays by value at every call
  would cost a host sync. Reuse one step object to avoid recompiling.
  """

  tree: PyTree

  def __call__(self, hparams, batch):
    del hparams, batch
    return self.tree


def _per_parameter_rates(rates: PyTree, params: PyTree) -> list:
  """One rate per leaf of ``params``: a scalar is shared by every leaf."""
  n = len(jax.tree.leaves(params))
  is_leaf = jax.tree_util.treedef_is_leaf(jax.tree.structure(rates))
  if is_leaf and jnp.ndim(rates) == 0:
    return [rates] * n
  if not is_leaf and jax.tree.structure(rates) != jax.tree.structure(params):
    raise ValueError(
        "learning_rate must be a scalar or a pytree with the structure of "
        f"params; got {jax.tree.structure(rates)} for params of structure "
        f"{jax.tree.structure(params)}.")
  if is_leaf and n != 1:
    raise ValueError(
        f"learning_rate has shape {tuple(jnp.shape(rates))}, but params has "
        f"{n} leaves; give a scalar or a pytree shaped like params.")
  flat = jax.tree_util.tree_flatten_with_path(rates)[0]
  for (path, r), w in zip(flat, jax.tree.leaves(params)):
    try:
      jnp.broadcast_shapes(jnp.shape(r), jnp.shape(w))
    except ValueError:
      raise ValueError(
          f"learning_rate{jax.tree_util.keystr(path)} has shape "
          f"{tuple(jnp.shape(r))}, which does not broadcast to the "
          f"parameter's shape {tuple(jnp.shape(w))}.") from None
  return [r for _, r in flat]


@dataclasses.dataclass(frozen=True)
class GradientStep:
  r"""One (preconditioned) gradient step, ``w ← w − P ∇_w L(w, λ, batch)``.

  ``P`` is a positive scalar step size ``η`` or a positive per-parameter
  (diagonal) one, either of which may depend on ``λ`` and the batch. The
  step exposes its ``loss``, so the implicit methods can solve the
  symmetric Hessian form ``H z = ∇_w L_val`` in which ``P`` cancels (see
  :func:`hippojax.implicit_hypergrad`). With a constant scalar step size the
  Jacobian ``I − η H`` is symmetric too, which it declares with
  ``symmetric_jacobian``; with per-parameter or callable rates it makes no
  such claim (``I − P H`` is not symmetric).

  Attributes:
    loss: ``loss(params, hparams, batch) -> scalar``.
    learning_rate: a number; a pytree of positive per-parameter rates (leaves
      broadcast to the parameters); or ``(hparams, batch) ->`` either.
  """

  loss: Callable
  learning_rate: Rate

  @property
  def symmetric_jacobian(self) -> bool:
    return isinstance(self.learning_rate, (int, float))

  @property
  def symmetric_by_construction(self) -> bool:
    """``I − ηH`` is symmetric as a matter of fact, not of declaration, so
    the implicit methods need not certify their residual against ``Jᵀ``."""
    return self.symmetric_jacobian

  def apply_gradient(self, params: PyTree, hparams: PyTree, batch: PyTree,
                     grads: PyTree) -> PyTree:
    """``w − P g`` for given gradients ``g`` (the step without the loss)."""
    lr = self.learning_rate
    lr = lr(hparams, batch) if callable(lr) else lr
    rates = _per_parameter_rates(lr, params)
    leaves, treedef = jax.tree.flatten(params)
    new = [(w - r * g).astype(w.dtype)
           for w, g, r in zip(leaves, jax.tree.leaves(grads), rates)]
    return jax.tree.unflatten(treedef, new)

  def __call__(self, params: PyTree, hparams: PyTree, batch: PyTree) -> PyTree:
    grads = jax.grad(self.loss)(params, hparams, batch)
    return self.apply_gradient(params, hparams, batch, grads)


def gradient_step(loss: Callable, learning_rate: Any) -> GradientStep:
  """Builds a (preconditioned) gradient-descent ``train_step`` from a loss.

  Args:
    loss: ``loss(params, hparams, batch) -> scalar``.
    learning_rate: a positive number; a pytree of positive per-parameter
      rates shaped like (or broadcasting to) the parameters; or a function
      ``(hparams, batch) ->`` either (e.g. ``lambda h, b:
      jnp.exp(h["log_lr"])`` to tune it with the unrolled methods).

  Returns:
    A hashable ``train_step(params, hparams, batch) -> params``. Its fixed
    points are the stationary points of ``loss`` whatever the rates, and the
    implicit methods solve with the Hessian of ``loss``, so the hypergradient
    does not depend on the rates. This also makes it the stationarity
    condition to use after training with any other optimiser (Adam, momentum):
    take the implicit hypergradient with ``gradient_step(loss, 1.0)`` at the
    trained weights.

  Examples:
    >>> import jax.numpy as jnp, hippojax
    >>> loss = lambda w, lam, b: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
    >>> step = hippojax.gradient_step(loss, learning_rate=0.1)
    >>> step(jnp.zeros(2), 0.5, None)
    Array([0.2, 0.2], dtype=float32)
  """
  if not callable(loss):
    raise TypeError(f"loss must be callable, got {type(loss).__name__}.")
  if isinstance(learning_rate, bool):
    raise TypeError(f"learning_rate must be a number, a pytree of arrays or a "
                    f"callable, got {learning_rate!r}.")
  if not callable(learning_rate) and not isinstance(learning_rate,
                                                    (int, float)):
    leaves = jax.tree.leaves(learning_rate)
    if not leaves or not all(
        isinstance(x, (int, float)) or (
            hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating))
        for x in leaves):
      raise TypeError(
          "learning_rate must be a number, a pytree of floating-point arrays "
          "or a callable (hparams, batch) -> rate, got "
          f"{type(learning_rate).__name__}.")
    learning_rate = _Constant(learning_rate)
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


class OptaxState(NamedTuple):
  """Inner state of an :func:`optax_step`: the weights and the optimiser's
  state (which may hold integer leaves, such as Adam's step count)."""

  params: PyTree
  opt_state: PyTree


@dataclasses.dataclass(frozen=True)
class OptaxStep:
  r"""One step of an optax optimiser on :class:`OptaxState`.

  .. math::
     (u, s) \leftarrow \mathrm{opt}(\lambda).\mathrm{update}(\nabla_w L(w,
     \lambda, b), s, w), \qquad w \leftarrow w + u.

  The unrolled methods (``reverse``, ``forward``, ``drmad``) differentiate
  through it, so the optimiser's own hyperparameters (Adam's learning rate,
  betas) can be tuned; integer leaves of its state get ``float0``
  cotangents. For implicit hypergradients after training with it, use the
  stationarity condition instead: ``gradient_step(loss, 1.0)`` at the
  trained weights (its fixed points are the stationary points of ``loss``,
  whatever optimiser found them).

  Attributes:
    loss: ``loss(params, hparams, batch) -> scalar``.
    optimizer: an ``optax.GradientTransformation``, or ``hparams -> ``
      one (e.g. ``lambda h: optax.adam(jnp.exp(h["log_lr"]))``).
  """

  loss: Callable
  optimizer: Any

  def _optimizer(self, hparams):
    opt = self.optimizer
    if not isinstance(opt, optax.GradientTransformation):
      opt = opt(hparams)
    return opt

  def init(self, params: PyTree, hparams: PyTree) -> OptaxState:
    """The state at ``params`` with the optimiser's initial state."""
    return OptaxState(params, self._optimizer(hparams).init(params))

  def __call__(self, state: OptaxState, hparams: PyTree,
               batch: PyTree) -> OptaxState:
    grads = jax.grad(self.loss)(state.params, hparams, batch)
    updates, opt_state = self._optimizer(hparams).update(
        grads, state.opt_state, state.params)
    params = jax.tree.map(lambda w, u: (w + u).astype(w.dtype), state.params,
                          updates)
    return OptaxState(params, opt_state)


def optax_step(loss: Callable, optimizer: Any) -> OptaxStep:
  """Builds a ``train_step`` that takes one step of an optax optimiser.

  Args:
    loss: ``loss(params, hparams, batch) -> scalar``.
    optimizer: an ``optax.GradientTransformation`` or a function ``hparams ->
      GradientTransformation`` whose options read the hyperparameters.

  Returns:
    A hashable ``train_step(state, hparams, batch) -> state`` on
    :class:`OptaxState`; build the initial state with
    ``step.init(params, hparams)`` and write ``val_loss`` on
    ``state.params``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, hippojax
    >>> loss = lambda w, h, b: jnp.sum((w - 1.0) ** 2)
    >>> step = hippojax.optax_step(loss, lambda h: optax.adam(jnp.exp(h)))
    >>> val = lambda s, h, b: jnp.sum((s.params - 0.5) ** 2)
    >>> s0 = step.init(jnp.zeros(2), jnp.log(0.1))
    >>> hg = hippojax.reverse(step, val, jnp.log(0.1), s0, None, None,
    ...                       num_steps=3)
    >>> bool(hg.grad < 0)  # a larger Adam step gets closer to 0.5 here
    True
  """
  if not callable(loss):
    raise TypeError(f"loss must be callable, got {type(loss).__name__}.")
  if not isinstance(optimizer, optax.GradientTransformation) and not callable(
      optimizer):
    raise TypeError(
        "optimizer must be an optax.GradientTransformation or a function "
        f"hparams -> GradientTransformation, got {type(optimizer).__name__}.")
  return OptaxStep(loss, optimizer)
