"""Tests of hippojax.hypergradient, the optax transform."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hippojax
from hippojax._src.transform import HypergradientState
from hippojax._src.transform import hypergradient

N, D = 40, 5
THETA_MAX = 2.0


def _data(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(2 * N, D))
  w_true = rng.normal(size=D)
  y = x @ w_true + 0.5 * rng.normal(size=2 * N)
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  return (x[:N], y[:N]), (x[N:], y[N:])


def train_loss(w, theta, batch):
  x, y = batch
  return 0.5 * jnp.mean((x @ w - y) ** 2) + 0.5 * jnp.sum(jnp.exp(theta) * w**2)


def val_loss(w, theta, batch):
  del theta
  x, y = batch
  return 0.5 * jnp.mean((x @ w - y) ** 2)


def exact_w(theta, batch):
  x, y = batch
  a = x.T @ x / x.shape[0] + jnp.diag(jnp.exp(theta))
  return jnp.linalg.solve(a, x.T @ y / x.shape[0])


TRAIN, VAL = _data()
_CURV = float(np.linalg.eigvalsh(np.asarray(TRAIN[0].T @ TRAIN[0]) / N).max())
STEP = hippojax.gradient_step(train_loss,
                              learning_rate=1.0 / (_CURV + np.exp(THETA_MAX)))
THETA0 = jnp.full(D, -1.0, jnp.float32)


def exact_hypergrad(theta):
  return jax.grad(lambda t: val_loss(exact_w(t, TRAIN), t, VAL))(theta)


def _outer_step(tx, inner_steps=200):
  """One jitted outer step: K inner steps, hypergradient, outer update."""

  def outer(theta, w, state, train, val):
    w = jax.lax.fori_loop(0, inner_steps, lambda _, w: STEP(w, theta, train),
                          w)
    updates, state = tx.update(None, state, theta, inner_params=w,
                               train_batch=train, val_batch=val)
    theta = jnp.clip(optax.apply_updates(theta, updates), -6.0, THETA_MAX)
    return theta, w, state

  return outer


# ------------------------------------------------------------------ validation


def test_unknown_method_lists_choices():
  with pytest.raises(ValueError, match="'t1t2', 'ift', 'hoag', 'implicit'"):
    hypergradient(STEP, val_loss, method="newton")


def test_unknown_option_names_itself():
  with pytest.raises(TypeError, match="maxiterations"):
    hypergradient(STEP, val_loss, method="hoag", maxiterations=3)
  with pytest.raises(TypeError, match="num_iters.*options of 't1t2': none"):
    hypergradient(STEP, val_loss, method="t1t2", num_iters=3)


@pytest.mark.parametrize("method, options, match", [
    ("hoag", dict(tol=0.0), "tol"),
    ("hoag", dict(decay=1.5), "decay"),
    ("hoag", dict(tol=1e-4, min_tol=1e-3), "min_tol"),
    ("hoag", dict(maxiter=0), "maxiter"),
    ("ift", dict(num_iters=-1), "num_iters"),
    ("implicit", dict(solver="lu"), "solver"),
    ("reverse", dict(remat=0), "remat"),
    ("hoag", dict(symmetric="yes"), "symmetric"),
])
def test_invalid_option_values(method, options, match):
  with pytest.raises((TypeError, ValueError), match=match):
    hypergradient(STEP, val_loss, method=method, **options)


def test_non_callable():
  with pytest.raises(TypeError, match="val_loss"):
    hypergradient(STEP, 3.0)


@pytest.mark.parametrize("method, missing", [
    ("hoag", "inner_params"),
    ("t1t2", "inner_params"),
    ("reverse", "params0, train_batches"),
    ("drmad", "inner_params, params0, train_batches"),
])
def test_missing_extra_args_are_named(method, missing):
  tx = hypergradient(STEP, val_loss, method=method)
  state = tx.init(THETA0)
  with pytest.raises(TypeError,
                     match=f"missing the keyword argument.*{missing}"):
    tx.update(None, state, THETA0, train_batch=TRAIN, val_batch=VAL)


def test_missing_params_is_named():
  tx = hypergradient(STEP, val_loss, method="t1t2")
  with pytest.raises(TypeError, match="params"):
    tx.update(None, tx.init(THETA0), inner_params=jnp.zeros(D))


def test_warm_start_structure_and_shape_mismatch():
  tx = hypergradient(STEP, val_loss, method="hoag",
                     inner_params_like={"w": jnp.zeros(D)})
  with pytest.raises(ValueError, match="inner_params_like"):
    tx.update(None, tx.init(THETA0), THETA0, inner_params=jnp.zeros(D),
              train_batch=TRAIN, val_batch=VAL)
  tx = hypergradient(STEP, val_loss, method="hoag",
                     inner_params_like=jnp.zeros(D + 1))
  with pytest.raises(ValueError, match=r"shape \(5,\).*shape \(6,\)"):
    tx.update(None, tx.init(THETA0), THETA0, inner_params=jnp.zeros(D),
              train_batch=TRAIN, val_batch=VAL)


@pytest.mark.parametrize("method", ["hoag", "implicit"])
def test_warm_start_template_dtype_is_cast(method):
  """A float64 template for float32 weights (or vice versa) still works."""
  w = exact_w(THETA0, TRAIN).astype(jnp.float32)
  like = np.zeros(D, np.float64)  # NumPy keeps float64 without x64 too
  tx = hypergradient(STEP, val_loss, method=method, inner_params_like=like)
  state = tx.init(THETA0)
  g, state = jax.jit(tx.update)(None, state, THETA0, inner_params=w,
                                train_batch=TRAIN, val_batch=VAL)
  expected = jax.eval_shape(lambda: jnp.asarray(like)).dtype
  assert state.warm_start.dtype == expected
  assert bool(jnp.all(jnp.isfinite(g))) and int(state.num_refused) == 0


# ----------------------------------------------------------------- correctness


def test_state_fields_and_init():
  w = jnp.zeros(D)
  tx = hypergradient(STEP, val_loss, method="hoag", inner_params_like=w)
  state = tx.init(THETA0)
  assert isinstance(state, HypergradientState)
  assert int(state.count) == 0 and int(state.num_refused) == 0
  assert float(state.tol) == pytest.approx(1e-3)
  assert bool(jnp.isnan(state.value)) and not bool(state.converged)
  assert state.warm_start.shape == (D,)
  # Without shapes there is no warm start, but the same state class.
  cold = hypergradient(STEP, val_loss, method="hoag").init(THETA0)
  assert type(cold) is type(state) and cold.warm_start is None
  assert hypergradient(STEP, val_loss, method="t1t2").init(THETA0).tol == 0


@pytest.mark.parametrize("method, options, fn", [
    ("t1t2", {}, lambda *a: hippojax.t1t2(*a)),
    ("ift", dict(num_iters=30), lambda *a: hippojax.ift(*a, num_iters=30)),
    ("implicit", dict(solver=hippojax.GMRES(tol=1e-5)),
     lambda *a: hippojax.implicit_hypergrad(
         *a, solver=hippojax.GMRES(tol=1e-5))),
    ("hoag", dict(tol=1e-5), lambda *a: hippojax.hoag(*a, tol=1e-5)),
])
def test_matches_pure_function_and_adds_updates(method, options, fn):
  w = exact_w(THETA0, TRAIN)
  tx = hypergradient(STEP, val_loss, method=method, **options)
  state = tx.init(THETA0)
  g, new_state = jax.jit(tx.update)(None, state, THETA0, inner_params=w,
                                    train_batch=TRAIN, val_batch=VAL)
  expected = fn(STEP, val_loss, THETA0, w, TRAIN, VAL)
  np.testing.assert_allclose(g, expected.grad, rtol=1e-4, atol=1e-7)
  assert g.dtype == THETA0.dtype
  assert int(new_state.count) == 1
  np.testing.assert_allclose(new_state.value, expected.value, rtol=1e-5)
  assert int(new_state.num_iters) == int(expected.info.num_iters)
  incoming = jnp.arange(D, dtype=jnp.float32)
  g2, _ = tx.update(incoming, state, THETA0, inner_params=w,
                    train_batch=TRAIN, val_batch=VAL)
  np.testing.assert_allclose(g2, g + incoming, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["hoag", "ift"])
def test_implicit_methods_match_closed_form(method):
  w = exact_w(THETA0, TRAIN)
  options = dict(tol=1e-5) if method == "hoag" else dict(num_iters=300)
  tx = hypergradient(STEP, val_loss, method=method, **options)
  g, _ = tx.update(None, tx.init(THETA0), THETA0, inner_params=w,
                   train_batch=TRAIN, val_batch=VAL)
  np.testing.assert_allclose(g, exact_hypergrad(THETA0), rtol=1e-2, atol=1e-5)


def test_unrolled_methods_match_pure_functions():
  batches = jax.tree.map(lambda x: jnp.stack([x] * 6), TRAIN)
  w0 = jnp.zeros(D)
  w_t = jax.lax.fori_loop(0, 6, lambda _, w: STEP(w, THETA0, TRAIN), w0)
  for method, fn in [
      ("reverse", lambda: hippojax.reverse(STEP, val_loss, THETA0, w0,
                                           batches, VAL)),
      ("forward", lambda: hippojax.forward(STEP, val_loss, THETA0, w0,
                                           batches, VAL)),
      ("drmad", lambda: hippojax.drmad(STEP, val_loss, THETA0, w0, w_t,
                                       batches, VAL)),
  ]:
    tx = hypergradient(STEP, val_loss, method=method)
    g, state = tx.update(None, tx.init(THETA0), THETA0, params0=w0,
                         inner_params=w_t, train_batches=batches,
                         val_batch=VAL)
    np.testing.assert_allclose(g, fn().grad, rtol=1e-5, atol=1e-8)
    assert int(state.num_iters) == 6


def test_hoag_tolerance_schedule_and_floor():
  w = exact_w(THETA0, TRAIN)
  tx = hypergradient(STEP, val_loss, method="hoag", tol=1e-2, decay=0.5,
                     min_tol=1e-4)
  update = jax.jit(tx.update)
  state = tx.init(THETA0)
  tols = []
  for _ in range(10):
    _, state = update(None, state, THETA0, inner_params=w, train_batch=TRAIN,
                      val_batch=VAL)
    tols.append(float(state.tol))
  expected = [max(1e-2 * 0.5**k, 1e-4) for k in range(1, 11)]
  np.testing.assert_allclose(tols, expected, rtol=1e-5)
  assert bool(state.converged) and float(state.residual) <= 1e-4 * 1.0001


def test_hoag_warm_start_saves_iterations():
  w = exact_w(THETA0, TRAIN)
  kw = dict(inner_params=w, train_batch=TRAIN, val_batch=VAL)
  warm = hypergradient(STEP, val_loss, method="hoag", tol=1e-4, decay=1.0,
                       inner_params_like=w)
  cold = hypergradient(STEP, val_loss, method="hoag", tol=1e-4, decay=1.0)
  s_warm, s_cold = warm.init(THETA0), cold.init(THETA0)
  _, s_warm = warm.update(None, s_warm, THETA0, **kw)
  _, s_cold = cold.update(None, s_cold, THETA0, **kw)
  first = int(s_warm.num_iters)
  assert first == int(s_cold.num_iters) > 1
  np.testing.assert_array_equal(s_warm.warm_start != 0, True)
  _, s_warm = warm.update(None, s_warm, THETA0, **kw)
  _, s_cold = cold.update(None, s_cold, THETA0, **kw)
  assert int(s_warm.num_iters) == 0  # started at the solution
  assert int(s_cold.num_iters) == first


def test_nonfinite_hypergradient_is_refused():
  w = exact_w(THETA0, TRAIN)
  tx = optax.chain(
      hypergradient(STEP, val_loss, method="hoag", inner_params_like=w),
      optax.adam(0.1))
  state = tx.init(THETA0)
  update = jax.jit(tx.update)
  theta = THETA0
  _, state = update(None, state, theta, inner_params=w, train_batch=TRAIN,
                    val_batch=VAL)
  warm = state[0].warm_start
  bad_val = (VAL[0].at[0, 0].set(jnp.nan), VAL[1])
  updates, state = update(None, state, theta, inner_params=w,
                          train_batch=TRAIN, val_batch=bad_val)
  theta = optax.apply_updates(theta, updates)
  assert bool(jnp.all(jnp.isfinite(theta)))
  assert int(state[0].num_refused) == 1 and int(state[0].count) == 2
  assert bool(jnp.isnan(state[0].value)) and not bool(state[0].converged)
  # A refused solve is not reused: the warm start resets to zero (it was not
  # zero before) and the damping rises from 0 for the next solve.
  assert float(jnp.linalg.norm(warm)) > 0
  np.testing.assert_array_equal(state[0].warm_start, jnp.zeros_like(warm))
  assert float(state[0].damping) > 0
  # The hypergradient part of the update is zero; incoming updates pass.
  hg = hypergradient(STEP, val_loss, method="t1t2")
  u, s = hg.update(jnp.ones(D), hg.init(THETA0), THETA0, inner_params=w,
                   train_batch=TRAIN, val_batch=bad_val)
  np.testing.assert_array_equal(u, jnp.ones(D))
  assert int(s.num_refused) == 1
  # Inner parameters that went non-finite are refused too.
  u, s = hg.update(None, hg.init(THETA0), THETA0,
                   inner_params=jnp.full(D, jnp.inf), train_batch=TRAIN,
                   val_batch=VAL)
  np.testing.assert_array_equal(u, jnp.zeros(D))
  assert int(s.num_refused) == 1


# ----------------------------------------------------- outer loop, jit, vmap


def test_chain_with_adam_reaches_the_optimum_of_a_scalar_problem():
  loss = lambda w, lam, b: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
  step = hippojax.gradient_step(loss, learning_rate=0.1)
  val = lambda w, lam, b: jnp.sum((w - 0.5) ** 2)  # best at λ = 1
  w = jnp.zeros(3)
  tx = optax.chain(hypergradient(step, val, method="hoag",
                                 inner_params_like=w), optax.adam(0.05))
  lam = jnp.asarray(0.1, jnp.float32)
  state = tx.init(lam)

  @jax.jit
  def outer(lam, w, state):
    w = jax.lax.fori_loop(0, 50, lambda _, w: step(w, lam, None), w)
    updates, state = tx.update(None, state, lam, inner_params=w)
    return optax.apply_updates(lam, updates), w, state

  for _ in range(150):
    lam, w, state = outer(lam, w, state)
  assert float(lam) == pytest.approx(1.0, abs=2e-2)
  assert int(state[0].num_refused) == 0


@pytest.mark.parametrize("method", ["hoag", "t1t2", "ift"])
def test_outer_loop_improves_validation_loss(method):
  tx = optax.chain(
      hypergradient(STEP, val_loss, method=method,
                    **({"inner_params_like": jnp.zeros(D)}
                       if method == "hoag" else {})),
      optax.adam(0.1))
  outer = jax.jit(_outer_step(tx))
  theta, w, state = THETA0, jnp.zeros(D), tx.init(THETA0)
  theta, w, state = outer(theta, w, state, TRAIN, VAL)
  first = float(state[0].value)
  for _ in range(30):
    theta, w, state = outer(theta, w, state, TRAIN, VAL)
  assert float(state[0].value) < first - 1e-3
  final = val_loss(exact_w(theta, TRAIN), theta, VAL)
  assert float(final) < float(val_loss(exact_w(THETA0, TRAIN), THETA0, VAL))


@pytest.mark.parametrize("method", ["hoag", "implicit", "reverse"])
def test_whole_outer_step_compiles_once(method):
  traces = []
  options = {"inner_params_like": jnp.zeros(D)} if method != "reverse" else {}
  tx = optax.chain(hypergradient(STEP, val_loss, method=method, **options),
                   optax.adam(0.1))
  batches = jax.tree.map(lambda x: jnp.stack([x] * 4), TRAIN)

  @jax.jit
  def outer(theta, w, state, train, val):
    traces.append(None)  # runs only while tracing
    w = jax.lax.fori_loop(0, 20, lambda _, w: STEP(w, theta, train), w)
    updates, state = tx.update(None, state, theta, inner_params=w,
                               params0=w, train_batches=batches,
                               train_batch=train, val_batch=val)
    return optax.apply_updates(theta, updates), w, state

  theta, w, state = THETA0, jnp.zeros(D), tx.init(THETA0)
  for k in range(4):
    # New data of the same shapes must not retrace either.
    train = jax.tree.map(lambda x: x * (1.0 + 0.01 * k), TRAIN)
    theta, w, state = outer(theta, w, state, train, VAL)
  assert len(traces) == 1
  assert int(state[0].count) == 4


def test_vmap_over_restarts_through_the_jitted_outer_step():
  tx = optax.chain(
      hypergradient(STEP, val_loss, method="hoag",
                    inner_params_like=jnp.zeros(D)),
      optax.adam(0.1))
  outer = _outer_step(tx, inner_steps=100)
  thetas = jnp.stack([jnp.full(D, v, jnp.float32) for v in (-3.0, -1.0, 0.5)])
  ws = jnp.zeros((3, D))
  states = jax.vmap(tx.init)(thetas)
  batched = jax.jit(jax.vmap(outer, in_axes=(0, 0, 0, None, None)))
  single = jax.jit(outer)
  for _ in range(3):
    thetas, ws, states = batched(thetas, ws, states, TRAIN, VAL)
  assert states[0].warm_start.shape == (3, D)
  for i, v in enumerate((-3.0, -1.0, 0.5)):
    theta, w = jnp.full(D, v, jnp.float32), jnp.zeros(D)
    state = tx.init(theta)
    for _ in range(3):
      theta, w, state = single(theta, w, state, TRAIN, VAL)
    np.testing.assert_allclose(thetas[i], theta, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(states[0].value[i], state[0].value, rtol=1e-4)


def test_pytree_hyperparameters_and_reverse_tunes_the_learning_rate():
  """Dict hyperparameters; the unrolled method sees the learning rate."""

  def loss(w, h, batch):
    return train_loss(w, h["theta"], batch)

  step = hippojax.gradient_step(loss, lambda h, b: jnp.exp(h["log_lr"]))
  val = lambda w, h, b: val_loss(w, None, b)
  hparams = {"theta": THETA0, "log_lr": jnp.asarray(-4.0, jnp.float32)}
  batches = jax.tree.map(lambda x: jnp.stack([x] * 10), TRAIN)
  tx = optax.chain(hypergradient(step, val, method="reverse"),
                   optax.sgd(0.5))
  state = tx.init(hparams)

  @jax.jit
  def outer(h, state):
    updates, state = tx.update(None, state, h, params0=jnp.zeros(D),
                               train_batches=batches, val_batch=VAL)
    return optax.apply_updates(h, updates), state

  h, state = outer(hparams, state)
  first = float(state[0].value)
  for _ in range(10):
    h, state = outer(h, state)
  assert float(h["log_lr"]) > -4.0  # a larger step trains further
  assert float(state[0].value) < first
  # Implicit methods see (almost) nothing of the learning rate.
  hg = hypergradient(step, val, method="hoag", tol=1e-6)
  w = exact_w(THETA0, TRAIN)
  g, _ = hg.update(None, hg.init(hparams), hparams, inner_params=w,
                   train_batch=TRAIN, val_batch=VAL)
  assert abs(float(g["log_lr"])) < 1e-4
