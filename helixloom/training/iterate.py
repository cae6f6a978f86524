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
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from helixloom import atomic, paths
from helixloom.engine import Engine, GenerationRequest, sampling
from helixloom.errors import HelixloomError
from helixloom.prompting import render
from helixloom.rewards import Reward
from helixloom.training.configs import IterateConfig, LoraDPOConfig
from helixloom.training.iterate_report import write_report
from helixloom.training.iterate_state import (
    BestOfK,
    EvalAnswer,
    IterationRow,
    Pair,
    RunMeta,
    Sample,
    TrainingRow,
    TrainSummary,
    read_rows,
)
from helixloom.training.pairing import mean, training_rows, win_rate

# (prompts, policy answers, baseline answers) -> (win rate %, length-controlled win rate %); None when
# the judge could not decide any pair
# (prompts, answers, the start's answers) -> (win %, length-controlled win %, the judge's position
# consistency %); the win rates are None where the judge was too inconsistent to report them.
JudgeFn = Callable[[list[str], list[str], list[str]], tuple[float | None, float | None, float | None]]
Event = Callable[[str], None]


class IterativeRun:
    """A named run under ``HELIXLOOM_HOME/runs/iterate/NAME``; create it once, execute (or resume) it."""

    def __init__(self, root: Path, state: RunMeta) -> None:
        self.root = root
        self.state = state
        self.config = state.config
        self.train_config = state.train
        self.prompts = state.prompts
        self.eval_prompts = state.eval_prompts

    @property
    def meta(self) -> dict[str, Any]:
        """``run.json`` as a dict (for callers that print it or pass it on)."""
        return self.state.to_json()

    # ------------------------------------------------------------------ creation

    @staticmethod
    def folder(name: str) -> Path:
        return paths.home() / "runs" / "iterate" / paths.check_name(name, "run name")

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
        state = RunMeta(
            name=name,
            base=base,
            reward=reward,
            judge=judge,
            start_adapter=start_adapter,
            evaluator_adapter=evaluator_adapter,
            config=config or IterateConfig(),
            train=train or LoraDPOConfig(),
            prompts=prompts,
            eval_prompts=[p for p in (eval_prompts or prompts) if p.strip()],
        )
        atomic.write_json(root / "run.json", state.to_json())
        return cls(root, state)

    @classmethod
    def open(cls, name: str) -> IterativeRun:
        root = cls.folder(name)
        if not (root / "run.json").is_file():
            raise HelixloomError(
                f"no iterate run named {name}", f"start it: helixloom iterate --name {name} ..."
            )
        return cls(root, RunMeta.from_json(json.loads((root / "run.json").read_text())))

    @property
    def name(self) -> str:
        return self.state.name

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
            row.sample_mean_reward = mean([r for s in samples for r in s.rewards])
            row.sample_best_reward = mean([max(s.rewards) for s in samples])
            row.pairs = len(pairs)
            row.ties_dropped = ties
            row.train_loss = trained.final_loss
            row.train_steps = trained.steps
            row.changed_fraction = trained.changed_fraction
            row.seconds = {k: round(v, 2) for k, v in seconds.items()}
            atomic.write_json(self.root / f"iter-{i}" / "eval.json", asdict(row))
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
    ) -> list[Sample]:
        """K scored samples per prompt, appended to ``samples.jsonl`` prompt by prompt (resumable)."""
        folder = self.root / f"iter-{i}"
        folder.mkdir(exist_ok=True)
        path = folder / "samples.jsonl"
        done = [Sample.from_json(r) for r in read_rows(path)]
        have = {s.index for s in done}
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
                    sample = Sample(
                        index=j,
                        prompt=self.prompts[j],
                        responses=texts,
                        rewards=[float(x) for x in scores],
                        tokens=[r.usage.completion_tokens for r in group],
                    )
                    # Appended and flushed prompt by prompt: a kill loses at most the line being written.
                    out.write(json.dumps(sample.to_json(), ensure_ascii=False) + "\n")
                    out.flush()
                    done.append(sample)
                if bar is not None:
                    bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return sorted(done, key=lambda s: s.index)

    def _pairs(self, i: int, samples: list[Sample], engine: Engine) -> tuple[list[TrainingRow], int]:
        """Training rows from the scored samples (deterministic: written once, re-read on resume)."""
        path = self.root / f"iter-{i}" / "train_rows.jsonl"
        meta_path = self.root / f"iter-{i}" / "train_rows.json"
        if path.is_file() and meta_path.is_file():
            kind = BestOfK if self.config.method == "raft" else Pair
            rows: list[TrainingRow] = [kind.from_json(r) for r in read_rows(path)]
            return rows, int(json.loads(meta_path.read_text())["ties"])
        rows, ties = training_rows(
            samples,
            method=self.config.method,
            how=self.config.pairs,
            rng=random.Random(_seed(self.config.seed, i, -1, -1)),
            messages=self._messages,
            # The training prompt is the sampling prompt, rendered by the same code for the same model.
            render=lambda messages: render(engine, messages).prompt,
        )
        atomic.write_jsonl(path, [r.to_json() for r in rows])
        atomic.write_json(meta_path, {"ties": ties, "rows": len(rows)})
        return rows, ties

    def _train(self, i: int, rows: list[TrainingRow], prev: Path | None, say: Event) -> TrainSummary:
        out = self.adapter_dir(i)
        result_path = self.root / f"iter-{i}" / "train.json"
        if (out / "adapter_config.json").is_file() and result_path.is_file():
            return TrainSummary.from_json(json.loads(result_path.read_text()))
        run_dir = self.root / f"iter-{i}" / "checkpoints"
        resume = any(run_dir.glob("checkpoint-*"))
        if not rows:
            # Every prompt tied: nothing to learn this iteration; the policy carries over unchanged.
            say("  no preference signal this iteration (all prompts tied); the policy is unchanged")
            if prev is not None:
                atomic.copy_dir(prev, out)
                carried = TrainSummary(steps=0, final_loss=None, changed_fraction=0.0)
                atomic.write_json(result_path, carried.to_json())
                return carried
            raise HelixloomError(
                "the reward gave every response of every prompt the same score in iteration 1",
                "use a reward that tells the responses apart, more prompts, or a larger --k",
            )
        if resume:
            say("  resuming training from its last checkpoint")
        cfg = LoraDPOConfig(**{**asdict(self.train_config), "seed": self.train_config.seed + i})
        dicts = [r.to_json() for r in rows]
        if self.config.method == "raft":
            from helixloom.training.sft import train_lora  # lazy: torch and TRL only when training

            trained = train_lora(self.state.base, dicts, out, run_dir, cfg, init_adapter=prev, resume=resume)
        else:
            from helixloom.training.dpo import train_dpo

            trained = train_dpo(self.state.base, dicts, out, run_dir, cfg, init_adapter=prev, resume=resume)
        summary = TrainSummary(
            steps=trained.steps,
            final_loss=trained.final_loss,
            changed_fraction=trained.changed_fraction,
            resumed_from_step=trained.resumed_from_step,
            tokens=trained.tokens,
            seconds=trained.seconds,
        )
        atomic.write_json(result_path, summary.to_json())
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
            EvalAnswer(p, t, s, a.usage.completion_tokens)
            for p, t, s, a in zip(prompts, texts, scores, answers, strict=True)
        ]
        atomic.write_jsonl(answers_path, [r.to_json() for r in rows])
        if baseline is None:
            win, judge_win, judge_lc, judge_consistency = 50.0, None, None, None
        else:
            base_rows = [
                EvalAnswer.from_json(r) for r in read_rows(self.root / "iter-0" / "eval_answers.jsonl")
            ]
            win = win_rate(texts, scores, base_rows)
            judge_win = judge_lc = judge_consistency = None
            if judge is not None:
                say(f"  judging iteration {i} against the start")
                judge_win, judge_lc, judge_consistency = judge(
                    list(prompts), texts, [r.answer for r in base_rows]
                )
        row = IterationRow(
            iteration=i,
            mean_reward=mean(scores),
            win_rate=win,
            mean_length=mean([float(a.usage.completion_tokens) for a in answers]),
            judge_win_rate=judge_win,
            judge_lc_win_rate=judge_lc,
            judge_consistency=judge_consistency,
        )
        if write:
            atomic.write_json(eval_path, asdict(row))
        return row

    # ------------------------------------------------------------------ report

    def write_report(self) -> Path:
        """``report.json`` (the table) and ``report.png`` (reward and win rate per iteration)."""
        return write_report(self.root, self.state, self.rows())


# ---------------------------------------------------------------------------- small helpers


def _seed(base: int, iteration: int, prompt: int, sample: int) -> int:
    digest = hashlib.sha256(f"{base}:{iteration}:{prompt}:{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
