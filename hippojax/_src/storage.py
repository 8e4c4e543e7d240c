"""Optuna storages for hippojax studies, and per-chain process locks.

A storage is given as

* ``None``: the SQLite file ``hippojax.db`` in the working directory;
* a SQLAlchemy URL (``sqlite:///path.db``, ``postgresql://…``, ``mysql://…``),
  opened with :class:`optuna.storages.RDBStorage`;
* ``journal:PATH``, or a path ending in ``.log``/``.journal``: a journal file
  (:class:`optuna.storages.JournalStorage` over ``JournalFileBackend``), the
  choice for many worker processes on one machine;
* a path ending in ``.db``/``.sqlite``/``.sqlite3``: that SQLite file;
* ``":memory:"``: Optuna's in-memory storage (nothing is written, nothing can
  be resumed);
* an ``optuna.storages.BaseStorage`` instance.

Gradient studies are also checkpointed to a directory: by default
``<file>.checkpoints`` next to a SQLite or journal file, and
``./hippojax-checkpoints`` for other URLs.
"""

import contextlib
import dataclasses
import errno
import os
import re
import socket
import time
from typing import Any

DEFAULT_STORAGE = "sqlite:///hippojax.db"
MEMORY = ":memory:"


class StorageError(RuntimeError):
  """A storage URL that cannot be opened (nothing was written)."""


@dataclasses.dataclass
class ResolvedStorage:
  """An opened storage.

  Attributes:
    storage: the ``optuna.storages.BaseStorage``.
    url: the storage as the user gave it (normalised), for messages.
    checkpoint_root: default checkpoint directory, or ``None`` (memory).
  """

  storage: Any
  url: str
  checkpoint_root: str | None


def _sqlite_path(url: str) -> str | None:
  m = re.match(r"^sqlite:///(.*)$", url)
  if not m:
    return None
  path = m.group(1)
  return None if path in ("", ":memory:") else path


def normalise(storage: Any) -> Any:
  """Maps ``None`` and file paths to URLs; leaves other values unchanged."""
  if storage is None:
    return DEFAULT_STORAGE
  if not isinstance(storage, (str, os.PathLike)):
    return storage
  storage = os.fspath(storage)
  if storage == MEMORY or storage.startswith("journal:") or "://" in storage:
    return storage
  lower = storage.lower()
  if lower.endswith((".log", ".journal")):
    return "journal:" + storage
  if lower.endswith((".db", ".sqlite", ".sqlite3")):
    return "sqlite:///" + storage
  raise StorageError(
      f"storage={storage!r} is neither a URL (sqlite:///file.db, "
      "postgresql://…), nor journal:PATH, nor a file path ending in .db, "
      ".sqlite, .sqlite3, .log or .journal, nor ':memory:'.")


def open_storage(storage: Any) -> ResolvedStorage:
  """Opens ``storage`` (see the module docstring).

  Raises:
    StorageError: if it cannot be opened, with the reason. A SQLite file or
      journal in a directory that does not exist is refused before anything
      is created.
  """
  import optuna
  from optuna.storages import journal

  url = normalise(storage)
  if isinstance(url, optuna.storages.BaseStorage):
    return ResolvedStorage(url, type(url).__name__, None)
  if not isinstance(url, str):
    raise StorageError(f"storage must be a URL, a path, ':memory:' or an "
                       f"optuna storage, got {storage!r}.")
  if url == MEMORY:
    return ResolvedStorage(optuna.storages.InMemoryStorage(), url, None)
  if url.startswith("journal:"):
    path = url[len("journal:"):]
    if path.startswith("///"):
      path = path[2:]
    _check_parent(url, path)
    try:
      backend = journal.JournalFileBackend(path)
      return ResolvedStorage(journal.JournalStorage(backend), url,
                             path + ".checkpoints")
    except Exception as e:  # pylint: disable=broad-except
      raise StorageError(f"cannot open journal storage {url!r}: {e}") from e
  path = _sqlite_path(url)
  if path is not None:
    _check_parent(url, path)
  # Workers started together on a new SQLite file would race to create its
  # tables and stamp its schema version; a lock file beside the database
  # serialises that (and only that) across processes on this machine.
  with (_file_lock(path + ".lock", timeout=120) if path is not None
        else contextlib.nullcontext()):
    rdb = _open_rdb(url)
  if path is not None:
    _fast_sqlite(rdb)
  root = path + ".checkpoints" if path else "hippojax-checkpoints"
  return ResolvedStorage(rdb, url, root)


