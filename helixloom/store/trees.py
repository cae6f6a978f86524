"""Loom trees: branching completions stored as content-addressed, parent-linked nodes.

A node's id hashes its tree, its parent's id and its text, so the same text under the same
parent is the same node: regenerating an identical branch, or replaying a search, adds nothing.
"""

from __future__ import annotations

import hashlib
import json

from helixloom.errors import HelixloomError
from helixloom.store.base import StoreBase
from helixloom.store.records import JSON, Node, TreeSummary, dumps, loads, utc_now

NODE_ID_VERSION = 1


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
    ) -> Node:
        """Add ``text`` under ``parent_id`` (``None`` for a root) and return the node.

        Idempotent: if the node exists it is returned unchanged, whatever the other arguments say.
        Depth is the parent's depth + 1, or 0 at a root. Raises ``HelixloomError`` when the
        parent does not exist or belongs to another tree.
        """
        if not tree_id:
            raise HelixloomError("a node needs a tree_id", param="tree_id")
        nid = node_id(parent_id, text, tree_id)
        with self._write() as conn:
            row = conn.execute("SELECT * FROM nodes WHERE id = ?", (nid,)).fetchone()
            if row is not None:
                return Node.from_row(row)
            depth = 0
            if parent_id is not None:
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
                    text,
                    depth,
                    author,
                    model,
                    adapter,
                    score,
                    dumps(meta, "meta"),
                    utc_now(),
                ),
            )
            row = conn.execute("SELECT * FROM nodes WHERE id = ?", (nid,)).fetchone()
        return Node.from_row(row)

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
