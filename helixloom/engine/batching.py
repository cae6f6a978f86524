"""A scheduler in front of an engine: concurrent callers' requests run together in batches.

``BatchingEngine`` is itself an ``Engine``, so pipelines (HelixNet, Weave, ...) running for many
clients at once batch with each other and with plain completions without knowing it. One worker
thread owns the inner engine; callers queue requests and read their events from their own queue.
Requests for different adapters of one base share a batch (the inner engine applies adapters per
row).

Over an engine that runs a continuous batch (``continuous_batching``: the hf engine) a
request that arrives while others decode joins them at the next step, and a row that finishes, or
whose caller went away, leaves at once. Over other engines a batch runs to completion and requests
that arrive meanwhile form the next one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from helixloom.engine.base import AbortCheck, BatchEvent, DecodeBatch, Engine
from helixloom.engine.types import (
    AdapterInfo,
    GenerationRequest,
    GenerationResult,
    NextTokenLogprobs,
    PromptLogprobs,
    Timings,
    Usage,
)
from helixloom.errors import HelixloomError


class EngineBusy(HelixloomError):
    """The scheduler's queue is full; the caller should retry later."""


@dataclass
class _Pending:
    request: GenerationRequest
    row: int
    events: queue.SimpleQueue[tuple[int, object]]
    aborted: threading.Event = field(default_factory=threading.Event)


_STOP = object()


