"""Win rate of A over B from pairwise verdicts, and its length-controlled variant.

``win_rate``: (wins + ties/2) / n × 100 with its standard error, the soft win rate (mean preference
× 100), and a *length-controlled* win rate after AlpacaEval's ``length_controlled_minimal``: a logistic
GLM ``p = sigmoid(b0 + b1·tanh(Δlen / std(Δlen)))`` fitted on the soft preferences (Newton's method
with a tiny L2), reported as sigmoid(b0) × 100, i.e. the predicted preference had both answers been
the same length (lengths in characters). ``evaluate_winrate`` answers prompts with a model and a
baseline and reports the model's win rate under a pairwise judge.

Every report states the judge's **position consistency**: the share of pairs, asked in both orders,
on which the two verdicts name the same winner. A judge that follows positions instead of answers
(the 270M default flips its verdict when the order is swapped) turns every pair into a tie and makes
any win rate 50%; below ``min_consistency`` the report withholds the rates (None) and says why, so
noise is never printed as a result. The raw win rate is kept as ``raw_win_rate``.

Numbers from a small local judge are for comparing your own models with each other; they are not
comparable with published AlpacaEval or MT-bench scores (other judge, baseline and questions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from helixloom.engine import Engine, SamplingParams
from helixloom.errors import HelixloomError
from helixloom.evals.pairwise import PairVerdict, PairwiseJudge
from helixloom.evals.prompts import Progress, Prompt, answer, answer_requests, in_batches, question_text


@dataclass(frozen=True)
class LengthControlled:
    """The length-controlled fit: ``win_rate`` = sigmoid(intercept) × 100; ``length_coef`` is b1."""

    win_rate: float
    intercept: float
    length_coef: float


def _sigmoid(x: Any) -> Any:
    import numpy as np

    return 0.5 * (1.0 + np.tanh(0.5 * x))


def length_controlled(
    preferences: Sequence[float],
    lengths_a: Sequence[int | float],
    lengths_b: Sequence[int | float],
    *,
    l2: float = 1e-4,
) -> LengthControlled:
    """AlpacaEval's ``length_controlled_minimal`` GLM on soft labels, fitted by Newton's method.

    ``p_i = sigmoid(b0 + b1 · tanh(Δ_i / std(Δ)))`` with Δ = len(A) − len(B); minimises the cross
    entropy against ``preferences`` (P(A better), in [0, 1]) plus ``l2/2 · |b|²`` (which keeps the fit
    finite when every preference is 0 or 1). The length-controlled win rate is the prediction at
    Δ = 0: sigmoid(b0) × 100.
    """
    import numpy as np

    y = np.asarray(preferences, dtype=float)
    delta = np.asarray(lengths_a, dtype=float) - np.asarray(lengths_b, dtype=float)
    if not len(y) == len(delta):
        raise HelixloomError(f"{len(y)} preferences but {len(delta)} length differences")
    if len(y) == 0:
        raise HelixloomError("no preferences to fit")
    if np.any((y < 0) | (y > 1)) or np.any(~np.isfinite(y)):
        raise HelixloomError("preferences must lie in [0, 1]")
    std = float(delta.std(ddof=1)) if len(delta) > 1 else 0.0
    x = np.tanh(delta / std) if std > 0 else np.zeros_like(delta)
    design = np.stack([np.ones_like(x), x], axis=1)
    beta = np.zeros(2)
    ridge = l2 * np.eye(2)
    for _ in range(100):
        p = _sigmoid(design @ beta)
        grad = design.T @ (p - y) + l2 * beta
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + ridge
        step = np.linalg.solve(hessian, grad)
        beta = beta - step
        if float(np.max(np.abs(step))) < 1e-10:
            break
    b0, b1 = float(beta[0]), float(beta[1])
    return LengthControlled(float(_sigmoid(b0)) * 100.0, b0, b1)


@dataclass(frozen=True)
class WinRateReport:
    """A's win rate over B. ``n`` counts the pairs with a verdict; ``malformed`` the pairs left out
    because a verdict could not be read, ``malformed_verdicts`` the unreadable order verdicts. Rates
    are percentages; None when there is nothing to rate."""

    n: int
    wins: int
    losses: int
    ties: int
    malformed: int
    malformed_verdicts: int
    win_rate: float | None
    standard_error: float | None
    soft_win_rate: float | None
    lc_win_rate: float | None
    lc_intercept: float | None
    lc_length_coef: float | None
    mean_length_a: float | None
    mean_length_b: float | None
    consistency: float | None = None  # % of pairs asked in both orders whose two verdicts agree
    consistency_n: int = 0  # pairs asked in both orders with two readable verdicts
    min_consistency: float = 50.0
    raw_win_rate: float | None = None  # the win rate even when withheld

    @property
    def reliable(self) -> bool | None:
        """Whether the judge's verdicts depend on the answers more than on their order (None: unknown,
        no pair was asked in both orders)."""
        return None if self.consistency is None else self.consistency >= self.min_consistency

    @property
    def unreliable_reason(self) -> str | None:
        if self.reliable is not False:
            return None
        return (
            f"the judge is unreliable: it named the same winner in both orders for only "
            f"{self.consistency:.0f}% of {self.consistency_n} pairs (needs {self.min_consistency:g}%); "
            "its win rate is withheld"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reliable": self.reliable, "unreliable_reason": self.unreliable_reason}


def win_rate(
    verdicts: Sequence[PairVerdict],
    lengths_a: Sequence[int | float],
    lengths_b: Sequence[int | float],
    *,
    min_consistency: float = 50.0,
) -> WinRateReport:
    """The win rate of A (hard verdicts, ties half), its standard error, the soft win rate and the
    length-controlled win rate (see ``length_controlled``), all × 100. Lengths are in characters.
    With the judge's position consistency below ``min_consistency`` % the rates are None (withheld)."""
    import numpy as np

    if not len(verdicts) == len(lengths_a) == len(lengths_b):
        raise HelixloomError(f"{len(verdicts)} verdicts but {len(lengths_a)}/{len(lengths_b)} lengths")
    keep = [i for i, v in enumerate(verdicts) if v.winner != "error"]
    scores = np.array([verdicts[i].score for i in keep], dtype=float)
    prefs = [float(verdicts[i].preference or 0.0) for i in keep]  # only an error has none
    la = [lengths_a[i] for i in keep]
    lb = [lengths_b[i] for i in keep]
    n = len(keep)
    lc = length_controlled(prefs, la, lb) if n else None
    checked = [v.consistent for v in verdicts if v.consistent is not None]
    consistency = 100.0 * sum(checked) / len(checked) if checked else None
    withhold = consistency is not None and consistency < min_consistency
    raw = float(scores.mean()) * 100 if n else None
    report = WinRateReport(
        n=n,
        wins=sum(1 for i in keep if verdicts[i].winner == "A"),
        losses=sum(1 for i in keep if verdicts[i].winner == "B"),
        ties=sum(1 for i in keep if verdicts[i].winner == "tie"),
        malformed=len(verdicts) - n,
        malformed_verdicts=sum(v.malformed for v in verdicts),
        win_rate=float(scores.mean()) * 100 if n else None,
        standard_error=float(scores.std(ddof=1) / math.sqrt(n)) * 100 if n > 1 else None,
        soft_win_rate=float(np.mean(prefs)) * 100 if n else None,
        lc_win_rate=lc.win_rate if lc else None,
        lc_intercept=lc.intercept if lc else None,
        lc_length_coef=lc.length_coef if lc else None,
        mean_length_a=float(np.mean(la)) if n else None,
        mean_length_b=float(np.mean(lb)) if n else None,
        consistency=consistency,
        consistency_n=len(checked),
        min_consistency=min_consistency,
        raw_win_rate=raw,
    )
    if withhold:
        report = replace(report, win_rate=None, standard_error=None, soft_win_rate=None, lc_win_rate=None)
    return report


