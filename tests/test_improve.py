"""The improve loop on the tiny model: active selection, the rating API, promotion and rollback."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import httpx
import pytest
import torch

from helixloom.cli import main
from helixloom.engine import load_engine
from helixloom.errors import HelixloomError
from helixloom.evals.simulated_users import TASTES, SimulatedUser, Taste, choose
from helixloom.rewards import FunctionReward
from helixloom.server import ServerConfig, ServerState
from helixloom.store import Store
from helixloom.training import rating_queue
from helixloom.training.active import (
    CandidatePair,
    PreferenceEnsemble,
    RatedPair,
    agreement,
    bald,
    fit_reward,
    select,
)
from helixloom.training.configs import LoraDPOConfig
from helixloom.training.improve import ImproveConfig, ImproveRun, deploy_engine
from tests.conftest import TinyModel, serving

PROMPTS = [f"Tell me about topic {i}" for i in range(6)]
HELD_OUT = [f"Say something on theme {i}" for i in range(4)]
TRAIN = LoraDPOConfig(learning_rate=5e-3, epochs=4, batch_size=8, rank=8, alpha=16, save_steps=1000)
# the loop as it was before Dec 2026's defaults (DPO, active selection, no forms): what most tests check
FAST = ImproveConfig(
    rounds=1,
    ratings=8,
    batch=4,
    k=4,
    max_tokens=8,
    eval_samples=2,
    gen_batch=40,
    selection="active",
    method="dpo",
    explore=0,
    explore_by="turn",
)


def vowel_share(prompts: list[str], responses: list[str]) -> list[float]:
    """A scripted reward the tiny model can learn (iterate's tests show DPO raises it)."""
    return [sum(c in "aeiou" for c in r) / max(1, len(r)) for r in responses]


def fewer_vowels(prompts: list[str], responses: list[str]) -> list[float]:
    return [-s for s in vowel_share(prompts, responses)]


VOWELS = Taste(
    "vowels",
    "likes answers with many vowels",
    lambda p, a: vowel_share([p], [a])[0] > 0.3,
    lambda p, a: vowel_share([p], [a])[0],
)


# ---------------------------------------------------------------------------------------- active


class Table:
    """Embeddings by answer text, for an ensemble built by hand."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        from helixloom.training.active import Features

        self.vectors = vectors
        self.features = Features()  # what a reward fit on them records

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.tensor([self.vectors[r] for r in responses])


def test_bald_is_high_where_confident_members_disagree_and_zero_where_all_agree() -> None:
    agree = torch.tensor([[0.9, 0.5], [0.9, 0.5]])  # both members sure (col 0) / both unsure (col 1)
    disagree = torch.tensor([[0.95], [0.05]])
    assert bald(agree).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert float(bald(disagree)[0]) > 0.4


def test_bald_selection_picks_the_pair_the_ensemble_is_least_sure_about() -> None:
    # Two members: one rewards dimension 0, the other punishes it; both ignore dimension 1.
    ensemble = PreferenceEnsemble(torch.tensor([[3.0, 0.0], [-3.0, 0.0]]), torch.zeros(2), torch.ones(2))
    table = Table({"x0": [1, 0], "x1": [-1, 0], "y0": [0, 1], "y1": [0, -1], "z0": [0.1, 0], "z1": [0, 0]})
    pairs = [
        CandidatePair("y", "p1", "y0", "y1"),  # members agree it is a coin toss: nothing to learn
        CandidatePair("z", "p2", "z0", "z1"),  # they disagree, a little
        CandidatePair("x", "p3", "x0", "x1"),  # they disagree completely
    ]
    for strategy in ("bald", "active"):  # active too: this ensemble kept no ratings to be Bayesian about
        picked = select(pairs, 2, strategy=strategy, rng=random.Random(0), ensemble=ensemble, embed=table)  # type: ignore[arg-type]
        assert [p.key for p in picked] == ["x", "z"]
    # Random selection ignores the ensemble; without one, active falls back to it.
    assert len(select(pairs, 2, strategy="random", rng=random.Random(0))) == 2
    assert {p.key for p in select(pairs, 3, strategy="active", rng=random.Random(0))} == {"x", "y", "z"}


def test_active_selection_asks_along_the_direction_no_rating_has_explored(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    # 12 ratings, every one a difference along dimension 0 (a little noise on the others)
    chosen = torch.cat([torch.ones(12, 1), 0.1 * torch.randn(12, 2, generator=gen)], dim=1)
    rejected = torch.zeros(12, 3)
    ensemble = PreferenceEnsemble.fit(
        chosen, rejected, members=3, l2=0.5, reference=torch.randn(40, 3, generator=gen)
    )
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    variance = ensemble.logit_variance(a, torch.zeros(3, 3))
    assert variance is not None
    # the Laplace posterior: (l2 I + sum p(1-p) d d^T)^-1, computed here directly, d x d
    d = ensemble.rated.double()
    p = torch.sigmoid(d @ ensemble.weights[0].double())
    precision = 0.5 * torch.eye(3, dtype=torch.float64) + (d * (p * (1 - p))[:, None]).T @ d
    x = (a / ensemble.std).double()
    direct = ((x @ torch.linalg.inv(precision)) * x).sum(dim=1)
    assert variance.tolist() == pytest.approx(direct.tolist(), rel=1e-4)
    assert variance[0] < variance[1] and variance[0] < variance[2]  # the rated direction is pinned down

    table = Table({"x0": [1, 0, 0], "x1": [0, 0, 0], "y0": [0, 1, 0], "y1": [0, 0, 0]})
    pairs = [CandidatePair("x", "p1", "x0", "x1"), CandidatePair("y", "p2", "y0", "y1")]
    picked = select(pairs, 1, strategy="active", rng=random.Random(0), ensemble=ensemble, embed=table)  # type: ignore[arg-type]
    assert [c.key for c in picked] == ["y"]
    # top: the prompt's favourite (z0, along the rated direction) against its least certain challenger,
    # where active asks about the two unexplored answers
    table = Table({"z0": [1, 0, 0], "z1": [0, 0, 0], "z2": [0, 1, 0], "z3": [0, 0, -1]})
    pairs = [CandidatePair(f"{x}{y}", "p", x, y) for x, y in [("z0", "z1"), ("z0", "z2"), ("z2", "z3")]]
    ask = {
        rule: select(pairs, 1, strategy=rule, rng=random.Random(0), ensemble=ensemble, embed=table)  # type: ignore[arg-type]
        for rule in ("active", "top")
    }
    assert [c.key for c in ask["active"]] == ["z2z3"] and [c.key for c in ask["top"]] == ["z0z2"]
    # a saved reward keeps what its posterior needs
    ensemble.save(tmp_path / "reward.safetensors")
    loaded = PreferenceEnsemble.load(tmp_path / "reward.safetensors")
    assert loaded.l2 == 0.5
    assert loaded.logit_variance(a, torch.zeros(3, 3)).tolist() == pytest.approx(variance.tolist())  # type: ignore[union-attr]
    with pytest.raises(HelixloomError, match="bald"):
        select(pairs, 1, strategy="curious", rng=random.Random(0))


def test_selection_asks_about_answers_without_a_thumb_first() -> None:
    # one rated direction (dimension 0); the reward prefers z0, then z1, then z2, z3
    ensemble = PreferenceEnsemble.fit(
        torch.tensor([[1.0, 0.0, 0.0]] * 6), torch.zeros(6, 3), members=2, l2=0.5,
        reference=torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [-1.0, 0, 0]]),
    )  # fmt: skip
    table = Table({"z0": [2, 0, 0], "z1": [1, 1, 0], "z2": [0, 0, 1], "z3": [0, 1, 1]})
    pairs = [
        CandidatePair(f"{x}{y}", "p", x, y)
        for x, y in [("z0", "z1"), ("z0", "z2"), ("z1", "z2"), ("z2", "z3")]
    ]

    def ask(rule: str, marks: dict[str, dict[str, bool]] | None) -> list[str]:
        got = select(
            pairs, 4, strategy=rule, rng=random.Random(0), ensemble=ensemble, embed=table, marks=marks
        )  # type: ignore[arg-type]
        return [c.key for c in got]

    # without thumbs top asks about its favourite z0; once z0 is thumbed its verdict is known, and the
    # favourite is the best answer not yet thumbed (z1), against a challenger without a thumb either
    assert ask("top", None)[0] in ("z0z1", "z0z2")
    assert ask("top", {"p": {"z0": True}}) == ["z1z2", "z0z1"]
    # active: the pairs whose answers have no thumb come first, whatever their variance
    order = ask("active", {"p": {"z0": True, "z1": False}})
    assert order[0] == "z2z3" and set(order[1:3]) == {"z0z2", "z1z2"} and order[3] == "z0z1"
    # random ignores thumbs; marks on another prompt change nothing
    assert ask("random", {"p": {"z0": True}}) == ask("random", None)
    assert ask("active", {"q": {"z2": True}}) == ask("active", None)
    # before any reward the first batch already prefers answers not yet thumbed
    first = select(pairs, 1, strategy="top", rng=random.Random(0), marks={"p": {"z0": True, "z1": True}})
    assert [c.key for c in first] == ["z2z3"]


def test_the_loop_gives_selection_the_thumbs_it_learns_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import helixloom.training.improve as improve_mod

    given: list[object] = []
    real = improve_mod.select

    def spy(left, n, *, strategy, rng, ensemble=None, embed=None, marks=None):  # type: ignore[no-untyped-def]
        given.append(marks)
        return real(left, n, strategy=strategy, rng=rng, ensemble=ensemble, embed=embed, marks=marks)

    monkeypatch.setattr(improve_mod, "select", spy)
    table = Table({a: [float(len(a)), float(a.count("a"))] for a in ("a", "bb", "ccc", "aaaa")})
    candidates = [{"prompt": PROMPTS[0], "answers": ["a", "bb", "ccc", "aaaa"]}]
    for thumbs in ("pairs+ties", "ignore"):
        run = ImproveRun.create(
            f"marks-{thumbs.replace('+', '-')}",
            PROMPTS[:1],
            HELD_OUT,
            base="default",
            config=ImproveConfig(selection="top", ratings=4, batch=2, thumbs=thumbs),
        )
        rating_queue.enqueue(run.name, [rating_queue.QueueItem("old", 1, PROMPTS[0], "aaaa", "a")])
        with Store(tmp_path / "db") as store:
            rating_queue.answer(store, run.name, "old", "a", "simulated", thumbs={"a": "up", "b": "down"})
            run._collect(1, candidates, table, store, lambda items: 0, lambda _: None)  # type: ignore[arg-type]
    assert given == [{PROMPTS[0]: {"aaaa": True, "a": False}}, None]


@pytest.mark.parametrize("selection", ["active", "bald", "top", "random"])
def test_each_selection_rule_is_given_the_reward_so_far_unless_random(
    selection: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import helixloom.training.improve as improve_mod

    seen: list[tuple[str, bool]] = []
    real = improve_mod.select

    def spy(left, n, *, strategy, rng, ensemble=None, embed=None, marks=None):  # type: ignore[no-untyped-def]
        seen.append((strategy, ensemble is not None))
        return real(left, n, strategy=strategy, rng=rng, ensemble=ensemble, embed=embed, marks=marks)

    monkeypatch.setattr(improve_mod, "select", spy)
    table = Table({a: [float(len(a)), float(a.count("a"))] for a in ("a", "bb", "ccc", "aaaa")})
    run = ImproveRun.create(
        "sel",
        PROMPTS[:1],
        HELD_OUT,
        base="default",
        config=ImproveConfig(selection=selection, ratings=4, batch=2),
    )
    candidates = [{"prompt": PROMPTS[0], "answers": ["a", "bb", "ccc", "aaaa"]}]
    with Store(tmp_path / "db") as store:
        store.add_preference(PROMPTS[0], "aaaa", "a", source="simulated", meta={"run": "sel", "round": 1})
        run._collect(1, candidates, table, store, lambda items: 0, lambda _: None)  # type: ignore[arg-type]
    assert seen == [(selection, selection != "random")]


def test_reward_ensemble_learns_ratings_on_real_embeddings(tiny_engine) -> None:
    from helixloom.training.active import Embedder

    embed = Embedder(tiny_engine)
    rng = random.Random(0)
    words = ["apple", "orange", "idea", "stone", "brick", "crypt", "audio", "eerie", "rhythm", "tryst"]

    def text() -> str:
        return " ".join(rng.choice(words) for _ in range(4))

    pairs = []
    while len(pairs) < 24:
        a, b = text(), text()
        if vowel_share([""], [a]) != vowel_share([""], [b]):
            good, bad = (a, b) if vowel_share([""], [a]) > vowel_share([""], [b]) else (b, a)
            pairs.append(RatedPair("Q:", good, bad))
    reward = fit_reward(pairs[:16], embed, members=4, l2=0.1)
    assert agreement(reward, pairs[:16]) == 1.0  # it fits what it was told
    spread = reward.uncertainty(["Q:"] * 4, [p.chosen for p in pairs[16:20]])
    assert all(s > 0 for s in spread)  # bootstrap members differ


def test_a_saved_reward_keeps_the_features_it_was_fit_on(tiny_engine, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from helixloom.training.active import LEGACY, Embedder, Features, LearnedReward

    embed = Embedder(tiny_engine)
    assert embed.features == Features()  # the response, in its prompt's context, at the middle layer
    pairs = [RatedPair("Q:", "apple idea audio", "crypt tryst rhythm"), RatedPair("Q:", "eerie", "brick")]
    reward = fit_reward(pairs, embed, members=2)
    assert reward.ensemble.weights.shape[1] == 2 * tiny_engine.model.config.hidden_size  # mean + last
    reward.ensemble.save(tmp_path / "reward.safetensors")
    loaded = PreferenceEnsemble.load(tmp_path / "reward.safetensors")
    assert loaded.features == embed.features
    assert LearnedReward(loaded, embed).score(["Q:"], ["eerie"]) == reward.score(["Q:"], ["eerie"])
    # scored with vectors of another kind it would rank by noise: refused
    with pytest.raises(HelixloomError, match="fit on"):
        LearnedReward(loaded, Embedder(tiny_engine, features=LEGACY))
    # a reward saved before the features were recorded was fit on the whole text's last layer
    old = reward.ensemble
    save_file({"weights": old.weights, "mean": old.mean, "std": old.std}, str(tmp_path / "old.safetensors"))
    assert PreferenceEnsemble.load(tmp_path / "old.safetensors").features == LEGACY


# ---------------------------------------------------------------------------------------- the loop


def test_loop_promotes_a_better_adapter_and_rolls_back_a_worse_one(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    engine = load_engine(str(tiny_model.path))
    config = ImproveConfig(**{**FAST.__dict__, "rounds": 2})
    with Store(tmp_path / "db") as store:
        good = ImproveRun.create(
            "good", PROMPTS, HELD_OUT, base=str(tiny_model.path), config=config, train=TRAIN
        )
        deployed: list[str] = []
        deploy = deploy_engine(engine)
        rows = good.execute(
            engine,
            store,
            reward=FunctionReward(vowel_share),
            deploy=lambda n, f: (deployed.append(str(f)), deploy(n, f))[1],
        )
        assert [r.promoted for r in rows] == [True, True], [r.reason for r in rows]
        assert rows[1].adapter == str(good.root / "round-2" / "adapter") == str(good.current())
        assert deployed == [str(good.root / f"round-{i}" / "adapter") for i in (1, 2)]
        assert rows[0].win_rate >= 55 and rows[1].win_rate >= 55
        served = {a.name for a in engine.adapters() if a.name.startswith("good@")}
        assert len(served) == 2  # each version under its own name: none served stale
        # Round 2 continued the promoted adapter: its reference (the previous iterate) is round 1's.
        assert (good.root / "round-2" / "train.json").is_file()

        # Trained on the same reward, gated by its opposite: the candidate is worse, so it is kept out.
        bad = ImproveRun.create(
            "bad", PROMPTS, HELD_OUT, base=str(tiny_model.path), config=config, train=TRAIN
        )
        rows = bad.execute(
            engine, store, reward=FunctionReward(vowel_share), gate=FunctionReward(fewer_vowels)
        )
        assert [r.promoted for r in rows] == [False, False]
        assert all("kept the current adapter" in r.reason for r in rows)
        assert bad.current() is None and rows[-1].adapter is None
        assert not (bad.root / "state.json").exists()


def test_loop_learns_from_a_simulated_user_through_the_rating_api(
    tiny_model: TinyModel, tiny_engine, tmp_path: Path
) -> None:
    state = ServerState(ServerConfig(model=str(tiny_model.path)), tiny_engine, Store(tmp_path / "db"))
    engine = load_engine(str(tiny_model.path))
    with serving(state) as server:
        run = ImproveRun.create(
            "rated", PROMPTS, HELD_OUT, base=str(tiny_model.path), config=FAST, train=TRAIN
        )
        user = SimulatedUser(VOWELS, server.url, "rated")
        calls: list[int] = []

        def rater(items: list[rating_queue.QueueItem]) -> int:
            calls.append(len(items))
            return user.rate(len(items))

        rows = run.execute(engine, state.store, rater=rater)
        user.close()
        assert calls == [4, 4]  # two batches of 4; the reward was refit between them
        prefs = state.store.list_preferences(source="simulated")
        skipped = sum(a["choice"] == "skip" for a in rating_queue.answers("rated").values())
        assert len(prefs) + skipped == 8 == rows[0].ratings
        for p in prefs:  # every stored choice is the taste's
            assert VOWELS.score(p.prompt, p.chosen) > VOWELS.score(p.prompt, p.rejected)
            assert p.meta and p.meta["run"] == "rated"
        assert rows[0].preferences == len(prefs) and rows[0].train_agreement is not None
        # what the loop saved, loaded by name as Weave loads it, reads each answer where the loop did
        from helixloom.training.reward_spec import load_reward

        saved = load_reward("improve:rated", engine=engine)
        fit = run.rated_pairs(state.store)  # what the loop fit on, in its order
        assert agreement(saved, fit) == pytest.approx(rows[0].train_agreement)
        ens = saved.ensemble  # the differences it was fit on, as the loop's embedder read them
        chosen = saved.embed([p.prompt for p in fit], [p.chosen for p in fit])
        rejected = saved.embed([p.prompt for p in fit], [p.rejected for p in fit])
        assert ens.rated is not None
        torch.testing.assert_close((chosen - rejected) / ens.std, ens.rated, rtol=1e-4, atol=1e-4)
        assert 0 < rows[0].pairs <= len(PROMPTS)  # the reward's best vs worst per prompt (the default)
        # Nothing left to rate; an answered item cannot be answered again; a bad run name is refused.
        with httpx.Client(base_url=server.url) as http:
            assert http.get("/api/rate/rated/queue").json()["data"] == []
            first = next(iter(rating_queue.answers("rated")))
            again = http.post("/api/rate/rated/answer", json={"item": first, "choice": "a"})
            assert again.status_code == 400 and "already answered" in again.json()["error"]["message"]
            assert http.get("/api/rate/nope/queue").status_code == 404
            assert http.get("/api/rate/..%2Fx/queue").status_code in (400, 404)
            assert http.get("/api/rate/.hidden/queue").status_code == 400
            odd = http.post("/api/rate/rated/answer", json={"item": first, "choice": "a", "source": "me"})
            assert odd.status_code == 400


def test_thumbs_beside_a_choice_teach_the_reward_that_liked_answers_beat_disliked_ones(
    tiny_model: TinyModel, tiny_engine, tmp_path: Path
) -> None:
    """The rating page's thumbs, given through the rating API: each prompt's thumbed-up answers beat
    its thumbed-down ones (thumbs beside a skip count too); with ``pairs+ties`` a choice between two
    thumbed-down answers is a tie; ``ignore`` is the choices alone."""
    from dataclasses import replace

    state = ServerState(ServerConfig(model=str(tiny_model.path)), tiny_engine, Store(tmp_path / "db"))
    words = Taste("long", "3 words or more", lambda p, a: len(a.split()) >= 3, lambda p, a: len(a.split()))
    with serving(state) as server:
        run = ImproveRun.create("thumbed", PROMPTS, HELD_OUT, base=str(tiny_model.path), config=FAST)
        asked = PROMPTS[0]
        rating_queue.enqueue(
            "thumbed",
            [
                rating_queue.QueueItem("i1", 1, asked, "one two three", "one"),  # liked beats disliked
                rating_queue.QueueItem("i2", 1, asked, "one two", "uno"),  # both disliked: a tie
                rating_queue.QueueItem("i3", 1, asked, "a b c d", "x y"),
                rating_queue.QueueItem("i4", 1, asked, "p q", "r s"),  # the taste cannot choose: a skip
            ],
        )
        user = SimulatedUser(words, server.url, "thumbed", thumbs=True)
        assert user.rate(10) == 4
        user.close()
        answered = rating_queue.answers("thumbed")
        assert answered["i1"]["thumbs"] == {"a": "up", "b": "down"} and answered["i4"]["choice"] == "skip"
        assert run.thumbs() == {
            asked: {"one two three": True, "a b c d": True}
            | dict.fromkeys(["one", "one two", "uno", "x y", "p q", "r s"], False)
        }
        choices = {(p.chosen, p.rejected) for p in run.rated_pairs(state.store)}
        assert choices == {("one two three", "one"), ("one two", "uno"), ("a b c d", "x y")}
        expected = {
            "ignore": (3, 0, 0),
            "pairs": (3 + 10, 10, 0),  # 2 liked x 6 disliked, less the 2 the choices already hold
            "pairs+ties": (2 + 10, 10, 1),
        }
        for mode, (total, from_thumbs, ties) in expected.items():
            run.config = replace(run.config, thumbs=mode)
            pairs, extra, dropped = run.learned_pairs(state.store)
            assert (len(pairs), extra, dropped) == (total, from_thumbs, ties), mode
            assert len(set(pairs)) == len(pairs)
            if mode != "ignore":
                assert all(words.likes(asked, p.chosen) for p in pairs[-extra:])
                assert not any(words.likes(asked, p.rejected) for p in pairs[-extra:])
            assert (("one two", "uno") in {(p.chosen, p.rejected) for p in pairs}) == (mode != "pairs+ties")
    with pytest.raises(HelixloomError, match="thumbs"):
        ImproveConfig(thumbs="all")
    # a run started before thumbs were learned from keeps learning from its choices alone
    meta = json.loads((run.root / "run.json").read_text())
    del meta["config"]["thumbs"]
    (run.root / "run.json").write_text(json.dumps(meta))
    assert ImproveRun.open("thumbed").config.thumbs == "ignore"


def test_the_defaults_are_the_measured_recipe_and_older_runs_resume_as_they_ran() -> None:
    """RAFT on the reward's picks, every answer after a form's examples (more of the forms it picks),
    asking about each prompt's favourite, thumbs learned from (README: 30 points on every taste).
    A run written before them resumes with the settings it started with."""
    made = ImproveConfig()
    assert (made.method, made.selection, made.explore_by, made.thumbs) == (
        "raft",
        "top",
        "reward",
        "pairs+ties",
    )
    assert (
        made.explore == made.k == 8
        and ImproveConfig(k=4).explore == 4
        and ImproveConfig(explore=0).explore == 0
    )
    run = ImproveRun.create("older", PROMPTS, HELD_OUT, base="default")
    meta = json.loads((run.root / "run.json").read_text())
    assert meta["config"]["explore"] == 8  # written resolved: the run keeps it whatever the default becomes
    for setting in ("explore", "thumbs", "method", "explore_by"):
        del meta["config"][setting]
    (run.root / "run.json").write_text(json.dumps(meta))
    resumed = ImproveRun.open("older").config
    assert (resumed.explore, resumed.thumbs, resumed.method, resumed.explore_by) == (
        0,
        "ignore",
        "dpo",
        "turn",
    )


@pytest.mark.parametrize("train_pairs", ["reward+rated", "reward"])
def test_the_policy_trains_on_rated_pairs_only_when_asked(
    tiny_model: TinyModel, tiny_engine, train_pairs: str
) -> None:
    config = ImproveConfig(rounds=1, k=3, train_pairs=train_pairs, method="dpo")
    run = ImproveRun.create(
        f"pairs-{train_pairs.replace('+', '-')}",
        PROMPTS[:2],
        HELD_OUT[:1],
        base=str(tiny_model.path),
        config=config,
    )
    candidates = [{"prompt": p, "answers": ["aaa", "bcd", "xyz"]} for p in PROMPTS[:2]]
    rated = [RatedPair(PROMPTS[0], "xyz", "bcd")]  # a near-tie for the reward (no vowels in either)
    rows = run._training_rows(1, tiny_engine, candidates, FunctionReward(vowel_share), rated)
    pairs = {(r["chosen"], r["rejected"]) for r in rows}
    assert {("aaa", "bcd"), ("aaa", "xyz")} & pairs  # the reward's best vs worst, for every prompt
    assert len([r for r in rows if r["chosen"] == "aaa"]) == 2
    assert (("xyz", "bcd") in pairs) == (train_pairs == "reward+rated")
    assert len(rows) == (3 if train_pairs == "reward+rated" else 2)
    with pytest.raises(HelixloomError, match="train_pairs"):
        ImproveConfig(train_pairs="rated")


def test_on_topic_asks_for_a_word_of_substance_from_the_prompt() -> None:
    from helixloom.evals.simulated_users import on_topic

    asked = "What is a volcano?"
    assert on_topic(asked, "Volcanoes erupt lava. Would you like to know more?")
    # what the loop learned to please the answer-then-ask taste with: liked, about nothing
    assert TASTES["short_question"].likes("What is gravity?", "We know what it is! Do you know how it feels?")
    assert not on_topic("What is gravity?", "We know what it is! Do you know how it feels?")
    assert not on_topic(asked, "Let us begin. Is a volcano hot?")  # the closing question does not count
    assert not on_topic("How do I make tea?", "1. Turn on the lights.\n2. Go to the bathroom.")
    assert on_topic("How do I make tea?", "- Boil water.\n- Pour it over the tea leaves.")


def test_simulated_tastes_choose_by_their_hidden_score() -> None:
    short = TASTES["short_question"]
    assert short.likes("q", "It is blue. Is that the one?") and not short.likes("q", "It is blue.")
    # a lone question is no answer, though it ends with one (the loop learned to ask one back)
    assert not short.likes("q", "Is it blue?") and not short.likes("q", "Is it? Is it blue?")
    # nor is a word before the question (a fine-tune on the reward's picks learned to write one)
    assert not short.likes("What is a volcano?", "Yes. Do you like volcanoes?")
    assert short.likes("What is a volcano?", "A mountain that erupts. Do you like volcanoes?")
    assert choose(short, "q", "It is blue.", "Is it blue?") == "b"
    assert choose(short, "q", "Is it blue?", "It is blue. Do you like blue?") == "b"
    bullets = TASTES["bullets"]
    assert bullets.likes("q", "- one fish\n- two fish") and not bullets.likes("q", "one fish, two fish")
    assert bullets.likes("q", "Steps:\n1. Boil water.\n2) Add the leaves.")
    # numbers or markers with nothing on their line are not a list (the loop learned to write them)
    for empty in ("1.\n2.\n3.", " 1.    \n \n1. \n2. \n", "-\n-\n-", "1. 30\n2. 40"):
        assert not bullets.likes("q", empty), empty
    assert (
        choose(TASTES["no_delve"], "q", "Let us delve into it now please", "Here is a plain answer for you")
        == "b"
    )
    assert choose(short, "q", "same", "same") == "skip"
    # an answer that only hands the question back says nothing: every taste dislikes it
    asked = "What is gravity?"
    for echo in ("What is gravity?", "Why is gravity?", "What is gravity, then?"):
        assert not short.likes(asked, echo)
    assert short.likes(asked, "A pull between masses. Shall I say more?")
    assert choose(short, asked, "What is gravity?", "Gravity pulls masses together.") == "b"
    assert not bullets.likes("How to bake?", "- How to bake?\n- How to bake?")


def test_improve_cli_resumes_and_the_job_policy_keeps_urls_out(
    tiny_model: TinyModel, tmp_path: Path, capsys
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS))
    held = tmp_path / "h.txt"
    held.write_text("\n".join(HELD_OUT))
    args = ["improve", "--name", "cli", "--prompts", str(prompts), "--eval-prompts", str(held)]
    args += ["--base", str(tiny_model.path), "--rounds", "1", "--ratings", "4", "--batch", "4", "--k", "2"]
    args += ["--max-tokens", "6", "--eval-samples", "1"]
    # Nobody has rated yet: the first batch waits in the queue and the command says where to rate it.
    assert main(args) == 2
    assert "/rate?run=cli" in capsys.readouterr().err
    # the CLI trains with the loop's measured DPO recipe, not `train dpo`'s general one
    from helixloom.training.configs import ImproveDPOConfig
    from helixloom.training.improve import ImproveRun

    assert ImproveRun.open("cli").train_config == ImproveDPOConfig()
    queued = rating_queue.pending("cli")
    assert len(queued) == 4
    with Store.open_default() as store:
        for item in queued:
            rating_queue.answer(
                store, "cli", item.id, "a" if len(item.a) >= len(item.b) else "b", "rating-page"
            )
    assert main(["improve", "--name", "cli", "--resume", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rounds"][0]["ratings"] == 4 and out["rounds"][0]["preferences"] >= 1

    from helixloom.cli import build_parser
    from helixloom.errors import HelixloomError
    from helixloom.server.job_policy import JobPolicy

    policy = JobPolicy(home=tmp_path, models=frozenset({"default"}))
    ok = policy.check(build_parser(), ["improve", "--name", "x", "--rounds", "2", "--selection", "random"])
    assert ok[:3] == ["improve", "--name", "x"]
    raft = ["improve", "--name", "x", "--method", "raft", "--explore", "8", "--explore-by", "reward"]
    assert policy.check(build_parser(), [*raft, "--raft-epochs", "2"])[3:5] == ["--method", "raft"]
    for bad in (["--server", "http://elsewhere"], ["--reward", "py:os:getcwd"], ["--base", "/etc"]):
        with pytest.raises(HelixloomError):
            policy.check(build_parser(), ["improve", "--name", "x", *bad])


def test_deploy_http_hot_loads_each_promotion_into_a_running_server(
    tiny_model: TinyModel, helixloom_home: Path, fresh_tiny_engine
) -> None:
    """Promotions reach a running helixloom server through vLLM's load endpoint: the first loads the
    name, the next replaces it in place, and the name answers with the promoted weights each time."""
    import shutil

    from helixloom.engine import GenerationRequest, sampling
    from helixloom.training.improve import deploy_http

    helixloom_home.mkdir(parents=True, exist_ok=True)
    params = sampling(temperature=0, max_tokens=6, ignore_eos=True)
    state = ServerState(
        ServerConfig(model=str(tiny_model.path), run_jobs=False), fresh_tiny_engine, Store.open_default()
    )
    reference = load_engine(str(tiny_model.path))
    with serving(state) as server:
        deploy = deploy_http(server.url)
        for i, source in enumerate(("alpha", "beta"), start=1):
            folder = helixloom_home / "runs" / "improve" / "x" / f"round-{i}" / "adapter"
            shutil.copytree(tiny_model.adapters[source], folder)
            assert deploy("x", folder)["status"] == 200
            reference.load_adapter(source, str(folder))
            expect = reference.generate([GenerationRequest("Tell me", params, source)])[0].text
            reply = httpx.post(
                server.url + "/v1/completions",
                json={
                    "model": "x",
                    "prompt": "Tell me",
                    "max_tokens": 6,
                    "temperature": 0,
                    "ignore_eos": True,
                },
            )
            assert reply.json()["choices"][0]["text"] == expect
    reference.close()


def test_a_run_started_before_the_nll_setting_resumes_without_it(tmp_path: Path) -> None:
    from helixloom.training.configs import ImproveDPOConfig
    from helixloom.training.improve import ImproveRun

    run = ImproveRun.create("old", PROMPTS, HELD_OUT, base="default", train=ImproveDPOConfig(sft_weight=1.0))
    meta = json.loads((run.root / "run.json").read_text())
    assert meta["train"]["sft_weight"] == 1.0
    del meta["train"]["sft_weight"]  # as written before the setting existed
    (run.root / "run.json").write_text(json.dumps(meta))
    assert ImproveRun.open("old").train_config.sft_weight == 0.0


def test_explore_shows_some_samples_a_form_and_trains_them_as_answers_to_the_prompt(tmp_path: Path) -> None:
    from helixloom.training.improve import _chosen_forms, explore_form, form_named, forms
    from tests.scripted import ScriptedEngine

    shown = forms()
    assert len({f.name for f in shown}) == len(shown) >= 8
    # two worked exchanges each, or (a form that ends the answer) openers to close it with (forms.yaml)
    assert all(len(f.examples) == 2 or (f.closings and not f.examples) for f in shown)
    assert not {q for f in shown for q, _ in f.examples} & {*PROMPTS, *HELD_OUT}
    listed = next(f for f in shown if f.name == "bulleted list")

    def reply(request) -> str:  # a model that writes a list only after examples of one
        return "- one item\n- another item" if listed.examples[1][1] in request.prompt else "just prose here"

    engine = ScriptedEngine(reply)
    config = ImproveConfig(rounds=1, k=4, explore=2)
    run = ImproveRun.create("explore", PROMPTS, HELD_OUT, base="default", config=config)
    candidates = run._sample(1, engine, None, None)
    asked = [r.prompt for r in engine.requests]
    shown_forms = [[explore_form(j, n, 4, 2, 1) for n in range(4)] for j in range(len(PROMPTS))]
    closing = sum(bool(n) and bool(form_named(n).closings) for row in shown_forms for n in row)
    assert len(asked) == len(PROMPTS) * 4 + closing  # a closing form's question is a second pass
    for j, c in enumerate(candidates):
        assert c["forms"][:2] == [None, None]  # the first k - explore answer the prompt alone
        for name, prompt in zip(shown_forms[j], asked[j * 4 : (j + 1) * 4], strict=True):
            assert c["prompt"] in prompt
            examples = [f for f in shown if f.examples and all(a in prompt for _, a in f.examples)]
            assert [f.name for f in examples] == ([name] if name and form_named(name).examples else [])
            assert not [f for f in shown if f not in examples and any(a in prompt for _, a in f.examples)]
    # every form is shown somewhere across the prompts (6 prompts x 2 cover all 8); a closing form
    # whose question did not come (this model writes none) is recorded as the prompt's alone
    assert {n for row in shown_forms for n in row if n} == {f.name for f in shown}
    assert {n for c in candidates for n in c["forms"] if n} == {f.name for f in shown if not f.closings}

    with_list = [c for c in candidates if any(a.startswith("- ") for a in c["answers"])]
    assert with_list  # the list was shown somewhere, and followed
    bullets = FunctionReward(lambda ps, rs: [float(r.count("- ")) for r in rs])
    rows = run._training_rows(1, engine, with_list, bullets, [])
    assert rows and all(r["chosen"].startswith("- ") for r in rows)
    for row in rows:  # the training prompt is the user's alone: no example exchange in it
        assert not any(q in row["prompt"] or a in row["prompt"] for f in shown for q, a in f.examples)
        assert any(p in row["prompt"] for p in PROMPTS)
    assert _chosen_forms(with_list, rows) == {"bulleted list": len(rows)}

    with pytest.raises(HelixloomError, match="explore"):
        ImproveConfig(k=4, explore=5)
    meta = json.loads((run.root / "run.json").read_text())
    del meta["config"]["explore"]  # a run started before the setting: resumed without exploring
    (run.root / "run.json").write_text(json.dumps(meta))
    assert ImproveRun.open("explore").config.explore == 0


def test_a_closing_form_ends_the_models_own_answer_with_the_question_it_writes() -> None:
    from helixloom.evals.simulated_users import answers_then_asks
    from helixloom.training.improve import (
        CLOSING_TOKENS,
        closing_question,
        explore_form,
        forms,
        whole_sentences,
    )
    from tests.scripted import ScriptedEngine

    asking = next(f for f in forms() if f.closings)

    def reply(request) -> str:
        if request.prompt.endswith(asking.closings):
            return " why it scatters? It does." if "sky" in request.prompt else " more\nabout it?"
        return "Air scatters blue light most."

    engine = ScriptedEngine(reply)
    config = ImproveConfig(rounds=1, k=8, explore=8)  # every prompt sees every form, this one too
    run = ImproveRun.create(
        "closing", ["Why is the sky blue?", "What is rain?"], HELD_OUT, base="default", config=config
    )
    candidates = run._sample(1, engine, None, None)
    for c in candidates:
        for answer, form in zip(c["answers"], c["forms"], strict=True):
            if form != asking.name:
                assert answer == "Air scatters blue light most."
            elif "sky" in c["prompt"]:  # the answer, an opener, and the continuation up to its "?"
                assert answer.startswith("Air scatters blue light most. ")
                assert answer.endswith(" why it scatters?")
                assert answer.removeprefix("Air scatters blue light most. ").startswith(asking.closings)
                assert answers_then_asks(answer)
            else:  # no one-line question came: the answer stays as it was
                assert answer == "Air scatters blue light most."
    rain = next(c for c in candidates if "rain" in c["prompt"])
    assert asking.name not in rain["forms"]  # no question came: that answer is the prompt's alone
    shown = [explore_form(j, n, 8, 8, 1) for j in range(2) for n in range(8)]
    first = engine.requests[: 2 * 8]
    for request, form in zip(first, shown, strict=True):
        assert asking.closings[0] not in request.prompt  # the prompt alone, no examples, before it
        want = config.max_tokens - CLOSING_TOKENS if form == asking.name else config.max_tokens
        assert request.sampling.max_tokens == want  # room left for the question
    assert [r.sampling.max_tokens for r in engine.requests[2 * 8 :]] == [CLOSING_TOKENS] * 2

    assert whole_sentences("One. Two thr", finished=False) == "One."
    assert whole_sentences("No end in sight", finished=False) == ""
    assert whole_sentences(" Ends on its own ", finished=True) == "Ends on its own"
    assert closing_question(" why? More") == " why?"
    assert closing_question(" why\nnot?") is None and closing_question(" no mark") is None
    assert closing_question("?") is None and closing_question(" more. What is it?") is None


def test_what_an_improve_run_learned_steers_weave_by_name_and_is_never_served_stale(
    tiny_model: TinyModel, tiny_engine, tmp_path: Path, helixloom_home: Path, capsys
) -> None:
    """``improve:NAME``: the reward a run learned from its users' ratings, in Weave the same day (seed
    004's AutoLoom), on the CLI's reward specs, the API's weave and the jobs, by run name only."""
    from helixloom.cli import build_parser
    from helixloom.server.job_policy import JobPolicy
    from helixloom.training.active import Embedder
    from helixloom.training.reward_spec import load_reward
    from helixloom.weave import RewardScorer
    from helixloom.weave.search import WeaveConfig, weave

    config = ImproveConfig(**{**FAST.__dict__, "system": "Be brief.", "rounds": 2, "explore": 2})
    run = ImproveRun.create("taught", PROMPTS, HELD_OUT, base=str(tiny_model.path), config=config)
    with pytest.raises(HelixloomError, match="learned no reward yet"):
        load_reward("improve:taught", engine=tiny_engine)
    # A round's reward, as the loop saves it: fit on ratings, each answer read after the run's system
    # prompt and the user's message.
    embed = Embedder(tiny_engine, context=lambda p: run.chat_context(tiny_engine, p))
    vowelly = [RatedPair("Q:", "apple idea audio", "crypt tryst rhythm"), RatedPair("Q:", "eerie", "brick")]
    taught = fit_reward(vowelly, embed, members=2)
    (run.root / "round-1").mkdir()
    taught.ensemble.save(run.root / "round-1" / "reward.safetensors")

    reward = load_reward("improve:taught", engine=tiny_engine)
    answers = ["audio idea", "crypt brick", "eerie apple"]
    assert reward.score(["Q:"] * 3, answers) == pytest.approx(taught.score(["Q:"] * 3, answers))
    assert load_reward("improve:taught@1", engine=tiny_engine).score(["Q:"], ["eerie"]) == pytest.approx(
        taught.score(["Q:"], ["eerie"])
    )
    for spec, message in (
        ("improve:taught@2", "round 2 of run taught has learned no reward"),
        ("improve:taught@x", "the round must be a number"),
        ("improve:nope", "no improve run named nope"),
        ("improve:../taught", "bad run name"),
        ("improve:", "name the improve run"),
        ("improve:taught@²", "the round must be a number"),  # a digit to isdigit(), not to int()
        ("improve:taught@" + "9" * 300, "the round must be a number"),
        ("improve:taught@9", "rounds 1 to 2, not 9"),
    ):
        with pytest.raises(HelixloomError, match=message):
            load_reward(spec, engine=tiny_engine)
    # On another base model its vectors mean nothing: refused, not scored
    other = ImproveRun.create("elsewhere", PROMPTS, HELD_OUT, base="default", config=config)
    (other.root / "round-1").mkdir()
    taught.ensemble.save(other.root / "round-1" / "reward.safetensors")
    with pytest.raises(HelixloomError, match="learned its reward on gemma-3-270m"):
        load_reward("improve:elsewhere", engine=tiny_engine)

    result = weave("Q:", tiny_engine, RewardScorer(reward), WeaveConfig(budget=4, round_budget=4, n_expand=4,
                   tokens_per_node=3, max_lookahead=1, seed=1))  # fmt: skip
    leaves = [n for n in result.root.nodes() if n.parent is not None]
    assert [n.score for n in leaves] == pytest.approx(
        reward.score(["Q:"] * len(leaves), [n.branch_text(include_root=False) for n in leaves]), abs=1e-4
    )

    state = ServerState(ServerConfig(model=str(tiny_model.path)), tiny_engine, Store(tmp_path / "db"))
    body = {"prompt": "Q:", "budget": 3, "round_budget": 3, "n_expand": 3, "tokens_per_node": 3}
    with serving(state) as server, httpx.Client(base_url=server.url, timeout=120) as http:
        first = http.post("/api/weave", json={**body, "reward": "improve:taught"})
        assert first.status_code == 200, first.text
        top = first.json()["best"][0]
        assert top["score"] == pytest.approx(reward.score(["Q:"], [top["text"]])[0], abs=1e-3)
        # The next round's reward replaces it: the server scores with the new one, not a cached copy;
        # and a round's reward written again (a resumed round) is read again too.
        flipped = fit_reward([RatedPair(p.prompt, p.rejected, p.chosen) for p in vowelly], embed, members=2)
        (run.root / "round-2").mkdir()
        flipped.ensemble.save(run.root / "round-2" / "reward.safetensors")
        for now in (flipped, taught):
            served = http.post("/api/weave", json={**body, "reward": "improve:taught"})
            top = served.json()["best"][0]
            assert top["score"] == pytest.approx(now.score(["Q:"], [top["text"]])[0], abs=1e-3)
            taught.ensemble.save(run.root / "round-2" / "reward.safetensors")  # round 2 again
        flipped.ensemble.save(run.root / "round-2" / "reward.safetensors")
        by_round = http.post("/api/weave", json={**body, "reward": "improve:taught@1"}).json()["best"][0]
        assert by_round["score"] == pytest.approx(taught.score(["Q:"], [by_round["text"]])[0], abs=1e-3)
        bads = ("improve:../taught", "improve:nope", "improve:taught@7", "improve:/etc", "improve:taught@²")
        for bad in (*bads, "improve:taught@" + "9" * 300, "improve:elsewhere"):
            refused = http.post("/api/weave", json={**body, "reward": bad})
            assert refused.status_code == 400, bad
            assert str(tmp_path) not in refused.text
        # What a client may steer by is listed (the loom's picker reads it), and the loom's weave
        # from a node takes a reward too, its nodes scored by it.
        listing = http.get("/api/rewards")
        assert str(tmp_path) not in listing.text  # names, never folders
        listed = listing.json()["data"]
        assert {"spec": "improve:taught", "kind": "improve", "name": "taught", "round": 2} in listed
        assert "improve:elsewhere" not in {r["spec"] for r in listed}  # another model's: of no use here
        assert listed[-1]["spec"] == "constitution"
        root = http.post("/api/trees", json={"prompt": "Q:"}).json()["nodes"][0]["id"]
        options = {k: v for k, v in body.items() if k != "prompt"}
        grown = http.post(f"/api/nodes/{root}/weave", json={**options, "reward": "improve:taught"})
        assert grown.status_code == 200, grown.text
        made = [n for n in grown.json()["nodes"] if n["id"] != root]
        assert len(made) == 3
        for n in made:  # round 2's reward, the latest
            assert n["score"] == pytest.approx(flipped.score(["Q:"], [n["text"]])[0], abs=1e-3)
        refused = http.post(f"/api/nodes/{root}/weave", json={**options, "reward": "py:os:getcwd"})
        assert refused.status_code == 400

    # Answering with it: answers drawn as the run draws its own (half of them after an answer form's
    # examples, as its --explore says), the reward's pick of them; from the API and the CLI.
    latest = load_reward("improve:taught", engine=tiny_engine)
    picks = run.best_answers(tiny_engine, ["Q:", "Tell me a story"], n=4)
    for pick in picks:
        assert len(pick.candidates) == 4
        assert pick.score == max(d["score"] for d in pick.candidates)
        assert pick.score == pytest.approx(latest.score([pick.prompt], [pick.answer])[0], abs=1e-4)
    assert any(d["form"] for p in picks for d in p.candidates)  # some written after a form
    assert [d["answer"] for d in run.best_answers(tiny_engine, ["Q:"], n=4)[0].candidates] == [
        d["answer"] for d in picks[0].candidates
    ]  # seeded: the same draws again
    with pytest.raises(HelixloomError, match="source must be"):
        run.best_answers(tiny_engine, ["Q:"], source="elsewhere")
    assert main(["improve", "--name", "taught", "--answer", "Q:", "--best-of", "3", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert len(shown["picks"]) == 1 and len(shown["picks"][0]["candidates"]) == 3
    assert main(["improve", "--name", "taught", "--answer", "Q:", "--resume"]) == 2
    assert main(["improve", "--name", "taught", "--best-of", "3", "--resume"]) == 2
    assert main(["improve", "--name", "taught", "--answer", "Q:", "--k", "2"]) == 2  # the run's own k
    assert "--k" in capsys.readouterr().err

    policy = JobPolicy(home=helixloom_home, models=frozenset({"default"}))
    assert policy.check(build_parser(), ["improve", "--name", "taught", "--answer", "Q:"])[-1] == "Q:"
    job = ["iterate", "--name", "x", "--reward", "improve:taught"]
    assert policy.check(build_parser(), job)[-1] == "improve:taught"
    for bad in ("improve:nope", "improve:../taught", "improve:/etc/passwd"):
        with pytest.raises(HelixloomError):
            policy.check(build_parser(), [*job[:-1], bad])


def test_explore_by_reward_gives_the_forms_the_reward_picked_more_of_the_next_rounds_samples(
    tmp_path: Path,
) -> None:
    from helixloom.training.improve import explore_form, explore_plan, forms
    from tests.scripted import ScriptedEngine

    names = [f.name for f in forms()]
    # in turn (no weights): explore_form's plan, unchanged
    assert explore_plan(6, 4, 2, 3) == [explore_form(j, s, 4, 2, 3) for j in range(6) for s in range(4)]
    weights = {n: 1.0 for n in names} | {"bulleted list": 9.0}  # picked for 8 prompts, plus one
    plan = explore_plan(6, 4, 2, 2, weights)
    explored = [plan[j * 4 + 2 : j * 4 + 4] for j in range(6)]
    assert all(plan[j * 4 : j * 4 + 2] == [None, None] for j in range(6))  # k - explore: the prompt alone
    assert len(names) == 8  # 12 explored samples: 12 * 9 / 16 = 6.75 for the list, 0.75 for each other
    assert sum(row.count("bulleted list") for row in explored) == 7  # largest remainders, ties in order
    assert all(row[0] == "bulleted list" for row in explored)  # the most picked form reaches every prompt
    assert len({n for row in explored for n in row}) > 2  # and the rest still get some samples

    listed = next(f for f in forms() if f.name == "bulleted list")
    engine = ScriptedEngine(
        lambda request: "- one\n- two" if listed.examples[1][1] in request.prompt else "prose"
    )
    for by in ("reward", "turn"):
        run = ImproveRun.create(
            f"by-{by}", PROMPTS, HELD_OUT, base="default", config=ImproveConfig(k=4, explore=2, explore_by=by)
        )
        assert run.form_weights(1) is None  # round 1: nothing picked yet, every form in turn
        (run.root / "round-1").mkdir()
        (run.root / "round-1" / "result.json").write_text(
            json.dumps({"chosen_forms": {"bulleted list": 5, "(the prompt alone)": 1}})
        )
        lists = sum(f == "bulleted list" for c in run._sample(2, engine, None, None) for f in c["forms"])
        if by == "reward":
            assert run.form_weights(2) == {n: 1.0 for n in names} | {"bulleted list": 6.0}
            assert lists == 5  # 12 * 6 / 13 = 5.5 of the 12 (the other seven forms' 0.92 round up first)
        else:
            assert run.form_weights(2) is None and lists < 6
    with pytest.raises(HelixloomError, match="explore_by"):
        ImproveConfig(explore_by="chance")


def test_raft_fine_tunes_on_the_rewards_best_answer_and_is_promoted_when_it_wins(
    tiny_model: TinyModel, tiny_engine, tmp_path: Path
) -> None:
    config = ImproveConfig(**{**FAST.__dict__, "method": "raft", "raft_epochs": 3})  # DPO: TRAIN.epochs (4)
    run = ImproveRun.create("raft", PROMPTS, HELD_OUT, base=str(tiny_model.path), config=config, train=TRAIN)
    candidates = [{"prompt": p, "answers": ["aaa", "bcd", "xyz"]} for p in PROMPTS[:2]]
    tied = [{"prompt": PROMPTS[2], "answers": ["bcd", "xyz"]}]  # no vowels: the reward cannot choose
    rated = [RatedPair(PROMPTS[0], "xyz", "bcd")]
    rows = run._training_rows(9, tiny_engine, candidates + tied, FunctionReward(vowel_share), rated)
    assert [r["chosen"] for r in rows] == ["aaa", "aaa"] and all("rejected" not in r for r in rows)
    with pytest.raises(HelixloomError, match="method"):
        ImproveConfig(method="ppo")
    with pytest.raises(HelixloomError, match="the rated pairs train DPO"):
        ImproveConfig(method="raft", train_pairs="reward+rated")

    engine = load_engine(str(tiny_model.path))
    with Store(tmp_path / "db") as store:
        result = run.execute(engine, store, reward=FunctionReward(vowel_share))
    assert result[0].promoted, result[0].reason
    trained = json.loads((run.root / "round-1" / "train.json").read_text())
    picks = json.loads((run.root / "round-1" / "train_rows.json").read_text())
    assert trained["steps"] == 3 * -(-len(picks) // TRAIN.batch_size)  # raft_epochs passes over the picks
    before = vowel_share([], [a["answer"] for a in run.eval_answers(None)])
    after = vowel_share([], [a["answer"] for a in run.eval_answers(run.current())])
    assert sum(after) > sum(before)


def test_an_improve_run_answers_in_chat_as_a_model_any_openai_client_can_pick(
    tiny_model: TinyModel, tiny_engine, tmp_path: Path
) -> None:
    """``model: "improve:NAME"``: ``best_answers`` over the OpenAI API (what ``improve --answer``
    prints), listed in ``/v1/models``, named by run only, one user message, one choice."""
    import openai

    from helixloom.training.active import Embedder

    config = ImproveConfig(**{**FAST.__dict__, "system": "Be brief.", "explore": 2})
    run = ImproveRun.create("chatty", PROMPTS, HELD_OUT, base=str(tiny_model.path), config=config)
    embed = Embedder(tiny_engine, context=lambda p: run.chat_context(tiny_engine, p))
    taught = fit_reward([RatedPair("Q:", "apple idea audio", "crypt tryst rhythm")], embed, members=2)
    (run.root / "round-1").mkdir()
    taught.ensemble.save(run.root / "round-1" / "reward.safetensors")
    other = ImproveRun.create("elsewhere", PROMPTS, HELD_OUT, base="default", config=config)
    (other.root / "round-1").mkdir()
    taught.ensemble.save(other.root / "round-1" / "reward.safetensors")
    ImproveRun.create("untaught", PROMPTS, HELD_OUT, base=str(tiny_model.path), config=config)

    want = run.best_answers(tiny_engine, ["Tell me a story"], n=3)[0]
    # an engine of its own: the server loads the run's adapter into it (the shared one stays bare)
    engine = load_engine(str(tiny_model.path))
    state = ServerState(ServerConfig(model=str(tiny_model.path)), engine, Store(tmp_path / "db"))
    with serving(state) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        models = {m.id: m for m in client.models.list().data}
        assert "improve:chatty" in models and models["improve:chatty"].model_extra["metadata"] == {"round": 1}
        assert "improve:elsewhere" not in models and "improve:untaught" not in models
        got = client.chat.completions.create(
            model="improve:chatty",
            messages=[{"role": "user", "content": "Tell me a story"}],
            extra_body={"improve": {"best_of": 3}},
        )
        assert got.choices[0].message.content == want.answer  # the run's draws, its reward's pick
        info = got.model_extra["improve"]
        assert info["drawn"] == 3 and info["round"] == 1 and info["run"] == "chatty"
        assert info["score"] == pytest.approx(want.score, abs=1e-4) and info["form"] == want.form
        assert got.usage.prompt_tokens > 0 and got.usage.completion_tokens > 0
        at_round = client.chat.completions.create(
            model="improve:chatty@1", messages=[{"role": "user", "content": "Tell me a story"}]
        )
        assert at_round.model_extra["improve"]["drawn"] == config.k  # the run's k by default
        # the request's own sampling: temperature, max_tokens and seed, where it gives them
        short = run.best_answers(tiny_engine, ["Tell me a story"], n=3, temperature=0.0, max_tokens=2, seed=5)
        assert short[0].answer != want.answer
        got = client.chat.completions.create(
            model="improve:chatty",
            messages=[{"role": "user", "content": "Tell me a story"}],
            temperature=0.0,
            max_tokens=2,
            seed=5,
            extra_body={"improve": {"best_of": 3}},
        )
        assert got.choices[0].message.content == short[0].answer
        assert got.choices[0].finish_reason == ("length" if short[0].cut else "stop")
        neutral = client.chat.completions.create(  # what some clients always send: the run's own
            model="improve:chatty",
            messages=[{"role": "user", "content": "Tell me a story"}],
            top_p=1.0,
            extra_body={"improve": {"best_of": 3}},
        )
        assert neutral.choices[0].message.content == want.answer
        assert all(
            len(tiny_engine.tokenize(c["answer"], add_special_tokens=False)) <= 2
            for c in short[0].candidates
            if not c["form"]
        )

        user = [{"role": "user", "content": "Q:"}]
        for model, extra, messages, why in (
            ("improve:chatty", {"stream": True}, user, "does not stream"),
            ("improve:chatty", {"n": 2}, user, "one choice"),
            ("improve:chatty", {}, [{"role": "system", "content": "x"}, *user], "one user message"),
            ("improve:chatty", {"improve": {"best_of": 99}}, user, "invalid improve options"),
            ("improve:chatty", {"improve": {"python": "x"}}, user, "invalid improve options"),
            ("improve:chatty", {"improve": {"answer_from": "/etc"}}, user, "invalid improve options"),
            ("improve:untaught", {}, user, "learned no reward yet"),
            ("improve:elsewhere", {}, user, "learned its reward on"),
            ("improve:nope", {}, user, "no improve run named nope"),
            ("improve:../chatty", {}, user, "bad run name"),
            ("improve:chatty@9", {}, user, "rounds 1 to"),
            ("improve:chatty", {"stop": ["."]}, user, "takes no stop"),
            ("improve:chatty", {"top_p": 0.5}, user, "takes no top_p"),
            ("improve:chatty", {"ignore_eos": True}, user, "takes no ignore_eos"),
            ("improve:chatty", {"temperature": 2.5}, user, "temperature"),
        ):
            r = httpx.post(
                server.url + "/v1/chat/completions", json={"model": model, "messages": messages, **extra}
            )
            assert r.status_code == 400, (model, extra, r.text)
            assert why in r.json()["error"]["message"] and str(tmp_path) not in r.text
        r = httpx.post(server.url + "/v1/completions", json={"model": "improve:chatty", "prompt": "Q:"})
        assert r.status_code == 400 and "chat pipeline" in r.text
        loaded = httpx.post(
            server.url + "/v1/load_lora_adapter", json={"lora_name": "improve:x", "lora_path": "x"}
        )
        assert loaded.status_code == 400  # the name is the pipeline's

        # From the run's current adapter; a run started again (--overwrite) writes new weights to
        # the same folder, and the server answers with them, not with the ones it loaded before.
        from tests import tiny

        folder = run.root / "round-1" / "adapter"
        (run.root / "state.json").write_text(json.dumps({"current": str(folder), "round": 1}))
        asked = {"model": "improve:chatty", "messages": [{"role": "user", "content": "Tell me a story"}]}
        current = {**asked, "improve": {"best_of": 3, "answer_from": "current"}}
        for seed in (1, 2):
            tiny.build_adapter(tiny_model.path, folder, seed=seed, targets=("q_proj", "v_proj"))
            fresh = load_engine(str(tiny_model.path))  # has never seen an earlier version
            want = run.best_answers(fresh, ["Tell me a story"], n=3, source="current")[0]
            served = httpx.post(server.url + "/v1/chat/completions", json=current, timeout=120).json()
            assert served["choices"][0]["message"]["content"] == want.answer, seed
            assert served["improve"]["answer_from"] == "current"
        assert want.answer != run.best_answers(fresh, ["Tell me a story"], n=3)[0].answer  # not the base's
        # one version of the run's adapter stays loaded, not one per version served (the pins are
        # let go on the adapters' own thread)
        for _ in range(100):
            held = [a.name for a in engine.adapters() if "chatty" in a.name]
            if len(held) <= 1:
                break
            time.sleep(0.05)
        assert len(held) == 1, held
        # the version pinned for the pipeline is no model a client can name
        private = httpx.post(server.url + "/v1/chat/completions", json={**asked, "model": "\0improve:chatty"})
        assert private.status_code == 404
        # a run whose name PEFT would refuse as an adapter's ("."), and a current adapter that is gone:
        # answered, and refused without a folder in the message
        dotted = ImproveRun.create("taste.v2", PROMPTS, HELD_OUT, base=str(tiny_model.path), config=config)
        shutil.copytree(run.root / "round-1", dotted.root / "round-1")
        (dotted.root / "state.json").write_text(
            json.dumps({"current": str(dotted.root / "round-1" / "adapter")})
        )
        dotted_ask = {**current, "model": "improve:taste.v2"}
        ok = httpx.post(server.url + "/v1/chat/completions", json=dotted_ask, timeout=120)
        assert ok.status_code == 200, ok.text
        shutil.rmtree(dotted.root / "round-1" / "adapter")
        gone = httpx.post(server.url + "/v1/chat/completions", json=dotted_ask, timeout=120)
        assert gone.status_code == 400 and "cannot be loaded now" in gone.text
        assert str(tmp_path) not in gone.text


def test_a_shared_embedders_eviction_never_takes_vectors_another_call_is_reading() -> None:
    """A served reward's ``Embedder`` is shared by concurrent requests; here the second call runs
    inside the first's ``engine.embed`` (where the first holds no lock) and evicts the vector the
    first had found cached. The first still returns it (it was a KeyError, a 500)."""
    from helixloom.training.active import Embedder

    class Engine:
        supports_embeddings = True
        nested = True

        def embed(self, texts, depth=None, prefixes=None, pooling=None):  # type: ignore[no-untyped-def]
            if Engine.nested:  # another request, at this moment, with answers of its own
                Engine.nested = False
                embedder(["q", "q"], ["x", "y"])
            return [[float(len(t)), 1.0] for t in texts]

    embedder = Embedder(Engine(), context=lambda p: p, max_cached=2)  # type: ignore[arg-type]
    Engine.nested = False
    first = embedder(["q"], ["cached"]).tolist()
    Engine.nested = True
    both = embedder(["q", "q"], ["cached", "new one"])  # "cached" is evicted during the embed
    assert both.tolist()[0] == first[0] and len(embedder.cache) <= 2
