"""The pipeline itself: three roles, the stages they run, and what each turn returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from helixloom.engine import (
    Engine,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    StreamDelta,
    Timings,
    Usage,
)
from helixloom.errors import HelixloomError
from helixloom.helixnet.stages import (
    RESAMPLES,
    PrefixHold,
    degenerate_kind,
    is_degenerate,
    may_be_degenerate,
    retry_sampling,
)
from helixloom.prompting import Exchange, PromptFormat, Stage

# The seed's sampling: temperature 0.75, top_p 1.0, top_k 50, up to 1024 new tokens. Token healing is
# ours: the seed's prompts end in a space ("ASSISTANT: "), which pushes models that were not trained on
# exactly that tokenization into emitting a newline and an empty answer.
SEED_SAMPLING = SamplingParams(temperature=0.75, top_p=1.0, top_k=50, max_tokens=1024, token_healing=True)


# ------------------------------------------------------------------------------------------ pipeline


@dataclass(frozen=True)
class Role:
    """Who plays a stage: an engine, the adapter to use on it (None = base) and sampling.

    ``label`` is the adapter's name as the user knows it, recorded in sessions, when the engine
    serves it under another (the server pins a version per request: ``NAME@VERSION-N``)."""

    engine: Engine
    adapter: str | None = None
    sampling: SamplingParams = SEED_SAMPLING
    label: str | None = None

    @property
    def adapter_name(self) -> str | None:
        """The adapter as records name it."""
        return self.label or self.adapter


# Scores (previous answer, regeneration) for a question; the regeneration is kept only when it scores
# higher. helixloom.helixnet_gate makes one from the zero-shot yes/no evaluator.
Gate = Callable[[str, str, str], tuple[float, float]]

NO_CRITIQUE = "(no critique: the critic wrote nothing; the answer stands)"


def _gave_up(kind: str, attempts: int) -> str:
    """A stage's fallback note: "empty after 3 attempts", "its instructions repeated after 1 attempt"."""
    return f"{kind} after {attempts} attempt{'s' if attempts != 1 else ''}"


@dataclass(frozen=True)
class GateDecision:
    """Whether a round's regeneration replaced the answer the round started from (the actor's in
    round 1), with the scores that decided."""

    kept: Literal["previous", "regeneration"]
    previous_score: float
    regeneration_score: float
    regeneration: str  # the regenerated text the gate judged, kept or not


@dataclass(frozen=True)
class StageOutput:
    """One stage's text and how it was made. ``text`` is what the pipeline carries forward: the
    stage's own cleaned output, unless ``fallback`` says why it is something else."""

    stage: Stage
    round: int  # 0 for the actor; 1..rounds for critic and regenerator
    text: str
    raw_text: str
    prompt: str
    model: str
    adapter: str | None
    sampling: SamplingParams
    finish_reason: str
    usage: Usage
    timings: dict[str, float]
    attempts: int = 1  # generations run (retries of an empty output included); 0: skipped
    fallback: str | None = None
    gate: GateDecision | None = None


@dataclass(frozen=True)
class HelixTurn:
    """One answered question: the actor's answer, then a critique and a regeneration per round."""

    question: str
    actor: StageOutput
    critiques: tuple[StageOutput, ...]
    regenerations: tuple[StageOutput, ...]
    session_id: str | None = None

    @property
    def critique(self) -> str:
        return self.critiques[-1].text

    @property
    def regeneration(self) -> str:
        """The final answer."""
        return self.regenerations[-1].text

    @property
    def stages(self) -> list[StageOutput]:
        out = [self.actor]
        for critique, regen in zip(self.critiques, self.regenerations, strict=True):
            out += [critique, regen]
        return out

    @property
    def repairs(self) -> list[StageOutput]:
        """The stages that were retried, fell back or were skipped."""
        return [s for s in self.stages if s.attempts != 1 or s.fallback is not None]

    @property
    def usage(self) -> Usage:
        return Usage(
            sum(s.usage.prompt_tokens for s in self.stages),
            sum(s.usage.completion_tokens for s in self.stages),
        )


