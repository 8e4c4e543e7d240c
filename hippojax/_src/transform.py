r"""Hypergradients as an optax transform: ``optax.chain(hypergradient, adam)``.

:func:`hypergradient` wraps any of the pure algorithms (``t1t2``, ``ift``,
``hoag``, ``implicit_hypergrad``, ``reverse``, ``forward``, ``drmad``) in an
``optax.GradientTransformationExtraArgs`` whose ``params`` are the
hyperparameters ``λ``. It emits ``dL_val/dλ`` as its updates, so any optax
optimiser placed after it in a chain turns it into a hyperparameter
optimiser. Its state carries what the method needs between outer steps.
"""

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hippojax._src import checks
from hippojax._src import implicit as implicit_lib
from hippojax._src import solvers as solvers_lib
from hippojax._src import unrolled as unrolled_lib
from hippojax._src.base import all_finite
from hippojax._src.base import HyperGrad
from hippojax._src.one_step import t1t2

PyTree = Any


class HypergradientState(NamedTuple):
  """State of :func:`hypergradient`; one structure for every option.

  Attributes:
    count: int32, number of ``update`` calls (outer steps) so far.
    num_refused: int32, number of outer steps whose hypergradient was not
      finite and was replaced by zeros.
    value: the validation loss reported by the last hypergradient (``nan``
      before the first update). Same dtype as the hyperparameters.
    num_iters: int32, iterations of the last linear solve (implicit methods)
      or ``train_step`` VJPs (``t1t2``: 1, unrolled: T); ``0`` before the
      first update.
    residual: relative residual of the last linear solve (``0`` for the
      direct methods, ``nan`` before the first update or when non-finite).
    converged: bool, the last solve reached its tolerance with finite values
      (direct methods: the result was finite).
    tol: the tolerance the *next* linear solve uses. For ``"hoag"`` it
      follows the schedule ``max(tol · decay^k, min_tol)``; for ``"ift"`` and
      ``"implicit"`` it is the solver's fixed ``tol``; ``0`` for methods
      without a linear solve.
    warm_start: the last finite linear-system solution ``q``, shaped like the
      inner parameters, used to warm-start the next solve (``"hoag"`` and
      ``"implicit"`` built with ``inner_params_like=``); ``None`` otherwise.
  """

  count: jax.Array
  num_refused: jax.Array
  value: jax.Array
  num_iters: jax.Array
  residual: jax.Array
  converged: jax.Array
  tol: jax.Array
  warm_start: PyTree


@dataclasses.dataclass(frozen=True)
class _Method:
  required: tuple[str, ...]  # extra arguments update() cannot do without
  options: frozenset[str]  # keyword options accepted by the factory


_COMMON = frozenset({"symmetric"})
_METHODS = {
    "t1t2": _Method(("inner_params",), frozenset()),
    "ift": _Method(("inner_params",), _COMMON | {"num_iters", "tol"}),
    "hoag": _Method(("inner_params",), _COMMON | {
        "tol", "decay", "min_tol", "maxiter", "inner_params_like"}),
    "implicit": _Method(("inner_params",),
                        _COMMON | {"solver", "inner_params_like"}),
    "reverse": _Method(("params0", "train_batches"),
                       frozenset({"remat", "num_steps"})),
    "forward": _Method(("params0", "train_batches"), frozenset({"num_steps"})),
    "drmad": _Method(("inner_params", "params0", "train_batches"),
                     frozenset({"num_steps"})),
}


@functools.partial(jax.jit, static_argnames=("train_step", "val_loss",
                                             "maxiter", "symmetric"))
def _hoag_scheduled(train_step, val_loss, hparams, params, train_batch,
                    val_batch, init, tol, *, maxiter, symmetric) -> HyperGrad:
  """:func:`hippojax.hoag` with the tolerance ``tol`` as an array argument."""
  return implicit_lib.implicit_core(
      train_step, val_loss, hparams, params, train_batch, val_batch, init,
      functools.partial(solvers_lib.conjugate_gradient, tol=tol,
                        maxiter=maxiter), symmetric, params_name="inner_params")


