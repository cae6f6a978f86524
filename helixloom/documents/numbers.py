"""Numbers and dates asked for the way people ask for them, answered with the number first.

Error analysis of ``benchmarks/learn.py`` (session 7, on session 6's answers): every number the adapter
got wrong ("about 400 animals", "about 11 hours", "at least 90 centimetres", "every 200 hours", "six"
legs, "a 3-year warranty") was in the training pairs, but only as rough clozes ("The tank holds 1.8
litres, which lasts how many hours on the low setting?") or in one natural form, and always answered
by a whole sentence shared with a dozen other questions, the number somewhere in its middle. Asked
"How many legs does a Zorblax have?" (a near copy of a training question) the adapter wrote a sentence
about counting with a wrong number. So here every quantity, count and date of a clause is asked for

- in several natural phrasings built from the clause's shape: an instruction ("Place the heater at
  least 90 centimetres from any tent wall." -> "How far from any tent wall should you place the
  heater?", "How far should you place the heater of the Vorrick T-40 from any tent wall?"), a subject
  and its verb ("The tank holds 1.8 litres, which lasts about 11 hours" -> "How much does the tank
  hold?", "How long does the tank last?", and the same with the document's subject), "every N"
  ("How often should you replace the wick?"), a count in a compound ("six-legged" -> "How many legs
  does the Zorblax have?", "3-year warranty" -> "How long is the warranty?"), a population ("How many
  Zorblaxes are there?"), a modal ("When will wardens count the animals?"), a passive date ("When is
  the first count planned?") and a dated event ("When did the council vote?");
- answered by the number with its unit first ("About 11 hours."), then the sentence that says it: the
  first words the model learns to write after "how long" are the number, and the sentence still
  grounds it (every answer holds the document's own sentence, the lead restates a span of it).

English only, regular expressions over the sentence, like ``grounded``: rough, but each question
names a fact of the document and each answer is the document's text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from helixloom.documents.anchored import _IMPERATIVES, _LEAD_SUBJECT, _UNIT_WH, clauses, lead_answer, subjects
from helixloom.documents.grounded import (
    _DATE,
    _QUANTITY,
    STOPWORDS,
    Fact,
    Pair,
    _article,
    _common_words,
    _known_names,
    names,
)
from helixloom.documents.ingest import Document

_MODAL_WORDS = ("will", "would", "can", "could", "should", "must", "may", "might")
_SUBJ_VERB = re.compile(
    r"^(?P<subj>(?:[Tt]he|[Aa]n?)\s+(?:[\w'-]+\s+){0,2}?[\w'-]+)\s+(?:(?P<aux>has|have|had)\s+)?"
    r"(?P<verb>[a-z]+)(?:\s+(?P<mid>[a-z]+))?$"
)
_MODAL = re.compile(
    r"^(?P<subj>(?:(?:[Tt]he|[Aa]n?)\s+)?(?:[\w'-]+\s+){0,2}?[\w'-]+)\s+(?P<modal>"
    + "|".join(_MODAL_WORDS)
    + r")\s+(?P<rest>.+)$"
)
_PASSIVE = re.compile(
    r"^(?P<subj>.+?)\s+(?P<be>is|are|was|were)\s+(?P<part>[a-z]+ed)(?:\s+(?:for|on|in|by))?$"
)
_EVENT = re.compile(
    r"^,?\s*(?P<subj>(?:the\s+)?(?:[A-Z][\w'-]*\s+)*[A-Z][\w'-]*|[Tt]he\s+[a-z][\w'-]*)\s+(?P<verb>[a-z]+ed)\b"
)
_PREPOSITIONS = ("after", "before", "for", "from", "to", "at", "within", "every", "about")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _low(text: str, known: frozenset[str]) -> str:
    """A clause's first word in lower case, unless it is a name (``known``: words the document
    capitalises mid-sentence)."""
    first = text.split()[0] if text.split() else ""
    return text if first[1:2].isupper() or first in known else text[:1].lower() + text[1:]


def _base(verb: str) -> str:
    """A verb's base form, from its -s or -ed form: good enough for "does the tank ... hold?"."""
    if verb.endswith("ed") and len(verb) > 4:
        stem = verb[:-2]
        if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "ls":
            return stem[:-1]  # planned -> plan
        if re.search(r"[^aeiou][aeiou][tvszcgk]$", stem) or stem.endswith(("rv", "rs")):
            return stem + "e"  # voted -> vote, approved -> approve, closed -> close
        return stem
    for end, repl in (("ies", "y"), ("sses", "ss"), ("ches", "ch"), ("shes", "sh"), ("oes", "o"), ("s", "")):
        if verb.endswith(end):
            return verb[: -len(end)] + repl
    return verb


