"""The remote engine formats chat messages with the served model's chat template.

Small fake servers on loopback stand in for llama.cpp's ``llama-server`` (``GET /props``) and vLLM
(``/tokenize`` + ``/detokenize``); both tokenize with the tiny model's tokenizer, which adds ``<s>``
to a completion prompt, and both echo a completion's prompt back as its text, so a test sees exactly
what ``/v1/completions`` received.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helixloom import prompting
from helixloom.engine import GenerationRequest, GenerationResult, StreamDelta, sampling
from helixloom.engine import remote_chat as remote_module
from helixloom.engine.remote import RemoteEngine
from helixloom.engine.remote_chat import SERVER_TEMPLATE
from helixloom.errors import HelixloomError
from tests.conftest import TinyModel
from tests.tiny import CHAT_TEMPLATE

MODEL = "tiny-instruct"
# Writes a BOS itself, as Llama 3's and Gemma's templates do.
TEMPLATE = "{{ bos_token }}" + CHAT_TEMPLATE
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
RENDERED = "<|system|>\nBe brief.</s>\n<|user|>\nCapital of France?</s>\n<|assistant|>\n"
# llama.cpp's /props when the model has no template of its own.
LLAMACPP_CHATML = (
    "{%- for message in messages -%}\n"
    "  {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "  {{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}"
)


@dataclass
class Fake:
    """What the fake server has: ``props`` is /props's JSON (None: no such route; "hang" and "garbage"
    misbehave); ``tokenize`` is whose /tokenize it has (None, "llamacpp" or "vllm")."""

    props: Any = None
    tokenize: str | None = None
    adds_bos: bool = True  # whether /v1/completions puts <s> before a prompt
    seen: list[tuple[str, Any]] = field(default_factory=list)  # (path, JSON body) of every request


@pytest.fixture(scope="module")
def tokenizer(tiny_model: TinyModel) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model.path))


def fake_app(fake: Fake, tokenizer: Any) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

    app = FastAPI()

    def ids(text: str, special: bool) -> list[int]:
        return list(tokenizer(text, add_special_tokens=special and fake.adds_bos).input_ids)

    @app.middleware("http")
    async def record(request: Request, call_next: Any) -> Response:
        body = await request.body()
        fake.seen.append((request.url.path, json.loads(body) if body else None))
        return await call_next(request)  # type: ignore[no-any-return]

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "t"}]}

    @app.post("/v1/completions")
    def completions(body: dict[str, Any]) -> Response:
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        if not body.get("stream"):
            top = {"Yes": -0.1, "No": -2.4}
            lp = {"tokens": ["Yes"], "token_logprobs": [-0.1], "top_logprobs": [top], "text_offset": [0]}
            choice = {"index": 0, "text": "Yes", "finish_reason": "length", "logprobs": lp}
            return JSONResponse(
                {"id": "c", "object": "text_completion", "created": 0, "model": MODEL, "choices": [choice]}
                | {"usage": usage}
            )
        echo = {"index": 0, "text": body["prompt"], "logprobs": None, "finish_reason": "stop"}
        chunks = [{"choices": [echo]}, {"choices": [], "usage": usage}]
        head = {"id": "c", "object": "text_completion", "created": 0, "model": MODEL}
        lines = [f"data: {json.dumps(head | c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
        return StreamingResponse(iter(lines), media_type="text/event-stream")

    if fake.props is not None:

        @app.get("/props")
        async def props() -> Response:
            if fake.props == "hang":
                await asyncio.sleep(3)
            if fake.props == "garbage":
                return PlainTextResponse("<html>not json")
            return JSONResponse(fake.props)

    if fake.tokenize == "llamacpp":

        @app.post("/tokenize")
        def llamacpp_tokenize(body: dict[str, Any]) -> dict[str, Any]:
            if "content" not in body:
                return {"tokens": []}  # llama.cpp answers other shapes so
            return {"tokens": ids(body["content"], bool(body.get("add_special")))}

    if fake.tokenize == "vllm":

        @app.post("/tokenize")
        def vllm_tokenize(body: dict[str, Any]) -> Response:
            if "messages" in body:
                text = tokenizer.apply_chat_template(
                    body["messages"], chat_template=TEMPLATE, tokenize=False, add_generation_prompt=True
                )
                tokens = ids(text, bool(body.get("add_special_tokens", False)))
            elif "prompt" in body:
                tokens = ids(body["prompt"], bool(body.get("add_special_tokens", True)))
            else:
                return JSONResponse({"error": {"message": "prompt or messages"}}, status_code=400)
            return JSONResponse({"tokens": tokens, "count": len(tokens), "max_model_len": 512})

        @app.post("/detokenize")
        def vllm_detokenize(body: dict[str, Any]) -> dict[str, Any]:
            return {"prompt": tokenizer.decode(body["tokens"])}

    return app


@pytest.fixture
def serve(tokenizer: Any) -> Iterator[Any]:
    """``serve(Fake(...))`` runs a fake server on loopback and gives its URL."""
    import socket

    import uvicorn

    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(fake: Fake) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        config = uvicorn.Config(
            fake_app(fake, tokenizer), port=port, log_level="warning", timeout_graceful_shutdown=1
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the fake server did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def engine(url: str, **kw: Any) -> RemoteEngine:
    return RemoteEngine(f"openai:{url}/v1#{MODEL}", max_retries=0, **kw)


def sent_prompt(fake: Fake, engine: RemoteEngine, prompt: str) -> str:
    """Generates from ``prompt`` and checks the fake received it on /v1/completions, then scores it."""
    text = engine.generate([GenerationRequest(prompt, sampling(temperature=0, max_tokens=4))])[0].text
    [scored] = engine.next_token_logprobs([prompt], top_k=2, candidates=["Yes"])
    assert scored.candidates["Yes"] == pytest.approx(-0.1)
    sent = [body["prompt"] for path, body in fake.seen if path == "/v1/completions"]
    assert sent == [prompt, prompt]
    return text


def routes(fake: Fake) -> list[str]:
    return [path for path, _ in fake.seen if path != "/v1/models"]


# ---------------------------------------------------------------------- llama.cpp: /props


@pytest.mark.parametrize("adds_bos", [True, False])
def test_llamacpp_props_template_rendered_here(serve: Any, adds_bos: bool) -> None:
    props = {"chat_template": TEMPLATE, "bos_token": "<s>", "eos_token": "</s>", "total_slots": 1}
    fake = Fake(props=props, tokenize="llamacpp", adds_bos=adds_bos)
    remote = engine(serve(fake))
    assert remote.chat_template == TEMPLATE
    rendered = prompting.render(remote, MESSAGES)
    # The server puts <s> before every prompt itself, so the template's own is dropped.
    expected = RENDERED if adds_bos else "<s>" + RENDERED
    assert rendered.prompt == expected and rendered.stop == () and not rendered.token_healing
    assert sent_prompt(fake, remote, rendered.prompt) == expected


def test_llamacpp_props_without_special_tokens(serve: Any) -> None:
    """Older servers send no bos_token/eos_token: the template sees them undefined (empty)."""
    fake = Fake(props={"chat_template": TEMPLATE}, tokenize="llamacpp")
    remote = engine(serve(fake))
    assert prompting.render(remote, MESSAGES).prompt == RENDERED


def test_llamacpp_chatml_fallback_is_no_template(serve: Any) -> None:
    """For a model without a template llama.cpp serves ChatML; a vocabulary without <|im_start|> shows
    it is not the model's, so a base model keeps the transcript format."""
    fake = Fake(props={"chat_template": LLAMACPP_CHATML, "bos_token": "<s>"}, tokenize="llamacpp")
    remote = engine(serve(fake))
    assert remote.chat_template is None
    assert prompting.render(remote, MESSAGES).token_healing


