"""A HelixNet-LMoE set exported as-is for other servers: vLLM (one PEFT folder per role, served by
``--lora-modules``) and llama.cpp (one GGUF LoRA per role, ``llama-server --lora``).

The seed's HelixNet-LMoE is exactly this: one base model and a LoRA per role, switched per stage.
``export_helixnet`` writes, under ``out``:

- ``vllm/<adapter>/``: each role's PEFT adapter (config and weights, unchanged); ``vllm/serve.txt``,
  the ``vllm serve`` line with its ``--lora-modules name=path`` pairs; ``vllm/requests/<role>.json``,
  an example request per role in the set's prompt format;
- ``gguf/<adapter>.gguf``: each role's LoRA in llama.cpp's format (``gguf_lora``);
  ``gguf/serve.txt``, the ``llama-server`` line that loads them all without applying them, and
  ``gguf/requests/<role>.json``, an example ``/completion`` request that turns on that role's LoRA
  (llama-server's per-request ``lora`` field: the adapters it names get their scale, the rest 0);
- ``helixnet.json``: the manifest (roles, adapters, files, the lines above).

The actor runs on the base model (no adapter) unless the set has an actor adapter.
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from helixloom import adapters, atomic, gguf_lora
from helixloom.errors import HelixloomError
from helixloom.prompting import PromptFormat
from helixloom.store import Store

Format = Literal["vllm", "gguf"]
FORMATS: tuple[Format, ...] = ("vllm", "gguf")
# An example exchange for the role requests: what the critic and regenerator are shown.
_EXAMPLE = {
    "question": "Why do cats purr? Answer in at most 20 words.",
    "response": "Cats purr for many reasons, and scientists have studied this for a long time in many labs.",
    "critique": "The response does not say why cats purr. Give the reasons in at most 20 words.",
}
_WEIGHTS = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class HelixExport:
    """What ``export_helixnet`` wrote: the roles' adapters, the files per format and the serve lines."""

    name: str
    out: Path
    roles: dict[str, str]  # role -> adapter name (the served name in both formats)
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # format -> role -> path
    commands: dict[str, str] = field(default_factory=dict)  # format -> the server's command line

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "out": str(self.out),
            "roles": self.roles,
            "files": self.files,
            "commands": self.commands,
        }


def export_helixnet(
    store: Store,
    name: str,
    out: Path,
    *,
    formats: Sequence[Format] = FORMATS,
    base: str | None = None,
    base_gguf: Path | None = None,
    prompt_format: PromptFormat | None = None,
    overwrite: bool = False,
) -> HelixExport:
    """Export the HelixNet set ``name`` (``adapters.helixnet_set``) into ``out`` for each of ``formats``.

    ``base`` is the base model as vLLM names it (default: the adapters' ``base_model_name_or_path``);
    ``base_gguf`` the GGUF file llama.cpp loads (default: the one the set's base came from, when it
    came from one). ``out`` must be empty or absent unless ``overwrite``."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise HelixloomError(f"unknown export format {unknown or formats!r}", "formats are vllm and gguf")
    roles = adapters.helixnet_set(store, name)
    folders = {role: adapters.resolve(store, adapter)[1] for role, adapter in roles.items()}
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise HelixloomError(f"{out} is not empty", "pick an empty --out folder, or pass --overwrite")
    fmt = prompt_format or PromptFormat.load("helixnet")
    result = HelixExport(name, out, dict(roles))
    if "vllm" in formats:
        _vllm(result, folders, base, fmt)
    if "gguf" in formats:
        _gguf(result, folders, base_gguf, fmt, store)
    atomic.write_json(out / "helixnet.json", result.as_dict())
    return result


def _vllm(result: HelixExport, folders: dict[str, Path], base: str | None, fmt: PromptFormat) -> None:
    root = result.out / "vllm"
    written: dict[str, str] = {}
    ranks, bases = [], set()
    for role, folder in folders.items():
        target = root / result.roles[role]
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for file in _WEIGHTS:
            if (folder / file).is_file():
                shutil.copy2(folder / file, target / file)
        config = json.loads((target / "adapter_config.json").read_text())
        ranks.append(int(config["r"]))
        bases.add(str(config.get("base_model_name_or_path") or ""))
        written[role] = str(target)
    model = base or (bases.pop() if len(bases) == 1 and "" not in bases else None)
    if model is None:
        raise HelixloomError(
            "the role adapters do not name one base model", "give the base as vLLM names it (--base)"
        )
    modules = " ".join(f"{result.roles[r]}={shlex.quote(p)}" for r, p in written.items())
    line = (
        f"vllm serve {shlex.quote(model)} --enable-lora --max-lora-rank {_vllm_rank(max(ranks))} "
        f"--max-loras {len(written)} --lora-modules {modules}"
    )
    (root / "serve.txt").write_text(line + "\n")
    for role in written:
        body: dict[str, Any] = {"model": result.roles[role], "temperature": 0, "max_tokens": 256}
        text = _role_text(fmt, role)
        if fmt.chat:
            body["messages"] = _messages(fmt, text)
        else:
            body |= {"prompt": text, "stop": list(fmt.stop)}
        atomic.write_json(root / "requests" / f"{role}.json", body)
    result.files["vllm"] = written
    result.commands["vllm"] = line


def _vllm_rank(rank: int) -> int:
    # vLLM accepts only these values for --max-lora-rank; the smallest one that holds every adapter
    allowed = (8, 16, 32, 64, 128, 256, 320, 512)
    return next((r for r in allowed if r >= rank), rank)


def _gguf(
    result: HelixExport, folders: dict[str, Path], base_gguf: Path | None, fmt: PromptFormat, store: Store
) -> None:
    if base_gguf is None:
        record = store.get_adapter(next(iter(result.roles.values())))
        spec = (record.base_model if record is not None else None) or "default"
        base_gguf = gguf_lora.base_gguf_for(spec)
    root = result.out / "gguf"
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for role, folder in folders.items():
        done = gguf_lora.export(folder, base_gguf, root / f"{result.roles[role]}.gguf")
        written[role] = str(done.out)
    loras = " ".join(f"--lora {shlex.quote(p)}" for p in written.values())
    line = f"llama-server -m {shlex.quote(str(base_gguf))} {loras} --lora-init-without-apply"
    (root / "serve.txt").write_text(line + "\n")
    for i, role in enumerate(written):
        text = _role_text(fmt, role)
        body: dict[str, Any] = {"prompt": text, "stop": list(fmt.stop)}
        if fmt.chat:  # llama-server applies the model's chat template on its chat route
            body = {"messages": _messages(fmt, text)}
        body |= {"n_predict": 256, "temperature": 0, "lora": [{"id": i, "scale": 1.0}]}
        atomic.write_json(root / "requests" / f"{role}.json", body)
    result.files["gguf"] = written
    result.commands["gguf"] = line


def _role_text(fmt: PromptFormat, role: str) -> str:
    """The role's prompt for the example exchange, in the set's format (the text the role sees)."""
    if role == "critic":
        return fmt.critic.format(
            system=fmt.system, question=_EXAMPLE["question"], response=_EXAMPLE["response"]
        )
    if role == "regenerator":
        return fmt.regenerator.format(system=fmt.system, **_EXAMPLE)
    return fmt.transcript(fmt.system, (), _EXAMPLE["question"])


def _messages(fmt: PromptFormat, text: str) -> list[dict[str, str]]:
    """A chat format's role prompt as messages (the server applies the model's chat template)."""
    return [{"role": "system", "content": fmt.system}, {"role": "user", "content": text}]
