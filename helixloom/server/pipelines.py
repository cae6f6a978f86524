"""The pipelines served as chat models: ``helixnet`` (actor, critic, regenerator on the served
engine's adapters), ``weave`` (a tree search, answered with its best branch) and ``improve:NAME``
(answers drawn as an improve run draws its own, the one its learned reward scores highest)."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from helixloom import completion, prompting, weave
from helixloom.engine import GenerationResult, SamplingParams, Timings, Usage
from helixloom.engine.types import FinishReason
from helixloom.errors import AdapterError, HelixloomError
from helixloom.helixnet import GateDecision, HelixChat, HelixTurn, LMoE, Stage
from helixloom.helixnet_gate import evaluator_gate
from helixloom.server.calls import Origin
from helixloom.server.protocol import MAX_IMPROVE_BEST_OF, ChatCompletionRequest, WeaveOptions
from helixloom.server.responses import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatMessageOut,
    DeltaMessage,
    HelixNetGate,
    HelixNetInfo,
    HelixNetRepair,
    HelixNetRound,
    ImproveInfo,
    UsageInfo,
    WeaveInfo,
)
from helixloom.server.served_rewards import run_reward, served_reward
from helixloom.server.state import IMPROVE_PREFIX, ServerState
from helixloom.server.streaming import Emit, from_thread
from helixloom.store import Node

log = logging.getLogger("helixloom.server")

# ------------------------------------------------------------------------------------------- helixnet


def helixnet(
    state: ServerState, body: ChatCompletionRequest, params: SamplingParams, origin: Origin
) -> JSONResponse | StreamingResponse:
    """``model: "helixnet"``: the regeneration is the answer; the actor's answer and the critique come
    in the ``helixnet`` field (streamed first as ``reasoning_content``)."""
    if body.n != 1:
        raise HelixloomError("helixnet answers with one choice; use n=1", param="n")
    gate = evaluator_gate(state.engine) if body.helixnet_gate(state.config.helixnet_gate) else None
    engine_names, pins = state.pin_helixnet()  # after every check that can refuse the request
    lmoe = LMoE(
        state.engine,
        engine_names,
        state.helixnet_format,
        state.config.helixnet_rounds,
        labels=state.helixnet_roles,
    )
    try:
        session, question = lmoe.resume(
            body.plain_messages(),
            params,
            state.store,
            session_id=origin.session_id,
            api_key_label=origin.key_label,
            meta={"endpoint": origin.endpoint, "model": "helixnet"},
            gate=gate,
        )
    except BaseException:
        for pin in pins:
            pin.release()
        raise
    for pin in pins:  # the role versions are held while the session (and its stream) lives
        weakref.finalize(session, pin.release)
    if body.stream:
        return origin.stream(_helixnet_chunks(session, question, origin, body.include_usage))
    turn = session.ask(question)
    choice = ChatCompletionChoice(
        index=0,
        message=ChatMessageOut(content=turn.regeneration),
        finish_reason=turn.regenerations[-1].finish_reason,
    )
    return origin.answer(
        ChatCompletionResponse(
            id=origin.response_id,
            created=origin.created,
            model="helixnet",
            choices=[choice],
            usage=UsageInfo.of(turn.usage),
            helixnet=_helixnet_info(turn),
        )
    )


async def _helixnet_chunks(
    session: HelixChat, question: str, origin: Origin, include_usage: bool
) -> AsyncIterator[ChatCompletionChunk]:
    """The regeneration streams as ``content``; the actor's answer and the critique stream before it
    as ``reasoning_content``; every chunk names its stage in ``helixnet_stage``."""
    gone = threading.Event()
    turns: list[HelixTurn] = []

    def work(emit: Emit) -> None:
        turns.append(session.ask(question, on_event=emit))

    def chunk(
        choices: list[ChatCompletionStreamChoice],
        stage: Stage | None = None,
        round_: int | None = None,
        info: HelixNetInfo | None = None,
        usage: UsageInfo | None = None,
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=origin.response_id,
            created=origin.created,
            model="helixnet",
            choices=choices,
            usage=usage,
            helixnet_stage=stage,
            helixnet_round=round_,
            helixnet=info,
        )

    opening = DeltaMessage(role="assistant", content="")
    yield chunk([ChatCompletionStreamChoice(index=0, delta=opening)], "actor")
    async for event in from_thread(work, gone):
        if event.kind != "delta":
            continue
        final = event.stage == "regenerator" and event.round == session.net.rounds
        delta = DeltaMessage(content=event.text) if final else DeltaMessage(reasoning_content=event.text)
        yield chunk([ChatCompletionStreamChoice(index=0, delta=delta)], event.stage, event.round)
    turn = turns[0]
    last = ChatCompletionStreamChoice(
        index=0, delta=DeltaMessage(), finish_reason=turn.regenerations[-1].finish_reason
    )
    yield chunk([last], "regenerator", info=_helixnet_info(turn))
    if include_usage:
        yield chunk([], usage=UsageInfo.of(turn.usage))


def _helixnet_info(turn: HelixTurn) -> HelixNetInfo:
    return HelixNetInfo(
        actor=turn.actor.text,
        critique=turn.critique,
        rounds=[
            HelixNetRound(critique=c.text, regeneration=r.text, gate=_gate_info(r.gate))
            for c, r in zip(turn.critiques, turn.regenerations, strict=True)
        ],
        gate=_gate_info(turn.regenerations[-1].gate),
        repairs=[
            HelixNetRepair(stage=s.stage, round=s.round, attempts=s.attempts, fallback=s.fallback)
            for s in turn.repairs
        ],
        session_id=turn.session_id,
    )


def _gate_info(decision: GateDecision | None) -> HelixNetGate | None:
    if decision is None:
        return None
    return HelixNetGate(
        kept=decision.kept,
        previous_score=decision.previous_score,
        regeneration_score=decision.regeneration_score,
        regeneration=decision.regeneration,
    )


# ---------------------------------------------------------------------------------------------- weave


def weave_chat(
    state: ServerState, body: ChatCompletionRequest, params: SamplingParams, origin: Origin
) -> JSONResponse:
    """``model: "weave"``: search continuations of the chat and answer with the best branch.
    Settings come in an extra ``weave`` field (questions, budget, ...)."""
    if body.stream or body.n != 1:
        raise HelixloomError("weave answers with one choice and does not stream", param="stream")
    options = body.weave_options()
    messages = body.plain_messages()
    rendered = prompting.render(state.engine, messages)
    result, tree_id = weave_search(state, rendered.prompt, options, None)
    answer = result.text
    for stop in rendered.stop:  # the text format's turn markers end the answer, as in plain chat
        if stop in answer:
            answer = answer[: answer.index(stop)]
    return _one_answer(
        state,
        origin,
        messages,
        params,
        "weave",
        answer.strip(),
        meta={"tree_id": tree_id},
        weave=WeaveInfo(tree_id=tree_id, generated=result.generated, score=result.best[0].score),
    )


def _one_answer(
    state: ServerState,
    origin: Origin,
    messages: list[dict[str, str]],
    params: SamplingParams,
    model: str,
    answer: str,
    *,
    meta: dict[str, Any],
    prompt_tokens: int = 0,
    finish_reason: FinishReason = "stop",
    **info: Any,
) -> JSONResponse:
    """A pipeline's one answer: recorded as a session (``meta`` beside the endpoint and model) and
    returned as a chat completion with the pipeline's ``info`` field (``weave=``, ``improve=``)."""
    choice = GenerationResult(
        answer, finish_reason, Usage(prompt_tokens, state.engine.count_tokens(answer)), (), Timings()
    )
    completion.record(
        state.store,
        state.engine,
        [(m["role"], m["content"]) for m in messages],
        params,
        [choice],
        adapter=None,
        kind="api",
        meta={"endpoint": origin.endpoint, "model": model, **meta},
        api_key_label=origin.key_label,
        session_id=origin.session_id,
    )
    return origin.answer(
        ChatCompletionResponse(
            id=origin.response_id,
            created=origin.created,
            model=model,
            choices=[
                ChatCompletionChoice(
                    index=0, message=ChatMessageOut(content=answer), finish_reason=finish_reason
                )
            ],
            usage=UsageInfo.of(choice.usage),
            **info,
        )
    )


