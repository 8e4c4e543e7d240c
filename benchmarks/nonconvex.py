"""Gradient hyperparameter tuning on non-convex networks, against TPE.

On ``mlp-digits``, ``mlp-mnist1d``, a small CNN on digits and the Flax
page's MLP written as a user's own problem (both defined here),
the default gradient method of a study (``hoag`` through the safeguarded
engine: refusal, warm-start resets, adaptive damping) runs one chain of
``N`` outer steps. Reported per problem:

* the fraction of outer steps whose hypergradient converged
  (``info.converged``: residual within tolerance, weights at a fixed point)
  and the fraction accepted (not refused);
* the validation loss of its best hyperparameters *retrained from scratch*
  (each step's hyperparameters are retrained with the problem's inner budget;
  the best of these), against the untuned defaults and against Optuna's TPE
  at equal inner steps (as many trials of ``inner_steps`` as the chain's
  training steps, polishing half steps included) and at equal
  wall-clock (TPE trials until the chain's wall-clock, compilation
  included).

    python benchmarks/nonconvex.py [--quick] [--out DIR] [--problems A,B]
"""

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

import _common
from hippojax._src import outer
from hippojax._src import problems as problems_lib
from hippojax._src.space import SearchSpace
from hippojax._src.space import suggest_float
from hippojax._src.steps import gradient_step


# ---------------------------------------------------------------- a small CNN


def _cnn_init(key):
  k1, k2 = jax.random.split(key)
  dt = jnp.zeros(()).dtype
  return {"conv": jax.random.normal(k1, (3, 3, 1, 8), dt) / 3.0,
          "conv_b": jnp.zeros(8, dt),
          "dense": jax.random.normal(k2, (8 * 6 * 6, 10), dt) / math.sqrt(288),
          "dense_b": jnp.zeros(10, dt)}


