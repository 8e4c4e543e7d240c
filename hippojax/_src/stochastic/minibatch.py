r"""Implicit hypergradients from minibatches, with their bias under control.

On minibatches the implicit hypergradient

.. math::
   g = \nabla_\lambda L_{val} - \nabla^2_{\lambda w} L_{train}\, z,
   \qquad (H + \delta I)\, z = \nabla_w L_{val},

is *biased*: ``E[H_S⁻¹] ≠ H⁻¹`` for a minibatch Hessian ``H_S`` (Jensen:
the inverse of a noisy matrix is larger on average), and when the same batch
gives ``H_S`` and the mixed term ``∇²_{λw}L_S`` their errors are correlated
too. :func:`minibatch_hypergrad` offers the three controls:

* **A separate Hessian batch** (``hessian_batches``): the operator is built
  on batches independent of the ``train_batch`` that gives the mixed term,
  which removes the correlation.
* **Averaging over batches**: ``hessian_batches`` and ``val_batch`` may be
  stacks of ``K`` minibatches (leading axis ``K``); the operator is the mean
  of the ``K`` Hessians (the inverse of a less noisy matrix: the Jensen bias
  falls like ``1/(K·|S|)``) and ``∇L_val`` the mean of the ``K`` gradients.
* **A stopping rule at the noise floor** (``noise_floor=True``): the system
  itself is only known to the relative accuracy of its noisy parts, so CG
  stops at ``min(max(tol, c·ε), max_tol)``, with ``ε² = ε_b² + ε_H²`` the
  relative standard errors of ``∇_w L_val`` and of ``H b̂`` estimated from
  the spread of the ``K`` batches (``K ≥ 2``), instead of running to
  ``maxiter`` after a tolerance the noise makes unreachable. ``max_tol``
  (default 0.1) keeps a solve from stopping at once when the noise is as
  large as the signal; the returned ``noise_floor`` says so (average more
  batches).

The train step must be a gradient step (:func:`hippojax.gradient_step`),
whose Hessian form this uses.
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hippojax._src import checks
from hippojax._src import implicit as implicit_lib
from hippojax._src import solvers as solvers_lib
from hippojax._src.base import HyperGradInfo

PyTree = Any


class MinibatchHyperGrad(NamedTuple):
  """A :class:`~hippojax.HyperGrad` with the noise floor it stopped at.

  Attributes:
    grad, value, info: as in :class:`~hippojax.HyperGrad` (``value`` and
      ``∇L_val`` averaged over the validation batches; ``info.converged``:
      finite, and CG reached ``max(tol, noise floor)``).
    noise_floor: ``c·ε``, the relative accuracy to which the minibatch
      system is known (``0`` when not estimated: ``K = 1`` or
      ``noise_floor=False``).
    tol: the tolerance CG was held to, ``min(max(tol, noise_floor),
      max_tol)``.
  """

  grad: PyTree
  value: jax.Array
  info: HyperGradInfo
  noise_floor: jax.Array
  tol: jax.Array


def _stack_size(name: str, batches: PyTree) -> int:
  sizes = {jnp.shape(x)[0] for x in jax.tree.leaves(batches)
           if jnp.ndim(x) > 0}
  if len(sizes) != 1:
    raise ValueError(f"{name} must be a stack of minibatches with one "
                     f"leading axis length on every leaf, got {sorted(sizes)}.")
  return sizes.pop()


def _spread(stack: PyTree, mean: PyTree) -> jax.Array:
  """``‖standard error of the mean‖ / ‖mean‖`` over the leading axis."""
  k = jax.tree.leaves(stack)[0].shape[0]
  var = sum(jnp.sum((x - m) ** 2) for x, m in zip(
      jax.tree.leaves(stack), jax.tree.leaves(mean))) / (k * (k - 1))
  den = optax.tree.norm(mean)
  return jnp.sqrt(var) / jnp.where(den > 0, den, 1.0)


@functools.partial(jax.jit, static_argnames=(
    "train_step", "val_loss", "stacked_val", "maxiter", "noise_floor"))
def _core(train_step, val_loss, hparams, params, train_batch, val_batch,
          hessian_batches, init, tol, damping, floor_scale, max_tol, *,
          stacked_val,
          maxiter, noise_floor):
  loss = train_step.loss
  vg = jax.value_and_grad(val_loss, argnums=(0, 1))
  if stacked_val:
    values, (vw, vl) = jax.vmap(lambda b: vg(params, hparams, b))(val_batch)
    value = jnp.mean(values)
    v_w = jax.tree.map(lambda x: jnp.mean(x, 0), vw)
    v_lam = jax.tree.map(lambda x: jnp.mean(x, 0), vl)
  else:
    value, (v_w, v_lam) = vg(params, hparams, val_batch)
  grad_w = lambda w, lam, b: jax.grad(loss)(w, lam, b)

  def hvps(v):  # one Hessian-vector product per Hessian batch
    return jax.vmap(lambda b: jax.jvp(
        lambda w: grad_w(w, hparams, b), (params,), (v,))[1])(hessian_batches)

  mean0 = lambda t: jax.tree.map(lambda x: jnp.mean(x, 0), t)
  matvec = lambda v: optax.tree.add_scale(mean0(hvps(v)), damping, v)
  k = jax.tree.leaves(hessian_batches)[0].shape[0]
  floor = jnp.zeros((), tol.dtype)
  if noise_floor:
    eps2 = jnp.zeros((), tol.dtype)
    if stacked_val:
      eps2 += _spread(vw, v_w) ** 2
    if k > 1:
      unit = optax.tree.scale(
          1.0 / jnp.maximum(optax.tree.norm(v_w), 1e-30), v_w)
      h = hvps(unit)
      eps2 += _spread(h, mean0(h)) ** 2
    floor = floor_scale * jnp.sqrt(eps2)
  eff_tol = jnp.maximum(tol, jnp.minimum(floor, max_tol))
  z, stats = solvers_lib.conjugate_gradient(matvec, v_w, init, tol=eff_tol,
                                            maxiter=maxiter)
  _, vjp_lam = jax.vjp(lambda lam: grad_w(params, lam, train_batch), hparams)
  mixed = vjp_lam(z)[0]
  grad = jax.tree.map(lambda a, b, h: (a - b).astype(h.dtype), v_lam, mixed,
                      hparams)
  g_train = grad_w(params, hparams, train_batch)
  fp = implicit_lib.relative_norm(
      optax.tree.sub(train_step.apply_gradient(params, hparams, train_batch,
                                               g_train), params), params)
  finite = (jnp.isfinite(value) & jnp.isfinite(optax.tree.norm(grad)) &
            jnp.isfinite(stats.residual))
  info = HyperGradInfo(
      num_iters=stats.num_iters, residual=stats.residual,
      converged=finite & (stats.residual <= eff_tol), solution=z,
      fixed_point_residual=fp.astype(stats.residual.dtype),
      curvature=jnp.asarray(stats.curvature, stats.residual.dtype))
  return MinibatchHyperGrad(grad, value, info, floor, eff_tol)


def minibatch_hypergrad(train_step: Callable, val_loss: Callable,
                        hparams: PyTree, params: PyTree, train_batch: PyTree,
                        val_batch: PyTree, *,
                        hessian_batches: PyTree | None = None,
                        stacked_val: bool = False, tol: float = 1e-3,
                        maxiter: int = 100, noise_floor: bool = True,
                        floor_scale: float = 1.0, max_tol: float = 0.1,
                        damping: float = 0.0,
                        init: PyTree | None = None) -> MinibatchHyperGrad:
  r"""The implicit hypergradient on minibatches, with its bias controls.

  Args:
    train_step: a :func:`hippojax.gradient_step` (its Hessian form is used).
    val_loss: ``val_loss(params, hparams, batch) -> scalar``.
    hparams: the hyperparameters.
    params: the trained weights.
    train_batch: the minibatch of the mixed term ``∇²_{λw} L_train``.
    val_batch: a validation minibatch, or (``stacked_val=True``) a stack of
      ``K`` of them whose gradients are averaged.
    hessian_batches: a stack of ``K`` training minibatches (leading axis
      ``K``) for the operator, the mean of their Hessians; ``None`` uses
      ``train_batch`` itself (``K = 1``, correlated with the mixed term).
    stacked_val: whether ``val_batch`` is a stack.
    tol: the relative residual CG aims for when the noise allows it.
    maxiter: CG iterations at most.
    noise_floor: stop at ``max(tol, floor_scale·ε)`` (module docstring);
      needs ``K ≥ 2`` Hessian or validation batches to estimate ``ε``.
    floor_scale: ``c`` in the stopping rule (default 1).
    max_tol: the loosest tolerance the noise floor may set (default 0.1).
    damping: ``δ >= 0`` added to the operator.
    init: warm start for ``z``.

  Returns:
    A :class:`MinibatchHyperGrad`.

  Raises:
    ValueError: for a step that is not a gradient step, or batch stacks of
      inconsistent length; ``TypeError``/``ValueError`` for bad options.
  """
  if not implicit_lib.declares_loss(train_step):
    raise ValueError(
        "minibatch_hypergrad needs a train_step built by "
        "hippojax.gradient_step (it solves the Hessian form with averaged "
        "minibatch Hessians).")
  checks.check_callable("val_loss", val_loss)
  checks.check_positive("tol", tol)
  checks.check_int("maxiter", maxiter, 1)
  checks.check_positive("floor_scale", floor_scale)
  checks.check_positive("max_tol", max_tol)
  damping = implicit_lib.check_damping(damping)
  if not isinstance(noise_floor, bool) or not isinstance(stacked_val, bool):
    raise TypeError("noise_floor and stacked_val must be True or False.")
  hparams = checks.as_float_tree("hparams", hparams)
  if hessian_batches is None:
    hessian_batches = jax.tree.map(lambda x: x[None], train_batch)
  _stack_size("hessian_batches", hessian_batches)
  if stacked_val:
    _stack_size("val_batch", val_batch)
  if init is not None:
    checks.check_like("init", init, "params", params)
  dtype = optax.tree.dtype(params, "highest")
  return _core(train_step, val_loss, hparams, params, train_batch, val_batch,
               hessian_batches, init, jnp.asarray(tol, dtype),
               jnp.asarray(damping, dtype), jnp.asarray(floor_scale, dtype),
               jnp.asarray(max(max_tol, tol), dtype),
               stacked_val=stacked_val, maxiter=maxiter,
               noise_floor=noise_floor)
