"""``helixloom learn``: documents -> grounded question/answer mix -> LoRA that answers with citations.

The recipe (measured in ``benchmarks/learn.py``):

1. Ingest the documents.
2. Pairs built by code from every sentence (``documents.perspectives``: span, entity, title, statement,
   every fact again with the document's subject named, in natural question forms and reversed, and
   every number and date in several natural phrasings, answered number first, and the doer, agent
   or name of a sentence asked for ("Who is the chair of the board?"), answered name first;
   no teacher needed, every answer the document's own text); the teacher rephrases the rough ones,
   and, when asked (``synonyms`` per question; off by default, measured), the natural questions are
   asked again with a word swapped for a synonym the teacher finds about as likely (``documents.lexical``).
3. The teacher's prompt suite on every chunk (``--questions`` per prompt; 0 skips it, the default for
   the embedded model: ``training.learn_teacher``); its pairs are kept only when grounded in their
   chunk (``documents.grounding``), the rest counted by reason.
4. A held-out share of the generated questions is set aside; the mix (``documents.mix``) is the rest
   as chat rows, a share of them again after retrieved passages (so that the adapter reads retrieved
   text), the documents' own text tagged with their ids, and a little general text the base model
   wrote itself (replay, ``documents.replay``).
5. LoRA fine-tune with early stopping on held-out accuracy (``training.learn_probe``); a report
   (held-out accuracy and citations before/after, forgetting, pairs kept/dropped, time per phase) is
   written beside the adapter (``learn_report.json``) and into its store metadata.

A linear recipe in three stages, each leaving files a later run picks up: ingest and generate pairs
(``datasets/NAME/``), optionally stop for the user to review the file, fine-tune (checkpoints in
``runs/NAME/``, the adapter in ``adapters/NAME/``) and register the adapter with its system prompt
and its document sources. ``resume`` continues after a review or an interruption.

Generation is checkpointed too: while it runs, ``datasets/NAME/generation.json`` records how it was
started (sources, teacher, suite, settings) and every finished (prompt, chunk) unit is appended to
``datasets/NAME/qa.partial.jsonl``; ``resume_generation`` starts again from those, asking only the
units not finished; a finished rephrasing phase is kept in ``datasets/NAME/rephrase.partial.json``
(and the synonym swaps in ``lexical.partial.json``) and not asked again. These files go once
``train.jsonl`` is written.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from helixloom import atomic, jsonl, paths
from helixloom.documents import dataset, grounded, lexical, mix, retrieval
from helixloom.documents import rephrase as rephrasing
from helixloom.documents import replay as own_replay
from helixloom.documents.ingest import ingest
from helixloom.documents.perspectives import PERSPECTIVES, build_pairs
from helixloom.documents.questions import QAReport, Suite, generate_pairs
from helixloom.engine import Engine
from helixloom.errors import HelixloomError
from helixloom.store import Store
from helixloom.training.configs import LoraSFTConfig
from helixloom.training.learn_config import LearnConfig
from helixloom.training.learn_report import format_report
from helixloom.training.trainer import TrainResult

REPORT = "learn_report.json"  # beside the adapter
SUITE_MAX_TOKENS = 160  # per pair the teacher writes
HELDOUT = "heldout.jsonl"  # in the dataset folder: the generated questions kept out of training
GENERAL = "general.json"  # in the dataset folder: the base model's own text (replay, the KL anchor)
# Rephrasings the teacher writes per rough question (the first greedy, the rest sampled), each
# replacing the rough question it rephrases (``keep_rough``). Measured (benchmarks/learn.py, Dec 2026,
# the default model, key facts on learn_fresh seeds 0/1 and learn_fresh2 seeds 0/1):
# - 3, rough questions kept (the default until Dec 2026): 63.3/56.7/60.0/63.3, mean 60.8% (first
#   sentence 52.0%); 1 before the rephrase prompt was fixed: 51.5%;
# - 5, rough questions kept: 60.0/60.0/66.7/73.3 (65.0%; 62.1%) but 15-24% more steps, 905 s quiet
#   against 741 s (2 cores): past 15 minutes;
# - 5, each rough question replaced by its rephrasings, and the group id out of the system prompt
#   (``mix.SYSTEM_PROMPT``): 53.3/70.0/70.0/70.0 (65.8%; 60.8%), forgetting x1.22-x1.31 against
#   x1.29-x1.34, in 771 s quiet against 796 s for the 3-rephrasing recipe on the same machine: a
#   rough question repeats its sentence's words, and a row is about a tenth shorter without the id;
# - 7, replaced the same way: learn_fresh seeds 0/1 60.0/56.7 against 5's 53.3/70.0 (mean 58.3%
#   against 61.7%; learn_fresh2 seed 0 76.7% against 70.0%) for 21-23% more steps: not a gain.
REPHRASINGS = 5
PROBE_TOKENS = 48  # the held-out probe's answer limit: a sentence and its citation
TITLE_TOKENS = 16  # more for an answer opened with its document's title (--title-first)
MAX_REPHRASINGS = 8  # each adds a teacher call per rough question and rows to train
# Off by default, measured (benchmarks/learn.py on learn_fresh, Dec 2026, --synonyms 2 against the same
# recipe without): adapter 46.7% of key facts against 53.3%, citations 73% against 90%, adapter +
# retrieval 63.3% against 50.0%, 34% more training steps (275 against 205)
SYNONYMS = 0

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
    num_questions: int = 1,
    chunk_tokens: int = 1024,
    one_at_a_time: bool = True,
    sft: LoraSFTConfig | None = None,
    perspectives: Sequence[str] = PERSPECTIVES,
    rephrase: bool = True,
    rephrasings: int = REPHRASINGS,
    synonyms: int = SYNONYMS,
    keep_rough: bool = False,
    title_first: bool = False,
    teacher_spec: str | None = None,
    writer: Engine | None = None,
    review: bool = False,
    resume: bool = False,
    say: Say = lambda _: None,
    on_progress: Callable[[int, int], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> tuple[Path, QAReport]:
    """Ingest ``sources`` and write the question/answer dataset ``name``; returns its file and report.

    The teacher's phases (rephrasing, the prompt suite, synonym swaps) each report their progress to
    ``on_progress`` (done, total), after ``on_phase`` has heard the phase's name.

    ``writer`` is an engine of the base model (the student): it writes the replay text. None: the
    teacher, which is the base model unless the user named another teacher.

    A rough question the teacher rephrased is replaced by its rephrasings unless ``keep_rough``; one
    with no rephrasing kept stays. With ``title_first`` every answer opens with its document's title
    (``From "<title>": ...``).

    ``teacher_spec`` (default: the teacher's model name) and ``review`` are recorded in the generation
    plan, for ``resume_generation`` to rebuild the teacher and for the CLI to stop for a review. With
    ``resume`` the units already in the checkpoint are kept; without it a fresh generation starts.
    """
    paths.check_name(name, "dataset name")
    if synonyms < 0:
        raise HelixloomError("synonyms is a count of swaps per question: 0 or more", param="synonyms")
    if not 1 <= rephrasings <= MAX_REPHRASINGS:
        raise HelixloomError(
            f"rephrasings is a count per rough question: 1 to {MAX_REPHRASINGS}", param="rephrasings"
        )
    suite = suite or Suite.load()
    sft = sft or LearnConfig()
    folder = dataset.folder(name)
    checkpoint = folder / dataset.CHECKPOINT
    if not resume:
        checkpoint.unlink(missing_ok=True)
        for partial in (dataset.REPHRASED, dataset.SWAPPED):
            (folder / partial).unlink(missing_ok=True)
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
        "perspectives": list(perspectives),
        "rephrase": rephrase,
        "rephrasings": rephrasings,
        "synonyms": synonyms,
        "keep_rough": keep_rough,
        "title_first": title_first,
    }
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    found = ingest(sources)
    say(found.summary())
    dataset.write_json(folder / dataset.PLAN, plan)
    built: list[grounded.Pair] = []
    for doc in found.documents:
        for pairs in build_pairs(doc, perspectives).values():
            built.extend(pairs)
    seconds["grounded_pairs"] = time.perf_counter() - start
    start = time.perf_counter()
    phase = on_phase or (lambda _: None)
    rephrased = (
        _rephrased(folder / dataset.REPHRASED, teacher, built, say, rephrasings, phase, on_progress)
        if rephrase
        else None
    )
    rephrased = rephrased or rephrasing.RephraseReport([])
    replaced = 0
    if not keep_rough:
        before = len(built)
        built = rephrasing.without_rephrased(built, rephrased.pairs)
        replaced = before - len(built)
    built.extend(rephrased.pairs)
    seconds["teacher_rephrase"] = time.perf_counter() - start
    start = time.perf_counter()
    if num_questions > 0:
        phase("question/answer pairs")
        report = generate_pairs(
            teacher,
            found.documents,
            suite,
            num_questions=num_questions,
            chunk_tokens=chunk_tokens,
            overlap_tokens=min(128, chunk_tokens // 8),  # 128 at the default 1024; small chunks stay valid
            one_at_a_time=one_at_a_time,
            # a grounded pair is short; a weak teacher rambles to the limit, and a batch lasts as long
            # as its longest reply (a reply cut off is invalid JSON, counted as failed)
            max_tokens=SUITE_MAX_TOKENS if one_at_a_time else SUITE_MAX_TOKENS * num_questions,
            checkpoint=checkpoint,
            on_progress=on_progress,
        )
        say(report.summary())
    else:
        report = QAReport([])
    seconds["teacher_pairs"] = time.perf_counter() - start
    taught = [grounded.Pair(p.question, p.answer, "", p.doc_id, p.prompt, -2) for p in report.pairs]
    if not built and not taught:
        for leftover in (checkpoint, *(folder / p for p in dataset.PARTIALS)):
            leftover.unlink(missing_ok=True)  # nothing in them is worth resuming
        raise HelixloomError(
            "no usable question/answer pairs: no sentence to build them from, none grounded from the teacher",
            "use a stronger --teacher (a bigger local model or an OpenAI-compatible server)",
        )
    config = sft if isinstance(sft, LearnConfig) else LearnConfig(**asdict(sft))
    train_pairs, held = mix.split_heldout([*built, *taught], config.holdout)
    # Swapped after the split, from the training questions only: a held-out question's one-word swap
    # in training would leak it into the probe that measures recall in other words.
    start = time.perf_counter()
    swapped = (
        _swapped(folder / dataset.SWAPPED, teacher, train_pairs, say, synonyms, phase, on_progress)
        if synonyms > 0
        else None
    )
    swapped = swapped or lexical.LexicalReport([])
    train_pairs.extend(swapped.pairs)
    seconds["teacher_synonyms"] = time.perf_counter() - start
    shown = retrieval.passages(found.documents)
    trained = mix.balance(train_pairs)  # rarely asked facts repeated up to the median per fact
    titles = {d.doc_id: d.title for d in found.documents} if title_first else None
    rows = mix.pair_rows(trained, titles=titles)
    for doc in found.documents:
        rows.extend(mix.document_rows(doc))
    start = time.perf_counter()
    general: list[str] = []
    if config.replay > 0:
        replay_writer = writer or teacher
        general = own_replay.cached_text(replay_writer.model_name) or []
        if not general:
            say("writing general text for replay with the base model (once per model, a few minutes)")
            general = own_replay.own_text(
                replay_writer, on_progress=lambda done, total: say(f"replay text: {done}/{total} paragraphs")
            )
    # the share is of the closed-book rows: the passages in context rows are the documents' text again
    rows.extend(mix.replay_rows(sum(mix.row_words(r) for r in rows), config.replay, general))
    seconds["replay_text"] = time.perf_counter() - start
    rows.extend(mix.context_rows(train_pairs, shown, config.context_share, titles=titles))
    kept: dict[str, int] = {}
    for p in [*built, *taught, *swapped.pairs]:
        kept[p.perspective] = kept.get(p.perspective, 0) + 1
    meta = {
        "name": name,
        "stage": "generated",
        "base": base,
        "teacher": plan["teacher"],
        "group_id": found.group_id,
        "system_prompt": mix.SYSTEM_PROMPT,
        "title_first": title_first,
        "documents": {d.doc_id: {"source": d.source, "title": d.title} for d in found.documents},
        "skipped": [asdict(s) for s in found.skipped],
        "pairs_by_prompt": {n: s.pairs for n, s in report.stats.items()},
        "failed_by_prompt": {n: s.failed for n, s in report.stats.items()},
        "junk_by_prompt": {n: s.junk for n, s in report.stats.items()},
        "generation": {
            k: plan[k] for k in ("num_questions", "chunk_tokens", "one_at_a_time", "perspectives")
        },
        "sft": plan["sft"],
        "mix": {
            "pairs_kept": kept,
            "pairs_dropped": {
                **({"rephrase": rephrased.dropped} if rephrased.dropped else {}),
                **({"lexical": swapped.dropped} if swapped.dropped else {}),
                **{n: dict(s.dropped) for n, s in report.stats.items() if s.dropped},
            },
            "heldout": len(held),
            "repeated_for_balance": len(trained) - len(train_pairs),
            "rough_replaced": replaced,
            "rows": _count_rows(rows),
            "seconds": seconds,
        },
    }
    files = dataset.write(name, rows, meta)
    retrieval.save(folder, shown)
    if general:
        atomic.write_json(folder / GENERAL, general)
    atomic.write_jsonl(
        folder / HELDOUT,
        [{"question": p.question, "key": p.key, "doc_id": p.doc_id, "prompt": p.perspective} for p in held],
    )
    for leftover in (checkpoint, *(folder / p for p in dataset.PARTIALS)):
        leftover.unlink(missing_ok=True)
    return files.train, report


def _swapped(
    saved: Path,
    teacher: Engine,
    built: Sequence[grounded.Pair],
    say: Say,
    per_question: int,
    phase: Callable[[str], None],
    on_progress: Callable[[int, int], None] | None,
) -> lexical.LexicalReport:
    """The teacher-verified synonym swaps of ``built``'s natural questions (not the rough clozes):
    read from ``saved`` when an interrupted run finished them, else made and saved there."""
    if saved.is_file():
        try:
            data = json.loads(saved.read_text())
            report = lexical.LexicalReport(
                [grounded.Pair(**p) for p in data["pairs"]],
                int(data["proposed"]),
                int(data["scored"]),
                dict(data["dropped"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            report = None  # a damaged checkpoint: ask again
        if report is not None:
            say(f"synonym swaps kept from the interrupted run ({len(report.pairs)} questions)")
            return report
    if not (teacher.supports_prompt_logprobs and teacher.supports_tokenize):
        say(f"no synonym swaps: the teacher ({teacher.backend}) cannot score a prompt's tokens")
        return lexical.LexicalReport([])
    natural = [p for p in built if p.perspective not in ("span", "statement")]
    phase("synonym swaps")
    report = lexical.lexical_pairs(teacher, natural, per_question=per_question, on_progress=on_progress)
    atomic.write_json(saved, asdict(report))
    say(f"teacher kept {len(report.pairs)} of {report.scored} synonym swaps (dropped: {report.dropped})")
    return report


def _rephrased(
    saved: Path,
    teacher: Engine,
    built: Sequence[grounded.Pair],
    say: Say,
    variants: int,
    phase: Callable[[str], None],
    on_progress: Callable[[int, int], None] | None,
) -> rephrasing.RephraseReport:
    """The teacher's rephrasings of ``built``: read from ``saved`` when an interrupted run finished
    them (a resume does not pay for them twice), else asked for and saved there."""
    if saved.is_file():
        try:
            report = rephrasing.RephraseReport.from_dict(json.loads(saved.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            report = None  # a damaged checkpoint: ask again
        if report is not None:
            say(f"rephrasing kept from the interrupted run ({len(report.pairs)} questions)")
            return report
    phase("rephrasing questions")
    report = rephrasing.rephrase(teacher, built, variants=variants, on_progress=on_progress)
    atomic.write_json(saved, report.as_dict())
    say(
        f"teacher rephrased {len(report.pairs)} of {report.calls} rough questions (dropped: {report.dropped})"
    )
    return report


def generation_plan(name: str) -> dict[str, Any] | None:
    """How the unfinished generation of dataset ``name`` was started (None when there is none)."""

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
    writer: Engine | None = None,
    say: Say = lambda _: None,
    on_progress: Callable[[int, int], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> tuple[Path, QAReport]:
    """Finish the interrupted generation of dataset ``name`` with ``teacher`` (built from the plan's
    ``teacher`` spec), asking only the (prompt, chunk) units its checkpoint does not have; ``writer``
    as in ``prepare``."""
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
            "sft": _config(sft_fields),
            "teacher_spec": plan["teacher"],
            "review": plan["review"],
            "perspectives": tuple(plan.get("perspectives", PERSPECTIVES)),
            "rephrase": bool(plan.get("rephrase", True)),
            "rephrasings": int(plan.get("rephrasings", 1)),  # a plan that does not say ran with 1
            "synonyms": int(plan.get("synonyms", 0)),
            "keep_rough": bool(plan.get("keep_rough", True)),  # a plan that does not say kept them
            "title_first": bool(plan.get("title_first", False)),
        }
        sources = plan["sources"]
    except (KeyError, TypeError, AttributeError) as exc:
        raise HelixloomError(f"the generation plan of {name} is malformed: {exc!r}") from exc
    return prepare(
        name,
        sources,
        teacher,
        writer=writer,
        resume=True,
        say=say,
        on_progress=on_progress,
        on_phase=on_phase,
        **settings,
    )


def train(name: str, store: Store, *, resume: bool = False, say: Say = lambda _: None) -> TrainResult:
    """Fine-tune dataset ``name`` (as it is on disk, reviewed or not) and register adapter ``name``,
    with its report (``learn_report.json`` beside it, and ``report`` in its store metadata). With
    ``soup`` N > 1 in its settings, N fine-tunes from consecutive seeds are averaged into the adapter
    (``_train_soup``)."""
    from helixloom.training.sft import train_lora
    from helixloom.training.trainer import bf16_emulated

    paths.check_name(name, "dataset name")
    rows, meta = dataset.read(name)
    config = config_of(meta)
    options = train_options(name, rows, config)
    held = _heldout(name)
    adapter_dir = paths.adapters_dir() / name
    bf16 = bool(options["bf16"])
    if bf16 and bf16_emulated():
        say("warning: this CPU has no native bf16; --precision bf16 runs slower than fp32 here")
    say(f"fine-tuning {meta['base']} on {len(rows)} examples ({'resuming' if resume else 'from the start'})")
    if config.soup > 1:
        result, report = _train_soup(name, rows, meta, config, options, held, resume=resume, say=say)
    else:
        probe = _probe(meta, held, config)
        result = train_lora(
            meta["base"],
            rows,
            adapter_dir,
            paths.runs_dir() / name,
            config,
            system_prompt=meta["system_prompt"],
            resume=resume,
            callbacks=[probe],
            **options,
        )
        report = _report(meta, result, probe, held)
    report["precision"] = "bf16" if bf16 else "fp32"
    atomic.write_json(adapter_dir / REPORT, report)
    say(format_report(report))
    store.add_adapter(
        name,
        str(adapter_dir),
        base_model=meta["base"],
        meta={
            "system_prompt": meta["system_prompt"],
            "documents": meta["documents"],
            "group_id": meta["group_id"],
            "rank": config.rank * config.soup,
            "dataset": name,
            "kind": "documents",
            "report": report,
        },
        replace=True,
    )
    meta["stage"] = "trained"
    dataset.write(name, rows, meta)
    return result


def _probe(
    meta: dict[str, Any], held: list[dict[str, str]], config: LearnConfig, *, before: bool = True
) -> Any:
    """The held-out probe a fine-tune of dataset ``meta`` is measured and stopped by."""
    from helixloom.training.learn_probe import LearnProbe, Probe

    return LearnProbe(
        [Probe([{"role": "user", "content": h["question"]}], h["key"], h["doc_id"]) for h in held],
        mix.general_paragraphs(),
        system_prompt=meta["system_prompt"],
        patience=config.patience,
        max_forgetting=config.max_forgetting or None,
        # an answer opened with its document's title is 10-14 tokens longer
        max_new_tokens=PROBE_TOKENS + (TITLE_TOKENS if meta.get("title_first") else 0),
        measure_before=before,
        citations=dataset.citation_set(meta["documents"]),
    )


SOUP = "soup"  # in runs/NAME/: one folder per member fine-tune (seed-S/: its run, adapter, report)
MEMBER_REPORT = "member.json"  # in a member's folder once it is trained: resume keeps it


def _train_soup(
    name: str,
    rows: Sequence[dict[str, Any]],
    meta: dict[str, Any],
    config: LearnConfig,
    options: dict[str, Any],
    held: list[dict[str, str]],
    *,
    resume: bool,
    say: Say,
) -> tuple[TrainResult, dict[str, Any]]:
    """``config.soup`` fine-tunes of the same rows from seeds ``seed``, ``seed + 1``, ..., each chosen
    by its own held-out probe as one fine-tune is, then their exact mean (``training.soup``) written as
    adapter ``name`` and measured on the same held-out questions and general text.

    Each member's run keeps checkpoints in ``runs/NAME/soup/seed-S/``; a member that finished keeps its
    adapter and report there, so ``resume`` trains only what an interruption left undone."""
    from helixloom.training import soup
    from helixloom.training.sft import train_lora

    folder = paths.runs_dir() / name / SOUP
    if not resume and folder.exists():
        shutil.rmtree(folder)
    members: list[dict[str, Any]] = []
    results: list[TrainResult] = []
    for i in range(config.soup):
        seed = config.seed + i
        member = folder / f"seed-{seed}"
        done = member / MEMBER_REPORT
        if resume and done.is_file():
            members.append(json.loads(done.read_text(encoding="utf-8")))
            say(f"fine-tune {i + 1} of {config.soup} (seed {seed}): trained before, kept")
            continue
        say(f"fine-tune {i + 1} of {config.soup} (seed {seed})")
        probe = _probe(meta, held, config, before=i == 0)
        result = train_lora(
            meta["base"],
            rows,
            member / "adapter",
            member / "run",
            replace(config, seed=seed, soup=1),
            system_prompt=meta["system_prompt"],
            resume=resume,
            callbacks=[probe],
            **options,
        )
        results.append(result)
        report = _report(meta, result, probe, held)
        report["seed"] = seed
        report["training_seconds"] = round(result.seconds, 1)
        report["tokens"] = result.tokens
        atomic.write_json(done, report)
        members.append(report)
    say(f"averaging the {config.soup} fine-tunes into adapter {name}")
    start = time.perf_counter()
    adapter_dir = paths.adapters_dir() / name
    model, tokenizer = soup.average(
        meta["base"],
        [folder / f"seed-{config.seed + i}" / "adapter" for i in range(config.soup)],
        adapter_dir,
    )
    # measured as it is served, in fp32, its forgetting against the fp32 base (the members trained
    # and were measured in their precision, bf16 where it is native)
    probe = _probe(meta, held, config)
    after = probe.measure(model, tokenizer)
    perplexity = probe.perplexity(model, tokenizer)
    with model.disable_adapter():
        base_perplexity = probe.perplexity(model, tokenizer)
    del model
    first = members[0]
    report = dict(first)  # the mix, the teacher, the pairs and what the base model scored are shared
    for key in ("seed", "training_seconds", "tokens", "best_epoch", "stopped_early_for", "epochs"):
        report.pop(key, None)
    report.update(
        {
            "heldout_accuracy_after": after.accuracy if after else None,
            "citation_accuracy_after": after.citation_accuracy if after else None,
            "perplexity_general_base": base_perplexity,
            "perplexity_general_adapter": perplexity,
            "forgetting_ratio": round(perplexity / base_perplexity, 3)
            if perplexity and base_perplexity
            else None,
            "steps": sum(int(m.get("steps") or 0) for m in members),
            "soup": [
                {
                    k: m.get(k)
                    for k in (
                        "seed",
                        "heldout_accuracy_after",
                        "citation_accuracy_after",
                        "forgetting_ratio",
                        "best_epoch",
                        "stopped_early_for",
                        "epochs",
                        "steps",
                    )
                }
                for m in members
            ],
            "sample_answers": [
                {"question": h["question"], "answer": a}
                for h, a in zip(held[:4], after.answers[:4] if after else [], strict=False)
            ],
        }
    )
    seconds = sum(float(m.get("training_seconds") or 0) for m in members)
    tokens = sum(int(m.get("tokens") or 0) for m in members)
    averaging = time.perf_counter() - start
    report["tokens_per_second"] = round(tokens / seconds, 1) if seconds else None
    report["seconds"] = {
        **report.get("seconds", {}),
        "training": round(sum(float(m.get("seconds", {}).get("training") or 0) for m in members), 1),
        "measuring": round(sum(float(m.get("seconds", {}).get("measuring") or 0) for m in members), 1),
        "averaging": round(averaging, 1),
    }
    result = TrainResult(
        adapter_dir=adapter_dir,
        steps=report["steps"],
        resumed_from_step=results[0].resumed_from_step if results else 0,
        final_loss=None,
        changed_fraction=min((r.changed_fraction for r in results), default=1.0),
        seconds=seconds + averaging,
        tokens=tokens,
    )
    return result, report


def config_of(meta: dict[str, Any]) -> LearnConfig:
    """The fine-tuning settings a dataset was prepared with (its ``meta``)."""
    return _config({k: tuple(v) if isinstance(v, list) else v for k, v in meta["sft"].items()})


def train_options(name: str, rows: Sequence[dict[str, Any]], config: LearnConfig) -> dict[str, Any]:
    """``train_lora``'s options for dataset ``name`` beyond its rows and config (benchmarks reuse them)."""
    from helixloom.training.trainer import resolve_precision

    return {
        # pairs of ~90 tokens beside passage rows of ~300: 2.7x faster an epoch (563 -> 211 s,
        # 233 rows, 2 cores), since a random batch of 8 pads to its one long row
        "group_by_length": True,
        "anchor_texts": _anchor_texts(name, rows) if config.anchor > 0 else (),
        "anchor_weight": config.anchor,
        "bf16": resolve_precision(config.precision),
    }


def _anchor_texts(name: str, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The text the KL anchor holds the adapter to: the base model's own writing that ``prepare``
    kept beside the dataset (never the general text forgetting is measured on), else the dataset's
    replay rows."""
    kept = own_replay.read_texts(dataset.folder(name) / GENERAL)
    if kept:
        return kept
    return [str(r["text"]) for r in rows if r.get("meta", {}).get("prompt") == "replay" and "text" in r]


def _config(fields_: dict[str, Any]) -> LearnConfig:
    known = {f.name for f in fields(LearnConfig)}
    return LearnConfig(**{k: v for k, v in fields_.items() if k in known})


def _count_rows(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        meta = r.get("meta", {})
        kind = "context" if meta.get("context") else str(meta.get("prompt"))
        kind = kind if kind in ("context", "document", "replay") else "qa"
        out[kind] = out.get(kind, 0) + 1
    return out


def _heldout(name: str) -> list[dict[str, str]]:
    path = dataset.folder(name) / HELDOUT
    if not path.is_file():
        return []
    return [r for _, r in jsonl.read(path) if isinstance(r, dict) and {"question", "key", "doc_id"} <= set(r)]


def _report(
    meta: dict[str, Any], result: TrainResult, probe: Any, held: list[dict[str, str]]
) -> dict[str, Any]:
    """The numbers stored with every document adapter."""
    r = probe.report
    mixed = meta.get("mix", {})
    seconds = {k: round(v, 1) for k, v in mixed.get("seconds", {}).items()}
    seconds["training"] = round(result.seconds - r.seconds, 1)
    seconds["measuring"] = round(r.seconds, 1)
    forgetting = r.forgetting_ratio
    return {
        "teacher": meta.get("teacher"),
        "suite_questions": meta.get("generation", {}).get("num_questions"),
        "heldout_questions": len(held),
        "heldout_accuracy_before": r.before.accuracy if r.before else None,
        "heldout_accuracy_after": r.after.accuracy if r.after else None,
        "citation_accuracy_before": r.before.citation_accuracy if r.before else None,
        "citation_accuracy_after": r.after.citation_accuracy if r.after else None,
        "best_epoch": r.best_epoch,
        "stopped_early_for": r.stopped,
        "epochs": r.epochs,
        "perplexity_general_base": r.perplexity_base,
        "perplexity_general_adapter": r.perplexity_adapter,
        "forgetting_ratio": round(forgetting, 3) if forgetting else None,
        "pairs_kept": mixed.get("pairs_kept", {}),
        "pairs_dropped": mixed.get("pairs_dropped", {}),
        "rows": mixed.get("rows", {}),
        "repeated_for_balance": mixed.get("repeated_for_balance", 0),
        "steps": result.steps,
        "tokens_per_second": round(result.tokens / result.seconds, 1) if result.seconds else None,
        "seconds": seconds,
        "sample_answers": [
            {"question": h["question"], "answer": a}
            for h, a in zip(held[:4], r.after.answers[:4] if r.after else [], strict=False)
        ],
    }


def stage(name: str) -> str | None:
    """Where learning ``name`` stands: None (never started), "generating" (generation started and not
    finished: resume it), "generated" or "trained"."""
    try:
        return str(dataset.read(name)[1].get("stage"))
    except HelixloomError:
        return "generating" if (dataset.folder(name) / dataset.PLAN).is_file() else None
