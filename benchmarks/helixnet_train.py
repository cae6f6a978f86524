"""HelixNet with trained roles on the embedded default model: does it follow instructions better?

Trains a critic and a regenerator with the verifier teacher (``helixloom train helixnet``'s recipe) on
the built-in verifiable instructions' train split, then answers held-out prompts (never trained on)
in the same run: the actor alone, the actor alone with the regenerator's token budget (the
token-equal baseline: how much of a gain is only a longer budget), HelixNet with untrained roles
(the base model in every role), HelixNet with the trained roles, and the trained roles behind the
evaluator gate. Prints one JSON object: strict accuracy of each (share of answers passing every
check, with its standard error), mean answer length in words, the gate's keep/replace counts,
examples per role used for training, where the regenerator's targets came from (a passing sample,
the repaired response, none) and its fix/keep mix, and wall time per phase.

    python benchmarks/helixnet_train.py [--train 240] [--heldout 98] [--samples 1] [--max-tokens 32]
                                        [--critic-tokens 48] [--regen-tokens 64] [--lr 4e-4]
                                        [--epochs 2] [--regen-epochs 3] [--rank 16]
                                        [--eval-on heldout|validation] [--work DIR [--resume]]

**Where a recipe is chosen.** ``--eval-on validation`` answers the train split's prompts from
``VALIDATION_FROM`` (240) on: 62 prompts never trained on (training uses the first ``--train``,
at most 240 then). Recipe changes are chosen there; the held-out prompts are answered once, by the
final run of the chosen recipe. A variant reuses a finished run's lessons and critic with
``--work COPY --resume``: the role whose rows or settings changed is trained afresh, the other kept.

The defaults are the recipe the README quotes. One sample per prompt: the verifier's code repair
gives every failed response a target close to it, so more samples would mostly add teaching time
(one against four was not measured on the same budget).

Answers are greedy (temperature 0) so the actor's answer is the same in every arm; the pipeline
runs through ``HelixNet.answer`` with concurrent questions batched by ``BatchingEngine``.

The gated arm is the trained arm's turns put through the gate: the pipeline makes exactly this call
(``gate(question, actor answer, regeneration)`` after a non-empty regeneration) and, being greedy,
would regenerate the same texts, so running the pipeline a third time would only cost CPU. The
headline gate is the zero-shot evaluator (it does not see the checks). ``verifier_gate`` is reported
apart: it keeps the regeneration when it passes more checks than the actor's answer, so it uses the
checks at inference and is only for users whose tasks are checkable.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _home import bench_home

VALIDATION_FROM = 240  # train prompts from here on are never trained on: the validation split
ADAPTER_FILE = "adapter_model.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=240, help="training prompts (default 240)")
    parser.add_argument("--heldout", type=int, default=98, help="prompts to answer (default 98: all)")
    parser.add_argument("--samples", type=int, default=1, help="actor samples per training prompt")
    parser.add_argument("--max-tokens", type=int, default=32, help="longest actor answer (taught, held out)")
    parser.add_argument("--critic-tokens", type=int, default=48, help="longest critique (0: --max-tokens)")
    parser.add_argument("--regen-tokens", type=int, default=64, help="longest regeneration (0: --max-tokens)")
    parser.add_argument("--lr", type=float, default=4e-4, help="LoRA learning rate")
    parser.add_argument("--critic-pass-share", type=float, default=0.3, help="least passing critic rows")
    parser.add_argument("--gen-batch", type=int, default=16, help="prompts per teaching batch")
    parser.add_argument("--epochs", type=float, default=2.0, help="training epochs per role (default 2)")
    parser.add_argument("--keep-share", type=float, default=0.25, help="most regenerator rows kept as is")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --work")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank")
    parser.add_argument("--regen-epochs", type=float, default=3.0, help="regenerator epochs (0: --epochs)")
    parser.add_argument("--regen-lr", type=float, default=0.0, help="regenerator lr (0: --lr)")
    parser.add_argument("--regen-rank", type=int, default=0, help="the regenerator's LoRA rank (0: --rank)")
    parser.add_argument("--work", type=Path, default=None, help="HELIXLOOM_HOME to use (default: a temp one)")
    parser.add_argument(
        "--eval-on",
        choices=("heldout", "validation"),
        default="heldout",
        help="answer the held-out prompts, or the validation prompts (train prompts from "
        f"{VALIDATION_FROM} on, never trained on) where recipe changes are chosen",
    )
    args = parser.parse_args()
    if args.eval_on == "validation" and args.train > VALIDATION_FROM:
        parser.error(f"--eval-on validation needs --train of at most {VALIDATION_FROM}")

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    work = bench_home(args.work, "helixloom-bench-helixnet-")

    from helixloom.engine import SamplingParams, load_engine
    from helixloom.engine.batching import BatchingEngine
    from helixloom.evals import instructions
    from helixloom.helixnet import HelixNet, Role
    from helixloom.store import Store
    from helixloom.training.configs import HelixTrainConfig, LoraSFTConfig
    from helixloom.training.helixnet_teachers import VerifierTeacher
    from helixloom.training.helixnet_train import Actor, train_helixnet

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    engine = load_engine("default")
    seconds["load"] = time.perf_counter() - t0
    train = instructions.load(split="train")[: args.train]
    if args.eval_on == "validation":  # the train split's tail: never trained on, never the headline
        heldout = instructions.load(split="train")[VALIDATION_FROM:][: args.heldout]
    else:
        heldout = instructions.load(split="heldout")[: args.heldout]

    sft = LoraSFTConfig(
        rank=args.rank,
        alpha=2.0 * args.rank,
        learning_rate=args.lr,
        epochs=args.epochs,
        batch_size=8,
        max_length=512,
        save_steps=10,
    )
    regen_rank = args.regen_rank or args.rank
    regen_sft = dataclasses.replace(
        sft,
        rank=regen_rank,
        alpha=2.0 * regen_rank,
        learning_rate=args.regen_lr or args.lr,
        epochs=args.regen_epochs or args.epochs,
    )
    t0 = time.perf_counter()
    with Store(work / "helixloom.db") as store:
        result = train_helixnet(
            "bench",
            train,
            Actor(engine),
            VerifierTeacher(),
            store,
            base="default",
            config=HelixTrainConfig(
                samples=args.samples,
                max_tokens=args.max_tokens,
                gen_batch=args.gen_batch,
                keep_share=args.keep_share,
                critic_pass_share=args.critic_pass_share,
            ),
            sft=sft,
            role_sft={"regenerator": regen_sft},
            say=lambda line: print(line, file=sys.stderr),
            resume=args.resume,
        )
        folders = {r.name: str(r.path) for r in store.list_adapters()}
    seconds["train_total"] = time.perf_counter() - t0
    seconds.update({f"recipe_{k}": v for k, v in result.seconds.items()})
    for adapter in result.adapters.values():
        engine.load_adapter(adapter, folders[adapter])

    batching = BatchingEngine(engine, max_batch=8)
    greedy = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, token_healing=True)
    # Each stage's budget: a fix can take more tokens than the answer it fixes (an answer in capitals
    # is about twice the tokens of the same words in lowercase), and the untrained arm gets the same.
    critic_params = greedy.model_copy(update={"max_tokens": args.critic_tokens or args.max_tokens})
    regen_params = greedy.model_copy(update={"max_tokens": args.regen_tokens or args.max_tokens})

    def cache(arm: str, *roles: str | None) -> Path:
        """Where an arm's turns are kept in --work: named for the split, the budgets and the bytes of
        its adapters, so a resumed run with a retrained role answers again."""
        key = hashlib.sha256(repr((args.eval_on, args.max_tokens, critic_params.max_tokens,
                                   regen_params.max_tokens)).encode())  # fmt: skip
        for role in roles:
            key.update(b"base" if role is None else (Path(folders[role]) / ADAPTER_FILE).read_bytes())
        return work / f"arm-{args.eval_on}-{arm}-{key.hexdigest()[:12]}.json"

    def run(arm: str, critic: str | None, regenerator: str | None) -> list[dict[str, Any]]:
        """The arm's turns as plain texts, kept in --work so a resumed run does not answer again."""
        cached = cache(arm, critic, regenerator)
        if args.resume and cached.is_file():
            turns: list[dict[str, Any]] = json.loads(cached.read_text())
            if len(turns) == len(heldout):
                return turns
        t0 = time.perf_counter()
        net = HelixNet(
            Role(batching, None, greedy),
            Role(batching, critic, critic_params),
            Role(batching, regenerator, regen_params),
        )
        with ThreadPoolExecutor(8) as pool:
            answered = list(pool.map(lambda p: net.answer(p.prompt), heldout))
        turns = [
            {
                "question": t.question,
                "actor": t.actor.text,
                "critique": t.critique,
                "regeneration": t.regeneration,
                "fallback": t.regenerations[0].fallback,
            }
            for t in answered
        ]
        seconds[f"eval_{arm}"] = time.perf_counter() - t0
        cached.write_text(json.dumps(turns))
        return turns

    arms: dict[str, list[str]] = {}
    untrained = run("untrained", None, None)
    arms["actor_alone"] = [t["actor"] for t in untrained]
    arms["helixnet_untrained"] = [t["regeneration"] for t in untrained]
    trained = run("trained", result.adapters["critic"], result.adapters["regenerator"])
    arms["helixnet_trained"] = [t["regeneration"] for t in trained]
    turn_files = {"untrained": cache("untrained", None, None).name}
    turn_files["trained"] = cache("trained", result.adapters["critic"], result.adapters["regenerator"]).name
    (work / f"turns-{args.eval_on}.json").write_text(json.dumps(turn_files))  # helixnet_roles.py reads it
    # The token-equal baseline: the actor alone with the regenerator's budget, so the part of the
    # gain that is only a longer budget shows (the +20 target stays against the actor as above).
    long_cache = cache("actor-regen-budget", None)
    if args.resume and long_cache.is_file():
        arms["actor_at_regen_budget"] = json.loads(long_cache.read_text())
    else:
        t0 = time.perf_counter()
        long_actor = HelixNet(*(Role(batching, None, regen_params) for _ in range(3)))
        with ThreadPoolExecutor(8) as pool:
            outputs = list(pool.map(lambda p: long_actor.act(p.prompt), heldout))
        arms["actor_at_regen_budget"] = [o.text for o in outputs]
        seconds["eval_actor_at_regen_budget"] = time.perf_counter() - t0
        long_cache.write_text(json.dumps(arms["actor_at_regen_budget"]))
    from helixloom.helixnet_gate import evaluator_gate

    t0 = time.perf_counter()
    # The gate asks the base model's zero-shot evaluator which of the two answers is better.
    gate = evaluator_gate(batching)

    def gated(t: dict[str, Any]) -> tuple[str, str | None]:
        if t["fallback"] is not None:  # nothing regenerated: the pipeline asks no gate either
            return t["regeneration"], None
        previous_score, regen_score = gate(t["question"], t["actor"], t["regeneration"])
        if regen_score > previous_score:
            return t["regeneration"], "regeneration"
        return t["actor"], "previous"

    with ThreadPoolExecutor(8) as pool:
        decided = list(pool.map(gated, trained))
    seconds["eval_gate"] = time.perf_counter() - t0
    arms["helixnet_trained_gate"] = [text for text, _ in decided]
    gate_counts = {
        "kept_regeneration": sum(k == "regeneration" for _, k in decided),
        "kept_actor": sum(k == "previous" for _, k in decided),
        "no_regeneration": sum(k is None for _, k in decided),
    }
    # Uses the checks at inference: not the headline, only for tasks a user can check by code.
    verifier_kept = [
        r if len(p.failures(r)) < len(p.failures(a)) else a
        for p, a, r in zip(heldout, arms["actor_alone"], arms["helixnet_trained"], strict=True)
    ]
    batching.close()

    report: dict[str, Any] = {"eval_on": args.eval_on, "eval_prompts": len(heldout)}
    report["train_prompts"] = len(train)
    for arm, answers in arms.items():
        acc = instructions.strict_accuracy(heldout, answers)
        report[arm] = {
            "strict_accuracy": round(acc.value, 4),
            "stderr": round(acc.stderr, 4),
            "passed": acc.passed,
            "mean_words": round(statistics.mean(len(instructions.words(a)) for a in answers), 1),
            "empty": sum(1 for a in answers if not a.strip()),
        }
    report["gate"] = gate_counts
    report["gate_minus_actor_points"] = round(
        100 * (report["helixnet_trained_gate"]["strict_accuracy"] - report["actor_alone"]["strict_accuracy"]),
        1,
    )
    report["trained_minus_actor_points"] = round(
        100 * (report["helixnet_trained"]["strict_accuracy"] - report["actor_alone"]["strict_accuracy"]), 1
    )
    long = report["actor_at_regen_budget"]["strict_accuracy"]
    report["trained_minus_actor_at_regen_budget_points"] = round(
        100 * (report["helixnet_trained"]["strict_accuracy"] - long), 1
    )
    pairs = list(zip(heldout, arms["actor_alone"], arms["helixnet_trained"], strict=True))
    report["trained_vs_actor"] = {  # answers the trained roles fixed and broke
        "fixed": sum(not p.passes(a) and p.passes(r) for p, a, r in pairs),
        "broken": sum(p.passes(a) and not p.passes(r) for p, a, r in pairs),
    }
    verifier_acc = instructions.strict_accuracy(heldout, verifier_kept)
    report["verifier_gate_uses_checks_at_inference"] = {
        "strict_accuracy": round(verifier_acc.value, 4),
        "stderr": round(verifier_acc.stderr, 4),
        "passed": verifier_acc.passed,
        "minus_actor_points": round(100 * (verifier_acc.value - report["actor_alone"]["strict_accuracy"]), 1),
    }
    report["examples_per_role"] = result.examples
    report["regeneration_targets"] = result.targets
    report["regenerator_mix"] = result.regenerator_mix
    report["critic_mix"] = result.critic_mix
    report["skipped_regenerations"] = result.skipped_regenerations
    report["train"] = result.as_dict()["train"]
    report["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    report["settings"] = vars(args) | {"work": str(work)}
    report["example"] = {
        "prompt": heldout[0].prompt,
        "actor": arms["actor_alone"][0],
        "critique_trained": trained[0]["critique"],
        "regeneration_trained": trained[0]["regeneration"],
    }
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
