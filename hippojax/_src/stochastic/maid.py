r"""MAID: an adaptively inexact first-order method for bilevel problems.

Salehi, Mukherjee, Roberts, Ehrhardt (2023/24). Full-batch, for a
:func:`hippojax.gradient_step`. Each outer step:

1. trains the weights, warm-started, until ``‖∇_w L_train‖ ≤ ε``;
2. solves ``H z = ∇_w L_val`` with warm-started CG to relative residual
   ``δ``, and forms ``h = ∇_λ L_val − ∇²_{λw} L_train z``;
3. backtracks on the step ``α``: the candidate ``λ' = λ − α h`` is accepted
   when, with weights trained to ``ε`` at ``λ'``,
   ``L_val(λ') ≤ L_val(λ) − η α ‖h‖²``; each rejection halves ``α``;
4. after an accepted step, ``α`` grows by ``1/ρ`` (``ρ = 0.9``) and the
   accuracies relax a little (``ε, δ ← ν⁺ ε, ν⁺ δ``, ``ν⁺ = 1.05``); when
   ``max_backtracks`` rejections in a row fail, ``λ`` stays and the
   accuracies tighten (``ε, δ ← ν⁻ ε, ν⁻ δ``, ``ν⁻ = 0.5``): the line search
   failing is the signal that the inexact hypergradient or values were too
   inaccurate to trust.

This is a compact reading of the paper's algorithm: its sufficient-decrease
test carries error bounds in ``ε`` and ``δ`` that need the problem's
Lipschitz and strong-convexity constants; this version uses the plain
Armijo test on the inexact values and lets a failed search tighten the
accuracies instead.
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hippojax._src import checks
from hippojax._src import implicit as implicit_lib
from hippojax._src import solvers as solvers_lib

PyTree = Any


class MaidResult(NamedTuple):
  """What :func:`maid` returns.

  Attributes:
    hparams: the final hyperparameters.
    params: the weights trained at them (to the final ``ε``).
    history: one dict per outer step: ``val_loss``, ``step_size``, ``eps``,
      ``delta``, ``accepted``, ``inner_steps`` and ``cg_iters`` used.
  """

  hparams: PyTree
  params: PyTree
  history: list


@functools.partial(jax.jit, static_argnames=("train_step", "maxiter"))
def _train_to(train_step, params, hparams, batch, eps, *, maxiter):
  """Gradient steps until ``‖∇_w L‖ ≤ eps`` (or ``maxiter``)."""
  grad = lambda w: jax.grad(train_step.loss)(w, hparams, batch)

  def cond(c):
    _, g, k = c
    return (optax.tree.norm(g) > eps) & (k < maxiter)

  def body(c):
    w, g, k = c
    w = train_step.apply_gradient(w, hparams, batch, g)
    return w, grad(w), k + 1

  w, _, k = jax.lax.while_loop(cond, body, (params, grad(params), 0))
  return w, k


@functools.partial(jax.jit, static_argnames=("train_step", "val_loss",
                                             "maxiter"))
def _hypergrad(train_step, val_loss, hparams, params, train_batch, val_batch,
               init, delta, *, maxiter):
  value, (v_w, v_lam) = jax.value_and_grad(val_loss, argnums=(0, 1))(
      params, hparams, val_batch)
  grad_w = lambda w, lam: jax.grad(train_step.loss)(w, lam, train_batch)
  _, hvp = jax.linearize(lambda w: grad_w(w, hparams), params)
  z, stats = solvers_lib.conjugate_gradient(hvp, v_w, init, tol=delta,
                                            maxiter=maxiter)
  _, vjp = jax.vjp(lambda lam: grad_w(params, lam), hparams)
  h = jax.tree.map(lambda a, b: a - b, v_lam, vjp(z)[0])
  return value, h, z, stats.num_iters


@functools.partial(jax.jit, static_argnames=("val_loss",))
def _value(val_loss, params, hparams, batch):
  return val_loss(params, hparams, batch)


def maid(train_step: Callable, val_loss: Callable, hparams: PyTree,
         params: PyTree, train_batch: PyTree, val_batch: PyTree, *,
         num_steps: int = 50, step_size: float = 1.0, eps: float = 1e-2,
         delta: float = 1e-2, max_backtracks: int = 8, armijo: float = 1e-4,
         inner_maxiter: int = 1000, cg_maxiter: int = 100) -> MaidResult:
  r"""Runs MAID for ``num_steps`` outer steps (a Python loop of compiled
  pieces: the inner training, the hypergradient, the line search's values).

  Args:
    train_step: a :func:`hippojax.gradient_step`.
    val_loss: ``val_loss(params, hparams, batch) -> scalar``.
    hparams: the starting hyperparameters (any pytree of floats).
    params: the starting weights.
    train_batch: the training data (full batch).
    val_batch: the validation data.
    num_steps: outer steps.
    step_size: the first ``α``.
    eps: the first inner accuracy ``‖∇_w L_train‖ ≤ ε``.
    delta: the first relative CG residual ``δ``.
    max_backtracks: rejections before the accuracies tighten.
    armijo: ``η`` of the sufficient-decrease test.
    inner_maxiter: gradient steps per inner solve at most.
    cg_maxiter: CG iterations per solve at most.

  Returns:
    A :class:`MaidResult`.

  References:
    Salehi, Mukherjee, Roberts, Ehrhardt, "An adaptively inexact first-order
    method for bilevel optimization with application to hyperparameter
    learning", 2023 (arXiv:2308.10098).
  """
  if not implicit_lib.declares_loss(train_step):
    raise ValueError("maid needs a train_step built by hippojax.gradient_step"
                     " (it trains to a gradient-norm accuracy).")
  checks.check_callable("val_loss", val_loss)
  checks.check_int("num_steps", num_steps, 0)
  checks.check_int("max_backtracks", max_backtracks, 1)
  checks.check_int("inner_maxiter", inner_maxiter, 1)
  checks.check_int("cg_maxiter", cg_maxiter, 1)
  alpha = checks.check_positive("step_size", step_size)
  eps = checks.check_positive("eps", eps)
  delta = checks.check_positive("delta", delta)
  eta = checks.check_positive("armijo", armijo)
  hparams = checks.as_float_tree("hparams", hparams)
  train = functools.partial(_train_to, train_step, maxiter=inner_maxiter)
  w, k = train(params, hparams, train_batch, eps)
  z = jax.tree.map(jnp.zeros_like, w)
  history = []
  for _ in range(num_steps):
    inner = int(k)
    value, h, z, cg = _hypergrad(train_step, val_loss, hparams, w,
                                 train_batch, val_batch, z, delta,
                                 maxiter=cg_maxiter)
    hh = float(optax.tree.vdot(h, h))
    accepted = False
    for _ in range(max_backtracks):
      cand = optax.tree.add_scale(hparams, -alpha, h)
      w_c, k_c = train(w, cand, train_batch, eps)
      inner += int(k_c)
      v_c = float(_value(val_loss, w_c, cand, val_batch))
      if np.isfinite(v_c) and v_c <= float(value) - eta * alpha * hh:
        accepted = True
        break
      alpha *= 0.5
    if accepted:
      hparams, w = cand, w_c
      alpha /= 0.9
      eps, delta = eps * 1.05, min(delta * 1.05, 0.5)
    else:
      eps, delta = eps * 0.5, delta * 0.5
      alpha = max(alpha * 2.0 ** max_backtracks, 1e-12)  # undo the search
      w, k_w = train(w, hparams, train_batch, eps)
      inner += int(k_w)
    k = 0
    history.append({"val_loss": float(value), "step_size": alpha,
                    "eps": eps, "delta": delta, "accepted": accepted,
                    "inner_steps": inner, "cg_iters": int(cg)})
  return MaidResult(hparams, w, history)
