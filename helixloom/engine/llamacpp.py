"""The ``llamacpp`` backend: GGUF models on llama.cpp (llama-cpp-python), fast on CPU.

Spec: ``llamacpp:FILE.gguf`` or ``llamacpp:default`` (the embedded model's GGUF, no conversion).

Requests on the same adapter decode together: one llama.cpp context holds ``n_parallel``
sequences (one sequence id per request, llama.cpp's batch API); each step decodes one token of
every running row in one batch, and a finished row's sequence takes the next waiting request at
once. A prompt is computed alone in its own batches, and the weights are loaded without llama.cpp's
repacked layouts, so a row's logits are the same whatever else runs beside it: parallel greedy
text equals sequential greedy text.

A finished sequence keeps its KV cache; a later prompt takes the sequence holding its longest
prefix, but only one computed under the same adapter content (``AdapterInfo.version``, a hash
of the GGUF file): LoRA changes K and V, so a prefix computed under another adapter, or under an
older file of the same name, is recomputed (the bug llama.cpp's server shipped, its issue 26207).
Adapters are GGUF LoRA files (see ``helixloom adapters export-gguf``), switched per group of
requests on the context without reloading.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import math
import os
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helixloom import models
from helixloom.engine.base import AbortCheck, BatchEvent, Engine, TokenPrompt
from helixloom.engine.detok import IncrementalDecoder, StopMatcher, is_control_marker
from helixloom.engine.lora_folder import adapter_version
from helixloom.engine.types import (
    AdapterInfo,
    Constraint,
    FinishReason,
    GeneratedTokenLogprobs,
    GenerationRequest,
    GenerationResult,
    NextTokenLogprobs,
    SamplingParams,
    StreamDelta,
    Timings,
    TokenLogprob,
    Usage,
)
from helixloom.errors import AdapterError, HelixloomError, ModelNotFound

GGUF_ADAPTER_FILE = "adapter_model.gguf"  # where `helixloom adapters export-gguf` writes by default


class LlamaCppEngine(Engine):
    backend = "llamacpp"
    supports_adapters = True
    supports_mixed_adapter_batch = False  # rows run one after another; each with its own adapter
    supports_logprobs = True
    supports_constraints = True
    supports_tokenize = True
    supports_token_prompts = True

    def __init__(
        self,
        spec: str | models.ModelSource,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_parallel: int = 4,
    ) -> None:
        """``spec``: ``llamacpp:FILE.gguf`` or ``llamacpp:default``, or its parsed ``ModelSource``.
        ``n_ctx``: the most tokens one request may have; ``n_parallel``: sequences decoded together
        (each holds its own ``n_ctx`` of KV cache)."""
        source = models.resolve(spec) if isinstance(spec, str) else spec
        if source.kind != "llamacpp":
            raise ModelNotFound(
                f"{source.spec} is not a llamacpp spec", "use llamacpp:default or llamacpp:/path/model.gguf"
            )
        try:
            import llama_cpp
            from llama_cpp import Llama
            from llama_cpp._internals import LlamaBatch, LlamaContext
        except ImportError as exc:
            raise HelixloomError(
                "the llamacpp backend needs llama-cpp-python", "pip install 'helixloom[llamacpp]'"
            ) from exc
        if n_parallel < 1:
            raise HelixloomError("n_parallel must be at least 1")
        self.model_name = source.spec
        self.path = models.gguf_file(source)
        self.n_parallel = n_parallel
        threads = n_threads or os.cpu_count()
        with _plain_weights():
            self.llm = Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=threads, verbose=False)
        # llama-cpp-python's Llama makes a one-sequence context; ours has one KV stream per
        # sequence (kv_unified off: other sequences' cells never sit between a sequence's own), and
        # flash attention, which skips masked cells and visits a sequence's cells in position order,
        # so the holes a trimmed prefix leaves do not change the sums either.
        params = self.llm.context_params
        params.n_seq_max = n_parallel
        params.kv_unified = False
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.n_ctx = n_ctx * n_parallel
        self.llm._ctx.close()
        self.llm._ctx = self.llm._stack.enter_context(
            contextlib.closing(LlamaContext(model=self.llm._model, params=params, verbose=False))
        )
        self._memory = llama_cpp.llama_get_memory(self.llm.ctx)
        self._batch_size = max(self.llm.n_batch, n_parallel)
        self._batch = self.llm._stack.enter_context(
            contextlib.closing(LlamaBatch(n_tokens=self._batch_size, embd=0, n_seq_max=1, verbose=False))
        )
        self._seqs = [_Seq(i) for i in range(n_parallel)]
        self._lock = threading.RLock()
        self._adapters: dict[str, tuple[AdapterInfo, Any]] = {}
        self._applied: str | None = None  # the adapter set on the context now
        self.prefix_hits = 0  # prompt tokens reused from the KV cache (for benchmarks)
        self._texts: list[str] | None = None
        self.eos_token_ids = frozenset({self.llm.token_eos()})
        self.n_ctx = int(llama_cpp.llama_n_ctx_seq(self.llm.ctx))  # per sequence
        self.max_model_len = self.n_ctx
        self.special_ids = self._special_ids()

    # ------------------------------------------------------------------ tokens

    def encode(self, prompt: str) -> list[int]:
        if isinstance(prompt, TokenPrompt):
            return list(prompt.ids)  # what the client counted, exactly
        return list(self.llm.tokenize(prompt.encode(), add_bos=True, special=True))

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode(), add_bos=False, special=False))

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self.llm.tokenize(text.encode(), add_bos=add_special_tokens, special=True))

    def detokenize(self, ids: Sequence[int]) -> str:
        vocab = self.llm.n_vocab()
        if bad := [t for t in ids if not 0 <= t < vocab]:
            raise HelixloomError(
                f"token id {bad[0]} is outside the vocabulary (0 to {vocab - 1})", param="tokens"
            )
        return self._decode_all(ids)

    def _decode_all(self, ids: Sequence[int]) -> str:
        return self.llm.detokenize(list(ids), special=True).decode("utf-8", errors="replace")

    def _decode(self, ids: Sequence[int]) -> str:
        return self.llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def _special_ids(self) -> frozenset[int]:
        """Ids that decoding leaves out of text: control tokens, and user-defined tokens that are
        markers (the GGUF of Gemma 3 marks ``<start_of_image>`` user-defined, like its HTML tags)."""
        import llama_cpp

        model = self.llm._model
        ids: set[int] = set()
        for i in range(self.llm.n_vocab()):
            attr = model.token_get_attr(i)
            if attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL or (
                attr & llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED and is_control_marker(model.token_get_text(i))
            ):
                ids.add(i)
        return frozenset(ids)

    def _token_text(self, token_id: int) -> str:
        return self._decode([token_id])

    def _token_texts(self) -> list[str]:
        if self._texts is None:
            self._texts = [self._token_text(i) for i in range(self.llm.n_vocab())]
        return self._texts

    # ------------------------------------------------------------------ adapters

    def load_adapter(self, name: str, path: str) -> AdapterInfo:
        import llama_cpp

        with self._lock:
            file = Path(path)
            if file.is_dir() and (file / GGUF_ADAPTER_FILE).is_file():
                file = file / GGUF_ADAPTER_FILE  # a PEFT folder with its exported GGUF beside it
            if name in self._adapters:
                if self._adapters[name][0].path == str(file.resolve()):
                    return self._adapters[name][0]
                raise AdapterError(f"an adapter named {name!r} is already loaded from another file")
            if file.is_dir():
                raise AdapterError(
                    f"adapter {name!r}: {file} is a PEFT folder; llama.cpp needs a GGUF LoRA",
                    f"convert it: helixloom adapters export-gguf {name}",
                )
            if not file.is_file():
                raise AdapterError(f"adapter {name!r}: {file} does not exist")
            handle = llama_cpp.llama_adapter_lora_init(self.llm.model, str(file).encode())
            if not handle:
                raise AdapterError(f"llama.cpp could not load {file} as a LoRA for {self.path.name}")
            folder = Path(path)
            # A PEFT folder's version is its content hash, as on every backend (the GGUF beside it is
            # exported from those weights); a bare GGUF file's is the hash of that file.
            peft_folder = (folder / "adapter_config.json").is_file()
            version = adapter_version(folder) if peft_folder else _file_version(file)
            info = AdapterInfo(name, str(file.resolve()), None, (), version)
            self._adapters[name] = (info, handle)
            return info

    def adapters(self) -> list[AdapterInfo]:
        return [info for info, _ in self._adapters.values()]

    def unload_adapter(self, name: str) -> None:
        """Take the adapter off the context and free it. The cached KV is dropped if it was computed
        under it, so a later adapter loaded under the same name never reuses it."""
        import llama_cpp

        with self._lock:
            if name not in self._adapters:
                raise AdapterError(f"adapter {name!r} is not loaded")
            if self._applied == name:
                self._use_adapter(None)
            key = self._cache_key(name)
            for seq in self._seqs:  # prefixes computed under it go (they could never hit again anyway)
                if seq.key == key:
                    self._drop(seq, 0)
            _, handle = self._adapters.pop(name)
            llama_cpp.llama_adapter_lora_free(handle)

    def _use_adapter(self, name: str | None) -> None:
        import llama_cpp

        if name is not None and name not in self._adapters:
            raise AdapterError(f"adapter {name!r} is not loaded", "load it first (load_adapter)")
        if name == self._applied:
            return
        if name is None:
            llama_cpp.llama_set_adapters_lora(self.llm.ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapters[name][1])
            scales = (ctypes.c_float * 1)(1.0)
            llama_cpp.llama_set_adapters_lora(self.llm.ctx, handles, 1, scales)
        self._applied = name

    def _cache_key(self, adapter: str | None) -> str:
        """What KV computed under ``adapter`` is keyed by: the adapter's content hash, never its name
        (a retrained adapter reloaded under the same name gets a new hash, so its old KV is dropped)."""
        if adapter is None:
            return ""
        info = self._adapters[adapter][0]
        return info.version or f"file:{info.path}"

    def clear_cache(self) -> None:
        """Forget every cached prefix (benchmarks use it to measure uncached work)."""
        with self._lock:
            for seq in self._seqs:
                self._drop(seq, 0)

    # ------------------------------------------------------------------ sequences

    def _drop(self, seq: _Seq, keep: int) -> None:
        """Keep only the first ``keep`` positions of ``seq``'s KV."""
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self._memory, seq.id, keep, -1)
        del seq.tokens[keep:]

    def _claim(self, tokens: list[int], key: str, busy: set[int]) -> tuple[_Seq, int]:
        """An idle sequence for a prompt, and how many of its first tokens it already holds.

        The idle sequence holding the longest prefix of ``tokens`` computed under ``key`` is taken;
        without one, the least recently used. At least the last prompt token is always recomputed
        (its logits are what the first new token is sampled from)."""
        idle = [s for s in self._seqs if s.id not in busy]
        matches = [(_common(s.tokens, tokens) if s.key == key else 0, -s.used, s) for s in idle]
        reuse, _, seq = max(matches, key=lambda m: (m[0], m[1]))
        if reuse == 0:
            seq = min(idle, key=lambda s: s.used)
        reuse = min(reuse, len(tokens) - 1)
        self._drop(seq, reuse)
        seq.key = key
        seq.used = time.perf_counter()
        self.prefix_hits += reuse
        return seq, reuse

    def _prefill(self, seq: _Seq, tokens: list[int]) -> int:
        """Decode ``tokens`` after what ``seq`` holds, alone in its batches (see the module docstring:
        a prompt computed alone gives the same numbers however many others are decoding); returns
        the batch index of the last token's logits."""
        n_batch = self._batch_size
        last = 0
        for at in range(0, len(tokens), n_batch):
            chunk = tokens[at : at + n_batch]
            self._fill([(seq.id, len(seq.tokens) + i, t, i == len(chunk) - 1) for i, t in enumerate(chunk)])
            self._run_batch()
            seq.tokens.extend(chunk)
            last = len(chunk) - 1
        return last

    def _fill(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Put (sequence, position, token, wants logits) entries into the batch."""
        b = self._batch.batch
        for j, (seq_id, pos, token, logits) in enumerate(entries):
            b.token[j] = token
            b.pos[j] = pos
            b.n_seq_id[j] = 1
            b.seq_id[j][0] = seq_id
            b.logits[j] = logits
        b.n_tokens = len(entries)

    def _run_batch(self) -> None:
        import llama_cpp

        rc = llama_cpp.llama_decode(self.llm.ctx, self._batch.batch)
        if rc != 0:
            raise HelixloomError(f"llama.cpp could not decode the batch (llama_decode returned {rc})")

    # ------------------------------------------------------------------ generation

    def validate(self, request: GenerationRequest) -> None:
        super().validate(request)
        with self._lock:
            self._fit(request, self.encode(request.prompt))

    def _fit(self, request: GenerationRequest, tokens: list[int]) -> SamplingParams:
        """The request's sampling with max_tokens fitted to the context, or an error if it cannot fit."""
        p = request.sampling
        limit = self.n_ctx
        room = limit - len(tokens)
        if p.fit_context and 0 < room < p.max_tokens:
            p = p.model_copy(update={"max_tokens": room})
        if len(tokens) + p.max_tokens > limit:
            raise HelixloomError(
                f"prompt ({len(tokens)} tokens) + max_tokens ({p.max_tokens}) exceeds the context of "
                f"{limit} tokens",
                param="max_tokens",
            )
        return p

    def stream_batch(
        self, requests: Sequence[GenerationRequest], *, abort: AbortCheck | None = None
    ) -> Iterator[BatchEvent]:
        """Rows on the same adapter decode together, up to ``n_parallel`` at a time, one sequence
        each; a row that finishes frees its sequence for the next waiting row at once. Groups on
        different adapters run one after another (llama.cpp applies adapters per context)."""
        enqueued = time.perf_counter()
        with self._lock:
            prompts = [self.encode(r.prompt) for r in requests]
            params = [self._fit(r, t) for r, t in zip(requests, prompts, strict=True)]
            groups: dict[str | None, list[int]] = {}
            for row, request in enumerate(requests):
                groups.setdefault(request.adapter, []).append(row)
            for adapter, rows in groups.items():
                self._use_adapter(adapter)
                key = self._cache_key(adapter)
                waiting = list(rows)
                active: list[_Row] = []
                while waiting or active:
                    while waiting and len(active) < self.n_parallel:
                        row = waiting.pop(0)
                        state = self._start(row, requests[row], prompts[row], params[row], key, active)
                        state.started, state.queued = time.perf_counter(), enqueued
                        state.index = self._prefill(state.seq, state.feed)
                        state.feed = []
                        active.append(state)
                        yield from self._advance(state, abort)  # its first token, from its prefill
                        if state.done:
                            active.remove(state)
                    live = [s for s in active if not s.done]
                    if live:
                        self._fill([(s.seq.id, len(s.seq.tokens), s.next, True) for s in live])
                        self._run_batch()
                        for i, s in enumerate(live):
                            s.seq.tokens.append(s.next)
                            s.index = i
                            yield from self._advance(s, abort)
                    active = [s for s in active if not s.done]

    def _start(
        self,
        row: int,
        request: GenerationRequest,
        tokens: list[int],
        p: SamplingParams,
        key: str,
        active: list[_Row],
    ) -> _Row:
        heal = ""
        if p.token_healing and len(tokens) > 1:
            heal = self._token_text(tokens[-1])
            tokens = tokens[:-1]
        seq, reuse = self._claim(tokens, key, {s.seq.id for s in active})
        decoder = (
            IncrementalDecoder(self._decode, tokens, self.special_ids)
            if p.skip_special_tokens
            else IncrementalDecoder(self._decode_all, tokens)
        )
        return _Row(
            row=row,
            params=p,
            prompt_tokens=len(tokens),
            seq=seq,
            feed=tokens[reuse:],
            sampler=self._sampler(p, heal, request.constraint),
            decoder=decoder,
            stops=StopMatcher(p.stop),
            heal=heal,
        )

    def _sampler(self, p: SamplingParams, heal: str, constraint: Constraint | None) -> Any:
        """The row's own llama.cpp sampler chain (each row samples with its own settings and seed)."""
        import numpy as np
        from llama_cpp import llama_cpp as lc
        from llama_cpp._internals import LlamaSampler

        chain = LlamaSampler()
        if heal:
            allowed = np.array([t.startswith(heal) for t in self._token_texts()])
            first = [True]
            dtype = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)

            def heal_first(cur: Any) -> None:
                # The first new token must start with the text of the prompt token backed over.
                if first[0]:
                    first[0] = False
                    size = cur.contents.size
                    data = (lc.llama_token_data * size).from_address(
                        ctypes.addressof(cur.contents.data.contents)
                    )
                    view = np.frombuffer(data, dtype=dtype)
                    view["logit"][~allowed[view["id"]]] = -np.inf

            chain.add_custom(heal_first)
        if constraint is not None:
            chain.add_grammar(self.llm._model, _grammar(constraint))
        if p.temperature == 0:
            chain.add_greedy()
        else:
            if p.top_k:
                chain.add_top_k(p.top_k)
            chain.add_top_p(p.top_p, 1)
            chain.add_temp(p.temperature)
            chain.add_dist((p.seed if p.seed is not None else secrets.randbits(31)) & 0xFFFFFFFF)
        return chain

    def _sample(self, state: _Row) -> int:
        """The row's next token, from the logits at its batch index (a seam the tests script)."""
        return int(state.sampler.sample(self.llm._ctx, state.index))

    def _advance(self, s: _Row, abort: AbortCheck | None) -> Iterator[BatchEvent]:
        """Sample the row's next token from the last decode and yield what it adds."""
        p = s.params
        token = self._sample(s)
        s.first_at = s.first_at or time.perf_counter()
        if abort is not None and abort(s.row):
            s.finish = "abort"
            yield from self._end(s)
            return
        s.generated.append(token)
        step = None
        if p.logprobs is not None:
            s.logprobs.append(self._step_logprobs(token, p.logprobs, s.index))
            step = (s.logprobs[-1],)
        if token in self.eos_token_ids and not p.ignore_eos:
            s.finish = "stop"
            text = s.stops.feed(_unheal(s.decoder.flush(), s.heal))
            if step or text:
                yield s.row, StreamDelta(text, step)
            yield from self._end(s)
            return
        text = s.stops.feed(_unheal_stream(s.decoder.push(token), s.heal, s.generated))
        if s.stops.stopped:
            s.finish = "stop"
            if text:
                yield s.row, StreamDelta(text, step)
            yield from self._end(s)
            return
        if text or step:
            yield s.row, StreamDelta(text, step)
        if len(s.generated) >= p.max_tokens:
            yield from self._end(s)
            return
        s.next = token

    def _end(self, s: _Row) -> Iterator[BatchEvent]:
        s.done = True
        s.seq.used = time.perf_counter()
        s.sampler.close()
        if s.finish != "stop" and (rest := s.stops.feed(s.decoder.flush()) + s.stops.finish()):
            yield s.row, StreamDelta(rest)
        done = time.perf_counter()
        first_at = s.first_at or done
        yield (
            s.row,
            GenerationResult(
                text=s.stops.text,
                finish_reason="stop" if s.stops.stopped else s.finish,
                usage=Usage(s.prompt_tokens, len(s.generated)),
                token_ids=tuple(s.generated),
                timings=Timings(
                    queued=s.started - s.queued, prefill=first_at - s.started, decode=done - first_at
                ),
                logprobs=tuple(s.logprobs) if s.params.logprobs is not None else None,
            ),
        )

    def _step_logprobs(self, token: int, n: int, index: int) -> GeneratedTokenLogprobs:
        logprobs = _log_softmax(self._logits(index))  # what produced ``token``
        top: tuple[TokenLogprob, ...] = ()
        if n > 0:
            ids = logprobs.argsort()[::-1][:n]
            top = tuple(TokenLogprob(int(i), self._token_text(int(i)), float(logprobs[i])) for i in ids)
        return GeneratedTokenLogprobs(
            TokenLogprob(token, self._token_text(token), float(logprobs[token])), top
        )

    def _logits(self, index: int) -> Any:
        """The logits the last decode wrote for batch entry ``index`` ([V])."""
        import numpy as np

        return np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(index), shape=(self.llm.n_vocab(),)).copy()

    # ------------------------------------------------------------------ scoring

    def next_token_logprobs(
        self,
        prompts: Sequence[str],
        *,
        adapter: str | None = None,
        top_k: int = 5,
        candidates: Sequence[str] = (),
    ) -> list[NextTokenLogprobs]:
        results = []
        with self._lock:
            candidate_ids = {}
            for c in candidates:
                ids = self.llm.tokenize(c.encode(), add_bos=False, special=False)
                candidate_ids[c] = ids[0] if len(ids) == 1 else None
            self._use_adapter(adapter)
            key = self._cache_key(adapter)
            for prompt in prompts:
                tokens = self.encode(prompt)
                if len(tokens) > self.n_ctx:
                    raise HelixloomError(
                        f"prompt ({len(tokens)} tokens) exceeds the context of {self.n_ctx} tokens",
                        param="prompt",
                    )
                seq, reuse = self._claim(tokens, key, set())
                logprobs = _log_softmax(self._logits(self._prefill(seq, tokens[reuse:])))
                ids = logprobs.argsort()[::-1][: max(0, top_k)]
                top = tuple(TokenLogprob(int(i), self._token_text(int(i)), float(logprobs[i])) for i in ids)
                cand = {c: (float(logprobs[t]) if t is not None else None) for c, t in candidate_ids.items()}
                results.append(NextTokenLogprobs(top, cand, len(tokens)))
        return results

    def close(self) -> None:
        import llama_cpp

        with self._lock:
            self._use_adapter(None)
            for _, handle in self._adapters.values():
                llama_cpp.llama_adapter_lora_free(handle)
            self._adapters.clear()
            self.llm.close()


