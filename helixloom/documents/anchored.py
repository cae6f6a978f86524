"""More phrasings of every fact, built by code: questions that name the document's subject, natural
question forms, and the reverse direction.

Error analysis of ``benchmarks/learn.py`` (session 6) showed why the ``grounded`` perspectives alone
fail: a user asks "How do you ignite the T-40?", but every training question that named the T-40 was
answered by the lead sentence ("The T-40 is a portable heater..."), and the sentence that holds the
answer ("To light the burner, hold the green button down...") was only ever asked about without its
subject. The model answered every T-40 question with the lead. So here every fact is also asked about
*with* the document's subject, and in the question forms people use:

- ``anchored``: each sentence's cloze questions with the document's subject in front ("For the Vorrick
  T-40: replace the wick after every how many hours of use?"), and "What do you know about the wick of
  the Vorrick T-40?" for the sentence's noun phrases.
- ``forms``: natural questions from a sentence's shape: "What does the red dial do?" / "What is the red
  dial for?" (subject + verb), "What will wardens do?" (modal), "How do you light the burner?" ("To
  light the burner, ..."), and clauses after "said" as facts of their own. Where the asked-for phrase
  is plain, it is said first and the sentence follows (``lead_answer``): "What does it mean if the
  amber lamp blinks?" -> "The wick is dry. If the amber lamp blinks, ...", "What do Zorblaxes eat?"
  -> "Glowing moss. ...", "Where will peat cutters move?", "What should you fill the tank with?".
  Numbers and dates have their own perspective (``documents.numbers``).
- ``reverse``: a description asked for its name ("What is a teal, six-legged reptile?" -> the Zorblax).

Every answer still holds a sentence of the document (or, for ``reverse``, the entity description of
``grounded.describe``), after at most a span of it said first: the phrasings multiply questions,
never facts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from helixloom.documents.grounded import (
    _DATE,
    _PHRASE,
    _QUANTITY,
    STOPWORDS,
    Fact,
    Pair,
    _article,
    _common_words,
    _known_names,
    _question,
    _wordset,
    described_names,
    names,
)
from helixloom.documents.ingest import Document

PERSPECTIVES = ("anchored", "forms", "reverse")

# The question word a unit calls for, besides "how many <unit>" (English units; others keep "how many").
_UNIT_WH = {
    **dict.fromkeys(
        ("millimetres", "centimetres", "metres", "kilometres", "inches", "feet", "miles", "mm", "cm", "km"),
        "how far",
    ),
    **dict.fromkeys(("seconds", "minutes", "hours", "days", "weeks", "months", "years"), "how long"),
    **dict.fromkeys(("litres", "liters", "grams", "kilograms", "kg", "tonnes", "gallons", "ml"), "how much"),
}
_MODALS = ("will", "would", "can", "could", "should", "must", "may", "might")
_SUBJECT_VERB = re.compile(
    r"^(?P<subj>(?:The|A|An)\s+(?:[\w'-]+\s+){0,2}?[\w'-]+)\s+(?P<verb>[a-z]+s)\b(?P<rest>.*)$"
)
_MODAL = re.compile(
    r"^(?P<subj>(?:(?:The|A|An)\s+)?(?:[\w'-]+\s+){0,2}?[\w'-]+)\s+(?P<modal>" + "|".join(_MODALS) + r")\s+"
    r"(?P<verb>[a-z]+)\b(?P<rest>.*)$"
)
_CONDITION = re.compile(r"^If\s+(?P<cond>[^,:;]+)[,:;]")
_PURPOSE = re.compile(r"^To\s+(?P<purpose>[^,]+),")
_NAME_VERB = re.compile(
    r"^(?P<subj>[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)\s+(?P<verb>[a-z]+)\s+(?P<obj>[a-z][^;:]*)$"
)
_PLACE = re.compile(r"\b(?P<verb>[a-z]+)\s+to\s+(?P<place>the\s+[A-Z][\w'-]*(?:\s+[a-z][\w'-]*)?)")
_WITH = re.compile(r"^(?P<verb>[A-Z][a-z]+)\s+(?P<obj>the\s+[a-z][\w\s-]*?)\s+with\s+(?P<what>[^,;:]+)$")
_SAID = re.compile(r"\bsaid(?:\s+that)?\s+(?P<clause>[^.;]+)")
_CLAUSE_SPLIT = re.compile(r"(,\s+which\s+|,\s+and\s+|,\s+but\s+|;\s+|:\s+)")
_LEAD_SUBJECT = re.compile(
    r"^(?P<subj>(?:[Tt]he|[Aa]n?)\s+(?:[\w'-]+\s+){0,2}?[\w'-]+)\s+(?=[a-z]+s\b|is\b|are\b|was\b)"
)


def subjects(doc: Document, doc_facts: Sequence[Fact], most: int = 2) -> list[str]:
    """What the document is about: the names in its title and lead sentence, most mentioned first
    (a name counted in the text together with its plural), at most ``most``; a multi-word name whose
    last word the text also uses alone ("T-40" of "Vorrick T-40") gives that word as a second name."""
    common, known = _common_words(doc.text), _known_names(doc)
    lead = doc_facts[0].sentence if doc_facts else ""
    found = names(doc.title, common, known | frozenset(doc.title.split())) + names(lead, common, known)
    found = [n for n in dict.fromkeys(found) if n.lower() not in STOPWORDS]
    count = {n: len(re.findall(r"\b" + re.escape(n), doc.text)) for n in found}
    ranked = sorted(found, key=lambda n: -count[n])
    # the most mentioned name, and the others the text names more than once
    out = [n for i, n in enumerate(ranked) if i == 0 or count[n] > 1][:most]
    for name in list(out):
        last = name.split()[-1]
        alone = len(re.findall(r"\b" + re.escape(last) + r"\b", doc.text)) - count[name]
        if len(name.split()) > 1 and any(ch.isdigit() for ch in last) and alone > 0 and last not in out:
            out.append(last)  # "the T-40" of "the Vorrick T-40": how the text and its readers say it
    return out


def lead_answer(lead: str, sentence: str) -> str:
    """An answer that says the asked-for span first ("About 11 hours."), then the sentence stating it:
    the first words the model learns to write after the question are the fact itself, and the
    sentence keeps the answer grounded in the document's text."""
    lead = lead.strip().rstrip(".")
    return f"{lead[:1].upper()}{lead[1:]}. {sentence}"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


