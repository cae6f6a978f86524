"""The one error type users see.

Anything a user can cause (a bad flag, a missing file, an unknown model) raises ``HelixloomError``
with a message naming the problem and, where there is one, the fix. The CLI prints it on one line
and exits with code 2; the server maps it to an OpenAI-shaped 4xx error.
"""

from __future__ import annotations


class HelixloomError(Exception):
    """A user-facing error: ``message`` says what is wrong, ``hint`` how to fix it."""

    def __init__(self, message: str, hint: str | None = None, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.param = param

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ModelNotFound(HelixloomError):
    """A model or adapter spec that resolves to nothing."""


class AdapterError(HelixloomError):
    """An adapter that is missing, not a PEFT folder, or made for another base model."""
