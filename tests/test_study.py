"""Studies: options, trials recorded per method, resuming rules, results."""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import optuna
import pytest

import hippojax
from hippojax import problems
from hippojax._src.space import SearchSpace

FAST = {"inner_steps": 50}


def _ridge():
  return problems.get("ridge-diabetes")


def test_unknown_method_and_options_are_refused():
  with pytest.raises(ValueError, match="unknown method 'bohb'; choose one of "
                     "t1t2, ift, hoag, drmad, reverse, soba, saba, amigo, "
                     "maid, random, tpe"):
    hippojax.create_study("bohb", storage=":memory:")
  with pytest.raises(ValueError, match="unknown option 'tol' for method "
                     "'ift'; its options are inner_steps, num_iters, "
                     "outer_lr"):
    hippojax.create_study("ift", storage=":memory:", tol=1e-3)
  with pytest.raises(ValueError, match="num_iters must be >= 0"):
    hippojax.create_study("ift", storage=":memory:", num_iters=-1)
  with pytest.raises(TypeError, match="inner_steps must be an int"):
    hippojax.create_study("random", storage=":memory:", inner_steps=1.5)
  with pytest.raises(ValueError, match="outer_lr must be > 0"):
    hippojax.create_study("hoag", storage=":memory:", outer_lr=0.0)
  with pytest.raises(ValueError, match="seed must be >= 0"):
    hippojax.create_study("hoag", storage=":memory:", seed=-1)
  with pytest.raises(ValueError, match="checkpoint_every must be an int"):
    hippojax.create_study("hoag", storage=":memory:", checkpoint_every=0)
  study = hippojax.create_study("hoag", storage=":memory:")
  with pytest.raises(ValueError, match="pass n_steps, timeout, or both"):
    study.optimize("ridge-diabetes")
  with pytest.raises(ValueError, match="unknown problem"):
    study.optimize("ridge-boston", n_steps=1)
  with pytest.raises(RuntimeError, match="no name yet"):
    _ = study.trials


def test_hoag_records_one_complete_trial_per_outer_step():
  study = hippojax.create_study("hoag", storage=":memory:", **FAST)
  study.optimize("ridge-diabetes", n_steps=6)
  assert study.study_name == "ridge-diabetes-hoag"
  trials = study.trials
  assert len(trials) == 6
  assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
  attrs = trials[-1].user_attrs
  assert attrs["chain"] == 0 and attrs["step"] == 5
  # Each outer step trains 50 warm-started steps (and polishes the weights
  # into a fixed point), then retrains from scratch.
  assert attrs["inner_steps"] == 2 * 6 * 50 + sum(
      t.user_attrs["polish_steps"] for t in trials)
  assert attrs["method"] == "hoag"
  assert attrs["solver_iters"] >= 1 and attrs["hypergrad_norm"] > 0
  assert attrs["solver_converged"] in (True, False)
  walls = [t.user_attrs["wall_seconds"] for t in trials]
  assert walls == sorted(walls) and walls[0] > 0
  assert all(t.duration.total_seconds() > 0 for t in trials)
  assert set(trials[-1].params) == {f"ridge[{i}]" for i in range(10)}
  ridge = np.asarray([trials[-1].params[f"ridge[{i}]"] for i in range(10)])
  assert np.all((ridge >= 1e-4) & (ridge <= 10.0))
  # The value is the loss retrained from scratch at the trial's
  # hyperparameters; the warm-started loss is kept beside it.
  assert trials[-1].value == pytest.approx(
      _ridge().validate({"ridge": ridge}, num_steps=50), rel=1e-6)
  assert attrs["warm_val_loss"] != trials[-1].value
  # The first trial is at the default hyperparameters; the study improves.
  np.testing.assert_allclose(
      [trials[0].params[f"ridge[{i}]"] for i in range(10)],
      np.full(10, math.sqrt(1e-4 * 10.0)), rtol=1e-5)
  assert study.best_value < trials[0].value
  assert study.best_value == min(t.value for t in trials)
  best = study.best_params
  assert set(best) == {"ridge"} and best["ridge"].shape == (10,)
  ev = study.evaluate_best()
  assert ev["val_loss"] == pytest.approx(_ridge().validate(best, num_steps=50))


@pytest.mark.parametrize("method", ["t1t2", "ift", "drmad", "reverse"])
def test_every_gradient_method_improves_on_ridge(method):
  options = dict(FAST)
  if method in ("drmad", "reverse"):
    options["unroll_steps"] = 20
  study = hippojax.create_study(method, storage=":memory:", **options)
  study.optimize("ridge-diabetes", n_steps=8)
  values = [t.value for t in study.trials]
  assert len(values) == 8 and min(values[1:]) < values[0]
  assert all(t.user_attrs["hypergrad_finite"] for t in study.trials)


@pytest.mark.parametrize("method", ["random", "tpe"])
def test_blackbox_trials_are_full_trainings_with_flat_params(method):
  study = hippojax.create_study(method, storage=":memory:", **FAST)
  study.optimize("ridge-diabetes", n_steps=4)
  trials = study.trials
  assert len(trials) == 4
  assert set(trials[0].params) == {f"ridge[{i}]" for i in range(10)}
  assert [t.user_attrs["inner_steps"] for t in trials] == [50, 100, 150, 200]
  best = study.best_params["ridge"]
  assert best.shape == (10,)
  assert study.best_value == pytest.approx(
      _ridge().validate({"ridge": best}, num_steps=50), rel=1e-6)


