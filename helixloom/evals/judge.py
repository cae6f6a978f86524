"""LLM-as-judge evaluations: pairwise verdicts, win rates, single-answer grades, replay of rated sessions.

**Pairwise judge** (``PairwiseJudge``). MT-bench's ``pair-v2`` prompt (``data/evals/pair-v2.yaml``)
shows a question and two answers, A and B; the judge says ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie).
Every pair is asked in *both* orders, to cancel position bias, and the two verdicts combine as in
MT-bench: both orders agree → a win or a loss; they disagree, or either says C → a tie. Alongside the
verdict each pair keeps a soft preference, P(A better), averaged over both orders (AlpacaEval's
preference). Two ways to read a verdict:

- ``logprobs``: the judge's prompt ends with ``Final verdict: [[`` after the assistant turn begins, and
  the next-token probabilities of A, B and C are read (works on small base models, no sampling; the
  verdict is the most likely letter, P(first better) = P(A) + P(C)/2 over the three);
- ``text``: the judge writes its explanation and the verdict (MT-bench), parsed from the last
  ``[[A]]``/``[[B]]``/``[[C]]``; for engines without log-probabilities. A reply without one is
  *malformed*: counted and reported, never a crash. A pair with a malformed verdict in either order
  has no verdict (``"error"``) and is left out of the win rate.

``"auto"`` picks ``logprobs`` when the engine declares ``supports_logprobs``.

**Win rate** (``win_rate``): (wins + ties/2) / n × 100 with its standard error, the soft win rate
(mean preference × 100), and a *length-controlled* win rate after AlpacaEval's
``length_controlled_minimal``: a logistic GLM ``p = sigmoid(b0 + b1·tanh(Δlen / std(Δlen)))`` fitted
on the soft preferences (Newton's method with a tiny L2), reported as sigmoid(b0) × 100, i.e. the
predicted preference had both answers been the same length (lengths in characters).

**Grading** (``Grader``): MT-bench ``single-v1``, a 1–10 rating parsed from ``[[n]]`` (fallback ``[n]``);
a reply without a rating in range is malformed (rating −1) and left out of the mean.

**As a reward** (``JudgeReward``): the K responses to a prompt play a round-robin tournament (every
pair, both orders; win 1, tie 0.5), as RLHFlow's pairwise preference model; the scores are win counts.

**Replay** (``replay_sessions``): stored answers that users rated thumbs up or down are re-asked to the
current model (or adapter) and the new answer is judged against the rated one; the report keeps the
win rate against liked answers and against disliked answers apart.

Numbers from a small local judge are for comparing your own models with each other; they are not
comparable with published AlpacaEval or MT-bench scores (other judge, baseline and questions).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from helixloom import prompting as chat
from helixloom.engine import Engine, GenerationRequest, SamplingParams, sampling
from helixloom.errors import HelixloomError
from helixloom.rewards import Reward

if TYPE_CHECKING:
    from helixloom.engine import NextTokenLogprobs
    from helixloom.store import Message, Store

#: A prompt to answer: a user message, or a chat message list (role, content) ending with a user turn.
Prompt = str | Sequence[Mapping[str, str]]
Choice = Literal["A", "B", "C"]
Winner = Literal["A", "B", "tie", "error"]
JudgeMode = Literal["auto", "logprobs", "text"]

LETTERS: tuple[Choice, ...] = ("A", "B", "C")
# The winner a verdict names when answer A is shown first, and when it is shown second.
SHOWN_FIRST: dict[Choice, Winner] = {"A": "A", "B": "B", "C": "tie"}
SHOWN_SECOND: dict[Choice, Winner] = {"A": "B", "B": "A", "C": "tie"}
# The verdict letters as the next token after "[[", with and without a leading space.
VERDICT_TOKENS = ("A", "B", "C", " A", " B", " C")
PAIR_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
SHORT_VERDICT = re.compile(r"^\s*([ABC])(?:\s|\]|$)")
RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")
MIN_RATING, MAX_RATING = 1.0, 10.0
JUDGE_MAX_TOKENS = 512  # MT-bench's judge gets 2048; a short explanation fits in far less
SHORT_MAX_TOKENS = 8  # without an explanation only the verdict is generated
TEMPLATE_FIELDS = {"pair": ("{question}", "{answer_a}", "{answer_b}"), "single": ("{question}", "{answer}")}
BUILTIN_TEMPLATES = {"pair": "pair-v2", "single": "single-v1"}


# ---------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class JudgeTemplate:
    """A judge prompt: a system text, a user template and the prefix that starts the verdict."""

    name: str
    system: str
    user: str
    verdict_prefix: str

    @classmethod
    def load(cls, name_or_path: str | None = None, *, kind: Literal["pair", "single"]) -> JudgeTemplate:
        """A built-in template by name (``pair-v2``, ``single-v1``; the default for ``kind`` when None)
        or a YAML file with ``system``, ``user`` and ``verdict_prefix`` keys."""
        name_or_path = name_or_path or BUILTIN_TEMPLATES[kind]
        path = Path(name_or_path).expanduser()
        if path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise HelixloomError(f"judge template {path} does not exist")
            text = path.read_text(encoding="utf-8")
        else:
            builtin = resources.files("helixloom") / "data" / "evals" / f"{name_or_path}.yaml"
            if not builtin.is_file():
                raise HelixloomError(
                    f"unknown judge template {name_or_path!r}",
                    f"use {BUILTIN_TEMPLATES[kind]} or a .yaml file with system, user and verdict_prefix",
                )
            text = builtin.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise HelixloomError(f"judge template {name_or_path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise HelixloomError(f"judge template {name_or_path} must be a YAML mapping")
        unknown = sorted(set(data) - {"name", "system", "user", "verdict_prefix"})
        if unknown:
            raise HelixloomError(f"judge template {name_or_path}: unknown keys {', '.join(unknown)}")
        if not isinstance(data.get("user"), str) or not isinstance(data.get("verdict_prefix"), str):
            raise HelixloomError(f"judge template {name_or_path} needs string keys user and verdict_prefix")
        template = cls(
            name=str(data.get("name") or path.stem),
            system=str(data.get("system") or ""),
            user=data["user"],
            verdict_prefix=data["verdict_prefix"],
        )
        missing = [f for f in TEMPLATE_FIELDS[kind] if f not in template.user]
        if missing:
            raise HelixloomError(
                f"judge template {name_or_path} has no {', '.join(missing)} in its user text",
                f"a {kind} template fills {', '.join(TEMPLATE_FIELDS[kind])}",
            )
        return template

    def messages(self, **fields: str) -> list[dict[str, str]]:
        """The chat messages with every ``{field}`` filled in one pass (answers may contain braces)."""
        pattern = re.compile(r"\{(" + "|".join(re.escape(k) for k in fields) + r")\}")
        user = pattern.sub(lambda m: fields[m.group(1)], self.user)
        return ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": user}
        ]


def _template(template: JudgeTemplate | str | None, kind: Literal["pair", "single"]) -> JudgeTemplate:
    return template if isinstance(template, JudgeTemplate) else JudgeTemplate.load(template, kind=kind)


# ---------------------------------------------------------------------------- prompts


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """A prompt as chat messages: a string becomes one user message."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise HelixloomError("a prompt is empty")
        return [{"role": "user", "content": prompt}]
    messages = [{"role": str(m.get("role")), "content": str(m.get("content", ""))} for m in prompt]
    if not messages or messages[-1]["role"] != "user":
        raise HelixloomError("a prompt's messages must end with a user message")
    return messages


