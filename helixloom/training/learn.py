"""``helixloom learn``: documents -> question/answer dataset -> LoRA that answers with citations.

A linear recipe in three stages, each leaving files a later run picks up: ingest and generate pairs
(``datasets/NAME/``), optionally stop for the user to review the file, fine-tune (checkpoints in
``runs/NAME/``, the adapter in ``adapters/NAME/``) and register the adapter with its system prompt
and its document sources. ``resume`` continues after a review or an interruption.

Generation is checkpointed too: while it runs, ``datasets/NAME/generation.json`` records how it was
started (sources, teacher, suite, settings) and every finished (prompt, chunk) unit is appended to
``datasets/NAME/qa.partial.jsonl``; ``resume_generation`` starts again from those, asking only the
units not finished. Both files go once ``train.jsonl`` is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from helixloom import paths
from helixloom.documents import dataset
from helixloom.documents.ingest import ingest
from helixloom.documents.questions import QAReport, Suite, generate_pairs
from helixloom.engine import Engine
from helixloom.errors import HelixloomError
from helixloom.store import Store
from helixloom.training.configs import LoraSFTConfig
from helixloom.training.sft import train_lora
from helixloom.training.trainer import TrainResult

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
    one_at_a_time: bool = True,
    sft: LoraSFTConfig | None = None,
    teacher_spec: str | None = None,
    review: bool = False,
    resume: bool = False,
    say: Say = lambda _: None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, QAReport]:
    """Ingest ``sources`` and write the question/answer dataset ``name``; returns its file and report.

    ``teacher_spec`` (default: the teacher's model name) and ``review`` are recorded in the generation
    plan, for ``resume_generation`` to rebuild the teacher and for the CLI to stop for a review. With
    ``resume`` the units already in the checkpoint are kept; without it a fresh generation starts.
    """
    paths.check_name(name, "dataset name")
    suite = suite or Suite.load()
    sft = sft or LoraSFTConfig()
    folder = dataset.folder(name)
    checkpoint = folder / dataset.CHECKPOINT
    if not resume:
        checkpoint.unlink(missing_ok=True)
    plan = {
        "sources": [str(Path(s).resolve()) for s in sources],
        "base": base,
        "teacher": teacher_spec or teacher.model_name,
        "suite": suite.as_dict(),
        "num_questions": num_questions,
        "chunk_tokens": chunk_tokens,
        "one_at_a_time": one_at_a_time,
        "sft": asdict(sft),
        "review": review,
    }
    found = ingest(sources)
    say(found.summary())
    dataset.write_json(folder / dataset.PLAN, plan)
    report = generate_pairs(
        teacher,
        found.documents,
        suite,
        num_questions=num_questions,
        chunk_tokens=chunk_tokens,
        overlap_tokens=min(128, chunk_tokens // 8),  # 128 at the default 1024; small chunks stay valid
        one_at_a_time=one_at_a_time,
        checkpoint=checkpoint,
        on_progress=on_progress,
    )
    say(report.summary())
    if not report.pairs:
        checkpoint.unlink(missing_ok=True)  # nothing in it is worth resuming
        (folder / dataset.PLAN).unlink(missing_ok=True)
        raise HelixloomError(
            "the teacher produced no usable question/answer pairs",
            "use a stronger --teacher (a bigger local model or an OpenAI-compatible server)",
        )
    meta = {
        "name": name,
        "stage": "generated",
        "base": base,
        "teacher": plan["teacher"],
        "group_id": found.group_id,
        "system_prompt": dataset.system_prompt(found.documents, found.group_id),
        "documents": {d.doc_id: {"source": d.source, "title": d.title} for d in found.documents},
        "skipped": [asdict(s) for s in found.skipped],
        "pairs_by_prompt": {n: s.pairs for n, s in report.stats.items()},
        "failed_by_prompt": {n: s.failed for n, s in report.stats.items()},
        "junk_by_prompt": {n: s.junk for n, s in report.stats.items()},
        "generation": {k: plan[k] for k in ("num_questions", "chunk_tokens", "one_at_a_time")},
        "sft": plan["sft"],
    }
    files = dataset.write(name, dataset.rows(report.pairs, found.group_id), meta)
    checkpoint.unlink(missing_ok=True)
    (folder / dataset.PLAN).unlink(missing_ok=True)
    return files.train, report


def generation_plan(name: str) -> dict[str, Any] | None:
    """How the unfinished generation of dataset ``name`` was started (None when there is none)."""
    import json

    path = dataset.folder(name) / dataset.PLAN
    if (dataset.folder(name) / "train.jsonl").is_file() or not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HelixloomError(f"cannot read {path}: {exc}", "start again under another --name") from exc
    return dict(plan)


def resume_generation(
    name: str,
    teacher: Engine,
    *,
    say: Say = lambda _: None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, QAReport]:
    """Finish the interrupted generation of dataset ``name`` with ``teacher`` (built from the plan's
    ``teacher`` spec), asking only the (prompt, chunk) units its checkpoint does not have."""
    plan = generation_plan(name)
    if plan is None:
        raise HelixloomError(f"no unfinished generation for dataset {name}")
    try:
        sft_fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in plan["sft"].items()
        }
        settings: dict[str, Any] = {
            "base": plan["base"],
            "suite": Suite.from_dict(plan["suite"], str(dataset.folder(name) / dataset.PLAN)),
            "num_questions": plan["num_questions"],
            "chunk_tokens": plan["chunk_tokens"],
            "one_at_a_time": plan["one_at_a_time"],
            "sft": LoraSFTConfig(**sft_fields),
            "teacher_spec": plan["teacher"],
            "review": plan["review"],
        }
        sources = plan["sources"]
    except (KeyError, TypeError, AttributeError) as exc:
        raise HelixloomError(f"the generation plan of {name} is malformed: {exc!r}") from exc
    return prepare(name, sources, teacher, resume=True, say=say, on_progress=on_progress, **settings)


def train(name: str, store: Store, *, resume: bool = False, say: Say = lambda _: None) -> TrainResult:
    """Fine-tune dataset ``name`` (as it is on disk, reviewed or not) and register adapter ``name``."""
    paths.check_name(name, "dataset name")
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
    """Where learning ``name`` stands: None (never started), "generating" (generation started and not
    finished: resume it), "generated" or "trained"."""
    try:
        return str(dataset.read(name)[1].get("stage"))
    except HelixloomError:
        return "generating" if (dataset.folder(name) / dataset.PLAN).is_file() else None
