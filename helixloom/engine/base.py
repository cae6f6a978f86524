"""The engine interface every backend implements.

Everything above the engine (HelixNet, Weave, question generation, judges, the server) talks to an
``Engine``. A backend declares what it can do as class attributes; callers check those instead of
sniffing methods.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from helixloom.engine.types import (
    AdapterInfo,
    GenerationRequest,
    GenerationResult,
    NextTokenLogprobs,
    PromptLogprobs,
    StreamDelta,
    check_text,
)
from helixloom.errors import HelixloomError

# A batch stream yields (row index, event); each row ends with its GenerationResult.
BatchEvent = tuple[int, StreamDelta | GenerationResult]
# Asked between steps with a row index: True ends that row now (finish_reason "abort").
AbortCheck = Callable[[int], bool]


class TokenPrompt(str):
    """A prompt given as token ids (what evaluation harnesses send when they hold the tokenizer).

    It is a ``str`` (the ids detokenized, special tokens written out) so that everything that reads
    prompts as text (records, echo, stop sequences, schedulers) keeps working; an engine that
    ``supports_token_prompts`` reads ``ids`` instead, exactly: no BOS added or removed, nothing
    re-tokenized, so log-probabilities line up with the ids the client counted.
    """

    ids: tuple[int, ...]

    def __new__(cls, text: str, ids: Sequence[int]) -> TokenPrompt:
        prompt = super().__new__(cls, text)
        prompt.ids = tuple(int(i) for i in ids)
        return prompt


class DecodeBatch(abc.ABC):
    """A batch decoding one token per step, which rows join between steps and leave as soon as
    they finish (continuous batching). Rows are named by the ids ``join`` returns."""

    @abc.abstractmethod
    def join(self, requests: Sequence[GenerationRequest]) -> list[int]:
        """Admit the requests (their prompts run now); their first tokens come at the next ``step``.
        Raises ``HelixloomError`` (nothing joined) when one of them cannot run."""

    @abc.abstractmethod
    def step(self, abort: AbortCheck | None = None) -> list[BatchEvent]:
        """One token for every row: the (row id, event) pairs it produced, a row's last event being
        its ``GenerationResult``. ``abort(row id)`` True ends that row now, with finish_reason "abort"."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Rows still decoding."""

    @property
    def can_join(self) -> bool:
        """Whether requests may join now; a backend whose state cannot take rows mid-way (some
        cache layouts) says False until the batch is empty."""
        return True


