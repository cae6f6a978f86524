"""Documents in: files, folders and zip archives to plain text with content-addressed ids, then chunks.

A document's id is the first 10 hex characters of the sha256 of its extracted text (Helix's rule), so
the same text gets the same id whatever its file is called; the group id hashes the sorted ids, so the
same set of documents gets the same group id in any order. A file that cannot be used (wrong type, not
UTF-8, encrypted, empty, a duplicate) is reported in ``Ingested.skipped`` and never raises: one bad file
in a folder must not stop the rest. Only a path that does not exist raises, because that is a typo.

``chunk`` cuts a text into pieces that fit a token budget as the caller's tokenizer counts them, with
overlap, preferring paragraph breaks, then line breaks, then spaces.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helixloom.errors import HelixloomError

SUPPORTED_EXTENSIONS: dict[str, str] = {
    ".txt": "txt",
    ".md": "md",
    ".markdown": "md",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".json": "json",
}


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


class _Unusable(Exception):
    """An input that cannot be used; its message is the reason shown to the user."""


# ---------------------------------------------------------------------------------------------- ingest


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
            kind, text, title = _extract(name, read())
        except _Unusable as e:
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
        raise _Unusable(reason)

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
            raise _Unusable(f"unreadable ({e.strerror or e})") from e

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
            raise _Unusable(f"unreadable zip member ({e})") from e  # encrypted, corrupt, odd compression

    return read


def _extract(name: str, data: bytes) -> tuple[str, str, str | None]:
    """(kind, text, title or None) of one file's bytes; raises ``_Unusable`` with the reason."""
    suffix = Path(name).suffix.lower()
    kind = SUPPORTED_EXTENSIONS.get(suffix)
    if kind is None:
        raise _Unusable(f"unsupported type {suffix}" if suffix else "unsupported type (no extension)")
    title: str | None = None
    if kind == "html":
        text, title = _html_text(data)
    elif kind == "pdf":
        text, title = _pdf_text(data)
    elif kind == "json":
        text = _conversation_text(_decode(data))
    else:
        text = _decode(data)
    text = re.sub(r"[ \t]+\n", "\n", text.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if not text:
        raise _Unusable("no text found (a scanned PDF?)" if kind == "pdf" else "empty (no text)")
    if kind in ("md", "txt"):
        title = _markdown_title(text)
    return kind, text, title


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")  # strict UTF-8 that also drops a byte-order mark
    except UnicodeDecodeError:
        raise _Unusable("not UTF-8 text") from None


def _markdown_title(text: str) -> str | None:
    match = re.search(r"^# +(\S.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def _stem(name: str) -> str:
    return Path(name).stem


def _display_name(source: str) -> str:
    outer, bang, inner = source.partition("!")
    return Path(outer).name + bang + inner


# ------------------------------------------------------------------------------------------ formats

_DROPPED_TAGS = ("script", "style", "nav", "footer", "noscript", "template", "head")
_HEADINGS = {f"h{i}": i for i in range(1, 7)}
_BLOCKS = frozenset(
    {"p", "div", "section", "article", "main", "header", "aside", "blockquote", "table", "thead", "tbody"}
    | {"tfoot", "tr", "dl", "dt", "dd", "figure", "figcaption", "form", "address", "hr", "br", "body", "html"}
)


def _html_text(data: bytes) -> tuple[str, str | None]:
    """Markdown-ish text of an HTML page (headings as ``#`` lines, list items as ``- item``) and its title."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "html.parser")  # bytes: bs4 honours the page's declared charset
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    if not title and (h1 := soup.find("h1")):
        title = h1.get_text(" ", strip=True)
    for tag in soup.find_all(list(_DROPPED_TAGS)):
        tag.decompose()
    renderer = _HtmlRenderer()
    renderer.visit(soup)
    renderer.flush()
    return re.sub(r"\n{3,}", "\n\n", "\n".join(renderer.lines)).strip(), title or None


class _HtmlRenderer:
    """Walks the tree in document order; inline text gathers into a line that block elements end."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.buffer: list[str] = []
        self.marker = ""  # "- " (indented by list depth) while inside a list item
        self.depth = 0

    def flush(self) -> None:
        line = " ".join("".join(self.buffer).split())
        if line:
            self.lines.append(self.marker + line)
            self.marker = ""
        self.buffer = []

    def visit(self, node: Any) -> None:
        from bs4 import NavigableString, Tag
        from bs4.element import PreformattedString

        if isinstance(node, NavigableString):
            if not isinstance(node, PreformattedString):  # comments, doctypes, CDATA
                self.buffer.append(str(node))
            return
        if not isinstance(node, Tag):
            return
        name = node.name
        if name in _HEADINGS:
            self.flush()
            self.lines += ["", "#" * _HEADINGS[name] + " " + " ".join(node.get_text(" ").split()), ""]
        elif name == "li":
            self.flush()
            self.marker = "  " * max(self.depth - 1, 0) + "- "
            self._children(node)
            self.flush()
        elif name in ("ul", "ol"):
            self.flush()
            self.depth += 1
            self._children(node)
            self.depth -= 1
            self.flush()
            if self.depth == 0:
                self.lines.append("")
        elif name == "pre":
            self.flush()
            self.lines += ["", node.get_text().strip("\n"), ""]
        elif name in ("td", "th"):
            self.buffer.append(" ")
            self._children(node)
            self.buffer.append(" ")
        elif name in _BLOCKS:
            self.flush()
            self._children(node)
            self.flush()
            if name not in ("br", "tr", "dt", "dd"):
                self.lines.append("")
        else:
            self._children(node)

    def _children(self, node: Any) -> None:
        for child in list(node.children):
            self.visit(child)


def _pdf_text(data: bytes) -> tuple[str, str | None]:
    """Text of every page joined with blank lines, and the metadata title; encrypted PDFs are unusable."""
    import pypdf

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):  # owner-only protection opens with ""
            raise _Unusable("encrypted PDF (needs a password)")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
        meta = reader.metadata
        title = str(meta.title).strip() if meta is not None and meta.title else None
    except _Unusable:
        raise
    except Exception as e:  # pypdf raises many kinds of errors on damaged files
        raise _Unusable(f"unreadable PDF ({type(e).__name__}: {e})") from e
    return "\n\n".join(p for p in pages if p), title or None


def _conversation_text(raw: str) -> str:
    """A chat export as "role: content" lines; conversations are separated by a blank line."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise _Unusable(f"not valid JSON ({e.msg} at line {e.lineno})") from None
    conversations = _conversations(value)
    if conversations is None:
        raise _Unusable(
            'JSON is not a conversation export (expected [{"role", "content"}...], '
            '{"messages": [...]}, or a list of those)'
        )
    return "\n\n".join(
        "\n".join(f"{role}: {content}" for role, content in conv if content.strip()) for conv in conversations
    )


def _conversations(value: Any) -> list[list[tuple[str, str]]] | None:
    single = _messages(value)
    if single is not None:
        return [single]
    if isinstance(value, list) and value:
        many = [_messages(item) for item in value]
        if all(m is not None for m in many):
            return [m for m in many if m is not None]
    return None


def _messages(value: Any) -> list[tuple[str, str]] | None:
    if isinstance(value, dict) and "messages" in value:
        value = value["messages"]
    if not isinstance(value, list) or not value:
        return None
    out = []
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return None
        content = _content_text(message.get("content"))
        if content is None:
            return None
        out.append((message["role"], content))
    return out


def _content_text(content: Any) -> str | None:
    if content is None:  # e.g. an assistant turn that only calls tools
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI-style parts: keep the text ones
        texts = [p.get("text") for p in content if isinstance(p, dict)]
        return "\n".join(t for t in texts if isinstance(t, str))
    return None


# -------------------------------------------------------------------------------------------- chunk

_PARAGRAPH, _LINE, _SPACE, _NONE = 0, 1, 2, 3  # strength of the break before a unit, strongest first


@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    tokens: int
    level: int  # the break between the previous unit and this one


def chunk(
    text: str,
    count_tokens: Callable[[str], int],
    *,
    max_tokens: int = 1024,
    overlap_tokens: int = 128,
) -> list[str]:
    """Cut ``text`` into chunks of at most ``max_tokens`` as ``count_tokens`` counts them.

    Every chunk is a slice of ``text`` with no whitespace at either end. Each chunk after the first starts
    with the last ~``overlap_tokens`` of the previous chunk, from a word start (left out only where the
    next piece of text would not fit beside it). Cuts fall at blank lines where a cut there leaves the
    chunk at least half full, else at line breaks, else between words; a single word is cut only when it
    alone exceeds ``max_tokens``. Dropping each chunk's overlap and joining the rest gives back the text
    up to whitespace at the cuts. The tokenizer runs over each part of the text a bounded number of
    times, so the work grows linearly with the text.
    """
    if max_tokens < 16:
        raise HelixloomError(f"max_tokens must be at least 16, not {max_tokens}", param="max_tokens")
    if not 0 <= overlap_tokens < max_tokens / 2:
        raise HelixloomError(
            f"overlap_tokens must be at least 0 and under half of max_tokens ({max_tokens}), "
            f"not {overlap_tokens}",
            param="overlap_tokens",
        )
    units = _units(text, count_tokens, max_tokens)
    if not units:
        return []
    prefix = [0]  # prefix[i]: estimated tokens of units[:i]
    for u in units:
        prefix.append(prefix[-1] + u.tokens)
    chunks: list[str] = []
    first = 0  # the first unit not yet in any chunk
    overlap_start, overlap_count = units[0].start, 0
    while first < len(units):
        if overlap_count + units[first].tokens > max_tokens:
            overlap_start, overlap_count = units[first].start, 0
        # The most units that fit by estimate, then the best break among them, then check the real count.
        limit = first + 1
        while limit < len(units) and overlap_count + prefix[limit + 1] - prefix[first] <= max_tokens:
            limit += 1
        while True:
            end = _best_cut(units, prefix, first, limit, max_tokens - overlap_count)
            piece = text[overlap_start : units[end - 1].end]
            real = count_tokens(piece)
            if real <= max_tokens:
                break
            if end == first + 1:  # one unit fits alone by construction: give up the overlap
                overlap_start, overlap_count = units[first].start, 0
                continue
            excess, limit = real - max_tokens, end - 1
            while limit > first + 1 and prefix[end] - prefix[limit] < excess:
                limit -= 1
        chunks.append(piece)
        first = end
        if first < len(units) and overlap_tokens:
            overlap_start, overlap_count = _overlap(
                text, overlap_start, units[end - 1].end, real, count_tokens, overlap_tokens
            )
            if overlap_start == units[end - 1].end:
                overlap_start = units[first].start
        elif first < len(units):
            overlap_start, overlap_count = units[first].start, 0
    return chunks


def _best_cut(units: list[_Unit], prefix: list[int], first: int, limit: int, budget: int) -> int:
    """The end (exclusive unit index) in ``first+1..limit`` with the strongest break, latest on ties,
    among the ends that fill at least half of ``budget``."""
    if limit == len(units):
        return limit
    half = prefix[first] + budget / 2
    ends = [e for e in range(first + 1, limit + 1) if prefix[e] >= half] or list(range(first + 1, limit + 1))
    return min(ends, key=lambda e: (units[e].level, -e))


_WORD_START = re.compile(r"(?<!\S)\S")


def _overlap(
    text: str, start: int, end: int, end_count: int, count_tokens: Callable[[str], int], budget: int
) -> tuple[int, int]:
    """(start, tokens) of the longest tail of ``text[start:end]`` that begins at a word start and counts
    at most ``budget`` tokens; ``(end, 0)`` when even its last word is too long."""
    chars_per_token = (end - start) / max(end_count, 1)
    for reach in (int(chars_per_token * budget * 2) + 64, end - start):  # a guess, then the whole chunk
        window = max(start, end - reach)
        starts = [m.start() for m in _WORD_START.finditer(text, window, end)]  # sees text before window
        if not starts:
            continue
        if window > start and count_tokens(text[starts[0] : end]) <= budget:
            continue  # the window was too small: the overlap may reach further back
        lo, hi, best = 0, len(starts) - 1, (end, 0)
        while lo <= hi:  # the earliest start whose tail fits; tails shrink as the start moves right
            mid = (lo + hi) // 2
            n = count_tokens(text[starts[mid] : end])
            if n <= budget:
                best, hi = (starts[mid], n), mid - 1
            else:
                lo = mid + 1
        return best
    return end, 0


def _units(text: str, count_tokens: Callable[[str], int], max_tokens: int) -> list[_Unit]:
    """The text as spans that each fit ``max_tokens``: whole paragraphs where they fit, else lines, else
    words, else pieces of a word; each with the strength of the break before it."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    levels = [_PARAGRAPH]
    for (_, prev_end), (start, _) in itertools.pairwise(words):
        newlines = text.count("\n", prev_end, start)
        levels.append(_PARAGRAPH if newlines >= 2 else _LINE if newlines else _SPACE)
    units: list[_Unit] = []
    _split(text, words, levels, 0, len(words), _PARAGRAPH, count_tokens, max_tokens, units)
    return units


def _split(
    text: str,
    words: list[tuple[int, int]],
    levels: list[int],
    lo: int,
    hi: int,
    level: int,
    count_tokens: Callable[[str], int],
    max_tokens: int,
    out: list[_Unit],
) -> None:
    """Append units for ``words[lo:hi]``, grouped at breaks of ``level`` or stronger, splitting groups
    that do not fit at the next weaker level."""
    group = lo
    for i in range(lo + 1, hi + 1):
        if i < hi and levels[i] > level:
            continue
        start, end = words[group][0], words[i - 1][1]
        n = count_tokens(text[start:end])
        if n <= max_tokens:
            out.append(_Unit(start, end, n, levels[group]))
        elif level == _SPACE:  # a single word longer than a chunk
            _split_word(text, start, end, levels[group], count_tokens, max_tokens, out)
        else:
            _split(text, words, levels, group, i, level + 1, count_tokens, max_tokens, out)
        group = i


def _split_word(
    text: str,
    start: int,
    end: int,
    level: int,
    count_tokens: Callable[[str], int],
    max_tokens: int,
    out: list[_Unit],
) -> None:
    """Cut one over-long word into the longest pieces that fit (found by doubling, then bisection)."""
    while start < end:
        good, bad, step = start + 1, end + 1, 1  # text[start:good] fits (one character always does)
        while good < end:  # grow by doubling steps until a piece does not fit
            probe = min(good + step, end)
            if count_tokens(text[start:probe]) > max_tokens:
                bad = probe
                break
            good, step = probe, step * 2
        while bad - good > 1:
            mid = (good + bad) // 2
            if count_tokens(text[start:mid]) <= max_tokens:
                good = mid
            else:
                bad = mid
        out.append(_Unit(start, good, count_tokens(text[start:good]), level))
        start, level = good, _NONE
