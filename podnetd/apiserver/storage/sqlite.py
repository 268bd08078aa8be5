"""The one-node store of record: a SQLite file in the node's state dir (no cluster flags, or
--store static), kept to the same contract as etcd (base.py).

Tables: `objects` (the current value of each key, with its create and mod revisions), `changes`
(the change log, one row per revision: PUT or DELETE, the value, whether the PUT created the key)
and `meta` (the revision counter and the newest revision dropped from the log). The counter only
grows and is stored, so a revision is never reused, not even after a delete or a restart. The log
keeps the last `history` changes; a watch from before them is TooOld, as from a compacted etcd.

Every query runs on one thread of the store's own (a SQLite connection belongs to the thread that
opened it; one writer at a time is what SQLite does anyway). Watchers read the change log itself
after the revision they have reached, a page at a time, and sleep on an event that every commit
sets: order and exactly-once come from the log, a slow watcher holds one page in memory, and a
watcher left far behind by the history limit gets TooOld rather than a gap.
"""
import asyncio
import concurrent.futures
import logging
import os
import sqlite3
from typing import AsyncIterator

from .base import (Conflict, KeyExists, KeyNotFound, KeyValue, ObjectStore, StoreUnavailable,
                   TooOld, WatchEvent)
from .keys import check_key, check_revision, check_value, prefix_end

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PAGE = 256  # changes a watcher reads (and holds) at a time

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    revision INTEGER PRIMARY KEY,
    key BLOB NOT NULL,
    type TEXT NOT NULL CHECK (type IN ('PUT', 'DELETE')),
    value BLOB NOT NULL,
    created INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compacted', 0);
