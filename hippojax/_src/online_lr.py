r"""Online learning-rate adaptation by hypergradient descent (Baydin et al.).

Wraps any optax optimiser built with ``optax.inject_hyperparams`` and adapts
its learning rate at every step from the T1-T2 hypergradient of the *training*
loss: how the loss at the new weights depends on the learning rate of the
previous step.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hippojax._src import checks
from hippojax._src.base import all_finite

PyTree = Any


class HypergradientDescentState(NamedTuple):
  """State of :func:`hypergradient_descent`.

  Attributes:
    count: int32, number of updates so far.
    learning_rate: the adapted learning rate used by the last update (the
      initial one before any update); read it back from here.
    hypergradient: the last ``h_t = ∇f(θ_t) · ∂θ_t/∂α_{t−1}`` (``0`` before
      the second update, and when it was not finite).
    direction: ``∂Δθ_{t−1}/∂α``, the derivative of the previous update with
      respect to its learning rate, shaped like the parameters.
    inner_state: the wrapped optimiser's ``InjectHyperparamsState``; its
      ``hyperparams[name]`` always equals ``learning_rate``.
  """

  count: jax.Array
  learning_rate: jax.Array
  hypergradient: jax.Array
  direction: PyTree
  inner_state: Any


def hypergradient_descent(
    inner: optax.GradientTransformation, *, hyper_lr: float,
    multiplicative: bool = False, hyperparam: str = "learning_rate",
    min_learning_rate: float = 0.0, max_learning_rate: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adapts the learning rate of ``inner`` online by hypergradient descent.

  ``inner`` is any optimiser built with ``optax.inject_hyperparams`` (for
  example ``optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)``). Write
  its update as ``Δθ_t = U_t(α)``, so ``θ_{t+1} = θ_t + U_t(α_t)``. The
  learning rate ``α_{t−1}`` of the previous step affects the loss at
  ``θ_t`` through ``Δθ_{t−1}`` only, and

  .. math::
     h_t = \frac{\partial f(\theta_t)}{\partial \alpha_{t-1}}
         = \nabla f(\theta_t) \cdot d_{t-1},
     \qquad d_{t-1} = \frac{\partial U_{t-1}}{\partial \alpha},

  the T1-T2 hypergradient of the training loss (``d`` is ``−∇f(θ_{t−1})``
  for SGD and ``−m̂/(√v̂ + ε)`` for Adam, as in the paper). ``d`` is computed
  exactly with one ``jax.jvp`` of ``inner.update`` with respect to the
  learning rate, so the rule is right for any optimiser, whether or not its
  update is linear in ``α``. The learning rate then moves by

  .. math::
     \text{additive (HD):}\quad
       \alpha_t = \alpha_{t-1} - \beta\, h_t,
     \qquad
     \text{multiplicative (HD-M):}\quad
       \alpha_t = \alpha_{t-1}\Bigl(1 - \beta\,
         \frac{h_t}{\lVert\nabla f(\theta_t)\rVert\,\lVert d_{t-1}\rVert}
       \Bigr),

  clipped to ``[min_learning_rate, max_learning_rate]``. For SGD the
  additive rule is SGD-HD, ``α_t = α_{t−1} + β ∇f(θ_t)·∇f(θ_{t−1})``. The
  multiplicative rule uses the cosine between successive gradient and
  direction, so ``β`` is scale free (the learning rate changes by a factor in
  ``[1 − β, 1 + β]`` per step) and stays positive; the additive ``β`` must be
  matched to the scale of ``h`` (about ``‖∇f‖²`` for SGD, ``‖∇f‖₁`` for Adam,
  so Adam needs a far smaller ``β``). A non-finite ``h_t`` leaves the
  learning rate unchanged.

  Use it as the model's own optimiser; ``grads`` are the training-loss
  gradients ``∇f(θ_t)`` at the current parameters.

  Args:
    inner: an optimiser from ``optax.inject_hyperparams(factory)(...)`` with a
      numeric (not scheduled) ``hyperparam``.
    hyper_lr: ``β > 0``, the hypergradient step size (``< 1`` for the
      multiplicative rule).
    multiplicative: use the multiplicative (HD-M) rule instead of the
      additive one.
    hyperparam: the name of the learning-rate hyperparameter of ``inner``.
    min_learning_rate: lower bound on the learning rate (``>= 0``).
    max_learning_rate: upper bound, or ``None`` for none.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`HypergradientDescentState`; extra arguments are passed on to
    ``inner``.

  Raises:
    TypeError, ValueError: for invalid options (eagerly), or at ``init`` when
      ``inner`` was not built with ``optax.inject_hyperparams``, lacks
      ``hyperparam``, or schedules it.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, hippojax
    >>> f = lambda w: 0.5 * jnp.sum(w ** 2)
    >>> tx = hippojax.hypergradient_descent(
    ...     optax.inject_hyperparams(optax.sgd)(learning_rate=1e-3),
    ...     hyper_lr=0.05, multiplicative=True)
    >>> w = jnp.ones(4)
    >>> state = tx.init(w)
    >>> for _ in range(30):
    ...   updates, state = tx.update(jax.grad(f)(w), state, w)
    ...   w = optax.apply_updates(w, updates)
    >>> bool(state.learning_rate > 1e-3)  # it grew
    True

  References:
    Baydin, Cornish, Martínez Rubio, Schmidt, Wood, "Online Learning Rate
    Adaptation with Hypergradient Descent", ICLR 2018.
  """
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(
        "inner must be an optax.GradientTransformation built with "
        "optax.inject_hyperparams, e.g. "
        "optax.inject_hyperparams(optax.sgd)(learning_rate=1e-3); got "
        f"{type(inner).__name__}.")
  beta = checks.check_positive("hyper_lr", hyper_lr)
  if not isinstance(multiplicative, bool):
    raise TypeError(f"multiplicative must be True or False, got "
                    f"{multiplicative!r}.")
  if multiplicative and beta >= 1:
    raise ValueError(f"hyper_lr must be < 1 with multiplicative=True (the "
                     f"factor 1 − β·cos must stay positive), got {hyper_lr!r}.")
  if not isinstance(hyperparam, str):
    raise TypeError(f"hyperparam must be a string, got {hyperparam!r}.")
  if isinstance(min_learning_rate, bool) or not isinstance(
      min_learning_rate, (int, float)) or not min_learning_rate >= 0:
    raise ValueError(f"min_learning_rate must be a number >= 0, got "
                     f"{min_learning_rate!r}.")
  if max_learning_rate is not None:
    checks.check_positive("max_learning_rate", max_learning_rate)
    if max_learning_rate < min_learning_rate:
      raise ValueError(f"max_learning_rate={max_learning_rate!r} is below "
                       f"min_learning_rate={min_learning_rate!r}.")
  upper = np.inf if max_learning_rate is None else float(max_learning_rate)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    inner_state = inner.init(params)
    hps = getattr(inner_state, "hyperparams", None)
    if not isinstance(hps, dict):
      raise TypeError(
          "inner must be built with optax.inject_hyperparams so that its "
          "learning rate can be set, e.g. "
          "optax.inject_hyperparams(optax.adam)(learning_rate=1e-3); its "
          f"state is a {type(inner_state).__name__}.")
    if hyperparam not in hps:
      raise ValueError(f"hyperparam={hyperparam!r} is not a hyperparameter "
                       f"of inner; it has {sorted(hps)}.")
    if hyperparam in getattr(inner_state, "hyperparams_states", {}):
      raise ValueError(
          f"inner's {hyperparam!r} is a schedule; hypergradient_descent "
          "adapts it itself, so give it a number (the initial value).")
    lr = jnp.asarray(hps[hyperparam])
    if not jnp.issubdtype(lr.dtype, jnp.floating) or lr.shape != ():
      raise TypeError(f"inner's {hyperparam!r} must be a floating scalar, "
                      f"got shape {lr.shape} dtype {lr.dtype}.")
    return HypergradientDescentState(
        count=jnp.zeros((), jnp.int32), learning_rate=lr,
        hypergradient=jnp.zeros((), lr.dtype),
        direction=optax.tree.zeros_like(params), inner_state=inner_state)

  def update_fn(updates, state, params=None, **extra):
    grads = updates
    lr_prev = state.learning_rate
    h = optax.tree.vdot(grads, state.direction)
    if multiplicative:
      scale = optax.tree.norm(grads) * optax.tree.norm(state.direction)
      cos = h / jnp.where(scale > 0, scale, 1.0)
      lr = lr_prev * (1 - beta * cos)
    else:
      lr = lr_prev - beta * h
    ok = all_finite(lr)
    lr = jnp.clip(jnp.where(ok, lr, lr_prev), min_learning_rate, upper)
    lr = lr.astype(lr_prev.dtype)
    h = jnp.where(ok, h, 0).astype(lr_prev.dtype)

    def step(rate):
      hps = dict(state.inner_state.hyperparams)
      hps[hyperparam] = rate
      inner_state = state.inner_state._replace(hyperparams=hps)
      return inner.update(grads, inner_state, params, **extra)

    (new_updates, inner_state), (direction, _) = jax.jvp(
        step, (lr,), (jnp.ones_like(lr),))
    direction = optax.tree.cast_like(direction, state.direction)
    return new_updates, HypergradientDescentState(
        count=optax.safe_increment(state.count), learning_rate=lr,
        hypergradient=h, direction=direction, inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
