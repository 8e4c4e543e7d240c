r"""AmIGO: amortised implicit gradients, several warm-started linear steps.

Arbel & Mairal (2022). The user's loop takes ``T`` SGD steps on the weights
between hypergradients; each ``update`` then takes ``M`` stochastic
Richardson steps on ``(I − Jᵀ) q = ∇_w L_val``, warm-started from the last
``q``, one per minibatch of a stack of ``M`` (leading axis of
``train_batch`` and ``val_batch``), and emits the hypergradient estimate
``∇_λ L_val + Bᵀ q`` of the last of them:

.. math::
   q_{m+1} = q_m - \rho\,\big((I - J_m^\top)\, q_m - \nabla_w L_{val,m}\big),
   \qquad d_\lambda = \nabla_\lambda L_{val,M} + B_M^\top q_M.

With ``M = 1`` this is SOBA's update.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from hippojax._src import checks
from hippojax._src.stochastic import _common

PyTree = Any

REQUIRED = ("inner_params", "train_batch", "val_batch")
OPTIONS = frozenset({"inner_params_like", "linear_rate", "linear_steps"})


def _stack_length(name: str, batch: PyTree, m: int) -> None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
    if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != m:
      raise ValueError(
          f"{name}{jax.tree_util.keystr(path)} has shape "
          f"{tuple(jnp.shape(leaf))}; amigo(linear_steps={m}) needs a stack "
          f"of {m} minibatches, a leading axis of length {m} on every leaf.")


def amigo(train_step: Callable, val_loss: Callable, *,
          inner_params_like: Any = None, linear_rate: float = 1.0,
          linear_steps: int = 10) -> optax.GradientTransformationExtraArgs:
  r"""AmIGO as an optax transform.

  Args:
    train_step: ``train_step(params, hparams, batch) -> params``.
    val_loss: ``val_loss(params, hparams, batch) -> scalar``.
    inner_params_like: the inner parameters or their shapes. Required.
    linear_rate: ``ρ > 0`` (default 1, the natural step).
    linear_steps: ``M >= 1`` linear-system steps per ``update`` (default 10).
      With ``M > 1``, ``train_batch`` and ``val_batch`` carry a leading axis
      of length ``M``, one minibatch per step; with ``M = 1`` they are plain
      minibatches.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``init(hparams) ->
    SingleLoopState`` and ``update(updates, state, hparams, *, inner_params,
    train_batch, val_batch, **extra)``.

  References:
    Arbel, Mairal, "Amortized implicit differentiation for stochastic
    bilevel optimization", ICLR 2022.
  """
  checks.check_callable("train_step", train_step)
  checks.check_callable("val_loss", val_loss)
  template = _common.shapes_of("inner_params_like", inner_params_like)
  rate = _common.check_rate("linear_rate", linear_rate)
  m = checks.check_int("linear_steps", linear_steps, 1)

  def init_fn(hparams):
    return _common.SingleLoopState(*_common.init_common(hparams, template))

  def update_fn(updates, state, params=None, **extra):
    _common.require("amigo", extra, ("inner_params",), params)
    w = extra["inner_params"]
    _common.check_inner_params(template, w)
    hparams = checks.as_float_tree("hparams", params)
    tb, vb = extra.get("train_batch"), extra.get("val_batch")
    q0 = optax.tree.cast_like(state.q, w)

    def one(q, batches):
      step = _common.directions(train_step, val_loss, hparams, w, q, *batches)
      return optax.tree.add_scale(q, -rate, step.direction), step

    if m == 1:
      q, step = one(q0, (tb, vb))
    else:
      _stack_length("train_batch", tb, m)
      _stack_length("val_batch", vb, m)
      q, steps = jax.lax.scan(one, q0, (tb, vb))
      step = jax.tree.map(lambda x: x[-1], steps)
    residual = _common.relative(step.direction, step.grad_w)
    grad, fields = _common.finish(updates, step.hypergrad, step.value,
                                  residual, state.q, q, state)
    return grad, _common.SingleLoopState(**fields)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