def question_text(prompt: Prompt) -> str:
    """The question as the judge sees it: the user message of a single turn, or the conversation
    written out (MT-bench's multi-turn style) with the last user message at the end."""
    messages = as_messages(prompt)
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    labels = {"user": "### User:", "assistant": "### Assistant:"}
    return "\n\n".join(f"{labels.get(m['role'], m['role'])}\n{m['content']}" for m in turns)


def answer(
    engine: Engine,
    prompts: Sequence[Prompt],
    params: SamplingParams,
    *,
    adapter: str | None = None,
    system: str | None = None,
) -> list[str]:
    """Answer every prompt in one batch (chat-rendered for the model), stripped of surrounding space."""
    if not prompts:
        return []
    return [
        r.text.strip() for r in engine.generate(_answer_requests(engine, prompts, params, adapter, system))
    ]


def _answer_requests(
    engine: Engine, prompts: Sequence[Prompt], params: SamplingParams, adapter: str | None, system: str | None
) -> list[GenerationRequest]:
    """The generation requests that answer ``prompts``; ``system`` is added where a prompt has none."""
    requests = []
    for prompt in prompts:
        messages = as_messages(prompt)
        if system and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": system}, *messages]
        rendered = chat.render(engine, messages)
        p = params.model_copy(
            update={"stop": (*params.stop, *rendered.stop), "token_healing": rendered.token_healing}
        )
        requests.append(GenerationRequest(rendered.prompt, p, adapter))
    return requests


