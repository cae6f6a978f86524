"""What a running server holds: its configuration, the batching engine, the store, the pipelines."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from starlette.requests import Request

from helixloom import paths
from helixloom.engine import Engine
from helixloom.engine.batching import BatchingEngine
from helixloom.errors import HelixloomError, ModelNotFound
from helixloom.helixnet import STAGES, PromptFormat, Stage
from helixloom.server.job_policy import JobPolicy
from helixloom.server.job_runner import CommandParser, JobRunner
from helixloom.server.security import HostCheck, KeyRing
from helixloom.store import Store

Pipeline = Literal["helixnet", "weave"]
PIPELINES: tuple[Pipeline, ...] = ("helixnet", "weave")


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``helixloom serve`` can be told; the CLI flags map onto these fields."""

    model: str = "default"
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
    """What a request's ``model`` names: the base model, one of its adapters, or a pipeline."""

    kind: Literal["base", "adapter"] | Pipeline
    name: str
    adapter: str | None = None

    @property
    def is_pipeline(self) -> bool:
        return self.kind in PIPELINES


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
        self._extra_adapters = {
            name: str(Path(p).expanduser().resolve()) for name, p in config.adapters.items()
        }
        for name, path in self._extra_adapters.items():
            self.engine.load_adapter(name, path)  # fail at start-up, not on the first request
        self.helixnet_roles: dict[Stage, str | None] = {}
        for stage in STAGES:
            spec = config.helixnet_adapters.get(stage)
            self.helixnet_roles[stage] = self.ensure_adapter(spec) if spec else None
        self.jobs = JobRunner(store, command_parser)
        if config.run_jobs:
            self.jobs.start()

    @property
    def base_id(self) -> str:
        return self.config.model

    def served_adapters(self) -> dict[str, str]:
        """Adapter name -> folder: the registry's and those given to ``serve``."""
        served = {r.name: str(r.path) for r in self.store.list_adapters()}
        served.update(self._extra_adapters)
        return served

    def resolve(self, model: str) -> Target:
        """The target a request's ``model`` names; ``ModelNotFound`` (404) when it names nothing."""
        if model == self.base_id:
            return Target("base", model)
        for pipeline in PIPELINES:
            if model == pipeline:
                return Target(pipeline, model)
        if model in self.served_adapters():
            return Target("adapter", model, self.ensure_adapter(model))
        raise ModelNotFound(f"The model `{model}` does not exist", "see GET /v1/models")

    def ensure_adapter(self, name_or_path: str) -> str:
        """Load an adapter into the engine on first use; returns the name requests use."""
        from helixloom import adapters

        with self._lock:
            if name_or_path in self._extra_adapters:
                return name_or_path
            name, folder = adapters.resolve(self.store, name_or_path)
            loaded = {a.name: a.path for a in self.engine.adapters()}
            if name not in loaded:
                self.engine.load_adapter(name, str(folder))
            elif Path(loaded[name]) != folder.resolve():
                raise HelixloomError(f"adapter {name!r} is loaded from another folder", "restart the server")
            return name

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
        self.engine.close()
        self.store.close()
