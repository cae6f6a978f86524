"""Which engine the learn recipe's teacher runs on, and whether it gets the prompt suite.

Kept in one place so the choice can follow the package's default engine when that changes: the lead
may point ``teacher_spec`` at a global "fastest engine" default at merge.
"""

from __future__ import annotations

import importlib.util

from helixloom.models import LLAMACPP_PREFIX

EMBEDDED = ("default", f"{LLAMACPP_PREFIX}default")


def teacher_spec(base: str, teacher: str | None = None) -> str:
    """The engine spec the teacher runs on: ``teacher`` when given, else the base model, on
    llama.cpp when that is installed and the model is the embedded default (the same weights as a
    GGUF, about 7x faster single-stream than transformers on a 2-core CPU)."""
    spec = teacher or base
    if spec == "default" and importlib.util.find_spec("llama_cpp") is not None:
        return f"{LLAMACPP_PREFIX}default"
    return spec


def suite_questions(teacher: str) -> int:
    """Questions per suite prompt and chunk when the user does not say: none for the embedded model
    (measured in benchmarks/learn.py: the 270M model's suite pairs were all dropped as ungrounded,
    16 of 16, at up to 20 minutes of teacher time), one for any other teacher."""
    return 0 if teacher in EMBEDDED else 1
