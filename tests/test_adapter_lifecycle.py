"""Adapters in a running server: versioned by content, reloaded when retrained in place (never served
stale), loaded and unloaded through vLLM's routes, in-flight requests kept on their version.

Every test serves its own tiny engine (adapters go in and out of it) on a loopback port and drives it
with the official ``openai`` client or httpx.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from helixloom.engine import GenerationRequest, sampling
from helixloom.engine.hf import HFEngine
from helixloom.engine.lora_folder import adapter_version
from helixloom.server import ServerConfig, ServerState
from helixloom.store import Store
from tests import tiny
from tests.conftest import TinyModel, serving

PROMPT = "The quick brown fox"


def greedy(engine: HFEngine, adapter_folder: Path | None, prompt: str = PROMPT, max_tokens: int = 8) -> str:
    """What ``adapter_folder``'s weights answer, on a reference engine (loaded under a name of its own,
    unloaded again so the reference stays clean)."""
    name = None
    if adapter_folder is not None:
        name = f"ref-{adapter_version(adapter_folder)}"
        engine.load_adapter(name, str(adapter_folder))
    try:
        params = sampling(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        return engine.generate([GenerationRequest(prompt, params, name)])[0].text
    finally:
        if name is not None:
            engine.unload_adapter(name)


def retrain(model: Path, folder: Path, seed: int) -> None:
    """A new adapter written over ``folder`` in place: same name, same path, new bytes."""
    tiny.build_adapter(model, folder, seed=seed, targets=("q_proj", "v_proj"))


@pytest.fixture
def reference(fresh_tiny_engine: HFEngine) -> HFEngine:
    return fresh_tiny_engine


@pytest.fixture
def home_adapter(tiny_model: TinyModel, helixloom_home: Path) -> Path:
    """A copy of ``alpha`` under HELIXLOOM_HOME/adapters/mine (where the CLI writes adapters)."""
    folder = helixloom_home / "adapters" / "mine"
    shutil.copytree(tiny_model.adapters["alpha"], folder)
    return folder


def open_server(tiny_model: TinyModel, **config: object) -> tuple[ServerState, HFEngine]:
    engine = HFEngine.load(str(tiny_model.path))
    store = Store.open_default()
    cfg = ServerConfig(model=str(tiny_model.path), default_max_tokens=8, run_jobs=False, **config)  # type: ignore[arg-type]
    return ServerState(cfg, engine, store), engine


@pytest.fixture
def served(tiny_model: TinyModel, helixloom_home: Path) -> Iterator[tuple[str, ServerState, HFEngine]]:
    helixloom_home.mkdir(parents=True, exist_ok=True)
    state, engine = open_server(tiny_model)
    with serving(state) as server:
        yield server.url, state, engine


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def complete(url: str, model: str, max_tokens: int = 8) -> str:
    reply = client(url).completions.create(
        model=model, prompt=PROMPT, temperature=0, max_tokens=max_tokens, extra_body={"ignore_eos": True}
    )
    return reply.choices[0].text


def models(url: str) -> dict[str, dict[str, object]]:
    return {m.id: m.model_dump() for m in client(url).models.list().data}


def wait_until(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_retrained_adapter_is_served_with_its_new_weights(
    served: tuple[str, ServerState, HFEngine], home_adapter: Path, tiny_model: TinyModel, reference: HFEngine
) -> None:
    """Retrained in place (same name, same folder, new bytes): the next request gets the new weights.
    Before versioning the server kept the first weights it loaded under the name, silently."""
    url, state, _ = served
    state.store.add_adapter("mine", str(home_adapter))
    old_version = adapter_version(home_adapter)
    old = greedy(reference, home_adapter)
    assert complete(url, "mine") == old
    assert models(url)["mine"]["version"] == old_version

    retrain(tiny_model.path, home_adapter, seed=11)
    new = greedy(reference, home_adapter)
    assert new != old, "the retrained adapter must answer differently for this test to mean anything"
    assert complete(url, "mine") == new
    assert models(url)["mine"]["version"] == adapter_version(home_adapter) != old_version
    # The old version is unloaded once nothing holds it; the new one stays.
    wait_until(lambda: list(state.adapters.loaded_versions().values()) == [adapter_version(home_adapter)])
    wait_until(lambda: [a.version for a in state.engine.adapters()] == [adapter_version(home_adapter)])


def test_a_request_in_flight_finishes_on_the_version_it_started_with(
    served: tuple[str, ServerState, HFEngine], home_adapter: Path, tiny_model: TinyModel, reference: HFEngine
) -> None:
    url, state, _ = served
    state.store.add_adapter("mine", str(home_adapter))
    old_long = greedy(reference, home_adapter, max_tokens=40)
    stream = client(url).completions.create(
        model="mine",
        prompt=PROMPT,
        temperature=0,
        max_tokens=40,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = iter(stream)
    first = next(chunks).choices[0].text  # the request is running on the old version

    retrain(tiny_model.path, home_adapter, seed=12)
    new = greedy(reference, home_adapter)
    answers: list[str] = []
    later = threading.Thread(target=lambda: answers.append(complete(url, "mine")))
    later.start()  # loads the new version beside the old one
    streamed = first + "".join(c.choices[0].text for c in chunks if c.choices)
    later.join(timeout=60)
    assert streamed == old_long
    assert answers == [new]
    wait_until(lambda: list(state.adapters.loaded_versions().values()) == [adapter_version(home_adapter)])


def test_load_and_unload_in_vllms_shapes(
    served: tuple[str, ServerState, HFEngine], home_adapter: Path, tiny_model: TinyModel, reference: HFEngine
) -> None:
    """What vLLM's own tests send, through the openai client's ``post`` (and httpx for status codes)."""
    url, state, _ = served
    oa = client(url)
    assert "mine" not in models(url)
    ok = oa.post("load_lora_adapter", body={"lora_name": "mine", "lora_path": "adapters/mine"}, cast_to=str)
    assert ok == "Success: LoRA adapter 'mine' added successfully."
    card = models(url)["mine"]
    assert card["version"] == adapter_version(home_adapter) and card["parent"] == state.base_id
    assert complete(url, "mine") == greedy(reference, home_adapter)

    with pytest.raises(openai.BadRequestError, match="has already been loaded"):
        oa.post("load_lora_adapter", body={"lora_name": "mine", "lora_path": "adapters/mine"}, cast_to=str)
    # load_inplace (vLLM's, for RL loops): new weights under the same name.
    retrain(tiny_model.path, home_adapter, seed=13)
    body = {"lora_name": "mine", "lora_path": str(home_adapter), "load_inplace": True}
    assert httpx.post(url + "/v1/load_lora_adapter", json=body).status_code == 200
    assert complete(url, "mine") == greedy(reference, home_adapter)

    ok = oa.post("unload_lora_adapter", body={"lora_name": "mine"}, cast_to=str)
    assert ok == "Success: LoRA adapter 'mine' removed successfully."
    assert "mine" not in models(url)
    with pytest.raises(openai.NotFoundError):
        complete(url, "mine")
    with pytest.raises(openai.NotFoundError, match="cannot be found"):
        oa.post("unload_lora_adapter", body={"lora_name": "mine"}, cast_to=str)
    wait_until(lambda: state.engine.adapters() == [])
    # A registered adapter can be unloaded (it stays in the store) and loaded again by its name.
    state.store.add_adapter("reg", str(tiny_model.adapters["beta"]))
    assert complete(url, "reg") == greedy(reference, tiny_model.adapters["beta"])
    oa.post("unload_lora_adapter", body={"lora_name": "reg"}, cast_to=str)
    assert "reg" not in models(url) and state.store.get_adapter("reg") is not None
    oa.post("load_lora_adapter", body={"lora_name": "reg", "lora_path": "reg"}, cast_to=str)
    assert complete(url, "reg") == greedy(reference, tiny_model.adapters["beta"])
    oa.post("unload_lora_adapter", body={"lora_name": "reg"}, cast_to=str)  # loaded, and registered
    assert "reg" not in models(url)


def test_models_show_each_adapters_version_and_report(
    served: tuple[str, ServerState, HFEngine], home_adapter: Path, tiny_model: TinyModel
) -> None:
    url, state, _ = served
    report = {"approval": [0.2, 0.55], "promoted": True}
    state.store.add_adapter(
        "mine", str(home_adapter), meta={"report": report, "rank": 4, "documents": {"/secret/path": "x"}}
    )
    card = models(url)["mine"]
    assert card["version"] == adapter_version(home_adapter)
    assert card["metadata"] == {"report": report, "rank": 4}  # never where its files live
    assert "version" not in models(url)[state.base_id]


@pytest.mark.parametrize(
    ("lora_path", "status", "words"),
    [
        ("{outside}", 400, "outside HELIXLOOM_HOME"),
        ("../elsewhere", 400, "outside HELIXLOOM_HOME"),
        ("adapters/../../elsewhere", 400, "outside HELIXLOOM_HOME"),
        ("adapters/linked", 400, "outside HELIXLOOM_HOME"),  # a link out of the home
        ("uploads/up", 400, "outside adapters/ and outputs/ and runs/"),
        ("adapters/none", 404, "No adapter found"),
        ("adapters/notlora", 400, "not a LoRA adapter"),
        ("adapters/foreign", 400, "not a LoRA adapter"),  # made for a model of another width
        ("adapters/bad\x00name", 400, ""),
        ("adapters/" + "a" * 5000, 404, "No adapter found"),
    ],
)
def test_a_lora_path_from_a_client_stays_in_the_home(
    served: tuple[str, ServerState, HFEngine],
    tiny_model: TinyModel,
    helixloom_home: Path,
    tmp_path: Path,
    lora_path: str,
    status: int,
    words: str,
) -> None:
    url, state, _ = served
    outside = tmp_path / "elsewhere"
    shutil.copytree(tiny_model.adapters["alpha"], outside)
    (helixloom_home / "adapters").mkdir(exist_ok=True)
    (helixloom_home / "adapters" / "linked").symlink_to(outside)
    shutil.copytree(tiny_model.adapters["alpha"], helixloom_home / "uploads" / "up")
    (helixloom_home / "adapters" / "notlora").mkdir()
    (helixloom_home / "adapters" / "notlora" / "adapter_config.json").write_text("{}")
    shutil.copytree(tiny_model.foreign_adapter, helixloom_home / "adapters" / "foreign")
    body = {"lora_name": "mine", "lora_path": lora_path.format(outside=outside)}
    reply = httpx.post(url + "/v1/load_lora_adapter", json=body)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert words in error["message"] and error["param"] == "lora_path"
    assert str(helixloom_home) not in reply.text and str(tiny_model.path) not in reply.text
    assert "mine" not in models(url) and state.engine.adapters() == []


def test_names_and_keys_are_checked(tiny_model: TinyModel, helixloom_home: Path, home_adapter: Path) -> None:
    state, _ = open_server(tiny_model, api_keys={"sesame": "ops"})
    with serving(state) as server:
        body = {"lora_name": "mine", "lora_path": "adapters/mine"}
        for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            assert httpx.post(server.url + path, json=body).status_code == 401
        keyed = {"Authorization": "Bearer sesame"}
        for name, words in [
            ("../evil", "bad adapter name"),
            ("", "must be provided"),
            ("weave", "not an adapter"),
            (state.base_id, "not an adapter"),
        ]:
            reply = httpx.post(
                server.url + "/v1/load_lora_adapter", json={**body, "lora_name": name}, headers=keyed
            )
            assert reply.status_code == 400 and words in reply.json()["error"]["message"], name
        assert httpx.post(server.url + "/v1/load_lora_adapter", json=body, headers=keyed).status_code == 200
    state, _ = open_server(tiny_model, load_adapters=False)
    with serving(state) as server:
        reply = httpx.post(server.url + "/v1/load_lora_adapter", json=body)
        assert reply.status_code == 400 and "does not load adapters" in reply.text


def test_hf_engine_unloads_adapters(
    fresh_tiny_engine: HFEngine, tiny_model: TinyModel, tiny_engine: HFEngine
) -> None:
    engine = fresh_tiny_engine
    params = sampling(temperature=0, max_tokens=6, ignore_eos=True)
    base = tiny_engine.generate([GenerationRequest(PROMPT, params)])[0].text
    engine.load_adapter("a", str(tiny_model.adapters["alpha"]))
    engine.load_adapter("b", str(tiny_model.adapters["beta"]))
    with_b = engine.generate([GenerationRequest(PROMPT, params, "b")])[0].text
    engine.unload_adapter("a")
    assert [a.name for a in engine.adapters()] == ["b"]
    with pytest.raises(Exception, match="not loaded"):
        engine.generate([GenerationRequest(PROMPT, params, "a")])
    assert engine.generate([GenerationRequest(PROMPT, params, "b")])[0].text == with_b
    engine.unload_adapter("b")  # the last one: the model is the plain base model again
    assert engine.model is engine.base_model
    assert engine.generate([GenerationRequest(PROMPT, params)])[0].text == base
    engine.load_adapter("b", str(tiny_model.adapters["beta"]))
    assert engine.generate([GenerationRequest(PROMPT, params, "b")])[0].text == with_b
    with pytest.raises(Exception, match="not loaded"):
        engine.unload_adapter("a")


def test_a_remote_engine_loads_and_unloads_on_the_server(
    served: tuple[str, ServerState, HFEngine], home_adapter: Path, reference: HFEngine
) -> None:
    """The remote backend drives a vLLM-style server's own load/unload routes (here: helixloom's),
    so the learning loop can target a remote deployment."""
    from helixloom.engine.remote import RemoteEngine

    url, state, _ = served
    remote = RemoteEngine(f"openai:{url}/v1#{state.base_id}", max_retries=0)
    try:
        info = remote.load_adapter("mine", "adapters/mine")
        assert info.version == "" or info.version == adapter_version(home_adapter)
        assert "mine" in models(url)
        params = sampling(temperature=0, max_tokens=8, ignore_eos=True)
        out = remote.generate([GenerationRequest(PROMPT, params, "mine")])[0].text
        assert out == greedy(reference, home_adapter)
        remote.unload_adapter("mine")
        assert "mine" not in models(url) and remote.adapters() == []
        with pytest.raises(
            Exception,
            match=r"does not serve an adapter named .other., and would not load it.*outside HELIXLOOM_HOME",
        ):
            remote.load_adapter("other", "/definitely/not/here")
    finally:
        remote.close()


@pytest.mark.default_model
def test_llamacpp_unloads_and_reuses_a_name_without_stale_kv(
    default_model_home: Path, gemma_loras: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On llama.cpp: unload frees the adapter; a name loaded again with other weights is served with
    them (the KV computed under the old weights is not reused); token prompts read their ids."""
    pytest.importorskip("llama_cpp")
    from helixloom.engine.base import TokenPrompt
    from helixloom.engine.llamacpp import LlamaCppEngine

    monkeypatch.setenv("HELIXLOOM_HOME", str(default_model_home))
    params = sampling(temperature=0, max_tokens=8, ignore_eos=True)
    prompt = "The capital of France is"
    lc, ref = LlamaCppEngine("llamacpp:default"), LlamaCppEngine("llamacpp:default")
    try:
        ref.load_adapter("one", str(gemma_loras["rand"]))
        ref.load_adapter("two", str(gemma_loras["rand2"]))
        expect = {n: ref.generate([GenerationRequest(prompt, params, n)])[0].text for n in ("one", "two")}
        base = ref.generate([GenerationRequest(prompt, params)])[0].text
        assert len({*expect.values(), base}) == 3

        info = lc.load_adapter("x", str(gemma_loras["rand"]))
        assert info.version == adapter_version(gemma_loras["rand"])
        assert lc.generate([GenerationRequest(prompt, params, "x")])[0].text == expect["one"]
        lc.unload_adapter("x")
        assert lc.adapters() == []
        with pytest.raises(Exception, match="not loaded"):
            lc.generate([GenerationRequest(prompt, params, "x")])
        lc.load_adapter("x", str(gemma_loras["rand2"]))  # the same name, other weights
        assert lc.generate([GenerationRequest(prompt, params, "x")])[0].text == expect["two"]
        assert lc.generate([GenerationRequest(prompt, params)])[0].text == base

        ids = lc.tokenize(prompt)
        token_prompt = TokenPrompt(lc.detokenize(ids), ids)
        assert lc.generate([GenerationRequest(token_prompt, params)])[0].text == base
    finally:
        lc.close()
        ref.close()


