"""Parallel decoding on llama.cpp (the embedded default GGUF): several requests in one context, one
sequence each; the same greedy text as one at a time; adapters take turns; an abandoned row frees its
sequence at once; prefixes reused exactly and only under the same adapter content."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helixloom.engine import GenerationRequest, GenerationResult, StreamDelta, sampling

if os.environ.get("HELIXLOOM_REQUIRE_LLAMACPP") == "1":
    import llama_cpp  # noqa: F401 - fail loudly where the backend must be present
else:
    pytest.importorskip("llama_cpp")

from helixloom.engine.llamacpp import LlamaCppEngine
from tests.conftest import home_at

pytestmark = pytest.mark.default_model

LONG = (
    "The history of the printing press begins in China, where woodblock printing was used for "
    "centuries before Johannes Gutenberg built a press with movable metal type in Mainz around 1440."
)
PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    LONG,
    LONG + " Within fifty years",
    "In 1492, Columbus",
]


@pytest.fixture(scope="module")
def home(default_model_home: Path) -> Iterator[Path]:
    with home_at(default_model_home) as home:
        yield home


@pytest.fixture(scope="module")
def engines(home: Path, gemma_loras: dict[str, Path]) -> Iterator[tuple[LlamaCppEngine, LlamaCppEngine]]:
    """Four sequences, and one (what 'one at a time' means), with the two random LoRAs loaded."""
    par = LlamaCppEngine("llamacpp:default", n_parallel=4)
    alone = LlamaCppEngine("llamacpp:default", n_parallel=1)
    for engine in (par, alone):
        for name, folder in gemma_loras.items():
            engine.load_adapter(name, str(folder))
    yield par, alone
    par.close()
    alone.close()


def greedy(prompt: str, adapter: str | None = None, **kw: Any) -> GenerationRequest:
    return GenerationRequest(prompt, sampling(**{"temperature": 0, "max_tokens": 12, **kw}), adapter)


def decode_widths(engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records how many sequences each llama_decode of the engine covers."""
    widths: list[int] = []
    fill = engine._pool.fill

    def spy(entries: list[tuple[int, int, int, bool]]) -> None:
        widths.append(len({e[0] for e in entries}))
        fill(entries)

    monkeypatch.setattr(engine._pool, "fill", spy)
    return widths


