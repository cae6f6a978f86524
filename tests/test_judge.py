"""Judges and win rates: order swapping and tie logic, verdict parsing, length control, grading,
the judge as a reward, replay of rated sessions, and the ``eval`` commands end to end."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from helixloom.cli import main
from helixloom.engine import GenerationRequest, GenerationResult, NextTokenLogprobs, SamplingParams
from helixloom.errors import HelixloomError
from helixloom.evals.grade import Grader, grade_report, parse_rating
from helixloom.evals.judge_reward import JudgeReward
from helixloom.evals.pairwise import PairVerdict, PairwiseJudge, parse_pair_verdict
from helixloom.evals.prompts import load_prompts
from helixloom.evals.replay import rated_answers, replay_sessions
from helixloom.evals.templates import JudgeTemplate
from helixloom.evals.winrate import evaluate_winrate, length_controlled, win_rate
from helixloom.store import NewMessage, Store
from tests.conftest import TinyModel
from tests.scripted import ScriptedEngine

SHOWN = re.compile(
    r"\[The Start of Assistant ([AB])'s Answer\]\n(.*?)\n\[The End of Assistant \1's Answer\]", re.S
)
GREEDY = SamplingParams(temperature=0, max_tokens=16)


def shown(prompt: str) -> tuple[str, str]:
    """The answers a pairwise judge prompt shows as A and as B."""
    found = dict(SHOWN.findall(prompt))
    return found["A"], found["B"]


class VerdictEngine(ScriptedEngine):
    """A scripted judge: ``verdict(a, b)`` gives P(A), P(B), P(C) as the next token after a pairwise
    prompt that shows ``a`` as A and ``b`` as B. Records every ``next_token_logprobs`` call."""

    def __init__(
        self,
        verdict: Callable[[str, str], tuple[float, float, float]],
        respond: Callable[[GenerationRequest], str] | list[str] | None = None,
    ) -> None:
        super().__init__(respond if respond is not None else (lambda r: "unused"))
        self.verdict = verdict
        self.calls: list[list[str]] = []

    def next_token_logprobs(
        self,
        prompts: Sequence[str],
        *,
        adapter: str | None = None,
        top_k: int = 5,
        candidates: Sequence[str] = (),
    ) -> list[NextTokenLogprobs]:
        self.calls.append(list(prompts))
        out = []
        for prompt in prompts:
            pa, pb, pc = self.verdict(*shown(prompt))
            values = {"A": math.log(pa), "B": math.log(pb), "C": math.log(pc)}
            out.append(NextTokenLogprobs((), {c: values.get(c) for c in candidates}, 1))
        return out


def first_position(a: str, b: str) -> tuple[float, float, float]:
    return (0.9, 0.06, 0.04)


def longer(a: str, b: str) -> tuple[float, float, float]:
    if len(a) == len(b):
        return (0.1, 0.1, 0.8)
    return (0.8, 0.15, 0.05) if len(a) > len(b) else (0.15, 0.8, 0.05)


class TextOnly(ScriptedEngine):
    supports_logprobs = False


# ---------------------------------------------------------------------------- pairwise, logprobs


def test_position_biased_judge_gives_only_ties() -> None:
    engine = VerdictEngine(first_position)
    judge = PairwiseJudge(engine)
    assert judge.mode == "logprobs"
    verdicts = judge.compare(
        ["q1", "q2", "q3"], ["short", "a much longer answer", "x"], ["longer one", "b", "yy"]
    )
    assert [v.winner for v in verdicts] == ["tie"] * 3
    assert all(v.preference == pytest.approx(0.5) for v in verdicts)
    # One engine call per order, each with every pair; the second call swaps the positions.
    assert len(engine.calls) == 2 and all(len(c) == 3 for c in engine.calls)
    assert shown(engine.calls[0][1]) == ("a much longer answer", "b")
    assert shown(engine.calls[1][1]) == ("b", "a much longer answer")
    assert verdicts[0].forward is not None and verdicts[0].forward.choice == "A"
    assert verdicts[0].backward is not None and verdicts[0].backward.choice == "A"
    report = win_rate(verdicts, [5, 20, 1], [10, 1, 2])
    assert (report.wins, report.losses, report.ties, report.raw_win_rate) == (0, 0, 3, 50.0)
    # A judge that follows positions is noise: it says so, and its 50% is not reported as a result.
    assert verdicts[0].consistent is False and report.consistency == 0.0 and report.consistency_n == 3
    assert report.reliable is False and report.win_rate is None and report.lc_win_rate is None
    assert report.unreliable_reason and "unreliable" in report.unreliable_reason
    assert report.to_dict()["reliable"] is False


def test_consistent_judge_wins_in_either_position() -> None:
    engine = VerdictEngine(longer)
    verdicts = PairwiseJudge(engine).compare(
        ["q", "q", "q"], ["the longer answer", "no", "same"], ["short", "a longer answer", "emas"]
    )
    assert [v.winner for v in verdicts] == ["A", "B", "tie"]
    prefs = [v.preference for v in verdicts]
    assert prefs[0] is not None and prefs[0] > 0.7
    assert prefs[1] is not None and prefs[1] < 0.3
    assert prefs[2] == pytest.approx(0.5)  # C in both orders
    # AlpacaEval's soft preference: P(first) = P(A) + P(C)/2, averaged over both orders.
    assert prefs[0] == pytest.approx(((0.8 + 0.025) + 1 - (0.15 + 0.025)) / 2)
    report = win_rate(verdicts, [17, 2, 4], [5, 15, 4])
    assert (report.n, report.wins, report.losses, report.ties) == (3, 1, 1, 1)
    assert report.win_rate == pytest.approx(50.0)
    assert report.consistency == 100.0 and report.reliable and report.unreliable_reason is None
    assert report.standard_error == pytest.approx(np.std([1, 0, 0.5], ddof=1) / math.sqrt(3) * 100)


def test_identical_answers_are_a_tie_without_asking() -> None:
    engine = VerdictEngine(first_position)
    [v] = PairwiseJudge(engine).compare(["q"], ["same text"], [" same text "])
    assert (v.winner, v.preference, v.forward) == ("tie", 0.5, None)
    assert engine.calls == []  # the judge was not asked


def test_judge_prompt_is_the_pair_template_with_braces_kept() -> None:
    engine = VerdictEngine(longer)
    PairwiseJudge(engine).compare(["Say {answer_b}?"], ["I say {answer_b} and {question}"], ["no"])
    prompt = engine.calls[0][0]
    assert "Please act as an impartial judge" in prompt and "[[C]]" in prompt
    assert "[User Question]\nSay {answer_b}?\n" in prompt
    assert shown(prompt) == ("I say {answer_b} and {question}", "no")
    assert prompt.endswith("Final verdict: [[")


def test_letters_from_top_tokens_when_candidates_are_not_scored() -> None:
    from helixloom.engine import TokenLogprob
    from helixloom.evals.pairwise import letter_probs

    result = NextTokenLogprobs(
        (
            TokenLogprob(1, "B", math.log(0.6)),
            TokenLogprob(2, "A]]", math.log(0.2)),
            TokenLogprob(3, "x", -1),
        ),
        {"A": None, "B": None, "C": None},
        3,
    )
    probs = letter_probs(result)
    assert probs is not None
    assert probs["B"] == pytest.approx(0.75) and probs["A"] == pytest.approx(0.25) and probs["C"] == 0
    assert letter_probs(NextTokenLogprobs((), {"A": None}, 1)) is None


# ---------------------------------------------------------------------------- pairwise, text


def verdict_text(request: GenerationRequest) -> str:
    """A text judge that prefers the longer answer, explains, and fails on a question about 'bad'."""
    a, b = shown(request.prompt)
    if "bad" in request.prompt:
        return "Both answers are fine, I think."
    if len(a) == len(b):
        return "Equally good. [[C]]"
    return "Assistant [[A]] format aside, " + ("A is better. [[A]]" if len(a) > len(b) else "B wins. [[B]]")


def test_text_mode_parses_verdicts_and_counts_malformed() -> None:
    engine = TextOnly(verdict_text)
    judge = PairwiseJudge(engine)
    assert judge.mode == "text"
    verdicts = judge.compare(
        ["q", "q", "bad q", "q"], ["long answer", "s", "one", "abc"], ["s", "long answer", "two words", "xyz"]
    )
    assert [v.winner for v in verdicts] == ["A", "B", "error", "tie"]
    assert verdicts[0].forward is not None and verdicts[0].forward.text.endswith("[[A]]")
    assert verdicts[2].malformed == 2 and verdicts[2].preference is None
    report = win_rate(verdicts, [11, 1, 3, 3], [1, 11, 9, 3])
    assert (report.n, report.wins, report.losses, report.ties) == (3, 1, 1, 1)
    assert (report.malformed, report.malformed_verdicts) == (1, 2)
    assert report.win_rate == pytest.approx(50.0)
    # The unreadable pair is not counted; the tie was C in both orders (consistent).
    assert report.consistency_n == 3 and report.consistency == 100.0 and report.reliable
    # Judged greedily, one batch per order.
    assert len(engine.requests) == 8 and all(r.sampling.temperature == 0 for r in engine.requests)


def test_text_mode_without_explanation_reads_a_short_verdict() -> None:
    replies = ["A]]", "B", "C]] because", "maybe", "B]]", "A", "C", "[[B]]"]
    engine = TextOnly(list(replies))
    verdicts = PairwiseJudge(engine, explain=False).compare(
        ["q"] * 4, ["a1", "a2", "a3", "a4"], ["b1", "b2", "b3", "b4"]
    )
    assert all(r.prompt.endswith("Final verdict: [[") for r in engine.requests)
    assert all(r.sampling.max_tokens <= 8 for r in engine.requests)
    # forward: A, B, C, malformed; backward: B, A, C, B  ->  A wins, B wins, tie, error
    assert [v.winner for v in verdicts] == ["A", "B", "tie", "error"]


def test_parse_pair_verdict() -> None:
    assert parse_pair_verdict("I think [[A]] is wrong; final: [[B]]") == "B"
    assert parse_pair_verdict("[[ C ]]") == "C"
    assert parse_pair_verdict("[A] or [[D]]") is None
    assert parse_pair_verdict("") is None


def test_logprobs_mode_needs_logprobs() -> None:
    with pytest.raises(HelixloomError, match="log-probabilities"):
        PairwiseJudge(TextOnly(["x"]), mode="logprobs")
    with pytest.raises(HelixloomError, match="judge mode"):
        PairwiseJudge(TextOnly(["x"]), mode="vibes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- length control


def synthetic(
    b0: float, b1: float, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lengths where A is usually longer, and preferences drawn from a known length-biased GLM."""
    rng = np.random.default_rng(seed)
    lengths_b = rng.normal(500, 100, n).clip(1)
    lengths_a = (lengths_b + rng.normal(150, 200, n)).clip(1)
    delta = lengths_a - lengths_b
    p = 1 / (1 + np.exp(-(b0 + b1 * np.tanh(delta / delta.std(ddof=1)))))
    return lengths_a, lengths_b, p, (rng.random(n) < p).astype(float)


