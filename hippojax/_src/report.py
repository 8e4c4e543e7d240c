"""Comparison reports: results.json, report.md and PNG plots.

``results.json`` (schema ``"hippojax.report/1"``)::

  {
    "schema": "hippojax.report/1",
    "problem": str,                  # problem name (or null if mixed)
    "budget_seconds": float | null,  # per method, for `compare`
    "command": str,                  # the command line that produced it
    "machine": {"platform": str, "processor": str, "cpus": int,
                "jax": str, "backend": str},
    "methods": {
      "<method>": {
        "study_name": str, "problem": str, "method": str, "chain": int,
        "n_trials": int,             # complete trials of the chain
        "best_val_loss": float,      # lowest recorded validation loss
        "best_step": int,            # the step (trial index) where it was
        "retrained_val_loss": float, # best params, trained from scratch
        "test_metric": float,        # of that retrained model
        "test_metric_name": str, "higher_is_better": bool,
        "wall_seconds": float,       # wall-clock spent by the chain
        "inner_steps": int,          # training steps spent by the chain
        "best_params": {name: float | {"shape", "min", "median", "max"}},
        "series": {                  # one entry per complete trial, in order
          "step": [int], "wall_seconds": [float], "inner_steps": [int],
          "val_loss": [float], "best_val_loss": [float]},
        "hparams": {                 # trajectories, per hyperparameter
          name: {"step": [int], "log": bool,
                 "values": [[float]]  # each element (arrays of <= 10)
                 | "median"/"q10"/"q90": [float]}}  # larger arrays
      }
    }
  }

All wall-clock times include compilation and storage writes: what a user
waits for.
"""

import json
import os
import platform
from collections.abc import Iterable
from typing import Any

import numpy as np

SCHEMA = "hippojax.report/1"
_MAX_ELEMENTS = 10


def machine() -> dict:
  """The machine the numbers were measured on."""
  import jax
  return {"platform": platform.platform(),
          "processor": platform.processor() or platform.machine(),
          "cpus": os.cpu_count(), "jax": jax.__version__,
          "backend": jax.default_backend()}


def collect(study, *, chain: int | None = None, evaluate: bool = True) -> dict:
  """Summarises one hippojax study (one method) for the report.

  Args:
    study: a :class:`hippojax.Study` whose problem is known (it has run, or
      was loaded from storage).
    chain: the chain (seed) whose series is reported; ``None`` for the
      study's own seed if it has trials, else the lowest recorded one.
    evaluate: retrain the best hyperparameters from scratch for the test
      metric.

  Returns:
    The ``methods[<method>]`` entry of ``results.json``.
  """
  import optuna

  from hippojax._src import problems as problems_lib
  from hippojax._src.study import trial_hparams

  ostudy = study.optuna_study
  problem = study.problem or problems_lib.get(
      ostudy.user_attrs["hippojax.problem"])
  study.problem = problem
  complete = [t for t in ostudy.trials
              if t.state == optuna.trial.TrialState.COMPLETE]
  chains = sorted({t.user_attrs.get("chain", 0) for t in complete})
  if chain is None:
    chain = study.seed if study.seed in chains else (chains[0] if chains
                                                      else study.seed)
  trials = sorted(
      (t for t in complete if t.user_attrs.get("chain", 0) == chain),
      key=lambda t: t.user_attrs.get("step", t.number))
  out = {"study_name": study.study_name, "problem": problem.name,
         "method": study.method, "chain": chain, "n_trials": len(trials),
         "test_metric_name": problem.metric_name,
         "higher_is_better": problem.higher_is_better}
  if not trials:
    out.update(best_val_loss=None, best_step=None, retrained_val_loss=None,
               test_metric=None, wall_seconds=0.0, inner_steps=0,
               best_params={}, series={}, hparams={})
    return out
  values = np.asarray([t.value for t in trials], np.float64)
  best_i = int(np.argmin(values))
  best = trials[best_i]
  space = problem.space
  best_h = trial_hparams(space, best)
  out["best_val_loss"] = float(values[best_i])
  out["best_step"] = int(best.user_attrs.get("step", best_i))
  out["best_params"] = space.summary(best_h)
  if evaluate:
    from hippojax._src.study import resolve_options
    steps = resolve_options(study.method, study.options, problem)["inner_steps"]
    ev = problem.evaluate(best_h, seed=chain, num_steps=steps)
    out["retrained_val_loss"] = ev["val_loss"]
    out["test_metric"] = ev["test_metric"]
  else:
    out["retrained_val_loss"] = out["test_metric"] = None
  wall = [float(t.user_attrs.get("wall_seconds", 0.0)) for t in trials]
  inner = [int(t.user_attrs.get("inner_steps", 0)) for t in trials]
  steps = [int(t.user_attrs.get("step", i)) for i, t in enumerate(trials)]
  out["wall_seconds"] = max(wall)
  out["inner_steps"] = max(inner)
  out["series"] = {"step": steps, "wall_seconds": wall, "inner_steps": inner,
                   "val_loss": values.tolist(),
                   "best_val_loss": np.minimum.accumulate(values).tolist()}
  traj = {}
  hs = [trial_hparams(space, t) for t in trials]
  for p in space:
    stacked = np.stack([h[p.name].reshape(-1) for h in hs])
    entry = {"step": steps, "log": p.log}
    if p.size <= _MAX_ELEMENTS:
      entry["values"] = stacked.tolist()
    else:
      entry["median"] = np.median(stacked, 1).tolist()
      entry["q10"] = np.quantile(stacked, 0.1, 1).tolist()
      entry["q90"] = np.quantile(stacked, 0.9, 1).tolist()
    traj[p.name] = entry
  out["hparams"] = traj
  return out


