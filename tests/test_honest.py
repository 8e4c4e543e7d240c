"""Implicit hypergradients are exact, or say they are not.

Every case is compared with a dense float64 solve. The rule under test: a
result with ``info.converged`` set is right; a wrong one has it cleared.
"""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import hippojax
from conftest import dense_fixed_point_grad
from conftest import dense_implicit_grad
from conftest import logistic_loss
from conftest import logistic_val
from conftest import newton_solve


def _rel(a, b):
  a = jax.flatten_util.ravel_pytree(a)[0]
  b = jax.flatten_util.ravel_pytree(b)[0]
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _never_converged_and_wrong(hg, exact, tol=1e-6):
  err = _rel(hg.grad, exact)
  if bool(hg.info.converged):
    assert err <= tol, f"converged=True but relative error {err:.2e}"
  return err


# ------------------------------------------------- per-parameter learning rates


@pytest.mark.parametrize("solver", ["hoag", "gmres", "bicgstab"])
def test_per_parameter_learning_rates_are_exact(logistic, solver):
  p = logistic
  rates = jnp.asarray(np.random.default_rng(1).uniform(0.05, 2.0, p.params.size))
  step = hippojax.gradient_step(logistic_loss, rates)
  args = (step, logistic_val, p.theta, p.params, p.train, p.val)
  if solver == "hoag":
    hg = hippojax.hoag(*args, tol=1e-12, maxiter=200)
  else:
    hg = hippojax.implicit_hypergrad(
        *args, solver=solver, system="fixed_point")
  assert bool(hg.info.converged)
  assert _rel(hg.grad, p.exact) <= 1e-9


def test_per_parameter_pytree_rates_and_callable_rates(tree_ridge):
  p = tree_ridge
  rates = {"w": jnp.linspace(0.1, 0.5, p.params["w"].shape[0]),
           "b": jnp.asarray(0.3)}
  for lr in (rates, lambda h, b: jax.tree.map(lambda r: 2 * r, rates)):
    step = hippojax.gradient_step(p.train_loss, lr)
    hg = hippojax.hoag(step, p.val_loss, p.theta, p.params, p.train, p.val,
                       tol=1e-12)
    assert bool(hg.info.converged)
    assert _rel(hg.grad, p.exact) <= 1e-9


def test_wrong_symmetric_claim_is_never_converged(logistic):
  """The measured failure: w − D∇L with symmetric=True forced."""
  p = logistic
  rates = jnp.asarray(np.random.default_rng(2).uniform(0.05, 2.0, p.params.size))
  step = hippojax.gradient_step(logistic_loss, rates)
  args = (step, logistic_val, p.theta, p.params, p.train, p.val)
  for solver in (hippojax.CG(tol=1e-10), hippojax.GMRES(tol=1e-10)):
    hg = hippojax.implicit_hypergrad(*args, solver=solver, symmetric=True,
                                     system="fixed_point")
    err = _never_converged_and_wrong(hg, p.exact)
    assert err > 1e-3 and not bool(hg.info.converged)
    assert float(hg.info.residual) > 1e-3  # certified with the true Jᵀ


# ------------------------------------------------ non-symmetric steps


def _preconditioned(matrix):
  """A user step w − M ∇L with a fixed non-normal M (no declarations)."""

  def step(w, theta, batch):
    return w - matrix @ jax.grad(logistic_loss)(w, theta, batch)

  return step


def test_non_normal_preconditioner_exact_or_not_converged(logistic):
  p = logistic
  rng = np.random.default_rng(3)
  m = np.diag(rng.uniform(0.2, 1.0, p.params.size)) + np.triu(
      rng.normal(scale=0.4, size=(p.params.size, p.params.size)), 1)
  m = jnp.asarray(m)
  step = _preconditioned(m)
  args = (step, logistic_val, p.theta, p.params, p.train, p.val)
  exact = p.exact
  results = {
      "cg": hippojax.implicit_hypergrad(*args, solver=hippojax.CG(tol=1e-10)),
      "cg_symmetric_claim": hippojax.implicit_hypergrad(
          *args, solver=hippojax.CG(tol=1e-10), symmetric=True),
      "gmres": hippojax.implicit_hypergrad(
          *args, solver=hippojax.GMRES(tol=1e-12, maxiter=20)),
      "bicgstab": hippojax.implicit_hypergrad(
          *args, solver=hippojax.BiCGStab(tol=1e-12)),
      "neumann": hippojax.ift(*args, num_iters=20, tol=1e-10),
  }
  for hg in results.values():
    _never_converged_and_wrong(hg, exact)
  assert bool(results["gmres"].info.converged)
  assert _rel(results["gmres"].grad, exact) <= 1e-9
  assert not bool(results["cg_symmetric_claim"].info.converged)


