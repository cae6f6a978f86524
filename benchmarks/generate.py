"""Generation speed of our engine against plain ``model.generate``, same model, same run.

Prints one JSON object: single-stream and batch-8 tokens/s, greedy, 64 new tokens, for our hf
engine and for transformers' own ``generate`` on the very same loaded model, with ratios
(ours / plain; 1.0 means the engine adds no overhead), and the process's peak RSS.

    python benchmarks/generate.py [--model default] [--tokens 64] [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable


def best_rate(tokens: int, run: Callable[[], object], repeats: int) -> float:
    """Tokens per second of the best of ``repeats`` runs (the least disturbed by the machine)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return tokens / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    import torch

    from helixloom.engine import GenerationRequest, sampling
    from helixloom.engine.hf import HFEngine

    start = time.perf_counter()
    engine = HFEngine.load(args.model)
    load_s = time.perf_counter() - start
    prompt = "The history of the printing press begins"
    params = sampling(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    ids = torch.tensor([engine.encode(prompt)])
    model = engine.model

    def ours(batch: int) -> Callable[[], object]:
        return lambda: engine.generate([GenerationRequest(prompt, params)] * batch)

    def plain(batch: int) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return model.generate(
                    ids.repeat(batch, 1),
                    attention_mask=torch.ones_like(ids).repeat(batch, 1),
                    max_new_tokens=args.tokens,
                    min_new_tokens=args.tokens,
                    do_sample=False,
                )

        return run

    ours(1)()  # warm-up: first calls allocate
    plain(1)()
    # The engine's greedy text must be plain generate's, or the speed comparison means nothing.
    same = (
        list(engine.generate([GenerationRequest(prompt, params)])[0].token_ids)
        == plain(1)()[0, ids.shape[1] :].tolist()
    )  # type: ignore[index]
    single_ours = best_rate(args.tokens, ours(1), args.repeats)
    single_plain = best_rate(args.tokens, plain(1), args.repeats)
    batch_ours = best_rate(args.tokens * args.batch, ours(args.batch), args.repeats)
    batch_plain = best_rate(args.tokens * args.batch, plain(args.batch), args.repeats)
    report = {
        "benchmark": "generate",
        "model": args.model,
        "device": str(engine.device),
        "threads": torch.get_num_threads(),
        "new_tokens": args.tokens,
        "load_seconds": round(load_s, 2),
        "greedy_tokens_identical": same,
        "single_stream_tok_s": {"ours": round(single_ours, 2), "plain_generate": round(single_plain, 2)},
        f"batch{args.batch}_aggregate_tok_s": {
            "ours": round(batch_ours, 2),
            "plain_generate": round(batch_plain, 2),
        },
        "ratio_single": round(single_ours / single_plain, 3),
        f"ratio_batch{args.batch}": round(batch_ours / batch_plain, 3),
        "ratio_mean": round(statistics.mean([single_ours / single_plain, batch_ours / batch_plain]), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
