"""The ``llamacpp`` backend: GGUF models on llama.cpp (llama-cpp-python), fast on CPU.

Spec: ``llamacpp:FILE.gguf`` or ``llamacpp:default`` (the embedded model's GGUF, no conversion).
Requests decode in parallel: a generation context holds ``n_parallel`` sequences, one per request,
and each step decodes the next token of every running row (``llamacpp_batch``, which also says why
a row's greedy text is the same as alone). It is a continuous batch: a request joins at the next
step, a finished or abandoned row frees its sequence at once.

A finished sequence keeps its KV; a later base-model prompt takes the idle sequence holding its
longest prefix computed under the same adapter content (the key is the adapter's content hash, ""
for none): LoRA changes K and V, so a prefix computed under another adapter, or an older version of
the same one, is never reused (the bug llama.cpp's server shipped, its issue 26207). Adapters are GGUF
LoRA files, switched on the context without reloading (llama.cpp applies one to the whole context,
so rows on different adapters take turns); a PEFT folder is exported to one on first use and cached
beside it, keyed by its content version (``gguf_lora.for_llamacpp``), so a retrained adapter is
re-exported. Scoring (``llamacpp_scoring``) runs on llama-cpp-python's own one-sequence context.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from helixloom import gguf_lora, models
from helixloom.engine import citations
from helixloom.engine.base import AbortCheck, BatchEvent, Engine, TokenPrompt
from helixloom.engine.detok import IncrementalDecoder, StopMatcher, is_control_marker
from helixloom.engine.llamacpp_batch import LlamaCppBatch, Row, fit
from helixloom.engine.llamacpp_grammar import llama_grammar
from helixloom.engine.llamacpp_scoring import LlamaCppScoring
from helixloom.engine.llamacpp_seqs import BASE_KEY, Seq, SeqPool, plain_weights, set_lora
from helixloom.engine.lora_folder import adapter_version
from helixloom.engine.remote_chat import LocalTemplate
from helixloom.engine.types import AdapterInfo, GenerationRequest, SamplingParams, check_text
from helixloom.errors import AdapterError, HelixloomError, ModelNotFound

# ``_applied`` while a switch is under way: no adapter's name (names never hold NUL), so a switch
# that failed is tried again by the next call.
_UNSET = "\x00unset"
GGUF_ADAPTER_FILE = gguf_lora.GGUF_ADAPTER_FILE  # where `helixloom adapters export-gguf` writes by default


class LlamaCppEngine(LlamaCppScoring, Engine):
    backend = "llamacpp"
    supports_adapters = True
    # A batch may mix adapters, but rows on different adapters take turns (llama.cpp applies a LoRA to
    # the whole context): only rows on the same adapter decode together.
    supports_mixed_adapter_batch = False
    supports_logprobs = True
    supports_constraints = True
    supports_prompt_logprobs = True
    supports_tokenize = True
    supports_token_prompts = True
    continuous_batching = True

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
        (each holds its own ``n_ctx`` of KV cache); ``n_threads``: llama.cpp's threads (default: one
        per core), for prompts and decoding alike."""
        source = models.resolve(spec) if isinstance(spec, str) else spec
        if source.kind != "llamacpp":
            raise ModelNotFound(
                f"{source.spec} is not a llamacpp spec", "use llamacpp:default or llamacpp:/path/model.gguf"
            )
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise HelixloomError(
                "the llamacpp backend needs llama-cpp-python", "pip install 'helixloom[llamacpp]'"
            ) from exc
        if n_parallel < 1:
            raise HelixloomError("n_parallel must be at least 1")
        self.model_name = source.spec
        self.path = models.gguf_file(source)
        threads = n_threads or os.cpu_count()
        with plain_weights():
            self.llm = Llama(
                model_path=str(self.path),
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        self.n_parallel = n_parallel
        self._pool = SeqPool(self.llm, n_ctx, n_parallel)  # generation; self.llm's context scores
        # Open batches, so an adapter a waiting row needs is not unloaded from under it.
        self._batches: weakref.WeakSet[LlamaCppBatch] = weakref.WeakSet()
        self.closed = False  # set by close(); a batch still open then fails instead of using freed memory
        self._lock = threading.RLock()
        self._freed = threading.Condition(self._lock)  # a batch frees a sequence (``LlamaCppBatch``)
        self._adapters: dict[str, tuple[AdapterInfo, Any]] = {}
        self._applied: str | None = None  # the adapter set on the scoring context now
        self._kv_adapter: str | None = None  # the adapter the scoring context's KV was computed under
        self._texts: list[str] | None = None
        self._citations = citations.Guards(self._token_texts, self.llm.n_vocab())
        self.eos_token_ids = frozenset({self.llm.token_eos()})
        bos = self.llm.token_bos()  # -1: the GGUF has none (llama.cpp aborts detokenizing -1)
        self._bos_text = self._decode_all([bos]) if bos >= 0 else ""
        # The same chat template the hf backend reads from this GGUF, so chat renders alike on both.
        self.chat_template = self.llm.metadata.get("tokenizer.chat_template") or None
        self._template = (
            None
            if self.chat_template is None
            else LocalTemplate(
                self.chat_template,
                {"bos_token": self._bos_text, "eos_token": self._decode_all([self.llm.token_eos()])},
                "",
            )
        )
        self.max_model_len = self.llm.n_ctx()
        self.special_ids = self._special_ids()

    # ------------------------------------------------------------------ tokens

    def encode(self, prompt: str) -> list[int]:
        """Prompt token ids; the BOS token is added unless the text (e.g. from a chat template) has
        it, as on the hf backend. A ``TokenPrompt`` is its own ids."""
        if isinstance(prompt, TokenPrompt):
            return list(prompt.ids)  # what the client counted, exactly
        check_text(prompt)  # a lone surrogate: a 400, as on the hf backend, not UnicodeEncodeError
        add_bos = not (self._bos_text and prompt.startswith(self._bos_text))
        return list(self.llm.tokenize(prompt.encode(), add_bos=add_bos, special=True))

    def format_chat(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        """The GGUF's own chat template (``tokenizer.chat_template``), rendered as transformers does."""
        if self._template is None:
            return super().format_chat(messages)
        return self._template.render(messages, add_generation_prompt=add_generation_prompt)

    def count_tokens(self, text: str) -> int:
        check_text(text, "text")
        return len(self.llm.tokenize(text.encode(), add_bos=False, special=False))

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        check_text(text, "text")
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
        """``path``: a GGUF LoRA file, or a PEFT LoRA folder (exported to GGUF on first use, see
        ``gguf_lora.for_llamacpp``; its version is its content hash, as on every backend)."""
        import llama_cpp

        given = Path(path)
        version = None
        if given.is_dir():
            if not (given / "adapter_config.json").is_file():
                raise AdapterError(f"adapter {name!r}: {given} is neither a PEFT folder nor a GGUF LoRA")
            version = adapter_version(given)
            # Exported outside the engine's lock: an export takes seconds, and requests decode on
            # meanwhile. Two loads exporting the same version write the same bytes, atomically.
            file = gguf_lora.for_llamacpp(given, self.path, version)
            if adapter_version(given) != version:
                if file.name != gguf_lora.GGUF_ADAPTER_FILE:  # our cache, stamped with the old
                    file.unlink(missing_ok=True)  # version but maybe holding the new weights
                raise AdapterError(f"adapter {name!r} changed while it was exported", "load it again")
        else:
            file = given
        with self._lock:
            if self.closed:
                raise AdapterError(f"adapter {name!r}: the engine is closed")
            if name in self._adapters:
                info = self._adapters[name][0]
                if info.path == str(file.resolve()) and version in (None, info.version):
                    return info
                raise AdapterError(f"an adapter named {name!r} is already loaded from another file")
            if not file.is_file():
                raise AdapterError(f"adapter {name!r}: {file} does not exist")
            handle = llama_cpp.llama_adapter_lora_init(self.llm.model, str(file).encode())
            if not handle:
                raise AdapterError(f"llama.cpp could not load {file} as a LoRA for {self.path.name}")
            info = AdapterInfo(name, str(file.resolve()), None, (), version or _file_hash(file))
            self._adapters[name] = (info, handle)
            return info

    def adapters(self) -> list[AdapterInfo]:
        return [info for info, _ in self._adapters.values()]

    def unload_adapter(self, name: str) -> None:
        """Take the adapter off the contexts and free it (refused while a request decodes on it). KV
        the generation context computed under it stays keyed by its content hash, so only an adapter
        with the very same weights can reuse it, whatever its name."""
        import llama_cpp

        with self._lock:
            if name not in self._adapters:
                raise AdapterError(f"adapter {name!r} is not loaded")
            info, handle = self._adapters[name]
            if any(s.busy and s.key == info.version for s in self._pool.seqs):
                raise AdapterError(f"adapter {name!r} is in use by a running request", "retry when it ends")
            if any(b.needs(name) for b in list(self._batches)):
                # a waiting row would fail at its turn, and take its whole batch with it
                raise AdapterError(f"adapter {name!r} is wanted by a waiting request", "retry when it ends")
            if self._applied == name:
                self._use_adapter(None)
            if self._kv_adapter == name:
                self.llm.reset()
                self._kv_adapter = None
            if self._pool.applied == handle:
                self._pool.use_adapter(None)
            del self._adapters[name]
            llama_cpp.llama_adapter_lora_free(handle)

    def _use_adapter(self, name: str | None) -> None:
        if name is not None and name not in self._adapters:
            raise AdapterError(f"adapter {name!r} is not loaded", "load it first (load_adapter)")
        if name == self._applied:
            return
        self._applied = _UNSET  # until it is set: a failed switch is retried by the next call
        set_lora(self.llm.ctx, None if name is None else self._adapters[name][1])
        self._applied = name

    def _prepare(self, adapter: str | None, tokens: list[int]) -> None:
        """Set the adapter; keep the cached prefix only if it was computed under the same adapter."""
        self._use_adapter(adapter)
        if adapter != self._kv_adapter:
            self.llm.reset()
            self._kv_adapter = adapter

    # ------------------------------------------------------------------ generation

    @property
    def prefix_hits(self) -> int:
        """Prompt tokens whose KV a request reused instead of computing (for benchmarks and tests)."""
        return self._pool.prefix_hits

    def open_batch(self) -> LlamaCppBatch:
        """A continuous batch on the generation context (see ``llamacpp_batch``)."""
        batch = LlamaCppBatch(self)
        self._batches.add(batch)
        return batch

    def stream_batch(
        self, requests: Sequence[GenerationRequest], *, abort: AbortCheck | None = None
    ) -> Iterator[BatchEvent]:
        """The requests as one continuous batch: rows on the same adapter decode together, up to
        ``n_parallel`` at a time; rows on other adapters wait their turn. A row that ends frees its
        sequence for the next waiting row at once."""
        batch = self.open_batch()
        try:
            ids = batch.join(requests)
            row_of = {rid: row for row, rid in enumerate(ids)}
            check = None if abort is None else (lambda rid: abort(row_of[rid]))
            while len(batch):  # a step waits by itself while another batch holds every sequence
                for rid, event in batch.step(check):
                    yield row_of[rid], event
        finally:
            batch.close()  # a consumer that stopped early frees its sequences

    def validate(self, request: GenerationRequest) -> None:
        """The prompt and max_tokens must fit a sequence, the adapter be loaded and the constraint
        be one llama.cpp reads."""
        super().validate(request)
        self._new_row(-1, request).sampler.close()

    def _new_row(self, row_id: int, request: GenerationRequest) -> Row:
        """A request ready to join a batch (``HelixloomError`` if it cannot run)."""
        tokens = self.encode(request.prompt)
        if not tokens:  # nothing to compute the first token's logits from
            raise HelixloomError("the prompt is empty (no tokens)", param="prompt")
        p = fit(request.sampling, len(tokens), self._pool.n_ctx)
        if request.adapter is not None and request.adapter not in self._adapters:
            raise AdapterError(f"adapter {request.adapter!r} is not loaded", "load it first (load_adapter)")
        heal = ""
        if p.token_healing and len(tokens) > 1:
            heal = self._token_text(tokens[-1])
            tokens = tokens[:-1]
        grammar = (
            None if request.constraint is None else llama_grammar(request.constraint, self.llm._model.vocab)
        )
        decoder = (
            IncrementalDecoder(self._decode, tokens, self.special_ids)
            if p.skip_special_tokens
            else IncrementalDecoder(self._decode_all, tokens)
        )
        row = Row(
            row_id, request, p, tokens, heal, self._sampler(p, grammar), decoder, StopMatcher(p.stop),
            time.perf_counter(),
        )  # fmt: skip
        if request.citations is not None:
            row.citations = self._citations.get(request.citations)
        return row

    def _sampler(self, p: SamplingParams, grammar: Any) -> Any:
        """The row's own llama.cpp sampler chain: the chain llama-cpp-python's ``generate`` builds
        for these settings, with the row's own seed."""
        from llama_cpp._internals import LlamaSampler

        if p.temperature == 0 and grammar is None:
            return _Argmax(self.llm.n_vocab())
        chain = LlamaSampler()
        if grammar is not None:
            chain.add_grammar(self.llm._model, grammar)
        if p.temperature == 0:
            chain.add_greedy()
        else:
            chain.add_top_k(p.top_k or 0)
            chain.add_typical(1.0, 1)
            chain.add_top_p(p.top_p, 1)
            chain.add_min_p(0.0, 1)
            chain.add_temp(p.temperature)
            chain.add_dist(p.seed if p.seed is not None else secrets.randbits(31))
        return chain

    def _sample_token(self, sampler: Any, index: int) -> int:
        """The token ``sampler`` picks from the logits at batch ``index`` (a seam the tests script)."""
        return int(sampler.sample(self._pool.ctx, index))

    def _heal_mask(self, heal: str) -> Any:
        """Which tokens' text starts with ``heal`` ([V] bools)."""
        import numpy as np

        return np.array([t.startswith(heal) for t in self._token_texts()])

    def _claim(self, prompt: list[int], adapter: str | None) -> Seq | None:
        """A free sequence for a prompt on ``adapter``, its reusable prefix keyed by the adapter's
        content hash (see ``SeqPool.claim``)."""
        if adapter is not None and adapter not in self._adapters:
            raise AdapterError(f"adapter {adapter!r} was unloaded while a request waited for it")
        key = BASE_KEY if adapter is None else (self._adapters[adapter][0].version or adapter)
        return self._pool.claim(prompt, key)

    def _use_gen_adapter(self, name: str | None) -> None:
        if name is not None and name not in self._adapters:
            raise AdapterError(f"adapter {name!r} is not loaded", "load it first (load_adapter)")
        self._pool.use_adapter(None if name is None else self._adapters[name][1])

    def clear_cache(self) -> None:
        """Forget every idle sequence's KV (benchmarks use it to measure uncached work)."""
        with self._lock:
            for seq in self._pool.seqs:
                if not seq.busy:
                    self._pool.forget(seq)

    def close(self) -> None:
        import llama_cpp

        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._use_adapter(None)
            self._pool.use_adapter(None)
            for _, handle in self._adapters.values():
                llama_cpp.llama_adapter_lora_free(handle)
            self._adapters.clear()
            self.llm.close()


def _file_hash(file: Path) -> str:
    """sha256 of a file, 16 hex (a GGUF adapter's version)."""
    import hashlib

    digest = hashlib.sha256()
    with file.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class _Argmax:
    """Greedy decoding without a grammar: the logits' first maximum, as llama.cpp's greedy sampler
    picks it, read in place. llama.cpp's sampler copies all logits (262k for Gemma) into a candidate
    array on every call: measured 1.17 ms a token against 0.07 ms, per row of every decode step."""

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab

    def sample(self, ctx: Any, index: int) -> int:
        import numpy as np

        return int(np.ctypeslib.as_array(ctx.get_logits_ith(index), shape=(self.n_vocab,)).argmax())

    def close(self) -> None:
        pass
