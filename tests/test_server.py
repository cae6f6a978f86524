"""The server as a server: uvicorn on a loopback port, driven by the official ``openai`` client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from helixloom.engine import GenerationRequest, sampling
from helixloom.engine.hf import HFEngine
from helixloom.server import ServerConfig, ServerState
from helixloom.store import Store
from tests.conftest import TinyModel, serving


@dataclass
class Running:
    url: str
    state: ServerState
    engine: HFEngine
    db: Path

    def client(self, **kw: object) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.url + "/v1", api_key=str(kw.pop("api_key", "none")), max_retries=0, **kw
        )  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def served(
    tiny_model: TinyModel, tiny_adapted_engine: HFEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    db = tmp_path_factory.mktemp("server") / "helixloom.db"
    store = Store(db)
    store.add_adapter("alpha", str(tiny_model.adapters["alpha"]))
    config = ServerConfig(
        model=str(tiny_model.path),
        adapters={"beta": str(tiny_model.adapters["beta"])},
        default_max_tokens=16,
        helixnet_adapters={"critic": "alpha"},
    )
    state = ServerState(config, tiny_adapted_engine, store)
    with serving(state) as server:
        yield Running(server.url, state, tiny_adapted_engine, db)


def greedy_text(engine: HFEngine, prompt: str, adapter: str | None = None, **kw: object) -> str:
    params = sampling(**{"temperature": 0, "max_tokens": 8, **kw})
    return engine.generate([GenerationRequest(prompt, params, adapter)])[0].text


def test_models_list(served: Running) -> None:
    models = {m.id: m for m in served.client().models.list().data}
    base = served.state.base_id
    assert set(models) == {base, "alpha", "beta", "helixnet", "weave"}
    assert models["alpha"].model_extra and models["alpha"].model_extra["parent"] == base


def test_chat_stream_equals_non_stream_and_is_recorded(served: Running) -> None:
    client = served.client()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Paris is the capital of"},
    ]
    raw = client.chat.completions.with_raw_response.create(
        model=served.state.base_id,
        messages=messages,
        temperature=0,
        max_tokens=10,  # type: ignore[arg-type]
    )
    reply = raw.parse()
    session_id = raw.headers["x-helixloom-session"]
    text = reply.choices[0].message.content
    assert text and reply.choices[0].finish_reason in ("stop", "length")
    prompt = served.engine.format_chat(messages)
    assert reply.usage is not None and reply.usage.prompt_tokens == len(served.engine.encode(prompt))
    assert reply.usage.completion_tokens <= 10
    stream = client.chat.completions.create(
        model=served.state.base_id,
        messages=messages,
        temperature=0,
        max_tokens=10,
        stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].usage == reply.usage
    with Store(served.db) as store:
        stored = store.get_messages(session_id)
        assert [m.role for m in stored] == ["system", "user", "assistant"]
        assert stored[-1].content == text and stored[-1].completion_tokens == reply.usage.completion_tokens


def test_n_seed_stop_and_logprobs(served: Running) -> None:
    client = served.client()
    base = served.state.base_id
    msgs = [{"role": "user", "content": "The quick brown fox"}]
    two = client.chat.completions.create(model=base, messages=msgs, n=2, seed=3, max_tokens=8)  # type: ignore[arg-type]
    again = client.chat.completions.create(model=base, messages=msgs, n=2, seed=3, max_tokens=8)  # type: ignore[arg-type]
    assert len(two.choices) == 2
    assert [c.message.content for c in two.choices] == [c.message.content for c in again.choices]
    full = client.chat.completions.create(model=base, messages=msgs, temperature=0, max_tokens=12)  # type: ignore[arg-type]
    text = full.choices[0].message.content or ""
    stop = text[len(text) // 2 :][:2]
    cut = client.chat.completions.create(model=base, messages=msgs, temperature=0, max_tokens=12, stop=[stop])  # type: ignore[arg-type]
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    lp = client.chat.completions.create(
        model=base,
        messages=msgs,
        temperature=0,
        max_tokens=4,
        logprobs=True,
        top_logprobs=3,  # type: ignore[arg-type]
    )
    content = lp.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == lp.usage.completion_tokens  # type: ignore[union-attr]
    for step in content:
        assert len(step.top_logprobs) == 3 and step.logprob <= 0
        assert step.top_logprobs[0].logprob >= step.logprob - 1e-6  # greedy picks the top token


def test_completions(served: Running) -> None:
    client = served.client()
    base = served.state.base_id
    prompts = ["The quick brown fox", "Paris is"]
    out = client.completions.create(model=base, prompt=prompts, temperature=0, max_tokens=6, logprobs=2)
    assert [c.text for c in out.choices] == [greedy_text(served.engine, p, max_tokens=6) for p in prompts]
    assert out.choices[0].logprobs is not None and len(out.choices[0].logprobs.top_logprobs or []) <= 6
    echo = client.completions.create(model=base, prompt="Paris is", temperature=0, max_tokens=6, echo=True)
    assert echo.choices[0].text == "Paris is" + out.choices[1].text
    streamed = client.completions.create(
        model=base, prompt="Paris is", temperature=0, max_tokens=6, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == out.choices[1].text


def test_echo_with_logprobs_scores_the_prompt(served: Running) -> None:
    """What evaluation harnesses send for log-likelihoods: echo, logprobs, max_tokens 0 or 1."""
    client = served.client()
    base = served.state.base_id
    prompt = "The quick brown fox jumps"
    scored = served.engine.prompt_logprobs([prompt], top_k=2)[0]
    only = client.completions.create(model=base, prompt=prompt, echo=True, logprobs=2, max_tokens=0)
    choice = only.choices[0]
    assert choice.text == prompt and only.usage is not None and only.usage.completion_tokens == 0
    lp = choice.logprobs
    assert lp is not None and lp.tokens == list(scored.tokens) and "".join(lp.tokens) == prompt
    assert lp.token_logprobs == list(scored.logprobs)
    offsets = lp.text_offset or []
    assert all(prompt[o : o + len(t)] == t for t, o in zip(lp.tokens, offsets, strict=True))
    assert offsets == sorted(offsets) and len(offsets) == len(lp.tokens)
    assert all(top is None or len(top) == 2 for top in lp.top_logprobs or [])
    # With generation: the prompt's logprobs, then the completion's, offsets running on.
    more = client.completions.create(
        model=base, prompt=[prompt, "Paris is"], echo=True, logprobs=1, max_tokens=3, temperature=0
    )
    first = more.choices[0]
    made = client.completions.create(model=base, prompt=prompt, logprobs=1, max_tokens=3, temperature=0)
    assert first.text == prompt + made.choices[0].text
    assert first.logprobs is not None and made.choices[0].logprobs is not None
    assert first.logprobs.tokens == lp.tokens + (made.choices[0].logprobs.tokens or [])
    assert (first.logprobs.text_offset or [])[len(lp.tokens)] == len(prompt)
    assert "".join(more.choices[1].logprobs.tokens or []).startswith("Paris is")  # type: ignore[union-attr]
    # An adapter scores with its own weights.
    alpha = client.completions.create(model="alpha", prompt=prompt, echo=True, logprobs=0, max_tokens=0)
    assert alpha.choices[0].logprobs is not None
    assert alpha.choices[0].logprobs.token_logprobs != lp.token_logprobs
    for bad, words in [
        ({"max_tokens": 0}, "only with echo"),
        ({"echo": True, "logprobs": 1, "stream": True}, "not streamed"),
    ]:
        with pytest.raises(openai.BadRequestError, match=words):
            client.completions.create(model=base, prompt=prompt, **bad)  # type: ignore[call-overload]


def test_adapter_by_model_name(served: Running) -> None:
    client = served.client()
    for name in ("alpha", "beta"):
        reply = client.completions.create(
            model=name, prompt="The quick brown fox", temperature=0, max_tokens=8
        )
        assert reply.choices[0].text == greedy_text(served.engine, "The quick brown fox", adapter=name)
    assert greedy_text(served.engine, "The quick brown fox", "alpha") != greedy_text(
        served.engine, "The quick brown fox"
    )


def test_tokenize_and_detokenize_as_vllm(served: Running) -> None:
    """vLLM's /tokenize and /detokenize at the server root, with the served tokenizer."""
    tok = served.engine.tokenizer
    base = served.state.base_id
    text = "The quick brown fox"
    reply = httpx.post(served.url + "/tokenize", json={"model": base, "prompt": text})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["tokens"] == tok(text).input_ids and body["tokens"][0] == tok.bos_token_id
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 512
    plain = httpx.post(
        served.url + "/tokenize", json={"model": base, "prompt": text, "add_special_tokens": False}
    ).json()
    assert plain["tokens"] == body["tokens"][1:] and plain["count"] == served.engine.count_tokens(text)
    back = httpx.post(served.url + "/detokenize", json={"model": base, "tokens": body["tokens"]}).json()
    assert back == {"prompt": "<s>" + text}  # special tokens are written out, as vLLM does
    # Messages get the model's chat template, without a BOS unless asked (vLLM's defaults).
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Paris is"}]
    chat = httpx.post(served.url + "/tokenize", json={"model": base, "messages": messages}).json()
    rendered = served.engine.format_chat(messages)
    assert chat["tokens"] == tok(rendered, add_special_tokens=False).input_ids
    back = httpx.post(served.url + "/detokenize", json={"model": base, "tokens": chat["tokens"]}).json()
    assert back["prompt"] == rendered and rendered.endswith("<|assistant|>\n")
    closed_turn = {"add_generation_prompt": False, "add_special_tokens": True}
    closed = httpx.post(
        served.url + "/tokenize", json={"model": base, "messages": messages, **closed_turn}
    ).json()
    text_closed = tok.decode(closed["tokens"])
    assert text_closed == "<s>" + served.engine.format_chat(messages, add_generation_prompt=False)
    assert not text_closed.endswith("<|assistant|>\n")
    # An adapter shares the base tokenizer; no model means the base model.
    for model in ("alpha", "beta", None):
        same = httpx.post(served.url + "/tokenize", json={"model": model, "prompt": text}).json()
        assert same["tokens"] == body["tokens"], model
    assert httpx.post(served.url + "/detokenize", json={"model": "alpha", "tokens": [5]}).status_code == 200


