"""The one exception of the data package."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A problem with the user's data (missing, corrupt, malformed); the message is one line."""
