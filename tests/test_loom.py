"""The loom: trees in the store, its API, exports to training data, and the web UI in Chromium."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helixloom import loom
from helixloom.cli import main
from helixloom.engine.hf import HFEngine
from helixloom.server import BackgroundServer, ServerConfig, ServerState
from helixloom.store import Store
from tests.conftest import TinyModel, serving


def small_tree(store: Store) -> dict[str, str]:
    """root -> a (rated up) -> a1 ; root -> b (rated down) ; root -> c -> c1 -> c2 (explored) ; root -> d"""
    root = store.add_node("t1", None, "Once")
    ids = {"root": root.id}
    for name, parent in [
        ("a", "root"),
        ("b", "root"),
        ("c", "root"),
        ("d", "root"),
        ("a1", "a"),
        ("c1", "c"),
        ("c2", "c1"),
    ]:
        ids[name] = store.add_node("t1", ids[parent], f" {name}").id
    store.add_rating("node", ids["a"], 1)
    store.add_rating("node", ids["b"], -1)
    return ids


def test_exports_from_ratings_and_exploration(tmp_path: Path) -> None:
    with Store(tmp_path / "db") as store:
        small_tree(store)
        sft = list(loom.export_sft(store))
        prefs = list(loom.export_preferences(store))
    assert sft == [{"prompt": "Once", "completion": " a", "tree_id": "t1", "node_id": sft[0]["node_id"]}]
    pairs = {(p["chosen"], p["rejected"], p["source"]) for p in prefs}
    # a (up) beats everyone; b (down) loses to everyone; c (explored) beats d; no pair a-vs-a.
    assert (
        (" a", " b", "rating") in pairs
        and (" a", " c", "rating") in pairs
        and (" a", " d", "rating") in pairs
    )
    assert (" c", " d", "exploration") in pairs and (" d", " b", "rating") in pairs
    assert not any(c == r for c, r, _ in pairs)
    assert all(p["prompt"] == "Once" for p in prefs)
    assert (" d", " c", "exploration") not in pairs


def test_export_cli(capsys: pytest.CaptureFixture[str], helixloom_home: Path, tmp_path: Path) -> None:
    assert main(["adapters", "list"]) == 0  # creates the store
    with Store(helixloom_home / "helixloom.db") as store:
        small_tree(store)
    out = tmp_path / "prefs.jsonl"
    assert main(["export", "preferences", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and set(rows[0]) >= {"prompt", "chosen", "rejected"}
    capsys.readouterr()
    assert main(["export", "sft"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["completion"] == " a"


def test_import_round_trip(tmp_path: Path) -> None:
    with Store(tmp_path / "db") as store:
        small_tree(store)
        exported = loom.tree_json(store, "t1")
        new_tree = loom.import_tree(store, json.loads(json.dumps(exported)))
        again = loom.tree_json(store, new_tree)
    assert sorted(n["text"] for n in again["nodes"]) == sorted(n["text"] for n in exported["nodes"])
    assert sorted(n["rating"] for n in again["nodes"]) == sorted(n["rating"] for n in exported["nodes"])
    with Store(tmp_path / "db") as store, pytest.raises(Exception, match="not a helixloom tree"):
        loom.import_tree(store, {"nodes": []})


@pytest.fixture(scope="module")
def server(
    tiny_model: TinyModel, tiny_engine: HFEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackgroundServer]:
    state = ServerState(
        ServerConfig(model=str(tiny_model.path)), tiny_engine, Store(tmp_path_factory.mktemp("l") / "db")
    )
    with serving(state) as running:
        yield running


def test_loom_api(server: BackgroundServer) -> None:
    url = server.url + "/api"
    tree = httpx.post(url + "/trees", json={"prompt": "Once upon a time"}).json()
    root = tree["nodes"][0]["id"]
    tree = httpx.post(f"{url}/nodes/{root}/children", json={"n": 3, "max_tokens": 5}, timeout=60).json()
    kids = [n for n in tree["nodes"] if n["parent_id"] == root]
    assert 1 <= len(kids) <= 3 and all(k["author"] for k in kids)
    edited = httpx.post(f"{url}/nodes/{kids[0]['id']}/edit", json={"text": " my own words"}).json()
    assert any(n["id"] == edited["node_id"] and n["parent_id"] == root for n in edited["nodes"])
    assert any(n["id"] == kids[0]["id"] for n in edited["nodes"])  # the original is kept
    rated = httpx.post(f"{url}/nodes/{edited['node_id']}/rate", json={"score": "up"}).json()
    assert next(n for n in rated["nodes"] if n["id"] == edited["node_id"])["rating"] == 1
    woven = httpx.post(
        f"{url}/nodes/{root}/weave",
        json={"budget": 4, "round_budget": 2, "n_expand": 2, "tokens_per_node": 3},
        timeout=120,
    ).json()
    assert len(woven["nodes"]) >= len(rated["nodes"]) + 2
    assert all(n["tree_id"] == tree["tree_id"] for n in woven["nodes"])
    assert httpx.get(f"{url}/trees/nope").status_code == 404
    assert httpx.post(f"{url}/nodes/nope/children", json={}).status_code == 404
    assert httpx.post(f"{url}/trees", json={"prompt": ""}).status_code == 400


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true", reason="no Chromium here"
)
def test_loom_ui_in_chromium(server: BackgroundServer) -> None:
    from playwright.sync_api import sync_playwright

    artifacts = Path(__file__).resolve().parent.parent / "artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
            ],
        )
        page = browser.new_page()
        page.goto(server.url + "/")
        page.fill("#prompt", "The lighthouse keeper")
        page.click("#create")
        page.wait_for_selector("#outline span.current")
        assert "The lighthouse keeper" in page.inner_text("#text")
        page.fill("#n", "2")
        page.fill("#tokens", "4")
        page.click("#roll")
        page.wait_for_function("document.querySelectorAll('#outline span[data-id]').length >= 2")
        page.click("#up")
        page.wait_for_function("document.querySelector('#info').textContent.includes('rated')")
        page.keyboard.press("e")
        page.fill("#edittext", " kept the light burning")
        page.click("#save")
        page.wait_for_function(
            "document.querySelector('#text').textContent.includes('kept the light burning')"
        )
        count = page.locator("#outline span[data-id]").count()
        page.reload()
        page.wait_for_selector("#outline span.current")
        # Everything survived the reload: the tree, the current node and the rating.
        assert page.locator("#outline span[data-id]").count() == count
        assert "kept the light burning" in page.inner_text("#text")
        page.keyboard.press("ArrowLeft")
        assert page.inner_text("#text").strip() == "The lighthouse keeper"
        assert "[+]" in page.inner_text("#outline")
        assert page.locator("#editor").is_hidden()
        page.screenshot(path=str(artifacts / "loom.png"), full_page=True)
        browser.close()
    assert (artifacts / "loom.png").stat().st_size > 5000


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true", reason="no Chromium here"
)
def test_chat_page_streams_answers_and_takes_feedback(
    server: BackgroundServer, tiny_model: TinyModel
) -> None:
    from playwright.sync_api import sync_playwright

    artifacts = Path(__file__).resolve().parent.parent / "artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(server.url + "/")
        page.click("a[href='/chat']")
        page.wait_for_function("document.querySelectorAll('#model option').length >= 2")
        page.select_option("#model", str(tiny_model.path))
        page.fill("#message", "Hello there")
        page.press("#message", "Control+Enter")
        page.wait_for_selector(".turn.assistant .feedback:not([hidden])", timeout=120_000)
        reply = page.locator(".turn.assistant").first
        session_id = reply.get_attribute("data-session")
        assert session_id
        page.fill(".turn.assistant .reason", "friendly")
        page.click(".turn.assistant .up")
        page.wait_for_selector(".turn.assistant .rated.good")
        # The page's answer is the one the server recorded, and the rating is stored with the reason.
        session = httpx.get(f"{server.url}/api/sessions/{session_id}").json()
        recorded = [m["content"] for m in session["messages"] if m["role"] == "assistant"]
        assert recorded == [reply.locator(".text").text_content()]
        assert [(r["score"], r["reason"]) for r in session["ratings"]] == [(1, "friendly")]
        # HelixNet, in a new chat (the tiny model's 512-token context is full of the first answer):
        # the actor's answer and the critique stream into the folded stages.
        page.click("#reset")
        assert page.locator(".turn").count() == 0
        page.select_option("#model", "helixnet")
        page.fill("#max-tokens", "24")  # three stages must fit the tiny model's 512 tokens
        page.fill("#message", "Why is the sky blue?")
        page.click("#send")
        page.wait_for_function(
            "document.querySelectorAll('.turn.assistant .feedback:not([hidden])').length == 1"
        )
        second = page.locator(".turn.assistant").first
        helix = httpx.get(f"{server.url}/api/sessions/{second.get_attribute('data-session')}").json()
        assert "messages" in helix, helix
        actor = "".join(m["content"] for m in helix["messages"] if m["stage"] == "actor")
        # Folded: not rendered, but there. The page shows the stage as it streamed; the store keeps it
        # as HelixNet carries it forward (PromptFormat.clean: surrounding whitespace trimmed).
        shown = second.locator(".actor").text_content() or ""
        assert shown.strip() == actor and actor in shown
        assert page.locator(".turn").count() == 2
        page.click(".turn.assistant .down")
        page.wait_for_selector(".turn.assistant .rated.bad")
        page.screenshot(path=str(artifacts / "chat.png"), full_page=True)
        browser.close()
