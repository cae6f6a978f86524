"""``/api/files``: the files a remote client wants a job to use (documents, prompts, preference data).

Jobs submitted over HTTP may only read and write under ``HELIXLOOM_HOME`` (see ``job_policy``), so a
client uploads what it needs first: ``PUT /api/files/NAME`` with the bytes as the body stores it at
``HELIXLOOM_HOME/uploads/NAME``, and a job names it as ``uploads/NAME`` (a ``.zip`` of documents works
for ``learn``). Names are single plain folder names; the write is atomic; the size is capped by the
server's ``max_upload_bytes`` per file and ``max_uploads_total_bytes`` in all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from helixloom import atomic, paths
from helixloom.errors import HelixloomError
from helixloom.server.protocol import not_found
from helixloom.server.state import state_of

router = APIRouter(prefix="/api/files")

UPLOADS = "uploads"


def uploads_dir() -> Path:
    """``HELIXLOOM_HOME/uploads``, where uploaded files live."""
    return paths.home() / UPLOADS


def _describe(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {
        "name": path.name,
        "path": f"{UPLOADS}/{path.name}",
        "bytes": st.st_size,
        "modified": datetime.fromtimestamp(st.st_mtime, UTC).isoformat(),
    }


@router.get("")
def list_files() -> dict[str, Any]:
    """Every uploaded file, by name."""
    folder = uploads_dir()
    files = (
        sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        if folder.is_dir()
        else []
    )
    return {"object": "list", "data": [_describe(p) for p in files]}


@router.put("/{name}", status_code=201)
async def upload(name: str, request: Request) -> dict[str, Any]:
    """Store the request body as ``uploads/NAME`` (replacing a file of that name), within the
    server's quota for all uploads together."""
    paths.check_name(name, "file name")
    quota = state_of(request).config.max_uploads_total_bytes
    target = uploads_dir() / name
    # Streamed to a staged file beside the target, written off the event loop: other clients'
    # streams keep flowing, and no upload is held in memory whole.
    # Uploads under way count against the quota as they stream (_streaming): measured once at the
    # start, N parallel uploads each passed a quota that only one of them fitted in.
    key = object()
    _streaming[key] = 0
    try:
        with atomic.staged_file(target) as staged:
            used = await run_in_threadpool(_used_bytes, target)
            with staged.open("wb") as out:
                async for chunk in request.stream():
                    _streaming[key] += len(chunk)
                    if used + sum(_streaming.values()) > quota:
                        raise HelixloomError(
                            f"uploads would take more than the server's {quota} bytes",
                            "delete some (DELETE /api/files/NAME)",
                        )
                    await run_in_threadpool(out.write, chunk)
    finally:
        del _streaming[key]
    return _describe(target)


# bytes each upload under way has streamed so far (changed on the event loop only)
_streaming: dict[object, int] = {}


def _used_bytes(replacing: Path) -> int:
    """What the finished uploads take now, not counting the file about to be replaced (nor the staged
    files of uploads under way: ``_streaming`` counts those)."""
    folder = uploads_dir()
    if not folder.is_dir():
        return 0
    total = 0
    for p in folder.iterdir():
        if p == replacing or p.name.startswith("."):
            continue
        try:
            if p.is_file():
                total += p.stat().st_size
        except FileNotFoundError:  # renamed or deleted by another request meanwhile
            continue
    return total


@router.delete("/{name}", response_model=None)
def delete(name: str) -> Any:
    paths.check_name(name, "file name")
    target = uploads_dir() / name
    if not target.is_file():
        return not_found(f"no file {name}", "name")
    target.unlink()
    return {"name": name, "deleted": True}
