from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests import tiny

if TYPE_CHECKING:
    from helixloom.engine.hf import HFEngine
    from helixloom.server import BackgroundServer, ServerState


@dataclass(frozen=True)
class TinyModel:
    path: Path
    adapters: dict[str, Path]  # name -> PEFT folder, all made for this model
    foreign_adapter: Path  # a LoRA made for a model of another width


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    root = tmp_path_factory.mktemp("tiny")
    model_dir = root / "model"
    tiny.build_model(model_dir)
    adapters = {
        "alpha": root / "alpha",
        "beta": root / "beta",
        "gamma": root / "gamma",
    }
    tiny.build_adapter(model_dir, adapters["alpha"], seed=1, targets=("q_proj", "v_proj"))
    tiny.build_adapter(model_dir, adapters["beta"], seed=2, rank=8, targets=("o_proj", "down_proj"))
    tiny.build_adapter(
        model_dir, adapters["gamma"], seed=3, targets=("q_proj", "k_proj", "v_proj", "up_proj")
    )
    other = root / "wide-model"
    tiny.build_model(other, hidden=96)
    foreign = root / "foreign"
    tiny.build_adapter(other, foreign, seed=4, targets=("q_proj", "v_proj"))
    return TinyModel(model_dir, adapters, foreign)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model: TinyModel) -> HFEngine:
    """The tiny model on the hf backend with no adapter loaded, shared by the whole session.

    Shared, so every test leaves it as it found it: it loads no adapter into it and changes no
    attribute for good (a monkeypatch or a try/finally that puts it back is fine). A test that
    loads an adapter takes ``tiny_adapted_engine`` or ``fresh_tiny_engine``.
    """
    from helixloom.engine.hf import HFEngine

    return HFEngine.load(str(tiny_model.path))


@pytest.fixture(scope="session")
def tiny_adapted_engine(tiny_model: TinyModel) -> HFEngine:
    """The tiny model with the ``alpha``, ``beta`` and ``gamma`` adapters of ``tiny_model`` loaded,
    shared by the whole session under the same rules as ``tiny_engine``: no other adapter goes in."""
    from helixloom.engine.hf import HFEngine

    engine = HFEngine.load(str(tiny_model.path))
    for name, folder in tiny_model.adapters.items():
        engine.load_adapter(name, str(folder))
    return engine


@pytest.fixture
def fresh_tiny_engine(tiny_model: TinyModel) -> HFEngine:
    """An engine of the test's own, for a test that loads adapters of its own or checks a fresh engine."""
    from helixloom.engine.hf import HFEngine

    return HFEngine.load(str(tiny_model.path))


@contextmanager
def serving(state: ServerState) -> Iterator[BackgroundServer]:
    """Serves ``state`` on a loopback port for the ``with`` block; on leaving it, however it is left
    (a failed assertion included), the server stops and the state closes: its job runner, its
    batching scheduler and its store.

    Closing the state closes the engine it wraps; an ``HFEngine`` holds nothing a close frees, so a
    shared engine stays usable afterwards.
    """
    from helixloom.server import BackgroundServer

    try:
        server = BackgroundServer(state)
    except BaseException:
        state.close()
        raise
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            state.close()


@pytest.fixture(autouse=True)
def helixloom_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own HELIXLOOM_HOME; nothing touches the user's real one."""
    home = tmp_path / "helixloom-home"
    monkeypatch.setenv("HELIXLOOM_HOME", str(home))
    yield home


@contextmanager
def home_at(path: Path) -> Iterator[Path]:
    """HELIXLOOM_HOME points at ``path`` inside the block, and back at what it was after."""
    old = os.environ.get("HELIXLOOM_HOME")
    os.environ["HELIXLOOM_HOME"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            del os.environ["HELIXLOOM_HOME"]
        else:
            os.environ["HELIXLOOM_HOME"] = old


@pytest.fixture(scope="session")
def default_model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HELIXLOOM_HOME shared by the tests that run the embedded default model, so it converts once.

    ``HELIXLOOM_TEST_CACHE`` (set by the Makefile) keeps the converted checkpoint between runs.
    """
    cached = os.environ.get("HELIXLOOM_TEST_CACHE")
    home = Path(cached) if cached else tmp_path_factory.mktemp("default-home")
    home.mkdir(parents=True, exist_ok=True)
    return home


@pytest.fixture(scope="session")
def gemma_loras(default_model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two rank-8 LoRAs for the embedded default model (random A and B, std 0.04), each with its GGUF
    export beside it (adapter_model.gguf), for tests that compare backends on real weights."""
    old = os.environ.get("HELIXLOOM_HOME")
    os.environ["HELIXLOOM_HOME"] = str(default_model_home)
    try:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        from helixloom import gguf_lora, models

        checkpoint = models.materialize(models.resolve("default"))
        base_gguf = gguf_lora.base_gguf_for("default")
        out = {}
        for seed, name in enumerate(("rand", "rand2")):
            folder = tmp_path_factory.mktemp(f"gemma-{name}")
            base = AutoModelForCausalLM.from_pretrained(str(checkpoint))
            torch.manual_seed(seed)
            peft_model = get_peft_model(
                base,
                LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"]),
            )
            with torch.no_grad():
                for pname, p in peft_model.named_parameters():
                    if "lora_" in pname:
                        p.normal_(0, 0.04)
            peft_model.save_pretrained(folder)
            gguf_lora.export(folder, base_gguf, folder / "adapter_model.gguf")
            out[name] = folder
        return out
    finally:
        if old is None:
            os.environ.pop("HELIXLOOM_HOME", None)
        else:
            os.environ["HELIXLOOM_HOME"] = old
