"""LoRA extraction: exact on low-rank deltas, the SVD tail below rank, alpha/r applied once."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from helixloom.cli import main
from helixloom.engine.hf import HFEngine
from helixloom.errors import HelixloomError
from helixloom.store import Store
from helixloom.training.extract import ExtractConfig, extract_lora
from tests import tiny
from tests.conftest import TinyModel

TARGETS = ("q_proj", "v_proj", "o_proj", "up_proj")


def make_tuned(base_dir: Path, out: Path, rank: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A 'fully fine-tuned' model: the base plus a known rank-``rank`` delta on some layers."""
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(TARGETS):
                out_f, in_f = module.weight.shape
                delta = (
                    torch.randn(out_f, rank, generator=gen) @ torch.randn(rank, in_f, generator=gen) * 0.02
                )
                module.weight += delta
                deltas[name] = delta
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


def test_exact_at_the_deltas_rank(tiny_model: TinyModel, tuned4: Path, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    report = extract_lora(str(tiny_model.path), str(tuned4), out, ExtractConfig(rank=4, alpha=8))
    assert len(report.layers) == 2 * len(TARGETS) and report.max_relative_error < 1e-6
    assert sorted(report.skipped_unchanged) == sorted(
        n for n, m in AutoModelForCausalLM.from_pretrained(tiny_model.path).named_modules()
        if isinstance(m, torch.nn.Linear) and not n.endswith(TARGETS) and n != "lm_head"
    )  # fmt: skip
    ids = [1, 17, 42, 99, 7, 300]
    expected = logits(AutoModelForCausalLM.from_pretrained(tuned4), ids)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model.path), out)
    torch.testing.assert_close(logits(adapted, ids), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits(adapted.merge_and_unload(), ids), expected, atol=1e-4, rtol=0)
    # Layers the fine-tune did not touch get no LoRA at all.
    saved = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model.path), out)
    assert not any("k_proj.lora" in n for n, _ in saved.named_parameters())


def test_alpha_over_r_is_applied_exactly_once(tiny_model: TinyModel, tuned4: Path, tmp_path: Path) -> None:
    """With alpha 128 at rank 4 the applied update must equal the delta, not a multiple of it
    (the public tool's bug: it ignored alpha/r and applied alpha/r times the update)."""
    out = tmp_path / "lora"
    extract_lora(str(tiny_model.path), str(tuned4), out, ExtractConfig(rank=4, alpha=128))
    base = AutoModelForCausalLM.from_pretrained(tiny_model.path)
    merged = PeftModel.from_pretrained(base, out).merge_and_unload()
    tuned = AutoModelForCausalLM.from_pretrained(tuned4)
    for name, module in tuned.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(TARGETS):
            torch.testing.assert_close(merged.get_submodule(name).weight, module.weight, atol=1e-5, rtol=0)


def test_lower_rank_error_is_the_svd_tail(tiny_model: TinyModel, tmp_path: Path) -> None:
    tuned = tmp_path / "tuned8"
    deltas = make_tuned(tiny_model.path, tuned, rank=8, seed=1)
    report = extract_lora(
        str(tiny_model.path), str(tuned), tmp_path / "lora3", ExtractConfig(rank=3, alpha=6)
    )
    by_name = {layer.module: layer for layer in report.layers}
    for name, delta in deltas.items():
        s = torch.linalg.svdvals(delta.double())
        tail = math.sqrt(float(s[3:].square().sum()) / float(s.square().sum()))
        assert by_name[name].relative_error == pytest.approx(tail, abs=1e-5)
        assert 0.05 < tail < 1  # a real truncation, not a trivial case
    # And the adapter applies exactly that truncation.
    merged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model.path), tmp_path / "lora3"
    )
    merged = merged.merge_and_unload()
    base = AutoModelForCausalLM.from_pretrained(tiny_model.path)
    name = next(iter(deltas))
    applied = merged.get_submodule(name).weight - base.get_submodule(name).weight
    u, s, vh = torch.linalg.svd(deltas[name].double(), full_matrices=False)
    best = (u[:, :3] * s[:3]) @ vh[:3]
    torch.testing.assert_close(applied.double(), best, atol=1e-5, rtol=0)


def test_refusals(tiny_model: TinyModel, tuned4: Path, tmp_path: Path) -> None:
    wide = tmp_path / "wide"
    tiny.build_model(wide, hidden=96)
    with pytest.raises(HelixloomError, match=r"is \(\d+, \d+\) in"):
        extract_lora(str(tiny_model.path), str(wide), tmp_path / "x")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("keep me")
    with pytest.raises(HelixloomError, match="not empty"):
        extract_lora(str(tiny_model.path), str(tuned4), busy)
    with pytest.raises(HelixloomError, match="nothing to extract"):
        extract_lora(str(tiny_model.path), str(tiny_model.path), tmp_path / "same")
    with pytest.raises(HelixloomError, match="rank"):
        ExtractConfig(rank=0)


def test_cli_extract_registers_and_engine_uses_it(
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
    engine = HFEngine.load(str(tiny_model.path))
    engine.load_adapter("critic", str(out))
    tuned = HFEngine.load(str(tuned4))
    prompt = "The quick brown fox"
    got = engine.next_token_logprobs([prompt], adapter="critic", top_k=5)[0]
    want = tuned.next_token_logprobs([prompt], top_k=5)[0]
    for a, b in zip(got.top, want.top, strict=True):
        assert a.token_id == b.token_id and math.isclose(a.logprob, b.logprob, abs_tol=1e-4)
    assert main(["adapters", "extract", "--base", str(tiny_model.path), "--tuned", str(tuned4),
                 "--out", str(out)]) == 2  # fmt: skip
    assert "not empty" in capsys.readouterr().err