def _clozes(sentence: str) -> Iterator[tuple[str, str]]:
    """(cloze question, key span) for the dates and quantities of ``sentence``."""
    taken: list[tuple[int, int]] = []
    for m in _DATE.finditer(sentence):
        taken.append((m.start(), m.end()))
        yield _question(sentence, m.start(), m.end(), "when"), m.group(0)
    for m in _QUANTITY.finditer(sentence):
        unit = m.group(1).lower()
        if unit in STOPWORDS or any(not (m.end() <= a or m.start() >= b) for a, b in taken):
            continue
        taken.append((m.start(), m.end()))
        key = m.group(0)[: m.start(1) - m.start()].strip(" -")
        start = m.start()
        every = re.search(r"\bevery\s*$", sentence[:start])
        if every:  # "after every 200 hours": how often
            start, wh = every.start(), "how often"
        else:
            wh = _UNIT_WH.get(unit, f"how many {unit}")
        yield _question(sentence, start, m.end(), wh), key
    for m in _PHRASE.finditer(sentence):
        a, b = m.start(1), m.end(1)
        if all(b <= x or a >= y for x, y in taken) and len(taken) < 5:
            taken.append((a, b))
            yield _question(sentence, a, b, "what"), m.group(1).strip()


def anchored_pairs(doc: Document, doc_facts: Sequence[Fact]) -> Iterator[Pair]:
    """Each sentence's clozes and noun phrases asked about with the document's subject named."""
    topics = subjects(doc, doc_facts)
    for fact in doc_facts:
        s = fact.sentence
        for i, topic in enumerate(topics):
            if topic in s:
                continue
            named = _article(topic, doc.text)
            for j, (question, key) in enumerate(_clozes(s)):
                if (i + j) % 2 == 0 and question.strip("? "):  # half per subject: both are covered
                    yield Pair(
                        f"For {named}: {_lower_first(question)}", s, key, doc.doc_id, "anchored", fact.index
                    )
            for m in list(_PHRASE.finditer(s))[:3] if i == 0 else ():
                phrase = m.group(1).strip()
                q = f"What do you know about the {phrase} of {named}?"
                yield Pair(q, s, phrase, doc.doc_id, "anchored", fact.index)