# ---------------------------------------------------------------------- vLLM: /tokenize + /detokenize


@pytest.mark.parametrize("adds_bos", [True, False])
def test_vllm_renders_on_the_server(serve: Any, adds_bos: bool) -> None:
    fake = Fake(tokenize="vllm", adds_bos=adds_bos)
    remote = engine(serve(fake))
    assert remote.chat_template == SERVER_TEMPLATE
    rendered = prompting.render(remote, MESSAGES)
    # /tokenize gives the template's <s>; when /v1/completions adds one, it is left out of the text.
    expected = RENDERED if adds_bos else "<s>" + RENDERED
    assert rendered.prompt == expected and not rendered.token_healing
    renders = len([p for p in routes(fake) if p == "/detokenize"])
    assert prompting.render(remote, [dict(m) for m in MESSAGES]).prompt == expected
    assert len([p for p in routes(fake) if p == "/detokenize"]) == renders  # rendered once
    fake.seen.clear()
    assert sent_prompt(fake, remote, rendered.prompt) == expected


# ---------------------------------------------------------------------- no template anywhere


def test_server_without_template_routes_keeps_the_transcript(serve: Any) -> None:
    fake = Fake()
    remote = engine(serve(fake))
    assert remote.chat_template is None
    rendered = prompting.render(remote, MESSAGES)
    assert rendered == prompting.render_with(None, MESSAGES) and rendered.token_healing
    with pytest.raises(HelixloomError, match="no chat template"):
        remote.format_chat(MESSAGES)