def test_heavy_ball_exact_or_not_converged(logistic):
  p = logistic
  step = hippojax.heavy_ball_step(logistic_loss, 0.5, 0.9)
  val = lambda s, th, b: logistic_val(s.params, th, b)
  state = step.init(p.params)
  exact, _, _ = dense_fixed_point_grad(step, val, p.theta, state, p.train,
                                       p.val)
  args = (step, val, p.theta, state, p.train, p.val)
  gm = hippojax.implicit_hypergrad(*args, solver=hippojax.GMRES(tol=1e-12))
  assert bool(gm.info.converged) and _rel(gm.grad, exact) <= 1e-9
  np.testing.assert_allclose(exact, p.exact, rtol=1e-8)
  for solver in ("cg", "neumann", hippojax.CG(tol=1e-10)):
    _never_converged_and_wrong(
        hippojax.implicit_hypergrad(*args, solver=solver), exact)
  # symmetric=True on a non-symmetric step: the certified residual shows it.
  hg = hippojax.implicit_hypergrad(*args, solver=hippojax.CG(tol=1e-10),
                                   symmetric=True)
  _never_converged_and_wrong(hg, exact)


# ------------------------------------------------------------- saddle points


def _saddle_loss(w, theta, batch):
  """0.5 wᵀAw − bᵀw + 0.5 Σ e^θ w², A indefinite."""
  a, b = batch
  return 0.5 * w @ a @ w - b @ w + 0.5 * jnp.sum(jnp.exp(theta) * w**2)


def _saddle_val(w, theta, batch):
  del theta
  return 0.5 * jnp.sum((w - batch)**2)


def _saddle():
  rng = np.random.default_rng(4)
  d = 6
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  eig = np.array([-1.5, -0.7, 0.5, 1.0, 2.0, 3.0])
  a = jnp.asarray(q @ np.diag(eig) @ q.T)
  theta = jnp.full(d, np.log(0.1))
  b = jnp.asarray(rng.normal(size=d))
  h = a + jnp.diag(jnp.exp(theta))
  w = jnp.linalg.solve(h, b)  # a stationary point: a saddle
  return a, b, theta, w, h, jnp.asarray(rng.normal(size=d))


def test_saddle_point_reports_curvature_and_damping_matches_dense():
  a, b, theta, w, h, target = _saddle()
  assert np.sum(np.linalg.eigvalsh(np.asarray(h)) < 0) == 2
  step = hippojax.gradient_step(_saddle_loss, 0.1)
  args = (step, _saddle_val, theta, w, (a, b), target)
  hg = hippojax.hoag(*args, tol=1e-12)
  assert float(hg.info.curvature) <= 0
  assert not bool(hg.info.converged)
  assert float(hg.info.fixed_point_residual) <= 1e-12
  delta = 3.0
  damped = hippojax.hoag(*args, tol=1e-12, damping=delta)
  g_w = w - target
  z = jnp.linalg.solve(h + delta * jnp.eye(w.size), g_w)
  mixed = jax.jacobian(jax.grad(_saddle_loss), argnums=1)(w, theta, (a, b))
  expected = -mixed.T @ z
  assert bool(damped.info.converged) and float(damped.info.curvature) > 0
  np.testing.assert_allclose(damped.grad, expected, rtol=1e-10)
  # The fixed-point form damps I − Jᵀ = ηH: damping ηδ gives the same.
  fixed = hippojax.implicit_hypergrad(
      *args, solver=hippojax.GMRES(tol=1e-12), system="fixed_point",
      damping=0.1 * delta)
  np.testing.assert_allclose(fixed.grad, expected, rtol=1e-9)


