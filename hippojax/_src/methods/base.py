"""The interface every method of :func:`hippojax.hypergradient` implements."""

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from hippojax._src.base import all_finite
from hippojax._src.base import HyperGrad

PyTree = Any


class MethodState(NamedTuple):
  """The method's part of :class:`~hippojax.HypergradientState`.

  Attributes:
    tol: tolerance of the next linear solve (``0`` without one).
    warm_start: the linear-system variable carried between outer steps, shaped
      like the inner parameters, or ``None``.
    damping: damping of the next linear solve (``0`` without one).
    extra: any further method-specific state, or ``None``.
  """

  tol: jax.Array
  warm_start: PyTree
  damping: jax.Array
  extra: PyTree


@dataclasses.dataclass(frozen=True)
class Method:
  """A hypergradient method as the optax transform drives it.

  Subclasses are frozen dataclasses whose fields are their options (with
  defaults), so equal options give equal, hashable methods.
  """

  name: ClassVar[str] = ""
  #: Extra arguments of ``update`` that the method cannot do without.
  required: ClassVar[tuple[str, ...]] = ("inner_params",)
  #: Extra arguments it reads when given.
  optional: ClassVar[tuple[str, ...]] = ("train_batch", "val_batch")
  #: Whether a large solver residual refuses the hypergradient.
  solves: ClassVar[bool] = False

  @classmethod
  def option_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))

  @classmethod
  def create(cls, **options) -> "Method":
    """Validates ``options`` (raising clear errors) and builds the method."""
    return cls(**options)

  def missing(self, extra: dict) -> list[str]:
    """The required extra arguments absent from ``extra``."""
    return [k for k in self.required if extra.get(k) is None]

  def init(self, hparams: PyTree, dtype) -> MethodState:
    del hparams
    zero = jnp.zeros((), dtype)
    return MethodState(tol=zero, warm_start=None, damping=zero, extra=None)

  def hypergrad(self, state: MethodState, hparams: PyTree, extra: dict, *,
                train_step, val_loss) -> tuple[HyperGrad, PyTree]:
    """One hypergradient; returns it and the new ``state.extra``."""
    raise NotImplementedError

  def accept(self, hg: HyperGrad) -> jax.Array:
    """Beyond finiteness, whether ``hg`` may reach the hyperparameters."""
    del hg
    return jnp.asarray(True)

  def next_state(self, state: MethodState, hg: HyperGrad, accepted: jax.Array,
                 new_extra: PyTree) -> MethodState:
    """The state for the next outer step (tolerance, warm start, damping)."""
    del hg, accepted
    return state._replace(extra=new_extra)


def accepted(method: Method, hg: HyperGrad) -> jax.Array:
  """Whether ``hg`` may reach the hyperparameters.

  Its gradient, value and residual must be finite (a solver fed a non-finite
  right-hand side may stop at once with a finite, stale solution, so the
  value and residual are checked too), and the method's own test must pass.
  """
  return (all_finite(hg.grad) & jnp.isfinite(hg.value) &
          ~jnp.isnan(hg.info.residual) & method.accept(hg))
