"""Every perspective of code-built question/answer pairs, by name: ``grounded`` (span, entity, title,
statement), ``anchored`` (anchored, forms, reverse) and ``numbers`` (quantities and dates in natural
phrasings, answered number first; before ``forms`` so that its answers win a question both ask) and
``who`` (the doer, agent or name of a sentence asked for, answered name first).
One entry point, ``build_pairs``, for the recipe."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from helixloom.documents import anchored, grounded, numbers, who
from helixloom.documents.grounded import Fact, Pair
from helixloom.documents.ingest import Document

Maker = Callable[[Document, Sequence[Fact]], Iterator[Pair]]

MAKERS: dict[str, Maker] = {
    "span": grounded.span_pairs,
    "entity": grounded.entity_pairs,
    "title": grounded.title_pairs,
    "statement": grounded.statement_pairs,
    "anchored": anchored.anchored_pairs,
    "numbers": numbers.number_pairs,
    "who": who.who_pairs,
    "forms": anchored.form_pairs,
    "reverse": anchored.reverse_pairs,
}
PERSPECTIVES = tuple(MAKERS)


def build_pairs(doc: Document, perspectives: Sequence[str] = PERSPECTIVES) -> dict[str, list[Pair]]:
    """Every perspective's pairs for ``doc``, by perspective (a question asked twice, in any
    perspective, is kept once: the first perspective to ask it keeps it)."""
    doc_facts = grounded.facts(doc)
    out: dict[str, list[Pair]] = {}
    seen: set[str] = set()
    for name in perspectives:
        kept = []
        for pair in MAKERS[name](doc, doc_facts):
            norm = " ".join(pair.question.lower().split())
            if norm not in seen:
                seen.add(norm)
                kept.append(pair)
        out[name] = kept
    return out
