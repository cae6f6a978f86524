"""Pairwise verdicts: is answer A or answer B to a prompt better? Asked in both orders.

MT-bench's ``pair-v2`` prompt (``data/evals/pair-v2.yaml``) shows a question and two answers, A and B;
the judge says ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie). Every pair is asked in *both* orders, to
cancel position bias, and the two verdicts combine as in MT-bench: both orders agree → a win or a
loss; they disagree, or either says C → a tie. Alongside the verdict each pair keeps a soft
preference, P(A better), averaged over both orders (AlpacaEval's preference). Two ways to read a
verdict:

- ``logprobs``: the judge's prompt ends with ``Final verdict: [[`` after the assistant turn begins, and
  the next-token probabilities of A, B and C are read (works on small base models, no sampling; the
  verdict is the most likely letter, P(first better) = P(A) + P(C)/2 over the three);
- ``text``: the judge writes its explanation and the verdict (MT-bench), parsed from the last
  ``[[A]]``/``[[B]]``/``[[C]]``; for engines without log-probabilities. A reply without one is
  *malformed*: counted and reported, never a crash. A pair with a malformed verdict in either order
  has no verdict (``"error"``) and is left out of the win rate.

``"auto"`` picks ``logprobs`` when the engine declares ``supports_logprobs``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from helixloom.engine import Engine
from helixloom.errors import HelixloomError
from helixloom.evals.prompts import Prompt, question_text
from helixloom.evals.templates import JUDGE_MAX_TOKENS, JudgeTemplate, write_judgments

if TYPE_CHECKING:
    from helixloom.engine import NextTokenLogprobs

Choice = Literal["A", "B", "C"]
Winner = Literal["A", "B", "tie", "error"]
JudgeMode = Literal["auto", "logprobs", "text"]

LETTERS: tuple[Choice, ...] = ("A", "B", "C")
# The winner a verdict names when answer A is shown first, and when it is shown second.
SHOWN_FIRST: dict[Choice, Winner] = {"A": "A", "B": "B", "C": "tie"}
SHOWN_SECOND: dict[Choice, Winner] = {"A": "B", "B": "A", "C": "tie"}
# The verdict letters as the next token after "[[", with and without a leading space.
VERDICT_TOKENS = ("A", "B", "C", " A", " B", " C")
PAIR_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
SHORT_VERDICT = re.compile(r"^\s*([ABC])(?:\s|\]|$)")


@dataclass(frozen=True)
class OrderVerdict:
    """The judge's verdict on one ordering of a pair: ``choice`` is the letter (None: malformed),
    ``p_first`` the probability that the answer shown first is better (1, 0 or 0.5 in text mode),
    ``probs`` the normalised A/B/C probabilities (logprobs mode), ``text`` the judge's reply (text mode)."""

    choice: Choice | None
    p_first: float | None
    probs: dict[str, float] | None = None
    text: str = ""

    @property
    def malformed(self) -> bool:
        return self.choice is None

    def to_dict(self) -> dict[str, Any]:
        return {"choice": self.choice, "p_first": self.p_first, "probs": self.probs, "text": self.text}


@dataclass(frozen=True)
class PairVerdict:
    """Answer A against answer B, both orders combined.

    ``winner`` is ``"A"``/``"B"`` when both orders agree, ``"tie"`` when they disagree or either says
    C, ``"error"`` when either order's verdict is malformed. ``preference`` is P(A better) averaged
    over both orders (None on error). ``forward`` shows A first, ``backward`` shows B first; both are
    None when the answers were identical (a tie, not asked).
    """

    winner: Winner
    preference: float | None
    forward: OrderVerdict | None
    backward: OrderVerdict | None

    @property
    def score(self) -> float | None:
        """1 for a win of A, 0 for a loss, 0.5 for a tie, None without a verdict."""
        return {"A": 1.0, "B": 0.0, "tie": 0.5}.get(self.winner)

    @property
    def consistent(self) -> bool | None:
        """Whether both orders named the same winner (or both a tie): the judge looked at the answers,
        not at their positions. None when the pair was not asked in both orders or a verdict was
        unreadable."""
        f, b = self.forward, self.backward
        if f is None or b is None or f.choice is None or b.choice is None:
            return None
        return SHOWN_FIRST[f.choice] == SHOWN_SECOND[b.choice]

    @property
    def malformed(self) -> int:
        """How many of the two order verdicts could not be read."""
        return sum(1 for v in (self.forward, self.backward) if v is not None and v.malformed)

    @classmethod
    def combine(cls, forward: OrderVerdict, backward: OrderVerdict) -> PairVerdict:
        if forward.choice is None or backward.choice is None:
            return cls("error", None, forward, backward)
        first, second = SHOWN_FIRST[forward.choice], SHOWN_SECOND[backward.choice]
        winner: Winner = first if first == second else "tie"
        assert forward.p_first is not None and backward.p_first is not None
        return cls(winner, (forward.p_first + 1.0 - backward.p_first) / 2, forward, backward)

    def to_dict(self) -> dict[str, Any]:
        return {
            "winner": self.winner,
            "preference": self.preference,
            "forward": self.forward.to_dict() if self.forward else None,
            "backward": self.backward.to_dict() if self.backward else None,
        }


