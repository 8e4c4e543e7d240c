r"""Unrolled hypergradients through T training steps from ``params0``.

``w_{t+1} = Φ(w_t, λ, batch_t)`` for ``t = 0 … T−1`` and the objective is
``L_val(w_T, λ)``. ``train_batches`` is a pytree whose leaves have a leading
axis of length T; ``batch_t`` is slice ``t``.
"""

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from hippojax._src import checks
from hippojax._src.base import HyperGrad
from hippojax._src.one_step import finite_info

PyTree = Any


def _first_batch_shape(batches: PyTree, same_batch: bool) -> PyTree:
  if same_batch:
    return batches
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
                      batches)


def _check(train_step, val_loss, hparams, params0, batches, same_batch):
  checks.check_step_output(train_step, params0, hparams,
                           _first_batch_shape(batches, same_batch),
                           params_name="params0")


def _num_steps(train_batches, num_steps, same_batch) -> int:
  """T from the leading axis of ``train_batches``, or ``num_steps``."""
  if not same_batch:
    return checks.num_steps_of(train_batches, num_steps)
  if num_steps is None:
    raise ValueError("same_batch=True needs num_steps=T: train_batches is "
                     "then one batch used at every step.")
  return checks.check_int("num_steps", num_steps, 0)


def unroll(train_step: Callable, hparams: PyTree, params0: PyTree,
           train_batches: PyTree, num_steps: int, remat: bool | int = False,
           same_batch: bool = False) -> PyTree:
  """Runs ``num_steps`` steps of ``train_step`` in ``lax.scan``.

  With ``remat``, steps are grouped into blocks of ``k`` (``True``:
  ``k = ⌈√T⌉``; an int: that ``k``) whose forward pass is recomputed in the
  backward pass (``jax.checkpoint``), so reverse mode stores ``T/k`` block
  boundaries plus one block, ``O(√T · P)`` memory, for about one extra
  forward pass.
  """
  if same_batch:  # one batch at every step: nothing to slice or stack
    batch = train_batches
    step = lambda w, _: (train_step(w, hparams, batch), None)
    train_batches = None
  else:
    step = lambda w, b: (train_step(w, hparams, b), None)
  if not remat or num_steps == 0:
    return jax.lax.scan(step, params0, train_batches, length=num_steps)[0]
  k = max(1, math.ceil(math.sqrt(num_steps))) if remat is True else remat
  k = min(k, num_steps)
  n_blocks, rest = divmod(num_steps, k)
  # Batches are indexed in place (no reshaped copy of the data).
  batch_at = lambda t: jax.tree.map(lambda x: x[t], train_batches)
  indexed_step = lambda w, t: step(w, batch_at(t))

  @jax.checkpoint
  def block(w, start):
    return jax.lax.scan(indexed_step, w, start + jnp.arange(k))[0], None

  w = jax.lax.scan(block, params0, k * jnp.arange(n_blocks))[0]
  tail = n_blocks * k + jnp.arange(rest)
  return jax.lax.scan(jax.checkpoint(indexed_step), w, tail)[0]


@functools.partial(jax.jit, static_argnames=("train_step", "val_loss",
                                             "num_steps", "remat",
                                             "same_batch"))
def _reverse(train_step, val_loss, hparams, params0, train_batches, val_batch,
             *, num_steps, remat, same_batch):
  _check(train_step, val_loss, hparams, params0, train_batches, same_batch)

  def objective(w0, lam):
    w_t = unroll(train_step, lam, w0, train_batches, num_steps, remat,
                 same_batch)
    return val_loss(w_t, lam, val_batch)

  checks.check_val_loss(val_loss, params0, hparams, val_batch)
  # allow_int: integer leaves of the state (an optimiser's step count) get
  # float0 cotangents instead of an error.
  value, (adjoint, grad) = jax.value_and_grad(objective, argnums=(0, 1),
                                              allow_int=True)(
      params0, hparams)
  return HyperGrad(grad, value, finite_info(num_steps, grad, value, adjoint))


def _check_remat(remat):
  if isinstance(remat, bool):
    return remat
  return checks.check_int("remat", remat, 1)


