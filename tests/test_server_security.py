"""The server as an attacker meets it (issue: a server you can expose): the jobs API runs only listed
commands on files under HELIXLOOM_HOME, keys and Host names are checked, every refusal is an OpenAI-
shaped 4xx. A real server on loopback over the tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helixloom.cli import build_parser, main
from helixloom.engine.hf import HFEngine
from helixloom.server import ServerConfig, ServerState
from helixloom.server.job_runner import job_env
from helixloom.store import Store
from tests.conftest import TinyModel, serving

KEY = "team:s3cret"  # a key with a colon is one key


@pytest.fixture
def served(
    tiny_model: TinyModel, tiny_engine: HFEngine, helixloom_home: Path
) -> Iterator[tuple[str, ServerState]]:
    config = ServerConfig(model=str(tiny_model.path), api_keys={KEY: "team"}, default_max_tokens=4)
    state = ServerState(
        config, tiny_engine, Store(helixloom_home / "helixloom.db"), command_parser=build_parser
    )
    state.jobs.stop()  # jobs are accepted and queued, never run: these tests are about what gets in
    with serving(state) as server:
        yield server.url, state


def auth(key: str = KEY, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {key}"}


def assert_openai_error(r: httpx.Response, status: int, fragment: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert fragment in error["message"], error["message"]


def test_keys_whole_and_bearer_in_any_case(served: tuple[str, ServerState]) -> None:
    url, _ = served
    assert httpx.get(f"{url}/v1/models", headers=auth()).status_code == 200
    assert httpx.get(f"{url}/v1/models", headers=auth(scheme="bearer")).status_code == 200
    assert_openai_error(httpx.get(f"{url}/v1/models", headers=auth("s3cret")), 401, "wrong API key")
    assert_openai_error(httpx.get(f"{url}/v1/models"), 401, "wrong API key")


def test_host_header_of_another_site_is_refused(served: tuple[str, ServerState]) -> None:
    url, _ = served
    r = httpx.get(f"{url}/v1/models", headers={**auth(), "Host": "evil.example"})
    assert_openai_error(r, 421, "Host")
    assert httpx.get(f"{url}/", headers={"Host": "evil.example:80"}).status_code == 421
    assert httpx.get(f"{url}/", headers={"Host": "localhost"}).status_code == 200


def test_unknown_route_is_openai_shaped(served: tuple[str, ServerState]) -> None:
    url, _ = served
    assert_openai_error(httpx.get(f"{url}/v1/nothing", headers=auth()), 404, "Not Found")


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        ("eval winrate --prompts /etc/passwd", "outside"),
        ("eval winrate --prompts uploads/p.txt --out /tmp/stolen", "outside"),
        ("learn uploads/p.txt --name d --teacher-url http://evil.example/v1", "cannot be used"),
        ("learn uploads/p.txt --name d --teacher openai:http://evil.example/v1#m", "not allowed"),
        ("iterate --name r --prompts uploads/p.txt --reward py:/tmp/x.py:f", "Python rewards"),
        ("learn uploads/p.txt --name ../../x", "bad name"),
        ("serve --host 0.0.0.0", "a job runs one of"),
    ],
)
def test_jobs_api_refuses_abuse(served: tuple[str, ServerState], command: str, fragment: str) -> None:
    url, state = served
    docs = httpx.put(f"{url}/api/files/p.txt", content=b"Say hi.\n", headers=auth())
    assert docs.status_code == 201
    before = len(state.store.list_jobs())
    r = httpx.post(f"{url}/api/jobs", json={"command": command}, headers=auth())
    assert_openai_error(r, 400, fragment)
    assert len(state.store.list_jobs()) == before  # nothing queued


def test_uploaded_files_are_what_jobs_may_use(served: tuple[str, ServerState], helixloom_home: Path) -> None:
    url, _ = served
    r = httpx.put(f"{url}/api/files/prompts.txt", content=b"Say hi.\nSay bye.\n", headers=auth())
    assert r.status_code == 201 and r.json()["path"] == "uploads/prompts.txt"
    assert (helixloom_home / "uploads" / "prompts.txt").read_bytes() == b"Say hi.\nSay bye.\n"
    assert [f["name"] for f in httpx.get(f"{url}/api/files", headers=auth()).json()["data"]] == [
        "prompts.txt"
    ]
    assert_openai_error(
        httpx.put(f"{url}/api/files/.hidden", content=b"x", headers=auth()), 400, "bad file name"
    )
    assert httpx.put(f"{url}/api/files/a%2Fb", content=b"x", headers=auth()).status_code in (400, 404)
    r = httpx.post(
        f"{url}/api/jobs",
        json={"command": "eval grade --model default --prompts uploads/prompts.txt --out outputs/g.json"},
        headers=auth(),
    )
    assert r.status_code == 201, r.text
    argv = r.json()["params"]["argv"]
    # Resolved, relative to the home the job runs in: a client never learns where the home is.
    assert argv[argv.index("--prompts") + 1] == "uploads/prompts.txt"
    assert argv[argv.index("--out") + 1] == "outputs/g.json"
    assert str(helixloom_home.resolve()) not in r.text


def test_a_job_does_not_inherit_the_servers_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("HELIXLOOM_REMOTE_API_KEY", "remote-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws")
    env = job_env(tmp_path / "x.db")
    assert not {"OPENAI_API_KEY", "HELIXLOOM_REMOTE_API_KEY", "AWS_SECRET_ACCESS_KEY"} & set(env)
    assert env["HELIXLOOM_DB"] == str(tmp_path / "x.db") and "PATH" in env


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["serve", "--host", "0.0.0.0"], "allow-unauthenticated-network"),
        (["serve", "--api-key", ""], "non-empty"),
    ],
)
def test_serve_refuses_unsafe_settings(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HELIXLOOM_API_KEY", raising=False)
    assert main(argv) == 2
    assert fragment in capsys.readouterr().err


def test_serve_refuses_an_exported_empty_key_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELIXLOOM_API_KEY", "")
    assert main(["serve"]) == 2
    assert "non-empty" in capsys.readouterr().err


def _nested_schema(depth: int) -> dict[str, object]:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def _schema_format(schema: dict[str, object]) -> dict[str, object]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"model": "M", "prompt": "x", "temperature": NaN}', "temperature"),
        (b'{"model": "M", "prompt": "x", "temperature": Infinity}', "temperature"),
        (b'{"model": "M", "prompt": "x", "seed": 100000000000000000000000}', "seed"),
        (b'{"model": "M", "prompt": "x", "seed": -1}', "seed"),
        (b'{"model": "M", "prompt": "\\ud800 x"}', "surrogate"),
        (b'{"model": "M", "prompt": "x", "max_tokens": 1000000000}', "context"),
        (b'{"model": "M", "prompt": "x", "n": 100000}', "n"),
        (b'{"model": "M", "prompt": "x", "stop": ["' + b"y" * 5000 + b'"]}', "stop"),
        (b'{"model": "M", "prompt": "x", "stop": [' + b",".join([b'"s"'] * 100) + b"]}", "stop"),
    ],
)
def test_hostile_completions_are_clean_400s(
    served: tuple[str, ServerState], body: bytes, fragment: str
) -> None:
    url, state = served
    body = body.replace(b'"M"', f'"{state.base_id}"'.encode())
    r = httpx.post(
        f"{url}/v1/completions", content=body, headers={**auth(), "Content-Type": "application/json"}
    )
    assert_openai_error(r, 400, fragment)


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        (_nested_schema(300), "too large"),
        ({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(5000)}}, "too large"),
        ({"type": 7}, "invalid JSON schema"),
    ],
)
def test_hostile_schemas_are_clean_400s(
    served: tuple[str, ServerState], schema: dict[str, object], fragment: str
) -> None:
    url, state = served
    body = {"model": state.base_id, "prompt": "x", "max_tokens": 4, "response_format": _schema_format(schema)}
    assert_openai_error(
        httpx.post(f"{url}/v1/completions", json=body, headers=auth(), timeout=30), 400, fragment
    )


def test_other_routes_refuse_bad_input_cleanly(served: tuple[str, ServerState]) -> None:
    url, state = served
    tok = httpx.post(
        f"{url}/tokenize",
        content=f'{{"model": "{state.base_id}", "prompt": "\\udfff"}}'.encode(),
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert_openai_error(tok, 400, "surrogate")
    empty = httpx.post(
        f"{url}/v1/chat/completions", json={"model": "helixnet", "messages": []}, headers=auth()
    )
    assert empty.status_code == 400, empty.text
    many = {"format": "helixloom.tree/1", "nodes": [{"id": "a", "text": "x", "rating": 20000}]}
    r = httpx.post(f"{url}/api/trees/import", json=many, headers=auth())
    assert r.status_code == 400 and len(state.store.list_trees()) == 0, r.text
    bad = {"format": "helixloom.tree/1", "nodes": [{"id": "a", "text": "x"}, 7]}
    assert httpx.post(f"{url}/api/trees/import", json=bad, headers=auth()).status_code == 400


def test_requests_that_once_got_a_500_are_clean_400s(served: tuple[str, ServerState]) -> None:
    """Each of these was a 500 (an audit in Dec 2026), some only after a whole weave search had run."""
    url, state = served
    headers = {**auth(), "Content-Type": "application/json"}

    def post(path: str, raw: str) -> httpx.Response:
        return httpx.post(f"{url}{path}", content=raw.encode(), headers=headers, timeout=60)

    weave = '"prompt": "Once", "budget": 2, "tokens_per_node": 2'
    # JSON's 1e309 is infinity to Python: refused before anything is scored or stored
    for extra in ('"sampling_temperature": 1e309', '"temperature": 1e309',
                  '"questions": [{"text": "Good?", "weight": 1e309}]'):  # fmt: skip
        r = post("/api/weave", f"{{{weave}, {extra}}}")
        assert r.status_code == 400 and r.json()["error"]["message"], (extra, r.text)
    chat = (
        '{"model": "weave", "messages": [{"role": "user", "content": "hi"}], '
        '"weave": {"budget": 2, "questions": [{"text": "q", "weight": 1e309}]}}'
    )
    assert post("/v1/chat/completions", chat).status_code == 400
    assert len(state.store.list_trees()) == 0  # nothing was searched and stored
    # a request may not make the shared engine score thousands of questions per node
    many = ", ".join('{"text": "q"}' for _ in range(3000))
    r = post("/api/weave", f'{{{weave}, "questions": [{many}]}}')
    assert r.status_code == 400 and "questions" in r.text
    r = httpx.get(f"{url}/api/sessions", params={"offset": 10**20}, headers=auth())
    assert r.status_code == 400, r.text  # sqlite's integers are 64-bit
    # an imported node's tokens are the importer's: a counterfactual on malformed ones is refused
    tree = {
        "format": "helixloom.tree/1",
        "nodes": [
            {"id": "r", "text": "p"},
            {"id": "c", "parent_id": "r", "text": "x", "meta": {"tokens": [1, 2]}},
        ],
    }
    imported = httpx.post(f"{url}/api/trees/import", json=tree, headers=auth()).json()
    child = next(n for n in state.store.tree_nodes(imported["tree_id"]) if n.parent_id is not None)
    r = httpx.post(
        f"{url}/api/nodes/{child.id}/counterfactual", json={"index": 1, "token": "z"}, headers=auth()
    )
    assert_openai_error(r, 400, "tokens")
    # the server is unharmed
    r = httpx.post(
        f"{url}/v1/completions",
        json={"model": state.base_id, "prompt": "hi", "max_tokens": 2},
        headers=auth(),
    )
    assert r.status_code == 200


def test_bad_requests_in_a_batch_fail_alone(served: tuple[str, ServerState]) -> None:
    """Good and bad requests sent together: every good one answered as it is alone, each bad one
    refused with its own message."""
    import threading

    url, state = served
    good = {"model": state.base_id, "max_tokens": 4, "temperature": 0}
    solo = {
        p: httpx.post(f"{url}/v1/completions", json={**good, "prompt": p}, headers=auth()).json()["choices"][
            0
        ]["text"]
        for p in ("The sky is", "Water is", "Fire is")
    }
    bads = [
        {**good, "prompt": "x", "max_tokens": 10**9},
        {**good, "prompt": "x", "response_format": _schema_format({"type": 7})},
        {**good, "prompt": "x", "seed": 2**70},
    ]
    results: dict[str, httpx.Response] = {}

    def send(key: str, body: dict[str, object]) -> None:
        results[key] = httpx.post(f"{url}/v1/completions", json=body, headers=auth(), timeout=60)

    threads = [threading.Thread(target=send, args=(p, {**good, "prompt": p})) for p in solo]
    threads += [threading.Thread(target=send, args=(f"bad{i}", b)) for i, b in enumerate(bads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p, text in solo.items():
        assert results[p].status_code == 200 and results[p].json()["choices"][0]["text"] == text
    assert [results[f"bad{i}"].status_code for i in range(3)] == [400, 400, 400]
    assert "context" in results["bad0"].json()["error"]["message"]
    assert "schema" in results["bad1"].json()["error"]["message"]
    assert "seed" in results["bad2"].json()["error"]["message"]


def test_a_streamed_request_that_cannot_run_is_a_400_before_any_chunk(
    served: tuple[str, ServerState],
) -> None:
    url, state = served
    before = len(state.store.list_sessions())
    body = {"model": state.base_id, "prompt": "x", "max_tokens": 10**9, "stream": True}
    r = httpx.post(f"{url}/v1/completions", json=body, headers=auth())
    assert_openai_error(r, 400, "context")
    assert len(state.store.list_sessions()) == before  # no session of empty answers


def test_uploads_stay_within_the_quota(served: tuple[str, ServerState]) -> None:
    import dataclasses

    url, state = served
    state.config = dataclasses.replace(state.config, max_uploads_total_bytes=10)
    assert httpx.put(f"{url}/api/files/a.txt", content=b"12345678", headers=auth()).status_code == 201
    over = httpx.put(f"{url}/api/files/b.txt", content=b"12345", headers=auth())
    assert_openai_error(over, 400, "more than")
    assert httpx.put(f"{url}/api/files/a.txt", content=b"1234567890", headers=auth()).status_code == 201
    names = [f["name"] for f in httpx.get(f"{url}/api/files", headers=auth()).json()["data"]]
    assert names == ["a.txt"]  # the refused upload left nothing behind


def test_parallel_uploads_share_the_quota(served: tuple[str, ServerState]) -> None:
    # each upload measured the quota once at its start, so N uploads at once each fitted a quota that
    # only one of them fitted in; those under way now count as they stream
    import dataclasses
    import threading
    import time

    url, state = served
    state.config = dataclasses.replace(state.config, max_uploads_total_bytes=100)
    start = threading.Barrier(4)
    codes: list[int] = []

    def slowly() -> Iterator[bytes]:
        for _ in range(6):
            yield b"x" * 10
            time.sleep(0.05)

    def upload(name: str) -> None:
        start.wait()
        r = httpx.put(f"{url}/api/files/{name}", content=slowly(), headers=auth(), timeout=60)
        codes.append(r.status_code)
        if r.status_code != 201:
            assert_openai_error(r, 400, "more than")

    threads = [threading.Thread(target=upload, args=(f"f{i}.txt",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    listed = httpx.get(f"{url}/api/files", headers=auth()).json()["data"]
    assert sum(f["bytes"] for f in listed) <= 100 and sorted(codes).count(201) == len(listed) >= 1
