"""Who teaches HelixNet's critic and regenerator: an LLM (the seed used GPT-4), or a verifier.

A teacher sees each prompt with the actor's answers to it (the first is *the* response, the rest are
more samples) and returns a ``Lesson``: the critique of the response and the regenerated answer
(None when it has none, and the prompt then gives the regenerator no example).

- ``EngineTeacher``: any engine writes the critique and then the regeneration from it, prompted as
  the ``instruct`` format prompts untrained chat models (``data/helixnet/instruct.yaml``).
- ``VerifierTeacher``: for prompts whose answers code can check (``evals.instructions``). The
  critique names the failed checks (or says the response meets them all). The regeneration of a
  response that passes is the response itself (``kept``); of one that fails, the passing actor
  sample closest to it (``sample``, rejection sampling), else the response repaired by code
  (``repaired``, ``evals.instruction_repair``), kept only if it then passes every check; else none.
  The repair is what lets the regenerator learn to *fix* an answer rather than copy one: on the
  embedded model only about a third of prompts have a passing sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from helixloom.engine import Engine, GenerationRequest, SamplingParams
from helixloom.errors import HelixloomError
from helixloom.evals.instruction_repair import repair
from helixloom.evals.instructions import InstructionPrompt, critique, words
from helixloom.prompting import PromptFormat, render
from helixloom.textsim import rouge_l

VERIFIER = "verifier"
#: where a lesson's regeneration came from
OUTCOMES = ("kept", "sample", "repaired", "none", "teacher")


@dataclass(frozen=True)
class Attempt:
    """A prompt and the actor's answers: ``samples[0]`` is the response the critic sees."""

    prompt: InstructionPrompt
    system: str
    samples: tuple[str, ...]

    @property
    def response(self) -> str:
        return self.samples[0]


@dataclass(frozen=True)
class Lesson:
    critique: str
    regeneration: str | None  # None: no regenerator example for this prompt
    #: ``kept`` (the response passed and is its own target), ``sample`` (a passing actor sample),
    #: ``repaired`` (the response repaired by code), ``none``, or ``teacher`` (an LLM teacher wrote it)
    outcome: str = "teacher"
    #: the teacher's critique of ``regeneration`` when it can vouch that it is right (the verifier's
    #: "follows every instruction"), so the critic also sees a passing answer to the same question;
    #: None when the teacher cannot (an LLM teacher's regeneration is not checked)
    target_critique: str | None = None


class Teacher(Protocol):
    name: str
    #: how many actor samples per prompt the teacher wants (the verifier samples to find a pass)
    wants_samples: bool

    def teach(self, attempts: Sequence[Attempt]) -> list[Lesson]:
        """One lesson per attempt, in order."""
        ...


class VerifierTeacher:
    """Critiques from failed checks; regenerations by rejection sampling over the actor's samples,
    else (with ``repair``) by repairing the response in code."""

    name = VERIFIER
    wants_samples = True

    def __init__(self, *, repair: bool = True) -> None:
        self.repair = repair

    def teach(self, attempts: Sequence[Attempt]) -> list[Lesson]:
        return [self.lesson(a) for a in attempts]

    def lesson(self, a: Attempt) -> Lesson:
        """The critique of ``a.response`` and its regeneration target, with where it came from."""
        if not a.prompt.checks:
            raise HelixloomError(
                f"prompt {a.prompt.id} has no checks for the verifier",
                "give instruction prompts with checks, or an LLM --teacher",
            )
        said = critique(a.prompt, a.response)
        if words(a.response) and a.prompt.passes(a.response):
            return Lesson(said, a.response.strip(), "kept")
        passing = [s.strip() for s in a.samples[1:] if words(s) and a.prompt.passes(s)]
        if passing:
            # the passing sample nearest the response: the smallest change that fixes it
            mine = words(a.response.lower())
            best = max(passing, key=lambda s: rouge_l(mine, words(s.lower())))
            return Lesson(said, best, "sample", critique(a.prompt, best))
        fixed = repair(a.prompt, a.response, a.samples[1:]) if self.repair else None
        if fixed:
            return Lesson(said, fixed, "repaired", critique(a.prompt, fixed))
        return Lesson(said, None, "none")


class EngineTeacher:
    """An LLM teacher: critique, then a regeneration that follows it, each one request per prompt."""

    wants_samples = False

    def __init__(
        self, engine: Engine, *, name: str | None = None, adapter: str | None = None, max_tokens: int = 256
    ) -> None:
        self.engine = engine
        self.name = name or engine.model_name
        self.adapter = adapter
        self.max_tokens = max_tokens
        self.format = PromptFormat.load("instruct")

    def teach(self, attempts: Sequence[Attempt]) -> list[Lesson]:
        critiques = self._ask(
            [self.format.critic.format(system=a.system, question=a.prompt.prompt, response=a.response)
             for a in attempts]
        )  # fmt: skip
        regens = self._ask(
            [
                self.format.regenerator.format(
                    system=a.system, question=a.prompt.prompt, response=a.response, critique=c
                )
                for a, c in zip(attempts, critiques, strict=True)
            ]
        )
        # An empty critique teaches the critic nothing useful; an empty regeneration would teach the
        # regenerator to say nothing (the empty-answer failure HelixNet must not learn).
        return [
            Lesson(c, r or None) if c else Lesson("", None, "none")
            for c, r in zip(critiques, regens, strict=True)
        ]

    def _ask(self, texts: Sequence[str]) -> list[str]:
        requests = []
        for text in texts:
            chat = render(self.engine, [{"role": "user", "content": text}])
            params = SamplingParams(
                temperature=0.0, max_tokens=self.max_tokens, stop=chat.stop, token_healing=chat.token_healing
            )
            requests.append(GenerationRequest(chat.prompt, params, self.adapter))
        return [r.text.strip() for r in self.engine.generate(requests)]
