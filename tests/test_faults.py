"""Faults a user meets, on the command line as users run it (F1-F10).

Each test runs ``hippojax run`` in child processes, interrupts it with a real
signal (SIGINT, SIGKILL), a file-size limit (``ulimit -f``) or a database
error at a chosen point, runs the same command again (in the same or another
working directory), and then checks the whole chain in the storage: every
step recorded exactly once, and the values and hyperparameters of every
trial equal, bit for bit, to those of an uninterrupted run.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import optuna
import pytest

import hippojax
from hippojax._src import storage as storage_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_GRAD = 12
N_BOX = 6
GRAD = ["--problem", "ridge-diabetes", "--method", "hoag", "--inner-steps",
        "50", "--no-progress", "--study", "s"]
BOX = ["--problem", "ridge-diabetes", "--method", "random", "--inner-steps",
       "50", "--no-progress", "--study", "s"]

# Runs the command line with faults injected at chosen points. A fault is a
# real signal sent by the process to itself, or an exception raised where
# the storage would raise it.
HARNESS = textwrap.dedent("""
    import atexit, dataclasses, json, os, signal, sys
    cfg = json.loads(sys.argv[1])
    import jax.numpy as jnp
    from hippojax._src import chain, cli, outer, problems, storage
    from hippojax._src import trials as trials_lib

    def fire(fault):
      if "signal" in fault:
        os.kill(os.getpid(), getattr(signal, fault["signal"]))
      if fault.get("raise") == "db":
        import optuna, sqlalchemy
        try:
          raise sqlalchemy.exc.OperationalError(
              "INSERT INTO trials", {}, Exception(
                  "server closed the connection unexpectedly"))
        except sqlalchemy.exc.OperationalError as e:
          raise optuna.exceptions.StorageInternalError(
              "An exception is raised during the commit.") from e

    for fault in cfg.get("faults", []):
      at = fault["at"]
      if at == "record":  # after the outer step, before its trial is written
        orig_record = trials_lib.record_gradient_trial
        def record(study, problem, step, *a, _f=fault, _o=orig_record, **k):
          if step == _f["step"]:
            fire(_f)
          return _o(study, problem, step, *a, **k)
        trials_lib.record_gradient_trial = record
      elif at == "ask":  # a black-box trial was created, nothing else yet
        orig_ask = chain._ask
        def ask(study, step, _f=fault, _o=orig_ask):
          trial = _o(study, step)
          if step == _f["step"]:
            fire(_f)
          return trial
        chain._ask = ask
      elif at == "tell":  # a black-box trial has its attributes, not its value
        import optuna
        orig_tell = optuna.study.Study.tell
        def tell(self, trial, *a, _f=fault, _o=orig_tell, **k):
          if trial.user_attrs.get("step") == _f["step"]:
            fire(_f)
          return _o(self, trial, *a, **k)
        optuna.study.Study.tell = tell
      elif at == "journal_lock":  # holding the journal's lock file
        orig_acquire = storage.JournalLock.acquire
        calls = [0]
        def acquire(self, _f=fault, _o=orig_acquire):
          got = _o(self)
          calls[0] += 1
          if calls[0] == _f["call"]:
            fire(_f)
          return got
        storage.JournalLock.acquire = acquire

    if cfg.get("diverge"):
      base = problems.get("ridge-diabetes")
      def blow_up(w, h, batch):
        return base.train_step(w, h, batch) * jnp.inf
      bad = dataclasses.replace(base, name="ridge-diverging",
                                train_step=blow_up)
      problems.PROBLEMS["ridge-diverging"] = lambda: bad

    steps = [0]
    orig_step = outer.Engine.step
    def counted(self, state):
      steps[0] += 1
      return orig_step(self, state)
    outer.Engine.step = counted
    code = cli.main(cfg["argv"])
    print("ENGINE_STEPS", steps[0], flush=True)
    sys.exit(code)
