"""One row of a batch while it decodes: its state, how its next token is picked, and its result.

The engine's loop runs the model for all rows at once; everything per row (sampling parameters and
seed, grammar, token healing, stop sequences, logprobs) happens here, on that row's logits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from helixloom.engine.citations import CitationGuard, guard_logits
from helixloom.engine.detok import IncrementalDecoder, StopMatcher
from helixloom.engine.grammar import RowMatcher
from helixloom.engine.hf.vocab import Vocab
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

if TYPE_CHECKING:
    import torch


@dataclass
class Row:
    """Decoding state of one request in the batch."""

    request: GenerationRequest
    prompt_ids: list[int]
    generator: torch.Generator
    decoder: IncrementalDecoder
    stops: StopMatcher
    heal: str = ""  # prompt text backed up over; the first token must start with it
    grammar: RowMatcher | None = None
    citations: CitationGuard | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[GeneratedTokenLogprobs] = field(default_factory=list)
    finish: FinishReason | None = None

    @property
    def params(self) -> SamplingParams:
        return self.request.sampling


def step(
    row: Row, logits: torch.Tensor, vocab: Vocab, eos_token_ids: frozenset[int]
) -> tuple[int, StreamDelta | None]:
    """Sample one token for ``row`` from its logits ([V]) and advance its text; sets ``row.finish``
    when the row ends (EOS, a stop sequence, or max_tokens)."""
    p = row.params
    if row.heal and not row.token_ids:
        logits = logits.masked_fill(~vocab.starting_with(row.heal), -math.inf)
    if row.grammar is not None:
        logits = row.grammar.mask(logits)
    if row.citations is not None:
        allowed = row.citations.allowed(row.citations.tail_of(row.token_ids))
        logits = guard_logits(row.citations, logits, allowed)
    token = sample(logits, p, row.generator)
    if row.grammar is not None:
        row.grammar.accept(token)
    row.token_ids.append(token)
    step_logprobs: tuple[GeneratedTokenLogprobs, ...] | None = None
    if p.logprobs is not None:
        row.logprobs.append(vocab.logprobs(logits, token, p.logprobs))
        step_logprobs = (row.logprobs[-1],)
    if token in eos_token_ids and not p.ignore_eos:
        row.finish = "stop"
        text = row.stops.feed(_unheal(row, row.decoder.flush())) + row.stops.finish()
    else:
        text = row.stops.feed(_unheal(row, row.decoder.push(token)))
        if row.stops.stopped:
            row.finish = "stop"
        elif len(row.token_ids) >= p.max_tokens:
            row.finish = "length"
            text += row.stops.feed(_unheal(row, row.decoder.flush()))
            if not row.stops.stopped:
                text += row.stops.finish()
            else:
                row.finish = "stop"
    if text or step_logprobs:
        return token, StreamDelta(text, step_logprobs)
    return token, None


def _unheal(row: Row, text: str) -> str:
    """Drop the backed-up prompt text from the start of the completion."""
    if row.heal and text:
        cut = min(len(row.heal), len(text))
        text, row.heal = text[cut:], row.heal[cut:]
    return text


def result(row: Row, enqueued: float, started: float, prefill_done: float) -> GenerationResult:
    """The finished row's result; its decode time runs until now."""
    assert row.finish is not None
    return GenerationResult(
        text=row.stops.text,
        finish_reason=row.finish,
        usage=Usage(len(row.prompt_ids), len(row.token_ids)),
        token_ids=tuple(row.token_ids),
        timings=Timings(
            queued=started - enqueued,
            prefill=prefill_done - started,
            decode=time.perf_counter() - prefill_done,
        ),
        logprobs=tuple(row.logprobs) if row.params.logprobs is not None else None,
    )


def sample(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator) -> int:
    """Pick the next token from one row's logits ([V]) under ``p``: greedy, top-k, top-p, temperature."""
    import torch

    if p.greedy:
        return int(logits.argmax())
    scores = logits / p.temperature
    if p.top_k and p.top_k < scores.shape[-1]:
        kth = scores.topk(p.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if p.top_p < 1.0:
        sorted_scores, order = scores.sort(descending=True)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p; the first token always stays.
        drop = (cumulative - sorted_scores.softmax(-1)) >= p.top_p
        scores = scores.index_fill(0, order[drop], -math.inf)
    probs = scores.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def torch_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (one per row, so a row's text depends only on its seed)."""
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    return g
