"""Citations decoded from a closed set of ids (``engine.citations``): the guard's states and masks,
and the hf engine, llama.cpp and training's probe keeping a citation's id to the allowed ones."""

from __future__ import annotations

import re

import pytest
import torch

from helixloom.documents import dataset
from helixloom.engine import Constraint, GenerationRequest, sampling
from helixloom.engine.citations import CitationGuard, CitationSet, LogitsProcessor, guard_logits
from helixloom.engine.hf import HFEngine
from helixloom.errors import HelixloomError
from tests.test_engine_select import needs_llamacpp

IDS = ("a1b2c3", "a1ffee")
CITED = re.compile(r"\[DOC_ID:([0-9a-f]*)\]")
# one citation of six hex digits: the random tiny model writes a random id in it
SHAPE = Constraint.regex(r"\[DOC_ID:[0-9a-f]{6}\]")


def test_the_guard_follows_a_citation_and_masks_only_inside_it() -> None:
    texts = ["[", "DOC", "_ID", ":", "a1", "b", "2c3", "ff", "ee", "]", "].", "x", "", "[DOC_ID:999999]", "9"]
    guard = CitationGuard(CitationSet(IDS, "[DOC_ID:"), texts, len(texts))
    allowed = lambda tail: {texts[i] for i, ok in enumerate(guard.allowed(tail)) if ok}  # noqa: E731
    # outside a citation only the token holding a whole wrong citation is masked
    assert allowed("The answer is 4.") == set(texts) - {"[DOC_ID:999999]"}
    assert guard.state("The answer is 4.") is None
    # a start of the opening: anything that does not open a citation stays allowed
    assert guard.state("x [DOC") == "[DOC"
    assert "x" in allowed("x [DOC") and "_ID" in allowed("x [DOC")
    # inside: only what continues an allowed id, and no end of text (the empty token)
    assert allowed("x [DOC_ID:") == {"a1"}
    assert allowed("x [DOC_ID:a1") == {"b", "ff"}
    assert allowed("x [DOC_ID:a1b") == {"2c3"}
    assert allowed("x [DOC_ID:a1b2c3") == {"]", "]."}
    # closed: free again
    assert guard.state("x [DOC_ID:a1b2c3] and") is None
    assert guard.state("x [DOC_ID:zz") is None  # a wrong citation already written is left alone
    # the tail is read from token ids, long enough for the opening and the longest id
    assert guard.tail_of([11, 0, 1, 2, 3, 4]) == "x[DOC_ID:a1"
    with pytest.raises(HelixloomError):
        CitationSet((), "[DOC_ID:")
    with pytest.raises(HelixloomError):
        CitationSet(("ab]c",), "[DOC_ID:")
    assert dataset.citation_set({"b2": {}, "a1": {}}) == CitationSet(("a1", "b2"), "[DOC_ID:")
    assert dataset.citation_set({}) is None


def test_ids_that_start_other_ids_among_thousands_and_a_mask_that_would_leave_nothing() -> None:
    texts = ["[DOC_ID:", "ab", "c", "]", "abc", "d", "", "0"]
    ids = ("ab", "abc", *(f"0{i:05x}" for i in range(3000)))
    guard = CitationGuard(CitationSet(ids, "[DOC_ID:"), texts, len(texts))
    allowed = lambda tail: {texts[i] for i, ok in enumerate(guard.allowed(tail)) if ok}  # noqa: E731
    assert allowed("[DOC_ID:") == {"ab", "abc", "0"}
    assert allowed("[DOC_ID:ab") == {"c", "]"}  # "ab" is an id, and the start of "abc"
    assert allowed("[DOC_ID:abc") == {"]"}
    assert allowed("[DOC_ID:0") == {"0"}
    # a grammar that leaves only "d" where the guard allows "c" or "]": the grammar decides
    logits = torch.full((len(texts),), -float("inf"))
    logits[5] = 0.0
    kept = guard_logits(guard, logits, guard.allowed("[DOC_ID:ab"))
    assert int(kept.argmax()) == 5 and bool(kept.isfinite().any())
    logits[2] = 1.0  # with "c" allowed by both, the guard masks "d"
    assert guard_logits(guard, logits, guard.allowed("[DOC_ID:ab")).isfinite().sum() == 1