# ---------------------------------------------------------------------------- pairwise verdicts


@dataclass(frozen=True)
class OrderVerdict:
    """The judge's verdict on one ordering of a pair: ``choice`` is the letter (None: malformed),
    ``p_first`` the probability that the answer shown first is better (1, 0 or 0.5 in text mode),
    ``probs`` the normalised A/B/C probabilities (logprobs mode), ``text`` the judge's reply (text mode)."""

    choice: Choice | None
    p_first: float | None
    probs: dict[str, float] | None = None
    text: str = ""

    @property
    def malformed(self) -> bool:
        return self.choice is None

    def to_dict(self) -> dict[str, Any]:
        return {"choice": self.choice, "p_first": self.p_first, "probs": self.probs, "text": self.text}


@dataclass(frozen=True)
class PairVerdict:
    """Answer A against answer B, both orders combined.

    ``winner`` is ``"A"``/``"B"`` when both orders agree, ``"tie"`` when they disagree or either says
    C, ``"error"`` when either order's verdict is malformed. ``preference`` is P(A better) averaged
    over both orders (None on error). ``forward`` shows A first, ``backward`` shows B first; both are
    None when the answers were identical (a tie, not asked).
    """

    winner: Winner
    preference: float | None
    forward: OrderVerdict | None
    backward: OrderVerdict | None

    @property
    def score(self) -> float | None:
        """1 for a win of A, 0 for a loss, 0.5 for a tie, None without a verdict."""
        return {"A": 1.0, "B": 0.0, "tie": 0.5}.get(self.winner)

    @property
    def malformed(self) -> int:
        """How many of the two order verdicts could not be read."""
        return sum(1 for v in (self.forward, self.backward) if v is not None and v.malformed)

    @classmethod
    def combine(cls, forward: OrderVerdict, backward: OrderVerdict) -> PairVerdict:
        if forward.choice is None or backward.choice is None:
            return cls("error", None, forward, backward)
        first, second = SHOWN_FIRST[forward.choice], SHOWN_SECOND[backward.choice]
        winner: Winner = first if first == second else "tie"
        assert forward.p_first is not None and backward.p_first is not None
        return cls(winner, (forward.p_first + 1.0 - backward.p_first) / 2, forward, backward)

    def to_dict(self) -> dict[str, Any]:
        return {
            "winner": self.winner,
            "preference": self.preference,
            "forward": self.forward.to_dict() if self.forward else None,
            "backward": self.backward.to_dict() if self.backward else None,
        }


def letter_probs(result: NextTokenLogprobs) -> dict[str, float] | None:
    """P(A), P(B), P(C) renormalised over the three, from the asked candidates and the top tokens
    (a remote server reports only its top tokens); None when no verdict letter was scored."""
    scored: dict[str, float] = {t.token: t.logprob for t in result.top}
    scored.update({tok: lp for tok, lp in result.candidates.items() if lp is not None})
    per_letter: dict[str, list[float]] = {letter: [] for letter in LETTERS}
    for tok, lp in scored.items():
        key = tok.strip().rstrip("]").strip()
        if key in per_letter and lp > -math.inf:
            per_letter[key].append(lp)
    values = [lp for lps in per_letter.values() for lp in lps]
    if not values:
        return None
    top = max(values)
    mass = {letter: sum(math.exp(lp - top) for lp in lps) for letter, lps in per_letter.items()}
    total = sum(mass.values())
    return {letter: m / total for letter, m in mass.items()}