def _fmt(x: Any, digits: int = 5) -> str:
  if x is None:
    return "—"
  if isinstance(x, float):
    return f"{x:.{digits}g}"
  return str(x)


def table(results: dict) -> str:
  """The markdown table of ``results["methods"]``."""
  methods = results["methods"]
  metrics = {m["test_metric_name"] for m in methods.values()}
  metric = metrics.pop() if len(metrics) == 1 else "test metric"
  mixed = results.get("problem") is None
  first = "| problem " if mixed else ""
  lines = [
      f"{first}| method | trials | best val loss | retrained val loss | "
      f"{metric} | wall s | inner steps |",
      ("|---" if mixed else "") + "|---|---:|---:|---:|---:|---:|---:|",
  ]
  for name, m in methods.items():
    cell = f"| {m['problem']} " if mixed else ""
    lines.append(
        f"{cell}| {name} | {m['n_trials']} | {_fmt(m['best_val_loss'])} | "
        f"{_fmt(m['retrained_val_loss'])} | {_fmt(m['test_metric'], 4)} | "
        f"{m['wall_seconds']:.1f} | {m['inner_steps']} |")
  return "\n".join(lines)


def _plot_series(methods: dict, x_key: str, xlabel: str, path: str,
                 title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, m in methods.items():
    s = m.get("series") or {}
    if not s:
      continue
    x = np.asarray(s[x_key], np.float64)
    (line,) = ax.step(x, s["best_val_loss"], where="post", label=name)
    ax.plot(x, s["val_loss"], ".", ms=2, alpha=0.35, color=line.get_color())
  ax.set_xlabel(xlabel)
  ax.set_ylabel("validation loss (best so far; dots: each trial)")
  ax.set_title(title)
  if x_key == "inner_steps":
    ax.set_xscale("log")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_hparams(methods: dict, path: str, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  shown = {k: m for k, m in methods.items() if m.get("hparams")}
  names = sorted({h for m in shown.values() for h in m["hparams"]})
  rows, cols = max(len(shown), 1), max(len(names), 1)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows),
                           squeeze=False)
  for i, (method, m) in enumerate(shown.items()):
    for j, name in enumerate(names):
      ax = axes[i][j]
      h = m["hparams"].get(name)
      if h is None:
        ax.axis("off")
        continue
      x = h["step"]
      if "values" in h:
        v = np.asarray(h["values"])
        style = "-" if method not in ("random", "tpe") else "."
        for k in range(v.shape[1]):
          ax.plot(x, v[:, k], style, lw=1, ms=2)
      else:
        ax.plot(x, h["median"], "-", lw=1.2, label="median")
        ax.fill_between(x, h["q10"], h["q90"], alpha=0.3, label="10-90%")
      if h["log"]:
        ax.set_yscale("log")
      ax.set_title(f"{method}: {name}", fontsize=9)
      ax.tick_params(labelsize=7)
      if i == rows - 1:
        ax.set_xlabel("step / trial", fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write(results: dict, out_dir: str) -> list[str]:
  """Writes results.json, report.md and the plots into ``out_dir``.

  Returns:
    The paths written.
  """
  os.makedirs(out_dir, exist_ok=True)
  methods = results["methods"]
  problem = results.get("problem") or "several problems"
  paths = {
      "json": os.path.join(out_dir, "results.json"),
      "md": os.path.join(out_dir, "report.md"),
      "wall": os.path.join(out_dir, "val_loss_vs_wall.png"),
      "steps": os.path.join(out_dir, "val_loss_vs_inner_steps.png"),
      "hparams": os.path.join(out_dir, "hparams.png"),
  }
  with open(paths["json"], "w") as f:
    json.dump(results, f, indent=1)
  _plot_series(methods, "wall_seconds", "wall-clock seconds", paths["wall"],
               f"{problem}: validation loss vs wall-clock")
  _plot_series(methods, "inner_steps", "inner training steps",
               paths["steps"], f"{problem}: validation loss vs inner steps")
  _plot_hparams(methods, paths["hparams"],
                f"{problem}: hyperparameter trajectories")
  m = results.get("machine", {})
  budget = results.get("budget_seconds")
  md = [f"# hippojax report: {problem}", ""]
  if results.get("command"):
    md += ["```", results["command"], "```", ""]
  if budget:
    md += [f"Each method ran for the same wall-clock budget of {budget:g} s "
           "(compilation and storage writes included). A black-box trial is "
           "one full inner training with the inner-step budget that a "
           "gradient method spends per outer step.", ""]
  md += [table(results), "",
         "*best val loss*: lowest validation loss recorded by a trial (for "
         "gradient methods, at the chain's warm-started weights); "
         "*retrained*: the best hyperparameters trained from scratch with "
         "one trial's budget, which also gives the test metric.", "",
         f"Machine: {m.get('platform', '?')}, {m.get('cpus', '?')} CPUs, "
         f"jax {m.get('jax', '?')} ({m.get('backend', '?')}).", "",
         "![validation loss vs wall-clock](val_loss_vs_wall.png)", "",
         "![validation loss vs inner steps](val_loss_vs_inner_steps.png)", "",
         "![hyperparameter trajectories](hparams.png)", ""]
  with open(paths["md"], "w") as f:
    f.write("\n".join(md))
  return list(paths.values())


def build(studies: Iterable, *, command: str = "",
          budget_seconds: float | None = None, evaluate: bool = True) -> dict:
  """``results.json`` contents from several studies (one per method).

  Methods appear under their method name; a second study of the same
  method appears as ``"<method> (<study name>)"``.
  """
  methods = {}
  for study in studies:
    entry = collect(study, evaluate=evaluate)
    key = study.method if study.method not in methods else (
        f"{study.method} ({study.study_name})")
    methods[key] = entry
  problems = {m["problem"] for m in methods.values()}
  return {"schema": SCHEMA,
          "problem": problems.pop() if len(problems) == 1 else None,
          "budget_seconds": budget_seconds, "command": command,
          "machine": machine(), "methods": methods}
