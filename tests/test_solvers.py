"""Property tests of the linear solvers ``solve(matvec, b, init)``.

Exact answers: ``np.linalg.solve`` on random dense systems, the honest
residual ``‖b − A x‖ / ‖b‖`` recomputed with NumPy, and the Neumann partial
sums ``Σ_j (I − A)^j r_0`` written out with matrix powers.
"""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import hippojax

SETTINGS = settings(max_examples=20, deadline=None)
SEEDS = st.integers(0, 2**32 - 1)
SIZES = st.sampled_from([1, 3, 6])


@functools.partial(jax.jit, static_argnums=0)
def _solve(solver, a, b, init=None):
  return solver(lambda v: a @ v, b, init)


@functools.partial(jax.jit, static_argnums=0)
def _solve_tree(solver, a, b, init=None):
  unravel = jax.flatten_util.ravel_pytree(b)[1]
  matvec = lambda v: unravel(a @ jax.flatten_util.ravel_pytree(v)[0])
  return solver(matvec, b, init)


def _spd(rng, n, max_eig=20.0):
  """Random SPD matrix with eigenvalues in [1, max_eig] (both attained)."""
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  eigs = np.concatenate([[1.0, max_eig], rng.uniform(1.0, max_eig, n)])[:n]
  return (q * eigs) @ q.T, eigs.max() / eigs.min()


def _contraction(rng, n, radius):
  """Random non-symmetric M with spectral radius ``radius``."""
  m = rng.normal(size=(n, n))
  return m * radius / np.max(np.abs(np.linalg.eigvals(m)))


def _well_conditioned(rng, n):
  """Random non-symmetric A with singular values in [0.5, 1.5]."""
  g = rng.normal(size=(n, n))
  a = np.eye(n) + 0.5 * g / np.linalg.norm(g, 2)
  return a, 3.0


def _honest_residual(a, b, x):
  return np.linalg.norm(b - a @ x) / np.linalg.norm(b)


def _check_solution(a, b, x, stats, tol, cond):
  """x solves A x = b as well as the reported residual says."""
  x = np.asarray(x)
  exact = np.linalg.solve(a, b)
  residual = _honest_residual(a, b, x)
  # Equal up to the rounding of the two recomputations (‖b‖·1e-13).
  np.testing.assert_allclose(stats.residual, residual, rtol=1e-6,
                             atol=1e-13)
  assert bool(stats.converged) == bool(stats.residual <= tol)
  assert float(stats.residual) <= tol
  # ‖x − x*‖/‖x*‖ ≤ κ(A)·‖b − A x‖/‖b‖.
  err = np.linalg.norm(x - exact) / np.linalg.norm(exact)
  assert err <= cond * residual * (1 + 1e-6) + 1e-14


@SETTINGS
@given(seed=SEEDS, n=SIZES)
def test_cg_random_spd(seed, n):
  """CG on SPD systems: np.linalg.solve, honest residual, converged flag."""
  rng = np.random.default_rng(seed)
  a, cond = _spd(rng, n)
  b = rng.normal(size=n)
  solver = hippojax.CG(tol=1e-10, maxiter=100)
  x, stats = _solve(solver, a, b)
  _check_solution(a, b, x, stats, solver.tol, cond)
  assert 1 <= int(stats.num_iters) <= solver.maxiter


@SETTINGS
@given(seed=SEEDS, n=SIZES)
def test_cg_warm_start_from_exact_solution(seed, n):
  """Started at np.linalg.solve's answer, CG stops after 0 iterations."""
  rng = np.random.default_rng(seed)
  a, _ = _spd(rng, n)
  b = rng.normal(size=n)
  exact = np.linalg.solve(a, b)
  x, stats = _solve(hippojax.CG(tol=1e-8), a, b, jnp.asarray(exact))
  assert int(stats.num_iters) == 0
  np.testing.assert_array_equal(x, exact)
  assert bool(stats.converged)


@SETTINGS
@given(seed=SEEDS)
def test_cg_one_iteration_is_steepest_descent(seed):
  """maxiter=1: x₁ = (bᵀb / bᵀAb)·b, and the flag follows the residual."""
  rng = np.random.default_rng(seed)
  a, _ = _spd(rng, 6)
  b = rng.normal(size=6)
  solver = hippojax.CG(tol=1e-10, maxiter=1)
  x, stats = _solve(solver, a, b)
  np.testing.assert_allclose(x, (b @ b) / (b @ a @ b) * b, rtol=1e-12)
  assert int(stats.num_iters) == 1
  np.testing.assert_allclose(stats.residual, _honest_residual(a, b, x),
                             rtol=1e-10)
  assert not bool(stats.converged)


