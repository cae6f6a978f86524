"""Iterative preference learning: GSHF / iterative DPO, and RAFT, as one resumable loop.

Per iteration (RLHFlow's Online-RLHF recipe, at CPU scale):

1. **sample** K responses per prompt from the current policy (base + the previous iteration's
   adapter), temperature 1.0 by default, a distinct seed per sample;
2. **score** every response with a ``Reward`` (evaluator, constitution, reward model or head,
   pairwise judge, or a Python function);
3. **pair**: best vs worst (``max_min``), best vs a random lower one (``max_random``) or both;
   prompts whose responses all score the same give no pair (ties are dropped);
4. **train**: DPO on the pairs, continuing the previous adapter with the previous iterate as the
   frozen reference (beta 0.1 by default); with ``method="raft"``, SFT on the best of K instead;
5. **evaluate**: one answer per evaluation prompt (fixed seeds, the same for every iteration), its
   mean reward, its mean length and its win rate against the starting policy's answers (by reward,
   and by a pairwise judge when one is given).

Everything a phase produces is a file under ``HELIXLOOM_HOME/runs/iterate/NAME/``; a killed run
resumes at the phase and, for sampling, the prompt it was in (training resumes from its last
checkpoint). The per-iteration table is ``report.json`` and ``report.png``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from helixloom import paths
from helixloom.engine import Engine, GenerationRequest, sampling
from helixloom.errors import HelixloomError
from helixloom.prompting import render
from helixloom.rewards import Reward
from helixloom.training.configs import LoraDPOConfig

METHODS = ("dpo", "raft")
PAIRINGS = ("max_min", "max_random", "max_min+max_random")

# (prompts, policy answers, baseline answers) -> (win rate %, length-controlled win rate %); None when
# the judge could not decide any pair
JudgeFn = Callable[[list[str], list[str], list[str]], tuple[float | None, float | None]]
Event = Callable[[str], None]


@dataclass(frozen=True)
class IterateConfig:
    """The loop's settings (training settings are a ``LoraDPOConfig``)."""

    iterations: int = field(default=3, metadata={"help": "iterations of sample → score → pair → train"})
    k: int = field(default=4, metadata={"help": "responses sampled per prompt"})
    method: str = field(
        default="dpo", metadata={"help": "dpo (GSHF / iterative DPO) or raft (SFT on best of K)"}
    )
    pairs: str = field(
        default="max_min",
        metadata={"help": "DPO pairs: max_min (best vs worst), max_random, or max_min+max_random"},
    )
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the K responses"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus mass of the K responses"})
    max_tokens: int = field(default=256, metadata={"help": "longest response in tokens"})
    eval_temperature: float = field(
        default=0.7, metadata={"help": "temperature of the evaluation answers (0: greedy)"}
    )
    gen_batch: int = field(default=16, metadata={"help": "rows per generation batch"})
    seed: int = field(default=0, metadata={"help": "seed of sampling, pairing and training"})
    system: str = field(default="", metadata={"help": "system prompt for every prompt"})

    def __post_init__(self) -> None:
        for name in ("iterations", "k", "max_tokens", "gen_batch"):
            if not getattr(self, name) > 0:
                raise HelixloomError(f"{name} must be positive", param=name)
        if self.k < 2:
            raise HelixloomError("k must be at least 2 to rank responses", param="k")
        if self.method not in METHODS:
            raise HelixloomError(f"method must be one of {', '.join(METHODS)}", param="method")
        if self.pairs not in PAIRINGS:
            raise HelixloomError(f"pairs must be one of {', '.join(PAIRINGS)}", param="pairs")
        if self.temperature < 0 or self.eval_temperature < 0:
            raise HelixloomError("temperatures must be >= 0", param="temperature")

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: str(f.metadata.get("help", "")) for f in fields(cls)}


