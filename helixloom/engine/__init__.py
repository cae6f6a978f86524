"""How tokens are produced: one small interface (``Engine``), several backends.

Only this package imports torch, transformers and peft for generation.
"""

from __future__ import annotations

from helixloom import models
from helixloom.engine.base import AbortCheck, BatchEvent, Engine
from helixloom.engine.types import (
    AdapterInfo,
    Constraint,
    GeneratedTokenLogprobs,
    GenerationRequest,
    GenerationResult,
    NextTokenLogprobs,
    PromptLogprobs,
    SamplingParams,
    StreamDelta,
    Timings,
    TokenLogprob,
    Usage,
    sampling,
)

__all__ = [
    "AbortCheck",
    "AdapterInfo",
    "BatchEvent",
    "Constraint",
    "Engine",
    "GeneratedTokenLogprobs",
    "GenerationRequest",
    "GenerationResult",
    "NextTokenLogprobs",
    "PromptLogprobs",
    "SamplingParams",
    "StreamDelta",
    "Timings",
    "TokenLogprob",
    "Usage",
    "load_engine",
    "sampling",
]


def load_engine(spec: str, *, device: str | None = None) -> Engine:
    """The engine for a model spec, by its kind (``helixloom.models.resolve``): ``openai:URL[#MODEL]``
    talks to an OpenAI-compatible server, ``llamacpp:FILE.gguf`` (or ``llamacpp:default``) runs on
    llama.cpp; every other kind loads on the ``hf`` backend (transformers + PEFT)."""
    source = models.resolve(spec)
    if source.kind == "remote":
        from helixloom.engine.remote import RemoteEngine

        return RemoteEngine(source)
    if source.kind == "llamacpp":
        from helixloom.engine.llamacpp import LlamaCppEngine

        return LlamaCppEngine(source)
    from helixloom.engine.hf import HFEngine

    return HFEngine.load(source, device=device)