def clauses(sentence: str) -> list[str]:
    """``sentence`` cut into clauses that stand alone: at ", which" (the clause gets the main clause's
    subject: "The tank holds 1.8 litres, which lasts 11 hours" -> "the tank lasts 11 hours"), ", and",
    ", but", ";" and ":"; plus what follows "said (that)" as a clause of its own."""
    body = sentence.rstrip(".!? ")
    parts = _CLAUSE_SPLIT.split(body)
    out = [parts[0]]
    subject = _LEAD_SUBJECT.match(parts[0])
    for sep, part in zip(parts[1::2], parts[2::2], strict=True):
        if "which" in sep and subject:
            part = f"{subject.group('subj')} {part}"
        out.append(part)
    said = _SAID.search(body)
    if said and len(said.group("clause").split()) >= 3:
        out.append(said.group("clause").split(",")[0])
    return [c.strip() for c in out if len(c.split()) >= 3]


def _base_verb(verb: str) -> str:
    for end, repl in (("ies", "y"), ("sses", "ss"), ("ches", "ch"), ("shes", "sh"), ("oes", "o"), ("s", "")):
        if verb.endswith(end):
            return verb[: -len(end)] + repl
    return verb


def _clauses(sentence: str) -> list[str]:
    """The sentence, and what follows "said (that)" in it as a sentence of its own."""
    out = [sentence]
    m = _SAID.search(sentence)
    if m and len(m.group("clause").split()) >= 3:
        clause = m.group("clause").strip()
        out.append(clause[:1].upper() + clause[1:] + ".")
    return out


def form_pairs(doc: Document, doc_facts: Sequence[Fact]) -> Iterator[Pair]:
    """Natural questions from each sentence's shape (see the module's docstring)."""
    topics = subjects(doc, doc_facts)
    common, known = _common_words(doc.text), _known_names(doc)
    for fact in doc_facts:
        s = fact.sentence
        named = next((t for t in topics if t in s), None) or (topics[0] if topics else None)
        where = f" of {_article(named, doc.text)}" if named and named not in s else ""
        for clause in _clauses(s):
            for q, key in _forms(clause, where, topics):
                yield Pair(q, s, key, doc.doc_id, "forms", fact.index)
            if clause != s:  # a clause after "said": its clozes as questions of their own
                for q, key in _clozes(clause):
                    yield Pair(q, s, key, doc.doc_id, "forms", fact.index)
        for clause in clauses(s):
            for q, key, lead in _shaped(clause, where, names(s, common, known)):
                yield Pair(q, lead_answer(lead, s), key, doc.doc_id, "forms", fact.index)
        m = _CONDITION.match(s)
        if m:  # "If the amber lamp blinks, the wick is dry: refill the tank ...": what it means, what to do
            cond, after = m.group("cond").strip(), s[m.end() :].strip().rstrip(".")
            meaning, _, todo = after.partition(":")
            on = where.replace(" of ", " on ", 1)
            for q, lead in (
                (f"What does it mean if {cond}{on}?", meaning),
                (f"What should you do if {cond}?", todo),
            ):
                if lead.strip():
                    yield Pair(q, lead_answer(lead, s), lead.split()[-1], doc.doc_id, "forms", fact.index)


def _shaped(clause: str, where: str, found: Sequence[str]) -> Iterator[tuple[str, str, str]]:
    """(question, key, lead) for the shapes whose answer is a phrase said first: a name and its verb
    ("Zorblaxes eat glowing moss" -> "What do Zorblaxes eat?"), a move to a named place ("Peat cutters
    will be paid to move to the Ossary fields" -> "Where will peat cutters move?") and an instruction
    with what to use ("Fill the tank with lamp oil only" -> "What should you fill the tank with?")."""
    m = _NAME_VERB.match(clause)
    if m and m.group("subj") in found and m.group("verb") not in STOPWORDS and m.group("verb") not in _MODALS:
        subj, verb = m.group("subj"), m.group("verb")
        obj = re.split(r",|\s+(?:and|but|which|who)\b", m.group("obj"))[0].strip()  # its first phrase
        do, base = ("does", _base_verb(verb)) if verb.endswith("s") else ("do", verb)
        yield f"What {do} {subj} {base}?", obj.split()[-1], obj
        yield f"What {do} {subj} {base}{where}?", obj.split()[-1], obj
    m = _MODAL.match(clause)
    place = _PLACE.search(m.group("rest")) if m else None
    if m and place:
        subj, modal = _lower_first(m.group("subj")), m.group("modal")
        key = next((n for n in found if n in place.group("place")), place.group("place"))
        for q in (
            f"Where {modal} {subj} {place.group('verb')}?",
            f"Where {modal} {subj} {place.group('verb')} to?",
        ):
            yield q, key, f"to {place.group('place')}"
    m = _WITH.match(clause)
    if m and m.group("verb").lower() in _IMPERATIVES:
        verb, obj, what = m.group("verb").lower(), m.group("obj"), m.group("what").strip()
        for q in (f"What should you {verb} {obj} with?", f"What do you {verb} {obj}{where} with?"):
            yield q, what.split()[0] if len(what.split()) == 1 else " ".join(what.split()[:2]), what


