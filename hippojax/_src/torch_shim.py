r"""PyTorch functions as JAX functions (the implementation of hippojax.torch).

A torch function of pytrees of tensors becomes three JAX primitives:

* ``torch_call``: ``outputs = fn(*args)``;
* ``torch_jvp``: the tangents of the floating outputs, linear in the tangents
  of the inputs that are being differentiated (``torch.func.jvp``; for a
  train step declaring a symmetric Jacobian, differentiated in ``params``
  only, ``torch.func.vjp``, since then ``J t = Jᵀ t`` and torch's double
  backward is faster than its forward-over-reverse);
* ``torch_vjp``: the cotangents of those inputs, linear in the cotangents of
  the floating outputs (``torch.func.vjp``).

The JVP rule of ``torch_call`` emits ``torch_jvp``; ``torch_jvp`` and
``torch_vjp`` are each other's transpose. So ``jax.jvp``/``jax.linearize``
(forward mode) run ``torch.func.jvp``, and ``jax.vjp``/``jax.grad`` (reverse
mode, through ``lax.scan`` and ``jax.checkpoint`` too) run ``torch.func.vjp``
with no wasted forward-mode work. Only the inputs JAX actually differentiates
are handed to torch as differentiable (symbolic zeros are dropped), so a VJP of
``train_step`` with respect to ``params`` never computes a cotangent for the
data. ``jax.vmap`` of any of the three runs the torch function once per batch
element (``lax.map``). Second derivatives of a wrapped function are not
available: wrap a torch function that computes the derivative instead.

Under ``jax.jit`` each primitive lowers to ``jax.pure_callback``. The callback
receives JAX arrays on the CPU, which enter torch by DLPack without a copy; the
outputs leave torch as NumPy views of the result tensors and XLA copies them
into its buffers (one copy). Outside ``jit`` (eager calls), inputs and outputs
cross by DLPack both ways, without copies, on the CPU and on a GPU alike.

Products at one point (a linear solver's ``Jᵀv``) reuse one
``torch.func.vjp`` pullback; see :func:`_vjp_at`.

Output shapes and dtypes are found by calling the function once, at trace
time, on zeros of the input shapes, and cached per input structure, shapes and
dtypes. Calls into torch hold one lock: XLA may run independent callbacks on
several threads, and ``torch.func.functional_call`` swaps a module's
parameters in place.

Why primitives: ``jax.custom_vjp`` cannot be linearised, which ``hoag`` does
by default and ``forward`` always does, and ``jax.custom_derivatives.
linear_call`` (``custom_jvp`` with a custom transpose) has no batching rule,
so ``jax.vmap`` and ``jax.jacfwd`` would fail.
"""

import dataclasses
import functools
import numbers
import threading
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

PyTree = Any

_TORCH_DTYPES = {
    np.dtype("float16"): torch.float16,
    np.dtype("float32"): torch.float32,
    np.dtype("float64"): torch.float64,
    np.dtype("complex64"): torch.complex64,
    np.dtype("complex128"): torch.complex128,
    np.dtype("int8"): torch.int8,
    np.dtype("int16"): torch.int16,
    np.dtype("int32"): torch.int32,
    np.dtype("int64"): torch.int64,
    np.dtype("uint8"): torch.uint8,
    np.dtype("bool"): torch.bool,
    np.dtype(jnp.bfloat16): torch.bfloat16,
}
_NUMPY_DTYPES = {v: k for k, v in _TORCH_DTYPES.items()}

_NEEDS_DOUBLE_BACKWARD = (
    "Every hypergradient method (t1t2, ift, hoag, implicit_hypergrad, "
    "reverse, forward and drmad) differentiates train_step once; when "
    "train_step itself takes a gradient (torch.func.grad), that derivative is "
    "a second derivative of the training loss, so every operation in the "
    "training loss must support double backward. A wrapped val_loss only "
    "needs first derivatives. Rewrite the unsupported operation with "
    "differentiable torch operations, or write train_step in JAX.")

_NEEDS_FORWARD_MODE = (
    "Forward mode (torch.func.jvp) is used by hippojax.forward, and by hoag "
    "(by default), implicit_hypergrad with symmetric=True or the CG solver, "
    "and ift with symmetric=True, when train_step does not declare "
    "symmetric_jacobian (hippojax.torch.gradient_step does, and then needs "
    "only torch.func.vjp). Pass symmetric=False to hoag, ift or "
    "implicit_hypergrad to use reverse mode only, and use hippojax.reverse "
    "instead of hippojax.forward.")

_SECOND_ORDER = (
    "Second derivatives through a wrapped torch function are not supported; "
    "wrap a torch function that computes the derivative you need instead.")


# XLA may run independent callbacks of one program on several threads at
# once. Calls into torch are serialised: torch.func.functional_call swaps a
# module's parameters in place, so two concurrent calls on one module would
# restore each other's tensors.
_TORCH_LOCK = threading.RLock()


def _serialised(fn: Callable) -> Callable:
  @functools.wraps(fn)
  def locked(*args, **kwargs):
    with _TORCH_LOCK:
      return fn(*args, **kwargs)
  return locked


def _is_float(dtype) -> bool:
  return jnp.issubdtype(dtype, jnp.inexact)


def _torch_dtype(dtype, what: str) -> torch.dtype:
  try:
    return _TORCH_DTYPES[np.dtype(dtype)]
  except (KeyError, TypeError):
    raise TypeError(f"{what} has dtype {dtype}, which has no PyTorch "
                    "equivalent here.") from None


def _numpy_dtype(dtype: torch.dtype, what: str) -> np.dtype:
  try:
    return _NUMPY_DTYPES[dtype]
  except KeyError:
    raise TypeError(f"{what} has torch dtype {dtype}, which has no JAX "
                    "equivalent; convert it to a floating or integer "
                    "dtype.") from None