def test_loom_rolls_record_the_public_name_and_the_version_served(
    served: tuple[str, ServerState, HFEngine], home_adapter: Path, tiny_model: TinyModel
) -> None:
    """The engine knows each version by a name of its own; a loom node records the adapter's public
    name and the version that wrote it, before and after a retrain in place."""
    url, state, _ = served
    state.store.add_adapter("mine", str(home_adapter))
    tree = httpx.post(url + "/api/trees", json={"prompt": PROMPT}).json()
    root = tree["nodes"][0]["id"] if "nodes" in tree else tree["root_id"]
    versions = []
    for seed in (None, 11):
        if seed is not None:
            retrain(tiny_model.path, home_adapter, seed=seed)
        reply = httpx.post(
            url + f"/api/nodes/{root}/children",
            json={"model": "mine", "n": 1, "max_tokens": 6, "temperature": 0, "logprobs": 0},
        )
        assert reply.status_code == 200, reply.text
        versions.append(adapter_version(home_adapter))
    kids = [n for n in state.store.tree_nodes(state.store.get_node(root).tree_id) if n.parent_id == root]  # type: ignore[union-attr]
    assert {n.adapter for n in kids} == {"mine"}
    assert sorted((n.meta or {})["adapter_version"] for n in kids) == sorted(versions)
    assert versions[0] != versions[1]
    models = httpx.get(url + "/api/loom/models").json()["models"]
    assert {m["id"]: m["version"] for m in models if m["kind"] == "adapter"} == {"mine": versions[1]}


