"""Generated requests against every route of a real server on the tiny model: whatever arrives, the
answer is a 2xx or an OpenAI-shaped 4xx, never a 5xx or a hang, and the server is alive afterwards.

Bodies are drawn two ways: arbitrary JSON, and a valid body for the route with fields replaced by
arbitrary JSON, added or dropped (most bugs hide one field away from a good request). The suite runs
a fixed set of 150; for a longer hunt: HELIXLOOM_FUZZ_EXAMPLES=5000 HELIXLOOM_FUZZ_RANDOM=1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helixloom.cli import build_parser
from helixloom.engine.hf import HFEngine
from helixloom.server import ServerConfig, ServerState
from helixloom.store import Store
from tests.conftest import TinyModel, serving

KEY = "fuzz-key"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
# Values that tend to break things: huge, negative, empty, odd strings, wrong types.
edgy = st.sampled_from(
    [
        -1,
        0,
        2**63,
        2**70,
        -(2**70),
        1e308,
        -1e308,
        "",
        " ",
        "\x00",
        "../../etc/passwd",
        "é" * 50,
        [],
        {},
        None,
        True,
    ]
)
field_values = json_values | edgy
ids = st.sampled_from(["x", "..", "%2e%2e", "0" * 32, "a" * 300]) | st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#%\\"),
    min_size=1,
    max_size=20,
)


def valid_bodies(model: str) -> dict[tuple[str, str], dict[str, Any]]:
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    return {
        ("POST", "/v1/chat/completions"): chat,
        ("POST", "/v1/completions"): {"model": model, "prompt": "hi", "max_tokens": 3},
        ("POST", "/api/weave"): {
            "prompt": "Once",
            "questions": ["Is it good?"],
            "budget": 2,
            "tokens_per_node": 2,
        },
        ("POST", "/api/sessions/{id}/feedback"): {"score": "up"},
        ("POST", "/api/trees"): {"prompt": "Once upon"},
        ("POST", "/api/trees/import"): {"format": "helixloom.tree/1", "nodes": [{"id": "a", "text": "x"}]},
        ("POST", "/api/nodes/{id}/children"): {"n": 1, "max_tokens": 2},
        ("POST", "/api/nodes/{id}/weave"): {"questions": ["Good?"], "budget": 2},
        ("POST", "/api/nodes/{id}/edit"): {"text": "y"},
        ("POST", "/api/nodes/{id}/rate"): {"score": 1},
        ("POST", "/api/jobs"): {"command": "eval grade --prompts uploads/p.txt"},
        ("POST", "/tokenize"): {"model": model, "prompt": "hi"},
        ("POST", "/detokenize"): {"model": model, "tokens": [1, 2]},
    }


ROUTES = [
    ("GET", "/v1/models"),
    ("GET", "/api/sessions"),
    ("GET", "/api/sessions/{id}"),
    ("GET", "/api/trees"),
    ("GET", "/api/trees/{id}"),
    ("GET", "/api/jobs"),
    ("GET", "/api/jobs/{id}"),
    ("POST", "/api/jobs/{id}/cancel"),
    ("GET", "/api/files"),
    ("PUT", "/api/files/{id}"),
    ("DELETE", "/api/files/{id}"),
    *valid_bodies("m"),
]


@pytest.fixture(scope="module")
def server(
    tiny_model: TinyModel, tiny_engine: HFEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    home = tmp_path_factory.mktemp("fuzz-home")
    config = ServerConfig(
        model=str(tiny_model.path), api_keys={KEY: "fuzz"}, default_max_tokens=4, max_queue=16
    )
    state = ServerState(config, tiny_engine, Store(Path(home) / "helixloom.db"), command_parser=build_parser)
    state.jobs.stop()  # jobs may be queued by the fuzzer, never run
    with serving(state) as background:
        yield background.url, state.base_id


@st.composite
def requests(draw: st.DrawFn, model: str) -> tuple[str, str, bytes | None]:
    method, template = draw(st.sampled_from(ROUTES))
    path = template.replace("{id}", draw(ids))
    good = valid_bodies(model).get((method, template))
    if method in ("GET", "DELETE"):
        return method, path, None
    how = draw(st.sampled_from(["any", "mutate", "mutate", "bytes"] if good else ["any", "bytes"]))
    if how == "bytes":
        return method, path, draw(st.binary(max_size=64))
    if how == "any":
        return method, path, json.dumps(draw(json_values)).encode()
    body = dict(good or {})
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*body, "extra", "n", "seed", "stop", "temperature", "logprobs"]))
        if draw(st.booleans()) and key in body:
            del body[key]
        else:
            body[key] = draw(field_values)
    return method, path, json.dumps(body).encode()


@settings(
    max_examples=int(os.environ.get("HELIXLOOM_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=not os.environ.get("HELIXLOOM_FUZZ_RANDOM"),
)
@given(data=st.data())
def test_no_request_gets_a_5xx(server: tuple[str, str], data: st.DataObject) -> None:
    url, model = server
    method, path, body = data.draw(requests(model))
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.request(method, url + path, content=body, headers=headers, timeout=60)
    assert r.status_code < 500, (method, path, body, r.status_code, r.text[:300])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error["message"], str) and error["type"], r.text


def test_alive_after_fuzzing(server: tuple[str, str]) -> None:
    url, model = server
    r = httpx.post(
        f"{url}/v1/completions",
        json={"model": model, "prompt": "still there?", "max_tokens": 2},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
