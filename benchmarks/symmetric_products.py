"""Forward-over-reverse vs reverse-over-reverse products for ``Jᵀ v``.

For a gradient step ``Φ = w − η ∇L``, ``J = I − η H`` is symmetric, so
``Jᵀ v = J v`` can come from ``jax.linearize`` (forward-over-reverse) instead
of ``jax.vjp`` (reverse-over-reverse). This times ``hoag`` and ``ift`` both
ways, interleaved in one process, on an MLP with per-parameter weight decay.

    python benchmarks/symmetric_products.py [--quick] [--out DIR]
"""

import statistics
import time

import jax

import hippojax
import _common
from _problems import mlp_problem, train_loss, val_loss


def median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  args = _common.parser(__doc__).parse_args()
  hiddens = [64] if args.quick else [64, 256, 1024]
  repeats = 5 if args.quick else 15
  step = hippojax.gradient_step(train_loss, learning_rate=0.1)
  rows, data = [], []
  for hidden in hiddens:
    params, hparams, train, val = mlp_problem(hidden)
    n_params = sum(p.size for p in jax.tree.leaves(params))
    calls = {
        ("hoag", True): lambda: hippojax.hoag(
            step, val_loss, hparams, params, train, val, tol=1e-30,
            maxiter=20, symmetric=True).grad,
        ("hoag", False): lambda: hippojax.hoag(
            step, val_loss, hparams, params, train, val, tol=1e-30,
            maxiter=20, symmetric=False).grad,
        ("ift", True): lambda: hippojax.ift(
            step, val_loss, hparams, params, train, val, num_iters=20,
            symmetric=True).grad,
        ("ift", False): lambda: hippojax.ift(
            step, val_loss, hparams, params, train, val, num_iters=20,
            symmetric=False).grad,
    }
    for fn in calls.values():  # compile
      jax.block_until_ready(fn())
    times = {k: [] for k in calls}
    for _ in range(repeats):  # interleaved A/B
      for k, fn in calls.items():
        times[k].append(median_time(fn, 1))
    for method in ("hoag", "ift"):
      t_fwd = statistics.median(times[(method, True)])
      t_rev = statistics.median(times[(method, False)])
      rows.append([n_params, method, t_fwd * 1e3, t_rev * 1e3,
                   t_fwd / t_rev])
      data.append(dict(params=n_params, method=method,
                       forward_over_reverse_ms=t_fwd * 1e3,
                       reverse_over_reverse_ms=t_rev * 1e3,
                       ratio=t_fwd / t_rev))
  md = ["## Symmetric products: `jax.linearize` vs `jax.vjp` for Jᵀv", "",
        f"Command: `{_common.command()}`  ", f"Machine: {_common.machine()}",
        "",
        "20 products per hypergradient on a tanh MLP (512 examples, 64 "
        "inputs, 2 hidden layers) with per-parameter weight decay; medians "
        f"of {repeats} interleaved repeats. Ratio < 1 means forward-over-"
        "reverse (`symmetric=True`, the default for gradient steps and CG) "
        "is faster.", "",
        _common.table(["params", "method", "fwd-over-rev ms",
                       "rev-over-rev ms", "ratio"], rows)]
  text = "\n".join(md)
  print(text)
  _common.write("symmetric_products_quick" if args.quick
                else "symmetric_products", {"machine": _common.machine(),
                                            "rows": data}, text, args.out)


if __name__ == "__main__":
  main()
