"""Reports: every chain counted, foreign trials left out, honest headline."""

import json
import os

import numpy as np
import optuna
import pytest

import hippojax
from hippojax._src import report

FAST = {"inner_steps": 50}


@pytest.fixture(scope="module")
def three_workers(tmp_path_factory):
  """A hoag study of ridge-diabetes run by three workers (seeds 0, 1, 2)."""
  url = f"sqlite:///{tmp_path_factory.mktemp('workers')}/w.db"
  for seed in (0, 1, 2):
    s = hippojax.create_study("hoag", storage=url, study_name="shared",
                              seed=seed, outer_lr=0.5, **FAST)
    s.optimize("ridge-diabetes", n_steps=4)
  return url


def test_report_counts_every_chain_and_finds_the_study_best(three_workers):
  study = hippojax.load_study(three_workers, "shared")
  results = report.build([study])
  m = results["problems"]["ridge-diabetes"]["methods"]["hoag"]
  assert m["n_trials"] == 12
  assert set(m["chains"]) == {"0", "1", "2"}
  assert [c["n_trials"] for c in m["chains"].values()] == [4, 4, 4]
  loaded = optuna.load_study(study_name="shared", storage=three_workers)
  assert m["best_value"] == loaded.best_value
  best = loaded.best_trial
  assert (m["best_chain"], m["best_step"]) == (best.user_attrs["chain"],
                                               best.user_attrs["step"])
  for seed, c in m["chains"].items():
    mine = [t.value for t in loaded.trials
            if t.user_attrs["chain"] == int(seed)]
    assert c["best_value"] == min(mine)
  # The best trial's value is its hyperparameters retrained from scratch.
  p = hippojax.problems.get("ridge-diabetes")
  h = {"ridge": np.asarray([best.params[f"ridge[{i}]"] for i in range(10)])}
  assert m["best_value"] == pytest.approx(
      p.validate(h, seed=best.user_attrs["chain"], num_steps=50), rel=1e-6)
  assert m["warm_val_loss"] == best.user_attrs["warm_val_loss"]


def test_gradient_chains_of_different_seeds_differ(three_workers):
  loaded = optuna.load_study(study_name="shared", storage=three_workers)
  firsts = {}
  for t in loaded.trials:
    if t.user_attrs["step"] == 0:
      firsts[t.user_attrs["chain"]] = [t.params[f"ridge[{i}]"]
                                       for i in range(10)]
  assert len(firsts) == 3
  assert firsts[0] != firsts[1] != firsts[2] != firsts[0]
  # Seed 0 starts at the declared default (the log-midpoint).
  np.testing.assert_allclose(firsts[0], np.full(10, np.sqrt(1e-4 * 10.0)),
                             rtol=1e-5)
  values = {}
  for t in loaded.trials:
    values.setdefault(t.user_attrs["chain"], []).append(t.value)
  assert values[0] != values[1] != values[2]


def test_foreign_trials_are_left_out_and_counted(tmp_path):
  url = f"sqlite:///{tmp_path}/f.db"
  study = hippojax.create_study("random", storage=url, **FAST)
  study.optimize("ridge-diabetes", n_steps=3)
  dist = optuna.distributions.FloatDistribution(1e-4, 10.0, log=True)
  study.optuna_study.add_trial(optuna.trial.create_trial(
      value=0.0, params={f"ridge[{i}]": 1.0 for i in range(10)},
      distributions={f"ridge[{i}]": dist for i in range(10)}))
  results = report.build([hippojax.load_study(url, "ridge-diabetes-random")])
  m = results["problems"]["ridge-diabetes"]["methods"]["random"]
  assert m["n_foreign"] == 1 and m["n_trials"] == 3
  assert m["best_value"] > 0.0
  assert len(m["chains"]["0"]["series"]["value"]) == 3
  paths = report.write(results, str(tmp_path / "out"))
  text = open(tmp_path / "out" / "report.md").read()
  assert "1 trials not recorded by hippojax" in text
  assert all(os.path.getsize(p) > 0 for p in paths)


def test_wall_seconds_never_go_backwards_across_resumes(tmp_path):
  url = f"sqlite:///{tmp_path}/r.db"
  for n in (2, 4):
    s = hippojax.create_study("hoag", storage=url, study_name="r", **FAST)
    s.optimize("ridge-diabetes", n_steps=n)
  walls = [t.user_attrs["wall_seconds"] for t in s.chain_trials(0)]
  assert len(walls) == 4 and walls == sorted(walls)


