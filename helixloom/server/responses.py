"""OpenAI wire format: the response models, beside the requests in ``protocol``.

Field names and order follow OpenAI's API reference. A field OpenAI always sends is sent as null
when empty; our extensions (``citations``, ``helixnet``, ``weave``, a chunk's ``usage``...) are left
out when empty, so a plain client sees exactly OpenAI's shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer

from helixloom.engine import GeneratedTokenLogprobs, PromptLogprobs, Usage

FINGERPRINT = "helixloom"


class OpenAIResponse(BaseModel):
    """A response object: the fields named in ``absent_when_none`` are left out when None."""

    absent_when_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _leave_out_empty(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None or k not in self.absent_when_none}


# --------------------------------------------------------------------------------------------- errors


class ErrorInfo(OpenAIResponse):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(OpenAIResponse):
    error: ErrorInfo


# --------------------------------------------------------------------------------------------- models


class ModelCard(OpenAIResponse):
    absent_when_none = frozenset({"root", "parent", "max_model_len", "version", "metadata"})

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = FINGERPRINT
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None  # vLLM's
    version: str | None = None  # an adapter's content hash: it changes when the adapter is retrained
    metadata: dict[str, Any] | None = None  # what the store keeps with an adapter (its report, rank...)


class ModelList(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---------------------------------------------------------------------------------------------- usage


class UsageInfo(OpenAIResponse):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> UsageInfo:
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        )


# ------------------------------------------------------------------------------------------- logprobs


class ChatTopLogprob(OpenAIResponse):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(ChatTopLogprob):
    top_logprobs: list[ChatTopLogprob]


class ChatLogprobs(OpenAIResponse):
    content: list[ChatTokenLogprob]

    @classmethod
    def of(cls, steps: Sequence[GeneratedTokenLogprobs]) -> ChatLogprobs:
        return cls(
            content=[
                ChatTokenLogprob(
                    token=s.chosen.token,
                    logprob=s.chosen.logprob,
                    bytes=_utf8(s.chosen.token),
                    top_logprobs=[
                        ChatTopLogprob(token=t.token, logprob=t.logprob, bytes=_utf8(t.token)) for t in s.top
                    ],
                )
                for s in steps
            ]
        )


def _utf8(token: str) -> list[int]:
    return list(token.encode("utf-8"))


class CompletionLogprobs(OpenAIResponse):
    """The legacy ``logprobs`` object of ``/v1/completions``: parallel lists, offsets in characters."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]

    @classmethod
    def of(cls, steps: Sequence[GeneratedTokenLogprobs]) -> CompletionLogprobs:
        """The generated tokens' logprobs."""
        tokens = [s.chosen.token for s in steps]
        return cls(
            tokens=tokens,
            token_logprobs=[s.chosen.logprob for s in steps],
            top_logprobs=[{t.token: t.logprob for t in s.top} for s in steps],
            text_offset=_offsets(tokens),
        )

    @classmethod
    def of_prompt(cls, scored: PromptLogprobs) -> CompletionLogprobs:
        """A prompt's own tokens (``echo``)."""
        return cls(
            tokens=list(scored.tokens),
            token_logprobs=list(scored.logprobs),
            top_logprobs=[None if top is None else {t.token: t.logprob for t in top} for top in scored.top],
            text_offset=_offsets(scored.tokens),
        )

    def after(self, prompt: CompletionLogprobs) -> CompletionLogprobs:
        """``prompt``'s logprobs followed by these, offsets counted from the prompt's start."""
        shift = sum(len(t) for t in prompt.tokens)
        return CompletionLogprobs(
            tokens=prompt.tokens + self.tokens,
            token_logprobs=prompt.token_logprobs + self.token_logprobs,
            top_logprobs=prompt.top_logprobs + self.top_logprobs,
            text_offset=prompt.text_offset + [shift + o for o in self.text_offset],
        )


def _offsets(tokens: Sequence[str]) -> list[int]:
    offsets, offset = [], 0
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return offsets


# ----------------------------------------------------------------------------------- chat completions


class ChatMessageOut(OpenAIResponse):
    role: Literal["assistant"] = "assistant"
    content: str


class Citation(OpenAIResponse):
    doc_id: str
    source: str
    title: str


class ChatCompletionChoice(OpenAIResponse):
    absent_when_none = frozenset({"citations"})

    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    citations: list[Citation] | None = None  # an answer from a learned adapter: the documents it cites


class HelixNetGate(OpenAIResponse):
    """Which answer the gate kept ("previous": the one the round rewrote) and the scores that decided."""

    kept: str
    previous_score: float
    regeneration_score: float
    regeneration: str  # the regenerated text the gate judged, kept or not


class HelixNetRepair(OpenAIResponse):
    """A stage that was retried because it came back empty, fell back, or was skipped."""

    stage: str
    round: int
    attempts: int
    fallback: str | None


class HelixNetRound(OpenAIResponse):
    critique: str
    regeneration: str
    gate: HelixNetGate | None = None  # only with the gate on


class HelixNetInfo(OpenAIResponse):
    """What HelixNet did before its answer: the actor's answer, the last critique, every round, the
    last round's gate decision (with the gate on) and the stages that were repaired."""

    actor: str
    critique: str
    rounds: list[HelixNetRound]
    gate: HelixNetGate | None = None
    repairs: list[HelixNetRepair] = []
    session_id: str | None


class WeaveInfo(OpenAIResponse):
    tree_id: str | None
    generated: int
    score: float | None


class ImproveInfo(OpenAIResponse):
    """What ``model: "improve:NAME"`` did: how many answers it drew, from which policy, with the
    reward of which round, and the chosen answer's score (and the answer form it was written in)."""

    run: str
    round: int
    drawn: int
    answer_from: str
    score: float
    form: str | None


class ChatCompletionResponse(OpenAIResponse):
    absent_when_none = frozenset({"helixnet", "weave", "improve"})

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str = FINGERPRINT
    choices: list[ChatCompletionChoice]
    usage: UsageInfo
    helixnet: HelixNetInfo | None = None
    weave: WeaveInfo | None = None
    improve: ImproveInfo | None = None


class DeltaMessage(OpenAIResponse):
    """What a chunk adds to a choice; only the parts it has are sent (``{}`` on the last chunk)."""

    absent_when_none = frozenset({"role", "content", "reasoning_content"})

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None  # HelixNet's actor answer and critique, before the answer


class ChatCompletionStreamChoice(OpenAIResponse):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(OpenAIResponse):
    absent_when_none = frozenset({"usage", "helixnet_stage", "helixnet_round", "helixnet"})

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str = FINGERPRINT
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None  # the last chunk only, with stream_options.include_usage
    helixnet_stage: str | None = None
    helixnet_round: int | None = None
    helixnet: HelixNetInfo | None = None


# ---------------------------------------------------------------------------------------- completions


class CompletionChoice(OpenAIResponse):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(OpenAIResponse):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str = FINGERPRINT
    choices: list[CompletionChoice]
    usage: UsageInfo


class CompletionChunk(OpenAIResponse):
    """A streamed piece of a completion; OpenAI names its object ``text_completion`` too."""

    absent_when_none = frozenset({"usage"})

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str = FINGERPRINT
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
