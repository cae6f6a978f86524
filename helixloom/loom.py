"""The loom: trees of completions in the store, and the training data people's choices make.

A tree's root holds the prompt; every other node holds a continuation of its parent's branch.
``roll`` adds sampled children (with the model, adapter version, sampler and per-token
log-probabilities recorded on each), ``counterfactual`` branches from another choice of one token,
``ab_roll``/``ab_choose`` compare two models blind and record the choice as a preference pair,
``edit`` adds a human-written sibling, ``mark`` sets bookmarks, visited and hidden flags (nothing is
ever deleted), ratings mark nodes good or bad. ``export_sft`` turns thumbs-up branches into
(prompt, completion) rows; ``export_preferences`` turns ratings, sibling choices and blind A/B
choices into (prompt, chosen, rejected) pairs, as MiniLoom's extractor did: a branch the user rated
up, led to something rated up, or explored further beats its siblings.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

from helixloom.engine import Engine, GenerationRequest, GenerationResult, sampling
from helixloom.errors import HelixloomError
from helixloom.loom_formats import FORMAT, MAX_IMPORT_NODES, to_helixloom
from helixloom.store import Node, Store
from helixloom.store.trees import NewNode
from helixloom.store.trees import node_id as content_id

AB_SOURCE = "loom-ab"


@dataclass(frozen=True)
class Sampler:
    """How a roll samples; a preset names one of ``PRESETS``."""

    temperature: float = 0.9
    top_p: float = 1.0
    top_k: int = 0
    preset: str | None = None


#: Sampler presets (MiniLoom and socketteer/loom keep these per user; these are the common four).
PRESETS: dict[str, Sampler] = {
    "balanced": Sampler(0.9, 1.0, 0, "balanced"),
    "focused": Sampler(0.5, 0.9, 40, "focused"),
    "creative": Sampler(1.2, 0.98, 0, "creative"),
    "greedy": Sampler(0.0, 1.0, 0, "greedy"),
}


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


def _node(store: Store, node_id: str) -> Node:
    node = store.get_node(node_id)
    if node is None:
        raise HelixloomError(f"no node {node_id}")
    return node


def _adapter_version(engine: Engine, adapter: str | None) -> str | None:
    if adapter is None:
        return None
    return next((a.version or None for a in engine.adapters() if a.name == adapter), None)


def _tokens(result: GenerationResult) -> list[Any] | None:
    """Per-token ``[text, logprob, [[alternative, logprob], ...]]`` whose texts join into the
    result's text (the token view splits the node's text by them), or None when they cannot."""
    if not result.logprobs:
        return None
    pieces = _align(result.text, [t.chosen.token for t in result.logprobs])
    if pieces is None:
        return None
    return [
        [piece, round(t.chosen.logprob, 4), [[a.token, round(a.logprob, 4)] for a in t.top]]
        for piece, t in zip(pieces, result.logprobs, strict=True)
    ]


def _align(text: str, tokens: list[str]) -> list[str] | None:
    """Each token's share of ``text``. A special token the text leaves out (``<pad>``, an end of
    sequence) gets ""; byte-level tokens that each hold part of one character (alone they read
    U+FFFD) give the character to the first of them. None when the tokens do not spell the text."""
    pieces, pos, partial = [], 0, False
    for tok in tokens:
        if tok and text.startswith(tok, pos):
            piece, partial = tok, False
        elif "\ufffd" in tok and not partial and pos < len(text) and ord(text[pos]) > 127:
            piece, partial = text[pos], True
        else:
            piece = ""
        pieces.append(piece)
        pos += len(piece)
    return pieces if pos == len(text) else None


def roll(
    store: Store,
    engine: Engine,
    node_id: str,
    *,
    n: int = 3,
    max_tokens: int = 48,
    temperature: float = 0.9,
    top_p: float = 1.0,
    top_k: int = 0,
    preset: str | None = None,
    adapter: str | None = None,
    logprobs: int | None = 5,
    meta: dict[str, Any] | None = None,
    adapter_name: str | None = None,
) -> list[Node]:
    """``n`` sampled continuations of the branch ending at ``node_id``, stored as its children.

    ``preset`` (a name in ``PRESETS``) overrides temperature, top_p and top_k. Each child records
    its model, adapter and adapter version, sampler, generation time and, where the engine gives
    them, each token's log-probability with ``logprobs`` alternatives (the token view's data).
    ``adapter`` is the name the engine knows the adapter by; ``adapter_name`` the name recorded on
    the nodes when that differs (a server that loads each version of an adapter under its own
    engine name records the public one)."""
    node = _node(store, node_id)
    if preset is not None and preset not in PRESETS:
        raise HelixloomError(f"no sampler preset {preset!r}; known: {', '.join(PRESETS)}", param="preset")
    sampler = PRESETS[preset] if preset is not None else Sampler(temperature, top_p, top_k)
    if not engine.supports_logprobs:
        logprobs = None
    params = sampling(
        max_tokens=max_tokens,
        temperature=sampler.temperature,
        top_p=sampler.top_p,
        top_k=sampler.top_k,
        logprobs=logprobs,
    )
    prompt = branch_text(store, node_id)
    started = time.monotonic()
    results = engine.generate([GenerationRequest(prompt, params, adapter) for _ in range(n)])
    elapsed = round(time.monotonic() - started, 3)
    version = _adapter_version(engine, adapter)
    out = []
    for r in results:
        if not r.text:
            continue
        info: dict[str, Any] = {
            "source": "roll",
            "finish_reason": r.finish_reason,
            "sampler": asdict(sampler),
            "seconds": elapsed,
            "adapter_version": version,
            **(meta or {}),
        }
        tokens = _tokens(r)
        if tokens is not None:
            info["tokens"] = tokens
        out.append(
            store.add_node(
                node.tree_id,
                node_id,
                r.text,
                author=engine.model_name,
                model=engine.model_name,
                adapter=adapter_name or adapter,
                meta=info,
            )
        )
    return out


def counterfactual(store: Store, node_id: str, index: int, token: str) -> Node:
    """A sibling of ``node_id`` whose text keeps the node's first ``index`` tokens and then takes
    ``token`` instead of the one the model sampled (socketteer/loom's counterfactual token swap).
    The node must carry its tokens (a roll with logprobs). Roll from the result to continue."""
    node = _node(store, node_id)
    tokens = (node.meta or {}).get("tokens")
    if node.parent_id is None or not tokens:
        raise HelixloomError("this node has no token log-probabilities to branch from", param="node_id")
    # an imported tree's meta is the importer's: each token must be [text, ...] as a roll stores it
    if not isinstance(tokens, list) or not all(
        isinstance(t, list | tuple) and t and isinstance(t[0], str) for t in tokens
    ):
        raise HelixloomError("this node's tokens are not [text, log-probability] pairs", param="node_id")
    if not 0 <= index < len(tokens):
        raise HelixloomError(f"token index {index} is outside 0..{len(tokens) - 1}", param="index")
    if not token or token == tokens[index][0]:
        raise HelixloomError("the alternative must be another, non-empty token", param="token")
    text = "".join(t[0] for t in tokens[:index]) + token
    return store.add_node(
        node.tree_id,
        node.parent_id,
        text,
        author="human",
        meta={
            "source": "counterfactual",
            "counterfactual_of": node_id,
            "token_index": index,
            "replaced": tokens[index][0],
        },
    )


def ab_roll(
    store: Store,
    engine: Engine,
    node_id: str,
    a: str | None,
    b: str | None,
    *,
    max_tokens: int = 48,
    preset: str | None = None,
    names: tuple[str | None, str | None] = (None, None),
) -> tuple[Node, Node]:
    """One continuation from each of two adapters (``None`` is the base model) for a blind
    comparison; both children carry the pair's id under ``meta["ab"]``. ``names`` are the names
    to record when the engine knows the adapters by others (see ``roll``)."""
    pair = uuid.uuid4().hex
    made: list[Node] = []
    for side, adapter, name in (("a", a, names[0]), ("b", b, names[1])):
        kids = roll(
            store,
            engine,
            node_id,
            n=1,
            max_tokens=max_tokens,
            preset=preset,
            adapter=adapter,
            adapter_name=name,
            meta={"ab": {"pair": pair, "side": side}},
        )
        if not kids:
            raise HelixloomError(
                f"model {name or adapter or 'base'} wrote nothing; roll again", param="model"
            )
        made.append(kids[0])
    if made[0].id == made[1].id:
        raise HelixloomError("both models wrote the same text; roll again")
    return made[0], made[1]


def ab_choose(store: Store, chosen_id: str, rejected_id: str) -> int:
    """Record that ``chosen_id`` beat its sibling ``rejected_id`` in a blind comparison, as a
    preference pair (source ``loom-ab``) with both nodes' models; returns the preference's id."""
    chosen, rejected = _node(store, chosen_id), _node(store, rejected_id)
    if chosen.parent_id is None or chosen.parent_id != rejected.parent_id or chosen.id == rejected.id:
        raise HelixloomError("a blind choice is between two different siblings", param="rejected")

    def who(n: Node) -> dict[str, Any]:
        m = n.meta or {}
        return {"model": n.model, "adapter": n.adapter, "adapter_version": m.get("adapter_version")}

    pref = store.add_preference(
        branch_text(store, chosen.parent_id),
        chosen.text,
        rejected.text,
        source=AB_SOURCE,
        chosen_node_id=chosen.id,
        rejected_node_id=rejected.id,
        meta={"tree_id": chosen.tree_id, "blind": True, "chosen": who(chosen), "rejected": who(rejected)},
    )
    store.update_node_meta(chosen.id, {"ab_result": "chosen"})
    store.update_node_meta(rejected.id, {"ab_result": "rejected"})
    return pref.id


MARKS = ("bookmark", "visited", "hidden")


def mark(store: Store, node_id: str, **marks: bool) -> Node:
    """Set the node's bookmark, visited or hidden flags (kept in its meta; hiding deletes nothing)."""
    unknown = set(marks) - set(MARKS)
    if unknown:
        raise HelixloomError(f"unknown mark {sorted(unknown)[0]!r}; known: {', '.join(MARKS)}")
    _node(store, node_id)
    return store.update_node_meta(node_id, dict(marks))


def search(store: Store, tree_id: str, query: str, *, limit: int = 200) -> list[Node]:
    """Full-text search over a tree's nodes: those whose text holds ``query``."""
    if not query.strip():
        return []
    return store.search_nodes(tree_id, query, limit=limit)


def edit(store: Store, node_id: str, text: str) -> Node:
    """A human rewrite of a node: a new sibling (a new root for the root); the original stays."""
    node = store.get_node(node_id)
    if node is None:
        raise HelixloomError(f"no node {node_id}")
    tree = node.tree_id if node.parent_id else uuid.uuid4().hex
    return store.add_node(tree, node.parent_id, text, author="human", meta={"edited_from": node_id})


def tree_json(store: Store, tree_id: str, *, full: bool = False) -> dict[str, Any]:
    """A tree as JSON: its nodes (parent links, text, score, ratings, metadata) in creation order.

    Per-token log-probabilities are big (a 10,000-node tree would carry hundreds of MB of them),
    so they come only with ``full`` (the export); otherwise a node says ``has_tokens`` and
    ``node_json`` gives them one node at a time. ``full`` adds the tree's blind A/B choices."""
    nodes = store.tree_nodes(tree_id)
    if not nodes:
        raise HelixloomError(f"no tree {tree_id}")
    ratings = store.tree_ratings(tree_id)
    out = [_node_json(n, ratings.get(n.id, 0), full) for n in nodes]
    data: dict[str, Any] = {"format": FORMAT, "tree_id": tree_id, "nodes": out}
    if full:
        ids = {n.id for n in nodes}
        data["preferences"] = [
            {k: v for k, v in asdict(p).items() if k != "id"}
            for p in store.list_preferences(source=AB_SOURCE)
            if p.chosen_node_id in ids and p.rejected_node_id in ids
        ]
    return data


def tree_text(store: Store, tree_id: str, **extra: Any) -> str:
    """``tree_json`` (not ``full``) as JSON text, with ``extra`` top-level keys: what the server
    sends after every change. SQLite writes the nodes' JSON, a 10,000-node tree in a quarter second."""
    items = store.tree_nodes_json(tree_id)
    if not items:
        raise HelixloomError(f"no tree {tree_id}")
    head = json.dumps({"format": FORMAT, "tree_id": tree_id, **extra}, ensure_ascii=False)
    return head[:-1] + ', "nodes": [' + ",".join(items) + "]}"


def node_json(store: Store, node_id: str) -> dict[str, Any]:
    """One node with everything it carries, its tokens' log-probabilities included."""
    node = _node(store, node_id)
    return _node_json(node, sum(r.score for r in store.ratings_for("node", node_id)), True)


_NODE_FIELDS = tuple(f.name for f in fields(Node))


def _node_json(n: Node, rating: int, full: bool) -> dict[str, Any]:
    # Not asdict: it deep-copies every meta, two thirds of the time a 10,000-node tree takes.
    item = {name: getattr(n, name) for name in _NODE_FIELDS}
    item["rating"] = rating
    meta = n.meta or {}
    item["has_tokens"] = "tokens" in meta
    if not full and "tokens" in meta:
        item["meta"] = {k: v for k, v in meta.items() if k != "tokens"}
    return item


MAX_IMPORT_RATING = 100  # |rating| of one node: each unit is a stored rating row
MAX_IMPORT_RATINGS = 20_000  # rating rows of a whole import
MAX_IMPORT_PREFERENCES = 20_000


def import_tree(store: Store, data: Any) -> str:
    """Store a tree exported by ``tree_json`` (or another loom's tree file that ``loom_formats``
    reads) as a new tree; returns its id. Ratings, metadata, creation times and blind A/B choices
    come along.

    The whole export is checked before anything is written, and the nodes go in as one
    transaction, so a bad file adds nothing."""
    data = to_helixloom(data) if isinstance(data, dict) and "root" in data else data
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
    prefs = data.get("preferences") or []
    if not isinstance(prefs, list) or len(prefs) > MAX_IMPORT_PREFERENCES:
        raise HelixloomError("preferences must be a list of choices", param="preferences")
    for p in prefs:
        _check_preference(p, ids)
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
    specs = []
    for item, parent in order:
        parent_new = new_ids[parent] if parent is not None else None
        new_ids[key[id(item)]] = content_id(parent_new, item["text"], tree)
        specs.append(
            NewNode(
                parent_new,
                item["text"],
                author=item.get("author"),
                model=item.get("model"),
                adapter=item.get("adapter"),
                score=item.get("score"),
                meta=item.get("meta"),
                created_at=item.get("created_at"),
            )
        )
    store.add_nodes(tree, specs)
    for item, _ in order:
        rating = int(item.get("rating") or 0)
        for _ in range(abs(rating)):
            store.add_rating("node", new_ids[key[id(item)]], 1 if rating > 0 else -1, "imported")
    for p in prefs:
        store.add_preference(
            p["prompt"],
            p["chosen"],
            p["rejected"],
            source=AB_SOURCE,
            chosen_node_id=new_ids[str(p["chosen_node_id"])],
            rejected_node_id=new_ids[str(p["rejected_node_id"])],
            meta=p.get("meta"),
        )
    return tree


def _check_preference(p: Any, ids: set[str]) -> None:
    if not isinstance(p, dict) or any(
        not isinstance(p.get(k), str) for k in ("prompt", "chosen", "rejected")
    ):
        raise HelixloomError("a preference needs prompt, chosen and rejected texts", param="preferences")
    if str(p.get("chosen_node_id")) not in ids or str(p.get("rejected_node_id")) not in ids:
        raise HelixloomError("a preference names nodes that are not in the tree", param="preferences")
    if p.get("meta") is not None and not isinstance(p["meta"], dict):
        raise HelixloomError("a preference's meta must be an object", param="preferences")


def _check_node(n: int, item: Any) -> None:
    """One node of an export: the fields a tree needs, each of the right type."""
    if not isinstance(item, dict):
        raise HelixloomError(f"node {n} is not an object", param="nodes")
    if not isinstance(item.get("text"), str):
        raise HelixloomError(f"node {n}: every node needs a text", param="nodes")
    for key in ("author", "model", "adapter", "created_at"):
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
        rated = store.tree_ratings(summary.tree_id)
        yield nodes, {n.id: rated.get(n.id, 0) for n in nodes}


def export_sft(store: Store) -> Iterator[dict[str, Any]]:
    """One row per thumbs-up node: the root's prompt and the branch's continuation up to that node."""
    for nodes, ratings in _trees(store):
        by_id = {n.id: n for n in nodes}
        for n in nodes:
            if ratings[n.id] > 0 and n.parent_id is not None and not _hidden(n):
                path = _path(by_id, n.id)
                yield {
                    "prompt": path[0].text,
                    "completion": "".join(p.text for p in path[1:]),
                    "tree_id": n.tree_id,
                    "node_id": n.id,
                }


def export_preferences(store: Store) -> Iterator[dict[str, Any]]:
    """(prompt, chosen, rejected) pairs between siblings. A sibling wins when it is rated higher, or
    (unrated both) when it leads to a thumbs-up or was explored deeper; ties give no pair. Blind
    A/B choices made in the loom follow, with source ``loom-ab``."""
    yield from _sibling_preferences(store)
    for p in store.list_preferences(source=AB_SOURCE):
        yield {
            "prompt": p.prompt,
            "chosen": p.chosen,
            "rejected": p.rejected,
            "source": AB_SOURCE,
            "tree_id": (p.meta or {}).get("tree_id"),
            "chosen_id": p.chosen_node_id,
            "rejected_id": p.rejected_node_id,
        }


def _sibling_preferences(store: Store) -> Iterator[dict[str, Any]]:
    for nodes, ratings in _trees(store):
        by_id = {n.id: n for n in nodes}
        children: dict[str, list[Node]] = {}
        for n in nodes:
            if n.parent_id is not None and not _hidden(n):  # an undone node is no one's choice
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


def _hidden(node: Node) -> bool:
    return bool((node.meta or {}).get("hidden"))


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
