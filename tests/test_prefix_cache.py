"""The prefix cache: what it finds, what it evicts, and that KV computed under one adapter's content
is never used under another (another adapter, the base, or the same name reloaded with new weights)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from helixloom.engine import GenerationRequest, sampling
from helixloom.engine.hf import HFEngine
from helixloom.engine.prefix_cache import PrefixCache
from tests import tiny
from tests.conftest import TinyModel


@dataclass(frozen=True)
class Blob:
    """A value of known size; ``complete`` values can be cut to any prefix."""

    length: int
    nbytes: int = 100
    complete: bool = True

    def cut(self, n: int) -> Blob:
        return Blob(n, self.nbytes, self.complete)


def test_longest_prefix_of_the_same_version_is_found() -> None:
    cache: PrefixCache[Blob] = PrefixCache(10_000)
    cache.store("v1", [1, 2, 3, 4], Blob(4))
    cache.store("v1", [1, 2, 9], Blob(3))
    cache.store("v2", [1, 2, 3, 4, 5, 6], Blob(6))
    hit = cache.lookup("v1", [1, 2, 3, 4, 5, 6, 7])
    assert hit is not None and hit.length == 4
    hit = cache.lookup("v1", [1, 2, 3, 7])  # part of an entry: cut to what is shared
    assert hit is not None and hit.length == 3 and hit.value.length == 3
    hit = cache.lookup("v1", [1, 2, 3, 4])  # at least one token is left to run
    assert hit is not None and hit.length == 3
    assert cache.lookup("v3", [1, 2, 3, 4, 5]) is None  # another adapter version: nothing
    assert cache.lookup("v1", [5, 1, 2]) is None


def test_incomplete_values_are_used_whole_or_not_at_all() -> None:
    """A sliding-window layer's KV past its window cannot be cut to a shorter prefix."""
    cache: PrefixCache[Blob] = PrefixCache(10_000)
    cache.store("v", [1, 2, 3, 4], Blob(4, complete=False))
    assert cache.lookup("v", [1, 2, 3, 9]) is None
    hit = cache.lookup("v", [1, 2, 3, 4, 5])
    assert hit is not None and hit.length == 4


def test_budget_evicts_least_recently_used_and_retain_drops_versions() -> None:
    cache: PrefixCache[Blob] = PrefixCache(300)
    cache.store("a", [1], Blob(1))
    cache.store("a", [2], Blob(1))
    cache.store("b", [3], Blob(1))
    assert cache.lookup("a", [1, 5]) is not None  # [1] is now the most recently used
    cache.store("b", [4], Blob(1))
    assert cache.nbytes == 300 and cache.lookup("a", [2, 5]) is None and cache.stats.evicted == 1
    cache.store("a", [1, 5, 6], Blob(3))  # supersedes [1], a complete prefix of it
    assert cache.lookup("a", [1, 7]) is not None and len(cache) == 3
    cache.retain({"a"})
    assert cache.lookup("b", [3, 5]) is None and len(cache) == 1
    cache.store("c", [9], Blob(1, nbytes=301))  # larger than the whole budget: not kept
    assert len(cache) == 1


def greedy(prompt: str, adapter: str | None = None) -> GenerationRequest:
    return GenerationRequest(prompt, sampling(temperature=0, max_tokens=8, ignore_eos=True), adapter)


def turns() -> list[str]:
    """A growing conversation: each prompt starts with the one before."""
    text = "User: tell me about the sea.\nAssistant:"
    out = [text]
    for question in ["and the tides?", "and the moon?", "and ships?"]:
        text += f" it is large.\nUser: {question}\nAssistant:"
        out.append(text)
    return out


def test_cached_prefixes_give_the_same_greedy_text_with_less_prefill(tiny_engine: HFEngine) -> None:
    engine = tiny_engine
    prompts = turns()
    engine.prefix_caching = False
    try:
        plain = [engine.generate([greedy(p)])[0].token_ids for p in prompts]
        before = engine.prefill_tokens
        for p in prompts:
            engine.generate([greedy(p)])
        uncached = engine.prefill_tokens - before
    finally:
        engine.prefix_caching = True
    engine.prefix_cache.clear()
    before = engine.prefill_tokens
    cached = [engine.generate([greedy(p)])[0].token_ids for p in prompts]
    assert cached == plain
    assert engine.prefill_tokens - before < 0.6 * uncached


