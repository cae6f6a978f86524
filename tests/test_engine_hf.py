"""The engine contract on the hf backend, with the tiny model."""

from __future__ import annotations

import math
import threading

import pytest

from helixloom.engine import GenerationRequest, GenerationResult, StreamDelta, sampling
from helixloom.engine.hf import HFEngine
from helixloom.errors import AdapterError, HelixloomError
from tests.conftest import TinyModel

PROMPTS = [
    "The quick brown fox",
    "Paris is the capital of",
    "A critic reads the answer and says what is wrong with it; a regenerator",
    "def add(a, b):",
]


@pytest.fixture
def engine(tiny_adapted_engine: HFEngine) -> HFEngine:
    """With alpha, beta and gamma loaded (the session's shared engine)."""
    return tiny_adapted_engine


@pytest.fixture
def plain_engine(tiny_engine: HFEngine) -> HFEngine:
    """No adapter loaded, so ``model`` is the transformers model itself (the session's shared engine)."""
    return tiny_engine


def greedy(prompt: str, *, adapter: str | None = None, **kw: object) -> GenerationRequest:
    return GenerationRequest(prompt, sampling(**{"temperature": 0, "max_tokens": 12, **kw}), adapter)


def test_batch_equals_single_greedy(plain_engine: HFEngine) -> None:
    batch = plain_engine.generate([greedy(p) for p in PROMPTS])
    for prompt, result in zip(PROMPTS, batch, strict=True):
        alone = plain_engine.generate([greedy(prompt)])[0]
        assert result.token_ids == alone.token_ids
        assert result.text == alone.text
        assert result.usage == alone.usage


def test_greedy_matches_transformers_generate(plain_engine: HFEngine) -> None:
    """Our loop produces exactly what model.generate does (same model, greedy, no EOS stop)."""
    import torch

    for prompt in PROMPTS[:2]:
        ids = plain_engine.encode(prompt)
        with torch.inference_mode():
            out = plain_engine.model.generate(
                torch.tensor([ids]), max_new_tokens=10, min_new_tokens=10, do_sample=False
            )
        ours = plain_engine.generate([greedy(prompt, max_tokens=10, ignore_eos=True)])[0]
        assert list(ours.token_ids) == out[0, len(ids) :].tolist()


def test_seed_reproduces_sampled_text(plain_engine: HFEngine) -> None:
    req = GenerationRequest(PROMPTS[0], sampling(temperature=1.0, top_k=50, top_p=0.9, max_tokens=16, seed=7))
    first = plain_engine.generate([req])[0]
    again = plain_engine.generate([req])[0]
    in_batch = plain_engine.generate([greedy(PROMPTS[1]), req, greedy(PROMPTS[2])])[1]
    assert first.token_ids == again.token_ids == in_batch.token_ids
    others = {
        plain_engine.generate(
            [GenerationRequest(PROMPTS[0], sampling(temperature=1.0, max_tokens=16, seed=s))]
        )[0].token_ids
        for s in range(4)
    }
    assert len(others) > 1, "different seeds should give different samples"


def test_top_k_one_is_greedy(plain_engine: HFEngine) -> None:
    sampled = plain_engine.generate([GenerationRequest(PROMPTS[1], sampling(temperature=1.5, top_k=1))])[0]
    assert sampled.token_ids[:12] == plain_engine.generate([greedy(PROMPTS[1])])[0].token_ids


def test_stop_sequence_ends_and_is_excluded(plain_engine: HFEngine) -> None:
    full = plain_engine.generate([greedy(PROMPTS[0], max_tokens=24, ignore_eos=True)])[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 24
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    assert stop.strip(), f"pick a visible stop from {full.text!r}"
    cut = plain_engine.generate([greedy(PROMPTS[0], max_tokens=24, stop=[stop], ignore_eos=True)])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    assert stop not in cut.text
    assert len(cut.token_ids) < 24
    # The stopped row also matches the full row token for token up to where it stopped.
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)]


