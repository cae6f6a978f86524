"""Question/answer pairs from documents: every prompt of the suite on every chunk, through a teacher.

The teacher is any engine. Where it supports constrained decoding the JSON shape is enforced while
it writes (small models rarely write valid JSON by being asked); elsewhere the reply is parsed and,
if it is not valid, asked again once with a stricter instruction. Failures are counted per prompt and
reported, never dropped silently. Near-duplicate questions about the same document are removed.

Each (prompt, chunk) is a *unit* of work. By default a unit asks its questions one at a time: round
``k`` asks for question ``k`` of ``K`` and lists the questions already written, with its own sampling
seed, so that a weak teacher (which, asked for ten questions at once, writes one question ten times or
copies the example) writes different ones. ``one_at_a_time=False`` asks for all of a unit's pairs in one
call, as Helix did (cheaper with a strong teacher). A finished unit can be appended to a checkpoint
file as soon as it completes; a later run with the same file skips the units in it, so an interrupted
generation resumes where it stopped and ends with the same pairs as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from helixloom import prompting, textsim
from helixloom.documents import grounding
from helixloom.documents.chunking import chunk
from helixloom.documents.ingest import Document
from helixloom.engine import Constraint, Engine, GenerationRequest, SamplingParams, sampling
from helixloom.errors import HelixloomError

# The key of the answer in the JSON the teacher writes. Chosen when Constraint.json_schema sorted a
# schema's keys ("reply" sorts after "question", so the question came first); constraints now keep the
# schema's order, so any name would do. Replies keyed "answer" (Helix's shape, what unconstrained
# teachers often write) are read too.
ANSWER_KEY = "reply"


@dataclass(frozen=True)
class QAPrompt:
    name: str
    user: str
    max_pairs: int = 20


@dataclass(frozen=True)
class Suite:
    """The prompt suite (a data file: ``data/documents/qa_prompts.yaml`` unless the user gives one)."""

    system: str
    json_instruction: str
    retry_instruction: str
    prompts: tuple[QAPrompt, ...]
    # One-at-a-time mode: asks for question {number} of {total}; {asked} is empty for the first one,
    # else ``asked_list`` with {questions} (one "- question" line each).
    one_instruction: str = (
        "Write them one at a time.\n{asked}Now write the next question, a new one, and its answer from the "
        'document. Reply with a JSON object with the keys "question" and "reply".'
    )
    asked_list: str = "Questions already written:\n{questions}\n"

    @classmethod
    def load(cls, path: str | Path | None = None) -> Suite:
        if path is None:
            text = (resources.files("helixloom") / "data" / "documents" / "qa_prompts.yaml").read_text()
        else:
            if not Path(path).is_file():
                raise HelixloomError(f"prompt suite {path} does not exist")
            text = Path(path).read_text()
        return cls.from_dict(yaml.safe_load(text), str(path or "built-in"))

    @classmethod
    def from_dict(cls, data: Any, origin: str = "built-in") -> Suite:
        try:
            prompts = tuple(QAPrompt(**p) for p in data["prompts"])
            optional = {k: data[k] for k in ("one_instruction", "asked_list") if k in data}
            suite = cls(
                data["system"], data["json_instruction"], data["retry_instruction"], prompts, **optional
            )
        except (KeyError, TypeError) as exc:
            raise HelixloomError(f"prompt suite {origin} is malformed: {exc}") from exc
        if not prompts:
            raise HelixloomError("the prompt suite has no prompts")
        return suite

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def only(self, names: Sequence[str]) -> Suite:
        """The suite restricted to the named prompts (unknown names are an error)."""
        known = {p.name for p in self.prompts}
        unknown = sorted(set(names) - known)
        if unknown:
            raise HelixloomError(f"unknown prompts {unknown}", f"the suite has: {', '.join(sorted(known))}")
        return Suite(self.system, self.json_instruction, self.retry_instruction,
                     tuple(p for p in self.prompts if p.name in names),
                     self.one_instruction, self.asked_list)  # fmt: skip


def pair_schema() -> dict[str, Any]:
    """One question and its answer (the question is written first: see ``ANSWER_KEY``)."""
    return {
        "type": "object",
        "properties": {
            "question": {"type": "string", "minLength": 8, "maxLength": 300},
            ANSWER_KEY: {"type": "string", "minLength": 1, "maxLength": 1000},
        },
        "required": ["question", ANSWER_KEY],
    }


def pairs_schema(max_pairs: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "pairs": {"type": "array", "minItems": 1, "maxItems": max_pairs, "items": pair_schema()},
        },
        "required": ["pairs"],
    }


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    doc_id: str
    prompt: str
    chunk: int


@dataclass
class PromptStats:
    calls: int = 0
    retried: int = 0
    failed: int = 0  # calls whose reply held no valid JSON, even when asked again
    junk: int = 0  # pairs dropped as not a real question (see ``usable``)
    pairs: int = 0
    # pairs dropped as not grounded in their chunk, by reason (``documents.grounding.REASONS``)
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass
class QAReport:
    pairs: list[QAPair]
    stats: dict[str, PromptStats] = field(default_factory=dict)
    duplicates_removed: int = 0
    constrained: bool = False
    resumed_units: int = 0  # units read back from the checkpoint instead of asked again

    def summary(self) -> str:
        failed = {n: s.failed for n, s in self.stats.items() if s.failed}
        lines = [
            f"{len(self.pairs)} question/answer pairs ({self.duplicates_removed} near-duplicates removed)"
        ]
        lines.append(
            "JSON enforced while decoding" if self.constrained else "JSON parsed, retried once when invalid"
        )
        if self.resumed_units:
            lines.append(f"{self.resumed_units} prompt x chunk units resumed from the checkpoint")
        for name, s in self.stats.items():
            line = f"  {name:<24} {s.pairs:>4} pairs, {s.calls} calls, {s.retried} retried, {s.failed} failed"
            line += f", {s.junk} junk pairs dropped" if s.junk else ""
            lines.append(line + (f", not grounded: {s.dropped}" if s.dropped else ""))
        if failed:
            lines.append(f"failed calls by prompt: {failed}")
        return "\n".join(lines)


@dataclass
class _Unit:
    """One prompt on one chunk, and what its calls produced so far."""

    doc: Document
    chunk_index: int
    text: str
    prompt: QAPrompt
    size: int  # pairs asked for: min(num_questions, prompt.max_pairs)
    rounds: int  # calls to make: ``size`` one at a time, else 1
    key: str  # identifies the work (content, prompt, settings): the checkpoint's key
    pairs: list[tuple[str, str]] = field(default_factory=list)
    calls: int = 0
    retried: int = 0
    failed: int = 0
    junk: int = 0

    @property
    def done(self) -> bool:
        return self.calls >= self.rounds

    def record(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "doc_id": self.doc.doc_id,
            "chunk": self.chunk_index,
            "prompt": self.prompt.name,
            "pairs": self.pairs,
            "calls": self.calls,
            "retried": self.retried,
            "failed": self.failed,
            "junk": self.junk,
        }


OnProgress = Callable[[int, int], None]


def generate_pairs(
    teacher: Engine,
    documents: Sequence[Document],
    suite: Suite,
    *,
    num_questions: int = 10,
    chunk_tokens: int = 1024,
    overlap_tokens: int = 128,
    max_tokens: int | None = None,
    temperature: float = 0.7,
    batch_size: int = 8,
    seed: int = 0,
    one_at_a_time: bool = True,
    checkpoint: Path | None = None,
    on_progress: OnProgress | None = None,
    grounded: bool = True,
) -> QAReport:
    """Run every prompt of ``suite`` on every chunk of every document through ``teacher``.

    A prompt asks for up to ``min(num_questions, prompt.max_pairs)`` pairs per chunk: one call per
    question when ``one_at_a_time`` (each with its own seed, listing the questions already written),
    else one call for all of them. Every call has a sampling seed derived from ``seed`` and the work it
    does, so results do not depend on batching or on resuming. With ``checkpoint``, every finished
    (prompt, chunk) unit is appended to that JSONL file as it completes, and units already in it are
    not asked again. ``on_progress(calls done, calls in all)`` follows the calls. ``max_tokens`` per
    call defaults to 512 for one pair (the schema's longest pair fits) and 1024 for all of them: a
    batch lasts as long as its longest reply, and a weak teacher rambles to the limit. With
    ``grounded`` (the default) a pair is kept only when ``documents.grounding.check`` finds it
    supported by its chunk; the others are counted per prompt and reason in ``PromptStats.dropped``.
    """
    if max_tokens is None:
        max_tokens = 512 if one_at_a_time else 1024
    instructions = (suite.json_instruction, suite.retry_instruction, suite.one_instruction, suite.asked_list)
    settings = [one_at_a_time, max_tokens, temperature, seed, suite.system, *instructions]
    units = []
    for doc in documents:
        pieces = chunk(doc.text, teacher.count_tokens, max_tokens=chunk_tokens, overlap_tokens=overlap_tokens)
        for i, text in enumerate(pieces):
            for prompt in suite.prompts:
                size = max(1, min(num_questions, prompt.max_pairs))
                rounds = size if one_at_a_time else 1
                key = _digest([doc.doc_id, i, text, asdict(prompt), size, settings])
                units.append(_Unit(doc, i, text, prompt, size, rounds, key))
    report = QAReport(
        [], {p.name: PromptStats() for p in suite.prompts}, constrained=teacher.supports_constraints
    )
    finished = _load_checkpoint(checkpoint) if checkpoint is not None else {}
    pending = []
    for unit in units:
        saved = finished.get(unit.key)
        if saved is None:
            pending.append(unit)
            continue
        unit.pairs = [(str(q), str(a)) for q, a in saved["pairs"]]
        unit.calls, unit.retried, unit.failed = saved["calls"], saved["retried"], saved["failed"]
        unit.junk = int(saved.get("junk", 0))
        report.resumed_units += 1
    total = sum(u.rounds for u in units)
    done = sum(u.calls for u in units)
    if on_progress is not None and pending:
        on_progress(done, total)
    params = sampling(temperature=temperature, max_tokens=max_tokens)
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
    out = open(checkpoint, "a", encoding="utf-8") if checkpoint is not None else None  # noqa: SIM115
    try:
        active: list[_Unit] = []
        queue = iter(pending)
        while True:
            active.extend(u for _, u in zip(range(batch_size - len(active)), queue, strict=False))
            if not active:
                break
            _step(teacher, suite, active, params, one_at_a_time, seed)
            done += len(active)
            for unit in [u for u in active if u.done]:
                active.remove(unit)
                if out is not None:
                    out.write(json.dumps(unit.record(), ensure_ascii=False) + "\n")
                    out.flush()
                    os.fsync(out.fileno())
            if on_progress is not None:
                on_progress(done, total)
    finally:
        if out is not None:
            out.close()
    for unit in units:
        stats = report.stats[unit.prompt.name]
        stats.calls += unit.calls
        stats.retried += unit.retried
        stats.failed += unit.failed
        stats.junk += unit.junk
        said = (suite.system, unit.prompt.user.replace("{chunk}", ""), *instructions)
        for q, a in unit.pairs:
            reason = grounding.check(q, a, unit.text, said) if grounded else None
            if reason is not None:
                stats.dropped[reason] = stats.dropped.get(reason, 0) + 1
                continue
            report.pairs.append(QAPair(q, a, unit.doc.doc_id, unit.prompt.name, unit.chunk_index))
    before = len(report.pairs)
    report.pairs = dedupe(report.pairs)
    report.duplicates_removed = before - len(report.pairs)
    for p in report.pairs:
        report.stats[p.prompt].pairs += 1
    return report


def _step(
    teacher: Engine, suite: Suite, units: Sequence[_Unit], params: SamplingParams, one: bool, seed: int
) -> None:
    """One call for each unit (its next question, or all its pairs), retried once where unparsed."""
    texts = _ask(teacher, suite, units, params, one=one, seed=seed, retry=False)
    limit = [1 if one else u.size for u in units]
    parsed = [_parse(t, n) for t, n in zip(texts, limit, strict=True)]
    again = [i for i, p in enumerate(parsed) if p is None] if not teacher.supports_constraints else []
    if again:
        retried = _ask(teacher, suite, [units[i] for i in again], params, one=one, seed=seed, retry=True)
        for i, text in zip(again, retried, strict=True):
            units[i].retried += 1
            parsed[i] = _parse(text, limit[i])
    for unit, pairs in zip(units, parsed, strict=True):
        unit.calls += 1
        if pairs is None:
            unit.failed += 1
            continue
        kept = [(q, a) for q, a in pairs if usable(q, a)]
        unit.junk += len(pairs) - len(kept)
        unit.pairs.extend(kept)


def _ask(
    teacher: Engine,
    suite: Suite,
    units: Sequence[_Unit],
    params: SamplingParams,
    *,
    one: bool,
    seed: int,
    retry: bool,
) -> list[str]:
    if not units:
        return []
    requests = []
    for unit in units:
        user = unit.prompt.user.format(title=unit.doc.title, chunk=unit.text, num_questions=unit.size)
        if one:
            asked = "\n".join(f"- {q}" for q, _ in unit.pairs)
            user += "\n\n" + suite.one_instruction.format(
                asked=suite.asked_list.format(questions=asked) if asked else "",
                number=unit.calls + 1,
                total=unit.rounds,
            )
            if retry:
                user += "\n\n" + suite.retry_instruction
            schema = pair_schema()
        else:
            user += "\n\n" + (suite.retry_instruction if retry else suite.json_instruction)
            schema = pairs_schema(unit.size)
        rendered = prompting.render(
            teacher, [{"role": "system", "content": suite.system}, {"role": "user", "content": user}]
        )
        constraint = Constraint.json_schema(schema) if teacher.supports_constraints else None
        call_seed = int(_digest([seed, unit.key, unit.calls, retry])[:8], 16)
        job_params = params.model_copy(
            update={"stop": rendered.stop if constraint is None else (), "seed": call_seed}
        )
        requests.append(GenerationRequest(rendered.prompt, job_params, None, constraint))
    return [r.text for r in teacher.generate(requests)]


def _parse(text: str, max_pairs: int) -> list[tuple[str, str]] | None:
    """The (question, answer) pairs in a teacher's reply, or None when it holds no valid JSON."""
    cleaned = re.sub(r"^```(?:json)?|```$", "", text.strip(), flags=re.M).strip()
    start = min((i for i in (cleaned.find("{"), cleaned.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(cleaned[start:])
    except json.JSONDecodeError:
        return None
    if isinstance(data, dict) and "question" in data:
        items: Any = [data]  # one pair on its own
    else:
        items = data.get("pairs", data.get("questions")) if isinstance(data, dict) else data
    if not isinstance(items, list):
        return None
    pairs = []
    for item in items[:max_pairs]:
        if isinstance(item, dict):
            q, a = item.get("question"), item.get(ANSWER_KEY, item.get("answer"))
            if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
                pairs.append((q.strip(), a.strip()))
    return pairs or None


# Words of the instructions themselves: a "question" made only of these (and numbers) is the teacher
# copying its instructions ("Question 2", "question", "Your question"), not asking about the subject.
_INSTRUCTION_WORDS = frozenset(
    ("question", "questions", "answer", "answers", "reply", "replies", "q", "a", "an", "the", "of", "your",
     "my", "document", "text", "context", "here", "number", "new", "next", "write", "now", "first",
     "second", "third", "last", "one")
)  # fmt: skip


def usable(question: str, answer: str) -> bool:
    """Whether a pair is worth training on: a question of at least three words, some of them not
    instruction words or numbers, and an answer with words in it that is not the question again."""
    q, a = textsim.words(question), textsim.words(answer)
    if len(q) < 3 or not a or q == a:
        return False
    return any(w not in _INSTRUCTION_WORDS and not w.isdigit() for w in q)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _load_checkpoint(path: Path) -> dict[str, dict[str, Any]]:
    """The finished units in a checkpoint file, by key. A last line cut off by an interruption is
    dropped (and cut from the file, so that later appends start on a line of their own)."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(data))
    units = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("key"), str) and isinstance(row.get("pairs"), list):
            units[row["key"]] = row
    return units


def dedupe(pairs: Sequence[QAPair], threshold: float = 0.85) -> list[QAPair]:
    """Drop a pair whose question's word set overlaps an earlier one's (same document) by ``threshold``
    (Jaccard) or more."""
    kept: list[QAPair] = []
    seen: dict[str, textsim.NearDuplicates] = {}
    for p in pairs:
        index = seen.setdefault(p.doc_id, textsim.NearDuplicates("jaccard"))
        tokens = textsim.words(p.question)
        if index.closest_tokens(tokens, threshold) is not None:
            continue
        index.add_tokens(tokens)
        kept.append(p)
    return kept
