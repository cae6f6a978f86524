"""The schema's history: an append-only list of numbered migrations, and the code that applies them.

A migration is never edited once released; a change to the schema is a new entry at the end.
Each one runs in its own transaction together with its row in ``schema_migrations``, so a
database is always at some exact version, never between two. A database that records a
migration this code does not know was written by a newer helixloom and is refused untouched.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import NamedTuple

from helixloom.errors import HelixloomError
from helixloom.store.records import utc_now


class Migration(NamedTuple):
    """One schema step: ``step`` is SQL (one or more statements) or a function of the connection."""

    number: int
    name: str
    step: str | Callable[[sqlite3.Connection], None]


MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "sessions",
        """
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,  -- generate, chat, helixnet, api, weave ...
            title TEXT,
            model TEXT,
            created_at TEXT,
            meta TEXT  -- JSON
        );
        CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            stage TEXT,  -- actor, critic, regenerator, or NULL
            model TEXT,
            adapter TEXT,
            sampling TEXT,  -- JSON
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            finish_reason TEXT,
            timings TEXT,  -- JSON
            meta TEXT,  -- JSON
            created_at TEXT,
            UNIQUE (session_id, idx)
        );
        CREATE TABLE adapters (
            name TEXT PRIMARY KEY,
            path TEXT NOT NULL,
            base_model TEXT,
            meta TEXT,  -- JSON
            created_at TEXT
        );
        CREATE INDEX messages_session_id ON messages(session_id);
        CREATE INDEX sessions_created_at ON sessions(created_at);
        """,
    ),
    Migration(
        2,
        "trees_ratings",
        """
        CREATE TABLE nodes (
            id TEXT PRIMARY KEY,  -- content hash, see helixloom.store.trees.node_id
            tree_id TEXT NOT NULL,
            parent_id TEXT REFERENCES nodes(id),
            text TEXT NOT NULL,
            depth INTEGER NOT NULL,
            author TEXT,  -- 'human' or a model name
            model TEXT,
            adapter TEXT,
            score REAL,
            meta TEXT,  -- JSON
            created_at TEXT
        );
        CREATE TABLE ratings (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            target_type TEXT NOT NULL CHECK (target_type IN ('session', 'message', 'node')),
            target_id TEXT NOT NULL,
            score INTEGER NOT NULL CHECK (score IN (-1, 1)),
            reason TEXT,
            created_at TEXT
        );
        CREATE INDEX nodes_tree_id ON nodes(tree_id);
        CREATE INDEX nodes_parent_id ON nodes(parent_id);
        CREATE INDEX ratings_target ON ratings(target_type, target_id);
        """,
    ),
    Migration(
        3,
        "datasets_jobs",
        """
        CREATE TABLE datasets (
            name TEXT PRIMARY KEY,
            path TEXT NOT NULL,
            kind TEXT,
            rows INTEGER,
            meta TEXT,  -- JSON
            created_at TEXT
        );
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            name TEXT,
            status TEXT NOT NULL
                CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
            progress REAL,
            total REAL,
            message TEXT,
            params TEXT,  -- JSON
            result TEXT,  -- JSON
            error TEXT,
            created_at TEXT,
            updated_at TEXT
        );
        CREATE TABLE job_logs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT REFERENCES jobs(id) ON DELETE CASCADE,
            at TEXT,
            line TEXT
        );
        CREATE INDEX job_logs_job_id ON job_logs(job_id);
        ALTER TABLE sessions ADD COLUMN api_key_label TEXT;
        """,
    ),
    Migration(
        4,
        "jobs_process",
        # Which process runs a job, so a job whose process died can be told from one still running.
        """
        ALTER TABLE jobs ADD COLUMN pid INTEGER;
        ALTER TABLE jobs ADD COLUMN host TEXT;
        """,
    ),
    Migration(
        5,
        "preferences",
        # Pairwise choices (blind A/B in the loom, the rating page, a simulated user): the prompt,
        # the chosen and the rejected text, where each came from (node ids, model/adapter version).
        """
        CREATE TABLE preferences (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            prompt TEXT NOT NULL,
            chosen TEXT NOT NULL,
            rejected TEXT NOT NULL,
            source TEXT NOT NULL,  -- who chose: 'loom-ab', 'rating-page', 'simulated', ...
            chosen_node_id TEXT,
            rejected_node_id TEXT,
            meta TEXT,  -- JSON: models, adapter versions, samplers, reason
            created_at TEXT
        );
        CREATE INDEX preferences_source ON preferences(source);
        """,
    ),
]


def latest_version(migrations: Sequence[Migration] | None = None) -> int:
    """The number of the last migration this code knows (0 when there are none)."""
    migrations = MIGRATIONS if migrations is None else migrations
    return migrations[-1].number if migrations else 0


def check_order(migrations: Sequence[Migration]) -> None:
    """Raise ``ValueError`` unless the numbers run 1, 2, 3 ... and the names are unique."""
    numbers = [m.number for m in migrations]
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"migration numbers must run 1, 2, 3 ... in order, got {numbers}")
    names = [m.name for m in migrations]
    if len(set(names)) != len(names):
        raise ValueError(f"migration names must be unique, got {names}")


def split_statements(sql: str) -> list[str]:
    """Split a script into single statements (``executescript`` would commit our transaction)."""
    statements: list[str] = []
    pending = ""
    for piece in sql.split(";"):
        pending += piece + ";"
        # A ';' inside a string or comment leaves the statement incomplete; keep accumulating.
        if sqlite3.complete_statement(pending):
            if pending.strip().rstrip(";").strip():
                statements.append(pending.strip())
            pending = ""
    if pending.strip().rstrip(";").strip():
        raise ValueError(f"incomplete SQL statement at the end of a migration: {pending.strip()!r}")
    return statements


def applied(conn: sqlite3.Connection) -> dict[int, str]:
    """Migration number -> name for every migration recorded in the database."""
    rows = conn.execute("SELECT number, name FROM schema_migrations ORDER BY number").fetchall()
    return {int(r[0]): str(r[1]) for r in rows}


def migrate(
    conn: sqlite3.Connection,
    *,
    upto: int | None = None,
    migrations: Sequence[Migration] | None = None,
) -> list[int]:
    """Apply every known migration not yet recorded, in order, up to ``upto`` (default: all).

    ``conn`` must be in autocommit mode (``isolation_level=None``). Each migration and its
    bookkeeping row commit together or not at all. Returns the numbers applied now. Raises
    ``HelixloomError`` when the database records a migration this code does not know.
    """
    migrations = MIGRATIONS if migrations is None else migrations
    check_order(migrations)
    latest = latest_version(migrations)
    if upto is not None and not 0 <= upto <= latest:
        raise HelixloomError(f"upto={upto} is not a migration number; this code knows 0 to {latest}")
    # Reads first: a store whose schema is current is opened without ever taking the write lock,
    # so read-only commands work beside a process that is writing.
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not has_table:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (number INTEGER PRIMARY KEY, name TEXT, applied_at TEXT)"
        )
    known = {m.number for m in migrations}
    recorded = set(applied(conn))
    unknown = sorted(recorded - known)
    if unknown:
        raise HelixloomError(
            f"this database was written by a newer helixloom: it has schema migration {unknown[-1]}, "
            f"this version knows up to {latest}",
            "upgrade helixloom, or point HELIXLOOM_HOME at another folder",
        )
    done: list[int] = []
    for migration in migrations:
        if upto is not None and migration.number > upto:
            break
        if migration.number in recorded:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Checked again under the write lock: another process may have applied it meanwhile.
            if conn.execute(
                "SELECT 1 FROM schema_migrations WHERE number = ?", (migration.number,)
            ).fetchone():
                conn.execute("COMMIT")
                continue
            if isinstance(migration.step, str):
                for statement in split_statements(migration.step):
                    conn.execute(statement)
            else:
                migration.step(conn)
            conn.execute(
                "INSERT INTO schema_migrations (number, name, applied_at) VALUES (?, ?, ?)",
                (migration.number, migration.name, utc_now()),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        done.append(migration.number)
    return done