def _with_message(error: Exception, message: str) -> Exception:
  """``message`` in an exception of ``error``'s type, if it takes one."""
  try:
    return type(error)(message)
  except TypeError:  # an exception type whose constructor takes more
    return RuntimeError(message)


def _path(prefix: str, path) -> str:
  return prefix + jax.tree_util.keystr(path)


# ----------------------------------------------------------------------------
# Crossing the boundary.
# ----------------------------------------------------------------------------


def _to_torch(x, device: torch.device | None) -> torch.Tensor:
  """A JAX (or NumPy) array as a tensor, without a copy where possible."""
  try:
    t = torch.from_dlpack(x)
  except (BufferError, RuntimeError, TypeError, AttributeError):
    t = torch.from_numpy(np.array(x))
  if device is not None and t.device != device:
    t = t.to(device)
  return t


def _to_numpy(t: torch.Tensor) -> np.ndarray:
  """A tensor as a NumPy array (a view of CPU tensors, else a copy)."""
  return t.detach().cpu().resolve_conj().resolve_neg().numpy()


def _to_jax(t: torch.Tensor) -> jax.Array:
  """A tensor as a JAX array, by DLPack where JAX can read its device."""
  t = t.detach().resolve_conj().resolve_neg().contiguous()
  try:
    return jax.dlpack.from_dlpack(t)
  except (BufferError, RuntimeError, TypeError, ValueError):
    # e.g. a CUDA tensor with a CPU-only JAX: go through host memory.
    return jnp.asarray(t.cpu().numpy())


# ----------------------------------------------------------------------------
# The wrapped function and its per-signature specification.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class _Spec:
  """Static description of one call signature of a :class:`TorchFunction`."""

  fn: "TorchFunction"
  in_tree: Any
  in_avals: tuple  # tuple of jax.core.ShapedArray
  out_tree: Any
  out_avals: tuple

  @functools.cached_property
  def out_float(self) -> tuple:
    return tuple(_is_float(a.dtype) for a in self.out_avals)

  @functools.cached_property
  def step_mask(self) -> tuple | None:
    """The mask selecting ``params``, for a step with symmetric ``∂Φ/∂w``.

    When ``fn`` declares ``symmetric_jacobian`` and returns leaves shaped
    like its first argument ``params``, a forward-mode product in ``params``
    alone is ``J t = Jᵀ t``: it is computed by ``torch.func.vjp``, which
    torch runs faster than forward-over-reverse. ``None`` otherwise.
    """
    if not self.fn.symmetric_jacobian:
      return None
    first = jax.tree_util.treedef_children(self.in_tree)
    if not first or first[0] != self.out_tree:
      return None
    n = first[0].num_leaves
    if self.in_avals[:n] != self.out_avals or not all(self.out_float):
      return None
    return (True,) * n + (False,) * (len(self.in_avals) - n)

  def key(self):
    return (self.fn, self.in_tree, self.in_avals)

  def __hash__(self):
    return hash(self.key())

  def __eq__(self, other):
    return isinstance(other, _Spec) and self.key() == other.key()

  def inputs(self, arrays) -> list:
    device = self.fn.torch_device
    return [_to_torch(a, device) for a in arrays]

  def call(self, inputs: list):
    return self.fn.fn(*jax.tree.unflatten(self.in_tree, inputs))

  def outputs(self, out) -> list:
    """Flattens ``out`` and checks it against the probed signature."""
    leaves, tree = _flatten_outputs(self.fn.name, out)
    if tree != self.out_tree:
      raise RuntimeError(
          f"{self.fn.name} returned a pytree {tree}, but when called on zeros "
          f"of the same input shapes it returned {self.out_tree}; the output "
          "structure must not depend on input values.")
    for i, (leaf, aval) in enumerate(zip(leaves, self.out_avals)):
      if (tuple(leaf.shape) != aval.shape or
          _numpy_dtype(leaf.dtype, "output") != aval.dtype):
        if leaf.dtype == torch.int64 and aval.dtype == np.int32:
          leaves[i] = leaf.to(torch.int32)  # JAX without x64: int64 -> int32
          continue
        raise RuntimeError(
            f"{self.fn.name} returned output leaf {i} with shape "
            f"{tuple(leaf.shape)} and dtype {leaf.dtype}, but on zeros of the "
            f"same input shapes it returned {aval.str_short()}; output shapes "
            "and dtypes must not depend on input values.")
    return leaves

  def differentiable(self, inputs: list, mask: tuple) -> Callable:
    """``f(*inputs[mask]) -> floating outputs``, the rest held fixed."""

    def f(*diff):
      it = iter(diff)
      full = [next(it) if m else x for x, m in zip(inputs, mask)]
      leaves = self.outputs(self.call(full))
      return tuple(t for t, fl in zip(leaves, self.out_float) if fl)

    return f


def _flatten_outputs(name: str, out) -> tuple[list, Any]:
  flat, tree = jax.tree_util.tree_flatten_with_path(out)
  leaves = []
  for path, leaf in flat:
    if not isinstance(leaf, torch.Tensor):
      raise TypeError(
          f"{name} must return torch tensors (or dicts, tuples and lists of "
          f"them), but output{jax.tree_util.keystr(path)} is a "
          f"{type(leaf).__name__}: {leaf!r:.80}. Return torch.as_tensor(...) "
          "instead.")
    leaves.append(leaf)
  return leaves, tree