""")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp("jax-cache"))
  script = tmp_path_factory.mktemp("harness") / "harness.py"
  script.write_text(HARNESS)
  environ = dict(os.environ, JAX_PLATFORMS="cpu",
                 PYTHONPATH=os.pathsep.join(
                     [ROOT, os.environ.get("PYTHONPATH", "")]),
                 JAX_COMPILATION_CACHE_DIR=cache,
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return {"script": str(script), "env": environ}


class Run:

  def __init__(self, proc):
    self.proc = proc
    self.out, self.err = proc.communicate(timeout=300)
    self.rc = proc.returncode
    steps = [line.split()[1] for line in self.out.splitlines()
             if line.startswith("ENGINE_STEPS")]
    self.engine_steps = int(steps[0]) if steps else None

  def error_lines(self):
    return [line for line in self.err.splitlines() if line.strip()]


def start(env, cwd, argv, *, faults=(), diverge=False, ulimit_kb=None):
  cfg = json.dumps({"argv": list(argv), "faults": list(faults),
                    "diverge": diverge})
  cmd = [sys.executable, env["script"], cfg]
  if ulimit_kb is not None:
    cmd = ["bash", "-c", f'ulimit -f {ulimit_kb}; exec "$@"', "bash"] + cmd
  os.makedirs(cwd, exist_ok=True)
  return subprocess.Popen(cmd, cwd=cwd, env=env["env"], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_until_stopped(proc, timeout=300):
  """Waits until `proc` has stopped itself (SIGSTOP); fails if it exits."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, proc.communicate()
    with open(f"/proc/{proc.pid}/stat") as f:
      if f.read().split(") ", 1)[1].startswith("T"):
        return
    time.sleep(0.05)
  raise AssertionError(f"process {proc.pid} did not stop in {timeout} s")


def run_beside_a_stopped_owner(env, tmp_path, argv) -> tuple[Run, Run]:
  """The same command in directories a and b: the first worker waits
  (SIGSTOP) mid-chain, so the second always meets a live owner, however
  slowly either process starts; then the first goes on. Asserts that the
  first finished and the second was refused."""
  first = start(env, tmp_path / "a", argv,
                faults=[{"at": "record", "step": 4, "signal": "SIGSTOP"}])
  wait_until_stopped(first)
  second = run(env, tmp_path / "b", argv)
  first.send_signal(signal.SIGCONT)
  first = Run(first)
  assert (first.rc, second.rc) == (0, 1), (first.err, second.err)
  return first, second


def run(env, cwd, argv, **kw) -> Run:
  return Run(start(env, cwd, argv, **kw))


def chain_of(storage, name="s", chain=0):
  """The chain's counted trials, in step order (orphans left out)."""
  study = optuna.load_study(study_name=name,
                            storage=storage_lib.open_storage(storage).storage)
  trials = [t for t in study.trials if t.user_attrs.get("chain") == chain
            and not t.user_attrs.get("orphaned")]
  return sorted(trials, key=lambda t: t.user_attrs["step"]), study


def summary(trials):
  return [(t.user_attrs["step"], t.state.name, t.value,
           sorted(t.params.items())) for t in trials]


def assert_full_chain(storage, reference, n):
  trials, study = chain_of(storage)
  assert [t.user_attrs["step"] for t in trials] == list(range(n))
  assert summary(trials) == reference  # bit for bit
  running = [t for t in study.trials
             if t.state == optuna.trial.TrialState.RUNNING]
  assert not running
  return trials, study


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
  """Uninterrupted runs of the same commands."""
  tmp = tmp_path_factory.mktemp("reference")
  grad = f"sqlite:///{tmp}/g.db"
  box = f"sqlite:///{tmp}/b.db"
  procs = [start(env, tmp, ["run", *GRAD, "--steps", str(N_GRAD),
                            "--storage", grad]),
           start(env, tmp, ["run", *BOX, "--steps", str(N_BOX),
                            "--storage", box])]
  for p in procs:
    r = Run(p)
    assert r.rc == 0, r.err
  return {"grad": summary(chain_of(grad)[0]), "box": summary(chain_of(box)[0])}


def test_reference_runs_are_whole(reference):
  assert [s[0] for s in reference["grad"]] == list(range(N_GRAD))
  assert all(s[1] == "COMPLETE" for s in reference["grad"] + reference["box"])


# ---------------------------------------------------------------------------
# F1: interruptions of gradient chains.


