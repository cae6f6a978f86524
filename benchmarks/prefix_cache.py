"""The prefix cache on the embedded default model: prompt tokens the model runs, with it and without.

Two workloads, each run twice in the same process (the cache on, then off; greedy decoding):
a five-turn HelixNet chat (actor, critic, regenerator per turn; each turn's prompts repeat the
conversation so far) and a Weave search (every node's children continue their parent's text).
Prints one JSON object: prefill tokens per HelixNet turn and per Weave node for both, their ratio
(cached / uncached; target <= 0.3), and whether every output was identical.

    python benchmarks/prefix_cache.py [--turns 5] [--stage-tokens 32] [--budget 16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

QUESTIONS = [
    "What is a lighthouse for?",
    "Who keeps it running?",
    "How did they work before electricity?",
    "Are any still in use today?",
    "Which one is the oldest?",
    "Why are they often painted in stripes?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--stage-tokens", type=int, default=32, help="new tokens per HelixNet stage")
    parser.add_argument("--budget", type=int, default=16, help="Weave nodes to expand")
    parser.add_argument("--tokens-per-node", type=int, default=16)
    args = parser.parse_args()
    if not 1 <= args.turns <= len(QUESTIONS):
        sys.exit(f"--turns must be 1..{len(QUESTIONS)}")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    from helixloom.engine import sampling
    from helixloom.engine.hf import HFEngine
    from helixloom.helixnet import Exchange, HelixNet, Role
    from helixloom.weave import Evaluator, Question, WeaveConfig, weave

    engine = HFEngine.load("default")
    # Greedy, and seeded: a stage that comes out empty is retried by *sampling* (HelixNet's repair,
    # ``helixnet.stages.retry_sampling``), with a seed derived from the request's. Without a seed the
    # retries are random, and the two runs could not be compared (an earlier version of this
    # benchmark reported "not identical" for exactly that reason).
    params = sampling(temperature=0, max_tokens=args.stage_tokens, seed=0)
    role = Role(engine, None, params)

    def chat() -> tuple[list[int], list[str], int]:
        net = HelixNet(role, role, role)
        history: list[Exchange] = []
        per_turn, texts, retries = [], [], 0
        for question in QUESTIONS[: args.turns]:
            before = engine.prefill_tokens
            turn = net.answer(question, history)
            per_turn.append(engine.prefill_tokens - before)
            texts += [s.text for s in turn.stages]
            retries += sum(max(0, s.attempts - 1) for s in turn.stages)
            history.append(Exchange(question, turn.regeneration))
        return per_turn, texts, retries

    def tree() -> tuple[float, str]:
        evaluator = Evaluator(engine, [Question("Is this the beginning of a sad story?")])
        config = WeaveConfig(
            budget=args.budget, round_budget=8, n_expand=4, tokens_per_node=args.tokens_per_node, seed=0
        )
        before = engine.prefill_tokens
        result = weave("Once upon a time, there was a woman who", engine, evaluator, config)
        return (engine.prefill_tokens - before) / result.generated, result.text

    report: dict[str, object] = {"benchmark": "prefix_cache", "model": "default", **vars(args)}
    runs = {}
    for cached in (True, False):
        engine.prefix_caching = cached
        engine.prefix_cache.clear()
        start = time.perf_counter()
        per_turn, chat_texts, retries = chat()
        chat_s = time.perf_counter() - start
        start = time.perf_counter()
        per_node, tree_text = tree()
        runs[cached] = (per_turn, chat_texts, per_node, tree_text)
        label = "cached" if cached else "uncached"
        report[f"helixnet_{label}_prefill_tokens_per_turn"] = per_turn
        report[f"helixnet_{label}_seconds"] = round(chat_s, 2)
        report[f"helixnet_{label}_stage_retries"] = retries  # empty stages resampled (seeded)
        report[f"weave_{label}_prefill_tokens_per_node"] = round(per_node, 1)
        report[f"weave_{label}_seconds"] = round(time.perf_counter() - start, 2)
        print(json.dumps({k: v for k, v in report.items() if label in k}), file=sys.stderr, flush=True)
    report["ratio_helixnet_prefill_cached_over_uncached"] = round(sum(runs[True][0]) / sum(runs[False][0]), 3)
    # The first turn has nothing to reuse yet; the turns after it are where a chat spends its prefill.
    report["ratio_helixnet_turns_2_on"] = round(sum(runs[True][0][1:]) / max(1, sum(runs[False][0][1:])), 3)
    report["ratio_weave_prefill_cached_over_uncached"] = round(runs[True][2] / runs[False][2], 3)
    report["helixnet_outputs_identical"] = runs[True][1] == runs[False][1]
    report["weave_outputs_identical"] = runs[True][3] == runs[False][3]
    report["target_ratio"] = 0.3
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
