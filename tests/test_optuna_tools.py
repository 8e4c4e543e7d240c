"""Optuna's own tools read hippojax gradient studies: params, plots, dashboard.

Every call here is Optuna's (or optuna-dashboard's), on a study that a
gradient method recorded in a SQLite file.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import matplotlib
import numpy as np
import optuna
import pytest

import hippojax
from hippojax._src import trials as trials_lib

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def hoag_db(tmp_path_factory):
  """A 6-step hoag study of ridge-diabetes (10 hyperparameters) on SQLite."""
  path = tmp_path_factory.mktemp("tools") / "s.db"
  url = f"sqlite:///{path}"
  study = hippojax.create_study("hoag", storage=url, inner_steps=50,
                                outer_lr=0.5)
  study.optimize("ridge-diabetes", n_steps=6)
  return url, study


def test_best_params_and_best_trial_hold_every_element(hoag_db):
  url, study = hoag_db
  loaded = optuna.load_study(study_name="ridge-diabetes-hoag", storage=url)
  names = {f"ridge[{i}]" for i in range(10)}
  assert set(loaded.best_params) == names
  np.testing.assert_array_equal(
      [loaded.best_params[f"ridge[{i}]"] for i in range(10)],
      study.best_params["ridge"])
  assert loaded.best_value == study.best_value
  assert loaded.best_trial.distributions["ridge[3]"] == (
      optuna.distributions.FloatDistribution(1e-4, 10.0, log=True))
  # Trials last as long as their outer step and retraining took.
  for t in loaded.trials:
    assert t.duration is not None and t.duration.total_seconds() > 0


def test_optuna_cli_best_trial_lists_the_params(hoag_db):
  url, _ = hoag_db
  exe = os.path.join(os.path.dirname(sys.executable), "optuna")
  proc = subprocess.run([exe, "best-trial", "--study-name",
                         "ridge-diabetes-hoag", "--storage", url, "-f",
                         "json"], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  best = json.loads(proc.stdout)
  assert set(best["params"]) == {f"ridge[{i}]" for i in range(10)}


def test_param_importances_cover_the_array(hoag_db):
  url, _ = hoag_db
  loaded = optuna.load_study(study_name="ridge-diabetes-hoag", storage=url)
  importances = optuna.importance.get_param_importances(loaded)
  assert set(importances) == {f"ridge[{i}]" for i in range(10)}
  assert sum(importances.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("plot", [
    "plot_optimization_history", "plot_param_importances",
    "plot_parallel_coordinate", "plot_slice", "plot_contour",
    "plot_timeline", "plot_edf"])
def test_matplotlib_plots_are_not_empty(hoag_db, plot):
  url, _ = hoag_db
  loaded = optuna.load_study(study_name="ridge-diabetes-hoag", storage=url)
  kwargs = {"params": ["ridge[0]", "ridge[1]"]} if plot == "plot_contour" else {}
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "experimental" warnings
    axes = getattr(optuna.visualization.matplotlib, plot)(loaded, **kwargs)
  axes = np.asarray(axes).reshape(-1)
  drawn = sum(len(ax.lines) + len(ax.collections) + len(ax.patches) +
              len(ax.images) for ax in axes)
  assert drawn > 0, f"{plot} drew nothing"
  import matplotlib.pyplot as plt
  plt.close("all")


def test_mlp_digits_records_per_layer_decays_and_learning_rate():
  study = hippojax.create_study("hoag", storage=":memory:", inner_steps=20)
  study.optimize("mlp-digits", n_steps=2)
  trial = study.trials[-1]
  assert set(trial.params) == {"weight_decay[0]", "weight_decay[1]",
                               "learning_rate"}
  assert set(study.optuna_study.best_params) == set(trial.params)


def test_large_arrays_are_summarised_never_dropped(monkeypatch):
  monkeypatch.setattr(trials_lib, "MAX_ELEMENT_PARAMS", 5)
  study = hippojax.create_study("hoag", storage=":memory:", inner_steps=20)
  study.optimize("ridge-diabetes", n_steps=2)
  trial = study.trials[-1]
  assert set(trial.params) == {"ridge[min]", "ridge[median]", "ridge[max]"}
  assert trial.user_attrs["summarised"] == ["ridge"]
  full = hippojax.create_study("hoag", storage=":memory:", inner_steps=20)
  monkeypatch.setattr(trials_lib, "MAX_ELEMENT_PARAMS", 100)
  full.optimize("ridge-diabetes", n_steps=2)
  ridge = study.best_params["ridge"]
  np.testing.assert_array_equal(ridge, full.best_params["ridge"])
  assert trial.params["ridge[min]"] == ridge.min()
  assert trial.params["ridge[max]"] == ridge.max()


def test_bulk_insert_records_what_add_trial_records(tmp_path):
  """The fast SQL path stores exactly the trial Optuna's own path stores."""
  url = f"sqlite:///{tmp_path}/b.db"
  storage = hippojax._src.storage.open_storage(url).storage
  dist = optuna.distributions.FloatDistribution(1e-3, 10.0, log=True)
  params = {f"w[{i}]": float(1e-3 * 1.1 ** i) for i in range(50)}
  for name in ("bulk", "plain"):
    s = optuna.create_study(storage=storage, study_name=name)
    t = optuna.trial.create_trial(
        value=0.5, params=params, distributions={k: dist for k in params},
        user_attrs={"chain": 0, "step": 0})
    if name == "bulk":
      trials_lib.add_trial(s, storage, t)
    else:
      s.add_trial(t)
  bulk, plain = (optuna.load_study(study_name=n, storage=url).trials[0]
                 for n in ("bulk", "plain"))
  assert bulk.params == plain.params == params
  assert bulk.distributions == plain.distributions
  assert (bulk.value, bulk.state, bulk.user_attrs) == (
      plain.value, plain.state, plain.user_attrs)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _get(url: str, deadline: float):
  while True:
    try:
      with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())
    except OSError:
      if time.time() > deadline:
        raise
      time.sleep(0.3)


def test_optuna_dashboard_lists_the_params(hoag_db):
  pytest.importorskip("optuna_dashboard",
                      reason="optuna-dashboard is in the test extra")
  url, study = hoag_db
  exe = os.path.join(os.path.dirname(sys.executable), "optuna-dashboard")
  port = _free_port()
  server = subprocess.Popen([exe, url, "--host", "127.0.0.1", "--port",
                             str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  try:
    base = f"http://127.0.0.1:{port}/api/studies"
    studies = _get(base, time.time() + 120)["study_summaries"]
    (entry,) = [s for s in studies
                if s["study_name"] == "ridge-diabetes-hoag"]
    detail = _get(f"{base}/{entry['study_id']}", time.time() + 30)
    names = {p["name"] for p in detail["intersection_search_space"]}
    assert names == {f"ridge[{i}]" for i in range(10)}
    trials = detail["trials"]
    assert len(trials) == len(study.trials)
    assert {p["name"] for p in trials[0]["params"]} == names
    assert all(t["datetime_complete"] > t["datetime_start"] for t in trials)
  finally:
    server.terminate()
    server.wait(timeout=30)
