"""What the store hands back: frozen dataclasses with JSON columns already parsed.

Timestamps are ISO-8601 UTC strings (``2025-01-31T12:00:00.000000+00:00``), which sort as text.
JSON columns are written with sorted keys; SQL NULL reads back as ``None``.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from helixloom.errors import HelixloomError

JSON = dict[str, Any]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
TargetType = Literal["session", "message", "node"]
TARGET_TYPES: tuple[TargetType, ...] = get_args(TargetType)


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def to_utc(stamp: str, param: str) -> str:
    """Normalise a user-given ISO-8601 date or time to the store's UTC format (naive means UTC)."""
    try:
        parsed = datetime.fromisoformat(stamp)
    except (TypeError, ValueError) as exc:
        raise HelixloomError(
            f"{param}={stamp!r} is not an ISO-8601 date or time",
            "use e.g. 2025-01-31 or 2025-01-31T12:00:00+00:00",
            param=param,
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat(timespec="microseconds")


def dumps(value: Any, field: str) -> str | None:
    """Serialise a JSON column with sorted keys; ``None`` stays NULL.

    Raises ``HelixloomError`` naming ``field`` when the value is not JSON (NaN included).
    """
    if value is None:
        return None
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise HelixloomError(f"{field} cannot be stored as JSON: {exc}", param=field) from exc


def loads(text: str | None) -> Any:
    """Parse a JSON column; NULL reads back as ``None``."""
    return None if text is None else json.loads(text)


@dataclass(frozen=True)
class NewMessage:
    """A message to record; the store assigns its id, index and timestamp."""

    role: str
    content: str
    stage: str | None = None  # actor, critic, regenerator, or None outside HelixNet
    model: str | None = None
    adapter: str | None = None
    sampling: JSON | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    timings: JSON | None = None
    meta: JSON | None = None


@dataclass(frozen=True)
class Session:
    id: str
    kind: str
    title: str | None
    model: str | None
    created_at: str
    meta: JSON | None
    api_key_label: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Session:
        return cls(
            id=row["id"],
            kind=row["kind"],
            title=row["title"],
            model=row["model"],
            created_at=row["created_at"],
            meta=loads(row["meta"]),
            api_key_label=row["api_key_label"],
        )


@dataclass(frozen=True)
class Message:
    id: str
    session_id: str
    idx: int
    role: str
    content: str
    stage: str | None
    model: str | None
    adapter: str | None
    sampling: JSON | None
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    timings: JSON | None
    meta: JSON | None
    created_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Message:
        return cls(
            id=row["id"],
            session_id=row["session_id"],
            idx=row["idx"],
            role=row["role"],
            content=row["content"],
            stage=row["stage"],
            model=row["model"],
            adapter=row["adapter"],
            sampling=loads(row["sampling"]),
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            finish_reason=row["finish_reason"],
            timings=loads(row["timings"]),
            meta=loads(row["meta"]),
            created_at=row["created_at"],
        )


@dataclass(frozen=True)
class AdapterRecord:
    name: str
    path: Path
    base_model: str | None
    meta: JSON | None
    created_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> AdapterRecord:
        return cls(
            name=row["name"],
            path=Path(row["path"]),
            base_model=row["base_model"],
            meta=loads(row["meta"]),
            created_at=row["created_at"],
        )


@dataclass(frozen=True)
class Node:
    id: str
    tree_id: str
    parent_id: str | None
    text: str
    depth: int
    author: str | None  # 'human' or a model name
    model: str | None
    adapter: str | None
    score: float | None
    meta: JSON | None
    created_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Node:
        return cls(
            id=row["id"],
            tree_id=row["tree_id"],
            parent_id=row["parent_id"],
            text=row["text"],
            depth=row["depth"],
            author=row["author"],
            model=row["model"],
            adapter=row["adapter"],
            score=row["score"],
            meta=loads(row["meta"]),
            created_at=row["created_at"],
        )


@dataclass(frozen=True)
class TreeSummary:
    """One loom tree: its first root node, how many nodes it holds, and when it was started."""

    tree_id: str
    root_id: str | None
    root_text: str | None
    node_count: int
    created_at: str


@dataclass(frozen=True)
class Rating:
    id: int
    target_type: TargetType
    target_id: str
    score: int  # -1 or +1
    reason: str | None
    created_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Rating:
        return cls(
            id=row["id"],
            target_type=row["target_type"],
            target_id=row["target_id"],
            score=row["score"],
            reason=row["reason"],
            created_at=row["created_at"],
        )


@dataclass(frozen=True)
class Preference:
    """One pairwise choice: ``chosen`` was preferred to ``rejected`` as an answer to ``prompt``."""

    id: int
    prompt: str
    chosen: str
    rejected: str
    source: str
    chosen_node_id: str | None
    rejected_node_id: str | None
    meta: JSON | None
    created_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Preference:
        return cls(
            id=row["id"],
            prompt=row["prompt"],
            chosen=row["chosen"],
            rejected=row["rejected"],
            source=row["source"],
            chosen_node_id=row["chosen_node_id"],
            rejected_node_id=row["rejected_node_id"],
            meta=loads(row["meta"]),
            created_at=row["created_at"],
        )


@dataclass(frozen=True)
class Dataset:
    name: str
    path: Path
    kind: str | None
    rows: int | None
    meta: JSON | None
    created_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Dataset:
        return cls(
            name=row["name"],
            path=Path(row["path"]),
            kind=row["kind"],
            rows=row["rows"],
            meta=loads(row["meta"]),
            created_at=row["created_at"],
        )


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    name: str | None
    status: JobStatus
    progress: float | None
    total: float | None
    message: str | None
    params: JSON | None
    result: Any
    error: str | None
    created_at: str
    updated_at: str
    pid: int | None = None
    host: str | None = None

    @property
    def finished(self) -> bool:
        """True once the job has succeeded, failed or been cancelled."""
        return self.status in ("succeeded", "failed", "cancelled")

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"],
            kind=row["kind"],
            name=row["name"],
            status=row["status"],
            progress=row["progress"],
            total=row["total"],
            message=row["message"],
            params=loads(row["params"]),
            result=loads(row["result"]),
            error=row["error"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            pid=row["pid"],
            host=row["host"],
        )
