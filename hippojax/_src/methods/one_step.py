"""``t1t2`` in the transform: the hypergradient through one step."""

import dataclasses

from hippojax._src.methods.base import Method
from hippojax._src.methods.registry import register
from hippojax._src.one_step import t1t2


@register("t1t2")
@dataclasses.dataclass(frozen=True, eq=False)
class T1T2(Method):
  """:func:`hippojax.t1t2` at ``inner_params``; no options."""

  def hypergrad(self, state, hparams, extra, *, train_step, val_loss):
    del state
    return t1t2(train_step, val_loss, hparams, extra["inner_params"],
                extra.get("train_batch"), extra.get("val_batch")), None
