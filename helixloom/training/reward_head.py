"""MiniHF's reward head: a small MLP on the base model's pooled hidden states, from thumbs up/down.

The frozen base model reads ``prompt + response``; its last hidden state, mean-pooled over the tokens
(``Engine.embed``), is standardised and fed to ``Linear(d, d) -> GELU -> Linear(d, 1)`` (the MLP that
MiniHF meant; its first version applied both layers to the input). The output is the log-odds that a
person gives the response a thumbs up. Training uses ``BCEWithLogitsLoss`` (classes balanced) and Adam
with a fixed seed on embeddings computed once, a stratified validation split and early stopping on the
validation loss, so the head trains in seconds. Labelled rows come from a JSONL file or from the store:
rated loom nodes (the branch up to the node is the response to the root's prompt) and rated sessions
(the last user message and the answer to it).

The saved folder holds ``head.safetensors`` (the MLP, the standardisation and a probe embedding of a
fixed text) and ``helixloom_reward.json``. Loading it on an engine re-embeds the probe: an engine
running another model, or another adapter, is refused with a clear error instead of scoring nonsense.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from helixloom import atomic
from helixloom.errors import HelixloomError
from helixloom.rewards import Reward
from helixloom.store.records import utc_now
from helixloom.training.configs import RewardHeadConfig
from helixloom.training.feedback import LabelledExample
from helixloom.training.reward_model import META_FILE, portable_spec, read_meta

if TYPE_CHECKING:
    from helixloom.engine import Engine

WEIGHTS_FILE = "head.safetensors"
PROBE_TEXT = "helixloom reward head probe. The quick brown fox jumps over the lazy dog."
PROBE_MIN_COSINE = 0.99  # bf16 on CUDA against fp32 on CPU stays far above this; another model does not


class RewardHead(nn.Module):
    """``Linear(d, d) -> GELU -> Linear(d, 1)`` on standardised embeddings; outputs a logit."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp((x - self.mean) / self.std).squeeze(-1)  # x: [B, d] -> [B]


def head_text(prompt: str, response: str) -> str:
    """What the base model reads for a (prompt, response): the two joined, as a loom branch is."""
    return prompt + response


# ---------------------------------------------------------------------------------------------- data


# ---------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class RewardHeadResult:
    folder: Path
    train_examples: int
    val_examples: int
    val_accuracy: float | None  # share of validation examples classified right; None without a split
    val_loss: float | None
    epochs: int
    steps: int
    embed_seconds: float
    train_seconds: float
    cached_embeddings: int  # embeddings read from the run folder's cache instead of computed


MIN_EXAMPLES = 4


