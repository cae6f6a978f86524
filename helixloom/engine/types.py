"""The engine's data types: what a request asks for and what comes back.

These are shared by every backend, by the pipelines above the engine and by the server, so they
stay small and free of torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from helixloom.engine.citations import CitationSet
from helixloom.errors import HelixloomError

FinishReason = Literal["stop", "length", "abort"]


MAX_STOP_SEQUENCES = 32
MAX_STOP_CHARS = 512
#: JSON-schema caps: nested objects, and subschemas in all. Compile time grows with the schema
#: (5,000 properties took xgrammar about two minutes); real schemas stay far below these.
MAX_SCHEMA_DEPTH = 32
MAX_SCHEMA_NODES = 1000


class SamplingParams(BaseModel):
    """How to sample one completion. Unknown fields are an error, never silently ignored."""

    # NaN and infinities are refused: NaN passes every "< 0" check and would reach the sampler.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_tokens: int = Field(256, description="Most new tokens to generate.")
    temperature: float = Field(1.0, description="0 means greedy; higher is more random.")
    top_p: float = Field(1.0, description="Nucleus sampling: keep the smallest set of tokens with this mass.")
    top_k: int = Field(0, description="Keep only the k most likely tokens; 0 keeps all.")
    seed: int | None = Field(None, description="Seed for this request's sampler; the same seed repeats text.")
    stop: tuple[str, ...] = Field((), description="Strings that end generation; not included in the text.")
    logprobs: int | None = Field(
        None, description="Return the log-probability of each generated token and this many alternatives."
    )
    ignore_eos: bool = Field(False, description="Keep generating past the end-of-sequence token.")
    fit_context: bool = Field(
        False,
        description="Treat max_tokens as a ceiling: lower it to the room the context leaves after the "
        "prompt instead of refusing the request (the server does this when a request gives no max_tokens).",
    )
    token_healing: bool = Field(
        False,
        description="Back up over the prompt's last token and make the first new token start with its "
        "text, so a prompt ending mid-token (e.g. in a space) does not push the model off its usual "
        "tokenization. The completion text never repeats the prompt.",
    )
    skip_special_tokens: bool = Field(
        True,
        description="Leave special and control tokens (and markers such as <start_of_image>) out of "
        "the text, as vLLM does by default; False shows them.",
    )

    @field_validator("max_tokens")
    @classmethod
    def _positive_max_tokens(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("max_tokens must be a positive integer")
        return v

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float) -> float:
        if v < 0:
            raise ValueError("temperature must be >= 0 (0 is greedy)")
        return v

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError("top_p must be in (0, 1]")
        return v

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int) -> int:
        if v < 0:
            raise ValueError("top_k must be >= 0 (0 keeps all tokens)")
        return v

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= 20:
            raise ValueError("logprobs must be between 0 and 20")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v < 2**63:
            raise ValueError("seed must be between 0 and 2^63 - 1")
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v: object) -> object:
        if isinstance(v, str):
            v = (v,)
        if isinstance(v, list | tuple):
            if any(not isinstance(s, str) or s == "" for s in v):
                raise ValueError("stop sequences must be non-empty strings")
            # Every stop string is matched against every new token's text: keep that cheap.
            if len(v) > MAX_STOP_SEQUENCES or any(len(s) > MAX_STOP_CHARS for s in v):
                raise ValueError(
                    f"at most {MAX_STOP_SEQUENCES} stop sequences of at most {MAX_STOP_CHARS} characters"
                )
        return tuple(v) if isinstance(v, list) else v

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sampling(**kwargs: object) -> SamplingParams:
    """Build ``SamplingParams``, turning validation failures into a one-line ``HelixloomError``."""
    from pydantic import ValidationError

    try:
        return SamplingParams(**kwargs)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = str(err["loc"][0]) if err["loc"] else None
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise HelixloomError(f"invalid {param}: {msg}" if param else msg, param=param) from exc


@dataclass(frozen=True)
class Constraint:
    """What the output must match: a JSON schema, any JSON object, a regular expression or a choice.

    Build one with the class methods. A constraint is hashable and compiled grammars are cached by it.
    """

    kind: Literal["json_schema", "json_object", "regex", "choice"]
    # The schema as JSON in its own key order, the regex, or the choices as a JSON list. Keys are
    # not sorted: grammar backends write an object's properties in the order the schema lists them.
    spec: str

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str) -> Constraint:
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise HelixloomError(
                    f"the JSON schema is not valid JSON: {exc}", param="json_schema"
                ) from exc
        if not isinstance(schema, dict):
            raise HelixloomError("a JSON schema must be a JSON object", param="json_schema")
        _check_schema_size(schema)
        from jsonschema import Draft202012Validator, SchemaError

        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise HelixloomError(f"invalid JSON schema: {exc.message}", param="json_schema") from exc
        return cls("json_schema", json.dumps(schema))

    @classmethod
    def json_object(cls) -> Constraint:
        return cls("json_object", "")

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        import re

        try:
            re.compile(pattern)
        except re.error as exc:
            raise HelixloomError(f"invalid regex: {exc}", param="regex") from exc
        return cls("regex", pattern)

    @classmethod
    def choice(cls, options: list[str] | tuple[str, ...]) -> Constraint:
        if not options or any(not isinstance(o, str) or not o for o in options):
            raise HelixloomError("choice needs at least one non-empty string", param="choice")
        return cls("choice", json.dumps(list(options)))

    @property
    def schema(self) -> dict[str, Any] | None:
        return json.loads(self.spec) if self.kind == "json_schema" else None


def check_text(text: str, param: str = "prompt") -> None:
    """Refuse text that is not valid Unicode for a tokenizer: a lone UTF-16 surrogate (JSON's
    "\\ud800") cannot be encoded as UTF-8, and tokenizers fail on it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise HelixloomError(
            f"the {param} holds a lone surrogate character at position {exc.start}", param=param
        ) from None


