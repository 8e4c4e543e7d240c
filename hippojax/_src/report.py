"""Comparison reports: collect studies into results.json, report.md, plots.

Methods are ranked by the **validation loss of their best hyperparameters
retrained from scratch** — the Optuna value of every hippojax trial (see
:mod:`hippojax._src.trials`) — and by the test metric of that retrained
model, overall and at equal wall-clock and equal inner steps.

``results.json`` (schema ``"hippojax.report/2"``)::

  {
    "schema": "hippojax.report/2",
    "budget_seconds": float | null,  # per method, for `compare`
    "command": str,                  # the command line that produced it
    "machine": {"platform", "processor", "cpus", "jax", "backend"},
    "problems": {
      "<problem>": {
        "metric_name": str, "higher_is_better": bool,
        "equal_wall_seconds": float,  # the shortest method's wall-clock
        "equal_inner_steps": int,     # the fewest inner steps of a method
        "ranking": [str],             # method keys, best first
        "methods": {
          "<method>": {              # "<method>+<pruner>" when pruned
            "study_name": str, "method": str, "pruner": str,
            "n_trials": int,          # complete trials, every chain
            "n_pruned": int,          # stopped by the pruner
            "n_stopped": int,         # stopped part-way by the budget
            "n_failed": int,
            "n_foreign": int,         # trials hippojax did not record: left out
            "best_value": float,      # retrained val loss of the best trial
            "best_chain": int, "best_step": int,
            "warm_val_loss": float | null,  # gradient: at warm-started weights
            "test_metric": float,     # the best trial's retrained model
            "wall_seconds": float,    # longest chain's wall-clock
            "inner_steps": int,       # training steps, all chains
            "overrun_seconds": float, # wall-clock beyond the budget
            "at_equal_wall": {"best_value", "test_metric", "step", "chain"},
            "at_equal_steps": {"best_value", "test_metric", "step", "chain"},
            "pruning": {"pruned": int, "steps_saved": int,
                        "seconds_saved": float},
            "best_params": {name: float | {"shape", "min", "median", "max"}},
            "chains": {"<seed>": {
              "n_trials", "best_value", "best_step", "wall_seconds",
              "inner_steps",
              "series": {"step", "wall_seconds", "inner_steps", "value",
                         "best_value"},
              "hparams": {name: {"step": [int], "log": bool, "size": int,
                                 "values": [[float]]  # arrays of <= 10
                                 | "median"/"q10"/"q90": [float]}}}}
          }
        }
      }
    }
  }

All wall-clock times include compilation and storage writes: what a user
waits for. Plots are drawn by :mod:`hippojax._src.plots`.
"""

import json
import os
import platform
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

SCHEMA = "hippojax.report/2"
_MAX_ELEMENTS = 10


def machine() -> dict:
  """The machine the numbers were measured on."""
  import jax
  return {"platform": platform.platform(),
          "processor": platform.processor() or platform.machine(),
          "cpus": os.cpu_count(), "jax": jax.__version__,
          "backend": jax.default_backend()}


def method_key(study) -> str:
  """``method``, or ``method+pruner`` for a pruned black-box study."""
  pruner = study.options.get("pruner", "none")
  return study.method if pruner == "none" else f"{study.method}+{pruner}"


def _hippojax_trials(ostudy) -> tuple[list, int]:
  """The trials a hippojax chain recorded, and how many others there are."""
  ours = [t for t in ostudy.trials if isinstance(t.user_attrs.get("chain"),
                                                 int)]
  return ours, len(ostudy.trials) - len(ours)


def _trajectories(space, trials, trial_hparams) -> dict:
  hs = [trial_hparams(space, t) for t in trials]
  steps = [int(t.user_attrs["step"]) for t in trials]
  out = {}
  for p in space:
    stacked = np.stack([h[p.name].reshape(-1) for h in hs])
    entry = {"step": steps, "log": p.log, "size": p.size}
    if p.size <= _MAX_ELEMENTS:
      entry["values"] = stacked.tolist()
    else:
      entry["median"] = np.median(stacked, 1).tolist()
      entry["q10"] = np.quantile(stacked, 0.1, 1).tolist()
      entry["q90"] = np.quantile(stacked, 0.9, 1).tolist()
    out[p.name] = entry
  return out


def _best(trials):
  return min(trials, key=lambda t: t.value) if trials else None


