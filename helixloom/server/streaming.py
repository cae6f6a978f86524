"""Streaming plumbing: blocking generation in a worker thread, handed to the event loop as SSE.

The engines and HelixNet are synchronous; a streamed response is asynchronous. ``from_thread`` is
the one bridge between them, ``sse`` the one writer of ``text/event-stream`` bodies.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from helixloom.errors import HelixloomError
from helixloom.server.protocol import error_body

SESSION_HEADER = "X-Helixloom-Session"

# What a worker calls with each item it produces.
Emit = Callable[[Any], None]


class ClientGone(Exception):
    """Raised inside the worker by ``emit`` once the client has gone away: it ends the work."""


@dataclass(frozen=True)
class _Failed:
    error: BaseException


async def from_thread(work: Callable[[Emit], object], gone: threading.Event) -> AsyncIterator[Any]:
    """Run ``work(emit)`` in a thread of its own and yield here, on the event loop, every item it emits.

    An exception from ``work`` is raised here. When the consumer stops early (the client went away),
    ``gone`` is set; the worker's next ``emit`` raises ``ClientGone``, which ends it quietly. Engines
    given ``abort=lambda _: gone.is_set()`` drop their rows at once.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    end = object()

    def emit(item: Any) -> None:
        if gone.is_set():
            raise ClientGone
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def pump() -> None:
        try:
            work(emit)
        except ClientGone:
            pass
        except BaseException as exc:  # handed to the consumer below
            loop.call_soon_threadsafe(queue.put_nowait, _Failed(exc))
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, end)

    # A thread of its own, not the loop's default executor: that one has cpu_count + 4 workers,
    # and every open stream holds one while it waits for tokens, which capped concurrent streams.
    threading.Thread(target=pump, name="helixloom-stream", daemon=True).start()
    try:
        while (item := await queue.get()) is not end:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        gone.set()


def sse(chunks: AsyncIterator[BaseModel], session_id: str) -> StreamingResponse:
    """The chunks as server-sent events, ``[DONE]`` last; a ``HelixloomError`` raised while streaming
    becomes an OpenAI error event (the status line has already gone out)."""

    async def lines() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk.model_dump())}\n\n"
        except HelixloomError as exc:
            yield f"data: {json.dumps(error_body(str(exc), 'invalid_request_error', param=exc.param))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        lines(),
        media_type="text/event-stream",
        headers={SESSION_HEADER: session_id, "Cache-Control": "no-cache"},
    )