def reverse(train_step: Callable, val_loss: Callable, hparams: PyTree,
            params0: PyTree, train_batches: PyTree, val_batch: PyTree, *,
            remat: bool | int = False, num_steps: int | None = None,
            same_batch: bool = False) -> HyperGrad:
  r"""Exact hypergradient through T steps, reverse mode over ``lax.scan``.

  .. math::
     \frac{d}{d\lambda} L_{val}(w_T(\lambda), \lambda), \qquad
     w_{t+1} = \Phi(w_t, \lambda, b_t).

  Cost: T forward steps and T (Hessian-vector + mixed) products backward.
  Memory: ``O(T·P)`` for the stored trajectory, or ``O(√T·P)`` with
  ``remat=True`` at about one extra forward pass.

  Args:
    train_step: ``train_step(params, hparams, batch) -> params``.
    val_loss: ``val_loss(params, hparams, batch) -> scalar``.
    hparams: pytree of floating-point hyperparameters (learning rates,
      momentum and schedules included: they are differentiated too).
    params0: initial inner parameters ``w_0``.
    train_batches: pytree whose leaves have leading axis T.
    val_batch: batch for the validation loss.
    remat: ``False``; ``True`` for ``√T`` checkpointing; or an int block size.
    num_steps: T, needed only when ``train_batches`` has no array leaves
      (e.g. ``None`` for full-batch steps that read no batch) or with
      ``same_batch=True``.
    same_batch: if ``True``, ``train_batches`` is one batch (no leading axis)
      used at every one of the ``num_steps`` steps: full-batch training
      without stacking T copies of the data.

  Returns:
    A :class:`HyperGrad`; ``info.solution`` is ``d L_val / d params0``.

  Examples:
    >>> import jax.numpy as jnp, hippojax
    >>> loss = lambda w, lam, b: jnp.sum((w - b) ** 2) + lam * jnp.sum(w**2)
    >>> step = hippojax.gradient_step(loss, learning_rate=0.1)
    >>> val = lambda w, lam, b: jnp.sum((w - 2.0) ** 2)
    >>> hg = hippojax.reverse(step, val, 0.5, jnp.zeros(3), jnp.ones((20, 3)),
    ...                       None)
    >>> float(hg.grad) > 0
    True

  References:
    Maclaurin, Duvenaud, Adams, "Gradient-based Hyperparameter Optimization
    through Reversible Learning", ICML 2015; Franceschi et al., "Forward and
    Reverse Gradient-Based Hyperparameter Optimization", ICML 2017.
  """
  checks.check_callable("train_step", train_step)
  checks.check_callable("val_loss", val_loss)
  T = _num_steps(train_batches, num_steps, same_batch)
  remat = _check_remat(remat)
  hparams = checks.as_float_tree("hparams", hparams)
  return _reverse(train_step, val_loss, hparams, params0, train_batches,
                  val_batch, num_steps=T, remat=remat,
                  same_batch=bool(same_batch))


@functools.partial(jax.jit, static_argnames=("train_step", "val_loss",
                                             "num_steps", "same_batch"))
def _forward(train_step, val_loss, hparams, params0, train_batches, val_batch,
             *, num_steps, same_batch):
  _check(train_step, val_loss, hparams, params0, train_batches, same_batch)
  checks.check_val_loss(val_loss, params0, hparams, val_batch)

  def objective(lam):
    w_t = unroll(train_step, lam, params0, train_batches, num_steps,
                 same_batch=same_batch)
    value = val_loss(w_t, lam, val_batch)
    return value, value

  grad, value = jax.jacfwd(objective, has_aux=True)(hparams)
  grad = jax.tree.map(lambda g, h: g.astype(h.dtype), grad, hparams)
  return HyperGrad(grad, value, finite_info(num_steps, grad, value, None))


