"""The kind of answer a question asks for, and answers made to be of that kind.

Classic question answering checks that an answer is of the type its question asks for (TREC QA's
answer types, Watson's lexical answer type): "how many" wants a number, "which day" a date. A
document adapter answers with one of its documents' sentences, and when it picks the wrong one for
a question in words the documents do not use, the pick is often of the wrong kind: "Roughly how many
households will the barrier shield?" answered with a sentence about the towpath's views, which holds
no number at all. ``answer`` keeps every greedy answer that is of its question's kind (and every
answer to a question with no kind here); for the rest it tries the model's next likeliest openings,
each continued greedily, and takes the first (likeliest opening first) that is of the kind, else
keeps the greedy answer. Only numbers and dates are checked: their cues are unambiguous in English
questions and their presence in an answer is a matter of words, not meaning.

Written by hand: the QA libraries that type answers (spaCy's NER, AllenNLP) need models downloaded
at run time; these few patterns need none.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from enum import Enum

from helixloom.engine import Engine, GenerationRequest, GenerationResult, SamplingParams, Usage
from helixloom.engine.citations import CitationSet
from helixloom.errors import HelixloomError
from helixloom.evals import prompts
from helixloom.evals.prompts import Prompt


class Kind(Enum):
    NUMBER = "number"
    DATE = "date"


_DATE_Q = re.compile(r"\b(?:what|which) (?:day|date|month|year)\b|\b(?:by|since|until) when\b", re.I)
_NUMBER_Q = re.compile(
    r"\bhow (?:many|much|long|far|big|large|high|tall|wide|deep|heavy|old|often|fast|hot|cold|warm|soon)\b"
    r"|\bwhat (?:percentage|proportion|number|amount|temperature|size|length|distance|age|price|cost|range)\b"
    r"|\bat what (?:age|temperature|speed|height)\b",
    re.I,
)
_NUMBER_WORDS = (
    r"one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen"
    r"|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|thousand"
    r"|million|billion|dozen|half|quarter|once|twice|every|hourly|daily|weekly|fortnightly|monthly|yearly"
    r"|annually"
)
_DATE_WORDS = (
    r"january|february|march|april|may|june|july|august|september|october|november|december|monday"
    r"|tuesday|wednesday|thursday|friday|saturday|sunday|spring|summer|autumn|fall|winter|today|tomorrow"
    r"|yesterday"
)
_HAS_NUMBER = re.compile(r"\d|\b(?:" + _NUMBER_WORDS + r")\b", re.I)
#: a date: a month, a weekday, a season, a year, "the 21st", or a day counted in a process ("on day 18")
_HAS_DATE = re.compile(
    r"\b(?:" + _DATE_WORDS + r")\b|\b\d{4}\b|\b\d{1,2}(?:st|nd|rd|th)\b|\b(?:day|week) \d{1,3}\b", re.I
)
#: What an answer's kind is not judged on: a citation's hex digits are not a number of the answer's,
#: nor is the document's title that ``learn --title-first`` answers open with.
_CITATION = re.compile(r"\[DOC_ID:[^\]]*\]")
_TITLE = re.compile(r'^\s*From "[^"]*":\s*')


def expected(question: str) -> Kind | None:
    """The kind of answer ``question`` asks for, or None where it asks for no kind checked here."""
    if _DATE_Q.search(question):
        return Kind.DATE
    if _NUMBER_Q.search(question):
        return Kind.NUMBER
    return None


def satisfies(kind: Kind | None, answer: str) -> bool:
    """Whether ``answer`` holds an answer of ``kind`` (always, for no kind)."""
    if kind is None:
        return True
    text = _CITATION.sub(" ", _TITLE.sub("", answer))
    pattern = _HAS_DATE if kind is Kind.DATE else _HAS_NUMBER
    return bool(pattern.search(text))


def answer(
    engine: Engine,
    questions: Sequence[str],
    params: SamplingParams,
    *,
    adapter: str | None = None,
    system: str | None = None,
    shown: Sequence[Prompt] | None = None,
    openings: int = 8,
    citations: CitationSet | None = None,
) -> list[str]:
    """Greedy answers to ``questions`` (``params`` should be greedy), each not of its question's kind
    replaced by the first of the next ``openings - 1`` likeliest openings' greedy continuations that
    is (see the module docstring). ``shown`` is what the model is asked for each question where that
    is more than the question (retrieved passages before it, or a conversation ending in it). Costs
    one batch, plus one batch of continuations when an answer is of the wrong kind."""
    if not questions:
        return []
    asked = list(shown) if shown is not None else list(questions)
    if len(asked) != len(questions):
        raise HelixloomError("shown needs one prompt per question")
    requests = prompts.answer_requests(engine, asked, params, adapter, system, citations=citations)
    kinds = [expected(q) for q in questions]
    return [r.text.strip() for r in results(engine, requests, kinds, openings=openings)]


def results(
    engine: Engine,
    requests: Sequence[GenerationRequest],
    kinds: Sequence[Kind | None],
    *,
    openings: int = 8,
) -> list[GenerationResult]:
    """Each request's result, or, where it is not of its ``kinds`` entry, the first of the next
    ``openings - 1`` likeliest openings' continuations that is. What ``answer`` does for questions,
    for requests a caller rendered itself (a chat's conversation); meant for greedy requests, and for
    requests that ask for no logprobs (the check asks for the alternatives itself, and a replaced
    answer has none). A replaced result's text starts with its opening; its tokens and usage are the
    continuation's, which on a local engine (transformers, llama.cpp) hold the opening too: the
    continuation is healed, so the engine backs up over the opening and writes it again."""
    if openings < 1:
        raise HelixloomError("openings must be at least 1")
    if len(kinds) != len(requests):
        raise HelixloomError("kinds needs one entry per request")
    if any(r.sampling.logprobs is not None for r, kind in zip(requests, kinds, strict=True) if kind):
        raise HelixloomError("a request whose kind is checked cannot ask for logprobs")
    alternatives = openings - 1
    asked = [
        r
        if kind is None or not alternatives
        else replace(r, sampling=r.sampling.model_copy(update={"logprobs": alternatives}))
        for r, kind in zip(requests, kinds, strict=True)
    ]
    first = engine.generate(asked) if asked else []
    # the alternatives' logprobs were the check's, not the caller's
    out = [
        res if req is ask else replace(res, logprobs=None)
        for req, ask, res in zip(requests, asked, first, strict=True)
    ]
    # (request's index, its kind, the text the opening adds to the answer, the continuation to ask)
    tries: list[tuple[int, Kind, str, GenerationRequest]] = []
    for i, (kind, request, result) in enumerate(zip(kinds, asked, first, strict=True)):
        if kind is None or satisfies(kind, result.text) or not alternatives or not result.logprobs:
            continue
        chosen = result.logprobs[0].chosen
        for alt in result.logprobs[0].top:
            if alt.token_id != chosen.token_id and alt.token:
                tries.append((i, kind, *_continued(request, alt.token)))
    done: set[int] = set()
    continued = engine.generate([t[3] for t in tries]) if tries else []
    for (i, kind, opened, _), result in zip(tries, continued, strict=True):
        text = opened + result.text
        if i not in done and satisfies(kind, text):
            was = first[i].usage
            out[i] = replace(
                result, text=text, usage=Usage(was.prompt_tokens, result.usage.completion_tokens)
            )
            done.add(i)
    return out


def _continued(request: GenerationRequest, opening: str) -> tuple[str, GenerationRequest]:
    """``request`` with ``opening`` (a token's text) written after its prompt, to continue from, and
    the text ``opening`` adds to the answer.

    A prompt that ends in a space (the text formats' "ASSISTANT: ") is healed by the engine: its
    first token is one that starts with the space, so ``opening`` starts with it and replaces it
    (the answer gets ``opening`` without that space). The continuation is healed too, since
    ``opening`` may end where the tokenizer would not."""
    prompt, opened = request.prompt, opening
    if request.sampling.token_healing and prompt.endswith(" ") and opening.startswith(" "):
        prompt, opened = prompt[:-1], opening[1:]
    sampling = request.sampling.model_copy(
        update={
            "logprobs": None,
            "token_healing": True,
            "max_tokens": max(1, request.sampling.max_tokens - 1),
        }
    )
    return opened, GenerationRequest(prompt + opening, sampling, request.adapter, citations=request.citations)
