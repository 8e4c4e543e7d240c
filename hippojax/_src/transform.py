r"""Hypergradients as an optax transform: ``optax.chain(hypergradient, adam)``.

:func:`hypergradient` wraps any registered method (``t1t2``, ``ift``,
``hoag``, ``implicit``, ``reverse``, ``forward``, ``drmad``; see
:mod:`hippojax._src.methods`) in an ``optax.GradientTransformationExtraArgs``
whose ``params`` are the hyperparameters ``λ``. It emits ``dL_val/dλ`` as its
updates, so any optax optimiser placed after it in a chain turns it into a
hyperparameter optimiser. This module holds what every method shares: the
state, the checks of ``update``'s arguments and the refusal of bad
hypergradients; each method's own logic lives in its own object.
"""

import difflib
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hippojax._src import checks
from hippojax._src import methods as methods_lib

PyTree = Any

#: Every extra argument a hippojax method reads. An unknown extra argument is
#: ignored (``optax.chain`` forwards every extra argument to every member),
#: unless it is a near miss of one of these.
EXTRA_ARGUMENTS = ("inner_params", "train_batch", "val_batch", "params0",
                   "train_batches", "train_indices", "val_indices")


class HypergradientState(NamedTuple):
  """State of :func:`hypergradient`; one structure for every option.

  Attributes:
    count: int32, number of ``update`` calls (outer steps) so far.
    num_refused: int32, number of outer steps whose hypergradient was refused
      (not finite, or a residual above ``max_residual``) and replaced by zeros.
    value: the validation loss reported by the last hypergradient (``nan``
      before the first update). Same dtype as the hyperparameters.
    num_iters: int32, iterations of the last linear solve (implicit methods)
      or ``train_step`` VJPs (``t1t2``: 1, unrolled: T); ``0`` before the
      first update.
    residual: certified relative residual of the last linear solve (``0`` for
      the direct methods, ``nan`` before the first update or when non-finite).
    converged: bool, the last hypergradient's ``info.converged``.
    tol: the tolerance the *next* linear solve uses. For ``"hoag"`` it
      follows the schedule ``max(tol · decay^k, min_tol)``; for ``"ift"`` and
      ``"implicit"`` it is the solver's fixed ``tol``; ``0`` for methods
      without a linear solve.
    warm_start: the linear-system solution carried to the next solve, shaped
      like the inner parameters (``"hoag"`` and ``"implicit"`` built with
      ``inner_params_like=``), reset to zero after a refused or diverged
      solve; ``None`` otherwise.
    damping: the damping ``δ`` of the next linear solve (adapted, see
      :class:`hippojax._src.methods.implicit.Implicit`); ``0`` without one.
    fixed_point_residual: the last ``info.fixed_point_residual``.
    curvature: the last ``info.curvature`` (CG's smallest Rayleigh quotient).
    extra: method-specific state, or ``None``.
  """

  count: jax.Array
  num_refused: jax.Array
  value: jax.Array
  num_iters: jax.Array
  residual: jax.Array
  converged: jax.Array
  tol: jax.Array
  warm_start: PyTree
  damping: jax.Array
  fixed_point_residual: jax.Array
  curvature: jax.Array
  extra: PyTree


def check_extra_arguments(method: str, extra: dict) -> None:
  """Refuses near misses of known extra arguments (``val_batches``)."""
  for key in extra:
    if key in EXTRA_ARGUMENTS:
      continue
    close = difflib.get_close_matches(key, EXTRA_ARGUMENTS, n=1, cutoff=0.8)
    if close:
      raise TypeError(
          f"hypergradient(method={method!r}).update got the extra argument "
          f"{key}=...; did you mean {close[0]}=...? (Other unknown extra "
          "arguments are ignored, since optax.chain forwards them to every "
          "member.)")