def forward(train_step: Callable, val_loss: Callable, hparams: PyTree,
            params0: PyTree, train_batches: PyTree, val_batch: PyTree, *,
            num_steps: int | None = None,
            same_batch: bool = False) -> HyperGrad:
  r"""The same quantity as :func:`reverse`, in forward mode.

  Propagates ``dw_t/dλ`` alongside ``w_t`` (one tangent per scalar
  hyperparameter, batched with ``jax.jacfwd``):

  .. math::
     Z_{t+1} = J_t Z_t + B_t, \qquad
     \frac{dL_{val}}{d\lambda} = \nabla_\lambda L_{val} + Z_T^\top
     \nabla_w L_{val}.

  Cost grows with the number of hyperparameters ``n``; memory is
  ``O(n·P)`` and does not grow with T.

  Args:
    train_step: ``train_step(params, hparams, batch) -> params``.
    val_loss: ``val_loss(params, hparams, batch) -> scalar``.
    hparams: pytree of floating-point hyperparameters.
    params0: initial inner parameters ``w_0``.
    train_batches: pytree whose leaves have leading axis T.
    val_batch: batch for the validation loss.
    num_steps: T, needed only when ``train_batches`` has no array leaves
      or with ``same_batch=True``.
    same_batch: if ``True``, ``train_batches`` is one batch used at every
      step (see :func:`reverse`).

  Returns:
    A :class:`HyperGrad`; ``info.solution`` is ``None``.

  Examples:
    >>> import jax.numpy as jnp, hippojax
    >>> loss = lambda w, lam, b: jnp.sum((w - b) ** 2) + lam * jnp.sum(w**2)
    >>> step = hippojax.gradient_step(loss, learning_rate=0.1)
    >>> val = lambda w, lam, b: jnp.sum((w - 2.0) ** 2)
    >>> hg = hippojax.forward(step, val, 0.5, jnp.zeros(3), jnp.ones((20, 3)),
    ...                       None)
    >>> float(hg.grad) > 0
    True

  References:
    Franceschi et al., "Forward and Reverse Gradient-Based Hyperparameter
    Optimization", ICML 2017.
  """
  checks.check_callable("train_step", train_step)
  checks.check_callable("val_loss", val_loss)
  T = _num_steps(train_batches, num_steps, same_batch)
  hparams = checks.as_float_tree("hparams", hparams)
  return _forward(train_step, val_loss, hparams, params0, train_batches,
                  val_batch, num_steps=T, same_batch=bool(same_batch))


@functools.partial(jax.jit, static_argnames=("train_step", "val_loss",
                                             "num_steps", "same_batch"))
def _drmad(train_step, val_loss, hparams, params0, params_t, train_batches,
           val_batch, *, num_steps, same_batch):
  _check(train_step, val_loss, hparams, params0, train_batches, same_batch)
  checks.check_like("paramsT", params_t, "params0", params0)
  checks.check_val_loss(val_loss, params_t, hparams, val_batch)
  value, (g_w, g_lam) = jax.value_and_grad(val_loss, argnums=(0, 1),
                                           allow_int=True)(
      params_t, hparams, val_batch)
  T = max(num_steps, 1)

  def body(carry, xs):
    g_w, g_lam = carry
    t, batch = xs
    if same_batch:
      batch = train_batches
    frac = t / T
    w_t = jax.tree.map(lambda a, b: ((1 - frac) * a + frac * b).astype(a.dtype),
                       params0, params_t)
    _, vjp = jax.vjp(lambda w, lam: train_step(w, lam, batch), w_t, hparams)
    j_w, b_w = vjp(g_w)
    return (j_w, jax.tree.map(jnp.add, g_lam, b_w)), None

  steps = jnp.arange(num_steps)
  xs = (steps, None if same_batch else train_batches)
  (adjoint, grad), _ = jax.lax.scan(body, (g_w, g_lam), xs,
                                    length=num_steps, reverse=True)
  grad = jax.tree.map(lambda g, h: g.astype(h.dtype), grad, hparams)
  return HyperGrad(grad, value, finite_info(num_steps, grad, value, adjoint))