def test_length_controlled_win_rate_recovers_the_unbiased_preference() -> None:
    b0, b1 = 0.3, 1.2
    lengths_a, lengths_b, p, y = synthetic(b0, b1, 4000, seed=0)
    verdicts = [PairVerdict("A" if yi else "B", float(yi), None, None) for yi in y]
    report = win_rate(verdicts, list(lengths_a), list(lengths_b))
    truth = 100 / (1 + math.exp(-b0))
    assert report.lc_win_rate is not None and report.win_rate is not None
    assert report.lc_win_rate == pytest.approx(truth, abs=3.0)
    assert report.lc_length_coef == pytest.approx(b1, abs=0.3)
    assert report.win_rate > truth + 8  # the raw win rate rewards A's extra length
    # Soft labels equal to the true probabilities: the fit is (nearly) exact.
    soft = length_controlled(list(p), list(lengths_a), list(lengths_b))
    assert (soft.intercept, soft.length_coef) == (pytest.approx(b0, abs=0.01), pytest.approx(b1, abs=0.01))


def test_length_control_changes_nothing_without_a_length_effect() -> None:
    lengths_a, lengths_b, _, y = synthetic(-0.5, 0.0, 4000, seed=1)
    fit = length_controlled(list(y), list(lengths_a), list(lengths_b))
    assert fit.win_rate == pytest.approx(float(y.mean()) * 100, abs=2.5)
    assert abs(fit.length_coef) < 0.25


