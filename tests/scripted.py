"""A scripted engine: returns queued or computed text and records every request it was given.

Pipelines (HelixNet, later Weave, question generation, judges) are tested against it for exact
prompts and control flow; the tiny real model covers the numerics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

from helixloom.engine import (
    AbortCheck,
    AdapterInfo,
    BatchEvent,
    Engine,
    GenerationRequest,
    GenerationResult,
    NextTokenLogprobs,
    StreamDelta,
    Timings,
    Usage,
)
from helixloom.engine.detok import StopMatcher


class ScriptedEngine(Engine):
    backend = "scripted"
    supports_adapters = True
    supports_mixed_adapter_batch = True

    supports_logprobs = True

    def __init__(
        self,
        respond: Callable[[GenerationRequest], str] | list[str],
        *,
        model_name: str = "scripted",
        judge: Callable[[str], float] | None = None,
    ):
        """``judge(prompt)`` is the probability of "yes" as the next token after ``prompt``."""
        self._respond = respond
        self._judge = judge
        self.scored: list[str] = []
        self.model_name = model_name
        self.requests: list[GenerationRequest] = []
        self._adapters: dict[str, AdapterInfo] = {}

    def stream_batch(
        self, requests: Sequence[GenerationRequest], *, abort: AbortCheck | None = None
    ) -> Iterator[BatchEvent]:
        for row, request in enumerate(requests):
            self.requests.append(request)
            full = self._respond.pop(0) if isinstance(self._respond, list) else self._respond(request)
            stops = StopMatcher(request.sampling.stop)
            words = full.split(" ")
            for i, word in enumerate(words):
                if text := stops.feed(word if i == 0 else " " + word):
                    yield row, StreamDelta(text)
                if stops.stopped:
                    break
            if not stops.stopped and (rest := stops.finish()):
                yield row, StreamDelta(rest)
            yield (
                row,
                GenerationResult(
                    text=stops.text,
                    finish_reason="stop",
                    usage=Usage(len(request.prompt.split()), len(stops.text.split())),
                    token_ids=(),
                    timings=Timings(),
                ),
            )

    def next_token_logprobs(
        self,
        prompts: Sequence[str],
        *,
        adapter: str | None = None,
        top_k: int = 5,
        candidates: Sequence[str] = (),
    ) -> list[NextTokenLogprobs]:
        if self._judge is None:
            raise NotImplementedError("give the scripted engine a judge to score with it")
        out = []
        for prompt in prompts:
            self.scored.append(prompt)
            p = min(max(self._judge(prompt), 1e-6), 1 - 1e-6)
            values = {"yes": math.log(p), "no": math.log(1 - p)}
            out.append(NextTokenLogprobs((), {c: values.get(c) for c in candidates}, len(prompt.split())))
        return out

    def load_adapter(self, name: str, path: str) -> AdapterInfo:
        self._adapters[name] = AdapterInfo(name, path, None, ())
        return self._adapters[name]

    def adapters(self) -> list[AdapterInfo]:
        return list(self._adapters.values())

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    @property
    def prompts(self) -> list[str]:
        return [r.prompt for r in self.requests]
