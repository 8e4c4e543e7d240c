"""Chain ownership through the study's own storage: a lease with a heartbeat.

One process at a time runs a chain (study, seed). Which one is recorded in
the study itself, as the system attribute ``hippojax.lease.<seed>``::

    {"token": "...", "worker": "host:pid", "heartbeat": <unix time>,
     "ttl": <seconds>}

so every worker that can reach the storage, on this machine or another,
sees the same owner, whatever its working directory. The owner refreshes
``heartbeat`` from a background thread every ``ttl / 4`` seconds, and checks
that it still holds the lease before it records each trial. Another process
may take the lease over when it is free, when its heartbeat is older than
``ttl`` (the owner's machine died or lost the database), or at once when the
owner is a process of this machine that no longer runs.

Taking and renewing the lease is a compare-and-set: on a SQLAlchemy database
(SQLite, PostgreSQL, MySQL) a conditional ``UPDATE``/``INSERT`` on Optuna's
``study_system_attributes`` row, which the database makes atomic. Other
storages (journal files, in memory) have no such operation; there the lease
is written, read back after a short settling time, and re-checked before
every trial; journal files also hold a file lock beside the journal, which
the operating system releases when its process dies.
"""

import contextlib
import json
import os
import threading
import time
import uuid
from typing import Any

from hippojax._src import storage as storage_lib

DEFAULT_TTL = 60.0
_KEY = "hippojax.lease.{}"
_SETTLE = 0.25  # seconds between writing and re-reading a lease (no CAS)

ChainBusyError = storage_lib.ChainBusyError


def _key(chain: int) -> str:
  return _KEY.format(chain)


def _dumps(value) -> str:
  return json.dumps(value, sort_keys=True)


class _Attrs:
  """Compare-and-set on one study system attribute."""

  def __init__(self, storage, study_id: int):
    self.storage = storage
    self.study_id = study_id
    self._rdb = _is_rdb(storage)
    import optuna
    self._local = isinstance(storage, optuna.storages.InMemoryStorage)

  def get(self, key: str) -> Any:
    if self._rdb:
      return self._rdb_get(key)
    return self.storage.get_study_system_attrs(self.study_id).get(key)

  def cas(self, key: str, expected: Any, new: Any, settle: bool = False
          ) -> bool:
    """Sets ``key`` to ``new`` if it still holds ``expected``; atomic on RDB.

    Elsewhere ``settle`` waits and reads the value back, so that of two
    writers of the same moment only the later one goes on.
    """
    if self._rdb:
      return self._rdb_cas(key, expected, new)
    if _dumps(self.get(key)) != _dumps(expected):
      return False
    self.storage.set_study_system_attr(self.study_id, key, new)
    if settle and not self._local:
      time.sleep(_SETTLE)
    return _dumps(self.get(key)) == _dumps(new)

  # Optuna's storage API has no compare-and-set, so on a database this
  # talks SQL to Optuna's own table: one conditional statement per change.

  def _rdb_get(self, key):
    import sqlalchemy as sa
    from optuna.storages._rdb import models
    table = models.StudySystemAttributeModel.__table__
    with self.storage.engine.connect() as con:
      row = con.execute(sa.select(table.c.value_json).where(
          table.c.study_id == self.study_id, table.c.key == key)).first()
    return None if row is None else json.loads(row[0])

  def _rdb_cas(self, key, expected, new) -> bool:
    import sqlalchemy as sa
    from optuna.storages._rdb import models
    table = models.StudySystemAttributeModel.__table__
    with self.storage.engine.begin() as con:
      row = con.execute(sa.select(table.c.value_json).where(
          table.c.study_id == self.study_id, table.c.key == key)).first()
      if row is None:
        if expected is not None:
          return False
        try:
          con.execute(table.insert().values(
              study_id=self.study_id, key=key, value_json=json.dumps(new)))
        except sa.exc.IntegrityError:  # (study_id, key) is unique
          return False
        return True
      if _dumps(json.loads(row[0])) != _dumps(expected):
        return False
      done = con.execute(table.update().where(
          table.c.study_id == self.study_id, table.c.key == key,
          table.c.value_json == row[0]).values(value_json=json.dumps(new)))
      return done.rowcount == 1


def _is_rdb(storage) -> bool:
  import optuna
  return isinstance(storage, optuna.storages.RDBStorage)


def _stale(record, now: float) -> str | None:
  """Why a lease record may be taken over, or ``None`` if it is held."""
  if not record or not record.get("token"):
    return "free"
  if storage_lib.is_dead_local_worker(record.get("worker")):
    return f"its owner {record.get('worker')} no longer runs"
  age = now - float(record.get("heartbeat", 0.0))
  if age > float(record.get("ttl", DEFAULT_TTL)):
    return (f"its owner {record.get('worker')} sent no heartbeat for "
            f"{age:.0f} s")
  return None


