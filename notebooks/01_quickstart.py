# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/hippojax/hippojax/blob/main/notebooks/01_quickstart.ipynb)
#
# # Quickstart: hypergradients of per-feature ridge regression
#
# Ridge regression on scikit-learn's diabetes data, with one penalty per
# feature, $\lambda_i = e^{\theta_i}$:
#
# $$
# L_{train}(w, \theta) = \tfrac12\,\mathrm{mean}\big((Xw - y)^2\big)
#   + \tfrac12 \sum_i e^{\theta_i} w_i^2,
# \qquad
# L_{val}(w) = \tfrac12\,\mathrm{mean}\big((X_v w - y_v)^2\big).
# $$
#
# Training is a sequence of gradient steps $w \leftarrow \Phi(w, \theta)$;
# the hypergradient is $\mathrm{d}L_{val}(w^\star(\theta))/\mathrm{d}\theta$.
# The inner problem has a closed form, so we can differentiate it exactly
# and see how close `hoag`, `ift` and `t1t2` come, then tune $\theta$ with
# `optax`.

# %%
import importlib.util, subprocess, sys

if importlib.util.find_spec("hippojax") is None:  # e.g. on Colab
  subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                  "hippojax[all] @ git+https://github.com/hippojax/hippojax"],
                 check=True)

# %% tags=["parameters"]
INNER_STEPS = 300  # warm-started gradient steps per outer step
OUTER_STEPS = 60   # hyperparameter updates
OUTER_LR = 0.1     # Adam step size on θ

# %%
import jax

jax.config.update("jax_enable_x64", True)  # compare with the exact answer to many digits

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_diabetes

import hippojax

# %% [markdown]
# ## The problem
#
# Half of the data trains, the other half validates. `train_step` is one
# gradient step on the training loss; `val_loss` is the outer objective.
# Both take `(params, hparams, batch)`, and the data is passed as an argument.

# %%
x, y = load_diabetes(return_X_y=True)
order = np.random.default_rng(0).permutation(len(y))
x, y = x[order], y[order]
half = len(y) // 2
x = (x - x[:half].mean(0)) / x[:half].std(0)
y = (y - y[:half].mean()) / y[:half].std()
train = (jnp.asarray(x[:half]), jnp.asarray(y[:half]))
val = (jnp.asarray(x[half:]), jnp.asarray(y[half:]))


def train_loss(w, theta, batch):
  xb, yb = batch
  return 0.5 * jnp.mean((xb @ w - yb) ** 2) + 0.5 * jnp.sum(jnp.exp(theta) * w**2)


def val_loss(w, theta, batch):
  xb, yb = batch
  return 0.5 * jnp.mean((xb @ w - yb) ** 2)


# A step size that is stable for every θ <= 3 (data curvature + e^3).
curvature = float(jnp.linalg.eigvalsh(train[0].T @ train[0] / half).max())
step = hippojax.gradient_step(train_loss, learning_rate=1.0 / (curvature + np.exp(3.0)))

# %% [markdown]
# ## The exact hypergradient
#
# The minimiser is $w^\star(\theta) = (X^\top X/n + \mathrm{diag}\,e^\theta)^{-1}
# X^\top y/n$; `jax.grad` through the linear solve gives the exact
# hypergradient.

# %%
def exact_weights(theta, batch):
  xb, yb = batch
  n = xb.shape[0]
  return jnp.linalg.solve(xb.T @ xb / n + jnp.diag(jnp.exp(theta)), xb.T @ yb / n)


@jax.jit
def exact_hypergrad(theta, train, val):
  return jax.grad(lambda t: val_loss(exact_weights(t, train), t, val))(theta)


@jax.jit
def exact_val_loss(theta, train, val):
  return val_loss(exact_weights(theta, train), theta, val)


theta0 = jnp.linspace(-3.0, 1.0, 10)  # some penalties weak, some strong
train_to_convergence = jax.jit(
    lambda theta, w, train: jax.lax.fori_loop(0, 5000, lambda _, w: step(w, theta, train), w))
w0 = train_to_convergence(theta0, jnp.zeros(10), train)
exact = exact_hypergrad(theta0, train, val)
print("exact hypergradient:", np.array2string(np.asarray(exact), precision=2))

# %% [markdown]
# ## Three approximations, one call each
#
# The implicit methods take the hypergradient at the trained weights:
# `hoag` solves $(I - J^\top) q = \nabla_w L_{val}$ by conjugate gradient,
# `ift` sums the Neumann series $q = \sum_{j \le k} (J^\top)^j \nabla_w
# L_{val}$, and `t1t2` differentiates a single unrolled step (the first
# term of that series). Each call returns a `HyperGrad`: `grad`, `value`
# and solver diagnostics in `info`.

# %%
def rel_error(g):
  return float(jnp.linalg.norm(g - exact) / jnp.linalg.norm(exact))


hg = hippojax.hoag(step, val_loss, theta0, w0, train, val, tol=1e-10, maxiter=100)
print(f"hoag  rel. error {rel_error(hg.grad):.1e}  "
      f"({int(hg.info.num_iters)} CG iterations, converged={bool(hg.info.converged)})")
hg = hippojax.ift(step, val_loss, theta0, w0, train, val, num_iters=50)
print(f"ift   rel. error {rel_error(hg.grad):.1e}  (50 Neumann terms)")
hg = hippojax.t1t2(step, val_loss, theta0, w0, train, val)
print(f"t1t2  rel. error {rel_error(hg.grad):.1e}  (one unrolled step)")

