"""Simulated users: hidden tastes that rate answers through the server's rating API, as a person would.

A taste is a Python function of (prompt, answer) the learning loop never sees. ``likes`` is the
yes/no the benchmark counts (approval); ``score`` is a graded version the user consults to choose
between two answers, so a pair both liked (or both disliked) still gets a considered choice, and
only exact ties are skipped. The user reads the rating queue with ``GET /api/rate/{run}/queue`` and
answers with ``POST /api/rate/{run}/answer``, the same calls the rating page makes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_WORD = re.compile(r"[A-Za-z0-9']+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# an item has words on its own line: "\s+\S" spanned line breaks, so "1.\n2.\n3." counted as a list of
# three, and the improve loop learned to write empty numbered lines (measured, Dec 2026)
_BULLET = re.compile(r"^[ \t]*(?:[-*•]|\d+[.)])[ \t]+[^\W\d_]", re.MULTILINE)


def words(text: str) -> int:
    return len(_WORD.findall(text))


@dataclass(frozen=True)
class Taste:
    """A hidden preference: ``likes`` decides approval, ``score`` ranks two answers (higher preferred)."""

    name: str
    description: str
    likes: Callable[[str, str], bool]
    score: Callable[[str, str], float]


def says_something(prompt: str, answer: str) -> bool:
    """Whether ``answer`` adds at least three words of its own to ``prompt``.

    An answer that hands the question back ("What is gravity?" to "What is gravity?") says nothing,
    and no person who asked likes it, whatever their taste: every taste below dislikes it. Without
    this, the short-question taste was met by echoing the question (measured: the improve loop's
    approval went 12.5% -> 100% in one round, every answer the question again or a new one)."""
    asked = {w.lower() for w in _WORD.findall(prompt)}
    return len({w.lower() for w in _WORD.findall(answer)} - asked) >= 3


# Words that say nothing of a topic, for ``on_topic``.
_FUNCTION_WORDS = frozenset(
    [
        "about",
        "and",
        "are",
        "can",
        "did",
        "does",
        "for",
        "from",
        "how",
        "into",
        "its",
        "make",
        "made",
        "should",
        "that",
        "the",
        "their",
        "there",
        "this",
        "was",
        "way",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "with",
        "you",
        "your",
    ]
)


def _topic_words(text: str) -> set[str]:
    return {w.lower()[:5] for w in _WORD.findall(text) if len(w) >= 3 and w.lower() not in _FUNCTION_WORDS}


def on_topic(prompt: str, answer: str) -> bool:
    """Whether ``answer``, less a closing question, shares a word of substance with ``prompt`` (its
    first five letters: "volcanoes" meets "volcano"). A rough check none of the tastes makes, reported
    beside approval: the improve loop learned to please the answer-then-ask taste with answers about
    nothing ("We know what it is! Do you know how it feels to be here in the air?" to "What is
    gravity?", measured Dec 2026), and the list taste with numbered steps off the topic."""
    sentences = [x for x in _SENTENCE_END.split(answer.strip()) if x]
    if len(sentences) > 1 and sentences[-1].endswith("?"):
        sentences = sentences[:-1]
    return bool(_topic_words(prompt) & _topic_words(" ".join(sentences)))


ECHO_PENALTY = 10.0  # below any taste's score: an echo loses to every answer that says something


def _sensible(taste: Taste) -> Taste:
    """``taste`` that also dislikes an answer that says nothing (``says_something``)."""
    likes, score = taste.likes, taste.score
    return Taste(
        taste.name,
        taste.description + " (and, like anyone, dislikes an answer that only repeats the question)",
        lambda p, a: says_something(p, a) and likes(p, a),
        lambda p, a: score(p, a) - (0.0 if says_something(p, a) else ECHO_PENALTY),
    )


def answers_then_asks(answer: str, prompt: str = "") -> bool:
    """Whether ``answer`` ends with a question after sentences that are not all questions and say
    something of their own (``says_something`` of ``prompt``): it answers, then asks. Ending with a
    question alone was met by asking an unrelated question back (measured, Dec 2026: every liked
    answer of the improve loop's final policies, 13 of 13 and 18 of 18, was a lone question such as
    "What is the most expensive fruit?" to "Why do leaves change colour in autumn?"); a word before
    the question by "Yes. Do you like volcanoes?" to "What is a volcano?" (a fine-tune on the
    reward's picks, Dec 2026)."""
    sentences = [s for s in _SENTENCE_END.split(answer.strip()) if s]
    if len(sentences) < 2 or not sentences[-1].endswith("?"):
        return False
    statements = [s for s in sentences[:-1] if not s.endswith("?")]
    return bool(statements) and says_something(prompt, " ".join(statements))


def _short_question_score(prompt: str, answer: str) -> float:
    text = answer.strip()
    return (
        2.0 * text.endswith("?")
        + 1.0 * answers_then_asks(text, prompt)
        + 1.0 * (0 < words(text) <= 60)
        - words(text) / 200
    )


def _bullets_score(prompt: str, answer: str) -> float:
    return min(len(_BULLET.findall(answer)), 5) - words(answer) / 400


def _no_delve_score(prompt: str, answer: str) -> float:
    lowered = answer.lower()
    return -3.0 * ("delve" in lowered) - lowered.count("!") * 0.5 + min(words(answer), 80) / 80


def _plain_score(prompt: str, answer: str) -> float:
    first_person = len(re.findall(r"\b(?:I|I'm|I've|me|my)\b", answer))
    return -float(first_person) - 0.5 * answer.count("\n\n") + (words(answer) >= 10)


TASTES: dict[str, Taste] = {
    t.name: _sensible(t)
    for t in (
        Taste(
            "short_question",
            "prefers answers under 60 words that answer, then end with a question",
            lambda p, a: 0 < words(a) <= 60 and answers_then_asks(a, p),
            _short_question_score,
        ),
        Taste(
            "bullets",
            "likes answers laid out as a bulleted or numbered list (two items or more)",
            lambda p, a: len(_BULLET.findall(a)) >= 2,
            _bullets_score,
        ),
        Taste(
            "no_delve",
            "dislikes the word 'delve' and exclamation marks; likes substance (10 words or more)",
            lambda p, a: "delve" not in a.lower() and "!" not in a and words(a) >= 10,
            _no_delve_score,
        ),
        Taste(
            "plain",
            "dislikes answers that talk about themselves (I, me, my); likes 10 words or more",
            lambda p, a: _plain_score(p, a) >= 1.0,
            _plain_score,
        ),
    )
}


def choose(taste: Taste, prompt: str, a: str, b: str) -> str:
    """ "a", "b" or "skip" (the taste cannot tell them apart)."""
    sa, sb = taste.score(prompt, a), taste.score(prompt, b)
    if sa == sb:
        return "skip"
    return "a" if sa > sb else "b"


class SimulatedUser:
    """Rates the queue of run ``run`` on a helixloom server by ``taste``, through its HTTP API.

    ``noise`` is the chance of a flipped choice (people are not consistent either). With ``thumbs``
    it also marks each of the two answers up or down by ``taste.likes``, as the rating page lets a
    person do beside the choice (one rating: one pair judged); each mark flips with ``noise`` too.
    """

    def __init__(
        self,
        taste: Taste,
        base_url: str,
        run: str,
        *,
        api_key: str | None = None,
        noise: float = 0.0,
        seed: int = 0,
        client: Any = None,
        thumbs: bool = False,
    ) -> None:
        import httpx

        self.taste = taste
        self.run = run
        self.noise = noise
        self.thumbs = thumbs
        self.thumb_rng = random.Random(seed + 1)  # its own: thumbs do not move the choices' noise
        self.rng = random.Random(seed)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = client or httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=60)
        self.answered = 0

    def rate(self, limit: int) -> int:
        """Answer up to ``limit`` items of the queue; returns how many were answered."""
        r = self.http.get(f"/api/rate/{self.run}/queue", params={"limit": limit})
        r.raise_for_status()
        done = 0
        for item in r.json()["data"]:
            choice = choose(self.taste, item["prompt"], item["a"], item["b"])
            if choice != "skip" and self.rng.random() < self.noise:
                choice = "b" if choice == "a" else "a"
            body: dict[str, Any] = {"item": item["id"], "choice": choice, "source": "simulated"}
            if self.thumbs:
                body["thumbs"] = {
                    side: "up" if self.taste.likes(item["prompt"], item[side]) != self._flip() else "down"
                    for side in ("a", "b")
                }
            self.http.post(f"/api/rate/{self.run}/answer", json=body).raise_for_status()
            done += 1
        self.answered += done
        return done

    def _flip(self) -> bool:
        return self.noise > 0 and self.thumb_rng.random() < self.noise

    def close(self) -> None:
        self.http.close()
