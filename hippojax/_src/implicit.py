r"""Implicit hypergradients at an approximate fixed point ``w ≈ Φ(w, λ)``.

With ``J = ∂Φ/∂w`` and ``B = ∂Φ/∂λ`` at ``(w, λ, train_batch)``:

.. math::
   \frac{dL_{val}}{d\lambda} = \nabla_\lambda L_{val}(w, \lambda) + B^\top q,
   \qquad (I - J^\top)\, q = \nabla_w L_{val}(w, \lambda).

For a gradient step ``Φ = w − η ∇_w L_train``, ``I − J = η H`` and
``B = −η ∇²_{wλ} L_train``, so ``η`` cancels and this is the classical
``−∇²_{λw} L_train H⁻¹ ∇_w L_val``. Hyperparameters that only scale the step
(learning rate, momentum) have no effect at a fixed point: their hypergradient
is ``Bᵀ q`` with ``B ≈ 0``, so these methods return (nearly) zero for them —
use the unrolled methods to tune those.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from hippojax._src import checks
from hippojax._src import solvers as solvers_lib
from hippojax._src.base import HyperGrad, HyperGradInfo

PyTree = Any


def is_symmetric_step(train_step: Callable) -> bool:
  """Whether ``train_step`` declares a symmetric Jacobian ``∂Φ/∂w``."""
  return bool(getattr(train_step, "symmetric_jacobian", False))


def _transpose_jacobian_product(step_w: Callable, params: PyTree,
                                symmetric: bool) -> Callable:
  """Returns ``v ↦ Jᵀ v`` for ``J = ∂ step_w / ∂ w`` at ``params``.

  With ``symmetric=True`` this is ``J v`` by forward-over-reverse
  linearisation (``jax.linearize``), which is cheaper than a
  reverse-over-reverse VJP when ``step_w`` itself contains a gradient; it is
  only correct when ``J`` is symmetric.
  """
  if symmetric:
    _, jvp = jax.linearize(step_w, params)
    return jvp
  _, vjp = jax.vjp(step_w, params)
  return lambda v: vjp(v)[0]


def _cast_like(tree: PyTree, like: PyTree) -> PyTree:
  return jax.tree.map(lambda t, l: t.astype(l.dtype), tree, like)


def implicit_core(train_step, val_loss, hparams, params, train_batch,
                  val_batch, init, solve, symmetric: bool,
                  params_name: str = "params") -> HyperGrad:
  """The traceable body of every implicit method (no jit of its own).

  ``solve`` may be any ``solve(matvec, b, init) -> (x, SolverStats)``, also
  one holding traced options (HOAG's scheduled tolerance in the optax
  transform), which is why this is separate from the jitted entry point.
  """
  checks.check_step_output(train_step, params, hparams, train_batch,
                           params_name=params_name)
  checks.check_val_loss(val_loss, params, hparams, val_batch)
  if init is not None:  # the previous solution q, shaped like params
    checks.check_like("init", init, params_name, params)

  value, (v_w, v_lam) = jax.value_and_grad(val_loss, argnums=(0, 1))(
      params, hparams, val_batch)
  jt = _transpose_jacobian_product(
      lambda w: train_step(w, hparams, train_batch), params, symmetric)
  matvec = lambda q: optax.tree.sub(q, jt(q))  # (I − Jᵀ) q
  q, stats = solve(matvec, v_w, init)
  # A non-finite system (e.g. nan in ∇_w L_val) can stop a solver at once
  # with a finite but meaningless q; make that visible in the result too.
  # The test reads ‖b‖ and ‖q‖, not stats.residual: the honest residual
  # costs one more product, which XLA can then drop when nobody reads it
  # (a hypergradient inside the user's jit), while info still reports it.
  finite = jnp.isfinite(optax.tree.norm(v_w)) & jnp.isfinite(
      optax.tree.norm(q))
  q = optax.tree.where(finite, q, optax.tree.full_like(q, jnp.nan))
  _, vjp_lam = jax.vjp(lambda lam: train_step(params, lam, train_batch),
                       hparams)
  (bq,) = vjp_lam(q)
  grad = _cast_like(optax.tree.add(v_lam, bq), hparams)
  return HyperGrad(grad, value, HyperGradInfo(*stats, solution=q))


@functools.partial(
    jax.jit, static_argnames=("train_step", "val_loss", "solver", "symmetric"))
def _implicit(train_step, val_loss, hparams, params, train_batch, val_batch,
              init, *, solver, symmetric):
  return implicit_core(train_step, val_loss, hparams, params, train_batch,
                       val_batch, init, solver, symmetric)


def implicit_hypergrad(train_step: Callable, val_loss: Callable,
                       hparams: PyTree, params: PyTree, train_batch: PyTree,
                       val_batch: PyTree, *, solver: Any = "cg",
                       symmetric: bool | None = None,
                       init: PyTree | None = None) -> HyperGrad:
  r"""Implicit hypergradient with a pluggable linear solver.

  Solves ``(I − Jᵀ) q = ∇_w L_val(w, λ)`` and returns
  ``∇_λ L_val(w, λ) + Bᵀ q`` (see the module docstring).

  Args:
    train_step: ``train_step(params, hparams, batch) -> params``, one inner
      update ``Φ``.
    val_loss: ``val_loss(params, hparams, batch) -> scalar``.
    hparams: pytree of floating-point hyperparameters ``λ``.
    params: inner parameters ``w``, approximately a fixed point of ``Φ``.
    train_batch: batch passed to ``train_step`` (any pytree, or ``None``).
    val_batch: batch passed to ``val_loss`` (any pytree, or ``None``).
    solver: ``"cg"``, ``"neumann"``, ``"gmres"``, ``"bicgstab"`` (default
      options), or a solver instance such as ``hippojax.GMRES(tol=1e-8)``, or
      any hashable ``solve(matvec, b, init) -> (x, SolverStats)``.
    symmetric: compute ``Jᵀ v`` as ``J v`` by forward-over-reverse
      linearisation (cheaper; correct only for symmetric ``J``, e.g. a plain
      gradient step). ``None`` means: ``True`` if ``train_step`` declares
      ``symmetric_jacobian`` (steps built by :func:`hippojax.gradient_step`)
      or the solver is CG (which already requires it), ``False`` otherwise.
    init: warm start for ``q`` (e.g. the previous ``info.solution``).

  Returns:
    A :class:`HyperGrad`; ``info`` holds the solver's iterations, relative
    residual, converged flag and ``q``.

  Raises:
    TypeError, ValueError: for invalid options, non-floating ``hparams``,
      a ``train_step`` output that differs from ``params`` (naming the path),
      or a non-scalar ``val_loss``.

  Examples:
    >>> import jax.numpy as jnp, hippojax
    >>> loss = lambda w, lam, b: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
    >>> step = hippojax.gradient_step(loss, learning_rate=0.1)
    >>> val = lambda w, lam, b: jnp.sum((w - 2.0) ** 2)
    >>> w_star = jnp.full(3, 1.0 / 1.5)  # argmin for lam = 0.5
    >>> hg = hippojax.implicit_hypergrad(step, val, 0.5, w_star, None, None)
    >>> bool(hg.info.converged)
    True

  References:
    Pedregosa, "Hyperparameter optimization with approximate gradient", ICML
    2016; Lorraine et al., "Optimizing Millions of Hyperparameters by Implicit
    Differentiation", AISTATS 2020.
  """
  checks.check_callable("train_step", train_step)
  checks.check_callable("val_loss", val_loss)
  solve = solvers_lib.get_solver(solver)
  if symmetric is None:
    symmetric = is_symmetric_step(train_step) or isinstance(
        solve, solvers_lib.CG)
  hparams = checks.as_float_tree("hparams", hparams)
  return _implicit(train_step, val_loss, hparams, params, train_batch,
                   val_batch, init, solver=solve, symmetric=bool(symmetric))


def ift(train_step: Callable, val_loss: Callable, hparams: PyTree,
        params: PyTree, train_batch: PyTree, val_batch: PyTree, *,
        num_iters: int = 10, tol: float = 1e-3,
        symmetric: bool | None = None) -> HyperGrad:
  r"""IFT hypergradient with a truncated Neumann series (Lorraine et al.).

  .. math::
     q \approx \sum_{j=0}^{K} (J^\top)^j \nabla_w L_{val},
     \qquad \text{hypergrad} = \nabla_\lambda L_{val} + B^\top q,

  with ``K = num_iters`` VJPs (``num_iters=0`` uses ``q = ∇_w L_val``). The
  error of ``q`` shrinks like ``ρ^{K+1}``, ``ρ`` the spectral radius of ``J``
  (for a gradient step, ``max |1 − η h_i|`` over Hessian eigenvalues).
  Unlike HippoTrainer's ``Neumann``, nothing is rescaled inside the sum:
  the fixed-point form already absorbs the learning rate.

  Args:
    train_step: ``train_step(params, hparams, batch) -> params``.
    val_loss: ``val_loss(params, hparams, batch) -> scalar``.
    hparams: pytree of floating-point hyperparameters ``λ``.
    params: inner parameters ``w``, approximately a fixed point of ``Φ``.
    train_batch: batch passed to ``train_step``.
    val_batch: batch passed to ``val_loss``.
    num_iters: number of Neumann terms beyond the first, ``>= 0``.
    tol: relative residual under which ``info.converged`` is reported (the
      series is never cut short).
    symmetric: as in :func:`implicit_hypergrad` (``None``: use the step's
      declaration).

  Returns:
    A :class:`HyperGrad`.

  Examples:
    >>> import jax.numpy as jnp, hippojax
    >>> loss = lambda w, lam, b: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
    >>> step = hippojax.gradient_step(loss, learning_rate=0.1)
    >>> val = lambda w, lam, b: jnp.sum((w - 2.0) ** 2)
    >>> hg = hippojax.ift(step, val, 0.5, jnp.full(3, 1 / 1.5), None, None,
    ...                   num_iters=50)
    >>> hg.grad.shape
    ()

  References:
    Lorraine, Vicol, Duvenaud, "Optimizing Millions of Hyperparameters by
    Implicit Differentiation", AISTATS 2020.
  """
  solver = solvers_lib.Neumann(num_iters=num_iters, tol=tol)
  return implicit_hypergrad(train_step, val_loss, hparams, params, train_batch,
                            val_batch, solver=solver, symmetric=symmetric)


def hoag(train_step: Callable, val_loss: Callable, hparams: PyTree,
         params: PyTree, train_batch: PyTree, val_batch: PyTree, *,
         tol: float = 1e-6, maxiter: int = 100, init: PyTree | None = None,
         symmetric: bool | None = None) -> HyperGrad:
  r"""HOAG hypergradient: conjugate gradient on ``(I − Jᵀ) q = ∇_w L_val``.

  Requires ``I − J`` symmetric positive definite (a gradient step with a
  learning rate below ``2 / λ_max(H)`` on a locally convex loss). CG stops at
  relative residual ``tol`` or after ``maxiter`` products; warm-start it from
  the previous solution with ``init=previous.info.solution``. HOAG's
  decreasing tolerance schedule lives in :func:`hippojax.hypergradient`.

  Args:
    train_step: ``train_step(params, hparams, batch) -> params``.
    val_loss: ``val_loss(params, hparams, batch) -> scalar``.
    hparams: pytree of floating-point hyperparameters ``λ``.
    params: inner parameters ``w``, approximately a fixed point of ``Φ``.
    train_batch: batch passed to ``train_step``.
    val_batch: batch passed to ``val_loss``.
    tol: relative residual tolerance of CG, ``> 0``.
    maxiter: maximum CG iterations, ``>= 1``.
    init: warm start for ``q``.
    symmetric: as in :func:`implicit_hypergrad`; ``None`` means ``True``
      (CG already assumes symmetry), using forward-over-reverse products.

  Returns:
    A :class:`HyperGrad` whose ``info`` has CG's iterations, relative residual,
    converged flag and solution ``q``.

  Examples:
    >>> import jax.numpy as jnp, hippojax
    >>> loss = lambda w, lam, b: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
    >>> step = hippojax.gradient_step(loss, learning_rate=0.1)
    >>> val = lambda w, lam, b: jnp.sum((w - 2.0) ** 2)
    >>> hg = hippojax.hoag(step, val, 0.5, jnp.full(3, 1 / 1.5), None, None)
    >>> int(hg.info.num_iters)
    1

  References:
    Pedregosa, "Hyperparameter optimization with approximate gradient",
    ICML 2016.
  """
  solver = solvers_lib.CG(tol=tol, maxiter=maxiter)
  return implicit_hypergrad(train_step, val_loss, hparams, params, train_batch,
                            val_batch, solver=solver, symmetric=symmetric,
                            init=init)
