"""The loom: trees of completions in the store, and the training data people's choices make.

A tree's root holds the prompt; every other node holds a continuation of its parent's branch.
``roll`` adds sampled children, ``edit`` adds a human-written sibling, ratings mark nodes good or
bad. ``export_sft`` turns thumbs-up branches into (prompt, completion) rows; ``export_preferences``
turns ratings and sibling choices into (prompt, chosen, rejected) pairs, as MiniLoom's extractor
did: a branch the user rated up, led to something rated up, or explored further beats its siblings.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from helixloom.engine import Engine, GenerationRequest, sampling
from helixloom.errors import HelixloomError
from helixloom.store import Node, Store

FORMAT = "helixloom.tree/1"


def branch(store: Store, node_id: str) -> list[Node]:
    """The nodes from the root to ``node_id``."""
    path = []
    node = store.get_node(node_id)
    while node is not None:
        path.append(node)
        node = store.get_node(node.parent_id) if node.parent_id else None
    if not path:
        raise HelixloomError(f"no node {node_id}")
    return path[::-1]


def branch_text(store: Store, node_id: str) -> str:
    return "".join(n.text for n in branch(store, node_id))


def roll(
    store: Store,
    engine: Engine,
    node_id: str,
    *,
    n: int = 3,
    max_tokens: int = 48,
    temperature: float = 0.9,
    top_p: float = 1.0,
    adapter: str | None = None,
) -> list[Node]:
    """``n`` sampled continuations of the branch ending at ``node_id``, stored as its children."""
    node = store.get_node(node_id)
    if node is None:
        raise HelixloomError(f"no node {node_id}")
    params = sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p)
    prompt = branch_text(store, node_id)
    results = engine.generate([GenerationRequest(prompt, params, adapter) for _ in range(n)])
    return [
        store.add_node(
            node.tree_id,
            node_id,
            r.text,
            author=engine.model_name,
            model=engine.model_name,
            adapter=adapter,
            meta={"source": "roll", "finish_reason": r.finish_reason},
        )
        for r in results
        if r.text
    ]


def edit(store: Store, node_id: str, text: str) -> Node:
    """A human rewrite of a node: a new sibling (a new root for the root); the original stays."""
    node = store.get_node(node_id)
    if node is None:
        raise HelixloomError(f"no node {node_id}")
    tree = node.tree_id if node.parent_id else uuid.uuid4().hex
    return store.add_node(tree, node.parent_id, text, author="human", meta={"edited_from": node_id})


def tree_json(store: Store, tree_id: str) -> dict[str, Any]:
    """A tree as JSON: its nodes (parent links, text, score, ratings) in creation order."""
    nodes = store.tree_nodes(tree_id)
    if not nodes:
        raise HelixloomError(f"no tree {tree_id}")
    out = []
    for n in nodes:
        ratings = store.ratings_for("node", n.id)
        out.append({**asdict(n), "rating": sum(r.score for r in ratings)})
    return {"format": FORMAT, "tree_id": tree_id, "nodes": out}


MAX_IMPORT_NODES = 20_000
MAX_IMPORT_RATING = 100  # |rating| of one node: each unit is a stored rating row
MAX_IMPORT_RATINGS = 20_000  # rating rows of a whole import


def import_tree(store: Store, data: Any) -> str:
    """Store a tree exported by ``tree_json`` as a new tree; returns its id. Ratings come along.

    The whole export is checked before anything is written, so a bad file adds nothing."""
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or not isinstance(data.get("nodes"), list)
        or not data["nodes"]
    ):
        raise HelixloomError(f"not a helixloom tree export (format {FORMAT!r} with nodes)", param="format")
    items: list[dict[str, Any]] = data["nodes"]
    if len(items) > MAX_IMPORT_NODES:
        raise HelixloomError(f"a tree of more than {MAX_IMPORT_NODES} nodes", param="nodes")
    children: dict[str | None, list[dict[str, Any]]] = {}
    key: dict[int, str] = {}  # id(item) -> the node's id in the export
    ids: set[str] = set()
    for n, item in enumerate(items):
        _check_node(n, item)
        node_id = str(item.get("id", n))
        if node_id in ids:
            raise HelixloomError(f"node {n}: id {node_id!r} appears twice", param="nodes")
        ids.add(node_id)
        key[id(item)] = node_id
        parent = item.get("parent_id")
        children.setdefault(None if parent is None else str(parent), []).append(item)
    if sum(abs(int(item.get("rating") or 0)) for item in items) > MAX_IMPORT_RATINGS:
        raise HelixloomError(f"a tree with more than {MAX_IMPORT_RATINGS} ratings in all", param="nodes")
    if len(children.get(None, [])) != 1 or set(children) - ids - {None}:
        raise HelixloomError("the tree's parent links do not lead to one root", param="nodes")
    order: list[tuple[dict[str, Any], str | None]] = []  # parents before children
    stack: list[tuple[dict[str, Any], str | None]] = [(children[None][0], None)]
    while stack:
        item, parent = stack.pop()
        order.append((item, parent))
        node_id = key[id(item)]
        stack.extend((c, node_id) for c in reversed(children.get(node_id, [])))
    if len(order) != len(items):
        raise HelixloomError("the tree's parent links do not lead to one root", param="nodes")
    tree = uuid.uuid4().hex
    new_ids: dict[str, str] = {}
    for item, parent in order:
        node = store.add_node(
            tree,
            new_ids[parent] if parent is not None else None,
            item["text"],
            author=item.get("author"),
            model=item.get("model"),
            adapter=item.get("adapter"),
            score=item.get("score"),
            meta=item.get("meta"),
        )
        new_ids[key[id(item)]] = node.id
        rating = int(item.get("rating") or 0)
        for _ in range(abs(rating)):
            store.add_rating("node", node.id, 1 if rating > 0 else -1, "imported")
    return tree


def _check_node(n: int, item: Any) -> None:
    """One node of an export: the fields a tree needs, each of the right type."""
    if not isinstance(item, dict):
        raise HelixloomError(f"node {n} is not an object", param="nodes")
    if not isinstance(item.get("text"), str):
        raise HelixloomError(f"node {n}: every node needs a text", param="nodes")
    for key in ("author", "model", "adapter"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise HelixloomError(f"node {n}: {key} must be a string", param="nodes")
    for key in ("id", "parent_id"):
        if item.get(key) is not None and not isinstance(item[key], str | int):
            raise HelixloomError(f"node {n}: {key} must be a string", param="nodes")
    score = item.get("score")
    if score is not None and (
        not isinstance(score, int | float) or isinstance(score, bool) or not math.isfinite(score)
    ):
        raise HelixloomError(f"node {n}: score must be a finite number", param="nodes")
    if item.get("meta") is not None and not isinstance(item["meta"], dict):
        raise HelixloomError(f"node {n}: meta must be an object", param="nodes")
    rating = item.get("rating")
    if rating is not None and (
        not isinstance(rating, int) or isinstance(rating, bool) or abs(rating) > MAX_IMPORT_RATING
    ):
        raise HelixloomError(
            f"node {n}: rating must be a whole number from -{MAX_IMPORT_RATING} to {MAX_IMPORT_RATING}",
            param="nodes",
        )


# ---------------------------------------------------------------------------------------------- exports


def _trees(store: Store) -> Iterator[tuple[list[Node], dict[str, int]]]:
    for summary in store.list_trees():
        nodes = store.tree_nodes(summary.tree_id)
        ratings = {n.id: sum(r.score for r in store.ratings_for("node", n.id)) for n in nodes}
        yield nodes, ratings


def export_sft(store: Store) -> Iterator[dict[str, Any]]:
    """One row per thumbs-up node: the root's prompt and the branch's continuation up to that node."""
    for nodes, ratings in _trees(store):
        by_id = {n.id: n for n in nodes}
        for n in nodes:
            if ratings[n.id] > 0 and n.parent_id is not None:
                path = _path(by_id, n.id)
                yield {
                    "prompt": path[0].text,
                    "completion": "".join(p.text for p in path[1:]),
                    "tree_id": n.tree_id,
                    "node_id": n.id,
                }


def export_preferences(store: Store) -> Iterator[dict[str, Any]]:
    """(prompt, chosen, rejected) pairs between siblings. A sibling wins when it is rated higher, or
    (unrated both) when it leads to a thumbs-up or was explored deeper; ties give no pair."""
    for nodes, ratings in _trees(store):
        by_id = {n.id: n for n in nodes}
        children: dict[str, list[Node]] = {}
        for n in nodes:
            if n.parent_id is not None:
                children.setdefault(n.parent_id, []).append(n)

        for parent_id, kids in children.items():
            if len(kids) < 2:
                continue
            prompt = "".join(p.text for p in _path(by_id, parent_id))
            keys = {k.id: (ratings[k.id], *_below(k, children, ratings)) for k in kids}
            for a in kids:
                for b in kids:
                    if keys[a.id] > keys[b.id] and a.text != b.text:
                        reason = "rating" if keys[a.id][0] != keys[b.id][0] else "exploration"
                        yield {
                            "prompt": prompt,
                            "chosen": a.text,
                            "rejected": b.text,
                            "source": reason,
                            "tree_id": a.tree_id,
                            "chosen_id": a.id,
                            "rejected_id": b.id,
                        }


def _below(node: Node, children: dict[str, list[Node]], ratings: dict[str, int]) -> tuple[int, int]:
    """(thumbs-up nodes, nodes) under ``node``."""
    ups, size = 0, 0
    for c in children.get(node.id, []):
        c_ups, c_size = _below(c, children, ratings)
        ups += c_ups + (ratings[c.id] > 0)
        size += c_size + 1
    return ups, size


def _path(by_id: dict[str, Node], node_id: str) -> list[Node]:
    path = []
    node: Node | None = by_id[node_id]
    while node is not None:
        path.append(node)
        node = by_id.get(node.parent_id) if node.parent_id else None
    return path[::-1]
