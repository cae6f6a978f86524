"""``helixloom eval qa|winrate|grade|sessions``: key-fact QA of a fine-tune, and judges and win rates
(see ``helixloom.evals.judge``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from helixloom.errors import HelixloomError

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
        help="key-fact QA: the base model against base + adapter",
        description="Ask each question of a JSONL file ({question, facts: [...]}) with the base model and "
        "with the adapter (its system prompt applied), and score the share of expected facts each answer "
        "contains: what the fine-tune learned.",
    )
    eqa.add_argument("--adapter", required=True, metavar="NAME_OR_PATH")
    eqa.add_argument("--questions", required=True, metavar="FILE")
    eqa.add_argument("--base", default="default", metavar="SPEC")
    eqa.add_argument("--max-tokens", type=int, default=128)
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


# ---------------------------------------------------------------------------- commands


class _Models:
    """Engines by spec (one load per spec) and adapters resolved from the store and loaded on them."""

    def __init__(self, store: Any) -> None:
        from helixloom.engine.pool import EnginePool

        self.store = store
        self.pool = EnginePool()

    def get(self, spec: str, adapter: str | None) -> tuple[Any, str | None]:
        from helixloom import adapters

        engine = self.pool.get(spec)
        if not adapter:
            return engine, None
        name, folder = adapters.resolve(self.store, adapter, model=spec)
        engine.load_adapter(name, str(folder))
        return engine, name

    def system(self, given: str | None, adapter: str | None) -> str | None:
        """``--system``, else the system prompt registered with the adapter (by ``helixloom learn``)."""

        if given:
            return given
        prompt = self.store.adapter_meta(adapter).get("system_prompt")
        return prompt if isinstance(prompt, str) and prompt else None


def _check_specs(*specs: str) -> None:
    """Fail on a spec that names nothing before any model loads."""
    from helixloom import models

    for spec in specs:
        models.resolve(spec)


def _judge(args: argparse.Namespace, models: _Models, *, pairwise: bool) -> Any:
    from helixloom.evals import judge

    if args.judge_max_tokens < 1:
        raise HelixloomError("--judge-max-tokens must be at least 1")
    engine, adapter = models.get(args.judge or args.model, args.judge_adapter)
    if pairwise:
        return judge.PairwiseJudge(
            engine,
            adapter=adapter,
            template=args.judge_template,
            mode=args.judge_mode,
            explain=args.explain,
            max_tokens=args.judge_max_tokens,
        )
    return judge.Grader(
        engine,
        adapter=adapter,
        template=args.judge_template,
        explain=args.explain,
        max_tokens=args.judge_max_tokens,
    )


@contextmanager
def _progress(total: int, desc: str) -> Iterator[Any]:
    from helixloom.jobs import progress_bar

    bar = progress_bar(total, desc=desc, unit="prompt", disable=None)
    try:
        yield bar.update
    finally:
        bar.close()


def _emit(args: argparse.Namespace, body: dict[str, Any]) -> bool:
    """Write ``--out``; print JSON for ``--json``; the job's result. True when the JSON was printed."""
    from helixloom import jobs

    jobs.set_result(body)
    if args.out:
        Path(args.out).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(body))
        return True
    return False


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:5.1f}"


def _print_winrate(report: Any, label: str = "win rate") -> None:
    se = "" if report.standard_error is None else f" ± {report.standard_error:.1f}"
    print(
        f"{label:<24}{_pct(report.win_rate)}{se}  "
        f"(wins {report.wins}, losses {report.losses}, ties {report.ties}; n={report.n})"
    )
    print(f"{'  soft win rate':<24}{_pct(report.soft_win_rate)}")
    coef = "" if report.lc_length_coef is None else f"  (length coefficient {report.lc_length_coef:+.2f})"
    print(f"{'  length-controlled':<24}{_pct(report.lc_win_rate)}{coef}")
    if report.n:
        print(f"{'  mean length (chars)':<24}A {report.mean_length_a:.0f}, B {report.mean_length_b:.0f}")
    if report.malformed:
        print(
            f"{'  malformed':<24}{report.malformed} pair(s) without a verdict "
            f"({report.malformed_verdicts} unreadable judgments), left out"
        )


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _label(spec: str, adapter: str | None) -> str:
    return f"{spec} + {adapter}" if adapter else spec


