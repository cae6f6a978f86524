"""Weave: tree search over continuations, steered by the yes/no evaluator (MiniHF, Crowson's version).

A node is ``tokens_per_node`` tokens of text. Each round the search expands leaves under the
committed beam, chosen by a Gumbel-perturbed priority, with ``n_expand`` children generated in
one batch (one shared prefill in the hf engine). A child's logit is its evaluator score / T;
uncommitted ancestors take the log-sum-exp of their children's logits (a soft-max backup). At the
end of a round the beam commits one level by stochastic beam search over path log-probabilities
(Gumbel-top-k with the truncated-Gumbel correction). The search is deterministic under ``seed``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from helixloom.engine import Engine, GenerationRequest, SamplingParams
from helixloom.errors import HelixloomError


class Scorer(Protocol):
    """What steers the search: a score per (prompt, continuation), higher is better. The yes/no
    ``Evaluator`` is one; any reward is another (``helixloom.weave.RewardScorer``)."""

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]: ...


@dataclass(frozen=True)
class WeaveConfig:
    """Search settings; defaults are MiniHF's server defaults."""

    budget: int = 72  # nodes generated in all
    round_budget: int = 24  # nodes generated per round (one committed level per round)
    n_expand: int = 8  # children per expansion, generated in one batch
    tokens_per_node: int = 32
    beam_width: int = 1
    max_lookahead: int = 3  # levels searched below the committed frontier
    temperature: float = 0.25  # of the evaluator scores (lower: greedier)
    sampling_temperature: float = 0.9  # of the generator
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("budget", "round_budget", "n_expand", "tokens_per_node", "beam_width", "max_lookahead"):
            if getattr(self, name) < 1:
                raise HelixloomError(f"{name} must be at least 1", param=name)
        # finite, checked here before the root is scored: SamplingParams refused an infinite one
        # only after the search had run (a 500 over HTTP)
        if not 0 < self.temperature < math.inf:
            raise HelixloomError("temperature must be positive and finite", param="temperature")
        if not 0 <= self.sampling_temperature < math.inf:
            raise HelixloomError(
                "sampling_temperature must be 0 or more, and finite", param="sampling_temperature"
            )
        if not 0 < self.top_p <= 1:
            raise HelixloomError("top_p must be in (0, 1]", param="top_p")


@dataclass(eq=False)  # nodes compare by identity: a tree links both ways
class WeaveNode:
    text: str  # this node's own text (the root's is the prompt)
    depth: int
    parent: WeaveNode | None = None
    children: list[WeaveNode] = field(default_factory=list)
    score: float | None = None
    logit: float = -math.inf
    gumbel: float = 0.0
    phi: float = 0.0
    g_phi: float = 0.0
    committed: bool = False
    pruned: bool = False
    node_id: str | None = None  # set when stored

    @property
    def priority(self) -> float:
        return self.logit + self.gumbel

    def branch(self) -> list[WeaveNode]:
        path: list[WeaveNode] = []
        node: WeaveNode | None = self
        while node is not None:
            path.append(node)
            node = node.parent
        return path[::-1]

    def branch_text(self, include_root: bool = True) -> str:
        nodes = self.branch()
        return "".join(n.text for n in (nodes if include_root else nodes[1:]))

    def leaves(self) -> list[WeaveNode]:
        if not self.children:
            return [self]
        return [leaf for c in self.children for leaf in c.leaves()]

    def nodes(self) -> list[WeaveNode]:
        return [self] + [n for c in self.children for n in c.nodes()]


@dataclass
class WeaveResult:
    root: WeaveNode
    best: list[WeaveNode]  # best first
    generated: int  # nodes generated (never more than the budget)

    @property
    def text(self) -> str:
        """The best branch's continuation, without the prompt."""
        return self.best[0].branch_text(include_root=False)


OnNode = Callable[[WeaveNode], None]


