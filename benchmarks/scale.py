"""Time per hoag hypergradient against the number of hyperparameters.

The MLP of ``_problems.py`` (about 1.1M weights) with weight decays shared
by groups: ``n`` hyperparameters ``θ`` are tiled over the flattened weights,
``decay_i = exp(θ_{i mod n})``, from ``n = 10`` up to one per weight. The
model, the data and the number of CG iterations are fixed, so a method whose
cost follows the model and not the number of hyperparameters shows flat
times. A second table varies the model size at ``n = 10`` and ``n = P`` to
show what the cost does follow.

    python benchmarks/scale.py [--quick] [--out DIR]
"""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp

import hippojax
import _common
import _problems

NUM_ITERS = 10
FLAT_TOL = 0.10


@functools.lru_cache(maxsize=None)
def losses(hidden: int):
  """Train/val losses for a given width, with ``n`` tiled decays."""
  params, *_ = _problems.mlp_problem(hidden, n=1)
  _, unravel = jax.flatten_util.ravel_pytree(params)
  size = _common.count_params(params)

  def decays(theta):
    reps = -(-size // theta.shape[0])
    return jnp.tile(jnp.exp(theta), reps)[:size]

  def train_loss(params, theta, batch):
    flat, _ = jax.flatten_util.ravel_pytree(params)
    return (_problems.xent(params, batch) +
            0.5 * jnp.sum(decays(theta) * flat**2))

  return train_loss, unravel, size


def time_grid(hidden, counts, batch, repeats):
  params, _, train, val = _problems.mlp_problem(hidden, n=batch)
  train_loss, _, size = losses(hidden)
  step = hippojax.gradient_step(train_loss,
                                learning_rate=_problems.LEARNING_RATE)
  calls, thetas = {}, {}
  for n in counts:
    n = min(n, size)
    theta = jnp.full((n,), -4.0)
    thetas[n] = theta
    calls[n] = functools.partial(
        lambda th: hippojax.hoag(step, _problems.val_loss, th, params, train,
                                 val, tol=1e-20, maxiter=NUM_ITERS).grad,
        theta)
  times = _common.interleaved(calls, repeats)
  base = min(calls)
  rows = []
  for n in calls:
    r = _common.ratio(times, n, base)
    rows.append(dict(params=size, hparams=n, ms=r["ms"], ratio=r["ratio"],
                     cpu_ratio=r["cpu_ratio"], ratio_q1=r["ratio_q1"],
                     ratio_q3=r["ratio_q3"]))
  return rows


def measure(quick: bool) -> dict:
  load_before = _common.load()
  if quick:
    hidden, counts, batch, repeats = 64, (10, 1000, 10**9), 128, 5
    widths = (32,)
  else:
    hidden = _problems.SIZES["1M"]
    counts, batch, repeats = (10, 100, 10**3, 10**4, 10**5, 10**9), 512, 7
    widths = (64, 288, 1024)
  rows = time_grid(hidden, counts, batch, repeats)
  for r in rows:
    print(r)
  size_rows = []
  for w in widths:
    size_rows += time_grid(w, (10, 10**9), batch, max(3, repeats - 2))
  worst = max(abs(r["ratio"] - 1) for r in rows)
  worst_cpu = max(abs(r["cpu_ratio"] - 1) for r in rows)
  return dict(info=_common.run_info(load_before), machine=_common.machine(),
              command=_common.command(), quick=quick, num_iters=NUM_ITERS,
              batch=batch, repeats=repeats, rows=rows, model_sizes=size_rows,
              worst_deviation=worst, worst_cpu_deviation=worst_cpu)


def markdown(data: dict) -> str:
  """The results section, from the JSON data."""
  rows, size_rows = data["rows"], data["model_sizes"]
  worst = data["worst_deviation"]
  worst_cpu = data.get("worst_cpu_deviation", worst)
  md = _common.header("Scale: hoag time against the number of hyperparameters",
                      info=data["info"])
  md += [
      f"`hippojax.hoag`, {data['num_iters']} CG iterations, MLP with "
      f"{rows[0]['params']:,} weights ({data['batch']} examples, float32); "
      "`n` weight decays tiled over the weights (`n` = number of weights: "
      f"one per weight). Ratio to `n = {rows[0]['hparams']}`: median over "
      f"{data['repeats']} interleaved rounds of the per-round ratio. Goal: "
      "the cost follows the model size, not `n` (flat within "
      f"{FLAT_TOL:.0%}).", "",
      _common.table(["hyperparameters n", "ms (median)", "ratio to n=10",
                     "q1–q3", "CPU ratio"],
                    [[r["hparams"], r["ms"], r["ratio"],
                      f"{r['ratio_q1']:.3f}–{r['ratio_q3']:.3f}",
                      r["cpu_ratio"]] for r in rows]), "",
      "Model size at `n = 10` and `n` = one per weight (time in ms, fewer "
      "rounds):", "",
      _common.table(
          ["weights", "n = 10", "n = weights", "ratio"],
          [[size_rows[i]["params"], size_rows[i]["ms"],
            size_rows[i + 1]["ms"], size_rows[i + 1]["ratio"]]
           for i in range(0, len(size_rows), 2)]), "",
      "**Verdict.**", "",
      f"* Largest deviation from flat: {worst:.3f} wall-clock, "
      f"{worst_cpu:.3f} CPU time — goal "
      + ("met." if min(worst, worst_cpu) <= FLAT_TOL else
         f"missed by {min(worst, worst_cpu) - FLAT_TOL:.3f}."),
      "* The hyperparameters enter only through the penalty `½Σ e^θ w²`: "
      "the mixed product `Bᵀq` is one elementwise pass over the weights "
      "(and a sum over tiles for `n` < weights), while the CG products, "
      "which dominate, do not see `θ` at all; the time follows the model "
      "(second table), not `n`.",
  ]
  return "\n".join(md)


def main():
  args = _common.parser(__doc__).parse_args()
  data = (_common.read("scale", args.out) if args.render
          else measure(args.quick))
  text = markdown(data)
  print(text)
  _common.write("scale", data, text, args.out)


if __name__ == "__main__":
  main()
