"""The rewards a remote client may steer a Weave search by (``/api/weave``, the loom's weave), each
loaded once per engine and loaded again when its files change (a retrained head, an improve run's
next round): never served stale. ``py:`` rewards, files and models are the operator's, from the CLI."""

from __future__ import annotations

import threading
from typing import Any

from helixloom import paths
from helixloom.errors import HelixloomError
from helixloom.rewards import Reward
from helixloom.server.state import ServerState

_SERVED_REWARDS = ("head", "rm", "improve", "constitution", "evaluator", "judge")
_reward_cache: dict[tuple[int, str, float], Reward] = {}
# Held while a reward is looked up or loaded: two requests for one rm:NAME loaded it twice, and two
# evictions at once could pop the same key (a KeyError, a 500)
_reward_lock = threading.Lock()


def served_reward(state: ServerState, spec: str) -> Reward:
    """The reward a request names, if a remote client may name it (see ``WeaveWithReward``)."""
    from helixloom.training.reward_spec import load_reward

    kind, _, arg = spec.partition(":")
    if kind not in _SERVED_REWARDS:
        raise HelixloomError(
            f"reward {kind!r} cannot be used over HTTP",
            f"use {', '.join(_SERVED_REWARDS)}; Python and file rewards only from the CLI",
            param="reward",
        )
    stamp = 0.0
    if kind in ("head", "rm"):
        folder = paths.home() / "rewards" / paths.check_name(arg, "reward name", param="reward")
        if not folder.is_dir():
            raise HelixloomError(f"no trained reward {arg!r}", "train it first (train reward-head NAME)")
        stamp = max((f.stat().st_mtime for f in folder.iterdir()), default=0.0)  # retrained: reloaded
        spec = f"{kind}:{folder}"
    elif kind == "improve":
        from helixloom.training.improve import ImproveRun
        from helixloom.training.reward_spec import parse_improve_arg

        name, round_ = parse_improve_arg(arg)
        # a new round's reward (or a rerun's) is loaded afresh, never served stale
        stamp = ImproveRun.open(name).reward_file(round_).stat().st_mtime
    elif kind in ("constitution", "judge") and arg:
        raise HelixloomError(f"{kind} takes no argument over HTTP (files and models are the operator's)")
    key = (id(state.engine), spec, stamp)
    with _reward_lock:
        if key not in _reward_cache:
            while len(_reward_cache) >= 4:
                _reward_cache.pop(next(iter(_reward_cache)))
            _reward_cache[key] = load_reward(spec, engine=state.engine, store=state.store)
        return _reward_cache[key]


def steering_rewards() -> list[dict[str, Any]]:
    """What a client may steer a search by, newest first: the trained rewards under ``rewards/``
    (``head:NAME``, ``rm:NAME``), the improve runs that have learned a reward (``improve:NAME``, its
    latest round's), then MiniHF's default constitution."""
    import json

    from helixloom.training.reward_model import META_FILE

    found: list[tuple[float, dict[str, Any]]] = []
    prefix = {"reward_head": "head", "reward_model": "rm"}
    rewards = paths.home() / "rewards"
    for folder in sorted(rewards.iterdir()) if rewards.is_dir() else []:
        try:
            kind = prefix.get(str(json.loads((folder / META_FILE).read_text(encoding="utf-8")).get("kind")))
            stamp = (folder / META_FILE).stat().st_mtime
        except (OSError, ValueError, AttributeError):
            continue  # not a trained reward (or one being written)
        if kind:
            found.append((stamp, {"spec": f"{kind}:{folder.name}", "kind": kind, "name": folder.name}))
    runs = paths.home() / "runs" / "improve"
    for folder in sorted(runs.iterdir()) if runs.is_dir() else []:
        files = sorted(folder.glob("round-*/reward.safetensors"), key=lambda f: f.stat().st_mtime)
        if files and (folder / "run.json").is_file():
            entry = {"spec": f"improve:{folder.name}", "kind": "improve", "name": folder.name}
            found.append((files[-1].stat().st_mtime, {**entry, "rounds": len(files)}))
    found.sort(key=lambda x: x[0], reverse=True)
    return [e for _, e in found] + [{"spec": "constitution", "kind": "constitution", "name": "default"}]
