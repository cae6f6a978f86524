"""Documents in: files, folders and zip archives to plain text with content-addressed ids.

A document's id is the first 10 hex characters of the sha256 of its extracted text (Helix's rule), so
the same text gets the same id whatever its file is called; the group id hashes the sorted ids, so the
same set of documents gets the same group id in any order. A file that cannot be used (wrong type, not
UTF-8, encrypted, empty, a duplicate) is reported in ``Ingested.skipped`` and never raises: one bad file
in a folder must not stop the rest. A path that does not exist raises, because that is a typo; so does
an input that breaks the ``IngestLimits`` (a zip bomb, a file over the size limit, markup nested too
deep) or a path given that is not a regular file (a device, a FIFO), because reading it would take all
the memory or never end. Inside folders only regular files and folders are visited.

Reading each file type to text is ``documents.formats``; cutting texts into chunks is
``documents.chunking``.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from helixloom.documents import limits as bounds
from helixloom.documents.formats import SUPPORTED_EXTENSIONS, Unusable, extract, kind_of
from helixloom.documents.limits import IngestLimits, Refused
from helixloom.errors import HelixloomError


@dataclass(frozen=True)
class Document:
    """One document's extracted text; ``doc_id`` is the first 10 hex of sha256(text as UTF-8)."""

    doc_id: str
    text: str
    source: str  # the path; a zip member is "archive.zip!inner/path.md"
    title: str
    kind: str  # "txt", "md", "html", "pdf" or "json"


@dataclass(frozen=True)
class Skipped:
    """An input that was not used, and why."""

    source: str
    reason: str


@dataclass(frozen=True)
class Ingested:
    """What ``ingest`` found: the usable documents, the skipped inputs and the group id of the documents."""

    documents: list[Document]
    skipped: list[Skipped]
    group_id: str

    def summary(self) -> str:
        """One line for people, e.g. "3 documents used, 1 skipped (notes.docx: unsupported type .docx)"."""
        n = len(self.documents)
        line = f"{n} document{'' if n == 1 else 's'} used, {len(self.skipped)} skipped"
        if self.skipped:
            shown = [f"{_display_name(s.source)}: {s.reason}" for s in self.skipped[:3]]
            if len(self.skipped) > 3:
                shown.append(f"and {len(self.skipped) - 3} more")
            line += f" ({'; '.join(shown)})"
        return line


