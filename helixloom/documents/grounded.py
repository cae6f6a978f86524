"""Question/answer pairs built from a document by code: no teacher needed, every answer a span of it.

A weak teacher invents questions the document does not answer; code cannot. Each perspective here
reads the document's own sentences and writes questions whose answers are those sentences:

- ``span``: per sentence, each number, date and name in it becomes a wh-question in the sentence's
  own words ("The tank holds how many litres?"): a cloze, rough but anchored to the fact. A teacher
  may rephrase these into natural questions (``documents.rephrase``).
- ``entity``: per name, "What is X?" / "Tell me about X." answered by the sentence that describes it
  ("X, a teal reptile, ..." or "X is a ...": rewritten as "X is a teal reptile.") or first names it.
- ``title``: the vague questions a reader asks from a headline ("What is the council going to do?"),
  with names generalised ("Quentmoor Council" -> "the council"), answered by the title and the lead.
- ``statement``: every sentence as a statement asked for by its names ("State a fact about X.").

Regular expressions, not a parser: English only, and rough. Why not spaCy: it is not a dependency and
its models cannot be downloaded here; what matters is that every answer is the document's own text,
which holds by construction (``Fact.sentence`` is a substring of the document).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from helixloom.documents.ingest import Document


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOPWORDS = _wordset(
    "a an the and or but if of to in on at by for with from as is are was were be been being it its this "
    "that these those there their they them he she his her we you your our i not no so than then which "
    "who whom whose what when where why how will would can could should may might must do does did has "
    "have had about into over after before under between each every any all some most more other such "
    "only also just very up down out off again once here own same too"
)

_NUMBER_WORDS = sorted(
    _wordset(
        "one two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty hundred "
        "thousand million half dozen"
    )
)
_MONTHS = sorted(
    _wordset("January February March April May June July August September October November December")
)
_TITLES = (
    "Councillor",
    "Mr",
    "Mrs",
    "Ms",
    "Dr",
    "Professor",
    "President",
    "Minister",
    "Mayor",
    "Sir",
    "Dame",
)

_DATE = re.compile(
    r"\b(?:(?:on\s+)?\d{1,2}\s+(?:" + "|".join(_MONTHS) + r")\s+\d{4}"
    r"|(?:in\s+)?(?:" + "|".join(_MONTHS) + r")(?:\s+\d{1,2},?)?\s+\d{4}"
    # a day and month without a year ("set for 9 September", "on May 3rd")
    # (the month capitalised: "20 may enter" is not a date)
    r"|(?:on\s+)?\d{1,2}\s+(?-i:" + "|".join(_MONTHS) + r")"
    r"|(?:on\s+)?(?-i:" + "|".join(_MONTHS) + r")\s+\d{1,2}(?:st|nd|rd|th)?(?!\d|,\s*\d{4})"
    r"|(?:in\s+)?(?:1[5-9]|20|21)\d{2}"
    r"|every\s+(?:spring|summer|autumn|winter|year|month|week|day))\b",
    re.IGNORECASE,
)
_QUANTITY = re.compile(
    r"\b(?:about\s+|around\s+|over\s+|under\s+|at\s+least\s+|nearly\s+)?"
    r"(?<![\w-])(?:\d+(?:[.,]\d+)?|" + "|".join(_NUMBER_WORDS) + r")(?:-|\s+)(?:to\s+\d+\s*)?([a-z]+)\b",
    re.IGNORECASE,
)
_NAME = re.compile(r"\b[A-Z][\w'-]*(?:\s+(?:of\s+)?[A-Z][\w'-]*)*")
# A phrase after "the", "a", "with", "to"...: up to three lower-case words that are not stopwords.
_PHRASE = re.compile(
    r"\b(?:the|a|an|with|to|for|from|of|by)\s+((?:(?!(?:"
    + "|".join(sorted(STOPWORDS))
    + r")\b)[a-z][\w-]*\s?){1,3})"
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass(frozen=True)
class Fact:
    """One sentence of a document, with the section it sits in."""

    doc_id: str
    index: int
    sentence: str
    section: str


@dataclass(frozen=True)
class Pair:
    """A question, its answer (a sentence of the document, or the title and lead), the key span the
    answer must contain to be right, and the perspective that wrote it."""

    question: str
    answer: str
    key: str
    doc_id: str
    perspective: str
    fact: int  # index of the fact the answer states (-1: the title and lead)


def facts(doc: Document) -> list[Fact]:
    """The document's sentences in order (headings are sections, not facts)."""
    out: list[Fact] = []
    section = doc.title
    for block in re.split(r"\n\s*\n", doc.text):
        block = block.strip()
        if not block:
            continue
        lines = block.splitlines()
        while lines and lines[0].lstrip().startswith("#"):
            section = lines.pop(0).lstrip("#").strip()
        body = " ".join(line.strip() for line in lines if line.strip())
        for sentence in _SENTENCE_END.split(body):
            sentence = sentence.strip()
            if len(sentence.split()) >= 3:
                out.append(Fact(doc.doc_id, len(out), sentence, section))
    return out


