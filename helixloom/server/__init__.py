"""The HTTP server: OpenAI-compatible routes over helixloom's engines and pipelines (FastAPI)."""

from __future__ import annotations

from helixloom.server.app import create_app
from helixloom.server.state import ServerConfig, ServerState

__all__ = ["ServerConfig", "ServerState", "create_app", "open_state"]


def open_state(config: ServerConfig) -> ServerState:
    """Load the model, open the store and load the served adapters (fails before the port opens)."""
    from helixloom import models
    from helixloom.engine import load_engine
    from helixloom.paths import ensure_home
    from helixloom.store import Store

    models.resolve(config.model)
    ensure_home()
    store = Store.open_default()
    try:
        return ServerState(config, load_engine(config.model), store)
    except BaseException:
        store.close()
        raise
