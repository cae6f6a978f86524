"""HelixNet: an actor answers, a critic critiques the answer, a regenerator rewrites it from the critique.

Each role is an engine, an optional LoRA adapter and sampling parameters. Three separate models, or
one base model with one adapter per role (HelixNet-LMoE): the pipeline is the same, because the
adapter travels with each request and the engine applies it per row, never by global switching.

Multi-turn follows the seed: the actor sees the system text, the earlier questions and the earlier
*regenerated* answers; the critic and the regenerator see only the current turn.
"""

from __future__ import annotations

from helixloom.helixnet.build import LMoE, RoleSpec, build
from helixloom.helixnet.pipeline import (
    NO_CRITIQUE,
    SEED_SAMPLING,
    Gate,
    GateDecision,
    HelixNet,
    HelixTurn,
    Role,
    StageEvent,
    StageOutput,
)
from helixloom.helixnet.sessions import HelixChat
from helixloom.prompting import STAGES, Exchange, PromptFormat, Stage

__all__ = [
    "NO_CRITIQUE",
    "SEED_SAMPLING",
    "STAGES",
    "Exchange",
    "Gate",
    "GateDecision",
    "HelixChat",
    "HelixNet",
    "HelixTurn",
    "LMoE",
    "PromptFormat",
    "Role",
    "RoleSpec",
    "Stage",
    "StageEvent",
    "StageOutput",
    "build",
]
