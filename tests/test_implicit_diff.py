"""custom_root / custom_fixed_point on JAXopt's implicit-differentiation problems.

Ridge regression (JAXopt's own implicit-diff test), kernel ridge, multiclass
logistic regression and the lasso through its proximal-gradient fixed point,
in float64 against closed forms, autodiff through exact solves, dense IFT
formulas and finite differences.
"""

import functools
import warnings

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import datasets

import hippojax

TIGHT_CG = hippojax.CG(tol=1e-12, maxiter=200)
TIGHT_GMRES = hippojax.GMRES(tol=1e-12, restart=30)


def rel_err(a, b):
  a = jax.flatten_util.ravel_pytree(a)[0]
  b = jax.flatten_util.ravel_pytree(b)[0]
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


# ----------------------------------------------------------------------------
# Ridge regression: JAXopt's test problem (make_regression, lam = 5).
# ----------------------------------------------------------------------------


def ridge_objective(params, lam, X, y):
  residuals = X @ params - y
  return 0.5 * jnp.mean(residuals**2) + 0.5 * lam * jnp.sum(params**2)


def ridge_closed_form(init_params, lam, X, y):
  del init_params
  return jnp.linalg.solve(X.T @ X + lam * len(y) * jnp.eye(X.shape[1]),
                          X.T @ y)


@pytest.fixture(scope="module")
def regression():
  X, y = datasets.make_regression(n_samples=10, n_features=3, random_state=0)
  return jnp.asarray(X), jnp.asarray(y)


@pytest.mark.parametrize("solver,symmetric", [
    (TIGHT_CG, True), (TIGHT_GMRES, False),
    (hippojax.BiCGStab(tol=1e-12), False)])
def test_ridge_jacobian_in_lam_is_the_closed_form(regression, solver,
                                                  symmetric):
  X, y = regression
  lam = 5.0
  solve = hippojax.custom_root(jax.grad(ridge_objective), solver=solver,
                               symmetric=symmetric)(ridge_closed_form)
  sol = solve(None, lam, X, y)
  np.testing.assert_allclose(sol, ridge_closed_form(None, lam, X, y),
                             rtol=1e-14)
  # w = (XᵀX + λnI)⁻¹Xᵀy  ⇒  dw/dλ = −(XᵀX + λnI)⁻¹ n w.
  n = len(y)
  exact = -jnp.linalg.solve(X.T @ X + lam * n * jnp.eye(3), n * sol)
  jac = jax.jit(jax.jacrev(solve, argnums=1))(None, lam, X, y)
  np.testing.assert_allclose(jac, exact, rtol=1e-9)
  # Keyword arguments are bound to their positions and differentiated too
  # (JAXopt's calling convention).
  jac_kw = jax.jit(jax.jacrev(solve, argnums=1))(None, lam, X=X, y=y)
  np.testing.assert_allclose(jac_kw, exact, rtol=1e-9)


def test_ridge_jacobian_in_the_data_matches_autodiff(regression):
  X, y = regression
  solve = hippojax.custom_root(jax.grad(ridge_objective), solver=TIGHT_CG,
                               symmetric=True)(ridge_closed_form)
  # Every argument after init_params is differentiated, data included.
  jac_x, jac_y = jax.jit(jax.jacrev(solve, argnums=(2, 3)))(None, 5.0, X, y)
  ref_x, ref_y = jax.jacrev(ridge_closed_form, argnums=(2, 3))(None, 5.0, X, y)
  assert rel_err(jac_x, ref_x) < 1e-9 and rel_err(jac_y, ref_y) < 1e-9
  assert float(jnp.abs(ref_x).max()) > 1e-3


def test_ridge_has_aux(regression):
  X, y = regression

  def with_aux(init_params, lam, X, y):
    sol = ridge_closed_form(init_params, lam, X, y)
    return sol, {"gap": jnp.linalg.norm(jax.grad(ridge_objective)(sol, lam, X,
                                                                  y))}

  solve = hippojax.custom_root(jax.grad(ridge_objective), solver=TIGHT_CG,
                               has_aux=True)(with_aux)
  sol, aux = solve(None, 5.0, X, y)
  assert float(aux["gap"]) < 1e-10
  jac, _ = jax.jit(jax.jacrev(solve, argnums=1))(None, 5.0, X, y)
  jac_ref = jax.jacrev(ridge_closed_form, argnums=1)(None, 5.0, X, y)
  np.testing.assert_allclose(jac, jac_ref, rtol=1e-9)
  np.testing.assert_allclose(sol, ridge_closed_form(None, 5.0, X, y))


