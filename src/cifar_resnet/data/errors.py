"""The one exception of the data package, and the helper that keeps its messages to one line."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A problem with the user's data (missing, corrupt, malformed); the message is one line."""


def _one_line(text: object) -> str:
    """Error messages are printed by the CLI as one line; collapse whatever an exception said."""
    return " ".join(str(text).split())