def _input_aval(path, x) -> jax.core.ShapedArray:
  if isinstance(x, (str, bytes)) or not (
      isinstance(x, (jax.Array, np.ndarray, np.generic, numbers.Number))):
    raise TypeError(
        f"argument {_path('args', path)} is a {type(x).__name__}; a wrapped "
        "torch function takes pytrees of arrays (JAX or NumPy arrays, or "
        "numbers) only.")
  aval = jax.typeof(x) if isinstance(x, jax.Array) else (
      jax.typeof(jnp.asarray(x)))
  _torch_dtype(aval.dtype, f"argument {_path('args', path)}")
  return jax.core.ShapedArray(aval.shape, aval.dtype)


class TorchFallbackWarning(UserWarning):
  """A wrapped torch function takes the (slower) callback path."""


_PATHS = ("auto", "jax", "callback")


@dataclasses.dataclass(frozen=True)
class TorchFunction:
  """A PyTorch function, callable on JAX arrays and differentiable by JAX.

  Build it with :func:`hippojax.torch.wrap`. Instances are hashable (equal
  when they wrap the same function with the same options), so they can be
  passed as static arguments to ``jax.jit`` — which is how every hippojax
  algorithm receives ``train_step`` and ``val_loss``.

  Attributes:
    fn: the torch function of pytrees of tensors.
    name: name used in error messages.
    symmetric_jacobian: declared for train steps whose Jacobian ``∂Φ/∂w`` is
      symmetric (gradient steps); read by the implicit methods.
    device: torch device on which ``fn`` runs under ``jax.jit`` (``None``:
      the CPU); inputs are moved there and outputs back.
    path: ``"auto"`` (translate into JAX where the function's operations
      allow, else call torch), ``"jax"`` (translate or raise) or
      ``"callback"`` (always call torch). :meth:`translation` says which
      path a call takes.
  """

  fn: Callable
  name: str
  symmetric_jacobian: bool = False
  device: str | None = None
  path: str = "auto"
  _translations: dict = dataclasses.field(default_factory=dict, compare=False,
                                          hash=False, repr=False)
  _specs: dict = dataclasses.field(default_factory=dict, compare=False,
                                   hash=False, repr=False)
  _probed: dict = dataclasses.field(default_factory=dict, compare=False,
                                    hash=False, repr=False)
  _pullbacks: dict = dataclasses.field(default_factory=dict, compare=False,
                                       hash=False, repr=False)

  @functools.cached_property
  def torch_device(self) -> torch.device | None:
    return None if self.device is None else torch.device(self.device)

  def __call__(self, *args):
    spec, leaves = self._spec_of(args)
    translated = self._translate(spec)[1]
    if translated is not None:
      outs = translated(*leaves)
    else:
      outs = _call_p.bind(*leaves, spec=spec)
    return jax.tree.unflatten(spec.out_tree, outs)

  def translation(self, *args):
    """Which path a call with these arguments takes, and why.

    Args:
      *args: arguments as for a call (arrays, or anything with ``shape`` and
        ``dtype`` such as ``jax.ShapeDtypeStruct``); only their structure,
        shapes and dtypes matter.

    Returns:
      A ``Translation(path, reason, ops)``: ``path`` is ``"jax"`` (a compiled
      JAX function translated from the torch code) or ``"callback"`` (torch
      called through ``jax.pure_callback``); ``reason`` says why the callback
      path is taken; ``ops`` lists the ATen operators involved.

    Examples:
      >>> import jax.numpy as jnp, hippojax.torch
      >>> f = hippojax.torch.wrap(lambda x: (x.tanh() ** 2).sum())
      >>> f.translation(jnp.ones(3)).path
      'jax'
    """
    args = jax.tree.map(
        lambda x: jnp.zeros(x.shape, x.dtype)
        if isinstance(x, jax.ShapeDtypeStruct) else x, args)
    spec, _ = self._spec_of(args)
    return self._translate(spec)[0]

  def _spec_of(self, args):
    flat, in_tree = jax.tree_util.tree_flatten_with_path(args)
    in_avals = tuple(_input_aval(path, x) for path, x in flat)
    leaves = [x if isinstance(x, jax.Array) else jnp.asarray(x)
              for _, x in flat]
    return self._spec(in_tree, in_avals), leaves

  def _translate(self, spec: "_Spec"):
    """``(Translation, jax_fn or None)`` for one signature, cached."""
    key = (spec.in_tree, spec.in_avals)
    hit = self._translations.get(key)
    if hit is not None:
      return hit
    from hippojax._src import torch_export  # pylint: disable=g-import-not-at-top
    if self.path == "callback":
      hit = (torch_export.Translation(
          "callback", "path='callback' was asked for", ()), None)
    else:
      hit = torch_export.translate(spec)
      if hit[1] is None and self.path == "jax":
        raise ValueError(
            f"{self.name} cannot be translated into JAX (path='jax'): "
            f"{hit[0].reason}. Use path='auto' to run it in torch instead.")
      if hit[1] is None:
        warnings.warn(f"{self.name} runs in torch through callbacks (slower "
                      f"than the JAX path): {hit[0].reason}",
                      TorchFallbackWarning, stacklevel=4)
    self._translations[key] = hit
    return hit

  def clear_cache(self) -> None:
    """Drops the pullbacks kept for repeated products at one point.

    Each keeps the autograd graph of one call (the activations of one
    training step, and copies of its inputs); the next product at a new point
    replaces it anyway, so this is only needed to free that memory early.
    """
    with _TORCH_LOCK:
      self._pullbacks.clear()

  def _spec(self, in_tree, in_avals) -> _Spec:
    key = (in_tree, in_avals)
    spec = self._specs.get(key)
    if spec is None:
      spec = _probe(self, in_tree, in_avals)
      self._specs[key] = spec
    return spec

  def _check(self, kind: str, spec: _Spec, mask: tuple) -> None:
    """Runs a derivative once on zeros, so failures surface at trace time."""
    key = (kind, spec.in_tree, spec.in_avals, mask)
    if key in self._probed:
      return
    zeros = [_zeros(a, self.torch_device) for a in spec.in_avals]
    if kind == "vjp":
      cts = [_zeros(a, self.torch_device)
             for a, fl in zip(spec.out_avals, spec.out_float) if fl]
      _torch_vjp(spec, mask, zeros, cts)
    else:
      tangents = [z for z, m in zip(zeros, mask) if m]
      _torch_jvp(spec, mask, zeros, tangents)
    self._probed[key] = True


