"""The engine contract, run on every backend: hf in-process, and remote against a real server.

The remote engine talks to helixloom's own server over loopback (the server runs the same tiny
model), so greedy outputs must match the local engine's exactly.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helixloom.engine import Constraint, Engine, GenerationRequest, GenerationResult, StreamDelta, sampling
from helixloom.engine.hf import HFEngine
from helixloom.engine.remote import RemoteEngine
from helixloom.errors import AdapterError, HelixloomError, ModelNotFound
from helixloom.server import BackgroundServer, ServerConfig, ServerState
from helixloom.store import Store
from tests.conftest import TinyModel, serving

PROMPTS = ["The quick brown fox", "Paris is the capital of", "def add(a, b):"]


@pytest.fixture(scope="module")
def local(tiny_adapted_engine: HFEngine) -> HFEngine:
    """The in-process engine, with alpha and beta (and gamma) loaded."""
    return tiny_adapted_engine


@pytest.fixture(scope="module")
def server(
    tiny_model: TinyModel, local: HFEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackgroundServer]:
    """The server runs the local engine (the weights are the same either way): what the remote engine
    must reproduce is what crosses the wire."""
    config = ServerConfig(
        model=str(tiny_model.path), adapters={n: str(tiny_model.adapters[n]) for n in ("alpha", "beta")}
    )
    with serving(ServerState(config, local, Store(tmp_path_factory.mktemp("srv") / "db"))) as running:
        yield running


@pytest.fixture(scope="module")
def remote(server: BackgroundServer, tiny_model: TinyModel) -> RemoteEngine:
    engine = RemoteEngine(f"openai:{server.url}/v1#{tiny_model.path}")
    for name in ("alpha", "beta"):
        engine.load_adapter(name, "served")
    return engine


@dataclass(frozen=True)
class Backend:
    engine: Engine
    reference: Engine  # whose greedy output this backend must reproduce exactly
    adapters: tuple[str, str]  # two adapters this engine has loaded


@pytest.fixture(scope="module")
def llamacpp(gemma_loras: dict[str, Path], default_model_home: Path) -> Iterator[Engine]:
    if os.environ.get("HELIXLOOM_REQUIRE_LLAMACPP") != "1":
        pytest.importorskip("llama_cpp")
    from helixloom.engine.llamacpp import LlamaCppEngine
    from helixloom.models import default_gguf

    old = os.environ.get("HELIXLOOM_HOME")
    os.environ["HELIXLOOM_HOME"] = str(default_model_home)
    try:
        engine = LlamaCppEngine(f"llamacpp:{default_gguf()}")
    finally:
        if old is not None:
            os.environ["HELIXLOOM_HOME"] = old
    for name, folder in gemma_loras.items():
        engine.load_adapter(name, str(folder))
    yield engine
    engine.close()


@pytest.fixture(params=["hf", "remote", pytest.param("llamacpp", marks=pytest.mark.default_model)])
def backend(request: pytest.FixtureRequest, local: HFEngine) -> Backend:
    if request.param == "hf":
        return Backend(local, local, ("alpha", "beta"))
    if request.param == "remote":
        return Backend(request.getfixturevalue("remote"), local, ("alpha", "beta"))
    engine = request.getfixturevalue("llamacpp")
    return Backend(engine, engine, ("rand", "rand2"))


def greedy(prompt: str, adapter: str | None = None, **kw: object) -> GenerationRequest:
    return GenerationRequest(prompt, sampling(**{"temperature": 0, "max_tokens": 10, **kw}), adapter)


def test_greedy_batch_equals_single_and_reference(backend: Backend) -> None:
    engine = backend.engine
    batch = engine.generate([greedy(p) for p in PROMPTS])
    for prompt, result in zip(PROMPTS, batch, strict=True):
        assert result.text == engine.generate([greedy(prompt)])[0].text
        expected = backend.reference.generate([greedy(prompt)])[0]
        assert result.text == expected.text
        assert result.usage == expected.usage


def test_seed_reproduces(backend: Backend) -> None:
    req = GenerationRequest(PROMPTS[0], sampling(temperature=1.0, max_tokens=12, seed=11))
    assert backend.engine.generate([req])[0].text == backend.engine.generate([req])[0].text


def test_stop_sequences(backend: Backend) -> None:
    engine = backend.engine
    full = engine.generate([greedy(PROMPTS[1], max_tokens=20, ignore_eos=True)])[0]
    stop = full.text[len(full.text) // 2 :][:3]
    cut = engine.generate([greedy(PROMPTS[1], max_tokens=20, ignore_eos=True, stop=[stop])])[0]
    assert cut.text == full.text[: full.text.index(stop)] and cut.finish_reason == "stop"


def test_stream_joins_to_text(backend: Backend) -> None:
    events = list(backend.engine.stream(greedy(PROMPTS[2], max_tokens=12)))
    assert isinstance(events[-1], GenerationResult)
    assert "".join(e.text for e in events if isinstance(e, StreamDelta)) == events[-1].text


def test_mixed_adapters_in_one_batch(backend: Backend) -> None:
    first, second = backend.adapters
    plan = [(PROMPTS[0], first), (PROMPTS[0], None), (PROMPTS[0], second)]
    batch = backend.engine.generate([greedy(p, a) for p, a in plan])
    for (prompt, adapter), result in zip(plan, batch, strict=True):
        assert result.text == backend.reference.generate([greedy(prompt, adapter)])[0].text
    assert len({r.text for r in batch}) == 3


@pytest.mark.parametrize("name", ["hf", pytest.param("llamacpp", marks=pytest.mark.default_model)])
def test_a_lone_surrogate_is_refused_by_the_local_backends(name: str, request: pytest.FixtureRequest) -> None:
    # JSON's "\ud800" is a str Python cannot encode: a clear refusal, not UnicodeEncodeError (a 500
    # over HTTP; the remote engine sends text to a server, whose own engine refuses it)
    engine: Engine = request.getfixturevalue("local" if name == "hf" else "llamacpp")
    for call in (
        lambda: engine.tokenize("a \ud800"),
        lambda: engine.count_tokens("a \ud800"),
        lambda: engine.next_token_logprobs(["a \ud800"]),
    ):
        with pytest.raises(HelixloomError, match="surrogate"):
            call()


def test_scoring_in_small_passes_gives_the_same_numbers(
    local: HFEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a weave round scores nodes x questions; the hf engine splits them into passes of bounded size
    from helixloom.engine.hf import engine as hf_engine

    prompts = [*PROMPTS, PROMPTS[0] + " jumps over the lazy dog and runs"]
    whole = local.next_token_logprobs(prompts, top_k=3)
    monkeypatch.setattr(hf_engine, "SCORE_PASS_TOKENS", 8)  # a pass per prompt or two
    split = local.next_token_logprobs(prompts, top_k=3)
    for a, b in zip(whole, split, strict=True):
        assert [t.token for t in a.top] == [t.token for t in b.top] and a.prompt_tokens == b.prompt_tokens
        for x, y in zip(a.top, b.top, strict=True):
            assert math.isclose(x.logprob, y.logprob, abs_tol=1e-4)


def test_next_token_logprobs(backend: Backend) -> None:
    [res] = backend.engine.next_token_logprobs([PROMPTS[1]], top_k=5)
    [ref] = backend.reference.next_token_logprobs([PROMPTS[1]], top_k=5)
    assert [t.token for t in res.top] == [t.token for t in ref.top]
    values = [t.logprob for t in res.top]
    assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
    for a, b in zip(res.top, ref.top, strict=True):
        assert math.isclose(a.logprob, b.logprob, abs_tol=1e-4)
    top_token = ref.top[0].token
    [with_cand] = backend.engine.next_token_logprobs([PROMPTS[1]], top_k=5, candidates=[top_token])
    assert with_cand.candidates[top_token] is not None
    # Greedy's first token is the distribution's top token.
    first = backend.engine.generate([greedy(PROMPTS[1], max_tokens=1)])[0]
    assert first.text.startswith(top_token.strip()) or top_token.startswith(first.text)


def test_json_schema_constraint(backend: Backend) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    result = backend.engine.generate(
        [
            GenerationRequest(
                "JSON:", sampling(temperature=0, max_tokens=20), None, Constraint.json_schema(schema)
            )
        ]
    )[0]
    assert json.loads(result.text)["ok"] in (True, False)


def test_unknown_adapter(backend: Backend) -> None:
    with pytest.raises((AdapterError, ModelNotFound, HelixloomError)):
        backend.engine.generate([greedy(PROMPTS[0], "nonexistent")])


def test_remote_errors(server: BackgroundServer, tiny_model: TinyModel) -> None:
    with pytest.raises(ModelNotFound, match="does not serve"):
        RemoteEngine(f"openai:{server.url}/v1#no-such-model")
    with pytest.raises(HelixloomError, match="cannot reach"):
        RemoteEngine("openai:http://127.0.0.1:9/v1", max_retries=0)
    remote = RemoteEngine(f"openai:{server.url}")  # the first served model, /v1 added
    assert remote.model == str(tiny_model.path)
    with pytest.raises(AdapterError, match="does not serve an adapter"):
        remote.load_adapter("gamma", "/x")
    with pytest.raises(ModelNotFound, match="http"):
        RemoteEngine("openai:ftp://nowhere")


def test_remote_gets_the_served_chat_template(
    remote: RemoteEngine, local: HFEngine, server: BackgroundServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """helixloom's server answers vLLM's /tokenize and /detokenize, so the remote engine renders chat
    messages with the served model's template, as the local engine does; with the template turned off
    (``none``, for a base model) chat keeps the transcript format."""
    from helixloom import prompting
    from helixloom.engine.remote_chat import SERVER_TEMPLATE

    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Paris is"}]
    assert remote.chat_template == SERVER_TEMPLATE
    assert prompting.render(remote, messages) == prompting.render(local, messages)
    monkeypatch.setenv("HELIXLOOM_REMOTE_CHAT_TEMPLATE", "none")
    plain = RemoteEngine(remote.model_name)
    assert plain.chat_template is None
    assert prompting.render(plain, messages) == prompting.render_with(None, messages)


def test_helixnet_runs_on_the_remote_engine(remote: RemoteEngine, local: HFEngine) -> None:
    from helixloom.helixnet import HelixNet, Role

    params = sampling(temperature=0, max_tokens=6)
    outputs = []
    for engine in (remote, local):
        role = Role(engine, None, params)
        outputs.append(HelixNet(role, Role(engine, "alpha", params), role, system="S").answer("Paris is"))
    assert [s.text for s in outputs[0].stages] == [s.text for s in outputs[1].stages]


def test_remote_spec_through_the_cli(
    capsys: pytest.CaptureFixture[str],
    server: BackgroundServer,
    tiny_engine: HFEngine,
    tiny_model: TinyModel,
    helixloom_home: Path,
) -> None:
    from helixloom.cli import main

    spec = f"openai:{server.url}/v1#{tiny_model.path}"
    code = main(
        ["generate", "Paris is", "--model", spec, "--temperature", "0", "--max-tokens", "6", "--json"]
    )
    body = json.loads(capsys.readouterr().out)
    assert code == 0 and body["text"] == tiny_engine.generate([greedy("Paris is", max_tokens=6)])[0].text


def test_remote_helixnet_chat_with_served_adapter_names(
    capsys: pytest.CaptureFixture[str], server: BackgroundServer, tiny_model: TinyModel, helixloom_home: Path
) -> None:
    """LMoE over a remote server: adapters are the names the server serves, as with vLLM's --lora-modules."""
    from helixloom.cli import main

    spec = f"openai:{server.url}/v1#{tiny_model.path}"
    roles = ["--critic-adapter", "alpha", "--regenerator-adapter", "beta"]
    code = main(
        [
            "chat",
            "--base",
            spec,
            *roles,
            "--once",
            "Paris is",
            "--json",
            "--max-tokens",
            "5",
            "--temperature",
            "0",
        ]
    )
    body = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [s["adapter"] for s in body["stages"]] == [None, "alpha", "beta"]
    assert main(["chat", "--base", spec, "--critic-adapter", "gamma", "--once", "q"]) == 2
    assert "does not serve an adapter" in capsys.readouterr().err


