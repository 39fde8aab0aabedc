"""The outbox: a durable, ordered queue of records waiting for the broker (SQLite, WAL).

Every metrics and results record is written here *before* it is sent, gets its
``seq`` here, and is deleted only when the broker has acknowledged it, so:

* ``seq`` grows by 1 per record of a stream and survives restarts; ``epoch`` is a
  random id made when the outbox file is created, so a device whose state was
  wiped starts a new epoch and receivers can tell;
* once ``put``/``put_many`` returns, the record survives ``kill -9`` of the
  process: the transaction is in the WAL file (``synchronous=NORMAL``). An OS
  crash or power cut can lose the transactions since the last WAL sync — the
  price of not paying an fsync per record on an SD card;
* a size bound evicts the oldest records first and counts them; every metrics
  record carries the total evicted since the epoch began (``outbox.evicted``),
  so a gap in ``seq`` is never silent, even if the record that would have
  reported it was itself evicted.

Writes are the hot path: ``put_many`` commits a batch in one transaction.

A write that fails changes nothing: its transaction is rolled back (SQLite has
already done so itself after ``SQLITE_FULL``, ``SQLITE_IOERR`` and
``SQLITE_NOMEM``), the records already queued stay and ``len()`` stays exact.
When the storage is the cause (the disk full, an I/O error, the write lock held
by another process), :class:`SyncError` says so in one line, with the
``sqlite3`` error as its cause; any other error (a bug) is raised as it is.

An existing database that is not an outbox (other tables, or tables of our names with other
columns) is refused before anything is written to it (``ConfigError``, "... is not an edgerun
outbox: ..."), and left byte for byte as it was; a missing or empty file becomes a new outbox,
its tables and epoch made in one transaction. A file SQLite finds damaged (not a database,
corrupt) is refused too, unless the caller asks for it to be set aside (``set_aside_damaged``,
as the daemon and ``run``/``predict --mqtt`` do): renamed, never deleted, and a new outbox
started. :func:`read_stats` reads an outbox without writing
or creating any file, so it works on a full or read-only filesystem and beside a running writer.

Deleting acknowledged records works on a full disk, where an outbox filled it while the broker was
down. SQLite writes a deletion to the WAL before anything is freed (freed pages stay in the file,
for later records), and opens a WAL database through a 32 KiB ``-shm`` index, so a full disk
refused both. Three things keep them possible:

* the WAL never takes the last free space: after every write, a WAL larger than half the space
  left is checkpointed (``PASSIVE``), so the next transaction writes it over from its start
  rather than growing it (SQLite's own checkpoint waits for 4 MiB, a whole small disk), and
  ``journal_size_limit`` cuts it back to 4 MiB after a large transaction;
* a reserve, ``<outbox>-reserve`` (``RESERVE_BYTES`` of allocated zeros), is freed where the disk
  is too full to delete or to open the outbox, and made again as soon as there is room (records
  are not queued into it: deleting the delivered ones is what makes room for new ones);
* a deletion the disk refuses is retried after a checkpoint, then after freeing the reserve, then
  in transactions of ``_CHUNK`` records, each checkpointed, so the WAL needs only a few pages.

Acknowledged records whose deletion a full disk still refuses (an outbox made before the reserve,
a reserve too small) are *held*, and ``ack`` does not raise: ``len()`` and ``pending()`` leave them
out, so this process neither counts them as undelivered nor sends them again, and deleting them is
tried again at the next ``ack`` and ``put`` and at ``close``, which says in one WARNING line how
many stay in the file, to be sent again after the next start (at least once: receivers drop the
duplicates). Another failure of a deletion (an I/O error, the write lock held by another process)
raises ``SyncError`` as any write does, the records left queued for the caller to acknowledge again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from edgerun.errors import ConfigError, SyncError
from edgerun.files import set_aside

log = logging.getLogger(__name__)

__all__ = ["RESERVE_BYTES", "Outbox", "OutboxStats", "Pending", "read_stats"]

#: Bytes of the reserve beside an outbox (``<outbox>-reserve``), freed to delete acknowledged records
#: on a full disk: room for the ``-shm`` index of a reopened outbox (32 KiB) and some WAL pages.
RESERVE_BYTES = 64 * 1024
_WAL_LIMIT = 4 * 1024 * 1024  # journal_size_limit: the WAL is cut back to this when it starts over
_CHUNK = 16  # records a transaction in the last try at deleting on a full disk: a few WAL pages each
_PAGE = 4096
_ROOMY = 64 * 1024 * 1024  # free bytes that no WAL (4 MiB, SQLite's checkpoint) comes near: looked at once a second
_RETRY_S = 5.0  # after a failed deletion, acknowledgements are only held this long (a held write lock waits 5 s)

_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)


def _id_chunks(ids: list[int]) -> Iterator[tuple[list[int], str]]:
    """``ids`` in chunks of 500, each with its ``?,?,...`` marks for ``IN (...)``: SQLite's bound-parameter
    limit is 999 on old builds."""
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        yield chunk, ",".join("?" * len(chunk))


# Compact JSON, 0.3 us for a results record against 3.7 us for ``json.dumps``; the
# bytes differ only where JSON allows (``4e-6`` for ``4e-06``, UTF-8 rather than
# ``\u`` escapes, and ``null`` for a NaN, which ``json.dumps`` would write as invalid JSON).
_encode = msgspec.json.encode

_TABLES = {  # each table of an outbox and its statement; nothing else may be in the file
    "meta": "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "seqs": "CREATE TABLE IF NOT EXISTS seqs (stream TEXT PRIMARY KEY, last INTEGER NOT NULL)",
    "records": """CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    qos INTEGER NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
)""",
}
_COLUMNS = {
    "meta": ["key", "value"],
    "seqs": ["stream", "last"],
    "records": ["id", "stream", "seq", "topic", "qos", "payload", "created"],
}


# What a failed write means: SQLite's primary result code (the low byte of an extended one), the
# message SQLite gives for it (matched where Python, before 3.11, gives no code), and our words.
# SQLITE_NOMEM is not here: Python raises MemoryError for it.
_REASONS = (
    (13, "database or disk is full", "the disk is full"),  # SQLITE_FULL
    (10, "disk I/O error", "an I/O error on its storage"),  # SQLITE_IOERR
    (5, "database is locked", "another connection holds its write lock"),  # SQLITE_BUSY
    (8, "readonly database", "it is read-only"),  # SQLITE_READONLY
    (11, "malformed", "its file is corrupt"),  # SQLITE_CORRUPT
)


def _reason(exc: sqlite3.Error) -> str | None:
    """Why a write failed, in words; None when the storage is not the cause (a bug)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    for primary, message, words in _REASONS:
        if (code & 0xFF == primary) if isinstance(code, int) else (message in str(exc)):
            return words
    return None


