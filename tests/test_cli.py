"""The ``hippojax`` command line: problems, run, compare, report, demo."""

import json
import os
import subprocess
import sys

import optuna
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
      "hyper-cleaning-mnist1d", "logreg-ijcnn1-like", "variants",
      "ridge-diabetes-scalar", "logreg-digits"]


def test_version_and_help(capsys):
  import hippojax
  rc, out, _ = _main(["--version"], capsys)
  assert rc == 0 and out.strip() == f"hippojax {hippojax.__version__}"
  for command in ("run", "compare", "report", "demo"):
    rc, out, _ = _main([command, "--help"], capsys)
    assert rc == 0
    if command != "report":
      assert out.count("default") >= 3, out
  rc, out, _ = _main(["report", "--help"], capsys)
  assert "retrained from scratch" in out


def _one_line(err: str) -> None:
  assert "Traceback" not in err
  assert len(err.strip().splitlines()) == 1, err


RUN = ["run", "--problem", "ridge-diabetes", "--method", "hoag"]


@pytest.mark.parametrize("argv, expected", [
    (["run", "--problem", "nope", "--method", "hoag", "--steps", "1"],
     "invalid choice: 'nope' (choose from 'ridge-diabetes'"),
    (["run", "--problem", "ridge-diabetes", "--method", "sgd", "--steps",
      "1"], "invalid choice: 'sgd' (choose from 't1t2', 'ift', 'hoag'"),
    (["compare", "--methods", "hoag,bayes", "--budget", "1"],
     "unknown method(s) bayes; choose from t1t2, ift, hoag, drmad, reverse, "
     "soba, saba, amigo, maid, random, tpe"),
    (["compare", "--problem", "mnist", "--budget", "1"],
     "invalid choice: 'mnist'"),
    (["run", "--problem", "ridge-diabetes", "--method", "ift", "--steps",
      "1", "--tol", "1e-3"], "--tol is not an option of ift; it applies to "
     "hoag"),
    (RUN, "run needs --steps, --timeout or both"),
    (RUN + ["--steps", "0"], "argument --steps: must be an int >= 1, got "
     "'0'"),
    (RUN + ["--steps", "-3"], "argument --steps: must be an int >= 1"),
    (RUN + ["--steps", "two"], "argument --steps: must be an int >= 1"),
    (RUN + ["--timeout", "0"], "argument --timeout: must be a finite number "
     "of seconds > 0, got '0'"),
    (RUN + ["--timeout", "inf"], "argument --timeout: must be a finite"),
    (RUN + ["--steps", "1", "--seed", "-1"], "argument --seed: must be an "
     "int >= 0"),
    (RUN + ["--steps", "1", "--inner-steps", "0"], "argument --inner-steps: "
     "must be an int >= 1"),
    (RUN + ["--steps", "1", "--tol", "0"], "argument --tol: must be a "
     "number > 0"),
    (RUN + ["--steps", "1", "--checkpoint-every", "0"],
     "argument --checkpoint-every: must be an int >= 1"),
    (RUN + ["--steps", "1", "--pruner", "median"], "--pruner is not an "
     "option of hoag; it applies to random, tpe"),
    (["run", "--problem", "ridge-diabetes", "--method", "random", "--steps",
      "1", "--pruner", "asha"], "argument --pruner: invalid choice: 'asha'"),
    (["compare", "--budget", "inf"], "argument --budget: must be a finite "
     "number of seconds > 0, got 'inf'"),
    (["compare", "--budget", "nan"], "argument --budget: must be a finite"),
    (["compare", "--budget", "0"], "argument --budget: must be a finite"),
    (["compare", "--methods", "hoag,ift", "--pruner", "median"],
     "--pruner is not an option of hoag, ift; it applies to random, tpe"),
    (["demo", "--steps", "0"], "argument --steps: must be an int >= 1"),
    (["demo", "--inner-steps", "0"], "argument --inner-steps: must be an int"
     " >= 1"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    argv, expected, capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  rc, _, err = _main(argv, capsys)
  assert rc == 2
  assert expected in err
  assert "Traceback" not in err
  assert err.strip().splitlines()[-1].startswith("hippojax")
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv, expected", [
    (RUN + ["--steps", "1", "--storage", "/proc/hippojax.db"],
     "hippojax: error: cannot open storage 'sqlite:////proc/hippojax.db': "),
    (RUN + ["--steps", "1", "--checkpoint-dir", "/proc/ckpt"],
     "hippojax: error: --checkpoint-dir '/proc/ckpt' cannot be created: "
     "'/proc' is not writable"),
    (["compare", "--budget", "1", "--out", "/proc/out"],
     "hippojax: error: --out '/proc/out' cannot be created: '/proc' is not "
     "writable"),
    (["compare", "--budget", "1", "--out", "afile"],
     "hippojax: error: --out"),
    (["report", "--storage", "empty.db", "--out", "rep"],
     "hippojax: error: cannot open storage 'empty.db': 'empty.db' is empty, "
     "not an Optuna storage."),
    (["report", "--storage", "afile.db", "--out", "rep"],
     "is not a SQLite database"),
    (["report", "--storage", "empty.log", "--out", "rep"],
     "'empty.log' is empty, not an Optuna storage"),
])
def test_run_time_errors_exit_1_with_one_line_and_touch_nothing(
    argv, expected, capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  for name, text in (("afile", "x"), ("afile.db", "not sqlite"),
                     ("empty.db", ""), ("empty.log", "")):
    with open(name, "w") as f:
      f.write(text)
  before = {n: os.path.getsize(n) for n in os.listdir(tmp_path)}
  rc, _, err = _main(argv, capsys)
  assert rc == 1, err
  assert expected in err
  _one_line(err)
  assert {n: os.path.getsize(n) for n in os.listdir(tmp_path)} == before


def test_out_under_a_file_is_refused(capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with open("afile", "w") as f:
    f.write("x")
  rc, _, err = _main(["compare", "--budget", "1", "--out", "afile/sub"],
                     capsys)
  assert rc == 1 and "'afile'" in err and "is a file" in err
  _one_line(err)


def _make_read_only(path) -> None:
  os.chmod(path, 0o444)
  try:
    open(path, "r+b").close()
  except OSError:
    return
  # root ignores file modes: make the file immutable instead.
  proc = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
  try:
    open(path, "r+b").close()
  except OSError:
    return
  del proc
  pytest.skip("cannot make a file read-only here (root, no chattr)")


def test_a_read_only_database_is_a_one_line_error(capsys, tmp_path,
                                                  monkeypatch):
  monkeypatch.chdir(tmp_path)
  argv = ["run", "--problem", "ridge-diabetes", "--method", "random",
          "--inner-steps", "10", "--storage", "ro.db", "--no-progress"]
  rc, _, err = _main(argv + ["--steps", "1"], capsys)
  assert rc == 0, err
  size = os.path.getsize("ro.db")
  _make_read_only("ro.db")
  try:
    rc, _, err = _main(argv + ["--steps", "2"], capsys)
    assert rc == 1
    assert "hippojax: error: " in err and "read-only" in err
    _one_line(err)
    assert os.path.getsize("ro.db") == size
  finally:
    subprocess.run(["chattr", "-i", "ro.db"], capture_output=True)
    os.chmod("ro.db", 0o644)


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
  assert "best validation loss, retrained from scratch:" in out
  assert "at the chain's warm-started weights it was" in out
  assert "best hyperparameters:" in out and "ridge = [" in out
  assert os.path.exists("hippojax.db")
  rc, out, _ = _main(argv + ["--steps", "5"], capsys)
  assert "5 trials in this chain" in out
  # At or below the trials done: nothing runs, and it says so.
  rc, out, _ = _main(argv + ["--steps", "4"], capsys)
  assert rc == 0
  assert ("seed 0 of study 'ridge-diabetes-hoag' already has 5 trials "
          "(--steps 4): nothing to run. Pass --steps above 5") in out
  assert "5 trials in this chain" in out
  rc, _, err = _main(["run", "--problem", "ridge-diabetes", "--method", "tpe",
                      "--study", "ridge-diabetes-hoag", "--steps", "2"],
                     capsys)
  assert rc == 1
  assert "refusing to resume it with method 'tpe'" in err
  _one_line(err)


def test_console_script_runs_with_a_progress_bar(tmp_path):
  exe = os.path.join(os.path.dirname(sys.executable), "hippojax")
  proc = subprocess.run(
      [exe, "run", "--problem", "ridge-diabetes-scalar", "--method", "random",
       "--steps", "3", "--inner-steps", "50", "--storage",
       str(tmp_path / "j.log")],
      capture_output=True, text=True, cwd=tmp_path, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert "best=" in proc.stderr  # tqdm postfix: the best value so far
  assert "ridge = " in proc.stdout
  assert (tmp_path / "j.log").exists()


@pytest.mark.slow
def test_compare_and_report_write_the_report(capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  argv = ["compare", "--problem", "ridge-diabetes", "--methods",
          "hoag,random", "--budget", "2", "--inner-steps", "50", "--out",
          "cmp"]
  rc, out, err = _main(argv, capsys)
  assert rc == 0, err
  assert "| rank | method | val loss (retrained) | test MSE" in out
  assert "/4 s" in err  # one bar over both methods' budgets
  files = set(os.listdir("cmp"))
  assert {"report.md", "results.json", "val_loss_vs_wall.png",
          "val_loss_vs_inner_steps.png", "hparams.png",
          "studies.db"} <= files
  with open("cmp/results.json") as f:
    results = json.load(f)
  assert results["schema"] == "hippojax.report/2"
  assert results["budget_seconds"] == 2.0
  group = results["problems"]["ridge-diabetes"]
  assert set(group["methods"]) == {"hoag", "random"}
  for m in group["methods"].values():
    c = m["chains"]["0"]
    assert m["n_trials"] >= 1 and m["wall_seconds"] > 0
    per_trial = 100 if m["method"] == "hoag" else 50
    # hoag also spends at most 25 polishing half steps per outer step.
    polish = 25 if m["method"] == "hoag" else 0
    spent = c["series"]["inner_steps"]
    assert len(spent) == m["n_trials"] and spent == sorted(spent)
    assert all(per_trial * (i + 1) <= s <= (per_trial + polish) * (i + 1)
               for i, s in enumerate(spent))
    assert len(c["series"]["value"]) == m["n_trials"]
    assert m["best_value"] == min(c["series"]["value"])
    assert 0 < m["test_metric"] < 10
    assert len(c["hparams"]["ridge"]["values"][0]) == 10
  report = open("cmp/report.md").read()
  assert ("![ridge-diabetes: validation loss vs wall-clock]"
          "(val_loss_vs_wall.png)") in report
  assert "wall-clock budget of 2 s" in report
  # Running compare again keeps the studies: refused, unless --overwrite.
  studies = os.path.join("cmp", "studies.db")
  url = f"sqlite:///{studies}"
  n_before = len(optuna.load_study(study_name="ridge-diabetes-random",
                                   storage=url).trials)
  again = ["compare", "--problem", "ridge-diabetes", "--methods", "random",
           "--budget", "1", "--inner-steps", "50", "--out", "cmp",
           "--no-progress"]
  rc, _, err = _main(again, capsys)
  assert rc == 1
  assert ("already holds the studies ridge-diabetes-random; compare keeps "
          "existing studies: pass --overwrite") in err
  _one_line(err)
  assert len(optuna.load_study(study_name="ridge-diabetes-random",
                               storage=url).trials) == n_before
  # A plain Optuna study of the same name in another storage is kept too.
  other = f"sqlite:///{tmp_path}/other.db"
  plain = optuna.create_study(study_name="ridge-diabetes-random",
                              storage=other)
  plain.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
  rc, _, err = _main(again[:-3] + ["--out", "cmp2", "--storage", other,
                                   "--no-progress"], capsys)
  assert rc == 1 and "--overwrite" in err
  assert len(optuna.load_study(study_name="ridge-diabetes-random",
                               storage=other).trials) == 3
  assert not os.path.exists("cmp2")
  rc, _, err = _main(again + ["--overwrite"], capsys)
  assert rc == 0, err
  # report reads every hippojax study back from storage.
  rc, out, err = _main(["report", "--storage", "cmp/studies.db", "--out",
                        "rep"], capsys)
  assert rc == 0, err
  assert "retraining best hyperparameters" in err  # the report's bar
  with open("rep/results.json") as f:
    back = json.load(f)
  methods = back["problems"]["ridge-diabetes"]["methods"]
  assert set(methods) == {"hoag", "random"}
  assert (methods["hoag"]["chains"] == group["methods"]["hoag"]["chains"])
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
