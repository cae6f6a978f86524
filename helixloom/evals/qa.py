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

from helixloom import jsonl
from helixloom import prompting as chat
from helixloom.engine import Engine, GenerationRequest, SamplingParams
from helixloom.errors import HelixloomError


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
    requests = []
    for item in items:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": item.question}
        ]
        rendered = chat.render(engine, messages)
        p = params.model_copy(
            update={"stop": (*params.stop, *rendered.stop), "token_healing": rendered.token_healing}
        )
        requests.append(GenerationRequest(rendered.prompt, p, adapter))
    out = []
    for item, result in zip(items, engine.generate(requests), strict=True):
        text = _norm(result.text)
        out.append(QAAnswer(item, result.text.strip(), tuple(f for f in item.facts if _norm(f) in text)))
    return out


def mean_score(answers: Sequence[QAAnswer]) -> float:
    return sum(a.score for a in answers) / len(answers) if answers else 0.0