@SETTINGS
@given(seed=SEEDS, n=SIZES, radius=st.floats(0.05, 0.7))
def test_neumann_contraction(seed, n, radius):
  """A = I − M, ρ(M) < 1: the series converges to np.linalg.solve."""
  rng = np.random.default_rng(seed)
  m = _contraction(rng, n, radius)
  a = np.eye(n) - m
  b = rng.normal(size=n)
  solver = hippojax.Neumann(num_iters=300, tol=1e-10)
  x, stats = _solve(solver, a, b)
  _check_solution(a, b, x, stats, solver.tol, np.linalg.cond(a))
  assert int(stats.num_iters) == 300


@SETTINGS
@given(seed=SEEDS, n=SIZES, radius=st.floats(0.05, 1.5))
def test_neumann_partial_sums(seed, n, radius):
  """x = x₀ + Σ_{j=0}^{K} M^j (b − A x₀), K = 3, with and without x₀."""
  rng = np.random.default_rng(seed)
  m = _contraction(rng, n, radius)
  a = np.eye(n) - m
  b, x0 = rng.normal(size=n), rng.normal(size=n)
  solver = hippojax.Neumann(num_iters=3, tol=1e-3)
  for init in (None, x0):
    r0 = b if init is None else b - a @ init
    expected = sum(np.linalg.matrix_power(m, j) @ r0 for j in range(4))
    expected = expected if init is None else init + expected
    x, stats = _solve(solver, a, b, init)
    np.testing.assert_allclose(x, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats.residual, _honest_residual(a, b, x),
                               rtol=1e-8, atol=1e-14)
    assert bool(stats.converged) == bool(stats.residual <= solver.tol)


@pytest.mark.slow  # compiles GMRES and BiCGStab for several sizes
@SETTINGS
@given(seed=SEEDS, n=SIZES, name=st.sampled_from(["gmres", "bicgstab"]))
def test_krylov_nonsymmetric(seed, n, name):
  """GMRES/BiCGStab on random non-symmetric, well-conditioned systems."""
  rng = np.random.default_rng(seed)
  a, cond = _well_conditioned(rng, n)
  b = rng.normal(size=n)
  solver = {"gmres": hippojax.GMRES(tol=1e-10),
            "bicgstab": hippojax.BiCGStab(tol=1e-10)}[name]
  x, stats = _solve(solver, a, b)
  _check_solution(a, b, x, stats, solver.tol, cond)
  assert int(stats.num_iters) == -1


@pytest.mark.parametrize("name", ["gmres", "bicgstab"])
def test_krylov_warm_start(name):
  """Warm-started at np.linalg.solve's answer, the solution stays there."""
  rng = np.random.default_rng(0)
  a, _ = _well_conditioned(rng, 6)
  b = rng.normal(size=6)
  exact = np.linalg.solve(a, b)
  x, stats = _solve(TREE_SOLVERS[name], a, b, jnp.asarray(exact))
  np.testing.assert_allclose(x, exact, rtol=1e-9, atol=1e-12)
  assert bool(stats.converged)


def _tree_system(rng, name):
  """A 7×7 system on b = {"u": (3,), "v": (2, 2)} suited to the solver."""
  n = 7
  if name == "cg":
    a, cond = _spd(rng, n)
  elif name == "neumann":
    a = np.eye(n) - _contraction(rng, n, 0.5)
    cond = np.linalg.cond(a)
  else:
    a, cond = _well_conditioned(rng, n)
  b = {"u": jnp.asarray(rng.normal(size=3)),
       "v": jnp.asarray(rng.normal(size=(2, 2)))}
  return a, b, cond


TREE_SOLVERS = {
    "cg": hippojax.CG(tol=1e-10),
    "neumann": hippojax.Neumann(num_iters=300, tol=1e-10),
    "gmres": hippojax.GMRES(tol=1e-10),
    "bicgstab": hippojax.BiCGStab(tol=1e-10),
}


@pytest.mark.slow  # compiles each of the four solvers
@SETTINGS
@given(seed=SEEDS, name=st.sampled_from(sorted(TREE_SOLVERS)))
def test_pytree_right_hand_side(seed, name):
  """Dict right-hand sides: same answer as the flattened dense solve."""
  rng = np.random.default_rng(seed)
  a, b, cond = _tree_system(rng, name)
  solver = TREE_SOLVERS[name]
  x, stats = _solve_tree(solver, a, b)
  assert jax.tree.structure(x) == jax.tree.structure(b)
  assert x["v"].shape == (2, 2)
  flat_b = np.asarray(jax.flatten_util.ravel_pytree(b)[0])
  flat_x = np.asarray(jax.flatten_util.ravel_pytree(x)[0])
  _check_solution(a, flat_b, flat_x, stats, solver.tol, cond)


@pytest.mark.parametrize("name", sorted(TREE_SOLVERS))
def test_zero_right_hand_side(name):
  """b = 0 has the exact answer x = 0, residual 0, converged."""
  a = np.eye(4) * 2.0 if name != "neumann" else np.eye(4) * 0.5
  x, stats = _solve(TREE_SOLVERS[name], a, np.zeros(4))
  np.testing.assert_array_equal(x, np.zeros(4))
  assert float(stats.residual) == 0.0
  assert bool(stats.converged)