def collect(study, *, evaluate: bool = True,
            progress: Callable[[], None] | None = None) -> dict:
  """Summarises one hippojax study (every chain) for the report.

  Args:
    study: a :class:`hippojax.Study` whose problem is known (it has run, or
      was loaded from storage).
    evaluate: retrain the best hyperparameters from scratch for the test
      metric (``test_metric`` is ``None`` otherwise).
    progress: called once per retraining (for a progress bar).

  Returns:
    A ``methods[<method>]`` entry of ``results.json``, plus the private keys
    ``_complete`` (the complete trials) and ``_evaluate`` used by
    :func:`build` for the equal-budget rows.
  """
  import optuna

  from hippojax._src import problems as problems_lib
  from hippojax._src.study import resolve_options
  from hippojax._src.trials import trial_hparams

  state = optuna.trial.TrialState
  ostudy = study.optuna_study
  problem = study.problem or problems_lib.get(
      ostudy.user_attrs["hippojax.problem"])
  study.problem = problem
  space = problem.space
  inner = resolve_options(study.method, study.options, problem)["inner_steps"]
  trials, foreign = _hippojax_trials(ostudy)
  complete = [t for t in trials if t.state == state.COMPLETE]
  pruned = [t for t in trials if t.state == state.PRUNED]
  out = {"study_name": study.study_name, "problem": problem.name,
         "method": study.method,
         "pruner": study.options.get("pruner", "none"),
         "n_trials": len(complete),
         "n_pruned": sum(t.user_attrs.get("pruned_by") == "pruner"
                         for t in pruned),
         "n_stopped": sum(t.user_attrs.get("pruned_by") == "timeout"
                          for t in pruned),
         "n_failed": sum(t.state == state.FAIL for t in trials),
         "n_foreign": foreign, "test_metric_name": problem.metric_name,
         "higher_is_better": problem.higher_is_better}
  cache = {}

  def retrain(t) -> float | None:
    if not evaluate or t is None:
      return None
    if t.number not in cache:
      h = trial_hparams(space, t)
      ev = problem.evaluate(h, seed=int(t.user_attrs["chain"]),
                            num_steps=inner)
      cache[t.number] = ev["test_metric"]
      if progress is not None:
        progress()
    return cache[t.number]

  chains = {}
  for seed in sorted({t.user_attrs["chain"] for t in trials}):
    mine = sorted((t for t in trials if t.user_attrs["chain"] == seed),
                  key=lambda t: t.user_attrs["step"])
    done = [t for t in mine if t.state == state.COMPLETE]
    wall = max((float(t.user_attrs.get("wall_seconds") or 0.0)
                for t in mine), default=0.0)
    steps = max((int(t.user_attrs.get("inner_steps") or 0) for t in mine),
                default=0)
    best = _best(done)
    entry = {"n_trials": len(done),
             "best_value": None if best is None else best.value,
             "best_step": None if best is None else best.user_attrs["step"],
             "wall_seconds": wall, "inner_steps": steps, "series": {},
             "hparams": {}}
    if done:
      values = np.asarray([t.value for t in done], np.float64)
      entry["series"] = {
          "step": [int(t.user_attrs["step"]) for t in done],
          "wall_seconds": [float(t.user_attrs["wall_seconds"]) for t in done],
          "inner_steps": [int(t.user_attrs["inner_steps"]) for t in done],
          "value": values.tolist(),
          "best_value": np.minimum.accumulate(values).tolist()}
      entry["hparams"] = _trajectories(space, done, trial_hparams)
    chains[str(seed)] = entry
  out["chains"] = chains
  out["wall_seconds"] = max((c["wall_seconds"] for c in chains.values()),
                            default=0.0)
  out["inner_steps"] = sum(c["inner_steps"] for c in chains.values())
  best = _best(complete)
  if best is None:
    out.update(best_value=None, best_chain=None, best_step=None,
               warm_val_loss=None, test_metric=None, best_params={})
  else:
    out.update(best_value=best.value, best_chain=best.user_attrs["chain"],
               best_step=best.user_attrs["step"],
               warm_val_loss=best.user_attrs.get("warm_val_loss"),
               test_metric=retrain(best),
               best_params=space.summary(trial_hparams(space, best)))
  out["pruning"] = _pruning(complete, pruned, inner)
  out["_complete"] = complete
  out["_evaluate"] = retrain
  return out


def _pruning(complete, pruned, inner: int) -> dict:
  """Pruned trials, the training steps they did not run, and the time.

  The time saved by a pruned trial is measured, not extrapolated: the
  median duration of the study's complete trials minus its own duration
  (which includes the cost of reporting to the pruner).
  """
  by_pruner = [t for t in pruned if t.user_attrs.get("pruned_by") == "pruner"]
  saved = sum(inner - int(t.user_attrs.get("trained_steps", inner))
              for t in by_pruner)
  full = [t.duration.total_seconds() for t in complete
          if t.duration is not None]
  typical = float(np.median(full)) if full else 0.0
  seconds = sum(max(0.0, typical - t.duration.total_seconds())
                for t in by_pruner if t.duration is not None)
  return {"pruned": len(by_pruner), "steps_saved": int(saved),
          "seconds_saved": seconds}


