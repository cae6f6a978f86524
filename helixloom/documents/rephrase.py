"""The teacher rephrases the rough code-built questions of ``documents.grounded`` into natural ones.

A small model writes poor questions from scratch but rewrites a given one well when shown a few
examples (``data/documents/rephrase.yaml``, a plain completion prompt, so it works on base models and
any engine). Each rephrased question is checked by code before it is kept: it must be one short
question (``not_a_question``), differ from the rough one (``unchanged``), keep a content word of its
sentence (``off_document`` otherwise), not give its answer away (``leaks_answer``), and not copy an
example (``copies_example``). The answer stays the sentence of the
document the rough question came from.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from typing import Any

import yaml

from helixloom import textsim
from helixloom.documents.grounded import Pair
from helixloom.documents.grounding import stems
from helixloom.engine import Engine, GenerationRequest, sampling

REASONS = ("not_a_question", "unchanged", "off_document", "leaks_answer", "copies_example", "duplicate")
VARIANT_TEMPERATURE = 0.8  # the rephrasings after the first (greedy) one are sampled


@dataclass
class RephraseReport:
    pairs: list[Pair]
    calls: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (a checkpoint: ``from_dict`` reads it back)."""
        return {"pairs": [asdict(p) for p in self.pairs], "calls": self.calls, "dropped": self.dropped}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RephraseReport:
        """The report ``as_dict`` wrote; ``KeyError``/``TypeError`` when it is not one."""
        return cls([Pair(**p) for p in data["pairs"]], int(data["calls"]), dict(data["dropped"]))


def template() -> str:
    text = (resources.files("helixloom") / "data" / "documents" / "rephrase.yaml").read_text(encoding="utf-8")
    return str(yaml.safe_load(text)["prompt"])


def check(question: str, pair: Pair, examples: str) -> str | None:
    """Why a rephrased ``question`` of ``pair`` is not kept (one of ``REASONS``), or None."""
    q = question.strip()
    words = textsim.words(q)
    if not q.endswith("?") or not 3 <= len(words) <= 24 or q.count("?") > 1 or ":" in q:
        return "not_a_question"  # a label copied ("Rough: ...") or not one short question
    if words == textsim.words(pair.question):
        return "unchanged"
    if textsim.words(pair.key) and " ".join(textsim.words(pair.key)) in " ".join(words):
        return "leaks_answer"
    if not stems(q) & stems(pair.answer):
        return "off_document"
    if q.lower() in examples.lower():
        return "copies_example"
    return None


def without_rephrased(pairs: Sequence[Pair], rephrased: Sequence[Pair]) -> list[Pair]:
    """``pairs`` less the rough questions that ``rephrased`` holds a rephrasing of (same document,
    fact and key): a rough question ("..., is a how many zone irrigation controller for gardens?")
    repeats its sentence's words, which the answer and the document rows already train on, and the
    questions a reader asks are in other words."""
    done = {(p.doc_id, p.fact, p.key, p.answer) for p in rephrased}
    return [p for p in pairs if p.perspective != "span" or (p.doc_id, p.fact, p.key, p.answer) not in done]


def rephrase(
    teacher: Engine,
    pairs: Sequence[Pair],
    *,
    batch_size: int = 64,
    max_tokens: int = 32,
    variants: int = 1,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
) -> RephraseReport:
    """Up to ``variants`` natural rephrasings per rough ``span`` pair, each kept when ``check``
    passes: the first greedy, the rest sampled (a fact asked in more wordings is recalled from more
    wordings); one that repeats an earlier rephrasing of the same pair is dropped as ``duplicate``.

    ``batch_size`` requests go to the teacher at once (rough questions x ``variants``). 64, not 16
    (Dec 2026, the embedded model on transformers, 69 rephrase prompts, 1 thread): on a CPU every new
    token reads the whole output layer (262k words), so a batch costs about the same for 16 rows as
    for 64: 69 at once took 17.6 s against 41.5 s in batches of 16, the same texts, peak memory 2.45
    GB against 2.27."""
    if variants < 1:
        raise ValueError("variants must be at least 1")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    prompt = template()
    rough = [p for p in pairs if p.perspective == "span"]
    report = RephraseReport([])
    greedy = sampling(temperature=0, max_tokens=max_tokens, stop=["\n"])
    # batches of equal size: a batch of 5 after one of 64 costs nearly what the 64 cost (see batch_size)
    # batch_size counts requests: each rough question asks for ``variants`` of them
    count = math.ceil(len(rough) / max(1, batch_size // variants))
    bounds = [len(rough) * k // count for k in range(count + 1)] if count else [0]
    for start, end in itertools.pairwise(bounds):
        batch = rough[start:end]
        requests = [
            GenerationRequest(
                prompt.format(question=p.question),
                greedy
                if v == 0
                else sampling(
                    temperature=VARIANT_TEMPERATURE,
                    max_tokens=max_tokens,
                    stop=["\n"],
                    seed=seed + (start + i) * variants + v,
                ),
                None,
                None,
            )
            for i, p in enumerate(batch)
            for v in range(variants)
        ]
        results = teacher.generate(requests)
        for i, pair in enumerate(batch):
            seen: set[tuple[str, ...]] = set()
            for result in results[i * variants : (i + 1) * variants]:
                report.calls += 1
                question = result.text.strip().split("\n")[0].strip()
                reason = check(question, pair, prompt)
                if reason is None and tuple(textsim.words(question)) in seen:
                    reason = "duplicate"
                if reason is not None:
                    report.dropped[reason] = report.dropped.get(reason, 0) + 1
                    continue
                seen.add(tuple(textsim.words(question)))
                report.pairs.append(replace(pair, question=question, perspective="rephrase"))
        if on_progress is not None:
            on_progress(end, len(rough))
    return report