#: SQLite's primary result codes for a file damaged: SQLITE_CORRUPT, SQLITE_NOTADB. Not a full or
#: read-only disk, an I/O error or a lock held: those are refused, the file left where it is.
_DAMAGE = ((11, "malformed"), (26, "file is not a database"))


def _damaged(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file is damaged (its code; its message before Python 3.11)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return any(
        (code & 0xFF == primary) if isinstance(code, int) else (message in str(exc)) for primary, message in _DAMAGE
    )


def _full(folder: Path) -> bool:
    """Whether the filesystem of ``folder`` has no room left for this user (less than a page or two)."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < 2 * max(stat.f_bsize, 4096)


def _check_outbox(db: sqlite3.Connection, path: Path) -> list[str]:
    """The outbox tables ``db`` already has (none for a new file); ``ConfigError`` where the file
    is another program's database: a table or view not ours, or one of our names with other columns."""
    names = [
        str(row[0])
        for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite!_%' ESCAPE '!'"
        )
    ]
    foreign = sorted(name for name in names if name not in _COLUMNS)
    if foreign:
        raise ConfigError(f"{path} is not an edgerun outbox: it holds the table(s) {', '.join(foreign)}")
    for name in names:
        columns = [str(row[1]) for row in db.execute(f"PRAGMA table_info({name})")]
        if columns != _COLUMNS[name]:
            raise ConfigError(
                f"{path} is not an edgerun outbox: its table {name} has the column(s) {', '.join(columns)}, "
                f"not {', '.join(_COLUMNS[name])}"
            )
    return names


def _uri(path: Path, query: str) -> str:
    return f"file:{urllib.parse.quote(str(path.absolute()))}?{query}"


