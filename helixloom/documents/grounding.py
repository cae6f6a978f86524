"""Is a teacher's question/answer pair grounded in its chunk? Checked against the chunk's text.

A small teacher writes questions about things the document never says, copies its instructions back,
or answers with what it believes instead of what the chunk says. A pair is kept only when

- its question shares a content word with the chunk (else ``off_document``),
- it does not echo the instructions it was given (``instruction_echo``): a question about "the
  document" or "the question", or an answer made more of the prompt's words than of the chunk's,
- its answer is supported by the chunk (``unsupported`` otherwise): at least ``support`` of the answer's
  content words occur in the chunk (compared on their first five letters, so "proposed" matches
  "proposal") and every number in the answer occurs in the chunk.

Word overlap rather than an entailment model: none is installed or downloadable here, and overlap is
what a span-based answer has by construction; a paraphrase that keeps the chunk's content words passes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from helixloom import textsim
from helixloom.documents.grounded import STOPWORDS, _wordset

REASONS = ("off_document", "instruction_echo", "unsupported")

_META_WORDS = _wordset(
    "question questions answer answers reply json document documents text context passage chunk "
    "student professor quiz"
)


def stems(text: str) -> set[str]:
    """The content words of ``text`` (three letters or more, not stopwords), cut to five letters."""
    return {w[:5] for w in textsim.words(text) if len(w) >= 3 and w not in STOPWORDS and not w.isdigit()}


def numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+(?:[.,]\d+)?", text))


def check(
    question: str, answer: str, chunk: str, instructions: Iterable[str] = (), support: float = 0.6
) -> str | None:
    """Why the pair (``question``, ``answer``) is not grounded in ``chunk`` (one of ``REASONS``), or
    None when it is. ``instructions`` are the texts the teacher was prompted with besides the chunk."""
    source = stems(chunk)
    q_words, a_words = stems(question), stems(answer)
    q_plain = set(textsim.words(question))
    if q_plain & {"document", "documents", "text", "passage", "chunk", "json", "reply"}:
        return "instruction_echo"
    prompt = set().union(*(stems(t) for t in instructions)) - source
    if a_words and len(a_words & prompt) > len(a_words & source):
        return "instruction_echo"
    if not (q_words - {w[:5] for w in _META_WORDS}) & source:
        return "off_document"
    if not a_words or len(a_words & source) / len(a_words) < support:
        return "unsupported"
    if not numbers(answer) <= numbers(chunk):
        return "unsupported"
    return None
