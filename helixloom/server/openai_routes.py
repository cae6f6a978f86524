"""``/v1``: models, chat completions and completions, as OpenAI's API defines them.

Every request is recorded as a session; its id is in the ``X-Helixloom-Session`` response header
(known before the first streamed byte, since the session is written under a pre-chosen id).
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from helixloom import chat, completion, helixnet
from helixloom.documents import dataset
from helixloom.engine import (
    Constraint,
    GeneratedTokenLogprobs,
    GenerationRequest,
    GenerationResult,
    PromptLogprobs,
    SamplingParams,
    StreamDelta,
    Timings,
    Usage,
)
from helixloom.errors import HelixloomError
from helixloom.server.protocol import ChatCompletionRequest, CompletionRequest, constraint_from, error_body
from helixloom.server.state import PIPELINES, ServerState, Target, state_of

router = APIRouter(prefix="/v1")
SESSION_HEADER = "X-Helixloom-Session"


@router.get("/models")
def list_models(request: Request) -> dict[str, Any]:
    state = state_of(request)
    created = int(time.time())
    data = [
        {
            "id": state.base_id,
            "object": "model",
            "created": created,
            "owned_by": "helixloom",
            "root": state.base_id,
        }
    ]
    for name in sorted(state.served_adapters()):
        data.append(
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "helixloom",
                "root": state.base_id,
                "parent": state.base_id,
            }
        )
    for name in PIPELINES:
        data.append(
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "helixloom",
                "parent": state.base_id,
            }
        )
    return {"object": "list", "data": data}


# ---------------------------------------------------------------------------------------------- chat


@router.post("/chat/completions", response_model=None)
def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    state = state_of(request)
    target = state.resolve(body.model)
    messages = body.plain_messages()
    params = body.to_sampling(state.config.default_max_tokens)
    session_id = uuid.uuid4().hex
    label = request.state.key_label
    # An adapter made by `helixloom learn` brings its system prompt and its documents' sources.
    adapter_meta = state.store.adapter_meta(target.adapter) if target.kind == "adapter" else {}
    sources = adapter_meta.get("documents") or {}
    if adapter_meta.get("system_prompt") and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": adapter_meta["system_prompt"]}, *messages]
    constraint = constraint_from(body.response_format)
    if target.kind == "pipeline":
        if constraint is not None:
            raise HelixloomError("helixnet does not take a response_format", param="response_format")
        if body.model == "weave":
            return _weave(state, body, messages, params, session_id, label)
        return _helixnet(state, body, messages, params, session_id, label)
    rendered = chat.render(state.engine, messages)
    healing = rendered.token_healing and constraint is None  # a constraint decides how output starts
    params = params.model_copy(update={"stop": (*params.stop, *rendered.stop), "token_healing": healing})
    inputs = [(m["role"], m["content"]) for m in messages]
    call = _Call(
        state,
        target,
        [rendered.prompt],
        params,
        body.n,
        inputs,
        session_id,
        label,
        "chat.completions",
        constraint,
    )
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _sse(call.stream_chunks("chat.completion.chunk", include_usage), session_id)
    results = call.run()
    return JSONResponse(
        {
            "id": f"chatcmpl-{session_id}",
            "object": "chat.completion",
            "created": call.created,
            "model": body.model,
            "system_fingerprint": "helixloom",
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": r.text},
                    "logprobs": _chat_logprobs(r.logprobs) if r.logprobs is not None else None,
                    "finish_reason": r.finish_reason,
                    **({"citations": dataset.citations(r.text, sources)} if sources else {}),
                }
                for i, r in enumerate(results)
            ],
            "usage": _usage(call.usage(results)),
        },
        headers={SESSION_HEADER: session_id},
    )


# ---------------------------------------------------------------------------------------- completions


@router.post("/completions", response_model=None)
def completions(body: CompletionRequest, request: Request) -> Any:
    state = state_of(request)
    target = state.resolve(body.model)
    if target.kind == "pipeline":
        raise HelixloomError(f"{body.model} is a chat pipeline", "use /v1/chat/completions", param="model")
    prompts = body.prompts()
    params = body.to_sampling(state.config.default_max_tokens)
    session_id = uuid.uuid4().hex
    inputs = [("user", p) for p in prompts]
    constraint = constraint_from(body.response_format)
    call = _Call(
        state,
        target,
        prompts,
        params,
        body.n,
        inputs,
        session_id,
        request.state.key_label,
        "completions",
        constraint,
    )
    scored = None
    if body.echo and body.logprobs is not None:
        if not state.engine.supports_prompt_logprobs:
            raise HelixloomError(
                f"the {state.engine.backend} engine cannot score prompt tokens (echo with logprobs)",
                param="echo",
            )
        scored = state.engine.prompt_logprobs(prompts, adapter=target.adapter, top_k=body.logprobs)
    if not body.generates:
        return JSONResponse(
            _echo_only(call, body.model, scored, session_id), headers={SESSION_HEADER: session_id}
        )
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _sse(call.stream_chunks("text_completion", include_usage, echo=body.echo), session_id)
    results = call.run()

    def choice_logprobs(i: int, r: GenerationResult) -> dict[str, Any] | None:
        if r.logprobs is None:
            return None
        made = _completion_logprobs(r.logprobs)
        return made if scored is None else _joined_logprobs(scored[i // body.n], made)

    return JSONResponse(
        {
            "id": f"cmpl-{session_id}",
            "object": "text_completion",
            "created": call.created,
            "model": body.model,
            "system_fingerprint": "helixloom",
            "choices": [
                {
                    "index": i,
                    "text": (call.prompt_of(i) if body.echo else "") + r.text,
                    "logprobs": choice_logprobs(i, r),
                    "finish_reason": r.finish_reason,
                }
                for i, r in enumerate(results)
            ],
            "usage": _usage(call.usage(results)),
        },
        headers={SESSION_HEADER: session_id},
    )


# ---------------------------------------------------------------------------------------------- calls


class _Call:
    """One API call: n choices for each prompt, run through the batching engine and recorded."""

    def __init__(
        self,
        state: ServerState,
        target: Target,
        prompts: list[str],
        params: SamplingParams,
        n: int,
        inputs: list[tuple[str, str]],
        session_id: str,
        key_label: str | None,
        endpoint: str,
        constraint: Constraint | None = None,
    ) -> None:
        self.state, self.target, self.prompts, self.params, self.n = state, target, prompts, params, n
        self.inputs, self.session_id, self.key_label, self.endpoint = inputs, session_id, key_label, endpoint
        self.created = int(time.time())
        self.requests = [
            GenerationRequest(
                p,
                params.model_copy(update={"seed": completion.requests_seed(params, j)}),
                target.adapter,
                constraint,
            )
            for p in prompts
            for j in range(n)
        ]

    def prompt_of(self, choice: int) -> str:
        return self.prompts[choice // self.n]

    def run(self) -> list[GenerationResult]:
        results = self.state.engine.generate(self.requests)
        self.record(results)
        return results

    def usage(self, results: list[GenerationResult]) -> Usage:
        prompt_tokens = sum(results[i * self.n].usage.prompt_tokens for i in range(len(self.prompts)))
        return Usage(prompt_tokens, sum(r.usage.completion_tokens for r in results))

    def record(self, results: list[GenerationResult]) -> None:
        completion.record(
            self.state.store,
            self.state.engine,
            self.inputs,
            self.params,
            results,
            adapter=self.target.adapter,
            kind="api",
            meta={"endpoint": self.endpoint, "model": self.target.name, "n": self.n},
            api_key_label=self.key_label,
            session_id=self.session_id,
        )

    async def stream_chunks(
        self, obj: str, include_usage: bool, *, echo: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        """Chunks as they are produced; the engine drops the rows if the client goes away."""
        gone = threading.Event()
        results: list[GenerationResult | None] = [None] * len(self.requests)
        partial = [""] * len(self.requests)

        def produce() -> Iterator[Any]:
            yield from self.state.engine.stream_batch(self.requests, abort=lambda _: gone.is_set())

        base = {
            "id": f"{'chatcmpl' if obj.startswith('chat') else 'cmpl'}-{self.session_id}",
            "object": obj,
            "created": self.created,
            "model": self.target.name,
            "system_fingerprint": "helixloom",
        }
        try:
            if obj.startswith("chat"):
                for i in range(len(self.requests)):
                    yield {
                        **base,
                        "choices": [
                            {
                                "index": i,
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                    }
            elif echo:
                for i in range(len(self.requests)):
                    yield {
                        **base,
                        "choices": [
                            {"index": i, "text": self.prompt_of(i), "logprobs": None, "finish_reason": None}
                        ],
                    }
            async for row, event in _in_thread(produce, gone):
                if isinstance(event, StreamDelta):
                    partial[row] += event.text
                    yield {
                        **base,
                        "choices": [self._delta_choice(obj, row, event.text, event.logprobs, None)],
                    }
                else:
                    results[row] = event
                    yield {**base, "choices": [self._delta_choice(obj, row, "", None, event.finish_reason)]}
            if include_usage:
                done = [r for r in results if r is not None]
                yield {**base, "choices": [], "usage": _usage(self.usage(done))}
        finally:
            gone.set()
            # A client that went away still gets its call recorded, unfinished rows as "abort".
            recorded = [
                r or GenerationResult(partial[i], "abort", Usage(0, 0), (), Timings())
                for i, r in enumerate(results)
            ]
            await asyncio.to_thread(self.record, recorded)

    def _delta_choice(
        self,
        obj: str,
        row: int,
        text: str,
        logprobs: tuple[GeneratedTokenLogprobs, ...] | None,
        finish: str | None,
    ) -> dict[str, Any]:
        if obj.startswith("chat"):
            delta = {"content": text} if text or finish is None else {}
            lp = _chat_logprobs(logprobs) if logprobs else None
            return {"index": row, "delta": delta, "logprobs": lp, "finish_reason": finish}
        lp = _completion_logprobs(logprobs) if logprobs else None
        return {"index": row, "text": text, "logprobs": lp, "finish_reason": finish}


async def _in_thread(produce: Callable[[], Iterator[Any]], gone: threading.Event) -> AsyncIterator[Any]:
    """Run a blocking iterator in a worker thread and hand its items to the event loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    end = object()

    def pump() -> None:
        try:
            for item in produce():
                loop.call_soon_threadsafe(queue.put_nowait, item)
                if gone.is_set():
                    break
        except BaseException as exc:  # handed to the consumer below
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, end)

    # A thread of its own, not the loop's default executor: that one has cpu_count + 4 workers,
    # and every open stream holds one while it waits for tokens, which capped concurrent streams.
    threading.Thread(target=pump, name="helixloom-stream", daemon=True).start()
    try:
        while (item := await queue.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        gone.set()  # the pump thread ends at its next item; the engine drops the rows


def _sse(chunks: AsyncIterator[dict[str, Any]], session_id: str) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n"
        except HelixloomError as exc:
            yield f"data: {json.dumps(error_body(str(exc), 'invalid_request_error', param=exc.param))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        lines(),
        media_type="text/event-stream",
        headers={SESSION_HEADER: session_id, "Cache-Control": "no-cache"},
    )