def _zeros(aval, device) -> torch.Tensor:
  return torch.zeros(aval.shape, dtype=_torch_dtype(aval.dtype, "input"),
                     device=device or "cpu")


@_serialised
def _probe(fn: TorchFunction, in_tree, in_avals) -> _Spec:
  """Calls ``fn`` on zeros to find its output structure, shapes and dtypes."""
  zeros = [_zeros(a, fn.torch_device) for a in in_avals]
  try:
    with torch.no_grad():
      out = fn.fn(*jax.tree.unflatten(in_tree, zeros))
  except (TypeError, ValueError):
    raise  # messages about arguments (e.g. from functional()) stand alone
  except Exception as e:
    raise _with_message(
        e, f"{fn.name} failed when called on zeros of its input shapes, "
        "which hippojax.torch does once at trace time to find the output "
        f"shapes and dtypes: {e}") from e
  leaves, out_tree = _flatten_outputs(fn.name, out)
  in_floats = {a.dtype for a in in_avals if _is_float(a.dtype)}
  out_avals = []
  for (path, _), leaf in zip(jax.tree_util.tree_flatten_with_path(out)[0],
                             leaves):
    where = f"output{jax.tree_util.keystr(path)} of {fn.name}"
    dtype = _numpy_dtype(leaf.dtype, where)
    if _is_float(dtype) and in_floats and dtype not in in_floats:
      names = ", ".join(sorted(str(d) for d in in_floats))
      raise TypeError(
          f"{where} has dtype {dtype}, but the floating-point inputs are "
          f"{names}: dtypes must be preserved (float32 stays float32). A "
          "tensor created inside the function without a dtype takes "
          f"torch.get_default_dtype() ({torch.get_default_dtype()}); create "
          "it with dtype=x.dtype or cast the result with .to(x.dtype).")
    canonical = jax.dtypes.canonicalize_dtype(dtype)
    if canonical != dtype and not jnp.issubdtype(dtype, jnp.integer):
      raise TypeError(
          f"{where} has dtype {dtype}, which JAX cannot represent unless "
          "64-bit mode is on: jax.config.update('jax_enable_x64', True).")
    out_avals.append(jax.core.ShapedArray(tuple(leaf.shape), canonical))
  return _Spec(fn, in_tree, in_avals, out_tree, tuple(out_avals))


# ----------------------------------------------------------------------------
# Torch computations (shared by the eager and the compiled paths).
# ----------------------------------------------------------------------------

@_serialised
def _torch_call(spec: _Spec, inputs: list) -> list:
  with torch.no_grad():
    return spec.outputs(spec.call(inputs))


@_serialised
def _torch_jvp(spec: _Spec, mask: tuple, inputs: list,
               tangents: list) -> list:
  if mask == spec.step_mask:  # J t = Jᵀ t for a symmetric Jacobian
    return _torch_vjp(spec, mask, inputs, tangents)
  primals = tuple(x for x, m in zip(inputs, mask) if m)
  try:
    with warnings.catch_warnings():
      # torch's forward-mode decompositions still use torch.jit.script.
      warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated",
                              DeprecationWarning)
      _, out = torch.func.jvp(spec.differentiable(inputs, mask), primals,
                              tuple(tangents))
  except (RuntimeError, NotImplementedError) as e:
    raise _with_message(e, f"torch.func.jvp of {spec.fn.name} failed: {e}\n"
                        f"{_NEEDS_FORWARD_MODE}") from e
  return list(out)


@_serialised
def _torch_vjp(spec: _Spec, mask: tuple, inputs: list, cts: list) -> list:
  try:
    vjp = _vjp_at(spec, mask, inputs)
    out = vjp(tuple(cts))
  except (RuntimeError, NotImplementedError) as e:
    raise _with_message(e, f"torch.func.vjp of {spec.fn.name} failed: {e}\n"
                        f"{_NEEDS_DOUBLE_BACKWARD}") from e
  return list(out)


def _vjp_at(spec: _Spec, mask: tuple, inputs: list) -> Callable:
  """``torch.func.vjp``'s pullback of ``fn`` at ``inputs``, reused when the
  previous call with this signature and mask was at the same point.

  Written by hand because neither library does it: the linear solvers ask for
  many products ``Jᵀv`` at one point (``params``, ``hparams``, ``batch``), and
  each primitive call is stateless, so without this every product would re-run
  the forward and gradient passes in torch. Keeping the last point's pullback
  (its autograd graph) makes each further product one backward pass, as
  autograd's ``retain_graph`` does for HippoTrainer. The point is matched
  bit for bit, so the result is exactly what a fresh ``torch.func.vjp`` gives.
  One pullback is kept per signature and mask;
  :meth:`TorchFunction.clear_cache` drops them.
  """
  cache = spec.fn._pullbacks  # pylint: disable=protected-access
  key = (spec.key(), mask)
  hit = cache.get(key)
  if hit is not None and _same_point(hit[0], inputs):
    return hit[1]
  cache.pop(key, None)  # free the old graph before building the new one
  # Under jit the inputs are views of XLA buffers that live only as long as
  # this callback; the graph must keep tensors of its own.
  owned = [x.clone() for x in inputs]
  primals = tuple(x for x, m in zip(owned, mask) if m)
  _, vjp = torch.func.vjp(spec.differentiable(owned, mask), *primals)
  cache[key] = (owned, vjp)
  return vjp


