"""Code that repairs an answer so it passes its verifiable instructions (``evals.instructions``).

The verifier teacher knows which checks an answer failed; this module turns that knowledge into a
corrected answer, so the regenerator can be trained to *fix* a response (the seed's "a stronger
model regenerates from the critique", with code as the stronger model). It is a training-time tool:
at inference nothing sees the checks.

``repair(prompt, text)`` edits ``text`` as little as it can, one step per check kind (drop forbidden
words, remove commas, keep the first N sentences, make N bullets, cut to a word limit at a word
boundary, add a required word in a short clause, put the required first word first, append the
ending phrase, change case, wrap as a JSON object with the keys) and returns the result only when it
passes EVERY check of the prompt and is not empty; otherwise None. The steps run in an order where a
later one cannot undo an earlier one (length limits leave room for the words added after them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from helixloom.evals.instructions import InstructionPrompt, bullets, json_object, words

_WORD_SPAN = re.compile(r"[A-Za-z0-9']+")
_SENTENCE = re.compile(r".*?(?:[.!?]+(?=\s|$)|$)", re.DOTALL)
_BULLET = re.compile(r"^\s*[-*•]\s+")
_JOIN = " — "  # joins an ending phrase to the last sentence without starting a new one


def repair(prompt: InstructionPrompt, text: str, material: Sequence[str] = ()) -> str | None:
    """``text`` changed to pass every check of ``prompt``, or None when this cannot be done.

    ``material`` (other answers to the same prompt) supplies sentences when an answer is too short
    for a ``min_words`` check; nothing else is invented beyond the words the checks name."""
    if words(text) and prompt.passes(text):
        return text.strip()
    checks = {c.kind: c.arg for c in prompt.checks}
    out = " ".join(text.split()) if "bullets" not in checks else text.strip()
    if not words(out):
        return None
    if "json_keys" in checks:
        out = _as_json(out, list(checks["json_keys"]))
    if "min_words" in checks:
        out = _lengthen(out, int(checks["min_words"]), material)
    if "exclude_word" in checks:
        out = _drop_word(out, str(checks["exclude_word"]))
    if "no_commas" in checks:
        out = re.sub(r"\s*,\s*", " ", out).strip()
    phrase = str(checks["ends_with"]) if "ends_with" in checks else None
    if phrase is not None:
        out = _strip_ending(out, phrase)
    if "max_sentences" in checks:
        out = _first_sentences(out, int(checks["max_sentences"]))
    # room for the words the later steps add
    reserve = (2 if "include_word" in checks else 0) + (1 if "starts_with" in checks else 0)
    reserve += len(words(phrase)) if phrase is not None else 0
    budget = int(checks["max_words"]) - reserve if "max_words" in checks else None
    if budget is not None and budget < 1:
        return None
    if "bullets" in checks:
        out = _as_bullets(out, int(checks["bullets"]), budget, keep_all="min_words" in checks)
    elif budget is not None:
        out = _first_words(out, budget)
    if "include_word" in checks:
        out = _include(out, str(checks["include_word"]))
    if "starts_with" in checks:
        out = _start_with(out, str(checks["starts_with"]))
    if phrase is not None:
        out = _end_with(out, phrase, joined="max_sentences" in checks or "bullets" in checks)
    if "lowercase" in checks:
        out = out.lower()
    if "uppercase" in checks:
        out = out.upper()
    out = out.strip()
    return out if words(out) and prompt.passes(out) else None


def _word_pattern(word: str) -> re.Pattern[str]:
    # a whole word as ``instructions.words`` splits them (letters, digits and apostrophes)
    return re.compile(rf"(?<![A-Za-z0-9']){re.escape(word)}(?![A-Za-z0-9'])", re.IGNORECASE)


def _drop_word(text: str, word: str) -> str:
    out = _word_pattern(word).sub("", text)
    out = re.sub(r"[ \t]{2,}", " ", out)
    return re.sub(r"[ \t]+([.,!?;:])", r"\1", out).strip()


def _strip_ending(text: str, phrase: str) -> str:
    """``text`` without ``phrase`` at its end (it is appended again last, after any cut)."""
    body, core = text.rstrip(), phrase.rstrip(".!")
    if body.rstrip(".!").endswith(core):
        body = body.rstrip(".!")[: -len(core)].rstrip(" —-")
    return body


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.findall(text) if words(s)]


def _first_sentences(text: str, n: int) -> str:
    parts = _sentences(text)
    return " ".join(parts[:n]) if len(parts) > n else text


def _first_words(text: str, n: int) -> str:
    """The text cut to ``n`` words: at the last sentence end within them when that keeps at least
    half, else at the end of the ``n``-th word (a word boundary), closed with a full stop."""
    spans = list(_WORD_SPAN.finditer(text))
    if len(spans) <= n:
        return text
    kept = ""
    for sentence in _sentences(text):
        if len(words(kept + " " + sentence)) > n:
            break
        kept = (kept + " " + sentence).strip()
    if len(words(kept)) * 2 >= n:
        return kept
    cut = text[: spans[n - 1].end()].rstrip(" ,;:-—")
    return cut + "." if not cut.endswith((".", "!", "?")) else cut


def _lengthen(text: str, n: int, material: Sequence[str]) -> str:
    """``text`` followed by sentences of ``material`` it lacks, until it has ``n`` words."""
    out = text if text.endswith((".", "!", "?")) else text + "."
    have = {s.lower() for s in _sentences(out)}
    for other in material:
        for sentence in _sentences(" ".join(other.split())):
            if len(words(out)) >= n:
                return out
            if sentence.lower() not in have:
                out += " " + sentence
                have.add(sentence.lower())
    return out


def _as_bullets(text: str, n: int, budget: int | None, *, keep_all: bool = False) -> str:
    """Exactly ``n`` bullet lines made from the text's bullets, else its sentences, else its words
    split evenly; each item without a closing full stop (so items do not count as sentences).
    Extra sentences are dropped, or with ``keep_all`` (a word minimum) joined into the items."""
    lines = [_BULLET.sub("", ln).strip() for ln in text.splitlines() if _BULLET.match(ln)]
    items = [ln for ln in lines if words(ln)] if bullets(text) >= n else []
    if not items:
        flat = " ".join(_BULLET.sub("", ln) for ln in text.splitlines())
        items = _sentences(flat) if len(_sentences(flat)) >= n else []
        if keep_all and len(items) > n:
            items = ["; ".join(s.rstrip(" .!?") for s in group) for group in _split_even(items, n)]
        if not items:
            spans = [m.group(0) for m in _WORD_SPAN.finditer(flat)]
            if len(spans) < n:
                return text
            items = [" ".join(group) for group in _split_even(spans, n)]
    items = items[:n]
    if budget is not None:
        per = budget // n
        if per < 1:
            return text
        items = [_first_words(item, per) for item in items]
    return "\n".join("- " + item.rstrip(" .!?;:,") for item in items)


def _split_even(items: Sequence[str], n: int) -> list[Sequence[str]]:
    """``items`` in ``n`` consecutive groups of nearly equal size (none empty when len >= n)."""
    return [items[i * len(items) // n : (i + 1) * len(items) // n] for i in range(n)]


def _include(text: str, word: str) -> str:
    """``text`` with ``word`` added as ``and WORD`` at the end of its last sentence, if missing."""
    if _word_pattern(word).search(text):
        return text
    body = text.rstrip()
    stripped = body.rstrip(".!?")
    return f"{stripped} and {word}{body[len(stripped) :]}"


def _start_with(text: str, word: str) -> str:
    """``text`` whose first word is ``word`` (put before the old first word, which loses its capital
    when it merely started a sentence)."""
    first = _WORD_SPAN.search(text)
    if first is None or first.group(0).lower() == word.lower():
        return text
    old = first.group(0)
    if len(old) > 1 and old[0].isupper() and old[1:].islower() and old != "I":
        old = old[0].lower() + old[1:]
    return f"{text[: first.start()]}{word} {old}{text[first.end() :]}"


def _end_with(text: str, phrase: str, *, joined: bool) -> str:
    """``text`` ending with ``phrase``: a sentence after it, or joined by a dash when another check
    limits sentences or the text is a list (a new sentence or line would break that check)."""
    body = text.rstrip()
    if joined:
        return f"{body.rstrip(' .!?')}{_JOIN}{phrase}"
    if not body.endswith((".", "!", "?")):
        body += "."
    return f"{body} {phrase}"


def _as_json(text: str, keys: list[str]) -> str:
    """A JSON object with ``keys``: the answer's own object completed, or the answer's sentences
    (short) shared out among the keys."""
    value = json_object(text)
    if value is not None:
        return json.dumps({**value, **{k: "" for k in keys if k not in value}})
    prose = re.sub(r'[{}\[\]"`]|\bjson\b', " ", text)
    prose = re.sub(r"\b\w+\s*:\s*", " ", prose) if ":" in prose else prose
    parts = _sentences(" ".join(prose.split())) or [" ".join(prose.split())]
    parts = [p for p in parts if words(p)] or ["yes"]
    return json.dumps({k: _first_words(parts[i % len(parts)], 8) for i, k in enumerate(keys)})
