"""Optuna-shaped studies: gradient methods and black-box baselines.

``create_study(method=…)`` returns a :class:`Study` whose ``optimize(problem,
n_steps=…, timeout=…)`` runs one *chain* of trials per seed:

* gradient methods (``t1t2``, ``ift``, ``hoag``, ``drmad``, ``reverse``): one
  Optuna trial per outer step, added complete with its hyperparameters,
  validation loss and diagnostics; the chain's state is checkpointed with
  orbax and resumed after a crash;
* black-box methods (``random``, ``tpe``): one Optuna trial per full inner
  training, sampled by Optuna's ``RandomSampler`` / ``TPESampler``.

Trials of every method carry the user attributes ``chain`` (the seed),
``step``, ``wall_seconds`` and ``inner_steps`` (both cumulative over the
chain), so methods can be compared by wall-clock and by training steps.
Optuna itself is imported only when a study is created.
"""

import json
import math
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np

from hippojax._src import outer
from hippojax._src import problems as problems_lib
from hippojax._src import storage as storage_lib
from hippojax._src.stochastic import engine as single_loop

GRADIENT_METHODS = outer.GRADIENT_METHODS + single_loop.SINGLE_LOOP
BLACKBOX_METHODS = ("random", "tpe")
METHODS = GRADIENT_METHODS + BLACKBOX_METHODS

# Options of each method: name -> default (``None``: the problem's default).
_COMMON = {"inner_steps": None}
_GRADIENT = {**_COMMON, "outer_lr": None}
METHOD_OPTIONS = {
    "t1t2": dict(_GRADIENT),
    "ift": {**_GRADIENT, "num_iters": 10},
    "hoag": {**_GRADIENT, "tol": 1e-4, "maxiter": 100},
    "drmad": {**_GRADIENT, "unroll_steps": 100},
    "reverse": {**_GRADIENT, "unroll_steps": 100, "remat": False},
    "soba": {**_COMMON, "outer_lr": 0.05, "linear_rate": 1.0,
             "damping": 0.0},
    "saba": {**_COMMON, "outer_lr": 0.05, "linear_rate": 1.0,
             "damping": 0.0},
    "amigo": {**_COMMON, "outer_lr": 0.05, "linear_rate": 1.0,
              "damping": 0.0, "warm_steps": 5, "linear_steps": 5},
    "random": dict(_COMMON),
    "tpe": {**_COMMON, "n_startup_trials": 10, "multivariate": False},
}

_ATTR = "hippojax."  # prefix of the study's user attributes


def _check_option(method: str, name: str, value: Any) -> Any:
  ints = {"inner_steps": 1, "num_iters": 0, "maxiter": 1, "unroll_steps": 1,
          "n_startup_trials": 0, "warm_steps": 1, "linear_steps": 1}
  if name in ints:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise TypeError(f"{method} option {name} must be an int, got "
                      f"{value!r}.")
    if value < ints[name]:
      raise ValueError(f"{method} option {name} must be >= {ints[name]}, got "
                       f"{value!r}.")
    return int(value)
  if name == "damping":
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        not 0 <= value < math.inf):
      raise ValueError(f"{method} option damping must be a number >= 0, got "
                       f"{value!r}.")
    return float(value)
  if name in ("outer_lr", "tol", "linear_rate"):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise TypeError(f"{method} option {name} must be a number, got "
                      f"{value!r}.")
    if not value > 0 or not math.isfinite(value):
      raise ValueError(f"{method} option {name} must be > 0, got {value!r}.")
    return float(value)
  if name in ("remat", "multivariate"):
    if isinstance(value, bool):
      return value
    if name == "remat" and isinstance(value, int) and value >= 1:
      return int(value)
    raise TypeError(f"{method} option {name} must be a bool, got {value!r}.")
  return value


def check_method(method: str, options: Mapping[str, Any]) -> dict:
  """Validates ``method`` and its options; returns the given options.

  Raises:
    ValueError: for an unknown method or option, listing the choices.
  """
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; choose one of "
                     f"{', '.join(METHODS)}.")
  allowed = METHOD_OPTIONS[method]
  out = {}
  for name, value in options.items():
    if name not in allowed:
      raise ValueError(f"unknown option {name!r} for method {method!r}; its "
                       f"options are {', '.join(sorted(allowed))}.")
    out[name] = _check_option(method, name, value)
  return out