def parse_pair_verdict(text: str) -> Choice | None:
    """The last ``[[A]]``, ``[[B]]`` or ``[[C]]`` in a judge's reply (the verdict follows the
    explanation), or None when there is none."""
    found = PAIR_VERDICT.findall(text)
    return found[-1] if found else None


class PairwiseJudge:
    """Compares answer A with answer B to the same prompt, asking ``engine`` in both orders.

    ``mode``: ``"logprobs"`` reads the verdict from next-token probabilities, ``"text"`` generates it
    (greedy) and parses it, ``"auto"`` takes logprobs when the engine supports them. ``explain=False``
    (text mode) skips MT-bench's explanation: the verdict prefix is put in the judge's mouth and only a
    few tokens are generated. ``adapter`` is an adapter already loaded on ``engine`` (a tuned judge).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        adapter: str | None = None,
        template: JudgeTemplate | str | None = None,
        mode: JudgeMode = "auto",
        explain: bool = True,
        max_tokens: int = JUDGE_MAX_TOKENS,
    ) -> None:
        if mode not in ("auto", "logprobs", "text"):
            raise HelixloomError(f"unknown judge mode {mode!r}", "use auto, logprobs or text", param="mode")
        if mode == "logprobs" and not engine.supports_logprobs:
            raise HelixloomError(
                f"the {engine.backend} engine cannot give log-probabilities for the judge",
                "use --judge-mode text",
            )
        self.engine = engine
        self.adapter = adapter
        self.template = _template(template, "pair")
        self.mode: Literal["logprobs", "text"] = (
            ("logprobs" if engine.supports_logprobs else "text") if mode == "auto" else mode
        )
        self.explain = explain
        self.max_tokens = max_tokens

    def compare(
        self, prompts: Sequence[Prompt], answers_a: Sequence[str], answers_b: Sequence[str]
    ) -> list[PairVerdict]:
        """One verdict per (prompt, A, B). All pairs go to the engine together: one call per order.
        Identical answers are a tie without asking."""
        if not len(prompts) == len(answers_a) == len(answers_b):
            raise HelixloomError(
                f"{len(prompts)} prompts, {len(answers_a)} answers A and {len(answers_b)} answers B"
            )
        questions = [question_text(p) for p in prompts]
        asked = [
            i for i, (a, b) in enumerate(zip(answers_a, answers_b, strict=True)) if a.strip() != b.strip()
        ]
        q = [questions[i] for i in asked]
        a = [answers_a[i] for i in asked]
        b = [answers_b[i] for i in asked]
        forward = self.judge_order(q, a, b)
        backward = self.judge_order(q, b, a)
        out = [PairVerdict("tie", 0.5, None, None)] * len(prompts)
        for i, f, r in zip(asked, forward, backward, strict=True):
            out[i] = PairVerdict.combine(f, r)
        return out

    def judge_order(
        self, questions: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]
    ) -> list[OrderVerdict]:
        """The verdicts with ``firsts`` shown as assistant A, in one engine call."""
        if not questions:
            return []
        rendered = [
            chat.render(
                self.engine,
                self.template.messages(question=q, answer_a=first, answer_b=second),
            )
            for q, first, second in zip(questions, firsts, seconds, strict=True)
        ]
        prefix = self.template.verdict_prefix
        if self.mode == "logprobs":
            results = self.engine.next_token_logprobs(
                [r.prompt + prefix for r in rendered],
                adapter=self.adapter,
                top_k=20,
                candidates=VERDICT_TOKENS,
            )
            return [_order_from_probs(letter_probs(res)) for res in results]
        requests = []
        for r in rendered:
            if self.explain:
                params = sampling(
                    temperature=0,
                    max_tokens=self.max_tokens,
                    stop=r.stop,
                    token_healing=r.token_healing,
                )
                requests.append(GenerationRequest(r.prompt, params, self.adapter))
            else:
                params = sampling(
                    temperature=0, max_tokens=min(self.max_tokens, SHORT_MAX_TOKENS), stop=r.stop
                )
                requests.append(GenerationRequest(r.prompt + prefix, params, self.adapter))
        out = []
        for result in self.engine.generate(requests):
            text = result.text if self.explain else prefix + result.text
            choice = parse_pair_verdict(text)
            if choice is None and not self.explain:
                match = SHORT_VERDICT.match(result.text)
                choice = match.group(1) if match else None  # type: ignore[assignment]
            p_first = None if choice is None else {"A": 1.0, "B": 0.0, "C": 0.5}[choice]
            out.append(OrderVerdict(choice, p_first, None, text))
        return out


def _order_from_probs(probs: dict[str, float] | None) -> OrderVerdict:
    if probs is None:
        return OrderVerdict(None, None, None)
    choice: Choice = max(LETTERS, key=lambda letter: probs[letter])
    return OrderVerdict(choice, probs["A"] + probs["C"] / 2, probs)


# ---------------------------------------------------------------------------- win rate


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

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def win_rate(
    verdicts: Sequence[PairVerdict], lengths_a: Sequence[int | float], lengths_b: Sequence[int | float]
) -> WinRateReport:
    """The win rate of A (hard verdicts, ties half), its standard error, the soft win rate and the
    length-controlled win rate (see ``length_controlled``), all × 100. Lengths are in characters."""
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
    return WinRateReport(
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
    )


# ---------------------------------------------------------------------------- single-answer grading


def parse_rating(text: str) -> float:
    """MT-bench's rating parse: the last ``[[n]]``, else the last ``[n]``; −1 when there is none or it
    lies outside 1–10."""
    found = RATING.findall(text) or RATING_FALLBACK.findall(text)
    if not found:
        return -1.0
    rating = float(found[-1])
    return rating if MIN_RATING <= rating <= MAX_RATING else -1.0


@dataclass(frozen=True)
class Grade:
    rating: float  # 1–10, or −1 when the judge's reply held no rating
    text: str

    @property
    def malformed(self) -> bool:
        return self.rating < 0

    def to_dict(self) -> dict[str, Any]:
        return {"rating": self.rating, "malformed": self.malformed, "text": self.text}


@dataclass(frozen=True)
class GradeReport:
    count: int
    malformed: int
    mean: float | None  # over the ratings that could be read

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "malformed": self.malformed, "mean": self.mean}


def grade_report(grades: Sequence[Grade]) -> GradeReport:
    valid = [g.rating for g in grades if not g.malformed]
    return GradeReport(len(grades), len(grades) - len(valid), sum(valid) / len(valid) if valid else None)


class Grader:
    """Rates each answer 1–10 with MT-bench's ``single-v1`` prompt (greedy, one batch per call).

    ``explain=False`` puts the rating prefix in the judge's mouth and generates a few tokens only.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        adapter: str | None = None,
        template: JudgeTemplate | str | None = None,
        explain: bool = True,
        max_tokens: int = JUDGE_MAX_TOKENS,
    ) -> None:
        self.engine = engine
        self.adapter = adapter
        self.template = _template(template, "single")
        self.explain = explain
        self.max_tokens = max_tokens

    def grade(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> list[Grade]:
        if len(prompts) != len(answers):
            raise HelixloomError(f"{len(prompts)} prompts but {len(answers)} answers")
        if not prompts:
            return []
        prefix = self.template.verdict_prefix
        requests = []
        for prompt, ans in zip(prompts, answers, strict=True):
            r = chat.render(self.engine, self.template.messages(question=question_text(prompt), answer=ans))
            if self.explain:
                params = sampling(
                    temperature=0, max_tokens=self.max_tokens, stop=r.stop, token_healing=r.token_healing
                )
                requests.append(GenerationRequest(r.prompt, params, self.adapter))
            else:
                params = sampling(
                    temperature=0, max_tokens=min(self.max_tokens, SHORT_MAX_TOKENS), stop=r.stop
                )
                requests.append(GenerationRequest(r.prompt + prefix, params, self.adapter))
        out = []
        for result in self.engine.generate(requests):
            text = result.text if self.explain else prefix + result.text
            out.append(Grade(parse_rating(text), text))
        return out


# ---------------------------------------------------------------------------- as a reward


class JudgeReward(Reward):
    """A pairwise judge as a reward: a round-robin tournament among the responses to one prompt.

    Every pair is judged in both orders; a win scores 1 and a tie (or an unreadable verdict) 0.5 for
    each side, so a response's score is its number of wins among K − 1 games. With ``soft=True`` each
    game adds the soft preference instead (P(i better) to i, the rest to j).

    ``score(prompts, responses)`` has no meaning for one response alone: a pairwise judge needs
    something to compare with. It groups the pairs by identical prompt and runs a tournament in each
    group, so its scores are comparable within a prompt only; a prompt with a single response is an
    error rather than an invented number (use a pointwise reward, or ``score_group``).
    """

    def __init__(self, judge: PairwiseJudge, *, soft: bool = False) -> None:
        self.judge = judge
        self.soft = soft
        self.name = "judge"

    def score_group(self, prompt: str, responses: Sequence[str]) -> list[float]:
        return self._tournaments([(prompt, list(responses))])[0]

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise HelixloomError(f"{len(prompts)} prompts but {len(responses)} responses")
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p, []).append(i)
        lonely = [p for p, idx in groups.items() if len(idx) < 2]
        if lonely:
            raise HelixloomError(
                f"a pairwise judge compares responses to the same prompt, but {len(lonely)} prompt(s) "
                f"have a single response (e.g. {lonely[0][:60]!r})",
                "score groups of responses (score_group), or use a pointwise reward such as evaluator",
            )
        scores = self._tournaments([(p, [responses[i] for i in idx]) for p, idx in groups.items()])
        out = [0.0] * len(prompts)
        for idx, group_scores in zip(groups.values(), scores, strict=True):
            for i, s in zip(idx, group_scores, strict=True):
                out[i] = s
        return out

    def _tournaments(self, groups: Sequence[tuple[str, list[str]]]) -> list[list[float]]:
        """Every pair of every group in one ``compare`` call (two engine calls in all)."""
        games: list[tuple[int, int, int]] = []
        prompts: list[str] = []
        a: list[str] = []
        b: list[str] = []
        for g, (prompt, responses) in enumerate(groups):
            for i in range(len(responses)):
                for j in range(i + 1, len(responses)):
                    games.append((g, i, j))
                    prompts.append(prompt)
                    a.append(responses[i])
                    b.append(responses[j])
        scores = [[0.0] * len(responses) for _, responses in groups]
        for (g, i, j), verdict in zip(games, self.judge.compare(prompts, a, b), strict=True):
            if self.soft:
                p = 0.5 if verdict.preference is None else verdict.preference
            else:
                p = 0.5 if verdict.score is None else verdict.score
            scores[g][i] += p
            scores[g][j] += 1.0 - p
        return scores


