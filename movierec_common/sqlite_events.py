"""The event store in one SQLite file (``sqlite:///PATH``), shared by every process on one machine.

Rules (see :mod:`movierec_common.event_store` for the interface's):

- ``journal_mode=WAL`` (kept in the file) and ``synchronous=FULL`` (set on each connection): a commit
  returns after the WAL is fsynced, so a crash of the process or of the machine loses nothing
  acknowledged. WAL also lets readers go on while one writer commits.
- Writers are serialised by SQLite's own write lock, taken at ``BEGIN IMMEDIATE`` (before anything
  is read, so the batch's duplicate check and its insert see the same store). The sequence is an
  ``INTEGER PRIMARY KEY AUTOINCREMENT``: each commit's numbers are above every earlier commit's, so
  sequence order is commit order, and a number is never reused even if rows are later deleted.
- Within a process, one writer connection behind a lock and one reader connection behind another:
  threads queue on a Python lock, which is fair and immediate, rather than on SQLite's busy handler,
  which sleeps and polls. Between processes, ``busy_timeout`` (10 s) waits for the other writer;
  past it the call raises :class:`StoreUnavailable`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from movierec_common.event_store import (
    META_TABLE,
    ONLINE_TABLE,
    SCHEMA_VERSION,
    STORE_ID_KEY,
    TABLE,
    EventStore,
    IncompatibleStore,
    Interaction,
    OnlineOutcome,
    RecordOutcome,
    StoredInteraction,
    StoreUnavailable,
    check_schema_version,
    chunks,
    new_store_id,
    plan_batch,
)

BUSY_TIMEOUT_S = 10.0
_COLUMNS = "event_id, user_id, movie_id, rating, occurred_at, recommendation_id"
# Well under SQLite's limit on bound parameters (32,766 since 3.32).
_LOOKUP_CHUNK = 500

# Result codes that mean "the file cannot be used now" (retryable, or an operator's to fix: a full or
# read-only disk), as opposed to a wrong statement or a corrupt file.
_UNAVAILABLE_CODES = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_NOMEM,
}

_SCHEMA = (
    f"""CREATE TABLE {TABLE} (
        sequence INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        user_id TEXT NOT NULL,
        movie_id INTEGER NOT NULL,
        rating REAL,
        occurred_at REAL NOT NULL,
        recommendation_id TEXT
    )""",
    # A user's history in store order: what a replica reads at start and the trainer joins.
    f"CREATE INDEX {TABLE}_user_sequence ON {TABLE} (user_id, sequence)",
)

# Made on every schema check, not only with a new store: stores made before it existed get it too.
_ONLINE_SCHEMA = (f"CREATE TABLE IF NOT EXISTS {ONLINE_TABLE} (replica TEXT NOT NULL, version INTEGER NOT NULL, "
                  f"judged INTEGER NOT NULL, hits INTEGER NOT NULL, PRIMARY KEY (replica, version))")

T = TypeVar("T")


class SqliteEventStore(EventStore):
    """Interactions in one SQLite file; see the module docstring for its locking and durability."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"sqlite:///{path.as_posix().lstrip('/')}"
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._schema_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._schema_ready = False
        self._closed = False

    # -- connections
    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreUnavailable(f"event store {self.description} is closed")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreUnavailable(f"event store {self.description}: cannot create its folder: {error}") from error
        connection = self._guarded(lambda: sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                                           check_same_thread=False))
        try:
            self._guarded(lambda: _configure(connection, self.description))
        except BaseException:
            connection.close()
            raise
        return connection

    def _guarded(self, action: Callable[[], T]) -> T:
        """Runs ``action``, turning SQLite's "cannot use the file now" errors into StoreUnavailable."""
        try:
            return action()
        except sqlite3.Error as error:
            code = getattr(error, "sqlite_errorcode", None)
            if code is not None and (code & 0xFF) in _UNAVAILABLE_CODES:
                raise StoreUnavailable(f"event store {self.description}: {error}") from error
            raise

    def _write(self, action: Callable[[sqlite3.Connection], T]) -> T:
        """Runs ``action`` in one ``BEGIN IMMEDIATE`` transaction on the writer connection; commits on
        return, rolls back on any error."""
        with self._write_lock:
            if self._writer is None:
                self._writer = self._connect()
            connection = self._writer

            def transaction() -> T:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    result = action(connection)
                    connection.execute("COMMIT")
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
                return result

            return self._guarded(transaction)

    def _read(self, action: Callable[[sqlite3.Connection], T]) -> T:
        self.ensure_schema()
        with self._read_lock:
            if self._reader is None:
                self._reader = self._connect()
            connection = self._reader
            return self._guarded(lambda: action(connection))

    # -- the interface
    def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock:
            if not self._schema_ready:
                self._store_id = self._write(lambda connection: _create_schema(connection, self.description))
                self._schema_ready = True

    def record(self, interactions: Sequence[Interaction]) -> RecordOutcome:
        self.ensure_schema()

        def write(connection: sqlite3.Connection) -> RecordOutcome:
            ids = list(dict.fromkeys(item.event_id for item in interactions))
            existing: dict[str, Interaction] = {}
            for part in chunks(ids, _LOOKUP_CHUNK):
                rows = connection.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE event_id IN "
                                          f"({','.join('?' * len(part))})", part)
                existing.update((row[0], _interaction(row)) for row in rows)
            new, duplicates = plan_batch(interactions, existing)
            if new:
                connection.executemany(
                    f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    [(item.event_id, item.user_id, item.movie_id, item.rating, item.occurred_at,
                      item.recommendation_id) for item in new])
            watermark = _latest(connection)
            # One BEGIN IMMEDIATE transaction holds the only writer: AUTOINCREMENT gave its rows the
            # numbers right below the new maximum, in batch order.
            first = watermark - len(new) + 1
            written = tuple(StoredInteraction(first + n, item) for n, item in enumerate(new))
            return RecordOutcome(stored=len(new), duplicates=duplicates, watermark=watermark, rows=written)

        return self._write(write)

    def read_after(self, watermark: int, limit: int) -> list[StoredInteraction]:
        def read(connection: sqlite3.Connection) -> list[StoredInteraction]:
            rows = connection.execute(f"SELECT {_COLUMNS}, sequence FROM {TABLE} WHERE sequence > ? "
                                      "ORDER BY sequence LIMIT ?", (watermark, limit)).fetchall()
            return [StoredInteraction(sequence=row[6], interaction=_interaction(row)) for row in rows]

        return self._read(read)

    def follow_after(self, watermark: int, limit: int) -> list[tuple[int, str, int]]:
        return self._read(lambda connection: connection.execute(
            f"SELECT sequence, user_id, movie_id FROM {TABLE} WHERE sequence > ? ORDER BY sequence LIMIT ?",
            (watermark, limit)).fetchall())

    def latest_sequence(self) -> int:
        return self._read(_latest)

    def report_online(self, replica: str, outcomes: Mapping[int, OnlineOutcome]) -> None:
        self.ensure_schema()
        rows = [(replica, version, outcome.judged, outcome.hits) for version, outcome in outcomes.items()]
        if rows:
            self._write(lambda connection: connection.executemany(
                f"INSERT INTO {ONLINE_TABLE} (replica, version, judged, hits) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (replica, version) DO UPDATE SET judged = excluded.judged, hits = excluded.hits", rows))

    def online_outcomes(self) -> dict[int, OnlineOutcome]:
        rows = self._read(lambda connection: connection.execute(
            f"SELECT version, sum(judged), sum(hits) FROM {ONLINE_TABLE} GROUP BY version").fetchall())
        return {int(version): OnlineOutcome(int(judged), int(hits)) for version, judged, hits in rows}

    def settings(self) -> dict[str, object]:
        """The writer connection's durability settings, as SQLite reports them (for status and tests):
        ``journal_mode`` ('wal'), ``synchronous`` (2 = FULL), ``busy_timeout`` (ms)."""
        def read(connection: sqlite3.Connection) -> dict[str, object]:
            return {name: connection.execute(f"PRAGMA {name}").fetchone()[0]
                    for name in ("journal_mode", "synchronous", "busy_timeout")}

        self.ensure_schema()
        with self._write_lock:
            if self._writer is None:
                self._writer = self._connect()
            writer = self._writer
            return self._guarded(lambda: read(writer))

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            self._closed = True
            for connection in (self._writer, self._reader):
                if connection is not None:
                    connection.close()
            self._writer = self._reader = None


