"""The ``helixloom`` command line. Thin: it parses flags, calls the Python API and prints.

Each command (or group of commands) lives in its own module here with a ``register(sub)`` that adds
its parser; this module builds the parser from them and runs the chosen command (inside a job when it
is a long one). The flags and helpers the commands share are in ``helixloom.cli.common``.

Errors a user can cause print one line (``helixloom: error: ...``) and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from helixloom import __version__
from helixloom.cli.weave import parse_question as parse_question
from helixloom.errors import HelixloomError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user error, 1 any other failure, 130 interrupted).

    Every failure is one line on stderr; ``HELIXLOOM_DEBUG=1`` shows the traceback of an unexpected
    one."""
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
    except Exception as exc:  # not ours: still one line (the locked database, a full disk, a bug)
        if os.environ.get("HELIXLOOM_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"helixloom: error: {type(exc).__name__}: {first}".rstrip(": "), file=sys.stderr)
        print("helixloom: (set HELIXLOOM_DEBUG=1 to see where it happened)", file=sys.stderr)
        return 1


def _run_as_job(args: argparse.Namespace, argv: list[str]) -> int:
    """Run a long command inside a job (see helixloom.jobs): its progress and end go to the store."""
    from helixloom import jobs
    from helixloom.paths import ensure_home

    ensure_home()
    if args.run_job_id and not getattr(args, "job", None):
        raise HelixloomError(
            "--job-id is only for job commands (learn, iterate, improve, train, prompts, eval)"
        )
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
    from helixloom.cli import improve as cli_improve
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
        cli_improve,
        cli_jobs,
    ):
        command.register(sub)
    # The server checks job command lines with this parser; it is handed over because the server,
    # below the CLI, cannot import it.
    sub.choices["serve"].set_defaults(command_parser=build_parser)
    return parser


def _quiet_libraries() -> None:
    """Library chatter (deprecation notices, load bars) is not for our users; errors still show."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


if __name__ == "__main__":
    sys.exit(main())
