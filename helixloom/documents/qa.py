"""Question/answer pairs from documents: every prompt of the suite on every chunk, through a teacher.

The teacher is any engine. Where it supports constrained decoding the JSON shape is enforced while
it writes (small models rarely write valid JSON by being asked); elsewhere the reply is parsed and,
if it is not valid, asked again once with a stricter instruction. Failures are counted per prompt and
reported, never dropped silently. Near-duplicate questions about the same document are removed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from helixloom import chat
from helixloom.documents.ingest import Document, chunk
from helixloom.engine import Constraint, Engine, GenerationRequest, sampling
from helixloom.errors import HelixloomError


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

    @classmethod
    def load(cls, path: str | Path | None = None) -> Suite:
        if path is None:
            text = (resources.files("helixloom") / "data" / "documents" / "qa_prompts.yaml").read_text()
        else:
            if not Path(path).is_file():
                raise HelixloomError(f"prompt suite {path} does not exist")
            text = Path(path).read_text()
        data = yaml.safe_load(text)
        try:
            prompts = tuple(QAPrompt(**p) for p in data["prompts"])
            suite = cls(data["system"], data["json_instruction"], data["retry_instruction"], prompts)
        except (KeyError, TypeError) as exc:
            raise HelixloomError(f"prompt suite {path or 'built-in'} is malformed: {exc}") from exc
        if not prompts:
            raise HelixloomError("the prompt suite has no prompts")
        return suite

    def only(self, names: Sequence[str]) -> Suite:
        """The suite restricted to the named prompts (unknown names are an error)."""
        known = {p.name for p in self.prompts}
        unknown = sorted(set(names) - known)
        if unknown:
            raise HelixloomError(f"unknown prompts {unknown}", f"the suite has: {', '.join(sorted(known))}")
        return Suite(self.system, self.json_instruction, self.retry_instruction,
                     tuple(p for p in self.prompts if p.name in names))  # fmt: skip


def pairs_schema(max_pairs: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "pairs": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_pairs,
                "items": {
                    "type": "object",
                    "properties": {
                        "question": {"type": "string", "minLength": 3, "maxLength": 400},
                        "answer": {"type": "string", "minLength": 1, "maxLength": 2000},
                    },
                    "required": ["question", "answer"],
                },
            }
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
    failed: int = 0
    pairs: int = 0


@dataclass
class QAReport:
    pairs: list[QAPair]
    stats: dict[str, PromptStats] = field(default_factory=dict)
    duplicates_removed: int = 0
    constrained: bool = False

    def summary(self) -> str:
        failed = {n: s.failed for n, s in self.stats.items() if s.failed}
        lines = [
            f"{len(self.pairs)} question/answer pairs ({self.duplicates_removed} near-duplicates removed)"
        ]
        lines.append(
            "JSON enforced while decoding" if self.constrained else "JSON parsed, retried once when invalid"
        )
        for name, s in self.stats.items():
            lines.append(
                f"  {name:<24} {s.pairs:>4} pairs, {s.calls} calls, {s.retried} retried, {s.failed} failed"
            )
        if failed:
            lines.append(f"failed calls by prompt: {failed}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Job:
    doc: Document
    chunk_index: int
    text: str
    prompt: QAPrompt


OnProgress = Callable[[int, int], None]


def generate_pairs(
    teacher: Engine,
    documents: Sequence[Document],
    suite: Suite,
    *,
    num_questions: int = 10,
    chunk_tokens: int = 1024,
    overlap_tokens: int = 128,
    max_tokens: int = 1024,
    temperature: float = 0.3,
    batch_size: int = 8,
    seed: int = 0,
    on_progress: OnProgress | None = None,
) -> QAReport:
    """Run every prompt of ``suite`` on every chunk of every document through ``teacher``."""
    jobs = [
        _Job(doc, i, text, prompt)
        for doc in documents
        for i, text in enumerate(chunk(doc.text, teacher.count_tokens, max_tokens=chunk_tokens,
                                       overlap_tokens=overlap_tokens))
        for prompt in suite.prompts
    ]  # fmt: skip
    report = QAReport(
        [], {p.name: PromptStats() for p in suite.prompts}, constrained=teacher.supports_constraints
    )
    params = sampling(temperature=temperature, max_tokens=max_tokens, seed=seed)
    done = 0
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        texts = _ask(teacher, suite, batch, params, retry=False)
        retry = [j for j, t in zip(batch, texts, strict=True) if _parse(t, j.prompt.max_pairs) is None]
        retried = dict(zip(map(id, retry), _ask(teacher, suite, retry, params, retry=True), strict=True)) if (
            retry and not teacher.supports_constraints
        ) else {}  # fmt: skip
        for job, text in zip(batch, texts, strict=True):
            stats = report.stats[job.prompt.name]
            stats.calls += 1
            parsed = _parse(text, job.prompt.max_pairs)
            if parsed is None and id(job) in retried:
                stats.retried += 1
                parsed = _parse(retried[id(job)], job.prompt.max_pairs)
            if parsed is None:
                stats.failed += 1
                continue
            for q, a in parsed:
                report.pairs.append(QAPair(q, a, job.doc.doc_id, job.prompt.name, job.chunk_index))
                stats.pairs += 1
        done += len(batch)
        if on_progress is not None:
            on_progress(done, len(jobs))
    before = len(report.pairs)
    report.pairs = dedupe(report.pairs)
    report.duplicates_removed = before - len(report.pairs)
    for s in report.stats.values():
        s.pairs = 0
    for p in report.pairs:
        report.stats[p.prompt].pairs += 1
    return report


def _ask(teacher: Engine, suite: Suite, jobs: Sequence[_Job], params: Any, *, retry: bool) -> list[str]:
    if not jobs:
        return []
    requests = []
    for job in jobs:
        user = job.prompt.user.format(title=job.doc.title, chunk=job.text, num_questions=job.prompt.max_pairs)
        user += "\n\n" + (suite.retry_instruction if retry else suite.json_instruction)
        rendered = chat.render(
            teacher, [{"role": "system", "content": suite.system}, {"role": "user", "content": user}]
        )
        constraint = (
            Constraint.json_schema(pairs_schema(job.prompt.max_pairs))
            if teacher.supports_constraints
            else None
        )
        job_params = params.model_copy(update={"stop": rendered.stop if constraint is None else ()})
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
    items = data.get("pairs", data.get("questions")) if isinstance(data, dict) else data
    if not isinstance(items, list):
        return None
    pairs = []
    for item in items[:max_pairs]:
        if isinstance(item, dict):
            q, a = item.get("question"), item.get("answer")
            if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
                pairs.append((q.strip(), a.strip()))
    return pairs or None


def _words(question: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z0-9]+", question.lower()))


def dedupe(pairs: Sequence[QAPair], threshold: float = 0.85) -> list[QAPair]:
    """Drop a pair whose question's word set overlaps an earlier one's (same document) by ``threshold``
    (Jaccard) or more."""
    kept: list[QAPair] = []
    seen: dict[str, list[frozenset[str]]] = {}
    for p in pairs:
        words = _words(p.question)
        others = seen.setdefault(p.doc_id, [])
        if any(words == o or (words and len(words & o) / len(words | o) >= threshold) for o in others):
            continue
        others.append(words)
        kept.append(p)
    return kept
