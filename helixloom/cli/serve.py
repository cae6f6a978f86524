"""``helixloom serve``: the OpenAI-compatible server (``helixloom.server``)."""

from __future__ import annotations

import argparse
import os
import sys

from helixloom.errors import HelixloomError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``serve`` command."""
    serve = sub.add_parser(
        "serve",
        help="serve models, adapters and HelixNet over an OpenAI-compatible API",
        description="Serve the model, its adapters (each as its own model name, like vLLM) and the "
        "helixnet pipeline over an OpenAI-compatible HTTP API (/v1/models, /v1/chat/completions, "
        "/v1/completions), plus /api/sessions with feedback. Every call is recorded in the store. "
        "Concurrent requests are batched together, adapters per row.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--model", default="default", metavar="SPEC", help="the base model (default: default)")
    serve.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve a PEFT adapter folder as model NAME (registered adapters are served too); repeatable",
    )
    serve.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="[LABEL:]KEY",
        help="require this bearer key on /v1 and /api (repeatable; also $HELIXLOOM_API_KEY). Sessions "
        "record the label, never the key",
    )
    serve.add_argument("--max-batch", type=int, default=8, help="most requests per engine batch (default 8)")
    serve.add_argument("--max-queue", type=int, default=64, help="waiting requests before 503 (default 64)")
    serve.add_argument(
        "--max-tokens", type=int, default=512, help="max_tokens when a request gives none (default 512)"
    )
    for role in ("actor", "critic", "regenerator"):
        serve.add_argument(f"--{role}-adapter", metavar="NAME_OR_PATH", help=f"adapter for helixnet's {role}")
    serve.add_argument("--format", default="helixnet", metavar="NAME_OR_FILE", help="helixnet prompt format")
    serve.add_argument(
        "--rounds", type=int, default=1, help="helixnet critique/regenerate rounds (default 1)"
    )
    serve.add_argument(
        "--no-jobs",
        dest="run_jobs",
        action="store_false",
        help="do not run jobs submitted to POST /api/jobs (learn, train, iterate, ...; by default they run "
        "one at a time, each in its own process, with their progress on /jobs)",
    )
    serve.set_defaults(run=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from helixloom.server import ServerConfig, create_app, open_state
    from helixloom.server.state import key_label

    adapters = {}
    for item in args.adapter:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise HelixloomError(f"--adapter {item!r} is not NAME=PATH", param="adapter")
        adapters[name] = path
    keys = list(args.api_key) + (
        [os.environ["HELIXLOOM_API_KEY"]] if os.environ.get("HELIXLOOM_API_KEY") else []
    )
    config = ServerConfig(
        model=args.model,
        adapters=adapters,
        api_keys=dict(key_label(k) for k in keys),
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        default_max_tokens=args.max_tokens,
        helixnet_adapters={
            role: getattr(args, f"{role}_adapter")
            for role in ("actor", "critic", "regenerator")
            if getattr(args, f"{role}_adapter")
        },
        helixnet_format=args.format,
        helixnet_rounds=args.rounds,
        run_jobs=args.run_jobs,
    )
    if args.rounds < 1 or args.max_batch < 1 or args.max_queue < 1 or args.max_tokens < 1:
        raise HelixloomError("--rounds, --max-batch, --max-queue and --max-tokens must be at least 1")
    state = open_state(config, parse_command=args.parse_command)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(f"helixloom: serving {config.model} on http://{args.host}:{args.port}/v1", file=sys.stderr)
    try:
        uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="info")
    finally:
        state.close()
    return 0
