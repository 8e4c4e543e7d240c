r"""Torch functions translated into compiled JAX functions.

A torch function of pytrees of tensors is captured by ``torch.export``
(non-strict: the Python code runs as written, on fake tensors of the input
shapes), lowered to the core ATen operator set
(``ExportedProgram.run_decompositions``), and each operator of the graph is
replaced by its ``jax.numpy``/``jax.lax`` counterpart from
:mod:`hippojax._src.torch_ops`. The result is an ordinary JAX function: XLA
compiles and fuses it with the rest of the program, and JAX differentiates it
to any order, in forward and reverse mode.

Names and numbers stay torch's: the inputs are the same pytrees (a module's
``{name: array}`` parameters), the tensors a function reads from its closure
(a module's buffers, such as batch norm's running statistics) enter as
constants, and every result is checked against the shape and dtype torch
recorded for it.

Functions outside the translated set (an operator missing from the table,
data-dependent control flow that ``torch.export`` refuses, inputs mutated in
place) keep the callback path; :class:`Translation` says which path a
function takes and why.
"""

import dataclasses
import operator
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import torch

from hippojax._src import torch_ops
from hippojax._src import torch_shim


class Translation(NamedTuple):
  """Which path a wrapped torch function takes for one input signature.

  Attributes:
    path: ``"jax"`` (translated into a compiled JAX function) or
      ``"callback"`` (torch runs through ``jax.pure_callback``).
    reason: why the callback path is taken (``""`` on the JAX path), e.g.
      ``"unsupported ops: aten.fft_r2c"``.
    ops: the ATen operators of the exported graph (sorted), or the
      unsupported ones when they forced the callback path.
  """

  path: str
  reason: str
  ops: tuple[str, ...]


def _op_name(target) -> str:
  return f"{target.namespace}.{target._overloadpacket.__name__}"  # pylint: disable=protected-access


class _Wrapper(torch.nn.Module):
  """``forward(*leaves)``: the function on the unflattened inputs, flattened.

  Inputs and outputs are flattened by JAX's pytree rules (dict keys sorted),
  so leaf ``i`` here is leaf ``i`` of the JAX call.
  """

  def __init__(self, fn: Callable, in_tree, name: str):
    super().__init__()
    self._fn = [fn]  # a list: a module here must not become a submodule
    self._in_tree, self._name = in_tree, name

  def forward(self, *leaves):
    out = self._fn[0](*jax.tree.unflatten(self._in_tree, list(leaves)))
    return tuple(torch_shim._flatten_outputs(self._name, out)[0])  # pylint: disable=protected-access


def _example(aval) -> torch.Tensor:
  return torch.zeros(aval.shape,
                     dtype=torch_shim._torch_dtype(aval.dtype, "input"))  # pylint: disable=protected-access


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


def export(fn: Callable, in_tree, in_avals, name: str):
  """``torch.export`` of ``fn`` on ``in_avals``, lowered to core ATen."""
  wrapper = _Wrapper(fn, in_tree, name)
  example = tuple(_example(a) for a in in_avals)
  with warnings.catch_warnings(), torch_shim._TORCH_LOCK:  # pylint: disable=protected-access
    warnings.simplefilter("ignore")
    program = torch.export.export(wrapper, example, strict=False)
    return program.run_decompositions()