def names(text: str, common: frozenset[str] = frozenset(), known: frozenset[str] = frozenset()) -> list[str]:
    """Names in ``text``: runs of capitalised words. A sentence's first word alone is a name only when
    the document also capitalises it mid-sentence (``known``) and never writes it in lower case
    (``common``); dates and titles ("Councillor") are not names."""
    found = []
    for m in _NAME.finditer(text):
        words = m.group(0).split()
        if words[0] in _TITLES and len(words) > 1:
            words = words[1:]
        while words and words[0].lower() in STOPWORDS:
            words = words[1:]
        while words and words[-1].lower() in STOPWORDS:
            words = words[:-1]
        if not words or any(w in _MONTHS for w in words) or words[0] in _TITLES:
            continue
        first = m.start() == 0 or text[: m.start()].rstrip().endswith((".", ":", "!", "?"))
        if first and len(words) == 1:
            word = words[0]
            stem = re.sub(r"(es|s)$", "", word)
            if word.lower() in common or not ({word, stem} & known):
                continue
        found.append(" ".join(words))
    return list(dict.fromkeys(found))


def _known_names(doc: Document) -> frozenset[str]:
    """Words the document capitalises somewhere other than a sentence's start (title included)."""
    out = set()
    for m in re.finditer(r"(?<=[\w,;] )[A-Z][\w'-]*", doc.title + "\n" + doc.text):
        out.add(m.group(0))
    out.update(doc.title.split()[:1])
    return frozenset(out)


def _common_words(text: str) -> frozenset[str]:
    return frozenset(w for w in re.findall(r"\b[a-z][\w'-]*", text))


def _question(sentence: str, start: int, end: int, wh: str) -> str:
    """The sentence as a question: the span at [start, end) replaced by ``wh``."""
    before, after = sentence[:start].strip(), sentence[end:].strip()
    text = f"{before} {wh} {after}".strip()
    text = re.sub(r"\s+", " ", text).rstrip(".!;: ")
    text = re.sub(r"\s+([,.;:])", r"\1", text)
    return text[:1].upper() + text[1:] + "?"


