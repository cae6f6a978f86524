"""The rewards a remote client may steer a Weave search by (``/api/weave``, the loom's weave), each
loaded once per engine and loaded again when its files change (a retrained head, an improve run's
next round): never served stale. ``py:`` rewards, files and models are the operator's, from the CLI."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from helixloom import paths
from helixloom.errors import HelixloomError
from helixloom.rewards import Reward
from helixloom.server.state import ServerState

if TYPE_CHECKING:
    from helixloom.training.improve import ImproveRun

_SERVED_REWARDS = ("head", "rm", "improve", "constitution", "evaluator", "judge")
_reward_cache: dict[tuple[int, str, Any], Reward] = {}
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
    if kind == "improve":
        from helixloom.training.improve import ImproveRun
        from helixloom.training.reward_spec import parse_improve_arg

        name, round_ = parse_improve_arg(arg)
        return run_reward(state, ImproveRun.open(name), round_)[1]
    if kind in ("constitution", "judge") and arg:
        raise HelixloomError(f"{kind} takes no argument over HTTP (files and models are the operator's)")
    stamp: Any = 0.0
    if kind in ("head", "rm"):
        folder = paths.home() / "rewards" / paths.check_name(arg, "reward name", param="reward")
        if not folder.is_dir():
            raise HelixloomError(f"no trained reward {arg!r}", "train it first (train reward-head NAME)")
        stamp = max((f.stat().st_mtime for f in folder.iterdir()), default=0.0)  # retrained: reloaded
        spec = f"{kind}:{folder}"
    return _cached(
        (id(state.engine), spec, stamp), lambda: load_reward(spec, engine=state.engine, store=state.store)
    )


def run_reward(state: ServerState, run: ImproveRun, round_: int | None = None) -> tuple[int, Reward]:
    """An improve run's learned reward of ``round_`` (default: its latest), as loaded on this
    server, and the round found. Keyed by the round found and its file as stamped now: a new round's
    reward is loaded afresh (never served stale), and so is a rewritten one (atomic: a new inode)."""
    found = run.reward_file(round_)
    number = run.round_of(found)
    info = found.stat()
    key = (id(state.engine), f"improve:{run.name}@{number}", (info.st_ino, info.st_mtime_ns))
    return number, _cached(key, lambda: run.learned_reward(state.engine, number))


def _cached(key: tuple[int, str, Any], load: Callable[[], Reward]) -> Reward:
    with _reward_lock:
        if key not in _reward_cache:
            while len(_reward_cache) >= 4:
                _reward_cache.pop(next(iter(_reward_cache)))
            _reward_cache[key] = load()
        return _reward_cache[key]


def steering_rewards(state: ServerState) -> list[dict[str, Any]]:
    """What a client may steer a search by on this server, newest first: the trained rewards under
    ``rewards/`` (``head:NAME``, ``rm:NAME``), the improve runs that have learned a reward on the served
    model (``improve:NAME``, its latest round's), then MiniHF's default constitution. A head and a run's
    reward read hidden states: listed only where the engine gives them."""
    import json

    from helixloom.training.improve import ImproveRun
    from helixloom.training.reward_model import META_FILE

    hidden_states = state.engine.supports_embeddings

    found: list[tuple[float, dict[str, Any]]] = []
    prefix = {"reward_head": "head", "reward_model": "rm"}
    rewards = paths.home() / "rewards"
    for folder in sorted(rewards.iterdir()) if rewards.is_dir() else []:
        try:
            kind = prefix.get(str(json.loads((folder / META_FILE).read_text(encoding="utf-8")).get("kind")))
            stamp = (folder / META_FILE).stat().st_mtime
        except (OSError, ValueError, AttributeError):
            continue  # not a trained reward (or one being written)
        if kind == "rm" or (kind == "head" and hidden_states):
            found.append((stamp, {"spec": f"{kind}:{folder.name}", "kind": kind, "name": folder.name}))
    runs = paths.home() / "runs" / "improve"
    for folder in sorted(runs.iterdir()) if runs.is_dir() and hidden_states else []:
        try:
            run = ImproveRun.open(folder.name)
            if not run.same_base(state.engine):
                continue
            latest = run.reward_file()
            stamp = latest.stat().st_mtime
        except (HelixloomError, OSError, ValueError, KeyError, TypeError):
            continue  # not a run, a run of another model, or one with no reward yet
        entry = {"spec": f"improve:{folder.name}", "kind": "improve", "name": folder.name}
        found.append((stamp, {**entry, "round": run.round_of(latest)}))
    found.sort(key=lambda x: x[0], reverse=True)
    return [e for _, e in found] + [{"spec": "constitution", "kind": "constitution", "name": "default"}]