def test_length_control_stays_finite_on_unanimous_or_degenerate_data() -> None:
    fit = length_controlled([1.0, 1.0, 1.0], [10, 20, 30], [5, 5, 5])
    assert math.isfinite(fit.intercept) and fit.win_rate > 90
    same = length_controlled([1.0, 0.0], [10, 10], [10, 10])  # no length differences at all
    assert same.win_rate == pytest.approx(50.0) and same.length_coef == 0
    with pytest.raises(HelixloomError):
        length_controlled([1.5], [1], [2])
    empty = win_rate([PairVerdict("error", None, None, None)], [1], [1])
    assert (empty.n, empty.malformed, empty.win_rate, empty.lc_win_rate) == (0, 1, None, None)


# ---------------------------------------------------------------------------- grading


def test_parse_rating() -> None:
    assert parse_rating("Good answer. Rating: [[7]]") == 7
    assert parse_rating("Rating: [[8.5]]") == 8.5
    assert parse_rating("I give it [6].") == 6  # fallback [n]
    assert parse_rating('format "[[rating]]", e.g. [[5]] ... Rating: [[9]]') == 9  # the last one
    assert parse_rating("no rating here") == -1
    assert parse_rating("Rating: [[11]]") == -1 and parse_rating("[[0]]") == -1


