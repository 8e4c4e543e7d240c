"""Eager validation of options and trace-time validation of pytrees.

Options (``num_iters``, ``tol``, …) are Python values and are checked when a
function is called. Structures, shapes and dtypes are checked while tracing,
with :func:`jax.eval_shape`, so a mistake is reported once, naming the pytree
path, before any computation runs. Nothing here branches on array values.
"""

import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any


def check_int(name: str, value: Any, minimum: int) -> int:
  """Returns ``value`` if it is a Python/NumPy integer ``>= minimum``."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be an integer, got {value!r} "
                    f"of type {type(value).__name__}.")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value!r}.")
  return int(value)


def check_positive(name: str, value: Any) -> float:
  """Returns ``value`` if it is a real number ``> 0``."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{name} must be a real number, got {value!r} "
                    f"of type {type(value).__name__}.")
  if not value > 0 or not np.isfinite(value):
    raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
  return float(value)


def check_callable(name: str, fn: Any) -> None:
  if not callable(fn):
    raise TypeError(f"{name} must be callable, got {type(fn).__name__}.")


def _path(prefix: str, path) -> str:
  return prefix + jax.tree_util.keystr(path)


_FLOAT_DTYPES = frozenset(
    np.dtype(t) for t in (jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64))


def as_float_tree(name: str, tree: PyTree) -> PyTree:
  """Converts leaves to arrays and requires a floating dtype for each."""

  def convert(path, leaf):
    if isinstance(leaf, bool) or (
        isinstance(leaf, numbers.Integral) and not isinstance(leaf, float)):
      raise TypeError(
          f"{_path(name, path)} is the integer {leaf!r}; hyperparameters "
          "must be floating-point (write it as a float, e.g. "
          f"{float(leaf)!r}).")
    arr = jnp.asarray(leaf)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
      raise TypeError(
          f"{_path(name, path)} has dtype {arr.dtype}; hyperparameters must "
          "be floating-point (float32 or float64).")
    return arr

  leaves = jax.tree_util.tree_leaves(tree)
  if not leaves:
    raise ValueError(f"{name} has no array leaves; pass at least one "
                     "floating-point hyperparameter.")
  if all(isinstance(leaf, jax.Array) and leaf.dtype in _FLOAT_DTYPES
         for leaf in leaves):
    return tree  # the common case in an outer loop: nothing to convert
  return jax.tree_util.tree_map_with_path(convert, tree)


def _describe(x) -> str:
  return f"shape {tuple(x.shape)} dtype {x.dtype}"


def _structure_difference(name: str, expected: PyTree, got: PyTree) -> str:
  """Names the paths present in one pytree and not in the other."""
  paths = lambda t: [jax.tree_util.keystr(p) for p, _ in
                     jax.tree_util.tree_flatten_with_path(t)[0]]
  want, have = paths(expected), paths(got)
  missing = [name + p for p in want if p not in have]
  extra = [name + p for p in have if p not in want]
  parts = []
  if missing:
    parts.append("missing " + ", ".join(missing))
  if extra:
    parts.append("unexpected " + ", ".join(extra))
  return "; ".join(parts) or "the containers differ in type"


def _first_leaf_mismatch(tree: PyTree, like: PyTree):
  """``(path, leaf, like_leaf)`` of the first leaf whose shape or dtype differ.

  Both pytrees must already have the same structure; leaves may be arrays,
  Python scalars or ``jax.ShapeDtypeStruct``.
  """
  as_spec = lambda x: jax.eval_shape(lambda y: y, x)
  for (path, t), l in zip(jax.tree_util.tree_flatten_with_path(tree)[0],
                          jax.tree_util.tree_leaves(like)):
    t, l = as_spec(t), as_spec(l)
    if t.shape != l.shape or t.dtype != l.dtype:
      return path, t, l
  return None


