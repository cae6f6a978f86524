"""The server against hostile and malformed requests: every one must get a clean 4xx, none a 5xx or a
hang; good requests sent beside bad ones are all answered and all stored; memory stays bounded.

Starts helixloom's server on a free loopback port (in this process, with an API key), then:
1. sends each hostile case once (traversal and abuse through the jobs API, unsafe hosts and keys,
   out-of-range sampling, bad grammars, oversized inputs, broken bodies) and sorts the answers into
   clean 4xx, 2xx where a refusal was due ("accepted"), 5xx, and hangs (no answer in --timeout s);
2. runs --clients concurrent clients, each alternating good and bad completion requests for --rounds
   rounds: good ones must be answered 200, bad ones 4xx, and every good one stored as a session;
3. repeats the hostile set --repeat times and reports the server's RSS before and after.

    python benchmarks/robustness.py [--model default] [--clients 8] [--rounds 4] [--repeat 5]

Prints one JSON object. The ratios a reader wants: clean_4xx / tried (1.0 expected), stored / sent
(1.0), rss_after / rss_before (bounded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEY = "bench-key"


@dataclass
class Case:
    """One request that must be refused with a 4xx."""

    name: str
    method: str
    path: str
    body: Any = None  # a JSON value, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    auth: bool = True


def nested_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def hostile_cases(model: str) -> list[Case]:
    """Each finding of the server's security review, as a request."""
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    comp = {"model": model, "prompt": "hi", "max_tokens": 4}
    job = "/api/jobs"
    cases = [
        # The jobs API: only listed commands and flags, paths under HELIXLOOM_HOME, no URLs or code.
        Case("job reads any file", "POST", job, {"command": "eval winrate --prompts /etc/passwd"}),
        Case("job writes any file", "POST", job, {"command": "eval qa --questions q.jsonl --out /tmp/x"}),
        Case("job remote model URL", "POST", job, {"command": "learn docs --model openai:http://evil/v1"}),
        Case("job teacher URL", "POST", job, {"command": "learn docs --name d --teacher-url http://evil/v1"}),
        Case("job python reward", "POST", job, {"command": "iterate --name r --reward py:/tmp/x.py:f"}),
        Case("job name traversal", "POST", job, {"command": "learn docs --name ../../x"}),
        Case("job unknown command", "POST", job, {"command": "serve --host 0.0.0.0"}),
        Case("job not a string", "POST", job, {"command": ["learn"]}),
        # Keys and hosts.
        Case("no key", "GET", "/v1/models", auth=False),
        Case("wrong key", "GET", "/v1/models", headers={"Authorization": "Bearer nope"}, auth=False),
        Case("rebinding host", "GET", "/v1/models", headers={"Host": "evil.example"}),
        # Sampling out of range.
        Case(
            "NaN temperature", "POST", "/v1/completions", b'{"model": "M", "prompt": "x", "temperature": NaN}'
        ),
        Case("seed past int64", "POST", "/v1/completions", {**comp, "seed": 2**70}),
        Case("max_tokens past context", "POST", "/v1/completions", {**comp, "max_tokens": 10**9}),
        Case("n huge", "POST", "/v1/completions", {**comp, "n": 10**6}),
        Case("negative max_tokens", "POST", "/v1/completions", {**comp, "max_tokens": -1}),
        Case("lone surrogate prompt", "POST", "/v1/completions", b'{"model": "M", "prompt": "\\ud800"}'),
        Case("lone surrogate tokenize", "POST", "/tokenize", b'{"model": "M", "prompt": "\\udfff"}'),
        Case("helixnet no messages", "POST", "/v1/chat/completions", {"model": "helixnet", "messages": []}),
        Case("too many stops", "POST", "/v1/completions", {**comp, "stop": ["x"] * 1000}),
        Case("huge stop", "POST", "/v1/completions", {**comp, "stop": ["y" * 100_000]}),
        Case(
            "schema nested 300 deep",
            "POST",
            "/v1/chat/completions",
            {
                **chat,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": nested_schema(300)},
                },
            },
        ),
        Case(
            "schema 5000 properties",
            "POST",
            "/v1/chat/completions",
            {
                **chat,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "wide",
                        "schema": {
                            "type": "object",
                            "properties": {f"p{i}": {"type": "string"} for i in range(5000)},
                        },
                    },
                },
            },
        ),
        Case(
            "invalid schema",
            "POST",
            "/v1/completions",
            {
                **comp,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": 7}},
                },
            },
        ),
        # Broken bodies.
        Case("not JSON", "POST", "/v1/completions", b"{not json"),
        Case("array body", "POST", "/v1/completions", [1, 2]),
        Case("unknown model", "POST", "/v1/completions", {**comp, "model": "../../etc"}),
        Case("tree import bad node", "POST", "/api/trees/import", {"nodes": [{"id": 1}]}),
        Case(
            "tree import rating count",
            "POST",
            "/api/trees/import",
            {"nodes": [{"text": "a", "rating": 20000}]},
        ),
        Case("feedback bad score", "POST", "/api/sessions/none/feedback", {"score": "sideways"}),
        Case("body too large", "POST", "/v1/completions", b"{" + b" " * (5 * 1024 * 1024) + b"}"),
    ]
    for c in cases:  # the model name inside raw byte bodies
        if isinstance(c.body, bytes):
            c.body = c.body.replace(b'"M"', json.dumps(model).encode())
    return cases


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def send(client: Any, url: str, case: Case, timeout: float) -> str:
    """'4xx', '2xx', '5xx', 'hang' or 'reset' for one case."""
    import httpx

    headers = {"Authorization": f"Bearer {KEY}"} if case.auth else {}
    headers.update(case.headers)
    kwargs: dict[str, Any] = {"headers": headers, "timeout": timeout}
    if isinstance(case.body, bytes):
        kwargs["content"] = case.body
        headers.setdefault("Content-Type", "application/json")
    elif case.body is not None:
        kwargs["json"] = case.body
    try:
        r = client.request(case.method, url + case.path, **kwargs)
    except httpx.TimeoutException:
        return "hang"
    except httpx.TransportError:  # the server closed the connection without an answer
        return "reset"
    return f"{r.status_code // 100}xx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model spec to serve (a tiny folder is fine)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (max 32)")
    parser.add_argument("--rounds", type=int, default=4, help="good+bad request pairs per client")
    parser.add_argument("--repeat", type=int, default=5, help="times the hostile set is sent for memory")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds before a request counts as a hang"
    )
    args = parser.parse_args()
    if not 1 <= args.clients <= 32 or not 1 <= args.rounds <= 20 or not 1 <= args.repeat <= 50:
        sys.exit("--clients must be 1..32, --rounds 1..20, --repeat 1..50")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    import httpx

    from helixloom.engine import load_engine
    from helixloom.server import BackgroundServer, ServerConfig, ServerState
    from helixloom.store import Store

    engine = load_engine(args.model)  # from the usual HELIXLOOM_HOME: its converted model is cached
    home = Path(tempfile.mkdtemp(prefix="hl-robust-"))
    os.environ["HELIXLOOM_HOME"] = str(home)  # everything the server writes goes to a fresh home
    db = home / "robust.db"
    state = ServerState(
        ServerConfig(model=args.model, api_keys={KEY: "bench"}, default_max_tokens=8), engine, Store(db)
    )
    server = BackgroundServer(state)
    url = server.url
    model = state.base_id
    cases = hostile_cases(model)
    client = httpx.Client()

    # Warm-up (first request loads caches), then the hostile set once, by case.
    good = {"model": model, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    client.post(url + "/v1/completions", json=good, headers={"Authorization": f"Bearer {KEY}"}, timeout=300)
    outcome = {c.name: send(client, url, c, args.timeout) for c in cases}
    alive = client.get(url + "/health", timeout=10).status_code == 200

    # Concurrent clients, each alternating a good and a bad request.
    bad_bodies = [{**good, "seed": 2**70}, {**good, "temperature": -5}, {**good, "max_tokens": 10**9}]
    tally = {"good_sent": 0, "good_ok": 0, "bad_sent": 0, "bad_4xx": 0, "other": 0}
    lock = threading.Lock()

    def worker(i: int) -> None:
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client() as c:
            for r in range(args.rounds):
                body = {**good, "prompt": f"Client {i} round {r}: the sky is", "seed": i * 100 + r}
                bad = bad_bodies[(i + r) % len(bad_bodies)]
                try:
                    g = c.post(url + "/v1/completions", json=body, headers=headers, timeout=args.timeout)
                    ok = g.status_code == 200 and isinstance(g.json()["choices"][0]["text"], str)
                except (httpx.HTTPError, ValueError, KeyError):
                    ok = False
                try:
                    refused = (
                        400 <= c.post(url + "/v1/completions", json=bad, headers=headers).status_code < 500
                    )
                except httpx.HTTPError:
                    refused = False
                with lock:
                    tally["good_sent"] += 1
                    tally["bad_sent"] += 1
                    tally["good_ok"] += ok
                    tally["bad_4xx"] += refused
                    tally["other"] += (not ok) + (not refused)

    sessions_before = len(state.store.list_sessions(limit=100_000))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(worker, range(args.clients)))
    concurrent_s = time.perf_counter() - t0
    stored = len(state.store.list_sessions(limit=100_000)) - sessions_before

    # Memory under repeated hostile traffic.
    rss_before = rss_mb()
    for _ in range(args.repeat):
        for c in cases:
            send(client, url, c, args.timeout)
    rss_after = rss_mb()
    alive_after = client.get(url + "/health", timeout=10).status_code == 200
    server.stop()

    counts = {k: sum(1 for v in outcome.values() if v == k) for k in ("4xx", "2xx", "5xx", "hang", "reset")}
    print(
        json.dumps(
            {
                "model": model,
                "hostile_tried": len(cases),
                "clean_4xx": counts["4xx"],
                "accepted": counts["2xx"],
                "server_errors_5xx": counts["5xx"],
                "hangs": counts["hang"],
                "resets": counts["reset"],
                "clean_ratio": round(counts["4xx"] / len(cases), 3),
                "not_refused": {k: v for k, v in outcome.items() if v != "4xx"},
                "alive_after_hostile": alive and alive_after,
                "concurrent_clients": args.clients,
                "concurrent": tally,
                "concurrent_seconds": round(concurrent_s, 1),
                "good_sent": tally["good_sent"],
                "good_stored": stored,
                "stored_ratio": round(stored / max(1, tally["good_sent"]), 3),
                "rss_mb_before": round(rss_before, 1),
                "rss_mb_after": round(rss_after, 1),
                "rss_ratio": round(rss_after / rss_before, 3),
                "hostile_requests_for_rss": args.repeat * len(cases),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
