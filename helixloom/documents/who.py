"""Questions that ask who or what: a sentence's subject, agent or name asked for, answered name first.

The other perspectives ask what a sentence says about its subject ("What does the red dial do?") or
for its numbers; few ask the other way round, for the doer or the name itself, and those only as
clozes ("At a meeting ..., the board's chair, who, said ..."). A reader asks "Who chairs the board?",
"Who makes the lamp?", "What is the ferry called?", "Who opposed the design?". So here, from the shapes
English uses to say who did what and what a thing is called:

- an appositive that names a role's holder: "the board's chair, Tomas Reyl," -> "Who is the chair of
  the board?" (and of the board's full name where the document gives it: "the Orlan Harbour Board");
- a name given: "an old boat called the Mira Dune" -> "What is the boat called?", "What is the name of
  the ferry?" when that phrase describes the sentence's subject ("The ferry, an old boat called ...");
- an agent: "The Brask lamp is a solar lantern made by Odel Forge." -> "Who makes the Brask lamp?",
  "Who is the Brask lamp made by?"; "The wall was built by Cobb and Sons" -> "Who built the wall?" (the
  tense of the sentence's "is" or "was"; a present form only for verbs whose form is known);
- a subject and what it did: "Fishermen from Sallow Bay opposed the design because ..." -> "Who
  opposed the design?"; "Wardens will count the animals every spring." -> "Who will count the
  animals?".

Each answer is the asked-for name or phrase, then the document's sentence (``anchored.lead_answer``),
so every answer still holds the document's own text. Regular expressions over English, like the other
perspectives: rough, and silent where a sentence has none of these shapes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from helixloom.documents.anchored import _IMPERATIVES, _lower_first, clauses, lead_answer
from helixloom.documents.grounded import (
    _TITLES,
    STOPWORDS,
    Fact,
    Pair,
    _article,
    _common_words,
    _known_names,
    names,
)
from helixloom.documents.ingest import Document

PERSPECTIVE = "who"

# A name: capitalised words, "of" and "and"/"&" between them ("Cobb and Sons", "Bank of Orlan")
_NAME_RUN = r"(?:the\s+)?[A-Z][\w'-]*(?:\s+(?:(?:of|and|&)\s+)?[A-Z][\w'-]*)*"
_PREPOSITIONS = frozenset(
    [
        "in",
        "on",
        "at",
        "from",
        "to",
        "by",
        "with",
        "of",
        "for",
        "into",
        "near",
        "past",
        "under",
        "over",
        "after",
        "before",
        "during",
    ]
)
# "the board's chair, Tomas Reyl," / "a local farmer, Ada Volk,": a lower-case role, then a name (not
# after a preposition: "In the north, Kell, Orlan and Brisk flooded" names places, not a role's holder)
_APPOSITIVE = re.compile(
    r"(?P<role>\b(?:[Tt]he|[Aa]n?)\s+(?:[a-z][\w'-]*\s+){0,3}?[a-z][\w'-]*),\s+"
    r"(?P<name>" + _NAME_RUN + r")\s*(?:[.;]|,(?!\s*(?:and\b|or\b|[A-Z])))"
)
# Roles whose holder is a person ("Who is the chair?"); other roles are asked for their name only
_PERSON_ROLE = re.compile(
    r"(?:chair|chairman|chairwoman|chairperson|director|mayor|head|founder|president|manager|chief|"
    r"editor|spokesman|spokeswoman|spokesperson|minister|leader|secretary|owner|captain|coach|"
    r"principal|governor|treasurer|engineer|architect|designer|inventor|author|officer|councillor|"
    r"skipper|pilot|driver|teacher|doctor|scientist|researcher|farmer|winner|"
    r"[a-z]+(?:er|or|ist|ian|ant|ent))$"
)
# "an old boat called the Mira Dune": a thing a name is given to (an indefinite phrase, or one after a
# comma or preposition: "the mayor called Jones" is a phone call, not a name)
_CALLED = re.compile(
    r"(?P<np>\b(?:[Tt]he|[Aa]n?)\s+(?:[a-z][\w'-]*\s+){0,3}?[a-z][\w'-]*)\s+(?:called|named|known\s+as)\s+"
    r"(?P<name>" + _NAME_RUN + r")(?!\s+(?:as|after|to|on|at|for|in)\b)"
)
# "The ferry, an old boat ...": the sentence's subject and the phrase that describes it
_HEAD_APPOSITIVE = re.compile(
    r"^(?P<head>(?:The|A|An)\s+(?:[\w'-]+\s+){0,2}?[\w'-]+),\s+(?P<desc>(?:a|an|the)\s)"
)
# The noun phrase right before "is/was ... <participle> by": what the agent made
_PASSIVE_SUBJECT = re.compile(
    r"(?P<subj>(?:\b(?:[Tt]he|[Aa]n?)\s+(?:[\w'-]+\s+){0,2}?[\w'-]+)|(?:\b[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*))"
    r"\s+(?P<be>is|are|was|were)\s+(?:[a-z]+\s+){0,2}$"
)
# "The Vorrick T-40 is a portable heater for tents, made by ...": the lead's subject
_LEADING_NP = re.compile(r"^(?P<subj>(?:(?:The|A|An)\s+)?(?:[\w'-]+\s+){0,3}?[\w'-]+?)\s+(?:is|are)\s")
_AUX = frozenset({"has", "have", "had", "will", "would", "can", "could", "should", "must", "may", "might"})
_AUX_MORE = frozenset({"be", "been", "have", "not"})
# "Councillor Ilse Varn, who proposed the reserve, said ...": a name and what it did
_RELATIVE = re.compile(r"(?P<name>" + _NAME_RUN + r"),\s+who\s+(?P<rest>[a-z][^,;.]+)[,;.]")
_PRONOUNS = frozenset({"it", "them", "this", "that", "him", "her", "these", "those"})
# Irregular past participles, with their past and present forms.
_IRREGULAR = {
    "made": ("made", "makes"),
    "built": ("built", "builds"),
    "run": ("ran", "runs"),
    "written": ("wrote", "writes"),
    "led": ("led", "leads"),
    "sold": ("sold", "sells"),
    "held": ("held", "holds"),
    "kept": ("kept", "keeps"),
    "paid": ("paid", "pays"),
    "sent": ("sent", "sends"),
    "given": ("gave", "gives"),
    "taken": ("took", "takes"),
    "chosen": ("chose", "chooses"),
    "drawn": ("drew", "draws"),
    "grown": ("grew", "grows"),
    "shown": ("showed", "shows"),
    "known": ("knew", "knows"),
    "brought": ("brought", "brings"),
    "bought": ("bought", "buys"),
    "taught": ("taught", "teaches"),
    "won": ("won", "wins"),
    "found": ("found", "finds"),
    "set": ("set", "sets"),
    "put": ("put", "puts"),
}
# "... made by Odel Forge": a past participle and its agent
_AGENT = re.compile(
    r"\b(?P<part>[a-z]+ed|" + "|".join(_IRREGULAR) + r")\s+by\s+(?P<agent>" + _NAME_RUN + r")"
)
# Subjects that are people or groups of them: "who", not "what"
_PEOPLE = re.compile(
    r"(?:ers?|ors?|ists?|ians?|ants?|ents?|men|man|women|woman|people|staff|police|public|residents?"
    r"|members?|councils?|boards?|committees?|wardens?|officials?|voters?|fishers?|children|parents?"
    r"|families|family|team|crew|users?|owners?|customers?)$"
)
# Clause subjects that ask nothing ("It", "They", "This"): the question would not say who
_VAGUE = frozenset({"it", "they", "this", "that", "these", "those", "he", "she", "we", "you", "there", "i"})
_OBJECT_END = re.compile(
    r",|;|:|\s[—–-]\s|\s+(?:because|so that|so|and|but|when|while|which|who|after|before|until|instead|if)\b"
)


def who_pairs(doc: Document, doc_facts: Sequence[Fact]) -> Iterator[Pair]:
    """Every sentence's who/what questions (see the module's docstring)."""
    common, known = _common_words(doc.text), _known_names(doc)
    doc_names = [n for f in doc_facts for n in names(f.sentence, common, known)] + names(
        doc.title, common, known | frozenset(doc.title.split())
    )
    for fact in doc_facts:
        s = fact.sentence
        for question, key in _asks(s, doc.text, doc_names):
            yield Pair(question, lead_answer(key, s), key, doc.doc_id, PERSPECTIVE, fact.index)


def _asks(sentence: str, text: str, doc_names: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(question, answer's lead) for each shape of ``sentence``."""
    seen: set[str] = set()

    def once(question: str, key: str) -> Iterator[tuple[str, str]]:
        q = re.sub(r"\s+", " ", question).strip()
        if q.lower() not in seen:
            seen.add(q.lower())
            yield q[:1].upper() + q[1:], key

    for m in _APPOSITIVE.finditer(sentence):
        role, name = m.group("role"), _strip_the(m.group("name"))
        if (
            role.split()[-1] in STOPWORDS
            or not _is_name(name)
            or _word_before(sentence, m.start()) in _PREPOSITIONS
        ):
            continue
        person = not m.group("name").lower().startswith("the ") and bool(
            _PERSON_ROLE.search(role.split()[-1])
        )
        for phrase in _role_phrases(role, doc_names):
            if person:
                yield from once(f"Who is {phrase}?", name)
            yield from once(f"What is the name of {phrase}?", name)
    head = _HEAD_APPOSITIVE.match(sentence)
    for m in _CALLED.finditer(sentence):
        name = _strip_the(m.group("name"))
        before = _word_before(sentence, m.start())
        given = m.group("np").split()[0].lower() in ("a", "an") or before in _PREPOSITIONS
        if not _is_name(name) or not given:
            continue
        phrases = [_definite(m.group("np"))]
        if head and m.start("np") == head.start("desc"):
            phrases.insert(0, _lower_first(head.group("head")))
        for phrase in phrases:
            yield from once(f"What is {phrase} called?", name)
            yield from once(f"What is the name of {phrase}?", name)
    for agent in _AGENT.finditer(sentence):
        who, part = _strip_the(agent.group("agent")), agent.group("part")
        if not _is_name(who):
            continue
        before = sentence[: agent.start()]
        passive = _PASSIVE_SUBJECT.search(before)
        after_head = re.search(r",\s+(?P<be>is|are|was|were)\s+(?:[a-z]+\s+){0,2}$", before)
        lead = _LEADING_NP.match(sentence)
        if lead and not before.rstrip().endswith(",") and len(before[lead.end() :].split()) > 6:
            lead = None  # "X is a lantern made by Y" (Y made X), not a far clause's participle
        if passive:
            subject, be = passive.group("subj"), passive.group("be")
        elif head and after_head:  # "The old wall, a stone pier ..., was built by ..."
            subject, be = head.group("head"), after_head.group("be")
        elif head and before.rstrip().endswith(","):
            subject, be = head.group("head"), "is"
        elif lead:
            subject, be = lead.group("subj"), "is"
        else:
            continue
        if subject.split()[0].lower() in _VAGUE | (STOPWORDS - {"the", "a", "an"}):
            continue
        thing = _article(_lower_first(subject), text)
        wh = "What" if who.isupper() else "Who"  # "USB" powers it; "Odel Forge" makes it
        if be in ("was", "were"):
            yield from once(f"{wh} {_IRREGULAR.get(part, (part, ''))[0]} {thing}?", who)
        elif part in _IRREGULAR:  # "Who makes the lamp?": only verbs whose present form is known
            yield from once(f"{wh} {_IRREGULAR[part][1]} {thing}?", who)
        yield from once(f"{wh} {be} {thing} {part} by?", who)
    for m in _RELATIVE.finditer(sentence):
        name, rest = _strip_the(m.group("name")), m.group("rest").split()
        if _is_name(name) and not _PRONOUNS & set(rest) and 2 <= len(rest) <= 10:
            yield from once(f"Who {' '.join(rest)}?", name)
    for clause in clauses(sentence):
        found = _subject_verb(clause.strip())
        if found is None:
            continue
        subj, verb, rest = found
        obj = _OBJECT_END.split(rest)[0].split()
        if not obj or len(obj) > 10 or subj.split()[0].lower() in _VAGUE | (STOPWORDS - {"the", "a", "an"}):
            continue
        head_word = re.split(r"\s+(?:from|of|in|at|on|with|for)\s+", subj)[0].split()[-1].lower()
        wh = "Who" if _PEOPLE.search(head_word) or _is_person_name(subj, doc_names) else "What"
        yield from once(f"{wh} {verb} {' '.join(obj)}?", subj)


