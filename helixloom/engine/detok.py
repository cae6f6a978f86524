"""Turning a growing list of token ids into streamed text, with stop sequences.

Shared by every backend that produces token ids itself, so streamed and non-streamed text, stop
handling and token accounting are the same everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence

# How many prompt tokens to decode together with the first generated ones: tokenizers that mark word
# starts (SentencePiece's "▁") drop the leading space of a piece decoded alone.
_CONTEXT_TOKENS = 6


# A bracketed name the tokenizer added as one token: `<start_of_image>`, `[multimodal]`, `<|image|>`.
_MARKER = re.compile(r"<[^<>\s]+>|\[[^\[\]\s]+\]")
# ...unless it is an HTML tag, which tokenizers (Gemma's) add as ordinary text: `<table>`, `</td>`.
_HTML_TAG = re.compile(r"</?[a-z][a-z0-9]*>")


def is_control_marker(text: str) -> bool:
    """Whether an added token that the tokenizer does not mark special is still a marker, never text.

    Gemma 3's tokenizer (and the GGUF it ships in) leaves `<start_of_image>`, `<end_of_image>` and
    `[multimodal]` unmarked beside its whitespace runs and HTML tags, so a decoder that skips only
    special tokens lets them into text. A whole-token bracketed name that is not an HTML tag is a marker.
    """
    return bool(_MARKER.fullmatch(text)) and not _HTML_TAG.fullmatch(text)


class IncrementalDecoder:
    """Decodes token ids one at a time into text deltas (the prefix/read-offset scheme of TGI and vLLM).

    A delta is released only once it no longer ends in a partial UTF-8 character; ``flush`` releases
    whatever is left at the end. Ids in ``skip`` (the backend's special tokens, unless a request asks
    to see them) never reach ``decode``, so no delta and no final text ever carries them.
    """

    def __init__(
        self,
        decode: Callable[[Sequence[int]], str],
        context_ids: Sequence[int],
        skip: Collection[int] = frozenset(),
    ) -> None:
        self._decode = decode
        self._skip = skip
        self._ids: list[int] = [t for t in context_ids if t not in skip][-_CONTEXT_TOKENS:]
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token_id: int) -> str:
        if token_id in self._skip:
            return ""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""


class StopMatcher:
    """Accumulates text, finds the first stop sequence and holds back text that may be starting one.

    ``feed`` returns the text now safe to release; once a stop is found ``stopped`` is True and
    ``text`` is cut right before it.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._longest = max((len(s) for s in self._stops), default=0)
        self.text = ""
        self.released = 0
        self.stopped = False

    def feed(self, delta: str) -> str:
        if self.stopped or not delta:
            return ""
        searched_from = max(0, len(self.text) - self._longest + 1)
        self.text += delta
        if self._stops:
            hits = [i for s in self._stops if (i := self.text.find(s, searched_from)) >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
                return self._release(len(self.text))
        return self._release(len(self.text) - self._held_back())

    def finish(self) -> str:
        """Release everything that was held back (generation ended without a stop)."""
        return self._release(len(self.text))

    def _held_back(self) -> int:
        # The longest tail of the text that is a proper prefix of some stop sequence.
        for n in range(min(self._longest - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self._stops):
                return n
        return 0

    def _release(self, upto: int) -> str:
        if upto <= self.released:
            return ""
        out = self.text[self.released : upto]
        self.released = upto
        return out
