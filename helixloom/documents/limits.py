"""Ingestion limits: how much one input may ask of memory before it is refused, and the reads that
keep to them.

A document set is often a folder or an archive from somewhere else, so ingest must not trust it: a zip
bomb (a small archive that inflates to gigabytes), ``/dev/zero``, a FIFO that never ends, or markup
nested deeper than the parsers can recurse would otherwise take all the memory, hang, or end in a
traceback. ``IngestLimits`` holds the bounds (callers that trust their input may raise them); a read
that would break one raises ``Refused``, which ``ingest`` turns into a ``HelixloomError`` naming the file.
"""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

MiB = 1024 * 1024

# Members under this size are not held to the compression ratio: a small file of repeated text may
# compress far better than any sensible ratio and costs nothing to inflate.
RATIO_FLOOR = MiB


@dataclass(frozen=True)
class IngestLimits:
    """The most one ingest may read. Each is checked before the bytes are read where the size is known
    (a file's size, a zip member's declared sizes), and again while reading, so a size that lies cannot
    slip through."""

    max_file_bytes: int = 128 * MiB  # one file, or one archive member once inflated
    max_members: int = 10_000  # entries in one zip archive
    max_archive_bytes: int = 512 * MiB  # the members read from one archive, inflated, all together
    max_ratio: float = 100.0  # inflated / compressed size of one archive member (over RATIO_FLOOR)
    max_depth: int = 256  # nesting of HTML elements, or of JSON arrays and objects


class Refused(Exception):
    """An input that breaks a limit or is not a regular file; ``setting`` names the ``IngestLimits``
    field that would let it through (None where no setting would)."""

    def __init__(self, reason: str, setting: str | None = None) -> None:
        super().__init__(reason)
        self.setting = setting


_SPECIAL = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


def require_regular(st: os.stat_result) -> None:
    """Raise ``Refused`` unless ``st`` is a regular file's: a device or a FIFO may never end."""
    if not stat.S_ISREG(st.st_mode):
        kind = _SPECIAL.get(stat.S_IFMT(st.st_mode), "a special file")
        raise Refused(f"not a regular file ({kind})")


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading if it is a regular file, else ``Refused``. It is opened without
    blocking (a FIFO would wait for a writer) and checked once open, so it cannot be swapped between the
    check and the read; ``OSError`` as ``open`` raises it."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # Windows has no FIFOs to block on
    f = os.fdopen(fd, "rb")
    try:
        require_regular(os.fstat(f.fileno()))
    except BaseException:
        f.close()
        raise
    return f


def read_file(path: Path, limits: IngestLimits) -> bytes:
    """The bytes of the regular file at ``path``; ``Refused`` for anything else or anything over
    ``max_file_bytes`` (never reading more than one byte past it, whatever the file's size claims)."""
    with open_regular(path) as f:
        check_size(os.fstat(f.fileno()).st_size, limits)
        return bounded_read(f, limits)


def check_size(size: int, limits: IngestLimits) -> None:
    """``Refused`` when one file of ``size`` bytes is over ``max_file_bytes``."""
    if size > limits.max_file_bytes:
        raise Refused(
            f"{_size(size)}, over the {_size(limits.max_file_bytes)} limit for one file", "max_file_bytes"
        )


def bounded_read(f: IO[bytes], limits: IngestLimits) -> bytes:
    """All of ``f``, or ``Refused`` as soon as it is longer than ``max_file_bytes``."""
    pieces, total = [], 0
    # A MiB at a time: read(n) would set aside n bytes up front, however short the file.
    while piece := f.read(MiB):
        total += len(piece)
        if total > limits.max_file_bytes:
            raise Refused(f"over the {_size(limits.max_file_bytes)} limit for one file", "max_file_bytes")
        pieces.append(piece)
    return b"".join(pieces)


def check_archive(infos: list[zipfile.ZipInfo], wanted: list[zipfile.ZipInfo], limits: IngestLimits) -> None:
    """``Refused`` for an archive with more than ``max_members`` entries, or whose ``wanted`` members
    declare more than ``max_archive_bytes`` inflated; checked before any member is inflated."""
    if len(infos) > limits.max_members:
        raise Refused(
            f"{len(infos)} entries, over the limit of {limits.max_members} per archive", "max_members"
        )
    total = sum(i.file_size for i in wanted)
    if total > limits.max_archive_bytes:
        raise Refused(
            f"{_size(total)} inflated, over the {_size(limits.max_archive_bytes)} limit per archive",
            "max_archive_bytes",
        )


def check_member(info: zipfile.ZipInfo, limits: IngestLimits) -> None:
    """``Refused`` for a member that declares more than ``max_file_bytes`` inflated, or that inflates
    more than ``max_ratio`` times its compressed size (past ``RATIO_FLOOR``): the mark of a zip bomb."""
    check_size(info.file_size, limits)
    if info.file_size > RATIO_FLOOR and info.file_size > limits.max_ratio * max(info.compress_size, 1):
        ratio = info.file_size / max(info.compress_size, 1)
        raise Refused(
            f"inflates {ratio:.0f} times its compressed size, over the limit of {limits.max_ratio:g} "
            "(a zip bomb?)",
            "max_ratio",
        )


def _size(n: int) -> str:
    """``n`` bytes for people: "1000 B", "2.0 KiB", "128 MiB"."""
    if n < 1024:
        return f"{n} B"
    unit, name = (MiB, "MiB") if n >= MiB else (1024, "KiB")
    return f"{n // unit} {name}" if n % unit == 0 else f"{n / unit:.1f} {name}"
