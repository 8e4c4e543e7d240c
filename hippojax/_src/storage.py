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

Which process runs which chain, and the gradient chains' checkpoints, are
kept in the storage too (see :mod:`hippojax._src.lease` and
:mod:`hippojax._src.checkpoint`), so workers coordinate through it alone.

``postgresql://`` URLs need a driver: ``pip install "hippojax[postgres]"``
installs psycopg 3, which SQLAlchemy 2.1 uses for the plain scheme; with
only psycopg2 installed the URL is opened with it.
"""

import contextlib
import dataclasses
import errno
import os
import re
import socket
import tempfile
import time
from typing import Any

DEFAULT_STORAGE = "sqlite:///hippojax.db"
MEMORY = ":memory:"


def logger():
  """The ``hippojax`` logger: warnings about recovered faults, on stderr.

  They must reach a user who configured no logging (a resume that skipped
  a corrupted checkpoint, a stale lock that was removed), as one plain line.
  Attach handlers to it, or set its level, to route or silence them.
  """
  import logging
  log = logging.getLogger("hippojax")
  if not log.handlers:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.propagate = False
  return log


class StorageError(RuntimeError):
  """A storage that cannot be opened or written; the message is one line."""


def first_line(e: BaseException) -> str:
  """The first line of an exception's message (its type if it has none)."""
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def _root_cause(e: BaseException) -> BaseException:
  """The innermost exception that caused ``e`` (a driver's, an OSError)."""
  seen = set()
  while id(e) not in seen:
    seen.add(id(e))
    nxt = (getattr(e, "orig", None) or e.__cause__ or
           (None if e.__suppress_context__ else e.__context__))
    if not isinstance(nxt, BaseException):
      break
    e = nxt
  return e


_FULL = (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC))
_HINTS = (
    (("disk is full", "File too large", "No space left", "Disk quota"),
     "the disk is full or a file-size limit was reached; free space (or "
     "raise the limit) and run the same command again to resume"),
    (("readonly database", "Read-only file system", "Permission denied",
      "read-only"),
     "it is read-only; make it writable or choose another storage"),
)


def _io_hint() -> str:
  """What may lie behind SQLite's bare "disk I/O error"."""
  try:
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
  except (ImportError, OSError, ValueError):  # pragma: no cover
    soft = -1
  if soft not in (-1, getattr(resource, "RLIM_INFINITY", -1)):
    return (f"a file-size limit of {soft // 1024} KB is set (ulimit -f), "
            "which is the likely cause: the disk is full or a file-size "
            "limit was reached; free space (or raise the limit) and run the "
            "same command again to resume")
  return ("check that the disk is not full and that no file-size limit is "
          "set; then run the same command again to resume")


def _is_storage_failure(e: BaseException) -> bool:
  try:
    import optuna
    import sqlalchemy
  except ImportError:  # pragma: no cover
    return isinstance(e, OSError)
  import sqlite3
  if isinstance(e, (optuna.exceptions.StorageInternalError,
                    sqlalchemy.exc.SQLAlchemyError, OSError, sqlite3.Error)):
    return True
  # Database drivers' own errors, raised where no wrapper caught them.
  return type(e).__module__.split(".")[0] in ("psycopg", "psycopg2",
                                              "pymysql", "MySQLdb")


@contextlib.contextmanager
def writing(where: str, doing: str):
  """Turns a storage or file-system failure inside into a one-line error.

  Raises:
    StorageError: ``cannot write to <where> while <doing>: <reason>; <hint>``.
  """
  try:
    yield
  except StorageError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if not _is_storage_failure(e):
      raise
    root = _root_cause(e)
    reason = first_line(root)
    if isinstance(root, OSError) and root.errno in _FULL:
      reason = f"{os.strerror(root.errno)}"
    hint = next((h for keys, h in _HINTS if any(k in reason for k in keys)),
                None)
    if hint is None and "I/O error" in reason:
      hint = _io_hint()
    raise StorageError(
        f"cannot write to {where} while {doing}: {reason}"
        + (f"; {hint}." if hint else ".")) from None


@dataclasses.dataclass
class ResolvedStorage:
  """An opened storage.

  Attributes:
    storage: the ``optuna.storages.BaseStorage``.
    url: the storage as the user gave it (normalised), for messages.
  """

  storage: Any
  url: str


def _sqlite_path(url: str) -> str | None:
  m = re.match(r"^sqlite:///(.*)$", url)
  if not m:
    return None
  path = m.group(1)
  if path.startswith("file:"):  # an SQLite URI: file:PATH?mode=ro&uri=true
    path = path[len("file:"):].split("?", 1)[0]
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
    return ResolvedStorage(url, type(url).__name__)
  if not isinstance(url, str):
    raise StorageError(f"storage must be a URL, a path, ':memory:' or an "
                       f"optuna storage, got {storage!r}.")
  if url == MEMORY:
    return ResolvedStorage(optuna.storages.InMemoryStorage(), url)
  if url.startswith("journal:"):
    path = url[len("journal:"):]
    if path.startswith("///"):
      path = path[2:]
    _check_parent(url, path)
    try:
      lock = JournalLock(path)
      _repair_torn_tail(path, lock)
      backend = journal.JournalFileBackend(path, lock_obj=lock)
      return ResolvedStorage(journal.JournalStorage(backend), url)
    except Exception as e:  # pylint: disable=broad-except
      raise StorageError(f"cannot open journal storage {url!r}: {e}") from e
  path = _sqlite_path(url)
  if path is not None:
    _check_parent(url, path)
    if os.path.exists(path) and not os.access(path, os.W_OK):
      raise StorageError(f"cannot open storage {url!r}: the file {path!r} "
                         "is read-only; make it writable or choose another "
                         "storage.")
  url = _with_driver(url)
  # Workers started together on a new SQLite file would race to create its
  # tables and stamp its schema version; a lock file beside the database
  # serialises that (and only that) across processes on this machine.
  with (_file_lock(path + ".lock", timeout=120) if path is not None
        else contextlib.nullcontext()):
    rdb = _open_rdb(url)
  if path is not None:
    _fast_sqlite(rdb)
  return ResolvedStorage(rdb, url)


