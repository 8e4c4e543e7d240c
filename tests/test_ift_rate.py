"""``ift`` converges at the rate its theory predicts.

For a gradient step ``J = I − ηH`` is symmetric, ``q* = (ηH)⁻¹ ∇_w L_val`` and
the truncated series after K terms has error ``q_K − q* = −J^{K+1} q*``, so
``‖q_K − q*‖ ≤ ρ^{K+1} ‖q*‖`` with ``ρ = max_i |1 − η h_i|`` (``h_i`` from
``eigvalsh`` of the dense Hessian), and successive errors shrink by a factor
tending to ``ρ``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hippojax


@pytest.fixture(scope="module")
def spectrum(ridge):
  h = jax.hessian(ridge.train_loss)(ridge.params, ridge.theta, ridge.train)
  eigs = jnp.linalg.eigvalsh(h)
  g_w = jax.grad(ridge.val_loss)(ridge.params, ridge.theta, ridge.val)
  q_star = jnp.linalg.solve(ridge.lr * h, g_w)
  rho = float(jnp.max(jnp.abs(1 - ridge.lr * eigs)))
  return rho, q_star, g_w


def _q(ridge, num_iters):
  hg = hippojax.ift(ridge.step, ridge.val_loss, ridge.theta, ridge.params,
                    ridge.train, ridge.val, num_iters=num_iters)
  return hg


def test_error_bound(ridge, spectrum):
  """‖q_K − q*‖ ≤ ρ^{K+1}‖q*‖ for several K."""
  rho, q_star, _ = spectrum
  assert 0.3 < rho < 0.95  # a rate the test can observe
  q_norm = float(jnp.linalg.norm(q_star))
  for k in (1, 2, 5, 10, 20):
    err = float(jnp.linalg.norm(_q(ridge, k).info.solution - q_star))
    assert err <= rho**(k + 1) * q_norm * (1 + 1e-9)
    # ... and the bound is not vacuous: the error is within a factor of it.
    assert err >= 1e-3 * rho**(k + 1) * q_norm


def test_ratio_of_successive_errors_tends_to_rho(ridge, spectrum):
  """e_{K+1}/e_K → ρ (the top eigenvalue of J dominates at large K)."""
  rho, q_star, _ = spectrum
  errs = [float(jnp.linalg.norm(_q(ridge, k).info.solution - q_star))
          for k in (40, 41, 42)]
  # Far above round-off, so the ratio measures the iteration, not noise.
  assert errs[-1] > 1e-10 * float(jnp.linalg.norm(q_star))
  for e0, e1 in zip(errs, errs[1:]):
    np.testing.assert_allclose(e1 / e0, rho, rtol=0.03)


def test_residual_is_that_of_the_series(ridge, spectrum):
  """info.residual = ‖(I − Jᵀ)q_K − ∇_w L_val‖/‖∇_w L_val‖, dense."""
  _, _, g_w = spectrum
  h = jax.hessian(ridge.train_loss)(ridge.params, ridge.theta, ridge.train)
  for k in (0, 3, 20):
    hg = _q(ridge, k)
    dense = jnp.linalg.norm(ridge.lr * h @ hg.info.solution - g_w)
    np.testing.assert_allclose(hg.info.residual, dense / jnp.linalg.norm(g_w),
                               rtol=1e-9)
    assert int(hg.info.num_iters) == k
    assert bool(hg.info.converged) == bool(hg.info.residual <= 1e-3)


def test_zero_terms_is_val_gradient(ridge, spectrum):
  """num_iters=0 uses q = ∇_w L_val exactly (and its hypergradient)."""
  _, _, g_w = spectrum
  hg = _q(ridge, 0)
  np.testing.assert_array_equal(hg.info.solution, g_w)
  # hypergrad = ∇_λ L_val + Bᵀ g_w with B = −η ∂²_{wλ} L_train.
  mixed = jax.jacobian(jax.grad(ridge.train_loss), argnums=1)(
      ridge.params, ridge.theta, ridge.train)
  np.testing.assert_allclose(hg.grad, -ridge.lr * mixed.T @ g_w, rtol=1e-12)


def test_series_is_partial_sum(ridge, spectrum):
  """q_K = Σ_{j=0}^{K} J^j ∇_w L_val with the dense J = I − ηH."""
  _, _, g_w = spectrum
  h = jax.hessian(ridge.train_loss)(ridge.params, ridge.theta, ridge.train)
  jac = jnp.eye(h.shape[0]) - ridge.lr * h
  term, total = g_w, g_w
  for _ in range(5):
    term = jac @ term
    total = total + term
  np.testing.assert_allclose(_q(ridge, 5).info.solution, total, rtol=1e-12)
