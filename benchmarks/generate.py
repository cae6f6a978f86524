"""Generation speed of our engine against plain ``model.generate``, same model, same run.

Prints one JSON object: single-stream and batch-8 tokens/s, greedy, 64 new tokens, for our hf
engine and for transformers' own ``generate`` on the very same loaded model, with ratios
(ours / plain; 1.0 means the engine adds no overhead), and the process's peak RSS. Then the cost
of a LoRA adapter (random, rank --rank on every projection) on one forward pass over a 63-token
prompt: the base model's forward against the adapter's, merged (every row on that adapter, the
engine's default) and per row (PEFT's mixed-batch path, what a mixed batch runs); target <= 1.15.

    python benchmarks/generate.py [--model default] [--tokens 64] [--batch 8] [--repeats 3] [--rank 64]
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
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--adapter-only", action="store_true", help="only the adapter vs base forward")
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
    # The loop against generate's, not the prefix cache: repeats of one prompt would hit it.
    engine.prefix_caching = False

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

    if args.adapter_only:
        json.dump(
            {
                "benchmark": "generate",
                "model": args.model,
                **adapter_cost(engine, args.rank, args.repeats + 2),
            },
            sys.stdout,
            indent=2,
        )
        print()
        return
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
    adapter = adapter_cost(engine, args.rank, args.repeats + 2)
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
        **adapter,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    json.dump(report, sys.stdout, indent=2)
    print()


def adapter_cost(engine: object, rank: int, repeats: int) -> dict[str, object]:
    """Seconds per forward pass over a 63-token prompt: the base model, then a random rank-``rank``
    LoRA on every projection, merged and per row (the median of ``repeats`` passes each)."""
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from helixloom.engine.hf import HFEngine

    assert isinstance(engine, HFEngine)
    folder = tempfile.mkdtemp(prefix="bench-lora-")
    base = AutoModelForCausalLM.from_config(engine.model.config)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)
    torch.manual_seed(0)
    get_peft_model(base, config).save_pretrained(folder)
    del base
    text = " ".join(["The printing press changed how books were made and read."] * 6)
    ids = torch.tensor([engine.encode(text)[:63]])

    def median_s(adapters: list[str | None]) -> float:
        times = []
        with engine._lock, torch.inference_mode():
            engine._forward(adapters, input_ids=ids, use_cache=False, logits_to_keep=1)  # warm-up
            for _ in range(repeats):
                start = time.perf_counter()
                engine._forward(adapters, input_ids=ids, use_cache=False, logits_to_keep=1)
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    base_s = median_s([None])  # before any adapter: the plain transformers model
    engine.load_adapter("bench", folder)
    merged_s = median_s(["bench"])
    engine.merge_uniform_adapters = False
    per_row_s = median_s(["bench"])
    engine.merge_uniform_adapters = True
    base_after_s = median_s([None])  # base rows once PEFT wraps the model
    return {
        "adapter_forward_ms": {
            "prompt_tokens": int(ids.shape[1]),
            "rank": rank,
            "base": round(base_s * 1000, 1),
            "base_with_peft_loaded": round(base_after_s * 1000, 1),
            "adapter_merged": round(merged_s * 1000, 1),
            "adapter_per_row": round(per_row_s * 1000, 1),
        },
        "ratio_adapter_merged_over_base": round(merged_s / base_s, 3),
        "ratio_adapter_per_row_over_base": round(per_row_s / base_s, 3),
    }


if __name__ == "__main__":
    main()