def _configure(connection: sqlite3.Connection, description: str) -> None:
    mode = _switch_to_wal(connection)
    if str(mode).lower() != "wal":
        raise IncompatibleStore(f"event store {description} cannot use WAL mode (got {mode!r}): put it on a "
                                "local filesystem")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")


def _switch_to_wal(connection: sqlite3.Connection) -> str:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the lock it needs.

    Switching a new file to WAL takes an exclusive lock, and SQLite may answer SQLITE_BUSY at once,
    without its busy handler, when connections race to switch (seen in a clean CI run: two processes
    opening a new file together, one got "database is locked"). So this waits as the busy handler
    would, up to the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            return str(connection.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as error:
            busy = (getattr(error, "sqlite_errorcode", 0) & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not busy or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _create_schema(connection: sqlite3.Connection, description: str) -> str:
    """Inside the writer's BEGIN IMMEDIATE: a second process opening a new file waits for the first one's
    commit, then finds the version and creates nothing. Returns the store's id (made here if missing)."""
    connection.execute(f"CREATE TABLE IF NOT EXISTS {META_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    row = connection.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'schema_version'").fetchone()
    if row is not None:
        check_schema_version(int(row[0]), description)
    else:
        for statement in _SCHEMA:
            connection.execute(statement)
        connection.execute(f"INSERT INTO {META_TABLE} (key, value) VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))
    connection.execute(_ONLINE_SCHEMA)
    row = connection.execute(f"SELECT value FROM {META_TABLE} WHERE key = ?", (STORE_ID_KEY,)).fetchone()
    if row is not None:
        return str(row[0])
    store_id = new_store_id()
    connection.execute(f"INSERT INTO {META_TABLE} (key, value) VALUES (?, ?)", (STORE_ID_KEY, store_id))
    return store_id


def _latest(connection: sqlite3.Connection) -> int:
    return int(connection.execute(f"SELECT coalesce(max(sequence), 0) FROM {TABLE}").fetchone()[0])


def _interaction(row: Sequence[Any]) -> Interaction:
    event_id, user_id, movie_id, rating, occurred_at, recommendation_id = row[:6]
    return Interaction(event_id=event_id, user_id=user_id, movie_id=int(movie_id),
                       rating=None if rating is None else float(rating), occurred_at=float(occurred_at),
                       recommendation_id=recommendation_id)
