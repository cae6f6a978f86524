"""Server throughput and latency under load, against the engine's own offline batch, in one run.

Starts helixloom's server on a free loopback port (in this process) and drives it with the official
``openai`` client (streaming completions). Two workloads:

- ``uniform``: --clients clients start together, every answer exactly --tokens long (``ignore_eos``),
  for --rounds waves; baseline: the same requests as one batch straight through the engine.
- ``realistic``: --requests requests arriving as a Poisson process (--rate per second), prompts of
  mixed lengths, answers that stop at different lengths (varied max_tokens, stop sequences and EOS),
  a third on each of two LoRA adapters (random, rank 16) and a third on the base; baseline: the
  same requests through the engine's continuous batch offline (all known up front, the same
  --clients rows at most). Also run with every request on one adapter (mixed / same ratio,
  target >= 0.8), and closed-loop at 1 and at 8 concurrent clients for p50/p95 time to first token
  and inter-token latency.

Then the realistic workload against llama-cpp-python's own OpenAI server (``python -m
llama_cpp.server``, in a subprocess on loopback) on the same GGUF, base model only (that server takes
one LoRA per loaded model and reloads the model to switch), and against helixloom's server on the
backend ``helixloom serve`` picks by default (``engine.select``: llama.cpp where it is installed),
with the same thread count: helixloom's aggregate tok/s over that server's (target >= 1.0), for
the llama.cpp backend and for the hf backend's batched server above. helixloom on llama.cpp also runs
the mixed-adapter workload (its adapters exported to GGUF on first use), which that server cannot,
and both workloads against its own engine's offline batch (the default server's server / engine).

Targets: server / engine >= 0.9 on both workloads; requests sent == sessions stored; helixloom /
llama_cpp.server >= 1.0.

    python benchmarks/server_load.py [--model default] [--clients 8] [--requests 24] [--rate 4]
        [--threads N] [--no-llama-server | --only-llama-server]

Loopback only; the number of requests and their length are bounded by the flags.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SENTENCE = "The harbour town kept its old lighthouse, and every evening the keeper climbed the stairs. "


@dataclass(frozen=True)
class Job:
    prompt: str
    model: str  # the server's model name (base or adapter)
    adapter: str | None
    max_tokens: int
    stop: tuple[str, ...]
    ignore_eos: bool = False


@dataclass
class Timing:
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)  # seconds between streamed chunks
    tokens: int = 0
    sent: int = 0
    first_send: float = float("inf")
    last_done: float = 0.0

    @property
    def tok_s(self) -> float:
        return self.tokens / max(1e-9, self.last_done - self.first_send)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def quantiles(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 0.5), 4), "p95": round(percentile(values, 0.95), 4)}


def realistic_jobs(
    n: int, base: str, adapters: list[str], rng: random.Random, *, one: str | None
) -> list[Job]:
    """Mixed prompt lengths (1 to 12 sentences), answers stopping at different lengths; a third of
    the requests on each adapter and a third on the base, or all on ``one``."""
    jobs = []
    for i in range(n):
        prompt = f"Note {i}. " + SENTENCE * rng.randint(1, 12) + "The keeper wrote:"
        model = one or [base, *adapters][i % (len(adapters) + 1)]
        jobs.append(
            Job(
                prompt,
                model,
                None if model == base else model,
                rng.choice([16, 24, 32, 48, 64]),
                rng.choice([(), (), ("\n\n",), (".",)]),
            )
        )
    return jobs


def send(client: Any, job: Job, timing: Timing, lock: threading.Lock) -> None:
    t0 = time.perf_counter()
    stream = client.completions.create(
        model=job.model,
        prompt=job.prompt,
        temperature=0,
        max_tokens=job.max_tokens,
        stop=list(job.stop) or None,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True} if job.ignore_eos else None,
    )
    first, last, gaps, used, pieces = None, None, [], 0, 0
    for chunk in stream:
        now = time.perf_counter()
        if chunk.choices and chunk.choices[0].text:
            pieces += 1
            if first is None:
                first = now - t0
            elif last is not None:
                gaps.append(now - last)
            last = now
        if chunk.usage:
            used = chunk.usage.completion_tokens
    done = time.perf_counter()
    # llama_cpp.server sends no usage when streaming; it streams one token per chunk.
    used = used or pieces
    with lock:
        timing.sent += 1
        timing.first_send = min(timing.first_send, t0)
        timing.last_done = max(timing.last_done, done)
        timing.tokens += used
        if first is not None:
            timing.ttft.append(first)
        timing.itl += gaps


def poisson(client: Any, jobs: list[Job], rate: float, rng: random.Random) -> Timing:
    """Each job sent at its arrival time (exponential gaps at ``rate`` per second), all in flight
    together as they come."""
    timing, lock = Timing(), threading.Lock()
    threads = []
    start = time.perf_counter()
    at = 0.0
    for job in jobs:
        at += rng.expovariate(rate)
        time.sleep(max(0.0, start + at - time.perf_counter()))
        thread = threading.Thread(target=send, args=(client, job, timing, lock))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return timing


def closed_loop(client: Any, jobs: list[Job], clients: int) -> Timing:
    """``clients`` clients, each sending its share of ``jobs`` one after the other."""
    timing, lock = Timing(), threading.Lock()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda job: send(client, job, timing, lock), jobs))
    return timing


def alternated(arms: dict[str, Callable[[], Any]], rounds: int = 2) -> dict[str, list[Any]]:
    """Each arm's results over ``rounds`` rounds, the arms run one after another within a round: one
    run of each is a few seconds, and a single pair swung 0.85-0.98 on a quiet machine."""
    runs: dict[str, list[Any]] = {label: [] for label in arms}
    for _ in range(rounds):
        for label, arm in arms.items():
            runs[label].append(arm())
    return runs


def offline(engine: Any, jobs: list[Job], rows: int) -> float:
    """Tokens/s of the same requests through the engine's continuous batch, all known up front,
    at most ``rows`` decoding together (the server's max_batch): the server's ceiling."""
    from helixloom.engine import GenerationRequest, GenerationResult, sampling

    requests = [
        GenerationRequest(
            j.prompt,
            sampling(temperature=0, max_tokens=j.max_tokens, stop=j.stop, ignore_eos=j.ignore_eos),
            j.adapter,
        )
        for j in jobs
    ]
    batch = engine.open_batch()
    waiting, tokens = list(requests), 0
    start = time.perf_counter()
    while waiting or len(batch):
        if waiting and len(batch) < rows:
            take = rows - len(batch)
            batch.join(waiting[:take])
            waiting = waiting[take:]
        for _, event in batch.step():
            if isinstance(event, GenerationResult):
                tokens += event.usage.completion_tokens
    return tokens / (time.perf_counter() - start)


def make_adapter(engine: Any, folder: Path, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(engine.model_config)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    peft_model = get_peft_model(
        base, LoraConfig(r=16, lora_alpha=16, target_modules=targets, init_lora_weights=False)
    )
    with torch.no_grad():  # small deltas: the model stays fluent, its text changes
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.05)
    peft_model.save_pretrained(folder)


@contextlib.contextmanager
def llama_cpp_server(gguf: Path, alias: str, threads: int, n_ctx: int) -> Iterator[str]:
    """llama-cpp-python's own OpenAI-compatible server on a free loopback port; yields its base URL.
    ``interrupt_requests`` is off: on, a new request cuts the one streaming (fewer tokens, not speed)."""
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
        "--n_threads_batch", str(threads), "--interrupt_requests", "False",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("llama_cpp.server did not start") from None
                time.sleep(0.5)
        yield url + "/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def against_llama_cpp_server(
    args: argparse.Namespace,
    adapters: dict[str, Path],
    mixed: list[Job],
    hf_base_tok_s: float | None,
    work: Path,
) -> dict[str, Any]:
    """The realistic workload on the same GGUF: llama_cpp.server vs helixloom's server on the backend
    ``serve`` picks by default, same threads; base-model requests for the comparison. The hf
    server's figure (``hf_base_tok_s``, None when it did not run) is compared too."""
    import openai

    from helixloom import models
    from helixloom.engine.llamacpp import LlamaCppEngine
    from helixloom.engine.select import choose_engine
    from helixloom.server import BackgroundServer, ServerConfig, ServerState
    from helixloom.store import Store

    chosen = choose_engine(args.model)
    if chosen.backend != "llamacpp":
        return {"skipped": f"helixloom serve runs {args.model} on {chosen.backend}: {chosen.reason}"}
    base = [Job(j.prompt, "default", None, j.max_tokens, j.stop) for j in mixed]
    gguf = models.gguf_file(models.resolve(chosen.spec))
    with llama_cpp_server(gguf, "default", args.threads, 4096) as url:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
        send(client, base[0], Timing(), threading.Lock())  # warm-up
        theirs = poisson(client, base, args.rate, random.Random(args.seed + 1))
    engine = LlamaCppEngine(chosen.spec, n_threads=args.threads)
    state = ServerState(
        ServerConfig(
            model="default", max_batch=args.clients, adapters={k: str(v) for k, v in adapters.items()}
        ),
        engine,
        Store(work / "llamacpp.db"),
    )
    server = BackgroundServer(state)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=600)
        send(client, base[0], Timing(), threading.Lock())  # warm-up
        ours = poisson(client, base, args.rate, random.Random(args.seed + 1))
        adapted = [
            Job(j.prompt, "default" if j.adapter is None else j.model, j.adapter, j.max_tokens, j.stop)
            for j in mixed
        ]
        ours_mixed = poisson(client, adapted, args.rate, random.Random(args.seed + 1))
        # The default server against its own engine's offline batch (what `serve` runs by default),
        # both workloads; each arm starts without reusable prefixes.
        uniform = [
            Job(f"Here is a short note about topic number {i}:", "default", None, args.tokens, (), True)
            for i in range(args.clients)
        ]

        def cold(arm: Callable[[], float]) -> Callable[[], float]:
            def run() -> float:
                engine.clear_cache()
                return arm()

            return run

        runs = alternated(
            {
                "engine_uniform": cold(lambda: offline(engine, uniform, args.clients)),
                "server_uniform": cold(
                    lambda: closed_loop(client, uniform * args.rounds, args.clients).tok_s
                ),
                "engine_realistic": cold(lambda: offline(engine, base, args.clients)),
            }
        )
        own = {label: sum(values) / len(values) for label, values in runs.items()}
    finally:
        server.stop()
        state.close()
    hf = {} if hf_base_tok_s is None else {
        "helixloom_hf_tok_s": round(hf_base_tok_s, 2),
        "ratio_helixloom_hf_over_llama_cpp_server": round(hf_base_tok_s / theirs.tok_s, 3),
    }  # fmt: skip
    return {
        "workload": "realistic, base model only (llama_cpp.server switches LoRAs only by reloading)",
        "threads": args.threads,
        "llama_cpp_server_tok_s": round(theirs.tok_s, 2),
        "llama_cpp_server_ttft_s": quantiles(theirs.ttft),
        "helixloom_llamacpp_tok_s": round(ours.tok_s, 2),
        "helixloom_llamacpp_ttft_s": quantiles(ours.ttft),
        "ratio_helixloom_llamacpp_over_llama_cpp_server": round(ours.tok_s / theirs.tok_s, 3),
        "helixloom_llamacpp_sequences": engine.n_parallel,
        **hf,
        "helixloom_llamacpp_mixed_adapters_tok_s": round(ours_mixed.tok_s, 2),
        "llamacpp_server_over_engine": {
            "uniform": round(own["server_uniform"] / own["engine_uniform"], 3),
            "realistic": round(ours.tok_s / own["engine_realistic"], 3),
            "tok_s": {k: round(v, 2) for k, v in own.items()},
            "note": "helixloom serve on llama.cpp (the default) vs its engine offline; target >= 0.9",
        },
        "tokens": {"llama_cpp_server": theirs.tokens, "helixloom_llamacpp": ours.tokens},
        "token_count": "usage where the server sends it (helixloom), else streamed chunks (one token each)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients and max batch (max 64)")
    parser.add_argument("--tokens", type=int, default=48, help="uniform: new tokens per request")
    parser.add_argument("--rounds", type=int, default=2, help="uniform: waves of --clients requests")
    parser.add_argument("--requests", type=int, default=24, help="realistic: requests per run (max 200)")
    parser.add_argument("--rate", type=float, default=4.0, help="realistic: mean arrivals per second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp threads, both servers"
    )
    parser.add_argument("--no-llama-server", action="store_true", help="skip the llama_cpp.server comparison")
    parser.add_argument(
        "--only-llama-server", action="store_true", help="only the llama_cpp.server comparison (no hf server)"
    )
    args = parser.parse_args()
    if not 1 <= args.clients <= 64 or not 1 <= args.rounds <= 10 or not 1 <= args.requests <= 200:
        sys.exit("--clients must be 1..64, --rounds 1..10 and --requests 1..200")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    import openai

    from helixloom.engine.hf import HFEngine
    from helixloom.server import BackgroundServer, ServerConfig, ServerState
    from helixloom.store import Store

    engine = HFEngine.load(args.model)
    work = Path(tempfile.mkdtemp(prefix="server-load-"))
    adapters = {"tide": work / "tide", "lamp": work / "lamp"}
    for seed, folder in enumerate(adapters.values()):
        make_adapter(engine, folder, seed)
    if args.only_llama_server:
        mixed = realistic_jobs(args.requests, args.model, list(adapters), random.Random(args.seed), one=None)
        report = {"benchmark": "server_load", "model": args.model, **vars(args)}
        report["llama_cpp_server"] = against_llama_cpp_server(args, adapters, mixed, None, work)
        json.dump(report, sys.stdout, indent=2)
        print()
        return
    state = ServerState(
        ServerConfig(
            model=args.model, max_batch=args.clients, adapters={k: str(v) for k, v in adapters.items()}
        ),
        engine,
        Store(work / "bench.db"),
    )
    server = BackgroundServer(state)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=600)
    base = state.base_id
    for name, folder in adapters.items():
        engine.load_adapter(name, str(folder))
    report: dict[str, Any] = {"benchmark": "server_load", "model": args.model, **vars(args)}

    # Uniform: everyone starts together, every answer the same length.
    uniform = [
        Job(f"Here is a short note about topic number {i}:", base, None, args.tokens, (), ignore_eos=True)
        for i in range(args.clients)
    ]
    offline(engine, uniform[:1], 1)  # warm-up, both paths alike
    closed_loop(client, uniform[:2], 2)
    runs = alternated(
        {
            "engine": lambda: offline(engine, uniform, args.clients),
            "server": lambda: closed_loop(client, uniform * args.rounds, args.clients),
        }
    )
    engine_runs, served_runs = runs["engine"], runs["server"]
    engine_uniform = sum(engine_runs) / len(engine_runs)
    served_uniform_tok_s = sum(t.tok_s for t in served_runs) / len(served_runs)
    report["uniform"] = {
        "engine_tok_s": round(engine_uniform, 2),
        "server_tok_s": round(served_uniform_tok_s, 2),
        "ratio_server_over_engine": round(served_uniform_tok_s / engine_uniform, 3),
        "runs": {
            "engine": [round(x, 2) for x in engine_runs],
            "server": [round(t.tok_s, 2) for t in served_runs],
        },
        "ttft_s": quantiles([x for t in served_runs for x in t.ttft]),
    }

    # Realistic: Poisson arrivals, mixed lengths and stops, two adapters and the base.
    rng = random.Random(args.seed)
    mixed = realistic_jobs(args.requests, base, list(adapters), rng, one=None)
    same = [Job(j.prompt, "tide", "tide", j.max_tokens, j.stop) for j in mixed]
    engine.prefix_cache.clear()
    engine_mixed = offline(engine, mixed, args.clients)
    engine.prefix_cache.clear()
    served_mixed = poisson(client, mixed, args.rate, random.Random(args.seed + 1))
    engine.prefix_cache.clear()
    served_same = poisson(client, same, args.rate, random.Random(args.seed + 1))
    engine.prefix_cache.clear()
    one_client = closed_loop(client, mixed[: max(4, args.requests // 4)], 1)
    engine.prefix_cache.clear()
    eight = closed_loop(client, mixed, 8)
    report["realistic"] = {
        "engine_offline_tok_s": round(engine_mixed, 2),
        "server_poisson_tok_s": round(served_mixed.tok_s, 2),
        "ratio_server_over_engine": round(served_mixed.tok_s / engine_mixed, 3),
        "server_same_adapter_tok_s": round(served_same.tok_s, 2),
        "ratio_mixed_over_same_adapter": round(served_mixed.tok_s / served_same.tok_s, 3),
        "poisson_ttft_s": quantiles(served_mixed.ttft),
        "poisson_itl_s": quantiles(served_mixed.itl),
        "clients_1": {
            "tok_s": round(one_client.tok_s, 2),
            "ttft_s": quantiles(one_client.ttft),
            "itl_s": quantiles(one_client.itl),
        },
        "clients_8": {
            "tok_s": round(eight.tok_s, 2),
            "ttft_s": quantiles(eight.ttft),
            "itl_s": quantiles(eight.itl),
        },
    }
    engine.prefix_cache.clear()
    base_only = [Job(j.prompt, base, None, j.max_tokens, j.stop) for j in mixed]
    served_base = poisson(client, base_only, args.rate, random.Random(args.seed + 1))
    report["realistic"]["server_base_only_tok_s"] = round(served_base.tok_s, 2)
    timings = (*served_runs, served_mixed, served_same, one_client, eight, served_base)
    sent = sum(t.sent for t in timings) + 2  # and the two warm-up requests
    scheduler = state.engine
    server.stop()
    time.sleep(0.5)  # the last sessions are written as their streams close
    stored = len(state.store.list_sessions(limit=100_000))
    report["requests_sent"] = sent
    report["sessions_stored"] = stored
    report["all_stored"] = stored == sent
    report["batches_run"] = scheduler.batches_run
    report["largest_batch"] = scheduler.largest_batch
    report["prefix_cache_reused_tokens"] = engine.reused_tokens
    report["adapter_merges"] = engine._merger.merges
    state.close()
    print(json.dumps(report), file=sys.stderr, flush=True)  # kept should the comparison below fail
    if not args.no_llama_server:
        report["llama_cpp_server"] = against_llama_cpp_server(args, adapters, mixed, served_base.tok_s, work)
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