class ChainLease:
  """The lease on one chain of a study, held while the chain runs.

  Args:
    storage: the study's Optuna storage.
    study_id: its study id.
    study_name: for messages.
    chain: the seed.
    ttl: seconds without a heartbeat after which the lease may be taken.
    lock_path: for journal files, a lock file beside the journal.
  """

  def __init__(self, storage, study_id: int, study_name: str, chain: int,
               ttl: float = DEFAULT_TTL, lock_path: str | None = None):
    self._attrs = _Attrs(storage, study_id)
    self.study_name = study_name
    self.chain = chain
    self.ttl = float(ttl)
    self._lock_path = lock_path
    self._key = _key(chain)
    self._record = None
    self._lost = None
    self._stop = threading.Event()
    self._thread = None
    self._mutex = threading.Lock()
    self._file_lock = None
    self.taken_over = None  # why the previous owner's lease was taken

  def _busy(self, record) -> ChainBusyError:
    return ChainBusyError(
        f"seed {self.chain} of study {self.study_name!r} is being run by "
        f"{record.get('worker') or 'another process'} (its lease in the "
        f"storage was renewed {time.time() - record['heartbeat']:.0f} s ago; "
        f"it expires {self.ttl:.0f} s after the last renewal). Each process "
        "runs one seed (one chain of trials); start other workers with other "
        "--seed values.")

  def acquire(self) -> None:
    """Takes the lease.

    Raises:
      ChainBusyError: if another live process holds it.
    """
    if self._lock_path is not None:
      import filelock
      self._file_lock = filelock.FileLock(self._lock_path, timeout=0)
      try:
        self._file_lock.acquire()
      except filelock.Timeout:
        self._file_lock = None
        raise self._busy(self._attrs.get(self._key) or
                         {"heartbeat": time.time()}) from None
    try:
      for _ in range(5):
        current = self._attrs.get(self._key)
        why = _stale(current, time.time())
        if why is None:
          raise self._busy(current)
        mine = {"token": uuid.uuid4().hex, "worker": storage_lib.worker_id(),
                "heartbeat": time.time(), "ttl": self.ttl}
        if self._attrs.cas(self._key, current, mine, settle=True):
          self._record = mine
          self.taken_over = None if why == "free" else why
          break
      else:
        raise self._busy(self._attrs.get(self._key) or
                         {"heartbeat": time.time()})
    except BaseException:
      self._release_file_lock()
      raise
    self._thread = threading.Thread(target=self._beat, daemon=True,
                                    name=f"hippojax-lease-{self.chain}")
    self._thread.start()

  def _renew(self, min_age: float = 0.0) -> None:
    with self._mutex:
      if self._lost or self._record is None:
        return
      if time.time() - self._record["heartbeat"] < min_age:
        return
      new = dict(self._record, heartbeat=time.time())
      try:
        ok = self._attrs.cas(self._key, self._record, new)
      except Exception:  # pylint: disable=broad-except
        return  # the storage is unreachable now; check() will say so later
      if ok:
        self._record = new
      else:
        holder = self._attrs.get(self._key) or {}
        self._lost = holder.get("worker") or "another process"

  def _beat(self) -> None:
    while not self._stop.wait(self.ttl / 4):
      self._renew()

  @property
  def lost(self) -> bool:
    """Whether another process took the lease over."""
    return bool(self._lost)

  def check(self) -> None:
    """Renews the lease; raises if it was taken over (call before writing).

    Raises:
      ChainBusyError: if another process took the lease over.
    """
    self._renew(min_age=min(1.0, self.ttl / 8))
    if self._lost:
      raise ChainBusyError(
          f"seed {self.chain} of study {self.study_name!r} was taken over by "
          f"{self._lost}: this process sent no heartbeat for more than "
          f"{self.ttl:.0f} s. It stops without recording more trials.")

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    with self._mutex:
      if self._record is not None and not self._lost:
        with contextlib.suppress(Exception):
          free = {"token": None, "worker": self._record["worker"],
                  "heartbeat": time.time(), "ttl": self.ttl}
          self._attrs.cas(self._key, self._record, free)
      self._record = None
    self._release_file_lock()

  def _release_file_lock(self) -> None:
    if self._file_lock is not None:
      self._file_lock.release()
      self._file_lock = None

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()


def journal_lock_path(storage) -> str | None:
  """The chain lock file's directory for a journal-file storage, else None."""
  from optuna.storages import journal
  if not isinstance(storage, journal.JournalStorage):
    return None
  backend = getattr(storage, "_backend", None)
  path = getattr(backend, "_file_path", None)
  return None if path is None else os.path.abspath(path)
