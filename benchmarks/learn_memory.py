"""Peak memory and time per step of ``learn``'s training on the default model, by micro-batch.

A step of ``learn`` trains on ``batch_size x grad_accum`` sequences; the activations a forward pass
keeps for the backward pass grow with ``batch_size``, so splitting a step into more, smaller passes
trades memory for (some) speed. This builds ``learn``'s dataset from ``--data``'s documents once (the
embedded teacher, as ``learn`` does), then trains ``--steps`` optimizer steps per setting, each in a
fresh process so its peak resident memory (VmHWM) is its own, and prints JSON: per setting the peak
memory, seconds per step and tokens per second, and both as ratios to the first setting (the baseline,
8 x 1: the default before Dec 2026). Every setting sees 8 sequences a step, so steps are comparable.

    python benchmarks/learn_memory.py [--settings 8x1,4x2,2x4] [--steps 6] [--data benchmarks/learn_heldout]

A setting may name options after slashes: ``8x1/bf16`` trains in bf16 (``--precision bf16``),
``8x1/trl`` scores the output layer with TRL's function (recomputing the logits in the backward
pass) instead of ``trainer.KeptProbabilities``, so ``--settings 8x1/trl,8x1,8x1/bf16/trl,8x1/bf16``
measures both against TRL's scoring in one run; ``8x1/torchdrop`` keeps torch's LoRA dropout instead
of ``trainer.cpu_dropout``.

Training only: the engine the CLI keeps for the teacher and the probe's generation add to ``learn``'s
peak (``benchmarks/learn.py`` reports the whole run's, ``peak_rss_mb``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _home import bench_home

HERE = Path(__file__).resolve().parent
NAME = "bench-memory"


def peak_rss_mb() -> int:
    """This process's peak resident memory (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    import resource  # not Linux: ru_maxrss (kB on Linux, bytes on macOS)

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) // 1024


OPTIONS = ("bf16", "trl", "torchdrop")


def parse_setting(text: str) -> tuple[int, int, tuple[str, ...]]:
    """``"4x2/bf16"`` -> (4, 2, ("bf16",)); ValueError when it is not BATCHxACCUM[/OPTION...]."""
    shape, *options = text.strip().lower().split("/")
    batch, accum = (int(x) for x in shape.split("x"))
    if batch < 1 or accum < 1 or any(o not in OPTIONS for o in options):
        raise ValueError(text)
    return batch, accum, tuple(options)


def child(setting: str, steps: int, out: Path) -> None:
    """Train ``steps`` steps of ``setting`` on the prepared dataset; write the figures."""
    from helixloom import paths
    from helixloom.documents import dataset
    from helixloom.training import learn, trainer
    from helixloom.training.sft import train_lora

    batch, accum, options = parse_setting(setting)
    if "trl" in options:
        trainer.KEPT_PROBABILITIES_BYTES = 0  # every batch goes to TRL's function
    if "torchdrop" in options:
        trainer.CPU_DROPOUT = False  # LoRA dropout as PEFT builds it (torch's bernoulli_)
    rows, meta = dataset.read(NAME)
    config = dataclasses.replace(
        learn.config_of(meta),
        batch_size=batch,
        grad_accum=accum,
        max_steps=steps,
        save_steps=10_000,
        precision="bf16" if "bf16" in options else "fp32",
    )
    before = peak_rss_mb()
    folder = paths.runs_dir() / f"memory-{setting.replace('/', '-')}"
    result = train_lora(
        meta["base"],
        rows,
        folder / "adapter",
        folder / "run",
        config,
        system_prompt=meta["system_prompt"],
        **learn.train_options(NAME, rows, config),
    )
    shutil.rmtree(folder, ignore_errors=True)
    out.write_text(
        json.dumps(
            {
                "setting": setting,
                "steps": result.steps,
                "seconds_per_step": round(result.seconds / result.steps, 2),
                "tokens_per_s": round(result.tokens / result.seconds, 1),
                "peak_rss_mb": peak_rss_mb(),
                "peak_rss_mb_before_training": before,
                "final_loss": result.final_loss,
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--settings",
        default="8x1,4x2,2x4",
        help="BATCHxACCUM[/bf16][/trl][/torchdrop] settings, comma-separated, the first the baseline",
    )
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per setting")
    parser.add_argument("--data", type=Path, default=HERE / "learn_heldout", help="a folder of .md documents")
    parser.add_argument("--work", type=Path, default=None, help="HELIXLOOM_HOME to use (default: a temp one)")
    parser.add_argument("--child", nargs=3, metavar=("SETTING", "STEPS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.child:
        child(args.child[0], int(args.child[1]), Path(args.child[2]))
        return 0
    settings = []
    for s in args.settings.split(","):
        try:
            batch, accum, _ = parse_setting(s)
        except ValueError:
            parser.error(f"a setting is BATCHxACCUM[/OPTION...] (options: {', '.join(OPTIONS)}), not {s!r}")
        settings.append((s.strip().lower(), batch, accum))
    if len({b * a for _, b, a in settings}) > 1:
        parser.error("every setting must train the same sequences a step (BATCH x ACCUM), to compare steps")
    work = bench_home(args.work, "helixloom-bench-memory-")

    from helixloom import paths
    from helixloom.documents.ingest import ingest
    from helixloom.engine import load_engine
    from helixloom.training import learn, learn_teacher

    paths.ensure_home()
    docs = work / "docs"
    docs.mkdir(exist_ok=True)
    for file in sorted(args.data.glob("*.md")):
        shutil.copy(file, docs / file.name)
    if not ingest([docs]).documents:
        parser.error(f"no .md documents in {args.data}")
    t0 = time.perf_counter()
    teacher_spec = learn_teacher.teacher_spec("default")
    engine = load_engine("default")
    teacher = engine if teacher_spec == "default" else load_engine(teacher_spec)
    questions = learn_teacher.suite_questions(teacher_spec)
    learn.prepare(NAME, [docs], teacher, base="default", writer=engine, num_questions=questions)
    prepare_seconds = time.perf_counter() - t0
    del engine, teacher

    runs = []
    for setting, _, _ in settings:
        out = work / f"memory-{setting.replace('/', '-')}.json"
        subprocess.run(
            [sys.executable, __file__, "--child", setting, str(args.steps), str(out)],
            check=True,
            env=os.environ.copy(),
        )
        runs.append(json.loads(out.read_text()))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    base = runs[0]
    for r in runs:
        r["peak_rss_ratio"] = round(r["peak_rss_mb"] / base["peak_rss_mb"], 3)
        r["seconds_per_step_ratio"] = round(r["seconds_per_step"] / base["seconds_per_step"], 3)
    print(
        json.dumps(
            {
                "benchmark": "learn_memory",
                "model": "default",
                "data": str(args.data),
                "steps": args.steps,
                "baseline": base["setting"],
                "settings": runs,
                "prepare_seconds": round(prepare_seconds, 1),
                "threads": os.environ.get("OMP_NUM_THREADS"),
                "load_average_at_end": os.getloadavg(),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
