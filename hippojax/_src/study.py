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
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np

from hippojax._src import chain as chain_lib
from hippojax._src import outer
from hippojax._src import problems as problems_lib
from hippojax._src import pruning
from hippojax._src import storage as storage_lib
from hippojax._src.stochastic import engine as single_loop
from hippojax._src.trials import trial_hparams

GRADIENT_METHODS = outer.GRADIENT_METHODS + single_loop.SINGLE_LOOP + (
    "maid",)
BLACKBOX_METHODS = ("random", "tpe")
METHODS = GRADIENT_METHODS + BLACKBOX_METHODS

# Options of each method: name -> default (``None``: the problem's default).
_COMMON = {"inner_steps": None}
_GRADIENT = {**_COMMON, "outer_lr": None}
# Single-loop chains: Adam on u with a 1/sqrt decay over ``decay_rounds``
# rounds, reporting each round's mean iterate (see stochastic/engine.py).
_SINGLE_LOOP = {**_COMMON, "outer_lr": 0.05, "decay_rounds": 4.0,
                "average": True, "linear_rate": 1.0, "damping": 0.0}
METHOD_OPTIONS = {
    "t1t2": dict(_GRADIENT),
    "ift": {**_GRADIENT, "num_iters": 10},
    "hoag": {**_GRADIENT, "tol": 1e-4, "maxiter": 100},
    "drmad": {**_GRADIENT, "unroll_steps": 100},
    "reverse": {**_GRADIENT, "unroll_steps": 100, "remat": False},
    "soba": {**_SINGLE_LOOP},
    "saba": {**_SINGLE_LOOP},
    "amigo": {**_SINGLE_LOOP, "warm_steps": 5, "linear_steps": 5},
    # MAID: inner_steps caps each train-to-eps solve; maxiter caps CG.
    # Defaults measured on logreg-ijcnn1-like and hyper-cleaning-mnist1d (a
    # first step of 1e3 on u, backtracked; weights trained to 1e-3).
    "maid": {**_COMMON, "step_size": 1e3, "eps": 1e-3, "delta": 1e-2,
             "max_backtracks": 8, "maxiter": 100},
    "random": {**_COMMON, "pruner": "none"},
    "tpe": {**_COMMON, "n_startup_trials": 10, "multivariate": False,
            "pruner": "none"},
}

_ATTR = "hippojax."  # prefix of the study's user attributes


