"""Verifiable instructions, in the manner of IFEval: prompts whose answers code can check.

Each prompt carries one or more ``Check``s (a word limit, a required word, a bullet count, all
lowercase, a JSON object with given keys, an ending phrase...). ``Check.failure(text)`` says what an
answer got wrong, in words a critique can use; ``strict_accuracy`` is the share of answers that pass
every check of their prompt. The built-in prompts (``data/evals/instructions.jsonl``) are made from
templates with a fixed seed by ``generate``, split into ``train`` and ``heldout``; the held-out split
is never trained on.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from helixloom import jsonl
from helixloom.errors import HelixloomError

SPLITS = ("train", "heldout")
_WORD = re.compile(r"[A-Za-z0-9']+")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")


def words(text: str) -> list[str]:
    """The words of ``text`` (runs of letters, digits and apostrophes)."""
    return _WORD.findall(text)


def sentences(text: str) -> int:
    """How many sentences ``text`` has: runs ending in . ! or ?, and a last one without."""
    parts = [p for p in _SENTENCE_END.split(text.strip()) if words(p)]
    return len(parts)


def bullets(text: str) -> int:
    """Lines that start with a markdown bullet (``-``, ``*`` or ``•`` and a space)."""
    return sum(1 for line in text.splitlines() if re.match(r"\s*[-*•]\s+\S", line))


def json_object(text: str) -> dict[str, Any] | None:
    """The answer as a JSON object (a ```json fence around it is allowed), or None."""
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.DOTALL)
    if fenced:
        body = fenced.group(1)
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class Check:
    """One verifiable instruction: its ``kind`` and argument (a number, a word, a phrase, keys)."""

    kind: str
    arg: Any = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise HelixloomError(f"unknown check {self.kind!r}", f"checks are {', '.join(KINDS)}")

    @property
    def instruction(self) -> str:
        """The instruction as a prompt states it."""
        return KINDS[self.kind][0].format(arg=_show(self.arg))

    def failure(self, text: str) -> str | None:
        """What ``text`` got wrong against this check, as a sentence; None when it passes."""
        return KINDS[self.kind][1](self.arg, text.strip())

    def passes(self, text: str) -> bool:
        return self.failure(text) is None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "arg": self.arg}


def _show(arg: Any) -> str:
    return ", ".join(f'"{a}"' for a in arg) if isinstance(arg, list) else str(arg)


def _max_words(n: int, t: str) -> str | None:
    got = len(words(t))
    return None if got <= n else f"It has {got} words; the instruction allows at most {n}."


def _min_words(n: int, t: str) -> str | None:
    got = len(words(t))
    return None if got >= n else f"It has {got} words; the instruction asks for at least {n}."


def _max_sentences(n: int, t: str) -> str | None:
    got = sentences(t)
    return None if got <= n else f"It has {got} sentences; the instruction allows at most {n}."


def _include(w: str, t: str) -> str | None:
    found = w.lower() in (x.lower() for x in words(t))
    return None if found else f'It does not use the word "{w}", which the instruction requires.'


def _exclude(w: str, t: str) -> str | None:
    found = w.lower() in (x.lower() for x in words(t))
    return f'It uses the word "{w}", which the instruction forbids.' if found else None


def _bullets(n: int, t: str) -> str | None:
    got = bullets(t)
    return None if got == n else f"It has {got} bullet points; the instruction asks for exactly {n}."


def _lowercase(_: Any, t: str) -> str | None:
    if not words(t):
        return "It is empty."
    return None if t == t.lower() else "It has capital letters; the instruction asks for lowercase only."


def _uppercase(_: Any, t: str) -> str | None:
    if not words(t):
        return "It is empty."
    return None if t == t.upper() else "It has lowercase letters; the instruction asks for capitals only."


def _json_keys(keys: list[str], t: str) -> str | None:
    value = json_object(t)
    if value is None:
        return "It is not a JSON object, which the instruction asks for."
    missing = [k for k in keys if k not in value]
    return f"Its JSON object lacks the keys {_show(missing)}." if missing else None


def _ends_with(phrase: str, t: str) -> str | None:
    ok = t.rstrip().rstrip(".!").endswith(phrase.rstrip(".!"))
    return None if ok else f'It does not end with the phrase "{phrase}", as the instruction asks.'


def _starts_with(w: str, t: str) -> str | None:
    first = words(t)[:1]
    ok = bool(first) and first[0].lower() == w.lower()
    return None if ok else f'It does not start with the word "{w}", as the instruction asks.'


def _no_commas(_: Any, t: str) -> str | None:
    return f"It uses {t.count(',')} commas; the instruction forbids commas." if "," in t else None


# kind -> (instruction template, failure(arg, text)). A table, not classes: a check is data.
KINDS: dict[str, tuple[str, Any]] = {
    "max_words": ("Answer in at most {arg} words.", _max_words),
    "min_words": ("Answer in at least {arg} words.", _min_words),
    "max_sentences": ("Answer in at most {arg} sentences.", _max_sentences),
    "include_word": ('Use the word "{arg}" in your answer.', _include),
    "exclude_word": ('Do not use the word "{arg}".', _exclude),
    "bullets": (
        "Answer with exactly {arg} bullet points, each on its own line starting with '- '.",
        _bullets,
    ),
    "lowercase": ("Write your whole answer in lowercase letters.", _lowercase),
    "uppercase": ("Write your whole answer in capital letters.", _uppercase),
    "json_keys": ("Answer with a JSON object only, with the keys {arg}.", _json_keys),
    "ends_with": ('End your answer with the exact phrase "{arg}"', _ends_with),
    "starts_with": ('Start your answer with the word "{arg}".', _starts_with),
    "no_commas": ("Do not use any commas.", _no_commas),
}


@dataclass(frozen=True)
class InstructionPrompt:
    """A prompt (the task and its instructions, as the model sees it) and the checks its answer meets."""

    id: str
    prompt: str
    checks: tuple[Check, ...]
    split: str = "train"

    def failures(self, text: str) -> list[str]:
        """What ``text`` got wrong, one sentence per failed check (empty: it passes them all)."""
        return [f for c in self.checks if (f := c.failure(text)) is not None]

    def passes(self, text: str) -> bool:
        return not self.failures(text)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "split": self.split,
            "prompt": self.prompt,
            "checks": [c.as_dict() for c in self.checks],
        }


def critique(prompt: InstructionPrompt, answer: str) -> str:
    """The verifier's critique of ``answer``: what it got wrong, or that it meets every instruction."""
    failed = prompt.failures(answer)
    if not failed:
        return "The response follows every instruction. Keep it as it is."
    return "The response does not follow the instructions. " + " ".join(failed) + " Fix these."


@dataclass(frozen=True)
class Accuracy:
    """Strict accuracy: the share of answers passing all their checks, with its standard error."""

    passed: int
    total: int

    @property
    def value(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def stderr(self) -> float:
        p = self.value
        return math.sqrt(p * (1 - p) / self.total) if self.total else 0.0


def strict_accuracy(prompts: Sequence[InstructionPrompt], answers: Sequence[str]) -> Accuracy:
    """How many of ``answers`` (one per prompt, in order) pass every check of their prompt."""
    if len(prompts) != len(answers):
        raise HelixloomError(f"{len(prompts)} prompts but {len(answers)} answers")
    return Accuracy(sum(p.passes(a) for p, a in zip(prompts, answers, strict=True)), len(prompts))


# ------------------------------------------------------------------------------------------ data

BUILTIN = "instructions.jsonl"


def load(path: str | Path | None = None, split: str | None = None) -> list[InstructionPrompt]:
    """Instruction prompts from a JSONL file (rows ``{id, prompt, checks: [{kind, arg}], split}``), the
    built-in set when ``path`` is None; only ``split`` when given."""
    if split is not None and split not in SPLITS:
        raise HelixloomError(f"unknown split {split!r}", f"splits are {', '.join(SPLITS)}")
    file = Path(path) if path is not None else None
    if file is None:
        text_file = resources.files("helixloom") / "data" / "evals" / BUILTIN
        file = Path(str(text_file))
    if not file.is_file():
        raise HelixloomError(f"instruction prompts file {file} does not exist")
    out = []
    for n, row in jsonl.read(file):
        try:
            checks = tuple(Check(c["kind"], c.get("arg")) for c in row["checks"])
            item = InstructionPrompt(str(row.get("id", n)), row["prompt"], checks, row.get("split", "train"))
        except (KeyError, TypeError) as exc:
            raise HelixloomError(f"{file} line {n}: expected prompt and checks [{{kind, arg}}]") from exc
        if split is None or item.split == split:
            out.append(item)
    return out


_TOPICS = [
    "the ocean", "volcanoes", "honey bees", "the moon", "bicycles", "coffee", "rain", "libraries",
    "chess", "bread", "trees", "the internet", "music", "winter", "cats", "dogs", "mountains",
    "the sun", "rivers", "trains", "gardens", "birds", "clocks", "paper", "fire", "salt", "snow",
    "cities", "boats", "friendship", "maps", "apples", "whales", "deserts", "stars", "tea",
]  # fmt: skip
_TASKS = [
    "Describe {t}.",
    "Write a short note about {t}.",
    "Tell me about {t}.",
    "Explain why people like {t}.",
]
_WORDS = ["blue", "simple", "water", "light", "small", "green", "happy", "old", "quiet", "warm"]
_ENDINGS = ["That is all.", "The end.", "Thank you."]
_STARTS = ["Yes", "Today", "Once", "Well"]


def _random_check(rng: random.Random) -> Check:
    kind = rng.choice(sorted(KINDS))
    arg: Any = None
    if kind == "max_words":
        arg = rng.choice([10, 15, 20, 30])
    elif kind == "min_words":
        arg = rng.choice([5, 10, 20])
    elif kind == "max_sentences":
        arg = rng.choice([1, 2, 3])
    elif kind in ("include_word", "exclude_word"):
        arg = rng.choice(_WORDS)
    elif kind == "bullets":
        arg = rng.choice([2, 3])
    elif kind == "json_keys":
        arg = rng.sample(["name", "color", "size", "reason"], 2)
    elif kind == "ends_with":
        arg = rng.choice(_ENDINGS)
    elif kind == "starts_with":
        arg = rng.choice(_STARTS)
    return Check(kind, arg)


_CLASH = {
    frozenset(pair)
    for pair in [
        ("lowercase", "uppercase"),
        ("min_words", "max_words"),
        ("min_words", "max_sentences"),
        ("ends_with", "lowercase"),  # the endings have capitals
        ("ends_with", "uppercase"),
    ]
}


def generate(n: int = 400, *, heldout: float = 0.25, seed: int = 0) -> list[InstructionPrompt]:
    """``n`` prompts from templates (a task about a topic and one or two checks), seeded; a fixed share
    marked ``heldout``, the rest ``train``. Contradictory pairs of checks are never drawn together."""
    rng = random.Random(seed)
    out: list[InstructionPrompt] = []
    for i in range(n):
        task = rng.choice(_TASKS).format(t=rng.choice(_TOPICS))
        checks = [_random_check(rng)]
        if rng.random() < 0.5:
            extra = _random_check(rng)
            kinds = {checks[0].kind, extra.kind}
            if len(kinds) == 2 and frozenset(kinds) not in _CLASH and "json_keys" not in kinds:
                checks.append(extra)
        prompt = " ".join([task, *(c.instruction for c in checks)])
        split = "heldout" if rng.random() < heldout else "train"
        out.append(InstructionPrompt(f"if-{i:04d}", prompt, tuple(checks), split))
    return out
