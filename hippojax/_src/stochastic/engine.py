r"""Single-loop chains on a :class:`~hippojax.problems.Problem`.

One chain runs the user-written loop of the docs, compiled: per iteration,
on fresh minibatches (windows of a shuffle, so each minibatch holds
distinct examples),

* ``soba``: one SGD step on the weights, one ``hypergradient(method=
  "soba")`` update, one Adam step on the unconstrained hyperparameters ``u``;
* ``saba``: the same with SABA's variance-reduced weight step
  ``w ← w + state.extra.inner_step`` in place of the SGD step;
* ``amigo``: ``warm_steps`` SGD steps on the weights, then an update of
  ``linear_steps`` linear-system steps (one minibatch each), then Adam.

A *round* is ``inner_steps`` weight steps; :meth:`SingleLoopEngine.step`
runs one round in one compiled call and reports the full validation loss at
its end, so a study records one trial per round, and a round spends the same
number of inner training steps as one black-box trial or one outer step of a
gradient method. The engine has the interface of
:class:`hippojax._src.outer.Engine` (``init``, ``step``, ``inner_steps``), so
the study layer drives both alike.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hippojax._src.base import all_finite
from hippojax._src.outer import StepRecord
from hippojax._src.space import SearchSpace
from hippojax._src.transform import hypergradient

PyTree = Any

SINGLE_LOOP = ("soba", "saba", "amigo")


@dataclasses.dataclass(frozen=True)
class _OnU:
  """``fn(params, constrain(u), batch)``: a problem function of raw ``u``."""

  fn: Callable
  space: SearchSpace

  def __call__(self, params, u, batch):
    return self.fn(params, self.space.constrain(u), batch)


class ChainState(NamedTuple):
  """The state of one single-loop chain.

  Attributes:
    step: rounds taken so far (int32).
    weight_steps: weight steps taken so far (int32).
    u: unconstrained hyperparameters.
    params: the weights.
    hyper: the :class:`~hippojax.HypergradientState` of the method.
    opt_state: the Adam state on ``u``.
    key: PRNG key data (uint32) of the minibatch stream.
    train_order, val_order: the chain's shuffles of the examples.
  """

  step: jax.Array
  weight_steps: jax.Array
  u: dict
  params: PyTree
  hyper: PyTree
  opt_state: PyTree
  key: jax.Array
  train_order: jax.Array
  val_order: jax.Array


def _window(key, order, size):
  """``size`` distinct indices: a window of the chain's fixed shuffle
  ``order``, starting anywhere (wrapping round). Each example is equally
  likely; it costs O(size), where a fresh permutation per epoch cost O(n)
  and dominated the step on CPU."""
  n = order.shape[0]
  start = jax.random.randint(key, (), 0, n)
  return order[(start + jnp.arange(size)) % n]


def outer_schedule(lr: float, tau: float):
  r"""The outer step :math:`\eta_t = \eta / \sqrt{1 + t/\tau}` (constant
  for ``tau = 0``).

  A single-loop chain's hypergradient is one minibatch's, so a constant step
  leaves λ jittering at a noise floor: on ``hyper-cleaning-mnist1d`` the last
  iterate's retrained validation loss stalled near 1.583, above full-batch
  HOAG's 1.5803. The :math:`1/\sqrt t` decay of stochastic approximation
  lets it pass that (1.578 with ``tau`` four rounds). optax has no such
  schedule, hence this one line.
  """
  if tau <= 0:
    return lr
  return lambda t: lr * jax.lax.rsqrt(1.0 + t / tau)


@functools.lru_cache(maxsize=16)
def _engine(problem, method: str, options: tuple) -> "SingleLoopEngine":
  return SingleLoopEngine(problem, method, dict(options))


def get_engine(problem, method: str, options: dict) -> "SingleLoopEngine":
  """The cached engine (compiled once per problem/method/options)."""
  return _engine(problem, method, tuple(sorted(options.items())))


class SingleLoopEngine:
  """A compiled single-loop chain of ``method`` on ``problem``.

  Args:
    problem: a problem with ``batch_size`` set (a full-batch problem uses
      its whole training set as every minibatch).
    method: ``"soba"``, ``"saba"`` or ``"amigo"``.
    options: ``inner_steps`` (weight steps per round), ``outer_lr`` (Adam on
      ``u``), ``decay_rounds`` (default 0, constant: the Adam step decays
      as :math:`1/\sqrt{1 + t/\tau}` with ``tau`` this many rounds, see
      :func:`outer_schedule`), ``average`` (default True: a round reports
      the mean of ``u`` over its iterations), ``linear_rate``, ``damping``,
      and for ``amigo`` ``warm_steps`` and ``linear_steps``.
  """

  def __init__(self, problem, method: str, options: dict):
    if method not in SINGLE_LOOP:
      raise ValueError(f"method={method!r} is not one of {SINGLE_LOOP}.")
    self.problem, self.method, self.options = problem, method, dict(options)
    self.inner_steps = int(options["inner_steps"])
    self.average = bool(options.get("average", True))
    self.warm = int(options.get("warm_steps", 1)) if method == "amigo" else 1
    self.iterations = max(1, self.inner_steps // self.warm)  # per round
    self.optimizer = optax.adam(outer_schedule(
        float(options["outer_lr"]),
        float(options.get("decay_rounds", 0.0)) * self.iterations))
    self.batch = problem.batch_size or problem.num_train
    self.val_batch = problem.val_batch_size or problem.num_val
    self.linear = (int(options.get("linear_steps", 1)) if method == "amigo"
                   else 1)
    space = problem.space
    self._step_u = _OnU(problem.train_step, space)
    self._val_u = _OnU(problem.val_loss, space)
    like = jax.eval_shape(problem.init_params, jax.random.key(0))
    extra = {}
    if method == "amigo":
      extra["linear_steps"] = self.linear
    if method == "saba":
      extra.update(num_train=problem.num_train, num_val=problem.num_val)
    self.tx = hypergradient(self._step_u, self._val_u, method=method,
                            inner_params_like=like,
                            linear_rate=float(options.get("linear_rate", 1.0)),
                            damping=float(options.get("damping", 0.0)),
                            **extra)
    # The state is not donated: a chain keeps the previous state until the
    # round's trial is recorded. (Donating it would update SABA's memories in
    # place: 417 instead of 582 MiB of peak RSS on hyper-cleaning-mnist1d.)
    self._jit_round = jax.jit(self._round)

  def init(self, seed: int) -> ChainState:
    p = self.problem
    key = jax.random.key(seed)
    params = p.init_params(key)
    u = p.space.unconstrain(p.space.default())
    k1, k2, k3 = jax.random.split(jax.random.fold_in(key, 2), 3)
    state = ChainState(
        step=jnp.asarray(0, jnp.int32),
        weight_steps=jnp.asarray(0, jnp.int32), u=u, params=params,
        hyper=self.tx.init(u), opt_state=self.optimizer.init(u),
        key=jax.random.key_data(k1),
        train_order=jax.random.permutation(k2, p.num_train),
        val_order=jax.random.permutation(k3, p.num_val))
    return state

  def step(self, state: ChainState) -> tuple[ChainState, StepRecord]:
    """One round (``inner_steps`` weight steps), compiled.

    The record's ``val_loss`` is on the whole validation set at the round's
    end; ``grad_norm``, ``num_iters``, ``residual`` and ``converged`` are the
    last update's; ``finite`` says no update of the round was refused.
    """
    p = self.problem
    return self._jit_round(state, p.train_data, p.val_data)

  def _batches(self, state, train, val, count):
    """``count`` train and validation minibatches (with their indices)."""
    key = jax.random.wrap_key_data(state.key)

    def one(k):
      k1, k2 = jax.random.split(k)
      return (_window(k1, state.train_order, self.batch),
              _window(k2, state.val_order, self.val_batch))

    key, sub = jax.random.split(key)
    ti, vi = jax.vmap(one)(jax.random.split(sub, count))
    state = state._replace(key=jax.random.key_data(key))
    take = lambda data, idx: jax.tree.map(lambda a: a[idx], data)
    return state, ti, vi, take(train, ti), take(val, vi)

  def _iteration(self, state, train, val):
    u, w = state.u, state.params
    warm, m = self.warm, self.linear
    state, ti, vi, tb, vb = self._batches(state, train, val, warm + m)
    first = lambda t: jax.tree.map(lambda a: a[0], t)
    if self.method == "amigo":
      for i in range(warm):  # warm_steps SGD steps (static, small)
        w = self._step_u(w, u, jax.tree.map(lambda a, i=i: a[i], tb))
      stack = lambda t: jax.tree.map(lambda a: a[warm:], t)
      g, hyper = self.tx.update(None, state.hyper, u, inner_params=w,
                                train_batch=stack(tb) if m > 1 else
                                first(stack(tb)),
                                val_batch=stack(vb) if m > 1 else
                                first(stack(vb)))
    else:
      g, hyper = self.tx.update(None, state.hyper, u, inner_params=w,
                                train_batch=first(tb), val_batch=first(vb),
                                train_indices=ti[0], val_indices=vi[0])
      if self.method == "saba":
        w = optax.tree.add(w, hyper.extra.inner_step)
      else:
        w = self._step_u(w, u, first(tb))
    updates, opt_state = self.optimizer.update(g, state.opt_state, u)
    ok = all_finite(w)  # training that blew up keeps the previous weights
    w = optax.tree.where(ok, w, state.params)
    return state._replace(weight_steps=state.weight_steps + warm,
                          u=optax.apply_updates(
        u, updates), params=w, hyper=hyper, opt_state=opt_state), g

  def _round(self, state, train, val):
    r"""One round; with ``average``, it reports the Polyak-Ruppert mean
    :math:`\bar u = \frac1T\sum_t u_t` of its iterates.

    The outer step leaves ``u`` jittering around the optimum with a spread
    proportional to the step; the mean over a round cancels much of it,
    while the chain itself continues from the last iterate. On
    ``hyper-cleaning-mnist1d`` with a constant step it lowered SOBA's
    retrained validation loss from about 1.59 to 1.583; the decaying step of
    :func:`outer_schedule` does the rest.
    """
    p = self.problem
    iters = self.iterations

    def body(_, carry):
      state, _, total = carry
      state, g = self._iteration(state, train, val)
      return state, g, optax.tree.add(total, state.u)

    zeros = jax.tree.map(jnp.zeros_like, state.u)
    refused = state.hyper.num_refused
    state, g, total = jax.lax.fori_loop(0, iters, body, (state, zeros, zeros))
    hyper = state.hyper
    u = optax.tree.scale(1.0 / iters, total) if self.average else state.u
    hparams = p.space.constrain(u)
    record = StepRecord(
        val_loss=p.val_loss(state.params, hparams, val),
        hparams=hparams, grad_norm=optax.tree.norm(g),
        num_iters=hyper.num_iters, residual=hyper.residual,
        converged=hyper.converged, finite=hyper.num_refused == refused,
        fixed_point_residual=hyper.fixed_point_residual,
        damping=jnp.asarray(self.options.get("damping", 0.0),
                            hyper.residual.dtype),
        polish_steps=jnp.asarray(0, jnp.int32),
        train_steps=jnp.asarray(iters * self.warm, jnp.int32))
    return state._replace(step=state.step + 1), record
