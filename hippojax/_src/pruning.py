"""Black-box trials that Optuna's pruners can stop, and stop at a deadline.

A black-box trial trains from scratch for ``inner_steps`` steps. With a
pruner (``create_study("random", pruner="median")``, ``--pruner`` on the
command line) the training runs in :data:`REPORTS` equal chunks; after each
chunk the trial reports the validation loss to Optuna
(``trial.report(loss, k)``, ``k = 1 … REPORTS``) and stops if
``trial.should_prune()``. The same chunks let a chain's ``timeout`` stop a
long trial part-way (once the chain has a complete trial: its first one
always finishes, and the overrun is reported). A stopped trial is recorded
as ``PRUNED``, with the
user attribute ``pruned_by`` (``"pruner"`` or ``"timeout"``) and
``trained_steps``, the training steps it ran; ``steps_saved`` is the rest of
its budget.

Gradient chains have no trials to prune: an outer step is one compiled
call. What stops a hopeless gradient chain early is ``n_steps``,
``timeout`` or a callback that calls :meth:`hippojax.Study.stop`.
"""

import functools
import math
import time

import jax

PRUNERS = ("none", "median", "successive-halving", "hyperband")

# Validation losses reported per pruned trial (the pruners' resource unit).
REPORTS = 10


def make_pruner(name: str):
  """The Optuna pruner called ``name`` (one of :data:`PRUNERS`).

  ``median``: ``MedianPruner`` (5 complete trials first); ``successive-
  halving``: ``SuccessiveHalvingPruner`` (rungs at 1, 4, … chunks);
  ``hyperband``: ``HyperbandPruner`` over 1 … :data:`REPORTS` chunks.

  Raises:
    ValueError: for an unknown name, listing the choices.
  """
  import optuna
  if name == "none":
    return optuna.pruners.NopPruner()
  if name == "median":
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
  if name == "successive-halving":
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
  if name == "hyperband":
    return optuna.pruners.HyperbandPruner(min_resource=1,
                                          max_resource=REPORTS)
  raise ValueError(f"unknown pruner {name!r}; choose one of "
                   f"{', '.join(PRUNERS)}.")


def chunks(num_steps: int) -> list[int]:
  """``num_steps`` split into at most :data:`REPORTS` near-equal chunks."""
  n = min(REPORTS, num_steps)
  base, extra = divmod(num_steps, n)
  return [base + (1 if k < extra else 0) for k in range(n)]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _start(problem, num_steps, hparams, key_data):
  params = problem.init_params(jax.random.wrap_key_data(key_data))
  return _more(problem, num_steps, hparams, params)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _more(problem, num_steps, hparams, params):
  params = jax.lax.fori_loop(
      0, num_steps,
      lambda _, p: problem.train_step(p, hparams, problem.train_data), params)
  return params, problem.val_loss(params, hparams, problem.val_data)


def evaluate(problem, hparams, trial, *, seed: int, num_steps: int,
             prune: bool, deadline: float | None) -> dict:
  """Trains one black-box trial, reporting to Optuna if ``prune``.

  Args:
    problem: the problem.
    hparams: the sampled hyperparameters ``{name: array}``.
    trial: the ``optuna.Trial`` (asked, not told).
    seed: the chain's seed (initial weights).
    num_steps: the trial's training budget.
    prune: report intermediate losses and ask the study's pruner.
    deadline: a ``time.perf_counter()`` value after which the trial stops at
      its next chunk boundary; ``None`` for none.

  Returns:
    ``{"value": float, "trained_steps": int, "pruned_by": None | "pruner" |
    "timeout"}``; ``value`` is the last validation loss measured.
  """
  if not prune and deadline is None:
    value = problem.validate(hparams, seed=seed, num_steps=num_steps)
    return {"value": value, "trained_steps": num_steps, "pruned_by": None}
  h = problem.as_hparams(hparams)
  key = jax.random.key_data(jax.random.key(seed))
  params, done, value = None, 0, math.nan
  sizes = chunks(num_steps)
  for k, size in enumerate(sizes, start=1):
    if params is None:
      params, loss = _start(problem, size, h, key)
    else:
      params, loss = _more(problem, size, h, params)
    value = float(loss)
    done += size
    if not math.isfinite(value) or done == num_steps:
      break  # diverged (a failed trial), or complete
    if prune:
      trial.report(value, k)
      if trial.should_prune():
        return {"value": value, "trained_steps": done, "pruned_by": "pruner"}
    if deadline is not None and time.perf_counter() >= deadline:
      return {"value": value, "trained_steps": done, "pruned_by": "timeout"}
  return {"value": value, "trained_steps": done, "pruned_by": None}
