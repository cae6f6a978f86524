"""The hf engine's continuous batch: rows join between decode steps and leave as soon as they end.

Each step samples one token for every row (its own sampling, grammar, stops; ``decode.step``),
drops the rows that finished or whose caller went away, and runs the rest through the model once.
A row joining runs its prompt first (a batch of joiners prefills together; a prompt whose start is
in the prefix cache runs only its new tokens) and its KV is stacked onto the batch's (``kv``).

Why not transformers' ``ContinuousBatchingManager``: it packs every request's tokens into one row
of a paged cache, while PEFT applies per-request adapters by row of the batch (``adapter_names``),
so a batch there cannot mix adapters; its sampling and logits processors are per manager, not per
request, so per-row seeds, grammars and token healing would not fit either. Here transformers'
own ``DynamicCache`` (with Gemma's sliding-window layers) is kept and only reshaped.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from helixloom.engine.base import AbortCheck, BatchEvent, DecodeBatch
from helixloom.engine.hf import decode, kv
from helixloom.engine.types import GenerationRequest

if TYPE_CHECKING:
    import torch


@dataclass
class _Live:
    id: int
    row: decode.Row
    version: str  # the adapter's content hash when the row joined: what its KV was computed under
    enqueued: float
    started: float
    prefill_done: float
    fed: int  # tokens whose KV is in the cache (prompt, then each generated token but the newest)


@dataclass
class _Part:
    """Rows that just ran their prompts: their cache, mask, last positions and next-token logits."""

    cache: Any
    attention: torch.Tensor  # [B, S]
    positions: torch.Tensor  # [B, 1]
    logits: torch.Tensor  # [B, V]


_ids = itertools.count()


class RunningBatch(DecodeBatch):
    """Rows of one ``HFEngine`` decoding together. Not thread-safe: one scheduler drives it."""

    def __init__(self, engine: Any) -> None:
        """``engine``: the ``HFEngine`` whose model, lock and caches it uses (not imported here:
        the engine imports this module)."""
        self.engine = engine
        self.live: list[_Live] = []
        self._state: _Part | None = None

    def __len__(self) -> int:
        return len(self.live)

    # ------------------------------------------------------------------ joining

    def join(self, requests: Sequence[GenerationRequest]) -> list[int]:
        e = self.engine
        torch = e._torch
        enqueued = time.perf_counter()
        with e._lock, torch.inference_mode():
            started = time.perf_counter()
            rows = [e._new_row(r) for r in requests]
            e._adapter_names([r.adapter for r in requests])  # an unknown adapter fails here, alone
            versions = [e._version(r.adapter) for r in requests]
            e.prefix_cache.retain(e._live_versions())
            # Rows with the same prompt and adapter (n samples, a search node's children) share one
            # prefill; its cache and logits are copied out to every such row.
            keys = [
                (tuple(row.prompt_ids), versions[i], i * (not e.share_prefill)) for i, row in enumerate(rows)
            ]
            unique = list(dict.fromkeys(keys))
            firsts = [keys.index(k) for k in unique]
            parts: list[tuple[list[int], _Part]] = []  # (indices into unique, their part)
            misses: list[int] = []
            for u, i in enumerate(firsts):
                hit = e.prefix_cache.lookup(versions[i], rows[i].prompt_ids) if e.prefix_caching else None
                if hit is None:
                    misses.append(u)
                else:
                    parts.append(([u], self._prefill_from(rows[i], hit.length, hit.value)))
            if misses:
                parts.append((misses, self._prefill([rows[firsts[u]] for u in misses])))
            prefill_done = time.perf_counter()
            new: list[_Live] = []
            by_request: dict[int, int] = {}  # request index -> its row id (parts come in another order)
            for members, part in parts:
                # Every row whose prompt this part ran, in order; duplicates share its rows.
                owners = [i for i, k in enumerate(keys) if unique.index(k) in members]
                pick = torch.tensor([members.index(unique.index(keys[i])) for i in owners], device=e.device)
                if len(owners) != len(members) or pick.tolist() != list(range(len(members))):
                    part.cache.batch_select_indices(pick)
                    part = _Part(part.cache, part.attention[pick], part.positions[pick], part.logits[pick])
                self._append(part)
                for i in owners:
                    by_request[i] = len(new)
                    new.append(
                        _Live(
                            next(_ids),
                            rows[i],
                            versions[i],
                            enqueued,
                            started,
                            prefill_done,
                            len(rows[i].prompt_ids),
                        )
                    )
            self.live.extend(new)
        return [new[by_request[i]].id for i in range(len(requests))]

    def _prefill(self, rows: list[decode.Row]) -> _Part:
        """Left-padded prompts in one forward pass."""
        e = self.engine
        input_ids, attention, positions = e._left_pad([row.prompt_ids for row in rows])
        cache = kv.empty(e.model_config)
        out = e._forward(
            [row.request.adapter for row in rows],
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            past_key_values=cache,  # filled in place (the name every transformers 5 release reads)
            use_cache=True,
            logits_to_keep=1,
        )
        e.prefill_tokens += int(attention.sum())
        return _Part(cache, attention, positions[:, -1:], out.logits[:, -1, :].float())

    def _prefill_from(self, row: decode.Row, start: int, cached: kv.RowKV) -> _Part:
        """One prompt whose first ``start`` tokens' KV is ``cached``: only the rest runs."""
        e = self.engine
        torch = e._torch
        ids = row.prompt_ids
        cache = kv.build(e.model_config, cached)
        out = e._forward(
            [row.request.adapter],
            input_ids=torch.tensor([ids[start:]], device=e.device),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=e.device),
            position_ids=torch.arange(start, len(ids), device=e.device)[None],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        e.prefill_tokens += len(ids) - start
        e.reused_tokens += start
        positions = torch.tensor([[len(ids) - 1]], device=e.device)
        attention = torch.ones((1, len(ids)), dtype=torch.long, device=e.device)
        return _Part(cache, attention, positions, out.logits[:, -1, :].float())

    def _append(self, part: _Part) -> None:
        """Stack ``part``'s rows under the batch's, both right-aligned to the wider of the two."""
        torch = self.engine._torch
        state = self._state
        if state is None:
            self._state = part
            return
        width = max(state.attention.shape[1], part.attention.shape[1])
        for s in (state, part):
            if s.attention.shape[1] < width:
                kv.resize(s.cache, width)
                pad = s.attention.new_zeros((s.attention.shape[0], width - s.attention.shape[1]))
                s.attention = torch.cat([pad, s.attention], dim=1)
        kv.stack(state.cache, part.cache)
        state.attention = torch.cat([state.attention, part.attention])
        state.positions = torch.cat([state.positions, part.positions])
        state.logits = torch.cat([state.logits, part.logits])

    @property
    def can_join(self) -> bool:
        """Rows can join now (the batch is empty, or its cache can be reshaped)."""
        return self._state is None or kv.reshapable(self._state.cache)

    # ------------------------------------------------------------------ stepping

    def step(self, abort: AbortCheck | None = None) -> list[BatchEvent]:
        e = self.engine
        torch = e._torch
        if not self.live:
            return []
        state = self._state
        assert state is not None
        events: list[BatchEvent] = []
        tokens: list[int] = []
        keep: list[int] = []
        with e._lock, torch.inference_mode():
            for pos, live in enumerate(self.live):
                if abort is not None and abort(live.id):
                    live.row.finish = "abort"
                else:
                    token, delta = decode.step(live.row, state.logits[pos], e.vocab, e.eos_token_ids)
                    if delta is not None:
                        events.append((live.id, delta))
                if live.row.finish is None:
                    keep.append(pos)
                    tokens.append(token)
                else:
                    self._remember(pos, live)
                    events.append(
                        (live.id, decode.result(live.row, live.enqueued, live.started, live.prefill_done))
                    )
            if len(keep) < len(self.live):
                self._keep(keep)
            if not self.live:
                return events
            e.decode_tokens += len(self.live)
            state.attention = torch.cat(
                [state.attention, state.attention.new_ones((len(self.live), 1))], dim=1
            )
            state.positions = state.positions + 1
            out = e._forward(
                [live.row.request.adapter for live in self.live],
                input_ids=torch.tensor(tokens, device=e.device)[:, None],
                attention_mask=state.attention,
                position_ids=state.positions,
                past_key_values=state.cache,
                use_cache=True,
            )
            state.logits = out.logits[:, -1, :].float()  # the cache grew in place
            for live in self.live:
                live.fed += 1
        return events

    def _keep(self, keep: list[int]) -> None:
        """Only the rows at batch positions ``keep`` go on; columns now padding for all are trimmed."""
        torch = self.engine._torch
        state = self._state
        assert state is not None
        self.live = [self.live[p] for p in keep]
        if not keep:
            self._state = None
            return
        index = torch.tensor(keep, device=self.engine.device)
        state.cache.batch_select_indices(index)
        state.attention, state.positions, state.logits = (
            state.attention[index],
            state.positions[index],
            state.logits[index],
        )
        used = state.attention.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else 0
        if first > 0 and kv.reshapable(state.cache):
            kv.resize(state.cache, state.attention.shape[1] - first)
            state.attention = state.attention[:, first:]

    def _remember(self, pos: int, live: _Live) -> None:
        """Keep a finished row's KV (prompt and answer) for later requests that start the same way,
        if it was computed under the adapter content that is still loaded under its name."""
        e = self.engine
        state = self._state
        if not e.prefix_caching or state is None or not kv.reshapable(state.cache):
            return
        if e._version(live.row.request.adapter) != live.version:
            return  # reloaded meanwhile: part of this KV may be the old adapter's
        tokens = (live.row.prompt_ids + live.row.token_ids)[: live.fed]
        e.prefix_cache.store(live.version, tokens, kv.extract(state.cache, pos, live.fed))
