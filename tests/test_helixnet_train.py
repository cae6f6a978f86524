"""Training HelixNet's critic and regenerator: verifiable instructions, the verifier and LLM teachers,
role data in the seed's exact formats, LoRA training of both roles, the registered set, resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helixloom import adapters, paths
from helixloom.errors import HelixloomError
from helixloom.evals import instructions as ins
from helixloom.evals.instructions import Check, InstructionPrompt
from helixloom.prompting import PromptFormat
from helixloom.store import Store
from helixloom.training.configs import HelixTrainConfig, LoraSFTConfig
from helixloom.training.helixnet_teachers import Attempt, EngineTeacher, VerifierTeacher
from helixloom.training.helixnet_train import Actor, role_rows, run_dir, train_helixnet
from tests.conftest import TinyModel, serving
from tests.scripted import ScriptedEngine

SYSTEM = PromptFormat.load("helixnet").system
FAST = LoraSFTConfig(rank=4, alpha=8, learning_rate=1e-2, max_steps=2, batch_size=2, save_steps=1)

# ------------------------------------------------------------------------------------------ checks


@pytest.mark.parametrize(
    ("check", "good", "bad"),
    [
        (Check("max_words", 3), "one two three", "one two three four"),
        (Check("min_words", 3), "one two three", "one two"),
        (Check("max_sentences", 1), "One sentence here.", "One. Two."),
        (Check("include_word", "blue"), "The sky is Blue.", "The sky is bluer."),
        (Check("exclude_word", "blue"), "The sky is bluer.", "It is blue."),
        (Check("bullets", 2), "- a\n- b", "- a\n- b\n- c"),
        (Check("lowercase"), "all lower, 3 words", "Not lower"),
        (Check("uppercase"), "ALL UPPER", "Not upper"),
        (Check("json_keys", ["name", "size"]), '```json\n{"name": 1, "size": 2}\n```', '{"name": 1}'),
        (Check("ends_with", "That is all."), "Cats purr. That is all.", "That is all. Cats purr."),
        (Check("starts_with", "Yes"), "Yes, cats purr.", "Cats purr, yes."),
        (Check("no_commas"), "No commas here.", "One, two."),
    ],
)
def test_each_check_passes_good_and_names_what_bad_got_wrong(check: Check, good: str, bad: str) -> None:
    assert check.passes(good), check.failure(good)
    failure = check.failure(bad)
    assert failure and failure.endswith("."), failure
    assert check.instruction  # every check states itself as an instruction


@settings(max_examples=200, deadline=None)
@given(st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), max_size=30), st.integers(1, 30))
def test_word_limits_agree_with_counting(ws: list[str], n: int) -> None:
    text = " ".join(ws)
    assert Check("max_words", n).passes(text) == (len(ws) <= n)
    assert Check("min_words", n).passes(text) == (len(ws) >= n)
    if ws:
        assert Check("lowercase").passes(text) and not Check("uppercase").passes(text)
        assert Check("uppercase").passes(text.upper())
        assert Check("include_word", ws[0]).passes(text) and not Check("exclude_word", ws[0]).passes(text)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), st.integers(), min_size=1))
def test_json_keys_pass_exactly_when_present(value: dict[str, int]) -> None:
    keys = sorted(value)
    assert Check("json_keys", keys).passes(json.dumps(value))
    assert not Check("json_keys", [*keys, "zzzzzzz"]).passes(json.dumps(value))
    assert not Check("json_keys", keys).passes(json.dumps(list(value)))


def test_builtin_prompts_are_the_seeded_generation_split_in_two() -> None:
    loaded = ins.load()
    assert [p.as_dict() for p in loaded] == [p.as_dict() for p in ins.generate(400)]
    train, heldout = ins.load(split="train"), ins.load(split="heldout")
    assert len(train) + len(heldout) == 400 and len(heldout) >= 80
    assert not {p.id for p in train} & {p.id for p in heldout}
    assert all(c.instruction in p.prompt for p in loaded for c in p.checks)
    acc = ins.strict_accuracy(heldout[:4], ["x"] * 4)
    assert 0 <= acc.value <= 1 and acc.total == 4


# ------------------------------------------------------------------------------------------ teachers

PROMPT = InstructionPrompt(
    "if-0001", 'Describe the sea. Answer in at most 5 words. Use the word "blue" in your answer.',
    (Check("max_words", 5), Check("include_word", "blue")),
)  # fmt: skip


def test_verifier_critique_names_the_failed_checks_and_regenerates_by_rejection() -> None:
    bad = "The sea is very large and deep and green."
    lesson = VerifierTeacher().teach(
        [Attempt(PROMPT, SYSTEM, (bad, "still wrong here", "The sea is blue."))]
    )[0]
    assert "9 words" in lesson.critique and "at most 5" in lesson.critique
    assert 'the word "blue"' in lesson.critique
    assert lesson.regeneration == "The sea is blue."  # the first sample that passes every check
    kept = VerifierTeacher().teach([Attempt(PROMPT, SYSTEM, ("Blue sea.", "The sea is blue."))])[0]
    assert "follows every instruction" in kept.critique and kept.regeneration == "Blue sea."
    none = VerifierTeacher(repair=False).teach([Attempt(PROMPT, SYSTEM, (bad, bad))])[0]
    assert none.regeneration is None  # no sample passes and no repair: no regenerator example
    repaired = VerifierTeacher().teach([Attempt(PROMPT, SYSTEM, (bad, bad))])[0]
    assert repaired.outcome == "repaired" and PROMPT.passes(repaired.regeneration or "")


def test_llm_teacher_critiques_then_regenerates_from_its_critique() -> None:
    teacher_engine = ScriptedEngine(["Too long; say blue.", "Blue sea."])
    teacher = EngineTeacher(teacher_engine, name="big")
    lesson = teacher.teach([Attempt(PROMPT, SYSTEM, ("The sea is large.",))])[0]
    assert (lesson.critique, lesson.regeneration) == ("Too long; say blue.", "Blue sea.")
    critic_prompt, regen_prompt = (r.prompt for r in teacher_engine.requests)
    assert PROMPT.prompt in critic_prompt and "The sea is large." in critic_prompt
    assert "Too long; say blue." in regen_prompt


def test_role_rows_are_the_seeds_exact_formats() -> None:
    fmt = PromptFormat.load("helixnet")
    rows = role_rows(fmt, ScriptedEngine([]), SYSTEM, "Q?", "an answer", "too vague", "a better answer")
    assert rows["critic"] == {
        "prompt": f"SYSTEM: {SYSTEM} \nUSER: Q? \nRESPONSE: an answer \nCRITIQUE:",
        "completion": " too vague",
    }
    assert rows["regenerator"] == {
        "prompt": f"SYSTEM: {SYSTEM} \nUSER: Q? \nRESPONSE: an answer \nCRITIQUE: too vague \n"
        "REGENERATOR: REGENERATED ANSWER:",
        "completion": " a better answer",
    }
    assert set(role_rows(fmt, ScriptedEngine([]), SYSTEM, "Q?", "a", "c", None)) == {"critic"}


# ------------------------------------------------------------------------------------------ training


def _prompts(n: int) -> list[InstructionPrompt]:
    return [
        InstructionPrompt(f"if-{i:04d}", f"Say something about topic {i}. Answer in at most 4 words.",
                          (Check("max_words", 4),))
        for i in range(n)
    ]  # fmt: skip


def _actor() -> Actor:
    # Every other answer passes "at most 4 words": the verifier finds a passing sample for each prompt.
    return Actor(ScriptedEngine(lambda r: "short answer" if (r.sampling.seed or 0) % 2 else "a b c d e f g"))


def test_train_helixnet_trains_both_roles_registers_the_set_and_resumes(
    tiny_model: TinyModel, fresh_tiny_engine, helixloom_home: Path
) -> None:
    store = Store(helixloom_home / "helixloom.db")
    config = HelixTrainConfig(samples=4, max_tokens=8, gen_batch=3)
    result = train_helixnet(
        "hx",
        _prompts(6),
        _actor(),
        VerifierTeacher(),
        store,
        base=str(tiny_model.path),
        config=config,
        sft=FAST,
    )
    critic = result.critic_mix  # every response, plus passing targets up to 30% of the critic's rows
    assert critic["response_failed"] + critic["response_passed"] == 6
    assert result.examples["critic"] == 6 + critic["target_passed"]
    assert (critic["response_passed"] + critic["target_passed"]) / result.examples["critic"] >= 0.3
    assert 0 < result.examples["regenerator"] <= 6
    assert sum(result.targets.values()) == 6 and set(result.targets) <= {"kept", "sample", "repaired"}
    mix = result.regenerator_mix
    made = mix["keep"] + mix.get("fix_sample", 0) + mix.get("fix_repaired", 0)
    assert made == result.examples["regenerator"]
    for role in ("critic", "regenerator"):
        assert result.train[role].changed_fraction == 1.0  # every trainable parameter of both adapters moved
    assert adapters.helixnet_set(store, "hx") == {"critic": "hx-critic", "regenerator": "hx-regenerator"}
    assert store.adapter_meta("hx-critic")["role"] == "critic"
    rows = [json.loads(line) for line in (run_dir("hx") / "critic.jsonl").read_text().splitlines()]
    assert all(r["prompt"].endswith(" \nCRITIQUE:") for r in rows)

    with pytest.raises(HelixloomError, match="--resume"):
        train_helixnet("hx", _prompts(6), _actor(), VerifierTeacher(), store, base=str(tiny_model.path))
    again = train_helixnet(
        "hx", _prompts(6), _actor(), VerifierTeacher(), store, base=str(tiny_model.path), config=config,
        sft=FAST, resume=True,
    )  # fmt: skip
    assert again.train == {} and again.examples == result.examples  # nothing is made twice

    # A resumed run with other regenerator settings trains the regenerator afresh, and only it...
    weights = paths.adapters_dir() / "hx-regenerator" / "adapter_model.safetensors"
    before = weights.read_bytes()
    regen = {"regenerator": dataclasses.replace(FAST, learning_rate=3e-2)}
    changed = train_helixnet(
        "hx", _prompts(6), _actor(), VerifierTeacher(), store, base=str(tiny_model.path), config=config,
        sft=FAST, role_sft=regen, resume=True,
    )  # fmt: skip
    assert set(changed.train) == {"regenerator"} and weights.read_bytes() != before
    # ...one with more passing critic rows trains the critic only, and an unchanged one trains nothing.
    more = dataclasses.replace(config, critic_pass_share=0.9)
    for trains in ({"critic"}, set()):
        rerun = train_helixnet(
            "hx", _prompts(6), _actor(), VerifierTeacher(), store, base=str(tiny_model.path), config=more,
            sft=FAST, role_sft=regen, resume=True,
        )  # fmt: skip
        assert set(rerun.train) == trains and rerun.examples["critic"] > result.examples["critic"]

    # The registered set runs through the server's helixnet model.
    from helixloom.server import ServerConfig, ServerState

    roles = adapters.helixnet_set(store, "hx")
    state = ServerState(
        ServerConfig(model=str(tiny_model.path), helixnet_adapters=roles, default_max_tokens=6),  # type: ignore[arg-type]
        fresh_tiny_engine,
        store,
    )
    with serving(state) as server:
        import httpx

        reply = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": "helixnet", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0},
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        session = reply.headers["x-helixloom-session"]
    with Store(helixloom_home / "helixloom.db") as check:
        stages = [(m.stage, m.adapter) for m in check.get_messages(session) if m.stage]
    assert stages == [("actor", None), ("critic", "hx-critic"), ("regenerator", "hx-regenerator")]


def test_interrupted_teaching_resumes_without_asking_again(
    tiny_model: TinyModel, helixloom_home: Path
) -> None:
    store = Store(helixloom_home / "helixloom.db")

    class Stop(Exception):
        pass

    calls = {"n": 0}

    class Flaky(VerifierTeacher):
        def teach(self, attempts):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 2:
                raise Stop
            return super().teach(attempts)

    config = HelixTrainConfig(samples=2, gen_batch=2)
    actor = _actor()
    with pytest.raises(Stop):
        train_helixnet(
            "hy", _prompts(4), actor, Flaky(), store, base=str(tiny_model.path), config=config, sft=FAST
        )
    asked = len(actor.engine.requests)  # type: ignore[attr-defined]
    assert asked == 8  # both batches answered (two prompts, two samples each); the second never taught
    result = train_helixnet(
        "hy", _prompts(4), actor, VerifierTeacher(), store, base=str(tiny_model.path), config=config,
        sft=FAST, resume=True,
    )  # fmt: skip
    # only the unfinished batch is asked again
    assert len(actor.engine.requests) == asked + 4  # type: ignore[attr-defined]
    assert result.examples["critic"] == 4


def test_train_helixnet_command_then_chat_and_serve_use_the_set(
    tiny_model: TinyModel, tmp_path: Path, capsys
) -> None:
    from helixloom.cli import build_parser, main
    from helixloom.cli.common import helixnet_roles
    from helixloom.store import Store

    prompts = tmp_path / "p.jsonl"
    rows = [p.as_dict() for p in _prompts(4)]
    for r in rows:  # checks any random text passes, so the tiny model's answers give regenerations
        r["checks"] = [{"kind": "exclude_word", "arg": "zebra"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["train", "helixnet", "--prompts", str(prompts), "--name", "cli", "--base", str(tiny_model.path)]
    fast = ["--samples", "2", "--max-tokens", "6", "--max-steps", "1", "--batch-size", "2", "--rank", "4"]
    assert main([*argv, *fast, "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["adapters"] == {"critic": "cli-critic", "regenerator": "cli-regenerator"}
    # the regenerator's own epochs: resuming with them retrains the regenerator only
    assert main([*argv, *fast, "--regenerator-epochs", "2", "--resume", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["train"]) == {"regenerator"}
    parsed = build_parser().parse_args(["serve", "--helixnet", "cli"])
    assert helixnet_roles(parsed) == {"critic": "cli-critic", "regenerator": "cli-regenerator"}
    with pytest.raises(HelixloomError, match="does not mix"):
        helixnet_roles(build_parser().parse_args(["serve", "--helixnet", "cli", "--critic-adapter", "x"]))
    with pytest.raises(HelixloomError, match="no HelixNet set"):
        helixnet_roles(build_parser().parse_args(["serve", "--helixnet", "nope"]))
    # chat runs the set: the critic and regenerator stages are answered by the set's adapters.
    chat = ["chat", "--base", str(tiny_model.path), "--helixnet", "cli", "--once", "Say hi", "--json"]
    assert main([*chat, "--max-tokens", "3", "--seed", "0"]) == 0
    session = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["session_id"]
    with Store.open_default() as store:
        used = {m.stage: m.adapter for m in store.get_messages(session) if m.role == "assistant"}
    assert used == {"actor": None, "critic": "cli-critic", "regenerator": "cli-regenerator"}