@dataclasses.dataclass(frozen=True, eq=False)
class Program:
  """A core-ATen ``ExportedProgram`` as a JAX function of the input leaves."""

  graph: Any  # torch.fx.Graph
  inputs: tuple  # per placeholder: ("user", i) or ("const", np.ndarray)
  num_outputs: int

  @classmethod
  def from_exported(cls, ep) -> "Program":
    sig = ep.graph_signature
    kinds = torch.export.graph_signature.InputKind
    for spec in sig.output_specs:
      if spec.kind != torch.export.graph_signature.OutputKind.USER_OUTPUT:
        raise torch_ops.Unsupported(
            f"the function mutates {spec.target or 'an input'} in place")
    inputs, user = [], 0
    for spec in sig.input_specs:
      if spec.kind == kinds.USER_INPUT:
        inputs.append(("user", user))
        user += 1
        continue
      if spec.kind in (kinds.PARAMETER, kinds.BUFFER):
        value = ep.state_dict.get(spec.target)
        if value is None:
          value = ep.constants[spec.target]
      elif spec.kind == kinds.CONSTANT_TENSOR:
        value = ep.constants[spec.target]
      else:
        raise torch_ops.Unsupported(f"an input of kind {spec.kind.name}")
      inputs.append(("const", value.detach().cpu().resolve_conj().numpy()))
    return cls(ep.graph_module.graph, tuple(inputs),
               len(sig.output_specs))

  def ops(self) -> tuple[str, ...]:
    return tuple(sorted({_op_name(n.target) for n in self.graph.nodes
                         if n.op == "call_function" and
                         n.target is not operator.getitem}))

  def unsupported(self) -> tuple[str, ...]:
    missing = set()
    for node in self.graph.nodes:
      if node.op == "call_function" and node.target is not operator.getitem:
        target = node.target
        if (not isinstance(target, torch._ops.OpOverload) or  # pylint: disable=protected-access
            target.namespace != "aten" or
            target._overloadpacket.__name__ not in torch_ops.OPS):  # pylint: disable=protected-access
          missing.add(_op_name(target) if isinstance(
              target, torch._ops.OpOverload) else str(target))  # pylint: disable=protected-access
      elif node.op not in ("placeholder", "call_function", "output"):
        missing.add(f"graph node {node.op} {node.target}")
    return tuple(sorted(missing))

  def __call__(self, *leaves) -> tuple:
    env = {}
    placeholders = iter(self.inputs)
    for node in self.graph.nodes:
      if node.op == "placeholder":
        kind, value = next(placeholders)
        env[node] = leaves[value] if kind == "user" else jnp.asarray(value)
      elif node.op == "call_function":
        env[node] = _run(node, env)
      elif node.op == "output":
        outs = torch.fx.node.map_arg(node.args[0], lambda n: env[n])
        for out in outs:
          if isinstance(out, torch_ops._Unavailable):  # pylint: disable=protected-access
            raise torch_ops.Unsupported(f"output of {out.what}")
        return tuple(outs)
    raise RuntimeError("exported graph without output")  # pragma: no cover


def _check_value(x, where):
  if isinstance(x, torch_ops._Unavailable):  # pylint: disable=protected-access
    raise torch_ops.Unsupported(f"{x.what}, used by {where}")
  return x


def _conform(value, meta, where):
  """``value`` with the dtype torch recorded; its shape must be torch's."""
  if isinstance(meta, torch.Tensor):
    if value is None or isinstance(value, torch_ops._Unavailable):  # pylint: disable=protected-access
      return value
    value = jnp.asarray(value)
    dtype = torch_ops.jax_dtype(meta.dtype)
    if value.dtype != dtype:
      value = value.astype(dtype)
    if value.shape != tuple(meta.shape):
      raise torch_ops.Unsupported(
          f"{where} gave shape {value.shape}, torch {tuple(meta.shape)}")
    return value
  if isinstance(meta, (list, tuple)) and isinstance(value, (list, tuple)):
    return type(value)(_conform(v, m, where) for v, m in zip(value, meta))
  return value


# Where torch puts a tensor: meaningless for JAX, which places its own.
_PLACEMENT = frozenset(("device", "layout", "pin_memory", "memory_format",
                        "non_blocking"))


def _run(node, env):
  if node.target is operator.getitem:
    seq, index = node.args
    return env[seq][index]
  name = node.target._overloadpacket.__name__  # pylint: disable=protected-access
  where = f"aten.{name}"
  get = lambda n: _check_value(env[n], where)
  args = torch.fx.node.map_arg(node.args, get)
  kwargs = {k: v for k, v in torch.fx.node.map_arg(node.kwargs, get).items()
            if k not in _PLACEMENT}
  out = torch_ops.OPS[name](*args, **kwargs)
  return _conform(out, node.meta.get("val"), where)


