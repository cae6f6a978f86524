"""The loom's JSON API: trees of completions to branch, roll, weave, edit, rate, export and import.

Everything is in the store (nodes with parent links, ratings), so a reload or a restart shows the
same tree. The web UI at ``/`` is a plain client of these routes.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from helixloom import loom
from helixloom.errors import HelixloomError
from helixloom.server.pipelines import weave_search
from helixloom.server.protocol import WeaveOptions, not_found
from helixloom.server.state import ServerState, state_of

router = APIRouter(prefix="/api")


class NewTree(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)


class Roll(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(3, ge=1, le=16)
    max_tokens: int = Field(48, ge=1, le=2048)
    temperature: float = Field(0.9, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    model: str | None = None  # an adapter to roll with


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
def new_tree(body: NewTree, request: Request) -> dict[str, Any]:
    store = state_of(request).store
    root = store.add_node(uuid.uuid4().hex, None, body.prompt, author="human")
    return loom.tree_json(store, root.tree_id)


@router.get("/trees/{tree_id}", response_model=None)
def get_tree(tree_id: str, request: Request) -> Any:
    store = state_of(request).store
    if not store.tree_nodes(tree_id):
        return not_found(f"no tree {tree_id}", "tree_id")
    return loom.tree_json(store, tree_id)


@router.post("/trees/import")
def import_tree(body: dict[str, Any], request: Request) -> dict[str, Any]:
    store = state_of(request).store
    return loom.tree_json(store, loom.import_tree(store, body))


@router.post("/nodes/{node_id}/children", response_model=None)
def roll(node_id: str, body: Roll, request: Request) -> Any:
    """Quick roll: ``n`` continuations of the branch ending at this node, in one batch."""
    state = state_of(request)
    if state.store.get_node(node_id) is None:
        return not_found(f"no node {node_id}", "node_id")
    adapter = _adapter(state, body.model)
    loom.roll(
        state.store,
        state.engine,
        node_id,
        n=body.n,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        adapter=adapter,
    )
    node = state.store.get_node(node_id)
    assert node is not None
    return loom.tree_json(state.store, node.tree_id)


@router.post("/nodes/{node_id}/weave", response_model=None)
def weave_from(node_id: str, body: WeaveOptions, request: Request) -> Any:
    """Run Weave from this node; the search's nodes join the same tree under it."""
    state = state_of(request)
    node = state.store.get_node(node_id)
    if node is None:
        return not_found(f"no node {node_id}", "node_id")
    weave_search(state, loom.branch_text(state.store, node_id), body, None, parent=node)
    return loom.tree_json(state.store, node.tree_id)


@router.post("/nodes/{node_id}/edit", response_model=None)
def edit(node_id: str, body: Edit, request: Request) -> Any:
    """An edited node becomes a new sibling (the original is kept)."""
    store = state_of(request).store
    if store.get_node(node_id) is None:
        return not_found(f"no node {node_id}", "node_id")
    new = loom.edit(store, node_id, body.text)
    return {**loom.tree_json(store, new.tree_id), "node_id": new.id}


@router.post("/nodes/{node_id}/rate", response_model=None)
def rate(node_id: str, body: Rate, request: Request) -> Any:
    store = state_of(request).store
    node = store.get_node(node_id)
    if node is None:
        return not_found(f"no node {node_id}", "node_id")
    store.add_rating("node", node_id, 1 if body.score == "up" else -1, body.reason)
    return loom.tree_json(store, node.tree_id)


def _adapter(state: ServerState, model: str | None) -> str | None:
    if model is None or model == state.base_id:
        return None
    target = state.resolve(model)
    if target.kind != "adapter":
        raise HelixloomError(f"the loom rolls with the base model or an adapter, not {model}", param="model")
    return target.adapter