def test_transform_raises_damping_on_a_saddle_then_converges():
  a, b, theta, w, _, target = _saddle()
  step = hippojax.gradient_step(_saddle_loss, 0.1)
  tx = hippojax.hypergradient(step, _saddle_val, method="hoag",
                              inner_params_like=w)
  state = tx.init(theta)
  update = jax.jit(tx.update)
  converged = []
  for _ in range(4):
    g, state = update(None, state, theta, inner_params=w,
                      train_batch=(a, b), val_batch=target)
    converged.append(bool(state.converged))
    assert bool(jnp.all(jnp.isfinite(g)))
  assert not converged[0] and converged[-1]
  assert float(state.damping) >= 1.5  # at least |λ_min|
  assert int(state.num_refused) >= 1


# ------------------------------------------------------- stationarity


def test_retries_redo_a_negative_curvature_solve_with_more_damping():
  a, b, theta, w, h, target = _saddle()
  step = hippojax.gradient_step(_saddle_loss, 0.1)
  kw = dict(method="hoag", inner_params_like=w, tol=1e-10, decay=1.0)
  data = dict(inner_params=w, train_batch=(a, b), val_batch=target)
  plain = hippojax.hypergradient(step, _saddle_val, **kw)
  _, state = jax.jit(plain.update)(None, plain.init(theta), theta, **data)
  assert not bool(state.converged) and int(state.num_refused) == 1
  tx = hippojax.hypergradient(step, _saddle_val, retries=3, **kw)
  g, state = jax.jit(tx.update)(None, tx.init(theta), theta, **data)
  # The first call already returns a converged hypergradient: of the damped
  # system whose damping the state reports (solved with, and not lowered
  # after: the undamped operator is indefinite along CG's directions).
  assert bool(state.converged) and int(state.num_refused) == 0
  delta = float(state.damping)
  lam_min = float(jnp.linalg.eigvalsh(h).min())
  assert delta > -lam_min
  z = jnp.linalg.solve(h + delta * jnp.eye(w.size), w - target)
  mixed = jax.jacobian(jax.grad(_saddle_loss), argnums=1)(w, theta, (a, b))
  np.testing.assert_allclose(g, -mixed.T @ z, rtol=1e-7)
  with pytest.raises(ValueError, match="retries"):
    hippojax.hypergradient(step, _saddle_val, method="hoag", retries=-1)


def test_non_stationary_weights_are_flagged(logistic):
  p = logistic
  args = (p.step, logistic_val, p.theta)
  at_fixed = hippojax.hoag(*args, p.params, p.train, p.val, tol=1e-12)
  assert bool(at_fixed.info.converged)
  assert float(at_fixed.info.fixed_point_residual) <= 1e-12
  away = p.params + 0.05 * jnp.sign(p.params)
  for fn in (hippojax.hoag, hippojax.ift):
    hg = fn(*args, away, p.train, p.val)
    assert float(hg.info.fixed_point_residual) > 1e-3
    assert not bool(hg.info.converged)
  # The tolerance is an option.
  loose = hippojax.hoag(*args, away, p.train, p.val, tol=1e-12,
                        fixed_point_tol=1.0)
  assert bool(loose.info.converged)


def _oscillating(p):
  """A step of 2.2 / (the largest curvature) and 200 of its iterates."""
  h_max = float(jnp.linalg.eigvalsh(
      jax.hessian(logistic_loss)(p.params, p.theta, p.train)).max())
  step = hippojax.gradient_step(logistic_loss, 2.2 / h_max)
  w = jax.lax.fori_loop(0, 200, lambda _, w: step(w, p.theta, p.train),
                        p.params + 0.01)
  return step, w


def test_oscillating_inner_loop_is_not_converged(logistic):
  """Too large a step oscillates; the last iterate is no fixed point."""
  p = logistic
  step, w = _oscillating(p)
  hg = hippojax.hoag(step, logistic_val, p.theta, w, p.train, p.val)
  _never_converged_and_wrong(hg, p.exact)
  assert float(hg.info.fixed_point_residual) > 1e-3


