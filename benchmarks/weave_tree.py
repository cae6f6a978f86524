"""Weave on the embedded default model: search speed and what sharing a node's prefill saves.

Runs the same seeded search twice: with the children of a node sharing one prefill (the default)
and with every child prefilling the whole branch itself. Prints one JSON object: nodes/s, tokens
run through the model per expanded node for both, and their ratio (shared / unshared).

    python benchmarks/weave_tree.py [--budget 24] [--tokens-per-node 16] [--n-expand 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=24)
    parser.add_argument("--round-budget", type=int, default=8)
    parser.add_argument("--n-expand", type=int, default=4)
    parser.add_argument("--tokens-per-node", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    from helixloom.engine.hf import HFEngine
    from helixloom.weave import Evaluator, Question, WeaveConfig, weave

    engine = HFEngine.load("default")
    evaluator = Evaluator(engine, [Question("Is this the beginning of a sad story?")])
    config = WeaveConfig(
        budget=args.budget,
        round_budget=args.round_budget,
        n_expand=args.n_expand,
        tokens_per_node=args.tokens_per_node,
        seed=0,
    )
    prompt = "Once upon a time, there was a woman who"
    report: dict[str, object] = {"benchmark": "weave", "model": "default", **vars(args)}
    texts = {}
    for shared in (True, False):
        engine.share_prefill = shared
        before_prefill, before_decode = engine.prefill_tokens, engine.decode_tokens
        start = time.perf_counter()
        result = weave(prompt, engine, evaluator, config)
        elapsed = time.perf_counter() - start
        # Tokens the generator ran; the evaluator's scoring passes are the same in both runs.
        tokens = (engine.prefill_tokens - before_prefill) + (engine.decode_tokens - before_decode)
        label = "shared_prefill" if shared else "separate_prefill"
        report[f"{label}_seconds"] = round(elapsed, 2)
        report[f"{label}_nodes_per_s"] = round(result.generated / elapsed, 2)
        report[f"{label}_model_tokens_per_node"] = round(tokens / result.generated, 1)
        texts[shared] = result.text
    report["ratio_tokens_shared_over_separate"] = round(
        float(report["shared_prefill_model_tokens_per_node"])
        / float(report["separate_prefill_model_tokens_per_node"]),  # type: ignore[arg-type]
        3,
    )
    report["same_tree_both_ways"] = texts[True] == texts[False]
    report["best_branch"] = texts[True]
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
