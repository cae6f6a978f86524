"""The ``llamacpp`` backend: GGUF models on llama.cpp (llama-cpp-python), fast on CPU.

Spec: ``llamacpp:FILE.gguf`` or ``llamacpp:default`` (the embedded model's GGUF, no conversion).
Requests run one after another on one context (llama-cpp-python has no batched decoding); each
reuses the KV cache of the previous prompt's common prefix, but only when both ran under the same
adapter: LoRA changes K and V, so a prefix computed under another adapter is recomputed (the bug
llama.cpp's server shipped, its issue 26207). Adapters are GGUF LoRA files, switched per request on
the context without reloading; a PEFT folder is exported to one on first use and cached beside it,
keyed by its content version (``gguf_lora.for_llamacpp``), so a retrained adapter is re-exported.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from helixloom import gguf_lora, models
from helixloom.engine.base import AbortCheck, BatchEvent, Engine, TokenPrompt
from helixloom.engine.detok import IncrementalDecoder, StopMatcher, is_control_marker
from helixloom.engine.llamacpp_grammar import llama_grammar
from helixloom.engine.llamacpp_scoring import LlamaCppScoring
from helixloom.engine.lora_folder import adapter_version
from helixloom.engine.remote_chat import LocalTemplate
from helixloom.engine.types import (
    AdapterInfo,
    FinishReason,
    GeneratedTokenLogprobs,
    GenerationRequest,
    GenerationResult,
    StreamDelta,
    Timings,
    Usage,
)
from helixloom.errors import AdapterError, HelixloomError, ModelNotFound

GGUF_ADAPTER_FILE = gguf_lora.GGUF_ADAPTER_FILE  # where `helixloom adapters export-gguf` writes by default


class LlamaCppEngine(LlamaCppScoring, Engine):
    backend = "llamacpp"
    supports_adapters = True
    supports_mixed_adapter_batch = False  # rows run one after another; each with its own adapter
    supports_logprobs = True
    supports_constraints = True
    supports_prompt_logprobs = True
    supports_tokenize = True
    supports_token_prompts = True

    def __init__(
        self, spec: str | models.ModelSource, *, n_ctx: int = 4096, n_threads: int | None = None
    ) -> None:
        """``spec``: ``llamacpp:FILE.gguf`` or ``llamacpp:default``, or its parsed ``ModelSource``."""
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
        self.model_name = source.spec
        self.path = models.gguf_file(source)
        threads = n_threads or os.cpu_count()
        self.llm = Llama(
            model_path=str(self.path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        self._lock = threading.RLock()
        self._adapters: dict[str, tuple[AdapterInfo, Any]] = {}
        self._applied: str | None = None  # the adapter set on the context now
        self._kv_adapter: str | None = None  # the adapter the cached KV was computed under
        self.prefix_hits = 0  # prompt tokens reused from the KV cache (for benchmarks)
        self._texts: list[str] | None = None
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
        """``path``: a GGUF LoRA file, or a PEFT LoRA folder (exported to GGUF on first use, see
        ``gguf_lora.for_llamacpp``; its version is its content hash, as on every backend)."""
        import llama_cpp

        with self._lock:
            given = Path(path)
            version = None
            if given.is_dir():
                if not (given / "adapter_config.json").is_file():
                    raise AdapterError(f"adapter {name!r}: {given} is neither a PEFT folder nor a GGUF LoRA")
                version = adapter_version(given)
                file = gguf_lora.for_llamacpp(given, self.path, version)
                if adapter_version(given) != version:
                    if file.name != gguf_lora.GGUF_ADAPTER_FILE:  # our cache, stamped with the old
                        file.unlink(missing_ok=True)  # version but maybe holding the new weights
                    raise AdapterError(f"adapter {name!r} changed while it was exported", "load it again")
            else:
                file = given
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
        """Take the adapter off the context and free it. The cached KV is dropped if it was computed
        under it, so a later adapter loaded under the same name never reuses it."""
        import llama_cpp

        with self._lock:
            if name not in self._adapters:
                raise AdapterError(f"adapter {name!r} is not loaded")
            if self._applied == name:
                self._use_adapter(None)
            if self._kv_adapter == name:
                self.llm.reset()
                self._kv_adapter = None
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

    def _prepare(self, adapter: str | None, tokens: list[int]) -> None:
        """Set the adapter; keep the cached prefix only if it was computed under the same adapter."""
        self._use_adapter(adapter)
        if adapter != self._kv_adapter:
            self.llm.reset()
            self._kv_adapter = adapter
        else:
            self.prefix_hits += self.llm.longest_token_prefix(self.llm._input_ids.tolist(), tokens)

    # ------------------------------------------------------------------ generation

    def stream_batch(
        self, requests: Sequence[GenerationRequest], *, abort: AbortCheck | None = None
    ) -> Iterator[BatchEvent]:
        for row, request in enumerate(requests):
            enqueued = time.perf_counter()
            with self._lock:
                for event in self._one(
                    request, enqueued, None if abort is None else (lambda r=row: abort(r))
                ):
                    yield row, event

    def _one(self, request: GenerationRequest, enqueued: float, aborted: Any) -> Iterator[Any]:
        import numpy as np
        from llama_cpp import LogitsProcessorList

        p = request.sampling
        started = time.perf_counter()
        tokens = self.encode(request.prompt)
        room = self.llm.n_ctx() - len(tokens)
        if p.fit_context and 0 < room < p.max_tokens:
            p = p.model_copy(update={"max_tokens": room})
        if len(tokens) + p.max_tokens > self.llm.n_ctx():
            raise HelixloomError(
                f"prompt ({len(tokens)} tokens) + max_tokens ({p.max_tokens}) exceeds the context of "
                f"{self.llm.n_ctx()} tokens",
                param="max_tokens",
            )
        heal = ""
        if p.token_healing and len(tokens) > 1:
            heal = self._token_text(tokens[-1])
            tokens = tokens[:-1]
        self._prepare(request.adapter, tokens)
        self.llm.set_seed(p.seed if p.seed is not None else secrets.randbits(31))
        processors = []
        if heal:
            allowed = np.array([t.startswith(heal) for t in self._token_texts()])
            first = [True]

            def heal_first(_: Any, scores: Any) -> Any:
                if first[0]:
                    first[0] = False
                    scores = np.where(allowed[: scores.shape[0]], scores, -np.inf)
                return scores

            processors.append(heal_first)
        grammar = (
            llama_grammar(request.constraint, self.llm._model.vocab)
            if request.constraint is not None
            else None
        )
        decoder = (
            IncrementalDecoder(self._decode, tokens, self.special_ids)
            if p.skip_special_tokens
            else IncrementalDecoder(self._decode_all, tokens)
        )
        stops = StopMatcher(p.stop)
        generated: list[int] = []
        logprobs: list[GeneratedTokenLogprobs] = []
        finish: FinishReason = "length"
        first_token_at = None
        greedy = p.temperature == 0
        for token in self.llm.generate(
            tokens,
            top_k=1 if greedy else (p.top_k or 0),
            top_p=1.0 if greedy else p.top_p,
            min_p=0.0,
            temp=0.0 if greedy else p.temperature,
            repeat_penalty=1.0,
            logits_processor=LogitsProcessorList(processors) if processors else None,
            grammar=grammar,
        ):
            first_token_at = first_token_at or time.perf_counter()
            if aborted is not None and aborted():
                finish = "abort"
                break
            generated.append(token)
            step = None
            if p.logprobs is not None:
                logprobs.append(self._step_logprobs(token, p.logprobs))
                step = (logprobs[-1],)
            if token in self.eos_token_ids and not p.ignore_eos:
                finish = "stop"
                text = stops.feed(_unheal(decoder.flush(), heal))
                if step or text:
                    yield StreamDelta(text, step)
                break
            text = stops.feed(_unheal_stream(decoder.push(token), heal, generated))
            if stops.stopped:
                finish = "stop"
                if text:
                    yield StreamDelta(text, step)
                break
            if text or step:
                yield StreamDelta(text, step)
            if len(generated) >= p.max_tokens:
                break
        if finish != "stop" and (rest := stops.feed(decoder.flush()) + stops.finish()):
            yield StreamDelta(rest)
        done = time.perf_counter()
        first_token_at = first_token_at or done
        yield GenerationResult(
            text=stops.text,
            finish_reason="stop" if stops.stopped else finish,
            usage=Usage(len(tokens), len(generated)),
            token_ids=tuple(generated),
            timings=Timings(
                queued=started - enqueued, prefill=first_token_at - started, decode=done - first_token_at
            ),
            logprobs=tuple(logprobs) if p.logprobs is not None else None,
        )

    def _step_logprobs(self, token: int, n: int) -> GeneratedTokenLogprobs:
        return self._logprobs_of(self._last_logits(), token, n)  # the logits that produced ``token``

    def close(self) -> None:
        import llama_cpp

        with self._lock:
            self._use_adapter(None)
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


def _unheal(text: str, heal: str) -> str:
    return text[len(heal) :] if heal and text.startswith(heal) else text


def _unheal_stream(text: str, heal: str, generated: list[int]) -> str:
    # Only the first delta carries the backed-up prompt text.
    return _unheal(text, heal) if len(generated) == 1 else text
