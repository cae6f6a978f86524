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


def is_degenerate(text: str) -> bool:
    """True when ``text`` has nothing but labels, whitespace and punctuation."""
    return not _LABEL.sub("", text).strip(_FILLER)


def may_be_degenerate(text: str) -> bool:
    """True while streamed ``text`` may still turn out degenerate: it is, or it ends in what may be
    the start of a label ("REGENERATED" before " ANSWER:" arrives)."""
    rest = _LABEL.sub("", text).strip(_FILLER)
    return not rest or bool(_UNFINISHED_LABEL.fullmatch(rest))


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
