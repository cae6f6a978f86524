"""``helixloom chat``: HelixNet chat (actor, critic, regenerator), or plain chat with a learned adapter."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from helixloom.errors import HelixloomError

#: chat's temperature where --temperature is not given (HelixNet's seed samples at it), except with an
#: adapter that brings its own sampling (``adapters.sampling_defaults``).
CHAT_TEMPERATURE = 0.75


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``chat`` command."""
    from helixloom.cli.common import add_engine_flag, add_sampling_flags

    chat = sub.add_parser(
        "chat",
        help="HelixNet chat: actor answers, critic critiques, regenerator rewrites",
        description="Chat through HelixNet: the actor answers, the critic critiques the answer, the "
        "regenerator rewrites it from the critique (each stage streamed under its label). Roles run on "
        "three models (--actor-model ...), or on one base model with one LoRA adapter per role "
        "(--base with --actor-adapter ..., HelixNet-LMoE); with no flags every role uses the default "
        "model. Interactive commands: /reset starts a new conversation, /exit quits.",
    )
    chat.add_argument(
        "--base", default="default", metavar="SPEC", help="model for roles without --ROLE-model"
    )
    add_engine_flag(chat)
    for role in ("actor", "critic", "regenerator"):
        chat.add_argument(f"--{role}-model", metavar="SPEC", help=f"the {role}'s own model (default: --base)")
        chat.add_argument(f"--{role}-adapter", metavar="NAME_OR_PATH", help=f"LoRA adapter for the {role}")
    chat.add_argument(
        "--helixnet",
        metavar="NAME",
        help="use the HelixNet set NAME (made by `helixloom train helixnet`) for the roles' adapters on "
        "--base",
    )
    chat.add_argument(
        "--adapter",
        metavar="NAME_OR_PATH",
        help="plain chat (no HelixNet) with this adapter on --base; an adapter made by `helixloom learn` "
        "brings its system prompt, and its answers' [DOC_ID:...] citations are mapped to the source files",
    )
    chat.add_argument(
        "--retrieve",
        action="store_true",
        help="with --adapter made by `helixloom learn`: show the model the passages of its documents that "
        "BM25 finds for each question (retrieval on top of the fine-tune)",
    )
    chat.add_argument(
        "--check-kind",
        action="store_true",
        help="with --adapter: a question that asks for a number ('how many', 'how long') or a date "
        "('which day') whose answer holds none gets the adapter's next likeliest opening, continued, "
        "that gives one (as `eval qa --check-kind` measures it, on greedy answers: a learned adapter's "
        "default); such answers are printed whole, not streamed",
    )
    chat.add_argument(
        "--rounds", type=int, default=1, help="critique/regenerate rounds per question (default 1)"
    )
    chat.add_argument(
        "--gate",
        action="store_true",
        help="keep a regeneration only when the yes/no evaluator (on the actor's model) scores it above "
        "the answer it rewrote; the result says which was kept, with both scores",
    )
    chat.add_argument("--system", help="system text (default: the format's, HelixNet's for helixnet)")
    chat.add_argument(
        "--format",
        default="helixnet",
        metavar="NAME_OR_FILE",
        help="prompt format: helixnet (the seed's, byte for byte), instruct (for chat-template models), "
        "or a .yaml file",
    )
    add_sampling_flags(
        chat,
        temperature=None,
        top_p=1.0,
        top_k=50,
        max_tokens=1024,
        temperature_help=f"0 is greedy (default {CHAT_TEMPERATURE}, the seed's; 0 with an --adapter made by "
        "`helixloom learn`, which answers best greedily: that is how its report and `eval qa` measure it)",
    )
    chat.add_argument(
        "--no-token-healing",
        dest="token_healing",
        action="store_false",
        help="do not back up over a prompt's last token (on by default: the seed's prompts end in a space)",
    )
    chat.add_argument("--once", metavar="QUESTION", help="answer one question and exit")
    chat.add_argument(
        "--json",
        action="store_true",
        help="with --once: print {actor, critique, regeneration, session_id, usage, timings}",
    )
    chat.set_defaults(run=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    from helixloom import helixnet
    from helixloom.cli.common import helixnet_roles, open_store, sampling_from
    from helixloom.engine.pool import EnginePool
    from helixloom.engine.select import load_for_inference
    from helixloom.store import Store

    if args.json and args.once is None:
        raise HelixloomError("--json needs --once", "pass --once QUESTION, or drop --json for a chat")
    if args.once is not None and not args.once.strip():
        raise HelixloomError("the question is empty", "pass some text to --once")
    if args.retrieve and args.adapter is None:
        raise HelixloomError("--retrieve needs --adapter (an adapter made by helixloom learn)")
    if args.check_kind and args.adapter is None:
        raise HelixloomError("--check-kind needs --adapter (plain chat with an adapter)")
    if args.adapter is not None:
        role_flags = [
            f"--{r}-{k}" for r in helixnet.STAGES for k in ("model", "adapter") if getattr(args, f"{r}_{k}")
        ]
        if args.gate:
            role_flags.append("--gate")
        if args.helixnet:
            role_flags.append("--helixnet")
        if role_flags or args.rounds != 1:
            raise HelixloomError(
                f"--adapter is plain chat; it does not mix with {', '.join(role_flags) or '--rounds'}"
            )
        return _plain_chat(args)
    if args.temperature is None:
        args.temperature = CHAT_TEMPERATURE
    params = sampling_from(args)
    fmt = helixnet.PromptFormat.load(args.format)
    role_adapters = helixnet_roles(args)
    specs = {
        role: helixnet.RoleSpec(
            model=getattr(args, f"{role}_model") or args.base,
            adapter=role_adapters.get(role),
            sampling=params,
        )
        for role in helixnet.STAGES
    }
    with open_store() as store:
        assert isinstance(store, Store)
        pool = EnginePool(lambda spec: load_for_inference(spec, args.engine))
        net = helixnet.build(
            specs, pool=pool, store=store, prompt_format=fmt, system=args.system, rounds=args.rounds
        )
        if args.gate:
            from helixloom.helixnet_gate import evaluator_gate

            net.gate = evaluator_gate(net.roles["actor"].engine)
        chat = helixnet.HelixChat(net, store)
        if args.once is not None:
            turn = chat.ask(args.once, on_event=None if args.json else _print_stage)
            if args.json:
                print(json.dumps(_turn_json(turn)))
            return 0
        return _interactive(chat)


def _plain_chat(args: argparse.Namespace) -> int:
    from helixloom import adapters as adapter_registry
    from helixloom import completion, models, prompting
    from helixloom.cli.common import open_store, sampling_from
    from helixloom.cli.evals import learned_index
    from helixloom.documents import dataset, retrieval
    from helixloom.engine import GenerationRequest, GenerationResult, StreamDelta
    from helixloom.engine.select import load_for_inference
    from helixloom.evals import answer_kind

    models.resolve(args.base)
    with open_store() as store:
        name, folder = adapter_registry.resolve(store, args.adapter, model=args.base)
        meta = store.adapter_meta(name)
        if args.temperature is None:
            own = adapter_registry.sampling_defaults(meta)
            args.temperature = CHAT_TEMPERATURE if own is None else own.temperature
        params = sampling_from(args)
        engine = load_for_inference(args.base, args.engine)
        engine.load_adapter(name, str(folder))
        system = args.system or meta.get("system_prompt")
        history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        session_id = None
        index = learned_index(meta) if args.retrieve else None
        # an adapter's citations name only the documents it learned (``engine.citations``)
        cites = dataset.citation_set(meta.get("documents") or {})

        def ask(question: str, show: bool) -> dict[str, Any]:
            nonlocal session_id
            found = index.search(question) if index is not None else []
            shown = retrieval.with_context(question, found) if found else question
            # the passages are shown for this question only; the history keeps the question as asked
            rendered = prompting.render(engine, [*history, {"role": "user", "content": shown}])
            history.append({"role": "user", "content": question})
            request_params = params.model_copy(
                update={"stop": (*params.stop, *rendered.stop), "token_healing": rendered.token_healing}
            )
            request = GenerationRequest(rendered.prompt, request_params, name, citations=cites)
            kind = answer_kind.expected(question) if args.check_kind else None
            result: GenerationResult | None = None
            if kind is not None:  # whole: the answer may be replaced by another opening's
                (result,) = answer_kind.results(engine, [request], [kind])
                if show:
                    sys.stdout.write(result.text.strip())
            else:
                for event in engine.stream(request):
                    if isinstance(event, StreamDelta):
                        if show:
                            sys.stdout.write(event.text)
                            sys.stdout.flush()
                    else:
                        result = event
            assert result is not None
            answer = result.text.strip()
            history.append({"role": "assistant", "content": answer})
            cited = dataset.citations(answer, meta.get("documents") or {})
            inputs = [(m["role"], m["content"]) for m in history[:-1]]
            session_id = completion.record(
                store,
                engine,
                inputs,
                request_params,
                [result],
                adapter=name,
                kind="chat",
                meta={
                    "citations": cited,
                    "retrieved": [p.doc_id for p in found],
                    **({"kind_checked": kind.value} if kind is not None else {}),
                },
            )
            if show:
                print()
                for c in cited:
                    print(f"  source [{c['doc_id']}]: {c['source']} ({c['title']})")
            return {
                "answer": answer,
                "citations": cited,
                "retrieved": [{"doc_id": p.doc_id, "text": p.text} for p in found],
                "session_id": session_id,
                "usage": {
                    "prompt_tokens": result.usage.prompt_tokens,
                    "completion_tokens": result.usage.completion_tokens,
                },
            }

        if args.once is not None:
            body = ask(args.once, show=not args.json)
            if args.json:
                print(json.dumps(body))
            return 0

        def reset() -> None:
            del history[1 if system else 0 :]

        return _repl(f"Chat with {name} on {args.base}", lambda q: ask(q, show=True), reset)


_LABELS = {"actor": "ACTOR", "critic": "CRITIQUE", "regenerator": "REGENERATION"}


def _print_stage(event: Any) -> None:
    if event.kind == "start":
        label = _LABELS[event.stage] + (f" (round {event.round})" if event.round > 1 else "")
        sys.stdout.write(f"{label}: ")
    elif event.kind == "delta":
        sys.stdout.write(event.text)
    else:
        sys.stdout.write("\n\n")
    sys.stdout.flush()


def _interactive(chat: Any) -> int:
    return _repl("HelixNet chat", lambda q: chat.ask(q, on_event=_print_stage), chat.reset)


def _repl(title: str, ask: Callable[[str], Any], reset: Callable[[], None]) -> int:
    """Read questions until EOF or /exit; /reset starts a new conversation."""
    print(f"{title}. /reset starts over, /exit quits.", file=sys.stderr)
    while True:
        try:
            question = input("You: ")
        except EOFError:
            print()
            return 0
        command = question.strip()
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            reset()
            print("(new conversation)")
        elif command:
            ask(question)


def _turn_json(turn: Any) -> dict[str, Any]:
    def usage(u: Any) -> dict[str, int]:
        return {
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens,
        }

    return {
        "question": turn.question,
        "actor": turn.actor.text,
        "critique": turn.critique,
        "regeneration": turn.regeneration,
        "session_id": turn.session_id,
        "rounds": [
            {"critique": c.text, "regeneration": r.text, "gate": _gate_json(r.gate)}
            for c, r in zip(turn.critiques, turn.regenerations, strict=True)
        ],
        "gate": _gate_json(turn.regenerations[-1].gate),
        "repairs": [
            {"stage": s.stage, "round": s.round, "attempts": s.attempts, "fallback": s.fallback}
            for s in turn.repairs
        ],
        "usage": usage(turn.usage),
        "stages": [
            {
                "stage": s.stage,
                "round": s.round,
                "model": s.model,
                "adapter": s.adapter,
                "finish_reason": s.finish_reason,
                "attempts": s.attempts,
                "fallback": s.fallback,
                "usage": usage(s.usage),
            }
            for s in turn.stages
        ],
        "timings": {
            f"{s.stage}" + (f"_{s.round}" if s.round > 1 else ""): s.timings["total"] for s in turn.stages
        },
    }


def _gate_json(decision: Any) -> dict[str, Any] | None:
    if decision is None:
        return None
    return {
        "kept": decision.kept,
        "previous_score": decision.previous_score,
        "regeneration_score": decision.regeneration_score,
        "regeneration": decision.regeneration,
    }