def test_tokenize_errors(served: Running) -> None:
    base = served.state.base_id
    vocab = len(served.engine.tokenizer)
    prompt = {"model": base, "prompt": "x"}
    chat = {"model": base, "messages": [{"role": "user", "content": "x"}]}
    for path, payload, status, param in [
        ("/tokenize", {"model": "nope", "prompt": "x"}, 404, "model"),
        ("/detokenize", {"model": "nope", "tokens": [1]}, 404, "model"),
        ("/tokenize", {"model": "helixnet", "prompt": "x"}, 400, "model"),
        ("/tokenize", {"model": base}, 400, "prompt"),
        ("/tokenize", {"content": "x"}, 400, "prompt"),  # llama.cpp's shape
        ("/tokenize", {**prompt, **chat}, 400, "prompt"),
        ("/tokenize", {"model": base, "messages": []}, 400, "messages"),
        ("/tokenize", {**prompt, "add_generation_prompt": True}, 400, "add_generation_prompt"),
        ("/tokenize", {**prompt, "return_token_strs": True}, 400, "return_token_strs"),
        ("/tokenize", {**chat, "tools": [{}]}, 400, "tools"),
        ("/detokenize", {"model": base, "tokens": [vocab]}, 400, "tokens"),
        ("/detokenize", {"model": base, "tokens": [-1]}, 400, "tokens"),
        ("/detokenize", {"model": base, "tokens": ["a"]}, 400, "tokens"),
    ]:
        reply = httpx.post(served.url + path, json=payload)
        assert reply.status_code == status, (path, payload, reply.text)
        assert reply.json()["error"]["param"] == param, (path, payload, reply.text)
        if payload.get("tokens") == [vocab]:
            assert "outside the vocabulary" in reply.json()["error"]["message"]


