"""HelixNet: an actor answers, a critic critiques the answer, a regenerator rewrites it from the critique.

Each role is an engine, an optional LoRA adapter and sampling parameters. Three separate models, or
one base model with one adapter per role (HelixNet-LMoE): the pipeline is the same, because the
adapter travels with each request and the engine applies it per row, never by global switching.

Multi-turn follows the seed: the actor sees the system text, the earlier questions and the earlier
*regenerated* answers; the critic and the regenerator see only the current turn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from helixloom.engine import Engine, GenerationRequest, GenerationResult, SamplingParams, StreamDelta, Usage
from helixloom.engine.pool import EnginePool
from helixloom.errors import HelixloomError
from helixloom.prompting import STAGES, Exchange, PromptFormat, Stage, conversation
from helixloom.store import NewMessage, Store

__all__ = [
    "SEED_SAMPLING",
    "STAGES",
    "Exchange",
    "HelixChat",
    "HelixNet",
    "HelixTurn",
    "LMoE",
    "PromptFormat",
    "Role",
    "RoleSpec",
    "Stage",
    "StageEvent",
    "StageOutput",
    "build",
]

# The seed's sampling: temperature 0.75, top_p 1.0, top_k 50, up to 1024 new tokens. Token healing is
# ours: the seed's prompts end in a space ("ASSISTANT: "), which pushes models that were not trained on
# exactly that tokenization into emitting a newline and an empty answer.
SEED_SAMPLING = SamplingParams(temperature=0.75, top_p=1.0, top_k=50, max_tokens=1024, token_healing=True)


# ------------------------------------------------------------------------------------------ pipeline


@dataclass(frozen=True)
class Role:
    """Who plays a stage: an engine, the adapter to use on it (None = base) and sampling."""

    engine: Engine
    adapter: str | None = None
    sampling: SamplingParams = SEED_SAMPLING


@dataclass(frozen=True)
class StageOutput:
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
    """The actor → critic → regenerator pipeline over three roles."""

    def __init__(
        self,
        actor: Role,
        critic: Role,
        regenerator: Role,
        *,
        prompt_format: PromptFormat | None = None,
        system: str | None = None,
        rounds: int = 1,
    ) -> None:
        if rounds < 1:
            raise HelixloomError("rounds must be at least 1", param="rounds")
        self.roles: dict[Stage, Role] = {"actor": actor, "critic": critic, "regenerator": regenerator}
        self.format = prompt_format or PromptFormat.load("helixnet")
        self.system = self.format.system if system is None else system
        self.rounds = rounds

    def answer(
        self, question: str, history: Sequence[Exchange] = (), *, on_event: OnEvent | None = None
    ) -> HelixTurn:
        """Run the pipeline on ``question`` after the earlier ``history``; nothing is stored here."""
        if not question.strip():
            raise HelixloomError("the question is empty", param="question")
        fmt, system = self.format, self.system
        actor_engine = self.roles["actor"].engine
        actor = self._stage("actor", 0, fmt.actor_prompt(actor_engine, system, question, history), on_event)
        critiques: list[StageOutput] = []
        regenerations: list[StageOutput] = []
        latest = actor.text
        for r in range(1, self.rounds + 1):
            critic_engine = self.roles["critic"].engine
            critique = self._stage(
                "critic", r, fmt.critic_prompt(critic_engine, system, question, latest), on_event
            )
            regen_engine = self.roles["regenerator"].engine
            prompt = fmt.regenerator_prompt(regen_engine, system, question, latest, critique.text)
            regen = self._stage("regenerator", r, prompt, on_event)
            critiques.append(critique)
            regenerations.append(regen)
            latest = regen.text
        return HelixTurn(question, actor, tuple(critiques), tuple(regenerations))

    def _stage(self, stage: Stage, round_: int, prompt: str, on_event: OnEvent | None) -> StageOutput:
        role = self.roles[stage]
        emit = on_event or (lambda _: None)
        emit(StageEvent("start", stage, round_))
        strip = _PrefixHold(self.format.strip_prefixes if stage == "regenerator" else ())
        result: GenerationResult | None = None
        params = role.sampling
        if extra_stops := [s for s in self.format.stop if s not in params.stop]:
            params = params.model_copy(update={"stop": (*params.stop, *extra_stops)})
        for event in role.engine.stream(GenerationRequest(prompt, params, role.adapter)):
            if isinstance(event, StreamDelta):
                if text := strip.feed(event.text):
                    emit(StageEvent("delta", stage, round_, text))
            else:
                result = event
        if rest := strip.finish():
            emit(StageEvent("delta", stage, round_, rest))
        assert result is not None
        output = StageOutput(
            stage=stage,
            round=round_,
            text=self.format.clean(stage, result.text),
            raw_text=result.text,
            prompt=prompt,
            model=role.engine.model_name,
            adapter=role.adapter,
            sampling=role.sampling,
            finish_reason=result.finish_reason,
            usage=result.usage,
            timings=result.timings.as_dict(),
        )
        emit(StageEvent("end", stage, round_, output=output))
        return output


class _PrefixHold:
    """Holds streamed text back until it is clear whether it starts with a label to drop."""

    def __init__(self, prefixes: Sequence[str]) -> None:
        self._prefixes = tuple(prefixes)
        self._buffer = ""
        self._decided = not self._prefixes

    def feed(self, text: str) -> str:
        if self._decided:
            return text
        self._buffer += text
        head = self._buffer.lstrip()
        for prefix in self._prefixes:
            if head.startswith(prefix):
                self._decided = True
                return self._release(head[len(prefix) :].lstrip())
            if prefix.startswith(head):
                return ""  # could still become the prefix
        self._decided = True
        return self._release(self._buffer)

    def finish(self) -> str:
        self._decided = True
        return self._release(self._buffer)

    def _release(self, text: str) -> str:
        self._buffer = ""
        return text


# ------------------------------------------------------------------------------------------ sessions


class HelixChat:
    """A HelixNet conversation: carries regenerated answers forward and records every turn."""

    def __init__(
        self,
        net: HelixNet,
        store: Store | None = None,
        *,
        meta: dict[str, Any] | None = None,
        history: Sequence[Exchange] = (),
        session_id: str | None = None,
        api_key_label: str | None = None,
    ) -> None:
        self.net = net
        self.store = store
        self.meta = meta or {}
        self.history: list[Exchange] = list(history)
        self.session_id = session_id  # the id the first recorded turn will get, if given
        self.api_key_label = api_key_label
        self._recorded = False

    def ask(self, question: str, *, on_event: OnEvent | None = None) -> HelixTurn:
        turn = self.net.answer(question, self.history, on_event=on_event)
        if self.store is not None:
            self._record(turn)
        self.history.append(Exchange(question, turn.regeneration))
        return HelixTurn(turn.question, turn.actor, turn.critiques, turn.regenerations, self.session_id)

    def reset(self) -> None:
        """Start a new conversation (and a new stored session)."""
        self.history = []
        self.session_id = None
        self._recorded = False

    def _record(self, turn: HelixTurn) -> None:
        assert self.store is not None
        messages = [NewMessage(role="user", content=turn.question, meta={"turn": len(self.history)})]
        for s in turn.stages:
            messages.append(
                NewMessage(
                    role="assistant",
                    content=s.text,
                    stage=s.stage,
                    model=s.model,
                    adapter=s.adapter,
                    sampling=s.sampling.model_dump(mode="json"),
                    prompt_tokens=s.usage.prompt_tokens,
                    completion_tokens=s.usage.completion_tokens,
                    finish_reason=s.finish_reason,
                    timings=s.timings,
                    meta={
                        "round": s.round,
                        "turn": len(self.history),
                        "prompt": s.prompt,
                        "raw_text": s.raw_text,
                    },
                )
            )
        if not self._recorded:
            roles = {
                stage: {"model": role.engine.model_name, "adapter": role.adapter}
                for stage, role in self.net.roles.items()
            }
            session = self.store.record_session(
                "helixnet",
                messages,
                title=turn.question[:80],
                model=self.net.roles["actor"].engine.model_name,
                meta={"format": self.net.format.name, "rounds": self.net.rounds, "roles": roles, **self.meta},
                api_key_label=self.api_key_label,
                session_id=self.session_id,
            )
            self.session_id = session.id
            self._recorded = True
        else:
            assert self.session_id is not None
            self.store.append_messages(self.session_id, messages)


# ------------------------------------------------------------------------------------------ building


@dataclass(frozen=True)
class RoleSpec:
    """A role as the user names it: a model spec and an adapter (registered name or folder)."""

    model: str = "default"
    adapter: str | None = None
    sampling: SamplingParams = SEED_SAMPLING


def build(
    specs: dict[Stage, RoleSpec],
    *,
    pool: EnginePool | None = None,
    store: Store | None = None,
    prompt_format: PromptFormat | None = None,
    system: str | None = None,
    rounds: int = 1,
) -> HelixNet:
    """Resolve every role first (bad specs fail before anything loads), then load each model once.

    Roles naming the same model share one loaded copy; their adapters are loaded into it side by side.
    """
    from helixloom import adapters, models

    if rounds < 1:
        raise HelixloomError("rounds must be at least 1", param="rounds")
    missing = [s for s in STAGES if s not in specs]
    if missing:
        raise HelixloomError(f"no role given for {', '.join(missing)}")
    found_adapters: dict[Stage, tuple[str, Path] | None] = {}
    for stage in STAGES:
        spec = specs[stage]
        try:
            models.resolve(spec.model)
        except HelixloomError as exc:
            raise HelixloomError(f"{stage} model: {exc.message}", exc.hint, param=f"{stage}_model") from exc
        if spec.adapter is None:
            found_adapters[stage] = None
        else:
            try:
                found_adapters[stage] = adapters.resolve(store, spec.adapter, model=spec.model)
            except HelixloomError as exc:
                raise HelixloomError(f"{stage} adapter: {exc.message}", exc.hint) from exc
    pool = pool or EnginePool()
    roles: dict[Stage, Role] = {}
    loaded_names: dict[tuple[str, str], Path] = {}
    for stage in STAGES:
        spec = specs[stage]
        engine = pool.get(spec.model)
        name = None
        if (found := found_adapters[stage]) is not None:
            name, folder = found
            previous = loaded_names.get((spec.model, name))
            if previous is not None and previous != folder:
                # Two different folders with the same name on one model: keep both, apart.
                name = f"{name}-{hashlib.sha256(str(folder).encode()).hexdigest()[:8]}"
            loaded_names[(spec.model, name)] = folder
            engine.load_adapter(name, str(folder))
        roles[stage] = Role(engine, name, spec.sampling)
    return HelixNet(
        roles["actor"],
        roles["critic"],
        roles["regenerator"],
        prompt_format=prompt_format,
        system=system,
        rounds=rounds,
    )


@dataclass(frozen=True)
class LMoE:
    """HelixNet-LMoE on one loaded engine, as the server runs it: each role is an adapter on that
    engine (None: the base model)."""

    engine: Engine
    adapters: Mapping[Stage, str | None]
    prompt_format: PromptFormat
    rounds: int = 1

    def resume(
        self,
        messages: Sequence[Mapping[str, str]],
        sampling: SamplingParams,
        store: Store,
        *,
        session_id: str | None = None,
        api_key_label: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> tuple[HelixChat, str]:
        """The conversation chat ``messages`` hold, and the question to ask it next.

        The system messages replace the format's system text; earlier user and assistant messages are
        the history (the assistant's answers stand for regenerations); the last message must be the
        user's. Every role samples with ``sampling``, token healing on (the seed's prompts need it)."""
        if messages and messages[-1]["role"] != "user":
            raise HelixloomError("the last message must be the user's question", param="messages")
        talk = conversation(messages)
        params = sampling.model_copy(update={"token_healing": True})
        roles = {stage: Role(self.engine, self.adapters.get(stage), params) for stage in STAGES}
        net = HelixNet(
            roles["actor"],
            roles["critic"],
            roles["regenerator"],
            prompt_format=self.prompt_format,
            system=talk.system,
            rounds=self.rounds,
        )
        chat = HelixChat(
            net, store, history=talk.history, session_id=session_id, api_key_label=api_key_label, meta=meta
        )
        return chat, talk.question
