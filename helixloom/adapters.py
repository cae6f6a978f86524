"""LoRA adapters known by name: resolving a name or folder, and registering one in the store.

Adapters are standard PEFT folders (servable by vLLM's ``--lora-modules`` as they are); the store
keeps name -> folder, the base model they were made for and metadata such as a system prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helixloom import models
from helixloom.engine.lora_folder import describe_base, inspect_adapter
from helixloom.errors import AdapterError
from helixloom.store import AdapterRecord, Store


def resolve(store: Store | None, name_or_path: str, *, model: str | None = None) -> tuple[str, Path]:
    """A registered adapter name, or a PEFT folder path, as (name, folder); validated, not loaded.

    Without a store only folder paths resolve. For a remote model (``openai:...``) an adapter is a
    model name on that server: it passes through here and the engine checks that it is served.
    """
    if model is not None and models.is_remote(model):
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


def register(
    store: Store, name: str, path: str | Path, *, replace: bool = False, meta: dict[str, Any] | None = None
) -> AdapterRecord:
    """Validate a PEFT LoRA folder and register it under ``name`` (``meta`` is kept with it)."""
    if not name or name.startswith("__") or "/" in name:
        raise AdapterError(f"invalid adapter name {name!r}", "use letters, digits, '-', '_' or '.'")
    folder = Path(path).expanduser().resolve()
    info = inspect_adapter(folder, name)
    return store.add_adapter(
        name,
        str(folder),
        base_model=describe_base(folder),
        meta={"rank": info.rank, "target_modules": list(info.target_modules), **(meta or {})},
        replace=replace,
    )


def helixnet_set(store: Store, name: str) -> dict[str, str]:
    """The HelixNet role adapters registered as set ``name`` (by ``helixloom train helixnet``): role ->
    adapter name, for the roles the set trained (the others run on the base model)."""
    roles = {}
    for record in store.list_adapters():
        meta = record.meta or {}
        if meta.get("helixnet") == name and meta.get("role"):
            roles[str(meta["role"])] = record.name
    if not roles:
        raise AdapterError(
            f"no HelixNet set named {name!r}",
            "make one with `helixloom train helixnet --name NAME`; see `helixloom adapters list`",
        )
    return roles
