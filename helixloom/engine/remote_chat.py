"""The chat template of a model served elsewhere, found once when a remote engine starts.

Sources, first found wins: a template the user names (``chat_template=`` or
``HELIXLOOM_REMOTE_CHAT_TEMPLATE``: a Jinja file, a Hugging Face model folder, or ``none`` for a base
model); llama.cpp's ``GET /props`` (rendered here with transformers' Jinja); vLLM's (and helixloom's)
``/tokenize`` + ``/detokenize`` (rendered by the server). Neither server dedupes a BOS written by the
template against the one it adds to every completion prompt, so a leading BOS is dropped when the
server adds one (as llama.cpp's own chat endpoint does). A server with none keeps the transcript format.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helixloom.errors import HelixloomError

log = logging.getLogger("helixloom.engine.remote")
TEMPLATE_ENV = "HELIXLOOM_REMOTE_CHAT_TEMPLATE"
#: ``chat_template`` when the server renders chat messages itself (vLLM's /tokenize and /detokenize).
SERVER_TEMPLATE = "server:vllm"
#: All of chat-template discovery together: a server that never answers costs at most this.
DISCOVERY_SECONDS = 5.0
_PROBE = ({"role": "user", "content": "Hello"},)
# What a failed request to a route beside /v1 raises: refused, timed out, HTTP error, not JSON.
HTTP_ERRORS = (OSError, ValueError, http.client.HTTPException)


class ServerRoutes:
    """JSON routes beside ``/v1`` on an OpenAI-compatible server (``/props``, ``/tokenize``, ...)."""

    def __init__(self, root: str, headers: Mapping[str, str]) -> None:
        self.root = root
        self.headers = dict(headers)

    def json(self, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
        """The JSON answer (GET without a body, else POST); raises one of ``HTTP_ERRORS``."""
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        method = "GET" if body is None else "POST"
        request = urllib.request.Request(self.root + path, data, self.headers, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read())

    def probe(self, path: str, body: dict[str, Any] | None, deadline: float) -> Any:
        """``json`` within a deadline; None when it fails (servers lack most routes)."""
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            return self.json(path, body, left)
        except HTTP_ERRORS as exc:
            log.debug("%s%s: %s", self.root, path, exc)
            return None


class ChatTemplate:
    """Finds the served model's template (``source``: Jinja text, ``SERVER_TEMPLATE`` or None) and
    renders chat messages with it. Only a template the user named can make construction fail."""

    def __init__(self, routes: ServerRoutes, model: str, choice: str, timeout: float) -> None:
        self.routes = routes
        self.model = model
        self.timeout = timeout
        self.source: str | None = None
        self._template: LocalTemplate | None = None
        self._server_bos: int | None = None  # for SERVER_TEMPLATE: the BOS id /v1/completions adds
        self._server_render = functools.lru_cache(maxsize=4096)(self._render_on_server)
        self._find(choice)

    def render(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> str:
        """``messages`` in the template (with ``add_generation_prompt``, the assistant's turn opened)."""
        if self._template is not None:  # a template's refusal is a HelixloomError (LocalTemplate.render)
            return self._template.render(messages, add_generation_prompt=add_generation_prompt)
        if self.source == SERVER_TEMPLATE:
            turns = tuple((m["role"], m["content"]) for m in messages)
            return self._server_render(turns, add_generation_prompt)
        raise HelixloomError(f"{self.model} has no chat template")

    def _find(self, choice: str) -> None:
        """Sets ``source`` from the first source that has one. Only a template the user named
        can raise; the server's routes are asked within ``DISCOVERY_SECONDS``, any failure ignored."""
        deadline = time.monotonic() + DISCOVERY_SECONDS
        if choice == "none":
            return
        if choice != "auto":
            source, tokens = _template_from_path(choice)
            self._use_template(LocalTemplate(source, tokens, self._bos_text(tokens, deadline)), explicit=True)
            return
        props = self.routes.probe("/props", None, deadline)
        served = props.get("chat_template") if isinstance(props, dict) else None
        if isinstance(served, str) and served and not self._is_fallback_chatml(served, deadline):
            tokens = {k: v for k in ("bos_token", "eos_token") if isinstance(v := props.get(k), str)}
            if self._use_template(LocalTemplate(served, tokens, self._bos_text(tokens, deadline))):
                return
        # vLLM renders chat messages with the model's template on /tokenize (a 400 when it has none).
        body = {"model": self.model, "messages": list(_PROBE), "add_generation_prompt": True}
        probe = self.routes.probe("/tokenize", body, deadline)
        ids = probe.get("tokens") if isinstance(probe, dict) else None
        if isinstance(ids, list) and ids and all(isinstance(t, int) for t in ids):
            back = self.routes.probe("/detokenize", {"model": self.model, "tokens": ids}, deadline)
            if isinstance(back, dict) and isinstance(back.get("prompt"), str):
                self._server_bos = self._bos_id(deadline)
                self.source = SERVER_TEMPLATE
                return
        log.debug("%s gave no chat template; chat messages get the transcript format", self.routes.root)

    def _use_template(self, template: LocalTemplate, *, explicit: bool = False) -> bool:
        """Takes a template that renders a first message; one that fails is an error only when the
        user named it."""
        try:
            template.render(_PROBE)
        except Exception as exc:
            if explicit:
                raise HelixloomError(f"the chat template does not render: {exc}") from exc
            log.debug("%s/props: its chat template does not render (%s); ignored", self.routes.root, exc)
            return False
        self._template = template
        self.source = template.source
        return True

    def _is_fallback_chatml(self, source: str, deadline: float) -> bool:
        """llama.cpp serves ChatML when the model has no template; a vocabulary without ChatML's
        ``<|im_start|>`` token says this is that fallback, not the model's template."""
        if "<|im_start|>" not in source:
            return False
        reply = self.routes.probe("/tokenize", {"content": "<|im_start|>"}, deadline)
        tokens = reply.get("tokens") if isinstance(reply, dict) else None
        return isinstance(tokens, list) and len(tokens) > 1

    def _bos_id(self, deadline: float) -> int | None:
        """The token the server puts before every completion prompt (an empty prompt tokenized with
        special tokens), or None: it adds none, or cannot say. llama.cpp's shape goes first: llama.cpp
        answers vLLM's with no tokens, while vLLM refuses llama.cpp's."""
        llamacpp = {"content": "", "add_special": True}
        vllm = {"model": self.model, "prompt": "", "add_special_tokens": True}
        for body in (llamacpp, vllm):
            reply = self.routes.probe("/tokenize", body, deadline)
            if isinstance(reply, dict) and isinstance(tokens := reply.get("tokens"), list):
                return tokens[0] if tokens and isinstance(tokens[0], int) else None
        return None

    def _bos_text(self, tokens: Mapping[str, str], deadline: float) -> str:
        """The template's BOS text when the server adds a BOS itself, else ""."""
        bos = tokens.get("bos_token", "")
        return bos if bos and self._bos_id(deadline) is not None else ""

    def _render_on_server(self, messages: tuple[tuple[str, str], ...], add_generation_prompt: bool) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": role, "content": content} for role, content in messages],
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            tokens = self.routes.json("/tokenize", body, self.timeout)["tokens"]
            if self._server_bos is not None and tokens[:1] == [self._server_bos]:
                tokens = tokens[1:]  # /v1/completions adds it again
            reply = self.routes.json("/detokenize", {"model": self.model, "tokens": tokens}, self.timeout)
            return str(reply["prompt"])
        except (*HTTP_ERRORS, KeyError, TypeError) as exc:
            raise HelixloomError(f"{self.routes.root} could not apply its chat template: {exc}") from exc


@dataclass(frozen=True)
class LocalTemplate:
    """A Jinja chat template rendered here, the way transformers' ``apply_chat_template`` renders it."""

    source: str
    tokens: Mapping[str, str]  # the special tokens a template may name: bos_token, eos_token, ...
    server_bos: str  # a BOS text the server adds to every prompt itself, so not repeated ("": none)

    def render(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        from helixloom.engine.base import template_refusals

        variables: dict[str, Any] = dict(self.tokens)
        # Annotated as str; it returns (one rendering per conversation, assistant token indices).
        with template_refusals():
            rendered: Any = render_jinja_template(
                [[dict(m) for m in messages]],
                chat_template=self.source,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        text = str(rendered[0][0])
        return text.removeprefix(self.server_bos) if self.server_bos else text


def _template_from_path(choice: str) -> tuple[str, dict[str, str]]:
    """A Jinja file's text (no special tokens), or a Hugging Face model or tokenizer folder's chat
    template (``chat_template.jinja``, else ``tokenizer_config.json``) and special tokens."""
    path = Path(choice).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8"), {}
    if not path.is_dir():
        raise HelixloomError(
            f"chat template {choice!r}: no such file or folder",
            f"{TEMPLATE_ENV} takes a Jinja file, a Hugging Face model folder, auto or none",
        )
    tokens: dict[str, str] = {}
    configs = [_json_file(path / "special_tokens_map.json"), _json_file(path / "tokenizer_config.json")]
    for config in configs:
        for key, value in config.items():
            text = value.get("content") if isinstance(value, dict) else value
            if key.endswith("_token") and isinstance(text, str):
                tokens[key] = text
    jinja = path / "chat_template.jinja"
    source = jinja.read_text(encoding="utf-8") if jinja.is_file() else configs[1].get("chat_template")
    if isinstance(source, list):  # named templates: [{"name": "default", "template": ...}, ...]
        source = next((t.get("template") for t in source if t.get("name") == "default"), None)
    if not isinstance(source, str) or not source:
        raise HelixloomError(
            f"{path} has no chat template (no chat_template.jinja, none in tokenizer_config.json)",
            "give the instruct model's folder, its Jinja file, or none for a base model",
        )
    return source, tokens


def _json_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise HelixloomError(f"{path} is not JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}
