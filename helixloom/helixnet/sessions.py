"""HelixNet conversations: regenerated answers carried forward, every turn recorded in the store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from helixloom.helixnet.pipeline import HelixNet, HelixTurn, OnEvent
from helixloom.prompting import Exchange
from helixloom.store import NewMessage, Store


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
                stage: {"model": role.engine.model_name, "adapter": role.adapter_name}
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
