"""``helixloom generate``: complete a prompt with a model, optionally held to a JSON schema, a regex or
a choice."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from helixloom.errors import HelixloomError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``generate`` command."""
    from helixloom.cli.common import add_model_flags, add_sampling_flags

    gen = sub.add_parser(
        "generate",
        help="complete a prompt with a model (streams to stdout)",
        description="Complete PROMPT with a model and stream the text to stdout. Every call is recorded "
        "as a session in the store.",
    )
    gen.add_argument("prompt", help="the text to complete; '-' reads it from standard input")
    add_model_flags(gen)
    add_sampling_flags(gen)
    shape = gen.add_mutually_exclusive_group()
    shape.add_argument(
        "--json-schema", metavar="FILE", help="the output must be JSON valid under this schema file"
    )
    shape.add_argument("--json-object", action="store_true", help="the output must be a JSON value")
    shape.add_argument("--regex", metavar="PATTERN", help="the output must match this regular expression")
    shape.add_argument(
        "--choice", action="append", metavar="TEXT", help="the output must be one of these; repeatable"
    )
    gen.add_argument(
        "--token-healing",
        action="store_true",
        help="back up over the prompt's last token and make the first new token start with its text",
    )
    gen.add_argument(
        "--n", type=int, default=1, help="number of completions, sampled in one batch (default 1)"
    )
    gen.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object instead of streaming: text, finish_reason, usage, timings, "
        "session_id (with --n > 1: a 'choices' list of those)",
    )
    gen.set_defaults(run=cmd_generate)


def constraint_from(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from helixloom.engine import Constraint

    if args.json_schema:
        path = Path(args.json_schema)
        if not path.is_file():
            raise HelixloomError(f"schema file {path} does not exist", param="json_schema")
        return Constraint.json_schema(path.read_text())
    if args.json_object:
        return Constraint.json_object()
    if args.regex is not None:
        return Constraint.regex(args.regex)
    if args.choice:
        return Constraint.choice(args.choice)
    return None


def cmd_generate(args: argparse.Namespace) -> int:
    from helixloom import adapters as adapter_registry
    from helixloom import models
    from helixloom.cli.common import sampling_from
    from helixloom.completion import complete
    from helixloom.engine.select import load_for_inference
    from helixloom.paths import ensure_home
    from helixloom.store import Store

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise HelixloomError("the prompt is empty", "pass some text to complete", param="prompt")
    if args.n < 1:
        raise HelixloomError("--n must be at least 1")
    params = sampling_from(args)
    constraint = constraint_from(args)
    models.resolve(args.model)  # a bad spec fails before anything is loaded
    ensure_home()
    with Store.open_default() as store:
        adapter = adapter_registry.resolve(store, args.adapter, model=args.model) if args.adapter else None
        engine = load_for_inference(args.model, args.engine)
        if adapter is not None:
            engine.load_adapter(adapter[0], str(adapter[1]))
        streaming = not args.json and args.n == 1

        def show(_: int, text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        result = complete(
            engine,
            prompt,
            params,
            n=args.n,
            adapter=adapter[0] if adapter else None,
            store=store,
            on_delta=show if streaming else None,
            constraint=constraint,
        )
    choices = [
        {
            "text": c.text,
            "finish_reason": c.finish_reason,
            "usage": {
                "prompt_tokens": c.usage.prompt_tokens,
                "completion_tokens": c.usage.completion_tokens,
                "total_tokens": c.usage.total_tokens,
            },
            "timings": c.timings.as_dict(),
        }
        for c in result.choices
    ]
    if args.json:
        body: dict[str, Any] = choices[0] if args.n == 1 else {"choices": choices}
        print(
            json.dumps(
                {**body, "model": args.model, "adapter": args.adapter, "session_id": result.session_id}
            )
        )
    elif streaming:
        print()
    else:
        for i, c in enumerate(choices):
            print(f"--- choice {i} ({c['finish_reason']}) ---\n{c['text']}")
    return 0
