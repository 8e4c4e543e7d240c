r"""SOBA: one step on the weights, the linear system and ``λ`` per minibatch.

Dagréou et al. (2022), in the fixed-point form of :mod:`hippojax._src.implicit`.
The user's training loop moves the weights ``w`` (one SGD step per
minibatch); each ``update`` of this transform, at the current ``w`` and on
the current minibatches, takes one Richardson step on
``(I − Jᵀ) q = ∇_w L_val`` and emits the hypergradient estimate

.. math::
   d_\lambda = \nabla_\lambda L_{val}(w, \lambda) + B^\top q, \qquad
   q \leftarrow q - \rho\,\big((I - J^\top)\, q - \nabla_w L_{val}\big),

with ``J``, ``B`` the Jacobians of ``train_step`` on ``train_batch`` and
``∇L_val`` on ``val_batch`` (both at the old ``q``, from one VJP). ``ρ = 1``
(``linear_rate``) is ``q ← Jᵀ q + ∇_w L_val``; for a gradient step it is
SOBA's step with the step's own learning rate.
"""

from typing import Any, Callable

import optax

from hippojax._src import checks
from hippojax._src.stochastic import _common

PyTree = Any

REQUIRED = ("inner_params", "train_batch", "val_batch")
OPTIONS = frozenset({"inner_params_like", "linear_rate"})


def soba(train_step: Callable, val_loss: Callable, *,
         inner_params_like: Any = None, linear_rate: float = 1.0
         ) -> optax.GradientTransformationExtraArgs:
  r"""SOBA as an optax transform: ``optax.chain(soba(...), optax.sgd(γ))``.

  Args:
    train_step: ``train_step(params, hparams, batch) -> params``, the inner
      step the user's loop takes on each minibatch (its learning rate sets
      the scale of ``q``).
    val_loss: ``val_loss(params, hparams, batch) -> scalar``.
    inner_params_like: the inner parameters, or their shapes
      (``jax.ShapeDtypeStruct``), to size ``q``. Required.
    linear_rate: ``ρ > 0``, the step on ``q`` relative to the natural one
      (default 1; lower it for noisy Hessians or a step near the stability
      limit).

  Returns:
    An ``optax.GradientTransformationExtraArgs``: ``init(hparams) ->
    SingleLoopState``; ``update(updates, state, hparams, *, inner_params,
    train_batch, val_batch, **extra)`` emits ``d_λ`` plus the incoming
    ``updates``. A non-finite estimate is refused (zeros, ``num_refused``
    counts it, ``q`` kept).

  Examples:
    >>> import jax, jax.numpy as jnp, optax, hippojax
    >>> loss = lambda w, lam, b: 0.5 * jnp.sum((w - b) ** 2 + lam * w**2)
    >>> step = hippojax.gradient_step(loss, 0.2)
    >>> val = lambda w, lam, b: jnp.sum((w - 0.5) ** 2)
    >>> w = jnp.zeros(2)
    >>> tx = optax.chain(hippojax.soba(step, val, inner_params_like=w),
    ...                  optax.sgd(0.05))
    >>> lam = jnp.asarray(0.5)
    >>> state = tx.init(lam)
    >>> for t in range(500):
    ...   b = 1.0 + 0.1 * jax.random.normal(jax.random.key(t), (2,))
    ...   w = step(w, lam, b)
    ...   g, state = tx.update(None, state, lam, inner_params=w,
    ...                        train_batch=b, val_batch=None)
    ...   lam = optax.apply_updates(lam, g)
    >>> bool(abs(lam - 1.0) < 0.1)  # w* = 1/(1+λ) = 0.5 at λ = 1
    True

  References:
    Dagréou, Ablin, Vaiter, Moreau, "A framework for bilevel optimization
    that enables stochastic and global variance reduction algorithms",
    NeurIPS 2022.
  """
  checks.check_callable("train_step", train_step)
  checks.check_callable("val_loss", val_loss)
  template = _common.shapes_of("inner_params_like", inner_params_like)
  rate = _common.check_rate("linear_rate", linear_rate)

  def init_fn(hparams):
    return _common.SingleLoopState(*_common.init_common(hparams, template))

  def update_fn(updates, state, params=None, **extra):
    _common.require("soba", extra, ("inner_params",), params)
    w = extra["inner_params"]
    _common.check_inner_params(template, w)
    hparams = checks.as_float_tree("hparams", params)
    q = optax.tree.cast_like(state.q, w)
    step = _common.directions(train_step, val_loss, hparams, w, q,
                              extra.get("train_batch"),
                              extra.get("val_batch"))
    q_new = optax.tree.add_scale(q, -rate, step.direction)
    residual = _common.relative(step.direction, step.grad_w)
    grad, fields = _common.finish(updates, step.hypergrad, step.value,
                                  residual, state.q, q_new, state)
    return grad, _common.SingleLoopState(**fields)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


