"""Every algorithm under ``jax.jit`` and ``jax.vmap``, without recompiling,
and in float32.

Exact answers: the same algorithm called eagerly (for ``jit``) or in a Python
loop (for ``vmap``), and the float64 result (for float32).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hippojax
from hippojax._src import implicit
from hippojax._src import one_step
from hippojax._src import unrolled

METHODS = ("t1t2", "ift", "hoag", "implicit_hypergrad", "reverse", "forward",
           "drmad")
IMPLICIT = ("ift", "hoag", "implicit_hypergrad")
# The library's own jitted implementation behind each method.
IMPL = {"t1t2": one_step._t1t2, "ift": implicit._implicit,
        "hoag": implicit._implicit, "implicit_hypergrad": implicit._implicit,
        "reverse": unrolled._reverse, "forward": unrolled._forward,
        "drmad": unrolled._drmad}
NUM_STEPS = 5


def _runner(name, step, val_loss):
  """``run(theta, w, train, val) -> HyperGrad`` for one method.

  ``train`` is one batch for the implicit methods and ``t1t2``, and stacked
  batches (leading axis T) for the unrolled ones; DrMAD's ``paramsT`` is
  taken as ``w / 2``.
  """
  def run(theta, w, train, val):
    args = (step, val_loss, theta, w, train, val)
    if name == "t1t2":
      return hippojax.t1t2(*args)
    if name == "ift":
      return hippojax.ift(*args, num_iters=30)
    if name == "hoag":
      return hippojax.hoag(*args, tol=1e-10)
    if name == "implicit_hypergrad":
      return hippojax.implicit_hypergrad(
          *args, solver=hippojax.BiCGStab(tol=1e-10))
    if name == "reverse":
      return hippojax.reverse(*args)
    if name == "forward":
      return hippojax.forward(*args)
    return hippojax.drmad(step, val_loss, theta, w, w / 2, train, val)

  return run


def _inputs(name, p, seed=0):
  """(theta, w, train, val) for method ``name`` on problem ``p``."""
  train = p.train if name in IMPLICIT + ("t1t2",) else p.batches(
      NUM_STEPS, seed=seed)
  return p.theta, p.params, train, p.val


def _other_inputs(name, p):
  """Different values with the same shapes and dtypes."""
  theta, w, train, val = _inputs(name, p, seed=1)
  return theta - 0.3, w * 1.1, train, jax.tree.map(lambda x: x * 0.9, val)


@pytest.mark.parametrize("name", METHODS)
def test_jit_matches_eager_and_does_not_recompile(ridge, helpers, name):
  """jax.jit gives the eager result; new values, same shapes: no retrace."""
  run = _runner(name, ridge.step, ridge.val_loss)
  traces = []

  @jax.jit
  def traced(*args):
    traces.append(None)
    return run(*args)

  eager = run(*_inputs(name, ridge))
  jitted = traced(*_inputs(name, ridge))
  helpers.assert_tree_close(jitted, eager, rtol=1e-10, atol=1e-15)
  second = traced(*_other_inputs(name, ridge))
  assert len(traces) == 1
  assert traced._cache_size() == 1
  assert not np.allclose(jitted.grad, second.grad)
  helpers.assert_tree_close(second, run(*_other_inputs(name, ridge)),
                            rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("name", METHODS)
def test_library_impl_compiles_once(ridge, name):
  """Eager calls compile the library's jitted impl once (equal steps too)."""
  run = _runner(name, ridge.step, ridge.val_loss)
  impl = IMPL[name]
  run(*_inputs(name, ridge))
  size = impl._cache_size()
  run(*_other_inputs(name, ridge))
  fresh_step = hippojax.gradient_step(ridge.train_loss, ridge.lr)
  assert fresh_step == ridge.step and fresh_step is not ridge.step
  _runner(name, fresh_step, ridge.val_loss)(*_other_inputs(name, ridge))
  assert impl._cache_size() == size


