"""Running one chain of a study: gradient outer steps or black-box trials.

:func:`run_gradient` and :func:`run_blackbox` are called by
:meth:`hippojax.Study.optimize` for the chain (seed) this process owns.
"""

import contextlib
import datetime
import math
import os
import time

import jax
import numpy as np

from hippojax._src import outer
from hippojax._src import pruning
from hippojax._src import storage as storage_lib
from hippojax._src import trials as trials_lib
from hippojax._src.stochastic import engine as single_loop
from hippojax._src.stochastic import maid_chain


def _study_lib():
  # study.py imports this module; import it back lazily.
  from hippojax._src import study
  return study


def _optuna():
  return _study_lib()._optuna()  # pylint: disable=protected-access


# ---------------------------------------------------------------------------
# What a chain needs before it starts.


def check_bounds(space, dtype: str) -> None:
  """Refuses bounds that the hyperparameters' dtype cannot hold.

  A gradient chain maps ``u`` to ``low + (high - low) * sigmoid(u)`` in
  ``dtype``; a black-box trial trains with the sampled value in ``dtype``.
  Bounds beyond ``finfo(dtype).max``, or whose width is, would make the
  model see ``inf`` while the trial records a finite number.

  Raises:
    ValueError: naming the hyperparameter, its bounds and the dtype's range.
  """
  big = float(np.finfo(np.dtype(dtype)).max)
  for p in space:
    low, high = float(p.low), float(p.high)
    if p.log:
      ok = math.isfinite(math.log(high) - math.log(low))
    else:
      ok = max(abs(low), abs(high), high - low) <= big
    if not ok or not max(abs(low), abs(high)) <= big:
      raise ValueError(
          f"hyperparameter {p.name!r} has bounds [{low:g}, {high:g}], which "
          f"{dtype} cannot represent (its largest value is {big:.4g}, and "
          "the width high - low must fit too); narrow the bounds, or enable "
          "float64 with jax.config.update('jax_enable_x64', True).")


@contextlib.contextmanager
def lease(study):
  """Holds the study's lease on its chain (``study.seed``) while it runs."""
  from hippojax._src.lease import ChainLease, journal_lock_path
  ostudy = study.optuna_study
  journal = journal_lock_path(study.storage)
  lock = (None if journal is None else
          f"{journal}.{storage_lib.safe_name(study.study_name)}"
          f".chain-{study.seed}.lock")
  held = ChainLease(study.storage, ostudy._study_id, study.study_name,  # pylint: disable=protected-access
                    study.seed, lock_path=lock)
  with storage_lib.writing(study.storage_url, "taking the chain's lease"):
    held.acquire()
  try:
    if held.taken_over:
      storage_lib.logger().warning("hippojax: took over seed %d of study %r: %s.", study.seed,
                  study.study_name, held.taken_over)
    yield held
  finally:
    held.release()


def checkpointer(study):
  """Where the chain's state is checkpointed: the storage, or a directory.

  Raises:
    hippojax.StorageError: if a given directory cannot be written.
  """
  optuna = _optuna()
  if study._checkpoint_dir is None:  # pylint: disable=protected-access
    if isinstance(study.storage, optuna.storages.InMemoryStorage):
      return None
    from hippojax._src.checkpoint import StorageCheckpointer
    return StorageCheckpointer(study.storage,
                               study.optuna_study._study_id,  # pylint: disable=protected-access
                               study.seed)
  from hippojax._src.checkpoint import Checkpointer
  root = os.fspath(study._checkpoint_dir)  # pylint: disable=protected-access
  path = os.path.join(root, storage_lib.safe_name(study.study_name),
                      f"chain-{study.seed}")
  if "://" not in root:
    try:
      os.makedirs(path, exist_ok=True)
      probe = os.path.join(path, f".write-test-{os.getpid()}")
      with open(probe, "w"):
        pass
      os.remove(probe)
    except OSError as e:
      raise storage_lib.StorageError(
          f"cannot write checkpoints to {root!r}: "
          f"{storage_lib.first_line(e)}") from None
  with storage_lib.writing(path, "opening the checkpoint directory"):
    return Checkpointer(path)


# ---------------------------------------------------------------------------
# Gradient chains.


def _progress(show: bool, total, initial: int, desc: str):
  if not show:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc=desc, unit="step",
              dynamic_ncols=True)