def drmad(train_step: Callable, val_loss: Callable, hparams: PyTree,
          params0: PyTree, paramsT: PyTree, train_batches: PyTree,
          val_batch: PyTree, *, num_steps: int | None = None,
          same_batch: bool = False) -> HyperGrad:
  r"""DrMAD: the reverse pass of :func:`reverse` on a straight-line trajectory.

  The stored trajectory is replaced by

  .. math::
     w_t = (1 - t/T)\, w_0 + (t/T)\, w_T, \qquad t = 0, …, T,

  and the reverse pass visits ``t = T−1, …, 0``, accumulating
  ``ḡ_λ += B_tᵀ ḡ_w`` and ``ḡ_w ← J_tᵀ ḡ_w`` with the VJPs of ``train_step``
  at ``(w_t, λ, batch_t)``, starting from ``ḡ = ∇ L_val(w_T, λ)``. Memory is
  ``O(P)``, independent of T. Unlike HippoTrainer's ``DRMAD``, it
  back-propagates through every step's Hessian-vector product.

  **When it is exact.** Only when the interpolated ``w_t`` *are* the
  iterates — a straight line travelled at constant speed — or when ``J`` and
  ``B`` do not depend on ``w`` (a quadratic loss whose hyperparameters enter
  the gradient independently of ``w``). A straight path at varying speed is
  not enough: gradient descent on an isotropic quadratic moves along a line
  but slows down geometrically, and DrMAD is then about 16% off. Otherwise
  it is an approximation; compare it with :func:`reverse` on your problem.

  **Optimiser state.** The whole state is interpolated, leaf by leaf: for a
  :class:`~hippojax.HeavyBallState` the velocity is the straight line from
  ``v_0`` to ``v_T``. The DrMAD authors' code instead recovers the velocity
  from consecutive interpolated positions (a constant ``(w_T − w_0)/T``);
  the two choices gave momentum hypergradients 34% apart in a cross-check.
  Interpolating the state is chosen here because it works for any state
  pytree (Adam's moments included) and keeps ``w_0`` and ``w_T`` exact.
  Neither is reliable for the optimiser's own hyperparameters (learning
  rate, momentum), whose hypergradients depend on the path itself: tune
  those with :func:`reverse` (``remat=True`` for memory) or :func:`forward`.

  Args:
    train_step: ``train_step(params, hparams, batch) -> params``.
    val_loss: ``val_loss(params, hparams, batch) -> scalar``.
    hparams: pytree of floating-point hyperparameters.
    params0: the initial inner parameters ``w_0``.
    paramsT: the parameters ``w_T`` after training for T steps.
    train_batches: pytree whose leaves have leading axis T.
    val_batch: batch for the validation loss.
    num_steps: T, needed only when ``train_batches`` has no array leaves
      or with ``same_batch=True``.
    same_batch: if ``True``, ``train_batches`` is one batch used at every
      step (see :func:`reverse`).

  Returns:
    A :class:`HyperGrad` (``value`` is ``L_val(w_T)``; ``info.solution`` is
    the approximate ``d L_val / d params0``).

  Examples:
    >>> import jax.numpy as jnp, hippojax
    >>> loss = lambda w, lam, b: jnp.sum((w - b) ** 2) + lam * jnp.sum(w**2)
    >>> step = hippojax.gradient_step(loss, learning_rate=0.1)
    >>> val = lambda w, lam, b: jnp.sum((w - 2.0) ** 2)
    >>> w_T = jnp.full(3, 1 / 1.5)
    >>> hg = hippojax.drmad(step, val, 0.5, jnp.zeros(3), w_T,
    ...                     jnp.ones((20, 3)), None)
    >>> float(hg.grad) > 0
    True

  References:
    Fu et al., "DrMAD: Distilling Reverse-Mode Automatic Differentiation for
    Optimizing Hyperparameters of Deep Neural Networks", IJCAI 2016.
  """
  checks.check_callable("train_step", train_step)
  checks.check_callable("val_loss", val_loss)
  T = _num_steps(train_batches, num_steps, same_batch)
  hparams = checks.as_float_tree("hparams", hparams)
  return _drmad(train_step, val_loss, hparams, params0, paramsT, train_batches,
                val_batch, num_steps=T, same_batch=bool(same_batch))
