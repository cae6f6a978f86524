"""HelixNet-LMoE against three separate models: peak memory, adapter switch cost, per-stage time.

Prints one JSON object for the embedded default model (Gemma 3 270M, fp32 on CPU):

1. three rank-64 LoRA adapters (alpha 128, random non-zero A and B, on q/k/v/o/gate/up/down) for the
   roles actor, critic and regenerator, and their size on disk;
2. the peak RSS of one HelixNet turn, each mode in a fresh subprocess so the numbers do not mix:
   ``lmoe`` (one base model with the three adapters, the HelixNet-LMoE layout), ``three_models``
   (three full checkpoints, each with its role's adapter merged into the weights: what three
   fine-tuned models cost) and ``base_only`` (the base model alone, for reference), with the ratio
   lmoe / three_models (target <= 0.40; the seed's anchor is (14 GB + 3 x 320 MB) / (3 x 14 GB));
3. the cost of a different adapter per call: median time of a 1-token generation on a ~60-token
   prompt, always with "actor" against alternating actor/critic/regenerator (our engine passes the
   adapter per row and never switches globally, so this should be ~0; target < 5 ms), and base model
   against adapter (the LoRA compute itself);
4. one LMoE HelixNet turn (greedy, --max-tokens new tokens per stage) split by stage.

Adapters and merged checkpoints are cached in --work (default: a new temporary folder, removed at
the end). The merged checkpoints take about 3.3 GB of disk.

    HELIXLOOM_HOME=/tmp/hl/home python benchmarks/helixnet_memory.py [--home DIR] [--work DIR]
        [--max-tokens 64] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROLES = ("actor", "critic", "regenerator")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 64, 128
B_STD = 0.002  # small enough that the adapted model still writes text, large enough to change logits
RSS_MAX_TOKENS = 16  # new tokens per stage in the memory runs (the KV cache is tiny either way)
QUESTION = "Why does ice float on water?"
# About 60 tokens with the Gemma tokenizer (the exact count is in the report).
SWITCH_PROMPT = (
    "The history of the printing press begins in East Asia, where woodblock printing was used on "
    "cloth and paper for centuries before movable type was invented. In Europe, Johannes Gutenberg "
    "combined a screw press, oil-based ink and hand-cast metal type around 1440, and within fifty "
    "years presses were"
)
MODES = ("base_only", "lmoe", "three_models")
MB = 1024 * 1024


# ------------------------------------------------------------------------------------------ helpers


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def folder_mb(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / MB, 1)


def adapter_dir(work: Path, role: str) -> Path:
    return work / "adapters" / role


def merged_dir(work: Path, role: str) -> Path:
    return work / "merged" / role


def median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1000, 2)


def mad_ms(times: list[float]) -> float:
    """Median absolute deviation: how far calls in one series stray from its median (the noise)."""
    mid = statistics.median(times)
    return round(statistics.median(abs(t - mid) for t in times) * 1000, 2)


# ------------------------------------------------------------------------------------------ children


def child_prepare(work: Path) -> dict[str, Any]:
    """Write the three adapters and the three merged checkpoints (skipping any already complete)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from helixloom import models

    hf_logging.disable_progress_bar()
    base_folder = models.materialize(models.resolve("default"))
    made = []
    for i, role in enumerate(ROLES):
        adapter, merged = adapter_dir(work, role), merged_dir(work, role)
        if (adapter / "adapter_config.json").is_file() and (merged / "config.json").is_file():
            continue
        made.append(role)
        torch.manual_seed(1000 + i)
        model = AutoModelForCausalLM.from_pretrained(str(base_folder), dtype=torch.float32)
        config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0)
        peft_model = get_peft_model(model, config)  # A: kaiming-uniform, B: zeros
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if ".lora_B." in name:
                    torch.nn.init.normal_(param, 0.0, B_STD)
        for target in (adapter, merged):
            shutil.rmtree(target.with_name(target.name + ".partial"), ignore_errors=True)
        tmp = adapter.with_name(adapter.name + ".partial")
        peft_model.save_pretrained(str(tmp))
        shutil.rmtree(adapter, ignore_errors=True)
        os.replace(tmp, adapter)
        # The same weights folded into a full checkpoint: one role of a three-model HelixNet.
        full = peft_model.merge_and_unload()
        tmp = merged.with_name(merged.name + ".partial")
        full.save_pretrained(str(tmp))
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
            if (base_folder / name).is_file():
                shutil.copy2(base_folder / name, tmp / name)
        shutil.rmtree(merged, ignore_errors=True)
        os.replace(tmp, merged)
        del model, peft_model, full
    return {"made": made, "base_folder": str(base_folder)}