# ---------------------------------------------------------------------------------------------- weave


def _weave(
    state: ServerState,
    body: ChatCompletionRequest,
    messages: list[dict[str, str]],
    params: SamplingParams,
    session_id: str,
    key_label: str | None,
) -> Any:
    """``model: "weave"``: search continuations of the chat and answer with the best branch.
    Settings come in an extra ``weave`` field (questions, budget, ...)."""
    from helixloom.server.api_routes import weave_search
    from helixloom.server.protocol import WeaveOptions

    if body.stream or body.n != 1:
        raise HelixloomError("weave answers with one choice and does not stream", param="stream")
    raw = (body.model_extra or {}).get("weave") or {}
    try:
        options = WeaveOptions(**raw, seed=body.seed or 0) if "seed" not in raw else WeaveOptions(**raw)
    except Exception as exc:
        raise HelixloomError(f"invalid weave options: {exc}".splitlines()[0], param="weave") from exc
    rendered = chat.render(state.engine, messages)
    result, tree_id = weave_search(state, rendered.prompt, options, None)
    answer = result.text
    for stop in rendered.stop:  # the text format's turn markers end the answer, as in plain chat
        if stop in answer:
            answer = answer[: answer.index(stop)]
    answer = answer.strip()
    choice = GenerationResult(answer, "stop", Usage(0, state.engine.count_tokens(answer)), (), Timings())
    completion.record(
        state.store,
        state.engine,
        [(m["role"], m["content"]) for m in messages],
        params,
        [choice],
        adapter=None,
        kind="api",
        meta={"endpoint": "chat.completions", "model": "weave", "tree_id": tree_id},
        api_key_label=key_label,
        session_id=session_id,
    )
    return JSONResponse(
        {
            "id": f"chatcmpl-{session_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "weave",
            "system_fingerprint": "helixloom",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(choice.usage),
            "weave": {"tree_id": tree_id, "generated": result.generated, "score": result.best[0].score},
        },
        headers={SESSION_HEADER: session_id},
    )


