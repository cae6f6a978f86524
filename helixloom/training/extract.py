"""LoRA extraction: a full fine-tune as a LoRA adapter on its base model (how HelixNet-LMoE was made).

For every linear layer but the skipped ones (the output head by default), the weight delta
ΔW = W_tuned − W_base is cut to its best rank-r approximation by truncated SVD (Eckart–Young),
ΔW ≈ U_r S_r V_rᵀ, and written as a standard PEFT LoRA. PEFT applies ``(alpha / rank) · B · A``, so the
factors carry that scale's inverse: B = U_r √(S_r / s), A = √(S_r / s) V_rᵀ with s = alpha / rank, and
the applied update is the rank-r approximation itself, whatever alpha is. (The public multi_loras tool
left s out and so applied 2× the update at alpha 128, rank 64.)

Per-module rank: one rank and one scale for the whole adapter. A layer whose smaller side is below
``rank`` keeps all its singular values and gets zero-padded factors, so no ``rank_pattern`` or
``alpha_pattern`` is needed and every consumer (PEFT, vLLM, the GGUF export with its single alpha)
applies the same scale everywhere.

What a LoRA cannot carry is reported, not extracted: changed biases of extracted layers
(``bias_changed``) and every other changed parameter — norms, embeddings, skipped layers such as the
output head (``other_changed``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helixloom import atomic
from helixloom.errors import HelixloomError

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "float16", "bfloat16")
_FLOAT64_MAX_ELEMENTS = 16_000_000  # deltas up to this size get a float64 SVD (≈ 128 MB per copy)

OnLayer = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ExtractConfig:
    """How to extract. ``rank`` and ``alpha`` are also flags of ``helixloom adapters extract``."""

    rank: int = 64
    """LoRA rank r: each delta keeps its r largest singular values; every module is written at this rank."""
    alpha: float = 128.0
    """LoRA alpha. PEFT applies (alpha / rank)·B·A and the factors are divided by that scale, so alpha
    changes how the update is split between the factors and the scale, never the update itself."""
    skip: tuple[str, ...] = ("lm_head",)
    """Module-name suffixes never extracted (the output head by default; embeddings are not Linear and
    are never extracted). A skipped layer that the fine-tune changed is listed in ``other_changed``."""
    dtype: str = "float32"
    """dtype of the written lora_A / lora_B tensors: float32, float16 or bfloat16. Relative errors are
    measured on the factors as written, so they include this rounding."""

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise HelixloomError(
                f"rank must be a whole number of at least 1, not {self.rank!r}", param="rank"
            )
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise HelixloomError(f"alpha must be a positive number, not {self.alpha!r}", param="alpha")
        if isinstance(self.skip, str):
            raise HelixloomError(
                "skip must be a tuple of module-name suffixes, not one string", f"use ({self.skip!r},)"
            )
        object.__setattr__(self, "skip", tuple(self.skip))
        if self.dtype not in DTYPES:
            raise HelixloomError(
                f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}", param="dtype"
            )


@dataclass(frozen=True)
class LayerReport:
    """One extracted linear layer."""

    module: str
    """Full module name, e.g. ``model.layers.0.self_attn.q_proj``."""
    rank: int
    """Singular values kept: min(config rank, smaller side of the weight)."""
    relative_error: float
    """||ΔW − (alpha/rank)·B·A||_F / ||ΔW||_F with B, A as written: what the adapter misses of ΔW."""
    delta_norm: float
    """||ΔW||_F: how much the fine-tune moved this layer."""


@dataclass(frozen=True)
class ExtractReport:
    """What ``extract_lora`` wrote, and what of the fine-tune the adapter cannot reproduce."""

    out: Path
    rank: int
    alpha: float
    layers: list[LayerReport]
    """The extracted layers, in model order."""
    skipped_unchanged: list[str]
    """Linear layers whose weight is exactly the base's: no LoRA is written for them."""
    bias_changed: list[str]
    """Extracted layers whose bias changed: a LoRA cannot carry a bias, so the adapter keeps the base's."""
    other_changed: list[str]
    """Changed parameters outside the extracted layers (norms, embeddings, skipped layers like lm_head)."""

    @property
    def max_relative_error(self) -> float:
        """The worst layer's relative error (0.0 when no layer was extracted)."""
        return max((layer.relative_error for layer in self.layers), default=0.0)