class Engine(abc.ABC):
    """Produces tokens for a batch of requests, each with its own prompt, adapter and sampling."""

    #: The capability flags below, by name: the one list a wrapper (``BatchingEngine``) forwards
    #: from its inner engine, so a capability added here is never silently False there.
    CAPABILITIES: ClassVar[tuple[str, ...]] = (
        "supports_adapters",
        "supports_mixed_adapter_batch",
        "supports_logprobs",
        "supports_training",
        "supports_constraints",
        "supports_embeddings",
        "supports_prompt_logprobs",
        "supports_tokenize",
        "supports_token_prompts",
    )
    #: What a wrapper forwards besides the capabilities: the engine's description.
    DESCRIPTION: ClassVar[tuple[str, ...]] = (
        "backend",
        "model_name",
        "chat_template",
        "max_model_len",
        "eos_token_ids",
    )

    # Capabilities, declared by each backend (a wrapper copies its inner engine's, which is why
    # these are plain attributes rather than ClassVars).
    backend: str
    supports_adapters: bool = False
    supports_mixed_adapter_batch: bool = False
    supports_logprobs: bool = False
    supports_training: bool = False
    supports_constraints: bool = False  # GenerationRequest.constraint is honoured
    supports_embeddings: bool = False  # embed() gives pooled hidden states
    supports_prompt_logprobs: bool = False  # prompt_logprobs() scores the prompt's own tokens
    supports_tokenize: bool = False  # tokenize() and detokenize() give the model's own token ids
    supports_token_prompts: bool = False  # a TokenPrompt is read as its ids, exactly

    #: ``open_batch`` gives a ``DecodeBatch`` that requests join while it runs. Not a capability a
    #: wrapper forwards (a scheduler over such an engine does not open batches itself).
    continuous_batching: bool = False

    #: The model spec this engine was made from, as the user gave it.
    model_name: str
    #: The tokenizer's chat template, or None for a plain completion model.
    chat_template: str | None = None
    #: The most tokens (prompt and completion together) one request may have; None when unknown.
    max_model_len: int | None = None
    #: The token ids that end generation (the tokenizer's EOS first among them by id); empty if unknown.
    eos_token_ids: frozenset[int] = frozenset()

    @abc.abstractmethod
    def stream_batch(
        self, requests: Sequence[GenerationRequest], *, abort: AbortCheck | None = None
    ) -> Iterator[BatchEvent]:
        """Run the requests as one batch, yielding text deltas as they are produced.

        Every row ends with exactly one ``GenerationResult``; the deltas of a row join to its text.
        ``abort(row)`` is asked between steps; a row it answers True for ends at once (a client that
        went away frees its place in the batch).
        """

    def open_batch(self) -> DecodeBatch:
        """A new, empty continuous batch (``continuous_batching``)."""
        raise HelixloomError(f"the {self.backend} engine cannot run a continuous batch")

    def validate(self, request: GenerationRequest) -> None:
        """Raise ``HelixloomError`` if ``request`` could not run (its prompt and max_tokens do not fit
        the context, its constraint does not compile, ...). Schedulers call this in the caller's
        thread before a request joins a batch, so a bad request fails alone. The default checks the
        prompt's text; a backend checks more where it can do so cheaply."""
        check_text(request.prompt)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Run the requests as one batch and return one result per request, in order."""
        results: list[GenerationResult | None] = [None] * len(requests)
        for row, event in self.stream_batch(requests):
            if isinstance(event, GenerationResult):
                results[row] = event
        assert all(r is not None for r in results), "a backend left a row without a result"
        return [r for r in results if r is not None]

    def stream(self, request: GenerationRequest) -> Iterator[StreamDelta | GenerationResult]:
        """Stream one request: text deltas, then its ``GenerationResult``."""
        for _, event in self.stream_batch([request]):
            yield event

    @abc.abstractmethod
    def next_token_logprobs(
        self,
        prompts: Sequence[str],
        *,
        adapter: str | None = None,
        top_k: int = 5,
        candidates: Sequence[str] = (),
    ) -> list[NextTokenLogprobs]:
        """The next-token distribution after each prompt: top-k tokens and the asked candidates."""

    @abc.abstractmethod
    def load_adapter(self, name: str, path: str) -> AdapterInfo:
        """Make an adapter usable by name in later requests; loading the same one twice is a no-op."""

    @abc.abstractmethod
    def adapters(self) -> list[AdapterInfo]:
        """The adapters loaded so far."""

    def unload_adapter(self, name: str) -> None:
        """Forget a loaded adapter and free what it holds; later requests naming it fail. A name that
        is not loaded raises ``AdapterError``. Reloading new weights is ``unload_adapter`` then
        ``load_adapter`` (or loading the new version under a name of its own first, as the server
        does, so requests in flight finish on the old one). Backends that cannot raise."""
        raise HelixloomError(f"the {self.backend} engine for {self.model_name} cannot unload adapters")

    def prompt_logprobs(
        self, prompts: Sequence[str], *, adapter: str | None = None, top_k: int = 0
    ) -> list[PromptLogprobs]:
        """Score each prompt's own tokens (``echo`` with ``logprobs``: what evaluation harnesses ask).

        Backends without it (``supports_prompt_logprobs`` False) raise.
        """
        raise HelixloomError(
            f"the {self.backend} engine for {self.model_name} cannot score prompt tokens",
            "use the hf backend (a local model folder, a hub id or default)",
        )

    def embed(
        self,
        texts: Sequence[str],
        *,
        adapter: str | None = None,
        depth: float = 1.0,
        prefixes: Sequence[str] | None = None,
        pooling: str = "mean",
    ) -> list[list[float]]:
        """One vector per text: a hidden state mean-pooled over the text's tokens (fp32); ``depth``
        picks the layer (1.0: the last; 0.5: the middle), ``prefixes`` leave each text's start out of
        the mean (a response pooled in its prompt's context); ``pooling`` "mean+last" appends the
        last token's state.

        Backends that have no hidden states to give (``supports_embeddings`` False) raise.
        """
        raise HelixloomError(
            f"the {self.backend} engine for {self.model_name} cannot give embeddings (hidden states)",
            "use the hf backend (a local model folder, a hub id or default)",
        )

    def format_chat(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        """Render chat messages (role, content) with the model's chat template; with
        ``add_generation_prompt`` the assistant's turn is opened, ready to complete."""
        raise HelixloomError(
            f"{self.model_name} has no chat template",
            "use a chat model, or a prompt format with chat: false",
        )

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """``text`` as the model's token ids; ``add_special_tokens`` adds what the tokenizer puts around
        every text (a BOS). Backends without it (``supports_tokenize`` False) raise."""
        raise HelixloomError(f"the {self.backend} engine for {self.model_name} cannot tokenize")

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of token ids, special tokens written out; an id outside the vocabulary raises."""
        raise HelixloomError(f"the {self.backend} engine for {self.model_name} cannot tokenize")

    @abc.abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` without special tokens (what chunkers and budgets need)."""

    def close(self) -> None:  # noqa: B027 - optional for backends that hold nothing
        """Free what the engine holds."""


def apply_chat_template(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
) -> str:
    """``messages`` through a Hugging Face ``tokenizer``'s chat template, as text; with
    ``add_generation_prompt`` the assistant's turn is opened, ready to complete. The one rendering
    that serving (``HFEngine.format_chat``) and training (``training.chat_template``) share.
    A template that refuses the conversation ("Conversation roles must alternate ...", Gemma's and
    Llama 2's) raises ``HelixloomError`` (a 400 over HTTP), not jinja2's error (a 500)."""
    with template_refusals():
        return str(
            tokenizer.apply_chat_template(
                [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
            )
        )


@contextmanager
def template_refusals() -> Iterator[None]:
    """A chat template's refusal of the messages (jinja2's ``TemplateError``: "Conversation roles must
    alternate ...") as the request's fault: ``HelixloomError`` with ``param="messages"``."""
    import jinja2

    try:
        yield
    except jinja2.TemplateError as exc:
        raise HelixloomError(
            f"the model's chat template refused these messages: {exc}", param="messages"
        ) from exc
