"""Server throughput under concurrent streaming clients, against the engine's own batched generation.

Starts helixloom's server on a free loopback port (in this process), sends N concurrent streaming
completion requests (``ignore_eos``, so every request makes exactly --tokens tokens) with the
official ``openai`` client, and reports aggregate tokens/s against the
same N requests run straight through the engine as one batch (ratio; target >= 0.85), p50/p95
time to first token and latency, and that every request was stored as a session.

    python benchmarks/server_load.py [--model default] [--clients 8] [--tokens 48] [--rounds 2]

Loopback only; the number of requests and their length are bounded by the flags.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--clients", type=int, default=8, help="concurrent streaming clients (max 64)")
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per request")
    parser.add_argument("--rounds", type=int, default=2, help="waves of --clients requests")
    args = parser.parse_args()
    if not 1 <= args.clients <= 64 or not 1 <= args.rounds <= 10:
        sys.exit("--clients must be 1..64 and --rounds 1..10")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    import openai

    from helixloom.engine import GenerationRequest, sampling
    from helixloom.engine.hf import HFEngine
    from helixloom.server import BackgroundServer, ServerConfig, ServerState
    from helixloom.store import Store

    engine = HFEngine.load(args.model)
    db = Path(tempfile.mkdtemp()) / "bench.db"
    state = ServerState(ServerConfig(model=args.model, max_batch=args.clients), engine, Store(db))
    server = BackgroundServer(state)
    url = server.url
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    questions = [f"Here is a short note about topic number {i}:" for i in range(args.clients)]

    # Baseline: the same requests as one batch straight through the engine.
    params = sampling(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    requests = [GenerationRequest(q, params) for q in questions]
    engine.generate(requests[:1])  # warm-up
    start_t = time.perf_counter()
    direct = engine.generate(requests)
    direct_s = time.perf_counter() - start_t
    direct_tok_s = sum(r.usage.completion_tokens for r in direct) / direct_s

    ttft: list[float] = []
    latency: list[float] = []
    tokens = 0
    lock = threading.Lock()

    def one(question: str) -> None:
        nonlocal tokens
        t0 = time.perf_counter()
        first = None
        stream = client.completions.create(
            model=args.model,
            prompt=question,
            temperature=0,
            max_tokens=args.tokens,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        used = 0
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.perf_counter() - t0
            if chunk.usage:
                used = chunk.usage.completion_tokens
        with lock:
            ttft.append(first if first is not None else float("nan"))
            latency.append(time.perf_counter() - t0)
            tokens += used

    sent = args.clients * args.rounds
    start_t = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(one, questions * args.rounds))
    served_s = time.perf_counter() - start_t
    served_tok_s = tokens / served_s
    server.stop()
    time.sleep(0.5)  # the last sessions are written as their streams close
    stored = len(state.store.list_sessions(limit=100_000))
    report = {
        "benchmark": "server_load",
        "model": args.model,
        "clients": args.clients,
        "requests_sent": sent,
        "new_tokens_per_request": args.tokens,
        "engine_batch_tok_s": round(direct_tok_s, 2),
        "server_aggregate_tok_s": round(served_tok_s, 2),
        "ratio_server_over_engine": round(served_tok_s / direct_tok_s, 3),
        "ttft_s": {"p50": round(percentile(ttft, 0.5), 3), "p95": round(percentile(ttft, 0.95), 3)},
        "latency_s": {"p50": round(percentile(latency, 0.5), 3), "p95": round(percentile(latency, 0.95), 3)},
        "mean_latency_s": round(statistics.mean(latency), 3),
        "batches_run": state.engine.batches_run,
        "largest_batch": state.engine.largest_batch,
        "sessions_stored": stored,
        "all_stored": stored == sent,
    }
    state.close()
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
