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


def read_prompts(path: str | Path, what: str = "prompts", *, chat: bool = False) -> list[Any]:
    """Prompts from a user file: JSONL rows with a ``prompt`` (or ``instruction``) string or a
    ``messages`` list ending with a user message, or plain text with one prompt per non-blank line.

    With ``chat`` a ``messages`` row stays a list of ``{role, content}``; without it, a row whose
    messages are one user message (after an optional system message) becomes that message's text.
    """
    file = Path(path)
    if not file.is_file():
        raise HelixloomError(f"{what} file {file} does not exist")
    prompts: list[Any] = []
    if file.suffix.lower() in (".jsonl", ".json"):
        for n, row in read(file):
            if not isinstance(row, dict):
                raise HelixloomError(f"{file} line {n} is not a JSON object")
            text = row.get("prompt", row.get("instruction"))
            if isinstance(text, str) and text.strip():
                prompts.append(text)
                continue
            messages = row.get("messages")
            if isinstance(messages, list) and messages:
                ok = all(
                    isinstance(m, dict)
                    and m.get("role") in ("system", "user", "assistant")
                    and isinstance(m.get("content"), str)
                    for m in messages
                )
                if not ok or messages[-1]["role"] != "user":
                    raise HelixloomError(
                        f"{file} line {n}: messages must be {{role, content}} objects ending with a user "
                        "message"
                    )
                clean = [{"role": m["role"], "content": m["content"]} for m in messages]
                if chat:
                    prompts.append(clean)
                elif [m["role"] for m in clean if m["role"] != "system"] == ["user"]:
                    prompts.append(clean[-1]["content"])
                else:
                    raise HelixloomError(f"{file} line {n}: multi-turn prompts are not supported here")
                continue
            raise HelixloomError(f"{file} line {n} needs a non-empty 'prompt' string or a 'messages' list")
    else:
        prompts.extend(line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip())
    if not prompts:
        raise HelixloomError(f"{what} file {file} has no prompts")
    return prompts
