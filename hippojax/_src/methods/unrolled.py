"""The unrolled methods in the transform: ``reverse``, ``forward``, ``drmad``.

Used every outer step from the current weights, they are truncated
back-propagation through ``T`` steps (short-horizon and greedy for small
``T``), and reach optimiser hyperparameters (learning rates, momenta) that the
implicit methods cannot.
"""

import dataclasses

from hippojax._src import checks
from hippojax._src import unrolled as unrolled_lib
from hippojax._src.methods.base import Method
from hippojax._src.methods.registry import register


@dataclasses.dataclass(frozen=True, eq=False)
class _Unrolled(Method):
  num_steps: int | None = None

  required = ("params0", "train_batches")
  optional = ("val_batch",)

  def __post_init__(self):
    if self.num_steps is not None:
      checks.check_int("num_steps", self.num_steps, 0)

  def missing(self, extra):
    return [k for k in self.required if extra.get(k) is None and not (
        k == "train_batches" and self.num_steps is not None)]


@register("reverse")
@dataclasses.dataclass(frozen=True, eq=False)
class Reverse(_Unrolled):
  """:func:`hippojax.reverse` from ``params0`` over ``train_batches``."""

  remat: bool | int = False

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "remat", unrolled_lib._check_remat(  # pylint: disable=W0212
        self.remat))

  def hypergrad(self, state, hparams, extra, *, train_step, val_loss):
    del state
    return unrolled_lib.reverse(
        train_step, val_loss, hparams, extra["params0"],
        extra.get("train_batches"), extra.get("val_batch"), remat=self.remat,
        num_steps=self.num_steps), None


@register("forward")
@dataclasses.dataclass(frozen=True, eq=False)
class Forward(_Unrolled):
  """:func:`hippojax.forward` from ``params0`` over ``train_batches``."""

  def hypergrad(self, state, hparams, extra, *, train_step, val_loss):
    del state
    return unrolled_lib.forward(
        train_step, val_loss, hparams, extra["params0"],
        extra.get("train_batches"), extra.get("val_batch"),
        num_steps=self.num_steps), None


@register("drmad")
@dataclasses.dataclass(frozen=True, eq=False)
class DrMAD(_Unrolled):
  """:func:`hippojax.drmad`: ``inner_params`` is the trained ``w_T``."""

  required = ("inner_params", "params0", "train_batches")

  def hypergrad(self, state, hparams, extra, *, train_step, val_loss):
    del state
    return unrolled_lib.drmad(
        train_step, val_loss, hparams, extra["params0"],
        extra["inner_params"], extra.get("train_batches"),
        extra.get("val_batch"), num_steps=self.num_steps), None
