"""Hypergradients against exact answers in float64.

Exact answers: the closed-form ridge solution differentiated by ``jax.grad``,
dense-Hessian solves for logistic regression and heavy-ball steps, direct
``jax.grad`` through one step (T1-T2), and a plain-Python DrMAD reference.
"""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import hippojax
from conftest import dense_fixed_point_grad

TIGHT = 1e-13
# Implicit methods, evaluated at the exact inner solution with tight options.
# ``hoag``/``cg`` and ``ift``/``neumann`` use the same solver options, so each
# pair must agree exactly (they share one compiled computation).
IMPLICIT = {
    "ift": lambda *a: hippojax.ift(*a, num_iters=120, tol=1e-10),
    "hoag": lambda *a: hippojax.hoag(*a, tol=1e-12, maxiter=200),
    "cg": lambda *a: hippojax.implicit_hypergrad(
        *a, solver=hippojax.CG(tol=1e-12, maxiter=200)),
    "gmres": lambda *a: hippojax.implicit_hypergrad(
        *a, solver=hippojax.GMRES(tol=TIGHT, maxiter=5)),
    "bicgstab": lambda *a: hippojax.implicit_hypergrad(
        *a, solver=hippojax.BiCGStab(tol=TIGHT, maxiter=200)),
    "neumann": lambda *a: hippojax.implicit_hypergrad(
        *a, solver=hippojax.Neumann(num_iters=120, tol=1e-10)),
    "cg_by_name": lambda *a: hippojax.implicit_hypergrad(*a, solver="cg"),
    # Jᵀv by reverse-mode VJPs instead of the symmetric J v shortcut.
    "vjp": lambda *a: hippojax.implicit_hypergrad(
        *a, solver=hippojax.BiCGStab(tol=TIGHT, maxiter=200),
        symmetric=False, system="fixed_point"),
}
# Loose default options (``"cg"`` by name uses tol=1e-6): compared loosely.
LOOSE = {"cg_by_name": 1e-5}


def _implicit_args(p):
  return (p.step, p.val_loss, p.theta, p.params, p.train, p.val)


@pytest.mark.parametrize("method", sorted(IMPLICIT))
def test_ridge_implicit_matches_closed_form(ridge, helpers, method):
  """Per-feature ridge: jax.grad through (XᵀX/n + diag λ)⁻¹Xᵀy/n."""
  hg = IMPLICIT[method](*_implicit_args(ridge))
  assert helpers.rel_err(hg.grad, ridge.exact) <= LOOSE.get(method, 1e-9)
  assert bool(hg.info.converged)
  assert hg.grad.shape == ridge.theta.shape
  assert hg.grad.dtype == ridge.theta.dtype
  np.testing.assert_allclose(
      hg.value, ridge.val_loss(ridge.params, ridge.theta, ridge.val),
      rtol=1e-14)


def test_equal_solvers_agree_exactly(ridge):
  """hoag ≡ CG instance and ift ≡ Neumann instance with the same options."""
  args = _implicit_args(ridge)
  for a, b in (("hoag", "cg"), ("ift", "neumann")):
    first, second = IMPLICIT[a](*args), IMPLICIT[b](*args)
    for x, y in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
      np.testing.assert_array_equal(x, y)


def test_hoag_reaches_1e_8(ridge, tree_ridge, logistic, helpers):
  """HOAG with tol=1e-12 is within 1e-8 of every exact answer."""
  for p in (ridge, tree_ridge, logistic):
    hg = hippojax.hoag(*_implicit_args(p), tol=1e-12, maxiter=200)
    assert helpers.rel_err(hg.grad, p.exact) <= 1e-8
    assert float(hg.info.residual) <= 1e-12
    assert 1 <= int(hg.info.num_iters) <= 200


# Beyond the ridge case, the solvers with tight options (default options are
# tested once above, and ``cg``/``neumann`` duplicate ``hoag``/``ift``).
CORE = ("ift", "hoag", "gmres", "bicgstab")
# Where the solver does not matter (terms added outside the solve): the
# symmetric (J v) products and the general (Jᵀ v by VJP) ones.
PATHS = ("ift", "hoag", "vjp")


