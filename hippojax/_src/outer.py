r"""The outer loop of the gradient methods on a :class:`Problem`.

One outer step, compiled once per (problem, method, options):

1. ``λ = σ-bijection(u)`` (see :mod:`hippojax._src.space`);
2. ``inner_steps`` warm-started training steps at ``λ``; before an ``ift`` or
   ``hoag`` hypergradient, up to ``inner_steps / 2`` half steps that make
   the weights a fixed point (see :func:`hippojax.polish`);
3. the hypergradient ``d L_val / d u`` by the chosen method (through ``λ(u)``);
4. an Adam step on ``u``; a refused hypergradient is replaced by zero.

The implicit methods run through the same method objects as
:func:`hippojax.hypergradient`, with the same safeguards: a hypergradient
that is not finite or whose certified residual is above ``max_residual`` is
refused, a diverged solve resets the warm start, and damping adapts (raised
at non-positive curvature, lowered after converged solves).

The implicit methods (``t1t2``, ``ift``, ``hoag``) take the hypergradient at
the trained weights. The unrolled methods (``reverse``, ``drmad``) spend the
last ``unroll_steps`` of the inner budget inside the differentiated (or, for
DrMAD, interpolated) trajectory; warm-started near a fixed point this is the
truncated hypergradient, which also reaches learning-rate hyperparameters.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hippojax._src import methods as methods_lib
from hippojax._src.base import all_finite
from hippojax._src.implicit import declares_loss
from hippojax._src.polish import polish
from hippojax._src.space import SearchSpace
from hippojax._src.unrolled import drmad, reverse

PyTree = Any

IMPLICIT = ("t1t2", "ift", "hoag")
UNROLLED = ("drmad", "reverse")
GRADIENT_METHODS = IMPLICIT + UNROLLED

#: Fixed-point polishing before an implicit hypergradient: at most this
#: fraction of ``inner_steps`` half steps (see :func:`hippojax.polish`).
POLISH_FRACTION = 0.5


class OuterState(NamedTuple):
  """The state of one gradient chain, checkpointed between steps.

  Attributes:
    step: outer steps taken (int32).
    u: unconstrained hyperparameters ``{name: array}``.
    params: warm-started inner parameters.
    opt_state: the Adam state on ``u``.
    solution: warm start of the linear solve (``hoag``), shaped like params.
    key: PRNG key data (uint32) that initialised ``params``.
    damping: damping of the next linear solve (implicit methods; adapted).
    tol: tolerance of the next linear solve (``0`` without one).
  """

  step: jax.Array
  u: dict
  params: PyTree
  opt_state: PyTree
  solution: PyTree
  key: jax.Array
  damping: jax.Array
  tol: jax.Array


class StepRecord(NamedTuple):
  """What one outer step reports (for the trial it is recorded as).

  Attributes:
    val_loss: validation loss after the inner training at ``hparams``.
    hparams: the constrained hyperparameters the step trained with.
    grad_norm: norm of the hypergradient with respect to ``u``.
    num_iters: the method's ``info.num_iters``.
    residual: the method's ``info.residual``.
    converged: the method's ``info.converged``.
    finite: whether the hypergradient was accepted (finite, and for the
      implicit methods a residual within ``max_residual``); else it was
      zeroed.
    fixed_point_residual: the method's ``info.fixed_point_residual``.
    damping: the damping the step's linear solve used.
    polish_steps: the half steps :func:`hippojax.polish` took before the
      solve (training steps beyond ``inner_steps``; 0 for other methods).
    train_steps: the warm-started training steps the step took besides
      those: ``inner_steps`` for the fixed-budget methods; what MAID's
      train-to-ε solves actually took.
  """

  val_loss: jax.Array
  hparams: dict
  grad_norm: jax.Array
  num_iters: jax.Array
  residual: jax.Array
  converged: jax.Array
  finite: jax.Array
  fixed_point_residual: jax.Array
  damping: jax.Array
  polish_steps: jax.Array
  train_steps: jax.Array


@dataclasses.dataclass(frozen=True)
class _OnU:
  """``fn(params, constrain(u), batch)``: a problem function of raw ``u``."""

  fn: Callable
  space: SearchSpace

  def __call__(self, params, u, batch):
    return self.fn(params, self.space.constrain(u), batch)

  @property
  def symmetric_jacobian(self) -> bool:
    return bool(getattr(self.fn, "symmetric_jacobian", False))


@dataclasses.dataclass(frozen=True)
class _GradientStepOnU:
  """A problem's gradient step as a function of raw ``u``, keeping what the
  implicit methods read from it (its loss, for the Hessian form)."""

  step: Any
  space: SearchSpace

  def __call__(self, params, u, batch):
    return self.step(params, self.space.constrain(u), batch)

  @property
  def symmetric_jacobian(self) -> bool:
    return bool(getattr(self.step, "symmetric_jacobian", False))

  @property
  def symmetric_by_construction(self) -> bool:
    return bool(getattr(self.step, "symmetric_by_construction", False))

  def loss(self, params, u, batch):
    return self.step.loss(params, self.space.constrain(u), batch)

  def apply_gradient(self, params, u, batch, grads):
    return self.step.apply_gradient(params, self.space.constrain(u), batch,
                                    grads)


def _step_on_u(step, space):
  return (_GradientStepOnU(step, space) if declares_loss(step) else
          _OnU(step, space))


@dataclasses.dataclass(frozen=True)
class _CarryData:
  """A step on ``(params, data)`` that carries the training data unchanged.

  The unrolled methods want one batch per step; passing the full batch T
  times would store T copies. Carried as part of the state (behind
  ``stop_gradient``), the data is stored once. Integer leaves (labels)
  travel as floats so that DrMAD can interpolate the carry, and are rounded
  back here.
  """

  step: Callable
  int_dtypes: tuple

  def __call__(self, carry, u, batch):
    del batch
    params, data = carry
    leaves, treedef = jax.tree.flatten(jax.lax.stop_gradient(data))
    leaves = [x if d is None else jnp.round(x).astype(d)
              for x, d in zip(leaves, self.int_dtypes)]
    new = self.step(params, u, jax.tree.unflatten(treedef, leaves))
    return new, data


@dataclasses.dataclass(frozen=True)
class _CarryVal:
  fn: Callable

  def __call__(self, carry, u, batch):
    return self.fn(carry[0], u, batch)


def _as_float_leaves(data):
  leaves, treedef = jax.tree.flatten(data)
  dtypes = tuple(None if jnp.issubdtype(x.dtype, jnp.floating) else
                 np.dtype(x.dtype).name for x in leaves)
  dt = jnp.zeros(()).dtype
  floats = [x if d is None else x.astype(dt) for x, d in zip(leaves, dtypes)]
  return jax.tree.unflatten(treedef, floats), dtypes


class Engine:
  """The compiled outer step of one gradient method on one problem.

  Args:
    problem: a :class:`~hippojax.problems.Problem`.
    method: one of ``GRADIENT_METHODS``.
    options: resolved method options (``inner_steps``, ``outer_lr`` and the
      method's own, see :func:`hippojax.create_study`).
  """

  def __init__(self, problem, method: str, options: dict):
    self.problem = problem
    self.method = method
    self.options = dict(options)
    self.inner_steps = int(options["inner_steps"])
    self.optimizer = optax.adam(float(options["outer_lr"]))
    space = problem.space
    self._step_u = _step_on_u(problem.train_step, space)
    self._val_u = _OnU(problem.val_loss, space)
    self._method = None
    if method in IMPLICIT:
      own = {"ift": ("num_iters",), "hoag": ("tol", "maxiter")}.get(method, ())
      kwargs = {k: options[k] for k in own if k in options}
      if method == "hoag":  # the study's tolerance is fixed, not scheduled
        kwargs["decay"] = 1.0
        # A fixed budget per outer step on (mostly) networks: a stall is a
        # conditioning problem, which damping solves.
        kwargs["damp_on_stall"] = True
        # Every outer step should move λ: a solve that met negative
        # curvature is redone with more damping (at most twice).
        kwargs["retries"] = 2
      self._method = methods_lib.build(method, kwargs)
    if method in UNROLLED:
      self.unroll_steps = min(int(options["unroll_steps"]), self.inner_steps)
      _, dtypes = _as_float_leaves(problem.train_data)
      self._carry_step = _CarryData(self._step_u, dtypes)
      self._carry_val = _CarryVal(self._val_u)
    else:
      self.unroll_steps = 0
    # Only the methods that assume a fixed point (ift, hoag) polish.
    self.polish_steps = (int(POLISH_FRACTION * self.inner_steps)
                         if getattr(self._method, "solves", False) else 0)
    self._jit_step = jax.jit(self._step)

  def init(self, seed: int) -> OuterState:
    """The chain's initial state: default hyperparameters, fresh params."""
    space = self.problem.space
    u = space.unconstrain(space.default())
    key = jax.random.key_data(jax.random.key(seed))
    params = self.problem.init_params(jax.random.wrap_key_data(key))
    dtype = jax.tree.leaves(params)[0].dtype
    tol = 0.0
    damping = 0.0
    if self._method is not None:
      ms = self._method.init(u, dtype)
      tol, damping = ms.tol, ms.damping
    return OuterState(
        step=jnp.asarray(0, jnp.int32), u=u, params=params,
        opt_state=self.optimizer.init(u),
        solution=jax.tree.map(jnp.zeros_like, params), key=key,
        damping=jnp.asarray(damping, dtype), tol=jnp.asarray(tol, dtype))

  def step(self, state: OuterState) -> tuple[OuterState, StepRecord]:
    """One outer step (compiled)."""
    p = self.problem
    return self._jit_step(state, p.train_data, p.val_data)

  def _train(self, params, hparams, train, num_steps):
    step = self.problem.train_step
    return jax.lax.fori_loop(0, num_steps,
                             lambda _, w: step(w, hparams, train), params)

  def _step(self, state, train, val):
    p = self.problem
    u = state.u
    hparams = p.space.constrain(u)
    opts = self.options
    plain = self.inner_steps - self.unroll_steps
    w = self._train(state.params, hparams, train, plain)
    solution, damping, tol = state.solution, state.damping, state.tol
    polished = jnp.asarray(0, jnp.int32)
    if self.method in IMPLICIT:
      if self.polish_steps:
        w, polished = polish(p.train_step, w, hparams, train,
                      max_steps=self.polish_steps,
                      fixed_point_tol=self._method.fixed_point_tol)
      value = p.val_loss(w, hparams, val)
      warm = solution if self.method == "hoag" else None
      ms = methods_lib.MethodState(tol, warm, damping, None)
      hg, used = self._method.hypergrad(
          ms, u, {"inner_params": w, "train_batch": train, "val_batch": val},
          train_step=self._step_u, val_loss=self._val_u)
      accepted = methods_lib.accepted(self._method, hg)
      ms = self._method.next_state(ms, hg, accepted, used)
      if used is not None:  # the record holds the damping solved with
        state = state._replace(damping=used.astype(state.damping.dtype))
      if self.method == "hoag":
        solution = ms.warm_start
      damping, tol = ms.damping, ms.tol
    else:
      data, _ = _as_float_leaves(train)
      w_end = self._train(w, hparams, train, self.unroll_steps)
      if self.method == "reverse":
        hg = reverse(self._carry_step, self._carry_val, u, (w, data), None,
                     val, remat=opts["remat"], num_steps=self.unroll_steps)
      else:
        hg = drmad(self._carry_step, self._carry_val, u, (w, data),
                   (w_end, data), None, val, num_steps=self.unroll_steps)
      w = w_end
      value = p.val_loss(w, hparams, val)
      accepted = all_finite(hg.grad)
    finite = accepted
    grad = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)),
                        hg.grad)
    updates, opt_state = self.optimizer.update(grad, state.opt_state, u)
    new_u = optax.apply_updates(u, updates)
    # Training that blew up restarts from the previous weights.
    ok = all_finite(w)
    w = jax.tree.map(lambda a, b: jnp.where(ok, a, b), w, state.params)
    solution_ok = all_finite(solution)
    solution = jax.tree.map(
        lambda a, b: jnp.where(solution_ok, a, jnp.zeros_like(b)),
        solution, state.params)
    new_state = OuterState(state.step + 1, new_u, w, opt_state, solution,
                           state.key, damping.astype(state.damping.dtype),
                           tol.astype(state.tol.dtype))
    record = StepRecord(
        val_loss=value, hparams=hparams, grad_norm=optax.tree.norm(hg.grad),
        num_iters=hg.info.num_iters, residual=hg.info.residual,
        converged=hg.info.converged, finite=finite,
        fixed_point_residual=hg.info.fixed_point_residual,
        damping=state.damping, polish_steps=polished,
        train_steps=jnp.asarray(self.inner_steps, jnp.int32))
    return new_state, record


@functools.lru_cache(maxsize=64)
def _engine(problem, method: str, options: tuple) -> Engine:
  return Engine(problem, method, dict(options))


def get_engine(problem, method: str, options: dict) -> Engine:
  """The cached :class:`Engine` (compiled once per problem/method/options)."""
  return _engine(problem, method, tuple(sorted(options.items())))
