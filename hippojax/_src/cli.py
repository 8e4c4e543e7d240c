"""The ``hippojax`` command line.

Commands: ``problems``, ``run``, ``compare``, ``report`` and ``demo``; see
``hippojax COMMAND --help`` and docs/cli.md.
"""

import argparse
import os
import shlex
import sys

DEFAULT_COMPARE_PROBLEM = "logreg-breast-cancer"
DEFAULT_COMPARE_METHODS = "hoag,ift,t1t2,random,tpe"
DEFAULT_COMPARE_BUDGET = 20.0

# flag -> (option name, type) for the method options of create_study.
_OPTION_FLAGS = {
    "inner_steps": int, "outer_lr": float, "num_iters": int, "tol": float,
    "maxiter": int, "unroll_steps": int, "n_startup_trials": int,
    "linear_rate": float, "warm_steps": int, "linear_steps": int,
    "damping": float,
}


class _CliError(Exception):
  """An expected failure: printed as one line, exit status 1."""


def _demo(args) -> int:
  import jax
  jax.config.update("jax_enable_x64", True)
  from hippojax._src.demo import run_demo
  r = run_demo(outer_steps=args.steps, inner_steps=args.inner_steps,
               seed=args.seed)
  print("hippojax demo: per-feature ridge on diabetes, tuned with hoag + adam")
  print(f"  outer steps            {r['outer_steps']} "
        f"({r['inner_steps']} warm-started inner steps each, "
        f"{r['seconds']:.2f}s)")
  print(f"  validation loss        {r['val_loss_before']:.6f} -> "
        f"{r['val_loss_after']:.6f}")
  print(f"  hoag vs exact rel err  {r['hypergrad_rel_error']:.2e} at the "
        f"trained weights (CG: {r['cg_iterations']} iterations, residual "
        f"{r['cg_residual']:.1e})")
  print(f"                         {r['hypergrad_rel_error_at_optimum']:.2e} "
        "at the exact inner optimum")
  print(f"  ridge strengths        {r['ridge_strengths']}")
  return 0


def _problems(args) -> int:
  del args
  from hippojax._src import problems
  width = max(len(n) for n in problems.names())
  for name in problems.names():
    print(f"{name:<{width}}  {problems.DESCRIPTIONS[name]}")
  return 0


def _method_options(args, method: str) -> dict:
  """The method options given on the command line that ``method`` takes."""
  from hippojax._src.study import METHOD_OPTIONS
  given = {name: getattr(args, name) for name in _OPTION_FLAGS
           if getattr(args, name, None) is not None}
  if getattr(args, "remat", False):
    given["remat"] = True
  if getattr(args, "multivariate", False):
    given["multivariate"] = True
  return {k: v for k, v in given.items() if k in METHOD_OPTIONS[method]}


def _check_options_used(parser, args, methods) -> None:
  from hippojax._src.study import METHOD_OPTIONS
  flags = [n for n in _OPTION_FLAGS if getattr(args, n, None) is not None]
  flags += [n for n in ("remat", "multivariate") if getattr(args, n, False)]
  for name in flags:
    if not any(name in METHOD_OPTIONS[m] for m in methods):
      takers = sorted(m for m, o in METHOD_OPTIONS.items() if name in o)
      parser.error(f"--{name.replace('_', '-')} is not an option of "
                   f"{', '.join(methods)}; it applies to {', '.join(takers)}.")


def _format_value(value) -> str:
  import numpy as np
  v = np.asarray(value)
  if v.ndim == 0:
    return f"{float(v):.6g}"
  if v.size <= 12:
    return "[" + ", ".join(f"{x:.4g}" for x in v.reshape(-1)) + "]"
  return (f"array{tuple(v.shape)}: min {v.min():.4g}, median "
          f"{np.median(v):.4g}, max {v.max():.4g}")


def _run(args) -> int:
  from hippojax._src import problems
  from hippojax._src.study import create_study
  options = _method_options(args, args.method)
  study = create_study(args.method, storage=args.storage,
                       study_name=args.study, seed=args.seed,
                       checkpoint_dir=args.checkpoint_dir,
                       checkpoint_every=args.checkpoint_every, **options)
  problem = problems.get(args.problem)
  study.optimize(problem, n_steps=args.steps, timeout=args.timeout,
                 show_progress_bar=not args.no_progress)
  chain = study.chain_trials()
  if not any(t.value is not None for t in study.trials):
    print(f"study {study.study_name!r}: no complete trials yet.")
    return 0
  last = chain[-1].user_attrs if chain else {}
  print(f"study {study.study_name!r} ({args.method}, seed {args.seed}): "
        f"{len(chain)} trials in this chain, "
        f"{last.get('wall_seconds', 0.0):.1f} s, "
        f"{last.get('inner_steps', 0)} inner steps")
  print(f"best validation loss {study.best_value:.6g} "
        f"(trial {study.best_trial.number})")
  print("best hyperparameters:")
  for name, value in study.best_params.items():
    print(f"  {name} = {_format_value(value)}")
  ev = study.evaluate_best()
  print(f"retrained from scratch: validation loss {ev['val_loss']:.6g}, "
        f"{problem.metric_name} {ev['test_metric']:.4g}")
  return 0