@pytest.mark.parametrize("method", CORE)
def test_tree_ridge_implicit_matches_closed_form(tree_ridge, helpers, method):
  """Pytree params {"w", "b"} and hparams {"log_l2", "log_b"}: closed form."""
  hg = IMPLICIT[method](*_implicit_args(tree_ridge))
  assert jax.tree.structure(hg.grad) == jax.tree.structure(tree_ridge.theta)
  assert hg.grad["log_b"].shape == ()
  assert helpers.rel_err(hg.grad, tree_ridge.exact) <= 1e-9
  # Each leaf separately, so a small leaf cannot hide behind a large one.
  for key in ("log_l2", "log_b"):
    assert helpers.rel_err(hg.grad[key], tree_ridge.exact[key]) <= 1e-8
  assert jax.tree.structure(hg.info.solution) == jax.tree.structure(
      tree_ridge.params)


@pytest.mark.parametrize("method", CORE)
def test_logistic_implicit_matches_dense_solve(logistic, helpers, method):
  """Logistic regression at Newton's w*: ∇_λL_val − (∂²_{wλ}L)ᵀH⁻¹∇_wL_val."""
  hg = IMPLICIT[method](*_implicit_args(logistic))
  assert helpers.rel_err(hg.grad, logistic.exact) <= 1e-9


def test_implicit_solution_is_dense_q(logistic):
  """info.solution solves the system of the form used.

  Fixed-point form: (I − Jᵀ)q = ∇_w L_val, i.e. q = (ηH)⁻¹∇_w L_val;
  Hessian form (the default for gradient steps): z = H⁻¹∇_w L_val = ηq.
  """
  p = logistic
  # Newton's w* is a fixed point to machine precision.
  grad_train = jax.grad(p.train_loss)(p.params, p.theta, p.train)
  assert float(jnp.linalg.norm(grad_train)) <= 1e-14
  h = jax.hessian(p.train_loss)(p.params, p.theta, p.train)
  g_w = jax.grad(p.val_loss)(p.params, p.theta, p.val)
  fixed = hippojax.hoag(*_implicit_args(p), tol=1e-13, maxiter=200,
                        system="fixed_point")
  np.testing.assert_allclose(fixed.info.solution,
                             jnp.linalg.solve(p.lr * h, g_w), rtol=1e-10)
  hess = hippojax.hoag(*_implicit_args(p), tol=1e-13, maxiter=200)
  np.testing.assert_allclose(hess.info.solution, jnp.linalg.solve(h, g_w),
                             rtol=1e-10)
  np.testing.assert_allclose(hess.grad, fixed.grad, rtol=1e-10)


def test_hoag_warm_start_from_exact_solution(ridge, helpers):
  """Warm-started at its own converged solution, CG takes 0 iterations."""
  first = hippojax.hoag(*_implicit_args(ridge), tol=1e-12)
  again = hippojax.hoag(*_implicit_args(ridge), tol=1e-10,
                        init=first.info.solution)
  assert int(first.info.num_iters) > 0
  assert int(again.info.num_iters) == 0
  assert bool(again.info.converged)
  helpers.assert_tree_close(again.grad, first.grad, rtol=1e-12)


@pytest.mark.parametrize("method", PATHS)
def test_direct_hparam_term_implicit(ridge_direct, ridge, helpers, method):
  """val_loss + 0.1·Σλ²: closed form, and difference = ∇_θ 0.1·Σe^{2θ}."""
  with_direct = IMPLICIT[method](*_implicit_args(ridge_direct))
  without = IMPLICIT[method](*_implicit_args(ridge))
  assert helpers.rel_err(with_direct.grad, ridge_direct.exact) <= 1e-9
  direct = 0.2 * jnp.exp(2 * ridge.theta)
  np.testing.assert_allclose(with_direct.grad - without.grad, direct,
                             rtol=1e-9)


def _unrolled_methods(p, num_steps=8):
  batches = p.batches(num_steps)
  params_t = jax.lax.scan(lambda w, b: (p.step(w, p.theta, b), None),
                          p.params * 0.5, batches)[0]
  return {
      "reverse": lambda val: hippojax.reverse(p.step, val, p.theta,
                                              p.params * 0.5, batches, p.val),
      "forward": lambda val: hippojax.forward(p.step, val, p.theta,
                                              p.params * 0.5, batches, p.val),
      "drmad": lambda val: hippojax.drmad(p.step, val, p.theta,
                                          p.params * 0.5, params_t, batches,
                                          p.val),
  }


