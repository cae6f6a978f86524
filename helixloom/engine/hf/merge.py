"""An adapter merged into the base weights while every row of the running batch uses it.

PEFT's per-row path (``adapter_names=[...]``) runs each LoRA as two extra small matmuls per layer
and sub-batch indexing: about 40% over the base model's forward for rank 64 on every projection.
When every row uses the same adapter, its delta is added into the base weights once and the model
runs at the base's speed; a batch that mixes adapters (or adds base rows) gets the original weights
back and PEFT's per-row path.

The original weights are kept and copied back, not recomputed by subtracting the delta: merging and
unmerging in floating point drifts (in bf16, visibly after a few switches), and a base model that
drifts is a silent bug for every later request. PEFT's own ``merge``/``unmerge`` subtract, so the
delta is applied here, with ``get_delta_weight`` (PEFT's) computing it. A merge is tracked by the
adapter's content hash, so an adapter reloaded under the same name is merged afresh.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class Merger:
    """Which adapter (by name and version) is merged into ``model``'s base weights, if any."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.merged: tuple[str, str] | None = None  # (name, version)
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []  # (weight, its original values)
        self.merges = 0

    def mergeable(self, name: str) -> bool:
        """Plain LoRA on linear layers only: DoRA, LoRA biases, saved whole modules and other
        variants run per row."""
        from peft.tuners.lora import Linear, LoraLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        found = False
        for module in self.model.modules():
            if isinstance(module, AuxiliaryTrainingWrapper):
                return False  # modules_to_save / trainable tokens: only PEFT's forward selects them
            if not isinstance(module, LoraLayer) or (
                name not in module.lora_A and name not in module.lora_embedding_A
            ):
                continue
            if type(module) is not Linear or module.fan_in_fan_out:
                return False
            if module.use_dora.get(name) or module.lora_bias.get(name):
                return False
            found = True
        return found

    def ensure(self, want: tuple[str, str] | None) -> None:
        """Have exactly ``want`` (name, version) merged, or nothing when None."""
        if want == self.merged:
            return
        self.restore()
        if want is None:
            return
        import torch
        from peft.tuners.lora import Linear

        with torch.no_grad():
            for module in self.model.modules():
                if isinstance(module, Linear) and want[0] in module.lora_A:
                    weight: Any = module.get_base_layer().weight
                    delta = module.get_delta_weight(want[0]).to(weight.dtype)
                    self._saved.append((weight, weight.data.clone()))
                    weight.data += delta
        self.merged = want
        self.merges += 1

    def restore(self) -> None:
        """Put the original base weights back."""
        import torch

        with torch.no_grad():
            for weight, original in self._saved:
                weight.data.copy_(original)
        self._saved = []
        self.merged = None

    def forget(self, model: Any) -> None:
        """The model object changed (the first adapter wraps it in PEFT): restore, then follow it."""
        self.restore()
        self.model = model