# ------------------------------------------------------------------------------------------- helixnet


def _helixnet(
    state: ServerState,
    body: ChatCompletionRequest,
    messages: list[dict[str, str]],
    params: SamplingParams,
    session_id: str,
    key_label: str | None,
) -> Any:
    if body.n != 1:
        raise HelixloomError("helixnet answers with one choice; use n=1", param="n")
    if messages[-1]["role"] != "user":
        raise HelixloomError("the last message must be the user's question", param="messages")
    # The seed's sampling unless the request sets its own.
    seed_defaults = helixnet.SEED_SAMPLING
    params = params.model_copy(
        update={
            "temperature": seed_defaults.temperature if body.temperature is None else params.temperature,
            "top_p": seed_defaults.top_p if body.top_p is None else params.top_p,
            "top_k": seed_defaults.top_k if body.top_k is None else params.top_k,
            "token_healing": True,
        }
    )
    roles = {s: helixnet.Role(state.engine, state.helixnet_roles[s], params) for s in helixnet.STAGES}
    system = "\n".join(m["content"] for m in messages if m["role"] == "system") or None
    net = helixnet.HelixNet(
        roles["actor"],
        roles["critic"],
        roles["regenerator"],
        prompt_format=state.helixnet_format,
        system=system,
        rounds=state.config.helixnet_rounds,
    )
    history, pending = [], ""
    for m in messages[:-1]:
        if m["role"] == "user":
            pending = m["content"]
        elif m["role"] == "assistant":
            history.append(helixnet.Exchange(pending, m["content"]))
    session = helixnet.HelixChat(
        net,
        state.store,
        history=history,
        session_id=session_id,
        api_key_label=key_label,
        meta={"endpoint": "chat.completions", "model": "helixnet"},
    )
    question = messages[-1]["content"]
    created = int(time.time())
    base = {
        "id": f"chatcmpl-{session_id}",
        "created": created,
        "model": "helixnet",
        "system_fingerprint": "helixloom",
    }
    if not body.stream:
        turn = session.ask(question)
        return JSONResponse(
            {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": turn.regeneration},
                        "logprobs": None,
                        "finish_reason": turn.regenerations[-1].finish_reason,
                    }
                ],
                "usage": _usage(turn.usage),
                "helixnet": _helixnet_extra(turn),
            },
            headers={SESSION_HEADER: session_id},
        )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return _sse(_helixnet_chunks(session, question, base, include_usage), session_id)


