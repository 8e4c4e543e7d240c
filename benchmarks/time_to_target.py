"""Time to a target validation loss: gradient methods vs random search and TPE.

Problems with 1, 10, 30 and 640 hyperparameters (scalar and per-feature ridge
on diabetes, per-feature L2 logistic regression on breast cancer, per-weight
L2 softmax regression on digits). Every method runs as a hippojax study
(in-memory storage, so the numbers measure the algorithms and not a
database) until it reaches the target or spends its wall-clock budget. A
black-box trial is one full training with the problem's inner-step budget;
an outer step of a gradient method spends the same budget, warm-started.
Wall-clock includes compilation (the caches are cleared before each run).

The target is 95% of the improvement over the default hyperparameters that
the best of long gradient runs achieved:
``target = v_default - 0.95 (v_default - v_best)``.

    python benchmarks/time_to_target.py --quick   # under 2 minutes
    python benchmarks/time_to_target.py           # full run, ~40 min

The quick mode writes ``results/time_to_target_quick.{json,md}``, the full
mode ``results/time_to_target.{json,md}``.
"""

import time

import _common
import jax

import hippojax
from hippojax._src import outer, problems

# name -> (number of hyperparameters, v_best: the best validation loss of
# long hoag runs in float32, 150 / 400 / 600 / 400 outer steps with the
# default options, at least 10x the steps any method needs to hit the target).
PROBLEMS = {
    "ridge-diabetes-scalar": (1, 0.247806),
    "ridge-diabetes": (10, 0.234104),
    "logreg-breast-cancer": (30, 0.038077),
    "logreg-digits": (640, 0.039542),
}
TARGET_FRACTION = 0.95

QUICK = {"methods": ["hoag", "random", "tpe"],
         "budget": {"gradient": 15.0, "blackbox": 8.0}}
FULL = {"methods": ["hoag", "ift", "t1t2", "drmad", "reverse", "random",
                    "tpe"],
        "budget": {"gradient": 60.0, "blackbox": 180.0}}


def run_method(problem, method: str, target: float, budget: float) -> dict:
  """One study until the target or the budget; returns its numbers."""
  jax.clear_caches()
  outer._engine.cache_clear()  # pylint: disable=protected-access
  study = hippojax.create_study(method, storage=":memory:")
  reached = {}

  def callback(study_, record):
    # The trial's value: retrained from scratch, for both kinds of method.
    value = record.get("value")
    if value is not None and value <= target and not reached:
      reached.update(step=record["step"], wall=record["wall_seconds"])
      study_.stop()

  start = time.perf_counter()
  study.optimize(problem, timeout=budget, callbacks=[callback])
  total = time.perf_counter() - start
  trials = study.chain_trials()
  values = [t.value for t in trials if t.value is not None]
  inner = problem.inner_steps
  out = {
      "reached": bool(reached),
      "trials": len(trials),
      "best_val_loss": min(values) if values else None,
      "wall_seconds_total": total,
      "first_trial_seconds": (trials[0].user_attrs["wall_seconds"]
                              if trials else None),
      "budget_seconds": budget,
  }
  if reached:
    out.update(wall_seconds_to_target=reached["wall"],
               trials_to_target=reached["step"] + 1,
               inner_steps_to_target=(reached["step"] + 1) * inner)
  else:
    out.update(wall_seconds_to_target=None, trials_to_target=None,
               inner_steps_to_target=None)
  return out


def _speedup(grad: dict, tpe: dict) -> dict:
  """TPE's time to target over the method's: a bound if TPE missed it."""
  if not grad["reached"]:
    return {"ratio": None, "bound": False}
  t = grad["wall_seconds_to_target"]
  if tpe["reached"]:
    return {"ratio": tpe["wall_seconds_to_target"] / t, "bound": False}
  return {"ratio": tpe["wall_seconds_total"] / t, "bound": True}


