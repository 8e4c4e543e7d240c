"""Problems shared by the benchmark scripts.

The main one is a tanh MLP classifier whose every weight has its own weight
decay ``exp(λ_i)`` (as many hyperparameters as weights), on synthetic
Gaussian inputs with random labels:

.. math::
   L_{train}(w, λ) = \\mathrm{xent}(w; b_{train})
     + \\tfrac12 \\sum_i e^{λ_i} w_i^2, \\qquad
   L_{val}(w, λ) = \\mathrm{xent}(w; b_{val}).

Two hidden layers of width ``h`` on 64 inputs and 10 classes give
``h² + 76 h + 10`` weights: ``SIZES`` picks ``h`` for about 10k, 100k and 1M.
The losses are module-level functions, so every benchmark passes the same
callables (and equal ``gradient_step`` objects) and nothing recompiles.
"""

import jax
import jax.numpy as jnp
import numpy as np

# name -> hidden width; 8,970, 104,842 and 1,126,410 weights.
SIZES = {"10k": 64, "100k": 288, "1M": 1024}
LEARNING_RATE = 0.1


def mlp_problem(hidden: int, depth: int = 2, n: int = 512, d: int = 64,
                classes: int = 10, seed: int = 0, dtype=jnp.float32):
  """An MLP with per-weight decay hyperparameters, and its data.

  Args:
    hidden: width of the hidden layers.
    depth: number of hidden layers.
    n: examples in each of the training and validation batches.
    d: input dimension.
    classes: number of classes.
    seed: PRNG seed.
    dtype: floating dtype of weights, hyperparameters and inputs.

  Returns:
    ``(params, hparams, train, val)``: a list of ``{"w", "b"}`` layers, the
    log weight decays (same structure, all ``-4``), and ``(x, y)`` batches.
  """
  key = jax.random.PRNGKey(seed)
  sizes = [d] + [hidden] * depth + [classes]
  params = []
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    k = jax.random.fold_in(key, i)
    params.append({"w": (jax.random.normal(k, (a, b)) / np.sqrt(a)
                         ).astype(dtype),
                   "b": jnp.zeros(b, dtype)})
  kx, ky = jax.random.split(jax.random.fold_in(key, 99))
  x = jax.random.normal(kx, (2 * n, d)).astype(dtype)
  y = jax.random.randint(ky, (2 * n,), 0, classes)
  hparams = jax.tree.map(lambda p: jnp.full(p.shape, -4.0, dtype), params)
  return params, hparams, (x[:n], y[:n]), (x[n:], y[n:])


def forward_pass(params, x):
  """Logits of the tanh MLP."""
  for layer in params[:-1]:
    x = jnp.tanh(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def softmax_xent(logits, labels):
  """Mean softmax cross-entropy of ``logits`` against integer ``labels``."""
  return jnp.mean(jax.nn.logsumexp(logits, -1) -
                  jnp.take_along_axis(logits, labels[:, None], -1)[:, 0])


def decay_penalty(params, log_decay):
  """Per-weight decay ``½ Σ exp(λ_i) w_i²``."""
  return 0.5 * sum(jnp.sum(jnp.exp(h) * p**2) for p, h in zip(
      jax.tree.leaves(params), jax.tree.leaves(log_decay)))


def xent(params, batch):
  """Mean softmax cross-entropy."""
  x, y = batch
  return softmax_xent(forward_pass(params, x), y)


def train_loss(params, log_decay, batch):
  """Cross-entropy plus per-weight decay ``½ Σ exp(λ_i) w_i²``."""
  return xent(params, batch) + decay_penalty(params, log_decay)


def val_loss(params, log_decay, batch):
  """Validation cross-entropy (does not read the hyperparameters)."""
  del log_decay
  return xent(params, batch)


def softmax_regression_problem(n: int = 4000, d: int = 64, classes: int = 10,
                               seed: int = 0, log_decay: float = -8.0,
                               dtype=jnp.float64):
  """Multinomial logistic regression with per-weight decay (convex).

  Inputs are Gaussian with a decaying spectrum and labels come from a noisy
  linear teacher, so the training Hessian is well defined, positive definite
  and ill-conditioned enough that conjugate gradient needs tens of
  iterations.

  Returns:
    ``(params, hparams, train, val)`` with ``params = {"w": (d, C), "b": (C,)}``
    and ``hparams`` the log weight decays of the same structure (all
    ``log_decay``).
  """
  rng = np.random.default_rng(seed)
  scale = np.geomspace(1.0, 0.05, d)
  teacher = rng.normal(size=(d, classes)) * 2.0

  def split():
    x = rng.normal(size=(n, d)) * scale
    logits = x @ teacher + rng.gumbel(size=(n, classes))
    return jnp.asarray(x, dtype), jnp.asarray(logits.argmax(-1))

  params = {"w": jnp.zeros((d, classes), dtype),
            "b": jnp.zeros(classes, dtype)}
  hparams = jax.tree.map(lambda p: jnp.full(p.shape, log_decay, dtype),
                         params)
  return params, hparams, split(), split()


def linear_xent(params, batch):
  """Mean softmax cross-entropy of a linear model."""
  x, y = batch
  return softmax_xent(x @ params["w"] + params["b"], y)


def linear_train_loss(params, log_decay, batch):
  """Cross-entropy plus per-weight decay ``½ Σ exp(λ_i) w_i²``."""
  return linear_xent(params, batch) + decay_penalty(params, log_decay)


def linear_val_loss(params, log_decay, batch):
  """Validation cross-entropy (does not read the hyperparameters)."""
  del log_decay
  return linear_xent(params, batch)