async def _helixnet_chunks(
    session: helixnet.HelixChat, question: str, base: dict[str, Any], include_usage: bool
) -> AsyncIterator[dict[str, Any]]:
    """The regeneration streams as ``content``; the actor's answer and the critique stream before it
    as ``reasoning_content``; every chunk names its stage in ``helixnet_stage``."""
    gone = threading.Event()
    turns: list[helixnet.HelixTurn] = []

    def produce() -> Iterator[Any]:
        # HelixChat reports progress through a callback; a second thread turns it into an iterator.
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        end = object()

        def on_event(event: helixnet.StageEvent) -> None:
            if gone.is_set():
                raise _ClientGone
            q.put(event)

        def work() -> None:
            try:
                turns.append(session.ask(question, on_event=on_event))
            except BaseException as exc:
                q.put(exc)
            finally:
                q.put(end)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        while (item := q.get()) is not end:
            if isinstance(item, _ClientGone):
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    obj = {**base, "object": "chat.completion.chunk"}
    yield {
        **obj,
        "helixnet_stage": "actor",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
    }
    async for event in _in_thread(produce, gone):
        if event.kind != "delta":
            continue
        field = (
            "content"
            if event.stage == "regenerator" and event.round == session.net.rounds
            else "reasoning_content"
        )
        yield {
            **obj,
            "helixnet_stage": event.stage,
            "helixnet_round": event.round,
            "choices": [{"index": 0, "delta": {field: event.text}, "finish_reason": None}],
        }
    turn = turns[0]
    yield {
        **obj,
        "helixnet_stage": "regenerator",
        "helixnet": _helixnet_extra(turn),
        "choices": [{"index": 0, "delta": {}, "finish_reason": turn.regenerations[-1].finish_reason}],
    }
    if include_usage:
        yield {**obj, "choices": [], "usage": _usage(turn.usage)}


