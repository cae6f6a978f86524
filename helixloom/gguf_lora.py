"""PEFT LoRA folders to GGUF LoRA files, for the llama.cpp backend (and llama.cpp's own server).

The layout follows llama.cpp's ``convert_lora_to_gguf.py``: ``general.type = adapter``,
``adapter.type = lora``, ``adapter.lora.alpha``, and per target layer the tensors
``<gguf name>.weight.lora_a`` (A, [r, in]) and ``...lora_b`` (B, [out, r]) in float32. Layer names
map from Hugging Face to GGUF with the ``gguf`` package's tensor-name tables, read for the base
model's architecture from the base GGUF file itself.

``for_llamacpp`` is the export on first use: the llamacpp engine asks it for the GGUF of a PEFT
folder, and gets a file stamped with the folder's content version (``helixloom.adapter_version``),
written beside the adapter once and again whenever the adapter is retrained, never a stale one.
This module sits below the engine in the layers (it only reads and writes files).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helixloom import atomic, models, paths
from helixloom.errors import AdapterError

#: The GGUF key holding the content version (``engine.lora_folder.adapter_version``) of the PEFT
#: folder a file was exported from; a file without it, or with another version, is never served.
VERSION_KEY = "helixloom.adapter_version"
#: Where ``helixloom adapters export-gguf`` writes by default, inside the adapter folder.
GGUF_ADAPTER_FILE = "adapter_model.gguf"

# Architectures whose converter permutes q/k rows (HF's rotary layout to GGML's); the LoRA's B must
# be permuted the same way. Gemma and Qwen keep HF's layout.
_PERMUTED_QK = {"llama"}


@dataclass(frozen=True)
class GGUFExport:
    out: Path
    tensors: int
    arch: str
    alpha: float
    rank: int


def export(adapter_dir: Path, base_gguf: Path, out: Path, *, version: str | None = None) -> GGUFExport:
    """Write ``adapter_dir`` (a PEFT LoRA) as a GGUF LoRA for the model in ``base_gguf``; ``version``
    (the folder's content version) is stamped into the file for ``for_llamacpp`` to check."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    weights_file = adapter_dir / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise AdapterError(f"{adapter_dir} has no adapter_model.safetensors", "re-save it with PEFT")
    if config.get("use_dora") or config.get("use_rslora"):
        raise AdapterError("DoRA and rsLoRA adapters cannot be written as llama.cpp LoRAs")
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise AdapterError("adapters with per-layer rank or alpha cannot be written as one llama.cpp LoRA")
    reader = gguf.GGUFReader(str(base_gguf))
    arch = str(reader.fields["general.architecture"].contents())
    blocks = int(reader.fields[f"{arch}.block_count"].contents())
    heads = int(reader.fields[f"{arch}.attention.head_count"].contents())
    kv_field = reader.fields.get(f"{arch}.attention.head_count_kv")
    kv_heads = int(kv_field.contents()) if kv_field is not None else heads
    base_tensors = {t.name for t in reader.tensors}
    arch_enum = next((a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch), None)
    if arch_enum is None:
        raise AdapterError(f"the gguf package does not know the architecture {arch!r}")
    names = gguf.get_tensor_name_map(arch_enum, blocks)

    tensors = load_file(str(weights_file))
    pairs: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                module = key.split(marker)[0].removeprefix("base_model.model.")
                pairs.setdefault(module, {})[part] = value.astype(np.float32)
    if not pairs:
        raise AdapterError(f"{adapter_dir} holds no LoRA matrices")

    layers = []
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"lora_A", "lora_B"}:
            raise AdapterError(f"{module} has only one of lora_A / lora_B")
        gguf_name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if gguf_name is None or gguf_name not in base_tensors:
            raise AdapterError(f"{module} has no counterpart in {base_gguf.name} ({arch})")
        a, b = ab["lora_A"], ab["lora_B"]  # a: [r, in], b: [out, r]
        if arch in _PERMUTED_QK and module.endswith(("q_proj", "k_proj")):
            b = _permute_rows(b, heads, heads if module.endswith("q_proj") else kv_heads)
        layers.append((gguf_name, a, b))

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_string("general.type", "adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", alpha)
        if version is not None:
            writer.add_string(VERSION_KEY, version)
        for gguf_name, a, b in layers:
            writer.add_tensor(gguf_name + ".lora_a", np.ascontiguousarray(a))
            writer.add_tensor(gguf_name + ".lora_b", np.ascontiguousarray(b))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic.write_with(out, write)
    return GGUFExport(out, len(layers), arch, alpha, rank)