def test_parallel_equals_sequential_under_greedy(
    engines: tuple[LlamaCppEngine, LlamaCppEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nine rows (more than the four sequences, so freed sequences take waiting rows mid-batch):
    base rows of different lengths, some longer than a prompt chunk, a stop sequence, and rows on an
    adapter. Each row's greedy tokens equal the same request run alone on a one-sequence engine
    with nothing cached, and the base rows did decode together."""
    par, alone = engines
    requests = [greedy(p, max_tokens=6 + 4 * i, ignore_eos=True) for i, p in enumerate(PROMPTS)]
    requests += [
        greedy(PROMPTS[0], max_tokens=30, ignore_eos=True, stop=[" is"]),
        greedy(LONG, adapter="rand", max_tokens=16, ignore_eos=True),
        greedy(PROMPTS[1], adapter="rand", max_tokens=16, ignore_eos=True),
    ]
    widths = decode_widths(par, monkeypatch)
    par.clear_cache()
    batch = par.generate(requests)
    assert max(widths) == 4  # four sequences decoded in one llama_decode
    for request, got in zip(requests, batch, strict=True):
        alone.clear_cache()
        want = alone.generate([request])[0]
        assert (got.text, got.token_ids, got.finish_reason) == (want.text, want.token_ids, want.finish_reason)
    assert batch[6].finish_reason == "stop"
    assert len({r.text for r in batch}) == len(batch)
    # Streams of parallel rows join to their texts.
    texts = [""] * 4
    for row, event in par.stream_batch(requests[:4]):
        if isinstance(event, StreamDelta):
            texts[row] += event.text
    assert texts == [r.text for r in batch[:4]]


def test_adapters_take_turns_and_each_row_is_its_own(
    engines: tuple[LlamaCppEngine, LlamaCppEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows on different adapters in one batch: llama.cpp applies a LoRA to the whole context, so
    they never share a decode; each row's text is what its own adapter gives alone."""
    par, alone = engines
    plan = [("rand", PROMPTS[0]), (None, PROMPTS[0]), ("rand2", PROMPTS[0]), ("rand", PROMPTS[2])]
    plan.append((None, LONG))
    applied: list[Any] = []
    use = par._pool.use_adapter

    def spy(handle: Any) -> None:
        use(handle)
        applied.append(handle)

    monkeypatch.setattr(par._pool, "use_adapter", spy)
    fill = par._pool.fill

    def one_adapter(entries: list[tuple[int, int, int, bool]]) -> None:
        # Every sequence decoded here was claimed under the adapter now on the context.
        keys = {par._pool.seqs[e[0]].key for e in entries}
        assert len(keys) == 1
        fill(entries)

    monkeypatch.setattr(par._pool, "fill", one_adapter)
    batch = par.generate([greedy(p, a) for a, p in plan])
    for (adapter, prompt), got in zip(plan, batch, strict=True):
        alone.clear_cache()
        assert got.text == alone.generate([greedy(prompt, adapter)])[0].text
    assert len({r.text for r in batch[:3]}) == 3  # the same prompt under three adapters
    names = {id(par._adapters[name][1]): name for name in ("rand", "rand2")}  # ctypes handles
    assert {"rand", "rand2", None} <= {None if h is None else names[id(h)] for h in applied}


def test_an_aborted_row_frees_its_sequence_for_a_waiting_one(
    engines: tuple[LlamaCppEngine, LlamaCppEngine],
) -> None:
    """One sequence, two requests: the second waits; when the first's caller goes away, the second
    takes the sequence in the same step, and its text is unharmed."""
    _, alone = engines
    batch = alone.open_batch()
    first, second = batch.join(
        [greedy(LONG, max_tokens=200, ignore_eos=True), greedy(PROMPTS[2], max_tokens=8, ignore_eos=True)]
    )
    assert {rid for rid, _ in batch.step()} == {first}  # the second waits for the only sequence
    events = batch.step(lambda rid: rid == first)
    ended = {rid: e for rid, e in events if isinstance(e, GenerationResult)}
    assert ended[first].finish_reason == "abort" and ended[first].usage.completion_tokens == 1
    assert any(rid == second for rid, e in events if isinstance(e, StreamDelta))  # it started at once
    got = None
    while len(batch):
        for _, event in batch.step():
            if isinstance(event, GenerationResult):
                got = event
    assert got is not None and not any(s.busy for s in alone._pool.seqs)
    alone.clear_cache()
    assert got.token_ids == alone.generate([greedy(PROMPTS[2], max_tokens=8, ignore_eos=True)])[0].token_ids
    # A consumer that stops reading a stream frees its sequences too.
    stream = alone.stream_batch([greedy(LONG, max_tokens=200, ignore_eos=True)])
    next(stream)
    stream.close()
    assert not any(s.busy for s in alone._pool.seqs)


def test_prefix_reuse_is_exact_and_keyed_by_adapter_content(
    home: Path, gemma_loras: dict[str, Path], tmp_path: Path
) -> None:
    """A reused prefix gives the same greedy tokens as a fresh prompt. KV computed under one
    adapter, or under an older file loaded under the same name, is never reused; the same bytes
    under another name are (the key is the adapter's content hash, not its name)."""
    rand, rand2 = (gemma_loras[n] / "adapter_model.gguf" for n in ("rand", "rand2"))
    fresh = LlamaCppEngine("llamacpp:default", n_parallel=1)
    engine = LlamaCppEngine("llamacpp:default", n_parallel=1)  # one sequence: one cached prefix
    try:
        for name, file in (("rand", rand), ("rand2", rand2)):
            fresh.load_adapter(name, str(file))
        want = {}
        for a in (None, "rand", "rand2"):
            fresh.clear_cache()
            want[a] = fresh.generate([greedy(LONG, a)])[0].token_ids
        assert len(set(want.values())) == 3
        path = tmp_path / "a.gguf"
        shutil.copy(rand, path)
        first = engine.load_adapter("a", str(path))
        engine.load_adapter("same-bytes", str(rand))
        assert engine.generate([greedy(LONG, "a")])[0].token_ids == want["rand"]
        hits = engine.prefix_hits
        assert engine.generate([greedy(LONG, "same-bytes")])[0].token_ids == want["rand"]
        assert engine.prefix_hits > hits  # same content under another name: reused, exactly
        # A reload in place: other weights at the same path under the same name.
        engine.unload_adapter("a")
        shutil.copy(rand2, path)
        second = engine.load_adapter("a", str(path))
        assert second.version != first.version and second.path == first.path
        hits = engine.prefix_hits
        assert engine.generate([greedy(LONG, "a")])[0].token_ids == want["rand2"]
        assert engine.prefix_hits == hits  # the old file's KV was not used
        assert engine.generate([greedy(LONG)])[0].token_ids == want[None]
        assert engine.prefix_hits == hits  # nor an adapter's KV for the base model
        assert engine.generate([greedy(LONG)])[0].token_ids == want[None]
        assert engine.prefix_hits > hits  # the base model's own: reused, exactly
    finally:
        fresh.close()
        engine.close()


def test_an_adapter_a_waiting_row_needs_is_not_unloaded(
    engines: tuple[LlamaCppEngine, LlamaCppEngine],
) -> None:
    """Found in review: unloading the adapter of a row still waiting for a sequence succeeded, and
    when the row's turn came its error ended every row of the batch."""
    from helixloom.errors import AdapterError

    _, alone = engines
    batch = alone.open_batch()
    try:
        batch.join([greedy(LONG, max_tokens=50, ignore_eos=True), greedy(PROMPTS[2], adapter="rand")])
        batch.step()  # the base row holds the only sequence; the adapter row waits
        assert any(s.busy for s in alone._pool.seqs)
        with pytest.raises(AdapterError, match="waiting request"):
            alone.unload_adapter("rand")
        assert "rand" in {a.name for a in alone.adapters()}
    finally:
        batch.close()


def test_a_batch_running_when_its_engine_closes_fails_cleanly(home: Path) -> None:
    """Found in review: BatchingEngine.close gives its worker 30 s, then closes the engine, which
    frees the contexts a still-running batch would decode on next (a crash of the process)."""
    from helixloom.errors import HelixloomError

    engine = LlamaCppEngine("llamacpp:default", n_parallel=1)
    batch = engine.open_batch()
    batch.join([greedy(PROMPTS[0], max_tokens=50, ignore_eos=True)])
    batch.step()
    engine.close()
    with pytest.raises(HelixloomError, match="closed"):
        batch.step()
    assert len(batch) == 0
    batch.close()
    engine.close()  # twice is harmless


def test_text_held_back_for_a_stop_is_streamed_when_the_answer_ends(
    engines: tuple[LlamaCppEngine, LlamaCppEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: text held back because it may begin a stop sequence was never streamed when
    the answer then ended with EOS (the result had it, the stream did not)."""
    _, alone = engines
    words = alone.tokenize(" cats purr", add_special_tokens=False)
    script = iter([*words, next(iter(alone.eos_token_ids))])
    monkeypatch.setattr(alone, "_sample_token", lambda *_a: next(script))  # what the sampler "picks"
    events = list(alone.stream(greedy(PROMPTS[0], stop=["purring"])))
    result = events[-1]
    assert isinstance(result, GenerationResult) and result.text == " cats purr"
    assert result.finish_reason == "stop"
    assert "".join(e.text for e in events if isinstance(e, StreamDelta)) == " cats purr"


def test_an_empty_token_prompt_is_refused_alone(engines: tuple[LlamaCppEngine, LlamaCppEngine]) -> None:
    """Found in review: a prompt of no tokens would reach the sequence pool (a negative prefix
    length) and sample from another decode's logits. Requests already refuse empty text; a token
    prompt whose ids are empty is refused too, before it joins, and the batch it was sent with
    takes none of them (and frees the sampler it made for the other)."""
    from helixloom.engine.base import TokenPrompt
    from helixloom.errors import HelixloomError

    _, alone = engines
    empty = GenerationRequest(TokenPrompt("<bos>", []), sampling(temperature=0, max_tokens=4))
    with pytest.raises(HelixloomError, match="empty"):
        alone.validate(empty)
    batch = alone.open_batch()
    with pytest.raises(HelixloomError, match="empty"):
        batch.join([greedy(PROMPTS[0]), empty])
    assert len(batch) == 0
    batch.close()


def test_a_blocked_step_waits_for_a_freed_sequence(engines: tuple[LlamaCppEngine, LlamaCppEngine]) -> None:
    """Found in review: while another batch held every sequence, a batch's step returned at once
    with nothing done, so the server's continuous loop spun on the lock. A blocked step now waits,
    with the engine's lock released, until a sequence is freed, and then its row starts."""
    import threading

    _, alone = engines
    holder, blocked = alone.open_batch(), alone.open_batch()
    holder.join([greedy(LONG, max_tokens=6, ignore_eos=True)])
    holder.step()  # it holds the only sequence
    [waiting] = blocked.join([greedy(PROMPTS[0], max_tokens=4, ignore_eos=True)])
    waits: list[float] = []
    entered = threading.Event()
    real_wait = alone._freed.wait

    def spy(timeout: float | None = None) -> bool:
        waits.append(timeout or 0.0)
        entered.set()
        return real_wait(timeout)

    alone._freed.wait = spy  # type: ignore[method-assign]
    try:
        first: list[Any] = []
        worker = threading.Thread(target=lambda: first.extend(blocked.step()))
        worker.start()
        assert entered.wait(10)  # the blocked step waits (the old one returned at once)
        while len(holder):  # the holder runs meanwhile: the wait released the engine's lock
            holder.step()
        worker.join(10)
        assert not worker.is_alive() and first == []
        started = blocked.step()  # the freed sequence is taken
        assert any(rid == waiting for rid, _ in started)
        while len(blocked):
            blocked.step()
    finally:
        del alone._freed.wait
        holder.close()
        blocked.close()