def test_a_scipy_solver_outside_jax_is_differentiated(regression):
  """A solver JAX cannot trace (SciPy's L-BFGS-B) runs on concrete values,
  as with JAXopt's SciPy wrappers; the derivative is still implicit."""
  scipy_optimize = pytest.importorskip("scipy.optimize")
  X, y = regression

  def scipy_ridge(init_params, lam, X, y):
    lam, X, y = float(lam), np.asarray(X), np.asarray(y)
    f = lambda w: 0.5 * np.mean((X @ w - y)**2) + 0.5 * lam * np.sum(w**2)
    g = lambda w: X.T @ (X @ w - y) / len(y) + lam * w
    res = scipy_optimize.minimize(f, np.asarray(init_params), jac=g,
                                  method="L-BFGS-B",
                                  options={"gtol": 1e-12, "ftol": 1e-15})
    return jnp.asarray(res.x)

  solve = hippojax.custom_root(jax.grad(ridge_objective), solver=TIGHT_CG,
                               symmetric=True)(scipy_ridge)
  jac = jax.jacrev(solve, argnums=1)(jnp.zeros(3), 5.0, X, y)
  ref = jax.jacrev(ridge_closed_form, argnums=1)(None, 5.0, X, y)
  np.testing.assert_allclose(jac, ref, rtol=1e-6)
  with pytest.raises(TypeError, match="pass init_params shaped like"):
    jax.jacrev(solve, argnums=1)(None, 5.0, X, y)


# ----------------------------------------------------------------------------
# Kernel ridge: α = (K_γ + λI)⁻¹ y, hyperparameters (log γ, log λ).
# ----------------------------------------------------------------------------


def rbf(gamma, a, b):
  sq = jnp.sum((a[:, None, :] - b[None, :, :])**2, axis=-1)
  return jnp.exp(-gamma * sq)


def kernel_ridge_optimality(alpha, hp, X, y):
  """∇ of ½αᵀ(K + λI)α − αᵀy: symmetric in α."""
  K = rbf(jnp.exp(hp["log_gamma"]), X, X)
  return K @ alpha + jnp.exp(hp["log_lam"]) * alpha - y


def kernel_ridge_solve(init_params, hp, X, y):
  del init_params
  K = rbf(jnp.exp(hp["log_gamma"]), X, X)
  return jnp.linalg.solve(K + jnp.exp(hp["log_lam"]) * jnp.eye(len(y)), y)


def kernel_ridge_val(solve, hp, data):
  X, y, Xv, yv = data
  alpha = solve(None, hp, X, y)
  pred = rbf(jnp.exp(hp["log_gamma"]), Xv, X) @ alpha
  return jnp.mean((pred - yv)**2)


@pytest.fixture(scope="module")
def kernel_data():
  rng = np.random.default_rng(0)
  X = rng.normal(size=(40, 3))
  f = lambda x: np.sin(x[:, 0]) + 0.5 * x[:, 1] ** 2 - x[:, 2]
  y = f(X) + 0.1 * rng.normal(size=40)
  Xv = rng.normal(size=(30, 3))
  yv = f(Xv) + 0.1 * rng.normal(size=30)
  return tuple(map(jnp.asarray, (X, y, Xv, yv)))


KERNEL_HP = {"log_gamma": jnp.asarray(-1.0), "log_lam": jnp.asarray(-2.0)}


def test_kernel_ridge_hypergradient_matches_autodiff_through_the_solve(
    kernel_data):
  solve = hippojax.custom_root(kernel_ridge_optimality, solver=TIGHT_CG,
                               symmetric=True)(kernel_ridge_solve)
  got = jax.grad(kernel_ridge_val, argnums=1)(solve, KERNEL_HP, kernel_data)
  exact = jax.grad(kernel_ridge_val, argnums=1)(kernel_ridge_solve, KERNEL_HP,
                                                kernel_data)
  assert rel_err(got, exact) < 1e-8
  assert all(abs(float(v)) > 1e-3 for v in jax.tree.leaves(exact))


