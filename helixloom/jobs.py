"""Long work as jobs: status, progress and a log in the store, for the server, the UI and ``helixloom jobs``.

A command that runs for minutes or hours (question generation, training, iterative DPO) runs inside
``run_job``: the job row says it is running and in which process, every progress bar made with
``progress_bar`` writes its position into the row (at most twice a second), every line given to
``log`` is appended to the job's log, and the end is recorded as succeeded, failed (with the error)
or cancelled (SIGTERM or ^C; the work's own checkpoints make it resumable). A process killed
without a word leaves a ``running`` row behind; ``reap`` marks such rows failed once their process
is gone; ``cancel`` stops a queued or running job. The server's queue of submitted command lines
is ``helixloom.server.job_runner``; this module knows neither the server nor the CLI.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from tqdm import tqdm

from helixloom.errors import HelixloomError
from helixloom.store import Store
from helixloom.store.records import Job

#: Seconds between two progress writes of one job (the last position is always written at the end).
PROGRESS_INTERVAL = 0.5


class JobCancelled(BaseException):
    """Raised in a job's process when it is asked to stop (SIGTERM)."""


class JobHandle:
    """The running job of this process: progress, log lines and the result to record at the end."""

    def __init__(self, store: Store, job: Job) -> None:
        self.store = store
        self.id = job.id
        self.kind = job.kind
        self.result: Any = None
        self.error: str | None = None  # set to end the job as failed without raising
        self._last = 0.0
        self._lock = threading.Lock()

    def progress(
        self, done: float, total: float | None = None, message: str | None = None, *, force: bool = False
    ) -> None:
        """Record the position; writes are spaced ``PROGRESS_INTERVAL`` apart unless ``force``."""
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last < PROGRESS_INTERVAL and (total is None or done < total):
                return
            self._last = now
        self.store.update_job(self.id, progress=float(done), total=total, message=message)

    def log(self, line: str) -> None:
        """Append a line to the job's log."""
        self.store.log_job(self.id, line)


_active: JobHandle | None = None


def active() -> JobHandle | None:
    """The job this process is running, if any."""
    return _active


def log(line: str) -> None:
    """Append ``line`` to the running job's log; nothing when no job runs."""
    job = _active
    if job is not None:
        with suppress(HelixloomError):  # a job row deleted under us must not stop the work
            job.log(line)


def set_result(value: Any) -> None:
    """What the running job produced (dataclasses and paths become JSON); nothing when no job runs."""
    import dataclasses
    import json

    job = _active
    if job is not None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        job.result = json.loads(json.dumps(value, default=str))


def report(done: float, total: float | None, message: str | None = None, *, force: bool = False) -> None:
    """Record progress on the running job; nothing when no job runs."""
    job = _active
    if job is not None:
        with suppress(HelixloomError):
            job.progress(done, total, message, force=force)


