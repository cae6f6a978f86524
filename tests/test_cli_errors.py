"""Whatever fails, the CLI prints one line and exits non-zero; the traceback only on request."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from helixloom.cli import main
from helixloom.store import Store


def test_an_unexpected_error_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom() -> Store:
        raise sqlite3.OperationalError("disk I/O error\nsecond line")

    monkeypatch.setattr("helixloom.cli.common.open_store", boom)
    assert main(["sessions", "list"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "helixloom: error: OperationalError: disk I/O error"
    assert "Traceback" not in err and "second line" not in err
    monkeypatch.setenv("HELIXLOOM_DEBUG", "1")
    with pytest.raises(sqlite3.OperationalError):
        main(["sessions", "list"])


def test_reading_commands_work_beside_a_writer(
    helixloom_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Store(helixloom_home / "helixloom.db").close()
    locked = threading.Event()

    def hold() -> None:
        with closing(sqlite3.connect(helixloom_home / "helixloom.db", isolation_level=None)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            locked.set()
            time.sleep(6)  # longer than one busy timeout (5 s)
            conn.execute("COMMIT")

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(5)
        t0 = time.monotonic()
        assert main(["sessions", "list"]) == 0
        assert time.monotonic() - t0 < 4  # it did not wait for the writer
    finally:
        holder.join()
    assert "Traceback" not in capsys.readouterr().err
