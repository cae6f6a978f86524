"""vLLM's ``POST /tokenize``, ``POST /detokenize``, ``GET /tokenizer_info`` and ``GET /version``, at
the server root where vLLM serves them (evaluation harnesses tokenize through them: lm-evaluation-
harness's ``tokenizer_backend=remote``).

A remote engine pointed at this server finds the served model's chat template through them (chat
messages are rendered here) and counts tokens with the served tokenizer. Adapters share the base
model's tokenizer, so any served model name gives the same tokens.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from helixloom import __version__
from helixloom.engine import Engine
from helixloom.engine.remote_chat import SERVER_TEMPLATE
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


@router.get("/tokenizer_info")
def tokenizer_info(request: Request) -> dict[str, Any]:
    """The served tokenizer's special tokens and chat template, as vLLM's ``/tokenizer_info`` gives
    them (what a client that tokenizes remotely needs: BOS to prefix, EOS to stop at)."""
    state = state_of(request)
    engine = _tokenizer(state, None)
    added = engine.tokenize("", add_special_tokens=True)  # what the tokenizer puts before every text
    bos_id = added[0] if added else None
    eos_id = min(engine.eos_token_ids) if engine.eos_token_ids else None
    return {
        "tokenizer_class": engine.backend,
        "bos_token": engine.detokenize([bos_id]) if bos_id is not None else None,
        "bos_token_id": bos_id,
        "eos_token": engine.detokenize([eos_id]) if eos_id is not None else None,
        "eos_token_id": eos_id,
        "pad_token": None,
        "add_bos_token": bos_id is not None,
        # A remote engine renders chat on its server: it has no template text to hand on.
        "chat_template": None if engine.chat_template == SERVER_TEMPLATE else engine.chat_template,
        "model_max_length": engine.max_model_len,
    }


@router.get("/version")
def version() -> dict[str, str]:
    """vLLM's ``/version``: this server's version."""
    return {"version": __version__}


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