# %% [markdown]
# Accuracy against cost: each CG iteration or Neumann term is one
# Hessian-vector product. CG converges in about $\sqrt{\kappa}$ products,
# the Neumann series in about $\kappa$ ($\kappa$ the condition number of
# the training Hessian). Iteration counts are static options, so each point
# below is compiled once.

# %%
ift_terms = [1, 3, 10, 50, 250]
ift_err = [rel_error(hippojax.ift(step, val_loss, theta0, w0, train, val, num_iters=k).grad)
           for k in ift_terms]
cg_iters = [1, 2, 4, 7, 10]
cg_err = [rel_error(hippojax.hoag(step, val_loss, theta0, w0, train, val,
                                  tol=1e-12, maxiter=k).grad) for k in cg_iters]
t1t2_err = rel_error(hippojax.t1t2(step, val_loss, theta0, w0, train, val).grad)

fig, ax = plt.subplots(figsize=(6.5, 4))
ax.loglog(ift_terms, ift_err, "o-", label="ift (Neumann terms)")
ax.loglog(cg_iters, cg_err, "s-", label="hoag (CG iterations)")
ax.loglog([1], [t1t2_err], "*", ms=12, label="t1t2 (one step)")
ax.set(xlabel="Hessian-vector products", ylabel="relative error vs exact",
       title="hypergradient accuracy at θ₀")
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# ## Tuning θ: an optax outer loop
#
# `hippojax.hypergradient(step, val_loss, method=...)` is an optax
# transform whose `params` are the hyperparameters; chained with Adam it is
# a complete hyperparameter optimiser. Each outer step runs `INNER_STEPS`
# warm-started gradient steps, takes the hypergradient at the weights
# reached, and updates θ. The whole outer step is one jitted function.
# HOAG also warm-starts CG from its last solution and tightens its tolerance
# from step to step (`inner_params_like` gives the warm start its shape).

# %%
def tune(method, **options):
  tx = optax.chain(hippojax.hypergradient(step, val_loss, method=method, **options),
                   optax.adam(OUTER_LR))

  @jax.jit
  def outer_step(theta, w, state, train, val):
    w = jax.lax.fori_loop(0, INNER_STEPS, lambda _, w: step(w, theta, train), w)
    updates, state = tx.update(None, state, theta, inner_params=w,
                               train_batch=train, val_batch=val)
    theta = jnp.clip(optax.apply_updates(theta, updates), -8.0, 3.0)
    return theta, w, state

  theta, w = jnp.zeros(10), jnp.zeros(10)
  state = tx.init(theta)
  losses = [float(exact_val_loss(theta, train, val))]
  for _ in range(OUTER_STEPS):
    theta, w, state = outer_step(theta, w, state, train, val)
    losses.append(float(exact_val_loss(theta, train, val)))
  return theta, losses, state[0]


def tune_exact():
  """The reference: Adam on the exact hypergradient."""
  adam = optax.adam(OUTER_LR)
  theta = jnp.zeros(10)
  state = adam.init(theta)
  losses = [float(exact_val_loss(theta, train, val))]
  for _ in range(OUTER_STEPS):
    updates, state = adam.update(exact_hypergrad(theta, train, val), state, theta)
    theta = jnp.clip(optax.apply_updates(theta, updates), -8.0, 3.0)
    losses.append(float(exact_val_loss(theta, train, val)))
  return theta, losses


results = {
    "hoag": tune("hoag", inner_params_like=jnp.zeros(10)),
    "ift": tune("ift", num_iters=20),
    "t1t2": tune("t1t2"),
}
theta_exact, losses_exact = tune_exact()
hoag_state = results["hoag"][2]
print(f"hoag: last solve {int(hoag_state.num_iters)} CG iterations, next tolerance "
      f"{float(hoag_state.tol):.1e}, refused steps {int(hoag_state.num_refused)}")
for name, (theta, losses, _) in results.items():
  print(f"{name:5s} validation loss {losses[0]:.4f} -> {losses[-1]:.4f}")
print(f"exact validation loss {losses_exact[0]:.4f} -> {losses_exact[-1]:.4f}")

# %% [markdown]
# The validation loss of the exactly trained model at each outer step's θ,
# and the penalties learned.

# %%
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4))
ax0.plot(losses_exact, "k--", lw=2, label="exact hypergradient")
for name, (theta, losses, _) in results.items():
  ax0.plot(losses, label=name)
ax0.set(xlabel="outer step", ylabel="validation loss", title="outer loop (Adam)")
ax0.grid(alpha=0.3)
ax0.legend()
features = load_diabetes().feature_names
pos = np.arange(10)
ax1.bar(pos - 0.2, np.exp(np.asarray(theta_exact)), 0.4, label="exact", color="k", alpha=0.5)
ax1.bar(pos + 0.2, np.exp(np.asarray(results["hoag"][0])), 0.4, label="hoag")
ax1.set(xticks=pos, yscale="log", ylabel="ridge strength $e^θ$", title="learned penalties")
ax1.set_xticklabels(features)
ax1.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Where next
#
# - The [method pages](https://github.com/hippojax/hippojax/tree/main/docs/methods) explain each
#   algorithm; *Choosing a method* says when to use which.
# - `02_flax_nnx`: the same transform on a Flax NNX model;
#   `03_drmad_schedules`: learning-rate schedules by unrolled
#   differentiation; `04_gradient_vs_blackbox`: against random search and
#   TPE.
