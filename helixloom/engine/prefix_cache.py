"""A prefix cache across requests: state computed for a token sequence under one adapter *content*.

Engines keep what a prompt (and the answer after it) left in the model (its KV) and start a later
request that begins with the same tokens from there: a multi-turn chat's next turn, a HelixNet stage
whose system+question prefix comes back, a Weave node's children. Like vLLM's automatic prefix
caching it needs nothing from callers.

An entry is keyed by the adapter's content hash (``AdapterInfo.version``) and the tokens, never by
the adapter's name: KV computed under one adapter is wrong under another (LoRA changes K and V), and
an adapter reloaded in place under the same name is another adapter. Entries of versions that are no
longer loaded are dropped (``retain``); the rest live under a byte budget, least recently used first
out. The cache holds opaque values (an engine's own KV) that say how big they are and whether a
prefix of them is valid on its own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Prefix(Protocol):
    """What the cache needs of a value: its size, its length in tokens, and cutting it shorter."""

    @property
    def length(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    @property
    def complete(self) -> bool:
        """True when every prefix of the value is valid (``cut`` works for any length)."""
        ...

    def cut(self: V, n: int) -> V: ...


V = TypeVar("V", bound=Prefix)


@dataclass(frozen=True)
class Hit(Generic[V]):
    """A cached prefix of the asked tokens: its first ``length`` tokens are already computed."""

    length: int
    value: V


@dataclass
class PrefixCacheStats:
    lookups: int = 0
    hits: int = 0
    tokens_asked: int = 0  # tokens of every looked-up sequence
    tokens_reused: int = 0  # of those, tokens a hit covered
    evicted: int = 0


class PrefixCache(Generic[V]):
    """Values keyed by (adapter version, tokens), found by the longest shared prefix, within a byte
    budget. Thread-safe."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError("the prefix cache budget must be >= 0 bytes")
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[tuple[str, tuple[int, ...]], V] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.stats = PrefixCacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def lookup(self, version: str, tokens: Sequence[int]) -> Hit[V] | None:
        """The longest cached prefix of ``tokens`` computed under adapter ``version``, leaving at
        least one token to compute (the model's logits come from the last token run)."""
        want = tuple(tokens)
        limit = len(want) - 1
        best: tuple[int, tuple[str, tuple[int, ...]]] | None = None
        with self._lock:
            self.stats.lookups += 1
            self.stats.tokens_asked += len(want)
            for key, value in self._entries.items():
                if key[0] != version:
                    continue
                shared = _shared(key[1], want, limit)
                usable = shared if shared == value.length or value.complete else 0
                if usable > 0 and (best is None or usable > best[0]):
                    best = (usable, key)
            if best is None:
                return None
            self._entries.move_to_end(best[1])
            value = self._entries[best[1]]
            self.stats.hits += 1
            self.stats.tokens_reused += best[0]
        return Hit(best[0], value.cut(best[0]))

    def store(self, version: str, tokens: Sequence[int], value: V) -> None:
        """Keep ``value``, the state after ``tokens`` under adapter ``version``. An entry it makes
        redundant (a complete value covers all its prefixes) is dropped."""
        key = (version, tuple(tokens))
        assert len(key[1]) == value.length, "a value is stored under the tokens it holds"
        if not version or value.nbytes > self.budget_bytes:
            return  # an adapter without a content hash is never cached; nor what cannot fit
        with self._lock:
            if value.complete:
                for old in [k for k in self._entries if k[0] == version and _is_prefix(k[1], key[1])]:
                    self._drop(old)
            elif key in self._entries:
                self._drop(key)
            self._entries[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.budget_bytes:
                self._drop(next(iter(self._entries)))
                self.stats.evicted += 1

    def retain(self, versions: Collection[str]) -> None:
        """Drop every entry computed under a version not in ``versions`` (an adapter unloaded or
        reloaded with new content; its entries could never be hit again)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] not in versions]:
                self._drop(key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _drop(self, key: tuple[str, tuple[int, ...]]) -> None:
        self._bytes -= self._entries.pop(key).nbytes


def _shared(a: tuple[int, ...], b: tuple[int, ...], limit: int) -> int:
    """How many tokens ``a`` and ``b`` share at their start, at most ``limit``."""
    n = min(len(a), len(b), limit)
    if a[:n] == b[:n]:  # the common case (a stored prompt the new one extends), compared in C
        return n
    lo, hi = 0, n  # the shared length is in [lo, hi): bisect with slice comparisons
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _is_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) <= len(b) and b[: len(a)] == a