"""

# The largest key, for a range with no end (a prefix of only 0xff bytes, which UTF-8 never has).
_NO_END = b"\xff" * 2048


class SqliteStore(ObjectStore):
    name = "sqlite"

    def __init__(self, path: str, history: int = 10000):
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"history {history!r}: must be a positive number of changes")
        self.path = path
        self.history = history
        self._db: sqlite3.Connection | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._closed = False

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, what: str, fn, *args):
        if self._executor is None or self._closed:
            raise StoreUnavailable(f"sqlite store {self.path}: {what}: the store is closed")
        try:
            return await self._loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"sqlite store {self.path}: {what}: {e}") from e
        except RuntimeError as e:  # the executor was shut down under us (close)
            raise StoreUnavailable(f"sqlite store {self.path}: {what}: {e}") from e

    def _notify(self) -> None:
        """Wake every watcher (on the loop's thread): the event they captured is set, and later
        waits use a fresh one."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _write(self, fn, *args):
        """fn(db, *args) inside one immediate transaction; watchers are woken once it is
        committed (from here, so a caller cancelled while waiting cannot skip the wake-up)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db, *args)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._loop.call_soon_threadsafe(self._notify)
        return result

    def _read(self, fn, *args):
        """fn(db, *args) on one snapshot (a listing and its revision must agree)."""
        db = self._db
        db.execute("BEGIN")
        try:
            return fn(db, *args)
        finally:
            if db.in_transaction:
                db.execute("COMMIT")

    @staticmethod
    def _meta(db, name: str) -> int:
        return db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0]

    def _log(self, db, key: bytes, kind: str, value: bytes, created: bool) -> int:
        """Record a change at the next revision and drop what falls out of the history."""
        revision = self._meta(db, "revision") + 1
        db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
        db.execute("INSERT INTO changes (revision, key, type, value, created) VALUES (?, ?, ?, ?, ?)",
                   (revision, key, kind, value, int(created)))
        floor = revision - self.history
        if floor > self._meta(db, "compacted"):
            db.execute("DELETE FROM changes WHERE revision <= ?", (floor,))
            db.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (floor,))
        return revision

    # -- opening ----------------------------------------------------------------------------

    def _open(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # Objects may hold secrets: the file (and the -wal/-shm SQLite makes with its mode) 0600.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout = 5000")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL journaling (journal_mode {mode})")
            # The store of record: a commit that returned survives a power loss.
            db.execute("PRAGMA synchronous = FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {version}, this podnetd knows "
                                            f"{SCHEMA_VERSION}")
            db.executescript("BEGIN IMMEDIATE;" + SCHEMA +
                             f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        except BaseException:
            db.close()
            raise
        self._db = db

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._closed = False
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sqlite-store")
        try:
            await self._run("open", self._open)
        except OSError as e:
            await self.close()
            raise StoreUnavailable(f"sqlite store {self.path}: open: {e}") from e
        except StoreUnavailable:
            await self.close()
            raise

    async def close(self) -> None:
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        self._closed = True
        if self._loop is not None:
            self._notify()  # watchers wake up and end with StoreUnavailable

        def shut():
            if self._db is not None:
                self._db.close()
                self._db = None
        try:
            await self._loop.run_in_executor(executor, shut)
        finally:
            executor.shutdown(wait=False)

    # -- the contract -----------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue:
        raw = check_key(key)

        def get(db):
            return db.execute("SELECT value, mod_revision, create_revision FROM objects "
                              "WHERE key = ?", (raw,)).fetchone()
        row = await self._run(f"get {key}", self._read, get)
        if row is None:
            raise KeyNotFound(f"{key}: not found")
        return KeyValue(key, bytes(row[0]), row[1], row[2])

    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        raw = check_key(prefix, "prefix")
        end = prefix_end(raw) or _NO_END

        def listing(db):
            rows = db.execute("SELECT key, value, mod_revision, create_revision FROM objects "
                              "WHERE key >= ? AND key < ? ORDER BY key", (raw, end)).fetchall()
            return rows, self._meta(db, "revision")
        rows, revision = await self._run(f"list {prefix}", self._read, listing)
        return [KeyValue(bytes(k).decode("utf-8"), bytes(v), m, c) for k, v, m, c in rows], revision

    async def revision(self) -> int:
        return await self._run("revision", self._read, self._meta, "revision")

    async def create(self, key: str, value: bytes) -> int:
        raw, value = check_key(key), check_value(key, value)

        def create(db):
            if db.execute("SELECT 1 FROM objects WHERE key = ?", (raw,)).fetchone():
                raise KeyExists(f"{key}: already exists")
            revision = self._log(db, raw, "PUT", value, True)
            db.execute("INSERT INTO objects VALUES (?, ?, ?, ?)", (raw, value, revision, revision))
            return revision
        return await self._run(f"create {key}", self._write, create)

    def _current(self, db, key: str, raw: bytes, expected: int | None):
        row = db.execute("SELECT value, mod_revision, create_revision FROM objects WHERE key = ?",
                         (raw,)).fetchone()
        if row is None:
            raise KeyNotFound(f"{key}: not found")
        if expected is not None and row[1] != expected:
            raise Conflict(f"{key}: modified at revision {row[1]}, not {expected}")
        return row

    async def update(self, key: str, value: bytes, expected_revision: int | None) -> int:
        raw, value = check_key(key), check_value(key, value)
        check_revision(key, expected_revision)

        def update(db):
            self._current(db, key, raw, expected_revision)
            revision = self._log(db, raw, "PUT", value, False)
            db.execute("UPDATE objects SET value = ?, mod_revision = ? WHERE key = ?",
                       (value, revision, raw))
            return revision
        return await self._run(f"update {key}", self._write, update)

    async def delete(self, key: str, expected_revision: int | None) -> KeyValue:
        raw = check_key(key)
        check_revision(key, expected_revision)

        def delete(db):
            value, _, created = self._current(db, key, raw, expected_revision)
            revision = self._log(db, raw, "DELETE", value, False)
            db.execute("DELETE FROM objects WHERE key = ?", (raw,))
            return KeyValue(key, bytes(value), revision, created)
        return await self._run(f"delete {key}", self._write, delete)

    def _changes_after(self, db, raw: bytes, end: bytes, after: int):
        """(changes under the prefix after `after`, at most PAGE, and the revision read up to),
        or (None, oldest kept) when the history after `after` is gone."""
        compacted = self._meta(db, "compacted")
        if after < compacted:
            return None, compacted + 1
        rows = db.execute("SELECT revision, key, type, value, created FROM changes "
                          "WHERE revision > ? AND key >= ? AND key < ? ORDER BY revision LIMIT ?",
                          (after, raw, end, PAGE)).fetchall()
        # a short page is everything up to the current revision: skip past unrelated changes
        reached = rows[-1][0] if len(rows) == PAGE else max(after, self._meta(db, "revision"))
        return rows, reached

    async def watch(self, prefix: str, after_revision: int) -> AsyncIterator[WatchEvent]:
        raw = check_key(prefix, "prefix")
        end = prefix_end(raw) or _NO_END
        if isinstance(after_revision, bool) or not isinstance(after_revision, int) or after_revision < 0:
            raise ValueError(f"watch {prefix}: revision {after_revision!r} is not a revision")
        position = after_revision
        while True:
            if self._closed:
                raise StoreUnavailable(f"sqlite store {self.path}: watch {prefix}: the store is closed")
            changed = self._changed  # taken before reading: a commit after the read sets it
            rows, reached = await self._run(f"watch {prefix}", self._read, self._changes_after,
                                            raw, end, position)
            if rows is None:
                raise TooOld(f"watch {prefix} from revision {position}: the history before "
                             f"revision {reached} is gone")
            for revision, key, kind, value, created in rows:
                position = revision
                yield WatchEvent(kind, bytes(key).decode("utf-8"), bytes(value), revision,
                                 bool(created))
            position = max(position, reached)
            if len(rows) < PAGE:
                await changed.wait()
