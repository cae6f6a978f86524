"""Which vectors let the improve loop's learned reward learn a hidden taste from a few dozen ratings?

The improve loop's reward (``helixloom.training.active``) is a bootstrap ensemble of linear
Bradley-Terry models on the base model's hidden states. This measures, on the embedded default
model, how well it learns each simulated user's hidden taste (``helixloom.evals.simulated_users``)
from ``--budgets`` random ratings, for several kinds of vectors (``--features``):

- ``legacy``: the last layer, mean over prompt + response (the loop's reward until Dec 2026);
- ``DEPTH:response``: the layer at that fraction of the model's depth, over the response read in
  its prompt's transcript context, mean and last token (``Features``; the loop's default is listed
  first).

Candidates are sampled as the loop samples them (``k`` answers per prompt, ``explore`` of them after
examples of an answer form, so that answers of every form are there to rate): the training pool
from the benchmark's training prompts, the held-out pool from its held-out prompts (the reward
never sees a held-out prompt nor its answers). Per taste, feature and budget, over ``--seeds``
random draws of the rated pairs, it prints JSON:

- ``agreement``: the share of held-out pairs the taste tells apart that the reward orders as the
  taste does (the feedback loop benchmark's "reward agreement"; 0.5 is chance);
- ``agreement_over_legacy``: each feature's agreement minus the legacy vectors' (when measured);
- ``picks_liked``: over the held-out prompts with at least one liked answer among their ``k``, the
  share whose best answer by the reward is liked (what DPO's chosen answer needs; chance is the
  share of liked answers among those prompts' answers, printed as ``picks_liked_chance``).

    python benchmarks/reward_features.py [--tastes bullets,short_question,plain]
        [--features default,legacy,0.33:response,0.67:response] [--budgets 50,150] [--seeds 4]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _home import bench_home
from feedback_loop import HELD_OUT, TRAIN_PROMPTS, held_out_pairs


def parse_features(spec: str) -> Any:
    from helixloom.training.active import LEGACY, Features

    if spec == "default":
        return Features()
    if spec == "legacy":
        return LEGACY
    depth, _, pool = spec.partition(":")
    return Features(float(depth), pool or "response")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tastes", default="bullets,short_question,plain")
    parser.add_argument("--features", default="default,legacy")
    parser.add_argument("--budgets", default="50,150", help="random ratings the reward is fit on")
    parser.add_argument("--seeds", type=int, default=4, help="draws of the rated pairs per budget")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--held-out", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--explore", type=int, default=4, help="of the k answers, how many after a form")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--work", help="HELIXLOOM_HOME to use (default: a temporary folder)")
    args = parser.parse_args()
    if args.prompts > len(TRAIN_PROMPTS) or args.held_out > len(HELD_OUT):
        parser.error(f"at most {len(TRAIN_PROMPTS)} prompts and {len(HELD_OUT)} held out")
    bench_home(Path(args.work) if args.work else None, "helixloom-reward-features-")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from helixloom.engine import load_engine
    from helixloom.evals.simulated_users import TASTES, choose
    from helixloom.paths import ensure_home
    from helixloom.training.active import Embedder, RatedPair, agreement, fit_reward
    from helixloom.training.improve import ImproveConfig, ImproveRun

    ensure_home()
    t0 = time.perf_counter()
    engine = load_engine("default")
    config = ImproveConfig(rounds=1, k=args.k, explore=args.explore, max_tokens=args.max_tokens, seed=1)
    pools = {}
    for part, prompts, other in (
        ("train", TRAIN_PROMPTS[: args.prompts], HELD_OUT[:1]),
        ("held_out", HELD_OUT[: args.held_out], TRAIN_PROMPTS[:1]),
    ):
        run = ImproveRun.create(
            f"features-{part}", prompts, other, base="default", config=config, overwrite=True
        )
        pools[part] = run._sample(1, engine, None, None)
    sample_s = time.perf_counter() - t0
    train_pairs = [
        (c["prompt"], c["answers"][x], c["answers"][y])
        for c in pools["train"]
        for x, y in itertools.combinations(range(len(c["answers"])), 2)
        if c["answers"][x].strip() and c["answers"][y].strip() and c["answers"][x] != c["answers"][y]
    ]
    reference = [(c["prompt"], a) for c in pools["train"] for a in c["answers"]]
    features = [parse_features(f) for f in args.features.split(",")]
    embedders = {f: Embedder(engine, features=f) for f in features}
    report: dict[str, Any] = {
        "benchmark": "reward_features",
        "model": "default (Gemma 3 270M base)",
        "settings": {k: v for k, v in vars(args).items() if k != "work"},
        "train_pool_pairs": len(train_pairs),
        "sample_s": round(sample_s, 1),
        "tastes": {},
    }
    for taste_name in args.tastes.split(","):
        taste = TASTES[taste_name]
        held_rows = [{"prompt": c["prompt"], "answer": a} for c in pools["held_out"] for a in c["answers"]]
        held_pairs = held_out_pairs(taste, held_rows)  # the pairs the taste tells apart, as the loop's
        with_liked = [c for c in pools["held_out"] if any(taste.likes(c["prompt"], a) for a in c["answers"])]
        liked = sum(taste.likes(c["prompt"], a) for c in with_liked for a in c["answers"])
        entry: dict[str, Any] = {
            "description": taste.description,
            "held_out_pairs": len(held_pairs),
            "held_out_prompts_with_a_liked_answer": len(with_liked),
            "picks_liked_chance": round(liked / max(1, sum(len(c["answers"]) for c in with_liked)), 3),
            "features": {},
        }
        for f in features:
            embed = embedders[f]
            name = "legacy" if f.pool == "text" else f"{f.depth:.2f}:{f.pool}"
            t = time.perf_counter()
            rows = {}
            for budget in (int(b) for b in args.budgets.split(",")):
                agree, picks = [], []
                for seed in range(args.seeds):
                    rated = []
                    for p, a, b in random.Random(seed).sample(train_pairs, min(budget, len(train_pairs))):
                        pick = choose(taste, p, a, b)
                        if pick != "skip":
                            rated.append(RatedPair(p, a, b) if pick == "a" else RatedPair(p, b, a))
                    reward = fit_reward(rated, embed, seed=seed, reference=reference)
                    agree.append(agreement(reward, held_pairs) or 0.5)
                    hits = 0
                    for c in with_liked:
                        scores = reward.score([c["prompt"]] * len(c["answers"]), c["answers"])
                        best = max(range(len(scores)), key=scores.__getitem__)
                        hits += taste.likes(c["prompt"], c["answers"][best])
                    picks.append(hits / max(1, len(with_liked)))
                rows[str(budget)] = {
                    "agreement": round(sum(agree) / len(agree), 3),
                    "picks_liked": round(sum(picks) / len(picks), 3),
                }
            entry["features"][name] = {**rows, "seconds": round(time.perf_counter() - t, 1)}
            print(json.dumps({taste_name: {name: entry["features"][name]}}), file=sys.stderr, flush=True)
        base = entry["features"].get("legacy")
        if base is not None:  # the baseline: the reward's vectors before Dec 2026
            entry["agreement_over_legacy"] = {
                name: {
                    b: round(v["agreement"] - base[b]["agreement"], 3)
                    for b, v in f.items()
                    if b in base and b != "seconds"
                }
                for name, f in entry["features"].items()
                if name != "legacy"
            }
        report["tastes"][taste_name] = entry
    report["total_s"] = round(time.perf_counter() - t0, 1)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
