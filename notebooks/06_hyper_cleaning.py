# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hippojax/hippojax/blob/main/notebooks/06_hyper_cleaning.ipynb)
#
# # Data hyper-cleaning: finding the wrong labels
#
# About 40% of the training labels of scikit-learn's digits have been
# replaced by another class. Give every training example $i$ a weight
# $\omega_i \in [0, 1]$ and train softmax regression on the weighted loss
#
# $$
# L_{train}(w, \omega) = \frac1n \sum_i \omega_i\, \mathrm{CE}_i(w)
#   + \tfrac12 \cdot 10^{-3} \lVert W \rVert^2 ;
# $$
#
# then tune the 1000 weights to minimise the loss on a small *clean*
# validation set (Franceschi et al. 2017). Examples whose labels contradict
# the validation data should get down-weighted. Do they — and are they the
# corrupted ones?

# %%
import importlib.util, subprocess, sys

if importlib.util.find_spec("hippojax") is None:  # e.g. on Colab
  subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                  "hippojax[all] @ git+https://github.com/hippojax/hippojax"],
                 check=True)

# %% tags=["parameters"]
METHOD = "hoag"   # any gradient method: "hoag", "ift", "t1t2", "reverse", "drmad"
OUTER_STEPS = 40  # hyperparameter updates (300 warm-started training steps each)

# %%
import matplotlib.pyplot as plt
import numpy as np

import hippojax
from hippojax import problems

# %% [markdown]
# ## The problem
#
# `hyper-cleaning-digits` is a built-in problem: the data, the weighted
# training loss, the search space (one weight per example, in $[0, 1]$,
# starting at 0.5) and, for checking, the mask of corrupted labels in
# `problem.extras["corrupted"]` — never shown to the method.

# %%
problem = problems.get("hyper-cleaning-digits")
corrupted = problem.extras["corrupted"]
x_train, labels = (np.asarray(a) for a in problem.train_data)
print(problem.description)
print(f"{corrupted.sum()} of {len(corrupted)} training labels are wrong")

# %% [markdown]
# ## Tuning 1000 weights
#
# A study runs the outer loop: 300 warm-started training steps, a
# hypergradient with respect to all 1000 weights, an Adam step on the
# unconstrained values behind them (a sigmoid keeps each in $[0, 1]$).
# Every outer step is recorded as a trial, with its weights.

# %%
study = hippojax.create_study(METHOD, storage=":memory:")
study.optimize(problem, n_steps=OUTER_STEPS)
trials = study.chain_trials()
weights = np.asarray([t.user_attrs["hparams"]["weight"] for t in trials])
omega = study.best_params["weight"]
print(f"validation loss {trials[0].value:.3f} -> {study.best_value:.3f}")

fig, ax = plt.subplots(1, 2, figsize=(12, 3.8))
ax[0].plot([t.value for t in trials])
ax[0].set(xlabel="outer step", ylabel="validation loss", title="outer loop")
ax[1].plot(weights[:, ~corrupted].mean(1), label="clean labels")
ax[1].plot(weights[:, corrupted].mean(1), label="corrupted labels")
ax[1].set(xlabel="outer step", ylabel="mean weight ω", title="weights by group")
ax[1].legend()
for a in ax:
  a.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Which examples were down-weighted?

# %%
order = np.argsort(omega)  # most down-weighted first
for k in (50, 200, int(corrupted.sum())):
  print(f"of the {k:3d} lowest weights, {corrupted[order[:k]].mean():.0%} are corrupted labels")

fig, ax = plt.subplots(figsize=(7, 3.5))
bins = np.linspace(0, 1, 41)
ax.hist(omega[~corrupted], bins, alpha=0.6, label="clean labels")
ax.hist(omega[corrupted], bins, alpha=0.6, label="corrupted labels")
ax.set(xlabel="learned weight ω", ylabel="examples", title="learned weights")
ax.legend()
plt.show()

# %% [markdown]
# The most down-weighted examples, with the label they were given (red: a
# corrupted label, black: a correct one) and what the model trained with
# the learned weights predicts. The model sees standardised pixels; shown
# here is where a pixel is darker than its average over the training set.

# %%
params = problem.train({"weight": omega})  # softmax regression: {"w", "b"}
predicted = np.argmax(x_train @ np.asarray(params["w"]) + np.asarray(params["b"]), -1)


def show(indices, title):
  fig, axes = plt.subplots(2, 10, figsize=(12, 3.9))
  for ax, i in zip(axes.flat, indices):
    ax.imshow(x_train[i].reshape(8, 8), cmap="gray_r", vmin=0.0, vmax=1.5)
    ax.set_title(f"label {labels[i]}, model {predicted[i]}\nω = {omega[i]:.2f}",
                 fontsize=8, color="red" if corrupted[i] else "black")
    ax.axis("off")
  fig.suptitle(title)
  plt.tight_layout()
  plt.show()


show(order[:20], "most down-weighted")
missed = order[corrupted[order]][::-1]  # corrupted labels, highest weight first
show(missed[:20], "corrupted labels that kept the highest weights")

# %% [markdown]
# ## Does cleaning help?
#
# Trained from scratch on the same data, with uniform weights, with the
# learned weights, and with the oracle weights (0 for every corrupted label):

# %%
for name, w in (("uniform weights", np.full(len(omega), 0.5)),
                ("learned weights", omega),
                ("oracle weights", (~corrupted).astype(float))):
  result = problem.evaluate({"weight": w})
  print(f"{name:16s} validation loss {result['val_loss']:.3f}, "
        f"{problem.metric_name} {result['test_metric']:.3f}")
