r"""SABA: SOBA with SAGA memories of every per-sample quantity.

Dagréou et al. (2022). For a finite training set of ``n`` examples and a
validation set of ``m``, every direction SOBA estimates on a minibatch is a
mean of per-example terms, so SAGA's variance reduction applies to each:
for a term ``t_i`` with memory ``M_i`` (its value when example ``i`` was
last sampled) and batch ``S``,

.. math::
   \hat t = \frac{1}{|S|} \sum_{i \in S} (t_i - M_i)
            + \frac{1}{n} \sum_{j=1}^{n} M_j, \qquad M_i \leftarrow t_i.

The memorised terms, evaluated at ``(w, λ, q)`` with one per-example VJP of
``train_step`` (``vmap`` over the batch, each example a batch of one):

* per training example: ``q − J_iᵀ q`` and ``Φ_i(w) − w`` (``P`` numbers
  each, ``P`` the number of weights) and ``B_iᵀ q`` (``H`` numbers, the number
  of hyperparameters);
* per validation example: ``∇_w ℓ_j`` (``P``) and ``∇_λ ℓ_j`` (``H``).

So the memory is ``(2P + H)·n + (P + H)·m`` numbers: the general ``n × P``
case. (For a linear model per-example *scalars* would suffice, since each
per-example gradient is a multiple of its features; this generic version
does not exploit that.) ``init`` computes the size and refuses, naming it,
when it exceeds ``max_memory_bytes``.

The training step must average a per-example loss (so the full-batch step
is the mean of the per-example steps); ``train_indices`` and
``val_indices`` name the examples of each minibatch (drawn with or without
replacement: an example drawn twice is memorised once). The memories
start at zero and fill during the first epoch. Besides the hyperparameter direction, the state's ``inner_step`` is
the variance-reduced estimate of ``Φ(w) − w``: adding it to the weights
(``w ← w + state.extra.inner_step``) instead of a plain SGD step makes the
whole loop SABA.

References:
  Dagréou, Ablin, Vaiter, Moreau, NeurIPS 2022; Defazio, Bach,
  Lacoste-Julien, "SAGA", NeurIPS 2014.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hippojax._src import checks
from hippojax._src.methods.registry import register
from hippojax._src.stochastic import _common

PyTree = Any

#: The memory SABA may allocate unless told otherwise.
DEFAULT_MAX_MEMORY = 2 * 2**30


class SagaTable(NamedTuple):
  """A SAGA memory: ``rows`` (leading axis ``n``) and their ``mean``."""

  rows: PyTree
  mean: PyTree


class SabaMemory(NamedTuple):
  """SABA's part of the transform state (``state.extra``).

  Attributes:
    inner_step: the variance-reduced estimate of ``Φ(w) − w`` on the last
      minibatch, shaped like the weights (zeros before the first update).
    train_linear: memory of ``q − J_iᵀ q`` per training example.
    train_hyper: memory of ``B_iᵀ q`` per training example.
    train_step: memory of ``Φ_i(w) − w`` per training example.
    val_weights: memory of ``∇_w ℓ_j`` per validation example.
    val_hyper: memory of ``∇_λ ℓ_j`` per validation example.
  """

  inner_step: PyTree
  train_linear: SagaTable
  train_hyper: SagaTable
  train_step: SagaTable
  val_weights: SagaTable
  val_hyper: SagaTable


def _bytes(tree: PyTree) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def memory_bytes(inner_params_like: Any, hparams: Any, num_train: int,
                 num_val: int) -> int:
  """Bytes of SABA's memories (rows and means) for these shapes and sizes.

  ``(2P + H)(n + 1) + (P + H)(m + 1)`` numbers, ``P`` the weights, ``H`` the
  hyperparameters, ``n``/``m`` the training/validation set sizes, plus
  ``P`` for ``inner_step``.
  """
  p = _bytes(jax.eval_shape(lambda t: t, inner_params_like))
  h = _bytes(jax.eval_shape(lambda t: t, hparams))
  return (2 * p + h) * (num_train + 1) + (p + h) * (num_val + 1) + p


def _table(like: PyTree, n: int) -> SagaTable:
  rows = jax.tree.map(lambda s: jnp.zeros((n, *s.shape), s.dtype), like)
  return SagaTable(rows, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                      like))


def _saga(table: SagaTable, idx: jax.Array, new: PyTree, n: int):
  """The SAGA estimate of the mean of a term, and the updated memory."""
  counts = jnp.sum(idx[:, None] == idx[None, :], axis=1)

  def leaf(rows, mean, t):
    t, old = t.astype(rows.dtype), rows[idx]
    # A non-finite example keeps its old memory: one bad value in the running
    # mean would poison every later estimate.
    ok = jnp.all(jnp.isfinite(t), axis=tuple(range(1, t.ndim)))
    t = jnp.where(ok.reshape((-1,) + (1,) * (t.ndim - 1)), t, old)
    diff = t - old
    rows = rows.at[idx].set(t)
    # An example drawn twice in one batch is stored once: count what was
    # stored, each distinct example once, so that the running mean stays
    # the mean of the rows (O(B²) comparisons, B the batch size).
    stored = (rows[idx] - old) / counts.reshape((-1,) + (1,) * (t.ndim - 1))
    return (jnp.mean(diff, axis=0) + mean, rows,
            mean + jnp.sum(stored, axis=0) / n)

  out = jax.tree.map(leaf, table.rows, table.mean, new)
  est, rows, mean = jax.tree.transpose(jax.tree.structure(table.mean),
                                       jax.tree.structure((0, 0, 0)), out)
  return est, SagaTable(rows, mean)


def _examples(fn, batch: PyTree) -> PyTree:
  """``fn`` on each example of ``batch`` as a batch of one (``vmap``)."""
  return jax.vmap(lambda ex: fn(jax.tree.map(lambda a: a[None], ex)))(batch)


def _check_indices(name: str, idx: Any, batch: PyTree) -> jax.Array:
  idx = jnp.asarray(idx)
  if idx.ndim != 1 or not jnp.issubdtype(idx.dtype, jnp.integer):
    raise ValueError(f"{name} must be a 1-D integer array (the examples' "
                     f"positions in the data set), got shape "
                     f"{tuple(idx.shape)} dtype {idx.dtype}.")
  which = name.replace("indices", "batch")
  for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
    if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != idx.shape[0]:
      raise ValueError(
          f"{which}{jax.tree_util.keystr(path)} has shape "
          f"{tuple(jnp.shape(leaf))}, but {name} has {idx.shape[0]} entries;"
          " every leaf needs one row per example.")
  return idx


@register("saba")
@dataclasses.dataclass(frozen=True, eq=False)
class Saba(_common.SingleLoop):
  """SABA; options ``inner_params_like``, ``num_train``, ``num_val``
  (required), ``linear_rate`` and ``max_memory_bytes`` (default 2 GiB:
  ``init`` refuses, naming the size, when the memories need more)."""

  num_train: int | None = None
  num_val: int | None = None
  max_memory_bytes: int = DEFAULT_MAX_MEMORY

  required = ("inner_params", "train_batch", "val_batch", "train_indices",
              "val_indices")
  optional = ()

  def __post_init__(self):
    super().__post_init__()
    if self.num_train is None or self.num_val is None:
      raise TypeError(
          "hypergradient(method='saba') needs num_train= and num_val=, the "
          "sizes of the training and validation sets, to size its memories.")
    checks.check_int("num_train", self.num_train, 1)
    checks.check_int("num_val", self.num_val, 1)
    checks.check_int("max_memory_bytes", self.max_memory_bytes, 1)

  def init(self, hparams, dtype):
    like_w = self.inner_params_like
    like_h = jax.eval_shape(lambda t: t, hparams)
    need = memory_bytes(like_w, like_h, self.num_train, self.num_val)
    if need > self.max_memory_bytes:
      raise ValueError(
          f"saba's memories need {need / 2**20:.1f} MiB ((2P + H)·n + "
          f"(P + H)·m numbers: {_bytes(like_w)} bytes of weights P, "
          f"{_bytes(like_h)} bytes of hyperparameters H, n={self.num_train}, "
          f"m={self.num_val}), more than max_memory_bytes="
          f"{self.max_memory_bytes}; use soba or amigo (no memory), fewer "
          "examples, or raise max_memory_bytes.")
    state = super().init(hparams, dtype)
    n, m = self.num_train, self.num_val
    memory = SabaMemory(
        inner_step=state.warm_start, train_linear=_table(like_w, n),
        train_hyper=_table(like_h, n), train_step=_table(like_w, n),
        val_weights=_table(like_w, m), val_hyper=_table(like_h, m))
    return state._replace(extra=memory)

  def hypergrad(self, state, hparams, extra, *, train_step, val_loss):
    w = extra["inner_params"]
    q = checks.cast_to_inner_params(state.warm_start, w)
    hparams = checks.as_float_tree("hparams", hparams)
    tb, vb = extra["train_batch"], extra["val_batch"]
    ti = _check_indices("train_indices", extra["train_indices"], tb)
    vi = _check_indices("val_indices", extra["val_indices"], vb)
    mem = state.extra

    def per_train(batch):
      new, vjp = jax.vjp(lambda w_, lam: train_step(w_, lam, batch), w,
                         hparams)
      jt_q, bt_q = vjp(q)
      return optax.tree.sub(q, jt_q), bt_q, optax.tree.sub(new, w)

    def per_val(batch):
      return jax.value_and_grad(val_loss, argnums=(0, 1))(w, hparams, batch)

    lin, hyp, disp = _examples(per_train, tb)
    values, (g_w, g_lam) = _examples(per_val, vb)
    n, m = self.num_train, self.num_val
    lin, train_linear = _saga(mem.train_linear, ti, lin, n)
    hyp, train_hyper = _saga(mem.train_hyper, ti, hyp, n)
    disp, train_step_ = _saga(mem.train_step, ti, disp, n)
    g_w, val_weights = _saga(mem.val_weights, vi, g_w, m)
    g_lam, val_hyper = _saga(mem.val_hyper, vi, g_lam, m)

    direction = jax.tree.map(lambda a, b, c: a + self.damping * c - b, lin,
                             g_w, q)
    step = _common.Step(jnp.mean(values), optax.tree.add(g_lam, hyp),
                        direction, g_w, disp)
    q_new = optax.tree.add_scale(q, -self.linear_rate, direction)
    new_memory = SabaMemory(
        inner_step=optax.tree.cast_like(disp, mem.inner_step),
        train_linear=train_linear, train_hyper=train_hyper,
        train_step=train_step_, val_weights=val_weights, val_hyper=val_hyper)
    return _common.result(step, hparams, w, q_new, 1), new_memory
