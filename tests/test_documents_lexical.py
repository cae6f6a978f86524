"""Synonym swaps of questions (documents/lexical.py): lemmatise, inflect, propose, and keep what the
teacher finds likely; wired into learn's preparation with its own checkpoint."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from helixloom.documents import lexical
from helixloom.documents.grounded import Pair
from helixloom.engine import PromptLogprobs
from helixloom.errors import HelixloomError
from tests.scripted import ScriptedEngine


def test_words_are_lemmatised_and_synonyms_inflected_back_to_the_words_form() -> None:
    readings = set(lexical.lemmas("leads"))
    assert ("lead", "v", "s") in readings
    assert ("stop", "v", "ed") in set(lexical.lemmas("stopped"))
    assert ("make", "v", "ed") in set(lexical.lemmas("made"))  # irregular, from WordNet's verb.exc
    assert ("large", "a", "est") in set(lexical.lemmas("largest"))
    assert lexical.inflect("head", "v", "s") == ["heads"]
    assert lexical.inflect("carry", "v", "ed") == ["carried"]
    assert lexical.inflect("stop", "v", "ing") == ["stopping"]
    assert lexical.inflect("take", "v", "ing") == ["taking"]
    assert "went" in lexical.inflect("go", "v", "ed")
    assert lexical.inflect("box", "n", "s") == ["boxes"]
    # WordNet's exception lists mix tenses: the form comes from the word, not from the list
    assert ("run", "v", "ing") in set(lexical.lemmas("running"))
    assert ("run", "v", "ed") not in set(lexical.lemmas("running"))
    assert lexical.inflect("go", "v", "s") == ["gos"] or "went" not in lexical.inflect("go", "v", "s")
    assert not {"took", "taken"} & set(lexical.inflect("take", "v", "s"))
    assert lexical.inflect("put", "v", "ed") == ["put"]
    assert lexical.inflect("photo", "n", "s") == ["photos"] and lexical.inflect("potato", "n", "s") == [
        "potatoes"
    ]
    assert ("be", "n", "s") not in set(lexical.lemmas("bees"))  # bee + s, not be + es


def test_proposals_swap_one_word_and_never_the_answer_nor_a_name() -> None:
    question = "How often should you replace the wick of the Vorrick lamp?"
    out = lexical.proposals(question, ["wick"], lambda w: True)
    assert "How often should you supersede the wick of the Vorrick lamp?" in out
    for text in out:
        assert "wick" in text and "Vorrick" in text  # the answer's word and the name stay
        changed = [a for a, b in zip(question.split(), text.split(), strict=True) if a != b]
        assert len(changed) == 1
    assert lexical.proposals(question, ["wick"], lambda w: False) == []  # no synonym is common enough
    # the word after "how", quantities and times, and words with apostrophes or hyphens stay
    for text in lexical.proposals("How many minutes does the well-known test take?", [], lambda w: True):
        assert text.startswith("How many minutes does the well-known ")
    # after a determiner a word is read as a noun: "the test" -> "the trial", never "the examine"
    swaps = lexical.proposals("How long is the test?", [], lambda w: True)
    assert "How long is the trial?" in swaps and "How long is the examine?" not in swaps


def test_proposals_take_turns_between_words_so_a_cap_reaches_every_word() -> None:
    out = lexical.proposals("Who will count the animals every spring?", [], lambda w: True)
    first_two = {
        next(
            a
            for a, b in zip(
                out[i].split(), ["Who", "will", "count", "the", "animals", "every", "spring?"], strict=True
            )
            if a != b
        )
        for i in range(2)
    }
    assert len(first_two) == 2  # the first two proposals swap two different words


class Scorer(ScriptedEngine):
    """Tokenizes by words and scores a text by the words it likes (the teacher's verdict, scripted)."""

    supports_prompt_logprobs = True
    supports_tokenize = True

    def __init__(self, likes: dict[str, float], default: float = -1.0) -> None:
        super().__init__(lambda r: "")
        self.likes = likes
        self.default = default

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return [0] * len(text.split())

    def prompt_logprobs(
        self, prompts: Sequence[str], *, adapter: str | None = None, top_k: int = 0
    ) -> list[PromptLogprobs]:
        out = []
        for p in prompts:
            words = p.rstrip("?").split()
            lps = tuple(self.likes.get(w.lower(), self.default) for w in words)
            out.append(
                PromptLogprobs(tuple(range(len(words))), tuple(words), lps, tuple(None for _ in words))
            )
        return out


def test_the_teacher_keeps_the_likeliest_swaps_within_the_margin_answers_unchanged() -> None:
    pair = Pair(
        "How often should you replace the wick?",
        "Replace the wick every 200 hours.",
        "200",
        "d1",
        "numbers",
        3,
    )
    # the proposals come as supplant, supersede, supercede; the teacher likes "supersede" best, then
    # "supplant" (both within 3 nats of "replace"), and every other word far less (-5 against -1)
    teacher = Scorer(
        {w: -1.0 for w in ["question:", "how", "often", "should", "you", "replace", "the", "wick"]}
        | {"supplant": -3.5, "supersede": -1.5},
        default=-5.0,
    )
    report = lexical.lexical_pairs(teacher, [pair], per_question=1, margin=3.0)
    assert [p.question for p in report.pairs] == ["How often should you supersede the wick?"]
    kept = report.pairs[0]
    assert (kept.answer, kept.key, kept.doc_id, kept.fact, kept.perspective) == (
        pair.answer,
        pair.key,
        pair.doc_id,
        pair.fact,
        "lexical",
    )
    assert report.scored == 3 and report.dropped == {"unlikely": 1, "enough": 1}
    # a statement ("State a fact about X.") is not a question: nothing to swap
    assert lexical.lexical_pairs(teacher, [Pair("State a fact.", "x", "x", "d1", "statement", 0)]).pairs == []


def test_learn_adds_the_swaps_to_the_mix_and_a_resume_reuses_the_finished_phase(tmp_path) -> None:
    from helixloom.documents import dataset
    from helixloom.training import learn

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "lamp.md").write_text(
        "# The Vorrick lamp\n\nThe Vorrick lamp is a portable lamp for tents.\n\n"
        "Replace the wick after every 200 hours of use.\n"
    )
    teacher = Scorer({})  # every swap as likely as its original: the first ones are kept
    heard: list[object] = []
    learn.prepare(
        "lamp",
        [docs],
        teacher,
        base="default",
        num_questions=0,
        synonyms=1,
        on_phase=heard.append,
        on_progress=lambda done, total: heard.append((done, total)),
    )
    # every teacher phase is named, then counts up to its own total (the CLI's progress bar)
    phases = [h for h in heard if isinstance(h, str)]
    assert phases == ["rephrasing questions", "synonym swaps"]
    after_swaps = heard[heard.index("synonym swaps") + 1 :]
    assert after_swaps and after_swaps[-1][0] == after_swaps[-1][1] > 0  # type: ignore[index]
    rows, meta = dataset.read("lamp")
    kept = meta["mix"]["pairs_kept"].get("lexical", 0)
    assert kept > 0
    trained = [r for r in rows if r["meta"].get("prompt") == "lexical"]
    assert len(trained) >= kept  # swaps are made from the training questions, all trained on (some twice)
    held = [
        json.loads(x)["question"] for x in (dataset.folder("lamp") / learn.HELDOUT).read_text().splitlines()
    ]
    swaps = {r["messages"][-2]["content"] for r in trained}
    assert held and not swaps & set(held)

    class Refuses(Scorer):
        def prompt_logprobs(self, prompts, *, adapter=None, top_k=0):  # type: ignore[no-untyped-def]
            raise AssertionError("the finished phase was asked again")

    saved = dataset.folder("again") / dataset.SWAPPED
    saved.parent.mkdir(parents=True)
    swapped = lexical.LexicalReport([Pair("How frequently?", "a", "a", "d", "lexical", 0)], 1, 1, {})
    import dataclasses

    from helixloom import atomic

    atomic.write_json(saved, dataclasses.asdict(swapped))
    question = Pair("How often should you replace the wick?", "a", "a", "d", "numbers", 0)
    report = learn._swapped(saved, Refuses({}), [question], lambda _: None, 1, lambda _: None, None)
    assert [p.question for p in report.pairs] == ["How frequently?"]
    with pytest.raises(HelixloomError):
        learn.prepare("bad", [docs], teacher, base="default", num_questions=0, synonyms=-1)
    for rephrasings in (0, learn.MAX_REPHRASINGS + 1):  # a teacher call each: bounded, as over HTTP
        with pytest.raises(HelixloomError, match="rephrasings"):
            learn.prepare("bad", [docs], teacher, base="default", num_questions=0, rephrasings=rephrasings)
    # a teacher that cannot score tokens (a remote server) gets no swaps, and says so
    said: list[str] = []
    assert (
        learn._swapped(
            tmp_path / "none.json", ScriptedEngine(lambda r: ""), [], said.append, 1, lambda _: None, None
        ).pairs
        == []
    )
    assert "cannot score" in said[0]