# ---------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class WinRateRow:
    prompt: str  # the question as the judge saw it
    answer_a: str
    answer_b: str
    verdict: PairVerdict

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "answer_a": self.answer_a,
            "answer_b": self.answer_b,
            **self.verdict.to_dict(),
        }


@dataclass(frozen=True)
class WinRateEvaluation:
    report: WinRateReport
    rows: list[WinRateRow]

    def to_dict(self) -> dict[str, Any]:
        return {"report": self.report.to_dict(), "rows": [r.to_dict() for r in self.rows]}


def evaluate_winrate(
    model: Engine,
    baseline: Engine,
    prompts: Sequence[Prompt],
    judge: PairwiseJudge,
    params: SamplingParams,
    *,
    adapter: str | None = None,
    baseline_adapter: str | None = None,
    system: str | None = None,
    baseline_system: str | None = None,
    batch_size: int = 8,
    on_progress: Progress | None = None,
) -> WinRateEvaluation:
    """Answer every prompt with the model (A: ``model`` + ``adapter``) and the baseline (B), judge A
    against B, and report A's win rate with every row.

    ``model`` and ``baseline`` may be the same engine with different adapters: on a backend that mixes
    adapters in a batch both sides are then answered in one batch. ``system`` is A's system message
    (where a prompt has none), ``baseline_system`` B's (None: the same as A's; "": none)."""
    if not prompts:
        raise HelixloomError("no prompts to evaluate")
    if baseline_system is None:
        baseline_system = system
    together = model is baseline and model.supports_mixed_adapter_batch
    rows: list[WinRateRow] = []
    for chunk in in_batches(prompts, batch_size, on_progress):
        if together:
            requests = answer_requests(model, chunk, params, adapter, system)
            requests += answer_requests(baseline, chunk, params, baseline_adapter, baseline_system)
            texts = [r.text.strip() for r in model.generate(requests)]
            answers_a, answers_b = texts[: len(chunk)], texts[len(chunk) :]
        else:
            answers_a = answer(model, chunk, params, adapter=adapter, system=system)
            answers_b = answer(baseline, chunk, params, adapter=baseline_adapter, system=baseline_system)
        verdicts = judge.compare(chunk, answers_a, answers_b)
        for p, a, b, v in zip(chunk, answers_a, answers_b, verdicts, strict=True):
            rows.append(WinRateRow(question_text(p), a, b, v))
    report = win_rate(
        [r.verdict for r in rows], [len(r.answer_a) for r in rows], [len(r.answer_b) for r in rows]
    )
    return WinRateEvaluation(report, rows)
