"""The command line, end to end in-process on the tiny model: output, recording, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helixloom.cli import main
from helixloom.store import Store
from tests.conftest import TinyModel


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def stored_sessions(home: Path) -> list[str]:
    if not (home / "helixloom.db").exists():
        return []
    with Store(home / "helixloom.db") as store:
        return [s.id for s in store.list_sessions(limit=1000)]


def test_generate_streams_and_records(
    capsys: pytest.CaptureFixture[str], tiny_model: TinyModel, helixloom_home: Path
) -> None:
    code, out, _ = run(capsys, "generate", "The quick brown fox", "--model", str(tiny_model.path),
                       "--max-tokens", "9", "--temperature", "0")  # fmt: skip
    assert code == 0 and out.strip()
    code, js, _ = run(capsys, "generate", "The quick brown fox", "--model", str(tiny_model.path),
                      "--max-tokens", "9", "--temperature", "0", "--json")  # fmt: skip
    body = json.loads(js)
    assert out == body["text"] + "\n"  # streamed text is the same text
    assert body["usage"]["completion_tokens"] <= 9 and body["finish_reason"] in ("stop", "length")
    assert set(body["timings"]) >= {"prefill", "decode", "total"}
    with Store(helixloom_home / "helixloom.db") as store:
        session = store.get_session(body["session_id"])
        assert session is not None and session.kind == "generate"
        messages = store.get_messages(session.id)
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[0].content == "The quick brown fox"
    assert messages[1].content == body["text"]
    assert messages[1].completion_tokens == body["usage"]["completion_tokens"]
    assert messages[1].sampling["temperature"] == 0 and messages[1].model == str(tiny_model.path)
    assert len(stored_sessions(helixloom_home)) == 2


def test_generate_n_with_seed_and_stop(capsys: pytest.CaptureFixture[str], tiny_model: TinyModel) -> None:
    args = ["generate", "Paris is", "--model", str(tiny_model.path), "--n", "3", "--seed", "5", "--json"]
    _, first, _ = run(capsys, *args, "--max-tokens", "12")
    _, again, _ = run(capsys, *args, "--max-tokens", "12")
    a, b = json.loads(first), json.loads(again)
    assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]
    assert len({c["text"] for c in a["choices"]}) > 1  # seed, seed+1, seed+2 differ
    text = a["choices"][0]["text"]
    stop = text[len(text) // 2 :][:2]
    _, cut, _ = run(capsys, *args, "--max-tokens", "12", "--stop", stop)
    assert json.loads(cut)["choices"][0]["text"] == text[: text.index(stop)]


def test_generate_with_adapter(capsys: pytest.CaptureFixture[str], tiny_model: TinyModel) -> None:
    model = str(tiny_model.path)
    common = ["--model", model, "--max-tokens", "8", "--temperature", "0", "--json"]
    _, base, _ = run(capsys, "generate", "The quick brown fox", *common)
    assert run(capsys, "adapters", "add", "alpha", str(tiny_model.adapters["alpha"]))[0] == 0
    _, named, _ = run(capsys, "generate", "The quick brown fox", *common, "--adapter", "alpha")
    _, by_path, _ = run(
        capsys, "generate", "The quick brown fox", *common, "--adapter", str(tiny_model.adapters["alpha"])
    )
    assert json.loads(named)["text"] == json.loads(by_path)["text"] != json.loads(base)["text"]


def test_adapters_registry(capsys: pytest.CaptureFixture[str], tiny_model: TinyModel) -> None:
    assert run(capsys, "adapters", "add", "beta", str(tiny_model.adapters["beta"]))[0] == 0
    code, out, _ = run(capsys, "adapters", "list", "--json")
    [entry] = json.loads(out)
    assert (
        entry["name"] == "beta" and entry["rank"] == 8 and entry["path"] == str(tiny_model.adapters["beta"])
    )
    code, _, err = run(capsys, "adapters", "add", "beta", str(tiny_model.adapters["alpha"]))
    assert code == 2 and "already" in err
    assert run(capsys, "adapters", "add", "beta", str(tiny_model.adapters["alpha"]), "--replace")[0] == 0
    assert run(capsys, "adapters", "remove", "beta")[0] == 0
    code, _, err = run(capsys, "adapters", "remove", "beta")
    assert code == 2 and "no adapter named" in err
    code, _, err = run(capsys, "adapters", "add", "x", str(tiny_model.path))
    assert code == 2 and "not a PEFT adapter" in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["generate", ""], "prompt is empty"),
        (["generate", "   "], "prompt is empty"),
        (["generate", "hi", "--max-tokens", "0"], "max_tokens"),
        (["generate", "hi", "--max-tokens", "-3"], "max_tokens"),
        (["generate", "hi", "--temperature", "-0.5"], "temperature"),
        (["generate", "hi", "--top-p", "1.5"], "top_p"),
        (["generate", "hi", "--n", "0"], "--n"),
        (["generate", "hi", "--model", "./no/such/folder"], "unknown model spec"),
        (["generate", "hi", "--model", "missing.gguf"], "does not exist"),
        (["generate", "hi", "--adapter", "nonexistent"], "unknown adapter"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], helixloom_home: Path, argv: list[str], needle: str
) -> None:
    code, _out, err = run(capsys, *argv)
    assert code == 2
    assert needle in err
    assert err.startswith("helixloom: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert stored_sessions(helixloom_home) == []


def test_model_folder_without_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "generate", "hi", "--model", str(tmp_path))
    assert code == 2 and "no config.json" in err


def test_incompatible_adapter_stores_nothing(
    capsys: pytest.CaptureFixture[str], tiny_model: TinyModel, helixloom_home: Path
) -> None:
    code, _, err = run(capsys, "generate", "hi", "--model", str(tiny_model.path),
                       "--adapter", str(tiny_model.foreign_adapter))  # fmt: skip
    assert code == 2 and "does not fit" in err and "Traceback" not in err
    assert stored_sessions(helixloom_home) == []


def test_unwritable_home(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("HELIXLOOM_HOME", str(blocker / "home"))
    code, _, err = run(capsys, "adapters", "list")
    assert code == 2 and "HELIXLOOM_HOME" in err and "not usable" in err


def test_help_explains(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--adapter", "--max-tokens", "--temperature", "--top-p", "--top-k", "--seed",
                 "--n", "--stop", "--json"):  # fmt: skip
        assert flag in out
    code, out, _ = run(capsys, "models")
    assert code == 0 and "default" in out


def test_sessions_commands(capsys: pytest.CaptureFixture[str], tiny_model: TinyModel, tmp_path: Path) -> None:
    assert main(["generate", "Paris is", "--model", str(tiny_model.path), "--max-tokens", "3", "--json"]) == 0
    sid = json.loads(capsys.readouterr().out)["session_id"]
    assert main(["sessions", "list", "--json"]) == 0
    assert [s["id"] for s in json.loads(capsys.readouterr().out)] == [sid]
    assert main(["sessions", "show", sid, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [m["role"] for m in shown["messages"]] == ["user", "assistant"]
    out = tmp_path / "sessions.jsonl"
    assert main(["sessions", "export", "--format", "jsonl", "--out", str(out)]) == 0
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["id"] == sid and row["messages"][0]["content"] == "Paris is"
    assert main(["sessions", "show", "nope"]) == 2


def test_building_the_cli_does_not_import_torch() -> None:
    """`helixloom --help` and argument errors stay instant: no command's flags need torch to be built."""
    import subprocess
    import sys

    code = (
        "import sys; from helixloom.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