def test_grader_reports_mean_over_readable_ratings() -> None:
    engine = TextOnly(["Fine. Rating: [[8]]", "Meh [7]", "I refuse to rate."])
    grades = Grader(engine).grade(["q1", "q2", "q3"], ["a1", "a2", "a3"])
    assert [g.rating for g in grades] == [8, 7, -1] and grades[2].malformed
    report = grade_report(grades)
    assert (report.count, report.malformed, report.mean) == (3, 1, 7.5)
    prompt = engine.requests[0].prompt
    assert "[Question]\nq1\n" in prompt and "[The Start of Assistant's Answer]\na1\n" in prompt
    assert "You are a helpful assistant." in prompt
    short = TextOnly(["6]]", "x"])
    assert [g.rating for g in Grader(short, explain=False).grade(["q", "q"], ["a", "b"])] == [6, -1]
    assert short.requests[0].prompt.endswith("Rating: [[")
    assert grade_report([]).mean is None


# ---------------------------------------------------------------------------- as a reward


def test_judge_reward_round_robin_counts_wins() -> None:
    engine = VerdictEngine(longer)
    reward = JudgeReward(PairwiseJudge(engine))
    responses = ["ccc", "a", "dddd", "bb"]
    assert reward.score_group("q", responses) == [2.0, 0.0, 3.0, 1.0]
    assert len(engine.calls) == 2 and len(engine.calls[0]) == 6  # every pair, one call per order
    biased = JudgeReward(PairwiseJudge(VerdictEngine(first_position)))
    assert biased.score_group("q", ["x", "y", "z"]) == [1.0, 1.0, 1.0]  # all ties: 0.5 per game
    assert reward.score_group("q", ["only"]) == [0.0]


def test_judge_reward_score_groups_by_prompt_and_refuses_singletons() -> None:
    reward = JudgeReward(PairwiseJudge(VerdictEngine(longer)))
    assert reward.score(["p", "q", "p", "q"], ["long", "x", "s", "longer"]) == [1.0, 0.0, 0.0, 1.0]
    with pytest.raises(HelixloomError, match="single response"):
        reward.score(["p", "p", "q"], ["a", "bb", "c"])


def test_load_reward_builds_a_judge_reward() -> None:
    from helixloom.training.reward_spec import load_reward

    reward = load_reward("judge", engine=VerdictEngine(longer))
    assert isinstance(reward, JudgeReward)
    assert reward.score_group("q", ["aa", "a"]) == [1.0, 0.0]


# ---------------------------------------------------------------------------- evaluations


def test_evaluate_winrate_answers_both_models_and_judges() -> None:
    model = ScriptedEngine(lambda r: "a long and detailed answer", model_name="m")
    baseline = ScriptedEngine(lambda r: "short", model_name="b")
    prompts: list[str | list[dict[str, str]]] = ["q1", [{"role": "user", "content": "q2"}], "q3"]
    judge = PairwiseJudge(VerdictEngine(longer))
    seen: list[int] = []
    result = evaluate_winrate(
        model, baseline, prompts, judge, GREEDY, adapter="mine", batch_size=2, on_progress=seen.append
    )
    assert seen == [2, 1]
    assert [r.verdict.winner for r in result.rows] == ["A", "A", "A"]
    assert [r.prompt for r in result.rows] == ["q1", "q2", "q3"]
    assert result.report.win_rate == 100.0 and result.report.n == 3
    assert {r.adapter for r in model.requests} == {"mine"} and {r.adapter for r in baseline.requests} == {
        None
    }
    body = result.to_dict()
    assert body["report"]["wins"] == 3 and body["rows"][0]["answer_b"] == "short"
    json.dumps(body)  # serialisable


