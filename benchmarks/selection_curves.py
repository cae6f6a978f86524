"""Which ratings teach the reward fastest, offline: the approval of the reward's pick among held-out
answers after every batch of ratings, per selection rule, over several pools of base answers.

``feedback_loop.py``'s learning curve does this on one pool, which is too noisy for a ratio of ratings
(its curves reach their ceiling within a few batches, so a single lucky batch decides). This samples
``--pools`` pools once (16 training prompts x k answers and 12 held-out prompts x k, forms as the improve
loop draws them; cached in --work), then for each taste, rule and selection seed asks a simulated
user (choices and thumbs by the taste) ``--budget`` ratings in batches of ``--batch``, refits the
reward after each batch as the loop does (thumbs learned as pairs, ties dropped), and records the
approval of its pick among each held-out prompt's answers. Prints JSON: the mean curve per rule, and
the ratings each rule needed to reach the approval random selection has with the whole budget, over
random's (the issue's "same approval with at most 60% of the ratings"). A rule ``RULE-nomarks`` is
asked without the thumbs (``select``'s ``marks``), as every rule was before Dec 2026.

It also records what round 1 of a loop would train the policy on (``train_pick_*``): of the training
prompts with a liked answer among their k, the share whose pick is liked, the rater's thumbs first
if the loop put them first (``thumbs_first``; ``train_pick_reward_only_*``: the reward alone, as the
loop picks), and the
ratings each rule needs to reach random's share at one round's ratings (``--round-budget``, 50).

    python benchmarks/selection_curves.py [--pools 8] [--sel-seeds 4] [--tastes short_question,bullets]
        [--rules random,top,top-nomarks,active,active-nomarks] [--budget 150] [--batch 10]
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
from feedback_loop import HELD_OUT, TRAIN_PROMPTS


def sample_pool(engine: Any, seed: int, k: int, folder: Path) -> dict[str, Any]:
    """Base answers for the training and the held-out prompts, drawn as round 1 of a loop draws them."""
    path = folder / f"pool-{seed}.json"
    if path.is_file():
        return dict(json.loads(path.read_text()))
    from helixloom.training.improve import EXPLORE_ALL, ImproveConfig, ImproveRun

    cfg = dict(rounds=1, k=k, explore=EXPLORE_ALL, max_tokens=48, eval_samples=4, gen_batch=16)
    train = ImproveRun.create(
        f"pool-{seed}-train", TRAIN_PROMPTS[:16], HELD_OUT[:12], base="default",
        config=ImproveConfig(**cfg, seed=seed + 1), overwrite=True,
    )  # fmt: skip
    held = ImproveRun.create(
        f"pool-{seed}-held", HELD_OUT[:12], TRAIN_PROMPTS[:2], base="default",
        config=ImproveConfig(**cfg, seed=seed + 101), overwrite=True,
    )  # fmt: skip
    out = {"train": train._sample(1, engine, None, None), "held": held._sample(1, engine, None, None)}
    path.write_text(json.dumps(out))
    return out


def curve(
    rule: str, taste: Any, data: dict[str, Any], seed: int, embed: Any, args: argparse.Namespace
) -> dict[str, list[float]]:
    """One selection seed's curves: after every batch, the approval of the reward's pick among each
    held-out prompt's answers (``held``), and of round 1's training pick (``train``, thumbs first;
    ``train_reward_only``, the reward alone, as the loop picks)."""
    from helixloom.evals.simulated_users import choose
    from helixloom.training.active import CandidatePair, RatedPair, fit_reward, select, with_thumbs

    pool = [
        CandidatePair(f"{j}-{x}-{y}", c["prompt"], c["answers"][x], c["answers"][y])
        for j, c in enumerate(data["train"])
        for x, y in itertools.combinations(range(len(c["answers"])), 2)
        if c["answers"][x].strip() and c["answers"][y].strip() and c["answers"][x] != c["answers"][y]
    ]
    reference = [(c["prompt"], a) for c in data["train"] for a in c["answers"]]
    base = 100.0 * sum(taste.likes(h["prompt"], a) for h in data["held"] for a in h["answers"])
    base /= sum(len(h["answers"]) for h in data["held"])
    strategy, _, nomarks = rule.partition("-")
    with_liked = [c for c in data["train"] if any(taste.likes(c["prompt"], a) for a in c["answers"])]
    train_base = (
        100.0
        * sum(sum(taste.likes(c["prompt"], a) for a in c["answers"]) / len(c["answers"]) for c in with_liked)
        / max(1, len(with_liked))
    )
    rng = random.Random(seed)
    rated: list[RatedPair] = []
    marks: dict[str, dict[str, bool]] = {}
    asked: set[str] = set()
    ensemble = None
    out: dict[str, list[float]] = {"held": [], "train": [], "train_reward_only": []}
    while len(asked) < min(args.budget, len(pool)):
        left = [c for c in pool if c.key not in asked]
        given = None if nomarks else marks
        batch = select(
            left, args.batch, strategy=strategy, rng=rng, ensemble=ensemble, embed=embed, marks=given
        )
        for c in batch:
            asked.add(c.key)
            pick = choose(taste, c.prompt, c.a, c.b)
            if pick != "skip":
                rated.append(RatedPair(c.prompt, *((c.a, c.b) if pick == "a" else (c.b, c.a))))
            for text in (c.a, c.b):
                marks.setdefault(c.prompt, {})[text] = taste.likes(c.prompt, text)
        learned = with_thumbs(rated, marks, ties=True)[0]
        if not learned:  # nothing to learn from yet: a pick is as good as a random one
            for key, value in (("held", base), ("train", train_base), ("train_reward_only", train_base)):
                out[key].append(value)
            continue
        reward = fit_reward(learned, embed, seed=len(learned), reference=reference)
        ensemble = reward.ensemble
        liked = 0
        for h in data["held"]:
            scores = reward.score_group(h["prompt"], h["answers"])
            liked += taste.likes(h["prompt"], h["answers"][argmax(scores)])
        out["held"].append(100.0 * liked / len(data["held"]))
        # What round 1 of the loop would train the policy on (RAFT's pick per training prompt), among
        # the training prompts with a liked answer: the reward's pick after the rater's thumbs
        # (thumbs_first, tried in the loop and not kept), and by the reward alone, as the loop picks.
        first = alone = 0
        for c in with_liked:
            scores = reward.score_group(c["prompt"], c["answers"])
            moved = thumbs_first(c["answers"], scores, marks.get(c["prompt"], {}))
            first += taste.likes(c["prompt"], c["answers"][argmax(moved)])
            alone += taste.likes(c["prompt"], c["answers"][argmax(scores)])
        out["train"].append(100.0 * first / len(with_liked))
        out["train_reward_only"].append(100.0 * alone / len(with_liked))
    return out


def thumbs_first(answers: list[str], scores: list[float], verdicts: dict[str, bool]) -> list[float]:
    """``scores`` moved so that every answer the rater thumbed up ranks above every unrated one and
    every unrated one above every answer thumbed down (``verdicts``: answer -> up), the reward's order
    kept within each. The improve loop picked so for one session (Dec 2026) and went back to the reward
    alone: the full loops gained less with it (README)."""
    spread = (max(scores) - min(scores) + 1.0) if scores else 1.0
    return [
        s + spread * (1 if verdicts.get(a) is True else -1 if verdicts.get(a) is False else 0)
        for a, s in zip(answers, scores, strict=True)
    ]


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def summary(
    curves: dict[str, list[dict[str, list[float]]]],
    metric: str,
    label: str,
    budget: int,
    steps: list[int],
    rules: list[str],
) -> dict[str, Any]:
    """The mean ``metric`` curve per rule up to ``budget`` ratings, random's value there (the target),
    the ratings each rule needs to reach it, and that over random's."""
    upto = [i for i, n in enumerate(steps) if n <= budget]
    mean = {r: [sum(c[metric][i] for c in cs) / len(cs) for i in upto] for r, cs in curves.items()}
    target = mean["random"][-1]
    need = {
        r: next((steps[i] for i, v in zip(upto, m, strict=True) if v >= target - 1e-9), None)
        for r, m in mean.items()
    }
    name = "" if label == "pick_approval" else f"{label}_"  # the held-out pick keeps its first names
    return {
        **{f"{label}_{r}": [round(v, 1) for v in m] for r, m in mean.items()},
        f"{name}target (random at {budget} ratings)": round(target, 1),
        **{f"{name}ratings_to_target_{r}": need[r] for r in rules},
        **{
            f"{name}{r}_over_random_ratio": round(need[r] / need["random"], 2)
            if need[r] and need["random"]
            else None
            for r in rules
            if r != "random"
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pools", type=int, default=8, help="pools of base answers (seeds 0..N-1)")
    parser.add_argument("--sel-seeds", type=int, default=4, help="selection seeds per pool")
    parser.add_argument("--tastes", default="short_question,bullets")
    parser.add_argument("--rules", default="random,top,top-nomarks,active,active-nomarks")
    parser.add_argument("--budget", type=int, default=150, help="ratings (the feedback loop's 3 x 50)")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument(
        "--round-budget", type=int, default=50,
        help="ratings of one loop round: the training pick's target is random's there (the loop's 50)",
    )  # fmt: skip
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--work", help="HELIXLOOM_HOME to use; pools are cached there")
    args = parser.parse_args()
    rules = args.rules.split(",")
    if "random" not in rules:
        parser.error("--rules must include random: the others are measured against it")
    home = bench_home(Path(args.work) if args.work else None, "helixloom-selection-")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from helixloom.engine import load_engine
    from helixloom.evals.simulated_users import TASTES
    from helixloom.paths import ensure_home
    from helixloom.training.active import STRATEGIES, Embedder

    for rule in rules:
        if rule.partition("-")[0] not in STRATEGIES or rule.partition("-")[2] not in ("", "nomarks"):
            parser.error(f"--rules: {rule!r}: RULE or RULE-nomarks, RULE one of {', '.join(STRATEGIES)}")
    ensure_home()
    t0 = time.perf_counter()
    engine = load_engine("default")
    embed = Embedder(engine)
    pools = [sample_pool(engine, s, args.k, home) for s in range(args.pools)]
    sampled = time.perf_counter() - t0
    report: dict[str, Any] = {"benchmark": "selection_curves", "settings": vars(args), "tastes": {}}
    steps = [
        min(args.batch * (i + 1), args.budget) for i in range((args.budget + args.batch - 1) // args.batch)
    ]
    for name in args.tastes.split(","):
        taste = TASTES[name]
        curves = {
            rule: [curve(rule, taste, data, s, embed, args) for data in pools for s in range(args.sel_seeds)]
            for rule in rules
        }
        entry: dict[str, Any] = {"curves_per_rule": len(curves["random"]), "ratings": steps}
        # The held-out pick is measured against random's whole budget; round 1's training pick
        # against random's at one round's ratings (--round-budget), what a loop's round asks.
        for metric, label, at in (
            ("held", "pick_approval", args.budget),
            ("train", "train_pick", args.round_budget),
            ("train_reward_only", "train_pick_reward_only", args.round_budget),
        ):
            entry.update(summary(curves, metric, label, at, steps, rules))
        report["tastes"][name] = entry
        print(json.dumps({name: report["tastes"][name]}), file=sys.stderr, flush=True)
    report["sampling_s"] = round(sampled, 1)
    report["total_s"] = round(time.perf_counter() - t0, 1)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
