"""``helixloom iterate``: iterative preference learning (GSHF / iterative DPO, RAFT)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from typing import Any

from helixloom import jobs
from helixloom.jobs import progress_bar

DESCRIPTION = """
Improve a model from its own samples (GSHF / iterative DPO). Each iteration samples --k responses per
prompt from the current policy (base + the last iteration's adapter), scores them with --reward, pairs
the best with the worst (ties dropped), trains the adapter with DPO against the previous iterate (or,
with --method raft, SFT on the best of K), then answers the evaluation prompts and reports mean reward,
win rate against the starting model and mean length. Every phase is saved under
$HELIXLOOM_HOME/runs/iterate/NAME: a killed run continues with --resume. The final adapter is
registered as NAME.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from helixloom.cli.common import add_sft_flags
    from helixloom.training.configs import IterateConfig, LoraDPOConfig

    it = sub.add_parser(
        "iterate",
        help="iterative preference learning: sample K, score, pair best vs worst, DPO (or RAFT), repeat",
        description=" ".join(DESCRIPTION.split()),
        epilog="Rewards: evaluator[:QUESTION] (zero-shot yes/no evaluator, the default), rubric:FILE, "
        "constitution[:FILE] (MiniHF format, RLAIF), rm:NAME (helixloom train reward), head:NAME "
        "(helixloom train reward-head), improve:NAME (an improve run's reward), judge[:SPEC] "
        "(pairwise LLM judge, round robin), py:MODULE:FUNCTION.",
    )
    it.add_argument("--name", required=True, help="name of the run and of the adapter it registers")
    it.add_argument(
        "--prompts", metavar="FILE", help="training prompts: JSONL with 'prompt', or one per line"
    )
    it.add_argument("--eval-prompts", metavar="FILE", help="evaluation prompts (default: --prompts)")
    it.add_argument(
        "--base", default="default", metavar="SPEC", help="the model to improve (default: default)"
    )
    it.add_argument("--adapter", metavar="NAME_OR_PATH", help="start from this adapter (e.g. an SFT one)")
    it.add_argument("--reward", default="evaluator", metavar="SPEC", help="how responses are scored")
    it.add_argument(
        "--evaluator-adapter",
        metavar="NAME_OR_PATH",
        help="adapter of the base model used as the evaluator (e.g. from `helixloom train evaluator`)",
    )
    it.add_argument(
        "--judge",
        metavar="SPEC",
        help="also report each iteration's win rate against the start under this pairwise judge "
        "('base' for the base model itself, or a model spec)",
    )
    helps = IterateConfig.help()
    loop = it.add_argument_group("loop")
    for f in fields(IterateConfig):
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"default": None, "help": f"{helps[f.name]} (default {f.default!r})"}
        if f.name == "method":
            kwargs["choices"] = ["dpo", "raft"]
        elif f.name == "pairs":
            kwargs["choices"] = ["max_min", "max_random", "max_min+max_random"]
        elif f.name == "seed":
            continue  # one --seed (the training group's) seeds sampling, pairing and training
        else:
            kwargs["type"] = type(f.default)
        loop.add_argument(flag, **kwargs)
    add_sft_flags(it, LoraDPOConfig, title="training (DPO / RAFT)")
    it.add_argument("--resume", action="store_true", help="continue run NAME where it stopped")
    it.add_argument("--overwrite", action="store_true", help="delete an existing run NAME and start over")
    it.add_argument("--json", action="store_true", help="print the per-iteration table as JSON")
    it.set_defaults(run=cmd_iterate, job="iterate")


