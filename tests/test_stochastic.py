"""Single-loop stochastic solvers (SOBA, SABA, AmIGO) on a closed-form problem.

The loops below are the user-written single-loop training loops of the
docs: per minibatch, one SGD step on the weights (SABA: its variance-reduced
step), one transform update on fresh minibatches, one SGD step on ``λ``.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hippojax
from hippojax._src.stochastic import quadratic

jax.config.update("jax_enable_x64", True)

BATCH = 32


@functools.cache
def _problem():
  return quadratic.stochastic_quadratic(seed=0)


def _epochs(seed, n, steps, size):
  """Minibatch indices: shuffled epochs, distinct examples in each batch."""
  rng = np.random.default_rng(seed)
  per = n // size
  perms = [rng.permutation(n)[:per * size].reshape(per, size)
           for _ in range(-(-steps // per))]
  return jnp.asarray(np.concatenate(perms)[:steps])


def _run(tx, kind, steps, outer_lr=0.02, seed=1):
  """Runs the single-loop training loop; returns the averaged last half of
  the hyperparameter iterates, the last iterate and the final state."""
  prob = _problem()
  step = prob.train_step
  w = jnp.zeros(prob.params_star.shape)
  lam = jnp.zeros(prob.hparams_star.shape)
  state = tx.init(lam)

  def one(carry, idx):
    w, lam, state = carry
    ti, vi = idx
    tb = jax.tree.map(lambda a: a[ti], prob.train_data)
    vb = jax.tree.map(lambda a: a[vi], prob.val_data)
    # amigo: ti, vi index a stack of 4 fresh minibatches for its linear steps
    g, state = tx.update(None, state, lam, inner_params=w, train_batch=tb,
                         val_batch=vb, train_indices=ti, val_indices=vi)
    if kind == "saba":
      w = w + state.extra.inner_step
    else:
      w = step(w, lam, jax.tree.map(lambda a: a[0], tb) if kind == "amigo"
               else tb)
    lam = optax.apply_updates(lam, jax.tree.map(lambda x: -outer_lr * x, g))
    return (w, lam, state), lam

  m = 4 if kind == "amigo" else 1
  ti = _epochs(seed, 2000, steps * m, BATCH)
  vi = _epochs(seed + 1, 1000, steps * m, BATCH)
  if kind == "amigo":
    ti, vi = ti.reshape(steps, m, BATCH), vi.reshape(steps, m, BATCH)
  (w, lam, state), lams = jax.jit(lambda c, i: jax.lax.scan(one, c, i))(
      (w, lam, state), (ti, vi))
  return np.asarray(lams[steps // 2:].mean(0)), np.asarray(lam), state


def _cli_options(method, *flags):
  """The method options ``hippojax run --method METHOD FLAGS`` passes on."""
  from hippojax._src import cli
  args = cli.build_parser().parse_args(
      ["run", "--problem", "logreg-ijcnn1-like", "--method", method, *flags])
  return cli._method_options(args, method)  # pylint: disable=W0212


def _rel(a, b):
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_soba_reaches_the_optimal_hyperparameters():
  prob = _problem()
  tx = hippojax.hypergradient(prob.train_step, prob.val_loss, method="soba",
                              inner_params_like=jnp.zeros(5))
  avg, _, state = _run(tx, "soba", 4000)
  assert _rel(avg, prob.hparams_star) < 0.05
  assert int(state.count) == 4000 and int(state.num_refused) == 0


def test_saba_reaches_the_optimal_hyperparameters_exactly():
  prob = _problem()
  tx = hippojax.hypergradient(prob.train_step, prob.val_loss, method="saba",
                              inner_params_like=jnp.zeros(5), num_train=2000,
                              num_val=1000)
  avg, last, state = _run(tx, "saba", 4000)
  # Variance reduction: the last iterate itself converges, not only the mean.
  assert _rel(last, prob.hparams_star) < 0.01
  assert _rel(avg, prob.hparams_star) < 0.02
  assert float(state.residual) < 1e-3


def test_amigo_reaches_the_optimal_hyperparameters():
  prob = _problem()
  tx = hippojax.hypergradient(prob.train_step, prob.val_loss, method="amigo",
                              inner_params_like=jnp.zeros(5), linear_steps=4)
  avg, _, _ = _run(tx, "amigo", 4000)
  assert _rel(avg, prob.hparams_star) < 0.05


def _tiny(method, **kw):
  loss = lambda w, lam, b: 0.5 * jnp.sum((w - b) ** 2 + lam * w**2)
  step = hippojax.gradient_step(loss, 0.2)
  val = lambda w, lam, b: 0.5 * jnp.sum((w - 0.5) ** 2)
  return hippojax.hypergradient(step, val, method=method,
                               inner_params_like=jnp.zeros(2), **kw)


@pytest.mark.parametrize("method", ["soba", "amigo"])
def test_non_finite_hypergradient_is_refused_and_q_kept(method):
  tx = _tiny(method, **({"linear_steps": 1} if method == "amigo" else {}))
  state = tx.init(jnp.asarray(1.0))
  w, b = jnp.full(2, 0.4), jnp.ones(2)
  g, state = tx.update(None, state, jnp.asarray(1.0), inner_params=w,
                       train_batch=b, val_batch=None)
  q = state.warm_start
  assert float(jnp.abs(q).sum()) > 0
  g, state = tx.update(None, state, jnp.asarray(1.0),
                       inner_params=w.at[0].set(jnp.nan), train_batch=b,
                       val_batch=None)
  assert float(g) == 0.0 and int(state.num_refused) == 1
  np.testing.assert_array_equal(state.warm_start, q)


def test_update_compiles_once():
  tx = _tiny("soba")
  traces = []

  @jax.jit
  def step(state, lam, w, b):
    traces.append(1)
    return tx.update(None, state, lam, inner_params=w, train_batch=b)

  state = tx.init(jnp.asarray(1.0))
  for i in range(3):
    _, state = step(state, jnp.asarray(1.0 + i), jnp.full(2, 0.1 * i),
                    jnp.ones(2))
  assert len(traces) == 1


def test_errors_name_the_argument():
  with pytest.raises(TypeError, match="inner_params_like"):
    hippojax.hypergradient(lambda w, l, b: w, lambda w, l, b: 0.0,
                           method="soba")
  with pytest.raises(ValueError, match="linear_rate"):
    _tiny("soba", linear_rate=0.0)
  with pytest.raises(ValueError, match="linear_steps"):
    _tiny("amigo", linear_steps=0)
  with pytest.raises(TypeError, match="num_train"):
    _tiny("saba")
  tx = _tiny("soba")
  with pytest.raises(TypeError, match="inner_params"):
    tx.update(None, tx.init(jnp.asarray(1.0)), jnp.asarray(1.0))
  with pytest.raises(ValueError, match=r"inner_params has shape \(3,\)"):
    tx.update(None, tx.init(jnp.asarray(1.0)), jnp.asarray(1.0),
              inner_params=jnp.zeros(3), train_batch=jnp.ones(3))
  tx = _tiny("amigo", linear_steps=3)
  with pytest.raises(ValueError, match="stack of 3 minibatches"):
    tx.update(None, tx.init(jnp.asarray(1.0)), jnp.asarray(1.0),
              inner_params=jnp.zeros(2), train_batch=jnp.ones((2, 2)))


def test_saba_memory_is_measured_and_refused_when_too_large():
  like_w = jnp.zeros((10, 10))  # P = 100
  like_h = jnp.zeros(20)  # H = 20
  need = hippojax.saba_memory_bytes(like_w, like_h, 1000, 500)
  assert need == 8 * ((2 * 100 + 20) * 1001 + (100 + 20) * 501 + 100)
  prob = _problem()
  tx = hippojax.hypergradient(
      prob.train_step, prob.val_loss, method="saba", inner_params_like=like_w,
      num_train=1000, num_val=500, max_memory_bytes=need - 1)
  with pytest.raises(ValueError, match="saba's memories need"):
    tx.init(like_h)
  tx = hippojax.hypergradient(
      prob.train_step, prob.val_loss, method="saba", inner_params_like=like_w,
      num_train=1000, num_val=500, max_memory_bytes=need)
  state = tx.init(like_h)
  held = sum(x.nbytes for x in jax.tree.leaves(state.extra))
  assert held == need


# ---------------------------------------------------------------------------
# Minibatch implicit hypergradients.


def _rows(data, idx):
  return jax.tree.map(lambda a: a[idx], data)


def test_minibatch_hypergrad_on_the_whole_set_is_the_exact_one():
  prob = _problem()
  lam = jnp.asarray(prob.hparams_star) + 0.3
  exact = hippojax.implicit_hypergrad(
      prob.train_step, prob.val_loss, lam, jnp.asarray(prob.params_star),
      prob.train_data, prob.val_data, solver=hippojax.CG(tol=1e-12))
  stack = jax.tree.map(lambda a: a[None], prob.train_data)
  hg = hippojax.minibatch_hypergrad(
      prob.train_step, prob.val_loss, lam, jnp.asarray(prob.params_star),
      prob.train_data, prob.val_data, hessian_batches=stack, tol=1e-12)
  np.testing.assert_allclose(hg.grad, exact.grad, rtol=1e-9, atol=1e-12)
  assert float(hg.noise_floor) == 0.0  # K = 1: nothing to estimate it from


def test_noise_floor_stops_cg_early_and_reports_converged():
  prob = _problem()
  lam = jnp.asarray(prob.hparams_star) + 0.5
  w = jnp.asarray(prob.params_star)
  exact = hippojax.implicit_hypergrad(
      prob.train_step, prob.val_loss, lam, w, prob.train_data, prob.val_data,
      solver=hippojax.CG(tol=1e-12)).grad
  idx = jnp.asarray(_epochs(3, 2000, 8, 16))
  vidx = jnp.asarray(_epochs(4, 1000, 8, 16))
  hess = _rows(prob.train_data, idx)
  vals = _rows(prob.val_data, vidx)
  tb = _rows(prob.train_data, idx[0])
  kw = dict(hessian_batches=hess, stacked_val=True, tol=1e-10, maxiter=50)
  floor = hippojax.minibatch_hypergrad(prob.train_step, prob.val_loss, lam, w,
                                       tb, vals, **kw)
  plain = hippojax.minibatch_hypergrad(prob.train_step, prob.val_loss, lam, w,
                                       tb, vals, noise_floor=False, **kw)
  assert 0.01 < float(floor.noise_floor) < 1.0
  assert bool(floor.info.converged) and float(floor.tol) == pytest.approx(
      min(float(floor.noise_floor), 0.1))
  assert int(floor.info.num_iters) < int(plain.info.num_iters)
  # Stopping at the noise floor changes the answer by less than the
  # minibatch error that solving to 1e-10 leaves anyway.
  assert (np.linalg.norm(floor.grad - plain.grad) <
          np.linalg.norm(plain.grad - exact))


def test_minibatch_hypergrad_refuses_other_steps():
  with pytest.raises(ValueError, match="gradient_step"):
    hippojax.minibatch_hypergrad(lambda w, l, b: w, lambda w, l, b: 0.0,
                                 jnp.ones(1), jnp.ones(1), None, None)


def test_saga_memory_mean_stays_exact_with_repeated_examples():
  from hippojax._src.stochastic import saba as saba_lib
  # pylint: disable=protected-access
  table = saba_lib._table(jax.ShapeDtypeStruct((2,), jnp.float64), 5)
  rng = np.random.default_rng(0)
  for _ in range(6):
    idx = jnp.asarray(rng.integers(0, 5, 4))  # repeats on purpose
    new = jnp.asarray(rng.normal(size=(4, 2)))
    _, table = saba_lib._saga(table, idx, new, 5)
    np.testing.assert_allclose(table.mean, table.rows.mean(0), atol=1e-12)


# ---------------------------------------------------------------------------
# Minibatch problems, studies and the command line.


def test_minibatch_problem_samples_batches_and_trains():
  from hippojax import problems
  p = problems.get("logreg-ijcnn1-like")
  assert p.num_train == 25_000 and p.num_hparams == 22
  assert p.batch_size == 256 and p.val_batch_size == 256
  idx, (x, y) = p.sample(jax.random.key(0))
  assert idx.shape == (256,) and x.shape == (256, 22)
  np.testing.assert_array_equal(x, p.train_data[0][idx])
  full_idx, _ = p.sample(jax.random.key(0), "val")
  assert full_idx.shape == (256,)
  # Training is deterministic in the seed, and the seed moves the stream.
  w0 = p.train(p.space.default(), seed=0, num_steps=50)
  w1 = p.train(p.space.default(), seed=0, num_steps=50)
  w2 = p.train(p.space.default(), seed=1, num_steps=50)
  np.testing.assert_array_equal(w0["w"], w1["w"])
  assert not np.allclose(w0["w"], w2["w"])
  with pytest.raises(ValueError, match="batch_size"):
    dataclasses.replace(p, batch_size=0)


def test_single_loop_study_records_rounds_and_cli_accepts_methods(tmp_path):
  study = hippojax.create_study("soba", storage=":memory:", inner_steps=50,
                                damping=0.0)
  study.optimize("logreg-ijcnn1-like", n_steps=2)
  trials = study.chain_trials()
  assert len(trials) == 2
  assert all(np.isfinite(t.value) for t in trials)
  # Two rounds of 50 steps, each followed by a 50-step retrain from scratch.
  assert trials[1].user_attrs["inner_steps"] == 200
  with pytest.raises(ValueError, match="linear_steps"):
    hippojax.create_study("amigo", linear_steps=0)
  with pytest.raises(ValueError, match="unknown option 'linear_steps'"):
    hippojax.create_study("soba", linear_steps=3)
  assert _cli_options("amigo", "--linear-steps", "2", "--warm-steps",
                      "2") == {"linear_steps": 2, "warm_steps": 2}


def test_chain_rounds_report_the_mean_iterate_under_the_decayed_step():
  """One round of 6 iterations reports the mean of its 6 iterates of ``u``
  and continues from the last; its step decays as 1/sqrt(1 + t/tau). Six
  one-iteration rounds with the same tau (in iterations) walk the same
  path, so they give the iterates to average by hand."""
  from hippojax._src.stochastic import engine as engine_lib
  p = hippojax.problems.get("logreg-ijcnn1-like")
  common = {"outer_lr": 0.05, "linear_rate": 1.0, "damping": 0.0}
  long = engine_lib.SingleLoopEngine(
      p, "soba", {**common, "inner_steps": 6, "decay_rounds": 0.5,
                  "average": True})
  short = engine_lib.SingleLoopEngine(
      p, "soba", {**common, "inner_steps": 1, "decay_rounds": 3.0,
                  "average": False})
  state_long, rec = long.step(long.init(0))
  state, us = short.init(0), []
  for _ in range(6):
    state, rec_short = short.step(state)
    us.append(state.u)
    # Without averaging a round reports its last iterate.
    np.testing.assert_allclose(
        np.asarray(jax.tree.leaves(rec_short.hparams)[0]),
        np.asarray(jax.tree.leaves(p.space.constrain(state.u))[0]))
  for a, b in zip(jax.tree.leaves(state_long.u), jax.tree.leaves(state.u)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10)
  mean_u = jax.tree.map(lambda *x: sum(x) / len(x), *us)
  expected = p.space.constrain(mean_u)
  for a, b in zip(jax.tree.leaves(rec.hparams), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10)
  # The mean is not the last iterate (λ moved during the round).
  last = p.space.constrain(state.u)
  assert not np.allclose(np.asarray(jax.tree.leaves(rec.hparams)[0]),
                         np.asarray(jax.tree.leaves(last)[0]), rtol=1e-8)
  # The decayed step itself: eta / sqrt(1 + t / tau).
  sched = engine_lib.outer_schedule(0.1, 10.0)
  assert float(sched(30)) == pytest.approx(0.05)
  assert engine_lib.outer_schedule(0.1, 0.0) == 0.1


def test_single_loop_options_are_checked_and_reach_the_cli():
  with pytest.raises(ValueError, match="decay_rounds must be a number >= 0"):
    hippojax.create_study("soba", decay_rounds=-1)
  with pytest.raises(TypeError, match="average must be a bool"):
    hippojax.create_study("saba", average="yes")
  with pytest.raises(ValueError, match="unknown option 'decay_rounds'"):
    hippojax.create_study("hoag", decay_rounds=2)
  assert _cli_options("soba", "--decay-rounds", "0", "--last-iterate") == {
      "decay_rounds": 0.0, "average": False}
  assert _cli_options("hoag", "--last-iterate") == {}


def test_maid_study_counts_the_steps_it_really_trained_across_a_resume(
    tmp_path):
  """A MAID chain's trials charge each step's train-to-ε solves (variable)
  plus one retrain from scratch of ``inner_steps``; a second optimize call
  on the same storage continues the count."""
  url = f"sqlite:///{tmp_path / 'maid.db'}"
  study = hippojax.create_study("maid", storage=url, inner_steps=300)
  study.optimize("logreg-ijcnn1-like", n_steps=2)
  study = hippojax.load_study(url, study.study_name)
  study.optimize("logreg-ijcnn1-like", n_steps=4)
  trials = study.chain_trials()
  assert [t.user_attrs["step"] for t in trials] == [0, 1, 2, 3]
  trained = np.cumsum([t.user_attrs["train_steps"] for t in trials])
  spent = [t.user_attrs["inner_steps"] for t in trials]
  assert spent == [int(trained[k]) + 300 * (k + 1) for k in range(4)]
  # The first solve trains from scratch to eps = 1e-3: it takes steps.
  assert trials[0].user_attrs["train_steps"] > 0
  # The line search moved λ and the retrained validation loss fell.
  assert trials[-1].value < trials[0].value
  assert all(t.user_attrs["hypergrad_finite"] for t in trials)
  with pytest.raises(ValueError, match="maid option eps must be > 0"):
    hippojax.create_study("maid", eps=0.0)
  with pytest.raises(ValueError, match="unknown option 'outer_lr'"):
    hippojax.create_study("maid", outer_lr=0.1)
  assert _cli_options("maid", "--eps", "1e-4", "--max-backtracks", "3",
                      "--maxiter", "20") == {
                          "eps": 1e-4, "max_backtracks": 3, "maxiter": 20}


def test_maid_step_is_one_compiled_step_of_the_loop():
  """maid() is a loop of maid_step: the same steps, jitted by hand, give
  the same hyperparameters."""
  from hippojax._src.stochastic import maid as maid_lib
  prob = _problem()
  lam0, w0 = jnp.zeros(3), jnp.zeros(5)
  res = hippojax.maid(prob.train_step, prob.val_loss, lam0, w0,
                      prob.train_data, prob.val_data, num_steps=5)
  state = maid_lib.maid_init(lam0, w0)
  step = jax.jit(lambda s: maid_lib.maid_step(
      prob.train_step, prob.val_loss, s, prob.train_data, prob.val_data))
  for k in range(5):
    state, info = step(state)
    assert bool(info.accepted) == res.history[k]["accepted"]
    assert int(info.inner_steps) == res.history[k]["inner_steps"]
  np.testing.assert_allclose(np.asarray(state.hparams),
                             np.asarray(res.hparams), rtol=1e-12)


def test_maid_reaches_the_optimal_hyperparameters():
  prob = _problem()
  res = hippojax.maid(prob.train_step, prob.val_loss, jnp.zeros(3),
                      jnp.zeros(5), prob.train_data, prob.val_data,
                      num_steps=40, eps=1e-2, delta=1e-2)
  assert _rel(np.asarray(res.hparams), prob.hparams_star) < 0.01
  assert any(h["accepted"] for h in res.history)
  with pytest.raises(ValueError, match="gradient_step"):
    hippojax.maid(lambda w, l, b: w, prob.val_loss, jnp.zeros(3),
                  jnp.zeros(5), None, None)
