"""Optuna's pruners stop black-box trials; compare reports what they save."""

import json
import math
import os

import numpy as np
import optuna
import pytest

import hippojax
from hippojax._src import cli
from hippojax._src import pruning

FAST = {"inner_steps": 50}


def test_chunks_split_the_budget_exactly():
  assert pruning.chunks(50) == [5] * 10
  assert pruning.chunks(53) == [6, 6, 6, 5, 5, 5, 5, 5, 5, 5]
  assert pruning.chunks(3) == [1, 1, 1]
  for n in (1, 7, 10, 99, 3000):
    assert sum(pruning.chunks(n)) == n


def test_unknown_pruner_is_refused():
  with pytest.raises(ValueError, match="pruner must be one of none, median, "
                     "successive-halving, hyperband, got 'asha'"):
    hippojax.create_study("random", storage=":memory:", pruner="asha")
  with pytest.raises(ValueError, match="unknown option 'pruner' for method "
                     "'hoag'"):
    hippojax.create_study("hoag", storage=":memory:", pruner="median")


def test_median_pruner_stops_poor_trials():
  study = hippojax.create_study("random", storage=":memory:",
                                pruner="median", **FAST)
  study.optimize("ridge-diabetes", n_steps=14)
  state = optuna.trial.TrialState
  trials = study.trials
  pruned = [t for t in trials if t.state == state.PRUNED]
  complete = [t for t in trials if t.state == state.COMPLETE]
  assert pruned and len(complete) >= 5
  for t in pruned:
    assert t.user_attrs["pruned_by"] == "pruner"
    assert 0 < t.user_attrs["trained_steps"] < 50
    assert len(t.intermediate_values) * 5 == t.user_attrs["trained_steps"]
  # Training steps spent are counted as run, pruned trials included.
  spent = [t.user_attrs["inner_steps"] for t in trials]
  assert spent[-1] == sum(t.user_attrs["trained_steps"] for t in trials)
  # A complete trial, trained in chunks, has the one-shot training's loss.
  p = hippojax.problems.get("ridge-diabetes")
  t = complete[-1]
  h = {"ridge": np.asarray([t.params[f"ridge[{i}]"] for i in range(10)])}
  assert t.value == pytest.approx(p.validate(h, num_steps=50), rel=1e-5)
  assert study.best_trial.state == state.COMPLETE


@pytest.mark.parametrize("name", ["successive-halving", "hyperband"])
def test_other_pruners_run_and_can_prune(name):
  study = hippojax.create_study("tpe", storage=":memory:", pruner=name,
                                n_startup_trials=3, **FAST)
  study.optimize("ridge-diabetes", n_steps=12)
  states = {t.state for t in study.trials}
  assert optuna.trial.TrialState.COMPLETE in states
  assert optuna.trial.TrialState.PRUNED in states
  assert isinstance(study.optuna_study.pruner,
                    {"successive-halving":
                         optuna.pruners.SuccessiveHalvingPruner,
                     "hyperband": optuna.pruners.HyperbandPruner}[name])


def test_a_timeout_stops_a_long_trial_part_way():
  study = hippojax.create_study("random", storage=":memory:",
                                inner_steps=200_000)
  study.optimize("ridge-diabetes", timeout=1e-3)
  # The chain's first trial always finishes (its overrun is reported) ...
  (first,) = study.trials
  assert first.state == optuna.trial.TrialState.COMPLETE
  assert first.user_attrs["trained_steps"] == 200_000
  # ... later ones stop at the first chunk boundary after the timeout.
  study.optimize("ridge-diabetes", timeout=1e-3)
  last = study.trials[-1]
  assert last.state == optuna.trial.TrialState.PRUNED
  assert last.user_attrs["pruned_by"] == "timeout"
  assert last.user_attrs["trained_steps"] == 20_000


@pytest.mark.slow
def test_compare_with_a_pruner_reports_the_savings(tmp_path, monkeypatch,
                                                   capsys):
  monkeypatch.chdir(tmp_path)
  rc = cli.main(["compare", "--problem", "ridge-diabetes", "--methods",
                 "random", "--budget", "10", "--inner-steps", "50",
                 "--pruner", "median", "--out", "cmp", "--no-progress"])
  out, err = capsys.readouterr()
  assert rc == 0, err
  with open("cmp/results.json") as f:
    results = json.load(f)
  ms = results["problems"]["ridge-diabetes"]["methods"]
  assert set(ms) == {"random", "random+median"}
  pruned = ms["random+median"]
  assert pruned["pruner"] == "median" and pruned["n_pruned"] > 0
  assert pruned["pruning"]["steps_saved"] > 0
  assert pruned["pruning"]["seconds_saved"] > 0
  assert ms["random"]["n_pruned"] == 0
  text = open("cmp/report.md").read()
  assert "### Pruning" in text
  row = [l for l in text.splitlines() if l.startswith("| random+median | ")
         and " of " in l]
  assert len(row) == 1
  cells = [c.strip() for c in row[0].strip("|").split("|")]
  assert int(cells[2]) == pruned["pruning"]["steps_saved"]
  assert math.isclose(float(cells[4]), pruned["best_value"], rel_tol=1e-4)
  assert math.isclose(float(cells[5]), ms["random"]["best_value"],
                      rel_tol=1e-4)
  assert "random+median" in out
  assert os.path.exists("cmp/studies.db")
