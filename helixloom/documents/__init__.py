"""Helix document learning: documents -> question/answer pairs -> LoRA fine-tune with citations."""

from __future__ import annotations

from helixloom.documents.chunking import chunk
from helixloom.documents.formats import SUPPORTED_EXTENSIONS
from helixloom.documents.ingest import Document, Ingested, Skipped, content_id, group_id, ingest
from helixloom.documents.limits import IngestLimits

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "Document",
    "IngestLimits",
    "Ingested",
    "Skipped",
    "chunk",
    "content_id",
    "group_id",
    "ingest",
]
