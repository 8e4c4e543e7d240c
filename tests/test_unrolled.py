"""Unrolled hypergradients (``reverse``, ``forward``) against exact answers.

Exact answers: finite differences of the unrolled validation loss
(``jax.test_util.check_grads``) and ``jax.grad`` through a plain Python loop
of ``train_step`` calls.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import hippojax


def _loop_objective(step, val_loss, hparams, params0, batches, val_batch):
  """L_val(w_T) with w_T from a plain Python loop over the T batches."""
  num_steps = jax.tree.leaves(batches)[0].shape[0]
  w = params0
  for t in range(num_steps):
    w = step(w, hparams, jax.tree.map(lambda x, t=t: x[t], batches))
  return val_loss(w, hparams, val_batch)


_loop_value = jax.jit(_loop_objective, static_argnums=(0, 1))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _loop_grads(step, val_loss, hparams, params0, batches, val_batch):
  """(value, d/dλ, d/dw0) of :func:`_loop_objective` by ``jax.grad``."""
  objective = lambda h, w0: _loop_objective(step, val_loss, h, w0, batches,
                                            val_batch)
  value, (g_h, g_w) = jax.value_and_grad(objective, argnums=(0, 1))(hparams,
                                                                     params0)
  return value, g_h, g_w


def test_reverse_against_finite_differences(logistic):
  """check_grads (reverse mode) of a custom_vjp whose backward is reverse."""
  p = logistic
  batches = p.batches(5)
  w0 = jnp.zeros_like(p.params)

  @jax.custom_vjp
  def objective(theta):
    return _loop_value(p.step, p.val_loss, theta, w0, batches, p.val)

  def fwd(theta):
    return objective(theta), theta

  def bwd(theta, g):
    hg = hippojax.reverse(p.step, p.val_loss, theta, w0, batches, p.val)
    return (g * hg.grad,)

  objective.defvjp(fwd, bwd)
  check_grads(objective, (p.theta,), order=1, modes=["rev"])
  # The check can fail: a hypergradient off by 1% is caught.
  objective.defvjp(fwd, lambda theta, g: (1.01 * bwd(theta, g)[0],))
  with pytest.raises(AssertionError):
    check_grads(objective, (p.theta,), order=1, modes=["rev"])


def test_reverse_and_forward_match_python_loop(tree_ridge, helpers):
  """Pytree params and hparams: jax.grad through a Python loop."""
  p = tree_ridge
  batches = p.batches(6)
  w0 = jax.tree.map(jnp.zeros_like, p.params)
  value, g_h, g_w = _loop_grads(p.step, p.val_loss, p.theta, w0, batches,
                                p.val)
  rev = hippojax.reverse(p.step, p.val_loss, p.theta, w0, batches, p.val)
  fwd = hippojax.forward(p.step, p.val_loss, p.theta, w0, batches, p.val)
  for hg in (rev, fwd):
    helpers.assert_tree_close(hg.grad, g_h, rtol=1e-11)
    np.testing.assert_allclose(hg.value, value, rtol=1e-13)
    assert int(hg.info.num_iters) == 6
    assert bool(hg.info.converged) and float(hg.info.residual) == 0.0
  helpers.assert_tree_close(rev.info.solution, g_w, rtol=1e-11)
  assert fwd.info.solution is None


@pytest.mark.parametrize("remat", [True, 3, 10])
def test_remat_equals_plain(ridge, helpers, remat):
  """Rematerialised reverse mode (T = 10; blocks of ⌈√T⌉, 3 and T) is exact."""
  batches = ridge.batches(10)
  w0 = jnp.zeros_like(ridge.params)
  args = (ridge.step, ridge.val_loss, ridge.theta, w0, batches, ridge.val)
  plain = hippojax.reverse(*args)
  again = hippojax.reverse(*args, remat=remat)
  np.testing.assert_allclose(again.grad, plain.grad, rtol=1e-12)
  np.testing.assert_allclose(again.info.solution, plain.info.solution,
                             rtol=1e-12)
  np.testing.assert_allclose(again.value, plain.value, rtol=1e-14)


def _log_lr(h, b):
  del b
  return jnp.exp(h["log_lr"])


def _scheduled_lr(h, b):
  """Per-step schedule, indexed by the step counter carried in the batch."""
  return jnp.exp(h["log_lrs"][b["t"]])


def _sigmoid_mu(h, b):
  del b
  return jax.nn.sigmoid(h["logit_mu"])


def _loss(w, h, b):
  return (0.5 * jnp.mean((b["x"] @ w - b["y"])**2) +
          0.5 * jnp.sum(jnp.exp(h["log_l2"]) * w**2))


def _val(w, h, b):
  del h
  return 0.5 * jnp.mean((b["x"] @ w - b["y"])**2)


def _state_val(state, h, b):
  return _val(state.params, h, b)


def _forward_reverse_case(name, ridge, num_steps=5):
  batches = ridge.batches(num_steps)
  w0 = jnp.zeros_like(ridge.params)
  hparams = {"log_l2": ridge.theta, "log_lr": jnp.log(ridge.lr)}
  if name == "learning_rate":
    return gradient_step_lr, _val, hparams, w0, batches
  if name == "schedule":
    batches = dict(batches, t=jnp.arange(num_steps))
    hparams = {"log_l2": ridge.theta,
               "log_lrs": jnp.log(ridge.lr) - 0.1 * jnp.arange(num_steps)}
    return gradient_step_schedule, _val, hparams, w0, batches
  hparams["logit_mu"] = jnp.asarray(0.3)
  return heavy_ball, _state_val, hparams, heavy_ball.init(w0), batches


gradient_step_lr = hippojax.gradient_step(_loss, _log_lr)
gradient_step_schedule = hippojax.gradient_step(_loss, _scheduled_lr)
heavy_ball = hippojax.heavy_ball_step(_loss, _log_lr, _sigmoid_mu)


@pytest.mark.parametrize("case", ["learning_rate", "schedule", "heavy_ball"])
def test_forward_equals_reverse_with_optimiser_hparams(ridge, helpers, case):
  """Learning rate, per-step schedule, momentum: forward = reverse = loop."""
  step, val, hparams, w0, batches = _forward_reverse_case(case, ridge)
  rev = hippojax.reverse(step, val, hparams, w0, batches, ridge.val)
  fwd = hippojax.forward(step, val, hparams, w0, batches, ridge.val)
  helpers.assert_tree_close(fwd.grad, rev.grad, rtol=1e-12, atol=1e-17)
  np.testing.assert_allclose(fwd.value, rev.value, rtol=1e-14)
  value, g_h, _ = _loop_grads(step, val, hparams, w0, batches, ridge.val)
  helpers.assert_tree_close(rev.grad, g_h, rtol=1e-11, atol=1e-17)
  np.testing.assert_allclose(rev.value, value, rtol=1e-13)
  # The optimiser's hyperparameters do matter when unrolled.
  for key in set(hparams) - {"log_l2"}:
    assert float(jnp.linalg.norm(rev.grad[key])) > 1e-4
  if case == "schedule":
    # Step t's learning rate reaches w_T, so every entry has its own value.
    lrs_grad = np.asarray(rev.grad["log_lrs"])
    assert len(set(np.round(lrs_grad, 12))) == lrs_grad.size


def test_zero_steps(ridge_direct):
  """T = 0: reverse/forward/drmad return ∇_λ L_val(w0), the direct term."""
  p = ridge_direct
  w0 = p.params + 0.1
  batches = jax.tree.map(lambda x: x[:0], p.batches(1))
  direct = 0.2 * jnp.exp(2 * p.theta)
  results = [
      hippojax.reverse(p.step, p.val_loss, p.theta, w0, batches, p.val),
      hippojax.forward(p.step, p.val_loss, p.theta, w0, batches, p.val),
      hippojax.drmad(p.step, p.val_loss, p.theta, w0, w0, batches, p.val),
  ]
  for hg in results:
    np.testing.assert_allclose(hg.grad, direct, rtol=1e-13)
    np.testing.assert_allclose(hg.value, p.val_loss(w0, p.theta, p.val),
                               rtol=1e-14)
    assert int(hg.info.num_iters) == 0


def test_num_steps_without_batch_leaves(ridge, helpers):
  """train_batches=None with num_steps=T equals T copies of the full batch."""
  data = ridge.train

  def full_batch_step(w, theta, batch):
    del batch
    return ridge.step(w, theta, data)

  w0 = jnp.zeros_like(ridge.params)
  copies = jax.tree.map(lambda x: jnp.stack([x] * 4), data)
  expected = hippojax.reverse(ridge.step, ridge.val_loss, ridge.theta, w0,
                              copies, ridge.val)
  for method in (hippojax.reverse, hippojax.forward):
    hg = method(full_batch_step, ridge.val_loss, ridge.theta, w0, None,
                ridge.val, num_steps=4)
    np.testing.assert_allclose(hg.grad, expected.grad, rtol=1e-12)
    assert int(hg.info.num_iters) == 4


@pytest.mark.parametrize("remat", [False, True])
def test_same_batch_equals_stacked_batches(ridge, helpers, remat):
  """same_batch=True with num_steps=T equals T stacked copies of the batch."""
  T = 7
  stacked = jax.tree.map(lambda a: jnp.broadcast_to(a, (T,) + a.shape),
                         ridge.train)
  w0 = jnp.zeros_like(ridge.params)
  w_t = jax.lax.fori_loop(0, T, lambda _, w: ridge.step(w, ridge.theta,
                                                        ridge.train), w0)
  for method, extra in ((hippojax.reverse, {"remat": remat}),
                        (hippojax.forward, {}),
                        (lambda *a, **k: hippojax.drmad(a[0], a[1], a[2], a[3],
                                                        w_t, *a[4:], **k), {})):
    want = method(ridge.step, ridge.val_loss, ridge.theta, w0, stacked,
                  ridge.val, **extra)
    got = method(ridge.step, ridge.val_loss, ridge.theta, w0, ridge.train,
                 ridge.val, num_steps=T, same_batch=True, **extra)
    helpers.assert_tree_close(got.grad, want.grad, rtol=1e-12)
    np.testing.assert_allclose(got.value, want.value, rtol=1e-13)


def test_same_batch_needs_num_steps(ridge):
  with pytest.raises(ValueError, match="num_steps"):
    hippojax.reverse(ridge.step, ridge.val_loss, ridge.theta, ridge.params,
                     ridge.train, ridge.val, same_batch=True)
