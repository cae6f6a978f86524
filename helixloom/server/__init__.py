"""The HTTP server: OpenAI-compatible routes over helixloom's engines and pipelines (FastAPI)."""

from __future__ import annotations

from helixloom.server.app import create_app
from helixloom.server.job_runner import CommandParser
from helixloom.server.state import ServerConfig, ServerState

__all__ = ["BackgroundServer", "ServerConfig", "ServerState", "create_app", "open_state"]


def open_state(config: ServerConfig, *, command_parser: CommandParser | None = None) -> ServerState:
    """Load the model (on the backend ``config.engine`` picks, see ``engine.select``), open the store
    and load the served adapters (fails before the port opens).

    ``command_parser`` builds the CLI's parser, for checking command lines submitted as jobs.
    """
    from helixloom import models
    from helixloom.engine.select import load_for_inference
    from helixloom.paths import ensure_home
    from helixloom.store import Store

    models.resolve(config.model)
    ensure_home()
    store = Store.open_default()
    try:
        engine = load_for_inference(config.model, config.engine)
        return ServerState(config, engine, store, command_parser=command_parser)
    except BaseException:
        store.close()
        raise


class BackgroundServer:
    """A server running in a thread of this process (tests, benchmarks, notebooks)."""

    def __init__(self, state: ServerState, *, host: str = "127.0.0.1", port: int = 0) -> None:
        import socket
        import threading
        import time

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
        self.url = f"http://{host}:{port}"
        self._server = uvicorn.Server(
            uvicorn.Config(create_app(state), host=host, port=port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, name="helixloom-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
