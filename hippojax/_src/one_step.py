r"""T1-T2: the hypergradient through one unrolled training step."""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from hippojax._src import checks
from hippojax._src.base import HyperGrad, HyperGradInfo

PyTree = Any


def finite_info(num_iters: int, grad: PyTree, value: jax.Array,
                solution: PyTree) -> HyperGradInfo:
  """Diagnostics for the direct (non-solver) methods: finite or not."""
  finite = jnp.isfinite(value) & jnp.isfinite(optax.tree.norm(grad))
  residual = jnp.where(finite, jnp.zeros((), value.dtype), jnp.nan)
  return HyperGradInfo(
      num_iters=jnp.asarray(num_iters, jnp.int32), residual=residual,
      converged=finite, solution=solution,
      fixed_point_residual=jnp.zeros((), value.dtype),
      curvature=jnp.full((), jnp.nan, value.dtype))


@functools.partial(jax.jit, static_argnames=("train_step", "val_loss"))
def _t1t2(train_step, val_loss, hparams, params, train_batch, val_batch):
  checks.check_step_output(train_step, params, hparams, train_batch)
  # Only the λ-cotangent is taken: the w-cotangent would cost one more
  # Hessian-vector product, as much again as the hypergradient itself.
  new_params, vjp = jax.vjp(lambda lam: train_step(params, lam, train_batch),
                            hparams)
  checks.check_val_loss(val_loss, new_params, hparams, val_batch)
  value, (g_w, g_lam) = jax.value_and_grad(val_loss, argnums=(0, 1))(
      new_params, hparams, val_batch)
  (b_q,) = vjp(g_w)
  grad = jax.tree.map(lambda a, b, h: (a + b).astype(h.dtype), g_lam, b_q,
                      hparams)
  return HyperGrad(grad, value, finite_info(1, grad, value, g_w))


def t1t2(train_step: Callable, val_loss: Callable, hparams: PyTree,
         params: PyTree, train_batch: PyTree, val_batch: PyTree) -> HyperGrad:
  r"""T1-T2 hypergradient: differentiate one unrolled step (Luketina et al.).

  .. math::
     w_1 = \Phi(w, \lambda, b_{train}), \qquad
     \frac{d}{d\lambda} L_{val}(w_1, \lambda)
       = \nabla_\lambda L_{val}(w_1, \lambda)
         + B^\top \nabla_w L_{val}(w_1, \lambda),

  with ``B = ∂Φ/∂λ`` at ``(w, λ)``. For a gradient step ``B`` carries the
  inner learning rate ``η`` (HippoTrainer's ``T1T2`` leaves it out).

  Args:
    train_step: ``train_step(params, hparams, batch) -> params``.
    val_loss: ``val_loss(params, hparams, batch) -> scalar``.
    hparams: pytree of floating-point hyperparameters.
    params: the current inner parameters ``w``.
    train_batch: batch for the one step.
    val_batch: batch for the validation loss.

  Returns:
    A :class:`HyperGrad`; ``value`` is ``L_val`` after the step and
    ``info.solution`` is ``∇_w L_val(w_1, λ)`` (the ``q`` of the one-step
    formula).

  Examples:
    >>> import jax.numpy as jnp, hippojax
    >>> loss = lambda w, lam, b: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
    >>> step = hippojax.gradient_step(loss, learning_rate=0.1)
    >>> val = lambda w, lam, b: jnp.sum((w - 2.0) ** 2)
    >>> hg = hippojax.t1t2(step, val, 0.5, jnp.ones(3), None, None)
    >>> float(hg.grad) > 0
    True

  References:
    Luketina et al., "Scalable Gradient-Based Tuning of Continuous
    Regularization Hyperparameters", ICML 2016.
  """
  checks.check_callable("train_step", train_step)
  checks.check_callable("val_loss", val_loss)
  hparams = checks.as_float_tree("hparams", hparams)
  return _t1t2(train_step, val_loss, hparams, params, train_batch, val_batch)