@dataclass
class IterationRow:
    """One line of the per-iteration table (iteration 0 is the starting policy)."""

    iteration: int
    mean_reward: float
    win_rate: float  # % of evaluation prompts where this policy's answer out-scores the start's (ties half)
    mean_length: float  # tokens
    judge_win_rate: float | None = None
    judge_lc_win_rate: float | None = None
    sample_mean_reward: float | None = None  # mean reward of the K samples this iteration trained on
    sample_best_reward: float | None = None  # mean of the per-prompt best
    pairs: int = 0
    ties_dropped: int = 0
    train_loss: float | None = None
    train_steps: int = 0
    changed_fraction: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def pick_pairs(
    responses: Sequence[str], rewards: Sequence[float], how: str, rng: random.Random
) -> tuple[list[tuple[int, int]], bool]:
    """(chosen, rejected) index pairs from K scored responses, and whether the prompt was a tie.

    ``max_min``: best vs worst. ``max_random``: best vs a random response that scores lower. Ties
    (every response scoring the same, or identical texts) give no pair: they carry no preference.
    """
    order = sorted(range(len(rewards)), key=lambda i: (-rewards[i], i))
    best, worst = order[0], order[-1]
    if rewards[best] == rewards[worst]:
        return [], True
    out: list[tuple[int, int]] = []
    if how in ("max_min", "max_min+max_random"):
        out.append((best, worst))
    if how in ("max_random", "max_min+max_random"):
        lower = [i for i in order[1:] if rewards[i] < rewards[best]]
        pick = rng.choice(lower)
        if (best, pick) not in out:
            out.append((best, pick))
    return [(c, r) for c, r in out if responses[c] != responses[r]], False


def reward_outcome(answer: str, score: float, baseline: str, baseline_score: float) -> float:
    """1 win, 0.5 tie, 0 loss by reward. The same text is a tie whatever the scores say: a batch
    scored with other rows differs in the last bits, and that noise must not decide a win."""
    if answer == baseline or math.isclose(score, baseline_score, rel_tol=1e-5, abs_tol=1e-6):
        return 0.5
    return 1.0 if score > baseline_score else 0.0


