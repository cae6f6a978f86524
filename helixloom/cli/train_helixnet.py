"""``helixloom train helixnet``: train HelixNet's critic and regenerator roles.

Thin: the recipe is ``helixloom.training.helixnet_train``, the teachers are in
``helixloom.training.helixnet_teachers``, the built-in instruction prompts in
``helixloom.evals.instructions``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING

from helixloom.errors import HelixloomError

if TYPE_CHECKING:
    from helixloom.evals.instructions import InstructionPrompt
    from helixloom.prompting import Stage
    from helixloom.training.configs import LoraSFTConfig


def register(tsub: argparse._SubParsersAction) -> None:
    """Add ``helixnet`` to the ``train`` command's subparsers."""
    from helixloom.cli.common import add_config_flags, add_sft_flags
    from helixloom.training.configs import REGENERATOR_EPOCHS, HelixRoleSFTConfig, HelixTrainConfig

    p = tsub.add_parser(
        "helixnet",
        help="train HelixNet's critic and regenerator roles (LoRA each) from a teacher or a verifier",
        description="HelixNet's phases 2 and 3: the actor (--base with --actor-adapter) answers each prompt, "
        "the teacher critiques the answer and regenerates it, and a critic LoRA and a regenerator LoRA are "
        "fine-tuned on those, in HelixNet's exact prompt formats. --teacher is a model spec (a bigger local "
        "model, openai:URL#MODEL) or 'verifier': for instruction prompts whose answers code can check, the "
        "critique lists the failed checks and the regeneration of a failed answer is the passing one of "
        "--samples actor answers nearest it, else the answer repaired in code (--no-repair: none). The "
        "regenerator learns mostly from failed answers, with at most --keep-share kept as they are. The "
        "adapters are registered as NAME-critic and NAME-regenerator, the set as NAME: `helixloom serve "
        "--helixnet NAME`, or "
        "`helixloom chat --critic-adapter NAME-critic --regenerator-adapter NAME-regenerator`.",
    )
    p.add_argument(
        "--prompts",
        metavar="FILE",
        help="JSONL instruction prompts {id, prompt, checks: [{kind, arg}]} (any JSONL or text prompts "
        "for an LLM teacher); default: the built-in verifiable instructions' train split",
    )
    p.add_argument(
        "--teacher", default="verifier", metavar="SPEC", help="'verifier' (default) or a model spec"
    )
    p.add_argument("--name", required=True, help="the HelixNet set's name")
    p.add_argument("--base", default="default", metavar="SPEC", help="the model the roles are trained on")
    p.add_argument("--actor-adapter", metavar="NAME_OR_PATH", help="the actor's adapter (default: the base)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of NAME")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_config_flags(p, HelixTrainConfig, "role data")
    add_sft_flags(p, HelixRoleSFTConfig)
    p.add_argument(
        "--regenerator-epochs",
        type=float,
        metavar="N",
        help=f"the regenerator's passes over its data (default {REGENERATOR_EPOCHS:g}); it learns to "
        "rewrite, which takes longer than the critic's verdicts",
    )
    p.set_defaults(run=cmd_train_helixnet, job="train")


def load_prompts(path: str | None) -> list[InstructionPrompt]:
    """Instruction prompts from ``path`` (built-in train split when None): rows with checks become
    checked prompts; plain prompts (text lines, JSONL ``prompt``) get no checks (LLM teachers only)."""
    from pathlib import Path

    from helixloom import jsonl
    from helixloom.evals import instructions

    if path is None:
        return instructions.load(split="train")
    file = Path(path)
    if not file.is_file():
        raise HelixloomError(f"prompts file {file} does not exist", param="prompts")
    if file.suffix.lower() == ".jsonl" and any(
        isinstance(r, dict) and "checks" in r for _, r in jsonl.read(file)
    ):
        return [p for p in instructions.load(file) if p.split != "heldout"]
    texts = jsonl.read_prompts(file)
    return [instructions.InstructionPrompt(f"p-{i:05d}", t, ()) for i, t in enumerate(texts)]


def cmd_train_helixnet(args: argparse.Namespace) -> int:
    from helixloom import adapters, jobs
    from helixloom.cli.common import given_config, open_store, sft_config_from
    from helixloom.engine import load_engine
    from helixloom.training.configs import REGENERATOR_EPOCHS, HelixRoleSFTConfig, HelixTrainConfig
    from helixloom.training.helixnet_teachers import VERIFIER, EngineTeacher, Teacher, VerifierTeacher
    from helixloom.training.helixnet_train import Actor, train_helixnet

    store = open_store()
    config = HelixTrainConfig(**given_config(args, HelixTrainConfig))
    sft = sft_config_from(args, HelixRoleSFTConfig)
    if args.regenerator_epochs is not None and args.regenerator_epochs <= 0:
        raise HelixloomError("--regenerator-epochs must be positive", param="regenerator_epochs")
    regenerator_epochs = REGENERATOR_EPOCHS if args.regenerator_epochs is None else args.regenerator_epochs
    role_sft: dict[Stage, LoraSFTConfig] = {
        "regenerator": dataclasses.replace(sft, epochs=regenerator_epochs)
    }
    prompts = load_prompts(args.prompts)
    if args.teacher == VERIFIER and not all(p.checks for p in prompts):
        raise HelixloomError(
            "the verifier needs prompts with checks",
            "give a JSONL of instruction prompts, or an LLM --teacher",
        )
    engine = load_engine(args.base)
    actor_adapter = None
    if args.actor_adapter:
        actor_adapter, folder = adapters.resolve(store, args.actor_adapter, model=args.base)
        engine.load_adapter(actor_adapter, str(folder))
    teacher: Teacher
    if args.teacher == VERIFIER:
        teacher = VerifierTeacher(repair=config.repair)
    else:
        teacher_engine = engine if args.teacher == args.base else load_engine(args.teacher)
        teacher = EngineTeacher(teacher_engine, name=args.teacher, max_tokens=config.teacher_max_tokens)
    result = train_helixnet(
        args.name,
        prompts,
        Actor(engine, actor_adapter),
        teacher,
        store,
        base=args.base,
        config=config,
        sft=sft,
        resume=args.resume,
        role_sft=role_sft,
        say=lambda line: print(line, file=sys.stderr),
    )
    jobs.set_result(result.as_dict())
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(
            f"trained HelixNet set {result.name}: critic {result.adapters['critic']} "
            f"({result.examples['critic']} examples), regenerator {result.adapters['regenerator']} "
            f"({result.examples['regenerator']} examples); use it with `helixloom serve --helixnet "
            f"{result.name}`"
        )
    return 0
