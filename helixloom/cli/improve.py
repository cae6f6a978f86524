"""``helixloom improve``: learn from users' ratings, closed: reward → fine-tune → promote → hot-load."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from helixloom import jobs

DESCRIPTION = """
Improve an adapter from what users rate. Each round samples --k answers per training prompt from the
current adapter (after worked examples of answer forms: --explore), puts pairs of them in the rating
queue (each prompt's favourite against the answer the reward is least sure of: --selection top; the
server's /rate?run=NAME page shows them), fits a reward ensemble on the choices and thumbs in the
store, fine-tunes a candidate adapter on the reward's best answer to each prompt (--method raft; dpo:
best vs worst), compares it with the current adapter on the held-out --eval-prompts,
and promotes it only if it wins; a promoted adapter is registered as NAME and, with --server,
hot-loaded there with vLLM's POST /v1/load_lora_adapter. Every phase is saved under
$HELIXLOOM_HOME/runs/improve/NAME: a killed run continues with --resume.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from helixloom.cli.common import add_sft_flags
    from helixloom.training.active import STRATEGIES
    from helixloom.training.configs import METHODS, ImproveDPOConfig
    from helixloom.training.improve import EXPLORE_BY, THUMBS, TRAIN_PAIRS, ImproveConfig

    p = sub.add_parser(
        "improve",
        help="learn from ratings: reward ensemble, fine-tune, promote only if better, hot-load into a server",
        description=" ".join(DESCRIPTION.split()),
    )
    p.add_argument("--name", required=True, help="name of the run and of the adapter it promotes")
    p.add_argument("--prompts", metavar="FILE", help="training prompts: JSONL with 'prompt', or one per line")
    p.add_argument("--eval-prompts", metavar="FILE", help="held-out prompts the promotion is decided on")
    p.add_argument(
        "--base", default="default", metavar="SPEC", help="the model to improve (default: default)"
    )
    p.add_argument(
        "--adapter", metavar="NAME_OR_PATH", help="start from this adapter (default: the base model)"
    )
    p.add_argument(
        "--reward",
        metavar="SPEC",
        help="score with this reward instead of learning one from ratings (head:NAME, rm:NAME, "
        "improve:NAME, constitution, evaluator, judge, py:MODULE:FUNCTION); no ratings are asked then",
    )
    p.add_argument(
        "--server",
        metavar="URL",
        help="hot-load each promoted adapter into this OpenAI-compatible server (helixloom or vLLM) "
        "with POST URL/v1/load_lora_adapter; its key from $HELIXLOOM_SERVER_KEY",
    )
    helps = ImproveConfig.help()
    loop = p.add_argument_group("loop")
    for f in fields(ImproveConfig):
        if f.name == "seed":
            continue  # one --seed (the training group's) seeds sampling, selection and training
        shown = "all k" if f.name == "explore" else repr(f.default)
        kwargs: dict[str, Any] = {
            "default": None,
            "help": f"{helps[f.name].replace('%', '%%')} (default {shown})",
        }
        if f.name == "selection":
            kwargs["choices"] = list(STRATEGIES)
        elif f.name == "train_pairs":
            kwargs["choices"] = list(TRAIN_PAIRS)
        elif f.name == "method":
            kwargs["choices"] = list(METHODS)
        elif f.name == "explore_by":
            kwargs["choices"] = list(EXPLORE_BY)
        elif f.name == "thumbs":
            kwargs["choices"] = list(THUMBS)
        else:
            kwargs["type"] = type(f.default)
        loop.add_argument("--" + f.name.replace("_", "-"), **kwargs)
    add_sft_flags(p, ImproveDPOConfig, title="training (RAFT and DPO)")
    ask = p.add_argument_group(
        "answering with what the run learned (instead of running rounds)",
        "draw answers as the run draws its own and print the one its reward scores highest",
    )
    ask.add_argument(
        "--answer", action="append", metavar="PROMPT", help="answer PROMPT this way (repeatable)"
    )
    ask.add_argument(
        "--best-of", type=int, metavar="N", help="answers to draw a prompt (default: the run's --k)"
    )
    ask.add_argument(
        "--answer-from",
        choices=["base", "current"],
        help="draw from the base model or the run's current adapter (default base: measured better "
        "where DPO did not learn the taste; see the README)",
    )
    p.add_argument("--resume", action="store_true", help="continue run NAME where it stopped")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run NAME and start over")
    p.add_argument("--json", action="store_true", help="print the per-round table as JSON")
    p.set_defaults(run=cmd_improve, job="improve")


