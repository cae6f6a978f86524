"""``helixloom eval winrate|grade|sessions``: the evaluations an LLM judge decides (see
``helixloom.evals``). The parsers are built in ``helixloom.cli.evals``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from helixloom.errors import HelixloomError

if TYPE_CHECKING:
    from helixloom.engine import Engine, SamplingParams
    from helixloom.evals.grade import Grader
    from helixloom.evals.pairwise import PairwiseJudge
    from helixloom.evals.prompts import Progress
    from helixloom.evals.winrate import WinRateReport
    from helixloom.store import Store


class _Report(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class _Models:
    """Engines by spec (one load per spec) and adapters resolved from the store and loaded on them."""

    def __init__(self, store: Store) -> None:
        from helixloom.engine.pool import EnginePool

        self.store = store
        self.pool = EnginePool()

    def get(self, spec: str, adapter: str | None) -> tuple[Engine, str | None]:
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


def _judge_engine(args: argparse.Namespace, models: _Models) -> tuple[Engine, str | None]:
    if args.judge_max_tokens < 1:
        raise HelixloomError("--judge-max-tokens must be at least 1")
    return models.get(args.judge or args.model, args.judge_adapter)


def _pairwise_judge(args: argparse.Namespace, models: _Models) -> PairwiseJudge:
    from helixloom.evals.pairwise import PairwiseJudge

    engine, adapter = _judge_engine(args, models)
    return PairwiseJudge(
        engine,
        adapter=adapter,
        template=args.judge_template,
        mode=args.judge_mode,
        explain=args.explain,
        max_tokens=args.judge_max_tokens,
    )


def _grader(args: argparse.Namespace, models: _Models) -> Grader:
    from helixloom.evals.grade import Grader

    engine, adapter = _judge_engine(args, models)
    return Grader(
        engine,
        adapter=adapter,
        template=args.judge_template,
        explain=args.explain,
        max_tokens=args.judge_max_tokens,
    )


@dataclass(frozen=True)
class _RunConfig:
    """What an evaluation ran with: the ``config`` of its JSON report. ``baseline`` is set for a win
    rate only and ``judge_mode`` for a pairwise judge only; the report leaves out what is not set."""

    model: str
    adapter: str | None
    judge: str
    judge_adapter: str | None
    template: str
    sampling: SamplingParams
    judge_mode: str | None = None
    baseline: str | None = None
    baseline_adapter: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "adapter": self.adapter}
        if self.baseline is not None:
            out |= {"baseline": self.baseline, "baseline_adapter": self.baseline_adapter}
        out |= {"judge": self.judge, "judge_adapter": self.judge_adapter}
        if self.judge_mode is not None:
            out["judge_mode"] = self.judge_mode
        return out | {"template": self.template, "sampling": self.sampling.model_dump(mode="json")}


@contextmanager
def _progress(total: int, desc: str) -> Iterator[Progress]:
    from helixloom.jobs import progress_bar

    bar = progress_bar(total, desc=desc, unit="prompt", disable=None)
    try:
        yield bar.update
    finally:
        bar.close()


def _emit(args: argparse.Namespace, config: _RunConfig, result: _Report) -> bool:
    """The report (``config`` and ``result.to_dict()``): the job's result, written to ``--out``, printed
    as JSON for ``--json``. True when the JSON was printed."""
    from helixloom import atomic, jobs

    body = {"config": config.to_dict(), **result.to_dict()}
    jobs.set_result(body)
    if args.out:
        atomic.write_text(Path(args.out), json.dumps(body, indent=2) + "\n")
    if args.json:
        print(json.dumps(body))
        return True
    return False


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:5.1f}"


def _preference(p: float | None) -> str:
    return "-" if p is None else f"{p:.2f}"


def _print_winrate(report: WinRateReport, label: str = "win rate") -> None:
    consistency = "-" if report.consistency is None else f"{report.consistency:.0f}%"
    print(f"{'judge consistency':<24}{consistency} (same winner in both orders; n={report.consistency_n})")
    if report.unreliable_reason:
        # Noise is not a result: no win rate is printed as if it meant something.
        print(f"{label:<24}withheld: {report.unreliable_reason}")
        print(f"{'':<24}(wins {report.wins}, losses {report.losses}, ties {report.ties}; n={report.n})")
        return
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


def _print_judge(spec: str, judge: PairwiseJudge) -> None:
    print(f"judge: {_label(spec, judge.adapter)} ({judge.mode}, {judge.template.name})")


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _label(spec: str, adapter: str | None) -> str:
    return f"{spec} + {adapter}" if adapter else spec


def cmd_winrate(args: argparse.Namespace) -> int:
    from helixloom.cli.common import open_store, sampling_from
    from helixloom.evals.prompts import load_prompts
    from helixloom.evals.winrate import evaluate_winrate

    prompts = load_prompts(args.prompts)
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
        judge = _pairwise_judge(args, models)
    with _progress(len(prompts), "winrate") as advance:
        result = evaluate_winrate(
            model,
            baseline,
            prompts,
            judge,
            params,
            adapter=adapter,
            baseline_adapter=baseline_adapter,
            system=system,
            baseline_system=baseline_system,
            batch_size=args.batch_size,
            on_progress=advance,
        )
    config = _RunConfig(
        model=args.model,
        adapter=adapter,
        baseline=baseline_spec,
        baseline_adapter=baseline_adapter,
        judge=judge_spec,
        judge_adapter=judge.adapter,
        judge_mode=judge.mode,
        template=judge.template.name,
        sampling=params,
    )
    if _emit(args, config, result):
        return 0
    print(f"{'#':>3}  {'winner':<6} {'P(A)':>5}  prompt")
    for i, row in enumerate(result.rows, 1):
        pref = _preference(row.verdict.preference)
        print(f"{i:>3}  {row.verdict.winner:<6} {pref:>5}  {_short(row.prompt, 70)}")
    print()
    print(f"A: {_label(args.model, adapter)}")
    print(f"B: {_label(baseline_spec, baseline_adapter)}")
    _print_judge(judge_spec, judge)
    _print_winrate(result.report, "A's win rate over B")
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    from helixloom.cli.common import open_store, sampling_from
    from helixloom.evals.grade import evaluate_grades
    from helixloom.evals.prompts import load_prompts

    prompts = load_prompts(args.prompts)
    params = sampling_from(args)
    judge_spec = args.judge or args.model
    _check_specs(args.model, judge_spec)
    with open_store() as store:
        models = _Models(store)
        model, adapter = models.get(args.model, args.adapter)
        system = models.system(args.system, adapter)
        grader = _grader(args, models)
    with _progress(len(prompts), "grade") as advance:
        result = evaluate_grades(
            model,
            prompts,
            grader,
            params,
            adapter=adapter,
            system=system,
            batch_size=args.batch_size,
            on_progress=advance,
        )
    config = _RunConfig(
        model=args.model,
        adapter=adapter,
        judge=judge_spec,
        judge_adapter=grader.adapter,
        template=grader.template.name,
        sampling=params,
    )
    if _emit(args, config, result):
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
    from helixloom.evals.replay import no_rated_answers, rated_answers, replay_sessions

    if args.limit is not None and args.limit < 1:
        raise HelixloomError("--limit must be at least 1")
    params = sampling_from(args)
    judge_spec = args.judge or args.model
    _check_specs(args.model, judge_spec)
    with open_store() as store:
        items = rated_answers(store, rating=args.rating, limit=args.limit)
        if not items:  # before any model loads
            raise no_rated_answers(args.rating)
        models = _Models(store)
        model, adapter = models.get(args.model, args.adapter)
        judge = _pairwise_judge(args, models)
        with _progress(len(items), "sessions") as advance:
            result = replay_sessions(
                store,
                model,
                judge,
                adapter=adapter,
                params=params,
                items=items,
                system=models.system(args.system, adapter),
                batch_size=args.batch_size,
                on_progress=advance,
            )
    config = _RunConfig(
        model=args.model,
        adapter=adapter,
        judge=judge_spec,
        judge_adapter=judge.adapter,
        judge_mode=judge.mode,
        template=judge.template.name,
        sampling=params,
    )
    if _emit(args, config, result):
        return 0
    print(f"{'#':>3}  {'rated':<5} {'winner':<6} {'P(new)':>6}  prompt")
    for i, row in enumerate(result.rows, 1):
        pref = _preference(row.verdict.preference)
        print(
            f"{i:>3}  {row.item.rating:<5} {row.verdict.winner:<6} {pref:>6}  {_short(row.item.prompt, 64)}"
        )
    print(f"\nA: {_label(args.model, adapter)} (new answers); B: the rated answers")
    _print_judge(judge_spec, judge)
    for sign, report, goal in (
        ("down", result.down, "should be above 50"),
        ("up", result.up, "should be 50 or more"),
    ):
        if report.n or report.malformed:
            print(f"\nagainst answers rated {sign} ({goal}):")
            _print_winrate(report)
    return 0
