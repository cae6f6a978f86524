"""Scoring on the llamacpp backend: next-token and prompt log-probabilities from the context's logits.

A part of ``LlamaCppEngine`` (which it is mixed into), kept apart so each file reads whole.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from helixloom.engine.types import GeneratedTokenLogprobs, NextTokenLogprobs, PromptLogprobs, TokenLogprob
from helixloom.errors import HelixloomError

SCORE_CHUNK = 64  # prompt tokens scored per decode: each row's logits are [V] floats (262k for Gemma)


class LlamaCppScoring:
    """Log-probabilities for ``LlamaCppEngine``: under its lock, on its one context."""

    llm: Any
    _lock: threading.RLock
    _bos_text: str

    if TYPE_CHECKING:  # provided by LlamaCppEngine

        def encode(self, prompt: str) -> list[int]: ...
        def _prepare(self, adapter: str | None, tokens: list[int]) -> None: ...
        def _token_text(self, token_id: int) -> str: ...
        def _decode_all(self, ids: Sequence[int]) -> str: ...

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
                has_bos = bool(self._bos_text) and prompt.startswith(self._bos_text)
                skip = 1 if bos >= 0 and ids[0] == bos and not has_bos else 0
                results.append(
                    PromptLogprobs(
                        token_ids=tuple(ids[skip:]),
                        tokens=tuple(self._decode_all([t]) for t in ids)[skip:],
                        logprobs=(None, *(s.chosen.logprob for s in steps))[skip:],
                        top=(None, *((s.top if top_k else None) for s in steps))[skip:],
                    )
                )
        return results


def _log_softmax(logits: Any) -> Any:
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    m = x.max()
    return x - (m + math.log(np.exp(x - m).sum()))