def child_turn(mode: str, work: Path) -> dict[str, Any]:
    """One HelixNet turn in ``mode``; reports the process's peak RSS."""
    import peft  # noqa: F401 - imported in every mode so that import overhead is the same
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from helixloom.engine import sampling
    from helixloom.helixnet import STAGES, RoleSpec, build

    rss_imports = current_rss_mb()
    params = sampling(temperature=0, max_tokens=RSS_MAX_TOKENS, token_healing=True)
    if mode == "lmoe":
        specs = {r: RoleSpec("default", str(adapter_dir(work, r)), params) for r in STAGES}
    elif mode == "three_models":
        specs = {r: RoleSpec(str(merged_dir(work, r)), None, params) for r in STAGES}
    else:
        specs = {r: RoleSpec("default", None, params) for r in STAGES}
    t0 = time.perf_counter()
    net = build(specs)
    load_s = time.perf_counter() - t0
    rss_loaded = current_rss_mb()
    t0 = time.perf_counter()
    turn = net.answer(QUESTION)
    return {
        "mode": mode,
        "engines_loaded": len({id(role.engine) for role in net.roles.values()}),
        "rss_after_imports_mb": rss_imports,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_mb": peak_rss_mb(),
        "load_seconds": round(load_s, 2),
        "turn_seconds": round(time.perf_counter() - t0, 2),
        "texts": [s.raw_text for s in turn.stages],
    }


