"""Replay text: the base model's own writing from the package's openings, cached, and never the
text forgetting is measured on."""

from __future__ import annotations

import json

from helixloom.documents import mix, replay
from helixloom.engine import GenerationRequest
from tests.scripted import ScriptedEngine


def test_own_text_is_the_writers_continuation_of_each_opening_and_is_cached(tiny_engine) -> None:
    texts = replay.own_text(tiny_engine)
    openings = replay.openings()
    assert len(openings) >= 40 and len(set(openings)) == len(openings)
    assert texts and len(texts) <= replay.SAMPLES_PER_OPENING * len(openings)
    assert all(any(t.startswith(o) for o in openings) for t in texts)
    written = [t[len(next(o for o in openings if t.startswith(o))) :] for t in texts]
    assert sum(len(w.strip()) > 10 for w in written) > len(texts) // 2  # continued, not echoed
    cached = replay.cache_path(tiny_engine.model_name)
    assert json.loads(cached.read_text()) == texts

    def fail(request: GenerationRequest) -> str:
        raise AssertionError("the cached samples are written again")

    assert replay.own_text(ScriptedEngine(fail, model_name=tiny_engine.model_name)) == texts
    # another model writes its own samples
    progress: list[tuple[int, int]] = []
    other = replay.own_text(
        ScriptedEngine(lambda r: " and then it rained.", model_name="other"),
        on_progress=lambda done, total: progress.append((done, total)),
    )
    assert other[0] == f"{openings[0]} and then it rained." and replay.cache_path("other") != cached
    # the writing reports its progress, batch by batch, to the end
    assert len(progress) > 1 and progress[-1] == (len(openings), len(openings))
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert replay.cached_text("other") == other and replay.cached_text("never-written") is None


def test_replay_never_draws_on_the_text_forgetting_is_measured_on() -> None:
    measured = mix.general_paragraphs()
    assert len(" ".join(measured).split()) > 500
    for opening in replay.openings():
        assert not any(opening[:30] in p for p in measured)
    written = replay.own_text(ScriptedEngine(lambda r: "It was a quiet day.", model_name="quiet"))
    rows = mix.replay_rows(2000, 0.2, written)
    assert rows and not {r["text"] for r in rows} & set(measured)


def test_the_default_models_replay_text_ships_with_the_package_and_is_used_only_under_its_key() -> None:
    shipped = replay.cached_text("default")  # a fresh HELIXLOOM_HOME: nothing written yet
    assert shipped is not None and len(shipped) >= 40
    assert not replay.cache_path("default").exists()
    assert replay.cached_text("some/other-model") is None
    openings = replay.openings()
    assert sum(any(t.startswith(o) for o in openings) for t in shipped) == len(shipped)
    # the home's own cache wins over the shipped copy
    replay.cache_path("default").parent.mkdir(parents=True, exist_ok=True)
    replay.cache_path("default").write_text(json.dumps(["The home's own paragraph."]))
    assert replay.cached_text("default") == ["The home's own paragraph."]