def test_one_engine_with_two_adapters_answers_both_sides_in_one_batch() -> None:
    batches: list[int] = []

    class Counting(ScriptedEngine):
        def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
            batches.append(len(requests))
            return super().generate(requests)

    engine = Counting(lambda r: "a longer answer" if r.adapter == "tuned" else "base")
    result = evaluate_winrate(
        engine, engine, ["q1", "q2"], PairwiseJudge(VerdictEngine(longer)), GREEDY,
        adapter="tuned", system="Be brief.", baseline_system="",
    )  # fmt: skip
    assert batches == [4]
    assert [r.adapter for r in engine.requests] == ["tuned", "tuned", None, None]
    assert [("SYSTEM: Be brief." in r.prompt) for r in engine.requests] == [True, True, False, False]
    assert result.report.wins == 2


def rated_store(path: Path) -> tuple[Store, dict[str, str]]:
    """A store with a disliked short answer, a liked long answer (session-level rating) and a
    HelixNet session whose final regeneration is liked."""
    store = Store(path)
    ids = {}
    s1 = store.record_session(
        "api", [NewMessage("user", "What is the capital of France?"), NewMessage("assistant", "Lyon")]
    )
    ids["down"] = store.get_messages(s1.id)[1].id
    store.add_rating("message", ids["down"], -1, "wrong")
    s2 = store.record_session(
        "api",
        [
            NewMessage("system", "Be helpful."),
            NewMessage("user", "Name a fox."),
            NewMessage("assistant", "The quick brown fox that jumps over the lazy dog, of course."),
            NewMessage("assistant", "other choice", meta={"choice": 1}),
        ],
    )
    store.add_rating("session", s2.id, 1)
    ids["up"] = store.get_messages(s2.id)[2].id
    s3 = store.record_session(
        "helixnet",
        [
            NewMessage("user", "turn one"),
            NewMessage("assistant", "draft", stage="actor"),
            NewMessage("assistant", "critique", stage="critic"),
            NewMessage("assistant", "final one", stage="regenerator"),
            NewMessage("user", "turn two"),
            NewMessage("assistant", "draft two", stage="actor"),
            NewMessage("assistant", "critique two", stage="critic"),
            NewMessage("assistant", "final two", stage="regenerator"),
        ],
    )
    store.add_rating("session", s3.id, 1)
    store.add_rating("session", s3.id, 1)  # twice: still one rated answer
    store.add_rating("message", store.get_messages(s3.id)[0].id, 1)  # a rated user message is skipped
    return store, ids


def test_rated_answers_find_the_rated_message_and_its_conversation(tmp_path: Path) -> None:
    store, ids = rated_store(tmp_path / "db.sqlite")
    with store:
        items = rated_answers(store)
        assert sorted(i.rating for i in items) == ["down", "up", "up"]
        by_answer = {i.answer: i for i in items}
        assert by_answer["Lyon"].message_id == ids["down"]
        assert by_answer["Lyon"].messages == ({"role": "user", "content": "What is the capital of France?"},)
        fox = by_answer["The quick brown fox that jumps over the lazy dog, of course."]
        assert fox.message_id == ids["up"] and fox.messages[0] == {"role": "system", "content": "Be helpful."}
        helix = by_answer["final two"]
        assert helix.messages == (
            {"role": "user", "content": "turn one"},
            {"role": "assistant", "content": "final one"},
            {"role": "user", "content": "turn two"},
        )
        assert [i.rating for i in rated_answers(store, rating="down")] == ["down"]
        assert len(rated_answers(store, limit=1)) == 1


def test_replay_sessions_reports_liked_and_disliked_apart(tmp_path: Path) -> None:
    store, _ = rated_store(tmp_path / "db.sqlite")
    engine = ScriptedEngine(lambda r: "Paris, the capital city.")  # longer than two rated answers
    with store:
        report = replay_sessions(store, engine, PairwiseJudge(VerdictEngine(longer)), adapter="new")
    assert (report.down.n, report.down.wins, report.down.win_rate) == (1, 1, 100.0)  # beats "Lyon"
    assert (report.up.n, report.up.wins, report.up.losses) == (2, 1, 1)  # loses to the long fox answer
    assert {r.adapter for r in engine.requests} == {"new"}
    row = next(r for r in report.rows if r.item.rating == "down")
    assert (row.new_answer, row.item.answer, row.verdict.winner) == ("Paris, the capital city.", "Lyon", "A")
    assert report.to_dict()["rows"][0]["rated_answer"]