def resolve_options(method: str, options: Mapping[str, Any], problem) -> dict:
  """Fills in defaults (the problem's ``inner_steps`` and ``outer_lr``)."""
  out = {}
  for name, default in METHOD_OPTIONS[method].items():
    value = options.get(name, default)
    if value is None:
      value = getattr(problem, name)
    out[name] = value
  out["dtype"] = np.dtype(jax.numpy.zeros(()).dtype).name
  return out


def _optuna():
  import optuna
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  return optuna


def create_study(method: str = "hoag", *, storage: Any = None,
                 study_name: str | None = None, load_if_exists: bool = True,
                 seed: int = 0, checkpoint_dir: str | None = None,
                 checkpoint_every: int = 10, **method_options) -> "Study":
  """Creates (or loads) a hippojax study.

  Args:
    method: ``"t1t2"``, ``"ift"``, ``"hoag"``, ``"drmad"``, ``"reverse"``
      (gradient methods), ``"soba"``, ``"saba"``, ``"amigo"`` (single-loop
      gradient methods for minibatch problems: one trial is a round of
      ``inner_steps`` minibatch steps, see
      :mod:`hippojax._src.stochastic.engine`) or ``"random"``, ``"tpe"``
      (Optuna samplers).
    storage: where trials are recorded: ``None`` for the SQLite file
      ``hippojax.db`` in the working directory, a SQLAlchemy URL,
      ``"journal:PATH"`` (or a ``.log`` path) for a journal file,
      ``":memory:"``, or an Optuna storage object.
    study_name: the Optuna study name; ``None`` means
      ``"<problem>-<method>"``, fixed when :meth:`Study.optimize` is first
      called.
    load_if_exists: resume a study of that name (refused if it was run with
      another method, problem, search space or options).
    seed: the chain this process runs: it seeds the inner initialisation and
      the sampler. Several processes may share a study with different seeds.
    checkpoint_dir: where gradient chains are checkpointed; ``None`` for
      ``<file>.checkpoints`` next to a SQLite or journal file,
      ``./hippojax-checkpoints`` for other URLs, and no checkpoints for
      ``":memory:"``.
    checkpoint_every: checkpoint a gradient chain every this many outer steps
      (and when ``optimize`` returns).
    **method_options: ``inner_steps`` (training steps per trial or outer step;
      default the problem's), and for gradient methods ``outer_lr`` (Adam step
      on the unconstrained hyperparameters; default the problem's);
      ``ift``: ``num_iters`` (10); ``hoag``: ``tol`` (1e-4), ``maxiter``
      (100); ``drmad``/``reverse``: ``unroll_steps`` (100, the differentiated
      tail of the inner budget); ``reverse``: ``remat`` (False); ``tpe``:
      ``n_startup_trials`` (10), ``multivariate`` (False); ``soba``,
      ``saba``, ``amigo``: ``outer_lr`` (0.05, Adam per minibatch),
      ``linear_rate`` (1.0), ``damping`` (0.0); ``amigo``: ``warm_steps`` (5),
      ``linear_steps`` (5).

  Returns:
    A :class:`Study`.

  Raises:
    ValueError: for an unknown method or option, or invalid values.
    hippojax.StorageError: if the storage cannot be opened.

  Examples:
    >>> import hippojax
    >>> study = hippojax.create_study(method="hoag", storage=":memory:")
    >>> _ = study.optimize("ridge-diabetes", n_steps=3)
    >>> len(study.trials)
    3
  """
  options = check_method(method, method_options)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise TypeError(f"seed must be an int, got {seed!r}.")
  if seed < 0:
    raise ValueError(f"seed must be >= 0, got {seed!r}.")
  if isinstance(checkpoint_every, bool) or not isinstance(
      checkpoint_every, (int, np.integer)) or checkpoint_every < 1:
    raise ValueError(f"checkpoint_every must be an int >= 1, got "
                     f"{checkpoint_every!r}.")
  if study_name is not None and (not isinstance(study_name, str) or
                                 not study_name):
    raise ValueError(f"study_name must be a non-empty string or None, got "
                     f"{study_name!r}.")
  resolved = storage_lib.open_storage(storage)
  return Study(method, options, resolved, study_name, bool(load_if_exists),
               int(seed), checkpoint_dir, int(checkpoint_every))


