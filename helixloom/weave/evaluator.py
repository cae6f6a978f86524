"""The zero-shot yes/no evaluator: a reward read from a model's next-token log-probabilities.

For each question the evaluator fills a template with ``{prompt}``, ``{response}`` and
``{question}`` and reads the model's next token: the score is log P(yes) − log P(no), each side
summed over the tokenizer's variants of the word (" yes", "Yes", ...). Several questions (a rubric
or constitution: text, weight, desired answer) combine into one score: the weighted mean of the
scores, each signed so that the desired answer counts as positive. A question may instead carry
its own whole prompt with ``{prompt}`` and ``{response}`` (a MiniHF constitution principle). All
prompts of a call go to the engine as one batch. The evaluator may be another model, or an adapter
of the same base.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from helixloom.engine import Engine
from helixloom.errors import HelixloomError

YES_WORDS = ("yes", "Yes", "YES", " yes", " Yes", " YES")
NO_WORDS = ("no", "No", "NO", " no", " No", " NO")


def default_template() -> str:
    """MiniHF's evaluator prompt, shipped as ``data/weave/evaluator.txt``."""
    return (resources.files("helixloom") / "data" / "weave" / "evaluator.txt").read_text()


@dataclass(frozen=True)
class Question:
    """One yes/no question of a rubric; ``answer`` is the answer that is good.

    ``template``, when given, is the question's own whole prompt, with ``{prompt}`` and ``{response}``
    and no ``{question}``: it replaces the evaluator's template, and ``text`` only names the question.
    """

    text: str
    weight: float = 1.0
    answer: Literal["yes", "no"] = "yes"
    template: str | None = None

    def __post_init__(self) -> None:
        if not (self.text if self.template is None else self.template).strip():
            raise HelixloomError("an evaluator question is empty", param="question")
        if self.template is not None and "{response}" not in self.template:
            raise HelixloomError(f"question {self.text[:40]!r} has no {{response}}", param="question")
        if not 0 < self.weight < math.inf:  # an infinite weight made every score NaN
            raise HelixloomError(
                f"question weight must be positive and finite: {self.text[:40]!r}", param="question"
            )


class Evaluator:
    """Scores (prompt, response) pairs by asking ``engine`` each question and reading yes/no odds."""

    def __init__(
        self,
        engine: Engine,
        questions: Sequence[Question],
        *,
        template: str | None = None,
        adapter: str | None = None,
    ) -> None:
        if not questions:
            raise HelixloomError("the evaluator needs at least one question", "pass --question 'Is ...?'")
        if not engine.supports_logprobs:
            raise HelixloomError(
                f"the {engine.backend} engine cannot give log-probabilities for the evaluator"
            )
        self.engine = engine
        self.questions = list(questions)
        self.template = template if template is not None else default_template()
        for field in ("{prompt}", "{response}", "{question}"):
            if field not in self.template:
                raise HelixloomError(f"the evaluator template has no {field}", param="template")
        self.adapter = adapter

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """One combined score per (prompt, response): the weighted mean of signed log-odds."""
        total = sum(q.weight for q in self.questions)
        return [
            sum(q.weight * s for q, s in zip(self.questions, row, strict=True)) / total
            for row in self.signed_scores(pairs)
        ]

    def signed_scores(self, pairs: Sequence[tuple[str, str]]) -> list[list[float]]:
        """Per pair, each question's log-odds signed so that its desired answer is positive."""
        if not pairs:
            return []
        prompts = [self.prompt_for(p, r, q) for p, r in pairs for q in self.questions]
        results = self.engine.next_token_logprobs(
            prompts, adapter=self.adapter, top_k=20, candidates=YES_WORDS + NO_WORDS
        )
        n = len(self.questions)
        out = []
        for i in range(len(pairs)):
            row = []
            for j, q in enumerate(self.questions):
                odds = log_odds(results[i * n + j])
                row.append(odds if q.answer == "yes" else -odds)
            out.append(row)
        return out

    def prompt_for(self, prompt: str, response: str, question: Question) -> str:
        """What the engine is asked: the question's own template, or the evaluator's with the question."""
        if question.template is not None:
            return question.template.replace("{prompt}", prompt).replace("{response}", response)
        filled = self.template.replace("{prompt}", prompt).replace("{response}", response)
        return filled.replace("{question}", question.text)


def parse_question(text: str) -> Question:
    """'Is it sad?', 'no:Is it cruel?', '2*Is it sad?' or '0.5*no:Is it long?' as a Question."""
    match = re.match(r"^\s*(?:(\d+(?:\.\d+)?)\*)?(?:(yes|no):)?(.*)$", text, re.S)
    assert match is not None
    weight, answer, body = match.groups()
    return Question(body.strip(), float(weight) if weight else 1.0, answer or "yes")  # type: ignore[arg-type]


def log_odds(result: Any) -> float:
    """log P(yes-set) − log P(no-set) from a ``next_token_logprobs`` result."""
    return _log_odds(result.candidates, [math.exp(t.logprob) for t in result.top])


def _log_odds(candidates: dict[str, float | None], top_probs: list[float]) -> float:
    """log P(yes-set) − log P(no-set). A side none of whose variants was scored (a remote server
    reports only its top tokens) gets the probability mass the listed tokens leave over."""
    yes = [v for w, v in candidates.items() if w in YES_WORDS and v is not None]
    no = [v for w, v in candidates.items() if w in NO_WORDS and v is not None]
    leftover = math.log(max(1.0 - sum(top_probs), 1e-12))
    return (_logsumexp(yes) if yes else leftover) - (_logsumexp(no) if no else leftover)


def _logsumexp(values: list[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))
