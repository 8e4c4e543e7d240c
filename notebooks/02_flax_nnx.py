# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hippojax/hippojax/blob/main/notebooks/02_flax_nnx.ipynb)
#
# # Flax NNX: per-layer weight decay and the learning rate of an MLP
#
# A two-layer MLP (a `flax.nnx.Module`) classifies scikit-learn's 8×8
# digits. Its hyperparameters are a log learning rate and one log weight
# decay per layer:
#
# $$
# L_{train}(w, \theta) = \mathrm{CE}(w) + \tfrac12 \sum_{l}
#   e^{\theta_l} \lVert W_l \rVert^2,
# \qquad \eta = e^{\theta_{lr}},
# $$
#
# tuned on the validation loss, *while the model trains*, with
# `hippojax.hypergradient` and Adam.

# %%
import importlib.util, subprocess, sys

if importlib.util.find_spec("hippojax") is None:  # e.g. on Colab
  subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                  "hippojax[all] @ git+https://github.com/hippojax/hippojax"],
                 check=True)

# %% tags=["parameters"]
OUTER_STEPS = 40   # hyperparameter updates
INNER_STEPS = 10   # SGD steps per outer step (the differentiated horizon)
BATCH_SIZE = 128
HIDDEN = 64
OUTER_LR = 0.1     # Adam step size on the log-hyperparameters

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

import hippojax

# %% [markdown]
# ## Data and model

# %%
x, y = load_digits(return_X_y=True)
order = np.random.default_rng(0).permutation(len(y))
x, y = (x[order] / 16.0).astype(np.float32), y[order].astype(np.int32)
train = (jnp.asarray(x[:1000]), jnp.asarray(y[:1000]))
val = (jnp.asarray(x[1000:1400]), jnp.asarray(y[1000:1400]))
test = (jnp.asarray(x[1400:]), jnp.asarray(y[1400:]))


class MLP(nnx.Module):

  def __init__(self, hidden, *, rngs):
    self.hidden = nnx.Linear(64, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.hidden(x)))


model = MLP(HIDDEN, rngs=nnx.Rngs(0))

# %% [markdown]
# ## From a module to pure functions
#
# hippojax works on pure functions of pytrees. `nnx.split` takes the
# parameters off the module as a pytree of arrays; `train_step` and
# `val_loss` rebuild the module inside with `nnx.merge`. The learning rate
# is read from the hyperparameters by `gradient_step`.

# %%
graphdef, state = nnx.split(model, nnx.Param)
params = nnx.as_pure(state)  # a pytree of plain arrays


def cross_entropy(params, batch):
  xb, yb = batch
  logits = nnx.merge(graphdef, params)(xb)
  return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()


def train_loss(params, hparams, batch):
  penalty = sum(0.5 * jnp.exp(hparams["log_wd"][layer]) * jnp.sum(params[layer]["kernel"] ** 2)
                for layer in ("hidden", "out"))
  return cross_entropy(params, batch) + penalty


def val_loss(params, hparams, batch):
  return cross_entropy(params, batch)


step = hippojax.gradient_step(train_loss, learning_rate=lambda h, b: jnp.exp(h["log_lr"]))

# %% [markdown]
# ## The outer loop
#
# At a fixed point the learning rate has no effect, so the implicit methods
# (`hoag`, `ift`) would give it a zero hypergradient. Here the hypergradient
# is taken through the `INNER_STEPS` SGD steps of each outer step with
# `method="reverse"` (truncated back-propagation), which sees both the
# learning rate and the weight decays. Each outer step draws its
# minibatches, computes the hypergradient from the current weights, takes
# the steps, and updates the hyperparameters: one jitted function.

# %%
hyper_tx = optax.chain(hippojax.hypergradient(step, val_loss, method="reverse"),
                       optax.adam(OUTER_LR))


def draw_batches(key, train):
  idx = jax.random.randint(key, (INNER_STEPS, BATCH_SIZE), 0, train[0].shape[0])
  return train[0][idx], train[1][idx]  # leading axis: one minibatch per step


