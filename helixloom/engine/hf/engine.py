"""``HFEngine``: a transformers causal LM with LoRA adapters applied per row.

Generation is our own small loop (prefill, then one token per step) rather than ``model.generate``,
because a batch here mixes what ``generate`` keeps global: each row has its own sampling parameters,
seed, stop sequences and LoRA adapter. Adapters are applied per row through PEFT's mixed-batch
forward (``adapter_names=[...]``), so the loaded model is never switched globally and concurrent
callers cannot see each other's adapter; a batch whose rows all use one adapter runs it merged
(``merge``). The loop itself is ``running.RunningBatch``: rows join it between steps (continuous
batching, driven by ``BatchingEngine``) and start from the prefix cache where their prompt's start
was computed before under the same adapter content (``helixloom.engine.prefix_cache``).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helixloom import models
from helixloom.engine import citations
from helixloom.engine.base import AbortCheck, BatchEvent, Engine, TokenPrompt, apply_chat_template
from helixloom.engine.detok import IncrementalDecoder, StopMatcher
from helixloom.engine.grammar import COMPILE_TIMEOUT_S, Grammars
from helixloom.engine.hf import decode
from helixloom.engine.hf.kv import RowKV
from helixloom.engine.hf.load import check_adapter_fits, load_pretrained
from helixloom.engine.hf.merge import Merger
from helixloom.engine.hf.running import RunningBatch
from helixloom.engine.hf.vocab import Vocab
from helixloom.engine.lora_folder import inspect_adapter
from helixloom.engine.prefix_cache import PrefixCache
from helixloom.engine.types import (
    AdapterInfo,
    GenerationRequest,
    NextTokenLogprobs,
    PromptLogprobs,
    TokenLogprob,
    check_text,
)
from helixloom.errors import AdapterError, HelixloomError

if TYPE_CHECKING:
    import torch

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
BASE_VERSION = "base"  # the prefix cache's key for KV computed by the base model alone
SCORE_PASS_TOKENS = 16384  # padded prompt tokens per scoring pass (next_token_logprobs)


class HFEngine(Engine):
    """A transformers causal LM with any number of LoRA adapters, used per request."""

    backend = "hf"
    supports_adapters = True
    supports_mixed_adapter_batch = True
    supports_logprobs = True
    supports_training = True
    supports_constraints = True
    supports_embeddings = True
    supports_prompt_logprobs = True
    supports_tokenize = True
    supports_token_prompts = True
    continuous_batching = True
    embed_batch_size = 16  # texts per forward pass in embed()
    max_model_len: int  # the model's max_position_embeddings (2**20 when it names none)

    def __init__(
        self, model: Any, tokenizer: Any, *, model_name: str, prefix_cache_bytes: int = 512 << 20
    ) -> None:
        """``prefix_cache_bytes``: the most memory KV kept across requests takes (0: none)."""
        import torch

        self.model = model.eval()
        self.base_model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.chat_template = getattr(tokenizer, "chat_template", None)
        self.device = next(model.parameters()).device
        self._adapters: dict[str, AdapterInfo] = {}
        self.vocab = Vocab(tokenizer, int(model.config.vocab_size), self.device)
        self.prefill_tokens = 0  # prompt tokens run through the model (a shared prompt counts once)
        self.decode_tokens = 0  # tokens run through the model one step at a time
        self.reused_tokens = 0  # prompt tokens whose KV came from the prefix cache instead
        self.share_prefill = True  # rows with one prompt and adapter share a prefill (off: to measure it)
        self.prefix_caching = True  # off: every prompt runs in full (to measure it)
        self.prefix_cache: PrefixCache[RowKV] = PrefixCache(prefix_cache_bytes)
        self.merge_uniform_adapters = True  # off: PEFT's per-row path always (to measure it)
        self._merger = Merger(model)
        self._mergeable: dict[str, bool] = {}  # adapter version -> plain LoRA that can be merged
        self.model_config = model.config
        self._lock = threading.RLock()  # one forward pass at a time; adapters load between batches
        self._torch = torch
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(eos_ids)
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (min(eos_ids) if eos_ids else 0)
        self.max_model_len = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 20)
        self._grammars = Grammars(tokenizer, int(model.config.vocab_size), sorted(self.eos_token_ids))
        self.special_ids = self.vocab.special_ids()
        self._citations = citations.Guards(self.vocab.texts, int(model.config.vocab_size))

    @classmethod
    def load(
        cls, spec: str | models.ModelSource, *, device: str | None = None, dtype: str | None = None
    ) -> HFEngine:
        """Load a model spec (see ``helixloom.models``), or its parsed ``ModelSource``, on ``device``
        (default: CUDA if present, else CPU)."""
        source = models.resolve(spec) if isinstance(spec, str) else spec
        model, tokenizer = load_pretrained(models.materialize(source), device=device, dtype=dtype)
        return cls(model, tokenizer, model_name=source.spec)

    # ------------------------------------------------------------------ tokens

    def encode(self, prompt: str) -> list[int]:
        """Prompt token ids; the BOS token is added unless the text (e.g. from a chat template) has it.
        A ``TokenPrompt`` is its own ids."""
        if isinstance(prompt, TokenPrompt):
            return list(prompt.ids)  # what the client counted, exactly
        check_text(prompt)
        bos = self.tokenizer.bos_token
        add_special = not (bos and prompt.startswith(bos))
        return list(self.tokenizer(prompt, add_special_tokens=add_special).input_ids)

    def format_chat(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        if not self.chat_template:
            return super().format_chat(messages)
        return apply_chat_template(self.tokenizer, messages, add_generation_prompt=add_generation_prompt)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text, add_special_tokens=False))

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        check_text(text, "text")
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids)

    def detokenize(self, ids: Sequence[int]) -> str:
        vocab = len(self.tokenizer)
        if bad := [t for t in ids if not 0 <= t < vocab]:
            raise HelixloomError(
                f"token id {bad[0]} is outside the vocabulary (0 to {vocab - 1})", param="tokens"
            )
        return self._decode_all(ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def _decode_all(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    # ------------------------------------------------------------------ adapters

    def load_adapter(self, name: str, path: str) -> AdapterInfo:
        with self._lock:
            if name == BASE:
                raise AdapterError(f"{BASE!r} is reserved for the base model", "pick another adapter name")
            folder = Path(path)
            if name in self._adapters:
                if Path(self._adapters[name].path) == folder.resolve():
                    return self._adapters[name]
                raise AdapterError(f"an adapter named {name!r} is already loaded from another folder")
            info = inspect_adapter(folder, name)
            check_adapter_fits(self.base_model, folder, name, self.model_name)
            from peft import PeftModel

            try:
                if self.model is self.base_model:
                    self.model = PeftModel.from_pretrained(
                        self.base_model, str(folder), adapter_name=name, is_trainable=False
                    ).eval()
                else:
                    self.model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
            except (ValueError, RuntimeError, KeyError) as exc:
                raise AdapterError(
                    f"adapter {name!r} at {folder} cannot be applied to {self.model_name}: {_first_line(exc)}"
                ) from exc
            self._adapters[name] = info
            return info

    def adapters(self) -> list[AdapterInfo]:
        return list(self._adapters.values())

    def unload_adapter(self, name: str) -> None:
        """Delete the adapter's LoRA weights from the model, between batches (the engine's lock).
        With the last adapter gone the model is the plain base model again: PEFT cannot run with
        no adapter at all (its active adapter would name a deleted one)."""
        with self._lock:
            if name not in self._adapters:
                raise AdapterError(f"adapter {name!r} is not loaded")
            if len(self._adapters) == 1:
                self.model = self.model.unload().eval()  # the LoRA layers taken out, nothing merged
            else:
                self.model.delete_adapter(name)
                # PEFT may leave the deleted adapter active (when the others target other layers);
                # requests pass adapter_names per row, so which one is "active" matters only to PEFT.
                rest = next(n for n in self._adapters if n != name)
                self.model.set_adapter(rest, inference_mode=True)
            del self._adapters[name]

    def _adapter_names(self, adapters: Sequence[str | None]) -> dict[str, Any]:
        unknown = sorted({a for a in adapters if a is not None and a not in self._adapters})
        if unknown:
            raise AdapterError(f"adapter {unknown[0]!r} is not loaded", "load it first (load_adapter)")
        if self.model is self.base_model:
            return {}
        return {"adapter_names": [a or BASE for a in adapters]}

    # ------------------------------------------------------------------ generation

    def stream_batch(
        self, requests: Sequence[GenerationRequest], *, abort: AbortCheck | None = None
    ) -> Iterator[BatchEvent]:
        if not requests:
            return
        # A batch of its own, run to its end: the same loop a scheduler drives (``open_batch``).
        batch = self.open_batch()
        index = {row_id: i for i, row_id in enumerate(batch.join(list(requests)))}
        check = None if abort is None else (lambda row_id: abort(index[row_id]))
        while len(batch):
            for row_id, event in batch.step(check):
                yield index[row_id], event

    def open_batch(self) -> RunningBatch:
        return RunningBatch(self)

    def _forward(self, adapters: Sequence[str | None], **inputs: Any) -> Any:
        """One forward pass of ``self.model``, row r under adapter ``adapters[r]`` (None: the base).

        When every row uses one adapter that can be merged, it runs merged into the base weights
        (``merge.Merger``: the base model's speed); otherwise PEFT applies each row's adapter.
        Callers hold ``self._lock``.
        """
        extra = self._adapter_names(adapters)
        want: tuple[str, str] | None = None
        if extra and self.merge_uniform_adapters and len(names := set(adapters)) == 1:
            name = next(iter(names))
            if name is not None and self._can_merge(name):
                want = (name, self._version(name))
        if self._merger.model is not self.model:
            self._merger.forget(self.model)  # the first adapter wrapped the model in PEFT
        self._merger.ensure(want)
        if want is not None:
            extra = {"adapter_names": [BASE] * len(adapters)}  # the merged weights are the adapter
        return self.model(**inputs, **extra)

    def _can_merge(self, name: str) -> bool:
        version = self._version(name)
        if version not in self._mergeable:
            self._mergeable[version] = self._merger.mergeable(name)
        return self._mergeable[version]

    def _version(self, adapter: str | None) -> str:
        """What KV computed under ``adapter`` is keyed by: its content hash ("" when it has none or
        is not loaded, which no cache entry is ever stored under)."""
        if adapter is None:
            return BASE_VERSION
        info = self._adapters.get(adapter)
        return info.version if info is not None else ""

    def _live_versions(self) -> set[str]:
        return {BASE_VERSION, *(info.version for info in self._adapters.values())}

    def validate(self, request: GenerationRequest) -> None:
        self._fitted(request, self.encode(request.prompt))
        self._adapter_names([request.adapter])
        if request.constraint is not None:
            self._grammars.compile(request.constraint, timeout=COMPILE_TIMEOUT_S)

    def _fitted(self, request: GenerationRequest, ids: list[int]) -> GenerationRequest:
        """``request`` with max_tokens lowered to the room left (``fit_context``); raises when the
        prompt and max_tokens do not fit the context."""
        p = request.sampling
        room = self.max_model_len - len(ids)
        if p.fit_context and 0 < room < p.max_tokens:
            request = replace(request, sampling=p.model_copy(update={"max_tokens": room}))
        if len(ids) + request.sampling.max_tokens > self.max_model_len:
            raise HelixloomError(
                f"prompt ({len(ids)} tokens) + max_tokens ({request.sampling.max_tokens}) exceeds the "
                f"model's context of {self.max_model_len} tokens",
                "shorten the prompt or lower max_tokens",
                param="max_tokens",
            )
        return request

    def _new_row(self, request: GenerationRequest) -> decode.Row:
        ids = self.encode(request.prompt)
        request = self._fitted(request, ids)
        p = request.sampling
        generator = decode.torch_generator(p.seed if p.seed is not None else secrets.randbits(63))
        heal = ""
        if p.token_healing and len(ids) > 1 and ids[-1] not in self.tokenizer.all_special_ids:
            heal = self.vocab.texts()[ids[-1]]
            ids = ids[:-1]
        decoder = (
            IncrementalDecoder(self._decode, ids, self.special_ids)
            if p.skip_special_tokens
            else IncrementalDecoder(self._decode_all, ids)
        )
        row = decode.Row(request, ids, generator, decoder, StopMatcher(p.stop), heal)
        if request.constraint is not None:
            # JSON never has a raw control character (compact separators, escapes inside strings),
            # but xgrammar's length-bounded string rule lets them through: forbid them here.
            forbid = self.vocab.control_tokens() if request.constraint.kind == "json_schema" else None
            row.grammar = self._grammars.matcher(request.constraint, forbid)
        if request.citations is not None:
            row.citations = self._citations.get(request.citations)
        return row

    def _left_pad(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        torch = self._torch
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for r, ids in enumerate(batch):
            input_ids[r, width - len(ids) :] = torch.tensor(ids)
            attention[r, width - len(ids) :] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # positions: [B, S], 0 at each row's first token
        return input_ids.to(self.device), attention.to(self.device), positions.to(self.device)

    # ------------------------------------------------------------------ scoring

    def next_token_logprobs(
        self,
        prompts: Sequence[str],
        *,
        adapter: str | None = None,
        top_k: int = 5,
        candidates: Sequence[str] = (),
    ) -> list[NextTokenLogprobs]:
        torch = self._torch
        if not prompts:
            return []
        if any(not p for p in prompts):
            raise HelixloomError("a prompt to score is empty", param="prompts")
        candidate_ids = {c: self.vocab.single_token(c) for c in candidates}
        batch = [self.encode(p) for p in prompts]
        # passes of at most SCORE_PASS_TOKENS padded tokens: a weave round's nodes x questions came as
        # one pass, as large as a request made it, holding the engine (and its memory) for everyone
        groups: list[list[int]] = [[]]
        width = 0  # the current pass's longest prompt
        for r, ids in enumerate(batch):
            width = max(width, len(ids))
            if groups[-1] and width * (len(groups[-1]) + 1) > SCORE_PASS_TOKENS:
                groups.append([])
                width = len(ids)
            groups[-1].append(r)
        parts = []
        with self._lock, torch.inference_mode():
            for group in groups:
                input_ids, attention, positions = self._left_pad([batch[i] for i in group])
                out = self._forward(
                    [adapter] * len(group),
                    input_ids=input_ids,
                    attention_mask=attention,
                    position_ids=positions,
                    use_cache=False,
                    logits_to_keep=1,
                )
                parts.append(torch.log_softmax(out.logits[:, -1, :].float(), dim=-1))
            logprobs = torch.cat(parts)  # logprobs: [B, V]
        results = []
        for r, ids in enumerate(batch):
            k = min(top_k, logprobs.shape[-1])
            values, tokens = logprobs[r].topk(k) if k > 0 else (logprobs[r][:0], logprobs[r][:0])
            top = tuple(
                TokenLogprob(int(t), self.vocab.text(int(t)), float(v))
                for v, t in zip(values.tolist(), tokens.tolist(), strict=True)
            )
            cand = {c: (float(logprobs[r, t]) if t is not None else None) for c, t in candidate_ids.items()}
            results.append(NextTokenLogprobs(top, cand, len(ids)))
        return results

    def prompt_logprobs(
        self, prompts: Sequence[str], *, adapter: str | None = None, top_k: int = 0
    ) -> list[PromptLogprobs]:
        """One prompt per forward pass: its logits are [S, V], and V is large (262k for Gemma)."""
        torch = self._torch
        if not prompts:
            return []
        if any(not p for p in prompts):
            raise HelixloomError("a prompt to score is empty", param="prompt")
        if not 0 <= top_k <= 20:
            raise HelixloomError("top_k must be between 0 and 20", param="logprobs")
        results = []
        with self._lock, torch.inference_mode():
            for prompt in prompts:
                ids = self.encode(prompt)
                if len(ids) > self.max_model_len:
                    raise HelixloomError(
                        f"the prompt has {len(ids)} tokens; the model reads at most {self.max_model_len}",
                        param="prompt",
                    )
                logits = self._forward(
                    [adapter], input_ids=torch.tensor([ids], device=self.device), use_cache=False
                )
                rows = logits.logits[0, :-1].float()  # rows: [S-1, V]; row i predicts ids[i + 1]
                steps = [self.vocab.logprobs(rows[i], token, top_k) for i, token in enumerate(ids[1:])]
                bos, bos_text = self.tokenizer.bos_token_id, self.tokenizer.bos_token or ""
                # A BOS that encode() added is not part of the text: leave it out.
                skip = 1 if bos is not None and ids[0] == bos and not prompt.startswith(bos_text) else 0
                results.append(
                    PromptLogprobs(
                        token_ids=tuple(ids[skip:]),
                        tokens=(self.vocab.text(ids[0]), *(s.chosen.token for s in steps))[skip:],
                        logprobs=(None, *(s.chosen.logprob for s in steps))[skip:],
                        top=(None, *((s.top if top_k else None) for s in steps))[skip:],
                    )
                )
        return results

    def embed(
        self,
        texts: Sequence[str],
        *,
        adapter: str | None = None,
        depth: float = 1.0,
        prefixes: Sequence[str] | None = None,
        pooling: str = "mean",
    ) -> list[list[float]]:
        """Mean of a hidden state over each text's tokens (padding excluded), in fp32.

        ``depth`` picks the hidden state: the output of the layer at that fraction of the model's
        layers (1.0: the last, after the final norm; 0.5: the middle one). ``prefixes`` (one per text,
        each the start of its text) leave their tokens out of the mean, so that a response can be
        pooled in its prompt's context; a text with nothing after its prefix gives its last token's state.
        ``pooling`` "mean+last" appends the last token's state to the mean (twice the width).
        Texts are batched by length, left-padded with explicit positions, so a text's vector does not
        depend on what it is batched with; ``adapter`` applies per row as in generation. A text longer
        than the context keeps its first token (BOS) and its end.
        """
        torch = self._torch
        if not texts:
            return []
        if any(not t for t in texts):
            raise HelixloomError("a text to embed is empty", param="texts")
        if not 0.0 < depth <= 1.0:
            raise HelixloomError(
                "depth is a fraction of the model's layers: above 0, at most 1", param="depth"
            )
        if pooling not in POOLINGS:
            raise HelixloomError(f"pooling must be one of {', '.join(POOLINGS)}", param="pooling")
        if prefixes is not None and (
            len(prefixes) != len(texts)
            or any(not t.startswith(p) for t, p in zip(texts, prefixes, strict=False))
        ):
            raise HelixloomError("each prefix must be the start of its text", param="prefixes")
        layers = self.base_model.config.get_text_config().num_hidden_layers
        layer = max(1, round(depth * layers))  # hidden_states[0] is the embedding layer's output
        raw = [self.encode(t) for t in texts]
        encoded = [self._fit_context(ids) for ids in raw]
        skip = [0] * len(texts)
        if prefixes is not None:
            for i, p in enumerate(prefixes):
                # tokens past the prefix's own count (a merge across the boundary counts as the text's);
                # a text cut to the context loses its middle, so the kept tail is what is left
                pooled = max(1, len(raw[i]) - (len(self.encode(p)) if p else 0))
                skip[i] = max(0, len(encoded[i]) - pooled)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out: list[list[float]] = [[] for _ in texts]
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), self.embed_batch_size):
                chunk = order[start : start + self.embed_batch_size]
                input_ids, attention, positions = self._left_pad([encoded[i] for i in chunk])
                result = self._forward(
                    [adapter] * len(chunk),
                    input_ids=input_ids,
                    attention_mask=attention,
                    position_ids=positions,
                    use_cache=False,
                    output_hidden_states=True,
                    logits_to_keep=1,
                )
                hidden = result.hidden_states[layer].float()  # hidden: [B, S, H]
                # positions (0 at each row's first token) at or past the row's skip are pooled
                limit = torch.tensor([skip[i] for i in chunk], device=hidden.device)[:, None]
                keep = (attention.bool() & (positions >= limit))[:, :, None]
                # where, not multiply: a padded position's state may be NaN (a fully masked query row)
                summed = torch.where(keep, hidden, hidden.new_zeros(())).sum(dim=1)
                pooled = summed / keep.sum(dim=1).float()  # pooled: [B, H]
                if pooling == "mean+last":  # left padding: every row's last token is the last column
                    pooled = torch.cat([pooled, hidden[:, -1]], dim=1)  # pooled: [B, 2H]
                for i, vector in zip(chunk, pooled.cpu().tolist(), strict=True):
                    out[i] = vector
        return out

    def _fit_context(self, ids: list[int]) -> list[int]:
        if len(ids) <= self.max_model_len:
            return ids
        return ids[:1] + ids[len(ids) - self.max_model_len + 1 :]


#: How ``embed`` pools a text's hidden states.
POOLINGS = ("mean", "mean+last")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