def _check_option(method: str, name: str, value: Any) -> Any:
  ints = {"inner_steps": 1, "num_iters": 0, "maxiter": 1, "unroll_steps": 1,
          "n_startup_trials": 0, "warm_steps": 1, "linear_steps": 1,
          "max_backtracks": 1}
  if name in ints:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise TypeError(f"{method} option {name} must be an int, got "
                      f"{value!r}.")
    if value < ints[name]:
      raise ValueError(f"{method} option {name} must be >= {ints[name]}, got "
                       f"{value!r}.")
    return int(value)
  if name in ("damping", "decay_rounds"):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        not 0 <= value < math.inf):
      raise ValueError(f"{method} option {name} must be a number >= 0, got "
                       f"{value!r}.")
    return float(value)
  if name in ("outer_lr", "tol", "linear_rate", "step_size", "eps",
              "delta"):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise TypeError(f"{method} option {name} must be a number, got "
                      f"{value!r}.")
    if not value > 0 or not math.isfinite(value):
      raise ValueError(f"{method} option {name} must be > 0, got {value!r}.")
    return float(value)
  if name == "pruner":
    if value not in pruning.PRUNERS:
      raise ValueError(f"{method} option pruner must be one of "
                       f"{', '.join(pruning.PRUNERS)}, got {value!r}.")
    return value
  if name in ("remat", "multivariate", "average"):
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
                 checkpoint_every: int = 10, max_failed_steps: int = 10,
                 **method_options) -> "Study":
  """Creates (or loads) a hippojax study.

  Args:
    method: ``"t1t2"``, ``"ift"``, ``"hoag"``, ``"drmad"``, ``"reverse"``
      (gradient methods), ``"soba"``, ``"saba"``, ``"amigo"`` (single-loop
      gradient methods for minibatch problems: one trial is a round of
      ``inner_steps`` minibatch steps, see
      :mod:`hippojax._src.stochastic.engine`), ``"maid"`` (MAID's adaptive
      accuracies and line search, full batch, one trial per outer step) or
      ``"random"``, ``"tpe"`` (Optuna samplers).
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
    checkpoint_dir: ``None`` (default) checkpoints gradient chains in the
      storage itself (nothing for ``":memory:"``), so any worker that reaches
      the storage resumes them; a directory (or a URL orbax can write)
      keeps them there instead, for states too large for the database.
    checkpoint_every: checkpoint a gradient chain every this many outer steps
      (and when ``optimize`` returns).
    max_failed_steps: a gradient chain stops with
      :class:`hippojax.ChainFailedError` after this many consecutive outer
      steps with a non-finite validation loss or hypergradient.
    **method_options: ``inner_steps`` (training steps per trial or outer step;
      default the problem's), and for gradient methods ``outer_lr`` (Adam step
      on the unconstrained hyperparameters; default the problem's);
      ``ift``: ``num_iters`` (10); ``hoag``: ``tol`` (1e-4), ``maxiter``
      (100); ``drmad``/``reverse``: ``unroll_steps`` (100, the differentiated
      tail of the inner budget); ``reverse``: ``remat`` (False); ``tpe``:
      ``n_startup_trials`` (10), ``multivariate`` (False); ``random`` and
      ``tpe``: ``pruner`` (``"none"``, ``"median"``,
      ``"successive-halving"``, ``"hyperband"``): the Optuna pruner that
      stops a trial whose intermediate validation losses are poor (see
      :mod:`hippojax._src.pruning`).
      ``soba``, ``saba``, ``amigo``: ``outer_lr`` (0.05, Adam per
      minibatch), ``decay_rounds`` (4: the step decays as
      ``1/sqrt(1 + t/tau)``, ``tau`` that many rounds; 0 keeps it
      constant), ``average`` (True: each trial's hyperparameters are the
      round's mean iterate), ``linear_rate`` (1.0), ``damping`` (0.0);
      ``amigo``: ``warm_steps`` (5), ``linear_steps`` (5). ``maid``:
      ``step_size`` (1e3, on ``u``), ``eps`` (1e-3), ``delta`` (1e-2),
      ``max_backtracks`` (8), ``maxiter`` (100), see :func:`hippojax.maid`;
      ``inner_steps`` caps each of its train-to-``eps`` solves, and a
      trial's ``inner_steps`` attribute counts the steps it really took.

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
  if isinstance(max_failed_steps, bool) or not isinstance(
      max_failed_steps, (int, np.integer)) or max_failed_steps < 1:
    raise ValueError(f"max_failed_steps must be an int >= 1, got "
                     f"{max_failed_steps!r}.")
  if study_name is not None and (not isinstance(study_name, str) or
                                 not study_name):
    raise ValueError(f"study_name must be a non-empty string or None, got "
                     f"{study_name!r}.")
  resolved = storage_lib.open_storage(storage)
  with storage_lib.writing(resolved.url, "opening the study"):
    return Study(method, options, resolved, study_name,
                 bool(load_if_exists), int(seed), checkpoint_dir,
                 int(checkpoint_every),
                 max_failed_steps=int(max_failed_steps))


class Study:
  """A study of one method: trials in Optuna storage, chains per seed.

  Use :func:`create_study` to make one. The underlying ``optuna.Study`` is
  :attr:`optuna_study`, so ``optuna.visualization`` and ``optuna-dashboard``
  work on it.
  """

  def __init__(self, method, options, resolved, study_name, load_if_exists,
               seed, checkpoint_dir, checkpoint_every, max_failed_steps=10):
    self.method = method
    self.options = options
    self.seed = seed
    self.checkpoint_every = checkpoint_every
    self.max_failed_steps = max_failed_steps
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
    """The complete trial with the lowest value: the validation loss of its
    hyperparameters retrained from scratch (every chain; see
    :mod:`hippojax._src.trials`)."""
    return self.optuna_study.best_trial

  @property
  def best_value(self) -> float:
    """The best trial's value: its validation loss retrained from scratch.

    For a gradient trial the loss at the chain's warm-started weights is
    ``best_trial.user_attrs["warm_val_loss"]``.
    """
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
    """Retrains from scratch with :attr:`best_params`; val loss and test.

    ``seed`` defaults to the best trial's chain, so the validation loss is
    :attr:`best_value` again.
    """
    problem = self.problem or problems_lib.get(
        self.optuna_study.user_attrs[_ATTR + "problem"])
    if seed is None:
      seed = int(self.best_trial.user_attrs.get("chain", self.seed))
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
      timeout: stop starting new trials after this many seconds (a
        black-box trial running then stops at its next chunk, once the
        chain has a complete trial; an outer step is not interrupted).
      show_progress_bar: a tqdm bar with the best value so far.
      callbacks: functions ``callback(study, record)`` called after each
        trial is recorded; ``record`` has ``value`` (the trial's Optuna
        value, retrained from scratch; ``None`` for a replayed step or a
        pruned trial, non-finite for a failed one), ``val_loss`` (for gradient methods, at the
        warm-started weights), ``hparams``, ``step`` and
        ``wall_seconds``. A callback may call :meth:`stop`.

    Returns:
      ``self``.

    Raises:
      ValueError: if both ``n_steps`` and ``timeout`` are ``None``, or the
        study was run with another method, problem, space or options.
      hippojax.ChainBusyError: another process is running this seed.
      hippojax.ChainFailedError: ``max_failed_steps`` outer steps in a row
        failed (gradient methods).
      hippojax.StorageError: the storage or checkpoint directory cannot be
        written (a full disk, a read-only file), in one line.
    """
    problem = problems_lib.get(problem)
    if n_steps is None and timeout is None:
      raise ValueError("pass n_steps, timeout, or both.")
    if n_steps is not None and (isinstance(n_steps, bool) or not isinstance(
        n_steps, (int, np.integer)) or n_steps < 0):
      raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}.")
    if timeout is not None and not timeout > 0:
      raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}.")
    options = self._options(problem)
    with storage_lib.writing(self.storage_url, "opening the study"):
      if self._optuna_study is None:
        self._open(f"{problem.name}-{self.method}")
      self._bind_problem(problem, options)
    chain_lib.check_bounds(problem.space, options["dtype"])
    self._stop = False
    with chain_lib.lease(self) as lease:
      if self.method in GRADIENT_METHODS:
        chain_lib.run_gradient(self, problem, options, n_steps, timeout,
                               chain_lib.checkpointer(self), lease,
                               show_progress_bar, list(callbacks))
      else:
        chain_lib.run_blackbox(self, problem, options, n_steps, timeout,
                               lease, show_progress_bar, list(callbacks))
    return self

  def stop(self) -> None:
    """Asks a running :meth:`optimize` to return after the current trial
    (call it from a callback), as ``optuna.Study.stop`` does."""
    self._stop = True

  @property
  def storage_url(self) -> str:
    """The storage as given (for messages)."""
    return self._resolved.url

  def chain_trials(self, chain: int | None = None) -> list:
    """This (or the given) chain's trials, in step order."""
    chain = self.seed if chain is None else chain
    out = [t for t in self.trials if t.user_attrs.get("chain") == chain
           and not t.user_attrs.get("orphaned")]
    return sorted(out, key=lambda t: t.user_attrs.get("step", t.number))


def _canonical(value) -> str:
  return json.dumps(value, sort_keys=True)


def _short(value) -> str:
  text = json.dumps(value, sort_keys=True)
  return text if len(text) < 200 else text[:197] + "..."



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