def poison(engine: HFEngine, version: str) -> int:
    """Overwrite every cached KV of ``version`` with large noise: a request that used it would go
    wrong. How many entries were poisoned."""
    import torch

    count = 0
    with torch.inference_mode():  # the cached tensors were made there
        for (v, _), value in engine.prefix_cache._entries.items():
            if v == version:
                for k, val in value.layers:
                    k.copy_(torch.randn_like(k) * 50)
                    val.copy_(torch.randn_like(val) * 50)
                count += 1
    return count


def reload_in_place(engine: HFEngine, name: str, folder: Path) -> None:
    """Reloading an adapter under its name, through the engine's API: the old weights go, the
    folder's new ones come in under the same name, with their own content hash."""
    engine.unload_adapter(name)
    engine.load_adapter(name, str(folder))


def test_kv_of_one_adapter_content_is_never_used_for_another(
    fresh_tiny_engine: HFEngine, tiny_model: TinyModel, tmp_path: Path
) -> None:
    engine = fresh_tiny_engine
    mine = tmp_path / "mine"
    shutil.copytree(tiny_model.adapters["alpha"], mine)
    engine.load_adapter("mine", str(mine))
    engine.load_adapter("beta", str(tiny_model.adapters["beta"]))
    prompt = turns()[1]
    follow = prompt + " it is large."
    engine.prefix_caching = False
    expected = {a: engine.generate([greedy(follow, a)])[0].token_ids for a in (None, "mine", "beta")}
    engine.prefix_caching = True

    engine.generate([greedy(prompt, "mine")])  # KV under "mine" is now cached
    version = engine._version("mine")
    assert poison(engine, version) >= 1
    # The base and another adapter on the same tokens do not touch it: their text is exact.
    assert engine.generate([greedy(follow)])[0].token_ids == expected[None]
    assert engine.generate([greedy(follow, "beta")])[0].token_ids == expected["beta"]
    # ...while "mine" itself does use it (so the poison would have shown).
    assert engine.generate([greedy(follow, "mine")])[0].token_ids != expected["mine"]

    # Retrained in place: same name, same folder, new weights. The old version's KV is dropped
    # and never served for the new one.
    engine.prefix_cache.clear()
    engine.generate([greedy(prompt, "mine")])
    assert poison(engine, version) >= 1
    tiny.build_adapter(tiny_model.path, mine, seed=11, targets=("q_proj", "v_proj"))
    reload_in_place(engine, "mine", mine)
    assert engine._version("mine") != version
    engine.prefix_caching = False
    retrained = engine.generate([greedy(follow, "mine")])[0].token_ids
    engine.prefix_caching = True
    assert retrained != expected["mine"]
    assert engine.generate([greedy(follow, "mine")])[0].token_ids == retrained
    assert all(v != version for v, _ in engine.prefix_cache._entries)


@pytest.mark.parametrize("merge", [True, False])
def test_uniform_adapter_batches_match_the_per_row_path(tiny_adapted_engine: HFEngine, merge: bool) -> None:
    """Merged (every row on one adapter) or per row, logits agree; merging never changes the base."""
    import torch

    engine = tiny_adapted_engine
    ids = torch.tensor([engine.encode(turns()[0])])
    with engine._lock, torch.inference_mode():
        base_before = engine._forward([None], input_ids=ids).logits
        engine.merge_uniform_adapters = merge
        try:
            uniform = engine._forward(["alpha", "alpha"], input_ids=ids.repeat(2, 1)).logits
        finally:
            engine.merge_uniform_adapters = True
        mixed = engine._forward(["alpha", None], input_ids=ids.repeat(2, 1)).logits
        base_after = engine._forward([None], input_ids=ids).logits
    assert torch.allclose(uniform[0], mixed[0], atol=1e-4)
    assert torch.equal(base_before, base_after)  # originals copied back, bit for bit
