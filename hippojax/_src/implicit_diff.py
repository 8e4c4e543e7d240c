r"""Implicit differentiation of inner solvers: ``custom_root``, ``custom_fixed_point``.

A solver ``solve(init_params, *args) -> w`` whose output is a root
``F(w, *args) = 0`` (or a fixed point ``w = Φ(w, *args)``, ``F = Φ − I``) is
given a custom VJP from the implicit function theorem: for a cotangent ``v``
of ``w``,

.. math::
   (\partial_w F + \delta I)^\top u = v, \qquad
   \bar\theta = -(\partial_\theta F)^\top u

for every argument ``θ`` after ``init_params``. The solver's own iterations
are never differentiated. The linear system, its solve, the certification of
the residual with the true operator and ``fixed_point_residual`` are those of
:func:`hippojax.implicit_hypergrad` (one implementation,
``implicit.solve_implicit``).

Reverse mode only (``jax.grad``, ``jax.vjp``, ``jax.jacrev``): the backward
solve runs hippojax's pluggable solvers with their honest diagnostics, which a
custom JVP could only reach through the transpose of a linear solve.
"""

import dataclasses
import functools
import inspect
import numbers
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hippojax._src import checks
from hippojax._src import implicit as implicit_lib
from hippojax._src import solvers as solvers_lib
from hippojax._src.base import HyperGradInfo

PyTree = Any


def warn_if_not_converged(info: HyperGradInfo) -> None:
  """The default ``on_diagnostics``: a ``RuntimeWarning`` when not converged."""
  converged = np.asarray(info.converged)
  if converged.all():
    return
  worst = lambda x: float(np.max(np.asarray(x, np.float64)))
  curvature = np.asarray(info.curvature, np.float64)
  measured = curvature[np.isfinite(curvature)]
  detail = f", curvature {measured.min():.3g}" if measured.size else ""
  warnings.warn(
      f"implicit differentiation: the backward solve did not converge "
      f"({int((~converged).sum())} of {converged.size}); relative residual "
      f"{worst(info.residual):.3g}, fixed_point_residual "
      f"{worst(info.fixed_point_residual):.3g}{detail}."
      " The gradient may be wrong: solve the inner problem more tightly, add "
      "damping=, or change solver=; pass on_diagnostics= to read every "
      "solve's diagnostics.", RuntimeWarning, stacklevel=2)


@dataclasses.dataclass(frozen=True)
class _Options:
  name: str  # the decorator, for messages
  fun_name: str  # "optimality_fun" or "train_step"
  linear_solve: Callable
  system: str  # "root", "hessian" or "fixed_point"
  symmetric: bool
  damping: float
  fixed_point_tol: float | None
  has_aux: bool
  on_diagnostics: Callable | None


def _check_on_diagnostics(on_diagnostics: Any) -> Callable | None:
  if on_diagnostics == "warn":
    return warn_if_not_converged
  if on_diagnostics is None or callable(on_diagnostics):
    return on_diagnostics
  raise TypeError(f"on_diagnostics must be 'warn', None or a callable "
                  f"(HyperGradInfo) -> None, got {on_diagnostics!r}.")


def _check_damping(damping: Any) -> float:
  damping = implicit_lib.check_damping(damping)
  if not isinstance(damping, float):
    raise TypeError(
        "damping of a decorator must be a Python number (it is fixed when the "
        f"solver is decorated), got {type(damping).__name__}.")
  return damping


