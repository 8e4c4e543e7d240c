"""Storage, checkpoints, crash recovery (SIGKILL) and concurrent workers.

Crash and concurrency tests run the study in child processes (float32, the
library's default), killed with SIGKILL either by themselves at a chosen
point or by this process at an arbitrary one.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import optuna
import pytest

import hippojax
from hippojax._src import storage as storage_lib

FAST = {"inner_steps": 50}

CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import numpy as np
    import hippojax
    from hippojax._src import problems

    jobs = json.loads(sys.argv[1])
    kill_in = jobs[-1].get("kill_in_trial")  # inside this black-box trial

    def kill_inside_trial(k):
      validate = problems.Problem.validate
      calls = [0]
      def killing_validate(self, *args, **kwargs):
        if calls[0] == k:
          os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        return validate(self, *args, **kwargs)
      problems.Problem.validate = killing_validate

    for cfg in jobs:
      if cfg is jobs[-1] and kill_in is not None:
        kill_inside_trial(kill_in)  # (gradient trials retrain with validate)
      kill_at = cfg.get("kill_at")  # after recording this step

      def callback(study, record):
        if record["step"] == kill_at:
          os.kill(os.getpid(), signal.SIGKILL)

      study = hippojax.create_study(
          cfg["method"], storage=cfg["storage"], study_name="s",
          seed=cfg.get("seed", 0), checkpoint_every=cfg.get("every", 10),
          inner_steps=50)
      study.optimize("ridge-diabetes", n_steps=cfg["n_steps"],
                     callbacks=[callback])
      chain = study.chain_trials()
      out = {"values": [t.value for t in chain],
             "steps": [t.user_attrs["step"] for t in chain]}
      if study.seed in study._live:
        out["u"] = np.asarray(study._live[study.seed][1].u["ridge"]).tolist()
      print("RESULT " + json.dumps(out), flush=True)
""")


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  """A compilation cache shared by the children: only the first compiles."""
  return str(tmp_path_factory.mktemp("jax-cache"))


