"""Weave: the yes/no evaluator and tree search (scripted engines for exact checks, tiny model for real)."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helixloom.engine import GenerationRequest
from helixloom.engine.hf import HFEngine
from helixloom.errors import HelixloomError
from helixloom.store import Store
from helixloom.weave import Evaluator, Question, WeaveConfig, run, weave
from helixloom.weave.search import WeaveNode
from tests.conftest import TinyModel, serving
from tests.scripted import ScriptedEngine

WORDS = ["cat", "dog", "sun", "car", "tree"]  # "cat" is drawn one time in five


def one_word(request: GenerationRequest) -> str:
    return " " + random.Random(request.sampling.seed).choice(WORDS)


def response_of(prompt: str) -> str:
    return re.search(r"=== Begin Response ===\n(.*)\n=== End Response ===", prompt, re.S).group(1)  # type: ignore[union-attr]


def cats(prompt: str) -> float:
    """The scripted judge: the more cats in the response, the likelier "yes"."""
    return 1 - 0.5 ** (1 + response_of(prompt).count("cat"))


def test_evaluator_orders_by_the_property_and_combines_questions() -> None:
    engine = ScriptedEngine([], judge=cats)
    ev = Evaluator(engine, [Question("Is it about cats?")])
    none, one, two = ev.score([("p", "a dog"), ("p", "a cat"), ("p", "cat cat")])
    assert none < one < two
    assert one == pytest.approx(math.log(0.75) - math.log(0.25))
    # A question whose good answer is "no" counts negatively; weights make a weighted mean.
    mixed = Evaluator(engine, [Question("Cats?", weight=3.0), Question("Dogs?", weight=1.0, answer="no")])
    [score] = mixed.score([("p", "a cat")])
    assert score == pytest.approx((3 * one - one) / 4)
    assert len(engine.scored) == 3 + 2  # one prompt per (pair, question), in one batch each call
    assert "Is it about cats?" in engine.scored[0] and "a dog" in engine.scored[0]


def test_evaluator_errors() -> None:
    engine = ScriptedEngine([], judge=cats)
    with pytest.raises(HelixloomError, match="at least one question"):
        Evaluator(engine, [])
    with pytest.raises(HelixloomError, match="no \\{response\\}"):
        Evaluator(engine, [Question("q")], template="{prompt} {question}")
    with pytest.raises(HelixloomError, match="weight"):
        Question("q", weight=0)


def test_a_question_may_carry_its_own_prompt() -> None:
    engine = ScriptedEngine([], judge=lambda prompt: 0.8 if prompt.startswith("OWN") else 0.4)
    own = Question("Own", 2.0, "no", template="OWN {prompt} / {response} {question}")
    ev = Evaluator(engine, [Question("Shared?"), own])
    [[shared, mine]] = ev.signed_scores([("p", "r")])
    assert (shared, mine) == (pytest.approx(math.log(0.4 / 0.6)), pytest.approx(-math.log(0.8 / 0.2)))
    # The own prompt replaces the evaluator's template; "{question}" is not a field of it.
    assert engine.scored[1] == "OWN p / r {question}"
    assert "Shared?" in engine.scored[0] and "=== Begin Response ===\nr" in engine.scored[0]
    with pytest.raises(HelixloomError, match="no \\{response\\}"):
        Question("Own", template="{prompt} only")
    with pytest.raises(HelixloomError, match="empty"):
        Question("Own", template="  ")


def test_evaluator_on_the_tiny_model(tiny_adapted_engine: HFEngine) -> None:
    engine = tiny_adapted_engine
    ev = Evaluator(engine, [Question("Is this good?"), Question("Is it long?", answer="no")])
    scores = ev.score([("Once", " upon a time"), ("Paris is", " the capital"), ("x", "")])
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    with_adapter = Evaluator(engine, [Question("Is this good?")], adapter="alpha").score([("Once", " upon")])
    assert with_adapter != Evaluator(engine, [Question("Is this good?")]).score([("Once", " upon")])


def test_weave_refuses_what_cannot_run_before_scoring_anything(tiny_adapted_engine: HFEngine) -> None:
    # a prompt past the model's context was scored (one pass of any size) before generation refused it
    engine = tiny_adapted_engine
    scored: list[object] = []

    class Counting(Evaluator):
        def score(self, pairs):  # type: ignore[no-untyped-def]
            scored.append(pairs)
            return super().score(pairs)

    evaluator = Counting(engine, [Question("Good?")])
    with pytest.raises(HelixloomError, match="context"):
        weave("word " * engine.max_model_len, engine, evaluator, WeaveConfig(budget=2))
    for bad, param in (
        (dict(temperature=math.inf), "temperature"),
        (dict(sampling_temperature=math.inf), "sampling"),
    ):
        with pytest.raises(HelixloomError, match=param):
            WeaveConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(HelixloomError, match="finite"):
        Question("q", weight=math.inf)
    assert scored == []


def scripted_weave(config: WeaveConfig) -> tuple[ScriptedEngine, object]:
    engine = ScriptedEngine(one_word, judge=cats)
    return engine, weave("Story:", engine, Evaluator(engine, [Question("Cats?")]), config)


@settings(max_examples=25, deadline=None)
@given(
    budget=st.integers(1, 30),
    round_budget=st.integers(1, 12),
    n_expand=st.integers(1, 5),
    beam=st.integers(1, 3),
    lookahead=st.integers(1, 3),
    seed=st.integers(0, 10_000),
)
def test_weave_invariants(
    budget: int, round_budget: int, n_expand: int, beam: int, lookahead: int, seed: int
) -> None:
    config = WeaveConfig(
        budget=budget,
        round_budget=round_budget,
        n_expand=n_expand,
        beam_width=beam,
        max_lookahead=lookahead,
        temperature=0.5,
        seed=seed,
    )
    engine, result = scripted_weave(config)
    nodes = result.root.nodes()  # type: ignore[attr-defined]
    # The budget counts generated nodes and is never exceeded.
    assert result.generated == len(nodes) - 1 == len(engine.requests) <= budget  # type: ignore[attr-defined]
    for node in nodes:
        scored = [c.logit for c in node.children]
        if scored and not node.committed:  # internal uncommitted nodes hold the soft-max backup
            m = max(scored)
            assert node.logit == pytest.approx(m + math.log(sum(math.exp(v - m) for v in scored)))
        if node.committed and node.parent is not None:  # committed nodes hang off committed nodes
            assert node.parent.committed and not node.pruned
    committed = sorted((n for n in nodes if n.committed), key=lambda n: n.depth)
    if beam == 1:  # one node committed per round: the committed nodes are one path from the root
        assert [n.depth for n in committed] == list(range(len(committed)))
        assert all(n.parent is prev for prev, n in itertools.pairwise(committed))
    # Same seed, same tree.
    _, again = scripted_weave(config)
    assert [(n.text, n.score, n.depth) for n in again.root.nodes()] == [
        (n.text, n.score, n.depth) for n in nodes
    ]  # type: ignore[attr-defined]


def test_weave_finds_what_the_evaluator_rewards() -> None:
    """Three committed levels of one word each: a plain sample has a cat 1 - 0.8^3 = 49% of the time."""
    found, plain = 0, 0
    for seed in range(20):
        config = WeaveConfig(
            budget=24, round_budget=8, n_expand=4, tokens_per_node=1, temperature=0.25, seed=seed
        )
        _, result = scripted_weave(config)
        best = result.best[0]  # type: ignore[attr-defined]
        found += best.depth >= 1 and "cat" in best.branch_text(include_root=False)
        sample_rng = random.Random(1000 + seed)
        plain += "cat" in "".join(sample_rng.choice(WORDS) for _ in range(best.depth))
    assert found >= 18 and found > plain + 5


def test_run_stores_the_tree(tmp_path: Path) -> None:
    engine = ScriptedEngine(one_word, judge=cats)
    with Store(tmp_path / "db") as store:
        evaluator = Evaluator(engine, [Question("Cats?")])
        result, tree = run("Story:", engine, evaluator, WeaveConfig(budget=10, seed=1), store=store)
        stored = store.tree_nodes(tree or "")
        # Content-addressed: identical siblings (the same word twice) are one stored node.
        ids = {n.node_id for n in result.root.nodes()}
        assert None not in ids and len(stored) == len(ids) <= result.generated + 1
        by_id = {n.id: n for n in stored}
        root = next(n for n in stored if n.parent_id is None)
        assert root.text == "Story:" and root.depth == 0
        for n in stored:
            if n.parent_id:
                assert (
                    by_id[n.parent_id].depth == n.depth - 1 and n.score is not None and n.model == "scripted"
                )
        assert any(n.meta and n.meta.get("best") for n in stored)
        assert sum(1 for n in stored if n.meta and n.meta.get("committed")) >= 2


def test_weave_on_the_tiny_model(tiny_engine: HFEngine) -> None:
    engine = tiny_engine
    ev = Evaluator(engine, [Question("Is this a good story?")])
    before = engine.prefill_tokens
    config = WeaveConfig(budget=8, round_budget=4, n_expand=4, tokens_per_node=4, seed=3)
    result = weave("Once upon a time", engine, ev, config)
    assert result.generated == 8 and result.text
    assert isinstance(result.best[0], WeaveNode) and result.best[0].depth >= 1
    # Each expansion's 4 children share one prefill.
    assert engine.prefill_tokens - before < 8 * len(engine.encode("Once upon a time")) + 100
    again = weave("Once upon a time", engine, ev, config)
    assert again.text == result.text


def test_cli_weave(capsys: pytest.CaptureFixture[str], tiny_model: TinyModel, helixloom_home: Path) -> None:
    import json

    from helixloom.cli import main, parse_question

    assert parse_question("2*no:Is it long?") == Question("Is it long?", 2.0, "no")
    assert parse_question("Is it sad?") == Question("Is it sad?")
    args = [
        "weave",
        "Once upon a time",
        "--model",
        str(tiny_model.path),
        "--question",
        "Is it a story?",
        "--question",
        "no:Is it boring?",
        "--budget",
        "6",
        "--round-budget",
        "3",
        "--n-expand",
        "3",
        "--tokens-per-node",
        "4",
        "--seed",
        "2",
        "--json",
    ]
    assert main(args) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["generated"] == 6 and body["best"][0]["text"] == body["text"]
    with Store(helixloom_home / "helixloom.db") as store:
        nodes = store.tree_nodes(body["tree_id"])
    assert nodes[0].text == "Once upon a time" and len(nodes) >= 4
    # Continue the stored search under its best node.
    more = [
        "weave",
        "--from-node",
        body["best"][0]["node_id"],
        "--model",
        str(tiny_model.path),
        "--question",
        "Is it a story?",
        "--budget",
        "3",
        "--n-expand",
        "3",
        "--tokens-per-node",
        "4",
        "--json",
    ]
    assert main(more) == 0
    grown = json.loads(capsys.readouterr().out)
    assert grown["tree_id"] == body["tree_id"]
    with Store(helixloom_home / "helixloom.db") as store:
        assert len(store.tree_nodes(body["tree_id"])) > len(nodes)
    assert main(["weave", "x", "--model", str(tiny_model.path)]) == 2
    assert "--question" in capsys.readouterr().err


def test_weave_on_the_server(tiny_model: TinyModel, tiny_engine: HFEngine, tmp_path: Path) -> None:
    import httpx
    import openai

    from helixloom.server import ServerConfig, ServerState

    state = ServerState(ServerConfig(model=str(tiny_model.path)), tiny_engine, Store(tmp_path / "db"))
    with serving(state) as server:
        r = httpx.post(
            server.url + "/api/weave",
            json={
                "prompt": "Once upon a time",
                "budget": 4,
                "round_budget": 2,
                "n_expand": 2,
                "tokens_per_node": 3,
                "questions": [{"text": "Is it good?"}],
            },
            timeout=120,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["generated"] == 4 and len(state.store.tree_nodes(body["tree_id"])) >= 3
        bad = httpx.post(server.url + "/api/weave", json={"prompt": "x", "budget": 0})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "budget"
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        assert "weave" in {m.id for m in client.models.list().data}
        raw = client.chat.completions.with_raw_response.create(
            model="weave",
            messages=[{"role": "user", "content": "Tell a story"}],  # type: ignore[list-item]
            extra_body={"weave": {"budget": 4, "round_budget": 2, "n_expand": 2, "tokens_per_node": 3}},
        )
        reply = raw.parse()
        assert reply.model_extra and reply.model_extra["weave"]["generated"] == 4
        session = state.store.get_session(raw.headers["x-helixloom-session"])
        assert (
            session is not None
            and session.meta
            and session.meta["tree_id"] == reply.model_extra["weave"]["tree_id"]
        )


def _vowel_head(engine: HFEngine) -> Path:
    """A reward head trained on the tiny model: thumbs up for vowel-heavy answers, down for consonants."""
    from helixloom import paths
    from helixloom.training.configs import RewardHeadConfig
    from helixloom.training.feedback import LabelledExample
    from helixloom.training.reward_head import train_reward_head

    rng = random.Random(0)
    examples = []
    for i in range(12):
        examples.append(
            LabelledExample(f"Story {i}:", " " + "".join(rng.choice("aeiou ") for _ in range(20)), 1)
        )
        examples.append(
            LabelledExample(f"Story {i}:", " " + "".join(rng.choice("bcdfgk ") for _ in range(20)), 0)
        )
    folder = paths.home() / "rewards" / "vowels"
    train_reward_head(engine, examples, folder, RewardHeadConfig(seed=0, val_split=0.0, max_epochs=60))
    return folder


def test_weave_is_steered_by_a_trained_reward_head(
    tiny_model: TinyModel, tiny_engine: HFEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import httpx

    from helixloom import weave as weave_pkg
    from helixloom.cli import main
    from helixloom.server import ServerConfig, ServerState
    from helixloom.training.reward_spec import load_reward

    _vowel_head(tiny_engine)
    reward = load_reward("head:vowels", engine=tiny_engine)
    config = WeaveConfig(budget=6, round_budget=3, n_expand=3, tokens_per_node=3, seed=1)
    result = weave("Once upon a time", tiny_engine, weave_pkg.RewardScorer(reward), config)
    # Every node's score is the head's score of its branch: the search is steered by what users taught.
    for node in result.root.nodes():
        if node.parent is not None and node.score is not None:
            assert node.score == pytest.approx(
                reward.score(["Once upon a time"], [node.branch_text(include_root=False)])[0], abs=1e-4
            )
    scored = [n.score for n in result.root.nodes() if n.parent is not None and n.score is not None]
    assert result.best[0].score == max(scored)

    # The CLI: --reward instead of --question (not both).
    assert main(["weave", "Once upon a time", "--model", str(tiny_model.path), "--reward", "head:vowels",
                 "--budget", "4", "--round-budget", "2", "--n-expand", "2", "--tokens-per-node", "3",
                 "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["best"]
    assert (
        main(["weave", "x", "--model", str(tiny_model.path), "--reward", "head:vowels", "--question", "q"])
        == 2
    )

    # The API: head:NAME by name only; Python, files and models are refused.
    state = ServerState(ServerConfig(model=str(tiny_model.path)), tiny_engine, Store(tmp_path / "db"))
    with serving(state) as server:
        body = {
            "prompt": "Once upon a time",
            "budget": 4,
            "round_budget": 2,
            "n_expand": 2,
            "tokens_per_node": 3,
        }
        r = httpx.post(server.url + "/api/weave", json={**body, "reward": "head:vowels"}, timeout=120)
        assert r.status_code == 200, r.text
        nodes = state.store.tree_nodes(r.json()["tree_id"])
        top = r.json()["best"][0]
        assert top["score"] == pytest.approx(reward.score(["Once upon a time"], [top["text"]])[0], abs=1e-3)
        assert len(nodes) >= 5
        for bad in (
            "py:os:getcwd",
            "head:../vowels",
            "constitution:/etc/passwd",
            "judge:http://x",
            "rubric:f",
        ):
            refused = httpx.post(server.url + "/api/weave", json={**body, "reward": bad}, timeout=60)
            assert refused.status_code == 400, bad
            assert "/etc" not in refused.text and str(tmp_path) not in refused.text
        missing = httpx.post(server.url + "/api/weave", json={**body, "reward": "rm:nothing"}, timeout=60)
        assert missing.status_code == 400 and "no trained reward" in missing.json()["error"]["message"]