@pytest.mark.slow
@pytest.mark.parametrize("fault", [
    {"at": "record", "step": 5, "signal": "SIGINT"},
    {"at": "record", "step": 5, "raise": "db"},
])
def test_f1_interrupted_before_a_trial_is_written_resumes_exactly(
    env, tmp_path, reference, fault):
  storage = f"sqlite:///{tmp_path}/s.db"
  argv = ["run", *GRAD, "--steps", str(N_GRAD), "--storage", storage,
          "--checkpoint-every", "3"]
  first = run(env, tmp_path, argv, faults=[fault])
  assert first.rc == (130 if "signal" in fault else 1), first.err
  if "raise" in fault:  # a one-line error, no traceback
    (line,) = first.error_lines()
    assert line.startswith("hippojax: error: cannot write to ")
    assert "server closed the connection" in line
  trials, _ = chain_of(storage)
  assert [t.user_attrs["step"] for t in trials] == list(range(5))
  again = run(env, tmp_path, argv)
  assert again.rc == 0, again.err
  assert f"{N_GRAD} trials in this chain" in again.out
  assert_full_chain(storage, reference["grad"], N_GRAD)


@pytest.mark.slow
def test_f1_sigint_at_any_moment_resumes_exactly(env, tmp_path, reference):
  storage = f"sqlite:///{tmp_path}/s.db"
  argv = ["run", *GRAD, "--steps", str(N_GRAD), "--storage", storage,
          "--checkpoint-every", "4"]
  proc = start(env, tmp_path, argv)
  db = tmp_path / "s.db"
  deadline = time.time() + 120
  count = 0
  while time.time() < deadline and proc.poll() is None and count < 3:
    try:
      with sqlite3.connect(db, timeout=1) as con:
        count = con.execute("SELECT count(*) FROM trials").fetchone()[0]
    except sqlite3.Error:
      pass
    time.sleep(0.01)
  if proc.poll() is not None:
    pytest.skip("the run finished before it could be interrupted")
  proc.send_signal(signal.SIGINT)
  first = Run(proc)
  assert first.rc == 130, first.err
  assert first.error_lines()[-1] == "hippojax: interrupted"
  again = run(env, tmp_path, argv)
  assert again.rc == 0, again.err
  assert_full_chain(storage, reference["grad"], N_GRAD)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_f1_full_disk_is_one_line_and_resumes_exactly(env, tmp_path,
                                                       reference, kind):
  """``ulimit -f`` stops writes half-way through the run."""
  storage = (f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else
             f"journal:{tmp_path}/s.log")
  argv = ["run", *GRAD, "--storage", storage, "--checkpoint-every", "2",
          "--steps"]
  warm = run(env, tmp_path, argv + ["2"])
  assert warm.rc == 0, warm.err
  biggest = max(os.path.getsize(tmp_path / f) for f in os.listdir(tmp_path)
                if f.startswith("s."))
  # Room for a few more steps (measured: 6-10 KB per step on either).
  limit_kb = biggest // 1024 + (40 if kind == "sqlite" else 30)
  argv.append(str(N_GRAD))
  full = run(env, tmp_path, argv, ulimit_kb=limit_kb)
  assert full.rc == 1, (full.out, full.err)
  (line,) = full.error_lines()
  assert line.startswith("hippojax: error: cannot write to ")
  assert "file-size limit" in line and "run the same command again" in line
  trials, _ = chain_of(storage)
  assert 2 < len(trials) < N_GRAD
  again = run(env, tmp_path, argv)
  assert again.rc == 0, again.err
  assert_full_chain(storage, reference["grad"], N_GRAD)


def test_f1_retry_in_the_same_process_loses_no_step(tmp_path, monkeypatch):
  """A notebook's retry of ``optimize`` after an exception while writing."""
  from hippojax._src import trials as trials_lib
  storage = f"sqlite:///{tmp_path}/s.db"
  kw = {"inner_steps": 50, "checkpoint_every": 3}
  once = hippojax.create_study("hoag", storage=":memory:", **kw)
  once.optimize("ridge-diabetes", n_steps=6)
  study = hippojax.create_study("hoag", storage=storage, study_name="s",
                                **kw)
  record = trials_lib.record_gradient_trial

  def failing(s, problem, step, *a, **k):
    if step == 4:
      raise OSError(28, "No space left on device")
    return record(s, problem, step, *a, **k)

  monkeypatch.setattr(trials_lib, "record_gradient_trial", failing)
  with pytest.raises(hippojax.StorageError, match="No space left on device; "
                     "the disk is full"):
    study.optimize("ridge-diabetes", n_steps=6)
  assert len(study.chain_trials()) == 4
  monkeypatch.setattr(trials_lib, "record_gradient_trial", record)
  study.optimize("ridge-diabetes", n_steps=6)
  assert [t.user_attrs["step"] for t in study.chain_trials()] == list(
      range(6))
  assert summary(study.chain_trials()) == summary(once.chain_trials())


