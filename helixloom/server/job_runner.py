"""The server's side of jobs: submitted command lines queued in the store and run one at a time.

Each job runs as a ``helixloom --job-id ID COMMAND...`` subprocess, so a crash in a job never takes
the server down; the subprocess records its own progress and end (``helixloom.jobs.run_job``).
A command line is checked before it is queued: first by the CLI's own parser, which the server is
given (``CommandParser``) rather than importing the CLI, which sits above it; then by the job policy
(``helixloom.server.job_policy``): only listed commands and flags, paths under ``HELIXLOOM_HOME``,
models the operator allowed. The job runs in the home, with a cleaned environment: no API keys or
other secrets of the server's go along.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from helixloom.errors import HelixloomError
from helixloom.jobs import reap
from helixloom.paths import home, runs_dir
from helixloom.server.job_policy import ALLOWED, JobPolicy
from helixloom.store import Store
from helixloom.store.records import Job

#: Builds the parser of ``helixloom``'s command line (the CLI's ``build_parser``).
CommandParser = Callable[[], argparse.ArgumentParser]

#: The environment a job inherits from the server: what Python, the libraries and the job need to run,
#: nothing else (API keys, tokens and cloud credentials stay with the server).
_KEPT_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "HELIXLOOM_HOME",
    "HELIXLOOM_TEST_CACHE",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "TRANSFORMERS_VERBOSITY",
    "TOKENIZERS_PARALLELISM",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
)


def job_env(db: Path) -> dict[str, str]:
    """The environment of a job the server starts."""
    env = {k: v for k, v in os.environ.items() if k in _KEPT_ENV or k.startswith("LC_")}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "HELIXLOOM_DB": str(db),  # the job records itself in this store, whatever HELIXLOOM_HOME says
            # Libraries' own bars (weights loading, dataset maps) would bury the job's output.
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
    )
    return env


#: Commands the server may start as jobs (the first word of the command line), as the policy lists them.
LAUNCHABLE = tuple(dict.fromkeys(words[0] for words in ALLOWED))


def job_log_path(job_id: str) -> Path:
    """Where a launched job's stdout and stderr go."""
    return runs_dir() / "jobs" / f"{job_id}.log"


def check_command(argv: Sequence[str], make_parser: CommandParser) -> tuple[str, str | None]:
    """Parse a command line with the CLI's parser; return (job kind, job name) or raise ``HelixloomError``
    with the parser's own message."""
    argv = list(argv)
    if not argv or argv[0] not in LAUNCHABLE:
        raise HelixloomError(
            f"a job runs one of: {', '.join(LAUNCHABLE)}", f"got {shlex.join(argv) if argv else 'nothing'}"
        )
    args = parse_quietly(make_parser(), argv)
    kind = getattr(args, "job", None)
    if not kind:
        raise HelixloomError(f"`helixloom {shlex.join(argv)}` is not a job command")
    return str(kind), getattr(args, "name", None)


def parse_quietly(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, its complaint raised as a ``HelixloomError`` instead of printed and
    exited on: a server parses from many threads at once, where swapping ``sys.stderr`` is not safe."""

    def refuse(message: str) -> NoReturn:
        raise HelixloomError(message)

    stack = [parser]
    while stack:  # every subcommand's parser reports its own errors
        p = stack.pop()
        p.error = refuse  # type: ignore[method-assign]
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # --help and the like
        raise HelixloomError(f"bad command line (exit {exc.code})") from None


class JobRunner:
    """Runs submitted command lines as jobs, one at a time, each in its own ``helixloom`` process.

    A queued job also waits while a job started from the CLI runs on this machine.

    Submitted jobs wait in the store as ``queued``, so a server restart picks them up again. Their
    output goes to ``runs/jobs/ID.log``; progress and log lines go to the store. Without
    ``make_parser`` (the CLI's parser) the runner still runs jobs already queued but refuses new ones.
    """

    def __init__(self, store: Store, make_parser: CommandParser | None = None) -> None:
        self.store = store
        self.make_parser = make_parser
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: tuple[str, subprocess.Popen[bytes]] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is None:
            reap(self.store)
            self._thread = threading.Thread(target=self._loop, name="helixloom-jobs", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; a running job is asked to stop (SIGTERM) and given ``timeout`` seconds."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            current = self._current
        if current is not None:
            _, proc = current
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, argv: Sequence[str], policy: JobPolicy) -> Job:
        """Queue ``helixloom ARGV...`` as a job, if ``policy`` lets a remote client run it (with its
        paths rewritten absolute); raises ``HelixloomError`` for a bad or refused command line."""
        if self.make_parser is None:
            raise HelixloomError("this server was given no command parser, so it cannot check job commands")
        check_command(argv, self.make_parser)  # the CLI's own words for a line that does not parse
        argv = policy.check(self.make_parser(), list(argv))
        kind, name = check_command(argv, self.make_parser)  # and the line as it will run
        if not isinstance(self.store.path, Path):
            raise HelixloomError("jobs need a store on disk; this server's store is in memory")
        job = self.store.create_job(kind, name=name, params={"argv": list(argv), "launcher": "server"})
        self.store.log_job(job.id, f"queued: helixloom {shlex.join(argv)}")
        self._wake.set()
        return job

    def _next(self) -> Job | None:
        """The oldest queued server job, once no job runs on this machine (a CLI one included):
        two trainings side by side would each take twice as long, and may not fit in memory."""
        reap(self.store)
        host = socket.gethostname()
        if any(j.host == host for j in self.store.list_jobs(status="running")):
            return None
        queued = [
            j
            for j in self.store.list_jobs(status="queued")
            if isinstance(j.params, dict) and j.params.get("launcher") == "server"
        ]
        return queued[-1] if queued else None  # list_jobs is newest first

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._next()
            except HelixloomError:  # the store was closed under us: the server is going away
                return
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        argv = list((job.params or {}).get("argv", []))
        path = job_log_path(job.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        assert isinstance(self.store.path, Path)
        env = job_env(self.store.path)
        with open(path, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "helixloom", "--job-id", job.id, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=home(),  # a relative path the job meets is the home's, as the policy checked it
            )
            with self._lock:
                self._current = (job.id, proc)
            code = proc.wait()
            with self._lock:
                self._current = None
        after = self.store.get_job(job.id)
        if after is not None and not after.finished:
            # It ended before recording an end of its own: a bad flag, a crash, a kill.
            last = tail(path)
            self.store.update_job(
                job.id,
                status="failed",
                message=f"exited with code {code}",
                error=last or f"exited with code {code}",
            )


def tail(path: Path, lines: int = 5) -> str:
    """The last ``lines`` non-empty lines of a log; a progress bar's redraws count as its last one."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    shown = (line.rstrip("\r").split("\r")[-1] for line in text.split("\n"))
    kept = [line for line in shown if line.strip()]
    return "\n".join(kept[-lines:])
