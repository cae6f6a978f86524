"""The loom's JSON API: trees of completions to branch, roll, weave, edit, rate, export and import.

Everything is in the store (nodes with parent links, ratings), so a reload or a restart shows the
same tree. The web UI at ``/`` is a plain client of these routes.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from helixloom import loom
from helixloom.errors import HelixloomError
from helixloom.server.pipelines import weave_search
from helixloom.server.protocol import WeaveOptions, not_found
from helixloom.server.state import ServerState, Target, state_of

router = APIRouter(prefix="/api")


def _json(data: dict[str, Any] | str) -> Response:
    """A tree as a JSON response, encoded once by ``json`` or already JSON text (FastAPI's encoder
    walks every value of every node first: 0.7 s of a 10,000-node tree's 1 s)."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return Response(text, media_type="application/json")


class NewTree(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)


class Roll(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(3, ge=1, le=16)
    max_tokens: int = Field(48, ge=1, le=2048)
    temperature: float = Field(0.9, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, le=1000)
    preset: str | None = None  # a name in loom.PRESETS; overrides temperature, top_p and top_k
    logprobs: int | None = Field(5, ge=0, le=20)  # alternatives kept per token for the token view
    model: str | None = None  # an adapter to roll with


class Counterfactual(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int = Field(ge=0)
    token: str = Field(min_length=1, max_length=256)
    roll: Roll | None = None  # continue from the new branch right away


class AbRoll(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: str | None = None  # base model or adapter names; None is the base model
    b: str | None = None
    max_tokens: int = Field(48, ge=1, le=2048)
    preset: str | None = None


class AbChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chosen: str
    rejected: str


class Marks(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bookmark: bool | None = None
    visited: bool | None = None
    hidden: bool | None = None


class Edit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1)


class Rate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score: Literal["up", "down"]
    reason: str | None = None


@router.get("/trees")
def list_trees(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [asdict(t) for t in state_of(request).store.list_trees()]}


@router.post("/trees")
def new_tree(body: NewTree, request: Request) -> Response:
    store = state_of(request).store
    root = store.add_node(uuid.uuid4().hex, None, body.prompt, author="human")
    return _json(loom.tree_text(store, root.tree_id))


@router.get("/loom/models")
def loom_models(request: Request) -> dict[str, Any]:
    """What a roll can use: the base model and the served adapters (with the loaded ones'
    versions), and the sampler presets."""
    state = state_of(request)
    models: list[dict[str, Any]] = [{"id": state.base_id, "kind": "base", "version": None}]
    for served in sorted(state.served_adapters(), key=lambda a: a.name):
        models.append({"id": served.name, "kind": "adapter", "version": served.version})
    presets = {name: asdict(p) for name, p in loom.PRESETS.items()}
    return {"models": models, "presets": presets, "logprobs": state.engine.supports_logprobs}


@router.get("/trees/{tree_id}", response_model=None)
def get_tree(tree_id: str, request: Request) -> Any:
    store = state_of(request).store
    try:
        return _json(loom.tree_text(store, tree_id))
    except HelixloomError:  # the only one tree_text raises: no such tree
        return not_found(f"no tree {tree_id}", "tree_id")


@router.get("/trees/{tree_id}/export", response_model=None)
def export_tree(tree_id: str, request: Request) -> Any:
    """Everything the tree holds, tokens' log-probabilities and blind A/B choices included."""
    store = state_of(request).store
    if store.get_tree_root(tree_id) is None:
        return not_found(f"no tree {tree_id}", "tree_id")
    return _json(loom.tree_json(store, tree_id, full=True))


@router.get("/trees/{tree_id}/search", response_model=None)
def search_tree(tree_id: str, request: Request, q: str = Query("", max_length=1000)) -> Any:
    """Nodes of the tree whose text holds ``q``."""
    store = state_of(request).store
    found = loom.search(store, tree_id, q)
    return {"object": "list", "data": [{"id": n.id, "text": n.text, "depth": n.depth} for n in found]}


@router.post("/trees/import")
def import_tree(body: dict[str, Any], request: Request) -> Response:
    """A tree file: helixloom's export, or socketteer/loom's JSON."""
    store = state_of(request).store
    return _json(loom.tree_text(store, loom.import_tree(store, body)))


@router.get("/nodes/{node_id}", response_model=None)
def get_node(node_id: str, request: Request) -> Any:
    """One node with everything it carries (its tokens' log-probabilities too)."""
    store = state_of(request).store
    if store.get_node(node_id) is None:
        return not_found(f"no node {node_id}", "node_id")
    return loom.node_json(store, node_id)


@router.post("/nodes/{node_id}/children", response_model=None)
def roll(node_id: str, body: Roll, request: Request) -> Any:
    """Quick roll: ``n`` continuations of the branch ending at this node, in one batch."""
    state = state_of(request)
    node = state.store.get_node(node_id)
    if node is None:
        return not_found(f"no node {node_id}", "node_id")
    made = _roll(state, node_id, body)
    return _json(loom.tree_text(state.store, node.tree_id, new=[n.id for n in made]))


def _roll(state: ServerState, node_id: str, body: Roll) -> list[Any]:
    clash = body.model_fields_set & {"temperature", "top_p", "top_k"}
    if body.preset is not None and clash:
        raise HelixloomError(
            f"a sampler preset sets {sorted(clash)[0]} itself; send one or the other", param="preset"
        )
    target = _target(state, body.model)  # held until the roll is done: it pins the adapter's version
    return loom.roll(
        state.store,
        state.engine,
        node_id,
        n=body.n,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        preset=body.preset,
        logprobs=body.logprobs,
        adapter=target.adapter if target else None,
        adapter_name=target.name if target else None,
    )


@router.post("/nodes/{node_id}/counterfactual", response_model=None)
def counterfactual(node_id: str, body: Counterfactual, request: Request) -> Any:
    """A sibling that takes another token at ``index``; with ``roll``, continued from there."""
    state = state_of(request)
    if state.store.get_node(node_id) is None:
        return not_found(f"no node {node_id}", "node_id")
    new = loom.counterfactual(state.store, node_id, body.index, body.token)
    made = _roll(state, new.id, body.roll) if body.roll is not None else []
    return _json(loom.tree_text(state.store, new.tree_id, node_id=new.id, new=[n.id for n in made]))


@router.post("/nodes/{node_id}/ab", response_model=None)
def ab_roll(node_id: str, body: AbRoll, request: Request) -> Any:
    """One continuation from each of two models, for a blind choice. The page shows them in a
    random order without their models until the choice is made."""
    state = state_of(request)
    node = state.store.get_node(node_id)
    if node is None:
        return not_found(f"no node {node_id}", "node_id")
    # The targets stay referenced until both rolls are done: each holds its adapter version.
    ta, tb = _target(state, body.a), _target(state, body.b)
    a, b = loom.ab_roll(
        state.store,
        state.engine,
        node_id,
        ta.adapter if ta else None,
        tb.adapter if tb else None,
        max_tokens=body.max_tokens,
        preset=body.preset,
        names=(ta.name if ta else None, tb.name if tb else None),
    )
    return _json(loom.tree_text(state.store, node.tree_id, pair=[a.id, b.id]))


@router.post("/ab/choice", response_model=None)
def ab_choice(body: AbChoice, request: Request) -> Any:
    """Record a blind choice between two siblings as a preference pair (source ``loom-ab``)."""
    store = state_of(request).store
    for nid in (body.chosen, body.rejected):
        if store.get_node(nid) is None:
            return not_found(f"no node {nid}", "node_id")
    pref = loom.ab_choose(store, body.chosen, body.rejected)
    node = store.get_node(body.chosen)
    assert node is not None
    return _json(loom.tree_text(store, node.tree_id, preference_id=pref))


@router.post("/nodes/{node_id}/marks", response_model=None)
def set_marks(node_id: str, body: Marks, request: Request) -> Any:
    """Bookmark, visited and hidden flags; saved at once. Returns the node (not the whole tree:
    the page marks every node it visits)."""
    store = state_of(request).store
    if store.get_node(node_id) is None:
        return not_found(f"no node {node_id}", "node_id")
    marks = {k: v for k, v in body.model_dump().items() if v is not None}
    node = loom.mark(store, node_id, **marks)
    return {"id": node.id, "meta": {k: v for k, v in (node.meta or {}).items() if k != "tokens"}}


class LoomWeave(WeaveOptions):
    # steer by a reward instead of the questions: what GET /api/rewards lists (served_rewards' rules)
    reward: str | None = Field(None, max_length=1000)


@router.post("/nodes/{node_id}/weave", response_model=None)
def weave_from(node_id: str, body: LoomWeave, request: Request) -> Any:
    """Run Weave from this node, steered by yes/no questions or a reward; the search's nodes join the
    same tree under it."""
    state = state_of(request)
    node = state.store.get_node(node_id)
    if node is None:
        return not_found(f"no node {node_id}", "node_id")
    weave_search(state, loom.branch_text(state.store, node_id), body, None, parent=node, reward=body.reward)
    return _json(loom.tree_text(state.store, node.tree_id))


@router.post("/nodes/{node_id}/edit", response_model=None)
def edit(node_id: str, body: Edit, request: Request) -> Any:
    """An edited node becomes a new sibling (the original is kept)."""
    store = state_of(request).store
    if store.get_node(node_id) is None:
        return not_found(f"no node {node_id}", "node_id")
    new = loom.edit(store, node_id, body.text)
    return _json(loom.tree_text(store, new.tree_id, node_id=new.id))


@router.post("/nodes/{node_id}/rate", response_model=None)
def rate(node_id: str, body: Rate, request: Request) -> Any:
    store = state_of(request).store
    node = store.get_node(node_id)
    if node is None:
        return not_found(f"no node {node_id}", "node_id")
    store.add_rating("node", node_id, 1 if body.score == "up" else -1, body.reason)
    return _json(loom.tree_text(store, node.tree_id))


def _target(state: ServerState, model: str | None) -> Target | None:
    """The adapter a roll names (``None`` for the base model). The caller keeps the ``Target`` until
    its roll is done: it holds the adapter's version loaded (see ``ServerState.resolve``)."""
    if model is None or model == state.base_id:
        return None
    target = state.resolve(model)
    if target.kind != "adapter":
        raise HelixloomError(f"the loom rolls with the base model or an adapter, not {model}", param="model")
    return target