def span_pairs(doc: Document, doc_facts: Sequence[Fact]) -> Iterator[Pair]:
    """Per sentence, a wh-question for each date, quantity and name in it."""
    common, known = _common_words(doc.text), _known_names(doc)
    for fact in doc_facts:
        s = fact.sentence
        taken: list[tuple[int, int]] = []

        def free(a: int, b: int, taken: list[tuple[int, int]] = taken) -> bool:
            return all(b <= x or a >= y for x, y in taken)

        for m in _DATE.finditer(s):
            if free(m.start(), m.end()):
                taken.append((m.start(), m.end()))
                yield Pair(
                    _question(s, m.start(), m.end(), "when"), s, m.group(0), doc.doc_id, "span", fact.index
                )
        for m in _QUANTITY.finditer(s):
            unit = m.group(1)
            if not free(m.start(), m.end()) or unit.lower() in STOPWORDS:
                continue
            taken.append((m.start(), m.end()))
            key = m.group(0)[: m.start(1) - m.start()].strip(" -")
            yield Pair(
                _question(s, m.start(), m.end(), f"how many {unit}"), s, key, doc.doc_id, "span", fact.index
            )
        for m in _PHRASE.finditer(s):
            if free(m.start(1), m.end(1)) and len(taken) < 4:
                taken.append((m.start(1), m.end(1)))
                q = _question(s, m.start(1), m.end(1), "what")
                yield Pair(q, s, m.group(1).strip(), doc.doc_id, "span", fact.index)
        for name in names(s, common, known):
            at = s.find(name)
            if at < 0 or not free(at, at + len(name)):
                continue
            taken.append((at, at + len(name)))
            wh = "who" if _is_person(s, at) else "what"
            yield Pair(_question(s, at, at + len(name), wh), s, name, doc.doc_id, "span", fact.index)


def _is_person(sentence: str, at: int) -> bool:
    before = sentence[:at].split()
    after = sentence[at:].split(",")
    return bool(before and before[-1] in _TITLES) or (len(after) > 1 and after[1].strip().startswith("who "))


def describe(name: str, doc_facts: Sequence[Fact]) -> tuple[str, int] | None:
    """A sentence describing ``name`` and the fact it comes from: "X, a/an ...," and "X is a ..."
    become "X is a ..."; otherwise the first sentence that names it."""
    pattern = re.compile(
        re.escape(name)
        + r"(?:,\s+(?P<app>(?:a|an|the)\s[^.;]+?|who\s[^,.;]+)"
        + r"(?=[,.;]?\s+(?:that|which|who|said)\b|[.;]|,\s+(?:is|was|has)\b|$)"
        r"|\s+(?P<cop>(?:is|are|was)\s[^.;]+))"
    )
    for fact in doc_facts:
        m = pattern.search(fact.sentence)
        if m and m.group("app"):
            app = m.group("app")
            return (
                f"{name} {'is ' if not app.startswith('who ') else ''}{app.removeprefix('who ')}.",
                fact.index,
            )
        if m and m.group("cop"):
            return f"{name} {m.group('cop').rstrip(',')}.", fact.index
    for fact in doc_facts:
        if name in fact.sentence:
            return fact.sentence, fact.index
    return None


def described_names(doc: Document, doc_facts: Sequence[Fact]) -> Iterator[tuple[str, str, int]]:
    """Each name of the document once, in order, with the sentence that describes it and that
    sentence's index (names nothing describes are left out)."""
    common, known = _common_words(doc.text), _known_names(doc)
    seen: set[str] = set()
    for fact in doc_facts:
        for name in names(fact.sentence, common, known):
            if name in seen:
                continue
            seen.add(name)
            found = describe(name, doc_facts)
            if found is not None:
                yield name, *found


def entity_pairs(doc: Document, doc_facts: Sequence[Fact]) -> Iterator[Pair]:
    """ "What is X?", "Tell me about X." per name, answered by the sentence that describes X."""
    for name, answer, index in described_names(doc, doc_facts):
        person = _is_person(doc_facts[index].sentence, max(0, doc_facts[index].sentence.find(name)))
        asks = (
            f"Who is {name}?" if person else f"What is {_article(name, doc.text)}?",
            f"Tell me about {_article(name, doc.text)}.",
            f"What do you know about {_article(name, doc.text)}?",
        )
        key = _new_word(answer, name)
        for q in asks:
            yield Pair(q, answer, key, doc.doc_id, "entity", index)


def _new_word(answer: str, name: str) -> str:
    """The first content word of ``answer`` that ``name`` does not contain: what a right answer adds."""
    said = {w.lower() for w in re.findall(r"[\w'-]+", name)}
    for w in re.findall(r"[\w'-]+", answer):
        if len(w) >= 3 and w.lower() not in STOPWORDS and w.lower() not in said:
            return w
    return name


