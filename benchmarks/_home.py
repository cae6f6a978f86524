"""A fresh HELIXLOOM_HOME for a benchmark run, reusing the user's converted models (the embedded
model converts once, about a minute; a benchmark should not pay it again)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def bench_home(work: Path | None, prefix: str) -> Path:
    """Point HELIXLOOM_HOME at ``work`` (default: a new temporary folder) and link in the models
    already converted under ``$HELIXLOOM_BENCH_MODELS`` (default ``~/.helixloom/models``)."""
    home = work or Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["HELIXLOOM_HOME"] = str(home)
    cached = Path(os.environ.get("HELIXLOOM_BENCH_MODELS", str(Path.home() / ".helixloom" / "models")))
    (home / "models").mkdir(parents=True, exist_ok=True)
    for f in cached.glob("*") if cached.is_dir() else []:
        target = home / "models" / f.name
        if not target.exists():
            target.symlink_to(f)
    return home