class Study:
  """A study of one method: trials in Optuna storage, chains per seed.

  Use :func:`create_study` to make one. The underlying ``optuna.Study`` is
  :attr:`optuna_study`, so ``optuna.visualization`` and ``optuna-dashboard``
  work on it.
  """

  def __init__(self, method, options, resolved, study_name, load_if_exists,
               seed, checkpoint_dir, checkpoint_every):
    self.method = method
    self.options = options
    self.seed = seed
    self.checkpoint_every = checkpoint_every
    self._resolved = resolved
    self._name = study_name
    self._load_if_exists = load_if_exists
    self._checkpoint_dir = checkpoint_dir
    self._optuna_study = None
    self._live = {}  # seed -> (engine, state, wall): continue in-process
    self._stop = False
    self.problem = None
    if study_name is not None:
      self._open(study_name)

  # -- Optuna study ---------------------------------------------------------

  @property
  def study_name(self) -> str | None:
    return self._name

  @property
  def storage(self):
    """The Optuna storage object."""
    return self._resolved.storage

  @property
  def optuna_study(self):
    """The underlying ``optuna.Study`` (after a name is known)."""
    if self._optuna_study is None:
      raise RuntimeError("this study has no name yet: call optimize(problem, "
                         "...) or pass study_name to create_study.")
    return self._optuna_study

  def _open(self, name: str) -> None:
    optuna = _optuna()
    try:
      study = optuna.create_study(storage=self._resolved.storage,
                                  study_name=name, direction="minimize",
                                  load_if_exists=self._load_if_exists)
    except optuna.exceptions.DuplicatedStudyError:
      raise ValueError(
          f"a study named {name!r} already exists in {self._resolved.url}; "
          "pass load_if_exists=True to resume it or choose another "
          "name.") from None
    attrs = study.user_attrs
    recorded = attrs.get(_ATTR + "method")
    if recorded is None and study.trials:
      raise ValueError(
          f"study {name!r} in {self._resolved.url} already has trials that "
          "hippojax did not record; choose another study name.")
    if recorded is not None and recorded != self.method:
      raise ValueError(
          f"study {name!r} was run with method {recorded!r}; refusing to "
          f"resume it with method {self.method!r}: its trials, checkpoints "
          "and comparisons would mix two methods. Use another study name "
          "(e.g. --study NAME) for this method.")
    if recorded is None:
      study.set_user_attr(_ATTR + "method", self.method)
      study.set_user_attr(_ATTR + "uuid", uuid.uuid4().hex)
    self._name = name
    self._optuna_study = study

  def _bind_problem(self, problem, options: dict) -> None:
    study = self.optuna_study
    attrs = study.user_attrs
    space = problem.space.describe()
    checks = {"problem": problem.name, "space": space, "options": options}
    for key, value in checks.items():
      stored = attrs.get(_ATTR + key)
      if stored is None:
        continue
      if _canonical(stored) != _canonical(value):
        what = {"problem": "problem", "space": "search space",
                "options": "method options"}[key]
        raise ValueError(
            f"study {self._name!r} was run with {what} {_short(stored)}; "
            f"refusing to resume it with {_short(value)}: the new trials "
            "would not continue the recorded ones. Use another study name, "
            "or the recorded settings.")
    for key, value in checks.items():
      if attrs.get(_ATTR + key) is None:
        study.set_user_attr(_ATTR + key, value)
    self.problem = problem

  # -- results ----------------------------------------------------------------

  @property
  def trials(self) -> list:
    """All trials (``optuna.trial.FrozenTrial``), every chain."""
    return self.optuna_study.trials

  @property
  def best_trial(self):
    """The complete trial with the lowest validation loss."""
    return self.optuna_study.best_trial

  @property
  def best_value(self) -> float:
    """The lowest validation loss recorded."""
    return float(self.optuna_study.best_value)

  @property
  def best_params(self) -> dict:
    """The best hyperparameters ``{name: float or numpy array}``."""
    return trial_hparams(self._space(), self.best_trial, scalars=True)

  def _space(self):
    if self.problem is not None:
      return self.problem.space
    name = self.optuna_study.user_attrs.get(_ATTR + "problem")
    if name is None:
      raise RuntimeError("no problem has been run in this study yet.")
    return problems_lib.get(name).space

  def evaluate_best(self, *, seed: int | None = None) -> dict:
    """Retrains from scratch with :attr:`best_params`; val loss and test."""
    problem = self.problem or problems_lib.get(
        self.optuna_study.user_attrs[_ATTR + "problem"])
    seed = self.seed if seed is None else seed
    out = problem.evaluate(self.best_params, seed=seed,
                           num_steps=self._options(problem)["inner_steps"])
    return out

  def _options(self, problem) -> dict:
    return resolve_options(self.method, self.options, problem)

  # -- optimisation -----------------------------------------------------------

  def optimize(self, problem: Any, n_steps: int | None = None,
               timeout: float | None = None, *,
               show_progress_bar: bool = False,
               callbacks: Iterable = ()) -> "Study":
    """Runs this process's chain until it has ``n_steps`` trials.

    ``n_steps`` counts the chain's trials (outer steps, or black-box trials)
    including those recorded by an earlier, interrupted run of the same
    chain, so running the same command again after a crash finishes the
    job without losing or duplicating trials.

    Args:
      problem: a built-in problem name or a :class:`Problem`.
      n_steps: the chain's total number of trials; ``None`` runs until
        ``timeout``.
      timeout: stop starting new trials after this many seconds.
      show_progress_bar: a tqdm bar with the current validation loss.
      callbacks: functions ``callback(study, record)`` called after each
        trial is recorded; ``record`` has ``val_loss``, ``hparams``,
        ``step`` and ``wall_seconds``. A callback may call
        :meth:`stop`.

    Returns:
      ``self``.

    Raises:
      ValueError: if both ``n_steps`` and ``timeout`` are ``None``, or the
        study was run with another method, problem, space or options.
      hippojax.ChainBusyError: another process is running this seed.
    """
    problem = problems_lib.get(problem)
    if n_steps is None and timeout is None:
      raise ValueError("pass n_steps, timeout, or both.")
    if n_steps is not None and (isinstance(n_steps, bool) or not isinstance(
        n_steps, (int, np.integer)) or n_steps < 0):
      raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}.")
    if timeout is not None and not timeout > 0:
      raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}.")
    if self._optuna_study is None:
      self._open(f"{problem.name}-{self.method}")
    options = self._options(problem)
    self._bind_problem(problem, options)
    ckpt_dir = self._chain_dir()
    self._stop = False
    with storage_lib.chain_lock(ckpt_dir, self._name, self.seed):
      runner = (_run_gradient if self.method in GRADIENT_METHODS else
                _run_blackbox)
      runner(self, problem, options, n_steps, timeout, ckpt_dir,
             show_progress_bar, list(callbacks))
    return self

  def stop(self) -> None:
    """Asks a running :meth:`optimize` to return after the current trial
    (call it from a callback), as ``optuna.Study.stop`` does."""
    self._stop = True

  def _chain_dir(self) -> str | None:
    root = self._checkpoint_dir or self._resolved.checkpoint_root
    if root is None:
      return None
    return os.path.join(root, storage_lib.safe_name(self._name))

  def chain_trials(self, chain: int | None = None) -> list:
    """This (or the given) chain's trials, in step order."""
    chain = self.seed if chain is None else chain
    out = [t for t in self.trials if t.user_attrs.get("chain") == chain]
    return sorted(out, key=lambda t: t.user_attrs.get("step", t.number))


