"""The loom's views in Chromium: token alternatives and branching from one, the tree view, rolls with
a chosen adapter, blind A/B choices, a 10,000-node tree, and importing socketteer/loom's files.

A real server on loopback with the tiny model and its adapters; Debian's chromium driven by Playwright.
Each view's screenshot is kept under artifacts/.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helixloom.engine.hf import HFEngine
from helixloom.server import BackgroundServer, ServerConfig, ServerState
from helixloom.store import Store
from helixloom.store.trees import NewNode
from helixloom.store.trees import node_id as content_id
from tests.conftest import TinyModel, serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true", reason="no Chromium here"
)


@pytest.fixture(scope="module")
def state(
    tiny_model: TinyModel, tiny_adapted_engine: HFEngine, tmp_path_factory: pytest.TempPathFactory
) -> ServerState:
    adapters = {name: str(path) for name, path in tiny_model.adapters.items()}
    return ServerState(
        ServerConfig(model=str(tiny_model.path), adapters=adapters),
        tiny_adapted_engine,
        Store(tmp_path_factory.mktemp("loomui") / "db"),
    )


@pytest.fixture(scope="module")
def server(state: ServerState) -> Iterator[BackgroundServer]:
    with serving(state) as running:
        yield running


@pytest.fixture(scope="module")
def page(server: BackgroundServer) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        yield page
        browser.close()


def new_tree(page: Any, server: BackgroundServer, prompt: str) -> None:
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length >= 4")
    page.fill("#prompt", prompt)
    page.click("#create")
    page.wait_for_function(f"document.querySelector('#text').textContent === {prompt!r}")


def current_id(page: Any) -> str:
    return str(page.evaluate("current"))


def roll_and_open_tokens(page: Any, n: int, tokens: int) -> None:
    """Roll ``n`` continuations of the current node and open one, split into its tokens."""
    page.fill("#n", str(n))
    page.fill("#tokens", str(tokens))
    page.click("#roll")
    page.wait_for_function("children(rootOf().id).length > 0")
    page.evaluate("go(children(rootOf().id).find((n) => n.has_tokens).id)")
    # attached, not visible: a sampled first token whose text is empty (a partial byte) has no width,
    # and waiting for it to be visible timed out (seen once in a full run, Dec 2026)
    page.wait_for_selector("#text .tok", state="attached")


def test_token_alternatives_and_a_branch_from_one(
    page: Any, server: BackgroundServer, state: ServerState
) -> None:
    new_tree(page, server, "The quick brown fox")
    roll_and_open_tokens(page, 3, 6)
    rolled = current_id(page)
    page.fill("#n", "1")
    page.hover("#text .tok >> nth=1")
    page.wait_for_selector("#tokpop:not([hidden]) .alt")
    assert "%" in page.inner_text("#tokpop .chosen")  # the sampled token's probability
    page.click("#text .tok >> nth=1")  # pins the alternatives
    alts = page.locator("#tokpop .alt")
    assert alts.count() >= 1
    pick = next(
        i for i in range(alts.count()) if "\ufffd" not in (alts.nth(i).get_attribute("data-token") or "")
    )
    token = alts.nth(pick).get_attribute("data-token")
    page.select_option("#colour", "prob")
    page.screenshot(path=str(ARTIFACTS / "loom-tokens.png"))
    alts.nth(pick).click()
    page.wait_for_function(f"current !== {rolled!r} && byId.get(current).parent_id !== {rolled!r}")
    # The new branch: a sibling of the rolled node that keeps its first token and takes the
    # alternative, then the continuation rolled from there.
    made = state.store.get_node(current_id(page))
    assert made is not None and made.parent_id is not None
    branch = state.store.get_node(made.parent_id)
    original = state.store.get_node(rolled)
    assert branch is not None and original is not None
    assert (branch.meta or {})["counterfactual_of"] == rolled and branch.parent_id == original.parent_id
    first = (original.meta or {})["tokens"][0][0]
    assert branch.text == first + token
    assert token in page.inner_text("#text")
    assert page.locator("#text sup.fork").count() >= 1  # the reader marks the branch point
    page.select_option("#colour", "entropy")
    page.click(f"#outline span[data-id='{branch.id}']")
    page.wait_for_selector("#text .tok", state="detached")
    assert "counterfactual" in page.inner_text("#info")


def test_a_line_break_or_empty_token_can_be_seen_and_hovered(page: Any, server: BackgroundServer) -> None:
    # A sampled token of only "\n" renders with no width of its own; CI once failed waiting for it
    # to become visible. The reader draws a marker for it, outside the text; a token with no text
    # (part of a character whose bytes end in the next token) gets one too.
    new_tree(page, server, "A list:")
    roll_and_open_tokens(page, 1, 4)
    # every token plain text first: the tiny model sometimes samples a newline or a partial byte of
    # its own, and the counts below would find two (seen in a full run, Dec 2026)
    page.evaluate(
        "(() => { const t = tokenCache.get(current); t.forEach((x, i) => { t[i] = ['w' + i, x[1], x[2]]; }); "
        "render(); })()"
    )
    for index, text, cls, marker in ((0, "\\n", "nl", "\u21b5"), (1, "", "part", "\u00b7")):
        page.evaluate(
            f"(() => {{ const t = tokenCache.get(current); t[{index}] = ['{text}', t[{index}][1], "
            f"t[{index}][2]]; render(); }})()"
        )
        token = page.locator(f"#text .tok.{cls}")
        assert token.count() == 1
        box = token.bounding_box()
        assert box is not None and box["width"] > 0 and box["height"] > 0
        token.hover()
        page.wait_for_selector("#tokpop:not([hidden]) .alt")
        assert marker not in page.evaluate("document.querySelector('#text').textContent")


def test_tree_view_renders_and_navigates(page: Any, server: BackgroundServer) -> None:
    new_tree(page, server, "A lighthouse stood")
    page.fill("#n", "3")
    page.fill("#tokens", "3")
    page.click("#roll")
    page.wait_for_function("tree.nodes.length >= 3")
    page.keyboard.press("ArrowLeft")
    assert current_id(page) == page.evaluate("rootOf().id")
    kids = page.evaluate("children(current).map((n) => n.id)")
    target = kids[-1]
    box = page.locator("#graph").bounding_box()
    pos = page.evaluate(f"graph.screenPos({target!r})")
    assert 0 < pos["x"] < box["width"] and 0 < pos["y"] < box["height"]  # drawn inside the view
    # The canvas really has the tree on it: pixels at the node differ from the background.
    pixel = page.evaluate(
        f"""(() => {{ const p = graph.screenPos({target!r}), d = devicePixelRatio;
        const x = Math.round(p.x * d), y = Math.round(p.y * d);
        return Array.from(graph.ctx.getImageData(x, y, 1, 1).data); }})()"""
    )
    assert pixel[3] > 0
    page.mouse.click(box["x"] + pos["x"], box["y"] + pos["y"])
    page.wait_for_function(f"current === {target!r}")
    assert f"node={target}" in page.url
    scale = page.evaluate("graph.scale")
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -300)
    page.wait_for_function(f"graph.scale > {scale}")
    page.keyboard.press("b")  # bookmark
    page.wait_for_selector("#bookmarks .bm")
    page.keyboard.press("ArrowLeft")
    page.click("#bookmarks .bm")
    assert current_id(page) == target
    page.fill("#search", page.evaluate("byId.get(current).text").strip()[:3] or "A")
    page.press("#search", "Enter")
    page.wait_for_selector("#results .hit")
    page.locator("#graph").screenshot(path=str(ARTIFACTS / "loom-tree.png"))
    page.screenshot(path=str(ARTIFACTS / "loom-tree-page.png"))


def test_roll_with_a_chosen_adapter_records_it(
    page: Any, server: BackgroundServer, state: ServerState
) -> None:
    new_tree(page, server, "Paris is the capital of")
    page.select_option("#model", "beta")
    page.select_option("#preset", "creative")
    page.fill("#n", "2")
    page.fill("#tokens", "4")
    page.click("#roll")
    page.wait_for_function("byId.get(current).adapter === 'beta'")
    node = state.store.get_node(current_id(page))
    version = next(a.version for a in state.engine.adapters() if a.name == "beta")
    assert node is not None and node.adapter == "beta" and (node.meta or {})["adapter_version"] == version
    assert (node.meta or {})["sampler"]["preset"] == "creative"
    info = page.inner_text("#info")
    assert "beta" in info and version[:12] in info and "creative" in info
    assert "beta" in page.inner_text("#legend")
    page.screenshot(path=str(ARTIFACTS / "loom-adapter.png"))


def test_blind_ab_records_a_preference_pair(page: Any, server: BackgroundServer, state: ServerState) -> None:
    new_tree(page, server, "Berlin is the capital of")
    parent = current_id(page)
    page.select_option("#ab-a", state.base_id)
    page.select_option("#ab-b", "gamma")
    page.fill("#tokens", "6")
    page.click("#abroll")
    page.wait_for_selector("#abpanel:not([hidden])")
    # Blind: the options show their text, and nothing on the page names the model behind either.
    pair = page.evaluate("abPending.pair")
    assert page.inner_text("#abtext1") == page.evaluate(f"byId.get({pair[0]!r}).text")
    page.click(f"#outline span[data-id='{pair[0]}']")
    # (The A and B pickers name the two models, as the user chose them; not which wrote which.)
    for part in ("#abpanel", "#info", "#text", "#outline", "#legend"):
        assert "gamma" not in page.inner_text(part), part
    assert page.evaluate(f"colourOf(byId.get({pair[0]!r})) === colourOf(byId.get({pair[1]!r}))")
    assert "hidden (blind A/B)" in page.inner_text("#info")
    page.click(f"#outline span[data-id='{parent}']")
    page.screenshot(path=str(ARTIFACTS / "loom-ab.png"))
    page.keyboard.press("2")
    page.wait_for_function("document.querySelector('#abresult').textContent.includes('preferred')")
    prefs = [p for p in state.store.list_preferences(source="loom-ab") if p.chosen_node_id == pair[1]]
    assert len(prefs) == 1 and prefs[0].rejected_node_id == pair[0]
    chosen, rejected = state.store.get_node(pair[1]), state.store.get_node(pair[0])
    assert chosen is not None and rejected is not None
    assert (prefs[0].chosen, prefs[0].rejected) == (chosen.text, rejected.text)
    assert prefs[0].prompt == "Berlin is the capital of"
    assert prefs[0].meta is not None and prefs[0].meta["chosen"]["adapter"] == chosen.adapter
    assert {chosen.adapter, rejected.adapter} == {None, "gamma"}
    assert "gamma" in page.inner_text("#abresult")  # revealed after the choice


def test_undo_hides_and_keeps(page: Any, server: BackgroundServer, state: ServerState) -> None:
    new_tree(page, server, "Numbers:")
    root = current_id(page)
    page.fill("#n", "2")
    page.fill("#tokens", "3")
    page.click("#roll")
    page.wait_for_function(f"current !== {root!r}")
    made = page.evaluate("children(rootOf().id).map((n) => n.id)")
    page.keyboard.press("u")
    page.wait_for_function(f"current === {root!r} && children(current).length === 0")
    assert all(state.store.get_node(i) is not None for i in made)  # kept, only hidden
    page.check("#showhidden")
    page.wait_for_function(f"children({root!r}).length === {len(made)}")


def big_tree(store: Store, size: int, seed: int = 0) -> tuple[str, str]:
    """A tree of ``size`` nodes shaped like a loom session: long branches with bursts of siblings.
    Returns (tree id, a deep node's id)."""
    rng = random.Random(seed)
    tree = f"big{size}-{seed}"
    root = store.add_node(tree, None, "In the beginning")
    ids, specs = [root.id], []
    for i in range(size - 1):
        # The newest node or one of the last 200: 10,000 nodes come out about 170 levels deep.
        parent = ids[-1] if rng.random() < 0.3 else rng.choice(ids[-200:])
        text = f" step {i} " + " ".join(
            rng.choice(("rain", "stone", "river", "lamp", "ink")) for _ in range(6)
        )
        specs.append(NewNode(parent, text, author="model", model="model", meta={"source": "roll"}))
        ids.append(content_id(parent, text, tree))
    store.add_nodes(tree, specs)
    return tree, ids[-1]


def test_a_10000_node_tree_opens_and_navigates(
    page: Any, server: BackgroundServer, state: ServerState
) -> None:
    tree, deep = big_tree(state.store, 10_000)
    page.goto(f"{server.url}/#tree={tree}&node={deep}")
    page.wait_for_function("window.loomTimings.open_ms !== null", timeout=60_000)
    opened = page.evaluate("window.loomTimings.open_ms")
    steps = []
    for key in ["ArrowLeft"] * 5 + ["ArrowUp", "ArrowDown", "ArrowRight"] * 3:
        steps.append(
            page.evaluate(
                """(key) => new Promise((done) => { const t = performance.now();
                document.dispatchEvent(new KeyboardEvent('keydown', {key}));
                requestAnimationFrame(() => setTimeout(() => done(performance.now() - t), 0)); })""",
                key,
            )
        )
    assert page.evaluate("tree.nodes.length") == 10_000
    assert page.evaluate("graph.pos.size") == 10_000
    print(
        f"\n10,000-node tree: opened in {opened:.0f} ms; navigation step to next frame: "
        f"median {sorted(steps)[len(steps) // 2]:.1f} ms, max {max(steps):.1f} ms"
    )
    page.screenshot(path=str(ARTIFACTS / "loom-10k.png"))


def test_import_a_socketteer_loom_file(page: Any, server: BackgroundServer) -> None:
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length >= 4")
    page.set_input_files("#import", str(Path(__file__).parent / "data" / "socketteer_loom_tree.json"))
    page.wait_for_function("tree && tree.nodes.length === 4")
    assert page.inner_text("#text") == "The archivist opened the last drawer"
    assert "map of a city" in page.inner_text("#bookmarks")  # its bookmark tag
    page.click("#bookmarks .bm")
    assert "Its streets" not in page.inner_text("#text")
    page.keyboard.press("ArrowRight")
    assert "Its streets were named" in page.inner_text("#text")
    page.screenshot(path=str(ARTIFACTS / "loom-import.png"))


def test_weave_steered_by_a_reward_users_taught(
    page: Any, server: BackgroundServer, state: ServerState
) -> None:
    """The loom's weave picks a reward instead of a question (AutoLoom): here what an improve run
    learned from ratings; every node it grows is scored by that reward."""
    from helixloom.training.active import Embedder, RatedPair, fit_reward
    from helixloom.training.improve import ImproveConfig, ImproveRun
    from helixloom.training.reward_spec import load_reward

    run = ImproveRun.create(
        "taught", ["a prompt"], ["another"], base=state.engine.model_name, config=ImproveConfig(rounds=1)
    )
    embed = Embedder(state.engine, context=lambda p: run.chat_context(state.engine, p))
    rated = [RatedPair("Q:", "apple idea audio", "crypt tryst rhythm"), RatedPair("Q:", "eerie", "brick")]
    (run.root / "round-1").mkdir()
    fit_reward(rated, embed, members=2).ensemble.save(run.root / "round-1" / "reward.safetensors")
    reward = load_reward("improve:taught", engine=state.engine)

    new_tree(page, server, "Once upon a time")
    root = current_id(page)
    page.evaluate("loadRewards()")
    page.wait_for_selector("#steer option[value='improve:taught']", state="attached")
    page.select_option("#steer", "improve:taught")
    assert page.is_disabled("#question")  # the reward steers, not a question
    page.fill("#budget", "4")
    page.fill("#tokens", "3")
    page.click("#weave")
    page.wait_for_function(f"current !== {root!r}")
    grown = [n for n in state.store.tree_nodes(state.store.get_node(root).tree_id) if n.id != root]
    assert len(grown) == 4
    for node in grown:
        text = "".join(n.text for n in _branch(state, node.id)[1:])
        assert node.score == pytest.approx(reward.score(["Once upon a time"], [text])[0], abs=1e-3)
    page.screenshot(path=str(ARTIFACTS / "loom-weave-reward.png"))
    page.select_option("#steer", "")
    assert not page.is_disabled("#question")


def _branch(state: ServerState, node_id: str) -> list[Any]:
    path, node = [], state.store.get_node(node_id)
    while node is not None:
        path.append(node)
        node = state.store.get_node(node.parent_id) if node.parent_id else None
    return path[::-1]
