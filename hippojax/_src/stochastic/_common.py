r"""What the single-loop solvers share: one linear-system step and the state.

Every single-loop solver keeps the linear-system variable ``q`` of

.. math::
   (I - J^\top)\, q = \nabla_w L_{val}(w, \lambda),
   \qquad J = \partial \Phi / \partial w,\ B = \partial \Phi / \partial \lambda,

in the transform's ``warm_start`` and moves it by one (or a few) Richardson
steps per minibatch, ``q ← q − ρ((I − Jᵀ) q − ∇_w L_val)``. One ``jax.vjp``
of the user's ``train_step`` at ``(w, λ, train_batch)`` gives ``Jᵀ q``,
``Bᵀ q`` and ``Φ(w)``, so a step costs one ``train_step`` VJP and one
validation gradient. For a gradient step ``Φ = w − η ∇L_train`` the
Richardson step with ``ρ = 1`` is SOBA's step on ``z = η q`` with step size
``η``: the step's own learning rate is the natural step size.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hippojax._src import checks
from hippojax._src.implicit import relative_norm as relative
from hippojax._src.base import all_finite
from hippojax._src.base import HyperGrad
from hippojax._src.base import HyperGradInfo
from hippojax._src.methods.base import Method
from hippojax._src.methods.base import MethodState

PyTree = Any


class Step(NamedTuple):
  """The single-loop directions at ``(w, λ, q)`` on one pair of batches.

  Attributes:
    value: validation loss on the validation batch.
    hypergrad: ``∇_λ L_val + Bᵀ q``.
    direction: ``(I − Jᵀ) q − ∇_w L_val``, the linear system's residual.
    grad_w: ``∇_w L_val``.
    displacement: ``Φ(w) − w``.
  """

  value: jax.Array
  hypergrad: PyTree
  direction: PyTree
  grad_w: PyTree
  displacement: PyTree


def directions(train_step, val_loss, hparams, params, q, train_batch,
               val_batch, damping=0.0) -> Step:
  """The hypergradient estimate and the residual of the (damped) linear
  system ``(I − Jᵀ + δI) q = ∇_w L_val`` at ``q``."""
  value, (g_w, g_lam) = jax.value_and_grad(val_loss, argnums=(0, 1))(
      params, hparams, val_batch)
  new, vjp = jax.vjp(lambda w, lam: train_step(w, lam, train_batch), params,
                     hparams)
  jt_q, bt_q = vjp(q)
  direction = jax.tree.map(lambda a, b, c: (1 + damping) * a - b - c, q,
                           jt_q, g_w)
  return Step(value, optax.tree.add(g_lam, bt_q), direction, g_w,
              optax.tree.sub(new, params))


def result(step: Step, hparams: PyTree, params: PyTree, q_new: PyTree,
           num_iters: int) -> HyperGrad:
  """The :class:`HyperGrad` of a single-loop update.

  ``info.solution`` is the *updated* ``q``; ``residual`` is the minibatch
  estimate of the linear system's relative residual at the ``q`` the
  hypergradient used; ``fixed_point_residual`` is ``‖Φ(w) − w‖/‖w‖`` on the
  minibatch; ``converged`` says the result is finite (a single-loop method
  never solves to a tolerance).
  """
  grad = jax.tree.map(lambda g, h: g.astype(h.dtype), step.hypergrad, hparams)
  residual = relative(step.direction, step.grad_w)
  finite = (all_finite(grad) & jnp.isfinite(step.value) & all_finite(q_new)
            & jnp.isfinite(residual))
  info = HyperGradInfo(
      num_iters=jnp.asarray(num_iters, jnp.int32), residual=residual,
      converged=finite, solution=q_new,
      fixed_point_residual=relative(step.displacement, params).astype(
          residual.dtype),
      curvature=jnp.full((), jnp.nan, residual.dtype))
  return HyperGrad(grad, step.value, info)


@dataclasses.dataclass(frozen=True, eq=False)
class SingleLoop(Method):
  """The options and state handling every single-loop method shares.

  ``q`` lives in the transform's ``warm_start`` (so ``inner_params_like`` is
  required); an update whose result is refused keeps the old ``q``.
  ``damping`` ``δ >= 0`` solves ``(I − Jᵀ + δI) q = ∇_w L_val``: the
  Richardson step then contracts even where the training loss has small
  negative curvature (non-convex networks), at the price of a bias of order
  ``δ``.
  """

  inner_params_like: Any = None
  linear_rate: float = 1.0
  damping: float = 0.0

  required = ("inner_params",)
  optional = ("train_batch", "val_batch")

  def __post_init__(self):
    if self.inner_params_like is None:
      raise TypeError(
          f"hypergradient(method={self.name!r}) needs inner_params_like=: "
          "the linear-system variable q lives in the transform's state, "
          "shaped like the inner parameters, and init(hparams) never sees "
          "them. Pass inner_params_like=params (arrays or shapes).")
    object.__setattr__(self, "inner_params_like", jax.eval_shape(
        lambda t: t, self.inner_params_like))
    checks.check_positive("linear_rate", self.linear_rate)
    if isinstance(self.damping, bool) or not isinstance(
        self.damping, (int, float)) or not 0 <= self.damping < float("inf"):
      raise ValueError(f"damping must be a finite number >= 0, got "
                       f"{self.damping!r}.")

  def init(self, hparams, dtype) -> MethodState:
    del hparams
    zero = jnp.zeros((), dtype)
    q = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                     self.inner_params_like)
    return MethodState(tol=zero, warm_start=q, damping=zero,
                       extra=self.init_extra(dtype))

  def init_extra(self, dtype) -> PyTree:
    del dtype
    return None

  def next_state(self, state, hg, accepted, new_extra) -> MethodState:
    keep = accepted & all_finite(hg.info.solution)
    q = optax.tree.where(
        keep, optax.tree.cast_like(hg.info.solution, state.warm_start),
        state.warm_start)
    return state._replace(warm_start=q, extra=new_extra)