# ---------------------------------------------------------------------------
# F2, F3: black-box chains killed between their writes.


@pytest.mark.slow
@pytest.mark.parametrize("where", ["ask", "tell"])
def test_f2_f3_blackbox_killed_between_writes_reruns_the_step(
    env, tmp_path, reference, where):
  storage = f"sqlite:///{tmp_path}/b.db"
  argv = ["run", *BOX, "--steps", str(N_BOX), "--storage", storage]
  first = run(env, tmp_path, argv,
              faults=[{"at": where, "step": 3, "signal": "SIGKILL"}])
  assert first.rc == -signal.SIGKILL
  again = run(env, tmp_path, argv)
  assert again.rc == 0, again.err
  _, study = assert_full_chain(storage, reference["box"], N_BOX)
  orphans = [t for t in study.trials if t.user_attrs.get("orphaned")]
  assert len(orphans) == 1 and orphans[0].user_attrs["step"] == 3
  assert orphans[0].state == optuna.trial.TrialState.FAIL
  assert len(study.trials) == N_BOX + 1


# ---------------------------------------------------------------------------
# F4: one chain, one owner, whatever the working directory.


@pytest.mark.slow
def test_f4_same_seed_in_two_directories_runs_once(env, tmp_path, reference):
  storage = f"sqlite:///{tmp_path}/s.db"
  argv = ["run", *GRAD, "--steps", str(N_GRAD), "--storage", storage]
  first, second = run_beside_a_stopped_owner(env, tmp_path, argv)
  (line,) = second.error_lines()
  assert "seed 0 of study 's' is being run by" in line
  assert_full_chain(storage, reference["grad"], N_GRAD)


@pytest.mark.slow
def test_f4_resume_from_another_directory_uses_the_checkpoint(
    env, tmp_path, reference):
  storage = f"sqlite:///{tmp_path}/s.db"
  argv = ["run", *GRAD, "--steps", str(N_GRAD), "--storage", storage,
          "--checkpoint-every", "3"]
  first = run(env, tmp_path / "a", argv,
              faults=[{"at": "record", "step": 8, "signal": "SIGKILL"}])
  assert first.rc == -signal.SIGKILL
  again = run(env, tmp_path / "b", argv)
  assert again.rc == 0, again.err
  # Restored at step 6 (the checkpoint), not recomputed from step 0.
  assert again.engine_steps == N_GRAD - 6
  assert not os.listdir(tmp_path / "b")
  assert_full_chain(storage, reference["grad"], N_GRAD)


@pytest.mark.slow
def test_f4_deleted_checkpoint_directory_lets_no_second_worker_in(
    env, tmp_path, reference):
  storage = f"sqlite:///{tmp_path}/s.db"
  ckpt = tmp_path / "ckpt"
  argv = ["run", *GRAD, "--steps", str(N_GRAD), "--storage", storage,
          "--checkpoint-dir", str(ckpt), "--checkpoint-every", "1"]
  # The first worker waits (SIGSTOP) after step 4, its directory is
  # deleted, a second worker of the same seed tries its luck, then the first
  # goes on.
  first = start(env, tmp_path / "a", argv,
                faults=[{"at": "record", "step": 4, "signal": "SIGSTOP"}])
  wait_until_stopped(first)
  import shutil
  shutil.rmtree(ckpt)
  second = run(env, tmp_path / "b", argv)
  assert second.rc == 1
  (line,) = second.error_lines()
  assert "seed 0 of study 's' is being run by" in line
  first.send_signal(signal.SIGCONT)
  first = Run(first)
  assert first.rc == 0, first.err
  assert_full_chain(storage, reference["grad"], N_GRAD)


