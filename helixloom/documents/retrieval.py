"""Retrieval over learned documents: BM25 over their passages, and the prompt that shows them.

The measured alternative to (and companion of) fine-tuning: ``eval qa`` compares base, adapter,
base + retrieved passages and adapter + retrieved passages, and ``chat --retrieve`` uses it.

BM25 (Okapi, k1 1.5, b 0.75) is written here: it is twenty lines, and the field's package for it
(``rank_bm25``) is not a dependency of helixloom; an extra dependency for twenty lines is not worth it.
Passages are a document's paragraphs, each tagged with the document's id and title.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from helixloom import textsim
from helixloom.documents.grounded import STOPWORDS
from helixloom.documents.ingest import Document
from helixloom.errors import HelixloomError


@dataclass(frozen=True)
class Passage:
    doc_id: str
    title: str
    text: str


def passages(documents: Sequence[Document], max_words: int = 80) -> list[Passage]:
    """The documents' paragraphs (headings joined to the paragraph after them), about ``max_words`` long."""
    out = []
    for doc in documents:
        piece = ""
        for block in re.split(r"\n\s*\n", doc.text.strip()):
            block = block.strip()
            if (
                piece
                and not piece.lstrip().startswith("#")
                and len((piece + " " + block).split()) > max_words
            ):
                out.append(Passage(doc.doc_id, doc.title, piece))
                piece = ""
            piece = f"{piece}\n{block}".strip()
            if not block.startswith("#") and len(piece.split()) >= max_words // 2:
                out.append(Passage(doc.doc_id, doc.title, piece))
                piece = ""
        if piece:
            out.append(Passage(doc.doc_id, doc.title, piece))
    return out


def _terms(text: str) -> list[str]:
    return [w[:6] for w in textsim.words(text) if w not in STOPWORDS]


class BM25:
    """Okapi BM25 over ``passages``."""

    def __init__(self, items: Sequence[Passage], k1: float = 1.5, b: float = 0.75) -> None:
        if not items:
            raise HelixloomError("nothing to retrieve from: no passages")
        self.items = list(items)
        self.k1, self.b = k1, b
        self.docs = [Counter(_terms(f"{p.title} {p.text}")) for p in self.items]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg = sum(self.lengths) / len(self.lengths) or 1.0
        df = Counter(t for d in self.docs for t in d)
        n = len(self.docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def search(self, query: str, k: int = 2) -> list[Passage]:
        """The ``k`` best passages for ``query``, best first (ties keep document order)."""
        q = _terms(query)
        scores = []
        for i, (d, length) in enumerate(zip(self.docs, self.lengths, strict=True)):
            s = 0.0
            for t in q:
                f = d.get(t, 0)
                if f:
                    s += (
                        self.idf[t]
                        * f
                        * (self.k1 + 1)
                        / (f + self.k1 * (1 - self.b + self.b * length / self.avg))
                    )
            scores.append((-s, i))
        return [self.items[i] for _, i in sorted(scores)[:k]]


def with_context(question: str, found: Sequence[Passage]) -> str:
    """The user message that shows the retrieved passages before the question."""
    shown = "\n\n".join(f"[DOC_ID:{p.doc_id}] {p.text}" for p in found)
    return f"Passages:\n{shown}\n\nAnswer from the passages. {question}"


PASSAGES = "passages.jsonl"  # in a learned dataset's folder: what retrieval searches


def save(folder: Path, items: Sequence[Passage]) -> None:
    from helixloom import atomic

    atomic.write_jsonl(
        folder / PASSAGES, [{"doc_id": p.doc_id, "title": p.title, "text": p.text} for p in items]
    )


def load(folder: Path) -> BM25:
    """The BM25 index over the passages saved with a learned dataset."""
    from helixloom import jsonl

    path = folder / PASSAGES
    if not path.is_file():
        raise HelixloomError("this adapter has no passages to retrieve from", "learn its documents again")
    return BM25([Passage(str(r["doc_id"]), str(r["title"]), str(r["text"])) for _, r in jsonl.read(path)])
