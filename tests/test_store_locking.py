"""The store under another process's write lock: opening and reading never wait for it, a write waits
(past one busy timeout) and is stored, not dropped; a lock that is never released ends in one clear
error."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from helixloom.errors import HelixloomError
from helixloom.store import NewMessage, Store
from helixloom.store import base as store_base


def _hold_write_lock(path: Path, seconds: float, locked: threading.Event) -> None:
    """Another writer (a plain connection, as another process would be) holding the lock."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(seconds)
        conn.execute("COMMIT")


def test_open_and_read_under_a_writer_and_a_write_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "helixloom.db"
    with Store(path) as s:
        first = s.record_session("completion", [NewMessage("user", "before")])
    # One busy timeout (0.2 s) is far shorter than the other writer's 1.5 s: only waiting beyond
    # it stores the answer.
    monkeypatch.setattr(store_base, "BUSY_TIMEOUT_MS", 200)
    locked = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 1.5, locked))
    holder.start()
    assert locked.wait(5)
    try:
        t0 = time.monotonic()
        with Store(path) as s:  # schema is current: no migration, no write lock
            opened = time.monotonic() - t0
            assert [x.id for x in s.list_sessions()] == [first.id]
            assert opened < 1.0
            stored = s.record_session("completion", [NewMessage("assistant", "generated under a lock")])
            waited = time.monotonic() - t0
        assert waited >= 1.0  # it really waited for the other writer
    finally:
        holder.join()
    with Store(path) as s:
        assert {x.id for x in s.list_sessions()} == {first.id, stored.id}
        assert s.get_messages(stored.id)[0].content == "generated under a lock"


def test_a_lock_held_too_long_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "helixloom.db"
    Store(path).close()
    monkeypatch.setattr(store_base, "BUSY_TIMEOUT_MS", 100)
    monkeypatch.setattr(store_base, "WRITE_WAIT_S", 0.5)
    locked = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 2.0, locked))
    holder.start()
    assert locked.wait(5)
    try:
        with Store(path) as s, pytest.raises(HelixloomError, match="stayed locked by another process"):
            s.record_session("completion", [NewMessage("user", "x")])
    finally:
        holder.join()


def test_a_waiting_write_does_not_hold_up_reads_of_the_same_store(tmp_path: Path) -> None:
    path = tmp_path / "helixloom.db"
    locked = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 2.0, locked))
    with Store(path) as s:
        s.record_session("completion", [NewMessage("user", "before")])
        holder.start()
        assert locked.wait(5)
        writer = threading.Thread(target=s.record_session, args=("completion", [NewMessage("user", "after")]))
        writer.start()  # waits for the other process's lock
        time.sleep(0.3)
        t0 = time.monotonic()
        assert len(s.list_sessions()) == 1
        assert time.monotonic() - t0 < 0.5  # not behind the waiting write
        holder.join()
        writer.join()
        assert len(s.list_sessions()) == 2
