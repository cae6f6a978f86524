"""OpenAI wire format: request models that turn themselves into sampling parameters (vLLM's habit);
the response models are in ``responses``.

Field names and order follow OpenAI's API reference. Unknown fields are accepted (clients send many)
and logged, never a crash; fields we cannot honour are a 400 naming the field.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from helixloom.engine import Constraint, Engine, SamplingParams, sampling
from helixloom.engine.base import TokenPrompt
from helixloom.errors import HelixloomError
from helixloom.server.responses import ErrorInfo, ErrorResponse
from helixloom.weave.evaluator import Question
from helixloom.weave.search import WeaveConfig

log = logging.getLogger("helixloom.server")


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_extra(self) -> OpenAIModel:
        if self.model_extra:
            log.info("ignored request fields: %s", ", ".join(sorted(self.model_extra)))
        return self


class StreamOptions(OpenAIModel):
    include_usage: bool = False


class ChatMessage(OpenAIModel):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise HelixloomError(
                    f"message content of type {part.get('type')!r} is not supported",
                    "send text",
                    param="messages",
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class _Sampling(OpenAIModel):
    model: str
    frequency_penalty: float | None = 0.0
    presence_penalty: float | None = 0.0
    max_tokens: int | None = None
    n: int = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    # Not OpenAI's, but common (vLLM, llama.cpp): accepted as extensions.
    top_k: int | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True

    @property
    def include_usage(self) -> bool:
        """A streamed answer ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    def base_sampling(
        self, *, max_tokens: int | None, logprobs: int | None, default_max: int, defaults: SamplingParams
    ) -> SamplingParams:
        if self.frequency_penalty or self.presence_penalty:
            field = "frequency_penalty" if self.frequency_penalty else "presence_penalty"
            raise HelixloomError(f"{field} is not supported", "leave it at 0", param=field)
        if not 1 <= self.n <= 16:
            raise HelixloomError("n must be between 1 and 16", param="n")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 16:  # OpenAI allows 4; like vLLM we take more (HelixNet's format has 6)
            raise HelixloomError("stop takes at most 16 sequences", param="stop")
        if self.temperature is not None and self.temperature > 2:
            raise HelixloomError("temperature must be between 0 and 2", param="temperature")
        return sampling(
            max_tokens=max_tokens if max_tokens is not None else default_max,
            fit_context=max_tokens is None,  # the server's default yields to a long prompt
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            top_k=defaults.top_k if self.top_k is None else self.top_k,
            seed=self.seed,
            stop=tuple(stops),
            logprobs=logprobs,
            ignore_eos=self.ignore_eos,
            skip_special_tokens=self.skip_special_tokens,
        )


_OPENAI = SamplingParams()  # OpenAI's sampling defaults: temperature 1, top_p 1, no top_k


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    logprobs: bool = False
    top_logprobs: int | None = None
    max_completion_tokens: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None

    def to_sampling(self, default_max: int, defaults: SamplingParams = _OPENAI) -> SamplingParams:
        """The sampling this request asks for; temperature, top_p and top_k it leaves out come from
        ``defaults`` (OpenAI's unless a pipeline has its own)."""
        if self.tools:
            raise HelixloomError("tools are not supported", param="tools")
        if self.top_logprobs is not None and not self.logprobs:
            raise HelixloomError("top_logprobs needs logprobs: true", param="top_logprobs")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= 20:
            raise HelixloomError("top_logprobs must be between 0 and 20", param="top_logprobs")
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return self.base_sampling(
            max_tokens=limit,
            logprobs=(self.top_logprobs or 0) if self.logprobs else None,
            default_max=default_max,
            defaults=defaults,
        )

    def plain_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]

    def helixnet_gate(self, default: bool) -> bool:
        """``model: "helixnet"``'s extra ``gate`` field (a bool), else the server's ``default``."""
        gate = (self.model_extra or {}).get("gate")
        if gate is None:
            return default
        if not isinstance(gate, bool):
            raise HelixloomError("gate must be true or false", param="gate")
        return gate

    def improve_options(self) -> ImproveOptions:
        """``model: "improve:NAME"``'s settings, from the extra ``improve`` field."""
        raw = (self.model_extra or {}).get("improve") or {}
        if not isinstance(raw, dict):
            raise HelixloomError("improve options must be an object", param="improve")
        try:
            return ImproveOptions(**raw)
        except Exception as exc:
            raise HelixloomError(f"invalid improve options: {exc}".splitlines()[0], param="improve") from exc

    def weave_options(self) -> WeaveOptions:
        """``model: "weave"``'s settings, from the extra ``weave`` field; its seed defaults to the
        request's."""
        raw = (self.model_extra or {}).get("weave") or {}
        try:
            return WeaveOptions(**raw, seed=self.seed or 0) if "seed" not in raw else WeaveOptions(**raw)
        except Exception as exc:
            raise HelixloomError(f"invalid weave options: {exc}".splitlines()[0], param="weave") from exc


