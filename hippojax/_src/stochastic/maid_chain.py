r"""MAID as a study method: one compiled :func:`maid_step` per trial.

The chain runs MAID on the unconstrained hyperparameters ``u`` (so
``λ = constrain(u)`` stays inside the search space) with the problem's
full training batch: MAID is a deterministic method. Each trial records the
hyperparameters the step trained at (as the other gradient chains do), and
its training steps are what MAID actually took (its own inner solve and
every line-search candidate's), so a study's equal-steps comparison charges
it fairly. The engine has the interface of :class:`hippojax._src.outer.Engine`
(``init``, ``step``, ``inner_steps``).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from hippojax._src.base import all_finite
from hippojax._src.outer import StepRecord, _OnU, _step_on_u
from hippojax._src.stochastic import maid as maid_lib


class MaidChainState(NamedTuple):
  """The state of one MAID chain (:class:`~maid.MaidState` on ``u``).

  Attributes:
    step: outer steps taken (int32).
    u: unconstrained hyperparameters.
    params, solution, step_size, eps, delta: as in
      :class:`~hippojax._src.stochastic.maid.MaidState`.
    key: PRNG key data (uint32) that initialised ``params``.
  """

  step: jax.Array
  u: dict
  params: object
  solution: object
  step_size: jax.Array
  eps: jax.Array
  delta: jax.Array
  key: jax.Array


@functools.lru_cache(maxsize=16)
def _engine(problem, options: tuple) -> "MaidEngine":
  return MaidEngine(problem, dict(options))


def get_engine(problem, method: str, options: dict) -> "MaidEngine":
  """The cached engine (compiled once per problem/options)."""
  if method != "maid":
    raise ValueError(f"method={method!r} is not 'maid'.")
  return _engine(problem, tuple(sorted(options.items())))


class MaidEngine:
  """A compiled MAID chain on ``problem``.

  Args:
    problem: a problem whose ``train_step`` is a
      :func:`hippojax.gradient_step` (every built-in one is).
    options: ``inner_steps`` (gradient steps per inner solve at most, and the
      retraining budget of a trial's value), ``step_size``, ``eps``,
      ``delta``, ``max_backtracks``, ``maxiter`` (CG), as in
      :func:`hippojax.maid`.
  """

  method = "maid"
  optimizer = None  # MAID's line search is its own outer step

  def __init__(self, problem, options: dict):
    self.problem, self.options = problem, dict(options)
    self.inner_steps = int(options["inner_steps"])
    space = problem.space
    self._step_u = _step_on_u(problem.train_step, space)
    if not hasattr(self._step_u, "loss"):
      raise ValueError(
          f"maid needs the problem's train_step to be a "
          f"hippojax.gradient_step (it trains to a gradient-norm accuracy); "
          f"{problem.name!r}'s is not.")
    self._val_u = _OnU(problem.val_loss, space)
    self._maid_step = functools.partial(
        maid_lib.maid_step, self._step_u, self._val_u,
        max_backtracks=int(options.get("max_backtracks", 8)),
        inner_maxiter=self.inner_steps,
        cg_maxiter=int(options.get("maxiter", 100)))
    self._jit_step = jax.jit(self._step)

  def init(self, seed: int) -> MaidChainState:
    p = self.problem
    key = jax.random.key_data(jax.random.key(seed))
    params = p.init_params(jax.random.wrap_key_data(key))
    u = p.space.unconstrain(p.space.default())
    first = maid_lib.maid_init(
        u, params, step_size=float(self.options.get("step_size", 1.0)),
        eps=float(self.options.get("eps", 1e-2)),
        delta=float(self.options.get("delta", 1e-2)))
    return MaidChainState(
        step=jnp.asarray(0, jnp.int32), u=u, params=params,
        solution=first.solution, step_size=first.step_size, eps=first.eps,
        delta=first.delta, key=key)

  def step(self, state: MaidChainState) -> tuple[MaidChainState, StepRecord]:
    """One MAID step (compiled)."""
    p = self.problem
    return self._jit_step(state, p.train_data, p.val_data)

  def _step(self, state, train, val):
    p = self.problem
    ms = maid_lib.MaidState(state.u, state.params, state.solution,
                            state.step_size, state.eps, state.delta)
    new, info = self._maid_step(ms, train, val)
    w = new.params
    # ‖Φ(w) − w‖ / ‖w‖ of the weights the hypergradient was taken at is not
    # kept; report it at the weights the chain goes on from.
    g = jax.grad(self._step_u.loss)(w, new.hparams, train)
    moved = optax.tree.sub(
        self._step_u.apply_gradient(w, new.hparams, train, g), w)
    fpr = optax.tree.norm(moved) / jnp.maximum(optax.tree.norm(w), 1e-30)
    finite = all_finite(info.hypergrad) & jnp.isfinite(info.val_loss)
    record = StepRecord(
        val_loss=info.val_loss, hparams=p.space.constrain(state.u),
        grad_norm=optax.tree.norm(info.hypergrad), num_iters=info.cg_iters,
        residual=info.cg_residual,
        converged=info.cg_converged & (info.train_grad_norm <= state.eps),
        finite=finite, fixed_point_residual=fpr,
        damping=jnp.zeros((), info.cg_residual.dtype),
        polish_steps=jnp.asarray(0, jnp.int32),
        train_steps=info.inner_steps.astype(jnp.int32))
    return MaidChainState(
        step=state.step + 1, u=new.hparams, params=new.params,
        solution=new.solution, step_size=new.step_size, eps=new.eps,
        delta=new.delta, key=state.key), record
