r"""What the single-loop solvers share: state, one linear-system step, checks.

Every single-loop solver keeps the linear-system variable ``q`` of

.. math::
   (I - J^\top)\, q = \nabla_w L_{val}(w, \lambda),
   \qquad J = \partial \Phi / \partial w,\ B = \partial \Phi / \partial \lambda,

in its state and moves it by one (or a few) Richardson steps per minibatch,
``q ← q − ρ((I − Jᵀ) q − ∇_w L_val)``. One ``jax.vjp`` of the user's
``train_step`` at ``(w, λ, train_batch)`` gives both ``Jᵀ q`` and ``Bᵀ q``,
so a step costs one ``train_step`` VJP and one validation gradient. For a
gradient step ``Φ = w − η ∇L_train`` the Richardson step with ``ρ = 1`` is
SOBA's step on ``z = η q`` with step size ``η``: the step's own learning rate
is the natural step size.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hippojax._src import checks
from hippojax._src.base import all_finite

PyTree = Any


class SingleLoopState(NamedTuple):
  """State of :func:`hippojax.soba` and :func:`hippojax.amigo`.

  Attributes:
    count: int32, ``update`` calls so far.
    num_refused: int32, updates whose hypergradient was not finite and was
      replaced by zeros (``q`` was kept).
    value: the validation loss on the last ``val_batch`` (``nan`` before the
      first update), in the hyperparameters' dtype.
    residual: ``‖(I − Jᵀ) q − ∇_w L_val‖ / ‖∇_w L_val‖`` on the last
      minibatch, at the ``q`` the hypergradient used: a noisy estimate of how
      well ``q`` solves the linear system.
    q: the linear-system variable, shaped like the inner parameters.
  """

  count: jax.Array
  num_refused: jax.Array
  value: jax.Array
  residual: jax.Array
  q: PyTree


class Step(NamedTuple):
  """One evaluation of the single-loop directions at ``(w, λ, q)``."""

  value: jax.Array  # validation loss
  hypergrad: PyTree  # ∇_λ L_val + Bᵀ q
  direction: PyTree  # (I − Jᵀ) q − ∇_w L_val, the linear-system residual
  grad_w: PyTree  # ∇_w L_val


def directions(train_step: Callable, val_loss: Callable, hparams: PyTree,
               params: PyTree, q: PyTree, train_batch: PyTree,
               val_batch: PyTree) -> Step:
  """The hypergradient estimate and the linear-system residual at ``q``."""
  value, (g_w, g_lam) = jax.value_and_grad(val_loss, argnums=(0, 1))(
      params, hparams, val_batch)
  _, vjp = jax.vjp(lambda w, lam: train_step(w, lam, train_batch), params,
                   hparams)
  jt_q, bt_q = vjp(q)
  hypergrad = jax.tree.map(lambda a, b, h: (a + b).astype(h.dtype), g_lam,
                           bt_q, hparams)
  direction = jax.tree.map(lambda a, b, c: a - b - c, q, jt_q, g_w)
  return Step(value, hypergrad, direction, g_w)


def zeros_like_template(template: PyTree) -> PyTree:
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), template)


def shapes_of(name: str, tree: Any) -> PyTree:
  """``jax.ShapeDtypeStruct``s of ``tree`` (arrays or shape structs)."""
  if tree is None:
    raise TypeError(
        f"{name} is required: the linear-system variable q lives in the "
        "transform's state, shaped like the inner parameters, and "
        "init(hparams) never sees them. Pass inner_params_like=params.")
  try:
    return jax.eval_shape(lambda t: t, tree)
  except TypeError as e:
    raise TypeError(f"{name} must be a pytree of arrays or "
                    f"jax.ShapeDtypeStruct, got {tree!r}.") from e


def check_inner_params(template: PyTree, inner_params: PyTree) -> None:
  """``inner_params`` must have the structure and shapes of the template."""
  if jax.tree.structure(template) != jax.tree.structure(inner_params):
    raise ValueError(
        f"inner_params has pytree structure {jax.tree.structure(inner_params)}"
        ", but the transform was built with inner_params_like of structure "
        f"{jax.tree.structure(template)}.")
  for (path, t), w in zip(jax.tree_util.tree_flatten_with_path(template)[0],
                          jax.tree.leaves(inner_params)):
    if tuple(t.shape) != tuple(jnp.shape(w)):
      raise ValueError(
          f"inner_params{jax.tree_util.keystr(path)} has shape "
          f"{tuple(jnp.shape(w))}, but inner_params_like gave shape "
          f"{tuple(t.shape)}.")


def require(method: str, extra: dict, names: tuple[str, ...],
            params: Any) -> None:
  """Clear errors for a missing ``params`` or required extra argument."""
  if params is None:
    raise TypeError(
        f"{method}.update needs the current hyperparameters as params: "
        "tx.update(updates, state, hparams, inner_params=..., ...).")
  missing = [k for k in names if extra.get(k) is None]
  if missing:
    raise TypeError(
        f"{method}.update is missing the keyword argument(s) "
        f"{', '.join(missing)}; call tx.update(updates, state, hparams, "
        f"{', '.join(f'{k}=...' for k in names)}).")


def check_rate(name: str, value: Any) -> float:
  value = checks.check_positive(name, value)
  return value


def init_common(hparams: PyTree, template: PyTree) -> tuple:
  hparams = checks.as_float_tree("hparams", hparams)
  dtype = optax.tree.dtype(hparams, "highest")
  nan = jnp.full((), jnp.nan, dtype)
  zero = jnp.zeros((), jnp.int32)
  return zero, zero, nan, nan, zeros_like_template(template)


def finish(updates: PyTree, hypergrad: PyTree, value, residual,
           q_old: PyTree, q_new: PyTree, state) -> tuple[PyTree, dict]:
  """Refuses non-finite results; adds the incoming updates.

  Returns the emitted updates and the new common state fields.
  """
  finite = (all_finite(hypergrad) & jnp.isfinite(value) & all_finite(q_new))
  grad = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)),
                      hypergrad)
  if updates is not None:
    grad = jax.tree.map(lambda u, g: (u + g).astype(u.dtype), updates, grad)
  q = optax.tree.where(finite, optax.tree.cast_like(q_new, q_old), q_old)
  dtype = state.value.dtype
  fields = dict(
      count=optax.safe_increment(state.count),
      num_refused=state.num_refused + (~finite).astype(jnp.int32),
      value=jnp.asarray(value, dtype),
      residual=jnp.asarray(residual, dtype), q=q)
  return grad, fields


def relative(tree: PyTree, like: PyTree) -> jax.Array:
  num, den = optax.tree.norm(tree), optax.tree.norm(like)
  return num / jnp.where(den > 0, den, 1.0)