def _command_line(argv) -> str:
  return "hippojax " + " ".join(shlex.quote(a) for a in argv)


def _compare(args, parser) -> int:
  from hippojax._src import problems
  from hippojax._src import report
  from hippojax._src import storage as storage_lib
  from hippojax._src.study import METHODS, create_study
  methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  unknown = [m for m in methods if m not in METHODS]
  if unknown or not methods:
    parser.error(f"unknown method(s) {', '.join(unknown) or '(none)'}; "
                 f"choose from {', '.join(METHODS)}.")
  if len(set(methods)) != len(methods):
    parser.error(f"--methods lists a method twice: {args.methods}.")
  if not args.budget > 0:
    parser.error(f"--budget must be > 0 seconds, got {args.budget}.")
  _check_options_used(parser, args, methods)
  url = args.storage or "sqlite:///" + os.path.join(args.out, "studies.db")
  if args.storage:
    resolved = storage_lib.open_storage(url)  # fails before DIR is created
  else:
    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent):
      raise _CliError(f"cannot create --out {args.out!r}: directory "
                      f"{parent!r} does not exist.")
    os.makedirs(args.out, exist_ok=True)
    resolved = storage_lib.open_storage(url)
  problem = problems.get(args.problem)
  import optuna
  studies = []
  for method in methods:
    name = f"{problem.name}-{method}"
    if name in [s.study_name for s in resolved.storage.get_all_studies()]:
      optuna.delete_study(study_name=name, storage=resolved.storage)
    ckpt = os.path.join(args.out, "checkpoints")
    study = create_study(method, storage=resolved.storage, study_name=name,
                         seed=args.seed, checkpoint_dir=ckpt,
                         checkpoint_every=100,
                         **_method_options(args, method))
    _clear_checkpoints(study, ckpt)
    study.optimize(problem, timeout=args.budget,
                   show_progress_bar=not args.no_progress)
    studies.append(study)
  results = report.build(studies, command=_command_line(args.argv),
                         budget_seconds=args.budget)
  report.write(results, args.out)
  print(report.table(results))
  print(f"\nwrote {args.out}/report.md, results.json and plots")
  return 0


def _clear_checkpoints(study, root) -> None:
  import shutil
  from hippojax._src import storage as storage_lib
  path = os.path.join(root, storage_lib.safe_name(study.study_name))
  shutil.rmtree(path, ignore_errors=True)


def _report(args) -> int:
  from hippojax._src import report
  from hippojax._src import storage as storage_lib
  from hippojax._src.study import list_studies, load_study
  url = storage_lib.normalise(args.storage)
  path = (url[len("sqlite:///"):] if isinstance(url, str) and
          url.startswith("sqlite:///") else
          url[len("journal:"):] if isinstance(url, str) and
          url.startswith("journal:") else None)
  if path is not None and not os.path.exists(path):
    raise _CliError(f"cannot open storage {args.storage!r}: {path!r} does "
                    "not exist.")
  resolved = storage_lib.open_storage(url)
  names = [args.study] if args.study else list_studies(resolved.storage)
  if not names:
    raise _CliError(f"no hippojax studies in {args.storage!r}.")
  studies = [load_study(resolved.storage, n) for n in names]
  results = report.build(studies, command=_command_line(args.argv))
  report.write(results, args.out)
  print(report.table(results))
  print(f"\nwrote {args.out}/report.md, results.json and plots")
  return 0


def _add_method_options(p) -> None:
  g = p.add_argument_group(
      "method options (each applies only to the methods that take it)")
  g.add_argument("--inner-steps", dest="inner_steps", type=int,
                 help="training steps per trial / per outer step "
                      "(default: the problem's)")
  g.add_argument("--outer-lr", dest="outer_lr", type=float,
                 help="gradient methods: Adam step on the unconstrained "
                      "hyperparameters (default: the problem's)")
  g.add_argument("--num-iters", dest="num_iters", type=int,
                 help="ift: Neumann terms (10)")
  g.add_argument("--tol", type=float, help="hoag: CG tolerance (1e-4)")
  g.add_argument("--maxiter", type=int, help="hoag: CG iterations (100)")
  g.add_argument("--unroll-steps", dest="unroll_steps", type=int,
                 help="drmad, reverse: differentiated tail of the inner "
                      "budget (100)")
  g.add_argument("--remat", action="store_true",
                 help="reverse: rematerialise the unrolled steps")
  g.add_argument("--n-startup-trials", dest="n_startup_trials", type=int,
                 help="tpe: random trials before TPE (10)")
  g.add_argument("--multivariate", action="store_true",
                 help="tpe: multivariate TPE")
  g.add_argument("--linear-rate", dest="linear_rate", type=float,
                 help="soba, saba, amigo: step on the linear-system variable "
                      "relative to the natural one (1)")
  g.add_argument("--damping", type=float,
                 help="soba, saba, amigo: damping of the linear system (0)")
  g.add_argument("--warm-steps", dest="warm_steps", type=int,
                 help="amigo: weight steps per hypergradient (5)")
  g.add_argument("--linear-steps", dest="linear_steps", type=int,
                 help="amigo: linear-system steps per hypergradient (5)")


