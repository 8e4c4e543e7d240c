"""Running one chain of a study: gradient outer steps or black-box trials.

:func:`run_gradient` and :func:`run_blackbox` are called by
:meth:`hippojax.Study.optimize` for the chain (seed) this process owns.
"""

import math
import os
import time

import jax

from hippojax._src import outer
from hippojax._src import storage as storage_lib


def _study_lib():
  # study.py imports this module; import it back lazily.
  from hippojax._src import study
  return study


def _optuna():
  return _study_lib()._optuna()  # pylint: disable=protected-access


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
  }


def run_gradient(study, problem, options, n_steps, timeout, ckpt_dir,
                  show_progress, callbacks):
  start = time.perf_counter()
  engine = outer.get_engine(problem, study.method, options)
  uid = study.optuna_study.user_attrs.get(_study_lib()._ATTR + "uuid")
  meta_base = {"method": study.method, "options": options,
               "problem": problem.name, "space": problem.space.describe(),
               "study": study.study_name, "uuid": uid, "chain": study.seed}
  existing = {t.user_attrs.get("step") for t in study.chain_trials()}
  live = study._live.get(study.seed)  # pylint: disable=protected-access
  checkpointer = None
  if ckpt_dir is not None:
    from hippojax._src.checkpoint import Checkpointer
    checkpointer = Checkpointer(os.path.join(ckpt_dir, f"chain-{study.seed}"))
  if live is not None and live[0] is engine:
    _, state, wall0 = live
  else:
    state, wall0 = engine.init(study.seed), 0.0
    if checkpointer is not None:
      state, wall0 = _restore(checkpointer, state, meta_base)
  step = int(state.step)
  per_step = engine.inner_steps
  bar = _progress(show_progress, n_steps, step,
                  f"{problem.name} {study.method}")
  last_saved = step
  wall = wall0

  def save():
    checkpointer.save(step, state, dict(meta_base, wall_seconds=wall,
                                        inner_steps=step * per_step))

  try:
    while n_steps is None or step < n_steps:
      if timeout is not None and time.perf_counter() - start >= timeout:
        break
      state, rec = engine.step(state)
      rec = _host_record(rec)
      wall = wall0 + time.perf_counter() - start
      if step not in existing:  # a replayed step after a crash is not re-added
        _study_lib()._record_gradient_trial(study, problem, step, rec, wall,
                               (step + 1) * per_step)
      step += 1
      if bar is not None:
        bar.update(1)
        bar.set_postfix(val_loss=f"{rec['val_loss']:.5g}")
      for cb in callbacks:
        cb(study, dict(rec, step=step - 1, wall_seconds=wall))
      if checkpointer is not None and step % study.checkpoint_every == 0:
        save()
        last_saved = step
      if study._stop:  # pylint: disable=protected-access
        break
  finally:
    if bar is not None:
      bar.close()
    live = study._live  # pylint: disable=protected-access
    live[study.seed] = (engine, state, wall)
    if checkpointer is not None:
      if step != last_saved:
        save()
      checkpointer.close()


def _restore(checkpointer, template, meta_base):
  """The chain's checkpointed state and wall time, or the fresh template."""
  meta = checkpointer.meta()
  if meta is not None and meta.get("uuid") != meta_base["uuid"]:
    checkpointer.clear()  # left over from a deleted study of the same name
    meta = None
  if meta is None:
    return template, 0.0
  for key in ("method", "problem", "space", "options"):
    if _study_lib()._canonical(meta.get(key)) != _study_lib()._canonical(meta_base[key]):
      raise ValueError(
          f"the checkpoint in {checkpointer.directory} was written with {key} "
          f"{_study_lib()._short(meta.get(key))}, not {_study_lib()._short(meta_base[key])}; refusing "
          "to resume from it. Use another study name.")
  state, meta = checkpointer.restore(template)
  return state, float(meta["wall_seconds"])


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
  """Marks RUNNING trials of dead processes on this host as FAIL."""
  optuna = _optuna()
  for t in study.trials:
    if (t.state == optuna.trial.TrialState.RUNNING and
        storage_lib.is_dead_local_worker(t.user_attrs.get("worker"))):
      trial_id = t._trial_id  # pylint: disable=protected-access
      try:
        study.storage.set_trial_state_values(trial_id,
                                             optuna.trial.TrialState.FAIL)
      except RuntimeError:
        pass  # finished by someone else meanwhile


def run_blackbox(study, problem, options, n_steps, timeout, ckpt_dir,
                  show_progress, callbacks):
  del ckpt_dir
  optuna = _optuna()
  start = time.perf_counter()
  _fail_orphans(study)
  # Finished trials of this chain (complete, or failed with a non-finite
  # loss); trials of killed processes carry no chain attribute.
  done = [t for t in study.chain_trials() if t.state.is_finished()]
  wall0 = max((t.user_attrs.get("wall_seconds", 0.0) for t in done),
              default=0.0)
  step = len(done)
  per_trial = options["inner_steps"]
  space = problem.space
  bar = _progress(show_progress, n_steps, step,
                  f"{problem.name} {study.method}")
  ostudy = study.optuna_study
  try:
    while n_steps is None or step < n_steps:
      if timeout is not None and time.perf_counter() - start >= timeout:
        break
      ostudy.sampler = _sampler(study, options, step)
      trial = ostudy.ask()
      trial.set_user_attr("worker", storage_lib.worker_id())
      hparams = space.suggest(trial)
      result = problem.validate(hparams, seed=study.seed, num_steps=per_trial)
      wall = wall0 + time.perf_counter() - start
      for key, value in (("chain", study.seed), ("step", step),
                         ("wall_seconds", wall),
                         ("inner_steps", (step + 1) * per_trial)):
        trial.set_user_attr(key, value)
      if math.isfinite(result):
        ostudy.tell(trial, result)
      else:
        ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
      step += 1
      if bar is not None:
        bar.update(1)
        bar.set_postfix(val_loss=f"{result:.5g}")
      for cb in callbacks:
        cb(study, {"val_loss": result, "hparams": hparams, "step": step - 1,
                   "wall_seconds": wall})
      if study._stop:  # pylint: disable=protected-access
        break
  finally:
    if bar is not None:
      bar.close()
