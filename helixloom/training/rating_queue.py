"""The rating queue of an improve run: pairs of answers waiting for a person (or a simulated user).

Two append-only files under ``HELIXLOOM_HOME/runs/improve/NAME/``: ``queue.jsonl`` (what the loop
asks, one item per line: id, round, prompt, a, b) and ``answers.jsonl`` (what came back: item,
choice a/b/skip, source). A choice also becomes a store preference (``source`` "rating-page" or
"simulated", ``meta`` naming the run and item), which is what the reward learns from. The loop
writes the queue, the server's rating routes write the answers; each line is written in one
``write`` on a file opened for appending, so the two processes never interleave half lines.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from helixloom import paths
from helixloom.errors import HelixloomError

Choice = Literal["a", "b", "skip"]
SOURCES = ("rating-page", "simulated")
_ANSWERING = threading.Lock()  # one answer at a time (this process): see ``answer``
_lock = threading.Lock()


@dataclass(frozen=True)
class QueueItem:
    id: str
    round: int
    prompt: str
    a: str
    b: str


def run_folder(name: str) -> Path:
    return paths.home() / "runs" / "improve" / paths.check_name(name, "run name")


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill; everything before it stands
    return out


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock, path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()


def enqueue(name: str, items: list[QueueItem]) -> None:
    _append(run_folder(name) / "queue.jsonl", [asdict(i) for i in items])


def items(name: str) -> list[QueueItem]:
    return [QueueItem(**r) for r in _read(run_folder(name) / "queue.jsonl")]


def answers(name: str) -> dict[str, dict[str, Any]]:
    """item id -> its answer (the first one counts)."""
    out: dict[str, dict[str, Any]] = {}
    for r in _read(run_folder(name) / "answers.jsonl"):
        out.setdefault(str(r.get("item")), r)
    return out


def pending(name: str, limit: int = 20) -> list[QueueItem]:
    """Queued items nobody has answered yet, oldest first."""
    done = answers(name)
    return [i for i in items(name) if i.id not in done][:limit]


def answer(
    store: Any, name: str, item_id: str, choice: Choice, source: str, *, thumbs: dict[str, str] | None = None
) -> dict[str, Any]:
    """Record a choice on a queued item: the answer line and, unless skipped, a store preference.
    ``thumbs`` ({"a": "up", "b": "down"}) are kept with both."""
    if source not in SOURCES:
        raise HelixloomError(f"source must be one of {', '.join(SOURCES)}", param="source")
    if choice not in ("a", "b", "skip"):
        raise HelixloomError("choice must be a, b or skip", param="choice")
    item = next((i for i in items(name) if i.id == item_id), None)
    if item is None:
        raise HelixloomError(f"no item {item_id} in the queue of {name}", param="item")
    with _ANSWERING:  # the check and the append together: two answers at once gave two preferences
        return _answer(store, name, item, choice, source, thumbs)


def _answer(
    store: Any, name: str, item: QueueItem, choice: str, source: str, thumbs: dict[str, str] | None
) -> dict[str, Any]:
    item_id = item.id
    if item_id in answers(name):
        raise HelixloomError(f"item {item_id} is already answered", param="item")
    preference_id = None
    if choice != "skip":
        chosen, rejected = (item.a, item.b) if choice == "a" else (item.b, item.a)
        meta = {"run": name, "item": item_id, "round": item.round, "thumbs": thumbs or {}}
        preference_id = store.add_preference(item.prompt, chosen, rejected, source=source, meta=meta).id
    row = {
        "item": item_id,
        "choice": choice,
        "source": source,
        "thumbs": thumbs or {},
        "preference_id": preference_id,
    }
    _append(run_folder(name) / "answers.jsonl", [row])
    return row
