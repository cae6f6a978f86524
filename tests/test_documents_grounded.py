"""Document learning's grounded pairs: built by code from the document, checked against it, rephrased
by a (scripted) teacher, mixed with the documents' text and replay, and retrieved by BM25."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helixloom.documents import grounded, grounding, mix, perspectives, rephrase, retrieval
from helixloom.documents.ingest import ingest
from helixloom.documents.questions import Suite, generate_pairs
from helixloom.engine import GenerationRequest
from tests.scripted import ScriptedEngine

NEWS = """# Quentmoor Council approves the Zorblax marsh reserve

On 14 March 2031 the Quentmoor Council voted 9 to 2 to protect the Velling Marsh as a reserve for the
Zorblax, a teal, six-legged reptile that lives nowhere else.

## What happens next

Councillor Ilse Varn, who proposed it, said the population had fallen to about 400 animals. Wardens
will count the animals every spring.
"""

MANUAL = """# Brask lamp: care guide

The Brask lamp is a solar lantern made by Odel Forge. Charge the battery for 6 hours before first use.
"""


@pytest.fixture
def documents(tmp_path: Path) -> list:
    (tmp_path / "news.md").write_text(NEWS)
    (tmp_path / "manual.md").write_text(MANUAL)
    return sorted(ingest([tmp_path]).documents, key=lambda d: d.source)


def test_every_perspective_produces_pairs_whose_answers_are_the_documents_text(documents: list) -> None:
    for doc in documents:
        built = perspectives.build_pairs(doc)
        assert set(built) == set(perspectives.PERSPECTIVES)
        for name, pairs in built.items():
            assert pairs, f"{name} made no pairs for {doc.title}"
            for p in pairs:
                assert p.question.strip() and p.doc_id == doc.doc_id and p.perspective == name
                text = " ".join(doc.text.split())
                if name == "title":  # the title, then the lead sentence
                    assert p.answer.startswith(doc.title) and p.answer[len(doc.title) + 2 :] in text
                elif name not in ("entity", "reverse"):  # entity descriptions are rewritten sentences
                    sentence = grounded.facts(doc)[p.fact].sentence
                    assert sentence in text and p.answer.endswith(sentence)
                    lead = p.answer[: -len(sentence)]  # numbers and some forms: the asked-for span first
                    assert not lead or p.key.lower() in lead.lower()
    news = perspectives.build_pairs(next(d for d in documents if "Zorblax" in d.title))
    span = {p.key: p.question for p in news["span"]}
    assert span["On 14 March 2031"].startswith("When the Quentmoor Council voted")
    assert "how many animals" in span["about 400"]
    assert span["Ilse Varn"].startswith("Councillor who,")  # a person's name: who
    entity = {p.question: p.answer for p in news["entity"]}
    assert entity["What is the Zorblax?"] == "Zorblax is a teal, six-legged reptile."
    # every fact is also asked about with the document's subject named, in natural question forms
    anchored = {p.question: p for p in news["anchored"]}
    subject = next(
        t
        for t in ("Zorblax", "Quentmoor Council")
        if f"For the {t}: wardens will count the animals when?" in anchored
    )
    assert anchored[f"What do you know about the animals of the {subject}?"].answer.startswith(
        "Wardens will count"
    )
    forms = {p.question: p for p in news["forms"]}
    assert "What will wardens count?" in forms
    assert (
        forms["The population had fallen to how many animals?"].key == "about 400"
    )  # the clause after "said"
    reverse = {p.question: p.key for p in news["reverse"]}
    assert reverse["What is a teal, six-legged reptile?"] == "Zorblax"
    manual = perspectives.build_pairs(next(d for d in documents if "Brask" in d.title))
    forms = {p.question: p.key for p in manual["forms"]}
    assert "What should you do with the battery of the Brask?" in forms  # an instruction, its subject named
    assert any(
        q.startswith("For the Brask: charge the battery for how long")
        for q in [p.question for p in manual["anchored"]]
    )
    titles = [p.question for p in news["title"]]
    assert "What is the council going to do?" in titles  # a vague, generalised title question
    assert all(p.answer.startswith("Quentmoor Council approves") for p in news["title"])


def test_grounding_keeps_a_supported_pair_and_drops_the_others() -> None:
    chunk = "The Zorblax is a teal, six-legged reptile. It eats glowing moss."
    assert grounding.check("What colour is the Zorblax?", "The Zorblax is teal.", chunk) is None
    assert grounding.check("What does the Zorblax eat?", "It eats moss, glowing moss.", chunk) is None
    assert grounding.check(
        "What colour is the Zorblax?", "The Zorblax is bright purple with wings.", chunk
    ) == ("unsupported")
    assert (
        grounding.check("How many legs has the Zorblax?", "The Zorblax has 8 legs.", chunk) == "unsupported"
    )
    assert grounding.check("Who won the 1998 football world cup?", "France won it.", chunk) == "off_document"
    assert grounding.check("What is the title of the document?", "The Zorblax.", chunk) == "instruction_echo"
    prompt = "You are an intelligent professor writing quiz questions for students"
    assert grounding.check(
        "Zorblax professor?", "An intelligent professor writing quiz", chunk, [prompt]
    ) == ("instruction_echo")


def test_the_teachers_pairs_are_grounded_and_the_dropped_counted_per_prompt(documents: list) -> None:
    def reply(request: GenerationRequest) -> str:
        pairs = [
            {"question": "What colour is the Zorblax?", "answer": "The Zorblax is teal."},
            {"question": "What colour is the Zorblax's egg?", "answer": "Its eggs are golden and round."},
            {"question": "Who wrote Hamlet?", "answer": "William Shakespeare."},
        ]
        return json.dumps({"pairs": pairs})

    news = [d for d in documents if "Zorblax" in d.title]
    suite = Suite.load().only(["simple-quiz"])
    report = generate_pairs(ScriptedEngine(reply), news, suite, one_at_a_time=False)
    assert [p.question for p in report.pairs] == ["What colour is the Zorblax?"]
    assert report.stats["simple-quiz"].dropped == {"unsupported": 1, "off_document": 1}
    assert "not grounded" in report.summary()
    ungrounded = generate_pairs(ScriptedEngine(reply), news, suite, one_at_a_time=False, grounded=False)
    assert len(ungrounded.pairs) == 3


def test_the_teacher_rephrases_and_code_checks_the_rephrasing(documents: list) -> None:
    news = next(d for d in documents if "Zorblax" in d.title)
    pairs = [p for ps in perspectives.build_pairs(news).values() for p in ps]

    def reply(request: GenerationRequest) -> str:
        rough = request.prompt.rsplit("Rough: ", 1)[1].split("\n")[0]
        if "how many animals" in rough:
            return " How many animals are left?\nRough: more"
        if rough.startswith("When"):
            return " When did the council vote on 14 March 2031?"  # gives the answer away
        if "every spring" in rough:
            return " What time does the bakery open on Sundays?"  # an example copied
        if "Velling Marsh" in rough:
            return "Rough: " + rough  # the label copied: not a question
        return " Nothing to say"

    report = rephrase.rephrase(ScriptedEngine(reply), pairs)
    assert report.calls == sum(p.perspective == "span" for p in pairs)
    [kept] = report.pairs
    assert kept.question == "How many animals are left?" and kept.perspective == "rephrase"
    assert "400 animals" in kept.answer
    assert report.dropped["leaks_answer"] == 1 and report.dropped["not_a_question"] >= 2
    assert report.dropped.get("copies_example", 0) + report.dropped.get("off_document", 0) >= 1


def test_balance_repeats_the_pairs_of_rarely_asked_facts_up_to_the_median() -> None:
    def pairs(fact: int, n: int) -> list[grounded.Pair]:
        return [grounded.Pair(f"q{fact}.{i}?", f"a{fact}", "k", "d", "span", fact) for i in range(n)]

    rare, usual, common = pairs(0, 1), pairs(1, 3), pairs(2, 7)
    out = mix.balance([*rare, *usual, *common])
    per_fact = {f: [p for p in out if p.fact == f] for f in (0, 1, 2)}
    assert [len(per_fact[f]) for f in (0, 1, 2)] == [3, 3, 7]  # the median is 3
    assert set(per_fact[0]) == set(rare) and per_fact[2] == common  # only repeats, nothing new or lost
    two = pairs(3, 2)
    assert sorted(p.question for p in mix.balance([*two, *rare])) == ["q0.0?", "q0.0?", "q3.0?", "q3.1?"]
    assert mix.balance([]) == []


def test_the_mix_holds_out_questions_tags_documents_and_replays_general_text(documents: list) -> None:
    pairs = [p for d in documents for ps in perspectives.build_pairs(d).values() for p in ps]
    train, held = mix.split_heldout(pairs, 0.15)
    assert held and len(train) + len(held) == len(pairs)
    trained_facts = {(p.doc_id, p.fact) for p in train}
    assert all((p.doc_id, p.fact) in trained_facts for p in held)  # every held-out fact is still taught
    assert not {p.question for p in held} & {p.question for p in train}
    rows = mix.pair_rows(train)
    answers = [r["messages"][1]["content"] for r in rows]
    assert all(a.endswith(f"[DOC_ID:{r['meta']['doc_id']}]") for a, r in zip(answers, rows, strict=True))
    tagged = [r for r in rows if r["messages"][0]["content"].startswith("In document ")]
    assert 0 < len(tagged) < len(rows)
    doc_rows = mix.document_rows(documents[0])
    assert doc_rows[0]["text"].startswith(f"[DOC_ID:{documents[0].doc_id}] {documents[0].title}")
    words = sum(mix.row_words(r) for r in rows)
    general = [f"Paragraph {i} of the base model's own writing, " + "word " * 40 for i in range(30)]
    replay = mix.replay_rows(words, 0.1, general)
    replay_words = sum(mix.row_words(r) for r in replay)
    assert 0.08 <= replay_words / (words + replay_words) <= 0.3
    assert len({r["text"] for r in replay}) == len(replay)  # none repeated while others are unused
    assert mix.replay_rows(words, 0.0, general) == [] and mix.replay_rows(words, 0.1, []) == []


def test_context_rows_show_the_answering_passage_and_a_distractor(documents: list) -> None:
    pairs = [p for d in documents for ps in perspectives.build_pairs(d).values() for p in ps]
    found = retrieval.passages(documents)
    assert len(found) >= 2
    rows = mix.context_rows(pairs, found, 0.5)
    assert 0.3 * len(pairs) <= len(rows) <= 0.7 * len(pairs)  # about the share asked
    assert len(mix.context_rows(pairs, found, 1.0)) == len(pairs) and not mix.context_rows(pairs, found, 0)
    by_question = {p.question: p for p in pairs}
    firsts = set()
    for row in rows:
        user, answer = (m["content"] for m in row["messages"])
        pair = by_question[user.rsplit("Answer from the passages. ", 1)[1]]
        shown = [x for x in found if f"[DOC_ID:{x.doc_id}] {x.text}" in user]
        assert len(shown) == 2 and shown[0] != shown[1]  # the passage that answers, and a distractor
        order = sorted(shown, key=lambda x: user.index(x.text))
        assert user == retrieval.with_context(pair.question, order)  # the prompt retrieval shows
        firsts.add(any(t.doc_id == pair.doc_id for t in order[:1]))
        assert answer == f"{pair.answer} [DOC_ID:{pair.doc_id}]" and row["meta"]["context"] is True
        if pair.perspective in ("span", "numbers"):  # the key is the document's own words
            assert any(pair.key.lower() in x.text.lower() for x in shown if x.doc_id == pair.doc_id)
    assert firsts == {True, False} or len(rows) < 4  # the answering passage is not always first


def test_bm25_finds_the_passage_that_answers(documents: list) -> None:
    index = retrieval.BM25(retrieval.passages(documents))
    [best] = index.search("Who makes the Brask lantern?", k=1)
    assert "Odel Forge" in best.text
    [best] = index.search("How many Zorblaxes are left?", k=1)
    assert "400 animals" in best.text
    prompt = retrieval.with_context("Q?", [best])
    assert f"[DOC_ID:{best.doc_id}]" in prompt and prompt.endswith("Q?")


def test_every_number_is_asked_in_several_natural_phrasings_and_answered_number_first(tmp_path: Path) -> None:
    (tmp_path / "heater.md").write_text(
        "# Vorrick T-40: quick reference\n\n"
        "The Vorrick T-40 is a portable heater for tents, made by Halvane Works in Lund. The tank holds 1.8 "
        "litres, which lasts about 11 hours on the low setting. Place the heater at least 90 centimetres "
        "from any tent wall. Fill the tank with lamp oil only. Replace the wick after every 200 hours of "
        "use. The T-40 comes with a 3-year warranty.\n"
    )
    doc = ingest([tmp_path]).documents[0]
    built = perspectives.build_pairs(doc)
    numbers = {p.question: p for p in built["numbers"]}
    # (question, the number it asks for, the unit said with it in the answer's first words)
    for question, key, lead in (
        ("How much does the tank hold?", "1.8", "1.8 litres."),
        ("How long does the tank last on the low setting?", "11", "About 11 hours."),
        ("How long does the Vorrick T-40 last on the low setting?", "11", "About 11 hours."),
        ("How far from any tent wall should you place the heater?", "90", "At least 90 centimetres."),
        ("How far should you place the heater from any tent wall?", "90", "At least 90 centimetres."),
        ("How often should you replace the wick?", "200", "Every 200 hours."),
        ("After how many hours of use should you replace the wick?", "200", "Every 200 hours."),
        ("How long is the warranty of the T-40?", "3", "A 3-year warranty."),
    ):
        pair = numbers[question]
        assert pair.key == key and pair.answer.startswith(lead), (question, pair.answer)
        sentence = pair.answer[len(lead) :].strip()
        assert sentence in " ".join(doc.text.split()) and key in sentence  # the document's own sentence
    # every quantity is asked in more than one pair, and the rough clozes are still there
    for key in ("1.8", "11", "90", "200", "3"):
        assert sum(p.key == key for p in built["numbers"]) >= 2, key
    assert any("how many hours" in p.question for p in built["span"])
    forms = {p.question: p for p in built["forms"]}
    assert forms["What should you fill the tank with?"].answer.startswith("Lamp oil only. Fill the tank")


def test_counts_dates_and_named_subjects_are_asked_for_naturally(documents: list) -> None:
    news = perspectives.build_pairs(next(d for d in documents if "Zorblax" in d.title))
    numbers = {p.question: p for p in news["numbers"]}
    assert numbers["How many legs does the Zorblax have?"].answer.startswith("Six legs. On 14 March 2031")
    assert numbers["How many legs does the Zorblax have?"].key == "six"
    assert numbers["When did the council vote?"].answer.startswith("On 14 March 2031. On 14 March 2031")
    assert numbers["In what year did the Quentmoor Council vote?"].key == "2031"
    assert numbers["How often will wardens count the animals?"].answer.startswith("Every spring. Wardens")
    assert "When will wardens count the animals?" in numbers
    assert numbers["How many animals had the population fallen to?"].answer.startswith("About 400 animals.")


def test_a_key_fact_counts_as_words_of_its_own_not_inside_another_word() -> None:
    from helixloom.evals.keyfacts import has_fact

    assert has_fact("heat", "The red dial sets the heat from 1 to 5.")
    assert not has_fact("heat", "The red knob turns the heater on and off.")  # another word
    assert has_fact("reserve|protect", "The council protected the marsh.")  # an inflection
    assert has_fact("six", "a teal, six-legged reptile") and has_fact("moss", "They eat mosses.")
    assert not has_fact("400", "about 1400 animals") and has_fact("400", "about 400 animals")
    assert has_fact("3-year|three year", "It comes with a 3-year warranty.")
    assert has_fact("90 centimetres", "at least 90  Centimetres away")  # case and spaces do not matter


def test_a_question_file_whose_facts_are_regular_expressions_is_refused(tmp_path: Path) -> None:
    """Facts are plain text: a regular expression would be searched for literally and never found,
    scoring every answer to its question 0 without a word."""
    from helixloom.errors import HelixloomError
    from helixloom.evals import keyfacts as qa

    for fact in (r"3\\.8 ?(million|m)", r"\\bHOME\\b", "20[- ]60"):
        path = tmp_path / "q.jsonl"
        path.write_text(json.dumps({"question": "How much?", "facts": ["wall", fact]}) + "\n")
        with pytest.raises(HelixloomError, match=r"line 1.*plain text"):
            qa.load(path)
    path.write_text(json.dumps({"question": "How long?", "facts": ["1.2 km|1,200 m", "(1.4 mi)"]}) + "\n")
    (item,) = qa.load(path)
    assert qa.has_fact(item.facts[0], "The 1.2 km wall (1.4 mi) is built.")


def test_the_stricter_reading_counts_only_the_answers_first_sentence() -> None:
    from helixloom.evals import keyfacts as qa

    assert qa.first_sentence("The tank holds 1.8 litres. It lasts 11 hours. [DOC_ID:5a63b5da1e]") == (
        "The tank holds 1.8 litres."
    )
    assert qa.first_sentence("Six legs [DOC_ID:e726f4757e]") == "Six legs"
    item = qa.QAItem("How long is the T-40 guaranteed for?", ("3-year|three year",))
    recited = "Every 3 months. The T-40 comes with a 3-year warranty. [DOC_ID:5a63b5da1e]"
    direct = "Three years: the T-40 comes with a three year warranty. [DOC_ID:5a63b5da1e]"
    answers = [
        qa.QAAnswer(item, text, tuple(f for f in item.facts if qa.has_fact(f, text)))
        for text in (recited, direct)
    ]
    assert qa.mean_score(answers) == 1.0  # the fact is somewhere in both
    assert qa.mean_score_first_sentence(answers) == 0.5  # but the first answer's own claim is wrong


def test_several_rephrasings_of_a_question_are_kept_once_each(documents: list) -> None:
    news = next(d for d in documents if "Zorblax" in d.title)
    pairs = [
        p for ps in perspectives.build_pairs(news).values() for p in ps if "how many animals" in p.question
    ]
    assert pairs

    def reply(request: GenerationRequest) -> str:
        if request.sampling.temperature == 0:
            return " How many animals are left?"
        # the sampled ones: one new wording, one repeat of the greedy one
        return (
            " How many animals are still alive?"
            if (request.sampling.seed or 0) % 2
            else " How many animals are left?"
        )

    report = rephrase.rephrase(ScriptedEngine(reply), pairs[:1], variants=3)
    assert report.calls == 3
    assert sorted(p.question for p in report.pairs) == [
        "How many animals are left?",
        "How many animals are still alive?",
    ]
    assert report.dropped == {"duplicate": 1}
    one = rephrase.rephrase(ScriptedEngine(reply), pairs[:1])  # the default: one greedy rephrasing
    assert [p.question for p in one.pairs] == ["How many animals are left?"] and one.calls == 1


WHO_NEWS = """# Dunmere council shelves the harbour wall

