"""``helixloom train reward|reward-head``: trained rewards.

Thin: the recipes are ``helixloom.training.reward_model`` and ``helixloom.training.reward_head``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from helixloom import atomic, jobs
from helixloom.cli.common import add_config_flags, given_config
from helixloom.errors import HelixloomError

_ALIASES = {"learning_rate": ["--lr"]}
SETTINGS_FILE = "settings.json"  # in the run folder: what --resume reloads
RESUME_HELP = (
    "continue the run NAME: its data, base model and training flags are the ones it saved when it "
    "started; a flag given again must agree with them"
)


def register(tsub: argparse._SubParsersAction) -> None:
    """Add ``reward`` and ``reward-head`` to the ``train`` command's subparsers."""
    from helixloom.training.configs import RewardHeadConfig
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
        epilog="Checkpoints go to $HELIXLOOM_HOME/runs/reward-NAME every --save-steps, with the run's "
        "settings; a killed run continues from its last checkpoint with `helixloom train reward --name "
        "NAME --resume`. --eval-split 0.1 holds out a tenth of the pairs and prints how many of them the "
        "trained model ranks right.",
    )
    rm.add_argument("--data", metavar="FILE.jsonl", help="preference pairs (required unless --resume)")
    rm.add_argument("--name", required=True, help="name of the reward model (rm:NAME)")
    rm.add_argument("--base", metavar="SPEC", help="the model to start from (default: default)")
    rm.add_argument(
        "--resume", action="store_true", help=RESUME_HELP + "; training goes on from the last checkpoint"
    )
    rm.add_argument("--replace", action="store_true", help="train again over an existing reward NAME")
    add_config_flags(rm, RewardModelConfig, "training", _ALIASES)
    rm.set_defaults(run=cmd_train_reward, job="train")

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
        "many before it steered usefully. The run's settings and embeddings are kept in "
        "$HELIXLOOM_HOME/runs/reward-head-NAME: `helixloom train reward-head --name NAME --resume` trains "
        "again with them, embedding only what an interrupted run had not.",
    )
    source = head.add_mutually_exclusive_group()
    source.add_argument(
        "--data", metavar="FILE.jsonl", help="labelled rows {prompt, response, label} (or --from-store)"
    )
    source.add_argument("--from-store", action="store_true", help="use the ratings recorded in the store")
    head.add_argument("--name", required=True, help="name of the reward head (head:NAME)")
    head.add_argument(
        "--base", metavar="SPEC", help="the model whose hidden states it reads (default: default)"
    )
    head.add_argument(
        "--adapter", metavar="NAME_OR_PATH", help="read the hidden states with this LoRA adapter applied"
    )
    head.add_argument("--resume", action="store_true", help=RESUME_HELP + "; embeddings it made are reused")
    head.add_argument("--replace", action="store_true", help="train again over an existing reward NAME")
    add_config_flags(head, RewardHeadConfig, "training", _ALIASES)
    head.set_defaults(run=cmd_train_reward_head, job="train")


def _run_settings(
    args: argparse.Namespace,
    run_dir: Path,
    command: str,
    config_cls: Any,
    sources: dict[str, Any],
    defaults: dict[str, Any],
) -> tuple[Any, dict[str, Any]]:
    """The run's config and sources (data, base model, ...) as (config, sources).

    ``sources`` are the source flags as given (None: not given), normalised so that equal settings
    compare equal. Without --resume: the flags over ``defaults``. With --resume: the settings the run
    saved when it started (``_save_settings``); a flag given again that disagrees with them is an
    error naming it. A run that saved none resumes with the flags as given.
    """
    flags = given_config(args, config_cls)
    given = {k: v for k, v in sources.items() if v is not None}
    saved = _read_settings(run_dir, command) if args.resume else None
    if saved is None:
        return config_cls(**flags), {**defaults, **given}
    run = run_dir.name
    for key, value in given.items():
        if saved["sources"].get(key) != value:
            raise _conflict("--" + key.replace("_", "-"), value, saved["sources"].get(key), run)
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in saved["config"].items()}
    unknown = sorted(set(config) - {f.name for f in fields(config_cls)})
    if unknown:
        raise HelixloomError(f"{run_dir / SETTINGS_FILE} has unknown settings: {', '.join(unknown)}")
    for key, value in flags.items():
        if config.get(key) != value:
            raise _conflict("--" + key.replace("_", "-"), value, config.get(key), run)
    return config_cls(**config), saved["sources"]


def _conflict(flag: str, given: Any, saved: Any, run: str) -> HelixloomError:
    def shown(value: Any) -> str:
        if value is None:
            return f"no {flag}"
        if value is True:
            return flag
        return f"{flag} {' '.join(map(str, value)) if isinstance(value, tuple | list) else value}"

    return HelixloomError(
        f"{shown(given)} disagrees with the settings run {run} started with ({shown(saved)})",
        "leave the flag out to resume with the saved settings, or start a new run without --resume",
        param=flag.removeprefix("--").replace("-", "_"),
    )