def extract_lora(
    base_spec: str,
    tuned_spec: str,
    out: Path,
    config: ExtractConfig = ExtractConfig(),  # frozen: sharing the default is safe
    *,
    overwrite: bool = False,
    on_layer: OnLayer | None = None,
) -> ExtractReport:
    """Write a PEFT LoRA at ``out`` whose update on ``base_spec`` is the best rank-r view of ``tuned_spec``.

    Both specs go through ``helixloom.models`` (``default``, local folders, ``.gguf`` files, hub ids) and
    must share an architecture; otherwise ``HelixloomError`` names the first differing parameter. ``out``
    is complete or untouched: the adapter is written to a temporary sibling and renamed into place. A
    non-empty ``out`` is refused unless ``overwrite``. ``on_layer(i, total, name)`` is called before
    each candidate linear layer. Raises ``HelixloomError`` when no linear layer changed.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from helixloom import models

    out = Path(out).expanduser()
    _check_out(out, overwrite)
    sources = [models.resolve(base_spec), models.resolve(tuned_spec)]  # both checked before any slow work
    folders = [models.materialize(source) for source in sources]
    if out.resolve() in {folder.resolve() for folder in folders}:
        raise HelixloomError(f"{out} is one of the two models' folders", "write the adapter to a new folder")
    base = AutoModelForCausalLM.from_pretrained(str(folders[0]), dtype=torch.float32)
    tuned = AutoModelForCausalLM.from_pretrained(str(folders[1]), dtype=torch.float32)
    factors, report = _factorize(base, tuned, base_spec, tuned_spec, config, out, on_layer)
    del tuned  # the factors are all we need from it; the base gets wrapped by PEFT below
    if not factors:
        raise HelixloomError(
            f"{tuned_spec} has the same linear weights as {base_spec}: nothing to extract",
            "pass the fine-tuned model as the tuned one",
        )
    recorded = sources[0].location if sources[0].kind in ("hf_dir", "gguf") else base_spec
    _write(base, factors, config, recorded, out)
    return report


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise HelixloomError(f"{out} exists and is not a folder", "pick a new --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise HelixloomError(f"{out} exists and is not empty", "pick a new --out, or pass --overwrite")


def _factorize(
    base: Any,
    tuned: Any,
    base_spec: str,
    tuned_spec: str,
    config: ExtractConfig,
    out: Path,
    on_layer: OnLayer | None,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], ExtractReport]:
    """The LoRA factors (A, B) of every changed candidate layer, and the report."""
    import torch

    linear = _check_same_architecture(base, tuned, base_spec, tuned_spec)
    targets = [name for name in linear if not name.endswith(config.skip)]
    report = ExtractReport(out, config.rank, config.alpha, [], [], [], [])
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    scale = config.alpha / config.rank
    written = getattr(torch, config.dtype)
    with torch.no_grad():
        for i, name in enumerate(targets):
            if on_layer is not None:
                on_layer(i, len(targets), name)
            b_layer, t_layer = linear[name]
            if b_layer.bias is not None and not torch.equal(b_layer.bias, t_layer.bias):
                report.bias_changed.append(name)
            if torch.equal(b_layer.weight, t_layer.weight):
                report.skipped_unchanged.append(name)
                continue
            # float64 where it is cheap: the SVD tail of an exactly low-rank delta is then ~1e-15.
            work = torch.float64 if b_layer.weight.numel() <= _FLOAT64_MAX_ELEMENTS else torch.float32
            delta = t_layer.weight.to(work) - b_layer.weight.to(work)  # delta: [out, in]
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)  # u: [out, k], s: [k], vh: [k, in]
            r = min(config.rank, s.shape[0])
            root = (s[:r] / scale).sqrt()
            b = delta.new_zeros(delta.shape[0], config.rank)  # zero columns past r: see module docstring
            a = delta.new_zeros(config.rank, delta.shape[1])
            b[:, :r] = u[:, :r] * root
            a[:r] = root[:, None] * vh[:r]
            b, a = b.to(written), a.to(written)
            applied = scale * (b.to(work) @ a.to(work))  # exactly what PEFT adds to the base weight
            norm = float(torch.linalg.matrix_norm(delta))
            error = float(torch.linalg.matrix_norm(delta - applied)) / norm
            report.layers.append(LayerReport(name, r, error, norm))
            factors[name] = (a, b)
            del delta, u, s, vh, applied
        extracted = set(targets)
        tuned_params = dict(tuned.named_parameters())
        for pname, param in base.named_parameters():
            if pname.rsplit(".", 1)[0] not in extracted and not torch.equal(param, tuned_params[pname]):
                report.other_changed.append(pname)
    return factors, report


def _check_same_architecture(
    base: Any, tuned: Any, base_spec: str, tuned_spec: str
) -> dict[str, tuple[Any, Any]]:
    """Linear layers by name as (base, tuned); ``HelixloomError`` naming the first difference otherwise."""
    import torch

    hint = "extract from a fine-tune of the same base model"
    if base.config.model_type != tuned.config.model_type:
        raise HelixloomError(
            f"{tuned_spec} is a {tuned.config.model_type} model, {base_spec} a {base.config.model_type} one",
            hint,
        )
    base_linear = {n: m for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    tuned_linear = {n: m for n, m in tuned.named_modules() if isinstance(m, torch.nn.Linear)}
    for name in [*base_linear, *tuned_linear]:
        if name not in base_linear or name not in tuned_linear:
            has, lacks = (base_spec, tuned_spec) if name in base_linear else (tuned_spec, base_spec)
            raise HelixloomError(f"linear layer {name} is in {has} but not in {lacks}", hint)
    base_params = dict(base.named_parameters())
    tuned_params = dict(tuned.named_parameters())
    for name in [*base_params, *tuned_params]:
        if name not in base_params or name not in tuned_params:
            has, lacks = (base_spec, tuned_spec) if name in base_params else (tuned_spec, base_spec)
            raise HelixloomError(f"parameter {name} is in {has} but not in {lacks}", hint)
        if base_params[name].shape != tuned_params[name].shape:
            raise HelixloomError(
                f"{name} is {tuple(base_params[name].shape)} in {base_spec} but "
                f"{tuple(tuned_params[name].shape)} in {tuned_spec}",
                hint,
            )
    return {name: (module, tuned_linear[name]) for name, module in base_linear.items()}


def _write(
    base: Any,
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
    config: ExtractConfig,
    base_name: str,
    out: Path,
) -> None:
    """Save through PEFT itself, so the folder and its key names are exactly what PEFT and vLLM load."""
    import torch
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,  # type: ignore[arg-type]  # PEFT types it int; floats work
        target_modules=sorted(factors),  # full names: only the layers the fine-tune changed
        lora_dropout=0.0,
        bias="none",
        init_lora_weights=True,
        base_model_name_or_path=base_name,
    )
    peft_model = get_peft_model(base, lora)
    wrapped: Any = peft_model.base_model.model
    written = getattr(torch, config.dtype)
    with torch.no_grad():
        for name, (a, b) in factors.items():
            module: Any = wrapped.get_submodule(name)
            for side, weight in ((module.lora_A["default"], a), (module.lora_B["default"], b)):
                side.to(written)
                side.weight.copy_(weight)
    with atomic.staged_dir(out) as tmp:  # `out` is never half-written, even when overwritten
        peft_model.save_pretrained(str(tmp))
