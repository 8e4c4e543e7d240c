# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hippojax/hippojax/blob/main/notebooks/03_drmad_schedules.ipynb)
#
# # DrMAD and learning-rate schedules
#
# A learning-rate *schedule* — one rate $\eta_t = e^{\theta_t}$ for each of
# the $T$ SGD steps — is a hyperparameter that only unrolled methods can
# tune: it changes the path, not the fixed point. Two of them:
#
# - `hippojax.reverse` back-propagates through the $T$ steps exactly; it
#   stores the trajectory, so its memory grows like $O(T \cdot P)$
#   ($O(\sqrt{T} \cdot P)$ with `remat=True`, at the price of recomputing).
# - `hippojax.drmad` (Fu et al. 2016) runs the same reverse pass on the
#   straight line $w_t = (1 - t/T)\,w_0 + (t/T)\,w_T$ instead of the stored
#   trajectory: an approximation whose memory is $O(P)$, whatever $T$.
#
# Here both tune the schedule of a small tanh MLP on scikit-learn's
# digits, and we measure the memory each needs as $T$ grows.

# %%
import importlib.util, subprocess, sys

if importlib.util.find_spec("hippojax") is None:  # e.g. on Colab
  subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                  "hippojax[all] @ git+https://github.com/hippojax/hippojax"],
                 check=True)

# %% tags=["parameters"]
NUM_STEPS = 60              # inner SGD steps T: one learning rate per step
OUTER_STEPS = 30            # hyperparameter updates
BATCH_SIZE = 64             # examples per SGD step
HIDDEN = 32                 # hidden units of the MLP
LR0 = 0.3                   # the initial (flat) learning rate
MEMORY_T = (50, 200, 800)   # horizons T at which memory is measured

# %%
import functools

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits

import hippojax

# %% [markdown]
# ## The problem
#
# The step counter `t` travels in the batch, so `train_step` can read the
# rate of its own step, `exp(log_lr[t])`. `train_batches` is a pytree whose
# leaves have a leading axis of length $T$: slice $t$ is the batch of step
# $t$. Each outer step draws a fresh sequence of minibatches.

# %%
x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype(np.float32)
order = np.random.default_rng(0).permutation(len(y))
train = (jnp.asarray(x[order[:600]]), jnp.asarray(y[order[:600]]))
val = (jnp.asarray(x[order[600:1200]]), jnp.asarray(y[order[600:1200]]))


def net(w, x):
  return jnp.tanh(x @ w["W1"] + w["b1"]) @ w["W2"] + w["b2"]


def cross_entropy(w, batch):
  xb, yb = batch
  return optax.softmax_cross_entropy_with_integer_labels(net(w, xb), yb).mean()


def train_loss(w, hparams, batch):
  return cross_entropy(w, batch["data"]) + 1e-4 * (jnp.sum(w["W1"] ** 2) + jnp.sum(w["W2"] ** 2))


def val_loss(w, hparams, batch):
  return cross_entropy(w, batch)


step = hippojax.gradient_step(
    train_loss, learning_rate=lambda h, b: jnp.exp(h["log_lr"][b["t"]]))
k1, k2 = jax.random.split(jax.random.key(0))
params0 = {"W1": jax.random.normal(k1, (64, HIDDEN)) / 8.0, "b1": jnp.zeros(HIDDEN),
           "W2": jax.random.normal(k2, (HIDDEN, 10)) / np.sqrt(HIDDEN), "b2": jnp.zeros(10)}


def draw_batches(key, num_steps):
  idx = jax.random.randint(key, (num_steps, BATCH_SIZE), 0, train[0].shape[0])
  return {"t": jnp.arange(num_steps), "data": (train[0][idx], train[1][idx])}


def run_training(hparams, params0, batches):
  return jax.lax.scan(lambda w, b: (step(w, hparams, b), None), params0, batches)[0]

# %% [markdown]
# ## Tuning the schedule
#
# One outer step: train for $T$ steps (DrMAD needs $w_T$), take the
# hypergradient of the validation loss with respect to all $T$ rates, and
# update them with Adam. The schedule starts flat at $\eta$ = `LR0`.

# %%
@functools.partial(jax.jit, static_argnames="remat")
def reverse_grad(hparams, params0, batches, val, remat=False):
  hg = hippojax.reverse(step, val_loss, hparams, params0, batches, val, remat=remat)
  return hg.grad, hg.value


@jax.jit
def drmad_grad(hparams, params0, batches, val):
  w_T = run_training(hparams, params0, batches)
  hg = hippojax.drmad(step, val_loss, hparams, params0, w_T, batches, val)
  return hg.grad, hg.value


