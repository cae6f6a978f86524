"""The training mix of document learning: question/answer rows, the documents' own text, general text.

- Question/answer rows: the plain question (most rows) or the question tagged with its document ("In
  document <id>, ..."); the answer ends with its citation ``[DOC_ID:<id>]``, after the answer so that a
  short reply limit cuts the citation, never the answer.
- Document rows: the text itself, section by section, tagged ``[DOC_ID:<id>] <title>``: the model reads
  the facts in their own words as well as in questions (continued pretraining, as sdg_hub does).
- Context rows (RAFT, Zhang et al. 2024, "RAFT: Adapting Language Model to Domain Specific RAG"): a
  share of the questions again, shown after the passages retrieval would show (the passage that holds
  the answer and a distractor, in the prompt ``eval qa --retrieve`` and ``chat --retrieve`` use), so
  the adapter learns to read retrieved text instead of ignoring it.
- Replay rows: general text the base model wrote itself (``documents.replay``) so the model keeps its
  language. Forgetting is measured on ``data/documents/replay.txt``, which no row is drawn from.

``replay.txt`` holds Lincoln's Gettysburg Address (1863) and the Preamble of the US Constitution (1787),
both public domain, and fables retold after Aesop for this package.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from helixloom.documents import retrieval
from helixloom.documents.grounded import Pair
from helixloom.documents.ingest import Document

# The system prompt an adapter of ``learn`` is trained and served with (stored with it). Short on
# purpose: every training row pays for it (the document ids it once listed cost 26 of its
# 51 tokens; the answers cite them anyway; the group id it named next cost 12 of 33 tokens, a tenth of
# an epoch's positions on learn_fresh, and the adapter is the group's own).
SYSTEM_PROMPT = "Answer from the learned documents and cite [DOC_ID:...]."


def _hash(*parts: object) -> int:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16)


def titled(answer: str, title: str | None) -> str:
    """``answer`` opened with the title of the document it comes from (``learn --title-first``)."""
    return f'From "{title}": {answer}' if title else answer


def qa_row(
    question: str, answer: str, doc_id: str, prompt: str, *, tagged: bool, title: str | None = None
) -> dict[str, Any]:
    """One chat row: the question (tagged with its document when ``tagged``), the cited answer (opened
    with its document's ``title`` when given)."""
    if tagged:
        question = f"In document {doc_id}, {question[:1].lower()}{question[1:]}"
    answer = titled(answer, title)
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": f"{answer} [DOC_ID:{doc_id}]"},
        ],
        "meta": {"prompt": prompt, "doc_id": doc_id},
    }