def test_stream_joins_to_text_and_holds_back_partial_stops(plain_engine: HFEngine) -> None:
    full = plain_engine.generate([greedy(PROMPTS[2], max_tokens=20, ignore_eos=True)])[0]
    stop = full.text[-4:]
    events = list(plain_engine.stream(greedy(PROMPTS[2], max_tokens=20, stop=[stop], ignore_eos=True)))
    assert isinstance(events[-1], GenerationResult)
    deltas = [e.text for e in events[:-1] if isinstance(e, StreamDelta)]
    assert "".join(deltas) == events[-1].text == full.text[: full.text.index(stop)]
    streamed = "".join(
        e.text
        for e in plain_engine.stream(greedy(PROMPTS[2], max_tokens=20, ignore_eos=True))
        if isinstance(e, StreamDelta)
    )
    assert streamed == full.text


def test_usage_counts_are_exact(plain_engine: HFEngine) -> None:
    result = plain_engine.generate([greedy(PROMPTS[3], max_tokens=7, ignore_eos=True)])[0]
    tokenizer = plain_engine.tokenizer
    assert result.usage.prompt_tokens == len(tokenizer(PROMPTS[3]).input_ids)
    assert result.usage.completion_tokens == 7 == len(result.token_ids)
    assert result.text == tokenizer.decode(list(result.token_ids), skip_special_tokens=True)


def test_eos_finishes_with_stop(plain_engine: HFEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Declare the 4th greedy token an end-of-sequence token: generation must stop there."""
    full = plain_engine.generate([greedy(PROMPTS[0], max_tokens=8, ignore_eos=True)])[0]
    eos = full.token_ids[3]
    first = full.token_ids.index(eos)
    monkeypatch.setattr(plain_engine, "eos_token_ids", frozenset({eos}))
    res = plain_engine.generate([greedy(PROMPTS[0], max_tokens=8)])[0]
    assert res.finish_reason == "stop"
    assert res.token_ids == full.token_ids[: first + 1]  # EOS is counted as generated
    assert res.usage.completion_tokens == first + 1
    assert res.text == plain_engine.tokenizer.decode(list(full.token_ids[:first]))
    ignored = plain_engine.generate([greedy(PROMPTS[0], max_tokens=8, ignore_eos=True)])[0]
    assert ignored.token_ids == full.token_ids and ignored.finish_reason == "length"


def test_mixed_adapter_batch_equals_per_adapter_runs(engine: HFEngine) -> None:
    plan = [
        (PROMPTS[0], "alpha"),
        (PROMPTS[1], None),
        (PROMPTS[0], "beta"),
        (PROMPTS[2], "gamma"),
        (PROMPTS[0], None),
    ]
    batch = engine.generate([greedy(p, adapter=a) for p, a in plan])
    for (prompt, adapter), result in zip(plan, batch, strict=True):
        alone = engine.generate([greedy(prompt, adapter=adapter)])[0]
        assert result.token_ids == alone.token_ids, (prompt, adapter)
    # The adapters really change the output (else the test above proves nothing).
    by_adapter = {a: r.token_ids for (p, a), r in zip(plan, batch, strict=True) if p == PROMPTS[0]}
    assert len(set(by_adapter.values())) == 3


def test_adapter_output_equals_peft_reference(engine: HFEngine, tiny_model: TinyModel) -> None:
    """Per-row adapters give the same logits as a model with only that adapter merged in."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model.path), tiny_model.adapters["beta"]
    ).merge_and_unload()
    ids = engine.encode(PROMPTS[1])
    with torch.inference_mode():
        expected = torch.log_softmax(reference(torch.tensor([ids])).logits[0, -1], -1)
    got = engine.next_token_logprobs([PROMPTS[1]], adapter="beta", top_k=5)[0]
    for tok in got.top:
        assert math.isclose(tok.logprob, float(expected[tok.token_id]), abs_tol=1e-4)