def test_tokenize_messages_without_a_chat_template(served: Running) -> None:
    engine = served.state.engine
    template, engine.chat_template = engine.chat_template, None
    try:
        reply = httpx.post(
            served.url + "/tokenize",
            json={"model": served.state.base_id, "messages": [{"role": "user", "content": "x"}]},
        )
    finally:
        engine.chat_template = template
    assert reply.status_code == 400 and "has no chat template" in reply.json()["error"]["message"]
    assert reply.json()["error"]["param"] == "messages"


def test_tokenize_needs_an_engine_that_can(served: Running) -> None:
    engine = served.state.engine
    engine.supports_tokenize = False
    try:
        for path, payload in [("/tokenize", {"prompt": "x"}), ("/detokenize", {"tokens": [1]})]:
            reply = httpx.post(served.url + path, json=payload)
            assert reply.status_code == 400 and "cannot tokenize" in reply.json()["error"]["message"]
    finally:
        engine.supports_tokenize = True


def test_remote_engine_on_a_helixloom_server(served: Running) -> None:
    """A remote engine finds the served model's chat template through /tokenize + /detokenize (as with
    vLLM), renders chat as the local engine does, and counts tokens with the served tokenizer."""
    from helixloom import prompting
    from helixloom.engine.remote import RemoteEngine
    from helixloom.engine.remote_chat import SERVER_TEMPLATE

    remote = RemoteEngine(f"openai:{served.url}/v1#{served.state.base_id}", max_retries=0)
    try:
        assert remote.chat_template == SERVER_TEMPLATE
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Café, 東京?"}]
        assert prompting.render(remote, messages).prompt == prompting.render(served.engine, messages).prompt
        for text in ("The quick brown fox", "Café, naïve, 東京", "<|user|> hi </s>", ""):
            assert remote.count_tokens(text) == served.engine.count_tokens(text), text
    finally:
        remote.close()


