"""``helixloom jobs list|show|cancel``: the long commands run here or started by the server."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from helixloom.errors import HelixloomError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``jobs`` command."""
    from helixloom.cli.common import usage

    jobs = sub.add_parser(
        "jobs",
        help="long work (learn, train, iterate, prompts, eval): progress, logs, cancel",
        description="Every long command (learn, train, iterate, prompts generate, eval) is recorded as a "
        "job: its progress, its log lines and how it ended. Jobs started from the server "
        "(POST /api/jobs, or the UI's jobs page) are listed here too. A job whose process was killed "
        "is shown as failed; its work resumes with the command's --resume.",
    )
    jsub = jobs.add_subparsers(title="actions", metavar="ACTION")
    ls = jsub.add_parser("list", help="list jobs, newest first")
    ls.add_argument("--kind", help="only this kind: learn, train, iterate, prompts, eval")
    ls.add_argument(
        "--status", choices=["queued", "running", "succeeded", "failed", "cancelled"], help="only this status"
    )
    ls.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(run=cmd_jobs_list)
    show = jsub.add_parser("show", help="one job: status, progress and its log")
    show.add_argument("job_id", metavar="ID", help="the job id, or a unique prefix of it")
    show.add_argument("--follow", action="store_true", help="keep printing new log lines until it ends")
    show.add_argument("--json", action="store_true", help="print JSON (the job and its log lines)")
    show.set_defaults(run=cmd_jobs_show)
    cancel = jsub.add_parser(
        "cancel", help="cancel a queued job, or ask a running one to stop (it keeps its checkpoints)"
    )
    cancel.add_argument("job_id", metavar="ID", help="the job id, or a unique prefix of it")
    cancel.set_defaults(run=cmd_jobs_cancel)
    jobs.set_defaults(run=lambda _: usage(jobs))


def find_job(store: Any, prefix: str) -> Any:
    """The job whose id is ``prefix`` or starts with it; ``HelixloomError`` for none or several."""
    job = store.get_job(prefix)
    if job is not None:
        return job
    matches = [j for j in store.list_jobs() if j.id.startswith(prefix)] if prefix else []
    if not matches:
        raise HelixloomError(f"no job {prefix}", "see `helixloom jobs list`")
    if len(matches) > 1:
        raise HelixloomError(f"{len(matches)} jobs start with {prefix}", "give more of the id")
    return matches[0]


def progress_text(job: Any) -> str:
    """``37/120 (31%) fine-tuning`` or the message alone."""
    text = ""
    if job.total:
        done = job.progress or 0
        text = f"{done:g}/{job.total:g} ({done / job.total:.0%})"
    message = job.message or ""
    return f"{text} {message}".strip()


def cmd_jobs_list(args: argparse.Namespace) -> int:
    from helixloom import jobs
    from helixloom.cli.common import open_store

    with open_store() as store:
        jobs.reap(store)
        rows = store.list_jobs(kind=args.kind, status=args.status)[: max(args.limit, 0)]
    if args.json:
        print(json.dumps([asdict(j) for j in rows]))
        return 0
    for j in rows:
        print(
            f"{j.id[:12]}  {j.created_at[:19]}  {j.kind:<8} {j.status:<9} {(j.name or '-')[:20]:<20} "
            f"{progress_text(j)[:60]}"
        )
    if not rows:
        print("no jobs")
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    from helixloom import jobs
    from helixloom.cli.common import open_store

    with open_store() as store:
        jobs.reap(store)
        job = find_job(store, args.job_id)
        if args.json:
            print(json.dumps({**asdict(job), "log": store.job_logs(job.id)}))
            return 0
        command = " ".join((job.params or {}).get("argv", [])) if isinstance(job.params, dict) else ""
        print(f"job {job.id} ({job.kind}{', ' + job.name if job.name else ''}): {job.status}")
        if command:
            print(f"command: helixloom {command}")
        print(f"started {job.created_at}, updated {job.updated_at}")
        seen = 0
        while True:
            lines = store.job_logs(job.id)
            for line in lines[seen:]:
                print(f"  {line}")
            seen = len(lines)
            if not args.follow or job.finished:
                break
            print(f"\r{progress_text(job)[:100]:<100}", end="", file=sys.stderr, flush=True)
            time.sleep(1.0)
            jobs.reap(store)
            job = store.get_job(job.id)
        if args.follow:
            print(file=sys.stderr)
        print(f"{job.status}: {progress_text(job)}")
        if job.error:
            print(f"error: {job.error}")
        if job.result is not None:
            print(f"result: {json.dumps(job.result)}")
    return 0 if job.status != "failed" else 1


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    from helixloom import jobs
    from helixloom.cli.common import open_store

    with open_store() as store:
        job = find_job(store, args.job_id)
        after = jobs.cancel(store, job.id)
    said = "cancelled" if after.status == "cancelled" else "asked to stop"
    print(f"job {after.id}: {said}")
    return 0