def _cnn_logits(p, x):
  img = x.reshape(-1, 8, 8, 1)
  h = jax.lax.conv_general_dilated(img, p["conv"], (1, 1), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  h = jnp.tanh(h + p["conv_b"]).reshape(x.shape[0], -1)
  return h @ p["dense"] + p["dense_b"]


def _cnn_ce(p, hparams, batch):
  del hparams
  x, y = batch
  logits = _cnn_logits(p, x)
  return jnp.mean(jax.nn.logsumexp(logits, -1) -
                  jnp.take_along_axis(logits, y[:, None], -1)[:, 0])


def _cnn_loss(p, hparams, batch):
  wd = hparams["weight_decay"]
  return _cnn_ce(p, hparams, batch) + 0.5 * (
      wd[0] * jnp.sum(p["conv"]**2) + wd[1] * jnp.sum(p["dense"]**2))


def _cnn_accuracy(p, hparams, batch):
  del hparams
  x, y = batch
  return jnp.mean(jnp.argmax(_cnn_logits(p, x), -1) == y)


@functools.cache
def cnn_digits() -> problems_lib.Problem:
  digits = problems_lib.get("mlp-digits")
  space = SearchSpace((suggest_float("weight_decay", 1e-6, 1e-1, log=True,
                                     shape=(2,)),))
  return dataclasses.replace(
      digits, name="cnn-digits",
      description="3x3 conv (8 channels) + dense on digits, 2 decays",
      space=space, train_step=gradient_step(_cnn_loss, 0.3),
      val_loss=_cnn_ce, init_params=_cnn_init, test_metric=_cnn_accuracy,
      inner_steps=300, outer_lr=0.1)


# ------------------------------------------- an MLP a user writes from the docs
# The Flax page's model (8-32-1 tanh regression on y = sin(x0) + noise, one
# weight decay per layer, gradient steps of 0.1) written as a Problem the way
# the studies page's "Your own problem" shows: plain JAX, float32, no
# registry.


def _user_mlp_init(key):
  k1, k2 = jax.random.split(key)
  return {"hidden": {"kernel": jax.random.normal(k1, (8, 32)) / math.sqrt(8),
                     "bias": jnp.zeros(32)},
          "out": {"kernel": jax.random.normal(k2, (32, 1)) / math.sqrt(32),
                  "bias": jnp.zeros(1)}}


def _user_mlp_mse(params, hparams, batch):
  del hparams
  xb, yb = batch
  h = jnp.tanh(xb @ params["hidden"]["kernel"] + params["hidden"]["bias"])
  pred = (h @ params["out"]["kernel"] + params["out"]["bias"])[:, 0]
  return jnp.mean((pred - yb) ** 2)


def _user_mlp_loss(params, hparams, batch):
  wd = hparams["weight_decay"]
  return _user_mlp_mse(params, hparams, batch) + 0.5 * (
      wd[0] * jnp.sum(params["hidden"]["kernel"] ** 2) +
      wd[1] * jnp.sum(params["out"]["kernel"] ** 2))


@functools.cache
def user_mlp() -> problems_lib.Problem:
  key = jax.random.key(0)
  x = jax.random.normal(key, (192, 8))
  y = jnp.sin(x[:, 0]) + 0.3 * jax.random.normal(jax.random.fold_in(key, 1),
                                                 (192,))
  split = lambda a, b: (x[a:b], y[a:b])
  space = SearchSpace((suggest_float("weight_decay", 1e-6, 1e-1, log=True,
                                     shape=(2,), init=float(np.exp(-4.0))),))
  return problems_lib.Problem(
      name="user-mlp", description="the Flax page's 8-32-1 tanh MLP, as a "
      "user's own Problem", space=space,
      train_step=gradient_step(_user_mlp_loss, 0.1), val_loss=_user_mlp_mse,
      init_params=_user_mlp_init, train_data=split(0, 64),
      val_data=split(64, 128), test_data=split(128, 192),
      test_metric=_user_mlp_mse, metric_name="test MSE",
      higher_is_better=False, inner_steps=200, outer_lr=0.1)


# ------------------------------------------------------------------ measuring


def _hoag_chain(problem, n_steps):
  opts = {"inner_steps": problem.inner_steps, "outer_lr": problem.outer_lr,
          "tol": 1e-4, "maxiter": 100}
  engine = outer.get_engine(problem, "hoag", opts)
  state = engine.init(0)
  start = time.perf_counter()
  records = []
  for _ in range(n_steps):
    state, rec = engine.step(state)
    records.append(jax.device_get(rec))
  wall = time.perf_counter() - start
  retrained = [problem.evaluate({k: np.asarray(v)
                                 for k, v in r.hparams.items()})
               for r in records]
  best = min(range(n_steps), key=lambda i: retrained[i]["val_loss"])
  polished = int(sum(int(r.polish_steps) for r in records))
  return {
      "wall_seconds": wall,
      # Training steps, the polishing half steps included.
      "inner_steps": n_steps * problem.inner_steps + polished,
      "polish_steps": polished,
      "converged": float(np.mean([bool(r.converged) for r in records])),
      "accepted": float(np.mean([bool(r.finite) for r in records])),
      "max_damping": float(max(float(r.damping) for r in records)),
      "best": retrained[best],
      "best_step": best,
  }


def _tpe(problem, n_trials, wall_budget):
  import optuna
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
  space = problem.space

  def objective(trial):
    values = {}
    for p in space:
      flat = [trial.suggest_float(f"{p.name}[{i}]" if p.shape else p.name,
                                  p.low, p.high, log=p.log)
              for i in range(max(1, int(np.prod(p.shape))))]
      values[p.name] = np.asarray(flat).reshape(p.shape)
    out = problem.evaluate(values)
    trial.set_user_attr("metric", out["test_metric"])
    return out["val_loss"]

  start = time.perf_counter()
  by_steps = by_wall = None
  k = 0
  while True:
    study.optimize(objective, n_trials=1)
    k += 1
    best = study.best_trial
    row = {"val_loss": best.value, "test_metric": best.user_attrs["metric"],
           "trials": k}
    if k == n_trials:
      by_steps = row
    if time.perf_counter() - start >= wall_budget and by_wall is None:
      by_wall = row
    if by_steps is not None and by_wall is not None:
      return by_steps, by_wall


PROBLEMS = ("mlp-digits", "mlp-mnist1d", "cnn-digits", "user-mlp")
OWN = {"cnn-digits": cnn_digits, "user-mlp": user_mlp}


def main():
  parser = _common.parser(__doc__)
  parser.add_argument("--problems", default="",
                      help=f"comma-separated subset of {','.join(PROBLEMS)} "
                      "(merged into the existing results)")
  args = parser.parse_args()
  if args.render:
    data = _common.read("nonconvex", args.out)
    _common.write("nonconvex", data, render(data), args.out)
    return
  load_before = _common.load()
  n_steps = 8 if args.quick else 40
  names = ("mlp-digits",) if args.quick else PROBLEMS
  if args.problems:
    names = tuple(args.problems.split(","))
  rows = []
  for name in names:
    problem = OWN[name]() if name in OWN else problems_lib.get(name)
    default = problem.evaluate(problem.space.default())
    chain = _hoag_chain(problem, n_steps)
    # Equal steps: as many TPE trials as the chain's training steps buy.
    trials = math.ceil(chain["inner_steps"] / problem.inner_steps)
    tpe_steps, tpe_wall = _tpe(problem, trials, chain["wall_seconds"])
    rows.append({"problem": name, "metric_name": problem.metric_name,
                 "default": default, "hoag": chain, "tpe_equal_steps":
                 tpe_steps, "tpe_equal_wall": tpe_wall})
    print(name, rows[-1], flush=True)
  data = {**_common.run_info(load_before), "n_steps": n_steps,
          "quick": args.quick, "rows": rows}
  if args.problems and not args.quick:  # a rerun of some problems: merge
    old = _common.read("nonconvex", args.out)
    fresh = {r["problem"]: r for r in rows}
    data["rows"] = [fresh.pop(r["problem"], r) for r in old["rows"]]
    data["rows"] += list(fresh.values())
    data["command"] = f"{old['command']}; {data['command']}"
  _common.write("nonconvex_quick" if args.quick else "nonconvex", data,
                render(data), args.out)


def render(data) -> str:
  lines = _common.header("Non-convex networks: hoag's safeguards against TPE",
                         info=data)
  lines.append(
      f"One `hoag` chain of {data['n_steps']} outer steps per problem "
      "(study defaults: tol 1e-4, maxiter 100; before each solve the weights "
      "are polished into a fixed point, at most inner_steps/2 half steps; "
      "damping adapts, also after stalled solves, and a solve that met "
      "negative curvature is retried with more damping, at most twice); "
      "`converged` is `info.converged` (certified residual ≤ tol and "
      "fixed-point residual ≤ 1e-3); every "
      "step's hyperparameters retrained from scratch with the problem's "
      "inner budget; TPE (seed 0) at equal inner steps and at equal "
      "wall-clock (compilation included). Validation loss (lower is better) "
      "and the test metric of the best hyperparameters.")
  lines.append("")
  header = ["problem", "converged", "accepted", "max damping", "polish steps",
            "defaults", "hoag best (retrained)", "TPE, equal steps",
            "TPE, equal wall-clock", "hoag wall s"]
  table = []
  for r in data["rows"]:
    h = r["hoag"]
    fmt = lambda d: (f"{d['val_loss']:.4f} ({r['metric_name']} "
                     f"{d['test_metric']:.3f})")
    table.append([
        r["problem"], f"{h['converged']:.0%}", f"{h['accepted']:.0%}",
        f"{h['max_damping']:.2g}", str(h.get("polish_steps", 0)),
        fmt(r["default"]), fmt(h["best"]),
        fmt(r["tpe_equal_steps"]) + f", {r['tpe_equal_steps']['trials']} trials",
        fmt(r["tpe_equal_wall"]) + f", {r['tpe_equal_wall']['trials']} trials",
        f"{h['wall_seconds']:.1f}"])
  lines.append(_common.table(header, table))
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