@dataclass(frozen=True)
class StageEvent:
    """Progress of a turn: ``start`` of a stage, ``delta`` text as it streams, ``end`` with its output."""

    kind: Literal["start", "delta", "end"]
    stage: Stage
    round: int
    text: str = ""
    output: StageOutput | None = None


OnEvent = Callable[[StageEvent], None]


class HelixNet:
    """The actor → critic → regenerator pipeline over three roles.

    A stage whose output is empty or only a label is run again (``resamples`` times at most, each
    with a seed derived from the request's); if it stays empty the answer before it stands. With a
    ``gate``, a regeneration replaces that answer only when the gate scores it higher."""

    def __init__(
        self,
        actor: Role,
        critic: Role,
        regenerator: Role,
        *,
        prompt_format: PromptFormat | None = None,
        system: str | None = None,
        rounds: int = 1,
        gate: Gate | None = None,
        resamples: int = RESAMPLES,
    ) -> None:
        if rounds < 1:
            raise HelixloomError("rounds must be at least 1", param="rounds")
        self.roles: dict[Stage, Role] = {"actor": actor, "critic": critic, "regenerator": regenerator}
        self.format = prompt_format or PromptFormat.load("helixnet")
        self.system = self.format.system if system is None else system
        self.rounds = rounds
        self.gate = gate
        self.resamples = resamples

    def answer(
        self, question: str, history: Sequence[Exchange] = (), *, on_event: OnEvent | None = None
    ) -> HelixTurn:
        """Run the pipeline on ``question`` after the earlier ``history``; nothing is stored here.

        No stage's text is empty or a bare label unless the actor's stayed so through every retry."""
        if not question.strip():
            raise HelixloomError("the question is empty", param="question")
        emit = on_event or (lambda _: None)
        fmt, system = self.format, self.system
        actor = self.act(question, history, on_event=emit)
        critiques: list[StageOutput] = []
        regenerations: list[StageOutput] = []
        latest = actor.text
        for r in range(1, self.rounds + 1):
            critic_engine = self.roles["critic"].engine
            critique = self._stage(
                "critic", r, fmt.critic_prompt(critic_engine, system, question, latest), emit
            )
            if kind := degenerate_kind(critique.text, self.system):
                critique = replace(critique, text=NO_CRITIQUE, fallback=_gave_up(kind, critique.attempts))
                self._end(critique, emit, shown=NO_CRITIQUE)
                regen = self._skipped(r, latest, critique.finish_reason)
                emit(StageEvent("start", "regenerator", r))
                self._end(regen, emit, shown=latest)
            else:
                self._end(critique, emit)
                regen_engine = self.roles["regenerator"].engine
                prompt = fmt.regenerator_prompt(regen_engine, system, question, latest, critique.text)
                regen = self._stage("regenerator", r, prompt, emit, hold=self.gate is not None)
                regen, shown = self._settle(regen, question, latest)
                self._end(regen, emit, shown=shown)
            critiques.append(critique)
            regenerations.append(regen)
            latest = regen.text
        return HelixTurn(question, actor, tuple(critiques), tuple(regenerations))

    def act(
        self, question: str, history: Sequence[Exchange] = (), *, on_event: OnEvent | None = None
    ) -> StageOutput:
        """The actor's stage alone, exactly as ``answer`` runs it (resampled while empty or a label;
        ``fallback`` says so if it stayed that way)."""
        emit = on_event or (lambda _: None)
        prompt = self.format.actor_prompt(self.roles["actor"].engine, self.system, question, history)
        actor = self._stage("actor", 0, prompt, emit)
        if kind := degenerate_kind(actor.text, self.system):
            actor = replace(actor, fallback=_gave_up(kind, actor.attempts))
        self._end(actor, emit)
        return actor

    def _settle(self, regen: StageOutput, question: str, previous: str) -> tuple[StageOutput, str]:
        """The regeneration as the round keeps it, and the text still to show (held back so far)."""
        if kind := degenerate_kind(regen.text, self.system):
            note = f"{_gave_up(kind, regen.attempts)}; kept the previous answer"
            return replace(regen, text=previous, fallback=note), previous
        if self.gate is None:
            return regen, ""
        previous_score, regen_score = self.gate(question, previous, regen.text)
        kept: Literal["previous", "regeneration"] = (
            "regeneration" if regen_score > previous_score else "previous"
        )
        decision = GateDecision(kept, previous_score, regen_score, regen.text)
        text = regen.text if kept == "regeneration" else previous
        return replace(regen, text=text, gate=decision), text

    def _skipped(self, round_: int, previous: str, finish_reason: str) -> StageOutput:
        """The regenerator's place in a round whose critique is empty: the previous answer stands."""
        role = self.roles["regenerator"]
        return StageOutput(
            stage="regenerator",
            round=round_,
            text=previous,
            raw_text="",
            prompt="",
            model=role.engine.model_name,
            adapter=role.adapter_name,
            sampling=role.sampling,
            finish_reason=finish_reason,
            usage=Usage(0, 0),
            timings=Timings().as_dict(),
            attempts=0,
            fallback="skipped: no critique; kept the previous answer",
        )

    @staticmethod
    def _end(output: StageOutput, emit: OnEvent, *, shown: str = "") -> None:
        if shown:
            emit(StageEvent("delta", output.stage, output.round, shown))
        emit(StageEvent("end", output.stage, output.round, output=output))

    def _stage(
        self, stage: Stage, round_: int, prompt: str, emit: OnEvent, *, hold: bool = False
    ) -> StageOutput:
        """Run a stage until its output is more than a label (retries bounded by ``resamples``).

        Text streams once it is clearly not degenerate; a discarded try streams nothing. ``hold``
        streams nothing at all (the caller shows the text it keeps). The caller emits ``end``."""
        emit(StageEvent("start", stage, round_))
        tries: list[StageOutput] = []
        for attempt in range(self.resamples + 1):
            tries.append(self._attempt(stage, round_, prompt, attempt, None if hold else emit))
            if not is_degenerate(tries[-1].text, self.system):
                break
        used = Usage(sum(t.usage.prompt_tokens for t in tries), sum(t.usage.completion_tokens for t in tries))
        return replace(tries[-1], usage=used)  # the thrown-away tries cost tokens too

    def _attempt(
        self, stage: Stage, round_: int, prompt: str, attempt: int, emit: OnEvent | None
    ) -> StageOutput:
        role = self.roles[stage]
        strip = PrefixHold(self.format.strip_prefixes if stage == "regenerator" else ())
        result: GenerationResult | None = None
        params = retry_sampling(role.sampling, attempt)
        if extra_stops := [s for s in self.format.stop if s not in params.stop]:
            params = params.model_copy(update={"stop": (*params.stop, *extra_stops)})
        pending, released = "", False

        def show(text: str, *, final: bool = False) -> None:
            # Text is released only once the stage has said more than a label, so a try that is
            # thrown away has shown nothing.
            nonlocal pending, released
            pending += text
            unsure = is_degenerate(pending, self.system) if final else may_be_degenerate(pending, self.system)
            if emit is not None and pending and (released or not unsure):
                released = True
                emit(StageEvent("delta", stage, round_, pending))
                pending = ""

        for event in role.engine.stream(GenerationRequest(prompt, params, role.adapter)):
            if isinstance(event, StreamDelta):
                show(strip.feed(event.text))
            else:
                result = event
        show(strip.finish(), final=True)
        assert result is not None
        return StageOutput(
            stage=stage,
            round=round_,
            text=self.format.clean(stage, result.text),
            raw_text=result.text,
            prompt=prompt,
            model=role.engine.model_name,
            adapter=role.adapter_name,
            sampling=retry_sampling(role.sampling, attempt),
            finish_reason=result.finish_reason,
            usage=result.usage,
            timings=result.timings.as_dict(),
            attempts=attempt + 1,
        )