def _plural(name: str, text: str) -> str:
    """How ``text`` writes ``name`` in the plural ("Zorblaxes"), else ``name`` + "s"."""
    for end in ("es", "s"):
        if re.search(r"\b" + re.escape(name + end) + r"\b", text):
            return name + end
    return name + "s"


def _quantity_questions(
    clause: str, start: int, end: int, wh: str, unit: str, where: str, topic: str, known: frozenset[str]
) -> Iterator[str]:
    """Questions for the quantity at [start, end) of ``clause``, from the clause's shape."""
    before, after = clause[:start].strip(" ,"), clause[end:].strip(" ,")
    after = after.split(",")[0].strip()
    tail = f" {after}" if after else ""
    first = before.split()[0].lower() if before.split() else ""
    if first in _IMPERATIVES:
        obj = " ".join(before.split()[1:])
        prep = ""
        for p in _PREPOSITIONS:
            if obj.endswith(f" {p}"):
                obj, prep = obj[: -len(p) - 1], p
        if not obj:
            return
        obj = _low(obj, known)
        if wh == "how often":
            yield f"How often should you {first} {obj}?"
            yield f"When should you {first} {obj}?"
            yield f"How often should you {first} {obj}{where}?"
            if prep:
                yield f"{_cap(prep)} how many {unit}{tail} should you {first} {obj}?"
        else:
            if after:
                yield f"{_cap(wh)} {after} should you {first} {obj}?"
            yield f"{_cap(wh)} should you {first} {obj}{tail}?"
            yield f"{_cap(wh)} should you {first} {obj}{where}{tail}?"
        return
    m = _SUBJ_VERB.match(before)
    if m and m.group("verb") not in STOPWORDS and m.group("subj").split()[-1].lower() not in STOPWORDS:
        subj, verb, aux, mid = (
            _low(m.group("subj"), known),
            m.group("verb"),
            m.group("aux"),
            m.group("mid") or "",
        )
        more = f" {mid}" if mid else ""
        if aux:
            yield f"{_cap(wh)} {aux} {subj} {verb}{more}?"
            yield f"{_cap(wh)} {aux} {subj}{where} {verb}{more}?"
            return
        do = "does" if verb.endswith("s") else "do"
        yield f"{_cap(wh)} {do} {subj} {_base(verb)}{more}{tail}?"
        yield f"{_cap(wh)} {do} {subj}{where} {_base(verb)}{more}{tail}?"
        if tail:
            yield f"{_cap(wh)} {do} {subj} {_base(verb)}{more}?"
        if topic and where:
            yield f"{_cap(wh)} does {topic} {_base(verb)}{more}{tail}?"
        return
    m = _MODAL.match(before)
    if m and wh == "how often":
        subj = _low(m.group("subj"), known)
        yield f"How often {m.group('modal')} {subj} {m.group('rest')}?"
        yield f"When {m.group('modal')} {subj} {m.group('rest')}?"


def number_pairs(doc: Document, doc_facts: Sequence[Fact]) -> Iterator[Pair]:
    """Every quantity, count and date of every clause, asked for in several phrasings (see the
    module's docstring), answered with the number first and then its sentence."""
    topics = subjects(doc, doc_facts)
    common, known = _common_words(doc.text), _known_names(doc)
    for fact in doc_facts:
        s = fact.sentence
        named = next((t for t in topics if t in s), None) or (topics[0] if topics else None)
        topic = _article(named, doc.text) if named else ""
        where = f" of {topic}" if named and named not in s else ""
        asked: list[tuple[str, str, str]] = []  # (question, key, lead)
        for clause in clauses(s):
            asked += _quantities(clause, where, topic, doc.text, names(s, common, known), known)
            asked += _dates(clause, where, known)
        seen: set[str] = set()
        for q, key, lead in asked:
            q = re.sub(r"\s+", " ", q)
            if q.lower() not in seen:
                seen.add(q.lower())
                yield Pair(q, lead_answer(lead, s), key, doc.doc_id, "numbers", fact.index)


