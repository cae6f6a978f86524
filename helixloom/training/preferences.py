"""Preference pairs as the reward model trains on them: reading, checking and splitting
``{prompt, chosen, rejected}`` rows, and scoring a ranking of them.

Rows are text (strings) or chat (lists of ``{role, content}`` messages); which one decides how a pair
is rendered (``reward_model.encode``).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from helixloom.errors import HelixloomError

Render = Literal["text", "chat"]


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) row indices: a seeded shuffle, ``fraction`` held out (at least one if > 0)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = 0 if fraction <= 0 else max(1, round(n * fraction))
    return sorted(order[held:]), sorted(order[:held])


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _messages(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and _text(m.get("role")) and _text(m.get("content")) for m in value)
    )


@dataclass(frozen=True)
class PreferencePair:
    """One training pair. Text rows hold strings; chat rows hold message lists (prompt may be empty)."""

    prompt: str | list[dict[str, str]]
    chosen: str | list[dict[str, str]]
    rejected: str | list[dict[str, str]]


def preference_pairs(rows: Iterable[Any], source: str = "data") -> tuple[list[PreferencePair], Render]:
    """Check ``{prompt, chosen, rejected}`` rows (prompt optional) and say how they render.

    All rows are text (strings) or all are chat (lists of ``{role, content}`` messages; a string
    chosen/rejected in a chat row is the assistant's answer). Pairs whose two sides are equal teach
    nothing and are dropped.
    """
    pairs: list[PreferencePair] = []
    kinds: set[str] = set()
    dropped = 0
    for n, row in enumerate(rows, 1):
        where = f"{source} row {n}"
        if not isinstance(row, dict):
            raise HelixloomError(f"{where} is not a JSON object", "each row is {prompt, chosen, rejected}")
        missing = [k for k in ("chosen", "rejected") if k not in row]
        if missing:
            raise HelixloomError(
                f"{where} has no {' or '.join(repr(k) for k in missing)}",
                "each row is {prompt, chosen, rejected}",
            )
        prompt = row.get("prompt", "")
        chosen, rejected = row["chosen"], row["rejected"]
        if all(_text(v) for v in (prompt, chosen, rejected)):
            kind = "text"
        elif _messages(prompt) or _messages(chosen) or _messages(rejected):
            kind = "chat"
            for key, value in (("chosen", chosen), ("rejected", rejected)):
                if not (_text(value) or _messages(value)):
                    raise HelixloomError(f"{where}: {key!r} must be a string or a list of messages")
            if not (_messages(prompt) or prompt == ""):
                if not _text(prompt):
                    raise HelixloomError(f"{where}: 'prompt' must be a string or a list of messages")
                prompt = [{"role": "user", "content": prompt}]
        else:
            raise HelixloomError(
                f"{where}: prompt, chosen and rejected must be strings (or lists of chat messages)"
            )
        kinds.add(kind)
        if chosen == rejected:
            dropped += 1
            continue
        if kind == "chat":
            chosen = chosen if _messages(chosen) else [{"role": "assistant", "content": chosen}]
            rejected = rejected if _messages(rejected) else [{"role": "assistant", "content": rejected}]
            prompt = prompt or []
        pairs.append(PreferencePair(prompt, chosen, rejected))
    if len(kinds) > 1:
        raise HelixloomError(f"{source} mixes text rows and chat-message rows", "use one form for all rows")
    if dropped:
        print(f"helixloom: {dropped} pairs with chosen == rejected dropped", file=sys.stderr)
    return pairs, ("chat" if kinds == {"chat"} else "text")


def read_pairs(path: Path) -> list[dict[str, Any]]:
    """Preference rows from a JSONL file."""
    from helixloom import jsonl

    if not path.is_file():
        raise HelixloomError(f"data file {path} does not exist")
    return [row for _, row in jsonl.read(path)]


def pair_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Share of pairs ranked right (a tie counts half)."""
    if not chosen:
        return float("nan")
    right = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True))
    return right / len(chosen)
