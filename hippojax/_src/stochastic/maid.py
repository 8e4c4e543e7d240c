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
import optax

from hippojax._src import checks
from hippojax._src.base import all_finite
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


class MaidState(NamedTuple):
  """MAID's state between outer steps (all arrays: it jits and checkpoints).

  Attributes:
    hparams: the hyperparameters.
    params: the weights, warm start of the next inner solve.
    solution: the last linear-system solution, warm start of the next CG.
    step_size: the next first trial step ``α``.
    eps: the inner accuracy ``‖∇_w L_train‖ ≤ ε`` of the next step.
    delta: the relative CG residual ``δ`` of the next step.
  """

  hparams: PyTree
  params: PyTree
  solution: PyTree
  step_size: jax.Array
  eps: jax.Array
  delta: jax.Array


class MaidStepInfo(NamedTuple):
  """What one MAID step did.

  Attributes:
    val_loss: ``L_val`` at the step's starting hyperparameters, with the
      weights trained to ``ε`` there.
    hypergrad: the inexact hypergradient ``h`` at them.
    accepted: whether the line search accepted a step (else λ stayed and
      the accuracies tightened).
    inner_steps: gradient steps the step trained (its own inner solve and
      every candidate's).
    cg_iters, cg_residual, cg_converged: the linear solve's statistics.
    train_grad_norm: ``‖∇_w L_train‖`` after the step's inner solve.
  """

  val_loss: jax.Array
  hypergrad: PyTree
  accepted: jax.Array
  inner_steps: jax.Array
  cg_iters: jax.Array
  cg_residual: jax.Array
  cg_converged: jax.Array
  train_grad_norm: jax.Array


def _train_to(train_step, params, hparams, batch, eps, maxiter):
  """Gradient steps until ``‖∇_w L‖ ≤ eps`` (or ``maxiter``); returns the
  weights, the steps taken and the final gradient norm."""
  grad = lambda w: jax.grad(train_step.loss)(w, hparams, batch)

  def cond(c):
    _, g, k = c
    return (optax.tree.norm(g) > eps) & (k < maxiter)

  def body(c):
    w, g, k = c
    w = train_step.apply_gradient(w, hparams, batch, g)
    return w, grad(w), k + 1

  w, g, k = jax.lax.while_loop(
      cond, body, (params, grad(params), jnp.asarray(0, jnp.int32)))
  return w, k, optax.tree.norm(g)


def _hypergrad(train_step, val_loss, hparams, params, train_batch, val_batch,
               init, delta, maxiter):
  value, (v_w, v_lam) = jax.value_and_grad(val_loss, argnums=(0, 1))(
      params, hparams, val_batch)
  grad_w = lambda w, lam: jax.grad(train_step.loss)(w, lam, train_batch)
  _, hvp = jax.linearize(lambda w: grad_w(w, hparams), params)
  z, stats = solvers_lib.conjugate_gradient(hvp, v_w, init, tol=delta,
                                            maxiter=maxiter)
  _, vjp = jax.vjp(lambda lam: grad_w(params, lam), hparams)
  h = jax.tree.map(lambda a, b: a - b, v_lam, vjp(z)[0])
  return value, h, z, stats


def maid_init(hparams, params, *, step_size=1.0, eps=1e-2,
              delta=1e-2) -> MaidState:
  """The first :class:`MaidState` (floats in the weights' dtype).

  Examples:
    >>> import jax.numpy as jnp
    >>> import hippojax
    >>> state = hippojax.maid_init(jnp.zeros(3), jnp.zeros(5), eps=1e-3)
    >>> round(float(state.eps), 6), state.solution.shape
    (0.001, (5,))
  """
  hparams = checks.as_float_tree("hparams", hparams)
  step_size = checks.check_positive("step_size", step_size)
  eps = checks.check_positive("eps", eps)
  delta = checks.check_positive("delta", delta)
  dtype = jax.tree.leaves(params)[0].dtype
  as_ = lambda x: jnp.asarray(x, dtype)
  return MaidState(hparams, params, jax.tree.map(jnp.zeros_like, params),
                   as_(step_size), as_(eps), as_(delta))


