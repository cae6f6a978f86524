"""Long work as jobs: status, progress and a log in the store, so the server can show them."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from helixloom.errors import HelixloomError
from helixloom.store.base import StoreBase
from helixloom.store.records import JOB_STATUSES, JSON, Job, JobStatus, dumps, utc_now


class JobsMixin(StoreBase):
    def create_job(
        self,
        kind: str,
        *,
        name: str | None = None,
        params: JSON | None = None,
        total: float | None = None,
    ) -> Job:
        """Create a queued job with progress 0 and return it."""
        if not kind:
            raise HelixloomError("a job needs a kind", param="kind")
        job_id = uuid4().hex
        now = utc_now()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO jobs (id, kind, name, status, progress, total, params, created_at, updated_at)"
                " VALUES (?, ?, ?, 'queued', 0, ?, ?, ?, ?)",
                (job_id, kind, name, total, dumps(params, "params"), now, now),
            )
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row)

    def update_job(
        self,
        job_id: str,
        *,
        status: JobStatus | None = None,
        progress: float | None = None,
        total: float | None = None,
        message: str | None = None,
        result: Any = None,
        error: str | None = None,
        pid: int | None = None,
        host: str | None = None,
    ) -> Job:
        """Change the fields given (``None`` leaves a field as it is), stamp ``updated_at``, return the job.

        Raises ``HelixloomError`` for an unknown job or status.
        """
        if status is not None and status not in JOB_STATUSES:
            raise HelixloomError(
                f"job status {status!r} is not one of {', '.join(JOB_STATUSES)}", param="status"
            )
        changes: dict[str, Any] = {
            "status": status,
            "progress": progress,
            "total": total,
            "message": message,
            "result": dumps(result, "result"),
            "error": error,
            "pid": pid,
            "host": host,
        }
        # Column names come from the fixed dict above, never from the caller.
        sets = [f"{column} = ?" for column, value in changes.items() if value is not None]
        values = [value for value in changes.values() if value is not None]
        with self._write() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET {', '.join([*sets, 'updated_at = ?'])} WHERE id = ?",
                (*values, utc_now(), job_id),
            )
            if cur.rowcount == 0:
                raise HelixloomError(f"no job {job_id}")
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row)

    def log_job(self, job_id: str, line: str) -> None:
        """Append a line to the job's log. Raises ``HelixloomError`` for an unknown job."""
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone():
                raise HelixloomError(f"no job {job_id}")
            conn.execute(
                "INSERT INTO job_logs (job_id, at, line) VALUES (?, ?, ?)", (job_id, utc_now(), line)
            )

    def job_logs(self, job_id: str) -> list[str]:
        """The job's log lines in the order they were written."""
        rows = self._fetchall("SELECT line FROM job_logs WHERE job_id = ? ORDER BY id", (job_id,))
        return [r["line"] for r in rows]

    def get_job(self, job_id: str) -> Job | None:
        """The job with this id, or ``None``."""
        row = self._fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else Job.from_row(row)

    def list_jobs(self, kind: str | None = None, status: JobStatus | None = None) -> list[Job]:
        """Jobs of that kind and status (each optional), newest first."""
        where: list[str] = []
        params: list[Any] = []
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if status is not None:
            if status not in JOB_STATUSES:
                raise HelixloomError(
                    f"job status {status!r} is not one of {', '.join(JOB_STATUSES)}", param="status"
                )
            where.append("status = ?")
            params.append(status)
        sql = "SELECT * FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._fetchall(sql + " ORDER BY created_at DESC, rowid DESC", params)
        return [Job.from_row(r) for r in rows]