def main():
  args = _common.parser(__doc__).parse_args()
  cfg = QUICK if args.quick else FULL
  load_before = _common.load()
  results = {"mode": "quick" if args.quick else "full",
             "command": _common.command(), "machine": _common.machine(),
             "cpu": _common.cpu_model(), "target_fraction": TARGET_FRACTION,
             "storage": ":memory:", "dtype": str(jax.numpy.zeros(()).dtype),
             "problems": {}}
  for name, (n_hparams, best) in PROBLEMS.items():
    problem = problems.get(name)
    assert problem.num_hparams == n_hparams
    default = problem.validate(problem.space.default())
    target = default - TARGET_FRACTION * (default - best)
    entry = {"num_hparams": n_hparams, "inner_steps": problem.inner_steps,
             "default_val_loss": default, "reference_val_loss": best,
             "target": target, "methods": {}}
    for method in cfg["methods"]:
      kind = "blackbox" if method in ("random", "tpe") else "gradient"
      r = run_method(problem, method, target, cfg["budget"][kind])
      entry["methods"][method] = r
      print(f"{name:22s} {method:7s} reached={r['reached']!s:5s} "
            f"t={_fmt_time(r)} trials={r['trials']} "
            f"best={r['best_val_loss']:.6g} (target {target:.6g})",
            flush=True)
    if "tpe" in entry["methods"]:
      entry["speedup_vs_tpe"] = {
          m: _speedup(r, entry["methods"]["tpe"])
          for m, r in entry["methods"].items() if m not in ("random", "tpe")}
    results["problems"][name] = entry
  name = "time_to_target_quick" if args.quick else "time_to_target"
  _common.write(name, results, markdown(results, load_before), args.out)


def _fmt_time(r: dict) -> str:
  if r["reached"]:
    return f"{r['wall_seconds_to_target']:.2f}s"
  return f">{r['wall_seconds_total']:.0f}s"


def markdown(results: dict, load_before: str) -> str:
  lines = _common.header(
      f"Time to target validation loss ({results['mode']} mode)", load_before)
  lines += [
      "Wall-clock and inner trainings until the validation loss reaches "
      f"`v_default − {results['target_fraction']} (v_default − v_best)`, "
      "`v_best` the best of long gradient runs. Studies use in-memory "
      "storage and float32; wall-clock includes compilation (caches "
      "cleared before each run). One trial = one training of the problem's "
      "inner-step budget (black-box: from scratch; gradient methods: one "
      "warm-started outer step). `>` marks a run that spent its budget "
      "without reaching the target.", ""]
  for name, p in results["problems"].items():
    lines += [f"### {name} ({p['num_hparams']} hyperparameters, "
              f"{p['inner_steps']} inner steps per trial)", "",
              f"default {p['default_val_loss']:.6g}, best known "
              f"{p['reference_val_loss']:.6g}, target {p['target']:.6g}", ""]
    rows = []
    for m, r in p["methods"].items():
      speed = p.get("speedup_vs_tpe", {}).get(m)
      if speed is None or speed["ratio"] is None:
        speed_s = "—"
      else:
        speed_s = ("≥ " if speed["bound"] else "") + f"{speed['ratio']:.1f}×"
      rows.append([
          m, "yes" if r["reached"] else "no", _fmt_time(r),
          r["trials_to_target"] if r["reached"] else f">{r['trials']}",
          r["inner_steps_to_target"] if r["reached"] else
          f">{r['trials'] * p['inner_steps']}",
          f"{r['first_trial_seconds']:.2f}" if r["first_trial_seconds"]
          else "—",
          f"{r['best_val_loss']:.6g}", speed_s])
    lines += [_common.table(
        ["method", "reached", "wall to target", "trials to target",
         "inner steps to target", "first trial s (compile)", "best val loss",
         "TPE time / method time"], rows), ""]
  return "\n".join(lines)


if __name__ == "__main__":
  main()