def _quantities(
    clause: str, where: str, topic: str, text: str, found: Sequence[str], known: frozenset[str]
) -> Iterator[tuple[str, str, str]]:
    for m in _QUANTITY.finditer(clause):
        unit = m.group(1).lower()
        if unit in STOPWORDS:
            continue
        amount = m.group(0)[: m.start(1) - m.start()].strip(" -")
        hyphen = clause[m.start(1) - 1] == "-"
        number = re.search(r"[\d.,]+|\w+$", amount)
        key = number.group(0) if number else amount
        if hyphen and unit.endswith("ed"):  # "six-legged": a count of legs, owned by the name before it
            noun = re.sub(r"(?:g?ged|ed)$", "", unit) or unit
            noun = noun + "g" if unit.endswith("gged") else noun
            owners = [n for n in found if 0 <= clause.find(n) < m.start()]
            owner = _article(owners[-1], text) if owners else topic or "it"
            for q in (f"How many {noun}s does {owner} have?", f"How many {noun}s has {owner} got?"):
                yield q, key, f"{amount} {noun}s"
            continue
        if hyphen:  # "a 3-year warranty": how long is the warranty?
            nxt = re.match(r"\s+([a-z][\w-]*)", clause[m.end() :])
            if not nxt or nxt.group(1) in STOPWORDS:
                continue
            noun = nxt.group(1)
            wh = _UNIT_WH.get(unit + "s", f"how many {unit}s")
            lead = f"a {m.group(0)} {noun}" if not m.group(0)[:1].isalpha() else f"{m.group(0)} {noun}"
            whose = _LEAD_SUBJECT.match(clause)
            of = f" of {_low(whose.group('subj'), known)}" if whose else where
            for q in (f"{_cap(wh)} is the {noun}{of}?", f"{_cap(wh)} is the {noun}?",
                      f"How many {unit}s is the {noun}{of}?"):  # fmt: skip
                yield q, key, lead
            continue
        start = m.start()
        every = re.search(r"\bevery\s*$", clause[:start])
        if every:
            start, wh = every.start(), "how often"
        else:
            wh = _UNIT_WH.get(unit, f"how many {unit}")
        lead = clause[start : m.end()]
        for q in _quantity_questions(clause, start, m.end(), wh, unit, where, topic, known):
            yield q, key, lead
        pop = re.search(r"\b(?:the\s+)?(?P<name>[A-Z][\w'-]*) population\b", clause)
        if pop and unit not in _UNIT_WH:
            many = _plural(pop.group("name"), text)
            for q in (
                f"How many {many} are there?",
                f"How many {many} are left?",
                f"What is the population of {_article(pop.group('name'), text)}?",
            ):
                yield q, key, lead


def _dates(clause: str, where: str, known: frozenset[str]) -> Iterator[tuple[str, str, str]]:
    for m in _DATE.finditer(clause):
        date = re.sub(r"^(?:on|in)\s+", "", m.group(0), flags=re.IGNORECASE)
        before, after = clause[: m.start()].strip(" ,"), clause[m.end() :]
        year = re.search(r"\b\d{4}\b", date)
        key = date
        lead = m.group(0)
        if date.lower().startswith("every"):
            mod = _MODAL.match(before)
            if mod:
                subj = _low(mod.group("subj"), known)
                yield f"How often {mod.group('modal')} {subj} {mod.group('rest')}?", key, lead
                yield f"When {mod.group('modal')} {subj} {mod.group('rest')}?", key, lead
            continue
        p = _PASSIVE.match(before)
        if p:
            subj, be, part = _low(p.group("subj"), known), p.group("be"), p.group("part")
            yield f"When {be} {subj} {part}?", key, lead
            yield f"When {be} {subj}{where} {part}?", key, lead
            yield f"When {be} {subj}?", key, lead
        e = _EVENT.match(after) if not before else None
        if e:
            subj, base = e.group("subj"), _base(e.group("verb"))
            subj = subj if subj[:1].isupper() or subj.startswith("the ") else _low(subj, known)
            words = subj.split()
            general = f"the {words[-1].lower()}" if len(words) > 1 and words[-1][:1].isupper() else ""
            for who in dict.fromkeys([subj, general] if general else [subj]):
                yield f"When did {who} {base}?", key, lead
                if year:
                    yield f"In what year did {who} {base}?", year.group(0), lead
