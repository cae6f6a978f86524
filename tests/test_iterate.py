"""Iterative preference learning (GSHF / iterative DPO, RAFT) on the tiny model with scripted rewards."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from helixloom.cli import main
from helixloom.engine import load_engine
from helixloom.rewards import FunctionReward
from helixloom.training.configs import IterateConfig, LoraDPOConfig
from helixloom.training.iterate import IterativeRun
from helixloom.training.iterate_state import IterationRow
from helixloom.training.pairing import pick_pairs

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


def _record_dpo_references(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any] | None]:
    """Each DPO training's frozen reference, as TRL set it up: the weights of its ``ref`` adapter
    (keyed as in a saved adapter file), or None where the reference is the base model."""
    import trl

    references: list[dict[str, Any] | None] = []

    class Recording(trl.DPOTrainer):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            model = self.accelerator.unwrap_model(self.model)
            if self.ref_model is not None or "ref" not in model.peft_config:
                references.append(None)
                return
            references.append(
                {
                    name.replace(".ref.", "."): p.detach().clone()
                    for name, p in model.named_parameters()
                    if ".ref." in name
                }
            )

    monkeypatch.setattr(trl, "DPOTrainer", Recording)
    return references


def test_dpo_iterations_raise_mean_reward_with_best_vs_worst_pairs(
    tiny_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    references = _record_dpo_references(monkeypatch)
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
    # The first iteration's reference was the base model (a fresh LoRA, adapter disabled); the
    # second's was a frozen copy of the first iterate: exactly the weights iteration 1 saved.
    import torch
    from safetensors.torch import load_file

    assert len(references) == 2 and references[0] is None
    first_iterate = load_file(str(run.adapter_dir(1) / "adapter_model.safetensors"))
    second = references[1]
    assert second is not None and set(second) == set(first_iterate)
    assert all(torch.equal(second[k], first_iterate[k]) for k in first_iterate)
    # ...and iteration 2 trained away from it.
    final = load_file(str(run.adapter_dir(2) / "adapter_model.safetensors"))
    assert set(final) == set(first_iterate)
    assert not any(torch.equal(final[k], first_iterate[k]) for k in final)
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


def test_reward_outcome_calls_the_same_answer_a_tie() -> None:
    from helixloom.training.pairing import reward_outcome

    assert reward_outcome("same", 2.5000001, "same", 2.4) == 0.5  # batch noise on identical text
    assert reward_outcome("a", 2.0, "b", 2.0 + 1e-9) == 0.5
    assert reward_outcome("a", 2.1, "b", 2.0) == 1.0 and reward_outcome("a", 1.9, "b", 2.0) == 0.0


def test_the_judges_consistency_is_in_every_row_and_a_noisy_judge_is_withheld(tiny_model) -> None:
    """Every win-rate report states the judge's position consistency: the loop's rows carry it, the
    table shows it, and a judge too inconsistent to mean anything has its win rate withheld."""
    from helixloom.cli.iterate import _judge_fn
    from helixloom.training.iterate_report import format_table

    engine = load_engine(str(tiny_model.path))
    judged: list[float | None] = []

    def judge(prompts: list[str], answers: list[str], baseline: list[str]):  # type: ignore[no-untyped-def]
        win, lc, consistency = _judge_fn("base", engine)(prompts, answers, baseline)
        judged.append(consistency)
        return win, lc, consistency

    run = IterativeRun.create(
        "judged", PROMPTS[:4], base=str(tiny_model.path), reward="py", config=IterateConfig(iterations=1, k=2,
        max_tokens=4, gen_batch=8), train=TRAIN, overwrite=True,
    )  # fmt: skip
    rows = run.execute(engine, FunctionReward(_tied_too), judge=judge)
    assert rows[0].judge_consistency is None  # the start is not judged against itself
    assert judged and rows[1].judge_consistency == judged[0] is not None
    # The tiny model judges at random: whatever it said, the row and the table say how consistent.
    assert (rows[1].judge_win_rate is None) == (rows[1].judge_consistency < 50)
    table = format_table(rows)
    assert "judge cons." in table and f"{rows[1].judge_consistency:.0f}%" in table
    # A judge that always names the first answer follows the order, never the answers: withheld.
    from tests.scripted import ScriptedEngine

    first_always = ScriptedEngine(lambda _request: "[[A]]")
    first_always.supports_logprobs = False  # the judge reads its text verdict
    win, lc, consistency = _judge_fn("base", first_always)(PROMPTS[:4], ["x"] * 4, ["y"] * 4)
    assert consistency == 0 and win is None and lc is None
    row = IterationRow(1, 0.0, 50.0, 4.0, judge_win_rate=win, judge_consistency=consistency)
    assert "withheld" in format_table([row])
