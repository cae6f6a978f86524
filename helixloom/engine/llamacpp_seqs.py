"""The llamacpp backend's generation context: ``n_parallel`` KV sequences and the prefixes they hold.

A part of ``LlamaCppEngine``, kept apart so each file reads whole. The context is made with the
same settings llama-cpp-python's ``Llama`` chose for its own (threads, batch size, attention), with
``n_parallel`` sequences, each in its own KV stream (``kv_unified`` off: a sequence's cells lie where
they would if it were alone, so attention sums in the same order).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from helixloom.errors import HelixloomError

BASE_KEY = ""  # the cache key of KV computed without an adapter
_UNKNOWN = object()  # ``SeqPool.applied`` after a failed switch: the next use_adapter sets it again

# Prompts are computed in chunks of this many tokens at positions aligned to it, and a prefix is
# reused only in whole such chunks: a position's numbers then depend only on the tokens up to its
# chunk's end, never on how the prompt was split, so a reused prefix gives bit for bit what a fresh
# prompt gives. Measured: recomputing only a prompt's tail after a kept prefix (how llama-cpp-python
# and llama.cpp's server reuse one) changed the last position's logits by up to 0.5 for prompts of
# 8 to 40 tokens, with or without a LoRA or flash attention. Prompt speed at 16/32/64/256-token
# chunks: 18.5/21.3/21.9/21.0 tokens/s (one loaded thread), so 32 costs little and reuses finely.
PREFILL_CHUNK = 32


@dataclass
class Seq:
    """One sequence of the generation context and what its KV holds: ``tokens`` at positions 0..n-1,
    computed under the adapter whose content hash is ``key`` ("" for the base model)."""

    id: int
    tokens: list[int] = field(default_factory=list)
    exact: int = 0  # leading positions computed in whole aligned prompt chunks (reusable exactly)
    key: str = ""
    busy: bool = False
    used: float = 0.0


class SeqPool:
    """The generation context, its sequences, the batch it decodes and the adapter set on it."""

    def __init__(self, llm: Any, n_ctx: int, n_parallel: int) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaBatch, LlamaContext

        params = type(llm.context_params).from_buffer_copy(llm.context_params)  # Llama's settings
        params.n_seq_max = n_parallel
        params.kv_unified = False
        params.n_ctx = n_ctx * n_parallel
        self.llm = llm
        self.ctx = llm._stack.enter_context(
            contextlib.closing(LlamaContext(model=llm._model, params=params, verbose=False))
        )
        self.n_ctx = int(llama_cpp.llama_n_ctx_seq(self.ctx.ctx))  # per sequence
        self._memory = llama_cpp.llama_get_memory(self.ctx.ctx)
        self.batch_size = max(llm.n_batch, n_parallel)
        self._batch = llm._stack.enter_context(
            contextlib.closing(LlamaBatch(n_tokens=self.batch_size, embd=0, n_seq_max=1, verbose=False))
        )
        self.seqs = [Seq(i) for i in range(n_parallel)]
        self.applied: Any = None  # the adapter handle set on the context now
        self.prefix_hits = 0  # prompt tokens reused from a sequence's KV (for benchmarks and tests)

    # ------------------------------------------------------------------ sequences

    def claim(self, prompt: list[int], key: str) -> Seq | None:
        """A free sequence for ``prompt`` (None when all are busy), holding the longest prefix of it
        computed under ``key`` in whole aligned chunks (``PREFILL_CHUNK``); what follows that
        prefix is removed from its KV. The prompt's last chunk is always recomputed: its last
        position's logits give the first new token."""
        idle = [s for s in self.seqs if not s.busy]
        if not idle:
            return None
        limit = max(0, len(prompt) - 1) // PREFILL_CHUNK * PREFILL_CHUNK

        def reusable(s: Seq) -> int:
            if s.key != key:
                return 0
            return min(common_prefix(s.tokens, prompt), s.exact, limit) // PREFILL_CHUNK * PREFILL_CHUNK

        best = max(idle, key=lambda s: (reusable(s), s.used))
        reuse = reusable(best)
        seq = best if reuse else min(idle, key=lambda s: s.used)
        self._keep(seq, reuse)
        seq.key, seq.busy, seq.used = key, True, time.perf_counter()
        self.prefix_hits += len(seq.tokens)
        return seq

    def release(self, seq: Seq) -> None:
        """The sequence is free; its KV stays for a later prompt sharing its prefix."""
        seq.busy, seq.used = False, time.perf_counter()

    def forget(self, seq: Seq) -> None:
        """Free the sequence and drop its KV."""
        self._keep(seq, 0)
        seq.busy = False

    def _keep(self, seq: Seq, n: int) -> None:
        """Keep only the first ``n`` positions of ``seq``'s KV (all of it is dropped where llama.cpp
        cannot cut a sequence there)."""
        import llama_cpp

        if not llama_cpp.llama_memory_seq_rm(self._memory, seq.id, n, -1):
            llama_cpp.llama_memory_seq_rm(self._memory, seq.id, 0, -1)
            n = 0
        del seq.tokens[n:]
        seq.exact = min(seq.exact, n)

    # ------------------------------------------------------------------ decoding

    def prefill(self, seq: Seq, prompt: list[int]) -> int:
        """Compute the prompt's tokens after what ``seq`` holds (a whole number of chunks), alone,
        in aligned chunks; returns the batch index of the last token's logits."""
        start = len(seq.tokens)
        assert start % PREFILL_CHUNK == 0 and seq.exact == start
        last = 0
        for at in range(start, len(prompt), PREFILL_CHUNK):
            chunk = prompt[at : at + PREFILL_CHUNK]
            self.fill([(seq.id, at + i, t, i == len(chunk) - 1) for i, t in enumerate(chunk)])
            self.run()
            seq.tokens.extend(chunk)
            if len(chunk) == PREFILL_CHUNK:
                seq.exact = at + PREFILL_CHUNK
            last = len(chunk) - 1
        return last

    def fill(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Put (sequence, position, token, wants logits) entries into the batch."""
        b = self._batch.batch
        for j, (seq_id, pos, token, logits) in enumerate(entries):
            b.token[j] = token
            b.pos[j] = pos
            b.n_seq_id[j] = 1
            b.seq_id[j][0] = seq_id
            b.logits[j] = logits
        b.n_tokens = len(entries)

    def run(self) -> None:
        """Decode the batch."""
        import llama_cpp

        rc = llama_cpp.llama_decode(self.ctx.ctx, self._batch.batch)
        if rc != 0:
            raise HelixloomError(f"llama.cpp could not decode the batch (llama_decode returned {rc})")

    def logits(self, index: int, *, copy: bool = True) -> Any:
        """The logits the last decode wrote for batch entry ``index`` ([V]); ``copy=False`` gives
        the context's own buffer, which the sampler reads next."""
        import numpy as np

        row = np.ctypeslib.as_array(self.ctx.get_logits_ith(index), shape=(self.llm.n_vocab(),))
        return row.copy() if copy else row

    def use_adapter(self, handle: Any) -> None:
        """Set the LoRA ``handle`` (None: no adapter) on the context."""
        if handle == self.applied:
            return
        self.applied = _UNKNOWN  # until it is set: a failed switch is retried by the next call
        set_lora(self.ctx.ctx, handle)
        self.applied = handle


def set_lora(ctx: Any, handle: Any) -> None:
    """Set the LoRA ``handle`` (None: none) at scale 1 on the llama.cpp context ``ctx``; an error if
    llama.cpp refuses (decoding on would use the weights it had)."""
    import llama_cpp

    if handle is None:
        rc = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
    else:
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
        rc = llama_cpp.llama_set_adapters_lora(ctx, handles, 1, (ctypes.c_float * 1)(1.0))
    if rc != 0:
        raise HelixloomError(f"llama.cpp could not set the LoRA adapter (it returned {rc})")


@contextlib.contextmanager
def plain_weights() -> Iterator[None]:
    """Load models (``Llama(...)`` in this block) without llama.cpp's repacked CPU weight layouts.

    The repacked Q4_K kernels compute a batch of 4 or more rows (a GEMM) in another order than
    fewer (GEMV), so a sequence's logits would depend on how many others decode beside it; the plain
    kernels compute each row alike (see ``llamacpp_batch``), at the same speed here (measured: 79 vs
    78 ms for one row, 143 vs 144 ms for four). ``Llama`` has no flag for it, so the default model
    parameters are patched while it loads; the lock keeps two loads from interleaving. llama.cpp's
    own tools call this ``--no-repack``."""
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


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