def _open_rdb(url: str):
  """``optuna.storages.RDBStorage(url)``, retrying transient contention."""
  import optuna
  transient = ("already exists", "locked", "UNIQUE constraint failed")
  for attempt in range(5):
    try:
      return optuna.storages.RDBStorage(url)
    except Exception as e:  # pylint: disable=broad-except
      # A database server shared with processes that do not take the lock
      # file (or a busy SQLite file) can still collide on creation; the loser
      # finds the schema there on the next attempt.
      if attempt < 4 and any(t in str(e) for t in transient):
        time.sleep(0.05 * (attempt + 1))
        continue
      raise StorageError(f"cannot open storage {url!r}: "
                         f"{type(e).__name__}: {_first_line(e)}") from e


def _file_lock(path: str, timeout: float):
  """A cross-platform inter-process lock on ``path`` (created if missing)."""
  import filelock
  return filelock.FileLock(path, timeout=timeout)


def _fast_sqlite(rdb) -> None:
  """Write-ahead logging with ``synchronous=NORMAL`` for SQLite files.

  Optuna commits once per suggested parameter; with SQLite's default
  rollback journal each commit waits for the disk (about 10 ms here), which
  would make a 30-parameter black-box trial cost a third of a second in
  storage alone. In WAL mode commits are appended to the log without
  waiting for the disk; they survive a killed process (only a power loss
  could drop the last ones) and readers no longer block the writer, which
  also helps several worker processes on one file.
  """
  import sqlalchemy

  def pragma(dbapi_connection, record):
    del record
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()

  sqlalchemy.event.listen(rdb.engine, "connect", pragma)
  rdb.engine.dispose()  # reconnect with the pragmas


def _first_line(e: Exception) -> str:
  return str(e).strip().splitlines()[0] if str(e).strip() else repr(e)


def _check_parent(url: str, path: str) -> None:
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise StorageError(f"cannot open storage {url!r}: directory {parent!r} "
                       "does not exist.")
  if not os.access(parent, os.W_OK):
    raise StorageError(f"cannot open storage {url!r}: directory {parent!r} "
                       "is not writable.")


def safe_name(name: str) -> str:
  """A file-system-safe version of a study name."""
  return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "study"


def worker_id() -> str:
  """``host:pid`` of this process, recorded on black-box trials."""
  return f"{socket.gethostname()}:{os.getpid()}"


def is_dead_local_worker(worker: Any) -> bool:
  """Whether ``worker`` names a process on this host that no longer runs."""
  if not isinstance(worker, str) or ":" not in worker:
    return False
  host, _, pid = worker.rpartition(":")
  if host != socket.gethostname() or not pid.isdigit():
    return False
  try:
    os.kill(int(pid), 0)
  except OSError as e:
    return e.errno == errno.ESRCH
  return False


class ChainBusyError(RuntimeError):
  """Another process is running the same chain of the same study."""


@contextlib.contextmanager
def chain_lock(directory: str | None, study_name: str, chain: int):
  """Holds an exclusive lock on one chain (seed) of a study, if on disk.

  Raises:
    ChainBusyError: if another process holds it.
  """
  if directory is None:
    yield
    return
  import filelock
  os.makedirs(directory, exist_ok=True)
  lock = _file_lock(os.path.join(directory, f"chain-{chain}.lock"), timeout=0)
  owner = os.path.join(directory, f"chain-{chain}.owner")
  try:
    lock.acquire()
  except filelock.Timeout:
    try:
      with open(owner) as f:
        holder = f.read().strip()
    except OSError:
      holder = ""
    raise ChainBusyError(
        f"seed {chain} of study {study_name!r} is being run by "
        f"{holder or 'another process'}. Each process runs one seed (one "
        "chain of trials); start other workers with other --seed "
        "values.") from None
  try:
    with open(owner, "w") as f:
      f.write(worker_id())
    yield
  finally:
    lock.release()
