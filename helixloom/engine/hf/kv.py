"""The KV cache of a running batch, reshaped as rows join and leave, and one row's KV kept for reuse.

A running batch keeps transformers' own ``DynamicCache`` (so Gemma's sliding-window layers keep
their window logic) with every row right-aligned: shorter rows are padded on the left and masked.
A row joining is its own prefill's cache, padded on the left to the batch's width (or the batch
padded to the row's) and stacked on the batch dimension; a row leaving is dropped with
``batch_select_indices`` and columns that became padding for every row are trimmed away.
transformers has no operation for either (its continuous-batching manager packs all requests into
one row of tokens, which PEFT's per-row adapters cannot address), hence these few functions.

The sliding-window layer stores at most ``window - 1`` positions and counts the logical width in
``cumulative_length``; the mask it builds looks at the last positions of that width. Right-aligned
rows keep every row's window on its own last tokens, so padding or trimming on the left is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _layers(cache: Any) -> list[Any]:
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    for layer in cache.layers:
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
            raise TypeError(f"cannot reshape a {type(layer).__name__} cache layer")
    return list(cache.layers)


def reshapable(cache: Any) -> bool:
    """Whether rows can join and leave this cache (plain and sliding-window dynamic layers only)."""
    try:
        _layers(cache)
    except TypeError:
        return False
    return True


def _sliding(layer: Any) -> bool:
    from transformers.cache_utils import DynamicSlidingWindowLayer

    return isinstance(layer, DynamicSlidingWindowLayer)


def _stored(layer: Any, width: int) -> int:
    """How many positions ``layer`` holds when the batch is ``width`` wide."""
    return min(width, layer.sliding_window - 1) if _sliding(layer) else width


def _fit(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """``tensor`` ([B, H, S, D]) cut or zero-padded on the left of S to ``size``."""
    import torch

    have = tensor.shape[-2]
    if have >= size:
        return tensor[:, :, have - size :, :]
    pad = tensor.new_zeros((*tensor.shape[:2], size - have, tensor.shape[-1]))
    return torch.cat([pad, tensor], dim=-2)


def resize(cache: Any, width: int) -> None:
    """Make ``cache`` ``width`` positions wide, padding or trimming on the left (the masked side)."""
    for layer in _layers(cache):
        size = _stored(layer, width)
        layer.keys, layer.values = _fit(layer.keys, size), _fit(layer.values, size)
        if _sliding(layer):
            layer.cumulative_length = width


def stack(cache: Any, other: Any) -> None:
    """Append ``other``'s rows to ``cache`` (both as wide; see ``resize``)."""
    import torch

    for mine, theirs in zip(_layers(cache), _layers(other), strict=True):
        mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
        mine.values = torch.cat([mine.values, theirs.values], dim=0)


@dataclass(frozen=True)
class RowKV:
    """One sequence's keys and values after its first ``length`` tokens, unpadded: per layer a
    ([1, H, S, D] keys, values) pair, where a sliding-window layer holds only its last positions."""

    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    length: int

    @property
    def complete(self) -> bool:
        """Every layer holds every position, so any prefix of it is valid too (see ``cut``)."""
        return all(k.shape[-2] == self.length for k, _ in self.layers)

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)

    def cut(self, n: int) -> RowKV:
        """The KV of the first ``n`` tokens (a complete RowKV, or ``n == length``)."""
        if n == self.length:
            return self
        assert self.complete and 0 < n < self.length
        return RowKV(tuple((k[:, :, :n], v[:, :, :n]) for k, v in self.layers), n)


def extract(cache: Any, row: int, length: int) -> RowKV:
    """Row ``row`` of a right-aligned batch cache, whose last ``length`` positions are its tokens."""
    layers = []
    for layer in _layers(cache):
        n = min(length, layer.keys.shape[-2])
        layers.append(
            (
                layer.keys[row : row + 1, :, layer.keys.shape[-2] - n :].clone(),
                layer.values[row : row + 1, :, layer.values.shape[-2] - n :].clone(),
            )
        )
    return RowKV(tuple(layers), length)


def empty(config: Any) -> Any:
    """An empty ``DynamicCache`` for a model with ``config`` (its sliding-window layers included)."""
    from transformers import DynamicCache

    return DynamicCache(config=config)


def build(config: Any, kv: RowKV) -> Any:
    """A one-row ``DynamicCache`` holding ``kv``, ready to continue from position ``kv.length``."""
    cache = empty(config)
    for layer, (keys, values) in zip(_layers(cache), kv.layers, strict=True):
        layer.lazy_initialization(keys, values)
        # Copies: the cache grows by concatenation, but a sliding layer's window keeps views.
        layer.keys, layer.values = keys.clone(), values.clone()
        if _sliding(layer):
            layer.cumulative_length = kv.length
    return cache
