"""Core ATen operations in ``jax.numpy`` / ``jax.lax`` (the torch→JAX table).

``OPS`` maps an ATen operator name (``"add"``, ``"convolution"``, …: the
overload packet of ``torch.ops.aten``) to a JAX function taking the operator's
arguments as ``torch.export`` records them: arrays in place of tensors,
Python numbers, lists and ``torch.dtype``s for the rest. Each entry follows
the ATen schema, so the semantics are torch's: gradients at kinks (``relu``
at 0, ``clamp`` at its bounds) and argument conventions (NCHW layouts,
``alpha`` of ``add``, the padding order of ``constant_pad_nd``).

A function raises :class:`Unsupported` for arguments it does not cover (a
transposed convolution, ``ceil_mode`` pooling); the translation then falls
back to the callback path and names the operation. Result dtypes are
enforced by the caller from the exported graph's metadata, so functions
here need not reproduce torch's type promotion exactly.

Hand-written, not borrowed: torchax, the maintained torch-on-JAX library,
does not import with the torch releases this package supports (see
``docs/pytorch.md``), and the ops needed by the models hippojax tunes are a
small, testable set.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax import lax

from hippojax._src.torch_shim import _NUMPY_DTYPES

OPS: dict[str, Callable] = {}

# torch computes float32 matrix products and convolutions in full float32
# (TF32 is off by default); so does JAX with HIGHEST precision, also on GPUs.
_PRECISION = lax.Precision.HIGHEST


class Unsupported(NotImplementedError):
  """An operation, or its arguments, outside the translated set."""


def jax_dtype(dtype: torch.dtype | None):
  """The JAX dtype of a torch dtype (64-bit types follow JAX's x64 mode)."""
  if dtype is None:
    return None
  try:
    return jax.dtypes.canonicalize_dtype(_NUMPY_DTYPES[dtype])
  except KeyError:
    raise Unsupported(f"dtype {dtype}") from None


def _op(*names):
  def register(fn):
    for name in names:
      OPS[name] = fn
    return fn
  return register


def _dim(d: int, ndim: int) -> int:
  return d + ndim if d < 0 else d


def _dims(dims, ndim: int) -> tuple | None:
  if dims is None or (isinstance(dims, (list, tuple)) and not dims):
    return None  # all dimensions
  if isinstance(dims, int):
    dims = [dims]
  return tuple(_dim(d, max(ndim, 1)) for d in dims)


# ----------------------------------------------------------------------------
# Elementwise.
# ----------------------------------------------------------------------------

_UNARY = {
    "abs": jnp.abs, "neg": jnp.negative, "exp": jnp.exp, "exp2": jnp.exp2,
    "expm1": jnp.expm1, "log": jnp.log, "log1p": jnp.log1p,
    "log2": jnp.log2, "log10": jnp.log10, "sqrt": jnp.sqrt,
    "rsqrt": lax.rsqrt, "sin": jnp.sin, "cos": jnp.cos, "tan": jnp.tan,
    "sinh": jnp.sinh, "cosh": jnp.cosh, "tanh": jnp.tanh,
    "asin": jnp.arcsin, "acos": jnp.arccos, "atan": jnp.arctan,
    "asinh": jnp.arcsinh, "acosh": jnp.arccosh, "atanh": jnp.arctanh,
    "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "sign": jnp.sign,
    "floor": jnp.floor, "ceil": jnp.ceil, "round": jnp.round,
    "trunc": jnp.trunc, "reciprocal": jnp.reciprocal,
    "erf": jax.scipy.special.erf, "erfinv": jax.scipy.special.erfinv,
    "logical_not": jnp.logical_not, "bitwise_not": jnp.invert,
    "isnan": jnp.isnan, "isinf": jnp.isinf, "isfinite": jnp.isfinite,
    "silu": jax.nn.silu, "mish": jax.nn.mish,
    "hardswish": jax.nn.hard_swish, "hardsigmoid": jax.nn.hard_sigmoid,
}
for _name, _f in _UNARY.items():
  OPS[_name] = (lambda f: lambda x, *_, **__: f(x))(_f)

_BINARY = {
    "mul": jnp.multiply, "maximum": jnp.maximum, "minimum": jnp.minimum,
    "fmod": jnp.fmod, "remainder": jnp.remainder, "atan2": jnp.arctan2,
    "eq": jnp.equal, "ne": jnp.not_equal, "lt": jnp.less,
    "le": jnp.less_equal, "gt": jnp.greater, "ge": jnp.greater_equal,
    "logical_and": jnp.logical_and, "logical_or": jnp.logical_or,
    "logical_xor": jnp.logical_xor, "bitwise_and": jnp.bitwise_and,
    "bitwise_or": jnp.bitwise_or, "bitwise_xor": jnp.bitwise_xor,
}
for _name, _f in _BINARY.items():
  OPS[_name] = (lambda f: lambda x, y: f(x, y))(_f)


@_op("add")
def _add(x, y, alpha=1):
  return x + (y if alpha == 1 else alpha * y)


@_op("sub")
def _sub(x, y, alpha=1):
  return x - (y if alpha == 1 else alpha * y)


@_op("rsub")
def _rsub(x, y, alpha=1):
  return y - (x if alpha == 1 else alpha * x)


@_op("div")
def _div(x, y, rounding_mode=None):
  if rounding_mode is None:
    return jnp.true_divide(x, y)
  if rounding_mode == "floor":
    return jnp.floor_divide(x, y)
  return jnp.trunc(jnp.true_divide(x, y))  # "trunc"


@_op("pow")
def _pow(x, y):
  return jnp.power(x, y)  # an integer exponent runs lax.integer_pow


@_op("where")
def _where(condition, x, y):
  return jnp.where(condition, x, y)


def _clamp_values(x, lo, hi):
  # Gradient 1 on the bounds, as torch's (jnp.clip splits it at ties).
  if lo is not None:
    x = jnp.where(x < lo, lo, x)
  if hi is not None:
    x = jnp.where(x > hi, hi, x)
  return x


@_op("clamp")
def _clamp(x, min=None, max=None):  # pylint: disable=redefined-builtin
  return _clamp_values(x, min, max)


@_op("clamp_min")
def _clamp_min(x, min):  # pylint: disable=redefined-builtin
  return _clamp_values(x, min, None)


@_op("clamp_max")
def _clamp_max(x, max):  # pylint: disable=redefined-builtin
  return _clamp_values(x, None, max)


@_op("hardtanh")
def _hardtanh(x, min_val=-1.0, max_val=1.0):
  return _clamp_values(x, min_val, max_val)


@_op("gelu")
def _gelu(x, approximate="none"):
  return jax.nn.gelu(x, approximate=approximate == "tanh")


@_op("elu")
def _elu(x, alpha=1.0, scale=1.0, input_scale=1.0):
  xs = x * input_scale
  return scale * jnp.where(x > 0, xs, alpha * jnp.expm1(jnp.minimum(xs, 0)))


@_op("leaky_relu")
def _leaky_relu(x, negative_slope=0.01):
  return jnp.where(x > 0, x, negative_slope * x)


@_op("softplus")
def _softplus(x, beta=1.0, threshold=20.0):
  bx = beta * x
  safe = jnp.where(bx > threshold, 0.0, bx)
  return jnp.where(bx > threshold, x, jnp.log1p(jnp.exp(safe)) / beta)


@_op("log_sigmoid_forward")
def _log_sigmoid_forward(x):
  return jax.nn.log_sigmoid(x), jnp.zeros((0,), x.dtype)


@_op("_softmax")
def _softmax(x, dim, half_to_float=False):
  del half_to_float
  return jax.nn.softmax(x, axis=dim)


@_op("_log_softmax")
def _log_softmax(x, dim, half_to_float=False):
  del half_to_float
  return jax.nn.log_softmax(x, axis=dim)


# ----------------------------------------------------------------------------
# Reductions.
# ----------------------------------------------------------------------------


def _dtype_reduction(fn):
  """``aten.<fn>(x, dim, keepdim, *, dtype)``; ``<fn>.default(x, *, dtype)``
  passes the dtype where ``dim`` stands."""

  def reduce(x, dim=None, keepdim=False, dtype=None):
    if isinstance(dim, torch.dtype):
      dim, dtype = None, dim
    return fn(x, axis=_dims(dim, x.ndim), keepdims=keepdim,
              dtype=jax_dtype(dtype))

  return reduce


_op("sum")(_dtype_reduction(jnp.sum))
_op("mean")(_dtype_reduction(jnp.mean))
_op("prod")(_dtype_reduction(jnp.prod))


@_op("amax")
def _amax(x, dim=(), keepdim=False):
  return jnp.max(x, axis=_dims(dim, x.ndim), keepdims=keepdim)


@_op("amin")
def _amin(x, dim=(), keepdim=False):
  return jnp.min(x, axis=_dims(dim, x.ndim), keepdims=keepdim)


@_op("argmax")
def _argmax(x, dim=None, keepdim=False):
  return jnp.argmax(x, axis=dim, keepdims=keepdim)


@_op("argmin")
def _argmin(x, dim=None, keepdim=False):
  return jnp.argmin(x, axis=dim, keepdims=keepdim)


@_op("max")
def _max(x, dim=None, keepdim=False):
  if isinstance(dim, jax.Array):  # max.other: elementwise
    return jnp.maximum(x, dim)
  if dim is None:
    return jnp.max(x)
  return (jnp.max(x, axis=dim, keepdims=keepdim),
          jnp.argmax(x, axis=dim, keepdims=keepdim))


@_op("min")
def _min(x, dim=None, keepdim=False):
  if isinstance(dim, jax.Array):
    return jnp.minimum(x, dim)
  if dim is None:
    return jnp.min(x)
  return (jnp.min(x, axis=dim, keepdims=keepdim),
          jnp.argmin(x, axis=dim, keepdims=keepdim))


@_op("var")
def _var(x, dim=None, *, correction=None, keepdim=False):
  ddof = 1 if correction is None else correction
  return jnp.var(x, axis=_dims(dim, x.ndim), ddof=ddof, keepdims=keepdim)


@_op("any")
def _any(x, dim=None, keepdim=False):
  return jnp.any(x, axis=_dims(dim, x.ndim), keepdims=keepdim)


@_op("all")
def _all(x, dim=None, keepdim=False):
  return jnp.all(x, axis=_dims(dim, x.ndim), keepdims=keepdim)


@_op("logsumexp")
def _logsumexp(x, dim, keepdim=False):
  return jax.nn.logsumexp(x, axis=_dims(dim, x.ndim), keepdims=keepdim)


@_op("cumsum")
def _cumsum(x, dim, dtype=None):
  return jnp.cumsum(x, axis=dim, dtype=jax_dtype(dtype))


# ----------------------------------------------------------------------------
# Shapes, indexing, creation.
# ----------------------------------------------------------------------------


@_op("view", "_unsafe_view", "reshape")
def _view(x, size):
  if isinstance(size, torch.dtype):
    raise Unsupported("view as another dtype")
  return jnp.reshape(x, tuple(size))


@_op("permute")
def _permute(x, dims):
  return jnp.transpose(x, tuple(_dim(d, x.ndim) for d in dims))


@_op("t")
def _t(x):
  return x.T


@_op("transpose")
def _transpose(x, dim0, dim1):
  return jnp.swapaxes(x, dim0, dim1)


@_op("expand")
def _expand(x, size, *, implicit=False):
  del implicit
  lead = len(size) - x.ndim
  shape = tuple(x.shape[i - lead] if s == -1 else s
                for i, s in enumerate(size))
  return jnp.broadcast_to(x, shape)


@_op("squeeze")
def _squeeze(x, dim=None):
  dims = _dims(dim, x.ndim)
  if dims is None:
    return jnp.squeeze(x)
  return jnp.squeeze(x, tuple(d for d in dims if x.shape[d] == 1))


@_op("unsqueeze")
def _unsqueeze(x, dim):
  return jnp.expand_dims(x, dim + x.ndim + 1 if dim < 0 else dim)


@_op("cat")
def _cat(tensors, dim=0):
  tensors = [t for t in tensors if t.shape != (0,)]  # torch skips (0,)
  return jnp.concatenate(tensors, axis=dim)


@_op("stack")
def _stack(tensors, dim=0):
  return jnp.stack(tensors, axis=dim)


@_op("slice")
def _slice(x, dim=0, start=None, end=None, step=1):
  index = [slice(None)] * x.ndim
  index[_dim(dim, x.ndim)] = slice(start, end, step)
  return x[tuple(index)]


@_op("select")
def _select(x, dim, index):
  return jnp.take(x, index, axis=dim)


@_op("index_select")
def _index_select(x, dim, index):
  return jnp.take(x, index, axis=dim)


@_op("gather")
def _gather(x, dim, index, sparse_grad=False):
  del sparse_grad
  return jnp.take_along_axis(x, index, axis=dim)


@_op("index")
def _index(x, indices):
  return x[tuple(slice(None) if i is None else i for i in indices)]


@_op("split_with_sizes")
def _split_with_sizes(x, split_sizes, dim=0):
  points = np.cumsum(split_sizes)[:-1].tolist()
  return jnp.split(x, points, axis=dim)


@_op("split")
def _split(x, split_size, dim=0):
  n = x.shape[dim]
  if isinstance(split_size, (list, tuple)):
    return _split_with_sizes(x, split_size, dim)
  return jnp.split(x, list(range(split_size, n, split_size)), axis=dim)


@_op("flip")
def _flip(x, dims):
  return jnp.flip(x, axis=tuple(dims))


@_op("repeat")
def _repeat(x, repeats):
  return jnp.tile(x, tuple(repeats))


@_op("constant_pad_nd")
def _constant_pad_nd(x, pad, value=0):
  config = [(0, 0, 0)] * x.ndim
  for i in range(len(pad) // 2):
    config[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1], 0)
  return lax.pad(x, jnp.asarray(value, x.dtype), config)


@_op("clone", "alias", "lift_fresh_copy", "detach", "contiguous")
def _identity(x, *_, **__):
  return x


@_op("_to_copy")
def _to_copy(x, *, dtype=None, **_):
  return x if dtype is None else x.astype(jax_dtype(dtype))


@_op("copy")
def _copy(dst, src, non_blocking=False):
  del non_blocking
  return jnp.broadcast_to(src, dst.shape).astype(dst.dtype)


@_op("masked_fill")
def _masked_fill(x, mask, value):
  return jnp.where(mask, value, x)


@_op("embedding")
def _embedding(weight, indices, padding_idx=-1, scale_grad_by_freq=False,
               sparse=False):
  del sparse
  if scale_grad_by_freq:
    raise Unsupported("embedding with scale_grad_by_freq")
  out = jnp.take(weight, indices, axis=0)
  if padding_idx is not None and padding_idx >= 0:
    # torch's rule: the padding row receives no gradient.
    pad = (indices == padding_idx)[..., None]
    out = jnp.where(pad, lax.stop_gradient(out), out)
  return out


@_op("full")
def _full(size, fill_value, *, dtype=None, **_):
  return jnp.full(tuple(size), fill_value, dtype=jax_dtype(dtype))


@_op("scalar_tensor")
def _scalar_tensor(s, *, dtype=None, **_):
  return jnp.asarray(s, dtype=jax_dtype(dtype))


@_op("zeros", "empty", "new_zeros", "new_empty")
def _zeros(*args, dtype=None, **_):
  size = args[-1]
  return jnp.zeros(tuple(size), dtype=jax_dtype(dtype))


@_op("ones", "new_ones")
def _ones(*args, dtype=None, **_):
  return jnp.ones(tuple(args[-1]), dtype=jax_dtype(dtype))


@_op("full_like")
def _full_like(x, fill_value, *, dtype=None, **_):
  return jnp.full(x.shape, fill_value, dtype=jax_dtype(dtype) or x.dtype)


@_op("zeros_like", "empty_like")
def _zeros_like(x, *, dtype=None, **_):
  return jnp.zeros(x.shape, dtype=jax_dtype(dtype) or x.dtype)


@_op("ones_like")
def _ones_like(x, *, dtype=None, **_):
  return jnp.ones(x.shape, dtype=jax_dtype(dtype) or x.dtype)


@_op("arange")
def _arange(*args, dtype=None, **_):
  start, end, step = (0, args[0], 1) if len(args) == 1 else (
      args + (1,))[:3]
  return jnp.arange(start, end, step, dtype=jax_dtype(dtype))


@_op("_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size",
     "_assert_async")
def _no_op(*_, **__):
  return None


# ----------------------------------------------------------------------------
# Linear algebra, convolution, pooling, normalisation.
# ----------------------------------------------------------------------------


@_op("mm", "bmm", "matmul")
def _mm(x, y):
  return jnp.matmul(x, y, precision=_PRECISION)


@_op("addmm")
def _addmm(bias, x, y, *, beta=1, alpha=1):
  out = jnp.matmul(x, y, precision=_PRECISION)
  if alpha != 1:
    out = alpha * out
  return out + (bias if beta == 1 else beta * bias)


@_op("convolution")
def _convolution(x, weight, bias, stride, padding, dilation, transposed,
                 output_padding, groups):
  del output_padding
  if transposed:
    raise Unsupported("transposed convolution")
  n = weight.ndim - 2
  spatial = "DHW"[-n:] if n <= 3 else None
  if spatial is None:
    raise Unsupported(f"{n}-d convolution")
  dims = ("NC" + spatial, "OI" + spatial, "NC" + spatial)
  out = lax.conv_general_dilated(
      x, weight, window_strides=tuple(stride),
      padding=[(p, p) for p in padding], rhs_dilation=tuple(dilation),
      dimension_numbers=dims, feature_group_count=groups,
      precision=_PRECISION)
  if bias is not None:
    out = out + bias.reshape((1, -1) + (1,) * n)
  return out


def _pool_args(x, kernel_size, stride, padding, dilation, n):
  def expand(v, default):
    v = default if v is None or (isinstance(v, (list, tuple)) and not v) else v
    v = [v] if isinstance(v, int) else list(v)
    return v * n if len(v) == 1 else v
  k = expand(kernel_size, None)
  return (k, expand(stride, k), expand(padding, 0), expand(dilation, 1),
          x.ndim - n)


class _Unavailable:
  """A result torch computes that the translation does not (pool indices)."""

  def __init__(self, what):
    self.what = what


@_op("max_pool2d_with_indices", "max_pool3d_with_indices")
def _max_pool_with_indices(x, kernel_size, stride=(), padding=0, dilation=1,
                           ceil_mode=False):
  n = 2 if x.ndim in (3, 4) and len(kernel_size) == 2 else len(kernel_size)
  k, s, p, d, lead = _pool_args(x, kernel_size, stride, padding, dilation, n)
  if ceil_mode:
    raise Unsupported("max pooling with ceil_mode=True")
  init = -np.inf if jnp.issubdtype(x.dtype, jnp.floating) else (
      jnp.iinfo(x.dtype).min)
  # Concrete NumPy initial values select JAX's differentiable max/sum
  # window reductions.
  out = lax.reduce_window(
      x, np.asarray(init, x.dtype), lax.max, (1,) * lead + tuple(k),
      (1,) * lead + tuple(s), [(0, 0)] * lead + [(q, q) for q in p],
      window_dilation=(1,) * lead + tuple(d))
  return out, _Unavailable("the indices of max pooling")


@_op("avg_pool2d", "avg_pool3d", "avg_pool1d")
def _avg_pool(x, kernel_size, stride=(), padding=0, ceil_mode=False,
              count_include_pad=True, divisor_override=None):
  n = len(kernel_size) if isinstance(kernel_size, (list, tuple)) else 1
  k, s, p, _, lead = _pool_args(x, kernel_size, stride, padding, 1, n)
  if ceil_mode:
    raise Unsupported("average pooling with ceil_mode=True")
  window = (1,) * lead + tuple(k)
  strides = (1,) * lead + tuple(s)
  pads = [(0, 0)] * lead + [(q, q) for q in p]
  total = lax.reduce_window(x, np.asarray(0, x.dtype), lax.add, window,
                            strides, pads)
  if divisor_override:
    return total / divisor_override
  if count_include_pad or not any(p):
    return total / math.prod(k)
  ones = jnp.ones(x.shape[lead:], x.dtype)
  count = lax.reduce_window(ones, np.asarray(0, x.dtype), lax.add, tuple(k),
                            tuple(s), [(q, q) for q in p])
  return total / count


def _adaptive_ranges(size, out):
  return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


@_op("_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_avg_pool1d")
def _adaptive_avg_pool(x, output_size):
  n = len(output_size)
  lead = x.ndim - n
  for i, out in enumerate(output_size):
    axis = lead + i
    size = x.shape[axis]
    if size % out == 0:  # equal windows: a reshape and a mean
      shape = x.shape[:axis] + (out, size // out) + x.shape[axis + 1:]
      x = jnp.mean(x.reshape(shape), axis=axis + 1)
    else:
      x = jnp.stack([jnp.mean(lax.slice_in_dim(x, a, b, axis=axis),
                              axis=axis)
                     for a, b in _adaptive_ranges(size, out)], axis=axis)
  return x


def _channel(v, ndim):
  return v.reshape((1, -1) + (1,) * (ndim - 2))


@_op("_native_batch_norm_legit_no_training")
def _batch_norm_eval(x, weight, bias, running_mean, running_var, momentum,
                     eps):
  del momentum
  out = (x - _channel(running_mean, x.ndim)) * _channel(
      lax.rsqrt(running_var + eps), x.ndim)
  if weight is not None:
    out = out * _channel(weight, x.ndim)
  if bias is not None:
    out = out + _channel(bias, x.ndim)
  empty = jnp.zeros((0,), x.dtype)
  return out, empty, empty


@_op("_native_batch_norm_legit")
def _batch_norm_batch_stats(x, weight, bias, *args):
  # The no_stats overload (track_running_stats=False): batch statistics.
  if len(args) != 3:
    raise Unsupported("batch norm updating running statistics")
  training, _, eps = args
  axes = (0,) + tuple(range(2, x.ndim))
  if training:
    mean = jnp.mean(x, axis=axes)
    var = jnp.var(x, axis=axes)
  else:
    raise Unsupported("batch norm without statistics in evaluation mode")
  rstd = lax.rsqrt(var + eps)
  out = (x - _channel(mean, x.ndim)) * _channel(rstd, x.ndim)
  if weight is not None:
    out = out * _channel(weight, x.ndim)
  if bias is not None:
    out = out + _channel(bias, x.ndim)
  return out, mean, rstd


@_op("native_layer_norm")
def _layer_norm(x, normalized_shape, weight, bias, eps):
  axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
  mean = jnp.mean(x, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
  rstd = lax.rsqrt(var + eps)
  out = (x - mean) * rstd
  if weight is not None:
    out = out * weight
  if bias is not None:
    out = out + bias
  return out, mean, rstd


@_op("native_group_norm")
def _group_norm(x, weight, bias, n, c, hxw, group, eps):
  del hxw
  g = x.reshape((n, group, -1))
  mean = jnp.mean(g, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(g - mean), axis=-1, keepdims=True)
  rstd = lax.rsqrt(var + eps)
  out = ((g - mean) * rstd).reshape(x.shape)
  if weight is not None:
    out = out * _channel(weight, x.ndim)
  if bias is not None:
    out = out + _channel(bias, x.ndim)
  del c
  return out, mean[..., 0], rstd[..., 0]