@pytest.mark.parametrize("name", sorted(TREE_SOLVERS))
def test_non_finite_is_reported(name):
  """A NaN in A gives converged=False and a NaN residual, no exception."""
  a = np.eye(4) * 0.5
  a[1, 2] = np.nan
  x, stats = _solve(TREE_SOLVERS[name], a, np.ones(4))
  assert not bool(stats.converged)
  assert np.isnan(float(stats.residual))
  del x


def test_divergent_neumann_is_reported():
  """ρ(M) > 1: the series grows; converged=False with a large residual."""
  rng = np.random.default_rng(0)
  m = _contraction(rng, 5, 1.5)
  a = np.eye(5) - m
  b = rng.normal(size=5)
  x, stats = _solve(hippojax.Neumann(num_iters=60), a, b)
  assert not bool(stats.converged)
  assert float(stats.residual) > 1e6
  np.testing.assert_allclose(stats.residual, _honest_residual(a, b, x),
                             rtol=1e-6)
  # Past overflow the residual is NaN, still without an exception.
  _, stats = _solve(hippojax.Neumann(num_iters=3000), a, b)
  assert not bool(stats.converged)
  assert np.isnan(float(stats.residual))


def test_solvers_are_hashable_values():
  """Equal options: equal and hash alike (no recompilation as static args)."""
  for cls in (hippojax.CG, hippojax.Neumann, hippojax.GMRES,
              hippojax.BiCGStab):
    assert cls() == cls() and hash(cls()) == hash(cls())
  assert hippojax.CG(tol=1e-3) != hippojax.CG(tol=1e-4)
  a, b = np.eye(3) * 2.0, np.ones(3)
  before = _solve._cache_size()
  _solve(hippojax.CG(tol=1e-9), a, b)
  _solve(hippojax.CG(tol=1e-9), a * 3.0, b + 1.0)
  assert _solve._cache_size() == before + 1


@pytest.mark.parametrize("make, match", [
    (lambda: hippojax.CG(tol=0.0), "tol"),
    (lambda: hippojax.CG(tol=float("nan")), "tol"),
    (lambda: hippojax.CG(maxiter=0), "maxiter"),
    (lambda: hippojax.Neumann(num_iters=-1), "num_iters"),
    (lambda: hippojax.Neumann(tol=-1.0), "tol"),
    (lambda: hippojax.GMRES(restart=0), "restart"),
    (lambda: hippojax.GMRES(maxiter=0), "maxiter"),
    (lambda: hippojax.BiCGStab(tol=float("inf")), "tol"),
    (lambda: hippojax.BiCGStab(maxiter=0), "maxiter"),
])
def test_invalid_solver_options(make, match):
  """Options are validated when the solver is built, naming the option."""
  with pytest.raises(ValueError, match=match):
    make()


@pytest.mark.parametrize("make, match", [
    (lambda: hippojax.CG(maxiter=2.5), "maxiter"),
    (lambda: hippojax.Neumann(num_iters=True), "num_iters"),
    (lambda: hippojax.CG(tol="1e-3"), "tol"),
])
def test_invalid_solver_option_types(make, match):
  with pytest.raises(TypeError, match=match):
    make()


@SETTINGS
@given(seed=SEEDS, n=st.sampled_from([3, 8]),
       maxiter=st.integers(1, 8))
def test_cg_iterates_like_jax_scipy_cg(seed, n, maxiter):
  """Same iteration as jax.scipy.sparse.linalg.cg, stopped at equal counts."""
  rng = np.random.default_rng(seed)
  a = jnp.asarray(_spd(rng, n)[0])
  b = jnp.asarray(rng.normal(size=n))
  x0 = jnp.asarray(rng.normal(size=n))
  ours, stats = _solve(hippojax.CG(tol=1e-30, maxiter=maxiter), a, b, x0)
  theirs, _ = jax.scipy.sparse.linalg.cg(lambda v: a @ v, b, x0=x0,
                                         tol=1e-30, maxiter=maxiter)
  np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)
  assert 1 <= int(stats.num_iters) <= maxiter


def test_cg_restarts_when_its_recursive_residual_drifts_in_float32():
  """float32, condition 1e3, tol 3e-5: CG's recursive residual says done
  before the true one is; CG restarts from the true residual and meets it."""
  rng = np.random.default_rng(0)
  n, tol = 200, 3e-5
  for _ in range(10):
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = jnp.asarray((q * np.logspace(-3, 0, n)) @ q.T, jnp.float32)
    b = jnp.asarray(rng.normal(size=n), jnp.float32)
    x, stats = jax.jit(lambda b, a=a: hippojax.CG(tol=tol, maxiter=1000)(
        lambda v: a @ v, b))(b)
    true = float(jnp.linalg.norm(b - a @ x) / jnp.linalg.norm(b))
    assert bool(stats.converged) and int(stats.num_iters) < 1000
    assert true <= tol and float(stats.residual) == pytest.approx(true)
