"""The ``remote`` backend: any OpenAI-compatible server (vLLM, llama.cpp's server, Ollama, helixloom).

Spec: ``openai:URL[#MODEL]``, e.g. ``openai:http://gpu-box:8000/v1#mistral-7b``. Without ``#MODEL``
the server's first model is used. An adapter is a model name on the server (vLLM's convention for
``--lora-modules``). Prompts go to ``/v1/completions`` as they are, so every pipeline's exact prompt
format survives; stop sequences are also applied here, in case a server caps how many it honours.
The API key comes from ``HELIXLOOM_REMOTE_API_KEY`` (or ``OPENAI_API_KEY``).

Chat messages (``chat.render``) are formatted with the served model's chat template, found once at
start-up (``helixloom.engine.remote_chat``); the prompt then goes to ``/v1/completions`` like any
other, so logprobs of the next token after it stay available.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from helixloom import models
from helixloom.engine.base import AbortCheck, BatchEvent, Engine
from helixloom.engine.detok import StopMatcher
from helixloom.engine.remote_chat import (
    HTTP_ERRORS,
    TEMPLATE_ENV,
    ChatTemplate,
    ServerRoutes,
)
from helixloom.engine.types import (
    AdapterInfo,
    GeneratedTokenLogprobs,
    GenerationRequest,
    GenerationResult,
    NextTokenLogprobs,
    StreamDelta,
    Timings,
    TokenLogprob,
    Usage,
)
from helixloom.errors import AdapterError, HelixloomError, ModelNotFound

log = logging.getLogger("helixloom.engine.remote")


class RemoteEngine(Engine):
    """Requests go to an OpenAI-compatible server, several at a time; the server batches them."""

    backend = "remote"
    supports_adapters = True
    supports_mixed_adapter_batch = True
    supports_logprobs = True
    supports_constraints = True

    def __init__(
        self,
        spec: str | models.ModelSource,
        *,
        api_key: str | None = None,
        max_concurrency: int = 8,
        timeout: float = 300.0,
        max_retries: int = 3,
        chat_template: str | None = None,
    ) -> None:
        """``spec``: ``openai:URL[#MODEL]`` or its parsed ``ModelSource``. ``chat_template``: ``auto``
        (ask the server), ``none`` (no template: the transcript format for base models), or a Jinja
        file or Hugging Face model folder; by default ``HELIXLOOM_REMOTE_CHAT_TEMPLATE``, else
        ``auto``."""
        import openai

        source = models.resolve(spec) if isinstance(spec, str) else spec
        if source.kind != "remote":
            raise ModelNotFound(
                f"{source.spec} is not a remote spec", "e.g. openai:http://127.0.0.1:8000/v1#MODEL"
            )
        self.base_url, model = source.location, source.served_model
        self.model_name = source.spec
        key = (
            api_key
            or os.environ.get("HELIXLOOM_REMOTE_API_KEY")
            or os.environ.get("OPENAI_API_KEY")
            or "none"
        )
        # The client retries 408/409/429/5xx and connection errors with exponential backoff.
        self._client = openai.OpenAI(
            base_url=self.base_url, api_key=key, timeout=timeout, max_retries=max_retries
        )
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        self._routes = ServerRoutes(self.base_url.removesuffix("/v1"), headers)
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="helixloom-remote")
        self._adapters: dict[str, AdapterInfo] = {}
        served = self._served_models()
        if model is None:
            if not served:
                raise ModelNotFound(f"{self.base_url} serves no models")
            model = served[0]
        elif model not in served:
            raise ModelNotFound(
                f"{self.base_url} does not serve {model!r}", f"it serves: {', '.join(served)}"
            )
        self.model = model
        self._warned_healing = False
        choice = chat_template or os.environ.get(TEMPLATE_ENV) or "auto"
        self._chat = ChatTemplate(self._routes, model, choice, timeout)
        self.chat_template = self._chat.source

    def _served_models(self) -> list[str]:
        return [m.id for m in self._call(lambda: self._client.models.list()).data]

    def _call(self, fn: Any) -> Any:
        import openai

        try:
            return fn()
        except openai.NotFoundError as exc:
            raise ModelNotFound(f"{self.base_url}: {_message(exc)}") from exc
        except openai.BadRequestError as exc:
            param = exc.param if isinstance(exc.param, str) else None
            raise HelixloomError(
                f"{self.base_url} refused the request: {_message(exc)}", param=param
            ) from exc
        except openai.AuthenticationError as exc:
            raise HelixloomError(
                f"{self.base_url} refused the API key", "set HELIXLOOM_REMOTE_API_KEY to the server's key"
            ) from exc
        except openai.APIConnectionError as exc:
            raise HelixloomError(f"cannot reach {self.base_url}: {exc}", "is the server running?") from exc
        except openai.APIStatusError as exc:
            raise HelixloomError(f"{self.base_url} failed ({exc.status_code}): {_message(exc)}") from exc

    # ------------------------------------------------------------------ generation

    def stream_batch(
        self, requests: Sequence[GenerationRequest], *, abort: AbortCheck | None = None
    ) -> Iterator[BatchEvent]:
        events: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        stop_all = threading.Event()
        futures = [
            self._pool.submit(self._one, i, r, events, stop_all, abort, time.perf_counter())
            for i, r in enumerate(requests)
        ]
        remaining = len(futures)
        try:
            while remaining:
                row, event = events.get()
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, GenerationResult):
                    remaining -= 1
                yield row, event
        finally:
            stop_all.set()

    def _one(
        self,
        row: int,
        request: GenerationRequest,
        events: queue.SimpleQueue[tuple[int, Any]],
        stop_all: threading.Event,
        abort: AbortCheck | None,
        enqueued: float,
    ) -> None:
        try:
            events.put((row, self._stream_one(row, request, events, stop_all, abort, enqueued)))
        except BaseException as exc:
            events.put((row, exc))

    def _stream_one(
        self,
        row: int,
        request: GenerationRequest,
        events: queue.SimpleQueue[tuple[int, Any]],
        stop_all: threading.Event,
        abort: AbortCheck | None,
        enqueued: float,
    ) -> GenerationResult:
        p = request.sampling
        if p.token_healing and not self._warned_healing:
            self._warned_healing = True
            log.warning(
                "token healing runs in local engines only; %s gets the prompt as it is", self.base_url
            )
        # Our sampling has no repetition penalty and no min-p; say so, since some servers default
        # to them (llama-cpp-python: repeat_penalty 1.1, min_p 0.05). Servers ignore unknown fields.
        extra: dict[str, Any] = {"repeat_penalty": 1.0, "min_p": 0.0}
        if p.top_k:
            extra["top_k"] = p.top_k
        if p.ignore_eos:
            extra["ignore_eos"] = True
        if not p.skip_special_tokens:
            extra["skip_special_tokens"] = False  # vLLM's name; its default, like ours, skips them
        if request.constraint is not None:
            extra["response_format"] = _response_format(request.constraint)
        started = time.perf_counter()
        stream = self._call(
            lambda: self._client.completions.create(
                model=request.adapter or self.model,
                prompt=request.prompt,
                max_tokens=p.max_tokens,
                temperature=p.temperature,
                top_p=p.top_p,
                seed=p.seed,
                stop=list(p.stop) or None,
                logprobs=p.logprobs,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra,
            )
        )
        stops = StopMatcher(p.stop)
        finish, usage, first, chunks = "length", None, None, 0
        logprobs: list[GeneratedTokenLogprobs] = []
        try:
            for chunk in stream:
                if stop_all.is_set() or (abort is not None and abort(row)):
                    finish = "abort"
                    break
                if chunk.usage is not None:
                    usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                first = first or time.perf_counter()
                chunks += 1 if choice.text else 0
                step = _chunk_logprobs(choice.logprobs) if p.logprobs is not None else ()
                logprobs.extend(step)
                if text := stops.feed(choice.text or ""):
                    events.put((row, StreamDelta(text, tuple(step) or None)))
                if stops.stopped:
                    finish = "stop"
                    break
                if choice.finish_reason:
                    finish = "stop" if choice.finish_reason == "stop" else "length"
        finally:
            stream.close()
        if not stops.stopped and (rest := stops.finish()):  # held back as a possible stop's start
            events.put((row, StreamDelta(rest)))
        done = time.perf_counter()
        first = first or done
        return GenerationResult(
            text=stops.text,
            finish_reason=finish,  # type: ignore[arg-type]
            usage=usage or self._estimated_usage(request.prompt, chunks),
            token_ids=(),
            timings=Timings(queued=started - enqueued, prefill=first - started, decode=done - first),
            logprobs=tuple(logprobs) if p.logprobs is not None else None,
        )

    def _estimated_usage(self, prompt: str, chunks: int) -> Usage:
        """For servers that send no usage in streams (llama-cpp-python's): the streamed chunks
        (one token each on llama.cpp and vLLM) and the prompt as the server tokenizes it."""
        try:
            prompt_tokens = self.count_tokens(prompt)
        except HelixloomError:
            prompt_tokens = 0
        return Usage(prompt_tokens, chunks)

    # ------------------------------------------------------------------ scoring

    def next_token_logprobs(
        self,
        prompts: Sequence[str],
        *,
        adapter: str | None = None,
        top_k: int = 5,
        candidates: Sequence[str] = (),
    ) -> list[NextTokenLogprobs]:
        """Asks for one token with ``logprobs=top_k``. A server only reports its top tokens, so a
        candidate outside them comes back as None (OpenAI caps top_k at 5; vLLM and helixloom at 20)."""

        def one(prompt: str) -> NextTokenLogprobs:
            reply = self._call(
                lambda: self._client.completions.create(
                    model=adapter or self.model, prompt=prompt, max_tokens=1, temperature=0, logprobs=top_k
                )
            )
            lp = reply.choices[0].logprobs
            if lp is None or not lp.top_logprobs:
                raise HelixloomError(
                    f"{self.base_url} returned no logprobs",
                    "this server cannot score tokens; use a local engine or vLLM for the evaluator",
                )
            top_map: dict[str, float] = lp.top_logprobs[0] or {}
            ranked = sorted(top_map.items(), key=lambda kv: -kv[1])
            top = tuple(TokenLogprob(-1, tok, float(v)) for tok, v in ranked)
            usage = reply.usage.prompt_tokens if reply.usage else 0
            return NextTokenLogprobs(top, {c: top_map.get(c) for c in candidates}, usage)

        return list(self._pool.map(one, prompts))

    # ------------------------------------------------------------------ chat template

    def format_chat(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        """The served model's chat template applied to ``messages`` (see ``remote_chat``)."""
        if self._chat.source is None:
            return super().format_chat(messages)
        return self._chat.render(messages, add_generation_prompt=add_generation_prompt)

    # ------------------------------------------------------------------ adapters and tokens

    def load_adapter(self, name: str, path: str) -> AdapterInfo:
        """An adapter served under ``name`` (vLLM ``--lora-modules name=path``), or else loaded there
        now through vLLM's ``POST /v1/load_lora_adapter`` (``path`` is a path on the server's
        machine; vLLM needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, helixloom serves it as is)."""
        if name not in self._adapters:
            if name not in self._served_models():
                try:
                    self._adapter_call("load_lora_adapter", {"lora_name": name, "lora_path": path})
                except HelixloomError as exc:
                    raise AdapterError(
                        f"{self.base_url} does not serve an adapter named {name!r}, and would not load "
                        f"it from {path}: {exc.message}",
                        f"serve it there (vllm serve ... --enable-lora --lora-modules {name}={path}), or "
                        "let vLLM load adapters at runtime (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)",
                    ) from exc
            self._adapters[name] = AdapterInfo(name, path, None, (), _local_version(path))
        return self._adapters[name]

    def unload_adapter(self, name: str) -> None:
        """``POST /v1/unload_lora_adapter`` on the server (vLLM's); ``name`` is no longer served."""
        if name not in self._adapters:
            raise AdapterError(f"adapter {name!r} is not loaded")
        try:
            self._adapter_call("unload_lora_adapter", {"lora_name": name})
        except HelixloomError as exc:
            raise AdapterError(f"{self.base_url} would not unload {name!r}: {exc.message}") from exc
        del self._adapters[name]

    def _adapter_call(self, route: str, body: dict[str, Any]) -> None:
        """One of vLLM's adapter routes (they answer 200 with a line of text)."""
        self._call(lambda: self._client.post(route, body=body, cast_to=str))

    def adapters(self) -> list[AdapterInfo]:
        return list(self._adapters.values())

    def count_tokens(self, text: str) -> int:
        """Through the server's ``/tokenize`` (llama.cpp's and vLLM's shapes); an error elsewhere."""
        # llama.cpp's server first (it answers vLLM's shape with no tokens), vLLM, llama-cpp-python's.
        shapes: list[tuple[str, dict[str, Any]]] = [
            ("/tokenize", {"content": text}),
            ("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False}),
            ("/extras/tokenize", {"input": text}),
        ]
        for path, body in shapes:
            try:
                data = self._routes.json(path, body, 30)
            except HTTP_ERRORS:
                continue
            if not isinstance(data, dict):
                continue
            if "count" in data:
                return int(data["count"])
            if "tokens" in data:
                return len(data["tokens"])
        raise HelixloomError(
            f"{self.base_url} cannot count tokens (no /tokenize)", "use a local engine for counting"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()


def _response_format(constraint: Any) -> dict[str, Any]:
    if constraint.kind == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": constraint.schema}}
    if constraint.kind == "json_object":
        return {"type": "json_object"}
    raise HelixloomError(
        f"a {constraint.kind} constraint cannot be sent to an OpenAI-compatible server",
        "use a JSON schema, or a local engine",
    )


def _chunk_logprobs(lp: Any) -> list[GeneratedTokenLogprobs]:
    if lp is None or not lp.tokens:
        return []
    out = []
    for i, token in enumerate(lp.tokens):
        value = lp.token_logprobs[i] if lp.token_logprobs else None
        top = (lp.top_logprobs or [{}])[i] if lp.top_logprobs and i < len(lp.top_logprobs) else {}
        out.append(
            GeneratedTokenLogprobs(
                TokenLogprob(-1, token, float(value) if value is not None else 0.0),
                tuple(
                    TokenLogprob(-1, t, float(v))
                    for t, v in sorted((top or {}).items(), key=lambda kv: -kv[1])
                ),
            )
        )
    return out


def _local_version(path: str) -> str:
    """The content hash of an adapter folder when this machine can read it (the usual case of a
    server on the same filesystem); empty when the path is only the server's."""
    from pathlib import Path

    from helixloom.engine.lora_folder import adapter_version

    try:
        folder = Path(path)
        return adapter_version(folder) if (folder / "adapter_config.json").is_file() else ""
    except OSError:
        return ""


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(exc)
