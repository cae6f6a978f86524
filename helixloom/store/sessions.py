"""Sessions and their messages: every prompt and response helixloom produces is logged here."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Literal
from uuid import uuid4

from helixloom.errors import HelixloomError
from helixloom.store.base import StoreBase
from helixloom.store.records import JSON, Message, NewMessage, Session, dumps, to_utc, utc_now

RATING_SIGNS = {"up": 1, "down": -1}


class SessionsMixin(StoreBase):
    def record_session(
        self,
        kind: str,
        messages: Sequence[NewMessage],
        *,
        title: str | None = None,
        model: str | None = None,
        meta: JSON | None = None,
        api_key_label: str | None = None,
        session_id: str | None = None,
    ) -> Session:
        """Write a session and all its messages (idx 0, 1, ...) in one transaction.

        Either everything is written or, if any insert fails, nothing is. ``session_id`` defaults
        to a fresh ``uuid4().hex``; an id already in use raises ``HelixloomError``.
        """
        if not kind:
            raise HelixloomError(
                "a session needs a kind (generate, chat, helixnet, api, weave ...)", param="kind"
            )
        sid = session_id if session_id is not None else uuid4().hex
        now = utc_now()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM sessions WHERE id = ?", (sid,)).fetchone():
                raise HelixloomError(f"session {sid} already exists", "append_messages adds to it")
            conn.execute(
                "INSERT INTO sessions (id, kind, title, model, created_at, meta, api_key_label)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sid, kind, title, model, now, dumps(meta, "meta"), api_key_label),
            )
            _insert_messages(conn, sid, 0, messages, now)
            row = conn.execute("SELECT * FROM sessions WHERE id = ?", (sid,)).fetchone()
        return Session.from_row(row)

    def append_messages(self, session_id: str, messages: Sequence[NewMessage]) -> list[Message]:
        """Append messages after the session's last one, with consecutive idx, in one transaction.

        Raises ``HelixloomError`` when the session does not exist. Returns the new messages.
        """
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone():
                raise HelixloomError(f"no session {session_id}")
            (last,) = conn.execute(
                "SELECT MAX(idx) FROM messages WHERE session_id = ?", (session_id,)
            ).fetchone()
            start = 0 if last is None else last + 1
            return _insert_messages(conn, session_id, start, messages, utc_now())

    def get_session(self, session_id: str) -> Session | None:
        """The session with this id, or ``None``."""
        row = self._fetchone("SELECT * FROM sessions WHERE id = ?", (session_id,))
        return None if row is None else Session.from_row(row)

    def get_messages(self, session_id: str) -> list[Message]:
        """The session's messages in idx order (empty for an unknown session)."""
        rows = self._fetchall("SELECT * FROM messages WHERE session_id = ? ORDER BY idx", (session_id,))
        return [Message.from_row(r) for r in rows]

    def list_sessions(
        self,
        *,
        kind: str | None = None,
        model: str | None = None,
        rating: Literal["up", "down"] | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Session]:
        """Sessions matching every filter given, newest first.

        ``rating`` keeps sessions with a rating of that sign on the session or on any of its
        messages (a session rated both ways matches both). ``since`` (inclusive) and ``until``
        (exclusive) are ISO-8601 dates or times; naive ones are taken as UTC.
        """
        where: list[str] = []
        params: list[Any] = []
        if kind is not None:
            where.append("s.kind = ?")
            params.append(kind)
        if model is not None:
            where.append("s.model = ?")
            params.append(model)
        if rating is not None:
            if rating not in RATING_SIGNS:
                raise HelixloomError(f"rating={rating!r} must be 'up' or 'down'", param="rating")
            where.append(
                "EXISTS (SELECT 1 FROM ratings r WHERE r.score = ? AND ("
                "(r.target_type = 'session' AND r.target_id = s.id) OR (r.target_type = 'message'"
                " AND r.target_id IN (SELECT m.id FROM messages m WHERE m.session_id = s.id))))"
            )
            params.append(RATING_SIGNS[rating])
        if since is not None:
            where.append("s.created_at >= ?")
            params.append(to_utc(since, "since"))
        if until is not None:
            where.append("s.created_at < ?")
            params.append(to_utc(until, "until"))
        if limit < 0 or offset < 0:
            raise HelixloomError(f"limit ({limit}) and offset ({offset}) must not be negative")
        sql = "SELECT s.* FROM sessions s"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY s.created_at DESC, s.rowid DESC LIMIT ? OFFSET ?"
        rows = self._fetchall(sql, [*params, limit, offset])
        return [Session.from_row(r) for r in rows]

    def delete_session(self, session_id: str) -> bool:
        """Delete a session, its messages and the ratings on either; False if there was no such session."""
        with self._write() as conn:
            conn.execute(
                "DELETE FROM ratings WHERE target_type = 'message'"
                " AND target_id IN (SELECT id FROM messages WHERE session_id = ?)",
                (session_id,),
            )
            conn.execute("DELETE FROM ratings WHERE target_type = 'session' AND target_id = ?", (session_id,))
            return conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount > 0


def _insert_messages(
    conn: sqlite3.Connection, session_id: str, start: int, messages: Sequence[NewMessage], now: str
) -> list[Message]:
    for offset, m in enumerate(messages):
        conn.execute(
            "INSERT INTO messages (id, session_id, idx, role, content, stage, model, adapter, sampling,"
            " prompt_tokens, completion_tokens, finish_reason, timings, meta, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                uuid4().hex,
                session_id,
                start + offset,
                m.role,
                m.content,
                m.stage,
                m.model,
                m.adapter,
                dumps(m.sampling, "sampling"),
                m.prompt_tokens,
                m.completion_tokens,
                m.finish_reason,
                dumps(m.timings, "timings"),
                dumps(m.meta, "meta"),
                now,
            ),
        )
    rows = conn.execute(
        "SELECT * FROM messages WHERE session_id = ? AND idx >= ? ORDER BY idx", (session_id, start)
    ).fetchall()
    return [Message.from_row(r) for r in rows]
