"""Answers of the kind their question asks for (``evals.answer_kind``): the cues, the check, and the
next likeliest opening taken when the greedy answer is of another kind."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helixloom.engine import (
    AbortCheck,
    BatchEvent,
    GeneratedTokenLogprobs,
    GenerationRequest,
    GenerationResult,
    Timings,
    TokenLogprob,
    Usage,
    sampling,
)
from helixloom.errors import HelixloomError
from helixloom.evals import answer_kind
from helixloom.evals.answer_kind import Kind
from tests.scripted import ScriptedEngine


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("Roughly how many households will the barrier shield?", Kind.NUMBER),
        ("How long is the guarantee?", Kind.NUMBER),
        ("How often should the pad be cleaned?", Kind.NUMBER),
        ("What is the total price tag?", None),  # "price tag", not "what price": no cue
        ("At what temperature do the eggs hatch?", Kind.NUMBER),
        ("On which day did the council decide?", Kind.DATE),
        ("By when is the work expected to be complete?", Kind.DATE),
        ("In what year was it built?", Kind.DATE),
        ("Who makes the T-30?", None),
        ("What does an E2 fault indicate?", None),
        ("When should you clean it?", None),  # "when" is as often a condition as a date
    ],
)
def test_the_kind_a_question_asks_for(question: str, kind: Kind | None) -> None:
    assert answer_kind.expected(question) is kind


@pytest.mark.parametrize(
    ("kind", "answer", "ok"),
    [
        (Kind.NUMBER, "It protects about 260 homes.", True),
        (Kind.NUMBER, "It lasts two years.", True),
        (Kind.NUMBER, "Clean it once a month.", True),
        (Kind.NUMBER, "The wall would block views from the path.", False),
        # a citation's hex digits and a --title-first answer's title are not the answer's number
        (Kind.NUMBER, "The wall would block views. [DOC_ID:7c2c92267f]", False),
        (Kind.NUMBER, 'From "Trimlark T-30: 2 minute guide": Press GO. [DOC_ID:2428723d2f]', False),
        (Kind.DATE, "The council voted on 3 March.", True),
        (Kind.DATE, "It is due to finish by spring 2028.", True),
        (Kind.DATE, "It opened on the 21st.", True),
        (Kind.DATE, "On day 18, lay the eggs flat; they hatch around day 21.", True),
        (Kind.DATE, "The council agreed to consider a 150-metre section.", False),
        (None, "Anything at all.", True),
    ],
)
def test_whether_an_answer_is_of_a_kind(kind: Kind | None, answer: str, ok: bool) -> None:
    assert answer_kind.satisfies(kind, answer) is ok


@given(st.text(max_size=80), st.integers(min_value=0, max_value=10**6))
def test_any_text_with_a_number_of_its_own_is_a_number(text: str, n: int) -> None:
    assert answer_kind.satisfies(None, text)
    assert answer_kind.satisfies(Kind.NUMBER, f"{text} {n} ")


class Openings(ScriptedEngine):
    """Greedy answers and their first step's alternatives, as a real engine returns them.

    ``answers`` maps a question to (greedy answer, [alternative first tokens]); a prompt that
    continues an opening gets ``continuations[opening]``."""

    def __init__(self, answers: dict[str, tuple[str, list[str]]], continuations: dict[str, str]) -> None:
        super().__init__(lambda r: "")
        self.answers = answers
        self.continuations = continuations

    def stream_batch(
        self, requests: Sequence[GenerationRequest], *, abort: AbortCheck | None = None
    ) -> Iterator[BatchEvent]:
        for row, request in enumerate(requests):
            self.requests.append(request)
            logprobs = None
            question = next(q for q in self.answers if q in request.prompt)
            if request.prompt.endswith("ASSISTANT: "):  # a question, not an opening to continue
                greedy, alternatives = self.answers[question]
                text = greedy
                if request.sampling.logprobs:
                    tokens = [" " + greedy.split(" ")[0], *alternatives]
                    top = tuple(TokenLogprob(i + 1, t, -float(i)) for i, t in enumerate(tokens))
                    logprobs = (GeneratedTokenLogprobs(top[0], top[: request.sampling.logprobs + 1]),)
            else:
                opening = next(o for o in self.continuations if request.prompt.endswith(o))
                text = self.continuations[opening]
            yield row, GenerationResult(text, "stop", Usage(1, 1), (), Timings(), logprobs)


def test_an_answer_of_another_kind_is_replaced_by_the_likeliest_opening_of_the_kind() -> None:
    engine = Openings(
        {
            "How many homes will it protect?": ("The wall blocks views.", [" Bertram", " The", " About"]),
            "Who chairs the society?": ("Bertram Oakhewn chairs it.", [" The"]),
            "On which day did it vote?": ("The council agreed.", [" Later", " Soon"]),
        },
        {
            " Bertram": " Oakhewn warned about the wall.",
            " The": " wall protects 260 homes.",
            " About": " 260 homes.",
            " Later": " it agreed again.",
            " Soon": " after that.",
        },
    )
    questions = ["How many homes will it protect?", "Who chairs the society?", "On which day did it vote?"]
    answers = answer_kind.answer(engine, questions, sampling(temperature=0, max_tokens=16), openings=4)
    # the first alternative in the model's order that gives a number wins, not the shortest one
    assert answers == ["The wall protects 260 homes.", "Bertram Oakhewn chairs it.", "The council agreed."]
    first_pass, tries = engine.requests[:3], engine.requests[3:]
    # the alternatives are asked for only where a question has a kind to check
    assert [r.sampling.logprobs for r in first_pass] == [3, None, 3]
    assert first_pass[0].sampling.token_healing and first_pass[0].prompt.endswith("ASSISTANT: ")
    # only the answers of the wrong kind were tried again, each from its alternatives (not its own),
    # the opening's space taking the place of the one the healed prompt ended with
    tried = [("How many homes", "Bertram"), ("How many homes", "The"), ("How many homes", "About")]
    tried += [("On which day", "Later"), ("On which day", "Soon")]
    assert len(tries) == len(tried)
    for request, (question, opening) in zip(tries, tried, strict=True):
        assert question in request.prompt and request.prompt.endswith(f"ASSISTANT: {opening}")
    assert all(r.sampling.logprobs is None and r.sampling.max_tokens == 15 for r in tries)


def test_a_replaced_result_is_the_opening_and_its_continuation() -> None:
    """``results`` (what chat uses on its own rendered conversation) returns whole results: a
    replaced one's text starts with the opening, and the logprobs the check asked for are not passed
    on to a caller that did not ask for them (nor can a caller ask for its own)."""
    from helixloom.evals import prompts

    engine = Openings(
        {"How many homes?": ("The wall blocks views.", [" About"]), "Who?": ("Bertram.", [" The"])},
        {" About": " 260 homes."},
    )
    params = sampling(temperature=0, max_tokens=16)
    requests = prompts.answer_requests(engine, ["How many homes?", "Who?"], params, None, None)
    replaced, kept = answer_kind.results(engine, requests, [Kind.NUMBER, None])
    assert replaced.text == "About 260 homes." and replaced.logprobs is None
    assert kept.text == "Bertram." and kept.logprobs is None
    with pytest.raises(HelixloomError, match="one entry per request"):
        answer_kind.results(engine, requests, [None])
    wants = [replace(r, sampling=r.sampling.model_copy(update={"logprobs": 2})) for r in requests]
    with pytest.raises(HelixloomError, match="cannot ask for logprobs"):
        answer_kind.results(engine, wants, [Kind.NUMBER, None])
    assert answer_kind.results(engine, wants, [None, None])[0].logprobs  # unchecked: as asked


def test_the_answers_of_a_real_model_are_its_greedy_ones_where_the_kind_is_met(tiny_engine) -> None:
    from helixloom.evals import prompts

    questions = ["What colour is the Zorblax?", "How many legs does a Zorblax have?", "Which year was it?"]
    params = sampling(temperature=0, max_tokens=6)
    greedy = prompts.answer(tiny_engine, questions, params)
    checked = answer_kind.answer(tiny_engine, questions, params)
    assert len(checked) == 3 and checked[0] == greedy[0]  # no kind: untouched
    for question, plain, answer in zip(questions[1:], greedy[1:], checked[1:], strict=True):
        kind = answer_kind.expected(question)
        # the greedy answer when it is of the kind (or nothing else is); else one that is
        assert answer == plain or (
            answer_kind.satisfies(kind, answer) and not answer_kind.satisfies(kind, plain)
        )
    with pytest.raises(HelixloomError, match="openings"):
        answer_kind.answer(tiny_engine, questions, params, openings=0)


def test_a_real_model_continues_its_next_likeliest_opening(tiny_engine, monkeypatch) -> None:
    """With every answer but the greedy one taken as of the kind, the answer is the model's second
    likeliest first token, continued: the prompt healed and continued as the engine itself would."""
    from helixloom.evals import prompts

    question = "How many legs does a Zorblax have?"
    params = sampling(temperature=0, max_tokens=6)
    (greedy,) = prompts.answer(tiny_engine, [question], params)
    monkeypatch.setattr(
        answer_kind, "satisfies", lambda kind, answer: kind is None or answer.strip() != greedy
    )
    request = prompts.answer_requests(
        tiny_engine, [question], params.model_copy(update={"logprobs": 7}), None, None
    )
    (first,) = tiny_engine.generate(request)
    assert first.text.strip() == greedy and first.logprobs
    step = first.logprobs[0]
    second = next(t for t in step.top if t.token_id != step.chosen.token_id and t.token)
    (answer,) = answer_kind.answer(tiny_engine, [question], params)
    assert answer != greedy and answer.startswith(second.token.strip()[:1])
    # the continuation is the model's own: asked again from that opening, it says the same
    opened, again = answer_kind._continued(request[0], second.token)
    (continued,) = tiny_engine.generate([again])
    assert answer == (opened + continued.text).strip()