def _log_softmax(logits: Any) -> Any:
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    m = x.max()
    return x - (m + math.log(np.exp(x - m).sum()))


def _unheal(text: str, heal: str) -> str:
    return text[len(heal) :] if heal and text.startswith(heal) else text


def _unheal_stream(text: str, heal: str, generated: list[int]) -> str:
    # Only the first delta carries the backed-up prompt text.
    return _unheal(text, heal) if len(generated) == 1 else text


def _grammar(constraint: Constraint) -> Any:
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import JSON_GBNF

    if constraint.kind == "json_schema":
        return LlamaGrammar.from_json_schema(constraint.spec, verbose=False)
    if constraint.kind == "json_object":
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    if constraint.kind == "choice":
        options = json.loads(constraint.spec)
        return LlamaGrammar.from_string(
            "root ::= " + " | ".join(json.dumps(o) for o in options), verbose=False
        )
    raise HelixloomError(
        "the llamacpp backend takes JSON schema, JSON object and choice constraints, not regex"
    )


@dataclass
class _Seq:
    """One sequence of the context and what its KV cache holds: ``tokens`` at positions 0..n-1,
    computed under the adapter whose content hash is ``key`` ("" for the base model)."""

    id: int
    tokens: list[int] = field(default_factory=list)
    key: str | None = None
    used: float = 0.0


