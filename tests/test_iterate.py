"""Iterative preference learning (GSHF / iterative DPO, RAFT) on the tiny model with scripted rewards."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from helixloom.cli import main
from helixloom.engine import load_engine
from helixloom.errors import HelixloomError
from helixloom.rewards import Constitution, ConstitutionReward, FunctionReward, soft_minimum
from helixloom.training.configs import IterateConfig, LoraDPOConfig
from helixloom.training.iterate import IterativeRun
from helixloom.training.pairing import pick_pairs
from helixloom.training.reward_spec import load_reward
from tests.scripted import ScriptedEngine

TIED = "Say something constant"  # the reward gives every response to this prompt the same score


def vowel_share(prompts: list[str], responses: list[str]) -> list[float]:
    """A learnable scripted reward: the share of vowels in the response (constant for TIED)."""
    return [
        0.5 if p == TIED else sum(c in "aeiou" for c in r) / max(1, len(r))
        for p, r in zip(prompts, responses, strict=True)
    ]


PROMPTS = [f"Tell me about topic {i}" for i in range(8)] + [TIED, TIED + "!"]
FAST = IterateConfig(iterations=2, k=4, max_tokens=8, gen_batch=40)
TRAIN = LoraDPOConfig(learning_rate=5e-3, epochs=4, batch_size=8, rank=8, alpha=16, save_steps=1000)


def _tied_too(prompts: list[str], responses: list[str]) -> list[float]:
    return [
        0.5 if p.startswith(TIED) else s
        for p, s in zip(prompts, vowel_share(prompts, responses), strict=True)
    ]


def test_pick_pairs_best_vs_worst_random_and_ties() -> None:
    rng = random.Random(0)
    texts = ["a", "b", "c", "d"]
    assert pick_pairs(texts, [0.1, 0.9, 0.5, 0.2], "max_min", rng) == ([(1, 0)], False)
    pairs, tied = pick_pairs(texts, [0.1, 0.9, 0.5, 0.2], "max_min+max_random", rng)
    assert pairs[0] == (1, 0) and all(c == 1 for c, _ in pairs) and not tied
    for _ in range(20):
        (c, r), *_ = pick_pairs(texts, [0.3, 0.9, 0.9, 0.2], "max_random", rng)[0]
        assert c == 1 and r in (0, 3)  # never the other response that ties with the best
    assert pick_pairs(texts, [0.5] * 4, "max_min", rng) == ([], True)
    assert pick_pairs(["same", "x", "same"], [1.0, 0.5, 0.0], "max_min", rng) == ([], False)


def test_dpo_iterations_raise_mean_reward_with_best_vs_worst_pairs(tiny_model) -> None:
    run = IterativeRun.create(
        "dpo", PROMPTS, base=str(tiny_model.path), reward="py:vowels", config=FAST, train=TRAIN
    )
    engine = load_engine(str(tiny_model.path))
    rows = run.execute(engine, FunctionReward(_tied_too))
    assert [r.iteration for r in rows] == [0, 1, 2]
    # Two iterations raise the reward, both on the evaluation answers and on the sampled responses.
    assert rows[2].mean_reward > rows[0].mean_reward
    assert rows[2].sample_mean_reward is not None and rows[1].sample_mean_reward is not None
    assert rows[2].sample_mean_reward > rows[1].sample_mean_reward
    assert rows[2].win_rate > 50.0
    for i in (1, 2):
        assert rows[i].changed_fraction == 1.0  # every trainable LoRA tensor moved
        assert rows[i].ties_dropped == 2 and rows[i].pairs == 8
        samples = [json.loads(x) for x in (run.root / f"iter-{i}" / "samples.jsonl").read_text().splitlines()]
        assert len(samples) == len(PROMPTS) and all(len(s["responses"]) == 4 for s in samples)
        by_prompt = {s["prompt"]: s for s in samples}
        pairs = [
            json.loads(x) for x in (run.root / f"iter-{i}" / "train_rows.jsonl").read_text().splitlines()
        ]
        for pair in pairs:
            sample = next(s for s in samples if s["responses"].count(pair["chosen"]))
            assert pair["chosen_reward"] == max(sample["rewards"])
            assert pair["rejected_reward"] == min(sample["rewards"])
            assert not sample["prompt"].startswith(TIED)
            assert sample["prompt"] in pair["prompt"]  # the rendered prompt the policy was sampled with
        assert set(by_prompt) == set(PROMPTS)
    report = json.loads((run.root / "report.json").read_text())
    assert [r["iteration"] for r in report["rows"]] == [0, 1, 2]
    assert (run.root / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The second iteration continued the first one's adapter: its reference was the first iterate.
    assert (run.adapter_dir(2) / "adapter_model.safetensors").is_file()
    assert run.final_adapter() == run.adapter_dir(2)


def test_raft_trains_on_the_best_of_k(tiny_model) -> None:
    config = IterateConfig(iterations=1, k=3, max_tokens=6, gen_batch=30, method="raft")
    run = IterativeRun.create(
        "raft", PROMPTS, base=str(tiny_model.path), reward="py", config=config, train=TRAIN
    )
    rows = run.execute(load_engine(str(tiny_model.path)), FunctionReward(_tied_too))
    assert rows[1].changed_fraction == 1.0 and rows[1].ties_dropped == 2
    samples = {
        json.loads(x)["prompt"]: json.loads(x)
        for x in (run.root / "iter-1" / "samples.jsonl").read_text().splitlines()
    }
    train = [json.loads(x) for x in (run.root / "iter-1" / "train_rows.jsonl").read_text().splitlines()]
    assert len(train) == 8
    for row in train:
        user, answer = row["messages"][0]["content"], row["messages"][-1]["content"]
        s = samples[user]
        assert s["rewards"][s["responses"].index(answer)] == max(s["rewards"])


class _Killed(Exception):
    pass


def test_killed_run_resumes_in_the_phase_and_prompt_it_was_in(tiny_model) -> None:
    config = IterateConfig(iterations=2, k=2, max_tokens=6, gen_batch=2)  # one prompt per batch
    run = IterativeRun.create(
        "resume", PROMPTS, base=str(tiny_model.path), reward="py", config=config, train=TRAIN
    )
    engine = load_engine(str(tiny_model.path))
    calls = {"n": 0}

    def dies_in_iteration_2(prompts: list[str], responses: list[str]) -> list[float]:
        calls["n"] += 1
        # eval of iteration 0 (1 call), 10 sampled prompts, eval of iteration 1 (1), 4 prompts of iteration 2
        if calls["n"] == 1 + 10 + 1 + 5:
            raise _Killed
        return _tied_too(prompts, responses)

    with pytest.raises(_Killed):
        run.execute(engine, FunctionReward(dies_in_iteration_2))
    assert len((run.root / "iter-2" / "samples.jsonl").read_text().splitlines()) == 4
    first_adapter = (run.adapter_dir(1) / "adapter_model.safetensors").read_bytes()

    again = IterativeRun.open("resume")
    engine2 = load_engine(str(tiny_model.path))
    asked: list[str] = []
    original = engine2.generate

    def counting(requests):  # type: ignore[no-untyped-def]
        asked.extend(r.prompt for r in requests)
        return original(requests)

    engine2.generate = counting  # type: ignore[method-assign]
    rows = again.execute(engine2, FunctionReward(_tied_too))
    assert [r.iteration for r in rows] == [0, 1, 2]
    # Iteration 1 was not redone; iteration 2 sampled only the 6 prompts it had not, then evaluated.
    assert (run.adapter_dir(1) / "adapter_model.safetensors").read_bytes() == first_adapter
    sampled = [p for p in asked if "topic" in p or TIED in p]
    assert len(sampled) == 6 * 2 + len(PROMPTS)  # 6 prompts x k=2, plus one evaluation answer per prompt
    lines = (run.root / "iter-2" / "samples.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["index"] for x in lines) == list(range(len(PROMPTS)))


def test_iterate_cli_end_to_end(tiny_model, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:4]) + "\n")
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text(
        "def vowels(prompts, responses):\n"
        "    return [sum(c in 'aeiou' for c in r) / max(1, len(r)) for r in responses]\n"
    )
    args = ["iterate", "--name", "cli", "--prompts", str(prompts), "--base", str(tiny_model.path)]
    args += ["--reward", f"py:{rewards}:vowels", "--iterations", "1", "--k", "2", "--max-tokens", "4"]
    args += ["--learning-rate", "1e-3", "--rank", "4", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["iteration"] for r in out["rows"]] == [0, 1]
    assert Path(out["adapter"]).is_dir()
    assert main(["adapters", "list", "--json"]) == 0
    assert "cli" in {a["name"] for a in json.loads(capsys.readouterr().out)}
    # The same name again without --resume or --overwrite is refused, clearly.
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    # --resume of a finished run does no work and prints the table.
    assert main(["iterate", "--name", "cli", "--resume"]) == 0
    assert "mean reward" in capsys.readouterr().out


def test_iterate_cli_errors(tiny_model, tmp_path: Path, capsys) -> None:
    assert main(["iterate", "--name", "x", "--base", str(tiny_model.path)]) == 2
    assert "--prompts" in capsys.readouterr().err
    assert main(["iterate", "--name", "nope", "--resume"]) == 2
    assert "no iterate run" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "no prompt here"}\n')
    assert main(["iterate", "--name", "x", "--prompts", str(empty), "--base", str(tiny_model.path)]) == 2
    assert "line 1" in capsys.readouterr().err
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    bad = ["iterate", "--name", "x", "--prompts", str(prompts), "--base", str(tiny_model.path), "--k", "1"]
    assert main(bad) == 2
    assert "k must be at least 2" in capsys.readouterr().err


# ---------------------------------------------------------------------------- rewards


def test_constitution_parses_minihf_format_and_rejects_bad_headers() -> None:
    text = (
        "==[PREAMBLE]==\nAnswer yes or no.\n\n"
        "==[Principle: Kind; Weight: 2.0; Answer: Yes]==\n{preamble} {prompt} {response} Is it kind?\n\n"
        "==[Principle: Cruel; Weight: 0.5; Answer: No]==\n{preamble} {response} Is it cruel?\n"
    )
    c = Constitution.parse(text)
    assert c.preamble == "Answer yes or no."
    assert [(p.name, p.weight, p.answer) for p in c.principles] == [
        ("Kind", 2.0, "yes"),
        ("Cruel", 0.5, "no"),
    ]
    with pytest.raises(HelixloomError, match="Answer must be Yes or No"):
        Constitution.parse("==[Principle: X; Answer: Maybe]==\n{response}")
    with pytest.raises(HelixloomError, match="no principles"):
        Constitution.parse("==[PREAMBLE]==\nonly a preamble")
    with pytest.raises(HelixloomError, match="has no"):
        Constitution.parse("==[Principle: X]==\nno response field")
    assert len(Constitution.default().principles) >= 3


def test_soft_minimum_is_dominated_by_the_worst_principle() -> None:
    assert soft_minimum([3.0], [2.0]) == pytest.approx(3.0)
    assert soft_minimum([2.0, 2.0], [1.0, 1.0]) == pytest.approx(2.0)
    # One badly failed principle cannot be bought back by a very good one (a mean would be 3.0).
    assert soft_minimum([-4.0, 10.0], [1.0, 1.0]) < -3.0
    assert soft_minimum([0.0, 1.0], [1.0, 3.0]) > soft_minimum([0.0, 1.0], [3.0, 1.0])


def test_constitution_reward_signs_principles_by_their_desired_answer() -> None:
    c = Constitution.parse(
        "==[Principle: Kind; Weight: 1; Answer: Yes]==\nKIND? {response}\n"
        "==[Principle: Cruel; Weight: 1; Answer: No]==\nCRUEL? {response}\n"
    )

    def p_yes(prompt: str) -> float:  # "nice" texts are kind and not cruel; "mean" ones the reverse
        nice = "nice" in prompt
        return (0.9 if nice else 0.1) if prompt.startswith("KIND") else (0.1 if nice else 0.9)

    reward = ConstitutionReward(ScriptedEngine("", judge=p_yes), c)
    nice, mean = reward.score(["q", "q"], ["a nice reply", "a mean reply"])
    odds = math.log(0.9 / 0.1)
    assert nice == pytest.approx(odds) and mean == pytest.approx(-odds)
    assert reward.principle_scores(["q"], ["nice"]) == [[pytest.approx(odds), pytest.approx(odds)]]


def test_constitution_principles_are_asked_with_their_own_prompts() -> None:
    c = Constitution.parse(
        "==[PREAMBLE]==\nAnswer yes or no.\n"
        "==[Principle: Kind; Weight: 2; Answer: Yes]==\n{preamble} P={prompt} R={response} Kind?\n"
        "==[Principle: Cruel; Weight: 1; Answer: No]==\n{response} Cruel? {preamble}\n"
    )
    engine = ScriptedEngine("", judge=lambda prompt: 0.7)
    reward = ConstitutionReward(engine, c, adapter=None)
    [a, b] = reward.principle_scores(["q1", "q2"], ["r1", "r2"])
    odds = math.log(0.7 / 0.3)
    assert a == b == [pytest.approx(odds), pytest.approx(-odds)]
    assert engine.scored == [
        "Answer yes or no. P=q1 R=r1 Kind?",
        "r1 Cruel? Answer yes or no.",
        "Answer yes or no. P=q2 R=r2 Kind?",
        "r2 Cruel? Answer yes or no.",
    ]
    assert reward.score(["q1"], ["r1"]) == [pytest.approx(soft_minimum([odds, -odds], [2.0, 1.0]))]


def test_load_reward_specs(tmp_path: Path) -> None:
    engine = ScriptedEngine("", judge=lambda p: 0.8)
    fn = tmp_path / "r.py"
    fn.write_text("def f(prompts, responses):\n    return [len(r) for r in responses]\n")
    assert load_reward(f"py:{fn}:f", engine=engine).score(["a", "b"], ["xy", "xyz"]) == [2.0, 3.0]
    assert load_reward("evaluator", engine=engine).score(["a"], ["b"]) == [pytest.approx(math.log(4))]
    assert load_reward("evaluator:no:Is it rude?", engine=engine).score(["a"], ["b"]) == [
        pytest.approx(-math.log(4))
    ]
    assert load_reward("constitution", engine=engine).score(["a"], ["b"])[0] != 0
    for bad, msg in [
        ("bogus", "unknown reward"),
        ("py:nomodule_here:f", "cannot import"),
        (f"py:{fn}:missing", "has no function"),
        ("constitution:/no/such/file", "does not exist"),
        ("rm:nothing-by-this-name", "no reward model"),
    ]:
        with pytest.raises(HelixloomError, match=msg):
            load_reward(bad, engine=engine)
    wrong = FunctionReward(lambda p, r: [1.0])
    with pytest.raises(HelixloomError, match="returned 1 scores for 2"):
        wrong.score(["a", "b"], ["c", "d"])


def test_reward_outcome_calls_the_same_answer_a_tie() -> None:
    from helixloom.training.pairing import reward_outcome

    assert reward_outcome("same", 2.5000001, "same", 2.4) == 0.5  # batch noise on identical text
    assert reward_outcome("a", 2.0, "b", 2.0 + 1e-9) == 0.5
    assert reward_outcome("a", 2.1, "b", 2.0) == 1.0 and reward_outcome("a", 1.9, "b", 2.0) == 0.0
