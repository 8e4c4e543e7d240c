# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hippojax/hippojax/blob/main/notebooks/07_single_loop.ipynb)
#
# # Single-loop bilevel solvers: SOBA, SABA, AmIGO
#
# On minibatches, a single-loop method moves the weights $w$, the
# linear-system variable $q$ of $(I - J^\top) q = \nabla_w L_{val}$ and the
# hyperparameters $\lambda$ together, one minibatch at a time. This notebook
# runs the three of them on a stochastic quadratic bilevel problem whose
# optimal hyperparameters $\lambda^*$ have a closed form, and shows how far
# each gets, and how fast.

# %%
import importlib.util, subprocess, sys

if importlib.util.find_spec("hippojax") is None:  # e.g. on Colab
  subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                  "hippojax[all] @ git+https://github.com/hippojax/hippojax"],
                 check=True)

# %% tags=["parameters"]
STEPS = 4000  # minibatch steps per method
BATCH = 32    # minibatch size (training and validation)

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import hippojax
from hippojax import problems

jax.config.update("jax_enable_x64", True)  # to see convergence to λ* itself

# %% [markdown]
# ## The problem
#
# A ridge regression shrunk towards $C\lambda$ instead of zero:
# $L_{train}(w, \lambda) = \frac{1}{2n}\sum_i (x_i^\top w - y_i)^2 +
# \frac{\rho}{2}\lVert w - C\lambda\rVert^2$, so $w^*(\lambda)$ is affine in
# $\lambda$ and the validation error is a quadratic in $\lambda$ with a
# least-squares minimiser $\lambda^*$.

# %%
prob = problems.stochastic_quadratic(seed=0)
step, val_loss = prob.train_step, prob.val_loss
n, m = 2000, 1000
print("λ* =", np.round(prob.hparams_star, 4))

# %% [markdown]
# ## One loop for three methods
#
# Per minibatch: one transform update (one step on $q$, the hypergradient
# estimate out), one step on the weights (plain SGD; SABA's own
# variance-reduced step for SABA), one SGD step on $\lambda$. AmIGO takes
# four linear-system steps per update, on a stack of four minibatches.

# %%
def run(method, decay=0.0, **options):
  """Relative errors of λ along the loop; the step on λ is
  0.02 / sqrt(1 + t / decay) (constant for decay = 0)."""
  tx = hippojax.hypergradient(step, val_loss, method=method,
                              inner_params_like=jnp.zeros(5), **options)
  rng = np.random.default_rng(1)
  per = n // BATCH
  ti = np.concatenate([rng.permutation(n)[:per * BATCH].reshape(per, BATCH)
                       for _ in range(STEPS * 4 // per + 1)])[:STEPS * 4]
  vi = rng.integers(0, m, (STEPS * 4, BATCH))
  stack = 4 if method == "amigo" else 1
  ti = jnp.asarray(ti[:STEPS * stack].reshape(STEPS, stack, BATCH))
  vi = jnp.asarray(vi[:STEPS * stack].reshape(STEPS, stack, BATCH))

  def one(carry, idx):
    w, lam, state = carry
    t, v, k = idx
    tb = jax.tree.map(lambda a: a[t], prob.train_data)
    vb = jax.tree.map(lambda a: a[v], prob.val_data)
    if stack == 1:
      tb, vb = (jax.tree.map(lambda a: a[0], b) for b in (tb, vb))
    g, state = tx.update(None, state, lam, inner_params=w, train_batch=tb,
                         val_batch=vb, train_indices=t[0], val_indices=v[0])
    if method == "saba":
      w = w + state.extra.inner_step
    else:
      w = step(w, lam, jax.tree.map(lambda a: a[0], tb) if stack > 1 else tb)
    rate = 0.02 * jax.lax.rsqrt(1.0 + k / decay) if decay else 0.02
    lam = lam - rate * g
    return (w, lam, state), lam

  init = (jnp.zeros(5), jnp.zeros(3), tx.init(jnp.zeros(3)))
  steps = jnp.arange(STEPS, dtype=jnp.float64)
  _, lams = jax.jit(lambda c, i: jax.lax.scan(one, c, i))(
      init, (ti, vi, steps))
  err = np.linalg.norm(np.asarray(lams) - prob.hparams_star, axis=1)
  return err / np.linalg.norm(prob.hparams_star)


errors = {"soba": run("soba"),
          "soba, decaying step": run("soba", decay=STEPS / 8),
          "saba": run("saba", num_train=n, num_val=m),
          "amigo": run("amigo", linear_steps=4)}
for name, e in errors.items():
  print(f"{name:20s} relative error of the last λ: {e[-1]:.4f}")

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, e in errors.items():
  ax.semilogy(e, label=name)
ax.set_xlabel("minibatch step")
ax.set_ylabel("‖λ − λ*‖ / ‖λ*‖")
ax.legend()
ax.set_title("single-loop solvers on a stochastic quadratic")
fig.tight_layout()
plt.show()

# %% [markdown]
# SOBA and AmIGO reach a noise ball around $\lambda^*$ whose radius grows
# with the step on $\lambda$. A step decaying like $1/\sqrt{t}$ shrinks it
# as the loop goes on (averaging the iterates narrows it too; the study
# layer's chains do both). SABA's SAGA memories remove the noise, so its
# last iterate converges to $\lambda^*$ itself with a constant step, at the
# price of per-example memories (`hippojax.saba_memory_bytes`).

# %%
assert errors["saba"][-1] < 0.01
assert min(errors["soba"][-1], errors["amigo"][-1]) < 0.2
# The decayed step's last 500 iterates sit closer to λ* than the constant's.
assert (np.median(errors["soba, decaying step"][-500:])
        < np.median(errors["soba"][-500:]))
