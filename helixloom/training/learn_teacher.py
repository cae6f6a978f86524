"""Which engine the learn recipe's teacher runs on, and whether it gets the prompt suite.

Kept in one place so the choice can follow the package's default engine when that changes: the lead
may point ``teacher_spec`` at a global "fastest engine" default at merge.
"""

from __future__ import annotations

from helixloom.models import LLAMACPP_PREFIX

EMBEDDED = ("default", f"{LLAMACPP_PREFIX}default")


def teacher_spec(base: str, teacher: str | None = None) -> str:
    """The engine spec the teacher runs on: ``teacher`` when given, else the base model, on the
    engine the spec names. The embedded model stays on transformers, not llama.cpp: the teacher's
    work is a batch (one rephrasing per rough question), which transformers runs as one padded batch
    while llama.cpp runs it one request at a time. Measured in benchmarks/learn.py (44 rephrasings,
    a loaded 2-core machine): 555 s on ``llamacpp:default`` against 17 s batched on ``default``.
    Point this at the package's default engine only once that engine batches."""
    return teacher or base


def suite_questions(teacher: str) -> int:
    """Questions per suite prompt and chunk when the user does not say: none for the embedded model
    (measured in benchmarks/learn.py: the 270M model's suite pairs were all dropped as ungrounded,
    16 of 16, at up to 20 minutes of teacher time), one for any other teacher."""
    return 0 if teacher in EMBEDDED else 1