def _article(name: str, text: str = "") -> str:
    """``name`` with "the" before it where the document writes one ("the Velling Marsh", "Ilse Varn")."""
    if re.search(r"\bthe\s+" + re.escape(name), text, re.IGNORECASE) and not name.lower().startswith("the "):
        return f"the {name}"
    return name


def title_pairs(doc: Document, doc_facts: Sequence[Fact]) -> Iterator[Pair]:
    """The vague questions a headline invites, answered by the title and the lead sentence."""
    title = doc.title.strip().rstrip(".")
    if not title or not doc_facts:
        return
    lead = doc_facts[0].sentence
    answer = f"{title}. {lead}" if title.lower() not in lead.lower() else lead
    head = title.split(":")[0].strip()
    subjects, verb, rest = _headline(head, doc.text)
    asks = [f"What is {head} about?", f"What happened with {_article(head, doc.text)}?"] if not verb else []
    for subject in subjects:
        if verb:
            asks += [
                f"What is {subject} going to do?",
                f"What did {subject} decide?",
                f"What is {subject} doing about {rest}?",
                f"What does {subject} {_base(verb)}?",
            ]
            # "... approves the Zorblax marsh reserve": what is the council doing for the Zorblax?
            after = head.split(verb, 1)[1] if verb in head else ""
            asks += [
                f"What is {subject} doing for {_article(n, doc.text)}?"
                for n in names(after, known=frozenset(after.split()))
            ]
        else:
            asks += [f"What is {subject}?", f"What is {subject} for?"]
    key = verb or head.split()[-1]
    for q in dict.fromkeys(asks):
        yield Pair(q, answer, key, doc.doc_id, "title", -1)


def _headline(head: str, text: str) -> tuple[list[str], str, str]:
    """A headline's subject (as written and generalised), its verb and what follows the verb."""
    words = head.split()
    verb_at = next(
        (
            i
            for i, w in enumerate(words)
            if i > 0 and w[:1].islower() and w.endswith("s") and w.lower() not in STOPWORDS
        ),
        None,
    )
    if verb_at is None:
        subject = head
        general = " ".join(w for w in words if not w[:1].isupper() or w == words[-1]) or head
        return list(dict.fromkeys([_the(subject, text), _the(general.lower(), text)])), "", ""
    subject, verb, rest = " ".join(words[:verb_at]), words[verb_at], " ".join(words[verb_at + 1 :])
    last = subject.split()[-1]
    return list(dict.fromkeys([_the(subject, text), f"the {last.lower()}"])), verb, _generalise(rest)


def _the(phrase: str, text: str) -> str:
    """A headline's noun phrase as a question writes it: "the" before a common noun's phrase."""
    return f"the {phrase}" if phrase.split()[-1][:1].islower() else _article(phrase, text)


def _generalise(phrase: str) -> str:
    """A phrase with its names dropped ("the Zorblax marsh reserve" -> "the marsh reserve")."""
    kept = [w for w in phrase.split() if not w[:1].isupper()]
    return " ".join(kept) if len(kept) > 1 else phrase


def _base(verb: str) -> str:
    """A third-person verb's base form ("approves" -> "approve"): good enough for a question."""
    for end, repl in (("ies", "y"), ("sses", "ss"), ("ches", "ch"), ("shes", "sh"), ("s", "")):
        if verb.endswith(end):
            return verb[: -len(end)] + repl
    return verb


def statement_pairs(doc: Document, doc_facts: Sequence[Fact]) -> Iterator[Pair]:
    """Every sentence asked for as a statement about the names in it."""
    common, known = _common_words(doc.text), _known_names(doc)
    for fact in doc_facts:
        for name in names(fact.sentence, common, known)[:2]:
            yield Pair(
                f"State a fact about {_article(name, doc.text)}.",
                fact.sentence,
                name,
                doc.doc_id,
                "statement",
                fact.index,
            )
        if fact.section and fact.section != doc.title:
            yield Pair(
                f"{fact.section}?" if not fact.section.endswith("?") else fact.section,
                fact.sentence,
                fact.sentence.split()[0],
                doc.doc_id,
                "statement",
                fact.index,
            )