def run_child(mode: str, work: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--work", str(work)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} failed with exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ in-process


def switch_cost(engine: Any, repeats: int) -> dict[str, Any]:
    """Median 1-token generation time: always "actor", alternating adapters, and the base model.

    The three series run in interleaved blocks of 5 calls so machine drift hits all of them alike; the
    alternating series continues its cycle across blocks, so every one of its calls uses a different
    adapter from the call before it.
    """
    from helixloom.engine import GenerationRequest, sampling

    params = sampling(temperature=0, max_tokens=1)

    def once(adapter: str | None) -> float:
        t0 = time.perf_counter()
        engine.generate([GenerationRequest(SWITCH_PROMPT, params, adapter)])
        return time.perf_counter() - t0

    for adapter in (*ROLES, None):  # warm-up
        once(adapter)
    same: list[float] = []
    alternating: list[float] = []
    base: list[float] = []
    cycle = 1  # the first alternating call follows an "actor" call: start with "critic"
    block = 5
    for start in range(0, repeats, block):
        n = min(block, repeats - start)
        same += [once("actor") for _ in range(n)]
        for _ in range(n):
            alternating.append(once(ROLES[cycle % 3]))
            cycle += 1
        base += [once(None) for _ in range(n)]
    # The adapters must change what the model computes, or the timings compare nothing.
    with_adapter = engine.next_token_logprobs([SWITCH_PROMPT], adapter="actor", top_k=1)[0].top[0]
    without = engine.next_token_logprobs([SWITCH_PROMPT], top_k=1)[0].top[0]
    return {
        "prompt_tokens": len(engine.encode(SWITCH_PROMPT)),
        "calls_per_series": repeats,
        "median_ms": {
            "actor_only": median_ms(same),
            "alternating": median_ms(alternating),
            "base_no_adapter": median_ms(base),
        },
        "mad_ms": {
            "actor_only": mad_ms(same),
            "alternating": mad_ms(alternating),
            "base_no_adapter": mad_ms(base),
        },
        "adapter_switch_cost_ms": round((statistics.median(alternating) - statistics.median(same)) * 1000, 2),
        "adapter_overhead_ms": round((statistics.median(same) - statistics.median(base)) * 1000, 2),
        "top1_logprob_base_vs_actor": [round(without.logprob, 4), round(with_adapter.logprob, 4)],
    }


def timed_turn(net: Any) -> dict[str, Any]:
    from helixloom.engine import GenerationRequest, sampling

    engine = net.roles["actor"].engine
    # Warm-up: the first token-healing request builds the engine's token-text table (once per engine).
    engine.generate([GenerationRequest("USER: ", sampling(temperature=0, max_tokens=1, token_healing=True))])
    t0 = time.perf_counter()
    turn = net.answer(QUESTION)
    wall = time.perf_counter() - t0
    stages = {}
    for s in turn.stages:
        tokens = s.usage.completion_tokens
        stages[s.stage] = {
            "seconds": round(s.timings["total"], 3),
            "prefill_seconds": round(s.timings["prefill"], 3),
            "decode_seconds": round(s.timings["decode"], 3),
            "prompt_tokens": s.usage.prompt_tokens,
            "completion_tokens": tokens,
            "decode_tok_s": round((tokens - 1) / s.timings["decode"], 2) if tokens > 1 else None,
            "finish_reason": s.finish_reason,
        }
    return {"wall_seconds": round(wall, 2), "stages": stages, "final_answer": turn.regeneration[:200]}


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", help="HELIXLOOM_HOME (default: the environment variable, or ~/.helixloom)")
    parser.add_argument("--work", help="folder for the adapters and merged checkpoints (default: a temp dir)")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per stage in the timed turn")
    parser.add_argument("--repeats", type=int, default=20, help="1-token generations per adapter series")
    parser.add_argument("--child", choices=("prepare", *MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.home:
        os.environ["HELIXLOOM_HOME"] = str(Path(args.home).expanduser().resolve())
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    if args.child:
        work = Path(args.work)
        result = child_prepare(work) if args.child == "prepare" else child_turn(args.child, work)
        print(json.dumps(result))
        return

    started = time.perf_counter()
    temporary = args.work is None
    work = Path(tempfile.mkdtemp(prefix="helixnet-memory-") if temporary else args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    try:
        report = measure(args, work)
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    report["total_wall_seconds"] = round(time.perf_counter() - started, 1)
    json.dump(report, sys.stdout, indent=2)
    print()


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    # 1. adapters (and the merged checkpoints for the three-model baseline), in a child of their own
    t0 = time.perf_counter()
    prepared = run_child("prepare", work)
    prepare_s = time.perf_counter() - t0
    adapters_mb = {r: folder_mb(adapter_dir(work, r)) for r in ROLES}
    base_mb = round((Path(prepared["base_folder"]) / "model.safetensors").stat().st_size / MB, 1)

    # 2. peak RSS per mode, each in a fresh process
    runs = {mode: run_child(mode, work) for mode in MODES}
    peak = {mode: runs[mode]["peak_rss_mb"] for mode in MODES}
    imports = statistics.median(runs[mode]["rss_after_imports_mb"] for mode in MODES)
    anchor_mb = {"base": 14 * 1024, "adapter": 320}

    # 3. and 4. in this process: one engine, three adapters
    import torch

    from helixloom.engine import sampling
    from helixloom.helixnet import STAGES, RoleSpec, build

    params = sampling(temperature=0, max_tokens=args.max_tokens, token_healing=True)
    net = build({r: RoleSpec("default", str(adapter_dir(work, r)), params) for r in STAGES})
    switching = switch_cost(net.roles["actor"].engine, args.repeats)
    turn = timed_turn(net)

    return {
        "benchmark": "helixnet_memory",
        "model": "default",
        "dtype": "float32",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "adapters": {
            "rank": RANK,
            "alpha": ALPHA,
            "target_modules": TARGETS,
            "b_init_std": B_STD,
            "size_mb": adapters_mb,
            "total_mb": round(sum(adapters_mb.values()), 1),
            "made_this_run": prepared["made"],
            "prepare_seconds": round(prepare_s, 1),
        },
        "base_checkpoint_mb": base_mb,
        "merged_checkpoint_mb": folder_mb(merged_dir(work, ROLES[0])),
        "memory_turn_max_tokens": RSS_MAX_TOKENS,
        "base_only_peak_rss_mb": peak["base_only"],
        "lmoe_peak_rss_mb": peak["lmoe"],
        "three_models_peak_rss_mb": peak["three_models"],
        "ratio_lmoe_over_three": round(peak["lmoe"] / peak["three_models"], 3),
        "ratio_target": 0.40,
        # The same ratio with the runtime (python, torch, transformers, peft) that every process pays
        # once taken out of both sides, and the ratio of the weights alone (what the anchor counts).
        "runtime_rss_after_imports_mb": imports,
        "ratio_lmoe_over_three_net_of_runtime": round(
            (peak["lmoe"] - imports) / (peak["three_models"] - imports), 3
        ),
        "ratio_weights_on_disk": round((base_mb + sum(adapters_mb.values())) / (3 * base_mb), 3),
        "anchor": {
            "formula": "(14 GB + 3 x 320 MB) / (3 x 14 GB)",
            "ratio": round((anchor_mb["base"] + 3 * anchor_mb["adapter"]) / (3 * anchor_mb["base"]), 3),
        },
        "children": {
            mode: {k: v for k, v in runs[mode].items() if k not in ("texts", "mode")} for mode in MODES
        },
        # Unmerged LoRA (lmoe) and merged weights (three_models) compute the same function.
        "lmoe_and_merged_texts_identical": runs["lmoe"]["texts"] == runs["three_models"]["texts"],
        "adapter_switch_cost_ms": switching["adapter_switch_cost_ms"],
        "adapter_overhead_ms": switching["adapter_overhead_ms"],
        "switch_target_ms": 5.0,
        "switch_detail": switching,
        "lmoe_turn": {"max_tokens": args.max_tokens, "question": QUESTION, **turn},
    }


if __name__ == "__main__":
    main()
