r"""Polishing trained weights into a fixed point of the training step.

The implicit hypergradient holds at a fixed point ``w = Φ(w, λ)`` of the
step. Gradient descent on a network often never reaches one: at the edge of
stability (the loss's sharpness above ``2 / lr``) it bounces across a valley,
and ``‖Φ(w) − w‖/‖w‖`` stays near ``1e-2`` however long it trains. The
averaged map ``w ↦ ½ (w + Φ(w))`` (a Krasnosel'skii–Mann iteration) has the
same fixed points; for a gradient step it is the same step at half the
learning rate, so the bounce dies out in a few steps while the minimum it
converges to is the one training was in.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from hippojax._src import checks
from hippojax._src.implicit import default_fixed_point_tol
from hippojax._src.implicit import relative_norm

PyTree = Any


def polish(train_step, params: PyTree, hparams: PyTree, batch: Any = None,
           *, max_steps: int = 100, fixed_point_tol: float | None = None
           ) -> tuple[PyTree, jax.Array]:
  r"""Half steps ``w ← w + ½ (Φ(w) − w)`` until ``w`` is a fixed point.

  Stops as soon as ``‖Φ(w) − w‖/‖w‖ <= fixed_point_tol / 2`` (half the
  tolerance under which the implicit methods call ``w`` a fixed point, so the
  hypergradient taken next reports it as one), or after ``max_steps``.
  Jit-compatible: one ``lax.while_loop``, one step per iteration.

  Args:
    train_step: ``Φ(params, hparams, batch) -> params``.
    params: trained weights.
    hparams: the hyperparameters ``λ``.
    batch: the step's batch.
    max_steps: the most half steps to take (``>= 0``).
    fixed_point_tol: as in :func:`hippojax.hoag`; ``None``: ``1e-3`` for
      float32 and wider weights, ``1e-2`` for 16-bit ones.

  Returns:
    ``(params, num_steps)``: the polished weights and the half steps taken.
    When ``num_steps == max_steps`` the weights may still not be a fixed
    point; ``info.fixed_point_residual`` of the next hypergradient says.

  Example:
    >>> w, _ = hippojax.polish(step, w, lam, train)    # doctest: +SKIP
    >>> hg = hippojax.hoag(step, val_loss, lam, w, train, val)  # +SKIP
  """
  checks.check_int("max_steps", max_steps, 0)
  if fixed_point_tol is None:
    fixed_point_tol = default_fixed_point_tol(params)
  target = 0.5 * checks.check_positive("fixed_point_tol", fixed_point_tol)

  def displacement(w):
    return optax.tree.sub(train_step(w, hparams, batch), w)

  def cond(carry):
    k, w, d = carry
    return (k < max_steps) & (relative_norm(d, w) > target)

  def body(carry):
    k, w, d = carry
    w = jax.tree.map(lambda a, b: a + (0.5 * b).astype(a.dtype), w, d)
    return k + 1, w, displacement(w)

  k, w, _ = jax.lax.while_loop(
      cond, body, (jnp.asarray(0, jnp.int32), params, displacement(params)))
  return w, k