def weave(
    prompt: str,
    engine: Engine,
    evaluator: Scorer,
    config: WeaveConfig | None = None,
    *,
    adapter: str | None = None,
    on_node: OnNode | None = None,
) -> WeaveResult:
    """Search continuations of ``prompt``; ``on_node`` sees every scored node (to store or show it)."""
    config = config or WeaveConfig()
    if not prompt:
        raise HelixloomError("the prompt is empty", param="prompt")
    # the first node's request, checked before the root is scored: a prompt past the model's context
    # (or a lone surrogate) is refused here, not after scoring it in one pass of any size
    engine.validate(GenerationRequest(prompt, _sampling(config), adapter))
    rng = random.Random(config.seed)
    root = WeaveNode(prompt, 0, committed=True)
    root.score = evaluator.score([(prompt, "")])[0]
    root.logit = root.score / config.temperature
    if on_node is not None:
        on_node(root)
    beam = [root]
    budget = config.budget
    generated = 0
    round_ = 0
    while budget > 0:
        round_budget = config.round_budget
        frontier = [leaf for b in beam for leaf in b.leaves() if leaf.depth < round_ + config.max_lookahead]
        while budget > 0 and round_budget > 0 and frontier:
            chosen = max(frontier, key=lambda n: n.priority)  # Gumbel-perturbed argmax
            frontier.remove(chosen)
            k = min(config.n_expand, budget, round_budget)
            children = _expand(chosen, k, engine, config, rng, adapter)
            scores = evaluator.score([(prompt, c.branch_text(include_root=False)) for c in children])
            for child, score in zip(children, scores, strict=True):
                child.score = score
                _set_logit(child, score / config.temperature)
                if on_node is not None:
                    on_node(child)
                if child.depth < round_ + config.max_lookahead:
                    frontier.append(child)
            budget -= k
            round_budget -= k
            generated += k
        beam = _commit(beam, config.beam_width, rng)
        round_ += 1
        if not frontier and all(not b.children for b in beam):
            break
    finals = [leaf for b in beam for leaf in b.leaves() if not leaf.pruned]
    for leaf in finals:
        _update_phi_path(leaf)
    finals.sort(key=lambda n: n.phi + n.gumbel, reverse=True)
    best = finals[: config.beam_width]
    # Everything else best first by score, for callers that want a ranking.
    rest = sorted((n for n in root.nodes() if n is not root and n not in best and n.score is not None),
                  key=lambda n: n.score or 0.0, reverse=True)  # fmt: skip
    return WeaveResult(root, best + rest, generated)


def _sampling(config: WeaveConfig) -> SamplingParams:
    return SamplingParams(
        max_tokens=config.tokens_per_node, temperature=config.sampling_temperature, top_p=config.top_p
    )


def _expand(
    node: WeaveNode, k: int, engine: Engine, config: WeaveConfig, rng: random.Random, adapter: str | None
) -> list[WeaveNode]:
    params = _sampling(config)
    text = node.branch_text()
    requests = [
        GenerationRequest(text, params.model_copy(update={"seed": rng.getrandbits(31)}), adapter)
        for _ in range(k)
    ]
    children = []
    for result in engine.generate(requests):
        gumbel = -math.log(-math.log(max(rng.random(), 1e-300)))  # a fixed Gumbel(0, 1) draw per node
        child = WeaveNode(result.text, node.depth + 1, parent=node, gumbel=gumbel)
        node.children.append(child)
        children.append(child)
    return children


def _set_logit(node: WeaveNode, logit: float) -> None:
    """Set a node's logit and back it up: every uncommitted ancestor becomes the log-sum-exp of its
    children's logits."""
    node.logit = logit
    parent = node.parent
    while parent is not None and not parent.committed:
        parent.logit = _logsumexp([c.logit for c in parent.children if c.score is not None])
        parent = parent.parent


def _commit(beam: list[WeaveNode], width: int, rng: random.Random) -> list[WeaveNode]:
    """Stochastic beam search step: sample ``width`` children of the beam by Gumbel-top-k over path
    log-probabilities (phi), with the truncated-Gumbel correction; prune the rest."""
    candidates: list[WeaveNode] = []
    for b in beam:
        if not b.children:
            candidates.append(b)  # nothing below it: it passes through
            continue
        logits = [c.logit for c in b.children]
        norm = _logsumexp(logits)
        g = [b.phi + (lg - norm) + c.gumbel for lg, c in zip(logits, b.children, strict=True)]
        z = max(g)
        for c, gi in zip(b.children, g, strict=True):
            c.phi = b.phi + (c.logit - norm)
            v = b.g_phi - gi + _log1mexp(gi - z)
            c.g_phi = b.g_phi - max(0.0, v) - math.log1p(math.exp(-abs(v)))
            candidates.append(c)
    candidates.sort(key=lambda n: n.g_phi, reverse=True)
    chosen = candidates[:width]
    for c in candidates[width:]:
        _prune(c)
    for c in chosen:
        c.committed = True
    return chosen


def _update_phi_path(leaf: WeaveNode) -> None:
    for node in leaf.branch()[1:]:
        parent = node.parent
        assert parent is not None
        scored = [c.logit for c in parent.children]
        node.phi = parent.phi + node.logit - _logsumexp(scored)


def _prune(node: WeaveNode) -> None:
    if node.committed:
        return
    node.pruned = True
    for c in node.children:
        _prune(c)


def _logsumexp(values: list[float]) -> float:
    finite = [v for v in values if v != -math.inf]
    if not finite:
        return -math.inf
    m = max(finite)
    return m + math.log(sum(math.exp(v - m) for v in finite))


def _log1mexp(x: float) -> float:
    """log(1 - exp(x)) for x <= 0, stable."""
    if x >= 0:
        return -math.inf
    return math.log(-math.expm1(x)) if x > -0.693 else math.log1p(-math.exp(x))
