"""Building HelixNet from what the user names (model specs, adapters), and HelixNet-LMoE as the
server runs it on one loaded engine."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helixloom.engine import Engine, SamplingParams
from helixloom.engine.pool import EnginePool
from helixloom.errors import HelixloomError
from helixloom.helixnet.pipeline import SEED_SAMPLING, Gate, HelixNet, Role
from helixloom.helixnet.sessions import HelixChat
from helixloom.prompting import STAGES, PromptFormat, Stage, conversation
from helixloom.store import Store


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
    gate: Gate | None = None,
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
        gate=gate,
    )


@dataclass(frozen=True)
class LMoE:
    """HelixNet-LMoE on one loaded engine, as the server runs it: each role is an adapter on that
    engine (None: the base model), under ``labels``' names in the records where given."""

    engine: Engine
    adapters: Mapping[Stage, str | None]
    prompt_format: PromptFormat
    rounds: int = 1
    labels: Mapping[Stage, str | None] = field(default_factory=dict)

    def resume(
        self,
        messages: Sequence[Mapping[str, str]],
        sampling: SamplingParams,
        store: Store,
        *,
        session_id: str | None = None,
        api_key_label: str | None = None,
        meta: dict[str, Any] | None = None,
        gate: Gate | None = None,
    ) -> tuple[HelixChat, str]:
        """The conversation chat ``messages`` hold, and the question to ask it next.

        The system messages replace the format's system text; earlier user and assistant messages are
        the history (the assistant's answers stand for regenerations); the last message must be the
        user's. Every role samples with ``sampling``, token healing on (the seed's prompts need it)."""
        if messages and messages[-1]["role"] != "user":
            raise HelixloomError("the last message must be the user's question", param="messages")
        talk = conversation(messages)
        params = sampling.model_copy(update={"token_healing": True})
        roles = {
            stage: Role(self.engine, self.adapters.get(stage), params, label=self.labels.get(stage))
            for stage in STAGES
        }
        net = HelixNet(
            roles["actor"],
            roles["critic"],
            roles["regenerator"],
            prompt_format=self.prompt_format,
            system=talk.system,
            rounds=self.rounds,
            gate=gate,
        )
        chat = HelixChat(
            net, store, history=talk.history, session_id=session_id, api_key_label=api_key_label, meta=meta
        )
        return chat, talk.question