# ---------------------------------------------------------------------------- evaluations

Progress = Callable[[int], None]  # called with how many more items are done


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


def _batches(n: int, size: int) -> list[range]:
    if size < 1:
        raise HelixloomError("batch size must be at least 1")
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


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
    for batch in _batches(len(prompts), batch_size):
        chunk = [prompts[i] for i in batch]
        if together:
            requests = _answer_requests(model, chunk, params, adapter, system)
            requests += _answer_requests(baseline, chunk, params, baseline_adapter, baseline_system)
            texts = [r.text.strip() for r in model.generate(requests)]
            answers_a, answers_b = texts[: len(chunk)], texts[len(chunk) :]
        else:
            answers_a = answer(model, chunk, params, adapter=adapter, system=system)
            answers_b = answer(baseline, chunk, params, adapter=baseline_adapter, system=baseline_system)
        verdicts = judge.compare(chunk, answers_a, answers_b)
        for p, a, b, v in zip(chunk, answers_a, answers_b, verdicts, strict=True):
            rows.append(WinRateRow(question_text(p), a, b, v))
        if on_progress:
            on_progress(len(batch))
    report = win_rate(
        [r.verdict for r in rows], [len(r.answer_a) for r in rows], [len(r.answer_b) for r in rows]
    )
    return WinRateEvaluation(report, rows)


