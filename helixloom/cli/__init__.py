"""The ``helixloom`` command line. Thin: it parses flags, calls the Python API and prints.

Errors a user can cause print one line (``helixloom: error: ...``) and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from helixloom import __version__
from helixloom.errors import HelixloomError

DEFAULT_TEMPERATURE = 0.8  # llama.cpp's defaults: lively but on topic for small models
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 40


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    _quiet_libraries()
    try:
        if getattr(args, "job", None) or args.run_job_id:
            return _run_as_job(args, list(sys.argv[1:] if argv is None else argv))
        return int(args.run(args) or 0)
    except HelixloomError as exc:
        print(f"helixloom: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nhelixloom: interrupted", file=sys.stderr)
        return 130


def _run_as_job(args: argparse.Namespace, argv: list[str]) -> int:
    """Run a long command inside a job (see helixloom.jobs): its progress and end go to the store."""
    from helixloom import jobs
    from helixloom.paths import ensure_home

    ensure_home()
    if args.run_job_id and not getattr(args, "job", None):
        raise HelixloomError("--job-id is only for job commands (learn, iterate, train, prompts, eval)")
    words = [a for a in argv if a != "--job-id" and a != args.run_job_id]
    params = {"argv": words, "launcher": "cli"}
    try:
        name = getattr(args, "name", None)
        with jobs.run_job(args.job, name=name, params=params, job_id=args.run_job_id) as job:
            code = int(args.run(args) or 0)
            if code == 130:  # the command caught ^C itself (after saving its work)
                raise KeyboardInterrupt
            if code != 0:
                job.error = f"exited with code {code}"
            return code
    except jobs.JobCancelled:
        print("\nhelixloom: cancelled; checkpoints are kept (continue with --resume)", file=sys.stderr)
        return 143


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helixloom",
        description="Make open LLMs answer better and learn from their users, on your own machine.",
        epilog="State lives under $HELIXLOOM_HOME (default ~/.helixloom). "
        "Run `helixloom COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"helixloom {__version__}")
    # The server starts queued jobs as `helixloom --job-id ID COMMAND ...`; not for people.
    parser.add_argument("--job-id", dest="run_job_id", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

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

    chat = sub.add_parser(
        "chat",
        help="HelixNet chat: actor answers, critic critiques, regenerator rewrites",
        description="Chat through HelixNet: the actor answers, the critic critiques the answer, the "
        "regenerator rewrites it from the critique (each stage streamed under its label). Roles run on "
        "three models (--actor-model ...), or on one base model with one LoRA adapter per role "
        "(--base with --actor-adapter ..., HelixNet-LMoE); with no flags every role uses the default "
        "model. Interactive commands: /reset starts a new conversation, /exit quits.",
    )
    chat.add_argument(
        "--base", default="default", metavar="SPEC", help="model for roles without --ROLE-model"
    )
    for role in ("actor", "critic", "regenerator"):
        chat.add_argument(f"--{role}-model", metavar="SPEC", help=f"the {role}'s own model (default: --base)")
        chat.add_argument(f"--{role}-adapter", metavar="NAME_OR_PATH", help=f"LoRA adapter for the {role}")
    chat.add_argument(
        "--adapter",
        metavar="NAME_OR_PATH",
        help="plain chat (no HelixNet) with this adapter on --base; an adapter made by `helixloom learn` "
        "brings its system prompt, and its answers' [DOC_ID:...] citations are mapped to the source files",
    )
    chat.add_argument(
        "--rounds", type=int, default=1, help="critique/regenerate rounds per question (default 1)"
    )
    chat.add_argument("--system", help="system text (default: the format's, HelixNet's for helixnet)")
    chat.add_argument(
        "--format",
        default="helixnet",
        metavar="NAME_OR_FILE",
        help="prompt format: helixnet (the seed's, byte for byte), instruct (for chat-template models), "
        "or a .yaml file",
    )
    add_sampling_flags(chat, temperature=0.75, top_p=1.0, top_k=50, max_tokens=1024)
    chat.add_argument(
        "--no-token-healing",
        dest="token_healing",
        action="store_false",
        help="do not back up over a prompt's last token (on by default: the seed's prompts end in a space)",
    )
    chat.add_argument("--once", metavar="QUESTION", help="answer one question and exit")
    chat.add_argument(
        "--json",
        action="store_true",
        help="with --once: print {actor, critique, regeneration, session_id, usage, timings}",
    )
    chat.set_defaults(run=cmd_chat)

    learn = sub.add_parser(
        "learn",
        help="learn documents: question/answer pairs from a teacher, then a LoRA that cites them",
        description="Turn documents (.txt .md .html .pdf .json conversations, folders, .zip) into "
        "question/answer pairs written by a teacher model through a suite of prompts, fine-tune a LoRA "
        "adapter NAME on them, and register it with a system prompt that keeps answers to the documents. "
        "Answers cite [DOC_ID:...], mapped back to the files. --review stops after the dataset so you can "
        "edit it; --resume continues after a review or an interruption.",
    )
    learn.add_argument("paths", nargs="*", metavar="PATH", help="files, folders or .zip archives")
    learn.add_argument("--name", required=True, help="name of the dataset and of the adapter")
    learn.add_argument(
        "--base", default="default", metavar="SPEC", help="the model to fine-tune (default: default)"
    )
    learn.add_argument("--teacher", metavar="SPEC", help="model that writes the pairs (default: --base)")
    learn.add_argument("--teacher-url", metavar="URL", help="an OpenAI-compatible server as the teacher")
    learn.add_argument("--teacher-model", metavar="MODEL", help="the model name on --teacher-url")
    learn.add_argument("--review", action="store_true", help="stop after writing the dataset, to edit it")
    learn.add_argument(
        "--resume", action="store_true", help="continue NAME after --review or an interruption"
    )
    learn.add_argument(
        "--questions", type=int, default=10, help="questions asked per prompt and chunk (default 10)"
    )
    learn.add_argument(
        "--chunk-tokens", type=int, default=1024, help="chunk size in teacher tokens (default 1024)"
    )
    learn.add_argument("--prompts", metavar="A,B", help="only these prompts of the suite (comma-separated)")
    learn.add_argument("--suite", metavar="FILE", help="a prompt suite YAML instead of the built-in one")
    add_sft_flags(learn)
    learn.set_defaults(run=cmd_learn, job="learn")

    ev = sub.add_parser("eval", help="evaluate answers", description="Evaluations.")
    esub = ev.add_subparsers(title="evaluations", metavar="EVAL")
    eqa = esub.add_parser(
        "qa",
        help="key-fact QA: the base model against base + adapter",
        description="Ask each question of a JSONL file ({question, facts: [...]}) with the base model and "
        "with the adapter (its system prompt applied), and score the share of expected facts each answer "
        "contains: what the fine-tune learned.",
    )
    eqa.add_argument("--adapter", required=True, metavar="NAME_OR_PATH")
    eqa.add_argument("--questions", required=True, metavar="FILE")
    eqa.add_argument("--base", default="default", metavar="SPEC")
    eqa.add_argument("--max-tokens", type=int, default=128)
    eqa.add_argument("--json", action="store_true", help="print every answer and the scores as JSON")
    eqa.set_defaults(run=cmd_eval_qa, job="eval")
    from helixloom.cli import evals as cli_evals

    cli_evals.register(esub)
    ev.set_defaults(run=lambda _: _usage(ev))

    wv = sub.add_parser(
        "weave",
        help="Weave tree search: continuations steered by a yes/no evaluator (MiniHF)",
        description="Search a tree of continuations of PROMPT: nodes of --tokens-per-node tokens, expanded "
        "in batches, scored by asking the evaluator model each --question (yes/no log-odds), committed one "
        "level per round. Every node is stored as a tree; the best branch is printed.",
    )
    wv.add_argument("prompt", nargs="?", help="the text to continue; '-' reads it from standard input")
    wv.add_argument(
        "--from-node", metavar="NODE_ID", help="continue a stored tree: search under this node (no PROMPT)"
    )
    wv.add_argument(
        "--question",
        action="append",
        default=[],
        metavar="TEXT",
        help="a yes/no question about the continuation (repeatable; answer yes is good). "
        "Prefix with 'no:' when no is the good answer, and 'W*' for a weight, e.g. '2*Is it sad?'",
    )
    add_model_flags(wv)
    wv.add_argument("--evaluator-model", metavar="SPEC", help="evaluator model (default: --model)")
    wv.add_argument("--evaluator-adapter", metavar="NAME_OR_PATH", help="LoRA adapter for the evaluator")
    wv.add_argument(
        "--template", metavar="FILE", help="evaluator prompt with {prompt}, {response}, {question}"
    )
    wv.add_argument("--budget", type=int, default=72, help="nodes to generate in all (default 72)")
    wv.add_argument("--round-budget", type=int, default=24, help="nodes per round (default 24)")
    wv.add_argument("--n-expand", type=int, default=8, help="children per expansion (default 8)")
    wv.add_argument("--tokens-per-node", type=int, default=32, help="tokens per node (default 32)")
    wv.add_argument("--beam-width", type=int, default=1, help="branches kept per round (default 1)")
    wv.add_argument("--max-lookahead", type=int, default=3, help="levels below the committed one (default 3)")
    wv.add_argument("--temperature", type=float, default=0.25, help="of the evaluator scores (default 0.25)")
    wv.add_argument("--sampling-temperature", type=float, default=0.9, help="of the generator (default 0.9)")
    wv.add_argument("--seed", type=int, default=0, help="the same seed grows the same tree (default 0)")
    wv.add_argument(
        "--json", action="store_true", help="print the best branches, scores and the tree id as JSON"
    )
    wv.set_defaults(run=cmd_weave)

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

    sessions = sub.add_parser("sessions", help="recorded sessions", description="Recorded sessions.")
    ssub = sessions.add_subparsers(title="actions", metavar="ACTION")
    slist = ssub.add_parser("list", help="list sessions, newest first")
    slist.add_argument("--kind", help="generate, helixnet, api, ...")
    slist.add_argument("--model", help="only this model")
    slist.add_argument("--rating", choices=["up", "down"], help="only sessions rated so")
    slist.add_argument("--since", help="ISO date or time (inclusive)")
    slist.add_argument("--until", help="ISO date or time (exclusive)")
    slist.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    slist.add_argument("--json", action="store_true", help="print JSON")
    slist.set_defaults(run=cmd_sessions_list)
    sshow = ssub.add_parser("show", help="one session with its messages")
    sshow.add_argument("session_id")
    sshow.add_argument("--json", action="store_true", help="print JSON")
    sshow.set_defaults(run=cmd_sessions_show)
    sexp = ssub.add_parser("export", help="export sessions with their messages and ratings")
    sexp.add_argument("--format", choices=["jsonl"], default="jsonl", help="one JSON object per line")
    sexp.add_argument("--kind", help="only this kind")
    sexp.add_argument("--rating", choices=["up", "down"], help="only sessions rated so")
    sexp.add_argument("--out", help="file to write (default stdout)")
    sexp.set_defaults(run=cmd_sessions_export)
    sessions.set_defaults(run=lambda _: _usage(sessions))

    export = sub.add_parser(
        "export",
        help="training data from the loom's ratings and choices (JSONL)",
        description="Turn loom trees into training data. sft: one row per thumbs-up node "
        "({prompt, completion}). preferences: {prompt, chosen, rejected} pairs between siblings, where a "
        "branch wins by rating, by leading to a thumbs-up, or by being explored further.",
    )
    export.add_argument("kind", choices=["sft", "preferences"])
    export.add_argument("--out", help="file to write (default stdout)")
    export.set_defaults(run=cmd_export)

    models = sub.add_parser(
        "models", help="list the models that can be used", description="List model specs."
    )
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(run=cmd_models)

    adapters = sub.add_parser(
        "adapters", help="manage registered LoRA adapters", description="Manage adapters."
    )
    asub = adapters.add_subparsers(title="actions", metavar="ACTION")
    alist = asub.add_parser("list", help="list registered adapters")
    alist.add_argument("--json", action="store_true", help="print JSON")
    alist.set_defaults(run=cmd_adapters_list)
    aadd = asub.add_parser(
        "add",
        help="register a PEFT LoRA folder under a name",
        description="Register a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) "
        "under NAME, so --adapter NAME and the server's model NAME use it.",
    )
    aadd.add_argument("name", help="the name to use it by")
    aadd.add_argument("path", help="the PEFT adapter folder")
    aadd.add_argument("--replace", action="store_true", help="replace an adapter already registered as NAME")
    aadd.set_defaults(run=cmd_adapters_add)
    aext = asub.add_parser(
        "extract",
        help="make a LoRA adapter from a full fine-tune (truncated SVD of the weight deltas)",
        description="Extract a LoRA adapter from a fully fine-tuned model: for every linear layer but the "
        "output head, the best rank-r approximation (truncated SVD) of W_tuned - W_base, written as a "
        "standard PEFT adapter whose applied update (alpha/r)*B*A equals that approximation. This is how "
        "HelixNet-LMoE made its three role adapters (rank 64, alpha 128).",
    )
    aext.add_argument(
        "--base", required=True, metavar="SPEC", help="the base model the fine-tune started from"
    )
    aext.add_argument("--tuned", required=True, metavar="SPEC", help="the fully fine-tuned model")
    aext.add_argument("--rank", type=int, default=64, help="LoRA rank r (default 64)")
    aext.add_argument("--alpha", type=float, default=128.0, help="LoRA alpha (default 128)")
    aext.add_argument("--out", required=True, help="the adapter folder to write")
    aext.add_argument("--name", help="also register the adapter under this name")
    aext.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    aext.set_defaults(run=cmd_adapters_extract)
    aexp = asub.add_parser(
        "export-gguf",
        help="convert a PEFT LoRA to a GGUF LoRA for llama.cpp",
        description="Write a registered adapter (or a PEFT folder) as a GGUF LoRA that llama.cpp (the "
        "llamacpp backend, llama-server --lora) applies to the base model's GGUF file. By default the file "
        "is written into the adapter folder as adapter_model.gguf, where the llamacpp backend finds it.",
    )
    aexp.add_argument("name", metavar="NAME_OR_PATH", help="registered adapter name or PEFT folder")
    aexp.add_argument(
        "--base",
        default="default",
        metavar="SPEC",
        help="the base model: default, or the .gguf file llama.cpp loads",
    )
    aexp.add_argument("--out", help="the .gguf file to write (default: NAME's folder/adapter_model.gguf)")
    aexp.set_defaults(run=cmd_adapters_export_gguf)
    arm = asub.add_parser("remove", help="forget a registered adapter (its folder is left alone)")
    arm.add_argument("name")
    arm.set_defaults(run=cmd_adapters_remove)
    adapters.set_defaults(run=lambda _: _usage(adapters))

    from helixloom.cli import iterate as cli_iterate
    from helixloom.cli import jobs as cli_jobs
    from helixloom.cli import prompts as cli_prompts
    from helixloom.cli import train as cli_train

    cli_prompts.register(sub)
    cli_train.register(sub)
    cli_iterate.register(sub)
    cli_jobs.register(sub)
    return parser


def usage(parser: argparse.ArgumentParser) -> int:
    return _usage(parser)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def add_sft_flags(p: argparse.ArgumentParser, config_class: Any = None, title: str = "fine-tuning") -> None:
    """The fine-tuning flags, one per field of the config dataclass (its single source of truth):
    ``LoraSFTConfig`` by default, or a subclass such as ``LoraDPOConfig``."""
    from dataclasses import fields

    from helixloom.training.sft import LoraSFTConfig

    cls = config_class or LoraSFTConfig
    group = p.add_argument_group(title)
    helps = cls.help()
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if f.name == "target_modules":
            group.add_argument(flag, nargs="+", default=None, help=f"{helps[f.name]} (default: all-linear)")
        elif isinstance(default, bool):
            group.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{helps[f.name]} (default {'on' if default else 'off'})",
            )
        else:
            group.add_argument(
                flag, type=type(default), default=None, help=f"{helps[f.name]} (default {default})"
            )


def sft_config_from(args: argparse.Namespace, config_class: Any = None) -> Any:
    from dataclasses import fields

    from helixloom.training.sft import LoraSFTConfig

    cls = config_class or LoraSFTConfig
    given = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
    if "target_modules" in given:
        given["target_modules"] = tuple(given["target_modules"])
    return cls(**given)


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="default",
        metavar="SPEC",
        help="'default' (embedded Gemma 3 270M), a local Hugging Face folder, a .gguf file, or org/name",
    )
    p.add_argument("--adapter", metavar="NAME_OR_PATH", help="a registered adapter name or a PEFT folder")


def add_sampling_flags(
    p: argparse.ArgumentParser,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    top_k: int = DEFAULT_TOP_K,
    max_tokens: int = 256,
) -> None:
    p.add_argument(
        "--max-tokens", type=int, default=max_tokens, help=f"most new tokens (default {max_tokens})"
    )
    p.add_argument(
        "--temperature", type=float, default=temperature, help=f"0 is greedy (default {temperature})"
    )
    p.add_argument("--top-p", type=float, default=top_p, help=f"nucleus mass (default {top_p})")
    p.add_argument("--top-k", type=int, default=top_k, help=f"0 keeps all (default {top_k})")
    p.add_argument("--seed", type=int, help="sampling seed; the same seed repeats the text")
    p.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="stop at TEXT (not printed); repeatable"
    )


def sampling_from(args: argparse.Namespace) -> Any:
    from helixloom.engine import sampling

    return sampling(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=tuple(args.stop),
        token_healing=getattr(args, "token_healing", False),
    )


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


# ---------------------------------------------------------------------------- commands


def cmd_generate(args: argparse.Namespace) -> int:
    from helixloom import adapters as adapter_registry
    from helixloom import models
    from helixloom.completion import complete
    from helixloom.engine import load_engine
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
        engine = load_engine(args.model)
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


def cmd_chat(args: argparse.Namespace) -> int:
    from helixloom import helixnet
    from helixloom.store import Store

    if args.json and args.once is None:
        raise HelixloomError("--json needs --once", "pass --once QUESTION, or drop --json for a chat")
    if args.once is not None and not args.once.strip():
        raise HelixloomError("the question is empty", "pass some text to --once")
    params = sampling_from(args)
    if args.adapter is not None:
        role_flags = [
            f"--{r}-{k}" for r in helixnet.STAGES for k in ("model", "adapter") if getattr(args, f"{r}_{k}")
        ]
        if role_flags or args.rounds != 1:
            raise HelixloomError(
                f"--adapter is plain chat; it does not mix with {', '.join(role_flags) or '--rounds'}"
            )
        return _plain_chat(args, params)
    fmt = helixnet.PromptFormat.load(args.format)
    specs = {
        role: helixnet.RoleSpec(
            model=getattr(args, f"{role}_model") or args.base,
            adapter=getattr(args, f"{role}_adapter"),
            sampling=params,
        )
        for role in helixnet.STAGES
    }
    with _store() as store:
        assert isinstance(store, Store)
        net = helixnet.build(specs, store=store, prompt_format=fmt, system=args.system, rounds=args.rounds)
        chat = helixnet.HelixChat(net, store)
        if args.once is not None:
            turn = chat.ask(args.once, on_event=None if args.json else _print_stage)
            if args.json:
                print(json.dumps(_turn_json(turn)))
            return 0
        return _interactive(chat)


def _plain_chat(args: argparse.Namespace, params: Any) -> int:
    from helixloom import adapters as adapter_registry
    from helixloom import chat, completion, models
    from helixloom.documents import dataset, learn
    from helixloom.engine import GenerationRequest, GenerationResult, StreamDelta, load_engine

    models.resolve(args.base)
    with _store() as store:
        name, folder = adapter_registry.resolve(store, args.adapter, model=args.base)
        meta = learn.adapter_meta(store, name)
        engine = load_engine(args.base)
        engine.load_adapter(name, str(folder))
        system = args.system or meta.get("system_prompt")
        history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        session_id = None

        def ask(question: str, show: bool) -> dict[str, Any]:
            nonlocal session_id
            history.append({"role": "user", "content": question})
            rendered = chat.render(engine, history)
            request_params = params.model_copy(
                update={"stop": (*params.stop, *rendered.stop), "token_healing": rendered.token_healing}
            )
            result: GenerationResult | None = None
            for event in engine.stream(GenerationRequest(rendered.prompt, request_params, name)):
                if isinstance(event, StreamDelta):
                    if show:
                        sys.stdout.write(event.text)
                        sys.stdout.flush()
                else:
                    result = event
            assert result is not None
            answer = result.text.strip()
            history.append({"role": "assistant", "content": answer})
            cited = dataset.citations(answer, meta.get("documents") or {})
            inputs = [(m["role"], m["content"]) for m in history[:-1]]
            session_id = completion.record(
                store,
                engine,
                inputs,
                request_params,
                [result],
                adapter=name,
                kind="chat",
                meta={"citations": cited},
            )
            if show:
                print()
                for c in cited:
                    print(f"  source [{c['doc_id']}]: {c['source']} ({c['title']})")
            return {
                "answer": answer,
                "citations": cited,
                "session_id": session_id,
                "usage": {
                    "prompt_tokens": result.usage.prompt_tokens,
                    "completion_tokens": result.usage.completion_tokens,
                },
            }

        if args.once is not None:
            body = ask(args.once, show=not args.json)
            if args.json:
                print(json.dumps(body))
            return 0
        print(f"Chat with {name} on {args.base}. /reset starts over, /exit quits.", file=sys.stderr)
        while True:
            try:
                question = input("You: ")
            except EOFError:
                print()
                return 0
            if question.strip() in ("/exit", "/quit"):
                return 0
            if question.strip() == "/reset":
                del history[1 if system else 0 :]
                print("(new conversation)")
                continue
            if question.strip():
                ask(question, show=True)


_LABELS = {"actor": "ACTOR", "critic": "CRITIQUE", "regenerator": "REGENERATION"}


def _print_stage(event: Any) -> None:
    if event.kind == "start":
        label = _LABELS[event.stage] + (f" (round {event.round})" if event.round > 1 else "")
        sys.stdout.write(f"{label}: ")
    elif event.kind == "delta":
        sys.stdout.write(event.text)
    else:
        sys.stdout.write("\n\n")
    sys.stdout.flush()


def _interactive(chat: Any) -> int:
    print("HelixNet chat. /reset starts over, /exit quits.", file=sys.stderr)
    while True:
        try:
            question = input("You: ")
        except EOFError:
            print()
            return 0
        command = question.strip()
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            chat.reset()
            print("(new conversation)")
            continue
        if not command:
            continue
        chat.ask(question, on_event=_print_stage)


def _turn_json(turn: Any) -> dict[str, Any]:
    def usage(u: Any) -> dict[str, int]:
        return {
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens,
        }

    return {
        "question": turn.question,
        "actor": turn.actor.text,
        "critique": turn.critique,
        "regeneration": turn.regeneration,
        "session_id": turn.session_id,
        "rounds": [
            {"critique": c.text, "regeneration": r.text}
            for c, r in zip(turn.critiques, turn.regenerations, strict=True)
        ],
        "usage": usage(turn.usage),
        "stages": [
            {
                "stage": s.stage,
                "round": s.round,
                "model": s.model,
                "adapter": s.adapter,
                "finish_reason": s.finish_reason,
                "usage": usage(s.usage),
            }
            for s in turn.stages
        ],
        "timings": {
            f"{s.stage}" + (f"_{s.round}" if s.round > 1 else ""): s.timings["total"] for s in turn.stages
        },
    }


def cmd_learn(args: argparse.Namespace) -> int:
    from helixloom import jobs, models
    from helixloom.documents import learn
    from helixloom.documents.qa import Suite
    from helixloom.engine.pool import EnginePool

    def say(text: str) -> None:
        print(f"helixloom: {text}", file=sys.stderr)
        jobs.log(text)

    def generate(run: Callable[[Callable[[int, int], None]], Any]) -> Any:
        """Run question generation under a progress bar; on ^C say how to resume it."""
        bar = jobs.progress_bar(0, unit="call", desc="question/answer pairs")

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            return run(progress)
        except KeyboardInterrupt:
            bar.close()
            say(f"finished units are kept; continue with: helixloom learn --resume --name {args.name}")
            raise
        finally:
            bar.close()

    stage = learn.stage(args.name)
    with _store() as store:
        if args.resume:
            if args.paths:
                raise HelixloomError("--resume takes no PATH: it continues the dataset NAME as it is")
            if stage is None:
                raise HelixloomError(
                    f"nothing to resume: no dataset {args.name}", "start with helixloom learn PATH --name"
                )
            if stage == "trained":
                say(f"{args.name} is already trained; `helixloom chat --adapter {args.name}` to use it")
                return 0
            if stage == "generating":
                plan = learn.generation_plan(args.name) or {}
                teacher_spec = str(plan.get("teacher"))
                models.resolve(teacher_spec)
                teacher = EnginePool().get(teacher_spec)
                say(f"continuing question generation for {args.name} (teacher {teacher_spec})")
                train_file, _ = generate(
                    lambda progress: learn.resume_generation(
                        args.name, teacher, say=say, on_progress=progress
                    )
                )
                if plan.get("review") or args.review:
                    say(f"review or edit {train_file}, then run: helixloom learn --resume --name {args.name}")
                    return 0
                result = learn.train(args.name, store, say=say)
            else:
                result = learn.train(args.name, store, resume=True, say=say)
            _report_training(result, args.name)
            return 0
        if not args.paths:
            raise HelixloomError("no documents given", "helixloom learn PATH... --name NAME")
        if stage is not None:
            raise HelixloomError(
                f"a dataset named {args.name} exists"
                + (" (its question generation was interrupted)" if stage == "generating" else ""),
                "continue it with --resume, or pick another --name",
            )
        if args.teacher and args.teacher_url:
            raise HelixloomError("give --teacher or --teacher-url, not both")
        if args.teacher_url:
            if not args.teacher_model:
                raise HelixloomError("--teacher-url needs --teacher-model")
            teacher_spec = f"openai:{args.teacher_url}#{args.teacher_model}"
        else:
            teacher_spec = args.teacher or args.base
        sft = sft_config_from(args)
        suite = Suite.load(args.suite)
        if args.prompts:
            suite = suite.only([p.strip() for p in args.prompts.split(",") if p.strip()])
        models.resolve(args.base)
        models.resolve(teacher_spec)
        teacher = EnginePool().get(teacher_spec)
        train_file, _ = generate(
            lambda progress: learn.prepare(
                args.name,
                args.paths,
                teacher,
                base=args.base,
                suite=suite,
                num_questions=args.questions,
                chunk_tokens=args.chunk_tokens,
                sft=sft,
                teacher_spec=teacher_spec,
                review=args.review,
                say=say,
                on_progress=progress,
            )
        )
        if args.review:
            say(f"review or edit {train_file}, then run: helixloom learn --resume --name {args.name}")
            return 0
        result = learn.train(args.name, store, say=say)
    _report_training(result, args.name)
    return 0


def _report_training(result: Any, name: str) -> None:
    from helixloom import jobs

    jobs.set_result(result)
    resumed = f", resumed at step {result.resumed_from_step}" if result.resumed_from_step else ""
    loss = f", final loss {result.final_loss:.3f}" if result.final_loss is not None else ""
    print(
        f"trained adapter {name}: {result.steps} steps{resumed}{loss}, {result.seconds:.0f} s "
        f"({result.tokens / max(result.seconds, 1e-9):.0f} tokens/s) -> {result.adapter_dir}"
    )
    print(f'ask it: helixloom chat --adapter {name} (or model "{name}" on the server)')


def cmd_eval_qa(args: argparse.Namespace) -> int:
    from helixloom import adapters as adapter_registry
    from helixloom import models
    from helixloom.documents import learn
    from helixloom.engine import load_engine, sampling
    from helixloom.evals import qa

    items = qa.load(args.questions)
    params = sampling(temperature=0, max_tokens=args.max_tokens)
    models.resolve(args.base)
    with _store() as store:
        name, folder = adapter_registry.resolve(store, args.adapter, model=args.base)
        system = learn.adapter_meta(store, name).get("system_prompt")
    engine = load_engine(args.base)
    engine.load_adapter(name, str(folder))
    before = qa.answer(engine, items, params)
    after = qa.answer(engine, items, params, adapter=name, system=system)
    report = {
        "questions": len(items),
        "base_score": qa.mean_score(before),
        "adapter_score": qa.mean_score(after),
    }
    if args.json:
        rows = [
            {
                "question": b.item.question,
                "facts": list(b.item.facts),
                "base": b.answer,
                "base_found": list(b.found),
                "adapter": a.answer,
                "adapter_found": list(a.found),
            }
            for b, a in zip(before, after, strict=True)
        ]
        print(json.dumps({**report, "answers": rows}))
        return 0
    for b, a in zip(before, after, strict=True):
        print(b.item.question)
        print(f"  base    {b.score:.0%}: {b.answer[:100]!r}")
        print(f"  {name:<7} {a.score:.0%}: {a.answer[:100]!r}")
    found = f"base {report['base_score']:.0%}, {name} {report['adapter_score']:.0%}"
    print(f"\nkey facts found: {found} ({len(items)} questions)")
    return 0


def parse_question(text: str) -> Any:
    from helixloom.weave.evaluator import parse_question as parse

    return parse(text)


def cmd_weave(args: argparse.Namespace) -> int:
    from pathlib import Path

    from helixloom import adapters as adapter_registry
    from helixloom import models, weave
    from helixloom.engine.pool import EnginePool

    if (args.prompt is None) == (args.from_node is None):
        raise HelixloomError("give either PROMPT or --from-node NODE_ID", "see helixloom weave --help")
    prompt = (sys.stdin.read() if args.prompt == "-" else args.prompt) if args.prompt is not None else ""
    if args.prompt is not None and not prompt.strip():
        raise HelixloomError("the prompt is empty", param="prompt")
    if not args.question:
        raise HelixloomError(
            "Weave needs at least one --question for the evaluator", "e.g. --question 'Is it sad?'"
        )
    questions = [parse_question(q) for q in args.question]
    config = weave.WeaveConfig(
        budget=args.budget,
        round_budget=args.round_budget,
        n_expand=args.n_expand,
        tokens_per_node=args.tokens_per_node,
        beam_width=args.beam_width,
        max_lookahead=args.max_lookahead,
        temperature=args.temperature,
        sampling_temperature=args.sampling_temperature,
        seed=args.seed,
    )
    template = None
    if args.template:
        if not Path(args.template).is_file():
            raise HelixloomError(f"template file {args.template} does not exist")
        template = Path(args.template).read_text()
    evaluator_spec = args.evaluator_model or args.model
    models.resolve(args.model)
    models.resolve(evaluator_spec)
    with _store() as store:
        parent = None
        if args.from_node is not None:
            from helixloom import loom

            parent = store.get_node(args.from_node)
            if parent is None:
                raise HelixloomError(
                    f"no node {args.from_node}", "node ids are in weave --json output and the loom"
                )
            prompt = loom.branch_text(store, parent.id)
        adapter = adapter_registry.resolve(store, args.adapter, model=args.model) if args.adapter else None
        ev_adapter = (
            adapter_registry.resolve(store, args.evaluator_adapter, model=evaluator_spec)
            if args.evaluator_adapter
            else None
        )
        pool = EnginePool()
        engine = pool.get(args.model)
        if adapter:
            engine.load_adapter(adapter[0], str(adapter[1]))
        ev_engine = pool.get(evaluator_spec)
        if ev_adapter:
            ev_engine.load_adapter(ev_adapter[0], str(ev_adapter[1]))
        evaluator = weave.Evaluator(
            ev_engine, questions, template=template, adapter=ev_adapter[0] if ev_adapter else None
        )
        done = [0]

        def progress(node: Any) -> None:
            if node.parent is not None:
                done[0] += 1
                print(f"\rweave: {done[0]}/{config.budget} nodes", end="", file=sys.stderr, flush=True)

        result, tree_id = weave.run(
            prompt,
            engine,
            evaluator,
            config,
            adapter=adapter[0] if adapter else None,
            store=store,
            parent=parent,
            on_node=progress,
        )
        print(file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "text": result.text,
                    "tree_id": tree_id,
                    "generated": result.generated,
                    "best": [
                        {
                            "text": n.branch_text(include_root=False),
                            "score": n.score,
                            "depth": n.depth,
                            "node_id": n.node_id,
                        }
                        for n in result.best[:5]
                    ],
                }
            )
        )
    else:
        print(prompt + result.text)
        print(
            f"\n(tree {tree_id}: {result.generated} nodes; best score {result.best[0].score:.3f})",
            file=sys.stderr,
        )
    return 0


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
    state = open_state(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(f"helixloom: serving {config.model} on http://{args.host}:{args.port}/v1", file=sys.stderr)
    try:
        uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="info")
    finally:
        state.close()
    return 0


def _session_json(store: Any, session: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        **asdict(session),
        "messages": [asdict(m) for m in store.get_messages(session.id)],
        "ratings": [asdict(r) for r in store.ratings_for("session", session.id)],
    }


def cmd_sessions_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    with _store() as store:
        rows = store.list_sessions(
            kind=args.kind,
            model=args.model,
            rating=args.rating,
            since=args.since,
            until=args.until,
            limit=args.limit,
        )
    if args.json:
        print(json.dumps([asdict(s) for s in rows]))
        return 0
    for s in rows:
        print(f"{s.id}  {s.created_at[:19]}  {s.kind:<9} {str(s.model)[:24]:<24} {(s.title or '')[:60]!r}")
    if not rows:
        print("no sessions")
    return 0


def cmd_sessions_show(args: argparse.Namespace) -> int:
    with _store() as store:
        session = store.get_session(args.session_id)
        if session is None:
            raise HelixloomError(f"no session {args.session_id}", "see `helixloom sessions list`")
        body = _session_json(store, session)
    if args.json:
        print(json.dumps(body))
        return 0
    print(f"session {session.id} ({session.kind}, {session.model}, {session.created_at})")
    for m in body["messages"]:
        label = m["role"].upper() + (f" [{m['stage']}]" if m["stage"] else "")
        print(f"\n{label}: {m['content']}")
    for r in body["ratings"]:
        print(f"\nrated {'up' if r['score'] > 0 else 'down'}: {r['reason'] or ''}")
    return 0


def cmd_sessions_export(args: argparse.Namespace) -> int:
    def sessions(store: Any) -> Iterator[dict[str, Any]]:
        offset = 0
        while batch := store.list_sessions(kind=args.kind, rating=args.rating, limit=500, offset=offset):
            yield from (_session_json(store, session) for session in batch)
            offset += len(batch)

    return _write_jsonl(sessions, args.out, "sessions")


def cmd_export(args: argparse.Namespace) -> int:
    from helixloom import loom

    source = loom.export_sft if args.kind == "sft" else loom.export_preferences
    return _write_jsonl(source, args.out, f"{args.kind} rows")


def _write_jsonl(rows_of: Callable[[Any], Iterable[dict[str, Any]]], out_path: str | None, what: str) -> int:
    """Write the rows a store yields as JSONL to ``out_path`` (or stdout); say how many on stderr."""
    out = open(out_path, "w") if out_path else sys.stdout  # noqa: SIM115 - stdout is not ours to close
    count = 0
    try:
        with _store() as store:
            for row in rows_of(store):
                out.write(json.dumps(row) + "\n")
                count += 1
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {count} {what}", file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from helixloom import models
    from helixloom.paths import home

    rows = [
        {
            "spec": models.DEFAULT_SPEC,
            "name": models.DEFAULT_NAME,
            "status": "ready" if models.is_cached(models.resolve("default")) else "converted on first use",
        }
    ]
    for name, folder in models.cached_models():
        if name != models.DEFAULT_NAME:
            rows.append({"spec": str(folder), "name": name, "status": "ready"})
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        print(f"{row['spec']:<40} {row['name']:<28} {row['status']}")
    print(f"\nAlso: any local Hugging Face folder, a .gguf file, or org/name. State: {home()}")
    return 0


def _store() -> Any:
    from helixloom.paths import ensure_home
    from helixloom.store import Store

    ensure_home()
    return Store.open_default()


def cmd_adapters_list(args: argparse.Namespace) -> int:
    with _store() as store:
        records = store.list_adapters()
    if args.json:
        print(
            json.dumps(
                [
                    {"name": r.name, "path": str(r.path), "base_model": r.base_model, **(r.meta or {})}
                    for r in records
                ]
            )
        )
        return 0
    if not records:
        print("no adapters registered (add one with `helixloom adapters add NAME PATH`)")
    for r in records:
        print(f"{r.name:<24} rank={(r.meta or {}).get('rank')!s:<4} base={r.base_model}  {r.path}")
    return 0


def cmd_adapters_add(args: argparse.Namespace) -> int:
    from helixloom import adapters

    with _store() as store:
        record = adapters.register(store, args.name, args.path, replace=args.replace)
    print(f"registered adapter {record.name} -> {record.path}")
    return 0


def cmd_adapters_extract(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from helixloom import adapters, models
    from helixloom.training.extract import ExtractConfig, extract_lora

    config = ExtractConfig(rank=args.rank, alpha=args.alpha)
    models.resolve(args.base)
    models.resolve(args.tuned)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise HelixloomError(f"{out} exists and is not empty", "pick a new --out, or pass --overwrite")
    bar = tqdm(total=0, unit="layer", desc="extracting", file=sys.stderr)

    def progress(i: int, total: int, name: str) -> None:
        bar.total = total
        bar.set_postfix_str(name[-40:])
        bar.update(1)

    report = extract_lora(args.base, args.tuned, out, config, overwrite=args.overwrite, on_layer=progress)
    bar.close()
    for layer in report.layers:
        print(f"{layer.module:<60} relative error {layer.relative_error:.4f}")
    print(
        f"wrote {report.out}: {len(report.layers)} layers at rank {report.rank}, alpha {report.alpha:g}; "
        f"worst relative error {report.max_relative_error:.4f}"
    )
    for label, names in (
        ("unchanged linear layers (no LoRA needed)", report.skipped_unchanged),
        ("changed biases a LoRA cannot carry", report.bias_changed),
        ("changed non-linear weights a LoRA cannot carry", report.other_changed),
    ):
        if names:
            print(f"{label}: {len(names)} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
    if args.name:
        with _store() as store:
            adapters.register(store, args.name, out, replace=True)
        print(f"registered as {args.name}")
    return 0


def cmd_adapters_export_gguf(args: argparse.Namespace) -> int:
    from pathlib import Path

    from helixloom import adapters, gguf_lora
    from helixloom.engine.llamacpp import GGUF_ADAPTER_FILE

    with _store() as store:
        _, folder = adapters.resolve(store, args.name)
    base = gguf_lora.base_gguf_for(args.base)
    out = Path(args.out) if args.out else folder / GGUF_ADAPTER_FILE
    if out.suffix != ".gguf":
        raise HelixloomError(f"--out {out} must end in .gguf")
    done = gguf_lora.export(folder, base, out)
    print(
        f"wrote {done.out}: {done.tensors} LoRA layers, rank {done.rank}, alpha {done.alpha:g} ({done.arch})"
    )
    return 0


def cmd_adapters_remove(args: argparse.Namespace) -> int:
    with _store() as store:
        if not store.remove_adapter(args.name):
            raise HelixloomError(f"no adapter named {args.name!r}", "see `helixloom adapters list`")
    print(f"removed adapter {args.name}")
    return 0


def _quiet_libraries() -> None:
    """Library chatter (deprecation notices, load bars) is not for our users; errors still show."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


if __name__ == "__main__":
    sys.exit(main())
