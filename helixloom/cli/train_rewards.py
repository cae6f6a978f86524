"""Placeholder: filled by the commit that adds this command group."""

from __future__ import annotations

import argparse


def register(tsub: argparse._SubParsersAction) -> None:
    """Adds nothing yet."""