def test_replay_without_ratings_is_a_clear_error(tmp_path: Path) -> None:
    with Store(tmp_path / "db.sqlite") as store, pytest.raises(HelixloomError, match="no rated answers"):
        replay_sessions(store, ScriptedEngine(["x"]), PairwiseJudge(VerdictEngine(longer)))


# ---------------------------------------------------------------------------- prompt files and templates


def test_load_prompts(tmp_path: Path) -> None:
    jl = tmp_path / "p.jsonl"
    jl.write_text(
        '{"prompt": "one"}\n\n{"instruction": "two"}\n'
        '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "three"}]}\n'
    )
    assert load_prompts(jl) == [
        "one",
        "two",
        [{"role": "system", "content": "s"}, {"role": "user", "content": "three"}],
    ]
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\n  second prompt  \n")
    assert load_prompts(txt) == ["first prompt", "second prompt"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(HelixloomError, match="line 2"):
        load_prompts(bad)
    bad.write_text(
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
    )
    with pytest.raises(HelixloomError, match="ending with a user message"):
        load_prompts(bad)
    bad.write_text("not json\n")
    with pytest.raises(HelixloomError, match="not JSON"):
        load_prompts(bad)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(HelixloomError, match="no prompts"):
        load_prompts(tmp_path / "empty.txt")
    with pytest.raises(HelixloomError, match="does not exist"):
        load_prompts(tmp_path / "missing.txt")


def test_judge_templates(tmp_path: Path) -> None:
    pair = JudgeTemplate.load(kind="pair")
    assert pair.name == "pair-v2" and pair.verdict_prefix.endswith("[[")
    assert JudgeTemplate.load(kind="single").name == "single-v1"
    custom = tmp_path / "mine.yaml"
    custom.write_text('system: ""\nuser: "Q {question} A {answer}"\nverdict_prefix: "Score: [["\n')
    assert JudgeTemplate.load(str(custom), kind="single").messages(question="q", answer="a") == [
        {"role": "user", "content": "Q q A a"}
    ]
    with pytest.raises(HelixloomError, match="answer_a"):
        JudgeTemplate.load(str(custom), kind="pair")
    with pytest.raises(HelixloomError, match="unknown judge template"):
        JudgeTemplate.load("pair-v9", kind="pair")


# ---------------------------------------------------------------------------- the command line


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_winrate_end_to_end(
    capsys: pytest.CaptureFixture[str], tiny_model: TinyModel, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "The quick brown fox"}\n{"prompt": "Paris is"}\n{"prompt": "Weave searches"}\n'
    )
    model = str(tiny_model.path)
    out_file = tmp_path / "report.json"
    code, out, err = run(
        capsys, "eval", "winrate", "--model", model, "--adapter", str(tiny_model.adapters["alpha"]),
        "--baseline", model, "--judge", model, "--prompts", str(prompts), "--max-tokens", "6",
        "--seed", "1", "--json", "--out", str(out_file),
    )  # fmt: skip
    assert code == 0, err
    body = json.loads(out)
    assert json.loads(out_file.read_text()) == body
    report, rows = body["report"], body["rows"]
    assert len(rows) == 3 and [r["prompt"] for r in rows] == [
        "The quick brown fox",
        "Paris is",
        "Weave searches",
    ]
    assert report["n"] == 3 and report["malformed"] == 0  # logprobs verdicts are never malformed
    winners = [r["winner"] for r in rows]
    assert (report["wins"], report["losses"], report["ties"]) == (
        winners.count("A"),
        winners.count("B"),
        winners.count("tie"),
    )
    assert report["raw_win_rate"] == pytest.approx((report["wins"] + report["ties"] / 2) / 3 * 100)
    # The random tiny judge states how consistent it was, and withholds its win rate when it is noise.
    assert report["consistency_n"] >= 1 and report["reliable"] == (report["consistency"] >= 50)
    assert report["win_rate"] == (report["raw_win_rate"] if report["reliable"] else None)
    assert all(0 <= r["preference"] <= 1 for r in rows)
    assert body["config"]["judge_mode"] == "logprobs" and body["config"]["adapter"] == "alpha"
    judged = [r for r in rows if r["answer_a"] != r["answer_b"]]
    assert all(r["forward"]["probs"] and r["backward"]["probs"] for r in judged)

    code, out, _ = run(
        capsys, "eval", "winrate", "--model", model, "--adapter", str(tiny_model.adapters["alpha"]),
        "--prompts", str(prompts), "--max-tokens", "6",
    )  # fmt: skip
    assert code == 0 and "win rate over B" in out and "judge consistency" in out
    assert ("withheld: the judge is unreliable" in out) != ("length-controlled" in out)


