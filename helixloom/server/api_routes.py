"""``/api``: the store's sessions, feedback (thumbs up/down) on any recorded answer, and Weave searches
steered by yes/no questions or by a reward (AutoLoom)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import Field

from helixloom.errors import HelixloomError
from helixloom.server.pipelines import weave_search
from helixloom.server.protocol import Feedback, WeaveRequest, not_found
from helixloom.server.served_rewards import steering_rewards
from helixloom.server.state import state_of

router = APIRouter(prefix="/api")


class WeaveWithReward(WeaveRequest):
    # head:NAME / rm:NAME (trained under HELIXLOOM_HOME/rewards), improve:NAME[@ROUND] (what an improve
    # run learned from its users' ratings), constitution, evaluator[:QUESTION] or judge. Never py: or a
    # file or a model: those come only from the operator's CLI.
    reward: str | None = Field(None, max_length=1000)


@router.get("/sessions")
def list_sessions(
    request: Request,
    model: str | None = None,
    kind: str | None = None,
    rating: Literal["up", "down"] | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = Query(50, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=2**62),  # sqlite's integers are 64-bit: larger overflowed (a 500)
) -> dict[str, Any]:
    sessions = state_of(request).store.list_sessions(
        kind=kind, model=model, rating=rating, since=since, until=until, limit=limit, offset=offset
    )
    return {"object": "list", "data": [asdict(s) for s in sessions]}


@router.get("/sessions/{session_id}", response_model=None)
def get_session(session_id: str, request: Request) -> Any:
    store = state_of(request).store
    session = store.get_session(session_id)
    if session is None:
        return not_found(f"no session {session_id}", "session_id")
    return {
        **asdict(session),
        "messages": [asdict(m) for m in store.get_messages(session_id)],
        "ratings": [asdict(r) for r in store.ratings_for("session", session_id)],
    }


@router.get("/rewards")
def list_rewards(request: Request) -> dict[str, Any]:
    """The rewards a search may be steered by (``"reward"`` on ``/api/weave`` and the loom's weave)."""
    return {"object": "list", "data": steering_rewards(state_of(request))}


@router.post("/weave")
def run_weave(body: WeaveWithReward, request: Request) -> dict[str, Any]:
    """Run a Weave search on the served model, steered by ``questions`` or a ``reward``; every node is
    stored as a tree."""
    state = state_of(request)
    adapter = None
    if body.model is not None and body.model != state.base_id:
        target = state.resolve(body.model)
        if target.kind != "adapter":
            raise HelixloomError(
                f"weave generates with the base model or an adapter, not {body.model}", param="model"
            )
        adapter = target.adapter
    result, tree_id = weave_search(state, body.prompt, body, adapter, reward=body.reward)
    return {
        "tree_id": tree_id,
        "text": result.text,
        "generated": result.generated,
        "best": [
            {
                "node_id": n.node_id,
                "text": n.branch_text(include_root=False),
                "score": n.score,
                "depth": n.depth,
            }
            for n in result.best[:5]
        ],
    }


@router.post("/sessions/{session_id}/feedback", response_model=None)
def feedback(session_id: str, body: Feedback, request: Request) -> Any:
    store = state_of(request).store
    if store.get_session(session_id) is None:
        return not_found(f"no session {session_id}", "session_id")
    score = 1 if body.score == "up" else -1
    if body.message_id is not None:
        if body.message_id not in {m.id for m in store.get_messages(session_id)}:
            raise HTTPException(404, f"no message {body.message_id} in session {session_id}")
        rating = store.add_rating("message", body.message_id, score, body.reason)
    else:
        rating = store.add_rating("session", session_id, score, body.reason)
    return asdict(rating)