def test_polishing_steps_count_as_training():
  options = dict(FAST, inner_steps=10)  # too few: the weights need polish
  study = hippojax.create_study("hoag", storage=":memory:", **options)
  study.optimize("ridge-diabetes", n_steps=2)
  study.optimize("ridge-diabetes", n_steps=4)  # continued: the sum carries on
  trials = sorted(study.trials, key=lambda t: t.user_attrs["step"])
  polished = [t.user_attrs["polish_steps"] for t in trials]
  assert all(0 <= k <= 5 for k in polished) and sum(polished) > 0
  assert [t.user_attrs["inner_steps"] for t in trials] == [
      2 * (s + 1) * 10 + sum(polished[:s + 1]) for s in range(4)]


def test_scalar_hyperparameters_are_optuna_params():
  study = hippojax.create_study("hoag", storage=":memory:", **FAST)
  study.optimize("ridge-diabetes-scalar", n_steps=3)
  trial = study.trials[0]
  assert set(trial.params) == {"ridge"}
  assert trial.distributions["ridge"] == optuna.distributions.FloatDistribution(
      1e-4, 10.0, log=True)
  assert "hparams" not in trial.user_attrs
  assert isinstance(study.best_params["ridge"], float)


def test_n_steps_counts_the_chain_and_continues_it():
  study = hippojax.create_study("hoag", storage=":memory:", **FAST)
  study.optimize("ridge-diabetes", n_steps=3)
  study.optimize("ridge-diabetes", n_steps=5)
  study.optimize("ridge-diabetes", n_steps=5)  # already there: nothing to do
  once = hippojax.create_study("hoag", storage=":memory:", **FAST)
  once.optimize("ridge-diabetes", n_steps=5)
  assert [t.user_attrs["step"] for t in study.trials] == [0, 1, 2, 3, 4]
  assert [t.value for t in study.trials] == [t.value for t in once.trials]


def test_timeout_stops_the_chain():
  study = hippojax.create_study("random", storage=":memory:", **FAST)
  study.optimize("ridge-diabetes", timeout=0.5)
  walls = [t.user_attrs["wall_seconds"] for t in study.trials]
  assert len(walls) >= 1
  # Every trial but the last was started, and ended, before the timeout
  # (however slow the machine): no trial starts after it.
  assert all(w < 0.5 for w in walls[:-1])
  assert walls == sorted(walls)


def test_seeds_are_chains_of_one_study(tmp_path):
  storage = f"sqlite:///{tmp_path}/s.db"
  for seed in (0, 1):
    s = hippojax.create_study("random", storage=storage, study_name="multi",
                              seed=seed, **FAST)
    s.optimize("ridge-diabetes", n_steps=3)
  chains = sorted((t.user_attrs["chain"], t.user_attrs["step"])
                  for t in s.trials)
  assert chains == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
  # Different seeds sample different points.
  p0 = s.chain_trials(0)[0].params
  p1 = s.chain_trials(1)[0].params
  assert p0 != p1


def test_resuming_with_another_method_problem_space_or_options_is_refused(
    tmp_path):
  storage = f"sqlite:///{tmp_path}/s.db"
  s = hippojax.create_study("hoag", storage=storage, study_name="x", **FAST)
  s.optimize("ridge-diabetes", n_steps=2)
  with pytest.raises(ValueError, match="was run with method 'hoag'; refusing "
                     "to resume it with method 'tpe'"):
    hippojax.create_study("tpe", storage=storage, study_name="x")
  with pytest.raises(ValueError, match="refusing to resume"):
    hippojax.create_study("hoag", storage=storage, study_name="x",
                          **FAST).optimize("logreg-breast-cancer", n_steps=3)
  with pytest.raises(ValueError, match="method options"):
    hippojax.create_study("hoag", storage=storage, study_name="x",
                          inner_steps=60).optimize("ridge-diabetes",
                                                   n_steps=3)
  other_space = dataclasses.replace(
      _ridge(), space=SearchSpace((hippojax.suggest_float(
          "ridge", 1e-3, 1.0, log=True, shape=(10,)),)))
  with pytest.raises(ValueError, match="search space"):
    hippojax.create_study("hoag", storage=storage, study_name="x",
                          **FAST).optimize(other_space, n_steps=3)
  with pytest.raises(ValueError, match="already exists"):
    hippojax.create_study("hoag", storage=storage, study_name="x",
                          load_if_exists=False)
  # The refused attempts added nothing.
  assert len(s.trials) == 2


def test_non_finite_training_is_recorded_as_failed_and_survived():
  p = _ridge()
  exploding = dataclasses.replace(
      p, train_step=hippojax.gradient_step(p.train_step.loss, 1e6))
  study = hippojax.create_study("hoag", storage=":memory:", **FAST)
  study.optimize(exploding, n_steps=3)
  states = [t.state for t in study.trials]
  assert states == [optuna.trial.TrialState.FAIL] * 3
  assert not study.trials[0].user_attrs["hypergrad_finite"]
  blackbox = hippojax.create_study("random", storage=":memory:", **FAST)
  blackbox.optimize(exploding, n_steps=2)
  assert [t.state for t in blackbox.trials] == [
      optuna.trial.TrialState.FAIL] * 2


def test_dtype_is_part_of_the_recorded_options():
  study = hippojax.create_study("t1t2", storage=":memory:", **FAST)
  study.optimize("ridge-diabetes", n_steps=1)
  options = study.optuna_study.user_attrs["hippojax.options"]
  assert options["dtype"] == np.dtype(jnp.zeros(()).dtype).name
  assert options["inner_steps"] == 50 and options["outer_lr"] == 0.2
