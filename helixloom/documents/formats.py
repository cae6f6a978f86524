"""File formats: one file's bytes to plain text and a title, for each supported type.

Markdown and plain text are read as UTF-8; HTML becomes markdown-ish text (headings as ``#`` lines,
list items as ``- item``) without scripts, styles and navigation; a PDF gives the text of its pages;
a JSON chat export gives "role: content" lines. A file that cannot be used raises ``Unusable`` with
the reason shown to the user; markup nested deeper than ``max_depth`` raises ``limits.Refused``.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

from helixloom.documents.limits import Refused

SUPPORTED_EXTENSIONS: dict[str, str] = {
    ".txt": "txt",
    ".md": "md",
    ".markdown": "md",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".json": "json",
}


class Unusable(Exception):
    """An input that cannot be used; its message is the reason shown to the user."""


def kind_of(name: str) -> str:
    """The kind ("md", "html", ...) of a file called ``name``, by its extension; ``Unusable`` for an
    unsupported one. Judged from the name alone, so an unsupported file is never read."""
    suffix = Path(name).suffix.lower()
    kind = SUPPORTED_EXTENSIONS.get(suffix)
    if kind is None:
        raise Unusable(f"unsupported type {suffix}" if suffix else "unsupported type (no extension)")
    return kind


def extract(name: str, data: bytes, *, max_depth: int) -> tuple[str, str, str | None]:
    """(kind, text, title or None) of one file's bytes; raises ``Unusable`` with the reason, and
    ``Refused`` for HTML or JSON nested more than ``max_depth`` deep."""
    kind = kind_of(name)
    title: str | None = None
    if kind == "html":
        text, title = _html_text(data, max_depth)
    elif kind == "pdf":
        text, title = _pdf_text(data)
    elif kind == "json":
        text = _conversation_text(_decode(data), max_depth)
    else:
        text = _decode(data)
    text = re.sub(r"[ \t]+\n", "\n", text.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if not text:
        raise Unusable("no text found (a scanned PDF?)" if kind == "pdf" else "empty (no text)")
    if kind in ("md", "txt"):
        title = _markdown_title(text)
    return kind, text, title


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")  # strict UTF-8 that also drops a byte-order mark
    except UnicodeDecodeError:
        raise Unusable("not UTF-8 text") from None


def _markdown_title(text: str) -> str | None:
    match = re.search(r"^# +(\S.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


# -------------------------------------------------------------------------------------------- html

_DROPPED_TAGS = ("script", "style", "nav", "footer", "noscript", "template", "head")
_HEADINGS = {f"h{i}": i for i in range(1, 7)}
_BLOCKS = frozenset(
    {"p", "div", "section", "article", "main", "header", "aside", "blockquote", "table", "thead", "tbody"}
    | {"tfoot", "tr", "dl", "dt", "dd", "figure", "figcaption", "form", "address", "hr", "br", "body", "html"}
)


def _html_text(data: bytes, max_depth: int) -> tuple[str, str | None]:
    """Markdown-ish text of an HTML page (headings as ``#`` lines, list items as ``- item``) and its title."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "html.parser")  # bytes: bs4 honours the page's declared charset
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    if not title and (h1 := soup.find("h1")):
        title = h1.get_text(" ", strip=True)
    for tag in soup.find_all(list(_DROPPED_TAGS)):
        tag.decompose()
    renderer = _HtmlRenderer(max_depth)
    try:
        renderer.visit(soup)
    except RecursionError:  # a max_depth set past what the interpreter's stack allows
        raise Refused(
            f"HTML nested too deeply to read (over {renderer.nesting} elements)", "max_depth"
        ) from None
    renderer.flush()
    return re.sub(r"\n{3,}", "\n\n", "\n".join(renderer.lines)).strip(), title or None


class _HtmlRenderer:
    """Walks the tree in document order; inline text gathers into a line that block elements end."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.nesting = 0  # elements open around the node being visited
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
        # The walk recurses once per level: past max_depth it is refused rather than left to hit
        # Python's recursion limit (an exception ends the walk, so nesting need not be unwound then).
        self.nesting += 1
        if self.nesting > self.max_depth:
            raise Refused(f"HTML nested more than {self.max_depth} elements deep", "max_depth")
        for child in list(node.children):
            self.visit(child)
        self.nesting -= 1


# --------------------------------------------------------------------------------------- pdf, json


def _pdf_text(data: bytes) -> tuple[str, str | None]:
    """Text of every page joined with blank lines, and the metadata title; encrypted PDFs are unusable."""
    import pypdf

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):  # owner-only protection opens with ""
            raise Unusable("encrypted PDF (needs a password)")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
        meta = reader.metadata
        title = str(meta.title).strip() if meta is not None and meta.title else None
    except Unusable:
        raise
    except Exception as e:  # pypdf raises many kinds of errors on damaged files
        raise Unusable(f"unreadable PDF ({type(e).__name__}: {e})") from e
    return "\n\n".join(p for p in pages if p), title or None


def _conversation_text(raw: str, max_depth: int) -> str:
    """A chat export as "role: content" lines; conversations are separated by a blank line."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise Unusable(f"not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:  # the parser recurses once per level, up to the interpreter's limit
        raise Refused("JSON nested too deeply to parse", "max_depth") from None
    if _json_depth(value, max_depth) > max_depth:
        raise Refused(f"JSON nested more than {max_depth} arrays or objects deep", "max_depth")
    conversations = _conversations(value)
    if conversations is None:
        raise Unusable(
            'JSON is not a conversation export (expected [{"role", "content"}...], '
            '{"messages": [...]}, or a list of those)'
        )
    return "\n\n".join(
        "\n".join(f"{role}: {content}" for role, content in conv if content.strip()) for conv in conversations
    )


def _json_depth(value: Any, stop: int) -> int:
    """How deep arrays and objects nest in ``value`` (a scalar is 0), counted without recursion; the
    count stops once it is past ``stop``."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= stop:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


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
