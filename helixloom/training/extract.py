"""LoRA extraction: a full fine-tune as a LoRA adapter on its base model (how HelixNet-LMoE was made).

For every linear layer but the output head, the weight delta ΔW = W_tuned − W_base is cut to its
best rank-r approximation by truncated SVD (Eckart–Young), ΔW ≈ U_r S_r V_rᵀ, and written as a PEFT
LoRA. PEFT applies ``(alpha / r) · B · A``, so the factors are scaled by that factor's inverse:
B = U_r √(S_r / s), A = √(S_r / s) V_rᵀ with s = alpha / r. (The public multi_loras tool left the
factor out and so applied 2× the update at alpha 128, rank 64.) Layers whose smaller side is below r
get zero-padded factors, so every layer shares one rank and one scale.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helixloom.errors import HelixloomError


@dataclass(frozen=True)
class ExtractConfig:
    """How to extract. Each field is also a flag of ``helixloom adapters extract``."""

    rank: int = 64  # LoRA rank r: the SVD keeps the r largest singular values of each delta
    alpha: float = 128.0  # LoRA alpha: PEFT scales B·A by alpha / r
    skip: tuple[str, ...] = ("lm_head",)  # module-name suffixes never extracted (the output head)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise HelixloomError("rank must be at least 1", param="rank")
        if not self.alpha > 0:
            raise HelixloomError("alpha must be positive", param="alpha")


@dataclass(frozen=True)
class LayerReport:
    module: str
    relative_error: float  # ||ΔW − (alpha/r)·B·A||_F / ||ΔW||_F
    delta_norm: float


@dataclass(frozen=True)
class ExtractReport:
    out: Path
    rank: int
    alpha: float
    layers: list[LayerReport]
    skipped_unchanged: list[str] = field(
        default_factory=list
    )  # linear layers the fine-tune left as they were
    bias_changed: list[str] = field(default_factory=list)  # a LoRA cannot carry these
    other_changed: list[str] = field(default_factory=list)  # non-linear weights (norms, embeddings)

    @property
    def max_relative_error(self) -> float:
        return max((layer.relative_error for layer in self.layers), default=0.0)


OnLayer = Callable[[int, int, str], None]


def extract_lora(
    base_spec: str,
    tuned_spec: str,
    out: Path,
    config: ExtractConfig | None = None,
    *,
    overwrite: bool = False,
    on_layer: OnLayer | None = None,
) -> ExtractReport:
    """Write a PEFT LoRA at ``out`` that turns ``base_spec`` into (its best rank-r view of) ``tuned_spec``."""
    import torch
    from transformers import AutoModelForCausalLM

    from helixloom import models

    config = config or ExtractConfig()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise HelixloomError(f"{out} exists and is not empty", "pick a new --out, or pass --overwrite")
    folders = [models.materialize(models.resolve(spec)) for spec in (base_spec, tuned_spec)]
    base = AutoModelForCausalLM.from_pretrained(str(folders[0]), dtype=torch.float32)
    tuned = AutoModelForCausalLM.from_pretrained(str(folders[1]), dtype=torch.float32)
    linear = _check_same_architecture(base, tuned, base_spec, tuned_spec)
    tuned_modules = dict(tuned.named_modules())

    factors: dict[str, tuple[Any, Any]] = {}
    report = ExtractReport(out, config.rank, config.alpha, [])
    scale = config.alpha / config.rank
    targets = [name for name in linear if not name.endswith(config.skip)]
    with torch.no_grad():
        for i, name in enumerate(targets):
            if on_layer is not None:
                on_layer(i, len(targets), name)
            b_layer, t_layer = linear[name], tuned_modules[name]
            if b_layer.bias is not None and not torch.equal(b_layer.bias, t_layer.bias):
                report.bias_changed.append(name)
            delta = t_layer.weight - b_layer.weight  # delta: [out, in]
            norm = float(delta.norm())
            if norm == 0.0:
                report.skipped_unchanged.append(name)
                continue
            # float64 where it is cheap: the SVD tail of a low-rank delta is then ~1e-15, not ~1e-7.
            work = delta.double() if delta.numel() <= 16_000_000 else delta
            u, s, vh = torch.linalg.svd(work, full_matrices=False)
            r = min(config.rank, s.shape[0])
            root = (s[:r] / scale).sqrt()
            b = torch.zeros(delta.shape[0], config.rank, dtype=work.dtype)
            a = torch.zeros(config.rank, delta.shape[1], dtype=work.dtype)
            b[:, :r] = u[:, :r] * root
            a[:r] = root[:, None] * vh[:r]
            tail = float(s[r:].square().sum())
            total = float(s.square().sum())
            report.layers.append(LayerReport(name, math.sqrt(tail / total) if total else 0.0, norm))
            factors[name] = (a.float(), b.float())
        tuned_params = dict(tuned.named_parameters())
        for name, param in base.named_parameters():
            if name.rsplit(".", 1)[0] in linear:
                continue
            if not torch.equal(param, tuned_params[name]):
                report.other_changed.append(name)
    del tuned
    if not factors:
        raise HelixloomError(f"{tuned_spec} has the same linear weights as {base_spec}: nothing to extract")
    _write(base, factors, config, base_spec, out)
    return report


def _check_same_architecture(base: Any, tuned: Any, base_spec: str, tuned_spec: str) -> dict[str, Any]:
    import torch

    if base.config.model_type != tuned.config.model_type:
        raise HelixloomError(
            f"{tuned_spec} is a {tuned.config.model_type} model, {base_spec} a {base.config.model_type} one",
            "extract from a fine-tune of the same base model",
        )
    base_linear = {n: m for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    tuned_linear = {n: m for n, m in tuned.named_modules() if isinstance(m, torch.nn.Linear)}
    if set(base_linear) != set(tuned_linear):
        first = sorted(set(base_linear) ^ set(tuned_linear))[0]
        raise HelixloomError(
            f"the two models have different layers (e.g. {first})", "they must share an architecture"
        )
    for name, module in base_linear.items():
        if module.weight.shape != tuned_linear[name].weight.shape:
            raise HelixloomError(
                f"{name} is {tuple(module.weight.shape)} in {base_spec} but "
                f"{tuple(tuned_linear[name].weight.shape)} in {tuned_spec}",
                "extract from a fine-tune of the same base model",
            )
    return base_linear


def _write(
    base: Any, factors: dict[str, tuple[Any, Any]], config: ExtractConfig, base_spec: str, out: Path
) -> None:
    """Save through PEFT itself, so the folder is exactly what PEFT (and vLLM) load."""
    import torch
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,  # type: ignore[arg-type]  # PEFT types it int; floats work
        target_modules=sorted(factors),
        lora_dropout=0.0,
        bias="none",
        base_model_name_or_path=base_spec,
    )
    peft_model = get_peft_model(base, lora)
    wrapped: Any = peft_model.base_model.model
    with torch.no_grad():
        for name, (a, b) in factors.items():
            module: Any = wrapped.get_submodule(name)
            module.lora_A["default"].weight.copy_(a)
            module.lora_B["default"].weight.copy_(b)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