def advance(params, hparams, batches):
  return jax.lax.scan(lambda w, b: (step(w, hparams, b), None), params, batches)[0]


@jax.jit
def outer_step(hparams, params, opt_state, key, train, val):
  batches = draw_batches(key, train)
  updates, opt_state = hyper_tx.update(None, opt_state, hparams, params0=params,
                                       train_batches=batches, val_batch=val)
  params = advance(params, hparams, batches)
  hparams = optax.apply_updates(hparams, updates)
  hparams = jax.tree.map(lambda v: jnp.clip(v, -12.0, 0.0), hparams)  # lr <= 1
  return hparams, params, opt_state


@jax.jit
def plain_steps(hparams, params, key, train):
  """The same minibatches with fixed hyperparameters: the untuned baseline."""
  return advance(params, hparams, draw_batches(key, train))


val_ce = jax.jit(cross_entropy)

hparams0 = {"log_lr": jnp.float32(-4.0), "log_wd": {"hidden": jnp.float32(-6.0),
                                                    "out": jnp.float32(-6.0)}}
hparams, tuned, baseline = hparams0, params, params
opt_state = hyper_tx.init(hparams)
history = {"tuned": [], "untuned": [], "hparams": []}
key = jax.random.key(0)
for _ in range(OUTER_STEPS):
  key, sub = jax.random.split(key)
  hparams, tuned, opt_state = outer_step(hparams, tuned, opt_state, sub, train, val)
  baseline = plain_steps(hparams0, baseline, sub, train)
  history["tuned"].append(float(val_ce(tuned, val)))
  history["untuned"].append(float(val_ce(baseline, val)))
  history["hparams"].append(jax.tree.map(lambda v: float(jnp.exp(v)), hparams))
print(f"learning rate {np.exp(-4.0):.4f} -> {history['hparams'][-1]['log_lr']:.4f}")
print("weight decay", {k: f"{v:.1e}" for k, v in history["hparams"][-1]["log_wd"].items()})

# %% [markdown]
# ## Results
#
# The tuned hyperparameters write back into the module with `nnx.update`;
# the module is then an ordinary NNX model again.

# %%
nnx.update(model, tuned)
accuracy = float(jnp.mean(jnp.argmax(model(test[0]), -1) == test[1]))
untuned = nnx.merge(graphdef, baseline)
accuracy0 = float(jnp.mean(jnp.argmax(untuned(test[0]), -1) == test[1]))
print(f"test accuracy after {OUTER_STEPS * INNER_STEPS} SGD steps: "
      f"tuned {accuracy:.3f}, untuned {accuracy0:.3f}")

steps = INNER_STEPS * np.arange(1, OUTER_STEPS + 1)
fig, ax = plt.subplots(1, 3, figsize=(14, 3.8))
ax[0].plot(steps, history["untuned"], label="fixed hyperparameters")
ax[0].plot(steps, history["tuned"], label="tuned while training")
ax[0].set(xlabel="SGD step", ylabel="validation loss", title="training")
ax[0].legend()
ax[1].plot(steps, [h["log_lr"] for h in history["hparams"]])
ax[1].set(xlabel="SGD step", ylabel="learning rate", title="learning rate", yscale="log")
for layer in ("hidden", "out"):
  ax[2].plot(steps, [h["log_wd"][layer] for h in history["hparams"]], label=layer)
ax[2].set(xlabel="SGD step", ylabel="weight decay", title="weight decay per layer", yscale="log")
ax[2].legend()
for a in ax:
  a.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# The hypergradient looks `INNER_STEPS` steps ahead, so it is greedy: it
# raises the learning rate while that lowers the validation loss soon, and
# is biased towards short horizons (Wu et al. 2018). Lengthen the horizon
# (`INNER_STEPS`) or use `method="drmad"` for long ones (see
# `03_drmad_schedules`). The hyperparameters can also live in an
# `nnx.Module` driven by `nnx.Optimizer`; see the Flax NNX page of the
# documentation.