@pytest.mark.parametrize("method", ["reverse", "forward", "drmad"])
def test_direct_hparam_term_unrolled(ridge, helpers, method):
  """The direct ∇_λ L_val term is added: difference = ∇_θ 0.1·Σe^{2θ}.

  (For ``t1t2`` see ``test_t1t2_matches_grad_through_one_step[True]``.)
  """
  run = _unrolled_methods(ridge)[method]
  with_direct, without = run(helpers.ridge_val_direct), run(helpers.ridge_val)
  direct = 0.2 * jnp.exp(2 * ridge.theta)
  np.testing.assert_allclose(with_direct.grad - without.grad, direct,
                             rtol=1e-9)
  np.testing.assert_allclose(with_direct.value - without.value,
                             0.1 * jnp.sum(jnp.exp(2 * ridge.theta)),
                             rtol=1e-12)


def _with_log_lr(loss):
  return hippojax.gradient_step(loss, lambda h, b: jnp.exp(h["log_lr"]))


def _lr_loss(w, h, batch):
  return (0.5 * jnp.mean((batch["x"] @ w - batch["y"])**2) +
          0.5 * jnp.sum(jnp.exp(h["log_l2"]) * w**2))


def _lr_val(w, h, batch):
  del h
  return 0.5 * jnp.mean((batch["x"] @ w - batch["y"])**2)


@pytest.mark.parametrize("method", PATHS)
def test_learning_rate_hypergrad_is_zero_at_fixed_point(ridge, helpers,
                                                        method):
  """At an exact fixed point the learning rate has no effect: grad = 0."""
  step = _with_log_lr(_lr_loss)
  hparams = {"log_l2": ridge.theta, "log_lr": jnp.log(ridge.lr)}
  hg = IMPLICIT[method](step, _lr_val, hparams, ridge.params, ridge.train,
                        ridge.val)
  # ∇_w L_train(w*) is ~1e-17; the learning-rate entry is that times q.
  scale = float(jnp.linalg.norm(ridge.exact))
  assert abs(float(hg.grad["log_lr"])) <= 1e-10 * scale
  assert helpers.rel_err(hg.grad["log_l2"], ridge.exact) <= 1e-9
  # Away from the fixed point the fixed-point form gives a non-zero entry,
  # so the check above can fail; the Hessian form (the default of
  # gradient-step CG) drops the learning rate exactly, and says the weights
  # are not a fixed point.
  away_args = (step, _lr_val, hparams, ridge.params + 0.1, ridge.train,
               ridge.val)
  if method == "hoag":
    hess = IMPLICIT[method](*away_args)
    assert float(hess.grad["log_lr"]) == 0.0
    assert not bool(hess.info.converged)
    assert float(hess.info.fixed_point_residual) > 1e-3
    away = hippojax.hoag(*away_args, tol=1e-12, maxiter=200,
                         system="fixed_point")
  else:
    away = IMPLICIT[method](*away_args)
  assert abs(float(away.grad["log_lr"])) > 1e-4 * scale


def _hb_val(state, theta, batch):
  return _lr_val(state.params, theta, batch)


def _hb_loss(w, theta, batch):
  return _lr_loss(w, {"log_l2": theta}, batch)


@pytest.mark.parametrize("solver", ["gmres", "bicgstab"])
def test_heavy_ball_implicit_matches_dense_solve(ridge, helpers, solver):
  """Non-symmetric J (momentum): dense (I − Jᵀ)⁻¹ and the ridge closed form."""
  step = hippojax.heavy_ball_step(_hb_loss, ridge.lr, 0.7)
  state = step.init(ridge.params)
  exact, system, rhs = dense_fixed_point_grad(
      step, _hb_val, ridge.theta, state, ridge.train, ridge.val)
  # J really is non-symmetric here, so a symmetric shortcut would be wrong.
  assert float(jnp.max(jnp.abs(system - system.T))) > 0.1
  solver = {"gmres": hippojax.GMRES(tol=TIGHT, maxiter=5),
            "bicgstab": hippojax.BiCGStab(tol=TIGHT, maxiter=500)}[solver]
  hg = hippojax.implicit_hypergrad(step, _hb_val, ridge.theta, state,
                                   ridge.train, ridge.val, solver=solver)
  q = jax.flatten_util.ravel_pytree(hg.info.solution)[0]
  dense_residual = jnp.linalg.norm(system @ q - rhs) / jnp.linalg.norm(rhs)
  np.testing.assert_allclose(hg.info.residual, dense_residual, rtol=1e-3,
                             atol=1e-14)
  assert bool(hg.info.converged) == bool(dense_residual <= solver.tol)
  assert int(hg.info.num_iters) == -1
  # Equal to the dense solve and to the closed form.
  assert helpers.rel_err(hg.grad, exact) <= 1e-9
  assert helpers.rel_err(hg.grad, ridge.exact) <= 1e-9
  assert isinstance(hg.info.solution, hippojax.HeavyBallState)


