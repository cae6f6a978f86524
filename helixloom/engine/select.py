"""Which backend runs a model for inference: the fastest one installed that can do what is asked.

A GGUF model (``default``, or a ``.gguf`` file) runs on llama.cpp when llama-cpp-python is installed
(on a CPU it is several times faster than transformers in fp32 on the same weights), unless the
command needs something the llamacpp backend cannot do (its capability flags say what: hidden states
for reward heads, training, ...); then it runs on transformers, and the reason is given. Without
llama-cpp-python everything runs on transformers, as before. Training never comes here: it loads its
model with ``load_engine`` (transformers).

The user can always name the backend: ``hf`` or ``llamacpp`` (``--engine``), or a spec that names it
(``llamacpp:FILE.gguf``, ``openai:URL``). Contradictions are errors, never silently resolved.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from helixloom import models
from helixloom.engine.base import Engine
from helixloom.errors import HelixloomError

EngineChoice = Literal["auto", "hf", "llamacpp"]
ENGINE_CHOICES: tuple[str, ...] = get_args(EngineChoice)
Backend = Literal["hf", "llamacpp", "remote"]

# What a missing capability costs a command, for the reasons given.
_WHY = {
    "supports_embeddings": "hidden states (reward heads, learned rewards)",
    "supports_training": "training",
    "supports_mixed_adapter_batch": "different adapters in one batch",
    "supports_prompt_logprobs": "prompt log-probabilities",
}


@dataclass(frozen=True)
class EngineSelection:
    """The backend chosen for a spec, the spec to load it with (``load_engine``) and why."""

    spec: str
    backend: Backend
    reason: str


def llamacpp_installed() -> bool:
    """Whether llama-cpp-python can be imported (looked up, not imported: importing it is slow)."""
    return importlib.util.find_spec("llama_cpp") is not None


def choose_engine(spec: str, engine: EngineChoice = "auto", *, needs: Iterable[str] = ()) -> EngineSelection:
    """The backend for running ``spec`` for inference, by ``engine`` (``auto``: the fastest installed
    that has every capability in ``needs``, names from ``Engine.CAPABILITIES``). Resolves the spec
    only (nothing loads); ``HelixloomError`` when the choice contradicts the spec or cannot be met."""
    if engine not in ENGINE_CHOICES:
        raise HelixloomError(
            f"unknown engine {engine!r}", f"use one of {', '.join(ENGINE_CHOICES)}", param="engine"
        )
    needs = tuple(needs)
    if unknown := [n for n in needs if n not in Engine.CAPABILITIES]:
        raise HelixloomError(f"unknown capability {unknown[0]!r}")
    source = models.resolve(spec)
    if source.kind == "remote":
        if engine != "auto":
            raise HelixloomError(
                f"{spec} is served by another server; --engine {engine} cannot run it here", param="engine"
            )
        return EngineSelection(spec, "remote", "an OpenAI-compatible server")
    lacking = _lacking(needs)
    if source.kind == "llamacpp":
        if engine == "hf":
            raise HelixloomError(
                f"{spec} names the llamacpp backend; --engine hf contradicts it",
                "name the model without llamacpp: (default, or the .gguf file) to run it on hf",
                param="engine",
            )
        _require(spec, lacking)
        return EngineSelection(spec, "llamacpp", "the spec names llama.cpp")
    has_gguf = source.kind in ("default", "gguf")
    if engine == "hf":
        return EngineSelection(spec, "hf", "asked for (--engine hf)")
    if engine == "llamacpp":
        if not has_gguf:
            raise HelixloomError(
                f"{spec} is not a GGUF model; llama.cpp runs GGUF files",
                "use --model default or a .gguf file, or --engine hf",
                param="engine",
            )
        if not llamacpp_installed():
            raise HelixloomError(
                "--engine llamacpp needs llama-cpp-python",
                "pip install 'helixloom[llamacpp]'",
                param="engine",
            )
        _require(spec, lacking)
        return EngineSelection(_llamacpp_spec(source), "llamacpp", "asked for (--engine llamacpp)")
    if not has_gguf:
        return EngineSelection(spec, "hf", "not a GGUF model")
    if not llamacpp_installed():
        return EngineSelection(spec, "hf", "llama-cpp-python is not installed")
    if lacking:
        return EngineSelection(spec, "hf", f"llama.cpp cannot give {_describe(lacking)}, which this needs")
    reason = "llama-cpp-python is installed: the fastest on CPU"
    if hf_only := _lacking(("supports_embeddings",)):  # what a served model may still be asked for
        reason += f"; --engine hf for {_describe(hf_only)}"
    return EngineSelection(_llamacpp_spec(source), "llamacpp", reason)


def load_for_inference(
    spec: str,
    engine: EngineChoice = "auto",
    *,
    needs: Iterable[str] = (),
    device: str | None = None,
    announce: bool = True,
) -> Engine:
    """Load the engine ``choose_engine`` picks for ``spec``; with ``announce`` the choice and its reason
    go to stderr (a user sees which backend answers, and why)."""
    from helixloom.engine import load_engine

    chosen = choose_engine(spec, engine, needs=needs)
    if announce and chosen.backend != "remote":
        print(f"helixloom: {spec} runs on {chosen.backend} ({chosen.reason})", file=sys.stderr, flush=True)
    loaded = load_engine(chosen.spec, device=device)
    loaded.model_name = spec  # the model as the user named it (what sessions record), whatever runs it
    return loaded


def _lacking(needs: tuple[str, ...]) -> list[str]:
    from helixloom.engine.llamacpp import LlamaCppEngine

    return [n for n in needs if not getattr(LlamaCppEngine, n)]


def _describe(lacking: list[str]) -> str:
    return ", ".join(_WHY.get(n, n.removeprefix("supports_").replace("_", " ")) for n in lacking)


def _require(spec: str, lacking: list[str]) -> None:
    if lacking:
        raise HelixloomError(
            f"llama.cpp cannot give {_describe(lacking)}, which this needs ({spec})",
            "run it on transformers: --engine hf",
            param="engine",
        )


def _llamacpp_spec(source: models.ModelSource) -> str:
    location = "default" if source.kind == "default" else source.location
    return models.LLAMACPP_PREFIX + location