class IterativeRun:
    """A named run under ``HELIXLOOM_HOME/runs/iterate/NAME``; create it once, execute (or resume) it."""

    def __init__(self, root: Path, meta: dict[str, Any]) -> None:
        self.root = root
        self.meta = meta
        self.config = IterateConfig(**meta["config"])
        train = dict(meta["train"])
        train["target_modules"] = tuple(train["target_modules"])
        self.train_config = LoraDPOConfig(**train)
        self.prompts: list[str] = meta["prompts"]
        self.eval_prompts: list[str] = meta["eval_prompts"]

    # ------------------------------------------------------------------ creation

    @staticmethod
    def folder(name: str) -> Path:
        return paths.home() / "runs" / "iterate" / name

    @classmethod
    def create(
        cls,
        name: str,
        prompts: Sequence[str],
        *,
        base: str,
        reward: str,
        start_adapter: str | None = None,
        eval_prompts: Sequence[str] | None = None,
        judge: str | None = None,
        config: IterateConfig | None = None,
        train: LoraDPOConfig | None = None,
        evaluator_adapter: str | None = None,
        overwrite: bool = False,
    ) -> IterativeRun:
        """Start a run: its settings and prompts are written once, so ``open`` can resume it."""
        if not name or "/" in name or name.startswith("."):
            raise HelixloomError(f"bad run name {name!r}", param="name")
        prompts = [p for p in (str(x).strip() for x in prompts) if p]
        if not prompts:
            raise HelixloomError("no prompts to learn from", param="prompts")
        root = cls.folder(name)
        if root.exists():
            if not overwrite:
                raise HelixloomError(
                    f"run {name} already exists in {root}",
                    "continue it with --resume, or pass --overwrite to start over",
                )
            shutil.rmtree(root)
        root.mkdir(parents=True)
        meta = {
            "name": name,
            "base": base,
            "reward": reward,
            "judge": judge,
            "start_adapter": start_adapter,
            "evaluator_adapter": evaluator_adapter,
            "config": asdict(config or IterateConfig()),
            "train": asdict(train or LoraDPOConfig()),
            "prompts": prompts,
            "eval_prompts": [p for p in (eval_prompts or prompts) if p.strip()],
            "created": time.time(),
        }
        _write_json(root / "run.json", meta)
        return cls(root, meta)

    @classmethod
    def open(cls, name: str) -> IterativeRun:
        root = cls.folder(name)
        if not (root / "run.json").is_file():
            raise HelixloomError(
                f"no iterate run named {name}", f"start it: helixloom iterate --name {name} ..."
            )
        return cls(root, json.loads((root / "run.json").read_text()))

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    def adapter_dir(self, iteration: int) -> Path:
        return self.root / f"iter-{iteration}" / "adapter"

    def final_adapter(self) -> Path | None:
        """The adapter of the last finished iteration (None if none has finished)."""
        for i in range(self.config.iterations, 0, -1):
            if (self.adapter_dir(i) / "adapter_config.json").is_file():
                return self.adapter_dir(i)
        return None

    def rows(self) -> list[IterationRow]:
        """The table so far: iteration 0 and every evaluated iteration."""
        out = []
        for i in range(self.config.iterations + 1):
            path = self.root / f"iter-{i}" / "eval.json"
            if path.is_file():
                out.append(IterationRow(**json.loads(path.read_text())))
        return out

    # ------------------------------------------------------------------ execution

    def execute(
        self,
        engine: Engine,
        reward: Reward,
        *,
        judge: JudgeFn | None = None,
        start_adapter_path: Path | None = None,
        say: Event = lambda _: None,
        progress: Callable[[str, int], Any] | None = None,
        stop_after: Callable[[int, str], bool] | None = None,
    ) -> list[IterationRow]:
        """Run (or resume) every iteration; returns the table. ``engine`` serves the base model and
        loads each iteration's adapter; ``progress(label, total)`` returns a bar with ``update(n)``
        and ``close()``. ``stop_after(iteration, phase)`` returning True stops the run there (tests)."""
        if not engine.supports_adapters:
            raise HelixloomError(
                f"the {engine.backend} engine cannot load adapters; iterate needs the hf engine"
            )
        policy: str | None = None
        prev_dir: Path | None = None
        if start_adapter_path is not None:
            policy = f"iterate-{self.name}-start"
            engine.load_adapter(policy, str(start_adapter_path))
            prev_dir = start_adapter_path
        baseline = self._eval(0, engine, reward, policy, None, judge, say, progress)
        for i in range(1, self.config.iterations + 1):
            if (self.root / f"iter-{i}" / "eval.json").is_file() and (
                self.adapter_dir(i) / "adapter_config.json"
            ).is_file():
                prev_dir = self.adapter_dir(i)
                policy = self._load(engine, i, prev_dir)
                continue
            say(f"iteration {i}/{self.config.iterations}")
            seconds: dict[str, float] = {}
            t = time.perf_counter()
            samples = self._sample(i, engine, reward, policy, say, progress)
            seconds["sample_and_score"] = time.perf_counter() - t
            if stop_after and stop_after(i, "sample"):
                return self.rows()
            pairs, ties = self._pairs(i, samples, engine)
            say(f"  {len(pairs)} training rows, {ties} tied prompts dropped")
            t = time.perf_counter()
            trained = self._train(i, pairs, prev_dir, say)
            seconds["train"] = time.perf_counter() - t
            if stop_after and stop_after(i, "train"):
                return self.rows()
            prev_dir = self.adapter_dir(i)
            policy = self._load(engine, i, prev_dir)
            t = time.perf_counter()
            row = self._eval(i, engine, reward, policy, baseline, judge, say, progress, write=False)
            seconds["evaluate"] = time.perf_counter() - t
            row.sample_mean_reward = _mean([r for s in samples for r in s["rewards"]])
            row.sample_best_reward = _mean([max(s["rewards"]) for s in samples])
            row.pairs = len(pairs)
            row.ties_dropped = ties
            row.train_loss = trained.get("final_loss")
            row.train_steps = int(trained.get("steps", 0))
            row.changed_fraction = trained.get("changed_fraction")
            row.seconds = {k: round(v, 2) for k, v in seconds.items()}
            _write_json(self.root / f"iter-{i}" / "eval.json", asdict(row))
            self.write_report()
            say(
                f"  iteration {i}: mean reward {row.mean_reward:.3f}, win rate vs start {row.win_rate:.1f}%, "
                f"mean length {row.mean_length:.1f} tokens"
            )
        self.write_report()
        return self.rows()

    def _load(self, engine: Engine, i: int, folder: Path) -> str:
        name = f"iterate-{self.name}-{i}"
        if name not in {a.name for a in engine.adapters()}:
            engine.load_adapter(name, str(folder))
        return name

    def _requests(
        self,
        engine: Engine,
        prompts: Sequence[str],
        adapter: str | None,
        seeds: Sequence[int],
        temperature: float,
    ) -> list[GenerationRequest]:
        out = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            chat = render(engine, self._messages(prompt))
            params = sampling(
                max_tokens=self.config.max_tokens,
                temperature=temperature,
                top_p=self.config.top_p if temperature > 0 else 1.0,
                top_k=0,
                seed=seed,
                stop=chat.stop,
                token_healing=chat.token_healing,
            )
            out.append(GenerationRequest(prompt=chat.prompt, sampling=params, adapter=adapter))
        return out

    def _messages(self, prompt: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.config.system}] if self.config.system else []
        return [*msgs, {"role": "user", "content": prompt}]

    def _sample(
        self,
        i: int,
        engine: Engine,
        reward: Reward,
        policy: str | None,
        say: Event,
        progress: Callable[[str, int], Any] | None,
    ) -> list[dict[str, Any]]:
        """K scored samples per prompt, appended to ``samples.jsonl`` prompt by prompt (resumable)."""
        folder = self.root / f"iter-{i}"
        folder.mkdir(exist_ok=True)
        path = folder / "samples.jsonl"
        done = _read_jsonl_tolerant(path)
        have = {int(r["index"]) for r in done}
        todo = [j for j in range(len(self.prompts)) if j not in have]
        if have and todo:
            say(f"  resuming sampling: {len(have)} of {len(self.prompts)} prompts already sampled")
        k = self.config.k
        per_batch = max(1, self.config.gen_batch // k)
        bar = (
            progress(f"iteration {i}: sample {k} and score", len(self.prompts)) if progress and todo else None
        )
        if bar is not None:
            bar.update(len(have))
        with path.open("a", encoding="utf-8") as out:
            for start in range(0, len(todo), per_batch):
                chunk = todo[start : start + per_batch]
                prompts = [self.prompts[j] for j in chunk for _ in range(k)]
                seeds = [_seed(self.config.seed, i, j, s) for j in chunk for s in range(k)]
                results = engine.generate(
                    self._requests(engine, prompts, policy, seeds, self.config.temperature)
                )
                for n, j in enumerate(chunk):
                    group = results[n * k : (n + 1) * k]
                    texts = [r.text for r in group]
                    scores = reward.score_group(self.prompts[j], texts)
                    row = {
                        "index": j,
                        "prompt": self.prompts[j],
                        "responses": texts,
                        "rewards": [float(x) for x in scores],
                        "tokens": [r.usage.completion_tokens for r in group],
                    }
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                    out.flush()
                    done.append(row)
                if bar is not None:
                    bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return sorted(done, key=lambda r: int(r["index"]))

    def _pairs(
        self, i: int, samples: list[dict[str, Any]], engine: Engine
    ) -> tuple[list[dict[str, Any]], int]:
        """Training rows from the scored samples (deterministic: written once, re-read on resume)."""
        path = self.root / f"iter-{i}" / "train_rows.jsonl"
        meta_path = self.root / f"iter-{i}" / "train_rows.json"
        if path.is_file() and meta_path.is_file():
            return _read_jsonl_tolerant(path), int(json.loads(meta_path.read_text())["ties"])
        rng = random.Random(_seed(self.config.seed, i, -1, -1))
        rows: list[dict[str, Any]] = []
        ties = 0
        for s in samples:
            # The training prompt is the sampling prompt, rendered by the same code for the same model.
            messages = self._messages(s["prompt"])
            picked, tied = pick_pairs(s["responses"], s["rewards"], self.config.pairs, rng)
            ties += tied
            if self.config.method == "raft":
                if not tied:
                    best = (
                        picked[0][0]
                        if picked
                        else max(range(len(s["rewards"])), key=s["rewards"].__getitem__)
                    )
                    rows.append(
                        {"messages": [*messages, {"role": "assistant", "content": s["responses"][best]}]}
                    )
                continue
            prompt = render(engine, messages).prompt
            for c, r in picked:
                rows.append(
                    {
                        "prompt": prompt,
                        "chosen": s["responses"][c],
                        "rejected": s["responses"][r],
                        "chosen_reward": s["rewards"][c],
                        "rejected_reward": s["rewards"][r],
                    }
                )
        _write_jsonl(path, rows)
        _write_json(meta_path, {"ties": ties, "rows": len(rows)})
        return rows, ties

    def _train(self, i: int, rows: list[dict[str, Any]], prev: Path | None, say: Event) -> dict[str, Any]:
        out = self.adapter_dir(i)
        result_path = self.root / f"iter-{i}" / "train.json"
        if (out / "adapter_config.json").is_file() and result_path.is_file():
            return dict(json.loads(result_path.read_text()))
        run_dir = self.root / f"iter-{i}" / "checkpoints"
        resume = any(run_dir.glob("checkpoint-*"))
        if not rows:
            # Every prompt tied: nothing to learn this iteration; the policy carries over unchanged.
            say("  no preference signal this iteration (all prompts tied); the policy is unchanged")
            if prev is not None:
                _copy_dir(prev, out)
                carried: dict[str, Any] = {"steps": 0, "final_loss": None, "changed_fraction": 0.0}
                _write_json(result_path, carried)
                return carried
            raise HelixloomError(
                "the reward gave every response of every prompt the same score in iteration 1",
                "use a reward that tells the responses apart, more prompts, or a larger --k",
            )
        if resume:
            say("  resuming training from its last checkpoint")
        cfg = LoraDPOConfig(**{**asdict(self.train_config), "seed": self.train_config.seed + i})
        if self.config.method == "raft":
            from helixloom.training.sft import train_lora

            trained = train_lora(self.meta["base"], rows, out, run_dir, cfg, init_adapter=prev, resume=resume)
        else:
            from helixloom.training.dpo import train_dpo

            trained = train_dpo(self.meta["base"], rows, out, run_dir, cfg, init_adapter=prev, resume=resume)
        result = trained
        summary = {
            "steps": result.steps,
            "final_loss": result.final_loss,
            "changed_fraction": result.changed_fraction,
            "resumed_from_step": result.resumed_from_step,
            "tokens": result.tokens,
            "seconds": result.seconds,
        }
        _write_json(result_path, summary)
        shutil.rmtree(run_dir, ignore_errors=True)  # the adapter is written; checkpoints are no longer needed
        return summary

    def _eval(
        self,
        i: int,
        engine: Engine,
        reward: Reward,
        policy: str | None,
        baseline: IterationRow | None,
        judge: JudgeFn | None,
        say: Event,
        progress: Callable[[str, int], Any] | None,
        *,
        write: bool = True,
    ) -> IterationRow:
        """Answer every evaluation prompt once (the same seeds every iteration) and score the answers."""
        folder = self.root / f"iter-{i}"
        folder.mkdir(exist_ok=True)
        answers_path = folder / "eval_answers.jsonl"
        eval_path = folder / "eval.json"
        if write and eval_path.is_file() and answers_path.is_file():
            return IterationRow(**json.loads(eval_path.read_text()))
        prompts = self.eval_prompts
        seeds = [_seed(self.config.seed, 10_000, j, 0) for j in range(len(prompts))]
        bar = progress(f"iteration {i}: evaluate", len(prompts)) if progress else None
        answers = []
        for start in range(0, len(prompts), self.config.gen_batch):
            part = slice(start, start + self.config.gen_batch)
            reqs = self._requests(engine, prompts[part], policy, seeds[part], self.config.eval_temperature)
            answers.extend(engine.generate(reqs))
            if bar is not None:
                bar.update(len(reqs))
        if bar is not None:
            bar.close()
        texts = [a.text for a in answers]
        scores = reward.score(prompts, texts)
        rows = [
            {"prompt": p, "answer": t, "reward": s, "tokens": a.usage.completion_tokens}
            for p, t, s, a in zip(prompts, texts, scores, answers, strict=True)
        ]
        _write_jsonl(answers_path, rows)
        if baseline is None:
            win, judge_win, judge_lc = 50.0, None, None
        else:
            base_rows = _read_jsonl_tolerant(self.root / "iter-0" / "eval_answers.jsonl")
            base_scores = [float(r["reward"]) for r in base_rows]
            win = 100.0 * _mean(
                [
                    reward_outcome(t, s, r["answer"], b)
                    for t, s, r, b in zip(texts, scores, base_rows, base_scores, strict=True)
                ]
            )
            judge_win = judge_lc = None
            if judge is not None:
                say(f"  judging iteration {i} against the start")
                judge_win, judge_lc = judge(list(prompts), texts, [r["answer"] for r in base_rows])
        row = IterationRow(
            iteration=i,
            mean_reward=_mean(scores),
            win_rate=win,
            mean_length=_mean([float(a.usage.completion_tokens) for a in answers]),
            judge_win_rate=judge_win,
            judge_lc_win_rate=judge_lc,
        )
        if write:
            _write_json(eval_path, asdict(row))
        return row

    # ------------------------------------------------------------------ report

    def write_report(self) -> Path:
        """``report.json`` (the table) and ``report.png`` (reward and win rate per iteration)."""
        rows = self.rows()
        _write_json(
            self.root / "report.json",
            {"name": self.name, "meta": self.meta_summary(), "rows": [asdict(r) for r in rows]},
        )
        png = self.root / "report.png"
        if rows:
            plot(
                rows,
                png,
                title=f"helixloom iterate {self.name} ({self.config.method}, reward {self.meta['reward']})",
            )
        return png

    def meta_summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.meta.items() if k not in ("prompts", "eval_prompts")} | {
            "prompts": len(self.prompts),
            "eval_prompts": len(self.eval_prompts),
        }


