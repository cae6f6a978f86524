"""lm-evaluation-harness's own ``local-completions`` model against ``helixloom``'s server, with every
tokenizer option it offers for vLLM-style servers, on the embedded default model.

For each of tokenizer_backend huggingface/remote x tokenized_requests true/false x batch 1/2 it runs
lm-eval's ``loglikelihood`` (echo + logprobs, max_tokens 1, its ``[ctxlen:-1]`` slicing),
``loglikelihood_rolling`` and ``generate_until`` through a real server on loopback, and compares the
log-likelihoods with the model's own, computed in the same run by a forward pass (the baseline).
Prints JSON; ``max_abs_error`` 0 means the harness reads exactly the model's numbers.

Needs lm-eval (``pip install 'lm-eval[api]'``), which helixloom does not depend on; ``--lm-eval-path``
adds a folder where it was installed with ``pip install --target``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._home import bench_home

PAIRS = [
    ("The capital of France is", " Paris"),
    ("Question: How many legs does a spider have?\nAnswer:", " Eight"),
    ("def add(a, b):\n   ", " return a + b"),  # trailing spaces move to the continuation
    ("The quick brown fox", " jumps over the lazy dog."),
]
ROLLING = "Water boils at one hundred degrees Celsius at sea level. It freezes at zero."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm-eval-path", type=Path, help="a folder holding lm_eval (pip install --target)")
    parser.add_argument("--work", type=Path, help="HELIXLOOM_HOME to use (default: a new temporary one)")
    args = parser.parse_args()
    if args.lm_eval_path:
        sys.path.append(str(args.lm_eval_path))  # after the venv: its own packages win
    bench_home(args.work, "lm-eval-compat-")
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.openai_completions import LocalCompletionsAPI
    except ImportError:
        sys.exit("lm-eval is not installed: pip install 'lm-eval[api]' (or pass --lm-eval-path)")
    import torch

    from helixloom import models
    from helixloom.engine.hf import HFEngine
    from helixloom.server import BackgroundServer, ServerConfig, ServerState
    from helixloom.store import Store

    engine = HFEngine.load("default")
    folder = str(models.materialize(models.resolve("default")))
    state = ServerState(ServerConfig(model="default", run_jobs=False), engine, Store.open_default())
    server = BackgroundServer(state)
    tok = engine.tokenizer

    def model_logprob(ids: list[int], last: int) -> float:
        """The model's own log-likelihood of the last ``last`` tokens of ``ids`` (the baseline)."""
        with torch.inference_mode():
            logits = engine.base_model(input_ids=torch.tensor([ids])).logits[0].float()
        lp = torch.log_softmax(logits, dim=-1)
        return sum(float(lp[i - 1, ids[i]]) for i in range(len(ids) - last, len(ids)))

    runs: dict[str, Any] = {}
    try:
        for backend in ("huggingface", "remote"):
            for tokenized in (True, False):
                for batch in (1, 2):
                    started = time.perf_counter()
                    lm = LocalCompletionsAPI(
                        model="default",
                        base_url=server.url + "/v1/completions",
                        tokenizer_backend=backend,
                        tokenizer=folder if backend == "huggingface" else None,
                        tokenized_requests=tokenized,
                        batch_size=batch,
                        max_retries=1,
                    )
                    got = lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(PAIRS)])
                    errors = []
                    for (context, continuation), (ll, _) in zip(PAIRS, got, strict=True):
                        ctx, cont = lm._encode_pair(context, continuation)
                        # Text is read by the server with its BOS first, as vLLM reads it.
                        ids = ctx + cont if tokenized else [tok.bos_token_id, *ctx, *cont]
                        errors.append(abs(ll - model_logprob(ids, len(cont))))
                    whole = Instance("loglikelihood_rolling", {}, (ROLLING,), 0)
                    rolling = lm.loglikelihood_rolling([whole])[0]
                    text_ids = [tok.bos_token_id, *tok(ROLLING, add_special_tokens=False).input_ids]
                    errors.append(abs(rolling - model_logprob(text_ids, len(text_ids) - 1)))
                    gen_args = ("The capital of France is", {"until": ["\n"], "max_gen_toks": 8})
                    generated = lm.generate_until([Instance("generate_until", {}, gen_args, 0)])[0]
                    runs[f"{backend}/tokenized={tokenized}/batch={batch}"] = {
                        "loglikelihoods": len(PAIRS) + 1,
                        "max_abs_error": max(errors),
                        "generated": generated,
                        "seconds": round(time.perf_counter() - started, 2),
                    }
    finally:
        server.stop()
        state.close()
    worst = max(r["max_abs_error"] for r in runs.values())
    report = {"model": "default", "baseline": "the model's own forward pass", "worst_abs_error": worst}
    print(json.dumps({**report, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
