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

import bisect
import threading
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
        self._target_set = frozenset(self._targets)
        # how many characters of text decide the state: the opening, the longest id and the closing
        self.tail_chars = len(citations.opening) + max(len(t) for t in self._targets)
        # token ids by their text's first character: a state's mask tests only the tokens that can
        # continue it, not the whole vocabulary (a few hundred tokens for a hex digit, not 262k)
        self._by_first: dict[str, list[int]] = {}
        self._holding: list[int] = []  # tokens whose text holds a whole opening
        for token, text in enumerate(self._texts[:vocab_size]):
            if text:
                self._by_first.setdefault(text[0], []).append(token)
                if citations.opening in text:
                    self._holding.append(token)
        self._lock = threading.Lock()  # rows of several requests share a guard
        self._masks: dict[str, np.ndarray | None] = {}
        self._on_device: dict[tuple[int, str], Any] = {}
        self._base: np.ndarray | None = self._build("")

    def state(self, tail: str) -> str | None:
        """The citation under way at the end of ``tail`` (the output's last ``tail_chars`` or more
        characters), or None when none is."""
        opening = self.citations.opening
        at = tail.rfind(opening[0])
        if at < 0:
            return None
        part = tail[at:]
        if opening.startswith(part):
            return part
        if part.startswith(opening):
            rest = part[len(opening) :]
            if self.citations.closing not in rest and self._compatible(rest):
                return part
        return None

    def allowed(self, tail: str) -> np.ndarray | None:
        """A mask ([vocab_size] bool, True: allowed) for the next token after ``tail``, or None when
        every token is allowed. Masks are cached per state."""
        state = self.state(tail)
        if state is None:
            return self._base
        with self._lock:
            if state not in self._masks:
                self._masks[state] = self._build(state)
            return self._masks[state]

    def banned_on(self, allowed: np.ndarray, device: Any) -> Any:
        """``~allowed`` as a torch tensor on ``device``, copied there once per mask."""
        import torch

        key = (id(allowed), str(device))  # the guard keeps every mask it made alive: ids stay unique
        with self._lock:
            if key not in self._on_device:
                self._on_device[key] = ~torch.from_numpy(allowed).to(device)
            return self._on_device[key]

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

    def _build(self, state: str) -> np.ndarray | None:
        import numpy as np

        opening = self.citations.opening
        texts = self._texts
        if state.startswith(opening):
            # inside: only tokens whose text continues an allowed id are allowed; a token without
            # text (end of sequence, as some backends decode it) would leave the citation unclosed
            rest = state[len(opening) :]
            mask = np.zeros(self._vocab_size, dtype=bool)
            for char in {t[len(rest)] for t in self._targets if t.startswith(rest) and len(t) > len(rest)}:
                for token in self._by_first.get(char, ()):
                    mask[token] = self._fits(state + texts[token])
            return mask
        # outside, or a start of the opening: a token is banned when the text it makes opens a
        # citation that goes wrong; only tokens holding the opening, or continuing it, can
        candidates: set[int] = set()
        for p in range(len(state)):  # where the opening may start inside the state
            if opening.startswith(state[p:]):
                candidates.update(self._by_first.get(opening[len(state) - p], ()))
        candidates.update(self._holding)
        banned = [t for t in candidates if not self._fits(state + texts[t])]
        if not banned:
            return None
        mask = np.ones(self._vocab_size, dtype=bool)
        mask[banned] = False
        return mask

    def _compatible(self, rest: str) -> bool:
        """Whether ``rest``, the text after an opening, is the start of an allowed id and its closing,
        or starts with one."""
        closing = self.citations.closing
        end = rest.find(closing)
        if end >= 0:  # ids never hold the closing: the citation ends at its first one
            return rest[: end + len(closing)] in self._target_set
        i = bisect.bisect_left(self._targets, rest)
        return i < len(self._targets) and self._targets[i].startswith(rest)

    def _fits(self, text: str) -> bool:
        """Whether every citation ``text`` opens writes (the start of) an allowed id and its closing."""
        opening = self.citations.opening
        start = text.find(opening)
        while start >= 0:
            if not self._compatible(text[start + len(opening) :]):
                return False
            start = text.find(opening, start + 1)
        return True


def mask_logits(logits: np.ndarray, allowed: np.ndarray | None) -> None:
    """Set the tokens ``allowed`` does not allow to -inf in ``logits`` ([V], in place), unless that
    leaves no finite logit (a grammar that allows none of the ids: the grammar decides)."""
    if allowed is None:
        return
    import numpy as np

    allowed = allowed[: logits.shape[0]]
    if np.isfinite(logits[: allowed.shape[0]][allowed]).any():
        logits[: allowed.shape[0]][~allowed] = -np.inf


class Guards:
    """Guards per citation set for one vocabulary, the most recent ``size`` kept (building one reads
    the whole vocabulary once)."""

    def __init__(self, texts: Any, vocab_size: int, size: int = 16) -> None:
        self._texts = texts  # a callable giving the token texts, read on the first guard
        self._vocab_size = vocab_size
        self._size = size
        self._guards: dict[CitationSet, CitationGuard] = {}
        self._lock = threading.Lock()  # requests are checked on the server's threads

    def get(self, citations: CitationSet) -> CitationGuard:
        with self._lock:
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

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        for row in range(input_ids.shape[0]):
            generated = input_ids[row, self.prompt_length :].tolist()
            allowed = self.guard.allowed(self.guard.tail_of(generated))
            if allowed is not None:
                scores[row] = guard_logits(self.guard, scores[row], allowed)
        return scores


def guard_logits(guard: CitationGuard, logits: Any, allowed: np.ndarray | None) -> Any:
    """Torch ``logits`` ([V]) with the tokens ``allowed`` does not allow set to -inf, unless that
    leaves no finite logit (a grammar that allows none of the ids: the grammar decides)."""
    if allowed is None:
        return logits
    masked = logits.masked_fill(guard.banned_on(allowed, logits.device)[: logits.shape[0]], float("-inf"))
    return masked if bool(masked.isfinite().any()) else logits
