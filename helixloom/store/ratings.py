"""Thumbs up and down on sessions, messages and tree nodes, and pairwise preferences: the raw
material of preference data."""

from __future__ import annotations

from helixloom.errors import HelixloomError
from helixloom.store.base import StoreBase
from helixloom.store.records import JSON, TARGET_TYPES, Preference, Rating, TargetType, dumps, utc_now

# Fixed strings, never user input, so they may be formatted into SQL.
_TARGET_TABLES: dict[str, str] = {"session": "sessions", "message": "messages", "node": "nodes"}


class RatingsMixin(StoreBase):
    def add_rating(
        self, target_type: TargetType, target_id: str, score: int, reason: str | None = None
    ) -> Rating:
        """Record a rating of +1 or -1 on an existing session, message or node.

        Raises ``HelixloomError`` for another target type, another score, or a target that does
        not exist. Ratings accumulate: rating the same thing twice keeps both.
        """
        _check_target_type(target_type)
        if type(score) is not int or score not in (-1, 1):  # bool and float are refused too
            raise HelixloomError(f"a rating's score is -1 or +1, got {score!r}", param="score")
        with self._write() as conn:
            table = _TARGET_TABLES[target_type]
            if not conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (target_id,)).fetchone():
                raise HelixloomError(
                    f"cannot rate {target_type} {target_id}: it does not exist", param="target_id"
                )
            cur = conn.execute(
                "INSERT INTO ratings (target_type, target_id, score, reason, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (target_type, target_id, score, reason, utc_now()),
            )
            row = conn.execute("SELECT * FROM ratings WHERE id = ?", (cur.lastrowid,)).fetchone()
        return Rating.from_row(row)

    def ratings_for(self, target_type: TargetType, target_id: str) -> list[Rating]:
        """The ratings on one target, oldest first."""
        _check_target_type(target_type)
        rows = self._fetchall(
            "SELECT * FROM ratings WHERE target_type = ? AND target_id = ? ORDER BY id",
            (target_type, target_id),
        )
        return [Rating.from_row(r) for r in rows]

    def list_ratings(self, target_type: TargetType | None = None) -> list[Rating]:
        """Every rating, or those on one type of target, newest first."""
        if target_type is None:
            rows = self._fetchall("SELECT * FROM ratings ORDER BY id DESC")
        else:
            _check_target_type(target_type)
            rows = self._fetchall(
                "SELECT * FROM ratings WHERE target_type = ? ORDER BY id DESC", (target_type,)
            )
        return [Rating.from_row(r) for r in rows]

    def add_preference(
        self,
        prompt: str,
        chosen: str,
        rejected: str,
        *,
        source: str,
        chosen_node_id: str | None = None,
        rejected_node_id: str | None = None,
        meta: JSON | None = None,
    ) -> Preference:
        """Record that ``chosen`` was preferred to ``rejected`` for ``prompt``.

        Node ids, when given, must name existing tree nodes. Raises ``HelixloomError`` for an
        empty answer, identical answers, an empty source or an unknown node.
        """
        if not chosen.strip() or not rejected.strip():
            raise HelixloomError("a preference needs two non-empty answers", param="chosen")
        if chosen == rejected:
            raise HelixloomError("a preference needs two different answers", param="rejected")
        if not source.strip():
            raise HelixloomError("a preference needs a source", param="source")
        with self._write() as conn:
            for param, nid in (("chosen_node_id", chosen_node_id), ("rejected_node_id", rejected_node_id)):
                if (
                    nid is not None
                    and not conn.execute("SELECT 1 FROM nodes WHERE id = ?", (nid,)).fetchone()
                ):
                    raise HelixloomError(f"node {nid} does not exist", param=param)
            cur = conn.execute(
                "INSERT INTO preferences (prompt, chosen, rejected, source, chosen_node_id,"
                " rejected_node_id, meta, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    prompt,
                    chosen,
                    rejected,
                    source,
                    chosen_node_id,
                    rejected_node_id,
                    dumps(meta, "meta"),
                    utc_now(),
                ),
            )
            row = conn.execute("SELECT * FROM preferences WHERE id = ?", (cur.lastrowid,)).fetchone()
        return Preference.from_row(row)

    def list_preferences(self, source: str | None = None) -> list[Preference]:
        """Every pairwise preference, or those from one source, oldest first."""
        if source is None:
            rows = self._fetchall("SELECT * FROM preferences ORDER BY id")
        else:
            rows = self._fetchall("SELECT * FROM preferences WHERE source = ? ORDER BY id", (source,))
        return [Preference.from_row(r) for r in rows]


def _check_target_type(target_type: str) -> None:
    if target_type not in TARGET_TYPES:
        raise HelixloomError(
            f"cannot rate a {target_type!r}: ratings go on {', '.join(TARGET_TYPES)}", param="target_type"
        )
