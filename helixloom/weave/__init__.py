"""MiniHF's Weave: tree search over continuations, steered by a zero-shot yes/no evaluator or by any
reward (a reward head or model trained on users' ratings, a constitution, a judge): AutoLoom, seed
004's "tree search in inference using the same reward model that ranks the data during finetuning".
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

from helixloom.engine import Engine
from helixloom.store import Node, Store
from helixloom.weave.evaluator import Evaluator, Question, default_template
from helixloom.weave.search import Scorer, WeaveConfig, WeaveNode, WeaveResult, weave

__all__ = [
    "Evaluator",
    "Question",
    "RewardScorer",
    "Scorer",
    "WeaveConfig",
    "WeaveNode",
    "WeaveResult",
    "default_template",
    "run",
    "weave",
]


class _Reward(Protocol):  # helixloom.rewards.Reward, which lives above this package
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...

    def score_group(self, prompt: str, responses: Sequence[str]) -> list[float]: ...


class RewardScorer:
    """A reward as Weave's scorer. The search scores siblings together, all continuations of one
    prompt: they go to ``score_group`` (where a pairwise judge compares them with each other)."""

    def __init__(self, reward: _Reward) -> None:
        self.reward = reward

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        prompts = [p for p, _ in pairs]
        responses = [r for _, r in pairs]
        if len(set(prompts)) == 1 and len(pairs) > 1:
            return [float(x) for x in self.reward.score_group(prompts[0], responses)]
        return [float(x) for x in self.reward.score(prompts, responses)]


def run(
    prompt: str,
    engine: Engine,
    evaluator: Scorer,
    config: WeaveConfig | None = None,
    *,
    adapter: str | None = None,
    store: Store | None = None,
    parent: Node | None = None,
    on_node: Callable[[WeaveNode], None] | None = None,
) -> tuple[WeaveResult, str | None]:
    """Run a search and store every node (parent links, text, score, depth, model and adapter) as a
    tree; returns the result and the tree id. With ``parent`` (a stored node whose branch text is
    ``prompt``) the search grows under that node, in its tree: a search continued from the loom."""
    config = config or WeaveConfig()
    if store is None:
        return weave(prompt, engine, evaluator, config, adapter=adapter, on_node=on_node), None
    tree = parent.tree_id if parent is not None else uuid.uuid4().hex

    def keep(node: WeaveNode) -> None:
        if node.parent is None and parent is not None:
            node.node_id = parent.id  # the search's root is the node it started from
            return
        parent_id = node.parent.node_id if node.parent is not None else None
        stored = store.add_node(
            tree,
            parent_id,
            node.text,
            author="human" if node.parent is None else engine.model_name,
            model=None if node.parent is None else engine.model_name,
            adapter=None if node.parent is None else adapter,
            score=node.score,
            meta={"source": "weave", "gumbel": node.gumbel},
        )
        node.node_id = stored.id
        if on_node is not None:
            on_node(node)

    result = weave(prompt, engine, evaluator, config, adapter=adapter, on_node=keep)
    best = {id(n) for n in result.best[: config.beam_width]}
    for node in result.root.nodes():
        if node.node_id is not None and not (node is result.root and parent is not None):
            store.update_node_meta(
                node.node_id,
                {
                    "committed": node.committed,
                    "pruned": node.pruned,
                    "logit": node.logit if math.isfinite(node.logit) else None,
                    "best": id(node) in best,
                    "weave": {
                        "budget": config.budget,
                        "seed": config.seed,
                        "temperature": config.temperature,
                    },
                },
            )
    return result, tree