def _program(fn: Callable, in_tree, in_avals, name: str):
  """``(program, "", ops)``, or ``(None, reason, ops)`` on failure.

  The program is checked by tracing it on the input shapes, where each
  result is checked against the shape torch recorded.
  """
  try:
    ep = export(fn, in_tree, in_avals, name)
  except Exception as e:  # pylint: disable=broad-except
    return None, f"torch.export failed: {_first_line(e)}", ()
  try:
    program = Program.from_exported(ep)
  except torch_ops.Unsupported as e:
    return None, str(e), ()
  missing = program.unsupported()
  if missing:
    return None, "unsupported ops: " + ", ".join(missing), missing
  try:
    jax.eval_shape(program, *in_avals)
  except torch_ops.Unsupported as e:
    return None, f"unsupported: {e}", ()
  except Exception as e:  # pylint: disable=broad-except
    # An operator whose arguments the table does not cover: torch runs it.
    return None, f"translation failed: {_first_line(e)}", ()
  return program, "", program.ops()


def _flat_fn(program, out_avals):
  def fn(*leaves):
    outs = program(*leaves)
    return [o.astype(a.dtype) for o, a in zip(outs, out_avals)]
  return fn


def _gradient_step_fn(step, spec):
  """The JAX step ``w − η ∇_w L`` from the translated torch loss ``L``."""
  first = jax.tree_util.treedef_children(spec.in_tree)
  n = first[0].num_leaves
  if not all(jnp.issubdtype(a.dtype, jnp.floating)
             for a in spec.in_avals[:n]):
    return None, "params has non-floating leaves", ()
  loss, reason, ops = _program(step.loss, spec.in_tree, spec.in_avals,
                               spec.fn.name)
  if loss is None:
    return None, reason, ops
  out = jax.eval_shape(loss, *spec.in_avals)
  if len(out) != 1 or out[0].shape != () or not jnp.issubdtype(
      out[0].dtype, jnp.floating):
    return None, "the loss does not return one floating scalar", ops
  lr, lr_program = step.learning_rate, None
  if callable(lr):
    rest_tree = jax.tree_util.treedef_tuple(first[1:])
    lr_program, reason, lr_ops = _program(lr, rest_tree, spec.in_avals[n:],
                                          f"{spec.fn.name}.learning_rate")
    if lr_program is None:
      return None, f"learning_rate: {reason}", lr_ops
    ops = tuple(sorted(set(ops) | set(lr_ops)))

  def fn(*leaves):
    params, rest = list(leaves[:n]), list(leaves[n:])
    grads = jax.grad(lambda p: loss(*p, *rest)[0])(params)
    eta = lr if lr_program is None else lr_program(*rest)[0]
    return [(w - eta * g).astype(a.dtype)
            for w, g, a in zip(params, grads, spec.out_avals)]

  return fn, "", ops


def translate(spec) -> tuple[Translation, Callable | None]:
  """The translation of one signature of a ``TorchFunction``.

  Returns ``(Translation, fn)`` where ``fn(*leaves) -> list of leaves`` is a
  jitted JAX function on the JAX path, ``None`` on the callback path.
  """
  wrapped = spec.fn.fn
  if isinstance(wrapped, torch_shim._TorchGradientStep):  # pylint: disable=protected-access
    fn, reason, ops = _gradient_step_fn(wrapped, spec)
  else:
    program, reason, ops = _program(wrapped, spec.in_tree, spec.in_avals,
                                    spec.fn.name)
    fn = None if program is None else _flat_fn(program, spec.out_avals)
  if fn is None:
    return Translation("callback", reason, tuple(ops)), None
  return Translation("jax", "", tuple(ops)), jax.jit(fn)
