"""The llamacpp backend on the embedded default GGUF, and PEFT LoRAs exported to GGUF for it.

``make test`` installs llama-cpp-python; run elsewhere without it these tests skip, unless
HELIXLOOM_REQUIRE_LLAMACPP=1 (set by CI) makes a missing backend a failure.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from helixloom.engine import Constraint, GenerationRequest, GenerationResult, StreamDelta, sampling

if os.environ.get("HELIXLOOM_REQUIRE_LLAMACPP") == "1":
    import llama_cpp  # noqa: F401 - fail loudly where the backend must be present
else:
    pytest.importorskip("llama_cpp")

from helixloom.engine.hf import HFEngine
from helixloom.engine.llamacpp import LlamaCppEngine
from tests.conftest import home_at

pytestmark = pytest.mark.default_model
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def home(default_model_home: Path) -> Iterator[Path]:
    with home_at(default_model_home) as home:
        yield home


@pytest.fixture(scope="module")
def lc(home: Path) -> LlamaCppEngine:
    return LlamaCppEngine("llamacpp:default")


@pytest.fixture(scope="module")
def hf(home: Path) -> HFEngine:
    return HFEngine.load("default")


@pytest.fixture(scope="module")
def lora(gemma_loras: dict[str, Path]) -> Path:
    return gemma_loras["rand"]


def greedy(prompt: str = PROMPT, adapter: str | None = None, **kw: object) -> GenerationRequest:
    return GenerationRequest(prompt, sampling(**{"temperature": 0, "max_tokens": 12, **kw}), adapter)


def test_greedy_is_repeatable_and_batch_equals_single(lc: LlamaCppEngine) -> None:
    first = lc.generate([greedy()])[0]
    assert first.text.strip() and first.text == lc.generate([greedy()])[0].text
    batch = lc.generate([greedy("Once upon a time"), greedy(), greedy("1, 2, 3,")])
    assert batch[1].text == first.text
    assert batch[0].text == lc.generate([greedy("Once upon a time")])[0].text
    assert first.usage.prompt_tokens == len(lc.encode(PROMPT))
    assert first.usage.completion_tokens == len(first.token_ids)


def test_sampling_seed_stop_stream(lc: LlamaCppEngine) -> None:
    req = GenerationRequest(PROMPT, sampling(temperature=0.9, max_tokens=16, seed=7))
    assert lc.generate([req])[0].text == lc.generate([req])[0].text
    full = lc.generate([greedy(max_tokens=24, ignore_eos=True)])[0]
    stop = full.text[len(full.text) // 2 :][:3]
    cut = lc.generate([greedy(max_tokens=24, ignore_eos=True, stop=[stop])])[0]
    assert cut.text == full.text[: full.text.index(stop)] and cut.finish_reason == "stop"
    events = list(lc.stream(greedy(max_tokens=10)))
    assert isinstance(events[-1], GenerationResult)
    assert "".join(e.text for e in events if isinstance(e, StreamDelta)) == events[-1].text


def test_gemma_markers_never_reach_text(
    lc: LlamaCppEngine, hf: HFEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gemma 3 leaves <start_of_image> unmarked (a user-defined token, like its HTML tags): both
    backends still keep it, and every control token, out of text; the HTML tag stays text."""
    marker, table, turn = 255999, 168, 106  # <start_of_image>, <table>, <end_of_turn>
    for engine in (lc, hf):
        assert {marker, 256000, 5, turn} <= engine.special_ids and table not in engine.special_ids
    words = lc.tokenize(" cats purr", add_special_tokens=False)
    script = [marker, words[0], turn, table, *words[1:]]
    scripted = iter(script)
    monkeypatch.setattr(lc, "_sample_token", lambda *_a: next(scripted))  # what the sampler "picks"
    events = list(lc.stream(greedy(max_tokens=len(script))))
    result = events[-1]
    assert isinstance(result, GenerationResult) and result.token_ids == tuple(script)
    assert result.text == " cats<table> purr"
    assert "".join(e.text for e in events if isinstance(e, StreamDelta)) == result.text
    scripted = iter(script)
    shown = lc.generate([greedy(max_tokens=len(script), skip_special_tokens=False)])[0]
    assert shown.text == "<start_of_image> cats<end_of_turn><table> purr"


