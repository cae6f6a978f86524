"""The SQLite store: round trips of every API, atomic writes, migrations and upgrades, threads."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from helixloom.errors import HelixloomError
from helixloom.store import (
    MIGRATIONS,
    Migration,
    NewMessage,
    Store,
    latest_version,
    node_id,
)
from helixloom.store import migrations as migrations_module


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "helixloom.db") as s:
        yield s


def tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def columns(path: Path, table: str) -> list[str]:
    with closing(sqlite3.connect(path)) as conn:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def raw(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Run SQL on a separate plain connection, committing: what older code or another tool would do."""
    with closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(sql, params).fetchall()


FULL = NewMessage(
    role="assistant",
    content="The critique says: be brief.",
    stage="critic",
    model="tiny-llama",
    adapter="critic-lora",
    sampling={"temperature": 0.7, "top_p": 0.9},
    prompt_tokens=12,
    completion_tokens=7,
    finish_reason="stop",
    timings={"prefill_ms": 3.5, "decode_ms": 20.0},
    meta={"z": 1, "a": [1, 2]},
)


# --- opening and migrations -------------------------------------------------------------------


def test_open_creates_database_with_pragmas_and_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "folder" / "h.db"
    with Store(path) as s:
        assert s.schema_version == latest_version() == 5
        conn = s._connection()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert {"sessions", "messages", "adapters", "nodes", "ratings", "datasets", "jobs", "job_logs"} <= tables(
        path
    )
    assert "api_key_label" in columns(path, "sessions")


def test_open_default_uses_helixloom_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HELIXLOOM_HOME", str(home))
    with Store.open_default() as s:
        assert s.path == home / "helixloom.db"
        assert s.schema_version == latest_version()
    assert (home / "helixloom.db").is_file()
    assert (home / "adapters").is_dir()


def test_migrations_are_numbered_in_order() -> None:
    migrations_module.check_order(MIGRATIONS)
    assert [(m.number, m.name) for m in MIGRATIONS] == [
        (1, "sessions"),
        (2, "trees_ratings"),
        (3, "datasets_jobs"),
        (4, "jobs_process"),
        (5, "preferences"),
    ]
    with pytest.raises(ValueError, match="in order"):
        migrations_module.check_order([MIGRATIONS[0], MIGRATIONS[2]])


