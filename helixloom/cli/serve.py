"""``helixloom serve``: the OpenAI-compatible server (``helixloom.server``)."""

from __future__ import annotations

import argparse
import os
import sys

from helixloom.errors import HelixloomError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``serve`` command."""
    from helixloom.cli.common import add_engine_flag

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
    add_engine_flag(serve)
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
        metavar="KEY",
        help="require this bearer key on /v1 and /api (repeatable; also $HELIXLOOM_API_KEY). The whole "
        "value is the key; sessions record a short hash of it, never the key",
    )
    serve.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="keys from FILE, one per line as KEY or LABEL KEY (sessions record the label); keeps keys out "
        "of the process list",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name clients reach this server by (the Host header), besides loopback names and --host; "
        "repeatable; '*' allows any. Stops DNS-rebinding pages from reaching a local server",
    )
    serve.add_argument(
        "--allow-unauthenticated-network",
        action="store_true",
        help="let a --host other than loopback serve without an API key (anyone who can reach the port can "
        "use the models, the store and the jobs API)",
    )
    serve.add_argument(
        "--allow-job-model",
        action="append",
        default=[],
        metavar="SPEC",
        help="a model spec jobs submitted over HTTP may name (e.g. openai:URL#MODEL as a teacher or judge), "
        "besides the served model and default; repeatable",
    )
    serve.add_argument("--max-batch", type=int, default=8, help="most requests per engine batch (default 8)")
    serve.add_argument("--max-queue", type=int, default=64, help="waiting requests before 503 (default 64)")
    serve.add_argument(
        "--max-tokens", type=int, default=512, help="max_tokens when a request gives none (default 512)"
    )
    for role in ("actor", "critic", "regenerator"):
        serve.add_argument(f"--{role}-adapter", metavar="NAME_OR_PATH", help=f"adapter for helixnet's {role}")
    serve.add_argument(
        "--helixnet",
        metavar="NAME",
        help="use the HelixNet set NAME (made by `helixloom train helixnet`) for helixnet's roles",
    )
    serve.add_argument("--format", default="helixnet", metavar="NAME_OR_FILE", help="helixnet prompt format")
    serve.add_argument(
        "--rounds", type=int, default=1, help="helixnet critique/regenerate rounds (default 1)"
    )
    serve.add_argument(
        "--gate",
        action="store_true",
        help="helixnet: keep a regeneration only when the yes/no evaluator (on the served model) scores it "
        "above the answer it rewrote; the result says which was kept, with both scores (a request's "
        "extra body field gate: true/false overrides it)",
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

    from helixloom.cli.common import helixnet_roles
    from helixloom.server import ServerConfig, create_app, open_state
    from helixloom.server.security import KeyRing, check_bind, read_key_file

    adapters = {}
    for item in args.adapter:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise HelixloomError(f"--adapter {item!r} is not NAME=PATH", param="adapter")
        adapters[name] = path
    keys = list(args.api_key)
    if "HELIXLOOM_API_KEY" in os.environ:  # an exported but empty variable is refused, not "no auth"
        keys.append(os.environ["HELIXLOOM_API_KEY"])
    ring = KeyRing.of(keys, read_key_file(args.api_key_file) if args.api_key_file else None)
    check_bind(args.host, ring, args.allow_unauthenticated_network)
    config = ServerConfig(
        model=args.model,
        engine=args.engine,
        adapters=adapters,
        api_keys=dict(ring.keys),
        host=args.host,
        allowed_hosts=tuple(args.allowed_host),
        job_models=tuple(args.allow_job_model),
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        default_max_tokens=args.max_tokens,
        helixnet_adapters=helixnet_roles(args),
        helixnet_format=args.format,
        helixnet_rounds=args.rounds,
        helixnet_gate=args.gate,
        run_jobs=args.run_jobs,
    )
    if args.rounds < 1 or args.max_batch < 1 or args.max_queue < 1 or args.max_tokens < 1:
        raise HelixloomError("--rounds, --max-batch, --max-queue and --max-tokens must be at least 1")
    state = open_state(config, command_parser=args.command_parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(f"helixloom: serving {config.model} on http://{args.host}:{args.port}/v1", file=sys.stderr)
    try:
        uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="info")
    finally:
        state.close()
    return 0
