# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hippojax/hippojax/blob/main/notebooks/05_pytorch.ipynb)
#
# # A PyTorch model, tuned by hippojax
#
# `hippojax.torch` turns a `torch.nn.Module` and torch losses into the pure
# functions every hippojax algorithm takes, `train_step(params, hparams,
# batch)` and `val_loss(params, hparams, batch)`. The model and the losses
# are written in torch. Built from standard layers, they are translated
# (once, by `torch.export`) into compiled JAX functions with the same
# parameter names and numbers, so the hypergradient algorithm, the inner
# training and the outer loop all run as one XLA program. Code outside the
# translated set runs in torch itself, through callbacks.
#
# Here: a torch MLP on scikit-learn's two moons, trained on few noisy points
# so that it overfits, with one weight decay per layer tuned by HOAG.

# %%
import importlib.util, subprocess, sys

if importlib.util.find_spec("hippojax") is None:  # e.g. on Colab
  subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                  "hippojax[all] @ git+https://github.com/hippojax/hippojax"],
                 check=True)

# %% tags=["parameters"]
N_TRAIN = 40      # training points (few: the unregularised MLP overfits)
HIDDEN = 64
INNER_STEPS = 50  # warm-started gradient steps per outer step
OUTER_STEPS = 15  # hyperparameter updates

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import torch
import torch.nn.functional as F
from sklearn.datasets import make_moons

import hippojax
import hippojax.torch

torch.manual_seed(0)
torch.set_num_threads(1)  # small model: one thread is fastest next to XLA

# %% [markdown]
# ## A torch model and torch losses
#
# `hippojax.torch.functional(net)` is the module as a function of its
# weights, `model(params, x)`. The losses are plain torch code; the weight
# decay of a layer is `exp(hparams[name])`.

# %%
x, y = make_moons(n_samples=N_TRAIN + 1000, noise=0.3, random_state=0)
x, y = x.astype(np.float32), y.astype(np.int32)
train = (jnp.asarray(x[:N_TRAIN]), jnp.asarray(y[:N_TRAIN]))
val = (jnp.asarray(x[N_TRAIN:]), jnp.asarray(y[N_TRAIN:]))

net = torch.nn.Sequential(torch.nn.Linear(2, HIDDEN), torch.nn.Tanh(),
                          torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.Tanh(),
                          torch.nn.Linear(HIDDEN, 2))
model = hippojax.torch.functional(net)


def train_loss(params, hparams, batch):
  xb, yb = batch
  decay = sum(hparams[name].exp() * (params[name] ** 2).sum() for name in hparams)
  return F.cross_entropy(model(params, xb), yb.long()) + 0.5 * decay


def val_loss(params, hparams, batch):
  xb, yb = batch
  return F.cross_entropy(model(params, xb), yb.long())

# %% [markdown]
# ## The same functions, as JAX functions
#
# `gradient_step` builds `train_step` = $w - \eta \nabla_w L_{train}$ from
# the torch loss; `wrap` makes any torch function callable and
# differentiable from JAX; `params_of` copies the module's weights into a
# dict of JAX arrays. `translation` tells which path a function takes:
# `"jax"` (translated) or `"callback"` (torch called from JAX), and why.

# %%
step = hippojax.torch.gradient_step(train_loss, learning_rate=0.5)
val_fn = hippojax.torch.wrap(val_loss)
params = hippojax.torch.params_of(net)  # {"0.weight": Array, "0.bias": ..., ...}
print({name: p.shape for name, p in params.items()})
hparams = {name: jnp.float32(-7.0) for name in ("0.weight", "2.weight", "4.weight")}
print(step.translation(params, hparams, train).path,
      val_fn.translation(params, hparams, val).path)

# %% [markdown]
# ## The outer loop
#
# Exactly as for a JAX model: `hippojax.hypergradient(method="hoag")` chained
# with Adam, inside one jitted outer step: `INNER_STEPS` warm-started
# training steps, the hypergradient at the weights reached, an Adam step on
# the log weight decays. On the JAX path the torch model is part of the
# compiled program (on the callback path each call into torch would be a
# `jax.pure_callback`). For comparison, the same network trains for the same
# number of steps with the initial (tiny) weight decays.