def test_jit_and_vmap_over_hyperparameters_without_recompiling(kernel_data):
  solve = hippojax.custom_root(kernel_ridge_optimality, solver=TIGHT_CG,
                               symmetric=True)(kernel_ridge_solve)
  hypergrad = jax.jit(jax.grad(
      lambda hp, data: kernel_ridge_val(solve, hp, data)))
  exact_fn = jax.jit(jax.grad(
      lambda hp, data: kernel_ridge_val(kernel_ridge_solve, hp, data)))
  grids = [{"log_gamma": jnp.asarray(g), "log_lam": jnp.asarray(l)}
           for g, l in [(-1.0, -2.0), (-0.5, -1.0), (-2.0, -3.0)]]
  for hp in grids:
    assert rel_err(hypergrad(hp, kernel_data), exact_fn(hp, kernel_data)) < 1e-8
  assert hypergrad._cache_size() == 1
  batched = jax.tree.map(lambda *x: jnp.stack(x), *grids)
  vmapped = jax.jit(jax.vmap(hypergrad, in_axes=(0, None)))
  out = vmapped(batched, kernel_data)
  for i, hp in enumerate(grids):
    assert rel_err(jax.tree.map(lambda x: x[i], out),
                   exact_fn(hp, kernel_data)) < 1e-8
  vmapped(jax.tree.map(lambda x: x + 0.1, batched), kernel_data)
  assert vmapped._cache_size() == 1


# ----------------------------------------------------------------------------
# Multiclass logistic regression on iris: params {"W", "b"}, int labels.
# ----------------------------------------------------------------------------


def logreg_nll(params, X, labels):
  logits = X @ params["W"] + params["b"]
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) -
                  jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0])


def logreg_loss(params, log_l2, X, labels):
  """Cross-entropy + ½Σ e^λ W² + a fixed ½·10⁻²‖b‖² (softmax intercepts are
  only defined up to a constant without it)."""
  return (logreg_nll(params, X, labels) +
          0.5 * jnp.sum(jnp.exp(log_l2) * params["W"]**2) +
          0.5e-2 * jnp.sum(params["b"]**2))


def logreg_newton(init_params, log_l2, X, labels):
  """Newton's method: converges to machine precision on this strongly
  convex loss."""
  flat, unravel = jax.flatten_util.ravel_pytree(init_params)
  f = lambda v: logreg_loss(unravel(v), log_l2, X, labels)

  def body(_, v):
    return v - jnp.linalg.solve(jax.hessian(f)(v), jax.grad(f)(v))

  return unravel(jax.lax.fori_loop(0, 25, body, flat))


def logreg_val(params, log_l2, data):
  del log_l2
  return logreg_nll(params, data["Xv"], data["yv"])