def _check_schema_size(schema: dict[str, Any]) -> None:
    """Refuse schemas nested deeper or holding more subschemas than the caps, before anything
    recursive (the validator, the grammar compiler) walks them."""
    nodes = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            nodes += 1
            children = list(value.values())
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_SCHEMA_DEPTH or nodes > MAX_SCHEMA_NODES:
            raise HelixloomError(
                f"the JSON schema is too large (at most {MAX_SCHEMA_DEPTH} levels deep and "
                f"{MAX_SCHEMA_NODES} subschemas)",
                param="json_schema",
            )
        stack.extend((c, depth + 1) for c in children)


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to produce: a prompt, the adapter to use (None = base model), sampling, and
    optionally a constraint the output must satisfy."""

    prompt: str
    sampling: SamplingParams = field(default_factory=SamplingParams)
    adapter: str | None = None
    constraint: Constraint | None = None
    # the ids a citation may name (``engine.citations``): text stays free, a citation's id does not.
    # The local backends apply it (they pick the tokens); a remote server is sent the text only.
    citations: CitationSet | None = None

    def __post_init__(self) -> None:
        if not self.prompt:
            raise HelixloomError("the prompt is empty", "pass some text to complete", param="prompt")
        check_text(self.prompt)
        if self.constraint is not None and (self.sampling.ignore_eos or self.sampling.token_healing):
            raise HelixloomError(
                "a constrained request cannot use ignore_eos or token_healing",
                "the constraint decides where the output ends and how it starts",
            )


@dataclass(frozen=True)
class TokenLogprob:
    """A token, its text and its log-probability under the model's raw distribution."""

    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True)
class GeneratedTokenLogprobs:
    """The log-probability of one generated token and the most likely alternatives at that step."""

    chosen: TokenLogprob
    top: tuple[TokenLogprob, ...]


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    """Seconds spent: ``queued`` waiting for the engine, ``prefill`` on the prompt, ``decode`` after it."""

    queued: float = 0.0
    prefill: float = 0.0
    decode: float = 0.0

    @property
    def total(self) -> float:
        return self.queued + self.prefill + self.decode

    def as_dict(self) -> dict[str, float]:
        return {"queued": self.queued, "prefill": self.prefill, "decode": self.decode, "total": self.total}


@dataclass(frozen=True)
class GenerationResult:
    """A finished completion. ``token_ids`` are every generated token, stop sequence and EOS included."""

    text: str
    finish_reason: FinishReason
    usage: Usage
    token_ids: tuple[int, ...]
    timings: Timings
    logprobs: tuple[GeneratedTokenLogprobs, ...] | None = None


@dataclass(frozen=True)
class StreamDelta:
    """A piece of streamed text; the last item of a stream is the ``GenerationResult`` itself."""

    text: str
    logprobs: tuple[GeneratedTokenLogprobs, ...] | None = None


@dataclass(frozen=True)
class PromptLogprobs:
    """A prompt's tokens as the engine reads them, each with its log-probability given the ones before.

    Column-wise, as OpenAI's ``logprobs`` object: ``tokens`` joined give the prompt text back. A BOS
    token the engine adds itself is not listed (it is not in the text), and the first text token is
    scored after it; without one, nothing comes before the first token and its entries are None.
    """

    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    logprobs: tuple[float | None, ...]
    top: tuple[tuple[TokenLogprob, ...] | None, ...]


@dataclass(frozen=True)
class NextTokenLogprobs:
    """The next-token distribution after a prompt: its top tokens and the logprobs of asked candidates.

    ``candidates`` maps each asked candidate string to its log-probability when the string is a single
    token of the vocabulary, and to None when it is not (so callers can see what was not scored).
    """

    top: tuple[TokenLogprob, ...]
    candidates: dict[str, float | None]
    prompt_tokens: int


@dataclass(frozen=True)
class AdapterInfo:
    """A loaded adapter. ``version`` is its content hash (config + weights, see ``adapter_version``):
    two loads of the same bytes share it, a retrained adapter under the same name does not. Caches
    that hold state computed under an adapter key it by ``version``, never by ``name``."""

    name: str
    path: str
    rank: int | None
    target_modules: tuple[str, ...]
    version: str = ""