class _ClientGone(Exception):
    pass


def _helixnet_extra(turn: helixnet.HelixTurn) -> dict[str, Any]:
    return {
        "actor": turn.actor.text,
        "critique": turn.critique,
        "rounds": [
            {"critique": c.text, "regeneration": r.text}
            for c, r in zip(turn.critiques, turn.regenerations, strict=True)
        ],
        "session_id": turn.session_id,
    }


# ----------------------------------------------------------------------------------------- shaping


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _token_bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def _chat_logprobs(steps: tuple[GeneratedTokenLogprobs, ...] | None) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": s.chosen.token,
                "logprob": s.chosen.logprob,
                "bytes": _token_bytes(s.chosen.token),
                "top_logprobs": [
                    {"token": t.token, "logprob": t.logprob, "bytes": _token_bytes(t.token)} for t in s.top
                ],
            }
            for s in steps or ()
        ]
    }


def _prompt_logprobs(scored: PromptLogprobs) -> dict[str, Any]:
    """OpenAI's ``logprobs`` object for a prompt's own tokens (``echo``)."""
    offsets, offset = [], 0
    for token in scored.tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": list(scored.tokens),
        "token_logprobs": list(scored.logprobs),
        "top_logprobs": [None if top is None else {t.token: t.logprob for t in top} for top in scored.top],
        "text_offset": offsets,
    }


def _joined_logprobs(scored: PromptLogprobs, made: dict[str, Any]) -> dict[str, Any]:
    """The prompt's logprobs followed by the completion's, offsets counted from the prompt's start."""
    head = _prompt_logprobs(scored)
    shift = sum(len(t) for t in scored.tokens)
    return {
        "tokens": head["tokens"] + made["tokens"],
        "token_logprobs": head["token_logprobs"] + made["token_logprobs"],
        "top_logprobs": head["top_logprobs"] + made["top_logprobs"],
        "text_offset": head["text_offset"] + [shift + o for o in made["text_offset"]],
    }


def _echo_only(
    call: _Call, model: str, scored: list[PromptLogprobs] | None, session_id: str
) -> dict[str, Any]:
    """``max_tokens: 0`` with ``echo``: each choice is its prompt (scored with ``logprobs``), nothing new."""
    if scored is not None:  # already tokenized for scoring (the tokens of the text, as count_tokens)
        prompt_tokens = sum(len(s.token_ids) for s in scored)
    else:
        prompt_tokens = sum(call.state.engine.count_tokens(p) for p in call.prompts)
    return {
        "id": f"cmpl-{session_id}",
        "object": "text_completion",
        "created": call.created,
        "model": model,
        "system_fingerprint": "helixloom",
        "choices": [
            {
                "index": i,
                "text": call.prompt_of(i),
                "logprobs": None if scored is None else _prompt_logprobs(scored[i // call.n]),
                "finish_reason": "length",
            }
            for i in range(len(call.prompts) * call.n)
        ],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 0, "total_tokens": prompt_tokens},
    }


def _completion_logprobs(steps: tuple[GeneratedTokenLogprobs, ...] | None) -> dict[str, Any]:
    tokens, token_logprobs, top, offsets, offset = [], [], [], [], 0
    for s in steps or ():
        tokens.append(s.chosen.token)
        token_logprobs.append(s.chosen.logprob)
        top.append({t.token: t.logprob for t in s.top})
        offsets.append(offset)
        offset += len(s.chosen.token)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}
