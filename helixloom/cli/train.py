"""``helixloom train sft|dpo|evaluator|reward|reward-head|helixnet``: fine-tuning recipes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from helixloom.errors import HelixloomError


def register(sub: argparse._SubParsersAction) -> None:
    from helixloom.cli import train_helixnet, train_rewards
    from helixloom.cli.common import add_sft_flags, usage
    from helixloom.training.configs import LoraDPOConfig

    train = sub.add_parser(
        "train",
        help="fine-tune generators, evaluators and reward models",
        description="Training recipes: sft (a generator LoRA on your data), dpo (a LoRA from preference "
        "pairs), evaluator (a yes/no evaluator LoRA from ratings), reward (a reward model from preference "
        "pairs), reward-head (a small head on the base model's hidden states from thumbs up/down), helixnet "
        "(HelixNet's critic and regenerator roles from a teacher or a verifier).",
    )
    tsub = train.add_subparsers(title="recipes", metavar="RECIPE")

    sft = tsub.add_parser(
        "sft",
        help="fine-tune a generator LoRA on your data (JSONL, documents, zips, the store's thumbs-up)",
        description="Fine-tune a LoRA adapter NAME on --data: JSONL rows (chat 'messages', 'prompt' + "
        "'completion' such as `helixloom export sft` writes, or 'text'), documents and folders and .zip "
        "archives (cut into text chunks), and with --from-store the thumbs-up loom branches and chat "
        "answers. When your data is small, --mix CORPUS adds general text so the model keeps its general "
        "skills (--mix-ratio of the result). The adapter is registered as NAME.",
    )
    sft.add_argument("--data", nargs="*", default=[], metavar="PATH", help="files, folders or .zip archives")
    sft.add_argument("--from-store", action="store_true", help="also train on the store's thumbs-up")
    sft.add_argument("--name", required=True, help="the adapter's name")
    sft.add_argument("--base", default="default", metavar="SPEC", help="the model to fine-tune")
    sft.add_argument("--adapter", metavar="NAME_OR_PATH", help="continue training this adapter")
    sft.add_argument("--system", help="system prompt for chat rows (kept with the adapter)")
    sft.add_argument("--mix", nargs="*", default=[], metavar="PATH", help="general text to mix in")
    sft.add_argument("--mix-ratio", type=float, default=0.5, help="share of general rows (default 0.5)")
    sft.add_argument("--chunk-tokens", type=int, default=512, help="tokens per document chunk (default 512)")
    sft.add_argument("--resume", action="store_true", help="continue an interrupted run of NAME")
    add_sft_flags(sft)
    sft.set_defaults(run=cmd_train_sft, job="train")

    dpo = tsub.add_parser(
        "dpo",
        help="train a LoRA with DPO on preference pairs (e.g. `helixloom export preferences`)",
        description="Direct preference optimisation of a LoRA adapter NAME on JSONL rows {prompt, chosen, "
        "rejected}: raw text prompts (the loom's export) or chat 'messages' rendered with the model's "
        "format. The reference model is the base (or --adapter, which training continues).",
    )
    dpo.add_argument("--data", required=True, metavar="FILE", help="JSONL preference pairs")
    dpo.add_argument("--name", required=True, help="the adapter's name")
    dpo.add_argument("--base", default="default", metavar="SPEC", help="the model to fine-tune")
    dpo.add_argument(
        "--adapter", metavar="NAME_OR_PATH", help="continue training this adapter (the reference)"
    )
    dpo.add_argument("--resume", action="store_true", help="continue an interrupted run of NAME")
    add_sft_flags(dpo, LoraDPOConfig, title="training (DPO)")
    dpo.set_defaults(run=cmd_train_dpo, job="train")

    ev = tsub.add_parser(
        "evaluator",
        help="tune a yes/no evaluator LoRA on your ratings",
        description="Fine-tune the yes/no evaluator on rated examples: each becomes the evaluator prompt "
        "(--question about the prompt and response) answered Yes for thumbs up and No for thumbs down. "
        "Examples come from the store's ratings (loom nodes, chat answers) and/or --data JSONL rows "
        "{prompt, response, label}. Held-out accuracy is measured before and after. Use the adapter with "
        "`helixloom weave --evaluator-adapter NAME` or `helixloom iterate --evaluator-adapter NAME`.",
    )
    ev.add_argument("--data", metavar="FILE", help="JSONL rows {prompt, response, label: 1|0}")
    ev.add_argument(
        "--from-store", action="store_true", help="use the store's ratings (default without --data)"
    )
    ev.add_argument("--name", required=True, help="the adapter's name")
    ev.add_argument("--base", default="default", metavar="SPEC", help="the evaluator's base model")
    ev.add_argument(
        "--question",
        default="Is the response a helpful, correct and clear answer to the prompt?",
        help="the yes/no question the ratings answer",
    )
    ev.add_argument(
        "--template", metavar="FILE", help="evaluator prompt with {prompt}, {response}, {question}"
    )
    ev.add_argument("--held-out", type=float, default=0.2, help="share held out to measure (default 0.2)")
    ev.add_argument("--resume", action="store_true", help="continue an interrupted run of NAME")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    add_sft_flags(ev)
    ev.set_defaults(run=cmd_train_evaluator, job="train")

    train_rewards.register(tsub)
    train_helixnet.register(tsub)
    train.set_defaults(run=lambda _: usage(train))


def _paths(name: str) -> tuple[Any, Any]:
    from helixloom import paths

    home = paths.ensure_home()
    return home / "adapters" / name, home / "runs" / "train" / name


def _check_name(store: Any, name: str, resume: bool) -> None:
    from helixloom.paths import check_name

    check_name(name, "adapter name")
    if not resume and any(a.name == name for a in store.list_adapters()):
        raise HelixloomError(
            f"an adapter named {name} is registered", "pick another --name or remove it first"
        )


def _report(result: Any, name: str) -> None:
    from helixloom import jobs

    jobs.set_result(result)
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "-"
    resumed = f", resumed at step {result.resumed_from_step}" if result.resumed_from_step else ""
    print(
        f"trained {name}: {result.steps} steps{resumed}, final loss {loss}, "
        f"{result.tokens / max(result.seconds, 1e-9):.1f} tokens/s, adapter {result.adapter_dir}"
    )


def cmd_train_sft(args: argparse.Namespace) -> int:
    from helixloom import adapters as adapter_registry
    from helixloom.cli.common import open_store, sft_config_from
    from helixloom.training.data import load_sft_data, mix_general, token_counter
    from helixloom.training.sft import train_lora

    store = open_store()
    _check_name(store, args.name, args.resume)
    config = sft_config_from(args)
    init = adapter_registry.resolve(store, args.adapter, model=args.base)[1] if args.adapter else None
    for path in args.data:  # before the tokenizer loads: a first load of the default model takes minutes
        if not Path(path).exists():
            raise HelixloomError(f"{path} does not exist", param="data")
    count = token_counter(args.base)
    data = load_sft_data(
        args.data, count, chunk_tokens=args.chunk_tokens, store=store if args.from_store else None
    )
    print(data.summary(), file=sys.stderr)
    rows = data.rows
    if args.mix:
        rows, added = mix_general(rows, args.mix, args.mix_ratio, count, chunk_tokens=args.chunk_tokens)
        print(f"mixed in {added} rows of general text ({len(rows)} in all)", file=sys.stderr)
    adapter_dir, run_dir = _paths(args.name)
    result = train_lora(
        args.base,
        rows,
        adapter_dir,
        run_dir,
        config,
        system_prompt=args.system,
        init_adapter=init,
        resume=args.resume,
    )
    adapter_registry.register(store, args.name, adapter_dir, replace=True)
    _report(result, args.name)
    return 0


def cmd_train_dpo(args: argparse.Namespace) -> int:
    from helixloom import adapters as adapter_registry
    from helixloom import jsonl
    from helixloom.cli.common import open_store, sft_config_from
    from helixloom.prompting import render_with
    from helixloom.training.dpo import LoraDPOConfig, train_dpo

    store = open_store()
    _check_name(store, args.name, args.resume)
    config = sft_config_from(args, LoraDPOConfig)
    init = adapter_registry.resolve(store, args.adapter, model=args.base)[1] if args.adapter else None
    from pathlib import Path

    path = Path(args.data)
    if not path.is_file():
        raise HelixloomError(f"data file {path} does not exist", param="data")
    fmt = _chat_format(args.base)
    rows = []
    for n, row in jsonl.read(path):
        if not isinstance(row, dict):
            raise HelixloomError(f"{path} line {n} is not a JSON object")
        prompt = row.get("prompt")
        if isinstance(row.get("messages"), list):
            prompt = render_with(fmt, row["messages"]).prompt
        if not isinstance(prompt, str) or not all(
            isinstance(row.get(k), str) for k in ("chosen", "rejected")
        ):
            raise HelixloomError(
                f"{path} line {n}: expected prompt (or messages), chosen and rejected strings"
            )
        rows.append({"prompt": prompt, "chosen": row["chosen"], "rejected": row["rejected"]})
    print(f"{len(rows)} preference pairs from {path}", file=sys.stderr)
    adapter_dir, run_dir = _paths(args.name)
    result = train_dpo(args.base, rows, adapter_dir, run_dir, config, init_adapter=init, resume=args.resume)
    adapter_registry.register(store, args.name, adapter_dir, replace=True)
    _report(result, args.name)
    return 0


def _chat_format(base: str) -> Any:
    from transformers import AutoTokenizer

    from helixloom import models
    from helixloom.training.chat_template import chat_format

    tokenizer = AutoTokenizer.from_pretrained(str(models.materialize(models.resolve(base))))
    return chat_format(tokenizer)


def cmd_train_evaluator(args: argparse.Namespace) -> int:
    from pathlib import Path

    from helixloom import adapters as adapter_registry
    from helixloom.cli.common import open_store, sft_config_from
    from helixloom.training.evaluator_tune import train_evaluator
    from helixloom.training.feedback import read_examples, store_examples

    store = open_store()
    _check_name(store, args.name, args.resume)
    found = []
    if args.data:
        found += read_examples(Path(args.data))
    if args.from_store or not args.data:
        found += store_examples(store)
    examples = found
    template = None
    if args.template:
        t = Path(args.template)
        if not t.is_file():
            raise HelixloomError(f"template file {t} does not exist", param="template")
        template = t.read_text()
    print(
        f"{len(examples)} rated examples ({sum(e.label for e in examples)} up, "
        f"{sum(1 - e.label for e in examples)} down)",
        file=sys.stderr,
    )
    adapter_dir, run_dir = _paths(args.name)
    result = train_evaluator(
        args.base,
        examples,
        adapter_dir,
        run_dir,
        sft_config_from(args),
        question=args.question,
        template=template,
        held_out=args.held_out,
        resume=args.resume,
    )
    adapter_registry.register(store, args.name, adapter_dir, replace=True)
    if args.json:
        print(
            json.dumps(
                {
                    "adapter": str(adapter_dir),
                    "examples": result.examples,
                    "held_out": result.held_out,
                    "accuracy_before": result.accuracy_before,
                    "accuracy_after": result.accuracy_after,
                    "steps": result.train.steps,
                    "final_loss": result.train.final_loss,
                }
            )
        )
    else:
        _report(result.train, args.name)
        if result.held_out:
            print(
                f"held-out accuracy ({result.held_out} examples): {result.accuracy_before:.1%} before, "
                f"{result.accuracy_after:.1%} after"
            )
    return 0
