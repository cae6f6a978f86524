"""``helixloom prompts generate``: self-instruct prompt generation (``helixloom.training.selfinstruct``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from helixloom.errors import HelixloomError
from helixloom.jobs import progress_bar, set_result


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``prompts`` command."""
    from helixloom.cli.common import add_model_flags, usage

    prompts = sub.add_parser(
        "prompts",
        help="make prompts to train on: self-instruct generation from seed prompts",
        description="Prompt sets for preference learning and fine-tuning.",
    )
    psub = prompts.add_subparsers(title="actions", metavar="ACTION")
    gen = psub.add_parser(
        "generate",
        help="have a model write new prompts from a few seed prompts (self-instruct)",
        description="Have a model write N new prompts in the style of the seed prompts (Self-Instruct): "
        "each request shows a numbered list of a few seed (and already generated) prompts and the model "
        "writes the next one. A prompt is kept when its length is within limits and its ROUGE-L "
        "similarity to every seed, every prompt already in --out (with --append) and every prompt kept "
        'so far is at most --max-similarity. Writes JSONL {"prompt": ...} to --out, atomically.',
    )
    gen.add_argument(
        "--seed",
        required=True,
        metavar="FILE",
        help='seed prompts: JSONL with a "prompt" field per line, or plain text with one prompt per line',
    )
    gen.add_argument("--n", type=int, default=100, help="number of new prompts to write (default 100)")
    gen.add_argument("--out", required=True, metavar="FILE", help="the JSONL file to write")
    write = gen.add_mutually_exclusive_group()
    write.add_argument(
        "--append",
        action="store_true",
        help="keep the rows already in --out, never generate them again, and add N new ones",
    )
    write.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_model_flags(gen)
    gen.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    gen.add_argument("--top-p", type=float, default=0.95, help="nucleus mass (default 0.95)")
    gen.add_argument("--max-tokens", type=int, default=128, help="most tokens per prompt (default 128)")
    gen.add_argument(
        "--max-similarity",
        type=float,
        default=0.7,
        help="reject a prompt whose ROUGE-L F with any known prompt exceeds this (default 0.7)",
    )
    gen.add_argument("--min-chars", type=int, default=16, help="shortest prompt kept (default 16)")
    gen.add_argument("--max-chars", type=int, default=500, help="longest prompt kept (default 500)")
    gen.add_argument("--shots", type=int, default=8, help="example prompts shown per request (default 8)")
    gen.add_argument("--batch-size", type=int, default=8, help="requests per batch (default 8)")
    gen.add_argument(
        "--max-attempts",
        type=int,
        help="give up after this many requests (default 10 x N + 2 x batch size)",
    )
    gen.add_argument(
        "--seed-rng",
        type=int,
        default=0,
        metavar="INT",
        help="seed for example choice and sampling; the same seed repeats a run (default 0)",
    )
    gen.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    gen.set_defaults(run=cmd_prompts_generate, job="prompts")
    prompts.set_defaults(run=lambda _: usage(prompts))


def cmd_prompts_generate(args: argparse.Namespace) -> int:

    from helixloom import adapters as adapter_registry
    from helixloom import models
    from helixloom.cli.common import open_store
    from helixloom.engine.select import load_for_inference
    from helixloom.training import selfinstruct

    if args.n < 1:
        raise HelixloomError("--n must be at least 1")
    seeds = selfinstruct.read_seeds(args.seed)
    out = Path(args.out)
    if out.exists() and not out.is_file():
        raise HelixloomError(f"--out {out} is not a file")
    if out.is_file() and out.stat().st_size and not (args.append or args.overwrite):
        raise HelixloomError(f"{out} exists", "add --append to add to it, or --overwrite to replace it")
    kept_rows = selfinstruct.read_existing(out) if args.append else []
    models.resolve(args.model)  # a bad spec fails before anything is loaded
    with open_store() as store:
        adapter = adapter_registry.resolve(store, args.adapter, model=args.model) if args.adapter else None
    engine = load_for_inference(args.model, args.engine)
    if adapter is not None:
        engine.load_adapter(adapter[0], str(adapter[1]))
    new: list[str] = []
    bar = progress_bar(args.n, unit="prompt", desc="prompts")

    def progress(done: int, total: int) -> None:
        bar.n = done
        bar.refresh()

    def save() -> None:
        selfinstruct.write_prompts(out, kept_rows + [{"prompt": p} for p in new])

    try:
        report = selfinstruct.generate_prompts(
            engine,
            seeds,
            args.n,
            adapter=adapter[0] if adapter else None,
            shots=args.shots,
            batch_size=args.batch_size,
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_tokens,
            min_chars=args.min_chars,
            max_chars=args.max_chars,
            max_similarity=args.max_similarity,
            seed=args.seed_rng,
            existing=[r["prompt"] for r in kept_rows],
            max_attempts=args.max_attempts,
            on_progress=progress,
            on_prompt=new.append,
        )
    except KeyboardInterrupt:
        bar.close()
        if new:
            save()
            print(
                f"helixloom: kept the {len(new)} prompts made so far in {out}; "
                "run again with --append to add more",
                file=sys.stderr,
            )
        raise
    finally:
        engine.close()
    bar.close()
    print(f"helixloom: {report.summary()}", file=sys.stderr)
    if new:
        save()
        print(f"helixloom: wrote {len(new)} new prompts to {out}", file=sys.stderr)
    body: dict[str, Any] = {**report.as_dict(), "out": str(out), "rows": len(kept_rows) + len(new)}
    set_result(body)
    if args.json:
        print(json.dumps(body))
    if not new:
        raise HelixloomError(
            f"the model wrote no usable prompt in {report.attempts} attempts; {out} is unchanged",
            "see the rejection counts above",
        )
    return 0