def test_polish_turns_an_oscillating_loop_into_an_exact_fixed_point(logistic):
  """Past the edge of stability, half steps of the same map converge."""
  p = logistic
  step, w = _oscillating(p)
  polished, k = jax.jit(lambda w: hippojax.polish(
      step, w, p.theta, p.train, max_steps=2000, fixed_point_tol=1e-12))(w)
  assert 0 < int(k) < 2000
  hg = hippojax.hoag(step, logistic_val, p.theta, polished, p.train, p.val,
                     tol=1e-10, fixed_point_tol=1e-12)
  assert bool(hg.info.converged)
  assert float(hg.info.fixed_point_residual) <= 0.5e-12
  np.testing.assert_allclose(hg.grad, p.exact, rtol=1e-8)
  # Already a fixed point: no step taken; a budget of 0 takes none either.
  again, k = hippojax.polish(step, polished, p.theta, p.train,
                             fixed_point_tol=1e-12)
  assert int(k) == 0 and again is not None
  _, k = hippojax.polish(step, w, p.theta, p.train, max_steps=0)
  assert int(k) == 0
  with pytest.raises(TypeError, match="max_steps must be an integer"):
    hippojax.polish(step, w, p.theta, p.train, max_steps=1.5)
  with pytest.raises(ValueError, match="fixed_point_tol"):
    hippojax.polish(step, w, p.theta, p.train, fixed_point_tol=-1.0)


def _ill_conditioned_quadratic(d=60):
  """``½ wᵀ diag(h) w − θᵀw`` with eigenvalues from 1e-2 to 1."""
  h = jnp.logspace(-2, 0, d)

  def loss(w, theta, batch):
    del batch
    return 0.5 * jnp.sum(h * w**2) - jnp.sum(theta * w)

  return loss, h


_ILL_LOSS, _ILL_H = _ill_conditioned_quadratic()
_ILL_STEP = hippojax.gradient_step(_ILL_LOSS, 0.5)


def _ill_val(w, theta, batch):
  del theta, batch
  return 0.5 * jnp.sum((w - 1.0)**2)


@pytest.mark.parametrize("damp_on_stall", [False, True])
def test_stalled_solves_raise_damping_only_when_asked(damp_on_stall):
  theta = jnp.ones(_ILL_H.size)
  w = theta / _ILL_H  # the exact minimiser: only the solve can fail
  tx = hippojax.hypergradient(_ILL_STEP, _ill_val, method="hoag", maxiter=8,
                              tol=1e-3, decay=1.0, damp_on_stall=damp_on_stall,
                              inner_params_like=w)
  state = tx.init(theta)
  update = jax.jit(tx.update)
  dampings, converged, iters = [], [], []
  for _ in range(16):
    _, state = update(None, state, theta, inner_params=w, train_batch=None,
                      val_batch=None)
    dampings.append(float(state.damping))
    converged.append(bool(state.converged))
    iters.append(int(state.num_iters))
  if not damp_on_stall:
    # CG runs out of its 8 iterations (the warm start carries the solve on
    # across outer steps); the damping does not move.
    assert dampings == [0.0] * 16 and not converged[0]
    return
  # Raised x2 (from 1e-3) after every stall, until CG meets its budget;
  # never lowered after a solve that used more than half of maxiter.
  assert dampings[0] == pytest.approx(1e-3)
  assert dampings[1] == pytest.approx(2e-3)
  for i in range(1, 16):
    if iters[i] > 4:  # solve i (damped by dampings[i - 1]) had no room
      assert dampings[i] >= dampings[i - 1]
  assert not converged[0] and all(converged[-4:]) and max(dampings) < 10.0
  with pytest.raises(TypeError, match="damp_on_stall must be True or False"):
    hippojax.hypergradient(_ILL_STEP, _ill_val, method="hoag",
                           damp_on_stall=1)