def _is_diff(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


class _Split:
  """The floating leaves ``θ`` of ``(args, consts)``, and the way back."""

  def __init__(self, args, consts):
    self.leaves, self.treedef = jax.tree.flatten((args, consts))
    self.mask = [_is_diff(x) for x in self.leaves]
    self.theta = [x for x, d in zip(self.leaves, self.mask) if d]

  def rebuild(self, theta):
    it = iter(theta)
    return self.treedef.unflatten(
        [next(it) if d else x for x, d in zip(self.leaves, self.mask)])

  def cotangents(self, theta_bar):
    """Cotangents of ``(args, consts)``: ``float0`` zeros for non-floats."""
    it = iter(theta_bar)
    out = [jnp.asarray(next(it), jnp.result_type(x)) if d else
           np.zeros(np.shape(x), jax.dtypes.float0)
           for x, d in zip(self.leaves, self.mask)]
    return self.treedef.unflatten(out)


class _Packed:
  """``fun(w, *args, *consts)`` as ``train_step(w, θ, None)``, θ the floats."""

  def __init__(self, fun, split):
    self.fun, self.split = fun, split

  def __call__(self, w, theta, batch):
    del batch
    args, consts = self.split.rebuild(theta)
    return self.fun(w, *args, *consts)


class _PackedGradientStep(_Packed):
  """A gradient step in the same packing, with its ``loss`` for the Hessian
  form (``fun`` is the closure-converted loss) and ``apply_gradient``."""

  def __init__(self, loss, step, split):
    super().__init__(loss, split)
    self.step = step

  def loss(self, w, theta, batch):
    return _Packed.__call__(self, w, theta, batch)

  def apply_gradient(self, w, theta, batch, grads):
    del batch
    args, _ = self.split.rebuild(theta)
    return self.step.apply_gradient(w, *args, grads)


class _Rule:
  """One call's converted functions; hashed by identity (a static argument
  of the custom VJP)."""

  def __init__(self, options, solver, fun, step):
    self.options, self.solver, self.fun, self.step = options, solver, fun, step

  def solution(self, out):
    return out[0] if self.options.has_aux else out

  def cotangents(self, sol, args, consts, v):
    opts = self.options
    split = _Split(args, consts)
    damping = jnp.asarray(opts.damping, optax.tree.dtype(v, "highest"))
    if opts.system == "root":
      sys = implicit_lib._root_system(_Packed(self.fun, split), split.theta,
                                      sol, None, opts.symmetric, damping)
    elif opts.system == "hessian":
      step = _PackedGradientStep(self.fun, self.step, split)
      sys = implicit_lib._hessian_system(step, split.theta, sol, None, damping)
    else:
      sys = implicit_lib._fixed_point_system(
          _Packed(self.fun, split), split.theta, sol, None, opts.symmetric,
          damping)
    theta_bar, info = implicit_lib.solve_implicit(
        sys, v, opts.linear_solve, None, sol,
        fixed_point_tol=opts.fixed_point_tol)
    if opts.on_diagnostics is not None:
      jax.debug.callback(opts.on_diagnostics, info._replace(solution=None))
    return split.cotangents(theta_bar)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _solve(rule, init, args, consts, solver_consts):
  del consts
  return rule.solver(init, *args, *solver_consts)


def _solve_fwd(rule, init, args, consts, solver_consts):
  out = rule.solver(init, *args, *solver_consts)
  return out, (rule.solution(out), init, args, consts, solver_consts)


def _solve_bwd(rule, res, cotangent):
  sol, init, args, consts, solver_consts = res
  v = rule.solution(cotangent)
  args_bar, consts_bar = rule.cotangents(sol, args, consts, v)
  zeros = lambda t: jax.tree.map(
      lambda x: (jnp.zeros_like(x) if _is_diff(x) else
                 np.zeros(np.shape(x), jax.dtypes.float0)), t)
  return zeros(init), args_bar, consts_bar, zeros(solver_consts)


_solve.defvjp(_solve_fwd, _solve_bwd)


def _arg_names(signature, n: int) -> list[str]:
  """Names of the ``n`` arguments after ``init_params``, for messages."""
  names = []
  if signature is not None:
    for p in list(signature.parameters.values())[1:]:
      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
        names.append(p.name)
      elif p.kind == p.VAR_POSITIONAL:
        break
  names = names[:n]
  return names + [f"args[{i}]" for i in range(len(names), n)]


def _check_leaves(name: str, arg_name: str, arg: PyTree) -> None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(arg)[0]:
    if not isinstance(leaf, (jax.Array, np.ndarray, np.generic,
                             numbers.Number)):
      raise TypeError(
          f"{name}: argument {arg_name}{jax.tree_util.keystr(path)} of the "
          f"solver is a {type(leaf).__name__}; every argument after "
          "init_params is an input to differentiate and must be a pytree of "
          "arrays. Bind static options with functools.partial on the solver "
          "before decorating it.")


_NOT_TRACEABLE = (jax.errors.ConcretizationTypeError,
                  jax.errors.TracerArrayConversionError,
                  jax.errors.TracerIntegerConversionError)


def _convert(fun: Callable, *example):
  """``jax.closure_convert``: closed-over traced values become arguments."""
  return jax.closure_convert(fun, *example)


def _decorate(options: _Options, fun: Callable, solver: Callable) -> Callable:
  checks.check_callable("solver", solver)
  try:
    signature = inspect.signature(solver)
  except (TypeError, ValueError):
    signature = None
  fun_name, name = options.fun_name, options.name

  @functools.wraps(solver)
  def wrapped(init_params, *args, **kwargs):
    if kwargs:  # bind keywords to positions, so that they are differentiated
      if signature is None:
        raise TypeError(f"{name}: pass the solver's arguments positionally.")
      bound = signature.bind(init_params, *args, **kwargs)
      if bound.kwargs:
        raise TypeError(
            f"{name}: keyword-only argument(s) {sorted(bound.kwargs)} of the "
            "solver are not supported; make them positional (they are "
            "differentiated) or bind them with functools.partial.")
      init_params, *args = bound.args
    args = tuple(args)
    names = _arg_names(signature, len(args))
    for arg_name, arg in zip(names, args):
      _check_leaves(name, arg_name, arg)
    try:
      solver_fn, solver_consts = _convert(solver, init_params, *args)
      out = jax.eval_shape(solver_fn, init_params, *args, *solver_consts)
    except _NOT_TRACEABLE:
      # A solver that runs outside JAX (NumPy, SciPy) on concrete values, as
      # JAXopt's SciPy wrappers did: the custom VJP calls it with concrete
      # values (outside jit), and its solution is taken to be shaped like
      # init_params.
      if not jax.tree.leaves(init_params):
        raise TypeError(
            f"{name}: the solver cannot be traced by JAX, so its output shape "
            "is unknown; pass init_params shaped like the solution.") from None
      solver_fn, solver_consts = solver, []
      out = (init_params, None) if options.has_aux else init_params
    if options.has_aux and not (isinstance(out, (tuple, list)) and
                                len(out) == 2):
      raise TypeError(f"{name}(has_aux=True): the solver must return a pair "
                      f"(params, aux), got {jax.tree.structure(out)}.")
    sol = out[0] if options.has_aux else out
    example = jax.tree.map(
        lambda s: jnp.zeros(jnp.shape(s), jnp.result_type(s)), sol)
    target = fun.loss if options.system == "hessian" else fun
    call = f"{fun_name}(params, {', '.join(names)})"
    try:
      target_fn, consts = _convert(target, example, *args)
      fun_out = jax.eval_shape(fun, example, *args)
    except TypeError as e:
      raise TypeError(
          f"{name}: calling {call} failed: {e}. It is called with the "
          "solution first, then the solver's arguments after init_params, "
          "in the same order.") from e
    try:
      checks.check_like(f"{fun_name} output", fun_out, "params", sol)
    except ValueError as e:
      what = ("a root has the shape of the solution" if fun_name ==
              "optimality_fun" else "a fixed-point map returns params")
      raise ValueError(f"{name}: {e} ({what}; {call}).") from None
    rule = _Rule(options, solver_fn, target_fn, fun)
    return _solve(rule, init_params, args, tuple(consts),
                  tuple(solver_consts))

  return wrapped


def _common(name, fun_name, fun, solver, system, symmetric, damping,
            fixed_point_tol, has_aux, on_diagnostics, step) -> _Options:
  checks.check_callable(fun_name, fun)
  linear_solve = solvers_lib.get_solver(solver)
  if not isinstance(has_aux, bool):
    raise TypeError(f"has_aux must be True or False, got {has_aux!r}.")
  return _Options(
      name=name, fun_name=fun_name, linear_solve=linear_solve, system=system,
      symmetric=implicit_lib.resolve_symmetric(symmetric, step),
      damping=_check_damping(damping),
      fixed_point_tol=implicit_lib.check_fixed_point_tol(fixed_point_tol),
      has_aux=has_aux, on_diagnostics=_check_on_diagnostics(on_diagnostics))


def custom_root(optimality_fun: Callable, *, solver: Any = "gmres",
                symmetric: bool = False, damping: float = 0.0,
                fixed_point_tol: float | None = None, has_aux: bool = False,
                on_diagnostics: Any = "warn") -> Callable:
  r"""Decorates a solver whose output is a root of ``optimality_fun``.

  ``solve(init_params, *args) -> w`` with ``F(w, *args) = 0``, ``F =
  optimality_fun``; ``jax.grad``, ``jax.vjp`` and ``jax.jacrev`` of anything
  computed from ``w`` then use the implicit function theorem,

  .. math::
     (\partial_w F + \delta I)^\top u = \bar w, \qquad
     \bar\theta = -(\partial_\theta F)^\top u,

  for every argument ``θ`` after ``init_params`` (``init_params`` gets a zero
  cotangent; integer arguments get none). The solver's iterations are never
  differentiated. Values that ``optimality_fun`` reads from its closure are
  differentiated too (they are converted to arguments with
  :func:`jax.closure_convert`); values that only the solver reads are not.
  A solver that JAX cannot trace (NumPy or SciPy code) is called on concrete
  values, outside ``jit``, and its solution must be shaped like
  ``init_params``.

  Args:
    optimality_fun: ``F(params, *args) -> pytree shaped like params``, called
      with the solution and the solver's arguments after ``init_params``, in
      the same order. ``jax.grad(train_loss)`` is the usual one.
    solver: the linear solver of the backward system: ``"gmres"`` (default,
      any invertible ``∂_w F``), ``"cg"`` (symmetric positive definite, e.g.
      ``F = ∇_w L`` at a minimum), ``"bicgstab"``, ``"neumann"``, a solver
      instance such as ``hippojax.CG(tol=1e-10)``, or any ``solve(matvec, b,
      init) -> (x, SolverStats)``.
    symmetric: ``∂_w F`` is symmetric (``F`` a gradient): products use a
      JVP instead of a VJP; the residual is still certified with the VJP.
    damping: ``δ >= 0`` added to the diagonal of ``∂_w F`` (a biased but
      solvable system for an indefinite Hessian).
    fixed_point_tol: ``converged`` requires ``‖F(w)‖ / ‖w‖ <=
      fixed_point_tol``; ``None``: ``1e-3`` (``1e-2`` for 16-bit ``w``).
    has_aux: the solver returns ``(params, aux)``; ``aux`` is passed through
      and not differentiated.
    on_diagnostics: what each backward solve does with its
      :class:`~hippojax.HyperGradInfo` (``solution`` left out), through
      :func:`jax.debug.callback`, so it works under ``jit``, ``grad`` and
      ``vmap``: ``"warn"`` (default) issues a ``RuntimeWarning`` when it did
      not converge; a callable receives it; ``None`` skips it.

  Returns:
    A decorator: ``solve -> solve`` with the implicit derivative.

  Raises:
    TypeError, ValueError: for invalid options; when called, for a solver
      argument that is not an array pytree (naming it), an
      ``optimality_fun`` that cannot be called as ``F(params, *args)``, or
      one whose output is not shaped like the solution (naming the path).

  Examples:
    >>> import jax, jax.numpy as jnp, hippojax
    >>> loss = lambda w, lam, x, y: (jnp.sum((x @ w - y) ** 2)
    ...                              + lam * jnp.sum(w ** 2))
    >>> @hippojax.custom_root(jax.grad(loss), solver="cg", symmetric=True)
    ... def ridge(init, lam, x, y):
    ...   return jnp.linalg.solve(x.T @ x + lam * jnp.eye(x.shape[1]), x.T @ y)
    >>> x, y = jnp.eye(3), jnp.ones(3)
    >>> float(jax.grad(lambda lam: ridge(None, lam, x, y).sum())(1.0))
    -0.75

  References:
    Blondel et al., "Efficient and Modular Implicit Differentiation",
    NeurIPS 2022.
  """
  options = _common("custom_root", "optimality_fun", optimality_fun, solver,
                    "root", symmetric, damping, fixed_point_tol, has_aux,
                    on_diagnostics, optimality_fun)
  return functools.partial(_decorate, options, optimality_fun)


def custom_fixed_point(train_step: Callable, *, solver: Any = "gmres",
                       system: str = "auto", symmetric: bool | None = None,
                       damping: float = 0.0,
                       fixed_point_tol: float | None = None,
                       has_aux: bool = False,
                       on_diagnostics: Any = "warn") -> Callable:
  r"""Decorates a solver whose output is a fixed point of ``train_step``.

  ``solve(init_params, *args) -> w`` with ``w = Φ(w, *args)``, ``Φ =
  train_step``; reverse-mode derivatives of anything computed from ``w`` use

  .. math::
     (I - J^\top + \delta I)\, q = \bar w, \qquad \bar\theta = B^\top q,

  with ``J = ∂Φ/∂w`` and ``B = ∂Φ/∂θ`` for every argument ``θ`` after
  ``init_params``: the rule of :func:`hippojax.implicit_hypergrad`, whose
  ``system``, ``symmetric`` and ``damping`` mean the same here. For a step
  built by :func:`hippojax.gradient_step`, ``system="auto"`` solves the
  symmetric Hessian form ``(H + δI) z = w̄`` (the step size cancels).

  Args:
    train_step: ``Φ(params, *args) -> params``, called with the solution and
      the solver's arguments after ``init_params``, in the same order (for
      hippojax steps: ``solve(init_params, hparams, batch)``).
    solver: as in :func:`custom_root` (default ``"gmres"``; ``"cg"`` for
      the Hessian form or a symmetric ``I − J``; ``"neumann"`` for a
      contraction).
    system: ``"auto"``, ``"hessian"`` or ``"fixed_point"``, as in
      :func:`hippojax.implicit_hypergrad`.
    symmetric: ``None`` (the step's own declaration), ``True`` or ``False``,
      as in :func:`hippojax.implicit_hypergrad`.
    damping: ``δ >= 0``, as in :func:`hippojax.implicit_hypergrad`.
    fixed_point_tol: ``converged`` requires ``‖Φ(w) − w‖ / ‖w‖ <=
      fixed_point_tol``; ``None``: ``1e-3`` (``1e-2`` for 16-bit ``w``).
    has_aux: the solver returns ``(params, aux)``; ``aux`` is not
      differentiated.
    on_diagnostics: ``"warn"`` (default), a callable or ``None``, as in
      :func:`custom_root`.

  Returns:
    A decorator: ``solve -> solve`` with the implicit derivative.

  Raises:
    TypeError, ValueError: as in :func:`custom_root`.

  Examples:
    >>> import jax, jax.numpy as jnp, hippojax
    >>> loss = lambda w, lam, b: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
    >>> step = hippojax.gradient_step(loss, learning_rate=0.1)
    >>> @hippojax.custom_fixed_point(step, solver="cg")
    ... def train(init, lam, batch):
    ...   return jax.lax.fori_loop(0, 200, lambda _, w: step(w, lam, batch),
    ...                            init)
    >>> g = jax.grad(lambda lam: train(jnp.zeros(2), lam, None).sum())(1.0)
    >>> round(float(g), 4)  # d/dλ of 2/(1 + λ)
    -0.5
  """
  options = _common("custom_fixed_point", "train_step", train_step, solver,
                    "fixed_point", symmetric, damping, fixed_point_tol,
                    has_aux, on_diagnostics, train_step)
  system = implicit_lib.resolve_system(system, train_step,
                                       options.linear_solve)
  options = dataclasses.replace(options, system=system)
  return functools.partial(_decorate, options, train_step)
