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
is the mean of the per-example steps), and each minibatch must hold
distinct examples (sampled without replacement), named by ``train_indices``
and ``val_indices``. The memories start at zero and fill during the first
epoch. Besides the hyperparameter direction, the state's ``inner_step`` is
the variance-reduced estimate of ``Φ(w) − w``: adding it to the weights
(``w ← w + state.inner_step``) instead of a plain SGD step makes the whole
loop SABA.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hippojax._src import checks
from hippojax._src.stochastic import _common

PyTree = Any

REQUIRED = ("inner_params", "train_batch", "val_batch", "train_indices",
            "val_indices")
OPTIONS = frozenset({"inner_params_like", "linear_rate", "num_train",
                     "num_val", "max_memory_bytes"})

DEFAULT_MAX_MEMORY = 2 * 2**30


class SagaTable(NamedTuple):
  """A SAGA memory: ``rows`` (leading axis ``n``) and their ``mean``."""

  rows: PyTree
  mean: PyTree


class SabaState(NamedTuple):
  """State of :func:`hippojax.saba`.

  Attributes:
    count, num_refused, value, residual, q: as in
      :class:`~hippojax.SingleLoopState`.
    inner_step: the variance-reduced estimate of ``Φ(w) − w`` on the last
      minibatch, shaped like the weights (zeros before the first update).
    train_linear: memory of ``q − J_iᵀ q`` per training example.
    train_hyper: memory of ``B_iᵀ q`` per training example.
    train_step: memory of ``Φ_i(w) − w`` per training example.
    val_weights: memory of ``∇_w ℓ_j`` per validation example.
    val_hyper: memory of ``∇_λ ℓ_j`` per validation example.
  """

  count: jax.Array
  num_refused: jax.Array
  value: jax.Array
  residual: jax.Array
  q: PyTree
  inner_step: PyTree
  train_linear: SagaTable
  train_hyper: SagaTable
  train_step: SagaTable
  val_weights: SagaTable
  val_hyper: SagaTable


def _size(tree: PyTree) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def memory_bytes(inner_params_like: Any, hparams: Any, num_train: int,
                 num_val: int) -> int:
  """Bytes of SABA's memories for these shapes and set sizes."""
  p = _size(jax.eval_shape(lambda t: t, inner_params_like))
  h = _size(jax.eval_shape(lambda t: t, hparams))
  return (2 * p + h) * (num_train + 1) + (p + h) * (num_val + 1)


def _table(like: PyTree, n: int) -> SagaTable:
  rows = jax.tree.map(lambda s: jnp.zeros((n, *s.shape), s.dtype), like)
  return SagaTable(rows, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                      like))


def _saga(table: SagaTable, idx: jax.Array, new: PyTree, n: int):
  """The SAGA estimate of the mean of a term, and the updated memory."""
  def leaf(rows, mean, t):
    t, old = t.astype(rows.dtype), rows[idx]
    # A non-finite example keeps its old memory: one bad value in the running
    # mean would poison every later estimate.
    ok = jnp.all(jnp.isfinite(t), axis=tuple(range(1, t.ndim)))
    t = jnp.where(ok.reshape((-1,) + (1,) * (t.ndim - 1)), t, old)
    diff = t - old
    estimate = jnp.mean(diff, axis=0) + mean
    return estimate, rows.at[idx].set(t), mean + jnp.sum(diff, axis=0) / n
  out = jax.tree.map(leaf, table.rows, table.mean, new)
  outer = jax.tree.structure(table.mean)
  inner = jax.tree.structure((0, 0, 0))
  est, rows, mean = jax.tree.transpose(outer, inner, out)
  return est, SagaTable(rows, mean)


def _examples(fn: Callable, batch: PyTree) -> PyTree:
  """``fn`` on each example of ``batch`` as a batch of one (``vmap``)."""
  return jax.vmap(lambda ex: fn(jax.tree.map(lambda a: a[None], ex)))(batch)


def _check_indices(name: str, idx: Any, batch: PyTree, n: int) -> jax.Array:
  idx = jnp.asarray(idx)
  if idx.ndim != 1 or not jnp.issubdtype(idx.dtype, jnp.integer):
    raise ValueError(f"{name} must be a 1-D integer array (the examples' "
                     f"positions in the data set), got shape "
                     f"{tuple(idx.shape)} dtype {idx.dtype}.")
  for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
    if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != idx.shape[0]:
      which = name.replace("indices", "batch")
      raise ValueError(
          f"{which}{jax.tree_util.keystr(path)} has shape "
          f"{tuple(jnp.shape(leaf))}, but {name} has {idx.shape[0]} entries;"
          " every leaf needs one row per example.")
  del n
  return idx


