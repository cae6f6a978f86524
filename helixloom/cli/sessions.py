"""``helixloom sessions list|show|export`` and ``helixloom export sft|preferences``: what the store
recorded, read back and written out as JSONL."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from helixloom.errors import HelixloomError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``sessions`` and ``export`` commands."""
    from helixloom.cli.common import usage

    sessions = sub.add_parser("sessions", help="recorded sessions", description="Recorded sessions.")
    ssub = sessions.add_subparsers(title="actions", metavar="ACTION")
    slist = ssub.add_parser("list", help="list sessions, newest first")
    slist.add_argument("--kind", help="generate, helixnet, api, ...")
    slist.add_argument("--model", help="only this model")
    slist.add_argument("--rating", choices=["up", "down"], help="only sessions rated so")
    slist.add_argument("--since", help="ISO date or time (inclusive)")
    slist.add_argument("--until", help="ISO date or time (exclusive)")
    slist.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    slist.add_argument("--json", action="store_true", help="print JSON")
    slist.set_defaults(run=cmd_sessions_list)
    sshow = ssub.add_parser("show", help="one session with its messages")
    sshow.add_argument("session_id")
    sshow.add_argument("--json", action="store_true", help="print JSON")
    sshow.set_defaults(run=cmd_sessions_show)
    sexp = ssub.add_parser("export", help="export sessions with their messages and ratings")
    sexp.add_argument("--format", choices=["jsonl"], default="jsonl", help="one JSON object per line")
    sexp.add_argument("--kind", help="only this kind")
    sexp.add_argument("--rating", choices=["up", "down"], help="only sessions rated so")
    sexp.add_argument("--out", help="file to write (default stdout)")
    sexp.set_defaults(run=cmd_sessions_export)
    sessions.set_defaults(run=lambda _: usage(sessions))

    export = sub.add_parser(
        "export",
        help="training data from the loom's ratings and choices (JSONL)",
        description="Turn loom trees into training data. sft: one row per thumbs-up node "
        "({prompt, completion}). preferences: {prompt, chosen, rejected} pairs between siblings, where a "
        "branch wins by rating, by leading to a thumbs-up, or by being explored further.",
    )
    export.add_argument("kind", choices=["sft", "preferences"])
    export.add_argument("--out", help="file to write (default stdout)")
    export.set_defaults(run=cmd_export)


def _session_json(store: Any, session: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        **asdict(session),
        "messages": [asdict(m) for m in store.get_messages(session.id)],
        "ratings": [asdict(r) for r in store.ratings_for("session", session.id)],
    }


def cmd_sessions_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from helixloom.cli.common import open_store

    with open_store() as store:
        rows = store.list_sessions(
            kind=args.kind,
            model=args.model,
            rating=args.rating,
            since=args.since,
            until=args.until,
            limit=args.limit,
        )
    if args.json:
        print(json.dumps([asdict(s) for s in rows]))
        return 0
    for s in rows:
        print(f"{s.id}  {s.created_at[:19]}  {s.kind:<9} {str(s.model)[:24]:<24} {(s.title or '')[:60]!r}")
    if not rows:
        print("no sessions")
    return 0


def cmd_sessions_show(args: argparse.Namespace) -> int:
    from helixloom.cli.common import open_store

    with open_store() as store:
        session = store.get_session(args.session_id)
        if session is None:
            raise HelixloomError(f"no session {args.session_id}", "see `helixloom sessions list`")
        body = _session_json(store, session)
    if args.json:
        print(json.dumps(body))
        return 0
    print(f"session {session.id} ({session.kind}, {session.model}, {session.created_at})")
    for m in body["messages"]:
        label = m["role"].upper() + (f" [{m['stage']}]" if m["stage"] else "")
        print(f"\n{label}: {m['content']}")
    for r in body["ratings"]:
        print(f"\nrated {'up' if r['score'] > 0 else 'down'}: {r['reason'] or ''}")
    return 0


def cmd_sessions_export(args: argparse.Namespace) -> int:
    def sessions(store: Any) -> Iterator[dict[str, Any]]:
        offset = 0
        while batch := store.list_sessions(kind=args.kind, rating=args.rating, limit=500, offset=offset):
            yield from (_session_json(store, session) for session in batch)
            offset += len(batch)

    return _write_jsonl(sessions, args.out, "sessions")


def cmd_export(args: argparse.Namespace) -> int:
    from helixloom import loom

    source = loom.export_sft if args.kind == "sft" else loom.export_preferences
    return _write_jsonl(source, args.out, f"{args.kind} rows")


def _write_jsonl(rows_of: Callable[[Any], Iterable[dict[str, Any]]], out_path: str | None, what: str) -> int:
    """Write the rows a store yields as JSONL to ``out_path`` (or stdout); say how many on stderr."""
    from helixloom.cli.common import open_store

    out = open(out_path, "w") if out_path else sys.stdout  # noqa: SIM115 - stdout is not ours to close
    count = 0
    try:
        with open_store() as store:
            for row in rows_of(store):
                out.write(json.dumps(row) + "\n")
                count += 1
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {count} {what}", file=sys.stderr)
    return 0