def _subject_verb(clause: str) -> tuple[str, str, str] | None:
    """A clause's subject (one to five words, the first capitalised), its verb (with its auxiliaries:
    "will be paid", "has postponed") and the rest; an auxiliary first, else a past form, else a
    present one ("The red dial sets ..."), else None (an instruction, or no plain subject)."""
    words = clause.rstrip(".!?").split()
    if not words or not words[0][:1].isupper() or words[0].lower() in _IMPERATIVES | _VAGUE:
        return None
    window = range(1, min(6, len(words) - 1))
    found: tuple[int, int] | None = None  # the verb's first and last word
    for i in window:
        if words[i] in _AUX:
            j = i + 1
            while j < len(words) - 1 and words[j] in _AUX_MORE:
                j += 1
            found = (i, j) if words[j][:1].islower() else None
            break
    else:
        for test in (
            lambda w: w.endswith("ed") and len(w) > 4,
            lambda w: w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3,
        ):
            for i in window:
                w, previous = words[i], words[i - 1].lower()
                if not w[:1].islower() or w in STOPWORDS or not w.isalpha():
                    if w.lower() in STOPWORDS and w.lower() not in ("the", "a", "an", "of", "from", "in"):
                        break  # "Run the empty machine once on ...": no subject before a stopword verb
                    continue
                if previous in ("the", "a", "an") or w in ("called", "named", "known"):
                    continue  # "The parcels ...": a noun after an article; "called": a name given
                if test(w):
                    found = (i, i)
                    break
            if found:
                break
    if found is None:
        return None
    subject = words[: found[0]]
    inner = [w.lower() for w in subject[1:]]
    if (
        subject[-1].lower() in STOPWORDS
        or subject[-1].endswith(("'s", "s'"))
        or any(w.endswith(",") for w in subject)
        or any(
            w in ("the", "a", "an") and p not in ("of", "from", "in", "at", "on")
            for p, w in zip([subject[0].lower(), *inner], inner, strict=False)
        )
    ):
        return None  # "The company's", "Yesterday, the board", "Last year the firm": not a plain subject
    return " ".join(subject), " ".join(words[found[0] : found[1] + 1]), " ".join(words[found[1] + 1 :])


