"""The connection under a ``Store``: opening, pragmas, migrations, locking and transactions.

One connection is shared by every thread of a process (the server's request handlers, job
threads); a re-entrant lock serialises its use. Across processes SQLite's own locking applies:
WAL lets readers run beside one writer, every write transaction starts with ``BEGIN IMMEDIATE``
so it takes the write lock up front, and ``busy_timeout`` waits for it instead of failing at once.
A write that still finds the lock taken (a long training job writing progress, a CLI command in
another process) keeps waiting, up to ``WRITE_WAIT_S`` in all, so an answer already generated is
stored late rather than lost. Reads never take the write lock, and neither does opening a store whose
schema is current.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from helixloom.errors import HelixloomError
from helixloom.store.migrations import migrate

BUSY_TIMEOUT_MS = 5000
WRITE_WAIT_S = 120.0  # how long a write waits in all for another process's write lock
WRITE_TRY_MS = 250  # one try at it, holding this process's lock


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


class StoreBase:
    """Owns the connection; the area mixins (sessions, trees, ...) build on its helpers."""

    def __init__(self, path: Path | str, *, upto: int | None = None) -> None:
        """Open (creating) the database at ``path`` and apply pending migrations up to ``upto``.

        ``upto`` stops at that migration number; it exists for upgrade tests, and a store opened
        below the latest version only supports the tables its migrations created.
        Raises ``HelixloomError`` when the file is not a helixloom database or is newer than this code.
        """
        self.path = path if str(path) == ":memory:" else Path(path)
        self._lock = threading.RLock()
        if isinstance(self.path, Path):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise HelixloomError(f"cannot create the folder for database {self.path}: {exc}") from exc
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so DDL and DML share transactions.
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
        conn.row_factory = sqlite3.Row
        try:
            self._open(conn)
            migrate(conn, upto=upto)
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    def _open(self, conn: sqlite3.Connection) -> None:
        """Set the connection's pragmas, waiting (up to ``WRITE_WAIT_S``) while another connection
        holds the lock: switching a fresh file to WAL takes it whole, and the busy timeout does not
        always wait for that (measured: one of 8 connections racing to open a fresh file failed
        with "database is locked" on a loaded machine)."""
        deadline = time.monotonic() + WRITE_WAIT_S
        while True:
            try:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                return
            except sqlite3.OperationalError as exc:
                if _is_locked(exc) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise HelixloomError(
                    f"cannot open database {self.path}: {exc}",
                    "another process holds it locked" if _is_locked(exc) else "check the file",
                ) from exc
            except sqlite3.DatabaseError as exc:
                raise HelixloomError(
                    f"cannot open database {self.path}: {exc}",
                    "move the file aside if it is not a SQLite database",
                ) from exc

    @property
    def schema_version(self) -> int:
        """The highest migration number applied to this database (0 for none)."""
        row = self._fetchone("SELECT MAX(number) AS n FROM schema_migrations")
        return int(row["n"]) if row is not None and row["n"] is not None else 0

    def applied_migrations(self) -> list[tuple[int, str, str]]:
        """``(number, name, applied_at)`` for every migration applied, in order."""
        rows = self._fetchall("SELECT number, name, applied_at FROM schema_migrations ORDER BY number")
        return [(r["number"], r["name"], r["applied_at"]) for r in rows]

    def close(self) -> None:
        """Close the connection; later calls raise ``HelixloomError``. Closing twice is harmless."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Helpers for the mixins. Every use of the connection goes through one of these, under the lock.

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise HelixloomError(f"the store for {self.path} is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything inside commits together or not at all."""
        self._acquire_write()
        try:
            conn = self._connection()
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # SQLite rolls some failures back by itself; a second ROLLBACK would raise.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            self._lock.release()

    def _acquire_write(self) -> None:
        """Take this process's lock and SQLite's write lock (``BEGIN IMMEDIATE``). While another
        process holds the write lock, keep trying, up to ``WRITE_WAIT_S`` in all, but let go of this
        process's lock between tries, so its other threads' reads are not held up meanwhile."""
        deadline = time.monotonic() + WRITE_WAIT_S
        while True:
            self._lock.acquire()
            try:
                conn = self._connection()
                # A short wait per try (not the connection's 5 s) while holding this process's lock.
                conn.execute(f"PRAGMA busy_timeout = {min(WRITE_TRY_MS, BUSY_TIMEOUT_MS)}")
                try:
                    conn.execute("BEGIN IMMEDIATE")
                finally:
                    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                return  # the caller releases the lock
            except sqlite3.OperationalError as exc:
                self._lock.release()
                if not _is_locked(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise HelixloomError(
                        f"the database stayed locked by another process for {WRITE_WAIT_S:.0f} s",
                        "wait for the other helixloom command or job to finish, then try again",
                    ) from exc
                time.sleep(0.05)
            except BaseException:
                self._lock.release()
                raise

    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._connection().execute(sql, params).fetchall()

    def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._connection().execute(sql, params).fetchone()
            return row
