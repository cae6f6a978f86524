"""Trained rewards on the tiny model: engine embeddings, the TRL reward model, MiniHF's reward head, CLI.

The preference is synthetic but has to be learned: chosen responses are sentences, rejected ones are
strings of digits and brackets. Each learner must rank held-out pairs right, and the same learner
trained on the flipped labels must rank them wrong, so a reward that ignores its labels (an untrained
head that happens to prefer one kind) fails the test.
"""

from __future__ import annotations

import functools
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from helixloom.cli import main
from helixloom.engine.batching import BatchingEngine
from helixloom.engine.hf import HFEngine
from helixloom.errors import AdapterError, HelixloomError
from helixloom.store import NewMessage, Store
from helixloom.training import reward_model
from helixloom.training.feedback import LabelledExample, labelled_examples, store_examples
from helixloom.training.preferences import pair_accuracy, preference_pairs
from helixloom.training.reward_head import RewardHeadConfig, RewardHeadReward, train_reward_head
from helixloom.training.reward_model import (
    RewardModelConfig,
    encode,
    reward_dir,
    train_reward_model,
)
from helixloom.training.reward_spec import load_reward
from tests import tiny
from tests.conftest import TinyModel
from tests.scripted import ScriptedEngine

SUBJECTS = ["Paris", "Berlin", "The capital", "Helix", "The critic", "Weave", "The fox", "A regenerator"]
VERBS = ["answers", "cites", "reads", "searches", "rewrites", "jumps over"]
OBJECTS = ["the documents", "the question", "a tree of completions", "France", "Germany", "the lazy dog"]
NOISE = list("0123456789;:()[]{}")


def good(rng: random.Random) -> str:
    return f" {rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."


def bad(rng: random.Random) -> str:
    return " " + " ".join(rng.choice(NOISE) for _ in range(rng.randint(5, 9)))


def pairs(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        {"prompt": f"Question {rng.randint(0, 99)}:", "chosen": good(rng), "rejected": bad(rng)}
        for _ in range(n)
    ]


def flipped(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]


