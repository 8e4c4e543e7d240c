r"""Implicit hypergradients at an approximate fixed point ``w ≈ Φ(w, λ)``.

With ``J = ∂Φ/∂w`` and ``B = ∂Φ/∂λ`` at ``(w, λ, train_batch)``:

.. math::
   \frac{dL_{val}}{d\lambda} = \nabla_\lambda L_{val}(w, \lambda) + B^\top q,
   \qquad (I - J^\top)\, q = \nabla_w L_{val}(w, \lambda).

For a gradient step ``Φ = w − η ∇_w L_train``, ``I − J = η H`` and
``B = −η ∇²_{wλ} L_train``, so ``η`` cancels and this is the classical
``−∇²_{λw} L_train H⁻¹ ∇_w L_val``. The same holds for any positive
per-parameter step ``Φ = w − P ∇_w L_train``: ``I − J = P H`` is then *not*
symmetric, but with ``z = P q`` the system is the **Hessian form**

.. math::
   (H + \delta I)\, z = \nabla_w L_{val}, \qquad
   \frac{dL_{val}}{d\lambda} = \nabla_\lambda L_{val}
     - \nabla^2_{\lambda w} L_{train}\, z,

symmetric, and ``P`` cancels. Steps built by :func:`hippojax.gradient_step`
expose their loss, so CG solves this form for them by default; every other
step is solved in the fixed-point form, where nothing is assumed symmetric
unless the step or the caller says so, and the reported residual is always
measured with the true operator.

Hyperparameters that only scale the step (learning rate, momentum) have no
effect at a fixed point: their hypergradient is ``Bᵀ q`` with ``B ≈ 0`` (and
exactly zero in the Hessian form), so these methods return (nearly) zero for
them — use the unrolled methods to tune those.

``info.fixed_point_residual = ‖Φ(w) − w‖/‖w‖`` says how far ``params`` is
from a fixed point (the step is evaluated there anyway, so it costs nothing);
``info.converged`` requires it to be below ``fixed_point_tol``.
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hippojax._src import checks
from hippojax._src import solvers as solvers_lib
from hippojax._src.base import HyperGrad, HyperGradInfo

PyTree = Any


SYSTEMS = ("auto", "hessian", "fixed_point")


def is_symmetric_step(train_step: Callable) -> bool:
  """Whether ``train_step`` declares a symmetric Jacobian ``∂Φ/∂w``."""
  return bool(getattr(train_step, "symmetric_jacobian", False))


def declares_loss(train_step: Callable) -> bool:
  """Whether ``train_step`` is a gradient step that exposes its loss.

  Such a step (built by :func:`hippojax.gradient_step`) has a ``loss``
  attribute and an ``apply_gradient(params, hparams, batch, grads)`` method;
  its fixed points are the stationary points of ``loss``.
  """
  return callable(getattr(train_step, "loss", None)) and callable(
      getattr(train_step, "apply_gradient", None))


def resolve_system(system: str, train_step: Callable, solve: Callable) -> str:
  """``"hessian"`` or ``"fixed_point"`` for ``system="auto"`` and checks."""
  if system not in SYSTEMS:
    raise ValueError(f"system={system!r} is not one of {SYSTEMS}.")
  neumann = isinstance(solve, solvers_lib.Neumann)
  if system == "auto":
    return "hessian" if declares_loss(train_step) and not neumann else (
        "fixed_point")
  if system == "hessian":
    if not declares_loss(train_step):
      raise ValueError(
          "system='hessian' needs a train_step built by hippojax.gradient_step "
          "(it must expose .loss and .apply_gradient); use "
          "system='fixed_point' for other steps.")
    if neumann:
      raise ValueError(
          "the Neumann series (ift) solves the fixed-point system, whose "
          "scale the step's learning rate sets; system='hessian' needs a "
          "Krylov solver (CG, GMRES, BiCGStab).")
  return system


class _System(NamedTuple):
  """The linear system of one implicit hypergradient at ``(w, λ)``.

  ``matvec`` is the operator the solver iterates with; ``certify`` is the
  true operator where ``matvec`` took the symmetric shortcut (else ``None``);
  ``pullback`` maps the solution to its ``λ``-cotangent; ``displacement`` is
  ``Φ(w) − w``.
  """

  matvec: Callable
  certify: Callable | None
  pullback: Callable
  displacement: PyTree


def _damped(product: Callable, damping) -> Callable:
  return lambda v: optax.tree.add_scale(product(v), damping, v)


def _transposed_products(fn: Callable, params: PyTree, symmetric: bool):
  """``(fn(params), v ↦ Jᵀv, true v ↦ Jᵀv or None)`` for ``J = ∂fn/∂w``.

  With ``symmetric`` the product is ``J v`` by forward-over-reverse
  linearisation (cheaper than a VJP when ``fn`` contains a gradient, and
  equal to ``Jᵀ v`` only for symmetric ``J``); the third element is then the
  true ``Jᵀ`` (one VJP), to certify a residual with.
  """
  if symmetric:
    value, jvp = jax.linearize(fn, params)
    return value, jvp, lambda v: jax.vjp(fn, params)[1](v)[0]
  value, vjp = jax.vjp(fn, params)
  return value, lambda v: vjp(v)[0], None


def _fixed_point_system(train_step, hparams, params, batch, symmetric,
                        damping) -> _System:
  """``(I − Jᵀ + δI) q = ∇_w L_val``; hypergradient ``∇_λ L_val + Bᵀ q``."""
  new, jt, true_jt = _transposed_products(
      lambda w: train_step(w, hparams, batch), params, symmetric)
  matvec = _damped(lambda q: optax.tree.sub(q, jt(q)), damping)
  certify = None
  if true_jt is not None and not getattr(
      train_step, "symmetric_by_construction", False):
    # The shortcut is only as good as the symmetry; measure the residual
    # with the true Jᵀ so that a wrong declaration shows. Only the library's
    # own gradient step with a constant scalar rate, whose Jacobian I − ηH
    # is symmetric because H is a Hessian, is exempt.
    certify = _damped(lambda q: optax.tree.sub(q, true_jt(q)), damping)
  _, vjp_lam = jax.vjp(lambda lam: train_step(params, lam, batch), hparams)
  pullback = lambda q: vjp_lam(q)[0]
  return _System(matvec, certify, pullback, optax.tree.sub(new, params))


def _hessian_system(train_step, hparams, params, batch, damping) -> _System:
  r"""``(H + δI) z = ∇_w L_val``; hypergradient ``∇_λ L_val − ∂²_{λw}L z``.

  For ``Φ = w − P ∇_w L`` with any positive (diagonal) ``P``, at a fixed
  point ``∇_w L = 0`` so ``I − J = P H`` and ``B = −P ∂²_{wλ} L``; with
  ``z = P q`` the system becomes ``H z = ∇_w L_val``, symmetric, and ``P``
  cancels from the hypergradient.
  """
  loss = train_step.loss
  grad_w = lambda w, lam: jax.grad(loss)(w, lam, batch)
  g, hvp = jax.linearize(lambda w: grad_w(w, hparams), params)
  matvec = _damped(hvp, damping)
  _, vjp_lam = jax.vjp(lambda lam: grad_w(params, lam), hparams)
  pullback = lambda z: jax.tree.map(jnp.negative, vjp_lam(z)[0])
  new = train_step.apply_gradient(params, hparams, batch, g)
  return _System(matvec, None, pullback, optax.tree.sub(new, params))


def relative_norm(tree: PyTree, like: PyTree) -> jax.Array:
  """``‖tree‖ / ‖like‖``, or ``‖tree‖`` when ``‖like‖ = 0``."""
  num, den = optax.tree.norm(tree), optax.tree.norm(like)
  return num / jnp.where(den > 0, den, 1.0)


def default_fixed_point_tol(params: PyTree) -> float:
  """``1e-3`` for float32 and wider parameters, ``1e-2`` for 16-bit."""
  bits = jnp.finfo(optax.tree.dtype(params, "highest")).bits
  return 1e-3 if bits >= 32 else 1e-2


def _cast_like(tree: PyTree, like: PyTree) -> PyTree:
  return jax.tree.map(lambda t, l: t.astype(l.dtype), tree, like)


def _root_system(optimality_fun, hparams, params, batch, symmetric,
                 damping) -> _System:
  r"""``(∂F/∂w + δI)ᵀ u = b`` for a root ``F(w, λ, batch) = 0``.

  The cotangent of ``λ`` is ``−(∂F/∂λ)ᵀ u``. With ``F = ∇_w L_train`` this is
  the Hessian form; with ``F = Φ(w) − w`` the fixed-point form (``u = −q``).
  ``displacement`` is ``F(w)`` itself: ``w`` is only a root where it is 0.
  """
  value, op, true_op = _transposed_products(
      lambda w: optimality_fun(w, hparams, batch), params, symmetric)
  matvec = _damped(op, damping)
  certify = None if true_op is None else _damped(true_op, damping)
  _, vjp_lam = jax.vjp(lambda lam: optimality_fun(params, lam, batch),
                       hparams)
  pullback = lambda u: jax.tree.map(jnp.negative, vjp_lam(u)[0])
  return _System(matvec, certify, pullback, value)


def _finite(tree: PyTree) -> jax.Array:
  """Every inexact leaf of ``tree`` is finite (``float0`` leaves skipped)."""
  leaves = [x for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.isfinite(optax.tree.norm(leaves)) if leaves else jnp.asarray(True)


def solve_implicit(sys: _System, b: PyTree, solve: Callable,
                   init: PyTree | None, params: PyTree, *, tol=None,
                   fixed_point_tol: float | None = None
                   ) -> tuple[PyTree, HyperGradInfo]:
  """The implicit rule: solve ``A q = b``, certify ``q``, pull it back.

  One implementation for :func:`implicit_core` (with ``b = ∇_w L_val``) and
  the decorators :func:`hippojax.custom_root` and
  :func:`hippojax.custom_fixed_point` (with ``b`` the cotangent of the
  solution). Returns the hyperparameter cotangent ``sys.pullback(q)`` and a
  :class:`HyperGradInfo` whose ``converged`` requires a certified residual
  ``<= tol`` (default: the solver's), finite values and
  ``fixed_point_residual <= fixed_point_tol``.
  """
  q, stats = solve(sys.matvec, b, init)
  residual, converged = stats.residual, stats.converged
  if sys.certify is not None:
    tol = solvers_lib.resolve_tol(
        getattr(solve, "tol", None) if tol is None else tol, b)
    residual = solvers_lib.relative_residual(sys.certify, b, q)
    converged = converged & (residual <= tol)
  # A non-finite system (e.g. nan in ∇_w L_val) can stop a solver at once
  # with a finite but meaningless q; make that visible in the result too.
  finite = _finite(b) & _finite(q)
  q = optax.tree.where(finite, q, optax.tree.full_like(q, jnp.nan))
  cotangent = sys.pullback(q)
  fp_residual = relative_norm(sys.displacement, params)
  if fixed_point_tol is None:
    fixed_point_tol = default_fixed_point_tol(params)
  converged = (converged & finite & _finite(cotangent) &
               (fp_residual <= fixed_point_tol))
  info = HyperGradInfo(
      num_iters=stats.num_iters, residual=residual, converged=converged,
      solution=q, fixed_point_residual=fp_residual.astype(residual.dtype),
      curvature=jnp.asarray(stats.curvature, residual.dtype))
  return cotangent, info


def implicit_core(train_step, val_loss, hparams, params, train_batch,
                  val_batch, init, solve, *, symmetric: bool,
                  system: str = "fixed_point", damping=0.0, tol=None,
                  fixed_point_tol: float | None = None,
                  params_name: str = "params") -> HyperGrad:
  """The traceable body of every implicit method (no jit of its own).

  ``solve`` may be any ``solve(matvec, b, init) -> (x, SolverStats)``, also
  one holding traced options (HOAG's scheduled tolerance in the optax
  transform), which is why this is separate from the jitted entry point.
  ``tol`` is the tolerance the certified residual is held to (default: the
  solver's ``tol``); ``damping`` may be a traced scalar.
  """
  checks.check_step_output(train_step, params, hparams, train_batch,
                           params_name=params_name)
  checks.check_val_loss(val_loss, params, hparams, val_batch)
  if init is not None:  # the previous solution q, shaped like params
    checks.check_like("init", init, params_name, params)

  value, (v_w, v_lam) = jax.value_and_grad(val_loss, argnums=(0, 1))(
      params, hparams, val_batch)
  damping = jnp.asarray(damping, optax.tree.dtype(v_w, "highest"))
  if system == "hessian":
    sys = _hessian_system(train_step, hparams, params, train_batch, damping)
  else:
    sys = _fixed_point_system(train_step, hparams, params, train_batch,
                              symmetric, damping)
  cotangent, info = solve_implicit(sys, v_w, solve, init, params, tol=tol,
                                   fixed_point_tol=fixed_point_tol)
  grad = _cast_like(optax.tree.add(v_lam, cotangent), hparams)
  converged = (info.converged & jnp.isfinite(value) &
               jnp.isfinite(optax.tree.norm(grad)))
  return HyperGrad(grad, value, info._replace(converged=converged))


@functools.partial(
    jax.jit, static_argnames=("train_step", "val_loss", "solver", "symmetric",
                              "system", "fixed_point_tol"))
def _implicit(train_step, val_loss, hparams, params, train_batch, val_batch,
              init, damping, *, solver, symmetric, system, fixed_point_tol):
  return implicit_core(train_step, val_loss, hparams, params, train_batch,
                       val_batch, init, solver, symmetric=symmetric,
                       system=system, damping=damping,
                       fixed_point_tol=fixed_point_tol)


def resolve_symmetric(symmetric: bool | None, train_step: Callable) -> bool:
  """``symmetric``, or the step's own declaration when it is ``None``."""
  if symmetric is None:
    return is_symmetric_step(train_step)
  if not isinstance(symmetric, bool):
    raise TypeError(f"symmetric must be None, True or False, got "
                    f"{symmetric!r}.")
  return symmetric


def check_damping(damping: Any) -> Any:
  """A Python number ``>= 0`` is checked here; arrays are traced as given."""
  if isinstance(damping, bool):
    raise TypeError(f"damping must be a number >= 0, got {damping!r}.")
  if isinstance(damping, (int, float)):
    if not damping >= 0 or damping == float("inf"):
      raise ValueError(f"damping must be a finite number >= 0, got "
                       f"{damping!r}.")
    return float(damping)
  if jnp.ndim(damping) != 0:
    raise ValueError(f"damping must be a scalar, got shape "
                     f"{jnp.shape(damping)}.")
  return damping


def check_fixed_point_tol(value: Any) -> float | None:
  return None if value is None else checks.check_positive(
      "fixed_point_tol", value)


def implicit_hypergrad(train_step: Callable, val_loss: Callable,
                       hparams: PyTree, params: PyTree, train_batch: PyTree,
                       val_batch: PyTree, *, solver: Any = "cg",
                       symmetric: bool | None = None,
                       init: PyTree | None = None, system: str = "auto",
                       damping: Any = 0.0,
                       fixed_point_tol: float | None = None) -> HyperGrad:
  r"""Implicit hypergradient with a pluggable linear solver.

  Solves ``(I − Jᵀ) q = ∇_w L_val(w, λ)`` (or its Hessian form) and returns
  ``∇_λ L_val(w, λ) + Bᵀ q`` (see the module docstring).

  Which solver is valid where:

  * CG: symmetric positive-definite operator: the Hessian form of a
    gradient step at a local minimum (any step size or per-parameter
    rates), or a symmetric fixed-point map. On an indefinite Hessian it
    stops and reports ``info.curvature <= 0``; add ``damping``.
  * GMRES, BiCGStab: any invertible operator: momentum, Adam or
    preconditioned steps in the fixed-point form.
  * Neumann: the fixed-point form, when the spectral radius of ``J`` is
    below one (a stable, contracting step).

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
    init: warm start for the solution (e.g. the previous ``info.solution``).
    symmetric: in the fixed-point form, compute ``Jᵀ v`` as ``J v`` by
      forward-over-reverse linearisation (cheaper; right only for a
      symmetric ``J``). ``None`` (default) uses the step's own declaration
      (``symmetric_jacobian``). The reported residual is always measured with
      the true ``Jᵀ`` (one more VJP), so a wrong ``True`` shows as
      ``converged=False``, never as a wrong converged answer.
    system: ``"auto"`` (default), ``"hessian"`` or ``"fixed_point"``. The
      Hessian form ``(H + δI) z = ∇_w L_val`` needs a step built by
      :func:`hippojax.gradient_step` (any positive step size, scalar or
      per-parameter, cancels); ``"auto"`` picks it for such steps with a
      Krylov solver, and the fixed-point form ``(I − Jᵀ + δI) q = ∇_w L_val``
      otherwise.
    damping: ``δ >= 0`` added to the diagonal of the operator being solved
      (Tikhonov / Levenberg–Marquardt): in the Hessian form it is in units of
      the train-loss Hessian (as an extra L2 term ``δ‖w‖²/2``), in the
      fixed-point form in units of ``I − J`` (``η δ'`` for a step size ``η``).
      It makes an indefinite Hessian (a non-convex loss at a saddle)
      solvable, at the price of a biased hypergradient. May be a traced
      scalar.
    fixed_point_tol: ``info.converged`` also requires
      ``info.fixed_point_residual = ‖Φ(w) − w‖/‖w‖ <= fixed_point_tol``: an
      implicit hypergradient is only meaningful at a fixed point. ``None``
      (default): ``1e-3`` (``1e-2`` for 16-bit parameters).

  Returns:
    A :class:`HyperGrad`; ``info`` holds the solver's iterations, the
    certified relative residual, ``fixed_point_residual``, CG's
    ``curvature``, the converged flag and the solution.

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
  system = resolve_system(system, train_step, solve)
  symmetric = resolve_symmetric(symmetric, train_step)
  damping = check_damping(damping)
  fixed_point_tol = check_fixed_point_tol(fixed_point_tol)
  hparams = checks.as_float_tree("hparams", hparams)
  return _implicit(train_step, val_loss, hparams, params, train_batch,
                   val_batch, init, damping, solver=solve, symmetric=symmetric,
                   system=system, fixed_point_tol=fixed_point_tol)


def ift(train_step: Callable, val_loss: Callable, hparams: PyTree,
        params: PyTree, train_batch: PyTree, val_batch: PyTree, *,
        num_iters: int = 10, tol: float = 1e-3,
        symmetric: bool | None = None, damping: Any = 0.0,
        fixed_point_tol: float | None = None) -> HyperGrad:
  r"""IFT hypergradient with a truncated Neumann series (Lorraine et al.).

  .. math::
     q \approx \sum_{j=0}^{K} (J^\top - \delta I)^j \nabla_w L_{val},
     \qquad \text{hypergrad} = \nabla_\lambda L_{val} + B^\top q,

  with ``K = num_iters`` VJPs (``num_iters=0`` uses ``q = ∇_w L_val``). The
  error of ``q`` shrinks like ``ρ^{K+1}``, ``ρ`` the spectral radius of ``J``
  (for a gradient step, ``max |1 − η h_i|`` over Hessian eigenvalues).
  Unlike HippoTrainer's ``Neumann``, nothing is rescaled inside the sum:
  the fixed-point form already absorbs the learning rate. The series needs
  the fixed-point form (its step size is the step's own), so ``ift`` always
  uses it.

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
    symmetric: as in :func:`implicit_hypergrad`.
    damping: as in :func:`implicit_hypergrad`.
    fixed_point_tol: as in :func:`implicit_hypergrad`.

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
                            val_batch, solver=solver, symmetric=symmetric,
                            system="fixed_point", damping=damping,
                            fixed_point_tol=fixed_point_tol)


def hoag(train_step: Callable, val_loss: Callable, hparams: PyTree,
         params: PyTree, train_batch: PyTree, val_batch: PyTree, *,
         tol: float | None = None, maxiter: int = 100,
         init: PyTree | None = None, symmetric: bool | None = None,
         system: str = "auto", damping: Any = 0.0,
         fixed_point_tol: float | None = None) -> HyperGrad:
  r"""HOAG hypergradient: conjugate gradient on the implicit system.

  For a step built by :func:`hippojax.gradient_step` CG runs on the Hessian
  form ``(H + δI) z = ∇_w L_val``, which is symmetric for any positive step
  size, scalar or per-parameter; for other steps on ``(I − Jᵀ + δI) q =
  ∇_w L_val``, which CG solves only when ``I − J`` is symmetric positive
  definite (otherwise use :func:`implicit_hypergrad` with GMRES; the
  certified residual reports the failure). CG stops at relative residual
  ``tol`` or after ``maxiter`` products, and at non-positive curvature
  (``info.curvature <= 0``; an indefinite Hessian, cured by ``damping``).
  Warm-start it from the previous solution with
  ``init=previous.info.solution``. HOAG's decreasing tolerance schedule and
  adaptive damping live in :func:`hippojax.hypergradient`.

  Args:
    train_step: ``train_step(params, hparams, batch) -> params``.
    val_loss: ``val_loss(params, hparams, batch) -> scalar``.
    hparams: pytree of floating-point hyperparameters ``λ``.
    params: inner parameters ``w``, approximately a fixed point of ``Φ``.
    train_batch: batch passed to ``train_step``.
    val_batch: batch passed to ``val_loss``.
    tol: relative residual tolerance of CG, ``> 0``; ``None``: ``1e-6`` in
      float64, ``1e-4`` in float32.
    maxiter: maximum CG iterations, ``>= 1``.
    init: warm start for the solution.
    symmetric: as in :func:`implicit_hypergrad`.
    system: as in :func:`implicit_hypergrad`.
    damping: as in :func:`implicit_hypergrad`.
    fixed_point_tol: as in :func:`implicit_hypergrad`.

  Returns:
    A :class:`HyperGrad` whose ``info`` has CG's iterations, relative residual,
    curvature, fixed-point residual, converged flag and solution.

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
                            init=init, system=system, damping=damping,
                            fixed_point_tol=fixed_point_tol)
