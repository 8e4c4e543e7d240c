r"""Tuning per-layer weight decay and the learning rate of a Flax NNX MLP.

The inner problem trains a two-layer MLP on scikit-learn's digits with SGD;
the hyperparameters are one log weight decay per layer and a log learning
rate:

.. math::
   L_{train}(w, \theta) = \mathrm{CE}(w) + \tfrac12 \sum_l e^{\theta_l}
     \lVert W_l \rVert^2, \qquad \eta = e^{\theta_{lr}}.

Each outer step draws K minibatches, computes the hypergradient of the
validation loss through the K SGD steps from the current weights with
``hippojax.hypergradient(method="reverse")`` (truncated reverse mode: it sees
the learning rate, which the implicit methods do not — at a fixed point the
learning rate has no effect, so ``ift``/``hoag`` return zero for it), takes
those K steps, and updates the hyperparameters with Adam. Everything runs in
one jitted outer step.

The pattern for any ``nnx.Module``:

1. ``graphdef, state = nnx.split(model, nnx.Param)`` and
   ``params = nnx.as_pure(state)`` — a pytree of arrays;
2. write ``train_step`` and ``val_loss`` over ``params``, calling
   ``nnx.merge(graphdef, params)`` inside;
3. run the outer loop with the transform;
4. write the tuned weights back with ``nnx.update(model, params)``.

Run ``python examples/nnx_digits.py`` (add ``--nnx-optimizer`` to drive the
hyperparameters with ``nnx.Optimizer`` instead of a plain optax loop).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

import hippojax

LOG_LR_RANGE = (-7.0, 0.0)  # learning rates in [1e-3, 1]
LOG_WD_RANGE = (-12.0, 2.0)


class MLP(nnx.Module):
  """A two-layer perceptron for 8×8 digits."""

  def __init__(self, hidden: int, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.hidden(x)))


class HParams(nnx.Module):
  """The hyperparameters as an NNX module (for the ``nnx.Optimizer`` path)."""

  def __init__(self, log_lr: float, log_wd: float):
    self.log_lr = nnx.Param(jnp.asarray(log_lr, jnp.float32))
    self.log_wd = nnx.data({
        "hidden": nnx.Param(jnp.asarray(log_wd, jnp.float32)),
        "out": nnx.Param(jnp.asarray(log_wd, jnp.float32))})


def digits_splits(seed: int = 0):
  """(train, validation, test) splits of the digits, pixels scaled to [0, 1]."""
  x, y = load_digits(return_X_y=True)
  order = np.random.default_rng(seed).permutation(len(y))
  x, y = (x[order] / 16.0).astype(np.float32), y[order].astype(np.int32)
  cut = (1000, 1400)
  split = lambda a: (a[:cut[0]], a[cut[0]:cut[1]], a[cut[1]:])
  (xt, xv, xs), (yt, yv, ys) = split(x), split(y)
  return tuple((jnp.asarray(a), jnp.asarray(b))
               for a, b in ((xt, yt), (xv, yv), (xs, ys)))


def make_functions(graphdef: nnx.GraphDef):
  """``train_step`` and ``val_loss`` over the pure parameter state.

  ``hparams`` is any mapping with ``"log_lr"`` and ``"log_wd"`` (a dict, or
  the pure ``nnx.State`` of :class:`HParams`); the functions read it the same
  way in both cases.
  """

  def cross_entropy(params, batch):
    x, y = batch
    logits = nnx.merge(graphdef, params)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def train_loss(params, hparams, batch):
    penalty = sum(0.5 * jnp.exp(hparams["log_wd"][layer]) *
                  jnp.sum(params[layer]["kernel"] ** 2)
                  for layer in ("hidden", "out"))
    return cross_entropy(params, batch) + penalty

  def val_loss(params, hparams, batch):
    del hparams
    return cross_entropy(params, batch)

  step = hippojax.gradient_step(
      train_loss, learning_rate=lambda h, b: jnp.exp(h["log_lr"]))
  return step, val_loss


def _clip(hparams):
  """Keeps the log-hyperparameters in a safe box (works on dicts and States)."""
  out = dict(hparams)
  out["log_lr"] = jnp.clip(hparams["log_lr"], *LOG_LR_RANGE)
  out["log_wd"] = jax.tree.map(lambda v: jnp.clip(v, *LOG_WD_RANGE),
                               dict(hparams["log_wd"]))
  return out


def tune(outer_steps: int = 40, inner_steps: int = 10, batch_size: int = 128,
         hidden: int = 64, outer_lr: float = 0.1, log_lr0: float = -4.0,
         log_wd0: float = -6.0, seed: int = 0,
         nnx_optimizer: bool = False):
  """Runs the outer loop; returns ``(model, hparams, val_history, accuracy)``.

  ``val_history[k]`` is the validation loss after outer step ``k`` (the
  weights after ``(k+1)·inner_steps`` SGD steps); ``accuracy`` is the test
  accuracy of the tuned model.
  """
  train, val, test = digits_splits(seed)
  model = MLP(hidden, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model, nnx.Param)
  params = nnx.as_pure(state)
  step, val_loss = make_functions(graphdef)
  hyper_tx = optax.chain(
      hippojax.hypergradient(step, val_loss, method="reverse"),
      optax.adam(outer_lr))

  def draw_batches(key, train):
    """K minibatches (leading axis K) drawn with replacement."""
    idx = jax.random.randint(key, (inner_steps, batch_size), 0,
                             train[0].shape[0])
    return train[0][idx], train[1][idx]

  def advance(params, hparams, batches):
    return jax.lax.scan(lambda w, b: (step(w, hparams, b), None), params,
                        batches)[0]

  key = jax.random.key(seed)
  history = []
  if not nnx_optimizer:
    hparams = {"log_lr": jnp.asarray(log_lr0, jnp.float32),
               "log_wd": {"hidden": jnp.asarray(log_wd0, jnp.float32),
                          "out": jnp.asarray(log_wd0, jnp.float32)}}
    opt_state = hyper_tx.init(hparams)

    @jax.jit
    def outer_step(hparams, params, opt_state, key, train, val):
      batches = draw_batches(key, train)
      updates, opt_state = hyper_tx.update(
          None, opt_state, hparams, params0=params, train_batches=batches,
          val_batch=val)
      params = advance(params, hparams, batches)
      hparams = _clip(optax.apply_updates(hparams, updates))
      return hparams, params, opt_state, opt_state[0].value

    for _ in range(outer_steps):
      key, sub = jax.random.split(key)
      hparams, params, opt_state, value = outer_step(
          hparams, params, opt_state, sub, train, val)
      history.append(float(value))
  else:
    hmodel = HParams(log_lr0, log_wd0)
    hopt = nnx.Optimizer(hmodel, hyper_tx, wrt=nnx.Param)

    @nnx.jit
    def outer_step(hmodel, hopt, params, key, train, val):
      hparams = nnx.as_pure(nnx.state(hmodel, nnx.Param))
      batches = draw_batches(key, train)
      no_grads = jax.tree.map(jnp.zeros_like, nnx.state(hmodel, nnx.Param))
      # The extra keyword arguments reach hypergradient(...).update.
      hopt.update(hmodel, no_grads, params0=params, train_batches=batches,
                  val_batch=val)
      nnx.update(hmodel, _clip(nnx.as_pure(nnx.state(hmodel, nnx.Param))))
      return advance(params, hparams, batches), hopt.opt_state[0].value

    for _ in range(outer_steps):
      key, sub = jax.random.split(key)
      params, value = outer_step(hmodel, hopt, params, sub, train, val)
      history.append(float(jnp.asarray(value)))
    hparams = jax.tree.map(jnp.asarray,
                           nnx.as_pure(nnx.state(hmodel, nnx.Param)))
    hparams = {"log_lr": hparams["log_lr"], "log_wd": dict(hparams["log_wd"])}

  nnx.update(model, params)  # write the tuned weights back into the module
  logits = model(test[0])
  accuracy = float(jnp.mean(jnp.argmax(logits, -1) == test[1]))
  return model, hparams, history, accuracy


def main(outer_steps: int = 40, inner_steps: int = 10, batch_size: int = 128,
         seed: int = 0, nnx_optimizer: bool = False, verbose: bool = True):
  """Runs the example and returns the validation-loss history."""
  start = time.perf_counter()
  _, hparams, history, accuracy = tune(
      outer_steps=outer_steps, inner_steps=inner_steps, batch_size=batch_size,
      seed=seed, nnx_optimizer=nnx_optimizer)
  if verbose:
    every = max(1, outer_steps // 10)
    for k in range(0, outer_steps, every):
      print(f"outer step {k:4d}  validation loss {history[k]:.4f}")
    print(f"final validation loss {history[-1]:.4f}; test accuracy "
          f"{accuracy:.3f}; learning rate "
          f"{float(jnp.exp(hparams['log_lr'])):.4f};"
          " weight decay " + ", ".join(
              f"{k}={float(jnp.exp(v)):.2e}"
              for k, v in hparams["log_wd"].items()) +
          f"; {time.perf_counter() - start:.1f} s")
  return history


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--outer-steps", type=int, default=40)
  parser.add_argument("--inner-steps", type=int, default=10)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--nnx-optimizer", action="store_true")
  args = parser.parse_args()
  main(args.outer_steps, args.inner_steps, args.batch_size, args.seed,
       args.nnx_optimizer)