def letter_probs(result: NextTokenLogprobs) -> dict[str, float] | None:
    """P(A), P(B), P(C) renormalised over the three, from the asked candidates and the top tokens
    (a remote server reports only its top tokens); None when no verdict letter was scored."""
    scored: dict[str, float] = {t.token: t.logprob for t in result.top}
    scored.update({tok: lp for tok, lp in result.candidates.items() if lp is not None})
    per_letter: dict[str, list[float]] = {letter: [] for letter in LETTERS}
    for tok, lp in scored.items():
        key = tok.strip().rstrip("]").strip()
        if key in per_letter and lp > -math.inf:
            per_letter[key].append(lp)
    values = [lp for lps in per_letter.values() for lp in lps]
    if not values:
        return None
    top = max(values)
    mass = {letter: sum(math.exp(lp - top) for lp in lps) for letter, lps in per_letter.items()}
    total = sum(mass.values())
    return {letter: m / total for letter, m in mass.items()}


def parse_pair_verdict(text: str) -> Choice | None:
    """The last ``[[A]]``, ``[[B]]`` or ``[[C]]`` in a judge's reply (the verdict follows the
    explanation), or None when there is none."""
    found = PAIR_VERDICT.findall(text)
    return found[-1] if found else None


class PairwiseJudge:
    """Compares answer A with answer B to the same prompt, asking ``engine`` in both orders.

    ``mode``: ``"logprobs"`` reads the verdict from next-token probabilities, ``"text"`` generates it
    (greedy) and parses it, ``"auto"`` takes logprobs when the engine supports them. ``explain=False``
    (text mode) skips MT-bench's explanation: the verdict prefix is put in the judge's mouth and only a
    few tokens are generated. ``adapter`` is an adapter already loaded on ``engine`` (a tuned judge).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        adapter: str | None = None,
        template: JudgeTemplate | str | None = None,
        mode: JudgeMode = "auto",
        explain: bool = True,
        max_tokens: int = JUDGE_MAX_TOKENS,
    ) -> None:
        if mode not in ("auto", "logprobs", "text"):
            raise HelixloomError(f"unknown judge mode {mode!r}", "use auto, logprobs or text", param="mode")
        if mode == "logprobs" and not engine.supports_logprobs:
            raise HelixloomError(
                f"the {engine.backend} engine cannot give log-probabilities for the judge",
                "use --judge-mode text",
            )
        self.engine = engine
        self.adapter = adapter
        self.template = JudgeTemplate.of(template, "pair")
        self.mode: Literal["logprobs", "text"] = (
            ("logprobs" if engine.supports_logprobs else "text") if mode == "auto" else mode
        )
        self.explain = explain
        self.max_tokens = max_tokens

    def compare(
        self, prompts: Sequence[Prompt], answers_a: Sequence[str], answers_b: Sequence[str]
    ) -> list[PairVerdict]:
        """One verdict per (prompt, A, B). All pairs go to the engine together: one call per order.
        Identical answers are a tie without asking."""
        if not len(prompts) == len(answers_a) == len(answers_b):
            raise HelixloomError(
                f"{len(prompts)} prompts, {len(answers_a)} answers A and {len(answers_b)} answers B"
            )
        questions = [question_text(p) for p in prompts]
        asked = [
            i for i, (a, b) in enumerate(zip(answers_a, answers_b, strict=True)) if a.strip() != b.strip()
        ]
        q = [questions[i] for i in asked]
        a = [answers_a[i] for i in asked]
        b = [answers_b[i] for i in asked]
        forward = self.judge_order(q, a, b)
        backward = self.judge_order(q, b, a)
        out = [PairVerdict("tie", 0.5, None, None)] * len(prompts)
        for i, f, r in zip(asked, forward, backward, strict=True):
            out[i] = PairVerdict.combine(f, r)
        return out

    def judge_order(
        self, questions: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]
    ) -> list[OrderVerdict]:
        """The verdicts with ``firsts`` shown as assistant A, in one engine call."""
        if not questions:
            return []
        fields = [
            {"question": q, "answer_a": first, "answer_b": second}
            for q, first, second in zip(questions, firsts, seconds, strict=True)
        ]
        if self.mode == "logprobs":
            prefix = self.template.verdict_prefix
            results = self.engine.next_token_logprobs(
                [self.template.render(self.engine, f).prompt + prefix for f in fields],
                adapter=self.adapter,
                top_k=20,
                candidates=VERDICT_TOKENS,
            )
            return [_order_from_probs(letter_probs(res)) for res in results]
        texts = write_judgments(
            self.engine,
            self.template,
            fields,
            adapter=self.adapter,
            explain=self.explain,
            max_tokens=self.max_tokens,
        )
        return [_order_from_text(text, self.template.verdict_prefix, self.explain) for text in texts]


def _order_from_text(text: str, prefix: str, explained: bool) -> OrderVerdict:
    choice = parse_pair_verdict(text)
    if choice is None and not explained:  # the few tokens after the prefix: "A]]", " B", ...
        match = SHORT_VERDICT.match(text[len(prefix) :])
        choice = match.group(1) if match else None  # type: ignore[assignment]
    p_first = None if choice is None else {"A": 1.0, "B": 0.0, "C": 0.5}[choice]
    return OrderVerdict(choice, p_first, None, text)


def _order_from_probs(probs: dict[str, float] | None) -> OrderVerdict:
    if probs is None:
        return OrderVerdict(None, None, None)
    choice: Choice = max(LETTERS, key=lambda letter: probs[letter])
    return OrderVerdict(choice, probs["A"] + probs["C"] / 2, probs)
