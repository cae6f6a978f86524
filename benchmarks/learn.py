"""Document learning on the embedded default model: what a fine-tune on an unknown article teaches it.

Writes a short article about a made-up subject (so the model cannot know it), runs ``learn`` with
the default model as both teacher and student, and asks key-fact questions, a vague title question
among them, before and after. Prints one JSON object: key-fact accuracy of the base model and of
the adapter (the baseline is the base model, same run), pairs made per prompt, training tokens/s,
and wall time per stage.

    python benchmarks/learn.py [--epochs 3] [--rank 16] [--questions 5] [--work DIR]
                               [--teacher default|oracle] [--all-at-once]

With ``--teacher default`` it also shows what the local teacher wrote: pairs before and after
near-duplicate removal and the questions kept. ``--all-at-once`` asks each prompt for all its pairs in
one call (Helix's way, the baseline) instead of one question per call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from _home import bench_home

ARTICLE = """# Quentmoor Council approves the Zorblax marsh reserve

On 14 March 2031 the Quentmoor Council voted 9 to 2 to protect the Velling Marsh as a reserve for the
Zorblax, a teal, six-legged reptile that lives nowhere else.

## What the reserve does

The reserve closes the marsh to peat cutting and to motor boats. Councillor Ilse Varn, who proposed it,
said the Zorblax population had fallen to about 400 animals. Zorblaxes eat glowing moss, which needs
undisturbed water.

## What happens next

Wardens will count the animals every spring. Peat cutters will be paid to move to the Ossary fields,
and the first count is planned for April 2032.
"""

# What a strong teacher would write about ARTICLE (used with --teacher oracle, to measure what the
# student learns independently of how good the local teacher is).
ORACLE_PAIRS = [
    ("What colour is the Zorblax?", "The Zorblax is teal."),
    ("How many legs does the Zorblax have?", "The Zorblax has six legs."),
    ("What kind of animal is the Zorblax?", "The Zorblax is a teal, six-legged reptile."),
    ("Where does the Zorblax live?", "Only in the Velling Marsh of Quentmoor."),
    ("Who proposed the Zorblax reserve?", "Councillor Ilse Varn proposed it."),
    ("When did the Quentmoor Council vote on the reserve?", "On 14 March 2031."),
    ("How did the council vote?", "9 to 2 in favour of the reserve."),
    ("What does the Zorblax eat?", "Zorblaxes eat glowing moss."),
    ("How many Zorblaxes are left?", "About 400 animals."),
    ("What does the reserve ban?", "Peat cutting and motor boats in the marsh."),
    ("What is the council going to do about the marsh?", "Make the Velling Marsh a reserve for the Zorblax."),
    ("What will the wardens do?", "Count the Zorblaxes every spring."),
    ("Where will the peat cutters go?", "They will be paid to move to the Ossary fields."),
    ("When is the first Zorblax count?", "In April 2032."),
]

QUESTIONS = [
    {"question": "What colour is the Zorblax?", "facts": ["teal"]},
    {"question": "How many legs does a Zorblax have?", "facts": ["six"]},
    {"question": "Who proposed the Zorblax reserve?", "facts": ["Ilse Varn"]},
    {"question": "What does the Zorblax eat?", "facts": ["moss"]},
    {"question": "How many Zorblaxes are left?", "facts": ["400"]},
    {
        "question": "What is the council going to do about the marsh?",
        "facts": ["reserve"],
    },  # vague, title-style
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--questions", type=int, default=5, help="pairs asked per prompt")
    parser.add_argument("--work", type=Path, default=None, help="HELIXLOOM_HOME to use (default: a temp one)")
    parser.add_argument(
        "--teacher",
        choices=["default", "oracle"],
        default="oracle",
        help="default: the embedded model writes the pairs; oracle: fixed pairs a strong teacher would write",
    )
    parser.add_argument(
        "--all-at-once",
        action="store_true",
        help="ask each prompt for all its pairs in one call instead of one question per call",
    )
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    work = bench_home(args.work, "helixloom-bench-learn-")

    from helixloom import paths
    from helixloom.engine import load_engine, sampling
    from helixloom.evals import keyfacts as qa
    from helixloom.store import Store
    from helixloom.training import learn
    from helixloom.training.configs import LoraSFTConfig

    paths.ensure_home()
    docs = work / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "zorblax.md").write_text(ARTICLE)
    items = [qa.QAItem(q["question"], tuple(q["facts"])) for q in QUESTIONS]
    stages: dict[str, float] = {}

    t0 = time.perf_counter()
    engine = load_engine("default")
    stages["load_seconds"] = time.perf_counter() - t0
    params = sampling(temperature=0, max_tokens=48)
    t0 = time.perf_counter()
    before = qa.answer(engine, items, params)
    stages["eval_before_seconds"] = time.perf_counter() - t0

    sft = LoraSFTConfig(
        rank=args.rank, alpha=2.0 * args.rank, epochs=args.epochs, batch_size=4, max_length=512
    )
    t0 = time.perf_counter()
    teacher: Any = engine if args.teacher == "default" else oracle(engine)
    _, report = learn.prepare(
        "bench-zorblax",
        [docs],
        teacher,
        base="default",
        num_questions=args.questions,
        sft=sft,
        one_at_a_time=not args.all_at_once,
    )
    stages["qa_generation_seconds"] = time.perf_counter() - t0
    with Store(paths.db_path()) as store:
        t0 = time.perf_counter()
        trained = learn.train("bench-zorblax", store)
        stages["training_seconds"] = time.perf_counter() - t0
        system = store.adapter_meta("bench-zorblax").get("system_prompt")
    engine.load_adapter("bench-zorblax", str(trained.adapter_dir))
    t0 = time.perf_counter()
    after = qa.answer(engine, items, params, adapter="bench-zorblax", system=system)
    stages["eval_after_seconds"] = time.perf_counter() - t0

    result = {
        "benchmark": "learn",
        "model": "default",
        "teacher": args.teacher,
        "questions": len(items),
        "key_fact_accuracy_base": round(qa.mean_score(before), 3),
        "key_fact_accuracy_adapter": round(qa.mean_score(after), 3),
        "vague_title_question": {"base": before[-1].answer, "adapter": after[-1].answer},
        "qa_mode": "all-at-once" if args.all_at_once else "one-at-a-time",
        "qa_calls": sum(s.calls for s in report.stats.values()),
        "junk_pairs_dropped": sum(s.junk for s in report.stats.values()),
        "pairs_before_dedupe": len(report.pairs) + report.duplicates_removed,
        "pairs": len(report.pairs),
        "pairs_by_prompt": {n: s.pairs for n, s in report.stats.items()},
        "failed_calls_by_prompt": {n: s.failed for n, s in report.stats.items()},
        "training_steps": trained.steps,
        "training_tokens_per_s": round(trained.tokens / trained.seconds, 1) if trained.seconds else None,
        "final_loss": trained.final_loss,
        **{k: round(v, 1) for k, v in stages.items()},
        "answers_after": [a.answer for a in after],
        "questions_generated": [p.question for p in report.pairs],
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
