"""Tune the yes/no evaluator on the user's own ratings (MiniHF's evaluator LoRA tuning).

Every rated example becomes the evaluator's prompt (its template filled with the prompt, the
response and the question) followed by the answer the rating implies: "Yes" for thumbs up, "No"
for thumbs down, as MiniHF's ``lora_tune_evaluator`` did. A share of the examples is held out and
the evaluator's accuracy on it (sign of its yes/no log-odds against the rating) is measured before
and after, so users see whether the tuning helped. The result is a LoRA of the base model: use it
with ``--evaluator-adapter`` in ``weave`` and ``iterate``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helixloom.errors import HelixloomError
from helixloom.training.configs import LoraSFTConfig
from helixloom.training.feedback import LabelledExample as Example
from helixloom.training.sft import train_lora
from helixloom.training.trainer import TrainResult


@dataclass(frozen=True)
class EvaluatorTuneResult:
    train: TrainResult
    examples: int
    held_out: int
    accuracy_before: float | None  # on the held-out examples; None when nothing was held out
    accuracy_after: float | None


def answer_words(template: str) -> tuple[str, str]:
    """The yes/no completions: a bare word after whitespace, else with its leading space."""
    return ("Yes", "No") if template[-1:].isspace() else (" Yes", " No")


def evaluator_rows(examples: Sequence[Example], question: str, template: str) -> list[dict[str, str]]:
    yes, no = answer_words(template)
    return [
        {
            "prompt": template.replace("{prompt}", e.prompt)
            .replace("{response}", e.response)
            .replace("{question}", question),
            "completion": yes if e.label else no,
        }
        for e in examples
    ]


def split(examples: Sequence[Example], held_out: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A stratified split: both labels are represented in the held-out part when there is one."""
    if not 0 <= held_out < 1:
        raise HelixloomError("--held-out must be in [0, 1)", param="held_out")
    rng = random.Random(seed)
    train: list[Example] = []
    test: list[Example] = []
    for label in (0, 1):
        group = [e for e in examples if e.label == label]
        rng.shuffle(group)
        n = round(len(group) * held_out)
        if held_out and n == 0 and len(group) > 1:
            n = 1
        test += group[:n]
        train += group[n:]
    return train, test


def accuracy(
    engine: Any, examples: Sequence[Example], question: str, template: str, adapter: str | None
) -> float:
    """Share of examples where the evaluator's verdict (log-odds sign) agrees with the rating."""
    from helixloom.weave.evaluator import Evaluator, Question

    evaluator = Evaluator(engine, [Question(question)], template=template, adapter=adapter)
    scores = evaluator.score([(e.prompt, e.response) for e in examples])
    return sum((s > 0) == bool(e.label) for s, e in zip(scores, examples, strict=True)) / len(examples)


def train_evaluator(
    base_spec: str,
    examples: Sequence[Example],
    adapter_dir: Path,
    run_dir: Path,
    config: LoraSFTConfig | None = None,
    *,
    question: str,
    template: str | None = None,
    held_out: float = 0.2,
    resume: bool = False,
    measure: bool = True,
) -> EvaluatorTuneResult:
    """Fine-tune an evaluator LoRA on rated examples; measure held-out accuracy before and after."""
    from helixloom.weave.evaluator import default_template

    template = template if template is not None else default_template()
    for name in ("{prompt}", "{response}", "{question}"):
        if name not in template:
            raise HelixloomError(f"the evaluator template has no {name}", param="template")
    if not question.strip():
        raise HelixloomError("the evaluator question is empty", param="question")
    labels = {e.label for e in examples}
    if len(examples) < 2 or labels != {0, 1}:
        raise HelixloomError(
            "evaluator tuning needs rated examples of both kinds (thumbs up and thumbs down)",
            f"found {len(examples)} examples with labels {sorted(labels)}",
        )
    config = config or LoraSFTConfig()
    train, test = split(examples, held_out, config.seed)
    engine = None
    before = after = None
    if measure and test:
        from helixloom.engine import load_engine

        engine = load_engine(base_spec)
        before = accuracy(engine, test, question, template, None)
    result = train_lora(
        base_spec, evaluator_rows(train, question, template), adapter_dir, run_dir, config, resume=resume
    )
    if engine is not None:
        engine.load_adapter("tuned-evaluator", str(adapter_dir))
        after = accuracy(engine, test, question, template, "tuned-evaluator")
        engine.close()
    return EvaluatorTuneResult(result, len(examples), len(test), before, after)