def _at(entry: dict, key: str, limit: float) -> dict:
  """The best complete trial with ``user_attrs[key] <= limit``."""
  eligible = [t for t in entry["_complete"] if t.user_attrs[key] <= limit]
  best = _best(eligible)
  if best is None:
    return {"best_value": None, "test_metric": None, "step": None,
            "chain": None}
  return {"best_value": best.value, "test_metric": entry["_evaluate"](best),
          "step": best.user_attrs["step"], "chain": best.user_attrs["chain"]}


def build(studies: Iterable, *, command: str = "",
          budget_seconds: float | None = None, evaluate: bool = True,
          progress: Callable[[], None] | None = None) -> dict:
  """``results.json`` contents from several studies.

  Studies are grouped by problem. A method appears under :func:`method_key`;
  a second study of the same key as ``"<key> (<study name>)"``.
  """
  problems = {}
  for study in studies:
    entry = collect(study, evaluate=evaluate, progress=progress)
    group = problems.setdefault(entry["problem"], {
        "metric_name": entry["test_metric_name"],
        "higher_is_better": entry["higher_is_better"], "methods": {}})
    key = method_key(study)
    if key in group["methods"]:
      key = f"{key} ({study.study_name})"
    group["methods"][key] = entry
  for group in problems.values():
    methods = group["methods"]
    ran = [m for m in methods.values() if m["n_trials"]]
    wall = min((m["wall_seconds"] for m in ran), default=0.0)
    steps = min((max(c["inner_steps"] for c in m["chains"].values())
                 for m in ran), default=0)
    group["equal_wall_seconds"] = wall
    group["equal_inner_steps"] = steps
    for m in methods.values():
      m["at_equal_wall"] = _at(m, "wall_seconds", wall)
      m["at_equal_steps"] = _at(m, "inner_steps", steps)
      m["overrun_seconds"] = (max(0.0, m["wall_seconds"] - budget_seconds)
                              if budget_seconds else 0.0)
      del m["_complete"], m["_evaluate"]
    group["ranking"] = sorted(
        methods, key=lambda k: (methods[k]["best_value"] is None,
                                methods[k]["best_value"] or 0.0))
  return {"schema": SCHEMA, "budget_seconds": budget_seconds,
          "command": command, "machine": machine(), "problems": problems}


def _fmt(x: Any, digits: int = 5) -> str:
  if x is None:
    return "—"
  if isinstance(x, float):
    return f"{x:.{digits}g}"
  return str(x)


