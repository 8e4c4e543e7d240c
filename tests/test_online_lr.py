"""Tests of hippojax.hypergradient_descent (Baydin et al. 2018)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import hippojax

_X, _Y = load_digits(return_X_y=True)
DATA = (jnp.asarray(_X / 16.0, jnp.float32), jnp.asarray(_Y))
W0 = {"W": jnp.zeros((64, 10), jnp.float32), "b": jnp.zeros(10, jnp.float32)}


@jax.jit
def loss(w, batch):
  x, y = batch
  logits = x @ w["W"] + w["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train(tx, steps=100):
  """Full-batch training with ``tx``; returns the final loss and state."""

  @jax.jit
  def run(w):
    def body(carry, _):
      w, state = carry
      grads = jax.grad(loss)(w, DATA)
      updates, state = tx.update(grads, state, w)
      return (optax.apply_updates(w, updates), state), None

    (w, state), _ = jax.lax.scan(body, (w, tx.init(w)), None, length=steps)
    return loss(w, DATA), state

  return run(W0)


@functools.lru_cache(maxsize=None)
def fixed_rate_loss(factory, lr0):
  return float(train(optax.inject_hyperparams(factory)(learning_rate=lr0))[0])


@pytest.mark.parametrize("name, factory, lr0, multiplicative, beta", [
    ("sgd-HD", optax.sgd, 1e-3, False, 0.1),
    ("sgd-HD-M", optax.sgd, 1e-3, True, 0.05),
    ("adam-HD", optax.adam, 1e-4, False, 1e-4),
    ("adam-HD-M", optax.adam, 1e-4, True, 0.1),
])
def test_too_small_learning_rate_recovers(name, factory, lr0, multiplicative,
                                          beta):
  del name
  fixed_loss = fixed_rate_loss(factory, lr0)
  tx = hippojax.hypergradient_descent(
      optax.inject_hyperparams(factory)(learning_rate=lr0), hyper_lr=beta,
      multiplicative=multiplicative)
  hd_loss, state = train(tx)
  assert isinstance(state, hippojax.HypergradientDescentState)
  assert float(state.learning_rate) > 10 * lr0
  assert float(hd_loss) < 0.85 * fixed_loss
  # The wrapped optimiser used the adapted rate.
  assert float(state.inner_state.hyperparams["learning_rate"]) == float(
      state.learning_rate)
  assert int(state.count) == 100


def test_sgd_hd_is_the_papers_rule():
  """α_t = α_{t−1} + β ∇f(θ_t)·∇f(θ_{t−1}) for plain SGD."""
  beta, lr = 0.01, 0.05
  tx = hippojax.hypergradient_descent(
      optax.inject_hyperparams(optax.sgd)(learning_rate=lr), hyper_lr=beta)
  w, state, prev_g = W0, tx.init(W0), None
  grad, update = jax.jit(jax.grad(loss)), jax.jit(tx.update)
  for _ in range(4):
    g = grad(w, DATA)
    if prev_g is not None:
      lr = lr + beta * float(optax.tree.vdot(g, prev_g))
    updates, state = update(g, state, w)
    np.testing.assert_allclose(state.learning_rate, lr, rtol=1e-5)
    expected = jax.tree.map(lambda gi: -lr * gi, g)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                         atol=1e-9),
                 updates, expected)
    w, prev_g = optax.apply_updates(w, updates), g


def test_adam_direction_is_the_derivative_of_the_update():
  """For Adam d = −m̂/(√v̂+ε): the update divided by the learning rate."""
  lr = 1e-2
  tx = hippojax.hypergradient_descent(
      optax.inject_hyperparams(optax.adam)(learning_rate=lr), hyper_lr=1e-6)
  state = tx.init(W0)
  update = jax.jit(tx.update)
  g = jax.grad(loss)(W0, DATA)
  updates, state = update(g, state, W0)
  jax.tree.map(lambda d, u: np.testing.assert_allclose(d, u / lr, rtol=1e-5,
                                                       atol=1e-9),
               state.direction, updates)
  w = optax.apply_updates(W0, updates)
  g2 = jax.grad(loss)(w, DATA)
  _, state2 = update(g2, state, w)
  h = float(optax.tree.vdot(g2, state.direction))
  np.testing.assert_allclose(state2.hypergradient, h, rtol=1e-5)
  np.testing.assert_allclose(state2.learning_rate, lr - 1e-6 * h, rtol=1e-6)


def test_multiplicative_rule_and_bounds():
  beta = 0.3
  tx = hippojax.hypergradient_descent(
      optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), hyper_lr=beta,
      multiplicative=True, max_learning_rate=0.11)
  update = jax.jit(tx.update)
  g1 = {"W": jnp.ones((64, 10)), "b": jnp.ones(10)}
  _, state = update(g1, tx.init(W0), W0)
  # Same gradient again: cos = −1 (d = −g), factor 1 + β, capped at 0.11.
  _, state = update(g1, state, W0)
  np.testing.assert_allclose(state.learning_rate, 0.11, rtol=1e-6)
  # Opposite gradient: factor 1 − β.
  g2 = jax.tree.map(jnp.negative, g1)
  _, state = update(g2, state, W0)
  np.testing.assert_allclose(state.learning_rate, 0.11 * (1 - beta),
                             rtol=1e-5)


def test_additive_rule_is_clipped_at_min_and_survives_nonfinite():
  tx = hippojax.hypergradient_descent(
      optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), hyper_lr=100.0,
      min_learning_rate=1e-4)
  update = jax.jit(tx.update)
  g = {"W": jnp.ones((64, 10)), "b": jnp.ones(10)}
  _, state = update(g, tx.init(W0), W0)
  _, state = update(jax.tree.map(jnp.negative, g), state, W0)
  np.testing.assert_allclose(state.learning_rate, 1e-4, rtol=1e-6)
  bad = jax.tree.map(lambda x: x * jnp.nan, g)
  _, state = update(bad, state, W0)
  assert float(state.learning_rate) == pytest.approx(1e-4)
  assert float(state.hypergradient) == 0.0


def test_validation():
  sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
  with pytest.raises(ValueError, match="hyper_lr"):
    hippojax.hypergradient_descent(sgd, hyper_lr=0.0)
  with pytest.raises(ValueError, match="multiplicative"):
    hippojax.hypergradient_descent(sgd, hyper_lr=1.5, multiplicative=True)
  with pytest.raises(ValueError, match="min_learning_rate"):
    hippojax.hypergradient_descent(sgd, hyper_lr=0.1, min_learning_rate=-1.0)
  with pytest.raises(TypeError, match="inject_hyperparams"):
    hippojax.hypergradient_descent(lambda: None, hyper_lr=0.1)
  with pytest.raises(TypeError, match="inject_hyperparams"):
    hippojax.hypergradient_descent(optax.sgd(0.1), hyper_lr=0.1).init(W0)
  with pytest.raises(ValueError, match="'lr'.*learning_rate"):
    hippojax.hypergradient_descent(sgd, hyper_lr=0.1, hyperparam="lr").init(W0)
  scheduled = optax.inject_hyperparams(optax.sgd)(
      learning_rate=optax.linear_schedule(0.1, 0.01, 10))
  with pytest.raises(ValueError, match="schedule"):
    hippojax.hypergradient_descent(scheduled, hyper_lr=0.1).init(W0)


def test_no_recompilation_and_jit_matches_eager():
  tx = hippojax.hypergradient_descent(
      optax.inject_hyperparams(optax.adam)(learning_rate=1e-3), hyper_lr=1e-5)
  traces = []

  def step(w, state):
    traces.append(None)
    updates, state = tx.update(jax.grad(loss)(w, DATA), state, w)
    return optax.apply_updates(w, updates), state

  jitted = jax.jit(step)
  w, state = W0, tx.init(W0)
  we, se = W0, tx.init(W0)
  for _ in range(3):
    w, state = jitted(w, state)
    we, se = step(we, se)
  assert len(traces) == 1 + 3  # one trace, three eager calls
  np.testing.assert_allclose(state.learning_rate, se.learning_rate, rtol=1e-5)
