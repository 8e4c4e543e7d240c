r"""Pluggable linear solvers on pytrees: ``solve(matvec, b, init) -> (x, stats)``.

Each solver is a small frozen dataclass, so two solvers with equal options are
equal and hash alike, and passing one as a static argument never triggers a
recompilation. Every solver returns :class:`~hippojax.SolverStats` with the
*honest* relative residual ``‖b − A x‖ / ‖b‖``, recomputed from the returned
``x`` with one extra product, instead of discarding it.

In hippojax the operator is ``A = I − Jᵀ`` with ``J = ∂Φ/∂w`` the Jacobian of
one training step.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import jax.scipy.sparse.linalg as jsp_linalg
import optax

from hippojax._src import checks
from hippojax._src.base import SolverStats

PyTree = Any
MatVec = Callable[[PyTree], PyTree]


def _norm(tree: PyTree) -> jax.Array:
  return optax.tree.norm(tree)


def default_tol(dtype) -> float:
  """The default relative tolerance for a system in ``dtype``.

  ``1e-6`` in float64, ``1e-4`` in float32 and ``1e-2`` in 16-bit floats:
  tolerances each can reach (the residual of a float32 solve stalls a few
  orders of magnitude above its machine epsilon, 1.2e-7, and CG iterating
  below that floor loses orthogonality and drifts).
  """
  bits = jnp.finfo(dtype).bits
  return 1e-6 if bits >= 64 else 1e-4 if bits >= 32 else 1e-2


def resolve_tol(tol, b: PyTree):
  """``tol``, or the :func:`default_tol` of ``b``'s widest dtype."""
  if tol is not None:
    return tol
  return default_tol(optax.tree.dtype(b, "highest"))


def relative_residual(matvec: MatVec, b: PyTree, x: PyTree) -> jax.Array:
  """``‖b − A x‖ / ‖b‖`` (``‖b − A x‖`` when ``b = 0``; ``nan`` if ``x`` is
  not finite), with one product."""
  r_norm = _norm(optax.tree.sub(b, matvec(x)))
  b_norm = _norm(b)
  residual = r_norm / jnp.where(b_norm > 0, b_norm, 1.0)
  return jnp.where(jnp.isfinite(_norm(x)), residual, jnp.nan)


def _stats(matvec: MatVec, b: PyTree, x: PyTree, tol, num_iters,
           curvature=jnp.nan) -> SolverStats:
  """Recomputes the relative residual from ``x`` (one product)."""
  residual = relative_residual(matvec, b, x)
  converged = jnp.isfinite(residual) & (residual <= tol)
  return SolverStats(jnp.asarray(num_iters, jnp.int32), residual, converged,
                     jnp.asarray(curvature, residual.dtype))


def _initial(b: PyTree, init: PyTree | None) -> PyTree:
  return optax.tree.zeros_like(b) if init is None else init


@dataclasses.dataclass(frozen=True)
class Neumann:
  r"""Truncated Neumann series (Richardson iteration).

  .. math::
     x = x_0 + \sum_{j=0}^{K} (I - A)^j r_0, \qquad r_0 = b - A x_0,

  which for ``A = I − Jᵀ`` and ``x_0 = 0`` is ``Σ_{j=0}^{K} (Jᵀ)^j b``, using
  ``K = num_iters`` products (plus one for the honest residual
  ``‖b − A x‖ / ‖b‖``). It converges when the spectral radius of ``I − A``
  is below one; ``num_iters=0`` gives ``x = x_0 + r_0`` (``b`` from zero).

  Attributes:
    num_iters: number of series terms beyond the first (products with
      ``I − A``), ``>= 0``.
    tol: relative residual under which ``converged`` is reported. It does not
      stop the series early: the cost is always ``num_iters`` products.
  """

  num_iters: int = 10
  tol: float = 1e-3

  def __post_init__(self):
    checks.check_int("num_iters", self.num_iters, 0)
    checks.check_positive("tol", self.tol)

  def __call__(self, matvec: MatVec, b: PyTree,
               init: PyTree | None = None) -> tuple[PyTree, SolverStats]:
    complement = lambda v: optax.tree.sub(v, matvec(v))  # (I − A) v
    r0 = b if init is None else optax.tree.sub(b, matvec(init))

    def body(_, carry):
      term, total = carry
      term = complement(term)
      return term, optax.tree.add(total, term)

    _, total = jax.lax.fori_loop(0, self.num_iters, body, (r0, r0))
    x = total if init is None else optax.tree.add(init, total)
    # In exact arithmetic b − A x = (I − A)^{K+1} r0, but that recursion hides
    # the rounding error of the sum (it reports 1e-79 where ‖b − A x‖/‖b‖ is
    # 1e-16): recompute the residual from x, for the same one product.
    return x, _stats(matvec, b, x, self.tol, self.num_iters)


