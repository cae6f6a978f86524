"""The ``helixloom`` command line. Thin: it parses flags, calls the Python API and prints.

Each command (or group of commands) lives in its own module here with a ``register(sub)`` that adds
its parser; this module builds the parser from them, runs the chosen command (inside a job when it is
a long one) and holds the flags and helpers the commands share.

Errors a user can cause print one line (``helixloom: error: ...``) and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from helixloom import __version__
from helixloom.cli.weave import parse_question as parse_question
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

    from helixloom.cli import adapters as cli_adapters
    from helixloom.cli import chat as cli_chat
    from helixloom.cli import evals as cli_evals
    from helixloom.cli import generate as cli_generate
    from helixloom.cli import iterate as cli_iterate
    from helixloom.cli import jobs as cli_jobs
    from helixloom.cli import learn as cli_learn
    from helixloom.cli import prompts as cli_prompts
    from helixloom.cli import serve as cli_serve
    from helixloom.cli import sessions as cli_sessions
    from helixloom.cli import train as cli_train
    from helixloom.cli import weave as cli_weave

    # This order is the order of the commands in `helixloom --help`.
    for command in (
        cli_generate,
        cli_chat,
        cli_learn,
        cli_evals,
        cli_weave,
        cli_serve,
        cli_sessions,
        cli_adapters,
        cli_prompts,
        cli_train,
        cli_iterate,
        cli_jobs,
    ):
        command.register(sub)
    return parser


def usage(parser: argparse.ArgumentParser) -> int:
    return _usage(parser)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def add_config_flags(
    p: argparse.ArgumentParser, config_class: Any, title: str, aliases: dict[str, list[str]] | None = None
) -> None:
    """One flag per field of a settings dataclass (its single source of truth), its default in the help:
    tuples take several values, booleans get --flag/--no-flag. Unset flags stay None (see
    ``given_config``), so the dataclass's own defaults apply."""
    from dataclasses import MISSING, fields

    group = p.add_argument_group(title)
    helps = config_class.help()
    for f in fields(config_class):
        flags = ["--" + f.name.replace("_", "-"), *(aliases or {}).get(f.name, [])]
        default = f.default if f.default is not MISSING else None
        if isinstance(default, tuple):
            group.add_argument(
                *flags,
                dest=f.name,
                nargs="+",
                default=None,
                help=f"{helps[f.name]} (default: {' '.join(default)})",
            )
        elif isinstance(default, bool):
            group.add_argument(
                *flags,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{helps[f.name]} (default {'on' if default else 'off'})",
            )
        else:
            group.add_argument(
                *flags,
                dest=f.name,
                type=type(default),
                default=None,
                help=f"{helps[f.name]} (default {default})",
            )


def given_config(args: argparse.Namespace, config_class: Any) -> dict[str, Any]:
    """The settings flags given on the command line (tuple fields as tuples)."""
    from dataclasses import fields

    given = {}
    for f in fields(config_class):
        value = getattr(args, f.name, None)
        if value is not None:
            given[f.name] = tuple(value) if isinstance(f.default, tuple) else value
    return given


def add_sft_flags(p: argparse.ArgumentParser, config_class: Any = None, title: str = "fine-tuning") -> None:
    """The fine-tuning flags: ``LoraSFTConfig`` by default, or a subclass such as ``LoraDPOConfig``."""
    from helixloom.training.configs import LoraSFTConfig

    add_config_flags(p, config_class or LoraSFTConfig, title)


def sft_config_from(args: argparse.Namespace, config_class: Any = None) -> Any:
    from helixloom.training.configs import LoraSFTConfig

    cls = config_class or LoraSFTConfig
    return cls(**given_config(args, cls))


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


def _store() -> Any:
    from helixloom.paths import ensure_home
    from helixloom.store import Store

    ensure_home()
    return Store.open_default()


def _quiet_libraries() -> None:
    """Library chatter (deprecation notices, load bars) is not for our users; errors still show."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


if __name__ == "__main__":
    sys.exit(main())
