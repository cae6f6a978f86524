"""Plain completion: one prompt, ``n`` samples, streamed or not, every call recorded in the store.

The CLI's ``generate`` and the server's completion routes both call this, so a call is recorded the
same way wherever it came from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from helixloom.engine import (
    Constraint,
    Engine,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    StreamDelta,
)
from helixloom.errors import HelixloomError
from helixloom.store import NewMessage, Store

# Called with (choice index, text delta) as text is produced.
OnDelta = Callable[[int, str], None]


@dataclass(frozen=True)
class Completion:
    """The choices of one call and the session that records it."""

    choices: list[GenerationResult]
    session_id: str | None


def complete(
    engine: Engine,
    prompt: str,
    params: SamplingParams,
    *,
    n: int = 1,
    adapter: str | None = None,
    store: Store | None = None,
    on_delta: OnDelta | None = None,
    constraint: Constraint | None = None,
    kind: str = "generate",
    meta: dict[str, object] | None = None,
) -> Completion:
    """Generate ``n`` completions of ``prompt`` in one batch and record them as one session.

    With a seed, choice ``i`` uses ``seed + i``: the choices differ from each other and a rerun
    with the same seed repeats them all. Nothing is written unless every choice finished.
    """
    if n < 1:
        raise HelixloomError("n must be at least 1", param="n")
    requests = [
        GenerationRequest(
            prompt,
            params.model_copy(update={"seed": requests_seed(params, i)}),
            adapter,
            constraint,
        )
        for i in range(n)
    ]
    results: list[GenerationResult | None] = [None] * n
    for row, event in engine.stream_batch(requests):
        if isinstance(event, GenerationResult):
            results[row] = event
        elif on_delta is not None and isinstance(event, StreamDelta) and event.text:
            on_delta(row, event.text)
    choices = [r for r in results if r is not None]
    session_id = None
    if store is not None:
        session_id = record(
            store, engine, [("user", prompt)], params, choices, adapter=adapter, kind=kind, meta=meta
        )
    return Completion(choices, session_id)


def record(
    store: Store,
    engine: Engine,
    inputs: Sequence[tuple[str, str]],
    params: SamplingParams,
    choices: Sequence[GenerationResult],
    *,
    adapter: str | None,
    kind: str = "generate",
    meta: dict[str, object] | None = None,
    api_key_label: str | None = None,
    session_id: str | None = None,
) -> str:
    """Store a call as one session (one transaction): its input messages (role, content), then
    one assistant message per choice. Returns the session id."""
    sampling = params.model_dump(mode="json")
    messages = [NewMessage(role=role, content=content) for role, content in inputs]
    for i, choice in enumerate(choices):
        messages.append(
            NewMessage(
                role="assistant",
                content=choice.text,
                model=engine.model_name,
                adapter=adapter,
                sampling={**sampling, "seed": requests_seed(params, i)},
                prompt_tokens=choice.usage.prompt_tokens,
                completion_tokens=choice.usage.completion_tokens,
                finish_reason=choice.finish_reason,
                timings=choice.timings.as_dict(),
                meta={"choice": i},
            )
        )
    title = next(
        (content for role, content in reversed(inputs) if role == "user"), inputs[-1][1] if inputs else ""
    )
    session = store.record_session(
        kind,
        messages,
        title=title[:80],
        model=engine.model_name,
        meta={"backend": engine.backend, **(meta or {})},
        api_key_label=api_key_label,
        session_id=session_id,
    )
    return session.id


def requests_seed(params: SamplingParams, choice: int) -> int | None:
    return None if params.seed is None else params.seed + choice
