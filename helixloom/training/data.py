"""Training data from what users have: JSONL rows, documents and archives, the store's thumbs-up.

``helixloom train sft`` reads any mix of:

- JSONL files whose rows are chat ``messages`` (ending with the assistant's answer), raw
  ``prompt``/``completion`` pairs (``helixloom export sft`` writes these from the loom) or ``text``;
  session exports (``helixloom sessions export``) are messages rows too;
- documents, folders and .zip archives (.txt .md .html .pdf .json conversations), cut into
  token-bounded ``text`` chunks for plain language modelling;
- with ``from_store``, the thumbs-up loom branches and thumbs-up chat answers in the store.

When the user's data is small, ``mix_general`` adds general text from a corpus the user points to,
as MiniHF mixed its user data into a larger instruction mix, so a fine-tune on a few dozen rows
teaches style without forgetting how to write.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helixloom.errors import HelixloomError
from helixloom.store import Store

CountTokens = Callable[[str], int]


@dataclass
class LoadedData:
    rows: list[dict[str, Any]] = field(default_factory=list)
    sources: dict[str, int] = field(default_factory=dict)  # where rows came from -> how many
    skipped: list[str] = field(default_factory=list)  # inputs not used, with the reason

    def add(self, source: str, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        self.sources[source] = self.sources.get(source, 0) + len(rows)

    def summary(self) -> str:
        parts = [f"{n} from {s}" for s, n in self.sources.items()]
        line = f"{len(self.rows)} training rows ({', '.join(parts) or 'none'})"
        if self.skipped:
            line += f"; skipped: {'; '.join(self.skipped[:3])}" + (" ..." if len(self.skipped) > 3 else "")
        return line


def sft_row(row: Any, where: str) -> dict[str, Any]:
    """One JSONL row as a training row (messages / prompt+completion / text), checked."""
    if not isinstance(row, dict):
        raise HelixloomError(f"{where} is not a JSON object")
    if isinstance(row.get("messages"), list):
        messages = []
        for m in row["messages"]:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise HelixloomError(f"{where}: every message needs a role of system, user or assistant")
            if not isinstance(m.get("content"), str):
                raise HelixloomError(f"{where}: a message has no text content")
            messages.append({"role": m["role"], "content": m["content"]})
        # A session export may end with a critique or a user turn: train up to its last answer.
        while messages and messages[-1]["role"] != "assistant":
            messages.pop()
        if not any(m["role"] == "user" for m in messages):
            raise HelixloomError(f"{where}: messages need a user message followed by the assistant's answer")
        return {"messages": messages}
    if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        if not row["completion"].strip():
            raise HelixloomError(f"{where}: completion is empty")
        return {"prompt": row["prompt"], "completion": row["completion"]}
    if isinstance(row.get("text"), str) and row["text"].strip():
        return {"text": row["text"]}
    raise HelixloomError(f"{where}: expected 'messages', 'prompt' + 'completion', or 'text'")


def load_sft_data(
    paths: Sequence[str | Path],
    count_tokens: CountTokens,
    *,
    chunk_tokens: int = 512,
    store: Store | None = None,
) -> LoadedData:
    """Rows from ``paths`` (JSONL files, documents, folders, zips) and, with ``store``, its thumbs-up."""
    from helixloom import jsonl
    from helixloom.documents.chunking import chunk
    from helixloom.documents.ingest import ingest

    data = LoadedData()
    documents: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise HelixloomError(f"{p} does not exist", param="data")
        if p.is_file() and p.suffix.lower() == ".jsonl":
            data.add(str(p), [sft_row(row, f"{p} line {n}") for n, row in jsonl.read(p)])
        else:
            documents.append(p)
    if documents:
        found = ingest(documents)
        data.skipped.extend(f"{s.source}: {s.reason}" for s in found.skipped)
        for doc in found.documents:
            pieces = chunk(doc.text, count_tokens, max_tokens=chunk_tokens, overlap_tokens=0)
            data.add(doc.source, [{"text": t} for t in pieces if t.strip()])
    if store is not None:
        data.add("the store's thumbs-up", liked_rows(store))
    if not data.rows:
        raise HelixloomError(
            "no training rows found",
            "pass --data with JSONL rows, documents or a .zip, or rate some answers thumbs-up first",
        )
    return data


def liked_rows(store: Store) -> list[dict[str, Any]]:
    """Thumbs-up loom branches (as prompt/completion) and thumbs-up chat answers (as messages)."""
    from helixloom import loom
    from helixloom.evals.replay import served_conversation

    rows: list[dict[str, Any]] = [
        {"prompt": r["prompt"], "completion": r["completion"]} for r in loom.export_sft(store)
    ]
    offset = 0
    while True:
        sessions = store.list_sessions(rating="up", limit=500, offset=offset)
        if not sessions:
            break
        offset += len(sessions)
        for s in sessions:
            # HelixNet's drafts and critiques are not turns of the conversation the model is served.
            messages = [
                m
                for m in served_conversation(store.get_messages(s.id))
                if m["role"] in ("system", "user", "assistant")
            ]
            while messages and messages[-1]["role"] != "assistant":
                messages.pop()
            if any(m["role"] == "user" for m in messages):
                rows.append({"messages": messages})
    return rows


def mix_general(
    rows: list[dict[str, Any]],
    corpus: Sequence[str | Path],
    ratio: float,
    count_tokens: CountTokens,
    *,
    chunk_tokens: int = 512,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """``rows`` plus general-text chunks from ``corpus`` making up ``ratio`` of the result (shuffled).

    Returns the mixed rows and how many general rows were added (fewer when the corpus is small).
    """
    if not 0 < ratio < 1:
        raise HelixloomError("the mix ratio must be between 0 and 1 (exclusive)", param="mix_ratio")
    general = load_sft_data(corpus, count_tokens, chunk_tokens=chunk_tokens).rows
    want = round(len(rows) * ratio / (1 - ratio))
    rng = random.Random(seed)
    picked = rng.sample(general, min(want, len(general)))
    mixed = rows + picked
    rng.shuffle(mixed)
    return mixed, len(picked)


def token_counter(base_spec: str) -> CountTokens:
    """Token counting with the base model's tokenizer (for chunking documents into training rows)."""
    from transformers import AutoTokenizer

    from helixloom import models

    tokenizer = AutoTokenizer.from_pretrained(str(models.materialize(models.resolve(base_spec))))
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)
