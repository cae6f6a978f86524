"""The HelixNet gate made from the zero-shot yes/no evaluator: a regeneration replaces the answer
it rewrote only when the evaluator likes it better.

Its own layer, above both HelixNet and Weave (which do not import each other)."""

from __future__ import annotations

from helixloom.engine import Engine
from helixloom.helixnet import Gate
from helixloom.weave import Evaluator, Question

GATE_QUESTION = "Is the response a helpful, correct and clear answer to the prompt?"


def evaluator_gate(engine: Engine, *, adapter: str | None = None, question: str = GATE_QUESTION) -> Gate:
    """A gate that asks ``engine`` (with ``adapter``) ``question`` about both answers in one batch
    and returns their scores, log P(yes) - log P(no), as (previous, regeneration)."""
    evaluator = Evaluator(engine, [Question(question)], adapter=adapter)

    def gate(prompt: str, previous: str, regeneration: str) -> tuple[float, float]:
        previous_score, regeneration_score = evaluator.score([(prompt, previous), (prompt, regeneration)])
        return previous_score, regeneration_score

    return gate
