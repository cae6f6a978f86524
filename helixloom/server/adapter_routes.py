"""vLLM's runtime adapter routes, ``POST /v1/load_lora_adapter`` and ``POST /v1/unload_lora_adapter``,
in vLLM's shapes (request bodies, 200 with a plain-text line, 400 and 404 as vLLM gives them), so
tools written for vLLM load and unload adapters here unchanged.

They change what the server serves, so they sit under ``/v1`` behind the API key like every other
route there; ``lora_path`` comes from a client and is confined (``ServerState.load_adapter``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from helixloom.server.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest, not_found
from helixloom.server.state import AdapterNotFound, state_of

router = APIRouter()


@router.post("/load_lora_adapter", response_model=None)
def load_lora_adapter(body: LoadLoRAAdapterRequest, request: Request) -> PlainTextResponse | JSONResponse:
    try:
        state_of(request).load_adapter(body.lora_name, body.lora_path, inplace=body.load_inplace)
    except AdapterNotFound as exc:
        return not_found(exc.message, param=exc.param)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/unload_lora_adapter", response_model=None)
def unload_lora_adapter(body: UnloadLoRAAdapterRequest, request: Request) -> PlainTextResponse | JSONResponse:
    try:
        state_of(request).unload_adapter(body.lora_name)
    except AdapterNotFound as exc:
        return not_found(exc.message, param=exc.param)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