# ---------------------------------------------------------------------------
# F5: PostgreSQL's driver (the server itself: tests/test_postgres.py).


def test_f5_postgresql_driver_is_named_or_chosen(monkeypatch):
  url = "postgresql://u:p@127.0.0.1:1/db"
  installed = {"psycopg2"}
  monkeypatch.setattr(storage_lib, "_importable", lambda m: m in installed)
  assert storage_lib._with_driver(url) == (
      "postgresql+psycopg2://u:p@127.0.0.1:1/db")
  installed.clear()
  with pytest.raises(hippojax.StorageError,
                     match=r"'psycopg', is not installed; pip install "
                     r"'hippojax\[postgres\]'"):
    storage_lib.open_storage(url)
  installed.add("psycopg")
  assert storage_lib._with_driver(url) == url


# ---------------------------------------------------------------------------
# F6: one-line errors.


@pytest.mark.slow
def test_f6_unwritable_places_are_one_line_errors(env, tmp_path):
  (tmp_path / "file").write_text("")
  db = tmp_path / "ro.db"
  sqlite3.connect(db).close()
  optuna.create_study(storage=f"sqlite:///{db}", study_name="s")
  cases = {
      "checkpoint": (["--storage", f"sqlite:///{tmp_path}/s.db",
                      "--checkpoint-dir", str(tmp_path / "file" / "c")],
                     "checkpoint"),
      "read-only db": (["--storage",
                        f"sqlite:///file:{db}?mode=ro&uri=true"],
                       "readonly database"),
      "virtual fs": (["--storage", "sqlite:////proc/hippojax.db"],
                     "is not writable"),
  }
  procs = {k: start(env, tmp_path, ["run", *GRAD, "--steps", "2", *a])
           for k, (a, _) in cases.items()}
  for k, p in procs.items():
    r = Run(p)
    assert r.rc == 1, (k, r.err)
    (line,) = r.error_lines()
    assert line.startswith("hippojax: error: ") and cases[k][1] in line, k


def test_f6_unwritable_checkpoint_directory_in_the_api(tmp_path):
  (tmp_path / "file").write_text("")
  study = hippojax.create_study("hoag", storage=":memory:", inner_steps=5,
                                checkpoint_dir=str(tmp_path / "file" / "c"))
  with pytest.raises(hippojax.StorageError,
                     match="cannot write checkpoints to .*Not a directory"):
    study.optimize("ridge-diabetes", n_steps=1)


# ---------------------------------------------------------------------------
# F7: a corrupted newest checkpoint.


@pytest.mark.slow
@pytest.mark.parametrize("where", ["storage", "directory"])
def test_f7_corrupted_newest_checkpoint_falls_back(env, tmp_path, reference,
                                                   where):
  storage = f"sqlite:///{tmp_path}/s.db"
  extra = ([] if where == "storage" else
           ["--checkpoint-dir", str(tmp_path / "ckpt")])
  argv = ["run", *GRAD, "--steps", str(N_GRAD), "--storage", storage,
          "--checkpoint-every", "3", *extra]
  first = run(env, tmp_path, argv,
              faults=[{"at": "record", "step": 8, "signal": "SIGKILL"}])
  assert first.rc == -signal.SIGKILL
  # Checkpoints at steps 3 and 6; damage the newest.
  if where == "storage":
    rdb = storage_lib.open_storage(storage).storage
    sid = rdb.get_study_id_from_name("s")
    attrs = rdb.get_study_system_attrs(sid)
    assert [e["step"] for e in attrs["hippojax.checkpoint.0"]] == [6, 3]
    chunk = attrs["hippojax.checkpoint.0.6.0"]
    rdb.set_study_system_attr(sid, "hippojax.checkpoint.0.6.0",
                              chunk[:100] + "AAAA" + chunk[104:])
    rdb.engine.dispose()
  else:
    step6 = tmp_path / "ckpt" / "s" / "chain-0" / "6"
    metas = [os.path.join(d, f) for d, _, fs in os.walk(step6) for f in fs
             if "meta" in d]
    assert metas
    for m in metas:
      open(m, "w").close()  # an empty JSON file
  again = run(env, tmp_path, argv)
  assert again.rc == 0, again.err
  assert "the checkpoint at step 6" in again.err
  assert "using the one at step 3" in again.err
  assert again.engine_steps == N_GRAD - 3
  assert_full_chain(storage, reference["grad"], N_GRAD)


