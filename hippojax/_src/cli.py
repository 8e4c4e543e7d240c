"""The ``hippojax`` command line.

Commands: ``problems``, ``run``, ``compare``, ``report`` and ``demo``; see
``hippojax COMMAND --help`` and docs/cli.md.

Exit status: 0 on success; 2 for a usage error (an unknown name, a value out
of range: argparse's convention), reported before anything is written; 1 for
a failure at run time (a storage or directory that cannot be used, a study
that refuses to resume). Either way the message is one line on stderr.
"""

import argparse
import math
import os
import shlex
import sys

DEFAULT_COMPARE_PROBLEM = "logreg-breast-cancer"
DEFAULT_COMPARE_METHODS = "hoag,ift,t1t2,random,tpe"
DEFAULT_COMPARE_BUDGET = 20.0

# flag -> type for the method options of create_study.
_OPTION_FLAGS = {
    "inner_steps": int, "outer_lr": float, "num_iters": int, "tol": float,
    "maxiter": int, "unroll_steps": int, "n_startup_trials": int,
    "linear_rate": float, "warm_steps": int, "linear_steps": int,
    "damping": float, "decay_rounds": float, "step_size": float,
    "eps": float, "delta": float, "max_backtracks": int,
    "pruner": str,
}


class _CliError(Exception):
  """An expected failure at run time: printed as one line, exit status 1."""


# -- argument types (argparse turns their errors into exit status 2) --------


def _int_at_least(low: int):
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(
          f"must be an int >= {low}, got {text!r}") from None
    if value < low:
      raise argparse.ArgumentTypeError(
          f"must be an int >= {low}, got {text!r}")
    return value
  parse.__name__ = f"int >= {low}"
  return parse


