"""Text similarity for near-duplicate filtering: word tokens, ROUGE-L F and Jaccard, and an index.

Tokens are lowercased runs of letters and digits, as ``rouge_score``'s default tokenizer makes them
for English (Self-Instruct filters generated instructions with ROUGE-L F against everything it has),
but any script's letters count, so non-English text is not reduced to nothing.

``NearDuplicates`` answers "is this too similar to anything kept so far?" without comparing a text
with every kept one: an inverted index of words gives, for each candidate, how many words the two
share, and since both measures are bounded by that overlap the exact (quadratic) ROUGE-L is only
computed for candidates that could reach the threshold.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

_WORD = re.compile(r"[^\W_]+")

Metric = Literal["rouge_l", "jaccard"]


def words(text: str) -> list[str]:
    """The lowercased word tokens of ``text`` (runs of letters and digits), in order."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(a: Sequence[str], b: Sequence[str]) -> float:
    """ROUGE-L F-measure (beta 1) of two token sequences: 2·LCS / (len(a) + len(b)); symmetric.

    Two empty sequences are identical (1.0); one empty one shares nothing (0.0).
    """
    if not a and not b:
        return 1.0
    return 2.0 * lcs_length(a, b) / (len(a) + len(b))


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """|A ∩ B| / |A ∪ B| of the two word sets (two empty sets are identical: 1.0)."""
    sa, sb = set(a), set(b)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


@dataclass(frozen=True)
class Match:
    """The most similar kept text: its score, its position in the index and its tag."""

    score: float
    index: int
    tag: str


class NearDuplicates:
    """Texts kept so far, and how similar a new text is to the closest of them.

    ``metric`` is "rouge_l" (LCS over word tokens, order-aware) or "jaccard" (word sets). Each kept
    text carries a ``tag`` (e.g. where it came from) that ``closest`` reports.
    """

    def __init__(self, metric: Metric = "rouge_l") -> None:
        if metric not in ("rouge_l", "jaccard"):
            raise ValueError(f"unknown metric {metric!r}")
        self.metric: Metric = metric
        self._tokens: list[list[str]] = []
        self._counts: list[Counter[str]] = []
        self._tags: list[str] = []
        self._postings: defaultdict[str, list[int]] = defaultdict(list)
        self._empty: list[int] = []

    def __len__(self) -> int:
        return len(self._tokens)

    def add(self, text: str, tag: str = "") -> None:
        self.add_tokens(words(text), tag)

    def add_tokens(self, tokens: Sequence[str], tag: str = "") -> None:
        index = len(self._tokens)
        counts = Counter(tokens) if self.metric == "rouge_l" else Counter(set(tokens))
        self._tokens.append(list(tokens))
        self._counts.append(counts)
        self._tags.append(tag)
        for token in counts:
            self._postings[token].append(index)
        if not tokens:
            self._empty.append(index)

    def closest(self, text: str, threshold: float = 0.0) -> Match | None:
        """The kept text most similar to ``text`` among those scoring ``threshold`` or more (None if none)."""
        return self.closest_tokens(words(text), threshold)

    def closest_tokens(self, tokens: Sequence[str], threshold: float = 0.0) -> Match | None:
        best: Match | None = None
        if not tokens:
            # Only another empty text is similar to an empty one (score 1.0 by both measures).
            return Match(1.0, self._empty[0], self._tags[self._empty[0]]) if self._empty else None
        query = Counter(tokens) if self.metric == "rouge_l" else Counter(set(tokens))
        size = sum(query.values())
        overlap: defaultdict[int, int] = defaultdict(int)
        for token, n in query.items():
            for i in self._postings.get(token, ()):
                overlap[i] += min(n, self._counts[i][token])
        for i, shared in overlap.items():
            other = sum(self._counts[i].values())
            # Both measures are at most what the shared words allow: LCS <= multiset overlap.
            bound = (
                2.0 * shared / (size + other)
                if self.metric == "rouge_l"
                else shared / (size + other - shared)
            )
            if bound < threshold or (best is not None and bound <= best.score):
                continue
            score = rouge_l(tokens, self._tokens[i]) if self.metric == "rouge_l" else bound
            if score >= threshold and (best is None or score > best.score):
                best = Match(score, i, self._tags[i])
        return best