@contextlib.contextmanager
def _reading(path: Path, *, copy: bool = True) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the database at ``path`` that creates no file and writes nothing.

    SQLite reads a WAL-mode database through its ``-wal`` file and an index of it, the ``-shm``
    file; a read-only connection (``mode=ro``) still creates both where they are missing (and
    cannot where the folder is read-only or the disk full). So: with no WAL, or an empty one, the
    main file holds everything and is read as ``immutable`` (no locks, no other file); with a WAL
    and its index (a writer running, or one killed), ``mode=ro`` reads through them, beside the
    writer; with a WAL and no index (rare: a writer killed while closing) a private copy of both
    files in a temporary folder is read (:func:`_copy`), or, without ``copy`` (a writer about to
    open it, which makes the index anyway), it is read through ``mode=ro``, which makes the index.

    Raises:
        sqlite3.Error: SQLite could not read it (not a database, corrupt).
        OSError: a file of it could not be read, or the copy could not be made (said in ``strerror``).
    """
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    with contextlib.ExitStack() as stack:
        if not (wal.is_file() and wal.stat().st_size > 0):
            db = sqlite3.connect(_uri(path, "mode=ro&immutable=1"), uri=True, isolation_level=None)
        elif shm.is_file() or not copy:
            db = sqlite3.connect(_uri(path, "mode=ro"), uri=True, isolation_level=None)
        else:
            db = sqlite3.connect(_copy(path, wal, stack) / "outbox.sqlite", isolation_level=None)
        stack.callback(db.close)
        yield db


_WRITING_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})  # never a read's


def _copy(path: Path, wal: Path, stack: contextlib.ExitStack) -> Path:
    """A new temporary folder holding a copy of the outbox ``path`` and its ``wal``, removed (with
    whatever part of the copy was made) when ``stack`` closes.

    The folder is made where Python makes them (:func:`tempfile.gettempdir`): in ``TMPDIR`` where a
    file can be created there, else in the first of ``/tmp``, ``/var/tmp``, ``/usr/tmp`` and the
    current folder where one can. The copy can still fail there: too little room for it (a small
    RAM-backed ``/tmp``), or no such folder at all.

    Raises:
        OSError: ``path`` or ``wal`` could not be opened (as it is), or the copy could not be made:
            ``strerror`` then says so, in which folder, why, and the room the copy needs (the
            outbox's own storage is not the cause, and the message must not suggest it is).
    """
    size = path.stat().st_size + wal.stat().st_size
    folder: Path | None = None
    try:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgerun-outbox-")))
        shutil.copyfile(path, folder / "outbox.sqlite")
        shutil.copyfile(wal, folder / "outbox.sqlite-wal")
    except OSError as exc:
        # The copy's fault where the folder could not be made, where only writing causes the error (a full or
        # read-only disk), or where the error names a file of the copy. Anything else is reading the outbox:
        # shutil names the source in ``filename`` (and the copy in ``filename2``) when it gets that far, and
        # names nothing when its plain read-and-write loop fails, as it does for an SD card's read error.
        named = [Path(name) for name in (exc.filename, exc.filename2) if name is not None]
        copy_failed = (
            folder is None
            or exc.errno in _WRITING_ERRORS
            or any(name.parent == folder for name in named if name not in (path, wal))
        )
        if not copy_failed:
            raise  # the outbox itself could not be read, copy or not
        if folder is not None:
            where = f" in {folder.parent}"
        elif exc.filename is not None:  # mkdtemp, in the folder tempfile chose
            where = f" in {Path(exc.filename).parent}"
        else:  # tempfile found no usable folder: its message names those it tried
            where = ""
        raise OSError(
            exc.errno,
            f"it has a WAL and no -shm index, so it is read from a copy, which could not be made{where}: "
            f"{exc.strerror or exc} (the copy needs {size} bytes: point TMPDIR at a writable folder with room for it)",
        ) from exc
    return folder


def _cause(path: Path, exc: BaseException) -> str:
    """Why reading ``path`` failed: in words where the storage is the cause, and the error itself."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    words = _reason(exc) if isinstance(exc, sqlite3.Error) else None
    if words in ("it is read-only", "an I/O error on its storage") or "unable to open" in str(exc):  # not content
        try:
            if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
                words = "read-only file system"
            elif words is not None and _full(path.parent):
                words = "the disk is full"
        except OSError:
            pass
    return f"{words} ({exc})" if words else str(exc)


def read_stats(path: str | os.PathLike[str]) -> OutboxStats:
    """What is queued in the outbox at ``path``, read without writing or creating any file.

    For ``edgerun outbox``: it works on a full or read-only filesystem and while a writer (the
    daemon, a run) has the outbox open, and shows what that writer has committed.

    Raises:
        ConfigError: no outbox there (missing, empty, another program's database), or it
            cannot be read (the cause in words, and SQLite's own message).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no outbox at {path} (nothing was ever queued there)")
    if path.is_file() and path.stat().st_size == 0:
        raise ConfigError(f"{path} is an empty file, not an outbox")
    try:
        with _reading(path) as db:
            missing = sorted(set(_COLUMNS) - set(_check_outbox(db, path)))
            if missing:
                raise ConfigError(f"{path} is not an edgerun outbox: it has no table(s) {', '.join(missing)}")
            return _stats(db, path)
    except (sqlite3.Error, OSError) as exc:
        raise ConfigError(f"cannot read the outbox {path}: {_cause(path, exc)}") from exc


def _stats(db: sqlite3.Connection, path: Path) -> OutboxStats:
    """The stats of the outbox ``db`` (the caller holds its lock, if any)."""
    meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('epoch', 'evicted', 'refused')").fetchall())
    streams = {
        row[0]: {"records": row[1], "bytes": row[2] or 0, "first_seq": row[3], "last_seq": row[4]}
        for row in db.execute(
            "SELECT stream, count(*), sum(length(payload)), min(seq), max(seq) FROM records GROUP BY stream"
        )
    }
    oldest = db.execute("SELECT min(created) FROM records").fetchone()[0]
    return OutboxStats(
        epoch=str(meta.get("epoch", "")),
        records=sum(s["records"] for s in streams.values()),
        bytes=sum(s["bytes"] for s in streams.values()),
        oldest_age_s=None if oldest is None else max(0.0, time.time() - oldest),
        evicted=int(meta.get("evicted") or 0),
        refused=int(meta.get("refused") or 0),
        streams=streams,
        path=str(path),
    )


@dataclass(frozen=True)
class Pending:
    """A record waiting to be sent."""

    id: int
    stream: str
    seq: int
    topic: str
    qos: int
    payload: bytes


@dataclass(frozen=True)
class OutboxStats:
    """What is queued: records and bytes per stream, the oldest record's age, evictions and refusals so far."""

    epoch: str
    records: int
    bytes: int
    oldest_age_s: float | None
    evicted: int
    refused: int
    streams: dict[str, dict[str, int]]
    path: str


class Outbox:
    """A durable FIFO of MQTT records; thread-safe (one connection behind a lock)."""

    def __init__(
        self, path: str | os.PathLike[str], *, max_bytes: int = 64 * 1024 * 1024, set_aside_damaged: bool = False
    ) -> None:
        """Open the outbox at ``path``, creating it (and its folder) where there is none.

        With ``set_aside_damaged`` (the ``SyncService`` of the daemon and of ``run``/``predict
        --mqtt``), a file SQLite finds damaged (not a database, or corrupt: a failing SD card, a
        power cut, an edit by hand) is renamed aside with its ``-wal`` and ``-shm`` files
        (``edgerun.files.set_aside``), said in one ERROR line, and a new, empty outbox (a new epoch) is
        started, so a device keeps serving; its records are not delivered, and not deleted either.

        Raises:
            ConfigError: the bound is below 4096 bytes; the file is another program's database;
                it cannot be opened or written (a full or read-only disk, the write lock held);
                it is damaged and ``set_aside_damaged`` is off, or it could not be set aside.
        """
        if max_bytes < 4096:
            raise ConfigError(f"outbox size bound must be at least 4096 bytes, got {max_bytes}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._wal = Path(f"{self.path}-wal")
        self._reserve = Path(f"{self.path}-reserve")
        self._reserve_bytes = 0  # the reserve's size, as last made or found
        self._reserve_freed = False  # said once, until the reserve is whole again
        self._held: set[int] = set()  # acknowledged, their deletion not yet written: not counted, not sent
        self._held_refused = 0  # how many of them the broker refused (counted in the file with their deletion)
        self._held_said: str | None = None  # why deleting them failed, as said, until a deletion succeeds
        self._retry_at = 0.0  # time.monotonic() from which a deletion the disk refused is tried again
        self._roomy_until = 0.0  # time.monotonic() until which the disk is taken to have plenty of room
        try:
            self._open_making_room()
        except sqlite3.DatabaseError as exc:
            if not (set_aside_damaged and _damaged(exc)):
                raise self._unusable(exc) from exc
            try:
                aside = set_aside(self.path, ("-wal", "-shm"))
            except OSError as err:
                raise ConfigError(
                    f"outbox {self.path} is unusable: {self._words(exc)}; it could not be set aside: "
                    f"{err.strerror or err}"
                ) from exc
            log.error(
                "outbox %s is damaged (%s): set aside as %s; the records queued in it will not be delivered; "
                "a new, empty outbox is started",
                self.path,
                exc,
                ", ".join(moved.name for moved in aside),
            )
            try:
                self._open_making_room()
            except sqlite3.DatabaseError as again:
                raise self._unusable(again) from again
        self._lock = threading.Lock()
        with contextlib.suppress(OSError):
            self._reserve_bytes = os.lstat(self._reserve).st_size
        self._maintain()

    def _open_making_room(self) -> None:
        """``_open``; where the disk is too full for SQLite to open the outbox (its ``-shm`` index, its
        WAL) and a reserve is there, the reserve is freed and the outbox opened again: an outbox that
        filled its disk is opened to be drained."""
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            if not (self._disk_full(exc) and self._free_reserve()):
                raise
            self._open()

    def _open(self) -> None:
        """Open (or create) the database: ``sqlite3.DatabaseError`` where SQLite refuses it, with no
        connection left open (so the file can be set aside); ``ConfigError`` for another program's
        database, or a folder or file that cannot be made."""
        db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_file() and self.path.stat().st_size > 0:
                with _reading(self.path, copy=False) as db:  # refused before another program's database changes
                    _check_outbox(db, self.path)
            self._db = db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
            with self._db:  # commits, or rolls back what SQLite has not already rolled back
                self._db.execute("BEGIN IMMEDIATE")
                tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if not tables.issuperset(_TABLES):  # a new file: its tables and epoch in one transaction
                    for statement in _TABLES.values():
                        self._db.execute(statement)
                if self._meta("epoch") is None:
                    self._set_meta("epoch", secrets.token_hex(8))
                    self._set_meta("bytes", "0")
                    self._set_meta("evicted", "0")
                self._db.execute("COMMIT")
            self.epoch: str = self._meta("epoch") or ""
            self._count = self._count_rows()
        except BaseException as exc:
            if db is not None:
                db.close()
            if isinstance(exc, OSError):
                raise ConfigError(f"cannot create the outbox in {self.path.parent}: {exc.strerror}") from exc
            raise

    def _words(self, exc: sqlite3.DatabaseError) -> str:
        """Why SQLite refused the file, in words where the storage is the cause, and its own message."""
        words = _reason(exc)
        if words == "an I/O error on its storage" and _full(self.path.parent):
            words = "the disk is full"  # SQLite says I/O error when it cannot create its WAL file on a full disk
        return f"{words} ({exc})" if words else str(exc)

    def _unusable(self, exc: sqlite3.DatabaseError) -> ConfigError:
        return ConfigError(f"outbox {self.path} is unusable: {self._words(exc)}")

    # -- meta ----------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = ?", (key, value, value)
        )

    # -- writing -------------------------------------------------------------
    def put(self, stream: str, topic: str, record: dict[str, Any], qos: int = 1) -> int:
        """Store one record; returns its ``seq``. Durable against ``kill -9`` on return."""
        return self.put_many([(stream, topic, record, qos)])[0]

    def put_many(
        self,
        items: Sequence[tuple[str, str, dict[str, Any], int]],
        fill: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[int]:
        """Store records in one transaction, giving each ``seq`` (per stream) and ``epoch``.

        ``fill`` may complete a record inside the transaction (metrics records take
        the eviction count there, so it is reported exactly once).

        Raises:
            SyncError: the write failed (disk full, I/O error, write lock held
                elsewhere); none of ``items`` was stored, the records already queued stay.
        """
        now = time.time()
        seqs = []
        added = evicted = 0  # applied to the count once the transaction is committed
        with self._lock:
            if self._held and time.monotonic() >= self._retry_at:  # first: deleting them makes room
                self._delete_held()
            with self._maintained(), self._transaction("queue records in"):
                total = int(self._meta("bytes") or 0)
                last: dict[str, int] = {}  # each stream's seq, read once per batch, written once at the end
                for stream, topic, record, qos in items:
                    if stream not in last:
                        row = self._db.execute("SELECT last FROM seqs WHERE stream = ?", (stream,)).fetchone()
                        last[stream] = row[0] if row else 0
                    seq = last[stream] = last[stream] + 1
                    record["seq"] = seq
                    record["epoch"] = self.epoch
                    payload = _encode(record)
                    # Make room first, so a record reports the evictions made for it too.
                    room = len(payload) + (64 if fill is not None else 0)
                    total, gone = self._evict(total + room)
                    total -= room
                    evicted += gone
                    if fill is not None:
                        fill(record)
                        payload = _encode(record)
                    self._db.execute(
                        "INSERT INTO records(stream, seq, topic, qos, payload, created) VALUES(?,?,?,?,?,?)",
                        (stream, seq, topic, qos, payload, now),
                    )
                    total += len(payload)
                    seqs.append(seq)
                    added += 1
                self._db.executemany(
                    "INSERT INTO seqs(stream, last) VALUES(?, ?) "
                    "ON CONFLICT(stream) DO UPDATE SET last = excluded.last",
                    list(last.items()),
                )
                self._set_meta("bytes", str(total))
            self._count += added - evicted
            if evicted and self._held:  # a held record evicted is gone from the file: no longer held
                self._held &= self._present(self._held)
        return seqs

    def _evict(self, total: int) -> tuple[int, int]:
        """Delete the oldest records until ``total`` bytes fit the bound; count them.

        Returns the bytes left and the records deleted (inside the caller's transaction). Costs
        what it deletes: only those rows are read, and they go in one ranged ``DELETE``.
        """
        if total <= self.max_bytes:
            return total, 0
        evicted, last = 0, None
        # Read the oldest rows only as far as needed (the cursor steps one row at a time; a
        # ``fetchall`` read the whole outbox, ~0.4 s at 64 MiB), then delete them in one statement:
        # the scan starts at the smallest id, and the caller's write transaction keeps every other
        # writer (another process too) out until it commits, so ``id <= last`` is exactly those rows.
        rows = self._db.execute("SELECT id, length(payload) FROM records ORDER BY id")
        try:
            for rid, size in rows:
                if total <= self.max_bytes * 0.9:  # leave headroom, so eviction is not per record
                    break
                total -= size
                evicted += 1
                last = rid
        finally:
            rows.close()
        if last is not None:
            self._db.execute("DELETE FROM records WHERE id <= ?", (last,))
        self._set_meta("evicted", str(int(self._meta("evicted") or 0) + evicted))
        return total, evicted

    def evicted_total(self) -> int:
        """Records evicted since the epoch began (cumulative, so a lost report loses nothing).

        Safe inside ``put_many``'s ``fill``, which runs under the outbox's lock.
        """
        return int(self._meta("evicted") or 0)

    def refused_total(self) -> int:
        """Records the broker refused since the epoch began (``ack``'s ``refused``; cumulative too).

        Safe inside ``put_many``'s ``fill``, which runs under the outbox's lock. Refusals whose
        deletion is held (``ack``) are counted already.
        """
        return int(self._meta("refused") or 0) + self._held_refused

    # -- reading and acknowledging ------------------------------------------
    def pending(self, after_id: int = 0, limit: int = 500) -> list[Pending]:
        """The oldest records with ``id > after_id``, in order (the acknowledged ones held left out)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, stream, seq, topic, qos, payload FROM records WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit + len(self._held)),
            ).fetchall()
            held = set(self._held)
        return [Pending(r[0], r[1], r[2], r[3], r[4], bytes(r[5])) for r in rows if r[0] not in held][:limit]

    def ack(self, ids: Iterable[int], refused: int = 0) -> None:
        """Delete acknowledged records (in one transaction); ``refused`` of them the broker refused
        (an ACL, in an MQTT 5 PUBACK), counted as ``refused_total`` so their ``seq`` gaps are told.

        On a full disk the deletion is made to fit (a checkpoint, the reserve freed, smaller
        transactions: see the module's docstring); where it still does not, the records are held,
        not raised about: left out of ``len()`` and ``pending()`` (neither counted as queued nor sent
        again by this process), said in one WARNING line per distinct reason, and deleted by a later
        ``ack`` (with no ``ids``, only that is tried), ``put`` or ``close``. For ``_RETRY_S`` seconds
        after such a failure, acknowledged records are only held.

        Raises:
            SyncError: the deletion failed for another cause (an I/O error, the write lock held
                elsewhere); the records of this call stay queued, to be acknowledged again.
        """
        ids = list(ids)
        with self._lock:
            if not ids and not self._held:
                return
            earlier = set(self._held)
            self._held.update(ids)
            self._held_refused += refused
            if time.monotonic() < self._retry_at:  # the disk refused a deletion moments ago
                self._held = self._present(self._held)
                return
            failure = self._delete_held()
            if failure is None or self._disk_full(failure.__cause__):
                return
            self._held &= earlier  # not the disk's room: this call's records stay queued, as the caller has them
            self._held_refused -= refused
            raise failure

    def _delete_held(self) -> SyncError | None:
        """Delete the held records (under the lock), making room on a full disk; the failure where it
        could not, with the records still in the file held (said once per reason where the disk is full)."""
        ids = sorted(self._held)
        failure: SyncError | None = None
        # A full disk: a checkpoint lets the WAL start over in the space it has; the reserve gives it more.
        for remedy in (None, self._checkpoint, self._free_reserve_and_checkpoint):
            if remedy is not None:
                remedy()
            try:
                self._delete(ids)
            except SyncError as exc:
                failure = exc
                if not self._disk_full(exc.__cause__):
                    break
                continue
            self._deleted()
            return None
        if failure is not None and self._disk_full(failure.__cause__):
            # Smaller transactions, each checkpointed: the WAL needs room for a few pages only.
            for start in range(0, len(ids), _CHUNK):
                try:
                    self._delete(ids[start : start + _CHUNK])
                except SyncError as exc:
                    failure = exc
                    break
                self._checkpoint()
            else:
                self._deleted()
                return None
        self._held = self._present(self._held)
        if failure is not None and self._disk_full(failure.__cause__):
            self._retry_at = time.monotonic() + _RETRY_S
            if self._held and str(failure) != self._held_said:
                self._held_said = str(failure)
                log.warning(
                    "outbox %s: %s; %d record(s) the broker acknowledged are held: not sent again, and deleted "
                    "once there is room",
                    self.path,
                    failure,
                    len(self._held),
                )
        return failure

    def _deleted(self) -> None:
        """After every held record was deleted (under the lock)."""
        if self._held_said is not None:
            log.info("outbox %s: acknowledged records are deleted again", self.path)
            self._held_said = None
        self._maintain()

    def _delete(self, ids: list[int]) -> None:
        """Delete the records ``ids`` in one transaction, with the held refusals counted (under the lock);
        on success they are held no more."""
        deleted = 0  # applied to the count once the transaction is committed
        with self._transaction("delete acknowledged records from"):
            removed = 0
            for chunk, marks in _id_chunks(ids):
                if _RETURNING:
                    sizes = self._db.execute(
                        f"DELETE FROM records WHERE id IN ({marks}) RETURNING length(payload)", chunk
                    ).fetchall()
                else:
                    sizes = self._db.execute(
                        f"SELECT length(payload) FROM records WHERE id IN ({marks})", chunk
                    ).fetchall()
                    self._db.execute(f"DELETE FROM records WHERE id IN ({marks})", chunk)
                removed += sum(size for (size,) in sizes)
                deleted += len(sizes)
            self._set_meta("bytes", str(max(0, int(self._meta("bytes") or 0) - removed)))
            if self._held_refused:
                self._set_meta("refused", str(int(self._meta("refused") or 0) + self._held_refused))
        self._count -= deleted
        self._held_refused = 0
        self._held.difference_update(ids)

    def _present(self, ids: Iterable[int]) -> set[int]:
        """Those of ``ids`` still in the file (a read: it works on a full disk); all of them where
        reading fails."""
        ids = sorted(ids)
        found: set[int] = set()
        try:
            for chunk, marks in _id_chunks(ids):
                found.update(row[0] for row in self._db.execute(f"SELECT id FROM records WHERE id IN ({marks})", chunk))
        except sqlite3.Error:
            return set(ids)
        return found

    # -- room on a full disk ----------------------------------------------------
    def _disk_full(self, exc: BaseException | None) -> bool:
        """Whether SQLite failed for want of space (it says I/O error, or cannot open, where it cannot
        make or grow its ``-wal`` or ``-shm`` file on a full disk)."""
        if not isinstance(exc, sqlite3.Error):
            return False
        words = _reason(exc)
        if words == "the disk is full":
            return True
        return (words == "an I/O error on its storage" or "unable to open" in str(exc)) and _full(self.path.parent)

    @contextlib.contextmanager
    def _maintained(self) -> Iterator[None]:
        """``_maintain`` after the block (under the lock), whether it wrote or failed."""
        try:
            yield
        finally:
            self._maintain()

    def _maintain(self) -> None:
        """After a write (under the lock): a WAL over half the space left is checkpointed, so that the
        next transaction writes it over from its start instead of taking the last free space (SQLite's
        own checkpoint waits for 4 MiB of WAL, a whole small disk); and the reserve is made whole where
        there is room. Two ``stat`` calls (5 us), at most once a second while the disk has plenty of
        room (``_ROOMY``); nothing here raises."""
        now = time.monotonic()
        if now < self._roomy_until:
            return
        try:
            fs = os.statvfs(self.path.parent)
        except OSError:
            return
        free = fs.f_bavail * fs.f_frsize
        if free >= _ROOMY and self._reserve_bytes >= RESERVE_BYTES:  # the WAL checkpoints itself by 4 MiB
            self._roomy_until = now + 1.0
            return
        try:
            wal = os.stat(self._wal).st_size
        except OSError:
            wal = 0
        if wal > free // 2:
            self._checkpoint()
        if self._reserve_bytes < RESERVE_BYTES and free >= _PAGE:
            self._make_reserve()

    def _checkpoint(self) -> None:
        """Copy the WAL into the database (``PASSIVE``: no waiting), so that the next transaction
        starts the WAL over in the space it already has; a failure (no room to grow the database,
        a reader in the way) only leaves it for later."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            log.debug("outbox %s: checkpoint: %s", self.path, exc)

    def _free_reserve_and_checkpoint(self) -> None:
        if self._free_reserve():
            self._checkpoint()  # it may have lacked the room to grow the database

    def _free_reserve(self) -> bool:
        """Delete the reserve, its space given to SQLite; whether there was any (said once, until the
        reserve is whole again)."""
        try:
            size = os.lstat(self._reserve).st_size
            os.unlink(self._reserve)
        except OSError:
            return False
        self._reserve_bytes = 0
        if size and not self._reserve_freed:
            self._reserve_freed = True
            log.warning(
                "outbox %s: the disk is full; its reserve (%d bytes) is freed so that delivered records can be "
                "deleted (made again once there is room)",
                self.path,
                size,
            )
        return size > 0

    def _make_reserve(self) -> None:
        """Allocate the reserve up to ``RESERVE_BYTES``, as far as there is room (a part is kept). Blocks
        are allocated (``posix_fallocate``), not written: zeros a compressing filesystem would not store."""
        try:
            fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):  # not a file that can be made here: never tried again
                log.debug("outbox %s: no reserve: %s", self.path, exc)
                self._reserve_bytes = RESERVE_BYTES
            return
        size = 0
        try:
            size = os.fstat(fd).st_size
            while size < RESERVE_BYTES:
                step = min(_PAGE, RESERVE_BYTES - size)
                os.posix_fallocate(fd, size, step)
                size += step
        except OSError as exc:
            log.debug("outbox %s: reserve at %d bytes: %s", self.path, size, exc)
        finally:
            os.close(fd)
        self._reserve_bytes = size
        if size >= RESERVE_BYTES:
            self._reserve_freed = False

    @contextlib.contextmanager
    def _transaction(self, doing: str) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (the caller holds the lock). A failure rolls back and
        raises ``SyncError`` naming ``doing`` where the storage is the cause; a bug is raised as it is."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            yield
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._undo()
            failure = self._failure(doing, exc)
            if failure is None:
                raise  # not the storage: a bug (a closed outbox, a bad statement), as it is
            raise failure from exc
        except BaseException:
            self._undo()
            raise

    def _undo(self) -> None:
        """After a failed write (under the lock): roll back, unless SQLite already has, and recount.

        On ``SQLITE_FULL``, ``SQLITE_IOERR`` and ``SQLITE_NOMEM`` SQLite rolls the
        transaction back itself, and a ``ROLLBACK`` would fail ("no transaction is
        active") and hide the real error. Nothing raised here replaces the caller's
        error: the count, which a failed transaction never changed, stays.
        """
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._count = self._count_rows()
        except sqlite3.Error as exc:
            log.debug("outbox %s: after a failed write: %s", self.path, exc)

    def _failure(self, doing: str, exc: sqlite3.Error) -> SyncError | None:
        """One line: what could not be done, why in words, and SQLite's own message; None for a bug."""
        reason = _reason(exc)
        if reason is None:
            return None
        return SyncError(f"could not {doing} the outbox {self.path}: {reason} ({exc})")

    def _count_rows(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM records").fetchone()[0])

    def __len__(self) -> int:
        """Records queued, the acknowledged ones held left out (kept in memory: the link asks often)."""
        return self._count - len(self._held)

    def stats(self) -> OutboxStats:
        """What is queued now."""
        with self._lock:
            return _stats(self._db, self.path)

    def close(self) -> None:
        """Close the database (the WAL is checkpointed by SQLite), after a last try at deleting the held
        records: those still in the file are said in one WARNING line. The reserve is then made whole
        where the files SQLite removes on closing (``-wal``, ``-shm``) left the room."""
        with self._lock:
            failure = self._delete_held() if self._held else None
            if failure is not None and self._held:
                log.warning(
                    "outbox %s: %d record(s) the broker acknowledged stay in it (%s); they are sent again after "
                    "the next start (receivers drop the duplicates by device, epoch and seq)",
                    self.path,
                    len(self._held),
                    failure,
                )
            self._db.close()
            if self._reserve_bytes < RESERVE_BYTES:
                self._make_reserve()
