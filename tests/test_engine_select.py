"""Which backend runs a model for inference (``engine.select``), and what the llamacpp backend does
to be chosen by default: PEFT adapters exported to GGUF on first use (never stale), prompt
log-probabilities and regex constraints like the hf backend's.

The choice itself is checked without loading anything; the rest runs the embedded default model.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from helixloom import gguf_lora
from helixloom.engine import Constraint, GenerationRequest, sampling
from helixloom.engine import select as sel
from helixloom.engine.hf import HFEngine
from helixloom.engine.select import choose_engine
from helixloom.errors import HelixloomError
from tests.conftest import TinyModel, home_at

needs_llamacpp = pytest.mark.skipif(
    not sel.llamacpp_installed() and os.environ.get("HELIXLOOM_REQUIRE_LLAMACPP") != "1",
    reason="llama-cpp-python is not installed",
)


# ---------------------------------------------------------------------------- the choice


@needs_llamacpp
def test_auto_runs_a_gguf_model_on_llamacpp(tmp_path: Path) -> None:
    chosen = choose_engine("default")
    assert (chosen.spec, chosen.backend) == ("llamacpp:default", "llamacpp")
    assert "--engine hf for hidden states" in chosen.reason  # what it cannot do is said up front
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    assert choose_engine(str(gguf)).spec == f"llamacpp:{gguf.resolve()}"
    assert choose_engine("default", "llamacpp").backend == "llamacpp"
    assert choose_engine("llamacpp:default").spec == "llamacpp:default"  # the spec form still works


@needs_llamacpp
def test_auto_picks_hf_for_what_llamacpp_cannot_do() -> None:
    chosen = choose_engine("default", needs=["supports_embeddings"])
    assert (chosen.spec, chosen.backend) == ("default", "hf")
    assert "cannot give hidden states" in chosen.reason
    # Asked for by name, the same need is an error, never a silent loss of the feature.
    with pytest.raises(HelixloomError, match=r"hidden states.*--engine hf"):
        choose_engine("default", "llamacpp", needs=["supports_embeddings"])
    with pytest.raises(HelixloomError, match="hidden states"):
        choose_engine("llamacpp:default", needs=["supports_embeddings"])


def test_hf_when_asked_or_when_the_model_is_no_gguf(tiny_model: TinyModel) -> None:
    assert choose_engine("default", "hf") == sel.EngineSelection("default", "hf", "asked for (--engine hf)")
    folder = str(tiny_model.path)
    assert choose_engine(folder).backend == "hf"
    with pytest.raises(HelixloomError, match="not a GGUF model"):
        choose_engine(folder, "llamacpp")


def test_contradictions_are_errors() -> None:
    with pytest.raises(HelixloomError, match="contradicts"):
        choose_engine("llamacpp:default", "hf")
    with pytest.raises(HelixloomError, match="another server"):
        choose_engine("openai:http://127.0.0.1:9/v1#m", "llamacpp")
    assert choose_engine("openai:http://127.0.0.1:9/v1#m").backend == "remote"
    with pytest.raises(HelixloomError, match="unknown engine"):
        choose_engine("default", "vllm")  # type: ignore[arg-type]
    with pytest.raises(HelixloomError, match="unknown capability"):
        choose_engine("default", needs=["supports_telepathy"])


def test_without_llama_cpp_everything_runs_on_hf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sel, "llamacpp_installed", lambda: False)
    chosen = choose_engine("default")
    assert (chosen.spec, chosen.backend, chosen.reason) == (
        "default",
        "hf",
        "llama-cpp-python is not installed",
    )
    with pytest.raises(HelixloomError, match="needs llama-cpp-python"):
        choose_engine("default", "llamacpp")


def test_engine_flag_reaches_the_choice(tiny_model: TinyModel, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI only passes the flag: a contradiction fails before anything loads."""
    from helixloom.cli import main

    assert main(["generate", "hi", "--model", "llamacpp:default", "--engine", "hf"]) == 2
    assert "contradicts" in capsys.readouterr().err
    code = main(["generate", "Paris is", "--model", str(tiny_model.path), "--max-tokens", "2", "--json"])
    assert code == 0
    assert "runs on hf (not a GGUF model)" in capsys.readouterr().err


# ---------------------------------------------------------------------------- on the default model


@pytest.fixture(scope="module")
def home(default_model_home: Path) -> Iterator[Path]:
    with home_at(default_model_home) as home:
        yield home


@pytest.fixture(scope="module")
def hf(home: Path) -> HFEngine:
    return HFEngine.load("default")


@pytest.fixture(scope="module")
def lc(home: Path) -> Iterator[object]:
    engine = sel.load_for_inference("default", announce=False)
    yield engine
    engine.close()


def _greedy(adapter: str | None = None) -> GenerationRequest:
    return GenerationRequest("The capital of France is", sampling(temperature=0, max_tokens=10), adapter)


