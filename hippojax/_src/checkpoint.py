"""Checkpoints of a gradient chain's state: in the study's storage, or a dir.

Each checkpoint holds the state pytree (raw hyperparameters, inner
parameters, optimiser state, solver warm start, PRNG key, step) and a JSON
record of what produced it (method, options, problem, search space, study
identity, elapsed wall-clock and inner steps).

* :class:`StorageCheckpointer` (the default) keeps them in the study's own
  storage, as study system attributes, so every worker that reaches the
  database resumes the chain, whatever its machine or working directory.
* :class:`Checkpointer` keeps them in a directory with orbax-checkpoint (a
  local path, or a shared location orbax can write, for states too large for
  a database row).

Both keep the two newest checkpoints and write a new one completely before
they point at it, so a process killed at any moment leaves the previous one
intact. A checkpoint that cannot be read (a corrupted file or row) is skipped
with a warning, and the newest good one is used.
"""

import base64
import hashlib
import io
import logging
import os
from typing import Any

import jax
import numpy as np

from hippojax._src import storage as storage_lib

PyTree = Any


def _skip(where: str, step: int, e: Exception, older) -> None:
  first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
  storage_lib.logger().warning("hippojax: the checkpoint at step %d in %s cannot be read "
              "(%s: %s); %s.", step, where, type(e).__name__, first,
              f"using the one at step {older}" if older is not None else
              "starting the chain from its first step")


def _to_bytes(state: PyTree) -> bytes:
  buf = io.BytesIO()
  np.savez(buf, *[np.asarray(x) for x in jax.tree.leaves(state)])
  return buf.getvalue()


def _from_bytes(data: bytes, template: PyTree) -> PyTree:
  leaves, treedef = jax.tree.flatten(template)
  with np.load(io.BytesIO(data), allow_pickle=False) as npz:
    arrays = [npz[f"arr_{i}"] for i in range(len(npz.files))]
  if len(arrays) != len(leaves):
    raise ValueError(f"{len(arrays)} arrays, the state has {len(leaves)}")
  out = []
  for i, (a, t) in enumerate(zip(arrays, leaves)):
    t = np.asarray(t) if not hasattr(t, "dtype") else t
    if a.shape != tuple(t.shape) or a.dtype != np.dtype(t.dtype):
      raise ValueError(f"array {i} is {a.dtype}{list(a.shape)}, the state's "
                       f"is {np.dtype(t.dtype)}{list(t.shape)}")
    out.append(jax.numpy.asarray(a))
  return jax.tree.unflatten(treedef, out)