def _word_before(sentence: str, at: int) -> str:
    """The word before position ``at`` in lower case ("," for a comma), "" at the start."""
    before = sentence[:at].rstrip()
    if before.endswith(","):
        return ","
    return before.split()[-1].lower() if before.split() else ""


def _role_phrases(role: str, doc_names: Sequence[str]) -> list[str]:
    """How a question names a role: as written, "the chair of the board" for "the board's chair",
    and with the board's full name when the document has a name ending in that word."""
    role = role[:1].lower() + role[1:]
    out = [_definite(role)]
    m = re.match(r"^(?:the|a|an)\s+(?P<owner>[a-z][\w-]*)'s\s+(?P<what>.+)$", role)
    if m:
        owner, what = m.group("owner"), m.group("what")
        out.append(f"the {what} of the {owner}")
        for name in doc_names:
            if name.split()[-1].lower() == owner and len(name.split()) > 1:
                out.append(f"the {what} of the {name}")
                break
    return list(dict.fromkeys(out))


def _is_name(name: str) -> bool:
    """A name worth asking for: capitalised words, not a title alone ("Dr") nor an initial ("J")."""
    words = name.split()
    if len(words) == 1 and (len(name.rstrip(".")) < 2 or name.rstrip(".") in _TITLES):
        return False
    capitalised = all(w[:1].isupper() or w in ("of", "and", "&") for w in words)
    return bool(words) and capitalised and words[0].lower() not in STOPWORDS


def _is_person_name(subject: str, doc_names: Sequence[str]) -> bool:
    """A subject that is a person's name: two capitalised words the document names, no article."""
    return subject in doc_names and len(subject.split()) == 2 and not subject.lower().startswith("the ")


def _strip_the(name: str) -> str:
    return re.sub(r"^the\s+", "", name.strip(), flags=re.IGNORECASE)


def _definite(phrase: str) -> str:
    """A noun phrase with "the" for "a"/"an"/"its"/"their": "an old boat" -> "the old boat"."""
    return re.sub(r"^(?:a|an|its|their|his|her)\s+", "the ", phrase.strip(), flags=re.IGNORECASE)