@dataclasses.dataclass(frozen=True)
class CG:
  r"""Conjugate gradient for symmetric positive-definite ``A``.

  The iteration and stopping rule are those of
  :func:`jax.scipy.sparse.linalg.cg` (stop when ``‖r_k‖ <= tol·‖b‖`` or after
  ``maxiter`` iterations). It is written out here because ``jax.scipy``'s CG
  returns no information at all (nor does JAXopt's ``solve_cg``), and HOAG
  needs the iteration count and residual for its diagnostics and warm starts.

  CG needs ``A`` symmetric positive definite. It checks the second half on
  the way: each iteration measures the curvature ``pᵀAp`` along its search
  direction, and if it is not positive (an indefinite Hessian, at a saddle
  point of a non-convex loss) CG stops at the current iterate, reports the
  Rayleigh quotient ``pᵀAp / pᵀp`` in ``stats.curvature`` and does not
  converge. Damping (``A + δI``) restores positive curvature. Symmetry
  cannot be checked this cheaply; on a non-symmetric ``A`` the honest
  residual shows the failure.

  Attributes:
    tol: relative tolerance, ``> 0``; ``None`` picks :func:`default_tol` of
      the system's dtype (``1e-6`` in float64, ``1e-4`` in float32).
    maxiter: maximum number of iterations (products), ``>= 1``.
  """

  tol: float | None = None
  maxiter: int = 100

  def __post_init__(self):
    if self.tol is not None:
      checks.check_positive("tol", self.tol)
    checks.check_int("maxiter", self.maxiter, 1)

  def __call__(self, matvec: MatVec, b: PyTree,
               init: PyTree | None = None) -> tuple[PyTree, SolverStats]:
    return conjugate_gradient(matvec, b, init, tol=resolve_tol(self.tol, b),
                              maxiter=self.maxiter)


def conjugate_gradient(matvec: MatVec, b: PyTree, init: PyTree | None, *,
                       tol, maxiter: int) -> tuple[PyTree, SolverStats]:
  """The iteration behind :class:`CG`; ``tol`` may be a traced array.

  HOAG's decreasing tolerance changes every outer step, so the optax
  transform passes it as an array rather than building a new (static)
  ``CG`` each step, which would recompile.
  """
  x0 = _initial(b, init)
  r0 = b if init is None else optax.tree.sub(b, matvec(x0))
  gamma0 = optax.tree.vdot(r0, r0)
  # A tolerance below machine epsilon is floored there: a smaller residual is
  # rounding noise, and iterating on it only breaks down (pᵀAp underflows
  # to 0 and would read as non-positive curvature).
  eps = jnp.finfo(jnp.real(gamma0).dtype).eps
  threshold = jnp.maximum(tol**2, eps**2) * optax.tree.vdot(b, b)
  inf = jnp.full((), jnp.inf, jnp.real(gamma0).dtype)

  def cond(carry):
    _, _, gamma, _, k, curvature = carry
    return (gamma > threshold) & (k < maxiter) & (curvature > 0)

  def body(carry):
    x, r, gamma, p, k, curvature = carry
    ap = matvec(p)
    pap = optax.tree.vdot(p, ap)
    pp = optax.tree.vdot(p, p)
    # pᵀAp <= 0 along a non-zero p: A is not positive definite. Stop without
    # stepping (the step would go uphill or to infinity) and report it. A
    # zero p means the residual vanished (or underflowed): stop, converged,
    # with nothing to report.
    nonzero = pp > 0
    curvature = jnp.where(
        nonzero, jnp.minimum(curvature, pap / jnp.where(nonzero, pp, 1.0)),
        curvature)
    alpha = jnp.where(pap > 0, gamma / jnp.where(pap > 0, pap, 1.0), 0.0)
    x = optax.tree.add_scale(x, alpha, p)
    r = optax.tree.add_scale(r, -alpha, ap)
    gamma_new = jnp.where(nonzero, optax.tree.vdot(r, r), 0.0)
    beta = gamma_new / jnp.where(gamma != 0, gamma, 1.0)
    p = optax.tree.add_scale(r, beta, p)
    return x, r, gamma_new, p, k + 1, curvature

  def run(x, r, k, curvature):
    """CG from ``x`` with residual ``r``; returns the true final residual."""
    x, *_, k, curvature = jax.lax.while_loop(
        cond, body, (x, r, optax.tree.vdot(r, r), r, k, curvature))
    return x, optax.tree.sub(b, matvec(x)), k, curvature

  # In low precision CG's recursive residual drifts from the true one,
  # b − A x: the loop can stop on the former while the latter is still above
  # tol. It then restarts from x with the true residual (at most twice);
  # otherwise this costs nothing, the true residual being needed anyway.
  def drifted(carry):
    _, r, k, curvature, restarts = carry
    return ((optax.tree.vdot(r, r) > threshold) & (k < maxiter) &
            (curvature > 0) & (restarts < 2))

  def restart(carry):
    x, r, k, curvature, restarts = carry
    return (*run(x, r, k, curvature), restarts + 1)

  x, r, k, curvature, _ = jax.lax.while_loop(
      drifted, restart, (*run(x0, r0, jnp.asarray(0), inf), 0))
  b_norm = _norm(b)
  residual = _norm(r) / jnp.where(b_norm > 0, b_norm, 1.0)
  residual = jnp.where(jnp.isfinite(_norm(x)), residual, jnp.nan)
  return x, SolverStats(jnp.asarray(k, jnp.int32), residual,
                        jnp.isfinite(residual) & (residual <= tol),
                        jnp.asarray(curvature, residual.dtype))