def test_next_token_logprobs_are_a_distribution_slice(engine: HFEngine) -> None:
    results = engine.next_token_logprobs(
        PROMPTS, top_k=10, candidates=["Yes", " no", "not-a-single-token-xyz"]
    )
    assert len(results) == len(PROMPTS)
    for res in results:
        values = [t.logprob for t in res.top]
        assert values == sorted(values, reverse=True)
        assert all(v <= 0 for v in values)
        assert sum(math.exp(v) for v in values) <= 1 + 1e-5
        assert res.candidates["not-a-single-token-xyz"] is None
        yes = res.candidates["Yes"]
        assert yes is not None and yes <= values[0] + 1e-6
    # Greedy's first token is the top-1 token of the distribution.
    first = engine.generate([greedy(PROMPTS[0], max_tokens=1)])[0].token_ids[0]
    assert results[0].top[0].token_id == first
    # Batch scoring equals scoring alone, and adapters change the distribution.
    alone = engine.next_token_logprobs([PROMPTS[2]], top_k=10)[0]
    assert [t.token_id for t in alone.top] == [t.token_id for t in results[2].top]
    with_adapter = engine.next_token_logprobs([PROMPTS[2]], adapter="alpha", top_k=10)[0]
    assert [t.logprob for t in with_adapter.top] != [t.logprob for t in alone.top]


def test_generated_logprobs_match_scoring(plain_engine: HFEngine) -> None:
    res = plain_engine.generate([greedy(PROMPTS[1], max_tokens=3, logprobs=2, ignore_eos=True)])[0]
    assert res.logprobs is not None and len(res.logprobs) == 3
    scored = plain_engine.next_token_logprobs([PROMPTS[1]], top_k=2)[0]
    assert res.logprobs[0].chosen.token_id == scored.top[0].token_id
    assert math.isclose(res.logprobs[0].chosen.logprob, scored.top[0].logprob, abs_tol=1e-5)
    assert len(res.logprobs[0].top) == 2


def test_adapter_errors(tiny_model: TinyModel, fresh_tiny_engine: HFEngine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    eng = fresh_tiny_engine
    with pytest.raises(AdapterError, match="not a PEFT adapter"):
        eng.load_adapter("x", str(tmp_path))
    with pytest.raises(AdapterError, match="does not fit"):
        eng.load_adapter("foreign", str(tiny_model.foreign_adapter))
    # The failed load left the model untouched: no PEFT wrapper, base output unchanged.
    assert eng.model is eng.base_model and eng.adapters() == []
    with pytest.raises(AdapterError, match="not loaded"):
        eng.generate([greedy(PROMPTS[0], adapter="alpha")])
    info = eng.load_adapter("alpha", str(tiny_model.adapters["alpha"]))
    assert info.rank == 4 and info.target_modules == ("q_proj", "v_proj")
    assert eng.load_adapter("alpha", str(tiny_model.adapters["alpha"])) == info  # idempotent
    with pytest.raises(AdapterError, match="already loaded"):
        eng.load_adapter("alpha", str(tiny_model.adapters["beta"]))


def test_bad_requests() -> None:
    with pytest.raises(HelixloomError, match="empty"):
        GenerationRequest("")
    for kwargs, param in [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"stop": [""]}, "stop"),
    ]:
        with pytest.raises(HelixloomError) as info:
            sampling(**kwargs)
        assert info.value.param == param
    with pytest.raises(HelixloomError, match=r"unknown_field|Extra inputs"):
        sampling(unknown_field=1)


def test_context_overflow_is_an_error(plain_engine: HFEngine) -> None:
    with pytest.raises(HelixloomError, match="context"):
        plain_engine.generate([GenerationRequest("word " * 400, sampling(max_tokens=200))])