def cmd_improve(args: argparse.Namespace) -> int:
    from helixloom import adapters as adapter_registry
    from helixloom.cli.common import open_store, sft_config_from
    from helixloom.engine import load_engine
    from helixloom.errors import HelixloomError
    from helixloom.jobs import progress_bar
    from helixloom.jsonl import read_prompts
    from helixloom.training.configs import ImproveDPOConfig
    from helixloom.training.improve import ImproveConfig, ImproveRun, deploy_http
    from helixloom.training.reward_spec import load_reward

    store = open_store()
    if args.answer:
        return _answer(args)
    if args.best_of is not None or args.answer_from is not None:
        raise HelixloomError("--best-of and --answer-from go with --answer", param="answer")
    if args.resume:
        if args.prompts or args.overwrite:
            raise HelixloomError(
                "--resume continues a run with its saved settings; drop --prompts/--overwrite"
            )
        run = ImproveRun.open(args.name)
    else:
        if not args.prompts or not args.eval_prompts:
            raise HelixloomError("--prompts FILE and --eval-prompts FILE start a run", param="prompts")
        loop = {
            f.name: getattr(args, f.name)
            for f in fields(ImproveConfig)
            if getattr(args, f.name, None) is not None
        }
        if args.seed is not None:
            loop["seed"] = args.seed
        start = (
            str(adapter_registry.resolve(store, args.adapter, model=args.base)[1]) if args.adapter else None
        )
        run = ImproveRun.create(
            args.name,
            read_prompts(args.prompts),
            read_prompts(args.eval_prompts, "evaluation prompts"),
            base=args.base,
            start_adapter=start,
            config=ImproveConfig(**loop),
            train=sft_config_from(args, ImproveDPOConfig),
            overwrite=args.overwrite,
        )
    _say(
        f"improve {run.name}: {len(run.prompts)} prompts, {len(run.eval_prompts)} held out, "
        f"{run.config.rounds} rounds of {run.config.ratings} ratings ({run.config.selection})"
    )
    engine = load_engine(run.meta["base"])
    reward = load_reward(args.reward, engine=engine, store=store) if args.reward else None
    deploy = deploy_http(args.server, os.environ.get("HELIXLOOM_SERVER_KEY")) if args.server else None

    def progress(label: str, total: int) -> Any:
        return progress_bar(total, desc=label, unit="answer", leave=False)

    def promote(name: str, folder: Path) -> dict[str, Any]:
        adapter_registry.register(store, name, folder, replace=True, meta={"improve_run": run.name})
        return deploy(name, folder) if deploy is not None else {"how": "registered"}

    rows = run.execute(engine, store, deploy=promote, reward=reward, say=_say, progress=progress)
    current = run.current()
    result = {
        "name": run.name,
        "adapter": str(current) if current else None,
        "rounds": [asdict(r) for r in rows],
    }
    jobs.set_result(result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for r in rows:
            print(
                f"round {r.round}: {r.ratings} ratings, {r.pairs} pairs, win {r.win_rate:.1f}% -> "
                f"{'promoted' if r.promoted else 'kept'} ({r.reason})"
            )
        print(f"\ncurrent adapter of {run.name}: {current or 'the base model'}")
    return 0


def _answer(args: argparse.Namespace) -> int:
    from helixloom.engine import load_engine
    from helixloom.errors import HelixloomError
    from helixloom.training.improve import ImproveConfig, ImproveRun

    loop = [f.name for f in fields(ImproveConfig) if getattr(args, f.name, None) is not None]
    if (
        args.resume
        or args.prompts
        or args.eval_prompts
        or args.overwrite
        or args.reward
        or args.server
        or loop
    ):
        raise HelixloomError(
            "--answer uses run NAME as it is: drop --resume, --prompts, --eval-prompts, --overwrite, "
            "--reward, --server and the loop's settings"
            + (f" (--{loop[0].replace('_', '-')})" if loop else ""),
            param="answer",
        )
    run = ImproveRun.open(args.name)
    engine = load_engine(run.meta["base"])
    source = args.answer_from or "base"
    picks = run.best_answers(engine, args.answer, n=args.best_of, source=source, seed=args.seed)
    result = {"name": run.name, "from": source, "picks": [asdict(p) for p in picks]}
    jobs.set_result(result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for p in picks:
            print(p.answer.strip())
            print(
                f"  (the reward's pick of {len(p.candidates)}: score {p.score:+.3f}, form {p.form or 'none'})"
            )
    return 0


def _say(text: str) -> None:
    print(text, file=sys.stderr)
    jobs.log(text.strip())