@dataclasses.dataclass(frozen=True)
class GMRES:
  """Restarted GMRES (:func:`jax.scipy.sparse.linalg.gmres`), any square ``A``.

  Use it for non-symmetric fixed-point maps such as momentum or Adam steps.
  ``jax.scipy`` does not report the iterations used, so ``num_iters`` is ``-1``;
  the residual is recomputed honestly.

  Attributes:
    tol: relative tolerance, ``> 0``; ``None``: :func:`default_tol` of the
      system's dtype.
    maxiter: maximum number of restart cycles, ``>= 1``.
    restart: Krylov subspace size per cycle, ``>= 1``.
  """

  tol: float | None = None
  maxiter: int = 10
  restart: int = 20

  def __post_init__(self):
    if self.tol is not None:
      checks.check_positive("tol", self.tol)
    checks.check_int("maxiter", self.maxiter, 1)
    checks.check_int("restart", self.restart, 1)

  def __call__(self, matvec: MatVec, b: PyTree,
               init: PyTree | None = None) -> tuple[PyTree, SolverStats]:
    tol = resolve_tol(self.tol, b)
    x, _ = jsp_linalg.gmres(matvec, b, x0=_initial(b, init), tol=tol,
                            atol=0.0, restart=self.restart,
                            maxiter=self.maxiter, solve_method="batched")
    return x, _stats(matvec, b, x, tol, -1)


@dataclasses.dataclass(frozen=True)
class BiCGStab:
  """BiCGStab (:func:`jax.scipy.sparse.linalg.bicgstab`), any square ``A``.

  ``jax.scipy`` does not report the iterations used, so ``num_iters`` is
  ``-1``; the residual is recomputed honestly.

  Attributes:
    tol: relative tolerance, ``> 0``; ``None``: :func:`default_tol` of the
      system's dtype.
    maxiter: maximum number of iterations, ``>= 1``.
  """

  tol: float | None = None
  maxiter: int = 100

  def __post_init__(self):
    if self.tol is not None:
      checks.check_positive("tol", self.tol)
    checks.check_int("maxiter", self.maxiter, 1)

  def __call__(self, matvec: MatVec, b: PyTree,
               init: PyTree | None = None) -> tuple[PyTree, SolverStats]:
    tol = resolve_tol(self.tol, b)
    x, _ = jsp_linalg.bicgstab(matvec, b, x0=_initial(b, init), tol=tol,
                               atol=0.0, maxiter=self.maxiter)
    return x, _stats(matvec, b, x, tol, -1)


SOLVERS = {"neumann": Neumann, "cg": CG, "gmres": GMRES, "bicgstab": BiCGStab}


def get_solver(solver: Any) -> Callable:
  """Turns a solver name or instance into a ``solve(matvec, b, init)``."""
  if isinstance(solver, str):
    if solver not in SOLVERS:
      raise ValueError(f"solver={solver!r} is not one of {sorted(SOLVERS)}; "
                       "or pass a solver instance such as hippojax.CG(...).")
    return SOLVERS[solver]()
  if not callable(solver):
    raise TypeError(
        f"solver must be a name in {sorted(SOLVERS)} or a callable "
        f"solve(matvec, b, init) -> (x, SolverStats), got {solver!r}.")
  return solver
