"""The FastAPI application: OpenAI-compatible routes under /v1, the store's sessions under /api,
vLLM's /tokenize and /detokenize.

Thin: routes parse, call the Python API (engine, helixnet, store) and shape the answer. Every error
leaves in OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from helixloom.engine.batching import EngineBusy
from helixloom.errors import HelixloomError, ModelNotFound
from helixloom.server.protocol import error_body
from helixloom.server.state import ServerState

log = logging.getLogger("helixloom.server")
#: Routes beside /v1 and /api that need the API key too (vLLM's, where vLLM serves them).
KEYED_ROUTES = ("/tokenize", "/detokenize", "/tokenizer_info")


def create_app(state: ServerState) -> FastAPI:
    """The ASGI app over a ready ``ServerState`` (engine loaded, store open)."""
    from helixloom.server import (
        api_routes,
        file_routes,
        job_routes,
        loom_routes,
        openai_routes,
        rating_routes,
        tokenize_routes,
    )

    app = FastAPI(title="helixloom", version="0.1.0", docs_url="/docs", redoc_url=None)
    app.state.helixloom = state
    app.include_router(openai_routes.router)
    app.include_router(api_routes.router)
    app.include_router(loom_routes.router)
    app.include_router(job_routes.router)
    app.include_router(file_routes.router)
    app.include_router(tokenize_routes.router)
    app.include_router(rating_routes.router)
    static = resources.files("helixloom") / "server" / "static"

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(static / "index.html"))

    @app.get("/chat", include_in_schema=False)
    def chat_page() -> FileResponse:
        return FileResponse(str(static / "chat.html"))

    @app.get("/jobs", include_in_schema=False)
    def jobs_page() -> FileResponse:
        return FileResponse(str(static / "jobs.html"))

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.middleware("http")
    async def require_key(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if not state.hosts.ok(request.headers.get("host")):
            # A page on another site that rebinds its name to this machine carries its own Host.
            return JSONResponse(
                error_body(
                    "this server does not answer to that Host name",
                    "invalid_request_error",
                    code="invalid_host",
                ),
                status_code=421,
            )
        if request.url.path.startswith(("/v1", "/api")) or request.url.path in KEYED_ROUTES:
            try:
                request.state.key_label = state.check_key(request.headers.get("authorization"))
            except PermissionError as exc:
                return JSONResponse(
                    error_body(
                        f"{exc}: send Authorization: Bearer KEY",
                        "invalid_request_error",
                        code="invalid_api_key",
                    ),
                    status_code=401,
                )
        else:
            request.state.key_label = None
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        message = f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid request')}"
        return JSONResponse(
            error_body(message, "invalid_request_error", param=loc[0] if loc else None), status_code=400
        )

    @app.exception_handler(ModelNotFound)
    async def not_found(_: Request, exc: ModelNotFound) -> JSONResponse:
        return JSONResponse(
            error_body(exc.message, "invalid_request_error", param="model", code="model_not_found"),
            status_code=404,
        )

    @app.exception_handler(EngineBusy)
    async def busy(_: Request, exc: EngineBusy) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc), "server_error", code="server_overloaded"),
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own errors (unknown route, wrong method) in OpenAI's envelope too.
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)

    @app.exception_handler(HelixloomError)
    async def user_error(_: Request, exc: HelixloomError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), "invalid_request_error", param=exc.param), status_code=400)

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500
        )

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": state.base_id, "queued": state.engine.queued}

    limits = {"/api/files/": state.config.max_upload_bytes}
    return BodyLimit(app, state.config.max_body_bytes, limits)  # type: ignore[return-value]


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, by header or by counting what arrives;
    paths under a prefix of ``limits`` (uploads) have that prefix's limit instead."""

    def __init__(self, app: ASGIApp, limit: int, limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.limits = limits or {}

    def __getattr__(self, name: str) -> Any:  # tests and uvicorn reach the FastAPI app through us
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        limit = next((n for prefix, n in self.limits.items() if path.startswith(prefix)), self.limit)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit)
            return
        seen = 0
        too_large = False

        async def counting() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    too_large = True  # the app sees a client that went away, and its answer is dropped
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not too_large:
                await send(message)

        try:
            await self.app(scope, counting, guarded)
        except Exception:
            if not too_large:
                raise
        if too_large:
            await self._refuse(send, limit)

    async def _refuse(self, send: Send, limit: int) -> None:
        body = JSONResponse(
            error_body(f"request body over {limit} bytes", "invalid_request_error", code="request_too_large"),
            status_code=413,
        )
        await send({"type": "http.response.start", "status": 413, "headers": body.raw_headers})
        await send({"type": "http.response.body", "body": body.body})
