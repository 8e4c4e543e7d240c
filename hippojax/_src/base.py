"""Result types shared by every hypergradient algorithm and linear solver."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


def all_finite(tree: PyTree) -> jax.Array:
  """A bool scalar: every entry of every leaf of ``tree`` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


class SolverStats(NamedTuple):
  """Diagnostics of one linear solve ``A x = b``.

  Attributes:
    num_iters: iterations (matrix-vector products of the main loop) used, as an
      int32 array; ``-1`` where the backend does not report it (GMRES and
      BiCGStab from ``jax.scipy``).
    residual: the *honest* relative residual ``‖b − A x‖ / ‖b‖``, recomputed
      from the returned ``x`` with one extra product (``0`` when ``b = 0``;
      ``nan`` when anything went non-finite).
    converged: ``residual <= tol`` and every value finite.
    curvature: the smallest Rayleigh quotient ``pᵀAp / pᵀp`` met by
      :class:`~hippojax.CG` (an upper bound on the smallest eigenvalue of
      ``A``); ``<= 0`` means CG met non-positive curvature, stopped there and
      did not converge. ``nan`` for solvers that do not measure it.
  """

  num_iters: jax.Array
  residual: jax.Array
  converged: jax.Array
  curvature: jax.Array = jnp.nan


class HyperGradInfo(NamedTuple):
  """Diagnostics attached to a :class:`HyperGrad`.

  The fields are present for every method, so results of one method always
  have the same pytree structure:

  * implicit methods (``ift``, ``hoag``, ``implicit_hypergrad``): the linear
    solve's ``num_iters``; the relative ``residual`` of the system actually
    solved, always measured with the true operator (``(I − Jᵀ + δI) q =
    ∇_w L_val``, or ``(H + δI) z = ∇_w L_val`` in the Hessian form, ``δ`` the
    damping); the solution (pass it back as ``init`` to warm-start the next
    solve); ``fixed_point_residual`` ``‖Φ(w) − w‖ / ‖w‖``; CG's
    ``curvature``; and ``converged``, which requires all of: a finite value
    and result, ``residual <= tol`` and ``fixed_point_residual <=
    fixed_point_tol``;
  * ``t1t2``, ``reverse``, ``drmad``: ``num_iters`` is the number of
    ``train_step`` VJPs taken (1 or T), ``residual`` is ``0`` (``nan`` if the
    result is not finite), ``converged`` says the result is finite, and
    ``solution`` is, for ``t1t2``, ``∇_w L_val(w_1, λ)`` after the step, and
    for ``reverse`` the adjoint ``d L_val / d params0`` (DrMAD's
    approximation of it for ``drmad``); ``fixed_point_residual`` is ``0``
    (no fixed point is assumed) and ``curvature`` is ``nan``;
  * ``forward``: as for ``reverse`` but ``solution`` is ``None`` (forward mode
    never forms the adjoint).

  ``converged`` means the same for every method: it is ``False`` whenever the
  validation value or the hypergradient is not finite.

  Attributes:
    num_iters: int32 array.
    residual: float array, relative residual.
    converged: bool array.
    solution: pytree shaped like ``params``, or ``None`` (``forward``).
    fixed_point_residual: float array, ``‖Φ(w) − w‖ / ‖w‖`` at ``params``
      (``‖Φ(w) − w‖`` when ``w = 0``).
    curvature: float array, as in :class:`SolverStats`.
  """

  num_iters: jax.Array
  residual: jax.Array
  converged: jax.Array
  solution: PyTree
  fixed_point_residual: jax.Array
  curvature: jax.Array


class HyperGrad(NamedTuple):
  """The result of every hypergradient algorithm.

  Attributes:
    grad: ``d L_val / d hparams``, with the structure, shapes and dtypes of
      ``hparams``.
    value: the validation loss at the point where it was evaluated (at
      ``params`` for the implicit methods, after the step(s) otherwise).
    info: a :class:`HyperGradInfo` with solver diagnostics.
  """

  grad: PyTree
  value: jax.Array
  info: HyperGradInfo
