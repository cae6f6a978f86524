"""vLLM's ``POST /tokenize`` and ``POST /detokenize``, at the server root where vLLM serves them.

A remote engine pointed at this server finds the served model's chat template through them (chat
messages are rendered here) and counts tokens with the served tokenizer. Adapters share the base
model's tokenizer, so any served model name gives the same tokens.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from helixloom.engine import Engine
from helixloom.errors import HelixloomError
from helixloom.server.protocol import DetokenizeRequest, TokenizeRequest
from helixloom.server.state import ServerState, state_of

router = APIRouter()


@router.post("/tokenize")
def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    state = state_of(request)
    engine = _tokenizer(state, body.model)
    body.check()
    if body.messages is not None:
        if not engine.chat_template:
            raise HelixloomError(
                f"{body.model or state.base_id} has no chat template", "send a prompt", param="messages"
            )
        text = engine.format_chat(body.plain_messages(), add_generation_prompt=body.add_generation_prompt)
    else:
        text = body.prompt or ""
    tokens = engine.tokenize(text, add_special_tokens=body.special_tokens)
    return {"count": len(tokens), "max_model_len": engine.max_model_len, "tokens": tokens}


@router.post("/detokenize")
def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, Any]:
    engine = _tokenizer(state_of(request), body.model)
    return {"prompt": engine.detokenize(body.tokens)}


def _tokenizer(state: ServerState, model: str | None) -> Engine:
    """The engine whose tokenizer ``model`` uses: 404 for a name the server does not serve."""
    target = state.resolve(model or state.base_id)
    if target.is_pipeline:
        raise HelixloomError(
            f"{target.name} is a chat pipeline", f"use the base model, {state.base_id}", param="model"
        )
    if not state.engine.supports_tokenize:
        raise HelixloomError(f"this engine ({state.engine.backend}) cannot tokenize", param="model")
    return state.engine