@pytest.mark.default_model
@needs_llamacpp
def test_default_model_loads_on_llamacpp_under_its_own_name(lc: object) -> None:
    from helixloom.engine.llamacpp import LlamaCppEngine

    assert isinstance(lc, LlamaCppEngine)
    assert lc.model_name == "default"  # what sessions record: the model as the user named it


@pytest.mark.default_model
@needs_llamacpp
def test_peft_adapter_is_exported_on_first_use_and_again_when_retrained(
    lc: object, gemma_loras: dict[str, Path], tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helixloom.engine.llamacpp import LlamaCppEngine
    from helixloom.engine.lora_folder import adapter_version

    assert isinstance(lc, LlamaCppEngine)
    folder = tmp_path / "mine"
    shutil.copytree(gemma_loras["rand"], folder)
    # A GGUF beside it that nothing vouches for (no version stamp, as older exports wrote) is not used.
    (folder / gguf_lora.GGUF_ADAPTER_FILE).write_bytes(
        (gemma_loras["rand2"] / "adapter_model.gguf").read_bytes()
    )
    lc.load_adapter("other", str(gemma_loras["rand2"]))
    other = lc.generate([_greedy("other")])[0].text
    v1 = adapter_version(folder)
    info = lc.load_adapter("mine-1", str(folder))
    assert info.version == v1 and Path(info.path) == folder / f"adapter_model.{v1}.gguf"
    assert gguf_lora.stamped_version(Path(info.path)) == v1
    first = lc.generate([_greedy("mine-1")])[0].text
    assert first not in (lc.generate([_greedy()])[0].text, other)

    # Retrained in place: the other LoRA's weights under the same folder. A new version, a new export,
    # the old cache gone, and the text is the new weights' (what the other LoRA gives on its own).
    shutil.copy(gemma_loras["rand2"] / "adapter_model.safetensors", folder / "adapter_model.safetensors")
    info2 = lc.load_adapter("mine-2", str(folder))
    assert info2.version == adapter_version(folder) != v1
    assert not (folder / f"adapter_model.{v1}.gguf").exists()
    assert lc.generate([_greedy("mine-2")])[0].text == other
    assert lc.generate([_greedy("mine-1")])[0].text == first  # the loaded old version is untouched
    # Loaded again, the cached export is reused as it is.
    mtime = Path(info2.path).stat().st_mtime_ns
    lc.load_adapter("mine-3", str(folder))
    assert Path(info2.path).stat().st_mtime_ns == mtime
    # `adapters export-gguf` stamps what it writes, so the backend takes it as it is.
    from helixloom.cli import main

    monkeypatch.setenv("HELIXLOOM_HOME", str(home))
    assert main(["adapters", "export-gguf", str(folder), "--base", "default"]) == 0
    info4 = lc.load_adapter("mine-4", str(folder))
    assert Path(info4.path) == folder / gguf_lora.GGUF_ADAPTER_FILE and info4.version == info2.version
    for name in ("mine-1", "mine-2", "mine-3", "mine-4", "other"):
        lc.unload_adapter(name)


@pytest.mark.default_model
@needs_llamacpp
def test_an_export_on_first_use_does_not_hold_up_generation(
    lc: object, gemma_loras: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old code exported under the engine's lock: every request waited for the export."""
    import threading

    from helixloom.engine.llamacpp import LlamaCppEngine

    assert isinstance(lc, LlamaCppEngine)
    folder = tmp_path / "slow"
    shutil.copytree(gemma_loras["rand"], folder)
    for cached in folder.glob("adapter_model*.gguf"):  # exports other tests left beside it
        cached.unlink()
    config = json.loads((folder / "adapter_config.json").read_text())  # content no cache holds yet
    (folder / "adapter_config.json").write_text(json.dumps({**config, "revision": tmp_path.name}))
    exporting, release = threading.Event(), threading.Event()
    real_export = gguf_lora.export

    def slow_export(*args: object, **kw: object) -> object:
        exporting.set()
        assert release.wait(60)
        return real_export(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(gguf_lora, "export", slow_export)
    loader = threading.Thread(target=lambda: lc.load_adapter("slow", str(folder)))
    loader.start()
    try:
        assert exporting.wait(60)
        assert lc.generate([_greedy()])[0].text  # while the export is under way
    finally:
        release.set()
        loader.join(60)
    assert "slow" in {a.name for a in lc.adapters()}
    lc.unload_adapter("slow")


def test_the_home_cache_of_exports_keeps_its_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports of adapters in folders helixloom cannot write go to one cache in the home, shared by
    content: the least recently used go once it holds more than its budget; the new one stays."""
    import os

    monkeypatch.setenv("HELIXLOOM_HOME", str(tmp_path))
    cache = tmp_path / "cache" / "gguf-lora"
    cache.mkdir(parents=True)
    files = []
    for i in range(4):
        file = cache / f"v{i}.gguf"
        file.write_bytes(b"x" * 100)
        os.utime(file, (1000 + i, 1000 + i))  # v0 is the least recently used
        files.append(file)
    os.utime(files[0], (2000, 2000))  # ...until it is used again
    removed = gguf_lora.prune_home_cache(keep=files[1], budget=300)
    assert removed == [files[2]]  # v1 is kept although least recently used: it was just made
    assert gguf_lora.prune_home_cache(budget=150) == [files[1], files[3]]
    assert [f.exists() for f in files] == [True, False, False, False]


@pytest.mark.default_model
@needs_llamacpp
def test_prompt_logprobs_on_llamacpp_agree_with_hf(lc: object, hf: HFEngine) -> None:
    from helixloom.engine.base import TokenPrompt
    from helixloom.engine.llamacpp import LlamaCppEngine

    assert isinstance(lc, LlamaCppEngine)
    prompts = ["The capital of France is Paris.", "<start_of_turn>user\nHi<end_of_turn>\n", "  two  spaces"]
    prompts.append("word " * 150)  # over several scoring chunks
    diffs = []
    for prompt, a, b in zip(
        prompts, lc.prompt_logprobs(prompts, top_k=3), hf.prompt_logprobs(prompts, top_k=3), strict=True
    ):
        assert "".join(a.tokens) == prompt
        assert a.token_ids == b.token_ids
        # The BOS that encode() added is left out; the first text token is scored after it.
        assert a.token_ids[0] != 2 and a.logprobs[0] is not None and b.logprobs[0] is not None
        assert [t.token_id for t in a.top[-1] or ()][:1] == [t.token_id for t in b.top[-1] or ()][:1]
        diffs += [
            abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True) if x is not None and y is not None
        ]
    # Q4_K weights: llama.cpp multiplies them quantized, transformers de-quantized in fp32 (measured
    # here: mean |difference| 0.05-0.35 per prompt, max 0.38). A row off by one position is off by nats.
    assert max(diffs) < 0.8 and sum(diffs) / len(diffs) < 0.2
    # Against llama.cpp itself, one position at a time: only the batched prefill's rounding differs
    # (measured up to 0.12).
    [scored] = lc.prompt_logprobs([prompts[0]])
    ids = lc.encode(prompts[0])
    compared = 0
    for i in range(1, len(ids)):
        [step] = lc.next_token_logprobs([TokenPrompt(lc.detokenize(ids[:i]), ids[:i])], top_k=500)
        alone = {t.token_id: t.logprob for t in step.top}.get(ids[i])
        if alone is not None:  # among the 500 most likely
            assert abs(alone - (scored.logprobs[i - 1] or 0.0)) < 0.25
            compared += 1
    assert compared >= len(ids) - 2


@pytest.mark.default_model
@needs_llamacpp
def test_regex_and_unreadable_grammars_on_llamacpp(lc: object) -> None:
    from helixloom.engine.llamacpp import LlamaCppEngine
    from helixloom.engine.llamacpp_grammar import llama_grammar

    assert isinstance(lc, LlamaCppEngine)
    for pattern in (r"[0-9]{3}-[0-9]{4}", r"(yes|no), because [a-z_ ]{5,20}\."):
        request = GenerationRequest(
            "Answer: ", sampling(temperature=0, max_tokens=30), None, Constraint.regex(pattern)
        )
        out = lc.generate([request])[0]
        assert out.finish_reason == "stop" and re.fullmatch(pattern, out.text), out.text
    # A grammar llama.cpp cannot parse is refused before sampling (llama-cpp-python would crash on it).
    from llama_cpp import LlamaGrammar

    from helixloom.engine.llamacpp_grammar import _parses

    assert not _parses(LlamaGrammar.from_string("root ::= (", verbose=False), lc.llm._model.vocab)
    bad = Constraint("json_schema", json.dumps({"type": "string", "pattern": "^(?=a)b$"}))
    with pytest.raises(HelixloomError):
        llama_grammar(bad, lc.llm._model.vocab)


@pytest.mark.default_model
@needs_llamacpp
def test_served_default_model_runs_on_llamacpp_and_scores_prompts(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve`` with no engine named: llama.cpp, and an evaluation harness's echo + logprobs work."""
    import openai

    from helixloom.server import ServerConfig, open_state
    from tests.conftest import serving

    monkeypatch.setenv("HELIXLOOM_HOME", str(home))
    state = open_state(ServerConfig(model="default", run_jobs=False))
    assert state.engine.backend == "llamacpp"
    with serving(state) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        done = client.completions.create(
            model="default", prompt="The capital of France is", max_tokens=0, echo=True, logprobs=1
        )
        lp = done.choices[0].logprobs
        assert lp is not None and "".join(lp.tokens or []) == "The capital of France is"
        assert lp.token_logprobs is not None and all(
            x is None or (math.isfinite(x) and x <= 0) for x in lp.token_logprobs
        )
