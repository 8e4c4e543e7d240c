"""Trials in Optuna's terms: hyperparameters as params, values, real times.

Every trial of a hippojax study, gradient or black-box, stores each
hyperparameter as Optuna params with its ``FloatDistribution``: a scalar as
``name``, an array as one param per element ``name[i]`` (flat index), so
``study.best_params``, ``optuna.importance``, ``optuna.visualization`` and
optuna-dashboard see gradient and black-box studies alike.

An array of more than :data:`MAX_ELEMENT_PARAMS` elements is recorded, on a
gradient trial, as the three params ``name[min]``, ``name[median]`` and
``name[max]`` (the distribution of its elements) plus the whole array in the
user attribute ``hparams``; the trial's user attribute ``summarised`` lists
such names. Nothing is dropped: :func:`trial_hparams` reads the array back.
(Black-box samplers need every element as a param, so their trials always
record all of them.)

A gradient trial's Optuna ``value`` is the validation loss of its
hyperparameters **retrained from scratch** — the same training, from the
chain's seed and with the same inner budget, as a black-box trial — so that
``best_value`` and every Optuna tool compare the two kinds of method on the
same footing. The loss at the chain's warm-started weights, which the outer
step optimises, is kept in the user attribute ``warm_val_loss``.
"""

import copy
import datetime
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# Arrays up to this many elements are recorded one param per element on
# gradient trials. Measured on SQLite (benchmarks/results/optuna_params.md,
# 2 cores under a load of 10): adding one trial takes 0.12 s with 10 element
# params, 0.14 s with 640 and 1.4 s with 10 000 (bulk insert; Optuna's own
# path: 0.2, 10.6 and 158 s), but loading a study reads every param row
# back, 0.38 s per trial of 640 and 4.6 s per trial of 10 000: a long chain
# of large arrays would take many minutes to open.
MAX_ELEMENT_PARAMS = 100

SUMMARY_STATS = ("min", "median", "max")


def _optuna():
  import optuna
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  return optuna


def summary_names(p) -> list[str]:
  """The params that summarise an array of more than MAX_ELEMENT_PARAMS."""
  return [f"{p.name}[{s}]" for s in SUMMARY_STATS]


def as_params(space, hparams: Mapping[str, Any], *,
              max_elements: int | None = None
              ) -> tuple[dict, dict, list[str]]:
  """``{name: array}`` as Optuna params.

  Args:
    space: the :class:`~hippojax.SearchSpace`.
    hparams: constrained values ``{name: array}`` (clipped into bounds).
    max_elements: arrays larger than this are summarised (see module doc);
      ``None`` for :data:`MAX_ELEMENT_PARAMS`.

  Returns:
    ``(params, distributions, summarised)``: params and their
    ``FloatDistribution`` keyed by param name, and the names of the
    hyperparameters recorded as a summary.
  """
  from optuna.distributions import FloatDistribution
  if max_elements is None:
    max_elements = MAX_ELEMENT_PARAMS
  params, dists, summarised = {}, {}, []
  for p in space:
    v = np.clip(np.asarray(hparams[p.name], np.float64).reshape(-1), p.low,
                p.high)
    dist = FloatDistribution(p.low, p.high, log=p.log)
    if p.size <= max_elements:
      names = p.element_names
      values = v
    else:
      names = summary_names(p)
      values = [v.min(), np.median(v), v.max()]
      summarised.append(p.name)
    for n, x in zip(names, values):
      params[n] = float(x)
      dists[n] = dist
  return params, dists, summarised


def trial_hparams(space, trial, *, scalars: bool = False) -> dict:
  """The hyperparameters of a recorded trial ``{name: float64 array}``.

  Reads the element params ``name[i]`` (every black-box trial, and gradient
  trials of arrays up to :data:`MAX_ELEMENT_PARAMS`), else the user
  attribute ``hparams`` (larger arrays, and trials recorded before arrays
  were stored as params).

  Raises:
    KeyError: if the trial does not hold a hyperparameter of ``space``.
  """
  arrays = trial.user_attrs.get("hparams") or {}
  out = {}
  for p in space:
    names = p.element_names
    if all(n in trial.params for n in names):
      v = np.asarray([trial.params[n] for n in names], np.float64)
    elif p.name in arrays:
      v = np.asarray(arrays[p.name], np.float64)
    else:
      raise KeyError(f"trial {trial.number} does not record hyperparameter "
                     f"{p.name!r}.")
    v = v.reshape(p.shape)
    out[p.name] = float(v) if (scalars and not p.shape) else v
  return out


def _json_float(v):
  if isinstance(v, float) and not math.isfinite(v):
    return None
  return v


def extra_training(rec, inner_steps: int) -> int:
  """Training steps one outer step took beyond ``inner_steps``: its
  polishing half steps, and MAID's train-to-ε solves (more or fewer).

  ``rec`` is a step's host record or a recorded trial's attributes; trials
  recorded before ``train_steps`` existed trained ``inner_steps``.
  """
  trained = rec.get("train_steps")
  return (int(rec.get("polish_steps") or 0)
          + (int(trained) - inner_steps if trained is not None else 0))


