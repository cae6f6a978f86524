"""``helixloom train reward|reward-head``: trained rewards.

Thin: the recipes are ``helixloom.training.reward_model`` and ``helixloom.training.reward_head``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from helixloom.errors import HelixloomError

_ALIASES = {"learning_rate": ["--lr"]}


def register(tsub: argparse._SubParsersAction) -> None:
    """Add ``reward`` and ``reward-head`` to the ``train`` command's subparsers."""
    from helixloom.training.reward_head import RewardHeadConfig
    from helixloom.training.reward_model import RewardModelConfig

    rm = tsub.add_parser(
        "reward",
        help="a reward model from preference pairs (TRL RewardTrainer + LoRA)",
        description="Train a reward model on preference pairs: the base model with a LoRA and a linear "
        "score head, trained with TRL's RewardTrainer (Bradley-Terry loss: the chosen response must score "
        "above the rejected one). DATA is JSONL, one {prompt, chosen, rejected} per line (prompt optional; "
        "strings are read as prompt + response, lists of chat messages through the model's chat template), "
        "as `helixloom export preferences` writes from the loom. The model is saved under "
        "$HELIXLOOM_HOME/rewards/NAME; use it anywhere a reward is asked for as rm:NAME.",
        epilog="Checkpoints go to $HELIXLOOM_HOME/runs/reward-NAME every --save-steps; a killed run "
        "continues with the same command plus --resume. --eval-split 0.1 holds out a tenth of the pairs "
        "and prints how many of them the trained model ranks right.",
    )
    rm.add_argument("--data", required=True, metavar="FILE.jsonl", help="preference pairs")
    rm.add_argument("--name", required=True, help="name of the reward model (rm:NAME)")
    rm.add_argument(
        "--base", default="default", metavar="SPEC", help="the model to start from (default: default)"
    )
    rm.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its last checkpoint"
    )
    rm.add_argument("--replace", action="store_true", help="train again over an existing reward NAME")
    _add_config_flags(rm, RewardModelConfig, "training")
    rm.set_defaults(run=cmd_train_reward)

    head = tsub.add_parser(
        "reward-head",
        help="a small MLP reward head on the base model's hidden states, from thumbs up/down",
        description="Train MiniHF's reward head: an MLP (Linear, GELU, Linear) on the base model's "
        "mean-pooled last hidden state of prompt + response, predicting thumbs up. The base model stays "
        "frozen; embeddings are computed once (cached per run), so the head trains in seconds. Data: "
        "--data FILE.jsonl with one {prompt, response, label} per line (label 1 thumbs up, 0 thumbs down), "
        "or --from-store: the thumbs up/down given in the loom (the branch up to a rated node) and on "
        "sessions and answers (the last question and its answer). Saved under $HELIXLOOM_HOME/rewards/NAME; "
        "use it as head:NAME with the same base model.",
        epilog="A validation split (--val-split) stops training when the validation loss stops improving "
        "and gives the accuracy printed at the end. Few ratings make a weak head: MiniHF found it needed "
        "many before it steered usefully.",
    )
    source = head.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="FILE.jsonl", help="labelled rows {prompt, response, label}")
    source.add_argument("--from-store", action="store_true", help="use the ratings recorded in the store")
    head.add_argument("--name", required=True, help="name of the reward head (head:NAME)")
    head.add_argument(
        "--base",
        default="default",
        metavar="SPEC",
        help="the model whose hidden states it reads (default: default)",
    )
    head.add_argument(
        "--adapter", metavar="NAME_OR_PATH", help="read the hidden states with this LoRA adapter applied"
    )
    head.add_argument("--replace", action="store_true", help="train again over an existing reward NAME")
    _add_config_flags(head, RewardHeadConfig, "training")
    head.set_defaults(run=cmd_train_reward_head)


def _add_config_flags(p: argparse.ArgumentParser, config_cls: Any, title: str) -> None:
    """One flag per field of a config dataclass (its single source of truth), defaults in the help."""
    group = p.add_argument_group(title)
    helps = config_cls.help()
    for f in fields(config_cls):
        flags = ["--" + f.name.replace("_", "-"), *_ALIASES.get(f.name, [])]
        default = f.default if f.default is not MISSING else None
        if isinstance(default, tuple):
            group.add_argument(
                *flags,
                dest=f.name,
                nargs="+",
                default=None,
                help=f"{helps[f.name]} (default: {' '.join(default)})",
            )
        else:
            group.add_argument(
                *flags,
                dest=f.name,
                type=type(default),
                default=None,
                help=f"{helps[f.name]} (default {default})",
            )