# ---------------------------------------------------------------------- model specs (one parser)


def test_every_spec_kind_parses_in_one_place(tmp_path: Path, tiny_model: TinyModel) -> None:
    from helixloom import models

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert models.resolve("default") == models.ModelSource("default", "default", "default", "gemma-3-270m")
    assert models.resolve(str(tiny_model.path)).kind == "hf_dir"
    assert models.resolve(str(gguf)) == models.ModelSource(str(gguf), "gguf", str(gguf.resolve()), "m")
    assert models.resolve("org/name") == models.ModelSource("org/name", "hub", "org/name", "org/name")
    assert models.resolve("llamacpp:default").kind == "llamacpp"
    assert models.resolve(f"llamacpp:{gguf}").location == str(gguf.resolve())
    assert models.resolve("openai:http://box:8000#m") == models.ModelSource(
        "openai:http://box:8000#m", "remote", "http://box:8000/v1", "m", "m"
    )
    first = models.resolve("openai:https://box/v1/")
    assert (first.location, first.served_model) == ("https://box/v1", None)
    assert models.is_remote(" openai:http://box") and not models.is_remote("org/name")
    with pytest.raises(ModelNotFound, match="needs an http"):
        models.resolve("openai:box:8000")
    with pytest.raises(ModelNotFound, match=r"no such \.gguf file"):
        models.resolve(f"llamacpp:{tmp_path / 'missing.gguf'}")
    with pytest.raises(ModelNotFound, match="unknown model spec"):
        models.resolve("not a spec")
    with pytest.raises(ModelNotFound, match="not a remote spec"):
        RemoteEngine("default")


