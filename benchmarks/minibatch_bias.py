"""Bias of minibatch implicit hypergradients, and what controls it.

On ``logreg-ijcnn1-like`` (22 per-feature L2 strengths, 25,000 examples)
the weights are trained to a fixed point with full-batch gradient descent at
L2 strength 0.1 on every feature (over-regularised, so that the
hypergradient is large against the noise), and the exact hypergradient
``g`` is solved there with CG to 1e-8. Then, for minibatch sizes 16, 64 and 256, ``R``
independent minibatch estimates ``ĝ`` are drawn with
:func:`hippojax.minibatch_hypergrad` in four variants:

* ``same``: one batch for the Hessian, the mixed term and ``∇L_val``
  (the undocumented path before this, CG to tol 1e-6, at most 100 iters);
* ``separate``: an independent Hessian batch;
* ``averaged``: the mean of K = 4 independent Hessian batches and of K = 4
L2 = 0.1
  validation batches;
* ``averaged+floor``: as ``averaged``, with CG stopped at the noise floor.

Reported: ``E‖ĝ‖ / ‖g‖`` (norm over-estimate), ``‖E ĝ − g‖ / ‖g‖`` (bias),
``E‖ĝ − g‖ / ‖g‖`` (error), the mean cosine to ``g``, mean CG iterations and
the fraction of solves reported converged.

    python benchmarks/minibatch_bias.py --quick
    python benchmarks/minibatch_bias.py
"""

import _common
import jax
import numpy as np

import hippojax
from hippojax import problems

BATCHES = [16, 64, 256]
VARIANTS = ["same", "separate", "averaged", "averaged+floor"]
K = 4
L2 = 0.1


def main():
  args = _common.parser(__doc__).parse_args()
  draws = 10 if args.quick else 50
  info = _common.run_info()
  p = problems.get("logreg-ijcnn1-like")
  h = p.as_hparams({"l2": L2})
  step = p.train_step
  w = p.train(h, num_steps=1)
  w = jax.jit(lambda w: jax.lax.fori_loop(
      0, 20000, lambda _, w: step(w, h, p.train_data), w))(w)
  full = hippojax.implicit_hypergrad(step, p.val_loss, h, w, p.train_data,
                                     p.val_data, solver=hippojax.CG(
                                         tol=1e-8, maxiter=1000))
  g = np.concatenate([np.ravel(x) for x in jax.tree.leaves(full.grad)])
  gn = np.linalg.norm(g)
  print(f"exact ‖g‖ = {gn:.4g}, fixed-point residual "
        f"{float(full.info.fixed_point_residual):.2e}", flush=True)

  def take(data, idx):
    return jax.tree.map(lambda a: a[idx], data)

  rows = []
  for b in BATCHES:
    def one(key, variant, b=b):
      ks = jax.random.split(key, 4)
      ti = jax.random.randint(ks[0], (b,), 0, p.num_train)
      vi = jax.random.randint(ks[1], (K, b), 0, p.num_val)
      hi = jax.random.randint(ks[2], (K, b), 0, p.num_train)
      tb = take(p.train_data, ti)
      if variant == "same":
        return hippojax.minibatch_hypergrad(
            step, p.val_loss, h, w, tb, take(p.val_data, vi[0]), tol=1e-6,
            noise_floor=False)
      if variant == "separate":
        return hippojax.minibatch_hypergrad(
            step, p.val_loss, h, w, tb, take(p.val_data, vi[0]),
            hessian_batches=take(p.train_data, hi[:1]), tol=1e-6,
            noise_floor=False)
      return hippojax.minibatch_hypergrad(
          step, p.val_loss, h, w, tb, take(p.val_data, vi), stacked_val=True,
          hessian_batches=take(p.train_data, hi), tol=1e-6,
          noise_floor=variant == "averaged+floor")

    for variant in VARIANTS:
      ests, iters, conv = [], [], []
      for r in range(draws):
        hg = one(jax.random.key(1000 * b + r), variant)
        ests.append(np.concatenate([np.ravel(x) for x in
                                    jax.tree.leaves(hg.grad)]))
        iters.append(int(hg.info.num_iters))
        conv.append(bool(hg.info.converged))
      e = np.stack(ests)
      row = {
          "batch": b, "variant": variant, "draws": draws,
          "norm_ratio": float(np.mean(np.linalg.norm(e, axis=1)) / gn),
          "bias": float(np.linalg.norm(e.mean(0) - g) / gn),
          "error": float(np.mean(np.linalg.norm(e - g, axis=1)) / gn),
          "cosine": float(np.mean(e @ g / np.maximum(
              np.linalg.norm(e, axis=1) * gn, 1e-30))),
          "cg_iters": float(np.mean(iters)),
          "converged": float(np.mean(conv)),
      }
      rows.append(row)
      print(row, flush=True)
  results = {**info, "problem": p.name, "draws": draws, "K": K, "l2": L2,
             "exact_norm": float(gn), "rows": rows,
             "load_after": _common.load()}
  name = "minibatch_bias_quick" if args.quick else "minibatch_bias"
  _common.write(name, results, markdown(results), args.out)


def markdown(r):
  lines = _common.header("Bias of minibatch implicit hypergradients", info=r)
  lines += [f"`{r['problem']}` at L2 = {r['l2']} on every feature, "
            f"{r['draws']} "
            f"draws per row, K = {r['K']}; exact ‖g‖ = {r['exact_norm']:.4g}."
            " Ratios are relative to the exact full-batch hypergradient.", ""]
  lines.append(_common.table(
      ["batch", "variant", "E‖ĝ‖/‖g‖", "bias ‖Eĝ−g‖/‖g‖", "error E‖ĝ−g‖/‖g‖",
       "cosine", "CG iters", "reported converged"],
      [[x["batch"], x["variant"], x["norm_ratio"], x["bias"], x["error"],
        x["cosine"], x["cg_iters"], f"{x['converged']:.0%}"]
       for x in r["rows"]]))
  return "\n".join(lines)


if __name__ == "__main__":
  main()
