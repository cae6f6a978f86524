"""Loom trees: branching completions stored as content-addressed, parent-linked nodes.

A node's id hashes its tree, its parent's id and its text, so the same text under the same
parent is the same node: regenerating an identical branch, or replaying a search, adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass

from helixloom.errors import HelixloomError
from helixloom.store.base import StoreBase
from helixloom.store.records import JSON, Node, TreeSummary, dumps, loads, utc_now

NODE_ID_VERSION = 1


@dataclass(frozen=True)
class NewNode:
    """One node for ``add_nodes``: ``parent_id`` is a stored node or one earlier in the same batch."""

    parent_id: str | None
    text: str
    author: str | None = None
    model: str | None = None
    adapter: str | None = None
    score: float | None = None
    meta: JSON | None = None
    created_at: str | None = None  # an ISO-8601 UTC time; None means now


def node_id(parent_id: str | None, text: str, tree_id: str) -> str:
    """The id of ``text`` under ``parent_id`` in ``tree_id``: sha256 hex of a canonical JSON.

    The JSON is ``{"v": 1, "tree": ..., "parent": ..., "text": ...}`` with sorted keys and no
    spaces, encoded as UTF-8. The version field lets a future scheme coexist with this one.
    """
    canonical = json.dumps(
        {"v": NODE_ID_VERSION, "tree": tree_id, "parent": parent_id, "text": text},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class TreesMixin(StoreBase):
    def add_node(
        self,
        tree_id: str,
        parent_id: str | None,
        text: str,
        *,
        author: str | None = None,
        model: str | None = None,
        adapter: str | None = None,
        score: float | None = None,
        meta: JSON | None = None,
        created_at: str | None = None,
    ) -> Node:
        """Add ``text`` under ``parent_id`` (``None`` for a root) and return the node.

        Idempotent: if the node exists it is returned unchanged, whatever the other arguments say.
        Depth is the parent's depth + 1, or 0 at a root. Raises ``HelixloomError`` when the
        parent does not exist or belongs to another tree.
        """
        spec = NewNode(parent_id, text, author, model, adapter, score, meta, created_at)
        with self._write() as conn:
            nid = self._insert_node(conn, tree_id, spec, {})
            row = conn.execute("SELECT * FROM nodes WHERE id = ?", (nid,)).fetchone()
        return Node.from_row(row)

    def add_nodes(self, tree_id: str, nodes: list[NewNode]) -> list[str]:
        """Add many nodes in one transaction (all or none) and return their ids, in order.

        Each node follows ``add_node``'s rules; a parent may be a node added earlier in the batch.
        One commit for the lot is what makes importing a 10,000-node tree take a second, not minutes.
        """
        depths: dict[str, int] = {}
        with self._write() as conn:
            return [self._insert_node(conn, tree_id, spec, depths) for spec in nodes]

    def _insert_node(
        self, conn: sqlite3.Connection, tree_id: str, spec: NewNode, depths: dict[str, int]
    ) -> str:
        """Insert one node inside a write transaction (nothing if it exists); returns its id.
        ``depths`` caches the depth of nodes this transaction has seen."""
        if not tree_id:
            raise HelixloomError("a node needs a tree_id", param="tree_id")
        parent_id = spec.parent_id
        nid = node_id(parent_id, spec.text, tree_id)
        if nid in depths or conn.execute("SELECT 1 FROM nodes WHERE id = ?", (nid,)).fetchone():
            return nid
        depth = 0
        if parent_id is not None:
            if parent_id in depths:
                depth = depths[parent_id] + 1
            else:
                parent = conn.execute(
                    "SELECT tree_id, depth FROM nodes WHERE id = ?", (parent_id,)
                ).fetchone()
                if parent is None:
                    raise HelixloomError(f"no parent node {parent_id} in tree {tree_id}", param="parent_id")
                if parent["tree_id"] != tree_id:
                    raise HelixloomError(
                        f"parent node {parent_id} belongs to tree {parent['tree_id']}, not {tree_id}",
                        param="parent_id",
                    )
                depth = parent["depth"] + 1
        conn.execute(
            "INSERT INTO nodes (id, tree_id, parent_id, text, depth, author, model, adapter, score,"
            " meta, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                nid,
                tree_id,
                parent_id,
                spec.text,
                depth,
                spec.author,
                spec.model,
                spec.adapter,
                spec.score,
                dumps(spec.meta, "meta"),
                spec.created_at or utc_now(),
            ),
        )
        depths[nid] = depth
        return nid

    def get_node(self, node_id: str) -> Node | None:
        """The node with this id, or ``None``."""
        row = self._fetchone("SELECT * FROM nodes WHERE id = ?", (node_id,))
        return None if row is None else Node.from_row(row)

    def children(self, node_id: str) -> list[Node]:
        """The node's children, oldest first."""
        rows = self._fetchall(
            "SELECT * FROM nodes WHERE parent_id = ? ORDER BY created_at, rowid", (node_id,)
        )
        return [Node.from_row(r) for r in rows]

    def tree_nodes(self, tree_id: str) -> list[Node]:
        """Every node of the tree, by depth then age, so a parent always precedes its children."""
        rows = self._fetchall(
            "SELECT * FROM nodes WHERE tree_id = ? ORDER BY depth, created_at, rowid", (tree_id,)
        )
        return [Node.from_row(r) for r in rows]

    def get_tree_root(self, tree_id: str) -> Node | None:
        """The tree's oldest root node, or ``None`` when there is no such tree."""
        row = self._fetchone(
            "SELECT * FROM nodes WHERE tree_id = ? AND parent_id IS NULL ORDER BY created_at, rowid LIMIT 1",
            (tree_id,),
        )
        return None if row is None else Node.from_row(row)

    def tree_nodes_json(self, tree_id: str) -> list[str]:
        """Every node of the tree as a JSON object (``Node``'s fields, ``rating`` = summed ratings,
        ``has_tokens``; meta without its ``tokens``), in ``tree_nodes`` order.

        SQLite writes the JSON itself: decoding every node's meta in Python and encoding it again
        took most of the second a 10,000-node tree needed; this takes a tenth of that."""
        rows = self._fetchall(
            """
            SELECT json_object(
                'id', n.id, 'tree_id', n.tree_id, 'parent_id', n.parent_id, 'text', n.text,
                'depth', n.depth, 'author', n.author, 'model', n.model, 'adapter', n.adapter,
                'score', n.score, 'meta', json(json_remove(n.meta, '$.tokens')),
                'created_at', n.created_at, 'rating', COALESCE(r.total, 0),
                'has_tokens',
                json(CASE WHEN json_type(n.meta, '$.tokens') IS NULL THEN 'false' ELSE 'true' END)
            ) AS item
            FROM nodes n LEFT JOIN (
                SELECT target_id, SUM(score) AS total FROM ratings
                WHERE target_type = 'node' AND target_id IN (SELECT id FROM nodes WHERE tree_id = ?)
                GROUP BY target_id
            ) r ON r.target_id = n.id
            WHERE n.tree_id = ? ORDER BY n.depth, n.created_at, n.rowid
            """,
            (tree_id, tree_id),
        )
        return [r["item"] for r in rows]

    def tree_ratings(self, tree_id: str) -> dict[str, int]:
        """The summed rating of every rated node of the tree, in one query (not one per node)."""
        rows = self._fetchall(
            "SELECT r.target_id, SUM(r.score) AS total FROM ratings r JOIN nodes n ON n.id = r.target_id"
            " WHERE r.target_type = 'node' AND n.tree_id = ? GROUP BY r.target_id",
            (tree_id,),
        )
        return {r["target_id"]: r["total"] for r in rows}

    def search_nodes(self, tree_id: str, query: str, *, limit: int = 200) -> list[Node]:
        """Nodes of the tree whose text holds ``query`` (case-insensitive for ASCII), oldest first."""
        # LIKE with an escape: a user's % or _ is a character to find, not a wildcard.
        pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._fetchall(
            "SELECT * FROM nodes WHERE tree_id = ? AND text LIKE ? ESCAPE '\\'"
            " ORDER BY depth, created_at, rowid LIMIT ?",
            (tree_id, pattern, limit),
        )
        return [Node.from_row(r) for r in rows]

    def set_node_score(self, node_id: str, score: float | None) -> Node:
        """Set (or clear, with ``None``) the node's score. Raises ``HelixloomError`` for an unknown node."""
        with self._write() as conn:
            if conn.execute("UPDATE nodes SET score = ? WHERE id = ?", (score, node_id)).rowcount == 0:
                raise HelixloomError(f"no node {node_id}")
            row = conn.execute("SELECT * FROM nodes WHERE id = ?", (node_id,)).fetchone()
        return Node.from_row(row)

    def update_node_meta(self, node_id: str, meta: JSON) -> Node:
        """Merge ``meta`` into the node's meta (top-level keys of ``meta`` win) and return the node.

        Raises ``HelixloomError`` for an unknown node.
        """
        with self._write() as conn:
            row = conn.execute("SELECT meta FROM nodes WHERE id = ?", (node_id,)).fetchone()
            if row is None:
                raise HelixloomError(f"no node {node_id}")
            merged = {**(loads(row["meta"]) or {}), **meta}
            conn.execute("UPDATE nodes SET meta = ? WHERE id = ?", (dumps(merged, "meta"), node_id))
            row = conn.execute("SELECT * FROM nodes WHERE id = ?", (node_id,)).fetchone()
        return Node.from_row(row)

    def list_trees(self) -> list[TreeSummary]:
        """One summary per tree, the most recently started first; the root is its oldest root node."""
        rows = self._fetchall(
            """
            SELECT t.tree_id, t.node_count, t.created_at, r.id AS root_id, r.text AS root_text
            FROM (
                SELECT tree_id, COUNT(*) AS node_count, MIN(created_at) AS created_at, MIN(rowid) AS first
                FROM nodes GROUP BY tree_id
            ) AS t
            LEFT JOIN nodes r ON r.id = (
                SELECT id FROM nodes WHERE tree_id = t.tree_id AND parent_id IS NULL
                ORDER BY created_at, rowid LIMIT 1
            )
            ORDER BY t.created_at DESC, t.first DESC
            """
        )
        return [
            TreeSummary(
                tree_id=r["tree_id"],
                root_id=r["root_id"],
                root_text=r["root_text"],
                node_count=r["node_count"],
                created_at=r["created_at"],
            )
            for r in rows
        ]