def _permute_rows(b: Any, n_head: int, n_head_kv: int) -> Any:
    """llama.cpp's q/k permutation (``LlamaModel.permute``) applied to the rows of B."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return b.reshape(n_head, 2, b.shape[0] // n_head // 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


def base_gguf_for(spec: str) -> Path:
    """The GGUF file a model spec came from (``default`` or a .gguf spec), for exporting its adapters."""
    source = models.resolve(spec)
    if source.kind in ("gguf", "default"):
        return models.gguf_file(source)
    folder = Path(source.location)
    marker = folder / models.SOURCE_MARKER
    if marker.is_file():
        return Path(json.loads(marker.read_text())["gguf"])
    raise AdapterError(
        f"{spec} did not come from a GGUF file",
        "pass the base as the .gguf file llama.cpp will load (--base model.gguf)",
    )


def stamped_version(file: Path) -> str | None:
    """The adapter version stamped into a GGUF LoRA by ``export``; None when it has none."""
    import gguf

    try:
        field = gguf.GGUFReader(str(file)).fields.get(VERSION_KEY)
    except (OSError, ValueError):
        return None
    return None if field is None else str(field.contents())


def for_llamacpp(adapter_dir: Path, base_gguf: Path, version: str) -> Path:
    """The GGUF LoRA of the PEFT folder ``adapter_dir`` at content ``version``, exported on first use.

    Taken in order: ``adapter_model.gguf`` in the folder if it is stamped with ``version`` (what
    ``adapters export-gguf`` writes); the cached ``adapter_model.<version>.gguf`` beside it; else a new
    export to that name (older versions' caches are removed), or under ``HELIXLOOM_HOME/cache`` when the
    folder cannot be written. A file stamped with another version, or none, is never used: the
    adapter was retrained since (or exported by another tool), so serving it would be stale.
    """
    named = adapter_dir / GGUF_ADAPTER_FILE
    if named.is_file() and stamped_version(named) == version:
        return named
    candidates = [adapter_dir / f"adapter_model.{version}.gguf", _home_cache(version)]
    for cached in candidates:
        if cached.is_file() and stamped_version(cached) == version:
            if cached.parent == _home_cache_dir():
                with contextlib.suppress(OSError):
                    os.utime(cached)  # recently used: the last the pruning removes
            return cached
    failure: OSError | None = None
    for cached in candidates:
        try:
            export(adapter_dir, base_gguf, cached, version=version)
        except OSError as exc:
            failure = exc  # a read-only adapter folder: cache under the home instead
            continue
        # Older versions' exports beside the adapter go; one that cannot be removed (a read-only
        # folder) is only disk space, never served: its stamp is old. The home's cache is shared by
        # every adapter, keyed by content: the least recently used go past its budget.
        if cached.parent == _home_cache_dir():
            prune_home_cache(keep=cached)
        for old in adapter_dir.glob("adapter_model.*.gguf"):
            if old != cached and old != named:
                with contextlib.suppress(OSError):
                    old.unlink(missing_ok=True)
        return cached
    raise AdapterError(
        f"cannot write the GGUF export of {adapter_dir.name} beside it nor under the home: {failure}"
    ) from failure


# The home's cache of GGUF exports (for adapters in folders it cannot write beside) holds at most
# this many bytes; a rank-64 LoRA of a 7B model is ~160 MB, of the default model a few MB.
HOME_CACHE_BYTES = 2 << 30


def prune_home_cache(keep: Path | None = None, budget: int = HOME_CACHE_BYTES) -> list[Path]:
    """Remove the least recently used exports from the home's cache until it holds at most
    ``budget`` bytes (``keep`` always stays); returns what was removed. A file an engine has loaded
    is in its memory already, so removing it harms nothing but a later load, which exports again."""
    folder = _home_cache_dir()
    files = []
    for file in folder.glob("*.gguf"):
        with contextlib.suppress(OSError):
            stat = file.stat()
            files.append((stat.st_mtime, stat.st_size, file))
    total = sum(size for _, size, _ in files)
    removed: list[Path] = []
    for _, size, file in sorted(files):  # oldest use first
        if total <= budget:
            break
        if keep is not None and file == keep:
            continue
        with contextlib.suppress(OSError):
            file.unlink()
            total -= size
            removed.append(file)
    return removed


def _home_cache_dir() -> Path:
    return paths.home() / "cache" / "gguf-lora"


def _home_cache(version: str) -> Path:
    return _home_cache_dir() / f"{version}.gguf"
