"""HelixNet: exact prompts, the multi-turn rule, rounds, recording, LMoE and three-model modes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helixloom import helixnet
from helixloom.cli import main
from helixloom.engine import Engine, GenerationRequest, sampling
from helixloom.engine.hf import HFEngine
from helixloom.engine.pool import EnginePool
from helixloom.errors import HelixloomError
from helixloom.helixnet import HelixChat, HelixNet, PromptFormat, Role, RoleSpec, StageEvent
from helixloom.store import Store
from tests.conftest import TinyModel
from tests.scripted import ScriptedEngine

SEED_SYSTEM = (
    "You are HelixNet. Elaborate on the topic using a Tree of Thoughts and backtrack when necessary to "
    "construct a clear, cohesive Chain of Thought reasoning. Always answer without hesitation."
)


def scripted_net(outputs: list[str], **kwargs: object) -> tuple[HelixNet, ScriptedEngine]:
    engine = ScriptedEngine(outputs)
    role = Role(engine)
    return HelixNet(role, role, role, **kwargs), engine  # type: ignore[arg-type]


def test_prompts_are_the_seeds_fstrings_byte_for_byte() -> None:
    net, engine = scripted_net(["The answer.", "Too short.", "REGENERATED ANSWER: A longer answer."])
    turn = net.answer("What is the relationship between gravity and orbits?")
    system_prompt, user_input = SEED_SYSTEM, "What is the relationship between gravity and orbits?"
    actor_response, critic_response = "The answer.", "Too short."
    # The three f-strings below are copied from the seed's code.
    prompt_actor = f"SYSTEM: {system_prompt} \nUSER: {user_input} \nASSISTANT: "
    prompt_critic = f"SYSTEM: {system_prompt} \nUSER: {user_input} \nRESPONSE: {actor_response} \nCRITIQUE:"
    prompt_regenerator = (
        f"SYSTEM: {system_prompt} \nUSER: {user_input} \nRESPONSE: {actor_response} \nCRITIQUE: "
        f"{critic_response} \nREGENERATOR: REGENERATED ANSWER:"
    )
    assert engine.prompts == [prompt_actor, prompt_critic, prompt_regenerator]
    assert net.system == SEED_SYSTEM
    assert (turn.actor.text, turn.critique, turn.regeneration) == (
        "The answer.",
        "Too short.",
        "A longer answer.",  # the seed's fix: the stray label is removed
    )
    params = engine.requests[0].sampling
    assert (params.temperature, params.top_p, params.top_k, params.max_tokens) == (0.75, 1.0, 50, 1024)


def test_multi_turn_actor_carries_regenerations_only() -> None:
    outputs = ["a1", "c1", "r1", "a2", "c2", "r2", "a3", "c3", "r3"]
    net, engine = scripted_net(outputs, system="SYS")
    chat = HelixChat(net)
    chat.ask("q1")
    chat.ask("q2")
    chat.ask("q3")
    # Seed: conversation = f"{conversation} \nUSER: {user_input} \nASSISTANT: {regenerator_response}"
    assert (
        engine.prompts[6]
        == "SYSTEM: SYS \nUSER: q1 \nASSISTANT: r1 \nUSER: q2 \nASSISTANT: r2 \nUSER: q3 \nASSISTANT: "
    )
    # The critic and regenerator see only the current turn.
    assert engine.prompts[7] == "SYSTEM: SYS \nUSER: q3 \nRESPONSE: a3 \nCRITIQUE:"
    assert (
        engine.prompts[8]
        == "SYSTEM: SYS \nUSER: q3 \nRESPONSE: a3 \nCRITIQUE: c3 \nREGENERATOR: REGENERATED ANSWER:"
    )
    chat.reset()
    assert chat.history == []


def test_rounds_critique_the_latest_answer() -> None:
    net, engine = scripted_net(["a", "c1", "r1", "c2", "r2"], system="S", rounds=2)
    events: list[StageEvent] = []
    turn = net.answer("q", on_event=events.append)
    assert engine.prompts[3] == "SYSTEM: S \nUSER: q \nRESPONSE: r1 \nCRITIQUE:"
    assert (
        engine.prompts[4]
        == "SYSTEM: S \nUSER: q \nRESPONSE: r1 \nCRITIQUE: c2 \nREGENERATOR: REGENERATED ANSWER:"
    )
    assert turn.regeneration == "r2" and turn.critique == "c2"
    assert [(s.stage, s.round) for s in turn.stages] == [
        ("actor", 0), ("critic", 1), ("regenerator", 1), ("critic", 2), ("regenerator", 2)
    ]  # fmt: skip
    assert [(e.kind, e.stage) for e in events if e.kind != "delta"][:2] == [
        ("start", "actor"),
        ("end", "actor"),
    ]


def test_streamed_regeneration_hides_the_stray_label() -> None:
    net, _ = scripted_net(["a", "c", " REGENERATED ANSWER: the better answer"])
    deltas: list[str] = []
    turn = net.answer(
        "q",
        on_event=lambda e: deltas.append(e.text) if e.stage == "regenerator" and e.kind == "delta" else None,
    )
    assert "".join(deltas).strip() == turn.regeneration == "the better answer"


def test_format_stops_cut_invented_turns() -> None:
    net, _ = scripted_net(["an answer \nUSER: and another question", "c", "r"])
    assert net.answer("q").actor.text == "an answer"


def test_turns_are_recorded_with_stage_metadata(tmp_path: Path) -> None:
    engine = ScriptedEngine(["a1", "c1", "r1", "a2", "c2", "r2", "a3", "c3", "r3"])
    net = HelixNet(Role(engine, "act"), Role(engine, "crit"), Role(engine, "regen"), system="S")
    with Store(tmp_path / "db.sqlite") as store:
        chat = HelixChat(net, store)
        first = chat.ask("q1")
        second = chat.ask("q2")
        assert first.session_id == second.session_id is not None
        messages = store.get_messages(first.session_id)
        assert [(m.role, m.stage, m.adapter) for m in messages] == [
            ("user", None, None), ("assistant", "actor", "act"), ("assistant", "critic", "crit"),
            ("assistant", "regenerator", "regen"),
        ] * 2  # fmt: skip
        assert messages[1].meta["prompt"] == "SYSTEM: S \nUSER: q1 \nASSISTANT: "
        assert messages[3].content == "r1" and messages[3].completion_tokens == 1
        assert messages[2].sampling["temperature"] == 0.75
        session = store.get_session(first.session_id)
        assert session is not None and session.kind == "helixnet"
        assert session.meta["roles"]["critic"]["adapter"] == "crit"
        chat.reset()
        third = chat.ask("q3")
        assert third.session_id != first.session_id


def test_prompt_format_files(tmp_path: Path) -> None:
    custom = tmp_path / "mine.yaml"
    custom.write_text(
        'system: "Be brief."\ncritic: "Q={question} R={response} C:"\n'
        'regenerator: "fix {response} per {critique}:"\n'
    )
    fmt = PromptFormat.load(str(custom))
    net, engine = scripted_net(["a", "c", "r"], prompt_format=fmt)
    net.answer("q")
    assert engine.prompts == ["SYSTEM: Be brief. \nUSER: q \nASSISTANT: ", "Q=q R=a C:", "fix a per c:"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("system: x\ncritic: y\nregenerator: z\ncritc_typo: 1\n")
    with pytest.raises(HelixloomError, match="unknown keys"):
        PromptFormat.load(str(bad))
    with pytest.raises(HelixloomError, match="unknown prompt format"):
        PromptFormat.load("nonesuch")
    with pytest.raises(HelixloomError, match="cannot fill"):
        scripted_net(["a"], prompt_format=PromptFormat("x", "s", "{nope}", "r"))[0].answer("q")


def test_instruct_format_uses_the_chat_template(tiny_engine: HFEngine) -> None:
    engine = tiny_engine
    fmt = PromptFormat.load("instruct")
    prompt = fmt.critic_prompt(engine, "S", "q", "resp")
    assert prompt.startswith("<|system|>\nS</s>\n<|user|>\nHere is a question") and prompt.endswith(
        "<|assistant|>\n"
    )


class CountingPool(EnginePool):
    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []

    def get(self, spec: str) -> Engine:
        if spec not in self.loaded:
            self.loads.append(spec)
        return super().get(spec)


GREEDY = sampling(temperature=0, max_tokens=8, token_healing=True)


def test_lmoe_one_base_three_adapters(tiny_model: TinyModel, tmp_path: Path) -> None:
    base = str(tiny_model.path)
    specs = {
        stage: RoleSpec(base, str(tiny_model.adapters[name]), GREEDY)
        for stage, name in zip(helixnet.STAGES, ("alpha", "beta", "gamma"), strict=True)
    }
    pool = CountingPool()
    with Store(tmp_path / "db.sqlite") as store:
        net = helixnet.build(specs, pool=pool, store=store, system="S")
        assert pool.loads == [base]  # one base model, loaded once
        engine = net.roles["actor"].engine
        assert {a.name for a in engine.adapters()} == {"alpha", "beta", "gamma"}
        turn = HelixChat(net, store).ask("Paris is the capital of")
        assert [s.adapter for s in turn.stages] == ["alpha", "beta", "gamma"]
        stored = store.get_messages(turn.session_id or "")
        assert [m.adapter for m in stored[1:]] == ["alpha", "beta", "gamma"]
    # Each stage really ran with its adapter: the base model gives other text for the same prompts.
    for stage in turn.stages:
        with_adapter = engine.generate([GenerationRequest(stage.prompt, GREEDY, stage.adapter)])[0]
        without = engine.generate([GenerationRequest(stage.prompt, GREEDY, None)])[0]
        assert with_adapter.text == stage.raw_text
        assert with_adapter.token_ids != without.token_ids


def test_three_models_and_shared_specs_load_once(tiny_model: TinyModel, tmp_path: Path) -> None:
    copies = []
    for name in ("critic-model", "regen-model"):
        shutil.copytree(tiny_model.path, tmp_path / name)
        copies.append(str(tmp_path / name))
    actor = str(tiny_model.path)
    pool = CountingPool()
    specs = {"actor": RoleSpec(actor, sampling=GREEDY), "critic": RoleSpec(copies[0], sampling=GREEDY),
             "regenerator": RoleSpec(copies[1], sampling=GREEDY)}  # fmt: skip
    net = helixnet.build(specs, pool=pool)
    assert pool.loads == [actor, *copies]
    assert len({id(r.engine) for r in net.roles.values()}) == 3
    turn = net.answer("q")
    assert [s.model for s in turn.stages] == [actor, *copies]
    shared = CountingPool()
    specs["critic"] = RoleSpec(actor, sampling=GREEDY)
    net = helixnet.build(specs, pool=shared)
    assert shared.loads == [actor, copies[1]]
    assert net.roles["actor"].engine is net.roles["critic"].engine


def test_bad_role_specs_fail_before_loading(tiny_model: TinyModel, tmp_path: Path) -> None:
    pool = CountingPool()
    good = RoleSpec(str(tiny_model.path))
    with pytest.raises(HelixloomError, match="critic model: unknown model spec"):
        helixnet.build({"actor": good, "critic": RoleSpec("./nowhere"), "regenerator": good}, pool=pool)
    with pytest.raises(HelixloomError, match="regenerator adapter"):
        helixnet.build(
            {"actor": good, "critic": good, "regenerator": RoleSpec(good.model, "missing")}, pool=pool
        )
    assert pool.loads == []


def test_cli_chat_once_json(
    capsys: pytest.CaptureFixture[str], tiny_model: TinyModel, helixloom_home: Path
) -> None:
    base = str(tiny_model.path)
    code = main(["adapters", "add", "critic-lora", str(tiny_model.adapters["beta"])])
    assert code == 0
    capsys.readouterr()
    code = main(["chat", "--base", base, "--critic-adapter", "critic-lora", "--once", "Paris is", "--json",
                 "--max-tokens", "6", "--rounds", "2", "--temperature", "0"])  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    body = json.loads(out)
    assert set(body) >= {"actor", "critique", "regeneration", "session_id", "usage", "timings"}
    assert [s["adapter"] for s in body["stages"]] == [None, "critic-lora", None, "critic-lora", None]
    assert body["regeneration"] == body["rounds"][-1]["regeneration"]
    with Store(helixloom_home / "helixloom.db") as store:
        assert len(store.get_messages(body["session_id"])) == 6


def test_cli_chat_interactive(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tiny_model: TinyModel,
    helixloom_home: Path,
) -> None:
    lines = iter(["Paris is", "/reset", "Berlin is", "/exit"])
    monkeypatch.setattr("builtins.input", lambda _prompt="": next(lines))
    code = main(["chat", "--base", str(tiny_model.path), "--max-tokens", "4", "--temperature", "0"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert out.count("ACTOR: ") == 2 and out.count("CRITIQUE: ") == 2 and out.count("REGENERATION: ") == 2
    assert "(new conversation)" in out
    with Store(helixloom_home / "helixloom.db") as store:
        assert len(store.list_sessions(kind="helixnet")) == 2  # /reset started a new session


def test_cli_plain_chat_interactive_with_an_adapter(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tiny_model: TinyModel,
    helixloom_home: Path,
) -> None:
    lines = iter(["Paris is", "/reset", "", "Berlin is"])  # EOF after the last line ends the chat

    def read(_prompt: str = "") -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", read)
    adapter = str(tiny_model.adapters["alpha"])
    argv = ["chat", "--base", str(tiny_model.path), "--adapter", adapter, "--max-tokens", "4"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "(new conversation)" in out and "/reset starts over" in err
    # an adapter that brings no sampling of its own samples at chat's default, the seed's
    with Store(helixloom_home / "helixloom.db") as store:
        messages = [m for s in store.list_sessions() for m in store.get_messages(s.id)]
    temperatures = {m.sampling["temperature"] for m in messages if m.role == "assistant"}
    assert temperatures == {0.75}


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["chat", "--json"], "--json needs --once"),
        (["chat", "--once", " "], "question is empty"),
        (["chat", "--critic-model", "./nope", "--once", "q"], "critic model"),
        (["chat", "--actor-adapter", "ghost", "--once", "q"], "actor adapter"),
        (["chat", "--rounds", "0", "--once", "q"], "rounds"),
        (["chat", "--format", "nonesuch", "--once", "q"], "unknown prompt format"),
    ],
)
def test_cli_chat_errors(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
