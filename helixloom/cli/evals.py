"""``helixloom eval qa|winrate|grade|sessions``: key-fact QA of a fine-tune, and judges and win rates.

This module builds the ``eval`` parsers and runs key-fact QA; the judged evaluations run in
``helixloom.cli.evals_judge`` (see ``helixloom.evals``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from helixloom.cli.evals_judge import cmd_grade, cmd_sessions, cmd_winrate

JUDGE_NOTE = (
    "Numbers from a small local judge compare your own models with each other; they are not comparable "
    "with published AlpacaEval or MT-bench scores."
)
PROMPTS_HELP = (
    "prompts to answer: a .jsonl file with a 'prompt' (or 'instruction') string or a 'messages' list "
    "per line, or a text file with one prompt per line"
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` command: key-fact QA and the judge-based evaluations."""
    from helixloom.cli.common import usage

    ev = sub.add_parser("eval", help="evaluate answers", description="Evaluations.")
    esub = ev.add_subparsers(title="evaluations", metavar="EVAL")
    eqa = esub.add_parser(
        "qa",
        help="key-fact QA: the base model against base + adapter (and each with retrieval)",
        description="Ask each question of a JSONL file ({question, facts: [...], document?}) with the base "
        "model and with the adapter (its system prompt applied), and score the share of expected facts "
        "each answer contains: what the fine-tune learned. A fact may list alternatives as 'a|b'. With "
        "--retrieve, two more arms show the passages BM25 finds in the adapter's learned documents before "
        "each question (base + retrieval, adapter + retrieval): fine-tune, retrieval and both side by side.",
    )
    eqa.add_argument("--adapter", required=True, metavar="NAME_OR_PATH")
    eqa.add_argument("--questions", required=True, metavar="FILE")
    eqa.add_argument("--base", default="default", metavar="SPEC")
    eqa.add_argument("--max-tokens", type=int, default=128)
    eqa.add_argument(
        "--retrieve",
        action="store_true",
        help="add the base + retrieval and adapter + retrieval arms (needs an adapter made by learn)",
    )
    eqa.add_argument(
        "--check-kind",
        action="store_true",
        help="add the adapter+kind arm: an answer of another kind than its question asks for (no number "
        "for 'how many', no date for 'which day') is replaced by the adapter's next likeliest opening, "
        "continued, that is of it (on the default model 72.8%% of key facts against 71.1%% over six held-out "
        "runs: +1 and +2 of 30 questions on two, none lost)",
    )
    eqa.add_argument(
        "--free-citations",
        action="store_true",
        help="let the adapter write any [DOC_ID:...], as it would unguided (default: a citation's id is "
        "decoded from the ids of the documents the adapter learned, as chat and the server serve it)",
    )
    eqa.add_argument("--json", action="store_true", help="print every answer and the scores as JSON")
    eqa.set_defaults(run=cmd_eval_qa, job="eval")
    _add_eval_command(
        esub,
        "winrate",
        cmd_winrate,
        help="win rate of a model or adapter against a baseline, judged pairwise by an LLM",
        description="Answer every prompt with the model (A) and the baseline (B), then let the judge model "
        "compare the two answers with MT-bench's pair-v2 prompt, asked in both orders to cancel position "
        "bias (both orders agree: a win or a loss; otherwise a tie). Reports the win rate "
        "((wins + ties/2) / n) with its standard error, the soft win rate (mean P(A better), AlpacaEval "
        "style) and a length-controlled win rate (AlpacaEval's GLM: the preference predicted for answers "
        "of equal length). With the same SPEC for --model and --baseline the model is loaded once and "
        "only the adapters differ, e.g. --adapter mine against its base. " + JUDGE_NOTE,
        model_help="model A (default: default)",
        adapter_help="LoRA adapter on model A",
        own_flags=_winrate_flags,
        judge_modes=True,
    )
    _add_eval_command(
        esub,
        "grade",
        cmd_grade,
        help="grade a model's answers 1-10 with an LLM judge (MT-bench single grading)",
        description="Answer every prompt with the model, then let the judge rate each answer from 1 to 10 "
        "with MT-bench's single-v1 prompt (greedy). The rating is read from '[[n]]' (or '[n]'); replies "
        "without one are counted as malformed and left out of the mean. Small base models rarely follow "
        "the format: give them --no-explanation, or prefer `eval winrate`, which reads the verdict from "
        "log-probabilities. " + JUDGE_NOTE,
        model_help="the model to grade",
        adapter_help="LoRA adapter on the model",
        own_flags=_prompts_flag,
        judge_modes=False,  # grading has one answer to rate: no pairwise verdict to read
    )
    _add_eval_command(
        esub,
        "sessions",
        cmd_sessions,
        help="replay rated sessions: does the model beat the answers users disliked?",
        description="Take the stored answers users rated thumbs up or down (on a message, or on the "
        "whole session: its final answer), ask their conversation again to the model (or adapter), and "
        "let the judge compare each new answer (A) with the rated one (B), both orders. Win rates "
        "against liked and against disliked answers are reported apart: a better model beats the "
        "disliked answers and at least ties the liked ones. " + JUDGE_NOTE,
        model_help="the model to replay with",
        adapter_help="LoRA adapter on the model",
        own_flags=_sessions_flags,
        judge_modes=True,
    )
    ev.set_defaults(run=lambda _: usage(ev))