def constraint_from(response_format: dict[str, Any] | None) -> Constraint | None:
    """OpenAI's ``response_format`` as an engine constraint (None for plain text)."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return Constraint.json_object()
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise HelixloomError(
                "response_format json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}",
                param="response_format",
            )
        try:
            return Constraint.json_schema(spec["schema"])
        except HelixloomError as exc:
            raise HelixloomError(exc.message, param="response_format") from exc
    raise HelixloomError(
        f"unknown response_format type {kind!r}",
        "use text, json_object or json_schema",
        param="response_format",
    )


class CompletionRequest(_Sampling):
    # Text, texts, token ids or lists of them: OpenAI's four forms (an evaluation harness that holds
    # the tokenizer sends ids).
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None
    response_format: dict[str, Any] | None = None  # an extension on /v1/completions, as vLLM has

    def to_sampling(self, default_max: int) -> SamplingParams:
        """The sampling this request asks for (OpenAI's defaults for what it leaves out)."""
        if self.suffix:
            raise HelixloomError("suffix is not supported", param="suffix")
        if self.best_of not in (None, 1, self.n):
            raise HelixloomError("best_of is not supported", param="best_of")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:  # OpenAI: 5; vLLM and we: 20
            raise HelixloomError("logprobs must be between 0 and 20", param="logprobs")
        if self.max_tokens == 0:
            if not self.echo:
                raise HelixloomError(
                    "max_tokens must be at least 1 (0 only with echo: the prompt comes back, scored "
                    "when logprobs is set, and nothing is generated)",
                    param="max_tokens",
                )
            return self.base_sampling(
                max_tokens=1, logprobs=self.logprobs, default_max=default_max, defaults=_OPENAI
            )
        if self.echo and self.logprobs is not None and self.stream:
            raise HelixloomError("echo with logprobs is not streamed; send stream: false", param="stream")
        return self.base_sampling(
            max_tokens=self.max_tokens, logprobs=self.logprobs, default_max=default_max, defaults=_OPENAI
        )

    @property
    def generates(self) -> bool:
        """False for ``max_tokens: 0`` with ``echo``: the answer is the prompt alone."""
        return self.max_tokens != 0

    def prompts(self, engine: Engine) -> list[str]:
        """The prompts as the engine takes them; token ids become ``TokenPrompt``s, which the engine
        reads as those ids exactly (a 400 where the engine cannot, or an id is out of its vocabulary)."""
        raw = self.prompt
        if isinstance(raw, str) or (raw and all(isinstance(p, str) for p in raw)):
            texts = [raw] if isinstance(raw, str) else [p for p in raw if isinstance(p, str)]
            if not texts or any(not p for p in texts):
                raise HelixloomError("prompt must be a non-empty string or a list of them", param="prompt")
            return texts
        lists: list[list[int]] = []
        for item in [raw] if raw and all(isinstance(t, int) for t in raw) else raw:
            if not isinstance(item, list) or not item or not all(isinstance(t, int) for t in item):
                raise HelixloomError("prompt must be text or token ids, never empty", param="prompt")
            lists.append([t for t in item if isinstance(t, int)])
        if not lists:
            raise HelixloomError("prompt must be text or token ids, never empty", param="prompt")
        if not engine.supports_token_prompts:
            raise HelixloomError(f"the {engine.backend} engine takes prompts as text only", param="prompt")
        prompts: list[str] = []
        for ids in lists:
            try:
                text = engine.detokenize(ids)
            except HelixloomError as exc:
                raise HelixloomError(exc.message, param="prompt") from None
            prompts.append(TokenPrompt(text, ids))
        return prompts


class TokenizeRequest(OpenAIModel):
    """vLLM's ``POST /tokenize``: a ``prompt``, or chat ``messages`` put in the model's chat template."""

    model: str | None = None  # default: the base model
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True  # messages only: open the assistant's turn
    add_special_tokens: bool | None = None  # default: True for a prompt, False for messages (vLLM's)
    return_token_strs: bool = False

    def check(self) -> None:
        """A 400 naming the field unless there is exactly one of prompt and messages and nothing we
        would ignore."""
        if (self.prompt is None) == (self.messages is None):
            raise HelixloomError("send either prompt or messages", param="prompt")
        if self.messages is not None and not self.messages:
            raise HelixloomError("messages is empty", param="messages")
        if self.prompt is not None and "add_generation_prompt" in self.model_fields_set:
            raise HelixloomError("add_generation_prompt goes with messages", param="add_generation_prompt")
        if self.return_token_strs:
            raise HelixloomError("return_token_strs is not supported", param="return_token_strs")
        for name in ("continue_final_message", "chat_template", "chat_template_kwargs", "tools"):
            if (self.model_extra or {}).get(name):
                raise HelixloomError(f"{name} is not supported", param=name)

    @property
    def special_tokens(self) -> bool:
        if self.add_special_tokens is not None:
            return self.add_special_tokens
        return self.messages is None  # a chat template writes its own special tokens

    def plain_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages or ()]