class BatchingEngine(Engine):
    """Collects requests from many threads and runs them through ``inner`` in batches."""

    def __init__(
        self,
        inner: Engine,
        *,
        max_batch: int = 8,
        max_queue: int = 64,
        gather_idle: float = 0.01,
        gather_max: float = 0.05,
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise HelixloomError("max_batch and max_queue must be at least 1")
        self.inner = inner
        for name in (*Engine.DESCRIPTION, *Engine.CAPABILITIES):  # the inner engine's, all of them
            setattr(self, name, getattr(inner, name))
        self.max_batch = max_batch
        # A batch starts once no request has arrived for gather_idle seconds (or gather_max after its
        # first): clients that start together share a batch, a lone request waits only gather_idle.
        self.gather_idle = gather_idle
        self.gather_max = gather_max
        self._queue: queue.Queue[_Pending | object] = queue.Queue(maxsize=max_queue)
        self.batches_run = 0  # batches started (a continuous batch: each time it starts from empty)
        self.largest_batch = 0  # most rows decoding together
        self.aborted_rows = 0  # rows ended early because their caller went away
        self._worker = threading.Thread(target=self._loop, name=f"batching-{inner.model_name}", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ callers

    def stream_batch(
        self, requests: Sequence[GenerationRequest], *, abort: AbortCheck | None = None
    ) -> Iterator[BatchEvent]:
        self.check(requests)  # here, in the caller's thread: a bad request fails alone, before any batch
        events: queue.SimpleQueue[tuple[int, object]] = queue.SimpleQueue()
        pendings = [_Pending(r, i, events) for i, r in enumerate(requests)]
        try:
            for p in pendings:
                self._queue.put_nowait(p)
        except queue.Full:
            for p in pendings:
                p.aborted.set()
            raise EngineBusy(
                f"the engine for {self.model_name} has {self._queue.maxsize} requests waiting",
                "retry in a moment",
            ) from None
        remaining = len(pendings)
        try:
            while remaining:
                row, event = events.get()
                if isinstance(event, BaseException):
                    raise event
                if abort is not None and abort(row):
                    pendings[row].aborted.set()
                if isinstance(event, GenerationResult):
                    remaining -= 1
                yield row, event  # type: ignore[misc]
        finally:
            for p in pendings:  # a caller that stops reading frees its rows
                p.aborted.set()

    def check(self, requests: Sequence[GenerationRequest]) -> None:
        """Raise ``HelixloomError`` unless every request could run: no more of them than the queue
        holds (they could never all be waiting), each valid for the engine (``Engine.validate``).
        ``stream_batch`` checks, and a server checks before it starts a streamed answer."""
        if len(requests) > self._queue.maxsize:
            raise HelixloomError(
                f"{len(requests)} completions in one request, more than this server's queue holds "
                f"({self._queue.maxsize})",
                "ask for fewer (n x prompts)",
                param="n",
            )
        for r in requests:
            self.inner.validate(r)

    def validate(self, request: GenerationRequest) -> None:
        self.inner.validate(request)

    def next_token_logprobs(
        self,
        prompts: Sequence[str],
        *,
        adapter: str | None = None,
        top_k: int = 5,
        candidates: Sequence[str] = (),
    ) -> list[NextTokenLogprobs]:
        return self.inner.next_token_logprobs(prompts, adapter=adapter, top_k=top_k, candidates=candidates)

    def embed(
        self,
        texts: Sequence[str],
        *,
        adapter: str | None = None,
        depth: float = 1.0,
        prefixes: Sequence[str] | None = None,
        pooling: str = "mean",
    ) -> list[list[float]]:
        return self.inner.embed(texts, adapter=adapter, depth=depth, prefixes=prefixes, pooling=pooling)

    def prompt_logprobs(
        self, prompts: Sequence[str], *, adapter: str | None = None, top_k: int = 0
    ) -> list[PromptLogprobs]:
        return self.inner.prompt_logprobs(prompts, adapter=adapter, top_k=top_k)

    def load_adapter(self, name: str, path: str) -> AdapterInfo:
        return self.inner.load_adapter(name, path)

    def adapters(self) -> list[AdapterInfo]:
        return self.inner.adapters()

    def unload_adapter(self, name: str) -> None:
        """The inner engine's; it waits for the running batch (the inner engine's lock), so a caller
        that must not wait (an event loop) calls it from a thread of its own."""
        self.inner.unload_adapter(name)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self.inner.tokenize(text, add_special_tokens=add_special_tokens)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.inner.detokenize(ids)

    def format_chat(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        return self.inner.format_chat(messages, add_generation_prompt=add_generation_prompt)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._queue.put(_STOP)
        self._worker.join(timeout=30)
        self.inner.close()

    # ------------------------------------------------------------------ worker

    def _loop(self) -> None:
        if self.inner.continuous_batching:
            self._loop_continuous()
            return
        while True:
            batch, stop = self._gather(self.max_batch)
            live = self._live(batch)
            if live:
                self._run(live)
            if stop:
                return

    def _gather(self, room: int) -> tuple[list[_Pending], bool]:
        """Wait for a first request, then take the ones arriving within the gather window (up to
        ``room``): clients that start together share a prefill. Also says whether to stop."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.perf_counter() + self.gather_max
        while len(batch) < room:
            wait = min(self.gather_idle, deadline - time.perf_counter())
            try:
                item = self._queue.get(timeout=max(0.0, wait))
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)
                break
            batch.append(item)
        return [p for p in batch if isinstance(p, _Pending)], False

    def _take(self, room: int) -> tuple[list[_Pending], bool]:
        """The requests waiting now (up to ``room``), without waiting; also says whether to stop."""
        taken: list[_Pending] = []
        while len(taken) < room:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return taken, True
            assert isinstance(item, _Pending)
            taken.append(item)
        return taken, False

    @staticmethod
    def _live(batch: list[_Pending]) -> list[_Pending]:
        """The requests whose callers still wait; the others get their (empty) aborted result."""
        for p in batch:
            if p.aborted.is_set():
                p.events.put((p.row, _aborted_result()))
        return [p for p in batch if not p.aborted.is_set()]

    def _loop_continuous(self) -> None:
        batch = self.inner.open_batch()
        members: dict[int, _Pending] = {}  # row id in the batch -> its request
        stopping = False
        while members or not stopping:
            room = self.max_batch - len(members) if batch.can_join else 0
            if not members:
                arrived, stopping = self._gather(room)
            elif room > 0 and not stopping:
                arrived, stopping = self._take(room)
            else:
                arrived = []
            arrived = self._live(arrived)
            if arrived:
                if not members:
                    self.batches_run += 1
                members.update(self._join(batch, arrived))
                self.largest_batch = max(self.largest_batch, len(members))
            if not members:
                continue
            try:
                events = batch.step(lambda row_id: members[row_id].aborted.is_set())
            except Exception as exc:  # handed to every caller in the batch, never lost
                for p in members.values():
                    p.events.put((p.row, exc))
                members.clear()
                batch = self.inner.open_batch()
                continue
            for row_id, event in events:
                p = members[row_id]
                if isinstance(event, GenerationResult):
                    del members[row_id]
                    self.aborted_rows += event.finish_reason == "abort"
                p.events.put((p.row, event))

    def _join(self, batch: DecodeBatch, arrived: list[_Pending]) -> dict[int, _Pending]:
        """Join the requests to the running batch; one that cannot run fails alone."""
        try:
            ids = batch.join([p.request for p in arrived])
        except Exception as exc:
            if len(arrived) == 1:
                arrived[0].events.put((arrived[0].row, exc))
                return {}
            joined: dict[int, _Pending] = {}
            for p in arrived:  # which one? each joins alone, and gets its own error
                joined.update(self._join(batch, [p]))
            return joined
        return dict(zip(ids, arrived, strict=True))

    def _run(self, batch: list[_Pending]) -> None:
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        finished = [False] * len(batch)
        started = False
        try:
            for i, event in self.inner.stream_batch(
                [p.request for p in batch], abort=lambda i: batch[i].aborted.is_set()
            ):
                started = True
                if isinstance(event, GenerationResult):
                    finished[i] = True
                    self.aborted_rows += event.finish_reason == "abort"
                batch[i].events.put((batch[i].row, event))
        except BaseException as exc:  # handed to the waiting callers, never lost
            if not started and len(batch) > 1 and isinstance(exc, Exception):
                # Nothing was produced yet: one row's problem must not fail the others, so each row
                # runs alone and gets its own result or its own error.
                for p in batch:
                    self._run([p])
                return
            for i, p in enumerate(batch):
                if not finished[i]:
                    p.events.put((p.row, exc))


def _aborted_result() -> GenerationResult:
    return GenerationResult("", "abort", Usage(0, 0), (), Timings())
