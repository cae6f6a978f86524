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
import math
import os
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from helixloom import gguf_lora, models
from helixloom.engine.base import AbortCheck, BatchEvent, Engine, TokenPrompt
from helixloom.engine.detok import IncrementalDecoder, StopMatcher, is_control_marker
from helixloom.engine.llamacpp_grammar import llama_grammar
from helixloom.engine.lora_folder import adapter_version
from helixloom.engine.types import (
    AdapterInfo,
    FinishReason,
    GeneratedTokenLogprobs,
    GenerationRequest,
    GenerationResult,
    NextTokenLogprobs,
    PromptLogprobs,
    StreamDelta,
    Timings,
    TokenLogprob,
    Usage,
)
from helixloom.errors import AdapterError, HelixloomError, ModelNotFound

GGUF_ADAPTER_FILE = gguf_lora.GGUF_ADAPTER_FILE  # where `helixloom adapters export-gguf` writes by default
SCORE_CHUNK = 64  # prompt tokens scored per decode: each row's logits are [V] floats (262k for Gemma)


class LlamaCppEngine(Engine):
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
        self.max_model_len = self.llm.n_ctx()
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

    def _logprobs_of(self, logits: Any, token: int, n: int) -> GeneratedTokenLogprobs:
        """``token``'s log-probability under ``logits`` ([V]) and the ``n`` most likely tokens'."""
        logprobs = _log_softmax(logits)
        top: tuple[TokenLogprob, ...] = ()
        if n > 0:
            ids = logprobs.argsort()[::-1][:n]
            top = tuple(TokenLogprob(int(i), self._token_text(int(i)), float(logprobs[i])) for i in ids)
        return GeneratedTokenLogprobs(
            TokenLogprob(token, self._token_text(token), float(logprobs[token])), top
        )

    def _last_logits(self) -> Any:
        """The logits of the last position the context evaluated ([V]).

        Read from the context itself: without logits_all, llama-cpp-python does not copy them into
        ``scores`` (and logits_all would make every prefill write logits for every prompt token).
        """
        import numpy as np

        return np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(self.llm.n_vocab(),)).copy()

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
            for prompt in prompts:
                tokens = self.encode(prompt)
                self._prepare(adapter, tokens)
                # eval() itself skips the prefix it already holds.
                prefix = self.llm.longest_token_prefix(self.llm._input_ids.tolist(), tokens)
                if prefix == len(tokens):  # the whole prompt is cached: re-run its last token for logits
                    prefix -= 1
                self.llm.n_tokens = prefix
                self.llm.eval(tokens[prefix:])
                logprobs = _log_softmax(self._last_logits())
                ids = logprobs.argsort()[::-1][: max(0, top_k)]
                top = tuple(TokenLogprob(int(i), self._token_text(int(i)), float(logprobs[i])) for i in ids)
                cand = {c: (float(logprobs[t]) if t is not None else None) for c, t in candidate_ids.items()}
                results.append(NextTokenLogprobs(top, cand, len(tokens)))
        return results

    def prompt_logprobs(
        self, prompts: Sequence[str], *, adapter: str | None = None, top_k: int = 0
    ) -> list[PromptLogprobs]:
        """Each prompt evaluated from its start with logits kept for every position, a few dozen
        positions per decode (each row of logits is [V] floats)."""
        import numpy as np

        if any(not p for p in prompts):
            raise HelixloomError("a prompt to score is empty", param="prompt")
        if not 0 <= top_k <= 20:
            raise HelixloomError("top_k must be between 0 and 20", param="logprobs")
        results = []
        with self._lock:
            for prompt in prompts:
                ids = self.encode(prompt)
                if len(ids) > self.llm.n_ctx():
                    raise HelixloomError(
                        f"the prompt has {len(ids)} tokens; the model reads at most {self.llm.n_ctx()}",
                        param="prompt",
                    )
                self._prepare(adapter, ids)
                steps: list[GeneratedTokenLogprobs] = []
                self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
                self.llm.n_tokens = 0
                for start in range(0, len(ids), SCORE_CHUNK):
                    chunk = ids[start : start + SCORE_CHUNK]
                    self.llm._batch.set_batch(batch=chunk, n_past=start, logits_all=True)
                    self.llm._ctx.decode(self.llm._batch)
                    self.llm.input_ids[start : start + len(chunk)] = chunk
                    self.llm.n_tokens = start + len(chunk)
                    rows = np.ctypeslib.as_array(
                        self.llm._ctx.get_logits(), shape=(len(chunk), self.llm.n_vocab())
                    )  # rows: [chunk, V]; row j predicts ids[start + j + 1]
                    for j in range(len(chunk)):
                        if start + j + 1 < len(ids):
                            steps.append(self._logprobs_of(rows[j], ids[start + j + 1], top_k))
                bos = self.llm.token_bos()
                # A BOS that encode() added is not part of the text: leave it out.
                skip = 1 if ids[0] == bos and not prompt.startswith(self._decode_all([bos])) else 0
                results.append(
                    PromptLogprobs(
                        token_ids=tuple(ids[skip:]),
                        tokens=tuple(self._decode_all([t]) for t in ids)[skip:],
                        logprobs=(None, *(s.chosen.logprob for s in steps))[skip:],
                        top=(None, *((s.top if top_k else None) for s in steps))[skip:],
                    )
                )
        return results

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