@pytest.fixture(scope="module")
def iris():
  X, y = datasets.load_iris(return_X_y=True)
  X = (X - X.mean(0)) / X.std(0)
  perm = np.random.default_rng(0).permutation(len(y))
  X, y = X[perm], y[perm]
  data = {"X": jnp.asarray(X[:90]), "y": jnp.asarray(y[:90], jnp.int32),
          "Xv": jnp.asarray(X[90:]), "yv": jnp.asarray(y[90:], jnp.int32)}
  init = {"W": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
  # One L2 strength per (feature, class) weight.
  log_l2 = jnp.asarray(np.random.default_rng(1).uniform(-3, -1, (4, 3)))
  return data, init, log_l2


@jax.jit
def _dense_logreg_hypergrad(iris):
  """∇_λ L_val − (∂²_{wλ} L)ᵀ H⁻¹ ∇_w L_val with dense matrices."""
  data, init, log_l2 = iris
  w = logreg_newton(init, log_l2, data["X"], data["y"])
  flat, unravel = jax.flatten_util.ravel_pytree(w)
  train = lambda v, lam: logreg_loss(unravel(v), lam, data["X"], data["y"])
  g_w = jax.grad(lambda v: logreg_val(unravel(v), log_l2, data))(flat)
  h = jax.hessian(train)(flat, log_l2)
  mixed = jax.jacobian(jax.grad(train), argnums=1)(flat, log_l2)
  return -jnp.einsum("p...,p->...", mixed, jnp.linalg.solve(h, g_w))


@pytest.mark.parametrize("decorate", ["root", "fixed_point_hessian",
                                      "fixed_point_gmres"])
def test_multiclass_logreg_hypergradient(iris, decorate):
  data, init, log_l2 = iris
  if decorate == "root":
    deco = hippojax.custom_root(jax.grad(logreg_loss), solver=TIGHT_CG,
                                symmetric=True)
  else:
    # Newton finds a fixed point of any gradient step on the same loss.
    step = hippojax.gradient_step(
        lambda w, lam, batch: logreg_loss(w, lam, *batch), 0.5)
    system = "hessian" if decorate == "fixed_point_hessian" else "fixed_point"
    solver = TIGHT_CG if system == "hessian" else TIGHT_GMRES
    deco = hippojax.custom_fixed_point(step, solver=solver, system=system)
    newton = logreg_newton
    solve_batch = lambda init, lam, batch: newton(init, lam, *batch)
  solve = deco(logreg_newton if decorate == "root" else solve_batch)
  args = ((data["X"], data["y"]),) if decorate != "root" else (
      data["X"], data["y"])
  outer = lambda lam: logreg_val(solve(init, lam, *args), lam, data)
  got = jax.jit(jax.grad(outer))(log_l2)
  exact = _dense_logreg_hypergrad(iris)
  assert rel_err(got, exact) < 1e-8
  # Not a vacuous comparison: the hypergradient is far from zero.
  assert float(jnp.abs(exact).max()) > 1e-3


def test_multiclass_logreg_matches_finite_differences(iris):
  data, init, log_l2 = iris
  solve = hippojax.custom_root(jax.grad(logreg_loss), solver=TIGHT_CG,
                               symmetric=True)(logreg_newton)
  outer = jax.jit(lambda lam: logreg_val(
      solve(init, lam, data["X"], data["y"]), lam, data))
  got = jax.grad(outer)(log_l2)
  direction = jnp.asarray(np.random.default_rng(2).normal(size=(4, 3)))
  eps = 1e-5
  fd = (outer(log_l2 + eps * direction) -
        outer(log_l2 - eps * direction)) / (2 * eps)
  np.testing.assert_allclose(jnp.vdot(got, direction), fd, rtol=1e-6)


# ----------------------------------------------------------------------------
# Lasso through its proximal-gradient fixed point (non-smooth).
# ----------------------------------------------------------------------------


def soft_threshold(u, t):
  return jnp.sign(u) * jnp.maximum(jnp.abs(u) - t, 0.0)


def ista_step(w, lam, X, y):
  """One proximal-gradient step on ½‖Xw − y‖²/n + λ‖w‖₁, step 1/L."""
  n = X.shape[0]
  lr = n / jnp.linalg.norm(X, 2)**2
  return soft_threshold(w - lr * X.T @ (X @ w - y) / n, lr * lam)


def ista(init_params, lam, X, y):
  return jax.lax.fori_loop(0, 3000, lambda _, w: ista_step(w, lam, X, y),
                           init_params)


@pytest.fixture(scope="module")
def lasso():
  X, y, coef = datasets.make_regression(
      n_samples=60, n_features=10, n_informative=4, noise=5.0, coef=True,
      random_state=0)
  X = X / np.linalg.norm(X, axis=0) * np.sqrt(60)
  return jnp.asarray(X), jnp.asarray(y / 10.0)


def test_lasso_jacobian_through_the_proximal_fixed_point(lasso):
  X, y = lasso
  lam = 0.1
  solve = hippojax.custom_fixed_point(ista_step, solver=TIGHT_GMRES)(ista)
  w = jax.jit(solve)(jnp.zeros(X.shape[1]), lam, X, y)
  support = np.flatnonzero(np.abs(np.asarray(w)) > 1e-12)
  assert 0 < len(support) < X.shape[1]  # a genuinely non-smooth point
  # On the support, (X_SᵀX_S/n) w_S = X_Sᵀy/n − λ sign(w_S); off it w = 0.
  xs = X[:, support]
  exact = np.zeros(X.shape[1])
  exact[support] = -np.linalg.solve(xs.T @ xs / len(y),
                                    np.sign(np.asarray(w)[support]))
  jac = jax.jit(jax.jacrev(solve, argnums=1))(jnp.zeros(X.shape[1]), lam, X,
                                              y)
  np.testing.assert_allclose(jac, exact, rtol=1e-8, atol=1e-12)
  # Finite differences of the solver itself agree (the support is stable).
  eps = 1e-6
  fd = jax.jit(lambda lam: (solve(jnp.zeros(10), lam + eps, X, y) -
                            solve(jnp.zeros(10), lam - eps, X, y)) / (2 * eps))
  fd = fd(lam)
  np.testing.assert_allclose(jac, fd, rtol=1e-5, atol=1e-8)


def box_qp_step(w, c, Q):
  """Projected gradient on ½wᵀQw − cᵀw over the box [0, 1]ᵈ, step 1/L."""
  lr = 1.0 / jnp.linalg.eigvalsh(Q)[-1]
  return jnp.clip(w - lr * (Q @ w - c), 0.0, 1.0)


def box_qp(init_params, c, Q):
  return jax.lax.fori_loop(0, 2000, lambda _, w: box_qp_step(w, c, Q),
                           init_params)


def test_box_constrained_qp_jacobian_through_projected_gradient():
  rng = np.random.default_rng(3)
  a = rng.normal(size=(30, 8))
  Q = jnp.asarray(a.T @ a / 30 + 0.5 * np.eye(8))
  c = jnp.asarray(rng.normal(size=8))
  solve = hippojax.custom_fixed_point(box_qp_step, solver=TIGHT_GMRES)(box_qp)
  w = jax.jit(solve)(jnp.full(8, 0.5), c, Q)
  free = np.flatnonzero((np.asarray(w) > 1e-9) & (np.asarray(w) < 1 - 1e-9))
  assert 0 < len(free) < 8  # some bounds are active
  # On the free set Q_FF w_F = c_F − Q_FA w_A, so dw_F/dc_F = Q_FF⁻¹; the
  # active coordinates stay on their bounds.
  exact = np.zeros((8, 8))
  exact[np.ix_(free, free)] = np.linalg.inv(np.asarray(Q)[np.ix_(free, free)])
  jac = jax.jit(jax.jacrev(solve, argnums=1))(jnp.full(8, 0.5), c, Q)
  np.testing.assert_allclose(jac, exact, rtol=1e-8, atol=1e-12)


# ----------------------------------------------------------------------------
# The shared core, closures, diagnostics, damping.
# ----------------------------------------------------------------------------


def _train_closed_form(helpers, init, theta, batch):
  del init
  return helpers.ridge_solution(theta, batch)


@pytest.mark.parametrize("damping", [0.0, 0.05])
def test_same_rule_as_the_pure_hypergradients(ridge, helpers, damping):
  solver = hippojax.CG(tol=1e-12)
  solve = hippojax.custom_fixed_point(ridge.step, solver=solver,
                                      damping=damping)(
                                          functools.partial(_train_closed_form,
                                                            helpers))
  outer = lambda th: ridge.val_loss(solve(None, th, ridge.train), th,
                                    ridge.val)
  got = jax.grad(outer)(ridge.theta)
  pure = hippojax.hoag(ridge.step, ridge.val_loss, ridge.theta, ridge.params,
                       ridge.train, ridge.val, tol=1e-12, damping=damping)
  np.testing.assert_allclose(got, pure.grad, rtol=1e-10)
  if damping == 0.0:
    np.testing.assert_allclose(got, ridge.exact, rtol=1e-9)
  else:  # damping biases the result, visibly
    assert rel_err(got, ridge.exact) > 1e-4


def test_closed_over_hyperparameters_are_differentiated(regression):
  X, y = regression

  def outer(lam):
    # JAXopt users hit tracer leaks or silent zeros here; the closure is
    # converted to arguments, so this is the exact derivative.
    fun = lambda w, X, y: jax.grad(ridge_objective)(w, lam, X, y)
    solve = hippojax.custom_root(fun, solver=TIGHT_CG)(
        lambda init, X, y: ridge_closed_form(init, lam, X, y))
    return jnp.sum(solve(None, X, y)**2)

  ref = jax.grad(lambda lam: jnp.sum(ridge_closed_form(None, lam, X, y)**2))
  np.testing.assert_allclose(jax.grad(outer)(5.0), ref(5.0), rtol=1e-9)
  np.testing.assert_allclose(jax.jit(jax.grad(outer))(5.0), ref(5.0),
                             rtol=1e-9)


def test_diagnostics_are_reported_inside_grad(regression):
  X, y = regression
  seen = []
  solve = hippojax.custom_root(
      jax.grad(ridge_objective), solver=TIGHT_CG, symmetric=True,
      on_diagnostics=seen.append)(ridge_closed_form)
  jax.jit(jax.grad(lambda lam: solve(None, lam, X, y).sum()))(5.0)
  jax.effects_barrier()
  (info,) = seen
  assert isinstance(info, hippojax.HyperGradInfo) and info.solution is None
  assert bool(info.converged) and float(info.residual) < 1e-12
  assert float(info.fixed_point_residual) < 1e-12


def test_a_non_stationary_solution_is_flagged_not_converged(regression):
  X, y = regression
  seen = []

  def sloppy(init_params, lam, X, y):  # stops far from the minimiser
    return ridge_closed_form(init_params, lam, X, y) + 0.5

  solve = hippojax.custom_root(jax.grad(ridge_objective), solver=TIGHT_CG,
                               on_diagnostics=seen.append)(sloppy)
  jax.grad(lambda lam: solve(None, lam, X, y).sum())(5.0)
  jax.effects_barrier()
  assert not bool(seen[0].converged)
  assert float(seen[0].fixed_point_residual) > 1e-3
  # The default hook warns.
  warn = hippojax.custom_root(jax.grad(ridge_objective),
                              solver=TIGHT_CG)(sloppy)
  with pytest.warns(RuntimeWarning, match="did not converge"):
    jax.grad(lambda lam: warn(None, lam, X, y).sum())(5.0)
    jax.effects_barrier()
  # A converged solve stays quiet.
  quiet = hippojax.custom_root(jax.grad(ridge_objective),
                               solver=TIGHT_CG)(ridge_closed_form)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    jax.grad(lambda lam: quiet(None, lam, X, y).sum())(5.0)
    jax.effects_barrier()


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------


def test_bad_options_are_rejected_when_decorating():
  fun = jax.grad(ridge_objective)
  with pytest.raises(ValueError, match="solver='lu'"):
    hippojax.custom_root(fun, solver="lu")
  with pytest.raises(ValueError, match="damping"):
    hippojax.custom_root(fun, damping=-1.0)
  with pytest.raises(TypeError, match="on_diagnostics"):
    hippojax.custom_root(fun, on_diagnostics=3)
  with pytest.raises(TypeError, match="has_aux"):
    hippojax.custom_root(fun, has_aux="yes")
  with pytest.raises(TypeError, match="optimality_fun must be callable"):
    hippojax.custom_root(None)
  with pytest.raises(ValueError, match="system='hessian'"):
    hippojax.custom_fixed_point(ista_step, system="hessian")


def test_bad_calls_name_the_argument(regression):
  X, y = regression
  solve = hippojax.custom_root(jax.grad(ridge_objective))
  with pytest.raises(TypeError, match=r"argument method of the solver is a "
                     "str"):
    solve(lambda init, lam, X, y, method: ridge_closed_form(init, lam, X, y))(
        None, 5.0, X, y, "svd")
  # optimality_fun must take the solver's arguments, in the same order.
  short = hippojax.custom_root(lambda w, lam: w * lam)(ridge_closed_form)
  with pytest.raises(TypeError, match=r"calling optimality_fun\(params, lam, "
                     r"X, y\) failed"):
    short(None, 5.0, X, y)
  wrong = hippojax.custom_root(lambda w, lam, X, y: X @ w)(ridge_closed_form)
  with pytest.raises(ValueError, match="shape"):
    wrong(None, 5.0, X, y)
  aux = hippojax.custom_root(jax.grad(ridge_objective),
                             has_aux=True)(ridge_closed_form)
  with pytest.raises(TypeError, match="pair"):
    aux(None, 5.0, X, y)

  def kwonly(init, lam, X, *, y):
    return ridge_closed_form(init, lam, X, y)

  with pytest.raises(TypeError, match="keyword-only"):
    hippojax.custom_root(jax.grad(ridge_objective))(kwonly)(None, 5.0, X, y=y)


def test_forward_mode_is_refused_by_jax(regression):
  X, y = regression
  solve = hippojax.custom_root(jax.grad(ridge_objective))(ridge_closed_form)
  with pytest.raises(TypeError, match="forward-mode"):
    jax.jacfwd(solve, argnums=1)(None, 5.0, X, y)
