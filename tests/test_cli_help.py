"""The command line's surface is a contract: the ``--help`` of every command, and the Python names the
README shows, stay as they are across internal moves. Regenerate the snapshot on purpose with
``HELIXLOOM_UPDATE_SNAPSHOTS=1 pytest tests/test_cli_help.py`` and review its diff."""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path

import pytest

from helixloom.cli import build_parser

SNAPSHOT = Path(__file__).parent / "snapshots" / "cli_help.txt"

# Python names the README tells users to call (module, name).
README_NAMES = [
    ("helixloom.engine.remote", "RemoteEngine"),
    ("helixloom.engine", "load_engine"),
    ("helixloom.engine", "Engine"),
    ("helixloom.engine", "SamplingParams"),
    ("helixloom.engine", "sampling"),
]


def _all_help() -> str:
    parts: list[str] = []

    def walk(parser: argparse.ArgumentParser) -> None:
        parts.append(f"==== {parser.prog}\n{parser.format_help()}")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                    walk(sub)

    walk(build_parser())
    return "\n".join(parts)


def test_help_of_every_command_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    text = _all_help()
    if os.environ.get("HELIXLOOM_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(text)
    assert text.count("==== ") >= 30
    assert text == SNAPSHOT.read_text()


@pytest.mark.parametrize(("module", "name"), README_NAMES)
def test_readme_python_names_exist(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is not None