def _host_record(rec) -> dict:
  rec = jax.device_get(rec)
  return {
      "val_loss": float(rec.val_loss),
      "hparams": rec.hparams,
      "grad_norm": float(rec.grad_norm),
      "num_iters": int(rec.num_iters),
      "residual": float(rec.residual),
      "converged": bool(rec.converged),
      "finite": bool(rec.finite),
      "fixed_point_residual": float(rec.fixed_point_residual),
      "damping": float(rec.damping),
      "polish_steps": int(rec.polish_steps),
      "train_steps": int(rec.train_steps),
  }


class ChainFailedError(RuntimeError):
  """A chain's outer steps kept failing; it stopped (see ``max_failed_steps``)."""


def _failed(rec) -> bool:
  return not (math.isfinite(rec["val_loss"]) and rec["finite"])


def _failed_trial(t) -> bool:
  return (t.value is None or t.user_attrs.get("hypergrad_finite") is False)


def _chain_failed(study, first: int, last: int, limit: int):
  return ChainFailedError(
      f"seed {study.seed} of study {study.study_name!r} stopped: its last "
      f"{last - first + 1} outer steps ({first}..{last}) failed, with a "
      "non-finite validation loss or hypergradient (max_failed_steps="
      f"{limit}). Its trials and state are recorded; the hyperparameters "
      "cannot move from here. Lower outer_lr, narrow the search space or "
      "start a new study name.")


def run_gradient(study, problem, options, n_steps, timeout, checkpointer,
                 lease, show_progress, callbacks):
  """Runs a gradient chain, write-ahead: record the trial, then advance.

  The state kept in memory, in ``study._live`` and in checkpoints is always
  that of the last step whose trial is recorded, so an interruption at any
  point (a signal, an exception, a full disk) resumes to the same chain.
  Steps between the newest checkpoint and the last recorded trial are
  recomputed without being recorded again.
  """
  start = time.perf_counter()
  engine = (single_loop.get_engine if study.method in single_loop.SINGLE_LOOP
            else maid_chain.get_engine if study.method == "maid"
            else outer.get_engine)(problem, study.method, options)
  uid = study.optuna_study.user_attrs.get(_study_lib()._ATTR + "uuid")
  meta_base = {"method": study.method, "options": options,
               "problem": problem.name, "space": problem.space.describe(),
               "study": study.study_name, "uuid": uid, "chain": study.seed}
  recorded = {t.user_attrs.get("step"): t for t in study.chain_trials()}
  state, wall0 = trials_lib.initial_state(engine, study.seed), 0.0
  if checkpointer is not None:
    with storage_lib.writing(study.storage_url, "reading the checkpoint"):
      state, wall0 = _restore(checkpointer, state, meta_base)
  live = study._live.get(study.seed)  # pylint: disable=protected-access
  # In the same process, the last state is newer than any checkpoint (if
  # every step before it is still on record).
  if (live is not None and live[0] is engine and
      int(live[1].step) > int(state.step) and
      all(k in recorded for k in range(int(live[1].step)))):
    _, state, wall0 = live
  step = int(state.step)
  # Wall-clock never runs backwards, even when replaying recorded steps.
  wall0 = max([wall0] + [t.user_attrs.get("wall_seconds") or 0.0
                         for t in recorded.values()])
  best = min((t.value for t in recorded.values() if t.value is not None),
             default=math.inf)
  per_step = engine.inner_steps
  # Training beyond inner_steps per step (polishing half steps; MAID's
  # train-to-ε solves, more or fewer) counts in the chain's inner_steps.
  extra = sum(trials_lib.extra_training(t.user_attrs, per_step)
              for k, t in recorded.items()
              if isinstance(k, int) and k < step)
  limit = study.max_failed_steps
  streak = 0
  while step - streak - 1 in recorded and _failed_trial(
      recorded[step - streak - 1]):
    streak += 1
  if streak >= limit:
    raise _chain_failed(study, step - streak, step - 1, limit)
  bar = _progress(show_progress, n_steps, step,
                  f"{problem.name} {study.method}")
  last_saved = step
  wall = wall0
  pending = None  # an exception to re-raise after the final save

  def save():
    with storage_lib.writing(checkpointer.directory, "saving a checkpoint"):
      checkpointer.save(step, state, dict(
          meta_base, wall_seconds=wall, inner_steps=step * per_step))

  try:
    while n_steps is None or step < n_steps:
      if timeout is not None and time.perf_counter() - start >= timeout:
        break
      started = datetime.datetime.now()
      new_state, rec = engine.step(state)
      rec = _host_record(rec)
      value = None
      if step in recorded:  # a replayed step is not recorded again
        failed = _failed_trial(recorded[step])
        new_wall = wall0 + time.perf_counter() - start
      else:
        lease.check()
        with storage_lib.writing(study.storage_url, "recording a trial"):
          out = trials_lib.record_gradient_trial(
              study, problem, step, rec, started=started,
              wall=lambda: wall0 + time.perf_counter() - start,
              inner_steps=per_step, extra_steps=extra)
        new_wall, value = out["wall_seconds"], out["value"]
        failed = _failed(rec) or not math.isfinite(out["value"])
        if math.isfinite(out["value"]):
          best = min(best, out["value"])
      # The trial is recorded: only now does the chain move on.
      extra += trials_lib.extra_training(rec, per_step)
      state, wall, step = new_state, new_wall, step + 1
      study._live[study.seed] = (engine, state, wall)  # pylint: disable=protected-access
      streak = streak + 1 if failed else 0
      if bar is not None:
        bar.update(1)
        bar.set_postfix(best=f"{best:.5g}")
      for cb in callbacks:
        cb(study, dict(rec, step=step - 1, wall_seconds=wall, value=value))
      if checkpointer is not None and step % study.checkpoint_every == 0:
        save()
        last_saved = step
      if streak >= limit:
        pending = _chain_failed(study, step - streak, step - 1, limit)
        break
      if study._stop:  # pylint: disable=protected-access
        break
  except BaseException:
    # Save what is recorded, but never mask the reason we are stopping (nor
    # write over the checkpoints of a process that took the chain over).
    if checkpointer is not None and step != last_saved and not lease.lost:
      try:
        save()
      except Exception:  # pylint: disable=broad-except
        pass
    raise
  else:
    if checkpointer is not None and step != last_saved:
      save()
  finally:
    if bar is not None:
      bar.close()
    if checkpointer is not None:
      checkpointer.close()
  if pending is not None:
    raise pending


