"""LoRA adapters: what a PEFT folder holds, and the registry of adapters known by name.

Adapters are standard PEFT folders (servable by vLLM's ``--lora-modules`` as they are); the store
keeps name -> folder, the base model they were made for and metadata such as a system prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

from helixloom.engine.types import AdapterInfo
from helixloom.errors import AdapterError
from helixloom.store import AdapterRecord, Store


def resolve(store: Store | None, name_or_path: str, *, model: str | None = None) -> tuple[str, Path]:
    """A registered adapter name, or a PEFT folder path, as (name, folder); validated, not loaded.

    Without a store only folder paths resolve. For a remote model (``openai:...``) an adapter is a
    model name on that server: it passes through here and the engine checks that it is served.
    """
    if model is not None and model.startswith("openai:"):
        return name_or_path, Path(name_or_path)
    record = store.get_adapter(name_or_path) if store is not None else None
    if record is not None:
        folder = Path(record.path)
        inspect_adapter(folder, record.name)
        return record.name, folder
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        inspect_adapter(folder, folder.name)
        return folder.resolve().name, folder.resolve()
    raise AdapterError(
        f"unknown adapter {name_or_path!r}: not a registered name nor a folder",
        "see `helixloom adapters list`, or register one with `helixloom adapters add NAME PATH`",
    )


def register(store: Store, name: str, path: str | Path, *, replace: bool = False) -> AdapterRecord:
    """Validate a PEFT LoRA folder and register it under ``name``."""
    if not name or name.startswith("__") or "/" in name:
        raise AdapterError(f"invalid adapter name {name!r}", "use letters, digits, '-', '_' or '.'")
    folder = Path(path).expanduser().resolve()
    info = inspect_adapter(folder, name)
    return store.add_adapter(
        name,
        str(folder),
        base_model=describe_base(folder),
        meta={"rank": info.rank, "target_modules": list(info.target_modules)},
        replace=replace,
    )


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
    )


def describe_base(folder: Path) -> str:
    """The base model an adapter folder says it was made for, for error messages."""
    try:
        return str(json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path"))
    except (OSError, json.JSONDecodeError):
        return "another model"