@pytest.mark.parametrize("name", METHODS)
def test_vmap_over_hparams(ridge, helpers, name):
  """jax.vmap over a batch of hyperparameters equals a Python loop."""
  run = _runner(name, ridge.step, ridge.val_loss)
  _, w, train, val = _inputs(name, ridge)
  thetas = ridge.theta + jnp.asarray([[0.0], [0.5], [-0.7]])
  if name in IMPLICIT:
    # Each hypergradient at its own inner solution w*(θ).
    ws = jnp.stack([ridge.solution(t) for t in thetas])
    batched = jax.vmap(run, in_axes=(0, 0, None, None))(thetas, ws, train,
                                                        val)
  else:
    ws = jnp.stack([w] * len(thetas))
    batched = jax.vmap(run, in_axes=(0, None, None, None))(thetas, w, train,
                                                           val)
  looped = [run(t, w_, train, val) for t, w_ in zip(thetas, ws)]
  expected = jax.tree.map(lambda *xs: jnp.stack(xs), *looped)
  helpers.assert_tree_close(batched, expected, rtol=1e-10, atol=1e-15)
  assert not np.allclose(expected.grad[0], expected.grad[1])
  if name in IMPLICIT:
    # And each is the closed-form answer (ift: to its 31-term truncation).
    tol = 1e-4 if name == "ift" else 1e-7
    for t, g in zip(thetas, batched.grad):
      exact = jax.grad(lambda th: ridge.val_loss(ridge.solution(th), th,
                                                 ridge.val))(t)
      assert helpers.rel_err(g, exact) <= tol


@pytest.mark.parametrize("name", METHODS)
def test_float32(helpers, name):
  """float32 params, hparams and data: float32 grad and value, near float64."""
  p32 = helpers.make_ridge(dtype=jnp.float32)
  p64 = helpers.make_ridge(dtype=jnp.float64)
  hg = _runner(name, p32.step, p32.val_loss)(*_inputs(name, p32))
  ref = _runner(name, p64.step, p64.val_loss)(*_inputs(name, p64))
  assert hg.grad.dtype == jnp.float32
  assert hg.value.dtype == jnp.float32
  assert hg.info.residual.dtype == jnp.float32
  for leaf in jax.tree.leaves(hg.info.solution):
    assert leaf.dtype == jnp.float32
  assert helpers.rel_err(hg.grad, ref.grad) <= 1e-3
  np.testing.assert_allclose(hg.value, ref.value, rtol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_grad_keeps_hparams_dtype(ridge, name):
  """float32 hparams with float64 params and data: the grad stays float32."""
  run = _runner(name, ridge.step, ridge.val_loss)
  theta, w, train, val = _inputs(name, ridge)
  hg = run(theta.astype(jnp.float32), w, train, val)
  assert hg.grad.dtype == jnp.float32
  ref = run(theta, w, train, val)
  np.testing.assert_allclose(hg.grad, ref.grad, rtol=1e-4, atol=1e-9)


def test_vmap_tree_hparams(tree_ridge, helpers):
  """vmap of hoag over pytree hyperparameters and their inner solutions."""
  p = tree_ridge
  offsets = jnp.asarray([0.0, 0.4])
  thetas = jax.vmap(lambda o: jax.tree.map(lambda x: x + o, p.theta))(offsets)
  ws = jax.vmap(p.solution)(thetas)
  run = lambda th, w: hippojax.hoag(p.step, p.val_loss, th, w, p.train, p.val,
                                    tol=1e-11).grad
  batched = jax.vmap(run)(thetas, ws)
  for i in range(len(offsets)):
    theta = jax.tree.map(lambda x, i=i: x[i], thetas)
    exact = jax.grad(lambda h: p.val_loss(p.solution(h), h, p.val))(theta)
    assert helpers.rel_err(jax.tree.map(lambda x, i=i: x[i], batched),
                           exact) <= 1e-8