def _warm_start_like(warm: PyTree, inner_params: PyTree) -> PyTree:
  """Checks the warm start against ``inner_params``; casts to their dtypes."""
  if jax.tree.structure(warm) != jax.tree.structure(inner_params):
    raise ValueError(
        f"inner_params has pytree structure {jax.tree.structure(inner_params)}"
        ", but the transform was built with inner_params_like of structure "
        f"{jax.tree.structure(warm)}.")
  for (path, q), w in zip(jax.tree_util.tree_flatten_with_path(warm)[0],
                          jax.tree.leaves(inner_params)):
    if q.shape != jnp.shape(w):
      raise ValueError(
          f"inner_params{jax.tree_util.keystr(path)} has shape "
          f"{tuple(jnp.shape(w))}, but inner_params_like gave shape "
          f"{tuple(q.shape)}.")
  return optax.tree.cast_like(warm, inner_params)


def _check_options(method: str, options: dict) -> dict:
  """Validates ``options`` for ``method``; returns them with defaults."""
  spec = _METHODS[method]
  unknown = sorted(set(options) - spec.options)
  if unknown:
    allowed = ", ".join(sorted(spec.options)) or "none"
    raise TypeError(
        f"hypergradient(method={method!r}) got unknown option(s) "
        f"{', '.join(unknown)}; options of {method!r}: {allowed}.")
  out = dict(options)
  symmetric = out.get("symmetric")
  if symmetric is not None and not isinstance(symmetric, bool):
    raise TypeError(f"symmetric must be None, True or False, got "
                    f"{symmetric!r}.")
  if method == "ift":
    out["solver"] = solvers_lib.Neumann(num_iters=out.pop("num_iters", 10),
                                        tol=out.pop("tol", 1e-3))
  elif method == "hoag":
    tol = checks.check_positive("tol", out.get("tol", 1e-3))
    decay = checks.check_positive("decay", out.get("decay", 0.9))
    if decay > 1:
      raise ValueError(f"decay must be in (0, 1] (the tolerance shrinks by "
                       f"this factor each outer step), got {decay!r}.")
    min_tol = checks.check_positive("min_tol", out.get("min_tol", 1e-6))
    if min_tol > tol:
      raise ValueError(f"min_tol={min_tol!r} must be <= tol={tol!r}.")
    maxiter = checks.check_int("maxiter", out.get("maxiter", 100), 1)
    out.update(tol=tol, decay=decay, min_tol=min_tol, maxiter=maxiter)
  elif method == "implicit":
    out["solver"] = solvers_lib.get_solver(out.get("solver", "cg"))
  elif method in ("reverse", "forward", "drmad"):
    if "remat" in out:
      out["remat"] = unrolled_lib._check_remat(  # pylint: disable=W0212
          out["remat"])
    if out.get("num_steps") is not None:
      out["num_steps"] = checks.check_int("num_steps", out["num_steps"], 0)
  if out.get("inner_params_like") is not None:
    out["inner_params_like"] = jax.eval_shape(lambda t: t,
                                              out["inner_params_like"])
  return out


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
      ``"reverse"``, ``"forward"``, ``"drmad"``.
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
    >>> lam = jnp.asarray(0.1)
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
  if not isinstance(method, str) or method not in _METHODS:
    raise ValueError(f"method={method!r} is not one of "
                     f"{', '.join(repr(m) for m in _METHODS)}.")
  opts = _check_options(method, options)
  spec = _METHODS[method]
  template = opts.get("inner_params_like")

  if method == "hoag":
    first_tol = opts["tol"]
  elif method in ("ift", "implicit"):
    first_tol = float(getattr(opts["solver"], "tol", 0.0))
  else:
    first_tol = 0.0

  def init_fn(hparams):
    hparams = checks.as_float_tree("hparams", hparams)
    dtype = optax.tree.dtype(hparams, "highest")
    warm = None
    if template is not None:
      warm = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), template)
    nan = jnp.full((), jnp.nan, dtype)
    return HypergradientState(
        count=jnp.zeros((), jnp.int32), num_refused=jnp.zeros((), jnp.int32),
        value=nan, num_iters=jnp.zeros((), jnp.int32), residual=nan,
        converged=jnp.zeros((), bool), tol=jnp.asarray(first_tol, dtype),
        warm_start=warm)

  def compute(state, hparams, extra):
    w = extra.get("inner_params")
    tb, vb = extra.get("train_batch"), extra.get("val_batch")
    if method == "t1t2":
      return t1t2(train_step, val_loss, hparams, w, tb, vb)
    if method in ("ift", "implicit"):
      return implicit_lib.implicit_hypergrad(
          train_step, val_loss, hparams, w, tb, vb, solver=opts["solver"],
          symmetric=opts.get("symmetric"), init=state.warm_start)
    if method == "hoag":
      symmetric = opts.get("symmetric")
      return _hoag_scheduled(
          train_step, val_loss, checks.as_float_tree("hparams", hparams), w,
          tb, vb, state.warm_start, state.tol, maxiter=opts["maxiter"],
          symmetric=True if symmetric is None else symmetric)
    w0, batches = extra.get("params0"), extra.get("train_batches")
    steps = opts.get("num_steps")
    if method == "reverse":
      return unrolled_lib.reverse(train_step, val_loss, hparams, w0, batches,
                                  vb, remat=opts.get("remat", False),
                                  num_steps=steps)
    if method == "forward":
      return unrolled_lib.forward(train_step, val_loss, hparams, w0, batches,
                                  vb, num_steps=steps)
    return unrolled_lib.drmad(train_step, val_loss, hparams, w0, w, batches,
                              vb, num_steps=steps)

  def update_fn(updates, state, params=None, **extra):
    if params is None:
      raise TypeError(
          f"hypergradient(method={method!r}).update needs the current "
          "hyperparameters as params: tx.update(updates, state, hparams, "
          "inner_params=..., ...).")
    missing = [k for k in spec.required if extra.get(k) is None and not (
        k == "train_batches" and opts.get("num_steps") is not None)]
    if missing:
      raise TypeError(
          f"hypergradient(method={method!r}).update is missing the keyword "
          f"argument(s) {', '.join(missing)}; call tx.update(updates, state, "
          f"hparams, {', '.join(f'{k}=...' for k in spec.required)}, "
          "train_batch=..., val_batch=...).")
    old_warm = state.warm_start
    if old_warm is not None:
      # The solve runs in the dtypes of inner_params.
      state = state._replace(
          warm_start=_warm_start_like(old_warm, extra["inner_params"]))
    hg = compute(state, params, extra)
    # A non-finite value or residual also refuses: a solver fed a non-finite
    # right-hand side may stop at once and return a finite, stale solution.
    finite = (all_finite(hg.grad) & jnp.isfinite(hg.value) &
              ~jnp.isnan(hg.info.residual))
    grad = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)),
                        hg.grad)
    if updates is not None:
      grad = jax.tree.map(lambda u, g: (u + g).astype(u.dtype), updates, grad)

    warm = old_warm
    if warm is not None:
      q = hg.info.solution
      warm = optax.tree.where(finite & all_finite(q),
                              optax.tree.cast_like(q, warm), warm)
    if method == "hoag":
      tol = jnp.maximum(state.tol * opts["decay"], opts["min_tol"])
    else:
      tol = state.tol
    dtype = state.value.dtype
    new_state = HypergradientState(
        count=optax.safe_increment(state.count),
        num_refused=state.num_refused + (~finite).astype(jnp.int32),
        value=jnp.asarray(hg.value, dtype),
        num_iters=jnp.asarray(hg.info.num_iters, jnp.int32),
        residual=jnp.asarray(hg.info.residual, dtype),
        converged=jnp.asarray(hg.info.converged, bool),
        tol=tol.astype(state.tol.dtype),
        warm_start=warm)
    return grad, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