def test_a_remote_engine_imports_no_torch() -> None:
    """Parsing a remote spec and importing the remote engine (what the CLI and the server do for
    ``openai:URL``) loads neither torch, transformers nor trl."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import helixloom.engine, helixloom.engine.remote, helixloom.engine.batching, helixloom.models\n"
        "helixloom.models.resolve('openai:http://127.0.0.1:9/v1#m')\n"
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------- capabilities


def test_batching_engine_forwards_every_capability() -> None:
    from helixloom.engine.batching import BatchingEngine

    declared = {n for n in vars(Engine) if n.startswith("supports_")} | {
        n for n in Engine.__annotations__ if n.startswith("supports_")
    }
    assert declared == set(Engine.CAPABILITIES)  # a new capability must be listed to be forwarded

    class Everything(Engine):  # every capability on, unlike the base's defaults
        backend = "everything"
        model_name = "everything"
        chat_template = "{{ messages }}"
        max_model_len = 123

        def stream_batch(self, requests: object, *, abort: object = None) -> Iterator[Any]:
            raise NotImplementedError

        def next_token_logprobs(self, prompts: object, **kw: object) -> list[Any]:
            raise NotImplementedError

        def load_adapter(self, name: str, path: str) -> Any:
            raise NotImplementedError

        def adapters(self) -> list[Any]:
            return []

        def count_tokens(self, text: str) -> int:
            return 0

    inner = Everything()
    for name in Engine.CAPABILITIES:
        setattr(inner, name, True)
    wrapped = BatchingEngine(inner)
    try:
        for name in (*Engine.CAPABILITIES, *Engine.DESCRIPTION):
            assert getattr(wrapped, name) == getattr(inner, name), name
        assert all(getattr(wrapped, name) is True for name in Engine.CAPABILITIES)
    finally:
        wrapped.close()


def test_a_chat_template_that_refuses_the_messages_is_a_clear_error(tiny_model: TinyModel) -> None:
    # Gemma's and Llama 2's templates raise on two user turns in a row; that is the request's fault (a
    # 400 over HTTP), not the server's (jinja2's TemplateError was a 500)
    from transformers import AutoTokenizer

    from helixloom.engine.base import apply_chat_template
    from helixloom.engine.remote_chat import LocalTemplate

    template = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    tokenizer.chat_template = template
    twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(HelixloomError, match="roles must alternate") as refused:
        apply_chat_template(tokenizer, twice)
    assert refused.value.param == "messages"
    assert apply_chat_template(tokenizer, twice[:1], add_generation_prompt=False) == "a"
    with pytest.raises(HelixloomError, match="roles must alternate"):
        LocalTemplate(template, {}, "").render(twice)
