"""The one error type of the data code."""
from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Input data that cannot be used; the message names the path and what to do."""
