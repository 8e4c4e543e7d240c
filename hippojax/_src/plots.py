"""The report's figures, one set per problem (matplotlib, Agg backend).

Each draw function takes ``(problem, group, path)``: a problem name and its
``results["problems"][problem]`` entry (see :mod:`hippojax._src.report`).
A method keeps one colour in every figure and every problem.
"""

import numpy as np

_GRADIENT = ("t1t2", "ift", "hoag", "drmad", "reverse")
_BLACKBOX = ("random", "tpe")
# Ten hues of tab20 (dark, and light for pruned variants), then tab20b's.
_ORDER = _GRADIENT + _BLACKBOX + ("soba", "saba", "amigo", "maid")
_CHAIN_STYLES = ("-", "--", ":", "-.")


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def colour(key: str):
  """The colour of a method key, the same in every figure and problem.

  Each method has a dark colour of ``tab20``; its pruned variants the light
  one of the same hue.
  """
  import matplotlib
  base = key.split(" ")[0]
  method, _, pruner = base.partition("+")
  i = _ORDER.index(method) if method in _ORDER else len(_ORDER)
  if i < 10:
    return matplotlib.colormaps["tab20"](2 * i + (1 if pruner else 0))
  return matplotlib.colormaps["tab20b"](4 * (i - 10) + (2 if pruner else 0))


def _series(problem: str, group: dict, path: str, x_key: str, xlabel: str,
            log_x: bool) -> None:
  plt = _plt()
  fig, ax = plt.subplots(figsize=(7.5, 4.8))
  drawn = 0
  for key in group["ranking"]:
    m = group["methods"][key]
    chains = [(s, c) for s, c in m["chains"].items() if c["series"]]
    for j, (seed, c) in enumerate(chains):
      s = c["series"]
      x = np.asarray(s[x_key], np.float64)
      label = key if len(chains) == 1 else f"{key} (seed {seed})"
      ax.step(x, s["best_value"], where="post", color=colour(key),
              ls=_CHAIN_STYLES[j % len(_CHAIN_STYLES)], lw=1.6, label=label)
      ax.plot(x, s["value"], ".", ms=4, alpha=0.45, color=colour(key))
      ax.plot(x[-1:], s["best_value"][-1:], "o", ms=5, color=colour(key))
      drawn += 1
  ax.set_xlabel(xlabel)
  ax.set_ylabel("validation loss, retrained from scratch\n"
                "(line: best so far; dots: each trial)")
  ax.set_title(problem)
  if log_x:
    ax.set_xscale("log")
  ax.grid(alpha=0.3)
  if drawn:
    ax.legend(fontsize=8)
  else:
    ax.text(0.5, 0.5, "no complete trials", ha="center", va="center",
            transform=ax.transAxes)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def val_loss_vs_wall(problem: str, group: dict, path: str) -> None:
  """Best-so-far retrained validation loss against wall-clock."""
  _series(problem, group, path, "wall_seconds",
          "wall-clock seconds per chain (compilation included)", False)


def val_loss_vs_inner_steps(problem: str, group: dict, path: str) -> None:
  """The same against cumulative training steps."""
  _series(problem, group, path, "inner_steps",
          "inner training steps per chain (cumulative)", True)


def hparams(problem: str, group: dict, path: str) -> None:
  """Hyperparameter trajectories of each method's best chain.

  One row per method, one column per hyperparameter; arrays of more than
  ten elements as their median and 10–90% band.
  """
  plt = _plt()
  from matplotlib.ticker import MaxNLocator
  shown = [(k, group["methods"][k]) for k in group["ranking"]
           if group["methods"][k]["n_trials"]]
  names = []
  for _, m in shown:
    for c in m["chains"].values():
      names += [n for n in c["hparams"] if n not in names]
  rows, cols = max(len(shown), 1), max(len(names), 1)
  fig, axes = plt.subplots(rows, cols, figsize=(max(3.8 * cols + 0.6, 6.0),
                                                2.5 * rows + 0.9),
                           squeeze=False, layout="constrained")
  for i, (key, m) in enumerate(shown):
    chain = str(m["best_chain"])
    traj = m["chains"][chain]["hparams"]
    blackbox = m["method"] in _BLACKBOX
    for j, name in enumerate(names):
      ax = axes[i][j]
      h = traj.get(name)
      if h is None:
        ax.axis("off")
        continue
      x = np.asarray(h["step"])
      one = len(x) == 1
      style = "." if (blackbox or one) else "-"
      if "values" in h:
        v = np.asarray(h["values"])
        for k in range(v.shape[1]):
          ax.plot(x, v[:, k], style, lw=1, ms=4 if one else 3,
                  color=colour(key), alpha=0.8 if v.shape[1] == 1 else 0.5)
        what = ("" if v.shape[1] == 1 else
                f" ({v.shape[1]} elements, one {'dot' if style == '.' else 'line'} each)")
      else:
        med = np.asarray(h["median"])
        if style == ".":  # separate samples: a bar per trial, not a band
          ax.errorbar(x, med, yerr=[med - np.asarray(h["q10"]),
                                    np.asarray(h["q90"]) - med],
                      fmt=".", ms=4, lw=0.8, color=colour(key),
                      label="median of the elements, bar: 10–90%")
        else:
          ax.plot(x, med, "-", lw=1.4, color=colour(key),
                  label="median of the elements")
          ax.fill_between(x, h["q10"], h["q90"], alpha=0.25,
                          color=colour(key), label="10–90% of the elements")
        ax.legend(fontsize=6, loc="best")
        what = f" ({h['size']} elements)" if "size" in h else ""
      if h["log"]:
        ax.set_yscale("log")
      seeds = "" if len(m["chains"]) == 1 else f", seed {chain}"
      ax.set_title(f"{key}{seeds}: {name}{what}", fontsize=8)
      ax.set_ylabel(name + (" (log scale)" if h["log"] else ""), fontsize=8)
      ax.set_xlabel("outer step" if not blackbox else "trial", fontsize=8)
      ax.tick_params(labelsize=7)
      ax.xaxis.set_major_locator(MaxNLocator(integer=True))
      ax.grid(alpha=0.3)
  if not shown:
    axes[0][0].text(0.5, 0.5, "no complete trials", ha="center",
                    va="center", transform=axes[0][0].transAxes)
  fig.suptitle(f"{problem}: hyperparameters\n(best chain of each method)",
               fontsize=10)
  fig.savefig(path, dpi=100)
  plt.close(fig)


# (title, file name, draw function) of each figure of a problem.
FIGURES = (
    ("validation loss vs wall-clock", "val_loss_vs_wall.png",
     val_loss_vs_wall),
    ("validation loss vs inner steps", "val_loss_vs_inner_steps.png",
     val_loss_vs_inner_steps),
    ("hyperparameter trajectories", "hparams.png", hparams),
)
