"""Where helixloom keeps its state: everything lives under ``HELIXLOOM_HOME`` (default ``~/.helixloom``)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from helixloom.errors import HelixloomError

SUBDIRS = ("models", "adapters", "datasets", "runs")


def home() -> Path:
    """The state folder, from ``HELIXLOOM_HOME`` or ``~/.helixloom``; not created here."""
    env = os.environ.get("HELIXLOOM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".helixloom"


def ensure_home() -> Path:
    """Create the state folder and its subfolders and check that they are writable.

    Raises ``HelixloomError`` with the fix when the folder cannot be created or written.
    """
    root = home()
    try:
        root.mkdir(parents=True, exist_ok=True)
        for sub in SUBDIRS:
            (root / sub).mkdir(exist_ok=True)
        # A real write, not os.access: access() lies for root and on some network mounts.
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise HelixloomError(
            f"HELIXLOOM_HOME {root} is not usable: {exc.strerror or exc}",
            "set HELIXLOOM_HOME to a folder you can write, e.g. export HELIXLOOM_HOME=~/.helixloom",
        ) from exc
    return root


def db_path() -> Path:
    """``HELIXLOOM_HOME/helixloom.db``, or ``HELIXLOOM_DB`` if set (how a server hands its store to jobs)."""
    env = os.environ.get("HELIXLOOM_DB")
    return Path(env).expanduser() if env else home() / "helixloom.db"


def models_dir() -> Path:
    return home() / "models"


def adapters_dir() -> Path:
    return home() / "adapters"


def datasets_dir() -> Path:
    return home() / "datasets"


def runs_dir() -> Path:
    return home() / "runs"


# A name that becomes a folder: a letter or digit first, then letters, digits, '.', '_' and '-'; no
# separators, no '..', nothing hidden, short enough for every filesystem. The one rule for datasets,
# adapters, runs, rewards, trees and jobs.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(name: str, what: str = "name", *, param: str = "name") -> str:
    """``name`` if it is safe to use as one folder name under ``HELIXLOOM_HOME``; else a
    ``HelixloomError`` that says what names may look like."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise HelixloomError(
            f"bad {what} {name!r}",
            "use letters, digits, '.', '_' and '-' (at most 128, starting with a letter or digit)",
            param=param,
        )
    return name


def confined(path: str | Path, root: Path | None = None) -> Path:
    """``path`` resolved (links followed), if it lies under ``root`` (default ``HELIXLOOM_HOME``); a
    relative path is taken from ``root``. Anything outside is a ``HelixloomError``."""
    base = (root or home()).resolve()
    p = Path(path)
    resolved = (p if p.is_absolute() else base / p).resolve()
    if resolved != base and base not in resolved.parents:
        # The message names the path as given, never the home's own location (a server's clients
        # need not learn it).
        raise HelixloomError(
            f"{path} is outside HELIXLOOM_HOME", "only paths under HELIXLOOM_HOME are allowed here"
        )
    return resolved