def saba(train_step: Callable, val_loss: Callable, *,
         inner_params_like: Any = None, num_train: int | None = None,
         num_val: int | None = None, linear_rate: float = 1.0,
         max_memory_bytes: int = DEFAULT_MAX_MEMORY
         ) -> optax.GradientTransformationExtraArgs:
  r"""SABA as an optax transform, for finite training and validation sets.

  Args:
    train_step: ``train_step(params, hparams, batch) -> params``, a step on
      the mean of a per-example loss.
    val_loss: ``val_loss(params, hparams, batch) -> scalar``, a mean of
      per-example losses.
    inner_params_like: the inner parameters or their shapes. Required.
    num_train: ``n``, the number of training examples. Required.
    num_val: ``m``, the number of validation examples. Required.
    linear_rate: ``ρ > 0``, the step on ``q`` (default 1, the natural one).
    max_memory_bytes: refuse (``ValueError`` from ``init``) when the
      memories would be larger (default 2 GiB); see :func:`memory_bytes`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``init(hparams) ->
    SabaState`` and ``update(updates, state, hparams, *, inner_params,
    train_batch, val_batch, train_indices, val_indices, **extra)``.

  References:
    Dagréou, Ablin, Vaiter, Moreau, NeurIPS 2022; Defazio, Bach,
    Lacoste-Julien, "SAGA", NeurIPS 2014.
  """
  checks.check_callable("train_step", train_step)
  checks.check_callable("val_loss", val_loss)
  template = _common.shapes_of("inner_params_like", inner_params_like)
  rate = _common.check_rate("linear_rate", linear_rate)
  if num_train is None or num_val is None:
    raise TypeError("saba needs num_train= and num_val=, the sizes of the "
                    "training and validation sets, to size its memories.")
  n = checks.check_int("num_train", num_train, 1)
  m = checks.check_int("num_val", num_val, 1)
  limit = checks.check_int("max_memory_bytes", max_memory_bytes, 1)

  def init_fn(hparams):
    common = _common.init_common(hparams, template)
    like_h = jax.eval_shape(lambda t: t, checks.as_float_tree("hparams",
                                                              hparams))
    need = memory_bytes(template, like_h, n, m)
    if need > limit:
      raise ValueError(
          f"saba's memories need {need / 2**20:.1f} MiB ((2P + H)·n + "
          f"(P + H)·m numbers for P={_size(template)} weight bytes, "
          f"n={n}, m={m}, H={_size(like_h)} hyperparameter bytes), more than "
          f"max_memory_bytes={limit}; use soba or amigo (no memory), fewer "
          "examples, or raise max_memory_bytes.")
    return SabaState(
        *common, inner_step=_common.zeros_like_template(template),
        train_linear=_table(template, n), train_hyper=_table(like_h, n),
        train_step=_table(template, n), val_weights=_table(template, m),
        val_hyper=_table(like_h, m))

  def update_fn(updates, state, params=None, **extra):
    _common.require("saba", extra, REQUIRED, params)
    w = extra["inner_params"]
    _common.check_inner_params(template, w)
    hparams = checks.as_float_tree("hparams", params)
    tb, vb = extra["train_batch"], extra["val_batch"]
    ti = _check_indices("train_indices", extra["train_indices"], tb, n)
    vi = _check_indices("val_indices", extra["val_indices"], vb, m)
    q = optax.tree.cast_like(state.q, w)

    def per_train(batch):
      new, vjp = jax.vjp(lambda w_, lam: train_step(w_, lam, batch), w,
                         hparams)
      jt_q, bt_q = vjp(q)
      return (optax.tree.sub(q, jt_q), bt_q, optax.tree.sub(new, w))

    def per_val(batch):
      return jax.value_and_grad(val_loss, argnums=(0, 1))(w, hparams, batch)

    lin, hyp, disp = _examples(per_train, tb)
    values, (g_w, g_lam) = _examples(per_val, vb)
    lin, train_linear = _saga(state.train_linear, ti, lin, n)
    hyp, train_hyper = _saga(state.train_hyper, ti, hyp, n)
    disp, train_step_ = _saga(state.train_step, ti, disp, n)
    g_w, val_weights = _saga(state.val_weights, vi, g_w, m)
    g_lam, val_hyper = _saga(state.val_hyper, vi, g_lam, m)

    direction = optax.tree.sub(lin, g_w)
    hypergrad = jax.tree.map(lambda a, b, h: (a + b).astype(h.dtype), g_lam,
                             hyp, hparams)
    q_new = optax.tree.add_scale(q, -rate, direction)
    residual = _common.relative(direction, g_w)
    grad, fields = _common.finish(updates, hypergrad, jnp.mean(values),
                                  residual, state.q, q_new, state)
    return grad, SabaState(
        **fields, inner_step=optax.tree.cast_like(disp, state.inner_step),
        train_linear=train_linear, train_hyper=train_hyper,
        train_step=train_step_, val_weights=val_weights, val_hyper=val_hyper)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
