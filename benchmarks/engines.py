"""Engines side by side on the embedded default model, in one run.

Prints one JSON object: single-stream and batch tokens/s for the ``hf`` and ``llamacpp`` backends
(greedy, --tokens new tokens each), our llamacpp engine against plain llama-cpp-python on the same
GGUF (ratio; target >= 0.95), one HelixNet turn's wall time per backend, and the engine ``serve``
and ``chat`` load for the default model (``engine.select``, loaded as they load it) against the
fastest backend measured (single stream and batch; target >= 0.95), and llama.cpp with parallel
sequences against the same requests one at a time (aggregate tok/s at 4 and 8 distinct prompts,
runs alternated, greedy texts compared; target >= 2x at 4).

    python benchmarks/engines.py [--tokens 64] [--batch 4] [--repeats 3] [--threads N] [--only-parallel]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable


def best(repeats: int, run: Callable[[], int]) -> float:
    """Tokens/s of the best of ``repeats`` runs; ``run`` returns the tokens it made."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokens = run()
        rates.append(tokens / (time.perf_counter() - t0))
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp threads")
    parser.add_argument(
        "--only-parallel", action="store_true", help="only llama.cpp's parallel vs one-at-a-time part"
    )
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.only_parallel:
        report = {"benchmark": "engines", "new_tokens": args.tokens, "threads": args.threads}
        report.update(parallel_llamacpp(args.tokens, args.repeats, args.threads))
        json.dump(report, sys.stdout, indent=2)
        print()
        return

    from llama_cpp import Llama

    from helixloom.engine import GenerationRequest, sampling
    from helixloom.engine.hf import HFEngine
    from helixloom.engine.llamacpp import LlamaCppEngine
    from helixloom.engine.select import choose_engine, load_for_inference
    from helixloom.helixnet import HelixNet, Role

    prompt = "The history of the printing press begins"
    params = sampling(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    report: dict[str, object] = {"benchmark": "engines", "new_tokens": args.tokens, "threads": args.threads}

    engines = {
        "hf": HFEngine.load("default"),
        "llamacpp": LlamaCppEngine("llamacpp:default", n_threads=args.threads),
    }
    chosen = choose_engine("default")
    report["default_engine"] = {"backend": chosen.backend, "reason": chosen.reason}
    default = load_for_inference("default", announce=False)  # what serve and chat load
    if isinstance(default, LlamaCppEngine):
        default.close()  # the same, at the benchmark's thread count
        default = LlamaCppEngine(chosen.spec, n_threads=args.threads)
    for name, engine in {**engines, "default": default}.items():

        def run(batch: int, engine: object = engine) -> int:
            results = engine.generate([GenerationRequest(prompt, params)] * batch)  # type: ignore[attr-defined]
            return sum(r.usage.completion_tokens for r in results)

        run(1)  # warm-up
        report[f"{name}_single_tok_s"] = round(best(args.repeats, lambda: run(1)), 2)
        report[f"{name}_batch{args.batch}_tok_s"] = round(best(args.repeats, lambda: run(args.batch)), 2)

    # Plain llama-cpp-python on the same file, same greedy settings, a fresh context per run as ours.
    ours = engines["llamacpp"]
    assert isinstance(ours, LlamaCppEngine)
    plain = Llama(
        model_path=str(ours.path),
        n_ctx=4096,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    tokens = plain.tokenize(prompt.encode(), add_bos=True, special=True)

    def run_plain() -> int:
        plain.reset()
        made = 0
        for _ in plain.generate(tokens, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            made += 1
            if made >= args.tokens:
                break
        return made

    def run_ours() -> int:
        ours.clear_cache()  # no prefix reuse: measure the same work as plain
        return ours.generate([GenerationRequest(prompt, params)])[0].usage.completion_tokens

    run_plain()
    plain_rate = best(args.repeats, run_plain)
    ours_rate = best(args.repeats, run_ours)
    report["plain_llama_cpp_python_tok_s"] = round(plain_rate, 2)
    report["llamacpp_engine_tok_s"] = round(ours_rate, 2)
    report["ratio_llamacpp_over_plain"] = round(ours_rate / plain_rate, 3)
    plain.close()

    for shape in ("single", f"batch{args.batch}"):
        fastest = max(float(report[f"{n}_{shape}_tok_s"]) for n in engines)  # type: ignore[arg-type]
        report[f"ratio_default_over_fastest_{shape}"] = round(
            float(report[f"default_{shape}_tok_s"]) / fastest,  # type: ignore[arg-type]
            3,
        )

    helix = sampling(temperature=0, max_tokens=48, token_healing=True)
    for name, engine in engines.items():
        role = Role(engine, None, helix)
        net = HelixNet(role, role, role)
        t0 = time.perf_counter()
        turn = net.answer("Why is the sky blue?")
        report[f"helixnet_turn_seconds_{name}"] = round(time.perf_counter() - t0, 2)
        report[f"helixnet_tokens_{name}"] = turn.usage.completion_tokens
    report["helixnet_speedup_llamacpp_over_hf"] = round(
        float(report["helixnet_turn_seconds_hf"]) / float(report["helixnet_turn_seconds_llamacpp"]),
        2,  # type: ignore[arg-type]
    )
    for engine in (*engines.values(), default):
        engine.close()
    report.update(parallel_llamacpp(args.tokens, args.repeats, args.threads))
    json.dump(report, sys.stdout, indent=2)
    print()


Texts = dict[str, list[str]]  # greedy texts of a run, by how it ran
PARALLEL_PROMPTS = [
    "The history of the printing press begins",
    "Once upon a time",
    "def fibonacci(n):",
    "The capital of France is",
    "In 1492, Columbus",
    "My favourite recipe for bread",
    "The quick brown fox",
    "Quantum mechanics says that",
]


def parallel_llamacpp(tokens: int, repeats: int, threads: int) -> dict[str, object]:
    """Aggregate tok/s of 4 and 8 distinct greedy requests decoded together vs the same requests one
    at a time, on one engine with 8 sequences, nothing cached before a run; the texts must agree."""
    from helixloom.engine import GenerationRequest, sampling
    from helixloom.engine.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine("llamacpp:default", n_parallel=8, n_threads=threads)
    params = sampling(temperature=0, max_tokens=tokens, ignore_eos=True)
    out: dict[str, object] = {}
    for n in (4, 8):
        requests = [GenerationRequest(p, params) for p in PARALLEL_PROMPTS[:n]]
        texts: Texts = {}

        def together(requests: list[GenerationRequest] = requests, texts: Texts = texts) -> int:
            engine.clear_cache()
            results = engine.generate(requests)
            texts["together"] = [r.text for r in results]
            return sum(r.usage.completion_tokens for r in results)

        def one_at_a_time(requests: list[GenerationRequest] = requests, texts: Texts = texts) -> int:
            engine.clear_cache()
            results = [engine.generate([r])[0] for r in requests]
            texts["alone"] = [r.text for r in results]
            return sum(r.usage.completion_tokens for r in results)

        # Alternated, so load from other processes falls on both alike; the best of each.
        rates: dict[str, list[float]] = {"together": [], "alone": []}
        for _ in range(repeats):
            for name, run in (("alone", one_at_a_time), ("together", together)):
                t0 = time.perf_counter()
                made = run()
                rates[name].append(made / (time.perf_counter() - t0))
        alone, together_rate = max(rates["alone"]), max(rates["together"])
        out[f"llamacpp_one_at_a_time_{n}_tok_s"] = round(alone, 2)
        out[f"llamacpp_parallel_{n}_tok_s"] = round(together_rate, 2)
        out[f"ratio_parallel_{n}_over_one_at_a_time"] = round(together_rate / alone, 3)
        out[f"parallel_{n}_texts_equal_one_at_a_time"] = texts["together"] == texts["alone"]
    out["parallel_target_met_at_4"] = float(out["ratio_parallel_4_over_one_at_a_time"]) >= 2.0  # type: ignore[arg-type]
    engine.close()
    return out


if __name__ == "__main__":
    main()
