"""One OpenAI generation call on the served engine: ``n`` choices for each prompt, batched with the
server's other traffic, answered whole or streamed, and recorded as one session."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from helixloom import completion
from helixloom.engine import (
    Constraint,
    GeneratedTokenLogprobs,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    StreamDelta,
    Timings,
    Usage,
)
from helixloom.engine.citations import CitationSet
from helixloom.server.responses import (
    ChatCompletionChunk,
    ChatCompletionStreamChoice,
    ChatLogprobs,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    DeltaMessage,
    UsageInfo,
)
from helixloom.server.state import ServerState, Target
from helixloom.server.streaming import SESSION_HEADER, Emit, from_thread, sse

Endpoint = Literal["chat.completions", "completions"]


@dataclass(frozen=True)
class Origin:
    """Where a call came from, as its session records it; the session id is chosen up front so the
    response header can carry it before the first streamed byte."""

    endpoint: Endpoint
    key_label: str | None
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def of(cls, request: Request, endpoint: Endpoint) -> Origin:
        return cls(endpoint, request.state.key_label)

    @property
    def response_id(self) -> str:
        return f"{'chatcmpl' if self.endpoint == 'chat.completions' else 'cmpl'}-{self.session_id}"

    def answer(self, response: BaseModel) -> JSONResponse:
        """A whole response, the session's id in its header."""
        return JSONResponse(response.model_dump(), headers={SESSION_HEADER: self.session_id})

    def stream(self, chunks: AsyncIterator[BaseModel]) -> StreamingResponse:
        """A streamed response (server-sent events), the session's id in its header."""
        return sse(chunks, self.session_id)


@dataclass
class Call:
    """``n`` choices for each of ``prompts`` on ``target``; ``inputs`` are the messages the session
    records as what was asked."""

    state: ServerState
    target: Target
    prompts: list[str]
    params: SamplingParams
    n: int
    inputs: list[tuple[str, str]]
    origin: Origin
    constraint: Constraint | None = None
    citations: CitationSet | None = None  # a learned adapter's documents (``engine.citations``)
    requests: list[GenerationRequest] = field(init=False)

    def __post_init__(self) -> None:
        # Choice j of a prompt samples with seed + j: choices differ, and a rerun repeats them.
        self.requests = [
            GenerationRequest(
                prompt,
                self.params.model_copy(update={"seed": completion.requests_seed(self.params, j)}),
                self.target.adapter,
                self.constraint,
                self.citations,
            )
            for prompt in self.prompts
            for j in range(self.n)
        ]
        # Checked before any answer starts: a streamed request that could not run gets its 400,
        # not a 200 followed by an error event (and no session of empty answers is recorded).
        self.state.engine.check(self.requests)

    @property
    def chat(self) -> bool:
        return self.origin.endpoint == "chat.completions"

    def prompt_of(self, choice: int) -> str:
        return self.prompts[choice // self.n]

    def run(self) -> list[GenerationResult]:
        """Every choice, generated and recorded."""
        results = self.state.engine.generate(self.requests)
        self.record(results)
        return results

    def usage(self, results: list[GenerationResult]) -> Usage:
        """Each prompt counted once, however many choices it has."""
        prompt_tokens = sum(results[i * self.n].usage.prompt_tokens for i in range(len(self.prompts)))
        return Usage(prompt_tokens, sum(r.usage.completion_tokens for r in results))

    def record(self, results: list[GenerationResult]) -> None:
        completion.record(
            self.state.store,
            self.state.engine,
            self.inputs,
            self.params,
            results,
            # The adapter by its public name, and which version of it answered.
            adapter=self.target.name if self.target.kind == "adapter" else None,
            kind="api",
            meta={
                "endpoint": self.origin.endpoint,
                "model": self.target.name,
                "n": self.n,
                **({"adapter_version": self.target.version} if self.target.version else {}),
            },
            api_key_label=self.origin.key_label,
            session_id=self.origin.session_id,
        )

    async def stream(
        self, *, include_usage: bool, echo: bool = False
    ) -> AsyncIterator[ChatCompletionChunk | CompletionChunk]:
        """Chunks as they are produced: chat opens each choice with the assistant's role, a completion
        with ``echo`` with its prompt. The engine drops the rows if the client goes away, and the call
        is recorded all the same, unfinished choices as ``abort``."""
        gone = threading.Event()
        results: list[GenerationResult | None] = [None] * len(self.requests)
        partial = [""] * len(self.requests)

        def work(emit: Emit) -> None:
            for item in self.state.engine.stream_batch(self.requests, abort=lambda _: gone.is_set()):
                emit(item)

        try:
            for row in range(len(self.requests)):
                if self.chat:
                    yield self._chunk(row, DeltaMessage(role="assistant", content=""), None, None)
                elif echo:
                    yield self._chunk(row, self.prompt_of(row), None, None)
            async for row, event in from_thread(work, gone):
                if isinstance(event, StreamDelta):
                    partial[row] += event.text
                    content = DeltaMessage(content=event.text) if self.chat else event.text
                    yield self._chunk(row, content, event.logprobs, None)
                else:
                    results[row] = event
                    yield self._chunk(row, DeltaMessage() if self.chat else "", None, event.finish_reason)
            if include_usage:
                usage = UsageInfo.of(self.usage([r for r in results if r is not None]))
                yield self._usage_chunk(usage)
        finally:
            gone.set()
            recorded = [
                r or GenerationResult(partial[i], "abort", Usage(0, 0), (), Timings())
                for i, r in enumerate(results)
            ]
            await asyncio.to_thread(self.record, recorded)

    def _chunk(
        self,
        row: int,
        content: DeltaMessage | str,
        logprobs: tuple[GeneratedTokenLogprobs, ...] | None,
        finish_reason: str | None,
    ) -> ChatCompletionChunk | CompletionChunk:
        """One choice's piece: a chat ``delta``, or a completion's ``text``."""
        o = self.origin
        if isinstance(content, DeltaMessage):
            chat_lp = ChatLogprobs.of(logprobs) if logprobs else None
            choice = ChatCompletionStreamChoice(
                index=row, delta=content, logprobs=chat_lp, finish_reason=finish_reason
            )
            return ChatCompletionChunk(
                id=o.response_id, created=o.created, model=self.target.name, choices=[choice]
            )
        text_lp = CompletionLogprobs.of(logprobs) if logprobs else None
        piece = CompletionChoice(index=row, text=content, logprobs=text_lp, finish_reason=finish_reason)
        return CompletionChunk(id=o.response_id, created=o.created, model=self.target.name, choices=[piece])

    def _usage_chunk(self, usage: UsageInfo) -> ChatCompletionChunk | CompletionChunk:
        """The last chunk with ``include_usage``: no choices, the call's usage."""
        o, model = self.origin, self.target.name
        if self.chat:
            return ChatCompletionChunk(
                id=o.response_id, created=o.created, model=model, choices=[], usage=usage
            )
        return CompletionChunk(id=o.response_id, created=o.created, model=model, choices=[], usage=usage)
