"""DPO step cost on the embedded default model: reference log-probs at every step vs precomputed once.

Trains the same LoRA DPO run twice on the same pairs (policy = a fresh LoRA, reference = the base
model): once as TRL does by default, scoring chosen and rejected under the reference at every step,
and once with ``precompute_ref`` (one reference pass over the pairs before training). The baseline
is the first run, in the same process. Prints one JSON object: seconds per run and per step, the
speed ratio, and the final losses (which should agree: the reference log-probs are the same numbers).

    python benchmarks/dpo.py [--pairs 16] [--epochs 2] [--batch-size 4] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "Why is the sky blue?",
    "How do plants make their food?",
    "Explain what a leap year is.",
    "What does a computer's memory do?",
    "Why does ice float on water?",
    "How do bees help farmers?",
    "What is a budget and why is it useful?",
    "Give a short definition of democracy.",
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--work", help="HELIXLOOM_HOME to use (default: a temporary folder)")
    args = parser.parse_args()
    home = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="helixloom-bench-dpo-"))
    os.environ["HELIXLOOM_HOME"] = str(home)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore")
    from helixloom.paths import ensure_home
    from helixloom.training.dpo import LoraDPOConfig, train_dpo

    ensure_home()
    rows = [
        {
            "prompt": f"Question: {PROMPTS[i % len(PROMPTS)]}\nAnswer:",
            "chosen": " A clear answer with the reason, in two short sentences that stay on topic.",
            "rejected": " I do not know. Ask someone else, maybe.",
        }
        for i in range(args.pairs)
    ]
    results = {}
    for label, precompute in (("every_step", False), ("precomputed", True)):  # baseline first
        config = LoraDPOConfig(
            epochs=args.epochs, batch_size=args.batch_size, rank=16, precompute_ref=precompute, seed=0
        )
        t = time.perf_counter()
        result = train_dpo("default", rows, home / "adapters" / label, home / "runs" / label, config)
        seconds = time.perf_counter() - t
        results[label] = {
            "seconds": round(seconds, 1),
            "steps": result.steps,
            "seconds_per_step": round(seconds / max(result.steps, 1), 2),
            "final_loss": result.final_loss,
        }
        print(f"{label}: {results[label]}", file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "dpo",
                "model": "default (Gemma 3 270M base)",
                "pairs": args.pairs,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "runs": results,
                "speedup": round(results["every_step"]["seconds"] / results["precomputed"]["seconds"], 3),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