def table(results: dict, problem: str | None = None) -> str:
  """The headline table(s): methods ranked by the retrained loss.

  One table per problem (or only ``problem``), each titled with the problem
  when there are several.
  """
  out = []
  names = [problem] if problem else list(results["problems"])
  for name in names:
    g = results["problems"][name]
    metric = g["metric_name"]
    if len(names) > 1:
      out += [f"{name}:", ""]
    out += [
        f"| rank | method | val loss (retrained) | {metric} | "
        f"at equal time ({g['equal_wall_seconds']:.1f} s) | "
        f"at equal steps ({g['equal_inner_steps']}) | warm-started val loss "
        "| trials | pruned | wall s | inner steps |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, key in enumerate(g["ranking"], 1):
      m = g["methods"][key]
      out.append(
          f"| {i} | {key} | {_fmt(m['best_value'])} | "
          f"{_fmt(m['test_metric'], 4)} | "
          f"{_fmt(m['at_equal_wall']['best_value'])} | "
          f"{_fmt(m['at_equal_steps']['best_value'])} | "
          f"{_fmt(m['warm_val_loss'])} | {m['n_trials']} | "
          f"{m['n_pruned']} | {m['wall_seconds']:.1f} | {m['inner_steps']} |")
    out.append("")
  return "\n".join(out).rstrip()


def _pruning_lines(group: dict) -> list[str]:
  """The pruning section: each pruned variant against its unpruned run."""
  methods = group["methods"]
  rows = []
  for key, m in methods.items():
    if m["pruner"] == "none":
      continue
    base = methods.get(m["method"])
    ran = m["n_pruned"] + m["n_trials"] + m["n_stopped"]
    rows.append(
        f"| {key} | {m['n_pruned']} of {ran} | "
        f"{m['pruning']['steps_saved']} | "
        f"{m['pruning']['seconds_saved']:.1f} | "
        f"{_fmt(m['best_value'])} | "
        f"{_fmt(None if base is None else base['best_value'])} | "
        f"{'—' if base is None else base['n_trials'] + base['n_stopped']} |")
  if not rows:
    return []
  return [
      "### Pruning", "",
      "Pruned trials stop after a chunk of their training whose validation "
      "loss the pruner finds poor. *Steps saved*: training steps the pruned "
      "trials did not run; *seconds saved*: for each pruned trial, the "
      "median duration of the complete trials minus its own (reporting to "
      "the pruner included). The last columns compare, in the same budget, "
      "the retrained validation loss of the best trial and the number of "
      "trials with and without the pruner.", "",
      "| method | trials pruned | steps saved | seconds saved | "
      "val loss (retrained) | without pruning | trials without pruning |",
      "|---|---:|---:|---:|---:|---:|---:|", *rows, ""]


def markdown(results: dict, plots: dict) -> str:
  """``report.md``: command, headline tables, pruning, notes, plots."""
  m = results.get("machine", {})
  budget = results.get("budget_seconds")
  names = list(results["problems"])
  md = [f"# hippojax report: {', '.join(names)}", ""]
  if results.get("command"):
    md += ["```", results["command"], "```", ""]
  if budget:
    md += [f"Each method was given a wall-clock budget of {budget:g} s "
           "(compilation and storage writes included). A black-box trial is "
           "one full inner training with the inner-step budget that a "
           "gradient method spends per outer step.", ""]
  for name in names:
    g = results["problems"][name]
    md += [f"## {name}", "", table(results, name), ""]
    for key, e in g["methods"].items():
      if e["overrun_seconds"] > 0.05 * (budget or 0):
        why = ("an outer step (compilation included) is one call and is "
               "not interrupted" if e["method"] not in ("random", "tpe") else
               "a trial stops only at the end of a chunk of its training")
        md.append(f"* {key} ran {e['wall_seconds']:.1f} s, "
                  f"{e['overrun_seconds']:.1f} s over its budget: {why}.")
      if e["n_stopped"]:
        md.append(f"* {key}: {e['n_stopped']} trial(s) stopped part-way by "
                  "the budget (recorded as pruned, not ranked).")
      if e["n_foreign"]:
        md.append(f"* {key}: {e['n_foreign']} trials not recorded by "
                  "hippojax (no chain) are left out.")
      if len(e["chains"]) > 1:
        per = ", ".join(f"seed {s}: {_fmt(c['best_value'])} "
                        f"({c['n_trials']} trials)"
                        for s, c in e["chains"].items())
        md.append(f"* {key} ran {len(e['chains'])} chains; best per chain "
                  f"{per}; overall best from seed {e['best_chain']}.")
    md += [""] + _pruning_lines(g)
    for title, path in plots.get(name, []):
      md += [f"![{title}]({path})", ""]
  md += [
      "*val loss (retrained)*: validation loss of the method's best "
      "hyperparameters trained from scratch with one trial's budget (the "
      "Optuna value of every hippojax trial), and the test metric of that "
      "model; *at equal time / steps*: the same for the best trial recorded "
      "within the shortest method's wall-clock / fewest inner steps; "
      "*warm-started val loss*: what a gradient method's outer step "
      "measured at its warm-started weights (not comparable across "
      "methods).", "",
      f"Machine: {m.get('platform', '?')}, {m.get('cpus', '?')} CPUs, "
      f"jax {m.get('jax', '?')} ({m.get('backend', '?')}).", ""]
  return "\n".join(md)


def write(results: dict, out_dir: str) -> list[str]:
  """Writes results.json, report.md and the plots into ``out_dir``.

  With one problem the plots are ``val_loss_vs_wall.png``,
  ``val_loss_vs_inner_steps.png`` and ``hparams.png``; with several, the
  same names inside one folder per problem.

  Returns:
    The paths written.
  """
  from hippojax._src import plots as plots_lib
  os.makedirs(out_dir, exist_ok=True)
  written = []
  figures = {}
  several = len(results["problems"]) > 1
  for name, group in results["problems"].items():
    sub = name if several else ""
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    figures[name] = []
    for title, file, draw in plots_lib.FIGURES:
      rel = os.path.join(sub, file)
      draw(name, group, os.path.join(out_dir, rel))
      figures[name].append((f"{name}: {title}", rel))
      written.append(os.path.join(out_dir, rel))
  path = os.path.join(out_dir, "results.json")
  with open(path, "w") as f:
    json.dump(results, f, indent=1, default=_json_default)
  written.append(path)
  path = os.path.join(out_dir, "report.md")
  with open(path, "w") as f:
    f.write(markdown(results, figures))
  written.append(path)
  return written


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  raise TypeError(f"not JSON serialisable: {x!r}")