def _canonical(value) -> str:
  return json.dumps(value, sort_keys=True)


def _short(value) -> str:
  text = json.dumps(value, sort_keys=True)
  return text if len(text) < 200 else text[:197] + "..."


def trial_hparams(space, trial, *, scalars: bool = False) -> dict:
  """The hyperparameters of a recorded trial ``{name: float64 array}``.

  Black-box trials store every element as an Optuna param (``name[i]``);
  gradient trials store scalars as params and arrays in the user attribute
  ``hparams``.
  """
  arrays = trial.user_attrs.get("hparams", {})
  out = {}
  for p in space:
    if p.name in arrays:
      v = np.asarray(arrays[p.name], np.float64).reshape(p.shape)
    else:
      v = np.asarray([trial.params[n] for n in p.element_names],
                     np.float64).reshape(p.shape)
    out[p.name] = float(v) if (scalars and not p.shape) else v
  return out


# ---------------------------------------------------------------------------
# Gradient chains.


def _progress(show: bool, total, initial: int, desc: str):
  if not show:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc=desc, unit="step",
              dynamic_ncols=True)


def _record_gradient_trial(study, problem, step, rec, wall, inner):
  optuna = _optuna()
  space = problem.space
  hparams = {k: np.asarray(v, np.float64) for k, v in rec["hparams"].items()}
  flat = space.flatten(hparams)
  scalar_names = [p.name for p in space if not p.shape]
  dists = space.distributions()
  value = rec["val_loss"]
  finite = math.isfinite(value)
  attrs = {
      "chain": study.seed, "step": step, "method": study.method,
      "wall_seconds": wall, "inner_steps": inner,
      "hypergrad_norm": rec["grad_norm"], "solver_iters": rec["num_iters"],
      "solver_residual": rec["residual"],
      "solver_converged": rec["converged"],
      "hypergrad_finite": rec["finite"],
      "hparams": {p.name: np.clip(hparams[p.name], p.low, p.high)
                  .reshape(-1).tolist() for p in space if p.shape},
  }
  attrs = {k: _json_float(v) for k, v in attrs.items()}
  trial = optuna.trial.create_trial(
      state=(optuna.trial.TrialState.COMPLETE if finite else
             optuna.trial.TrialState.FAIL),
      value=value if finite else None,
      params={n: flat[n] for n in scalar_names},
      distributions={n: dists[n] for n in scalar_names},
      user_attrs=attrs)
  study.optuna_study.add_trial(trial)