def _restore(checkpointer, template, meta_base):
  """The chain's checkpointed state and wall time, or the fresh template."""
  meta = checkpointer.meta()
  if meta is not None and meta.get("uuid") != meta_base["uuid"]:
    checkpointer.clear()  # left over from a deleted study of the same name
    meta = None
  if meta is None:
    return template, 0.0
  for key in ("method", "problem", "space", "options"):
    if _study_lib()._canonical(meta.get(key)) != _study_lib()._canonical(
        meta_base[key]):
      raise ValueError(
          f"the checkpoint in {checkpointer.directory} was written with {key} "
          f"{_study_lib()._short(meta.get(key))}, not "
          f"{_study_lib()._short(meta_base[key])}; refusing to resume from "
          "it. Use another study name.")
  restored = checkpointer.restore(template)
  if restored is None:
    return template, 0.0
  state, meta = restored
  return state, float(meta.get("wall_seconds", 0.0))


# ---------------------------------------------------------------------------
# Black-box chains.


def _sampler(study, options, k: int):
  """A sampler seeded by (seed, trial index): resumable and reproducible."""
  optuna = _optuna()
  seed = (study.seed * 1_000_003 + k) % (2**32)
  if study.method == "random":
    return optuna.samplers.RandomSampler(seed=seed)
  return optuna.samplers.TPESampler(
      seed=seed, n_startup_trials=options["n_startup_trials"],
      multivariate=options["multivariate"])


def _fail_orphans(study) -> None:
  """Fails the trials left ``RUNNING`` by dead owners of this chain.

  The caller holds the chain's lease, so every ``RUNNING`` trial of its chain
  was left by an earlier owner that died. Older trials without a chain
  attribute are failed when their worker is a dead process of this host.
  Each is marked ``orphaned`` before it is failed, so that the chain does
  not count it and runs its step again.
  """
  optuna = _optuna()
  storage = study.optuna_study._storage  # pylint: disable=protected-access
  running = storage.get_all_trials(
      study.optuna_study._study_id, deepcopy=False,  # pylint: disable=protected-access
      states=(optuna.trial.TrialState.RUNNING,))
  for t in running:
    chain = t.user_attrs.get("chain")
    if chain != study.seed and not (
        chain is None and
        storage_lib.is_dead_local_worker(t.user_attrs.get("worker"))):
      continue
    trial_id = t._trial_id  # pylint: disable=protected-access
    try:
      storage.set_trial_user_attr(trial_id, "orphaned", True)
      storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    except RuntimeError:
      pass  # finished by someone else meanwhile


