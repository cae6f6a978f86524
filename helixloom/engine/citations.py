"""Citations decoded from a closed set: once the output opens a citation (``[DOC_ID:``), the id it
writes can only be one of the ids the request allows, closed by ``]``.

A document adapter cites the document it answers from by its content-addressed id. Trained on a few
ids, it still sometimes writes one with a hex digit wrong (``780cb3001e`` for ``780cb3011e``): a
citation that names no document. Generative retrieval decodes ids from a prefix tree of the valid
ones for this reason; this is the same constraint, on the citation only.

Why not a grammar (``Constraint.regex``)? A grammar over the whole answer masks all 262k tokens at
every step: on the default model with the hf engine, 30 greedy answers took 88 s constrained against
19 s free (Dec 2026), and grammars rule out token healing, which the default model's answers need
(held-out key facts 63.3% with healing, 51.1% without). Here the text is free until a citation
opens; a step costs a look at the text's tail, and inside a citation one cached mask per prefix.

The guard works on token texts (each token decoded alone), the same for every backend: the hf engine
and llama.cpp mask their logits with ``allowed``; training's probe uses ``LogitsProcessor``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from helixloom.errors import HelixloomError

if TYPE_CHECKING:
    import numpy as np

#: The most ids one request may allow (each is a few bytes; masks are cached per prefix, not per id).
MAX_CITATION_IDS = 10_000


@dataclass(frozen=True)
class CitationSet:
    """The ids the output may cite, and how a citation is written: ``{opening}{id}{closing}``."""

    ids: tuple[str, ...]
    opening: str
    closing: str = "]"

    def __post_init__(self) -> None:
        if not self.opening or not self.closing:
            raise HelixloomError("a citation needs an opening and a closing text")
        if not self.ids or len(self.ids) > MAX_CITATION_IDS:
            raise HelixloomError(f"a citation set holds 1 to {MAX_CITATION_IDS} ids, not {len(self.ids)}")
        for i in self.ids:
            if not isinstance(i, str) or not i or self.closing in i or self.opening[0] in i:
                raise HelixloomError(f"{i!r} cannot be cited (empty, or holds the citation's own marks)")


class CitationGuard:
    """Which tokens may come next, given the text so far, for one ``CitationSet`` and vocabulary.

    The state is the text after the last ``opening[0]`` when it is still on the way to a citation:
    a start of ``opening`` (``[DOC``), or ``opening`` and the start of an allowed id (``[DOC_ID:78``).
    In a state, a token is allowed unless the text it makes opens a citation and then leaves every
    allowed id (or closes one too early). Outside one, only tokens that hold a whole wrong citation
    are masked (none in a usual vocabulary).
    """

    def __init__(self, citations: CitationSet, texts: Sequence[str], vocab_size: int) -> None:
        self.citations = citations
        self._texts = list(texts)
        self._vocab_size = vocab_size
        self._targets = tuple(sorted({i + citations.closing for i in citations.ids}))
        # how many characters of text decide the state: the opening, the longest id and the closing
        self.tail_chars = len(citations.opening) + max(len(t) for t in self._targets)
        self._masks: dict[str, np.ndarray | None] = {}
        self._base: np.ndarray | None = self._allowed("")

    def state(self, tail: str) -> str | None:
        """The citation under way at the end of ``tail`` (the output's last ``tail_chars`` or more
        characters), or None when none is."""
        mark = self.citations.opening[0]
        at = tail.rfind(mark)
        if at < 0:
            return None
        part = tail[at:]
        opening = self.citations.opening
        if opening.startswith(part):
            return part
        if part.startswith(opening):
            rest = part[len(opening) :]
            if any(t.startswith(rest) and t != rest for t in self._targets):
                return part
        return None

    def allowed(self, tail: str) -> np.ndarray | None:
        """A mask ([vocab_size] bool, True: allowed) for the next token after ``tail``, or None when
        every token is allowed. Masks are cached per state."""
        state = self.state(tail)
        if state is None:
            return self._base
        if state not in self._masks:
            self._masks[state] = self._allowed(state)
        return self._masks[state]

    def tail_of(self, token_ids: Sequence[int]) -> str:
        """The text of the last tokens of ``token_ids``, at least ``tail_chars`` long when there are
        enough tokens."""
        parts: list[str] = []
        size = 0
        for token in reversed(token_ids):
            text = self._texts[token] if 0 <= token < len(self._texts) else ""
            parts.append(text)
            size += len(text)
            if size >= self.tail_chars:
                break
        return "".join(reversed(parts))

    def _allowed(self, state: str) -> np.ndarray | None:
        import numpy as np

        opening = self.citations.opening
        mask = np.ones(self._vocab_size, dtype=bool)
        banned = 0
        inside = state.startswith(opening)
        for token, text in enumerate(self._texts[: self._vocab_size]):
            # a token without text (end of sequence, as some backends decode it) inside a citation
            # would leave it unclosed
            if (inside and not text) or not self._fits(state + text, opening):
                mask[token] = False
                banned += 1
        return mask if banned else None

    def _fits(self, text: str, opening: str) -> bool:
        """Whether every citation ``text`` opens writes (the start of) an allowed id and its closing."""
        start = text.find(opening)
        while start >= 0:
            rest = text[start + len(opening) :]
            if not any(t.startswith(rest) or rest.startswith(t) for t in self._targets):
                return False
            start = text.find(opening, start + 1)
        return True


class Guards:
    """Guards per citation set for one vocabulary, the most recent ``size`` kept (building one reads
    the whole vocabulary once)."""

    def __init__(self, texts: Any, vocab_size: int, size: int = 16) -> None:
        self._texts = texts  # a callable giving the token texts, read on the first guard
        self._vocab_size = vocab_size
        self._size = size
        self._guards: dict[CitationSet, CitationGuard] = {}

    def get(self, citations: CitationSet) -> CitationGuard:
        guard = self._guards.pop(citations, None)
        if guard is None:
            guard = CitationGuard(citations, self._texts(), self._vocab_size)
        self._guards[citations] = guard
        while len(self._guards) > self._size:
            self._guards.pop(next(iter(self._guards)))
        return guard


class LogitsProcessor:
    """The guard as a transformers logits processor, for ``model.generate`` on a left-padded batch
    whose prompts take the first ``prompt_length`` positions."""

    def __init__(self, guard: CitationGuard, prompt_length: int) -> None:
        self.guard = guard
        self.prompt_length = prompt_length
        self._torch_masks: dict[int, Any] = {}

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        for row in range(input_ids.shape[0]):
            generated = input_ids[row, self.prompt_length :].tolist()
            allowed = self.guard.allowed(self.guard.tail_of(generated))
            if allowed is None:
                continue
            key = id(allowed)
            if key not in self._torch_masks:
                self._torch_masks[key] = torch.from_numpy(allowed).to(scores.device)
            mask = self._torch_masks[key][: scores.shape[1]]
            scores[row, : mask.shape[0]] = scores[row, : mask.shape[0]].masked_fill(~mask, -float("inf"))
        return scores