def _positive(what: str):
  """An argparse type: a finite float > 0, with ``what`` in its error."""

  def parse(text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      value = math.nan
    if not (value > 0 and math.isfinite(value)):
      raise argparse.ArgumentTypeError(f"must be {what} > 0, got {text!r}")
    return value

  return parse


_seconds = _positive("a finite number of seconds")
_positive_float = _positive("a number")


# -- checks on paths (run time: exit status 1) -------------------------------


def _check_dir(path: str, flag: str) -> None:
  """``path`` is, or can be created as, a writable directory.

  A probe file is created and removed at once in ``path`` or its nearest
  existing ancestor: ``os.access`` says yes to root even on read-only or
  virtual file systems such as ``/proc``.
  """
  import tempfile
  if os.path.exists(path) and not os.path.isdir(path):
    raise _CliError(f"{flag} {path!r} is a file, not a directory.")
  where = os.path.abspath(path)
  while not os.path.exists(where):
    where = os.path.dirname(where)
  if not os.path.isabs(path):  # name it as the user did
    where = os.path.relpath(where)
  if not os.path.isdir(where):
    raise _CliError(f"cannot create {flag} {path!r}: {where!r} is a file.")
  try:
    with tempfile.TemporaryFile(prefix=".hippojax-probe-", dir=where):
      pass
  except OSError as e:
    what = ("is" if os.path.abspath(where) == os.path.abspath(path) else
            f"cannot be created: {where!r} is")
    raise _CliError(f"{flag} {path!r} {what} not writable "
                    f"({e.strerror or e}).") from None


def _storage_file(url) -> str | None:
  if not isinstance(url, str):
    return None
  if url.startswith("sqlite:///"):
    return url[len("sqlite:///"):] or None
  if url.startswith("journal:"):
    return url[len("journal:"):]
  return None


def _check_existing_storage(given: str, url) -> None:
  """A storage file that ``report`` reads must exist and hold studies."""
  path = _storage_file(url)
  if path is None:
    return
  if not os.path.exists(path):
    raise _CliError(f"cannot open storage {given!r}: {path!r} does not "
                    "exist.")
  if os.path.isdir(path):
    raise _CliError(f"cannot open storage {given!r}: {path!r} is a "
                    "directory.")
  if os.path.getsize(path) == 0:
    raise _CliError(f"cannot open storage {given!r}: {path!r} is empty, "
                    "not an Optuna storage.")
  if url.startswith("sqlite:///"):
    import sqlite3
    try:
      with open(path, "rb") as f:
        header = f.read(16)
      if header != b"SQLite format 3\x00":
        raise _CliError(f"cannot open storage {given!r}: {path!r} is not a "
                        "SQLite database.")
      con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
      try:
        tables = {r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
      finally:
        con.close()
    except (OSError, sqlite3.Error) as e:
      raise _CliError(f"cannot open storage {given!r}: {e}") from None
    if "studies" not in tables:
      raise _CliError(f"cannot open storage {given!r}: {path!r} is a SQLite "
                      "database without Optuna's tables.")


# -- commands -----------------------------------------------------------------


def _version() -> str:
  from hippojax import __version__
  return __version__


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
  extra = problems.EXTRA_DESCRIPTIONS
  width = max(len(n) for n in [*problems.names(), *extra])
  for name in problems.names():
    print(f"{name:<{width}}  {problems.DESCRIPTIONS[name]}")
  print("variants used by the benchmarks (also accepted by --problem):")
  for name, text in extra.items():
    print(f"{name:<{width}}  {text}")
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
  if getattr(args, "average", None) is False:
    given["average"] = False
  return {k: v for k, v in given.items() if k in METHOD_OPTIONS[method]}


def _check_options(parser, args, methods) -> None:
  """Usage errors in the method options, before anything is opened."""
  from hippojax._src.study import METHOD_OPTIONS, check_method
  flags = [n for n in _OPTION_FLAGS if getattr(args, n, None) is not None]
  flags += [n for n in ("remat", "multivariate") if getattr(args, n, False)]
  for name in flags:
    if not any(name in METHOD_OPTIONS[m] for m in methods):
      takers = sorted(m for m, o in METHOD_OPTIONS.items() if name in o)
      parser.error(f"--{name.replace('_', '-')} is not an option of "
                   f"{', '.join(methods)}; it applies to {', '.join(takers)}.")
  for m in methods:
    try:
      check_method(m, _method_options(args, m))
    except (ValueError, TypeError) as e:
      parser.error(str(e))


def _format_value(value) -> str:
  import numpy as np
  v = np.asarray(value)
  if v.ndim == 0:
    return f"{float(v):.6g}"
  if v.size <= 12:
    return "[" + ", ".join(f"{x:.4g}" for x in v.reshape(-1)) + "]"
  return (f"array{tuple(v.shape)}: min {v.min():.4g}, median "
          f"{np.median(v):.4g}, max {v.max():.4g}")


def _solve_failures(study) -> str | None:
  """One line when most hypergradient solves of a gradient chain failed."""
  flags = [t.user_attrs.get("solver_converged") for t in study.chain_trials()]
  flags = [f for f in flags if f is not None]
  if not flags:
    return None
  failed = sum(1 for f in flags if not f)
  if failed * 2 <= len(flags):
    return None
  return (f"warning: {study.study_name}: {failed} of {len(flags)} "
          f"hypergradient solves ({failed / len(flags):.0%}) did not converge "
          "(a large residual, negative curvature, or weights not at a fixed "
          "point); see the solver_* and fixed_point_residual attributes and "
          "docs/choosing.md.")


def _run(args) -> int:
  from hippojax._src import problems
  from hippojax._src.study import create_study
  if args.checkpoint_dir is not None and "://" not in args.checkpoint_dir:
    _check_dir(args.checkpoint_dir, "--checkpoint-dir")
  options = _method_options(args, args.method)
  name = args.study or f"{args.problem}-{args.method}"
  study = create_study(args.method, storage=args.storage, study_name=name,
                       seed=args.seed, checkpoint_dir=args.checkpoint_dir,
                       checkpoint_every=args.checkpoint_every, **options)
  problem = problems.get(args.problem)
  done = [t for t in study.chain_trials() if t.state.is_finished()]
  if args.steps is not None and args.steps <= len(done):
    print(f"seed {args.seed} of study {name!r} already has {len(done)} "
          f"trials (--steps {args.steps}): nothing to run. Pass --steps "
          f"above {len(done)} to continue it.")
  else:
    study.optimize(problem, n_steps=args.steps, timeout=args.timeout,
                   show_progress_bar=not args.no_progress)
  chain = study.chain_trials()
  complete = [t for t in study.trials if t.value is not None and
              t.state.name == "COMPLETE"]
  if not complete:
    print(f"study {name!r}: no complete trials yet.")
    return 0
  last = chain[-1].user_attrs if chain else {}
  chains = sorted({t.user_attrs.get("chain") for t in complete})
  print(f"study {name!r} ({args.method}, seed {args.seed}): "
        f"{len(chain)} trials in this chain, "
        f"{last.get('wall_seconds', 0.0):.1f} s, "
        f"{last.get('inner_steps', 0)} inner steps"
        + (f"; {len(complete)} complete trials in {len(chains)} chains"
           if len(chains) > 1 else ""))
  best = study.best_trial
  print(f"best validation loss, retrained from scratch: {best.value:.6g} "
        f"(trial {best.number}, seed {best.user_attrs.get('chain')})")
  warm = best.user_attrs.get("warm_val_loss")
  if warm is not None:
    print(f"  (at the chain's warm-started weights it was {warm:.6g})")
  print("best hyperparameters:")
  for pname, value in study.best_params.items():
    print(f"  {pname} = {_format_value(value)}")
  ev = study.evaluate_best(seed=best.user_attrs.get("chain"))
  print(f"{problem.metric_name} of that retrained model: "
        f"{ev['test_metric']:.4g}")
  failures = _solve_failures(study)
  if failures:
    print(failures)
  return 0


def _command_line(argv) -> str:
  return "hippojax " + " ".join(shlex.quote(a) for a in argv)


class _Bar:
  """One tqdm bar over a whole compare, in seconds of budget."""

  def __init__(self, show: bool, total: float):
    self._bar = None
    self._done = 0.0
    if show:
      from tqdm.auto import tqdm
      self._bar = tqdm(total=round(total, 1), unit="s", dynamic_ncols=True,
                       bar_format="{desc} {percentage:3.0f}%|{bar}| "
                                  "{n:.0f}/{total:.0f} s [{elapsed}<"
                                  "{remaining}{postfix}]")

  def start(self, label: str) -> None:
    if self._bar is not None:
      self._bar.set_description(label)

  def callback(self, budget: float):
    def cb(study, record):
      del study
      if self._bar is not None:
        self._bar.n = round(self._done + min(record["wall_seconds"], budget),
                            1)
        self._bar.refresh()
    return cb

  def finish(self, budget: float) -> None:
    self._done += budget
    if self._bar is not None:
      self._bar.n = round(self._done, 1)
      self._bar.refresh()

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def _compare(args, parser) -> int:
  from hippojax._src import problems
  from hippojax._src import report
  from hippojax._src import storage as storage_lib
  from hippojax._src.study import BLACKBOX_METHODS, METHODS, create_study
  methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  unknown = [m for m in methods if m not in METHODS]
  if unknown or not methods:
    parser.error(f"unknown method(s) {', '.join(unknown) or '(none)'}; "
                 f"choose from {', '.join(METHODS)}.")
  if len(set(methods)) != len(methods):
    parser.error(f"--methods lists a method twice: {args.methods}.")
  _check_options(parser, args, methods)
  pruner = args.pruner
  args.pruner = None  # the plain runs are unpruned; variants added below
  runs = [(m, _method_options(args, m)) for m in methods]
  if pruner not in (None, "none"):
    runs += [(m, dict(_method_options(args, m), pruner=pruner))
             for m in methods if m in BLACKBOX_METHODS]
  problem = problems.get(args.problem)

  def study_name(method, options):
    p = options.get("pruner")
    return f"{problem.name}-{method}" + (f"-pruned-{p}" if p else "")

  _check_dir(args.out, "--out")
  url = args.storage or "sqlite:///" + os.path.join(args.out, "studies.db")
  existing_file = _storage_file(url)
  if args.storage or (existing_file and os.path.exists(existing_file)):
    resolved = storage_lib.open_storage(url)  # nothing created on failure
  else:
    resolved = None
  if resolved is not None:
    present = {s.study_name for s in resolved.storage.get_all_studies()}
    clash = [study_name(m, o) for m, o in runs if study_name(m, o) in present]
    if clash and not args.overwrite:
      raise _CliError(
          f"{resolved.url} already holds the studies {', '.join(clash)}; "
          "compare keeps existing studies: pass --overwrite to replace them, "
          "or choose another --out or --storage.")
  os.makedirs(args.out, exist_ok=True)
  if resolved is None:
    resolved = storage_lib.open_storage(url)
  import optuna
  ckpt = os.path.join(args.out, "checkpoints")
  bar = _Bar(not args.no_progress, args.budget * len(runs))
  studies = []
  try:
    for method, options in runs:
      name = study_name(method, options)
      if name in [s.study_name for s in resolved.storage.get_all_studies()]:
        optuna.delete_study(study_name=name, storage=resolved.storage)
        _clear_checkpoints(name, ckpt)
      study = create_study(method, storage=resolved.storage, study_name=name,
                           seed=args.seed, checkpoint_dir=ckpt,
                           checkpoint_every=100, **options)
      bar.start(f"{problem.name} {report.method_key(study)}")
      study.optimize(problem, timeout=args.budget,
                     callbacks=[bar.callback(args.budget)])
      bar.finish(args.budget)
      studies.append(study)
  finally:
    bar.close()
  results = _build_report(studies, args, budget=args.budget)
  print(report.table(results))
  print(f"\nwrote {args.out}/report.md, results.json and plots")
  for study in studies:
    failures = _solve_failures(study)
    if failures:
      print(failures)
  return 0


def _build_report(studies, args, budget=None) -> dict:
  from hippojax._src import report
  show = not args.no_progress
  bar = None
  if show:
    from tqdm.auto import tqdm
    bar = tqdm(total=3 * len(studies), desc="report: retraining best "
               "hyperparameters", unit="training", dynamic_ncols=True)
  try:
    results = report.build(studies, command=_command_line(args.argv),
                           budget_seconds=budget,
                           progress=None if bar is None else bar.update)
    report.write(results, args.out)
  finally:
    if bar is not None:
      bar.total = bar.n
      bar.close()
  return results


def _clear_checkpoints(name, root) -> None:
  import shutil
  from hippojax._src import storage as storage_lib
  path = os.path.join(root, storage_lib.safe_name(name))
  shutil.rmtree(path, ignore_errors=True)


def _report(args) -> int:
  from hippojax._src import report
  from hippojax._src import storage as storage_lib
  from hippojax._src.study import list_studies, load_study
  url = storage_lib.normalise(args.storage)
  _check_existing_storage(args.storage, url)
  _check_dir(args.out, "--out")
  resolved = storage_lib.open_storage(url)
  names = [args.study] if args.study else list_studies(resolved.storage)
  if not names:
    raise _CliError(f"no hippojax studies in {args.storage!r}.")
  studies = [load_study(resolved.storage, n) for n in names]
  results = _build_report(studies, args)
  print(report.table(results))
  print(f"\nwrote {args.out}/report.md, results.json and plots")
  return 0


# -- the parser ---------------------------------------------------------------


def _add_method_options(p, *, pruner_help: str) -> None:
  from hippojax._src.pruning import PRUNERS
  g = p.add_argument_group(
      "method options (each applies only to the methods that take it)")
  g.add_argument("--inner-steps", dest="inner_steps", type=_int_at_least(1),
                 help="training steps per trial / per outer step "
                      "(default: the problem's)")
  g.add_argument("--outer-lr", dest="outer_lr", type=_positive_float,
                 help="gradient methods: Adam step on the unconstrained "
                      "hyperparameters (default: the problem's)")
  g.add_argument("--num-iters", dest="num_iters", type=_int_at_least(0),
                 help="ift: Neumann terms (default 10)")
  g.add_argument("--tol", type=_positive_float,
                 help="hoag: CG tolerance (default 1e-4)")
  g.add_argument("--maxiter", type=_int_at_least(1),
                 help="hoag, maid: CG iterations (default 100)")
  g.add_argument("--step-size", dest="step_size", type=_positive_float,
                 help="maid: first line-search step on the unconstrained "
                      "hyperparameters (1e3)")
  g.add_argument("--eps", type=_positive_float,
                 help="maid: first inner accuracy ||grad_w L_train|| <= eps "
                      "(1e-3)")
  g.add_argument("--delta", type=_positive_float,
                 help="maid: first relative CG residual (1e-2)")
  g.add_argument("--max-backtracks", dest="max_backtracks",
                 type=_int_at_least(1),
                 help="maid: rejected steps before the accuracies tighten "
                      "(8)")
  g.add_argument("--unroll-steps", dest="unroll_steps", type=_int_at_least(1),
                 help="drmad, reverse: differentiated tail of the inner "
                      "budget (default 100)")
  g.add_argument("--remat", action="store_true",
                 help="reverse: rematerialise the unrolled steps")
  g.add_argument("--n-startup-trials", dest="n_startup_trials",
                 type=_int_at_least(0),
                 help="tpe: random trials before TPE (default 10)")
  g.add_argument("--multivariate", action="store_true",
                 help="tpe: multivariate TPE")
  g.add_argument("--linear-rate", dest="linear_rate", type=float,
                 help="soba, saba, amigo: step on the linear-system variable "
                      "relative to the natural one (1)")
  g.add_argument("--damping", type=float,
                 help="soba, saba, amigo: damping of the linear system (0)")
  g.add_argument("--decay-rounds", dest="decay_rounds", type=float,
                 help="soba, saba, amigo: the outer step decays as "
                      "1/sqrt(1 + t/tau), tau this many rounds (4; 0: "
                      "constant)")
  g.add_argument("--last-iterate", dest="average", action="store_false",
                 default=None,
                 help="soba, saba, amigo: record each round's last "
                      "hyperparameters instead of the round's mean")
  g.add_argument("--warm-steps", dest="warm_steps", type=int,
                 help="amigo: weight steps per hypergradient (5)")
  g.add_argument("--linear-steps", dest="linear_steps", type=int,
                 help="amigo: linear-system steps per hypergradient (5)")
  g.add_argument("--pruner", choices=PRUNERS, default=None, help=pruner_help)


def build_parser() -> argparse.ArgumentParser:
  from hippojax._src.problems import EXTRA_PROBLEMS, PROBLEMS
  from hippojax._src.study import METHODS
  problem_names = list(PROBLEMS) + list(EXTRA_PROBLEMS)
  listed = ", ".join(problem_names)
  parser = argparse.ArgumentParser(
      prog="hippojax",
      description="Gradient-based hyperparameter optimisation in JAX.")
  parser.add_argument("--version", action="version",
                      version=f"hippojax {_version()}")
  sub = parser.add_subparsers(dest="command", required=True,
                              metavar="{problems,run,compare,report,demo}")

  sub.add_parser("problems", help="list the built-in problems").set_defaults(
      func=_problems)

  run = sub.add_parser("run", help="run or resume a study")
  run.add_argument("--problem", required=True, choices=problem_names,
                   metavar="PROBLEM", help="one of: " + listed)
  run.add_argument("--method", required=True, choices=METHODS,
                   metavar="METHOD", help="one of: " + ", ".join(METHODS))
  run.add_argument("--steps", type=_int_at_least(1), default=None,
                   help="trials (outer steps) of this chain in total, "
                        "counting those of an interrupted run (default: "
                        "until --timeout)")
  run.add_argument("--timeout", type=_seconds, default=None,
                   help="stop after this many seconds (default: none)")
  run.add_argument("--storage", default=None,
                   help="SQLAlchemy URL, journal:PATH, a .db or .log path, "
                        "or :memory: (default: sqlite:///hippojax.db)")
  run.add_argument("--study", default=None,
                   help="study name (default: PROBLEM-METHOD)")
  run.add_argument("--seed", type=_int_at_least(0), default=0,
                   help="chain seed; run other workers with other seeds "
                        "(default 0)")
  run.add_argument("--checkpoint-every", type=_int_at_least(1), default=10,
                   help="gradient methods: checkpoint every N steps "
                        "(default 10)")
  run.add_argument("--checkpoint-dir", default=None,
                   help="gradient methods: where chain states too large for "
                        "the database go, a directory or URL (default: in "
                        "the storage itself)")
  run.add_argument("--no-progress", action="store_true",
                   help="no progress bar")
  _add_method_options(run, pruner_help="random, tpe: stop trials whose "
                      "intermediate validation losses are poor (default "
                      "none)")
  run.set_defaults(func=_run)

  cmp = sub.add_parser(
      "compare", help="run several methods for the same wall-clock budget "
                      "and write a report")
  cmp.add_argument("--problem", default=DEFAULT_COMPARE_PROBLEM,
                   choices=problem_names, metavar="PROBLEM",
                   help=f"one of: {listed} "
                        f"(default {DEFAULT_COMPARE_PROBLEM})")
  cmp.add_argument("--methods", default=DEFAULT_COMPARE_METHODS,
                   help=f"comma-separated, from {', '.join(METHODS)} "
                        f"(default {DEFAULT_COMPARE_METHODS})")
  cmp.add_argument("--budget", type=_seconds, default=DEFAULT_COMPARE_BUDGET,
                   help="wall-clock seconds per method, compilation "
                        f"included (default {DEFAULT_COMPARE_BUDGET:g})")
  cmp.add_argument("--out", default="hippojax-compare",
                   help="output directory (default hippojax-compare)")
  cmp.add_argument("--storage", default=None,
                   help="where the studies are recorded (default: "
                        "OUT/studies.db)")
  cmp.add_argument("--overwrite", action="store_true",
                   help="replace studies of the same names in the storage "
                        "(default: refuse, keeping them)")
  cmp.add_argument("--seed", type=_int_at_least(0), default=0,
                   help="chain seed of every method (default 0)")
  cmp.add_argument("--no-progress", action="store_true",
                   help="no progress bars")
  _add_method_options(cmp, pruner_help="also run each black-box method with "
                      "this Optuna pruner, and report the time it saves "
                      "(default none)")
  cmp.set_defaults(func=_compare)

  rep = sub.add_parser(
      "report", help="write a report from stored studies",
      description="Writes report.md, results.json and plots for every "
                  "hippojax study in a storage (or the one named), ranking "
                  "methods by the validation loss of their best "
                  "hyperparameters retrained from scratch.")
  rep.add_argument("--storage", required=True,
                   help="the storage URL or file of the studies")
  rep.add_argument("--study", default=None,
                   help="one study (default: every hippojax study there)")
  rep.add_argument("--out", required=True, help="output directory")
  rep.add_argument("--no-progress", action="store_true",
                   help="no progress bar")
  rep.set_defaults(func=_report)

  demo = sub.add_parser(
      "demo", help="tune per-feature ridge strengths on diabetes with hoag")
  demo.add_argument("--steps", type=_int_at_least(1), default=40,
                    help="outer steps (default 40)")
  demo.add_argument("--inner-steps", type=_int_at_least(1), default=300,
                    help="warm-started inner gradient steps per outer step "
                         "(default 300)")
  demo.add_argument("--seed", type=_int_at_least(0), default=0,
                    help="data split seed (default 0)")
  demo.set_defaults(func=_demo)
  return parser


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = build_parser()
  args = parser.parse_args(argv)
  args.argv = argv
  from hippojax._src.chain import ChainFailedError
  from hippojax._src.storage import ChainBusyError, StorageError
  try:
    if args.command == "compare":
      return args.func(args, parser)
    if args.command == "run":
      if args.steps is None and args.timeout is None:
        parser.error("run needs --steps, --timeout or both.")
      _check_options(parser, args, [args.method])
    return args.func(args)
  except (StorageError, ChainBusyError, ChainFailedError, _CliError) as e:
    print(f"hippojax: error: {_one_line(e)}", file=sys.stderr)
    return 1
  except (ValueError, KeyError, TypeError) as e:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"hippojax: error: {_one_line(msg)}", file=sys.stderr)
    return 1
  except OSError as e:
    where = f" {e.filename!r}" if e.filename else ""
    print(f"hippojax: error: cannot write{where}: {e.strerror or e}",
          file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("hippojax: interrupted", file=sys.stderr)
    return 130


def _one_line(e) -> str:
  text = str(e).strip()
  return " ".join(text.split()) if text else repr(e)


if __name__ == "__main__":
  sys.exit(main())