@dataclass(frozen=True)
class GradeRow:
    prompt: str
    answer: str
    grade: Grade

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "answer": self.answer, **self.grade.to_dict()}


@dataclass(frozen=True)
class GradeEvaluation:
    report: GradeReport
    rows: list[GradeRow]

    def to_dict(self) -> dict[str, Any]:
        return {"report": self.report.to_dict(), "rows": [r.to_dict() for r in self.rows]}


def evaluate_grades(
    model: Engine,
    prompts: Sequence[Prompt],
    grader: Grader,
    params: SamplingParams,
    *,
    adapter: str | None = None,
    system: str | None = None,
    batch_size: int = 8,
    on_progress: Progress | None = None,
) -> GradeEvaluation:
    """Answer every prompt with the model and grade each answer 1–10 (MT-bench single grading)."""
    if not prompts:
        raise HelixloomError("no prompts to evaluate")
    rows: list[GradeRow] = []
    for batch in _batches(len(prompts), batch_size):
        chunk = [prompts[i] for i in batch]
        answers = answer(model, chunk, params, adapter=adapter, system=system)
        for p, a, g in zip(chunk, answers, grader.grade(chunk, answers), strict=True):
            rows.append(GradeRow(question_text(p), a, g))
        if on_progress:
            on_progress(len(batch))
    return GradeEvaluation(grade_report([r.grade for r in rows]), rows)