@dataclass
class _Row:
    """A request being generated: its sequence, sampler, text state and what it has made."""

    row: int
    params: SamplingParams
    prompt_tokens: int
    seq: _Seq
    feed: list[int]  # prompt tokens still to compute
    sampler: Any
    decoder: IncrementalDecoder
    stops: StopMatcher
    heal: str
    index: int = 0  # where its logits sit in the last batch
    next: int = 0  # the token to feed at the next decode step
    generated: list[int] = field(default_factory=list)
    logprobs: list[GeneratedTokenLogprobs] = field(default_factory=list)
    finish: FinishReason = "length"
    done: bool = False
    queued: float = 0.0
    started: float = 0.0
    first_at: float | None = None


def _file_version(file: Path) -> str:
    """The content hash of a GGUF LoRA file (16 hex), as ``adapter_version`` is for PEFT folders."""
    digest = hashlib.sha256()
    with file.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@contextlib.contextmanager
def _plain_weights() -> Iterator[None]:
    """Load models without llama.cpp's repacked CPU weight layouts.

    The repacked kernels sum a one-token batch (gemv) in another order than a many-token one (gemm),
    so the same sequence gives other logits, and other greedy text, depending on how many others
    decode beside it; the plain kernels compute each row alike whatever the batch. Llama() has no
    flag for it, so its model parameters are patched while it loads (the lock keeps two loads
    from interleaving)."""
    import llama_cpp.llama as llama_module

    with _LOAD_LOCK:
        defaults = llama_module.llama_cpp.llama_model_default_params

        def plain() -> Any:
            params = defaults()
            params.use_extra_bufts = False
            return params

        llama_module.llama_cpp.llama_model_default_params = plain
        try:
            yield
        finally:
            llama_module.llama_cpp.llama_model_default_params = defaults


_LOAD_LOCK = threading.Lock()