# ---------------------------------------------------------------------------
# F8: a journal writer killed while it holds the journal's lock.


@pytest.mark.slow
def test_f8_stale_journal_lock_is_detected(env, tmp_path, reference):
  journal = tmp_path / "s.log"
  argv = ["run", *GRAD, "--steps", str(N_GRAD), "--storage",
          f"journal:{journal}"]
  first = run(env, tmp_path, argv,
              faults=[{"at": "journal_lock", "call": 12,
                       "signal": "SIGKILL"}])
  assert first.rc == -signal.SIGKILL
  assert os.path.lexists(f"{journal}.lock")
  os.utime(f"{journal}.lock", (time.time() - 60,) * 2,
           follow_symlinks=False)  # as if the kill were a minute ago
  t0 = time.time()
  again = run(env, tmp_path, argv)
  assert again.rc == 0, again.err
  assert "removed the stale journal lock" in again.err
  assert time.time() - t0 < 60  # Optuna alone waits 30 s per writer
  assert not os.path.lexists(f"{journal}.lock")
  assert_full_chain(f"journal:{journal}", reference["grad"], N_GRAD)


# ---------------------------------------------------------------------------
# F9: a chain whose steps keep failing.


@pytest.mark.slow
def test_f9_diverging_chain_stops_with_an_error(env, tmp_path):
  storage = f"sqlite:///{tmp_path}/s.db"
  argv = ["run", "--problem", "ridge-diverging", "--method", "hoag",
          "--inner-steps", "20", "--no-progress", "--study", "s",
          "--steps", "40", "--storage", storage]
  first = run(env, tmp_path, argv, diverge=True)
  assert first.rc == 1, first.err
  (line,) = first.error_lines()
  assert "stopped: its last 10 outer steps (0..9) failed" in line
  trials, _ = chain_of(storage)
  assert [t.user_attrs["step"] for t in trials] == list(range(10))
  assert all(t.state == optuna.trial.TrialState.FAIL for t in trials)
  again = run(env, tmp_path, argv, diverge=True)  # stops before any step
  assert again.rc == 1 and again.engine_steps == 0
  assert len(chain_of(storage)[0]) == 10


def test_f9_failures_that_recover_do_not_stop_the_chain(monkeypatch):
  from hippojax._src import chain
  calls = [0]
  real = chain._failed

  def every_other(rec):
    calls[0] += 1
    return calls[0] % 2 == 0 or real(rec)

  monkeypatch.setattr(chain, "_failed", every_other)
  study = hippojax.create_study("hoag", storage=":memory:",
                                max_failed_steps=2, inner_steps=20)
  study.optimize("ridge-diabetes", n_steps=6)
  assert len(study.trials) == 6


# ---------------------------------------------------------------------------
# F10: bounds the dtype cannot hold.


@pytest.mark.parametrize("method", ["hoag", "random"])
def test_f10_bounds_that_overflow_the_dtype_are_refused(method):
  """[-3e38, 3e38] in float32; the tests run in float64, so scale up."""
  import dataclasses
  import jax.numpy as jnp
  import numpy as np
  dtype = np.dtype(jnp.zeros(()).dtype)
  big = float(np.finfo(dtype).max)
  base = hippojax.problems.get("ridge-diabetes-scalar")
  wide = hippojax.SearchSpace(
      (hippojax.suggest_float("ridge", -0.9 * big, 0.9 * big),))
  problem = dataclasses.replace(base, name="wide", space=wide)
  study = hippojax.create_study(method, storage=":memory:", inner_steps=5)
  with pytest.raises(ValueError, match=r"hyperparameter 'ridge' has bounds "
                     rf"\[.*\], which {dtype.name} cannot represent"):
    study.optimize(problem, n_steps=1)
  assert not study.trials
  ok = hippojax.SearchSpace(
      (hippojax.suggest_float("ridge", -0.4 * big, 0.4 * big),))
  fine = hippojax.create_study(method, storage=":memory:", inner_steps=5)
  fine.optimize(dataclasses.replace(base, name="ok", space=ok), n_steps=1)
  assert len(fine.trials) == 1