# ---------------------------------------------------------------------------- rated sessions


@dataclass(frozen=True)
class RatedAnswer:
    """A stored answer a user rated, with the conversation that led to it.

    ``message_id`` is the rated (or, for a rating on the whole session, the final) assistant message.
    """

    session_id: str
    message_id: str
    rating: Literal["up", "down"]
    messages: tuple[dict[str, str], ...]
    answer: str


def _final_answer(run: Sequence[Message]) -> Message | None:
    """The answer that stands for a run of assistant messages after one user turn: HelixNet's last
    regeneration (or the last non-critique stage), else the first choice of a plain completion."""
    if not run:
        return None
    staged = [m for m in run if m.stage]
    if staged:
        regenerated = [m for m in staged if m.stage == "regenerator"]
        if regenerated:
            return regenerated[-1]
        drafts = [m for m in staged if m.stage != "critic"]
        return drafts[-1] if drafts else None
    return run[0]


def _context(messages: Sequence[Message], upto: int) -> list[dict[str, str]]:
    """The conversation before position ``upto``: system and user messages, and for every earlier
    turn its final answer; the sibling drafts and choices of the current turn are left out."""
    out: list[dict[str, str]] = []
    run: list[Message] = []
    for m in messages[:upto]:
        if m.role == "assistant":
            run.append(m)
            continue
        if run:
            final = _final_answer(run)
            if final is not None:
                out.append({"role": "assistant", "content": final.content})
            run = []
        out.append({"role": m.role, "content": m.content})
    return out


