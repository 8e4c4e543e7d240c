# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hippojax/hippojax/blob/main/notebooks/04_gradient_vs_blackbox.ipynb)
#
# # Gradient methods against black-box search
#
# Logistic regression on scikit-learn's breast cancer data with one L2
# strength per feature: 30 hyperparameters, the built-in problem
# `logreg-breast-cancer`. Three gradient methods (`hoag`, `ift`, `t1t2`)
# and two of Optuna's samplers (random search and TPE) each get the same
# inner-training budget; the command line runs the same comparison with a
# wall-clock budget per method and writes a report:
#
# ```
# hippojax compare --problem logreg-breast-cancer --methods hoag,ift,t1t2,random,tpe --budget 20
# ```
#
# Every method is a hippojax *study* recorded in Optuna storage, so Optuna's
# own plots work on the stored results.

# %%
import importlib.util, subprocess, sys

if importlib.util.find_spec("hippojax") is None:  # e.g. on Colab
  subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                  "hippojax[all] @ git+https://github.com/hippojax/hippojax"],
                 check=True)

# %% tags=["parameters"]
PROBLEM = "logreg-breast-cancer"
METHODS = ("hoag", "ift", "t1t2", "random", "tpe")
N_TRIALS = 20         # per method: outer steps of a gradient method, trainings of a sampler
BUDGET_SECONDS = None  # or a wall-clock limit per method (compilation included)
STORAGE_DIR = None     # None: a temporary directory; set a path to keep the studies

# %%
import os
import tempfile
import warnings

import matplotlib.pyplot as plt
import numpy as np
import optuna

import hippojax
from hippojax import problems

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

# %% [markdown]
# ## The problem
#
# A built-in problem bundles the data splits, `train_step` and `val_loss`,
# the search space and the inner-training budget. A black-box trial trains
# from scratch for `inner_steps` steps; a gradient method spends the same
# number of warm-started steps per outer step, then takes one hypergradient.
# So `N_TRIALS` trials cost every method the same training steps.

# %%
problem = problems.get(PROBLEM)
print(problem.description)
print(f"{problem.num_hparams} hyperparameters, {problem.inner_steps} inner steps per trial")
for p in problem.space:
  print(f"  {p.name}: shape {p.shape}, [{p.low:g}, {p.high:g}], log={p.log}")

# %% [markdown]
# ## The studies
#
# One study per method, all in one SQLite file. The gradient methods
# optimise the unconstrained $u$ behind each bounded hyperparameter (a
# sigmoid maps it into the bounds) and record one trial per outer step;
# random search and TPE record one trial per training.

# %%
directory = STORAGE_DIR or tempfile.mkdtemp()
storage = "sqlite:///" + os.path.join(directory, "studies.db")
studies = {}
for method in METHODS:
  study = hippojax.create_study(method, storage=storage)
  study.optimize(PROBLEM, n_steps=N_TRIALS, timeout=BUDGET_SECONDS)
  studies[method] = study

print(f"{'method':8s} {'trials':>6s} {'best val loss':>14s} {'warm-started':>12s} "
      f"{'test acc.':>9s} {'inner steps':>12s}")
for method, study in studies.items():
  last = study.chain_trials()[-1].user_attrs
  retrained = study.evaluate_best()
  warm = study.best_trial.user_attrs.get("warm_val_loss")
  warm = "—" if warm is None else f"{warm:.4f}"
  print(f"{method:8s} {len(study.trials):6d} {study.best_value:14.4f} "
        f"{warm:>12s} {retrained['test_metric']:9.3f} "
        f"{last['inner_steps']:12d}")

# %% [markdown]
# *best val loss* is the validation loss of the best hyperparameters trained
# from scratch with one trial's budget: the Optuna value of every trial, so
# gradient and black-box methods compare on the same footing (a gradient
# trial is retrained after its outer step). *warm-started* is what the
# gradient chain measured at its warm-started weights, for reference.
# `evaluate_best()` retrains the best hyperparameters again for the test
# accuracy.
#
# ## Validation loss against the budget
#
# Every trial carries its cumulative wall-clock time and inner training
# steps (`trial.user_attrs`), so methods compare on either axis.

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
for method, study in studies.items():
  trials = [t for t in study.chain_trials() if t.value is not None]
  best = np.minimum.accumulate([t.value for t in trials])
  for ax, key in zip(axes, ("wall_seconds", "inner_steps")):
    ax.step([t.user_attrs[key] for t in trials], best, where="post", label=method)
axes[0].set(xlabel="wall-clock seconds", ylabel="best validation loss so far")
axes[1].set(xlabel="inner training steps")
for ax in axes:
  ax.grid(alpha=0.3)
  ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Optuna's plots, from the stored studies
#
# The studies live in `studies.db`; anything that reads Optuna storage can
# use them (`optuna-dashboard sqlite:///.../studies.db` too). plotly may
# not be installed, so we use Optuna's matplotlib backend.

# %%
print(optuna.get_all_study_names(storage))
stored = [optuna.load_study(study_name=name, storage=storage)
          for name in optuna.get_all_study_names(storage)]

ax = optuna.visualization.matplotlib.plot_optimization_history(stored)
ax.figure.set_size_inches(12, 4.5)
ax.set_ylim(top=np.quantile([t.value for s in stored for t in s.trials
                             if t.value is not None], 0.95))
plt.tight_layout()
plt.show()

# %% [markdown]
# The empirical distribution of trial values: how often a method's trials
# reach a given validation loss.

# %%
ax = optuna.visualization.matplotlib.plot_edf(stored)
ax.figure.set_size_inches(8, 4.5)
plt.tight_layout()
plt.show()

# %% [markdown]
# Black-box trials record every element of the hyperparameter array as an
# Optuna parameter (`l2[0]` … `l2[29]`), so parameter plots work on them;
# here, which per-feature strengths mattered most for TPE:

# %%
tpe = optuna.load_study(study_name=f"{PROBLEM}-tpe", storage=storage)
ax = optuna.visualization.matplotlib.plot_param_importances(tpe)
ax.figure.set_size_inches(8, 7)
plt.tight_layout()
plt.show()

# %% [markdown]
# The gradient methods store array hyperparameters in the trial's user
# attributes instead: the strengths `hoag` ended with, against TPE's best.

# %%
hoag_best = studies["hoag"].best_params["l2"]
tpe_best = studies["tpe"].best_params["l2"]
pos = np.arange(len(hoag_best))
fig, ax = plt.subplots(figsize=(13, 3.5))
ax.bar(pos - 0.2, hoag_best, 0.4, label="hoag")
ax.bar(pos + 0.2, tpe_best, 0.4, label="tpe")
ax.set(yscale="log", xlabel="feature", ylabel="L2 strength", xticks=pos,
       title="best hyperparameters found")
ax.legend()
plt.show()

# %% [markdown]
# With 30 hyperparameters the gradient methods reach lower validation
# losses for the same training budget: each outer step moves all 30 at once,
# where a sampler must find good values by trial. With one or two
# hyperparameters, or discrete ones, black-box search is simpler and
# competitive (see *Choosing a method* in the documentation).
