"""Rated examples (thumbs up/down) from a JSONL file or from the store's ratings.

One source of labelled ``(prompt, response, label)`` examples for everything trained from feedback:
the reward head and the tuned evaluator. No torch here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helixloom.errors import HelixloomError

if TYPE_CHECKING:
    from helixloom.store import Store


@dataclass(frozen=True)
class LabelledExample:
    prompt: str
    response: str
    label: int  # 1: thumbs up, 0: thumbs down
    source: str = ""


def labelled_examples(rows: Iterable[Any], source: str = "data") -> list[LabelledExample]:
    """Check ``{prompt, response, label}`` rows (``completion`` is taken for ``response``; label 1 or 0,
    true or false) and return them as examples."""
    out = []
    for n, row in enumerate(rows, 1):
        where = f"{source} row {n}"
        if not isinstance(row, dict):
            raise HelixloomError(f"{where} is not a JSON object", "each row is {prompt, response, label}")
        response = row.get("response", row.get("completion"))
        prompt = row.get("prompt", "")
        if response is None:
            raise HelixloomError(f"{where} has no 'response'", "each row is {prompt, response, label}")
        if "label" not in row:
            raise HelixloomError(f"{where} has no 'label'", "label 1 for thumbs up, 0 for thumbs down")
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise HelixloomError(f"{where}: prompt and response must be strings")
        if not (prompt + response).strip():
            raise HelixloomError(f"{where}: prompt and response are both empty")
        label = row["label"]
        if label not in (0, 1) or isinstance(label, float):  # True/False are 1/0; 1.0 and "1" are refused
            raise HelixloomError(
                f"{where}: label is {label!r}, not 0 or 1", "label 1 for thumbs up, 0 for thumbs down"
            )
        out.append(LabelledExample(prompt, response, int(label), f"{source}:{n}"))
    return out


def read_examples(path: Path) -> list[LabelledExample]:
    """Labelled rows from a JSONL file."""
    from helixloom import jsonl

    if not path.is_file():
        raise HelixloomError(f"data file {path} does not exist")
    return labelled_examples((row for _, row in jsonl.read(path)), source=str(path))


def store_examples(store: Store) -> list[LabelledExample]:
    """Labelled examples from the ratings in the store (the net sign of a target's ratings; ties skip).

    - a rated loom node: the root's text is the prompt, the rest of the branch up to the node the response;
    - a rated assistant message: the last user message before it is the prompt (critiques are skipped);
    - a rated session: its last user message and the answer to it (unless that answer is rated itself).
    """
    from helixloom import loom

    out: list[LabelledExample] = []
    node_net: dict[str, int] = {}
    for r in store.list_ratings("node"):
        node_net[r.target_id] = node_net.get(r.target_id, 0) + r.score
    for node_id, net in sorted(node_net.items()):
        node = store.get_node(node_id)
        if net == 0 or node is None or node.parent_id is None:
            continue
        path = loom.branch(store, node_id)
        response = "".join(n.text for n in path[1:])
        if response:
            out.append(LabelledExample(path[0].text, response, int(net > 0), f"node:{node_id}"))
    seen: set[str] = set()
    for sign in ("up", "down"):
        offset = 0
        while True:
            sessions = store.list_sessions(rating=sign, limit=500, offset=offset)
            if not sessions:
                break
            offset += len(sessions)
            for s in sessions:
                if s.id not in seen:
                    seen.add(s.id)
                    out.extend(_session_examples(store, s.id))
    return out


def _session_examples(store: Store, session_id: str) -> list[LabelledExample]:
    messages = store.get_messages(session_id)
    out = []
    last_user = ""
    rated_answers: set[str] = set()
    for m in messages:
        if m.role == "user":
            last_user = m.content
            continue
        if m.role != "assistant" or m.stage == "critic" or not m.content:
            continue
        net = sum(r.score for r in store.ratings_for("message", m.id))
        if net:
            rated_answers.add(m.id)
            out.append(LabelledExample(last_user, m.content, int(net > 0), f"message:{m.id}"))
    net = sum(r.score for r in store.ratings_for("session", session_id))
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    if net and users:
        answers = [
            m
            for m in messages[users[-1] + 1 :]
            if m.role == "assistant" and m.stage != "critic" and m.content
        ]
        if answers and answers[-1].id not in rated_answers:
            prompt = messages[users[-1]].content
            out.append(LabelledExample(prompt, answers[-1].content, int(net > 0), f"session:{session_id}"))
    return out