def build_parser() -> argparse.ArgumentParser:
  from hippojax._src.problems import EXTRA_PROBLEMS, PROBLEMS
  from hippojax._src.study import METHODS
  problem_names = list(PROBLEMS) + list(EXTRA_PROBLEMS)
  parser = argparse.ArgumentParser(
      prog="hippojax",
      description="Gradient-based hyperparameter optimisation in JAX.")
  sub = parser.add_subparsers(dest="command", required=True,
                              metavar="{problems,run,compare,report,demo}")

  sub.add_parser("problems", help="list the built-in problems").set_defaults(
      func=_problems)

  run = sub.add_parser("run", help="run or resume a study")
  run.add_argument("--problem", required=True, choices=problem_names,
                   metavar="PROBLEM", help="one of: " + ", ".join(PROBLEMS))
  run.add_argument("--method", required=True, choices=METHODS,
                   metavar="METHOD", help="one of: " + ", ".join(METHODS))
  run.add_argument("--steps", type=int, default=None,
                   help="trials (outer steps) of this chain in total, "
                        "counting those of an interrupted run")
  run.add_argument("--timeout", type=float, default=None,
                   help="stop after this many seconds")
  run.add_argument("--storage", default=None,
                   help="SQLAlchemy URL, journal:PATH, a .db or .log path, "
                        "or :memory: (default: sqlite:///hippojax.db)")
  run.add_argument("--study", default=None,
                   help="study name (default: PROBLEM-METHOD)")
  run.add_argument("--seed", type=int, default=0,
                   help="chain seed; run other workers with other seeds")
  run.add_argument("--checkpoint-every", type=int, default=10,
                   help="gradient methods: checkpoint every N steps (10)")
  run.add_argument("--checkpoint-dir", default=None,
                   help="default: next to the storage file")
  run.add_argument("--no-progress", action="store_true",
                   help="no progress bar")
  _add_method_options(run)
  run.set_defaults(func=_run)

  cmp = sub.add_parser(
      "compare", help="run several methods for the same wall-clock budget "
                      "and write a report")
  cmp.add_argument("--problem", default=DEFAULT_COMPARE_PROBLEM,
                   choices=problem_names, metavar="PROBLEM",
                   help=f"one of: {', '.join(PROBLEMS)} "
                        f"(default {DEFAULT_COMPARE_PROBLEM})")
  cmp.add_argument("--methods", default=DEFAULT_COMPARE_METHODS,
                   help=f"comma-separated, from {', '.join(METHODS)} "
                        f"(default {DEFAULT_COMPARE_METHODS})")
  cmp.add_argument("--budget", type=float, default=DEFAULT_COMPARE_BUDGET,
                   help="wall-clock seconds per method, compilation "
                        f"included (default {DEFAULT_COMPARE_BUDGET:g})")
  cmp.add_argument("--out", default="hippojax-compare",
                   help="output directory (default hippojax-compare)")
  cmp.add_argument("--storage", default=None,
                   help="default: OUT/studies.db")
  cmp.add_argument("--seed", type=int, default=0)
  cmp.add_argument("--no-progress", action="store_true")
  _add_method_options(cmp)
  cmp.set_defaults(func=_compare)

  rep = sub.add_parser("report", help="write a report from stored studies")
  rep.add_argument("--storage", required=True,
                   help="the storage URL or file of the studies")
  rep.add_argument("--study", default=None,
                   help="one study (default: every hippojax study there)")
  rep.add_argument("--out", required=True, help="output directory")
  rep.set_defaults(func=_report)

  demo = sub.add_parser(
      "demo", help="tune per-feature ridge strengths on diabetes with hoag")
  demo.add_argument("--steps", type=int, default=40, help="outer steps")
  demo.add_argument("--inner-steps", type=int, default=300,
                    help="warm-started inner gradient steps per outer step")
  demo.add_argument("--seed", type=int, default=0)
  demo.set_defaults(func=_demo)
  return parser


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = build_parser()
  args = parser.parse_args(argv)
  args.argv = argv
  from hippojax._src.storage import ChainBusyError, StorageError
  try:
    if args.command == "compare":
      return args.func(args, parser)
    if args.command == "run":
      if args.steps is None and args.timeout is None:
        parser.error("run needs --steps, --timeout or both.")
      _check_options_used(parser, args, [args.method])
    return args.func(args)
  except (StorageError, ChainBusyError, _CliError) as e:
    print(f"hippojax: error: {e}", file=sys.stderr)
    return 1
  except (ValueError, KeyError, TypeError) as e:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"hippojax: error: {msg}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("hippojax: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
