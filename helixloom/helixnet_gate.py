"""The HelixNet gate made from the zero-shot yes/no evaluator: a regeneration replaces the answer
it rewrote only when the evaluator likes it better.

Its own layer, above both HelixNet and Weave (which do not import each other). The question the
evaluator is asked is data: ``data/helixnet/gate_question.txt``."""

from __future__ import annotations

from functools import cache
from importlib import resources

from helixloom.engine import Engine
from helixloom.helixnet import Gate
from helixloom.weave import Evaluator, Question


@cache
def gate_question() -> str:
    """The gate's yes/no question, as shipped in ``data/helixnet/gate_question.txt``."""
    return (resources.files("helixloom") / "data" / "helixnet" / "gate_question.txt").read_text().strip()


def evaluator_gate(engine: Engine, *, adapter: str | None = None, question: str | None = None) -> Gate:
    """A gate that asks ``engine`` (with ``adapter``) ``question`` (default: ``gate_question()``)
    about both answers in one batch and returns their scores, log P(yes) - log P(no), as
    (previous, regeneration)."""
    evaluator = Evaluator(engine, [Question(question or gate_question())], adapter=adapter)

    def gate(prompt: str, previous: str, regeneration: str) -> tuple[float, float]:
        previous_score, regeneration_score = evaluator.score([(prompt, previous), (prompt, regeneration)])
        return previous_score, regeneration_score

    return gate
