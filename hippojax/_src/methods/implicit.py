r"""The implicit methods of the transform: ``ift``, ``hoag``, ``implicit``.

They share the safeguards that keep an outer loop honest on non-convex
networks (see :class:`Implicit`): a refused hypergradient never reaches
``λ``, a diverged solve never becomes the next warm start, and damping adapts.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from hippojax._src import checks
from hippojax._src import implicit as implicit_lib
from hippojax._src import solvers as solvers_lib
from hippojax._src.base import HyperGrad
from hippojax._src.methods.base import accepted as is_accepted
from hippojax._src.methods.base import Method
from hippojax._src.methods.base import MethodState
from hippojax._src.methods.registry import register

PyTree = Any

#: Adaptive damping: the first non-zero value, and the factors by which a
#: failed solve raises it and a converged one lowers it.
DAMPING_START = 1e-3
DAMPING_INCREASE = 10.0
DAMPING_DECREASE = 0.8
#: With ``damp_on_stall``: the factor after a solve that ran out of
#: iterations (finite, positive curvature, residual above ``tol``).
DAMPING_STALL = 2.0
DAMPING_MAX = 1e6


@dataclasses.dataclass(frozen=True)
class _ScheduledCG:
  """CG whose tolerance arrives as a traced array (HOAG's schedule)."""

  maxiter: int


@functools.partial(jax.jit, static_argnames=(
    "train_step", "val_loss", "solver", "symmetric", "system",
    "fixed_point_tol"))
def _hypergrad(train_step, val_loss, hparams, params, train_batch, val_batch,
               init, damping, tol, *, solver, symmetric, system,
               fixed_point_tol) -> HyperGrad:
  if isinstance(solver, _ScheduledCG):
    solve = functools.partial(solvers_lib.conjugate_gradient, tol=tol,
                              maxiter=solver.maxiter)
  else:
    solve, tol = solver, None
  return implicit_lib.implicit_core(
      train_step, val_loss, hparams, params, train_batch, val_batch, init,
      solve, symmetric=symmetric, system=system, damping=damping, tol=tol,
      fixed_point_tol=fixed_point_tol, params_name="inner_params")


@dataclasses.dataclass(frozen=True, eq=False)
class Implicit(Method):
  r"""Any solver on the implicit system, with the transform's safeguards.

  * **Refusal.** A hypergradient whose certified residual exceeds
    ``max_residual`` (default ``1``: the solve did worse than ``q = 0``), or
    that is not finite, is replaced by zeros and counted.
  * **Warm starts.** A refused or diverged solve resets the warm start to
    zero instead of seeding the next solve with it.
  * **Adaptive damping** (``adaptive_damping=True``): after a solve that met
    non-positive curvature or was refused, the damping ``δ`` rises to
    ``max(10 δ, 1e-3, 2 (δ − κ))`` (``κ`` CG's measured curvature, when it
    is negative); after a converged solve whose curvature stayed above
    ``δ`` it shrinks by a factor 0.8, down to the ``damping`` option, which
    is the floor (default 0). With ``damp_on_stall=True`` (the studies'
    setting), a solve that ran out of iterations without meeting its
    tolerance also raises ``δ`` to ``max(2 δ, 1e-3)``: on a network the
    Hessian's near-zero eigenvalues make CG stall, and damping is what
    conditions the system; it is then lowered only after solves that used
    at most half of ``maxiter``. Off by default, since on a convex problem a
    stall calls for more iterations, not for bias.
  * **Retries** (``retries=k``, the studies use 2; default 0): a solve that
    met non-positive curvature or was refused is redone at once, from zero,
    with the raised damping, up to ``k`` times (Levenberg–Marquardt), so
    that the outer step still gets a usable hypergradient.
  """

  solver: Any = "cg"
  symmetric: bool | None = None
  system: str = "auto"
  damping: float = 0.0
  adaptive_damping: bool = True
  damp_on_stall: bool = False
  retries: int = 0
  max_residual: float = 1.0
  fixed_point_tol: float | None = None
  inner_params_like: Any = None

  solves = True

  def __post_init__(self):
    if self.symmetric is not None and not isinstance(self.symmetric, bool):
      raise TypeError(f"symmetric must be None, True or False, got "
                      f"{self.symmetric!r}.")
    if self.system not in implicit_lib.SYSTEMS:
      raise ValueError(f"system={self.system!r} is not one of "
                       f"{implicit_lib.SYSTEMS}.")
    object.__setattr__(self, "damping", implicit_lib.check_damping(
        self.damping))
    if not isinstance(self.adaptive_damping, bool):
      raise TypeError(f"adaptive_damping must be True or False, got "
                      f"{self.adaptive_damping!r}.")
    checks.check_int("retries", self.retries, 0)
    if not isinstance(self.damp_on_stall, bool):
      raise TypeError(f"damp_on_stall must be True or False, got "
                      f"{self.damp_on_stall!r}.")
    checks.check_positive("max_residual", self.max_residual)
    implicit_lib.check_fixed_point_tol(self.fixed_point_tol)
    if self.inner_params_like is not None:
      object.__setattr__(self, "inner_params_like", jax.eval_shape(
          lambda t: t, self.inner_params_like))

  # The solver handed to the jitted core, and the first tolerance.
  def _solver(self):
    return solvers_lib.get_solver(self.solver)

  def first_tol(self, dtype) -> float:
    tol = getattr(self._solver(), "tol", None)
    return solvers_lib.default_tol(dtype) if tol is None else tol

  def next_tol(self, tol):
    return tol

  def init(self, hparams, dtype) -> MethodState:
    del hparams
    warm = None
    if self.inner_params_like is not None:
      warm = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                          self.inner_params_like)
    return MethodState(tol=jnp.asarray(self.first_tol(dtype), dtype),
                       warm_start=warm,
                       damping=jnp.asarray(self.damping, dtype), extra=None)

  def hypergrad(self, state, hparams, extra, *, train_step, val_loss):
    w = extra["inner_params"]
    warm = state.warm_start
    if warm is not None:  # the solve runs in the dtypes of inner_params
      warm = checks.cast_to_inner_params(warm, w)
    solver = self._solver()
    system = implicit_lib.resolve_system(self.system, train_step, solver)
    symmetric = implicit_lib.resolve_symmetric(self.symmetric, train_step)
    hparams = checks.as_float_tree("hparams", hparams)

    def solve(damping, warm):
      return _hypergrad(
          train_step, val_loss, hparams, w, extra.get("train_batch"),
          extra.get("val_batch"), warm, damping, state.tol, solver=solver,
          symmetric=symmetric, system=system,
          fixed_point_tol=self.fixed_point_tol)

    hg = solve(state.damping, warm)
    if not (self.retries and self.adaptive_damping):
      return hg, None

    # Levenberg–Marquardt: a solve that met non-positive curvature or was
    # refused is redone at once, from zero, with the raised damping.
    def again(carry):
      k, _, hg = carry
      return (k < self.retries) & self._diverged(hg)

    def retry(carry):
      k, damping, hg = carry
      damping = self._raised(damping, hg.info).astype(damping.dtype)
      return k + 1, damping, solve(damping, None)

    _, damping, hg = jax.lax.while_loop(
        again, retry, (jnp.asarray(0, jnp.int32), state.damping, hg))
    return hg, damping  # the damping of the solve returned

  def accept(self, hg: HyperGrad) -> jax.Array:
    return hg.info.residual <= self.max_residual

  def _diverged(self, hg: HyperGrad) -> jax.Array:
    return ~is_accepted(self, hg) | (hg.info.curvature <= 0)

  def _raised(self, damping, info):
    """``max(10 δ, 1e-3, 2 (δ − κ))``, at most ``DAMPING_MAX``."""
    jump = jnp.where((info.curvature <= 0) & jnp.isfinite(info.curvature),
                     2 * (damping - info.curvature), 0.0)
    raised = jnp.maximum(jnp.maximum(DAMPING_INCREASE * damping,
                                     DAMPING_START), jump)
    return jnp.minimum(raised, DAMPING_MAX)

  def next_state(self, state, hg, accepted, new_extra) -> MethodState:
    info = hg.info
    if new_extra is not None:  # retried: the damping of the solve returned
      state = state._replace(damping=new_extra.astype(state.damping.dtype))
    bad_curvature = info.curvature <= 0
    diverged = ~accepted | bad_curvature
    warm = state.warm_start
    if warm is not None:
      q = optax.tree.cast_like(info.solution, warm)
      keep = accepted & jnp.isfinite(optax.tree.norm(q))
      warm = optax.tree.where(
          diverged, optax.tree.zeros_like(warm),
          optax.tree.where(keep, q, warm))
    damping = state.damping
    if self.adaptive_damping:
      solved = (jnp.isfinite(info.residual) & (info.residual <= state.tol) &
                ~bad_curvature)
      raised = self._raised(damping, info)
      # Lower only where the damped operator had curvature to spare (CG's
      # smallest Rayleigh quotient above δ: the undamped one was positive
      # along every direction CG explored), and slowly, so that damping
      # does not fall straight back into the failure it cured.
      spare = ~(info.curvature <= damping)  # nan (no CG): no information
      maxiter = getattr(self._solver(), "maxiter", None)
      if self.damp_on_stall and maxiter is not None:
        # ... and, where stalls raise it, only when the solve had iterations
        # to spare, so that damping settles where CG meets its budget.
        spare = spare & (info.num_iters <= maxiter // 2)
      lowered = DAMPING_DECREASE * damping
      lowered = jnp.where(lowered < self.damping + 1e-2 * DAMPING_START,
                          self.damping, lowered)
      stalled = (jnp.asarray(self.damp_on_stall) & ~diverged & ~solved &
                 jnp.isfinite(info.residual))
      stall_raised = jnp.maximum(DAMPING_STALL * damping, DAMPING_START)
      damping = jnp.where(
          diverged, raised,
          jnp.where(solved & spare, lowered,
                    jnp.where(stalled, jnp.minimum(stall_raised, DAMPING_MAX),
                              damping)))
      damping = damping.astype(state.damping.dtype)
    tol = self.next_tol(state.tol).astype(state.tol.dtype)
    return MethodState(tol=tol, warm_start=warm, damping=damping,
                       extra=None)


@register("ift")
@dataclasses.dataclass(frozen=True, eq=False)
class Ift(Implicit):
  """``ift``: a Neumann series of ``num_iters`` terms (no warm start)."""

  solver: Any = None
  num_iters: int = 10
  tol: float = 1e-3

  @classmethod
  def option_names(cls):
    return tuple(n for n in super().option_names()
                 if n not in ("solver", "system", "inner_params_like"))

  def __post_init__(self):
    super().__post_init__()
    self._solver()  # validates num_iters and tol

  def _solver(self):
    return solvers_lib.Neumann(num_iters=self.num_iters, tol=self.tol)


@register("hoag")
@dataclasses.dataclass(frozen=True, eq=False)
class Hoag(Implicit):
  r"""HOAG: warm-started CG with the tolerance schedule of Pedregosa (2016).

  The ``k``-th outer step solves to relative residual
  ``ε_k = max(tol · decay^k, min_tol)``; ``min_tol=None`` picks a floor the
  dtype can reach (``1e-4`` in float32, ``1e-6`` in float64).
  """

  solver: Any = None
  tol: float = 1e-3
  decay: float = 0.9
  min_tol: float | None = None
  maxiter: int = 100

  @classmethod
  def option_names(cls):
    return tuple(n for n in super().option_names() if n != "solver")

  def __post_init__(self):
    super().__post_init__()
    checks.check_positive("tol", self.tol)
    decay = checks.check_positive("decay", self.decay)
    if decay > 1:
      raise ValueError(f"decay must be in (0, 1] (the tolerance shrinks by "
                       f"this factor each outer step), got {decay!r}.")
    if self.min_tol is not None:
      min_tol = checks.check_positive("min_tol", self.min_tol)
      if min_tol > self.tol:
        raise ValueError(f"min_tol={min_tol!r} must be <= tol={self.tol!r}.")
    checks.check_int("maxiter", self.maxiter, 1)

  def _solver(self):
    return _ScheduledCG(self.maxiter)

  def first_tol(self, dtype) -> float:
    return self.tol

  def next_tol(self, tol):
    floor = self.min_tol
    if floor is None:
      floor = min(solvers_lib.default_tol(tol.dtype), self.tol)
    return jnp.maximum(tol * self.decay, floor)


@register("implicit")
@dataclasses.dataclass(frozen=True, eq=False)
class ImplicitSolver(Implicit):
  """``implicit_hypergrad`` with any solver (default CG), warm-started."""

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "solver", solvers_lib.get_solver(self.solver))