def rated_answers(
    store: Store, *, rating: Literal["up", "down"] | None = None, limit: int | None = None
) -> list[RatedAnswer]:
    """Every rated assistant answer (newest sessions first): ratings on a message rate that message,
    ratings on a session rate its final answer. Ratings on user messages are skipped."""
    signs: list[Literal["up", "down"]] = [rating] if rating else ["up", "down"]
    session_ids: dict[str, None] = {}  # ordered, without duplicates
    for sign in signs:
        offset = 0
        while batch := store.list_sessions(rating=sign, limit=500, offset=offset):
            session_ids.update((s.id, None) for s in batch)
            offset += len(batch)
    out: list[RatedAnswer] = []
    seen: set[tuple[str, str]] = set()
    for sid in session_ids:
        messages = store.get_messages(sid)
        targets: list[tuple[int, int]] = []  # (message position, score)
        for pos, m in enumerate(messages):
            targets.extend((pos, r.score) for r in store.ratings_for("message", m.id))
        session_ratings = store.ratings_for("session", sid)
        if session_ratings:
            last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
            if last_user is not None:
                final = _final_answer([m for m in messages[last_user + 1 :] if m.role == "assistant"])
                if final is not None:
                    pos = next(i for i, m in enumerate(messages) if m.id == final.id)
                    targets.extend((pos, r.score) for r in session_ratings)
        for pos, score in targets:
            m = messages[pos]
            thumb: Literal["up", "down"] = "up" if score > 0 else "down"
            if m.role != "assistant" or (rating and thumb != rating) or (m.id, thumb) in seen:
                continue
            context = _context(messages, pos)
            if not context or context[-1]["role"] != "user":
                continue
            seen.add((m.id, thumb))
            out.append(RatedAnswer(sid, m.id, thumb, tuple(context), m.content.strip()))
            if limit is not None and len(out) >= limit:
                return out
    return out


@dataclass(frozen=True)
class ReplayRow:
    item: RatedAnswer
    new_answer: str
    verdict: PairVerdict  # A is the new answer, B the rated one

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.item.session_id,
            "message_id": self.item.message_id,
            "rating": self.item.rating,
            "prompt": question_text(list(self.item.messages)),
            "rated_answer": self.item.answer,
            "new_answer": self.new_answer,
            **self.verdict.to_dict(),
        }


@dataclass(frozen=True)
class ReplayReport:
    """The new model's win rate against answers users liked (``up``; it should at least tie) and
    against answers they disliked (``down``; it should win)."""

    up: WinRateReport
    down: WinRateReport
    rows: list[ReplayRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "up": self.up.to_dict(),
            "down": self.down.to_dict(),
            "rows": [r.to_dict() for r in self.rows],
        }


def replay_sessions(
    store: Store,
    engine: Engine,
    judge: PairwiseJudge,
    *,
    adapter: str | None = None,
    params: SamplingParams | None = None,
    rating: Literal["up", "down"] | None = None,
    limit: int | None = None,
    items: Sequence[RatedAnswer] | None = None,
    system: str | None = None,
    batch_size: int = 8,
    on_progress: Progress | None = None,
) -> ReplayReport:
    """Re-ask every rated answer's conversation to ``engine`` (+ ``adapter``) and judge the new answer
    (A) against the rated one (B); win rates against liked and disliked answers are kept apart.

    ``items`` are the rated answers to replay (default: ``rated_answers(store, rating=, limit=)``);
    ``system`` is added to conversations that have no system message (e.g. an adapter's own)."""
    if items is None:
        items = rated_answers(store, rating=rating, limit=limit)
    if not items:
        raise HelixloomError(
            "no rated answers in the store" + (f" (rating {rating})" if rating else ""),
            "rate answers with thumbs up or down first (the API's /api/sessions/ID/feedback, or the loom)",
        )
    params = params or sampling(temperature=0, max_tokens=256)
    rows: list[ReplayRow] = []
    for batch in _batches(len(items), batch_size):
        chunk = [items[i] for i in batch]
        prompts = [list(it.messages) for it in chunk]
        new = answer(engine, prompts, params, adapter=adapter, system=system)
        verdicts = judge.compare(prompts, new, [it.answer for it in chunk])
        rows.extend(ReplayRow(it, a, v) for it, a, v in zip(chunk, new, verdicts, strict=True))
        if on_progress:
            on_progress(len(batch))

    def report(sign: str) -> WinRateReport:
        part = [r for r in rows if r.item.rating == sign]
        return win_rate(
            [r.verdict for r in part], [len(r.new_answer) for r in part], [len(r.item.answer) for r in part]
        )

    return ReplayReport(report("up"), report("down"), rows)


# ---------------------------------------------------------------------------- prompt files


def load_prompts(path: str | Path) -> list[Prompt]:
    """Prompts from a file (see ``helixloom.jsonl.read_prompts``); chat ``messages`` rows stay chats."""
    from helixloom import jsonl

    return jsonl.read_prompts(path, chat=True)