def test_cli_eval_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    code, _, err = run(capsys, "eval", "winrate", "--prompts", str(bad))
    assert code == 2 and "line 2" in err
    code, _, err = run(capsys, "eval", "winrate", "--prompts", str(tmp_path / "nope.txt"))
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "eval", "sessions", "--model", str(tmp_path))
    assert code == 2 and "error" in err


def test_cli_sessions_and_grade(
    capsys: pytest.CaptureFixture[str], tiny_model: TinyModel, helixloom_home: Path, tmp_path: Path
) -> None:
    model = str(tiny_model.path)
    code, _, err = run(capsys, "eval", "sessions", "--model", model, "--max-tokens", "4")
    assert code == 2 and "no rated answers" in err
    from helixloom.paths import ensure_home

    ensure_home()
    with Store.open_default() as store:
        session = store.record_session(
            "api", [NewMessage("user", "Paris is"), NewMessage("assistant", "the capital of France.")]
        )
        store.add_rating("message", store.get_messages(session.id)[1].id, 1, "right")
    code, out, err = run(capsys, "eval", "sessions", "--model", model, "--max-tokens", "6", "--json")
    assert code == 0, err
    body = json.loads(out)
    assert body["up"]["n"] + body["up"]["malformed"] == 1 and body["down"]["n"] == 0
    [row] = body["rows"]
    assert (row["rating"], row["rated_answer"], row["prompt"]) == ("up", "the capital of France.", "Paris is")
    code, out, _ = run(capsys, "eval", "sessions", "--model", model, "--max-tokens", "6", "--rating", "up")
    assert code == 0 and "against answers rated up" in out
    code, _, err = run(capsys, "eval", "sessions", "--model", model, "--rating", "down")
    assert code == 2 and "no rated answers" in err

    # Grading: a short custom template (the tiny model's context is 512 tokens), rating read after "[[".
    template = tmp_path / "grade.yaml"
    template.write_text('user: "Q: {question}\\nA: {answer}\\nRate 1-10."\nverdict_prefix: "Rating: [["\n')
    prompts = tmp_path / "p.txt"
    prompts.write_text("The quick brown fox\nParis is\n")
    code, out, err = run(
        capsys, "eval", "grade", "--model", model, "--prompts", str(prompts),
        "--judge-template", str(template), "--no-explanation", "--max-tokens", "6", "--json",
    )  # fmt: skip
    assert code == 0, err
    body = json.loads(out)
    assert body["report"]["count"] == 2 and len(body["rows"]) == 2
    valid = [r for r in body["rows"] if not r["malformed"]]
    assert body["report"]["malformed"] == 2 - len(valid)
    assert all(1 <= r["rating"] <= 10 for r in valid) and all(
        r["text"].startswith("Rating: [[") for r in body["rows"]
    )


def test_liked_helixnet_sessions_become_rows_that_match_inference(tmp_path: Path) -> None:
    from helixloom.training.data import liked_rows

    store, _ = rated_store(tmp_path / "db.sqlite")
    with store:
        rows = [r["messages"] for r in liked_rows(store) if "messages" in r]
    helix = next(r for r in rows if r[0]["content"] == "turn one")
    # The conversation the model is served: no actor draft or critique as an earlier assistant turn.
    assert helix == [
        {"role": "user", "content": "turn one"},
        {"role": "assistant", "content": "final one"},
        {"role": "user", "content": "turn two"},
        {"role": "assistant", "content": "final two"},
    ]
    fox = next(r for r in rows if r[0]["role"] == "system")
    assert [m["content"] for m in fox][-1] == "The quick brown fox that jumps over the lazy dog, of course."
