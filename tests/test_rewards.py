"""Rewards that need no training code: the constitution (MiniHF's yes/no principles), its soft
minimum, function rewards and reward specs, scored with a scripted engine."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from helixloom.errors import HelixloomError
from helixloom.rewards import Constitution, ConstitutionReward, FunctionReward, soft_minimum
from helixloom.training.reward_spec import load_reward
from tests.scripted import ScriptedEngine


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
