"""``helixloom learn``: documents -> question/answer dataset -> LoRA that answers with citations.

A linear recipe in three stages, each leaving files a later run picks up: ingest and generate pairs
(``datasets/NAME/``), optionally stop for the user to review the file, fine-tune (checkpoints in
``runs/NAME/``, the adapter in ``adapters/NAME/``) and register the adapter with its system prompt
and its document sources. ``resume`` continues after a review or an interruption.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from helixloom import paths
from helixloom.documents import dataset
from helixloom.documents.ingest import ingest
from helixloom.documents.qa import QAReport, Suite, generate_pairs
from helixloom.engine import Engine
from helixloom.errors import HelixloomError
from helixloom.store import Store
from helixloom.training.sft import LoraSFTConfig, TrainResult, train_lora

Say = Callable[[str], None]


@dataclass(frozen=True)
class LearnResult:
    name: str
    stage: str  # "reviewing" (stopped for --review) or "trained"
    dataset: Path
    adapter: Path | None
    qa: QAReport | None
    train: TrainResult | None


def prepare(
    name: str,
    sources: Sequence[str | Path],
    teacher: Engine,
    *,
    base: str,
    suite: Suite | None = None,
    num_questions: int = 10,
    chunk_tokens: int = 1024,
    sft: LoraSFTConfig | None = None,
    say: Say = lambda _: None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, QAReport]:
    """Ingest ``sources`` and write the question/answer dataset ``name``; returns its file and report."""
    found = ingest(sources)
    say(found.summary())
    report = generate_pairs(
        teacher,
        found.documents,
        suite or Suite.load(),
        num_questions=num_questions,
        chunk_tokens=chunk_tokens,
        on_progress=on_progress,
    )
    say(report.summary())
    if not report.pairs:
        raise HelixloomError(
            "the teacher produced no usable question/answer pairs",
            "use a stronger --teacher (a bigger local model or an OpenAI-compatible server)",
        )
    meta = {
        "name": name,
        "stage": "generated",
        "base": base,
        "teacher": teacher.model_name,
        "group_id": found.group_id,
        "system_prompt": dataset.system_prompt(found.documents, found.group_id),
        "documents": {d.doc_id: {"source": d.source, "title": d.title} for d in found.documents},
        "skipped": [asdict(s) for s in found.skipped],
        "pairs_by_prompt": {n: s.pairs for n, s in report.stats.items()},
        "failed_by_prompt": {n: s.failed for n, s in report.stats.items()},
        "sft": asdict(sft or LoraSFTConfig()),
    }
    files = dataset.write(name, dataset.rows(report.pairs, found.group_id), meta)
    return files.train, report


def train(name: str, store: Store, *, resume: bool = False, say: Say = lambda _: None) -> TrainResult:
    """Fine-tune dataset ``name`` (as it is on disk, reviewed or not) and register adapter ``name``."""
    rows, meta = dataset.read(name)
    sft_fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["sft"].items()}
    config = LoraSFTConfig(**sft_fields)
    adapter_dir = paths.adapters_dir() / name
    say(f"fine-tuning {meta['base']} on {len(rows)} examples ({'resuming' if resume else 'from the start'})")
    result = train_lora(
        meta["base"],
        rows,
        adapter_dir,
        paths.runs_dir() / name,
        config,
        system_prompt=meta["system_prompt"],
        resume=resume,
    )
    store.add_adapter(
        name,
        str(adapter_dir),
        base_model=meta["base"],
        meta={
            "system_prompt": meta["system_prompt"],
            "documents": meta["documents"],
            "group_id": meta["group_id"],
            "rank": config.rank,
            "dataset": name,
            "kind": "documents",
        },
        replace=True,
    )
    meta["stage"] = "trained"
    dataset.write(name, rows, meta)
    return result


def stage(name: str) -> str | None:
    """Where learning ``name`` stands: None (never started), "generated" or "trained"."""
    try:
        return str(dataset.read(name)[1].get("stage"))
    except HelixloomError:
        return None


def adapter_meta(store: Store, name: str | None) -> dict[str, Any]:
    """The system prompt and document sources registered with an adapter (empty for others)."""
    if not name:
        return {}
    record = store.get_adapter(name)
    return dict(record.meta or {}) if record is not None else {}
