r"""AmIGO: amortised implicit gradients, several warm-started linear steps.

Arbel & Mairal (2022). The user's loop takes ``T`` SGD steps on the weights
between hypergradients; each ``update`` of ``hypergradient(method="amigo")``
then takes ``M`` (``linear_steps``) stochastic Richardson steps on
``(I − Jᵀ) q = ∇_w L_val``, warm-started from the last ``q``, one per
minibatch of a stack of ``M`` (a leading axis of length ``M`` on
``train_batch`` and ``val_batch``), and emits the last step's estimate:

.. math::
   q_{m+1} = q_m - \rho\,\big((I - J_m^\top)\, q_m - \nabla_w L_{val,m}\big),
   \qquad d_\lambda = \nabla_\lambda L_{val,M-1} + B_{M-1}^\top q_{M-1}.

With ``M = 1`` the batches carry no extra axis and this is SOBA's update.

References:
  Arbel, Mairal, "Amortized implicit differentiation for stochastic bilevel
  optimization", ICLR 2022.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from hippojax._src import checks
from hippojax._src.methods.registry import register
from hippojax._src.stochastic import _common


def _check_stack(name: str, batch, m: int) -> None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
    if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != m:
      raise ValueError(
          f"{name}{jax.tree_util.keystr(path)} has shape "
          f"{tuple(jnp.shape(leaf))}; amigo with linear_steps={m} needs a "
          f"stack of {m} minibatches, a leading axis of length {m} on every "
          "leaf.")


@register("amigo")
@dataclasses.dataclass(frozen=True, eq=False)
class Amigo(_common.SingleLoop):
  """AmIGO; options ``inner_params_like`` (required), ``linear_rate`` and
  ``linear_steps`` (default 10)."""

  linear_steps: int = 10

  def __post_init__(self):
    super().__post_init__()
    checks.check_int("linear_steps", self.linear_steps, 1)

  def hypergrad(self, state, hparams, extra, *, train_step, val_loss):
    w = extra["inner_params"]
    q0 = checks.cast_to_inner_params(state.warm_start, w)
    hparams = checks.as_float_tree("hparams", hparams)
    tb, vb = extra.get("train_batch"), extra.get("val_batch")

    def one(q, batches):
      step = _common.directions(train_step, val_loss, hparams, w, q, *batches,
                                self.damping)
      return optax.tree.add_scale(q, -self.linear_rate, step.direction), step

    m = self.linear_steps
    if m == 1:
      q, step = one(q0, (tb, vb))
    else:
      _check_stack("train_batch", tb, m)
      _check_stack("val_batch", vb, m)
      q, steps = jax.lax.scan(one, q0, (tb, vb))
      step = jax.tree.map(lambda x: x[-1], steps)
    return _common.result(step, hparams, w, q, m), None
