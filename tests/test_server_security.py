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
from helixloom.server import BackgroundServer, ServerConfig, ServerState
from helixloom.server.job_runner import job_env
from helixloom.store import Store
from tests.conftest import TinyModel

KEY = "team:s3cret"  # a key with a colon is one key


@pytest.fixture
def served(tiny_model: TinyModel, helixloom_home: Path) -> Iterator[tuple[str, ServerState]]:
    engine = HFEngine.load(str(tiny_model.path))
    config = ServerConfig(model=str(tiny_model.path), api_keys={KEY: "team"}, default_max_tokens=4)
    state = ServerState(config, engine, Store(helixloom_home / "helixloom.db"), command_parser=build_parser)
    state.jobs.stop()  # jobs are accepted and queued, never run: these tests are about what gets in
    server = BackgroundServer(state)
    try:
        yield server.url, state
    finally:
        server.stop()


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
        json={"command": "eval grade --model default --prompts uploads/prompts.txt --out reports/g.json"},
        headers=auth(),
    )
    assert r.status_code == 201, r.text
    argv = r.json()["params"]["argv"]
    assert argv[argv.index("--prompts") + 1] == str(helixloom_home.resolve() / "uploads" / "prompts.txt")
    assert argv[argv.index("--out") + 1] == str(helixloom_home.resolve() / "reports" / "g.json")


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