def _child(tmp_path, cfg, *, wait=True, cache=None):
  script = tmp_path / "child.py"
  if not script.exists():
    script.write_text(CHILD)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if cache:
    env.update(JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  proc = subprocess.Popen([sys.executable, str(script), json.dumps(cfg)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env, cwd=tmp_path)
  if not wait:
    return proc
  return _finish(proc)


def _finish(proc):
  out, err = proc.communicate(timeout=300)
  results = [json.loads(line[len("RESULT "):]) for line in out.splitlines()
             if line.startswith("RESULT ")]
  return proc.returncode, results, err


def _load(storage):
  return optuna.load_study(study_name="s",
                           storage=storage_lib.open_storage(storage).storage)


N_GRAD = 30


@pytest.fixture(scope="module")
def reference(tmp_path_factory, compile_cache):
  """Uninterrupted float32 runs (in memory) to compare resumed runs with."""
  tmp = tmp_path_factory.mktemp("reference")
  rc, (grad, blackbox), err = _child(
      tmp, [{"method": "hoag", "storage": ":memory:", "n_steps": N_GRAD},
            {"method": "random", "storage": ":memory:", "n_steps": 6}],
      cache=compile_cache)
  assert rc == 0, err
  return {"hoag": grad, "random": blackbox}


# ---------------------------------------------------------------------------
# In-process.


def test_unreachable_storage_is_a_clear_error_and_writes_nothing(tmp_path):
  missing = tmp_path / "missing" / "x.db"
  with pytest.raises(hippojax.StorageError, match="does not exist"):
    hippojax.create_study("hoag", storage=f"sqlite:///{missing}")
  with pytest.raises(hippojax.StorageError, match="does not exist"):
    hippojax.create_study("hoag", storage=f"journal:{missing}.log")
  with pytest.raises(hippojax.StorageError, match="cannot open storage"):
    hippojax.create_study("hoag", storage="postgresql://u@127.0.0.1:1/db")
  with pytest.raises(hippojax.StorageError, match="cannot open storage"):
    hippojax.create_study("hoag", storage="nosuchdb://x")
  with pytest.raises(hippojax.StorageError, match="neither a URL"):
    hippojax.create_study("hoag", storage=str(tmp_path / "x.txt"))
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind", ["sqlite", "journal", "directory"])
def test_a_new_process_view_resumes_from_the_checkpoint(tmp_path, kind):
  storage = (str(tmp_path / "s.log") if kind == "journal" else
             f"sqlite:///{tmp_path}/s.db")
  where = {"checkpoint_dir": str(tmp_path / "ckpt")} if kind == "directory" \
      else {}
  first = hippojax.create_study("hoag", storage=storage, study_name="s",
                                checkpoint_every=2, **where, **FAST)
  first.optimize("ridge-diabetes", n_steps=4)
  if kind == "directory":
    assert sorted(os.listdir(tmp_path / "ckpt" / "s" / "chain-0")) == [
        "2", "4"]
  else:  # in the storage itself, nothing beside it
    attrs = first.storage.get_study_system_attrs(
        first.optuna_study._study_id)
    assert [e["step"] for e in attrs["hippojax.checkpoint.0"]] == [4, 2]
    assert not [f for f in os.listdir(tmp_path) if "checkpoint" in f]
  # A fresh Study object has no in-memory state: it restores step 4.
  second = hippojax.create_study("hoag", storage=storage, study_name="s",
                                 checkpoint_every=2, **where, **FAST)
  second.optimize("ridge-diabetes", n_steps=7)
  once = hippojax.create_study("hoag", storage=":memory:", **FAST)
  once.optimize("ridge-diabetes", n_steps=7)
  assert [t.user_attrs["step"] for t in second.chain_trials()] == list(
      range(7))
  np.testing.assert_array_equal([t.value for t in second.chain_trials()],
                                [t.value for t in once.trials])
  np.testing.assert_array_equal(second._live[0][1].u["ridge"],
                                once._live[0][1].u["ridge"])
  # Wall-clock keeps counting across the two processes.
  walls = [t.user_attrs["wall_seconds"] for t in second.chain_trials()]
  assert walls == sorted(walls)


def test_restored_state_has_the_original_types(tmp_path):
  from hippojax._src.checkpoint import Checkpointer
  from hippojax._src.outer import OuterState, get_engine
  from hippojax._src.study import resolve_options
  problem = hippojax.problems.get("ridge-diabetes")
  engine = get_engine(problem, "hoag",
                      resolve_options("hoag", FAST, problem))
  state, _ = engine.step(engine.init(0))
  ckpt = Checkpointer(str(tmp_path / "c"))
  ckpt.save(1, state, {"wall_seconds": 1.5})
  restored, meta = ckpt.restore(engine.init(0))
  assert isinstance(restored, OuterState)
  assert type(restored.opt_state[0]) is type(state.opt_state[0])
  assert int(restored.step) == 1 and meta["wall_seconds"] == 1.5
  np.testing.assert_array_equal(restored.u["ridge"], state.u["ridge"])
  ckpt.close()


def test_checkpoint_of_a_deleted_study_is_not_reused(tmp_path):
  storage = f"sqlite:///{tmp_path}/s.db"
  s = hippojax.create_study("hoag", storage=storage, study_name="s", **FAST)
  s.optimize("ridge-diabetes", n_steps=3)
  optuna.delete_study(study_name="s", storage=storage)
  again = hippojax.create_study("hoag", storage=storage, study_name="s",
                                **FAST)
  again.optimize("ridge-diabetes", n_steps=2)
  assert [t.user_attrs["step"] for t in again.trials] == [0, 1]
  assert again.trials[0].value == s.trials[0].value


def test_checkpoint_written_with_other_options_is_refused(tmp_path):
  storage = f"sqlite:///{tmp_path}/s.db"
  s = hippojax.create_study("hoag", storage=storage, study_name="s", **FAST)
  s.optimize("ridge-diabetes", n_steps=2)
  # Tamper with the study record so that only the checkpoint disagrees.
  optuna.load_study(study_name="s", storage=storage).set_user_attr(
      "hippojax.options", dict(s.optuna_study.user_attrs["hippojax.options"],
                               outer_lr=0.5))
  other = hippojax.create_study("hoag", storage=storage, study_name="s",
                                inner_steps=50, outer_lr=0.5)
  with pytest.raises(ValueError, match="checkpoint .* was written with "
                     "options"):
    other.optimize("ridge-diabetes", n_steps=4)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_chain_run_by_another_process_is_refused(tmp_path, kind):
  from hippojax._src.lease import ChainLease
  storage = (str(tmp_path / "s.log") if kind == "journal" else
             f"sqlite:///{tmp_path}/s.db")
  study = hippojax.create_study("hoag", storage=storage, study_name="s",
                                **FAST)
  other = hippojax.create_study("hoag", storage=storage, study_name="s",
                                **FAST)
  held = ChainLease(other.storage, other.optuna_study._study_id, "s", 0)
  with held:
    with pytest.raises(hippojax.ChainBusyError, match="seed 0 of study 's' "
                       "is being run by"):
      study.optimize("ridge-diabetes", n_steps=2)
    study.seed = 1  # another seed is free
    study.optimize("ridge-diabetes", n_steps=1)
  study.seed = 0
  study.optimize("ridge-diabetes", n_steps=2)  # free again
  assert len(study.trials) == 3


def test_dead_workers_running_trials_are_marked_failed(tmp_path):
  storage = f"sqlite:///{tmp_path}/s.db"
  study = hippojax.create_study("random", storage=storage, study_name="s",
                                **FAST)
  study.optimize("ridge-diabetes", n_steps=1)
  orphan = study.optuna_study.ask()
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  orphan.set_user_attr("worker", f"{storage_lib.socket.gethostname()}:"
                       f"{dead.pid}")
  study.optimize("ridge-diabetes", n_steps=2)
  states = [t.state for t in study.trials]
  assert states.count(optuna.trial.TrialState.FAIL) == 1
  assert states.count(optuna.trial.TrialState.COMPLETE) == 2


# ---------------------------------------------------------------------------
# Child processes.


@pytest.mark.slow
def test_runs_killed_by_sigkill_resume_without_losing_a_trial(
    tmp_path, reference, compile_cache):
  """A gradient chain killed after step 6 (checkpoint at 4), then a
  black-box chain killed inside its fourth trial, both resumed."""
  grad_db = f"sqlite:///{tmp_path}/g.db"
  box_db = f"sqlite:///{tmp_path}/b.db"
  grad = {"method": "hoag", "storage": grad_db, "n_steps": N_GRAD, "every": 4}
  box = {"method": "random", "storage": box_db, "n_steps": 6}
  rc, _, _ = _child(tmp_path, [dict(grad, kill_at=6)], cache=compile_cache)
  assert rc == -signal.SIGKILL
  assert len(_load(grad_db).trials) == 7  # steps 0..6; checkpoint at 4
  rc, results, err = _child(tmp_path, [grad, dict(box, kill_in_trial=3)],
                            cache=compile_cache)
  assert rc == -signal.SIGKILL, err
  (resumed,) = results
  assert resumed["steps"] == list(range(N_GRAD))  # none lost or duplicated
  # On CPU the resumed run ends exactly where the uninterrupted one does.
  assert resumed["values"] == reference["hoag"]["values"]
  assert resumed["u"] == reference["hoag"]["u"]
  rc, (box_resumed,), err = _child(tmp_path, [box], cache=compile_cache)
  assert rc == 0, err
  states = [t.state for t in _load(box_db).trials]
  # The trial that was running is marked failed; six trials completed.
  assert states.count(optuna.trial.TrialState.FAIL) == 1
  assert states.count(optuna.trial.TrialState.COMPLETE) == 6
  assert box_resumed["steps"] == list(range(6))
  assert box_resumed["values"] == reference["random"]["values"]


@pytest.mark.slow
def test_gradient_run_killed_at_any_moment_resumes_exactly(
    tmp_path, reference, compile_cache):
  storage = f"sqlite:///{tmp_path}/s.db"
  cfg = {"method": "hoag", "storage": storage, "n_steps": N_GRAD, "every": 1}
  proc = _child(tmp_path, [cfg], wait=False, cache=compile_cache)
  db = tmp_path / "s.db"
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if db.exists():
      try:
        with sqlite3.connect(db, timeout=1) as con:
          count = con.execute("SELECT count(*) FROM trials").fetchone()[0]
      except sqlite3.OperationalError:
        count = 0
      if count >= 3:
        break
    time.sleep(0.01)
  if proc.poll() is not None:
    pytest.skip("the child finished before it could be killed")
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  rc, (result,), err = _child(tmp_path, [cfg], cache=compile_cache)
  assert rc == 0, err
  assert result["steps"] == list(range(N_GRAD))
  assert result["values"] == reference["hoag"]["values"]
  assert result["u"] == reference["hoag"]["u"]


@pytest.mark.slow
def test_two_worker_processes_on_one_study_lose_no_trials(tmp_path,
                                                          compile_cache):
  """Two processes (seeds 0 and 1) share a journal-file gradient study and
  a SQLite black-box study."""
  n = 5
  journal = str(tmp_path / "g.log")
  sqlite = f"sqlite:///{tmp_path}/b.db"
  procs = [_child(tmp_path, [
      {"method": "hoag", "storage": journal, "n_steps": n, "seed": seed,
       "every": 2},
      {"method": "random", "storage": sqlite, "n_steps": n, "seed": seed}],
                  wait=False, cache=compile_cache) for seed in (0, 1)]
  for proc in procs:
    rc, _, err = _finish(proc)
    assert rc == 0, err
  for storage in (journal, sqlite):
    study = _load(storage)
    complete = [t for t in study.trials
                if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(study.trials) == len(complete) == 2 * n
    pairs = sorted((t.user_attrs["chain"], t.user_attrs["step"])
                   for t in complete)
    assert pairs == [(c, s) for c in (0, 1) for s in range(n)]
    assert len({t.number for t in complete}) == 2 * n


OPENER = textwrap.dedent("""
    import sys, time
    from hippojax._src import storage
    start = float(sys.argv[2])
    time.sleep(max(0.0, start - time.time()))
    storage.open_storage(sys.argv[1])
""")


@pytest.mark.parametrize("round_", range(3))
def test_processes_creating_one_new_sqlite_file_at_once_all_open_it(
    tmp_path, round_):
  """Workers started together on a new database must not collide on its
  schema (tables and the alembic version row)."""
  del round_
  url = f"sqlite:///{tmp_path}/new.db"
  start = time.time() + 3.0  # after every child has imported
  procs = [subprocess.Popen([sys.executable, "-c", OPENER, url, str(start)],
                            stderr=subprocess.PIPE, text=True)
           for _ in range(4)]
  errors = [p.communicate(timeout=120)[1] for p in procs]
  assert [p.returncode for p in procs] == [0] * 4, errors
  optuna.create_study(storage=url, study_name="x")
  assert optuna.get_all_study_names(url) == ["x"]


# ---------------------------------------------------------------------------
# Chain leases in the storage.


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_silent_owner_loses_its_lease_and_stops(tmp_path, kind):
  from hippojax._src.lease import ChainLease
  storage = (str(tmp_path / "s.log") if kind == "journal" else
             f"sqlite:///{tmp_path}/s.db")
  study = hippojax.create_study("hoag", storage=storage, study_name="s",
                                **FAST)
  sid = study.optuna_study._study_id
  owner = ChainLease(study.storage, sid, "s", 0, ttl=0.5)
  owner.acquire()
  owner._stop.set()  # its heartbeat stops, as in a hung or cut-off process
  owner._thread.join()
  other = ChainLease(study.storage, sid, "s", 0, ttl=0.5)
  with pytest.raises(hippojax.ChainBusyError, match="is being run by"):
    other.acquire()  # still fresh
  time.sleep(0.7)
  if kind == "journal":  # the journal's lock file is per process; drop it
    owner._release_file_lock()
  other.acquire()
  assert "sent no heartbeat" in other.taken_over
  with pytest.raises(hippojax.ChainBusyError, match="was taken over by"):
    owner.check()
  assert owner.lost
  other.check()  # still the owner
  other.release()
  owner.release()


LEASER = textwrap.dedent("""
    import os, sys, time
    import hippojax
    from hippojax._src.lease import ChainLease
    storage, flags, me = sys.argv[1], sys.argv[2], sys.argv[3]
    study = hippojax.create_study("hoag", storage=storage, study_name="s")
    lease = ChainLease(study.storage, study.optuna_study._study_id, "s", 0)
    open(os.path.join(flags, "ready-" + me), "w").close()
    while not os.path.exists(os.path.join(flags, "go")):
      time.sleep(0.001)
    try:
      lease.acquire()
      won = True
    except hippojax.ChainBusyError:
      won = False
    open(os.path.join(flags, ("won-" if won else "busy-") + me), "w").close()
    while not os.path.exists(os.path.join(flags, "done")):
      time.sleep(0.01)  # the winner holds the lease until all have tried
    if won:
      lease.release()
""")


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_of_workers_starting_one_chain_at_once_exactly_one_wins(tmp_path,
                                                                 kind):
  storage = (str(tmp_path / "s.log") if kind == "journal" else
             f"sqlite:///{tmp_path}/s.db")
  hippojax.create_study("hoag", storage=storage, study_name="s")
  flags = tmp_path / "flags"
  flags.mkdir()
  procs = [subprocess.Popen([sys.executable, "-c", LEASER, storage,
                             str(flags), str(i)], stderr=subprocess.PIPE,
                            text=True) for i in range(4)]

  def wait_for(prefix, n):
    deadline = time.time() + 120
    while time.time() < deadline:
      names = [f for f in os.listdir(flags) if f.startswith(prefix)]
      if len(names) >= n or any(p.poll() is not None for p in procs):
        return names
      time.sleep(0.01)
    return []

  assert len(wait_for("ready-", 4)) == 4
  (flags / "go").touch()  # all four try at once
  outcomes = wait_for(("won-", "busy-"), 4)
  (flags / "done").touch()
  errs = [p.communicate(timeout=120)[1] for p in procs]
  assert [p.returncode for p in procs] == [0] * 4, errs
  assert sorted(f.split("-")[0] for f in outcomes) == ["busy"] * 3 + ["won"]
