"""What an iterate run keeps on disk, as types: its settings, the scored samples, the training rows,
the training summary, the evaluation answers and the per-iteration table row.

Each type reads and writes the same JSON as before it was a type (old runs resume): ``from_json``
takes a row as it is in the file, ``to_json`` gives it back. JSONL files the loop appends to are read
with ``read_rows``, which drops a last line a kill cut short.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from helixloom.training.configs import IterateConfig, LoraDPOConfig


@dataclass(frozen=True)
class RunMeta:
    """A run's settings and prompts (``run.json``), written once when the run is created."""

    name: str
    base: str
    reward: str
    config: IterateConfig
    train: LoraDPOConfig
    prompts: list[str]
    eval_prompts: list[str]
    judge: str | None = None
    start_adapter: str | None = None
    evaluator_adapter: str | None = None
    created: float = field(default_factory=time.time)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunMeta:
        train = dict(d["train"])
        train["target_modules"] = tuple(train["target_modules"])
        return cls(
            name=str(d["name"]),
            base=str(d["base"]),
            reward=str(d["reward"]),
            config=IterateConfig(**d["config"]),
            train=LoraDPOConfig(**train),
            prompts=list(d["prompts"]),
            eval_prompts=list(d["eval_prompts"]),
            judge=d.get("judge"),
            start_adapter=d.get("start_adapter"),
            evaluator_adapter=d.get("evaluator_adapter"),
            created=float(d.get("created", 0.0)),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The settings without the prompts themselves (their counts instead), for reports."""
        return {k: v for k, v in self.to_json().items() if k not in ("prompts", "eval_prompts")} | {
            "prompts": len(self.prompts),
            "eval_prompts": len(self.eval_prompts),
        }


@dataclass(frozen=True)
class Sample:
    """The K responses to one prompt, with their rewards and lengths (a line of ``samples.jsonl``)."""

    index: int  # the prompt's position in the run's prompts
    prompt: str
    responses: list[str]
    rewards: list[float]
    tokens: list[int]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Sample:
        return cls(
            index=int(d["index"]),
            prompt=str(d["prompt"]),
            responses=[str(r) for r in d["responses"]],
            rewards=[float(r) for r in d["rewards"]],
            tokens=[int(t) for t in d.get("tokens", [])],
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Pair:
    """A DPO training pair: the rendered prompt, the better and the worse response and their rewards."""

    prompt: str
    chosen: str
    rejected: str
    chosen_reward: float
    rejected_reward: float

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Pair:
        return cls(
            prompt=str(d["prompt"]),
            chosen=str(d["chosen"]),
            rejected=str(d["rejected"]),
            chosen_reward=float(d["chosen_reward"]),
            rejected_reward=float(d["rejected_reward"]),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BestOfK:
    """A RAFT training row: the conversation ending with the best of the K responses."""

    messages: list[dict[str, str]]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BestOfK:
        return cls(messages=[dict(m) for m in d["messages"]])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


TrainingRow = Pair | BestOfK


@dataclass(frozen=True)
class TrainSummary:
    """What an iteration's training did (``train.json``)."""

    steps: int
    final_loss: float | None
    changed_fraction: float | None
    resumed_from_step: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainSummary:
        return cls(
            steps=int(d.get("steps", 0)),
            final_loss=d.get("final_loss"),
            changed_fraction=d.get("changed_fraction"),
            resumed_from_step=int(d.get("resumed_from_step", 0)),
            tokens=int(d.get("tokens", 0)),
            seconds=float(d.get("seconds", 0.0)),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvalAnswer:
    """One evaluation answer and its reward (a line of ``eval_answers.jsonl``)."""

    prompt: str
    answer: str
    reward: float
    tokens: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EvalAnswer:
        return cls(str(d["prompt"]), str(d["answer"]), float(d["reward"]), int(d.get("tokens", 0)))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IterationRow:
    """One line of the per-iteration table (iteration 0 is the starting policy)."""

    iteration: int
    mean_reward: float
    win_rate: float  # % of evaluation prompts where this policy's answer out-scores the start's (ties half)
    mean_length: float  # tokens
    judge_win_rate: float | None = None  # None when unjudged, or withheld (judge_consistency too low)
    judge_lc_win_rate: float | None = None
    judge_consistency: float | None = None  # % of pairs whose verdict survived swapping the order
    sample_mean_reward: float | None = None  # mean reward of the K samples this iteration trained on
    sample_best_reward: float | None = None  # mean of the per-prompt best
    pairs: int = 0
    ties_dropped: int = 0
    train_loss: float | None = None
    train_steps: int = 0
    changed_fraction: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file we append to; a last line cut short by a kill is ignored (and cut off,
    so the next append starts on a clean line)."""
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