# %%
tx = optax.chain(
    hippojax.hypergradient(step, val_fn, method="hoag", maxiter=30, inner_params_like=params),
    optax.adam(0.3))
opt_state = tx.init(hparams)


@jax.jit
def train_steps(hparams, params, train):
  return jax.lax.fori_loop(0, INNER_STEPS, lambda _, w: step(w, hparams, train), params)


@jax.jit
def outer_step(hparams, params, opt_state, train, val):
  params = train_steps(hparams, params, train)
  updates, opt_state = tx.update(None, opt_state, hparams, inner_params=params,
                                 train_batch=train, val_batch=val)
  return optax.apply_updates(hparams, updates), params, opt_state


hparams0 = hparams
tuned, untuned = params, params
history = {"tuned": [], "untuned": [], "decay": []}
for _ in range(OUTER_STEPS):
  hparams, tuned, opt_state = outer_step(hparams, tuned, opt_state, train, val)
  untuned = train_steps(hparams0, untuned, train)
  history["tuned"].append(float(opt_state[0].value))  # at the weights reached
  history["untuned"].append(float(val_fn(untuned, hparams0, val)))
  history["decay"].append({k: float(jnp.exp(v)) for k, v in hparams.items()})
print(f"validation loss after {OUTER_STEPS * INNER_STEPS} steps: untuned "
      f"{history['untuned'][-1]:.3f}, tuned {float(val_fn(tuned, hparams, val)):.3f}")
print("weight decay", {k: f"{v:.1e}" for k, v in history["decay"][-1].items()})

# %%
steps = INNER_STEPS * np.arange(1, OUTER_STEPS + 1)
fig, ax = plt.subplots(1, 2, figsize=(12, 3.8))
ax[0].plot(steps, history["untuned"], "o-", label=f"weight decay {np.exp(-7.0):.0e}")
ax[0].plot(steps, history["tuned"], "o-", label="tuned by HOAG")
ax[0].set(xlabel="training step", ylabel="validation loss", title="training")
ax[0].legend()
for name in hparams:
  ax[1].plot(steps, [d[name] for d in history["decay"]], label=name)
ax[1].set(xlabel="training step", ylabel="weight decay", yscale="log", title="weight decay per layer")
ax[1].legend()
for a in ax:
  a.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Back into torch
#
# `load_params` writes weights back into the module, which is then an
# ordinary torch model: here it draws its decision boundary, with the
# weights trained under the initial and under the tuned weight decays.

# %%
grid = np.stack(np.meshgrid(np.linspace(-2, 3, 200), np.linspace(-1.5, 2, 160)), -1)
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
for ax, (title, p) in zip(axes, (("untuned weight decay", untuned),
                                 ("tuned weight decay", tuned))):
  hippojax.torch.load_params(net, p)
  with torch.no_grad():  # plain torch from here on
    prob = torch.softmax(net(torch.from_numpy(grid.reshape(-1, 2).astype(np.float32))), -1)
    predicted = net(torch.from_numpy(x[N_TRAIN:])).argmax(-1).numpy()
  prob = prob[:, 1].numpy().reshape(grid.shape[:2])
  accuracy = float(np.mean(predicted == y[N_TRAIN:]))
  ax.contourf(grid[..., 0], grid[..., 1], prob, levels=20, cmap="RdBu_r", alpha=0.6)
  ax.contour(grid[..., 0], grid[..., 1], prob, levels=[0.5], colors="k")
  ax.scatter(x[N_TRAIN:, 0], x[N_TRAIN:, 1], c=y[N_TRAIN:], cmap="RdBu_r", s=4, alpha=0.3)
  ax.scatter(x[:N_TRAIN, 0], x[:N_TRAIN, 1], c=y[:N_TRAIN], cmap="RdBu_r", s=40, edgecolors="k")
  ax.set_title(f"{title}: validation accuracy {accuracy:.3f}")
plt.tight_layout()
plt.show()

# %% [markdown]
# Every hippojax method runs on the torch model the same way — `t1t2`,
# `ift`, `hoag`, `implicit_hypergrad`, `reverse`, `drmad`, `forward` — since
# they only need VJPs of `train_step`. The PyTorch page of the
# documentation covers where data is copied, GPUs and the limits (pure
# functions, double backward).
