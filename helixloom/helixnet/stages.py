"""What keeps a HelixNet stage from coming back empty: telling a degenerate output from an answer,
the sampling of each retry, and the regenerator's label held back while it streams."""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Sequence

from helixloom.engine import SamplingParams

RESAMPLES = 2  # retries of a stage whose output is empty or only a label, before falling back
RETRY_TEMPERATURE = 0.75  # the seed's; a greedy stage retried greedily would repeat itself

# A transcript label a base model writes instead of an answer: "CRITIQUE:", "REGENERATED ANSWER:".
_LABEL = re.compile(r"\b[A-Z][A-Z ]*[A-Z]:")
_UNFINISHED_LABEL = re.compile(r"[A-Z][A-Z ]*")
_FILLER = string.whitespace + string.punctuation


# A stage whose first ECHO_WORDS words (all but one) come from the opening of its instructions (the
# system text) is repeating them, not answering: the base model's regenerator does ("You are a
# HelixNet. Elaborate on the topic using a Tree of Thoughts..."), not always word for word.
ECHO_WORDS = 8


def _misses(text: str, instructions: str) -> tuple[int, int]:
    """Of ``text``'s first ECHO_WORDS words: how many there are, and how many are not among the
    opening words of ``instructions``."""
    pool = set(re.findall(r"[a-z0-9']+", instructions.lower())[: 3 * ECHO_WORDS])
    said = re.findall(r"[a-z0-9']+", text.lower())[:ECHO_WORDS]
    return len(said), sum(1 for w in said if w not in pool)


def degenerate_kind(text: str, instructions: str = "") -> str | None:
    """Why ``text`` is no answer: "empty" (whitespace or punctuation), "only a label" (nothing but
    transcript labels), "its instructions repeated" (opens by repeating ``instructions``); None when
    it is an answer."""
    if not text.strip(_FILLER):
        return "empty"
    rest = _LABEL.sub("", text).strip(_FILLER)
    if not rest:
        return "only a label"
    said, missed = _misses(rest, instructions) if instructions else (0, 0)
    return "its instructions repeated" if said == ECHO_WORDS and missed <= 1 else None


def is_degenerate(text: str, instructions: str = "") -> bool:
    """True when ``text`` has nothing but labels, whitespace and punctuation, or opens by repeating
    ``instructions``."""
    return degenerate_kind(text, instructions) is not None


def may_be_degenerate(text: str, instructions: str = "") -> bool:
    """True while streamed ``text`` may still turn out degenerate: it is, it ends in what may be the
    start of a label ("REGENERATED" before " ANSWER:" arrives), or so far it repeats the opening of
    ``instructions``."""
    rest = _LABEL.sub("", text).strip(_FILLER)
    if not rest or _UNFINISHED_LABEL.fullmatch(rest):
        return True
    # Held while every word so far but one is the instructions' (an answer soon says its own).
    return bool(instructions) and _misses(rest, instructions)[1] <= 1


def retry_sampling(params: SamplingParams, attempt: int) -> SamplingParams:
    """The sampling of a stage's ``attempt`` (0: the first try, as given).

    A retry takes a new seed derived from the request's, so a seeded run repeats itself retries
    included, and samples (at the seed's temperature) where the request was greedy."""
    if attempt == 0:
        return params
    seed = params.seed
    if seed is not None:
        digest = hashlib.sha256(f"{seed}/retry/{attempt}".encode()).digest()
        seed = int.from_bytes(digest[:4], "big") >> 1  # 31 bits: every backend's seed takes it
    temperature = params.temperature or RETRY_TEMPERATURE
    return params.model_copy(update={"seed": seed, "temperature": temperature})


class PrefixHold:
    """Holds streamed text back until it is clear whether it starts with a label to drop."""

    def __init__(self, prefixes: Sequence[str]) -> None:
        self._prefixes = tuple(prefixes)
        self._buffer = ""
        self._decided = not self._prefixes

    def feed(self, text: str) -> str:
        """The part of ``text`` now safe to show."""
        if self._decided:
            return text
        self._buffer += text
        head = self._buffer.lstrip()
        for prefix in self._prefixes:
            if head.startswith(prefix):
                self._decided = True
                return self._release(head[len(prefix) :].lstrip())
            if prefix.startswith(head):
                return ""  # could still become the prefix
        self._decided = True
        return self._release(self._buffer)

    def finish(self) -> str:
        """Whatever is still held, at the end of the stream."""
        self._decided = True
        return self._release(self._buffer)

    def _release(self, text: str) -> str:
        self._buffer = ""
        return text