class _Bar(tqdm):
    """A tqdm bar that also records its position on the running job."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._label = kwargs.get("desc")  # a disabled tqdm (not a terminal, disable=None) keeps no desc
        super().__init__(*args, **kwargs)

    def _report(self, force: bool = False) -> None:
        if _active is not None:
            report(self.n, self.total or None, getattr(self, "desc", None) or self._label, force=force)

    def update(self, n: float | None = 1) -> bool | None:
        shown = super().update(n)
        if self.disable:  # tqdm stops counting when disabled; the job still wants the position
            self.n += 1 if n is None else n
        self._report()
        return shown

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        super().refresh(*args, **kwargs)
        self._report()

    def close(self) -> None:
        if not getattr(self, "_reported_close", False):
            self._reported_close = True
            self._report(force=True)
        super().close()


def progress_bar(
    total: float | None = None, *, desc: str | None = None, unit: str = "it", **kwargs: Any
) -> Any:
    """A progress bar on stderr that also records its position on the running job.

    When stderr is not a terminal (a job's log file) the bar redraws every 10 seconds instead of
    ten times a second, so logs stay readable.
    """
    kwargs.setdefault("file", sys.stderr)
    if not _isatty(kwargs["file"]):
        kwargs.setdefault("mininterval", 10.0)
    return _Bar(total=total, desc=desc, unit=unit, **kwargs)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _on_sigterm(signum: int, frame: Any) -> None:
    raise JobCancelled()


@contextmanager
def run_job(
    kind: str,
    *,
    name: str | None = None,
    params: dict[str, Any] | None = None,
    job_id: str | None = None,
    store: Store | None = None,
) -> Iterator[JobHandle]:
    """Run the body as a job: a new one of ``kind``, or the queued job ``job_id`` (the server's queue).

    The job is marked running with this process's pid, then succeeded (with ``handle.result``),
    failed (with the exception's message, which propagates, or with ``handle.error``) or cancelled
    (SIGTERM, which raises ``JobCancelled`` in the body, or ^C; both propagate). One job per process.
    """
    global _active
    if _active is not None:
        raise HelixloomError(f"job {_active.id} is already running in this process")
    own = store is None
    store = store or Store.open_default()
    try:
        if job_id is not None:
            job = store.get_job(job_id)
            if job is None:
                raise HelixloomError(f"no job {job_id}")
            if job.status != "queued":
                raise HelixloomError(f"job {job_id} is {job.status}, not queued")
        else:
            job = store.create_job(kind, name=name, params=params)
        job = store.update_job(
            job.id, status="running", message="starting", pid=os.getpid(), host=socket.gethostname()
        )
        handle = JobHandle(store, job)
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        _active = handle
        try:
            yield handle
        except JobCancelled:
            _finish(store, job.id, "cancelled", "cancelled (SIGTERM); its checkpoints are kept")
            raise
        except KeyboardInterrupt:
            _finish(store, job.id, "cancelled", "interrupted; its checkpoints are kept")
            raise
        except BaseException as exc:
            _finish(store, job.id, "failed", "failed", error=str(exc) or type(exc).__name__)
            raise
        else:
            if handle.error is not None:
                _finish(store, job.id, "failed", "failed", error=handle.error, result=handle.result)
            else:
                _finish(store, job.id, "succeeded", "done", result=handle.result)
        finally:
            _active = None
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    finally:
        if own:
            store.close()


def _finish(
    store: Store, job_id: str, status: Any, message: str, *, error: str | None = None, result: Any = None
) -> None:
    job = store.get_job(job_id)
    progress = job.total if status == "succeeded" and job is not None and job.total else None
    store.update_job(job_id, status=status, message=message, error=error, result=result, progress=progress)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if sys.platform.startswith("linux"):
        # A zombie (ended, not yet reaped by its parent) is not running work.
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        return state != "Z"
    return True


def reap(store: Store) -> list[Job]:
    """Mark failed every running job of this machine whose process is gone; return those jobs."""
    host = socket.gethostname()
    reaped = []
    for job in store.list_jobs(status="running"):
        if job.host == host and job.pid is not None and not pid_alive(job.pid):
            reaped.append(
                store.update_job(
                    job.id,
                    status="failed",
                    message="process ended",
                    error=f"process {job.pid} ended without reporting (killed?); "
                    "resume the work with the command's --resume",
                )
            )
    return reaped


def cancel(store: Store, job_id: str) -> Job:
    """Cancel a queued job, or ask a running one to stop (SIGTERM; it records itself cancelled)."""
    job = store.get_job(job_id)
    if job is None:
        raise HelixloomError(f"no job {job_id}")
    if job.finished:
        raise HelixloomError(f"job {job_id} has already {job.status}")
    if job.status == "queued":
        return store.update_job(job_id, status="cancelled", message="cancelled before it started")
    if job.pid is None or job.host != socket.gethostname():
        raise HelixloomError(f"job {job_id} runs on {job.host or 'an unknown machine'}; stop it there")
    try:
        os.kill(job.pid, signal.SIGTERM)
    except ProcessLookupError:
        reap(store)
    return store.get_job(job_id) or job
