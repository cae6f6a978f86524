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
