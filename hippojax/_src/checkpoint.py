"""Checkpoints of a gradient study's state with orbax-checkpoint.

One directory per chain (study, seed). Each checkpoint holds the state pytree
(raw hyperparameters, inner parameters, optimiser state, solver warm start,
PRNG key, step) and a JSON record of what produced it (method, options,
problem, search space, study identity, elapsed wall-clock and inner steps).
Saves are synchronous and finalised atomically by orbax, so a process killed
at any moment leaves the previous checkpoint intact.
"""

import logging
import os
from typing import Any

import jax

PyTree = Any


def _quiet():
  try:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)
  except ImportError:  # pragma: no cover
    pass
  logging.getLogger("orbax").setLevel(logging.ERROR)


class Checkpointer:
  """Saves and restores ``(state, meta)`` in ``directory``.

  Args:
    directory: the chain's checkpoint directory (created on first save).
    max_to_keep: checkpoints kept on disk.
  """

  def __init__(self, directory: str, max_to_keep: int = 2):
    import orbax.checkpoint as ocp
    _quiet()
    self._ocp = ocp
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=False,
            create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree, meta: dict) -> None:
    ocp = self._ocp
    self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)),
        force=True)
    self._manager.wait_until_finished()

  def restore(self, template: PyTree) -> tuple[PyTree, dict] | None:
    """The latest ``(state, meta)``, shaped like ``template``, or ``None``."""
    step = self._manager.latest_step()
    if step is None:
      return None
    ocp = self._ocp
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                      meta=ocp.args.JsonRestore()))
    # orbax returns NamedTuples as plain tuples: put the leaves back into the
    # template's structure.
    leaves = jax.tree.leaves(restored.state)
    state = jax.tree.unflatten(jax.tree.structure(template), leaves)
    return state, dict(restored.meta)

  def meta(self) -> dict | None:
    """The latest checkpoint's JSON record only, or ``None``."""
    step = self._manager.latest_step()
    if step is None:
      return None
    ocp = self._ocp
    restored = self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored.meta)

  def clear(self) -> None:
    for step in list(self._manager.all_steps()):
      self._manager.delete(step)

  def close(self) -> None:
    self._manager.close()