def _same_point(a: list, b: list) -> bool:
  """Bitwise equality of two lists of tensors (NaNs and signed zeros too)."""
  for x, y in zip(a, b):
    if x.shape != y.shape or x.dtype != y.dtype or x.device != y.device:
      return False
    if x.is_floating_point() or x.is_complex():
      x, y = _bits(x), _bits(y)
    if not torch.equal(x, y):
      return False
  return True


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(x: torch.Tensor) -> torch.Tensor:
  if x.is_complex():
    x = torch.view_as_real(x)
  return x.contiguous().view(_BITS[x.element_size()])


def _split(spec: _Spec, arrays):
  n = len(spec.in_avals)
  return list(arrays[:n]), list(arrays[n:])


def _host_call(spec, *arrays):
  return [_to_numpy(t) for t in _torch_call(spec, spec.inputs(arrays))]


def _host_jvp(spec, mask, *arrays):
  inputs, tangents = _split(spec, arrays)
  out = _torch_jvp(spec, mask, spec.inputs(inputs), spec.inputs(tangents))
  return [_to_numpy(t) for t in out]


def _host_vjp(spec, mask, *arrays):
  inputs, cts = _split(spec, arrays)
  out = _torch_vjp(spec, mask, spec.inputs(inputs), spec.inputs(cts))
  return [_to_numpy(t) for t in out]


# ----------------------------------------------------------------------------
# Primitives.
# ----------------------------------------------------------------------------


def _primitive(name: str) -> Primitive:
  p = Primitive(name)
  p.multiple_results = True
  return p


_call_p = _primitive("torch_call")
_jvp_p = _primitive("torch_jvp")
_vjp_p = _primitive("torch_vjp")


def _struct(aval):
  return jax.ShapeDtypeStruct(aval.shape, aval.dtype)


def _jvp_avals(spec, mask):
  return [a for a, fl in zip(spec.out_avals, spec.out_float) if fl]


def _vjp_avals(spec, mask):
  return [a for a, m in zip(spec.in_avals, mask) if m]


_call_p.def_abstract_eval(lambda *args, spec: list(spec.out_avals))
_jvp_p.def_abstract_eval(lambda *args, spec, mask: _jvp_avals(spec, mask))
_vjp_p.def_abstract_eval(lambda *args, spec, mask: _vjp_avals(spec, mask))


# Eager evaluation: DLPack both ways, no host round trip.
def _call_impl(*arrays, spec):
  return [_to_jax(t) for t in _torch_call(spec, spec.inputs(arrays))]


def _jvp_impl(*arrays, spec, mask):
  inputs, tangents = _split(spec, arrays)
  out = _torch_jvp(spec, mask, spec.inputs(inputs), spec.inputs(tangents))
  return [_to_jax(t) for t in out]


def _vjp_impl(*arrays, spec, mask):
  inputs, cts = _split(spec, arrays)
  out = _torch_vjp(spec, mask, spec.inputs(inputs), spec.inputs(cts))
  return [_to_jax(t) for t in out]


_call_p.def_impl(_call_impl)
_jvp_p.def_impl(_jvp_impl)
_vjp_p.def_impl(_vjp_impl)


# Compiled evaluation: a host callback per primitive.
def _call_lowering(*args, spec):
  return jax.pure_callback(functools.partial(_host_call, spec),
                           [_struct(a) for a in spec.out_avals], *args)


def _jvp_lowering(*args, spec, mask):
  spec.fn._check("jvp", spec, mask)  # pylint: disable=protected-access
  return jax.pure_callback(functools.partial(_host_jvp, spec, mask),
                           [_struct(a) for a in _jvp_avals(spec, mask)], *args)


def _vjp_lowering(*args, spec, mask):
  spec.fn._check("vjp", spec, mask)  # pylint: disable=protected-access
  return jax.pure_callback(functools.partial(_host_vjp, spec, mask),
                           [_struct(a) for a in _vjp_avals(spec, mask)], *args)


mlir.register_lowering(_call_p, mlir.lower_fun(_call_lowering))
mlir.register_lowering(_jvp_p, mlir.lower_fun(_jvp_lowering))
mlir.register_lowering(_vjp_p, mlir.lower_fun(_vjp_lowering))


def _zero_tangent(aval):
  return ad.Zero(aval.to_tangent_aval())


def _instantiate(t, aval):
  return jnp.zeros(aval.shape, aval.dtype) if isinstance(t, ad.Zero) else t


def _call_jvp(primals, tangents, *, spec):
  outs = _call_p.bind(*primals, spec=spec)
  mask = tuple(not isinstance(t, ad.Zero) and _is_float(a.dtype)
               for t, a in zip(tangents, spec.in_avals))
  if not any(mask) or not any(spec.out_float):
    return outs, [_zero_tangent(a) for a in spec.out_avals]
  lin = [t for t, m in zip(tangents, mask) if m]
  float_tangents = iter(_jvp_p.bind(*primals, *lin, spec=spec, mask=mask))
  out_tangents = [next(float_tangents) if fl else _zero_tangent(a)
                  for a, fl in zip(spec.out_avals, spec.out_float)]
  return outs, out_tangents


