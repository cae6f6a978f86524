"""What a PEFT LoRA folder holds, read without loading it (used by the engines and the registry).

Adapters are standard PEFT folders (servable by vLLM's ``--lora-modules`` as they are).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from helixloom.engine.types import AdapterInfo
from helixloom.errors import AdapterError


def inspect_adapter(folder: Path, name: str) -> AdapterInfo:
    """Read a PEFT LoRA folder's config; raise ``AdapterError`` if it is not one."""
    config_file = folder / "adapter_config.json"
    if not folder.is_dir():
        raise AdapterError(f"adapter {name!r}: {folder} is not a folder", "pass a PEFT adapter folder")
    if not config_file.is_file():
        raise AdapterError(
            f"adapter {name!r}: {folder} is not a PEFT adapter (no adapter_config.json)",
            "pass a folder written by PEFT's save_pretrained",
        )
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterError(f"adapter {name!r}: cannot read {config_file}: {exc}") from exc
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterError(f"adapter {name!r} is a {config.get('peft_type')} adapter; only LoRA is supported")
    if not any((folder / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise AdapterError(f"adapter {name!r}: {folder} has no adapter_model.safetensors")
    targets = config.get("target_modules") or []
    return AdapterInfo(
        name=name,
        path=str(folder.resolve()),
        rank=config.get("r"),
        target_modules=tuple([targets] if isinstance(targets, str) else sorted(targets)),
        version=adapter_version(folder),
    )


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def adapter_version(folder: Path) -> str:
    """The content hash of a PEFT adapter folder: sha256 over its config and weight files (16 hex).

    Same bytes, same version wherever the folder lives; a retrained adapter under the same name
    gets a new one. This is what prefix caches and the server's adapter registry key by."""
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        file = folder / name
        if not file.is_file():
            continue
        digest.update(name.encode() + b"\0")
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def describe_base(folder: Path) -> str:
    """The base model an adapter folder says it was made for, for error messages."""
    try:
        return str(json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path"))
    except (OSError, json.JSONDecodeError):
        return "another model"
