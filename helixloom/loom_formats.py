"""Other looms' tree files, read into helixloom's export format so ``loom.import_tree`` stores them.

socketteer/loom (the Tkinter loom, https://github.com/socketteer/loom) saves a tree as one JSON
object whose ``root`` is a nested node: ``{"id", "text", "children": [...], ...}``. Written from
reading its ``model.py``/``util/util_tree.py`` (no code taken). What we map, per node:

- ``text`` -> the node's text; the nesting of ``children`` -> parent links.
- ``id`` -> ``meta.loom_id`` (our ids are content hashes, so theirs is kept beside).
- ``meta.source`` ``"prompt"`` -> author ``human``, ``"AI"`` -> author ``ai``, ``"mixed"`` -> ``mixed``
  (an AI text the user edited); ``meta.modified`` -> ``meta.edited``.
- ``meta.creation_timestamp`` (``%Y-%m-%d-%H.%M.%S``, local time) -> ``created_at`` (read as UTC,
  since the file does not say the zone) and kept verbatim as ``meta.loom_created``.
- ``visited`` -> ``meta.visited``; the ``bookmark`` tag (or an older ``"bookmark": true``) ->
  ``meta.bookmark``; other ``tags`` -> ``meta.tags``; ``chapter_id`` -> ``meta.chapter`` (the
  chapter's title from the file's ``chapters``); ``generation`` -> ``meta.generation``;
  ``memories`` (ids) -> ``meta.memories``, with their texts from the file's ``memories`` when there.

Their loom wraps a tree in an immutable, empty root (``mutable: false``); empty-text roots with a
single child are folded away so that the first text is our root (the prompt). UI state (``open``,
``mutable``) is not kept.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from helixloom.errors import HelixloomError

FORMAT = "helixloom.tree/1"  # helixloom's own export (``loom.tree_json``)
SOCKETTEER = "socketteer/loom"
MAX_IMPORT_NODES = 20_000


def detect(data: Any) -> str:
    """Which format a parsed tree file is in: ``helixloom.tree/1`` or ``socketteer/loom``."""
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return FORMAT
    if isinstance(data, dict) and isinstance(data.get("root"), dict) and "children" in data["root"]:
        return SOCKETTEER
    raise HelixloomError(
        f"not a tree file this loom reads ({FORMAT} or socketteer/loom's JSON)", param="format"
    )


def to_helixloom(data: Any) -> dict[str, Any]:
    """Any tree file this module reads, as a ``helixloom.tree/1`` export."""
    return data if detect(data) == FORMAT else from_socketteer(data)


def from_socketteer(data: dict[str, Any]) -> dict[str, Any]:
    """A socketteer/loom tree file as a ``helixloom.tree/1`` export (see the module's mapping)."""
    root = data["root"]
    while (
        isinstance(root, dict)
        and not root.get("text")
        and isinstance(root.get("children"), list)
        and len(root["children"]) == 1
    ):
        root = root["children"][0]
    chapters: dict[str, Any] = data["chapters"] if isinstance(data.get("chapters"), dict) else {}
    memories: dict[str, Any] = data["memories"] if isinstance(data.get("memories"), dict) else {}
    nodes: list[dict[str, Any]] = []
    # Iterative: their trees can be thousands of levels deep (one node per sentence).
    stack: list[tuple[Any, int | None]] = [(root, None)]
    while stack:
        item, parent = stack.pop()
        if len(nodes) >= MAX_IMPORT_NODES:
            raise HelixloomError(f"a tree of more than {MAX_IMPORT_NODES} nodes", param="nodes")
        if not isinstance(item, dict) or not isinstance(item.get("text", ""), str):
            raise HelixloomError(f"node {len(nodes)} is not a loom node with a text", param="nodes")
        index = len(nodes)
        nodes.append(_node(item, index, parent, chapters, memories))
        kids = item.get("children") or []
        if not isinstance(kids, list):
            raise HelixloomError(f"node {index}: children must be a list", param="nodes")
        stack.extend((c, index) for c in reversed(kids))
    return {"format": FORMAT, "nodes": nodes, "imported_from": SOCKETTEER}


def _node(
    item: dict[str, Any], index: int, parent: int | None, chapters: dict[str, Any], memories: dict[str, Any]
) -> dict[str, Any]:
    their: dict[str, Any] = item["meta"] if isinstance(item.get("meta"), dict) else {}
    meta: dict[str, Any] = {"source": SOCKETTEER}
    if item.get("id") is not None:
        meta["loom_id"] = str(item["id"])
    if "visited" in item:
        meta["visited"] = bool(item["visited"])
    tags = [t for t in item["tags"] if isinstance(t, str)] if isinstance(item.get("tags"), list) else []
    if "bookmark" in tags or item.get("bookmark") is True:
        meta["bookmark"] = True
    if [t for t in tags if t != "bookmark"]:
        meta["tags"] = [t for t in tags if t != "bookmark"]
    chapter = chapters.get(str(item.get("chapter_id"))) if item.get("chapter_id") is not None else None
    if isinstance(chapter, dict) and isinstance(chapter.get("title"), str):
        meta["chapter"] = chapter["title"]
    if isinstance(item.get("generation"), dict):
        meta["generation"] = item["generation"]
    if isinstance(item.get("memories"), list):
        meta["memories"] = [
            memories[m].get("text") if isinstance(memories.get(m), dict) else m
            for m in item["memories"]
            if isinstance(m, str)
        ]
    if "modified" in their:
        meta["edited"] = bool(their["modified"])
    created = None
    stamp = their.get("creation_timestamp")
    if isinstance(stamp, str):
        meta["loom_created"] = stamp
        try:
            created = datetime.strptime(stamp, "%Y-%m-%d-%H.%M.%S").replace(tzinfo=UTC)
        except ValueError:
            created = None
    source = their.get("source")
    authors = {"prompt": "human", "AI": "ai", "mixed": "mixed"}
    author = authors.get(source) if isinstance(source, str) else None
    return {
        "id": str(index),
        "parent_id": None if parent is None else str(parent),
        "text": item.get("text", ""),
        "author": author,
        "meta": meta,
        "created_at": created.isoformat(timespec="microseconds") if created else None,
    }