def plot(rows: Sequence[IterationRow], out: Path, title: str = "") -> None:
    """Mean reward and win rate against the start, per iteration, as a PNG (headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [r.iteration for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(its, [r.mean_reward for r in rows], "o-", color="tab:blue", label="mean reward")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean reward", color="tab:blue")
    ax.set_xticks(its)
    ax2 = ax.twinx()
    ax2.plot(its, [r.win_rate for r in rows], "s--", color="tab:orange", label="win rate vs start (reward)")
    judged = [(r.iteration, r.judge_win_rate) for r in rows if r.judge_win_rate is not None]
    if judged:
        ax2.plot(
            [a for a, _ in judged],
            [b for _, b in judged],
            "^:",
            color="tab:green",
            label="win rate vs start (judge)",
        )
    ax2.set_ylabel("win rate vs start (%)", color="tab:orange")
    ax2.set_ylim(0, 100)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [str(h.get_label()) for h in lines], loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = out.with_name(out.name + ".partial.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)


def format_table(rows: Sequence[IterationRow]) -> str:
    names = [("iter", 4), ("mean reward", 11), ("win rate", 8), ("judge win", 9)]
    names += [("length", 7), ("pairs", 5), ("loss", 7)]
    header = "  ".join(f"{n:>{w}}" for n, w in names)
    lines = [header]
    for r in rows:
        judge = f"{r.judge_win_rate:8.1f}%" if r.judge_win_rate is not None else f"{'-':>9}"
        loss = f"{r.train_loss:7.4f}" if r.train_loss is not None else f"{'-':>7}"
        pairs = f"{r.pairs:5d}" if r.iteration else f"{'-':>5}"
        lines.append(
            f"{r.iteration:>4}  {r.mean_reward:11.4f}  {r.win_rate:7.1f}%  {judge}  "
            f"{r.mean_length:7.1f}  {pairs}  {loss}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- small helpers


def _seed(base: int, iteration: int, prompt: int, sample: int) -> int:
    digest = hashlib.sha256(f"{base}:{iteration}:{prompt}:{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False))
    os.replace(tmp, path)


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _read_jsonl_tolerant(path: Path) -> list[dict[str, Any]]:
    """Rows of a file we append to; a last line cut short by a kill is ignored (and rewritten)."""
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    good = 0
    for line in lines:
        if not line.endswith("\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line.encode("utf-8"))
    if good != path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(good)
    return rows


def _copy_dir(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
