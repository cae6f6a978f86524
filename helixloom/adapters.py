"""LoRA adapters known by name: resolving a name or folder, registering one in the store, and
serving them live (``LiveAdapters``: each name at its newest content, versions pinned per request).

Adapters are standard PEFT folders (servable by vLLM's ``--lora-modules`` as they are); the store
keeps name -> folder, the base model they were made for and metadata such as a system prompt.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from helixloom import models
from helixloom.engine import Engine, SamplingParams
from helixloom.engine.lora_folder import ADAPTER_FILES, adapter_version, describe_base, inspect_adapter
from helixloom.errors import AdapterError
from helixloom.store import AdapterRecord, Store

log = logging.getLogger("helixloom.adapters")


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


#: How an adapter made by ``helixloom learn`` answers where a request leaves temperature, top_p and
#: top_k out: greedily, as its report and ``eval qa`` measure it, and the same answer each time asked.
#: Sampled at chat's old default (0.75, top_k 50; the server's was OpenAI's 1.0) three of its adapters
#: found 3.9 points fewer key facts on average over three seeds each (docs/learn-measurements.md).
LEARNED_SAMPLING = SamplingParams(temperature=0.0, top_p=1.0, top_k=0)


def sampling_defaults(meta: dict[str, Any]) -> SamplingParams | None:
    """The sampling an adapter with stored ``meta`` answers with where a request does not choose its
    own (as vLLM applies a model's generation_config), or None for the caller's usual defaults."""
    return LEARNED_SAMPLING if meta.get("kind") == "documents" else None


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


# ------------------------------------------------------------------------------ served live

# What a retrain rewrites: a change to any of these (size, mtime, inode) makes the folder's content
# hash be computed again. Hashing every request would read every weight; a stat is cheap.
_WATCHED = (*ADAPTER_FILES, "adapter_model.gguf")
Source = Literal["registry", "serve", "runtime"]


@dataclass
class _Loaded:
    """One version of an adapter in the engine: the name the engine knows it by, the requests that
    hold it, and the public names it is the current version of."""

    engine_name: str
    version: str
    owned: bool  # loaded here, so unloaded here; False for one the engine held already
    leases: int = 0
    current_for: set[str | tuple[str, str]] = field(default_factory=set)


@dataclass(frozen=True)
class ServedAdapter:
    """An adapter a server serves: its public name, folder, content version and where it came from
    (the store's registry, ``serve --adapter``, or a runtime load)."""

    name: str
    folder: Path
    version: str
    source: Source


class Pin:
    """A version of an adapter held for one request: the engine keeps it loaded until every pin on it
    is released, however many newer versions have been loaded meanwhile."""

    def __init__(self, owner: LiveAdapters, loaded: _Loaded, name: str) -> None:
        self.engine_name = loaded.engine_name
        self.version = loaded.version
        self.name = name
        self._owner = owner
        self._loaded: _Loaded | None = loaded

    def release(self) -> None:
        """Let the version go (a second call does nothing). Safe from any thread and from a garbage
        collector's finalizer: the bookkeeping runs on the owner's own thread, never inside a caller
        that may hold the owner's lock."""
        loaded, self._loaded = self._loaded, None
        if loaded is not None:
            self._owner._release_soon(loaded)


class LiveAdapters:
    """Adapters served by name on one engine, always at their newest content.

    A name maps to a folder (the store's registry, or one given to ``add``). ``pin(name)`` hashes the
    folder again when its files changed on disk and, when the content is new, loads that version into
    the engine under a name of its own (``NAME@VERSION-N``) beside the old one; requests that pinned the
    old version finish on it, and it is unloaded once the last of them lets go. So a retrained adapter
    is never served stale and never swapped under a running request. Two names with the same content
    share one loaded copy, and a version the engine already held (loaded by whoever built it) is used
    as it is.
    """

    def __init__(self, engine: Engine, store: Store | None = None) -> None:
        self.engine = engine
        self.store = store
        self._lock = threading.RLock()
        self._folders: dict[str, tuple[Path, Source]] = {}  # serve --adapter and runtime loads
        self._withdrawn: set[str] = set()  # registered names unloaded at runtime
        self._hashes: dict[Path, tuple[tuple[Any, ...], str]] = {}  # folder -> (stat signature, version)
        # public name (or pin_folder's ("private", key)) -> its newest loaded version
        self._current: dict[str | tuple[str, str], _Loaded] = {}
        self._loaded: dict[str, _Loaded] = {}  # engine name -> version
        self._loads = 0
        # Releases and unloads run here, in order: unloading waits for the engine's running batch, and
        # the thread that lets a pin go may be an event loop, or a garbage collector inside ``pin``.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="helixloom-adapters")

    # ------------------------------------------------------------------ names

    def add(self, name: str, folder: Path, source: Source = "runtime") -> ServedAdapter:
        """Serve ``folder`` as ``name`` (replacing what the name served). Its current version is
        loaded now, so a folder the engine cannot use fails here, and the name is left as it was."""
        folder = folder.resolve()
        inspect_adapter(folder, name)
        with self._lock:
            previous, withdrawn = self._folders.get(name), name in self._withdrawn
            self._folders[name] = (folder, source)
            self._withdrawn.discard(name)
            try:
                self.pin(name).release()
            except BaseException:
                if previous is None:
                    del self._folders[name]
                else:
                    self._folders[name] = previous
                if withdrawn:
                    self._withdrawn.add(name)
                raise
            return ServedAdapter(name, folder, self.version_of(folder), source)

    def remove(self, name: str) -> None:
        """Stop serving ``name`` (a registered one stays in the store, unserved until added again);
        requests holding it finish first. ``KeyError`` when it is not served."""
        with self._lock:
            if self.folder_of(name) is None:
                raise KeyError(name)
            self._folders.pop(name, None)
            if self.store is not None and self.store.get_adapter(name) is not None:
                self._withdrawn.add(name)
            loaded = self._current.pop(name, None)
            if loaded is not None:
                loaded.current_for.discard(name)
                self._maybe_unload(loaded)

    def served(self) -> list[ServedAdapter]:
        """Every adapter served now, by name, with its content version."""
        with self._lock:
            found: dict[str, tuple[Path, Source]] = {}
            if self.store is not None:
                for record in self.store.list_adapters():
                    if record.name not in self._withdrawn:
                        found[record.name] = (Path(record.path), "registry")
            found.update(self._folders)
            return [
                ServedAdapter(name, folder, self.version_of(folder), source)
                for name, (folder, source) in sorted(found.items())
            ]

    def folder_of(self, name: str) -> Path | None:
        """The folder ``name`` serves, or None when it serves nothing."""
        with self._lock:
            if name in self._folders:
                return self._folders[name][0]
            return self._registered(name)

    def version_of(self, folder: Path) -> str:
        """The folder's content hash (``adapter_version``), hashed again only when its files changed."""
        signature = _signature(folder)
        with self._lock:
            known = self._hashes.get(folder)
            if known is not None and known[0] == signature:
                return known[1]
        version = adapter_version(folder)
        with self._lock:
            self._hashes[folder] = (signature, version)
        return version

    # ------------------------------------------------------------------ versions

    def pin_folder(self, key: str, folder: Path) -> Pin:
        """The newest version of ``folder``, held for one request under a private ``key`` (no public
        name: not listed, not a model a client can name). The key's next folder, or new content in
        the same one, is loaded beside it and the old version is unloaded once its requests finish,
        so a key keeps one version loaded besides those in use (an improve run's current adapter,
        which moves to a new folder each promotion). ``AdapterError`` when it cannot be loaded."""
        # In its own namespace: ``pin`` (what a request's ``model`` reaches) never sees these keys.
        with self._lock:
            return self._pin(("private", key), folder.resolve())

    def pin(self, name: str) -> Pin:
        """The newest version of ``name``, loaded if it is not, held until the pin is released.
        ``KeyError`` when the name serves nothing; ``AdapterError`` when its folder cannot be loaded."""
        with self._lock:
            folder = self.folder_of(name)
            if folder is None:
                raise KeyError(name)
            return self._pin(name, folder)

    def _pin(self, key: str | tuple[str, str], folder: Path) -> Pin:
        name = key if isinstance(key, str) else key[1]
        version = self.version_of(folder)
        loaded = self._current.get(key)
        if loaded is None or loaded.version != version:
            fresh = self._load(name, folder, version)
            fresh.current_for.add(key)
            self._current[key] = fresh
            if loaded is not None:
                loaded.current_for.discard(key)
                self._maybe_unload(loaded)
            loaded = fresh
        loaded.leases += 1
        return Pin(self, loaded, name)

    def loaded_versions(self) -> dict[str, str]:
        """Engine name -> version of every version loaded now (the old ones still held included)."""
        with self._lock:
            return {n: v.version for n, v in self._loaded.items()}

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    def _load(self, name: str, folder: Path, version: str) -> _Loaded:
        for loaded in self._loaded.values():
            if loaded.version == version:
                return loaded
        held = next((a for a in self.engine.adapters() if a.version == version), None)
        if held is not None:
            loaded = _Loaded(held.name, version, owned=False)
        else:
            self._loads += 1
            # PEFT keeps adapters in module dicts, whose keys may not hold '.'.
            engine_name = f"{re.sub(r'[^A-Za-z0-9_-]', '_', name)}@{version}-{self._loads}"
            info = self.engine.load_adapter(engine_name, str(folder))
            # The engine hashed what it read: if the files changed since, its version is the truth.
            loaded = _Loaded(engine_name, info.version or version, owned=True)
        self._loaded[loaded.engine_name] = loaded
        return loaded

    def _release_soon(self, loaded: _Loaded) -> None:
        with contextlib.suppress(RuntimeError):  # closed: the engine goes with the server
            self._worker.submit(self._release, loaded)

    def _release(self, loaded: _Loaded) -> None:
        with self._lock:
            loaded.leases -= 1
            self._maybe_unload(loaded)

    def _maybe_unload(self, loaded: _Loaded) -> None:
        if loaded.leases or loaded.current_for:
            return
        self._loaded.pop(loaded.engine_name, None)
        if loaded.owned:
            self._worker.submit(self._unload, loaded.engine_name)

    def _unload(self, engine_name: str) -> None:
        try:
            self.engine.unload_adapter(engine_name)
        except Exception:  # an engine that cannot unload keeps it; nothing is served wrong
            log.warning("could not unload adapter %s", engine_name, exc_info=True)

    def _registered(self, name: str) -> Path | None:
        if self.store is None or name in self._withdrawn:
            return None
        record = self.store.get_adapter(name)
        return None if record is None else Path(record.path)


def _signature(folder: Path) -> tuple[Any, ...]:
    found = []
    for file in _WATCHED:
        try:
            st = (folder / file).stat()
        except OSError:
            continue
        found.append((file, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(found)