def test_heavy_ball_momentum_and_lr_zero_at_fixed_point(ridge, helpers):
  """Tuned learning rate and momentum: zero implicit hypergradient."""
  step = hippojax.heavy_ball_step(
      _lr_loss, lambda h, b: jnp.exp(h["log_lr"]),
      lambda h, b: jax.nn.sigmoid(h["logit_mu"]))
  hparams = {"log_l2": ridge.theta, "log_lr": jnp.log(ridge.lr),
             "logit_mu": jnp.asarray(0.5)}
  val = lambda s, h, b: _lr_val(s.params, h, b)
  hg = hippojax.implicit_hypergrad(step, val, hparams,
                                   step.init(ridge.params), ridge.train,
                                   ridge.val,
                                   solver=hippojax.GMRES(tol=TIGHT, maxiter=5))
  scale = float(jnp.linalg.norm(ridge.exact))
  assert abs(float(hg.grad["log_lr"])) <= 1e-10 * scale
  assert abs(float(hg.grad["logit_mu"])) <= 1e-10 * scale
  assert helpers.rel_err(hg.grad["log_l2"], ridge.exact) <= 1e-9


# ----------------------------------------------------------------------------
# T1-T2 and DrMAD.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("direct", [False, True])
def test_t1t2_matches_grad_through_one_step(logistic, direct):
  """d/dλ val_loss(train_step(w, λ, b), λ, vb) by jax.grad."""
  p = logistic
  val = (lambda w, th, b: p.val_loss(w, th, b) + 0.1 * jnp.sum(th**2)
         ) if direct else p.val_loss
  w = p.params + 0.3
  hg = hippojax.t1t2(p.step, val, p.theta, w, p.train, p.val)
  objective = lambda th: val(p.step(w, th, p.train), th, p.val)
  value, exact = jax.jit(jax.value_and_grad(objective))(p.theta)
  np.testing.assert_allclose(hg.grad, exact, rtol=1e-12, atol=1e-16)
  np.testing.assert_allclose(hg.value, value, rtol=1e-14)
  # info.solution is ∇_w L_val at w_1 = Φ(w, λ), the q of the one-step form.
  w1 = p.step(w, p.theta, p.train)
  g_w1 = jax.grad(val)(w1, p.theta, p.val)
  np.testing.assert_allclose(hg.info.solution, g_w1, rtol=1e-12)
  assert int(hg.info.num_iters) == 1 and bool(hg.info.converged)
  assert float(hg.info.residual) == 0.0


def test_t1t2_includes_learning_rate(ridge):
  """The inner learning rate scales the T1-T2 hypergradient (B carries η)."""
  w = ridge.params + 0.2
  step2 = hippojax.gradient_step(ridge.train_loss, 2 * ridge.lr)
  one = hippojax.t1t2(ridge.step, ridge.val_loss, ridge.theta, w, ridge.train,
                      ridge.val)
  two = hippojax.t1t2(step2, ridge.val_loss, ridge.theta, w, ridge.train,
                      ridge.val)
  exact_two = jax.grad(lambda th: ridge.val_loss(
      step2(w, th, ridge.train), th, ridge.val))(ridge.theta)
  np.testing.assert_allclose(two.grad, exact_two, rtol=1e-12)
  assert not np.allclose(one.grad, two.grad, rtol=1e-3)


def test_t1t2_equals_reverse_with_one_step(tree_ridge, helpers):
  """T1-T2 is reverse-mode through T = 1 (pytree params and hparams)."""
  p = tree_ridge
  w = jax.tree.map(lambda x: x + 0.1, p.params)
  one = hippojax.t1t2(p.step, p.val_loss, p.theta, w, p.train, p.val)
  rev = hippojax.reverse(p.step, p.val_loss, p.theta, w,
                         jax.tree.map(lambda x: x[None], p.train), p.val)
  helpers.assert_tree_close(one.grad, rev.grad, rtol=1e-12)
  np.testing.assert_allclose(one.value, rev.value, rtol=1e-14)