def _read_settings(run_dir: Path, command: str) -> dict[str, Any] | None:
    """The settings a run of ``command`` saved in ``run_dir``; None when it saved none."""
    file = run_dir / SETTINGS_FILE
    if not file.is_file():
        return None
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise HelixloomError(f"{file} is not JSON: {exc.msg}") from exc
    if not isinstance(saved, dict) or not {"sources", "config"} <= saved.keys():
        raise HelixloomError(f"{file} is not a run's settings (no sources and config)")
    if saved.get("command") != command:
        raise HelixloomError(
            f"{run_dir} holds a run of `helixloom train {saved.get('command')}`, not {command}"
        )
    return saved


def _save_settings(run_dir: Path, command: str, config: Any, sources: dict[str, Any]) -> None:
    """Keep the run's settings in its folder, so that --resume needs only --name."""
    settings = {
        "command": command,
        "sources": sources,
        "config": {f.name: getattr(config, f.name) for f in fields(config)},
    }
    atomic.write_text(run_dir / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")


def _data_path(data: str | None) -> str | None:
    return str(Path(data).expanduser().resolve()) if data else None


def _base_spec(base: str | None) -> str | None:
    from helixloom.training.reward_model import portable_spec

    return portable_spec(base) if base else None


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
    from helixloom.training.preferences import preference_pairs, read_pairs
    from helixloom.training.reward_model import RewardModelConfig, train_reward_model

    folder = _target(args.name, args.replace, args.resume)
    run_dir = paths.runs_dir() / f"reward-{args.name}"
    config, sources = _run_settings(
        args,
        run_dir,
        "reward",
        RewardModelConfig,
        {"data": _data_path(args.data), "base": _base_spec(args.base)},
        {"data": None, "base": _base_spec("default")},
    )
    if sources["data"] is None:
        if args.resume:
            raise HelixloomError(
                f"run reward-{args.name} saved no settings to resume from",
                "pass --data and the run's other flags again, or start it without --resume",
            )
        raise HelixloomError("--data is required", "pass --data FILE.jsonl with the preference pairs")
    data, base = Path(sources["data"]), sources["base"]
    rows = read_pairs(data)
    preference_pairs(rows, source=str(data))  # bad rows fail here, before the model loads
    models.resolve(base)
    paths.ensure_home()
    if args.resume and not any(run_dir.glob("checkpoint-*")):
        _say(f"no checkpoint in {run_dir}: starting from the beginning")
    _save_settings(run_dir, "reward", config, sources)
    result = train_reward_model(base, rows, folder, run_dir, config, resume=args.resume)
    jobs.set_result(result)
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
    from helixloom.cli.common import open_store
    from helixloom.engine import load_engine
    from helixloom.training.feedback import read_examples, store_examples
    from helixloom.training.reward_head import (
        MIN_EXAMPLES,
        RewardHeadConfig,
        check_examples,
        train_reward_head,
    )

    folder = _target(args.name, args.replace, args.resume)
    run_dir = paths.runs_dir() / f"reward-head-{args.name}"
    adapter_given = args.adapter
    if adapter_given and Path(adapter_given).expanduser().exists():
        adapter_given = str(Path(adapter_given).expanduser().resolve())
    config, sources = _run_settings(
        args,
        run_dir,
        "reward-head",
        RewardHeadConfig,
        {
            "data": _data_path(args.data),
            "from_store": True if args.from_store else None,
            "base": _base_spec(args.base),
            "adapter": adapter_given,
        },
        {"data": None, "from_store": None, "base": _base_spec("default"), "adapter": None},
    )
    if sources["data"] is None and not sources["from_store"]:
        if args.resume:
            raise HelixloomError(
                f"run reward-head-{args.name} saved no settings to resume from",
                "pass --data or --from-store and the run's other flags again, or start it without --resume",
            )
        raise HelixloomError("--data FILE.jsonl or --from-store is required", "say where the ratings are")
    base, adapter_spec = sources["base"], sources["adapter"]
    adapter_folder: tuple[str, Path] | None = None
    if sources["from_store"] or adapter_spec:
        with open_store() as store:
            examples = store_examples(store) if sources["from_store"] else []
            if adapter_spec:
                adapter_folder = adapters.resolve(store, adapter_spec, model=base)
        if sources["from_store"]:
            _say(f"{len(examples)} rated examples in the store")
            if len(examples) < MIN_EXAMPLES:
                raise HelixloomError(
                    f"too few labelled examples in the store: {len(examples)}",
                    "rate loom nodes, answers or sessions thumbs up/down first, or pass --data FILE.jsonl",
                )
    if sources["data"]:
        examples = read_examples(Path(sources["data"]))
    check_examples(examples)
    models.resolve(base)
    paths.ensure_home()
    _save_settings(run_dir, "reward-head", config, sources)
    engine = load_engine(base)
    adapter = None
    if adapter_folder is not None:
        adapter = engine.load_adapter(adapter_folder[0], str(adapter_folder[1])).name
    result = train_reward_head(engine, examples, folder, config, adapter=adapter, run_dir=run_dir)
    jobs.set_result(result)
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
    print(f"use it as the reward head:{args.name} with --base {base}")
    return 0
