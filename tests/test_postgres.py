"""Workers on a real PostgreSQL server, killed and resumed elsewhere.

The server's URL comes from ``HIPPOJAX_TEST_POSTGRES_URL`` (``.ci/postgres``
installs and starts one on 127.0.0.1 and prints it; ``.ci/run`` exports it).
Without it, or when the server does not answer, these tests are skipped and
say why.
"""

import os
import signal
import uuid

import optuna
import pytest

from hippojax._src import storage as storage_lib
# The command-line harness and the uninterrupted reference runs (fixtures).
from test_faults import (BOX, GRAD, N_BOX, N_GRAD, Run, env, reference,  # noqa: F401 pylint: disable=unused-import
                         run, run_beside_a_stopped_owner, start, summary)

URL = os.environ.get("HIPPOJAX_TEST_POSTGRES_URL")


def _reachable() -> str | None:
  if not URL:
    return ("HIPPOJAX_TEST_POSTGRES_URL is not set: no PostgreSQL server to "
            "test against (.ci/postgres installs and starts one)")
  try:
    import psycopg
    with psycopg.connect(URL.replace("postgresql+psycopg://",
                                     "postgresql://"), connect_timeout=5):
      pass
  except Exception as e:  # pylint: disable=broad-except
    return f"the PostgreSQL server at HIPPOJAX_TEST_POSTGRES_URL: {e}"
  return None


pytestmark = pytest.mark.skipif(_reachable() is not None,
                                reason=str(_reachable()))


def _argv(base, name, seed, steps):
  argv = list(base)
  argv[argv.index("--study") + 1] = name
  return ["run", *argv, "--storage", URL, "--seed", str(seed), "--steps",
          str(steps), "--checkpoint-every", "3"]


def _chains(name):
  study = optuna.load_study(study_name=name,
                            storage=storage_lib.open_storage(URL).storage)
  out = {}
  for t in study.trials:
    if t.user_attrs.get("orphaned"):
      continue
    out.setdefault(t.user_attrs["chain"], []).append(t)
  for trials in out.values():
    trials.sort(key=lambda t: t.user_attrs["step"])
  return out, study


@pytest.mark.slow
def test_gradient_workers_killed_and_resumed_in_another_directory(
    env, tmp_path, reference):
  name = f"grad-{uuid.uuid4().hex[:8]}"
  kill = {"at": "record", "step": 5, "signal": "SIGKILL"}
  procs = [start(env, tmp_path / "a", _argv(GRAD, name, seed, N_GRAD),
                 faults=[kill] if seed < 2 else [])
           for seed in range(3)]
  runs = [Run(p) for p in procs]
  assert [r.rc for r in runs] == [-signal.SIGKILL, -signal.SIGKILL, 0], [
      r.err for r in runs]
  # Resumed from another working directory: nothing of the first is used.
  resumed = [start(env, tmp_path / "b", _argv(GRAD, name, seed, N_GRAD))
             for seed in (0, 1)]
  runs = [Run(p) for p in resumed]
  assert [r.rc for r in runs] == [0, 0], [r.err for r in runs]
  # From the checkpoint in the database at step 3, not from step 0.
  assert [r.engine_steps for r in runs] == [N_GRAD - 3] * 2
  assert not os.listdir(tmp_path / "b")
  chains, study = _chains(name)
  assert sorted(chains) == [0, 1, 2]
  for seed, trials in chains.items():
    assert [t.user_attrs["step"] for t in trials] == list(range(N_GRAD))
  assert len(study.trials) == 3 * N_GRAD
  # Bit for bit the chain an uninterrupted SQLite run records.
  assert summary(chains[0]) == reference["grad"]


@pytest.mark.slow
def test_same_seed_from_two_directories_runs_once(env, tmp_path, reference):
  name = f"dup-{uuid.uuid4().hex[:8]}"
  _, second = run_beside_a_stopped_owner(env, tmp_path,
                                        _argv(GRAD, name, 0, N_GRAD))
  assert f"seed 0 of study {name!r} is being run by" in second.err
  chains, study = _chains(name)
  assert [t.user_attrs["step"] for t in chains[0]] == list(range(N_GRAD))
  assert len(study.trials) == N_GRAD
  assert summary(chains[0]) == reference["grad"]


@pytest.mark.slow
def test_blackbox_workers_killed_and_resumed_in_another_directory(
    env, tmp_path, reference):
  name = f"box-{uuid.uuid4().hex[:8]}"
  kill = {"at": "tell", "step": 2, "signal": "SIGKILL"}
  procs = [start(env, tmp_path / "a", _argv(BOX, name, seed, N_BOX),
                 faults=[kill] if seed == 0 else []) for seed in (0, 1)]
  runs = [Run(p) for p in procs]
  assert [r.rc for r in runs] == [-signal.SIGKILL, 0], [r.err for r in runs]
  again = run(env, tmp_path / "b", _argv(BOX, name, 0, N_BOX))
  assert again.rc == 0, again.err
  chains, study = _chains(name)
  for trials in chains.values():
    assert [t.user_attrs["step"] for t in trials] == list(range(N_BOX))
  orphans = [t for t in study.trials if t.user_attrs.get("orphaned")]
  assert [(t.user_attrs["chain"], t.user_attrs["step"], t.state.name)
          for t in orphans] == [(0, 2, "FAIL")]
  assert not [t for t in study.trials
              if t.state == optuna.trial.TrialState.RUNNING]
