"""Questions asked in other words: one word of a question swapped for a synonym, kept when the teacher
finds the new question as natural as the old.

A reader rarely asks in the document's words: "Who leads the board?" of a text that names its chair,
"What does it cost?" of one that gives a price. The code-built perspectives ask in the document's own
words, and the 270M teacher cannot be trusted to rephrase (most of its rewrites are dropped). So this
perspective proposes and the teacher only verifies, which a small model does well:

1. **propose**: each content word of a question that is not part of its answer's key (names, numbers
   and the answer itself stay) is lemmatised and looked up in a synonym table built from WordNet 3.0
   (``data/documents/synonyms.json.gz``, made by ``scripts/build_synonyms.py``: the single-word
   synonyms of each lemma's most frequent senses); each synonym common enough to be one token of the
   teacher's vocabulary is inflected back to the word's form ("leads" -> "heads");
2. **verify**: the teacher scores each proposal, ``log p(question)`` with one word swapped, against the
   original; WordNet's senses are many and most swaps are nonsense in context ("the chair" ->
   "the professorship"), which a language model finds far less likely. The best ``per_question``
   swaps within ``margin`` nats of the original are kept; the answer stays the original's.

Written by hand: no library in our stack does lexical substitution without downloading a model or
corpus (NLTK and ``wn`` fetch WordNet at run time; spaCy's vectors are a download).
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources

from helixloom import textsim
from helixloom.documents.anchored import _UNIT_WH
from helixloom.documents.grounded import _NUMBER_WORDS, STOPWORDS, Pair
from helixloom.engine import Engine

PERSPECTIVE = "lexical"
MARGIN = 3.0  # nats a swapped question may lose against the original and still be kept
PER_QUESTION = 2  # swaps kept per question (learn's --synonyms; off there by default, see learn.SYNONYMS)
MAX_PROPOSALS = 12  # proposals scored per question (the teacher's time)


def _set(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: a word: letters, with inner apostrophes or hyphens ("don't", "well-known": never swapped)
_TOKEN = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
#: Words a question needs as they are: asking words, auxiliaries, the commonest light verbs (whose
#: WordNet synonyms are almost never synonyms in a question: "do" -> "make"), and the words of
#: quantity, order and time, whose "synonyms" change the question ("minutes" -> "seconds").
_KEEP = (
    STOPWORDS
    | frozenset(_NUMBER_WORDS)
    | _set("""be am tell say give get got go went gone make made do done happen going need use find know
        mean let take took taken have
        first second third fourth fifth sixth seventh eighth ninth tenth last next previous
        hundred thousand million billion dozen half quarter
        second minute hour day week month year decade century moment time times date""")
    | frozenset(u.rstrip("s") for u in _UNIT_WH)
    | frozenset(_UNIT_WH)
)
#: After these a word is a noun or an adjective ("the test": not the verb "test")...
_DETERMINERS = _set("the a an this that these those its their his her my your our each every")
#: ...and after these a verb's base form ("to test", "does it last").
_BEFORE_VERB = _set("to will would can could should must may might do does did")
#: Plurals in "-oes" (the rest of the words in "o" take "-s": photos, radios, pianos).
_OES = _set("hero potato tomato echo veto torpedo embargo volcano mosquito")
#: Verbs whose past tense is the base form (WordNet's verb.exc does not list an unchanged form).
_SAME_PAST = _set(
    "put set let cut hit cost hurt shut spread quit bet cast burst split read bid broadcast thrust"
)
_VOWELS = frozenset("aeiou")
#: Regular suffixes: (suffix, what the lemma ends in instead, the form, the parts of speech it marks).
_SUFFIXES = (
    ("ies", "y", "s", ("n", "v")),
    ("ses", "s", "s", ("n", "v")),
    ("xes", "x", "s", ("n", "v")),
    ("zes", "z", "s", ("n", "v")),
    ("ches", "ch", "s", ("n", "v")),
    ("shes", "sh", "s", ("n", "v")),
    ("oes", "o", "s", ("n", "v")),
    ("s", "", "s", ("n", "v")),
    ("ied", "y", "ed", ("v",)),
    ("ed", "e", "ed", ("v",)),
    ("ed", "", "ed", ("v",)),
    ("ing", "e", "ing", ("v",)),
    ("ing", "", "ing", ("v",)),
    ("ier", "y", "er", ("a",)),
    ("iest", "y", "est", ("a",)),
    ("er", "e", "er", ("a",)),
    ("er", "", "er", ("a",)),
    ("est", "e", "est", ("a",)),
    ("est", "", "est", ("a",)),
)


@dataclass
class LexicalReport:
    pairs: list[Pair]
    proposed: int = 0
    scored: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


_Table = tuple[dict[str, dict[str, list[str]]], dict[str, dict[str, str]], dict[str, dict[str, list[str]]]]


@cache
def _table() -> _Table:
    """(synonyms by part of speech, irregular form -> lemma, lemma -> irregular forms)."""
    raw = (resources.files("helixloom") / "data" / "documents" / "synonyms.json.gz").read_bytes()
    data = json.loads(gzip.decompress(raw))
    irregular: dict[str, dict[str, list[str]]] = {}
    for pos, forms in data["exceptions"].items():
        for form, lemma in forms.items():
            irregular.setdefault(pos, {}).setdefault(lemma, []).append(form)
    return data["synonyms"], data["exceptions"], irregular


def _irregular_form(word: str, pos: str) -> str:
    """The form an irregular ``word`` of part of speech ``pos`` stands in (from its ending: WordNet's
    exception lists mix past tenses, participles in "-ing" and third persons)."""
    if pos == "n":
        return "s"
    if pos == "a":
        return "er" if word.endswith("er") else "est" if word.endswith("st") else ""
    if pos == "v":
        if word.endswith("ing"):
            return "ing"
        if word.endswith("s") and not word.endswith("ss"):
            return "s"
        return "ed"
    return ""


def _double_final(word: str) -> bool:
    """Whether a regular suffix doubles the final consonant (stop -> stopped): consonant-vowel-consonant."""
    return (
        len(word) >= 3
        and word[-1] not in _VOWELS | {"w", "x", "y"}
        and word[-2] in _VOWELS
        and word[-3] not in _VOWELS
        and len([c for c in word if c in _VOWELS]) == 1
    )


def lemmas(word: str) -> Iterator[tuple[str, str, str]]:
    """(lemma, part of speech, form) readings of a lower-case ``word`` found in the table; ``form``
    is how the word is inflected: "" (as it is), "s", "ed", "ing", "er", "est"."""
    synonyms, exceptions, _ = _table()
    seen: set[tuple[str, str, str]] = set()

    def found(lemma: str, pos: str, form: str) -> Iterator[tuple[str, str, str]]:
        if lemma in synonyms.get(pos, {}) and (lemma, pos, form) not in seen:
            seen.add((lemma, pos, form))
            yield lemma, pos, form

    for pos in ("v", "n", "a", "r"):
        yield from found(word, pos, "")
        irregular = exceptions.get(pos, {}).get(word)
        if irregular:
            yield from found(irregular, pos, _irregular_form(word, pos))
    for suffix, add, form, parts in _SUFFIXES:
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            stem = word[: -len(suffix)]
            bases = [stem + add]
            if (
                not add
                and form != "s"
                and len(stem) >= 2
                and stem[-1] == stem[-2]
                and stem[-1] not in _VOWELS
            ):
                bases.append(stem[:-1])  # stopped -> stop
            for base in bases:
                for pos in parts:
                    yield from found(base, pos, form)


def inflect(lemma: str, pos: str, form: str) -> list[str]:
    """``lemma`` in ``form`` (irregular forms first, then the regular rule); [] where there is none."""
    if not form:
        return [lemma]
    _, _, irregular = _table()
    special = [f for f in irregular.get(pos, {}).get(lemma, []) if _form_of(f, lemma, pos, form)]
    if special:
        return special
    if form == "s":
        if lemma.endswith("y") and len(lemma) > 2 and lemma[-2] not in _VOWELS:
            return [lemma[:-1] + "ies"]
        if lemma.endswith(("s", "x", "z", "ch", "sh")) or lemma in _OES:
            return [lemma + "es"]
        return [lemma + "s"]
    if form == "ed" and pos == "v" and lemma in _SAME_PAST:
        return [lemma]
    stem = lemma
    if form in ("ed", "er", "est") and lemma.endswith("y") and len(lemma) > 2 and lemma[-2] not in _VOWELS:
        stem = lemma[:-1] + "i"
    elif lemma.endswith("e") and form in ("ed", "er", "est", "ing"):
        stem = lemma if form == "ing" and lemma.endswith(("ee", "oe", "ye")) else lemma[:-1]
    elif _double_final(lemma):
        stem = lemma + lemma[-1]
    return [stem + form]


def _form_of(form_word: str, lemma: str, pos: str, form: str) -> bool:
    """Whether an irregular ``form_word`` of ``lemma`` can stand for ``form`` (past tenses for "ed")."""
    if form == "ing":
        return form_word.endswith("ing")
    if form == "s":  # a plural (children) or a verb's third person, which ends in "s" (does, has)
        if pos == "v" and not form_word.endswith("s"):
            return False
        return form_word != lemma and not form_word.endswith(("ed", "ing"))
    if form in ("er", "est"):
        return form_word.endswith(form[-2:] if form == "er" else "st")
    return not form_word.endswith(("ing", "s")) or form_word.endswith("ss")


def _fits(pos: str, form: str, before: str) -> bool:
    """Whether a reading (part of speech, form) fits after the word ``before`` (a rough tagger: a
    determiner takes a noun or an adjective, "to" or an auxiliary a verb's base form)."""
    if before in _DETERMINERS:
        return pos in ("n", "a")
    if before in _BEFORE_VERB:
        return pos == "v" and not form
    return True


def _match_case(word: str, like: str) -> str:
    return word.capitalize() if like[:1].isupper() else word


def proposals(question: str, keep: Sequence[str], common: Callable[[str], bool]) -> list[str]:
    """``question`` with one word swapped for a synonym, for every word not in ``keep`` (the answer's
    words) nor capitalised mid-sentence (a name), nor after "how" ("how often", "how long"); the
    words' proposals interleaved (the first of each word, then the second...), so that a cap on
    how many are scored does not spend it all on the first word. ``common(word)`` filters synonyms."""
    synonyms, _, _ = _table()
    kept = {w.lower() for k in keep for w in textsim.words(k)}
    per_word: list[list[str]] = []
    previous = ""
    for m in _TOKEN.finditer(question):
        word = m.group()
        lower = word.lower()
        before, previous = previous, lower
        after_how = before == "how"
        if lower in _KEEP or lower in kept or len(lower) < 3 or after_how or not lower.isalpha():
            continue
        if word[:1].isupper() and m.start() > 0:
            continue  # a name, or a word of one
        mine: list[str] = []
        for lemma, pos, form in lemmas(lower):
            if lemma in _KEEP or not _fits(pos, form, before):
                continue
            for synonym in synonyms[pos][lemma]:
                if synonym in _KEEP:
                    continue  # "cost" -> "be", "last" -> "go": a light word, not a synonym
                for surface in inflect(synonym, pos, form):
                    if surface == lower or not common(surface):
                        continue
                    text = question[: m.start()] + _match_case(surface, word) + question[m.end() :]
                    if text not in mine:
                        mine.append(text)
        per_word.append(mine)
    out: list[str] = []
    for round_ in itertools.zip_longest(*per_word):
        out.extend(t for t in round_ if t is not None and t not in out)
    return out


def lexical_pairs(
    teacher: Engine,
    pairs: Sequence[Pair],
    *,
    per_question: int = PER_QUESTION,
    margin: float = MARGIN,
    max_proposals: int = MAX_PROPOSALS,
    on_progress: Callable[[int, int], None] | None = None,
) -> LexicalReport:
    """Up to ``per_question`` synonym swaps of every question in ``pairs`` (see the module
    docstring), each a new pair with the same answer and the perspective ``lexical``."""
    report = LexicalReport([])
    questions = [p for p in pairs if p.question.rstrip().endswith("?")]
    seen = {" ".join(textsim.words(p.question)) for p in pairs}
    vocabulary: dict[str, bool] = {}

    def common(word: str) -> bool:
        if word not in vocabulary:
            vocabulary[word] = len(teacher.tokenize(" " + word, add_special_tokens=False)) == 1
        return vocabulary[word]

    for done, pair in enumerate(questions, 1):
        offered = proposals(pair.question, [pair.key], common)
        report.proposed += len(offered)
        offered = [q for q in offered if " ".join(textsim.words(q)) not in seen][:max_proposals]
        if offered:
            scored = teacher.prompt_logprobs([_framed(q) for q in [pair.question, *offered]])
            report.scored += len(offered)
            totals = [sum(x for x in s.logprobs if x is not None) for s in scored]
            ranked = sorted(zip(totals[1:], offered, strict=True), key=lambda x: -x[0])
            kept = 0
            for total, question in ranked:
                if total < totals[0] - margin:
                    report.dropped["unlikely"] = report.dropped.get("unlikely", 0) + 1
                    continue
                if kept >= per_question:
                    report.dropped["enough"] = report.dropped.get("enough", 0) + 1
                    continue
                kept += 1
                seen.add(" ".join(textsim.words(question)))
                report.pairs.append(replace(pair, question=question, perspective=PERSPECTIVE))
        if on_progress is not None:
            on_progress(done, len(questions))
    return report


def _framed(question: str) -> str:
    """The text the teacher scores: the question as a reader's, so its likelihood is a question's."""
    return f"Question: {question}"