def test_logprobs_agree_with_hf(lc: LlamaCppEngine, hf: HFEngine) -> None:
    [a] = lc.next_token_logprobs([PROMPT], top_k=5, candidates=[" Paris"])
    [b] = hf.next_token_logprobs([PROMPT], top_k=5, candidates=[" Paris"])
    assert a.top[0].token_id == b.top[0].token_id  # same top token
    # Q4_K weights: llama.cpp multiplies them quantized (with Q8 activations), transformers
    # de-quantized in float32; the log-probs agree to a few hundredths.
    assert a.candidates[" Paris"] is not None and b.candidates[" Paris"] is not None
    assert abs(a.candidates[" Paris"] - b.candidates[" Paris"]) < 0.15


def test_exported_lora_shifts_like_the_peft_adapter(lc: LlamaCppEngine, hf: HFEngine, lora: Path) -> None:
    """Next-token distributions, as total variation over the top-20 tokens of each side.

    Tolerance: with Q4_K weights, llama.cpp multiplies quantized (Q8 activations) while transformers
    uses the de-quantized floats, so even the base models differ by TV ~0.01-0.02; a large random
    LoRA amplifies that to TV <= ~0.2 (measured 0.01-0.18). An export with a wrong scale, orientation
    or row order moves llama.cpp as far from PEFT as the adapter moves the model (TV >= 0.5).
    """
    hf.load_adapter("rand", str(lora))
    lc.load_adapter("rand", str(lora))  # finds adapter_model.gguf in the folder

    def dist(engine: HFEngine | LlamaCppEngine, adapter: str | None, prompt: str) -> dict[int, float]:
        top = engine.next_token_logprobs([prompt], adapter=adapter, top_k=20)[0].top
        return {t.token_id: math.exp(t.logprob) for t in top}

    def tv(x: dict[int, float], y: dict[int, float]) -> float:
        return 0.5 * sum(abs(x.get(t, 0.0) - y.get(t, 0.0)) for t in set(x) | set(y))

    for prompt in (PROMPT, "Once upon a time there was", "def fibonacci(n):"):
        hf_base, hf_lora = dist(hf, None, prompt), dist(hf, "rand", prompt)
        lc_base, lc_lora = dist(lc, None, prompt), dist(lc, "rand", prompt)
        assert tv(hf_base, lc_base) < 0.05
        effect = tv(hf_base, hf_lora)
        assert effect > 0.3, "the adapter must change the distribution for the comparison to mean anything"
        assert tv(hf_lora, lc_lora) < min(0.25, 0.35 * effect)


# Long enough to reuse: a prefix is reused in whole 32-token chunks (llamacpp_seqs.PREFILL_CHUNK).
LONG = (
    "The history of the printing press begins in China, where woodblock printing was used for "
    "centuries before Johannes Gutenberg built a press with movable metal type in Mainz around 1440."
)


def test_prefix_cache_is_keyed_by_adapter(lc: LlamaCppEngine, lora: Path) -> None:
    lc.load_adapter("rand", str(lora))
    fresh = LlamaCppEngine("llamacpp:default")
    expected_base = fresh.generate([greedy(LONG)])[0].text
    with_adapter = lc.generate([greedy(LONG, adapter="rand")])[0].text
    assert with_adapter != expected_base
    # Same prompt right after, without the adapter: KV computed under the LoRA must not be reused.
    hits = lc.prefix_hits
    assert lc.generate([greedy(LONG)])[0].text == expected_base
    assert lc.prefix_hits == hits
    assert lc.generate([greedy(LONG)])[0].text == expected_base  # reused exactly
    assert lc.prefix_hits > hits  # same adapter, same prompt: the prefix is reused
    fresh.close()