def test_helixnet_model(served: Running) -> None:
    client = served.client()
    raw = client.chat.completions.with_raw_response.create(
        model="helixnet",
        messages=[{"role": "user", "content": "Paris is"}],
        temperature=0,
        max_tokens=6,  # type: ignore[arg-type]
    )
    reply = raw.parse()
    extra = reply.model_extra["helixnet"]  # type: ignore[index]
    assert set(extra) >= {"actor", "critique", "rounds"}
    assert reply.choices[0].message.content == extra["rounds"][-1]["regeneration"]
    with Store(served.db) as store:
        stages = [(m.stage, m.adapter) for m in store.get_messages(raw.headers["x-helixloom-session"])]
    assert stages == [(None, None), ("actor", None), ("critic", "alpha"), ("regenerator", None)]
    stream = client.chat.completions.create(
        model="helixnet",
        messages=[{"role": "user", "content": "Paris is"}],
        temperature=0,
        max_tokens=6,
        stream=True,  # type: ignore[arg-type]
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content", "") for c in chunks if c.choices
    )
    stages = {
        c.model_extra["helixnet_stage"] for c in chunks if c.model_extra and "helixnet_stage" in c.model_extra
    }  # type: ignore[index]
    assert content.strip() == reply.choices[0].message.content
    assert extra["actor"] in reasoning
    assert stages == {"actor", "critic", "regenerator"}


def test_helixnet_gate_request_field(served: Running) -> None:
    """``gate: true`` in the body: the answer is whichever the evaluator scored higher, and the
    ``helixnet`` field says which and why; a gate that is not a bool is the request's error."""
    client = served.client()
    msgs = [{"role": "user", "content": "Paris is"}]
    reply = client.chat.completions.create(
        model="helixnet", messages=msgs, temperature=0, max_tokens=6, extra_body={"gate": True}
    )  # type: ignore[arg-type]
    info = reply.model_extra["helixnet"]  # type: ignore[index]
    gate = info["gate"]
    assert gate == info["rounds"][-1]["gate"] and isinstance(info["repairs"], list)
    kept = gate["regeneration"] if gate["regeneration_score"] > gate["previous_score"] else info["actor"]
    assert gate["kept"] == ("regeneration" if kept == gate["regeneration"] else "previous")
    assert reply.choices[0].message.content == kept
    plain = client.chat.completions.create(model="helixnet", messages=msgs, temperature=0, max_tokens=6)  # type: ignore[arg-type]
    assert plain.model_extra["helixnet"]["gate"] is None  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="helixnet", messages=msgs, max_tokens=6, extra_body={"gate": "yes"}
        )  # type: ignore[arg-type]
    assert bad.value.body["param"] == "gate"  # type: ignore[index]


