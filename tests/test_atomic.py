"""Atomic replacement (helixloom.atomic) and the one name rule (helixloom.paths.check_name)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helixloom import atomic
from helixloom.errors import HelixloomError
from helixloom.paths import check_name, confined


def test_write_json_replaces_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    atomic.write_json(target, {"x": "é"})
    atomic.write_json(target, {"x": 2})
    assert target.read_text() == '{\n  "x": 2\n}'
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    atomic.write_text(target, "old")

    def boom(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic.write_with(target, boom)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_staged_dir_replaces_a_folder_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "adapter"
    with atomic.staged_dir(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic.staged_dir(target) as tmp:
        (tmp / "weights").write_text("v2-half")
        raise RuntimeError("killed")
    assert (target / "weights").read_text() == "v1"
    with atomic.staged_dir(target) as tmp:
        (tmp / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_copy_dir(tmp_path: Path) -> None:
    (tmp_path / "src" / "d").mkdir(parents=True)
    (tmp_path / "src" / "d" / "f").write_text("1")
    atomic.copy_dir(tmp_path / "src", tmp_path / "dst")
    assert (tmp_path / "dst" / "d" / "f").read_text() == "1"


@pytest.mark.parametrize("name", ["mydocs", "a", "run-1.v2", "A_b"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", "-x", "a..b", "x" * 129, "a b"]
)
def test_bad_names(name: str) -> None:
    with pytest.raises(HelixloomError, match="bad adapter"):
        check_name(name, "adapter")


def test_confined(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    assert confined("in", tmp_path) == (tmp_path / "in").resolve()
    (tmp_path / "link").symlink_to("/etc")
    for bad in ("../x", "/etc/passwd", "link/passwd"):
        with pytest.raises(HelixloomError, match="outside"):
            confined(bad, tmp_path)
