"""The project's error types, and the did-you-mean hint and noun counts every message uses.

Each error's message is one line that names the file, flag or value and says what to do; the scripts
print it as ``error: ...`` without a traceback.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

__all__ = ["EndovitError", "RecipeError", "DataError", "CheckpointError", "LaunchError", "did_you_mean", "counted",
           "error_line", "first_line"]


class EndovitError(ValueError):
    """Base of every error the scripts report as one line."""


class RecipeError(EndovitError):
    """A recipe file, key, flag or value that cannot be used."""


class DataError(EndovitError):
    """Input data that cannot be used; the message names the path and what to do."""


class CheckpointError(EndovitError):
    """A weight file or checkpoint folder that cannot be read or does not fit the run."""


class LaunchError(EndovitError):
    """A SageMaker launch that cannot start as configured; the message says what to change."""


def error_line(err: BaseException) -> str:
    """The line a script prints for ``err``: its message's last line, without the ``SomeError: `` that an error
    re-raised from a DataLoader worker carries after the worker's whole traceback."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1]) if lines else type(err).__name__


def first_line(err: BaseException) -> str:
    """The first non-empty line of ``err``'s message (a library's multi-line error inside one of ours), else its
    type's name."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest of ``choices`` to ``value``, or an empty string."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def counted(n: int, noun: str, plural: str = "") -> str:
    """``1 video``, ``2 videos``; ``plural`` where adding an s is wrong (``class``, ``classes``)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
