"""``/api/jobs``: long work (learn, train, iterate, prompts, eval) started, watched and cancelled.

A submitted command line runs as ``helixloom --job-id ID COMMAND...`` in a subprocess, one job at a
time (``helixloom.server.job_runner``); jobs run from the CLI on this machine are listed too. What a
client may run is listed in ``helixloom.server.job_policy``: paths lie under ``HELIXLOOM_HOME``
(relative ones are taken from it; upload files with ``PUT /api/files/NAME`` and name them
``uploads/NAME``), models are the operator's.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Query, Request

from helixloom import jobs
from helixloom.errors import HelixloomError
from helixloom.server.job_runner import job_log_path, tail
from helixloom.server.protocol import JobRequest, not_found
from helixloom.server.state import state_of

router = APIRouter(prefix="/api/jobs")

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]


@router.get("")
def list_jobs(
    request: Request,
    kind: str | None = None,
    status: Status | None = None,
    limit: int = Query(50, ge=1, le=1000),
) -> dict[str, Any]:
    store = state_of(request).store
    jobs.reap(store)
    return {"object": "list", "data": [asdict(j) for j in store.list_jobs(kind=kind, status=status)[:limit]]}


@router.post("", status_code=201)
def submit_job(body: JobRequest, request: Request) -> dict[str, Any]:
    """Queue a command line as a job; 400 with the CLI's own message when it would not parse."""
    if (body.argv is None) == (body.command is None):
        raise HelixloomError("give either argv (a list of words) or command (one string)", param="argv")
    if body.command is not None:
        try:
            argv = shlex.split(body.command)
        except ValueError as exc:
            raise HelixloomError(f"command: {exc}", param="command") from None
        if argv[:1] == ["helixloom"]:
            argv = argv[1:]
    else:
        argv = list(body.argv or [])
    state = state_of(request)
    if not state.config.run_jobs:
        raise HelixloomError("this server does not run jobs (started with --no-jobs)")
    return asdict(state.jobs.submit(argv, state.job_policy()))


@router.get("/{job_id}", response_model=None)
def get_job(job_id: str, request: Request) -> Any:
    """The job with its log lines (``log``) and, for jobs started here, the tail of its output."""
    store = state_of(request).store
    jobs.reap(store)
    job = store.get_job(job_id)
    if job is None:
        return not_found(f"no job {job_id}", "job_id")
    output = None
    path = job_log_path(job_id)
    if path.is_file():
        output = tail(path, 40)
    return {**asdict(job), "log": store.job_logs(job_id), "output": output}


@router.post("/{job_id}/cancel", response_model=None)
def cancel_job(job_id: str, request: Request) -> Any:
    store = state_of(request).store
    if store.get_job(job_id) is None:
        return not_found(f"no job {job_id}", "job_id")
    return asdict(jobs.cancel(store, job_id))