def test_a_retrained_helixnet_role_is_used_from_the_next_request(
    tiny_model: TinyModel, helixloom_home: Path, home_adapter: Path, reference: HFEngine
) -> None:
    """HelixNet's role adapters are pinned per request like any other: a critic retrained in place is
    used from the next request on (before, roles were loaded once and served stale until a restart),
    and sessions still record the role under the name the user gave it."""
    from helixloom.helixnet import LMoE

    helixloom_home.mkdir(parents=True, exist_ok=True)
    Store.open_default().add_adapter("mine", str(home_adapter))
    state, _ = open_server(tiny_model, helixnet_adapters={"critic": "mine"})
    question = [{"role": "user", "content": "Why do cats purr?"}]
    params = sampling(temperature=0, max_tokens=6, seed=0)

    sessions: list[str] = []

    def served_critique(url: str) -> str:
        reply = client(url).chat.completions.create(
            model="helixnet",
            messages=question,
            temperature=0,
            max_tokens=6,
            seed=0,  # type: ignore[arg-type]
        )
        info = reply.model_extra["helixnet"]  # type: ignore[index]
        sessions.append(info["session_id"])
        return info["critique"]

    def expected_critique() -> str:
        """The critique the adapter's weights now on disk write, on a reference engine."""
        name = f"ref-{adapter_version(home_adapter)}"
        reference.load_adapter(name, str(home_adapter))
        try:
            lmoe = LMoE(reference, {"critic": name}, state.helixnet_format)
            session, asked = lmoe.resume(question, params, Store.open_default())
            return session.ask(asked).critique
        finally:
            reference.unload_adapter(name)

    with serving(state) as server:
        old = expected_critique()
        assert served_critique(server.url) == old
        retrain(tiny_model.path, home_adapter, seed=21)
        new = expected_critique()
        assert new != old, "the retrained critic must write differently for this test to mean anything"
        assert served_critique(server.url) == new
        for session_id in sessions:  # recorded under the role's name, not the per-version one
            stored = state.store.get_session(session_id)
            assert stored is not None and stored.meta["roles"]["critic"]["adapter"] == "mine"
            critic = [m for m in state.store.get_messages(session_id) if m.stage == "critic"]
            assert critic and all(m.adapter == "mine" for m in critic)


def test_a_refused_helixnet_request_holds_no_role_version(
    tiny_model: TinyModel, helixloom_home: Path, home_adapter: Path
) -> None:
    """A helixnet request refused for a bad field pins nothing: after a retrain the old version of
    the role is unloaded once the requests that used it are done (a leaked pin kept it for good)."""
    helixloom_home.mkdir(parents=True, exist_ok=True)
    Store.open_default().add_adapter("mine", str(home_adapter))
    state, _ = open_server(tiny_model, helixnet_adapters={"critic": "mine"})
    body = {"model": "helixnet", "messages": [{"role": "user", "content": "Why?"}], "max_tokens": 4}
    with serving(state) as server:
        refused = httpx.post(server.url + "/v1/chat/completions", json={**body, "gate": "yes"}, timeout=60)
        assert refused.status_code == 400 and "gate" in refused.text
        retrain(tiny_model.path, home_adapter, seed=31)
        assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200
        wait_until(lambda: list(state.adapters.loaded_versions().values()) == [adapter_version(home_adapter)])
