"""``/v1``: models, chat completions and completions, as OpenAI's API defines them.

Every request is recorded as a session; its id is in the ``X-Helixloom-Session`` response header
(known before the first streamed byte, since the session is written under a pre-chosen id).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from helixloom import adapters, prompting
from helixloom.documents import dataset
from helixloom.engine.base import TokenPrompt
from helixloom.engine.citations import CitationSet
from helixloom.engine.types import Constraint
from helixloom.errors import HelixloomError
from helixloom.helixnet import SEED_SAMPLING
from helixloom.server import adapter_routes, pipelines
from helixloom.server.calls import Call, Origin
from helixloom.server.protocol import ChatCompletionRequest, CompletionRequest, constraint_from
from helixloom.server.responses import (
    ChatCompletionChoice,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessageOut,
    Citation,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    ModelCard,
    ModelList,
    UsageInfo,
)
from helixloom.server.served_rewards import steering_rewards
from helixloom.server.state import PIPELINES, state_of

router = APIRouter(prefix="/v1")
router.include_router(adapter_routes.router)


@router.get("/models")
def list_models(request: Request) -> dict[str, Any]:
    state = state_of(request)
    created, base = int(time.time()), state.base_id
    cards = [ModelCard(id=base, created=created, root=base, max_model_len=state.engine.max_model_len)]
    cards += [
        ModelCard(
            id=a.name,
            created=created,
            root=base,
            parent=base,
            version=a.version,
            metadata=shown_meta(state.store.adapter_meta(a.name)) or None,
        )
        for a in state.served_adapters()
    ]
    cards += [ModelCard(id=n, created=created, parent=base) for n in PIPELINES]
    # each improve run with a reward learned on this model: its users' taste, served as a chat model
    cards += [
        ModelCard(id=r["spec"], created=created, parent=base, metadata={"round": r["round"]})
        for r in steering_rewards(state)
        if r["kind"] == "improve"
    ]
    return ModelList(data=cards).model_dump()


#: What /v1/models shows of an adapter's stored metadata: what it is and how well it did, never where
#: its files or documents live (a learned adapter keeps its sources' paths).
SHOWN_META = ("report", "rank", "target_modules", "role", "helixnet")


def shown_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in SHOWN_META if k in meta}


def learned_citations(learned: dict[str, Any], constraint: Constraint | None) -> CitationSet | None:
    """The ids a learned adapter's answers may cite: its stored documents', never the request's. A
    ``response_format`` decides the whole output, so it goes unguided."""
    return dataset.citation_set(learned.get("documents") or {}) if constraint is None else None


@router.post("/chat/completions", response_model=None)
def chat_completions(body: ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    state = state_of(request)
    target = state.resolve(body.model)
    origin = Origin.of(request, "chat.completions")
    limit = state.config.default_max_tokens
    # An adapter made by `helixloom learn` brings its system prompt, its documents' sources and its
    # sampling (greedy, as it was measured); HelixNet samples as the seed did. Either only where the
    # request does not say otherwise.
    learned = state.store.adapter_meta(target.name if target.kind == "adapter" else None)
    if target.kind == "helixnet":
        params = body.to_sampling(limit, SEED_SAMPLING)
    elif (own := adapters.sampling_defaults(learned)) is not None:
        params = body.to_sampling(limit, own)
    else:
        params = body.to_sampling(limit)
    constraint = constraint_from(body.response_format)
    if target.is_pipeline and constraint is not None:
        raise HelixloomError(f"{target.name} does not take a response_format", param="response_format")
    if target.kind == "helixnet":
        return pipelines.helixnet(state, body, params, origin)
    if target.kind == "weave":
        return pipelines.weave_chat(state, body, params, origin)
    if target.kind == "improve":
        return pipelines.improve_chat(state, body, params, origin)
    messages = body.plain_messages()
    if learned.get("system_prompt") and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": learned["system_prompt"]}, *messages]
    rendered = prompting.render(state.engine, messages)
    healing = rendered.token_healing and constraint is None  # a constraint decides how output starts
    params = params.model_copy(update={"stop": (*params.stop, *rendered.stop), "token_healing": healing})
    inputs = [(m["role"], m["content"]) for m in messages]
    sources = learned.get("documents") or {}
    cites = learned_citations(learned, constraint)
    call = Call(state, target, [rendered.prompt], params, body.n, inputs, origin, constraint, cites)
    if body.stream:
        return origin.stream(call.stream(include_usage=body.include_usage))
    results = call.run()
    choices = [
        ChatCompletionChoice(
            index=i,
            message=ChatMessageOut(content=r.text),
            logprobs=ChatLogprobs.of(r.logprobs) if r.logprobs is not None else None,
            finish_reason=r.finish_reason,
            citations=[Citation(**c) for c in dataset.citations(r.text, sources)] if sources else None,
        )
        for i, r in enumerate(results)
    ]
    usage = UsageInfo.of(call.usage(results))
    return origin.answer(
        ChatCompletionResponse(
            id=origin.response_id, created=origin.created, model=body.model, choices=choices, usage=usage
        )
    )


@router.post("/completions", response_model=None)
def completions(body: CompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    state = state_of(request)
    target = state.resolve(body.model)
    if target.is_pipeline:
        raise HelixloomError(f"{body.model} is a chat pipeline", "use /v1/chat/completions", param="model")
    origin = Origin.of(request, "completions")
    prompts = body.prompts(state.engine)
    params = body.to_sampling(state.config.default_max_tokens)
    inputs = [("user", p) for p in prompts]
    constraint = constraint_from(body.response_format)
    learned = state.store.adapter_meta(target.name if target.kind == "adapter" else None)
    cites = learned_citations(learned, constraint)  # the prompt is the client's own: cited alike
    call = Call(state, target, prompts, params, body.n, inputs, origin, constraint, cites)
    scored = None
    if body.echo and body.logprobs is not None:
        if not state.engine.supports_prompt_logprobs:
            raise HelixloomError(
                f"the {state.engine.backend} engine cannot score prompt tokens (echo with logprobs)",
                param="echo",
            )
        scored = state.engine.prompt_logprobs(prompts, adapter=target.adapter, top_k=body.logprobs)
    echoed = [CompletionLogprobs.of_prompt(s) for s in scored] if scored is not None else None
    if not body.generates:  # max_tokens 0 with echo: each choice is its prompt, nothing new
        if scored is not None:  # already tokenized for scoring (the tokens of the text, as count_tokens)
            prompt_tokens = sum(len(s.token_ids) for s in scored)
        else:
            prompt_tokens = sum(
                len(p.ids) if isinstance(p, TokenPrompt) else state.engine.count_tokens(p) for p in prompts
            )
        choices = [
            CompletionChoice(
                index=i,
                text=call.prompt_of(i),
                logprobs=None if echoed is None else echoed[i // body.n],
                finish_reason="length",
            )
            for i in range(len(prompts) * body.n)
        ]
        usage = UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=0, total_tokens=prompt_tokens)
    elif body.stream:
        return origin.stream(call.stream(include_usage=body.include_usage, echo=body.echo))
    else:
        results = call.run()
        choices = []
        for i, r in enumerate(results):
            made = CompletionLogprobs.of(r.logprobs) if r.logprobs is not None else None
            if made is not None and echoed is not None:
                made = made.after(echoed[i // body.n])
            text = (call.prompt_of(i) if body.echo else "") + r.text
            choices.append(CompletionChoice(index=i, text=text, logprobs=made, finish_reason=r.finish_reason))
        usage = UsageInfo.of(call.usage(results))
    return origin.answer(
        CompletionResponse(
            id=origin.response_id, created=origin.created, model=body.model, choices=choices, usage=usage
        )
    )