def check_examples(examples: Sequence[LabelledExample]) -> None:
    ups = sum(e.label for e in examples)
    downs = len(examples) - ups
    if len(examples) < MIN_EXAMPLES:
        raise HelixloomError(
            f"too few labelled examples: {len(examples)}",
            f"a reward head needs at least {MIN_EXAMPLES}, thumbs up and down; dozens to be useful",
        )
    if not ups or not downs:
        which = "thumbs up (label 1)" if not ups else "thumbs down (label 0)"
        raise HelixloomError(
            f"the examples have no {which}: a head cannot learn from one class",
            "add examples of both kinds",
        )


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) indices, ``fraction`` of each class held out while each keeps one in training."""
    rng = random.Random(seed)
    train: list[int] = []
    val: list[int] = []
    for cls in (0, 1):
        idx = [i for i, y in enumerate(labels) if y == cls]
        rng.shuffle(idx)
        held = min(round(len(idx) * fraction), len(idx) - 1) if fraction > 0 else 0
        val += idx[:held]
        train += idx[held:]
    return sorted(train), sorted(val)


def embed_cached(
    engine: Engine, texts: Sequence[str], adapter: str | None, cache_file: Path | None, probe: list[float]
) -> tuple[torch.Tensor, int]:
    """Embeddings of ``texts`` ([N, d] fp32), reusing those cached in ``cache_file`` for this model.

    The cache is keyed by the text's SHA-256 and valid only while the probe embedding matches (the same
    model and adapter); new embeddings are added to it.
    """
    from safetensors.torch import load_file, save_file

    keys = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
    cache: dict[str, torch.Tensor] = {}
    probe_t = torch.tensor(probe, dtype=torch.float32)
    if cache_file is not None and cache_file.is_file():
        try:
            loaded = load_file(str(cache_file))
        except Exception:  # a damaged cache is recomputed, never fatal
            loaded = {}
        old_probe = loaded.pop("__probe__", None)
        if (
            old_probe is not None
            and old_probe.shape == probe_t.shape
            and torch.allclose(old_probe, probe_t, atol=1e-4)
        ):
            cache = loaded
    missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in cache}.items())
    reused = sum(k in cache for k in keys)
    batch = 64
    bar = _bar(len(missing), "embedding")
    done = 0
    try:
        for start in range(0, len(missing), batch):
            chunk = missing[start : start + batch]
            vectors = engine.embed([t for _, t in chunk], adapter=adapter)
            for (k, _), v in zip(chunk, vectors, strict=True):
                cache[k] = torch.tensor(v, dtype=torch.float32)
            done += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        # Saved on an interruption too: training again (--resume) embeds only the rest.
        if cache_file is not None and done:
            tensors = {**cache, "__probe__": probe_t}
            atomic.write_with(cache_file, lambda tmp: save_file(tensors, str(tmp)))
    return torch.stack([cache[k] for k in keys]), reused


def _bar(total: int, desc: str) -> Any:
    if total <= 0:
        return None
    from helixloom.jobs import progress_bar

    return progress_bar(total, unit="text", desc=desc, leave=False)


def train_reward_head(
    engine: Engine,
    examples: Sequence[LabelledExample],
    out_dir: Path,
    config: RewardHeadConfig | None = None,
    *,
    adapter: str | None = None,
    run_dir: Path | None = None,
) -> RewardHeadResult:
    """Train a reward head on ``engine``'s hidden states (under ``adapter``) and write it to ``out_dir``.

    Embeddings are cached in ``run_dir`` (when given), so training again after more ratings embeds
    only the new examples.
    """
    config = config or RewardHeadConfig()
    check_examples(examples)
    if not engine.supports_embeddings:
        raise HelixloomError(
            f"the {engine.backend} engine for {engine.model_name} gives no hidden states for a reward head",
            "use the hf backend (a local model folder, a hub id or default)",
        )
    adapter_info = None
    if adapter is not None:
        known = {a.name: a for a in engine.adapters()}
        if adapter not in known:
            raise HelixloomError(f"adapter {adapter!r} is not loaded on the engine", "load it first")
        adapter_info = {"name": adapter, "path": str(Path(known[adapter].path).resolve())}
    start = time.perf_counter()
    probe = engine.embed([PROBE_TEXT], adapter=adapter)[0]
    cache_file = run_dir / "embeddings.safetensors" if run_dir is not None else None
    x, reused = embed_cached(
        engine, [head_text(e.prompt, e.response) for e in examples], adapter, cache_file, probe
    )
    embed_seconds = time.perf_counter() - start
    y = torch.tensor([float(e.label) for e in examples])
    train_idx, val_idx = stratified_split([e.label for e in examples], config.val_split, config.seed)

    start = time.perf_counter()
    # Steps this small lose more to thread hand-offs than they gain (tens of times on a busy 2-core machine).
    threads = torch.get_num_threads()
    if x.shape[1] <= 1024:
        torch.set_num_threads(1)
    try:
        head, stats = fit_head(x[train_idx], y[train_idx], x[val_idx], y[val_idx], config)
    finally:
        torch.set_num_threads(threads)
    train_seconds = time.perf_counter() - start

    from safetensors.torch import save_file

    try:
        base_model = portable_spec(engine.model_name)
    except HelixloomError:
        base_model = engine.model_name
    tensors = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    tensors["probe"] = torch.tensor(probe, dtype=torch.float32)
    ups = int(y.sum())
    meta = {
        "kind": "reward_head",
        "format": 1,
        "dim": int(x.shape[1]),
        "base_model": base_model,
        "adapter": adapter_info,
        "pooling": "mean of the last hidden state over the text's tokens",
        "text": "prompt + response",
        "normalisation": "standardised with the training examples' mean and std (std floored at a tenth "
        "of its mean)",
        "probe_text": PROBE_TEXT,
        "examples": {"up": ups, "down": len(examples) - ups},
        "train_examples": len(train_idx),
        "val_examples": len(val_idx),
        **stats,
        "config": {f.name: getattr(config, f.name) for f in fields(config)},
        "created_at": utc_now(),
    }
    with atomic.staged_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return RewardHeadResult(
        folder=out_dir,
        train_examples=len(train_idx),
        val_examples=len(val_idx),
        val_accuracy=stats["val_accuracy"],
        val_loss=stats["val_loss"],
        epochs=stats["epochs"],
        steps=stats["steps"],
        embed_seconds=embed_seconds,
        train_seconds=train_seconds,
        cached_embeddings=reused,
    )


def fit_head(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    config: RewardHeadConfig,
) -> tuple[RewardHead, dict[str, Any]]:
    """Fit a head on embeddings ([N, d]) and labels ([N], 0/1); early stopping on the validation loss.

    Without validation examples it runs ``max_epochs`` epochs. Returns the head (the best epoch's
    weights) and its statistics.
    """
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = RewardHead(int(x_train.shape[1]))
    head.mean.copy_(x_train.mean(dim=0))
    std = x_train.std(dim=0, unbiased=False)
    # A dimension that barely varied in training is not blown up more than 10x the typical one.
    head.std.copy_(std.clamp(min=max(0.1 * float(std.mean()), 1e-6)))
    ups = float(y_train.sum())
    pos_weight = torch.tensor((len(y_train) - ups) / max(ups, 1.0))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    val_loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    has_val = len(y_val) > 0
    best = (math.inf, 0)
    best_state = {k: v.clone() for k, v in head.state_dict().items()}
    steps = epochs = 0
    train_losses: list[float] = []
    for epoch in range(1, config.max_epochs + 1):
        head.train()
        order = torch.randperm(len(y_train), generator=generator)
        epoch_loss = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = loss_fn(head(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            epoch_loss += float(loss.detach()) * len(batch)
        train_losses.append(epoch_loss / len(order))
        epochs = epoch
        if has_val:
            head.eval()
            with torch.no_grad():
                val_loss = float(val_loss_fn(head(x_val), y_val))
            if val_loss < best[0] - 1e-6:
                best = (val_loss, epoch)
                best_state = {k: v.clone() for k, v in head.state_dict().items()}
            elif epoch - best[1] >= config.patience:
                break
    if has_val:
        head.load_state_dict(best_state)
    head.eval()
    stats: dict[str, Any] = {
        "epochs": epochs,
        "best_epoch": best[1] if has_val else epochs,
        "steps": steps,
        "train_loss": train_losses[-1] if train_losses else None,
        "val_loss": None,
        "val_accuracy": None,
    }
    with torch.no_grad():
        train_logits = head(x_train)
        stats["train_accuracy"] = float(((train_logits > 0).float() == y_train).float().mean())
        if has_val:
            logits = head(x_val)
            stats["val_loss"] = float(val_loss_fn(logits, y_val))
            stats["val_accuracy"] = float(((logits > 0).float() == y_val).float().mean())
    return head, stats


# ---------------------------------------------------------------------------------------------- scoring


class RewardHeadReward(Reward):
    """Scores (prompt, response) with a trained head on the engine's embeddings: thumbs-up log-odds."""

    def __init__(
        self, engine: Engine, head: RewardHead, meta: dict[str, Any], *, adapter: str | None, name: str
    ) -> None:
        self.engine = engine
        self.head = head.eval()
        self.meta = meta
        self.adapter = adapter
        self.name = name

    @classmethod
    def load(cls, path: str | Path, engine: Engine) -> RewardHeadReward:
        """Load a head written by ``train_reward_head``; the engine must run the model it was trained on."""
        from safetensors.torch import load_file

        folder = Path(path)
        meta = read_meta(folder, "reward_head")
        trained_on = str(meta.get("base_model"))
        if not engine.supports_embeddings:
            raise HelixloomError(
                f"reward head {folder.name} reads hidden states, which the {engine.backend} engine for "
                f"{engine.model_name} cannot give",
                f"use it with {trained_on} on the hf backend",
            )
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise HelixloomError(f"reward head {folder} has no {WEIGHTS_FILE}")
        tensors = load_file(str(weights))
        probe = tensors.pop("probe")
        dim = int(meta["dim"])
        adapter = None
        if meta.get("adapter"):
            adapter = str(meta["adapter"]["name"])
            if adapter not in {a.name for a in engine.adapters()}:
                engine.load_adapter(adapter, str(meta["adapter"]["path"]))
        now = torch.tensor(engine.embed([PROBE_TEXT], adapter=adapter)[0], dtype=torch.float32)
        if now.shape[0] != dim:
            raise HelixloomError(
                f"reward head {folder.name} was trained on {trained_on} (hidden size {dim}); the engine runs "
                f"{engine.model_name} (hidden size {now.shape[0]})",
                f"load it with the model it was trained on ({trained_on}), or train a head for this one",
            )
        cosine = float(torch.nn.functional.cosine_similarity(now, probe, dim=0))
        if not cosine >= PROBE_MIN_COSINE:
            raise HelixloomError(
                f"reward head {folder.name} was trained on {trained_on}"
                + (f" with adapter {adapter}" if adapter else "")
                + f"; the engine's model ({engine.model_name}) gives other hidden states "
                f"(probe cosine {cosine:.3f})",
                f"load it with the model it was trained on ({trained_on}), or train a head for this one",
            )
        head = RewardHead(dim)
        head.load_state_dict(tensors)
        return cls(engine, head, meta, adapter=adapter, name=f"head:{folder.name}")

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise HelixloomError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return []
        texts = [head_text(p, r) for p, r in zip(prompts, responses, strict=True)]
        x = torch.tensor(self.engine.embed(texts, adapter=self.adapter), dtype=torch.float32)
        with torch.no_grad():
            return [float(v) for v in self.head(x).tolist()]
