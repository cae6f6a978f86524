"""What a running server holds: its configuration, the batching engine, the store, the pipelines."""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from starlette.requests import Request

from helixloom import paths
from helixloom.adapters import LiveAdapters, Pin, ServedAdapter
from helixloom.engine import Engine
from helixloom.engine.batching import BatchingEngine
from helixloom.engine.select import EngineChoice
from helixloom.errors import AdapterError, HelixloomError, ModelNotFound
from helixloom.helixnet import STAGES, PromptFormat, Stage
from helixloom.server.job_policy import JobPolicy
from helixloom.server.job_runner import CommandParser, JobRunner
from helixloom.server.security import HostCheck, KeyRing
from helixloom.store import Store

log = logging.getLogger("helixloom.server")

Pipeline = Literal["helixnet", "weave", "improve"]
PIPELINES: tuple[Pipeline, ...] = ("helixnet", "weave")  # served under these names
#: ``improve:NAME``: an improve run's reward picks among answers drawn the run's way (``pipelines``)
IMPROVE_PREFIX = "improve:"


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``helixloom serve`` can be told; the CLI flags map onto these fields."""

    model: str = "default"
    engine: EngineChoice = "auto"  # which backend runs a GGUF model (``engine.select``)
    adapters: dict[str, str] = field(default_factory=dict)  # NAME -> PEFT folder, served besides the registry
    api_keys: dict[str, str] = field(default_factory=dict)  # key -> label (the label is what gets stored)
    max_batch: int = 8
    max_queue: int = 64
    max_body_bytes: int = 4 * 1024 * 1024
    default_max_tokens: int = 512
    helixnet_adapters: dict[Stage, str] = field(default_factory=dict)  # role -> adapter name or folder
    helixnet_format: str = "helixnet"
    helixnet_rounds: int = 1
    helixnet_gate: bool = False  # a request's `gate` field overrides it
    run_jobs: bool = True  # run jobs submitted to POST /api/jobs (one at a time, as subprocesses)
    load_adapters: bool = True  # POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's)
    job_models: tuple[str, ...] = ()  # model specs jobs may name besides the served one and the default
    host: str = "127.0.0.1"  # the address bound: the Host header may name it
    allowed_hosts: tuple[str, ...] = ()  # more names the Host header may carry ("*": any)
    max_upload_bytes: int = 256 * 1024 * 1024  # one PUT /api/files
    max_uploads_total_bytes: int = 2 * 1024 * 1024 * 1024  # all uploads together


def state_of(request: Request) -> ServerState:
    """The ``ServerState`` of the app serving ``request``."""
    state: ServerState = request.app.state.helixloom
    return state


@dataclass(frozen=True)
class Target:
    """What a request's ``model`` names: the base model, one of its adapters, or a pipeline.

    For an adapter, ``adapter`` is the name the engine knows its current version by and ``version``
    that version's content hash; the version stays loaded as long as this Target lives (a request
    holds its Target until its answer is done, a streamed one through its ``Call``), so a reload
    never changes the weights under a running request."""

    kind: Literal["base", "adapter"] | Pipeline
    name: str
    adapter: str | None = None
    version: str | None = None

    @property
    def is_pipeline(self) -> bool:
        return self.kind in (*PIPELINES, "improve")


class AdapterNotFound(HelixloomError):
    """A load or unload that names no adapter (vLLM answers these with 404)."""


#: Where an adapter loaded over HTTP may live: the CLI's adapters, what jobs wrote, and training runs
#: (the improve loop hot-loads each promoted round's adapter from its run folder).
LOADABLE = ("adapters", "outputs", "runs")


class ServerState:
    """The loaded engine (behind a batching scheduler), the store, and adapters loaded on demand.

    ``command_parser`` builds the CLI's parser, which checks command lines submitted as jobs; without
    it the server refuses new jobs (the server sits below the CLI and cannot import it).
    """

    def __init__(
        self,
        config: ServerConfig,
        engine: Engine,
        store: Store,
        *,
        command_parser: CommandParser | None = None,
    ) -> None:
        self.config = config
        self.keys = KeyRing.of(labelled=config.api_keys)
        self.hosts = HostCheck.for_bind(config.host, config.allowed_hosts, keyed=bool(self.keys.keys))
        self.engine = (
            engine
            if isinstance(engine, BatchingEngine)
            else BatchingEngine(engine, max_batch=config.max_batch, max_queue=config.max_queue)
        )
        self.store = store
        self.helixnet_format = PromptFormat.load(config.helixnet_format)
        self._lock = threading.Lock()
        self.adapters = LiveAdapters(self.engine, store)
        for name, path in config.adapters.items():
            self.adapters.add(name, Path(path).expanduser(), "serve")  # fail at start-up, not on use
        # HelixNet's roles are served adapters like any other: each request pins the newest version of
        # every role for all its stages (``pin_helixnet``), so a retrained critic is used from the next
        # request on, never stale; sessions record each role under the name the user gave it.
        self.helixnet_roles: dict[Stage, str | None] = {}
        for stage in STAGES:
            spec = config.helixnet_adapters.get(stage)
            self.helixnet_roles[stage] = self._role_adapter(spec) if spec else None
        self.jobs = JobRunner(store, command_parser)
        if config.run_jobs:
            self.jobs.start()

    @property
    def base_id(self) -> str:
        return self.config.model

    def served_adapters(self) -> list[ServedAdapter]:
        """The adapters served now: the registry's, those given to ``serve`` and those loaded at
        runtime, each with its content version."""
        return self.adapters.served()

    def resolve(self, model: str) -> Target:
        """The target a request's ``model`` names; ``ModelNotFound`` (404) when it names nothing. An
        adapter whose files changed since it was loaded is loaded again (its new version) here."""
        if model == self.base_id:
            return Target("base", model)
        for pipeline in PIPELINES:
            if model == pipeline:
                return Target(pipeline, model)
        if model.startswith(IMPROVE_PREFIX):  # the run is looked up (and its name checked) on use
            return Target("improve", model)
        try:
            pin = self.adapters.pin(model)
        except KeyError:
            raise ModelNotFound(f"The model `{model}` does not exist", "see GET /v1/models") from None
        except AdapterError as exc:
            # The engine's message names folders on this machine; the client gets what it can act on.
            log.warning("adapter %s cannot be loaded: %s", model, exc)
            raise HelixloomError(
                f"adapter {model!r} cannot be loaded now (its folder changed and is not a LoRA "
                "this model can use, or is still being written)",
                "retry once it is written; the server's log has the details",
                param="model",
            ) from None
        target = Target("adapter", model, pin.engine_name, pin.version)
        weakref.finalize(target, pin.release)
        return target

    def load_adapter(self, name: str, lora_path: str, *, inplace: bool = False) -> ServedAdapter:
        """vLLM's ``POST /v1/load_lora_adapter``: serve ``lora_path`` as ``name`` from now on.

        ``lora_path`` comes from a client: it is a registered adapter's name, or a folder under
        ``adapters/``, ``outputs/`` or ``runs/`` of HELIXLOOM_HOME (relative paths are the home's). A
        name already served is refused unless ``inplace`` (vLLM's ``load_inplace``): then its new
        content is loaded beside the old, which requests in flight keep until they finish."""
        if not self.config.load_adapters:
            raise HelixloomError("this server does not load adapters at runtime", param="lora_name")
        if not name or not lora_path:
            raise HelixloomError("Both 'lora_name' and 'lora_path' must be provided.", param="lora_name")
        if name == self.base_id or name in PIPELINES or name.startswith(IMPROVE_PREFIX):
            raise HelixloomError(f"{name!r} is a model of this server, not an adapter", param="lora_name")
        paths.check_name(name, "adapter name", param="lora_name")
        if self.adapters.folder_of(name) is not None and not inplace:
            raise HelixloomError(f"The lora adapter '{name}' has already been loaded.", param="lora_name")
        folder = self._loadable_folder(lora_path)
        try:
            return self.adapters.add(name, folder, "runtime")
        except AdapterError as exc:
            log.warning("adapter %s from %s cannot be loaded: %s", name, lora_path, exc)
            raise HelixloomError(
                f"{lora_path} is not a LoRA adapter this model can use",
                "give a PEFT LoRA folder made for the served model",
                param="lora_path",
            ) from None

    def unload_adapter(self, name: str) -> None:
        """vLLM's ``POST /v1/unload_lora_adapter``: stop serving ``name`` (requests holding it finish
        first; a registered adapter stays in the store)."""
        if not self.config.load_adapters:
            raise HelixloomError("this server does not unload adapters at runtime", param="lora_name")
        try:
            self.adapters.remove(name)
        except KeyError:
            raise AdapterNotFound(f"The lora adapter '{name}' cannot be found.", param="lora_name") from None

    def _loadable_folder(self, lora_path: str) -> Path:
        registered = self.store.get_adapter(lora_path)
        if registered is not None:
            return Path(registered.path)
        home = paths.home().resolve()
        try:
            folder = paths.confined(lora_path, home)
        except (HelixloomError, OSError, ValueError):
            raise HelixloomError(
                f"{lora_path} is outside HELIXLOOM_HOME",
                f"load a registered adapter by name, or a folder under {' or '.join(LOADABLE)}/",
                param="lora_path",
            ) from None
        if not any(folder == home / r or (home / r) in folder.parents for r in LOADABLE):
            raise HelixloomError(
                f"{lora_path} is outside {' and '.join(r + '/' for r in LOADABLE)} of HELIXLOOM_HOME",
                f"load a registered adapter by name, or a folder under {' or '.join(LOADABLE)}/",
                param="lora_path",
            )
        try:
            found = folder.is_dir()
        except OSError:  # a name too long for the filesystem, ...
            found = False
        if not found:
            raise AdapterNotFound(f"No adapter found at {lora_path}", param="lora_path")
        return folder

    def _role_adapter(self, spec: str) -> str:
        """A HelixNet role's adapter (a served name, or a registered name or folder, served from now
        on under its name), checked by loading it now; the name it is served under."""
        from helixloom import adapters

        with self._lock:
            if self.adapters.folder_of(spec) is not None:
                name = spec
            else:
                name, folder = adapters.resolve(self.store, spec)
                served = self.adapters.folder_of(name)
                if served is None:
                    self.adapters.add(name, folder, "serve")
                elif served != folder.resolve():
                    raise HelixloomError(
                        f"HelixNet role adapter {spec!r}: the name {name!r} already serves another folder",
                        "register the role's adapter under a name of its own",
                    )
            self.adapters.pin(name).release()  # a folder the engine cannot use fails at start-up
            return name

    def pin_helixnet(self) -> tuple[dict[Stage, str | None], list[Pin]]:
        """The engine names of HelixNet's role adapters at their newest versions, held until the
        pins are released (when the request's stages are done)."""
        engine_names: dict[Stage, str | None] = {}
        pins: list[Pin] = []
        try:
            for stage, name in self.helixnet_roles.items():
                if name is None:
                    engine_names[stage] = None
                    continue
                try:
                    pin = self.adapters.pin(name)
                except KeyError:
                    raise HelixloomError(
                        f"HelixNet's {stage} adapter {name!r} is no longer served (it was unloaded)",
                        "load it again with POST /v1/load_lora_adapter",
                        param="model",
                    ) from None
                except AdapterError as exc:
                    log.warning("HelixNet's %s adapter %s cannot be loaded: %s", stage, name, exc)
                    raise HelixloomError(
                        f"HelixNet's {stage} adapter {name!r} cannot be loaded now (its folder changed "
                        "and is not a LoRA this model can use, or is still being written)",
                        "retry once it is written; the server's log has the details",
                        param="model",
                    ) from None
                pins.append(pin)
                engine_names[stage] = pin.engine_name
        except BaseException:
            for pin in pins:
                pin.release()
            raise
        return engine_names, pins

    def check_key(self, authorization: str | None) -> str | None:
        """The label of the request's API key; ``PermissionError`` when keys are required and this one
        is missing or wrong."""
        return self.keys.label(authorization)

    def job_policy(self) -> JobPolicy:
        """What a remote client may run as a job now (registered adapters and trained rewards change
        over time). Adapters given to ``serve --adapter`` are this server's, not the registry's: a job,
        a process of its own, could not find them by name."""
        home = paths.home()
        rewards = home / "rewards"
        trained = [p.name for p in rewards.iterdir() if p.is_dir()] if rewards.is_dir() else []
        return JobPolicy(
            home=home,
            models=frozenset({"default", "llamacpp:default", self.config.model, *self.config.job_models}),
            adapters=frozenset(r.name for r in self.store.list_adapters()),
            rewards=frozenset(trained),
        )

    def close(self) -> None:
        self.jobs.stop()
        self.adapters.close()
        self.engine.close()
        self.store.close()