# ---------------------------------------------------------------------- a template the user names


def test_explicit_jinja_file(serve: Any, tmp_path: Path) -> None:
    path = tmp_path / "chat.jinja"
    path.write_text(TEMPLATE)
    remote = engine(serve(Fake()), chat_template=str(path))
    assert remote.chat_template == TEMPLATE
    assert prompting.render(remote, MESSAGES).prompt == RENDERED  # a bare file knows no bos_token


def test_explicit_model_folder_matches_transformers(
    serve: Any, tiny_model: TinyModel, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELIXLOOM_REMOTE_CHAT_TEMPLATE", str(tiny_model.path))
    fake = Fake(props={"chat_template": LLAMACPP_CHATML})
    remote = engine(serve(fake))
    assert remote.chat_template == CHAT_TEMPLATE
    expected = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert prompting.render(remote, MESSAGES).prompt == expected == RENDERED
    assert "/props" not in routes(fake)  # the user's choice is not second-guessed


@pytest.mark.parametrize("adds_bos", [True, False])
def test_explicit_folder_with_template_in_tokenizer_config(
    serve: Any, tiny_model: TinyModel, tmp_path: Path, adds_bos: bool
) -> None:
    folder = tmp_path / "tok"
    folder.mkdir()
    config = json.loads((tiny_model.path / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": TEMPLATE}))
    remote = engine(serve(Fake(tokenize="llamacpp", adds_bos=adds_bos)), chat_template=str(folder))
    assert prompting.render(remote, MESSAGES).prompt == (RENDERED if adds_bos else "<s>" + RENDERED)


def test_none_turns_discovery_off(serve: Any) -> None:
    fake = Fake(props={"chat_template": TEMPLATE, "bos_token": "<s>"}, tokenize="vllm")
    remote = engine(serve(fake), chat_template="none")
    assert remote.chat_template is None and routes(fake) == []
    assert prompting.render(remote, MESSAGES).token_healing


def test_explicit_template_errors(serve: Any, tmp_path: Path) -> None:
    url = serve(Fake())
    with pytest.raises(HelixloomError, match="no such file or folder"):
        engine(url, chat_template=str(tmp_path / "missing.jinja"))
    with pytest.raises(HelixloomError, match="has no chat template"):
        engine(url, chat_template=str(tmp_path))
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}")
    with pytest.raises(HelixloomError, match="does not render"):
        engine(url, chat_template=str(broken))


# ---------------------------------------------------------------------- misbehaving servers


def test_hanging_props_costs_at_most_the_discovery_budget(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote_module, "DISCOVERY_SECONDS", 0.5)
    url = serve(Fake(props="hang", tokenize="vllm"))
    started = time.monotonic()
    remote = engine(url)
    assert time.monotonic() - started < 2.0
    assert remote.chat_template is None  # vLLM's routes were not asked once the budget was spent


@pytest.mark.parametrize(
    "props", ["garbage", {"chat_template": 42}, {"chat_template": "{% for m in messages %}"}, ["a", "list"]]
)
def test_bad_props_fall_back(serve: Any, props: Any) -> None:
    remote = engine(serve(Fake(props=props, tokenize="llamacpp")))
    assert remote.chat_template is None
    assert prompting.render(remote, MESSAGES) == prompting.render_with(None, MESSAGES)


def test_text_held_back_for_a_stop_is_streamed_when_the_server_ends(serve: Any) -> None:
    """Found in review (the llama.cpp batch had the same bug): text held back because it may begin a
    stop sequence was dropped from the stream when the server then ended with finish_reason "stop"
    (its EOS); the result had it. The fake streams the prompt back as the answer."""
    remote = engine(serve(Fake()))
    request = GenerationRequest("Hello wor", sampling(temperature=0, max_tokens=4, stop=["world"]))
    events = list(remote.stream(request))
    result = events[-1]
    assert isinstance(result, GenerationResult) and result.text == "Hello wor"
    assert "".join(e.text for e in events if isinstance(e, StreamDelta)) == "Hello wor"
