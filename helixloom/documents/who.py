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
  "Who made the Brask lamp?";
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

from helixloom.documents.anchored import clauses, lead_answer
from helixloom.documents.grounded import (
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

_NAME_RUN = r"(?:the\s+)?[A-Z][\w'-]*(?:\s+(?:of\s+)?[A-Z][\w'-]*)*"
# "the board's chair, Tomas Reyl," / "its director, Ada Volk,": a lower-case role, then a name
_APPOSITIVE = re.compile(
    r"(?P<role>\b(?:[Tt]he|[Aa]n?|[Ii]ts|[Tt]heir|[Hh]is|[Hh]er)\s+(?:[a-z][\w'-]*\s+){0,3}?[a-z][\w'-]*),\s+"
    r"(?P<name>" + _NAME_RUN + r")\s*[,.;]"
)
# "an old boat called the Mira Dune"
_CALLED = re.compile(
    r"(?P<np>\b(?:the|a|an)\s+(?:[a-z][\w'-]*\s+){0,3}?[a-z][\w'-]*)\s+(?:called|named|known\s+as)\s+"
    r"(?P<name>" + _NAME_RUN + r")"
)
# "The ferry, an old boat ...": the sentence's subject and the phrase that describes it
_HEAD_APPOSITIVE = re.compile(
    r"^(?P<head>(?:The|A|An)\s+(?:[\w'-]+\s+){0,2}?[\w'-]+),\s+(?P<desc>(?:a|an|the)\s)"
)
_LEADING_NP = re.compile(
    r"^(?P<subj>(?:(?:The|A|An)\s+)?(?:[\w'-]+\s+){0,3}?[\w'-]+?)\s+(?:is|are|was|were)\b"
    r"|^(?!(?:The|A|An)\b)(?P<name>[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)\b"
)
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
    r",|;|:|\s+(?:because|so that|so|and|but|when|while|which|who|after|before|until|instead|if)\b"
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
        if role.split()[-1] in STOPWORDS or not _is_name(name):
            continue
        wh = "What" if m.group("name").lower().startswith("the ") else "Who"
        for phrase in _role_phrases(role, doc_names):
            yield from once(f"{wh} is {phrase}?", name)
            yield from once(f"What is the name of {phrase}?", name)
    head = _HEAD_APPOSITIVE.match(sentence)
    for m in _CALLED.finditer(sentence):
        name = _strip_the(m.group("name"))
        if not _is_name(name):
            continue
        phrases = [_definite(m.group("np"))]
        if head and m.start("np") == head.start("desc"):
            phrases.insert(0, _lower_first(head.group("head")))
        for phrase in phrases:
            yield from once(f"What is {phrase} called?", name)
            yield from once(f"What is the name of {phrase}?", name)
    agent = _AGENT.search(sentence)
    lead = _LEADING_NP.match(sentence)
    if agent and (head or lead) and _is_name(_strip_the(agent.group("agent"))):
        subject = head.group("head") if head else lead.group("subj") or lead.group("name") if lead else None
        if subject and subject.split()[0].lower() not in _VAGUE:
            past, present = _forms(agent.group("part"))
            thing = _article(_lower_first(subject), text)
            who = _strip_the(agent.group("agent"))
            yield from once(f"Who {present} {thing}?", who)
            yield from once(f"Who {past} {thing}?", who)
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
    present one ("The red dial sets ..."), else None."""
    words = clause.rstrip(".!?").split()
    if not words or not words[0][:1].isupper():
        return None
    window = range(1, min(6, len(words) - 1))
    for i in window:
        if words[i] in _AUX:
            j = i + 1
            while j < len(words) - 1 and words[j] in _AUX_MORE:
                j += 1
            if not words[j][:1].islower():
                return None
            return " ".join(words[:i]), " ".join(words[i : j + 1]), " ".join(words[j + 1 :])
    for test in (
        lambda w: w.endswith("ed") and len(w) > 4,
        lambda w: w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3,
    ):
        for i in window:
            w = words[i]
            if not w[:1].islower() or w in STOPWORDS or not w.isalpha():
                if w.lower() in STOPWORDS and w.lower() not in ("the", "a", "an", "of", "from", "in"):
                    break  # "Run the empty machine once on ...": no subject before a stopword verb
                continue
            if test(w):
                return " ".join(words[:i]), w, " ".join(words[i + 1 :])
    return None


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


def _forms(participle: str) -> tuple[str, str]:
    """A participle's past and present (third person) forms: "made" -> ("made", "makes")."""
    if participle in _IRREGULAR:
        return _IRREGULAR[participle]
    stem = participle[:-2]
    if stem.endswith("i"):
        base = stem[:-1] + "y"  # carried -> carry
    elif len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "ls":
        base = stem[:-1]  # planned -> plan
    elif re.search(r"(?:[^aeiou][aeiou][tvszcgkdr]|rv|rs|nc|rg|ur|iz|at|uc|ut|id)$", stem):
        base = stem + "e"  # produced -> produce, designed stays design
    else:
        base = stem
    if base.endswith("y") and base[-2:-1] not in "aeiou":
        present = base[:-1] + "ies"
    elif base.endswith(("s", "sh", "ch", "x", "z", "o")):
        present = base + "es"
    else:
        present = base + "s"
    return participle, present


def _is_name(name: str) -> bool:
    words = name.split()
    capitalised = all(w[:1].isupper() or w == "of" for w in words)
    return bool(words) and capitalised and words[0].lower() not in STOPWORDS


def _is_person_name(subject: str, doc_names: Sequence[str]) -> bool:
    """A subject that is a person's name: two capitalised words the document names, no article."""
    return subject in doc_names and len(subject.split()) == 2 and not subject.lower().startswith("the ")


def _strip_the(name: str) -> str:
    return re.sub(r"^the\s+", "", name.strip(), flags=re.IGNORECASE)


def _definite(phrase: str) -> str:
    """A noun phrase with "the" for "a"/"an"/"its"/"their": "an old boat" -> "the old boat"."""
    return re.sub(r"^(?:a|an|its|their|his|her)\s+", "the ", phrase.strip())


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text
