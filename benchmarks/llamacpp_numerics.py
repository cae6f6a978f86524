"""Where llama.cpp gives a row other numbers in a batch than alone: the evidence behind the llamacpp
engine's parallel decoding (``helixloom/engine/llamacpp_batch.py``, ``llamacpp_seqs.py``).

On the embedded default GGUF, through llama-cpp-python's low-level API, prints one JSON object:

- ``decode``: for the repacked (stock) and the plain weight layout, without and with a LoRA, and n =
  1..8 rows: --steps greedy steps of n sequences in one ``llama_decode`` each; the largest logit
  difference from the same sequence decoded alone before the texts part, and the first
  (step, row, difference); and the median time of one step (n tokens) with its speed-up over one row.
- ``prefix``: a prompt of L tokens computed fresh vs its first L-k positions kept from earlier and
  the last k recomputed (how a prefix cache reuses one); the last position's largest logit difference.

    python benchmarks/llamacpp_numerics.py [--steps 16] [--threads 1] [--lora FILE.gguf]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from typing import Any

PROMPTS = [
    "The capital of France is",
    "Once upon a time there was a little",
    "def fibonacci(n):",
    "The three laws of thermodynamics are",
    "In 1492, Columbus sailed",
    "A recipe for pancakes: first,",
    "The quick brown fox jumps over",
    "My favourite programming language is",
]


class Probe:
    """One model (a weight layout) and an 8-sequence context on it."""

    def __init__(self, gguf: str, repack: bool, threads: int, lora: str | None) -> None:
        import llama_cpp as lc

        self.lc = lc
        params = lc.llama_model_default_params()
        params.use_extra_bufts = repack
        self.model = lc.llama_model_load_from_file(gguf.encode(), params)
        self.lora = lc.llama_adapter_lora_init(self.model, lora.encode()) if lora else None
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        cp = lc.llama_context_default_params()
        cp.n_ctx, cp.n_seq_max, cp.kv_unified = 8 * 512, 8, False
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as llama-cpp-python's Llama (the engine)
        self.ctx = lc.llama_init_from_model(self.model, cp)
        self.memory = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(512, 0, 1)

    def tokens(self, text: str) -> list[int]:
        buf = (self.lc.llama_token * 256)()
        n = self.lc.llama_tokenize(self.vocab, text.encode(), len(text.encode()), buf, 256, True, True)
        return list(buf[:n])

    def adapter(self, on: bool) -> None:
        if on and self.lora:
            handles = (self.lc.llama_adapter_lora_p_ctypes * 1)(self.lora)
            self.lc.llama_set_adapters_lora(self.ctx, handles, 1, (ctypes.c_float * 1)(1.0))
        else:
            self.lc.llama_set_adapters_lora(self.ctx, None, 0, None)

    def decode(self, entries: list[tuple[int, int, int]], logits: list[bool] | None = None) -> list[Any]:
        """(sequence, position, token) entries in one batch; the logits of those that ask ([V] each,
        all of them by default)."""
        import numpy as np

        b = self.batch
        wants = logits or [True] * len(entries)
        b.n_tokens = len(entries)
        for j, (seq, pos, token) in enumerate(entries):
            b.token[j], b.pos[j], b.n_seq_id[j], b.seq_id[j][0], b.logits[j] = token, pos, 1, seq, wants[j]
        assert self.lc.llama_decode(self.ctx, b) == 0
        return [
            np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, j), shape=(self.n_vocab,)).copy()
            for j in range(len(entries))
            if wants[j]
        ]

    def prompt(self, seq: int, ids: list[int], start: int = 0) -> Any:
        """Compute ``ids`` at positions ``start``.. of ``seq`` in one batch; the last one's logits."""
        entries = [(seq, start + i, t) for i, t in enumerate(ids)]
        return self.decode(entries, [i == len(ids) - 1 for i in range(len(ids))])[0]

    def run(self, prompts: list[str], steps: int) -> tuple[list[list[Any]], list[list[int]], float]:
        """Greedy decoding of the prompts together, each prompt computed alone first: per row its
        logits and tokens per step, and the median seconds of one step."""
        self.lc.llama_memory_clear(self.memory, True)
        nxt, pos = [], []
        for s, text in enumerate(prompts):
            ids = self.tokens(text)
            nxt.append(int(self.prompt(s, ids).argmax()))
            pos.append(len(ids))
        rows: list[list[Any]] = [[] for _ in prompts]
        made: list[list[int]] = [[t] for t in nxt]
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            out = self.decode([(s, pos[s], nxt[s]) for s in range(len(prompts))])
            times.append(time.perf_counter() - t0)
            for s, logits in enumerate(out):
                rows[s].append(logits)
                nxt[s] = int(logits.argmax())
                made[s].append(nxt[s])
                pos[s] += 1
        return rows, made, statistics.median(times)