def test_equal_budget_rows_and_ranking(tmp_path):
  url = f"sqlite:///{tmp_path}/e.db"
  for method in ("hoag", "random"):
    s = hippojax.create_study(method, storage=url, **FAST)
    s.optimize("ridge-diabetes", n_steps=4)
  studies = [hippojax.load_study(url, n)
             for n in ("ridge-diabetes-hoag", "ridge-diabetes-random")]
  results = report.build(studies, budget_seconds=1e-3)
  g = results["problems"]["ridge-diabetes"]
  ms = g["methods"]
  assert g["ranking"] == sorted(ms, key=lambda k: ms[k]["best_value"])
  # Equal inner steps: hoag spends 2 x 50 per outer step, random 50 a trial.
  assert g["equal_inner_steps"] == 200
  for m in ms.values():
    row = m["at_equal_steps"]
    eligible = [v for v, s in zip(m["chains"]["0"]["series"]["value"],
                                  m["chains"]["0"]["series"]["inner_steps"])
                if s <= 200]
    assert row["best_value"] == min(eligible)
    assert row["test_metric"] is not None
    assert m["overrun_seconds"] > 0  # a 1 ms budget: every method overran
  text = report.markdown(results, {})
  assert "over its budget" in text
  table = report.table(results)
  assert table.splitlines()[0].startswith(
      "| rank | method | val loss (retrained) | test MSE")


def test_multi_problem_reports_have_one_figure_set_per_problem(tmp_path):
  url = f"sqlite:///{tmp_path}/m.db"
  a = hippojax.create_study("random", storage=url, **FAST)
  a.optimize("ridge-diabetes", n_steps=2)
  b = hippojax.create_study("random", storage=url, inner_steps=20)
  b.optimize("mlp-digits", n_steps=1)  # one trial: dots, not empty panels
  results = report.build([a, b])
  out = tmp_path / "out"
  report.write(results, str(out))
  for problem in ("ridge-diabetes", "mlp-digits"):
    for f in ("val_loss_vs_wall.png", "val_loss_vs_inner_steps.png",
              "hparams.png"):
      assert (out / problem / f).stat().st_size > 5000
  text = (out / "report.md").read_text()
  assert "## ridge-diabetes" in text and "## mlp-digits" in text
  assert "| test accuracy |" in text and "| test MSE (standardised" in text
  with open(out / "results.json") as f:
    saved = json.load(f)
  assert saved["schema"] == "hippojax.report/2"
  assert set(saved["problems"]) == {"ridge-diabetes", "mlp-digits"}


@pytest.mark.slow
def test_report_of_three_worker_processes_counts_every_trial(tmp_path):
  """Three `hippojax run` processes, started together on one study, then
  `hippojax report`."""
  import subprocess
  import sys
  exe = os.path.join(os.path.dirname(sys.executable), "hippojax")
  db = str(tmp_path / "w.db")
  procs = [subprocess.Popen(
      [exe, "run", "--problem", "ridge-diabetes", "--method", "tpe",
       "--n-startup-trials", "2", "--steps", "4", "--inner-steps", "50",
       "--storage", db, "--study", "w", "--seed", str(seed), "--no-progress"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      cwd=tmp_path) for seed in (0, 1, 2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
  rep = subprocess.run([exe, "report", "--storage", db, "--out", "rep",
                        "--no-progress"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=600)
  assert rep.returncode == 0, rep.stderr
  with open(tmp_path / "rep" / "results.json") as f:
    m = json.load(f)["problems"]["ridge-diabetes"]["methods"]["tpe"]
  loaded = optuna.load_study(study_name="w", storage=f"sqlite:///{db}")
  assert m["n_trials"] == len(loaded.trials) == 12
  assert sorted(m["chains"]) == ["0", "1", "2"]
  assert m["best_value"] == loaded.best_value
  assert m["best_chain"] == loaded.best_trial.user_attrs["chain"]
  text = (tmp_path / "rep" / "report.md").read_text()
  assert "ran 3 chains; best per chain seed 0:" in text


def test_every_method_has_its_own_colour():
  from hippojax._src import plots
  from hippojax._src.study import METHODS
  colours = {plots.colour(m) for m in METHODS}
  assert len(colours) == len(METHODS)
  # A pruned variant shares its method's hue but not its colour.
  assert plots.colour("tpe+median") != plots.colour("tpe")