def cmd_iterate(args: argparse.Namespace) -> int:
    from helixloom import adapters as adapter_registry
    from helixloom.cli.common import open_store, sft_config_from
    from helixloom.engine import load_engine
    from helixloom.errors import HelixloomError
    from helixloom.jsonl import read_prompts
    from helixloom.training.configs import IterateConfig, LoraDPOConfig
    from helixloom.training.iterate import IterativeRun
    from helixloom.training.iterate_report import format_table
    from helixloom.training.reward_spec import load_reward

    store = open_store()
    if args.resume:
        if args.prompts or args.overwrite:
            raise HelixloomError(
                "--resume continues a run with its saved settings; drop --prompts/--overwrite"
            )
        run = IterativeRun.open(args.name)
    else:
        if not args.prompts:
            raise HelixloomError("--prompts FILE is required to start a run", param="prompts")
        prompts = read_prompts(args.prompts)
        eval_prompts = read_prompts(args.eval_prompts, "evaluation prompts") if args.eval_prompts else None
        loop = {
            f.name: getattr(args, f.name)
            for f in fields(IterateConfig)
            if getattr(args, f.name, None) is not None
        }
        config = IterateConfig(**loop)
        train = sft_config_from(args, LoraDPOConfig)
        start = None
        if args.adapter:
            start = str(adapter_registry.resolve(store, args.adapter, model=args.base)[1])
        if args.evaluator_adapter:
            adapter_registry.resolve(store, args.evaluator_adapter, model=args.base)  # fail before any work
        run = IterativeRun.create(
            args.name,
            prompts,
            base=args.base,
            reward=args.reward,
            start_adapter=start,
            eval_prompts=eval_prompts,
            judge=args.judge,
            config=config,
            train=train,
            evaluator_adapter=args.evaluator_adapter,
            overwrite=args.overwrite,
        )
    meta = run.meta
    say = _say
    say(
        f"iterate {run.name}: {len(run.prompts)} prompts, k={run.config.k}, "
        f"{run.config.iterations} iterations, {run.config.method}, reward {meta['reward']}"
    )
    engine = load_engine(meta["base"])
    evaluator_adapter = None
    if meta.get("evaluator_adapter"):
        evaluator_adapter = "iterate-evaluator"
        engine.load_adapter(
            evaluator_adapter, str(adapter_registry.resolve(store, meta["evaluator_adapter"])[1])
        )
    reward = load_reward(meta["reward"], engine=engine, store=store, evaluator_adapter=evaluator_adapter)
    judge_fn = _judge_fn(str(meta["judge"]), engine) if meta.get("judge") else None

    def progress(label: str, total: int) -> Any:
        return progress_bar(total, desc=label, unit="prompt", leave=False)

    start_path = None
    if meta.get("start_adapter"):
        from pathlib import Path

        start_path = Path(meta["start_adapter"])
    rows = run.execute(
        engine, reward, judge=judge_fn, start_adapter_path=start_path, say=say, progress=progress
    )
    final = run.final_adapter()
    if final is not None:
        adapter_registry.register(store, run.name, final, replace=True)
    report = run.write_report()
    jobs.set_result({"name": run.name, "adapter": str(final), "rows": [asdict(r) for r in rows]})
    if args.json:
        print(
            json.dumps({"name": run.name, "adapter": str(final), "rows": [asdict(r) for r in rows]}, indent=2)
        )
    else:
        print(format_table(rows))
        print(f"\nadapter {run.name}: {final}")
        print(f"report: {report.with_suffix('.json')} and {report}")
    return 0


def _say(text: str) -> None:
    print(text, file=sys.stderr)
    jobs.log(text.strip())


def _judge_fn(spec: str, engine: Any) -> Any:
    """A pairwise judge as the loop's ``JudgeFn``: win %, LC win % and the judge's position
    consistency (the win rates withheld, None, when it is below ``win_rate``'s threshold)."""
    from helixloom.engine import load_engine
    from helixloom.evals.pairwise import PairwiseJudge
    from helixloom.evals.winrate import win_rate

    judge = PairwiseJudge(engine if spec == "base" else load_engine(spec))

    def run(
        prompts: list[str], answers: list[str], baseline: list[str]
    ) -> tuple[float | None, float | None, float | None]:
        verdicts = judge.compare(prompts, answers, baseline)
        report = win_rate(verdicts, [len(a) for a in answers], [len(b) for b in baseline])
        if report.unreliable_reason:
            _say(f"  {report.unreliable_reason}")
        return report.win_rate, report.lc_win_rate, report.consistency

    return run