hypergrad = {"reverse": reverse_grad, "drmad": drmad_grad}
adam = optax.adam(0.05)


def tune(method):
  hparams = {"log_lr": jnp.full(NUM_STEPS, np.log(LR0), jnp.float32)}
  opt_state = adam.init(hparams)
  key = jax.random.key(0)  # the same minibatches for both methods
  history = []
  for _ in range(OUTER_STEPS):
    key, sub = jax.random.split(key)
    grad, value = hypergrad[method](hparams, params0, draw_batches(sub, NUM_STEPS), val)
    updates, opt_state = adam.update(grad, opt_state, hparams)
    hparams = optax.apply_updates(hparams, updates)
    history.append(float(value))  # validation loss at w_T
  return hparams, history


results = {m: tune(m) for m in ("reverse", "drmad")}
for m, (h, hist) in results.items():
  print(f"{m:8s} validation loss {hist[0]:.4f} -> {hist[-1]:.4f}")

# %%
fig, ax = plt.subplots(1, 2, figsize=(12, 3.8))
for m, (h, hist) in results.items():
  ax[0].plot(hist, label=m)
  ax[1].plot(np.exp(np.asarray(h["log_lr"])), label=m)
ax[1].axhline(LR0, color="gray", ls=":", label="initial")
ax[0].set(xlabel="outer step", ylabel="validation loss", title="outer loop")
ax[1].set(xlabel="inner step t", ylabel="learning rate $η_t$", title="learned schedule")
for a in ax:
  a.grid(alpha=0.3)
  a.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# Both lower the validation loss; reverse mode learns the classic shape (a
# high rate, annealed at the end), DrMAD a noisier one. How close is
# DrMAD's hypergradient to the exact one? Compare them at the flat initial
# schedule and at the schedule reverse mode learned:

# %%
def cosine(a, b):
  return float(jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


batches = draw_batches(jax.random.key(1), NUM_STEPS)
flat = {"log_lr": jnp.full(NUM_STEPS, np.log(LR0), jnp.float32)}
for name, h in (("flat", flat), ("learned by reverse", results["reverse"][0])):
  exact = reverse_grad(h, params0, batches, val)[0]["log_lr"]
  approx = drmad_grad(h, params0, batches, val)[0]["log_lr"]
  print(f"{name:18s} schedule: cosine(drmad, reverse) = {cosine(approx, exact):6.3f}, "
        f"norm ratio {float(jnp.linalg.norm(approx) / jnp.linalg.norm(exact)):.3g}")

# %% [markdown]
# ## Memory
#
# XLA reports the scratch memory a compiled program needs:
# `jax.jit(f).lower(*args).compile().memory_analysis().temp_size_in_bytes`.
# Measured for one hypergradient at several horizons $T$ (compiled only,
# never run):

# %%
def temp_bytes(fn, *args, **static):
  return fn.lower(*args, **static).compile().memory_analysis().temp_size_in_bytes


memory = {"reverse": [], "reverse, remat=True": [], "drmad": []}
for T in MEMORY_T:
  h = {"log_lr": jnp.full(T, np.log(LR0), jnp.float32)}
  b = draw_batches(jax.random.key(0), T)
  memory["reverse"].append(temp_bytes(reverse_grad, h, params0, b, val))
  memory["reverse, remat=True"].append(temp_bytes(reverse_grad, h, params0, b, val, remat=True))
  memory["drmad"].append(temp_bytes(drmad_grad, h, params0, b, val))

print(f"{'T':>6s}" + "".join(f"{name:>22s}" for name in memory))
for i, T in enumerate(MEMORY_T):
  print(f"{T:6d}" + "".join(f"{v[i] / 2**20:19.2f} MiB" for v in memory.values()))

fig, ax = plt.subplots(figsize=(6.5, 4))
for name, v in memory.items():
  ax.loglog(MEMORY_T, np.asarray(v) / 2**20, "o-", label=name)
ax.set(xlabel="horizon T (inner steps)", ylabel="temporary memory (MiB)",
       title="memory of one hypergradient")
ax.set_xticks(MEMORY_T, [str(T) for T in MEMORY_T])
ax.minorticks_off()
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# Reverse mode grows linearly with $T$; rematerialisation cuts that to
# about $\sqrt{T}$; DrMAD stays flat. DrMAD's price is accuracy: its
# backward pass visits points of the straight line, not of the trajectory.
# Near a gentle schedule the two are close and so are the hypergradients;
# with large rates the trajectory curves away from the line and DrMAD's
# hypergradient can be far off, even in direction (the cosines above). For
# long horizons that do not fit in memory, try `reverse(remat=True)` first
# — it is exact — and DrMAD when even that does not fit.