def _ask(study, step: int):
  """A new ``RUNNING`` trial that carries its chain, step and worker.

  ``Study.ask()`` creates the trial first and its attributes later; a
  process killed in between would leave a trial that belongs to no chain.
  Here the attributes are part of the one write that creates it.
  """
  optuna = _optuna()
  ostudy = study.optuna_study
  template = optuna.trial.FrozenTrial(
      number=-1, state=optuna.trial.TrialState.RUNNING, value=None,
      datetime_start=datetime.datetime.now(), datetime_complete=None,
      params={}, distributions={},
      user_attrs={"chain": study.seed, "step": step,
                  "worker": storage_lib.worker_id()},
      system_attrs={}, intermediate_values={}, trial_id=-1)
  # The study's own (cached) storage object must see the new trial.
  trial_id = ostudy._storage.create_new_trial(  # pylint: disable=protected-access
      ostudy._study_id, template_trial=template)  # pylint: disable=protected-access
  ostudy._thread_local.cached_all_trials = None  # pylint: disable=protected-access
  return optuna.Trial(ostudy, trial_id)


def run_blackbox(study, problem, options, n_steps, timeout, lease,
                 show_progress, callbacks):
  """Runs a black-box chain; a trial counts once it is told."""
  optuna = _optuna()
  start = time.perf_counter()
  with storage_lib.writing(study.storage_url, "recovering trials"):
    _fail_orphans(study)
  # Finished trials of this chain (complete, pruned, or failed with a
  # non-finite loss); chain_trials leaves out the orphaned ones.
  done = [t for t in study.chain_trials() if t.state.is_finished()]
  wall0 = max((t.user_attrs.get("wall_seconds", 0.0) for t in done),
              default=0.0)
  spent = max((t.user_attrs.get("inner_steps", 0) for t in done), default=0)
  best = min((t.value for t in done
              if t.state == optuna.trial.TrialState.COMPLETE),
             default=math.inf)
  step = len(done)
  per_trial = options["inner_steps"]
  space = problem.space
  prune = options.get("pruner", "none") != "none"
  deadline = None if timeout is None else start + timeout
  bar = _progress(show_progress, n_steps, step,
                  f"{problem.name} {study.method}")
  ostudy = study.optuna_study
  ostudy.pruner = pruning.make_pruner(options.get("pruner", "none"))
  try:
    while n_steps is None or step < n_steps:
      if timeout is not None and time.perf_counter() - start >= timeout:
        break
      ostudy.sampler = _sampler(study, options, step)
      lease.check()
      with storage_lib.writing(study.storage_url, "starting a trial"):
        trial = _ask(study, step)
      hparams = space.suggest(trial)
      out = pruning.evaluate(problem, hparams, trial, seed=study.seed,
                             num_steps=per_trial, prune=prune,
                             # the first complete trial is never cut short
                             deadline=deadline if best < math.inf else None)
      result = out["value"]
      spent += out["trained_steps"]
      wall = wall0 + time.perf_counter() - start
      attrs = [("chain", study.seed), ("step", step), ("wall_seconds", wall),
               ("inner_steps", spent),
               ("trained_steps", out["trained_steps"])]
      if out["pruned_by"]:
        attrs.append(("pruned_by", out["pruned_by"]))
      with storage_lib.writing(study.storage_url, "recording a trial"):
        for key, value in attrs:
          trial.set_user_attr(key, value)
        if out["pruned_by"]:
          ostudy.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif math.isfinite(result):
          ostudy.tell(trial, result)
          best = min(best, result)
        else:
          ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
      step += 1
      if bar is not None:
        bar.update(1)
        bar.set_postfix(best=f"{best:.5g}")
      for cb in callbacks:
        cb(study, {"val_loss": result, "hparams": hparams, "step": step - 1,
                   "wall_seconds": wall,
                   "value": None if out["pruned_by"] else result})
      if study._stop:  # pylint: disable=protected-access
        break
  finally:
    if bar is not None:
      bar.close()
