"""The loom: trees in the store, its API, exports to training data, and the web UI in Chromium."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helixloom import loom, loom_formats
from helixloom.cli import main
from helixloom.engine.hf import HFEngine
from helixloom.errors import HelixloomError
from helixloom.server import BackgroundServer, ServerConfig, ServerState
from helixloom.store import Store
from helixloom.store.trees import NewNode
from helixloom.store.trees import node_id as content_id
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


# ------------------------------------------------------------------ the loom's newer parts, as Python APIs


def test_roll_records_adapter_version_sampler_and_tokens(
    tiny_adapted_engine: HFEngine, tmp_path: Path
) -> None:
    with Store(tmp_path / "db") as store:
        root = store.add_node("t", None, "Once upon a time")
        kids = loom.roll(
            store,
            tiny_adapted_engine,
            root.id,
            n=2,
            max_tokens=5,
            preset="focused",
            adapter="alpha",
            logprobs=3,
        )
        assert kids
        version = next(a.version for a in tiny_adapted_engine.adapters() if a.name == "alpha")
        for kid in kids:
            meta = kid.meta or {}
            assert kid.adapter == "alpha" and kid.model == tiny_adapted_engine.model_name
            assert meta["adapter_version"] == version and len(version) >= 12
            assert meta["sampler"] == {"temperature": 0.5, "top_p": 0.9, "top_k": 40, "preset": "focused"}
            assert meta["seconds"] >= 0
            tokens = meta["tokens"]
            assert "".join(t[0] for t in tokens) == kid.text
            assert all(t[1] <= 0 and 1 <= len(t[2]) <= 3 for t in tokens)
        listed = loom.tree_json(store, "t")["nodes"]
        assert all("tokens" not in (n["meta"] or {}) for n in listed)  # the tree stays small
        assert [n["has_tokens"] for n in listed] == [False] + [True] * len(kids)
        assert loom.node_json(store, kids[0].id)["meta"]["tokens"] == (kids[0].meta or {})["tokens"]
        with pytest.raises(HelixloomError, match="no sampler preset"):
            loom.roll(store, tiny_adapted_engine, root.id, preset="spicy")


def test_counterfactual_takes_another_token_and_keeps_the_original(
    tiny_engine: HFEngine, tmp_path: Path
) -> None:
    with Store(tmp_path / "db") as store:
        root = store.add_node("t", None, "The quick brown")
        # A token view needs tokens that spell the text; a random model's odd bytes sometimes don't.
        node = next(
            n for n in loom.roll(store, tiny_engine, root.id, n=4, max_tokens=6) if "tokens" in (n.meta or {})
        )
        tokens = (node.meta or {})["tokens"]
        index = min(2, len(tokens) - 1)
        alt = next(a for a, _ in tokens[index][2] if a != tokens[index][0])
        cf = loom.counterfactual(store, node.id, index, alt)
        assert cf.parent_id == root.id and cf.id != node.id
        assert cf.text == "".join(t[0] for t in tokens[:index]) + alt
        assert (cf.meta or {})["counterfactual_of"] == node.id and (cf.meta or {})["replaced"] == tokens[
            index
        ][0]
        assert store.get_node(node.id) == node  # nothing lost
        more = loom.roll(store, tiny_engine, cf.id, n=1, max_tokens=3)
        assert all(m.parent_id == cf.id for m in more)
        with pytest.raises(HelixloomError, match="outside"):
            loom.counterfactual(store, node.id, len(tokens), alt)
        with pytest.raises(HelixloomError, match="another"):
            loom.counterfactual(store, node.id, index, tokens[index][0])
        with pytest.raises(HelixloomError, match="no token"):
            loom.counterfactual(store, root.id, 0, "x")


def test_blind_ab_choice_is_a_preference_pair(tiny_adapted_engine: HFEngine, tmp_path: Path) -> None:
    with Store(tmp_path / "db") as store:
        root = store.add_node("t", None, "Paris is the capital of")
        a, b = loom.ab_roll(store, tiny_adapted_engine, root.id, None, "beta", max_tokens=6)
        assert (a.adapter, b.adapter) == (None, "beta")
        assert (a.meta or {})["ab"]["pair"] == (b.meta or {})["ab"]["pair"]
        pref_id = loom.ab_choose(store, b.id, a.id)
        [pref] = store.list_preferences(source="loom-ab")
        assert pref.id == pref_id and (pref.chosen_node_id, pref.rejected_node_id) == (b.id, a.id)
        assert (pref.prompt, pref.chosen, pref.rejected) == ("Paris is the capital of", b.text, a.text)
        assert pref.meta is not None and pref.meta["chosen"]["adapter"] == "beta"
        assert pref.meta["rejected"]["adapter"] is None and pref.meta["blind"] is True
        assert pref.meta["chosen"]["adapter_version"]
        assert ((store.get_node(b.id) or b).meta or {})["ab_result"] == "chosen"
        rows = [p for p in loom.export_preferences(store) if p["source"] == "loom-ab"]
        assert rows == [
            {
                "prompt": pref.prompt,
                "chosen": b.text,
                "rejected": a.text,
                "source": "loom-ab",
                "tree_id": "t",
                "chosen_id": b.id,
                "rejected_id": a.id,
            }
        ]
        with pytest.raises(HelixloomError, match="siblings"):
            loom.ab_choose(store, b.id, root.id)


def test_marks_search_and_undone_nodes(tmp_path: Path) -> None:
    with Store(tmp_path / "db") as store:
        ids = small_tree(store)
        store.add_node("t1", ids["d"], " 100% _sure_")
        loom.mark(store, ids["c1"], bookmark=True, visited=True)
        marked = store.get_node(ids["c1"])
        assert marked is not None and marked.meta == {"bookmark": True, "visited": True}
        assert [n.text for n in loom.search(store, "t1", "C1")] == [" c1"]
        assert [n.text for n in loom.search(store, "t1", "0%")] == [" 100% _sure_"]
        assert loom.search(store, "t1", "_s") and not loom.search(store, "t1", "x_s")
        assert loom.search(store, "t1", "  ") == []
        # Undo hides a node: it stays in the store but is nobody's choice in the exports.
        loom.mark(store, ids["a"], hidden=True)
        assert store.get_node(ids["a"]) is not None
        assert list(loom.export_sft(store)) == []
        assert not any(p["chosen"] == " a" for p in loom.export_preferences(store))
        with pytest.raises(HelixloomError, match="unknown mark"):
            loom.mark(store, ids["a"], deleted=True)


def test_export_import_keeps_everything(tiny_adapted_engine: HFEngine, tmp_path: Path) -> None:
    with Store(tmp_path / "db") as store:
        root = store.add_node("t", None, "Berlin is")
        a, b = loom.ab_roll(store, tiny_adapted_engine, root.id, "alpha", "gamma", max_tokens=4)
        loom.ab_choose(store, a.id, b.id)
        loom.mark(store, b.id, bookmark=True)
        store.add_rating("node", a.id, 1)
        store.set_node_score(b.id, 0.25)
        exported = json.loads(json.dumps(loom.tree_json(store, "t", full=True)))
        new_tree = loom.import_tree(store, exported)
        again = loom.tree_json(store, new_tree, full=True)

    def strip(n: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in n.items() if k not in ("id", "tree_id", "parent_id")}

    assert [strip(n) for n in again["nodes"]] == [strip(n) for n in exported["nodes"]]
    assert any("tokens" in (n["meta"] or {}) for n in again["nodes"])
    [pref] = again["preferences"]
    assert (pref["chosen"], pref["rejected"]) == (a.text, b.text)
    assert pref["chosen_node_id"] in {n["id"] for n in again["nodes"]} - {n["id"] for n in exported["nodes"]}


def test_import_reads_socketteer_loom_tree_files(tmp_path: Path) -> None:
    data = json.loads((Path(__file__).parent / "data" / "socketteer_loom_tree.json").read_text())
    assert loom_formats.detect(data) == "socketteer/loom"
    with Store(tmp_path / "db") as store:
        tree = loom.import_tree(store, data)
        nodes = {n["text"].strip()[:12]: n for n in loom.tree_json(store, tree)["nodes"]}
    # The empty immutable wrapper root is folded away: the first text is the prompt.
    root = nodes["The archivis"]
    assert root["parent_id"] is None and root["author"] == "human"
    assert root["meta"]["chapter"] == "The drawer" and root["created_at"].startswith("2023-07-14T09:30:00")
    map_, dust, streets = nodes["and found a "], nodes["and found no"], nodes["Its streets "]
    assert map_["parent_id"] == root["id"] == dust["parent_id"] and streets["parent_id"] == map_["id"]
    assert map_["author"] == "ai" and map_["meta"]["bookmark"] is True and map_["meta"]["visited"] is True
    assert map_["meta"]["generation"] == {"id": "cmpl-7abc", "index": 0}
    assert map_["meta"]["loom_id"] == "0f3c1a2e-1f00-11ee-8000-000000000003"
    assert dust["author"] == "mixed" and dust["meta"]["edited"] is True and dust["meta"]["tags"] == ["pinned"]
    assert streets["meta"]["visited"] is False and streets["depth"] == 2
    with Store(tmp_path / "db") as store, pytest.raises(HelixloomError, match="socketteer"):
        loom.import_tree(store, {"root": "not a node", "children": []})


def test_bulk_add_nodes_is_one_transaction(tmp_path: Path) -> None:
    with Store(tmp_path / "db") as store:
        root = store.add_node("big", None, "root")
        specs, parent = [], root.id
        for i in range(500):
            specs.append(NewNode(parent, f" n{i}"))
            parent = content_id(parent, f" n{i}", "big") if i % 50 else root.id
        ids = store.add_nodes("big", specs)
        assert len(set(ids)) == 500 and len(store.tree_nodes("big")) == 501
        assert max(n.depth for n in store.tree_nodes("big")) == 50
        with pytest.raises(HelixloomError, match="no parent"):
            store.add_nodes("big", [NewNode(root.id, " fine"), NewNode("missing", " bad")])
        assert len(store.tree_nodes("big")) == 501  # all or nothing
        store.add_rating("node", ids[3], 1)
        store.add_rating("node", ids[3], 1)
        assert store.tree_ratings("big") == {ids[3]: 2}


def test_loom_api_new_routes(server: BackgroundServer) -> None:
    url = server.url + "/api"
    tree = httpx.post(url + "/trees", json={"prompt": "Numbers: 0 1 2"}).json()
    root = tree["nodes"][0]["id"]
    rolled = httpx.post(
        f"{url}/nodes/{root}/children", json={"n": 2, "max_tokens": 4, "preset": "greedy"}, timeout=60
    ).json()
    assert rolled["new"] and all(
        n["meta"]["sampler"]["preset"] == "greedy" for n in rolled["nodes"] if n["id"] in rolled["new"]
    )
    kid = rolled["new"][0]
    full = httpx.get(f"{url}/nodes/{kid}").json()
    assert "".join(t[0] for t in full["meta"].get("tokens", [])) in ("", full["text"])
    marked = httpx.post(f"{url}/nodes/{kid}/marks", json={"bookmark": True, "visited": True}).json()
    assert marked["meta"]["bookmark"] is True and "tokens" not in marked["meta"]
    found = httpx.get(f"{url}/trees/{tree['tree_id']}/search", params={"q": "numbers"}).json()["data"]
    assert [n["id"] for n in found] == [root]
    exported = httpx.get(f"{url}/trees/{tree['tree_id']}/export").json()
    assert exported["preferences"] == [] and len(exported["nodes"]) == len(rolled["nodes"])
    models = httpx.get(url + "/loom/models").json()
    assert models["models"][0]["kind"] == "base" and "greedy" in models["presets"]
    # Errors are OpenAI-shaped and name no internal path.
    bad = [
        httpx.post(f"{url}/nodes/{root}/counterfactual", json={"index": 0, "token": "x"}),
        httpx.post(f"{url}/nodes/{root}/children", json={"preset": "spicy"}),
        httpx.post(f"{url}/nodes/{root}/children", json={"preset": "greedy", "temperature": 1.0}),
        httpx.post(f"{url}/nodes/{kid}/marks", json={"deleted": True}),
        httpx.post(f"{url}/ab/choice", json={"chosen": kid, "rejected": root}),
        httpx.post(f"{url}/trees/import", json={"root": {"text": 5, "children": []}}),
    ]
    assert [r.status_code for r in bad] == [400] * 6
    assert all("error" in r.json() and "/tmp" not in r.text for r in bad)
    for path in ("/nodes/nope", "/trees/nope/export"):
        assert httpx.get(url + path).status_code == 404
    assert httpx.post(f"{url}/nodes/nope/ab", json={}).status_code == 404


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=4),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    ["text", "children", "tags", "meta", "id", "visited", "memories", "chapter_id"]
                ),
                inner,
                max_size=5,
            )
        ),
        max_leaves=20,
    )
)
def test_any_socketteer_shaped_file_reads_or_is_refused(root: object) -> None:
    try:
        data = loom_formats.to_helixloom({"root": root, "chapters": {"c": root}})
    except HelixloomError:
        return
    assert data["format"] == loom.FORMAT and all(isinstance(n["text"], str) for n in data["nodes"])