def _drmad_reference(step, val_loss, theta, w0, w_t, batches, val_batch):
  """DrMAD by definition: VJPs at w_t = (1 − t/T)w0 + (t/T)wT, t = T−1..0."""
  num_steps = jax.tree.leaves(batches)[0].shape[0]
  g_w, g_th = jax.grad(val_loss, argnums=(0, 1))(w_t, theta, val_batch)

  @jax.jit  # one step's VJPs, compiled once for the whole loop
  def vjp_step(frac, g_w, batch):
    w = jax.tree.map(lambda a, b: (1 - frac) * a + frac * b, w0, w_t)
    _, vjp = jax.vjp(lambda w_, th: step(w_, th, batch), w, theta)
    return vjp(g_w)

  for t in reversed(range(num_steps)):
    g_w, b_th = vjp_step(t / num_steps, g_w,
                         jax.tree.map(lambda x: x[t], batches))
    g_th = jax.tree.map(jnp.add, g_th, b_th)
  return g_th, g_w


def test_drmad_matches_reference(logistic, helpers):
  """Logistic (J depends on w, so the interpolation points matter)."""
  p = logistic
  batches = p.batches(7)
  w0 = jnp.zeros_like(p.params)
  w_t = jax.lax.scan(lambda w, b: (p.step(w, p.theta, b), None), w0,
                     batches)[0]
  hg = hippojax.drmad(p.step, p.val_loss, p.theta, w0, w_t, batches, p.val)
  ref_grad, ref_adjoint = _drmad_reference(p.step, p.val_loss, p.theta, w0,
                                           w_t, batches, p.val)
  np.testing.assert_allclose(hg.grad, ref_grad, rtol=1e-12, atol=1e-17)
  np.testing.assert_allclose(hg.info.solution, ref_adjoint, rtol=1e-12,
                             atol=1e-17)
  np.testing.assert_allclose(hg.value, p.val_loss(w_t, p.theta, p.val),
                             rtol=1e-14)
  assert int(hg.info.num_iters) == 7
  # The reference is sensitive to where the VJPs are taken: moving the end
  # point of the straight line changes the answer.
  shifted = _drmad_reference(p.step, p.val_loss, p.theta, w0,
                             jax.tree.map(lambda a: a * 1.5, w_t), batches,
                             p.val)[0]
  assert helpers.rel_err(shifted, ref_grad) > 1e-6


def test_drmad_matches_reference_pytree(tree_ridge, helpers):
  """DrMAD reference with pytree params and hparams."""
  p = tree_ridge
  batches = p.batches(5)
  w0 = jax.tree.map(jnp.zeros_like, p.params)
  w_t = jax.lax.scan(lambda w, b: (p.step(w, p.theta, b), None), w0,
                     batches)[0]
  hg = hippojax.drmad(p.step, p.val_loss, p.theta, w0, w_t, batches, p.val)
  ref_grad, ref_adjoint = _drmad_reference(p.step, p.val_loss, p.theta, w0,
                                           w_t, batches, p.val)
  helpers.assert_tree_close(hg.grad, ref_grad, rtol=1e-12, atol=1e-17)
  helpers.assert_tree_close(hg.info.solution, ref_adjoint, rtol=1e-12,
                            atol=1e-17)


def _drift_step(w, theta, batch):
  """w + c(θ): the trajectory from any w0 is exactly a straight line."""
  return w + jnp.tanh(theta) * batch["c"]


def _drift_val(w, theta, batch):
  return jnp.sum(jnp.sin(w) * batch["a"]) + 0.5 * jnp.sum(w**2 * theta**2)


def test_drmad_equals_reverse_on_straight_line():
  """When w_t really is (1 − t/T)w0 + (t/T)wT, DrMAD is exact."""
  rng = np.random.default_rng(3)
  d, num_steps = 5, 6
  theta = jnp.asarray(rng.normal(size=d))
  w0 = jnp.asarray(rng.normal(size=d))
  c = jnp.asarray(rng.normal(size=d))
  batches = {"c": jnp.broadcast_to(c, (num_steps, d))}
  val = {"a": jnp.asarray(rng.normal(size=d))}
  w_t = jax.lax.scan(lambda w, b: (_drift_step(w, theta, b), None), w0,
                     batches)[0]
  np.testing.assert_allclose(w_t, w0 + num_steps * jnp.tanh(theta) * c,
                             rtol=1e-13)
  dr = hippojax.drmad(_drift_step, _drift_val, theta, w0, w_t, batches, val)
  rev = hippojax.reverse(_drift_step, _drift_val, theta, w0, batches, val)
  np.testing.assert_allclose(dr.grad, rev.grad, rtol=1e-12)
  np.testing.assert_allclose(dr.info.solution, rev.info.solution, rtol=1e-12)
  np.testing.assert_allclose(dr.value, rev.value, rtol=1e-14)
  assert float(jnp.linalg.norm(rev.grad)) > 1e-2  # a non-trivial answer