class StorageCheckpointer:
  """Saves and restores ``(state, meta)`` in a study's system attributes.

  The index ``hippojax.checkpoint.<chain>`` lists the kept checkpoints,
  newest first, each with its step, meta record, SHA-256 and number of
  chunks; the state itself (an ``.npz`` archive, base64) is split into
  chunks of at most 60,000 characters (a MySQL ``TEXT`` value holds 65,535
  bytes) under ``hippojax.checkpoint.<chain>.<step>.<i>``. The chunks are
  written before the index points at them; chunks no longer listed are
  overwritten with ``null``.

  Args:
    storage: the Optuna storage.
    study_id: the study.
    chain: the seed.
    max_to_keep: checkpoints kept.
  """

  CHUNK = 60_000

  def __init__(self, storage, study_id: int, chain: int,
               max_to_keep: int = 2):
    self.storage = storage
    self.study_id = study_id
    self.chain = chain
    self.max_to_keep = max_to_keep
    self.directory = f"the study's storage (chain {chain})"
    self._index_key = f"hippojax.checkpoint.{chain}"

  def _attrs(self) -> dict:
    return self.storage.get_study_system_attrs(self.study_id)

  def _index(self, attrs=None) -> list:
    attrs = self._attrs() if attrs is None else attrs
    index = attrs.get(self._index_key) or []
    return [e for e in index if isinstance(e, dict) and "step" in e]

  def latest_step(self) -> int | None:
    index = self._index()
    return index[0]["step"] if index else None

  def save(self, step: int, state: PyTree, meta: dict) -> None:
    data = base64.b64encode(_to_bytes(state)).decode("ascii")
    digest = hashlib.sha256(data.encode("ascii")).hexdigest()
    chunks = [data[i:i + self.CHUNK]
              for i in range(0, len(data), self.CHUNK)] or [""]
    prefix = f"{self._index_key}.{int(step)}"
    for i, chunk in enumerate(chunks):
      self.storage.set_study_system_attr(self.study_id, f"{prefix}.{i}",
                                         chunk)
    old = self._index()
    entry = {"step": int(step), "chunks": len(chunks), "sha256": digest,
             "meta": meta}
    kept = [entry] + [e for e in old if e["step"] != int(step)]
    self.storage.set_study_system_attr(self.study_id, self._index_key,
                                       kept[:self.max_to_keep])
    for e in kept[self.max_to_keep:]:
      for i in range(int(e.get("chunks", 0))):
        self.storage.set_study_system_attr(
            self.study_id, f"{self._index_key}.{e['step']}.{i}", None)

  def _load(self, entry, attrs, template):
    prefix = f"{self._index_key}.{entry['step']}"
    parts = [attrs.get(f"{prefix}.{i}") for i in range(entry["chunks"])]
    if any(not isinstance(p, str) for p in parts):
      raise ValueError("a chunk of it is missing")
    data = "".join(parts)
    if hashlib.sha256(data.encode("ascii")).hexdigest() != entry["sha256"]:
      raise ValueError("its checksum does not match")
    return _from_bytes(base64.b64decode(data, validate=True), template)

  def restore(self, template: PyTree) -> tuple[PyTree, dict] | None:
    """The newest readable ``(state, meta)``, shaped like ``template``."""
    attrs = self._attrs()
    index = self._index(attrs)
    for k, entry in enumerate(index):
      try:
        if not isinstance(entry.get("meta"), dict):
          raise ValueError("its record is not a JSON object")
        return self._load(entry, attrs, template), dict(entry["meta"])
      except Exception as e:  # pylint: disable=broad-except
        older = index[k + 1]["step"] if k + 1 < len(index) else None
        _skip(self.directory, entry["step"], e, older)
    return None

  def meta(self) -> dict | None:
    index = self._index()
    for entry in index:
      if isinstance(entry.get("meta"), dict):
        return dict(entry["meta"])
    return None

  def clear(self) -> None:
    for e in self._index():
      for i in range(int(e.get("chunks", 0))):
        self.storage.set_study_system_attr(
            self.study_id, f"{self._index_key}.{e['step']}.{i}", None)
    self.storage.set_study_system_attr(self.study_id, self._index_key, [])

  def close(self) -> None:
    pass


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
    self.directory = (directory if "://" in directory else
                      os.path.abspath(directory))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=False,
            create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree, meta: dict) -> None:
    ocp = self._ocp
    if step in self._manager.all_steps():  # an unreadable one, replaced
      self._manager.delete(step)
    self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)),
        force=True)
    self._manager.wait_until_finished()

  def _restore_step(self, step, template):
    ocp = self._ocp
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                      meta=ocp.args.JsonRestore()))
    # orbax returns NamedTuples as plain tuples: put the leaves back into the
    # template's structure.
    leaves = jax.tree.leaves(restored.state)
    state = jax.tree.unflatten(jax.tree.structure(template), leaves)
    if not isinstance(restored.meta, dict):
      raise ValueError("its record is not a JSON object")
    return state, dict(restored.meta)

  def restore(self, template: PyTree) -> tuple[PyTree, dict] | None:
    """The newest readable ``(state, meta)``, shaped like ``template``."""
    steps = sorted(self._manager.all_steps(), reverse=True)
    for k, step in enumerate(steps):
      try:
        return self._restore_step(step, template)
      except Exception as e:  # pylint: disable=broad-except
        _skip(self.directory, step, e, steps[k + 1] if k + 1 < len(steps)
              else None)
    return None

  def meta(self) -> dict | None:
    """The newest readable checkpoint's JSON record only, or ``None``."""
    ocp = self._ocp
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      except Exception:  # pylint: disable=broad-except
        continue  # restore() says which one it skips
      if isinstance(restored.meta, dict):
        return dict(restored.meta)
    return None

  def clear(self) -> None:
    for step in list(self._manager.all_steps()):
      self._manager.delete(step)

  def close(self) -> None:
    self._manager.close()
