"""Chat messages to a prompt: the model's chat template when it has one, else HelixNet's text format.

Base models (like the embedded default) have no chat template; they get the seed's transcript
format (``SYSTEM: ... \\nUSER: ... \\nASSISTANT: ``), its stop sequences, and token healing, which
is what makes a plain completion model hold a conversation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from helixloom.engine import Engine
from helixloom.errors import HelixloomError

ROLES = ("system", "user", "assistant")


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
    if format_chat is not None:
        return ChatPrompt(format_chat(messages), (), False)
    from helixloom.helixnet import PromptFormat

    fmt = PromptFormat.load("helixnet")
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    prompt = fmt.actor_head.format(system=system) if system else ""
    pending_user: list[str] = []
    for m in messages:
        if m["role"] == "user":
            pending_user.append(m["content"])
        elif m["role"] == "assistant":
            prompt += fmt.actor_turn.format(question="\n".join(pending_user), answer=m["content"])
            pending_user = []
    prompt += fmt.actor_ask.format(question="\n".join(pending_user))
    return ChatPrompt(prompt.lstrip(), fmt.stop, True)