def _linear_jvp(prim, avals_of, primals, tangents, *, spec, mask):
  """JVP of ``torch_jvp``/``torch_vjp``: linear in their trailing arguments."""
  inputs, lin = _split(spec, tangents)
  if any(not isinstance(t, ad.Zero) for t in inputs):
    raise NotImplementedError(
        f"{spec.fn.name}: {_SECOND_ORDER}")
  outs = prim.bind(*primals, spec=spec, mask=mask)
  if all(isinstance(t, ad.Zero) for t in lin):
    return outs, [_zero_tangent(a) for a in avals_of(spec, mask)]
  _, lin_avals = _split(spec, [jax.typeof(p) for p in primals])
  lin = [_instantiate(t, a) for t, a in zip(lin, lin_avals)]
  return outs, prim.bind(*primals[:len(spec.in_avals)], *lin, spec=spec,
                         mask=mask)


def _transpose(target, cts, *args, spec, mask):
  """Transposes ``torch_jvp`` into ``torch_vjp`` and back."""
  inputs, _ = _split(spec, args)
  if any(ad.is_undefined_primal(x) for x in inputs):
    raise NotImplementedError(f"{spec.fn.name}: {_SECOND_ORDER}")
  out_avals = _jvp_avals(spec, mask) if target is _vjp_p else _vjp_avals(
      spec, mask)
  cts = [_instantiate(c, a) for c, a in zip(cts, out_avals)]
  return [None] * len(inputs) + list(
      target.bind(*inputs, *cts, spec=spec, mask=mask))


ad.primitive_jvps[_call_p] = _call_jvp
ad.primitive_jvps[_jvp_p] = functools.partial(_linear_jvp, _jvp_p, _jvp_avals)
ad.primitive_jvps[_vjp_p] = functools.partial(_linear_jvp, _vjp_p, _vjp_avals)
ad.primitive_transposes[_jvp_p] = functools.partial(_transpose, _vjp_p)
ad.primitive_transposes[_vjp_p] = functools.partial(_transpose, _jvp_p)


def _batch(prim, args, dims, **params):
  """vmap: one torch call per batch element, in ``lax.map``."""
  batched = [i for i, d in enumerate(dims) if d is not None]
  moved = [jnp.moveaxis(x, d, 0) if d is not None else x
           for x, d in zip(args, dims)]

  def one(xs):
    full = list(moved)
    for i, x in zip(batched, xs):
      full[i] = x
    return prim.bind(*full, **params)

  outs = jax.lax.map(one, [moved[i] for i in batched])
  return outs, [0] * len(outs)


for _p in (_call_p, _jvp_p, _vjp_p):
  batching.primitive_batchers[_p] = functools.partial(_batch, _p)


# ----------------------------------------------------------------------------
# Public constructors and module helpers.
# ----------------------------------------------------------------------------


def _check_device(device) -> str | None:
  if device is None:
    return None
  if isinstance(device, (str, torch.device)):
    return str(torch.device(device))
  raise TypeError(f"device must be None, a string such as 'cuda:0' or a "
                  f"torch.device, got {device!r}.")


def _check_path(path) -> str:
  if path not in _PATHS:
    raise ValueError(f"path must be one of {_PATHS}, got {path!r}.")
  return path


def wrap(fn: Callable, *, name: str | None = None,
         symmetric_jacobian: bool = False,
         device: str | torch.device | None = None,
         path: str = "auto") -> TorchFunction:
  r"""Makes a PyTorch function callable and differentiable from JAX.

  Functions built from the supported operations (``docs/pytorch.md``) are
  translated, once per input signature, into a compiled JAX function
  (``torch.export`` to core ATen, then ``jax.numpy``/``jax.lax``): same
  inputs, same numbers, XLA speed, derivatives of any order. Anything else
  runs in torch through callbacks, described next, with a
  :class:`TorchFallbackWarning` naming what forced it;
  :meth:`TorchFunction.translation` tells which path a call takes.

  ``fn`` takes and returns pytrees (dicts, tuples, lists) of torch tensors,
  e.g. ``train_step(params, hparams, batch) -> params`` written with
  ``torch.func.functional_call`` and ``torch.func.grad``, or
  ``val_loss(params, hparams, batch) -> scalar``. The result takes the same
  pytrees of JAX arrays and returns JAX arrays, and works under ``jax.jit``,
  ``jax.vmap``, ``lax.scan`` and ``jax.checkpoint``. JAX's reverse mode
  (``jax.vjp``, ``jax.grad``) runs ``torch.func.vjp``, forward mode
  (``jax.jvp``, ``jax.linearize``) runs ``torch.func.jvp``, each on the inputs
  JAX differentiates only; second derivatives are not available.

  ``fn`` must be a pure function: same inputs, same outputs, nothing mutated
  (no dropout in training mode, no batch-norm statistics updated), because JAX
  may call it more than once or not at all. It is called once, at trace time,
  on zeros of the input shapes, to find the output shapes and dtypes.

  Args:
    fn: the torch function. Integer inputs (labels) are passed through
      and never differentiated; floating outputs must have a dtype of a
      floating input (float32 stays float32).
    name: name for error messages (default: ``fn.__qualname__``).
    symmetric_jacobian: declare that ``fn`` is a train step whose Jacobian
      ``∂Φ/∂w`` is symmetric (a plain gradient step), so the implicit methods
      may use forward-mode products.
    device: torch device to run ``fn`` on under ``jax.jit`` on the callback
      path, e.g. ``"cuda"`` for a model on the GPU (``None``: the CPU). Eager
      calls run on the device of the JAX arrays (DLPack), moved to ``device``
      if given. The JAX path runs where JAX runs.
    path: ``"auto"`` (the JAX path where possible), ``"jax"`` (the JAX path
      or a ``ValueError`` saying what prevents it) or ``"callback"``.

  Returns:
    A hashable :class:`TorchFunction`, usable as ``train_step`` or
    ``val_loss`` by every hippojax algorithm.

  Raises:
    TypeError: if ``fn`` is not callable or ``device`` is invalid; when
      called, if an input is not an array, an output is not a tensor, or an
      output changes a floating dtype.

  Examples:
    >>> import jax.numpy as jnp, torch, hippojax.torch
    >>> f = hippojax.torch.wrap(lambda x, y: {"s": (x * y).sum()})
    >>> f(jnp.ones(3), jnp.arange(3.0))["s"]
    Array(3., dtype=float32)
  """
  if isinstance(fn, TorchFunction):
    return fn
  if not callable(fn):
    raise TypeError(f"fn must be a callable torch function, got "
                    f"{type(fn).__name__}.")
  if name is None:
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
  return TorchFunction(fn, str(name), bool(symmetric_jacobian),
                       _check_device(device), _check_path(path))