def test_constraints_on_llamacpp(lc: LlamaCppEngine) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    out = lc.generate(
        [
            GenerationRequest(
                "Answer in JSON. The capital of France:",
                sampling(temperature=0, max_tokens=30),
                None,
                Constraint.json_schema(schema),
            )
        ]
    )[0]
    assert isinstance(json.loads(out.text)["city"], str)
    pick = lc.generate([GenerationRequest("Yes or no?", sampling(temperature=0, max_tokens=4), None,
                                          Constraint.choice(["yes", "no"]))])[0]  # fmt: skip
    assert pick.text in ("yes", "no")


def test_helixnet_once_on_llamacpp(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from helixloom.cli import main

    code = main(["chat", "--base", "llamacpp:default", "--once", "Why is the sky blue?", "--json",
                 "--max-tokens", "24", "--seed", "0"])  # fmt: skip
    body = json.loads(capsys.readouterr().out)
    assert code == 0
    assert body["actor"] and body["stages"][0]["model"] == "llamacpp:default"
    assert math.isfinite(body["timings"]["actor"])


@pytest.fixture(scope="module")
def llama_server(home: Path) -> Iterator[str]:
    """llama-cpp-python's own OpenAI-compatible server on loopback: a server nobody here wrote."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from helixloom.models import default_gguf

    pytest.importorskip("sse_starlette")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # llama_cpp.server has no flag for llama.cpp's --no-repack; the engine loads the plain weight
    # layout (llamacpp_seqs.plain_weights: the repacked kernels give a row other numbers in a batch
    # than alone), so the server loads it too. Same library, same settings: the same numbers (with
    # the server's stock repacked layout its log-probs differed from the engine's by 0.08).
    launch = (
        "import runpy\n"
        "from helixloom.engine.llamacpp_seqs import plain_weights\n"
        "with plain_weights():\n"
        "    runpy.run_module('llama_cpp.server', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", launch, "--model", str(default_gguf()), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--model_alias", "gemma"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, "llama_cpp.server exited"
                assert time.time() < deadline, "llama_cpp.server did not start"
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_remote_engine_on_llama_cpp_server(llama_server: str, lc: LlamaCppEngine) -> None:
    from helixloom.engine.remote import RemoteEngine
    from helixloom.helixnet import HelixNet, Role

    remote = RemoteEngine(f"openai:{llama_server}/v1#gemma")
    got = remote.generate([greedy(max_tokens=10)])[0]
    assert got.text == lc.generate([greedy(max_tokens=10)])[0].text  # same library, same greedy text
    assert got.usage.completion_tokens == 10 and got.finish_reason == "length"
    events = list(remote.stream(greedy(max_tokens=8)))
    assert "".join(e.text for e in events if isinstance(e, StreamDelta)) == events[-1].text  # type: ignore[union-attr]
    # llama_cpp.server keeps every logit (logits_all defaults to True there), so it scores tokens:
    # the remote engine's top tokens are the in-process engine's, with their log-probs.
    [scored] = remote.next_token_logprobs([PROMPT], top_k=5, candidates=[" Paris"])
    [local] = lc.next_token_logprobs([PROMPT], top_k=5, candidates=[" Paris"])
    assert len(scored.top) == 5 and scored.top[0].token == local.top[0].token
    remote_top = {t.token: t.logprob for t in scored.top}
    for t in local.top[:3]:
        assert remote_top[t.token] == pytest.approx(t.logprob, abs=1e-3), t.token
    assert scored.candidates[" Paris"] == pytest.approx(local.candidates[" Paris"], abs=1e-3)
    role = Role(remote, None, sampling(temperature=0, max_tokens=12))
    turn = HelixNet(role, role, role).answer("Why is the sky blue?")
    assert len(turn.stages) == 3 and all(s.model.startswith("openai:") for s in turn.stages)