def decode_table(probe: Probe, steps: int, lora: bool) -> dict[str, Any]:
    """Each n against the same prompts decoded alone (n = 1 runs them one by one)."""
    import numpy as np

    probe.adapter(lora)
    alone = [probe.run([p], steps) for p in PROMPTS]
    one_step = statistics.median(a[2] for a in alone)
    table: dict[str, Any] = {}
    for n in range(1, 9):
        rows, made, step = probe.run(PROMPTS[:n], steps)
        worst, first = 0.0, None
        for s in range(n):
            for k in range(steps):
                diff = float(np.abs(rows[s][k] - alone[s][0][0][k]).max())
                if diff and (first is None or k < first[0]):
                    first = (k, s, round(diff, 4))
                worst = max(worst, diff)
                if made[s][k + 1] != alone[s][1][0][k + 1]:
                    break  # past here the two compute different tokens
        table[f"n{n}"] = {
            "max_logit_diff_vs_alone": round(worst, 4),
            "first_diff_step_row_diff": first,
            "greedy_rows_equal": sum(made[s] == alone[s][1][0] for s in range(n)),
            "step_ms": round(1000 * step, 1),
            "speedup_over_one_row": round(n * one_step / step, 2),
        }
    return table


def prefix_table(probe: Probe, lora: bool) -> dict[str, Any]:
    """Last-position logits of a fresh prompt vs its first L-k positions kept and k recomputed."""
    import numpy as np

    probe.adapter(lora)
    out: dict[str, Any] = {}
    for length in (5, 8, 12, 20, 40):
        ids = [probe.tokens("x")[0]] + [1000 + 13 * i for i in range(length - 1)]
        probe.lc.llama_memory_clear(probe.memory, True)
        fresh = probe.prompt(0, ids)
        diffs = {}
        for k in (1, 2, 4):
            probe.lc.llama_memory_seq_rm(probe.memory, 1, 0, -1)
            probe.prompt(1, ids[: length - k])
            again = probe.prompt(1, ids[length - k :], length - k)
            diffs[f"k{k}"] = round(float(np.abs(again - fresh).max()), 4)
        out[f"L{length}"] = diffs
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lora", help="a GGUF LoRA for the default model (default: a random one)")
    args = parser.parse_args()

    import llama_cpp as lc

    from helixloom import models

    lc.llama_backend_init()
    quiet = lc.llama_log_callback(lambda *_: None)
    lc.llama_log_set(quiet, ctypes.c_void_p(0))
    gguf = str(models.default_gguf())
    lora = args.lora or random_lora(gguf)
    report: dict[str, Any] = {"benchmark": "llamacpp_numerics", "threads": args.threads, "steps": args.steps}
    for repack in (True, False):
        probe = Probe(gguf, repack, args.threads, lora)
        layout = "repacked" if repack else "plain"
        for with_lora in (False, True):
            name = f"{layout}{'_lora' if with_lora else ''}"
            report[f"decode_{name}"] = decode_table(probe, args.steps, with_lora)
            report[f"prefix_{name}"] = prefix_table(probe, with_lora)
            print(json.dumps({name: report[f"decode_{name}"]}), file=sys.stderr, flush=True)
    json.dump(report, sys.stdout, indent=2)
    print()


def random_lora(gguf: str) -> str:
    """A rank-8 random LoRA on q, v, o and down (std 0.04, like the tests'), exported to GGUF."""
    import tempfile
    from pathlib import Path

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from helixloom import gguf_lora, models

    folder = Path(tempfile.mkdtemp(prefix="numerics-lora-"))
    base = AutoModelForCausalLM.from_pretrained(str(models.materialize(models.resolve("default"))))
    torch.manual_seed(0)
    peft_model = get_peft_model(
        base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])
    )
    with torch.no_grad():
        for pname, p in peft_model.named_parameters():
            if "lora_" in pname:
                p.normal_(0, 0.04)
    peft_model.save_pretrained(folder)
    out = folder / "adapter_model.gguf"
    gguf_lora.export(folder, gguf_lora.base_gguf_for("default"), out)
    return str(out)


if __name__ == "__main__":
    main()
