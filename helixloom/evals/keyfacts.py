"""Key-fact QA evaluation: does the answer contain the facts it should? Before and after a fine-tune.

A question file is JSONL, one ``{"question": ..., "facts": ["teal", "six legs"]}`` per line. An
answer scores the share of its facts that appear in it (case-insensitive, whitespace-normalised);
the report gives the mean per model (base, and base + adapter), so users see what a fine-tune learned.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helixloom import jsonl
from helixloom.engine import Engine, SamplingParams
from helixloom.errors import HelixloomError
from helixloom.evals import prompts


@dataclass(frozen=True)
class QAItem:
    question: str
    facts: tuple[str, ...]


@dataclass(frozen=True)
class QAAnswer:
    item: QAItem
    answer: str
    found: tuple[str, ...]

    @property
    def score(self) -> float:
        return len(self.found) / len(self.item.facts)


def load(path: str | Path) -> list[QAItem]:
    """Read a question file; every line must have a question and at least one fact."""
    file = Path(path)
    if not file.is_file():
        raise HelixloomError(f"question file {file} does not exist")
    items = []
    for n, row in jsonl.read(file):
        facts = row.get("facts") if isinstance(row, dict) else None
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not facts:
            raise HelixloomError(f"{file} line {n} needs a question and a non-empty facts list")
        items.append(QAItem(row["question"], tuple(str(f) for f in facts)))
    if not items:
        raise HelixloomError(f"{file} has no questions")
    return items


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def answer(
    engine: Engine,
    items: Sequence[QAItem],
    params: SamplingParams,
    *,
    adapter: str | None = None,
    system: str | None = None,
) -> list[QAAnswer]:
    """Ask every question (one batch) and check each answer for its facts."""
    texts = prompts.answer(engine, [item.question for item in items], params, adapter=adapter, system=system)
    return [
        QAAnswer(item, text, tuple(f for f in item.facts if _norm(f) in _norm(text)))
        for item, text in zip(items, texts, strict=True)
    ]


def mean_score(answers: Sequence[QAAnswer]) -> float:
    return sum(a.score for a in answers) / len(answers) if answers else 0.0


@dataclass(frozen=True)
class Comparison:
    """The same questions answered by the base model (``before``) and with the adapter (``after``),
    in the same order."""

    before: list[QAAnswer]
    after: list[QAAnswer]

    @property
    def base_score(self) -> float:
        return mean_score(self.before)

    @property
    def adapter_score(self) -> float:
        return mean_score(self.after)

    def to_dict(self) -> dict[str, Any]:
        """The report ``helixloom eval qa --json`` prints: the scores, then every answer pair."""
        rows = [
            {
                "question": b.item.question,
                "facts": list(b.item.facts),
                "base": b.answer,
                "base_found": list(b.found),
                "adapter": a.answer,
                "adapter_found": list(a.found),
            }
            for b, a in zip(self.before, self.after, strict=True)
        ]
        return {
            "questions": len(self.before),
            "base_score": self.base_score,
            "adapter_score": self.adapter_score,
            "answers": rows,
        }
