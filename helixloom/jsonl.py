"""Reading JSONL files that users write or edit: every bad line is an error naming file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from helixloom.errors import HelixloomError


def read(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line of ``path``."""
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            raise HelixloomError(f"{path} line {n} is not JSON: {exc.msg}") from exc


def read_prompts(path: str | Path, what: str = "prompts") -> list[str]:
    """Prompts from a user file: JSONL rows with a ``prompt`` (or a ``messages`` list whose last user
    message is the prompt), or plain text with one prompt per line. Blank lines are skipped."""
    p = Path(path)
    if not p.is_file():
        raise HelixloomError(f"{what} file {p} does not exist")
    if p.suffix.lower() not in (".jsonl", ".json"):
        return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for n, row in read(p):
        if isinstance(row, dict) and isinstance(row.get("prompt"), str):
            out.append(row["prompt"])
        elif isinstance(row, dict) and isinstance(row.get("messages"), list):
            users = [
                m.get("content") for m in row["messages"] if isinstance(m, dict) and m.get("role") == "user"
            ]
            if not users or not isinstance(users[-1], str):
                raise HelixloomError(f"{p} line {n}: messages has no user message")
            out.append(users[-1])
        else:
            raise HelixloomError(f"{p} line {n}: expected an object with a 'prompt' string (or 'messages')")
    if not out:
        raise HelixloomError(f"{what} file {p} has no prompts")
    return out