def labelled(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in rows:
        out += [
            {"prompt": r["prompt"], "response": r["chosen"], "label": 1},
            {"prompt": r["prompt"], "response": r["rejected"], "label": 0},
        ]
    return out


HELD_OUT = pairs(24, seed=99)


def ranked_right(reward: Any, rows: list[dict[str, str]] = HELD_OUT) -> float:
    prompts = [r["prompt"] for r in rows]
    return pair_accuracy(
        reward.score(prompts, [r["chosen"] for r in rows]),
        reward.score(prompts, [r["rejected"] for r in rows]),
    )


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def engine(tiny_adapted_engine: HFEngine) -> HFEngine:
    """The session's shared engine, with alpha loaded."""
    return tiny_adapted_engine


# ---------------------------------------------------------------------------------------------- embed


def test_embed_shape_padding_and_adapter(engine: HFEngine) -> None:
    short, long = "Paris is", "The quick brown fox jumps over the lazy dog. A critic reads the answer."
    alone = engine.embed([short])
    assert len(alone) == 1 and len(alone[0]) == engine.model.config.hidden_size
    batch = engine.embed([long, short, long[:20]])
    assert len(batch) == 3
    assert max(abs(a - b) for a, b in zip(alone[0], batch[1], strict=True)) < 1e-4
    assert max(abs(a - b) for a, b in zip(batch[0], batch[1], strict=True)) > 1e-3  # texts differ

    adapted = engine.embed([short, long], adapter="alpha")
    assert max(abs(a - b) for a, b in zip(alone[0], adapted[0], strict=True)) > 1e-3
    # the adapter is per call: the base model's embedding is unchanged afterwards
    assert engine.embed([short]) == alone
    # and per row in a mixed batch it matches the single-adapter result
    assert (
        max(abs(a - b) for a, b in zip(adapted[1], engine.embed([long], adapter="alpha")[0], strict=True))
        < 1e-4
    )

    assert engine.embed([]) == []
    with pytest.raises(AdapterError, match="not loaded"):
        engine.embed([short], adapter="nope")
    with pytest.raises(HelixloomError, match="empty"):
        engine.embed([""])

    wrapped = BatchingEngine(engine)
    try:
        assert wrapped.supports_embeddings
        assert wrapped.embed([short]) == alone
    finally:
        wrapped.close()  # the hf engine holds nothing to close: the shared fixture stays usable
    scripted = ScriptedEngine(["x"])
    assert not scripted.supports_embeddings
    with pytest.raises(HelixloomError, match="cannot give embeddings"):
        scripted.embed(["x"])


def test_embed_pools_a_chosen_layer_over_the_text_after_its_prefix(engine: HFEngine) -> None:
    import torch

    prompt, answer = "USER: Why is the sky blue? \nASSISTANT:", " Light scatters off the air."
    text = prompt + answer
    ids = engine.encode(text)
    skip = len(engine.encode(prompt))
    with torch.inference_mode(), engine.model.disable_adapter():  # the fixture has alpha loaded
        states = engine.model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    layers = engine.model.config.num_hidden_layers
    middle = states[round(0.5 * layers)][0]
    want = torch.cat([middle[skip:].mean(0), middle[-1]])

    (got,) = engine.embed([text], depth=0.5, prefixes=[prompt], pooling="mean+last")
    assert len(got) == 2 * engine.model.config.hidden_size
    assert torch.allclose(torch.tensor(got), want, atol=1e-4)
    # batched with a longer text (left padding) it is the same vector
    other = "USER: Name a colour. \nASSISTANT: Red, the colour of a fire engine and of ripe tomatoes."
    batch = engine.embed(
        [other, text], depth=0.5, prefixes=["USER: Name a colour. \nASSISTANT:", prompt], pooling="mean+last"
    )
    assert torch.allclose(torch.tensor(batch[1]), want, atol=1e-4)
    # the defaults are the last layer's mean over every token, as before
    (whole,) = engine.embed([text])
    assert torch.allclose(torch.tensor(whole), states[-1][0].mean(0), atol=1e-4)
    # a text that is all prefix gives its last token's state
    (edge,) = engine.embed([prompt], depth=0.5, prefixes=[prompt])
    assert torch.allclose(torch.tensor(edge), middle[skip - 1], atol=1e-4)

    with pytest.raises(HelixloomError, match="start of its text"):
        engine.embed([text], prefixes=["Why"])
    with pytest.raises(HelixloomError, match="depth"):
        engine.embed([text], depth=0.0)
    with pytest.raises(HelixloomError, match="pooling"):
        engine.embed([text], pooling="max")


# ---------------------------------------------------------------------------------------------- reward model

RM_CONFIG = RewardModelConfig(
    rank=8, learning_rate=1e-3, epochs=2, batch_size=8, max_length=64, save_steps=1000, eval_split=0.25
)


def test_reward_model_learns_the_preference(tiny_model: TinyModel, tmp_path: Path) -> None:
    result = train_reward_model(
        str(tiny_model.path), pairs(48, seed=1), reward_dir("pref"), tmp_path / "run", RM_CONFIG
    )
    assert result.train_pairs == 36 and result.eval_pairs == 12 and result.steps == 10
    assert result.eval_accuracy is not None and result.eval_accuracy >= 0.8
    meta = json.loads((reward_dir("pref") / "helixloom_reward.json").read_text())
    assert meta["kind"] == "reward_model" and meta["render"] == "text"
    assert meta["base_model"] == str(tiny_model.path.resolve())
    assert (reward_dir("pref") / "adapter_model.safetensors").is_file()

    reward = load_reward("rm:pref", engine=None)  # type: ignore[arg-type]  # a reward model needs no engine
    assert reward.name == "rm:pref"
    assert ranked_right(reward) >= 0.8
    scores = reward.score(["Q:", "Q:"], [" Paris cites France.", " 3 ; ( 7 ]"])
    assert scores[0] > scores[1] and all(math.isfinite(s) for s in scores)
    assert reward.score([], []) == []

    # Trained on the flipped labels, the same recipe ranks the held-out pairs the other way round.
    flip = train_reward_model(
        str(tiny_model.path), flipped(pairs(48, seed=1)), tmp_path / "flip", tmp_path / "run-flip", RM_CONFIG
    )
    assert flip.eval_accuracy is not None and flip.eval_accuracy >= 0.8
    assert ranked_right(load_reward(f"rm:{tmp_path / 'flip'}", engine=None)) <= 0.2  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- reward head

HEAD_CONFIG = RewardHeadConfig(seed=0)


def head_examples(rows: list[dict[str, str]]) -> list[LabelledExample]:
    return labelled_examples(labelled(rows))


def test_reward_head_learns_the_preference(engine: HFEngine, tmp_path: Path) -> None:
    result = train_reward_head(engine, head_examples(pairs(32, seed=1)), reward_dir("thumbs"), HEAD_CONFIG)
    assert result.train_examples + result.val_examples == 64 and result.val_examples == 12
    assert result.val_accuracy is not None and result.val_accuracy >= 0.8
    reward = load_reward("head:thumbs", engine=engine)
    assert isinstance(reward, RewardHeadReward) and reward.name == "head:thumbs"
    assert ranked_right(reward) >= 0.8

    flip = train_reward_head(
        engine, head_examples(flipped(pairs(32, seed=1))), tmp_path / "flip", HEAD_CONFIG
    )
    assert flip.val_accuracy is not None and flip.val_accuracy >= 0.8
    assert ranked_right(RewardHeadReward.load(tmp_path / "flip", engine)) <= 0.2

    # Labels that say nothing about the kind (half of each kind up, half down) teach no ranking.
    rng = random.Random(5)
    noise = labelled(pairs(32, seed=1))
    for kind in (0, 1):
        rows = noise[1 - kind :: 2]  # labelled() alternates chosen (1), rejected (0)
        labels = [1] * (len(rows) // 2) + [0] * (len(rows) - len(rows) // 2)
        rng.shuffle(labels)
        for row, label in zip(rows, labels, strict=True):
            row["label"] = label
    train_reward_head(engine, labelled_examples(noise), tmp_path / "noise", HEAD_CONFIG)
    assert 0.2 < ranked_right(RewardHeadReward.load(tmp_path / "noise", engine)) < 0.8


def test_reward_head_embeddings_are_cached_and_adapters_kept(engine: HFEngine, tmp_path: Path) -> None:
    examples = head_examples(pairs(8, seed=3))
    run = tmp_path / "run"
    first = train_reward_head(engine, examples, tmp_path / "a", HEAD_CONFIG, run_dir=run)
    again = train_reward_head(engine, examples, tmp_path / "a", HEAD_CONFIG, run_dir=run)
    assert first.cached_embeddings == 0 and again.cached_embeddings == len(examples)
    # The cache belongs to the model and adapter that made it: under an adapter it is not reused.
    adapted = train_reward_head(engine, examples, tmp_path / "b", HEAD_CONFIG, run_dir=run, adapter="alpha")
    assert adapted.cached_embeddings == 0
    meta = json.loads((tmp_path / "b" / "helixloom_reward.json").read_text())
    assert meta["adapter"]["name"] == "alpha"
    reward = RewardHeadReward.load(tmp_path / "b", engine)
    assert reward.adapter == "alpha"
    assert reward.score(["Q:"], [" Paris cites France."]) != RewardHeadReward.load(
        tmp_path / "a", engine
    ).score(["Q:"], [" Paris cites France."])


def test_interrupted_embedding_keeps_what_it_embedded(
    engine: HFEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = head_examples(pairs(40, seed=5))  # 80 texts: two batches of embeddings
    calls = {"n": 0}
    embed = engine.embed

    def dies_on_the_second_batch(texts: list[str], adapter: str | None = None) -> list[list[float]]:
        calls["n"] += 1
        if calls["n"] == 3:  # the probe, the first batch, then ^C
            raise KeyboardInterrupt
        return embed(texts, adapter=adapter)

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(engine, "embed", dies_on_the_second_batch)
        train_reward_head(engine, examples, tmp_path / "a", HEAD_CONFIG, run_dir=tmp_path / "run")
    again = train_reward_head(engine, examples, tmp_path / "a", HEAD_CONFIG, run_dir=tmp_path / "run")
    assert again.cached_embeddings == 64


def test_reward_head_refuses_another_model(engine: HFEngine, tiny_model: TinyModel, tmp_path: Path) -> None:
    train_reward_head(engine, head_examples(pairs(4, seed=4)), reward_dir("small"), HEAD_CONFIG)
    wide = HFEngine.load(str(tiny_model.foreign_adapter.parent / "wide-model"))
    with pytest.raises(HelixloomError, match=r"hidden size 64.*hidden size 96"):
        load_reward("head:small", engine=wide)
    tiny.build_model(tmp_path / "twin", seed=7)  # same shapes, other weights
    with pytest.raises(HelixloomError, match="other hidden states"):
        load_reward("head:small", engine=HFEngine.load(str(tmp_path / "twin")))
    with pytest.raises(HelixloomError, match="cannot give"):
        load_reward("head:small", engine=ScriptedEngine(["x"]))
    with pytest.raises(HelixloomError, match="not a reward_model"):
        load_reward("rm:small", engine=engine)
    with pytest.raises(HelixloomError, match="no reward head 'missing'"):
        load_reward("head:missing", engine=engine)


# ---------------------------------------------------------------------------------------------- data


def test_bad_rows_are_clear_errors() -> None:
    with pytest.raises(HelixloomError, match="row 2 has no 'rejected'"):
        preference_pairs([{"chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"}])
    with pytest.raises(HelixloomError, match="mixes text rows and chat"):
        preference_pairs(
            [
                {"prompt": "p", "chosen": "a", "rejected": "b"},
                {"prompt": [{"role": "user", "content": "p"}], "chosen": "a", "rejected": "b"},
            ]
        )
    with pytest.raises(HelixloomError, match="must be strings"):
        preference_pairs([{"prompt": "p", "chosen": 3, "rejected": "b"}])
    chat, render = preference_pairs(
        [{"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}]
    )
    assert render == "chat" and chat[0].chosen == [{"role": "assistant", "content": "a"}]
    for label in (2, -1, "1", 1.0, None):
        with pytest.raises(HelixloomError, match="not 0 or 1"):
            labelled_examples([{"prompt": "p", "response": "r", "label": label}])
    with pytest.raises(HelixloomError, match="no 'label'"):
        labelled_examples([{"prompt": "p", "response": "r"}])
    with pytest.raises(HelixloomError, match="no 'response'"):
        labelled_examples([{"prompt": "p", "label": 1}])
    assert labelled_examples([{"prompt": "p", "completion": "r", "label": True}])[0].label == 1


def test_text_and_chat_rows_render_as_trained(tiny_model: TinyModel) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model.path))
    text = encode(tok, "Q:", " Paris.", "text", 64)
    assert text[0] == tok.bos_token_id and text[-1] == tok.eos_token_id
    assert tok.decode(text, skip_special_tokens=True) == "Q: Paris."
    chat = encode(tok, "Q?", "Paris.", "chat", 64)
    assert tok.decode(chat) == "<s><|user|>\nQ?</s>\n<|assistant|>\nParis.</s>\n"
    messages = [{"role": "user", "content": "Q?"}]
    assert encode(tok, messages, [{"role": "assistant", "content": "Paris."}], "chat", 64) == chat
    long = encode(tok, "Q:", " Paris." * 50, "text", 16)  # too long: BOS and the end are kept
    assert len(long) == 16 and long[0] == tok.bos_token_id and long[-1] == tok.eos_token_id


def test_examples_from_the_store(helixloom_home: Path) -> None:
    with Store(helixloom_home / "helixloom.db") as store:
        root = store.add_node("t1", None, "Once upon a time")
        fox = store.add_node("t1", root.id, " there was a fox")
        slept = store.add_node("t1", fox.id, " who slept.")
        tie = store.add_node("t1", root.id, " the end")
        store.add_rating("node", fox.id, 1)
        store.add_rating("node", slept.id, -1)
        store.add_rating("node", tie.id, 1)
        store.add_rating("node", tie.id, -1)
        store.add_rating("node", root.id, 1)  # a prompt alone is no response: skipped
        gen = store.record_session(
            "generate",
            [
                NewMessage("user", "Capital of France?"),
                NewMessage("assistant", "Paris"),
                NewMessage("assistant", "Rome"),
            ],
        )
        messages = store.get_messages(gen.id)
        store.add_rating("message", messages[1].id, 1)
        store.add_rating("message", messages[2].id, -1)
        helix = store.record_session(
            "helixnet",
            [
                NewMessage("user", "Say hi"),
                NewMessage("assistant", "hi", stage="actor"),
                NewMessage("assistant", "too short", stage="critic"),
                NewMessage("assistant", "Hello there!", stage="regenerator"),
            ],
        )
        store.add_rating("session", helix.id, -1)
        store.add_rating("message", store.get_messages(helix.id)[2].id, 1)  # a critique: skipped
        found = {(e.prompt, e.response, e.label) for e in store_examples(store)}
    assert found == {
        ("Once upon a time", " there was a fox", 1),
        ("Once upon a time", " there was a fox who slept.", 0),
        ("Capital of France?", "Paris", 1),
        ("Capital of France?", "Rome", 0),
        ("Say hi", "Hello there!", 0),
    }


# ---------------------------------------------------------------------------------------------- CLI


class _Interrupt(TrainerCallback):  # type: ignore[misc]
    """^C during step 3, before its checkpoint is written."""

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == 3:
            raise KeyboardInterrupt


def test_cli_train_reward_and_resume(
    capsys: pytest.CaptureFixture[str],
    tiny_model: TinyModel,
    tmp_path: Path,
    helixloom_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(24, seed=1))
    common = ["train", "reward", "--data", str(data), "--name", "cli-rm", "--base", str(tiny_model.path)]
    small = ["--rank", "4", "--lr", "1e-3", "--batch-size", "4", "--max-length", "64", "--eval-split", "0.25"]
    interrupted = functools.partial(train_reward_model, callbacks=[_Interrupt()])
    with monkeypatch.context() as m:  # only this patch: HELIXLOOM_HOME stays set
        m.setattr(reward_model, "train_reward_model", interrupted)
        assert main([*common, *small, "--save-steps", "1"]) == 130  # 18 pairs: 5 steps, killed in step 3
    run = helixloom_home / "runs" / "reward-cli-rm"
    assert (run / "checkpoint-2").is_dir() and not (run / "checkpoint-3").exists()
    assert not reward_dir("cli-rm").exists()
    capsys.readouterr()

    # The run saved its settings: --name and --resume are enough, and go on from the checkpoint.
    assert main(["train", "reward", "--name", "cli-rm", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "trained reward model cli-rm: 18 pairs, 5 steps, resumed at step 2" in out
    assert "held-out accuracy:" in out and "rm:cli-rm" in out
    meta = json.loads((reward_dir("cli-rm") / "helixloom_reward.json").read_text())
    assert (meta["config"]["rank"], meta["config"]["save_steps"], meta["train_pairs"]) == (4, 1, 18)
    assert load_reward("rm:cli-rm", engine=None).score(["Q:"], [" Paris."])  # type: ignore[arg-type]

    # A flag given again must agree with the saved settings; one that disagrees is refused by name.
    assert main(["train", "reward", "--name", "cli-rm", "--resume", "--max-steps", "9", "--lr", "1e-3"]) == 2
    err = capsys.readouterr().err
    assert "--max-steps 9 disagrees with the settings run reward-cli-rm started with (--max-steps -1)" in err
    other = write_jsonl(tmp_path / "other.jsonl", pairs(8, seed=2))
    assert main(["train", "reward", "--name", "cli-rm", "--resume", "--data", str(other)]) == 2
    assert f"--data {other} disagrees" in capsys.readouterr().err
    assert main([*common, *small]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["train", "reward", "--name", "never-ran", "--resume"]) == 2
    assert "run reward-never-ran saved no settings to resume from" in capsys.readouterr().err
    assert main(["train", "reward", "--name", "x", "--base", str(tiny_model.path)]) == 2
    assert "--data is required" in capsys.readouterr().err


def test_cli_train_reward_head(
    capsys: pytest.CaptureFixture[str], tiny_model: TinyModel, tmp_path: Path, helixloom_home: Path
) -> None:
    data = write_jsonl(tmp_path / "thumbs.jsonl", labelled(pairs(16, seed=1)))
    base = ["--base", str(tiny_model.path)]
    assert main(["train", "reward-head", "--data", str(data), "--name", "cli-head", *base]) == 0
    out = capsys.readouterr().out
    assert "trained reward head cli-head: 32 examples (16 up, 16 down)" in out
    assert "validation accuracy:" in out
    assert (helixloom_home / "rewards" / "cli-head" / "head.safetensors").is_file()
    # --resume with only --name trains again with the saved settings and reuses the embeddings.
    assert main(["train", "reward-head", "--name", "cli-head", "--resume", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "trained reward head cli-head: 32 examples (16 up, 16 down)" in out and "32 cached" in out
    assert main(["train", "reward-head", "--name", "cli-head", "--resume", "--from-store"]) == 2
    assert (
        "--from-store disagrees with the settings run reward-head-cli-head started with (no --from-store)"
        in (capsys.readouterr().err)
    )
    assert main(["train", "reward-head", "--name", "cli-head", *base]) == 2
    assert "exists" in capsys.readouterr().err

    with Store(helixloom_home / "helixloom.db") as store:
        for i, (answer, score) in enumerate([(" Paris cites France.", 1), (" 3 ; ( 7", -1)] * 2):
            s = store.record_session(
                "generate", [NewMessage("user", f"Q{i}"), NewMessage("assistant", answer)]
            )
            store.add_rating("session", s.id, score)
    assert (
        main(
            [
                "train",
                "reward-head",
                "--from-store",
                "--name",
                "st",
                *base,
                "--adapter",
                str(tiny_model.adapters["alpha"]),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "4 examples (2 up, 2 down)" in out and "no validation examples" in out
    meta = json.loads((helixloom_home / "rewards" / "st" / "helixloom_reward.json").read_text())
    assert meta["adapter"]["name"] == "alpha"


def test_cli_bad_input(capsys: pytest.CaptureFixture[str], tiny_model: TinyModel, tmp_path: Path) -> None:
    base = ["--base", str(tiny_model.path)]

    def fails(args: list[str], message: str) -> None:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "helixloom: error:" in err and message in err, err

    rm = ["train", "reward", "--name", "x", *base, "--data"]
    fails([*rm, str(tmp_path / "none.jsonl")], "does not exist")
    fails(
        [*rm, str(write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "chosen": "a"}]))],
        "row 1 has no 'rejected'",
    )
    fails([*rm, str(write_jsonl(tmp_path / "b.jsonl", pairs(1, seed=0)))], "too few preference pairs")
    fails(
        [*rm, str(write_jsonl(tmp_path / "c.jsonl", pairs(4, seed=0))), "--eval-split", "1.5"], "eval_split"
    )
    (tmp_path / "d.jsonl").write_text("{not json\n")
    fails([*rm, str(tmp_path / "d.jsonl")], "line 1 is not JSON")
    fails(
        ["train", "reward", "--name", "../up", *base, "--data", str(tmp_path / "c.jsonl")],
        "bad reward name",
    )

    head = ["train", "reward-head", "--name", "x", *base, "--data"]
    rows = labelled(pairs(4, seed=0))
    fails([*head, str(write_jsonl(tmp_path / "e.jsonl", [{**rows[0], "label": -1}]))], "not 0 or 1")
    fails([*head, str(write_jsonl(tmp_path / "f.jsonl", rows[:3]))], "too few labelled examples")
    ups = [r for r in rows if r["label"] == 1]
    fails([*head, str(write_jsonl(tmp_path / "g.jsonl", ups * 2))], "no thumbs down")
    fails(
        ["train", "reward-head", "--from-store", "--name", "x", *base],
        "too few labelled examples in the store",
    )
    fails(["train", "reward-head", "--name", "x"], "--data FILE.jsonl or --from-store is required")


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command, words in (
        ("reward", ["RewardTrainer", "--eval-split", "--lr", "rm:NAME"]),
        ("reward-head", ["MLP", "--from-store", "head:NAME", "--val-split"]),
    ):
        with pytest.raises(SystemExit):
            main(["train", command, "--help"])
        out = capsys.readouterr().out
        for word in words:
            assert word in out, (command, word)
