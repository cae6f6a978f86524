"""Iterative DPO (GSHF) on the embedded default model with the zero-shot evaluator as the reward.

Runs ``--iterations`` of sample K → score with the yes/no evaluator → best-vs-worst DPO on 20
hand-written prompts, then judges the final adapter's answers against the base model's with the
pairwise judge (both orders; the base model itself is the judge unless ``--judge SPEC``). The
baseline is the starting model in the same run: iteration 0 of the table, win rate 50% by
definition. Prints one JSON object: the per-iteration table (mean reward, win rate against the
start by reward and by judge, mean length, pairs, loss), wall time per phase, and totals.

    python benchmarks/iterate.py [--iterations 3] [--k 4] [--max-tokens 64] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

PROMPTS = [
    "Why is gold considered a good reserve asset for central banks?",
    "What are three simple ways to relieve stress after work?",
    "Explain what a leap year is.",
    "How do plants make their food?",
    "Give two tips for writing a clear email.",
    "Why is the sky blue?",
    "What is the difference between weather and climate?",
    "How does a refrigerator keep food cold?",
    "Name three healthy breakfast foods and say why they are healthy.",
    "What should I pack for a one-day hike?",
    "Why do we have seasons on Earth?",
    "How can I learn new words in a foreign language faster?",
    "What does a computer's memory do?",
    "Explain why exercise is good for the heart.",
    "How do bees help farmers?",
    "What is a budget and why is it useful?",
    "Why does ice float on water?",
    "Give a short definition of democracy.",
    "How do vaccines protect people from disease?",
    "What makes a good night's sleep?",
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--reward", default="evaluator")
    parser.add_argument("--judge", default="base", help="'base' (the default model) or a model spec")
    parser.add_argument("--work", help="HELIXLOOM_HOME to use (default: a temporary folder)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --work where it stopped")
    args = parser.parse_args()

    home = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="helixloom-bench-iterate-"))
    os.environ["HELIXLOOM_HOME"] = str(home)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore")
    import datasets

    datasets.disable_progress_bars()

    from helixloom.engine import load_engine
    from helixloom.evals.pairwise import PairwiseJudge
    from helixloom.evals.winrate import win_rate
    from helixloom.paths import ensure_home
    from helixloom.training.configs import IterateConfig
    from helixloom.training.dpo import LoraDPOConfig
    from helixloom.training.iterate import IterativeRun
    from helixloom.training.iterate_report import format_table
    from helixloom.training.reward_spec import load_reward

    ensure_home()
    t0 = time.perf_counter()
    engine = load_engine("default")
    load_seconds = time.perf_counter() - t0
    reward = load_reward(args.reward, engine=engine)
    judge_engine = engine if args.judge == "base" else load_engine(args.judge)
    judge = PairwiseJudge(judge_engine)
    judge_seconds = 0.0

    def judge_fn(
        prompts: list[str], answers: list[str], baseline: list[str]
    ) -> tuple[float | None, float | None, float | None]:
        nonlocal judge_seconds
        t = time.perf_counter()
        verdicts = judge.compare(prompts, answers, baseline)
        report = win_rate(verdicts, [len(a) for a in answers], [len(b) for b in baseline])
        judge_seconds += time.perf_counter() - t
        if report.unreliable_reason:
            print(report.unreliable_reason, file=sys.stderr)
        return report.win_rate, report.lc_win_rate, report.consistency

    config = IterateConfig(iterations=args.iterations, k=args.k, max_tokens=args.max_tokens, gen_batch=16)
    train = LoraDPOConfig(learning_rate=args.learning_rate, beta=args.beta, epochs=2, batch_size=4, rank=16)
    if args.resume:
        run = IterativeRun.open("bench")
    else:
        run = IterativeRun.create(
            "bench", PROMPTS, base="default", reward=args.reward, config=config, train=train, overwrite=True
        )
    t = time.perf_counter()
    rows = run.execute(engine, reward, judge=judge_fn, say=lambda s: print(s, file=sys.stderr))
    total = time.perf_counter() - t
    print(format_table(rows), file=sys.stderr)
    phases: dict[str, float] = {}
    for r in rows:
        for k, v in r.seconds.items():
            phases[k] = round(phases.get(k, 0.0) + v, 1)
    final = rows[-1]
    print(
        json.dumps(
            {
                "benchmark": "iterate",
                "model": "default (Gemma 3 270M base)",
                "reward": args.reward,
                "judge": args.judge,
                "prompts": len(PROMPTS),
                "k": args.k,
                "max_tokens": args.max_tokens,
                "rows": [asdict(r) for r in rows],
                "final_vs_start": {
                    "mean_reward_start": rows[0].mean_reward,
                    "mean_reward_final": final.mean_reward,
                    "reward_win_rate": final.win_rate,
                    "judge_win_rate": final.judge_win_rate,
                    "judge_lc_win_rate": final.judge_lc_win_rate,
                    "judge_consistency": final.judge_consistency,
                    "mean_length_start": rows[0].mean_length,
                    "mean_length_final": final.mean_length,
                    "length_ratio": final.mean_length / rows[0].mean_length if rows[0].mean_length else None,
                },
                "seconds": {
                    "model_load": round(load_seconds, 1),
                    **phases,
                    "judging": round(judge_seconds, 1),
                    "total": round(total, 1),
                },
                "report_png": str(run.root / "report.png"),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