def test_nonfinite_value_is_not_converged_for_any_method(logistic):
  p = logistic
  bad_val = {"x": p.val["x"].at[0, 0].set(jnp.nan), "y": p.val["y"]}
  args = (p.step, logistic_val, p.theta, p.params, p.train, bad_val)
  batches = jax.tree.map(lambda x: jnp.stack([x] * 3), p.train)
  results = [
      hippojax.hoag(*args), hippojax.ift(*args), hippojax.t1t2(*args),
      hippojax.reverse(p.step, logistic_val, p.theta, p.params, batches,
                       bad_val),
      hippojax.drmad(p.step, logistic_val, p.theta, p.params, p.params,
                     batches, bad_val),
  ]
  for hg in results:
    assert not bool(hg.info.converged)


# ------------------------------------------------- any optimiser


def test_adam_trained_weights_with_the_stationarity_recipe(logistic):
  """Train with Adam; take hoag with gradient_step(loss, 1.0) at the end."""
  p = logistic
  opt = optax.adam(optax.cosine_decay_schedule(0.05, 3000))

  @jax.jit
  def train(w):
    def body(_, carry):
      w, s = carry
      g = jax.grad(logistic_loss)(w, p.theta, p.train)
      u, s = opt.update(g, s, w)
      return optax.apply_updates(w, u), s
    return jax.lax.fori_loop(0, 3000, body, (w, opt.init(w)))[0]

  w = train(jnp.zeros(p.params.size))
  stationary = hippojax.gradient_step(logistic_loss, 1.0)
  hg = hippojax.hoag(stationary, logistic_val, p.theta, w, p.train, p.val,
                     tol=1e-10)
  assert bool(hg.info.converged)
  exact = dense_implicit_grad(logistic_loss, logistic_val, w, p.theta,
                              p.train, p.val)
  assert _rel(hg.grad, exact) <= 1e-8
  assert _rel(hg.grad, p.exact) <= 1e-5


def test_reverse_through_an_optax_adam_step(logistic):
  p = logistic
  step = hippojax.optax_step(
      lambda w, h, b: logistic_loss(w, h["theta"], b),
      lambda h: optax.adam(jnp.exp(h["log_lr"])))
  val = lambda s, h, b: logistic_val(s.params, h["theta"], b)
  hparams = {"theta": p.theta, "log_lr": jnp.log(0.05)}
  state0 = step.init(jnp.zeros(p.params.size), hparams)
  assert state0.opt_state[0].count.dtype == jnp.int32
  batches = jax.tree.map(lambda x: jnp.stack([x] * 20), p.train)
  hg = hippojax.reverse(step, val, hparams, state0, batches, p.val)
  fwd = hippojax.forward(step, val, hparams, state0, batches, p.val)
  assert bool(hg.info.converged)

  def unrolled(h):
    s = state0
    for t in range(20):
      s = step(s, h, jax.tree.map(lambda x: x[t], batches))
    return val(s, h, p.val)

  eps = 1e-6
  fd = (unrolled({**hparams, "log_lr": hparams["log_lr"] + eps}) -
        unrolled({**hparams, "log_lr": hparams["log_lr"] - eps})) / (2 * eps)
  np.testing.assert_allclose(hg.grad["log_lr"], fd, rtol=1e-6)
  np.testing.assert_allclose(fwd.grad["log_lr"], hg.grad["log_lr"],
                             rtol=1e-10)
  np.testing.assert_allclose(hg.grad["theta"],
                             jax.grad(unrolled)(hparams)["theta"], rtol=1e-10)


# --------------------------------------------- float32 hyper-cleaning


def _cleaning_problem():
  x, y = load_digits(return_X_y=True)
  rng = np.random.default_rng(0)
  idx = rng.permutation(len(y))
  x = (x / 16.0).astype(np.float32)
  tr, va = idx[:300], idx[300:600]
  y_tr = y[tr].copy()
  flip = rng.random(300) < 0.5
  y_tr[flip] = rng.integers(0, 10, flip.sum())
  onehot = lambda l: jax.nn.one_hot(l, 10, dtype=jnp.float32)
  return ((jnp.asarray(x[tr]), onehot(y_tr)),
          (jnp.asarray(x[va]), onehot(y[va])))