def test_errors_have_openai_shape(served: Running) -> None:
    client = served.client()
    base = served.state.base_id
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nope", messages=msgs)  # type: ignore[arg-type]
    assert nf.value.code == "model_not_found"
    for kwargs, param in [
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"stop": [str(i) for i in range(17)]}, "stop"),
    ]:
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model=base, messages=msgs, **kwargs)  # type: ignore[call-overload]
        assert bad.value.param == param, kwargs
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=base, messages=[])
    # Unknown fields are ignored, not fatal.
    ok = client.chat.completions.create(model=base, messages=msgs, max_tokens=2, extra_body={"frobnicate": 1})  # type: ignore[arg-type]
    assert ok.choices
    huge = httpx.post(
        served.url + "/v1/chat/completions",
        content=b"x" * (5 * 1024 * 1024),
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    missing = httpx.get(served.url + "/api/sessions/nonexistent")
    assert missing.status_code == 404 and "error" in missing.json()


def test_concurrent_requests_batched_and_all_stored(served: Running) -> None:
    client = served.client()
    base = served.state.base_id
    before = served.state.engine.batches_run
    with Store(served.db) as store:
        count_before = len(store.list_sessions(limit=10_000))

    models = [(base, "alpha", "beta")[i % 3] for i in range(16)]
    adapters = [None if m == base else m for m in models]

    def ask(i: int) -> tuple[str, str]:
        raw = client.completions.with_raw_response.create(
            model=models[i], prompt=f"Number {i} is", max_tokens=8, temperature=1.0, seed=i
        )
        return raw.parse().choices[0].text, raw.headers["x-helixloom-session"]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16)))
    assert served.state.engine.batches_run - before < 16  # requests shared batches
    assert served.state.engine.largest_batch > 1
    # Each answer is its own request's: its prompt, adapter and seed run alone give the same text
    # (a row of a batch equals its solo run), and the session stored for it holds that exchange.
    alone = served.engine.generate(
        [
            GenerationRequest(f"Number {i} is", sampling(max_tokens=8, temperature=1.0, seed=i), adapters[i])
            for i in range(16)
        ]
    )
    assert [text for text, _ in answers] == [r.text for r in alone]
    assert len({text for text, _ in answers}) > 8  # seeds and adapters tell the answers apart
    with Store(served.db) as store:
        assert len(store.list_sessions(limit=10_000)) == count_before + 16
        for i, (text, session_id) in enumerate(answers):
            session = store.get_session(session_id)
            assert session is not None and session.meta and session.meta["model"] == models[i]
            stored = [(m.role, m.content, m.adapter) for m in store.get_messages(session_id)]
            assert stored == [("user", f"Number {i} is", None), ("assistant", text, adapters[i])]


def test_feedback_round_trip(served: Running) -> None:
    client = served.client()
    raw = client.chat.completions.with_raw_response.create(
        model=served.state.base_id,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=3,  # type: ignore[arg-type]
    )
    sid = raw.headers["x-helixloom-session"]
    r = httpx.post(f"{served.url}/api/sessions/{sid}/feedback", json={"score": "up", "reason": "nice"})
    assert r.status_code == 200 and r.json()["score"] == 1
    up = httpx.get(f"{served.url}/api/sessions", params={"rating": "up"}).json()["data"]
    assert sid in {s["id"] for s in up}
    detail = httpx.get(f"{served.url}/api/sessions/{sid}").json()
    assert detail["ratings"][0]["reason"] == "nice" and detail["messages"][-1]["role"] == "assistant"
    bad = httpx.post(f"{served.url}/api/sessions/{sid}/feedback", json={"score": "meh"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "score"


def test_disconnecting_client_frees_its_slot(served: Running) -> None:
    before = served.state.engine.aborted_rows
    with httpx.stream(
        "POST",
        served.url + "/v1/completions",
        json={
            "model": served.state.base_id,
            "prompt": "Once",
            "max_tokens": 400,
            "stream": True,
            "ignore_eos": True,
        },
    ) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
    deadline = time.time() + 20
    while served.state.engine.aborted_rows == before:
        assert time.time() < deadline, "the abandoned stream kept generating"
        time.sleep(0.05)


def test_api_key_enforced_everywhere(tiny_model: TinyModel, tiny_engine: HFEngine, tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    state = ServerState(
        ServerConfig(model=str(tiny_model.path), api_keys={"s3cret-key": "alice"}), tiny_engine, store
    )
    with serving(state) as server:
        url = server.url
        for method, path in [
            ("GET", "/v1/models"),
            ("POST", "/v1/chat/completions"),
            ("POST", "/v1/completions"),
            ("GET", "/api/sessions"),
            ("POST", "/tokenize"),
            ("POST", "/detokenize"),
        ]:
            assert httpx.request(method, url + path, json={}).status_code == 401
            wrong = httpx.request(method, url + path, json={}, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret-key", max_retries=0)
        raw = good.completions.with_raw_response.create(model=state.base_id, prompt="hi", max_tokens=2)
        session = store.get_session(raw.headers["x-helixloom-session"])
        assert session is not None and session.api_key_label == "alice"
        key = {"Authorization": "Bearer s3cret-key"}
        tokens = httpx.post(url + "/tokenize", json={"prompt": "hi"}, headers=key)
        assert tokens.status_code == 200 and tokens.json()["count"] > 0
        text = httpx.post(url + "/detokenize", json={"tokens": tokens.json()["tokens"]}, headers=key)
        assert text.status_code == 200 and text.json()["prompt"].endswith("hi")
        assert httpx.get(url + "/health").status_code == 200
    assert b"s3cret-key" not in (tmp_path / "db.sqlite").read_bytes()


def test_full_queue_is_503(tiny_model: TinyModel, tiny_engine: HFEngine, tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    config = ServerConfig(model=str(tiny_model.path), max_batch=1, max_queue=1)
    state = ServerState(config, tiny_engine, store)
    with serving(state) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)

        def ask(_: int) -> int:
            try:
                client.completions.create(
                    model=state.base_id, prompt="Once", max_tokens=60, extra_body={"ignore_eos": True}
                )
                return 200
            except openai.InternalServerError as exc:
                assert exc.status_code == 503 and exc.code == "server_overloaded"
                return 503

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(ask, range(8)))
    assert 503 in codes and 200 in codes


def test_response_format(served: Running) -> None:
    import json

    import jsonschema

    from tests.test_structured import PERSON

    client = served.client()
    base = served.state.base_id
    reply = client.chat.completions.create(
        model=base,
        messages=[{"role": "user", "content": "A person:"}],  # type: ignore[list-item]
        max_tokens=160,
        seed=1,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
    )
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), PERSON)
    obj = client.chat.completions.create(
        model=base,
        messages=[{"role": "user", "content": "x"}],
        max_tokens=60,
        n=8,
        seed=2,  # type: ignore[list-item]
        response_format={"type": "json_object"},
    )
    # JSON mode promises a JSON object (OpenAI's words), never a top-level array or scalar: every
    # sample opens an object, and each one that finished parses to a dict.
    for choice in obj.choices:
        content = choice.message.content or ""
        assert content.startswith("{"), content
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(content), dict), content
    for bad in (
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
        {"type": "json_schema"},
        {"type": "yaml"},
    ):
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(
                model=base,
                messages=[{"role": "user", "content": "x"}],
                response_format=bad,  # type: ignore[arg-type,list-item]
            )
        assert exc.value.param == "response_format"


