"""Continuous batching on the hf engine (tiny model): rows join a running batch between steps and
leave at once, and each row's text is what it would be alone."""

from __future__ import annotations

import time

from helixloom.engine import GenerationRequest, GenerationResult, sampling
from helixloom.engine.batching import BatchingEngine
from helixloom.engine.hf import HFEngine

PROMPTS = [
    "The quick brown fox",
    "A critic reads the answer and says what is wrong with it; a regenerator",
    "Paris is",
    "def add(a, b):",
    "Once upon a time, in a land far away, there lived",
]


def greedy(prompt: str, adapter: str | None = None, **kw: object) -> GenerationRequest:
    return GenerationRequest(prompt, sampling(**{"temperature": 0, "max_tokens": 10, **kw}), adapter)


def drive(engine: HFEngine, plan: dict[int, list[GenerationRequest]]) -> tuple[list[GenerationResult], int]:
    """Run a continuous batch where ``plan[s]`` joins before step ``s``; the results in plan order,
    and the most rows that decoded together."""
    batch = engine.open_batch()
    order: dict[int, int] = {}
    results: dict[int, GenerationResult] = {}
    widest, step = 0, 0
    while step <= max(plan) or len(batch):
        for request in plan.get(step, []):
            (row_id,) = batch.join([request])
            order[row_id] = len(order)
        widest = max(widest, len(batch))
        for row_id, event in batch.step():
            if isinstance(event, GenerationResult):
                results[order[row_id]] = event
        step += 1
    return [results[i] for i in range(len(order))], widest


def test_rows_joining_mid_batch_equal_their_solo_runs(tiny_engine: HFEngine) -> None:
    """Prompts shorter and longer than the running rows join at different steps (the batch's cache
    is padded on either side); every row's greedy tokens are its solo run's."""
    plan = {
        0: [greedy(PROMPTS[0], max_tokens=12)],
        2: [greedy(PROMPTS[1]), greedy(PROMPTS[2], max_tokens=4)],
        5: [greedy(PROMPTS[3], max_tokens=14)],
        9: [greedy(PROMPTS[4], ignore_eos=True)],
    }
    joined, widest = drive(tiny_engine, plan)
    assert widest >= 3  # rows really decoded together
    requests = [r for step in sorted(plan) for r in plan[step]]
    for request, result in zip(requests, joined, strict=True):
        alone = tiny_engine.generate([request])[0]
        assert result.token_ids == alone.token_ids, request.prompt
        assert result.text == alone.text and result.finish_reason == alone.finish_reason


def test_joined_rows_keep_adapters_sampling_and_stops(tiny_adapted_engine: HFEngine) -> None:
    engine = tiny_adapted_engine
    solo = engine.generate([greedy(PROMPTS[0], max_tokens=12)])[0]
    stop = solo.text[len(solo.text) // 2 :][:2]
    plan = {
        0: [greedy(PROMPTS[0], "alpha", max_tokens=12)],
        1: [GenerationRequest(PROMPTS[1], sampling(temperature=1.0, seed=7, max_tokens=10), "beta")],
        3: [greedy(PROMPTS[0], max_tokens=12, stop=[stop]), greedy(PROMPTS[2], "gamma")],
        4: [greedy(PROMPTS[0], "alpha", max_tokens=12)],
    }
    joined, widest = drive(engine, plan)
    assert widest >= 4
    requests = [r for step in sorted(plan) for r in plan[step]]
    for request, result in zip(requests, joined, strict=True):
        alone = engine.generate([request])[0]
        assert result.token_ids == alone.token_ids, (request.prompt, request.adapter)
        assert result.text == alone.text
    assert joined[2].finish_reason == "stop" and joined[2].text == solo.text[: solo.text.index(stop)]
    assert joined[0].token_ids != solo.token_ids  # the adapter row really ran its adapter


def test_a_finished_row_leaves_at_once(tiny_engine: HFEngine) -> None:
    batch = tiny_engine.open_batch()
    short, long = batch.join(
        [greedy(PROMPTS[0], max_tokens=2), greedy(PROMPTS[1], max_tokens=8, ignore_eos=True)]
    )
    finished: list[int] = []
    steps = 0
    while short not in finished:
        finished += [i for i, e in batch.step() if isinstance(e, GenerationResult)]
        steps += 1
    assert steps == 2 and len(batch) == 1  # the long row decodes on alone
    while len(batch):
        finished += [i for i, e in batch.step() if isinstance(e, GenerationResult)]
    assert finished == [short, long]


def test_an_aborted_row_frees_its_place_immediately(tiny_engine: HFEngine) -> None:
    batch = tiny_engine.open_batch()
    gone, _ = batch.join([greedy(PROMPTS[0], ignore_eos=True, max_tokens=50), greedy(PROMPTS[2])])
    batch.step()
    events = batch.step(lambda row_id: row_id == gone)
    ended = [e for i, e in events if i == gone and isinstance(e, GenerationResult)]
    assert ended and ended[0].finish_reason == "abort" and len(batch) == 1
    rest = [e for _ in range(20) for i, e in batch.step() if isinstance(e, GenerationResult)]
    assert rest and rest[0].token_ids == tiny_engine.generate([greedy(PROMPTS[2])])[0].token_ids


def test_scheduler_joins_arrivals_into_the_running_batch(tiny_engine: HFEngine) -> None:
    """Through ``BatchingEngine``: a request arriving while a long one decodes finishes long before
    it (it did not wait for the batch to end), and a caller that walks away frees its row."""
    scheduler = BatchingEngine(tiny_engine, max_batch=4)
    try:
        # The long request is known to be decoding (its first token is out) before the short one is
        # sent; no sleep, so a loaded machine cannot let it finish first.
        long = scheduler.stream(greedy(PROMPTS[1], ignore_eos=True, max_tokens=400))
        next(long)
        [short] = scheduler.generate([greedy(PROMPTS[2], max_tokens=3)])
        # it joined the running batch (one batch, two rows at once), so with 3 tokens to the long
        # one's 400 it left first: it did not wait for the batch to end
        assert short.usage.completion_tokens == 3
        assert scheduler.batches_run == 1 and scheduler.largest_batch == 2
        last = list(long)[-1]
        assert isinstance(last, GenerationResult) and last.usage.completion_tokens == 400

        stream = scheduler.stream(greedy(PROMPTS[0], ignore_eos=True, max_tokens=400))
        next(stream)
        stream.close()  # the client went away
        deadline = time.time() + 20
        while scheduler.aborted_rows == 0:
            assert time.time() < deadline, "the abandoned row kept decoding"
            time.sleep(0.02)
    finally:
        scheduler.close()
