"""Loaded engines, one per model spec: every role or route that names the same spec shares it."""

from __future__ import annotations

import threading
from collections.abc import Callable

from helixloom.engine.base import Engine


class EnginePool:
    """Loads each model spec once, on first use, and hands out the same engine afterwards."""

    def __init__(self, loader: Callable[[str], Engine] | None = None) -> None:
        self._loader = loader
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def get(self, spec: str) -> Engine:
        with self._lock:
            if spec not in self._engines:
                if self._loader is None:
                    from helixloom.engine import load_engine

                    self._engines[spec] = load_engine(spec)
                else:
                    self._engines[spec] = self._loader(spec)
            return self._engines[spec]

    @property
    def loaded(self) -> dict[str, Engine]:
        return dict(self._engines)