def test_helixloom_serve_command(tiny_model: TinyModel, tmp_path: Path) -> None:
    """The CLI entry point itself: flags, start-up, a request, a clean stop."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HELIXLOOM_HOME": str(tmp_path / "home")}
    env.pop("HELIXLOOM_API_KEY", None)
    keys = tmp_path / "keys.txt"
    keys.write_text("ops k3y\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "helixloom.cli", "serve", "--model", str(tiny_model.path), "--port", str(port),
         "--adapter", f"alpha={tiny_model.adapters['alpha']}", "--api-key-file", str(keys),
         "--max-tokens", "4"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k3y", max_retries=0)
        deadline = time.time() + 60
        while True:
            try:
                ids = {m.id for m in client.models.list().data}
                break
            except openai.APIConnectionError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.time() < deadline
                time.sleep(0.3)
        assert {"alpha", "helixnet", str(tiny_model.path)} <= ids
        reply = client.completions.create(model="alpha", prompt="Paris is")
        assert reply.usage is not None and reply.usage.completion_tokens <= 4
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    bad = subprocess.run(
        [sys.executable, "-m", "helixloom.cli", "serve", "--model", "./nope"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "unknown model spec" in bad.stderr


def test_default_max_tokens_yields_to_a_long_prompt(served: Running) -> None:
    """No max_tokens: the server's default shrinks to the room the context leaves; an explicit one is kept."""
    client = served.client()
    base = served.state.base_id
    context = served.engine.max_model_len
    assert context is not None
    words = "the quick brown fox " * 400
    ids = served.engine.tokenize(words, add_special_tokens=False)
    prompt = served.engine.detokenize(ids[: context - 5])
    room = context - len(served.engine.encode(prompt))
    assert 0 < room < served.state.config.default_max_tokens
    out = client.completions.create(model=base, prompt=prompt, temperature=0, extra_body={"ignore_eos": True})
    assert out.usage is not None and out.usage.completion_tokens == room
    assert out.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError, match="exceeds the model's context"):
        client.completions.create(model=base, prompt=prompt, max_tokens=room + 1)
