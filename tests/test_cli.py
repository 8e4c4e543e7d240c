"""The ``hippojax`` command line: problems, run, compare, report, demo."""

import json
import os
import subprocess
import sys

import pytest

from hippojax._src import cli


def _main(argv, capsys):
  try:
    rc = cli.main(argv)
  except SystemExit as e:  # argparse errors
    rc = e.code
  out, err = capsys.readouterr()
  return rc, out, err


def test_problems_lists_one_line_each(capsys):
  rc, out, _ = _main(["problems"], capsys)
  assert rc == 0
  lines = out.strip().splitlines()
  assert [l.split()[0] for l in lines] == [
      "ridge-diabetes", "logreg-breast-cancer", "mlp-digits",
      "hyper-cleaning-digits", "mlp-mnist1d", "mlp-mnist1d-10k",
      "hyper-cleaning-mnist1d", "logreg-ijcnn1-like"]


@pytest.mark.parametrize("argv, expected", [
    (["run", "--problem", "nope", "--method", "hoag", "--steps", "1"],
     "invalid choice: 'nope' (choose from 'ridge-diabetes'"),
    (["run", "--problem", "ridge-diabetes", "--method", "sgd", "--steps",
      "1"], "invalid choice: 'sgd' (choose from 't1t2', 'ift', 'hoag'"),
    (["compare", "--methods", "hoag,bayes", "--budget", "1"],
     "unknown method(s) bayes; choose from t1t2, ift, hoag, drmad, reverse, "
     "soba, saba, amigo, random, tpe"),
    (["compare", "--problem", "mnist", "--budget", "1"],
     "invalid choice: 'mnist'"),
    (["run", "--problem", "ridge-diabetes", "--method", "ift", "--steps",
      "1", "--tol", "1e-3"], "--tol is not an option of ift; it applies to "
     "hoag"),
    (["run", "--problem", "ridge-diabetes", "--method", "hoag"],
     "run needs --steps, --timeout or both"),
])
def test_bad_input_exits_nonzero_listing_choices(argv, expected, capsys,
                                                 tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  rc, _, err = _main(argv, capsys)
  assert rc == 2
  assert expected in err
  assert "Traceback" not in err
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv", [
    ["run", "--problem", "ridge-diabetes", "--method", "hoag", "--steps", "1",
     "--storage", "sqlite:////nonexistent-dir/x.db"],
    ["run", "--problem", "ridge-diabetes", "--method", "hoag", "--steps", "1",
     "--storage", "postgresql://user@127.0.0.1:1/db"],
    ["compare", "--budget", "1", "--out", "out",
     "--storage", "sqlite:////nonexistent-dir/x.db"],
    ["report", "--storage", "sqlite:///missing.db", "--out", "out"],
])
def test_unreachable_storage_is_a_clear_error_and_writes_nothing(
    argv, capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  rc, _, err = _main(argv, capsys)
  assert rc == 1
  assert err.startswith("hippojax: error: cannot open storage")
  assert "Traceback" not in err
  assert os.listdir(tmp_path) == []


def test_run_resumes_and_refuses_another_method(capsys, tmp_path,
                                                monkeypatch):
  monkeypatch.chdir(tmp_path)
  argv = ["run", "--problem", "ridge-diabetes", "--method", "hoag",
          "--inner-steps", "50", "--no-progress"]
  rc, out, err = _main(argv + ["--steps", "3"], capsys)
  assert rc == 0, err
  assert "3 trials in this chain" in out
  assert "best hyperparameters:" in out and "ridge = [" in out
  assert os.path.exists("hippojax.db")
  rc, out, _ = _main(argv + ["--steps", "5"], capsys)
  assert "5 trials in this chain" in out
  rc, _, err = _main(["run", "--problem", "ridge-diabetes", "--method", "tpe",
                      "--study", "ridge-diabetes-hoag", "--steps", "2"],
                     capsys)
  assert rc == 1
  assert "refusing to resume it with method 'tpe'" in err


def test_console_script_runs_with_a_progress_bar(tmp_path):
  exe = os.path.join(os.path.dirname(sys.executable), "hippojax")
  proc = subprocess.run(
      [exe, "run", "--problem", "ridge-diabetes-scalar", "--method", "random",
       "--steps", "3", "--inner-steps", "50", "--storage",
       str(tmp_path / "j.log")],
      capture_output=True, text=True, cwd=tmp_path, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert "val_loss=" in proc.stderr  # tqdm postfix
  assert "ridge = " in proc.stdout
  assert (tmp_path / "j.log").exists()


@pytest.mark.slow
def test_compare_and_report_write_the_report(capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  rc, out, err = _main(["compare", "--problem", "ridge-diabetes", "--methods",
                        "hoag,random", "--budget", "2", "--inner-steps", "50",
                        "--out", "cmp", "--no-progress"], capsys)
  assert rc == 0, err
  assert "| method | trials | best val loss |" in out
  files = set(os.listdir("cmp"))
  assert {"report.md", "results.json", "val_loss_vs_wall.png",
          "val_loss_vs_inner_steps.png", "hparams.png",
          "studies.db"} <= files
  with open("cmp/results.json") as f:
    results = json.load(f)
  assert results["schema"] == "hippojax.report/1"
  assert results["budget_seconds"] == 2.0
  assert set(results["methods"]) == {"hoag", "random"}
  for m in results["methods"].values():
    assert m["n_trials"] >= 1 and m["wall_seconds"] > 0
    assert m["inner_steps"] == 50 * m["n_trials"]
    assert len(m["series"]["val_loss"]) == m["n_trials"]
    assert m["best_val_loss"] == min(m["series"]["val_loss"])
    assert 0 < m["test_metric"] < 10
    assert len(m["hparams"]["ridge"]["values"][0]) == 10
  report = open("cmp/report.md").read()
  assert "![validation loss vs wall-clock](val_loss_vs_wall.png)" in report
  assert "same wall-clock budget of 2 s" in report
  # Running compare again starts fresh studies.
  rc, _, err = _main(["compare", "--problem", "ridge-diabetes", "--methods",
                      "random", "--budget", "1", "--inner-steps", "50",
                      "--out", "cmp", "--no-progress"], capsys)
  assert rc == 0, err
  # report reads every hippojax study back from storage.
  rc, out, err = _main(["report", "--storage", "cmp/studies.db", "--out",
                        "rep"], capsys)
  assert rc == 0, err
  with open("rep/results.json") as f:
    again = json.load(f)
  assert set(again["methods"]) == {"hoag", "random"}
  assert (again["methods"]["hoag"]["series"] ==
          results["methods"]["hoag"]["series"])
  assert os.path.exists("rep/hparams.png")
  rc, _, err = _main(["report", "--storage", "cmp/studies.db", "--study",
                      "nope", "--out", "rep2"], capsys)
  assert rc == 1 and "no study named 'nope'" in err
  assert not os.path.exists("rep2")


@pytest.mark.slow
def test_demo_still_works(capsys):
  rc, out, _ = _main(["demo", "--steps", "2", "--inner-steps", "20"], capsys)
  assert rc == 0
  assert "validation loss" in out and "ridge strengths" in out
