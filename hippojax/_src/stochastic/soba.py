r"""SOBA: one step on the weights, the linear system and ``λ`` per minibatch.

Dagréou et al. (2022), in the fixed-point form of :mod:`hippojax._src.implicit`.
The user's training loop moves the weights ``w`` (one SGD step per
minibatch); each ``update`` of ``hypergradient(method="soba")``, at the
current ``w`` and on the current minibatches, emits the hypergradient
estimate and takes one Richardson step on ``(I − Jᵀ) q = ∇_w L_val``:

.. math::
   d_\lambda = \nabla_\lambda L_{val}(w, \lambda) + B^\top q, \qquad
   q \leftarrow q - \rho\,\big((I - J^\top)\, q - \nabla_w L_{val}\big),

with ``J``, ``B`` the Jacobians of ``train_step`` on ``train_batch`` and
``∇L_val`` on ``val_batch``, all at the old ``q`` and from one VJP. ``ρ = 1``
(``linear_rate``) is ``q ← Jᵀ q + ∇_w L_val``; for a gradient step it is
SOBA's step with the step's own learning rate.

References:
  Dagréou, Ablin, Vaiter, Moreau, "A framework for bilevel optimization that
  enables stochastic and global variance reduction algorithms", NeurIPS 2022.
"""

import dataclasses

import optax

from hippojax._src import checks
from hippojax._src.methods.registry import register
from hippojax._src.stochastic import _common


@register("soba")
@dataclasses.dataclass(frozen=True, eq=False)
class Soba(_common.SingleLoop):
  """SOBA; options ``inner_params_like`` (required), ``linear_rate``,
  ``damping``."""

  def hypergrad(self, state, hparams, extra, *, train_step, val_loss):
    w = extra["inner_params"]
    q = checks.cast_to_inner_params(state.warm_start, w)
    hparams = checks.as_float_tree("hparams", hparams)
    step = _common.directions(train_step, val_loss, hparams, w, q,
                              extra.get("train_batch"), extra.get("val_batch"),
                              self.damping)
    q_new = optax.tree.add_scale(q, -self.linear_rate, step.direction)
    return _common.result(step, hparams, w, q_new, 1), None
