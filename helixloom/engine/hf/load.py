"""Loading for the ``hf`` backend: a model folder onto a device, and checking that a LoRA fits the
loaded base before PEFT touches it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helixloom.engine.lora_folder import describe_base
from helixloom.errors import AdapterError


def load_pretrained(folder: Path, *, device: str | None, dtype: str | None) -> tuple[Any, Any]:
    """(model, tokenizer) from a folder ``from_pretrained`` reads, on ``device`` (default: CUDA if
    present, else CPU) in ``dtype`` (default: bfloat16 on CUDA, float32 on CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loads take seconds; the bar is noise in our output
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device == "cuda" else torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype).to(device)  # type: ignore[arg-type]
    return model, tokenizer


def check_adapter_fits(base_model: Any, folder: Path, name: str, model_name: str) -> None:
    """Compare every LoRA matrix in ``folder`` with the layer of ``base_model`` it targets.

    A LoRA made for another base fails here with a clear ``AdapterError``, and the loaded model is
    left exactly as it was (PEFT would inject layers first and fail half-way).
    """
    from safetensors import safe_open

    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return  # .bin adapters: PEFT's own checks apply
    modules = dict(base_model.named_modules())
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            module_path = key.split(".lora_")[0].removeprefix("base_model.model.")
            layer = modules.get(module_path)
            shape = tuple(f.get_slice(key).get_shape())
            in_f, out_f = getattr(layer, "in_features", None), getattr(layer, "out_features", None)
            if layer is None or in_f is None:
                raise AdapterError(
                    f"adapter {name!r} targets {module_path}, which {model_name} does not have",
                    f"it was made for {describe_base(folder)}; use it with that model",
                )
            expected = shape[1] if ".lora_A." in key else shape[0]
            actual = in_f if ".lora_A." in key else out_f
            if expected != actual:
                raise AdapterError(
                    f"adapter {name!r} does not fit {model_name}: {module_path} has size {actual}, "
                    f"the adapter expects {expected}",
                    f"it was made for {describe_base(folder)}; use it with that model",
                )