The Dunmere council has shelved its plan for a new harbour wall. The town's mayor, Petra Lund, said the
cost had doubled. The old wall, a stone pier known as the Grey Arm, was built by Cobb and Sons in 1880.

Residents of the east quay opposed the plan because the works would close the beach. Engineers will
inspect the Grey Arm in May. A public meeting is set for 9 September. Councillor Ona Reed, who chairs
the works committee, wants a cheaper design. The red dial sets the heat.
"""


def test_the_who_perspective_asks_for_doers_agents_and_names_answered_name_first(tmp_path: Path) -> None:
    (tmp_path / "dunmere.md").write_text(WHO_NEWS)
    doc = ingest([tmp_path]).documents[0]
    built = perspectives.build_pairs(doc)
    who = {p.question: p for p in built["who"]}
    expected = {
        "Who is the mayor of the town?": "Petra Lund",  # an appositive role, possessive turned round
        "Who is the town's mayor?": "Petra Lund",
        "What is the old wall called?": "Grey Arm",  # a name given to the sentence's subject
        "What is the name of the stone pier?": "Grey Arm",
        "Who built the old wall?": "Cobb and Sons",  # an agent, in the sentence's tense
        "Who was the old wall built by?": "Cobb and Sons",
        "Who opposed the plan?": "Residents of the east quay",  # a subject and its verb
        "Who will inspect the Grey Arm in May?": "Engineers",
        "Who chairs the works committee?": "Councillor Ona Reed",  # a relative clause
        "What sets the heat?": "The red dial",  # not a person: what
    }
    for question, key in expected.items():
        assert question in who, f"missing: {question} (have {sorted(who)})"
        pair = who[question]
        sentence = grounded.facts(doc)[pair.fact].sentence
        assert pair.key == key and pair.answer == f"{key}. {sentence}"  # the name first, then the text
    # no question from a sentence without those shapes, nor a subject-less one, nor the present of a
    # wall built in 1880
    assert not any(q.startswith(("Who is set", "What is set", "Who builds")) for q in who)
    # a date without a year is a date: asked "when"
    span = {p.key: p.question for p in built["span"]}
    assert span["9 September"].startswith("A public meeting is set for when")


def test_the_teacher_gets_rough_questions_in_batches_of_equal_size(documents: list) -> None:
    # a CPU pays nearly as much for a batch of 5 as for one of 64 (every token reads the whole output
    # layer), so 69 questions in batches of at most 64 go as 34 + 35, not 64 + 5
    news = next(d for d in documents if "Zorblax" in d.title)
    span = next(p for ps in perspectives.build_pairs(news).values() for p in ps if p.perspective == "span")
    sizes: list[int] = []

    class Counting(ScriptedEngine):
        def generate(self, requests, *args, **kwargs):  # type: ignore[no-untyped-def]
            sizes.append(len(requests))
            return super().generate(requests, *args, **kwargs)

    report = rephrase.rephrase(Counting(lambda r: " Nothing to say"), [span] * 69)
    assert sizes == [34, 35] and report.calls == 69
    sizes.clear()
    rephrase.rephrase(Counting(lambda r: " Nothing to say"), [span] * 10, batch_size=4)
    assert sizes == [3, 3, 4]
    sizes.clear()  # a batch counts requests: 3 variants of 10 questions at most 8 a time go 2 by 2
    rephrase.rephrase(Counting(lambda r: " Nothing to say"), [span] * 10, batch_size=8, variants=3)
    assert sizes == [6] * 5


def test_the_rephrase_prompt_leaves_the_teacher_on_the_natural_line(documents: list) -> None:
    # after a line break a completion model starts the next example ("Rough: ..."), so the prompt
    # must end on "Natural:" itself: with a trailing line break 51 of 62 greedy replies of the
    # default model were dropped as not a question (learn_heldout, Dec 2026)
    news = next(d for d in documents if "Zorblax" in d.title)
    pairs = [p for ps in perspectives.build_pairs(news).values() for p in ps]
    seen: list[str] = []

    def reply(request: GenerationRequest) -> str:
        seen.append(request.prompt)
        return " " + request.prompt.rsplit("Rough: ", 1)[1].split("\n")[0]

    rephrase.rephrase(ScriptedEngine(reply), pairs)
    assert seen
    for prompt in seen:
        rough = prompt.rsplit("Rough: ", 1)[1].split("\n")[0]
        assert prompt.endswith(f"Rough: {rough}\nNatural:")