def _copy_to_jax(t: torch.Tensor, what: str) -> jax.Array:
  dtype = _numpy_dtype(t.dtype, what)
  if jax.dtypes.canonicalize_dtype(dtype) != dtype:
    raise TypeError(
        f"{what} is {dtype}, which JAX cannot represent unless 64-bit mode "
        "is on: jax.config.update('jax_enable_x64', True) (or convert the "
        "module with module.float()).")
  # A copy: later in-place updates of the tensor must not show through.
  if t.device.type == "cpu":
    # Through NumPy, the array is uncommitted (like any jnp array): a
    # DLPack import is committed to its device, and then the first jitted
    # step that mixes it with uncommitted hyperparameters compiles twice.
    return jnp.asarray(t.detach().cpu().numpy().copy())
  return _to_jax(t.detach().clone())


def params_of(module: torch.nn.Module) -> dict[str, jax.Array]:
  """The parameters of a ``torch.nn.Module`` as a dict of JAX arrays.

  Keys are the names of ``module.named_parameters()`` (``"0.weight"``,
  ``"fc.bias"``, …), the keys ``torch.func.functional_call`` expects. Values
  are copies (made on the tensor's device and handed to JAX by DLPack), with
  the parameters' dtypes.

  Args:
    module: the module.

  Returns:
    ``{name: jax.Array}``.

  Raises:
    TypeError: if ``module`` is not a module, or a parameter is float64 while
      JAX's 64-bit mode is off.

  Examples:
    >>> import torch, hippojax.torch
    >>> params = hippojax.torch.params_of(torch.nn.Linear(3, 2))
    >>> sorted(params), params["weight"].shape
    (['bias', 'weight'], (2, 3))
  """
  if not isinstance(module, torch.nn.Module):
    raise TypeError(f"module must be a torch.nn.Module, got "
                    f"{type(module).__name__}.")
  return {name: _copy_to_jax(p, f"parameter {name!r}")
          for name, p in module.named_parameters()}


def load_params(module: torch.nn.Module, params: dict) -> None:
  """Writes (tuned) parameter values back into a ``torch.nn.Module``.

  Args:
    module: the module to update in place.
    params: ``{name: array}`` with names from ``module.named_parameters()``
      (a subset is fine), shapes and dtypes equal to the parameters'.

  Raises:
    TypeError: if ``params`` is not a dict or a dtype differs.
    ValueError: for an unknown name or a different shape.

  Examples:
    >>> import torch, hippojax.torch
    >>> net = torch.nn.Linear(3, 2)
    >>> params = hippojax.torch.params_of(net)
    >>> params["bias"] = params["bias"] + 1.0
    >>> hippojax.torch.load_params(net, params)
  """
  if not isinstance(module, torch.nn.Module):
    raise TypeError(f"module must be a torch.nn.Module, got "
                    f"{type(module).__name__}.")
  if not isinstance(params, dict):
    raise TypeError("params must be a dict {name: array} as returned by "
                    f"params_of, got {type(params).__name__}.")
  named = dict(module.named_parameters())
  unknown = sorted(set(params) - set(named))
  if unknown:
    raise ValueError(f"params has names that are not parameters of the "
                     f"module: {unknown}; the module has {sorted(named)}.")
  for name, value in params.items():
    p = named[name]
    shape, dtype = tuple(np.shape(value)), np.dtype(value.dtype)
    if shape != tuple(p.shape):
      raise ValueError(f"params[{name!r}] has shape {shape}, but the "
                       f"parameter has shape {tuple(p.shape)}.")
    if _torch_dtype(dtype, f"params[{name!r}]") != p.dtype:
      raise TypeError(
          f"params[{name!r}] has dtype {dtype}, but the parameter is "
          f"{p.dtype}; cast it (value.astype(...)) or convert the module "
          "(module.double() / module.float()).")
    with torch.no_grad():
      p.copy_(_to_torch(value, None))


def _check_pure(module: torch.nn.Module) -> None:
  """Refuses modules whose forward pass is not a pure function."""
  norm = getattr(torch.nn.modules.batchnorm, "_NormBase", ())
  dropout = getattr(torch.nn.modules.dropout, "_DropoutNd", ())
  for name, m in module.named_modules():
    if not m.training:
      continue
    where = f"{type(m).__name__} at {name or '<root>'!r}"
    if isinstance(m, norm) and m.track_running_stats:
      raise ValueError(
          f"{where} is in training mode, where it updates its running "
          "statistics (buffers) on every call; a function hippojax "
          "differentiates must be pure, since JAX may call it any number of "
          "times. Call module.eval() first (it then normalises with its "
          "running statistics, held fixed), or use a normalisation without "
          "running statistics (LayerNorm, GroupNorm, or "
          "track_running_stats=False, which uses the batch's statistics).")
    if isinstance(m, dropout) and m.p > 0:
      raise ValueError(
          f"{where} is in training mode, where it draws a new random mask on "
          "every call; a function hippojax differentiates must be pure, since "
          "JAX recomputes it for derivatives and the masks would differ. Call "
          "module.eval(), or pass the mask in the batch and apply it "
          "yourself.")


