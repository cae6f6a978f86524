"""The model's vocabulary as text, and the masks over it that decoding needs.

Built lazily, once per engine: the text of every token (for token healing and for the control
characters JSON forbids), per-prefix masks, and the logprob records returned to callers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from helixloom.engine.detok import is_control_marker
from helixloom.engine.types import GeneratedTokenLogprobs, TokenLogprob

if TYPE_CHECKING:
    import torch


class Vocab:
    """A tokenizer's tokens as text, with masks ([V], on ``device``) over the model's vocabulary."""

    def __init__(self, tokenizer: Any, vocab_size: int, device: Any) -> None:
        """``vocab_size`` is the model's (its logits' width), which may exceed the tokenizer's."""
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.device = device
        self._texts: list[str] | None = None
        self._prefix_masks: dict[str, torch.Tensor] = {}
        self._control_mask: torch.Tensor | None = None

    def text(self, token_id: int) -> str:
        """One token's text, as it reads alone."""
        return str(self.tokenizer.decode([token_id]))

    def texts(self) -> list[str]:
        """Every token's text, by id."""
        if self._texts is None:
            vocab = len(self.tokenizer)
            self._texts = [str(t) for t in self.tokenizer.batch_decode([[i] for i in range(vocab)])]
        return self._texts

    def special_ids(self) -> frozenset[int]:
        """Ids that decoding leaves out of text: the tokenizer's special tokens, its added tokens marked
        special, and added tokens that are markers although unmarked (Gemma 3's ``<start_of_image>``)."""
        ids = set(self.tokenizer.all_special_ids)
        for token_id, token in self.tokenizer.added_tokens_decoder.items():
            if token.special or is_control_marker(token.content):
                ids.add(int(token_id))
        return frozenset(ids)

    def single_token(self, text: str) -> int | None:
        """The id of ``text`` when it is exactly one token, else None."""
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        return int(ids[0]) if len(ids) == 1 else None

    def control_tokens(self) -> torch.Tensor:
        """A mask ([V]) of tokens whose text has a control character (U+0000 to U+001F)."""
        if self._control_mask is None:
            self._control_mask = self._mask(lambda t: any(ord(c) < 0x20 for c in t))
        return self._control_mask

    def starting_with(self, prefix: str) -> torch.Tensor:
        """A mask ([V]) of tokens whose text starts with ``prefix``."""
        if prefix not in self._prefix_masks:
            self._prefix_masks[prefix] = self._mask(lambda t: t.startswith(prefix))
        return self._prefix_masks[prefix]

    def _mask(self, keep: Any) -> torch.Tensor:
        import torch

        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        mask[[i for i, t in enumerate(self.texts()) if keep(t)]] = True
        return mask.to(self.device)

    def logprobs(self, logits: torch.Tensor, token: int, n: int) -> GeneratedTokenLogprobs:
        """``token``'s logprob under ``logits`` ([V]) and the ``n`` most likely tokens'."""
        import torch

        logprobs = torch.log_softmax(logits, dim=-1)
        chosen = TokenLogprob(token, self.text(token), float(logprobs[token]))
        top: tuple[TokenLogprob, ...] = ()
        if n > 0:
            values, ids = logprobs.topk(n)
            top = tuple(
                TokenLogprob(int(t), self.text(int(t)), float(v))
                for v, t in zip(values.tolist(), ids.tolist(), strict=True)
            )
        return GeneratedTokenLogprobs(chosen, top)