_DRIVERS = {
    # scheme -> (module SQLAlchemy imports, what to install)
    "postgresql": ("psycopg", "'hippojax[postgres]' (psycopg 3)"),
    "postgresql+psycopg": ("psycopg", "'hippojax[postgres]' (psycopg 3)"),
    "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
    "mysql": ("MySQLdb", "mysqlclient (or use mysql+pymysql:// with PyMySQL)"),
    "mysql+pymysql": ("pymysql", "PyMySQL"),
}


def _importable(module: str) -> bool:
  import importlib.util
  return importlib.util.find_spec(module) is not None


def _with_driver(url: str) -> str:
  """``url`` with a driver that is installed, or a StorageError naming one.

  SQLAlchemy 2.1 opens ``postgresql://`` with psycopg 3; with only psycopg2
  installed, the URL is opened as ``postgresql+psycopg2://``.
  """
  scheme = url.split("://", 1)[0].lower()
  if scheme not in _DRIVERS:
    return url
  module, package = _DRIVERS[scheme]
  if _importable(module):
    return url
  if scheme == "postgresql" and _importable("psycopg2"):
    return "postgresql+psycopg2://" + url.split("://", 1)[1]
  raise StorageError(
      f"cannot open storage {url!r}: its driver, the Python module "
      f"{module!r}, is not installed; pip install {package}.")


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
      if isinstance(e, ModuleNotFoundError):
        raise StorageError(f"cannot open storage {url!r}: its driver, the "
                           f"Python module {e.name!r}, is not installed.") from None
      root = _root_cause(e)
      raise StorageError(f"cannot open storage {url!r}: "
                         f"{type(root).__name__}: {first_line(root)}") from None


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
    import sqlite3
    cursor = dbapi_connection.cursor()
    try:
      cursor.execute("PRAGMA journal_mode=WAL")
      cursor.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.OperationalError:
      pass  # a read-only file can still be read; writes will say why not
    cursor.close()

  sqlalchemy.event.listen(rdb.engine, "connect", pragma)
  rdb.engine.dispose()  # reconnect with the pragmas


def _check_parent(url: str, path: str) -> None:
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise StorageError(f"cannot open storage {url!r}: directory {parent!r} "
                       "does not exist.")
  try:  # access() says yes to root, even on read-only or virtual file systems
    fd, probe = tempfile.mkstemp(prefix=".hippojax-probe-", dir=parent)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise StorageError(f"cannot open storage {url!r}: directory {parent!r} "
                       f"is not writable ({first_line(e)}).") from None


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


def _journal_lock_base():
  from optuna.storages import journal
  return journal.JournalFileSymlinkLock


class JournalLock:
  """Optuna's symlink lock on a journal file, which notices stale locks.

  A process killed while it appends to the journal leaves ``<file>.lock``
  behind; Optuna's lock then makes every later writer wait its 30 s grace
  period. Appends hold the lock for milliseconds, so a lock file older than
  ``stale_after`` seconds belongs to a dead writer: it is removed, with a
  warning that says so. The lock file is Optuna's own, so processes that
  use plain Optuna on the same journal still exclude each other.

  Args:
    path: the journal file.
    stale_after: seconds after which an existing lock file is stale.
  """

  def __init__(self, path: str, stale_after: float = 5.0):
    self._inner = _journal_lock_base()(path, grace_period=None)
    self.lock_file = path + ".lock"
    self.stale_after = stale_after
    self._remove_if_stale()

  def _remove_if_stale(self) -> bool:
    try:
      age = time.time() - os.lstat(self.lock_file).st_mtime
    except OSError:
      return False
    if age <= self.stale_after:
      return False
    try:
      os.unlink(self.lock_file)
    except OSError:
      return False
    logger().warning(
        "hippojax: removed the stale journal lock %s (%.0f s old), left by a "
        "writer that was killed while appending.", self.lock_file, age)
    return True

  def acquire(self) -> bool:
    delay = 0.001
    while True:
      try:
        os.symlink(self._inner._lock_target_file, self.lock_file)  # pylint: disable=protected-access
        return True
      except FileExistsError:
        if not self._remove_if_stale():
          time.sleep(delay)
          delay = min(2 * delay, 0.1)

  def release(self) -> None:
    self._inner.release()


def _repair_torn_tail(path: str, lock: "JournalLock") -> None:
  """Cuts off a journal's last record if a failed write left it incomplete.

  A write that fails half-way (a full disk, a file-size limit) leaves a
  record without its closing newline. Optuna skips it while it is last, but
  the next append would be glued to it and make both unreadable. The torn
  record was never acknowledged to its writer, so it is cut off (under the
  journal's lock), with a warning.
  """
  try:
    size = os.path.getsize(path)
  except OSError:
    return
  if size == 0:
    return
  lock.acquire()
  try:
    with open(path, "rb+") as f:
      f.seek(-1, os.SEEK_END)
      if f.read(1) == b"\n":
        return
      f.seek(0)
      data = f.read()
      keep = data.rfind(b"\n") + 1
      f.truncate(keep)
    logger().warning(
        "hippojax: cut off an incomplete last record (%d bytes) of the "
        "journal %s, left by a write that failed.", len(data) - keep, path)
  finally:
    lock.release()
