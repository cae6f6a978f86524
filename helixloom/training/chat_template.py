"""The one way training renders chat messages: the tokenizer's chat template, as the engine serves it.

SFT, DPO, RAFT and the reward model all render through here (and the engine's ``format_chat`` does
the same call), so a fine-tune sees exactly the text it will be served with. Free of torch and
transformers: the tokenizer is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from helixloom.engine.base import apply_chat_template as apply_chat_template
from helixloom.prompting import render_with

FormatChat = Callable[[Sequence[Mapping[str, str]]], str]


def chat_format(tokenizer: Any) -> FormatChat | None:
    """The tokenizer's chat template as ``helixloom.chat.render_with`` takes it; None when the model
    has none (then prompts use HelixNet's text format, as at serving time)."""
    if not tokenizer.chat_template:
        return None
    return lambda messages: apply_chat_template(tokenizer, messages)


def render_prompt(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt for the assistant's next message after ``messages``, exactly as it is served."""
    return render_with(chat_format(tokenizer), messages).prompt


def generation_prompt(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """``render_prompt`` as a plain ``generate`` call should be given it: a format that ends in a
    space (the text format's "ASSISTANT: ") is served with token healing, and trained with that space
    merged into the answer's first token (" X", TRL's prompt + completion tokens); a prompt that
    ends in the lone space token puts the model where it never trained, so it is left off here."""
    rendered = render_with(chat_format(tokenizer), messages)
    return rendered.prompt.rstrip(" ") if rendered.token_healing else rendered.prompt
