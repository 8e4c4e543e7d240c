"""Regenerates ``benchmarks/RESULTS.md`` and its plots from ``results/``.

Each benchmark script writes its own section (with the command that produced
it and the machine it ran on) into ``results/<name>.md`` and its numbers into
``results/<name>.json``; this script draws ``results/<name>.png`` from the
JSON where a plot is defined, and assembles the sections, each followed by
its plot, in a fixed order.

    python benchmarks/make_results.py [--results DIR] [--output FILE]
"""

import argparse
import json
import os
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"
ORDER = ["accuracy", "nonconvex", "safeguards", "symmetric_products",
         "overhead", "vs_jaxopt", "roofline",
         "memory", "scale", "compile", "million_hparams", "vs_hippotrainer",
         "vs_hippotrainer_torch", "time_to_target", "optuna_params",
         "minibatch_bias", "stochastic"]

HEADER = """# Benchmark results

Every section below was produced by the command it names, on the machine it
names; rerun that command to refresh its section, then
`python benchmarks/make_results.py` to rebuild this file and its plots.
Timings are medians over repeats after warm-up, taken side by side in one
process; compare ratios, not absolute times, across machines. The scripts
choose the device only through JAX, so they run unchanged on a GPU; the
numbers here are from CPU, and GPU numbers are pending. See
`docs/performance.md` for what the numbers say.
"""


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_overhead(data, path):
  plt = _plt()
  rows = data["rows"]
  labels = sorted({(r["size"], r["params"]) for r in rows},
                  key=lambda s: s[1])
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
  for ax, mode in zip(axes, ("call", "in jit")):
    width = 0.25
    for i, method in enumerate(("t1t2", "ift", "hoag")):
      vals = [next((r["ratio"] for r in rows if r["size"] == s and
                    r["method"] == method and r["mode"] == mode), 0.0)
              for s, _ in labels]
      ax.bar([j + (i - 1) * width for j in range(len(labels))], vals, width,
             label=method)
    ax.axhline(data["goal"], color="k", ls="--", lw=1, label="goal")
    ax.axhline(1.0, color="gray", lw=0.5)
    ax.set_xticks(range(len(labels)), [s for s, _ in labels])
    ax.set_title(f"library {mode} / hand-written")
    ax.set_xlabel("model size (weights)")
  axes[0].set_ylabel("time ratio (median)")
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_vs_jaxopt(data, path):
  plt = _plt()
  rows = data["equal_iterations"]
  sizes = sorted({(r["size"], r["params"]) for r in rows}, key=lambda s: s[1])
  variants = ("hoag", "hoag in jit", "hoag (vjp)")
  fig, ax = plt.subplots(figsize=(6.5, 3.6))
  width = 0.25
  for i, v in enumerate(variants):
    vals = [next((r["ratio"] for r in rows if r["size"] == s and
                  r["variant"] == v), 0.0) for s, _ in sizes]
    ax.bar([j + (i - 1) * width for j in range(len(sizes))], vals, width,
           label=v)
  for i, r in enumerate(data["equal_accuracy"]):
    ax.bar(len(sizes) + (i - 0.5) * width, r["ratio"], width,
           color=f"C{3 + i}", label=f"{r['variant']} (equal accuracy)")
  ax.axhline(data["goal"], color="k", ls="--", lw=1, label="goal")
  ax.axhline(1.0, color="gray", lw=0.5)
  ax.set_xticks(range(len(sizes) + 1),
                [s for s, _ in sizes] + ["outer loop"])
  ax.set_ylabel("hippojax / JAXopt time")
  ax.set_ylim(0, 1.6)
  ax.legend(fontsize=7, ncol=3, loc="upper left")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_roofline(data, path):
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  ax = axes[0]
  names = ["matmul (peak)", "training gradient", "hypergradient"]
  vals = [data["matmul_gflops"], data["gradient_fraction"] *
          data["matmul_gflops"], data["achieved_gflops"]]
  ax.bar(names, vals, color=["gray", "C0", "C1"])
  ax.axhline(data["goal"] * data["matmul_gflops"], color="k", ls="--", lw=1,
             label=f"goal ({data['goal']:.0%} of peak)")
  ax.set_ylabel("GFLOP/s")
  ax.legend(fontsize=8)
  ax.set_title(f"{data['params']:,} weights")
  ax = axes[1]
  ms = data.get("profile", {}).get("ms", {})
  if ms:
    ax.barh(list(ms), list(ms.values()), color="C2")
    ax.set_xlabel("ms per hypergradient (profile)")
    ax.set_title("where the time goes")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_memory(data, path):
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
  for ax, key, title in zip(axes, ("xla_mib", "peak_delta_mib"),
                            ("XLA buffers (MiB)", "RSS peak − before (MiB)")):
    for m in ("reverse", "reverse_remat", "forward", "drmad"):
      pts = sorted((r["steps"], r[key]) for r in data["rows"]
                   if r["method"] == m and r[key] is not None)
      if pts:
        ax.plot(*zip(*pts), "o-", label=m)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("inner steps T")
    ax.set_title(title)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_scale(data, path):
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.5, 3.6))
  pts = sorted((r["hparams"], r["ratio"]) for r in data["rows"])
  ax.plot(*zip(*pts), "o-", label="hoag")
  ax.axhspan(0.9, 1.1, color="gray", alpha=0.2, label="±10%")
  ax.set_xscale("log")
  ax.set_ylim(0, max(1.5, max(v for _, v in pts) * 1.1))
  ax.set_xlabel("number of hyperparameters")
  ax.set_ylabel("time / time at n = 10")
  ax.set_title(f"{data['rows'][0]['params']:,} weights")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_compile(data, path):
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.5, 3.6))
  rows = data["first_calls"]
  names = [r["method"] for r in rows]
  ax.bar(names, [r["compile_s"] for r in rows], label="XLA compile")
  ax.bar(names, [r["trace_lower_s"] for r in rows],
         bottom=[r["compile_s"] for r in rows], label="trace + lower")
  ax.plot(names, [r["first_call_s"] for r in rows], "ko", label="first call")
  ax.axhline(data["goal_seconds"], color="k", ls="--", lw=1, label="goal")
  ax.set_ylabel("seconds")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


PLOTS = {"overhead": plot_overhead, "vs_jaxopt": plot_vs_jaxopt,
         "roofline": plot_roofline, "memory": plot_memory,
         "scale": plot_scale, "compile": plot_compile}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--results", type=pathlib.Path, default=RESULTS,
                      help="directory of <name>.md/.json (and the plots)")
  parser.add_argument("--output", type=pathlib.Path,
                      default=HERE / "RESULTS.md", help="file to write")
  args = parser.parse_args()
  results = args.results.resolve()
  output = args.output.resolve()
  sections = {p.stem: p.read_text() for p in results.glob("*.md")}
  names = [n for n in ORDER if n in sections]
  names += sorted(n for n in sections if n not in ORDER and
                  not n.endswith("_quick"))
  body = [HEADER]
  for n in names:
    text = sections[n].rstrip() + "\n"
    source = results / f"{n}.json"
    if n in PLOTS and source.exists():
      png = results / f"{n}.png"
      PLOTS[n](json.loads(source.read_text()), png)
      link = pathlib.Path(os.path.relpath(png, output.parent)).as_posix()
      text += f"\n![{n}]({link})\n"
    body.append(text)
  output.write_text("\n".join(body))
  print(f"wrote {output} with sections: {', '.join(names)}")


if __name__ == "__main__":
  main()