def _clean_loss(w, u, batch):
  x, y = batch
  per = -jnp.sum(y * jax.nn.log_softmax(x @ w), axis=1)
  return jnp.mean(jax.nn.sigmoid(u) * per) + 1e-3 * jnp.sum(w**2)


def _clean_val(w, u, batch):
  del u
  x, y = batch
  return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(x @ w), axis=1))


_CLEAN_STEP = hippojax.gradient_step(_clean_loss, 1.0)


@pytest.mark.slow
def test_float32_hyper_cleaning_residuals_do_not_grow():
  train, val = _cleaning_problem()
  w = jnp.zeros((64, 10), jnp.float32)
  u = jnp.zeros(300, jnp.float32)
  tx = optax.chain(
      hippojax.hypergradient(_CLEAN_STEP, _clean_val, method="hoag",
                             inner_params_like=w),
      optax.adam(0.1))
  state = tx.init(u)

  @jax.jit
  def outer(u, w, state):
    w = jax.lax.fori_loop(0, 100, lambda _, w: _CLEAN_STEP(w, u, train), w)
    g, state = tx.update(None, state, u, inner_params=w, train_batch=train,
                         val_batch=val)
    return optax.apply_updates(u, g), w, state

  residuals, converged, values = [], [], []
  for _ in range(100):
    u, w, state = outer(u, w, state)
    residuals.append(float(state[0].residual))
    converged.append(bool(state[0].converged))
    values.append(float(state[0].value))
  assert u.dtype == jnp.float32 and w.dtype == jnp.float32
  # The tolerance floor is one float32 reaches: late solves still converge.
  assert float(state[0].tol) == pytest.approx(1e-4)
  late = np.array(residuals[50:])
  assert np.all(np.isfinite(late)) and np.max(late) <= 1e-4 * 1.0001
  assert np.mean(converged[50:]) >= 0.9
  assert values[-1] < values[0]


# -------------------------------------------------------- sharp edges


def test_near_miss_extra_arguments_are_refused(logistic):
  p = logistic
  tx = hippojax.hypergradient(p.step, logistic_val, method="hoag")
  state = tx.init(p.theta)
  for wrong, right in (("val_batches", "val_batch"),
                       ("inner_param", "inner_params"),
                       ("train_btach", "train_batch")):
    kwargs = {"inner_params": p.params, "train_batch": p.train,
              "val_batch": p.val, wrong: p.val}
    with pytest.raises(TypeError, match=f"{wrong}=.*did you mean {right}"):
      tx.update(None, state, p.theta, **kwargs)
  # Unrelated extra arguments (for other members of a chain) pass.
  tx.update(None, state, p.theta, inner_params=p.params, train_batch=p.train,
            val_batch=p.val, value=1.0, grad=None)


# ------------------------------------------------------------------ studies


def test_run_says_when_most_solves_failed(tmp_path, capsys, monkeypatch):
  """One CG iteration cannot solve ridge-diabetes: the run says so."""
  from hippojax._src import cli
  monkeypatch.chdir(tmp_path)
  storage = f"sqlite:///{tmp_path / 's.db'}"
  base = ["run", "--problem", "ridge-diabetes-scalar", "--method", "hoag",
          "--steps", "3", "--storage", storage, "--no-progress"]
  rc = cli.main(base + ["--maxiter", "1", "--study", "starved"])
  out = capsys.readouterr().out
  assert rc == 0
  lines = [l for l in out.splitlines() if "did not converge" in l]
  assert len(lines) == 1 and "3 of 3" in lines[0] and "100%" in lines[0]
  rc = cli.main(base + ["--study", "fed"])
  out = capsys.readouterr().out
  assert rc == 0 and "did not converge" not in out
  import optuna
  trial = optuna.load_study(study_name="fed", storage=storage).trials[-1]
  assert trial.user_attrs["solver_converged"] is True
  assert 0 <= trial.user_attrs["fixed_point_residual"] <= 1e-3
  assert trial.user_attrs["damping"] == 0.0
