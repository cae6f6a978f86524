"""LoRA extraction: exact on low-rank deltas, the SVD tail below rank, alpha/r applied once."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from helixloom.cli import main
from helixloom.engine.hf import HFEngine
from helixloom.errors import HelixloomError
from helixloom.store import Store
from helixloom.training.extract import ExtractConfig, extract_lora
from tests import tiny
from tests.conftest import TinyModel

TARGETS = ("q_proj", "v_proj", "o_proj", "up_proj")
IDS = [1, 17, 42, 99, 7, 300]


def make_tuned(
    base_dir: Path, out: Path, rank: int, seed: int = 0, targets: tuple[str, ...] = TARGETS
) -> dict[str, torch.Tensor]:
    """A 'fully fine-tuned' model: the base plus a known rank-``rank`` delta on some layers."""
    base, model = load(base_dir), load(base_dir)
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(targets):
                out_f, in_f = module.weight.shape
                delta = (
                    torch.randn(out_f, rank, generator=gen) @ torch.randn(rank, in_f, generator=gen) * 0.02
                )
                module.weight += delta
                deltas[name] = module.weight - base.get_submodule(name).weight  # as stored in float32
    model.save_pretrained(out)
    for f in base_dir.iterdir():  # the tokenizer comes along, as with any fine-tune
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (out / f.name).write_bytes(f.read_bytes())
    return deltas


@pytest.fixture(scope="module")
def tuned4(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tuned4")
    make_tuned(tiny_model.path, out, rank=4)
    return out


def logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def load(folder: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(folder)


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open is not a mapping


def linear_names(folder: Path) -> list[str]:
    return [n for n, m in load(folder).named_modules() if isinstance(m, torch.nn.Linear)]


def test_exact_at_the_deltas_rank(tiny_model: TinyModel, tuned4: Path, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    calls: list[tuple[int, int, str]] = []
    config = ExtractConfig(rank=4, alpha=8)
    report = extract_lora(str(tiny_model.path), str(tuned4), out, config, on_layer=lambda *c: calls.append(c))
    assert report.out == out and (out / "adapter_model.safetensors").is_file()
    assert len(report.layers) == 2 * len(TARGETS) and report.max_relative_error < 1e-6
    assert all(layer.rank == 4 and layer.delta_norm > 0 for layer in report.layers)
    assert report.bias_changed == [] and report.other_changed == []
    candidates = [n for n in linear_names(tiny_model.path) if n != "lm_head"]
    assert calls == [(i, len(candidates), n) for i, n in enumerate(candidates)]
    expected = logits(load(tuned4), IDS)
    adapted = PeftModel.from_pretrained(load(tiny_model.path), out)
    assert not torch.allclose(logits(load(tiny_model.path), IDS), expected, atol=1e-3)  # the delta matters
    torch.testing.assert_close(logits(adapted, IDS), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits(adapted.merge_and_unload(), IDS), expected, atol=1e-4, rtol=0)


def test_unchanged_layers_get_no_lora(tiny_model: TinyModel, tuned4: Path, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    report = extract_lora(str(tiny_model.path), str(tuned4), out, ExtractConfig(rank=4, alpha=8))
    unchanged = [n for n in linear_names(tiny_model.path) if not n.endswith((*TARGETS, "lm_head"))]
    assert report.skipped_unchanged == unchanged and len(unchanged) == 2 * 3  # k, gate, down per layer
    extracted = {layer.module for layer in report.layers}
    config = json.loads((out / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == extracted
    modules = {key.split(".lora_")[0].removeprefix("base_model.model.") for key in adapter_tensors(out)}
    assert modules == extracted  # keys as PEFT writes them: base_model.model.<module>.lora_A.weight
    assert all(key.startswith("base_model.model.") for key in adapter_tensors(out))


@pytest.mark.parametrize("alpha", [128.0, 1.0])
def test_alpha_over_r_is_applied_exactly_once(
    tiny_model: TinyModel, tuned4: Path, tmp_path: Path, alpha: float
) -> None:
    """At alpha 128, rank 4 (scale 32) and alpha 1 (scale 1/4) the applied update must equal the delta,
    not a multiple of it (the public tool's bug: it ignored alpha/r, so the update came out scaled)."""
    out = tmp_path / "lora"
    extract_lora(str(tiny_model.path), str(tuned4), out, ExtractConfig(rank=4, alpha=alpha))
    base, tuned = load(tiny_model.path), load(tuned4)
    tensors = adapter_tensors(out)
    for name in (n for n in linear_names(tuned4) if n.endswith(TARGETS)):
        delta = tuned.get_submodule(name).weight - base.get_submodule(name).weight
        key = f"base_model.model.{name}"
        b, a = tensors[f"{key}.lora_B.weight"], tensors[f"{key}.lora_A.weight"]
        torch.testing.assert_close((alpha / 4) * (b @ a), delta, atol=1e-6, rtol=0)
        assert not torch.allclose(b @ a, delta, atol=1e-3)  # without the scale it would be wrong
    merged = PeftModel.from_pretrained(load(tiny_model.path), out).merge_and_unload()
    for name in linear_names(tuned4):
        torch.testing.assert_close(
            merged.get_submodule(name).weight, tuned.get_submodule(name).weight, atol=1e-6, rtol=0
        )


def test_lower_rank_error_is_the_svd_tail(tiny_model: TinyModel, tmp_path: Path) -> None:
    tuned = tmp_path / "tuned8"
    deltas = make_tuned(tiny_model.path, tuned, rank=8, seed=1)
    out = tmp_path / "lora3"
    report = extract_lora(str(tiny_model.path), str(tuned), out, ExtractConfig(rank=3, alpha=6))
    by_name = {layer.module: layer for layer in report.layers}
    assert set(by_name) == set(deltas)
    for name, delta in deltas.items():
        s = torch.linalg.svdvals(delta.double())
        tail = math.sqrt(float(s[3:].square().sum()) / float(s.square().sum()))
        assert by_name[name].relative_error == pytest.approx(tail, abs=1e-5)
        assert by_name[name].delta_norm == pytest.approx(float(delta.norm()), rel=1e-5)
        assert by_name[name].rank == 3
        assert 0.05 < tail < 1  # a real truncation, not a trivial case
    # And the adapter applies exactly that truncation (Eckart–Young's best rank-3 approximation).
    merged = PeftModel.from_pretrained(load(tiny_model.path), out).merge_and_unload()
    base = load(tiny_model.path)
    for name, delta in deltas.items():
        applied = merged.get_submodule(name).weight - base.get_submodule(name).weight
        u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
        torch.testing.assert_close(applied.double(), (u[:, :3] * s[:3]) @ vh[:3], atol=1e-5, rtol=0)


def test_rank_above_a_layers_size_pads_with_zeros(tiny_model: TinyModel, tmp_path: Path) -> None:
    """One rank and one scale for the whole adapter: v_proj is 32×64, so at rank 40 it keeps all 32
    singular values and its factors are zero-padded to 40; no rank_pattern/alpha_pattern is written."""
    tuned = tmp_path / "tuned-full"
    make_tuned(tiny_model.path, tuned, rank=40, seed=2)  # full rank on v_proj (32 rows)
    out = tmp_path / "lora40"
    report = extract_lora(str(tiny_model.path), str(tuned), out, ExtractConfig(rank=40, alpha=16))
    ranks = {layer.module.rsplit(".", 1)[1]: layer.rank for layer in report.layers}
    assert ranks == {"q_proj": 40, "v_proj": 32, "o_proj": 40, "up_proj": 40}
    assert report.max_relative_error < 1e-5  # every delta has rank <= 40 (v_proj: all of its 32)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 40 and config["lora_alpha"] == 16 and not config.get("rank_pattern")
    assert not config.get("alpha_pattern")
    a = adapter_tensors(out)["base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"]
    assert a.shape == (40, 64) and torch.count_nonzero(a[32:]) == 0
    torch.testing.assert_close(
        logits(PeftModel.from_pretrained(load(tiny_model.path), out), IDS),
        logits(load(tuned), IDS),
        atol=1e-4,
        rtol=0,
    )


def test_what_a_lora_cannot_carry_is_reported(tiny_model: TinyModel, tmp_path: Path) -> None:
    config = LlamaConfig.from_pretrained(tiny_model.path)
    config.attention_bias = True
    torch.manual_seed(5)
    base = LlamaForCausalLM(config)
    base.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        base.model.layers[0].self_attn.q_proj.weight += 0.01
        base.model.layers[0].self_attn.q_proj.bias += 0.01
        base.model.layers[1].self_attn.k_proj.bias += 0.01  # bias only: the weight is unchanged
        base.model.norm.weight += 0.01
        base.model.embed_tokens.weight[3] += 0.01
        base.lm_head.weight += 0.01  # skipped by default
    base.save_pretrained(tmp_path / "tuned")
    report = extract_lora(
        str(tmp_path / "base"), str(tmp_path / "tuned"), tmp_path / "lora", ExtractConfig(rank=2, alpha=4)
    )
    assert [layer.module for layer in report.layers] == ["model.layers.0.self_attn.q_proj"]
    assert report.bias_changed == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.k_proj"]
    assert report.other_changed == ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    assert "model.layers.1.self_attn.k_proj" in report.skipped_unchanged
    tensors = adapter_tensors(tmp_path / "lora")
    assert not any("bias" in key or "lm_head" in key for key in tensors)


def test_float16_and_bfloat16_factors(tiny_model: TinyModel, tuned4: Path, tmp_path: Path) -> None:
    """The written dtype is honoured and the reported error is that of the factors as written."""
    errors = {}
    for dtype in ("bfloat16", "float16"):
        out = tmp_path / dtype
        report = extract_lora(
            str(tiny_model.path), str(tuned4), out, ExtractConfig(rank=4, alpha=8, dtype=dtype)
        )
        assert {t.dtype for t in adapter_tensors(out).values()} == {getattr(torch, dtype)}
        errors[dtype] = report.max_relative_error
    assert 1e-4 < errors["bfloat16"] < 2e-2 and 1e-6 < errors["float16"] < errors["bfloat16"]


def test_mismatched_architectures_are_refused(tiny_model: TinyModel, tuned4: Path, tmp_path: Path) -> None:
    wide = tmp_path / "wide"
    tiny.build_model(wide, hidden=96)
    with pytest.raises(
        HelixloomError, match=r"^model\.embed_tokens\.weight is \(\d+, 64\) in .* but \(\d+, 96\)"
    ):
        extract_lora(str(tiny_model.path), str(wide), tmp_path / "x")
    deeper = LlamaConfig.from_pretrained(tiny_model.path)
    deeper.num_hidden_layers = 3
    LlamaForCausalLM(deeper).save_pretrained(tmp_path / "deeper")
    with pytest.raises(
        HelixloomError, match=r"linear layer model\.layers\.2\.self_attn\.q_proj is in .*deeper"
    ):
        extract_lora(str(tiny_model.path), str(tmp_path / "deeper"), tmp_path / "x")
    llama = LlamaConfig.from_pretrained(tiny_model.path)
    mistral = MistralConfig(
        vocab_size=llama.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip
    MistralForCausalLM(mistral).save_pretrained(tmp_path / "mistral")
    with pytest.raises(HelixloomError, match="is a mistral model"):
        extract_lora(str(tiny_model.path), str(tmp_path / "mistral"), tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(HelixloomError, match="nothing to extract"):
        extract_lora(str(tiny_model.path), str(tiny_model.path), tmp_path / "same")
    assert not (tmp_path / "same").exists()


def test_out_folder_is_refused_or_replaced_whole(tiny_model: TinyModel, tuned4: Path, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("keep me")
    with pytest.raises(HelixloomError, match="not empty"):
        extract_lora(str(tiny_model.path), str(tuned4), busy)
    assert [p.name for p in busy.iterdir()] == ["file"]
    (tmp_path / "a-file").write_text("")
    with pytest.raises(HelixloomError, match="not a folder"):
        extract_lora(str(tiny_model.path), str(tuned4), tmp_path / "a-file")
    with pytest.raises(HelixloomError, match="one of the two models"):
        extract_lora(str(tiny_model.path), str(tuned4), tuned4, overwrite=True)
    extract_lora(str(tiny_model.path), str(tuned4), busy, ExtractConfig(rank=4, alpha=8), overwrite=True)
    assert sorted(p.name for p in busy.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    extract_lora(str(tiny_model.path), str(tuned4), empty, ExtractConfig(rank=4, alpha=8))
    assert (empty / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no leftovers


def test_config_is_validated() -> None:
    for bad in ({"rank": 0}, {"alpha": 0.0}, {"alpha": math.inf}, {"dtype": "int8"}, {"skip": "lm_head"}):
        with pytest.raises(HelixloomError, match=next(iter(bad))):
            ExtractConfig(**bad)
    assert ExtractConfig(skip=["lm_head", "gate_proj"]).skip == ("lm_head", "gate_proj")  # type: ignore[arg-type]
    default = ExtractConfig()
    assert (default.rank, default.alpha, default.skip, default.dtype) == (64, 128.0, ("lm_head",), "float32")


def test_the_engine_serves_the_extracted_adapter(tiny_model: TinyModel, tuned4: Path, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    extract_lora(str(tiny_model.path), str(tuned4), out, ExtractConfig(rank=4, alpha=8))
    engine = HFEngine.load(str(tiny_model.path), device="cpu")
    engine.load_adapter("x", str(out))
    tuned = HFEngine.load(str(tuned4), device="cpu")
    prompts = ["The quick brown fox", "Paris is the capital of", "def add(a, b):"]
    got = engine.next_token_logprobs(prompts, adapter="x", top_k=5)
    want = tuned.next_token_logprobs(prompts, top_k=5)
    base = engine.next_token_logprobs(prompts, top_k=5)
    assert any(abs(g.top[0].logprob - b.top[0].logprob) > 1e-3 for g, b in zip(got, base, strict=True))
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g.top, w.top, strict=True):
            assert a.token_id == b.token_id and math.isclose(a.logprob, b.logprob, abs_tol=1e-4)


def test_cli_extract_registers_the_adapter(
    capsys: pytest.CaptureFixture[str],
    tiny_model: TinyModel,
    tuned4: Path,
    tmp_path: Path,
    helixloom_home: Path,
) -> None:
    out = tmp_path / "cli-lora"
    code = main(["adapters", "extract", "--base", str(tiny_model.path), "--tuned", str(tuned4), "--rank", "4",
                 "--alpha", "8", "--out", str(out), "--name", "critic"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "relative error" in printed and "registered as critic" in printed
    with Store(helixloom_home / "helixloom.db") as store:
        assert store.get_adapter("critic") is not None
    assert main(["adapters", "extract", "--base", str(tiny_model.path), "--tuned", str(tuned4),
                 "--out", str(out)]) == 2  # fmt: skip
    assert "not empty" in capsys.readouterr().err
