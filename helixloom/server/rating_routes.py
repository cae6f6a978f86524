"""The rating page (``/rate?run=NAME``) and its API: the queue an improve run asks people to rate.

``GET /api/rate/{run}/queue`` gives the pairs waiting (chosen by the run's reward uncertainty, see
``helixloom.training.improve``); ``POST /api/rate/{run}/answer`` records a choice: a store
preference (``source`` "rating-page", or "simulated" for the benchmark's simulated users) and the
answer in the run's queue. A run name is a plain folder name; nothing a client sends names a path.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from helixloom.paths import check_name
from helixloom.server.protocol import not_found
from helixloom.server.state import state_of
from helixloom.training import rating_queue

router = APIRouter()


class RatingAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item: str = Field(min_length=1, max_length=200)
    choice: Literal["a", "b", "skip"]
    source: Literal["rating-page", "simulated"] = "rating-page"
    # A thumb on either answer, beside the choice (both down: neither is good).
    thumbs: dict[Literal["a", "b"], Literal["up", "down"]] = Field(default_factory=dict)


@router.get("/rate", include_in_schema=False)
def rate_page() -> FileResponse:
    return FileResponse(str(resources.files("helixloom") / "server" / "static" / "rate.html"))


@router.get("/api/rate/{run}/queue", response_model=None)
def queue(run: str, request: Request, limit: int = Query(20, ge=1, le=200)) -> Any:
    check_name(run, "run name", param="run")
    if not (rating_queue.run_folder(run) / "run.json").is_file():
        return not_found(f"no improve run {run}", "run")
    items = rating_queue.pending(run, limit)
    return {
        "object": "list",
        "run": run,
        "answered": len(rating_queue.answers(run)),
        "data": [{"id": i.id, "round": i.round, "prompt": i.prompt, "a": i.a, "b": i.b} for i in items],
    }


@router.post("/api/rate/{run}/answer", response_model=None)
def answer(run: str, body: RatingAnswer, request: Request) -> Any:
    check_name(run, "run name", param="run")
    if not (rating_queue.run_folder(run) / "run.json").is_file():
        return not_found(f"no improve run {run}", "run")
    store = state_of(request).store
    return rating_queue.answer(
        store,
        run,
        body.item,
        body.choice,
        body.source,
        thumbs={str(k): str(v) for k, v in body.thumbs.items()},
    )
