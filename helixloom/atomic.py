"""Atomic file and folder replacement: a reader sees the old version or the new one, never half of one.

Every write that replaces something a user or another process may read (settings, datasets, reports,
adapters, checkpoints' neighbours) goes through here. The order is always the same: write the new
version beside the target, fsync it, rename it into place, and only then remove the old one, so a
crash at any point leaves a complete version on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


def _fsync_dir(folder: Path) -> None:
    # The rename itself is durable only once the folder holding it is synced (POSIX).
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.{tag}")


def write_bytes(path: Path, data: bytes) -> None:
    """``data`` at ``path``, atomically (parent folders are created)."""
    with staged_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    """``text`` (UTF-8) at ``path``, atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any, *, indent: int | None = 2) -> None:
    """``obj`` as JSON at ``path``, atomically (non-ASCII kept as is)."""
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False))


def write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    """One JSON value per line at ``path``, atomically."""
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_with(path: Path, write: Callable[[Path], None]) -> None:
    """Let ``write(tmp)`` produce a file (e.g. a plot or a GGUF writer that wants a path), then put it
    at ``path`` atomically. ``tmp`` keeps ``path``'s suffix, for writers that pick a format by it."""
    with staged_file(path) as tmp:
        write(tmp)


@contextlib.contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """A path beside ``path`` to write the new version to; when the block ends without an error it is
    fsynced and renamed onto ``path``, on an error it is removed and ``path`` is untouched. It keeps
    ``path``'s suffix, for writers that pick a format by it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "partial" + path.suffix)
    try:
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_tree(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError), open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(root))


def replace_dir(new: Path, target: Path) -> None:
    """Put the fully written folder ``new`` at ``target``: fsync it, move the old ``target`` aside,
    rename ``new`` into place, then remove the old one. ``new`` must be on the same filesystem
    (make it with ``staged_dir``)."""
    new, target = Path(new), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _fsync_tree(new)
    old = None
    if target.exists() or target.is_symlink():
        old = _sibling(target, "old")
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:  # put the old version back: the target is never left missing
            os.replace(old, target)
        raise
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A fresh empty folder beside ``target`` to write into; when the block ends without an error it
    replaces ``target`` (``replace_dir``), and on an error it is removed and ``target`` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "partial")
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def copy_dir(src: Path, target: Path) -> None:
    """A copy of the folder ``src`` at ``target``, replacing it atomically."""
    with staged_dir(target) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
