"""Self-instruct prompt generation: a model writes new prompts from a few seed prompts.

GSHF trained on AI-written prompts, augmented self-instruct style; this is that step, local. Each
request shows the model a numbered list of a few prompts drawn at random (mostly seeds, a couple it
wrote earlier, as Self-Instruct mixes them) and lets it write the next item; generation stops at the
end of the line. A candidate is kept only if it parses, its length is within bounds, and its ROUGE-L F
(longest common subsequence over lowercased words, Self-Instruct's filter) with every seed, every
``existing`` prompt and every prompt kept so far is at most ``max_similarity``. Every rejection is
counted by reason. Generation runs in batches, one sampling seed per row, and gives up after
``max_attempts`` requests rather than looping forever on a model that cannot do it.

The few-shot prompt is a data file (``data/selfinstruct/prompt.yaml``). This module only talks to an
``Engine``: no torch, no trl.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from helixloom import jsonl, textsim
from helixloom.engine import Engine, GenerationRequest, GenerationResult, sampling
from helixloom.errors import HelixloomError

#: Why a candidate was rejected, in the order the checks run.
REASONS = ("unparseable", "too_short", "too_long", "echo", "duplicate")

_REASON_TEXT = {
    "unparseable": "not a prompt (empty, no words, or starts with punctuation)",
    "too_short": "too short",
    "too_long": "too long (or cut off by the token limit)",
    "echo": "a near-copy of a seed prompt",
    "duplicate": "a near-duplicate of an existing or already generated prompt",
}


@dataclass(frozen=True)
class Template:
    """The few-shot prompt: ``header``, then ``item`` per example, then ``ask`` for the next one."""

    header: str
    item: str
    ask: str

    @classmethod
    def load(cls, path: str | Path | None = None) -> Template:
        if path is None:
            text = (resources.files("helixloom") / "data" / "selfinstruct" / "prompt.yaml").read_text()
        else:
            if not Path(path).is_file():
                raise HelixloomError(f"self-instruct template {path} does not exist")
            text = Path(path).read_text()
        data = yaml.safe_load(text)
        try:
            template = cls(str(data["header"]), str(data["item"]), str(data["ask"]))
            template.render(["example"])
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise HelixloomError(
                f"self-instruct template {path or 'built-in'} is malformed: {exc!r}"
            ) from exc
        return template

    def render(self, examples: Sequence[str]) -> str:
        """The prompt showing ``examples`` as a numbered list, ending where the next item starts."""
        items = "".join(self.item.format(number=i, prompt=p) for i, p in enumerate(examples, 1))
        return self.header + items + self.ask.format(number=len(examples) + 1)


@dataclass
class SelfInstructReport:
    """What a generation run kept, what it rejected and why, and whether it gave up."""

    prompts: list[str]
    requested: int
    attempts: int = 0  # generation requests made (one candidate each)
    max_attempts: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    surplus: int = 0  # candidates left unread in the last batch once enough were kept
    gave_up: bool = False

    def summary(self) -> str:
        kept = len(self.prompts)
        line = f"{kept} of {self.requested} prompts generated in {self.attempts} attempts"
        if self.gave_up:
            line += f": gave up after {self.max_attempts} attempts (--max-attempts)"
        lines = [line]
        for reason in REASONS:
            if self.rejected.get(reason):
                lines.append(f"  rejected {self.rejected[reason]:>5}  {_REASON_TEXT[reason]}")
        if self.gave_up:
            lines.append(
                "  the model rarely writes usable new prompts: try more or more varied seeds, a higher "
                "--temperature, looser --max-similarity or length limits, or a stronger --model"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "generated": len(self.prompts),
            "requested": self.requested,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "rejected": dict(self.rejected),
            "surplus": self.surplus,
            "gave_up": self.gave_up,
        }


OnProgress = Callable[[int, int], None]


def generate_prompts(
    engine: Engine,
    seeds: Sequence[str],
    n: int,
    *,
    adapter: str | None = None,
    shots: int = 8,
    generated_shots: int = 2,
    batch_size: int = 8,
    temperature: float = 0.8,
    top_p: float = 0.95,
    top_k: int = 40,
    max_tokens: int = 128,
    min_chars: int = 16,
    max_chars: int = 500,
    max_similarity: float = 0.7,
    seed: int = 0,
    existing: Iterable[str] = (),
    max_attempts: int | None = None,
    template: Template | None = None,
    on_progress: OnProgress | None = None,
    on_prompt: Callable[[str], None] | None = None,
) -> SelfInstructReport:
    """Have ``engine`` write ``n`` new prompts in the style of ``seeds``.

    Each request shows ``shots`` examples: up to ``generated_shots`` of them drawn from the prompts
    generated so far (and ``existing``), the rest from ``seeds``. ``existing`` prompts are never
    emitted again, nor anything within ``max_similarity`` ROUGE-L F of them. ``on_progress(kept, n)``
    is called after every batch and ``on_prompt(prompt)`` for every prompt kept, as it is kept (a
    caller can save them as they come). ``max_attempts`` (default ``10 * n + 2 * batch_size``) bounds
    the requests made; when it is reached the report says ``gave_up``.
    """
    seeds = _unique(seeds)
    if not seeds:
        raise HelixloomError("no seed prompts", "give at least one seed prompt (two or more work better)")
    if n < 0:
        raise HelixloomError("the number of prompts to generate must be 0 or more")
    if shots < 1 or generated_shots < 0 or batch_size < 1:
        raise HelixloomError("shots and the batch size must be at least 1")
    if not 0.0 < max_similarity <= 1.0:
        raise HelixloomError("max_similarity must be in (0, 1]", param="max_similarity")
    if min_chars < 0 or max_chars < max(min_chars, 1):
        raise HelixloomError("need 0 <= min_chars <= max_chars (and max_chars >= 1)")
    template = template or Template.load()
    limit = max_attempts if max_attempts is not None else 10 * n + 2 * batch_size
    if limit < 0:
        raise HelixloomError("max_attempts must be 0 or more")
    report = SelfInstructReport([], n, max_attempts=limit)
    rng = random.Random(seed)
    index = textsim.NearDuplicates("rouge_l")
    for s in seeds:
        index.add(s, "seed")
    previous = _unique(existing)
    for e in previous:
        index.add(e, "existing")
    while len(report.prompts) < n:
        rows = min(batch_size, limit - report.attempts)
        if rows <= 0:
            report.gave_up = True
            break
        requests = []
        for _ in range(rows):
            params = sampling(
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                max_tokens=max_tokens,
                seed=rng.randrange(2**31),
                stop=("\n",),
            )
            examples = _examples(rng, seeds, previous, shots, generated_shots)
            requests.append(GenerationRequest(template.render(examples), params, adapter))
        results = engine.generate(requests)
        report.attempts += rows
        for i, result in enumerate(results):
            if len(report.prompts) >= n:
                report.surplus += len(results) - i
                break
            candidate, reason = _check(result, min_chars, max_chars)
            if reason is None:
                tokens = textsim.words(candidate)
                match = index.closest_tokens(tokens, max_similarity)
                if match is not None and (match.score > max_similarity or match.score >= 1.0):
                    reason = "echo" if match.tag == "seed" else "duplicate"
            if reason is not None:
                report.rejected[reason] += 1
                continue
            index.add_tokens(tokens, "generated")
            report.prompts.append(candidate)
            previous.append(candidate)
            if on_prompt is not None:
                on_prompt(candidate)
        if on_progress is not None:
            on_progress(len(report.prompts), n)
    return report


def _unique(prompts: Iterable[str]) -> list[str]:
    """The prompts on one line each (whitespace runs collapsed), blanks and exact repeats dropped."""
    return list(dict.fromkeys(" ".join(p.split()) for p in prompts if p and p.strip()))


def _examples(
    rng: random.Random, seeds: Sequence[str], generated: Sequence[str], shots: int, generated_shots: int
) -> list[str]:
    from_generated = min(generated_shots, len(generated))
    from_seeds = min(shots - from_generated, len(seeds))
    from_generated = min(shots - from_seeds, len(generated))  # top up when seeds are few
    examples = rng.sample(list(seeds), from_seeds) + rng.sample(list(generated), from_generated)
    rng.shuffle(examples)
    return examples


_STARTS_WELL = re.compile(r"^[^\W_]|^[\"'“‘(¿¡\[]")
_NUMBERING = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")


def _check(result: GenerationResult, min_chars: int, max_chars: int) -> tuple[str, str | None]:
    """The candidate prompt in a reply and why it is rejected (None when it is not)."""
    text = " ".join(result.text.split())
    text = _NUMBERING.sub("", text)  # a model that numbered its item again
    if result.finish_reason == "length":
        return text, "too_long"  # the line never ended within the token budget
    if result.finish_reason != "stop" or "\ufffd" in text or not textsim.words(text):
        return text, "unparseable"
    if not _STARTS_WELL.match(text):
        return text, "unparseable"
    if len(text) < min_chars:
        return text, "too_short"
    if len(text) > max_chars:
        return text, "too_long"
    return text, None


# ------------------------------------------------------------------------------------------- files


def read_seeds(path: str | Path) -> list[str]:
    """Seed prompts from a file: JSONL rows with a ``prompt`` field, or plain text, one per line.

    The file is JSONL when it ends in ``.jsonl``/``.json`` or its first non-blank line starts with
    ``{``; then every row must be an object with a non-empty string ``prompt``.
    """
    file = Path(path)
    if not file.is_file():
        raise HelixloomError(f"seed file {file} does not exist")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise HelixloomError(f"seed file {file} is not UTF-8 text") from exc
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if file.suffix.lower() in (".jsonl", ".json") or first.startswith("{"):
        seeds = []
        for n, row in jsonl.read(file):
            prompt = row.get("prompt") if isinstance(row, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise HelixloomError(
                    f"{file} line {n} has no prompt", 'each line must be a JSON object {"prompt": "..."}'
                )
            seeds.append(prompt)
    else:
        seeds = [line for line in text.splitlines() if line.strip()]
    if not _unique(seeds):
        raise HelixloomError(f"seed file {file} has no prompts")
    return seeds


def read_existing(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an output file written before (to keep them, and never generate them again)."""
    file = Path(path)
    if not file.is_file():
        return []
    rows = []
    for n, row in jsonl.read(file):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise HelixloomError(f"{file} line {n} has no prompt", '--append needs a file of {"prompt": ...}')
        rows.append(row)
    return rows


def write_prompts(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows as JSONL, atomically: a reader sees the old file or the new one, never half of one."""
    from helixloom import atomic

    atomic.write_jsonl(Path(path), rows)
