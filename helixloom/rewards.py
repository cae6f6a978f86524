"""Rewards: one interface over every way helixloom scores a response to a prompt.

A reward maps (prompt, response) pairs to floats, higher is better. ``score_group`` scores the K
responses to one prompt together; pointwise rewards score them one by one, a pairwise judge compares
them with each other.

Here are the interface and the rewards that need no training code: a Python function, the zero-shot
yes/no evaluator, and MiniHF's constitutions. Trained rewards (``helixloom.training.reward_model``,
``helixloom.training.reward_head``) and the pairwise judge (``helixloom.evals``) implement ``Reward``
where they live; ``helixloom.training.reward_spec`` builds any of them from a spec string.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from helixloom.errors import HelixloomError

if TYPE_CHECKING:
    from helixloom.engine import Engine
    from helixloom.weave.evaluator import Evaluator


class Reward(ABC):
    """Scores responses; higher is better. Scores of one reward are comparable with each other."""

    name: str = "reward"

    @abstractmethod
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One score per (prompt, response) pair."""

    def score_group(self, prompt: str, responses: Sequence[str]) -> list[float]:
        """Scores for several responses to the same prompt (a pairwise reward compares them)."""
        return self.score([prompt] * len(responses), responses)


def _check_lengths(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise HelixloomError(f"{len(prompts)} prompts but {len(responses)} responses")


class FunctionReward(Reward):
    """A Python function ``f(prompts, responses) -> list[float]`` as a reward."""

    def __init__(self, fn: Callable[[list[str], list[str]], Sequence[float]], name: str = "function") -> None:
        self.fn = fn
        self.name = name

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        _check_lengths(prompts, responses)
        if not prompts:
            return []
        out = [float(x) for x in self.fn(list(prompts), list(responses))]
        if len(out) != len(prompts):
            raise HelixloomError(f"reward function {self.name} returned {len(out)} scores for {len(prompts)}")
        if any(math.isnan(x) for x in out):
            raise HelixloomError(f"reward function {self.name} returned NaN")
        return out


class EvaluatorReward(Reward):
    """The yes/no evaluator as a reward; ``combine`` is how several questions become one score."""

    def __init__(
        self, evaluator: Evaluator, *, combine: Literal["mean", "softmin"] = "mean", name: str = ""
    ) -> None:
        self.evaluator = evaluator
        self.combine = combine
        self.name = name or "evaluator"

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        _check_lengths(prompts, responses)
        pairs = list(zip(prompts, responses, strict=True))
        if self.combine == "mean":
            return self.evaluator.score(pairs)
        signed = self.evaluator.signed_scores(pairs)
        weights = [q.weight for q in self.evaluator.questions]
        return [soft_minimum(row, weights) for row in signed]


def soft_minimum(scores: Sequence[float], weights: Sequence[float], tau: float = 1.0) -> float:
    """MiniHF's RLAIF combination: ``-tau * log(sum_i w_i exp(-s_i / tau))`` with weights normalised.

    Dominated by the worst-satisfied principle, so one badly failed principle cannot be bought back
    by the others; equals the plain score when there is one principle.
    """
    total = sum(weights)
    terms = [math.log(w / total) - s / tau for s, w in zip(scores, weights, strict=True)]
    m = max(terms)
    return -tau * (m + math.log(sum(math.exp(t - m) for t in terms)))


# ---------------------------------------------------------------------------- constitutions


@dataclass(frozen=True)
class Constitution:
    """MiniHF's constitution: a preamble and principles, each a yes/no prompt with weight and answer.

    File format: ``==[PREAMBLE]==`` then a text, then one section per principle headed
    ``==[Principle: NAME; Weight: 1.0; Answer: Yes]==`` whose body may use ``{preamble}``,
    ``{prompt}`` and ``{response}``.
    """

    preamble: str
    principles: tuple[Principle, ...]

    @classmethod
    def parse(cls, text: str, source: str = "constitution") -> Constitution:
        parts = re.split(r"==\[(.+?)\]==", text)
        # parts: [before, header1, body1, header2, body2, ...]
        preamble = ""
        principles = []
        for i in range(1, len(parts), 2):
            header, body = parts[i].strip(), parts[i + 1].strip("\n")
            if header.upper() == "PREAMBLE":
                preamble = body.strip()
                continue
            fields: dict[str, str] = {}
            for item in header.split(";"):
                if ":" not in item:
                    raise HelixloomError(f"{source}: header [{header}] has an item without 'name: value'")
                key, value = item.split(":", 1)
                fields[key.strip().lower()] = value.strip()
            if "principle" not in fields:
                raise HelixloomError(f"{source}: header [{header}] names no Principle")
            try:
                weight = float(fields.get("weight", "1"))
            except ValueError:
                raise HelixloomError(
                    f"{source}: principle {fields['principle']!r} has a bad Weight"
                ) from None
            answer = fields.get("answer", "yes").lower()
            if answer not in ("yes", "no"):
                raise HelixloomError(f"{source}: principle {fields['principle']!r}: Answer must be Yes or No")
            if not weight > 0:
                raise HelixloomError(f"{source}: principle {fields['principle']!r}: Weight must be positive")
            if "{response}" not in body:
                raise HelixloomError(f"{source}: principle {fields['principle']!r} has no {{response}}")
            principles.append(Principle(fields["principle"], body, weight, answer))  # type: ignore[arg-type]
        if not principles:
            raise HelixloomError(
                f"{source}: no principles (sections headed ==[Principle: ...; Weight: ...]==)"
            )
        return cls(preamble, tuple(principles))

    @classmethod
    def load(cls, path: str | Path) -> Constitution:
        p = Path(path)
        if not p.is_file():
            raise HelixloomError(f"constitution file {p} does not exist")
        return cls.parse(p.read_text(encoding="utf-8"), source=str(p))

    @classmethod
    def default(cls) -> Constitution:
        """The built-in helpfulness constitution (``data/rewards/helpful.constitution``)."""
        text = (resources.files("helixloom") / "data" / "rewards" / "helpful.constitution").read_text()
        return cls.parse(text, source="helpful.constitution")


@dataclass(frozen=True)
class Principle:
    name: str
    template: str
    weight: float
    answer: Literal["yes", "no"]


class ConstitutionReward(EvaluatorReward):
    """Each principle's yes/no log-odds, signed by its desired answer, combined by weighted soft-min.

    The principles are asked as evaluator questions that carry their own prompts, so the evaluator
    computes the log-odds here as for any rubric.
    """

    def __init__(self, engine: Engine, constitution: Constitution, *, adapter: str | None = None) -> None:
        from helixloom.weave.evaluator import Evaluator, Question

        if not engine.supports_logprobs:
            raise HelixloomError(
                f"the {engine.backend} engine cannot give log-probabilities for a constitution"
            )
        questions = [
            Question(
                p.name, p.weight, p.answer, template=p.template.replace("{preamble}", constitution.preamble)
            )
            for p in constitution.principles
        ]
        super().__init__(
            Evaluator(engine, questions, adapter=adapter), combine="softmin", name="constitution"
        )
        self.constitution = constitution

    def principle_scores(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[float]]:
        """Per pair, each principle's signed log-odds (positive means the desired answer)."""
        _check_lengths(prompts, responses)
        return self.evaluator.signed_scores(list(zip(prompts, responses, strict=True)))