def maid_step(train_step: Callable, val_loss: Callable, state: MaidState,
              train_batch: PyTree, val_batch: PyTree, *,
              max_backtracks: int = 8, armijo: float = 1e-4,
              inner_maxiter: int = 1000,
              cg_maxiter: int = 100) -> tuple[MaidState, MaidStepInfo]:
  """One MAID outer step, traceable (so it jits and runs inside a study
  chain): train to ``ε``, solve to ``δ``, backtrack, adapt ``ε`` and ``δ``.
  The arguments are those of :func:`maid`."""
  if not implicit_lib.declares_loss(train_step):
    raise ValueError("maid_step needs a train_step built by "
                     "hippojax.gradient_step (it trains to a gradient-norm "
                     "accuracy).")
  lam = state.hparams
  w, k0, gnorm = _train_to(train_step, state.params, lam, train_batch,
                           state.eps, inner_maxiter)
  value, h, z, stats = _hypergrad(train_step, val_loss, lam, w, train_batch,
                                  val_batch, state.solution, state.delta,
                                  cg_maxiter)
  hh = optax.tree.vdot(h, h)

  def cond(c):
    i, _, accepted, _, _ = c
    return (i < max_backtracks) & ~accepted

  def body(c):
    i, alpha, _, _, k = c
    cand = optax.tree.add_scale(lam, -alpha, h)
    w_c, k_c, _ = _train_to(train_step, w, cand, train_batch, state.eps,
                            inner_maxiter)
    v_c = val_loss(w_c, cand, val_batch)
    ok = jnp.isfinite(v_c) & (v_c <= value - armijo * alpha * hh)
    return i + 1, jnp.where(ok, alpha, 0.5 * alpha), ok, w_c, k + k_c

  _, alpha, accepted, w_c, k = jax.lax.while_loop(
      cond, body, (jnp.asarray(0, jnp.int32), state.step_size,
                   jnp.asarray(False), w, jnp.asarray(0, jnp.int32)))
  cand = optax.tree.add_scale(lam, -alpha, h)
  pick = lambda a, b: optax.tree.where(accepted, a, b)
  z = optax.tree.where(all_finite(z), z, optax.tree.zeros_like(z))
  new = MaidState(
      hparams=pick(cand, lam), params=pick(w_c, w), solution=z,
      # accepted: grow α by 1/0.9; else undo the search's halvings
      step_size=jnp.where(accepted, alpha / 0.9,
                          jnp.maximum(alpha * 2.0 ** max_backtracks, 1e-12)),
      eps=jnp.where(accepted, 1.05 * state.eps, 0.5 * state.eps),
      delta=jnp.where(accepted, jnp.minimum(1.05 * state.delta, 0.5),
                      0.5 * state.delta))
  info = MaidStepInfo(value, h, accepted, k0 + k, stats.num_iters,
                      stats.residual, stats.converged, gnorm)
  return new, info


def maid(train_step: Callable, val_loss: Callable, hparams: PyTree,
         params: PyTree, train_batch: PyTree, val_batch: PyTree, *,
         num_steps: int = 50, step_size: float = 1.0, eps: float = 1e-2,
         delta: float = 1e-2, max_backtracks: int = 8, armijo: float = 1e-4,
         inner_maxiter: int = 1000, cg_maxiter: int = 100) -> MaidResult:
  r"""Runs MAID for ``num_steps`` outer steps (a Python loop of one compiled
  :func:`maid_step`).

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
  step_size = checks.check_positive("step_size", step_size)
  eps = checks.check_positive("eps", eps)
  delta = checks.check_positive("delta", delta)
  armijo = checks.check_positive("armijo", armijo)
  hparams = checks.as_float_tree("hparams", hparams)
  state = maid_init(hparams, params, step_size=step_size, eps=eps,
                    delta=delta)
  step = jax.jit(functools.partial(
      maid_step, train_step, val_loss, max_backtracks=max_backtracks,
      armijo=armijo, inner_maxiter=inner_maxiter, cg_maxiter=cg_maxiter))
  history = []
  for _ in range(num_steps):
    state, info = step(state, train_batch, val_batch)
    history.append({"val_loss": float(info.val_loss),
                    "step_size": float(state.step_size),
                    "eps": float(state.eps), "delta": float(state.delta),
                    "accepted": bool(info.accepted),
                    "inner_steps": int(info.inner_steps),
                    "cg_iters": int(info.cg_iters)})
  # The weights trained to the final ε at the final hyperparameters.
  w, _, _ = jax.jit(functools.partial(_train_to, train_step,
                                      maxiter=inner_maxiter))(
      state.params, state.hparams, train_batch, state.eps)
  return MaidResult(state.hparams, w, history)