def check_step_output(train_step: Callable, params: PyTree, hparams: PyTree,
                      batch: PyTree, *, params_name: str = "params") -> None:
  """``train_step(params, hparams, batch)`` must return ``params``' structure."""
  out = jax.eval_shape(train_step, params, hparams, batch)
  p_struct = jax.tree_util.tree_structure(params)
  o_struct = jax.tree_util.tree_structure(out)
  if p_struct != o_struct:
    raise ValueError(
        f"train_step must return a pytree with the structure of "
        f"{params_name}; {_structure_difference(params_name, params, out)} "
        f"(got {o_struct}, expected {p_struct}).")
  mismatch = _first_leaf_mismatch(out, params)
  if mismatch is not None:
    path, o, p = mismatch
    raise ValueError(
        f"train_step output at {_path(params_name, path)} has "
        f"{_describe(o)}, but {_path(params_name, path)} has "
        f"{_describe(p)}; train_step must preserve shapes and dtypes.")


def check_like(name: str, tree: PyTree, like_name: str, like: PyTree) -> None:
  """``tree`` must have the structure, shapes and dtypes of ``like``."""
  if jax.tree_util.tree_structure(tree) != jax.tree_util.tree_structure(like):
    raise ValueError(
        f"{name} must have the pytree structure of {like_name}; "
        f"{_structure_difference(name, like, tree)}.")
  mismatch = _first_leaf_mismatch(tree, like)
  if mismatch is not None:
    path, t, l = mismatch
    raise ValueError(f"{_path(name, path)} has {_describe(t)}, but "
                     f"{_path(like_name, path)} has {_describe(l)}.")


def check_val_loss(val_loss: Callable, params: PyTree, hparams: PyTree,
                   batch: PyTree) -> None:
  """``val_loss(params, hparams, batch)`` must return a floating scalar."""
  out = jax.eval_shape(val_loss, params, hparams, batch)
  leaves = jax.tree_util.tree_leaves(out)
  if len(leaves) != 1 or jax.tree_util.tree_structure(out).num_nodes != 1:
    raise ValueError("val_loss must return a single scalar array, got a "
                     f"pytree {jax.tree_util.tree_structure(out)}.")
  (leaf,) = leaves
  if leaf.shape != ():
    raise ValueError(
        f"val_loss must return a scalar, got shape {tuple(leaf.shape)}; "
        "reduce it, e.g. with jnp.mean.")
  if not jnp.issubdtype(leaf.dtype, jnp.floating):
    raise TypeError(f"val_loss must return a floating scalar, got dtype "
                    f"{leaf.dtype}.")


def num_steps_of(train_batches: PyTree, num_steps: int | None) -> int:
  """Returns T, the common leading axis of the leaves of ``train_batches``."""
  flat = jax.tree_util.tree_flatten_with_path(train_batches)[0]
  if not flat:
    if num_steps is None:
      raise ValueError(
          "train_batches has no array leaves, so the number of steps is "
          "unknown; pass num_steps=T.")
    return check_int("num_steps", num_steps, 0)
  lengths = {}
  for path, leaf in flat:
    shape = np.shape(leaf)
    if len(shape) == 0:
      raise ValueError(
          f"{_path('train_batches', path)} is a scalar; every leaf of "
          "train_batches needs a leading axis of length T (one slice per "
          "step).")
    lengths[_path("train_batches", path)] = shape[0]
  distinct = sorted(set(lengths.values()))
  if len(distinct) > 1:
    detail = ", ".join(f"{k}: {v}" for k, v in lengths.items())
    raise ValueError(
        "train_batches leaves must share one leading axis (the number of "
        f"steps T); got {detail}.")
  T = distinct[0]
  if num_steps is not None and check_int("num_steps", num_steps, 0) != T:
    raise ValueError(f"num_steps={num_steps} but train_batches has leading "
                     f"axis {T}.")
  return T


def cast_to_inner_params(warm: PyTree, inner_params: PyTree) -> PyTree:
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
