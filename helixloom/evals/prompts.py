"""Prompts to evaluate on: read from files, put as chat messages, answered in batches, shown to a judge.

A prompt is a user message, or a chat message list (role, content) ending with a user turn. Every
evaluation answers its prompts with the model under test in batches, and shows the judge the question
as ``question_text`` writes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from helixloom import prompting
from helixloom.engine import Engine, GenerationRequest, SamplingParams
from helixloom.engine.citations import CitationSet
from helixloom.errors import HelixloomError

#: A prompt to answer: a user message, or a chat message list (role, content) ending with a user turn.
Prompt = str | Sequence[Mapping[str, str]]
Progress = Callable[[int], None]  # called with how many more items are done

T = TypeVar("T")


def load_prompts(path: str | Path) -> list[Prompt]:
    """Prompts from a file (see ``helixloom.jsonl.read_prompts``); chat ``messages`` rows stay chats."""
    from helixloom import jsonl

    return jsonl.read_prompts(path, chat=True)


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """A prompt as chat messages: a string becomes one user message."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise HelixloomError("a prompt is empty")
        return [{"role": "user", "content": prompt}]
    messages = [{"role": str(m.get("role")), "content": str(m.get("content", ""))} for m in prompt]
    if not messages or messages[-1]["role"] != "user":
        raise HelixloomError("a prompt's messages must end with a user message")
    return messages


def question_text(prompt: Prompt) -> str:
    """The question as the judge sees it: the user message of a single turn, or the conversation
    written out (MT-bench's multi-turn style) with the last user message at the end."""
    messages = as_messages(prompt)
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    labels = {"user": "### User:", "assistant": "### Assistant:"}
    return "\n\n".join(f"{labels.get(m['role'], m['role'])}\n{m['content']}" for m in turns)


def answer(
    engine: Engine,
    prompts: Sequence[Prompt],
    params: SamplingParams,
    *,
    adapter: str | None = None,
    system: str | None = None,
    citations: CitationSet | None = None,
) -> list[str]:
    """Answer every prompt in one batch (chat-rendered for the model), stripped of surrounding space."""
    if not prompts:
        return []
    requests = answer_requests(engine, prompts, params, adapter, system, citations=citations)
    return [r.text.strip() for r in engine.generate(requests)]


def answer_requests(
    engine: Engine,
    prompts: Sequence[Prompt],
    params: SamplingParams,
    adapter: str | None,
    system: str | None,
    *,
    citations: CitationSet | None = None,
) -> list[GenerationRequest]:
    """The generation requests that answer ``prompts``; ``system`` is added where a prompt has none;
    ``citations``: the ids an answer may cite (``engine.citations``)."""
    requests = []
    for prompt in prompts:
        messages = as_messages(prompt)
        if system and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": system}, *messages]
        rendered = prompting.render(engine, messages)
        p = params.model_copy(
            update={"stop": (*params.stop, *rendered.stop), "token_healing": rendered.token_healing}
        )
        requests.append(GenerationRequest(rendered.prompt, p, adapter, citations=citations))
    return requests


def in_batches(items: Sequence[T], size: int, on_progress: Progress | None = None) -> Iterator[list[T]]:
    """``items`` in consecutive batches of at most ``size``; ``on_progress`` hears of each batch once the
    caller is done with it."""
    if size < 1:
        raise HelixloomError("batch size must be at least 1")
    for start in range(0, len(items), size):
        batch = list(items[start : start + size])
        yield batch
        if on_progress:
            on_progress(len(batch))