def test_migrations_recorded_and_not_reapplied(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    with Store(path) as s:
        first = s.applied_migrations()
    assert [(n, name) for n, name, _ in first] == [
        (1, "sessions"),
        (2, "trees_ratings"),
        (3, "datasets_jobs"),
        (4, "jobs_process"),
        (5, "preferences"),
    ]
    assert all(at.endswith("+00:00") for _, _, at in first)
    with Store(path) as s:
        # Re-applying would fail outright (CREATE TABLE of an existing table) or restamp applied_at.
        assert s.applied_migrations() == first
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        assert migrations_module.migrate(conn) == []


def test_upto_stops_at_that_migration(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    with Store(path, upto=1) as s:
        assert s.schema_version == 1
    assert "nodes" not in tables(path)
    with Store(path, upto=2) as s:
        assert s.schema_version == 2
    assert "nodes" in tables(path) and "jobs" not in tables(path)
    with pytest.raises(HelixloomError, match="upto=7"):
        Store(path, upto=7)


def test_upgrade_from_1_keeps_rows_and_adds_tables_and_column(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    with Store(path, upto=1) as old:
        old.add_adapter("critic", "/adapters/critic", base_model="base", meta={"rank": 8})
    # Rows as the version-1 code wrote them: its sessions table has no api_key_label column.
    raw(
        path,
        "INSERT INTO sessions (id, kind, title, model, created_at, meta) VALUES (?, ?, ?, ?, ?, ?)",
        ("s1", "chat", "old chat", "m", "2024-01-01T00:00:00.000000+00:00", '{"k": "v"}'),
    )
    for idx, (role, content) in enumerate([("user", "hi"), ("assistant", "hello")]):
        raw(
            path,
            "INSERT INTO messages (id, session_id, idx, role, content, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (f"m{idx}", "s1", idx, role, content, "2024-01-01T00:00:00.000000+00:00"),
        )

    with Store(path) as s:
        assert s.schema_version == latest_version()
        assert [n for n, _, _ in s.applied_migrations()] == list(range(1, latest_version() + 1))
        session = s.get_session("s1")
        assert session is not None
        assert (session.kind, session.title, session.meta, session.api_key_label) == (
            "chat",
            "old chat",
            {"k": "v"},
            None,
        )
        assert [(m.idx, m.role, m.content) for m in s.get_messages("s1")] == [
            (0, "user", "hi"),
            (1, "assistant", "hello"),
        ]
        adapter = s.get_adapter("critic")
        assert (
            adapter is not None and adapter.meta == {"rank": 8} and adapter.path == Path("/adapters/critic")
        )
        # The new tables work alongside the old rows.
        s.add_rating("message", "m1", 1)
        assert [x.id for x in s.list_sessions(rating="up")] == ["s1"]
        assert s.append_messages("s1", [NewMessage("user", "more")])[0].idx == 2
        assert s.create_job("sft").status == "queued"
    assert {"nodes", "ratings", "datasets", "jobs", "job_logs"} <= tables(path)
    assert raw(path, "SELECT api_key_label FROM sessions") == [(None,)]


def test_upgrade_from_2_keeps_nodes_and_ratings(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    raw_session = "INSERT INTO sessions (id, kind, created_at) VALUES (?, ?, ?)"
    with Store(path, upto=2) as old:
        raw(path, raw_session, ("s1", "weave", "2024-01-01T00:00:00.000000+00:00"))
        root = old.add_node("t", None, "Once upon", author="human")
        kid = old.add_node("t", root.id, " a time", author="tiny", score=0.5, meta={"yes": 0.9})
        old.add_rating("node", kid.id, -1, "dull")
        old.add_rating("session", "s1", 1)

    with Store(path) as s:
        assert s.schema_version == latest_version()
        assert s.get_node(kid.id) == kid
        assert [n.id for n in s.tree_nodes("t")] == [root.id, kid.id]
        assert [(r.score, r.reason) for r in s.ratings_for("node", kid.id)] == [(-1, "dull")]
        assert [x.id for x in s.list_sessions(rating="up")] == ["s1"]
        # Content addressing is unchanged across versions: the same text finds the same node.
        assert s.add_node("t", root.id, " a time") == kid
    assert "datasets" in tables(path)
    assert raw(path, "SELECT id, api_key_label FROM sessions") == [("s1", None)]


def test_database_from_newer_code_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    with Store(path) as s:
        s.record_session("chat", [NewMessage("user", "hi")])
    raw(path, "INSERT INTO schema_migrations VALUES (99, 'from_the_future', '2030-01-01T00:00:00+00:00')")
    before = raw(path, "SELECT * FROM schema_migrations ORDER BY number")
    with pytest.raises(HelixloomError, match=r"newer helixloom.*migration 99"):
        Store(path)
    assert raw(path, "SELECT * FROM schema_migrations ORDER BY number") == before
    assert raw(path, "SELECT COUNT(*) FROM sessions") == [(1,)]


def test_failed_migration_leaves_no_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "h.db"
    Store(path).close()
    broken = Migration(
        len(MIGRATIONS) + 1,
        "broken",
        "CREATE TABLE half_done (x INTEGER); INSERT INTO no_such_table VALUES (1);",
    )
    monkeypatch.setattr(migrations_module, "MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        Store(path)
    assert "half_done" not in tables(path)
    assert raw(path, "SELECT MAX(number) FROM schema_migrations") == [(len(MIGRATIONS),)]


def test_callable_migration_runs_in_its_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def add_notes(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('from python')")

    notes = Migration(len(MIGRATIONS) + 1, "notes", add_notes)
    monkeypatch.setattr(migrations_module, "MIGRATIONS", [*MIGRATIONS, notes])
    path = tmp_path / "h.db"
    with Store(path) as s:
        assert s.schema_version == notes.number
    assert raw(path, "SELECT body FROM notes") == [("from python",)]


def test_split_statements_respects_strings_and_comments() -> None:
    sql = "CREATE TABLE a (x TEXT DEFAULT ';'); -- a comment; with a semicolon\nCREATE TABLE b (y TEXT);"
    assert migrations_module.split_statements(sql) == [
        "CREATE TABLE a (x TEXT DEFAULT ';');",
        "-- a comment; with a semicolon\nCREATE TABLE b (y TEXT);",
    ]


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(HelixloomError, match="cannot open database"):
        Store(path)


def test_closed_store_raises(tmp_path: Path) -> None:
    s = Store(tmp_path / "h.db")
    s.close()
    s.close()
    with pytest.raises(HelixloomError, match="closed"):
        s.get_session("x")


# --- sessions and messages --------------------------------------------------------------------


def test_record_session_round_trip(store: Store) -> None:
    session = store.record_session(
        "helixnet",
        [NewMessage("user", "Tell me a story."), FULL],
        title="story",
        model="tiny-llama",
        meta={"b": 2, "a": 1},
        api_key_label="laptop",
    )
    assert len(session.id) == 32
    assert store.get_session(session.id) == session
    assert (session.kind, session.title, session.model, session.api_key_label) == (
        "helixnet",
        "story",
        "tiny-llama",
        "laptop",
    )
    assert session.meta == {"a": 1, "b": 2}
    assert session.created_at.endswith("+00:00")
    messages = store.get_messages(session.id)
    assert [m.idx for m in messages] == [0, 1]
    full = messages[1]
    assert (full.session_id, full.role, full.content, full.stage) == (
        session.id,
        *(FULL.role, FULL.content),
        "critic",
    )
    assert (full.model, full.adapter, full.finish_reason) == ("tiny-llama", "critic-lora", "stop")
    assert (full.prompt_tokens, full.completion_tokens) == (12, 7)
    assert full.sampling == FULL.sampling and full.timings == FULL.timings and full.meta == FULL.meta
    # JSON columns are stored with sorted keys.
    stored = store._fetchone("SELECT meta FROM messages WHERE id = ?", (full.id,))
    assert stored is not None and stored["meta"] == '{"a": [1, 2], "z": 1}'
    assert messages[0].stage is None and messages[0].sampling is None
    assert store.get_session("nope") is None
    assert store.get_messages("nope") == []


def test_record_session_with_given_id_and_duplicates(store: Store) -> None:
    store.record_session("chat", [], session_id="fixed")
    assert store.get_session("fixed") is not None
    with pytest.raises(HelixloomError, match="already exists"):
        store.record_session("chat", [NewMessage("user", "again")], session_id="fixed")
    assert store.get_messages("fixed") == []
    with pytest.raises(HelixloomError, match="kind"):
        store.record_session("", [])


def test_record_session_is_all_or_nothing(store: Store) -> None:
    bad_content = NewMessage("assistant", None)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        store.record_session("chat", [NewMessage("user", "hi"), bad_content], session_id="s1")
    assert store.get_session("s1") is None
    assert store._fetchall("SELECT * FROM messages") == []

    not_json = NewMessage("user", "hi", meta={"when": object()})
    with pytest.raises(HelixloomError, match="meta cannot be stored as JSON"):
        store.record_session("chat", [NewMessage("user", "ok"), not_json], session_id="s2")
    assert store.list_sessions() == []
    with pytest.raises(HelixloomError, match="JSON"):
        store.record_session("chat", [NewMessage("user", "x", timings={"t": float("nan")})])
    assert store._fetchall("SELECT * FROM sessions") == []

    # The store is still usable after the rollbacks.
    assert store.record_session("chat", [NewMessage("user", "hi")]).kind == "chat"


def test_append_messages(store: Store) -> None:
    session = store.record_session("chat", [NewMessage("user", "a"), NewMessage("assistant", "b")])
    added = store.append_messages(session.id, [NewMessage("user", "c"), NewMessage("assistant", "d")])
    assert [(m.idx, m.content) for m in added] == [(2, "c"), (3, "d")]
    assert [m.content for m in store.get_messages(session.id)] == ["a", "b", "c", "d"]
    with pytest.raises(sqlite3.IntegrityError):
        store.append_messages(session.id, [NewMessage("user", "e"), NewMessage("user", None)])  # type: ignore[arg-type]
    assert len(store.get_messages(session.id)) == 4
    assert store.append_messages(session.id, []) == []
    with pytest.raises(HelixloomError, match="no session"):
        store.append_messages("nope", [NewMessage("user", "x")])
    empty = store.record_session("chat", [])
    assert store.append_messages(empty.id, [NewMessage("user", "first")])[0].idx == 0


def test_list_sessions_filters_and_order(store: Store) -> None:
    a = store.record_session("chat", [NewMessage("user", "a")], model="m1")
    b = store.record_session("generate", [NewMessage("user", "b")], model="m2")
    c = store.record_session("chat", [NewMessage("user", "c"), NewMessage("assistant", "cc")], model="m2")
    assert [s.id for s in store.list_sessions()] == [c.id, b.id, a.id]
    assert [s.id for s in store.list_sessions(kind="chat")] == [c.id, a.id]
    assert [s.id for s in store.list_sessions(model="m2")] == [c.id, b.id]
    assert [s.id for s in store.list_sessions(kind="chat", model="m2")] == [c.id]
    assert [s.id for s in store.list_sessions(limit=1, offset=1)] == [b.id]
    assert [s.id for s in store.list_sessions(since=b.created_at)] == [c.id, b.id]
    assert [s.id for s in store.list_sessions(until=b.created_at)] == [a.id]
    assert store.list_sessions(since="2999-01-01") == []
    assert len(store.list_sessions(since="2000-01-01T00:00:00Z")) == 3

    store.add_rating("session", a.id, 1)
    store.add_rating("message", store.get_messages(c.id)[1].id, -1)
    store.add_rating("message", store.get_messages(c.id)[0].id, 1)
    assert [s.id for s in store.list_sessions(rating="up")] == [c.id, a.id]
    assert [s.id for s in store.list_sessions(rating="down")] == [c.id]
    assert [s.id for s in store.list_sessions(rating="down", kind="generate")] == []

    with pytest.raises(HelixloomError, match="rating"):
        store.list_sessions(rating="sideways")  # type: ignore[arg-type]
    with pytest.raises(HelixloomError, match="ISO-8601"):
        store.list_sessions(since="last tuesday")
    with pytest.raises(HelixloomError, match="negative"):
        store.list_sessions(limit=-1)


def test_delete_session_removes_messages_and_their_ratings(store: Store) -> None:
    keep = store.record_session("chat", [NewMessage("user", "keep")])
    gone = store.record_session("chat", [NewMessage("user", "x"), NewMessage("assistant", "y")])
    store.add_rating("session", gone.id, 1)
    store.add_rating("message", store.get_messages(gone.id)[1].id, -1)
    store.add_rating("session", keep.id, -1)
    assert store.delete_session(gone.id) is True
    assert store.get_session(gone.id) is None
    assert store.get_messages(gone.id) == []
    assert [(r.target_type, r.target_id) for r in store.list_ratings()] == [("session", keep.id)]
    assert store.delete_session(gone.id) is False


# --- adapters and datasets --------------------------------------------------------------------


def test_adapters_round_trip(store: Store, tmp_path: Path) -> None:
    record = store.add_adapter("actor", tmp_path / "actor", base_model="mistral-7b", meta={"rank": 16})
    assert record.path == tmp_path / "actor"
    assert store.get_adapter("actor") == record
    with pytest.raises(HelixloomError, match="already registered") as err:
        store.add_adapter("actor", "/elsewhere")
    assert "replace" in str(err.value) and "remove it first" in str(err.value)
    replaced = store.add_adapter("actor", "/elsewhere", replace=True)
    assert replaced.path == Path("/elsewhere") and replaced.base_model is None and replaced.meta is None
    store.add_adapter("critic", "/c")
    assert [a.name for a in store.list_adapters()] == ["actor", "critic"]
    assert store.remove_adapter("actor") is True
    assert store.remove_adapter("actor") is False
    assert store.get_adapter("actor") is None
    with pytest.raises(HelixloomError, match="name"):
        store.add_adapter("", "/x")


def test_datasets_round_trip(store: Store) -> None:
    ds = store.add_dataset("qa", "/data/qa.jsonl", kind="sft", rows=120, meta={"source": "docs"})
    assert (ds.name, ds.path, ds.kind, ds.rows, ds.meta) == (
        "qa",
        Path("/data/qa.jsonl"),
        "sft",
        120,
        {"source": "docs"},
    )
    assert store.get_dataset("qa") == ds
    with pytest.raises(HelixloomError, match="already registered"):
        store.add_dataset("qa", "/data/other.jsonl")
    assert store.add_dataset("qa", "/data/v2.jsonl", rows=3, replace=True).rows == 3
    store.add_dataset("prefs", "/data/prefs.jsonl", kind="dpo")
    assert [d.name for d in store.list_datasets()] == ["prefs", "qa"]
    assert store.remove_dataset("prefs") is True
    assert store.get_dataset("prefs") is None
    with pytest.raises(HelixloomError, match="rows"):
        store.add_dataset("bad", "/x", rows=-1)


# --- tree nodes -------------------------------------------------------------------------------


def test_node_ids_are_content_addressed() -> None:
    canonical = '{"parent":null,"text":"Once upon","tree":"t","v":1}'
    assert node_id(None, "Once upon", "t") == hashlib.sha256(canonical.encode()).hexdigest()
    root = node_id(None, "Once upon", "t")
    assert node_id(root, " a time", "t") == node_id(root, " a time", "t")
    assert node_id(root, " a time", "t") != node_id(None, " a time", "t")
    assert node_id(root, " a time", "t") != node_id(root, " a time.", "t")
    assert node_id(None, "Once upon", "t") != node_id(None, "Once upon", "other-tree")
    assert (
        node_id(None, "é", "t")
        == hashlib.sha256('{"parent":null,"text":"é","tree":"t","v":1}'.encode()).hexdigest()
    )


def test_nodes_round_trip(store: Store) -> None:
    root = store.add_node("t", None, "Once upon", author="human")
    assert (root.id, root.depth, root.parent_id, root.tree_id) == (
        node_id(None, "Once upon", "t"),
        0,
        None,
        "t",
    )
    a = store.add_node(
        "t", root.id, " a time", author="tiny", model="m", adapter="gen", score=0.2, meta={"p": 1}
    )
    b = store.add_node("t", root.id, " a midnight")
    deep = store.add_node("t", a.id, " there was")
    assert (a.depth, deep.depth) == (1, 2)
    assert (a.author, a.model, a.adapter, a.score, a.meta) == ("tiny", "m", "gen", 0.2, {"p": 1})
    assert store.get_node(a.id) == a
    assert store.get_node("missing") is None

    # Idempotent: the same text under the same parent is the same node, unchanged.
    again = store.add_node("t", root.id, " a time", author="someone else", score=0.9)
    assert again == a
    assert len(store.tree_nodes("t")) == 4

    assert [n.id for n in store.children(root.id)] == [a.id, b.id]
    assert store.children(deep.id) == []
    assert [n.id for n in store.tree_nodes("t")] == [root.id, a.id, b.id, deep.id]

    scored = store.set_node_score(b.id, 0.75)
    assert scored.score == 0.75 and store.get_node(b.id) == scored
    assert store.set_node_score(b.id, None).score is None
    merged = store.update_node_meta(a.id, {"q": 2, "p": 3})
    assert merged.meta == {"p": 3, "q": 2}
    assert store.update_node_meta(b.id, {"x": 1}).meta == {"x": 1}
    with pytest.raises(HelixloomError, match="no node"):
        store.set_node_score("missing", 1.0)
    with pytest.raises(HelixloomError, match="no node"):
        store.update_node_meta("missing", {})


def test_add_node_rejects_unknown_or_foreign_parent(store: Store) -> None:
    with pytest.raises(HelixloomError, match="no parent node"):
        store.add_node("t", "0" * 64, "orphan")
    other = store.add_node("other", None, "root")
    with pytest.raises(HelixloomError, match="belongs to tree other"):
        store.add_node("t", other.id, "stray")
    assert store.tree_nodes("t") == []


def test_list_trees(store: Store) -> None:
    assert store.list_trees() == []
    r1 = store.add_node("t1", None, "first tree")
    store.add_node("t1", r1.id, " grows")
    r2 = store.add_node("t2", None, "second tree")
    trees = store.list_trees()
    assert [(t.tree_id, t.root_id, t.root_text, t.node_count) for t in trees] == [
        ("t2", r2.id, "second tree", 1),
        ("t1", r1.id, "first tree", 2),
    ]
    assert trees[1].created_at == r1.created_at


# --- ratings ----------------------------------------------------------------------------------


def test_ratings_round_trip(store: Store) -> None:
    session = store.record_session("chat", [NewMessage("user", "q"), NewMessage("assistant", "a")])
    message = store.get_messages(session.id)[1]
    node = store.add_node("t", None, "root")
    r1 = store.add_rating("message", message.id, 1, "helpful")
    r2 = store.add_rating("message", message.id, -1)
    r3 = store.add_rating("session", session.id, 1)
    r4 = store.add_rating("node", node.id, -1, "off topic")
    assert (r1.target_type, r1.target_id, r1.score, r1.reason) == ("message", message.id, 1, "helpful")
    assert store.ratings_for("message", message.id) == [r1, r2]
    assert store.ratings_for("node", node.id) == [r4]
    assert store.ratings_for("session", "nope") == []
    assert store.list_ratings() == [r4, r3, r2, r1]
    assert store.list_ratings("session") == [r3]


@pytest.mark.parametrize("score", [0, 2, -2, True, 1.0])
def test_rating_score_must_be_plus_or_minus_one(store: Store, score: int) -> None:
    session = store.record_session("chat", [])
    with pytest.raises(HelixloomError, match="-1 or \\+1"):
        store.add_rating("session", session.id, score)
    assert store.list_ratings() == []


def test_rating_target_must_exist_and_have_a_known_type(store: Store) -> None:
    with pytest.raises(HelixloomError, match="does not exist"):
        store.add_rating("session", "nope", 1)
    with pytest.raises(HelixloomError, match="does not exist"):
        store.add_rating("node", "nope", -1)
    session = store.record_session("chat", [])
    with pytest.raises(HelixloomError, match="does not exist"):
        store.add_rating("message", session.id, 1)  # a session id is not a message id
    with pytest.raises(HelixloomError, match="ratings go on session, message, node"):
        store.add_rating("dataset", "x", 1)  # type: ignore[arg-type]
    with pytest.raises(HelixloomError, match="ratings go on"):
        store.list_ratings("dataset")  # type: ignore[arg-type]
    assert store.list_ratings() == []


# --- jobs -------------------------------------------------------------------------------------


def test_jobs_round_trip(store: Store) -> None:
    job = store.create_job("dpo", name="iteration 1", params={"beta": 0.1}, total=300)
    assert (job.kind, job.name, job.status, job.progress, job.total, job.params) == (
        "dpo",
        "iteration 1",
        "queued",
        0.0,
        300.0,
        {"beta": 0.1},
    )
    assert not job.finished and job.created_at == job.updated_at
    running = store.update_job(job.id, status="running", progress=10, message="step 10")
    assert (running.status, running.progress, running.message, running.total) == (
        "running",
        10.0,
        "step 10",
        300.0,
    )
    assert running.updated_at > job.updated_at
    done = store.update_job(
        job.id, status="succeeded", progress=300, result={"adapter": "dpo-1", "loss": 0.3}
    )
    assert done.finished and done.result == {"adapter": "dpo-1", "loss": 0.3} and done.message == "step 10"
    assert store.get_job(job.id) == done
    assert store.get_job("nope") is None

    store.log_job(job.id, "loading model")
    store.log_job(job.id, "step 1 loss 0.7")
    assert store.job_logs(job.id) == ["loading model", "step 1 loss 0.7"]
    assert store.job_logs("nope") == []

    failed = store.create_job("sft")
    store.update_job(failed.id, status="failed", error="out of memory")
    other = store.create_job("dpo")
    assert [j.id for j in store.list_jobs()] == [other.id, failed.id, job.id]
    assert [j.id for j in store.list_jobs(kind="dpo")] == [other.id, job.id]
    assert [j.id for j in store.list_jobs(status="failed")] == [failed.id]
    assert [j.id for j in store.list_jobs(kind="dpo", status="queued")] == [other.id]
    assert store.get_job(failed.id).error == "out of memory"  # type: ignore[union-attr]


def test_job_errors(store: Store) -> None:
    job = store.create_job("sft")
    with pytest.raises(HelixloomError, match="not one of"):
        store.update_job(job.id, status="exploded")  # type: ignore[arg-type]
    with pytest.raises(HelixloomError, match="no job"):
        store.update_job("nope", progress=1)
    with pytest.raises(HelixloomError, match="no job"):
        store.log_job("nope", "line")
    with pytest.raises(HelixloomError, match="not one of"):
        store.list_jobs(status="done")  # type: ignore[arg-type]
    with pytest.raises(HelixloomError, match="kind"):
        store.create_job("")
    assert store.get_job(job.id) == job


# --- threads ----------------------------------------------------------------------------------


def _run_threads(target: Callable[[int], None], count: int) -> None:
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_concurrent_writes_on_one_shared_store(store: Store) -> None:
    def work(i: int) -> None:
        for j in range(20):
            s = store.record_session("api", [NewMessage("user", f"{i}-{j}")], meta={"thread": i})
            store.append_messages(s.id, [NewMessage("assistant", f"reply {i}-{j}")])
            store.add_rating("session", s.id, 1 if j % 2 else -1)

    _run_threads(work, 8)
    sessions = store.list_sessions(limit=1000)
    assert len(sessions) == 160
    contents = {m.content for s in sessions for m in store.get_messages(s.id) if m.role == "user"}
    assert contents == {f"{i}-{j}" for i in range(8) for j in range(20)}
    assert all([m.idx for m in store.get_messages(s.id)] == [0, 1] for s in sessions)
    assert len(store.list_ratings()) == 160


def test_concurrent_stores_on_one_fresh_file(tmp_path: Path) -> None:
    """Separate connections (as separate processes would have) race to migrate, then to write."""
    path = tmp_path / "h.db"

    def work(i: int) -> None:
        with Store(path) as s:
            for j in range(20):
                s.record_session("api", [NewMessage("user", f"{i}-{j}")])

    _run_threads(work, 8)
    with Store(path) as s:
        assert [n for n, _, _ in s.applied_migrations()] == list(range(1, latest_version() + 1))
        assert len(s.list_sessions(limit=1000)) == 160


def test_preferences_round_trip_and_refusals(store: Store) -> None:
    root = store.add_node("t1", None, "Once upon a time")
    a = store.add_node("t1", root.id, " there was a cat.")
    b = store.add_node("t1", root.id, " there was a dog.")
    pref = store.add_preference(
        "Once upon a time",
        a.text,
        b.text,
        source="loom-ab",
        chosen_node_id=a.id,
        rejected_node_id=b.id,
        meta={"models": ["alpha", "beta"]},
    )
    store.add_preference("q", "short", "long answer", source="simulated")
    assert pref.chosen == " there was a cat." and pref.rejected_node_id == b.id
    assert pref.meta == {"models": ["alpha", "beta"]}
    assert [p.id for p in store.list_preferences()] == [pref.id, pref.id + 1]
    assert [p.source for p in store.list_preferences("simulated")] == ["simulated"]
    for kwargs in (
        {"chosen": "same", "rejected": "same"},
        {"chosen": " ", "rejected": "x"},
        {"chosen": "x", "rejected": "y", "source": ""},
        {"chosen": "x", "rejected": "y", "chosen_node_id": "nope"},
    ):
        args = {"source": "loom-ab", **kwargs}
        with pytest.raises(HelixloomError):
            store.add_preference("p", **args)  # type: ignore[arg-type]
    assert len(store.list_preferences()) == 2
