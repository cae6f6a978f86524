"""Replay of rated sessions: re-ask what users rated, and judge the new answer against the rated one.

Stored answers that users rated thumbs up or down (on a message, or on the whole session: its final
answer) are asked again to the current model (or adapter), and a pairwise judge compares each new
answer (A) with the rated one (B); the report keeps the win rate against liked answers and against
disliked answers apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from helixloom.engine import Engine, SamplingParams, sampling
from helixloom.errors import HelixloomError
from helixloom.evals.pairwise import PairVerdict, PairwiseJudge
from helixloom.evals.prompts import Progress, answer, in_batches, question_text
from helixloom.evals.winrate import WinRateReport, win_rate

if TYPE_CHECKING:
    from helixloom.store import Message, Store


@dataclass(frozen=True)
class RatedAnswer:
    """A stored answer a user rated, with the conversation that led to it.

    ``message_id`` is the rated (or, for a rating on the whole session, the final) assistant message.
    """

    session_id: str
    message_id: str
    rating: Literal["up", "down"]
    messages: tuple[dict[str, str], ...]
    answer: str

    @property
    def prompt(self) -> str:
        """The conversation as the judge sees it (``question_text``)."""
        return question_text(list(self.messages))


def _final_answer(run: Sequence[Message]) -> Message | None:
    """The answer that stands for a run of assistant messages after one user turn: HelixNet's last
    regeneration (or the last non-critique stage), else the first choice of a plain completion."""
    if not run:
        return None
    staged = [m for m in run if m.stage]
    if staged:
        regenerated = [m for m in staged if m.stage == "regenerator"]
        if regenerated:
            return regenerated[-1]
        drafts = [m for m in staged if m.stage != "critic"]
        if drafts:
            return drafts[-1]
    plain = [m for m in run if not m.stage]
    return plain[0] if plain else None


def _context(messages: Sequence[Message], upto: int) -> list[dict[str, str]]:
    """The conversation before position ``upto``: system and user messages, and for every earlier
    turn its final answer; the sibling drafts and choices of the current turn are left out."""
    out: list[dict[str, str]] = []
    run: list[Message] = []
    for m in messages[:upto]:
        if m.role == "assistant":
            run.append(m)
            continue
        if run:
            final = _final_answer(run)
            if final is not None:
                out.append({"role": "assistant", "content": final.content})
            run = []
        out.append({"role": m.role, "content": m.content})
    return out


def served_conversation(messages: Sequence[Message]) -> list[dict[str, str]]:
    """A stored session as the model is served it on the next turn: system and user messages, and for
    every turn only its final answer (HelixNet's regeneration; a completion's first choice). Actor
    drafts and critiques are the pipeline's inner workings, never earlier assistant turns: a training
    row built from them would teach a conversation that inference never shows."""
    out = _context(messages, len(messages))
    last = max((i for i, m in enumerate(messages) if m.role != "assistant"), default=-1)
    final = _final_answer([m for m in messages[last + 1 :] if m.role == "assistant"])
    if final is not None:
        out.append({"role": "assistant", "content": final.content})
    return [m for m in out if m["content"]]


def rated_answers(
    store: Store, *, rating: Literal["up", "down"] | None = None, limit: int | None = None
) -> list[RatedAnswer]:
    """Every rated assistant answer (newest sessions first): ratings on a message rate that message,
    ratings on a session rate its final answer. Ratings on user messages are skipped."""
    signs: list[Literal["up", "down"]] = [rating] if rating else ["up", "down"]
    session_ids: dict[str, None] = {}  # ordered, without duplicates
    for sign in signs:
        offset = 0
        while batch := store.list_sessions(rating=sign, limit=500, offset=offset):
            session_ids.update((s.id, None) for s in batch)
            offset += len(batch)
    out: list[RatedAnswer] = []
    seen: set[tuple[str, str]] = set()
    for sid in session_ids:
        messages = store.get_messages(sid)
        targets: list[tuple[int, int]] = []  # (message position, score)
        for pos, m in enumerate(messages):
            targets.extend((pos, r.score) for r in store.ratings_for("message", m.id))
        session_ratings = store.ratings_for("session", sid)
        if session_ratings:
            last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
            if last_user is not None:
                final = _final_answer([m for m in messages[last_user + 1 :] if m.role == "assistant"])
                if final is not None:
                    pos = next(i for i, m in enumerate(messages) if m.id == final.id)
                    targets.extend((pos, r.score) for r in session_ratings)
        for pos, score in targets:
            m = messages[pos]
            thumb: Literal["up", "down"] = "up" if score > 0 else "down"
            if m.role != "assistant" or (rating and thumb != rating) or (m.id, thumb) in seen:
                continue
            context = _context(messages, pos)
            if not context or context[-1]["role"] != "user":
                continue
            seen.add((m.id, thumb))
            out.append(RatedAnswer(sid, m.id, thumb, tuple(context), m.content.strip()))
            if limit is not None and len(out) >= limit:
                return out
    return out


def no_rated_answers(rating: Literal["up", "down"] | None) -> HelixloomError:
    """The error for a store without (such) rated answers: nothing to replay."""
    return HelixloomError(
        "no rated answers in the store" + (f" (rating {rating})" if rating else ""),
        "rate answers thumbs up or down first (POST /api/sessions/ID/feedback, or the loom)",
    )


@dataclass(frozen=True)
class ReplayRow:
    item: RatedAnswer
    new_answer: str
    verdict: PairVerdict  # A is the new answer, B the rated one

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.item.session_id,
            "message_id": self.item.message_id,
            "rating": self.item.rating,
            "prompt": self.item.prompt,
            "rated_answer": self.item.answer,
            "new_answer": self.new_answer,
            **self.verdict.to_dict(),
        }


@dataclass(frozen=True)
class ReplayReport:
    """The new model's win rate against answers users liked (``up``; it should at least tie) and
    against answers they disliked (``down``; it should win)."""

    up: WinRateReport
    down: WinRateReport
    rows: list[ReplayRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "up": self.up.to_dict(),
            "down": self.down.to_dict(),
            "rows": [r.to_dict() for r in self.rows],
        }


def replay_sessions(
    store: Store,
    engine: Engine,
    judge: PairwiseJudge,
    *,
    adapter: str | None = None,
    params: SamplingParams | None = None,
    rating: Literal["up", "down"] | None = None,
    limit: int | None = None,
    items: Sequence[RatedAnswer] | None = None,
    system: str | None = None,
    batch_size: int = 8,
    on_progress: Progress | None = None,
) -> ReplayReport:
    """Re-ask every rated answer's conversation to ``engine`` (+ ``adapter``) and judge the new answer
    (A) against the rated one (B); win rates against liked and disliked answers are kept apart.

    ``items`` are the rated answers to replay (default: ``rated_answers(store, rating=, limit=)``);
    ``system`` is added to conversations that have no system message (e.g. an adapter's own)."""
    if items is None:
        items = rated_answers(store, rating=rating, limit=limit)
    if not items:
        raise no_rated_answers(rating)
    params = params or sampling(temperature=0, max_tokens=256)
    rows: list[ReplayRow] = []
    for chunk in in_batches(items, batch_size, on_progress):
        prompts = [list(it.messages) for it in chunk]
        new = answer(engine, prompts, params, adapter=adapter, system=system)
        verdicts = judge.compare(prompts, new, [it.answer for it in chunk])
        rows.extend(ReplayRow(it, a, v) for it, a, v in zip(chunk, new, verdicts, strict=True))

    def report(sign: str) -> WinRateReport:
        part = [r for r in rows if r.item.rating == sign]
        return win_rate(
            [r.verdict for r in part], [len(r.new_answer) for r in part], [len(r.item.answer) for r in part]
        )

    return ReplayReport(report("up"), report("down"), rows)