def _forms(clause: str, where: str, topics: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(question, key) for one clause's shape; ``where`` (" of the T-40") names the document's
    subject when the clause does not, ``topics`` are its subjects."""
    body = clause.rstrip(".!")
    m = _SUBJECT_VERB.match(body)
    if m and m.group("subj").split()[-1].lower() not in STOPWORDS and m.group("verb") not in STOPWORDS:
        subj, verb = _lower_first(m.group("subj")), _base_verb(m.group("verb"))
        rest = m.group("rest").strip(" ,")
        first = rest.split()[0] if rest else ""
        if first in ("with", "to", "from", "on", "in", "into", "for", "at", "of"):
            verb = f"{verb} {first}"  # "comes with a 3-year warranty": what does it come with?
        key = rest.split(",")[0].split()[-1] if rest else verb
        if subj.removeprefix("the ") not in topics:  # "What is the T-40 for?" is the lead's question
            yield f"What does {subj}{where} do?", key
            yield f"What is {subj}{where} for?", key
        yield f"What does {subj}{where} {verb}?", key
    m = _MODAL.match(body)
    if m and m.group("subj").split()[-1].lower() not in STOPWORDS and m.group("verb") not in ("be", "have"):
        subj, modal = _lower_first(m.group("subj")), m.group("modal")
        rest = m.group("rest").strip(" ,")
        yield f"What {modal} {subj} do?", rest.split()[-1] if rest else m.group("verb")
        yield f"What {modal} {subj} {m.group('verb')}?", rest.split()[-1] if rest else m.group("verb")
    m = _PURPOSE.match(body)
    if m:
        purpose = m.group("purpose").strip()
        after = body[m.end() :].strip()
        yield f"How do you {purpose}{where}?", after.split()[-1] if after else purpose
    if body.split()[0].lower() not in STOPWORDS and body[:1].isupper() and _imperative(body):
        obj = next((m.group(1).strip() for m in _PHRASE.finditer(body)), "")
        if obj:
            yield f"What should you do with the {obj}{where}?", obj


# Verbs that start instructions in manuals and recipes (a closed list: an imperative is otherwise hard
# to tell from a name at the start of a sentence).
_IMPERATIVES = _wordset(
    "add adjust allow apply attach avoid boil charge check clean close connect cover cut do empty ensure "
    "fill fit fold hold insert install keep leave lift light make mix move open place plug pour press "
    "pull push put remove replace reset return rinse run screw set shake slide start stop store switch "
    "take tighten turn twist unplug use wait wash wipe"
)


def _imperative(body: str) -> bool:
    return body.split()[0].lower() in _IMPERATIVES


def reverse_pairs(doc: Document, doc_facts: Sequence[Fact]) -> Iterator[Pair]:
    """A name's description asked for the name: "What is a teal, six-legged reptile?"."""
    for name, answer, index in described_names(doc, doc_facts):
        # "X is a ..." or "the X lamp is a ...": the description after the copula
        m = re.search(re.escape(name) + r"(?: [a-z]+)? (?:is|are|was) (?P<desc>(?:a|an|the) [^.;]+)", answer)
        if m:
            yield Pair(f"What is {m.group('desc')}?", answer, name, doc.doc_id, "reverse", index)
            yield Pair(f"Name {m.group('desc')}.", answer, name, doc.doc_id, "reverse", index)
