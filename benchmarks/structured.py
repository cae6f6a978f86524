"""Speed of JSON-schema-constrained generation against unconstrained generation, same run.

Prints one JSON object: the one-time cost of indexing the tokenizer's vocabulary for xgrammar
(262k tokens on the default model), the time to compile a schema, and tokens/s with and without
the constraint (single stream and batch), with ratios (constrained / unconstrained; target >= 0.8).

    python benchmarks/structured.py [--model default] [--tokens 64] [--batch 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "year": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "summary": {"type": "string"},
    },
    "required": ["title", "year", "tags", "summary"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    from helixloom.engine import Constraint, GenerationRequest, sampling
    from helixloom.engine.grammar import Grammars
    from helixloom.engine.hf import HFEngine

    engine = HFEngine.load(args.model)
    constraint = Constraint.json_schema(SCHEMA)
    fresh = Grammars(engine.tokenizer, int(engine.model.config.vocab_size), sorted(engine.eos_token_ids))
    start = time.perf_counter()
    fresh._get_compiler()
    index_s = time.perf_counter() - start
    start = time.perf_counter()
    fresh.compile(constraint)
    compile_s = time.perf_counter() - start

    prompt = "Describe a famous book as JSON with its title, year, tags and a summary.\nJSON: "
    # Both runs make exactly --tokens tokens: the unconstrained one ignores EOS, the constrained one
    # gets a long-enough summary field; tok/s counts the tokens each really made.
    plain = sampling(temperature=0.8, max_tokens=args.tokens, ignore_eos=True, seed=0)
    shaped = sampling(temperature=0.8, max_tokens=args.tokens, seed=0)

    def rate(batch: int, constrained: bool) -> float:
        best = 0.0
        for r in range(args.repeats):
            requests = [
                GenerationRequest(prompt, shaped.model_copy(update={"seed": r * 100 + i}), None, constraint)
                if constrained
                else GenerationRequest(prompt, plain.model_copy(update={"seed": r * 100 + i}))
                for i in range(batch)
            ]
            t0 = time.perf_counter()
            results = engine.generate(requests)
            elapsed = time.perf_counter() - t0
            best = max(best, sum(x.usage.completion_tokens for x in results) / elapsed)
        return best

    engine.generate([GenerationRequest(prompt, shaped, None, constraint)])  # warm-up (index + compile)
    single_plain, single_shaped = rate(1, False), rate(1, True)
    batch_plain, batch_shaped = rate(args.batch, False), rate(args.batch, True)
    sample = engine.generate([GenerationRequest(prompt, shaped, None, constraint)])[0]
    report = {
        "benchmark": "structured",
        "model": args.model,
        "vocab_size": int(engine.model.config.vocab_size),
        "vocab_index_seconds": round(index_s, 3),
        "schema_compile_seconds": round(compile_s, 3),
        "single_tok_s": {"unconstrained": round(single_plain, 2), "json_schema": round(single_shaped, 2)},
        f"batch{args.batch}_tok_s": {
            "unconstrained": round(batch_plain, 2),
            "json_schema": round(batch_shaped, 2),
        },
        "ratio_single": round(single_shaped / single_plain, 3),
        f"ratio_batch{args.batch}": round(batch_shaped / batch_plain, 3),
        "sample_finish_reason": sample.finish_reason,
        "sample_valid_json": _valid(sample.text) if sample.finish_reason == "stop" else None,
    }
    json.dump(report, sys.stdout, indent=2)
    print()


def _valid(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


if __name__ == "__main__":
    main()