def hypergradient(train_step: Callable, val_loss: Callable,
                  method: str = "hoag", **options: Any
                  ) -> optax.GradientTransformationExtraArgs:
  r"""An optax transform whose updates are the hypergradient ``dL_val/dλ``.

  ``params`` of the transform are the hyperparameters ``λ``; the inner
  parameters and the data arrive as keyword-only extra arguments:

  .. code-block:: python

     updates, state = tx.update(updates, state, hparams, inner_params=w,
                                train_batch=tb, val_batch=vb)

  The emitted updates are ``g + u`` where ``g`` is the hypergradient of
  ``method`` and ``u`` the incoming ``updates`` (e.g. the gradient of an
  explicit prior on ``λ``; pass ``None`` for none). A hypergradient with a
  non-finite entry, value or solver residual is *refused*: ``g`` is replaced
  by zeros for that step, ``state.num_refused`` goes up, the warm start is
  kept, and neither ``λ`` nor the warm start ever becomes ``nan``. Everything
  is traceable, so the whole outer step (inner training, hypergradient, outer
  optimiser) compiles into one program that is not recompiled across steps.

  Methods, the extra arguments ``update`` requires, and their options
  (``train_batch`` and ``val_batch`` default to ``None``, for steps and losses
  that read no batch):

  * ``"t1t2"`` — ``inner_params``; no options.
  * ``"ift"`` — ``inner_params``; ``num_iters``, ``tol``, ``symmetric``.
  * ``"hoag"`` — ``inner_params``; ``tol``, ``decay``, ``min_tol``,
    ``maxiter``, ``symmetric``, ``inner_params_like``.
  * ``"implicit"`` — ``inner_params``; ``solver``, ``symmetric``,
    ``inner_params_like``.
  * ``"reverse"`` — ``params0``, ``train_batches``; ``remat``, ``num_steps``.
  * ``"forward"`` — ``params0``, ``train_batches``; ``num_steps``.
  * ``"drmad"`` — ``inner_params`` (the trained ``w_T``), ``params0``,
    ``train_batches``; ``num_steps``.
  * ``"soba"`` — ``inner_params``, and the current minibatches;
    ``inner_params_like`` (required), ``linear_rate``. Single-loop: one step
    on the linear-system variable per update (see
    :mod:`hippojax._src.stochastic.soba`).
  * ``"amigo"`` — as ``soba``, with ``linear_steps`` (a stack of that many
    minibatches per update).
  * ``"saba"`` — ``inner_params``, ``train_batch``, ``val_batch``,
    ``train_indices``, ``val_indices``; ``inner_params_like``, ``num_train``,
    ``num_val`` (required), ``linear_rate``, ``max_memory_bytes``.

  HOAG's tolerance schedule (Pedregosa 2016): the ``k``-th outer step solves
  ``(I − Jᵀ) q = ∇_w L_val`` to relative residual

  .. math::
     \epsilon_k = \max(\mathrm{tol} \cdot \mathrm{decay}^k,\ \mathrm{min\_tol}),

  warm-started from the previous ``q``. The warm start is shaped like the inner
  parameters, which ``init(hparams)`` never sees (``optax.chain`` and
  ``nnx.Optimizer`` call ``init`` with the hyperparameters alone); so the
  shapes are given once, at construction, with ``inner_params_like`` (any
  pytree of arrays or ``jax.ShapeDtypeStruct``; only shapes and dtypes are
  kept). Without it the state's ``warm_start`` is ``None`` and every solve
  starts from zero, which is correct but takes more iterations.

  The unrolled methods differentiate through T steps from ``params0`` over
  ``train_batches`` (leading axis T), so they tune learning rates and momenta
  too; used every outer step from the current weights they are truncated
  backpropagation (short-horizon, greedy for small T). The implicit methods
  return (nearly) zero for such optimiser hyperparameters.

  Args:
    train_step: ``train_step(params, hparams, batch) -> params``.
    val_loss: ``val_loss(params, hparams, batch) -> scalar``.
    method: one of ``"t1t2"``, ``"ift"``, ``"hoag"``, ``"implicit"``,
      ``"reverse"``, ``"forward"``, ``"drmad"``, ``"soba"``, ``"saba"``,
      ``"amigo"``.
    **options: options of ``method`` (table above):

      * ``num_iters`` (``ift``, default 10), ``tol`` (``ift``: 1e-3, the
        reported-convergence threshold): as in :func:`hippojax.ift`;
      * ``tol`` (``hoag``, default ``1e-3``): first tolerance; ``decay``
        (default ``0.9``, in ``(0, 1]``): factor per outer step; ``min_tol``
        (default ``1e-6``): floor; ``maxiter`` (default 100): CG iterations;
      * ``solver`` (``implicit``, default ``"cg"``): as in
        :func:`hippojax.implicit_hypergrad`;
      * ``symmetric``: as in :func:`hippojax.implicit_hypergrad`;
      * ``inner_params_like``: shapes of the inner parameters, to carry a
        warm start (``hoag``, ``implicit``);
      * ``remat``, ``num_steps``: as in :func:`hippojax.reverse`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``init(hparams) ->
    HypergradientState`` and ``update(updates, state, params=hparams, *,
    inner_params, train_batch=None, val_batch=None, params0, train_batches,
    **extra) -> (updates, state)``; unknown extra arguments are ignored, so it
    composes with ``optax.chain`` and ``nnx.Optimizer.update(..., **kwargs)``.

  Raises:
    ValueError: for an unknown ``method`` (listing the choices) or an invalid
      option value.
    TypeError: for non-callable functions or unknown options (naming them);
      ``update`` raises ``TypeError`` naming missing extra arguments.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, hippojax
    >>> loss = lambda w, lam, b: jnp.sum((w - 1.0) ** 2) + lam * jnp.sum(w**2)
    >>> step = hippojax.gradient_step(loss, learning_rate=0.1)
    >>> val = lambda w, lam, b: jnp.sum((w - 0.5) ** 2)
    >>> w = jnp.zeros(3)
    >>> tx = optax.chain(
    ...     hippojax.hypergradient(step, val, method="hoag",
    ...                            inner_params_like=w),
    ...     optax.sgd(0.5))
    >>> lam = jnp.asarray(0.1, jnp.float32)
    >>> state = tx.init(lam)
    >>> @jax.jit
    ... def outer_step(lam, w, state):
    ...   w = jax.lax.fori_loop(0, 100, lambda _, w: step(w, lam, None), w)
    ...   updates, state = tx.update(None, state, lam, inner_params=w)
    ...   return optax.apply_updates(lam, updates), w, state
    >>> for _ in range(50):
    ...   lam, w, state = outer_step(lam, w, state)
    >>> round(float(lam), 2)  # argmin of val: w* = 1/(1+λ) = 0.5
    1.0

  References:
    Pedregosa, "Hyperparameter optimization with approximate gradient", ICML
    2016; Luketina et al., ICML 2016; Lorraine et al., AISTATS 2020;
    Maclaurin et al., ICML 2015; Fu et al., IJCAI 2016.
  """
  checks.check_callable("train_step", train_step)
  checks.check_callable("val_loss", val_loss)
  impl = methods_lib.build(method, options)

  def init_fn(hparams):
    hparams = checks.as_float_tree("hparams", hparams)
    if any(getattr(x, "weak_type", False) for x in jax.tree.leaves(hparams)):
      warnings.warn(
          "hypergradient: the hyperparameters are weak-typed (made from "
          "Python floats, e.g. jnp.asarray(0.1)); after the first update "
          "they are not, so a jitted outer step compiles twice. Create them "
          "with a dtype, e.g. jnp.asarray(0.1, jnp.float32).", stacklevel=3)
    dtype = optax.tree.dtype(hparams, "highest")
    ms = impl.init(hparams, dtype)
    nan = jnp.full((), jnp.nan, dtype)
    return HypergradientState(
        count=jnp.zeros((), jnp.int32), num_refused=jnp.zeros((), jnp.int32),
        value=nan, num_iters=jnp.zeros((), jnp.int32), residual=nan,
        converged=jnp.zeros((), bool), tol=ms.tol, warm_start=ms.warm_start,
        damping=ms.damping, fixed_point_residual=nan, curvature=nan,
        extra=ms.extra)

  def update_fn(updates, state, params=None, **extra):
    if params is None:
      raise TypeError(
          f"hypergradient(method={method!r}).update needs the current "
          "hyperparameters as params: tx.update(updates, state, hparams, "
          "inner_params=..., ...).")
    missing = impl.missing(extra)
    if missing:
      raise TypeError(
          f"hypergradient(method={method!r}).update is missing the keyword "
          f"argument(s) {', '.join(missing)}; call tx.update(updates, state, "
          f"hparams, {', '.join(f'{k}=...' for k in impl.required)}, "
          "train_batch=..., val_batch=...).")
    check_extra_arguments(method, extra)
    ms = methods_lib.MethodState(state.tol, state.warm_start, state.damping,
                                 state.extra)
    hg, new_extra = impl.hypergrad(ms, params, extra, train_step=train_step,
                                   val_loss=val_loss)
    accepted = methods_lib.accepted(impl, hg)
    grad = jax.tree.map(lambda g: jnp.where(accepted, g, jnp.zeros_like(g)),
                        hg.grad)
    if updates is not None:
      grad = jax.tree.map(lambda u, g: (u + g).astype(u.dtype), updates, grad)
    ms = impl.next_state(ms, hg, accepted, new_extra)
    dtype = state.value.dtype
    new_state = HypergradientState(
        count=optax.safe_increment(state.count),
        num_refused=state.num_refused + (~accepted).astype(jnp.int32),
        value=jnp.asarray(hg.value, dtype),
        num_iters=jnp.asarray(hg.info.num_iters, jnp.int32),
        residual=jnp.asarray(hg.info.residual, dtype),
        converged=jnp.asarray(hg.info.converged, bool),
        tol=ms.tol, warm_start=ms.warm_start, damping=ms.damping,
        fixed_point_residual=jnp.asarray(hg.info.fixed_point_residual, dtype),
        curvature=jnp.asarray(hg.info.curvature, dtype), extra=ms.extra)
    return grad, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