@dataclasses.dataclass(frozen=True)
class FunctionalModule:
  """``model(params, *args, **kwargs)``: a module applied with given weights.

  Built by :func:`functional`. Runs ``torch.func.functional_call`` with the
  module's own buffers; parameters missing from ``params`` are the module's
  current values, held fixed.

  Attributes:
    module: the ``torch.nn.Module``.
  """

  module: torch.nn.Module
  _names: frozenset = dataclasses.field(default=frozenset(), compare=False,
                                        hash=False, repr=False)

  def __post_init__(self):
    names = frozenset(n for n, _ in self.module.named_parameters())
    object.__setattr__(self, "_names", names)

  def __call__(self, params: dict, *args, **kwargs):
    _check_pure(self.module)
    if not self._names.issuperset(params):
      raise ValueError(
          f"params has names that are not parameters of the module: "
          f"{sorted(set(params) - self._names)}; the module has "
          f"{sorted(self._names)}.")
    tensors = dict(self.module.named_buffers())
    tensors.update(params)
    return torch.func.functional_call(self.module, tensors, args, kwargs)


def functional(module: torch.nn.Module) -> FunctionalModule:
  """A module as a function of its parameters: ``model(params, x)``.

  Use it inside the torch functions you :func:`wrap`. Modules whose forward
  pass is not a pure function are refused when called: batch norm in
  training mode (it updates its running statistics) and dropout in training
  mode (random masks). Put the module in evaluation mode with
  ``module.eval()``, or see the error message for alternatives.

  Args:
    module: a ``torch.nn.Module``.

  Returns:
    A hashable ``model(params, *args, **kwargs)``.

  Raises:
    TypeError: if ``module`` is not a module.

  Examples:
    >>> import torch, hippojax.torch
    >>> net = torch.nn.Linear(3, 1)
    >>> model = hippojax.torch.functional(net)
    >>> params = {k: v.detach() for k, v in net.named_parameters()}
    >>> model(params, torch.ones(2, 3)).shape
    torch.Size([2, 1])
  """
  if not isinstance(module, torch.nn.Module):
    raise TypeError(f"module must be a torch.nn.Module, got "
                    f"{type(module).__name__}.")
  return FunctionalModule(module)


@dataclasses.dataclass(frozen=True)
class _TorchGradientStep:
  """``params − η ∇_params loss(params, hparams, batch)``, in torch."""

  loss: Callable
  learning_rate: Any

  def __call__(self, params, hparams, batch):
    lr = self.learning_rate
    if callable(lr):
      lr = lr(hparams, batch)
      if not isinstance(lr, torch.Tensor) or lr.ndim != 0:
        raise ValueError("learning_rate(hparams, batch) must return a scalar "
                         f"tensor, got {lr!r:.80}.")
    grads = torch.func.grad(self.loss)(params, hparams, batch)
    return jax.tree.map(lambda w, g: w - lr * g, params, grads)


def gradient_step(loss: Callable, learning_rate: float | Callable, *,
                  device: str | torch.device | None = None,
                  path: str = "auto") -> TorchFunction:
  r"""A gradient-descent ``train_step`` from a torch training loss.

  .. math::
     \Phi(w, \lambda, b) = w - \eta(\lambda, b)\, \nabla_w L(w, \lambda, b),

  On the JAX path (see :func:`wrap`) ``loss`` and a callable
  ``learning_rate`` are translated into JAX and the gradient is
  ``jax.grad``'s; on the callback path the step is computed in torch with
  ``torch.func.grad`` and wrapped with :func:`wrap`.
  It declares a symmetric Jacobian, like :func:`hippojax.gradient_step`.
  Every hypergradient method differentiates this step, which needs second
  derivatives of ``loss``: all its operations must support double backward.

  Args:
    loss: torch ``loss(params, hparams, batch) -> scalar tensor``.
    learning_rate: a number, or a torch ``(hparams, batch) -> scalar tensor``
      to tune it with the unrolled methods.
    device: as in :func:`wrap`.
    path: as in :func:`wrap`.

  Returns:
    A hashable JAX ``train_step(params, hparams, batch) -> params``.

  Raises:
    TypeError: if ``loss`` is not callable or ``learning_rate`` is neither a
      number nor a callable.

  Examples:
    >>> import jax.numpy as jnp, hippojax.torch
    >>> loss = lambda w, lam, b: ((w - 1.0) ** 2).sum() + lam * (w**2).sum()
    >>> step = hippojax.torch.gradient_step(loss, learning_rate=0.1)
    >>> step(jnp.zeros(2), jnp.asarray(0.5), None)
    Array([0.2, 0.2], dtype=float32)
  """
  if not callable(loss):
    raise TypeError(f"loss must be callable, got {type(loss).__name__}.")
  if not callable(learning_rate) and (
      isinstance(learning_rate, bool) or
      not isinstance(learning_rate, numbers.Real)):
    raise TypeError(f"learning_rate must be a number or a callable "
                    f"(hparams, batch) -> scalar tensor, got "
                    f"{learning_rate!r}.")
  name = getattr(loss, "__qualname__", None) or type(loss).__name__
  return wrap(_TorchGradientStep(loss, learning_rate),
              name=f"gradient_step({name})", symmetric_jacobian=True,
              device=device, path=path)
