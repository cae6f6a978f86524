"""The rating page in Chromium: A/B pairs from an improve run's queue, answered with the keyboard."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helixloom.server import ServerConfig, ServerState
from helixloom.store import Store
from helixloom.training import rating_queue
from helixloom.training.improve import ImproveConfig, ImproveRun
from tests.conftest import TinyModel, serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true", reason="no Chromium here"
)
def test_rating_page_records_choices_thumbs_and_skips(
    tiny_model: TinyModel, tiny_engine, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    ImproveRun.create("taste", ["p1"], ["h1"], base=str(tiny_model.path), config=ImproveConfig(rounds=1))
    rating_queue.enqueue(
        "taste",
        [
            rating_queue.QueueItem(
                "i1", 1, "Why is the sky blue?", "Because of light.", "Rayleigh scattering."
            ),
            rating_queue.QueueItem("i2", 1, "Name a fruit.", "Apple.", "A fruit is a thing."),
            rating_queue.QueueItem("i3", 1, "Say hi.", "hi", "hello"),
        ],
    )
    artifacts = Path(__file__).resolve().parent.parent / "artifacts"
    artifacts.mkdir(exist_ok=True)
    state = ServerState(ServerConfig(model=str(tiny_model.path)), tiny_engine, Store(tmp_path / "db"))
    with serving(state) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(server.url + "/rate?run=taste")
        page.wait_for_selector("#item:not([hidden])")
        assert page.inner_text("#prompt") == "Why is the sky blue?"
        assert "Rayleigh scattering." in page.inner_text("#b")
        assert "0 answered · 3 waiting" in page.inner_text("#progress")
        page.screenshot(path=str(artifacts / "rate.png"), full_page=True)
        page.keyboard.press("ArrowRight")  # B is better
        page.wait_for_function("document.querySelector('#prompt').textContent === 'Name a fruit.'")
        page.keyboard.press("1")  # thumb up on A
        assert page.inner_text("#thumb-a") == "👍"
        page.keyboard.press("2")
        page.keyboard.press("2")  # thumb down on B
        page.keyboard.press("a")
        page.wait_for_function("document.querySelector('#prompt').textContent === 'Say hi.'")
        page.keyboard.press("s")  # can't tell
        page.wait_for_selector("#empty:not([hidden])")
        browser.close()
        prefs = state.store.list_preferences(source="rating-page")
    assert [(x.prompt, x.chosen, x.rejected) for x in prefs] == [
        ("Why is the sky blue?", "Rayleigh scattering.", "Because of light."),
        ("Name a fruit.", "Apple.", "A fruit is a thing."),
    ]
    assert prefs[1].meta == {"run": "taste", "item": "i2", "round": 1, "thumbs": {"a": "up", "b": "down"}}
    answers = rating_queue.answers("taste")
    assert [answers[i]["choice"] for i in ("i1", "i2", "i3")] == ["b", "a", "skip"]
    assert rating_queue.pending("taste") == []
    assert (artifacts / "rate.png").stat().st_size > 5000


def test_an_item_answered_twice_at_once_records_one_preference(helixloom_home: Path) -> None:
    # the "already answered" check and the append go together: two answers at the same moment (two
    # tabs, a double key press) gave two preferences for one pair
    import threading

    from helixloom.errors import HelixloomError

    rating_queue.enqueue("twice", [rating_queue.QueueItem("i1", 1, "Say hi.", "hi", "hello")])
    outcomes: list[str] = []
    with Store(helixloom_home / "helixloom.db") as store:
        start = threading.Barrier(8)

        def rate(choice: str) -> None:
            start.wait()
            try:
                rating_queue.answer(store, "twice", "i1", choice, "rating-page")  # type: ignore[arg-type]
                outcomes.append("recorded")
            except HelixloomError as exc:
                outcomes.append(str(exc))

        threads = [threading.Thread(target=rate, args=("ab"[i % 2],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["item i1 is already answered"] * 7 + ["recorded"]
        assert len(store.list_preferences()) == 1
    assert len(rating_queue.answers("twice")) == 1 and rating_queue.pending("twice") == []