def _add_eval_command(
    esub: argparse._SubParsersAction,
    name: str,
    run: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str,
    model_help: str,
    adapter_help: str,
    own_flags: Callable[[argparse.ArgumentParser], None],
    judge_modes: bool,
) -> None:
    """One ``eval`` command: --model and --adapter, the command's ``own_flags``, then the judge,
    generation and output flags the three commands share (``judge_modes`` adds --judge-mode)."""
    p = esub.add_parser(name, help=help, description=description)
    p.add_argument("--model", default="default", metavar="SPEC", help=model_help)
    p.add_argument("--adapter", metavar="NAME_OR_PATH", help=adapter_help)
    own_flags(p)
    _add_judge_flags(p, modes=judge_modes)
    _add_generation_flags(p)
    _add_output_flags(p)
    p.set_defaults(run=run, job="eval")


def _prompts_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", required=True, metavar="FILE", help=PROMPTS_HELP)


def _winrate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline", metavar="SPEC", help="model B, the baseline (default: --model)")
    p.add_argument("--baseline-adapter", metavar="NAME_OR_PATH", help="LoRA adapter on model B")
    _prompts_flag(p)


def _sessions_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rating", choices=["up", "down"], help="only answers rated so (default: both)")
    p.add_argument("--limit", type=int, help="at most this many rated answers, newest sessions first")


def _add_judge_flags(p: argparse.ArgumentParser, *, modes: bool) -> None:
    g = p.add_argument_group("judge")
    g.add_argument(
        "--judge",
        metavar="SPEC",
        help="the judge model: a local folder, org/name, default, llamacpp:..., openai:URL#MODEL "
        "(default: --model)",
    )
    g.add_argument(
        "--judge-adapter", metavar="NAME_OR_PATH", help="LoRA adapter on the judge (a tuned judge)"
    )
    if modes:
        g.add_argument(
            "--judge-mode",
            choices=["auto", "logprobs", "text"],
            default="auto",
            help="logprobs: read P(A), P(B), P(tie) after '[[' (works on small base models); text: let "
            "the judge write its verdict and parse [[A]]/[[B]]/[[C]]; auto: logprobs when the engine "
            "has them (default auto)",
        )
    g.add_argument(
        "--judge-template",
        metavar="NAME_OR_FILE",
        help="judge prompt: a built-in name (pair-v2 / single-v1) or a .yaml file with system, user "
        "and verdict_prefix keys",
    )
    g.add_argument(
        "--no-explanation",
        dest="explain",
        action="store_false",
        help="text judging: start the judge's reply with the verdict prefix and read only a few tokens, "
        "instead of MT-bench's explanation then verdict",
    )
    g.add_argument(
        "--judge-max-tokens",
        type=int,
        default=512,
        help="most tokens of a written judgment (default 512)",
    )


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    from helixloom.cli.common import add_sampling_flags

    add_sampling_flags(p, temperature=0.0, max_tokens=256)
    p.add_argument(
        "--system",
        help="system message for the answering models, not the judge (default: an adapter's own system "
        "prompt, for adapters made by `helixloom learn`)",
    )
    p.add_argument(
        "--batch-size", type=int, default=8, help="prompts answered and judged per batch (default 8)"
    )


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the report and every row as JSON")
    p.add_argument("--out", metavar="FILE", help="also write the report and every row as JSON to FILE")


def cmd_eval_qa(args: argparse.Namespace) -> int:
    from helixloom import adapters as adapter_registry
    from helixloom import models
    from helixloom.cli.common import open_store
    from helixloom.documents import dataset
    from helixloom.engine import load_engine, sampling
    from helixloom.evals import keyfacts

    items = keyfacts.load(args.questions)
    params = sampling(temperature=0, max_tokens=args.max_tokens)
    models.resolve(args.base)
    with open_store() as store:
        name, folder = adapter_registry.resolve(store, args.adapter, model=args.base)
        meta = store.adapter_meta(name)
    system = meta.get("system_prompt")
    # the adapter cites only the documents it learned, as chat and the server serve it
    cites = None if args.free_citations else dataset.citation_set(meta.get("documents") or {})
    index = learned_index(meta) if args.retrieve else None
    engine = load_engine(args.base)
    engine.load_adapter(name, str(folder))
    arms = {}
    if index is not None:
        arms["base+retrieval"] = keyfacts.answer(engine, items, params, index=index)
        arms["adapter+retrieval"] = keyfacts.answer(
            engine, items, params, adapter=name, system=system, index=index, citations=cites
        )
    if args.check_kind:
        arms["adapter+kind"] = keyfacts.answer(
            engine, items, params, adapter=name, system=system, check_kind=True, citations=cites
        )
    comparison = keyfacts.Comparison(
        before=keyfacts.answer(engine, items, params),
        after=keyfacts.answer(engine, items, params, adapter=name, system=system, citations=cites),
        arms=arms,
    )
    if args.json:
        print(json.dumps(comparison.to_dict()))
        return 0
    for i, (b, a) in enumerate(zip(comparison.before, comparison.after, strict=True)):
        print(b.item.question)
        print(f"  base    {b.score:.0%}: {b.answer[:100]!r}")
        print(f"  {name:<7} {a.score:.0%}: {a.answer[:100]!r}")
        for arm, answers in arms.items():
            print(f"  {arm} {answers[i].score:.0%}: {answers[i].answer[:100]!r}")
    found = ", ".join(f"{arm} {score:.0%}" for arm, score in comparison.scores().items())
    print(f"\nkey facts found: {found} ({len(items)} questions)")
    return 0


def learned_index(meta: dict[str, Any]) -> Any:
    """The BM25 index over the documents an adapter learned (saved with its dataset)."""
    from helixloom.documents import dataset, retrieval
    from helixloom.errors import HelixloomError

    if meta.get("kind") != "documents" or not meta.get("dataset"):
        raise HelixloomError("--retrieve needs an adapter made by helixloom learn")
    return retrieval.load(dataset.folder(str(meta["dataset"])))
