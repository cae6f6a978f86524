"""A reward learned from pairwise ratings, that knows how unsure it is, and asks for what teaches it most.

The reward is an ensemble of Bradley–Terry models on the base model's pooled hidden states
(``Engine.embed``): member ``m`` scores a (prompt, response) as ``w_m · z`` where ``z`` is the
standardised vector of the response's hidden states at a middle layer (their mean and the last
token's state), read in the prompt's context (the prompt as the model sees it when it answers;
``Embedder``), and predicts
``P(a beats b) = sigmoid(w_m · (z_a - z_b))``. Each member is fit (L2-regularised logistic
regression, L-BFGS) on a bootstrap resample of the ratings, so members agree where the ratings
pin the answer down and disagree where they do not.

Active learning (MiniHF's planned "Bayesian active learning", which it never built): among the
candidate pairs not yet rated, ask about the one whose outcome the reward is least sure of, by the
posterior variance of its logit ``w · (z_a - z_b)`` under a Laplace approximation of the Bayesian
logistic regression that member 0 is (MacKay 1992): the Hessian of the negative log-posterior (N
times the fit's mean objective, prior N(0, I / l2)) at its optimum, ``l2 I + sum_i p_i (1 - p_i) d_i
d_i^T`` over the rated differences ``d_i``, is the posterior's precision, inverted through the
ratings (Woodbury: an n x n solve, n the ratings, not d x d). A pair along a direction the ratings
have not explored scores high; a pair like those already rated scores low. Measured against the
bootstrap members' BALD (``H(mean_m p_m) - mean_m H(p_m)``, kept as ``bald``), offline on five of
the feedback benchmark's saved pools of base-model answers (8 seeds each; ratings needed to reach
the held-out agreement random selection reaches with 60; Dec 2026): Laplace 0.5x, 0.6x, 0.4x and
0.6x random's ratings on the list (one pool), the answer-then-ask (two) and the no-I/me/my tastes,
where BALD needed 0.83x, 1.0x, 0.6x and 0.8x; on the fifth pool (lists, where no strategy learned
anything held-out) all three tie. The bootstrap members disagree most about outliers, since each
sees a resample of a few dozen ratings in ~1,300 dimensions. With few ratings the variance is mostly
the size of the pair's difference (after 10 ratings, 8 of its top 10 pairs are the 10 most
different; after 30, 3; after 60, 2: the no-I/me/my pool), so it starts by asking about answers that
differ most and then turns to what the ratings left open.

With thumbs (the rating page's up/down beside each choice, which the loop learns from as pairs of a
prompt's liked answers against its disliked ones), a rating teaches about each answer it shows, and
a thumbed answer's verdict is already known; so every rule but random asks about answers not yet
thumbed first, and ``top``'s favourite is the best of those (``select``'s ``marks``).

Written by hand because nothing in our stack offers it: TRL's reward trainer fits one model on
text, not an ensemble on cached features, and has no acquisition function.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from helixloom.errors import HelixloomError
from helixloom.rewards import Reward

if TYPE_CHECKING:
    import torch

    from helixloom.engine import Engine


@dataclass(frozen=True)
class RatedPair:
    """The user preferred ``chosen`` to ``rejected`` as an answer to ``prompt``."""

    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class CandidatePair:
    """Two answers to one prompt that could be shown for rating; ``key`` identifies it in a queue."""

    key: str
    prompt: str
    a: str
    b: str


#: The layer the reward reads, as a fraction of the model's depth: the middle, not the last
#: (benchmarks/reward_features.py, Dec 2026: the measured figures are in the README). The last
#: layer is shaped for the next token; a middle one holds more of what the text is, the usual
#: finding of linear probes.
DEPTH = 0.5


@dataclass(frozen=True)
class Features:
    """What a reward's vectors are: the hidden state at ``depth`` of the model, over the ``response``
    (in its prompt's context: its mean and its last token's state) or over the whole ``text``
    (prompt + response, no transcript, the mean: rewards saved before Dec 2026)."""

    depth: float = DEPTH
    pool: str = "response"

    def metadata(self) -> dict[str, str]:
        return {"depth": repr(self.depth), "pool": self.pool}

    @classmethod
    def from_metadata(cls, meta: dict[str, str] | None) -> Features:
        if not meta or "pool" not in meta:
            return LEGACY
        return cls(float(meta["depth"]), meta["pool"])


LEGACY = Features(1.0, "text")


class Embedder:
    """The reward's vector of each (prompt, response) on the base model (no adapter), memoised.

    ``context`` renders a prompt as the model sees it before it answers (default: the chat transcript
    of one user message); the response is pooled after it (``Features``). ``max_cached`` bounds the
    memo (the oldest vectors go first); None keeps every one (a loop's pool is finite)."""

    def __init__(
        self,
        engine: Engine,
        batch: int = 16,
        *,
        features: Features | None = None,
        context: Callable[[str], str] | None = None,
        max_cached: int | None = None,
    ) -> None:
        if not engine.supports_embeddings:
            raise HelixloomError(
                f"the {engine.backend} engine gives no hidden states; a learned reward needs the hf backend"
            )
        self.engine = engine
        self.batch = batch
        self.features = features or Features()
        if self.features.pool not in ("response", "text"):
            raise HelixloomError(f"unknown pooling {self.features.pool!r}: response or text")
        self.context = context or self._chat
        self.max_cached = max_cached
        self.cache: dict[tuple[str, str], torch.Tensor] = {}
        # a served reward's embedder is shared by concurrent requests: one's eviction must not take
        # the vectors another is about to read
        self._lock = threading.Lock()

    def _chat(self, prompt: str) -> str:
        from helixloom.prompting import render

        return render(self.engine, [{"role": "user", "content": prompt}]).prompt

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        import torch

        keys = list(zip(prompts, responses, strict=True))
        with self._lock:
            found = {k: self.cache[k] for k in keys if k in self.cache}
        missing = sorted({k for k in keys if k not in found})
        for start in range(0, len(missing), self.batch):
            chunk = missing[start : start + self.batch]
            if self.features.pool == "text":
                vectors = self.engine.embed([p + r for p, r in chunk], depth=self.features.depth)
            else:
                shown = [self.context(p) for p, _ in chunk]
                vectors = self.engine.embed(
                    [c + r for c, (_, r) in zip(shown, chunk, strict=True)],
                    depth=self.features.depth,
                    prefixes=shown,
                    pooling="mean+last",
                )
            made = {k: torch.tensor(v, dtype=torch.float32) for k, v in zip(chunk, vectors, strict=True)}
            found.update(made)
            with self._lock:
                self.cache.update(made)
        if not keys:
            return torch.zeros(0, 0)
        out = torch.stack([found[k] for k in keys])  # [N, d]
        if self.max_cached is not None:
            with self._lock:
                for old in list(self.cache)[: max(0, len(self.cache) - self.max_cached)]:
                    self.cache.pop(old, None)  # insertion order: the oldest first
        return out


class PreferenceEnsemble:
    """Bootstrap ensemble of linear Bradley–Terry rewards on embeddings (see the module docstring)."""

    def __init__(
        self,
        weights: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        features: Features = LEGACY,
        *,
        rated: torch.Tensor | None = None,
        l2: float = 1.0,
    ) -> None:
        self.weights = weights  # [M, d]
        self.mean = mean  # [d]
        self.std = std  # [d]
        self.features = features  # what the vectors it scores must be
        self.rated = rated  # [n, d]: the standardised differences it was fit on (None: not kept)
        self.l2 = l2

    @classmethod
    def fit(
        cls,
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        *,
        members: int = 8,
        l2: float = 1.0,
        seed: int = 0,
        reference: torch.Tensor | None = None,
        features: Features = LEGACY,
    ) -> PreferenceEnsemble:
        """Fit on embeddings of chosen and rejected answers ([N, d] each). ``reference`` ([R, d],
        e.g. every candidate answer) sets the standardisation; default: the rated answers."""
        import torch

        if chosen.shape != rejected.shape or chosen.ndim != 2 or not len(chosen):
            raise HelixloomError("a preference ensemble needs at least one rated pair")
        if not l2 > 0:
            raise HelixloomError("l2 must be positive: it is the weights' prior precision")
        ref = reference if reference is not None else torch.cat([chosen, rejected])
        mean = ref.mean(dim=0)
        std = ref.std(dim=0, unbiased=False)
        std = std.clamp(min=max(0.1 * float(std.mean()), 1e-6))
        diff = (chosen - rejected) / std  # [N, d]; the mean cancels in a difference
        rng = torch.Generator().manual_seed(seed)
        out = []
        n = len(diff)
        for m in range(members):
            # Member 0 sees every rating; the others a bootstrap resample.
            idx = torch.arange(n) if m == 0 else torch.randint(0, n, (n,), generator=rng)
            out.append(_fit_bt(diff[idx], l2))
        return cls(torch.stack(out), mean, std, features, rated=diff, l2=l2)

    def save(self, path: Path) -> None:
        """The members' weights and the standardisation, as safetensors (the features in its metadata)."""
        from safetensors.torch import save_file

        from helixloom import atomic

        tensors = {"weights": self.weights.contiguous(), "mean": self.mean, "std": self.std}
        if self.rated is not None:
            tensors["rated"] = self.rated.contiguous()
        meta = {**self.features.metadata(), "l2": str(float(self.l2))}
        atomic.write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    @classmethod
    def load(cls, path: Path) -> PreferenceEnsemble:
        from safetensors import safe_open
        from safetensors.torch import load_file

        t = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        return cls(
            t["weights"],
            t["mean"],
            t["std"],
            Features.from_metadata(meta),
            rated=t.get("rated"),
            l2=float((meta or {}).get("l2", 1.0)),
        )

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Per member, the reward of each embedding: [M, N]."""
        return self.weights @ ((x - self.mean) / self.std).T

    def pair_probs(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per member, P(a beats b) for each row: [M, N]."""
        import torch

        return torch.sigmoid(self.weights @ ((a - b) / self.std).T)

    def logit_variance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
        """The Laplace posterior variance of member 0's logit ``w · (z_a - z_b)`` for each row
        ([N]; the module docstring), or None for an ensemble saved without its ratings."""
        import torch

        if self.rated is None:
            return None
        x = ((a - b) / self.std).double()  # [N, d]
        d = self.rated.double()  # [n, d]
        p = torch.sigmoid(d @ self.weights[0].double())
        curvature = (p * (1 - p)).clamp(min=1e-9)
        # (l2 I + d^T C d)^-1 = (I - d^T (l2 C^-1 + d d^T)^-1 d) / l2
        inner = torch.diag(self.l2 / curvature) + d @ d.T  # [n, n]
        dx = d @ x.T  # [n, N]
        explained = (dx * torch.linalg.solve(inner, dx)).sum(dim=0)
        return (((x * x).sum(dim=1) - explained) / self.l2).float()


def _fit_bt(diff: torch.Tensor, l2: float) -> torch.Tensor:
    """argmin_w mean(log(1 + exp(-w·diff))) + l2/2 |w|^2 / N, by L-BFGS (convex: a unique answer)."""
    import torch

    w = torch.zeros(diff.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")
    n = len(diff)

    def closure() -> torch.Tensor:
        import torch

        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(diff @ w)).mean() + 0.5 * l2 * (w @ w) / n
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def bald(probs: torch.Tensor) -> torch.Tensor:
    """BALD per column of member probabilities [M, N]: H(mean p) - mean H(p), in nats (>= 0)."""

    def entropy(p: torch.Tensor) -> torch.Tensor:
        p = p.clamp(1e-7, 1 - 1e-7)
        return -(p * p.log() + (1 - p) * (1 - p).log())

    return entropy(probs.mean(dim=0)) - entropy(probs).mean(dim=0)


#: How the next pairs to rate are chosen: ``active`` (the Laplace posterior's variance),
#: ``bald`` (the bootstrap members' disagreement) or ``random``.
STRATEGIES = ("active", "bald", "top", "random")


def select(
    candidates: Sequence[CandidatePair],
    n: int,
    *,
    strategy: str,
    rng: random.Random,
    ensemble: PreferenceEnsemble | None = None,
    embed: Embedder | None = None,
    marks: dict[str, dict[str, bool]] | None = None,
) -> list[CandidatePair]:
    """The ``n`` candidates to ask about next: ``random``; ``active``, the highest posterior variance
    of the pair's logit first; ``bald``, the highest BALD first (an ensemble saved without its
    ratings is asked this way too); or ``top``, as active among the pairs that hold a prompt's
    current favourite (the answer the reward scores highest among those still in unasked pairs):
    its challenger it is least sure of. At most one pair per prompt while other prompts remain.
    Without an ensemble yet, every rule asks at random (all but random: one pair per prompt, answers
    without a thumb first).

    ``marks`` are the thumbs given so far (prompt -> answer -> up). A thumbed answer's verdict is
    known, and a thumb on an answer not yet thumbed teaches the reward about every answer of its
    prompt thumbed the other way, so every rule but random asks about answers without a thumb
    first: pairs with more of them come first, and top's favourite is the best of them (``_unknown``)."""
    if strategy not in STRATEGIES:
        raise HelixloomError(f"unknown selection strategy {strategy!r}: {', '.join(STRATEGIES)}")
    pool = list(candidates)
    if strategy == "random":
        rng.shuffle(pool)
        return pool[:n]
    known = marks or {}

    def fresh(prompt: str, answer: str) -> bool:
        return answer not in known.get(prompt, {})

    if ensemble is None or embed is None or not pool:
        rng.shuffle(pool)
        pool.sort(key=lambda c: -_unknown(c, known))  # stable: random among equals
        return _spread(pool, n)
    a = embed([c.prompt for c in pool], [c.a for c in pool])
    b = embed([c.prompt for c in pool], [c.b for c in pool])
    if strategy == "top":
        # What serving and RAFT use is each prompt's top pick, so ask whether it deserves to be: the
        # favourite against a challenger (a "dueling bandit" asks the same; e.g. RUCB, Zoghi et al.
        # 2014). The favourite is the best of the answers still in pairs not yet asked, and of those
        # without a thumb where there is one: a thumbed favourite is already known to be good or bad.
        score_a, score_b = ensemble.scores(a).mean(dim=0).tolist(), ensemble.scores(b).mean(dim=0).tolist()
        best: dict[str, tuple[bool, float, str]] = {}
        for c, sa, sb in zip(pool, score_a, score_b, strict=True):
            for text, sc in ((c.a, sa), (c.b, sb)):
                rank = (fresh(c.prompt, text), sc, text)
                if c.prompt not in best or rank[:2] > best[c.prompt][:2]:
                    best[c.prompt] = rank
        keep = [i for i, c in enumerate(pool) if best[c.prompt][2] in (c.a, c.b)]
        pool, a, b = [pool[i] for i in keep], a[keep], b[keep]
    variance = ensemble.logit_variance(a, b) if strategy in ("active", "top") else None
    gain = (variance if variance is not None else bald(ensemble.pair_probs(a, b))).tolist()
    order = sorted(range(len(pool)), key=lambda i: (-_unknown(pool[i], known), -gain[i], rng.random()))
    return _spread([pool[i] for i in order], n)


def _unknown(pair: CandidatePair, marks: dict[str, dict[str, bool]]) -> int:
    """How many of ``pair``'s two answers have no thumb yet (``marks``: prompt -> answer -> up)."""
    given = marks.get(pair.prompt, {})
    return (pair.a not in given) + (pair.b not in given)


def _spread(ranked: Sequence[CandidatePair], n: int) -> list[CandidatePair]:
    """The first ``n`` of ``ranked``, at most one per prompt while other prompts remain."""
    picked: list[CandidatePair] = []
    seen: set[str] = set()
    for c in ranked:  # first pass: one per prompt
        if len(picked) < n and c.prompt not in seen:
            picked.append(c)
            seen.add(c.prompt)
    for c in ranked:
        if len(picked) < n and c not in picked:
            picked.append(c)
    return picked


class LearnedReward(Reward):
    """A ``PreferenceEnsemble`` as a ``Reward``: the members' mean score."""

    name = "learned"

    def __init__(self, ensemble: PreferenceEnsemble, embed: Embedder) -> None:
        if ensemble.features != embed.features:
            raise HelixloomError(
                f"this reward was fit on {ensemble.features} vectors, the embedder gives {embed.features}",
                "make the Embedder with the ensemble's features",
            )
        self.ensemble = ensemble
        self.embed = embed

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if not prompts:
            return []
        return [float(v) for v in self.ensemble.scores(self.embed(prompts, responses)).mean(dim=0)]

    def uncertainty(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """The members' standard deviation per answer (how much the ratings leave open)."""
        if not prompts:
            return []
        return [float(v) for v in self.ensemble.scores(self.embed(prompts, responses)).std(dim=0)]


def with_thumbs(
    chosen: Sequence[RatedPair], marks: dict[str, dict[str, bool]], *, ties: bool
) -> tuple[list[RatedPair], int, int]:
    """Rated pairs and the thumbs given beside them, as the pairs a reward learns from: ``chosen``
    (the choices), then each prompt's thumbed-up answers against its thumbed-down ones (``marks``:
    prompt -> answer -> up) that no choice already holds. With ``ties`` a choice between two
    thumbed-down answers is left out (both are bad: a tie). Returns the pairs, how many came from
    thumbs, and how many choices were left out."""

    kept = drop_ties(chosen, marks) if ties else list(chosen)
    seen = {(p.prompt, p.chosen, p.rejected) for p in kept}
    extra = [
        RatedPair(prompt, up, down)
        for prompt, answers in marks.items()
        for up, liked in answers.items()
        if liked
        for down, disliked in answers.items()
        if not disliked and (prompt, up, down) not in seen
    ]
    return [*kept, *extra], len(extra), len(chosen) - len(kept)


def drop_ties(chosen: Sequence[RatedPair], marks: dict[str, dict[str, bool]]) -> list[RatedPair]:
    """``chosen`` without the choices between two thumbed-down answers (``marks``: prompt -> answer
    -> up): both are bad, a tie."""

    def bad(prompt: str, answer: str) -> bool:
        return marks.get(prompt, {}).get(answer) is False

    return [p for p in chosen if not (bad(p.prompt, p.chosen) and bad(p.prompt, p.rejected))]


def fit_reward(
    pairs: Sequence[RatedPair],
    embed: Embedder,
    *,
    members: int = 8,
    l2: float = 1.0,
    seed: int = 0,
    reference: Sequence[tuple[str, str]] = (),
) -> LearnedReward:
    """Fit the ensemble on rated pairs; ``reference`` (prompt, answer) pairs set the standardisation."""
    if not pairs:
        raise HelixloomError("no ratings to learn a reward from", "rate some answers first (/rate)")
    chosen = embed([p.prompt for p in pairs], [p.chosen for p in pairs])
    rejected = embed([p.prompt for p in pairs], [p.rejected for p in pairs])
    ref = embed([p for p, _ in reference], [r for _, r in reference]) if reference else None
    ensemble = PreferenceEnsemble.fit(
        chosen, rejected, members=members, l2=l2, seed=seed, reference=ref, features=embed.features
    )
    return LearnedReward(ensemble, embed)


def agreement(reward: Reward, pairs: Sequence[RatedPair]) -> float | None:
    """Share of ``pairs`` the reward ranks as the rater did (ties count half); None without pairs."""
    if not pairs:
        return None
    chosen = reward.score([p.prompt for p in pairs], [p.chosen for p in pairs])
    rejected = reward.score([p.prompt for p in pairs], [p.rejected for p in pairs])
    hits = [
        1.0 if c > r else 0.5 if math.isclose(c, r) else 0.0 for c, r in zip(chosen, rejected, strict=True)
    ]
    return sum(hits) / len(hits)