def _config_from(args: argparse.Namespace, config_cls: Any) -> Any:
    given = {
        f.name: getattr(args, f.name) for f in fields(config_cls) if getattr(args, f.name, None) is not None
    }
    for f in fields(config_cls):
        if f.name in given and isinstance(f.default, tuple):
            given[f.name] = tuple(given[f.name])
    return config_cls(**given)


def _say(text: str) -> None:
    print(f"helixloom: {text}", file=sys.stderr)


def _target(name: str, replace: bool, resume: bool = False) -> Path:
    from helixloom.training.reward_model import reward_dir

    folder = reward_dir(name)
    if folder.exists() and not (replace or resume):
        raise HelixloomError(f"a reward named {name} exists ({folder})", "pass --replace to train it again")
    return folder


def cmd_train_reward(args: argparse.Namespace) -> int:
    from helixloom import models, paths
    from helixloom.training.reward_model import (
        RewardModelConfig,
        preference_pairs,
        read_pairs,
        train_reward_model,
    )

    config = _config_from(args, RewardModelConfig)
    folder = _target(args.name, args.replace, args.resume)
    data = Path(args.data)
    rows = read_pairs(data)
    preference_pairs(rows, source=str(data))  # bad rows fail here, before the model loads
    models.resolve(args.base)
    paths.ensure_home()
    run_dir = paths.runs_dir() / f"reward-{args.name}"
    if args.resume and not any(run_dir.glob("checkpoint-*")):
        _say(f"no checkpoint in {run_dir}: starting from the beginning")
    result = train_reward_model(args.base, rows, folder, run_dir, config, resume=args.resume)
    resumed = f", resumed at step {result.resumed_from_step}" if result.resumed_from_step else ""
    loss = f", final loss {result.final_loss:.3f}" if result.final_loss is not None else ""
    print(
        f"trained reward model {args.name}: {result.train_pairs} pairs, {result.steps} steps{resumed}{loss}, "
        f"{result.seconds:.0f} s -> {result.folder}"
    )
    if result.eval_accuracy is not None:
        print(f"held-out accuracy: {result.eval_accuracy:.3f} ({result.eval_pairs} pairs ranked)")
    print(f"use it as the reward rm:{args.name}")
    return 0


def cmd_train_reward_head(args: argparse.Namespace) -> int:
    from helixloom import adapters, models, paths
    from helixloom.cli import _store
    from helixloom.engine import load_engine
    from helixloom.training.feedback import read_examples, store_examples
    from helixloom.training.reward_head import (
        MIN_EXAMPLES,
        RewardHeadConfig,
        check_examples,
        train_reward_head,
    )

    config = _config_from(args, RewardHeadConfig)
    folder = _target(args.name, args.replace)
    adapter_folder: tuple[str, Path] | None = None
    if args.from_store or args.adapter:
        with _store() as store:
            examples = store_examples(store) if args.from_store else []
            if args.adapter:
                adapter_folder = adapters.resolve(store, args.adapter, model=args.base)
        if args.from_store:
            _say(f"{len(examples)} rated examples in the store")
            if len(examples) < MIN_EXAMPLES:
                raise HelixloomError(
                    f"too few labelled examples in the store: {len(examples)}",
                    "rate loom nodes, answers or sessions thumbs up/down first, or pass --data FILE.jsonl",
                )
    if args.data:
        examples = read_examples(Path(args.data))
    check_examples(examples)
    models.resolve(args.base)
    paths.ensure_home()
    engine = load_engine(args.base)
    adapter = None
    if adapter_folder is not None:
        adapter = engine.load_adapter(adapter_folder[0], str(adapter_folder[1])).name
    run_dir = paths.runs_dir() / f"reward-head-{args.name}"
    result = train_reward_head(engine, examples, folder, config, adapter=adapter, run_dir=run_dir)
    ups = sum(e.label for e in examples)
    cached = f", {result.cached_embeddings} cached" if result.cached_embeddings else ""
    print(
        f"trained reward head {args.name}: {len(examples)} examples ({ups} up, {len(examples) - ups} down), "
        f"{result.epochs} epochs, embedding {result.embed_seconds:.1f} s{cached}, training "
        f"{result.train_seconds:.1f} s -> {result.folder}"
    )
    if result.val_accuracy is not None:
        print(f"validation accuracy: {result.val_accuracy:.3f} ({result.val_examples} examples held out)")
    else:
        print("no validation examples (too few to hold some out): accuracy unknown")
    print(f"use it as the reward head:{args.name} with --base {args.base}")
    return 0
