"""Documents in: files, folders and zip archives to plain text with content-addressed ids.

A document's id is the first 10 hex characters of the sha256 of its extracted text (Helix's rule), so
the same text gets the same id whatever its file is called; the group id hashes the sorted ids, so the
same set of documents gets the same group id in any order. A file that cannot be used (wrong type, not
UTF-8, encrypted, empty, a duplicate) is reported in ``Ingested.skipped`` and never raises: one bad file
in a folder must not stop the rest. Only a path that does not exist raises, because that is a typo.

Reading each file type to text is ``documents.formats``; cutting texts into chunks is
``documents.chunking``.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from helixloom.documents.formats import SUPPORTED_EXTENSIONS, Unusable, extract
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


def ingest(paths: Sequence[str | Path]) -> Ingested:
    """Read every supported file under ``paths`` (files, folders recursively, zip archives).

    Folders are walked in sorted order and hidden entries are left out, so the result is deterministic.
    Inputs that cannot be used are listed in ``skipped`` with a reason; identical texts become one
    document (the first source wins). Raises ``HelixloomError`` for a path that does not exist, and when
    no usable document is left.
    """
    roots = [Path(p) for p in paths]
    for root in roots:
        if not root.exists():
            raise HelixloomError(f"no such file or folder: {root}", "check the path")
    documents: list[Document] = []
    skipped: list[Skipped] = []
    seen: dict[str, str] = {}  # full sha256 of the text -> source of the document that has it
    for source, name, read in _inputs(roots):
        try:
            kind, text, title = extract(name, read())
        except Unusable as e:
            skipped.append(Skipped(source, str(e)))
            continue
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


_Input = tuple[str, str, Callable[[], bytes]]  # (source, file name for its type, read its bytes)


def _inputs(roots: list[Path]) -> Iterator[_Input]:
    for root in roots:
        files = _walk(root, set()) if root.is_dir() else iter([root])
        for path in files:
            if path.suffix.lower() == ".zip":
                yield from _zip_members(path)
            else:
                yield str(path), path.name, _file_reader(path)


def _unusable(reason: str) -> Callable[[], bytes]:
    def read() -> bytes:
        raise Unusable(reason)

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
        elif entry.is_file():
            yield entry


def _file_reader(path: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            return path.read_bytes()
        except OSError as e:
            raise Unusable(f"unreadable ({e.strerror or e})") from e

    return read


def _zip_members(path: Path) -> Iterator[_Input]:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        yield str(path), path.name, _unusable(f"not a readable zip archive ({e})")
        return
    with archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            parts = info.filename.split("/")
            if info.is_dir() or any(p.startswith(".") or p == "__MACOSX" for p in parts):
                continue
            source = f"{path}!{info.filename}"
            if info.filename.lower().endswith(".zip"):
                yield source, parts[-1], _unusable("zip inside a zip is not supported")
            else:
                yield source, parts[-1], _member_reader(archive, info)


def _member_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            return archive.read(info)
        except (RuntimeError, zipfile.BadZipFile, NotImplementedError, OSError) as e:
            raise Unusable(f"unreadable zip member ({e})") from e  # encrypted, corrupt, odd compression

    return read


def _stem(name: str) -> str:
    return Path(name).stem


def _display_name(source: str) -> str:
    outer, bang, inner = source.partition("!")
    return Path(outer).name + bang + inner
