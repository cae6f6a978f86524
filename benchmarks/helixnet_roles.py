"""Which HelixNet role limits the result? A diagnosis of a finished ``helixnet_train.py`` run.

Reads the turns of the run's last evaluation on ``--eval-on`` (``--work DIR``: the arm files that
``turns-SPLIT.json`` names) and prints one JSON object:

- **critic**, per arm: how often its critique's verdict (pass: it says the response "follows every
  instruction"; fail: anything else) agrees with the verifier on the actor's answer, the confusion
  counts, and for failed answers how many of the verifier's failure sentences the critique names
  word for word (recall) or but for their counts, and how many "It has / It does / It is / It uses"
  findings it makes (each failure sentence is one);
- **regenerator**: the trained regenerator (and with ``--base`` the base model) given the
  *verifier's exact critique* of the actor's answer, against the same regenerator given the trained
  critic's critique (the trained arm). If the exact critique gives much more, the critic limits the
  result; if not, the regenerator does.

This is a diagnosis, not a result: the exact critique uses the checks at inference. Each
regeneration is one greedy request in the pipeline's prompt, stops and cleaning (no resampling of a
degenerate one; their count is reported).

    python benchmarks/helixnet_roles.py --work DIR [--name bench] [--regen-tokens 64] [--base]
                                        [--eval-on heldout|validation]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from _home import bench_home
from helixnet_train import VALIDATION_FROM

PASS = "follows every instruction"
FINDING = re.compile(r"\bIt (?:has|does|is|uses)\b")
NUMBER = re.compile(r"\d+")


def _kind(text: str) -> str:
    """A failure sentence without its counts: names the right failure even if the count is off."""
    return NUMBER.sub("#", text)


def critic_report(prompts: list[Any], turns: list[dict[str, Any]]) -> dict[str, Any]:
    """How the critiques in ``turns`` agree with the verifier on each actor answer."""
    counts = {"true_pass": 0, "false_pass": 0, "true_fail": 0, "false_fail": 0}
    named = kinds = findings = failures = 0
    for p, t in zip(prompts, turns, strict=True):
        passes, says_pass = p.passes(t["actor"]), PASS in t["critique"]
        counts[("true_" if passes == says_pass else "false_") + ("pass" if says_pass else "fail")] += 1
        if not passes:
            failed = p.failures(t["actor"])
            failures += len(failed)
            named += sum(f in t["critique"] for f in failed)
            kinds += sum(_kind(f) in _kind(t["critique"]) for f in failed)
            findings += len(FINDING.findall(t["critique"]))
    total = len(turns)
    return {
        "verdict_accuracy": round((counts["true_pass"] + counts["true_fail"]) / total, 4) if total else 0.0,
        **counts,
        "failed_answers_findings": findings,
        "failure_sentences": failures,
        "failure_sentences_named": named,
        "recall": round(named / failures, 4) if failures else 0.0,
        "failure_sentences_named_but_counts": kinds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="the --work folder of helixnet_train.py")
    parser.add_argument("--name", default="bench", help="the HelixNet set the run trained (default bench)")
    parser.add_argument("--regen-tokens", type=int, default=64, help="longest regeneration")
    parser.add_argument("--base", action="store_true", help="also the base model as regenerator")
    parser.add_argument("--eval-on", choices=("heldout", "validation"), default="heldout", help="the split")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    work = bench_home(args.work, "unused-")

    from helixloom import adapters
    from helixloom.engine import GenerationRequest, SamplingParams, load_engine
    from helixloom.evals import instructions
    from helixloom.prompting import PromptFormat
    from helixloom.store import Store

    # the turns of the last helixnet_train.py run on this split
    files = json.loads((work / f"turns-{args.eval_on}.json").read_text())
    arms = {arm: json.loads((work / files[arm]).read_text()) for arm in ("untrained", "trained")}
    if args.eval_on == "validation":
        prompts = instructions.load(split="train")[VALIDATION_FROM:][: len(arms["trained"])]
    else:
        prompts = instructions.load(split="heldout")[: len(arms["trained"])]
    report: dict[str, Any] = {"eval_on": args.eval_on, "eval_prompts": len(prompts)}
    report["critic"] = {arm: critic_report(prompts, turns) for arm, turns in arms.items()}

    engine = load_engine("default")
    with Store(work / "helixloom.db") as store:
        roles = adapters.helixnet_set(store, args.name)
        folders = {r.name: str(r.path) for r in store.list_adapters()}
    engine.load_adapter(roles["regenerator"], folders[roles["regenerator"]])
    fmt = PromptFormat.load("helixnet")
    params = SamplingParams(
        temperature=0.0, max_tokens=args.regen_tokens, stop=tuple(fmt.stop), token_healing=True
    )
    actor = [t["actor"] for t in arms["trained"]]
    exact = [instructions.critique(p, a) for p, a in zip(prompts, actor, strict=True)]

    def regenerate(adapter: str | None) -> tuple[list[str], float]:
        t0 = time.perf_counter()
        requests = [
            GenerationRequest(fmt.regenerator_prompt(engine, fmt.system, p.prompt, a, c), params, adapter)
            for p, a, c in zip(prompts, actor, exact, strict=True)
        ]
        texts: list[str] = []
        for start in range(0, len(requests), 8):
            texts += [fmt.clean("regenerator", r.text) for r in engine.generate(requests[start : start + 8])]
            print(f"regenerated {len(texts)}/{len(requests)}", file=sys.stderr)
        return texts, time.perf_counter() - t0

    def score(texts: list[str]) -> dict[str, Any]:
        rows = list(zip(prompts, actor, texts, strict=True))
        return {
            "passed": instructions.strict_accuracy(prompts, texts).passed,
            "fixed": sum(not p.passes(a) and p.passes(r) for p, a, r in rows),
            "broken": sum(p.passes(a) and not p.passes(r) for p, a, r in rows),
            "empty": sum(1 for r in texts if not instructions.words(r)),
        }

    regen: dict[str, Any] = {
        "actor_alone": {"passed": instructions.strict_accuracy(prompts, actor).passed},
        "trained_given_trained_critique": score([t["regeneration"] for t in arms["trained"]]),
    }
    texts, seconds = regenerate(roles["regenerator"])
    regen["trained_given_exact_critique"] = score(texts) | {"seconds": round(seconds, 1)}
    if args.base:
        texts, seconds = regenerate(None)
        regen["base_given_exact_critique"] = score(texts) | {"seconds": round(seconds, 1)}
    report["regenerator"] = regen
    report["example"] = {"prompt": prompts[0].prompt, "actor": actor[0], "exact_critique": exact[0]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