def weave_search(
    state: ServerState,
    prompt: str,
    options: WeaveOptions,
    adapter: str | None,
    parent: Node | None = None,
    *,
    reward: str | None = None,
) -> tuple[weave.WeaveResult, str | None]:
    """One search on the served engine (generation batches with other traffic), stored as a tree;
    returns the result and the tree id. Steered by ``options``' yes/no questions, or by ``reward``
    (a spec a remote client may name: ``served_rewards``) when one is given."""
    scorer: weave.Scorer
    if reward:
        scorer = weave.RewardScorer(served_reward(state, reward))
    else:
        scorer = weave.Evaluator(state.engine, options.to_questions())
    config = options.to_config()
    return weave.run(prompt, state.engine, scorer, config, adapter=adapter, store=state.store, parent=parent)


# -------------------------------------------------------------------------------------------- improve


# The sampling settings ``improve:NAME`` takes only at the run's own values (top_p 1, no top_k, the
# chat template's stops): any other is refused, not ignored.
_IMPROVE_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "stop": (None, "", []),
    "logprobs": (False,),
    "top_p": (None, 1.0),
    "top_k": (None, 0, -1),
    "ignore_eos": (False,),
}


def improve_chat(
    state: ServerState, body: ChatCompletionRequest, params: SamplingParams, origin: Origin
) -> JSONResponse:
    """``model: "improve:NAME"`` (or ``improve:NAME@ROUND``): what users taught run NAME, in chat.
    ``ImproveRun.best_answers`` on the served engine: answers drawn as the run draws its own (its
    answer forms, its system prompt), the one its learned reward scores highest. The request's
    ``temperature``, ``max_tokens`` and ``seed`` apply where it gives them (else the run's held-out
    sampling); settings of the search come in an extra ``improve`` field (``best_of``,
    ``answer_from``); one user message, one choice, no streaming. The run is named, never given as a
    path; its reward is the server's cached one (``run_reward``: a new round is picked up, never
    served stale), and its current adapter is pinned per request, its older versions unloaded once
    no request holds them (``LiveAdapters.pin_folder``)."""
    from helixloom.training.improve import ImproveRun
    from helixloom.training.reward_spec import parse_improve_arg

    if body.stream or body.n != 1:
        raise HelixloomError(f"{body.model} answers with one choice and does not stream", param="stream")
    for unused, allowed in _IMPROVE_NEUTRAL.items():
        if getattr(body, unused) not in allowed:
            raise HelixloomError(
                f"{body.model} samples as its run does and takes no {unused}",
                "leave it out (temperature, max_tokens and seed apply)",
                param=unused,
            )
    messages = body.plain_messages()
    if [m["role"] for m in messages] != ["user"]:
        raise HelixloomError(
            f"{body.model} answers one user message (the run's own system prompt applies)",
            "send a single user message",
            param="messages",
        )
    options = body.improve_options()
    name, round_ = parse_improve_arg(body.model.removeprefix(IMPROVE_PREFIX))
    run = ImproveRun.open(name)
    found, reward = run_reward(state, run, round_)
    limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    pin = None
    try:
        # read once: the pinned version is the one answered with, never one loaded behind the pin
        current = run.current() if options.answer_from == "current" else None
        if current is not None:
            pin = state.adapters.pin_folder(f"{IMPROVE_PREFIX}{name}", current)
        pick = run.best_answers(
            state.engine,
            [messages[0]["content"]],
            n=options.best_of or min(run.config.k, MAX_IMPROVE_BEST_OF),  # a request's cost is bounded
            source="base" if pin is None else "current",
            seed=body.seed,
            reward=reward,
            temperature=body.temperature,
            max_tokens=limit,
            loaded=None if pin is None else pin.engine_name,
        )[0]
    except AdapterError as exc:  # its message names folders on this machine: the log gets it, not the client
        log.warning("improve:%s cannot load its adapter: %s", name, exc)
        raise HelixloomError(
            f"run {name}'s current adapter cannot be loaded now (is it being written?)",
            "retry once the round is written, or use answer_from: base; the server's log has the details",
            param="model",
        ) from None
    finally:
        if pin is not None:
            pin.release()
    return _one_answer(
        state,
        origin,
        messages,
        params,
        body.model,
        pick.answer,
        meta={"score": pick.score, "form": pick.form},
        finish_reason="length" if pick.cut else "stop",
        prompt_tokens=state.engine.count_tokens(run.chat_context(state.engine, pick.prompt)),
        improve=ImproveInfo(
            run=name,
            round=found,
            drawn=len(pick.candidates),
            answer_from=options.answer_from,
            score=pick.score,
            form=pick.form,
        ),
    )
