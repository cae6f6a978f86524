"""Parallel decoding on llama.cpp: a continuous batch of requests, one KV sequence each.

A part of ``LlamaCppEngine``, kept apart so each file reads whole. The engine's generation context
holds ``n_parallel`` sequences (llama.cpp's batch API, one sequence id per request, one KV stream per
sequence). Each ``step`` decodes the next token of every running row, then admits waiting rows into
free sequences (a prompt is computed alone, and its first token sampled from it). A row that
finishes, or whose caller went away, frees its sequence at once.

llama.cpp applies a LoRA to the whole context, so the rows decoding together share one adapter (or
none); a request on another adapter waits, in arrival order, until the running ones finish and the
context switches to its adapter.

Numerics (measured on this machine's AVX2 build, one and two threads, by
``benchmarks/llamacpp_numerics.py``): parallel greedy text equals sequential greedy text because a
row's logits are bit for bit what it gets alone. That needs every kernel to compute a row alike
whatever the batch's size. With the plain weight layout (``llamacpp_seqs.plain_weights``) base-model
rows decoded in batches of 1 to 7 rows gave logits equal to alone, 8 did not; so base rows decode in
batches of at most ``BASE_ROWS_PER_DECODE``. A LoRA's float32 matmuls take another kernel for one row
than for several, so adapter rows decode one per ``llama_decode`` (interleaved, not batched). Prompts
are computed alone, in aligned chunks (``llamacpp_seqs.PREFILL_CHUNK``), which is what makes a reused
prefix exact too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from helixloom.engine.base import AbortCheck, BatchEvent, DecodeBatch
from helixloom.engine.citations import CitationGuard, mask_logits
from helixloom.engine.detok import IncrementalDecoder, StopMatcher
from helixloom.engine.llamacpp_seqs import Seq, SeqPool
from helixloom.engine.types import (
    FinishReason,
    GeneratedTokenLogprobs,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    StreamDelta,
    Timings,
    Usage,
)
from helixloom.errors import HelixloomError

# Base-model rows per llama_decode. Measured (one thread, plain weights, greedy, 16 steps): rows in
# batches of 2-7 gave logits bit-equal to the same rows alone, 8 did not (max |diff| 0.65 at the
# first step); with the repacked layout 4 already differed (a 4-row GEMM kernel vs the 1-row GEMV).
# 4 rows cost 1.8x one row's time (144 vs 79 ms), so decoding 4 together is 2.2x the tokens per second.
BASE_ROWS_PER_DECODE = 4
# Adapter rows: one per llama_decode. With a LoRA, 2 rows already differed from alone (max |diff|
# 0.64 after 5 steps): the adapter's float32 matmuls take another kernel for one row than for several.
ADAPTER_ROWS_PER_DECODE = 1
# How long a step with nothing to do waits for another batch to free a sequence (it is woken at once
# when one is freed; the bound only caps a missed wake-up).
FREED_WAIT_S = 0.05


@dataclass
class Row:
    """A request in the batch: waiting for a sequence, then decoding in it."""

    id: int
    request: GenerationRequest
    params: SamplingParams  # max_tokens fitted to the context
    prompt: list[int]  # the prompt's ids (without the token backed over by healing)
    heal: str  # the text of the prompt token backed over ("" without healing)
    sampler: Any  # its own llama.cpp sampler chain (settings, seed, grammar)
    decoder: IncrementalDecoder
    stops: StopMatcher
    enqueued: float
    seq: Seq | None = None
    index: int = -1  # where its logits sit in the last decode
    next: int = -1  # the sampled token not yet in the KV
    generated: list[int] = field(default_factory=list)
    logprobs: list[GeneratedTokenLogprobs] = field(default_factory=list)
    started: float = 0.0
    first_at: float | None = None
    citations: CitationGuard | None = None  # the ids a citation may name (``engine.citations``)


class Host(Protocol):
    """What the batch uses of ``LlamaCppEngine`` (which passes itself)."""

    _lock: threading.RLock
    _freed: threading.Condition  # on ``_lock``; notified when a sequence is freed
    _pool: SeqPool
    eos_token_ids: frozenset[int]
    closed: bool

    def _new_row(self, row_id: int, request: GenerationRequest) -> Row: ...
    def _claim(self, prompt: list[int], adapter: str | None) -> Seq | None: ...
    def _use_gen_adapter(self, name: str | None) -> None: ...
    def _sample_token(self, sampler: Any, index: int) -> int: ...
    def _heal_mask(self, heal: str) -> Any: ...
    def _logprobs_of(self, logits: Any, token: int, n: int) -> GeneratedTokenLogprobs: ...


class LlamaCppBatch(DecodeBatch):
    """The engine's continuous batch (see the module docstring)."""

    def __init__(self, engine: Host) -> None:
        self._engine = engine
        self._waiting: list[Row] = []  # arrival order
        self._active: list[Row] = []
        self._adapter: str | None = None  # the adapter of the running rows
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._waiting) + len(self._active)

    def needs(self, adapter: str) -> bool:
        """Whether a row of this batch, running or waiting, is on ``adapter``."""
        return any(r.request.adapter == adapter for r in (*self._waiting, *self._active))

    def join(self, requests: Sequence[GenerationRequest]) -> list[int]:
        rows: list[Row] = []
        try:
            for i, r in enumerate(requests):
                rows.append(self._engine._new_row(self._next_id + i, r))
        except BaseException:
            for row in rows:  # none joins when one cannot: the samplers already made are freed
                row.sampler.close()
            raise
        self._next_id += len(rows)
        self._waiting.extend(rows)
        return [r.id for r in rows]

    def step(self, abort: AbortCheck | None = None) -> list[BatchEvent]:
        events: list[BatchEvent] = []
        engine = self._engine
        with engine._lock:
            if engine.closed:  # its contexts are freed: touching them would crash the process
                self.close()
                raise HelixloomError("the llama.cpp engine was closed while this batch ran")
            try:
                if abort is not None:
                    for row in [r for r in (*self._active, *self._waiting) if abort(r.id)]:
                        self._end(row, "abort", events)
                self._decode(events)
                self._admit(events)
                if not events and not self._active and self._waiting:
                    # Every sequence is held by another batch: wait (the lock released) until one
                    # is freed, instead of a caller's loop spinning on empty steps.
                    engine._freed.wait(FREED_WAIT_S)
            except BaseException:
                self.close()
                raise
        return events

    def close(self) -> None:
        """Free every sequence this batch holds (after an error, or when its consumer left). Their
        KV may be half written, so it is forgotten."""
        with self._engine._lock:
            for row in self._active:
                if row.seq is not None and not self._engine.closed:
                    self._engine._pool.forget(row.seq)
                row.sampler.close()
            if self._active:
                self._engine._freed.notify_all()
            for row in self._waiting:
                row.sampler.close()
            self._active, self._waiting = [], []

    # ------------------------------------------------------------------ steps

    def _decode(self, events: list[BatchEvent]) -> None:
        """One token for every running row: its last sampled token goes into its sequence."""
        engine = self._engine
        if not self._active:
            return
        engine._use_gen_adapter(self._adapter)
        size = BASE_ROWS_PER_DECODE if self._adapter is None else ADAPTER_ROWS_PER_DECODE
        rows = list(self._active)
        for at in range(0, len(rows), size):
            chunk = rows[at : at + size]
            seqs = [r.seq for r in chunk if r.seq is not None]
            engine._pool.fill([(s.id, len(s.tokens), r.next, True) for s, r in zip(seqs, chunk, strict=True)])
            engine._pool.run()
            for i, row in enumerate(chunk):
                assert row.seq is not None
                row.seq.tokens.append(row.next)
                row.index = i
                self._advance(row, events)

    def _admit(self, events: list[BatchEvent]) -> None:
        """Waiting rows take free sequences, in arrival order, while they share the running rows'
        adapter (with none running, the first waiting row's adapter is switched on)."""
        engine = self._engine
        while self._waiting:
            head = self._waiting[0]
            if self._active and head.request.adapter != self._adapter:
                return  # it waits for the adapter switch; later rows wait behind it
            seq = engine._claim(head.prompt, head.request.adapter)
            if seq is None:
                return  # every sequence is busy
            self._waiting.pop(0)
            self._adapter = head.request.adapter
            engine._use_gen_adapter(self._adapter)
            head.seq = seq
            head.started = time.perf_counter()
            self._active.append(head)
            head.index = engine._pool.prefill(seq, head.prompt)
            self._advance(head, events)  # its first token, from its prompt

    def _advance(self, row: Row, events: list[BatchEvent]) -> None:
        """Sample the row's next token from the last decode and record what it adds."""
        engine = self._engine
        p = row.params
        logits = engine._pool.logits(row.index) if p.logprobs is not None or row.heal else None
        if row.heal and not row.generated:
            # The first new token must start with the text of the prompt token backed over.
            logits_view = engine._pool.logits(row.index, copy=False)
            logits_view[~engine._heal_mask(row.heal)[: logits_view.shape[0]]] = -float("inf")
        if row.citations is not None:
            allowed = row.citations.allowed(row.citations.tail_of(row.generated))
            if allowed is not None:
                mask_logits(engine._pool.logits(row.index, copy=False), allowed)
        token = engine._sample_token(row.sampler, row.index)
        row.first_at = row.first_at or time.perf_counter()
        row.generated.append(token)
        step = None
        if logits is not None and p.logprobs is not None:
            row.logprobs.append(engine._logprobs_of(logits, token, p.logprobs))
            step = (row.logprobs[-1],)
        if token in engine.eos_token_ids and not p.ignore_eos:
            # the text held back as a possible stop's start is released: no stop can follow now
            text = row.stops.feed(_unheal(row.decoder.flush(), row.heal)) + row.stops.finish()
            if step or text:
                events.append((row.id, StreamDelta(text, step)))
            self._end(row, "stop", events)
            return
        text = row.stops.feed(_unheal_stream(row.decoder.push(token), row.heal, row.generated))
        if row.stops.stopped:
            if text:
                events.append((row.id, StreamDelta(text, step)))
            self._end(row, "stop", events)
            return
        if text or step:
            events.append((row.id, StreamDelta(text, step)))
        if len(row.generated) >= p.max_tokens:
            self._end(row, "length", events)
            return
        row.next = token

    def _end(self, row: Row, finish: FinishReason, events: list[BatchEvent]) -> None:
        """The row's result; its sequence is free for the next waiting row at once."""
        if row in self._active:
            self._active.remove(row)
        else:
            self._waiting.remove(row)
        if row.seq is not None:
            self._engine._pool.release(row.seq)
            self._engine._freed.notify_all()
        row.sampler.close()
        if not row.stops.stopped and (rest := row.stops.feed(row.decoder.flush()) + row.stops.finish()):
            events.append((row.id, StreamDelta(rest)))
        done = time.perf_counter()
        started = row.started or done
        first_at = row.first_at or done
        events.append(
            (
                row.id,
                GenerationResult(
                    text=row.stops.text,
                    finish_reason="stop" if row.stops.stopped else finish,
                    usage=Usage(len(row.prompt), len(row.generated)),
                    token_ids=tuple(row.generated),
                    timings=Timings(
                        queued=started - row.enqueued, prefill=first_at - started, decode=done - first_at
                    ),
                    logprobs=tuple(row.logprobs) if row.params.logprobs is not None else None,
                ),
            )
        )


def fit(p: SamplingParams, prompt_tokens: int, limit: int) -> SamplingParams:
    """``p`` with max_tokens fitted to a sequence of ``limit`` tokens (``fit_context``), or an error
    when the prompt and max_tokens cannot fit."""
    room = limit - prompt_tokens
    if p.fit_context and 0 < room < p.max_tokens:
        p = p.model_copy(update={"max_tokens": room})
    if prompt_tokens + p.max_tokens > limit:
        raise HelixloomError(
            f"prompt ({prompt_tokens} tokens) + max_tokens ({p.max_tokens}) exceeds the context of "
            f"{limit} tokens",
            param="max_tokens",
        )
    return p


def _unheal(text: str, heal: str) -> str:
    return text[len(heal) :] if heal and text.startswith(heal) else text


def _unheal_stream(text: str, heal: str, generated: list[int]) -> str:
    # Only the first delta carries the backed-up prompt text.
    return _unheal(text, heal) if len(generated) == 1 else text
