"""helixloom's SQLite store: sessions, messages, tree nodes, ratings, adapters, datasets, jobs.

``Store`` is the one entry point; the records it returns are frozen dataclasses. The schema
evolves through the numbered migrations in ``helixloom.store.migrations``.
"""

from __future__ import annotations

from helixloom.store.db import Store
from helixloom.store.migrations import MIGRATIONS, Migration, latest_version
from helixloom.store.records import (
    JOB_STATUSES,
    TARGET_TYPES,
    AdapterRecord,
    Dataset,
    Job,
    JobStatus,
    Message,
    NewMessage,
    Node,
    Preference,
    Rating,
    Session,
    TargetType,
    TreeSummary,
)
from helixloom.store.trees import node_id

__all__ = [
    "JOB_STATUSES",
    "MIGRATIONS",
    "TARGET_TYPES",
    "AdapterRecord",
    "Dataset",
    "Job",
    "JobStatus",
    "Message",
    "Migration",
    "NewMessage",
    "Node",
    "Preference",
    "Rating",
    "Session",
    "Store",
    "TargetType",
    "TreeSummary",
    "latest_version",
    "node_id",
]