def cmd_eval_qa(args: argparse.Namespace) -> int:
    from helixloom import adapters as adapter_registry
    from helixloom import models
    from helixloom.cli.common import open_store
    from helixloom.engine import load_engine, sampling
    from helixloom.evals import qa

    items = qa.load(args.questions)
    params = sampling(temperature=0, max_tokens=args.max_tokens)
    models.resolve(args.base)
    with open_store() as store:
        name, folder = adapter_registry.resolve(store, args.adapter, model=args.base)
        system = store.adapter_meta(name).get("system_prompt")
    engine = load_engine(args.base)
    engine.load_adapter(name, str(folder))
    before = qa.answer(engine, items, params)
    after = qa.answer(engine, items, params, adapter=name, system=system)
    report = {
        "questions": len(items),
        "base_score": qa.mean_score(before),
        "adapter_score": qa.mean_score(after),
    }
    if args.json:
        rows = [
            {
                "question": b.item.question,
                "facts": list(b.item.facts),
                "base": b.answer,
                "base_found": list(b.found),
                "adapter": a.answer,
                "adapter_found": list(a.found),
            }
            for b, a in zip(before, after, strict=True)
        ]
        print(json.dumps({**report, "answers": rows}))
        return 0
    for b, a in zip(before, after, strict=True):
        print(b.item.question)
        print(f"  base    {b.score:.0%}: {b.answer[:100]!r}")
        print(f"  {name:<7} {a.score:.0%}: {a.answer[:100]!r}")
    found = f"base {report['base_score']:.0%}, {name} {report['adapter_score']:.0%}"
    print(f"\nkey facts found: {found} ({len(items)} questions)")
    return 0


