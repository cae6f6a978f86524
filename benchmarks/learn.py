"""Document learning on the embedded default model, as both teacher and student, on documents it has
never seen: key-fact accuracy of the base model, the adapter, and each with retrieved passages.

Two made-up documents (``learn_data/``: a news article with vague title-style questions, and a manual
page) and 23 key-fact questions written by hand before the recipe, in words other than the
documents', never trained on (``learn_data/questions.jsonl``). Runs ``learn`` (code-built grounded
pairs, the teacher's prompt suite with grounding, the documents' text, replay, early stopping), then
asks every question under four arms, and a fifth: the adapter with its answers' kind checked
(``adapter+kind``: no number for "how many" -> its likeliest opening that gives one, see
``evals.answer_kind``). Prints one JSON object: key-fact accuracy per arm (the base
model is the baseline, same run), citation accuracy, the forgetting ratio, pairs kept and dropped by
reason, wall time per phase, and sample answers (to show they are not loops). With ``--soup N`` the
adapter is the mean of N fine-tunes (learn's ``--soup``), and each fine-tune is asked too, alone: the
baseline the soup is measured against in the same run (``key_fact_accuracy_members``).

    python benchmarks/learn.py [--teacher default|oracle] [--data DIR] [--questions N] [--epochs N]
        [--work DIR]

``--teacher oracle`` replaces the suite's teacher with fixed pairs a strong teacher would write (only
when asked; the default is the embedded model). Timings on a shared machine are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _home import bench_home

DATA = Path(__file__).parent / "learn_data"

# What a strong teacher would write (used only with --teacher oracle).
ORACLE_PAIRS = [
    ("What colour is the Zorblax?", "The Zorblax is teal."),
    ("Who proposed the Zorblax reserve?", "Councillor Ilse Varn proposed it."),
    ("What does the Zorblax eat?", "Zorblaxes eat glowing moss."),
    ("Who makes the Vorrick T-40?", "Halvane Works in Lund."),
    ("How much oil does the T-40 tank hold?", "1.8 litres."),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", choices=["default", "oracle"], default="default")
    parser.add_argument(
        "--data",
        type=Path,
        default=DATA,
        help="a folder of .md documents and their questions.jsonl (default learn_data/, where the recipe "
        "was developed; learn_heldout/ was held out until session 11 printed its misses; learn_fresh/ "
        "was written in session 12, learn_fresh2/ in session 15, learn_fresh3/ in session 29, each by a "
        "writer who had not seen the question builders)",
    )
    parser.add_argument(
        "--questions", type=int, default=None, help="suite questions per prompt and chunk (default: learn's)"
    )
    parser.add_argument("--epochs", type=float, default=None, help="most epochs (default: learn's)")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="rows per forward pass (default: learn's)"
    )
    parser.add_argument(
        "--grad-accum", type=int, default=None, help="forward passes per step (default: learn's)"
    )
    parser.add_argument("--replay", type=float, default=None)
    parser.add_argument("--anchor", type=float, default=None, help="KL-to-base weight (default: learn's)")
    parser.add_argument(
        "--context-share", type=float, default=None, help="share asked after passages (default: learn's)"
    )
    parser.add_argument("--patience", type=int, default=None, help="early stopping's (default: learn's)")
    parser.add_argument(
        "--seed", type=int, default=None, help="LoRA init, data order, dropout (default: learn's, 0)"
    )
    parser.add_argument(
        "--rephrasings",
        type=int,
        default=None,
        help="the teacher's rephrasings per rough question (default: learn's)",
    )
    parser.add_argument(
        "--keep-rough",
        action="store_true",
        help="keep the rough questions the teacher rephrased (learn's --keep-rough)",
    )
    parser.add_argument(
        "--title-first",
        action="store_true",
        help="open every trained answer with its document's title (learn's --title-first); every arm "
        "then answers in up to 96 tokens instead of 64",
    )
    parser.add_argument(
        "--synonyms",
        type=int,
        default=None,
        help="synonym swaps kept per question (documents/lexical.py; default: learn's, 0)",
    )
    parser.add_argument(
        "--soup",
        type=int,
        default=None,
        help="fine-tunes averaged into the adapter (learn's --soup; default: learn's, 1); with 2 or "
        "more each fine-tune is also measured alone (key_fact_accuracy_members): the baseline",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default=None,
        help="training precision (default: learn's, auto: bf16 on a GPU or a CPU with native bf16)",
    )
    parser.add_argument("--work", type=Path, default=None, help="HELIXLOOM_HOME to use (default: a temp one)")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    work = bench_home(args.work, "helixloom-bench-learn-")

    from helixloom import paths
    from helixloom.documents import dataset, retrieval
    from helixloom.documents.ingest import ingest
    from helixloom.engine import load_engine, sampling
    from helixloom.evals import keyfacts as qa
    from helixloom.store import Store
    from helixloom.training import learn, learn_teacher
    from helixloom.training.learn_config import LearnConfig

    paths.ensure_home()
    docs = work / "docs"
    docs.mkdir(exist_ok=True)
    if args.teacher == "oracle" and args.data.resolve() != DATA.resolve():
        parser.error("--teacher oracle has pairs for learn_data/ only")
    for file in sorted(args.data.glob("*.md")):
        shutil.copy(file, docs / file.name)
    items = qa.load(args.data / "questions.jsonl")
    found = ingest([docs])
    doc_ids = {Path(d.source).name: d.doc_id for d in found.documents}
    index = retrieval.BM25(retrieval.passages(found.documents))
    stages: dict[str, float] = {}
    wall = time.perf_counter()

    t0 = time.perf_counter()
    engine = load_engine("default")
    stages["load_seconds"] = time.perf_counter() - t0
    # one sentence and its citation; 32 more when the answers open with their document's title
    params = sampling(temperature=0, max_tokens=96 if args.title_first else 64)
    t0 = time.perf_counter()
    base = qa.answer(engine, items, params)
    base_rag = qa.answer(engine, items, params, index=index)
    stages["eval_before_seconds"] = time.perf_counter() - t0

    overrides = {
        k: v
        for k, v in (
            ("epochs", args.epochs),
            ("learning_rate", args.lr),
            ("rank", args.rank),
            ("batch_size", args.batch_size),
            ("grad_accum", args.grad_accum),
            ("replay", args.replay),
            ("anchor", args.anchor),
            ("patience", args.patience),
            ("context_share", args.context_share),
            ("precision", args.precision),
            ("seed", args.seed),
            ("soup", args.soup),
        )
        if v is not None
    }
    if "rank" in overrides:
        overrides["alpha"] = 2.0 * overrides["rank"]
    sft = LearnConfig(**overrides)
    t0 = time.perf_counter()
    if (
        args.teacher == "default"
    ):  # the engine learn's CLI gives the embedded teacher (llama.cpp if installed)
        teacher_spec = learn_teacher.teacher_spec("default")
        teacher: Any = engine if teacher_spec == "default" else load_engine(teacher_spec)
    else:
        teacher_spec, teacher = "oracle", oracle(engine)
    questions = args.questions if args.questions is not None else learn_teacher.suite_questions(teacher_spec)
    more = {"rephrasings": args.rephrasings} if args.rephrasings is not None else {}
    if args.synonyms is not None:
        more["synonyms"] = args.synonyms
    if args.keep_rough:
        more["keep_rough"] = True
    if args.title_first:
        more["title_first"] = True
    _, report = learn.prepare(
        "bench-learn",
        [docs],
        teacher,
        base="default",
        writer=engine,
        num_questions=questions,
        sft=sft,
        **more,
    )
    stages["prepare_seconds"] = time.perf_counter() - t0
    with Store(paths.db_path()) as store:
        t0 = time.perf_counter()
        trained = learn.train("bench-learn", store)
        stages["train_seconds"] = time.perf_counter() - t0
        meta = store.adapter_meta("bench-learn")
    stages["learn_total_seconds"] = stages["prepare_seconds"] + stages["train_seconds"]
    engine.load_adapter("bench-learn", str(trained.adapter_dir))
    system = meta.get("system_prompt")
    # a citation's id is decoded from the learned documents' ids, as eval qa, chat and the server do
    cites = dataset.citation_set(meta["documents"])
    t0 = time.perf_counter()
    after = qa.answer(engine, items, params, adapter="bench-learn", system=system, citations=cites)
    after_rag = qa.answer(
        engine, items, params, adapter="bench-learn", system=system, index=index, citations=cites
    )
    # the adapter again, each answer of another kind than its question asks for replaced by the
    # adapter's likeliest opening that is of it (evals.answer_kind): the same adapter, a check at answering
    after_kind = qa.answer(
        engine, items, params, adapter="bench-learn", system=system, check_kind=True, citations=cites
    )
    # the baseline for the guided citations: the adapter writing any id it likes
    after_free = qa.answer(engine, items, params, adapter="bench-learn", system=system)
    # a soup's fine-tunes one by one, each as one fine-tune of learn would have served it: the
    # baseline the soup is measured against, in the same run, on the same questions
    members: dict[str, Any] = {}
    for m in meta["report"].get("soup") or []:
        folder = paths.runs_dir() / "bench-learn" / learn.SOUP / f"seed-{m['seed']}" / "adapter"
        engine.load_adapter(f"bench-member-{m['seed']}", str(folder))
        members[f"seed {m['seed']}"] = qa.answer(
            engine, items, params, adapter=f"bench-member-{m['seed']}", system=system, citations=cites
        )
    stages["eval_after_seconds"] = time.perf_counter() - t0
    stages["wall_seconds"] = time.perf_counter() - wall
    learned = meta["report"]

    result = {
        "benchmark": "learn",
        "model": "default",
        "teacher": args.teacher,
        "teacher_engine": teacher_spec,
        "suite_questions": questions,
        "documents": len(found.documents),
        "questions": len(items),
        "key_fact_accuracy": {
            "base": round(qa.mean_score(base), 3),
            "adapter": round(qa.mean_score(after), 3),
            "base+retrieval": round(qa.mean_score(base_rag), 3),
            "adapter+retrieval": round(qa.mean_score(after_rag), 3),
            "adapter+kind": round(qa.mean_score(after_kind), 3),
        },
        # the fact in the answer's first sentence, not only in a document sentence recited after it
        "key_fact_accuracy_first_sentence": {
            "base": round(qa.mean_score_first_sentence(base), 3),
            "adapter": round(qa.mean_score_first_sentence(after), 3),
            "base+retrieval": round(qa.mean_score_first_sentence(base_rag), 3),
            "adapter+retrieval": round(qa.mean_score_first_sentence(after_rag), 3),
            "adapter+kind": round(qa.mean_score_first_sentence(after_kind), 3),
        },
        **(
            {
                "key_fact_accuracy_members": {k: round(qa.mean_score(v), 3) for k, v in members.items()},
                # the soup against its fine-tunes alone (their mean), in points of key facts
                "soup_minus_members_points": round(
                    100
                    * (qa.mean_score(after) - sum(qa.mean_score(v) for v in members.values()) / len(members)),
                    1,
                ),
                "key_fact_accuracy_first_sentence_members": {
                    k: round(qa.mean_score_first_sentence(v), 3) for k, v in members.items()
                },
                "citation_accuracy_members": {
                    k: qa.citation_accuracy(v, doc_ids) for k, v in members.items()
                },
            }
            if members
            else {}
        ),
        "citation_accuracy_adapter": qa.citation_accuracy(after, doc_ids),
        # unguided: any id the adapter writes (its key facts are the guided answers' but for ids)
        "citation_accuracy_adapter_free": qa.citation_accuracy(after_free, doc_ids),
        "key_fact_accuracy_adapter_free": round(qa.mean_score(after_free), 3),
        "citation_accuracy_adapter+retrieval": qa.citation_accuracy(after_rag, doc_ids),
        "citation_accuracy_adapter+kind": qa.citation_accuracy(after_kind, doc_ids),
        "forgetting_ratio": learned.get("forgetting_ratio"),
        "learn_report": {k: v for k, v in learned.items() if k != "sample_answers"},
        "suite_calls": sum(s.calls for s in report.stats.values()),
        "suite_failed_calls": sum(s.failed for s in report.stats.values()),
        "training_steps": trained.steps,
        "training_tokens_per_s": round(trained.tokens / trained.seconds, 1) if trained.seconds else None,
        "settings": {k: v for k, v in vars(sft).items() if k != "target_modules"},
        **{k: round(v, 1) for k, v in stages.items()},
        "load_average_at_end": os.getloadavg(),
        # the whole run's peak (the engine, the probe and training together), in MB
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "answers": [
            {
                "question": b.item.question,
                "facts": list(b.item.facts),
                "base": b.answer,
                "adapter": a.answer,
                "base+retrieval": br.answer,
                "adapter+retrieval": ar.answer,
                "adapter+kind": ak.answer,
            }
            for b, a, br, ar, ak in zip(base, after, base_rag, after_rag, after_kind, strict=True)
        ],
        **({"member_answers": {k: [a.answer for a in v] for k, v in members.items()}} if members else {}),
    }
    json.dump(result, sys.stdout, indent=2)
    print()


def oracle(engine: Any) -> Any:
    """An engine that answers every prompt of the suite with ORACLE_PAIRS (token counts from ``engine``)."""
    from helixloom.engine import Engine, GenerationResult, StreamDelta, Timings, Usage

    class Oracle(Engine):
        backend = "oracle"
        model_name = "oracle"

        def stream_batch(self, requests: Any, *, abort: Any = None) -> Any:
            for row, _ in enumerate(requests):
                text = json.dumps({"pairs": [{"question": q, "answer": a} for q, a in ORACLE_PAIRS]})
                yield row, StreamDelta(text)
                yield row, GenerationResult(text, "stop", Usage(0, 0), (), Timings())

        def next_token_logprobs(self, prompts: Any, **kw: Any) -> Any:
            raise NotImplementedError

        def load_adapter(self, name: str, path: str) -> Any:
            raise NotImplementedError

        def adapters(self) -> Any:
            return []

        def count_tokens(self, text: str) -> int:
            return int(engine.count_tokens(text))

    return Oracle()


if __name__ == "__main__":
    main()