def _cited(results: list) -> list[str]:
    return [m[1] for r in results for m in CITED.finditer(r.text)]


def test_hf_engine_cites_only_allowed_ids_sampled_and_greedy(tiny_engine: HFEngine) -> None:
    cites = CitationSet(IDS, "[DOC_ID:")
    requests = [
        GenerationRequest("Cite:", sampling(temperature=1.0, max_tokens=20, seed=i), None, SHAPE, cites)
        for i in range(12)
    ]
    requests.append(GenerationRequest("Cite:", sampling(temperature=0, max_tokens=20), None, SHAPE, cites))
    results = tiny_engine.generate(requests)
    assert all(r.finish_reason == "stop" for r in results), [r.text for r in results]
    cited = _cited(results)
    assert len(cited) == len(requests) and set(cited) <= set(IDS), cited
    # without the citation set the random model writes ids of its own: the test above can fail
    free = tiny_engine.generate([GenerationRequest(r.prompt, r.sampling, None, SHAPE) for r in requests])
    assert not set(_cited(free)) & set(IDS)


def test_the_probe_processor_masks_each_row_of_a_batch(tiny_engine: HFEngine) -> None:
    tokenizer = tiny_engine.tokenizer
    guard = CitationGuard(
        CitationSet(IDS, "[DOC_ID:"), tiny_engine.vocab.texts(), tiny_engine.vocab.vocab_size
    )
    prompt = tokenizer("Q? A:", add_special_tokens=False).input_ids
    inside = tokenizer(" It is 4. [DOC_ID:a1", add_special_tokens=False).input_ids
    outside = tokenizer(" It is 4, and", add_special_tokens=False).input_ids
    width = max(len(inside), len(outside))
    pad = tokenizer.pad_token_id
    rows = [prompt + [pad] * (width - len(g)) + g for g in (inside, outside)]  # generated, left to right
    # (the padding sits before the generated tokens here only to line the rows up; the guard reads
    # the last tokens, so it never reaches it)
    scores = torch.zeros(2, tiny_engine.vocab.vocab_size)
    masked = LogitsProcessor(guard, len(prompt))(torch.tensor(rows), scores.clone())
    texts = tiny_engine.vocab.texts()
    kept = [texts[i] for i in torch.nonzero(masked[0] > -1e9).flatten().tolist()]
    assert kept and all(("b2c3]".startswith(t) or "ffee]".startswith(t)) for t in kept), kept
    assert bool((masked[1] == 0).all())  # outside a citation nothing is masked


@pytest.mark.default_model
@needs_llamacpp
def test_llamacpp_cites_only_allowed_ids(default_model_home: object) -> None:
    from helixloom.engine.select import load_for_inference
    from tests.conftest import home_at

    ids = ("780cb3011e", "ce4343ac5e")
    shape = Constraint.regex(r"\[DOC_ID:[0-9a-f]{10}\]")
    cites = CitationSet(ids, "[DOC_ID:")
    with home_at(default_model_home):
        engine = load_for_inference("default", "llamacpp", announce=False)
        try:
            # the model's own ids for these prompts are not the allowed ones (checked below)
            requests = [
                GenerationRequest(
                    f"Document {n} is cited as ", sampling(temperature=0, max_tokens=24), None, shape
                )
                for n in ("one", "two", "three")
            ]
            free = engine.generate(requests)
            guided = engine.generate(
                [GenerationRequest(r.prompt, r.sampling, None, shape, cites) for r in requests]
            )
        finally:
            engine.close()
    assert not set(_cited(free)) & set(ids), [r.text for r in free]
    assert len(_cited(guided)) == 3 and set(_cited(guided)) <= set(ids), [r.text for r in guided]
