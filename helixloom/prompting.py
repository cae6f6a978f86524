"""Prompts from conversations: the model's chat template when it has one, else HelixNet's text format.

Base models (like the embedded default) have no chat template; they get the seed's transcript
format (``SYSTEM: ... \\nUSER: ... \\nASSISTANT: ``), its stop sequences, and token healing, which
is what makes a plain completion model hold a conversation. ``PromptFormat`` writes that transcript
and every HelixNet stage's prompt; plain chat (``render``) and HelixNet's actor share it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml

from helixloom.engine import Engine
from helixloom.errors import HelixloomError

ROLES = ("system", "user", "assistant")
Stage = Literal["actor", "critic", "regenerator"]
STAGES: tuple[Stage, ...] = ("actor", "critic", "regenerator")


# ------------------------------------------------------------------------------------- conversations


@dataclass(frozen=True)
class Exchange:
    """An earlier turn as the actor sees it: the question and the (regenerated) answer."""

    question: str
    answer: str


@dataclass(frozen=True)
class Conversation:
    """Chat messages as a transcript sees them: the system text (None when there is none), the
    earlier exchanges and the question to answer now. Consecutive user messages are one question."""

    system: str | None
    history: tuple[Exchange, ...]
    question: str


def conversation(messages: Sequence[Mapping[str, str]]) -> Conversation:
    """``messages`` (role and content) as a ``Conversation``; a 400 naming ``messages`` when they are
    empty, use a role other than system, user and assistant, or end with the assistant's."""
    if not messages:
        raise HelixloomError("messages is empty", "send at least one user message", param="messages")
    for m in messages:
        if m.get("role") not in ROLES:
            raise HelixloomError(
                f"unsupported message role {m.get('role')!r}",
                f"use one of {', '.join(ROLES)}",
                param="messages",
            )
    if messages[-1]["role"] == "assistant":
        raise HelixloomError("the last message must not be the assistant's", param="messages")
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    history: list[Exchange] = []
    pending_user: list[str] = []
    for m in messages:
        if m["role"] == "user":
            pending_user.append(m["content"])
        elif m["role"] == "assistant":
            history.append(Exchange("\n".join(pending_user), m["content"]))
            pending_user = []
    return Conversation(system or None, tuple(history), "\n".join(pending_user))


# ------------------------------------------------------------------------------------------ chat


@dataclass(frozen=True)
class ChatPrompt:
    prompt: str
    stop: tuple[str, ...]  # to add to the request's own stop sequences
    token_healing: bool


def render(engine: Engine, messages: Sequence[Mapping[str, str]]) -> ChatPrompt:
    """The prompt for the assistant's next message after ``messages``."""
    return render_with(engine.format_chat if engine.chat_template else None, messages)


def render_with(
    format_chat: Callable[[Sequence[Mapping[str, str]]], str] | None, messages: Sequence[Mapping[str, str]]
) -> ChatPrompt:
    """``render`` for a given chat-template function (None: the model has none); training uses it too,
    so a fine-tune sees exactly the prompts it will be served with."""
    talk = conversation(messages)
    if format_chat is not None:
        return ChatPrompt(format_chat(messages), (), False)
    fmt = PromptFormat.load("helixnet")
    return ChatPrompt(fmt.transcript(talk.system, talk.history, talk.question).lstrip(), fmt.stop, True)


# ------------------------------------------------------------------------------------------ formats


@dataclass(frozen=True)
class PromptFormat:
    """How each stage's prompt is written. Loaded from a YAML data file (see data/helixnet/)."""

    name: str
    system: str
    critic: str
    regenerator: str
    actor_head: str = "SYSTEM: {system}"
    actor_turn: str = " \nUSER: {question} \nASSISTANT: {answer}"
    actor_ask: str = " \nUSER: {question} \nASSISTANT: "
    strip_prefixes: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()  # added to every stage's stop sequences
    chat: bool = False  # render each stage through the model's chat template

    @classmethod
    def load(cls, name_or_path: str = "helixnet") -> PromptFormat:
        """A built-in format by name (``helixnet``, ``instruct``) or a YAML file with the same keys."""
        path = Path(name_or_path).expanduser()
        if path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise HelixloomError(f"prompt format file {path} does not exist")
            text = path.read_text()
        else:
            builtin = resources.files("helixloom") / "data" / "helixnet" / f"{name_or_path}.yaml"
            if not builtin.is_file():
                raise HelixloomError(
                    f"unknown prompt format {name_or_path!r}",
                    "use helixnet, instruct, or a .yaml file with system/critic/regenerator keys",
                )
            text = builtin.read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise HelixloomError(f"prompt format {name_or_path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise HelixloomError(f"prompt format {name_or_path} must be a YAML mapping")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        missing = sorted({"system", "critic", "regenerator"} - set(data))
        if unknown or missing:
            raise HelixloomError(
                f"prompt format {name_or_path}: "
                + (f"unknown keys {unknown}" if unknown else f"missing keys {missing}"),
                f"the keys are {sorted(known)}",
            )
        data.setdefault("name", path.stem if path.suffix else name_or_path)
        data["strip_prefixes"] = tuple(data.get("strip_prefixes") or ())
        data["stop"] = tuple(data.get("stop") or ())
        return cls(**data)

    def actor_prompt(self, engine: Engine, system: str, question: str, history: Sequence[Exchange]) -> str:
        if self.chat:
            messages = [{"role": "system", "content": system}] if system else []
            for ex in history:
                messages += [
                    {"role": "user", "content": ex.question},
                    {"role": "assistant", "content": ex.answer},
                ]
            messages.append({"role": "user", "content": question})
            return engine.format_chat(messages)
        return self.transcript(system, history, question)

    def transcript(self, system: str | None, history: Sequence[Exchange], question: str) -> str:
        """The text format's conversation (``actor_head``, an ``actor_turn`` per exchange, ``actor_ask``),
        ending where the assistant's answer to ``question`` begins; no head line for ``system=None``."""
        prompt = "" if system is None else _fill(self.actor_head, system=system)
        for ex in history:
            prompt += _fill(self.actor_turn, question=ex.question, answer=ex.answer)
        return prompt + _fill(self.actor_ask, question=question)

    def critic_prompt(self, engine: Engine, system: str, question: str, response: str) -> str:
        text = _fill(self.critic, system=system, question=question, response=response)
        return self._wrap(engine, system, text)

    def regenerator_prompt(
        self, engine: Engine, system: str, question: str, response: str, critique: str
    ) -> str:
        text = _fill(self.regenerator, system=system, question=question, response=response, critique=critique)
        return self._wrap(engine, system, text)

    def clean(self, stage: Stage, text: str) -> str:
        """A stage's output as carried forward: the regenerator's stray labels removed, whitespace trimmed."""
        text = text.strip()
        if stage == "regenerator":
            for prefix in self.strip_prefixes:
                if text.startswith(prefix):
                    text = text[len(prefix) :].strip()
        return text

    def _wrap(self, engine: Engine, system: str, text: str) -> str:
        if not self.chat:
            return text
        return engine.format_chat([{"role": "system", "content": system}, {"role": "user", "content": text}])


def _fill(template: str, **values: str) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise HelixloomError(
            f"prompt template {template[:40]!r}... has a placeholder it cannot fill: {exc}",
            "placeholders are {system}, {question}, {response}, {critique}, {answer}; write {{ }} for braces",
        ) from exc