def cmd_winrate(args: argparse.Namespace) -> int:
    from helixloom.cli.common import open_store, sampling_from
    from helixloom.evals import judge

    prompts = judge.load_prompts(args.prompts)
    params = sampling_from(args)
    baseline_spec = args.baseline or args.model
    judge_spec = args.judge or args.model
    _check_specs(args.model, baseline_spec, judge_spec)
    with open_store() as store:
        models = _Models(store)
        model, adapter = models.get(args.model, args.adapter)
        baseline, baseline_adapter = models.get(baseline_spec, args.baseline_adapter)
        system = models.system(args.system, adapter)
        baseline_system = models.system(args.system, baseline_adapter) or ""  # "": none, not A's
        pairwise = _judge(args, models, pairwise=True)
    with _progress(len(prompts), "winrate") as advance:
        result = judge.evaluate_winrate(
            model,
            baseline,
            prompts,
            pairwise,
            params,
            adapter=adapter,
            baseline_adapter=baseline_adapter,
            system=system,
            baseline_system=baseline_system,
            batch_size=args.batch_size,
            on_progress=advance,
        )
    config = {
        "model": args.model,
        "adapter": adapter,
        "baseline": baseline_spec,
        "baseline_adapter": baseline_adapter,
        "judge": judge_spec,
        "judge_adapter": pairwise.adapter,
        "judge_mode": pairwise.mode,
        "template": pairwise.template.name,
        "sampling": params.model_dump(mode="json"),
    }
    if _emit(args, {"config": config, **result.to_dict()}):
        return 0
    print(f"{'#':>3}  {'winner':<6} {'P(A)':>5}  prompt")
    for i, row in enumerate(result.rows, 1):
        pref = "-" if row.verdict.preference is None else f"{row.verdict.preference:.2f}"
        print(f"{i:>3}  {row.verdict.winner:<6} {pref:>5}  {_short(row.prompt, 70)}")
    print()
    print(f"A: {_label(args.model, adapter)}")
    print(f"B: {_label(baseline_spec, baseline_adapter)}")
    print(f"judge: {_label(judge_spec, pairwise.adapter)} ({pairwise.mode}, {pairwise.template.name})")
    _print_winrate(result.report, "A's win rate over B")
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    from helixloom.cli.common import open_store, sampling_from
    from helixloom.evals import judge

    prompts = judge.load_prompts(args.prompts)
    params = sampling_from(args)
    judge_spec = args.judge or args.model
    _check_specs(args.model, judge_spec)
    with open_store() as store:
        models = _Models(store)
        model, adapter = models.get(args.model, args.adapter)
        system = models.system(args.system, adapter)
        grader = _judge(args, models, pairwise=False)
    with _progress(len(prompts), "grade") as advance:
        result = judge.evaluate_grades(
            model,
            prompts,
            grader,
            params,
            adapter=adapter,
            system=system,
            batch_size=args.batch_size,
            on_progress=advance,
        )
    config = {
        "model": args.model,
        "adapter": adapter,
        "judge": judge_spec,
        "judge_adapter": grader.adapter,
        "template": grader.template.name,
        "sampling": params.model_dump(mode="json"),
    }
    if _emit(args, {"config": config, **result.to_dict()}):
        return 0
    print(f"{'#':>3}  {'rating':>6}  prompt")
    for i, row in enumerate(result.rows, 1):
        rating = "?" if row.grade.malformed else f"{row.grade.rating:g}"
        print(f"{i:>3}  {rating:>6}  {_short(row.prompt, 70)}")
    report = result.report
    mean = "-" if report.mean is None else f"{report.mean:.2f}"
    print(f"\n{_label(args.model, adapter)}: mean rating {mean} / 10 over {report.count - report.malformed}")
    if report.malformed:
        print(f"malformed judgments (no [[rating]]): {report.malformed} of {report.count}, left out")
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    from helixloom.cli.common import open_store, sampling_from
    from helixloom.evals import judge

    if args.limit is not None and args.limit < 1:
        raise HelixloomError("--limit must be at least 1")
    params = sampling_from(args)
    judge_spec = args.judge or args.model
    _check_specs(args.model, judge_spec)
    with open_store() as store:
        items = judge.rated_answers(store, rating=args.rating, limit=args.limit)
        if not items:
            raise HelixloomError(
                "no rated answers in the store" + (f" (rating {args.rating})" if args.rating else ""),
                "rate answers thumbs up or down first (POST /api/sessions/ID/feedback, or the loom)",
            )
        models = _Models(store)
        model, adapter = models.get(args.model, args.adapter)
        pairwise = _judge(args, models, pairwise=True)
        with _progress(len(items), "sessions") as advance:
            result = judge.replay_sessions(
                store,
                model,
                pairwise,
                adapter=adapter,
                params=params,
                items=items,
                system=models.system(args.system, adapter),
                batch_size=args.batch_size,
                on_progress=advance,
            )
    config = {
        "model": args.model,
        "adapter": adapter,
        "judge": judge_spec,
        "judge_adapter": pairwise.adapter,
        "judge_mode": pairwise.mode,
        "template": pairwise.template.name,
        "sampling": params.model_dump(mode="json"),
    }
    if _emit(args, {"config": config, **result.to_dict()}):
        return 0
    print(f"{'#':>3}  {'rated':<5} {'winner':<6} {'P(new)':>6}  prompt")
    for i, row in enumerate(result.rows, 1):
        pref = "-" if row.verdict.preference is None else f"{row.verdict.preference:.2f}"
        prompt = judge.question_text(list(row.item.messages))
        print(f"{i:>3}  {row.item.rating:<5} {row.verdict.winner:<6} {pref:>6}  {_short(prompt, 64)}")
    print(f"\nA: {_label(args.model, adapter)} (new answers); B: the rated answers")
    print(f"judge: {_label(judge_spec, pairwise.adapter)} ({pairwise.mode}, {pairwise.template.name})")
    for sign, report, goal in (
        ("down", result.down, "should be above 50"),
        ("up", result.up, "should be 50 or more"),
    ):
        if report.n or report.malformed:
            print(f"\nagainst answers rated {sign} ({goal}):")
            _print_winrate(report)
    return 0
