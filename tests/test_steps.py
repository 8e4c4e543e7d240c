"""The ``train_step`` builders: update rules, Jacobian symmetry, validation.

Exact answers: the update rules written out with ``jax.grad``, and dense
Jacobians from ``jax.jacobian``.
"""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import hippojax


def test_gradient_step_rule(logistic):
  """w − η ∇_w L(w, λ, b), for a constant and a tuned learning rate."""
  p = logistic
  w = p.params + 0.3
  expected = w - 0.05 * jax.grad(p.train_loss)(w, p.theta, p.train)
  const = hippojax.gradient_step(p.train_loss, 0.05)
  tuned = hippojax.gradient_step(
      lambda w_, h, b: p.train_loss(w_, h["theta"], b),
      lambda h, b: jnp.exp(h["log_lr"]))
  np.testing.assert_allclose(const(w, p.theta, p.train), expected,
                             rtol=1e-14)
  np.testing.assert_allclose(
      tuned(w, {"theta": p.theta, "log_lr": jnp.log(0.05)}, p.train),
      expected, rtol=1e-13)


def test_gradient_step_on_pytrees_keeps_dtypes():
  """Leafwise update; each leaf keeps its dtype (float32 stays float32)."""
  loss = lambda w, h, b: jnp.sum(w["a"]**2) + h * jnp.sum(w["b"]**2)
  step = hippojax.gradient_step(loss, 0.25)
  w = {"a": jnp.ones(3, jnp.float32), "b": jnp.full((2, 2), 2.0)}
  out = step(w, jnp.asarray(2.0), None)
  assert out["a"].dtype == jnp.float32 and out["b"].dtype == jnp.float64
  np.testing.assert_allclose(out["a"], 1.0 - 0.25 * 2.0)
  np.testing.assert_allclose(out["b"], 2.0 - 0.25 * 2.0 * 2.0 * 2.0)


def test_heavy_ball_rule(ridge):
  """v ← μv − η∇L(w), w ← w + v, from a non-zero velocity."""
  step = hippojax.heavy_ball_step(ridge.train_loss, 0.1, 0.8)
  state = hippojax.HeavyBallState(ridge.params + 0.2,
                                  jnp.linspace(-1.0, 1.0, 6))
  grad = jax.grad(ridge.train_loss)(state.params, ridge.theta, ridge.train)
  velocity = 0.8 * state.velocity - 0.1 * grad
  out = step(state, ridge.theta, ridge.train)
  assert isinstance(out, hippojax.HeavyBallState)
  np.testing.assert_allclose(out.velocity, velocity, rtol=1e-14)
  np.testing.assert_allclose(out.params, state.params + velocity, rtol=1e-14)


def test_heavy_ball_init_and_tuned_rates(ridge):
  """init gives zero velocity; rates may be functions of (hparams, batch)."""
  step = hippojax.heavy_ball_step(
      ridge.train_loss, lambda h, b: 0.1 * b["scale"],
      lambda h, b: jax.nn.sigmoid(h[0]))
  state = step.init({"w": ridge.params})
  np.testing.assert_array_equal(state.velocity["w"], 0.0)
  np.testing.assert_array_equal(state.params["w"], ridge.params)
  plain = hippojax.heavy_ball_step(ridge.train_loss, 0.2,
                                   float(jax.nn.sigmoid(0.4)))
  start = hippojax.HeavyBallState(ridge.params + 0.1, jnp.ones(6))
  theta = jnp.concatenate([jnp.asarray([0.4]), ridge.theta[1:]])
  batch = dict(ridge.train, scale=2.0)
  np.testing.assert_allclose(
      step(start, theta, batch).params, plain(start, theta, ridge.train).params,
      rtol=1e-14)


def _dense_jacobian(step, state, theta, batch):
  flat, unravel = jax.flatten_util.ravel_pytree(state)
  return jax.jacobian(lambda s: jax.flatten_util.ravel_pytree(
      step(unravel(s), theta, batch))[0])(flat)


def test_jacobian_symmetry_declarations(logistic):
  """GradientStep declares (and has) a symmetric J; heavy ball does not."""
  p = logistic
  gd = hippojax.gradient_step(p.train_loss, p.lr)
  hb = hippojax.heavy_ball_step(p.train_loss, p.lr, 0.5)
  assert gd.symmetric_jacobian is True
  assert not getattr(hb, "symmetric_jacobian", False)
  jac = _dense_jacobian(gd, p.params, p.theta, p.train)
  np.testing.assert_allclose(jac, jac.T, atol=1e-14)
  np.testing.assert_allclose(
      jac, jnp.eye(6) - p.lr * jax.hessian(p.train_loss)(p.params, p.theta,
                                                         p.train), atol=1e-14)
  jac_hb = _dense_jacobian(hb, hb.init(p.params), p.theta, p.train)
  assert float(jnp.max(jnp.abs(jac_hb - jac_hb.T))) > 0.1


def test_steps_are_hashable_values(ridge):
  """Equal builders compare and hash equal (static arguments of jit)."""
  a = hippojax.gradient_step(ridge.train_loss, 0.1)
  b = hippojax.gradient_step(ridge.train_loss, 0.1)
  assert a == b and hash(a) == hash(b)
  assert a != hippojax.gradient_step(ridge.train_loss, 0.2)
  hb = hippojax.heavy_ball_step(ridge.train_loss, 0.1, 0.9)
  assert hb == hippojax.heavy_ball_step(ridge.train_loss, 0.1, 0.9)
  assert hash(hb) == hash(hippojax.heavy_ball_step(ridge.train_loss, 0.1, 0.9))

  traces = []

  def apply(step, w):
    traces.append(None)
    return step(w, ridge.theta, ridge.train)

  jitted = jax.jit(apply, static_argnums=0)
  jitted(a, ridge.params)
  jitted(b, ridge.params + 1.0)
  assert len(traces) == 1


@pytest.mark.parametrize("build, error, match", [
    (lambda: hippojax.gradient_step("loss", 0.1), TypeError,
     "loss must be callable"),
    (lambda: hippojax.gradient_step(lambda w, h, b: 0.0, "0.1"), TypeError,
     "learning_rate must be a number, a pytree"),
    (lambda: hippojax.heavy_ball_step(lambda w, h, b: 0.0, 0.1, None),
     TypeError, "momentum must be a number or a callable"),
    (lambda: hippojax.heavy_ball_step(None, 0.1, 0.9), TypeError,
     "loss must be callable"),
])
def test_invalid_builder_arguments(build, error, match):
  with pytest.raises(error, match=match):
    build()


def test_mis_shaped_rates_are_refused(ridge):
  """Per-parameter rates must broadcast to the parameters they scale."""
  step = hippojax.gradient_step(ridge.train_loss, lambda h, b: jnp.exp(h[:3]))
  with pytest.raises(ValueError, match=r"learning_rate has shape \(3,\).*"
                     r"\(6,\)"):
    step(ridge.params, ridge.theta, ridge.train)
  step = hippojax.gradient_step(ridge.train_loss, {"a": jnp.ones(6)})
  with pytest.raises(ValueError, match="structure of params"):
    step(ridge.params, ridge.theta, ridge.train)
  hb = hippojax.heavy_ball_step(ridge.train_loss, 0.1, lambda h, b: h)
  with pytest.raises(ValueError, match="momentum must be a scalar"):
    hb(hb.init(ridge.params), ridge.theta, ridge.train)