def test_concurrent_callers_get_their_own_adapter(engine: HFEngine) -> None:
    expected = {
        a: engine.generate([greedy(PROMPTS[0], adapter=a)])[0].token_ids for a in ("alpha", "beta", None)
    }
    got: dict[str | None, list[tuple[int, ...]]] = {a: [] for a in expected}

    def worker(adapter: str | None) -> None:
        for _ in range(3):
            got[adapter].append(engine.generate([greedy(PROMPTS[0], adapter=adapter)])[0].token_ids)

    threads = [threading.Thread(target=worker, args=(a,)) for a in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for adapter, outputs in got.items():
        assert outputs == [expected[adapter]] * 3


def test_token_healing_backs_up_over_a_trailing_space(plain_engine: HFEngine) -> None:
    prompt = "The quick brown fox "
    ids = plain_engine.encode(prompt)
    space = plain_engine.tokenizer.decode([ids[-1]])
    assert space.endswith(" "), "the prompt must end in its own space token for this test"
    healed = plain_engine.generate([greedy(prompt, max_tokens=6, token_healing=True, ignore_eos=True)])[0]
    assert healed.usage.prompt_tokens == len(ids) - 1
    first = plain_engine.tokenizer.decode([healed.token_ids[0]])
    assert first.startswith(space)
    # The completion continues the prompt exactly: prompt + text is what the tokens decode to.
    full = plain_engine.tokenizer.decode(ids[:-1] + list(healed.token_ids), skip_special_tokens=True)
    assert prompt + healed.text == full
    # Greedy without healing is free to pick any token after the space; with it, the choice is
    # the best token among those that start with the space.
    scored = plain_engine.next_token_logprobs([plain_engine.tokenizer.decode(ids[1:-1])], top_k=600)[0]
    best = next(t for t in scored.top if t.token.startswith(space))
    assert healed.token_ids[0] == best.token_id


def test_shared_prompt_is_prefilled_once(engine: HFEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """n samples of one prompt (or a search node's children) share one prefill, and each row still
    equals its solo run; other adapters on the same prompt get their own prefill."""
    monkeypatch.setattr(engine, "prefix_caching", False)  # counted here: the prefill a batch shares
    prompt = PROMPTS[2]
    rows = [GenerationRequest(prompt, sampling(temperature=1.0, max_tokens=8, seed=s)) for s in range(4)]
    rows.append(GenerationRequest(prompt, sampling(temperature=1.0, max_tokens=8, seed=0), "alpha"))
    before = engine.prefill_tokens
    batch = engine.generate(rows)
    assert engine.prefill_tokens - before == 2 * len(engine.encode(prompt))
    for request, result in zip(rows, batch, strict=True):
        assert engine.generate([request])[0].token_ids == result.token_ids
    assert len({r.token_ids for r in batch[:4]}) > 1


def test_prompt_logprobs_score_each_token_given_the_ones_before(engine: HFEngine) -> None:
    prompt = PROMPTS[1]
    scored, other = engine.prompt_logprobs([prompt, PROMPTS[0]], top_k=3)
    assert "".join(scored.tokens) == prompt and "".join(other.tokens) == PROMPTS[0]
    ids = engine.encode(prompt)
    bos_added = ids[0] == engine.tokenizer.bos_token_id
    assert list(scored.token_ids) == (ids[1:] if bos_added else ids)
    assert (scored.logprobs[0] is None) == (not bos_added)
    checked = 0
    for i, token in enumerate(scored.token_ids):
        before = ids[: i + 1] if bos_added else ids[:i]
        prefix = "".join(scored.tokens[:i])
        if scored.logprobs[i] is None or not prefix or engine.encode(prefix) != before:
            continue
        step = engine.next_token_logprobs([prefix], top_k=10_000)[0]
        expected = {t.token_id: t.logprob for t in step.top}
        got = scored.logprobs[i]
        assert got is not None and math.isclose(got, expected[token], abs_tol=1e-4)
        top = scored.top[i]
        assert top is not None and [t.token_id for t in top] == [t.token_id for t in step.top[:3]]
        checked += 1
    assert checked >= 3
    # An adapter scores differently; bad input is refused.
    with_adapter = engine.prompt_logprobs([prompt], adapter="alpha")[0]
    assert with_adapter.tokens == scored.tokens and with_adapter.logprobs != scored.logprobs
    assert with_adapter.top == (None,) * len(scored.tokens)
    with pytest.raises(HelixloomError, match="empty"):
        engine.prompt_logprobs([""])
