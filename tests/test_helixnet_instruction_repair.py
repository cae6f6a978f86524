"""The verifier's code repairs (``evals.instruction_repair``): each one makes a failing answer pass its
check, a repair is returned only when every check of the prompt passes, and a passing answer is left
as it is. Then the verifier teacher's target outcomes and the regenerator's fix/keep mix."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helixloom.evals import instructions as ins
from helixloom.evals.instruction_repair import repair
from helixloom.evals.instructions import Check, InstructionPrompt
from helixloom.prompting import PromptFormat
from helixloom.training.helixnet_teachers import Attempt, VerifierTeacher
from helixloom.training.helixnet_train import build_rows
from tests.scripted import ScriptedEngine

SYSTEM = PromptFormat.load("helixnet").system

_WORDS = "the sea is blue and deep cats purr when happy Many people love warm light old trees I think Yes"
_word = st.sampled_from([*_WORDS.split(), "Well", "water", "simple", "quiet"])
_sentence = st.builds(
    lambda ws, end, comma: (" ".join(ws[:2]) + ("," if comma else "") + " " + " ".join(ws[2:])).strip() + end,
    st.lists(_word, min_size=3, max_size=12),
    st.sampled_from([".", "!", "?", ""]),
    st.booleans(),
)
# prose as a base model writes it: capitals, commas, several sentences, sometimes bullets
prose = st.builds(
    lambda parts, bulleted, upper: (
        "\n".join("- " + p for p in parts) if bulleted else " ".join(parts)
    ).replace("the", "The" if upper else "the"),
    st.lists(_sentence, min_size=1, max_size=6),
    st.booleans(),
    st.booleans(),
)
long_prose = st.lists(_sentence, min_size=4, max_size=7).map(" ".join)
long_prose = long_prose.filter(lambda t: len(ins.words(t)) >= 25)

SINGLE = [
    Check("max_words", 10),
    Check("max_words", 3),
    Check("max_sentences", 1),
    Check("max_sentences", 2),
    Check("include_word", "green"),
    Check("exclude_word", "blue"),
    Check("exclude_word", "the"),
    Check("bullets", 2),
    Check("bullets", 3),
    Check("lowercase"),
    Check("uppercase"),
    Check("json_keys", ["name", "reason"]),
    Check("ends_with", "That is all."),
    Check("starts_with", "Today"),
    Check("no_commas"),
]


@pytest.mark.parametrize("check", SINGLE, ids=lambda c: f"{c.kind}-{c.arg}")
@settings(max_examples=60, deadline=None)
@given(text=prose)
def test_each_repair_makes_a_failing_answer_pass_its_check(check: Check, text: str) -> None:
    prompt = InstructionPrompt("p", "Describe the sea. " + check.instruction, (check,))
    fixed = repair(prompt, text)
    left = [w for w in ins.words(text) if check.kind != "exclude_word" or w.lower() != check.arg]
    enough = len(left) >= (check.arg if check.kind == "bullets" else 1)  # words to keep
    if enough:
        assert fixed is not None, (text, check)
    if fixed is not None:
        assert prompt.passes(fixed) and ins.words(fixed)
    if prompt.passes(text):
        assert fixed == text.strip()  # a passing answer is left alone


@settings(max_examples=20, deadline=None)
@given(text=long_prose)
def test_every_builtin_prompt_is_repairable_from_a_long_enough_answer(text: str) -> None:
    # The built-in prompts combine up to two checks; a 25-word answer can be made to pass all of them.
    failed = [p.prompt for p in ins.load() if not ((fixed := repair(p, text)) and p.passes(fixed))]
    assert not failed, failed[:3]


def test_a_short_answer_is_lengthened_only_from_other_answers() -> None:
    prompt = InstructionPrompt("p", "Describe cats. Answer in at least 10 words.", (Check("min_words", 10),))
    assert repair(prompt, "Cats purr.") is None  # nothing to take words from: no invented text
    fixed = repair(prompt, "Cats purr.", ["Cats purr. They sleep a lot and like warm sunny windows."])
    assert fixed == "Cats purr. They sleep a lot and like warm sunny windows."


def test_repairs_edit_as_little_as_they_can() -> None:
    def fix(text: str, *checks: Check) -> str | None:
        return repair(InstructionPrompt("p", "Q", checks), text)

    assert fix("Cats purr a lot. They sleep.", Check("max_words", 4)) == "Cats purr a lot."
    assert fix("The cat, the dog.", Check("no_commas")) == "The cat the dog."
    assert fix("Cats purr.", Check("starts_with", "Yes")) == "Yes cats purr."
    assert fix("Cats purr. That is all.", Check("max_sentences", 1), Check("ends_with", "That is all.")) == (
        "Cats purr — That is all."
    )
    assert fix("A blue sky.", Check("exclude_word", "blue")) == "A sky."
    assert fix("Cats purr.", Check("include_word", "warm")) == "Cats purr and warm."
    assert fix("Cats purr. Dogs bark.", Check("bullets", 2)) == "- Cats purr\n- Dogs bark"
    assert fix("Cats purr.", Check("json_keys", ["name"])) == '{"name": "Cats purr."}'
    assert fix("", Check("lowercase")) is None  # nothing to repair


# ------------------------------------------------------------------------------------------ teacher

PROMPT = InstructionPrompt(
    "if-0001", 'Describe the sea. Answer in at most 5 words. Use the word "blue" in your answer.',
    (Check("max_words", 5), Check("include_word", "blue")),
)  # fmt: skip
BAD = "The sea is very large and deep and green."


def test_verifier_outcomes_kept_sample_repaired_none() -> None:
    teacher = VerifierTeacher()
    attempts = [
        Attempt(PROMPT, SYSTEM, ("Blue sea.", "x")),  # the response passes: kept as it is
        # failing response: the passing sample nearest it is the target
        Attempt(PROMPT, SYSTEM, (BAD, "Blue whales swim.", "The sea is blue.", "still wrong here")),
        Attempt(PROMPT, SYSTEM, (BAD, BAD)),  # no sample passes: the response repaired in code
    ]
    lessons = teacher.teach(attempts)
    assert [(x.outcome, x.regeneration) for x in lessons] == [
        ("kept", "Blue sea."),
        ("sample", "The sea is blue."),
        ("repaired", lessons[2].regeneration),
    ]
    assert lessons[2].regeneration and PROMPT.passes(lessons[2].regeneration)
    # the verifier vouches for a target it checked, so the critic can learn what a passing answer is
    vouched = ins.critique(PROMPT, "Blue sea.")  # what the verifier says of any passing answer
    assert [x.target_critique for x in lessons] == [None, vouched, vouched]
    assert "follows every instruction" in (lessons[1].target_critique or "")
    assert "9 words" in lessons[2].critique  # the critique is the failed checks, whatever the target
    off = VerifierTeacher(repair=False).teach([Attempt(PROMPT, SYSTEM, (BAD, BAD))])[0]
    assert (off.outcome, off.regeneration) == ("none", None)
    json_prompt = InstructionPrompt("j", "Q", (Check("bullets", 3),))
    none = VerifierTeacher().teach([Attempt(json_prompt, SYSTEM, ("Hi.", "Yo."))])[0]
    assert (none.outcome, none.regeneration) == ("none", None)  # too few words for 3 bullets


def test_regenerator_rows_are_mostly_fixes_with_a_capped_share_kept() -> None:
    fmt = PromptFormat.load("helixnet")
    outcomes = ["sample"] * 3 + ["repaired"] * 3 + ["kept"] * 10 + ["none"] * 2
    lessons = [
        {"question": f"Q{i}", "response": f"r{i}", "critique": f"c{i}",
         "regeneration": None if o == "none" else f"g{i}", "outcome": o}
        for i, o in enumerate(outcomes)
    ]  # fmt: skip
    rows, mixes = build_rows(lessons, fmt, ScriptedEngine([]), SYSTEM, keep_share=0.25)
    mix = mixes["regenerator"]
    assert mix == {"fix_sample": 3, "fix_repaired": 3, "keep": 2, "keep_available": 10}
    assert len(rows["critic"]) == 18  # every critique teaches the critic
    assert len(rows["regenerator"]) == 8 and mix["keep"] / len(rows["regenerator"]) <= 0.25
    kept_rows = [r for r in rows["regenerator"] if r["completion"] in (" g6", " g7")]
    assert len(kept_rows) == 2  # the first kept ones in prompt order
    none_at_all, _ = build_rows(lessons, fmt, ScriptedEngine([]), SYSTEM, keep_share=0.0)
    assert len(none_at_all["regenerator"]) == 6
    outcomes_count = Counter(x["outcome"] for x in lessons)
    assert outcomes_count["kept"] == mix["keep_available"]


def test_the_critic_learns_from_passing_targets_up_to_its_pass_share() -> None:
    """Session 6's critic, trained on the actor's mostly failing answers, said every answer fails.
    A failed response's verified target (a passing answer to the same question) is a passing critic
    row, added in prompt order until passing rows are at least ``critic_pass_share``."""
    fmt = PromptFormat.load("helixnet")
    outcomes = ["repaired"] * 6 + ["kept"] * 2 + ["none"]
    lessons = [
        {"question": f"Q{i}", "response": f"bad{i}", "critique": f"fails{i}",
         "regeneration": None if o == "none" else f"good{i}", "outcome": o,
         "target_critique": "The response follows every instruction." if o == "repaired" else None}
        for i, o in enumerate(outcomes)
    ]  # fmt: skip
    rows, mixes = build_rows(lessons, fmt, ScriptedEngine([]), SYSTEM, keep_share=0.25, critic_pass_share=0.5)
    # 7 failed responses, 2 passed: 5 targets make 7 of 14 rows passing
    assert mixes["critic"] == {"response_failed": 7, "response_passed": 2, "target_passed": 5}
    critic = rows["critic"]
    assert len(critic) == 9 + 5
    added = [r for r in critic if "RESPONSE: good" in r["prompt"]]
    assert [r["prompt"] for r in added] == [
        fmt.critic_prompt(ScriptedEngine([]), SYSTEM, f"Q{i}", f"good{i}") for i in range(5)
    ]  # the seed's critic prompt with the target as the response; first ones in prompt order
    assert all(r["completion"] == " The response follows every instruction." for r in added)
    assert all(r["prompt"].endswith(" \nCRITIQUE:") for r in critic)
    assert mixes["regenerator"] == {"fix_repaired": 6, "keep": 2, "keep_available": 2}
    unbalanced, mixes = build_rows(lessons, fmt, ScriptedEngine([]), SYSTEM, keep_share=0.25)
    assert len(unbalanced["critic"]) == 9 and mixes["critic"]["target_passed"] == 0  # 0: responses only
    most, _ = build_rows(lessons, fmt, ScriptedEngine([]), SYSTEM, keep_share=0.25, critic_pass_share=0.9)
    assert len(most["critic"]) == 9 + 6  # never more than the targets there are
