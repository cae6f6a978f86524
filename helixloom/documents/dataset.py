"""The fine-tuning dataset made from question/answer pairs, and the citations its model writes.

As Helix did, each question names the document and its group, and each answer starts with
``[DOC_ID:<id>] [DOC_GROUP:<gid>]``: the model learns to cite, and a citation maps back to the
file it came from. Rows are chat ``messages`` (JSONL) under ``HELIXLOOM_HOME/datasets/NAME/``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helixloom import atomic, jsonl, paths
from helixloom.documents.ingest import Document
from helixloom.documents.questions import QAPair
from helixloom.engine.citations import CitationSet
from helixloom.errors import HelixloomError

CITATION = re.compile(r"\[DOC_ID:([0-9a-f]{6,64})\]")
CITATION_OPENING = "[DOC_ID:"

SYSTEM_PROMPT = (
    "You are an intelligent chatbot that has been fine-tuned on document(s) {doc_ids} in document group "
    "{group_id}. The document group contains {count} document(s). The user will ask you questions about "
    "these documents: you must ONLY answer with context from the documents listed. Do NOT refer to "
    "background knowledge."
)


def system_prompt(documents: Sequence[Document], group_id: str) -> str:
    return SYSTEM_PROMPT.format(
        doc_ids=", ".join(d.doc_id for d in documents), group_id=group_id, count=len(documents)
    )


def rows(pairs: Sequence[QAPair], group_id: str) -> list[dict[str, Any]]:
    """Chat rows: the question tagged with its document and group, the answer with its citation."""
    out = []
    for p in pairs:
        question = p.question[:1].lower() + p.question[1:]
        out.append(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": f"In document {p.doc_id} (document group {group_id}), {question}",
                    },
                    {
                        "role": "assistant",
                        "content": f"[DOC_ID:{p.doc_id}] [DOC_GROUP:{group_id}]\n\n{p.answer}",
                    },
                ],
                "meta": {"prompt": p.prompt, "chunk": p.chunk},
            }
        )
    return out


PLAN = "generation.json"  # how generation was started, while it has not finished
CHECKPOINT = "qa.partial.jsonl"  # the finished (prompt, chunk) units of an unfinished generation
REPHRASED = "rephrase.partial.json"  # the finished rephrasing phase of an unfinished generation
SWAPPED = "lexical.partial.json"  # the finished synonym-swap phase of an unfinished generation
#: What an unfinished generation leaves besides CHECKPOINT; removed once the dataset is written.
PARTIALS = (REPHRASED, SWAPPED, PLAN)


def folder(name: str) -> Path:
    """Where dataset ``name`` lives (it may not exist yet); a name that is not one safe folder name is a
    ``HelixloomError``."""
    return paths.datasets_dir() / paths.check_name(name, "dataset name")


@dataclass(frozen=True)
class DatasetFiles:
    folder: Path
    train: Path
    meta: Path


def write(name: str, data: Sequence[dict[str, Any]], meta: dict[str, Any]) -> DatasetFiles:
    """Write ``train.jsonl`` and ``meta.json`` for dataset ``name`` (each atomically)."""
    where = folder(name)
    files = DatasetFiles(where, where / "train.jsonl", where / "meta.json")
    atomic.write_jsonl(files.train, data)
    atomic.write_json(files.meta, meta)
    return files


def read(name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A dataset's rows (as the user may have edited them after ``--review``) and its metadata: chat
    ``messages`` rows, and ``text`` rows (the documents' own text, general text) trained on whole."""
    where = folder(name)
    if not (where / "train.jsonl").is_file():
        raise HelixloomError(f"no dataset {name}", f"expected {where / 'train.jsonl'}")
    out = []
    for n, row in jsonl.read(where / "train.jsonl"):
        if not isinstance(row, dict) or not (
            isinstance(row.get("messages"), list) or isinstance(row.get("text"), str)
        ):
            raise HelixloomError(f"{where / 'train.jsonl'} line {n} has neither a messages list nor a text")
        out.append(row)
    return out, json.loads((where / "meta.json").read_text())


def citation_set(doc_ids: Iterable[str]) -> CitationSet | None:
    """The citations an adapter of these documents may write, for decoding (``engine.citations``):
    its answers then never cite an id that names no document. None without documents."""
    ids = tuple(sorted(set(doc_ids)))
    return CitationSet(ids, CITATION_OPENING) if ids else None


def citations(text: str, sources: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    """The documents an answer cites, mapped back to their source files (unknown ids kept, marked)."""
    out = []
    for doc_id in dict.fromkeys(CITATION.findall(text)):
        known = sources.get(doc_id)
        out.append({"doc_id": doc_id, "source": known["source"], "title": known["title"]} if known else
                   {"doc_id": doc_id, "source": "", "title": "(unknown document)"})  # fmt: skip
    return out


def write_json(path: Path, data: Any) -> None:
    """``data`` as JSON at ``path``, atomically (``atomic.write_json``; kept for the learn recipe)."""
    atomic.write_json(path, data)