class DetokenizeRequest(OpenAIModel):
    """vLLM's ``POST /detokenize``: token ids back to text."""

    model: str | None = None  # default: the base model
    tokens: list[int]


class LoadLoRAAdapterRequest(OpenAIModel):
    """vLLM's ``POST /v1/load_lora_adapter``; ``load_inplace`` replaces what a served name holds."""

    lora_name: str
    lora_path: str
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(OpenAIModel):
    """vLLM's ``POST /v1/unload_lora_adapter`` (its ``lora_int_id`` is accepted and not needed)."""

    lora_name: str
    lora_int_id: int | None = None


class WeaveQuestion(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    text: str = Field(min_length=1, max_length=2000)
    weight: float = Field(1.0, gt=0, le=1000)
    answer: Literal["yes", "no"] = "yes"


MAX_WEAVE_QUESTIONS = 16  # per request
# MiniHF's settings (WeaveConfig's) with a budget an interactive request can wait for.
_SERVED_WEAVE = WeaveConfig(budget=24, round_budget=8, n_expand=4)


class WeaveOptions(BaseModel):
    """Weave search settings as a request gives them; ``to_config`` makes them a ``WeaveConfig``.
    The bounds are the server's limits on one request."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    # at most 16: every node is scored on every question in one pass of the shared engine
    questions: list[WeaveQuestion] = Field(
        default_factory=lambda: [WeaveQuestion(text="Does the response answer the prompt well?")],
        min_length=1,
        max_length=MAX_WEAVE_QUESTIONS,
    )
    budget: int = Field(_SERVED_WEAVE.budget, ge=1, le=512)
    round_budget: int = Field(_SERVED_WEAVE.round_budget, ge=1, le=512)
    n_expand: int = Field(_SERVED_WEAVE.n_expand, ge=1, le=32)
    tokens_per_node: int = Field(_SERVED_WEAVE.tokens_per_node, ge=1, le=512)
    beam_width: int = Field(_SERVED_WEAVE.beam_width, ge=1, le=8)
    max_lookahead: int = Field(_SERVED_WEAVE.max_lookahead, ge=1, le=8)
    temperature: float = Field(_SERVED_WEAVE.temperature, gt=0, le=100)
    sampling_temperature: float = Field(_SERVED_WEAVE.sampling_temperature, ge=0, le=100)
    seed: int = _SERVED_WEAVE.seed

    def to_config(self) -> WeaveConfig:
        """The search settings (what the options leave out, ``top_p``, is WeaveConfig's)."""
        names = {f.name for f in fields(WeaveConfig)}
        return WeaveConfig(**{k: v for k, v in self.model_dump().items() if k in names})

    def to_questions(self) -> list[Question]:
        return [Question(q.text, q.weight, q.answer) for q in self.questions]


MAX_IMPROVE_BEST_OF = 16  # answers one improve:NAME request draws, at most


class ImproveOptions(BaseModel):
    """``model: "improve:NAME"``: answers drawn as the run draws its own, the run's reward picks one
    (``ImproveRun.best_answers``). ``best_of`` defaults to the run's ``k``; at most 16 a request."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    best_of: int | None = Field(None, ge=1, le=MAX_IMPROVE_BEST_OF)
    answer_from: Literal["base", "current"] = "base"


class WeaveRequest(WeaveOptions):
    prompt: str = Field(min_length=1)
    model: str | None = None  # an adapter name to generate with (default: the base model)


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score: Literal["up", "down"]
    reason: str | None = Field(None, max_length=10_000)
    message_id: str | None = None  # rate one message of the session instead of the whole session


class JobRequest(BaseModel):
    """A long command to run as a job: ``helixloom COMMAND...`` given as words or as one string."""

    model_config = ConfigDict(extra="forbid")
    argv: list[str] | None = Field(
        None, description='e.g. ["iterate", "--prompts", "p.jsonl", "--name", "x"]'
    )
    command: str | None = Field(None, description="the same as one shell-quoted string")


def not_found(message: str, param: str | None = None) -> JSONResponse:
    """A 404 in OpenAI's error envelope."""
    return JSONResponse(
        error_body(message, "invalid_request_error", param=param, code="not_found"), status_code=404
    )


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    return ErrorResponse(error=ErrorInfo(message=message, type=type_, param=param, code=code)).model_dump()
