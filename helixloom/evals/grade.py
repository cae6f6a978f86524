"""Single-answer grading: a judge rates each answer 1–10 (MT-bench ``single-v1``).

The rating is parsed from ``[[n]]`` (fallback ``[n]``); a reply without a rating in range is
malformed (rating −1) and left out of the mean.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from helixloom.engine import Engine, SamplingParams
from helixloom.errors import HelixloomError
from helixloom.evals.prompts import Progress, Prompt, answer, in_batches, question_text
from helixloom.evals.templates import JUDGE_MAX_TOKENS, JudgeTemplate, write_judgments

RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")
MIN_RATING, MAX_RATING = 1.0, 10.0


def parse_rating(text: str) -> float:
    """MT-bench's rating parse: the last ``[[n]]``, else the last ``[n]``; −1 when there is none or it
    lies outside 1–10."""
    found = RATING.findall(text) or RATING_FALLBACK.findall(text)
    if not found:
        return -1.0
    rating = float(found[-1])
    return rating if MIN_RATING <= rating <= MAX_RATING else -1.0


@dataclass(frozen=True)
class Grade:
    rating: float  # 1–10, or −1 when the judge's reply held no rating
    text: str

    @property
    def malformed(self) -> bool:
        return self.rating < 0

    def to_dict(self) -> dict[str, Any]:
        return {"rating": self.rating, "malformed": self.malformed, "text": self.text}


@dataclass(frozen=True)
class GradeReport:
    count: int
    malformed: int
    mean: float | None  # over the ratings that could be read

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "malformed": self.malformed, "mean": self.mean}


def grade_report(grades: Sequence[Grade]) -> GradeReport:
    valid = [g.rating for g in grades if not g.malformed]
    return GradeReport(len(grades), len(grades) - len(valid), sum(valid) / len(valid) if valid else None)


class Grader:
    """Rates each answer 1–10 with MT-bench's ``single-v1`` prompt (greedy, one batch per call).

    ``explain=False`` puts the rating prefix in the judge's mouth and generates a few tokens only.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        adapter: str | None = None,
        template: JudgeTemplate | str | None = None,
        explain: bool = True,
        max_tokens: int = JUDGE_MAX_TOKENS,
    ) -> None:
        self.engine = engine
        self.adapter = adapter
        self.template = JudgeTemplate.of(template, "single")
        self.explain = explain
        self.max_tokens = max_tokens

    def grade(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> list[Grade]:
        if len(prompts) != len(answers):
            raise HelixloomError(f"{len(prompts)} prompts but {len(answers)} answers")
        if not prompts:
            return []
        texts = write_judgments(
            self.engine,
            self.template,
            [{"question": question_text(p), "answer": a} for p, a in zip(prompts, answers, strict=True)],
            adapter=self.adapter,
            explain=self.explain,
            max_tokens=self.max_tokens,
        )
        return [Grade(parse_rating(text), text) for text in texts]


@dataclass(frozen=True)
class GradeRow:
    prompt: str
    answer: str
    grade: Grade

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "answer": self.answer, **self.grade.to_dict()}


@dataclass(frozen=True)
class GradeEvaluation:
    report: GradeReport
    rows: list[GradeRow]

    def to_dict(self) -> dict[str, Any]:
        return {"report": self.report.to_dict(), "rows": [r.to_dict() for r in self.rows]}


def evaluate_grades(
    model: Engine,
    prompts: Sequence[Prompt],
    grader: Grader,
    params: SamplingParams,
    *,
    adapter: str | None = None,
    system: str | None = None,
    batch_size: int = 8,
    on_progress: Progress | None = None,
) -> GradeEvaluation:
    """Answer every prompt with the model and grade each answer 1–10 (MT-bench single grading)."""
    if not prompts:
        raise HelixloomError("no prompts to evaluate")
    rows: list[GradeRow] = []
    for chunk in in_batches(prompts, batch_size, on_progress):
        answers = answer(model, chunk, params, adapter=adapter, system=system)
        for p, a, g in zip(chunk, answers, grader.grade(chunk, answers), strict=True):
            rows.append(GradeRow(question_text(p), a, g))
    return GradeEvaluation(grade_report([r.grade for r in rows]), rows)