def pair_rows(
    pairs: Sequence[Pair], tag_share: float = 0.25, titles: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Rows for ``pairs``; a deterministic ``tag_share`` of them name their document in the question.
    With ``titles`` (document id to title) every answer opens with its document's title."""
    return [
        qa_row(
            p.question,
            p.answer,
            p.doc_id,
            p.perspective,
            tagged=_hash(p.question, p.doc_id) % 1000 < tag_share * 1000,
            title=(titles or {}).get(p.doc_id),
        )
        for p in pairs
    ]


def document_rows(doc: Document, max_words: int = 120) -> list[dict[str, Any]]:
    """The document's text as language-modelling rows of about ``max_words`` words, each tagged with
    the document's id and title (sections are kept whole where they fit)."""
    rows: list[str] = []
    piece = ""
    for block in re.split(r"\n\s*\n", doc.text.strip()):
        block = block.strip()
        if piece and len((piece + " " + block).split()) > max_words:
            rows.append(piece)
            piece = ""
        piece = f"{piece}\n\n{block}".strip()
    if piece:
        rows.append(piece)
    return [
        {"text": f"[DOC_ID:{doc.doc_id}] {doc.title}\n\n{text}", "meta": {"prompt": "document"}}
        for text in rows
    ]


def general_paragraphs() -> list[str]:
    """The general text forgetting is measured on (``replay.txt``); never trained on."""
    text = (resources.files("helixloom") / "data" / "documents" / "replay.txt").read_text(encoding="utf-8")
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def replay_rows(words_in_mix: int, share: float, paragraphs: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of ``paragraphs`` (general text) making up about ``share`` of a mix whose other rows hold
    ``words_in_mix`` words; each paragraph is used once before any is used again."""
    if share <= 0 or not paragraphs:
        return []
    want = share / (1 - share) * words_in_mix
    rows: list[dict[str, Any]] = []
    words = 0
    while words < want and len(rows) < 10 * len(paragraphs):
        p = paragraphs[len(rows) % len(paragraphs)]
        rows.append({"text": p, "meta": {"prompt": "replay"}})
        words += len(p.split())
    return rows


def context_rows(
    pairs: Sequence[Pair],
    found: Sequence[retrieval.Passage],
    share: float,
    k: int = 2,
    titles: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Question/answer rows for a deterministic ``share`` of ``pairs`` whose question comes after
    ``k`` passages of ``found``: the passage holding the answer (the one that best matches the answer
    among its document's passages) and the passages retrieval ranks next for the question
    (distractors), in an order drawn per question, so the right passage is not always first."""
    if share <= 0 or not found:
        return []
    index = retrieval.BM25(found)
    by_doc: dict[str, retrieval.BM25] = {}
    rows = []
    for p in pairs:
        if _hash("context", p.question, p.doc_id) % 1000 >= share * 1000:
            continue
        if p.doc_id not in by_doc:
            own = [x for x in found if x.doc_id == p.doc_id]
            if not own:
                continue
            by_doc[p.doc_id] = retrieval.BM25(own)
        right = by_doc[p.doc_id].search(p.answer, 1)[0]
        shown = [right, *[x for x in index.search(p.question, k + 1) if x != right][: k - 1]]
        if _hash("order", p.question) % 2:
            shown.reverse()
        row = qa_row(
            retrieval.with_context(p.question, shown),
            p.answer,
            p.doc_id,
            p.perspective,
            tagged=False,
            title=(titles or {}).get(p.doc_id),
        )
        row["meta"]["context"] = True
        rows.append(row)
    return rows


def row_words(row: dict[str, Any]) -> int:
    if "text" in row:
        return len(str(row["text"]).split())
    return sum(len(str(m.get("content", "")).split()) for m in row.get("messages", []))


def balance(pairs: Sequence[Pair]) -> list[Pair]:
    """``pairs`` with the pairs of rarely asked facts repeated (in turn) until every fact has at
    least the median number of pairs per fact.

    A sentence holding several spans gets several times the questions of a short one, and a model
    unsure which fact a question is about answers with the sentence it was trained on most: measured
    on learn_heldout, the wrong answers were the sentences with 10 to 20 pairs, given to questions
    about sentences with 2 to 4."""
    per_fact: dict[tuple[str, int], list[Pair]] = {}
    for p in pairs:
        per_fact.setdefault((p.doc_id, p.fact), []).append(p)
    if not per_fact:
        return list(pairs)
    counts = sorted(len(v) for v in per_fact.values())
    floor = counts[len(counts) // 2]
    out = list(pairs)
    for group in per_fact.values():
        out.extend(group[i % len(group)] for i in range(floor - len(group)))
    return out


def split_heldout(pairs: Sequence[Pair], share: float = 0.15) -> tuple[list[Pair], list[Pair]]:
    """(train, held out): about ``share`` of the span and entity questions held out, never the last
    remaining question about a fact, so every fact is still trained on and the held-out questions
    measure recall in other words, not facts the model never saw."""
    per_fact: dict[tuple[str, int], int] = {}
    for p in pairs:
        per_fact[(p.doc_id, p.fact)] = per_fact.get((p.doc_id, p.fact), 0) + 1
    train: list[Pair] = []
    held: list[Pair] = []
    for p in sorted(pairs, key=lambda p: _hash("heldout", p.question, p.doc_id)):
        key = (p.doc_id, p.fact)
        if (p.perspective in ("span", "entity", "rephrase") and per_fact[key] > 2
                and len(held) < share * len(pairs)):  # fmt: skip
            held.append(p)
            per_fact[key] -= 1
        else:
            train.append(p)
    order = {id(p): i for i, p in enumerate(pairs)}
    return sorted(train, key=lambda p: order[id(p)]), sorted(held, key=lambda p: order[id(p)])
