"""Replay text written by the base model itself, so that learning documents does not unlearn language.

Why the model's own writing and not a shipped text: replaying a small fixed text (the 708 words of
``replay.txt``) made the adapter memorise it (measured: perplexity of the replayed paragraphs 18.0 ->
1.8) while the perplexity of prose it never saw rose (x2.2 on held-out fables, x56 on technical
prose). Text the base model samples from varied openings is its own distribution: training on it pulls
the adapter back toward what the base model would have said (the forward KL to the base, estimated on
its samples) instead of toward one text. This is self-synthesised rehearsal (Huang et al., ACL 2024,
"Mitigating Catastrophic Forgetting in Large Language Models with Self-Synthesized Rehearsal") and
close to self-distillation fine-tuning (Yang et al., ACL 2024, "Self-Distillation Bridges
Distribution Gap in Language Model Fine-Tuning").

The openings (``data/documents/replay_prompts.txt``) are written for this package and share nothing
with ``replay.txt``, which stays out of training and is what forgetting is measured on. The samples
are written once per base model and cached under ``HELIXLOOM_HOME/models/`` (a benchmark's fresh home
links them in like the converted models). The embedded default model's samples ship with the package
(``data/documents/replay-KEY.json``, 48 paragraphs, 18 KB, written by it on llama.cpp with the seeds
below), so a new user's first ``learn`` does not spend the minutes writing them (measured: 234 s on
one loaded thread); they are used only while their key (model, openings, settings) still matches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from helixloom import atomic, paths
from helixloom.engine import Engine, GenerationRequest, sampling

MAX_TOKENS = 80  # per sample: a paragraph, cheap to write and to train on
TEMPERATURE = 1.0  # the model's own distribution (the KL argument above needs samples, not modes)
TOP_P = 0.95  # trims the far tail, where a 270M model's samples turn to noise
SAMPLES_PER_OPENING = 1
BATCH = 8  # samples written together between progress reports


def openings() -> list[str]:
    """The varied openings the base model continues (one a line)."""
    text = (resources.files("helixloom") / "data" / "documents" / "replay_prompts.txt").read_text(
        encoding="utf-8"
    )
    return [line.strip() for line in text.splitlines() if line.strip()]


def cache_path(model_name: str) -> Path:
    """Where the samples of ``model_name`` are kept: keyed by the model, the openings and the settings,
    so a change to any of them writes new samples."""
    key = hashlib.sha256(
        json.dumps([model_name, openings(), MAX_TOKENS, TEMPERATURE, TOP_P, SAMPLES_PER_OPENING]).encode()
    ).hexdigest()[:16]
    return paths.models_dir() / f"replay-{key}.json"


def read_texts(path: Path) -> list[str] | None:
    """The list of paragraphs kept in the JSON file ``path``, or None (no file, or a damaged one)."""
    if path.is_file():
        try:
            texts = json.loads(path.read_text())
            if isinstance(texts, list) and all(isinstance(t, str) for t in texts):
                return texts
        except (OSError, ValueError):
            pass
    return None


def cached_text(model_name: str) -> list[str] | None:
    """The samples written before for ``model_name`` (in the home's cache, else shipped with the
    package under the same key), or None (none yet, or a damaged cache: the samples are written
    again)."""
    path = cache_path(model_name)
    shipped = resources.files("helixloom") / "data" / "documents" / path.name
    return read_texts(path) or (read_texts(Path(str(shipped))) if shipped.is_file() else None)


def own_text(
    writer: Engine, *, seed: int = 0, on_progress: Callable[[int, int], None] | None = None
) -> list[str]:
    """Paragraphs the base model ``writer`` wrote from the openings (the opening and its sampled
    continuation), read from the cache when written before. Empty continuations are left out.
    ``on_progress(done, total)`` follows the writing (a few minutes on a CPU, once per model)."""
    cached = cache_path(writer.model_name)
    texts = cached_text(writer.model_name)
    if texts is not None:
        return texts
    starts = [o for o in openings() for _ in range(SAMPLES_PER_OPENING)]
    requests = [
        GenerationRequest(
            start,
            sampling(temperature=TEMPERATURE, top_p=TOP_P, max_tokens=MAX_TOKENS, seed=seed + i),
        )
        for i, start in enumerate(starts)
    ]
    results = []
    for first in range(0, len(requests), BATCH):
        results.extend(writer.generate(requests[first : first + BATCH]))
        if on_progress is not None:
            on_progress(len(results), len(requests))
    texts = []
    for start, r in zip(starts, results, strict=True):
        written = r.text
        if r.finish_reason == "length":  # cut off mid-sentence: end at its last full sentence
            ends = [written.rfind(c) for c in ".!?"]
            written = written[: max(ends) + 1] if max(ends) > 0 else written
        if written.strip():
            texts.append(f"{start}{written}".strip())
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(cached, texts)
    return texts