def record_gradient_trial(study, problem, step: int, rec: dict, *,
                          started: datetime.datetime,
                          wall: Callable[[], float],
                          inner_steps: int, extra_steps: int = 0) -> dict:
  """Evaluates one outer step's hyperparameters and adds it as a trial.

  The trial's value is the validation loss after training from scratch at
  ``rec["hparams"]`` (chain seed, ``inner_steps`` steps); ``rec["val_loss"]``
  (at the warm-started weights) becomes the user attribute
  ``warm_val_loss``. A non-finite retrained loss makes a ``FAIL`` trial.

  Args:
    study: the :class:`hippojax.Study` (its seed is the chain).
    problem: the problem.
    step: the outer step (0-based).
    rec: the host record of the step (``val_loss``, ``hparams``, solver
      diagnostics).
    started: when the outer step started (the trial's ``datetime_start``).
    wall: returns the chain's cumulative wall-clock seconds now.
    inner_steps: training steps of one outer step (and of the retrain).
    extra_steps: training steps the chain spent before this step beyond
      those (the polishing half steps of earlier steps; MAID's solves).

  Returns:
    ``{"value", "warm_val_loss", "wall_seconds", "inner_steps"}``: what was
    recorded (``value`` may be non-finite for a failed trial).
  """
  optuna = _optuna()
  space = problem.space
  hparams = {k: np.asarray(v, np.float64) for k, v in rec["hparams"].items()}
  value = problem.validate(hparams, seed=study.seed, num_steps=inner_steps)
  seconds = wall()
  # Each outer step trains inner_steps warm-started steps (plus its
  # polishing half steps), then the retrain from scratch runs inner_steps
  # more: all count as training spent.
  polished = int(rec.get("polish_steps", 0))
  trained = int(rec.get("train_steps", inner_steps))
  spent = 2 * (step + 1) * inner_steps + extra_steps + extra_training(
      rec, inner_steps)
  params, dists, summarised = as_params(space, hparams)
  attrs = {
      "chain": study.seed, "step": step, "method": study.method,
      "wall_seconds": seconds, "inner_steps": spent,
      "warm_val_loss": rec["val_loss"],
      "hypergrad_norm": rec["grad_norm"], "solver_iters": rec["num_iters"],
      "solver_residual": rec["residual"],
      "solver_converged": rec["converged"],
      "hypergrad_finite": rec["finite"],
      "fixed_point_residual": rec.get("fixed_point_residual", 0.0),
      "damping": rec.get("damping", 0.0),
      "polish_steps": polished, "train_steps": trained,
  }
  if summarised:
    attrs["summarised"] = summarised
    attrs["hparams"] = {
        n: np.clip(hparams[n], space_param.low, space_param.high)
        .reshape(-1).tolist()
        for n, space_param in ((q.name, q) for q in space) if n in summarised}
  attrs = {k: _json_float(v) for k, v in attrs.items()}
  finite = math.isfinite(value)
  trial = optuna.trial.create_trial(
      state=(optuna.trial.TrialState.COMPLETE if finite else
             optuna.trial.TrialState.FAIL),
      value=value if finite else None, params=params, distributions=dists,
      user_attrs=attrs)
  trial.datetime_start = started
  trial.datetime_complete = datetime.datetime.now()
  add_trial(study.optuna_study, study.storage, trial)
  return {"value": value, "warm_val_loss": rec["val_loss"],
          "wall_seconds": seconds, "inner_steps": spent}


def add_trial(ostudy, storage, trial) -> None:
  """``ostudy.add_trial(trial)``, in one bulk insert on SQL databases.

  ``optuna.storages.RDBStorage`` inserts a trial's params one by one, with
  two queries each (0.8 s for 640 params on SQLite here, 13 s for 10 000).
  For those storages this writes the trial row through Optuna's own code,
  then its params in one multi-row ``INSERT`` of Optuna's own ORM model, in
  the same transaction; any other storage, or an Optuna whose internals
  differ, takes the public path.
  """
  optuna = _optuna()
  if (not isinstance(storage, optuna.storages.RDBStorage) or
      len(trial.params) < 8):
    ostudy.add_trial(trial)
    return
  try:
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    prepare = storage._get_prepared_new_trial  # pylint: disable=protected-access
  except (ImportError, AttributeError):  # pragma: no cover - other Optuna
    ostudy.add_trial(trial)
    return
  trial._validate()  # pylint: disable=protected-access
  head = copy.copy(trial)
  head.params = {}
  head.distributions = {}
  dists = trial.distributions
  rows = [{"param_name": n,
           "param_value": dists[n].to_internal_repr(v),
           "distribution_json":
               optuna.distributions.distribution_to_json(dists[n])}
          for n, v in trial.params.items()]
  study_id = storage.get_study_id_from_name(ostudy.study_name)
  with _create_scoped_session(storage.scoped_session) as session:
    models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
    row = prepare(study_id, head, session)
    session.flush()
    for r in rows:
      r["trial_id"] = row.trial_id
    session.execute(sqlalchemy.insert(models.TrialParamModel), rows)


def initial_state(engine, seed: int):
  """The first state of the gradient chain ``seed``.

  ``engine.init(seed)`` draws the weights from ``init_params(key(seed))``;
  the hyperparameters start at ``space.initial(seed)``: the declared
  ``init`` (or midpoint) for seed 0, a seeded random point within the
  bounds for every other seed. So chains of different seeds differ even on
  problems whose weights start at zero.
  """
  state = engine.init(seed)
  if seed == 0:
    return state
  space = engine.problem.space
  dtype = next(iter(state.u.values())).dtype
  u = space.unconstrain(space.initial(seed), dtype)
  if engine.optimizer is None:  # MAID: no optimizer state on u
    return state._replace(u=u)
  return state._replace(u=u, opt_state=engine.optimizer.init(u))