def _json_float(v):
  if isinstance(v, float) and not math.isfinite(v):
    return None
  return v


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


def _run_gradient(study, problem, options, n_steps, timeout, ckpt_dir,
                  show_progress, callbacks):
  start = time.perf_counter()
  engine = (single_loop.get_engine if study.method in single_loop.SINGLE_LOOP
            else outer.get_engine)(problem, study.method, options)
  uid = study.optuna_study.user_attrs.get(_ATTR + "uuid")
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
        _record_gradient_trial(study, problem, step, rec, wall,
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
    if _canonical(meta.get(key)) != _canonical(meta_base[key]):
      raise ValueError(
          f"the checkpoint in {checkpointer.directory} was written with {key} "
          f"{_short(meta.get(key))}, not {_short(meta_base[key])}; refusing "
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


def _run_blackbox(study, problem, options, n_steps, timeout, ckpt_dir,
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


def load_study(storage: Any, study_name: str, *, seed: int | None = None
               ) -> Study:
  """Opens a recorded hippojax study with the method and options it ran with.

  Args:
    storage: as in :func:`create_study`.
    study_name: the study's name.
    seed: the chain to continue or report; ``None`` for the lowest recorded.

  Raises:
    KeyError: if there is no such study.
    ValueError: if it is not a hippojax study.
  """
  optuna = _optuna()
  resolved = storage_lib.open_storage(storage)
  try:
    ostudy = optuna.load_study(study_name=study_name,
                               storage=resolved.storage)
  except KeyError:
    names = list_studies(resolved.storage)
    raise KeyError(f"no study named {study_name!r} in {resolved.url}; it has "
                   f"{', '.join(names) or 'no hippojax studies'}.") from None
  attrs = ostudy.user_attrs
  method = attrs.get(_ATTR + "method")
  if method not in METHODS:
    raise ValueError(f"study {study_name!r} was not recorded by hippojax.")
  options = {k: v for k, v in attrs.get(_ATTR + "options", {}).items()
             if k in METHOD_OPTIONS[method]}
  if seed is None:
    chains = sorted({t.user_attrs.get("chain", 0) for t in ostudy.trials})
    seed = chains[0] if chains else 0
  study = Study(method, options, resolved, None, True, int(seed), None, 10)
  study._name = study_name  # pylint: disable=protected-access
  study._optuna_study = ostudy  # pylint: disable=protected-access
  if attrs.get(_ATTR + "problem"):
    try:
      study.problem = problems_lib.get(attrs[_ATTR + "problem"])
    except ValueError:
      study.problem = None  # a user-defined problem: pass it to optimize
  return study


def list_studies(storage: Any) -> list[str]:
  """The names of the hippojax studies in ``storage`` (an opened storage or
  anything :func:`create_study` accepts)."""
  optuna = _optuna()
  if not isinstance(storage, optuna.storages.BaseStorage):
    storage = storage_lib.open_storage(storage).storage
  names = []
  for s in storage.get_all_studies():
    if _ATTR + "method" in s.user_attrs:
      names.append(s.study_name)
  return names