def content_id(text: str) -> str:
    """The first 10 hex characters of sha256 over ``text`` as UTF-8 (a document's id)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


def group_id(doc_ids: Sequence[str]) -> str:
    """The id of a set of documents: the same ids in any order give the same group id."""
    return content_id(",".join(sorted(doc_ids)))


def ingest(paths: Sequence[str | Path], *, limits: IngestLimits | None = None) -> Ingested:
    """Read every supported file under ``paths`` (files, folders recursively, zip archives).

    Folders are walked in sorted order and hidden entries are left out, so the result is deterministic.
    Inputs that cannot be used are listed in ``skipped`` with a reason; identical texts become one
    document (the first source wins). A file's type is judged by its name before its bytes are read.
    Raises ``HelixloomError`` for a path that does not exist, for an input refused by ``limits``
    (default ``IngestLimits()``) or for not being a regular file, naming the file (and archive member),
    and when no usable document is left.
    """
    limits = limits or IngestLimits()
    roots = [Path(p) for p in paths]
    for root in roots:
        if not root.exists():
            raise HelixloomError(f"no such file or folder: {root}", "check the path")
    documents: list[Document] = []
    skipped: list[Skipped] = []
    seen: dict[str, str] = {}  # full sha256 of the text -> source of the document that has it
    for source, name, read in _inputs(roots, limits):
        try:
            kind, text, title = extract(name, read(), max_depth=limits.max_depth)
        except Unusable as e:
            skipped.append(Skipped(source, str(e)))
            continue
        except Refused as e:
            raise _refusal(source, e) from None
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if digest in seen:
            skipped.append(Skipped(source, f"duplicate of {seen[digest]}"))
            continue
        seen[digest] = source
        documents.append(Document(digest[:10], text, source, title or _stem(name), kind))
    if not documents:
        where = ", ".join(str(r) for r in roots) or "(no paths given)"
        found = Ingested([], skipped, group_id([])).summary()
        raise HelixloomError(
            f"no usable documents in {where}: {found}",
            f"supported types: {', '.join(SUPPORTED_EXTENSIONS)}",
        )
    return Ingested(documents, skipped, group_id([d.doc_id for d in documents]))


def _refusal(source: str, refused: Refused) -> HelixloomError:
    if refused.setting is None:
        hint = "only regular files are read: give the file itself, or a folder of files"
    else:
        hint = f"if you trust it, raise IngestLimits.{refused.setting} and pass it to ingest(limits=...)"
    return HelixloomError(f"refused {source}: {refused}", hint)


_Input = tuple[str, str, Callable[[], bytes]]  # (source, file name for its type, read its bytes)


def _inputs(roots: list[Path], limits: IngestLimits) -> Iterator[_Input]:
    for root in roots:
        files = _walk(root, set()) if root.is_dir() else iter([root])
        for path in files:
            if path.suffix.lower() == ".zip":
                yield from _zip_members(path, limits)
            else:
                yield str(path), path.name, _file_reader(path, limits)


def _failing(error: Exception) -> Callable[[], bytes]:
    def read() -> bytes:
        raise error

    return read


def _walk(folder: Path, visited: set[Path]) -> Iterator[Path]:
    real = folder.resolve()
    if real in visited:  # a symlink loop
        return
    visited.add(real)
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _walk(entry, visited)
        elif entry.is_file():  # regular files only (links followed): never a device or a FIFO
            yield entry


def _file_reader(path: Path, limits: IngestLimits) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            bounds.require_regular(path.stat())  # a device or a FIFO is refused whatever its name
            kind_of(path.name)  # an unsupported file is skipped unread, however large
            return bounds.read_file(path, limits)
        except OSError as e:
            raise Unusable(f"unreadable ({e.strerror or e})") from e

    return read


def _zip_members(path: Path, limits: IngestLimits) -> Iterator[_Input]:
    try:
        handle = bounds.open_regular(path)
    except Refused as e:
        yield str(path), path.name, _failing(e)
        return
    except OSError as e:
        yield str(path), path.name, _failing(Unusable(f"unreadable ({e.strerror or e})"))
        return
    with handle:
        try:
            archive = zipfile.ZipFile(handle)
        except (OSError, zipfile.BadZipFile) as e:
            yield str(path), path.name, _failing(Unusable(f"not a readable zip archive ({e})"))
            return
        with archive:
            yield from _members(path, archive, limits)


def _members(path: Path, archive: zipfile.ZipFile, limits: IngestLimits) -> Iterator[_Input]:
    infos = archive.infolist()
    members: list[tuple[str, str, zipfile.ZipInfo, Exception | None]] = []
    for info in sorted(infos, key=lambda i: i.filename):
        parts = info.filename.split("/")
        if info.is_dir() or any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue
        problem: Exception | None = None
        if info.filename.lower().endswith(".zip"):
            problem = Unusable("zip inside a zip is not supported")
        else:
            try:
                kind_of(parts[-1])  # judged by name, so an unsupported member is never inflated
            except Unusable as e:
                problem = e
        members.append((f"{path}!{info.filename}", parts[-1], info, problem))
    try:  # before any member is inflated
        bounds.check_archive(infos, [info for _, _, info, problem in members if problem is None], limits)
    except Refused as e:
        yield str(path), path.name, _failing(e)
        return
    for source, name, info, problem in members:
        yield source, name, _failing(problem) if problem else _member_reader(archive, info, limits)


def _member_reader(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: IngestLimits
) -> Callable[[], bytes]:
    def read() -> bytes:
        bounds.check_member(info, limits)
        try:
            with archive.open(info) as member:
                return bounds.bounded_read(member, limits)  # inflates no further than the limit
        except (RuntimeError, zipfile.BadZipFile, NotImplementedError, OSError) as e:
            raise Unusable(f"unreadable zip member ({e})") from e  # encrypted, corrupt, odd compression

    return read


def _stem(name: str) -> str:
    return Path(name).stem


def _display_name(source: str) -> str:
    outer, bang, inner = source.partition("!")
    return Path(outer).name + bang + inner
