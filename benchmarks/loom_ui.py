"""Loom UI: how long trees of 100, 1,000 and 10,000 nodes take to open and to navigate in Chromium,
and how long the store takes to save one node. Prints JSON.

Trees are shaped like loom sessions (a node's parent is the newest node, or one of the 200 before
it: 10,000 nodes come out about 170 levels deep, with bursts of siblings). Each is written node by
node with ``Store.add_node`` (one commit per node, as the loom saves every change as it happens), so
the write figure is per saved change, measured at every tree size; the bulk path an import takes
(``Store.add_nodes``, one transaction) is timed beside it. In Chromium (Debian's, through
Playwright), "open" is from asking the server for the tree to the page drawn (the page's own clock,
``window.loomTimings``; "fetch" is the server's answer, transfer and JSON parsing within it), and
each navigation step is a key press (parent, siblings, child) until the next frame is painted.

Baseline in the same run: the 100-node tree (ratios for 1,000 and 10,000 nodes), and 100 ms, the
pause people notice (a step under it reads as instant).

    python benchmarks/loom_ui.py [--sizes 100,1000,10000] [--steps 24] [--model default]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._home import bench_home

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PAUSE_MS = 100.0
KEYS = ["ArrowLeft", "ArrowLeft", "ArrowUp", "ArrowDown", "ArrowRight", "ArrowDown", "ArrowLeft", "ArrowUp"]


def build_tree(store: Any, size: int, seed: int) -> dict[str, Any]:
    """Write a ``size``-node tree one node (one commit) at a time; returns its id, a deep node and the
    write times in ms per node (all of them, and the last 100: does a save slow down as trees grow?)."""
    rng = random.Random(seed)
    tree = f"bench{size}-{seed}"
    times: list[float] = []
    t = time.perf_counter()
    ids = [store.add_node(tree, None, "In the beginning", author="human").id]
    times.append(time.perf_counter() - t)
    for i in range(size - 1):
        parent = ids[-1] if rng.random() < 0.3 else rng.choice(ids[-200:])
        words = " ".join(rng.choice(("rain", "stone", "river", "lamp", "ink", "salt")) for _ in range(8))
        t = time.perf_counter()
        node = store.add_node(
            tree, parent, f" {i}: {words}.", author="model", model="model", meta={"source": "roll"}
        )
        times.append(time.perf_counter() - t)
        ids.append(node.id)
    return {
        "tree": tree,
        "deep": ids[-1],
        "write_ms_per_node": round(1000 * statistics.mean(times), 3),
        "write_ms_last_100": round(1000 * statistics.mean(times[-100:]), 3),
    }


def bulk_ms_per_node(store: Any, size: int) -> float:
    """The import path: the same shape in one ``add_nodes`` transaction."""
    from helixloom.store.trees import NewNode, node_id

    rng = random.Random(1)
    tree = f"bulk{size}"
    root = store.add_node(tree, None, "In the beginning")
    ids, specs = [root.id], []
    for i in range(size - 1):
        parent = ids[-1] if rng.random() < 0.3 else rng.choice(ids[-200:])
        specs.append(NewNode(parent, f" {i}.", author="model"))
        ids.append(node_id(parent, f" {i}.", tree))
    t = time.perf_counter()
    store.add_nodes(tree, specs)
    return round(1000 * (time.perf_counter() - t) / max(1, len(specs)), 4)


def measure_page(page: Any, url: str, built: dict[str, Any], steps: int) -> dict[str, Any]:
    page.goto("about:blank")
    started = time.perf_counter()
    page.goto(f"{url}/#tree={built['tree']}&node={built['deep']}")
    page.wait_for_function("window.loomTimings && window.loomTimings.open_ms !== null", timeout=300_000)
    wall = time.perf_counter() - started
    timings = page.evaluate("window.loomTimings")
    nav = [
        page.evaluate(
            """(key) => new Promise((done) => { const t = performance.now();
            document.dispatchEvent(new KeyboardEvent('keydown', {key}));
            requestAnimationFrame(() => setTimeout(() => done(performance.now() - t), 0)); })""",
            KEYS[i % len(KEYS)],
        )
        for i in range(steps)
    ]
    nav.sort()
    return {
        "open_ms": round(timings["open_ms"], 1),
        "open_fetch_ms": round(timings["fetch_ms"], 1),
        "open_wall_ms_with_page_load": round(1000 * wall, 1),
        "nav_median_ms": round(statistics.median(nav), 1),
        "nav_p90_ms": round(nav[int(0.9 * (len(nav) - 1))], 1),
        "nav_max_ms": round(nav[-1], 1),
        "nav_steps_under_100ms": sum(x < PAUSE_MS for x in nav),
        "nav_steps": len(nav),
        "nodes_drawn": page.evaluate("graph.pos.size"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="tree sizes, comma-separated (max 20000)")
    parser.add_argument("--steps", type=int, default=24, help="navigation key presses per tree")
    parser.add_argument("--model", default="default", help="model the server loads (rolls are not timed)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the benchmark's HELIXLOOM_HOME")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if not sizes or any(not 2 <= s <= 20_000 for s in sizes) or not 1 <= args.steps <= 500:
        sys.exit("--sizes must be 2..20000 each, --steps 1..500")
    if not os.path.exists(CHROMIUM):
        sys.exit(f"no Chromium at {CHROMIUM}")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    home = bench_home(args.work, "hl-loomui-")

    import httpx
    from playwright.sync_api import sync_playwright

    from helixloom import loom
    from helixloom.engine import load_engine
    from helixloom.server import BackgroundServer, ServerConfig, ServerState
    from helixloom.store import Store

    engine = load_engine(args.model)
    store = Store(home / "helixloom.db")
    state = ServerState(ServerConfig(model=args.model), engine, store)
    server = BackgroundServer(state)
    rows: dict[int, dict[str, Any]] = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            for size in sizes:
                built = build_tree(store, size, seed=size)
                httpx.get(f"{server.url}/api/trees", timeout=300)  # warm the server's first request
                api: list[float] = []
                for _ in range(3):
                    t = time.perf_counter()
                    body = httpx.get(f"{server.url}/api/trees/{built['tree']}", timeout=300).content
                    api.append(1000 * (time.perf_counter() - t))
                server_ms = statistics.median(api)
                t = time.perf_counter()
                loom.mark(store, built["deep"], visited=True)
                mark_ms = 1000 * (time.perf_counter() - t)
                rows[size] = {
                    "nodes": size,
                    "depth": len(loom.branch(store, built["deep"])),
                    "write_ms_per_node": built["write_ms_per_node"],
                    "write_ms_last_100": built["write_ms_last_100"],
                    "bulk_import_ms_per_node": bulk_ms_per_node(store, size),
                    "mark_visited_ms": round(mark_ms, 2),
                    "api_tree_ms_median_of_3": round(server_ms, 1),
                    "api_tree_bytes": len(body),
                    **measure_page(page, server.url, built, args.steps),
                }
            browser.close()
    finally:
        server.stop()
    base = rows[min(rows)]
    for row in rows.values():
        row["open_vs_smallest"] = round(row["open_ms"] / base["open_ms"], 2)
        row["nav_median_vs_smallest"] = round(row["nav_median_ms"] / max(base["nav_median_ms"], 0.1), 2)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(
        json.dumps(
            {
                "benchmark": "loom_ui",
                "baseline": f"the {min(rows)}-node tree in the same run; {PAUSE_MS:.0f} ms = a visible pause",
                "cpu_count": os.cpu_count(),
                "load_average_1m": round(load, 2) if load is not None else None,
                "trees": list(rows.values()),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
