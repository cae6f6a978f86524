"""From scored samples to training rows: which responses pair up for DPO, which one RAFT keeps; and
how answers compare by reward (the win rate against the starting policy).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence

from helixloom.training.iterate_state import BestOfK, EvalAnswer, Pair, Sample, TrainingRow

Messages = list[dict[str, str]]


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


def training_rows(
    samples: Sequence[Sample],
    *,
    method: str,
    how: str,
    rng: random.Random,
    messages: Callable[[str], Messages],
    render: Callable[[Sequence[Mapping[str, str]]], str],
) -> tuple[list[TrainingRow], int]:
    """The training rows of one iteration and the number of tied prompts dropped.

    ``dpo``: a ``Pair`` per picked (chosen, rejected), its prompt rendered by ``render`` from
    ``messages(prompt)``, the same code and model that sampled it. ``raft``: a ``BestOfK`` per
    untied prompt, the conversation ending with its best response.
    """
    rows: list[TrainingRow] = []
    ties = 0
    for s in samples:
        conversation = messages(s.prompt)
        picked, tied = pick_pairs(s.responses, s.rewards, how, rng)
        ties += tied
        if method == "raft":
            if not tied:
                best = picked[0][0] if picked else max(range(len(s.rewards)), key=s.rewards.__getitem__)
                rows.append(BestOfK([*conversation, {"role": "assistant", "content": s.responses[best]}]))
            continue
        prompt = render(conversation)
        for c, r in picked:
            rows.append(Pair(prompt, s.responses[c], s.responses[r], s.rewards[c], s.rewards[r]))
    return rows, ties


def reward_outcome(answer: str, score: float, baseline: str, baseline_score: float) -> float:
    """1 win, 0.5 tie, 0 loss by reward. The same text is a tie whatever the scores say: a batch
    scored with other rows differs in the last bits, and that noise must not decide a win."""
    if answer == baseline or math.isclose(score, baseline_score, rel_tol=1e-5, abs_tol=1e-6):
        return 0.5
    return 1.0 if score > baseline_score else 0.0


def win_rate(answers: Sequence[str], scores: Sequence[float], baseline: Sequence[EvalAnswer]) -> float:
    """% of answers that out-score the baseline's answer to the same prompt (ties count half)."""
    return 100.0 * mean(
        [reward_outcome(t, s, b.answer, b.reward) for t, s, b in zip(answers, scores, baseline, strict=True)]
    )


def mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0
